-- API keys and the audit trail (DESIGN §2).

-- id is the key_id of `key_id:secret`, unique across tenants: a credential
-- names its key, and the key names its tenant. Secrets are kept only as
-- SHA-256 digests (hex).
CREATE TABLE api_keys (
    id                  TEXT    PRIMARY KEY,
    tenant_id           TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    scopes              TEXT    NOT NULL,
    secret_sha256       TEXT    NOT NULL,
    previous_sha256     TEXT,
    previous_valid_until INTEGER,
    created_by          TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER,
    rotated_at          INTEGER,
    revoked_at          INTEGER
);
CREATE INDEX api_keys_by_time ON api_keys (tenant_id, created_at DESC, id DESC);

-- Append-only: nothing updates or deletes a row.
CREATE TABLE audit_events (
    id          TEXT    PRIMARY KEY,
    tenant_id   TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    actor_id    TEXT,
    action      TEXT    NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    outcome     TEXT    NOT NULL,
    client_ip   TEXT,
    request_id  TEXT,
    details     TEXT    NOT NULL
);
CREATE INDEX audit_by_time ON audit_events (tenant_id, created_at DESC, id DESC);
