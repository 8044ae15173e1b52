"""Address normalization: the table of accepted and refused forms, and its properties."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popwatch.address import normalize_host, parse_host
from popwatch.errors import AddressError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("2001:DB8::5", "2001:db8::5"),
        ("2001:0db8:0000:0000:0000:0000:0000:0005", "2001:db8::5"),
        ("::1", "::1"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("::FFFF:C000:020A", "192.0.2.10"),
        ("fe80::1", "fe80::1"),
        ("2001:db8::192.0.2.1", "2001:db8::c000:201"),
    ],
)
def test_accepted_forms(text: str, expected: str) -> None:
    assert normalize_host(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.1", "truncated key would match a whole network"),
        ("10.1.2", "not a full IPv4 address"),
        ("10", "not a full IPv4 address"),
        ("10.0.0.0/8", "no mask"),
        ("192.0.2.10/32", "no mask"),
        ("999.1.1.1", "not an IPv4 or IPv6 address"),
        ("192.0.2.010", "not an IPv4 or IPv6 address"),  # leading zero: octal ambiguity
        ("", "not a host address"),
        (" ", "white space"),
        (" 192.0.2.10", "white space"),
        ("192.0.2.10 ", "white space"),
        ("192.0.2.10\n", "white space"),
        ("192.0.2. 10", "white space"),
        ("fe80::1%eth0", "no mask or zone"),
        ("2001:db8::5::1", "not an IPv4 or IPv6 address"),
        ("host.example.net", "not a full IPv4 address"),
        ("[192.0.2.10]", "not an IPv4 or IPv6 address"),
        ("IPv6:2001:db8::5", "not an IPv4 or IPv6 address"),
        ("1" * 100, "not a host address"),
    ],
)
def test_refused_forms(text: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        normalize_host(text)


def test_error_is_one_line_naming_the_text() -> None:
    with pytest.raises(AddressError) as info:
        normalize_host("10.0.0.0/8")
    assert str(info.value).startswith('bad address "10.0.0.0/8"')
    assert "\n" not in str(info.value)


ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)


@given(st.one_of(ipv4, ipv6))
def test_round_trip_and_idempotent(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    once = normalize_host(str(addr))
    assert normalize_host(once) == once
    assert parse_host(once) == parse_host(str(addr))


@given(ipv6)
def test_ipv6_any_spelling_same_key(addr: ipaddress.IPv6Address) -> None:
    spellings = {str(addr), str(addr).upper(), addr.exploded, addr.exploded.upper()}
    assert len({normalize_host(s) for s in spellings}) == 1


@given(ipv4)
def test_v4_mapped_is_stored_as_v4(addr: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{addr}")
    assert normalize_host(str(mapped)) == str(addr)
    assert normalize_host(mapped.exploded) == str(addr)


@given(ipv4, st.integers(min_value=1, max_value=3))
def test_truncated_v4_never_accepted(addr: ipaddress.IPv4Address, parts: int) -> None:
    truncated = ".".join(str(addr).split(".")[:parts])
    with pytest.raises(AddressError):
        normalize_host(truncated)


@given(st.one_of(ipv4, ipv6), st.integers(min_value=0, max_value=128))
def test_networks_never_accepted(addr: object, bits: int) -> None:
    with pytest.raises(AddressError):
        normalize_host(f"{addr}/{bits}")


@given(st.text(max_size=50))
def test_anything_is_either_canonical_or_refused(text: str) -> None:
    try:
        out = normalize_host(text)
    except AddressError:
        return
    assert ipaddress.ip_address(out)  # parses
    assert out == out.strip() and out == out.lower()
    assert "/" not in out and "%" not in out


def _slow(text: str) -> str | None:
    """What parse_host gave before the dotted-quad fast path: ipaddress alone."""
    if not text or len(text) > 45 or any(c.isspace() for c in text):
        return None
    if "/" in text or "%" in text or (":" not in text and text.count(".") != 3):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _quadlike() -> st.SearchStrategy[str]:
    """Texts close to dotted quads: octets with leading zeros, out of range, Unicode digits,
    signs, blanks, too few or too many parts."""
    octet = st.one_of(
        st.integers(min_value=0, max_value=300).map(str),
        st.text(alphabet="0123456789", min_size=0, max_size=4),
        st.sampled_from(["00", "01", "010", "256", "+1", "-1", " 1", "1 ", "\u0661", "\uff11"]),
    )
    return st.lists(octet, min_size=1, max_size=6).map(".".join)


@given(st.one_of(_quadlike(), st.text(alphabet="0123456789.:afx ", max_size=20), st.text()))
def test_fast_path_equals_ipaddress(text: str) -> None:
    expected = _slow(text)
    try:
        out = normalize_host(text)
    except AddressError:
        assert expected is None
        got_addr = None
    else:
        assert out == expected
        got_addr = parse_host(text)
    if expected is None:
        with pytest.raises(AddressError):
            parse_host(text)
    else:
        assert got_addr == ipaddress.ip_address(expected)
        assert type(got_addr) is type(ipaddress.ip_address(expected))


@given(ipv4)
def test_every_ipv4_address_takes_either_path_to_the_same_answer(
    addr: ipaddress.IPv4Address,
) -> None:
    assert normalize_host(str(addr)) == str(addr)
    assert parse_host(str(addr)) == addr
