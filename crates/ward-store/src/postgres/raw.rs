//! Direct table access on PostgreSQL for backups, restores and key
//! rewrapping, over one dedicated connection.

use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::conn::{Conn, db_error};
use super::{OwnedRuntime, PostgresOptions, build_pool, get_client, parse_config, schema};
use crate::backup::{Cell, Kind, Raw, Table};
use crate::{Result, StoreError};

/// Rows fetched from a cursor at a time while scanning a table.
const FETCH_ROWS: usize = 1000;

/// One connection to a PostgreSQL store, with its schema created or checked.
pub(crate) struct PostgresRaw {
    // Field order matters: the connection and pool close before the runtime
    // that drives them stops.
    client: Object,
    _pool: Pool,
    runtime: OwnedRuntime,
    in_transaction: bool,
}

impl PostgresRaw {
    pub(crate) fn open(url: &str) -> Result<Self> {
        let runtime = OwnedRuntime::new()?;
        let options = PostgresOptions {
            pool_size: 1,
            ..PostgresOptions::default()
        };
        let pool = build_pool(parse_config(url)?, &options)?;
        let client = get_client(&pool, runtime.handle()?)?;
        let raw = Self {
            client,
            _pool: pool,
            runtime,
            in_transaction: false,
        };
        {
            let conn = raw.conn()?;
            let current = schema::version(&conn)?;
            if current == 0 {
                schema::migrate(&conn)?;
            } else {
                schema::check(current)?;
            }
        }
        Ok(raw)
    }

    fn conn(&self) -> Result<Conn<'_>> {
        Ok(Conn {
            client: &self.client,
            runtime: self.runtime.handle()?,
        })
    }
}

fn column_list(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn cast(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "BIGINT",
        Kind::Real => "DOUBLE PRECISION",
        Kind::Text => "TEXT",
        Kind::Blob => "BYTEA",
    }
}

fn read_row(row: &Row, table: &Table) -> Result<Vec<Cell>> {
    let mut cells = Vec::with_capacity(table.columns.len());
    for (index, (_, kind)) in table.columns.iter().enumerate() {
        let cell = match kind {
            Kind::Int => row
                .try_get::<_, Option<i64>>(index)
                .map(|v| v.map_or(Cell::Null, Cell::Int)),
            Kind::Real => row
                .try_get::<_, Option<f64>>(index)
                .map(|v| v.map_or(Cell::Null, Cell::Real)),
            Kind::Text => row
                .try_get::<_, Option<String>>(index)
                .map(|v| v.map_or(Cell::Null, Cell::Text)),
            Kind::Blob => row
                .try_get::<_, Option<Vec<u8>>>(index)
                .map(|v| v.map_or(Cell::Null, Cell::Blob)),
        }
        .map_err(db_error)?;
        cells.push(cell);
    }
    Ok(cells)
}

/// Converts a cell into a parameter of the column's type, so a NULL binds
/// with the right type too.
fn to_param(table: &Table, column: usize, cell: &Cell) -> Result<Box<dyn ToSql + Sync>> {
    let (name, kind) = table.columns[column];
    let mismatch = || {
        StoreError::Database(format!(
            "invalid backup content: column {}.{name} has a value of the wrong type",
            table.name
        ))
    };
    Ok(match (kind, cell) {
        (Kind::Int, Cell::Null) => Box::new(None::<i64>),
        (Kind::Real, Cell::Null) => Box::new(None::<f64>),
        (Kind::Text, Cell::Null) => Box::new(None::<String>),
        (Kind::Blob, Cell::Null) => Box::new(None::<Vec<u8>>),
        (Kind::Int, Cell::Int(value)) => Box::new(*value),
        // SQLite may store an integral REAL as an integer.
        (Kind::Real, Cell::Int(value)) => Box::new(*value as f64),
        (Kind::Real, Cell::Real(value)) => Box::new(*value),
        (Kind::Text, Cell::Text(text)) => Box::new(text.clone()),
        (Kind::Blob, Cell::Blob(bytes)) => Box::new(bytes.clone()),
        _ => return Err(mismatch()),
    })
}

impl Raw for PostgresRaw {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn schema_version(&mut self) -> Result<i64> {
        schema::version(&self.conn()?)
    }

    fn table_names(&mut self) -> Result<Vec<String>> {
        let rows = self.conn()?.query(
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )?;
        rows.iter()
            .map(|row| row.try_get::<_, String>(0).map_err(db_error))
            .collect()
    }

    fn count(&mut self, table: &str) -> Result<u64> {
        let row = self
            .conn()?
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])?;
        let count: i64 = row.try_get(0).map_err(db_error)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    fn begin_snapshot(&mut self) -> Result<()> {
        self.conn()?
            .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        self.in_transaction = true;
        Ok(())
    }

    fn begin_write(&mut self) -> Result<()> {
        self.conn()?.batch("BEGIN ISOLATION LEVEL SERIALIZABLE")?;
        self.in_transaction = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.in_transaction = false;
        self.conn()?.batch("COMMIT")
    }

    fn rollback(&mut self) -> Result<()> {
        self.in_transaction = false;
        self.conn()?.batch("ROLLBACK")
    }

    fn scan(&mut self, table: &Table, visit: &mut dyn FnMut(&[Cell]) -> Result<()>) -> Result<()> {
        // A cursor lives in a transaction: outside one, the scan opens its own.
        let own_transaction = !self.in_transaction;
        let conn = self.conn()?;
        if own_transaction {
            conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        }
        let result = (|| {
            conn.batch(&format!(
                "DECLARE ward_dump NO SCROLL CURSOR FOR SELECT {} FROM {} ORDER BY {}",
                column_list(table),
                table.name,
                table.order_by
            ))?;
            loop {
                let rows =
                    conn.query_uncached(&format!("FETCH {FETCH_ROWS} FROM ward_dump"), &[])?;
                for row in &rows {
                    visit(&read_row(row, table)?)?;
                }
                if rows.len() < FETCH_ROWS {
                    break;
                }
            }
            conn.batch("CLOSE ward_dump")
        })();
        if own_transaction {
            let _ = conn.batch("ROLLBACK");
        }
        result
    }

    // NOTE: each row is one statement and one round trip, so a large
    // restore is slow. Batching rows or COPY would fix that.
    fn insert(&mut self, table: &Table, row: &[Cell]) -> Result<()> {
        let placeholders: Vec<String> = table
            .columns
            .iter()
            .enumerate()
            .map(|(index, (_, kind))| format!("${}::{}", index + 1, cast(*kind)))
            .collect();
        let overriding = if table.identity.is_some() {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO {} ({}){overriding} VALUES ({})",
            table.name,
            column_list(table),
            placeholders.join(", ")
        );
        let params = row
            .iter()
            .enumerate()
            .map(|(index, cell)| to_param(table, index, cell))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|param| &**param).collect();
        self.conn()?.execute(&sql, &refs)?;
        Ok(())
    }

    fn after_restore(&mut self) -> Result<()> {
        let conn = self.conn()?;
        for table in crate::backup::TABLES {
            if let Some(column) = table.identity {
                conn.batch(&format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', '{column}'), \
                     (SELECT COALESCE(MAX({column}), 0) + 1 FROM {0}), false)",
                    table.name
                ))?;
            }
        }
        Ok(())
    }

    fn delete_all(&mut self, table: &Table) -> Result<()> {
        self.conn()?.batch(&format!("DELETE FROM {}", table.name))
    }

    fn update_wrapped(&mut self, table: &Table, key: &Cell, wrapped: &[u8]) -> Result<()> {
        let (key_column, _) = table.columns[0];
        let key = to_param(table, 0, key)?;
        let wrapped = wrapped.to_vec();
        self.conn()?.execute(
            &format!(
                "UPDATE {} SET wrapped = $1 WHERE {key_column} = $2",
                table.name
            ),
            &[&wrapped, &*key],
        )?;
        Ok(())
    }
}
