//! vdna-db: a registry and database engine for Visual DNAs.
//!
//! A Visual DNA summarises an image dataset as one distribution of activations per neuron
//! of a frozen network. This crate stores DNAs content-addressed and compressed
//! ([`store`], [`format`]), names them in a catalogue ([`catalogue`]), compares them under
//! neuron masks with the reference library's distances ([`mask`], [`distance`]) and reads
//! and writes the reference library's files ([`reference`]). [`db::Db`] ties these together
//! and is what the CLI drives. See docs/ARCHITECTURE.md for the map and the invariants.

/// A fail point (feature `failpoints`): when the `FAILPOINTS` configuration makes site
/// `$name` return, the enclosing function returns `Err($map(io error))` with EIO, or
/// ENOSPC when the configured argument is `ENOSPC`. Compiles to nothing otherwise.
macro_rules! failpoint {
    ($name:literal) => {
        failpoint!($name, |e: std::io::Error| e)
    };
    ($name:literal, $map:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |arg: Option<String>| Err(($map)(
            $crate::failpoint_error(arg)
        )));
    };
}

/// The error a fail point injects.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn failpoint_error(arg: Option<String>) -> std::io::Error {
    // Linux errno values.
    match arg.as_deref() {
        Some("ENOSPC") => std::io::Error::from_raw_os_error(28),
        _ => std::io::Error::from_raw_os_error(5),
    }
}

pub mod card;
pub mod catalogue;
#[cfg(feature = "cli")]
pub mod cli;
pub mod db;
pub mod distance;
pub mod dna;
pub mod engine;
#[cfg(feature = "extract")]
pub mod extract;
pub mod format;
pub mod fsio;
#[cfg(feature = "testing")]
pub mod fuzz;
pub mod ledger;
pub mod mask;
pub mod objstore;
pub mod protocol;
pub mod query;
pub mod reference;
pub mod refname;
pub mod rng;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "testing")]
pub mod simfs;
pub mod store;
pub mod stored;
pub mod synth;
#[cfg(feature = "server")]
pub mod token;

/// Progress of long store-wide work (verify, reindex): `(stage, done, total)`.
pub type WorkProgress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

pub use db::Db;
pub use engine::Engine;

/// Every error the library returns; each message names its object and the next step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Catalogue(#[from] catalogue::CatalogueError),
    #[error(transparent)]
    Mask(#[from] mask::MaskError),
    #[error(transparent)]
    Reference(#[from] reference::ReferenceError),
    #[error(transparent)]
    RefName(#[from] refname::RefNameError),
    #[cfg(feature = "extract")]
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    SpaceMismatch(String),
    /// Another writer changed what this one read (a ref set through another replica at
    /// the same time): nothing was written; read again and retry.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the error is about the user's input or situation (exit code 1), false
    /// when something inside vdna-db or the machine failed (exit code 2).
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            Error::Store(store::StoreError::Io { .. })
                | Error::Catalogue(catalogue::CatalogueError::Db(_))
                | Error::Catalogue(catalogue::CatalogueError::Corrupt { .. })
        )
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

// The pure layers' errors keep their meaning (bad input, or spaces that differ) when they
// fold into the crate's error, so callers and the HTTP status mapping see one vocabulary.
impl From<dna::DnaError> for Error {
    fn from(e: dna::DnaError) -> Error {
        match e {
            dna::DnaError::Invalid(m) => Error::Invalid(m),
            dna::DnaError::SpaceMismatch(m) => Error::SpaceMismatch(m),
            dna::DnaError::Format(e) => Error::Format(e),
        }
    }
}

impl From<distance::DistanceError> for Error {
    fn from(e: distance::DistanceError) -> Error {
        match e {
            distance::DistanceError::Invalid(m) => Error::Invalid(m),
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
