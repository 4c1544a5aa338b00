-- imgsyncd journal, schema 6: the CHECK constraints that list more than two values
-- (files.state, files.removal, jobs.op, remote_copies.state) are written as comparisons joined
-- by OR. SQLite builds a temporary b-tree for each row it checks against a longer IN list, which
-- was a quarter of the cost of recording a file (BENCHMARKS.md, eighth round). The two forms allow
-- exactly the same values, NULL included, so the stored rows need no change: the code that runs
-- with this migration (Journal::rewrite_value_checks) edits the table definitions in place, as
-- SQLite documents for changing a CHECK constraint (lang_altertable.html, "other kinds of table
-- schema changes").
SELECT 1;
