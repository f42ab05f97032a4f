"""The SQLite schema, versioned. Bump ``SCHEMA_VERSION`` with every change to ``SCHEMA``, and
teach ``trainvitals.server.store.sqlite.migrate`` the way from the previous version.

Version 2 added ``point_blocks`` (block summaries for fast long-range charts), version 3
``incidents`` (one row per root cause: ``trainvitals.server.alerts.incidents``), version 4
``run_steps`` (each run's step count and first/last time: ``trainvitals.server.store.run_steps``).
"""

SCHEMA_VERSION = 4

RUN_STEPS = """
-- per run and rank: how many rows `steps` holds, and the lowest and highest time among them,
-- kept exact with every write of steps (trainvitals.server.store.run_steps), for the runs list
CREATE TABLE IF NOT EXISTS run_steps (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, steps INTEGER NOT NULL,
    first_time REAL NOT NULL, last_time REAL NOT NULL, PRIMARY KEY (run_id, rank)
) WITHOUT ROWID;
"""

INCIDENTS = """
-- one root cause on one run (number counts the run's incidents from 1); body is JSON: the
-- evidence (snapshots of the alerts it holds) and the diagnosis facts
CREATE TABLE IF NOT EXISTS incidents (
    run_id INTEGER NOT NULL REFERENCES runs(id), number INTEGER NOT NULL, kind TEXT NOT NULL,
    severity TEXT NOT NULL, state TEXT NOT NULL, onset_step INTEGER NOT NULL,
    rank INTEGER NOT NULL, opened_step INTEGER NOT NULL, last_step INTEGER NOT NULL,
    resolved_step INTEGER, headline TEXT NOT NULL, remedy TEXT NOT NULL,
    body TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (run_id, number)
) WITHOUT ROWID;
"""

POINT_BLOCKS = """
-- per series and block of 1,024 steps (block = step >> 10), what M4 keeps of its points
-- (trainvitals.server.store.blocks.Summary), kept exact with every write of points. NULL first/last
-- values mean NaN; min/max are over finite values (NULL: none); *_step NULL: no such point.
CREATE TABLE IF NOT EXISTS point_blocks (
    series_id INTEGER NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL,
    first_step INTEGER NOT NULL, first_value REAL, last_step INTEGER NOT NULL, last_value REAL,
    min_step INTEGER, min_value REAL, max_step INTEGER, max_value REAL,
    nan_step INTEGER, pinf_step INTEGER, ninf_step INTEGER,
    PRIMARY KEY (series_id, block)
) WITHOUT ROWID;
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    updated REAL NOT NULL, status TEXT NOT NULL DEFAULT 'running', last_step INTEGER,
    world_size INTEGER NOT NULL DEFAULT 1, reason TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    session TEXT NOT NULL, host TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT 0,
    versions TEXT NOT NULL DEFAULT '{}', started REAL, ended REAL, status TEXT,
    reason TEXT NOT NULL DEFAULT '', dropped INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, rank, session));
-- exactly-once: a record is applied only the first time its (stream, seq) is seen
CREATE TABLE IF NOT EXISTS seen (
    stream_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (stream_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    name TEXT NOT NULL, UNIQUE (run_id, rank, name));
-- value NULL means NaN (SQLite cannot store NaN); +/-Inf are stored as themselves.
-- The same holds for clips.raw and clips.threshold.
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL, step INTEGER NOT NULL, value REAL,
    PRIMARY KEY (series_id, step)
) WITHOUT ROWID;
""" + POINT_BLOCKS + INCIDENTS + RUN_STEPS + """CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL, time REAL NOT NULL,
    PRIMARY KEY (run_id, rank, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clips (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL, raw REAL,
    threshold REAL, action TEXT NOT NULL, reason TEXT NOT NULL,
    components TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (run_id, rank, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id), rank INTEGER NOT NULL,
    rule TEXT NOT NULL, series TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL,
    first_step INTEGER NOT NULL, opened_step INTEGER NOT NULL, last_step INTEGER NOT NULL,
    resolved_step INTEGER, count INTEGER NOT NULL, message TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}');
CREATE UNIQUE INDEX IF NOT EXISTS one_open_alert
    ON alerts (run_id, rank, rule, series) WHERE state = 'open';
-- where non-finite values started (Step.origin), keyed by the step they started at; a later
-- record about the same step (the op-level trace) fills in what it adds
CREATE TABLE IF NOT EXISTS origins (
    run_id INTEGER NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL,
    reported_step INTEGER NOT NULL, kind TEXT NOT NULL, stage TEXT NOT NULL, module TEXT,
    module_type TEXT,
    param TEXT, op TEXT, source TEXT, PRIMARY KEY (run_id, rank, step)
) WITHOUT ROWID;
"""
