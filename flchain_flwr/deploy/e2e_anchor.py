"""End-to-end anchoring in a loopback deployment: two runs, a market, one main chain.

On 127.0.0.1 only, under a work directory:

1. three witness folders (``Witness.init``, trust on first use: a run's ledger
   key is made when the run starts) and a main chain whose policy names their
   keys with a quorum of 2, made before anything runs;
2. a SuperLink with TLS and SuperNode authentication, trainer SuperNodes and
   one witness SuperNode per folder (node config ``role="witness"``,
   ``witness-dir``);
3. two ``flwr run`` of the app, started together, each with its own ledger and
   seed, neither holding the main chain's key: each has its checkpoint
   cosigned by the witness SuperNodes (``anchor-witness-nodes = 3``, every 2
   blocks and at the end) and spools anchor requests (``anchor-spool``);
4. the main chain's operator ingests the spool (``flchain main ingest``, the
   witness folders cosigning the main chain's own checkpoint), twice (the
   second a no-op);
5. a model-trading subchain (offer of run A's final model, purchase,
   receipt) anchored through the same witness folders with ``flchain model
   anchor-market``;
6. ``flchain main verify --witnessed``, ``flchain ledger verify SUB
   --anchored-in MAIN --witnessed`` for both runs, ``flchain model prove`` and
   ``model verify --witnessed`` of run A's final model, all with the CLI;
7. every process started is stopped by PID, also when a step fails.

Whether Flower ran the two runs at the same time is measured, not assumed:
``facts["concurrent"]`` says whether each run wrote a block before the other's
``flwr run`` ended.

Command line::

    python -m flchain_flwr.deploy.e2e_anchor --app apps/flchain_cnn --workdir /tmp/e2ea
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from nacl.signing import SigningKey

from ..configvalues import ConfigValue
from ..ledger import Ledger
from ..ledger.anchorblock import AnchorPolicy
from ..ledger.keys import load_or_create_key
from ..ledger.mainchain import MainChain
from ..ledger.trade_records import make_offer, make_purchase, make_receipt
from ..ledger.trading import TradingChain
from ..ledger.witness import Witness
from .loopback import LoopbackFederation
from .scenario import Report, blocks_written, flchain, in_federation, scenario_main

RUNS = ("a", "b")


def _witnesses_and_main(workdir: Path) -> tuple[list[Witness], MainChain, Path]:
    """Three trust-on-first-use witnesses and a 2-of-3 main chain over them."""
    witnesses = [
        Witness.init(
            workdir / "witnesses" / f"w{i}",
            f"witness-{i}.loopback",
            trust_on_first_use=True,
        )
        for i in range(3)
    ]
    key_file = workdir / "main.key"
    main = MainChain.create(
        workdir / "main.db",
        chain_id="loopback-main",
        policy=AnchorPolicy(tuple(w.key for w in witnesses), 2),
        signing_key=load_or_create_key(key_file),
    )
    return witnesses, main, key_file


def _market(workdir: Path, ledger: Path) -> Path:
    """A trading subchain: run A's final model offered, bought and received."""
    with Ledger(ledger, create=False) as run:
        head = run.head()
        assert head is not None
        model, origin = str(head.header["model_hash"]), run.origin
    seller, buyer = SigningKey(b"\x51" * 32), SigningKey(b"\x52" * 32)
    path = workdir / "market.db"
    with TradingChain(path, chain_id="loopback-market") as chain:
        market = chain.market
        offer = chain.append(*make_offer(seller, market, model, origin, {"price": 1}))
        purchase = chain.append(*make_purchase(buyer, market, offer.record_id))
        chain.append(*make_receipt(buyer, market, purchase.record_id, model))
    return path


# pylint: disable=too-many-locals,too-many-statements
def run_anchor_scenario(
    app_dir: Path,
    workdir: Path,
    *,
    trainers: int = 2,
    versions: int = 2,
    run_timeout: float = 1500.0,
) -> Report:
    """Run the scenario (see the module docstring); never raises."""
    report = Report()
    witnesses, main, main_key = _witnesses_and_main(workdir)
    main_vkey = main.public_key.encode()
    main.close()
    ledgers = {name: workdir / f"run-{name}.db" for name in RUNS}

    def steps(fed: LoopbackFederation) -> None:
        started = [
            fed.start_supernode(
                f"trainer-{pid}", {"partition-id": pid, "num-partitions": trainers}
            )
            for pid in range(trainers)
        ]
        started += [
            fed.start_supernode(
                f"witness-{i}",
                {
                    "partition-id": 0,
                    "num-partitions": trainers,
                    "role": "witness",
                    "witness-dir": str(w.folder),
                },
            )
            for i, w in enumerate(witnesses)
        ]
        fed.wait_online([n.node_id for n in started if n.node_id is not None])
        witness_ids = {n.node_id for n in started if n.name.startswith("witness")}

        t0 = time.monotonic()
        runs: dict[str, subprocess.Popen[str]] = {}
        first_block: dict[str, float] = {}
        ended: dict[str, float] = {}
        for seed, name in enumerate(RUNS):
            cfg: dict[str, ConfigValue] = {
                "num-server-rounds": versions,
                "buffer-size": trainers,
                "local-epochs": 1,
                "seed": seed,
                "ledger-path": str(ledgers[name]),
                "results-path": str(workdir / f"results-{name}.json"),
                "anchor-main": str(workdir / "main.db"),
                "anchor-spool": str(workdir / "spool"),
                "anchor-witness-nodes": 3,
                "anchor-every": 2,
                # A query starts a ClientApp process on the node: allow a
                # loaded machine's start-up (minutes on 2 busy cores).
                "anchor-witness-timeout": 240.0,
                "anchor-discovery-timeout": 900.0,
                "message-ttl": 240.0,
                "min-nodes": trainers,
            }
            log = (workdir / f"run-{name}.log").open("a")
            runs[name] = fed.start_run(app_dir, cfg, output=log)
        while len(ended) < len(runs):
            now = round(time.monotonic() - t0, 1)
            for name, process in runs.items():
                if name not in first_block and blocks_written(ledgers[name]) >= 2:
                    first_block[name] = now
                if name not in ended and process.poll() is not None:
                    ended[name] = now
            if now > run_timeout:
                raise TimeoutError(f"runs not done after {run_timeout:g}s")
            time.sleep(0.5)
        report.facts["first_block_s"] = first_block
        report.facts["run_ended_s"] = ended
        report.facts["concurrent"] = all(
            first_block.get(a, float("inf")) < ended[b] for a, b in (RUNS, RUNS[::-1])
        )
        for name, process in runs.items():
            # flwr run --stream exits 0 even when the ServerApp raised.
            report.check(f"run {name}: flwr run exit 0", process.returncode == 0)
            results = workdir / f"results-{name}.json"
            if not results.exists():
                raise RuntimeError(
                    f"run {name} wrote no results: "
                    + (workdir / f"run-{name}.log").read_text()[-1500:]
                )
            history = json.loads(results.read_text())
            report.check(
                f"run {name}: all versions made",
                len(history.get("versions", [])) == versions,
            )
            trained = {int(n) for n in history.get("participation", {})}
            report.facts[f"run_{name}_trained"] = sorted(trained)
            report.check(
                f"run {name}: witness nodes never trained",
                bool(trained) and not trained & witness_ids,
            )

        folders = [arg for w in witnesses for arg in ("--witness", str(w.folder))]
        for attempt in ("ingest", "ingest again"):
            ingest = flchain(
                fed, "main", "ingest", str(workdir / "spool"), "--main",
                str(workdir / "main.db"), "--key", str(main_key), *folders,
            )  # fmt: skip
            report.facts[attempt] = ingest.stdout.strip().splitlines()[-1:]
            report.check(f"main {attempt}", ingest.returncode == 0)
        report.check(
            "the second ingest is a no-op",
            "0 ingested, 0 rejected" in ingest.stdout,
        )

        market = _market(workdir, ledgers["a"])
        anchored = flchain(
            fed, "model", "anchor-market", str(market), "--main",
            str(workdir / "main.db"), "--main-key-file", str(main_key), *folders,
        )  # fmt: skip
        report.facts["anchor_market"] = (anchored.stdout + anchored.stderr).strip()
        report.check("market anchored", anchored.returncode == 0)

        with MainChain(workdir / "main.db") as chain:
            origins = {o: len(chain.anchors_for(o)) for o in chain.origins()}
        report.facts["anchors_per_origin"] = origins
        report.check(
            "one main chain holds both runs and the market",
            len(origins) == 3 and min(origins.values()) >= 1,
        )
        report.check(
            "each run anchored more than once (witness consistency proofs)",
            sorted(origins.values())[1] >= 2,
        )
        for i, witness in enumerate(witnesses):
            known = [o for o in origins if witness.latest(o) is not None]
            report.check(f"witness {i} persisted every origin", len(known) == 3)

        verify = flchain(fed, "main", "verify", str(workdir / "main.db"),
                         "--main-key", main_vkey, "--witnessed")  # fmt: skip
        report.facts["main_verify"] = verify.stdout.strip().splitlines()[-2:]
        report.check("main verify", verify.returncode == 0)
        for name in RUNS:
            verify = flchain(
                fed, "ledger", "verify", str(ledgers[name]), "--anchored-in",
                str(workdir / "main.db"), "--main-key", main_vkey, "--witnessed",
            )  # fmt: skip
            report.facts[f"run_{name}_anchored"] = verify.stdout.strip()[-400:]
            report.check(f"run {name}: verify --anchored-in", verify.returncode == 0)

        with Ledger(ledgers["a"], create=False) as run:
            head = run.head()
            assert head is not None
            model = run.blobs.path_of(str(head.header["model_hash"]))
            publisher = bytes(run.signing_key.verify_key).hex()
        bundle = workdir / "model-a.bundle"
        prove = flchain(fed, "model", "prove", "--ledger", str(ledgers["a"]),
                        "--main", str(workdir / "main.db"), "--model", str(model),
                        "-o", str(bundle))  # fmt: skip
        report.check("model prove", prove.returncode == 0)
        trusted = [
            f"--trusted=main={main_vkey}",
            f"--trusted=publisher={publisher}",
            *(f"--trusted=witness={w.key.encode()}" for w in witnesses),
        ]
        check = flchain(fed, "model", "verify", str(bundle), "--model", str(model),
                        "--witnessed", *trusted)  # fmt: skip
        report.facts["model_verify"] = check.stdout.strip().splitlines()[:4]
        report.check("model verify", check.returncode == 0)
        report.facts["seconds"] = round(time.monotonic() - t0, 1)

    return in_federation(workdir, report, steps)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    return scenario_main(
        argv,
        __doc__,
        ".e2e-anchor",
        "e2e-anchor.json",
        lambda args: run_anchor_scenario(args.app.resolve(), args.workdir.resolve()),
    )


if __name__ == "__main__":
    sys.exit(main())
