"""Deployment helpers: a real SuperLink and SuperNodes on loopback, with Flower's
own TLS and SuperNode authentication (see docs/deployment.md)."""

from .credentials import NodeKey, TLSFiles, make_node_key, make_tls
from .loopback import LoopbackFederation, SuperNode

__all__ = [
    "LoopbackFederation",
    "NodeKey",
    "SuperNode",
    "TLSFiles",
    "make_node_key",
    "make_tls",
]
