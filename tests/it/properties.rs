//! Property tests: distance axioms, merge algebra checked against pooled samples, digest
//! invariance, and the npy and mask parsers on arbitrary input (the other decoders are in
//! `decoders.rs`).

use proptest::prelude::*;
use vdna_db::distance::emd_neuron;
use vdna_db::dna::{Dna, LayerData};
use vdna_db::format::{DistKind, LayerSpec, SpaceConfig};
use vdna_db::mask::Mask;
use vdna_db::synth;

fn hist(bins: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..40, bins).prop_map(|mut v| {
        if v.iter().all(|x| *x == 0) {
            v[0] = 1;
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn emd_is_a_metric_per_neuron((a, b, c) in (1usize..64).prop_flat_map(|n| (hist(n), hist(n), hist(n)))) {
        let (ab, ba, bc, ac) = (emd_neuron(&a, &b), emd_neuron(&b, &a), emd_neuron(&b, &c), emd_neuron(&a, &c));
        prop_assert_eq!(emd_neuron(&a, &a), 0.0);
        prop_assert!((ab - ba).abs() <= 1e-12 * (1.0 + ab));
        prop_assert!(ac <= ab + bc + 1e-9);
        prop_assert!(ab >= 0.0 && ab <= (a.len() - 1) as f64 + 1e-9);
    }

    #[test]
    fn emd_equals_a_straightforward_f64_reference((a, b) in (1usize..64).prop_flat_map(|n| (hist(n), hist(n)))) {
        // The reference's definition, written plainly: normalise, cumsum the difference, abs-sum.
        let ta: f64 = a.iter().map(|x| *x as f64).sum();
        let tb: f64 = b.iter().map(|x| *x as f64).sum();
        let mut c = 0.0;
        let mut s = 0.0;
        for k in 0..a.len() {
            c += a[k] as f64 / ta - b[k] as f64 / tb;
            s += f64::abs(c);
        }
        prop_assert!((emd_neuron(&a, &b) - s).abs() <= 1e-12 * (1.0 + s));
    }

    #[test]
    fn histogram_merge_is_associative_and_commutative(seed in 0u64..1000) {
        let spec = small_spec(seed, DistKind::Histogram { bins: 20 });
        let (a, b, c) = (synth::member(&spec, 0, 0), synth::member(&spec, 0, 1), synth::member(&spec, 1, 0));
        let ab_c = a.merge(&b).unwrap().merge(&c).unwrap();
        let a_bc = a.merge(&b.merge(&c).unwrap()).unwrap();
        prop_assert_eq!(&ab_c, &a_bc);
        prop_assert_eq!(a.merge(&b).unwrap(), b.merge(&a).unwrap());
        prop_assert_eq!(ab_c.images, a.images + b.images + c.images);
    }

    #[test]
    fn gaussian_merge_equals_the_pooled_samples(xs in prop::collection::vec(-50.0f64..50.0, 2..40), split in 1usize..39) {
        let split = split.min(xs.len() - 1);
        let (l, r) = xs.split_at(split);
        let stats = |s: &[f64]| {
            let n = s.len() as f64;
            let m = s.iter().sum::<f64>() / n;
            let v = if s.len() > 1 { s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
            (m, v)
        };
        let space = SpaceConfig::unpinned("x", vec![LayerSpec { name: "l".into(), neurons: 1 }], DistKind::Gaussian);
        let dna = |s: &[f64]| {
            let (m, v) = stats(s);
            Dna { space: space.clone(), images: s.len() as u64, layers: vec![LayerData::Gaussian { mean: vec![m], var: vec![v] }] }
        };
        let merged = dna(l).merge(&dna(r)).unwrap();
        let (m, v) = stats(&xs);
        let LayerData::Gaussian { mean, var } = &merged.layers[0] else { unreachable!() };
        prop_assert!((mean[0] - m).abs() < 1e-9 * (1.0 + m.abs()));
        prop_assert!((var[0] - v).abs() < 1e-8 * (1.0 + v));
    }

    #[test]
    fn layer_gaussian_merge_equals_the_pooled_covariance(rows in prop::collection::vec(prop::array::uniform3(-5.0f64..5.0), 4..30), split in 2usize..28) {
        let split = split.min(rows.len() - 2);
        let cov = |s: &[[f64; 3]]| {
            let n = s.len() as f64;
            let m: Vec<f64> = (0..3).map(|j| s.iter().map(|r| r[j]).sum::<f64>() / n).collect();
            let c: Vec<f64> = (0..9).map(|ij| s.iter().map(|r| (r[ij / 3] - m[ij / 3]) * (r[ij % 3] - m[ij % 3])).sum::<f64>() / (n - 1.0)).collect();
            (m, c)
        };
        let space = SpaceConfig::unpinned("x", vec![LayerSpec { name: "l".into(), neurons: 3 }], DistKind::LayerGaussian);
        let dna = |s: &[[f64; 3]]| {
            let (mean, cov) = cov(s);
            Dna { space: space.clone(), images: s.len() as u64, layers: vec![LayerData::LayerGaussian { mean, cov }] }
        };
        let merged = dna(&rows[..split]).merge(&dna(&rows[split..])).unwrap();
        let (m, c) = cov(&rows);
        let LayerData::LayerGaussian { mean, cov: got } = &merged.layers[0] else { unreachable!() };
        for j in 0..3 { prop_assert!((mean[j] - m[j]).abs() < 1e-9); }
        for ij in 0..9 { prop_assert!((got[ij] - c[ij]).abs() < 1e-8 * (1.0 + c[ij].abs())); }
    }

    #[test]
    fn digest_ignores_compression_level(seed in 0u64..200, level in 1i32..12) {
        let dna = synth::member(&small_spec(seed, DistKind::Histogram { bins: 16 }), 0, 0);
        prop_assert_eq!(dna.encode(level).manifest_digest, dna.encode(3).manifest_digest);
        prop_assert_eq!(dna.digest(), dna.encode(level).manifest_digest);
    }

    #[test]
    fn npy_parser_survives_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut with_magic = b"\x93NUMPY\x01\x00".to_vec();
        with_magic.extend_from_slice(&data);
        let _ = vdna_db::reference::parse_npy(&data);
        let _ = vdna_db::reference::parse_npy(&with_magic);
    }

    #[test]
    fn mask_parser_survives_arbitrary_specs(spec in "[-@a-z0-9_*?:, ]{0,40}") {
        let space = SpaceConfig::unpinned("x", synth::uniform_layers(3, 10), DistKind::Gaussian);
        if let Ok(m) = Mask::parse(&spec, &space, &|_| None) {
            prop_assert!(m.neurons() > 0 && m.neurons() <= 30);
        }
    }
}

fn small_spec(seed: u64, dist: DistKind) -> synth::CatalogueSpec {
    synth::CatalogueSpec {
        seed,
        families: 2,
        members: 2,
        layers: synth::uniform_layers(2, 5),
        dist,
        extractor: "x".into(),
        images: 4,
        positions: 9,
        spread: 1.0,
    }
}
