-- jobs_ready (state, not_before) served the claim before claims went per vendor; jobs_due
-- (vendor, state, not_before) serves every query now. An index no query uses still costs a
-- b-tree write for every job queued, claimed and finished.
DROP INDEX IF EXISTS jobs_ready;
