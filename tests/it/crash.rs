//! Crash-safety smoke test: pushes killed at random moments never leave a name pointing
//! to a missing or partial blob. (The long campaign is `VDNA_DB_CRASH_ROUNDS=1000`.)

use std::time::Duration;

use crate::util::*;

#[test]
fn killed_pushes_never_leave_a_dangling_ref() {
    let rounds: usize = std::env::var("VDNA_DB_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let h = tmp();
    let home = h.path();
    ok(home, &["init"]);
    let sources = [
        fixture("checker", "histogram-1000"),
        fixture("gradients", "histogram-100"),
        fixture("checker", "gaussian"),
    ];
    let mut rng = vdna_db::synth::Rng::new(42);
    let mut completed = Vec::new();
    for round in 0..rounds {
        let src = &sources[round % sources.len()];
        let name = format!("r{round}");
        let mut child = bin()
            .arg("--home")
            .arg(home)
            .args(["push", src.to_str().unwrap(), "--name", &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let finished = child.try_wait().unwrap().is_some_and(|s| s.success());
        let _ = child.kill();
        let _ = child.wait();
        if finished {
            completed.push(name);
        }
        // After every kill: each name resolves to a complete, valid DNA.
        let v = json(home, &["verify"]);
        assert_eq!(
            v["problems"].as_array().unwrap().len(),
            0,
            "round {round}: {v}"
        );
    }
    let ls = json(home, &["ls"]);
    let names: Vec<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    for c in &completed {
        assert!(names.contains(c), "push {c} reported success but is gone");
    }
    ok(home, &["gc"]);
    assert_eq!(
        json(home, &["verify"])["problems"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
