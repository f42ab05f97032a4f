"""The spool on real files: numbering without gaps, bounds, segments, acks, reopening, locks."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from trainvitals.protocol import Record, RunEnd, RunStart, Step, decode, encode
from trainvitals.protocol.rows import Row
from trainvitals.trainer_plugin.delivery.segments import entry_size
from trainvitals.trainer_plugin.delivery.spool import (
    Entry,
    Spool,
    SpoolRefused,
    in_use,
    read_records,
    spool_files,
    stream_stem,
)

STEM = stream_stem("run/with odd name", 0, "abcdef0123456789")


def step(n: int, **kw: object) -> Step:
    return Step(run="run/with odd name", session="abcdef0123456789", seq=999, step=n,
                loss=float(n), **kw)  # type: ignore[arg-type]


def start() -> RunStart:
    return RunStart(run="run/with odd name", session="abcdef0123456789", seq=999)


def make(directory: Path | None, **kw: int) -> Spool:
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("max_record_bytes", 1 << 20)
    return Spool(directory, STEM, **kw)


def seqs(entries: list[Entry]) -> list[int]:
    out = []
    for entry in entries:
        if isinstance(entry, Row):
            out.append(entry.seq)
            continue
        record = decode(entry)
        assert isinstance(record, (RunStart, Step, RunEnd))
        out.append(record.seq)
    return out


def test_the_spool_numbers_records_as_it_keeps_them(tmp_path: Path) -> None:
    spool = make(tmp_path)
    kept = [spool.append(start(), essential=True)] + [spool.append(step(i)) for i in range(3)]
    assert [r.seq for r in kept] == [0, 1, 2, 3]  # whatever seq the caller had put there
    assert (spool.next_seq, spool.acked, spool.pending) == (4, -1, 4)
    (path,) = spool.files()
    assert path.name == "run-with-odd-name.r0.abcdef0123456789.000000000000.tvs"
    entries = spool.read(0, 100, 1 << 20)
    assert isinstance(entries[0], str) and decode(entries[0]) == kept[0]  # run start: v1 text
    assert all(isinstance(e, Row) for e in entries[1:])  # steps: rows, the bytes a frame sends
    assert [spool.record(e) for e in entries] == kept
    spool.close()
    assert read_records([path]) == kept  # the file alone says it all (its stream, layouts)


def test_refused_records_take_no_number_so_the_stream_has_no_gaps(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=800, max_record_bytes=600)
    spool.append(start(), essential=True)
    with pytest.raises(SpoolRefused, match="larger than a frame may be"):
        spool.append(step(0, scalars={f"s{i}": 1.0 for i in range(60)}))
    with pytest.raises(SpoolRefused, match=r"would refuse: .*'time' must be a finite"):
        spool.append(Step(run="r", session="s", seq=0, step=0, time=math.inf))
    spool.append(step(1))
    with pytest.raises(SpoolRefused, match=r"spool full \(800 bytes\)"):
        for i in range(2, 100):
            spool.append(step(i))
    end = spool.append(RunEnd(run="run/with odd name", session="abcdef0123456789", seq=0),
                       essential=True)  # always fits: the run must be able to end
    lines = spool.read(0, 1000, 1 << 20)
    assert seqs(lines) == list(range(spool.next_seq))
    assert end.seq == spool.next_seq - 1
    assert spool.size > 800
    spool.close()


@pytest.mark.parametrize("where", ["files", "memory"])
def test_read_across_segments_acks_delete_them_and_close_cleans_up(tmp_path: Path,
                                                                   where: str) -> None:
    directory = tmp_path if where == "files" else None
    spool = make(directory, segment_bytes=300)
    for i in range(20):
        spool.append(step(i))
    if directory is not None:
        assert len(spool.files()) > 3
    assert seqs(spool.read(0, 5, 1 << 20)) == [0, 1, 2, 3, 4]
    assert seqs(spool.read(5, 100, 1 << 20)) == list(range(5, 20))  # on from where it stopped
    assert seqs(spool.read(17, 100, 1 << 20)) == [17, 18, 19]  # anywhere, any time
    assert seqs(spool.read(3, 100, 1)) == [3]  # over the byte budget: still one
    size = entry_size(spool.read(0, 1, 1 << 20)[0])
    assert seqs(spool.read(0, 100, 3 * size)) == [0, 1, 2]
    assert spool.read(20, 100, 1 << 20) == []

    spool.ack(11)
    assert (spool.acked, spool.pending) == (11, 8)
    assert seqs(spool.read(0, 100, 1 << 20))[0] <= 12  # the segment holding 12 remains
    if directory is not None:
        names = sorted(p.name for p in directory.glob("*.tvs"))
        firsts = [int(n.split(".")[-2]) for n in names]
        assert firsts[0] <= 12 and all(f > 0 for f in firsts)
    spool.ack(5)  # an old ack changes nothing
    assert spool.acked == 11

    kept = spool.close()  # 8 still pending: their files stay for `trainvitals sync`
    if directory is None:
        assert kept == []
    else:
        left = [r.seq for r in read_records(kept)]
        assert set(range(12, 20)) <= set(left) <= set(range(20))
        assert left == sorted(left)


def test_everything_acknowledged_leaves_no_file_behind(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=200)
    for i in range(10):
        spool.append(step(i))
    spool.ack(9)
    spool.append(step(10))
    spool.ack(10)
    assert spool.close() == []
    assert list(tmp_path.iterdir()) == []  # no segment, no lock file


def test_reopen_continues_after_the_acknowledged_part(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=250)
    records: list[Record] = [spool.append(start(), essential=True)]
    records += [spool.append(step(i)) for i in range(12)]
    spool.ack(6)
    kept = spool.close()
    assert kept and all(p.exists() for p in kept)

    (group,) = spool_files(tmp_path).values()
    again = Spool.reopen(group)
    assert again.acked + 1 == int(group[0].name.split(".")[-2]) <= 7
    assert (again.next_seq, again.pending) == (13, 12 - again.acked)
    assert again.unread == []  # whole files: nothing to say
    entries = again.read(again.acked + 1, 1000, 1 << 20)
    assert [again.record(e) for e in entries] == records[again.acked + 1:]
    again.ack(12)
    assert again.close() == []
    assert spool_files(tmp_path) == {}


@pytest.mark.parametrize("damage", ["cut", "garbled"])
def test_an_entry_cut_or_garbled_by_a_killed_process_is_where_the_file_ends(
        tmp_path: Path, damage: str) -> None:
    spool = make(tmp_path)
    for i in range(4):
        spool.append(step(i))
    (path,) = spool.files()
    spool.close()
    data = path.read_bytes()
    if damage == "cut":
        path.write_bytes(data[:-5])  # the writer died in the middle of the last entry
    else:
        path.write_bytes(data[:-5] + bytes(b ^ 0xFF for b in data[-5:]))  # bits flipped
    again = Spool.reopen([path])
    assert (again.next_seq, again.pending) == (3, 3)
    assert seqs(again.read(0, 100, 1 << 20)) == [0, 1, 2]
    assert [r.step for r in read_records([path])] == [0, 1, 2]
    (said,) = again.unread  # and says so, for sync to print
    assert path.name in said and "no whole record" in said
    again.close()


def test_a_spool_written_by_version_0_1_as_json_lines_is_still_read(tmp_path: Path) -> None:
    """Before rows, segments were JSON lines (``<stem>.<first>.jsonl``); sync reads them."""
    records: list[Record] = [dataclasses.replace(start(), seq=0)]
    records += [dataclasses.replace(step(i), seq=i + 1) for i in range(5)]
    old = tmp_path / f"{STEM}.000000000000.jsonl"
    old.write_text("".join(encode(r) + "\n" for r in records))  # what 0.1 wrote
    (group,) = spool_files(tmp_path).values()
    assert group == [old]
    again = Spool.reopen(group)
    assert again.stream == ("run/with odd name", "abcdef0123456789", 0)
    assert (again.acked, again.next_seq) == (-1, 6)
    assert seqs(again.read(2, 100, 1 << 20)) == [2, 3, 4, 5]
    assert [again.record(e) for e in again.read(0, 100, 1 << 20)] == records
    again.ack(5)
    assert again.close() == [] and not old.exists()


def test_a_live_spool_is_locked_and_sync_can_tell(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(step(0))
    assert in_use(tmp_path, STEM)
    spool.close()
    assert not in_use(tmp_path, STEM)
    assert not in_use(tmp_path, "no-such-stream")


def test_spool_files_groups_streams_and_ignores_other_files(tmp_path: Path) -> None:
    a = Spool(tmp_path, stream_stem("a", 0, "s1"), max_bytes=1 << 20, max_record_bytes=1 << 20,
              segment_bytes=100)
    b = Spool(tmp_path, stream_stem("b", 1, "s2"), max_bytes=1 << 20, max_record_bytes=1 << 20)
    for i in range(5):
        a.append(Step(run="a", session="s1", seq=0, step=i))
    b.append(Step(run="b", session="s2", rank=1, seq=0, step=0))
    (tmp_path / "notes.txt").write_text("not a spool")
    a.close()
    b.close()
    groups = spool_files(tmp_path)
    assert sorted(groups) == ["a.r0.s1", "b.r1.s2"]
    assert len(groups["a.r0.s1"]) == len(a.files()) > 1
    assert groups["a.r0.s1"] == sorted(groups["a.r0.s1"])
    assert spool_files(groups["b.r1.s2"][0]) == {"b.r1.s2": groups["b.r1.s2"]}


def test_quick_acks_keep_writing_one_file_instead_of_one_per_record(tmp_path: Path) -> None:
    spool = make(tmp_path)
    seen: set[Path] = set()
    for i in range(20):
        spool.append(step(i))
        spool.ack(i)  # a server on the same machine acknowledges each record at once
        seen.update(spool.files())
    (path,) = seen
    assert spool.pending == 0
    assert [r.seq for r in read_records([path])] == list(range(20))
    assert spool.close() == [] and list(tmp_path.iterdir()) == []


def test_a_full_acknowledged_file_is_deleted_when_the_next_one_starts(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=300)
    while spool.size < 300:
        spool.append(step(spool.next_seq))
    (full,) = spool.files()
    spool.ack(spool.next_seq - 1)
    assert spool.files() == [full]  # still written on
    spool.append(step(99))
    (fresh,) = spool.files()
    assert fresh != full and not full.exists()
    assert seqs(spool.read(0, 100, 1 << 20)) == [spool.next_seq - 1]
    spool.close()


def test_append_many_keeps_a_batch_in_one_write_and_says_what_became_of_each(
        tmp_path: Path) -> None:
    spool = make(tmp_path, max_record_bytes=600)
    outcomes = spool.append_many([
        (start(), True),
        (step(0, scalars={f"s{i}": 1.0 for i in range(60)}), False),  # too large
        (Step(run="r", session="s", seq=0, step=0, time=math.inf), False),  # server refuses
        (step(1), False),
    ])
    assert [type(o).__name__ for o in outcomes] == ["int", "SpoolRefused", "SpoolRefused",
                                                    "int"]
    assert "larger than a frame may be" in str(outcomes[1])
    assert [o for o in outcomes if isinstance(o, int)] == [0, 1]  # no gap
    (path,) = spool.files()  # on disk when the call returns
    assert [r.seq for r in read_records([path])] == [0, 1]
    spool.close()
    assert isinstance(spool.append_many([(step(2), False)])[0], SpoolRefused)  # closed
