//! The catalogue's truth on object storage: an append-only log of commits, each a small
//! immutable object created with `If-None-Match: *`, as Delta Lake commits its
//! `_delta_log` and Icechunk its refs. No lock server and no external database: the
//! object store's conditional create picks exactly one writer for every sequence number.
//!
//! Layout under the store's prefix:
//! - `store.json`: the store's identity (format, random id), created once.
//! - `catalogue/log/<seq, 20 digits>.json`: commit `seq` (1, 2, ...): a write id, a time
//!   and a list of [`Change`]s.
//! - `catalogue/checkpoints/<seq>-<sha256 hex>.json`: the whole catalogue after commit
//!   `seq`, as changes that rebuild it from empty; named by its digest and checked on read.
//! - `catalogue/checkpoint.json`: which checkpoint is the newest, replaced with `If-Match`
//!   (a hint: a stale one only means more log to read).
//!
//! Each process keeps a local view in sled ([`Catalogue`]) with the last sequence number
//! applied. A commit reads the log to its end, checks its changes against the view
//! ([`Catalogue::check`]: a ref must still be what the writer saw), and creates the next
//! entry. When another writer took that number first, the commit reads that entry and
//! checks again, so of two writers setting one ref at once exactly one wins and the other
//! gets [`Error::Conflict`]. When the reply to a create is lost (a timeout, a cut
//! connection, a retry that finds its own first attempt), the entry is read back: carrying
//! this commit's write id it is this commit, never a conflict.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, Change};
use crate::format::Digest;
use crate::objstore::{random_id, Put, Remote};
use crate::Error;

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
    remote: Arc<Remote>,
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
    pub fn open(remote: Arc<Remote>, view: &Catalogue, refresh: Duration) -> Result<Ledger, Error> {
        remote.check_conditional_writes()?;
        let id = Self::identity(&remote)?;
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

    fn io(&self, key: &str, e: std::io::Error) -> Error {
        Error::io(format!("{}/{key}", self.remote.url()), e)
    }

    fn identity(remote: &Remote) -> Result<String, Error> {
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
                std::io::Error::other(format!(
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
                let newer = serde_json::from_slice::<Hint>(&old).map_or(true, |h| h.seq < seq);
                if let (true, Some(etag)) = (newer, etag) {
                    // Lost to a concurrent hint update: that one is as good.
                    self.remote
                        .put_if_match(CHECKPOINT_HINT, &hint, &etag)
                        .map_err(io)?;
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
