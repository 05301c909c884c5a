//! Choosing a backend from a database locator, the value of
//! `ward serve --database`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_crypto::MasterKey;

use crate::types::Store;
use crate::{PostgresOptions, PostgresStore, Result, SqliteOptions, SqliteStore};

/// The location of a store.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl Database {
    /// Parses a locator: a `postgres://` or `postgresql://` URL, a
    /// `sqlite://PATH`, or a plain file path. `None` means `default_sqlite`.
    pub fn from_locator(locator: Option<&str>, default_sqlite: &Path) -> Self {
        match locator {
            None => Database::Sqlite(default_sqlite.to_path_buf()),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Database::Postgres(url.to_owned())
            }
            Some(path) => Database::Sqlite(PathBuf::from(
                path.strip_prefix("sqlite://").unwrap_or(path),
            )),
        }
    }

    /// A description for logs and error messages. A PostgreSQL URL is
    /// reduced to its database name and hosts, because it may hold a
    /// password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(config) => {
                    let hosts: Vec<String> = config
                        .get_hosts()
                        .iter()
                        .map(|host| match host {
                            tokio_postgres::config::Host::Tcp(name) => name.clone(),
                            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                        })
                        .collect();
                    format!(
                        "PostgreSQL database '{}' on {}",
                        config.get_dbname().unwrap_or("(default)"),
                        hosts.join(",")
                    )
                }
                Err(_) => "PostgreSQL database (invalid URL)".to_owned(),
            },
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Opens the store at `database` with default options, creating or
/// migrating it as [`SqliteStore::open`] and [`PostgresStore::open`] do.
pub fn open(database: &Database, master: &MasterKey) -> Result<Arc<dyn Store>> {
    Ok(match database {
        Database::Sqlite(path) => Arc::new(SqliteStore::open(&SqliteOptions::new(path), master)?),
        Database::Postgres(url) => Arc::new(PostgresStore::open(
            url,
            master,
            &PostgresOptions::default(),
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_pick_backends() {
        let default = Path::new("/data/ward.db");
        assert_eq!(
            Database::from_locator(None, default),
            Database::Sqlite(default.to_path_buf())
        );
        assert_eq!(
            Database::from_locator(Some("sqlite:///tmp/x.db"), default),
            Database::Sqlite(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(
            Database::from_locator(Some("postgresql://h/db"), default),
            Database::Postgres("postgresql://h/db".into())
        );
    }

    #[test]
    fn description_hides_password() {
        let database = Database::Postgres("postgres://ward:hunter2@db.internal:5432/ward".into());
        let text = database.describe();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("'ward'"), "{text}");
        assert!(text.contains("db.internal"), "{text}");
    }
}
