//! `ward migrate`: brings a PostgreSQL database's schema up to date before
//! servers of a newer build start on it. SQLite databases need no separate
//! step: `ward serve` migrates them when it opens them.

use anyhow::{Context, Result};
use ward_store::{Database, PostgresStore};

use crate::cli::{MigrateArgs, ServeArgs};
use crate::config::resolve;

/// Runs the migrations of the configured database.
pub fn run(args: MigrateArgs) -> Result<()> {
    let serve_args = ServeArgs {
        data: args.data.clone(),
        database: args.database.clone(),
        ..ServeArgs::default()
    };
    let settings = resolve(&serve_args)?;
    match &settings.store {
        Database::Sqlite(path) => {
            println!(
                "{} is a SQLite database: ward serve migrates it when it opens it",
                path.display()
            );
        }
        Database::Postgres(url) => {
            let report = PostgresStore::migrate(url)
                .with_context(|| format!("migrating the {}", settings.store.describe()))?;
            if report.from == report.to {
                println!("schema version {} is current; nothing to do", report.to);
            } else {
                println!(
                    "migrated the schema from version {} to {}",
                    report.from, report.to
                );
            }
        }
    }
    Ok(())
}
