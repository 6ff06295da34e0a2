//! Checkpoints of long extractions: the partial DNA of the segments done (a `.vdna`
//! bundle, written atomically after each segment) with what is needed to go on: the job
//! it belongs to, how many segments are done, how many streamed samples were met, and the
//! report so far. A run of the same job resumes after the last segment written; a
//! checkpoint of another job (other images, settings or network) is set aside with a note
//! and overwritten.
//!
//! Owns: the checkpoint file. Must not: extract.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ExtractError, Report};
use crate::dna::Dna;
use crate::format::{encode_bundle, Digest, SpaceConfig};

/// Annotation keys of a checkpoint bundle.
const JOB: &str = "checkpoint.job";
const SEGMENTS: &str = "checkpoint.segments";
const SEEN: &str = "checkpoint.seen";
const SKIPPED: &str = "checkpoint.skipped";
const NONFINITE: &str = "checkpoint.nonfinite";

/// Where a job's checkpoint lives, and the job's identity.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub path: PathBuf,
    /// Digest of everything that decides the result: the images, the selection, the
    /// network and its weights, the ranges, the distribution and the segment size.
    pub job: String,
}

/// What a checkpoint restores.
pub struct Resume {
    pub dna: Dna,
    pub images: u64,
    pub segments: usize,
    pub seen: u64,
    pub skipped: Vec<(String, String)>,
    pub nonfinite: u64,
}

impl Checkpoint {
    /// The checkpoint of a job: `job_parts` are hashed into its identity.
    pub fn new(path: &Path, job_parts: &[&str]) -> Checkpoint {
        let joined = job_parts.join("\u{1f}");
        Checkpoint {
            path: path.to_path_buf(),
            job: Digest::of(joined.as_bytes()).to_string(),
        }
    }

    /// The saved state, when there is one for this job and `space`. Anything else there
    /// (another job's, an unreadable file) is left out with a note in `notes`.
    pub fn load(&self, space: &SpaceConfig, notes: &mut Vec<String>) -> Option<Resume> {
        let bytes = std::fs::read(&self.path).ok()?;
        let shown = self.path.display();
        let (dna, ann) = match crate::dna::dna_of_bundle_bytes(&bytes) {
            Ok(v) => v,
            Err(e) => {
                notes.push(format!(
                    "checkpoint {shown} is unreadable ({e}); starting over and replacing it"
                ));
                return None;
            }
        };
        if ann.get(JOB) != Some(&self.job) || dna.space != *space {
            notes.push(format!(
                "checkpoint {shown} belongs to another extraction (other images, selection or \
                 settings); starting over and replacing it"
            ));
            return None;
        }
        let num = |k: &str| ann.get(k).and_then(|v| v.parse::<u64>().ok());
        let (Some(segments), Some(seen)) = (num(SEGMENTS), num(SEEN)) else {
            notes.push(format!(
                "checkpoint {shown} lacks its position; starting over and replacing it"
            ));
            return None;
        };
        let skipped = ann
            .get(SKIPPED)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        notes.push(format!(
            "resumed from checkpoint {shown}: {} images in {segments} segment(s) already done",
            dna.images
        ));
        Some(Resume {
            images: dna.images,
            dna,
            segments: segments as usize,
            seen,
            skipped,
            nonfinite: num(NONFINITE).unwrap_or(0),
        })
    }

    /// Writes the partial DNA after `segments` segments (atomically: a crash leaves the
    /// previous checkpoint or this one).
    pub fn save(
        &self,
        partial: &Dna,
        segments: usize,
        seen: u64,
        report: &Report,
    ) -> Result<(), ExtractError> {
        let mut ann = BTreeMap::new();
        ann.insert(JOB.to_string(), self.job.clone());
        ann.insert(SEGMENTS.to_string(), segments.to_string());
        ann.insert(SEEN.to_string(), seen.to_string());
        ann.insert(
            SKIPPED.to_string(),
            serde_json::to_string(&report.skipped).unwrap_or_default(),
        );
        ann.insert(NONFINITE.to_string(), report.nonfinite.to_string());
        let enc = partial.encode(1);
        let refs: Vec<(Digest, &[u8])> = enc
            .objects
            .iter()
            .map(|(d, b)| (*d, b.as_slice()))
            .collect();
        crate::fsio::write_file_atomic(&self.path, &encode_bundle(&refs, &ann)).map_err(|e| {
            ExtractError::Invalid(format!(
                "writing checkpoint {}: {e} (free space there, or give another --checkpoint)",
                self.path.display()
            ))
        })
    }

    /// Removes the checkpoint once the result is safe (absent is fine).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
