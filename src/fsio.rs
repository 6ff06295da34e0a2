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

/// Writes `bytes` to `path` atomically and durably: temporary file in the same directory,
/// fsync, rename, fsync of the directory.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}", tmp_name()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        failpoint!("file::write");
        f.write_all(bytes)?;
        failpoint!("file::fsync");
        f.sync_all()?;
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
