//! The CLI end to end: names, tags, masks, gc, verify, and every bad input named in the
//! error with nothing stored lost.

use crate::util::*;

fn push_fixture(home: &std::path::Path, set: &str, dist: &str, name: &str) -> serde_json::Value {
    json(
        home,
        &["push", fixture(set, dist).to_str().unwrap(), "--name", name],
    )
}

#[test]
fn push_ls_show_tag_rm_gc_keep_the_catalogue_consistent() {
    let h = tmp();
    let home = h.path();
    let p = push_fixture(home, "gradients", "histogram-100", "grad");
    let digest = p["digest"].as_str().unwrap().to_string();
    assert_eq!(p["ref"], "grad:latest");
    assert_eq!(p["images"], 24);
    // Pushing the same DNA again stores no new object.
    let again = push_fixture(home, "gradients", "histogram-100", "grad:v2");
    assert_eq!(again["digest"], p["digest"]);
    assert_eq!(again["new_objects"], 0);
    let ls = json(home, &["ls"]);
    let refs: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, vec!["grad:latest", "grad:v2"]);
    let show = json(home, &["show", "grad"]);
    assert_eq!(show["digest"], digest.as_str());
    assert_eq!(show["layers"].as_array().unwrap().len(), 16);
    // A digest prefix resolves.
    let short = &digest[..19];
    assert_eq!(json(home, &["show", short])["digest"], digest.as_str());
    ok(home, &["tag", "grad:v2", "team/gradients:2026"]);
    ok(home, &["rm", "grad"]);
    ok(home, &["rm", "grad:v2"]);
    // Still referenced by team/gradients: gc removes nothing.
    let gc = json(home, &["gc"]);
    assert_eq!(gc["objects_removed"], 0);
    ok(home, &["rm", "team/gradients:2026"]);
    // Unreachable now, but younger than the default grace period: spared.
    let gc = json(home, &["gc"]);
    assert_eq!(gc["objects_removed"], 0);
    assert_eq!(gc["objects_recent"], 18);
    let gc = json(home, &["gc", "--grace", "0"]);
    assert_eq!(gc["objects_removed"], 18, "manifest + space + 16 layers");
    assert_eq!(
        json(home, &["verify"])["problems"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn gc_never_removes_a_referenced_blob() {
    let h = tmp();
    let home = h.path();
    push_fixture(home, "gradients", "histogram-100", "a");
    push_fixture(home, "checker", "histogram-100", "b");
    ok(home, &["rm", "a"]);
    ok(home, &["gc", "--grace", "0"]);
    let v = json(home, &["verify"]);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    // b is intact and comparable.
    let c = json(home, &["compare", "b", "b"]);
    assert_eq!(c["distance"], 0.0);
}

#[test]
fn named_masks_are_usable_everywhere() {
    let h = tmp();
    let home = h.path();
    push_fixture(home, "gradients", "histogram-100", "g");
    push_fixture(home, "checker", "histogram-100", "c");
    ok(home, &["mask", "add", "deep", "layer4_*"]);
    let ls = json(home, &["mask", "ls"]);
    assert_eq!(ls[0]["name"], "deep");
    let a = json(home, &["compare", "g", "c", "--mask", "@deep"]);
    let b = json(
        home,
        &["compare", "g", "c", "--mask", "layer4_0 layer4_1 layer4_2"],
    );
    assert_eq!(a["distance"], b["distance"]);
    assert_eq!(a["neurons"], 6144);
    let bad = run(home, &["mask", "add", "oops", "layer9_*"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("layer9_*"), "{}", stderr(&bad));
    ok(home, &["mask", "rm", "deep"]);
    let gone = run(home, &["compare", "g", "c", "--mask", "@deep"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("mask ls"));
}

#[test]
fn bad_inputs_get_clear_errors_and_exit_1() {
    let h = tmp();
    let home = h.path().join("s");
    push_fixture(&home, "gradients", "histogram-100", "g");
    push_fixture(&home, "gradients", "gaussian", "gg");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["compare".into(), "g".into(), "gg".into()],
            "different spaces",
        ),
        (
            vec!["compare".into(), "g".into(), "nope".into()],
            "no DNA named nope:latest",
        ),
        (
            vec![
                "compare".into(),
                "g".into(),
                "g".into(),
                "--mask".into(),
                "layer1_0:999".into(),
            ],
            "out of range",
        ),
        (
            vec![
                "compare".into(),
                "g".into(),
                "g".into(),
                "--mask".into(),
                "lyr*".into(),
            ],
            "no layer matches",
        ),
        (
            vec!["tag".into(), "g".into(), "Bad Name".into()],
            "invalid reference",
        ),
        (
            vec![
                "compare".into(),
                "g".into(),
                "g".into(),
                "--metric".into(),
                "nfd".into(),
            ],
            "does not apply",
        ),
        (
            vec![
                "import".into(),
                h.path().join("missing.json").to_str().unwrap().into(),
            ],
            "missing.json",
        ),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = run(&home, &a);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: expected {needle:?} in {}",
            stderr(&o)
        );
    }
    // Nothing stored was touched.
    assert_eq!(
        json(&home, &["verify"])["problems"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(json(&home, &["ls"]).as_array().unwrap().len(), 2);
}

#[test]
fn malformed_reference_files_are_refused_by_name() {
    let h = tmp();
    let home = h.path().join("s");
    let d = h.path();
    let src = fixture("gradients", "histogram-100");
    // neurons_list that does not match the npz.
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.with_extension("json")).unwrap())
            .unwrap();
    meta["neurons_list"]["layer1_0"] = serde_json::json!(255);
    std::fs::write(d.join("shape.json"), meta.to_string()).unwrap();
    std::fs::copy(src.with_extension("npz"), d.join("shape.npz")).unwrap();
    let o = run(&home, &["import", d.join("shape.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("shape") && stderr(&o).contains("layer1_0"),
        "{}",
        stderr(&o)
    );
    // A truncated npz.
    let bytes = std::fs::read(src.with_extension("npz")).unwrap();
    std::fs::copy(src.with_extension("json"), d.join("trunc.json")).unwrap();
    std::fs::write(d.join("trunc.npz"), &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&home, &["import", d.join("trunc").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("trunc.npz"), "{}", stderr(&o));
    // Broken json.
    std::fs::write(d.join("broken.json"), "{\"type\": ").unwrap();
    std::fs::copy(src.with_extension("npz"), d.join("broken.npz")).unwrap();
    let o = run(&home, &["import", d.join("broken.json").to_str().unwrap()]);
    assert!(stderr(&o).contains("not valid JSON"), "{}", stderr(&o));
}

#[test]
fn corrupt_and_truncated_bundles_are_refused_and_store_untouched() {
    let h = tmp();
    let (a, b) = (h.path().join("a"), h.path().join("b"));
    push_fixture(&a, "gradients", "histogram-100", "g");
    let bundle = h.path().join("g.vdna");
    ok(&a, &["export", "g", "-o", bundle.to_str().unwrap()]);
    push_fixture(&b, "checker", "histogram-100", "c");
    let bytes = std::fs::read(&bundle).unwrap();
    let mut flipped = bytes.clone();
    let at = bytes.len() - 1000;
    flipped[at] ^= 0x40;
    let mut wrong_version = bytes.clone();
    wrong_version[8] = 9;
    for (name, data, needle) in [
        (
            "trunc.vdna",
            bytes[..bytes.len() - 10].to_vec(),
            "truncated",
        ),
        ("flip.vdna", flipped, "bundle"),
        ("ver.vdna", wrong_version, "version 9"),
    ] {
        let p = h.path().join(name);
        std::fs::write(&p, data).unwrap();
        let o = run(&b, &["import", p.to_str().unwrap(), "--name", "x"]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(stderr(&o).contains(needle), "{name}: {}", stderr(&o));
    }
    let ls = json(&b, &["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(
        json(&b, &["verify"])["problems"].as_array().unwrap().len(),
        0
    );
}

#[test]
fn verify_reports_a_flipped_byte_and_reads_refuse_it() {
    let h = tmp();
    let home = h.path();
    push_fixture(home, "gradients", "histogram-100", "g");
    push_fixture(home, "checker", "histogram-100", "c");
    // Flip one byte in the largest object file.
    let mut files: Vec<_> = walk(&home.join("objects"));
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = files.last().unwrap().clone();
    let mut b = std::fs::read(&victim).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&victim, b).unwrap();
    let o = run(home, &["verify"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("BAD") && out.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{out}"
    );
    // A comparison that needs the damaged layer fails instead of answering wrongly.
    let c = run(home, &["compare", "g", "c"]);
    assert_ne!(c.status.code(), Some(0));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_second_process_gets_a_busy_error_not_a_hang() {
    let h = tmp();
    let home = h.path();
    ok(home, &["init"]);
    let db = vdna_db::Db::open(home).unwrap();
    let t = std::time::Instant::now();
    let o = run(home, &["ls", "--lock-wait", "0.3"]);
    assert_eq!(o.status.code(), Some(1));
    // It waited for the lock as long as asked, and not forever.
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    assert!(
        stderr(&o).contains("is busy: another vdna-db process holds it"),
        "{}",
        stderr(&o)
    );
    drop(db);
    ok(home, &["ls"]);
}

#[test]
fn help_teaches_the_mask_grammar() {
    let o = bin().arg("--help").output().unwrap();
    let s = stdout(&o);
    assert!(
        s.contains("layer3_2:17,40-59") && s.contains("@weather"),
        "{s}"
    );
}

#[test]
fn import_without_a_name_names_the_dna_after_its_file() {
    let h = tmp();
    let v = json(
        h.path(),
        &["import", fixture("checker", "gaussian").to_str().unwrap()],
    );
    assert_eq!(v["ref"], "checker-gaussian:latest");
    // Named, so gc keeps it.
    ok(h.path(), &["gc"]);
    assert_eq!(json(h.path(), &["show", "checker-gaussian"])["images"], 28);
}

/// Issue 12: a mask value that opens with an exclusion is a value, not a flag, for every
/// option that takes a mask (`--mask -l`, `--mask '-a b'`, `mask add NAME -l`), and it
/// selects the same neurons as the complement spelled out term by term.
#[test]
fn mask_values_opening_with_a_dash_are_accepted_everywhere() {
    let h = tmp();
    let home = h.path();
    ok(home, &demo_args("2", "2"));
    let q = "synth/family-01-00";
    let ranked = |v: &serde_json::Value| -> Vec<(String, f64)> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["ref"].as_str().unwrap().to_string(),
                    h["distance"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    // Separate value, `=` form, and the complement written out: the same answer.
    let sep = json(home, &["query", q, "--mask", "-layer1_*", "--top", "4"]);
    let eq = json(home, &["query", q, "--mask=-layer1_*", "--top", "4"]);
    let spelled = json(
        home,
        &[
            "query",
            q,
            "--mask",
            "layer2_* layer3_* layer4_*",
            "--top",
            "4",
        ],
    );
    assert_eq!(sep["neurons"], 15104 - 3 * 256, "{sep}");
    assert_eq!(ranked(&sep), ranked(&eq));
    assert_eq!(ranked(&sep), ranked(&spelled));
    // A spec of several terms opening with an exclusion, short option too.
    let two = json(
        home,
        &["query", q, "-m", "-layer1_* -layer2_0", "--top", "4"],
    );
    assert_eq!(two["neurons"], 15104 - 3 * 256 - 512, "{two}");
    // compare takes the same values.
    let c = json(
        home,
        &["compare", q, "synth/family-00-00", "--mask", "-layer1_*"],
    );
    let c2 = json(
        home,
        &[
            "compare",
            q,
            "synth/family-00-00",
            "--mask",
            "layer2_* layer3_* layer4_*",
        ],
    );
    assert_eq!(c["distance"], c2["distance"], "{c} vs {c2}");
    // A named mask whose spec opens with an exclusion.
    ok(home, &["mask", "add", "late", "-layer1_*"]);
    let named = json(home, &["query", q, "--mask", "@late", "--top", "4"]);
    assert_eq!(ranked(&named), ranked(&sep));
}
