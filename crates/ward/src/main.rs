//! `ward`: the operator binary. It serves the FHIR API over HTTPS, prints
//! the CA certificate, mints access tokens, imports FHIR data, migrates
//! PostgreSQL databases and verifies the audit log.

mod admin_audit;
mod audit;
mod backup;
mod cli;
mod client;
mod config;
mod demo;
mod device;
mod import;
mod keys;
mod migrate;
mod org;
mod serve;
mod user;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Ca(args) => device::run_ca(args),
        Command::Token(args) => serve::print_token(args),
        Command::Import(args) => import::run(args),
        Command::User(args) => user::run(args),
        Command::Device(args) => device::run(args),
        Command::Client(args) => client::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Keys(args) => serve::run_keys(args),
        Command::Backup(args) => backup::run_backup(&args),
        Command::Restore(args) => backup::run_restore(&args),
        Command::Org(args) => org::run(args),
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
