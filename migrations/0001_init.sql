-- imgsyncd journal, schema 1: files, the jobs that move them, and every attempt made.
-- Times are unix epoch milliseconds.

CREATE TABLE files (
    id             INTEGER PRIMARY KEY,
    path           TEXT    NOT NULL UNIQUE,
    watch_root     TEXT    NOT NULL,
    vendor         TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'synced', 'rejected', 'failed', 'removed')),
    size           INTEGER,
    mtime_ns       INTEGER,
    sha256         TEXT,
    format         TEXT,
    width          INTEGER,
    height         INTEGER,
    url            TEXT,
    file_token     TEXT,
    remote_key     TEXT,
    transaction_id TEXT,
    expires_at     INTEGER,
    remote_deleted INTEGER NOT NULL DEFAULT 0,
    -- set while the file is gone from disk but its removal is not finished: delete | keep | held
    removal        TEXT CHECK (removal IN ('delete', 'keep', 'held')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    error          TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX files_by_content ON files (vendor, sha256);
CREATE INDEX files_by_state ON files (state);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    file_id          INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    -- upload: send the file; delete: the file was removed; delete_old: a superseded copy
    op               TEXT    NOT NULL CHECK (op IN ('upload', 'delete', 'delete_old')),
    vendor           TEXT    NOT NULL,
    sha256           TEXT,
    remote_ref       TEXT,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running')),
    not_before       INTEGER NOT NULL,
    lease_until      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    first_failure_at INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE INDEX jobs_ready ON jobs (state, not_before);
CREATE INDEX jobs_by_file ON jobs (file_id);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    file_id     INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    op          TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    http_status INTEGER,
    vendor_code TEXT,
    message     TEXT,
    duration_ms INTEGER
);
CREATE INDEX attempts_by_file ON attempts (file_id, at);

CREATE TABLE vendor_pauses (
    vendor            TEXT    PRIMARY KEY,
    reason            TEXT    NOT NULL,
    since             INTEGER NOT NULL,
    next_probe_at     INTEGER NOT NULL,
    probe_interval_ms INTEGER NOT NULL
);
