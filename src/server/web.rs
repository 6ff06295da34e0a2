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
:root{--fg:#1d2433;--mut:#5b6478;--bg:#f7f8fb;--card:#fff;--acc:#2f6fde;--line:#e3e7ef}
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
.plots img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}.plots figure{margin:0 0 12px}
details.ann{display:inline-block;max-width:100%;vertical-align:top}details.ann>summary{cursor:pointer;list-style:none}details.ann>summary::-webkit-details-marker{display:none}details.ann pre{white-space:pre-wrap;overflow-wrap:anywhere;max-width:60ch;max-height:20em;overflow:auto;font-size:12px;background:#f6f8fc;border-radius:6px;padding:6px 8px;margin:4px 0}
.muted{color:var(--mut)}form.inline{display:flex;gap:10px;flex-wrap:wrap;align-items:end}
input,select,button{font:inherit;padding:7px 10px;border:1px solid #c9cfdb;border-radius:7px;background:#fff}
button{background:var(--acc);color:#fff;border-color:var(--acc);cursor:pointer}
.bar{height:12px;background:var(--acc);border-radius:3px;display:inline-block;vertical-align:middle}
dl{display:grid;grid-template-columns:160px 1fr;gap:6px 14px;margin:0}dt{color:var(--mut)}dd{margin:0;word-break:break-all}
.err{background:#fff1f0;border-color:#f3b5af}
";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>\
         <title>{} · vdna-db</title><style>{CSS}</style></head><body>\
         <header><a class=brand href='/'>vdna-db</a><a href='/'>Catalogue</a><a href='/query'>Query</a><a href='/compare'>Compare</a></header>\
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
}

pub async fn catalogue(
    State(st): State<Arc<AppState>>,
    Query(p): Query<CatalogueParams>,
) -> Result<Response, Response> {
    let res = blocking(&st, move |db| {
        let rows = db.list()?;
        let spaces = db.spaces()?;
        Ok((rows, spaces))
    })
    .await;
    let (rows, spaces) = res?;
    let q = p.q.clone().unwrap_or_default();
    let space = p.space.clone().unwrap_or_default();
    let ql = q.to_lowercase();
    let shown: Vec<&Listing> = rows
        .iter()
        .filter(|r| {
            ql.is_empty()
                || r.reference.to_lowercase().contains(&ql)
                || r.annotations
                    .values()
                    .any(|v| v.to_lowercase().contains(&ql))
        })
        .filter(|r| space.is_empty() || r.space.to_string() == space)
        .collect();
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Catalogue</h1><p class=muted>{} dataset{} in {} space{}. Each row is a Visual DNA: per-neuron activation distributions of an image dataset.</p>",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        spaces.len(),
        if spaces.len() == 1 { "" } else { "s" }
    );
    let _ = write!(b, "<div class=card><form class=inline method=get action='/'><label>Search<br><input name=q value='{}' placeholder='name or annotation'></label><label>Space<br><select name=space><option value=''>all spaces</option>", esc(&q));
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
    b.push_str("</select></label><button>Filter</button></form></div>");
    b.push_str("<div class=card><table id=datasets><thead><tr><th>Dataset</th><th>Space</th><th class=num>Images</th><th class=num>Size</th><th>Annotations</th></tr></thead><tbody>");
    for r in &shown {
        let _ = write!(
            b,
            "<tr><td><a href='/d/{}'>{}</a><br><span class='mono muted'>{}</span></td><td>{} <span class=muted>{}</span></td><td class=num>{}</td><td class=num>{}</td><td>{}</td></tr>",
            enc(&r.reference),
            esc(&r.reference),
            esc(&r.digest.short()),
            esc(&r.extractor),
            esc(&r.dist),
            r.images,
            human(r.stored_bytes),
            tags(&r.annotations)
        );
    }
    if shown.is_empty() {
        b.push_str("<tr><td colspan=5 class=muted>No dataset matches.</td></tr>");
    }
    b.push_str("</tbody></table></div>");
    Ok(page("Catalogue", &b).into_response())
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

fn summarise(name: &str, view: LayerView<'_>) -> LayerSummary {
    let (means, spreads): (Vec<f64>, Vec<f64>) = match view {
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
    };
    let spread = spreads.iter().sum::<f64>() / spreads.len().max(1) as f64;
    LayerSummary {
        name: name.to_string(),
        q: quantiles(means),
        spread,
    }
}

/// One SVG with a row per layer: whiskers 5-95%, box 25-75%, median tick of the neurons'
/// means, and a faint band of +-(mean spread) around the median.
fn layers_svg(layers: &[LayerSummary], fixed: Option<(f64, f64)>) -> String {
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
    let mut s = format!("<svg class=layers viewBox='0 0 {w} {h}' width='100%' role=img aria-label='per-layer distribution of neuron means'>");
    for t in 0..=4 {
        let v = lo + (hi - lo) * t as f64 / 4.0;
        let _ = write!(s, "<line x1='{0:.1}' x2='{0:.1}' y1='6' y2='{1:.1}' stroke='#e3e7ef'/><text x='{0:.1}' y='{2:.1}' font-size='11' text-anchor='middle' fill='#5b6478'>{v:.2}</text>", x(v), h - 22.0, h - 8.0);
    }
    for (i, l) in layers.iter().enumerate() {
        let y = 10.0 + i as f64 * row;
        let c = y + row / 2.0 - 2.0;
        let [p5, p25, p50, p75, p95] = l.q;
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
        ))
    })
    .await;
    let (d, label, stored, ann, layers, q) = res?;
    let hist = matches!(stored.space.dist, DistKind::Histogram { .. });
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1 id=title>{}</h1><p class=muted>{}</p>",
        esc(&label),
        esc(&stored.space.describe())
    );
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
        "<h2>Where the neurons sit, layer by layer</h2><div class=card><p class=muted>Per layer: the spread of its neurons' mean activations (whiskers 5-95%, box 25-75%, white tick the median){}; the faint band is the median plus and minus the neurons' average spread.</p>{}</div>",
        if hist { ", in normalised units [-1, 1]" } else { "" },
        layers_svg(&layers, hist.then_some((-1.0, 1.0)))
    );
    let _ = write!(
        b,
        "<h2>Nearest datasets (all neurons)</h2><div class=card>{}</div>",
        hits_table(&q)
    );
    let _ = write!(
        b,
        "<h2>Layers and blobs</h2><div class=card><table><thead><tr><th>Layer</th><th class=num>Neurons</th><th>Blob</th></tr></thead><tbody>{}</tbody></table></div>",
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

fn dataset_options(rows: &[Listing], selected: &str) -> String {
    rows.iter()
        .map(|r| {
            let sel = if r.reference == selected {
                " selected"
            } else {
                ""
            };
            format!(
                "<option value='{}'{sel}>{}</option>",
                esc(&r.reference),
                esc(&r.reference)
            )
        })
        .collect()
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
        let rows = db.list()?;
        if a2.is_empty() || b2.is_empty() {
            return Ok((rows, None));
        }
        let open = |s: &str| -> Result<AnyDna, ApiError> {
            let (d, _) = db.resolve(s)?;
            Ok(AnyDna::Stored(db.open_dna(&d)?))
        };
        let c = db.compare(&open(&a2)?, &open(&b2)?, &m2, None, 12)?;
        Ok((rows, Some(c)))
    })
    .await;
    let (rows, cmp) = res?;
    let mut b = String::from("<h1>Compare two datasets</h1>");
    let _ = write!(
        b,
        "<div class=card><form class=inline method=get action='/compare'><label>A<br><select name=a>{}</select></label><label>B<br><select name=b>{}</select></label><label>Mask<br><input name=mask value='{}'></label><button>Compare</button></form></div>",
        dataset_options(&rows, &a),
        dataset_options(&rows, &bb),
        esc(&mask)
    );
    if let Some(c) = cmp {
        let _ = write!(
            b,
            "<div class=card><p id=distance><b>{}</b> {} = <b>{:.6}</b> over {} neurons</p><h2>Per layer</h2>{}<h2>Most different neurons</h2>{}</div>",
            esc(&format!("{a} vs {bb}")),
            c.metric.name(),
            c.distance,
            c.neurons,
            bars(&c.per_layer.iter().map(|l| (l.layer.clone(), l.distance)).collect::<Vec<_>>()),
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
                    "<figure><a href='{url}'><img src='{url}' width=640 height=320 loading=lazy alt='{}'></a><figcaption>{}#{} · <a href='{url}'>SVG</a></figcaption></figure>",
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

#[derive(Deserialize, Default)]
pub struct QueryParams {
    #[serde(rename = "ref")]
    reference: Option<String>,
    mask: Option<String>,
    k: Option<usize>,
}

fn query_form(rows: &[Listing], p: &QueryParams) -> String {
    let mask = p.mask.clone().unwrap_or_else(|| "all".into());
    format!(
        "<div class=card><form class=inline method=get action='/query'><label>Dataset<br><select name=ref>{}</select></label><label>Mask<br><input name=mask value='{}'></label><label>Top<br><input name=k type=number min=1 max=100 value='{}'></label><button>Query</button></form></div>\
         <div class=card><form class=inline method=post action='/query/upload?mask={}&k={}' enctype='multipart/form-data'><label>Or upload a .vdna bundle<br><input type=file name=bundle accept='.vdna'></label><button>Upload and query</button></form><p class=muted>From the command line: <code>curl --data-binary @mine.vdna '/query/upload?mask=all&amp;k=5'</code> or <code>vdna-db --remote URL query mine.vdna</code>.</p></div>",
        dataset_options(rows, p.reference.as_deref().unwrap_or("")),
        esc(&mask),
        p.k.unwrap_or(5),
        enc(&mask),
        p.k.unwrap_or(5)
    )
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
    let res = blocking(&st, move |db| {
        let rows = db.list()?;
        let Some(r) = r2.filter(|r| !r.is_empty()) else {
            return Ok((rows, None));
        };
        let (d, _) = db.resolve(&r)?;
        let q = db.query(
            &AnyDna::Stored(db.open_dna(&d)?),
            &QueryRequest {
                mask: m2,
                k,
                per_layer: true,
                mode: Mode::Exact,
                ..Default::default()
            },
        )?;
        Ok((rows, Some(q)))
    })
    .await;
    let (rows, q) = res?;
    let mut b = String::from("<h1>Which datasets look like this one?</h1>");
    b.push_str(&query_form(&rows, &p));
    if let Some(q) = q {
        let _ = write!(b, "<div class=card><p class=muted>{} distance over {} neurons, mask <code>{}</code>; {} exact distances in {:.1} ms.</p>{}</div>", q.metric.name(), q.neurons, esc(&q.mask), q.plan.exact_computed, q.plan.total_ms, hits_table(&q));
    }
    Ok(page("Query", &b).into_response())
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
    let res = blocking(&st, move |db| {
        let rows = db.list()?;
        let (dna, _) = crate::engine::dna_of_bundle_bytes(&bytes).map_err(|e| {
            ApiError::bad_request(format!("the upload is not a valid .vdna bundle: {e}"))
        })?;
        let q = db.query(
            &AnyDna::Owned(dna),
            &QueryRequest {
                mask: m2,
                k,
                per_layer: true,
                mode: Mode::Exact,
                ..Default::default()
            },
        )?;
        Ok((rows, q))
    })
    .await;
    let (rows, q) = res?;
    let mut b = String::from("<h1>Results for the uploaded DNA</h1>");
    b.push_str(&query_form(&rows, &p));
    let _ = write!(b, "<div class=card>{}</div>", hits_table(&q));
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
