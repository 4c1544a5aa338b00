//! Statements through SQLite's statement cache. The daemon runs the same few dozen statements for
//! every file it takes, claims and records; compiling each afresh (parsing, planning) cost more
//! than running it.

use std::ops::Deref;

use rusqlite::{Connection, Params, Row, Savepoint, Transaction};

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
    Nested(Savepoint<'c>),
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
            Write::Nested(savepoint) => savepoint,
        }
    }
}
