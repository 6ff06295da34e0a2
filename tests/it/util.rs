//! Shared helpers: fixture paths, temporary stores, running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reference fixture pair's stem: `fixture("checker", "histogram-1000")`.
pub fn fixture(set: &str, dist: &str) -> PathBuf {
    root()
        .join("fixtures/reference")
        .join(format!("{set}-{dist}"))
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vdna-db"))
}

/// Runs the binary with `--home home` and the arguments.
pub fn run(home: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and requires exit 0, returning stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let o = run(home, args);
    assert!(
        o.status.success(),
        "vdna-db {args:?} failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// Runs with --json and parses stdout.
pub fn json(home: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let s = ok(home, &a);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad json from {args:?}: {e}\n{s}"))
}

/// Relative difference.
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

/// A store's names and the digests they point to.
pub fn names(db: &vdna_db::Db) -> std::collections::BTreeMap<String, String> {
    db.list()
        .unwrap()
        .into_iter()
        .map(|l| (l.reference, l.digest.to_string()))
        .collect()
}

/// `vdna-db demo` arguments for a synthetic catalogue only (no images, no fixtures) of
/// `families` x `members` DNAs.
pub fn demo_args<'a>(families: &'a str, members: &'a str) -> [&'a str; 9] {
    [
        "demo",
        "--images",
        "0",
        "--fixtures",
        "none",
        "--families",
        families,
        "--members",
        members,
    ]
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// True when `program arg` runs; otherwise says so and the caller skips, unless the
/// environment variable `require` is 1 (CI sets it), which makes it a failure.
pub fn installed(program: &str, arg: &str, what: &str, how: &str, require: &str) -> bool {
    let found = Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{what} is not installed ({how}), and {require}=1"
        );
        eprintln!("skipped: {what} is not installed ({how})");
    }
    found
}
