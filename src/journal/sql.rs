//! Statements through SQLite's statement cache. The daemon runs the same few dozen statements for
//! every file it takes, claims and records; compiling each afresh (parsing, planning) cost more
//! than running it.

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

/// A savepoint begun and ended with cached statements. rusqlite's own formats a fresh name and
/// has SQLite parse its statements anew every time, which cost a fifth of recording a file inside
/// a group. One name serves every depth: SQLite releases or rolls back to the innermost savepoint
/// of a name.
pub(crate) struct Nested<'c> {
    conn: &'c Connection,
    ended: bool,
}

impl<'c> Nested<'c> {
    pub(crate) fn begin(conn: &'c Connection) -> rusqlite::Result<Nested<'c>> {
        conn.cached_execute("SAVEPOINT journal_write", [])?;
        Ok(Nested { conn, ended: false })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.ended = true;
        self.conn.cached_execute("RELEASE journal_write", [])?;
        Ok(())
    }
}

impl Drop for Nested<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // Fails only when SQLite already took the whole transaction back (disk full), which
            // the group sees for itself.
            let _ = self.conn.cached_execute("ROLLBACK TO journal_write", []);
            let _ = self.conn.cached_execute("RELEASE journal_write", []);
        }
    }
}
