//! Codec 4: histogram counts under a context model, entropy-coded with rANS.
//!
//! What the model knows about a layer of per-neuron histograms (measured on the reference's
//! own DNAs, see schema/README.md, "Codec 4"):
//! - every neuron of a layer usually has the same total (images x positions), so bin 0 (the
//!   ReLU spike, the largest and least predictable count) follows from the others;
//! - outside each neuron's first..last non-zero bin (bin 0 aside) all counts are zero;
//! - a count is best predicted by the sum of the `w` bins before it in the same neuron,
//!   bucketed at four steps per octave; the best `w` differs per layer, so the encoder
//!   tries several and records its choice.
//!
//! A count is coded as a token (the value itself below 16, else its octave and two more
//! bits: 4 tokens per octave, 128 in all) under the table of its context, plus the bits
//! below those as raw bits in a separate stream. Tables are static per layer object:
//! counted in a first pass, adjacent contexts merged while a shared table costs fewer bits
//! than a table of its own, and normalised to 2^11. The neurons are dealt round-robin to 4
//! lanes, each with its own rANS state, byte stream and bit stream, so a decoder can run
//! the lanes' dependency chains side by side.
//!
//! The payload ends with nothing but optional zero padding, which keeps every payload at
//! least 1/32768 of its raw length (the bound every compressed codec obeys, so a reader
//! never allocates far beyond what it was given). A CRC-32 of the raw bytes and the final
//! state of every lane detect damage the model alone would not.

use super::FormatError;

const WHAT: &str = "histogram codec payload";
/// Version of this payload layout.
const VERSION: u8 = 1;
const PROB_BITS: u32 = 11;
const PROB_SCALE: u32 = 1 << PROB_BITS;
/// Lower bound of a normalised rANS state (16-bit renormalisation).
const RANS_L: u32 = 1 << 16;
/// Number of interleaved lanes.
pub const LANES: usize = 4;
/// Tokens: 0..16 are values, then 4 per octave from 16 to 2^32.
const NTOK: usize = 128;
/// Fixed tables: first non-zero bin, length of the non-zero range, bin 0 when totals differ.
const T_FIRST: usize = 0;
const T_LEN: usize = 1;
const T_SPIKE: usize = 2;
const FIXED_TABLES: usize = 3;
/// Raw contexts of the body: bucket of the window sum, at most this many.
const NRAW: usize = 128;
/// Window lengths the encoder tries.
const WINDOWS: [u8; 10] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32];
/// Every payload is at least raw length / this (see the module docs).
pub const MAX_EXPANSION: u64 = 32 << 10;

/// A count as (token, number of extra bits, extra bits).
#[inline(always)]
fn token(v: u32) -> (u8, u32, u32) {
    if v < 16 {
        return (v as u8, 0, 0);
    }
    let e = 31 - v.leading_zeros();
    let nb = e - 2;
    let tok = 16 + (e - 4) * 4 + ((v >> nb) & 3);
    (tok as u8, nb, v & ((1 << nb) - 1))
}

/// Extra bits of a token (the decoder inlines this and `token_value`).
#[cfg(test)]
fn token_bits(tok: u8) -> u32 {
    if tok < 16 {
        0
    } else {
        (tok as u32 - 16) / 4 + 2
    }
}

/// The value of a token and its extra bits.
#[cfg(test)]
fn token_value(tok: u8, extra: u32) -> u32 {
    if tok < 16 {
        return tok as u32;
    }
    let t = tok as u32 - 16;
    let nb = t / 4 + 2;
    ((4 | (t & 3)) << nb) | extra
}

/// The raw context of a window sum: two buckets per octave of `1 + s` (four measured no
/// smaller once tables are paid for, and twice the tables cost decode speed in cache).
#[inline(always)]
fn bucket(s: u64) -> usize {
    let v = s.saturating_add(1);
    let e = 63 - v.leading_zeros();
    if e == 0 {
        0
    } else {
        (2 * e - 1) as usize + ((v >> (e - 1)) & 1) as usize
    }
}

/// What the encoder found in a layer, before coding.
struct Shape<'a> {
    counts: &'a [u32],
    neurons: usize,
    bins: usize,
}

impl Shape<'_> {
    fn row(&self, n: usize) -> &[u32] {
        &self.counts[n * self.bins..(n + 1) * self.bins]
    }

    /// First and last non-zero bins of the body (bins 1..), as body indices.
    fn range(&self, n: usize) -> Option<(usize, usize)> {
        let body = &self.row(n)[1..];
        let f = body.iter().position(|&c| c != 0)?;
        let l = body.iter().rposition(|&c| c != 0)?;
        Some((f, l))
    }
}

/// Calls `emit(raw context, token, extra bits, value)` for each body count of neuron `n`
/// inside its non-zero range, with window `w`.
#[inline(always)]
fn walk_body(
    body: &[u32],
    f: usize,
    l: usize,
    w: usize,
    mut emit: impl FnMut(usize, u8, u32, u32),
) {
    let mut s: u64 = 0;
    for i in f..=l {
        let v = body[i];
        let (tok, nb, extra) = token(v);
        emit(bucket(s), tok, nb, extra);
        s += v as u64;
        if i >= f + w {
            s -= body[i - w] as u64;
        }
    }
}

/// Bits to code `c` under its own empirical distribution.
fn entropy_bits(c: &[u64]) -> f64 {
    let total: u64 = c.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let lt = (total as f64).log2();
    c.iter()
        .filter(|&&x| x > 0)
        .map(|&x| x as f64 * (lt - (x as f64).log2()))
        .sum()
}

/// Bytes a table takes in the payload (see `write_tables`), estimated from raw counts.
fn table_bytes(c: &[u64]) -> f64 {
    let total: u64 = c.iter().sum::<u64>().max(1);
    let nsym = c.iter().rposition(|&x| x > 0).map_or(0, |p| p + 1);
    1.0 + c[..nsym]
        .iter()
        .map(|&x| {
            let f = (x * PROB_SCALE as u64 / total).max(u64::from(x > 0));
            if f < 128 {
                1.0
            } else {
                2.0
            }
        })
        .sum::<f64>()
}

/// Estimated body bits with window `w` over every `step`-th neuron.
fn estimate(shape: &Shape<'_>, w: usize, step: usize) -> f64 {
    let mut hist = vec![[0u64; NTOK]; NRAW];
    let mut extra_bits = 0u64;
    for n in (0..shape.neurons).step_by(step) {
        if let Some((f, l)) = shape.range(n) {
            walk_body(&shape.row(n)[1..], f, l, w, |ctx, tok, nb, _| {
                hist[ctx][tok as usize] += 1;
                extra_bits += nb as u64;
            });
        }
    }
    hist.iter().map(|h| entropy_bits(h)).sum::<f64>() + extra_bits as f64
}

/// Groups adjacent raw contexts into tables: merges the adjacent pair whose shared table
/// costs least over two of their own, while sharing costs fewer bits than the table saved.
/// Returns the table of each raw context (relative to the first body table) and the
/// merged counts.
fn cluster(hist: &[[u64; NTOK]]) -> (Vec<u8>, Vec<[u64; NTOK]>) {
    // Groups of consecutive raw contexts: (first raw context, counts).
    let mut groups: Vec<(usize, [u64; NTOK])> = hist
        .iter()
        .enumerate()
        .filter(|(_, h)| h.iter().any(|&x| x > 0))
        .map(|(i, h)| (i, *h))
        .collect();
    let merged = |a: &[u64; NTOK], b: &[u64; NTOK]| {
        let mut m = [0u64; NTOK];
        for i in 0..NTOK {
            m[i] = a[i] + b[i];
        }
        m
    };
    let gain = |a: &[u64; NTOK], b: &[u64; NTOK]| {
        let m = merged(a, b);
        let extra = entropy_bits(&m) - entropy_bits(a) - entropy_bits(b);
        let saved = 8.0 * (table_bytes(a) + table_bytes(b) - table_bytes(&m));
        saved - extra
    };
    let mut gains: Vec<f64> = groups.windows(2).map(|p| gain(&p[0].1, &p[1].1)).collect();
    // At most 255 - FIXED_TABLES tables: merge past a positive gain only to get there.
    while let Some((best, g)) = gains
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        if g <= 0.0 && groups.len() <= 255 - FIXED_TABLES {
            break;
        }
        let b = groups.remove(best + 1);
        groups[best].1 = merged(&groups[best].1, &b.1);
        gains.remove(best);
        if best > 0 {
            gains[best - 1] = gain(&groups[best - 1].1, &groups[best].1);
        }
        if best < gains.len() {
            gains[best] = gain(&groups[best].1, &groups[best + 1].1);
        }
    }
    // Raw contexts before the first group's start map to the first group (never used).
    let mut map = vec![0u8; NRAW];
    for (g, (start, _)) in groups.iter().enumerate() {
        for m in map.iter_mut().skip(*start) {
            *m = g as u8;
        }
    }
    (map, groups.into_iter().map(|g| g.1).collect())
}

/// Normalises counts to frequencies summing to PROB_SCALE, every present symbol at least 1.
/// An empty table gets all its mass on token 0 (it is never used).
fn normalise(c: &[u64; NTOK]) -> Vec<u32> {
    let total: u64 = c.iter().sum();
    let nsym = c.iter().rposition(|&x| x > 0).map_or(1, |p| p + 1);
    let mut f = vec![0u32; nsym];
    if total == 0 {
        f[0] = PROB_SCALE;
        return f;
    }
    for (i, &x) in c[..nsym].iter().enumerate() {
        if x > 0 {
            f[i] = ((x as u128 * PROB_SCALE as u128 / total as u128) as u32).max(1);
        }
    }
    let mut sum: u32 = f.iter().sum();
    // Rounding down leaves mass over: give it to the most frequent symbol. Raising rare
    // symbols to 1 may overshoot: take it back from the most frequent ones, which the at
    // most 128 symbols (each >= 1, 2048 in all) always allow.
    if sum < PROB_SCALE {
        let i = (0..nsym)
            .max_by_key(|&i| (f[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        f[i] += PROB_SCALE - sum;
    }
    while sum > PROB_SCALE {
        let i = (0..nsym)
            .max_by_key(|&i| (f[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        f[i] -= 1;
        sum -= 1;
    }
    f
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                FormatError::truncated(WHAT, format!("needs {n} bytes at {}", self.pos))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.bytes(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.bytes(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(FormatError::invalid(WHAT, "varint too long"))
    }
}

/// One lane's output: the rANS symbols (table, token) in coding order, and its raw bits.
#[derive(Default)]
struct LaneOut {
    syms: Vec<(u8, u8)>,
    bits: BitWriter,
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    #[inline(always)]
    fn put(&mut self, v: u32, nb: u32) {
        if nb == 0 {
            return;
        }
        self.acc |= (v as u64) << self.n;
        self.n += nb;
        // At most 32 bits are put at once, so 32 pending bits leave the accumulator whole.
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    /// The stream, zero-padded to whole 4-byte words (the decoder refills by words).
    fn finish(mut self) -> Vec<u8> {
        while self.n > 0 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n = self.n.saturating_sub(8);
        }
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
        self.out
    }
}

/// Encodes `neurons x bins` counts (neuron-major). The caller stores the bytes around the
/// counts (`prefix`, `suffix`) verbatim and `crc` of the whole raw object.
pub fn encode(
    counts: &[u32],
    neurons: usize,
    bins: usize,
    prefix: &[u8],
    suffix: &[u8],
    crc: u32,
) -> Vec<u8> {
    assert_eq!(counts.len(), neurons * bins, "counts of {neurons} x {bins}");
    let total = if bins >= 2 && neurons > 0 {
        let t0: u64 = counts[..bins].iter().map(|&c| c as u64).sum();
        counts
            .chunks_exact(bins)
            .all(|r| r.iter().map(|&c| c as u64).sum::<u64>() == t0)
            .then_some(t0)
    } else {
        None
    };
    let shape = Shape {
        counts,
        neurons,
        bins,
    };
    // The window: every candidate estimated on a sample of about 16 neurons, then the
    // two cheapest again on about 64, the cheapest of those taken.
    let w = if bins > 2 {
        let (coarse, fine) = ((neurons / 16).max(1), (neurons / 64).max(1));
        let mut est: Vec<(f64, u8)> = WINDOWS
            .iter()
            .map(|&w| (estimate(&shape, w as usize, coarse), w))
            .collect();
        est.sort_by(|a, b| a.0.total_cmp(&b.0));
        est.truncate(2);
        if fine != coarse {
            for e in &mut est {
                e.0 = estimate(&shape, e.1 as usize, fine);
            }
        }
        est.iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(1, |x| x.1)
    } else {
        1
    } as usize;

    // One walk: every symbol queued in its lane with its raw context in place of its
    // table (mapped once the tables are known).
    let mut lanes: Vec<LaneOut> = (0..LANES)
        .map(|_| LaneOut {
            syms: Vec::with_capacity((neurons / LANES + 1) * (bins + 2)),
            bits: BitWriter::default(),
        })
        .collect();
    for n in 0..neurons {
        let lane = &mut lanes[n % LANES];
        let row = shape.row(n);
        if bins >= 2 {
            match shape.range(n) {
                None => lane.syms.push((T_FIRST as u8, 0)),
                Some((f, l)) => {
                    let (t, nb, x) = token(f as u32 + 1);
                    lane.syms.push((T_FIRST as u8, t));
                    lane.bits.put(x, nb);
                    let (t, nb, x) = token((l - f) as u32);
                    lane.syms.push((T_LEN as u8, t));
                    lane.bits.put(x, nb);
                    let LaneOut { syms, bits } = lane;
                    walk_body(&row[1..], f, l, w, |ctx, tok, nb, extra| {
                        syms.push(((FIXED_TABLES + ctx) as u8, tok));
                        bits.put(extra, nb);
                    });
                }
            }
        }
        if total.is_none() {
            let (t, nb, x) = token(row[0]);
            lane.syms.push((T_SPIKE as u8, t));
            lane.bits.put(x, nb);
        }
    }
    // Count the symbols into four copies of the tables taken in turn, so that runs of
    // one symbol do not wait on one counter, then add the copies up. A copy sees at most
    // about a quarter of the layer's symbols: u32 holds them for any layer an object can
    // hold.
    const ROWS: usize = FIXED_TABLES + NRAW;
    let mut copies = vec![[0u32; NTOK]; 4 * ROWS];
    for lane in &lanes {
        let mut quads = lane.syms.chunks_exact(4);
        for q in &mut quads {
            copies[q[0].0 as usize][q[0].1 as usize] += 1;
            copies[ROWS + q[1].0 as usize][q[1].1 as usize] += 1;
            copies[2 * ROWS + q[2].0 as usize][q[2].1 as usize] += 1;
            copies[3 * ROWS + q[3].0 as usize][q[3].1 as usize] += 1;
        }
        for &(t, tok) in quads.remainder() {
            copies[t as usize][tok as usize] += 1;
        }
    }
    let mut all = vec![[0u64; NTOK]; ROWS];
    for (r, row) in all.iter_mut().enumerate() {
        for (k, x) in row.iter_mut().enumerate() {
            *x = (0..4).map(|c| copies[c * ROWS + r][k] as u64).sum();
        }
    }
    let hist = all.split_off(FIXED_TABLES);
    let fixed = all;
    let (map, body_tables) = cluster(&hist);
    for lane in &mut lanes {
        for s in &mut lane.syms {
            if s.0 as usize >= FIXED_TABLES {
                s.0 = FIXED_TABLES as u8 + map[s.0 as usize - FIXED_TABLES];
            }
        }
    }
    let mut freqs: Vec<Vec<u32>> = fixed.iter().map(normalise).collect();
    freqs.extend(body_tables.iter().map(normalise));
    // Start of each symbol in its table.
    let starts: Vec<Vec<u32>> = freqs
        .iter()
        .map(|f| {
            f.iter()
                .scan(0u32, |acc, &x| {
                    let s = *acc;
                    *acc += x;
                    Some(s)
                })
                .collect()
        })
        .collect();

    let mut out = vec![
        VERSION,
        u8::from(total.is_some()),
        w as u8,
        freqs.len() as u8,
    ];
    out.extend_from_slice(&(neurons as u32).to_le_bytes());
    out.extend_from_slice(&(bins as u32).to_le_bytes());
    out.extend_from_slice(&total.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(prefix.len() as u32).to_le_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&(suffix.len() as u32).to_le_bytes());
    out.extend_from_slice(suffix);
    // The context map, up to the last raw context used.
    let used = hist
        .iter()
        .rposition(|h| h.iter().any(|&x| x > 0))
        .map_or(0, |p| p + 1);
    out.push(used as u8);
    out.extend_from_slice(&map[..used]);
    for f in &freqs {
        out.push(f.len() as u8);
        for &x in f {
            put_varint(&mut out, x as u64);
        }
    }
    let syms: Vec<&[(u8, u8)]> = lanes.iter().map(|l| l.syms.as_slice()).collect();
    let coded = rans_encode(&syms, &freqs, &starts);
    let streams: Vec<(Vec<u8>, Vec<u8>)> = coded
        .into_iter()
        .zip(lanes)
        .map(|(r, lane)| (r, lane.bits.finish()))
        .collect();
    for (r, b) in &streams {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    for (r, b) in &streams {
        out.extend_from_slice(r);
        out.extend_from_slice(b);
    }
    out
}

/// rANS-encodes each lane's symbols in reverse, so the decoder reads forward: 32-bit
/// state, 16-bit renormalisation (one conditional read per symbol). Each stream opens with
/// its final state (low half first); all words are little-endian u16. The lanes are coded
/// in lockstep while all have symbols left: their states are independent, so the core
/// overlaps their divisions.
fn rans_encode(lanes: &[&[(u8, u8)]], freqs: &[Vec<u32>], starts: &[Vec<u32>]) -> Vec<Vec<u8>> {
    // (frequency, start) of every (table, token), flat.
    let mut fs = vec![(1u32, 0u32); freqs.len() * NTOK];
    for (t, (f, st)) in freqs.iter().zip(starts).enumerate() {
        for (s, (&f, &st)) in f.iter().zip(st).enumerate() {
            fs[t * NTOK + s] = (f, st);
        }
    }
    #[inline(always)]
    fn put(x: &mut u32, words: &mut Vec<u16>, (freq, start): (u32, u32)) {
        // x_max = ((RANS_L >> PROB_BITS) << 16) * freq
        if (*x as u64) >= ((((RANS_L >> PROB_BITS) as u64) << 16) * freq as u64) {
            words.push(*x as u16);
            *x >>= 16;
        }
        *x = ((*x / freq) << PROB_BITS) + (*x % freq) + start;
    }
    let sym = |&(t, s): &(u8, u8)| fs[t as usize * NTOK + s as usize];
    let mut x = vec![RANS_L; lanes.len()];
    let mut words: Vec<Vec<u16>> = lanes
        .iter()
        .map(|l| Vec::with_capacity(l.len() / 4 + 4))
        .collect();
    let common = lanes.iter().map(|l| l.len()).min().unwrap_or(0);
    if lanes.len() == LANES {
        let [x0, x1, x2, x3] = &mut x[..] else {
            unreachable!()
        };
        let [w0, w1, w2, w3] = &mut words[..] else {
            unreachable!()
        };
        for i in 1..=common {
            put(x0, w0, sym(&lanes[0][lanes[0].len() - i]));
            put(x1, w1, sym(&lanes[1][lanes[1].len() - i]));
            put(x2, w2, sym(&lanes[2][lanes[2].len() - i]));
            put(x3, w3, sym(&lanes[3][lanes[3].len() - i]));
        }
    }
    let done = if lanes.len() == LANES { common } else { 0 };
    for (l, lane) in lanes.iter().enumerate() {
        for s in lane[..lane.len() - done].iter().rev() {
            put(&mut x[l], &mut words[l], sym(s));
        }
    }
    x.iter()
        .zip(words)
        .map(|(&x, mut w)| {
            w.push((x >> 16) as u16);
            w.push(x as u16);
            w.reverse();
            w.iter().flat_map(|w| w.to_le_bytes()).collect()
        })
        .collect()
}

/// The fixed part of a payload, read before decoding.
pub struct Header<'a> {
    pub neurons: usize,
    pub bins: usize,
    pub crc: u32,
    pub prefix: &'a [u8],
    pub suffix: &'a [u8],
    total: Option<u64>,
    w: usize,
    /// The table of each raw context.
    map: [u8; 256],
    /// Every table's 2048 slots: the symbol of each (2 KiB a table, so the tables of a
    /// layer stay in the core's L2 cache).
    slots: Vec<u8>,
    /// Every table's (start, frequency) per symbol, 128 a table.
    sf: Vec<(u16, u16)>,
    lanes: Vec<(&'a [u8], &'a [u8])>,
}

/// Parses a payload's header, tables and lane streams, checking every length and table.
pub fn parse(payload: &[u8]) -> Result<Header<'_>, FormatError> {
    let mut r = Reader { b: payload, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(FormatError::UnknownVersion {
            what: WHAT,
            found: version as u32,
            supported: VERSION as u32,
        });
    }
    let flags = r.u8()?;
    if flags > 1 {
        return Err(FormatError::invalid(
            WHAT,
            format!("unknown flags {flags:#x}"),
        ));
    }
    let w = r.u8()? as usize;
    let ntables = r.u8()? as usize;
    if w == 0 || ntables < FIXED_TABLES {
        return Err(FormatError::invalid(
            WHAT,
            format!("window {w} or {ntables} tables"),
        ));
    }
    let neurons = r.u32()? as usize;
    let bins = r.u32()? as usize;
    let total = r.u64()?;
    if flags & 1 == 0 && total != 0 {
        // Unused, so written as zero: a damaged byte here would change nothing decoded,
        // and is refused so that every byte of an object is checked.
        return Err(FormatError::invalid(
            WHAT,
            "a common total without its flag (damaged payload)",
        ));
    }
    let total = (flags & 1 == 1).then_some(total);
    let crc = r.u32()?;
    let n = r.u32()? as usize;
    let prefix = r.bytes(n)?;
    let n = r.u32()? as usize;
    let suffix = r.bytes(n)?;
    let used = r.u8()? as usize;
    let raw_map = r.bytes(used)?;
    if raw_map
        .iter()
        .any(|&m| m as usize + FIXED_TABLES >= ntables)
    {
        return Err(FormatError::invalid(
            WHAT,
            "context map names a missing table",
        ));
    }
    // Contexts past the last one used map to the last table: only a damaged stream reaches
    // them, and the CRC-32 refuses what it decodes to.
    let mut map = [(ntables - 1) as u8; 256];
    for (m, &t) in map.iter_mut().zip(raw_map) {
        *m = FIXED_TABLES as u8 + t;
    }
    let mut slots = vec![0u8; ntables * PROB_SCALE as usize];
    let mut sf = vec![(0u16, 0u16); ntables * NTOK];
    for (t, table) in slots.chunks_exact_mut(PROB_SCALE as usize).enumerate() {
        let nsym = r.u8()? as usize;
        if nsym == 0 || nsym > NTOK {
            return Err(FormatError::invalid(
                WHAT,
                format!("table {t}: {nsym} symbols"),
            ));
        }
        let mut start = 0u32;
        for sym in 0..nsym as u32 {
            let f = r.varint()?;
            if f > (PROB_SCALE - start) as u64 {
                return Err(FormatError::invalid(
                    WHAT,
                    format!("table {t}: frequencies sum past {PROB_SCALE}"),
                ));
            }
            let f = f as u32;
            table[start as usize..(start + f) as usize].fill(sym as u8);
            sf[t * NTOK + sym as usize] = (start as u16, f as u16);
            start += f;
        }
        if start != PROB_SCALE {
            return Err(FormatError::invalid(
                WHAT,
                format!("table {t}: frequencies sum to {start}, not {PROB_SCALE}"),
            ));
        }
    }
    let mut lens = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        lens.push((r.u32()? as usize, r.u32()? as usize));
    }
    let mut lanes = Vec::with_capacity(LANES);
    for (rl, bl) in lens {
        let rs = r.bytes(rl)?;
        if rl < 4 || rl % 2 != 0 {
            return Err(FormatError::invalid(
                WHAT,
                format!("a rANS stream of {rl} bytes (4 or more, even)"),
            ));
        }
        lanes.push((rs, r.bytes(bl)?));
    }
    if payload[r.pos..].iter().any(|&b| b != 0) {
        return Err(FormatError::invalid(
            WHAT,
            "non-zero bytes after the lane streams",
        ));
    }
    Ok(Header {
        neurons,
        bins,
        crc,
        prefix,
        suffix,
        total,
        w,
        map,
        slots,
        sf,
        lanes,
    })
}

/// One lane's decoder: rANS state and stream, bit reader, and the neuron it is inside.
/// Reading past a stream's end yields zeros and is caught when the lanes finish (every
/// stream must end exactly where its lane does, in the encoder's final state).
struct Lane<'a> {
    x: u32,
    words: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    bits: &'a [u8],
    bpos: usize,
    /// The next neuron of this lane to start.
    next: usize,
    /// The current neuron: byte offset of its row in the output, next and last body bin,
    /// first body bin, window sum, sum of its body.
    row: usize,
    i: usize,
    l: usize,
    f: usize,
    s: u64,
    sum: u64,
    /// True while inside a neuron's non-zero range.
    active: bool,
}

impl Lane<'_> {
    #[inline(always)]
    fn symbol(&mut self, h: &Header<'_>, t: usize) -> u32 {
        let slot = self.x & (PROB_SCALE - 1);
        let sym = h.slots[t * PROB_SCALE as usize + slot as usize] as usize;
        let (start, freq) = h.sf[t * NTOK + sym];
        let x = freq as u32 * (self.x >> PROB_BITS) + slot - start as u32;
        // Renormalise without a branch: read the next word, keep it only when needed.
        let w = match self.words.get(self.pos..self.pos + 2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]) as u32,
            None => 0,
        };
        let need = x < RANS_L;
        self.x = if need { (x << 16) | w } else { x };
        self.pos += 2 * usize::from(need);
        sym as u32
    }

    /// `nb` (at most 29) raw bits; refills a whole 32-bit word at a time, so the only
    /// branch is taken about once per 32 bits.
    #[inline(always)]
    fn extra(&mut self, nb: u32) -> u32 {
        if self.nbits < 32 {
            let w = match self.bits.get(self.bpos..self.bpos + 4) {
                Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                None => 0,
            };
            self.acc |= (w as u64) << self.nbits;
            self.bpos += 4;
            self.nbits += 32;
        }
        let v = (self.acc & ((1u64 << nb) - 1)) as u32;
        self.acc >>= nb;
        self.nbits -= nb;
        v
    }

    /// The value of a token: itself below 16, else its octave, two bits and extra bits
    /// (computed without a branch on the token).
    #[inline(always)]
    fn token_value(&mut self, tok: u32) -> u32 {
        let big = u32::from(tok >= 16);
        let t = tok.wrapping_sub(16);
        let nb = big * (t / 4 + 2);
        let head = if big == 1 { (4 | (t & 3)) << nb } else { tok };
        head | self.extra(nb)
    }

    /// A value under table `t` (a token and its extra bits).
    #[inline(always)]
    fn value(&mut self, h: &Header<'_>, t: usize) -> u32 {
        let tok = self.symbol(h, t);
        self.token_value(tok)
    }

    /// Decodes one body bin of the current neuron.
    #[inline(always)]
    fn step(&mut self, h: &Header<'_>, out: &mut [u8]) {
        let tok = self.symbol(h, h.map[bucket(self.s)] as usize);
        let v = self.token_value(tok);
        let at = self.row + 4 * (1 + self.i);
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        self.s += v as u64;
        if self.i >= self.f + h.w {
            let o = at - 4 * h.w;
            self.s -= u32::from_le_bytes([out[o], out[o + 1], out[o + 2], out[o + 3]]) as u64;
        }
        self.sum += v as u64;
        self.i += 1;
        self.active = self.i <= self.l;
    }
}

impl Header<'_> {
    /// Decodes the counts into `out` (`neurons x bins` little-endian u32, zero-filled).
    pub fn decode_into(&self, out: &mut [u8]) -> Result<(), FormatError> {
        let (neurons, bins) = (self.neurons, self.bins);
        if Some(out.len()) != neurons.checked_mul(bins).and_then(|x| x.checked_mul(4)) {
            return Err(FormatError::invalid(WHAT, "counts do not fill the object"));
        }
        debug_assert!(out.iter().all(|&b| b == 0), "output not zero-filled");
        let mut lanes: Vec<Lane<'_>> = self
            .lanes
            .iter()
            .enumerate()
            .map(|(k, (rs, bs))| Lane {
                x: u32::from_le_bytes([rs[0], rs[1], rs[2], rs[3]]),
                words: rs,
                pos: 4,
                acc: 0,
                nbits: 0,
                bits: bs,
                bpos: 0,
                next: k,
                row: 0,
                i: 0,
                l: 0,
                f: 0,
                s: 0,
                sum: 0,
                active: false,
            })
            .collect();
        let mut bad = false;
        for lane in lanes.iter_mut() {
            bad |= !self.advance(lane, out);
        }
        loop {
            let mut k = usize::MAX;
            let mut all = true;
            for lane in &lanes {
                if lane.active {
                    k = k.min(lane.l + 1 - lane.i);
                } else {
                    all = false;
                }
            }
            if k == usize::MAX {
                break;
            }
            if all {
                // The common case: every lane inside a neuron for at least k more bins; the
                // lanes' dependency chains run side by side.
                for _ in 0..k {
                    for lane in lanes.iter_mut() {
                        lane.step(self, out);
                    }
                }
            } else {
                for lane in lanes.iter_mut().filter(|l| l.active) {
                    for _ in 0..k {
                        lane.step(self, out);
                    }
                }
            }
            for lane in lanes.iter_mut() {
                if !lane.active && lane.row != usize::MAX {
                    bad |= !self.finish(lane, out);
                    bad |= !self.advance(lane, out);
                }
            }
        }
        for (k, lane) in lanes.iter().enumerate() {
            // Bits used: every word loaded less what is still buffered; the last word of the
            // stream must have been needed.
            let used = (lane.bpos * 8) as u64 - lane.nbits as u64;
            let len = lane.bits.len() as u64 * 8;
            // The bits past the last one used are the writer's zero padding.
            let rest_zero = lane.acc == 0
                && lane
                    .bits
                    .get(lane.bpos..)
                    .is_none_or(|b| b.iter().all(|&x| x == 0));
            let bits_ok = (used <= len && used + 32 > len || len == 0 && used == 0) && rest_zero;
            if bad || lane.x != RANS_L || lane.pos != lane.words.len() || !bits_ok {
                return Err(FormatError::invalid(
                    WHAT,
                    format!("lane {k} does not end where its streams do (damaged payload)"),
                ));
            }
        }
        Ok(())
    }

    /// Starts the lane's next neuron, finishing at once those without a non-zero body;
    /// marks the lane done (`row == usize::MAX`) after its last. False on a range that
    /// cannot be.
    fn advance(&self, lane: &mut Lane<'_>, out: &mut [u8]) -> bool {
        while lane.next < self.neurons {
            let n = lane.next;
            lane.next += LANES;
            lane.row = n * self.bins * 4;
            lane.sum = 0;
            lane.s = 0;
            if self.bins >= 2 {
                let f1 = lane.value(self, T_FIRST) as usize;
                if f1 > 0 {
                    let f = f1 - 1;
                    let l = f.saturating_add(lane.value(self, T_LEN) as usize);
                    if l >= self.bins - 1 {
                        return false;
                    }
                    (lane.f, lane.i, lane.l, lane.active) = (f, f, l, true);
                    return true;
                }
            }
            if !self.finish(lane, out) {
                return false;
            }
        }
        lane.row = usize::MAX;
        lane.active = false;
        true
    }

    /// Writes bin 0 of the lane's current neuron: the total less the body, or its own
    /// symbol when totals differ. False when the body sums past the total.
    fn finish(&self, lane: &mut Lane<'_>, out: &mut [u8]) -> bool {
        let v = match self.total {
            Some(t) => match t.checked_sub(lane.sum).and_then(|z| u32::try_from(z).ok()) {
                Some(v) => v,
                None => return false,
            },
            None => lane.value(self, T_SPIKE),
        };
        out[lane.row..lane.row + 4].copy_from_slice(&v.to_le_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_at_every_octave_edge() {
        let mut vs: Vec<u32> = (0..300).collect();
        for e in 4..32 {
            let p = 1u32 << e;
            vs.extend([p - 1, p, p + 1, p | (p >> 1), p | (p >> 2), p | (p - 1)]);
        }
        vs.push(u32::MAX);
        for v in vs {
            let (t, nb, x) = token(v);
            assert!((t as usize) < NTOK, "{v}: token {t}");
            assert_eq!(nb, token_bits(t), "{v}");
            assert!(x < (1u64 << nb) as u32 || nb == 0 && x == 0);
            assert_eq!(token_value(t, x), v, "{v}");
        }
    }

    #[test]
    fn buckets_grow_with_the_sum_two_per_octave() {
        let mut last = 0;
        for s in 0..100_000u64 {
            let b = bucket(s);
            assert!(b >= last && b <= last + 1, "{s}");
            last = b;
        }
        // 1+s from 2^10 to 2^11 spans exactly two buckets.
        assert_eq!(bucket((1 << 11) - 1) - bucket((1 << 10) - 1), 2);
        assert!(bucket(u64::MAX) < NRAW);
    }

    #[test]
    fn normalised_tables_sum_to_the_scale_and_keep_every_symbol() {
        let mut c = [0u64; NTOK];
        c[0] = 1_000_000_000;
        for x in c.iter_mut().skip(1) {
            *x = 1;
        }
        let f = normalise(&c);
        assert_eq!(f.iter().sum::<u32>(), PROB_SCALE);
        assert!(f.iter().all(|&x| x >= 1));
        let mut c = [0u64; NTOK];
        c[5] = 3;
        c[7] = 1;
        let f = normalise(&c);
        assert_eq!((f.len(), f[5] + f[7], f[0]), (8, PROB_SCALE, 0));
    }

    use crate::rng::Rng;

    fn round_trip(counts: &[u32], neurons: usize, bins: usize) -> usize {
        let prefix = b"0123456789abcdef";
        let suffix = [7u8; 9];
        let p = encode(counts, neurons, bins, prefix, &suffix, 0xdead_beef);
        let h = parse(&p).unwrap();
        assert_eq!((h.neurons, h.bins, h.crc), (neurons, bins, 0xdead_beef));
        assert_eq!((h.prefix, h.suffix), (&prefix[..], &suffix[..]));
        let mut out = vec![0u8; counts.len() * 4];
        h.decode_into(&mut out).unwrap();
        let back: Vec<u32> = out
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, counts, "{neurons} x {bins}");
        p.len()
    }

    /// ReLU-like neurons of one total: a spike at bin 0 and a noisy bump elsewhere.
    fn relu_layer(rng: &mut Rng, neurons: usize, bins: usize, total: u32) -> Vec<u32> {
        let mut c = vec![0u32; neurons * bins];
        for n in 0..neurons {
            let row = &mut c[n * bins..(n + 1) * bins];
            let centre = 1 + rng.below(bins as u64 - 1) as usize;
            let width = 1 + rng.below(bins as u64 / 4 + 1) as usize;
            let mut left = total;
            for _ in 0..total / 2 {
                let off = rng.below(2 * width as u64 + 1) as i64 - width as i64;
                let b = (centre as i64 + off).clamp(1, bins as i64 - 1) as usize;
                row[b] += 1;
                left -= 1;
            }
            row[0] = left;
        }
        c
    }

    #[test]
    fn random_layers_round_trip_and_shrink() {
        let mut rng = Rng::new(7);
        for (neurons, bins, total) in [(1, 2, 5), (3, 10, 100), (17, 100, 4704), (64, 1000, 18816)]
        {
            let c = relu_layer(&mut rng, neurons, bins, total);
            let n = round_trip(&c, neurons, bins);
            // Tables cost a few hundred bytes: only layers of some size shrink.
            if c.len() >= 1000 {
                assert!(
                    n * 4 < c.len() * 4,
                    "{neurons} x {bins}: {n} bytes for {}",
                    c.len() * 4
                );
            }
        }
    }

    #[test]
    fn adversarial_layers_round_trip() {
        let mut rng = Rng::new(11);
        // Empty neurons, a one-bin layer, single non-zero bins at both edges.
        round_trip(&[0; 40], 4, 10);
        round_trip(&[0, 3, 9, u32::MAX], 4, 1);
        let mut edges = vec![0u32; 3 * 50];
        edges[1] = 1;
        edges[50 + 49] = 2;
        edges[100] = 3;
        round_trip(&edges, 3, 50);
        // Unequal totals, huge counts, every value class.
        let c: Vec<u32> = (0..7 * 33)
            .map(|i| match i % 5 {
                0 => u32::MAX - rng.below(3) as u32,
                1 => 0,
                2 => rng.below(16) as u32,
                3 => 1 << rng.below(32),
                _ => rng.next_u64() as u32,
            })
            .collect();
        round_trip(&c, 7, 33);
        // Equal totals near the limit of u64 sums of u32 counts.
        let c = vec![u32::MAX; 5 * 64];
        round_trip(&c, 5, 64);
        // Fewer neurons than lanes, and one neuron of many bins.
        round_trip(&relu_layer(&mut rng, 2, 300, 1000), 2, 300);
        round_trip(&relu_layer(&mut rng, 1, 5000, 100_000), 1, 5000);
    }

    #[test]
    fn damaged_streams_are_refused() {
        let mut rng = Rng::new(3);
        let c = relu_layer(&mut rng, 9, 40, 500);
        let p = encode(&c, 9, 40, b"", b"", 1);
        let mut caught = 0;
        for at in 0..p.len() {
            let mut m = p.clone();
            m[at] ^= 0x41;
            let ok = parse(&m).and_then(|h| {
                let mut out = vec![0u8; c.len() * 4];
                h.decode_into(&mut out).map(|_| out)
            });
            // The payload's own checks (lengths, tables, final lane states) catch most
            // flips; the object's CRC-32 catches the rest (codec tests).
            caught += usize::from(ok.is_err());
        }
        assert!(
            caught > p.len() / 2,
            "{caught} of {} flips refused",
            p.len()
        );
    }
}
