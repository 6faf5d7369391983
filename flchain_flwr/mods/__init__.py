"""Client mods: add to any ClientApp with ``ClientApp(mods=[...])``."""

from .dgc import dgc_mod
from .dgccompress import Compressed, DGCState, compress
from .dgcconfig import DGC_WARMUP, DGCConfig
from .downlink import DownlinkError, apply_delta, downlink_mod
from .personal import PersonalConfig, PersonalState, personal_mod
from .signreply import TRAINER_KEY_CONFIG, SignReplyError, signreply_mod

__all__ = [
    "DGC_WARMUP",
    "TRAINER_KEY_CONFIG",
    "Compressed",
    "DGCConfig",
    "DGCState",
    "DownlinkError",
    "PersonalConfig",
    "PersonalState",
    "SignReplyError",
    "apply_delta",
    "compress",
    "dgc_mod",
    "downlink_mod",
    "personal_mod",
    "signreply_mod",
]
