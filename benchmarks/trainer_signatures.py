"""What signing and checking a train reply's trainer signature costs.

A node started with ``trainer-key`` signs each train reply
(:func:`flchain_flwr.ledger.trainers.sign_reply`: the update digest of the
reply without the signature record, then Ed25519), and FedBuff checks it
(:func:`~flchain_flwr.ledger.trainers.signed_by`: the same digest, then an
Ed25519 verification), against the hash of the model it sent, which it
computes only once a signed reply names that model. Setting: the flchain_cnn
app's Fashion-MNIST CNN, one dense full-weights reply and one DGC reply (the
mod's defaults, as ``vote_request.py`` builds them). Each figure is the median
of ``--repeats`` runs; beside each, the candidate digest
(:func:`~flchain_flwr.ledger.sender_update_digest`) that every ledgered or PoV
run computes for each reply anyway, and the model hash.

JSON to benchmarks/results/trainer_signatures.json (with the load average:
these are times); last line ``trainer signature check / candidate digest,
dense reply: <x>x``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _common import APP_DIR, RESULTS, write_results
from flwr.app import RecordDict
from nacl.signing import SigningKey
from vote_request import sample_replies

from flchain_flwr.ledger import model_hash, sender_update_digest
from flchain_flwr.ledger.trainers import sign_reply, signed_by
from flchain_flwr.protocol import TRAINER_RECORD


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", type=Path, default=RESULTS / "trainer_signatures.json")
    args = parser.parse_args()
    sys.path.insert(0, str(APP_DIR))
    from flchain_cnn.task import new_model  # pylint: disable=import-outside-toplevel

    net = new_model("fashion-mnist", args.seed)
    model = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    trained_on = model_hash(model)
    key = SigningKey(bytes(range(32)))
    load_start = list(os.getloadavg())
    rows = {}
    for name, reply in zip(
        ("dense", "dgc"), sample_replies(model, args.seed), strict=True
    ):
        record = sign_reply(key, 7, reply, trained_on)
        signed = RecordDict({**dict(reply.items()), TRAINER_RECORD: record})
        assert signed_by(7, signed, trained_on) is not None
        rows[name] = {
            "sign_ms": _median_ms(
                partial(sign_reply, key, 7, reply, trained_on), args.repeats
            ),
            "check_ms": _median_ms(
                partial(signed_by, 7, signed, trained_on), args.repeats
            ),
            "candidate_digest_ms": _median_ms(
                partial(sender_update_digest, 7, signed), args.repeats
            ),
        }
        rows[name]["check_over_digest"] = (
            rows[name]["check_ms"] / rows[name]["candidate_digest_ms"]
        )
    model_hash_ms = _median_ms(lambda: model_hash(model), args.repeats)
    ratio = rows["dense"]["check_over_digest"]
    label = "trainer signature check / candidate digest, dense reply"
    write_results(
        args.out,
        "trainer_signatures",
        args,
        headline=(label, round(ratio, 2)),
        parameters=int(sum(v.size for v in model.values())),
        replies=rows,
        model_hash_ms=model_hash_ms,
        load_average={"start": load_start, "end": list(os.getloadavg())},
    )
    for name, row in rows.items():
        print(name, {k: round(v, 3) for k, v in row.items()})
    print(f"model hash {model_hash_ms:.2f} ms")
    print(f"{label}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
