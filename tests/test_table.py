"""vsmtprelay semantics on top of a store: old, pinned, expiry cut-offs, listing text."""

from __future__ import annotations

import ipaddress
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popwatch import table
from popwatch.errors import AddressError
from popwatch.store import StoreOptions, open_store
from popwatch.store.memory import MemoryStore
from popwatch.table import Entry

NOW = 1_800_000_000


def filled(entries: dict[str, int], opts: StoreOptions | None = None) -> MemoryStore:
    store = MemoryStore(opts)
    for ip, t in entries.items():
        store.put(ip, t)
    return store


def test_expire_without_n_removes_old_keeps_pinned() -> None:
    store = filled({"192.0.2.1": NOW - 1, "192.0.2.2": NOW, "192.0.2.3": NOW + 1})
    assert table.expire(store, NOW) == 2
    assert list(store.items()) == [("192.0.2.3", NOW + 1)]


def test_expire_n_minutes_cutoff_is_inclusive() -> None:
    store = filled({"192.0.2.1": NOW - 3600, "192.0.2.2": NOW - 3599, "192.0.2.3": NOW - 7200})
    assert table.expire(store, NOW, 60) == 2
    assert list(store.items()) == [("192.0.2.2", NOW - 3599)]


def test_expire_zero_is_expire_all_old() -> None:
    a = filled({"192.0.2.1": NOW, "192.0.2.2": NOW + 5})
    b = filled({"192.0.2.1": NOW, "192.0.2.2": NOW + 5})
    table.expire(a, NOW, 0)
    table.expire(b, NOW)
    assert list(a.items()) == list(b.items())


def test_expire_with_nothing_to_do_does_not_write() -> None:
    store = filled({"192.0.2.1": NOW + 10})
    flushes = store.flushes
    assert table.expire(store, NOW, 5) == 0
    assert store.flushes == flushes


def test_negative_minutes_refused() -> None:
    with pytest.raises(ValueError):
        table.expire(MemoryStore(), NOW, -1)


def test_select_is_what_expire_would_remove() -> None:
    entries = {"192.0.2.1": NOW - 600, "192.0.2.2": NOW - 60, "192.0.2.3": NOW + 60}
    assert table.select(filled(entries), NOW, 5) == [Entry("192.0.2.1", NOW - 600)]
    assert [e.ip for e in table.select(filled(entries), NOW)] == ["192.0.2.1", "192.0.2.2"]
    assert len(table.dump(filled(entries))) == 3


def test_delete_reports_absent_in_order_and_checks_all_first() -> None:
    store = filled({"192.0.2.1": 1, "192.0.2.2": 2})
    assert table.delete(store, ["192.0.2.9", "192.0.2.1", "192.0.2.8"]) == [
        "192.0.2.9",
        "192.0.2.8",
    ]
    with pytest.raises(AddressError):
        table.delete(store, ["192.0.2.2", "10.1"])
    assert store.get("192.0.2.2") == 2  # nothing removed when one address is bad


def test_sorted_numerically_v4_before_v6() -> None:
    store = filled({"2001:db8::1": 1, "10.0.0.2": 1, "9.255.255.255": 1, "10.0.0.10": 1, "::1": 1})
    assert [e.ip for e in table.dump(store)] == [
        "9.255.255.255",
        "10.0.0.2",
        "10.0.0.10",
        "::1",
        "2001:db8::1",
    ]


def test_listing_text_is_the_vsmtprelay_shape() -> None:
    store = filled({"10.11.12.13": 906502527, "192.0.2.1": 4102444800})
    text = table.format_listing(table.dump(store), store)
    assert text == (
        "# timestamp (UTC): Tue Sep 22 22:15:27 1998\n"
        "10.11.12.13 906502527\n"
        "# timestamp (UTC): Fri Jan  1 00:00:00 2100\n"
        "192.0.2.1 4102444800\n"
    )


def test_listing_uses_map_keys() -> None:
    store = filled({"192.0.2.1": 5, "2001:db8::5": 6}, StoreOptions("sendmail", "POP:", "IPv6:"))
    text = table.format_listing(table.dump(store), store)
    assert "pop:192.0.2.1 5\n" in text and "pop:ipv6:2001:db8::5 6\n" in text
    entries, bad = table.parse_listing(text.upper(), "POP:", "IPv6:")
    assert not bad
    assert entries == [Entry("192.0.2.1", 5), Entry("2001:db8::5", 6)]


def test_json_shape() -> None:
    store = filled({"192.0.2.1": NOW - 1, "2001:db8::5": NOW + 1})
    rows = json.loads(table.format_json(table.dump(store), store, NOW))
    assert rows == [
        {
            "address": "192.0.2.1",
            "key": "192.0.2.1",
            "timestamp": NOW - 1,
            "utc": "2027-01-15T07:59:59Z",
            "pinned": False,
        },
        {
            "address": "2001:db8::5",
            "key": "2001:db8::5",
            "timestamp": NOW + 1,
            "utc": "2027-01-15T08:00:01Z",
            "pinned": True,
        },
    ]


def test_parse_listing_comments_blank_lines_and_bad_lines() -> None:
    text = (
        "# timestamp (UTC): Tue Sep 22 22:15:27 1998\n"
        "10.11.12.13 906502527\n"
        "\n"
        "   # indented comment\n"
        "10.1 5\n"
        "192.0.2.1\n"
        "192.0.2.2 -5\n"
        "192.0.2.3 12abc\n"
        "192.0.2.4 1 2\n"
        "2001:DB8::5\t77\n"
        "10.11.12.13 906502528\n"
    )
    entries, bad = table.parse_listing(text)
    assert entries == [Entry("2001:db8::5", 77), Entry("10.11.12.13", 906502528)]
    assert [b.lineno for b in bad] == [5, 6, 7, 8, 9]
    assert "truncated key" in bad[0].reason
    assert bad[1].reason == 'expected "ADDRESS TICKS"'
    assert bad[2].reason.startswith('bad TICKS "-5"')


def test_load_replaces_or_merges() -> None:
    store = filled({"192.0.2.1": 1, "192.0.2.2": 2})
    table.load(store, [Entry("192.0.2.3", 3)], merge=True)
    assert len(list(store.items())) == 3
    table.load(store, [Entry("192.0.2.4", 4)])
    assert list(store.items()) == [("192.0.2.4", 4)]


# -- properties ------------------------------------------------------------------------------

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(
    lambda a: str(a.ipv4_mapped or a) if isinstance(a, ipaddress.IPv6Address) else str(a)
)
stamps = st.integers(min_value=0, max_value=2 * NOW)
tables = st.dictionaries(addresses, stamps, max_size=40)
minutes = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6))


@given(tables, stamps, minutes)
def test_expire_invariants(entries: dict[str, int], now: int, n: int | None) -> None:
    store = filled(entries)
    limit = now if n is None else now - 60 * n
    removed = table.expire(store, now, n)
    left = dict(store.items())
    assert removed == len(entries) - len(left)
    for ip, t in entries.items():
        if t > now:
            assert left.get(ip) == t, "a future-stamped entry was expired"
        elif t > limit:
            assert left.get(ip) == t, "an entry newer than the cut-off was expired"
        else:
            assert ip not in left, "an old entry survived"
    assert [e.ip for e in table.select(filled(entries), now, n)] == sorted(
        (ip for ip, t in entries.items() if t <= limit),
        key=lambda ip: (ipaddress.ip_address(ip).version, int(ipaddress.ip_address(ip))),
    )


@given(tables)
def test_listing_round_trip(entries: dict[str, int]) -> None:
    store = filled(entries)
    text = table.format_listing(table.dump(store), store)
    parsed, bad = table.parse_listing(text)
    assert not bad
    assert dict((e.ip, e.stamp) for e in parsed) == entries


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["put", "delete"]), addresses, stamps), max_size=30))
def test_bdb_store_behaves_like_a_dict(ops: list[tuple[str, str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = open_store(Path(d) / "r.db", StoreOptions(key_format="postfix"))
        model: dict[str, int] = {}
        with store.batch() as view:
            for op, ip, t in ops:
                if op == "put":
                    view.put(ip, t)
                    model[ip] = t
                else:
                    assert view.delete(ip) == (ip in model)
                    model.pop(ip, None)
        assert dict(store.items()) == model
        for ip, t in model.items():
            assert store.get(ip) == t
