-- imgsyncd journal, schema 2: watches paused because their folder vanished or was unmounted,
-- so that `status` (another process) can say so.

CREATE TABLE watch_pauses (
    root   TEXT    PRIMARY KEY,
    reason TEXT    NOT NULL,
    since  INTEGER NOT NULL
);
