//! A synchronous face over one pooled PostgreSQL connection: every call
//! runs on the store's own runtime and blocks the calling thread until the
//! server replies.

use deadpool_postgres::ClientWrapper;
use tokio::runtime::Handle;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::StoreError;
use crate::search::SqlValue;

/// A parameter list as tokio-postgres takes it.
pub(crate) type Params<'p> = [&'p (dyn ToSql + Sync)];

/// One connection and the runtime that drives it.
pub(crate) struct Conn<'a> {
    pub client: &'a ClientWrapper,
    pub runtime: &'a Handle,
}

impl Conn<'_> {
    /// Runs a statement from the statement cache and returns its rows.
    pub(crate) fn query(&self, sql: &str, params: &Params<'_>) -> crate::Result<Vec<Row>> {
        self.runtime
            .block_on(async {
                let statement = self.client.prepare_cached(sql).await?;
                self.client.query(&statement, params).await
            })
            .map_err(db_error)
    }

    /// Runs a cached statement that returns exactly one row.
    pub(crate) fn query_one(&self, sql: &str, params: &Params<'_>) -> crate::Result<Row> {
        let rows = self.query(sql, params)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| StoreError::Database("a query expected one row returned none".into()))
    }

    /// Runs a cached statement that returns at most one row.
    pub(crate) fn query_opt(&self, sql: &str, params: &Params<'_>) -> crate::Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs a one-off statement (such as a planned search) without caching
    /// it, so the cache does not grow with every query shape.
    pub(crate) fn query_uncached(&self, sql: &str, params: &Params<'_>) -> crate::Result<Vec<Row>> {
        self.runtime
            .block_on(self.client.query(sql, params))
            .map_err(db_error)
    }

    /// Runs a cached statement and returns the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: &Params<'_>) -> crate::Result<u64> {
        self.runtime
            .block_on(async {
                let statement = self.client.prepare_cached(sql).await?;
                self.client.execute(&statement, params).await
            })
            .map_err(db_error)
    }

    /// Runs statements without parameters (transaction control, DDL).
    pub(crate) fn batch(&self, sql: &str) -> crate::Result<()> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(db_error)
    }
}

/// Converts a driver error. Only the server's message and SQLSTATE are kept:
/// the detail lines may quote row values.
pub(crate) fn db_error(err: tokio_postgres::Error) -> StoreError {
    match err.as_db_error() {
        Some(db) => {
            StoreError::Database(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
        }
        None => StoreError::Database(err.to_string()),
    }
}

/// True when `err` is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
    err.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Rewrites the `?` placeholders of planner SQL into `$1..$n`, each cast to
/// the type of its value, so PostgreSQL never has to infer a parameter type
/// from context. The planner writes no string literals, so every `?` is a
/// placeholder.
pub(crate) fn numbered(sql: &str, values: &[SqlValue]) -> String {
    let mut out = String::with_capacity(sql.len() + values.len() * 12);
    let mut index = 0;
    for ch in sql.chars() {
        if ch != '?' {
            out.push(ch);
            continue;
        }
        let cast = match values.get(index) {
            Some(SqlValue::Int(_)) => "BIGINT",
            Some(SqlValue::Real(_)) => "DOUBLE PRECISION",
            Some(SqlValue::Blob(_)) => "BYTEA",
            Some(SqlValue::Text(_)) | None => "TEXT",
        };
        index += 1;
        out.push_str(&format!("(${index}::{cast})"));
    }
    out
}

/// Borrows planner values as driver parameters.
pub(crate) fn bind(values: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|value| -> &(dyn ToSql + Sync) {
            match value {
                SqlValue::Int(i) => i,
                SqlValue::Real(r) => r,
                SqlValue::Text(t) => t,
                SqlValue::Blob(b) => b,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_and_cast() {
        let sql = "SELECT 1 WHERE a = ? AND b IN (?, ?) AND c = ?";
        let values = [
            SqlValue::Text("x".into()),
            SqlValue::Int(1),
            SqlValue::Real(2.0),
            SqlValue::Blob(vec![1]),
        ];
        assert_eq!(
            numbered(sql, &values),
            "SELECT 1 WHERE a = ($1::TEXT) AND b IN (($2::BIGINT), ($3::DOUBLE PRECISION)) AND c = ($4::BYTEA)"
        );
    }
}
