//! The web catalogue: server-rendered HTML pages with inline SVG and no JavaScript.
//!
//! - `/` the catalogue: datasets with space, images, size and annotations; search and a
//!   space filter.
//! - `/d/{name}` a dataset: metadata, digests, one plot per layer of where its neurons'
//!   distributions sit (quartiles of the per-neuron means, and the mean spread), and its
//!   nearest datasets under all neurons.
//! - `/compare?a=&b=&mask=` two datasets: per-layer distance bars, the most different
//!   neurons and, for the first three, their distributions overlaid.
//! - `/plot/neuron.svg?a=&b=&layer=&neuron=` one neuron's distributions in one or two
//!   datasets with their per-neuron distance, as a standalone SVG.
//! - `/query?ref=&mask=&k=` (and an upload form posting a `.vdna` bundle to
//!   `/query/upload`): ranked results with per-layer bars.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::engine::{AnyDna, Listing};
use crate::engine::{Mode, QueryRequest, QueryResult};
use crate::format::{DistKind, LayerView};
use crate::Engine;

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// Percent-encodes a URL component.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const CSS: &str = "
:root{--fg:#1d2433;--mut:#5b6478;--bg:#f7f8fb;--card:#fff;--acc:#2563d0;--line:#e3e7ef}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2433;color:#fff;padding:14px 28px;display:flex;gap:24px;align-items:baseline}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700;font-size:18px}
main{max-width:1100px;margin:24px auto;padding:0 20px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;margin-bottom:18px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:8px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--mut)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:var(--acc)}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
.tag{display:inline-block;background:#eef2fb;color:#33415c;border-radius:999px;padding:1px 9px;margin:1px 3px 1px 0;font-size:12px}
img{max-width:100%;height:auto}.plots img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}.plots figure{margin:0 0 12px}
details.ann{display:inline-block;max-width:100%;vertical-align:top}details.ann>summary{cursor:pointer;list-style:none}details.ann>summary::-webkit-details-marker{display:none}details.ann pre{white-space:pre-wrap;overflow-wrap:anywhere;max-width:60ch;max-height:20em;overflow:auto;font-size:12px;background:#f6f8fc;border-radius:6px;padding:6px 8px;margin:4px 0}
.muted{color:var(--mut)}form.inline{display:flex;gap:10px;flex-wrap:wrap;align-items:end}
input,select,button{font:inherit;padding:7px 10px;border:1px solid #c9cfdb;border-radius:7px;background:#fff}
button{background:var(--acc);color:#fff;border-color:var(--acc);cursor:pointer}
.bar{height:12px;background:var(--acc);border-radius:3px;display:inline-block;vertical-align:middle}
dl{display:grid;grid-template-columns:160px 1fr;gap:6px 14px;margin:0}dt{color:var(--mut)}dd{margin:0;word-break:break-all}
.err{background:#fff1f0;border-color:#f3b5af}figure.card{margin:0 0 18px}
.verb{display:inline-block;min-width:58px;text-align:center;border-radius:5px;padding:0 6px;font:600 12px/20px ui-monospace,monospace;color:#fff;background:#5b6478}.verb.get{background:#2f6fde}.verb.post{background:#1f7a4d}.verb.put{background:#9a5b00}.verb.delete{background:#b3261e}
ul.toc{list-style:none;padding:0;margin:0}ul.toc li{margin:3px 0;overflow-wrap:anywhere}table.api td{overflow-wrap:anywhere}
.scroll{overflow-x:auto}.small{font-size:13px}.nowrap{white-space:nowrap}.ctitle{font-weight:600}.tag.lic{background:#e8f6ee;color:#1f5b3a}
td.name,td.mono,.tag,details.ann>summary{overflow-wrap:anywhere}
form.inline label{min-width:0;max-width:100%}select,input{max-width:100%}
.pager{display:flex;gap:14px;flex-wrap:wrap;align-items:baseline;margin:6px 2px 24px}
.cardbody{overflow-wrap:anywhere}#citation{white-space:pre-wrap;overflow-wrap:anywhere}svg.layers{min-width:560px}.cardbody pre{white-space:pre-wrap;background:#f6f8fc;border-radius:6px;padding:8px 10px}.cardbody table{width:auto}.cardbody img{max-width:100%}
dl.fields{grid-template-columns:120px 1fr}
@media (max-width:640px){header{padding:12px 16px;gap:14px;flex-wrap:wrap}main{padding:0 10px;margin:14px auto}.card{padding:12px}th,td{padding:6px}dl{grid-template-columns:1fr}dt{font-weight:600}.hide-sm{display:none}}
";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>{} · vdna-db</title><style>{CSS}</style></head><body>\
         <header><a class=brand href='/'>vdna-db</a><a href='/'>Catalogue</a><a href='/query'>Query</a><a href='/compare'>Compare</a><a href='/docs'>API</a></header>\
         <main>{body}</main></body></html>",
        esc(title)
    ))
}

fn error_page(status: StatusCode, msg: &str) -> Response {
    (
        status,
        page(
            "error",
            &format!(
                "<div class='card err'><h1>{}</h1><p>{}</p></div>",
                status.as_u16(),
                esc(msg)
            ),
        ),
    )
        .into_response()
}

fn web_err(e: ApiError) -> Response {
    error_page(e.status, &e.message)
}

async fn blocking<T: Send + 'static>(
    st: &Arc<AppState>,
    f: impl FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Response> {
    let st = st.clone();
    match tokio::task::spawn_blocking(move || f(&st.engine)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(web_err(e)),
        Err(e) => Err(web_err(ApiError::internal(e))),
    }
}

fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.1} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} kB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

/// Annotation values longer than this many characters are collapsed to their start.
const ANN_INLINE: usize = 48;

/// Annotations as chips. A long value (a reference DNA's `reference.metadata` JSON runs to
/// hundreds of characters) shows its start on one line; the whole of it (JSON
/// pretty-printed) is one click away in a `<details>`, which needs no script.
fn tags(ann: &BTreeMap<String, String>) -> String {
    ann.iter()
        .map(|(k, v)| {
            if v.chars().count() <= ANN_INLINE {
                return format!("<span class=tag>{}={}</span>", esc(k), esc(v));
            }
            let head: String = v.chars().take(ANN_INLINE - 8).collect();
            let whole = serde_json::from_str::<serde_json::Value>(v)
                .ok()
                .filter(|j| j.is_object() || j.is_array())
                .and_then(|j| serde_json::to_string_pretty(&j).ok())
                .unwrap_or_else(|| v.clone());
            format!(
                "<details class=ann><summary><span class=tag title='{} characters: click to expand'>{}={}…</span></summary><pre>{}</pre></details>",
                v.chars().count(),
                esc(k),
                esc(&head),
                esc(&whole)
            )
        })
        .collect()
}

#[derive(Deserialize, Default)]
pub struct CatalogueParams {
    q: Option<String>,
    space: Option<String>,
    /// Annotation filters, `key=value`, comma-separated.
    filter: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    to: Option<String>,
    /// 1-based page number.
    page: Option<usize>,
    per: Option<usize>,
}

/// Rows per catalogue page, unless `per` says otherwise (at most [`MAX_PER_PAGE`]).
const PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 500;

impl CatalogueParams {
    /// This page's query string with some parameters replaced (`None`: dropped).
    fn with(&self, changes: &[(&str, Option<String>)]) -> String {
        let mut kv: Vec<(&str, Option<String>)> = vec![
            ("q", self.q.clone()),
            ("space", self.space.clone()),
            ("filter", self.filter.clone()),
            ("sort", self.sort.clone()),
            ("order", self.order.clone()),
            ("to", self.to.clone()),
            ("per", self.per.map(|p| p.to_string())),
            ("page", self.page.map(|p| p.to_string())),
        ];
        for (k, v) in changes {
            if let Some(slot) = kv.iter_mut().find(|(n, _)| n == k) {
                slot.1 = v.clone();
            }
        }
        let qs: Vec<String> = kv
            .into_iter()
            .filter_map(|(k, v)| {
                v.filter(|v| !v.is_empty())
                    .map(|v| format!("{k}={}", crate::protocol::urlencode(&v)))
            })
            .collect();
        if qs.is_empty() {
            "/".into()
        } else {
            format!("/?{}", qs.join("&"))
        }
    }
}

/// A card's title, summary and licence under a dataset's name in the listing.
fn card_line(c: &crate::card::CardBrief) -> String {
    let mut s = String::new();
    if let Some(t) = &c.title {
        let _ = write!(s, "<br><b class=ctitle>{}</b>", esc(t));
    }
    if !c.summary.is_empty() {
        let _ = write!(
            s,
            "<br><span class='muted small'>{}</span>",
            esc(&c.summary)
        );
    }
    if let Some(l) = &c.license {
        let _ = write!(s, " <span class='tag lic'>{}</span>", esc(l));
    }
    for t in &c.tags {
        let _ = write!(s, "<span class=tag>#{}</span>", esc(t));
    }
    s
}

pub async fn catalogue(
    State(st): State<Arc<AppState>>,
    Query(p): Query<CatalogueParams>,
) -> Result<Response, Response> {
    let per = p.per.unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE);
    let page_no = p.page.unwrap_or(1).max(1);
    let mut req = super::api::browse_request(
        p.q.clone(),
        p.space.clone(),
        p.filter.as_deref(),
        p.sort.as_deref(),
        p.order.as_deref(),
        p.to.clone(),
    )
    .map_err(web_err)?;
    req.offset = (page_no - 1).saturating_mul(per).min(1_000_000_000);
    req.limit = per;
    let sort = req.sort;
    let desc = sort.descending_by_default() != req.reverse;
    let res = blocking(&st, move |db| {
        let page = db.browse(&req)?;
        let spaces = db.spaces()?;
        let all = db.listing()?.len();
        Ok((page, spaces, all))
    })
    .await;
    let (pg, spaces, all) = res?;
    let q = p.q.clone().unwrap_or_default();
    let space = p.space.clone().unwrap_or_default();
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Catalogue</h1><p class=muted>{} dataset{} in {} space{}. Each row is a Visual DNA: per-neuron activation distributions of an image dataset.</p>",
        all,
        if all == 1 { "" } else { "s" },
        spaces.len(),
        if spaces.len() == 1 { "" } else { "s" }
    );
    let _ = write!(b, "<div class=card role=search><form class=inline method=get action='/'><label>Search<br><input type=search name=q value='{}' placeholder='name, annotation or card'></label><label>Space<br><select name=space><option value=''>all spaces</option>", esc(&q));
    for (d, s) in &spaces {
        let sel = if d.to_string() == space {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            b,
            "<option value='{}'{sel}>{}</option>",
            esc(&d.to_string()),
            esc(&s.description)
        );
    }
    let _ = write!(
        b,
        "</select></label><label>Annotations<br><input name=filter value='{}' placeholder='key=value, …'></label><label>Sort<br><select name=sort>",
        esc(p.filter.as_deref().unwrap_or(""))
    );
    for k in crate::engine::SortKey::ALL {
        let _ = write!(
            b,
            "<option value={0}{1}>{0}</option>",
            k.name(),
            if k == sort { " selected" } else { "" }
        );
    }
    let _ = write!(
        b,
        "</select></label><label>Distance to<br><input name=to value='{}' placeholder='name:tag (sort by distance)'></label><button>Show</button></form></div>",
        esc(p.to.as_deref().unwrap_or(""))
    );
    // Column headers sort; the current one shows its direction and flips it.
    let head = |label: &str, key: crate::engine::SortKey, class: &str| -> String {
        let (mark, next, aria) = if key == sort {
            if desc {
                (" ▼", "asc", " aria-sort=descending")
            } else {
                (" ▲", "desc", " aria-sort=ascending")
            }
        } else {
            ("", "", "")
        };
        let href = p.with(&[
            ("sort", Some(key.name().to_string())),
            ("order", (!next.is_empty()).then(|| next.to_string())),
            ("page", None),
        ]);
        format!(
            "<th{class}{aria}><a href='{}'>{label}{mark}</a></th>",
            esc(&href),
        )
    };
    let by_distance = sort == crate::engine::SortKey::Distance;
    let _ = write!(
        b,
        "<div class='card scroll' role=region aria-label='datasets' tabindex=0><table id=datasets><thead><tr>{}<th>Space</th>{}{}{}{}<th>Annotations</th></tr></thead><tbody>",
        head("Dataset", crate::engine::SortKey::Name, ""),
        if by_distance {
            head("Distance", crate::engine::SortKey::Distance, " class=num")
        } else {
            String::new()
        },
        head("Images", crate::engine::SortKey::Images, " class=num"),
        head("Size", crate::engine::SortKey::Size, " class=num"),
        head("Added", crate::engine::SortKey::Date, ""),
    );
    for (i, r) in pg.items.iter().enumerate() {
        let dist = match (&pg.distances, by_distance) {
            (Some(d), true) => format!(
                "<td class=num>{}</td>",
                d.get(i).map(|x| format!("{x:.6}")).unwrap_or_default()
            ),
            _ => String::new(),
        };
        let _ = write!(
            b,
            "<tr><td class=name><a href='/d/{}'>{}</a>{}<br><span class='mono muted'>{}</span></td><td>{} <span class=muted>{}</span></td>{dist}<td class=num>{}</td><td class=num>{}</td><td class=nowrap>{}</td><td>{}</td></tr>",
            enc(&r.reference),
            esc(&r.reference),
            r.card.as_ref().map(card_line).unwrap_or_default(),
            esc(&r.digest.short()),
            esc(&r.extractor),
            esc(&r.dist),
            r.images,
            human(r.stored_bytes),
            date(r.created),
            tags(&r.annotations)
        );
    }
    if pg.items.is_empty() {
        let _ = write!(
            b,
            "<tr><td colspan=7 class=muted>{}</td></tr>",
            if pg.total == 0 {
                "No dataset matches."
            } else {
                "Past the last page."
            }
        );
    }
    b.push_str("</tbody></table></div>");
    // Pages: where this one sits, first / previous / next / last.
    let pages = pg.total.div_ceil(per).max(1);
    let from = if pg.total == 0 { 0 } else { pg.offset + 1 };
    let to = (pg.offset + pg.items.len()).min(pg.total);
    let link = |n: usize, label: &str, rel: &str| -> String {
        if n == page_no || n == 0 || n > pages {
            format!("<span class=muted>{label}</span>")
        } else {
            format!(
                "<a href='{}'{rel}>{label}</a>",
                esc(&p.with(&[("page", (n > 1).then(|| n.to_string()))]))
            )
        }
    };
    let _ = write!(
        b,
        "<nav class=pager aria-label='pages'><span id=showing>{from}–{to} of {}</span> {} {} <span>page {page_no} of {pages}</span> {} {}</nav>",
        pg.total,
        link(1, "« first", ""),
        link(page_no.saturating_sub(1), "‹ previous", " rel=prev"),
        link(page_no + 1, "next ›", " rel=next"),
        link(pages, "last »", ""),
    );
    Ok(page("Catalogue", &b).into_response())
}

/// A Unix time as a UTC date (YYYY-MM-DD).
fn date(secs: u64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Where a layer's neurons sit: quantiles of the per-neuron means and the mean spread.
struct LayerSummary {
    name: String,
    q: [f64; 5],
    spread: f64,
}

fn quantiles(mut v: Vec<f64>) -> [f64; 5] {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return [0.0; 5];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    [at(0.05), at(0.25), at(0.5), at(0.75), at(0.95)]
}

/// Each neuron's mean activation and spread: histograms over the bin centres of
/// [-1, 1], Gaussians their mean and standard deviation, ranges their midpoint and
/// half-width.
fn neuron_moments(view: LayerView<'_>) -> (Vec<f64>, Vec<f64>) {
    match view {
        LayerView::Histogram {
            neurons,
            bins,
            counts,
        } => (0..neurons)
            .map(|n| {
                let h = &counts[n * bins..(n + 1) * bins];
                let tot: f64 = h.iter().map(|&c| c as f64).sum::<f64>().max(1.0);
                let c = |k: usize| -1.0 + (k as f64 + 0.5) * 2.0 / bins as f64;
                let m: f64 = h
                    .iter()
                    .enumerate()
                    .map(|(k, &x)| x as f64 * c(k))
                    .sum::<f64>()
                    / tot;
                let v: f64 = h
                    .iter()
                    .enumerate()
                    .map(|(k, &x)| x as f64 * (c(k) - m).powi(2))
                    .sum::<f64>()
                    / tot;
                (m, v.sqrt())
            })
            .unzip(),
        LayerView::Gaussian { mean, var } => (
            mean.to_vec(),
            var.iter().map(|v| v.max(0.0).sqrt()).collect(),
        ),
        LayerView::LayerGaussian { neurons, mean, cov } => (
            mean.to_vec(),
            (0..neurons)
                .map(|i| cov[i * neurons + i].max(0.0).sqrt())
                .collect(),
        ),
        LayerView::Ranges { min, max } => (
            min.iter().zip(max).map(|(a, b)| (a + b) / 2.0).collect(),
            min.iter().zip(max).map(|(a, b)| (b - a) / 2.0).collect(),
        ),
    }
}

fn summarise(name: &str, view: LayerView<'_>) -> LayerSummary {
    let (means, spreads) = neuron_moments(view);
    let spread = spreads.iter().sum::<f64>() / spreads.len().max(1) as f64;
    LayerSummary {
        name: name.to_string(),
        q: quantiles(means),
        spread,
    }
}

/// One SVG with a row per layer: whiskers 5-95%, box 25-75%, median tick of the neurons'
/// means, and a faint band of +-(mean spread) around the median.
fn layers_svg(layers: &[LayerSummary], fixed: Option<(f64, f64)>, link: Option<&str>) -> String {
    let (lo, hi) = fixed.unwrap_or_else(|| {
        let lo = layers
            .iter()
            .map(|l| l.q[2] - l.spread)
            .fold(f64::INFINITY, f64::min);
        let hi = layers
            .iter()
            .map(|l| l.q[2] + l.spread)
            .fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            (-1.0, 1.0)
        }
    });
    let (w, left, right, row) = (760.0, 110.0, 20.0, 22.0);
    let h = layers.len() as f64 * row + 34.0;
    let x = |v: f64| left + (v - lo) / (hi - lo) * (w - left - right);
    // With links inside it is not an image to assistive technology: the layer links under
    // it are the way in.
    let role = if link.is_some() {
        "aria-hidden=true"
    } else {
        "role=img aria-label='per-layer distribution of neuron means'"
    };
    let mut s = format!("<svg class=layers viewBox='0 0 {w} {h}' width='100%' {role}>");
    for t in 0..=4 {
        let v = lo + (hi - lo) * t as f64 / 4.0;
        let _ = write!(s, "<line x1='{0:.1}' x2='{0:.1}' y1='6' y2='{1:.1}' stroke='#e3e7ef'/><text x='{0:.1}' y='{2:.1}' font-size='11' text-anchor='middle' fill='#5b6478'>{v:.2}</text>", x(v), h - 22.0, h - 8.0);
    }
    for (i, l) in layers.iter().enumerate() {
        let y = 10.0 + i as f64 * row;
        let c = y + row / 2.0 - 2.0;
        let [p5, p25, p50, p75, p95] = l.q;
        if let Some(a) = link {
            // Not a tab stop: the layer links under the plot are the keyboard's way in.
            let _ = write!(
                s,
                "<a href='/layer?a={}&amp;layer={}' tabindex='-1'>",
                crate::protocol::urlencode(a),
                crate::protocol::urlencode(&l.name)
            );
        }
        let _ = write!(
            s,
            "<g class=layer data-layer='{n}'><text x='{tx:.1}' y='{ty:.1}' font-size='12' text-anchor='end' fill='#1d2433'>{n}</text>\
             <rect x='{bx:.1}' y='{by:.1}' width='{bw:.1}' height='{bh:.1}' fill='#2f6fde' opacity='0.12'/>\
             <line x1='{w5:.1}' x2='{w95:.1}' y1='{c:.1}' y2='{c:.1}' stroke='#33415c'/>\
             <rect x='{q1:.1}' y='{qy:.1}' width='{qw:.1}' height='10' fill='#2f6fde' rx='2'/>\
             <line x1='{m:.1}' x2='{m:.1}' y1='{my0:.1}' y2='{my1:.1}' stroke='#fff' stroke-width='2'/></g>",
            n = esc(&l.name),
            tx = left - 8.0,
            ty = c + 4.0,
            bx = x(p50 - l.spread).max(left),
            by = c - 8.0,
            bw = (x(p50 + l.spread).min(w - right) - x(p50 - l.spread).max(left)).max(0.0),
            bh = 16.0,
            w5 = x(p5),
            w95 = x(p95),
            q1 = x(p25),
            qy = c - 5.0,
            qw = (x(p75) - x(p25)).max(1.5),
            m = x(p50),
            my0 = c - 5.0,
            my1 = c + 5.0,
        );
        if link.is_some() {
            s.push_str("</a>");
        }
    }
    s.push_str("</svg>");
    s
}

fn bars(rows: &[(String, f64)]) -> String {
    let max = rows.iter().map(|r| r.1).fold(0.0f64, f64::max).max(1e-12);
    let mut s = String::from("<table class=bars><tbody>");
    for (name, v) in rows {
        let _ = write!(
            s,
            "<tr><td class=mono>{}</td><td style='width:60%'><span class=bar style='width:{:.1}%'></span></td><td class=num>{v:.4}</td></tr>",
            esc(name),
            100.0 * v / max
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn hits_table(r: &QueryResult) -> String {
    let mut s = String::from("<table id=results><thead><tr><th>#</th><th>Dataset</th><th class=num>Distance</th><th class=num>Images</th><th>Per layer</th></tr></thead><tbody>");
    let max = r
        .results
        .iter()
        .flat_map(|h| h.per_layer.iter().map(|l| l.distance))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    for (i, h) in r.results.iter().enumerate() {
        let mut mini = String::new();
        for l in &h.per_layer {
            let _ = write!(
                mini,
                "<span title='{}: {:.4}' class=bar style='width:{:.1}px;height:{:.1}px;margin-right:1px;vertical-align:bottom'></span>",
                esc(&l.layer),
                l.distance,
                6.0,
                2.0 + 22.0 * l.distance / max
            );
        }
        let _ = write!(
            s,
            "<tr><td>{}</td><td><a href='/d/{}'>{}</a></td><td class=num>{:.6}</td><td class=num>{}</td><td>{mini}</td></tr>",
            i + 1,
            enc(&h.reference),
            esc(&h.reference),
            h.distance,
            h.images
        );
    }
    if r.results.is_empty() {
        s.push_str("<tr><td colspan=5 class=muted>No stored dataset in this space.</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

pub async fn dataset(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    let res = blocking(&st, move |db| {
        let (d, n) = db.resolve(&name)?;
        let stored = db.open_dna(&d)?;
        let ann = db.annotations(n.as_ref())?;
        let card = match &n {
            Some(n) => db.card(n)?,
            None => None,
        };
        let mut layers = Vec::new();
        for (i, spec) in stored.space.layers.iter().enumerate() {
            let buf = stored.layer(i)?;
            layers.push(summarise(&spec.name, buf.view()));
        }
        let q = db.query(
            &AnyDna::Stored(db.open_dna(&d)?),
            &QueryRequest {
                k: 6,
                exclude_self: true,
                per_layer: true,
                mode: Mode::Exact,
                ..Default::default()
            },
        )?;
        Ok((
            d,
            n.map(|n| n.to_string()).unwrap_or_else(|| d.to_string()),
            stored,
            ann,
            layers,
            q,
            card,
        ))
    })
    .await;
    let (d, label, stored, ann, layers, q, card) = res?;
    let hist = matches!(stored.space.dist, DistKind::Histogram { .. });
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1 id=title>{}</h1><p class=muted>{}</p>",
        esc(&label),
        esc(&stored.space.describe())
    );
    if let Some(c) = &card {
        b.push_str(&card_html(c));
    }
    let _ = write!(
        b,
        "<div class=card><dl><dt>Digest</dt><dd class=mono>{}</dd><dt>Space</dt><dd class=mono>{}</dd><dt>Images</dt><dd>{}</dd><dt>Distribution</dt><dd>{}</dd><dt>Weights</dt><dd class=mono>{}</dd><dt>Ranges</dt><dd class=mono>{}</dd><dt>Annotations</dt><dd>{}</dd></dl></div>",
        esc(&d.to_string()),
        esc(&stored.manifest.space.to_string()),
        stored.manifest.images,
        esc(&stored.manifest.dist),
        esc(&stored.space.extractor.weights.map(|w| w.to_string()).unwrap_or_else(|| "unpinned".into())),
        esc(&stored.space.extractor.ranges.map(|w| w.to_string()).unwrap_or_else(|| "unpinned".into())),
        tags(&ann)
    );
    let _ = write!(
        b,
        "<h2>Where the neurons sit, layer by layer</h2><div class=card><p class=muted>Per layer: the spread of its neurons' mean activations (whiskers 5-95%, box 25-75%, white tick the median){}; the faint band is the median plus and minus the neurons' average spread. Open a layer to see each of its neurons.</p><div class=scroll role=region aria-label='where the neurons sit' tabindex=0>{}</div><p class=small>Layers: {}</p></div>",
        if hist { ", in normalised units [-1, 1]" } else { "" },
        layers_svg(&layers, hist.then_some((-1.0, 1.0)), Some(&label)),
        layers
            .iter()
            .map(|l| format!(
                "<a href='/layer?a={}&amp;layer={}'>{}</a>",
                crate::protocol::urlencode(&label),
                crate::protocol::urlencode(&l.name),
                esc(&l.name)
            ))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    let _ = write!(
        b,
        "<h2>Nearest datasets (all neurons)</h2><div class='card scroll' role=region aria-label='nearest datasets' tabindex=0>{}</div>",
        hits_table(&q)
    );
    let _ = write!(
        b,
        "<h2>Layers and blobs</h2><div class='card scroll' role=region aria-label='layers and blobs' tabindex=0><table><thead><tr><th>Layer</th><th class=num>Neurons</th><th>Blob</th></tr></thead><tbody>{}</tbody></table></div>",
        stored
            .manifest
            .layers
            .iter()
            .zip(&stored.space.layers)
            .map(|(l, s)| format!("<tr><td class=mono>{}</td><td class=num>{}</td><td class=mono>{}</td></tr>", esc(&l.name), s.neurons, esc(&l.digest.to_string())))
            .collect::<String>()
    );
    Ok(page(&label, &b).into_response())
}

#[derive(Deserialize, Default)]
pub struct CompareParams {
    a: Option<String>,
    b: Option<String>,
    mask: Option<String>,
}

/// Names offered as suggestions in a dataset field (any stored name is accepted).
const SUGGESTIONS: usize = 500;

/// A text field for a dataset name with the first [`SUGGESTIONS`] names as suggestions:
/// a select of 100,000 options would be a page of its own.
fn dataset_field(label: &str, name: &str, value: &str) -> String {
    format!(
        "<label>{label}<br><input name={name} list=names value='{}' placeholder='name:tag or digest' required></label>",
        esc(value)
    )
}

fn names_datalist(rows: &[Listing]) -> String {
    let mut s = String::from("<datalist id=names>");
    for r in rows.iter().take(SUGGESTIONS) {
        let _ = write!(s, "<option value='{}'></option>", esc(&r.reference));
    }
    s.push_str("</datalist>");
    s
}

/// A dataset card: its fields (title, source, licence, tags, other keys, citation) and
/// its markdown body, rendered safely.
fn card_html(c: &crate::card::CardRecord) -> String {
    let card = crate::card::parse(&c.markdown).unwrap_or_else(|_| crate::card::Card {
        body: c.markdown.clone(),
        ..Default::default()
    });
    let mut s = String::from("<section class='card' id=datacard aria-label='dataset card'>");
    if let Some(t) = &card.title {
        let _ = write!(s, "<h2 style='margin-top:0'>{}</h2>", esc(t));
    }
    let mut fields = String::new();
    if let Some(src) = &card.source {
        let v = if crate::card::safe_url(src) {
            format!("<a href='{0}' rel='nofollow noopener'>{0}</a>", esc(src))
        } else {
            esc(src)
        };
        let _ = write!(fields, "<dt>Source</dt><dd>{v}</dd>");
    }
    if let Some(l) = &card.license {
        let _ = write!(fields, "<dt>Licence</dt><dd>{}</dd>", esc(l));
    }
    if !card.tags.is_empty() {
        let _ = write!(
            fields,
            "<dt>Tags</dt><dd>{}</dd>",
            card.tags
                .iter()
                .map(|t| format!(
                    "<a class=tag href='/?q={}'>#{}</a>",
                    crate::protocol::urlencode(t),
                    esc(t)
                ))
                .collect::<String>()
        );
    }
    for (k, v) in &card.other {
        let _ = write!(fields, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
    }
    if !fields.is_empty() {
        let _ = write!(s, "<dl class=fields>{fields}</dl>");
    }
    let _ = write!(
        s,
        "<div class=cardbody>{}</div>",
        crate::card::render_markdown(&card.body)
    );
    if let Some(cit) = &card.citation {
        let _ = write!(
            s,
            "<h3>Citation</h3><pre class=mono id=citation>{}</pre>",
            esc(cit)
        );
    }
    s.push_str("</section>");
    s
}

pub async fn compare(
    State(st): State<Arc<AppState>>,
    Query(p): Query<CompareParams>,
) -> Result<Response, Response> {
    let (a, bb, mask) = (
        p.a.unwrap_or_default(),
        p.b.unwrap_or_default(),
        p.mask.unwrap_or_else(|| "all".into()),
    );
    let (a2, b2, m2) = (a.clone(), bb.clone(), mask.clone());
    let res = blocking(&st, move |db| {
        let rows = db.listing()?;
        if a2.is_empty() || b2.is_empty() {
            return Ok((rows, None));
        }
        let open = |s: &str| -> Result<AnyDna, ApiError> {
            let (d, _) = db.resolve(s)?;
            Ok(AnyDna::Stored(db.open_dna(&d)?))
        };
        let (da, db_) = (open(&a2)?, open(&b2)?);
        // Every masked neuron's distance, for the layers' heat strips; the table shows
        // the first twelve.
        let all = db.mask(&m2, da.space())?.neurons() as usize;
        let c = db.compare(&da, &db_, &m2, None, all)?;
        Ok((rows, Some(c)))
    })
    .await;
    let (rows, cmp) = res?;
    let mut b = String::from("<h1>Compare two datasets</h1>");
    let _ = write!(
        b,
        "<div class=card><form class=inline method=get action='/compare'>{}{}<label>Mask<br><input name=mask value='{}'></label><button>Compare</button></form>{}</div>",
        dataset_field("A", "a", &a),
        dataset_field("B", "b", &bb),
        esc(&mask),
        names_datalist(&rows)
    );
    if let Some(mut c) = cmp {
        // Per layer: its neurons' distances by index, for the heat strips.
        let mut by_layer: BTreeMap<&str, Vec<(u32, f64)>> = BTreeMap::new();
        for n in &c.top_neurons {
            by_layer
                .entry(n.layer.as_str())
                .or_default()
                .push((n.index, n.distance));
        }
        let hmax = c.top_neurons.first().map(|n| n.distance).unwrap_or(0.0);
        let mut layer_rows = String::new();
        let lmax = c
            .per_layer
            .iter()
            .map(|l| l.distance)
            .fold(0.0f64, f64::max)
            .max(1e-12);
        for l in &c.per_layer {
            let mut v = by_layer.remove(l.layer.as_str()).unwrap_or_default();
            v.sort_by_key(|x| x.0);
            let vals: Vec<f64> = v.iter().map(|x| x.1).collect();
            let href = format!(
                "/layer?a={}&amp;b={}&amp;layer={}&amp;mask={}",
                crate::protocol::urlencode(&a),
                crate::protocol::urlencode(&bb),
                crate::protocol::urlencode(&l.layer),
                crate::protocol::urlencode(&mask)
            );
            let _ = write!(
                layer_rows,
                "<tr><td class=mono><a href='{href}'>{}</a></td><td style='width:35%'><span class=bar style='width:{:.1}%'></span></td><td class=num>{:.4}</td><td class=strip><a href='{href}' tabindex=-1 aria-hidden=true>{}</a></td></tr>",
                esc(&l.layer),
                100.0 * l.distance / lmax,
                l.distance,
                heat_strip(&vals, hmax, 96, &l.layer)
            );
        }
        c.top_neurons.truncate(12);
        let _ = write!(
            b,
            "<div class=card><p id=distance><b>{}</b> {} = <b>{:.6}</b> over {} neurons</p><h2>Per layer</h2><p class='muted small'>The strip shows each layer's neurons left to right, darker where the two datasets differ more (one colour scale for all layers); open a layer to see every neuron and its distributions.</p><div class=scroll role=region aria-label='per-layer distances' tabindex=0><table class=bars><tbody>{layer_rows}</tbody></table></div><h2>Most different neurons</h2>{}</div>",
            esc(&format!("{a} vs {bb}")),
            c.metric.name(),
            c.distance,
            c.neurons,
            bars(&c.top_neurons.iter().map(|n| (format!("{}#{}", n.layer, n.index), n.distance)).collect::<Vec<_>>())
        );
        if !c.top_neurons.is_empty() {
            b.push_str("<div class=card><h2>Their distributions</h2><div class=plots>");
            for n in c.top_neurons.iter().take(3) {
                let url = format!(
                    "/plot/neuron.svg?a={}&amp;b={}&amp;layer={}&amp;neuron={}",
                    crate::protocol::urlencode(&a),
                    crate::protocol::urlencode(&bb),
                    crate::protocol::urlencode(&n.layer),
                    n.index
                );
                let _ = write!(
                    b,
                    "<figure><a href='{url}' tabindex=-1><img src='{url}' width=640 height=320 loading=lazy alt='{}'></a><figcaption>{}#{} · <a href='{url}'>SVG</a></figcaption></figure>",
                    esc(&format!("distributions of neuron {} of layer {} in {a} and {bb}", n.index, n.layer)),
                    esc(&n.layer),
                    n.index
                );
            }
            b.push_str("</div></div>");
        }
    }
    Ok(page("Compare", &b).into_response())
}

/// A heat strip of per-neuron values: at most `cols` cells, each the largest value of the
/// neurons it covers, shaded from pale (0) to dark red (`max`).
fn heat_strip(vals: &[f64], max: f64, cols: usize, layer: &str) -> String {
    let n = vals.len();
    let cols = cols.min(n).max(1);
    let (w, h) = (288.0, 14.0);
    let cw = w / cols as f64;
    let (imax, vmax) =
        vals.iter().enumerate().fold(
            (0, f64::NEG_INFINITY),
            |m, (i, &v)| if v > m.1 { (i, v) } else { m },
        );
    let mut s = format!(
        "<svg class=heat viewBox='0 0 {w} {h}' width='{w}' height='{h}' role=img aria-label='{}'>",
        esc(&format!(
            "{n} neurons of {layer}; largest distance {:.4} at neuron {imax}",
            vmax.max(0.0)
        ))
    );
    for c in 0..cols {
        let (lo, hi) = (c * n / cols, ((c + 1) * n / cols).max(c * n / cols + 1));
        let v = vals[lo..hi.min(n)].iter().cloned().fold(0.0f64, f64::max);
        let _ = write!(
            s,
            "<rect x='{:.2}' width='{:.2}' height='{h}' fill='{}'/>",
            c as f64 * cw,
            cw + 0.05,
            heat(v / max.max(1e-300))
        );
    }
    s.push_str("</svg>");
    s
}

/// A colour from pale blue-white (0) through orange to dark red (1).
fn heat(t: f64) -> String {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let stops = [
        (0.0, [244.0, 246.0, 252.0]),
        (0.35, [253.0, 204.0, 138.0]),
        (0.7, [227.0, 74.0, 51.0]),
        (1.0, [127.0, 0.0, 0.0]),
    ];
    let i = stops
        .iter()
        .rposition(|s| s.0 <= t)
        .unwrap_or(0)
        .min(stops.len() - 2);
    let (a, b) = (stops[i], stops[i + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    let c: Vec<u8> = (0..3)
        .map(|k| (a.1[k] + (b.1[k] - a.1[k]) * f).round() as u8)
        .collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

#[derive(Deserialize, Default)]
pub struct LayerParams {
    a: Option<String>,
    b: Option<String>,
    layer: Option<String>,
    neuron: Option<usize>,
}

/// Neurons per row of the layer page's grid.
const GRID_COLS: usize = 64;

/// `GET /layer?a=A[&b=B]&layer=L[&neuron=I]`: every neuron of one layer as a grid of
/// cells, shaded by its distance between A and B (or, for A alone, by its mean
/// activation), each cell a link to that neuron's distributions; with `neuron`, that
/// neuron's plot is shown on the page. Works without JavaScript; with it, a click shows
/// the plot without reloading.
pub async fn layer_page(
    State(st): State<Arc<AppState>>,
    Query(p): Query<LayerParams>,
) -> Result<Response, Response> {
    let (Some(a), Some(layer)) = (p.a.filter(|s| !s.is_empty()), p.layer) else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "give a (a dataset) and layer (a layer name); b (a second dataset) and neuron are optional",
        ));
    };
    let b = p.b.filter(|s| !s.is_empty());
    let (a2, b2, l2) = (a.clone(), b.clone(), layer.clone());
    let (vals, metric) = blocking(&st, move |db| {
        let mut views = Vec::new();
        let mut space = None;
        for spec in std::iter::once(&a2).chain(b2.as_ref()) {
            let (d, _) = db.resolve(spec)?;
            let dna = db.open_dna(&d)?;
            if space.is_some_and(|s| s != dna.manifest.space) {
                return Err(ApiError::from(crate::Error::SpaceMismatch(format!(
                    "{a2} and {spec} are DNAs of different spaces"
                ))));
            }
            space = Some(dna.manifest.space);
            let names: Vec<&str> = dna.space.layers.iter().map(|l| l.name.as_str()).collect();
            let li = names.iter().position(|l| *l == l2).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no layer {l2:?} in the space of {spec} (its layers: {})",
                    names.join(", ")
                ))
            })?;
            views.push(dna.layer(li)?);
        }
        let va = views[0].view();
        let out = match views.get(1).map(|v| v.view()) {
            Some(vb) => match (va, vb) {
                (
                    LayerView::Histogram {
                        bins,
                        counts: ca,
                        neurons,
                    },
                    LayerView::Histogram { counts: cb, .. },
                ) => (
                    (0..neurons)
                        .map(|i| {
                            crate::distance::emd_neuron(
                                &ca[i * bins..(i + 1) * bins],
                                &cb[i * bins..(i + 1) * bins],
                            )
                        })
                        .collect(),
                    "EMD",
                ),
                (
                    LayerView::Gaussian { mean: ma, var: xa },
                    LayerView::Gaussian { mean: mb, var: xb },
                ) => (
                    (0..ma.len())
                        .map(|i| crate::distance::nfd_neuron(ma[i], xa[i], mb[i], xb[i]))
                        .collect(),
                    "NFD",
                ),
                _ => return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid",
                    "this layer keeps no distribution per neuron (layer-Gaussian or ranges DNAs)",
                )),
            },
            None => (neuron_moments(va).0, "mean"),
        };
        Ok(out)
    })
    .await?;
    let n = vals.len();
    let pair = b.is_some();
    let q = |extra: &str| {
        format!(
            "a={}{}&amp;layer={}{extra}",
            crate::protocol::urlencode(&a),
            b.as_deref()
                .map(|b| format!("&amp;b={}", crate::protocol::urlencode(b)))
                .unwrap_or_default(),
            crate::protocol::urlencode(&layer)
        )
    };
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |m, &v| {
            (m.0.min(v), m.1.max(v))
        });
    let (lo, hi) = if pair { (0.0, hi) } else { (lo, hi) };
    let span = (hi - lo).max(1e-300);
    let mut body = format!(
        "<h1>Layer {}</h1><p class=muted>{} neurons of {}{}. {}</p>",
        esc(&layer),
        n,
        esc(&a),
        b.as_deref()
            .map(|b| format!(" against {}", esc(b)))
            .unwrap_or_default(),
        if pair {
            format!("Each cell is one neuron, darker where its {metric} between the two datasets is larger (largest {hi:.4}).")
        } else {
            "Each cell is one neuron, shaded by its mean activation (pale: lowest, dark: highest)."
                .to_string()
        }
    );
    // The grid: cells link to the neuron; not tab stops (the form and list below are).
    let rows = n.div_ceil(GRID_COLS).max(1);
    let cell = 10.0;
    let _ = write!(
        body,
        "<div class='card scroll' role=region aria-label='neurons' tabindex=0><p class='small muted'>{}; pick a neuron below to see its distribution{}.</p><svg id=grid viewBox='0 0 {w} {h}' width='{w}' height='{h}' aria-hidden=true>",
        esc(&format!("{n} neurons of layer {layer}, one cell each, shaded by {metric}")),
        if pair { "s" } else { "" },
        w = GRID_COLS as f64 * cell,
        h = rows as f64 * cell,
    );
    for (i, v) in vals.iter().enumerate() {
        let _ = write!(
            body,
            "<a href='/layer?{}#plot' tabindex=-1 data-neuron={i}><rect x='{}' y='{}' width='{c}' height='{c}' fill='{}' stroke='#fff' stroke-width='0.5'><title>neuron {i}: {metric} {v:.5}</title></rect></a>",
            q(&format!("&amp;neuron={i}")),
            (i % GRID_COLS) as f64 * cell,
            (i / GRID_COLS) as f64 * cell,
            heat((v - lo) / span),
            c = cell,
        );
    }
    body.push_str("</svg></div>");
    // Keyboard and no-pointer way in: a neuron number, and the ten most notable.
    let _ = write!(
        body,
        "<div class=card><form class=inline method=get action='/layer'><input type=hidden name=a value='{}'>{}<input type=hidden name=layer value='{}'><label>Neuron (0-{})<br><input type=number name=neuron min=0 max={} value='{}'></label><button>Show its distribution{}</button></form>",
        esc(&a),
        b.as_deref().map(|b| format!("<input type=hidden name=b value='{}'>", esc(b))).unwrap_or_default(),
        esc(&layer),
        n.saturating_sub(1),
        n.saturating_sub(1),
        p.neuron.map(|x| x.to_string()).unwrap_or_default(),
        if pair { "s" } else { "" }
    );
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| vals[y].total_cmp(&vals[x]));
    let _ = write!(
        body,
        "<p class=small>{}: {}</p></div>",
        if pair {
            "Most different"
        } else {
            "Highest mean"
        },
        order
            .iter()
            .take(10)
            .map(|&i| format!(
                "<a href='/layer?{}#plot'>#{i}</a> ({:.4})",
                q(&format!("&amp;neuron={i}")),
                vals[i]
            ))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    let plot = |i: usize| format!("/plot/neuron.svg?{}", q(&format!("&amp;neuron={i}")));
    match p.neuron.filter(|&i| i < n) {
        Some(i) => {
            let _ = write!(
                body,
                "<figure class=card id=plot><img id=plotimg src='{0}' width=640 height=320 alt='{1}'><figcaption id=plotcap>{2}#{i}: {metric} {3:.6} · <a id=plotlink href='{0}'>SVG</a></figcaption></figure>",
                plot(i),
                esc(&format!("distributions of neuron {i} of layer {layer}")),
                esc(&layer),
                vals[i]
            );
        }
        None => body.push_str("<figure class=card id=plot hidden><img id=plotimg width=640 height=320 alt=''><figcaption id=plotcap></figcaption></figure>"),
    }
    // With JavaScript: a click on a cell shows its plot in place.
    body.push_str("<script>document.getElementById('grid').addEventListener('click',function(e){var a=e.target.closest('a[data-neuron]');if(!a)return;e.preventDefault();var i=a.getAttribute('data-neuron'),u=new URL(a.getAttribute('href'),location.href);var f=document.getElementById('plot'),im=document.getElementById('plotimg');im.src='/plot/neuron.svg'+u.search;im.alt='distributions of neuron '+i;document.getElementById('plotcap').textContent='neuron '+i+': '+a.querySelector('title').textContent;f.hidden=false;history.replaceState(null,'',u.pathname+u.search+'#plot');f.scrollIntoView({block:'nearest'});});</script>");
    Ok(page(&format!("Layer {layer}"), &body).into_response())
}

#[derive(Deserialize, Default)]
pub struct QueryParams {
    #[serde(rename = "ref")]
    reference: Option<String>,
    mask: Option<String>,
    k: Option<usize>,
}

fn query_form(rows: &[Listing], p: &QueryParams, uploads: &UploadChoices) -> String {
    let mask = p.mask.clone().unwrap_or_else(|| "all".into());
    let k = p.k.unwrap_or(5);
    let images = if uploads.max_images == 0 {
        "<p class=muted>Image uploads are turned off on this server.</p>".to_string()
    } else if uploads.spaces.is_empty() {
        "<p class=muted>No space in this catalogue is one this server can extract images into (its networks with their shipped weights).</p>".to_string()
    } else {
        format!(
            "<form class=inline method=post action='/query/files' enctype='multipart/form-data'><input type=hidden name=mask value='{m}'><input type=hidden name=k value='{k}'><label>Space<br><select name=space>{opts}</select></label><label>Images or one .zip<br><input type=file name=images multiple accept='image/*,.zip' required></label><button>Extract and query</button></form><p class='muted small'>At most {n} images and {mb} in all, extracted on this server with the space's network (one core per query, queued with the others).</p>",
            m = esc(&mask),
            opts = uploads
                .spaces
                .iter()
                .map(|(d, label)| format!("<option value='{}'>{}</option>", esc(&d.to_string()), esc(label)))
                .collect::<String>(),
            n = uploads.max_images,
            mb = human(uploads.max_bytes as u64),
        )
    };
    format!(
        "<div class=card><form class=inline method=get action='/query'>{}{}<label>Mask<br><input name=mask value='{}'></label><label>Top<br><input name=k type=number min=1 max=100 value='{}'></label><button>Query</button></form></div>\
         <div class=card><h2 style='margin-top:0'>Query with your own images</h2>{images}</div>\
         <div class=card><form class=inline method=post action='/query/upload?mask={}&k={}' enctype='multipart/form-data'><label>Or upload a .vdna bundle<br><input type=file name=bundle accept='.vdna' required></label><button>Upload and query</button></form>\
         <form class=inline method=post action='/query/files' enctype='multipart/form-data' style='margin-top:12px'><input type=hidden name=mask value='{}'><input type=hidden name=k value='{k}'><label>Or a reference pair (.json and .npz)<br><input type=file name=pair multiple accept='.json,.npz' required></label><button>Upload and query</button></form>\
         <p class=muted>From the command line: <code>curl --data-binary @mine.vdna '/query/upload?mask=all&amp;k=5'</code>, <code>curl -F space=sha256:… -F images=@photos.zip /query/files</code> or <code>vdna-db --remote URL query mine.vdna</code>.</p></div>",
        dataset_field("Dataset", "ref", p.reference.as_deref().unwrap_or("")),
        names_datalist(rows),
        esc(&mask),
        k,
        enc(&mask),
        k,
        esc(&mask),
    )
}

/// What the image upload form offers: the spaces this server extracts into, and limits.
struct UploadChoices {
    spaces: Vec<(crate::format::Digest, String)>,
    max_images: usize,
    max_bytes: usize,
}

/// The spaces of the catalogue that images can be extracted into here.
fn upload_choices(db: &Engine, limits: &super::Limits) -> Result<UploadChoices, ApiError> {
    let mut spaces = Vec::new();
    #[cfg(feature = "extract")]
    if limits.upload_images > 0 {
        for (d, s) in db.spaces()? {
            if db.can_extract_into(&d) {
                spaces.push((d, s.description));
            }
        }
    }
    #[cfg(not(feature = "extract"))]
    let _ = db;
    Ok(UploadChoices {
        spaces,
        max_images: if cfg!(feature = "extract") {
            limits.upload_images
        } else {
            0
        },
        max_bytes: limits.upload_bytes,
    })
}

pub async fn query_page(
    State(st): State<Arc<AppState>>,
    Query(p): Query<QueryParams>,
) -> Result<Response, Response> {
    let (r2, m2, k) = (
        p.reference.clone(),
        p.mask.clone().unwrap_or_else(|| "all".into()),
        p.k.unwrap_or(5).clamp(1, 100),
    );
    let limits = st.limits.clone();
    let res = blocking(&st, move |db| {
        let rows = db.listing()?;
        let uploads = upload_choices(db, &limits)?;
        let Some(r) = r2.filter(|r| !r.is_empty()) else {
            return Ok((rows, uploads, None));
        };
        let (d, _) = db.resolve(&r)?;
        let q = exact_query(db, &AnyDna::Stored(db.open_dna(&d)?), m2, k)?;
        Ok((rows, uploads, Some(q)))
    })
    .await;
    let (rows, uploads, q) = res?;
    let mut b = String::from("<h1>Which datasets look like this one?</h1>");
    b.push_str(&query_form(&rows, &p, &uploads));
    if let Some(q) = q {
        let _ = write!(b, "<div class=card><p class=muted>{} distance over {} neurons, mask <code>{}</code>; {} exact distances in {:.1} ms.</p><div class=scroll role=region aria-label='results' tabindex=0>{}</div></div>", q.metric.name(), q.neurons, esc(&q.mask), q.plan.exact_computed, q.plan.total_ms, hits_table(&q));
    }
    Ok(page("Query", &b).into_response())
}

/// The exact top-k of the query pages, with per-layer distances.
fn exact_query(db: &Engine, q: &AnyDna, mask: String, k: usize) -> Result<QueryResult, ApiError> {
    Ok(db.query(
        q,
        &QueryRequest {
            mask,
            k,
            per_layer: true,
            mode: Mode::Exact,
            ..Default::default()
        },
    )?)
}

/// A bundle posted as the raw body (or a single-file multipart form) to query with.
pub async fn query_upload(
    State(st): State<Arc<AppState>>,
    Query(p): Query<QueryParams>,
    body: Bytes,
) -> Result<Response, Response> {
    let bytes = strip_multipart(&body).unwrap_or(&body).to_vec();
    let (m2, k) = (
        p.mask.clone().unwrap_or_else(|| "all".into()),
        p.k.unwrap_or(5).clamp(1, 100),
    );
    let limits = st.limits.clone();
    let res = blocking(&st, move |db| {
        let rows = db.listing()?;
        let uploads = upload_choices(db, &limits)?;
        let (dna, _) = crate::engine::dna_of_bundle_bytes(&bytes).map_err(|e| {
            ApiError::bad_request(format!("the upload is not a valid .vdna bundle: {e}"))
        })?;
        let q = exact_query(db, &AnyDna::Owned(dna), m2, k)?;
        Ok((rows, uploads, q))
    })
    .await;
    let (rows, uploads, q) = res?;
    let mut b = String::from("<h1>Results for the uploaded DNA</h1>");
    b.push_str(&query_form(&rows, &p, &uploads));
    let _ = write!(
        b,
        "<div class='card scroll' role=region aria-label='results' tabindex=0>{}</div>",
        hits_table(&q)
    );
    Ok(page("Query", &b).into_response())
}

/// A directory removed when dropped: where one upload's files wait for extraction.
struct UploadDir(std::path::PathBuf);

impl Drop for UploadDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file name's extension, lower-cased and kept only if plain (letters and digits).
fn plain_ext(name: &str) -> String {
    let ext = name
        .rsplit_once('.')
        .map(|x| x.1)
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ext.is_empty() && ext.len() <= 5 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
        ext
    } else {
        String::new()
    }
}

fn too_large(msg: String) -> Response {
    error_page(StatusCode::PAYLOAD_TOO_LARGE, &msg)
}

/// `POST /query/files`: a `multipart/form-data` form with either images (`images`: image
/// files, or one `.zip` of them; `space`: the stored space to extract them into) or a
/// reference pair (`pair`: a `.json` and its `.npz`), plus `mask` and `k`. Images are
/// extracted here with the space's network on one core, waiting for a free core like
/// every query; files past the server's limits (`serve --upload-images`,
/// `--upload-bytes`) are refused with a 413 that says the limit, before any extraction.
pub async fn query_files(
    State(st): State<Arc<AppState>>,
    mut form: axum::extract::Multipart,
) -> Result<Response, Response> {
    let limits = st.limits.clone();
    let (mut mask, mut k, mut space) = ("all".to_string(), 5usize, None::<String>);
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    let mut pair: Vec<(String, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("the form could not be read: {e}"),
                ))
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().map(str::to_string);
        let mut field = field;
        let mut bytes = Vec::new();
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    total += c.len();
                    if total > limits.upload_bytes {
                        return Err(too_large(format!(
                            "the upload is larger than this server takes ({} at most): send fewer or smaller images, or extract locally with `vdna-db extract` and upload the .vdna bundle",
                            human(limits.upload_bytes as u64)
                        )));
                    }
                    bytes.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(error_page(
                        StatusCode::BAD_REQUEST,
                        &format!("the form could not be read: {e}"),
                    ))
                }
            }
        }
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        match (name.as_str(), file) {
            ("mask", _) => mask = text(),
            ("k", _) => {
                k = text().parse::<usize>().map_err(|_| {
                    error_page(
                        StatusCode::BAD_REQUEST,
                        "k: give the number of results, 1 to 100",
                    )
                })?
            }
            ("space", _) => space = Some(text()),
            ("images", Some(f)) if !bytes.is_empty() => images.push((f, bytes)),
            ("pair", Some(f)) if !bytes.is_empty() => pair.push((f, bytes)),
            _ => {}
        }
    }
    let k = k.clamp(1, 100);
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = UploadDir(std::env::temp_dir().join(format!(
        "vdna-db-upload-{}-{}-{}",
        std::process::id(),
        UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    )));
    std::fs::create_dir(&dir.0).map_err(|e| web_err(ApiError::internal(e)))?;
    let io = |e: std::io::Error| web_err(ApiError::internal(e));
    let write = |name: &str, bytes: &[u8]| -> std::io::Result<std::path::PathBuf> {
        let p = dir.0.join(name);
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    enum Upload {
        Pair(std::path::PathBuf),
        Images(std::path::PathBuf, crate::format::Digest, usize),
    }
    let upload = if !pair.is_empty() {
        let json = pair
            .iter()
            .filter(|f| plain_ext(&f.0) == "json")
            .collect::<Vec<_>>();
        let npz = pair
            .iter()
            .filter(|f| plain_ext(&f.0) == "npz")
            .collect::<Vec<_>>();
        if json.len() != 1 || npz.len() != 1 || pair.len() != 2 {
            return Err(error_page(
                StatusCode::BAD_REQUEST,
                "a reference pair is one .json file and its .npz, as the reference library writes them",
            ));
        }
        write("pair.npz", &npz[0].1).map_err(io)?;
        Upload::Pair(write("pair.json", &json[0].1).map_err(io)?)
    } else if !images.is_empty() {
        if limits.upload_images == 0 || cfg!(not(feature = "extract")) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "this server does not extract uploaded images: extract locally with `vdna-db extract` and upload the .vdna bundle",
            ));
        }
        let Some(space) = space.filter(|s| !s.is_empty()) else {
            return Err(error_page(
                StatusCode::BAD_REQUEST,
                "give space: the space (sha256:…) to extract the images into",
            ));
        };
        let space: crate::format::Digest = space.parse().map_err(|_| {
            error_page(
                StatusCode::BAD_REQUEST,
                "space: not a space digest (sha256: and 64 hex digits)",
            )
        })?;
        let zip = images.len() == 1 && plain_ext(&images[0].0) == "zip";
        if !zip && images.len() > limits.upload_images {
            return Err(too_large(format!(
                "{} images sent; this server extracts at most {} per query (extract locally with `vdna-db extract` and upload the .vdna bundle)",
                images.len(),
                limits.upload_images
            )));
        }
        let source = if zip {
            write("images.zip", &images[0].1).map_err(io)?
        } else {
            let sub = dir.0.join("images");
            std::fs::create_dir_all(&sub).map_err(|e| web_err(ApiError::internal(e)))?;
            for (i, (name, bytes)) in images.iter().enumerate() {
                let ext = plain_ext(name);
                std::fs::write(
                    sub.join(format!(
                        "{i:05}.{}",
                        if ext.is_empty() { "img" } else { &ext }
                    )),
                    bytes,
                )
                .map_err(|e| web_err(ApiError::internal(e)))?;
            }
            sub
        };
        Upload::Images(source, space, limits.upload_images)
    } else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "the form holds no file: choose images (or one .zip), or a reference .json and .npz",
        ));
    };
    // Extraction and query wait for a free core, as every query does.
    let _permit = st
        .heavy
        .acquire()
        .await
        .map_err(|e| web_err(ApiError::internal(e)))?;
    let (m2, limits2) = (mask.clone(), limits.clone());
    let res = blocking(&st, move |db| {
        let rows = db.listing()?;
        let uploads = upload_choices(db, &limits2)?;
        let (dna, what) = match &upload {
            Upload::Pair(json) => {
                let (dna, _) = crate::engine::read_dna_file(json).map_err(|e| {
                    ApiError::bad_request(format!("the reference pair could not be read: {e}"))
                })?;
                (dna, "the uploaded reference pair".to_string())
            }
            #[cfg(feature = "extract")]
            Upload::Images(source, space, max) => {
                let t = std::time::Instant::now();
                let (dna, report) = db.extract_into_space(source, space, *max, 1).map_err(|e| {
                    let msg = e.to_string();
                    if msg.contains("at most") {
                        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", msg)
                    } else if matches!(e, crate::Error::Extract(_)) {
                        ApiError::bad_request(format!("the images could not be extracted: {msg}"))
                    } else {
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", msg)
                    }
                })?;
                (
                    dna,
                    format!(
                        "{} uploaded image{} (extracted in {:.1} s{})",
                        report.images,
                        if report.images == 1 { "" } else { "s" },
                        t.elapsed().as_secs_f64(),
                        if report.skipped.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; skipped {}: {}",
                                report.skipped.len(),
                                report
                                    .skipped
                                    .iter()
                                    .take(3)
                                    .map(|(n, why)| format!(
                                        "{} ({why})",
                                        n.rsplit('/').next().unwrap_or(n)
                                    ))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ),
                )
            }
            #[cfg(not(feature = "extract"))]
            Upload::Images(..) => unreachable!("refused above"),
        };
        let q = exact_query(db, &AnyDna::Owned(dna), m2, k)?;
        Ok((rows, uploads, q, what))
    })
    .await;
    drop(dir);
    let (rows, uploads, q, what) = res?;
    let p = QueryParams {
        reference: None,
        mask: Some(mask),
        k: Some(k),
    };
    let mut b = format!("<h1>Results for {}</h1>", esc(&what));
    let _ = write!(
        b,
        "<div class=card><p class=muted id=uploaded>{} distance over {} neurons, mask <code>{}</code>.</p><div class=scroll role=region aria-label='results' tabindex=0>{}</div></div>",
        q.metric.name(),
        q.neurons,
        esc(&q.mask),
        hits_table(&q)
    );
    b.push_str(&query_form(&rows, &p, &uploads));
    Ok(page("Query", &b).into_response())
}

/// The file part of a `multipart/form-data` body with one file field, if `body` is one.
fn strip_multipart(body: &[u8]) -> Option<&[u8]> {
    if !body.starts_with(b"--") {
        return None;
    }
    let eol = body.windows(2).position(|w| w == b"\r\n")?;
    let boundary = &body[..eol];
    let start = body.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut close = b"\r\n".to_vec();
    close.extend_from_slice(boundary);
    let end = body[start..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?
        + start;
    Some(&body[start..end])
}

/// Favicon requests get an empty answer instead of an error page.
pub async fn favicon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "max-age=86400")],
    )
        .into_response()
}

#[derive(Deserialize, Default)]
pub struct NeuronPlotParams {
    a: Option<String>,
    b: Option<String>,
    layer: Option<String>,
    neuron: Option<usize>,
}

/// One neuron's distribution in one DNA.
enum NeuronDist {
    /// Counts per bin.
    Hist(Vec<u32>),
    /// Mean and variance.
    Gauss(f64, f64),
}

/// `GET /plot/neuron.svg?a=A[&b=B]&layer=L&neuron=I`: neuron I of layer L in dataset A, or
/// in A and B overlaid (histograms as step plots of the bin frequencies over the space's
/// normalised range, Gaussians as density curves), titled with their per-neuron EMD or
/// NFD. A standalone SVG, to open from the compare page or embed in a paper or notebook.
pub async fn neuron_plot(
    State(st): State<Arc<AppState>>,
    Query(p): Query<NeuronPlotParams>,
) -> Result<Response, Response> {
    let (Some(a), Some(layer), Some(neuron)) = (p.a, p.layer, p.neuron) else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "give a (a dataset), layer (a layer name) and neuron (its index); b (a second dataset) is optional",
        ));
    };
    let b = p.b.filter(|s| !s.is_empty());
    let svg = blocking(&st, move |db| {
        let mut series = Vec::new();
        let mut range = [-1.0, 1.0];
        let mut space = None;
        for spec in std::iter::once(&a).chain(b.as_ref()) {
            let (d, n) = db.resolve(spec)?;
            let dna = db.open_dna(&d)?;
            if let Some(s) = space {
                if s != dna.manifest.space {
                    return Err(ApiError::from(crate::Error::SpaceMismatch(format!(
                        "{a} and {spec} are DNAs of different spaces"
                    ))));
                }
            }
            space = Some(dna.manifest.space);
            range = dna.space.hist_range.unwrap_or(range);
            let names: Vec<&str> = dna.space.layers.iter().map(|l| l.name.as_str()).collect();
            let li = names.iter().position(|l| *l == layer).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no layer {layer:?} in the space of {spec} (its layers: {})",
                    names.join(", ")
                ))
            })?;
            let buf = dna.layer(li)?;
            let view = buf.view();
            if neuron >= view.neurons() {
                return Err(ApiError::not_found(format!(
                    "layer {layer} has {} neurons; neuron {neuron} is past its end",
                    view.neurons()
                )));
            }
            let dist = match view {
                crate::format::LayerView::Histogram { bins, counts, .. } => {
                    NeuronDist::Hist(counts[neuron * bins..(neuron + 1) * bins].to_vec())
                }
                crate::format::LayerView::Gaussian { mean, var } => {
                    NeuronDist::Gauss(mean[neuron], var[neuron])
                }
                _ => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid",
                        format!(
                            "{spec}: a {} DNA keeps no distribution per neuron",
                            dna.manifest.dist
                        ),
                    ))
                }
            };
            let label = n.map(|n| n.to_string()).unwrap_or_else(|| d.short());
            series.push((label, dist));
        }
        Ok(neuron_svg(&layer, neuron, range, &series))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// The SVG of [`neuron_plot`]: 640 x 320, one path per dataset.
fn neuron_svg(
    layer: &str,
    neuron: usize,
    range: [f64; 2],
    series: &[(String, NeuronDist)],
) -> String {
    const W: f64 = 640.0;
    const H: f64 = 320.0;
    const L: f64 = 48.0;
    const R: f64 = 16.0;
    const T: f64 = 56.0;
    const B: f64 = 32.0;
    const COLORS: [&str; 2] = ["#3b5bdb", "#e8590c"];
    // Each series as points (x in data units, y a density or a frequency).
    let mut curves: Vec<Vec<(f64, f64)>> = Vec::new();
    let (mut x0, mut x1) = (range[0], range[1]);
    let gauss: Vec<(f64, f64)> = series
        .iter()
        .filter_map(|(_, d)| match d {
            NeuronDist::Gauss(m, v) => Some((*m, v.max(1e-12).sqrt())),
            NeuronDist::Hist(_) => None,
        })
        .collect();
    if !gauss.is_empty() {
        x0 = gauss
            .iter()
            .map(|(m, s)| m - 4.0 * s)
            .fold(f64::INFINITY, f64::min);
        x1 = gauss
            .iter()
            .map(|(m, s)| m + 4.0 * s)
            .fold(f64::NEG_INFINITY, f64::max);
    }
    for (_, d) in series {
        curves.push(match d {
            NeuronDist::Hist(c) => {
                let total: u64 = c.iter().map(|&x| x as u64).sum::<u64>().max(1);
                let w = (range[1] - range[0]) / c.len().max(1) as f64;
                // A step plot: each bin's frequency held across the bin.
                let mut pts = Vec::with_capacity(2 * c.len());
                for (i, &n) in c.iter().enumerate() {
                    let f = n as f64 / total as f64;
                    pts.push((range[0] + i as f64 * w, f));
                    pts.push((range[0] + (i + 1) as f64 * w, f));
                }
                pts
            }
            NeuronDist::Gauss(m, v) => {
                let s = v.max(1e-12).sqrt();
                (0..=200)
                    .map(|i| {
                        let x = x0 + (x1 - x0) * i as f64 / 200.0;
                        let z = (x - m) / s;
                        (
                            x,
                            (-0.5 * z * z).exp() / (s * (2.0 * std::f64::consts::PI).sqrt()),
                        )
                    })
                    .collect()
            }
        });
    }
    let ymax = curves
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let sx = |x: f64| L + (x - x0) / (x1 - x0).max(1e-300) * (W - L - R);
    let sy = |y: f64| H - B - y / ymax * (H - T - B);
    let distance = match (series.first(), series.get(1)) {
        (Some((_, NeuronDist::Hist(a))), Some((_, NeuronDist::Hist(b)))) => {
            Some(("EMD", crate::distance::emd_neuron(a, b)))
        }
        (Some((_, NeuronDist::Gauss(m1, v1))), Some((_, NeuronDist::Gauss(m2, v2)))) => {
            Some(("NFD", crate::distance::nfd_neuron(*m1, *v1, *m2, *v2)))
        }
        _ => None,
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}' font-family='sans-serif' font-size='12' role='img' aria-label='{}'>",
        esc(&format!("neuron {neuron} of layer {layer}"))
    );
    let _ = write!(
        s,
        "<rect width='{W}' height='{H}' fill='#fff'/><text x='{L}' y='20' font-size='14' font-weight='bold'>{}#{neuron}</text>",
        esc(layer)
    );
    if let Some((name, d)) = distance {
        let _ = write!(
            s,
            "<text id='distance' x='{}' y='20' text-anchor='end' data-metric='{name}' data-distance='{d:e}'>{name} = {d:.6}</text>",
            W - R
        );
    }
    for (i, ((label, _), pts)) in series.iter().zip(&curves).enumerate() {
        let color = COLORS[i % 2];
        let _ = write!(
            s,
            "<text x='{}' y='40' fill='{color}'>{} {}</text>",
            L + i as f64 * 280.0,
            if i == 0 { "A" } else { "B" },
            esc(label)
        );
        let d: String = pts
            .iter()
            .enumerate()
            .map(|(j, (x, y))| {
                format!(
                    "{}{:.2},{:.2}",
                    if j == 0 { 'M' } else { 'L' },
                    sx(*x),
                    sy(*y)
                )
            })
            .collect();
        let _ = write!(
            s,
            "<path class='dist' d='{d}' fill='none' stroke='{color}' stroke-width='1.5' stroke-opacity='0.9'/>"
        );
    }
    // Axes: the x range at both ends and the y scale's top.
    let _ = write!(
        s,
        "<line x1='{L}' y1='{y}' x2='{x2}' y2='{y}' stroke='#888'/><line x1='{L}' y1='{T}' x2='{L}' y2='{y}' stroke='#888'/>\
         <text x='{L}' y='{ty}' text-anchor='start'>{x0:.3}</text><text x='{mid}' y='{ty}' text-anchor='middle' fill='#666'>{xcap}</text><text x='{x2}' y='{ty}' text-anchor='end'>{x1:.3}</text>\
         <text x='{lx}' y='{T}' text-anchor='end' dominant-baseline='middle'>{ymax:.3}</text><text x='{lx}' y='{y}' text-anchor='end'>0</text></svg>",
        y = H - B,
        x2 = W - R,
        ty = H - B + 16.0,
        lx = L - 4.0,
        mid = (L + W - R) / 2.0,
        xcap = if gauss.is_empty() {
            "activation, normalised (bin frequency)"
        } else {
            "activation (density)"
        },
    );
    s
}

/// The OpenAPI document the server implements, as shipped in schema/.
pub const OPENAPI: &str = include_str!("../../schema/openapi.json");

/// `GET /openapi.json`: the API's contract, for clients and code generators.
pub async fn openapi_json() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        OPENAPI,
    )
        .into_response()
}

/// One schema in a line: its `$ref` name as a link, or its type with its bounds.
fn schema_brief(s: &serde_json::Value) -> String {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href='#schema-{0}'>{0}</a>", esc(name));
    }
    if let Some(alts) = s["oneOf"].as_array().or(s["anyOf"].as_array()) {
        return alts
            .iter()
            .map(schema_brief)
            .collect::<Vec<_>>()
            .join(" or ");
    }
    let ty = match &s["type"] {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    let mut out = esc(&ty);
    if ty == "array" {
        out = format!("array of {}", schema_brief(&s["items"]));
    }
    let mut notes = Vec::new();
    if let Some(e) = s["enum"].as_array() {
        notes.push(format!(
            "one of {}",
            e.iter()
                .map(|v| format!("<code>{}</code>", esc(v.to_string().trim_matches('"'))))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (k, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
    ] {
        if let Some(v) = s[k].as_f64() {
            notes.push(format!("{label} {v}"));
        }
    }
    if let Some(p) = s["pattern"].as_str() {
        notes.push(format!("matching <code>{}</code>", esc(p)));
    }
    if let Some(d) = s.get("default") {
        notes.push(format!("default <code>{}</code>", esc(&d.to_string())));
    }
    if !notes.is_empty() {
        out = format!("{out} <span class=muted>({})</span>", notes.join(", "));
    }
    out
}

/// A table of an object schema's properties.
fn props_table(s: &serde_json::Value, label: &str) -> String {
    let Some(props) = s["properties"].as_object() else {
        return String::new();
    };
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut t = format!(
        "<div class=scroll role=region aria-label='{}' tabindex=0>",
        esc(label)
    );
    t.push_str("<table class=api><thead><tr><th>Field</th><th>Type</th><th>Description</th></tr></thead><tbody>");
    for (name, p) in props {
        let _ = write!(
            t,
            "<tr><td class=mono>{}{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            if required.contains(&name.as_str()) {
                " <span class=muted>required</span>"
            } else {
                ""
            },
            schema_brief(p),
            esc(p["description"].as_str().unwrap_or(""))
        );
    }
    t.push_str("</tbody></table></div>");
    t
}

/// `GET /docs`: the HTTP API's reference, rendered from schema/openapi.json (the
/// document the contract tests hold the server to), with no script.
pub async fn api_docs() -> Result<Response, Response> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI)
        .map_err(|e| error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let mut b = String::from("<h1>HTTP API</h1>");
    let _ = write!(
        b,
        "<p class=muted>{} Version {}. Requests and answers are JSON unless said otherwise; errors are <code>{{\"error\": {{\"code\", \"message\"}}}}</code>. Writes need <code>Authorization: Bearer TOKEN</code> (<code>vdna-db token create</code>). The machine-readable document is <a href='/openapi.json'>/openapi.json</a>.</p>",
        esc(doc["info"]["description"].as_str().unwrap_or("")),
        esc(doc["info"]["version"].as_str().unwrap_or("?"))
    );
    let methods = ["get", "head", "post", "put", "delete"];
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    b.push_str("<nav class=card aria-label='operations'><ul class=toc>");
    for (path, item) in paths {
        for m in methods {
            if let Some(op) = item.get(m) {
                let _ = write!(
                    b,
                    "<li><a href='#{m}-{id}'><span class='verb {m}'>{M}</span> <code>{p}</code></a> <span class=muted>{s}</span></li>",
                    id = enc(path).replace(['/', '{', '}', '%'], "_"),
                    M = m.to_uppercase(),
                    p = esc(path),
                    s = esc(op["summary"].as_str().unwrap_or(""))
                );
            }
        }
    }
    b.push_str("</ul></nav>");
    for (path, item) in paths {
        let shared: Vec<serde_json::Value> =
            item["parameters"].as_array().cloned().unwrap_or_default();
        for m in methods {
            let Some(op) = item.get(m) else { continue };
            let _ = write!(
                b,
                "<section class=card id='{m}-{id}'><h2><span class='verb {m}'>{M}</span> <code>{p}</code></h2><p>{s}</p>",
                id = enc(path).replace(['/', '{', '}', '%'], "_"),
                M = m.to_uppercase(),
                p = esc(path),
                s = esc(op["summary"].as_str().unwrap_or(""))
            );
            if op.get("security").is_some() {
                b.push_str("<p class=small>Needs a bearer token.</p>");
            }
            let params: Vec<&serde_json::Value> = shared
                .iter()
                .chain(op["parameters"].as_array().into_iter().flatten())
                .collect();
            if !params.is_empty() {
                let _ = write!(b, "<h3>Parameters</h3><div class=scroll role=region aria-label='parameters of {} {}' tabindex=0>", m.to_uppercase(), esc(path));
                b.push_str("<table class=api><thead><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr></thead><tbody>");
                for p in params {
                    let _ = write!(
                        b,
                        "<tr><td class=mono>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(p["name"].as_str().unwrap_or("")),
                        if p["required"].as_bool() == Some(true) {
                            " <span class=muted>required</span>"
                        } else {
                            ""
                        },
                        esc(p["in"].as_str().unwrap_or("")),
                        schema_brief(&p["schema"]),
                        esc(p["description"].as_str().unwrap_or(""))
                    );
                }
                b.push_str("</tbody></table></div>");
            }
            if let Some(content) = op["requestBody"]["content"].as_object() {
                b.push_str("<h3>Body</h3>");
                for (ct, c) in content {
                    let _ = write!(
                        b,
                        "<p><code>{}</code>: {}</p>{}",
                        esc(ct),
                        schema_brief(&c["schema"]),
                        props_table(
                            &c["schema"],
                            &format!("body of {} {path}", m.to_uppercase())
                        )
                    );
                }
            }
            if let Some(responses) = op["responses"].as_object() {
                b.push_str("<h3>Answers</h3><dl class=fields>");
                for (code, r) in responses {
                    let schema = r["content"]
                        .as_object()
                        .and_then(|c| c.values().next())
                        .map(|c| format!(" · {}", schema_brief(&c["schema"])))
                        .unwrap_or_default();
                    let _ = write!(
                        b,
                        "<dt class=mono>{}</dt><dd>{}{schema}</dd>",
                        esc(code),
                        esc(r["description"].as_str().unwrap_or(""))
                    );
                }
                b.push_str("</dl>");
            }
            b.push_str("</section>");
        }
    }
    b.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, s) in schemas {
            let _ = write!(
                b,
                "<section class=card id='schema-{0}'><h3>{0}</h3><p>{1}{2}</p>{3}</section>",
                esc(name),
                schema_brief(
                    &serde_json::json!({"type": s["type"].clone(), "pattern": s["pattern"].clone(), "maxLength": s["maxLength"].clone()})
                ),
                s["description"]
                    .as_str()
                    .map(|d| format!(". {}", esc(d)))
                    .unwrap_or_default(),
                props_table(s, &format!("fields of {name}"))
            );
        }
    }
    Ok(page("HTTP API", &b).into_response())
}
