"""``trainvitals export`` / ``import``: move runs between servers as a JSON-lines file.

The file is a header line, then per run a ``run`` line, row chunks of every table that belongs
to it, and an ``end`` line. Rows keep their columns by name, so the format follows the schema
instead of repeating it: tables are found by their ``run_id`` / ``stream_id`` / ``series_id``
columns, and ids are renumbered on import. Values stay exact: REAL columns carry ±Inf as the
strings "Infinity"/"-Infinity" (NaN is SQL NULL in the store and stays ``null``), floats are
written with ``repr`` precision, and JSON text columns are copied verbatim.

Export reads a consistent snapshot while the server runs (WAL). Import writes each run in one
transaction into the target data directory — the server there may be running — and skips
runs whose name it already has. Derived tables (``point_blocks``, the block summaries, and
``run_steps``, the step counts) are not exported; import rebuilds them from the points and steps
in the run's transaction.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from trainvitals.protocol import float_from_wire, float_to_wire
from trainvitals.server.store.sqlite import run_steps
from trainvitals.server.store.sqlite.blocks import rebuild
from trainvitals.server.store.sqlite.store import SQLiteStore, configure

__all__ = ["FORMAT", "ImportResult", "Progress", "export_runs", "import_runs"]

FORMAT = "trainvitals-runs"
VERSION = 1
CHUNK = 20_000  # rows per line: bounded memory on both sides
PARENTS = {"run_id": "runs", "stream_id": "streams", "series_id": "series"}
DERIVED = frozenset({"point_blocks", "run_steps"})  # not exported: import rebuilds them
Progress = Callable[[int, int], None]  # (done, total): rows on export, bytes on import


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    real: frozenset[str]  # REAL columns: ±Inf travel as strings
    link: str  # the column tying a row to its run: id (runs), run_id, stream_id or series_id

    def select(self, what: str = "") -> str:
        """SQL for the rows (or ``what``, e.g. ``count(*)``) of one run, given its id."""
        what = what or ", ".join(self.columns)
        if self.link == "id":
            return f"SELECT {what} FROM runs WHERE id=?"
        if self.link == "run_id":
            return f"SELECT {what} FROM {self.name} WHERE run_id=?"
        parent = PARENTS[self.link]
        return (f"SELECT {what} FROM {self.name} WHERE {self.link} IN "
                f"(SELECT id FROM {parent} WHERE run_id=?)")


def _tables(conn: sqlite3.Connection) -> list[_Table]:
    """The run's tables in insert order: runs, its id-owning children, then the rest."""
    found: list[_Table] = []
    names = [n for (n,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
    for name in (n for n in names if n not in DERIVED):
        info = conn.execute(f"PRAGMA table_info({name})").fetchall()
        columns = tuple(row[1] for row in info)
        link = "id" if name == "runs" else next((c for c in PARENTS if c in columns), None)
        if link is not None:
            real = frozenset(row[1] for row in info if str(row[2]).upper() == "REAL")
            found.append(_Table(name, columns, real, link))
    order = {"id": 0, "run_id": 1, "stream_id": 3, "series_id": 3}
    return sorted(found, key=lambda t: (order[t.link] + ("id" not in t.columns), t.name))


def export_runs(db_path: Path, out: TextIO, runs: Sequence[str] = (),
                progress: Progress | None = None) -> list[str]:
    """Write the named runs (all, if none are named) to ``out``; returns their names."""
    if not db_path.is_file():
        raise ValueError(f"no trainvitals store at {db_path}")
    conn = configure(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True))
    try:
        conn.execute("BEGIN")  # one snapshot for the whole export
        tables = _tables(conn)
        chosen = _chosen(conn, runs)
        total = sum(_count(conn, t, run_id) for run_id, _ in chosen for t in tables)
        done = 0
        _line(out, {"format": FORMAT, "version": VERSION, "runs": len(chosen)})
        for run_id, name in chosen:
            _line(out, {"type": "run", "run": name})
            for table in tables:
                for rows in _chunks(conn.execute(table.select(), (run_id,))):
                    _line(out, {"type": "rows", "table": table.name, "columns": table.columns,
                                "rows": [_encode(table, row) for row in rows]})
                    done += len(rows)
                    if progress is not None:
                        progress(done, total)
            _line(out, {"type": "end", "run": name})
        return [name for _, name in chosen]
    finally:
        conn.close()


def _chosen(conn: sqlite3.Connection, runs: Sequence[str]) -> list[tuple[int, str]]:
    rows = conn.execute("SELECT id, name FROM runs ORDER BY created, id").fetchall()
    missing = set(runs) - {name for _, name in rows}
    if missing:
        raise ValueError(f"no such run(s): {', '.join(sorted(missing))}")
    return [(i, n) for i, n in rows if not runs or n in runs]


def _count(conn: sqlite3.Connection, table: _Table, run_id: int) -> int:
    return int(conn.execute(table.select("count(*)"), (run_id,)).fetchone()[0])


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(CHUNK):
        yield rows


def _encode(table: _Table, row: Iterable[Any]) -> list[Any]:
    return [float_to_wire(v) if c in table.real and isinstance(v, float) and math.isinf(v)
            else v for c, v in zip(table.columns, row, strict=True)]


def _line(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False))
    out.write("\n")


@dataclass
class ImportResult:
    """Run names imported, and those skipped because the target already had them."""

    imported: list[str]
    skipped: list[str]


def import_runs(db_path: Path, lines: Iterable[str], *, total_bytes: int = 0,
                progress: Progress | None = None) -> ImportResult:
    """Read an export and add its runs to the store at ``db_path`` (created if missing).

    ``total_bytes`` (the file's size, 0 if unknown) is what ``progress`` counts up to.
    """
    store = SQLiteStore(db_path)
    store.open()  # creates or checks the schema
    store.close()
    conn = configure(sqlite3.connect(db_path, isolation_level=None))
    result = ImportResult([], [])
    try:
        _Importer(conn, result, lambda done: progress and progress(done, total_bytes)).read(lines)
    finally:
        conn.close()
    return result


class _Importer:
    """Applies an export's lines; one transaction per run."""

    def __init__(self, conn: sqlite3.Connection, result: ImportResult,
                 progress: Callable[[int], object]) -> None:
        self._conn, self._result, self._progress = conn, result, progress
        self._tables = {t.name: t for t in _tables(conn)}
        self._ids: dict[str, dict[int, int]] = {}
        self._run: str | None = None
        self._skip = False

    def read(self, lines: Iterable[str]) -> None:
        it = iter(lines)
        first = next(it, "")
        header = json.loads(first) if first.startswith("{") else None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("not a trainvitals export (no header line)")
        if header.get("version") != VERSION:
            raise ValueError(f"export version {header.get('version')}; this reads {VERSION}")
        done = len(first.encode())
        for text in it:
            self._apply(json.loads(text))
            done += len(text.encode())
            self._progress(done)
        if self._run is not None:
            self._conn.execute("ROLLBACK")
            raise ValueError(f"the export ends inside run {self._run!r} (truncated file?)")

    def _apply(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "run":
            self._begin(str(obj["run"]))
        elif kind == "rows" and self._run is not None:
            if not self._skip:
                self._insert(self._tables[obj["table"]], obj["columns"], obj["rows"])
        elif kind == "end" and self._run is not None:
            if not self._skip:
                rebuild(self._conn, self._ids.get("series", {}).values())
                run_steps.rebuild(self._conn, self._ids.get("runs", {}).values())
                self._conn.execute("COMMIT")
            (self._result.skipped if self._skip else self._result.imported).append(self._run)
            self._run = None
        else:
            raise ValueError(f"unexpected line in export: {str(obj)[:80]}")

    def _begin(self, name: str) -> None:
        self._run, self._ids = name, {}
        self._skip = self._conn.execute("SELECT 1 FROM runs WHERE name=?",
                                        (name,)).fetchone() is not None
        if not self._skip:
            self._conn.execute("BEGIN IMMEDIATE")

    def _insert(self, table: _Table, columns: list[str], rows: list[list[Any]]) -> None:
        unknown = set(columns) - set(table.columns)
        if unknown:
            raise ValueError(f"table {table.name} has no column(s) {sorted(unknown)} here")
        keep = [c for c in columns if c != "id"]
        sql = (f"INSERT INTO {table.name} ({', '.join(keep)}) "
               f"VALUES ({', '.join('?' * len(keep))})")
        ids = self._ids.setdefault(table.name, {})
        for row in rows:
            values = dict(zip(columns, row, strict=True))
            args = [self._value(table, c, values[c]) for c in keep]
            cur = self._conn.execute(sql, args)
            if "id" in values and cur.lastrowid is not None:
                ids[int(values["id"])] = cur.lastrowid

    def _value(self, table: _Table, column: str, value: Any) -> Any:
        if column in PARENTS:
            return self._ids[PARENTS[column]][int(value)]
        if column in table.real and isinstance(value, str):
            return float_from_wire(value)
        return value
