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

/// Starts moto's server, or `None` (after saying why) when it is not installed and CI
/// does not require it.
pub fn moto() -> Option<Moto> {
    let found = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("VDNA_DB_REQUIRE_S3").as_deref() != Ok("1"),
            "moto_server is not installed (pip install 'moto[server]'), and VDNA_DB_REQUIRE_S3=1"
        );
        eprintln!("skipped: moto_server is not installed (pip install 'moto[server]')");
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

/// `vdna-db serve` over a bucket, ended by its pid when dropped.
struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &[(&str, String)], home: &Path, store: &str) -> Replica {
    let mut c = util::bin();
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .arg("--home")
        .arg(home)
        .args([
            "--store",
            store,
            "--refresh",
            "0.2",
            "serve",
            "--addr",
            "127.0.0.1:0",
        ])
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
    Replica { child, url }
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
    let admin = cli_json(
        &env,
        &dir.path().join("admin"),
        &["--store", store, "token", "create", "--scope", "admin"],
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
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

/// A proxy in front of the S3 server that drops `If-None-Match` and `If-Match` (as some
/// S3-compatible servers ignore them): opening a store through it is refused.
#[test]
fn a_server_dropping_conditional_headers_is_refused() {
    let Some(m) = moto() else { return };
    m.bucket("plain");
    let upstream = m.endpoint.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let _ = forward_without_preconditions(conn, &upstream);
            });
        }
    });
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

/// One request through: headers without the preconditions, `Connection: close`, the
/// body by its length, then the answer back until the server closes.
fn forward_without_preconditions(mut client: TcpStream, upstream: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
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
        if lower.starts_with("if-none-match:")
            || lower.starts_with("if-match:")
            || lower.starts_with("connection:")
        {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    client.write_all(&answer)?;
    client.shutdown(std::net::Shutdown::Both)
}
