-- agentd's schema on PostgreSQL: the SQLite schema's tables (see
-- migrations/sqlite) with PostgreSQL types. Every table carries tenant_id
-- (DESIGN §2); times are integer milliseconds since the epoch; JSON is stored
-- as text, exactly as the SQLite store keeps it, so both share row decoding.

CREATE TABLE sessions (
    tenant_id   TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    agent       TEXT   NOT NULL,
    metadata    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX sessions_by_time ON sessions (tenant_id, created_at DESC, id DESC);

CREATE TABLE messages (
    tenant_id   TEXT   NOT NULL,
    session_id  TEXT   NOT NULL,
    idx         BIGINT NOT NULL,
    run_id      TEXT   NOT NULL,
    role        TEXT   NOT NULL,
    content     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, session_id, idx)
);

-- Unlike SQLite, last_seq is a column: several nodes append, so the run row
-- is where an append is fenced (epoch, owner) and its seqs are allocated, in
-- one conditional UPDATE.
CREATE TABLE runs (
    id               TEXT   PRIMARY KEY,
    tenant_id        TEXT   NOT NULL,
    session_id       TEXT   NOT NULL,
    agent            TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    input            TEXT   NOT NULL,
    user_message     TEXT   NOT NULL,
    metadata         TEXT   NOT NULL,
    source           TEXT   NOT NULL,
    agent_config     TEXT   NOT NULL,
    output           TEXT,
    usage            TEXT   NOT NULL,
    reason_code      TEXT,
    error            TEXT,
    last_seq         BIGINT NOT NULL DEFAULT 0,
    lease_epoch      BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    request_id       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX runs_by_time ON runs (tenant_id, created_at DESC, id DESC);
CREATE INDEX runs_by_session ON runs (tenant_id, session_id, created_at, id);
CREATE INDEX runs_queued ON runs (created_at, id) WHERE status = 'queued';
CREATE INDEX runs_by_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX runs_by_lease ON runs (lease_expires_at) WHERE status = 'running';
-- A paused run keeps the deadline of its wait for a human in lease_expires_at.
CREATE INDEX runs_by_wait ON runs (lease_expires_at) WHERE status = 'awaiting_input';

CREATE TABLE run_events (
    run_id      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    tenant_id   TEXT   NOT NULL,
    type        TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Cancel requests and signals for a run a worker holds: written by the API
-- on any node, read by the lease holder through its heartbeat, so a missed
-- notification loses nothing.
CREATE TABLE run_controls (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    consumed_at BIGINT
);
CREATE INDEX run_controls_pending ON run_controls (run_id) WHERE consumed_at IS NULL;

CREATE TABLE idempotency_keys (
    tenant_id   TEXT   NOT NULL,
    route       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    status      BIGINT NOT NULL,
    body        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, route, key)
);

-- id is the key_id of `key_id:secret`, unique across tenants. Secrets are
-- kept only as SHA-256 digests (hex).
CREATE TABLE api_keys (
    id                   TEXT   PRIMARY KEY,
    tenant_id            TEXT   NOT NULL,
    name                 TEXT   NOT NULL,
    scopes               TEXT   NOT NULL,
    secret_sha256        TEXT   NOT NULL,
    previous_sha256      TEXT,
    previous_valid_until BIGINT,
    created_by           TEXT   NOT NULL,
    created_at           BIGINT NOT NULL,
    expires_at           BIGINT,
    rotated_at           BIGINT,
    revoked_at           BIGINT
);
CREATE INDEX api_keys_by_time ON api_keys (tenant_id, created_at DESC, id DESC);

-- Append-only: nothing updates or deletes a row.
CREATE TABLE audit_events (
    id          TEXT   PRIMARY KEY,
    tenant_id   TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    actor_id    TEXT,
    action      TEXT   NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    outcome     TEXT   NOT NULL,
    client_ip   TEXT,
    request_id  TEXT,
    details     TEXT   NOT NULL
);
CREATE INDEX audit_by_time ON audit_events (tenant_id, created_at DESC, id DESC);
