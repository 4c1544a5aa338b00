-- imgsyncd journal, schema 3: remote copies are records of their own.
--
-- Each copy a vendor holds (a Kingdee URL, a Feishu file_token, a Jiandaoyun key) is one row with
-- its content, expiry and whether it is being or has been deleted; a file points at the copy it
-- last synced to. Dedupe, "is this copy still used", restore and delete all read this table, so a
-- copy is deleted only when nothing refers to it and a file is `synced` only to a live copy.
-- Files also keep a full stamp (ctime, inode, device), watch roots their identity, and every
-- delete a removal queued is logged, so removals can be counted over a sliding window.

CREATE TABLE remote_copies (
    id             INTEGER PRIMARY KEY,
    vendor         TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    -- what the adapter needs to find it again: URL, file_token or key
    remote_ref     TEXT    NOT NULL,
    sha256         TEXT,
    transaction_id TEXT,
    expires_at     INTEGER,
    -- the form record that uses the copy (Jiandaoyun's data._id), when one was created
    record_id      TEXT,
    -- live: usable; deleting: a delete was sent (its fate unknown until answered); deleted: gone
    state          TEXT    NOT NULL CHECK (state IN ('live', 'deleting', 'deleted')),
    created_at     INTEGER NOT NULL,
    deleted_at     INTEGER,
    UNIQUE (vendor, remote_ref)
);
CREATE INDEX copies_by_content ON remote_copies (vendor, sha256);

ALTER TABLE files ADD COLUMN copy_id INTEGER REFERENCES remote_copies (id);
ALTER TABLE files ADD COLUMN ctime_ns INTEGER;
ALTER TABLE files ADD COLUMN inode INTEGER;
ALTER TABLE files ADD COLUMN dev INTEGER;
-- whether copies this file no longer needs are deleted at the vendor (on_remove: delete, and the
-- vendor has a delete API)
ALTER TABLE files ADD COLUMN delete_unused INTEGER NOT NULL DEFAULT 0;
-- whether a live copy of the same bytes may serve this file (not where each file needs its own,
-- as with a Jiandaoyun form record per file)
ALTER TABLE files ADD COLUMN reuse_copies INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN copy_id INTEGER REFERENCES remote_copies (id);

INSERT INTO remote_copies (vendor, kind, remote_ref, sha256, transaction_id, expires_at, state,
                           created_at, deleted_at)
SELECT vendor, kind, COALESCE(url, file_token, remote_key), sha256, transaction_id, expires_at,
       CASE WHEN MIN(remote_deleted) = 1 THEN 'deleted' ELSE 'live' END, MIN(created_at),
       CASE WHEN MIN(remote_deleted) = 1 THEN MAX(updated_at) END
FROM files
WHERE COALESCE(url, file_token, remote_key) IS NOT NULL
GROUP BY vendor, COALESCE(url, file_token, remote_key);

UPDATE files SET
    copy_id = (SELECT c.id FROM remote_copies c
               WHERE c.vendor = files.vendor
                 AND c.remote_ref = COALESCE(files.url, files.file_token, files.remote_key)),
    delete_unused = CASE WHEN kind = 'kingdee' THEN 1 ELSE 0 END;

-- A superseded copy's delete was queued with its URL only: give it a row of its own.
INSERT OR IGNORE INTO remote_copies (vendor, kind, remote_ref, state, created_at)
SELECT j.vendor, f.kind, j.remote_ref, 'live', j.created_at
FROM jobs j JOIN files f ON f.id = j.file_id
WHERE j.remote_ref IS NOT NULL;

UPDATE jobs SET copy_id = (SELECT c.id FROM remote_copies c
                           WHERE c.vendor = jobs.vendor AND c.remote_ref = jobs.remote_ref)
WHERE remote_ref IS NOT NULL;

-- Deferred removals are now decided at once; a delete in progress keeps `removal = 'delete'`.
UPDATE files SET state = 'removed', removal = NULL WHERE removal = 'keep';

ALTER TABLE jobs DROP COLUMN remote_ref;
ALTER TABLE files DROP COLUMN url;
ALTER TABLE files DROP COLUMN file_token;
ALTER TABLE files DROP COLUMN remote_key;
ALTER TABLE files DROP COLUMN transaction_id;
ALTER TABLE files DROP COLUMN expires_at;
ALTER TABLE files DROP COLUMN remote_deleted;

CREATE INDEX files_by_copy ON files (copy_id);
CREATE INDEX jobs_by_copy ON jobs (copy_id);
-- the claim and the "when is the next job due" look-ups, per vendor, in due order
CREATE INDEX jobs_due ON jobs (vendor, state, not_before);

-- The identity of each watch root when last known good: a root found on another device or with
-- another inode was unmounted or replaced, and its removals are not trusted.
CREATE TABLE watch_roots (
    root       TEXT    PRIMARY KEY,
    dev        INTEGER NOT NULL,
    inode      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Deletes queued because files vanished, per watch, for the max_deletes sliding window.
CREATE TABLE removal_log (
    id         INTEGER PRIMARY KEY,
    watch_root TEXT    NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX removal_log_by_root ON removal_log (watch_root, at);
