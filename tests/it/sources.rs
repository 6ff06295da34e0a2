//! Image sources where datasets live, with real servers on loopback: the same images in a
//! folder, a tar made by the `tar` tool, webdataset shards, Parquet files written by
//! pyarrow (fixtures/parquet, tools/make_parquet_fixtures.py), a plain HTTP server
//! (Python's `http.server`) and an S3 server (moto) must give one DNA digest. Then the
//! distributed workflow: parts pushed by index (`--shard auto/n` under a Kubernetes or
//! Slurm index), the checked `merge --shards`, and an extraction killed mid-run that
//! resumes from its checkpoint with the uninterrupted run's digest.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{self, bin, root, tmp};

/// The three small fixture images, repeated: image `i` is `SMALL[i % 3]`.
const SMALL: [&str; 3] = ["gradient.png", "gray.png", "noise.png"];

/// `n` images named `0000.png`... in `dir`.
fn image_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::copy(
            root().join("fixtures/images").join(SMALL[i % 3]),
            dir.join(format!("{i:04}.png")),
        )
        .unwrap();
    }
}

/// `vdna-db --json extract SOURCE -o OUT` with a small histogram (and `extra` flags),
/// with `env` set; the parsed answer.
fn extract_json(dir: &Path, source: &str, env: &[(&str, String)], extra: &[&str]) -> Value {
    let out = dir.join("out.vdna");
    let o = bin()
        .args(["--home"])
        .arg(dir.join("home"))
        .args(["--json", "extract", source, "-o"])
        .arg(&out)
        .args(["--dist", "histogram-64", "--checkpoint-every", "1000000"])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "extract {source} failed: {}",
        util::stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn digest_of(v: &Value) -> String {
    v["digest"].as_str().unwrap().to_string()
}

fn skipped(v: &Value) -> usize {
    v["report"]["skipped"].as_array().unwrap().len()
}

/// Runs the `tar` tool: `tar cf ARCHIVE -C DIR MEMBERS...`.
fn tar(archive: &Path, dir: &Path, members: &[String]) {
    let s = Command::new("tar")
        .arg("cf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .args(members)
        .status()
        .expect("tar runs");
    assert!(s.success());
}

/// Webdataset shards of `n` samples (`KEY.png` + `KEY.cls`) and one sample with no image
/// (`KEY.cls` alone) at the end, split over `shards` files `shard-I.tar` in `out`.
fn webdataset(out: &Path, n: usize, shards: usize) {
    let stage = out.join("stage");
    image_folder(&stage, n);
    let mut keys: Vec<String> = (0..=n).map(|i| format!("{i:04}")).collect();
    for (i, k) in keys.iter().enumerate() {
        std::fs::write(stage.join(format!("{k}.cls")), (i % 3).to_string()).unwrap();
    }
    let per = keys.len().div_ceil(shards);
    for s in 0..shards {
        let mine: Vec<String> = keys
            .drain(..per.min(keys.len()))
            .flat_map(|k| {
                let png = stage.join(format!("{k}.png"));
                let mut m = vec![];
                if png.exists() {
                    m.push(format!("{k}.png"));
                }
                m.push(format!("{k}.cls"));
                m
            })
            .collect();
        tar(&out.join(format!("shard-{s}.tar")), &stage, &mine);
    }
    std::fs::remove_dir_all(&stage).unwrap();
}

/// Python's `http.server` on a loopback port serving `dir`, ended by its pid.
struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server(dir: &Path) -> HttpServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let s = HttpServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

#[test]
fn every_kind_of_source_gives_the_digest_of_the_same_images_in_a_folder() {
    let t = tmp();
    let d = t.path();
    let serve = d.join("www");
    image_folder(&serve.join("imgs"), 6);
    let folder = extract_json(d, &serve.join("imgs").to_string_lossy(), &[], &[]);
    let want = digest_of(&folder);
    assert_eq!(folder["report"]["images"], 6);

    // A tar archive made by the tar tool.
    let members: Vec<String> = (0..6).map(|i| format!("{i:04}.png")).collect();
    tar(&serve.join("plain.tar"), &serve.join("imgs"), &members);
    let v = extract_json(d, &serve.join("plain.tar").to_string_lossy(), &[], &[]);
    assert_eq!(digest_of(&v), want, "tar");

    // Webdataset shards: 6 image samples and one without an image, over 2 shards.
    webdataset(&serve.join("wds"), 6, 2);
    let pattern = serve.join("wds/shard-{0..1}.tar");
    let v = extract_json(d, &pattern.to_string_lossy(), &[], &[]);
    assert_eq!(digest_of(&v), want, "webdataset shards");
    assert_eq!(
        skipped(&v),
        1,
        "the sample without an image is reported: {v}"
    );
    assert!(v["report"]["skipped"][0][1]
        .as_str()
        .unwrap()
        .contains("no image member"));

    // Parquet written by pyarrow: the Hugging Face struct layout (one null row, reported)
    // and a plain binary column, found without --column.
    let hf = root().join("fixtures/parquet/hf-images.parquet");
    let v = extract_json(d, &hf.to_string_lossy(), &[], &[]);
    assert_eq!(digest_of(&v), want, "Parquet, Hugging Face layout");
    assert_eq!(skipped(&v), 1, "{v}");
    let bin_pq = root().join("fixtures/parquet/binary-images.parquet");
    let v = extract_json(d, &bin_pq.to_string_lossy(), &[], &[]);
    assert_eq!(digest_of(&v), want, "Parquet, binary column");
    let o = util::run(
        &d.join("home"),
        &[
            "extract",
            &bin_pq.to_string_lossy(),
            "-o",
            &d.join("x.vdna").to_string_lossy(),
            "--column",
            "key",
        ],
    );
    assert!(!o.status.success());
    let e = util::stderr(&o);
    assert!(
        e.contains("column \"key\"") && e.contains("not encoded images"),
        "{e}"
    );

    // Over plain HTTP: shards, an archive, a list of URLs and a Parquet file (this server
    // takes no range requests, so the file is spooled).
    std::fs::copy(&hf, serve.join("hf.parquet")).unwrap();
    let list: Vec<String> = (0..6).map(|i| format!("imgs/{i:04}.png")).collect();
    std::fs::write(serve.join("urls.txt"), list.join("\n")).unwrap();
    let h = http_server(&serve);
    for (src, skips) in [
        (format!("{}/wds/shard-{{0..1}}.tar", h.url), 1),
        (format!("{}/plain.tar", h.url), 0),
        (format!("{}/urls.txt", h.url), 0),
        (format!("{}/hf.parquet", h.url), 1),
    ] {
        let v = extract_json(d, &src, &[], &[]);
        assert_eq!(digest_of(&v), want, "{src}");
        assert_eq!(skipped(&v), skips, "{src}: {v}");
    }
    let o = util::run(
        &d.join("home"),
        &[
            "extract",
            &format!("{}/imgs/", h.url),
            "-o",
            &d.join("x.vdna").to_string_lossy(),
        ],
    );
    assert!(util::stderr(&o).contains("HTTP servers have no listing"));
    drop(h);

    // In a bucket of a real S3 server: images under a prefix, shards by pattern and by
    // prefix, Parquet read with range requests.
    let Some(m) = crate::s3::moto() else { return };
    m.bucket("data");
    let cfg = vdna_db::objstore::S3Config {
        endpoint: Some(m.endpoint.clone()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        ..Default::default()
    };
    let bucket = vdna_db::objstore::Remote::open_s3("data", "", &cfg).unwrap();
    let up = |from: PathBuf, key: &str| bucket.put(key, &std::fs::read(from).unwrap()).unwrap();
    for m in &members {
        up(serve.join("imgs").join(m), &format!("photos/{m}"));
    }
    up(serve.join("wds/shard-0.tar"), "wds/shard-0.tar");
    up(serve.join("wds/shard-1.tar"), "wds/shard-1.tar");
    up(hf.clone(), "pq/part-0.parquet");
    let env = m.env();
    for (src, skips) in [
        ("s3://data/photos/", 0),
        ("s3://data/wds/shard-{0..1}.tar", 1),
        ("s3://data/wds/", 1),
        ("s3://data/pq/part-0.parquet", 1),
    ] {
        let v = extract_json(d, src, &env, &[]);
        assert_eq!(digest_of(&v), want, "{src}");
        assert_eq!(skipped(&v), skips, "{src}: {v}");
    }
}

/// Runs the binary on store `home` with `env`; the output.
fn run_env(home: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    bin()
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn shard_parts_pushed_by_index_merge_to_the_whole_and_the_merge_checks_them() {
    let t = tmp();
    let d = t.path();
    let home = d.join("home");
    image_folder(&d.join("imgs"), 9);
    webdataset(&d.join("wds"), 9, 2);
    let pattern = d
        .join("wds/shard-{0..1}.tar")
        .to_string_lossy()
        .into_owned();
    let h64 = ["--dist", "histogram-64"];
    let whole = util::json(
        &home,
        &[
            &[
                "push",
                &d.join("imgs").to_string_lossy(),
                "--name",
                "whole:v1",
            ][..],
            &h64,
        ]
        .concat(),
    );
    let want = whole["digest"].as_str().unwrap().to_string();

    // Three workers over two files: each reads both and keeps positions p % 3 == i. The
    // index comes from the scheduler's variable.
    let push = |env: &[(&str, &str)], shard: &str| {
        run_env(
            &home,
            env,
            &[
                &[
                    "--json", "push", &pattern, "--name", "wds:v1", "--shard", shard,
                ][..],
                &h64,
            ]
            .concat(),
        )
    };
    let o = push(&[("JOB_COMPLETION_INDEX", "0")], "auto/3");
    assert!(o.status.success(), "{}", util::stderr(&o));
    let part0: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(part0["ref"], "wds:v1-shard-0-of-3");
    let o = push(&[("SLURM_ARRAY_TASK_ID", "1")], "auto/3");
    assert!(o.status.success(), "{}", util::stderr(&o));

    // A part missing: the merge names it and stores nothing.
    let o = util::run(&home, &["merge", "--shards", "wds:v1"]);
    assert!(!o.status.success());
    let e = util::stderr(&o);
    assert!(e.contains("1 of 3 shards missing (index 2)"), "{e}");
    // auto without a scheduler's index says where it looks.
    let o = push(&[], "auto/3");
    assert!(util::stderr(&o).contains("JOB_COMPLETION_INDEX"));

    let o = push(&[], "2/3");
    assert!(o.status.success(), "{}", util::stderr(&o));
    // A retried worker stores the same DNA under the same name: nothing new.
    let o = push(&[("JOB_COMPLETION_INDEX", "0")], "auto/3");
    let again: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["digest"], part0["digest"]);
    assert_eq!(again["new_objects"], 0);

    let m = util::json(&home, &["merge", "--shards", "wds:v1"]);
    assert_eq!(m["digest"].as_str().unwrap(), want, "merged = single run");
    assert_eq!(m["images"], 9);
    assert_eq!(m["shards"]["count"], 3);
    // Run again: the same.
    let m = util::json(&home, &["merge", "--shards", "wds:v1"]);
    assert_eq!(m["digest"].as_str().unwrap(), want);
    let show = util::json(&home, &["show", "wds:v1"]);
    assert!(show.to_string().contains("3 shards of wds:v1"), "{show}");

    // Two workers over two files: whole files each.
    for i in 0..2 {
        let o = push(&[], &format!("{i}/2"));
        assert!(o.status.success(), "{}", util::stderr(&o));
    }
    let o = util::run(&home, &["merge", "--shards", "wds:v1"]);
    let e = util::stderr(&o);
    assert!(!o.status.success() && e.contains("different sizes"), "{e}");
    for i in 0..3 {
        util::ok(&home, &["rm", &format!("wds:v1-shard-{i}-of-3")]);
    }
    let m = util::json(&home, &["merge", "--shards", "wds:v1"]);
    assert_eq!(m["digest"].as_str().unwrap(), want, "whole-file shards");

    // A part of another selection is refused by name.
    let o = run_env(
        &home,
        &[],
        &[
            &[
                "push",
                &d.join("imgs").to_string_lossy(),
                "--name",
                "wds:v1",
                "--shard",
                "1/2",
            ][..],
            &h64,
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
    let o = util::run(&home, &["merge", "--shards", "wds:v1"]);
    let e = util::stderr(&o);
    assert!(
        !o.status.success() && e.contains("different sources or selections"),
        "{e}"
    );
}

/// Starts `extract` and kills it (by its pid) as soon as its checkpoint is on disk.
fn interrupt_after_checkpoint(home: &Path, args: &[&str], checkpoint: &Path) {
    let mut child = bin()
        .arg("--home")
        .arg(home)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if checkpoint.exists() {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!("extract ended ({s}) before writing a checkpoint");
        }
        assert!(Instant::now() < deadline, "no checkpoint written");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_interrupted_extraction_resumes_from_its_checkpoint() {
    let t = tmp();
    let d = t.path();
    let home = d.join("home");
    image_folder(&d.join("imgs"), 60);
    let src = d.join("imgs").to_string_lossy().into_owned();
    let flags = [
        "--dist",
        "histogram-64",
        "--checkpoint-every",
        "6",
        "--batch",
        "2",
    ];
    let run = |out: &str, extra: &[&str]| {
        let o = bin()
            .arg("--home")
            .arg(&home)
            .args(["--json", "extract", &src, "-o"])
            .arg(d.join(out))
            .args(flags)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", util::stderr(&o));
        (
            serde_json::from_slice::<Value>(&o.stdout).unwrap(),
            util::stderr(&o),
        )
    };
    let (full, _) = run("full.vdna", &[]);
    assert!(!d.join("full.vdna.partial").exists(), "removed when done");

    let ckpt = d.join("part.vdna.partial");
    let part = d.join("part.vdna").to_string_lossy().into_owned();
    let args: Vec<&str> = [&["extract", &src, "-o", &part][..], &flags].concat();
    interrupt_after_checkpoint(&home, &args, &ckpt);
    let (resumed, err) = run("part.vdna", &[]);
    let r = resumed["report"]["resumed"].as_u64().unwrap();
    assert!(
        r > 0 && r < 60 && r % 6 == 0,
        "resumed {r} images: {resumed}"
    );
    assert!(err.contains("resumed from checkpoint"), "{err}");
    assert_eq!(resumed["report"]["images"], 60);
    assert_eq!(
        resumed["digest"], full["digest"],
        "same DNA as uninterrupted"
    );
    assert!(!ckpt.exists());

    // A checkpoint of another job is set aside, not mixed in.
    interrupt_after_checkpoint(&home, &args, &ckpt);
    let (other, err) = run("part.vdna", &["--max-images", "30"]);
    assert!(err.contains("belongs to another extraction"), "{err}");
    assert_eq!(other["report"]["resumed"], 0);
    let (fresh, _) = run("fresh.vdna", &["--max-images", "30"]);
    assert_eq!(other["digest"], fresh["digest"]);

    // Streams checkpoint after each file: three webdataset shards.
    webdataset(&d.join("wds"), 30, 3);
    let pattern = d
        .join("wds/shard-{0..2}.tar")
        .to_string_lossy()
        .into_owned();
    let out = d.join("w.vdna").to_string_lossy().into_owned();
    let wargs = [
        "extract",
        &pattern,
        "-o",
        &out,
        "--dist",
        "histogram-64",
        "--batch",
        "2",
    ];
    interrupt_after_checkpoint(&home, &wargs, &d.join("w.vdna.partial"));
    let v = util::json(&home, &wargs);
    let r = v["report"]["resumed"].as_u64().unwrap();
    assert!(r > 0 && r < 30, "resumed {r}: {v}");
    let whole = util::json(
        &home,
        &[
            "extract",
            &pattern,
            "-o",
            &d.join("w2.vdna").to_string_lossy(),
            "--dist",
            "histogram-64",
        ],
    );
    assert_eq!(v["digest"], whole["digest"]);
}

/// A process group started here (`ray start --block` and the daemons it spawns), ended
/// by its process-group id when dropped.
struct Group {
    child: Child,
}

impl Drop for Group {
    fn drop(&mut self) {
        // SIGTERM first so Ray's daemons exit cleanly, then SIGKILL what remains.
        let pgid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

fn ray_start(temp: &Path, args: &[&str]) -> Group {
    use std::os::unix::process::CommandExt;
    let child = Command::new("ray")
        .arg("start")
        .args(args)
        .args(["--num-cpus", "1", "--block", "--disable-usage-stats"])
        .env("RAY_TMPDIR", temp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("ray starts");
    Group { child }
}

/// The Ray recipe (tools/ray/extract_on_ray.py) on a local cluster of a head and one more
/// node on 127.0.0.1: one task per shard, spread over both nodes, each pushing its part
/// into a store both share; the merged DNA equals the single-machine DNA of the source.
#[test]
fn a_ray_cluster_extracts_the_shards_and_the_merge_equals_one_machine() {
    let have_ray = Command::new("python3")
        .args(["-c", "import ray"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_ray {
        assert!(
            std::env::var("VDNA_DB_REQUIRE_RAY").as_deref() != Ok("1"),
            "ray is not installed (pip install ray), and VDNA_DB_REQUIRE_RAY=1"
        );
        eprintln!("skipped: ray is not installed (pip install ray)");
        return;
    }
    let t = tmp();
    let d = t.path();
    webdataset(&d.join("wds"), 11, 4);
    let pattern = d
        .join("wds/shard-{0..3}.tar")
        .to_string_lossy()
        .into_owned();
    let store = d.join("shared-store");
    let single = util::json(
        &d.join("single"),
        &[
            "push",
            &pattern,
            "--name",
            "one:v1",
            "--dist",
            "histogram-64",
        ],
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let ray_tmp = d.join("ray");
    std::fs::create_dir_all(&ray_tmp).unwrap();
    let _head = ray_start(
        &ray_tmp,
        &[
            "--head",
            "--port",
            &port.to_string(),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard=false",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the Ray head did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _worker = ray_start(
        &ray_tmp,
        &["--address", &address, "--node-ip-address", "127.0.0.1"],
    );
    // Wait until the cluster has both nodes.
    let count_nodes = format!(
        "import ray; ray.init(address='{address}', log_to_driver=False); \
         print(sum(1 for n in ray.nodes() if n['Alive']))"
    );
    loop {
        let o = Command::new("python3")
            .args(["-c", &count_nodes])
            .env("RAY_TMPDIR", &ray_tmp)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).trim() == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second Ray node did not join"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let o = Command::new("python3")
        .arg(root().join("tools/ray/extract_on_ray.py"))
        .arg(&pattern)
        .args(["--name", "wds:v1", "--shards", "4", "--address", &address])
        .arg("--store")
        .arg(&store)
        .args(["--vdna-db", env!("CARGO_BIN_EXE_vdna-db")])
        .args(["--", "--dist", "histogram-64"])
        .env("RAY_TMPDIR", &ray_tmp)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the Ray recipe failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["merged"]["digest"], single["digest"], "{v}");
    assert_eq!(v["merged"]["images"], 11);
    let tasks = v["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4);
    let nodes: std::collections::BTreeSet<&str> =
        tasks.iter().map(|t| t["node"].as_str().unwrap()).collect();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(nodes.len(), 2, "tasks spread over both nodes: {v}");
}
