//! Direct table access on SQLite for backups, restores and key rewrapping.

use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::{Value, ValueRef};

use crate::Result;
use crate::backup::{Cell, Raw, Table};

/// One connection to a SQLite store, with its schema created or migrated.
pub(crate) struct SqliteRaw {
    conn: Connection,
}

impl SqliteRaw {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        super::create_private(path)?;
        let mut conn = super::open_connection(path)?;
        super::schema::migrate(&mut conn)?;
        Ok(Self { conn })
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

fn to_cell(value: ValueRef<'_>) -> Cell {
    match value {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(value) => Cell::Int(value),
        ValueRef::Real(value) => Cell::Real(value),
        ValueRef::Text(text) => Cell::Text(String::from_utf8_lossy(text).into_owned()),
        ValueRef::Blob(bytes) => Cell::Blob(bytes.to_vec()),
    }
}

fn to_value(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(value) => Value::Integer(*value),
        Cell::Real(value) => Value::Real(*value),
        Cell::Text(text) => Value::Text(text.clone()),
        Cell::Blob(bytes) => Value::Blob(bytes.clone()),
    }
}

impl Raw for SqliteRaw {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn schema_version(&mut self) -> Result<i64> {
        super::schema::version(&self.conn)
    }

    fn table_names(&mut self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?;
        let names = stmt.query_map([], |row| row.get(0))?;
        Ok(names.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    fn count(&mut self, table: &str) -> Result<u64> {
        let count: i64 =
            self.conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get(0)
                })?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    fn begin_snapshot(&mut self) -> Result<()> {
        // In WAL mode a read transaction sees the database as of its first
        // read, whatever writers commit afterwards.
        self.conn.execute_batch("BEGIN DEFERRED")?;
        self.conn
            .query_row("SELECT COUNT(*) FROM data_keys", [], |_| Ok(()))?;
        Ok(())
    }

    fn begin_write(&mut self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        self.conn.execute_batch("ROLLBACK")?;
        Ok(())
    }

    fn scan(&mut self, table: &Table, visit: &mut dyn FnMut(&[Cell]) -> Result<()>) -> Result<()> {
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            column_list(table),
            table.name,
            table.order_by
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut cells = Vec::with_capacity(table.columns.len());
        while let Some(row) = rows.next()? {
            cells.clear();
            for index in 0..table.columns.len() {
                cells.push(to_cell(row.get_ref(index)?));
            }
            visit(&cells)?;
        }
        Ok(())
    }

    fn insert(&mut self, table: &Table, row: &[Cell]) -> Result<()> {
        let placeholders = vec!["?"; table.columns.len()].join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            table.name,
            column_list(table)
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        stmt.execute(rusqlite::params_from_iter(row.iter().map(to_value)))?;
        Ok(())
    }

    fn after_restore(&mut self) -> Result<()> {
        Ok(())
    }

    fn delete_all(&mut self, table: &Table) -> Result<()> {
        self.conn
            .execute(&format!("DELETE FROM {}", table.name), [])?;
        Ok(())
    }

    fn update_wrapped(&mut self, table: &Table, key: &Cell, wrapped: &[u8]) -> Result<()> {
        let key_column = table.columns[0].0;
        self.conn.execute(
            &format!(
                "UPDATE {} SET wrapped = ?1 WHERE {key_column} = ?2",
                table.name
            ),
            rusqlite::params![wrapped, to_value(key)],
        )?;
        Ok(())
    }
}
