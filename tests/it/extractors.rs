//! The reference-compatible extractors checked against the reference library's own PyTorch
//! modules (vdna 0.1.1) run on seeded random weights: tiny configurations whose weights
//! and outputs are committed (tools/golden_vit.py), and the full-size networks in a slow
//! test that reads files the same scripts write (`VDNA_FULL_GOLDEN=DIR`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use vdna_db::extract::{Extractor, ExtractorKind};

use crate::util::root;

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/extract").join(name)
}

fn load_golden(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Runs `kind` with `weights` on the golden input and compares every recorded layer with
/// the golden tensors (`(N, tokens, dim)` or NHWC): each value within 1e-4 of the layer's largest
/// magnitude (float32 in two summation orders).
fn check_against_golden(kind: ExtractorKind, weights: &Path, golden: &Path) {
    let g = load_golden(golden);
    let ext = Extractor::load(kind, Some(weights), 0).unwrap();
    let outs = ext.forward(&g["input"]).unwrap();
    assert_eq!(outs.len(), ext.layers().len());
    for (l, out) in ext.layers().iter().zip(&outs) {
        let want = &g[&l.name];
        // Token outputs are (N, tokens, dim) in the golden, (N, tokens, 1, dim) here.
        let shape = match want.dims() {
            &[n, t, c] => vec![n, t, 1, c],
            d => d.to_vec(),
        };
        assert_eq!(out.dims(), &shape[..], "{} {}", kind.name(), l.name);
        assert_eq!(l.neurons as usize, shape[3]);
        let (got, want) = (values(out), values(want));
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs())) as f64;
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{} {}: max abs difference {worst:.3e}, {:.2e} of the scale {scale:.3}",
            kind.name(),
            l.name,
            worst / scale
        );
        assert!(
            worst <= 1e-4 * scale,
            "{} {}: max abs difference {worst} vs scale {scale}",
            kind.name(),
            l.name
        );
    }
}

#[test]
fn mugs_and_dino_vit_match_the_reference_modules_on_a_tiny_configuration() {
    for kind in [ExtractorKind::MugsVitBase, ExtractorKind::DinoVitBase] {
        check_against_golden(
            kind,
            &fixture("vit-tiny.pth"),
            &fixture("vit-tiny-golden.safetensors"),
        );
    }
}

#[test]
fn clip_vit_matches_the_reference_module_on_a_tiny_configuration() {
    check_against_golden(
        ExtractorKind::ClipVitB16,
        &fixture("clip-tiny.pth"),
        &fixture("clip-tiny-golden.safetensors"),
    );
}

#[test]
fn vgg16_matches_the_reference_module_on_a_reduced_width_configuration() {
    check_against_golden(
        ExtractorKind::Vgg16,
        &fixture("vgg-tiny.pth"),
        &fixture("vgg-tiny-golden.safetensors"),
    );
}

/// The portable generator of tools/golden_inception.py: the FID Inception's tensors
/// (names and shapes from the fixture) with values from SplitMix64 over
/// `fnv1a64(name) ^ index`, written as safetensors.
fn portable_inception_weights(path: &Path) {
    let fnv = |s: &str| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let uniform = |seed: u64, i: u64| {
        let mut z = (seed ^ i).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f64 / 16_777_216.0 * 2.0 - 1.0
    };
    let shapes: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixture("inception-shapes.json")).unwrap()).unwrap();
    let mut map = HashMap::new();
    for (name, shape) in shapes {
        let shape: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let n: usize = shape.iter().product();
        let seed = fnv(&name);
        let v: Vec<f32> = (0..n as u64)
            .map(|i| {
                let u = uniform(seed, i);
                let x = if name.ends_with("conv.weight") || name == "fc.weight" {
                    u * (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt()
                } else if name.ends_with("bn.weight") {
                    1.0 + 0.2 * u
                } else if name.ends_with("bn.bias") || name.ends_with("running_mean") {
                    0.2 * u
                } else if name.ends_with("running_var") {
                    1.0 + 0.5 * (u + 1.0)
                } else {
                    0.1 * u
                };
                x as f32
            })
            .collect();
        map.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    }
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn fid_inception_matches_the_reference_module_on_a_small_input() {
    let dir = crate::util::tmp();
    let w = dir.path().join("inception.safetensors");
    portable_inception_weights(&w);
    check_against_golden(
        ExtractorKind::Inception,
        &w,
        &fixture("inception-75-golden.safetensors"),
    );
    let ext = Extractor::load(ExtractorKind::Inception, Some(&w), 0).unwrap();
    let widths: Vec<u32> = ext.layers().iter().map(|l| l.neurons).collect();
    assert_eq!(widths, vec![64, 192, 768, 2048]);
}

/// Full-size networks (ViT-B/16 Mugs / DINO and CLIP, VGG16; the FID Inception at 299x299)
/// against the reference's modules. Slow (checkpoints of 60-350 MB made by scripts): run
/// `python tools/golden_{vit,clip,vgg16}.py full DIR` and
/// `python tools/golden_inception.py 299 DIR`, then
/// `VDNA_FULL_GOLDEN=DIR cargo test --release --test it full_size -- --ignored`.
#[test]
#[ignore = "needs VDNA_FULL_GOLDEN=DIR written by tools/golden_*.py (see the doc comment)"]
fn full_size_networks_match_the_reference_modules() {
    let dir = PathBuf::from(std::env::var("VDNA_FULL_GOLDEN").expect("VDNA_FULL_GOLDEN=DIR"));
    check_against_golden(
        ExtractorKind::MugsVitBase,
        &dir.join("vit-base.pth"),
        &dir.join("vit-base-golden.safetensors"),
    );
    check_against_golden(
        ExtractorKind::ClipVitB16,
        &dir.join("clip-base.pth"),
        &dir.join("clip-base-golden.safetensors"),
    );
    check_against_golden(
        ExtractorKind::Vgg16,
        &dir.join("vgg-base.pth"),
        &dir.join("vgg-base-golden.safetensors"),
    );
    let tmp = crate::util::tmp();
    let w = tmp.path().join("inception.safetensors");
    portable_inception_weights(&w);
    check_against_golden(
        ExtractorKind::Inception,
        &w,
        &dir.join("inception-299-golden.safetensors"),
    );
}

/// Writes the tiny ViT state dict with one tensor changed by `edit` as safetensors.
fn edited_vit(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut sd: HashMap<String, Tensor> =
        candle_core::pickle::read_all_with_key(fixture("vit-tiny.pth"), Some("state_dict"))
            .unwrap()
            .into_iter()
            .collect();
    edit(&mut sd);
    let p = dir.join("edited.safetensors");
    candle_core::safetensors::save(&sd, &p).unwrap();
    p
}

#[test]
fn weight_files_with_missing_or_misshaped_tensors_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = edited_vit(dir.path(), |sd| {
        sd.remove("blocks.1.mlp.fc2.bias");
    });
    let e = Extractor::load(ExtractorKind::MugsVitBase, Some(&p), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing tensor blocks.1.mlp.fc2.bias"), "{e}");

    let p = edited_vit(dir.path(), |sd| {
        let t = Tensor::zeros((128, 129), candle_core::DType::F32, &Device::Cpu).unwrap();
        sd.insert("blocks.0.attn.proj.weight".into(), t);
    });
    let e = Extractor::load(ExtractorKind::DinoVitBase, Some(&p), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("blocks.0.attn.proj.weight") && e.contains("[128, 129]"),
        "{e}"
    );

    // Keys the network does not use (Mugs' relation blocks) do not change the digest.
    let a = Extractor::load(
        ExtractorKind::MugsVitBase,
        Some(&fixture("vit-tiny.pth")),
        0,
    )
    .unwrap();
    let p = edited_vit(dir.path(), |sd| {
        sd.retain(|k, _| !k.starts_with("relation_"))
    });
    let b = Extractor::load(ExtractorKind::MugsVitBase, Some(&p), 0).unwrap();
    assert_eq!(a.weights_digest(), b.weights_digest());

    // The ViTs have no built-in weights: the error says what to pass.
    let e = Extractor::load(ExtractorKind::MugsVitBase, None, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--weights"), "{e}");
}

#[test]
fn vit_input_of_the_wrong_size_is_refused() {
    let ext = Extractor::load(
        ExtractorKind::MugsVitBase,
        Some(&fixture("vit-tiny.pth")),
        0,
    )
    .unwrap();
    let x = Tensor::zeros((1, 64, 64, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = ext.forward(&x).err().unwrap().to_string();
    assert!(e.contains("input size"), "{e}");
}

#[test]
fn a_tiny_vit_extracts_dnas_end_to_end_and_histograms_ask_for_ranges() {
    let dir = crate::util::tmp();
    let home = dir.path().join("home");
    let (imgs, w) = (root().join("fixtures/images"), fixture("vit-tiny.pth"));
    let (imgs, w) = (imgs.to_str().unwrap(), w.to_str().unwrap());
    let out = dir.path().join("g.vdna");
    let base = ["--extractor", "mugs_vit_base", "--weights", w];
    let mut args = vec!["extract", imgs, "-o", out.to_str().unwrap()];
    args.extend(base);
    args.extend(["--dist", "gaussian"]);
    let v = crate::util::json(&home, &args);
    assert!(v["report"]["images"].as_u64().unwrap() > 0, "{v}");

    // No shipped ranges for these weights: the error says how to get them.
    let mut args = vec!["extract", imgs, "-o", out.to_str().unwrap()];
    args.extend(base);
    args.extend(["--dist", "histogram-50"]);
    let o = crate::util::run(&home, &args);
    assert!(!o.status.success());
    let e = crate::util::stderr(&o);
    assert!(
        e.contains("--ranges") && e.contains("vdna-db ranges"),
        "{e}"
    );

    let ranges = dir.path().join("r.json");
    let mut args = vec!["ranges", imgs, "-o", ranges.to_str().unwrap()];
    args.extend(base);
    crate::util::ok(&home, &args);
    let mut args = vec!["extract", imgs, "-o", out.to_str().unwrap()];
    args.extend(base);
    args.extend([
        "--dist",
        "histogram-50",
        "--ranges",
        ranges.to_str().unwrap(),
    ]);
    crate::util::ok(&home, &args);
}

#[test]
fn dino_resnet50_is_the_rand_resnet50_backbone_with_weights_from_a_file() {
    let dir = crate::util::tmp();
    let w = dir.path().join("w.safetensors");
    std::fs::write(&w, vdna_db::extract::resnet::seeded_safetensors(3).unwrap()).unwrap();
    let a = Extractor::load(ExtractorKind::DinoResNet50, Some(&w), 0).unwrap();
    let b = Extractor::load(ExtractorKind::RandResNet50, None, 3).unwrap();
    assert_eq!(a.weights_digest(), b.weights_digest());
    assert_eq!(a.layers(), b.layers());
    let x = Tensor::randn(0f32, 1.0, (1, 64, 64, 3), &Device::Cpu).unwrap();
    let (ya, yb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
    assert_eq!(values(&ya[15]), values(&yb[15]));
    let e = Extractor::load(ExtractorKind::DinoResNet50, None, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--weights"), "{e}");
}

#[test]
fn imported_reference_dnas_pin_to_their_weights_and_ranges_and_then_compare() {
    let dir = crate::util::tmp();
    let home = dir.path().join("home");
    let w = dir.path().join("w.safetensors");
    let (w, imgs) = (w.to_str().unwrap(), root().join("fixtures/images"));
    let imgs = imgs.to_str().unwrap();
    crate::util::ok(&home, &["weights", "rand_resnet50", "-o", w]);
    let ranges = root().join("assets/ranges/rand_resnet50-seed0.json");
    let ranges = ranges.to_str().unwrap();
    let pair = root().join("fixtures/extract/rand_resnet50/histogram-100.json");
    let pair = pair.to_str().unwrap();
    let here = [
        "--extractor",
        "rand_resnet50",
        "--weights",
        w,
        "--ranges",
        ranges,
        "--dist",
        "histogram-100",
    ];

    // Unpinned: comparing with a DNA extracted here is refused, saying how to pin.
    crate::util::ok(&home, &["import", pair, "--name", "ref:unpinned"]);
    let mut args = vec!["compare", "ref:unpinned", imgs];
    args.extend(here);
    let o = crate::util::run(&home, &args);
    assert_eq!(o.status.code(), Some(1));
    let e = crate::util::stderr(&o);
    assert!(e.contains("--weights and --ranges"), "{e}");

    // Pinned to the files it was made with: it compares, and is close (the reference's
    // own pipeline on the same images; bin-edge ties aside the histograms agree).
    let mut args = vec!["import", pair, "--name", "ref:pinned"];
    args.extend(&here[2..6]);
    crate::util::ok(&home, &args);
    let mut args = vec!["compare", "ref:pinned", imgs];
    args.extend(here);
    let v = crate::util::json(&home, &args);
    let d = v["distance"].as_f64().unwrap_or_else(|| panic!("{v}"));
    assert!((0.0..0.05).contains(&d), "{v}");

    // Wrong files are refused naming what differs.
    let tiny = fixture("vit-tiny.pth");
    let o = crate::util::run(
        &home,
        &[
            "import",
            pair,
            "--weights",
            tiny.to_str().unwrap(),
            "--ranges",
            ranges,
        ],
    );
    assert!(!o.status.success());
    assert!(crate::util::stderr(&o).contains("missing tensor conv1.weight"));
    let o = crate::util::run(&home, &["import", pair, "--weights", w]);
    assert!(!o.status.success());
    assert!(crate::util::stderr(&o).contains("--ranges FILE"));
}
