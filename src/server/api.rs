//! The `/v1` handlers. Each parses and checks its input, runs the store work on the
//! blocking pool and maps the result; the application logic is the `Engine`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Access, ApiError, AppState, Caller};
use crate::distance::Metric;
use crate::engine::AnyDna;
use crate::engine::{Comparison, QueryRequest, QueryResult};
use crate::format::Digest;
use crate::protocol::{
    CompareBody, GcBody, QueryBody, QueryParams, ReindexBody, SetRef, TokenCreate, TokenCreated,
    TokenInfo, VerifyBody,
};
use crate::refname::RefName;
use crate::Engine;

type Res<T> = Result<T, ApiError>;

/// Runs a query or comparison on the blocking pool once a core is free.
async fn heavy<T: Send + 'static>(
    st: &Arc<AppState>,
    f: impl FnOnce(&Engine) -> Res<T> + Send + 'static,
) -> Res<T> {
    let _permit = st.heavy.acquire().await.map_err(ApiError::internal)?;
    blocking(st, f).await
}

/// Runs store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    st: &Arc<AppState>,
    f: impl FnOnce(&Engine) -> Res<T> + Send + 'static,
) -> Res<T> {
    let st = st.clone();
    tokio::task::spawn_blocking(move || f(&st.engine))
        .await
        .map_err(ApiError::internal)?
}

fn need(caller: Caller, level: Access) -> Res<()> {
    match (caller.0, level) {
        (Access::Anonymous, _) => Err(ApiError::unauthorized(
            "writing needs a token: send Authorization: Bearer <token> (vdna-db token create)",
        )),
        (Access::Push, Access::Admin) => Err(ApiError::forbidden("this needs an admin token")),
        _ => Ok(()),
    }
}

fn digest(s: &str) -> Res<Digest> {
    s.parse::<Digest>().map_err(|_| {
        ApiError::bad_request(format!(
            "{s:?} is not a digest (expected sha256:<64 hex digits>)"
        ))
    })
}

/// The longest ref or DNA spec the API takes (schema/openapi.json: `maxLength`).
pub const MAX_SPEC_LEN: usize = 255;
/// The largest `offset` of a listing (schema/openapi.json: `maximum`).
pub const MAX_OFFSET: usize = 1_000_000_000;
/// The most neurons a comparison lists (`top_neurons`).
pub const MAX_TOP_NEURONS: usize = 1000;
/// The longest grace period `gc` takes, in seconds (100 years).
pub const MAX_GRACE_SECS: u64 = 3_153_600_000;

fn too_long(what: &str, s: &str) -> Res<()> {
    if s.len() > MAX_SPEC_LEN {
        return Err(ApiError::bad_request(format!(
            "{what} is {} characters long; at most {MAX_SPEC_LEN}",
            s.len()
        )));
    }
    Ok(())
}

/// A ref name (`name[:tag]`) as schema/openapi.json's `RefName` allows it.
fn refname(s: &str) -> Res<RefName> {
    too_long("the ref", s)?;
    RefName::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A DNA named by a ref, a digest or a digest prefix of 8+ hex digits (`DnaSpec`).
fn spec(what: &str, s: &str) -> Res<String> {
    too_long(what, s)?;
    let is_digest = s
        .strip_prefix("sha256:")
        .is_some_and(|h| (8..=64).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !is_digest {
        RefName::parse(s).map_err(|e| {
            ApiError::bad_request(format!(
                "{what}: not a ref name, a digest or a digest prefix of 8+ hex digits ({e})"
            ))
        })?;
    }
    Ok(s.to_string())
}

/// JSON Schema counts `5.0` as an integer; serde does not. Numbers with no fractional part
/// that fit a u64 or i64 become integers, so `"k": 5.0` means `"k": 5` as the document says.
fn integral_floats_as_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
                *v = Value::from(f as u64);
            } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

/// Parses a JSON body that must be an object, refusing anything else with a JSON 400
/// (not axum's plain-text rejection; serde alone would take `[]` for a struct).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Res<T> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    integral_floats_as_integers(&mut v);
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "request body: expected a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

fn parse_query<T>(q: Result<Query<T>, QueryRejection>) -> Res<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
}

fn metric(m: &Option<String>) -> Res<Option<Metric>> {
    m.as_deref()
        .map(|s| {
            Metric::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("metric {s:?}: use emd, nfd or fd")))
        })
        .transpose()
}

pub async fn health(State(st): State<Arc<AppState>>) -> Res<Json<Value>> {
    let n = blocking(&st, |db| Ok(db.refs()?.len())).await?;
    Ok(Json(
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "refs": n}),
    ))
}

pub async fn head_blob(State(st): State<Arc<AppState>>, Path(d): Path<String>) -> Res<Response> {
    let d = digest(&d)?;
    let size = blocking(&st, move |db| Ok(db.object_size(&d)?)).await?;
    Ok(match size {
        Some(n) => (StatusCode::OK, [(header::CONTENT_LENGTH, n.to_string())]).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

pub async fn get_blob(State(st): State<Arc<AppState>>, Path(d): Path<String>) -> Res<Response> {
    let d = digest(&d)?;
    let bytes = blocking(&st, move |db| {
        db.object_encoded(&d)?
            .ok_or_else(|| ApiError::not_found(format!("no blob {d}")))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

pub async fn put_blob(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(d): Path<String>,
    body: Body,
) -> Res<Response> {
    need(caller, Access::Push)?;
    let d = digest(&d)?;
    // The limit holds for streamed bodies too: reading stops past it.
    let bytes = axum::body::to_bytes(body, st.limits.max_body)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("blob over the {}-byte limit", st.limits.max_body),
            )
        })?;
    let created = blocking(&st, move |db| {
        db.put_uploaded_object(&d, &bytes).map_err(|e| match e {
            crate::Error::Invalid(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "digest_mismatch", m)
            }
            // Bytes that are not an encoded object at all: a malformed body.
            crate::Error::Format(f) => ApiError::bad_request(format!("request body: {f}")),
            other => other.into(),
        })
    })
    .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"digest": d, "created": created}))).into_response())
}

/// A manifest decoded and checked against its digest, with its space config.
pub async fn manifest(State(st): State<Arc<AppState>>, Path(d): Path<String>) -> Res<Json<Value>> {
    let d = digest(&d)?;
    blocking(&st, move |db| {
        let b = db.bundle_from_store(&d)?;
        Ok(Json(
            json!({"digest": d, "manifest": b.manifest, "space": b.space}),
        ))
    })
    .await
}

fn ref_json(n: &RefName, r: &crate::engine::RefRecord) -> Value {
    json!({"ref": n.to_string(), "digest": r.digest, "created": r.created, "annotations": r.annotations})
}

pub async fn list_refs(State(st): State<Arc<AppState>>) -> Res<Json<Value>> {
    blocking(&st, |db| {
        let refs = db.refs()?;
        Ok(Json(Value::Array(
            refs.iter().map(|(n, r)| ref_json(n, r)).collect(),
        )))
    })
    .await
}

pub async fn get_ref(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Res<Json<Value>> {
    let n = refname(&name)?;
    blocking(&st, move |db| match db.get_ref(&n)? {
        Some(r) => Ok(Json(ref_json(&n, &r))),
        None => Err(ApiError::not_found(format!("no ref {n}"))),
    })
    .await
}

pub async fn put_ref(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Res<Response> {
    need(caller, Access::Push)?;
    let body: SetRef = parse_json(&body)?;
    let n = refname(&name)?;
    let d = digest(&body.digest)?;
    let report = blocking(&st, move |db| {
        db.commit_uploaded(&d, Some(&n), body.annotations)
            .map_err(Into::into)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(report)).into_response())
}

pub async fn delete_ref(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Res<Json<Value>> {
    need(caller, Access::Admin)?;
    let n = refname(&name)?;
    blocking(&st, move |db| {
        let (name, d) = db.remove(&n.to_string())?;
        Ok(Json(json!({"removed": name.to_string(), "digest": d})))
    })
    .await
}

#[derive(Deserialize)]
pub struct DatasetQuery {
    /// Text to find in names, annotations and cards (case-insensitive).
    q: Option<String>,
    /// Space digest or a prefix of it.
    space: Option<String>,
    /// Annotation filters, `key=value`, comma-separated; all must hold.
    filter: Option<String>,
    /// name, images, date, size or distance (with `to`).
    sort: Option<String>,
    /// asc or desc; each key has its natural order (name asc, distance asc, the rest desc).
    order: Option<String>,
    /// The entry distances are measured from, for sort=distance.
    to: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// The `browse` request of a dataset listing's query parameters (shared with the web
/// catalogue).
pub fn browse_request(
    q: Option<String>,
    space: Option<String>,
    filter: Option<&str>,
    sort: Option<&str>,
    order: Option<&str>,
    to: Option<String>,
) -> Res<crate::engine::Browse> {
    let sort = match sort.filter(|s| !s.is_empty()) {
        Some(s) => {
            crate::engine::SortKey::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        None => Default::default(),
    };
    let reverse = match order.filter(|s| !s.is_empty()) {
        None => false,
        Some("asc") => sort.descending_by_default(),
        Some("desc") => !sort.descending_by_default(),
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order {o:?}: give asc or desc"
            )))
        }
    };
    // key=value pairs joined by commas, as schema/openapi.json's pattern has it.
    let mut filters = BTreeMap::new();
    for f in filter
        .unwrap_or("")
        .split(',')
        .filter(|_| !filter.unwrap_or("").is_empty())
    {
        match f.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                filters.insert(k.trim().to_string(), v.trim().to_string());
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "filter {f:?}: give key=value pairs separated by commas"
                )))
            }
        }
    }
    if let Some(t) = &to {
        too_long("to", t)?;
    }
    if sort == crate::engine::SortKey::Distance && to.as_deref().is_none_or(str::is_empty) {
        // Each parameter is well-formed; together they ask for what cannot be done.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "sort=distance needs to=REF: the entry distances are measured from",
        ));
    }
    Ok(crate::engine::Browse {
        q,
        space,
        filters,
        sort,
        reverse,
        to: to.filter(|t| !t.is_empty()),
        offset: 0,
        limit: 50,
    })
}

pub async fn datasets(
    State(st): State<Arc<AppState>>,
    p: Result<Query<DatasetQuery>, QueryRejection>,
) -> Res<Json<Value>> {
    let p = parse_query(p)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit}: give 1 to 1000 (page with offset)"
        )));
    }
    if p.offset > MAX_OFFSET {
        return Err(ApiError::bad_request(format!(
            "offset {}: at most {MAX_OFFSET}",
            p.offset
        )));
    }
    for (what, v) in [("q", &p.q), ("space", &p.space)] {
        if let Some(v) = v {
            too_long(what, v)?;
        }
    }
    if p.filter.as_ref().is_some_and(|f| f.len() > 4096) {
        return Err(ApiError::bad_request("filter: at most 4096 characters"));
    }
    // The API takes `to` only as a DNA spec; the web form sends it empty when unused.
    let to = p.to.map(|t| spec("to", &t)).transpose()?;
    let mut b = browse_request(
        p.q,
        p.space,
        p.filter.as_deref(),
        p.sort.as_deref(),
        p.order.as_deref(),
        to,
    )?;
    b.offset = p.offset;
    b.limit = limit;
    blocking(&st, move |db| {
        Ok(Json(
            serde_json::to_value(db.browse(&b)?).map_err(ApiError::internal)?,
        ))
    })
    .await
}

/// A ref's card as the API answers it: the markdown and its parsed fields.
fn card_json(n: &RefName, c: &crate::card::CardRecord) -> Value {
    let parsed = crate::card::parse(&c.markdown).unwrap_or_default();
    json!({
        "ref": n.to_string(),
        "markdown": c.markdown,
        "updated": c.updated,
        "title": parsed.title,
        "source": parsed.source,
        "license": parsed.license,
        "citation": parsed.citation,
        "tags": parsed.tags,
    })
}

pub async fn get_card(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Res<Json<Value>> {
    let n = refname(&name)?;
    blocking(&st, move |db| match db.card(&n)? {
        Some(c) => Ok(Json(card_json(&n, &c))),
        None => Err(ApiError::not_found(format!(
            "{n} has no card (set one with PUT /v1/cards/{n} or vdna-db card set)"
        ))),
    })
    .await
}

pub async fn put_card(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Res<Json<Value>> {
    need(caller, Access::Push)?;
    let body: crate::protocol::SetCard = parse_json(&body)?;
    let n = refname(&name)?;
    blocking(&st, move |db| {
        db.set_card(&n.to_string(), &body.markdown)?;
        let c = db
            .card(&n)?
            .ok_or_else(|| ApiError::internal("a card just set is not there"))?;
        Ok(Json(card_json(&n, &c)))
    })
    .await
}

pub async fn delete_card(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Res<Json<Value>> {
    need(caller, Access::Push)?;
    let n = refname(&name)?;
    blocking(&st, move |db| {
        if !db.remove_card(&n.to_string())? {
            return Err(ApiError::not_found(format!("{n} has no card")));
        }
        Ok(Json(json!({"ref": n.to_string(), "removed": true})))
    })
    .await
}

pub async fn dataset(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Res<Json<Value>> {
    let name = spec("the dataset", &name)?;
    blocking(&st, move |db| {
        let (d, n) = db.resolve(&name)?;
        let stored = db.open_dna(&d)?;
        let ann = db.annotations(n.as_ref())?;
        let rec = db.dna_record(&d)?;
        let card = match &n {
            Some(n) => db.card(n)?.map(|c| card_json(n, &c)),
            None => None,
        };
        Ok(Json(json!({
            "ref": n.map(|n| n.to_string()),
            "digest": d,
            "space_digest": stored.manifest.space,
            "space": stored.space,
            "images": stored.manifest.images,
            "dist": stored.manifest.dist,
            "layers": stored.manifest.layers,
            "stored_bytes": rec.as_ref().map(|r| r.stored_bytes),
            "raw_bytes": rec.as_ref().map(|r| r.raw_bytes),
            "annotations": ann,
            "card": card,
        })))
    })
    .await
}

pub async fn compare(State(st): State<Arc<AppState>>, body: Bytes) -> Res<Json<Comparison>> {
    let b: CompareBody = parse_json(&body)?;
    let m = metric(&b.metric)?;
    spec("a", &b.a)?;
    spec("b", &b.b)?;
    if b.top_neurons > MAX_TOP_NEURONS {
        return Err(ApiError::bad_request(format!(
            "top_neurons {}: at most {MAX_TOP_NEURONS}",
            b.top_neurons
        )));
    }
    heavy(&st, move |db| {
        let open = |s: &str| -> Res<AnyDna> {
            let (d, _) = db.resolve(s)?;
            Ok(AnyDna::Stored(db.open_dna(&d)?))
        };
        let (x, y) = (open(&b.a)?, open(&b.b)?);
        Ok(Json(db.compare(&x, &y, &b.mask, m, b.top_neurons)?))
    })
    .await
}

fn request(q: &QueryBody) -> Res<QueryRequest> {
    if let Some(t) = &q.tag {
        if !crate::refname::is_valid_tag(t) {
            return Err(ApiError::bad_request(format!(
                "tag {t:?}: 1-128 of A-Z a-z 0-9 _ . -, not starting with . or -"
            )));
        }
    }
    q.to_request().map_err(ApiError::bad_request)
}

pub async fn query(State(st): State<Arc<AppState>>, body: Bytes) -> Res<Json<QueryResult>> {
    let q: QueryBody = parse_json(&body)?;
    let req = request(&q)?;
    let Some(spec) = q.reference.as_deref().map(|r| spec("ref", r)).transpose()? else {
        return Err(ApiError::bad_request(
            "give \"ref\" (a stored name or digest), or POST a .vdna bundle to /v1/query/bundle",
        ));
    };
    heavy(&st, move |db| {
        let (d, _) = db.resolve(&spec)?;
        let dna = AnyDna::Stored(db.open_dna(&d)?);
        Ok(Json(db.query(&dna, &req)?))
    })
    .await
}

pub async fn query_bundle(
    State(st): State<Arc<AppState>>,
    q: Result<Query<QueryParams>, QueryRejection>,
    body: Bytes,
) -> Res<Json<QueryResult>> {
    let q = parse_query(q)?.into_body().map_err(ApiError::bad_request)?;
    let req = request(&q)?;
    heavy(&st, move |db| {
        let (dna, _) = crate::engine::dna_of_bundle_bytes(&body).map_err(|e| {
            ApiError::bad_request(format!("request body is not a valid .vdna bundle: {e}"))
        })?;
        Ok(Json(db.query(&AnyDna::Owned(dna), &req)?))
    })
    .await
}

pub async fn masks(State(st): State<Arc<AppState>>) -> Res<Json<Value>> {
    blocking(&st, |db| {
        Ok(Json(Value::Array(
            db.masks()?
                .into_iter()
                .map(|(n, s)| json!({"name": n, "spec": s}))
                .collect(),
        )))
    })
    .await
}

pub async fn spaces(State(st): State<Arc<AppState>>) -> Res<Json<Value>> {
    blocking(&st, |db| {
        Ok(Json(Value::Array(
            db.spaces()?
                .into_iter()
                .map(
                    |(d, s)| json!({"digest": d, "description": s.description, "config": s.config}),
                )
                .collect(),
        )))
    })
    .await
}

/// A JSON body, or the type's default when the body is empty.
fn parse_json_or_default<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Res<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(body)
}

pub async fn tokens(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Res<Json<Vec<TokenInfo>>> {
    need(caller, Access::Admin)?;
    blocking(&st, |db| {
        Ok(Json(
            db.tokens()?.into_iter().map(TokenInfo::from).collect(),
        ))
    })
    .await
}

pub async fn create_token(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Res<Response> {
    need(caller, Access::Admin)?;
    let b: TokenCreate = parse_json(&body)?;
    if b.scope != "push" && b.scope != "admin" {
        return Err(ApiError::bad_request(format!(
            "scope {:?}: push or admin",
            b.scope
        )));
    }
    let created = blocking(&st, move |db| {
        let (token, rec) = db.create_token(&b.scope, &b.label)?;
        Ok(TokenCreated {
            id: rec.id,
            scope: rec.scope,
            label: rec.label,
            token,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn revoke_token(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Res<Json<Value>> {
    need(caller, Access::Admin)?;
    blocking(&st, move |db| {
        db.revoke_token(&id)?;
        Ok(Json(json!({ "revoked": id })))
    })
    .await
}

pub async fn gc(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Res<Json<crate::engine::GcReport>> {
    need(caller, Access::Admin)?;
    let b: GcBody = parse_json_or_default(&body)?;
    if b.grace_secs.is_some_and(|g| g > MAX_GRACE_SECS) {
        return Err(ApiError::bad_request(format!(
            "grace_secs: at most {MAX_GRACE_SECS}"
        )));
    }
    blocking(&st, move |db| {
        Ok(Json(
            db.gc(b.grace_secs.map(std::time::Duration::from_secs))?,
        ))
    })
    .await
}

pub async fn verify(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Res<Json<crate::engine::VerifyOutcome>> {
    need(caller, Access::Admin)?;
    let b: VerifyBody = parse_json_or_default(&body)?;
    heavy(&st, move |db| Ok(Json(db.verify(b.repair)?))).await
}

pub async fn reindex(
    State(st): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Res<Json<crate::engine::ReindexReport>> {
    need(caller, Access::Admin)?;
    let b: ReindexBody = parse_json_or_default(&body)?;
    if b.graphs_min == Some(0) {
        return Err(ApiError::bad_request("graphs_min: at least 1"));
    }
    heavy(&st, move |db| Ok(Json(db.reindex(b.graphs_min)?))).await
}
