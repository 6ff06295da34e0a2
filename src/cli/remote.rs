//! CLI glue for the server: `serve`, `token`, `pull`, and the `--remote` forms of push,
//! ls, show, query and compare.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::output::{human_bytes, Out};
use crate::protocol::{TokenCreate, TokenCreated, TokenInfo};
use crate::refname::RefName;
use crate::server::client::Client;
use crate::server::{self, AppState, Limits};
use crate::Engine;

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
    /// Images a visitor may upload in one web query, extracted here with the chosen
    /// space's network, one core each, queued with the other queries (0 turns image
    /// uploads off)
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub upload_images: usize,
    /// Bytes of files one web query may upload (images, a zip, a reference pair)
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub upload_bytes: usize,
}

/// The file in a store's home where a running `serve` says where it listens, so a local
/// command that finds the store busy can name the `--remote` to use instead.
pub const SERVE_FILE: &str = "serve.json";

/// The URL of the server that owns the store at `home`, when one is running there.
pub fn serving_url(home: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(SERVE_FILE)).ok()?).ok()?;
    let pid = v["pid"].as_u64()?;
    // A file left by a server that was killed names nobody.
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    v["url"].as_str().map(str::to_string)
}

pub fn run_serve(db: Engine, out: &mut Out, a: ServeArgs) -> Result<()> {
    let serve_file = db.home().join(SERVE_FILE);
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
            upload_images: a.upload_images,
            upload_bytes: a.upload_bytes,
        },
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let json = out.is_json();
    let served = rt
        .block_on(server::serve(state, a.addr, |bound| {
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
            let note =
                serde_json::json!({"url": format!("http://{bound}"), "pid": std::process::id()});
            if let Err(e) = crate::fsio::write_file_atomic(&serve_file, note.to_string().as_bytes())
            {
                tracing::warn!("could not write {}: {e}", serve_file.display());
            }
        }))
        .with_context(|| format!("serving on {}", a.addr));
    let _ = std::fs::remove_file(&serve_file);
    served?;
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

pub fn run_token(db: &Engine, out: &mut Out, t: TokenCommand) -> Result<()> {
    match t {
        TokenCommand::Create { scope, label } => {
            let (secret, rec) = db.create_token(&scope, &label)?;
            print_created(
                out,
                &TokenCreated {
                    id: rec.id,
                    scope: rec.scope,
                    label: rec.label,
                    token: secret,
                },
            )?;
        }
        TokenCommand::Ls => {
            let toks: Vec<TokenInfo> = db.tokens()?.into_iter().map(TokenInfo::from).collect();
            print_tokens(out, &toks)?;
        }
        TokenCommand::Revoke { id } => {
            db.revoke_token(&id)?;
            print_revoked(out, &id)?;
        }
    }
    Ok(())
}

/// `token create | ls | revoke --remote URL`: the same, on a server (admin token).
pub fn run_token_remote(c: &Client, out: &mut Out, t: &TokenCommand) -> Result<()> {
    match t {
        TokenCommand::Create { scope, label } => {
            let body = TokenCreate {
                scope: scope.clone(),
                label: label.clone(),
            };
            let v = c.post_json("/v1/admin/tokens", &serde_json::to_value(&body)?)?;
            let created: TokenCreated =
                serde_json::from_value(v).context("reading the server's new token")?;
            print_created(out, &created)?;
        }
        TokenCommand::Ls => {
            let v = c.get_json("/v1/admin/tokens")?;
            let toks: Vec<TokenInfo> =
                serde_json::from_value(v).context("reading the server's token list")?;
            print_tokens(out, &toks)?;
        }
        TokenCommand::Revoke { id } => {
            c.delete_json(&format!(
                "/v1/admin/tokens/{}",
                crate::protocol::urlencode(id)
            ))?;
            print_revoked(out, id)?;
        }
    }
    Ok(())
}

fn print_created(out: &mut Out, t: &TokenCreated) -> Result<()> {
    out.json(&serde_json::json!({"id": t.id, "scope": t.scope, "token": t.token}))?;
    out.line(&format!(
        "token {} ({}): {}\nkeep it now: only its hash is stored",
        t.id, t.scope, t.token
    ))?;
    Ok(())
}

fn print_tokens(out: &mut Out, toks: &[TokenInfo]) -> Result<()> {
    out.json(&toks)?;
    out.table(
        &["ID", "SCOPE", "LABEL"],
        toks.iter()
            .map(|t| vec![t.id.clone(), t.scope.clone(), t.label.clone()])
            .collect(),
    )?;
    Ok(())
}

fn print_revoked(out: &mut Out, id: &str) -> Result<()> {
    out.line(&format!("revoked {id}"))?;
    out.json(&serde_json::json!({"revoked": id}))?;
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

pub fn run_pull(db: &Engine, out: &mut Out, c: &Client, a: PullArgs) -> Result<()> {
    let remote_name = RefName::parse(&a.reference)?;
    let local = match &a.name {
        Some(n) => RefName::parse(n)?,
        None => remote_name.clone(),
    };
    let bundle = c.pull(&remote_name.to_string())?;
    let bytes: u64 = bundle.objects.iter().map(|o| o.1.len() as u64).sum();
    let ann = bundle.annotations.clone();
    let r = db.push_bundle(&bundle, Some(&local), ann)?;
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
