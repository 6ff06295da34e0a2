//! The catalogue's truth: an append-only log of commits, each a small immutable object
//! created only if absent, as Delta Lake commits its `_delta_log` and Icechunk its refs.
//! No lock server and no external database: the conditional create picks exactly one
//! writer for every sequence number. One protocol on two kinds of storage ([`LogStore`]):
//! a bucket (`If-None-Match: *` / `If-Match`) and, for the embedded store, a local
//! directory ([`DirLog`]: link(2) of a fully written temporary file, which refuses an
//! existing name).
//!
//! Layout under the store's prefix (a bucket) or its `ledger/` directory (embedded):
//! - `store.json`: the store's identity (format, random id), created once.
//! - `catalogue/log/<seq, 20 digits>.json`: commit `seq` (1, 2, ...): a write id, a time
//!   and a list of [`Change`]s.
//! - `catalogue/checkpoints/<seq>-<sha256 hex>.json`: the whole catalogue after commit
//!   `seq`, as changes that rebuild it from empty; named by its digest and checked on read.
//! - `catalogue/checkpoint.json`: which checkpoint is the newest, replaced with `If-Match`
//!   (a hint: a stale one only means more log to read).
//!
//! Each process keeps a local view in sled ([`Catalogue`]) with the last sequence number
//! applied; the view can be deleted at any time and is rebuilt from the log. A commit
//! reads the log to its end, checks its changes against the view ([`Catalogue::check`]: a
//! ref must still be what the writer saw), and creates the next entry. When another writer
//! took that number first, the commit reads that entry and checks again, so of two writers
//! setting one ref at once exactly one wins and the other gets [`Error::Conflict`]. When
//! the reply to a create is lost (a timeout, a cut connection, a retry that finds its own
//! first attempt, a failed fsync after the link), the entry is read back: carrying this
//! commit's write id it is this commit, never a conflict.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, Change};
use crate::format::Digest;
use crate::objstore::{random_id, Put, Tagged};
use crate::Error;

/// Small objects created only if absent or replaced only if unchanged: what the ledger
/// needs of its storage.
pub trait LogStore: Send + Sync {
    /// Where the log lives, for messages.
    fn url(&self) -> &str;
    /// An object's bytes and version tag, `None` when absent.
    fn get(&self, key: &str) -> io::Result<Option<Tagged>>;
    /// Several objects, in order.
    fn get_many(&self, keys: &[String]) -> io::Result<Vec<Option<Tagged>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Creates an object only if none is at `key`.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> io::Result<Put>;
    /// Replaces an object only if its version tag is still `etag`.
    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &str) -> io::Result<Put>;
    /// Removes an object (absent is fine).
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Refuses storage whose conditional writes are not honoured.
    fn check_conditional_writes(&self) -> Result<(), Error>;
}

#[cfg(feature = "object-store")]
impl LogStore for crate::objstore::Remote {
    fn url(&self) -> &str {
        crate::objstore::Remote::url(self)
    }
    fn get(&self, key: &str) -> io::Result<Option<Tagged>> {
        crate::objstore::Remote::get(self, key)
    }
    fn get_many(&self, keys: &[String]) -> io::Result<Vec<Option<Tagged>>> {
        crate::objstore::Remote::get_many(self, keys)
    }
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> io::Result<Put> {
        crate::objstore::Remote::put_if_absent(self, key, bytes)
    }
    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &str) -> io::Result<Put> {
        crate::objstore::Remote::put_if_match(self, key, bytes, etag)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        crate::objstore::Remote::delete(self, key)
    }
    fn check_conditional_writes(&self) -> Result<(), Error> {
        crate::objstore::Remote::check_conditional_writes(self)
    }
}

/// The log in a local directory (the embedded store's `ledger/`). A create writes and
/// fsyncs a temporary file, then links it to its name ([`crate::fsio::create_file_new`]):
/// link(2) fails on an existing name, so it is the directory's `If-None-Match: *`, and a
/// reader never sees a partial entry. The version tag of a file is the SHA-256 of its
/// bytes. A replace-if-unchanged compares then renames, so it is atomic within a process
/// but not between processes; the ledger uses it only for the checkpoint hint, where a
/// lost update costs a reader time, never a commit.
pub struct DirLog {
    root: PathBuf,
    url: String,
}

impl DirLog {
    /// Opens (creating) the log under `root`.
    pub fn open(root: &Path) -> Result<DirLog, Error> {
        let log = root.join("catalogue/log");
        if !log.is_dir() {
            for d in [log.as_path(), &root.join("catalogue/checkpoints")] {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            // The new directories' names durable before any entry is linked into them.
            for d in [
                root.join("catalogue"),
                root.to_path_buf(),
                root.parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ] {
                crate::fsio::sync_dir(&d).map_err(|e| Error::io(&d, e))?;
            }
        }
        Ok(DirLog {
            root: root.to_path_buf(),
            url: root.display().to_string(),
        })
    }

    /// Whether the log has been given its identity (a store opened since the log existed).
    pub fn has_identity(&self) -> Result<bool, Error> {
        let p = self.root.join("store.json");
        p.try_exists().map_err(|e| Error::io(&p, e))
    }

    fn tag(bytes: &[u8]) -> String {
        Digest::of(bytes).hex()
    }
}

impl LogStore for DirLog {
    fn url(&self) -> &str {
        &self.url
    }

    fn get(&self, key: &str) -> io::Result<Option<Tagged>> {
        match std::fs::read(self.root.join(key)) {
            Ok(b) => {
                let tag = DirLog::tag(&b);
                Ok(Some((b, Some(tag))))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> io::Result<Put> {
        Ok(
            if crate::fsio::create_file_new(&self.root.join(key), bytes)? {
                Put::Written(Some(DirLog::tag(bytes)))
            } else {
                Put::Exists
            },
        )
    }

    fn put_if_match(&self, key: &str, bytes: &[u8], etag: &str) -> io::Result<Put> {
        match self.get(key)? {
            Some((_, Some(now))) if now == etag => {
                crate::fsio::write_file_atomic(&self.root.join(key), bytes)?;
                Ok(Put::Written(Some(DirLog::tag(bytes))))
            }
            _ => Ok(Put::Changed),
        }
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        match std::fs::remove_file(self.root.join(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// link(2) refuses an existing name by definition: nothing to probe.
    fn check_conditional_writes(&self) -> Result<(), Error> {
        Ok(())
    }
}

const STORE_FORMAT: &str = "vdna-db shared store v1";
const CHECKPOINT_HINT: &str = "catalogue/checkpoint.json";
/// A checkpoint is written after every this many commits.
pub const CHECKPOINT_EVERY: u64 = 500;
/// Log entries fetched at once while catching up.
const FETCH_AHEAD: usize = 16;
/// Attempts of one commit against other writers and failed calls before giving up.
const ATTEMPTS: usize = 64;

/// One commit of the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Random, per commit: how a writer recognises its own entry after a lost reply.
    pub write_id: String,
    pub time: u64,
    pub changes: Vec<Change>,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    format: String,
    id: String,
}

#[derive(Serialize, Deserialize)]
struct Hint {
    seq: u64,
    key: String,
}

fn log_key(seq: u64) -> String {
    format!("catalogue/log/{seq:020}.json")
}

/// The shared catalogue of one bucket, mirrored into a local view.
pub struct Ledger {
    remote: Arc<dyn LogStore>,
    /// Serialises catch-up and commits of this process (other processes race through
    /// the conditional create).
    lock: Mutex<()>,
    last_sync: Mutex<Option<Instant>>,
    refresh: Duration,
}

impl Ledger {
    /// Opens the shared catalogue: refuses a store without conditional writes, creates
    /// the store's identity when absent, drops a view that mirrors another store, and
    /// catches the view up (from the newest checkpoint when the view is empty).
    pub fn open(
        remote: Arc<dyn LogStore>,
        view: &Catalogue,
        refresh: Duration,
    ) -> Result<Ledger, Error> {
        remote.check_conditional_writes()?;
        let id = Self::identity(remote.as_ref())?;
        if view.meta("store_id")?.as_deref() != Some(id.as_str()) {
            view.clear_view()?;
            view.set_meta("store_id", &id)?;
        }
        let ledger = Ledger {
            remote,
            lock: Mutex::new(()),
            last_sync: Mutex::new(None),
            refresh,
        };
        ledger.sync(view)?;
        Ok(ledger)
    }

    /// Gives a log to a catalogue that has none: an embedded store written before its
    /// catalogue moved into `ledger/`, or one whose log was lost. When the log holds
    /// neither an identity nor a first commit and the view is not empty, the view's whole
    /// content becomes commit 1. Call it before [`Ledger::open`], which then sees a view of
    /// no known store, drops it and rebuilds it from that commit: a crash at any point
    /// repeats nothing and loses nothing. Returns whether a commit was written.
    pub fn adopt(log: &dyn LogStore, view: &Catalogue) -> Result<bool, Error> {
        let io = |k: &str, e| Error::io(format!("{}/{k}", log.url()), e);
        let first = log_key(1);
        if log
            .get("store.json")
            .map_err(|e| io("store.json", e))?
            .is_some()
            || log.get(&first).map_err(|e| io(&first, e))?.is_some()
        {
            return Ok(false);
        }
        let changes = view.snapshot()?;
        if changes.is_empty() {
            return Ok(false);
        }
        let entry = Entry {
            seq: 1,
            write_id: random_id(),
            time: crate::now_secs(),
            changes,
        };
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        // Exists: another process adopted the same view first; theirs is as good.
        log.put_if_absent(&first, &bytes)
            .map_err(|e| io(&first, e))?;
        Ok(true)
    }

    fn io(&self, key: &str, e: io::Error) -> Error {
        Error::io(format!("{}/{key}", self.remote.url()), e)
    }

    fn identity(remote: &dyn LogStore) -> Result<String, Error> {
        let io = |e| Error::io(format!("{}/store.json", remote.url()), e);
        let read = |bytes: &[u8]| -> Result<String, Error> {
            let id: Identity = serde_json::from_slice(bytes)
                .map_err(|e| Error::Invalid(format!("{}/store.json: {e}", remote.url())))?;
            if id.format != STORE_FORMAT {
                return Err(Error::Invalid(format!(
                    "{}: store format {:?} is not supported by this build (expected {STORE_FORMAT:?}); upgrade vdna-db",
                    remote.url(),
                    id.format
                )));
            }
            Ok(id.id)
        };
        if let Some((b, _)) = remote.get("store.json").map_err(io)? {
            return read(&b);
        }
        let mine = serde_json::to_vec_pretty(&Identity {
            format: STORE_FORMAT.into(),
            id: random_id(),
        })
        .unwrap_or_default();
        match remote.put_if_absent("store.json", &mine).map_err(io)? {
            Put::Written(_) => read(&mine),
            // Another process created it first: theirs is the identity.
            _ => match remote.get("store.json").map_err(io)? {
                Some((b, _)) => read(&b),
                None => Err(Error::Invalid(format!(
                    "{}/store.json vanished while being created; retry",
                    remote.url()
                ))),
            },
        }
    }

    /// The refresh interval: reads older than this catch up first.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Catches up when the last catch-up is older than the refresh interval. Returns
    /// the number of commits applied.
    pub fn sync_if_stale(&self, view: &Catalogue) -> Result<usize, Error> {
        let stale = self
            .last_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= self.refresh);
        if stale {
            self.sync(view)
        } else {
            Ok(0)
        }
    }

    /// Applies every commit past the view's last one. Returns how many.
    pub fn sync(&self, view: &Catalogue) -> Result<usize, Error> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_locked(view)
    }

    fn sync_locked(&self, view: &Catalogue) -> Result<usize, Error> {
        let started = Instant::now();
        let mut applied = 0;
        if view.applied_seq()? == 0 {
            applied += self.load_checkpoint(view)?;
        }
        // One entry first (a view that is up to date pays one request), then several at
        // once while there are more.
        let mut ahead = 1;
        loop {
            let next = view.applied_seq()? + 1;
            let keys: Vec<String> = (next..next + ahead as u64).map(log_key).collect();
            ahead = FETCH_AHEAD;
            let got = self
                .remote
                .get_many(&keys)
                .map_err(|e| self.io("catalogue/log", e))?;
            let mut ended = false;
            for (i, g) in got.into_iter().enumerate() {
                let seq = next + i as u64;
                let Some((bytes, _)) = g else {
                    ended = true;
                    break;
                };
                let e = self.parse(seq, &bytes)?;
                view.apply(Some(seq), &e.changes)?;
                applied += 1;
            }
            if ended {
                break;
            }
        }
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(applied)
    }

    fn parse(&self, seq: u64, bytes: &[u8]) -> Result<Entry, Error> {
        let key = log_key(seq);
        let e: Entry = serde_json::from_slice(bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}/{key}: damaged commit ({e}); restore it from the bucket's versions",
                self.remote.url()
            ))
        })?;
        if e.seq != seq {
            return Err(Error::Invalid(format!(
                "{}/{key}: holds commit {} (restore it from the bucket's versions)",
                self.remote.url(),
                e.seq
            )));
        }
        Ok(e)
    }

    /// Commits `changes`: catches up, checks them against the view, creates the next log
    /// entry, and applies it to the view. Retries against other writers; a lost reply is
    /// settled by reading the entry back.
    pub fn commit(&self, view: &Catalogue, changes: &[Change]) -> Result<(), Error> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let write_id = random_id();
        let mut last_err = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis((5 << attempt.min(6)) as u64));
            }
            self.sync_locked(view)?;
            let todo = view.check(changes)?;
            if todo.is_empty() {
                return Ok(());
            }
            let seq = view.applied_seq()? + 1;
            let entry = Entry {
                seq,
                write_id: write_id.clone(),
                time: crate::now_secs(),
                changes: todo,
            };
            let bytes = serde_json::to_vec(&entry).unwrap_or_default();
            let key = log_key(seq);
            let mine = match self.remote.put_if_absent(&key, &bytes) {
                Ok(Put::Written(_)) => true,
                // Taken: by another writer, or by this very commit when the client
                // retried a create whose first reply was lost.
                Ok(_) => self.is_mine(seq, &write_id)?,
                Err(e) => match self.remote.get(&key) {
                    Ok(Some((b, _))) => self.parse(seq, &b)?.write_id == write_id,
                    // Not written (or not readable yet): the next attempt reads again
                    // and, if the entry landed after all, recognises its write id.
                    _ => {
                        last_err = Some(e);
                        continue;
                    }
                },
            };
            if mine {
                view.apply(Some(seq), &entry.changes)?;
                if seq % CHECKPOINT_EVERY == 0 {
                    // A checkpoint only saves readers time; failing to write one loses nothing.
                    let _ = self.write_checkpoint(view, seq);
                }
                return Ok(());
            }
        }
        Err(match last_err {
            Some(e) => self.io(
                "catalogue/log",
                io::Error::other(format!(
                    "the commit could not be written after {ATTEMPTS} attempts (nothing was committed; retry): {e}"
                )),
            ),
            None => Error::Conflict(format!(
                "{}: {ATTEMPTS} other commits won the race for the log; nothing was written, retry",
                self.remote.url()
            )),
        })
    }

    fn is_mine(&self, seq: u64, write_id: &str) -> Result<bool, Error> {
        let key = log_key(seq);
        match self.remote.get(&key).map_err(|e| self.io(&key, e))? {
            Some((b, _)) => Ok(self.parse(seq, &b)?.write_id == write_id),
            None => Ok(false),
        }
    }

    /// Writes the view (at commit `seq`) as a checkpoint and points the hint at it.
    pub fn write_checkpoint(&self, view: &Catalogue, seq: u64) -> Result<(), Error> {
        let entry = Entry {
            seq,
            write_id: String::new(),
            time: crate::now_secs(),
            changes: view.snapshot()?,
        };
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        let key = format!(
            "catalogue/checkpoints/{seq:020}-{}.json",
            Digest::of(&bytes).hex()
        );
        self.remote
            .put_if_absent(&key, &bytes)
            .map_err(|e| self.io(&key, e))?;
        let hint = serde_json::to_vec(&Hint { seq, key }).unwrap_or_default();
        let io = |e| self.io(CHECKPOINT_HINT, e);
        match self.remote.get(CHECKPOINT_HINT).map_err(io)? {
            None => {
                self.remote
                    .put_if_absent(CHECKPOINT_HINT, &hint)
                    .map_err(io)?;
            }
            Some((old, etag)) => {
                let old = serde_json::from_slice::<Hint>(&old).ok();
                let newer = old.as_ref().is_none_or(|h| h.seq < seq);
                if let (true, Some(etag)) = (newer, etag) {
                    // Changed: lost to a concurrent hint update, which is as good.
                    let put = self
                        .remote
                        .put_if_match(CHECKPOINT_HINT, &hint, &etag)
                        .map_err(io)?;
                    // Only the newest checkpoint is kept (each holds the whole catalogue).
                    // A reader that read the old hint and finds its checkpoint gone reads
                    // the log from the start instead: slower, never wrong.
                    if let (Put::Written(_), Some(old)) = (put, old) {
                        let _ = self.remote.delete(&old.key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Loads the newest checkpoint into an empty view; returns 1 when one was loaded.
    fn load_checkpoint(&self, view: &Catalogue) -> Result<usize, Error> {
        let io = |e| self.io(CHECKPOINT_HINT, e);
        let Some((b, _)) = self.remote.get(CHECKPOINT_HINT).map_err(io)? else {
            return Ok(0);
        };
        // A damaged hint costs only time: the log from the start is the truth.
        let Ok(hint) = serde_json::from_slice::<Hint>(&b) else {
            return Ok(0);
        };
        let Some((bytes, _)) = self
            .remote
            .get(&hint.key)
            .map_err(|e| self.io(&hint.key, e))?
        else {
            return Ok(0);
        };
        let named = hint
            .key
            .rsplit('-')
            .next()
            .and_then(|h| h.strip_suffix(".json"))
            .unwrap_or("");
        if Digest::of(&bytes).hex() != named {
            return Err(Error::Invalid(format!(
                "{}/{}: the checkpoint does not match its digest (damaged); remove {CHECKPOINT_HINT} to rebuild from the log",
                self.remote.url(),
                hint.key
            )));
        }
        let e: Entry = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}/{}: {e}", self.remote.url(), hint.key)))?;
        view.apply(Some(e.seq), &e.changes)?;
        Ok(1)
    }
}
