-- imgsyncd journal, schema 8: a rejected file found again under another name keeps its record.
--
-- A file rejected (truncated, unreadable) keeps its last good remote copy. Renamed while bad, or
-- with its folder renamed, it was recorded afresh at the new path, without a copy, and the old
-- path's removal deleted that copy. A rejected record has no content hash to find it by, so it is
-- found by its device and inode; the index holds only the records without a hash (rejected
-- ones), which the writes of a drain never touch.
CREATE INDEX files_unhashed_by_inode ON files (dev, inode) WHERE sha256 IS NULL;
