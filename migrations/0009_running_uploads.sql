-- imgsyncd journal, schema 9: the uploads in flight, by their bytes; copies, by the files and
-- jobs that have one.
--
-- A queued upload waits while an upload of the same bytes to the same vendor runs, to reuse the
-- copy it returns. Every claim asked that of the job it was about to take by reading all the
-- running jobs of the vendor (some thirty in a drain) into a temporary table first: an eighth of
-- the daemon's instructions in a drain. This index holds only the running uploads, so the
-- question is one lookup, and only a job's start and end touch it.
--
-- Only indexes change here, so a newer imgsyncd's `status` and `files` read a journal the running
-- daemon has not migrated yet (READS_FROM in src/journal/mod.rs stays at 8).
CREATE INDEX jobs_running_uploads ON jobs (vendor, sha256) WHERE state = 'running' AND op = 'upload';

-- A file has no copy until its first upload ends, and most jobs (uploads) name none: the
-- indexes by copy leave those out, so recording a file and queueing, claiming and ending its
-- upload no longer write an entry for "no copy" into each. Every lookup by copy names one.
DROP INDEX files_by_copy;
CREATE INDEX files_by_copy ON files (copy_id) WHERE copy_id IS NOT NULL;
DROP INDEX jobs_by_copy;
CREATE INDEX jobs_by_copy ON jobs (copy_id) WHERE copy_id IS NOT NULL;

-- What `status` (and every scrape of the metrics) reads, without reading every file: by state
-- and vendor from one index; the keys about to expire (Jiandaoyun's) from the few copies that
-- expire; the latest errors from the few attempts that failed. With 100 000 files the three
-- took 0.3 s, the journal busy meanwhile.
DROP INDEX files_by_state;
CREATE INDEX files_by_state ON files (state, vendor);
CREATE INDEX copies_expiring ON remote_copies (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX attempts_errors ON attempts (at)
    WHERE outcome != 'uploaded' AND outcome != 'deleted' AND outcome != 'deduplicated';
