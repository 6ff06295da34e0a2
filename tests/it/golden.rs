//! Distances against the reference library's own output (fixtures/reference-distances.json,
//! written by vdna 0.1.1), and round trips through the reference format.

use std::collections::BTreeMap;

use vdna_db::db::{compare_dnas, AnyDna};
use vdna_db::distance::Metric;
use vdna_db::engine::export_reference;
use vdna_db::mask::Mask;
use vdna_db::reference::import_pair;

use crate::util::*;

fn golden() -> serde_json::Value {
    let s = std::fs::read_to_string(root().join("fixtures/reference-distances.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn none(_: &str) -> Option<String> {
    None
}

/// EMD is computed in f64 by both: agree to 1e-9. NFD on gaussian DNAs is f32 in the
/// reference: agree to 1e-5.
fn tolerance(metric: &str) -> f64 {
    if metric == "emd" {
        1e-9
    } else {
        1e-5
    }
}

#[test]
fn distances_equal_the_reference_library_all_per_layer_and_single_neurons() {
    let g = golden();
    let pairs = g["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 3);
    for p in pairs {
        let (metric, dist) = (p["metric"].as_str().unwrap(), p["dist"].as_str().unwrap());
        let a = AnyDna::Owned(
            import_pair(&fixture(p["a"].as_str().unwrap(), dist))
                .unwrap()
                .dna,
        );
        let b = AnyDna::Owned(
            import_pair(&fixture(p["b"].as_str().unwrap(), dist))
                .unwrap()
                .dna,
        );
        let space = a.space().clone();
        let m = Metric::parse(metric);
        let tol = tolerance(metric);
        let all = compare_dnas(&a, &b, &Mask::all(&space), m, 0).unwrap();
        let want = p["all"].as_f64().unwrap();
        assert!(
            rel(all.distance, want) < tol,
            "{dist} all: {} vs reference {want}",
            all.distance
        );
        // The per-layer breakdown of the all-neurons comparison equals per-layer masks.
        for (layer, v) in p["per_layer"].as_object().unwrap() {
            let mask = Mask::parse(layer, &space, &none).unwrap();
            let c = compare_dnas(&a, &b, &mask, m, 0).unwrap();
            let want = v.as_f64().unwrap();
            assert!(
                rel(c.distance, want) < tol,
                "{dist} {layer}: {} vs {want}",
                c.distance
            );
            let from_all = all.per_layer.iter().find(|l| &l.layer == layer).unwrap();
            assert!(rel(from_all.distance, want) < tol);
        }
        for (key, v) in p["neurons"].as_object().unwrap() {
            let (layer, idx) = key.split_once('#').unwrap();
            let mask = Mask::parse(&format!("{layer}:{idx}"), &space, &none).unwrap();
            let c = compare_dnas(&a, &b, &mask, m, 0).unwrap();
            let want = v.as_f64().unwrap();
            let ok = rel(c.distance, want) < tol || (c.distance - want).abs() < 1e-9;
            assert!(ok, "{dist} {key}: {} vs {want}", c.distance);
        }
    }
}

#[test]
fn self_distances_are_zero_as_in_the_reference() {
    let g = golden();
    for (k, sets) in g["self_distances"].as_object().unwrap() {
        for (set, v) in sets.as_object().unwrap() {
            assert_eq!(
                v.as_f64().unwrap(),
                0.0,
                "reference self distance {k} {set}"
            );
        }
    }
    for dist in ["histogram-100", "gaussian"] {
        let a = AnyDna::Owned(import_pair(&fixture("checker", dist)).unwrap().dna);
        let c = compare_dnas(&a, &a, &Mask::all(a.space()), None, 0).unwrap();
        assert_eq!(c.distance, 0.0);
    }
}

#[test]
fn cli_compare_json_matches_the_reference() {
    let h = tmp();
    let home = h.path();
    let g = golden();
    let p = &g["pairs"][1]; // histogram-100
    assert_eq!(p["dist"], "histogram-100");
    let a = fixture("gradients", "histogram-100");
    let b = fixture("checker", "histogram-100");
    ok(
        home,
        &["import", a.to_str().unwrap(), "--name", "gradients:h100"],
    );
    // One side stored, the other read from files.
    let v = json(
        home,
        &[
            "compare",
            "gradients:h100",
            b.to_str().unwrap(),
            "--per-layer",
            "--top-neurons",
            "3",
        ],
    );
    assert_eq!(v["metric"], "emd");
    assert_eq!(v["neurons"], 15104);
    assert!(rel(v["distance"].as_f64().unwrap(), p["all"].as_f64().unwrap()) < 1e-9);
    for (layer, want) in p["per_layer"].as_object().unwrap() {
        assert!(
            rel(
                v["per_layer"][layer].as_f64().unwrap(),
                want.as_f64().unwrap()
            ) < 1e-9,
            "{layer}"
        );
    }
    let top = v["top_neurons"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert!(top[0]["distance"].as_f64().unwrap() >= top[2]["distance"].as_f64().unwrap());
    // The neuron-level golden values hold through a layer:index mask on the CLI too.
    for (key, want) in p["neurons"].as_object().unwrap() {
        let mask = key.replace('#', ":");
        let v = json(
            home,
            &[
                "compare",
                "gradients:h100",
                b.to_str().unwrap(),
                "--mask",
                &mask,
            ],
        );
        let got = v["distance"].as_f64().unwrap();
        assert!(
            rel(got, want.as_f64().unwrap()) < 1e-9 || (got - want.as_f64().unwrap()).abs() < 1e-9,
            "{key}"
        );
    }
}

#[test]
fn reference_round_trip_keeps_every_array_identical() {
    let h = tmp();
    let lg = root().join("fixtures/layer-gaussian/a");
    for (dist, path) in [
        ("histogram-100", fixture("gradients", "histogram-100")),
        ("gaussian", fixture("gradients", "gaussian")),
        ("layer-gaussian", lg),
    ] {
        let src = import_pair(&path).unwrap();
        let out = h.path().join(format!("rt-{dist}"));
        export_reference(&src.dna, &src.annotations, &out).unwrap();
        let back = import_pair(&out).unwrap();
        assert_eq!(
            back.dna, src.dna,
            "{dist}: arrays differ after export + import"
        );
        assert_eq!(
            back.dna.encode(3).manifest_digest,
            src.dna.encode(3).manifest_digest
        );
    }
}

#[test]
fn exported_npz_has_the_original_arrays_for_an_independent_reader() {
    // An independent reader: a Python script on the standard library (zipfile + npy headers).
    let h = tmp();
    let home = h.path().join("store");
    for dist in ["histogram-100", "gaussian"] {
        let src = fixture("checker", dist);
        ok(
            &home,
            &[
                "import",
                src.to_str().unwrap(),
                "--name",
                &format!("c:{dist}"),
            ],
        );
        let out = h.path().join(format!("exported-{dist}"));
        ok(
            &home,
            &[
                "export",
                &format!("c:{dist}"),
                "--format",
                "reference",
                "-o",
                out.to_str().unwrap(),
            ],
        );
        let o = std::process::Command::new("python3")
            .arg(root().join("tests/py/check_export.py"))
            .arg(src.with_extension("npz"))
            .arg(out.with_extension("npz"))
            .arg(out.with_extension("json"))
            .output()
            .expect("python3 runs");
        assert!(
            o.status.success(),
            "independent check of {dist} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn bundle_round_trip_through_the_cli_keeps_the_digest() {
    let h = tmp();
    let (a, b) = (h.path().join("a"), h.path().join("b"));
    let src = fixture("gradients", "histogram-100");
    let pushed = json(
        &a,
        &[
            "push",
            src.to_str().unwrap(),
            "--name",
            "grad",
            "--meta",
            "split=val",
        ],
    );
    let bundle = h.path().join("grad.vdna");
    ok(&a, &["export", "grad", "-o", bundle.to_str().unwrap()]);
    let imported = json(
        &b,
        &["import", bundle.to_str().unwrap(), "--name", "grad:copy"],
    );
    assert_eq!(pushed["digest"], imported["digest"]);
    let shown = json(&b, &["show", "grad:copy"]);
    assert_eq!(
        shown["annotations"]["split"], "val",
        "annotations travel in the bundle"
    );
    let mut ann = BTreeMap::new();
    ann.insert("x".to_string(), "y".to_string());
    let dna = import_pair(&src).unwrap().dna;
    let one = vdna_db::db::bundle_of(&dna, &BTreeMap::new(), 1);
    let two = vdna_db::db::bundle_of(&dna, &ann, 19);
    let d1 = vdna_db::format::decode_bundle(&one)
        .unwrap()
        .manifest_digest;
    let d2 = vdna_db::format::decode_bundle(&two)
        .unwrap()
        .manifest_digest;
    assert_eq!(d1, d2, "digest independent of level and annotations");
}

/// FD and NFD on layer-gaussian DNAs against values numpy computed independently
/// (tests/py/make_layer_gaussian_golden.py: eigenvalues of the non-symmetric S1 S2, while
/// vdna-db uses the symmetric S1^1/2 S2 S1^1/2), a rank-deficient layer included.
#[test]
fn fd_and_nfd_on_layer_gaussians_equal_an_independent_numpy_computation() {
    let dir = root().join("fixtures/layer-gaussian");
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("distances.json")).unwrap())
            .unwrap();
    let a = AnyDna::Owned(import_pair(&dir.join("a")).unwrap().dna);
    let b = AnyDna::Owned(import_pair(&dir.join("b")).unwrap().dna);
    let space = a.space().clone();
    let all = Mask::all(&space);
    let fd = compare_dnas(&a, &b, &all, Some(Metric::Fd), 0).unwrap();
    assert!(
        rel(fd.distance, g["fd_all"].as_f64().unwrap()) < 1e-6,
        "fd {}",
        fd.distance
    );
    for l in &fd.per_layer {
        let want = g["fd_per_layer"][&l.layer].as_f64().unwrap();
        assert!(
            rel(l.distance, want) < 1e-6,
            "fd {}: {} vs {want}",
            l.layer,
            l.distance
        );
    }
    let nfd = compare_dnas(&a, &b, &all, None, 0).unwrap();
    assert_eq!(
        nfd.metric,
        Metric::Nfd,
        "nfd is the default for layer-gaussian"
    );
    assert!(rel(nfd.distance, g["nfd_all"].as_f64().unwrap()) < 1e-9);
    for l in &nfd.per_layer {
        assert!(
            rel(l.distance, g["nfd_per_layer"][&l.layer].as_f64().unwrap()) < 1e-9,
            "nfd {}",
            l.layer
        );
    }
    // FD is symmetric and zero on itself.
    let ba = compare_dnas(&b, &a, &all, Some(Metric::Fd), 0).unwrap();
    assert!(rel(ba.distance, fd.distance) < 1e-9);
    let aa = compare_dnas(&a, &a, &all, Some(Metric::Fd), 0).unwrap();
    // Zero up to the rounding of square roots of near-zero eigenvalues (rank-deficient layer).
    assert!(aa.distance.abs() < 1e-6, "self fd {}", aa.distance);
}
