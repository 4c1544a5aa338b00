-- imgsyncd journal, schema 5: paths are written by src/journal/path_text.rs, which stores each
-- byte of a name that is not UTF-8 as a character of U+10FF80..U+10FFFF. The few names stored
-- before that which already hold one of those characters are written anew by the code that runs
-- with this migration (Journal::rewrite_paths_as_text), so that they read back as themselves.
-- No table changes.
SELECT 1;
