-- imgsyncd journal, schema 10: where a file renamed out of the watch's names is now.
--
-- A synced file renamed to a name the watch does not take (`.a.png`, `a.png.bak`) or moved into
-- an excluded folder keeps its record and its copy, with a note. Such a record is not on disk
-- where the walk looks, so each rescan and each start counted it as vanished and read the whole
-- journal side of the watch again, and looked at the file again. Its place is kept here instead:
-- the walk and the count leave it out, and a rescan looks only at that place.
--
-- Only the daemon reads this column: a newer imgsyncd's `status` and `files` still read a journal
-- the running daemon has not migrated yet (READS_FROM in src/journal/mod.rs stays at 8). Records
-- noted before this schema get their place at the next rescan, which finds them as before.
ALTER TABLE files ADD COLUMN untaken_at TEXT;
CREATE INDEX files_untaken ON files (path) WHERE untaken_at IS NOT NULL;
