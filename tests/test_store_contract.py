"""The Store contract, run against the Berkeley DB store and the in-memory store alike, and
the always-failing store's promise to fail everywhere."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popwatch.address import normalize_host
from popwatch.errors import AddressError, StoreError
from popwatch.store import Store, StoreOptions, open_store
from popwatch.store.failing import FailingStore
from popwatch.store.keys import NUL, KeyCodec, canonical_host
from popwatch.store.memory import MemoryStore

Factory = Callable[[StoreOptions], Store]


@pytest.fixture(params=["bdb", "memory"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    if request.param == "bdb":
        return lambda opts: open_store(tmp_path / "relayers.db", opts)
    return lambda opts: MemoryStore(opts)


def test_not_found_is_a_normal_answer(make: Factory) -> None:
    store = make(StoreOptions())
    assert store.get("192.0.2.1") is None
    assert store.delete("192.0.2.1") is False
    assert list(store.items()) == []


def test_normalizes_on_the_way_in(make: Factory) -> None:
    store = make(StoreOptions())
    store.put("::FFFF:192.0.2.1", 1)
    store.put("2001:0DB8::0005", 2)
    assert sorted(store.items()) == [("192.0.2.1", 1), ("2001:db8::5", 2)]
    assert store.get("192.0.2.1") == 1


@pytest.mark.parametrize("bad", ["10.1", "10.0.0.0/8", "999.1.1.1", "", " "])
def test_refuses_bad_addresses(make: Factory, bad: str) -> None:
    store = make(StoreOptions())
    with pytest.raises(AddressError):
        store.put(bad, 1)
    with pytest.raises(AddressError):
        store.get(bad)
    with pytest.raises(AddressError):
        store.delete(bad)


def test_batch_view_sees_its_own_changes(make: Factory) -> None:
    store = make(StoreOptions())
    store.put("192.0.2.1", 1)
    with store.batch() as view:
        view.put("192.0.2.2", 2)
        assert view.get("192.0.2.2") == 2
        assert view.delete("192.0.2.1")
        assert sorted(view.items()) == [("192.0.2.2", 2)]
    assert sorted(store.items()) == [("192.0.2.2", 2)]


def test_deleting_while_iterating_items_is_safe(make: Factory) -> None:
    store = make(StoreOptions())
    with store.batch() as view:
        for i in range(50):
            view.put(f"192.0.2.{i}", i)
    with store.batch() as view:
        for ip, _ in view.items():
            view.delete(ip)
    assert list(store.items()) == []


def test_map_key_is_what_the_mta_looks_up(make: Factory) -> None:
    store = make(StoreOptions(key_prefix="POP:", ipv6_prefix="IPv6:"))
    assert store.map_key("192.0.2.1") == "pop:192.0.2.1"
    assert store.map_key("2001:DB8::5") == "pop:ipv6:2001:db8::5"
    with pytest.raises(AddressError):
        store.map_key("10.1")


def test_clear_and_context_manager(make: Factory) -> None:
    with make(StoreOptions()) as store:
        store.put("192.0.2.1", 1)
        store.put("192.0.2.2", 2)
        assert store.clear() == 2
        assert list(store.items()) == []
    with pytest.raises(StoreError):
        store.get("192.0.2.1")  # closed


def test_memory_store_counts_flushes() -> None:
    store = MemoryStore()
    with store.batch() as view:
        view.put("192.0.2.1", 1)
        view.put("192.0.2.2", 1)
    with store.batch() as view:
        view.get("192.0.2.1")  # no change: no flush
    store.put("192.0.2.3", 1)
    assert store.flushes == 2
    assert store.path is None


def test_failing_store_fails_every_operation() -> None:
    store = FailingStore("t.db: cannot open: simulated")
    ops: list[Callable[[], object]] = [
        lambda: store.get("192.0.2.1"),
        lambda: store.put("192.0.2.1", 1),
        lambda: store.delete("192.0.2.1"),
        lambda: store.items(),
        lambda: store.clear(),
        lambda: store.batch(),
        lambda: store.expire(1),
    ]
    for op in ops:
        with pytest.raises(StoreError, match=r"^t.db: cannot open: simulated$"):
            op()
    assert store.calls == len(ops)
    assert store.map_key("192.0.2.1") == "192.0.2.1"  # formatting only, no table access
    with store:
        pass


def test_expire_removes_old_entries_only(make: Factory) -> None:
    store = make(StoreOptions())
    with store.batch() as view:
        for i in range(10):
            view.put(f"192.0.2.{i}", 100 + i)
        view.put("2001:db8::1", 100)
    assert store.expire(104) == 6
    assert sorted(t for _, t in store.items()) == [105, 106, 107, 108, 109]
    assert store.expire(104) == 0
    with store.batch() as view:
        assert view.expire(105) == 1
        assert view.get("192.0.2.5") is None


# -- the key codec's fast path is exactly normalize_host --------------------------------------


def _slow(text: str) -> str | None:
    try:
        return normalize_host(text)
    except AddressError:
        return None


def _fast(text: str) -> str | None:
    try:
        return canonical_host(text)
    except AddressError:
        return None


addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
    # sparse IPv6: runs of zero groups of every length, where compression rules differ
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xDB8]), min_size=8, max_size=8).map(
        lambda g: str(ipaddress.IPv6Address(sum(x << (16 * i) for i, x in enumerate(g))))
    ),
)


@given(addresses)
def test_fast_path_agrees_on_canonical_addresses(text: str) -> None:
    assert _fast(text) == _slow(text)
    codec = KeyCodec("POP:", "IPv6:")
    assert codec.decode_key(codec.encode_key(text, True)) == (_slow(text), "")


@given(
    st.one_of(
        addresses.map(str.upper),
        addresses.map(lambda a: a.replace("::", ":0:", 1)),
        addresses.map(lambda a: "::ffff:" + a if ":" not in a else a),
        st.text("0123456789abcdefABCDEF:.% /", max_size=45),
    )
)
def test_fast_path_agrees_on_anything(text: str) -> None:
    assert _fast(text) == _slow(text)
    codec = KeyCodec()
    ip, why = codec.decode_key(text.encode("ascii") + NUL)
    assert ip == (text if _slow(text) == text else None)
    assert (why == "") == (ip is not None)
