//! Stores in a bucket shared by several processes (`--store s3://...`, `memory://`): the
//! catalogue's commit log, replicas' views, conflicts, lost replies, cold starts; and the
//! same log in the embedded store's directory. The in-process tests use memory buckets;
//! `s3` runs the same against a real S3 server (moto's) started on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vdna_db::catalogue::{Catalogue, Change, RefRecord};
use vdna_db::engine::{Engine, Location, OpenOptions, QueryRequest};
use vdna_db::format::Digest;
use vdna_db::ledger::{DirLog, Ledger, LogStore};
use vdna_db::objstore::Remote;
use vdna_db::refname::RefName;
use vdna_db::{synth, Error};

use crate::util::tmp;

pub fn spec(seed: u64) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed,
        families: 3,
        members: 3,
        layers: synth::uniform_layers(3, 8),
        dist: vdna_db::format::DistKind::Histogram { bins: 16 },
        extractor: "x".into(),
        images: 4,
        positions: 9,
        spread: 1.0,
    }
}

/// A bucket of its own per test (memory buckets live as long as the process).
fn bucket(test: &str) -> Location {
    Location::Memory {
        name: format!("{test}-{}", vdna_db::objstore::random_id()),
    }
}

fn replica(home: &std::path::Path, loc: &Location, refresh: Duration) -> Engine {
    Engine::open_with(
        home,
        &OpenOptions {
            location: Some(loc.clone()),
            refresh,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

fn name(s: &str) -> RefName {
    RefName::parse(s).unwrap()
}

fn hits(e: &Engine, q: &vdna_db::engine::AnyDna) -> Vec<(String, f64)> {
    let req = QueryRequest {
        k: 5,
        ..QueryRequest::default()
    };
    e.query(q, &req)
        .unwrap()
        .results
        .into_iter()
        .map(|h| (h.reference, h.distance))
        .collect()
}

/// Two replicas over one bucket and a local store holding the same DNAs: names, tokens
/// and masks made through one are seen by the other, and both answer queries exactly as
/// the local store does.
#[test]
fn replicas_over_one_bucket_agree_with_a_local_store() {
    let dir = tmp();
    let loc = bucket("agree");
    let a = replica(&dir.path().join("a"), &loc, Duration::from_secs(3600));
    let b = replica(&dir.path().join("b"), &loc, Duration::ZERO);
    let local = Engine::open(&dir.path().join("local")).unwrap();
    let s = spec(7);
    for f in 0..3 {
        for m in 0..3 {
            let dna = synth::member(&s, f, m);
            let n = name(&synth::member_name(f, m));
            let ann: BTreeMap<String, String> = [("family".to_string(), f.to_string())].into();
            a.push(&dna, Some(&n), ann.clone()).unwrap();
            local.push(&dna, Some(&n), ann).unwrap();
        }
    }
    let (_, rec) = a.create_token("push", "ci").unwrap();
    a.add_mask("first", "block_0").unwrap();

    // b's refresh interval is zero: every read catches up.
    let listing = |e: &Engine| -> Vec<(String, String)> {
        e.list()
            .unwrap()
            .into_iter()
            .map(|l| (l.reference, l.digest.to_string()))
            .collect()
    };
    assert_eq!(listing(&b), listing(&local));
    assert_eq!(listing(&b).len(), 9);
    assert!(b.tokens().unwrap().iter().any(|t| t.id == rec.id));
    assert_eq!(b.masks().unwrap(), vec![("first".into(), "block_0".into())]);

    let q = vdna_db::engine::AnyDna::Owned(synth::member(&spec(8), 1, 0));
    let want = hits(&local, &q);
    assert_eq!(want.len(), 5);
    assert_eq!(hits(&b, &q), want);
    assert_eq!(hits(&a, &q), want);

    // b writes; a, whose refresh interval is an hour, sees it only when it catches up.
    b.tag(&synth::member_name(0, 0), "renamed:v1").unwrap();
    assert!(a.get_ref(&name("renamed:v1")).unwrap().is_none());
    assert_eq!(a.sync().unwrap(), 1);
    assert!(a.get_ref(&name("renamed:v1")).unwrap().is_some());
    // A replica sees its own writes at once.
    a.remove("renamed:v1").unwrap();
    assert!(a.get_ref(&name("renamed:v1")).unwrap().is_none());
}

/// Processes sharing one directory store, each with a view and index of its own (`--store
/// DIR --home H`), behave as replicas over a bucket: the same answers as a store of
/// their own, names and tokens made through one seen by the other.
#[test]
fn views_over_one_directory_store_agree_with_a_store_of_their_own() {
    let dir = tmp();
    let store = dir.path().join("store");
    let a = Engine::open(&store).unwrap();
    let b = replica(
        &dir.path().join("b"),
        &Location::Local(store.clone()),
        Duration::ZERO,
    );
    let local = Engine::open(&dir.path().join("local")).unwrap();
    let s = spec(9);
    for f in 0..3 {
        for m in 0..3 {
            let dna = synth::member(&s, f, m);
            let n = name(&synth::member_name(f, m));
            // Pushes alternate between the two processes' views.
            let via = if (f + m) % 2 == 0 { &a } else { &b };
            via.push(&dna, Some(&n), Default::default()).unwrap();
            local.push(&dna, Some(&n), Default::default()).unwrap();
        }
    }
    let (_, rec) = b.create_token("push", "ci").unwrap();
    let listing = |e: &Engine| -> Vec<(String, String)> {
        e.list()
            .unwrap()
            .into_iter()
            .map(|l| (l.reference, l.digest.to_string()))
            .collect()
    };
    a.sync().unwrap();
    assert_eq!(listing(&a), listing(&local));
    assert_eq!(listing(&b), listing(&local));
    assert!(a.tokens().unwrap().iter().any(|t| t.id == rec.id));
    let q = vdna_db::engine::AnyDna::Owned(synth::member(&spec(10), 2, 0));
    let want = hits(&local, &q);
    assert_eq!(want.len(), 5);
    assert_eq!(hits(&a, &q), want);
    assert_eq!(hits(&b, &q), want);
    // b's view is only a cache: deleted, it comes back from the store's log.
    drop(b);
    std::fs::remove_dir_all(dir.path().join("b")).unwrap();
    let b = replica(
        &dir.path().join("b"),
        &Location::Local(store),
        Duration::ZERO,
    );
    assert_eq!(listing(&b), listing(&local));
}

/// Two writers that read one ref and then set it: exactly one commit lands, the other
/// is a conflict and writes nothing; the log holds the winner only.
#[test]
fn of_two_writers_setting_one_ref_exactly_one_wins() {
    let dir = tmp();
    let loc = bucket("race");
    let (d0, d1) = two_dnas(replica(&dir.path().join("a"), &loc, Duration::ZERO));
    let remote = Arc::new(Remote::open(&loc).unwrap());
    exactly_one_of_two_writers_wins(remote, dir.path(), d0, d1);
}

/// The embedded store commits through the same protocol on its `ledger/` directory (a
/// create is a link(2), which refuses a taken name): two writers over that directory,
/// each with a view of its own, race exactly as over a bucket.
#[test]
fn of_two_writers_on_one_local_directory_exactly_one_wins() {
    let dir = tmp();
    let store = dir.path().join("store");
    let (d0, d1) = two_dnas(Engine::open(&store).unwrap());
    let log = Arc::new(DirLog::open(&store.join("ledger")).unwrap());
    exactly_one_of_two_writers_wins(log, dir.path(), d0, d1);
    // The store itself sees the winner's commit.
    let e = Engine::open(&store).unwrap();
    assert_eq!(
        e.get_ref(&name("contested:v1")).unwrap().unwrap().digest,
        d1
    );
}

/// Pushes two DNAs (unnamed) through `e` and closes it.
fn two_dnas(e: Engine) -> (Digest, Digest) {
    let s = spec(1);
    let push = |m| {
        e.push(&synth::member(&s, 0, m), None, Default::default())
            .unwrap()
            .digest
    };
    (push(0), push(1))
}

/// Two views over `log`, each reading the ref `contested:v1` before either commits.
fn exactly_one_of_two_writers_wins(log: Arc<dyn LogStore>, dir: &Path, d0: Digest, d1: Digest) {
    let va = Catalogue::open(&dir.join("va")).unwrap();
    let vb = Catalogue::open(&dir.join("vb")).unwrap();
    let la = Ledger::open(log.clone(), &va, Duration::ZERO).unwrap();
    let lb = Ledger::open(log, &vb, Duration::ZERO).unwrap();
    let set = |digest, prev| Change::SetRef {
        name: name("contested:v1"),
        record: RefRecord {
            digest,
            created: 0,
            annotations: BTreeMap::new(),
        },
        prev,
    };
    assert_eq!(va.get_ref(&name("contested:v1")).unwrap(), None);
    assert_eq!(vb.get_ref(&name("contested:v1")).unwrap(), None);
    la.commit(&va, &[set(d0, None)]).unwrap();
    let lost = lb.commit(&vb, &[set(d1, None)]).unwrap_err();
    assert!(matches!(lost, Error::Conflict(_)), "{lost}");
    assert!(lost.to_string().contains("contested:v1"), "{lost}");
    // b's view caught up while losing: it sees the winner, and nothing of its own.
    assert_eq!(
        vb.get_ref(&name("contested:v1")).unwrap().unwrap().digest,
        d0
    );
    // Having seen the winner, b may replace it.
    lb.commit(&vb, &[set(d1, Some(d0))]).unwrap();
    la.sync(&va).unwrap();
    assert_eq!(
        va.get_ref(&name("contested:v1")).unwrap().unwrap().digest,
        d1
    );
    assert_eq!(va.applied_seq().unwrap(), vb.applied_seq().unwrap());
}

/// Everything a user sees of an embedded store, for comparing two opens of it: names
/// (digest, annotations), masks, token ids and a query's answers.
#[derive(Debug, PartialEq)]
struct Seen {
    refs: Vec<(String, String, BTreeMap<String, String>)>,
    masks: Vec<(String, String)>,
    tokens: Vec<String>,
    hits: Vec<(String, f64)>,
}

fn everything(e: &Engine) -> Seen {
    let q = vdna_db::engine::AnyDna::Owned(synth::member(&spec(31), 1, 1));
    Seen {
        refs: e
            .list()
            .unwrap()
            .into_iter()
            .map(|l| (l.reference, l.digest.to_string(), l.annotations))
            .collect(),
        masks: e.masks().unwrap(),
        tokens: e.tokens().unwrap().into_iter().map(|t| t.id).collect(),
        hits: hits(e, &q),
    }
}

/// An embedded store with names, a retag, a removal, a mask, a token and a gc behind it.
fn a_used_store(home: &Path) {
    let e = Engine::open(home).unwrap();
    let s = spec(30);
    for f in 0..3 {
        for m in 0..2 {
            let ann: BTreeMap<String, String> = [("family".to_string(), f.to_string())].into();
            e.push(
                &synth::member(&s, f, m),
                Some(&name(&synth::member_name(f, m))),
                ann,
            )
            .unwrap();
        }
    }
    e.tag(&synth::member_name(1, 1), "best:v2").unwrap();
    e.remove(&synth::member_name(2, 0)).unwrap();
    e.add_mask("first", "block_0").unwrap();
    e.create_token("push", "ci").unwrap();
    e.gc(Some(Duration::ZERO)).unwrap();
}

/// The embedded store's sled catalogue is only a view: deleted, it is rebuilt from the
/// commit log in `ledger/` with every name, annotation, mask and token, and queries
/// answer as before.
#[test]
fn the_embedded_store_rebuilds_a_deleted_catalogue_from_its_log() {
    let dir = tmp();
    let home = dir.path().join("store");
    a_used_store(&home);
    let before = everything(&Engine::open(&home).unwrap());
    assert_eq!(before.refs.len(), 6);
    assert_eq!(before.hits.len(), 5);
    std::fs::remove_dir_all(home.join("catalogue")).unwrap();
    let e = Engine::open(&home).unwrap();
    assert_eq!(everything(&e), before);
    assert!(e.verify(false).unwrap().clean());
}

/// A store written before the catalogue had a log (its truth in sled alone; here: the
/// log removed) is adopted when opened: the catalogue becomes the log's first commit,
/// so from then on the catalogue is a view that can itself be deleted.
#[test]
fn a_store_from_before_the_log_is_adopted_with_nothing_lost() {
    let dir = tmp();
    let home = dir.path().join("store");
    a_used_store(&home);
    let before = everything(&Engine::open(&home).unwrap());
    std::fs::remove_dir_all(home.join("ledger")).unwrap();
    let e = Engine::open(&home).unwrap();
    assert_eq!(everything(&e), before);
    // Still writable, and the adopted log is the truth: the view can go.
    e.tag("best:v2", "after:v1").unwrap();
    drop(e);
    std::fs::remove_dir_all(home.join("catalogue")).unwrap();
    let e = Engine::open(&home).unwrap();
    let mut now = everything(&e);
    let added = now.refs.iter().position(|r| r.0 == "after:v1").unwrap();
    now.refs.remove(added);
    now.hits = before.hits.clone();
    assert_eq!(now, before);
}

/// Threads of two replicas tagging one name at once: every call either lands or is a
/// conflict; the name ends at the last commit that landed, and both views agree.
#[test]
fn racing_replicas_never_lose_a_landed_commit() {
    let dir = tmp();
    let loc = bucket("threads");
    let a = std::sync::Arc::new(replica(&dir.path().join("a"), &loc, Duration::ZERO));
    let b = std::sync::Arc::new(replica(&dir.path().join("b"), &loc, Duration::ZERO));
    let s = spec(2);
    for i in 0..4 {
        a.push(
            &synth::member(&s, 0, i % 3),
            Some(&name(&format!("src{i}"))),
            Default::default(),
        )
        .unwrap();
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let run = |e: std::sync::Arc<Engine>, src: &'static str| {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            let mut landed = 0;
            let mut conflicts = 0;
            for _ in 0..20 {
                barrier.wait();
                match e.tag(src, "hot:v1") {
                    Ok(_) => landed += 1,
                    Err(Error::Conflict(_)) => conflicts += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (landed, conflicts)
        })
    };
    let ta = run(a.clone(), "src0");
    let tb = run(b.clone(), "src1");
    let (la, ca) = ta.join().unwrap();
    let (lb, cb) = tb.join().unwrap();
    assert_eq!(la + ca + lb + cb, 40);
    assert!(la + lb >= 20, "each round lands at least one: {la} {lb}");
    a.sync().unwrap();
    b.sync().unwrap();
    let ra = a.get_ref(&name("hot:v1")).unwrap().unwrap();
    let rb = b.get_ref(&name("hot:v1")).unwrap().unwrap();
    assert_eq!(ra.digest, rb.digest);
}

/// A fresh replica (empty cache) rebuilds its view from the newest checkpoint and the
/// log after it, older checkpoints are removed, and a cache of another bucket is dropped,
/// not trusted.
#[test]
fn a_fresh_replica_starts_from_the_checkpoint_and_the_log() {
    let dir = tmp();
    let loc = bucket("cold");
    let remote = std::sync::Arc::new(Remote::open(&loc).unwrap());
    let v = Catalogue::open(&dir.path().join("writer")).unwrap();
    let l = vdna_db::ledger::Ledger::open(remote.clone(), &v, Duration::ZERO).unwrap();
    let a = replica(&dir.path().join("a"), &loc, Duration::ZERO);
    let dna = synth::member(&spec(4), 0, 0);
    let d = a.push(&dna, None, Default::default()).unwrap().digest;
    l.sync(&v).unwrap();
    // Enough commits for two checkpoints, then a few more.
    let total = 2 * vdna_db::ledger::CHECKPOINT_EVERY + 7;
    while v.applied_seq().unwrap() < total {
        let i = v.applied_seq().unwrap();
        l.commit(
            &v,
            &[Change::SetRef {
                name: name(&format!("n{i}")),
                record: RefRecord {
                    digest: d,
                    created: i,
                    annotations: BTreeMap::new(),
                },
                prev: None,
            }],
        )
        .unwrap();
    }
    let keys: Vec<String> = remote
        .list("catalogue/checkpoints")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    // Only the newest is kept: each holds the whole catalogue.
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].contains(&format!("{:020}", 2 * vdna_db::ledger::CHECKPOINT_EVERY)));

    let fresh = replica(&dir.path().join("fresh"), &loc, Duration::ZERO);
    let want: Vec<String> = v
        .refs()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let got: Vec<String> = fresh
        .refs()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len() as u64, total - 1);
    drop(fresh);

    // The same cache directory opened over another bucket forgets the first one.
    let other = replica(&dir.path().join("fresh"), &bucket("other"), Duration::ZERO);
    assert!(other.refs().unwrap().is_empty());
}

/// A store that ignores conditional writes is refused when opened, with a clear error.
#[test]
fn a_store_that_ignores_conditional_writes_is_refused() {
    // The memory bucket honours them; the probe's refusal path is checked against a real
    // server that drops the headers in `s3::a_server_dropping_conditional_headers_is_refused`.
    let r = Remote::open(&bucket("probe")).unwrap();
    r.check_conditional_writes().unwrap();
    assert!(
        r.list("catalogue/probe").unwrap().is_empty(),
        "the probe cleans up"
    );
}

/// gc through one replica while another pushes and retires names: no name ends up
/// pointing at a removed object (the other replica's uploads are younger than the grace
/// period, and a record is forgotten only if no ref reaches it when its commit lands).
#[test]
fn gc_on_one_replica_never_breaks_pushes_on_another() {
    let dir = tmp();
    let loc = bucket("gc");
    let a = std::sync::Arc::new(replica(&dir.path().join("a"), &loc, Duration::ZERO));
    let b = std::sync::Arc::new(replica(&dir.path().join("b"), &loc, Duration::ZERO));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                b.gc(None).unwrap();
                runs += 1;
            }
            runs
        })
    };
    let s = spec(5);
    for i in 0..12 {
        let n = name(&format!("d{i}"));
        a.push(
            &synth::member(&s, i % 3, i / 3 % 3),
            Some(&n),
            Default::default(),
        )
        .unwrap();
        if i % 2 == 1 {
            a.remove(&format!("d{}", i - 1)).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(gc.join().unwrap() > 0);
    // Retired DNAs' records go; everything named stays whole.
    let report = b.gc(Some(Duration::ZERO)).unwrap();
    assert!(report.objects_removed > 0, "{report:?}");
    for e in [&a, &b] {
        let v = e.verify(false).unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert_eq!(v.refs_checked, 6);
    }
}

/// A replica with an empty cache builds its index from the summary rows that the pushing
/// replica kept in the bucket, reading no layer of the DNAs it does not rank exactly;
/// the answer is the one a replica computing every row from the DNAs gives. A damaged
/// row is not trusted: it is computed again.
#[test]
fn a_fresh_replica_builds_its_index_from_the_rows_in_the_bucket() {
    let dir = tmp();
    let loc = bucket("rows");
    let a = replica(&dir.path().join("a"), &loc, Duration::ZERO);
    let s = spec(9);
    for f in 0..3 {
        for m in 0..3 {
            let n = name(&synth::member_name(f, m));
            a.push(&synth::member(&s, f, m), Some(&n), Default::default())
                .unwrap();
        }
    }
    let remote = Remote::open(&loc).unwrap();
    let rows = remote.list("index").unwrap();
    assert_eq!(rows.len(), 9, "one row object per DNA");
    // Damage one row: its replica recomputes it.
    let (bad, _) = rows[0].clone();
    let (mut bytes, _) = remote.get(&bad).unwrap().unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    remote.delete(&bad).unwrap();
    remote.put_if_absent(&bad, &bytes).unwrap();

    let q = vdna_db::engine::AnyDna::Owned(synth::member(&spec(10), 2, 1));
    let req = QueryRequest {
        k: 1,
        ..QueryRequest::default()
    };
    let open = |home: &str, shared_summaries| {
        Engine::open_with(
            &dir.path().join(home),
            &OpenOptions {
                location: Some(loc.clone()),
                refresh: Duration::ZERO,
                shared_summaries,
                ..OpenOptions::default()
            },
        )
        .unwrap()
    };
    let from_rows = open("from-rows", true).query(&q, &req).unwrap();
    let from_dnas = open("from-dnas", false).query(&q, &req).unwrap();
    assert_eq!(
        from_rows.results[0].reference,
        from_dnas.results[0].reference
    );
    assert_eq!(from_rows.results[0].distance, from_dnas.results[0].distance);
    // Rows from the bucket: only the damaged one and the exact re-rank read DNA layers.
    assert!(
        from_rows.plan.object_bytes_read * 3 < from_dnas.plan.object_bytes_read,
        "{} vs {}",
        from_rows.plan.object_bytes_read,
        from_dnas.plan.object_bytes_read
    );
    // The replica that found the damaged row wrote it back whole.
    let (fixed, _) = remote.get(&bad).unwrap().unwrap();
    assert_ne!(fixed, bytes);
    assert_eq!(fixed.len(), bytes.len());
}
