//! Shards of a distributed extraction: each worker stores its part under a name derived
//! from the whole's (`NAME:TAG-shard-i-of-n`), annotated with its index and the digest of
//! the selection every part shares, so a retried worker replaces its own part with the
//! same DNA and nothing else; the merge checks that exactly parts 0..n-1 of one space and
//! one selection are there before adding them up, and can be run again.

use std::collections::BTreeMap;

use super::Engine;
use crate::dna::Dna;
use crate::format::Digest;
use crate::refname::RefName;
use crate::Error;

/// Annotation: `i/n`.
pub const SHARD: &str = "shard";
/// Annotation: the name:tag of the whole.
pub const SHARD_OF: &str = "shard.of";
/// Annotation: digest of the source and selection all parts share.
pub const SHARD_SELECTION: &str = "shard.selection";

/// The name part `i` of `n` of `whole` is stored under.
pub fn shard_name(whole: &RefName, i: usize, n: usize) -> Result<RefName, Error> {
    let s = format!("{}:{}-shard-{i}-of-{n}", whole.name, whole.tag);
    RefName::parse(&s).map_err(|e| {
        Error::Invalid(format!(
            "{s}: {e} (the tag of {whole} is too long for a shard name: shorten it)"
        ))
    })
}

/// The annotations that mark part `i` of `n` of `whole`; `selection` names the source and
/// every selection setting but the shard (equal across parts).
pub fn shard_annotations(
    whole: &RefName,
    i: usize,
    n: usize,
    selection: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (SHARD.to_string(), format!("{i}/{n}")),
        (SHARD_OF.to_string(), whole.to_string()),
        (
            SHARD_SELECTION.to_string(),
            Digest::of(selection.as_bytes()).to_string(),
        ),
    ])
}

/// The parts of one whole, checked and in order.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardSet {
    pub whole: String,
    pub count: usize,
    /// `(name, digest, images)` of part 0, 1, ... n-1.
    pub parts: Vec<(String, Digest, u64)>,
}

/// Parses `TAG-shard-i-of-n` into `(i, n)` for `tag`.
fn parse_part(tag: &str, whole_tag: &str) -> Option<(usize, usize)> {
    let rest = tag.strip_prefix(whole_tag)?.strip_prefix("-shard-")?;
    let (i, n) = rest.split_once("-of-")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

impl Engine {
    /// Finds the parts of `whole` and checks them: one count n, exactly the parts 0..n-1,
    /// one space, one selection. The error names what is missing or doubled.
    pub fn shard_set(&self, whole: &RefName) -> Result<ShardSet, Error> {
        let mut found: BTreeMap<usize, Vec<(RefName, crate::catalogue::RefRecord, usize)>> =
            BTreeMap::new();
        for (name, rec) in self.refs()? {
            if name.name != whole.name {
                continue;
            }
            if let Some((i, n)) = parse_part(&name.tag, &whole.tag) {
                found.entry(n).or_default().push((name, rec, i));
            }
        }
        let n = match found.len() {
            0 => {
                return Err(Error::NotFound(format!(
                    "no shards of {whole}: parts are stored as {}:{}-shard-I-of-N (push with \
                     --name {whole} --shard I/N)",
                    whole.name, whole.tag
                )))
            }
            1 => *found.keys().next().unwrap_or(&0),
            _ => {
                return Err(Error::Invalid(format!(
                    "shards of {whole} from runs of different sizes are stored ({}): remove \
                     the parts of the run you don't want (vdna-db rm NAME:TAG-shard-I-of-N)",
                    found
                        .iter()
                        .map(|(n, v)| format!("{} part(s) of {n}", v.len()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        let mut parts = found.remove(&n).unwrap_or_default();
        parts.sort_by_key(|p| p.2);
        let have: Vec<usize> = parts.iter().map(|p| p.2).collect();
        let missing: Vec<String> = (0..n)
            .filter(|i| !have.contains(i))
            .map(|i| i.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::NotFound(format!(
                "{whole}: {} of {n} shards missing (index {}): run those workers again \
                 (--shard I/{n}); the {} done are kept",
                missing.len(),
                missing.join(", "),
                n - missing.len()
            )));
        }
        // Tags are unique, so an index can only appear once per n; parts beyond n-1
        // would have failed parse (i >= n is refused when pushing) but are refused here too.
        if let Some(p) = parts.iter().find(|p| p.2 >= n) {
            return Err(Error::Invalid(format!(
                "{}: index {} is not below {n}: remove it",
                p.0, p.2
            )));
        }
        let mut spaces = BTreeMap::new();
        let mut selections = BTreeMap::new();
        let mut out = Vec::with_capacity(n);
        for (name, rec, _) in &parts {
            let dna = self.dna_record(&rec.digest)?.ok_or_else(|| {
                Error::NotFound(format!(
                    "{name}: its DNA {} is not in the catalogue",
                    rec.digest
                ))
            })?;
            spaces
                .entry(dna.space)
                .or_insert_with(Vec::new)
                .push(name.to_string());
            selections
                .entry(
                    rec.annotations
                        .get(SHARD_SELECTION)
                        .cloned()
                        .unwrap_or_else(|| "(none)".into()),
                )
                .or_insert_with(Vec::new)
                .push(name.to_string());
            out.push((name.to_string(), rec.digest, dna.images));
        }
        fn split<K>(m: &BTreeMap<K, Vec<String>>) -> String {
            m.values()
                .map(|v| v.join(", "))
                .collect::<Vec<_>>()
                .join(" | ")
        }
        if spaces.len() > 1 {
            return Err(Error::Invalid(format!(
                "the shards of {whole} are in {} different spaces ({}): every worker must use \
                 the same extractor, weights, ranges and distribution",
                spaces.len(),
                split(&spaces)
            )));
        }
        if selections.len() > 1 {
            return Err(Error::Invalid(format!(
                "the shards of {whole} come from {} different sources or selections ({}): \
                 every worker must be given the same source and flags, only --shard differing",
                selections.len(),
                split(&selections)
            )));
        }
        Ok(ShardSet {
            whole: whole.to_string(),
            count: n,
            parts: out,
        })
    }

    /// The exact merge of a checked shard set (histograms add; Gaussians combine from
    /// image counts), in index order.
    pub fn merge_shards(&self, set: &ShardSet) -> Result<Dna, Error> {
        let mut merged: Option<Dna> = None;
        for (name, digest, _) in &set.parts {
            let dna = self.open_dna(digest)?.load()?;
            merged = Some(match merged {
                None => dna,
                Some(m) => m
                    .merge(&dna)
                    .map_err(|e| Error::Invalid(format!("merging {name}: {e}")))?,
            });
        }
        merged.ok_or_else(|| Error::Invalid("no shards to merge".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_tags_parse_only_for_their_whole() {
        assert_eq!(parse_part("v1-shard-3-of-8", "v1"), Some((3, 8)));
        assert_eq!(parse_part("v1-shard-x-of-8", "v1"), None);
        assert_eq!(parse_part("v10-shard-3-of-8", "v1"), None);
        let w = RefName::parse("photos:v1").unwrap();
        assert_eq!(
            shard_name(&w, 2, 4).unwrap().to_string(),
            "photos:v1-shard-2-of-4"
        );
    }
}
