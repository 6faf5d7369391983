"""Client mods: add to any ClientApp with ``ClientApp(mods=[...])``."""

from .dgc import DGC_WARMUP, Compressed, DGCConfig, DGCState, compress, dgc_mod

__all__ = ["DGC_WARMUP", "Compressed", "DGCConfig", "DGCState", "compress", "dgc_mod"]
