-- Sandbox sessions (DESIGN §6, docs/sandbox.md): one row per sandbox,
-- rewritten as it moves through its phases. `result` is the whole result
-- body (stdout, stderr, the value the code reported, usage) once the
-- workload ended; live output frames are not stored. labels, limits,
-- egress and result are JSON text.
CREATE TABLE sandboxes (
    tenant_id    TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    phase        TEXT    NOT NULL,
    language     TEXT    NOT NULL,
    labels       TEXT    NOT NULL,
    limits       TEXT    NOT NULL,
    egress       TEXT    NOT NULL,
    kill_reason  TEXT,
    exit_code    INTEGER,
    error        TEXT,
    result       TEXT,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    torn_down_at INTEGER,
    -- Past this, a row still pending or running has no process behind it
    -- (the wall clock would have killed it): it is ended as orphaned.
    deadline_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sandboxes_by_time ON sandboxes (tenant_id, created_at DESC, id DESC);
CREATE INDEX sandboxes_unfinished ON sandboxes (deadline_at) WHERE phase IN ('pending', 'running');
