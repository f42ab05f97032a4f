"""M4 downsampling: the Python reference, the SQL in each store (held to the reference), the
REST parameter, and a spike among a million steps that reservoir sampling loses and M4 keeps."""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainvitals.protocol import Step
from trainvitals.server import ServerThread, SQLiteStore, Store
from trainvitals.server.store.downsample import MAX_BUCKETS, bucket_of, bucket_range, by_blocks, m4
from trainvitals.server.store.sqlite.blocks import rebuild

NAN, INF = math.nan, math.inf
SPIKE_STEP, SPIKE = 777_777, 1.0e6
MILLION = 1_000_000


def same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(x == y or (math.isnan(x) and math.isnan(y))
                                    for x, y in zip(a, b, strict=True))


def write_series(store: Store, run: str, values: list[float], steps: list[int] | None = None,
                 name: str = "loss") -> int:
    """Real ``Step`` records through ``Store.write``; returns the run id."""
    steps = list(range(len(values))) if steps is None else steps
    store.write([Step(run=run, session="s", seq=i, step=s, time=1.0 + i,
                      **({"loss": v} if name == "loss" else {"scalars": {name: v}}))
                 for i, (s, v) in enumerate(zip(steps, values, strict=True))])
    run_id = next(r.id for r in store.runs() if r.name == run)
    return run_id


# --------------------------------------------------------------------------- the reference


def test_buckets_partition_the_range_exactly() -> None:
    for start, end, buckets in [(0, 99, 10), (5, 17, 4), (-30, 1000, 7), (0, 2, 5), (3, 3, 1)]:
        seen: list[int] = []
        for i in range(buckets):
            lo, hi = bucket_range(i, start, end, buckets)
            seen.extend(range(lo, hi + 1))
            assert all(bucket_of(s, start, end, buckets) == i for s in range(lo, hi + 1))
        assert seen == list(range(start, end + 1))


def test_m4_keeps_first_last_min_max_of_each_column() -> None:
    values = [5.0, 9.0, 1.0, 4.0, 3.0, 2.0, 8.0, 8.0, 0.5, 6.0]
    steps, kept = m4(range(10), values, start=0, end=9, buckets=2)
    # bucket 0 = steps 0-4: first 0, last 4, min at 2, max at 1; bucket 1 = steps 5-9:
    # first 5, last 9, min at 8, max 8.0 first reached at 6 (ties go to the earliest step).
    assert steps == [0, 1, 2, 4, 5, 6, 8, 9]
    assert kept == [values[s] for s in steps]


def test_m4_keeps_each_kind_of_non_finite_value_and_the_finite_extremes_beside_them() -> None:
    values = [1.0, NAN, 7.0, INF, -INF, NAN, 2.0, -3.0, INF, 0.0]
    steps, kept = m4(range(10), values, start=0, end=9, buckets=1)
    # first NaN (1), first +Inf (3), first -Inf (4); finite max 7.0 (2), finite min -3.0 (7)
    assert steps == [0, 1, 2, 3, 4, 7, 9]
    assert same(kept, [1.0, NAN, 7.0, INF, -INF, -3.0, 0.0])


def test_m4_of_unsorted_input_and_a_sub_range() -> None:
    steps, kept = m4([9, 3, 5, 1, 7], [9.0, 3.0, 50.0, 1.0, 7.0], start=3, end=7, buckets=1)
    assert (steps, kept) == ([3, 5, 7], [3.0, 50.0, 7.0])  # first and min, max, last


# --------------------------------------------------------------------------- SQL == reference
# ``store`` runs each of these on every store implementation (tests/server/conftest.py).


def test_store_m4_equals_the_reference_on_noisy_data_with_nan_and_inf(store: Store) -> None:
    rng = random.Random(7)
    steps = sorted(rng.sample(range(0, 20_000), 3000))  # sparse, irregular steps
    values = [rng.choice([NAN, INF, -INF]) if rng.random() < 0.02 else rng.gauss(0, 1) * 10
              for _ in steps]
    run_id = write_series(store, "noisy", values, steps)
    for start, end, buckets in [(None, None, 100), (None, None, 7), (1000, 5000, 64),
                                (steps[10], steps[10], 3), (None, None, 5000)]:
        (got,) = store.series_m4(run_id, "loss", start=start, end=end, buckets=buckets)
        want_steps, want_values = m4(steps, values, start=start, end=end, buckets=buckets)
        assert got.steps == want_steps, (start, end, buckets)
        assert same(got.values, want_values)
    assert store.series_m4(run_id, "loss", start=30_000, buckets=10)[0].steps == []
    assert store.series_m4(run_id, "missing", buckets=10) == []


@pytest.mark.parametrize("seed", range(3))
def test_store_m4_equals_the_reference_by_blocks_and_point_by_point(
        store: Store, seed: int) -> None:
    """Columns of whole blocks (from summaries) and equal columns (point by point), on ranges
    that cut blocks, over gaps, negative steps, spikes, ties, NaN/±Inf and rewritten steps."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(-3000, 12_000), 2500) + rng.sample(range(20_000, 40_000),
                                                                        2500))
    def value() -> float:
        roll = rng.random()
        return (rng.choice([NAN, INF, -INF]) if roll < 0.03 else rng.choice([1e6, -1e6])
                if roll < 0.04 else rng.choice([0.0, 1.0]) if roll < 0.1 else rng.gauss(0, 1))
    points = {s: value() for s in steps}
    run_id = write_series(store, f"blocks-{seed}", list(points.values()), steps)
    again = rng.sample(steps, 300)  # a resumed session writes these steps again
    store.write([Step(run=f"blocks-{seed}", session="again", seq=i, step=s, time=9.0, loss=v)
                 for i, (s, v) in enumerate((s, value()) for s in again)])
    (stored,) = store.series(run_id, "loss")
    points = dict(zip(stored.steps, stored.values, strict=True))  # what the store now holds
    paths = set()
    for start, end, buckets in [(None, None, 1), (None, None, 7), (None, None, 42),
                                (None, None, 43), (None, None, 500), (1000, 30_500, 9),
                                (-2500, 25_000, 30), (1500, 1600, 2), (1500, 1600, 200),
                                (-1, 3000, 4), (11_000, 21_000, 3), (2048, 4095, 2),
                                (1500, 1600, 1), (2048, 2500, 1), (1500, 2047, 1)]:
        (got,) = store.series_m4(run_id, "loss", start=start, end=end, buckets=buckets)
        want_steps, want_values = m4(list(points), list(points.values()), start=start, end=end,
                                     buckets=buckets)
        assert got.steps == want_steps, (start, end, buckets)
        assert same(got.values, want_values)
        held = [s for s in points if (start is None or s >= start) and (end is None or s <= end)]
        paths.add(by_blocks(min(held), max(held), buckets))
        finite = [points[s] for s in held if math.isfinite(points[s])]
        assert {min(finite), max(finite)} <= set(got.values), "a spike was lost"
    assert paths == {True, False}


def test_store_m4_at_the_ends_of_the_step_range(store: Store) -> None:
    """Blocks and columns at the most negative and the largest 64-bit steps."""
    lowest, highest = -(2**63), 2**63 - 1
    steps = [lowest, lowest + 1, lowest + 1500, -1, 0, 5, highest - 2000, highest - 1, highest]
    values = [3.0, NAN, -INF, 1.0, 2.0, INF, -5.0, 7.0, 0.5]
    run_id = write_series(store, "edges", values, steps)
    for start, end, buckets in [(None, None, 1), (None, None, 3), (None, None, 50),
                                (lowest + 1, highest - 1, 2), (-10, highest, 4)]:
        (got,) = store.series_m4(run_id, "loss", start=start, end=end, buckets=buckets)
        want_steps, want_values = m4(steps, values, start=start, end=end, buckets=buckets)
        assert got.steps == want_steps, (start, end, buckets)
        assert same(got.values, want_values)


_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.sampled_from([0.0, -0.0, 1.0, 1.0, NAN, INF, -INF]))
_counter = iter(range(10**9))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_values, min_size=1, max_size=60), buckets=st.integers(1, 20),
       stride=st.sampled_from([1, 2, 5, 300, 1024, 1500]), offset=st.integers(-5000, 5000))
def test_store_m4_equals_the_reference_for_any_values(
        store: Store, values: list[float], buckets: int, stride: int, offset: int) -> None:
    steps = [offset + i * stride for i in range(len(values))]  # in one block or in many
    run_id = write_series(store, f"prop-{next(_counter)}", values, steps)
    (got,) = store.series_m4(run_id, "loss", buckets=buckets)
    want_steps, want_values = m4(steps, values, buckets=buckets)
    assert got.steps == want_steps
    assert same(got.values, want_values)


# --------------------------------------------------------------------------- a million steps


def reservoir(items: Iterator[tuple[int, float]], size: int,
              rng: random.Random) -> list[tuple[int, float]]:
    """TensorBoard's ``_ReservoirBucket.AddItem``: uniform reservoir, always keeps the latest."""
    kept: list[tuple[int, float]] = []
    for seen, item in enumerate(items):  # seen: items before this one
        if len(kept) < size:
            kept.append(item)
        else:
            r = rng.randint(0, seen)
            if r < size:
                kept.pop(r)
                kept.append(item)
            else:
                kept[-1] = item
    return kept


def spiky(step: int) -> float:
    """A noisy, slowly falling loss with one spike."""
    return SPIKE if step == SPIKE_STEP else 2.0 + math.sin(step / 5000) + (step * 7919 % 101) / 1000


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A real SQLite store holding one run with 1,000,000 loss points (bulk-inserted)."""
    path = tmp_path_factory.mktemp("million") / "trainvitals.sqlite3"
    store = SQLiteStore(path)
    store.open()
    run_id = write_series(store, "long", [spiky(0)])  # creates run, stream and series
    store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        (series_id,) = conn.execute("SELECT id FROM series WHERE name='loss'").fetchone()
        conn.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?)",
                         ((series_id, s, spiky(s)) for s in range(MILLION)))
        rebuild(conn, [series_id])  # points written behind the store's back need their blocks
        conn.execute("UPDATE runs SET last_step=? WHERE id=?", (MILLION - 1, run_id))
    yield path, run_id


@pytest.mark.slow
def test_one_spike_in_a_million_steps_survives_m4_but_not_a_reservoir(
        million: tuple[Path, int]) -> None:
    path, run_id = million
    sample = reservoir(((s, spiky(s)) for s in range(MILLION)), 1000, random.Random(0))
    assert len(sample) == 1000
    assert max(v for _, v in sample) < 10, "the seeded reservoir happens to keep the spike"
    assert SPIKE_STEP not in {s for s, _ in sample}

    store = SQLiteStore(path)
    store.open()
    try:
        (thin,) = store.series_m4(run_id, "loss", buckets=1000)
    finally:
        store.close()
    assert len(thin.steps) <= 4 * 1000
    assert thin.values[thin.steps.index(SPIKE_STEP)] == SPIKE
    assert thin.steps[0] == 0 and thin.steps[-1] == MILLION - 1


@pytest.mark.slow
def test_rest_thins_a_long_range_and_returns_a_short_one_whole(
        million: tuple[Path, int]) -> None:
    path, run_id = million
    with ServerThread(_settings(path)) as srv:
        url = f"{srv.http_url}/api/runs/{run_id}/series"
        full = httpx.get(url, params={"name": "loss", "buckets": 800}, timeout=60).json()
        (s,) = full["series"]
        assert s["downsampled"] is True and len(s["steps"]) <= 3200
        assert s["values"][s["steps"].index(SPIKE_STEP)] == SPIKE
        near = httpx.get(url, params={"name": "loss", "buckets": 800, "start": SPIKE_STEP - 100,
                                      "end": SPIKE_STEP + 100}, timeout=60).json()
        (z,) = near["series"]
        assert z["downsampled"] is False
        assert z["steps"] == list(range(SPIKE_STEP - 100, SPIKE_STEP + 101))
        assert z["values"][100] == SPIKE


def _settings(path: Path) -> Any:
    from trainvitals.server import Settings

    return Settings(port=0, data_dir=path.parent, ingest_token="x" * 16, log_alerts=False)


def test_rest_buckets_parameter(start_server: Any) -> None:
    srv: ServerThread = start_server()
    store = SQLiteStore(srv.settings.db_path)  # a second writer is fine for SQLite in WAL mode
    store.open()
    run_id = write_series(store, "short", [1.0, NAN, 3.0, INF, 5.0, 6.0, 7.0, 8.0, 9.0])
    store.close()
    url = f"{srv.http_url}/api/runs/{run_id}/series"
    whole = httpx.get(url, params={"name": "loss", "buckets": 3}, timeout=60).json()["series"][0]
    assert whole["downsampled"] is False and len(whole["steps"]) == 9  # 9 <= 4 * 3
    thin = httpx.get(url, params={"name": "loss", "buckets": 2}, timeout=60).json()["series"][0]
    assert thin["downsampled"] is True
    assert thin["steps"] == [0, 1, 3, 4, 5, 8]  # NaN (1) and +Inf (3) kept
    assert thin["values"] == [1.0, "NaN", "Infinity", 5.0, 6.0, 9.0]
    for bad in (0, MAX_BUCKETS + 1):
        response = httpx.get(url, params={"name": "loss", "buckets": bad}, timeout=60)
        assert response.status_code == 422
    plain = httpx.get(url, params={"name": "loss"}, timeout=60).json()["series"][0]
    assert "downsampled" not in plain  # the shape without buckets is unchanged
