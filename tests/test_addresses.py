"""Which addresses downloads may reach: every spelling of an IP literal, resolved names."""

from __future__ import annotations

import ipaddress

import pytest
from helpers import FakeResolver
from hypothesis import given
from hypothesis import strategies as st

from kling_async._addresses import (
    AddressRefusedError,
    AddressRules,
    CheckingResolver,
    is_loopback_url,
    literal_address,
)

pytestmark = pytest.mark.anyio

PUBLIC = AddressRules()

REFUSED_HOSTS = [
    ("127.0.0.1", "loopback"),
    ("2130706433", "loopback"),  # decimal
    ("0x7f000001", "loopback"),  # hex
    ("0x7f.1", "loopback"),  # hex, short form
    ("0177.0.0.1", "loopback"),  # octal
    ("0177.0.0.0x1", "loopback"),  # mixed bases
    ("127.1", "loopback"),  # short form
    ("127.0.1", "loopback"),
    ("127.0.0.1.", "loopback"),  # trailing dot
    ("%31%32%37.0.0.1", "loopback"),  # percent-encoded
    ("::1", "loopback"),
    ("[::1]", "loopback"),  # bracketed
    ("::ffff:127.0.0.1", "carrying 127.0.0.1, a loopback"),  # IPv4-mapped
    ("[::ffff:7f00:1]", "carrying 127.0.0.1, a loopback"),
    ("2002:7f00:1::", "carrying 127.0.0.1, a loopback"),  # 6to4
    ("64:ff9b::a9fe:a9fe", "carrying 169.254.169.254"),  # NAT64
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("0xa9fea9fe", "link-local (cloud metadata)"),
    ("2852039166", "link-local (cloud metadata)"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.0.1", "private"),
    ("012.0.0.1", "private"),  # octal 10.0.0.1
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("fd12:3456::1", "unique-local"),
    ("fc00::1", "unique-local"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not one to bind
    ("0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("256.0.0.1", "out of range"),
    ("1.2.3.4.5", "no IP address"),
    ("08.0.0.1", "no IP address"),  # 8 is no octal digit: no resolver reads it as an address
]


@pytest.mark.parametrize(("host", "kind"), REFUSED_HOSTS)
def test_refused_hosts_in_every_spelling(host: str, kind: str) -> None:
    """Loopback, private, link-local, CGNAT, unique-local, unspecified, multicast and reserved
    addresses are refused, however the IP literal is spelt."""
    with pytest.raises(AddressRefusedError, match=kind.replace("(", r"\(").replace(")", r"\)")):
        PUBLIC.check_host(host)


@pytest.mark.parametrize(
    "host",
    ["93.184.216.34", "8.8.8.8", "0x08080808", "2606:2800:220:1::", "cdn.example.com", "1.0x"],
)
def test_public_hosts_and_names_pass_the_literal_check(host: str) -> None:
    """Public addresses pass; names are left to the resolver."""
    PUBLIC.check_host(host)


def _spellings(value: int) -> st.SearchStrategy[str]:
    """Ways a resolver accepts to write the IPv4 address `value`."""
    octets = value.to_bytes(4, "big")

    def part(number: int, style: str) -> str:
        return {"dec": str(number), "hex": hex(number), "oct": f"0{number:o}"}[style]

    styles = st.sampled_from(["dec", "hex", "oct"])
    return st.one_of(
        st.just(str(value)),
        st.just(hex(value)),
        st.tuples(styles, styles, styles, styles).map(
            lambda s: ".".join(part(o, style) for o, style in zip(octets, s, strict=True))
        ),
        st.tuples(styles, styles).map(
            lambda s: f"{part(octets[0], s[0])}.{part(value & 0xFFFFFF, s[1])}"
        ),
        st.tuples(styles, styles, styles).map(
            lambda s: (
                f"{part(octets[0], s[0])}.{part(octets[1], s[1])}.{part(value & 0xFFFF, s[2])}"
            )
        ),
        st.just(f"::ffff:{ipaddress.IPv4Address(value)}"),
    )


@given(st.integers(0, 2**32 - 1).flatmap(lambda v: st.tuples(st.just(v), _spellings(v))))
def test_every_spelling_is_judged_as_its_address(case: tuple[int, str]) -> None:
    """Any spelling of an IPv4 address is refused exactly when the dotted quad is."""
    value, spelling = case
    address = literal_address(spelling)
    assert address is not None
    mapped = getattr(address, "ipv4_mapped", None)
    assert int(mapped or address) == value
    dotted = str(ipaddress.IPv4Address(value))
    try:
        PUBLIC.check_host(dotted)
    except AddressRefusedError:
        with pytest.raises(AddressRefusedError):
            PUBLIC.check_host(spelling)
    else:
        PUBLIC.check_host(spelling)


async def test_resolver_passes_names_with_only_public_addresses() -> None:
    """A name whose every address is public resolves as the inner resolver says."""
    inner = FakeResolver({"cdn.example": ["93.184.216.34", "2606:2800:220:1::"]})
    results = await CheckingResolver(PUBLIC, inner).resolve("cdn.example", 443)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:2800:220:1::"]


@pytest.mark.parametrize(
    ("addresses", "shown"),
    [
        (["10.1.2.3"], "it resolves to 10.1.2.3, a private address"),
        (["93.184.216.34", "127.0.0.1"], "it resolves to 127.0.0.1, a loopback address"),
        (["169.254.169.254"], "link-local (cloud metadata)"),
        (["::ffff:192.168.1.1"], "carrying 192.168.1.1, a private address"),
    ],
)
async def test_resolver_refuses_a_name_with_any_refused_address(
    addresses: list[str], shown: str
) -> None:
    """One refused address among a name's answers refuses the name: no connection at all."""
    inner = FakeResolver({"cdn.example": addresses})
    with pytest.raises(AddressRefusedError, match=shown.replace("(", r"\(").replace(")", r"\)")):
        await CheckingResolver(PUBLIC, inner).resolve("cdn.example", 443)


async def test_resolver_refuses_numeric_hosts_without_asking() -> None:
    """A numeric spelling handed to the resolver is judged before any lookup."""
    inner = FakeResolver({})
    with pytest.raises(AddressRefusedError, match="loopback"):
        await CheckingResolver(PUBLIC, inner).resolve("127.1", 80)
    assert inner.asked == []


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://localhost:8765", True),
        ("http://LOCALHOST.:8765/", True),
        ("http://127.0.0.1:41234", True),
        ("http://[::1]:8080", True),
        ("http://127.1", True),
        ("http://10.0.0.1", False),
        ("https://api.example.com", False),
        ("http://999.1.1.1", False),
        ("http://[::1", False),
        ("", False),
    ],
)
def test_is_loopback_url(url: str, local: bool) -> None:
    """URLs of this machine (where the command line allows private downloads) are told apart."""
    assert is_loopback_url(url) is local
