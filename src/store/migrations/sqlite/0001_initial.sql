-- Each service's state as `plan` left it (JSON), with the version a writer must name.
CREATE TABLE services (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL
);

-- Operators' overrides per service (JSON); the API writes them, the plan lifts one-shots.
CREATE TABLE overrides (
    service TEXT PRIMARY KEY,
    overrides TEXT NOT NULL
);

-- Every change of phase, with its cause (JSON).
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release TEXT NOT NULL,
    from_phase TEXT,
    to_phase TEXT NOT NULL,
    weight INTEGER NOT NULL,
    cause TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX transitions_by_service ON transitions (service, id);

-- The judge's word at each transition, kept for good.
CREATE TABLE evidence (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release TEXT NOT NULL,
    objective TEXT NOT NULL,
    evidence TEXT NOT NULL,
    at INTEGER NOT NULL
);

-- The latest judgement per objective (what a display shows now).
CREATE TABLE latest_evidence (
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    objective TEXT NOT NULL,
    release TEXT NOT NULL,
    evidence TEXT NOT NULL,
    PRIMARY KEY (service, environment, objective)
);

-- Actions that failed, with the port's error.
CREATE TABLE failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    action TEXT NOT NULL,
    error TEXT NOT NULL
);

-- Builds, as the builder ran them: status, output, and the digest of what they packed.
CREATE TABLE builds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    digest TEXT,
    release TEXT,
    output TEXT NOT NULL DEFAULT '',
    error TEXT,
    UNIQUE (service, commit_sha)
);

-- Where each source's events were last acknowledged.
CREATE TABLE cursors (
    service TEXT NOT NULL,
    source TEXT NOT NULL,
    cursor TEXT NOT NULL,
    PRIMARY KEY (service, source)
);

-- Processes the local runtime started, so a later run can find and stop what was left.
CREATE TABLE processes (
    pid INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    release TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    -- also in the process's environment: a reused pid does not carry it
    token TEXT NOT NULL
);
