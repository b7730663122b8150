"""Callers' network addresses as gRPC reports them."""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string, its port dropped ("ipv4:127.0.0.1:5555" ->
    "ipv4:127.0.0.1"; "ipv6:[::1]:5555" and grpcio's "ipv6:%5B::1%5D:5555" -> the address
    without ":5555"): each call may come from a new port, one client is one host. Other
    forms (unix sockets) are returned whole."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer


def peer_network(peer: str) -> str:
    """What one client controls, for budgets: the host for IPv4, the /64 for IPv6 (one
    subscriber or one machine routinely holds a whole /64, and may rotate through it); other
    forms as `peer_host`."""
    host = peer_host(peer)
    if not host.startswith("ipv6:"):
        return host
    text = unquote(host[len("ipv6:") :]).strip("[]")
    try:
        address = ipaddress.IPv6Address(text.split("%", 1)[0])  # a zone id aside
    except ValueError:
        return host
    return f"ipv6:{ipaddress.IPv6Network((address, 64), strict=False)}"


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address is this machine ("localhost", 127.0.0.0/8, ::1): what is
    sent to it in plaintext crosses no network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
