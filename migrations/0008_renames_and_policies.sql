-- imgsyncd journal, schema 8: a rejected file found again under another name keeps its record,
-- and a watch's on_remove, changed, holds for the files already recorded.
--
-- A file rejected (truncated, unreadable) keeps its last good remote copy. Renamed while bad, or
-- with its folder renamed, it was recorded afresh at the new path, without a copy, and the old
-- path's removal deleted that copy. A rejected record has no content hash to find it by, so it is
-- found by its device and inode; the index holds only the records without a hash (rejected
-- ones), which the writes of a drain never touch.
CREATE INDEX files_unhashed_by_inode ON files (dev, inode) WHERE sha256 IS NULL;

-- Each file records the on_remove it was seen under. The policy last applied to a watch's files
-- is kept here, so a start reads the files again only when the config changed it.
CREATE TABLE watch_policies (
    root          TEXT    NOT NULL,
    vendor        TEXT    NOT NULL,
    delete_unused INTEGER NOT NULL,
    PRIMARY KEY (root, vendor)
);
