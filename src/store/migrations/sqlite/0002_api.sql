-- The override API: versioned overrides (the API and the loop both write them), where builds
-- came from and the spec they were built with, tokens, the audit trail, idempotency keys,
-- requested builds and notification deliveries.

ALTER TABLE overrides ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- `push`, or `request` (an operator asked for this commit)
ALTER TABLE builds ADD COLUMN source TEXT NOT NULL DEFAULT 'push';
-- the service's objectives file as it was when the build started
ALTER TABLE builds ADD COLUMN config TEXT;
CREATE INDEX builds_by_service ON builds (service, seq);
CREATE INDEX builds_by_release ON builds (release);
CREATE INDEX transitions_by_release ON transitions (release, id);
CREATE INDEX evidence_by_release ON evidence (release, id);

-- API tokens, by the SHA-256 of the secret (the secret itself is never stored).
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    -- the groups an approval by this token counts for, comma-separated
    approver_groups TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

-- Every operator action: who, what, why, when, from where; written with its effect.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    environment TEXT,
    release TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    who TEXT NOT NULL,
    reason TEXT NOT NULL,
    origin TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX audit_by_service ON audit (service, id);
CREATE INDEX audit_by_release ON audit (release, id);

-- A mutation's answer per (token, Idempotency-Key): a retry gets the same answer.
CREATE TABLE idempotency (
    token TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (token, key)
);

-- Builds operators asked for (a hotfix commit), in order; the builder reads them as events.
CREATE TABLE build_requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    who TEXT NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);

-- Each notification and how its delivery went.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    error TEXT,
    at INTEGER NOT NULL
);
