"""Network addresses as users write them: ``"host:port"``, ``"[v6]:port"``, ``":port"``."""

from __future__ import annotations

import ipaddress

from ekv._errors import ConfigError

__all__ = ["format_address", "is_loopback", "parse_address"]


def parse_address(text: object, what: str = "address", *, default_host: str = "") -> tuple[str, int]:
    """Split ``"host:port"`` (IPv6 in brackets) into (host, port); raises ConfigError."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{what} must be a 'host:port' string, not {text!r:.80}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{what} {text!r} is not '[ipv6]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{what} {text!r} has no port; write 'host:port'")
        if ":" in host:
            raise ConfigError(f"{what} {text!r}: put IPv6 addresses in brackets, '[::1]:4370'")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} has an invalid port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} {text!r}: port must be 0-65535")
    return (host or default_host), port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
