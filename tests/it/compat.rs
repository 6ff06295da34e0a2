//! Every format version ever written stays readable: golden files of version 1 (a bundle,
//! stored objects) are decoded and checked against the hand-written DNAs they hold.
//! `VDNA_DB_WRITE_GOLDEN=1 cargo test compat` writes them (once per format version).

use std::collections::BTreeMap;
use std::path::PathBuf;

use vdna_db::db::read_dna_file;
use vdna_db::dna::{Dna, LayerData};
use vdna_db::format::{decode_bundle, DistKind, LayerSpec, SpaceConfig};

fn dir() -> PathBuf {
    crate::util::root().join("fixtures/format-v1")
}

fn layers() -> Vec<LayerSpec> {
    vec![
        LayerSpec {
            name: "a".into(),
            neurons: 2,
        },
        LayerSpec {
            name: "b".into(),
            neurons: 3,
        },
    ]
}

/// Hand-written DNAs: the values a reader of the golden files must find.
fn tiny() -> Vec<(&'static str, Dna)> {
    let h = Dna {
        space: SpaceConfig::unpinned("tiny_net", layers(), DistKind::Histogram { bins: 4 }),
        images: 3,
        layers: vec![
            LayerData::Histogram {
                bins: 4,
                counts: vec![1, 2, 3, 4, 0, 0, 5, 1],
            },
            LayerData::Histogram {
                bins: 4,
                counts: vec![7, 0, 0, 0, 0, 9, 0, 0, 1, 1, 1, 1],
            },
        ],
    };
    let g = Dna {
        space: SpaceConfig::unpinned("tiny_net", layers(), DistKind::Gaussian),
        images: 5,
        layers: vec![
            LayerData::Gaussian {
                mean: vec![0.5, -1.25],
                var: vec![2.0, 0.125],
            },
            LayerData::Gaussian {
                mean: vec![1.0, 2.0, 3.0],
                var: vec![0.0, 1.0, 4.0],
            },
        ],
    };
    vec![("tiny-histogram-4", h), ("tiny-gaussian", g)]
}

#[test]
fn version_1_bundles_still_decode_to_the_same_dna_and_digest() {
    let mut ann = BTreeMap::new();
    ann.insert("made-by".to_string(), "format v1 golden".to_string());
    for (name, dna) in tiny() {
        let path = dir().join(format!("{name}.vdna"));
        let digest_path = dir().join(format!("{name}.digest"));
        if std::env::var("VDNA_DB_WRITE_GOLDEN").is_ok() {
            std::fs::write(&path, vdna_db::db::bundle_of(&dna, &ann, 3)).unwrap();
            std::fs::write(&digest_path, dna.encode(3).manifest_digest.to_string()).unwrap();
        }
        let bytes = std::fs::read(&path).expect("golden bundle present");
        let b = decode_bundle(&bytes).unwrap();
        let want = std::fs::read_to_string(&digest_path).unwrap();
        assert_eq!(
            b.manifest_digest.to_string(),
            want.trim(),
            "{name}: digest of a v1 bundle changed"
        );
        assert_eq!(b.annotations, ann);
        let (read, _) = read_dna_file(&path).unwrap();
        assert_eq!(
            read, dna,
            "{name}: decoded values differ from the hand-written DNA"
        );
        assert_eq!(
            read.encode(3).manifest_digest.to_string(),
            want.trim(),
            "{name}: re-encoding changed the address"
        );
    }
}

/// A histogram DNA from a formula, large enough that bundles code it with codec 4: ReLU-like
/// neurons of one total (a spike at bin 0, a bump around a neuron-dependent centre).
fn formula_histogram() -> Dna {
    let (neurons, bins, total) = (70u32, 250u32, 5000u32);
    let layer = |shift: u32| {
        let mut counts = Vec::new();
        for n in 0..neurons {
            let centre = 20 + (n * 37 + shift) % 200;
            let mut row = vec![0u32; bins as usize];
            let mut used = 0;
            for b in 1..bins {
                let d = b.abs_diff(centre);
                let c = if d < 12 {
                    (12 - d) * (12 - d) * (1 + (n + b) % 3)
                } else {
                    0
                };
                row[b as usize] = c;
                used += c;
            }
            row[0] = total - used;
            counts.extend(row);
        }
        LayerData::Histogram { bins, counts }
    };
    let specs = vec![
        LayerSpec {
            name: "a".into(),
            neurons,
        },
        LayerSpec {
            name: "b".into(),
            neurons,
        },
    ];
    Dna {
        space: SpaceConfig::unpinned("tiny_net", specs, DistKind::Histogram { bins }),
        images: 2,
        layers: vec![layer(0), layer(91)],
    }
}

/// Codec 4 (histogram rANS) as first written stays readable, to the same values and address.
#[test]
fn codec_4_objects_still_decode_to_the_same_dna_and_digest() {
    let dna = formula_histogram();
    let path = dir().join("formula-histogram-codec4.vdna");
    let digest_path = dir().join("formula-histogram-codec4.digest");
    if std::env::var("VDNA_DB_WRITE_GOLDEN").is_ok() {
        std::fs::write(&path, vdna_db::db::bundle_of(&dna, &BTreeMap::new(), 3)).unwrap();
        std::fs::write(&digest_path, dna.encode(3).manifest_digest.to_string()).unwrap();
    }
    let bytes = std::fs::read(&path).expect("golden bundle present");
    let b = decode_bundle(&bytes).unwrap();
    let codecs: Vec<_> = b
        .objects
        .iter()
        .skip(2)
        .map(|(_, enc)| {
            vdna_db::format::decode_object_header(enc, "o")
                .unwrap()
                .codec
        })
        .collect();
    assert_eq!(
        codecs,
        vec![vdna_db::format::Codec::Hist; 2],
        "the golden bundle holds codec-4 layers"
    );
    let want = std::fs::read_to_string(&digest_path).unwrap();
    assert_eq!(b.manifest_digest.to_string(), want.trim());
    let (read, _) = read_dna_file(&path).unwrap();
    assert_eq!(read, dna, "decoded values differ from the formula");
}
