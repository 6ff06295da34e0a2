//! The database facade: a store root holding the object store and the catalogue, and the
//! operations the CLI (and later the server) offer on them.
//!
//! Durability order on every write: objects first (each durable on return), then the
//! catalogue transaction that points at them, flushed before success is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::catalogue::{Catalogue, Change, DnaRecord, RefRecord, SpaceRecord, TokenRecord};
use crate::distance::{Comparison, Metric};
use crate::dna::{check_layer, Dna, EncodedDna};
pub use crate::dna::{dna_of_bundle, dna_of_bundle_bytes};
use crate::format::{
    decode_layer, decode_object, encode_bundle, Bundle, Codec, Digest, Manifest, SpaceConfig,
};
use crate::mask::Mask;
pub use crate::objstore::Location;
use crate::refname::RefName;
use crate::store::{FsBackend, ObjectStore};
// A DNA read from the store and the comparison of two; they live one layer down so that
// the index can use them without this module.
pub use crate::stored::{compare_dnas, space_difference, AnyDna, HeldLayer, StoredDna};
use crate::{now_secs, Error};
use rkyv::util::AlignedVec;

/// The zstd level used for new objects: level 19 saves 2-5% for 30-100x the CPU.
pub const DEFAULT_LEVEL: i32 = 3;

const STORE_MARKER: &str = "VDNA_DB_STORE";
const STORE_VERSION: &str = "vdna-db store v1\n";
/// The marker of a home that caches a store kept in a bucket (`--store s3://...`).
const CACHE_VERSION: &str = "vdna-db cache v1\n";

/// The default store root: `$VDNA_DB_HOME`, else the per-user data directory.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("VDNA_DB_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::data_dir()
        .map(|d| d.join("vdna-db"))
        .unwrap_or_else(|| PathBuf::from(".vdna-db"))
}

/// An open store.
pub struct Db {
    home: PathBuf,
    location: Location,
    objects: ObjectStore,
    /// The embedded store's objects directory (`None` for a bucket).
    fs: Option<Arc<FsBackend>>,
    /// The catalogue's truth: the commit log in the bucket, or in the embedded store's
    /// `ledger/` directory; sled (`catalogue`) is this process's view of it.
    ledger: crate::ledger::Ledger,
    /// The bucket (for the index's shared summary rows and fetch counts).
    #[cfg(feature = "object-store")]
    remote: Option<Arc<crate::objstore::Remote>>,
    /// Whether the index reads and writes summary rows in the bucket.
    #[cfg(feature = "object-store")]
    shared_summaries: bool,
    catalogue: Catalogue,
    level: i32,
    histogram_codec: Codec,
    /// Commits hold it shared, `gc` exclusively: a sweep never sees a DNA half committed.
    commit_gate: std::sync::RwLock<()>,
    /// Serialises changes to the derived index (segment appends, rebuilds) between the
    /// threads of this process; other processes are kept out by sled's lock.
    index_gate: std::sync::Mutex<()>,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// zstd level for new objects.
    pub level: i32,
    /// How long to wait for another process to release the store before failing as busy.
    pub lock_wait: std::time::Duration,
    /// Codec of new histogram layers: [`Codec::Shuffle32`] ("fast", the default: decodes
    /// 3-4x faster on the query path) or [`Codec::Hist`] ("compact": about 0.7x the
    /// bytes, half the reference's npz). Objects of either codec read alike.
    pub histogram_codec: Codec,
    /// Where the store's truth lives: `None` for the embedded store at `home`; a bucket
    /// (`s3://`, `memory://`) makes `home` this process's cache (catalogue view, index).
    pub location: Option<Location>,
    /// On a bucket: a read catches up with other processes' commits when its view is
    /// older than this.
    pub refresh: std::time::Duration,
    /// On a bucket: read and write the index's summary rows there, so a fresh replica
    /// builds its index without decoding every DNA (off only to measure the difference).
    pub shared_summaries: bool,
}

/// How stale a replica's view of a shared catalogue may be before a read catches up.
pub const DEFAULT_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            level: DEFAULT_LEVEL,
            lock_wait: std::time::Duration::ZERO,
            histogram_codec: Codec::Shuffle32,
            location: None,
            refresh: DEFAULT_REFRESH,
            shared_summaries: true,
        }
    }
}

/// Objects younger than this are never collected by `gc` unless asked: an upload in
/// progress (objects first, the manifest last) is not yet reachable from any ref.
pub const DEFAULT_GC_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What a push stored.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    pub digest: Digest,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub space: String,
    pub dist: String,
    pub images: u64,
    /// Objects written now (the others were already stored).
    pub new_objects: usize,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
}

/// One line of `ls`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Listing {
    #[serde(rename = "ref")]
    pub reference: String,
    pub name: String,
    pub tag: String,
    pub digest: Digest,
    pub space: Digest,
    pub extractor: String,
    pub dist: String,
    pub images: u64,
    pub stored_bytes: u64,
    pub created: u64,
    pub annotations: BTreeMap<String, String>,
    /// The dataset card's title, licence, tags and summary, when the ref has a card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<crate::card::CardBrief>,
}

/// A line of `verify`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct VerifyProblem {
    pub object: String,
    pub problem: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub objects_checked: usize,
    pub refs_checked: usize,
    pub problems: Vec<VerifyProblem>,
}

/// What `gc` removed.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct GcReport {
    pub objects_kept: usize,
    pub objects_removed: usize,
    /// Unreachable objects spared because they are younger than the grace period.
    pub objects_recent: usize,
    pub bytes_freed: u64,
    pub records_removed: usize,
    pub tmp_files_removed: usize,
}

impl Db {
    /// Opens the store at `home`, creating it if missing.
    pub fn open(home: &Path) -> Result<Db, Error> {
        Db::open_with_level(home, DEFAULT_LEVEL)
    }

    /// Opens the store, writing new objects at zstd `level`.
    pub fn open_with_level(home: &Path, level: i32) -> Result<Db, Error> {
        Db::open_with(
            home,
            &OpenOptions {
                level,
                ..OpenOptions::default()
            },
        )
    }

    /// Opens the store with explicit options.
    pub fn open_with(home: &Path, opts: &OpenOptions) -> Result<Db, Error> {
        match &opts.location {
            Some(loc) if loc.is_shared() => Db::open_shared(home, loc, opts),
            Some(Location::Local(dir)) => {
                // Two spellings of one directory are the store's own view, not a second one.
                let same = dir == home
                    || matches!((dir.canonicalize(), home.canonicalize()), (Ok(a), Ok(b)) if a == b);
                Db::open_local(dir, if same { dir } else { home }, opts)
            }
            _ => Db::open_local(home, home, opts),
        }
    }

    /// Checks (or writes, in an empty directory) a home's marker.
    fn mark_home(home: &Path, marker_text: &str) -> Result<(), Error> {
        std::fs::create_dir_all(home).map_err(|e| Error::io(home, e))?;
        let marker = home.join(STORE_MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(s) if s == marker_text => Ok(()),
            Ok(s) if s == STORE_VERSION || s == CACHE_VERSION => Err(Error::Invalid(format!(
                "{} holds {}; give another --home {}",
                home.display(),
                if s == STORE_VERSION {
                    "an embedded store, not the cache of a shared store"
                } else {
                    "the cache of a shared store, not an embedded store"
                },
                if marker_text == CACHE_VERSION {
                    "for this process's cache of the store"
                } else {
                    "for the embedded store"
                }
            ))),
            Ok(s) => Err(Error::Invalid(format!(
                "{}: store format {:?} is not supported by this build (expected {:?}); upgrade vdna-db",
                home.display(),
                s.trim(),
                marker_text.trim()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let non_empty = std::fs::read_dir(home)
                    .map_err(|e| Error::io(home, e))?
                    .next()
                    .is_some();
                if non_empty {
                    return Err(Error::Invalid(format!(
                        "{} is not empty and is not a vdna-db store; pick another --home",
                        home.display()
                    )));
                }
                crate::fsio::write_file_atomic(&marker, marker_text.as_bytes())
                    .map_err(|e| Error::io(&marker, e))
            }
            Err(e) => Err(Error::io(&marker, e)),
        }
    }

    /// The embedded store at `store`. With `home` the same directory, its own catalogue
    /// view and index live there too (the usual case, one process at a time); with
    /// another `home`, that directory holds this process's view and index, so several
    /// processes (each with its own home) share one directory store through its log, as
    /// replicas share a bucket.
    fn open_local(store: &Path, home: &Path, opts: &OpenOptions) -> Result<Db, Error> {
        Db::mark_home(store, STORE_VERSION)?;
        let own_view = store == home;
        if !own_view {
            Db::mark_home(home, CACHE_VERSION)?;
        }
        let catalogue = Catalogue::open_wait(&home.join("catalogue"), opts.lock_wait)?;
        let log = Arc::new(crate::ledger::DirLog::open(&store.join("ledger"))?);
        if own_view {
            crate::ledger::Ledger::adopt(log.as_ref(), &catalogue)?;
        } else if store.join("catalogue").is_dir() && !log.has_identity()? {
            // A store from before the log, opened first through another view: its own
            // catalogue is adopted before anything else is committed.
            let own = Catalogue::open_wait(&store.join("catalogue"), opts.lock_wait)?;
            crate::ledger::Ledger::adopt(log.as_ref(), &own)?;
        }
        let ledger = crate::ledger::Ledger::open(log, &catalogue, opts.refresh)?;
        let fs = Arc::new(
            FsBackend::open(&store.join("objects"), &store.join("tmp"))
                .map_err(|e| Error::io(store, e))?,
        );
        Ok(Db {
            home: home.to_path_buf(),
            location: Location::Local(store.to_path_buf()),
            objects: ObjectStore::new(fs.clone()),
            fs: Some(fs),
            ledger,
            #[cfg(feature = "object-store")]
            remote: None,
            #[cfg(feature = "object-store")]
            shared_summaries: false,
            catalogue,
            level: opts.level,
            histogram_codec: opts.histogram_codec,
            commit_gate: std::sync::RwLock::new(()),
            index_gate: std::sync::Mutex::new(()),
        })
    }

    #[cfg(feature = "object-store")]
    fn open_shared(home: &Path, loc: &Location, opts: &OpenOptions) -> Result<Db, Error> {
        Db::mark_home(home, CACHE_VERSION)?;
        let catalogue = Catalogue::open_wait(&home.join("catalogue"), opts.lock_wait)?;
        let remote = Arc::new(crate::objstore::Remote::open(loc)?);
        let ledger = crate::ledger::Ledger::open(remote.clone(), &catalogue, opts.refresh)?;
        Ok(Db {
            home: home.to_path_buf(),
            location: loc.clone(),
            objects: ObjectStore::new(Arc::new(crate::objstore::RemoteObjects::new(
                remote.clone(),
            ))),
            fs: None,
            ledger,
            remote: Some(remote),
            shared_summaries: opts.shared_summaries,
            catalogue,
            level: opts.level,
            histogram_codec: opts.histogram_codec,
            commit_gate: std::sync::RwLock::new(()),
            index_gate: std::sync::Mutex::new(()),
        })
    }

    #[cfg(not(feature = "object-store"))]
    fn open_shared(_home: &Path, loc: &Location, _opts: &OpenOptions) -> Result<Db, Error> {
        Err(Error::Invalid(format!(
            "{}: this build of vdna-db has no object storage (build it with the feature object-store)",
            loc.url()
        )))
    }

    /// Where the store's truth lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Bytes of objects fetched over the network from the bucket since the store was
    /// opened (`None` for the embedded store).
    pub fn bytes_fetched(&self) -> Option<u64> {
        #[cfg(feature = "object-store")]
        if let Some(r) = &self.remote {
            return Some(r.bytes_fetched());
        }
        None
    }

    /// Catches the catalogue view up with every commit in the log (other processes' ones,
    /// on a shared store). Returns how many commits were applied.
    pub fn sync(&self) -> Result<usize, Error> {
        self.ledger.sync(&self.catalogue)
    }

    /// [`Db::sync`] when the view is older than the refresh interval.
    pub fn sync_if_stale(&self) -> Result<usize, Error> {
        self.ledger.sync_if_stale(&self.catalogue)
    }

    /// Commits catalogue changes through the log, then into this process's view.
    fn commit(&self, changes: &[Change]) -> Result<(), Error> {
        self.ledger.commit(&self.catalogue, changes)
    }

    /// Stores an API token record.
    pub fn put_token(&self, rec: &TokenRecord) -> Result<(), Error> {
        self.commit(&[Change::PutToken {
            record: rec.clone(),
        }])
    }

    /// Revokes a token; true when it existed.
    pub fn remove_token(&self, id: &str) -> Result<bool, Error> {
        self.sync()?;
        if !self.catalogue.tokens()?.iter().any(|t| t.id == id) {
            return Ok(false);
        }
        self.commit(&[Change::RemoveToken { id: id.into() }])
            .map(|_| true)
    }

    /// Stores a named mask's spec.
    pub fn put_mask(&self, name: &str, spec: &str) -> Result<(), Error> {
        self.commit(&[Change::PutMask {
            name: name.into(),
            spec: spec.into(),
        }])
    }

    /// Removes a named mask; true when it existed.
    pub fn remove_mask(&self, name: &str) -> Result<bool, Error> {
        self.sync()?;
        if self.catalogue.mask(name)?.is_none() {
            return Ok(false);
        }
        self.commit(&[Change::RemoveMask { name: name.into() }])
            .map(|_| true)
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Stores a DNA and, with `name`, points a ref at it.
    pub fn push(
        &self,
        dna: &Dna,
        name: Option<&RefName>,
        annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        dna.validate()?;
        let enc = dna.encode_with(self.level, self.histogram_codec);
        self.commit_encoded(
            &enc.manifest,
            enc.manifest_digest,
            &dna.space,
            &enc.objects,
            enc.raw_bytes,
            name,
            annotations,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_encoded(
        &self,
        manifest: &Manifest,
        digest: Digest,
        space: &SpaceConfig,
        objects: &[(Digest, Vec<u8>)],
        raw_bytes: u64,
        name: Option<&RefName>,
        annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        // Objects are put under the gate too, so gc cannot sweep them between the put and
        // the catalogue commit.
        let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
        // Layers first, then the space and the manifest: a manifest is never durable before
        // the blobs it names.
        let new_objects = store_objects(&self.objects, objects)?;
        let stored_bytes: u64 = objects.iter().map(|o| o.1.len() as u64).sum();
        let now = now_secs();
        let record = DnaRecord {
            space: manifest.space,
            dist: manifest.dist.clone(),
            images: manifest.images,
            stored_bytes,
            raw_bytes,
            created: now,
        };
        let space_rec = SpaceRecord {
            config: serde_json::to_value(space).unwrap_or_default(),
            description: space.describe(),
        };
        let ref_rec = RefRecord {
            digest,
            created: now,
            annotations,
        };
        // The ref's value as seen now: a commit by another writer in between makes this
        // one a conflict, not a silent overwrite.
        self.sync()?;
        let mut changes = vec![
            Change::PutSpace {
                digest: manifest.space,
                record: space_rec,
            },
            Change::PutDna { digest, record },
        ];
        if let Some(n) = name {
            changes.push(Change::SetRef {
                name: n.clone(),
                record: ref_rec,
                prev: self.catalogue.get_ref(n)?.map(|r| r.digest),
            });
        }
        self.commit(&changes)?;
        Ok(PushReport {
            digest,
            reference: name.map(|n| n.to_string()),
            space: space.describe(),
            dist: manifest.dist.clone(),
            images: manifest.images,
            new_objects,
            stored_bytes,
            raw_bytes,
        })
    }

    /// Stores a decoded bundle (digests already verified) and, with `name`, refs it.
    pub fn push_bundle(
        &self,
        bundle: &Bundle,
        name: Option<&RefName>,
        mut annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        // Validate each layer's archive and shape before anything is written.
        let mut raw_bytes = 0;
        for (i, (_, enc)) in bundle.objects.iter().skip(2).enumerate() {
            let raw = decode_object(enc, "bundle entry")?;
            raw_bytes += raw.len() as u64;
            let buf = decode_layer(raw)?;
            check_layer(&bundle.space, i, &buf.view())?;
        }
        for (k, v) in &bundle.annotations {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.commit_encoded(
            &bundle.manifest,
            bundle.manifest_digest,
            &bundle.space,
            &bundle.objects,
            raw_bytes,
            name,
            annotations,
        )
    }

    /// Stores one encoded object received from elsewhere after checking it: the header
    /// and checksums decode, and the SHA-256 of the canonical bytes is `digest`. Returns
    /// whether it was new. Nothing is written when a check fails.
    pub fn put_verified_object(&self, digest: &Digest, encoded: &[u8]) -> Result<bool, Error> {
        let raw = decode_object(encoded, "uploaded object")?;
        let got = Digest::of(&raw);
        if got != *digest {
            return Err(Error::Invalid(format!(
                "object {digest}: its content hashes to {got} (corrupted in transit? send it again)"
            )));
        }
        self.objects.put(digest, encoded)
    }

    /// Gathers a stored DNA's objects (manifest, space, layers, each verified) as a bundle.
    pub fn bundle_from_store(&self, manifest: &Digest) -> Result<Bundle, Error> {
        let get = |d: &Digest, what: &str| -> Result<(Vec<u8>, AlignedVec<16>), Error> {
            if !self.objects.contains(d)? {
                return Err(Error::NotFound(format!(
                    "{what} {d} is not stored (upload it first)"
                )));
            }
            let enc = self.objects.get_encoded(d)?;
            let raw = decode_object(&enc, "stored object")?;
            if Digest::of(&raw) != *d {
                return Err(Error::Invalid(format!(
                    "{what} {d}: content does not match its digest (run vdna-db verify)"
                )));
            }
            Ok((enc, raw))
        };
        let (menc, mraw) = get(manifest, "manifest")?;
        let m = Manifest::from_bytes(&mraw)?;
        let (senc, sraw) = get(&m.space, "space config")?;
        let space = SpaceConfig::from_bytes(&sraw)?;
        m.check_against(&space)?;
        let mut objects = vec![(*manifest, menc), (m.space, senc)];
        for l in &m.layers {
            let (enc, _) = get(&l.digest, &format!("layer {}", l.name))?;
            objects.push((l.digest, enc));
        }
        Ok(Bundle {
            manifest: m,
            manifest_digest: *manifest,
            space,
            objects,
            annotations: BTreeMap::new(),
        })
    }

    /// Commits a DNA whose objects are all in the store (uploaded one by one) and, with
    /// `name`, refs it: every object is re-verified and every layer validated first.
    pub fn commit_stored(
        &self,
        manifest: &Digest,
        name: Option<&RefName>,
        annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        let bundle = self.bundle_from_store(manifest)?;
        self.push_bundle(&bundle, name, annotations)
    }

    /// Resolves `name[:tag]`, a full digest or a unique digest prefix (`sha256:3fa9c1…`,
    /// at least 8 hex digits) to a stored DNA.
    pub fn resolve(&self, spec: &str) -> Result<(Digest, Option<RefName>), Error> {
        if let Some(hex) = spec.strip_prefix("sha256:") {
            if let Ok(d) = spec.parse::<Digest>() {
                if self.catalogue.dna(&d)?.is_some() {
                    return Ok((d, None));
                }
                return Err(Error::NotFound(format!(
                    "no stored DNA {d} (list them with vdna-db ls)"
                )));
            }
            if hex.len() >= 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let hits: Vec<Digest> = self
                    .catalogue
                    .dnas()?
                    .into_iter()
                    .map(|(d, _)| d)
                    .filter(|d| d.hex().starts_with(&hex.to_ascii_lowercase()))
                    .collect();
                return match hits.len() {
                    1 => Ok((hits[0], None)),
                    0 => Err(Error::NotFound(format!(
                        "no stored DNA has a digest starting {spec} (list them with vdna-db ls)"
                    ))),
                    n => Err(Error::Invalid(format!(
                        "{spec} matches {n} stored DNAs; give more digits"
                    ))),
                };
            }
            return Err(Error::Invalid(format!(
                "{spec:?} is neither a digest nor a digest prefix of 8+ hex digits"
            )));
        }
        let name = RefName::parse(spec)?;
        match self.catalogue.get_ref(&name)? {
            Some(r) => Ok((r.digest, Some(name))),
            None => Err(Error::NotFound(format!(
                "no DNA named {name} (list them with vdna-db ls)"
            ))),
        }
    }

    /// Opens a stored DNA by digest: reads and checks its manifest and space.
    pub fn open_dna(&self, digest: &Digest) -> Result<StoredDna, Error> {
        StoredDna::open(&self.objects, digest)
    }

    /// Reads a space config object.
    pub fn space_config(&self, d: &Digest) -> Result<SpaceConfig, Error> {
        crate::stored::space_config(&self.objects, d)
    }

    /// The annotations of a ref (empty for a bare digest).
    pub fn annotations(&self, name: Option<&RefName>) -> Result<BTreeMap<String, String>, Error> {
        Ok(match name {
            Some(n) => self
                .catalogue
                .get_ref(n)?
                .map(|r| r.annotations)
                .unwrap_or_default(),
            None => BTreeMap::new(),
        })
    }

    /// Writes a stored DNA as a `.vdna` bundle.
    pub fn export_bundle(
        &self,
        digest: &Digest,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, Error> {
        let m = Manifest::from_bytes(&self.objects.get_raw(digest)?)?;
        let mut ids = vec![*digest, m.space];
        ids.extend(m.layers.iter().map(|l| l.digest));
        let encoded = ids
            .par_iter()
            .map(|d| self.objects.get_encoded(d).map(|b| (*d, b)))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<(Digest, &[u8])> = encoded.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        Ok(encode_bundle(&refs, annotations))
    }

    /// Resolves a mask spec against a space, looking up named masks in the catalogue.
    pub fn mask(&self, spec: &str, space: &SpaceConfig) -> Result<Mask, Error> {
        self.catalogue.resolve_mask(spec, space)
    }

    /// Compares two DNAs under a mask spec.
    pub fn compare(
        &self,
        a: &AnyDna,
        b: &AnyDna,
        mask_spec: &str,
        metric: Option<Metric>,
        top_n: usize,
    ) -> Result<Comparison, Error> {
        compare_dnas(a, b, &self.mask(mask_spec, a.space())?, metric, top_n)
    }

    /// Every ref with its DNA record, sorted by name.
    pub fn list(&self) -> Result<Vec<Listing>, Error> {
        let spaces: BTreeMap<Digest, SpaceRecord> = self.catalogue.spaces()?.into_iter().collect();
        let mut cards: BTreeMap<RefName, crate::card::CardBrief> = self
            .catalogue
            .cards()?
            .into_iter()
            .filter_map(|(n, c)| crate::card::parse(&c.markdown).ok().map(|c| (n, c.brief())))
            .collect();
        let mut out = Vec::new();
        for (name, r) in self.catalogue.refs()? {
            let Some(rec) = self.catalogue.dna(&r.digest)? else {
                continue;
            };
            let extractor = spaces
                .get(&rec.space)
                .and_then(|s| s.config.pointer("/extractor/name"))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string();
            out.push(Listing {
                reference: name.to_string(),
                name: name.name.clone(),
                tag: name.tag.clone(),
                digest: r.digest,
                space: rec.space,
                extractor,
                dist: rec.dist,
                images: rec.images,
                stored_bytes: rec.stored_bytes,
                created: r.created,
                annotations: r.annotations,
                card: cards.remove(&name),
            });
        }
        Ok(out)
    }

    /// Points `new` at what `src` resolves to, keeping the source ref's annotations.
    pub fn tag(&self, src: &str, new: &str) -> Result<(Digest, RefName), Error> {
        let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
        self.sync()?;
        let (digest, from) = self.resolve(src)?;
        let name = RefName::parse(new)?;
        let annotations = self.annotations(from.as_ref())?;
        let record = RefRecord {
            digest,
            created: now_secs(),
            annotations,
        };
        let mut changes = vec![Change::SetRef {
            name: name.clone(),
            record: record.clone(),
            prev: self.catalogue.get_ref(&name)?.map(|r| r.digest),
        }];
        // The card goes with the annotations; a target that had a card of its own and a
        // source without one keeps nothing stale.
        match from
            .as_ref()
            .map(|f| self.catalogue.card(f))
            .transpose()?
            .flatten()
        {
            Some(record) => changes.push(Change::PutCard {
                name: name.clone(),
                record,
            }),
            None => changes.push(Change::RemoveCard { name: name.clone() }),
        }
        self.commit(&changes)?;
        Ok((digest, name))
    }

    /// Sets the dataset card of a ref (a `name:tag`, not a digest).
    pub fn set_card(&self, spec: &str, markdown: &str) -> Result<RefName, Error> {
        let name = RefName::parse(spec)?;
        crate::card::validate(&name.to_string(), markdown)?;
        self.commit(&[Change::PutCard {
            name: name.clone(),
            record: crate::card::CardRecord {
                markdown: markdown.to_string(),
                updated: now_secs(),
            },
        }])?;
        Ok(name)
    }

    /// The dataset card of a ref, if it has one.
    pub fn card(&self, name: &RefName) -> Result<Option<crate::card::CardRecord>, Error> {
        self.catalogue.card(name)
    }

    /// Removes the card of a ref; true when it had one.
    pub fn remove_card(&self, spec: &str) -> Result<bool, Error> {
        let name = RefName::parse(spec)?;
        self.sync()?;
        if self.catalogue.card(&name)?.is_none() {
            return Ok(false);
        }
        self.commit(&[Change::RemoveCard { name }]).map(|_| true)
    }

    /// Removes a ref. Objects stay until `gc`.
    pub fn remove(&self, spec: &str) -> Result<(RefName, Digest), Error> {
        let name = RefName::parse(spec)?;
        self.sync()?;
        let Some(r) = self.catalogue.get_ref(&name)? else {
            return Err(Error::NotFound(format!(
                "no DNA named {name} (list them with vdna-db ls)"
            )));
        };
        self.commit(&[Change::RemoveRef {
            name: name.clone(),
            prev: r.digest,
        }])?;
        Ok((name, r.digest))
    }

    /// Re-hashes every object and checks every ref's objects are present and valid.
    pub fn verify(&self) -> Result<VerifyReport, Error> {
        self.verify_with(&|_, _, _| {})
    }

    /// [`Db::verify`], calling `progress` as objects, then names, are checked.
    pub fn verify_with(&self, progress: crate::WorkProgress<'_>) -> Result<VerifyReport, Error> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let mut report = VerifyReport::default();
        let all = self.objects.list()?;
        let refs = self.catalogue.refs()?;
        let total = (all.len() + refs.len()) as u64;
        let done = AtomicU64::new(0);
        let tick = |stage: &str| {
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if d.is_multiple_of(64) || d == total {
                progress(stage, d, total);
            }
        };
        progress("objects", 0, total);
        report.objects_checked = all.len();
        let bad: Vec<VerifyProblem> = all
            .par_iter()
            .filter_map(|d| {
                let r = self.objects.verify(d).err().map(|e| VerifyProblem {
                    object: d.to_string(),
                    problem: e.to_string(),
                });
                tick("objects");
                r
            })
            .collect();
        report.problems.extend(bad);
        for (name, r) in refs {
            tick("names");
            report.refs_checked += 1;
            let check = || -> Result<(), Error> {
                let dna = self.open_dna(&r.digest)?;
                for l in &dna.manifest.layers {
                    if !self.objects.contains(&l.digest)? {
                        return Err(crate::store::StoreError::Missing(l.digest).into());
                    }
                }
                if self.catalogue.dna(&r.digest)?.is_none() {
                    return Err(Error::NotFound("no catalogue record for its DNA".into()));
                }
                Ok(())
            };
            if let Err(e) = check() {
                report.problems.push(VerifyProblem {
                    object: name.to_string(),
                    problem: e.to_string(),
                });
            }
        }
        Ok(report)
    }

    /// Removes every object and DNA record that no ref reaches, and stale temporary files,
    /// sparing objects younger than [`DEFAULT_GC_GRACE`].
    pub fn gc(&self) -> Result<GcReport, Error> {
        self.gc_with_grace(DEFAULT_GC_GRACE)
    }

    /// [`Db::gc`] with an explicit grace period: unreachable objects modified less than
    /// `grace` ago are kept (an upload that sends objects before its manifest is not yet
    /// reachable). Commits in this process wait while it runs.
    pub fn gc_with_grace(&self, grace: std::time::Duration) -> Result<GcReport, Error> {
        let _gate = self.commit_gate.write().unwrap_or_else(|p| p.into_inner());
        // On a bucket, other replicas commit meanwhile: the view is caught up first, a
        // record is forgotten only if no ref reaches it when its commit lands, and an
        // object only once it is older than the grace period (a push on another replica
        // writes its objects before it commits).
        self.sync()?;
        let mut report = GcReport::default();
        let mut live_dnas = BTreeSet::new();
        let mut live = BTreeSet::new();
        for (_, r) in self.catalogue.refs()? {
            live_dnas.insert(r.digest);
        }
        for d in &live_dnas {
            live.insert(*d);
            // A ref whose manifest cannot be read keeps what it can; verify reports it.
            if let Ok(raw) = self.objects.get_raw(d) {
                if let Ok(m) = Manifest::from_bytes(&raw) {
                    live.insert(m.space);
                    live.extend(m.layers.iter().map(|l| l.digest));
                }
            }
        }
        let dead: Vec<Digest> = self
            .catalogue
            .dnas()?
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| !live_dnas.contains(d))
            .collect();
        let changes: Vec<Change> = dead
            .iter()
            .map(|d| Change::RemoveDna { digest: *d })
            .collect();
        if !changes.is_empty() {
            self.commit(&changes)?;
        }
        // What a concurrent commit made reachable again stays.
        for d in &dead {
            if self.catalogue.dna(d)?.is_none() {
                report.records_removed += 1;
            } else {
                live_dnas.insert(*d);
                if let Ok(raw) = self.objects.get_raw(d) {
                    if let Ok(m) = Manifest::from_bytes(&raw) {
                        live.insert(*d);
                        live.insert(m.space);
                        live.extend(m.layers.iter().map(|l| l.digest));
                    }
                }
            }
        }
        let now = std::time::SystemTime::now();
        for d in self.objects.list()? {
            if live.contains(&d) {
                report.objects_kept += 1;
                continue;
            }
            let recent = match self.objects.modified(&d)? {
                Some(t) => now.duration_since(t).map_or(true, |age| age < grace),
                None => continue,
            };
            if recent {
                report.objects_recent += 1;
                continue;
            }
            report.bytes_freed += self.objects.stored_size(&d)?.unwrap_or(0);
            self.objects.delete(&d)?;
            report.objects_removed += 1;
        }
        if let Some(fs) = &self.fs {
            report.tmp_files_removed = fs
                .clean_tmp(grace)
                .map_err(|e| Error::io(self.home.join("tmp"), e))?;
        }
        Ok(report)
    }
}

/// Stores a DNA's encoded objects (manifest first in `objects`, as [`Dna::encode`] and
/// bundles list them) in durability order: every layer and the space first, the manifest
/// last, so a durable manifest always names durable blobs. Returns how many were new.
pub fn store_objects(store: &ObjectStore, objects: &[(Digest, Vec<u8>)]) -> Result<usize, Error> {
    let Some((manifest, rest)) = objects.split_first() else {
        return Ok(0);
    };
    let mut new_objects = store.put_many(rest)?;
    new_objects += store.put(&manifest.0, &manifest.1)? as usize;
    Ok(new_objects)
}

/// Reads a DNA from a file: a `.vdna` bundle or a reference `.json`/`.npz` pair.
pub fn read_dna_file(path: &Path) -> Result<(Dna, BTreeMap<String, String>), Error> {
    if is_bundle(path) {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        return dna_of_bundle_bytes(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())));
    }
    let imported = crate::reference::import_pair(path)?;
    Ok((imported.dna, imported.annotations))
}

/// True when the file opens with the bundle magic.
pub fn is_bundle(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == crate::format::BUNDLE_MAGIC)
        .unwrap_or(false)
}

/// Encodes a DNA as a bundle without a store.
pub fn bundle_of(dna: &Dna, annotations: &BTreeMap<String, String>, level: i32) -> Vec<u8> {
    let enc: EncodedDna = dna.encode(level);
    let refs: Vec<(Digest, &[u8])> = enc
        .objects
        .iter()
        .map(|(d, b)| (*d, b.as_slice()))
        .collect();
    encode_bundle(&refs, annotations)
}

/// The index reads the store and catalogue through this view and keeps its files under
/// `<home>/index`; it never sees `Db` itself (docs/ARCHITECTURE.md).
impl crate::query::Source for Db {
    fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    fn index_root(&self) -> PathBuf {
        self.home.join("index")
    }

    fn index_gate(&self) -> std::sync::MutexGuard<'_, ()> {
        self.index_gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(feature = "object-store")]
    fn shares_summaries(&self) -> bool {
        self.remote.is_some() && self.shared_summaries
    }

    #[cfg(feature = "object-store")]
    fn shared_summaries(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        match self.remote.as_ref().filter(|_| self.shared_summaries) {
            // A failed read costs only time: the rows are computed from the DNAs.
            Some(r) => r
                .get_many(keys)
                .map(|v| v.into_iter().map(|g| g.map(|(b, _)| b)).collect())
                .unwrap_or_else(|_| vec![None; keys.len()]),
            None => vec![None; keys.len()],
        }
    }

    #[cfg(feature = "object-store")]
    fn put_shared_summary(&self, key: &str, bytes: &[u8]) {
        // A row is a function of its immutable DNA: replacing one (a damaged row, or
        // another replica's identical one) is safe.
        if let Some(r) = self.remote.as_ref().filter(|_| self.shared_summaries) {
            let _ = r.put(key, bytes);
        }
    }
}
