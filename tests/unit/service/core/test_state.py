from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from service.core import statecodec
from service.core.state import REWARM_MISSING_HISTORY, StateStore
from service.errors import StateError
from service.modelcard import StateSpec

SPECS = [
    StateSpec(name="h", shape=(2, 4), batch_axis=1, init=0.0),
    StateSpec(name="lags", shape=(3, 2), batch_axis=0, init=-1.0),
]


def _store(**kwargs: object) -> StateStore:
    return StateStore(SPECS, **kwargs)  # type: ignore[arg-type]


def _states_for(slots: np.ndarray, base: float) -> list[np.ndarray]:
    """Distinct batched states: every stream's tensors filled with base + slot position."""
    out = []
    for spec in SPECS:
        a = np.empty(spec.batched_shape(len(slots)), np.float32)
        for k in range(len(slots)):
            index = [slice(None)] * a.ndim
            index[spec.batch_axis] = k
            a[tuple(index)] = base + k
        out.append(a)
    return out


def test_new_streams_start_from_the_initial_state() -> None:
    store = _store()
    slots = store.ensure(["a", "b"])
    assert len(store) == 2 and "a" in store and store.slot_of("b") == slots[1]
    h, lags = store.gather(slots)
    assert h.shape == (2, 2, 4) and lags.shape == (2, 3, 2)
    assert (h == 0).all() and (lags == -1).all()
    info = store.info("a")
    assert info is not None
    assert info.last_ts == -np.inf and info.steps == 0 and info.applied_offset == -1


def test_scatter_then_gather_round_trips_on_both_batch_axes() -> None:
    store = _store()
    slots = store.ensure([f"s{i}" for i in range(5)])
    store.scatter(slots, _states_for(slots, 10.0))
    picked = slots[[3, 0]]
    h, lags = store.gather(picked)
    assert (h[:, 0] == 13).all() and (h[:, 1] == 10).all()
    assert (lags[0] == 13).all() and (lags[1] == 10).all()
    s3 = store.states_of("s3")
    assert s3 is not None
    assert s3[0].shape == (2, 4) and (s3[0] == 13).all() and (s3[1] == 13).all()


def test_ensure_keeps_known_slots_and_adds_new_ones() -> None:
    store = _store()
    first = store.ensure(["a", "b"])
    again = store.ensure(["b", "c", "a"])
    assert again[0] == first[1] and again[2] == first[0]
    assert again[1] not in first
    assert store.slots_of(["a", "zz"]).tolist() == [first[0], -1]


def test_growth_keeps_every_stream_state() -> None:
    store = _store(capacity=4, growth=1.25)
    ids = [f"s{i}" for i in range(1000)]
    for start in range(0, 1000, 7):
        chunk = ids[start : start + 7]
        slots = store.ensure(chunk)
        store.scatter(slots, _states_for(slots, float(start)))
    assert store.capacity >= 1000
    assert store.capacity <= 1000 * 1.25 + 1
    for i in (0, 6, 7, 500, 999):
        h = store.states_of(ids[i])
        assert h is not None
        start = i - i % 7
        assert (h[0] == start + i % 7).all() and (h[1] == start + i % 7).all()


def test_dropped_slots_are_reused_and_start_fresh() -> None:
    store = _store(capacity=8)
    slots = store.ensure(["a", "b", "c"])
    store.scatter(slots, _states_for(slots, 5.0))
    store.advance(slots, np.array([1.0, 1.0, 1.0]), np.array([3, 4, 5]), now=0.0)
    store.drop(["b", "unknown"])
    assert "b" not in store and len(store) == 2
    (reused,) = store.ensure(["d"])
    assert reused == slots[1]
    h, lags = store.gather(np.array([reused]))
    assert (h == 0).all() and (lags == -1).all()
    info = store.info("d")
    assert info is not None
    assert info.steps == 0 and info.applied_offset == -1 and info.last_ts == -np.inf
    assert store.capacity == 8


def test_reset_restores_init_and_zeroes_steps_but_keeps_positions() -> None:
    store = _store()
    slots = store.ensure(["a", "b"])
    store.scatter(slots, _states_for(slots, 3.0))
    store.advance(slots, np.array([5.0, 6.0]), np.array([10, 11]), now=0.0)
    store.reset(slots[:1])
    a, b = store.states_of("a"), store.states_of("b")
    assert a is not None and b is not None
    assert (a[0] == 0).all() and (a[1] == -1).all()
    assert (b[0] == 4).all()
    info = store.info("a")
    assert info is not None
    assert info.steps == 0 and info.last_ts == 5.0 and info.applied_offset == 10


def test_advance_updates_bookkeeping_and_applied_offset_never_goes_back() -> None:
    store = _store()
    slots = store.ensure(["a"])
    store.advance(slots, np.array([60.0]), np.array([7]), now=1.0)
    store.advance(slots, np.array([120.0]), np.array([-1]), now=2.0)
    info = store.info("a")
    assert info is not None
    assert (info.last_ts, info.steps, info.applied_offset, info.last_seen) == (120.0, 2, 7, 2.0)


def test_dirty_set_tracks_changes_until_cleared() -> None:
    store = _store()
    slots = store.ensure(["a", "b", "c"])
    assert store.dirty_ids() == set()
    store.advance(slots[:2], np.array([1.0, 1.0]), np.array([0, 0]), now=0.0)
    assert store.dirty_ids() == {"a", "b"}
    store.clear_dirty(["a", "gone"])
    assert store.dirty_ids() == {"b"}
    store.drop(["b"])
    store.ensure(["d"])  # reuses b's slot
    assert store.dirty_ids() == set()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dump_load_round_trip(dtype: str) -> None:
    src = _store(dtype=dtype, n_last_values=2)
    slots = src.ensure(["a", "b"])
    rng = np.random.default_rng(0)
    src.scatter(slots, [rng.normal(size=s.batched_shape(2)).astype(np.float32) for s in SPECS])
    src.advance(
        slots,
        np.array([60.0, 120.0]),
        np.array([41, 42]),
        now=5.0,
        values=np.array([[1.5, 2.5], [3.0, 4.0]]),
    )
    data = src.dump("b")
    # the 74-byte header (the 34 bytes of format 1, then the model, the feature and kept
    # reading counts, the names' length, the outstanding forecasts' sizes and the clock-jump
    # marks), the last values, the tensors
    expected = 4 + 2 + 2 + 2 + 8 * 3 + 16 + 2 * 6 + 8 + 4 + 2 * 4 + (8 + 6) * src.dtype.itemsize
    assert len(data) == expected

    dst = _store(dtype=dtype, n_last_values=2)
    dst.ensure(["x"])
    dst.load("b", data, now=9.0)
    for got, want in zip(dst.states_of("b") or [], src.states_of("b") or [], strict=True):
        np.testing.assert_array_equal(got, want)
    info = dst.info("b")
    assert info is not None
    assert (info.last_ts, info.steps, info.applied_offset, info.last_seen) == (120.0, 1, 42, 9.0)
    np.testing.assert_array_equal(dst.last_values_at(np.array([dst.slot_of("b")])), [[3.0, 4.0]])
    assert "b" not in dst.dirty_ids()


def test_load_converts_between_storage_dtypes() -> None:
    src = _store(dtype="float32")
    slots = src.ensure(["a"])
    src.scatter(slots, [np.full(s.batched_shape(1), 0.5, np.float32) for s in SPECS])
    dst = _store(dtype="float16")
    dst.load("a", src.dump("a"))
    assert all((t == 0.5).all() for t in dst.states_of("a") or [])


def test_load_rejects_malformed_or_foreign_records() -> None:
    store = _store()
    store.ensure(["a"])
    good = store.dump("a")
    with pytest.raises(StateError, match="too short"):
        store.load("a", good[:10])
    with pytest.raises(StateError, match="format"):
        store.load("a", b"XXXX" + good[4:])
    with pytest.raises(StateError, match="bytes, expected"):
        store.load("a", good + b"\0\0\0\0")
    with pytest.raises(StateError, match="no state"):
        store.dump("missing")


def test_a_record_of_another_layout_is_foreign_and_its_stream_due_a_reset() -> None:
    store = _store()
    other = StateStore([StateSpec(name="h", shape=(2, 4), batch_axis=1)])
    slots = other.ensure(["a", "b"])
    other.advance(slots[:1], np.array([60.0]), np.array([7]), now=0.0)  # a applied one
    store.load_many([("a", other.dump("a")), ("b", other.dump("b"))])
    info = store.info("a")
    assert info is not None and (info.last_ts, info.applied_offset) == (60.0, 7)
    for got, spec in zip(store.states_of("a") or [], SPECS, strict=True):
        np.testing.assert_array_equal(got, np.full(spec.shape, spec.init, np.float32))
    # a kept no readings to re-warm from: due a reset; b never applied one: nothing due
    assert store.rewarm_due(store.slots_of(["a", "b"])).tolist() == [REWARM_MISSING_HISTORY, 0]


def test_lru_cap_evicts_least_recently_used_streams() -> None:
    store = _store(max_streams=3)
    store.ensure(["a", "b", "c"])
    store.ensure(["a"])  # b is now the least recently used, then c
    store.ensure(["d"])
    assert store.drain_evicted() == ["b"]
    store.ensure(["e", "a"])
    assert store.drain_evicted() == ["c"]
    assert set(store.ids()) == {"a", "d", "e"}
    assert store.drain_evicted() == []
    assert store.capacity == 3


def test_lru_cap_never_evicts_streams_of_the_same_call() -> None:
    store = _store(max_streams=3)
    store.ensure(["a", "b"])
    store.ensure(["a", "b", "c"])
    assert store.drain_evicted() == []
    store.ensure(["c", "d", "a"])
    assert store.drain_evicted() == ["b"]
    with pytest.raises(StateError, match="exceed max_streams"):
        store.ensure(["w", "x", "y", "z"])


def test_ttl_expiry_drops_idle_streams_only() -> None:
    store = _store(ttl_seconds=100.0)
    slots = store.ensure(["a", "b"], now=0.0)
    store.advance(slots[:1], np.array([1.0]), np.array([0]), now=50.0)
    assert store.expire(100.0) == []  # b seen at 0: not idle for more than 100 s yet
    assert store.expire(120.0) == ["b"]
    assert store.ids() == ["a"]
    assert store.expire(149.0) == []
    assert store.expire(151.0) == ["a"]
    assert len(store) == 0


def test_expire_is_a_no_op_without_ttl() -> None:
    store = _store()
    store.ensure(["a"], now=0.0)
    assert store.expire(1e12) == []


def test_float16_storage_halves_the_state_bytes() -> None:
    full, half = _store(capacity=10_000), _store(capacity=10_000, dtype="float16")
    assert half.raw_state_bytes_per_stream * 2 == full.raw_state_bytes_per_stream
    # the allocation itself is not public: it is what this test is about
    tensors_full = full._tensors.nbytes  # noqa: SLF001
    tensors_half = half._tensors.nbytes  # noqa: SLF001
    assert tensors_half * 2 == tensors_full
    slots = half.ensure(["a"])
    half.scatter(slots, [np.full(s.batched_shape(1), 1 / 3, np.float32) for s in SPECS])
    h, _ = half.gather(slots)
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, 1 / 3, rtol=1e-3)


def test_state_bytes_stay_near_the_raw_floor_for_large_states() -> None:
    specs = [StateSpec(name=n, shape=(2, 64), batch_axis=1) for n in ("h", "c")]
    store = StateStore(specs, capacity=1024)
    n = 50_000
    for start in range(0, n, 5000):
        store.ensure([f"sensor-{i:07d}" for i in range(start, start + 5000)])
    assert store.raw_state_bytes_per_stream == 1024
    assert store.capacity > n  # the slack beyond the used slots is not resident
    assert store.state_bytes / n <= 1024 * 1.25
    assert store.allocated_bytes / n >= 1024 * store.capacity / n


def _filled(dtype: str, seed: int, n: int = 50) -> tuple[StateStore, list[str]]:
    """A store of `n` streams with random states, bookkeeping and two last values each."""
    rng = np.random.default_rng(seed)
    store = _store(dtype=dtype, n_last_values=2)
    ids = [f"s{i}" for i in range(n)]
    slots = store.ensure(ids)
    store.scatter(slots, [rng.normal(size=s.batched_shape(n)).astype(np.float32) for s in SPECS])
    store.advance(slots, np.arange(float(n)), np.arange(n), now=1.0, values=rng.normal(size=(n, 2)))
    return store, ids


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dump_many_and_load_many_match_one_by_one(dtype: str) -> None:
    src, ids = _filled(dtype, seed=3)
    many = src.dump_many(ids)
    assert many == [src.dump(sid) for sid in ids]

    dst = _store(dtype=dtype, n_last_values=2)
    dst.ensure(["s3", "other"])  # an existing stream is replaced
    stale = src.dump("s7")
    dst.load_many([("s7", b"ignored: a later record wins"), *zip(ids, many, strict=True)], now=2.0)
    for sid in ids:
        for got, want in zip(dst.states_of(sid) or [], src.states_of(sid) or [], strict=True):
            np.testing.assert_array_equal(got, want)
        a, b = dst.info(sid), src.info(sid)
        assert a is not None and b is not None
        assert (a.last_ts, a.steps, a.applied_offset) == (b.last_ts, b.steps, b.applied_offset)
        assert a.last_seen == 2.0
    assert dst.dump("s7") == stale
    assert dst.dirty_ids() == set()
    assert len(dst) == 51


def test_a_checkpoint_of_a_few_streams_touches_memory_for_a_few_records() -> None:
    """The encoding buffer grows with the checkpoints that use it: a full chunk of records
    (8,192) is tens of MB with long states, and its first writes cost the first checkpoint
    of a light service a 100 ms stall of page faults."""
    store, ids = _filled("float32", seed=4, n=200)
    tracemalloc.start()
    try:
        small = store.dump_many(ids[:3])  # the store's first records
        _, peak_small = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        store.dump_many(ids[:3])
        _, peak_again = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        many = store.dump_many(ids)
        _, peak_many = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    record = len(small[0])
    assert peak_small < 64 * record + 100_000  # not CHUNK records' worth
    assert peak_again < 64 * record + 100_000  # nor made again
    assert peak_many >= 200 * record  # grown to what a bigger checkpoint writes
    assert small == many[:3] == [store.dump(sid) for sid in ids[:3]]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dump_many_writes_what_the_codec_encodes_across_chunks(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statecodec.RecordBuffer, "CHUNK", 16)  # 50 streams: 4 chunks
    store, ids = _filled(dtype, seed=5)
    order = ids[::-1]  # not in slot order
    infos = [store.info(sid) for sid in order]
    states = [store.states_of(sid) or [] for sid in order]
    reference = statecodec.encode(
        statecodec.RecordBatch(
            np.dtype(dtype),
            np.array([i.last_ts for i in infos if i is not None]),
            np.array([i.steps for i in infos if i is not None]),
            np.array([i.applied_offset for i in infos if i is not None]),
            [np.stack([s[k].reshape(-1) for s in states]) for k in range(len(SPECS))],
            store.last_values_at(store.slots_of(order)),
        )
    )
    assert store.dump_many(order) == reference


def test_load_many_validates_records() -> None:
    store = _store()
    store.ensure(["a"])
    good = store.dump("a")
    with pytest.raises(StateError, match="format"):
        store.load_many([("a", b"XXXX" + good[4:]), ("b", b"XXXX" + good[4:])])
    with pytest.raises(StateError, match="too short"):
        store.load_many([("a", good), ("b", good[:7])])
    with pytest.raises(StateError, match="no state"):
        store.dump_many(["a", "missing"])


def test_a_large_cap_evicts_in_batches_of_the_least_recently_used() -> None:
    store = _store(max_streams=1280)
    ids = [f"s{i}" for i in range(1280)]
    for sid in ids[:20]:  # s0, s1, ... s19 used one after another, first
        store.ensure([sid])
    store.ensure(ids[20:])
    store.ensure(ids[:5])  # now the least recently used are s5..s14
    store.ensure(["new"])
    evicted = store.drain_evicted()
    assert sorted(evicted, key=lambda s: int(s[1:])) == [f"s{i}" for i in range(5, 15)]
    assert len(store) == 1280 - 10 + 1
    store.ensure(["newer"])  # room left: nothing evicted
    assert store.drain_evicted() == []


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_reused_gather_equals_a_fresh_one_and_is_overwritten_by_the_next(dtype: str) -> None:
    store = _store(dtype=dtype, capacity=2)
    slots = store.ensure([f"s{i}" for i in range(40)])  # grows past the initial capacity
    store.scatter(slots, _states_for(slots, 10.0))
    picked = slots[[5, 0, 39, 7]]
    reused = store.gather(picked, reuse=True)
    for a, b in zip(reused, store.gather(picked), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32 and a.flags.c_contiguous
    h0 = reused[0].copy()
    again = store.gather(slots[[1, 2]], reuse=True)  # another size: views of the same memory
    assert again[0].shape == (2, 2, 4)
    assert np.shares_memory(again[0], reused[0])
    bigger = store.gather(slots, reuse=True)  # larger than the kept buffer: it grows
    np.testing.assert_array_equal(bigger[0][:, [5, 0, 39, 7]], h0)


def test_scatter_writes_each_stream_row_and_nothing_else() -> None:
    store = _store()
    slots = store.ensure([f"s{i}" for i in range(6)])
    store.scatter(slots[[4, 1]], _states_for(slots[[4, 1]], 7.0))
    h, lags = store.gather(slots)
    assert (h[:, 4] == 7.0).all() and (h[:, 1] == 8.0).all()
    assert (lags[4] == 7.0).all() and (lags[1] == 8.0).all()
    untouched = [0, 2, 3, 5]
    assert (h[:, untouched] == 0.0).all() and (lags[untouched] == -1.0).all()


def test_lookup_finds_every_slot_or_none() -> None:
    store = _store()
    slots = store.ensure(["a", "b", "c"])
    found = store.lookup(["c", "a"])
    assert found is not None and found.tolist() == [slots[2], slots[0]]
    one = store.lookup(["b"])
    assert one is not None and one.tolist() == [slots[1]]
    empty = store.lookup([])
    assert empty is not None and len(empty) == 0
    assert store.lookup(["a", "zz"]) is None
    assert store.lookup(["zz"]) is None
    assert "zz" not in store


def test_claim_tells_distinct_slots_from_repeated_ones() -> None:
    store = _store()
    slots = store.ensure([f"s{i}" for i in range(5)])
    store.advance(slots, np.full(5, 60.0), np.arange(5), now=1.0)
    rows = store.claim(slots[[4, 0, 2]])
    assert rows is not None
    assert rows["last_ts"].tolist() == [60.0] * 3 and rows["applied"].tolist() == [4, 0, 2]
    assert rows["steps"].tolist() == [1, 1, 1]
    assert store.claim(slots[[1, 3, 1]]) is None
    assert store.claim(slots[[2, 2]]) is None
    empty = store.claim(slots[:0])
    assert empty is not None and len(empty) == 0


def test_claimed_streams_count_as_recently_used() -> None:
    store = _store(max_streams=3)
    slots = store.ensure(["a", "b", "c"])
    assert store.claim(slots[[0, 1]]) is not None  # c is now the least recently used
    store.ensure(["d"])
    assert store.drain_evicted() == ["c"]


def test_advance_returns_steps_and_can_take_offsets_as_they_are() -> None:
    store = _store()
    slots = store.ensure(["a", "b"])
    steps = store.advance(slots, np.array([60.0, 60.0]), np.array([3, 4]), now=1.0)
    assert steps.tolist() == [1, 1]
    steps = store.advance(
        slots[[1]], np.array([120.0]), np.array([9]), now=2.0, offsets_increase=True
    )
    assert steps.tolist() == [2]
    info = store.info("b")
    assert info is not None and (info.steps, info.applied_offset) == (2, 9)
    rows = store.claim(slots)
    assert rows is not None
    steps = store.advance(slots, np.array([180.0, 180.0]), np.array([10, 11]), now=3.0, rows=rows)
    assert steps.tolist() == [2, 3]
    a, b = store.info("a"), store.info("b")
    assert a is not None and (a.last_ts, a.steps, a.applied_offset, a.last_seen) == (
        180.0,
        2,
        10,
        3.0,
    )
    assert b is not None and (b.last_ts, b.steps, b.applied_offset) == (180.0, 3, 11)
    assert store.dirty_ids() == {"a", "b"}
