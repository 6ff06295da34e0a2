//! The HTTP server: a JSON API under `/v1` over one store (the server owns it: sled admits
//! one process), token auth for writes, request limits, structured logs with request ids,
//! and graceful shutdown. The OpenAPI document is `schema/openapi.json`; a test checks it
//! against [`paths`].
//!
//! Transfers are OCI-style: objects are content-addressed blobs (`HEAD` tells whether the
//! server has one, `PUT` verifies the digest on receipt), and a DNA is committed by setting
//! a ref to a manifest whose objects are all present; the server re-verifies every object
//! and validates every layer before the commit, so nothing half-uploaded is ever named.
//!
//! Owns: everything HTTP. Must not: contain application or storage logic (that is the `Engine`'s).

mod api;
pub mod client;
pub mod error;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::format::Digest;
use crate::Engine;
pub use error::ApiError;

/// Every route, one constant each, so the OpenAPI drift test can enumerate them.
pub mod paths {
    pub const HEALTH: &str = "/v1/health";
    pub const BLOB: &str = "/v1/blobs/{digest}";
    pub const MANIFEST: &str = "/v1/manifests/{digest}";
    pub const REFS: &str = "/v1/refs";
    pub const REF: &str = "/v1/refs/{*name}";
    pub const DATASETS: &str = "/v1/datasets";
    pub const DATASET: &str = "/v1/datasets/{*name}";
    pub const COMPARE: &str = "/v1/compare";
    pub const QUERY: &str = "/v1/query";
    pub const QUERY_BUNDLE: &str = "/v1/query/bundle";
    pub const MASKS: &str = "/v1/masks";
    pub const SPACES: &str = "/v1/spaces";
    pub const TOKENS: &str = "/v1/admin/tokens";
    pub const TOKEN: &str = "/v1/admin/tokens/{id}";
    pub const GC: &str = "/v1/admin/gc";
    pub const VERIFY: &str = "/v1/admin/verify";
    pub const REINDEX: &str = "/v1/admin/reindex";
    pub const CARD: &str = "/v1/cards/{*name}";
    /// `(method, path)` of every operation.
    pub const ALL: &[(&str, &str)] = &[
        ("get", HEALTH),
        ("head", BLOB),
        ("get", BLOB),
        ("put", BLOB),
        ("get", MANIFEST),
        ("get", REFS),
        ("get", REF),
        ("put", REF),
        ("delete", REF),
        ("get", CARD),
        ("put", CARD),
        ("delete", CARD),
        ("get", DATASETS),
        ("get", DATASET),
        ("post", COMPARE),
        ("post", QUERY),
        ("post", QUERY_BUNDLE),
        ("get", MASKS),
        ("get", SPACES),
        ("get", TOKENS),
        ("post", TOKENS),
        ("delete", TOKEN),
        ("post", GC),
        ("post", VERIFY),
        ("post", REINDEX),
    ];
    /// Operations that need an admin token.
    pub const ADMIN: &[(&str, &str)] = &[
        ("get", TOKENS),
        ("post", TOKENS),
        ("delete", TOKEN),
        ("post", GC),
        ("post", VERIFY),
        ("post", REINDEX),
    ];
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, streamed or not.
    pub max_body: usize,
    pub timeout: Duration,
    /// Requests handled at once; more wait.
    pub concurrency: usize,
    /// Images one web query may upload to be extracted here (0: image uploads are off).
    pub upload_images: usize,
    /// Bytes of files one web query may upload (images, a zip, a reference pair).
    pub upload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 256 << 20,
            timeout: Duration::from_secs(120),
            concurrency: 64,
            upload_images: 64,
            upload_bytes: 64 << 20,
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    pub engine: Engine,
    /// Reads need a token too.
    pub private: bool,
    pub limits: Limits,
    /// Queries and comparisons each use every core (rayon); running more of them at once
    /// than there are cores only multiplies memory and tail latency, so they queue here
    /// (first come, first served).
    pub heavy: tokio::sync::Semaphore,
}

impl AppState {
    pub fn new(engine: impl Into<Engine>, private: bool, limits: Limits) -> AppState {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AppState {
            engine: engine.into(),
            private,
            limits,
            heavy: tokio::sync::Semaphore::new(cores),
        }
    }
}

/// What a request may do, from its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Anonymous,
    Push,
    Admin,
}

pub use crate::token::{new_token, token_hash};

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &Digest, b: &Digest) -> bool {
    a.0.iter()
        .zip(b.0.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl AppState {
    /// The access a bearer token grants; every stored hash is compared in constant time.
    fn access(&self, bearer: Option<&str>) -> Result<Access, ApiError> {
        let Some(secret) = bearer else {
            return Ok(Access::Anonymous);
        };
        let h = token_hash(secret);
        let find = |tokens: &[crate::engine::TokenRecord]| {
            let mut found = None;
            for t in tokens {
                if ct_eq(&t.hash, &h) {
                    found = Some(if t.scope == "admin" {
                        Access::Admin
                    } else {
                        Access::Push
                    });
                }
            }
            found
        };
        let mut found = find(&self.engine.tokens().map_err(ApiError::from)?);
        if found.is_none() {
            // A token created through another process sharing the store (a replica, a
            // CLI) a moment ago works here at once.
            self.engine.sync().map_err(ApiError::from)?;
            found = find(&self.engine.tokens().map_err(ApiError::from)?);
        }
        found.ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))
    }
}

/// Request extension: the caller's access.
#[derive(Clone, Copy, Debug)]
pub struct Caller(pub Access);

async fn auth(
    State(st): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let st2 = st.clone();
    let access = tokio::task::spawn_blocking(move || st2.access(bearer.as_deref()))
        .await
        .map_err(ApiError::internal)??;
    if st.private && access == Access::Anonymous && req.uri().path() != paths::HEALTH {
        return Err(ApiError::unauthorized(
            "this server is private: send Authorization: Bearer <token>",
        ));
    }
    req.extensions_mut().insert(Caller(access));
    Ok(next.run(req).await)
}

async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such endpoint (see /v1 in schema/openapi.json)",
    )
}

/// The application: every route, auth, limits, request ids and tracing.
pub fn app(state: Arc<AppState>) -> Router {
    let limits = state.limits.clone();
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route(paths::HEALTH, get(api::health))
        .route(
            paths::BLOB,
            get(api::get_blob).head(api::head_blob).put(api::put_blob),
        )
        .route(paths::MANIFEST, get(api::manifest))
        .route(paths::REFS, get(api::list_refs))
        .route(
            paths::REF,
            get(api::get_ref).put(api::put_ref).delete(api::delete_ref),
        )
        .route(
            paths::CARD,
            get(api::get_card).put(api::put_card).delete(api::delete_card),
        )
        .route(paths::DATASETS, get(api::datasets))
        .route(paths::DATASET, get(api::dataset))
        .route(paths::COMPARE, post(api::compare))
        .route(paths::QUERY, post(api::query))
        .route(paths::QUERY_BUNDLE, post(api::query_bundle))
        .route(paths::MASKS, get(api::masks))
        .route(paths::SPACES, get(api::spaces))
        .route(paths::TOKENS, get(api::tokens).post(api::create_token))
        .route(paths::TOKEN, delete(api::revoke_token))
        .route(paths::GC, post(api::gc))
        .route(paths::VERIFY, post(api::verify))
        .route(paths::REINDEX, post(api::reindex))
        .route("/", get(web::catalogue))
        .route("/d/{*name}", get(web::dataset))
        .route("/compare", get(web::compare))
        .route("/plot/neuron.svg", get(web::neuron_plot))
        .route("/layer", get(web::layer_page))
        .route("/docs", get(web::api_docs))
        .route("/openapi.json", get(web::openapi_json))
        .route("/query", get(web::query_page))
        .route("/query/upload", post(web::query_upload))
        .route("/query/files", post(web::query_files))
        .route("/favicon.ico", get(web::favicon))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(tower::limit::ConcurrencyLimitLayer::new(limits.concurrency))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // Never the headers: the Authorization header holds a secret.
                tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Serves `state` on `addr` until SIGTERM or Ctrl-C; in-flight requests finish first.
/// `ready` receives the bound address (port 0 picks a free one).
pub async fn serve(
    state: Arc<AppState>,
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
