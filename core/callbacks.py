"""Where completion callbacks may go, and how they are signed.

A callback is a request regscan makes to a URL a caller chose, from inside the
network regscan runs in: unchecked, it would let any caller reach internal services
(cloud metadata at 169.254.169.254, Redis on loopback, private ranges). So a callback
URL must be http(s), carry no credentials, and its host must resolve only to public
addresses, checked when the scan is asked for and again when the callback is sent (a
name can change what it resolves to in between). Operators name internal receivers
they trust in ``REGSCAN_CALLBACK_ALLOW`` (host names, or networks in CIDR form).

Each team signs with a key of its own, derived from ``REGSCAN_CALLBACK_SECRET``: one
team's key cannot forge another team's callbacks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

_KEY_LABEL = b"regscan callback key v1\x00"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedDestination(ValueError):
    """A callback URL regscan will not send to; the message says why."""


@dataclass(frozen=True)
class Allowed:
    """The receivers an operator trusts although they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, setting: str) -> Allowed:
        hosts, networks = set(), []
        for entry in (e.strip() for e in setting.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower())
        return cls(frozenset(hosts), tuple(networks))

    def address(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)


@dataclass(frozen=True)
class Destination:
    """Where to send a callback: the URL's parts and the addresses to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def destination(url: str, allowed: Allowed) -> Destination:
    """Check ``url`` and resolve it; raises :class:`RefusedDestination` saying why not.

    Resolving is part of the check: the addresses returned are the ones to connect to,
    so that what was checked is what is reached."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedDestination("callbackUrl must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise RefusedDestination(
            "callbackUrl must not carry credentials (user:password@): verify the signature instead"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RefusedDestination("callbackUrl has an invalid port") from None
    host = parts.hostname.lower()
    addresses = _resolve(host, port)
    if host not in allowed.hosts:
        for ip in addresses:
            if not _public(ip) and not allowed.address(ip):
                raise RefusedDestination(
                    f"callbackUrl host {host} resolves to {ip}, which is not a public "
                    "address; internal receivers must be allowed by the operator "
                    "(REGSCAN_CALLBACK_ALLOW)"
                )
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Destination(parts.scheme, host, port, path, tuple(str(ip) for ip in addresses))


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise RefusedDestination(f"callbackUrl host {host} does not resolve") from None
    addresses = []
    for _family, _type, _proto, _name, sockaddr in found:
        ip = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        addresses.append(ip)
    if not addresses:
        raise RefusedDestination(f"callbackUrl host {host} does not resolve")
    return addresses


def _public(ip: IPAddress) -> bool:
    """Routable on the internet: not loopback, private, link-local, reserved, multicast,
    unspecified or shared (100.64/10)."""
    return ip.is_global and not ip.is_multicast


def team_key(secret: str, team: str) -> bytes:
    """The key a team's callbacks are signed with (HMAC-SHA256 of the team's name under
    ``REGSCAN_CALLBACK_SECRET``), hex-encoded as the team is given it."""
    return (
        hmac.new(secret.encode(), _KEY_LABEL + team.encode(), hashlib.sha256).hexdigest().encode()
    )


def sign(key: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
