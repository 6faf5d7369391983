"""Package attributes imported on first use (PEP 562).

A package whose ``__init__`` imports every submodule makes each importer pay
for all of them: ``import flchain_flwr.mods.downlink`` in a ClientApp process
ran the whole ledger (SQLite, PyNaCl, the consensus code) and FedBuff. With
:func:`lazy_exports` a package names its public attributes and the submodule
each lives in; the submodule is imported when one of them is first read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.util import find_spec
from types import ModuleType
from typing import Any

_EXPORTS = "_lazy_exports"


class _LazyPackage(ModuleType):
    """A package whose exported names win over same-named submodules.

    Importing a submodule binds it to its package's attribute of that name;
    ``flchain_flwr.ledger.quorum`` is both a module and the exported
    ``consensus.quorum`` function, which the eager ``__init__`` bound last.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, ModuleType) and name in self.__dict__[_EXPORTS]:
            return  # the export is read (and bound) by __getattr__ instead
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps each public
    name to the submodule (relative, without the dot) that defines it; any
    other name that is a submodule is imported as one."""
    module = sys.modules[package]
    namespace = vars(module)
    namespace[_EXPORTS] = dict(exports)
    module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(import_module(f".{exports[name]}", package), name)
        elif not name.startswith("__") and find_spec(f"{package}.{name}") is not None:
            value = import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value  # later reads skip this function
        return value

    return __getattr__
