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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

_KEY_LABEL = b"regscan callback key v1\x00"
RESOLVE_SECONDS = 3.0
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback-resolve")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedDestination(ValueError):
    """A callback URL regscan will not send to; the message says why."""


class Unresolved(RefusedDestination):
    """The URL's host did not resolve (in time): perhaps only for now."""


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
                # The address itself is not said: the message would map internal names.
                raise RefusedDestination(
                    f"callbackUrl host {host} resolves to an address that is not public; "
                    "internal receivers must be allowed by the operator "
                    "(REGSCAN_CALLBACK_ALLOW)"
                )
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Destination(parts.scheme, host, port, path, tuple(str(ip) for ip in addresses))


def _resolve(host: str, port: int) -> list[IPAddress]:
    # In a thread of its own, so a name server that never answers holds no request up.
    lookup = _RESOLVER.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        found = lookup.result(timeout=RESOLVE_SECONDS)
    except TimeoutError:
        raise Unresolved(f"callbackUrl host {host} did not resolve in time") from None
    except (OSError, UnicodeError):
        raise Unresolved(f"callbackUrl host {host} does not resolve") from None
    addresses = [ipaddress.ip_address(str(s[0]).partition("%")[0]) for *_, s in found]
    if not addresses:
        raise Unresolved(f"callbackUrl host {host} does not resolve")
    return addresses


def _public(ip: IPAddress) -> bool:
    """Routable on the internet: not loopback, private, link-local, reserved, multicast,
    unspecified or shared (100.64/10), and no IPv6 form of an IPv4 address that is not."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return _public(inner)
        if ip.is_site_local:  # fec0::/10, deprecated but still routed inside some sites
            return False
    return ip.is_global and not ip.is_multicast


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: IPv4-mapped and
# -compatible (::ffff:0:0/96, ::/96, ::ffff:0:0:0/96), NAT64 (64:ff9b::/96,
# 64:ff9b:1::/48). 6to4 (2002::/16) carries it in bits 16 to 48, Teredo inverted.
_EMBEDDING = tuple(
    ipaddress.ip_network(n)
    for n in ("::ffff:0:0/96", "::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in network for network in _EMBEDDING):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


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
