//! The catalogue: refs (`name:tag` -> manifest digest), per-DNA records, named masks and
//! spaces, in sled. The only module that imports sled.
//!
//! The catalogue is a view: its truth is the store's commit log ([`crate::ledger`]), and
//! the only write is [`Catalogue::apply`] of a commit (flushed before returning, with the
//! last commit applied recorded in the same transaction). Deleted, it is rebuilt from the
//! log. sled admits one process per database: a second one gets
//! [`CatalogueError::Busy`], never a hang.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::card::CardRecord;
use crate::format::Digest;
use crate::refname::RefName;
use crate::Error;

/// Errors of the catalogue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    #[error("store {0} is busy: another vdna-db process holds it (a running `vdna-db serve`?); retry later, raise --lock-wait, stop that process, or talk to its server with --remote")]
    Busy(String),
    #[error("catalogue: {0} (run vdna-db verify; the objects are intact and vdna-db reindex rebuilds derived state)")]
    Db(String),
    #[error("catalogue record {key}: {detail} (run vdna-db verify)")]
    Corrupt { key: String, detail: String },
}

/// What a ref points to, with its annotations (kept outside the hashed bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefRecord {
    pub digest: Digest,
    /// Seconds since the Unix epoch when the ref was set.
    pub created: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What the catalogue knows of a stored DNA without reading its objects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DnaRecord {
    pub space: Digest,
    pub dist: String,
    pub images: u64,
    /// Bytes at rest (manifest, space config and layers, encoded).
    pub stored_bytes: u64,
    /// Canonical (uncompressed) bytes of the layers.
    pub raw_bytes: u64,
    pub created: u64,
}

/// A space as listed: its canonical config JSON and a description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpaceRecord {
    pub config: serde_json::Value,
    pub description: String,
}

/// An API token as stored: only the SHA-256 of the secret is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// `push` (write DNAs and refs) or `admin` (also delete refs).
    pub scope: String,
    pub hash: Digest,
    pub label: String,
    pub created: u64,
}

/// One change to the catalogue: the unit of a shared store's commit log (`ledger`),
/// applied to this sled view in one transaction per commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    PutSpace {
        digest: Digest,
        record: SpaceRecord,
    },
    PutDna {
        digest: Digest,
        record: DnaRecord,
    },
    /// Points `name` at a DNA; `prev` is what the writer saw there (`None`: no such
    /// ref), and the commit is refused as a conflict when that is no longer so.
    SetRef {
        name: RefName,
        record: RefRecord,
        prev: Option<Digest>,
    },
    /// Removes `name`, which the writer saw pointing at `prev`.
    RemoveRef {
        name: RefName,
        prev: Digest,
    },
    /// Forgets a DNA record that no ref reaches (gc); skipped when one does by then.
    RemoveDna {
        digest: Digest,
    },
    PutMask {
        name: String,
        spec: String,
    },
    RemoveMask {
        name: String,
    },
    PutToken {
        record: TokenRecord,
    },
    RemoveToken {
        id: String,
    },
    /// Sets the dataset card of `name`, which must exist (or be set in the same commit).
    /// Removing a ref removes its card.
    PutCard {
        name: RefName,
        record: CardRecord,
    },
    RemoveCard {
        name: RefName,
    },
}

impl Key for RefName {
    fn to_key(&self) -> String {
        self.to_string()
    }
    fn from_key(s: &str) -> Result<Self, String> {
        RefName::parse(s).map_err(|e| e.to_string())
    }
}

/// The sled-backed catalogue.
pub struct Catalogue {
    db: sled::Db,
    /// The view's bookkeeping: the last commit of a shared store applied, its store id.
    meta: sled::Tree,
    refs: Table<RefName, RefRecord>,
    dnas: Table<Digest, DnaRecord>,
    masks: Table<String, MaskSpec>,
    spaces: Table<Digest, SpaceRecord>,
    tokens: Table<String, TokenRecord>,
    cards: Table<RefName, CardRecord>,
    /// Changes applied by this process (every write goes through `apply` or
    /// `clear_view`, and sled admits one process): what [`Catalogue::snapshot_records`]
    /// is keyed by.
    generation: std::sync::atomic::AtomicU64,
    records: std::sync::Mutex<Option<(u64, SharedRecords)>>,
}

/// Meta keys of the state stamp ([`Catalogue::state_stamp`]).
const INSTANCE: &[u8] = b"instance";
const COMMITS: &[u8] = b"commits";

/// Every ref and every DNA record, decoded once per catalogue state and shared.
#[derive(Clone)]
pub struct SharedRecords {
    pub refs: std::sync::Arc<Vec<(RefName, RefRecord)>>,
    pub dnas: std::sync::Arc<Vec<(Digest, DnaRecord)>>,
}

/// How a table's keys are written: as UTF-8 text, parsed back on read.
trait Key: Sized {
    fn to_key(&self) -> String;
    fn from_key(s: &str) -> Result<Self, String>;
}

impl Key for Digest {
    fn to_key(&self) -> String {
        self.to_string()
    }
    fn from_key(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| "key is not a digest".to_string())
    }
}

impl Key for String {
    fn to_key(&self) -> String {
        self.clone()
    }
    fn from_key(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
}

/// How a table's values are written: records as JSON, mask specs as their UTF-8 text
/// (the layout stores of earlier versions hold).
trait Record: Sized {
    fn encode(&self) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

macro_rules! json_record {
    ($($t:ty),*) => {$(
        impl Record for $t {
            fn encode(&self) -> Vec<u8> {
                enc(self)
            }
            fn decode(bytes: &[u8]) -> Result<Self, String> {
                serde_json::from_slice(bytes).map_err(|e| e.to_string())
            }
        }
    )*};
}
json_record!(RefRecord, DnaRecord, SpaceRecord, TokenRecord, CardRecord);

/// A named mask's spec, as stored.
struct MaskSpec(String);

impl Record for MaskSpec {
    fn encode(&self) -> Vec<u8> {
        self.0.as_bytes().to_vec()
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        String::from_utf8(bytes.to_vec())
            .map(MaskSpec)
            .map_err(|_| "spec is not UTF-8".to_string())
    }
}

/// One sled tree read and written as typed keys and records. Every read of every table
/// treats a damaged record the same way: a [`CatalogueError::Corrupt`] naming the table and
/// the key, never a silent skip or a lossy decode.
struct Table<K, V> {
    name: &'static str,
    tree: sled::Tree,
    _types: std::marker::PhantomData<(K, V)>,
}

impl<K: Key, V: Record> Table<K, V> {
    fn open(db: &sled::Db, name: &'static str) -> Result<Self, Error> {
        Ok(Table {
            name,
            tree: db.open_tree(name).map_err(db_err)?,
            _types: std::marker::PhantomData,
        })
    }

    fn corrupt(&self, key: &[u8], detail: String) -> Error {
        Error::Catalogue(CatalogueError::Corrupt {
            key: format!("{}/{}", self.name, String::from_utf8_lossy(key)),
            detail,
        })
    }

    fn value(&self, key: &[u8], bytes: &[u8]) -> Result<V, Error> {
        V::decode(bytes).map_err(|d| self.corrupt(key, d))
    }

    fn get(&self, k: &K) -> Result<Option<V>, Error> {
        let key = k.to_key();
        match self.tree.get(key.as_bytes()).map_err(db_err)? {
            Some(v) => self.value(key.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every record, in key byte order.
    fn all(&self) -> Result<Vec<(K, V)>, Error> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let s =
                std::str::from_utf8(&k).map_err(|_| self.corrupt(&k, "key is not UTF-8".into()))?;
            let key = K::from_key(s).map_err(|d| self.corrupt(&k, d))?;
            out.push((key, self.value(&k, &v)?));
        }
        Ok(out)
    }
}

fn db_err(e: sled::Error) -> Error {
    Error::Catalogue(CatalogueError::Db(e.to_string()))
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Catalogue {
    /// Opens or creates the catalogue at `path`, failing at once with
    /// [`CatalogueError::Busy`] when another process holds it.
    pub fn open(path: &Path) -> Result<Catalogue, Error> {
        Catalogue::open_wait(path, std::time::Duration::ZERO)
    }

    /// Opens the catalogue, retrying for up to `wait` while another process holds its
    /// lock (sled admits one process at a time), then failing with
    /// [`CatalogueError::Busy`]. Never blocks longer than `wait`.
    pub fn open_wait(path: &Path, wait: std::time::Duration) -> Result<Catalogue, Error> {
        let deadline = std::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(5);
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Err(Error::Catalogue(CatalogueError::Busy(
                            path.parent().unwrap_or(path).display().to_string(),
                        )));
                    }
                    std::thread::sleep(pause.min(deadline - now));
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(db_err(e)),
            }
        };
        Ok(Catalogue {
            refs: Table::open(&db, "refs")?,
            dnas: Table::open(&db, "dnas")?,
            masks: Table::open(&db, "masks")?,
            spaces: Table::open(&db, "spaces")?,
            tokens: Table::open(&db, "tokens")?,
            cards: Table::open(&db, "cards")?,
            generation: Default::default(),
            records: Default::default(),
            meta: db.open_tree("meta").map_err(db_err)?,
            db,
        })
    }

    /// The sequence number of the last shared commit applied to this view (0: none).
    pub fn applied_seq(&self) -> Result<u64, Error> {
        Ok(match self.meta.get(b"applied_seq").map_err(db_err)? {
            Some(v) => u64::from_le_bytes(v.as_ref().try_into().map_err(|_| {
                Error::Catalogue(CatalogueError::Corrupt {
                    key: "meta/applied_seq".into(),
                    detail: "not 8 bytes".into(),
                })
            })?),
            None => 0,
        })
    }

    /// A bookkeeping value of the view (the id of the shared store it mirrors).
    pub fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .meta
            .get(key.as_bytes())
            .map_err(db_err)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets a bookkeeping value, then flushes.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), Error> {
        self.meta
            .insert(key.as_bytes(), value.as_bytes())
            .map_err(db_err)?;
        self.flush()
    }

    /// Empties every table: a view that mirrors another store than the one opened is
    /// dropped and rebuilt from that store's log.
    pub fn clear_view(&self) -> Result<(), Error> {
        for t in [
            &self.refs.tree,
            &self.dnas.tree,
            &self.masks.tree,
            &self.spaces.tree,
            &self.tokens.tree,
            &self.cards.tree,
            &self.meta,
        ] {
            t.clear().map_err(db_err)?;
        }
        self.bump();
        self.flush()
    }

    /// Checks a commit against this view: a ref set or removed must still be what its
    /// writer saw ([`Error::Conflict`] otherwise) and point at a recorded DNA; removals
    /// of what is already gone, and of DNA records a ref reaches, are dropped. Returns
    /// the changes still to make.
    pub fn check(&self, changes: &[Change]) -> Result<Vec<Change>, Error> {
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            match c {
                Change::SetRef { name, record, prev } => {
                    let now = self.refs.get(name)?.map(|r| r.digest);
                    if now != *prev {
                        return Err(Error::Conflict(format!(
                            "{name} was changed by another writer while this one was in flight (it now {}); nothing was written: look again and retry",
                            match now {
                                Some(d) => format!("points at {}", d.short()),
                                None => "is removed".into(),
                            }
                        )));
                    }
                    let in_commit = changes.iter().any(
                        |o| matches!(o, Change::PutDna { digest, .. } if *digest == record.digest),
                    );
                    if !in_commit && self.dnas.get(&record.digest)?.is_none() {
                        return Err(Error::NotFound(format!(
                            "{name}: DNA {} is no longer stored (removed by gc meanwhile?); push it again",
                            record.digest.short()
                        )));
                    }
                }
                Change::RemoveRef { name, prev } => match self.refs.get(name)? {
                    None => {
                        return Err(Error::NotFound(format!(
                            "no DNA named {name} (list them with vdna-db ls)"
                        )))
                    }
                    Some(r) if r.digest != *prev => {
                        return Err(Error::Conflict(format!(
                            "{name} was repointed by another writer (now {}); nothing was removed: look again and retry",
                            r.digest.short()
                        )))
                    }
                    Some(_) => {}
                },
                Change::RemoveDna { digest } => {
                    let reached = self.refs.all()?.iter().any(|(_, r)| r.digest == *digest)
                        || changes.iter().any(
                            |o| matches!(o, Change::SetRef { record, .. } if record.digest == *digest),
                        );
                    if reached || self.dnas.get(digest)?.is_none() {
                        continue;
                    }
                }
                Change::PutCard { name, .. } => {
                    let set_here = changes
                        .iter()
                        .any(|o| matches!(o, Change::SetRef { name: n, .. } if n == name));
                    let removed_here = changes
                        .iter()
                        .any(|o| matches!(o, Change::RemoveRef { name: n, .. } if n == name));
                    if removed_here || (!set_here && self.refs.get(name)?.is_none()) {
                        return Err(Error::NotFound(format!(
                            "no DNA named {name} to hold the card (list them with vdna-db ls); nothing was written"
                        )));
                    }
                }
                Change::RemoveCard { name } if self.cards.get(name)?.is_none() => continue,
                Change::RemoveMask { name } if self.mask(name)?.is_none() => continue,
                Change::RemoveToken { id } if self.tokens.get(id)?.is_none() => continue,
                _ => {}
            }
            out.push(c.clone());
        }
        Ok(out)
    }

    /// The whole catalogue as changes that rebuild it from empty (a shared store's
    /// checkpoint).
    pub fn snapshot(&self) -> Result<Vec<Change>, Error> {
        let mut out = Vec::new();
        for (digest, record) in self.spaces()? {
            out.push(Change::PutSpace { digest, record });
        }
        for (digest, record) in self.dnas()? {
            out.push(Change::PutDna { digest, record });
        }
        for (name, record) in self.refs()? {
            out.push(Change::SetRef {
                name,
                record,
                prev: None,
            });
        }
        for (name, spec) in self.masks()? {
            out.push(Change::PutMask { name, spec });
        }
        for record in self.tokens()? {
            out.push(Change::PutToken { record });
        }
        for (name, record) in self.cards.all()? {
            out.push(Change::PutCard { name, record });
        }
        Ok(out)
    }

    /// Applies one commit in one transaction and, for a shared store's commit `seq`,
    /// records it as applied in the same transaction; then flushes.
    pub fn apply(&self, seq: Option<u64>, changes: &[Change]) -> Result<(), Error> {
        failpoint!("catalogue::commit", |e| db_err(sled::Error::Io(e)));
        let res: Result<(), TransactionError<()>> = (
            &self.refs.tree,
            &self.dnas.tree,
            &self.spaces.tree,
            &self.masks.tree,
            &self.tokens.tree,
            &self.cards.tree,
            &self.meta,
        )
            .transaction(|(rf, d, sp, m, t, cd, meta)| {
                for c in changes {
                    match c {
                        Change::PutSpace { digest, record } => {
                            sp.insert(digest.to_key().as_bytes(), record.encode())?;
                        }
                        Change::PutDna { digest, record } => {
                            d.insert(digest.to_key().as_bytes(), record.encode())?;
                        }
                        Change::SetRef { name, record, .. } => {
                            rf.insert(name.to_key().as_bytes(), record.encode())?;
                        }
                        Change::RemoveRef { name, .. } => {
                            rf.remove(name.to_key().as_bytes())?;
                            cd.remove(name.to_key().as_bytes())?;
                        }
                        Change::RemoveDna { digest } => {
                            d.remove(digest.to_key().as_bytes())?;
                        }
                        Change::PutMask { name, spec } => {
                            m.insert(name.as_bytes(), spec.as_bytes())?;
                        }
                        Change::RemoveMask { name } => {
                            m.remove(name.as_bytes())?;
                        }
                        Change::PutToken { record } => {
                            t.insert(record.id.as_bytes(), record.encode())?;
                        }
                        Change::RemoveToken { id } => {
                            t.remove(id.as_bytes())?;
                        }
                        Change::PutCard { name, record } => {
                            cd.insert(name.to_key().as_bytes(), record.encode())?;
                        }
                        Change::RemoveCard { name } => {
                            cd.remove(name.to_key().as_bytes())?;
                        }
                    }
                }
                if let Some(seq) = seq {
                    meta.insert(&b"applied_seq"[..], &seq.to_le_bytes()[..])?;
                }
                // Counted with the changes, in the same transaction: what a state stamp
                // reads (derived state on disk is keyed by it).
                let commits = meta
                    .get(COMMITS)?
                    .and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
                    .unwrap_or(0);
                meta.insert(COMMITS, &(commits + 1).to_le_bytes()[..])?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        res.map_err(|e| Error::Catalogue(CatalogueError::Db(format!("{e:?}"))))?;
        self.bump();
        self.flush()
    }

    /// The catalogue's state, as derived files on disk record it: a random identity of
    /// this catalogue (drawn when first asked, and again when the view is cleared), and
    /// the number of commits applied since. Every change to the catalogue's contents goes
    /// through [`Catalogue::apply`] or [`Catalogue::clear_view`], which change it, so two
    /// equal stamps are two reads of the same contents. One read, O(1).
    pub fn state_stamp(&self) -> Result<(u64, u64), Error> {
        let word = |v: Option<sled::IVec>| {
            v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_le_bytes))
        };
        let instance = match word(self.meta.get(INSTANCE).map_err(db_err)?) {
            Some(i) => i,
            None => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos()),
                );
                h.write_u32(std::process::id());
                let fresh = h.finish();
                // Another thread may draw at the same time: the first one stored wins.
                let _ = self
                    .meta
                    .compare_and_swap(
                        INSTANCE,
                        None as Option<&[u8]>,
                        Some(&fresh.to_le_bytes()[..]),
                    )
                    .map_err(db_err)?;
                word(self.meta.get(INSTANCE).map_err(db_err)?).unwrap_or(fresh)
            }
        };
        let commits = word(self.meta.get(COMMITS).map_err(db_err)?).unwrap_or(0);
        Ok((instance, commits))
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every ref (sorted) and DNA record, decoded once per catalogue state: the query
    /// path's candidates without decoding every record from sled on every query.
    pub fn snapshot_records(&self) -> Result<SharedRecords, Error> {
        // The generation is read before the tables: a change applied meanwhile leaves
        // this snapshot labelled older, so the next reader decodes again.
        let gen = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        if let Some((g, r)) = self
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *g == gen {
                return Ok(r.clone());
            }
        }
        let r = SharedRecords {
            refs: std::sync::Arc::new(self.refs()?),
            dnas: std::sync::Arc::new(self.dnas()?),
        };
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) = Some((gen, r.clone()));
        Ok(r)
    }

    fn flush(&self) -> Result<(), Error> {
        failpoint!("catalogue::flush", |e| db_err(sled::Error::Io(e)));
        self.db.flush().map_err(db_err).map(|_| ())
    }

    pub fn get_ref(&self, name: &RefName) -> Result<Option<RefRecord>, Error> {
        self.refs.get(name)
    }

    /// Every ref, sorted by name and tag.
    pub fn refs(&self) -> Result<Vec<(RefName, RefRecord)>, Error> {
        let mut out = self.refs.all()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn dna(&self, d: &Digest) -> Result<Option<DnaRecord>, Error> {
        self.dnas.get(d)
    }

    /// Every stored DNA record.
    pub fn dnas(&self) -> Result<Vec<(Digest, DnaRecord)>, Error> {
        self.dnas.all()
    }

    pub fn space(&self, d: &Digest) -> Result<Option<SpaceRecord>, Error> {
        self.spaces.get(d)
    }

    pub fn spaces(&self) -> Result<Vec<(Digest, SpaceRecord)>, Error> {
        self.spaces.all()
    }

    pub fn mask(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.masks.get(&name.to_string())?.map(|m| m.0))
    }

    /// Resolves a mask spec against a space, named masks (`@name`) looked up here.
    pub fn resolve_mask(
        &self,
        spec: &str,
        space: &crate::format::SpaceConfig,
    ) -> Result<crate::mask::Mask, Error> {
        let named = |n: &str| self.mask(n).ok().flatten();
        Ok(crate::mask::Mask::parse(spec, space, &named)?)
    }

    pub fn masks(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .masks
            .all()?
            .into_iter()
            .map(|(n, m)| (n, m.0))
            .collect())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        Ok(self.tokens.all()?.into_iter().map(|(_, t)| t).collect())
    }

    /// The dataset card of a ref.
    pub fn card(&self, name: &RefName) -> Result<Option<CardRecord>, Error> {
        self.cards.get(name)
    }

    /// Every card, by ref name.
    pub fn cards(&self) -> Result<Vec<(RefName, CardRecord)>, Error> {
        self.cards.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared records are one decode per catalogue state: the same `Arc` while
    /// nothing changes, and every applied change (a ref set, removed, the view cleared)
    /// shows in the next read.
    #[test]
    fn shared_records_follow_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalogue::open(dir.path()).unwrap();
        let (d, name) = (Digest::of(b"dna"), RefName::parse("a:v1").unwrap());
        let rec = DnaRecord {
            space: Digest::of(b"space"),
            dist: "histogram-8".into(),
            images: 3,
            stored_bytes: 1,
            raw_bytes: 1,
            created: 0,
        };
        let s0 = c.snapshot_records().unwrap();
        assert!(s0.refs.is_empty() && s0.dnas.is_empty());
        let r = RefRecord {
            digest: d,
            created: 0,
            annotations: Default::default(),
        };
        c.apply(
            None,
            &[
                Change::PutDna {
                    digest: d,
                    record: rec.clone(),
                },
                Change::SetRef {
                    name: name.clone(),
                    record: r.clone(),
                    prev: None,
                },
            ],
        )
        .unwrap();
        let s1 = c.snapshot_records().unwrap();
        assert_eq!(*s1.refs, vec![(name.clone(), r)]);
        assert_eq!(*s1.dnas, vec![(d, rec)]);
        assert!(std::sync::Arc::ptr_eq(
            &s1.refs,
            &c.snapshot_records().unwrap().refs
        ));
        c.apply(None, &[Change::RemoveRef { name, prev: d }])
            .unwrap();
        assert!(c.snapshot_records().unwrap().refs.is_empty());
        c.clear_view().unwrap();
        assert!(c.snapshot_records().unwrap().dnas.is_empty());
    }

    /// Every table answers a damaged record with the same error, naming table and key,
    /// where reads used to differ (spaces skipped bad keys, masks decoded lossily).
    #[test]
    fn a_corrupt_record_is_one_error_in_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalogue::open(dir.path()).unwrap();
        let digest = Digest::of(b"x");
        for (tree, key, value) in [
            ("refs", "a:v1".as_bytes(), b"{not json".as_slice()),
            ("dnas", digest.to_string().as_bytes(), b"[]".as_slice()),
            ("spaces", b"not-a-digest".as_slice(), b"{}".as_slice()),
            ("masks", b"m".as_slice(), b"\xff\xfe".as_slice()),
            ("tokens", b"t".as_slice(), b"1".as_slice()),
        ] {
            c.db.open_tree(tree).unwrap().insert(key, value).unwrap();
        }
        let msgs = [
            c.refs().unwrap_err().to_string(),
            c.dnas().unwrap_err().to_string(),
            c.spaces().unwrap_err().to_string(),
            c.masks().unwrap_err().to_string(),
            c.tokens().unwrap_err().to_string(),
            c.get_ref(&RefName::parse("a:v1").unwrap())
                .unwrap_err()
                .to_string(),
            c.dna(&digest).unwrap_err().to_string(),
            c.mask("m").unwrap_err().to_string(),
        ];
        for (m, table) in msgs.iter().zip([
            "refs/", "dnas/", "spaces/", "masks/", "tokens/", "refs/", "dnas/", "masks/",
        ]) {
            assert!(
                m.starts_with(&format!("catalogue record {table}"))
                    && m.contains("run vdna-db verify"),
                "{m}"
            );
        }
        // Applying a commit that removes a damaged record still removes it.
        c.apply(None, &[Change::RemoveMask { name: "m".into() }])
            .unwrap();
        assert!(c.masks().unwrap().is_empty());
    }
}
