//! `ward import`: loading FHIR Bundles and NDJSON files.

use anyhow::{Result, bail};

use crate::cli::ImportArgs;

/// Runs an import.
pub fn run(_args: ImportArgs) -> Result<()> {
    bail!("import is not available yet")
}
