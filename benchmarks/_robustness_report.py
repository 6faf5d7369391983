"""The robustness benchmark's summary and heat maps, from its rows.

A row is one (seed, defence, attack) cell: ``final_accuracy`` and, for PoV, the
honest false-rejection and poisoned-acceptance rates with the counts behind them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flchain_flwr.sim.attacks import Attack

ATTACKS: list[str] = ["none", *(a.value for a in Attack)]
DEFENCES = [
    "pov",
    "pov-fedavg",
    "fedavg",
    "krum",
    "multikrum",
    "fedmedian",
    "fedtrimmedavg",
    "bulyan",
]
DROP_TARGET_POINTS = 2.0
FALSE_REJECTION_TARGET = 0.05
FLTRUST_PUBLISHED = {
    "figure": "about 1 point of accuracy lost under attack",
    "setting": "MNIST, 20 % malicious clients (MNIST-0.5, 100 clients)",
    "source": "Cao, Fang, Liu, Gong: FLTrust: Byzantine-robust Federated "
    "Learning via Trust Bootstrapping, NDSS 2021 (test error 0.04 without "
    "attack, at most about 0.05 under the attacks it evaluates)",
    "comparable": "no: another dataset (MNIST, not Fashion-MNIST), fraction "
    "(20 %, not 30 %), aggregation (trust-weighted, norm-clipped mean) and "
    "training length",
}


def drops(
    rows: Iterable[dict[str, Any]],
    defence: str,
    accuracy: str = "final_accuracy",
    reference: str | None = None,
) -> dict[int, dict[str, float]]:
    """Seed -> attack -> accuracy drop in points from the no-attack run of
    ``reference`` (default: ``defence`` itself) on the same seed, on the rows'
    ``accuracy`` field (rows without it are left out). Against another
    defence, the defence's own no-attack cell is a drop too: what it costs
    without any attack."""
    rows = list(rows)
    baseline = reference or defence

    def accuracies(name: str) -> dict[tuple[int, str], float]:
        return {
            (r["seed"], r["attack"]): r[accuracy]
            for r in rows
            if r["defence"] == name and r.get(accuracy) is not None
        }

    acc, base = accuracies(defence), accuracies(baseline)
    out: dict[int, dict[str, float]] = {}
    for (seed, attack), value in sorted(acc.items()):
        if (attack != "none" or baseline != defence) and (seed, "none") in base:
            out.setdefault(seed, {})[attack] = 100 * (base[(seed, "none")] - value)
    return out


def worst(table: dict[int, dict[str, float]]) -> dict[str, Any] | None:
    """The largest drop in ``table``, with its seed and attack."""
    cells = [(d, s, a) for s, by in table.items() for a, d in by.items()]
    if not cells:
        return None
    drop, seed, attack = max(cells)
    return {"points": drop, "seed": seed, "attack": attack}


def false_rejection(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per seed: PoV's honest false-rejection rate over all its cells (attacked
    and not), and the worst single cell."""
    out: dict[int, dict[str, Any]] = {}
    for seed in sorted({r["seed"] for r in rows}):
        cells = [
            r
            for r in rows
            if r["seed"] == seed and r["defence"] == "pov" and "honest_updates" in r
        ]
        honest = sum(r["honest_updates"] for r in cells)
        rejected = sum(
            r["honest_false_rejection_rate"] * r["honest_updates"] for r in cells
        )
        rate = rejected / max(honest, 1)
        top = max(cells, key=lambda r: r["honest_false_rejection_rate"], default=None)
        out[seed] = {
            "rate": rate,
            "honest_updates": honest,
            "worst_cell": None
            if top is None
            else {"attack": top["attack"], "rate": top["honest_false_rejection_rate"]},
            "target_met": rate < FALSE_REJECTION_TARGET,
        }
    return out


def poisoned_acceptance(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per attack: PoV's poisoned-update acceptance rate, pooled over seeds."""
    out: dict[str, float] = {}
    for attack in ATTACKS[1:]:
        cells = [
            r
            for r in rows
            if r["defence"] == "pov"
            and r["attack"] == attack
            and "poisoned_updates" in r
        ]
        total = sum(r["poisoned_updates"] for r in cells)
        if total:
            accepted = sum(
                r["poisoned_acceptance_rate"] * r["poisoned_updates"] for r in cells
            )
            out[attack] = accepted / total
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures: PoV's worst drop over seeds and attacks, the same for
    every other defence run, false rejection per seed, poisoned acceptance."""
    defences = [d for d in DEFENCES if any(r["defence"] == d for r in rows)]
    tables = {d: drops(rows, d) for d in defences}
    summary: dict[str, Any] = {
        "worst_case_drop": {d: worst(t) for d, t in tables.items()},
        "drop_points": {
            d: {str(s): v for s, v in t.items()} for d, t in tables.items()
        },
        "no_attack_accuracy": {
            d: {
                str(r["seed"]): r["final_accuracy"]
                for r in rows
                if r["defence"] == d and r["attack"] == "none"
            }
            for d in defences
        },
        "fltrust_published": FLTRUST_PUBLISHED,
        "drop_target_points": DROP_TARGET_POINTS,
        "false_rejection_target": FALSE_REJECTION_TARGET,
    }
    pov = summary["worst_case_drop"].get("pov")
    if pov is not None:
        summary["pov_worst_case_drop_points"] = pov["points"]
        summary["pov_drop_target_met"] = pov["points"] <= DROP_TARGET_POINTS
        summary["pov_misses"] = [
            {"seed": s, "attack": a, "points": d}
            for s, by in tables["pov"].items()
            for a, d in by.items()
            if d > DROP_TARGET_POINTS
        ]
        frr = false_rejection(rows)
        summary["pov_false_rejection_by_seed"] = {str(s): v for s, v in frr.items()}
        summary["pov_false_rejection_target_met"] = all(
            v["target_met"] for v in frr.values()
        )
        summary["pov_poisoned_acceptance"] = poisoned_acceptance(rows)
        floor = all_rejected_floor(rows, tables["pov"])
        summary["pov_all_rejected_floor"] = {str(s): v for s, v in floor.items()}
        excess = worst_excess(tables["pov"], floor)
        if excess is not None:
            summary["pov_worst_excess_drop"] = excess
        summary.update(drop_from_fedavg(rows, "final_accuracy"))
    tail = tail_drops(rows, defences)
    if tail is not None:
        summary["tail"] = tail
    return summary


def tail_drops(
    rows: list[dict[str, Any]], defences: list[str]
) -> dict[str, Any] | None:
    """The drops again on each cell's mean accuracy over its last versions
    (``tail_accuracy``), for the rows that recorded one; ``None`` if none did."""
    tables = {d: drops(rows, d, "tail_accuracy") for d in defences}
    tables = {d: t for d, t in tables.items() if t}
    if not tables:
        return None
    out: dict[str, Any] = {
        "meaning": "accuracy drop on the mean over each run's last versions "
        "(settings.tail), against the same mean without attack",
        "worst_case_drop": {d: worst(t) for d, t in tables.items()},
        "drop_points": {
            d: {str(s): v for s, v in t.items()} for d, t in tables.items()
        },
    }
    if "pov" in tables:
        floor = all_rejected_floor(rows, tables["pov"])
        out["pov_all_rejected_floor"] = {str(s): v for s, v in floor.items()}
        out["pov_worst_excess_drop"] = worst_excess(tables["pov"], floor)
        out.update(drop_from_fedavg(rows, "tail_accuracy"))
    return out


def drop_from_fedavg(rows: list[dict[str, Any]], accuracy: str) -> dict[str, Any]:
    """PoV's worst drop from FedAvg's no-attack accuracy on the same seed (the
    reference FLTrust reports against), its own no-attack cell included; empty
    without FedAvg no-attack rows."""
    table = drops(rows, "pov", accuracy, reference="fedavg")
    found = worst(table)
    if found is None:
        return {}
    return {
        "pov_drop_from_fedavg_no_attack": {
            **found,
            "meaning": "PoV's accuracy under attack (or without) below FedAvg's "
            "without attack, same seed: also what PoV's own false rejections cost",
            "drop_points": {str(s): v for s, v in table.items()},
        }
    }


def worst_excess(
    table: dict[int, dict[str, float]], floor: dict[int, dict[str, Any]]
) -> dict[str, Any] | None:
    """The largest drop in ``table`` beyond its seed's all-rejected ``floor``."""
    excess = {
        (s, a): d - floor[s]["points"]
        for s, by in table.items()
        for a, d in by.items()
        if s in floor
    }
    if not excess:
        return None
    (seed, attack), points = max(excess.items(), key=lambda kv: kv[1])
    return {
        "points": points,
        "seed": seed,
        "attack": attack,
        "meaning": "the drop beyond the seed's all-rejected floor",
    }


def all_rejected_floor(
    rows: list[dict[str, Any]], table: dict[int, dict[str, float]]
) -> dict[int, dict[str, Any]]:
    """Per seed, PoV's mean drop (from ``table``, PoV's drops) over the attacks
    of which it accepted no update: what losing the attackers' own (non-IID)
    data costs, which no defence that keeps them out can avoid."""
    floor: dict[int, dict[str, Any]] = {}
    for seed, by in table.items():
        clean = [
            r["attack"]
            for r in rows
            if r["defence"] == "pov"
            and r["seed"] == seed
            and r["attack"] in by
            and r.get("poisoned_updates", 0) > 0
            and r.get("poisoned_acceptance_rate") == 0.0
        ]
        if clean:
            floor[seed] = {
                "points": sum(by[a] for a in clean) / len(clean),
                "attacks": clean,
            }
    return floor


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Two heat maps: mean final accuracy (defences x attacks, over seeds) and
    PoV's drop per seed and attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    defences = [d for d in DEFENCES if any(r["defence"] == d for r in rows)]
    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    mean = np.full((len(defences), len(attacks)), np.nan)
    counts = np.zeros((len(defences), len(attacks)), dtype=int)
    for i, d in enumerate(defences):
        for j, a in enumerate(attacks):
            values = [
                r["final_accuracy"]
                for r in rows
                if r["defence"] == d
                and r["attack"] == a
                and r["final_accuracy"] is not None
            ]
            if values:
                mean[i, j] = 100 * float(np.mean(values))
                counts[i, j] = len(values)
    table = drops(rows, "pov")
    drop = np.full((len(seeds), max(len(attacks) - 1, 0)), np.nan)
    for i, s in enumerate(seeds):
        for j, a in enumerate(attacks[1:]):
            drop[i, j] = table.get(s, {}).get(a, np.nan)
    width = 1.1 * len(attacks) + 2
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(width, 0.5 * (len(defences) + len(seeds)) + 3.5)
    )
    image = top.imshow(mean, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    _label(top, mean, attacks, defences, "{:.1f}", counts)
    fig.colorbar(image, ax=top, label="accuracy (%)")
    top.set_title(
        "Fashion-MNIST, 30 % attackers: final accuracy, mean over the seeds run "
        "(how many in brackets; - = not run)"
    )
    if drop.size:
        image = bottom.imshow(drop, cmap="magma_r", vmin=0, vmax=10, aspect="auto")
        _label(bottom, drop, attacks[1:], [f"seed {s}" for s in seeds], "{:+.1f}")
        fig.colorbar(image, ax=bottom, label="drop (points)")
    bottom.set_title(
        "PoV: drop from the same seed's no-attack run "
        f"(target <= {DROP_TARGET_POINTS:g})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(
    ax: Any,
    grid: Any,
    columns: list[str],
    rows: list[str],
    fmt: str,
    counts: Any = None,
) -> None:
    import numpy as np

    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    image = ax.get_images()[0]
    for i in range(len(rows)):
        for j in range(len(columns)):
            if np.isnan(grid[i, j]):
                ax.text(j, i, "-", ha="center", va="center", color="0.4", fontsize=8)
                continue
            text = fmt.format(grid[i, j])
            if counts is not None:
                text += f" ({counts[i, j]})"
            shade = image.cmap(image.norm(grid[i, j]))
            light = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] > 0.5
            color = "k" if light else "w"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
