-- Run events indexed by a small integer per run instead of its text id.
--
-- Every group commit inserts the deltas of many concurrently streaming runs,
-- and each lands at its own run's end of the events index. Keyed by
-- (run_id TEXT, seq) an index entry took ~45 bytes, so a run's entries
-- filled most of a page and nearly every row of a commit dirtied its own
-- index page: ~38 WAL frames per commit at 100 streaming runs. Keyed by
-- (run_key, seq) an entry takes ~10 bytes, the tails of several active runs
-- share a page, and a commit writes fewer frames (bench/README.md, "Fewer
-- pages per commit": a model of this pattern wrote a quarter of the pages;
-- agentd at 100 clients, ~20% fewer writes per delta, checkpoints included).
--
-- `run_key` is an explicit column, not the runs table's rowid: VACUUM may
-- renumber the rowids of a table without an INTEGER PRIMARY KEY.
ALTER TABLE runs ADD COLUMN run_key INTEGER;
UPDATE runs SET run_key = rowid;
CREATE UNIQUE INDEX runs_by_key ON runs (run_key);

CREATE TABLE run_events_keyed (
    run_key     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    run_id      TEXT    NOT NULL,
    tenant_id   TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
-- Runs are never deleted, so every event has its run.
INSERT INTO run_events_keyed (run_key, seq, run_id, tenant_id, type, payload, created_at)
    SELECT r.run_key, e.seq, e.run_id, e.tenant_id, e.type, e.payload, e.created_at
    FROM run_events e JOIN runs r ON r.id = e.run_id
    ORDER BY e.rowid;
DROP TABLE run_events;
ALTER TABLE run_events_keyed RENAME TO run_events;
-- Still a rowid table, for the reason 0001 gives: rows append at its end and
-- only this index takes the interleaved inserts.
CREATE UNIQUE INDEX run_events_by_run ON run_events (run_key, seq);
