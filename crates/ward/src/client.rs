//! `ward client`: registers OAuth clients and lists them. Administrators
//! can also register clients over HTTPS with `POST /admin/clients`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ward_audit::record::{Action, Subtype};
use ward_server::oauth::identity::{self, NewClient};

use crate::admin_audit::record_change;
use crate::user::{StoreArgs, open_store};

/// Options of `ward client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The `ward client` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client; prints the client secret once for a confidential client.
    Add(ClientAddArgs),
    /// List the registered clients.
    List(StoreArgs),
}

/// Options of `ward client add`.
#[derive(Debug, Args)]
pub struct ClientAddArgs {
    /// The data directory and database.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The client_id.
    #[arg(long)]
    pub id: String,
    /// A redirect URI; repeat for several. Loopback http URIs (127.0.0.1, [::1]) match on any port.
    #[arg(long = "redirect-uri")]
    pub redirect_uris: Vec<String>,
    /// A confidential client that authenticates with a generated secret (client_secret_basic).
    #[arg(long)]
    pub confidential: bool,
    /// A JWKS file with the client's public keys: a backend service using private_key_jwt.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// The scopes the client may be granted, space-separated [default: patient and user access for apps, 'system/*.rs' for backend services].
    #[arg(long)]
    pub scope: Option<String>,
    /// The name users see on the consent page [default: the id].
    #[arg(long)]
    pub name: Option<String>,
}

/// Runs `ward client`.
pub fn run(args: ClientArgs) -> Result<()> {
    match args.command {
        ClientCommand::Add(args) => add(&args),
        ClientCommand::List(data) => list(&data),
    }
}

fn add(args: &ClientAddArgs) -> Result<()> {
    let jwks = match &args.jwks {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a JWKS document", path.display()))?,
            )
        }
        None => None,
    };
    let new = NewClient {
        id: args.id.clone(),
        name: args.name.clone(),
        redirect_uris: args.redirect_uris.clone(),
        confidential: args.confidential,
        jwks,
        scope: args.scope.clone(),
    };
    let store = open_store(&args.store)?;
    let (record, secret) = identity::register_client(store.as_ref(), &new)
        .with_context(|| format!("registering the client {}", args.id))?;
    record_change(
        store.as_ref(),
        "client_registered",
        Subtype::SecurityConfiguration,
        Action::Create,
        &[
            ("client", &record.client.client_id),
            ("scope", &record.client.allowed_scope),
        ],
    )?;
    let method = serde_json::to_value(record.client.auth_method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "Registered client {} (token_endpoint_auth_method {method}) with scope '{}'.",
        record.client.client_id, record.client.allowed_scope
    );
    if let Some(secret) = secret {
        println!("Client secret: {}", secret.as_str());
        println!("The secret is shown only now; only its digest is stored.");
    }
    Ok(())
}

fn list(data: &StoreArgs) -> Result<()> {
    let store = open_store(data)?;
    for record in identity::list_clients(store.as_ref())? {
        let method = serde_json::to_value(record.client.auth_method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{}\t{}\t{method}\t{}\tscope: {}",
            record.client.client_id,
            record.name,
            if record.client.redirect_uris.is_empty() {
                "-".to_owned()
            } else {
                record.client.redirect_uris.join(" ")
            },
            record.client.allowed_scope
        );
    }
    Ok(())
}
