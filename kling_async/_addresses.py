"""Which addresses a download may connect to: public ones, unless private ones are allowed.

A result URL comes from a server, so it must not be able to make this process fetch from its
own machine or network (an admin page on 127.0.0.1, a cloud's metadata service on
169.254.169.254). Hosts are checked twice: an IP literal in any spelling that a resolver
would accept (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``, ``[::ffff:127.0.0.1]``,
a trailing dot) before any connection, and a name through `CheckingResolver`, which checks
every address the name resolves to and hands the connector only checked ones.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import aiohttp
import attrs
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["AddressRefusedError", "AddressRules", "CheckingResolver", "is_loopback_url"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_METADATA = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254")))
#: The first test an address passes names its kind; public addresses pass none.
_KINDS: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda a: a.is_unspecified, "an unspecified"),
    (lambda a: a.is_loopback, "a loopback"),
    (lambda a: a in _METADATA, "a link-local (cloud metadata)"),
    (lambda a: a.is_link_local, "a link-local"),
    (lambda a: a.is_multicast, "a multicast"),
    (lambda a: a in _CGNAT, "a shared (CGNAT)"),
    (lambda a: a in _UNIQUE_LOCAL, "a unique-local"),
    (lambda a: a.is_reserved, "a reserved"),
    (lambda a: a.is_private, "a private"),
    (lambda a: not a.is_global, "a special-purpose"),
)
# One part of an IPv4 address as inet_aton reads it: hex, octal (a leading 0) or decimal.
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")
_OCTAL = re.compile(r"0[0-7]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_DIGITS = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


class AddressRefusedError(Exception):
    """A host is, or resolves to, an address downloads may not reach; `reason` says why."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(reason)


@attrs.frozen
class AddressRules:
    """Public addresses only, plus the networks in `trusted` (for tests)."""

    trusted: tuple[IPNetwork, ...] = ()

    def check_host(self, host: str) -> None:
        """Raise `AddressRefusedError` when `host` is an IP literal that may not be reached.

        A host that is all numbers but no address (``256.1.1.1``) is refused too: no name
        looks like that, and a resolver might still read it as an address."""
        address = literal_address(host)
        if address is not None:
            self.check(host, address, resolved=False)

    def check(self, host: str, address: IPAddress, *, resolved: bool = True) -> None:
        """Raise `AddressRefusedError` when `address` (of `host`) may not be reached."""
        if any(address in network for network in self.trusted):
            return
        kind = forbidden_kind(address)
        if kind is not None:
            reason = f"it resolves to {address}, {kind}" if resolved else f"{address} is {kind}"
            raise AddressRefusedError(host, reason)


def forbidden_kind(address: IPAddress) -> str | None:
    """What makes `address` unfit for a download ("a loopback address"), or None if public."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        kind = forbidden_kind(embedded)
        return None if kind is None else f"an IPv6 address carrying {embedded}, {kind}"
    for test, kind in _KINDS:
        if test(address):
            return f"{kind} address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, in any form a resolver accepts; None for a name.

    Raises `AddressRefusedError` for a host made of numbers that is no address.
    """
    text = unquote(host).strip("[]").rstrip(".").lower()
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    parts = text.split(".")
    numbers = [_part_value(part) for part in parts]
    if len(parts) > 4 or None in numbers:
        if all(_DIGITS.fullmatch(part) for part in parts):
            raise AddressRefusedError(host, f"{host} is made of numbers but is no IP address")
        return None
    *head, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        raise AddressRefusedError(host, f"{host} is an IP address out of range")
    value = last
    for position, number in enumerate(head):
        value += number << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def _part_value(part: str) -> int | None:
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if _DECIMAL.fullmatch(part):
        return int(part)
    return None


def is_loopback_url(url: str) -> bool:
    """Whether `url` points at this machine (``localhost`` or a loopback address), as the URL
    of a fake server started here does."""
    try:
        host = urlsplit(url).hostname or ""
        address = literal_address(host)
    except (ValueError, AddressRefusedError):
        return False
    if address is not None:
        return address.is_loopback
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


class CheckingResolver(AbstractResolver):
    """An aiohttp resolver that checks every address a name resolves to under `rules`.

    The connector connects only to the addresses a resolver returns, so a name that resolves
    to a refused address (even among public ones) never gets a connection.
    """

    def __init__(self, rules: AddressRules, inner: AbstractResolver | None = None) -> None:
        self._rules = rules
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self._rules.check_host(host)
        if self._inner is None:
            self._inner = aiohttp.ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        for result in results:
            self._rules.check(host, ipaddress.ip_address(result["host"]))
        return results

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
