-- imgsyncd journal, schema 11: watches that hear of their files less well than they should.
--
-- A watch inotify cannot cover (out of inotify watches, a filesystem without inotify) is polled
-- every 30 s instead, and one that can neither be watched nor polled finds files only at the
-- periodic rescan. The daemon said so once in its log; `status`, which reads the journal, showed
-- nothing. Each such watch keeps its reason here while it lasts.
--
-- A newer imgsyncd's `status` reads a journal the running daemon has not migrated yet (READS_FROM
-- in src/journal/mod.rs stays at 8): it reads this table only where it exists.
CREATE TABLE degraded_watches (
    root   TEXT    PRIMARY KEY,
    reason TEXT    NOT NULL,
    since  INTEGER NOT NULL
);
