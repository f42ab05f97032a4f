"""Ingest: sustained values/s from N simulated ranks into one server, persisted and acknowledged.

Each rank is a process with a raw websocket client (no plugin, no torch): it sends batch frames
of step records — the shape the demo's Monitor sends (5 top-level values, 2 loss components, 3
tensors; 32 stored values each) — with at most ``window`` frames awaiting their ack, for
``duration`` seconds. ``--wire v2`` (the default) sends version-2 binary frames built the way
the plugin builds them: a ``protocol.rows.Packer`` per rank packs the step once into a row, each
record is that row with its own seq and step, and ``protocol.rows.assemble`` joins a frame's
rows (one stream per rank). ``--wire v1`` sends version-1 JSON batches made by string
templating (for comparison). Only acknowledged records count, and afterwards the store is
checked to hold exactly that many points. The server is a fresh ``trainvitals serve``
subprocess per configuration; its CPU time comes from /proc (psutil). With ``--store postgres``
it stores in a fresh database of a throwaway PostgreSQL cluster on 127.0.0.1 (bench/pgcluster.py;
its CPU time is not in the server's figures).

    .venv/bin/python bench/ingest.py                    # sweep ranks × records per frame
    .venv/bin/python bench/ingest.py --store postgres   # the same into PostgreSQL
    .venv/bin/python bench/ingest.py --profile          # + py-spy profile of the server
    .venv/bin/python bench/ingest.py --wire v1          # version-1 JSON frames instead
    .venv/bin/python bench/ingest.py --quick            # tiny sweep: checks the script works
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import DATA_DIR, LoadMeter, ServerProcess, fmt, header, note, percentile, table
from pgcluster import PostgresCluster
from pyspy import py_spy, summarise
from websockets.sync.client import connect

from trainvitals.protocol import Ack, Batch, Error, RunStart, Step, TensorStats, decode, encode
from trainvitals.protocol.rows import Packer, Row, assemble
from trainvitals.protocol.series import step_values

TARGET = 1_000_000  # values per second
_SEQ, _STEP = 1_000_000_001, 2_000_000_002  # markers replaced in the record template


def sample_step(run: str, session: str, rank: int) -> Step:
    """One step record as the plugin sends it for the demo (values are arbitrary)."""
    def stats(count: int, headroom: float | None = None) -> TensorStats:
        return TensorStats(count=count, nan=0, posinf=0, neginf=0, min=-1.2345678,
                           max=2.3456789, mean=0.123456789, absmax=2.3456789, dtype="float32",
                           headroom=headroom)

    return Step(run=run, session=session, seq=_SEQ, step=_STEP, rank=rank, time=time.time(),
                loss=1.234567891, loss_used=1.234567891, grad_norm=0.987654321,
                grad_norm_post=0.987654321, lr=0.002, components={"points": 1.01234567,
                                                                  "normal": 0.22345678},
                tensors={"depth_raw": stats(8192, 86.38), "depth": stats(8192),
                         "local_points": stats(24576)})


VALUES_PER_RECORD = len(step_values(sample_step("r", "s", 0)))


class FrameMaker:
    """Batch frames of fresh (seq, step) records, by string templating (cheap on the client)."""

    def __init__(self, run: str, session: str, rank: int) -> None:
        # Acks report a stream's contiguous high-water mark, so the stream starts at seq 0.
        self.start = encode(RunStart(run=run, session=session, rank=rank, seq=0,
                                     time=time.time()))
        frame = encode(Batch((sample_step(run, session, rank),)))
        self.head = frame[:frame.index('"records":[') + len('"records":[')]
        record = frame[len(self.head):-2]
        pre, rest = record.split(str(_SEQ))
        mid, post = rest.split(str(_STEP))
        self.parts = (pre, mid, post)

    def frame(self, first_seq: int, count: int) -> str:
        pre, mid, post = self.parts
        body = ",".join(f"{pre}{s}{mid}{s}{post}" for s in range(first_seq, first_seq + count))
        return f"{self.head}{body}]}}"


class BinaryFrameMaker:
    """Version-2 frames as the plugin makes them: rows from a ``Packer``, joined by
    ``assemble`` (the run start goes as a version-1 record text inside a v2 frame)."""

    def __init__(self, run: str, session: str, rank: int) -> None:
        self.stream = (run, session, rank)
        self.start = assemble(self.stream, [encode(RunStart(run=run, session=session,
                                                            rank=rank, seq=0,
                                                            time=time.time()))])[0]
        row = Packer(self.stream).pack(sample_step(run, session, rank), 0)
        assert row is not None, "the sample step must pack into a row"
        self.row = row

    def frame(self, first_seq: int, count: int) -> bytes:
        r = self.row
        rows = [Row(r.layout, s, s, r.time, r.values) for s in range(first_seq,
                                                                     first_seq + count)]
        frame, taken = assemble(self.stream, rows)
        assert taken == count
        return frame


@dataclass
class RankResult:
    start: float
    end: float
    records: int
    rtts: list[float]
    cpu: float  # CPU seconds of the rank's process while it sent


def rank_main(url: str, token: str, run: str, rank: int, batch: int, window: int,
              duration: float, barrier: Any, results: Any, wire: str = "v2") -> None:
    """One simulated rank (runs in its own process)."""
    session = uuid.uuid4().hex[:16]
    maker: FrameMaker | BinaryFrameMaker = (BinaryFrameMaker(run, session, rank)
                                            if wire == "v2" else FrameMaker(run, session, rank))
    with connect(f"{url}/ws/ingest", additional_headers={"Authorization": f"Bearer {token}"},
                 proxy=None, max_size=None, open_timeout=30) as ws:
        ws.send(maker.start)
        _expect_ack(ws, 0)
        barrier.wait()
        start, cpu0 = time.monotonic(), time.process_time()
        deadline = start + duration
        outstanding: collections.deque[tuple[int, float]] = collections.deque()
        seq, acked, rtts = 0, 0, []
        while True:
            while len(outstanding) < window and time.monotonic() < deadline:
                ws.send(maker.frame(seq + 1, batch))
                seq += batch
                outstanding.append((seq, time.monotonic()))
            if not outstanding:
                break
            reply = decode(ws.recv(timeout=120))
            if isinstance(reply, Error):
                raise RuntimeError(f"server error: {reply.code}: {reply.message}")
            assert isinstance(reply, Ack)
            while outstanding and outstanding[0][0] <= reply.seq:
                top, sent = outstanding.popleft()
                rtts.append(time.monotonic() - sent)
                acked = top
        results.put(RankResult(start, time.monotonic(), acked, rtts,
                               time.process_time() - cpu0))


def _expect_ack(ws: Any, seq: int) -> None:
    reply = decode(ws.recv(timeout=60))
    if not isinstance(reply, Ack) or reply.seq != seq:
        raise RuntimeError(f"expected an ack of seq {seq}, got {reply!r}")


@dataclass
class Config:
    ranks: int
    batch: int
    window: int
    duration: float
    wire: str = "v2"


def run_config(cfg: Config, profile_to: Path | None = None,
               database: Callable[[], str] | None = None) -> dict[str, Any]:
    """One server, ``cfg.ranks`` ranks for ``cfg.duration`` s; the measured figures.

    ``database`` makes a fresh PostgreSQL database for the server; None: SQLite.
    """
    ctx = mp.get_context("fork")  # no threads or torch in this process: forking is safe
    url = database() if database is not None else None
    with ServerProcess(args=["--database-url", url] if url else []) as server:
        barrier, results = ctx.Barrier(cfg.ranks + 1), ctx.Queue()
        run = f"ingest-{cfg.ranks}x{cfg.batch}"
        procs = [ctx.Process(target=rank_main, args=(server.ws_url, server.token, run, r,
                                                     cfg.batch, cfg.window, cfg.duration,
                                                     barrier, results, cfg.wire), daemon=True)
                 for r in range(cfg.ranks)]
        for p in procs:
            p.start()
        barrier.wait(timeout=120)
        cpu0 = server.cpu_s()
        spy = _start_profile(server.pid, cfg.duration, profile_to) if profile_to else None
        got = [results.get(timeout=cfg.duration + 300) for _ in procs]
        cpu = server.cpu_s() - cpu0
        for p in procs:
            p.join(30)
        if spy is not None:
            spy.wait(60)
        stored = _count_points(server.db_path) if url is None else _count_pg_points(url)
        rss = server.rss_mib()
    elapsed = max(r.end for r in got) - min(r.start for r in got)
    records = sum(r.records for r in got)
    values = records * VALUES_PER_RECORD
    rtts = [t for r in got for t in r.rtts]
    if stored != values:
        raise RuntimeError(f"{values} values acknowledged but {stored} points stored")
    return {"cfg": cfg, "values_s": values / elapsed, "records_s": records / elapsed,
            "frames_s": len(rtts) / elapsed, "cpu_per_m": cpu / (values / 1e6),
            "cpu_cores": cpu / elapsed, "rtt50": 1e3 * percentile(rtts, 50),
            "rtt99": 1e3 * percentile(rtts, 99), "values": values, "rss": rss,
            "client_per_m": sum(r.cpu for r in got) / (values / 1e6),
            "busy_cores": (cpu + sum(r.cpu for r in got)) / elapsed}


def _count_points(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM points").fetchone()[0])


def _count_pg_points(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM points").fetchone()
    return int(row[0]) if row else 0


def _start_profile(pid: int, duration: float, out: Path) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, int(duration))),
           "--rate", "200", "--format", "raw", "--threads", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256],
                        help="records per frame")
    parser.add_argument("--window", type=int, default=2, help="frames in flight per rank")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per configuration")
    parser.add_argument("--wire", choices=["v1", "v2"], default="v2",
                        help="frames: version-2 binary as the plugin builds them (default), "
                        "or version-1 JSON batches")
    parser.add_argument("--profile", action="store_true",
                        help="profile the server with py-spy at the best configuration")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite",
                        help="where the server stores: SQLite in a temporary data directory, "
                        "or a throwaway PostgreSQL cluster on 127.0.0.1 (default sqlite)")
    args = parser.parse_args()
    if args.quick:
        args.ranks, args.batches, args.duration = [2], [16], 1.0
    cluster = PostgresCluster().start() if args.store == "postgres" else None
    try:
        return _sweep(args, None if cluster is None else cluster.create_database)
    finally:
        if cluster is not None:
            cluster.stop()


def _sweep(args: argparse.Namespace, database: Callable[[], str] | None) -> int:
    meter = LoadMeter()
    results = []
    for ranks in args.ranks:
        for batch in args.batches:
            cfg = Config(ranks, batch, args.window, args.duration, args.wire)
            results.append(run_config(cfg, database=database))
            note(f"{ranks} ranks × {batch} records/frame: {results[-1]['values_s']:,.0f} values/s")
    best = max(results, key=lambda r: r["values_s"])
    profile_rows: list[list[str]] = []
    if args.profile:
        out = DATA_DIR / "ingest-server-profile.txt"
        run_config(best["cfg"], profile_to=out, database=database)
        profile_rows, samples = summarise(out)
        note(f"profile: {samples} samples in {out}")
    verdict = ("meets" if best["values_s"] >= TARGET else "MISSES") + \
        f" the target of {TARGET:,} values/s"
    store = ("SQLite (WAL, synchronous=NORMAL)" if database is None else
             "PostgreSQL (local throwaway cluster, fsync and synchronous_commit on)")
    print(header(f"Ingest: sustained values/s into one server on {store.split()[0]} "
                 "(bench/ingest.py)", meter,
                 extra=[f"store: {store}",
                        f"wire: {_WIRES[args.wire]}",
                        f"{VALUES_PER_RECORD} values per step record; {args.window} frame(s) in "
                        f"flight per rank; {args.duration:g} s per configuration; ranks are "
                        "processes on the same machine as the server (their CPU is in "
                        "'clients CPU s per 1M values' and 'busy cores')",
                        f"best: {best['values_s']:,.0f} values/s at {best['cfg'].ranks} ranks × "
                        f"{best['cfg'].batch} records/frame — {verdict}"]))
    print(table(["ranks", "records/frame", "values/s", "steps/s", "frames/s",
                 "server CPU s per 1M values", "server CPU (cores)",
                 "clients CPU s per 1M values", "busy cores (server + clients)",
                 "ack RTT p50 ms", "ack RTT p99 ms", "server RSS MiB"],
                [[r["cfg"].ranks, r["cfg"].batch, fmt(r["values_s"], 0), fmt(r["records_s"], 0),
                  fmt(r["frames_s"], 0), fmt(r["cpu_per_m"]), fmt(r["cpu_cores"]),
                  fmt(r["client_per_m"]), fmt(r["busy_cores"]),
                  fmt(r["rtt50"], 1), fmt(r["rtt99"], 1), fmt(r["rss"], 0)] for r in results]))
    print()
    if profile_rows:
        print(f"### Server profile (py-spy, {best['cfg'].ranks} ranks × {best['cfg'].batch} "
              "records/frame; share of CPU samples)\n")
        print(table(["kind", "function", "% of samples"], profile_rows))
        print()
    return 0


_WIRES = {"v2": "version-2 binary frames (protocol.rows Packer + assemble, as the plugin)",
          "v1": "version-1 JSON batch frames"}


if __name__ == "__main__":
    raise SystemExit(main())
