//! The HTTP API's request bodies, typed once and shared by the server (which reads them)
//! and the client (which writes them), so the CLI cannot send a field the server does not
//! read. schema/openapi.json documents the same fields; a test holds the two together.
//!
//! Plain serde structs and their conversion into engine requests: no I/O, no HTTP.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::distance::Metric;
use crate::query::{Mode, QueryRequest};

/// The most results one query may ask for.
pub const MAX_K: usize = 1000;

fn all() -> String {
    "all".into()
}

fn five() -> usize {
    5
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `POST /v1/query` (JSON body), and the options of `POST /v1/query/bundle`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueryBody {
    /// A stored ref or digest (for `/v1/query`; absent for a bundle query).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default = "all")]
    pub mask: String,
    #[serde(default = "five")]
    pub k: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub exclude_self: bool,
    /// `auto` (the planner chooses; the default), `exact`, `approx` or `estimate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Older clients' spelling of `"mode": "approx"`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub approx: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub per_layer: bool,
}

impl Default for QueryBody {
    fn default() -> Self {
        QueryBody {
            reference: None,
            mask: all(),
            k: five(),
            metric: None,
            filters: BTreeMap::new(),
            tag: None,
            exclude_self: false,
            mode: None,
            approx: false,
            per_layer: false,
        }
    }
}

impl QueryBody {
    /// The engine request this body asks for; the error says which field is wrong.
    pub fn to_request(&self) -> Result<QueryRequest, String> {
        if self.k == 0 || self.k > MAX_K {
            return Err(format!("k must be between 1 and {MAX_K}"));
        }
        let metric = self
            .metric
            .as_deref()
            .map(|s| Metric::parse(s).ok_or_else(|| format!("metric {s:?}: use emd, nfd or fd")))
            .transpose()?;
        let mode = match (self.mode, self.approx) {
            (Some(Mode::Exact), true) => {
                return Err("\"mode\": \"exact\" contradicts \"approx\": true".into())
            }
            (Some(m), _) => m,
            (None, true) => Mode::Approx,
            (None, false) => Mode::Auto,
        };
        Ok(QueryRequest {
            mask: self.mask.clone(),
            k: self.k,
            metric,
            mode,
            filters: self.filters.clone(),
            tag: self.tag.clone(),
            exclude_self: self.exclude_self,
            per_layer: self.per_layer,
        })
    }

    /// The query string of `POST /v1/query/bundle` carrying these options (the body is
    /// the bundle); `filters` travels as one JSON object. [`QueryParams`] reads it back.
    pub fn to_query_string(&self) -> String {
        let mut parts = vec![
            format!("mask={}", urlencode(&self.mask)),
            format!("k={}", self.k),
        ];
        if let Some(m) = &self.metric {
            parts.push(format!("metric={}", urlencode(m)));
        }
        if !self.filters.is_empty() {
            let json = serde_json::to_string(&self.filters).unwrap_or_default();
            parts.push(format!("filters={}", urlencode(&json)));
        }
        if let Some(t) = &self.tag {
            parts.push(format!("tag={}", urlencode(t)));
        }
        if self.exclude_self {
            parts.push("exclude_self=true".into());
        }
        if let Some(m) = self.mode {
            parts.push(format!("mode={}", m.name()));
        }
        if self.approx {
            parts.push("approx=true".into());
        }
        if self.per_layer {
            parts.push("per_layer=true".into());
        }
        parts.join("&")
    }
}

/// The query string of `POST /v1/query/bundle`: [`QueryBody`]'s fields, with `filters` as
/// a JSON object (`filters={"split":"val"}`, URL-encoded).
#[derive(Clone, Debug, Deserialize)]
pub struct QueryParams {
    #[serde(default = "all")]
    pub mask: String,
    #[serde(default = "five")]
    pub k: usize,
    pub metric: Option<String>,
    pub filters: Option<String>,
    pub tag: Option<String>,
    #[serde(default)]
    pub exclude_self: bool,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub approx: bool,
    #[serde(default)]
    pub per_layer: bool,
}

impl QueryParams {
    /// The same options as a [`QueryBody`] (without a ref).
    pub fn into_body(self) -> Result<QueryBody, String> {
        let filters = match self.filters.as_deref().filter(|s| !s.is_empty()) {
            None => BTreeMap::new(),
            Some(s) => serde_json::from_str(s).map_err(|e| {
                format!(
                    "filters: expected a JSON object of strings, like {{\"split\":\"val\"}}: {e}"
                )
            })?,
        };
        Ok(QueryBody {
            reference: None,
            mask: self.mask,
            k: self.k,
            metric: self.metric,
            filters,
            tag: self.tag,
            exclude_self: self.exclude_self,
            mode: self.mode,
            approx: self.approx,
            per_layer: self.per_layer,
        })
    }
}

/// `POST /v1/compare`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CompareBody {
    pub a: String,
    pub b: String,
    #[serde(default = "all")]
    pub mask: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default)]
    pub top_neurons: usize,
}

/// `PUT /v1/refs/{name}`: point a name at an uploaded manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SetRef {
    pub digest: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `PUT /v1/cards/{name}`: set a ref's dataset card (markdown, see `vdna-db card --help`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SetCard {
    pub markdown: String,
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_and_approx_agree_or_are_refused() {
        let mut b = QueryBody::default();
        assert_eq!(b.to_request().unwrap().mode, Mode::Auto);
        b.approx = true;
        assert_eq!(b.to_request().unwrap().mode, Mode::Approx);
        b.mode = Some(Mode::Exact);
        assert!(b.to_request().is_err());
        b.approx = false;
        assert_eq!(b.to_request().unwrap().mode, Mode::Exact);
        b.k = 0;
        assert!(b.to_request().unwrap_err().contains("k must be"));
    }

    #[test]
    fn urlencode_keeps_unreserved_and_escapes_the_rest() {
        assert_eq!(urlencode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(urlencode("-layer1_* x"), "-layer1_%2A%20x");
        assert_eq!(urlencode("{\"k\":\"v\"}"), "%7B%22k%22%3A%22v%22%7D");
    }
}

/// `POST /v1/admin/tokens`: create a token (admin scope).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenCreate {
    /// `push` (push, tag and remove names) or `admin` (also tokens, gc, verify, reindex).
    #[serde(default = "push_scope")]
    pub scope: String,
    #[serde(default)]
    pub label: String,
}

fn push_scope() -> String {
    "push".into()
}

/// A created token: the secret is shown this once; only its hash is stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenCreated {
    pub id: String,
    pub scope: String,
    pub label: String,
    pub token: String,
}

/// A stored token, without its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    pub id: String,
    pub scope: String,
    pub label: String,
    pub created: u64,
}

impl From<crate::catalogue::TokenRecord> for TokenInfo {
    fn from(t: crate::catalogue::TokenRecord) -> TokenInfo {
        TokenInfo {
            id: t.id,
            scope: t.scope,
            label: t.label,
            created: t.created,
        }
    }
}

/// `POST /v1/admin/gc`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GcBody {
    /// Spare unreachable objects younger than this many seconds (default 900: uploads
    /// send objects before their manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
}

/// `POST /v1/admin/verify`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyBody {
    /// Rebuild damaged derived state (the index).
    #[serde(default)]
    pub repair: bool,
}

/// `POST /v1/admin/reindex`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReindexBody {
    /// Build HNSW graphs for spaces of at least this many DNAs (server default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphs_min: Option<usize>,
}
