//! Statements through SQLite's statement cache. The daemon runs the same few dozen statements for
//! every file it takes, claims and records; compiling each afresh (parsing, planning) cost more
//! than running it.

use std::cell::Cell;
use std::ops::Deref;

use rusqlite::{Connection, Params, Row, Transaction};

/// How many compiled statements one connection keeps: more than the journal has.
pub(super) const STATEMENT_CACHE: usize = 256;

pub(super) trait CachedSql {
    /// `Connection::execute`, compiled once.
    fn cached_execute<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// `Connection::query_row`, compiled once.
    fn cached_query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl CachedSql for Connection {
    fn cached_execute<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn cached_query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// One write: a transaction of its own, or a savepoint inside a group's transaction. Dropped
/// without `commit`, it takes its changes back.
pub(crate) enum Write<'c> {
    Own(Transaction<'c>),
    Nested(Nested<'c>),
}

impl Write<'_> {
    pub(crate) fn commit(self) -> rusqlite::Result<()> {
        match self {
            Write::Own(tx) => tx.commit(),
            Write::Nested(savepoint) => savepoint.commit(),
        }
    }
}

impl Deref for Write<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Write::Own(tx) => tx,
            Write::Nested(savepoint) => savepoint.conn,
        }
    }
}

/// Whether a group's writes run without savepoints, and whether one of them then left changes
/// that a savepoint would have taken back.
///
/// A savepoint copies every page its write changes into the statement journal before changing
/// it: three a file (recorded, claimed, finished), a fifth of the journal's work in a drain. A
/// group is therefore run without them first ([`Unguarded::begin`]); a write that would have
/// rolled its savepoint back marks the run spoiled, and the group is taken back and run again
/// with savepoints (`JournalHandle`'s `write_group`). Writes almost never fail, so the second
/// run is rare, and what commits is the same either way.
#[derive(Debug, Default)]
pub(crate) struct Unguarded {
    on: Cell<bool>,
    spoiled: Cell<bool>,
}

impl Unguarded {
    /// Writes from now on take no savepoints, until [`Unguarded::end`].
    pub(crate) fn begin(&self) {
        self.on.set(true);
        self.spoiled.set(false);
    }

    pub(crate) fn end(&self) {
        self.on.set(false);
        self.spoiled.set(false);
    }

    /// Whether a write since [`Unguarded::begin`] left changes its savepoint would have undone.
    pub(crate) fn spoiled(&self) -> bool {
        self.on.get() && self.spoiled.get()
    }
}

/// Where a write inside a group's transaction began, holding no borrow of the connection: a
/// savepoint, or, in a group run without savepoints (see [`Unguarded`]), the connection's count
/// of changed rows, to tell whether it changed anything that is then not taken back.
///
/// The savepoint is begun and ended with cached statements. rusqlite's own formats a fresh name
/// and has SQLite parse its statements anew every time, which cost a fifth of recording a file
/// inside a group. One name serves every depth: SQLite releases or rolls back to the innermost
/// savepoint of a name.
pub(crate) enum Mark {
    Savepoint,
    Unguarded(u64),
}

impl Mark {
    fn begin(conn: &Connection, unguarded: &Unguarded) -> rusqlite::Result<Mark> {
        if unguarded.on.get() {
            return Ok(Mark::Unguarded(conn.total_changes()));
        }
        conn.cached_execute("SAVEPOINT journal_write", [])?;
        Ok(Mark::Savepoint)
    }

    fn keep(self, conn: &Connection) -> rusqlite::Result<()> {
        if let Mark::Savepoint = self {
            conn.cached_execute("RELEASE journal_write", [])?;
        }
        Ok(())
    }

    fn undo(self, conn: &Connection, unguarded: &Unguarded) {
        match self {
            // A write that returns early having changed nothing (a claim that found no job)
            // needs nothing taken back.
            Mark::Unguarded(changes) => {
                if conn.total_changes() != changes {
                    unguarded.spoiled.set(true);
                }
            }
            Mark::Savepoint => {
                // Fails only when SQLite already took the whole transaction back (disk full),
                // which the group sees for itself.
                let _ = conn.cached_execute("ROLLBACK TO journal_write", []);
                let _ = conn.cached_execute("RELEASE journal_write", []);
            }
        }
    }
}

/// Several of the journal's writes that stand or fall together ([`super::Journal::as_one_write`]).
/// Unlike [`Nested`], it holds no borrow of the connection, so the writes inside may take the
/// journal mutably.
pub(crate) enum Together {
    /// A transaction of its own: the journal was not inside one.
    Own,
    /// Inside a group's transaction.
    Inside(Mark),
}

impl Together {
    pub(crate) fn begin(conn: &Connection, unguarded: &Unguarded) -> rusqlite::Result<Together> {
        if conn.is_autocommit() {
            conn.cached_execute("BEGIN IMMEDIATE", [])?;
            return Ok(Together::Own);
        }
        Ok(Together::Inside(Mark::begin(conn, unguarded)?))
    }

    /// Keeps the writes, or takes every one of them back.
    pub(crate) fn end(
        self,
        conn: &Connection,
        unguarded: &Unguarded,
        keep: bool,
    ) -> rusqlite::Result<()> {
        match (self, keep) {
            (Together::Own, true) => {
                let committed = conn.cached_execute("COMMIT", []).map(drop);
                if committed.is_err() && !conn.is_autocommit() {
                    // Not left open, for every later write to nest in and never commit.
                    let _ = conn.cached_execute("ROLLBACK", []);
                }
                committed
            }
            // SQLite may have taken the transaction back itself (disk full).
            (Together::Own, false) if conn.is_autocommit() => Ok(()),
            (Together::Own, false) => conn.cached_execute("ROLLBACK", []).map(drop),
            (Together::Inside(mark), true) => mark.keep(conn),
            (Together::Inside(mark), false) => {
                mark.undo(conn, unguarded);
                Ok(())
            }
        }
    }
}

/// One write inside a group's transaction, taken back when dropped without `commit`.
pub(crate) struct Nested<'c> {
    conn: &'c Connection,
    unguarded: &'c Unguarded,
    /// `None` once committed.
    mark: Option<Mark>,
}

impl<'c> Nested<'c> {
    pub(crate) fn begin(
        conn: &'c Connection,
        unguarded: &'c Unguarded,
    ) -> rusqlite::Result<Nested<'c>> {
        Ok(Nested {
            conn,
            unguarded,
            mark: Some(Mark::begin(conn, unguarded)?),
        })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        match self.mark.take() {
            Some(mark) => mark.keep(self.conn),
            None => Ok(()),
        }
    }
}

impl Drop for Nested<'_> {
    fn drop(&mut self) {
        if let Some(mark) = self.mark.take() {
            mark.undo(self.conn, self.unguarded);
        }
    }
}
