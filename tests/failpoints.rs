//! Fault injection through the real binary (TiKV's fail points, feature `failpoints`):
//! EIO and ENOSPC at every write, fsync, rename, delete and catalogue commit site, at
//! every hit of each site, for every writing command. Each failing command must exit
//! with a clear error naming the errno, leave every name it did not target as it was,
//! leave `verify` clean, and succeed when retried without the fault.
//!
//! `cargo test --features failpoints --test failpoints`; the short mode injects one errno
//! per site (alternating) at its first 3 hits, `VDNA_DB_FAULTS_ALL=1` both errnos at every
//! hit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vdna_db::Db;

const SITES: &[&str] = &[
    "object::write",
    "object::fsync",
    "object::rename",
    "object::dir_fsync",
    "object::delete",
    "file::write",
    "file::fsync",
    "file::rename",
    "file::link",
    "file::dir_fsync",
    "segment::write",
    "segment::fsync",
    "segment::write_row",
    "segment::fsync_row",
    "catalogue::commit",
    "catalogue::flush",
    "graph::write",
    "graph::rename",
];

const ERRORS: &[(&str, &str)] = &[
    ("EIO", "Input/output error"),
    ("ENOSPC", "No space left on device"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(set: &str, dist: &str) -> String {
    root()
        .join("fixtures/reference")
        .join(format!("{set}-{dist}"))
        .to_string_lossy()
        .into_owned()
}

fn run(home: &Path, args: &[&str], failpoints: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdna-db"));
    c.arg("--home").arg(home).arg("--json").args(args);
    c.env_remove("FAILPOINTS");
    if let Some(f) = failpoints {
        c.env("FAILPOINTS", f);
    }
    c.output().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn refs(home: &Path) -> BTreeMap<String, String> {
    let db = Db::open(home).unwrap();
    db.list()
        .unwrap()
        .into_iter()
        .map(|l| (l.reference, l.digest.to_string()))
        .collect()
}

/// A writing command and the name it may change.
struct Op {
    args: Vec<String>,
    target: Option<&'static str>,
}

#[test]
fn injected_io_errors_fail_cleanly_and_lose_nothing() {
    let all = std::env::var("VDNA_DB_FAULTS_ALL").is_ok();
    let max_hits = if all { 1000 } else { 3 };
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("store");
    for (name, set) in [("a", "checker"), ("b", "gradients"), ("gone", "checker")] {
        let dist = if name == "gone" {
            "gaussian"
        } else {
            "histogram-100"
        };
        let o = run(&home, &["push", &fixture(set, dist), "--name", name], None);
        assert!(o.status.success());
    }
    // An unreferenced DNA for gc to remove, and an index for reindex to replace.
    assert!(run(&home, &["rm", "gone"], None).status.success());
    assert!(run(&home, &["reindex", "--graphs-min", "1"], None)
        .status
        .success());
    let before = refs(&home);
    let ops = [
        Op {
            args: vec![
                "push".into(),
                fixture("gradients", "histogram-1000"),
                "--name".into(),
                "new".into(),
            ],
            target: Some("new:latest"),
        },
        Op {
            args: vec![
                "push".into(),
                fixture("gradients", "histogram-100"),
                "--name".into(),
                "a".into(),
            ],
            target: Some("a:latest"),
        },
        Op {
            args: vec!["tag".into(), "a".into(), "t:v1".into()],
            target: Some("t:v1"),
        },
        Op {
            args: vec!["rm".into(), "b".into()],
            target: Some("b:latest"),
        },
        Op {
            args: vec!["gc".into(), "--grace".into(), "0".into()],
            target: None,
        },
        Op {
            args: vec!["reindex".into(), "--graphs-min".into(), "1".into()],
            target: None,
        },
        Op {
            args: vec!["verify".into(), "--repair".into()],
            target: None,
        },
        Op {
            args: vec!["export".into(), "a".into(), "-o".into(), "{out}".into()],
            target: None,
        },
    ];
    let (mut injected, mut runs) = (0, 0);
    for op in &ops {
        for (si, site) in SITES.iter().enumerate() {
            for (ei, (errno, text)) in ERRORS.iter().enumerate() {
                if !all && ei != si % 2 {
                    continue;
                }
                for hit in 0..max_hits {
                    let dir = tempfile::tempdir().unwrap();
                    let h = dir.path().join("store");
                    copy_dir(&home, &h);
                    let out_file = dir.path().join("out.vdna");
                    let args: Vec<String> = op
                        .args
                        .iter()
                        .map(|a| a.replace("{out}", out_file.to_str().unwrap()))
                        .collect();
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let fp = format!("{site}={hit}*off->return({errno})");
                    let o = run(&h, &args, Some(&fp));
                    runs += 1;
                    let what = format!("{} with {fp}", args.join(" "));
                    let stderr = String::from_utf8_lossy(&o.stderr);
                    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
                    if o.status.success() {
                        // The site was hit fewer than `hit + 1` times: no more to inject.
                        break;
                    }
                    injected += 1;
                    assert!(
                        matches!(o.status.code(), Some(1) | Some(2)),
                        "{what}: {:?}",
                        o.status
                    );
                    assert!(
                        stderr.contains(text) && stderr.starts_with("error:"),
                        "{what}: unclear error: {stderr}"
                    );
                    // Nothing stored before is lost or changed.
                    let now = refs(&h);
                    for (name, d) in &before {
                        if Some(name.as_str()) != op.target {
                            assert_eq!(now.get(name), Some(d), "{what}: {name} changed");
                        }
                    }
                    let db = Db::open(&h).unwrap();
                    let v = db.verify().unwrap();
                    assert!(v.problems.is_empty(), "{what}: {:?}", v.problems);
                    drop(db);
                    // A failed flush may still have applied a removal: nothing to retry.
                    if args[0] == "rm" && op.target.is_some_and(|t| !now.contains_key(t)) {
                        continue;
                    }
                    // Retried without the fault, the command succeeds.
                    let o = run(&h, &args, None);
                    assert!(
                        o.status.success(),
                        "{what}: retry failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                    assert!(Db::open(&h).unwrap().verify().unwrap().problems.is_empty());
                }
            }
        }
    }
    eprintln!("fault injection: {runs} runs, {injected} faults injected, nothing lost");
    assert!(injected > 50, "only {injected} faults were injected");
}
