//! Extraction checked against independent computations: an EfficientNet-Lite0 written
//! separately in PyTorch (tools/golden_efficientnet_lite0.py, outputs committed), Pillow's
//! resize, the reference library's own rand_resnet50 pipeline run on our seeded weights
//! (tools/golden_rand_resnet50.py), and the exact algebra of shards.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use vdna_db::dna::LayerData;
use vdna_db::extract::{
    self, preprocess, Crop, ExtractOptions, Extractor, ExtractorKind, Ranges, Selection,
};
use vdna_db::format::DistKind;

use crate::util::{self, root};

fn golden() -> Value {
    let p = root().join("fixtures/extract/efficientnet_lite0_golden.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn images() -> PathBuf {
    root().join("fixtures/images")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Preprocesses one fixture image into a `(1, 224, 224, 3)` tensor.
fn input(file: &str, kind: ExtractorKind) -> Tensor {
    let bytes = std::fs::read(images().join(file)).unwrap();
    let (mean, std) = kind.mean_std();
    let mut px = vec![0f32; 224 * 224 * 3];
    preprocess::preprocess(&bytes, Crop::None, 224, mean, std, &mut px).unwrap();
    Tensor::from_vec(px, (1, 224, 224, 3), &Device::Cpu).unwrap()
}

/// NHWC values of one image as `(C, H, W)`-indexed closure data.
fn chw(t: &Tensor) -> (usize, usize, usize, Vec<f32>) {
    let (_, h, w, c) = t.dims4().unwrap();
    (c, h, w, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

#[test]
fn efficientnet_lite0_matches_an_independent_pytorch_implementation() {
    let g = golden();
    let ext = Extractor::load(ExtractorKind::EfficientNetLite0, None, 0).unwrap();
    let names: Vec<String> = ext.layers().iter().map(|l| l.name.clone()).collect();
    for img in g["images"].as_array().unwrap() {
        let file = img["file"].as_str().unwrap();
        let x = input(file, ExtractorKind::EfficientNetLite0);
        let outs = ext.forward(&x).unwrap();
        let mut tensors = vec![("input".to_string(), x.clone())];
        tensors.extend(names.iter().cloned().zip(outs.iter().cloned()));
        for (name, t) in &tensors {
            let gl = &img["layers"][name];
            let (c, h, w, v) = chw(t);
            let shape = f64s(&gl["shape"]);
            assert_eq!(shape, vec![c as f64, h as f64, w as f64], "{file} {name}");
            // Tolerance: 1e-4 of the layer's activation scale (float32 through 17 layers
            // in two summation orders; the generator measured float32 vs float64 drift up
            // to 7.7e-5 in absolute terms).
            let scale = f64s(&gl["channel_max"])
                .iter()
                .fold(1.0f64, |m, x| m.max(x.abs()));
            let tol = 1e-4 * scale;
            let means = f64s(&gl["channel_mean"]);
            for ch in 0..c {
                let m: f64 = (0..h * w).map(|p| v[p * c + ch] as f64).sum::<f64>() / (h * w) as f64;
                assert!(
                    (m - means[ch]).abs() <= tol,
                    "{file} {name} mean[{ch}]: {m} vs {}",
                    means[ch]
                );
            }
            let want = f64s(&gl["values"]);
            let mut k = 0;
            for ch in (0..c).step_by((c / 16).max(1)) {
                for y in (0..h).step_by((h / 5).max(1)) {
                    for xx in (0..w).step_by((w / 5).max(1)) {
                        let got = v[(y * w + xx) * c + ch] as f64;
                        assert!(
                            (got - want[k]).abs() <= tol,
                            "{file} {name} c{ch} y{y} x{xx}: {got} vs {}",
                            want[k]
                        );
                        k += 1;
                    }
                }
            }
            assert_eq!(k, want.len(), "{file} {name}: sample count");
        }
        // Classification: same top-5 classes, logits within 1e-3.
        let logits = ext.classify(&x).unwrap().unwrap();
        let l = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
        let want_idx: Vec<usize> = f64s(&img["top5"]["indices"])
            .iter()
            .map(|v| *v as usize)
            .collect();
        assert_eq!(&idx[..5], &want_idx[..], "{file} top-5");
        for (i, wl) in want_idx.iter().zip(f64s(&img["top5"]["logits"])) {
            assert!(
                (l[*i] as f64 - wl).abs() < 1e-3,
                "{file} logit {i}: {} vs {wl}",
                l[*i]
            );
        }
    }
}

#[test]
fn the_default_network_sees_a_cat_in_the_cat_photo() {
    let ext = Extractor::load(ExtractorKind::EfficientNetLite0, None, 0).unwrap();
    let x = input("chelsea.png", ExtractorKind::EfficientNetLite0);
    let l = ext
        .classify(&x)
        .unwrap()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let top = (0..l.len()).max_by(|a, b| l[*a].total_cmp(&l[*b])).unwrap();
    // ImageNet 281..=285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    assert!((281..=285).contains(&top), "top class {top}");
}

#[test]
fn clean_resize_matches_pillow() {
    let g = golden();
    let r = &g["resize"];
    let bytes = std::fs::read(images().join(r["file"].as_str().unwrap())).unwrap();
    let img = preprocess::decode_rgb(&bytes).unwrap();
    let planes = preprocess::clean_resize(&img, 224).unwrap();
    let rows = f64s(&r["channel0_every16"]["rows"]);
    let cols = f64s(&r["channel0_every16"]["cols"]);
    let vals = f64s(&r["channel0_every16"]["values"]);
    let mut k = 0;
    for y in &rows {
        for x in &cols {
            let got = planes[0][*y as usize * 224 + *x as usize] as f64;
            assert!(
                (got - vals[k]).abs() < 1e-3,
                "({y},{x}): {got} vs {}",
                vals[k]
            );
            k += 1;
        }
    }
    for (c, want) in f64s(&r["channel_sums"]).iter().enumerate() {
        let s: f64 = planes[c].iter().map(|v| *v as f64).sum();
        assert!(
            (s - want).abs() / want < 1e-6,
            "channel {c} sum {s} vs {want}"
        );
    }
}

fn extract_dir(kind: ExtractorKind, dist: DistKind, sel: Selection) -> vdna_db::dna::Dna {
    let ext = Extractor::load(kind, None, 0).unwrap();
    let ranges = Ranges::embedded(kind).unwrap();
    let items = sel.apply(extract::list_images(&images()).unwrap());
    let opts = ExtractOptions {
        dist,
        batch: 3,
        ..Default::default()
    };
    extract::extract(&ext, Some(&ranges), &items, &opts, &|_| {})
        .unwrap()
        .0
}

#[test]
fn merging_shard_dnas_gives_the_whole_dna() {
    let kind = ExtractorKind::EfficientNetLite0;
    for dist in [DistKind::Histogram { bins: 50 }, DistKind::Gaussian] {
        let whole = extract_dir(kind, dist, Selection::default());
        let parts: Vec<_> = (0..3)
            .map(|i| {
                extract_dir(
                    kind,
                    dist,
                    Selection {
                        shard: Some((i, 3)),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let merged = parts[0].merge(&parts[1]).unwrap().merge(&parts[2]).unwrap();
        assert_eq!(merged.images, whole.images);
        assert_eq!(merged.space, whole.space);
        match dist {
            // Integer counts: exactly equal.
            DistKind::Histogram { .. } => assert_eq!(merged.layers, whole.layers),
            _ => {
                for (a, b) in merged.layers.iter().zip(&whole.layers) {
                    let (
                        LayerData::Gaussian { mean: ma, var: va },
                        LayerData::Gaussian { mean: mb, var: vb },
                    ) = (a, b)
                    else {
                        panic!("not gaussian")
                    };
                    for i in 0..ma.len() {
                        assert!(util::rel(ma[i], mb[i]) < 1e-9 || (ma[i] - mb[i]).abs() < 1e-12);
                        assert!(util::rel(va[i], vb[i]) < 1e-9 || (va[i] - vb[i]).abs() < 1e-12);
                    }
                }
            }
        }
    }
}

/// The reference library's own pipeline (vdna 0.1.1 with our seeded weights and shipped
/// ranges) on the fixture images: our DNAs must match its DNAs.
#[test]
fn rand_resnet50_dnas_match_the_reference_library() {
    let dir = root().join("fixtures/extract/rand_resnet50");
    let want = vdna_db::reference::import_pair(&dir.join("histogram-100.json"))
        .unwrap()
        .dna;
    let got = extract_dir(
        ExtractorKind::RandResNet50,
        DistKind::Histogram { bins: 100 },
        Selection::default(),
    );
    assert_eq!(got.images, want.images);
    let mut total = 0u64;
    let mut moved = 0u64;
    for (spec, (a, b)) in got
        .space
        .layers
        .iter()
        .zip(got.layers.iter().zip(&want.layers))
    {
        let (LayerData::Histogram { counts: ca, .. }, LayerData::Histogram { counts: cb, .. }) =
            (a, b)
        else {
            panic!("not histograms")
        };
        assert_eq!(ca.len(), cb.len(), "{}", spec.name);
        assert_eq!(
            ca.iter().map(|&v| v as u64).sum::<u64>(),
            cb.iter().map(|&v| v as u64).sum::<u64>()
        );
        total += ca.iter().map(|&v| v as u64).sum::<u64>();
        moved += ca
            .iter()
            .zip(cb)
            .map(|(x, y)| (*x as i64 - *y as i64).unsigned_abs())
            .sum::<u64>()
            / 2;
    }
    // Float32 summation order differs from PyTorch's, so a value sitting on a bin edge
    // may land one bin over; allow one in 10,000.
    assert!(
        moved * 10_000 <= total,
        "{moved} of {total} counts in another bin"
    );

    let want_g = vdna_db::reference::import_pair(&dir.join("gaussian.json"))
        .unwrap()
        .dna;
    let got_g = extract_dir(
        ExtractorKind::RandResNet50,
        DistKind::Gaussian,
        Selection::default(),
    );
    for (spec, (a, b)) in got_g
        .space
        .layers
        .iter()
        .zip(got_g.layers.iter().zip(&want_g.layers))
    {
        let (LayerData::Gaussian { mean: ma, var: va }, LayerData::Gaussian { mean: mb, var: vb }) =
            (a, b)
        else {
            panic!("not gaussian")
        };
        let scale = mb.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let vscale = vb.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
        for i in 0..ma.len() {
            assert!(
                (ma[i] - mb[i]).abs() <= 1e-4 * scale,
                "{} mean[{i}]: {} vs {}",
                spec.name,
                ma[i],
                mb[i]
            );
            assert!(
                (va[i] - vb[i]).abs() <= 1e-3 * vscale,
                "{} var[{i}]: {} vs {}",
                spec.name,
                va[i],
                vb[i]
            );
        }
    }
}

#[test]
fn seeded_weights_round_trip_through_safetensors_with_the_same_digest() {
    let bytes = extract::resnet::seeded_safetensors(0).unwrap();
    let dir = util::tmp();
    let p = dir.path().join("w.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    let a = Extractor::load(ExtractorKind::RandResNet50, None, 0).unwrap();
    let b = Extractor::load(ExtractorKind::RandResNet50, Some(&p), 0).unwrap();
    assert_eq!(a.weights_digest(), b.weights_digest());
    let c = Extractor::load(ExtractorKind::RandResNet50, None, 1).unwrap();
    assert_ne!(a.weights_digest(), c.weights_digest());
}

fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed,
        ])
    });
    img.save(path).unwrap();
}

#[test]
fn cli_extract_skips_and_reports_corrupt_images_and_strict_refuses_them() {
    let dir = util::tmp();
    let src = dir.path().join("imgs");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    write_png(&src.join("a.png"), 40, 30, 3);
    write_png(&src.join("sub/b.png"), 20, 50, 7);
    std::fs::write(src.join("broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    std::fs::write(src.join("notes.md"), b"ignored").unwrap();
    let home = dir.path().join("home");
    let out = dir.path().join("x.vdna");
    let o = util::run(
        &home,
        &[
            "extract",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--dist",
            "histogram-20",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
    let v: Value = serde_json::from_str(&util::stdout(&o)).unwrap();
    assert_eq!(v["report"]["images"], 2);
    assert_eq!(v["report"]["skipped"][0][0], "broken.jpg");
    assert!(util::stderr(&o).contains("skipped 1 unreadable image(s): broken.jpg"));
    // The bundle is a DNA the rest of the tool reads.
    let shown = util::json(&home, &["show", out.to_str().unwrap()]);
    assert_eq!(shown["images"], 2);

    let o = util::run(
        &home,
        &[
            "extract",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--strict",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", util::stderr(&o));
    assert!(
        util::stderr(&o).contains("broken.jpg"),
        "{}",
        util::stderr(&o)
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = util::run(
        &home,
        &[
            "extract",
            empty.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        util::stderr(&o).contains("no images"),
        "{}",
        util::stderr(&o)
    );
}

#[test]
fn archives_and_lists_give_the_same_dna_as_the_folder() {
    let dir = util::tmp();
    let home = dir.path().join("home");
    let imgs = images();
    let names = ["gradient.png", "gray.png", "noise.png"];
    // .txt list with relative paths, in scrambled order (the list is sorted like the reference).
    let list_dir = dir.path().join("lists");
    std::fs::create_dir_all(list_dir.join("pics")).unwrap();
    for n in names {
        std::fs::copy(imgs.join(n), list_dir.join("pics").join(n)).unwrap();
    }
    std::fs::write(
        list_dir.join("l.txt"),
        "pics/noise.png\npics/gradient.png\n\npics/gray.png\n",
    )
    .unwrap();
    // zip and tar of the same files.
    let zip_path = dir.path().join("a.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for n in names.iter().rev() {
            z.start_file(*n, zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut z, &std::fs::read(imgs.join(n)).unwrap()).unwrap();
        }
        z.finish().unwrap();
    }
    let tar_path = dir.path().join("a.tar");
    {
        let mut t = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        for n in names.iter().rev() {
            t.append_path_with_name(imgs.join(n), n).unwrap();
        }
        t.finish().unwrap();
    }
    let digest_of = |src: &Path| {
        let out = dir.path().join("o.vdna");
        let v = util::json(
            &home,
            &[
                "extract",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--dist",
                "histogram-10",
            ],
        );
        assert_eq!(v["report"]["images"], 3, "{src:?}");
        v["digest"].as_str().unwrap().to_string()
    };
    let a = digest_of(&list_dir.join("pics"));
    assert_eq!(digest_of(&list_dir.join("l.txt")), a);
    assert_eq!(digest_of(&zip_path), a);
    assert_eq!(digest_of(&tar_path), a);
}

#[test]
fn push_and_query_take_an_image_source() {
    let dir = util::tmp();
    let home = dir.path().join("home");
    let imgs = images();
    util::ok(
        &home,
        &[
            "push",
            imgs.to_str().unwrap(),
            "--name",
            "fixtures:v1",
            "--dist",
            "histogram-100",
        ],
    );
    let v = util::json(
        &home,
        &[
            "query",
            imgs.join("chelsea.png").to_str().unwrap(),
            "--dist",
            "histogram-100",
            "--top",
            "1",
        ],
    );
    let hits = v["results"].as_array().unwrap();
    assert_eq!(hits[0]["ref"], "fixtures:v1");
    // A DNA from other weights lives in another space and is refused, not compared.
    let o = util::run(
        &home,
        &[
            "compare",
            "fixtures:v1",
            imgs.to_str().unwrap(),
            "--extractor",
            "rand_resnet50",
            "--dist",
            "histogram-100",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(util::stderr(&o).contains("space"), "{}", util::stderr(&o));
}

#[test]
fn cli_shards_merge_into_the_dna_of_the_whole_source() {
    let dir = util::tmp();
    let home = dir.path().join("home");
    let src = images();
    let s = src.to_str().unwrap();
    let part = |i: usize| {
        let out = dir.path().join(format!("p{i}.vdna"));
        let shard = format!("{i}/3");
        util::ok(
            &home,
            &[
                "extract",
                s,
                "-o",
                out.to_str().unwrap(),
                "--dist",
                "histogram-30",
                "--shard",
                &shard,
            ],
        );
        out.to_str().unwrap().to_string()
    };
    let parts: Vec<String> = (0..3).map(part).collect();
    let whole = dir.path().join("whole.vdna");
    let w = util::json(
        &home,
        &[
            "extract",
            s,
            "-o",
            whole.to_str().unwrap(),
            "--dist",
            "histogram-30",
        ],
    );
    let merged = dir.path().join("merged.vdna");
    let mut args = vec!["merge"];
    args.extend(parts.iter().map(String::as_str));
    args.extend(["-o", merged.to_str().unwrap()]);
    let m = util::json(&home, &args);
    assert_eq!(m["digest"], w["digest"]);
    assert_eq!(m["images"], 4);
}

#[test]
fn demo_extracts_scene_datasets_and_finds_the_sky_for_new_skies() {
    let dir = util::tmp();
    let home = dir.path().join("home");
    // Small scene sets keep the test quick; the README's demo uses 48 images each.
    let o = util::ok(
        &home,
        &[
            "demo",
            "--images",
            "6",
            "--fixtures",
            "none",
            "--families",
            "1",
            "--members",
            "1",
        ],
    );
    let first_hit = o
        .lines()
        .skip_while(|l| !l.starts_with("$ vdna-db query new-skies/ --top 3 --mask 'all'"))
        .nth(2)
        .unwrap_or_default()
        .to_string();
    assert!(first_hit.starts_with("1     scenes/sky:v1"), "{o}");
    let ls = util::json(&home, &["ls", "scenes/*"]);
    assert_eq!(ls.as_array().unwrap().len(), 5);
}
