//! The HTTP server: the router through `oneshot` (auth, bad requests, transfers), the
//! OpenAPI document against the routes, and the real binary end to end on loopback.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;
use vdna_db::format::Digest;
use vdna_db::server::{self, AppState, Limits};
use vdna_db::{synth, Db};

use crate::util::{self, root};

fn small_dna(family: usize, member: usize) -> vdna_db::dna::Dna {
    synth::member(&small_spec(), family, member)
}

/// The catalogue `small_dna` draws from: 2 layers of 8 neurons, 16 bins.
fn small_spec() -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed: 5,
        families: 2,
        members: 2,
        layers: synth::uniform_layers(2, 8),
        dist: vdna_db::format::DistKind::Histogram { bins: 16 },
        extractor: "rand_resnet50".into(),
        images: 8,
        positions: 16,
        spread: 1.0,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    push: String,
    admin: String,
}

fn fixture(private: bool, max_body: usize) -> Fixture {
    let dir = util::tmp();
    let db = Db::open(dir.path()).unwrap();
    let (push, rec) = server::new_token("push", "tests").unwrap();
    db.put_token(&rec).unwrap();
    let (admin, rec) = server::new_token("admin", "tests").unwrap();
    db.put_token(&rec).unwrap();
    let state = Arc::new(AppState::new(
        db,
        private,
        Limits {
            max_body,
            ..Default::default()
        },
    ));
    Fixture {
        _dir: dir,
        state,
        push,
        admin,
    }
}

async fn call(
    f: &Fixture,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = server::app(f.state.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn blob_uploads_are_verified_and_need_a_token() {
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        let enc = small_dna(0, 0).encode(3);
        let (d, bytes) = &enc.objects[1];
        let path = format!("/v1/blobs/{d}");
        assert_eq!(
            call(&f, Method::HEAD, &path, None, Body::empty()).await.0,
            StatusCode::NOT_FOUND
        );
        // No token, then a wrong one: refused, nothing stored.
        let (s, b) = call(&f, Method::PUT, &path, None, Body::from(bytes.clone())).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&b), "unauthorized");
        let (s, _) = call(
            &f,
            Method::PUT,
            &path,
            Some("vdna_nope"),
            Body::from(bytes.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(!f.state.engine.db().objects().contains(d).unwrap());
        // Malformed digest; content under another object's digest.
        let (s, _) = call(
            &f,
            Method::PUT,
            "/v1/blobs/sha256:xyz",
            Some(&f.push),
            Body::from(bytes.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let other = &enc.objects[2].0;
        let (s, b) = call(
            &f,
            Method::PUT,
            &format!("/v1/blobs/{other}"),
            Some(&f.push),
            Body::from(bytes.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(error_code(&b), "digest_mismatch");
        assert!(!f.state.engine.db().objects().contains(other).unwrap());
        // Garbage bytes.
        let (s, _) = call(
            &f,
            Method::PUT,
            &path,
            Some(&f.push),
            Body::from(vec![7u8; 100]),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // The real thing, twice.
        let (s, _) = call(
            &f,
            Method::PUT,
            &path,
            Some(&f.push),
            Body::from(bytes.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = call(
            &f,
            Method::PUT,
            &path,
            Some(&f.push),
            Body::from(bytes.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            call(&f, Method::HEAD, &path, None, Body::empty()).await.0,
            StatusCode::OK
        );
        let (s, got) = call(&f, Method::GET, &path, None, Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(&got, bytes);
    });
}

#[test]
fn oversized_bodies_are_refused_streamed_or_not() {
    rt().block_on(async {
        let f = fixture(false, 1000);
        let d = Digest::of(b"x");
        let path = format!("/v1/blobs/{d}");
        let (s, _) = call(
            &f,
            Method::PUT,
            &path,
            Some(&f.push),
            Body::from(vec![0u8; 5000]),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!f.state.engine.db().objects().contains(&d).unwrap());
    });
}

#[test]
fn a_dna_pushed_blob_by_blob_is_committed_queried_and_compared() {
    rt().block_on(async {
        let f = fixture(false, 1 << 24);
        let mut names = Vec::new();
        for (fam, mem) in [(0, 0), (0, 1), (1, 0)] {
            let enc = small_dna(fam, mem).encode(3);
            let name = format!("lab/set-{fam}-{mem}:v1");
            // Setting a ref before the objects exist: 404, nothing named.
            let body = json!({"digest": enc.manifest_digest}).to_string();
            if fam == 0 && mem == 0 {
                let (s, b) = call(
                    &f,
                    Method::PUT,
                    &format!("/v1/refs/{name}"),
                    Some(&f.push),
                    json_body(&body),
                )
                .await;
                assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&b));
                assert!(f.state.engine.db().catalogue().refs().unwrap().is_empty());
            }
            for (d, bytes) in &enc.objects {
                let (s, _) = call(
                    &f,
                    Method::PUT,
                    &format!("/v1/blobs/{d}"),
                    Some(&f.push),
                    Body::from(bytes.clone()),
                )
                .await;
                assert!(s.is_success());
            }
            let body =
                json!({"digest": enc.manifest_digest, "annotations": {"site": format!("s{fam}")}})
                    .to_string();
            let (s, b) = call(
                &f,
                Method::PUT,
                &format!("/v1/refs/{name}"),
                Some(&f.push),
                json_body(&body),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
            names.push(name);
        }
        // The manifest endpoint decodes what was uploaded.
        let last = small_dna(1, 0).encode(3);
        let (s, b) = call(
            &f,
            Method::GET,
            &format!("/v1/manifests/{}", last.manifest_digest),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["manifest"]["layers"].as_array().unwrap().len(), 2);
        assert_eq!(v["manifest"]["images"], 8);
        let (s, b) = call(&f, Method::GET, "/v1/datasets?q=s1", None, Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["total"], 1);
        assert_eq!(v["items"][0]["ref"], "lab/set-1-0:v1");
        let (_, b) = call(
            &f,
            Method::GET,
            "/v1/datasets?limit=2&offset=2",
            None,
            Body::empty(),
        )
        .await;
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (v["total"].as_u64(), v["items"].as_array().unwrap().len()),
            (Some(3), 1)
        );
        // Query by ref: the same family ranks first after the DNA itself.
        let q = json!({"ref": "lab/set-0-0:v1", "k": 3}).to_string();
        let (s, b) = call(&f, Method::POST, "/v1/query", None, json_body(&q)).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        let refs: Vec<&str> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["ref"].as_str().unwrap())
            .collect();
        assert_eq!(
            refs,
            vec!["lab/set-0-0:v1", "lab/set-0-1:v1", "lab/set-1-0:v1"]
        );
        // The same query with an uploaded bundle gives the same ranking and distances.
        let bundle = vdna_db::db::bundle_of(&small_dna(0, 0), &Default::default(), 3);
        let (s, b2) = call(
            &f,
            Method::POST,
            "/v1/query/bundle?k=3",
            None,
            Body::from(bundle),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let v2: Value = serde_json::from_slice(&b2).unwrap();
        assert_eq!(v2["results"], v["results"]);
        // Compare agrees with the query's distance.
        let c = json!({"a": "lab/set-0-0:v1", "b": "lab/set-1-0:v1"}).to_string();
        let (s, b) = call(&f, Method::POST, "/v1/compare", None, json_body(&c)).await;
        assert_eq!(s, StatusCode::OK);
        let cv: Value = serde_json::from_slice(&b).unwrap();
        assert!(
            util::rel(
                cv["distance"].as_f64().unwrap(),
                v["results"][2]["distance"].as_f64().unwrap()
            ) < 1e-12
        );
        // Bad requests: mask, k, metric, bundle, unknown ref.
        for (body, code) in [
            // Well-formed, but no layer of the space matches: 422, as documented.
            (
                json!({"ref": "lab/set-0-0:v1", "mask": "nope_*"}),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            // Outside what the document allows: 400.
            (
                json!({"ref": "lab/set-0-0:v1", "tag": ""}),
                StatusCode::BAD_REQUEST,
            ),
            (json!({"ref": ""}), StatusCode::BAD_REQUEST),
            (json!([]), StatusCode::BAD_REQUEST),
            (
                json!({"ref": "lab/set-0-0:v1", "k": 0}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"ref": "lab/set-0-0:v1", "metric": "cosine"}),
                StatusCode::BAD_REQUEST,
            ),
            (json!({"ref": "lab/none:v9"}), StatusCode::NOT_FOUND),
        ] {
            let (s, b) = call(
                &f,
                Method::POST,
                "/v1/query",
                None,
                json_body(&body.to_string()),
            )
            .await;
            assert_eq!(s, code, "{body}: {}", String::from_utf8_lossy(&b));
            assert!(!error_code(&b).is_empty());
        }
        let (s, _) = call(
            &f,
            Method::POST,
            "/v1/query/bundle",
            None,
            Body::from(b"VDNABDL\0junk".to_vec()),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        // Deleting needs admin.
        let (s, _) = call(
            &f,
            Method::DELETE,
            "/v1/refs/lab/set-1-0:v1",
            Some(&f.push),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = call(
            &f,
            Method::DELETE,
            "/v1/refs/lab/set-1-0:v1",
            Some(&f.admin),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(
            &f,
            Method::GET,
            "/v1/refs/lab/set-1-0:v1",
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    });
}

fn json_body(s: &str) -> Body {
    Body::from(s.to_string())
}

#[test]
fn a_private_server_needs_a_token_to_read() {
    rt().block_on(async {
        let f = fixture(true, 1 << 20);
        let (s, b) = call(&f, Method::GET, "/v1/datasets", None, Body::empty()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(error_code(&b), "unauthorized");
        let (s, _) = call(
            &f,
            Method::GET,
            "/v1/datasets",
            Some(&f.push),
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            call(&f, Method::GET, "/v1/health", None, Body::empty())
                .await
                .0,
            StatusCode::OK
        );
    });
}

/// The OpenAPI document and the router list the same operations.
#[test]
fn openapi_document_matches_the_routes() {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(root().join("schema/openapi.json")).unwrap())
            .unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "post", "delete", "head", "patch"] {
            if item.get(m).is_some() {
                documented.insert((m.to_string(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = server::paths::ALL
        .iter()
        .map(|(m, p)| (m.to_string(), p.replace("{*", "{")))
        .collect();
    assert_eq!(documented, routed);
    // And every documented operation reaches a handler, not the fallback.
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        for (m, p) in &routed {
            let path = p
                .replace("{digest}", &Digest::of(b"probe").to_string())
                .replace("{name}", "probe/x:v1");
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let (_, b) = call(&f, method, &path, Some(&f.admin), Body::from("{}")).await;
            assert_ne!(error_code(&b), "no_route", "{m} {p}");
        }
        let (s, b) = call(&f, Method::GET, "/v1/nothing", None, Body::empty()).await;
        assert_eq!(
            (s, error_code(&b).as_str()),
            (StatusCode::NOT_FOUND, "no_route")
        );
    });
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(home: &std::path::Path, extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vdna-db"));
    cmd.args([
        "--home",
        home.to_str().unwrap(),
        "serve",
        "--addr",
        "127.0.0.1:0",
    ])
    .args(extra);
    spawn_server(cmd)
}

/// Starts a prepared `vdna-db ... serve --addr 127.0.0.1:0` and reads the URL it prints.
pub fn spawn_server(mut cmd: Command) -> Server {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().trim_start_matches("listening on ").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Server { child, url }
}

#[test]
fn cli_pushes_pulls_and_queries_through_a_real_server() {
    let dir = util::tmp();
    let server_home = dir.path().join("server");
    let token = {
        let v = util::json(&server_home, &["token", "create", "--scope", "push"]);
        v["token"].as_str().unwrap().to_string()
    };
    let srv = start_server(&server_home, &[]);
    let client_home = dir.path().join("client");
    let remote = |args: &[&str]| -> Vec<String> {
        let mut v = vec![
            "--remote".to_string(),
            srv.url.clone(),
            "--token".into(),
            token.clone(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        util::run(&client_home, &a)
    };
    let fix = root().join("fixtures/reference");
    let g = fix.join("gradients-histogram-100.json");
    let c = fix.join("checker-histogram-100.json");
    // Without a token: refused.
    let o = util::run(
        &client_home,
        &[
            "--remote",
            &srv.url,
            "push",
            g.to_str().unwrap(),
            "--name",
            "g:v1",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", util::stderr(&o));
    assert!(util::stderr(&o).contains("401"), "{}", util::stderr(&o));
    let o = run(remote(&[
        "push",
        g.to_str().unwrap(),
        "--name",
        "g:v1",
        "--json",
    ]));
    assert!(o.status.success(), "{}", util::stderr(&o));
    let first: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(first["uploaded"], 18); // 16 layers, the space config and the manifest
                                       // Pushing the same DNA under another name moves no blob.
    let o = run(remote(&[
        "push",
        g.to_str().unwrap(),
        "--name",
        "g:v2",
        "--json",
    ]));
    let again: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(
        (again["uploaded"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(18))
    );
    assert!(
        run(remote(&["push", c.to_str().unwrap(), "--name", "c:v1"]))
            .status
            .success()
    );
    // ls and query over the server.
    let o = run(remote(&["ls", "--json"]));
    let rows: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3);
    let o = run(remote(&["query", "c:v1", "--top", "2", "--json"]));
    assert!(o.status.success(), "{}", util::stderr(&o));
    let q: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(q["results"][0]["ref"], "c:v1");
    // The server's distance for (checker, gradients) is the reference library's.
    let o = run(remote(&["compare", "c:v1", "g:v1", "--json"]));
    let cmp: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    let refd: Value = serde_json::from_slice(
        &std::fs::read(root().join("fixtures/reference-distances.json")).unwrap(),
    )
    .unwrap();
    let want = refd["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["dist"] == "histogram-100")
        .unwrap()["all"]
        .as_f64()
        .unwrap();
    assert!(
        util::rel(cmp["distance"].as_f64().unwrap(), want) < 1e-9,
        "{cmp} vs {want}"
    );
    // Pull into the local store: same digest, usable offline.
    let o = run(remote(&["pull", "g:v1", "--json"]));
    assert!(o.status.success(), "{}", util::stderr(&o));
    let local = util::json(&client_home, &["show", "g:v1"]);
    assert_eq!(local["digest"], first["digest"]);
    // A load burst on small DNAs: 32 clients, 64 queries each, no errors, nothing lost.
    let c = vdna_db::server::client::Client::new(&srv.url, Some(token.clone()));
    for (fam, mem) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let name = vdna_db::refname::RefName::parse(&format!("small/s{fam}{mem}:v1")).unwrap();
        c.push_objects(
            &small_dna(fam, mem).encode(3).objects,
            &name,
            &Default::default(),
        )
        .unwrap();
    }
    let url = srv.url.clone();
    let errors = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..32 {
            let (url, errors) = (&url, &errors);
            // 32 clients x 64 queries = 2,048 queries.
            s.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for j in 0..64 {
                    let who = format!("small/s{}{}:v1", (i + j) % 2, j % 2);
                    let r = agent
                        .post(&format!("{url}/v1/query"))
                        .send_json(json!({"ref": who, "k": 2}));
                    match r {
                        Ok(mut r) if r.status() == 200 => {
                            let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                            if v["results"][0]["ref"] != who.as_str() {
                                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        _ => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 0);
    let o = run(remote(&["ls", "--json"]));
    let rows: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 7);
    // SIGTERM: a graceful exit.
    let mut srv = srv;
    let pid = srv.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A chunked body (no Content-Length) over the limit is cut off and nothing is stored.
#[test]
fn a_streamed_body_over_the_limit_is_refused() {
    use std::io::{Read, Write};
    let dir = util::tmp();
    let home = dir.path().join("server");
    let v = util::json(&home, &["token", "create", "--scope", "push"]);
    let token = v["token"].as_str().unwrap().to_string();
    let srv = start_server(&home, &["--max-body", "4096"]);
    let addr = srv.url.trim_start_matches("http://").to_string();
    let d = Digest::of(b"never stored");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "PUT /v1/blobs/{d} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for _ in 0..16 {
        // 1 KiB chunks; the server may stop reading after the limit.
        if s.write_all(format!("400\r\n{}\r\n", "a".repeat(1024)).as_bytes())
            .is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    drop(srv);
    assert!(!Db::open(&home).unwrap().objects().contains(&d).unwrap());
}

/// The web query page takes a bundle as a raw body or as a browser's multipart form.
#[test]
fn web_upload_queries_with_a_bundle_raw_or_multipart() {
    rt().block_on(async {
        let f = fixture(false, 1 << 24);
        let dna = small_dna(1, 1);
        f.state
            .engine
            .push(&small_dna(1, 0), Some(&vdna_db::refname::RefName::parse("lab/b:v1").unwrap()), Default::default())
            .unwrap();
        let bundle = vdna_db::db::bundle_of(&dna, &Default::default(), 3);
        let (s, page) = call(&f, Method::POST, "/query/upload?k=2", None, Body::from(bundle.clone())).await;
        assert_eq!(s, StatusCode::OK);
        assert!(String::from_utf8_lossy(&page).contains("/d/lab/b:v1"));
        let mut form = b"--XyZ\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"m.vdna\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        form.extend_from_slice(&bundle);
        form.extend_from_slice(b"\r\n--XyZ--\r\n");
        let (s, page) = call(&f, Method::POST, "/query/upload?k=2", None, Body::from(form)).await;
        assert_eq!(s, StatusCode::OK);
        assert!(String::from_utf8_lossy(&page).contains("/d/lab/b:v1"));
        let (s, page) = call(&f, Method::POST, "/query/upload", None, Body::from(b"not a bundle".to_vec())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&page).contains("not a valid .vdna bundle"));
    });
}

/// Every write operation of the route table refuses a missing or unknown token, and names
/// or digests that try to leave the store are refused before anything is touched.
#[test]
fn every_write_route_needs_a_token_and_paths_cannot_escape() {
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        let digest = Digest::of(b"probe").to_string();
        let mut writes: Vec<&(&str, &str)> = server::paths::ALL
            .iter()
            .filter(|(m, _)| *m == "put" || *m == "delete")
            .chain(server::paths::ADMIN)
            .collect();
        writes.sort();
        writes.dedup();
        assert_eq!(
            writes.len(),
            11,
            "blob PUT, ref PUT, ref DELETE, card PUT and DELETE, and the 6 admin operations"
        );
        for (m, p) in writes {
            let path = p
                .replace("{digest}", &digest)
                .replace("{*name}", "probe/x:v1")
                .replace("{id}", "0123456789ab");
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            for token in [None, Some("vdna_0000")] {
                let (s, b) = call(&f, method.clone(), &path, token, Body::from("{}")).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {p} with {token:?}");
                assert_eq!(error_code(&b), "unauthorized");
            }
        }
        for path in [
            "/v1/blobs/..%2F..%2Fcatalogue",
            "/v1/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd",
            "/v1/refs/..%2F..%2Fetc:v1",
            "/v1/refs/a/../../b:v1",
            "/v1/datasets/..%2Fsecret",
        ] {
            let (s, _) = call(&f, Method::GET, path, Some(&f.admin), Body::empty()).await;
            assert!(
                s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
                "{path}: {s}"
            );
            let (s, _) = call(&f, Method::PUT, path, Some(&f.admin), Body::from("{}")).await;
            assert!(s.is_client_error(), "{path}: {s}");
        }
        assert!(f.state.engine.db().catalogue().refs().unwrap().is_empty());
        assert!(f.state.engine.db().objects().list().unwrap().is_empty());
    });
}

/// Every request body the server decodes (JSON for query, compare, refs and cards, objects for
/// blob uploads, bundles raw and in multipart forms) fed structure-aware mutations of a
/// valid body: never a 5xx (nor a panic), and every refusal is a JSON error that says
/// what was wrong.
#[test]
fn http_bodies_survive_structure_aware_mutations() {
    use crate::decoders::{apply, json_mutant, mutation};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = rt();
    let f = fixture(false, 1 << 20);
    let a = small_dna(0, 0);
    let db = f.state.engine.db();
    let pushed = db
        .push(
            &a,
            Some(&vdna_db::refname::RefName::parse("a").unwrap()),
            Default::default(),
        )
        .unwrap();
    db.push(
        &small_dna(1, 0),
        Some(&vdna_db::refname::RefName::parse("b").unwrap()),
        Default::default(),
    )
    .unwrap();
    let enc = small_dna(1, 1).encode(3);
    let bundle = vdna_db::db::bundle_of(&small_dna(0, 1), &Default::default(), 3);
    let mut form = b"--XyZ\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"q.vdna\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    form.extend_from_slice(&bundle);
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let json_bodies: Vec<(Method, String, Vec<u8>)> = vec![
        (
            Method::POST,
            "/v1/query".into(),
            json!({"ref": "a", "mask": "all", "k": 3, "filters": {"x": "y"}, "tag": "latest", "exclude_self": true, "per_layer": true}).to_string().into_bytes(),
        ),
        (
            Method::POST,
            "/v1/compare".into(),
            json!({"a": "a", "b": "b:latest", "mask": "block_0", "metric": "emd", "top_neurons": 3}).to_string().into_bytes(),
        ),
        (
            Method::PUT,
            "/v1/refs/c:v1".into(),
            json!({"digest": pushed.digest.to_string(), "annotations": {"k": "v"}}).to_string().into_bytes(),
        ),
        (
            Method::PUT,
            "/v1/cards/a".into(),
            json!({"markdown": "---\ntitle: A\ntags: [x, y]\n---\n*Body* <b>raw</b>"}).to_string().into_bytes(),
        ),
    ];
    let byte_bodies: Vec<(Method, String, Vec<u8>, &str)> = vec![
        (
            Method::PUT,
            format!("/v1/blobs/{}", enc.objects[2].0),
            enc.objects[2].1.clone(),
            "application/octet-stream",
        ),
        (
            Method::POST,
            "/v1/query/bundle?k=2".into(),
            bundle.clone(),
            "application/octet-stream",
        ),
        (
            Method::POST,
            "/query/upload?k=2".into(),
            form,
            "multipart/form-data; boundary=XyZ",
        ),
    ];
    let strategy = (
        0usize..6,
        prop::collection::vec((0usize..40, any::<u8>()), 0..3),
        prop::collection::vec(mutation(), 0..4),
    );
    let mut runner = TestRunner::new(Config::with_cases(
        std::env::var("VDNA_DB_HTTP_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(96),
    ));
    let seen = std::cell::RefCell::new((0usize, 0usize));
    runner
        .run(&strategy, |(route, edits, muts)| {
            let (method, path, body, ctype) = if route < 3 {
                let (m, p, b) = &json_bodies[route];
                (
                    m.clone(),
                    p.clone(),
                    apply(&json_mutant(b, &edits), &muts),
                    "application/json",
                )
            } else {
                let (m, p, b, c) = &byte_bodies[route - 3];
                (m.clone(), p.clone(), apply(b, &muts), *c)
            };
            let (status, resp) = rt.block_on(async {
                let req = Request::builder()
                    .method(method)
                    .uri(&path)
                    .header("content-type", ctype)
                    .header("authorization", format!("Bearer {}", f.push))
                    .body(Body::from(body))
                    .unwrap();
                let res = server::app(f.state.clone()).oneshot(req).await.unwrap();
                let s = res.status();
                (
                    s,
                    axum::body::to_bytes(res.into_body(), usize::MAX)
                        .await
                        .unwrap(),
                )
            });
            prop_assert!(
                !status.is_server_error(),
                "{path}: {status}: {}",
                String::from_utf8_lossy(&resp)
            );
            let mut seen = seen.borrow_mut();
            if status.is_success() {
                seen.0 += 1;
            } else {
                seen.1 += 1;
            }
            if status.is_client_error() && path.starts_with("/v1/") {
                let v: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
                prop_assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{path}: {status}: {}",
                    String::from_utf8_lossy(&resp)
                );
            }
            Ok(())
        })
        .unwrap();
    // Both outcomes occurred: the bodies reached the handlers, valid or not.
    let (ok, refused) = *seen.borrow();
    assert!(ok > 5 && refused > 5, "{ok} accepted, {refused} refused");
}

/// Tokens never reach the server's log, even at trace level: not the valid one used for
/// pushes, not a wrong one that is refused.
#[test]
fn server_logs_never_contain_tokens() {
    let dir = util::tmp();
    let home = dir.path().join("server");
    let token = util::json(&home, &["token", "create", "--scope", "push"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let log_path = dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdna-db"))
        .args([
            "--home",
            home.to_str().unwrap(),
            "serve",
            "--addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().trim_start_matches("listening on ").to_string();
    let srv = Server { child, url };
    let client = dir.path().join("client");
    let g = root().join("fixtures/reference/gradients-histogram-100.json");
    let wrong = format!("{}x", &token[..token.len() - 1]);
    for t in [&token, &wrong] {
        util::run(
            &client,
            &[
                "--remote",
                &srv.url,
                "--token",
                t,
                "push",
                g.to_str().unwrap(),
                "--name",
                "g",
            ],
        );
    }
    drop(srv);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("/v1/refs/g"),
        "the log recorded nothing: {log}"
    );
    // No part of either secret past its public prefix appears.
    for t in [&token, &wrong] {
        let secret = &t[t.len() - 20..];
        assert!(!log.contains(secret), "a token leaked into the log");
    }
    assert!(
        !log.to_lowercase().contains("bearer "),
        "an authorization header was logged"
    );
}

/// Regression (issue 12): `ls --remote` asked for one page of 1,000 and stopped there, so a
/// catalogue past 1,000 names was cut without a word. It now reads every page.
#[test]
fn ls_remote_lists_a_catalogue_past_one_page() {
    let dir = util::tmp();
    let home = dir.path().join("server");
    let want: std::collections::BTreeSet<String> = {
        let db = Db::open(&home).unwrap();
        let first = vdna_db::refname::RefName::parse("many/d:t0000").unwrap();
        db.push(&small_dna(0, 0), Some(&first), Default::default())
            .unwrap();
        for i in 1..1203 {
            db.tag("many/d:t0000", &format!("many/d:t{i:04}")).unwrap();
        }
        (0..1203).map(|i| format!("many/d:t{i:04}")).collect()
    };
    let srv = start_server(&home, &[]);
    let v = util::json(&dir.path().join("client"), &["--remote", &srv.url, "ls"]);
    let got: std::collections::BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ref"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got.len(), 1203);
    assert_eq!(got, want);
}

/// Issue 12: the request bodies the client writes and the server reads are one set of
/// types (`vdna_db::protocol`), and the OpenAPI document lists exactly their fields, so
/// neither side can send or expect a field the other does not know.
#[test]
fn openapi_request_fields_match_the_shared_protocol_types() {
    use vdna_db::protocol::{CompareBody, QueryBody, SetRef};
    let doc: Value =
        serde_json::from_slice(&std::fs::read(root().join("schema/openapi.json")).unwrap())
            .unwrap();
    let body_props = |path: &str, method: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
            ["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}: no JSON body documented"))
            .keys()
            .cloned()
            .collect()
    };
    // Every optional field set, so serialisation shows them all.
    let full = QueryBody {
        reference: Some("x".into()),
        mask: "all".into(),
        k: 3,
        metric: Some("emd".into()),
        filters: [("a".to_string(), "b".to_string())].into(),
        tag: Some("v1".into()),
        exclude_self: true,
        mode: Some(vdna_db::query::Mode::Auto),
        approx: true,
        per_layer: true,
    };
    let keys = |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let query_fields = keys(serde_json::to_value(&full).unwrap());
    assert_eq!(query_fields, body_props("/v1/query", "post"));
    // The bundle form carries the same options, but the ref, in its query string.
    let params: BTreeSet<String> = doc["paths"]["/v1/query/bundle"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut without_ref = query_fields.clone();
    without_ref.remove("ref");
    assert_eq!(params, without_ref);
    let sent: BTreeSet<String> = full
        .to_query_string()
        .split('&')
        .map(|kv| kv.split('=').next().unwrap().to_string())
        .collect();
    assert_eq!(sent, without_ref);
    let cmp = CompareBody {
        a: "x".into(),
        b: "y".into(),
        mask: "all".into(),
        metric: Some("emd".into()),
        top_neurons: 3,
    };
    assert_eq!(
        keys(serde_json::to_value(&cmp).unwrap()),
        body_props("/v1/compare", "post")
    );
    let set = SetRef {
        digest: "sha256:00".into(),
        annotations: Default::default(),
    };
    assert_eq!(
        keys(serde_json::to_value(&set).unwrap()),
        body_props("/v1/refs/{name}", "put")
    );
}

/// The answers of query and compare are the engine's own types on both sides (the server
/// serialises them, the client reads them back): their fields are the documented ones, and
/// a documented answer reads back into them without loss.
#[test]
fn openapi_response_fields_match_the_shared_types() {
    use vdna_db::engine::{Comparison, Hit, LayerDistance, Metric, NeuronDistance, QueryResult};
    let doc: Value =
        serde_json::from_slice(&std::fs::read(root().join("schema/openapi.json")).unwrap())
            .unwrap();
    let schema = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has no properties"))
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let layer = LayerDistance {
        layer: "block_0".into(),
        distance: 0.5,
        neurons: 3,
    };
    let hit = Hit {
        reference: "a/b:v1".into(),
        digest: Digest::of(b"x"),
        distance: 1.25,
        images: 10,
        // Every optional field present, so every documented one is compared.
        estimated: true,
        per_layer: vec![layer.clone()],
    };
    let result = QueryResult {
        results: vec![hit],
        metric: Metric::Emd,
        mask: "all".into(),
        neurons: 3,
        plan: Default::default(),
    };
    let v = serde_json::to_value(&result).unwrap();
    assert_eq!(keys(&v), schema("QueryResult"));
    assert_eq!(keys(&v["results"][0]), schema("Hit"));
    let back: QueryResult = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), v);
    let cmp = Comparison {
        metric: Metric::Nfd,
        distance: 0.5,
        neurons: 3,
        per_layer: vec![layer],
        top_neurons: vec![NeuronDistance {
            layer: "block_0".into(),
            index: 2,
            distance: 0.75,
        }],
    };
    let v = serde_json::to_value(&cmp).unwrap();
    assert_eq!(keys(&v), schema("Comparison"));
    let back: Comparison = serde_json::from_value(v).unwrap();
    assert_eq!(back, cmp);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Issue 12: one input resolver and one engine behind local and remote commands. A matrix
/// of inputs x flags (reference pair, the same pinned to weights and ranges, a `.vdna`
/// bundle, an image source with extraction flags, and a stored name sent as `docker push`
/// sends a local image) is pushed into a local store and through a real server; digests,
/// spaces, images, annotations, and then ranks, distances and per-layer distances of
/// filtered queries (by name and by an uploaded bundle) are identical.
#[test]
fn local_and_remote_pushes_and_queries_are_identical() {
    let dir = util::tmp();
    let (local, server_home) = (dir.path().join("local"), dir.path().join("server"));
    let w = dir.path().join("w.safetensors");
    let ws = w.to_str().unwrap();
    util::ok(&local, &["weights", "rand_resnet50", "-o", ws]);
    let ranges = root().join("assets/ranges/rand_resnet50-seed0.json");
    let ranges = ranges.to_str().unwrap();
    let g = root().join("fixtures/reference/gradients-histogram-100.json");
    let c = root().join("fixtures/reference/checker-histogram-100.json");
    let pinned = root().join("fixtures/extract/rand_resnet50/histogram-100.json");
    let imgs = root().join("fixtures/images");
    let bundle = dir.path().join("c.vdna");
    let (g, c, pinned, imgs) = (
        g.to_str().unwrap(),
        c.to_str().unwrap(),
        pinned.to_str().unwrap(),
        imgs.to_str().unwrap(),
    );
    // The bundle is the checker DNA exported from a scratch store.
    let scratch = dir.path().join("scratch");
    util::ok(&scratch, &["import", c, "--name", "c"]);
    util::ok(&scratch, &["export", "c", "-o", bundle.to_str().unwrap()]);
    let bundle = bundle.to_str().unwrap();
    let matrix: Vec<Vec<&str>> = vec![
        vec!["push", g, "--name", "m/pair:v1", "--meta", "split=val"],
        vec!["push", g, "--name", "m/pair-b:v1", "--meta", "split=train"],
        vec![
            "push",
            pinned,
            "--name",
            "m/pinned:v1",
            "--weights",
            ws,
            "--ranges",
            ranges,
        ],
        vec![
            "push",
            bundle,
            "--name",
            "m/bundle:v1",
            "--meta",
            "split=val",
        ],
        vec![
            "push",
            imgs,
            "--name",
            "m/images:v1",
            "--dist",
            "histogram-32",
            "--max-images",
            "3",
        ],
    ];
    for args in &matrix {
        util::ok(&local, args);
    }
    let token = util::json(&server_home, &["token", "create", "--scope", "admin"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let srv = start_server(&server_home, &[]);
    let remote = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["--remote", &srv.url, "--token", &token]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    for args in &matrix {
        let a = remote(args);
        util::ok(&local, &strs(&a));
    }
    // A stored name of the local store, sent as docker push sends a local image.
    util::ok(
        &local,
        &strs(&remote(&["push", "m/pair:v1", "--name", "m/sent:v1"])),
    );
    util::ok(&local, &["tag", "m/pair:v1", "m/sent:v1"]);

    let key = |v: &Value| -> Vec<(String, String, String, u64, String)> {
        let mut rows: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["ref"].as_str().unwrap().to_string(),
                    r["digest"].as_str().unwrap().to_string(),
                    r["space"].as_str().unwrap().to_string(),
                    r["images"].as_u64().unwrap(),
                    r["annotations"].to_string(),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let here = util::json(&local, &["ls"]);
    let there = util::json(&local, &strs(&remote(&["ls"])));
    assert_eq!(key(&here).len(), 6);
    assert_eq!(key(&here), key(&there));
    // The pinned import stays pinned through the server.
    let pinned_space = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["ref"] == "m/pinned:v1")
            .map(|r| r["space"].clone())
    };
    assert_eq!(pinned_space(&here), pinned_space(&there));

    let ranked = |v: &Value| -> Vec<(String, f64, String)> {
        v["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|h| {
                (
                    h["ref"].as_str().unwrap().to_string(),
                    h["distance"].as_f64().unwrap(),
                    h["per_layer"].to_string(),
                )
            })
            .collect()
    };
    for q in [
        vec!["query", "m/pair:v1", "--top", "3", "--per-layer"],
        vec![
            "query",
            "m/pair:v1",
            "--top",
            "3",
            "--filter",
            "split=val",
            "--per-layer",
        ],
        vec![
            "query",
            bundle,
            "--top",
            "3",
            "--filter",
            "split=val",
            "--per-layer",
        ],
        vec![
            "query",
            bundle,
            "--top",
            "2",
            "--mask",
            "-layer1_*",
            "--exclude-self",
        ],
        vec!["query", "m/images:v1", "--top", "1", "--exact"],
        vec![
            "query",
            pinned,
            "--weights",
            ws,
            "--ranges",
            ranges,
            "--top",
            "2",
        ],
    ] {
        let l = util::json(&local, &q);
        let r = util::json(&local, &strs(&remote(&q)));
        assert!(!ranked(&l).is_empty(), "{q:?}: {l}");
        assert_eq!(ranked(&l), ranked(&r), "{q:?}");
        assert_eq!(l["neurons"], r["neurons"], "{q:?}");
    }
    // A reference pair given as the query is pinned by --weights / --ranges on both
    // sides, so it finds its pinned twin (and nothing unpinned) at distance 0.
    let q = [
        "query",
        pinned,
        "--weights",
        ws,
        "--ranges",
        ranges,
        "--top",
        "2",
    ];
    let r = util::json(&local, &strs(&remote(&q)));
    let hits = ranked(&r);
    assert_eq!(hits.len(), 1, "only the pinned DNA shares the space: {r}");
    assert_eq!((hits[0].0.as_str(), hits[0].1), ("m/pinned:v1", 0.0));
    // The filter took effect remotely too: only split=val names came back.
    let r = util::json(
        &local,
        &strs(&remote(&[
            "query",
            bundle,
            "--top",
            "5",
            "--filter",
            "split=val",
        ])),
    );
    for (name, _, _) in ranked(&r) {
        assert!(
            name == "m/pair:v1" || name == "m/bundle:v1" || name == "m/sent:v1",
            "{name} passed the filter: {r}"
        );
    }
}

/// Issue 12: admin while serving. Tokens, gc, verify and reindex run through the API with
/// an admin token (a push token is refused), and a local command on the served store
/// waits `--lock-wait`, then names the `--remote` to use.
#[test]
fn admin_commands_run_through_a_server_that_owns_the_store() {
    let dir = util::tmp();
    let home = dir.path().join("server");
    let client = dir.path().join("client");
    let admin = util::json(&home, &["token", "create", "--scope", "admin"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let srv = start_server(&home, &[]);
    let o = util::run(&home, &["--lock-wait", "0.2", "gc"]);
    assert_eq!(o.status.code(), Some(1), "{}", util::stderr(&o));
    let e = util::stderr(&o);
    assert!(
        e.contains(&format!("--remote {}", srv.url)) && e.contains("busy"),
        "{e}"
    );
    let with = |token: &str, args: &[&str]| -> std::process::Output {
        let mut a = vec!["--remote", &srv.url, "--token", token];
        a.extend_from_slice(args);
        util::run(&client, &a)
    };
    let json_with = |token: &str, args: &[&str]| -> Value {
        let mut a = vec!["--json", "--remote", &srv.url, "--token", token];
        a.extend_from_slice(args);
        let o = util::run(&client, &a);
        assert!(o.status.success(), "{args:?}: {}", util::stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // Tokens.
    let created = json_with(
        &admin,
        &["token", "create", "--scope", "push", "--label", "ci"],
    );
    let push = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let ls = json_with(&admin, &["token", "ls"]);
    let ids: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ls}");
    assert!(ids.contains(&id.as_str()));
    assert!(!ls.to_string().contains(&push), "a secret was listed");
    let g = root().join("fixtures/reference/gradients-histogram-100.json");
    let c = root().join("fixtures/reference/checker-histogram-100.json");
    let o = with(&push, &["push", g.to_str().unwrap(), "--name", "g:v1"]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let o = with(&push, &["push", c.to_str().unwrap(), "--name", "c:v1"]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    // A push token cannot administer.
    for args in [
        vec!["gc"],
        vec!["verify"],
        vec!["reindex"],
        vec!["token", "ls"],
    ] {
        let o = with(&push, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            util::stderr(&o).contains("admin"),
            "{args:?}: {}",
            util::stderr(&o)
        );
    }
    // verify, reindex, gc.
    let v = json_with(&admin, &["verify"]);
    assert_eq!(v["refs_checked"], 2, "{v}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    let r = json_with(&admin, &["reindex", "--graphs-min", "1"]);
    assert_eq!(r["dnas"], 2, "{r}");
    assert_eq!(r["graphs"], 17, "all + 16 layers: {r}");
    let gc = json_with(&admin, &["gc", "--grace", "0"]);
    assert_eq!(gc["objects_removed"], 0, "everything is named: {gc}");
    // tag and rm have remote forms too: a second name keeps the DNA, removing both frees
    // its objects.
    json_with(&admin, &["tag", "c:v1", "c:keep"]);
    json_with(&admin, &["rm", "c:v1"]);
    let gc = json_with(&admin, &["gc", "--grace", "0"]);
    assert_eq!(gc["objects_removed"], 0, "c:keep still names it: {gc}");
    json_with(&admin, &["rm", "c:keep"]);
    let gc = json_with(&admin, &["gc", "--grace", "0"]);
    assert!(gc["objects_removed"].as_u64().unwrap() > 0, "{gc}");
    let names = json_with(&admin, &["ls"]);
    assert_eq!(names.as_array().unwrap().len(), 1, "{names}");
    // Revoked: the push token no longer works.
    json_with(&admin, &["token", "revoke", &id]);
    let o = with(&push, &["push", g.to_str().unwrap(), "--name", "g:v2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        util::stderr(&o).contains("unknown or revoked token"),
        "{}",
        util::stderr(&o)
    );
}

/// A directory store shared by a running server and CLI processes, each with a view of
/// its own (`--store DIR --home H`): no "busy" error, a token made by the CLI works on the
/// server at once, and pushes through either side are seen by the other, as replicas
/// over a bucket. The store's own view (`--home DIR`) stays free for a third process.
#[test]
fn a_server_and_clis_share_one_directory_store_through_its_log() {
    let dir = util::tmp();
    let store = dir.path().join("store");
    let st = store.to_str().unwrap();
    let view = |name: &str| dir.path().join(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vdna-db"));
    cmd.args(["--store", st, "--home"])
        .arg(view("server"))
        .args(["--refresh", "0", "serve", "--addr", "127.0.0.1:0"]);
    let srv = spawn_server(cmd);
    let cli = |args: &[&str]| -> Value {
        let mut a = vec!["--store", st, "--refresh", "0"];
        a.extend_from_slice(args);
        util::json(&view("cli"), &a)
    };
    let token = cli(&["token", "create", "--scope", "push"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let fix = root().join("fixtures/reference");
    let g = fix.join("gradients-histogram-100.json");
    let c = fix.join("checker-histogram-100.json");
    cli(&["push", g.to_str().unwrap(), "--name", "g:v1"]);
    // Through the server, with the token the CLI made a moment ago.
    let client = view("client");
    util::ok(
        &client,
        &[
            "--remote",
            &srv.url,
            "--token",
            &token,
            "push",
            c.to_str().unwrap(),
            "--name",
            "c:v1",
        ],
    );
    let refs = |v: Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["ref"].as_str().unwrap().to_string())
            .collect()
    };
    let want: BTreeSet<String> = ["g:v1".to_string(), "c:v1".to_string()].into();
    assert_eq!(refs(cli(&["ls"])), want);
    assert_eq!(
        refs(util::json(&client, &["--remote", &srv.url, "ls"])),
        want
    );
    // The store's own view, opened by a third process while the server runs.
    assert_eq!(refs(util::json(&store, &["ls"])), want);
    assert_eq!(
        util::json(&store, &["verify"])["problems"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
}

/// A long annotation (a reference DNA's metadata JSON) is collapsed to one line in the
/// catalogue, its whole value (pretty-printed) one click away in a `<details>`, so the
/// table no longer runs off the page; short ones stay chips.
#[test]
fn long_annotations_are_collapsed_to_one_line_in_the_catalogue() {
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        let long = format!(
            "{{\"images\": 1000, \"note\": \"{}\"}}",
            "many words about the dataset ".repeat(12)
        );
        let ann = [
            ("reference.metadata".to_string(), long.clone()),
            ("split".to_string(), "val".to_string()),
        ]
        .into();
        f.state
            .engine
            .push(
                &small_dna(3, 0),
                Some(&vdna_db::refname::RefName::parse("lab/long:v1").unwrap()),
                ann,
            )
            .unwrap();
        let (s, page) = call(&f, Method::GET, "/", None, Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        let page = String::from_utf8_lossy(&page);
        assert!(page.contains("<span class=tag>split=val</span>"), "{page}");
        let at = page.find("reference.metadata=").unwrap();
        let details = page[..at].rfind("<details class=ann>").unwrap();
        let summary_end = details + page[details..].find("</summary>").unwrap();
        // The summary line holds the start of the value only; the body holds all of it.
        assert!(
            summary_end - details < 200,
            "{}",
            &page[details..summary_end]
        );
        assert!(!page[details..summary_end].contains("many words about the dataset many words"));
        let body_end = summary_end + page[summary_end..].find("</details>").unwrap();
        let body = &page[summary_end..body_end];
        assert_eq!(
            body.matches("many words about the dataset").count(),
            12,
            "{body}"
        );
        assert!(
            body.contains("&quot;images&quot;: 1000"),
            "pretty-printed JSON: {body}"
        );
    });
}

/// The neuron plot: an SVG of one neuron's distributions in two datasets, titled with
/// their per-neuron distance, which must equal a straightforward computation from the
/// stored counts (EMD in bin units) or the stored moments (NFD); the compare page embeds
/// it for its most different neurons.
#[test]
fn neuron_plots_draw_both_distributions_with_their_distance() {
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        let e = &f.state.engine;
        let name = |s: &str| vdna_db::refname::RefName::parse(s).unwrap();
        let push = |dna: vdna_db::dna::Dna, n: &str| {
            e.push(&dna, Some(&name(n)), Default::default())
                .unwrap()
                .digest
        };
        let da = push(small_dna(0, 0), "p/a:v1");
        let db = push(small_dna(1, 1), "p/b:v1");
        let gspec = synth::CatalogueSpec {
            dist: vdna_db::format::DistKind::Gaussian,
            ..small_spec()
        };
        let ga = push(synth::member(&gspec, 0, 0), "p/ga:v1");
        let gb = push(synth::member(&gspec, 1, 0), "p/gb:v1");
        let distance = |svg: &str| -> f64 {
            let at = svg.find("data-distance='").unwrap() + "data-distance='".len();
            svg[at..at + svg[at..].find('\'').unwrap()].parse().unwrap()
        };
        let get = |path: String| {
            let f = &f;
            async move {
                let (s, b) = call(f, Method::GET, &path, None, Body::empty()).await;
                (s, String::from_utf8(b).unwrap())
            }
        };
        // Histograms: EMD = sum over bins of |CDF_a - CDF_b|, each normalised by its total.
        let (sa, sb) = (e.open_dna(&da).unwrap(), e.open_dna(&db).unwrap());
        let layer = sa.space.layers[1].name.clone();
        for neuron in [0usize, 5] {
            let (s, svg) = get(format!(
                "/plot/neuron.svg?a=p/a:v1&b=p/b:v1&layer={layer}&neuron={neuron}"
            ))
            .await;
            assert_eq!(s, StatusCode::OK, "{svg}");
            assert!(
                svg.starts_with("<svg") && svg.matches("<path class='dist'").count() == 2,
                "{svg}"
            );
            let counts = |d: &vdna_db::stored::StoredDna| -> Vec<f64> {
                match d.layer(1).unwrap().view() {
                    vdna_db::format::LayerView::Histogram { bins, counts, .. } => counts
                        [neuron * bins..(neuron + 1) * bins]
                        .iter()
                        .map(|&c| c as f64)
                        .collect(),
                    _ => unreachable!(),
                }
            };
            let (ca, cb) = (counts(&sa), counts(&sb));
            let (ta, tb): (f64, f64) = (ca.iter().sum(), cb.iter().sum());
            let (mut acc_a, mut acc_b, mut want) = (0.0, 0.0, 0.0);
            for (x, y) in ca.iter().zip(&cb) {
                acc_a += x / ta;
                acc_b += y / tb;
                want += (acc_a - acc_b).abs();
            }
            assert!(
                util::rel(distance(&svg), want) < 1e-9,
                "{} vs {want}",
                distance(&svg)
            );
        }
        // Gaussians: NFD = (m1 - m2)^2 + v1 + v2 - 2 sqrt(v1 v2).
        let (ra, rb) = (e.open_dna(&ga).unwrap(), e.open_dna(&gb).unwrap());
        let glayer = ra.space.layers[0].name.clone();
        let (s, svg) = get(format!(
            "/plot/neuron.svg?a=p/ga:v1&b=p/gb:v1&layer={glayer}&neuron=2"
        ))
        .await;
        assert_eq!(s, StatusCode::OK, "{svg}");
        let moments = |d: &vdna_db::stored::StoredDna| match d.layer(0).unwrap().view() {
            vdna_db::format::LayerView::Gaussian { mean, var } => (mean[2], var[2]),
            _ => unreachable!(),
        };
        let ((m1, v1), (m2, v2)) = (moments(&ra), moments(&rb));
        let want = (m1 - m2).powi(2) + v1 + v2 - 2.0 * (v1 * v2).sqrt();
        assert!(svg.contains("data-metric='NFD'"), "{svg}");
        assert!(util::rel(distance(&svg), want) < 1e-9);
        // One dataset alone: one curve, no distance. Bad requests are clear.
        let (s, svg) = get(format!("/plot/neuron.svg?a=p/a:v1&layer={layer}&neuron=0")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(svg.matches("<path class='dist'").count(), 1);
        assert!(!svg.contains("data-distance"));
        let (s, page) = get("/plot/neuron.svg?a=p/a:v1&layer=nope&neuron=0".into()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(page.contains("no layer") && page.contains(&layer), "{page}");
        let (s, _) = get(format!(
            "/plot/neuron.svg?a=p/a:v1&layer={layer}&neuron=999"
        ))
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = get(format!(
            "/plot/neuron.svg?a=p/a:v1&b=p/ga:v1&layer={layer}&neuron=0"
        ))
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        // The compare page shows the plots of its most different neurons.
        let (s, page) = get("/compare?a=p/a:v1&b=p/b:v1".into()).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            page.matches("<img src='/plot/neuron.svg?a=p%2Fa%3Av1&amp;b=p%2Fb%3Av1")
                .count()
                >= 1,
            "{page}"
        );
    });
}

/// Issue 17: the dataset listing's sorting, filters, search and pages. Every page is held
/// against an order computed here from what was pushed (image counts, annotations), and
/// distance order against `compare` run pair by pair (the brute force beside the query
/// engine's bound cascade).
#[test]
fn dataset_listing_sorts_filters_and_pages_like_a_brute_force() {
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        let e = &f.state.engine;
        // 12 DNAs of one space: image counts with ties, a `split` annotation in 3 groups.
        let mut pushed: Vec<(String, u64, String)> = Vec::new();
        for i in 0..12usize {
            let images = 8 + ((i * 5) % 7) as u64;
            let spec = synth::CatalogueSpec {
                images,
                ..small_spec()
            };
            let name = format!("b/n{i:02}:v1");
            let split = format!("s{}", i % 3);
            let ann = [("split".to_string(), split.clone())].into();
            e.push(
                &synth::member(&spec, i % 2, i / 2),
                Some(&vdna_db::refname::RefName::parse(&name).unwrap()),
                ann,
            )
            .unwrap();
            pushed.push((name, images, split));
        }
        let get = |path: String| {
            let f = &f;
            async move {
                let (s, b) = call(f, Method::GET, &path, None, Body::empty()).await;
                assert_eq!(s, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&b));
                serde_json::from_slice::<Value>(&b).unwrap()
            }
        };
        // Every page of 5, concatenated.
        let all_pages = |query: &'static str| {
            let get = &get;
            async move {
                let mut refs = Vec::new();
                let mut dists = Vec::new();
                let mut total = None;
                for offset in (0..15).step_by(5) {
                    let v = get(format!("/v1/datasets?{query}&limit=5&offset={offset}")).await;
                    total = Some(v["total"].as_u64().unwrap());
                    for r in v["items"].as_array().unwrap() {
                        refs.push(r["ref"].as_str().unwrap().to_string());
                    }
                    for d in v["distances"].as_array().into_iter().flatten() {
                        dists.push(d.as_f64().unwrap());
                    }
                }
                (refs, dists, total.unwrap())
            }
        };
        // Images, largest first, ties in name order; then ascending.
        let mut want = pushed.clone();
        want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let names = |v: &[(String, u64, String)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
        let (got, _, total) = all_pages("sort=images").await;
        assert_eq!((got, total), (names(&want), 12));
        want.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        assert_eq!(all_pages("sort=images&order=asc").await.0, names(&want));
        // Names descending; an annotation filter with a text search.
        let mut by_name = names(&pushed);
        by_name.reverse();
        assert_eq!(all_pages("order=desc").await.0, by_name);
        let split1: Vec<String> = pushed
            .iter()
            .filter(|p| p.2 == "s1" && p.0.starts_with("b/n0"))
            .map(|p| p.0.clone())
            .collect();
        let (got, _, total) = all_pages("filter=split%3Ds1&q=N0").await;
        assert_eq!(got, split1);
        assert_eq!(total as usize, split1.len());
        // Distance to one entry, closest first, filtered: against compare, pair by pair.
        let from = e.resolve("b/n00:v1").unwrap().0;
        let from = vdna_db::engine::AnyDna::Stored(e.open_dna(&from).unwrap());
        let mut brute: Vec<(f64, String)> = pushed
            .iter()
            .filter(|p| p.2 == "s0")
            .map(|p| {
                let d = e.resolve(&p.0).unwrap().0;
                let other = vdna_db::engine::AnyDna::Stored(e.open_dna(&d).unwrap());
                (
                    e.compare(&from, &other, "all", None, 0).unwrap().distance,
                    p.0.clone(),
                )
            })
            .collect();
        brute.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (got, dists, total) = all_pages("sort=distance&to=b/n00:v1&filter=split%3Ds0").await;
        assert_eq!(total as usize, brute.len());
        assert_eq!(got, brute.iter().map(|b| b.1.clone()).collect::<Vec<_>>());
        for (g, w) in dists.iter().zip(&brute) {
            assert!(util::rel(*g, w.0) < 1e-9, "{g} vs {}", w.0);
        }
        assert_eq!(dists[0], 0.0, "the entry itself comes first");
        // Bad parameters are refused with what to give.
        for (q, says, status) in [
            (
                "sort=distance",
                "needs to=REF",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ("sort=weight", "sort by name", StatusCode::BAD_REQUEST),
            ("order=up", "asc or desc", StatusCode::BAD_REQUEST),
            ("filter=nokey", "key=value", StatusCode::BAD_REQUEST),
            (
                "sort=distance&to=",
                "not a ref name",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (s, b) = call(
                &f,
                Method::GET,
                &format!("/v1/datasets?{q}"),
                None,
                Body::empty(),
            )
            .await;
            assert_eq!(s, status, "{q}");
            assert!(String::from_utf8_lossy(&b).contains(says), "{q}");
        }
        // The catalogue page pages the same way: 12 rows at 5 a page is 3 pages.
        let (s, b) = call(
            &f,
            Method::GET,
            "/?sort=images&per=5&page=3",
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let page = String::from_utf8(b).unwrap();
        assert!(
            page.contains("11–12 of 12") && page.contains("page 3 of 3"),
            "{page}"
        );
        want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rows: Vec<&str> = page
            .split("<td class=name><a href='/d/")
            .skip(1)
            .map(|s| s.split('\'').next().unwrap())
            .collect();
        assert_eq!(rows, vec![want[10].0.as_str(), want[11].0.as_str()]);
    });
}

/// Issue 17: `/docs` renders every operation of schema/openapi.json, and `/layer` shades
/// each neuron by the distance computed here from the counts.
#[test]
fn api_docs_and_layer_pages() {
    rt().block_on(async {
        let f = fixture(false, 1 << 20);
        let (s, b) = call(&f, Method::GET, "/docs", None, Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        let docs = String::from_utf8(b).unwrap();
        let doc: Value =
            serde_json::from_slice(&std::fs::read(root().join("schema/openapi.json")).unwrap())
                .unwrap();
        let mut ops = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in ["get", "head", "post", "put", "delete"] {
                if item.get(m).is_some() {
                    ops += 1;
                    let head = format!(
                        "<span class='verb {m}'>{}</span> <code>{path}</code></h2>",
                        m.to_uppercase()
                    );
                    assert!(docs.contains(&head), "/docs lacks {m} {path}");
                }
            }
        }
        assert_eq!(docs.matches("<section class=card id='").count(), ops + doc["components"]["schemas"].as_object().unwrap().len());
        let (s, b) = call(&f, Method::GET, "/openapi.json", None, Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(serde_json::from_slice::<Value>(&b).unwrap(), doc);

        let e = &f.state.engine;
        let name = |s: &str| vdna_db::refname::RefName::parse(s).unwrap();
        let da = e.push(&small_dna(0, 0), Some(&name("p/a:v1")), Default::default()).unwrap().digest;
        let db = e.push(&small_dna(1, 1), Some(&name("p/b:v1")), Default::default()).unwrap().digest;
        let (sa, sb) = (e.open_dna(&da).unwrap(), e.open_dna(&db).unwrap());
        let layer = sa.space.layers[1].name.clone();
        let (s, b) = call(&f, Method::GET, &format!("/layer?a=p/a:v1&b=p/b:v1&layer={layer}&neuron=3"), None, Body::empty()).await;
        assert_eq!(s, StatusCode::OK);
        let page = String::from_utf8(b).unwrap();
        let counts = |d: &vdna_db::stored::StoredDna| match d.layer(1).unwrap().view() {
            vdna_db::format::LayerView::Histogram { bins, counts, neurons } => {
                (0..neurons).map(|n| counts[n * bins..(n + 1) * bins].iter().map(|&c| c as f64).collect::<Vec<_>>()).collect::<Vec<_>>()
            }
            _ => unreachable!(),
        };
        let (ca, cb) = (counts(&sa), counts(&sb));
        assert_eq!(page.matches("data-neuron=").count(), ca.len());
        for (i, (x, y)) in ca.iter().zip(&cb).enumerate() {
            let (tx, ty): (f64, f64) = (x.iter().sum(), y.iter().sum());
            let (mut ax, mut ay, mut want) = (0.0, 0.0, 0.0);
            for (p, q) in x.iter().zip(y) {
                ax += p / tx;
                ay += q / ty;
                want += (ax - ay).abs();
            }
            let at = page.find(&format!("<title>neuron {i}: EMD ")).unwrap() + format!("<title>neuron {i}: EMD ").len();
            let shown: f64 = page[at..at + page[at..].find('<').unwrap()].parse().unwrap();
            assert!((shown - want).abs() < 1e-5, "neuron {i}: {shown} vs {want}");
        }
        // The asked neuron's plot is on the page.
        assert!(page.contains(&format!("<img id=plotimg src='/plot/neuron.svg?a=p%2Fa%3Av1&amp;b=p%2Fb%3Av1&amp;layer={layer}&amp;neuron=3'")), "{page}");
        let (s, _) = call(&f, Method::GET, "/layer?a=p/a:v1&layer=nope", None, Body::empty()).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    });
}
