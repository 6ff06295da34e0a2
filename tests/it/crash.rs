//! Crash test (sled's kill-and-reopen): the real binary pushes, tags, removes, gcs and
//! reindexes in a loop and is killed with SIGKILL at random moments; after every kill the
//! store is reopened and checked: every name points to a complete, valid DNA, every
//! command that reported success took effect, a killed command either took effect or
//! left nothing behind, `verify` is clean and queries agree with the brute-force oracle
//! (the index being rebuilt when a kill damaged it).
//!
//! Short by default; the long campaign is `VDNA_DB_CRASH_ROUNDS=1000`.

use std::collections::BTreeMap;
use std::time::Duration;

use vdna_db::db::AnyDna;
use vdna_db::query::{brute_force, query, QueryRequest};
use vdna_db::Db;

use crate::util::*;

#[derive(Debug)]
enum Op {
    Push { name: String, src: usize },
    Tag { src: String, new: String },
    Rm { name: String },
    Gc,
    Reindex,
}

#[test]
fn killed_commands_never_lose_or_corrupt_anything() {
    let rounds: usize = std::env::var("VDNA_DB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let h = tmp();
    let home = h.path();
    ok(home, &["init"]);
    let sources = [
        fixture("checker", "histogram-1000"),
        fixture("gradients", "histogram-1000"),
        fixture("checker", "histogram-100"),
        fixture("gradients", "histogram-100"),
    ];
    // name -> digest, as the store must have it.
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    let mut rng = vdna_db::synth::Rng::new(42);
    let (mut killed, mut completed) = (0, 0);
    for round in 0..rounds {
        let names: Vec<String> = model.keys().cloned().collect();
        let any =
            |rng: &mut vdna_db::synth::Rng| names[rng.below(names.len() as u64) as usize].clone();
        let op = match rng.below(10) {
            0..=4 => Op::Push {
                name: format!("n{}:latest", rng.below(5)),
                src: rng.below(sources.len() as u64) as usize,
            },
            5 if !names.is_empty() => Op::Tag {
                src: any(&mut rng),
                new: format!("t{}:latest", rng.below(3)),
            },
            6 | 7 if !names.is_empty() => Op::Rm {
                name: any(&mut rng),
            },
            8 => Op::Gc,
            _ => Op::Reindex,
        };
        let mut cmd = bin();
        cmd.arg("--home").arg(home).arg("--json");
        match &op {
            Op::Push { name, src } => {
                cmd.args(["push", sources[*src].to_str().unwrap(), "--name", name]);
            }
            Op::Tag { src, new } => {
                cmd.args(["tag", src, new]);
            }
            Op::Rm { name } => {
                cmd.args(["rm", name]);
            }
            Op::Gc => {
                cmd.args(["gc", "--grace", "0"]);
            }
            Op::Reindex => {
                cmd.args(["reindex", "--graphs-min", "1"]);
            }
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(250)));
        let done = child.try_wait().unwrap().is_some();
        if !done {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let success = done && out.status.success();
        if success {
            completed += 1;
        } else {
            killed += 1;
        }
        // Reopen (the killed process's lock is gone with it) and check.
        let db = Db::open(home).unwrap_or_else(|e| panic!("round {round} ({op:?}): {e:#}"));
        let now = crate::util::names(&db);
        match &op {
            Op::Push { name, .. } => {
                if success {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    let d = v["digest"].as_str().unwrap().to_string();
                    assert_eq!(now.get(name), Some(&d), "round {round}: reported push lost");
                    model.insert(name.clone(), d);
                } else if now.get(name) != model.get(name) {
                    // A killed push either took effect (a new, complete DNA) or did not.
                    model.insert(name.clone(), now[name].clone());
                }
            }
            Op::Tag { src, new } => {
                let d = model[src].clone();
                if success || now.get(new) == Some(&d) {
                    model.insert(new.clone(), d);
                }
            }
            Op::Rm { name } => {
                if success || !now.contains_key(name) {
                    model.remove(name);
                }
            }
            Op::Gc | Op::Reindex => {}
        }
        assert_eq!(now, model, "round {round} ({op:?}, success {success})");
        let v = db.verify().unwrap();
        assert!(
            v.problems.is_empty(),
            "round {round} ({op:?}): {:?}",
            v.problems
        );
        for d in model.values() {
            db.open_dna(&d.parse().unwrap())
                .and_then(|dna| dna.load())
                .unwrap_or_else(|e| panic!("round {round}: {d}: {e:#}"));
        }
        // Queries agree with the oracle, whatever state a kill left the index in.
        if round % 4 == 0 && !model.is_empty() {
            let any = model.values().next().unwrap().parse().unwrap();
            let q = AnyDna::Stored(db.open_dna(&any).unwrap());
            let req = QueryRequest {
                k: 3,
                ..Default::default()
            };
            let got = query(&db, &q, &req).unwrap();
            let want = brute_force(&db, &q, &req).unwrap();
            let g: Vec<f64> = got.results.iter().map(|h| h.distance).collect();
            let w: Vec<f64> = want.iter().map(|h| h.0).collect();
            assert_eq!(g.len(), w.len(), "round {round}");
            for (a, b) in g.iter().zip(&w) {
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-9), "round {round}");
            }
        }
    }
    eprintln!("crash campaign: {rounds} rounds, {killed} killed mid-command, {completed} completed, nothing lost");
    assert!(
        killed > 0 && completed > 0,
        "{killed} killed, {completed} completed"
    );
}
