"""Callers' network addresses as gRPC reports them."""

from __future__ import annotations


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string, its port dropped ("ipv4:127.0.0.1:5555" ->
    "ipv4:127.0.0.1"; "ipv6:[::1]:5555" and grpcio's "ipv6:%5B::1%5D:5555" -> the address
    without ":5555"): each call may come from a new port, one client is one host. Other
    forms (unix sockets) are returned whole."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer
