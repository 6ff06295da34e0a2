//! CLI glue for the server: `serve`, `token`, `pull`, and the `--remote` forms of push,
//! ls, show, query and compare.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::output::{human_bytes, Out};
use crate::db::{self, Db};
use crate::refname::RefName;
use crate::server::client::Client;
use crate::server::{self, AppState, Limits};

pub const SERVE_HELP: &str =
    "Serves the store over HTTP: a JSON API under /v1 (schema/openapi.json). Reads are
open unless --private; writes need a token (`vdna-db token create --scope push`, made
while the server is stopped: the server owns the store). Logs go to stderr
(RUST_LOG=debug for more). SIGTERM or Ctrl-C stops accepting and finishes in-flight
requests.

Examples:
  vdna-db serve --addr 127.0.0.1:8080
  vdna-db --remote http://127.0.0.1:8080 --token $TOKEN push photos/ --name photos:v1
  vdna-db --remote http://127.0.0.1:8080 query photos:v1 --top 5";

#[derive(Args, Debug)]
#[command(after_help = SERVE_HELP)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Require a token for reads too
    #[arg(long)]
    pub private: bool,
    /// Largest request body in bytes
    #[arg(long, default_value_t = 256 << 20)]
    pub max_body: usize,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Requests handled at once (others wait)
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

pub fn run_serve(db: Db, out: &mut Out, a: ServeArgs) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let state = Arc::new(AppState::new(
        db,
        a.private,
        Limits {
            max_body: a.max_body,
            timeout: std::time::Duration::from_secs(a.timeout),
            concurrency: a.concurrency.max(1),
        },
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let json = out.is_json();
    rt.block_on(server::serve(state, a.addr, |bound| {
        // One line on stdout that scripts (and tests) read to find the port.
        if json {
            println!(
                "{}",
                serde_json::json!({"listening": format!("http://{bound}")})
            );
        } else {
            println!("listening on http://{bound}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }))
    .with_context(|| format!("serving on {}", a.addr))?;
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once and only its hash is kept
    Create {
        /// push: store DNAs and set refs; admin: also delete refs
        #[arg(long, value_parser = ["push", "admin"], default_value = "push")]
        scope: String,
        /// A note to recognise it by
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List tokens (ids, scopes, labels; never secrets)
    Ls,
    /// Revoke a token by id
    Revoke { id: String },
}

pub fn run_token(db: &Db, out: &mut Out, t: TokenCommand) -> Result<()> {
    match t {
        TokenCommand::Create { scope, label } => {
            let (secret, rec) = server::new_token(&scope, &label)?;
            db.catalogue().put_token(&rec)?;
            out.json(&serde_json::json!({"id": rec.id, "scope": rec.scope, "token": secret}))?;
            out.line(&format!(
                "token {} ({}): {secret}\nkeep it now: only its hash is stored",
                rec.id, rec.scope
            ))?;
        }
        TokenCommand::Ls => {
            let toks = db.catalogue().tokens()?;
            out.json(
                &toks
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "scope": t.scope, "label": t.label, "created": t.created}))
                    .collect::<Vec<_>>(),
            )?;
            out.table(
                &["ID", "SCOPE", "LABEL"],
                toks.iter()
                    .map(|t| vec![t.id.clone(), t.scope.clone(), t.label.clone()])
                    .collect(),
            )?;
        }
        TokenCommand::Revoke { id } => {
            if !db.catalogue().remove_token(&id)? {
                bail!("no token {id} (list them with vdna-db token ls)");
            }
            out.line(&format!("revoked {id}"))?;
            out.json(&serde_json::json!({"revoked": id}))?;
        }
    }
    Ok(())
}

pub fn client(remote: &str, token: &Option<String>) -> Client {
    Client::new(remote, token.clone())
}

/// Pushes DNA objects to a server and reports what moved.
pub fn push_remote(
    out: &mut Out,
    c: &Client,
    objects: &[(crate::format::Digest, Vec<u8>)],
    name: &RefName,
    ann: &BTreeMap<String, String>,
) -> Result<()> {
    let s = c.push_objects(objects, name, ann)?;
    out.json(&s)?;
    out.line(&format!(
        "pushed {} as {} ({} objects uploaded, {}; {} already on the server)",
        s.digest.short(),
        s.reference,
        s.uploaded,
        human_bytes(s.uploaded_bytes),
        s.skipped
    ))?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The server's name[:tag]
    pub reference: String,
    /// Local name [default: the same]
    #[arg(long, short)]
    pub name: Option<String>,
}

pub fn run_pull(db: &Db, out: &mut Out, c: &Client, a: PullArgs) -> Result<()> {
    let remote_name = RefName::parse(&a.reference)?;
    let local = match &a.name {
        Some(n) => RefName::parse(n)?,
        None => remote_name.clone(),
    };
    let bundle = c.pull(&remote_name.to_string())?;
    let bytes: u64 = bundle.objects.iter().map(|o| o.1.len() as u64).sum();
    let ann = bundle.annotations.clone();
    let r = db.push_bundle(&bundle, Some(&local), ann)?;
    crate::query::index_pushed(db, &r.digest)?;
    out.json(&r)?;
    out.line(&format!(
        "pulled {remote_name} as {local} ({}, {} objects, {} new locally, {})",
        r.digest.short(),
        bundle.objects.len(),
        r.new_objects,
        human_bytes(bytes)
    ))?;
    Ok(())
}

/// A DNA named on the command line for a remote query: a local file or image source
/// becomes a bundle to upload; anything else is a ref on the server.
pub enum RemoteInput {
    Bundle(Vec<u8>),
    Ref(String),
}

pub fn remote_input(
    spec: &str,
    load: impl FnOnce(&Path) -> Result<crate::dna::Dna>,
) -> Result<RemoteInput> {
    let p = PathBuf::from(spec);
    if p.exists() || crate::reference::looks_like_pair(&p) {
        let dna = load(&p)?;
        return Ok(RemoteInput::Bundle(db::bundle_of(
            &dna,
            &BTreeMap::new(),
            3,
        )));
    }
    Ok(RemoteInput::Ref(spec.to_string()))
}
