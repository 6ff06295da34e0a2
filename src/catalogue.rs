//! The catalogue: refs (`name:tag` -> manifest digest), per-DNA records, named masks and
//! spaces, in sled. The only module that imports sled.
//!
//! Every write that a caller reports as done is flushed before returning. sled admits one
//! process per database: a second one gets [`CatalogueError::Busy`], never a hang.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

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

/// The sled-backed catalogue.
pub struct Catalogue {
    db: sled::Db,
    refs: sled::Tree,
    dnas: sled::Tree,
    masks: sled::Tree,
    spaces: sled::Tree,
    tokens: sled::Tree,
}

fn db_err(e: sled::Error) -> Error {
    Error::Catalogue(CatalogueError::Db(e.to_string()))
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(v).map_err(|e| {
        Error::Catalogue(CatalogueError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            detail: e.to_string(),
        })
    })
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
        let tree = |n: &str| db.open_tree(n).map_err(db_err);
        Ok(Catalogue {
            refs: tree("refs")?,
            dnas: tree("dnas")?,
            masks: tree("masks")?,
            spaces: tree("spaces")?,
            tokens: tree("tokens")?,
            db,
        })
    }

    fn flush(&self) -> Result<(), Error> {
        failpoint!("catalogue::flush", |e| db_err(sled::Error::Io(e)));
        self.db.flush().map_err(db_err).map(|_| ())
    }

    /// Records a stored DNA, its space and (optionally) a ref to it, atomically, then flushes.
    /// The caller has made every object durable before.
    pub fn commit_dna(
        &self,
        digest: &Digest,
        record: &DnaRecord,
        space: &SpaceRecord,
        r: Option<(&RefName, &RefRecord)>,
    ) -> Result<(), Error> {
        failpoint!("catalogue::commit", |e| db_err(sled::Error::Io(e)));
        let dkey = digest.to_string();
        let skey = record.space.to_string();
        let res: Result<(), TransactionError<()>> = (&self.dnas, &self.spaces, &self.refs)
            .transaction(|(d, s, rf)| {
                d.insert(dkey.as_bytes(), enc(record))?;
                s.insert(skey.as_bytes(), enc(space))?;
                if let Some((name, rec)) = r {
                    rf.insert(name.to_string().as_bytes(), enc(rec))?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        res.map_err(|e| Error::Catalogue(CatalogueError::Db(format!("{e:?}"))))?;
        self.flush()
    }

    /// Points `name` at a stored DNA, then flushes.
    pub fn set_ref(&self, name: &RefName, rec: &RefRecord) -> Result<(), Error> {
        failpoint!("catalogue::set_ref", |e| db_err(sled::Error::Io(e)));
        self.refs
            .insert(name.to_string().as_bytes(), enc(rec))
            .map_err(db_err)?;
        self.flush()
    }

    pub fn get_ref(&self, name: &RefName) -> Result<Option<RefRecord>, Error> {
        let k = name.to_string();
        self.refs
            .get(k.as_bytes())
            .map_err(db_err)?
            .map(|v| dec(k.as_bytes(), &v))
            .transpose()
    }

    /// Removes a ref; returns what it pointed to.
    pub fn remove_ref(&self, name: &RefName) -> Result<Option<RefRecord>, Error> {
        failpoint!("catalogue::remove_ref", |e| db_err(sled::Error::Io(e)));
        let k = name.to_string();
        let old = self.refs.remove(k.as_bytes()).map_err(db_err)?;
        self.flush()?;
        old.map(|v| dec(k.as_bytes(), &v)).transpose()
    }

    /// Every ref, sorted by name and tag.
    pub fn refs(&self) -> Result<Vec<(RefName, RefRecord)>, Error> {
        let mut out = Vec::new();
        for kv in self.refs.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let s = String::from_utf8_lossy(&k).into_owned();
            let name = RefName::parse(&s).map_err(|e| {
                Error::Catalogue(CatalogueError::Corrupt {
                    key: s.clone(),
                    detail: e.to_string(),
                })
            })?;
            out.push((name, dec(&k, &v)?));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn dna(&self, d: &Digest) -> Result<Option<DnaRecord>, Error> {
        let k = d.to_string();
        self.dnas
            .get(k.as_bytes())
            .map_err(db_err)?
            .map(|v| dec(k.as_bytes(), &v))
            .transpose()
    }

    /// Every stored DNA record.
    pub fn dnas(&self) -> Result<Vec<(Digest, DnaRecord)>, Error> {
        let mut out = Vec::new();
        for kv in self.dnas.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let s = String::from_utf8_lossy(&k).into_owned();
            let d: Digest = s.parse().map_err(|_| {
                Error::Catalogue(CatalogueError::Corrupt {
                    key: s.clone(),
                    detail: "key is not a digest".into(),
                })
            })?;
            out.push((d, dec(&k, &v)?));
        }
        Ok(out)
    }

    /// Forgets a DNA record (its objects are the caller's business), then flushes.
    pub fn remove_dna(&self, d: &Digest) -> Result<(), Error> {
        self.dnas.remove(d.to_string().as_bytes()).map_err(db_err)?;
        self.flush()
    }

    pub fn space(&self, d: &Digest) -> Result<Option<SpaceRecord>, Error> {
        let k = d.to_string();
        self.spaces
            .get(k.as_bytes())
            .map_err(db_err)?
            .map(|v| dec(k.as_bytes(), &v))
            .transpose()
    }

    pub fn spaces(&self) -> Result<Vec<(Digest, SpaceRecord)>, Error> {
        let mut out = Vec::new();
        for kv in self.spaces.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let s = String::from_utf8_lossy(&k).into_owned();
            if let Ok(d) = s.parse::<Digest>() {
                out.push((d, dec(&k, &v)?));
            }
        }
        Ok(out)
    }

    /// Stores a named mask's spec, then flushes.
    pub fn put_mask(&self, name: &str, spec: &str) -> Result<(), Error> {
        self.masks
            .insert(name.as_bytes(), spec.as_bytes())
            .map_err(db_err)?;
        self.flush()
    }

    pub fn mask(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .masks
            .get(name.as_bytes())
            .map_err(db_err)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn masks(&self) -> Result<Vec<(String, String)>, Error> {
        self.masks
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    /// Removes a named mask; true when it existed.
    pub fn remove_mask(&self, name: &str) -> Result<bool, Error> {
        let had = self
            .masks
            .remove(name.as_bytes())
            .map_err(db_err)?
            .is_some();
        self.flush()?;
        Ok(had)
    }

    /// Stores a token record (keyed by its id), then flushes.
    pub fn put_token(&self, t: &TokenRecord) -> Result<(), Error> {
        self.tokens
            .insert(t.id.as_bytes(), enc(t))
            .map_err(db_err)?;
        self.flush()
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err)?;
                dec(&k, &v)
            })
            .collect()
    }

    /// Revokes a token; true when it existed.
    pub fn remove_token(&self, id: &str) -> Result<bool, Error> {
        let had = self.tokens.remove(id.as_bytes()).map_err(db_err)?.is_some();
        self.flush()?;
        Ok(had)
    }
}
