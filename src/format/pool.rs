//! Buffers of dropped decoded layers, kept for the next decode.
//!
//! A decoded layer is hundreds of kilobytes to megabytes. An allocation that large comes
//! from the kernel a zeroed page at a time on first touch, and is handed back when freed,
//! so every decode paid for page faults again: a quarter of an exact distance's time in
//! rand_resnet50's layout (scale bench, README). Buffers of layers nobody holds any more
//! come back here instead, up to [`POOL_BYTES`], and a decode of about their size takes
//! one already in memory.

use rkyv::util::AlignedVec;
use std::sync::Mutex;

/// Most bytes of capacity kept.
const POOL_BYTES: usize = 64 << 20;
/// Smaller buffers are left to the allocator, which serves them from its own free lists.
const MIN_POOLED: usize = 64 << 10;

struct Pool {
    /// Oldest first.
    bufs: Vec<AlignedVec<16>>,
    bytes: usize,
    limit: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new(POOL_BYTES));

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer of at least `cap` bytes of capacity: a kept one of at most twice that
/// when there is one (the smallest such), else a new one.
pub fn take(cap: usize) -> AlignedVec<16> {
    if cap >= MIN_POOLED {
        if let Some(b) = pool().take(cap) {
            return b;
        }
    }
    AlignedVec::with_capacity(cap)
}

/// Keeps `b`'s memory for a later [`take`], dropping the oldest kept buffers past
/// [`POOL_BYTES`].
pub fn give(b: AlignedVec<16>) {
    if b.capacity() >= MIN_POOLED {
        pool().give(b);
    }
}

impl Pool {
    const fn new(limit: usize) -> Pool {
        Pool {
            bufs: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    fn take(&mut self, cap: usize) -> Option<AlignedVec<16>> {
        let i = self
            .bufs
            .iter()
            .enumerate()
            .filter(|(_, b)| (cap..=cap.saturating_mul(2)).contains(&b.capacity()))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        let b = self.bufs.remove(i);
        self.bytes -= b.capacity();
        Some(b)
    }

    fn give(&mut self, mut b: AlignedVec<16>) {
        let cap = b.capacity();
        if cap > self.limit / 4 {
            return;
        }
        b.clear();
        while self.bytes + cap > self.limit && !self.bufs.is_empty() {
            let old = self.bufs.remove(0);
            self.bytes -= old.capacity();
        }
        self.bytes += cap;
        self.bufs.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(cap: usize) -> AlignedVec<16> {
        let mut b = AlignedVec::<16>::with_capacity(cap);
        b.extend_from_slice(&[7u8; 100]);
        b
    }

    #[test]
    fn a_kept_buffer_serves_takes_of_about_its_size_only() {
        let mut p = Pool::new(1 << 20);
        let b = buf(100_000);
        let (ptr, cap) = (b.as_ptr(), b.capacity());
        p.give(b);
        assert!(p.take(cap + 1).is_none(), "too small for a larger take");
        assert!(
            p.take(cap / 2 - 1).is_none(),
            "more than twice a take's size"
        );
        let again = p.take(cap / 2).expect("kept");
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        assert_eq!(p.bytes, 0);
    }

    #[test]
    fn the_smallest_fit_is_taken_and_the_oldest_dropped_past_the_limit() {
        let mut p = Pool::new(1 << 20);
        // Over a quarter of the limit: not kept.
        p.give(buf(300_000));
        assert!(p.bufs.is_empty());
        let sizes = [200_000, 150_000, 180_000, 250_000];
        let ptrs: Vec<_> = sizes
            .iter()
            .map(|&c| {
                let b = buf(c);
                let ptr = b.as_ptr();
                p.give(b);
                ptr
            })
            .collect();
        assert_eq!(p.bufs.len(), 4);
        assert_eq!(p.take(140_000).unwrap().as_ptr(), ptrs[1]);
        // 200,000 + 180,000 + 250,000 kept; two more of 250,000 pass 1 MiB: the oldest
        // (200,000) goes.
        p.give(buf(250_000));
        p.give(buf(250_000));
        assert!(p.bytes <= 1 << 20);
        assert!(p.bufs.iter().all(|b| b.as_ptr() != ptrs[0]));
        assert_eq!(p.bufs.len(), 4);
    }
}
