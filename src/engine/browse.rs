//! Browsing the catalogue: search, filters, sorting and pages over every named DNA, for
//! the web catalogue's listing and `GET /v1/datasets`.
//!
//! The listing (every ref with its DNA record and card summary) is built once per
//! catalogue state and kept: it is rebuilt only when a commit has been applied since
//! (the view's applied sequence number moved), so paging through 100,000 entries filters
//! and sorts rows in memory instead of decoding every record from sled on every page.
//! Sorting by distance to an entry runs one query for the page's rows and their
//! predecessors (k = offset + limit), not one per row.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{AnyDna, Engine, Listing, Mode, QueryRequest};
use crate::Error;

/// The most entries one distance-sorted page ranks when every entry of the space must be
/// ranked (a text search, a space prefix, or farthest first).
pub const MAX_RANKED: usize = 5_000;

/// What a listing is ordered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// `name:tag`, ascending by default.
    #[default]
    Name,
    /// Image count, largest first by default.
    Images,
    /// When the ref was set, newest first by default.
    Date,
    /// Bytes at rest, largest first by default.
    Size,
    /// Distance to the entry named in [`Browse::to`], closest first.
    Distance,
}

impl SortKey {
    pub const ALL: [SortKey; 5] = [
        SortKey::Name,
        SortKey::Images,
        SortKey::Date,
        SortKey::Size,
        SortKey::Distance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Images => "images",
            SortKey::Date => "date",
            SortKey::Size => "size",
            SortKey::Distance => "distance",
        }
    }

    pub fn parse(s: &str) -> Result<SortKey, Error> {
        SortKey::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "sort {s:?}: sort by name, images, date, size or distance (with to=REF)"
                ))
            })
    }

    /// Whether the natural order of this key is descending.
    pub fn descending_by_default(self) -> bool {
        matches!(self, SortKey::Images | SortKey::Date | SortKey::Size)
    }
}

/// A page of the catalogue to show.
#[derive(Clone, Debug, Default)]
pub struct Browse {
    /// Text to find (case-insensitive) in names, annotation values and cards' titles,
    /// summaries and tags.
    pub q: Option<String>,
    /// A space digest or a prefix of it (with or without `sha256:`).
    pub space: Option<String>,
    /// Annotation `key = value` pairs, all of which must hold.
    pub filters: BTreeMap<String, String>,
    pub sort: SortKey,
    /// Reverse the key's natural order.
    pub reverse: bool,
    /// For [`SortKey::Distance`]: the entry distances are measured from (all neurons).
    pub to: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// One page of a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Page {
    /// Rows matching the search and filters (all pages).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<Listing>,
    /// With [`SortKey::Distance`]: each item's distance, in item order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distances: Option<Vec<f64>>,
}

/// The listing of one catalogue state, shared by every page served from it.
#[derive(Default)]
pub(super) struct ListingCache {
    state: Mutex<Option<(u64, Arc<Vec<Listing>>)>>,
}

impl Browse {
    fn matches(&self, r: &Listing) -> bool {
        if let Some(q) = self
            .q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase)
        {
            let card_hit = r.card.as_ref().is_some_and(|c| {
                c.summary.to_lowercase().contains(&q)
                    || c.title
                        .as_deref()
                        .is_some_and(|t| t.to_lowercase().contains(&q))
                    || c.tags.iter().any(|t| t.to_lowercase().contains(&q))
            });
            if !(card_hit
                || r.reference.to_lowercase().contains(&q)
                || r.annotations
                    .values()
                    .any(|v| v.to_lowercase().contains(&q)))
            {
                return false;
            }
        }
        if let Some(sp) = self.space.as_deref().filter(|s| !s.is_empty()) {
            let full = r.space.to_string();
            if !(full.starts_with(sp) || full[7..].starts_with(sp)) {
                return false;
            }
        }
        self.filters
            .iter()
            .all(|(k, v)| r.annotations.get(k) == Some(v))
    }
}

impl Engine {
    /// Every named DNA as listed, from the cache while no commit has been applied since
    /// it was built.
    pub fn listing(&self) -> Result<Arc<Vec<Listing>>, Error> {
        self.db.sync_if_stale()?;
        let seq = self.db.catalogue().applied_seq()?;
        let mut st = self.listing.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, rows)) = st.as_ref() {
            if *s == seq {
                return Ok(rows.clone());
            }
        }
        let rows = Arc::new(self.db.list()?);
        *st = Some((seq, rows.clone()));
        Ok(rows)
    }

    /// One page of the catalogue: search, filters, order and page as `b` says.
    pub fn browse(&self, b: &Browse) -> Result<Page, Error> {
        let rows = self.listing()?;
        let limit = b.limit.max(1);
        if b.sort == SortKey::Distance {
            return self.browse_by_distance(b, &rows, limit);
        }
        let mut shown: Vec<&Listing> = rows.iter().filter(|r| b.matches(r)).collect();
        let desc = b.sort.descending_by_default() != b.reverse;
        let key = |r: &Listing| match b.sort {
            SortKey::Images => r.images,
            SortKey::Date => r.created,
            _ => r.stored_bytes,
        };
        if b.sort == SortKey::Name {
            // The listing is already in name order.
            if desc {
                shown.reverse();
            }
        } else {
            // Equal keys stay in name order either way.
            shown.sort_by(|x, y| {
                let o = key(x).cmp(&key(y));
                if desc {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        let total = shown.len();
        Ok(Page {
            total,
            offset: b.offset,
            limit,
            items: shown
                .into_iter()
                .skip(b.offset)
                .take(limit)
                .cloned()
                .collect(),
            distances: None,
        })
    }

    fn browse_by_distance(
        &self,
        b: &Browse,
        rows: &[Listing],
        limit: usize,
    ) -> Result<Page, Error> {
        let to = b.to.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
            Error::Invalid("sort by distance needs to=REF: the entry to measure from".into())
        })?;
        let (d, _) = self.resolve(to)?;
        let from = self.open_dna(&d)?;
        let space = from.manifest.space;
        // Only entries of the same space have a distance to it.
        let candidates: Vec<&Listing> = rows
            .iter()
            .filter(|r| r.space == space && b.matches(r))
            .collect();
        let total = candidates.len();
        let want = (b.offset + limit).min(total);
        if want == 0 || b.offset >= total {
            return Ok(Page {
                total,
                offset: b.offset,
                limit,
                items: Vec::new(),
                distances: Some(Vec::new()),
            });
        }
        let by_ref: BTreeMap<&str, &Listing> = candidates
            .iter()
            .map(|r| (r.reference.as_str(), *r))
            .collect();
        // The query knows annotation filters but not text search or space prefixes: when
        // those narrow the rows, or the farthest come first, every row of the space is
        // ranked and the matching ones kept.
        let narrowed = b.q.as_deref().is_some_and(|q| !q.trim().is_empty())
            || b.space.as_deref().is_some_and(|s| !s.is_empty());
        let k = if narrowed || b.reverse {
            let all = rows.iter().filter(|r| r.space == space).count();
            if all > MAX_RANKED {
                return Err(Error::Invalid(format!(
                    "sorting by distance with a text search, a space prefix or farthest first ranks every one of the {all} entries of {to}'s space (at most {MAX_RANKED}): narrow it with an annotation filter, or sort closest first"
                )));
            }
            all
        } else {
            want
        };
        let res = self.query(
            &AnyDna::Stored(from),
            &QueryRequest {
                k,
                mode: Mode::Exact,
                filters: b.filters.clone(),
                ..Default::default()
            },
        )?;
        let mut ranked: Vec<(&Listing, f64)> = res
            .results
            .iter()
            .filter_map(|h| by_ref.get(h.reference.as_str()).map(|r| (*r, h.distance)))
            .collect();
        if b.reverse {
            ranked.reverse();
        }
        let page: Vec<(&Listing, f64)> = ranked.into_iter().skip(b.offset).take(limit).collect();
        Ok(Page {
            total,
            offset: b.offset,
            limit,
            distances: Some(page.iter().map(|p| p.1).collect()),
            items: page.into_iter().map(|p| p.0.clone()).collect(),
        })
    }
}
