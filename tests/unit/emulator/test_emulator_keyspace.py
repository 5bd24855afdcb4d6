"""The store's keyspace on a fake clock: typed items, lazy expiry and Momento's CollectionTtl."""

from __future__ import annotations

import pytest

from pipeline.emulator.state import CacheNotFound, SortedSet, Store, TopicSettings, WrongType


def _store(now: list[float]) -> Store:
    store = Store(TopicSettings(), clock=lambda: now[0])
    store.create_cache("c")
    return store


def test_a_new_collection_takes_the_ttl_and_an_update_refreshes_it_only_when_asked() -> None:
    now = [100.0]
    store = _store(now)
    with store.keyspace("c") as items:
        items.write_collection(b"kept", list, 1_000, refresh_ttl=True)
        items.write_collection(b"refreshed", list, 1_000, refresh_ttl=True)
    now[0] = 100.8
    with store.keyspace("c") as items:
        items.write_collection(b"kept", list, 60_000, refresh_ttl=False)
        items.write_collection(b"refreshed", list, 60_000, refresh_ttl=True)
    now[0] = 101.5
    with store.keyspace("c") as items:
        assert items.find(b"kept") is None
        refreshed = items.find(b"refreshed")
        assert refreshed is not None
        assert refreshed.expires_at == pytest.approx(160.8)


def test_a_key_holds_one_kind_and_the_wrong_call_names_both() -> None:
    store = _store([0.0])
    with store.keyspace("c") as items:
        items.write_collection(b"k", SortedSet, 1_000, refresh_ttl=True)
    with pytest.raises(WrongType) as caught, store.keyspace("c") as items:
        items.collection(b"k", dict)
    assert (caught.value.kind, caught.value.wanted) == ("sorted set", "dictionary")
    with pytest.raises(WrongType):
        store.get("c", b"k")
    store.set("c", b"k", b"scalar", 1_000)  # a set replaces any kind
    assert store.get("c", b"k") == b"scalar"


def test_an_emptied_collection_is_dropped_and_a_scalar_is_not() -> None:
    store = _store([0.0])
    with store.keyspace("c") as items:
        items.write_collection(b"empty", set, 1_000, refresh_ttl=True)
        items.put(b"blank", b"", 1_000)
        items.drop_if_empty(b"empty")
        items.drop_if_empty(b"blank")
        assert items.find(b"empty") is None
        assert items.find(b"blank") is not None


def test_an_unknown_cache_is_reported() -> None:
    store = _store([0.0])
    with pytest.raises(CacheNotFound), store.keyspace("nope"):
        pass
