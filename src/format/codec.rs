//! The at-rest object encoding: a 32-byte header and a possibly compressed payload.
//!
//! Layout: `b"VDNAOBJ\0"`, version (u32 LE), codec (u8), a 24-bit check of the header
//! (FNV-1a of the other 29 header bytes, low 3 bytes LE), raw length (u64 LE), payload
//! length (u64 LE), payload. The digest of an object is over its *raw* bytes, so the
//! codec and its level never change an address.
//!
//! Integrity without re-hashing: compressed payloads are zstd frames that must carry a
//! content checksum (XXH64 of the decompressed bytes), and the header check covers the
//! codec and lengths, so any damaged byte is detected by [`decode_object`] alone; the
//! SHA-256 of the raw bytes is checked where the address itself must be proven (verify,
//! import, transfers) and for uncompressed objects.

use rkyv::util::AlignedVec;

use super::{hist, le_u32, le_u64, FormatError};

/// Magic bytes that open every stored object file and bundle entry.
pub const OBJECT_MAGIC: &[u8; 8] = b"VDNAOBJ\0";
const OBJECT_VERSION: u32 = 1;
const HEADER: usize = 32;
/// Largest raw object accepted (a layer-gaussian of a 16k-neuron layer fits).
pub const MAX_RAW_LEN: u64 = 4 << 30;

/// How an object's payload encodes its raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Payload = raw bytes.
    Raw = 0,
    /// Payload = zstd frame (with content checksum) of the raw bytes.
    Zstd = 1,
    /// Raw bytes as 4-byte words, bytes shuffled into 4 planes, then zstd. Suits
    /// histogram counts, which are mostly small: their high planes are nearly all zero.
    /// (Measured on reference DNAs: 0.70-0.72x the reference's npz; a delta along bins
    /// before the shuffle made it worse, 1.56x, as counts go up and down.)
    Shuffle32 = 2,
    /// Raw bytes as 8-byte words, bytes shuffled into 8 planes, then zstd. Suits f64 arrays.
    Shuffle64 = 3,
    /// Histogram layer blobs only: the counts under a context model, rANS-coded
    /// ([`super::hist`]); the bytes around them kept verbatim; a CRC-32 of the raw bytes.
    /// Measured on reference DNAs: about half the reference's npz.
    Hist = 4,
}

impl Codec {
    fn from_u8(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Shuffle32),
            3 => Some(Codec::Shuffle64),
            4 => Some(Codec::Hist),
            _ => None,
        }
    }

    /// The name used in `--explain` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
            Codec::Shuffle32 => "shuffle32-zstd",
            Codec::Shuffle64 => "shuffle64-zstd",
            Codec::Hist => "hist-rans",
        }
    }
}

/// The parsed header of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    pub codec: Codec,
    pub raw_len: u64,
    pub payload_len: u64,
}

impl ObjectHeader {
    /// Total encoded length, header included.
    pub fn encoded_len(&self) -> u64 {
        HEADER as u64 + self.payload_len
    }
}

/// Encodes raw bytes with `codec` at zstd `level`. [`Codec::Hist`] applies to histogram
/// layer blobs only: other bytes get [`Codec::Shuffle32`] (the header says which was used).
pub fn encode_object(raw: &[u8], codec: Codec, level: i32) -> Vec<u8> {
    let (codec, payload): (Codec, Vec<u8>) = match codec {
        Codec::Raw => (codec, raw.to_vec()),
        Codec::Zstd => (codec, zstd_compress(raw, level)),
        Codec::Shuffle32 => (codec, zstd_compress(&shuffle::<4>(raw), level)),
        Codec::Shuffle64 => (codec, zstd_compress(&shuffle::<8>(raw), level)),
        Codec::Hist => {
            let shuffled = || zstd_compress(&shuffle::<4>(raw), level);
            match hist_payload(raw) {
                // Tables cost a few hundred bytes: a small layer may do better shuffled.
                Some(p) if raw.len() < SMALL_LAYER => {
                    let z = shuffled();
                    if z.len() < p.len() {
                        (Codec::Shuffle32, z)
                    } else {
                        (codec, p)
                    }
                }
                Some(p) => (codec, p),
                None => (Codec::Shuffle32, shuffled()),
            }
        }
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(OBJECT_MAGIC);
    out.extend_from_slice(&OBJECT_VERSION.to_le_bytes());
    out.push(codec as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let check = header_check(&out[..HEADER]);
    out[13..16].copy_from_slice(&check);
    out.extend_from_slice(&payload);
    out
}

/// Below this many raw bytes a histogram layer is encoded both ways and the smaller kept.
const SMALL_LAYER: usize = 64 << 10;

/// The codec-4 payload of a histogram layer blob, padded with zeros to at least
/// 1/[`hist::MAX_EXPANSION`] of the raw length; `None` when `raw` is not one.
fn hist_payload(raw: &[u8]) -> Option<Vec<u8>> {
    let (offset, neurons, bins) = super::layer::histogram_span(raw)?;
    let end = offset + neurons * bins * 4;
    let counts: Vec<u32> = raw[offset..end]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let crc = crc32fast::hash(raw);
    let mut p = hist::encode(&counts, neurons, bins, &raw[..offset], &raw[end..], crc);
    let min = (raw.len() as u64).div_ceil(hist::MAX_EXPANSION) as usize;
    if p.len() < min {
        p.resize(min, 0);
    }
    Some(p)
}

/// An object of `codec` around an arbitrary payload claiming `raw_len` raw bytes, with a
/// valid header: how the fuzz targets reach a codec's decoder past the header check.
#[cfg(any(test, feature = "testing"))]
pub fn object_of_payload(codec: Codec, raw_len: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(OBJECT_MAGIC);
    out.extend_from_slice(&OBJECT_VERSION.to_le_bytes());
    out.push(codec as u8);
    out.extend_from_slice(&[0u8; 3]);
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let check = header_check(&out[..HEADER]);
    out[13..16].copy_from_slice(&check);
    out.extend_from_slice(payload);
    out
}

/// FNV-1a (32-bit) over the header without its check bytes, low 24 bits little-endian.
fn header_check(h: &[u8]) -> [u8; 3] {
    let mut x: u32 = 0x811c_9dc5;
    for (i, b) in h[..HEADER].iter().enumerate() {
        if !(13..16).contains(&i) {
            x = (x ^ *b as u32).wrapping_mul(0x0100_0193);
        }
    }
    let b = x.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// True when the codec stores a zstd frame.
pub fn is_compressed(c: Codec) -> bool {
    c != Codec::Raw
}

fn zstd_compress(b: &[u8], level: i32) -> Vec<u8> {
    let run = || -> std::io::Result<Vec<u8>> {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.include_checksum(true)?;
        c.compress(b)
    };
    // Compressing an in-memory buffer fails only on allocation failure, which aborts anyway.
    run().unwrap_or_default()
}

/// Parses and checks an object header against the bytes that follow it.
pub fn decode_object_header(bytes: &[u8], what: &'static str) -> Result<ObjectHeader, FormatError> {
    if bytes.len() < HEADER {
        return Err(FormatError::truncated(
            what,
            format!("{} bytes, header needs {HEADER}", bytes.len()),
        ));
    }
    if &bytes[..8] != OBJECT_MAGIC {
        return Err(FormatError::BadMagic { what });
    }
    let version = le_u32(bytes, 8);
    if version != OBJECT_VERSION {
        return Err(FormatError::UnknownVersion {
            what,
            found: version,
            supported: OBJECT_VERSION,
        });
    }
    let codec = Codec::from_u8(bytes[12])
        .ok_or_else(|| FormatError::invalid(what, format!("unknown codec {}", bytes[12])))?;
    if bytes[13..16] != header_check(&bytes[..HEADER]) {
        return Err(FormatError::invalid(
            what,
            "header check mismatch (the header is damaged; run vdna-db verify)",
        ));
    }
    let raw_len = le_u64(bytes, 16);
    let payload_len = le_u64(bytes, 24);
    if raw_len > MAX_RAW_LEN {
        return Err(FormatError::invalid(
            what,
            format!("raw length {raw_len} exceeds {MAX_RAW_LEN}"),
        ));
    }
    // zstd expands at most 128 KiB per block of at least 4 bytes: a larger claim is a lie
    // that would make the reader allocate far beyond what it was given.
    let expansion: u64 = match codec {
        Codec::Hist => hist::MAX_EXPANSION,
        _ => 128 << 10,
    };
    if codec != Codec::Raw && raw_len > payload_len.saturating_add(1).saturating_mul(expansion) {
        return Err(FormatError::invalid(
            what,
            format!("raw length {raw_len} is impossible for a compressed payload of {payload_len} bytes"),
        ));
    }
    if codec == Codec::Raw && payload_len != raw_len {
        return Err(FormatError::invalid(
            what,
            "raw codec with payload length != raw length",
        ));
    }
    Ok(ObjectHeader {
        codec,
        raw_len,
        payload_len,
    })
}

/// Decodes an object (exactly header + payload, no trailing bytes) into a 16-aligned buffer.
pub fn decode_object(bytes: &[u8], what: &'static str) -> Result<AlignedVec<16>, FormatError> {
    let h = decode_object_header(bytes, what)?;
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != h.payload_len {
        return Err(FormatError::truncated(
            what,
            format!(
                "payload of {} bytes, header says {}",
                payload.len(),
                h.payload_len
            ),
        ));
    }
    let raw_len = h.raw_len as usize;
    let mut out = super::pool::take(raw_len);
    if h.codec == Codec::Raw {
        out.extend_from_slice(payload);
        return Ok(out);
    }
    if h.codec == Codec::Hist {
        decode_hist(payload, raw_len, &mut out, what)?;
        return Ok(out);
    }
    // Decompress into a per-thread scratch buffer that is reused across calls (no page
    // faults or zeroing of fresh memory on the hot path), then unshuffle into `out`.
    SCRATCH.with(|cell| {
        let mut tmp = cell.borrow_mut();
        if tmp.len() < raw_len {
            tmp.resize(raw_len, 0);
        }
        let tmp = &mut tmp[..raw_len];
        zstd_decompress_into(payload, tmp, what)?;
        match h.codec {
            Codec::Shuffle32 => unshuffle_into::<4>(tmp, &mut out),
            Codec::Shuffle64 => unshuffle_into::<8>(tmp, &mut out),
            _ => out.extend_from_slice(tmp),
        }
        Ok(out)
    })
}

/// Decodes a codec-4 payload into `out` (empty, with capacity `raw_len`) and checks the
/// CRC-32 of the result.
fn decode_hist(
    payload: &[u8],
    raw_len: usize,
    out: &mut AlignedVec<16>,
    what: &'static str,
) -> Result<(), FormatError> {
    let h = hist::parse(payload)?;
    let counts_len = h
        .neurons
        .checked_mul(h.bins)
        .and_then(|x| x.checked_mul(4))
        .filter(|&c| c.checked_add(h.prefix.len() + h.suffix.len()) == Some(raw_len))
        .ok_or_else(|| {
            FormatError::invalid(
                what,
                format!(
                    "{} x {} counts and {} bytes around them do not make {raw_len} bytes",
                    h.neurons,
                    h.bins,
                    h.prefix.len() + h.suffix.len()
                ),
            )
        })?;
    if h.bins == 0 && h.neurons > 0 {
        return Err(FormatError::invalid(what, "histogram counts of 0 bins"));
    }
    out.extend_from_slice(h.prefix);
    let start = out.len();
    out.resize(start + counts_len, 0);
    h.decode_into(&mut out[start..])?;
    out.extend_from_slice(h.suffix);
    if crc32fast::hash(out) != h.crc {
        return Err(FormatError::invalid(
            what,
            "decoded bytes fail their CRC-32 (the object is corrupt; run vdna-db verify)",
        ));
    }
    Ok(())
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn zstd_decompress_into(
    payload: &[u8],
    out: &mut [u8],
    what: &'static str,
) -> Result<(), FormatError> {
    // One decompression context per thread, reused: creating one costs more than
    // decoding a small layer.
    thread_local! {
        static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let n = DCTX.with(|cell| -> Result<usize, FormatError> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| FormatError::invalid(what, format!("zstd: {e}")))?,
            );
        }
        let d = slot.as_mut().expect("set just above");
        d.decompress_to_buffer(payload, out)
            .map_err(|e| FormatError::invalid(what, format!("zstd payload does not decode: {e}")))
    })?;
    if n != out.len() {
        return Err(FormatError::invalid(
            what,
            format!("payload decodes to {n} bytes, header says {}", out.len()),
        ));
    }
    Ok(())
}

/// Splits `W`-byte words into `W` byte planes; a tail of `len % W` bytes is kept verbatim.
fn shuffle<const W: usize>(raw: &[u8]) -> Vec<u8> {
    let words = raw.len() / W;
    let mut out = vec![0u8; raw.len()];
    for (i, w) in raw.chunks_exact(W).enumerate() {
        for (p, byte) in w.iter().enumerate() {
            out[p * words + i] = *byte;
        }
    }
    out[W * words..].copy_from_slice(&raw[W * words..]);
    out
}

/// Inverse of [`shuffle`], appending to `out`. Works in blocks of 64 words through a
/// stack buffer, so `out` needs no zeroing first; on x86-64 each block is interleaved by
/// SSE2 byte and word unpacks (part of the baseline: nothing to detect), elsewhere by a
/// loop.
fn unshuffle_into<const W: usize>(planes: &[u8], out: &mut AlignedVec<16>) {
    unshuffle_with::<W>(planes, out, false)
}

/// The 4-byte unshuffle alone, by unpacks or (`byte_loop`) by the loop they replaced: for
/// the bench that prints both.
#[doc(hidden)]
pub fn unshuffle32_for_bench(planes: &[u8], byte_loop: bool) -> AlignedVec<16> {
    let mut out = AlignedVec::with_capacity(planes.len());
    unshuffle_with::<4>(planes, &mut out, byte_loop);
    out
}

fn unshuffle_with<const W: usize>(planes: &[u8], out: &mut AlignedVec<16>, byte_loop: bool) {
    const B: usize = 64;
    let words = planes.len() / W;
    let full = words / B * B;
    let mut block = [0u8; 512];
    for blk in (0..full).step_by(B) {
        let dst = &mut block[..B * W];
        #[cfg(target_arch = "x86_64")]
        if byte_loop {
            interleave_block_scalar::<W>(planes, words, blk, dst);
        } else {
            interleave::block::<W>(planes, words, blk, dst);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = byte_loop;
            interleave_block_scalar::<W>(planes, words, blk, dst);
        }
        out.extend_from_slice(dst);
    }
    for i in full..words {
        for p in 0..W {
            out.push(planes[p * words + i]);
        }
    }
    out.extend_from_slice(&planes[W * words..]);
}

/// Words `blk..blk + 64` of `W` planes of `words` bytes each, interleaved into `dst`.
fn interleave_block_scalar<const W: usize>(
    planes: &[u8],
    words: usize,
    blk: usize,
    dst: &mut [u8],
) {
    for p in 0..W {
        let src = &planes[p * words + blk..p * words + blk + dst.len() / W];
        for (i, byte) in src.iter().enumerate() {
            dst[i * W + p] = *byte;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod interleave {
    use std::arch::x86_64::*;

    /// [`super::interleave_block_scalar`] by unpacks: sixteen words of each plane at a
    /// time, bytes paired, then pairs into quads (and quads into eights for `W = 8`).
    pub fn block<const W: usize>(planes: &[u8], words: usize, blk: usize, dst: &mut [u8]) {
        assert!(W == 4 || W == 8);
        assert!(
            dst.len().is_multiple_of(16 * W)
                && (W - 1) * words + blk + dst.len() / W <= planes.len()
        );
        for j in (0..dst.len() / W).step_by(16) {
            // SAFETY: SSE2 is part of x86-64; every load reads 16 bytes of plane p from
            // word blk + j, inside `planes` by the assert above, and every store writes
            // 16 bytes inside `dst[j * W..(j + 16) * W]`.
            unsafe {
                let p = |k: usize| {
                    _mm_loadu_si128(planes.as_ptr().add(k * words + blk + j) as *const __m128i)
                };
                let out = dst.as_mut_ptr().add(j * W) as *mut __m128i;
                let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
                let (a_lo, a_hi) = (_mm_unpacklo_epi8(p0, p1), _mm_unpackhi_epi8(p0, p1));
                let (b_lo, b_hi) = (_mm_unpacklo_epi8(p2, p3), _mm_unpackhi_epi8(p2, p3));
                // Quads of bytes 0-3 of words 0-3, 4-7, 8-11, 12-15.
                let q = [
                    _mm_unpacklo_epi16(a_lo, b_lo),
                    _mm_unpackhi_epi16(a_lo, b_lo),
                    _mm_unpacklo_epi16(a_hi, b_hi),
                    _mm_unpackhi_epi16(a_hi, b_hi),
                ];
                if W == 4 {
                    for (i, v) in q.into_iter().enumerate() {
                        _mm_storeu_si128(out.add(i), v);
                    }
                } else {
                    let (p4, p5, p6, p7) = (p(4), p(5), p(6), p(7));
                    let (c_lo, c_hi) = (_mm_unpacklo_epi8(p4, p5), _mm_unpackhi_epi8(p4, p5));
                    let (d_lo, d_hi) = (_mm_unpacklo_epi8(p6, p7), _mm_unpackhi_epi8(p6, p7));
                    // Quads of bytes 4-7, in the same word order.
                    let r = [
                        _mm_unpacklo_epi16(c_lo, d_lo),
                        _mm_unpackhi_epi16(c_lo, d_lo),
                        _mm_unpacklo_epi16(c_hi, d_hi),
                        _mm_unpackhi_epi16(c_hi, d_hi),
                    ];
                    for i in 0..4 {
                        _mm_storeu_si128(out.add(2 * i), _mm_unpacklo_epi32(q[i], r[i]));
                        _mm_storeu_si128(out.add(2 * i + 1), _mm_unpackhi_epi32(q[i], r[i]));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_odd_lengths() {
        let raw: Vec<u8> = (0..1003u32).map(|i| (i * 7 % 251) as u8).collect();
        for codec in [Codec::Raw, Codec::Zstd, Codec::Shuffle32, Codec::Shuffle64] {
            for len in [0, 1, 3, 4, 5, 8, 1003] {
                let enc = encode_object(&raw[..len], codec, 3);
                let dec = decode_object(&enc, "object").unwrap();
                assert_eq!(&dec[..], &raw[..len], "{codec:?} len {len}");
            }
        }
    }

    #[test]
    fn interleaving_by_unpacks_equals_the_byte_loop() {
        // Planes of distinct bytes, so any misplaced byte shows.
        let planes: Vec<u8> = (0..8 * 200u32).map(|i| (i * 131 + i / 251) as u8).collect();
        for blk in [0, 64, 136] {
            let words = 200;
            let mut want = [0u8; 512];
            let mut got = [0u8; 512];
            interleave_block_scalar::<4>(&planes[..4 * words], words, blk, &mut want[..256]);
            #[cfg(target_arch = "x86_64")]
            interleave::block::<4>(&planes[..4 * words], words, blk, &mut got[..256]);
            #[cfg(not(target_arch = "x86_64"))]
            interleave_block_scalar::<4>(&planes[..4 * words], words, blk, &mut got[..256]);
            assert_eq!(want[..256], got[..256], "W = 4 from word {blk}");
            interleave_block_scalar::<8>(&planes, words, blk, &mut want);
            #[cfg(target_arch = "x86_64")]
            interleave::block::<8>(&planes, words, blk, &mut got);
            #[cfg(not(target_arch = "x86_64"))]
            interleave_block_scalar::<8>(&planes, words, blk, &mut got);
            assert_eq!(want, got, "W = 8 from word {blk}");
        }
        // And whole objects, blocks and tails, against their raw bytes.
        let raw: Vec<u8> = (0..4 * 1000 + 3)
            .map(|i: u32| (i * 97 % 253) as u8)
            .collect();
        for codec in [Codec::Shuffle32, Codec::Shuffle64] {
            let dec = decode_object(&encode_object(&raw, codec, 3), "o").unwrap();
            assert_eq!(&dec[..], &raw[..], "{codec:?}");
        }
    }

    #[test]
    fn codec_and_level_do_not_change_the_raw_bytes() {
        let raw: Vec<u8> = (0..4096u32).flat_map(|i| (i / 3).to_le_bytes()).collect();
        let a = decode_object(&encode_object(&raw, Codec::Shuffle32, 1), "o").unwrap();
        let b = decode_object(&encode_object(&raw, Codec::Zstd, 19), "o").unwrap();
        assert_eq!(&a[..], &b[..]);
    }

    #[test]
    fn a_single_damaged_byte_never_decodes_to_different_bytes() {
        // Either the damage is detected, or (a bit zstd does not use) the output is intact.
        let raw: Vec<u8> = (0..600u32).flat_map(|i| (i % 17).to_le_bytes()).collect();
        for codec in [Codec::Zstd, Codec::Shuffle32, Codec::Shuffle64] {
            let enc = encode_object(&raw, codec, 3);
            for at in 0..enc.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut m = enc.clone();
                    m[at] ^= flip;
                    if let Ok(d) = decode_object(&m, "o") {
                        assert_eq!(
                            &d[..],
                            &raw[..],
                            "{codec:?}: flipping byte {at} by {flip:#x} decoded to other bytes"
                        );
                    }
                }
            }
        }
    }

    /// A histogram layer blob past SMALL_LAYER, as `Dna::encode` writes it.
    fn histogram_blob() -> Vec<u8> {
        let counts: Vec<u32> = (0..70 * 250u32)
            .map(|i| if i % 250 == 0 { 2000 } else { (i * 7919) % 13 })
            .collect();
        crate::format::encode_layer(&crate::format::LayerBlob {
            kind: crate::format::layer_kinds::KIND_HISTOGRAM,
            neurons: 70,
            bins: 250,
            counts,
            f0: vec![],
            f1: vec![],
        })
    }

    #[test]
    fn the_histogram_codec_round_trips_layer_blobs_and_falls_back_on_other_bytes() {
        let raw = histogram_blob();
        let enc = encode_object(&raw, Codec::Hist, 3);
        assert_eq!(decode_object_header(&enc, "o").unwrap().codec, Codec::Hist);
        assert_eq!(&decode_object(&enc, "o").unwrap()[..], &raw[..]);
        // Not a layer blob: stored with the 4-byte shuffle instead, and said so.
        let other = encode_object(b"not a layer", Codec::Hist, 3);
        assert_eq!(
            decode_object_header(&other, "o").unwrap().codec,
            Codec::Shuffle32
        );
        assert_eq!(&decode_object(&other, "o").unwrap()[..], b"not a layer");
        // A near-empty layer is padded to the expansion bound a reader enforces.
        let empty = crate::format::encode_layer(&crate::format::LayerBlob {
            kind: crate::format::layer_kinds::KIND_HISTOGRAM,
            neurons: 2048,
            bins: 1000,
            counts: vec![0; 2048 * 1000],
            f0: vec![],
            f1: vec![],
        });
        let enc = encode_object(&empty, Codec::Hist, 3);
        let h = decode_object_header(&enc, "o").unwrap();
        assert!(h.raw_len <= (h.payload_len + 1) * hist::MAX_EXPANSION);
        assert_eq!(&decode_object(&enc, "o").unwrap()[..], &empty[..]);
    }

    #[test]
    fn a_damaged_histogram_object_never_decodes_to_different_bytes() {
        let raw = histogram_blob();
        let enc = encode_object(&raw, Codec::Hist, 3);
        for at in 0..enc.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = enc.clone();
                m[at] ^= flip;
                if let Ok(d) = decode_object(&m, "o") {
                    assert_eq!(&d[..], &raw[..], "flipping byte {at} by {flip:#x}");
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_and_bad_codecs_are_refused() {
        let mut enc = encode_object(b"hello", Codec::Zstd, 3);
        enc.push(0);
        assert!(decode_object(&enc, "o").is_err());
        let mut enc = encode_object(b"hello", Codec::Zstd, 3);
        enc[12] = 77;
        assert!(decode_object(&enc, "o").is_err());
    }
}
