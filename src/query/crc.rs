//! CRC-32 (the IEEE polynomial, reflected, as `crc32fast` computes it) of a concatenation
//! from the CRCs of its parts, so that one pass over several layers' mean codes checks
//! them all against their stored per-layer CRCs.
//!
//! For parts `A` and `B`, `crc(A B) = crc(A) * x^(8 |B|) + crc(B)` in GF(2)[x] modulo the
//! CRC polynomial (the initial and final inversions cancel in this form). The product by
//! the fixed power `x^(8 |B|)` is linear over GF(2) in `crc(A)`, so [`Shift`] keeps it as
//! four tables of 256 entries, one per byte of `crc(A)`: a lookup and three xors.
//!
//! Polynomials are in the reflected bit order of the CRC: bit 31 holds `x^0`, bit 0 holds
//! `x^31`.

/// The CRC-32 polynomial, reflected.
const POLY: u32 = 0xEDB8_8320;
/// `x^0` in the reflected order.
const ONE: u32 = 1 << 31;

/// `a * b` modulo the CRC polynomial.
fn mul(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    // Walk a's terms from x^0 upwards, b times x each step (one shift, reduced).
    for bit in (0..32).rev() {
        if a & (1 << bit) != 0 {
            p ^= b;
        }
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `x^(8 n)` modulo the CRC polynomial: the shift of a CRC past `n` more bytes.
fn x_pow_bytes(n: u64) -> u32 {
    let mut result = ONE;
    let mut square = ONE >> 1; // x^1
    let mut e = n.saturating_mul(8);
    while e > 0 {
        if e & 1 == 1 {
            result = mul(square, result);
        }
        square = mul(square, square);
        e >>= 1;
    }
    result
}

/// Extends a CRC past `len` bytes whose own CRC is given: `crc(A B)` from `crc(A)` and
/// `crc(B)`, for one fixed `|B|`.
pub struct Shift {
    tables: Box<[[u32; 256]; 4]>,
}

impl Shift {
    /// The shift past `len` bytes.
    pub fn new(len: usize) -> Shift {
        let s = x_pow_bytes(len as u64);
        // The images of the 32 single bits; entry b of table j is the image of byte b in
        // position j, the entry without b's lowest set bit plus that bit's image.
        let basis: [u32; 32] = std::array::from_fn(|bit| mul(s, 1u32 << bit));
        let mut tables = Box::new([[0u32; 256]; 4]);
        for (j, table) in tables.iter_mut().enumerate() {
            for b in 1..256usize {
                table[b] = table[b & (b - 1)] ^ basis[8 * j + b.trailing_zeros() as usize];
            }
        }
        Shift { tables }
    }

    /// `crc(A B)` from `crc_a = crc(A)` and `crc_b = crc(B)`, `B` of this shift's length.
    #[inline]
    pub fn join(&self, crc_a: u32, crc_b: u32) -> u32 {
        let t = &self.tables;
        t[0][(crc_a & 0xff) as usize]
            ^ t[1][((crc_a >> 8) & 0xff) as usize]
            ^ t[2][((crc_a >> 16) & 0xff) as usize]
            ^ t[3][(crc_a >> 24) as usize]
            ^ crc_b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_crcs_are_the_crc_of_the_concatenation() {
        // Against crc32fast over the concatenated bytes: lengths from zero to a few KB,
        // including the sizes of layers (16 .. 2,048 bytes).
        let mut rng = crate::rng::Rng::new(3);
        for (la, lb) in [
            (0usize, 0usize),
            (0, 5),
            (5, 0),
            (1, 1),
            (16, 24),
            (7, 1000),
            (256, 512),
            (2048, 2048),
            (3, 4099),
        ] {
            let bytes: Vec<u8> = (0..la + lb).map(|_| rng.below(256) as u8).collect();
            let (a, b) = bytes.split_at(la);
            let got = Shift::new(lb).join(crc32fast::hash(a), crc32fast::hash(b));
            assert_eq!(got, crc32fast::hash(&bytes), "{la} + {lb} bytes");
        }
    }

    #[test]
    fn many_parts_join_in_order_and_a_damaged_part_shows() {
        let mut rng = crate::rng::Rng::new(4);
        let widths = [16usize, 24, 40, 80, 112, 192, 320, 1280];
        let mut bytes: Vec<u8> = (0..widths.iter().sum::<usize>())
            .map(|_| rng.below(256) as u8)
            .collect();
        let shifts: Vec<Shift> = widths.iter().map(|&w| Shift::new(w)).collect();
        let joined = |bytes: &[u8]| {
            let mut at = 0;
            let mut crc = 0u32; // the CRC of no bytes
            for (w, s) in widths.iter().zip(&shifts) {
                crc = s.join(crc, crc32fast::hash(&bytes[at..at + w]));
                at += w;
            }
            crc
        };
        assert_eq!(crc32fast::hash(&[]), 0);
        let stored = joined(&bytes);
        assert_eq!(stored, crc32fast::hash(&bytes));
        // One byte changed anywhere: the whole-span CRC no longer matches the parts'.
        for at in [0, 17, 300, bytes.len() - 1] {
            bytes[at] ^= 0x10;
            assert_ne!(crc32fast::hash(&bytes), stored, "byte {at}");
            bytes[at] ^= 0x10;
        }
    }

    #[test]
    fn the_product_is_polynomial_multiplication_modulo_the_crc_polynomial() {
        // Hand-worked: x^1 * x^1 = x^2, and x^31 * x^1 = x^32 = the polynomial's low terms.
        assert_eq!(mul(ONE >> 1, ONE >> 1), ONE >> 2);
        assert_eq!(mul(1, ONE >> 1), POLY);
        assert_eq!(mul(ONE, 0x1234_5678), 0x1234_5678);
        assert_eq!(x_pow_bytes(0), ONE);
        assert_eq!(x_pow_bytes(1), mul(x_pow_bytes(0), ONE >> 8));
    }
}
