"""The SSRF address policy of the fetcher: which IP addresses it may connect to, checked where it connects.

:func:`blocked_reason` refuses private, loopback, link-local (169.254.169.254, the cloud metadata service),
multicast, reserved, unspecified and other non-global addresses, IPv4-mapped IPv6 ones included, unless a network
of the allow-list (:func:`parse_networks`) holds them. :func:`guarded_resolver` is the aiohttp resolver that
applies it to every host name the fetcher connects to (on every redirect hop too): it returns only the allowed
addresses, so the connection goes to a checked address, and raises :class:`BlockedAddressError` when none is left.
Pure: no Spark import.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# How long a resolved host's addresses are reused by one resolver.
RESOLVE_TTL_S = 300.0


class BlockedAddressError(Exception):
    """A host resolved only to refused addresses (or is a refused IP literal)."""


def parse_networks(networks: Sequence[str]) -> tuple[Network, ...]:
    """Parse allow-list entries ("127.0.0.0/8", "::1") into networks; raise ValueError on a bad entry."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def blocked_reason(address: str, allow: Sequence[Network] = ()) -> str | None:
    """Why connecting to IP ``address`` is refused (None: allowed). The allow-list wins over every rule."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
        if any(ip in net for net in allow):
            return None
    for check in ("is_loopback", "is_link_local", "is_multicast", "is_unspecified", "is_reserved", "is_private"):
        if getattr(ip, check):
            return check[3:].replace("_", "-")
    if not ip.is_global:
        return "not-global"
    return None


def guarded_resolver(allow: Sequence[Network], executor: ThreadPoolExecutor) -> Any:
    """An aiohttp resolver (``aiohttp.abc.AbstractResolver``) that runs getaddrinfo in ``executor``, caches each
    lookup for :data:`RESOLVE_TTL_S` seconds and returns only the addresses :func:`blocked_reason` allows;
    a host with none raises :class:`BlockedAddressError`."""
    from aiohttp.abc import AbstractResolver, ResolveResult

    class GuardedResolver(AbstractResolver):
        """Threaded getaddrinfo with a per-fetcher cache that returns only allowed addresses."""

        def __init__(self) -> None:
            self._cache: dict[tuple[str, int, int], tuple[float, asyncio.Future[list[ResolveResult]]]] = {}

        async def _lookup(self, host: str, port: int, family: int) -> list[ResolveResult]:
            loop = asyncio.get_running_loop()
            infos = await loop.run_in_executor(
                executor, lambda: socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            )
            allowed: list[ResolveResult] = []
            refused: list[str] = []
            for fam, _, proto, _, sockaddr in infos:
                address = str(sockaddr[0])
                reason = blocked_reason(address, allow)
                if reason is not None:
                    refused.append(f"{address} ({reason})")
                    continue
                allowed.append(
                    ResolveResult(
                        hostname=host,
                        host=address,
                        port=int(sockaddr[1]),
                        family=fam,
                        proto=proto,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
            if not allowed:
                raise BlockedAddressError(f"{host} resolves to refused address {', '.join(refused[:3])}")
            return allowed

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            key = (host, port, int(family))
            now = time.monotonic()
            cached = self._cache.get(key)
            if cached is None or now - cached[0] > RESOLVE_TTL_S:
                cached = (now, asyncio.ensure_future(self._lookup(host, port, int(family))))
                self._cache[key] = cached
            try:
                return await asyncio.shield(cached[1])
            except socket.gaierror as e:
                if e.errno == socket.EAI_AGAIN:  # a temporary failure is not cached
                    self._cache.pop(key, None)
                raise

        async def close(self) -> None:
            for _, fut in self._cache.values():
                if not fut.done():
                    fut.cancel()
            self._cache.clear()

    return GuardedResolver()
