//! The content-addressed object store: immutable blobs by digest, behind a small
//! [`Backend`] trait (a directory on disk, or memory for tests).
//!
//! Invariant: `put` returns only once the object is durable (written to a temporary
//! file, fsynced, renamed into place and the directory fsynced), so anything that points
//! to a blob afterwards points to a complete one. Every read decodes the object and checks
//! its digest before handing out bytes.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rkyv::util::AlignedVec;

use crate::format::{
    decode_layer, decode_object, decode_object_header, is_compressed, Digest, FormatError, LayerBuf,
};
use crate::Error;

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("blob {0}: not in the store (was it removed by gc? pull or import it again)")]
    Missing(Digest),
    #[error("blob {digest}: {source}")]
    Io {
        digest: String,
        #[source]
        source: io::Error,
    },
}

/// Where object bytes live. Keys are relative paths like `sha256/ab/<hex>`.
pub trait Backend: Send + Sync {
    /// Reads a whole object, `None` when absent.
    fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Writes an object atomically and durably; replaces nothing that exists.
    fn write_durable(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// Size of an object, `None` when absent.
    fn size(&self, key: &str) -> io::Result<Option<u64>>;
    /// Removes an object (absent is fine).
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Every key.
    fn list(&self) -> io::Result<Vec<String>>;
    /// When an object was last written, `None` when absent.
    fn modified(&self, key: &str) -> io::Result<Option<std::time::SystemTime>>;
    /// Called when a put finds its object already stored: a backend shared with other
    /// processes rewrites an old one so that their gc, which spares young objects, cannot
    /// sweep it before the commit that needs it lands. Nothing to do by default.
    fn keep_alive(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let _ = (key, bytes);
        Ok(())
    }
    /// Stores several objects (each as `put` would: written when absent, kept alive when
    /// present); returns how many were new. One at a time by default; a backend over the
    /// network sends them together.
    fn put_many(&self, items: &[(String, &[u8])]) -> io::Result<usize> {
        let mut new = 0;
        for (key, bytes) in items {
            if self.size(key)?.is_some() {
                self.keep_alive(key, bytes)?;
            } else {
                self.write_durable(key, bytes)?;
                new += 1;
            }
        }
        Ok(new)
    }
}

/// The file-system calls the object store makes, so a simulated file system
/// (`simfs::SimFs` with feature `testing`, which loses unsynced writes at a power cut) can stand in for
/// the real one in tests.
pub trait Fs: Send + Sync {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates (truncating) a file and writes `bytes`, without syncing.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Makes a file's contents durable (fsync).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn len(&self, path: &Path) -> io::Result<u64>;
    fn modified(&self, path: &Path) -> io::Result<std::time::SystemTime>;
    /// Entries of a directory as (name, is a directory).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<(String, bool)>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn is_dir(&self, path: &Path) -> bool;
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl Fs for StdFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        failpoint!("object::write");
        f.write_all(bytes)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        failpoint!("object::fsync");
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        failpoint!("object::rename");
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        failpoint!("object::dir_fsync");
        sync_dir(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        failpoint!("object::delete");
        std::fs::remove_file(path)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn modified(&self, path: &Path) -> io::Result<std::time::SystemTime> {
        std::fs::metadata(path)?.modified()
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                e.file_type()?.is_dir(),
            ));
        }
        Ok(out)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

/// Objects as files under a directory.
pub struct FsBackend<F: Fs = StdFs> {
    fs: F,
    root: PathBuf,
    tmp: PathBuf,
}

use crate::fsio::tmp_name;
pub use crate::fsio::{sync_dir, write_file_atomic};

impl FsBackend<StdFs> {
    /// Opens (creating if needed) an object directory; temporary files go to `tmp`,
    /// which must be on the same filesystem.
    pub fn open(root: &Path, tmp: &Path) -> io::Result<FsBackend> {
        FsBackend::open_on(StdFs, root, tmp)
    }
}

fn absent_ok<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl<F: Fs> FsBackend<F> {
    /// Opens an object directory on file system `fs`.
    pub fn open_on(fs: F, root: &Path, tmp: &Path) -> io::Result<FsBackend<F>> {
        fs.create_dir_all(root)?;
        fs.create_dir_all(tmp)?;
        Ok(FsBackend {
            fs,
            root: root.to_path_buf(),
            tmp: tmp.to_path_buf(),
        })
    }

    /// The file system underneath.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Removes temporary files left by interrupted writes, sparing those younger than
    /// `grace` (a write of another thread may still be under way).
    pub fn clean_tmp(&self, grace: std::time::Duration) -> io::Result<usize> {
        let mut n = 0;
        let now = std::time::SystemTime::now();
        for (name, is_dir) in self.fs.list_dir(&self.tmp)? {
            let p = self.tmp.join(&name);
            let young = self
                .fs
                .modified(&p)
                .map_or(true, |t| now.duration_since(t).map_or(true, |a| a < grace));
            if !is_dir && name.ends_with(".tmp") && !young {
                self.fs.remove(&p)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl<F: Fs> Backend for FsBackend<F> {
    fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        absent_ok(self.fs.read(&self.path(key)))
    }

    fn write_durable(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let dest = self.path(key);
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        if !self.fs.is_dir(&dir) {
            self.fs.create_dir_all(&dir)?;
            // Make the new directory entries durable too, from the top down.
            let mut d = dir.as_path();
            while let Some(parent) = d.parent() {
                self.fs.sync_dir(parent)?;
                if parent == self.root {
                    break;
                }
                d = parent;
            }
        }
        // The protocol: contents durable before the name appears, the name durable
        // before returning.
        let tmp = self.tmp.join(tmp_name());
        let result = (|| {
            self.fs.write_new(&tmp, bytes)?;
            self.fs.sync_file(&tmp)?;
            self.fs.rename(&tmp, &dest)?;
            self.fs.sync_dir(&dir)
        })();
        if result.is_err() {
            let _ = self.fs.remove(&tmp);
        }
        result
    }

    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        absent_ok(self.fs.len(&self.path(key)))
    }

    /// Writes the absent objects concurrently, each by the protocol of `write_durable`:
    /// they are independent and nothing names them until the caller commits after this
    /// returns, so their fsyncs may overlap (a push's layers reach the disk together, not
    /// one after another). Every write is finished when this returns, the first error is
    /// reported.
    fn put_many(&self, items: &[(String, &[u8])]) -> io::Result<usize> {
        let mut absent: Vec<(&str, &[u8])> = Vec::new();
        for (key, bytes) in items {
            if absent.iter().any(|(k, _)| k == key) {
                continue;
            }
            if self.size(key)?.is_some() {
                self.keep_alive(key, bytes)?;
            } else {
                absent.push((key, bytes));
            }
        }
        if absent.len() <= 1 {
            for (key, bytes) in &absent {
                self.write_durable(key, bytes)?;
            }
            return Ok(absent.len());
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let writers = absent.len().min(PUT_WRITERS);
        let results: Vec<io::Result<()>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..writers)
                .map(|_| {
                    s.spawn(|| {
                        let mut first = Ok(());
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((key, bytes)) = absent.get(i) else {
                                return first;
                            };
                            if let Err(e) = self.write_durable(key, bytes) {
                                first = first.and(Err(e));
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        results.into_iter().collect::<io::Result<()>>()?;
        Ok(absent.len())
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        absent_ok(self.fs.remove(&self.path(key))).map(|_| ())
    }

    fn modified(&self, key: &str) -> io::Result<Option<std::time::SystemTime>> {
        absent_ok(self.fs.modified(&self.path(key)))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let algo = self.root.join("sha256");
        if !self.fs.is_dir(&algo) {
            return Ok(out);
        }
        for (fan, is_dir) in self.fs.list_dir(&algo)? {
            if !is_dir {
                continue;
            }
            for (f, _) in self.fs.list_dir(&algo.join(&fan))? {
                out.push(format!("sha256/{fan}/{f}"));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Objects in memory, for tests.
#[derive(Default)]
pub struct MemBackend {
    map: Mutex<HashMap<String, (Vec<u8>, std::time::SystemTime)>>,
}

impl MemBackend {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, std::time::SystemTime)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemBackend {
    fn read(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.map().get(key).map(|e| e.0.clone()))
    }
    fn write_durable(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.map()
            .insert(key.into(), (bytes.to_vec(), std::time::SystemTime::now()));
        Ok(())
    }
    fn size(&self, key: &str) -> io::Result<Option<u64>> {
        Ok(self.map().get(key).map(|e| e.0.len() as u64))
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.map().remove(key);
        Ok(())
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut k: Vec<String> = self.map().keys().cloned().collect();
        k.sort();
        Ok(k)
    }
    fn modified(&self, key: &str) -> io::Result<Option<std::time::SystemTime>> {
        Ok(self.map().get(key).map(|e| e.1))
    }
}

/// Threads that write one batch of objects to a directory store (their time is spent
/// waiting on fsync, not on a core).
const PUT_WRITERS: usize = 8;

/// The key of a digest: `sha256/<first two hex>/<hex>`.
pub fn key_of(d: &Digest) -> String {
    let h = d.hex();
    format!("sha256/{}/{}", &h[..2], h)
}

fn digest_of_key(key: &str) -> Option<Digest> {
    let hex = key.rsplit('/').next()?;
    format!("sha256:{hex}").parse().ok()
}

/// Content-addressed objects over a backend, counting the bytes it reads.
#[derive(Clone)]
pub struct ObjectStore {
    backend: Arc<dyn Backend>,
    bytes_read: Arc<AtomicU64>,
    layers: Arc<LayerCache>,
}

/// Default budget of the decoded-layer cache; `VDNA_DB_LAYER_CACHE_MB` sets another
/// (0 turns it off).
pub const DEFAULT_LAYER_CACHE_MB: usize = 256;

/// Decoded layers kept for the query path, the least recently used evicted past a byte
/// budget, so a repeated or similar query decodes nothing again. An entry never goes
/// stale: layers are content-addressed and were checked when first read (header and
/// content checksum, or SHA-256), and deleting an object drops its entry.
pub struct LayerCache {
    state: std::sync::Mutex<CacheState>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct CacheState {
    budget: usize,
    bytes: usize,
    tick: u64,
    map: std::collections::HashMap<Digest, (LayerBuf, u64)>,
    order: std::collections::BTreeMap<u64, Digest>,
}

impl CacheState {
    fn evict(&mut self) {
        while self.bytes > self.budget {
            let Some((_, d)) = self.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = self.map.remove(&d) {
                self.bytes -= b.bytes().len();
            }
        }
    }
}

impl LayerCache {
    fn new(budget: usize) -> LayerCache {
        LayerCache {
            state: std::sync::Mutex::new(CacheState {
                budget,
                ..Default::default()
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, d: &Digest) -> Option<LayerBuf> {
        let mut st = self.lock();
        if st.budget == 0 {
            return None;
        }
        st.tick += 1;
        let tick = st.tick;
        let found = match st.map.get_mut(d) {
            Some((b, t)) => {
                let old = std::mem::replace(t, tick);
                Some((b.clone(), old))
            }
            None => None,
        };
        match found {
            Some((b, old)) => {
                st.order.remove(&old);
                st.order.insert(tick, *d);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(b)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn insert(&self, d: Digest, b: &LayerBuf) {
        let mut st = self.lock();
        // A layer larger than half the budget would flush most of it.
        if st.budget == 0 || b.bytes().len() > st.budget / 2 || st.map.contains_key(&d) {
            return;
        }
        st.tick += 1;
        let tick = st.tick;
        st.bytes += b.bytes().len();
        st.map.insert(d, (b.clone(), tick));
        st.order.insert(tick, d);
        st.evict();
    }

    fn remove(&self, d: &Digest) {
        let mut st = self.lock();
        if let Some((b, t)) = st.map.remove(d) {
            st.bytes -= b.bytes().len();
            st.order.remove(&t);
        }
    }
}

/// What the decoded-layer cache holds and how often it answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub layers: usize,
    pub bytes: usize,
    pub budget: usize,
}

impl ObjectStore {
    pub fn new(backend: Arc<dyn Backend>) -> ObjectStore {
        let mb = std::env::var("VDNA_DB_LAYER_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_LAYER_CACHE_MB);
        ObjectStore {
            backend,
            bytes_read: Arc::new(AtomicU64::new(0)),
            layers: Arc::new(LayerCache::new(mb.saturating_mul(1 << 20))),
        }
    }

    /// Sets the decoded-layer cache's budget in bytes (0 turns it off and empties it).
    pub fn set_layer_cache_budget(&self, bytes: usize) {
        let mut st = self.layers.lock();
        st.budget = bytes;
        st.evict();
    }

    /// The decoded-layer cache's counters and size.
    pub fn layer_cache_stats(&self) -> LayerCacheStats {
        let st = self.layers.lock();
        LayerCacheStats {
            hits: self.layers.hits.load(Ordering::Relaxed),
            misses: self.layers.misses.load(Ordering::Relaxed),
            layers: st.map.len(),
            bytes: st.bytes,
            budget: st.budget,
        }
    }

    fn io(d: &Digest, source: io::Error) -> Error {
        Error::Store(StoreError::Io {
            digest: d.to_string(),
            source,
        })
    }

    /// Stores an encoded object durably unless it is already there.
    pub fn put(&self, digest: &Digest, encoded: &[u8]) -> Result<bool, Error> {
        let key = key_of(digest);
        if self
            .backend
            .size(&key)
            .map_err(|e| Self::io(digest, e))?
            .is_some()
        {
            self.backend
                .keep_alive(&key, encoded)
                .map_err(|e| Self::io(digest, e))?;
            return Ok(false);
        }
        self.backend
            .write_durable(&key, encoded)
            .map_err(|e| Self::io(digest, e))?;
        Ok(true)
    }

    /// Stores several encoded objects durably (those not already there), together when
    /// the backend can; returns how many were new. The caller orders what must be durable
    /// first into separate calls.
    pub fn put_many(&self, objects: &[(Digest, Vec<u8>)]) -> Result<usize, Error> {
        if objects.len() == 1 {
            return self.put(&objects[0].0, &objects[0].1).map(usize::from);
        }
        let items: Vec<(String, &[u8])> = objects
            .iter()
            .map(|(d, b)| (key_of(d), b.as_slice()))
            .collect();
        self.backend.put_many(&items).map_err(|e| {
            Error::Store(StoreError::Io {
                digest: format!("{} objects", objects.len()),
                source: e,
            })
        })
    }

    /// True when the object is present.
    pub fn contains(&self, digest: &Digest) -> Result<bool, Error> {
        Ok(self.stored_size(digest)?.is_some())
    }

    /// Encoded size at rest.
    pub fn stored_size(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        self.backend
            .size(&key_of(digest))
            .map_err(|e| Self::io(digest, e))
    }

    /// The encoded bytes as stored (for bundles and transfers), digest checked.
    pub fn get_encoded(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let enc = self.read(digest)?;
        self.check(digest, &enc)?;
        Ok(enc)
    }

    fn read(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let b = self
            .backend
            .read(&key_of(digest))
            .map_err(|e| Self::io(digest, e))?
            .ok_or(Error::Store(StoreError::Missing(*digest)))?;
        self.bytes_read.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }

    fn check(&self, digest: &Digest, enc: &[u8]) -> Result<AlignedVec<16>, Error> {
        let raw = decode_object(enc, "blob")?;
        let actual = Digest::of(&raw);
        if actual != *digest {
            return Err(FormatError::DigestMismatch {
                what: "blob",
                expected: *digest,
                actual,
            }
            .into());
        }
        Ok(raw)
    }

    /// The canonical bytes of an object, decoded and digest-checked.
    pub fn get_raw(&self, digest: &Digest) -> Result<AlignedVec<16>, Error> {
        let enc = self.read(digest)?;
        self.check(digest, &enc)
    }

    /// A layer blob for the query path: decoded with its integrity checks (header check
    /// and zstd content checksum; the SHA-256 too when stored uncompressed), validated,
    /// read in place afterwards.
    pub fn get_layer(&self, digest: &Digest) -> Result<LayerBuf, Error> {
        if let Some(b) = self.layers.get(digest) {
            return Ok(b);
        }
        self.load_layer(digest)
    }

    /// A layer from the decoded-layer cache only (counted as a hit or a miss).
    pub fn cached_layer(&self, digest: &Digest) -> Option<LayerBuf> {
        self.layers.get(digest)
    }

    /// Reads, verifies and decodes a layer, and keeps it in the cache (after a miss).
    pub fn load_layer(&self, digest: &Digest) -> Result<LayerBuf, Error> {
        let enc = self.read(digest)?;
        let h = decode_object_header(&enc, "blob")?;
        let raw = if is_compressed(h.codec) {
            decode_object(&enc, "blob")
                .map_err(|e| Error::Invalid(format!("blob {digest}: {e}")))?
        } else {
            self.check(digest, &enc)?
        };
        let buf = decode_layer(raw)?;
        self.layers.insert(*digest, &buf);
        Ok(buf)
    }

    /// Reads the header only, to report the codec.
    pub fn header(&self, digest: &Digest) -> Result<crate::format::ObjectHeader, Error> {
        let enc = self.read(digest)?;
        Ok(decode_object_header(&enc, "blob")?)
    }

    /// Every stored digest.
    pub fn list(&self) -> Result<Vec<Digest>, Error> {
        let keys = self.backend.list().map_err(|e| {
            Error::Store(StoreError::Io {
                digest: "(listing)".into(),
                source: e,
            })
        })?;
        Ok(keys.iter().filter_map(|k| digest_of_key(k)).collect())
    }

    /// When an object was written, `None` when absent.
    pub fn modified(&self, digest: &Digest) -> Result<Option<std::time::SystemTime>, Error> {
        self.backend
            .modified(&key_of(digest))
            .map_err(|e| Self::io(digest, e))
    }

    /// Removes an object.
    pub fn delete(&self, digest: &Digest) -> Result<(), Error> {
        self.layers.remove(digest);
        self.backend
            .delete(&key_of(digest))
            .map_err(|e| Self::io(digest, e))
    }

    /// Re-reads and re-hashes an object.
    pub fn verify(&self, digest: &Digest) -> Result<(), Error> {
        self.get_raw(digest).map(|_| ())
    }

    /// Bytes read from the backend since the store was opened.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod layer_cache_tests {
    use super::*;

    fn layer(n: usize) -> (Digest, LayerBuf) {
        let dna = crate::synth::member(
            &crate::synth::CatalogueSpec {
                seed: n as u64,
                families: 1,
                members: 1,
                layers: crate::synth::uniform_layers(1, 4 + n as u32),
                dist: crate::format::DistKind::Histogram { bins: 8 },
                extractor: "rand_resnet50".into(),
                images: 2,
                positions: 2,
                spread: 1.0,
            },
            0,
            0,
        );
        let enc = dna.encode(1);
        let (d, bytes) = enc.objects[2].clone();
        let raw = crate::format::decode_object(&bytes, "t").unwrap();
        (d, crate::format::decode_layer(raw).unwrap())
    }

    /// Hits and misses are counted, the least recently used goes first past the budget,
    /// a removed entry is gone, and a zero budget caches nothing.
    #[test]
    fn evicts_the_least_recently_used_past_its_budget() {
        let (a, b, c) = (layer(1), layer(2), layer(3));
        let size = |l: &(Digest, LayerBuf)| l.1.bytes().len();
        // Room for the two largest together, not for all three.
        let budget = size(&b) + size(&c) + size(&a) - 1;
        let cache = LayerCache::new(budget);
        cache.insert(a.0, &a.1);
        cache.insert(b.0, &b.1);
        assert!(cache.get(&a.0).is_some(), "a is now the most recent");
        cache.insert(c.0, &c.1);
        assert!(cache.get(&b.0).is_none(), "b was the least recently used");
        assert!(cache.get(&a.0).is_some() && cache.get(&c.0).is_some());
        assert_eq!(cache.hits.load(Ordering::Relaxed), 3);
        assert_eq!(cache.misses.load(Ordering::Relaxed), 1);
        assert_eq!(cache.lock().bytes, size(&a) + size(&c));
        cache.remove(&a.0);
        assert!(cache.get(&a.0).is_none());
        assert_eq!(cache.lock().bytes, size(&c));
        let off = LayerCache::new(0);
        off.insert(a.0, &a.1);
        assert!(off.get(&a.0).is_none() && off.lock().map.is_empty());
    }
}
