-- imgsyncd journal, schema 7: the counts a start and the status line make read small indexes.
--
-- A start compares the files found in each watch with how many the journal holds as present
-- there, and the status line counts held removals. Both read every row they looked at in the
-- files table: 12 ms a watch of 33 000 files, and 10 ms for the held count over 100 000 files,
-- on the way to READY=1 and again at each status update. Each index holds only the rows it
-- counts (files removed, or with a removal pending), which the writes of a drain never touch.
CREATE INDEX files_absent ON files (path) WHERE state = 'removed' OR removal IS NOT NULL;
CREATE INDEX files_by_removal ON files (removal) WHERE removal IS NOT NULL;
