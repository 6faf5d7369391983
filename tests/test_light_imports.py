"""Package imports are lazy: a client mod does not load the ledger or FedBuff."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

import flchain_flwr
import flchain_flwr.ledger

HEAVY = (
    "flchain_flwr.ledger.chain",
    "flchain_flwr.ledger.consensus",
    "flchain_flwr.strategies",
    "flchain_flwr.pov",
    "nacl",
    "sqlite3",
)


def _modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_the_downlink_mod_imports_neither_the_ledger_nor_the_strategies() -> None:
    loaded = _modules_after("import flchain_flwr.mods.downlink")
    assert "flchain_flwr.ledger.canonical" in loaded  # what it does need
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_public_name_imports_its_module_on_first_use() -> None:
    loaded = _modules_after("from flchain_flwr.ledger import Ledger")
    assert "flchain_flwr.ledger.chain" in loaded
    assert "flchain_flwr.strategies" not in loaded


def test_every_exported_name_is_its_modules_object() -> None:
    from flchain_flwr.ledger import _MODULES

    assert sorted(n for names in _MODULES.values() for n in names) == sorted(
        flchain_flwr.ledger.__all__
    )
    for module, names in _MODULES.items():
        source = import_module(f"flchain_flwr.ledger.{module}")
        for name in names:
            assert getattr(flchain_flwr.ledger, name) is getattr(source, name), name
            # the map names the ledger module that defines it, not a re-export
            home = getattr(source, name).__module__
            assert home == source.__name__ or not home.startswith("flchain_flwr."), (
                name,
                home,
            )
    for name in flchain_flwr.__all__:
        assert getattr(flchain_flwr, name) is not None


def test_submodules_and_unknown_names() -> None:
    assert flchain_flwr.ledger.merkle.merkle_root is flchain_flwr.ledger.merkle_root
    from flchain_flwr.ledger.chain import Ledger

    assert flchain_flwr.ledger.Ledger is Ledger
    from flchain_flwr.strategies import FedBuff

    assert flchain_flwr.FedBuff is FedBuff
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = flchain_flwr.ledger.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        from flchain_flwr import NoSuchThing  # type: ignore[attr-defined] # noqa: F401


def test_an_export_named_like_a_submodule_keeps_its_meaning() -> None:
    # ledger.quorum is the consensus function, as the eager __init__ had it,
    # even after the ledger.quorum module is imported (which binds modules)
    code = (
        "import flchain_flwr.ledger.quorum\n"
        "from flchain_flwr.ledger import quorum\n"
        "from flchain_flwr.ledger.consensus import quorum as f\n"
        "assert quorum is f, quorum\n"
        "from flchain_flwr.ledger.quorum import HeaderCosigner\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_module_imports_first() -> None:
    # lazy package imports no longer fix the order (FedBuff first) in which
    # a cycle such as strategies -> pov -> ledger.replay -> strategies
    # resolves: each module must import when it is the first one imported
    code = (
        "import importlib, pkgutil, sys, flchain_flwr\n"
        "names = [m.name for m in pkgutil.walk_packages("
        "flchain_flwr.__path__, 'flchain_flwr.')]\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('flchain_flwr')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {e!r}')\n"
        "assert len(names) > 50, names\n"
        "assert not failed, failed\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


POV_EXPORTS = (
    "Behaviour",
    "Candidate",
    "Committee",
    "CommitteeDecision",
    "IQRFilter",
    "MedianFilter",
    "Outcome",
    "PoVStrategy",
    "Prefilter",
    "ReferenceFn",
    "RefusedRequest",
    "Rule",
    "Score",
    "ScoreFn",
    "Threshold",
    "Verifier",
    "collect_votes",
    "cosine",
    "distances_to_mean",
)
"""What ``flchain_flwr.pov`` exports (its public API: keep each working)."""


def test_every_pov_export_imports_from_the_package() -> None:
    import flchain_flwr.pov as pov

    assert sorted(pov.__all__) == sorted(POV_EXPORTS)
    namespace: dict[str, object] = {}
    exec("from flchain_flwr.pov import *", namespace)
    for name in POV_EXPORTS:
        exported = namespace[name]
        assert exported is getattr(pov, name), name
        module = getattr(exported, "__module__", "")
        if module.startswith("flchain_flwr."):  # its defining module has it
            assert getattr(import_module(module), name) is exported, name
