"""The SSRF address policy: the rules, the allow-list, and the resolver that applies them."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from udfs.addresses import BlockedAddressError, blocked_reason, guarded_resolver, parse_networks


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "not-global"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert blocked_reason(address) == reason


def test_allow_list_overrides_the_rules() -> None:
    allow = parse_networks(["10.0.0.0/8"])
    assert (blocked_reason("10.9.9.9", allow), blocked_reason("192.168.0.1", allow)) == (None, "private")


def test_the_resolver_returns_only_allowed_addresses_and_caches_each_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []

    def getaddrinfo(host: str, port: int, family: int, kind: int) -> list[tuple[object, ...]]:
        lookups.append(host)
        addresses = {"mixed.example": ["10.0.0.7", "93.184.216.34"], "inside.example": ["127.0.0.1", "10.1.1.1"]}
        return [(socket.AF_INET, kind, 6, "", (a, port)) for a in addresses[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def resolve(allow: tuple[str, ...]) -> tuple[list[str], list[str], str]:
        with ThreadPoolExecutor(1) as pool:
            resolver = guarded_resolver(parse_networks(allow), pool)
            mixed = [r["host"] for r in await resolver.resolve("mixed.example", 80)]
            again = [r["host"] for r in await resolver.resolve("mixed.example", 80)]
            try:
                await resolver.resolve("inside.example", 80)
                refused = ""
            except BlockedAddressError as e:
                refused = str(e)
            await resolver.close()
        return mixed, again, refused

    mixed, again, refused = asyncio.run(resolve(()))
    assert mixed == again == ["93.184.216.34"]  # the connection can only go to the checked address
    assert refused == "inside.example resolves to refused address 127.0.0.1 (loopback), 10.1.1.1 (private)"
    assert lookups == ["mixed.example", "inside.example"]  # the second lookup of mixed.example came from the cache
    assert asyncio.run(resolve(("10.0.0.0/8",)))[0] == ["10.0.0.7", "93.184.216.34"]
