"""What one step record costs on its way to the spool and to the server, by size.

Per record, in the sender's thread: ``encode`` (JSON text), the validation before spooling —
the full ``decode`` it used to be, and ``Precheck`` for a step like those before it (what the
spool does now) — and ``encode_batch`` around 64 of them. Then the same 64 steps as one
protocol-v2 binary frame (``encode_batch_v2``), and what decoding either frame costs the
server, per record. Median of ``--repeat`` timings of ``--n`` values' worth of calls each, CPU
time of this thread (``time.thread_time``), so a busy neighbour counts less than wall time
would.

    .venv/bin/python bench/records.py            # ~40 s
    .venv/bin/python bench/records.py --quick    # checks the script works
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from common import LoadMeter, fmt, header, table

from trainvitals.protocol import RunStart, Step, TensorStats, decode, encode
from trainvitals.protocol.binary import encode_batch_v2
from trainvitals.protocol.codec import encode_batch
from trainvitals.protocol.precheck import Precheck
from trainvitals.protocol.rows import assemble
from trainvitals.trainer_plugin.delivery.spool import Spool

SIZES = (10, 100, 1000)
SESSION = "0123456789abcdef"  # values per step: scalars plus 9 per tensor


def make_step(values: int, seq: int = 1) -> Step:
    tensors = max(1, values // 20)
    scalars = max(1, values - 9 * tensors)
    stats = TensorStats(count=4096, nan=0, posinf=0, neginf=0, min=-1.5, max=2.25, mean=0.125,
                        absmax=2.25, dtype="float32", headroom=86.5)
    return Step(run="bench", session=SESSION, seq=seq, step=seq, time=1.7e9 + seq,
                loss=0.5, grad_norm=1.25, lr=1e-3,
                scalars={f"scalar/s{i}": 0.001 * i for i in range(scalars)},
                tensors={f"t{i}": stats for i in range(tensors)})


def per_call_us(call: Callable[[], object], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(n):
            call()
        times.append((time.thread_time() - start) / n * 1e6)
    return statistics.median(times)


def main() -> int:
    args = _parse()
    meter = LoadMeter()
    rows = []
    for values in SIZES:
        step = make_step(values)
        line = encode(step)
        check = Precheck()
        check.problem(step, line)  # the stream's first record goes through the decoder
        n = max(10, args.n // values)
        lines = [line] * 64
        enc = per_call_us(lambda s=step: encode(s), n, args.repeat)
        dec = per_call_us(lambda ln=line: decode(ln), n, args.repeat)
        pre = per_call_us(lambda s=step, ln=line, c=check: c.problem(s, ln), n, args.repeat)
        batch = per_call_us(lambda b=lines: encode_batch(b), max(10, n // 8), args.repeat) / 64
        many = [make_step(values, seq) for seq in range(64)]
        v1_frame, v2_frame = encode_batch([encode(r) for r in many]), encode_batch_v2(many)
        few = max(2, n // 64)
        v2_enc = per_call_us(lambda m=many: encode_batch_v2(m), few, args.repeat) / 64
        v1_dec = per_call_us(lambda f=v1_frame: decode(f), few, args.repeat) / 64
        v2_dec = per_call_us(lambda f=v2_frame: decode(f), few, args.repeat) / 64
        rows.append([values, f"{len(line):,}", fmt(enc, 1), fmt(dec, 1), fmt(pre, 1),
                     fmt(batch, 2), fmt(enc + dec, 1), fmt(enc + pre, 1),
                     f"{(enc + dec) / (enc + pre):.1f}×", fmt(v2_enc, 1),
                     f"{len(v2_frame) / 64:,.0f}", fmt(v1_dec, 1), fmt(v2_dec, 1)])
    print(header("Record cost before the spool (bench/records.py)", meter,
                 extra=[f"{args.repeat} timings of ~{args.n} values' worth of calls each; "
                        "median; CPU time of the calling thread"]))
    print(table(["values/step", "bytes", "encode µs", "decode µs (was)", "precheck µs (now)",
                 "batch µs/record", "encode+decode µs", "encode+precheck µs", "saved",
                 "v2 encode µs/record", "v2 bytes/record", "server: v1 decode µs/record",
                 "server: v2 decode µs/record"], rows))
    print()
    print(header("The spool and the sender, per record (bench/records.py)", meter,
                 extra=["a `Spool` in memory, 64 steps appended per call (as the collector "
                        "does); then read back and framed as the sender does, 64 a frame. "
                        "'text' is the spool of 0.1 (version-1 JSON, precheck), 'rows' now"]))
    print(table(["values/step", "spool append µs (text)", "spool append µs (rows)",
                 "read + frame µs (text, v1)", "read + frame µs (rows, v2)",
                 "frame bytes/record (v1)", "frame bytes/record (v2)"],
                [spool_row(values, args) for values in SIZES]))
    return 0


def spool_row(values: int, args: argparse.Namespace) -> list[object]:
    """Append and read-and-frame costs per record, with the spool keeping text or rows."""
    out: list[object] = [values]
    costs: dict[str, tuple[float, float, int]] = {}
    for kind in ("text", "rows"):
        appends, frames, size = [], [], 0
        rounds = max(2, args.n // (values * 64))
        for _ in range(args.repeat):
            spool = Spool(None, "bench.r0.s", max_bytes=1 << 40, max_record_bytes=1 << 24)
            spool.append(RunStart(run="bench", session=SESSION, seq=0, time=1.0),
                         essential=True)
            if kind == "text":
                spool._packer = None  # what 0.1 kept: every step as version-1 text
            batches = [[(make_step(values, 1 + 64 * r + i), False) for i in range(64)]
                       for r in range(rounds)]
            start = time.thread_time()
            for batch in batches:
                spool.append_many(batch)
            appends.append((time.thread_time() - start) / (64 * rounds) * 1e6)
            start = time.thread_time()
            first = 1
            while first < spool.next_seq:
                entries = spool.read(first, 64, 1 << 30)
                if kind == "text":
                    frame: str | bytes = encode_batch([e for e in entries if isinstance(e, str)])
                    count = len(entries)
                else:
                    frame, count = assemble(spool.stream or ("", "", 0), entries)
                size = len(frame) // count
                first += count
            frames.append((time.thread_time() - start) / (64 * rounds) * 1e6)
        costs[kind] = (statistics.median(appends), statistics.median(frames), size)
    out += [fmt(costs["text"][0], 1), fmt(costs["rows"][0], 1), fmt(costs["text"][1], 1),
            fmt(costs["rows"][1], 1), f"{costs['text'][2]:,}", f"{costs['rows'][2]:,}"]
    return out


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--smoke", action="store_true")
    parser.add_argument("--n", type=int, default=200_000, help="values' worth of calls")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeat = 2_000, 2
    return args


if __name__ == "__main__":
    raise SystemExit(main())
