"""Network addresses in configs: which ones stay on this host.

Plain (no TLS, no node authentication) transport is accepted only where nothing leaves the
machine, so both the coordinator's ``server.toml`` and a site's ``node.toml`` ask the same
question: is this host (or ``host:port``) loopback?
"""

from __future__ import annotations

import ipaddress

LOCALHOST = "localhost"


def host_of(address: str) -> str:
    """``host`` of ``host:port`` (IPv6 in brackets, ``[::1]:9092``); a bare host as is."""
    text = address.strip()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text[1:]
    if text.count(":") == 1:
        return text.rsplit(":", 1)[0]
    return text


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and 127.0.0.0/8 / ::1; False for any other name, for the
    wildcards (``0.0.0.0``, ``::``, empty: they listen on every interface) and for junk."""
    text = host.strip().strip("[]").lower()
    if text == LOCALHOST:
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False
