//! The engine: the one application layer that the CLI, the HTTP API, the web pages, the
//! remote client and `pull` call. It owns the store and catalogue ([`Db`]) and the derived
//! query index ([`crate::query`]), and every operation that changes or checks both is one
//! method here, so the front ends cannot disagree about what a push or a verify means:
//! a push returns only when the DNA is committed and indexed; `verify` checks objects,
//! names and the index together; mask specs are checked here, not in a front end.
//!
//! It must not know HTTP, terminals or argument syntax: front ends translate their input
//! into these calls and the results into their output.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::db::Db;
pub use crate::distance::{Comparison, LayerDistance, Metric, NeuronDistance};
use crate::dna::Dna;
use crate::format::{Bundle, Digest, ObjectHeader, SpaceConfig};
use crate::mask::Mask;
use crate::query;
use crate::refname::RefName;
use crate::Error;

mod browse;
pub use browse::{Browse, Page, SortKey};
mod shards;
pub use shards::{shard_annotations, shard_name, ShardSet, SHARD, SHARD_OF, SHARD_SELECTION};
#[cfg(feature = "extract")]
mod input;
#[cfg(feature = "extract")]
pub use crate::extract::{ExtractSettings, Report as ExtractReport};
#[cfg(feature = "extract")]
pub use input::{default_name, path_kind, resolve_path, Input, PathKind, Resolved};

// The types of the engine's requests and answers, for front ends: they import these from
// here, never from the layers underneath (tests/it/layers.rs holds them to that).
pub use crate::catalogue::{DnaRecord, RefRecord, SpaceRecord, TokenRecord};
pub use crate::db::{
    bundle_of, default_home, dna_of_bundle_bytes, is_bundle, read_dna_file, AnyDna, GcReport,
    Listing, OpenOptions, PushReport, StoredDna, VerifyProblem,
};
pub use crate::objstore::Location;
pub use crate::query::{Hit, Mode, Plan, QueryRequest, QueryResult, ReindexReport, Stage};

/// The application layer over one store.
pub struct Engine {
    db: Db,
    listing: browse::ListingCache,
    /// Spaces images can (or cannot, and why) be extracted into here.
    #[cfg(feature = "extract")]
    extractable: std::sync::Mutex<std::collections::HashMap<Digest, Result<(), String>>>,
}

/// What `verify` found in objects, names and the derived index, and what `--repair` did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyOutcome {
    pub objects_checked: usize,
    pub refs_checked: usize,
    /// Damaged or missing objects and names: not rebuildable from the rest.
    pub problems: Vec<VerifyProblem>,
    /// Damage in derived state (summary segments, graphs): `repair` rebuilds it.
    pub index_problems: Vec<VerifyProblem>,
    /// The rebuild, when `repair` was asked.
    pub reindexed: Option<ReindexReport>,
}

impl VerifyOutcome {
    /// True when nothing is wrong, or only derived state was wrong and it was rebuilt.
    pub fn clean(&self) -> bool {
        self.problems.is_empty() && (self.index_problems.is_empty() || self.reindexed.is_some())
    }
}

/// A named mask and the number of stored spaces it applies to.
#[derive(Clone, Debug, Serialize)]
pub struct MaskAdded {
    pub name: String,
    pub spec: String,
    pub spaces: usize,
}

impl Engine {
    /// Opens the store at `home` (created when missing) with default options.
    pub fn open(home: &Path) -> Result<Engine, Error> {
        Ok(Engine::from_db(Db::open(home)?))
    }

    /// Opens the store with explicit options (compression level, lock wait).
    pub fn open_with(home: &Path, opts: &OpenOptions) -> Result<Engine, Error> {
        Ok(Engine::from_db(Db::open_with(home, opts)?))
    }

    /// An engine over an already open store.
    pub fn from_db(db: Db) -> Engine {
        Engine {
            db,
            listing: Default::default(),
            #[cfg(feature = "extract")]
            extractable: Default::default(),
        }
    }

    /// The store and catalogue underneath, for reads (listing, resolving, loading DNAs).
    /// Writes go through the engine's methods so the index follows them.
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn home(&self) -> &Path {
        self.db.home()
    }

    /// Where the store's truth lives (the embedded directory, or a bucket).
    pub fn location(&self) -> &crate::objstore::Location {
        self.db.location()
    }

    /// Bytes fetched from the bucket since the store was opened (`None`: embedded store).
    pub fn bytes_fetched(&self) -> Option<u64> {
        self.db.bytes_fetched()
    }

    /// On a store in a bucket: catches up with other processes' commits now (reads do
    /// it themselves once their view is older than the refresh interval). Returns how
    /// many commits were applied; 0 on the embedded store.
    pub fn sync(&self) -> Result<usize, Error> {
        self.db.sync()
    }

    /// Every name with its DNA record, sorted by name.
    pub fn list(&self) -> Result<Vec<Listing>, Error> {
        Ok(self.listing()?.as_ref().clone())
    }

    /// A name, digest or unique digest prefix to the manifest digest (and the name).
    pub fn resolve(&self, spec: &str) -> Result<(Digest, Option<RefName>), Error> {
        self.db.sync_if_stale()?;
        self.db.resolve(spec)
    }

    /// A stored DNA, read lazily (layers load when asked).
    pub fn open_dna(&self, digest: &Digest) -> Result<StoredDna, Error> {
        self.db.open_dna(digest)
    }

    /// A stored space config.
    pub fn space_config(&self, digest: &Digest) -> Result<SpaceConfig, Error> {
        self.db.space_config(digest)
    }

    /// A mask spec resolved against a space, named masks included.
    pub fn mask(&self, spec: &str, space: &SpaceConfig) -> Result<Mask, Error> {
        self.db.mask(spec, space)
    }

    /// The annotations of a name (empty for a bare digest).
    pub fn annotations(&self, name: Option<&RefName>) -> Result<BTreeMap<String, String>, Error> {
        self.db.annotations(name)
    }

    /// A stored DNA as a single-file bundle.
    pub fn export_bundle(
        &self,
        digest: &Digest,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, Error> {
        self.db.export_bundle(digest, annotations)
    }

    /// Every name with its record, sorted by name.
    pub fn refs(&self) -> Result<Vec<(RefName, RefRecord)>, Error> {
        self.db.sync_if_stale()?;
        self.db.catalogue().refs()
    }

    /// One name's record.
    pub fn get_ref(&self, name: &RefName) -> Result<Option<RefRecord>, Error> {
        self.db.sync_if_stale()?;
        self.db.catalogue().get_ref(name)
    }

    /// A stored DNA's catalogue record (space, images, size at rest).
    pub fn dna_record(&self, digest: &Digest) -> Result<Option<DnaRecord>, Error> {
        self.db.sync_if_stale()?;
        self.db.catalogue().dna(digest)
    }

    /// A stored object's header (codec, sizes), read without decoding the payload.
    pub fn object_header(&self, digest: &Digest) -> Result<ObjectHeader, Error> {
        self.db.objects().header(digest)
    }

    /// Every stored space, by digest.
    pub fn spaces(&self) -> Result<Vec<(Digest, SpaceRecord)>, Error> {
        self.db.sync_if_stale()?;
        self.db.catalogue().spaces()
    }

    /// The size at rest of a stored object, `None` when absent.
    pub fn object_size(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        self.db.objects().stored_size(digest)
    }

    /// A stored object's bytes as stored (compressed), `None` when absent.
    pub fn object_encoded(&self, digest: &Digest) -> Result<Option<Vec<u8>>, Error> {
        if !self.db.objects().contains(digest)? {
            return Ok(None);
        }
        self.db.objects().get_encoded(digest).map(Some)
    }

    /// Stored API tokens (hashes only).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, Error> {
        self.db.sync_if_stale()?;
        self.db.catalogue().tokens()
    }

    /// Stores a token record (its secret is never stored, only its hash).
    pub fn put_token(&self, rec: &TokenRecord) -> Result<(), Error> {
        self.db.put_token(rec)
    }

    /// Creates and stores a token of `scope` (`push` or `admin`); returns the secret,
    /// which is not stored and cannot be shown again, and the stored record.
    #[cfg(feature = "server")]
    pub fn create_token(&self, scope: &str, label: &str) -> Result<(String, TokenRecord), Error> {
        let (secret, rec) = crate::token::new_token(scope, label)?;
        self.db.put_token(&rec)?;
        Ok((secret, rec))
    }

    /// Revokes a token by id.
    pub fn revoke_token(&self, id: &str) -> Result<(), Error> {
        if !self.db.remove_token(id)? {
            return Err(Error::NotFound(format!(
                "no token {id} (list them with vdna-db token ls)"
            )));
        }
        Ok(())
    }

    /// A stored DNA's manifest, space and layer objects, as stored (for pull).
    pub fn bundle_from_store(&self, manifest: &Digest) -> Result<Bundle, Error> {
        self.db.bundle_from_store(manifest)
    }

    /// Stores a DNA and names it; returns once it is committed and indexed.
    pub fn push(
        &self,
        dna: &Dna,
        name: Option<&RefName>,
        annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        let r = self.db.push(dna, name, annotations)?;
        query::index_pushed_dna(&self.db, &r.digest, dna)?;
        Ok(r)
    }

    /// Stores a bundle's objects (each verified) and names its DNA; committed and indexed.
    pub fn push_bundle(
        &self,
        bundle: &Bundle,
        name: Option<&RefName>,
        annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        let r = self.db.push_bundle(bundle, name, annotations)?;
        query::index_pushed(&self.db, &r.digest)?;
        Ok(r)
    }

    /// Names a DNA whose objects were uploaded one by one (remote push): checks that every
    /// object is present and valid, commits, and indexes.
    pub fn commit_uploaded(
        &self,
        manifest: &Digest,
        name: Option<&RefName>,
        annotations: BTreeMap<String, String>,
    ) -> Result<PushReport, Error> {
        let r = self.db.commit_stored(manifest, name, annotations)?;
        query::index_pushed(&self.db, &r.digest)?;
        Ok(r)
    }

    /// Stores one verified object of an upload (its manifest comes last).
    pub fn put_uploaded_object(&self, digest: &Digest, encoded: &[u8]) -> Result<bool, Error> {
        self.db.put_verified_object(digest, encoded)
    }

    /// Points `new` at what `src` resolves to.
    pub fn tag(&self, src: &str, new: &str) -> Result<(Digest, RefName), Error> {
        self.db.tag(src, new)
    }

    /// Removes a name (and its card); its objects stay until `gc`.
    pub fn remove(&self, spec: &str) -> Result<(RefName, Digest), Error> {
        self.db.remove(spec)
    }

    /// Sets the dataset card (markdown, see [`crate::card`]) of a `name:tag`.
    pub fn set_card(&self, spec: &str, markdown: &str) -> Result<RefName, Error> {
        self.db.set_card(spec, markdown)
    }

    /// The dataset card of a ref (the view caught up first when it is stale).
    pub fn card(&self, name: &RefName) -> Result<Option<crate::card::CardRecord>, Error> {
        self.db.sync_if_stale()?;
        self.db.card(name)
    }

    /// Removes the dataset card of a ref; true when it had one.
    pub fn remove_card(&self, spec: &str) -> Result<bool, Error> {
        self.db.remove_card(spec)
    }

    /// The distance between two DNAs under a mask spec (named masks resolved).
    pub fn compare(
        &self,
        a: &AnyDna,
        b: &AnyDna,
        mask_spec: &str,
        metric: Option<Metric>,
        top_neurons: usize,
    ) -> Result<Comparison, Error> {
        self.db.compare(a, b, mask_spec, metric, top_neurons)
    }

    /// The k stored DNAs closest to `q`, planned as `req.mode` asks (see docs/QUERY.md).
    pub fn query(&self, q: &AnyDna, req: &QueryRequest) -> Result<QueryResult, Error> {
        self.db.sync_if_stale()?;
        query::query(&self.db, q, req)
    }

    /// Checks every object, every name and the derived index; with `repair`, rebuilds
    /// the index (objects cannot be rebuilt from the rest: the outcome names them).
    pub fn verify(&self, repair: bool) -> Result<VerifyOutcome, Error> {
        self.verify_with(repair, &|_, _, _| {})
    }

    /// [`Engine::verify`] with progress: objects and names, then (with `repair`) the
    /// rebuild's summaries.
    pub fn verify_with(
        &self,
        repair: bool,
        progress: crate::WorkProgress<'_>,
    ) -> Result<VerifyOutcome, Error> {
        self.db.sync()?;
        let r = self.db.verify_with(progress)?;
        let index_problems = query::verify_index(&self.db)?
            .into_iter()
            .map(|(object, problem)| VerifyProblem { object, problem })
            .collect();
        let reindexed = if repair {
            Some(query::reindex_progress(
                &self.db,
                crate::query::hnsw::min_rows(),
                progress,
            )?)
        } else {
            None
        };
        Ok(VerifyOutcome {
            objects_checked: r.objects_checked,
            refs_checked: r.refs_checked,
            problems: r.problems,
            index_problems,
            reindexed,
        })
    }

    /// Removes what no name reaches, sparing objects younger than `grace` (uploads send
    /// objects before their manifest); `None` takes the default grace period.
    pub fn gc(&self, grace: Option<Duration>) -> Result<GcReport, Error> {
        self.db
            .gc_with_grace(grace.unwrap_or(crate::db::DEFAULT_GC_GRACE))
    }

    /// Rebuilds the derived index from the catalogue and the objects, with HNSW graphs for
    /// spaces of at least `graphs_min` DNAs (default: `VDNA_DB_HNSW_MIN_ROWS`, else 2,000).
    pub fn reindex(&self, graphs_min: Option<usize>) -> Result<ReindexReport, Error> {
        self.reindex_with(graphs_min, &|_, _, _| {})
    }

    /// [`Engine::reindex`] with progress: summary rows computed, then graphs.
    pub fn reindex_with(
        &self,
        graphs_min: Option<usize>,
        progress: crate::WorkProgress<'_>,
    ) -> Result<ReindexReport, Error> {
        self.db.sync()?;
        let n = graphs_min.unwrap_or_else(crate::query::hnsw::min_rows);
        query::reindex_progress(&self.db, n, progress)
    }

    /// Stores a named mask after checking its name and that its spec applies to at least
    /// one stored space (any space when none is stored yet).
    pub fn add_mask(&self, name: &str, spec: &str) -> Result<MaskAdded, Error> {
        let name = name.trim_start_matches('@');
        if !crate::format::valid_layer_name(name) {
            return Err(Error::Invalid(format!(
                "mask name {name:?}: use letters, digits, _ . - only"
            )));
        }
        self.db.sync_if_stale()?;
        let spaces = self.db.catalogue().spaces()?;
        let mut ok_in = 0;
        let mut first_err = None;
        for (d, _) in &spaces {
            match self.db.space_config(d).and_then(|s| self.db.mask(spec, &s)) {
                Ok(_) => ok_in += 1,
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let (0, Some(e)) = (ok_in, first_err) {
            return Err(Error::Invalid(format!(
                "mask {name:?} applies to no stored space: {e}"
            )));
        }
        self.db.put_mask(name, spec)?;
        Ok(MaskAdded {
            name: name.to_string(),
            spec: spec.to_string(),
            spaces: ok_in,
        })
    }

    /// Named masks, by name.
    pub fn masks(&self) -> Result<Vec<(String, String)>, Error> {
        self.db.sync_if_stale()?;
        self.db.catalogue().masks()
    }

    /// Removes a named mask.
    pub fn remove_mask(&self, name: &str) -> Result<(), Error> {
        let name = name.trim_start_matches('@');
        if !self.db.remove_mask(name)? {
            return Err(Error::NotFound(format!(
                "no mask named @{name} (list them with vdna-db mask ls)"
            )));
        }
        Ok(())
    }
}

impl From<Db> for Engine {
    fn from(db: Db) -> Engine {
        Engine::from_db(db)
    }
}

/// Writes `dna` as a reference `.json` + `.npz` pair at `path` (extension optional), each
/// file written atomically, the `.npz` first so a `.json` never names a missing array
/// file; returns the two paths. The encoding is `reference::encode_pair`.
pub fn export_reference(
    dna: &Dna,
    annotations: &BTreeMap<String, String>,
    path: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), Error> {
    let (json_path, npz_path) = crate::reference::pair_paths(path);
    let pair = crate::reference::encode_pair(dna, annotations, path)?;
    crate::fsio::write_file_atomic(&npz_path, &pair.npz).map_err(|e| Error::io(&npz_path, e))?;
    crate::fsio::write_file_atomic(&json_path, &pair.json).map_err(|e| Error::io(&json_path, e))?;
    Ok((json_path, npz_path))
}
