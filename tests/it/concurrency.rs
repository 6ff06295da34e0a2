//! Concurrency: several processes pushing the same and different DNAs into one local
//! store (they queue on sled's single-process lock with --lock-wait, or fail fast and
//! clearly without it), the same through a running server while clients query it, and gc
//! racing pushes in one process. Nothing is lost or corrupted, nothing hangs.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vdna_db::refname::RefName;
use vdna_db::{synth, Db};

use crate::server::start_server;
use crate::util::*;

fn sources() -> Vec<String> {
    ["checker", "gradients"]
        .iter()
        .flat_map(|s| ["histogram-100", "gaussian"].map(|d| fixture(s, d)))
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn spawn(home: &std::path::Path, args: &[String]) -> Child {
    bin()
        .arg("--home")
        .arg(home)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for every child, failing (rather than hanging) past `limit`.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<std::process::Output> {
    let t = Instant::now();
    children
        .into_iter()
        .map(|mut c| {
            while c.try_wait().unwrap().is_none() {
                if t.elapsed() > limit {
                    let _ = c.kill();
                    panic!("a process hung for {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            c.wait_with_output().unwrap()
        })
        .collect()
}

#[test]
fn processes_pushing_into_one_store_queue_on_its_lock_and_lose_nothing() {
    let h = tmp();
    let home = h.path();
    ok(home, &["init"]);
    let src = sources();
    // 8 processes: the same DNA under several names, different DNAs, one name twice.
    let jobs: Vec<(String, String)> = (0..8)
        .map(|i| (src[i % src.len()].clone(), format!("p{}:latest", i.min(6))))
        .collect();
    let children = jobs
        .iter()
        .map(|(s, n)| {
            spawn(
                home,
                &[
                    "--lock-wait".into(),
                    "60".into(),
                    "--json".into(),
                    "push".into(),
                    s.clone(),
                    "--name".into(),
                    n.clone(),
                ],
            )
        })
        .collect();
    let outs = wait_all(children, Duration::from_secs(120));
    let mut pushed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((_, name), o) in jobs.iter().zip(&outs) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        pushed
            .entry(name.clone())
            .or_default()
            .push(v["digest"].as_str().unwrap().to_string());
    }
    let db = Db::open(home).unwrap();
    let now = names(&db);
    assert_eq!(now.len(), 7);
    for (name, digests) in &pushed {
        // The last writer of a name wins; it is one of the pushes of that name.
        assert!(digests.contains(&now[name]), "{name}");
    }
    assert!(db.verify().unwrap().problems.is_empty());
    // Without waiting, a second process is refused at once with what to do.
    let t = Instant::now();
    let o = run(home, &["--lock-wait", "0", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(5));
    let e = stderr(&o);
    assert!(e.contains("is busy") && e.contains("--remote"), "{e}");
}

#[test]
fn clients_push_through_a_server_while_others_query_it() {
    let dir = tmp();
    let home = dir.path().join("server");
    let token = json(&home, &["token", "create", "--scope", "push"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let src = sources();
    ok(&home, &["push", &src[0], "--name", "seed"]);
    let srv = start_server(&home, &[]);
    let url = srv.url.clone();
    // Queries on a loop while the pushes run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let q = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = serde_json::json!({"ref": "seed", "k": 3}).to_string();
                let r = ureq::post(&format!("{url}/v1/query"))
                    .header("content-type", "application/json")
                    .send(body.as_bytes())
                    .expect("query during pushes");
                assert_eq!(r.status(), 200);
                n += 1;
            }
            n
        })
    };
    let clients: Vec<tempfile::TempDir> = (0..6).map(|_| tmp()).collect();
    let children = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            spawn(
                c.path(),
                &[
                    "--remote".into(),
                    url.clone(),
                    "--token".into(),
                    token.clone(),
                    "--json".into(),
                    "push".into(),
                    src[i % src.len()].clone(),
                    "--name".into(),
                    format!("c{}:v1", i % 5),
                ],
            )
        })
        .collect();
    let outs = wait_all(children, Duration::from_secs(120));
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The server holds the store: a local command is refused with a pointer to --remote.
    let o = run(&home, &["--lock-wait", "0.2", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--remote"), "{}", stderr(&o));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let queries = q.join().unwrap();
    assert!(queries > 0);
    drop(srv);
    let db = Db::open_with(
        &home,
        &vdna_db::db::OpenOptions {
            lock_wait: Duration::from_secs(10),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        names(&db).into_keys().collect::<Vec<_>>(),
        ["c0:v1", "c1:v1", "c2:v1", "c3:v1", "c4:v1", "seed:latest"]
    );
    assert!(db.verify().unwrap().problems.is_empty());
}

/// gc racing pushes in one process never removes what a push is about to reference
/// (commits and gc exclude each other), and an upload's objects sent before its manifest
/// survive a gc inside the grace period.
#[test]
fn gc_racing_pushes_never_removes_a_blob_about_to_be_referenced() {
    let h = tmp();
    let db = std::sync::Arc::new(Db::open(h.path()).unwrap());
    let s = synth::CatalogueSpec {
        seed: 3,
        families: 4,
        members: 4,
        layers: synth::uniform_layers(3, 8),
        dist: vdna_db::format::DistKind::Histogram { bins: 16 },
        extractor: "x".into(),
        images: 4,
        positions: 9,
        spread: 1.0,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                db.gc_with_grace(Duration::ZERO).unwrap();
                n += 1;
            }
            n
        })
    };
    for i in 0..16 {
        let name = RefName::parse(&format!("d{i}")).unwrap();
        db.push(
            &synth::member(&s, i / 4, i % 4),
            Some(&name),
            Default::default(),
        )
        .unwrap();
        // Retire every other one so gc has work.
        if i % 2 == 1 {
            db.remove(&format!("d{}", i - 1)).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(gc.join().unwrap() > 0);
    assert_eq!(db.list().unwrap().len(), 8);
    assert!(db.verify().unwrap().problems.is_empty());

    // An upload in progress: objects first, then the manifest's commit.
    let dna = synth::member(&synth::CatalogueSpec { seed: 99, ..s }, 0, 0);
    let enc = dna.encode(3);
    for (d, bytes) in &enc.objects {
        db.put_verified_object(d, bytes).unwrap();
    }
    let spared = db.gc().unwrap();
    // All but the space config, which stored DNAs share.
    assert!(spared.objects_recent >= enc.objects.len() - 1, "{spared:?}");
    for (d, _) in &enc.objects {
        assert!(
            db.objects().contains(d).unwrap(),
            "gc removed {d} of an upload"
        );
    }
    let name = RefName::parse("uploaded").unwrap();
    db.commit_stored(&enc.manifest_digest, Some(&name), Default::default())
        .unwrap();
    assert!(db.verify().unwrap().problems.is_empty());
}
