//! Durable writes of whole files: a temporary file in the same directory, fsync, rename,
//! fsync of the directory. Used by the object store, the reference exporter and the front
//! ends for every file a user is told was written. Knows nothing of objects or catalogues.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name for a temporary file no other writer, in this process or another, picks.
pub(crate) fn tmp_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}.tmp",
        std::process::id(),
        nanos,
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// fsyncs a directory so a rename or create inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory of `path` and a fresh temporary name in it.
fn dir_and_tmp(path: &Path) -> (PathBuf, PathBuf) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}", tmp_name()));
    (dir, tmp)
}

/// Writes `bytes` to a new file at `tmp` and fsyncs it.
fn write_synced(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    failpoint!("file::write");
    f.write_all(bytes)?;
    failpoint!("file::fsync");
    f.sync_all()
}

/// Writes `bytes` to `path` atomically and durably: temporary file in the same directory,
/// fsync, rename, fsync of the directory.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, tmp) = dir_and_tmp(path);
    let result = (|| {
        write_synced(&tmp, bytes)?;
        failpoint!("file::rename");
        std::fs::rename(&tmp, path)?;
        failpoint!("file::dir_fsync");
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` holding `bytes` only if no file has that name, atomically and durably:
/// the bytes go to a temporary file in the same directory (fsync), which is then
/// hard-linked to `path` (link(2) refuses an existing name, so of several writers exactly
/// one creates it, and a reader never sees a partial file), then the directory is fsynced.
/// Returns false, having written nothing under `path`, when the name was taken. The local
/// counterpart of an object store's `If-None-Match: *`.
pub fn create_file_new(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let (dir, tmp) = dir_and_tmp(path);
    let result = (|| {
        write_synced(&tmp, bytes)?;
        failpoint!("file::link");
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        failpoint!("file::dir_fsync");
        sync_dir(&dir)?;
        Ok(true)
    })();
    // The name (when created) holds its own link to the bytes.
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_created_once_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("entry.json");
        assert!(create_file_new(&p, b"first").unwrap());
        assert!(!create_file_new(&p, b"second").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        // No temporary file is left behind by either call.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("entry.json")]);
    }

    #[test]
    fn of_racing_creators_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("race");
        let wins: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let p = p.clone();
                    s.spawn(move || create_file_new(&p, format!("{i}").as_bytes()).unwrap())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
        });
        assert_eq!(wins, 1);
    }
}
