"""The statements of the PostgreSQL store that are longer than a line.

Parameters are psycopg's (``%s``, ``%(name)s``); lists travel as arrays that ``unnest`` turns
into rows, so a batch of any size is one statement. PostgreSQL sorts NaN above +Infinity (and
NaN equals NaN), which the M4 query below relies on.
"""

from __future__ import annotations

__all__ = [
           "COPY_POINTS",
           "COPY_STEPS",
           "DISK_BYTES",
           "HIGH_WATER",
           "INSERT_CLIP",
           "INSERT_SEEN",
           "INSERT_SERIES",
           "INSERT_STREAMS",
           "M4",
           "RUN_SELECT",
           "RUN_STEPS_ADD",
           "RUN_STEPS_COUNT",
           "RUN_STEPS_SELECT",
           "RUN_STEPS_SET",
           "SELECT_SERIES",
           "SELECT_STREAMS",
           "STORED_TIMES",
           "TABLE_SIZES",
           "UPDATE_RUN_PROGRESS",
           "UPSERT_ALERT",
           "UPSERT_INCIDENT",
           "UPSERT_ORIGIN",
           "UPSERT_POINTS",
           "UPSERT_STEPS",
]

# ------------------------------------------------------------------------------------ writes

INSERT_SEEN = (
    "INSERT INTO seen(stream_id, seq) SELECT * FROM unnest(%b::bigint[], %b::bigint[]) "
    "ON CONFLICT DO NOTHING RETURNING stream_id, seq")

# The stream's contiguous high-water mark, walking forward from a mark known to hold: if the
# next seq is stored, the first stored seq after the mark whose successor is missing ends the
# run. (The CASEs keep seq + 1 from overflowing at the largest seq, 2**63 - 1.)
HIGH_WATER = """
SELECT m.sid, CASE WHEN m.mark < 9223372036854775807 AND EXISTS (
    SELECT 1 FROM seen WHERE stream_id = m.sid AND seq = m.mark + 1)
  THEN (SELECT s.seq FROM seen s WHERE s.stream_id = m.sid AND s.seq > m.mark AND
        CASE WHEN s.seq = 9223372036854775807 THEN true ELSE NOT EXISTS (
          SELECT 1 FROM seen t WHERE t.stream_id = m.sid AND t.seq = s.seq + 1) END
        ORDER BY s.seq LIMIT 1)
  ELSE m.mark END
FROM unnest(%b::bigint[], %b::bigint[]) AS m(sid, mark)
"""

# Streams and series: create the missing ones of a batch of keys, then read all their ids.
_KEYS = "unnest(%b::bigint[], %b::bigint[], %b::text[])"
INSERT_STREAMS = (f"INSERT INTO streams(run_id, rank, session) SELECT * FROM {_KEYS} "
                  "ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING")
SELECT_STREAMS = (f"SELECT t.id, t.run_id, t.rank, t.session FROM streams t "
                  f"JOIN {_KEYS} AS k(run_id, rank, session) USING (run_id, rank, session)")
INSERT_SERIES = (f"INSERT INTO series(run_id, rank, name) SELECT * FROM {_KEYS} "
                 "ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING")
SELECT_SERIES = (f"SELECT t.id, t.run_id, t.rank, t.name FROM series t "
                 f"JOIN {_KEYS} AS k(run_id, rank, name) USING (run_id, rank, name)")

# Points and step times: COPY when none of the rows exists yet (the common case, about twice as
# fast as an INSERT … ON CONFLICT of the same rows), else these upserts.
COPY_POINTS = "COPY points (series_id, step, value) FROM STDIN (FORMAT BINARY)"
COPY_STEPS = "COPY steps (run_id, rank, step, time) FROM STDIN (FORMAT BINARY)"
UPSERT_POINTS = (
    "INSERT INTO points(series_id, step, value) "
    "SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::float8[]) "
    "ON CONFLICT (series_id, step) DO UPDATE SET value = excluded.value")
UPSERT_STEPS = (
    "INSERT INTO steps(run_id, rank, step, time) "
    "SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::float8[]) "
    "ON CONFLICT (run_id, rank, step) DO UPDATE SET time = excluded.time")

# The stored times of the given steps (those that exist), before an upsert replaces them.
STORED_TIMES = (
    "SELECT s.run_id, s.rank, s.step, s.time FROM steps s "
    "JOIN unnest(%b::bigint[], %b::bigint[], %b::bigint[]) AS k(run_id, rank, step) "
    "USING (run_id, rank, step)")

# run_steps (trainvitals.server.store.run_steps): steps only added are added to the stored row;
# a (run, rank) whose times were replaced is merged in Python (SELECT, then SET) or counted
# again from steps.
_RUN_STEPS = "unnest(%b::bigint[], %b::bigint[], %b::bigint[], %b::float8[], %b::float8[])"
RUN_STEPS_ADD = (
    f"INSERT INTO run_steps AS r SELECT * FROM {_RUN_STEPS} ON CONFLICT (run_id, rank) "
    "DO UPDATE SET steps = r.steps + excluded.steps, "
    "first_time = least(r.first_time, excluded.first_time), "
    "last_time = greatest(r.last_time, excluded.last_time)")
RUN_STEPS_SELECT = ("SELECT steps, first_time, last_time FROM run_steps "
                    "WHERE run_id = %s AND rank = %s")
RUN_STEPS_SET = (
    f"INSERT INTO run_steps SELECT * FROM {_RUN_STEPS} ON CONFLICT (run_id, rank) "
    "DO UPDATE SET steps = excluded.steps, first_time = excluded.first_time, "
    "last_time = excluded.last_time")
RUN_STEPS_COUNT = (
    "INSERT INTO run_steps SELECT run_id, rank, count(*), min(time), max(time) FROM steps "
    "WHERE run_id = %(run)s AND rank = %(rank)s GROUP BY run_id, rank "
    "ON CONFLICT (run_id, rank) DO UPDATE SET steps = excluded.steps, "
    "first_time = excluded.first_time, last_time = excluded.last_time")

INSERT_CLIP = (
    "INSERT INTO clips VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, rank, step) DO UPDATE SET raw = excluded.raw, "
    "threshold = excluded.threshold, action = excluded.action, reason = excluded.reason, "
    "components = excluded.components")

# Insert the step's origin, or complete the stored one of the same origin step.
UPSERT_ORIGIN = (
    "INSERT INTO origins AS o VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, rank, step) DO UPDATE SET "
    "reported_step = greatest(o.reported_step, excluded.reported_step), kind = excluded.kind, "
    "stage = excluded.stage, module = coalesce(excluded.module, o.module), "
    "module_type = coalesce(excluded.module_type, o.module_type), "
    "param = coalesce(excluded.param, o.param), op = coalesce(excluded.op, o.op), "
    "source = coalesce(excluded.source, o.source)")

UPDATE_RUN_PROGRESS = (
    "UPDATE runs r SET updated = greatest(r.updated, p.time), "
    "last_step = greatest(r.last_step, p.step) "
    "FROM unnest(%b::bigint[], %b::float8[], %b::bigint[]) AS p(id, time, step) "
    "WHERE r.id = p.id")

# A new alert; should another replica have opened the same one meanwhile, update that instead.
UPSERT_ALERT = (
    "INSERT INTO alerts(run_id, rank, rule, series, severity, state, first_step, opened_step, "
    "last_step, resolved_step, count, message, details) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, rank, rule, series) WHERE state = 'open' DO UPDATE SET "
    "severity = excluded.severity, state = excluded.state, first_step = excluded.first_step, "
    "opened_step = excluded.opened_step, last_step = excluded.last_step, "
    "resolved_step = excluded.resolved_step, count = excluded.count, "
    "message = excluded.message, details = excluded.details")

# ------------------------------------------------------------------------------------- reads

# A run with everything its RunRow shows, in one statement (no query per run), each part an
# index seek: streams by (run_id, rank, session), the step summary by run_steps' key (no scan
# of steps), open alerts by one_open_alert, incidents by their key, the latest steps by the
# key of steps.
RUN_SELECT = """
SELECT r.id, r.name, r.status, r.created, r.updated, r.last_step, r.world_size, r.reason,
  r.config, coalesce(k.ranks, '{}'), coalesce(k.dropped, 0), st.n, st.t0, st.t1,
  coalesce(al.open, '{}'), coalesce(rc.steps, '{}'), coalesce(rc.times, '{}'),
  coalesce(ic.open, '{}'), coalesce(ic.total, 0)
FROM runs r
LEFT JOIN LATERAL (SELECT array_agg(DISTINCT rank ORDER BY rank) AS ranks,
                          sum(dropped)::bigint AS dropped
                   FROM streams WHERE run_id = r.id) k ON true
LEFT JOIN LATERAL (SELECT coalesce(sum(steps), 0)::bigint AS n, min(first_time) AS t0,
                          max(last_time) AS t1
                   FROM run_steps WHERE run_id = r.id) st ON true
LEFT JOIN LATERAL (SELECT json_object_agg(severity, n) AS open
                   FROM (SELECT severity, count(*) AS n FROM alerts
                         WHERE run_id = r.id AND state = 'open' GROUP BY severity) a) al ON true
LEFT JOIN LATERAL (SELECT json_object_agg(severity, n) FILTER (WHERE severity IS NOT NULL)
                          AS open, sum(total)::bigint AS total
                   FROM (SELECT CASE WHEN state <> 'resolved' THEN severity END AS severity,
                                count(*) FILTER (WHERE state <> 'resolved') AS n,
                                count(*) AS total
                         FROM incidents WHERE run_id = r.id
                         GROUP BY CASE WHEN state <> 'resolved' THEN severity END) i) ic ON true
LEFT JOIN LATERAL (  -- the lowest rank's latest steps, newest first
  SELECT array_agg(step ORDER BY step DESC) AS steps, array_agg(time ORDER BY step DESC) AS times
  FROM (SELECT step, time FROM steps WHERE run_id = r.id AND rank = coalesce(k.ranks[1], 0)
        ORDER BY step DESC LIMIT 100) x) rc ON true
"""

# M4 (see trainvitals.server.store.downsample.m4, which this must equal), as SQLITE_M4 computes it:
# per bucket a primary-key range scan. The buckets are downsample.columns, passed as arrays of
# first and last steps; PostgreSQL keeps no block summaries, so columns of whole blocks are read
# point by point here too (correct, not faster). Sorting ascending, the lowest value is the
# first -Inf, else the finite min (NaN sorts last); descending, the highest is the first NaN,
# else the first +Inf, else the finite max. Only buckets where one of them is not finite ("odd")
# need more: the finite min and max, and the first +Inf (hidden behind a NaN).
# Parameters: %(sid)s (series id), %(lo)b and %(hi)b (each bucket's first and last step).
_W = "series_id = %(sid)s AND step BETWEEN lo AND hi"
_FINITE = "value > '-Infinity' AND value < 'Infinity'"  # NaN sorts above +Infinity
M4 = f"""
WITH bucket(lo, hi) AS (SELECT * FROM unnest(%(lo)b::bigint[], %(hi)b::bigint[])),
m(lo, hi, f, l, a, z) AS (SELECT lo, hi,
    (SELECT min(step) FROM points WHERE {_W}),
    (SELECT max(step) FROM points WHERE {_W}),
    (SELECT step FROM points WHERE {_W} ORDER BY value, step LIMIT 1),
    (SELECT step FROM points WHERE {_W} ORDER BY value DESC, step LIMIT 1)
  FROM bucket),
odd(lo, hi) AS (SELECT m.lo, m.hi FROM m
  JOIN points pa ON pa.series_id = %(sid)s AND pa.step = m.a
  JOIN points pz ON pz.series_id = %(sid)s AND pz.step = m.z
  WHERE pa.value = '-Infinity' OR pz.value >= 'Infinity'),
picks(s) AS (SELECT f FROM m UNION SELECT l FROM m UNION SELECT a FROM m UNION SELECT z FROM m
  UNION SELECT (SELECT step FROM points WHERE {_W} AND {_FINITE}
                ORDER BY value, step LIMIT 1) FROM odd
  UNION SELECT (SELECT step FROM points WHERE {_W} AND {_FINITE}
                ORDER BY value DESC, step LIMIT 1) FROM odd
  UNION SELECT (SELECT min(step) FROM points WHERE {_W} AND value = 'Infinity') FROM odd)
SELECT p.step, p.value FROM picks JOIN points p ON p.series_id = %(sid)s AND p.step = picks.s
ORDER BY p.step
"""

# ------------------------------------------------------------------------------- maintenance

# Per table (every one in postgres_schema.TABLES): total bytes (with indexes and TOAST), heap
# bytes, live rows (the statistics), and the average size of a row, from up to 100 of them
# (ours are nearly all of one size).
TABLE_SIZES = """
SELECT pg_total_relation_size(c.oid), pg_relation_size(c.oid),
  coalesce(pg_stat_get_live_tuples(c.oid), 0), coalesce(w.width, 0)::float8,
  current_setting('block_size')::bigint
FROM (SELECT 'meta' AS name, (SELECT avg(pg_column_size(t)) FROM (TABLE meta LIMIT 100) t) AS width
  UNION ALL SELECT 'runs', (SELECT avg(pg_column_size(t)) FROM (TABLE runs LIMIT 100) t)
  UNION ALL SELECT 'streams', (SELECT avg(pg_column_size(t)) FROM (TABLE streams LIMIT 100) t)
  UNION ALL SELECT 'seen', (SELECT avg(pg_column_size(t)) FROM (TABLE seen LIMIT 100) t)
  UNION ALL SELECT 'series', (SELECT avg(pg_column_size(t)) FROM (TABLE series LIMIT 100) t)
  UNION ALL SELECT 'points', (SELECT avg(pg_column_size(t)) FROM (TABLE points LIMIT 100) t)
  UNION ALL SELECT 'steps', (SELECT avg(pg_column_size(t)) FROM (TABLE steps LIMIT 100) t)
  UNION ALL SELECT 'run_steps',
    (SELECT avg(pg_column_size(t)) FROM (TABLE run_steps LIMIT 100) t)
  UNION ALL SELECT 'clips', (SELECT avg(pg_column_size(t)) FROM (TABLE clips LIMIT 100) t)
  UNION ALL SELECT 'alerts', (SELECT avg(pg_column_size(t)) FROM (TABLE alerts LIMIT 100) t)
  UNION ALL SELECT 'origins', (SELECT avg(pg_column_size(t)) FROM (TABLE origins LIMIT 100) t)
) w JOIN pg_class c ON c.oid = to_regclass(w.name)
"""

DISK_BYTES = ("SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0)::bigint "
              "FROM unnest(%s::text[]) AS t")

# The columns in the order of incident_rows.INCIDENT_COLUMNS (a test holds them together).
UPSERT_INCIDENT = """
INSERT INTO incidents(run_id, number, kind, severity, state, onset_step, rank, opened_step,
                      last_step, resolved_step, headline, remedy, body)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id, number) DO UPDATE SET kind = excluded.kind,
  severity = excluded.severity, state = excluded.state, onset_step = excluded.onset_step,
  rank = excluded.rank, opened_step = excluded.opened_step, last_step = excluded.last_step,
  resolved_step = excluded.resolved_step, headline = excluded.headline,
  remedy = excluded.remedy, body = excluded.body
"""
