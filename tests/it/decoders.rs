//! Untrusted input: every decoder of bytes from disk or the network (`vdna_db::fuzz`) fed
//! structure-aware mutations of valid inputs: byte flips, boundary bytes, inserted,
//! deleted and duplicated ranges, length fields overwritten with extreme values, and for
//! JSON, edits of the parsed tree (numbers made huge or negative, types swapped, keys
//! dropped, arrays grown). No panic (proptest would report it), no allocation beyond what
//! the input can justify (a tracking allocator measures the largest request), and a
//! mutation never yields a different valid DNA under the same digest.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};

use proptest::prelude::*;
use serde_json::Value;
use vdna_db::format::DistKind;
use vdna_db::store::Backend;
use vdna_db::{fuzz, synth};

use crate::util::*;

/// The global allocator of the test binary: the system's, noting the largest request
/// made on a thread while [`largest_allocation`] watches it.
pub struct Tracking;

thread_local! {
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = WATCHING.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; `note` only reads
// and writes const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

/// Runs `f` and returns the largest single allocation it asked for on this thread.
pub fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    WATCHING.with(|w| w.set(true));
    f();
    WATCHING.with(|w| w.set(false));
    LARGEST.with(|l| l.get())
}

/// The most a decoder may allocate for `n` input bytes: zstd's largest expansion (128 KiB
/// per 4-byte block) over the input, plus a fixed allowance.
fn allowance(n: usize) -> usize {
    (n + 1) * (128 << 10) / 4 + (4 << 20)
}

fn check_alloc(what: &str, input_len: usize, f: impl FnOnce()) -> Result<(), TestCaseError> {
    let got = largest_allocation(f);
    prop_assert!(
        got <= allowance(input_len),
        "{what}: allocated {got} bytes for {input_len} input bytes"
    );
    Ok(())
}

/// One byte-level mutation.
#[derive(Clone, Debug)]
pub enum Mutation {
    Flip(prop::sample::Index, u8),
    Boundary(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index, u8),
    Duplicate(prop::sample::Index, u8),
    /// Overwrites 4 or 8 bytes with an extreme little-endian value (a length field).
    Length(prop::sample::Index, u8, bool),
    Truncate(prop::sample::Index),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), 0u8..4).prop_map(|(i, x)| Mutation::Boundary(i, x)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        (any::<Index>(), 1u8..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1u8..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<Index>(), 0u8..6, any::<bool>()).prop_map(|(i, v, w)| Mutation::Length(i, v, w)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

pub fn apply(bytes: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in muts {
        if b.is_empty() {
            b.push(0);
        }
        let n = b.len();
        match m {
            Mutation::Flip(i, x) => b[i.index(n)] ^= x,
            Mutation::Boundary(i, x) => b[i.index(n)] = [0x00, 0xFF, 0x7F, 0x80][*x as usize],
            Mutation::Insert(i, x) => b.insert(i.index(n + 1), *x),
            Mutation::Delete(i, k) => {
                let at = i.index(n);
                b.drain(at..(at + *k as usize).min(n));
            }
            Mutation::Duplicate(i, k) => {
                let at = i.index(n);
                let piece = b[at..(at + *k as usize).min(n)].to_vec();
                b.splice(at..at, piece);
            }
            Mutation::Length(i, v, wide) => {
                let x: u64 = [0, 1, u32::MAX as u64, 1 << 31, u64::MAX, 1 << 40][*v as usize];
                let bytes = x.to_le_bytes();
                let w = if *wide { 8 } else { 4 };
                let at = i.index(n);
                for (k, byte) in bytes[..w].iter().enumerate() {
                    if at + k < n {
                        b[at + k] = *byte;
                    }
                }
            }
            Mutation::Truncate(i) => b.truncate(i.index(n)),
        }
    }
    b
}

/// One edit of a parsed JSON tree at the `pick`-th node (pre-order).
fn edit_json(v: &mut Value, pick: &mut usize, how: u8) -> bool {
    if *pick == 0 {
        *v = match how % 10 {
            0 => Value::from(1e308),
            1 => Value::from(-1),
            2 => Value::from(u64::MAX),
            3 => Value::from(4_294_967_296u64),
            4 => Value::Null,
            5 => Value::from("x".repeat(300)),
            6 => Value::Array(vec![]),
            7 => serde_json::json!({}),
            8 => Value::from(0.5),
            _ => match v.take() {
                Value::Array(mut a) => {
                    let dup = a.clone();
                    a.extend(dup);
                    Value::Array(a)
                }
                Value::Object(mut o) => {
                    let first = o.keys().next().cloned();
                    if let Some(k) = first {
                        o.remove(&k);
                    }
                    Value::Object(o)
                }
                other => Value::Array(vec![other]),
            },
        };
        return true;
    }
    *pick -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| edit_json(x, pick, how)),
        Value::Object(o) => o.values_mut().any(|x| edit_json(x, pick, how)),
        _ => false,
    }
}

pub fn json_mutant(bytes: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.to_vec();
    };
    for &(pick, how) in edits {
        let mut p = pick;
        edit_json(&mut v, &mut p, how);
    }
    serde_json::to_vec(&v).unwrap()
}

fn sample_dna(seed: u64, dist: DistKind) -> vdna_db::dna::Dna {
    synth::member(
        &synth::CatalogueSpec {
            seed,
            families: 1,
            members: 1,
            layers: synth::uniform_layers(2, 5),
            dist,
            extractor: "x".into(),
            images: 4,
            positions: 9,
            spread: 1.0,
        },
        0,
        0,
    )
}

fn dist_of(i: u8) -> DistKind {
    match i % 4 {
        0 => DistKind::Histogram { bins: 8 },
        1 => DistKind::Gaussian,
        2 => DistKind::LayerGaussian,
        _ => DistKind::ActivationRanges,
    }
}

/// The members of a fixture's `.npz`, and the archive rebuilt from (possibly mutated)
/// members.
fn npz_members(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().to_string(), b)
        })
        .collect()
}

fn npz_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, b) in members {
        w.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Cases per decoder property: 200, or `VDNA_DB_FUZZ_CASES` (the long mode).
fn cases() -> u32 {
    std::env::var("VDNA_DB_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn histogram_codec_payloads_survive_mutations(seed in 0u64..8, muts in prop::collection::vec(mutation(), 1..6)) {
        // A codec-4 object of a real-sized histogram layer; mutations of its payload only,
        // behind a fresh valid header, so they reach the rANS decoder.
        let dna = synth::member(
            &synth::CatalogueSpec {
                seed,
                families: 1,
                members: 1,
                layers: synth::uniform_layers(1, 80),
                dist: DistKind::Histogram { bins: 256 },
                extractor: "x".into(),
                images: 4,
                positions: 49,
                spread: 1.0,
            },
            0,
            0,
        );
        let enc = dna.encode_with(3, vdna_db::format::Codec::Hist);
        let obj = &enc.objects[2].1;
        let h = vdna_db::format::decode_object_header(obj, "t").unwrap();
        prop_assert_eq!(h.codec, vdna_db::format::Codec::Hist);
        let raw = vdna_db::format::decode_object(obj, "t").unwrap();
        let payload = apply(&obj[32..], &muts);
        let mut data = (h.raw_len as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&payload);
        check_alloc("histogram payload", data.len(), || fuzz::histogram_payload(&data))?;
        let m = vdna_db::format::object_of_payload(h.codec, h.raw_len, &payload);
        // Refused, or (a mutation that changed nothing the decoder reads) the same bytes.
        if let Ok(back) = vdna_db::format::decode_object(&m, "t") {
            prop_assert_eq!(&back[..], &raw[..]);
        }
    }

    #[test]
    fn objects_survive_mutations(seed in 0u64..40, d in 0u8..4, muts in prop::collection::vec(mutation(), 1..6)) {
        let enc = sample_dna(seed, dist_of(d)).encode(3);
        for (i, (digest, obj)) in enc.objects.iter().enumerate() {
            let m = apply(obj, &muts);
            check_alloc("object", m.len(), || fuzz::object(&m))?;
            // Stored under the original's digest, a mutant is refused by the read path or
            // reads back as the original: never as other content.
            let backend = std::sync::Arc::new(vdna_db::store::MemBackend::default());
            backend.write_durable(&vdna_db::store::key_of(digest), &m).unwrap();
            let store = vdna_db::store::ObjectStore::new(backend);
            if let Ok(raw) = store.get_raw(digest) {
                prop_assert_eq!(&raw[..], &vdna_db::format::decode_object(obj, "t").unwrap()[..]);
            }
            if i >= 2 {
                if let Ok(l) = store.get_layer(digest) {
                    let orig = vdna_db::format::decode_layer(vdna_db::format::decode_object(obj, "t").unwrap()).unwrap();
                    prop_assert_eq!(l.bytes(), orig.bytes());
                }
            }
        }
    }

    #[test]
    fn manifests_and_spaces_survive_structural_edits(seed in 0u64..40, d in 0u8..4, edits in prop::collection::vec((0usize..60, any::<u8>()), 1..4), muts in prop::collection::vec(mutation(), 0..3)) {
        let enc = sample_dna(seed, dist_of(d)).encode(3);
        let manifest = enc.manifest.to_canonical();
        let space = vdna_db::format::decode_object(&enc.objects[1].1, "t").unwrap().to_vec();
        for bytes in [manifest, space] {
            let m = apply(&json_mutant(&bytes, &edits), &muts);
            check_alloc("manifest", m.len(), || fuzz::manifest(&m))?;
            check_alloc("space", m.len(), || fuzz::space(&m))?;
        }
    }

    #[test]
    fn bundles_survive_mutations(seed in 0u64..40, d in 0u8..4, muts in prop::collection::vec(mutation(), 1..6)) {
        let bytes = vdna_db::db::bundle_of(&sample_dna(seed, dist_of(d)), &Default::default(), 3);
        let m = apply(&bytes, &muts);
        check_alloc("bundle", m.len(), || fuzz::bundle(&m))?;
        if let (Ok(a), Ok(b)) = (vdna_db::db::dna_of_bundle_bytes(&m), vdna_db::db::dna_of_bundle_bytes(&bytes)) {
            // Whatever still decodes is the same DNA (annotations aside).
            prop_assert_eq!(a.0, b.0);
        }
    }

    #[test]
    fn reference_pairs_survive_mutations(which in 0usize..4, edits in prop::collection::vec((0usize..400, any::<u8>()), 0..3), member in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 0..4), whole in prop::collection::vec(mutation(), 0..2)) {
        let stem = fixture(["checker", "gradients"][which % 2], ["histogram-100", "gaussian"][which / 2]);
        let json = std::fs::read(stem.with_extension("json")).unwrap();
        let mut members = npz_members(&stem.with_extension("npz"));
        let k = member.index(members.len());
        members[k].1 = apply(&members[k].1, &muts);
        let npz = apply(&npz_of(&members), &whole);
        let j = json_mutant(&json, &edits);
        check_alloc("reference pair", j.len() + npz.len() + (64 << 20), || fuzz::reference_pair(&j, &npz))?;
        check_alloc("npy", members[k].1.len(), || fuzz::npy(&members[k].1))?;
    }

    #[test]
    fn mask_and_name_grammars_survive_arbitrary_text(spec in "[-@a-z0-9_*?:,.()!&| \\[\\]]{0,60}", raw in ".{0,40}") {
        fuzz::mask(&spec);
        fuzz::mask(&raw);
        fuzz::names(&spec);
        fuzz::names(&raw);
    }

    #[test]
    fn ranges_and_weights_files_survive_mutations(edits in prop::collection::vec((0usize..200, any::<u8>()), 1..3), muts in prop::collection::vec(mutation(), 1..5)) {
        let ranges = vdna_db::extract::ranges::Ranges::embedded(vdna_db::extract::ExtractorKind::EfficientNetLite0)
            .unwrap()
            .to_json();
        let m = json_mutant(ranges.as_bytes(), &edits);
        check_alloc("ranges", m.len(), || fuzz::ranges(&m))?;
        let m = apply(small_safetensors(), &muts);
        check_alloc("safetensors", m.len(), || fuzz::safetensors(&m))?;
    }
}

/// A small valid safetensors file (two tensors), made once.
fn small_safetensors() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let a: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let b: Vec<u8> = (0..4).flat_map(|i| (-(i as f32)).to_le_bytes()).collect();
        let views = vec![
            (
                "conv.weight",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3, 4], &a)
                    .unwrap(),
            ),
            (
                "conv.bias",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &b).unwrap(),
            ),
        ];
        safetensors::serialize(views, None).unwrap()
    })
}

/// An object header that claims a huge raw length for a tiny payload is refused before
/// anything is allocated (a 40-byte upload must not cost gigabytes), even with its header
/// check recomputed as an attacker would (FNV-1a of the header, schema/README.md).
#[test]
fn a_lying_raw_length_is_refused_before_allocating() {
    let enc = sample_dna(1, DistKind::Histogram { bins: 8 }).encode(3);
    let mut lie = enc.objects[2].1.clone();
    lie[16..24].copy_from_slice(&(3u64 << 30).to_le_bytes());
    let mut x: u32 = 0x811c_9dc5;
    for (i, b) in lie[..32].iter().enumerate() {
        if !(13..16).contains(&i) {
            x = (x ^ *b as u32).wrapping_mul(0x0100_0193);
        }
    }
    lie[13..16].copy_from_slice(&x.to_le_bytes()[..3]);
    let mut err = None;
    let got = largest_allocation(|| {
        err = vdna_db::format::decode_object(&lie, "blob").err();
    });
    let err = err.expect("refused").to_string();
    assert!(err.contains("impossible for a compressed payload"), "{err}");
    assert!(got < 1 << 20, "allocated {got} bytes");
}
