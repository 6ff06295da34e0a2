//! Image sources, where datasets live:
//! - listed, every image known up front and read on its own: a directory (recursive), a
//!   `.txt` list of paths or URLs, one image, a local `.zip` / `.tar` archive, an
//!   `s3://bucket/prefix/` of images;
//! - streamed, read front to back in bounded memory: webdataset tar shards (a brace
//!   pattern `train-{0000..0146}.tar`, local, `s3://` or `http(s)://`; samples grouped by
//!   key), a tar archive over HTTP or S3, and Parquet files whose column holds encoded
//!   images (the Hugging Face datasets layout).
//!
//! Listings are sorted and deterministic, so `--shuffle --seed`, `--max-images` and
//! `--shard i/n` select the same images on every machine; streams keep their files' order
//! (the pattern's, or the bucket's sorted keys) and each file's own sample order.
//!
//! Owns: finding images and reading their bytes. Must not: decode them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "object-store")]
use crate::objstore::Remote;

use super::ExtractError;

/// File extensions taken as images (lowercase).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "pgm", "ppm",
];

/// The largest single image file read (bytes); larger ones are reported as unreadable.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// Where an image's bytes live.
#[derive(Clone, Debug)]
enum Loc {
    File(PathBuf),
    Zip {
        archive: Arc<PathBuf>,
        index: usize,
    },
    Tar {
        archive: Arc<PathBuf>,
        offset: u64,
        size: u64,
    },
    /// An object in a bucket, or a file on an HTTP server.
    #[cfg(feature = "object-store")]
    Object {
        remote: Arc<Remote>,
        key: String,
    },
    /// Bytes already read from a stream (a webdataset sample, a Parquet row).
    Bytes(Arc<Vec<u8>>),
    /// A sample of a stream that holds no readable image, and why.
    Unreadable(String),
}

/// One image of a source: a display name and where to read it.
#[derive(Clone, Debug)]
pub struct ImageItem {
    pub name: String,
    loc: Loc,
}

impl ImageItem {
    /// Reads the encoded bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let too_big = |n: u64| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{n} bytes is over the {MAX_IMAGE_BYTES}-byte image limit"),
            )
        };
        match &self.loc {
            Loc::File(p) => {
                let f = File::open(p)?;
                let n = f.metadata()?.len();
                if n > MAX_IMAGE_BYTES {
                    return Err(too_big(n));
                }
                let mut v = Vec::with_capacity(n as usize);
                f.take(MAX_IMAGE_BYTES).read_to_end(&mut v)?;
                Ok(v)
            }
            Loc::Zip { archive, index } => {
                let mut z = zip::ZipArchive::new(File::open(archive.as_path())?)
                    .map_err(std::io::Error::other)?;
                let e = z.by_index(*index).map_err(std::io::Error::other)?;
                if e.size() > MAX_IMAGE_BYTES {
                    return Err(too_big(e.size()));
                }
                let mut v = Vec::with_capacity(e.size() as usize);
                e.take(MAX_IMAGE_BYTES).read_to_end(&mut v)?;
                Ok(v)
            }
            Loc::Tar {
                archive,
                offset,
                size,
            } => {
                if *size > MAX_IMAGE_BYTES {
                    return Err(too_big(*size));
                }
                let mut f = File::open(archive.as_path())?;
                f.seek(SeekFrom::Start(*offset))?;
                let mut v = vec![0u8; *size as usize];
                f.read_exact(&mut v)?;
                Ok(v)
            }
            #[cfg(feature = "object-store")]
            Loc::Object { remote, key } => {
                let v = remote.get(key)?.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{}/{key}: not found", remote.url()),
                    )
                })?;
                if v.0.len() as u64 > MAX_IMAGE_BYTES {
                    return Err(too_big(v.0.len() as u64));
                }
                Ok(v.0)
            }
            Loc::Bytes(b) => Ok(b.to_vec()),
            Loc::Unreadable(why) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                why.clone(),
            )),
        }
    }

    /// An image already in memory (a streamed sample).
    pub(crate) fn in_memory(name: String, bytes: Vec<u8>) -> ImageItem {
        ImageItem {
            name,
            loc: Loc::Bytes(Arc::new(bytes)),
        }
    }

    /// A streamed sample without a readable image: extraction reports it as skipped.
    pub(crate) fn unreadable(name: String, why: String) -> ImageItem {
        ImageItem {
            name,
            loc: Loc::Unreadable(why),
        }
    }
}

/// The bytes of a batch's bucket and HTTP objects, fetched with every request in flight at
/// once (one round trip's latency a batch, not one an image); `None` for items read
/// otherwise, or when the batched fetch failed (each is then read on its own, so each
/// error is reported with its image).
pub fn prefetch(items: &[ImageItem]) -> Vec<Option<std::io::Result<Vec<u8>>>> {
    let mut out: Vec<Option<std::io::Result<Vec<u8>>>> = items.iter().map(|_| None).collect();
    #[cfg(feature = "object-store")]
    {
        let mut by_remote: Vec<(Arc<Remote>, Vec<usize>)> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            if let Loc::Object { remote, .. } = &it.loc {
                match by_remote.iter_mut().find(|(r, _)| Arc::ptr_eq(r, remote)) {
                    Some((_, v)) => v.push(i),
                    None => by_remote.push((remote.clone(), vec![i])),
                }
            }
        }
        for (remote, idx) in by_remote {
            let keys: Vec<String> = idx
                .iter()
                .map(|&i| match &items[i].loc {
                    Loc::Object { key, .. } => key.clone(),
                    _ => String::new(),
                })
                .collect();
            let Ok(got) = remote.get_many(&keys) else {
                continue;
            };
            for ((i, key), g) in idx.into_iter().zip(&keys).zip(got) {
                out[i] = Some(match g {
                    Some((b, _)) if b.len() as u64 <= MAX_IMAGE_BYTES => Ok(b),
                    Some((b, _)) => Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} bytes is over the {MAX_IMAGE_BYTES}-byte image limit",
                            b.len()
                        ),
                    )),
                    None => Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{}/{key}: not found", remote.url()),
                    )),
                });
            }
        }
    }
    out
}

pub(crate) fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// True when `path` looks like an image source rather than a DNA file: a directory, an
/// image, a `.txt` list, a `.zip` / `.tar` archive, a Parquet file, a brace pattern of
/// shards, or an `s3://` / `http(s)://` URL.
pub fn looks_like_image_source(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let name = path.to_string_lossy().to_ascii_lowercase();
    is_url(&name)
        || has_braces(&name)
        || is_image_name(&name)
        || name.ends_with(".txt")
        || name.ends_with(".zip")
        || name.ends_with(".tar")
        || name.ends_with(".parquet")
}

/// True for a source given as a URL (`s3://`, `http://`, `https://`).
pub fn is_url(spec: &str) -> bool {
    let l = spec.to_ascii_lowercase();
    l.starts_with("s3://") || l.starts_with("http://") || l.starts_with("https://")
}

/// True for a source that is not a path on disk: a URL or a brace pattern of shards.
pub fn is_source_spec(spec: &str) -> bool {
    is_url(spec) || has_braces(spec)
}

fn has_braces(spec: &str) -> bool {
    spec.find('{')
        .is_some_and(|a| spec[a..].contains('}') && (spec.contains("..") || spec.contains(',')))
}

/// Lists the images of a listed source, sorted by name as the reference sorts them (a
/// `.txt` list by its resolved paths); a streamed source is refused (see [`list_source`]).
pub fn list(path: &Path) -> Result<Vec<ImageItem>, ExtractError> {
    match list_source(&path.to_string_lossy())? {
        Listing::Items(v) => Ok(v),
        Listing::Streams(_) => Err(ExtractError::Source {
            source_path: path.display().to_string(),
            msg: "a streamed source (shards, Parquet, a remote archive) has no listing of its \
                  images here: give a directory, a list, an image or a local archive"
                .into(),
        }),
    }
}

/// Lists a local source that is not a pattern or a URL.
fn list_local(path: &Path) -> Result<Vec<ImageItem>, ExtractError> {
    let src = path.display().to_string();
    let io = |e: std::io::Error| ExtractError::Source {
        source_path: src.clone(),
        msg: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let lower = src.to_ascii_lowercase();
    let mut items = if meta.is_dir() {
        let mut v = Vec::new();
        walk(path, path, &mut v).map_err(io)?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    } else if lower.ends_with(".txt") {
        let text = std::fs::read_to_string(path).map_err(io)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut v: Vec<ImageItem> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let p = Path::new(l);
                let full = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                };
                ImageItem {
                    name: full.to_string_lossy().into_owned(),
                    loc: Loc::File(full),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    } else if lower.ends_with(".zip") {
        let archive = Arc::new(path.to_path_buf());
        let mut z = zip::ZipArchive::new(File::open(path).map_err(io)?).map_err(|e| {
            ExtractError::Source {
                source_path: src.clone(),
                msg: format!("not a readable zip archive: {e}"),
            }
        })?;
        let mut v = Vec::new();
        for index in 0..z.len() {
            let e = z.by_index_raw(index).map_err(|e| ExtractError::Source {
                source_path: src.clone(),
                msg: e.to_string(),
            })?;
            if e.is_file() && is_image_name(e.name()) {
                v.push(ImageItem {
                    name: e.name().to_string(),
                    loc: Loc::Zip {
                        archive: archive.clone(),
                        index,
                    },
                });
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    } else if lower.ends_with(".tar") {
        let archive = Arc::new(path.to_path_buf());
        let mut t = tar::Archive::new(File::open(path).map_err(io)?);
        let mut v = Vec::new();
        for e in t.entries().map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.path().map_err(io)?.to_string_lossy().into_owned();
            if e.header().entry_type().is_file() && is_image_name(&name) {
                v.push(ImageItem {
                    name,
                    loc: Loc::Tar {
                        archive: archive.clone(),
                        offset: e.raw_file_position(),
                        size: e.size(),
                    },
                });
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    } else if is_image_name(&lower) {
        vec![ImageItem {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| src.clone()),
            loc: Loc::File(path.to_path_buf()),
        }]
    } else {
        return Err(ExtractError::Source {
            source_path: src,
            msg: format!(
                "not an image source: give a directory, an image ({}), a .txt list, a .zip/.tar \
                 archive, a .parquet file, a brace pattern of shards or an s3:// / http(s):// URL",
                IMAGE_EXTENSIONS.join(", ")
            ),
        });
    };
    items.shrink_to_fit();
    Ok(items)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ImageItem>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else if (ft.is_file() || ft.is_symlink()) && is_image_name(&p.to_string_lossy()) {
            let name = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push(ImageItem {
                name,
                loc: Loc::File(p),
            });
        }
    }
    Ok(())
}

/// How to pick images from a listing.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Fisher-Yates shuffle with this seed (SplitMix64) before truncation.
    pub shuffle: Option<u64>,
    pub max_images: Option<usize>,
    /// `(i, n)`: keep the items at positions `p` with `p % n == i`.
    pub shard: Option<(usize, usize)>,
    /// The column of encoded images of Parquet sources (`None`: the only one there is).
    pub column: Option<String>,
}

impl Selection {
    /// Applies shuffle, then `max_images`, then the shard, in that order, so the shards of
    /// one selection partition it exactly.
    pub fn apply(&self, mut items: Vec<ImageItem>) -> Vec<ImageItem> {
        if let Some(seed) = self.shuffle {
            let mut r = crate::rng::Rng::new(seed);
            for i in (1..items.len()).rev() {
                let j = r.below(i as u64 + 1) as usize;
                items.swap(i, j);
            }
        }
        if let Some(m) = self.max_images {
            items.truncate(m);
        }
        if let Some((i, n)) = self.shard {
            items = items
                .into_iter()
                .enumerate()
                .filter(|(p, _)| p % n == i)
                .map(|(_, it)| it)
                .collect();
        }
        items
    }
}

/// A file read front to back: a tar archive (webdataset samples) or a Parquet file.
#[derive(Clone, Debug)]
pub struct Stream {
    /// How the file is shown (its path or URL).
    pub name: String,
    pub(crate) origin: Origin,
    pub(crate) format: StreamFormat,
}

/// Where a streamed file lives.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    Local(PathBuf),
    #[cfg(feature = "object-store")]
    Remote {
        remote: Arc<Remote>,
        key: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamFormat {
    /// A tar archive; samples are runs of members sharing a key (webdataset).
    Tar,
    /// Parquet; one sample a row of the image column.
    Parquet,
}

impl Stream {
    /// An error about this file.
    pub(crate) fn error(&self, msg: String) -> ExtractError {
        ExtractError::Source {
            source_path: self.name.clone(),
            msg,
        }
    }
}

impl Origin {
    /// The file's bytes front to back, buffered.
    pub(crate) fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Origin::Local(p) => {
                Box::new(std::io::BufReader::with_capacity(1 << 20, File::open(p)?))
            }
            #[cfg(feature = "object-store")]
            Origin::Remote { remote, key } => Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                remote.reader(key),
            )),
        })
    }
}

/// What a source holds.
#[derive(Debug)]
pub enum Listing {
    /// Every image, known up front, each read on its own.
    Items(Vec<ImageItem>),
    /// Files read front to back, in this order.
    Streams(Vec<Stream>),
}

/// Expands the brace patterns of a shard list: `{0000..0146}` (numbers, zero-padded to
/// the first bound's width) and `{a,b,c}` (alternatives), every brace in turn, left to
/// right, in order.
pub fn expand_braces(spec: &str) -> Result<Vec<String>, String> {
    const MAX: usize = 1_000_000;
    let Some(open) = spec.find('{') else {
        return Ok(vec![spec.to_string()]);
    };
    let close = spec[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("{spec:?}: a '{{' without its '}}'"))?;
    let inner = &spec[open + 1..close];
    let choices: Vec<String> = if let Some((a, b)) = inner.split_once("..") {
        let (lo, hi): (u64, u64) = match (a.parse(), b.parse()) {
            (Ok(lo), Ok(hi)) if lo <= hi => (lo, hi),
            _ => {
                return Err(format!(
                    "{spec:?}: {{{inner}}} is not a range of numbers low..high, e.g. {{0000..0146}}"
                ))
            }
        };
        if hi - lo >= MAX as u64 {
            return Err(format!("{spec:?}: {{{inner}}} names over {MAX} files"));
        }
        let width = if a.starts_with('0') { a.len() } else { 0 };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else if inner.contains(',') {
        inner.split(',').map(str::to_string).collect()
    } else {
        return Err(format!(
            "{spec:?}: {{{inner}}} is neither a range {{a..b}} nor alternatives {{a,b}}"
        ));
    };
    let rest = expand_braces(&spec[close + 1..])?;
    let mut out = Vec::with_capacity(choices.len() * rest.len());
    for c in &choices {
        for r in &rest {
            out.push(format!("{}{c}{r}", &spec[..open]));
            if out.len() > MAX {
                return Err(format!("{spec:?} names over {MAX} files"));
            }
        }
    }
    Ok(out)
}

fn stream_format(name: &str) -> Option<StreamFormat> {
    let l = name.to_ascii_lowercase();
    if l.ends_with(".tar") {
        Some(StreamFormat::Tar)
    } else if l.ends_with(".parquet") {
        Some(StreamFormat::Parquet)
    } else {
        None
    }
}

/// Lists any source: a local path, a brace pattern of shards, or an `s3://` /
/// `http(s)://` URL (see the module's documentation).
pub fn list_source(spec: &str) -> Result<Listing, ExtractError> {
    let bad = |msg: String| ExtractError::Source {
        source_path: spec.to_string(),
        msg,
    };
    if has_braces(spec) {
        let files = expand_braces(spec).map_err(bad)?;
        let mut streams = Vec::with_capacity(files.len());
        let mut missing = Vec::new();
        for f in files {
            let format = stream_format(&f).ok_or_else(|| {
                bad(format!(
                    "{f}: a pattern names shards, .tar (webdataset) or .parquet files"
                ))
            })?;
            let origin = if is_url(&f) {
                remote_origin(&f)?
            } else {
                if !Path::new(&f).is_file() {
                    missing.push(f.clone());
                }
                Origin::Local(PathBuf::from(&f))
            };
            streams.push(Stream {
                name: f,
                origin,
                format,
            });
        }
        if !missing.is_empty() {
            return Err(bad(format!(
                "{} of the {} shards are missing: {}{}",
                missing.len(),
                streams.len(),
                missing[..missing.len().min(3)].join(", "),
                if missing.len() > 3 { ", ..." } else { "" }
            )));
        }
        return Ok(Listing::Streams(streams));
    }
    if is_url(spec) {
        return list_url(spec);
    }
    let path = Path::new(spec);
    if stream_format(spec) == Some(StreamFormat::Parquet) {
        if !path.is_file() {
            return Err(bad("no such Parquet file".into()));
        }
        return Ok(Listing::Streams(vec![Stream {
            name: spec.to_string(),
            origin: Origin::Local(path.to_path_buf()),
            format: StreamFormat::Parquet,
        }]));
    }
    Ok(Listing::Items(list_local(path)?))
}

#[cfg(not(feature = "object-store"))]
fn remote_origin(url: &str) -> Result<Origin, ExtractError> {
    Err(no_remote(url))
}

#[cfg(not(feature = "object-store"))]
fn list_url(url: &str) -> Result<Listing, ExtractError> {
    Err(no_remote(url))
}

#[cfg(not(feature = "object-store"))]
fn no_remote(url: &str) -> ExtractError {
    ExtractError::Source {
        source_path: url.to_string(),
        msg: "this build has no object storage (feature object-store): copy the images to a \
              local folder"
            .into(),
    }
}

/// Decodes `%XX` escapes of a URL path.
#[cfg(feature = "object-store")]
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server (bucket or HTTP host) of a URL and the key on it. Servers are opened once
/// per process and shared.
#[cfg(feature = "object-store")]
fn remote_of(url: &str) -> Result<(Arc<Remote>, String), ExtractError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<String, Arc<Remote>>>> = OnceLock::new();
    let bad = |msg: String| ExtractError::Source {
        source_path: url.to_string(),
        msg,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("not a URL".into()))?;
    let scheme = scheme.to_ascii_lowercase();
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad(format!("expected {scheme}://HOST/PATH")));
    }
    if path.contains(['?', '#']) {
        return Err(bad(
            "URLs with a query or fragment are not read: give a plain path".into(),
        ));
    }
    let base = format!("{scheme}://{host}");
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let remote = match open.get(&base) {
        Some(r) => r.clone(),
        None => {
            let r = if scheme == "s3" {
                Remote::open_s3(host, "", &crate::objstore::S3Config::from_env())
            } else {
                Remote::open_http(&base)
            }
            .map_err(|e| bad(e.to_string()))?;
            let r = Arc::new(r);
            open.insert(base, r.clone());
            r
        }
    };
    let key = if scheme == "s3" {
        path.to_string()
    } else {
        percent_decode(path)
    };
    Ok((remote, key))
}

#[cfg(feature = "object-store")]
fn remote_origin(url: &str) -> Result<Origin, ExtractError> {
    let (remote, key) = remote_of(url)?;
    Ok(Origin::Remote { remote, key })
}

#[cfg(feature = "object-store")]
fn list_url(url: &str) -> Result<Listing, ExtractError> {
    let bad = |msg: String| ExtractError::Source {
        source_path: url.to_string(),
        msg,
    };
    let (remote, key) = remote_of(url)?;
    let item = |remote: &Arc<Remote>, key: String, name: String| ImageItem {
        name,
        loc: Loc::Object {
            remote: remote.clone(),
            key,
        },
    };
    if let Some(format) = stream_format(&key) {
        return Ok(Listing::Streams(vec![Stream {
            name: url.to_string(),
            origin: Origin::Remote { remote, key },
            format,
        }]));
    }
    let lower = key.to_ascii_lowercase();
    if lower.ends_with(".txt") {
        let (text, _) = remote
            .get(&key)
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| bad("not found".into()))?;
        let text = String::from_utf8(text).map_err(|_| bad("the list is not UTF-8 text".into()))?;
        let dir = key
            .rsplit_once('/')
            .map(|(d, _)| format!("{d}/"))
            .unwrap_or_default();
        let base = url.strip_suffix(key.as_str()).unwrap_or(url).to_string();
        let mut v = Vec::new();
        for l in text.lines().map(str::trim) {
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if is_url(l) {
                let (r, k) = remote_of(l)?;
                v.push(item(&r, k, l.to_string()));
            } else {
                let k = format!("{dir}{}", l.trim_start_matches('/'));
                v.push(item(&remote, k.clone(), format!("{base}{k}")));
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(Listing::Items(v));
    }
    if lower.ends_with(".zip") {
        return Err(bad(
            "a zip archive is read from local disk (its index is at its end): download it, or \
             store the images as a .tar, as webdataset shards or under a prefix"
                .into(),
        ));
    }
    if is_image_name(&lower) {
        return Ok(Listing::Items(vec![item(&remote, key, url.to_string())]));
    }
    if !url.to_ascii_lowercase().starts_with("s3://") {
        return Err(bad(
            "HTTP servers have no listing: give an image, a .txt list of URLs, a .tar archive, \
             a .parquet file or a brace pattern of shards"
                .into(),
        ));
    }
    // A prefix of a bucket: its images, else its shards.
    let under = key.trim_end_matches('/');
    let objects = remote.list(under).map_err(|e| bad(e.to_string()))?;
    let mut images = Vec::new();
    let mut streams = Vec::new();
    let scheme_host = url.strip_suffix(key.as_str()).unwrap_or(url).to_string();
    for (k, _) in objects {
        if is_image_name(&k) {
            images.push(item(&remote, k.clone(), format!("{scheme_host}{k}")));
        } else if let Some(format) = stream_format(&k) {
            streams.push(Stream {
                name: format!("{scheme_host}{k}"),
                origin: Origin::Remote {
                    remote: remote.clone(),
                    key: k,
                },
                format,
            });
        }
    }
    match (images.is_empty(), streams.is_empty()) {
        (false, true) => {
            images.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Listing::Items(images))
        }
        (true, false) => {
            streams.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Listing::Streams(streams))
        }
        (false, false) => Err(bad(format!(
            "holds both {} images and {} .tar/.parquet files: give a narrower prefix, or a \
             brace pattern of the shards",
            images.len(),
            streams.len()
        ))),
        (true, true) => Err(bad(format!(
            "no images ({}) and no .tar / .parquet files under this prefix",
            IMAGE_EXTENSIONS.join(", ")
        ))),
    }
}

/// Which samples of a run of streams are kept: positions count every sample of every
/// stream read, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleFilter {
    /// `(i, n)`: keep positions `p` with `p % n == i`.
    pub shard: Option<(usize, usize)>,
    /// Stop after this many positions.
    pub max: Option<u64>,
}

impl SampleFilter {
    pub fn keeps(&self, pos: u64) -> bool {
        self.shard.is_none_or(|(i, n)| pos % n as u64 == i as u64)
    }

    pub fn done(&self, seen: u64) -> bool {
        self.max.is_some_and(|m| seen >= m)
    }
}

/// A unit of extraction work, and of checkpoints: consecutive images of a listing, or one
/// streamed file.
#[derive(Clone, Debug)]
pub enum Segment {
    Items(Vec<ImageItem>),
    Stream(Stream),
}

/// What an extraction reads: its segments in order, with the filter over streamed samples.
#[derive(Clone, Debug)]
pub struct Work {
    pub segments: Vec<Segment>,
    pub filter: SampleFilter,
    /// The Parquet column of images (`None`: the only one there is).
    pub column: Option<String>,
    /// Images of a listed source (streams are counted as they are read).
    pub listed: Option<u64>,
}

impl Work {
    /// Names every image (listings) or file (streams) with the filter and column: two
    /// runs with one identity read the same images.
    pub fn identity(&self) -> String {
        let mut h = sha2::Sha256::default();
        use sha2::Digest as _;
        for s in &self.segments {
            match s {
                Segment::Items(v) => {
                    h.update(b"items\0");
                    for i in v {
                        h.update(i.name.as_bytes());
                        h.update(b"\0");
                    }
                }
                Segment::Stream(s) => {
                    h.update(b"stream\0");
                    h.update(s.name.as_bytes());
                    h.update(b"\0");
                }
            }
        }
        h.update(format!("{:?}|{:?}", self.filter, self.column).as_bytes());
        hex::encode(h.finalize())
    }
}

impl Selection {
    /// The work of a listing under this selection, listed images cut into segments of
    /// `every` images (the checkpoint granularity).
    ///
    /// Streams cannot be shuffled (that needs every sample first). With at least as many
    /// files as shards, `--shard i/n` takes whole files (positions `p % n == i`) and
    /// each worker reads only its own; with fewer, every worker reads every file and keeps
    /// the samples at positions `p % n == i`. `--max-images` counts samples in stream
    /// order, so with whole-file shards it is refused (a worker can't know the others'
    /// counts).
    pub fn plan(&self, listing: Listing, every: usize) -> Result<Work, String> {
        let every = every.max(1);
        match listing {
            Listing::Items(items) => {
                let items = self.apply(items);
                let listed = Some(items.len() as u64);
                Ok(Work {
                    segments: items
                        .chunks(every)
                        .map(|c| Segment::Items(c.to_vec()))
                        .collect(),
                    filter: SampleFilter::default(),
                    column: self.column.clone(),
                    listed,
                })
            }
            Listing::Streams(mut streams) => {
                if self.shuffle.is_some() {
                    return Err(
                        "--shuffle needs every image listed first; shards and Parquet \
                                files are read in order: drop --shuffle (or shuffle when \
                                writing the shards, as webdataset does)"
                            .into(),
                    );
                }
                let mut filter = SampleFilter {
                    shard: None,
                    max: self.max_images.map(|m| m as u64),
                };
                match self.shard {
                    Some((i, n)) if streams.len() >= n => {
                        if self.max_images.is_some() {
                            return Err(format!(
                                "--max-images with --shard {i}/{n} over {} files: each shard \
                                 takes whole files and can't count the others' images; \
                                 drop --max-images or name fewer files",
                                streams.len()
                            ));
                        }
                        streams = streams
                            .into_iter()
                            .enumerate()
                            .filter(|(p, _)| p % n == i)
                            .map(|(_, s)| s)
                            .collect();
                    }
                    shard => filter.shard = shard,
                }
                Ok(Work {
                    segments: streams.into_iter().map(Segment::Stream).collect(),
                    filter,
                    column: self.column.clone(),
                    listed: None,
                })
            }
        }
    }
}

/// Parses `i/n` with `0 <= i < n`, or `auto/n`, where `i` is the worker's index from the
/// scheduler: `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job) or
/// `SLURM_ARRAY_TASK_ID` (a Slurm job array).
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    parse_shard_with(s, &|k| std::env::var(k).ok())
}

/// [`parse_shard`] with the environment given.
pub fn parse_shard_with(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('/')
        .ok_or_else(|| format!("shard {s:?}: expected i/n or auto/n, e.g. 0/4"))?;
    let n: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("shard {s:?}: {b:?} is not a number"))?;
    let i: usize = if a.trim() == "auto" {
        let (var, v) = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"]
            .iter()
            .find_map(|k| env(k).filter(|v| !v.is_empty()).map(|v| (*k, v)))
            .ok_or_else(|| {
                format!(
                    "shard {s:?}: auto takes the index from JOB_COMPLETION_INDEX (Kubernetes \
                     Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm array), and neither is set: \
                     give the index, e.g. --shard 0/{n}"
                )
            })?;
        v.trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: {var}={v:?} is not a number"))?
    } else {
        a.trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: {a:?} is not a number"))?
    };
    if n == 0 || i >= n {
        return Err(format!(
            "shard {s:?}: need 0 <= i < n (got i = {i}, n = {n})"
        ));
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<ImageItem> {
        (0..n)
            .map(|i| ImageItem {
                name: format!("{i:03}.png"),
                loc: Loc::File(PathBuf::from(format!("{i:03}.png"))),
            })
            .collect()
    }

    #[test]
    fn shards_partition_the_selection() {
        let sel = |shard| Selection {
            shuffle: Some(9),
            max_images: Some(37),
            shard,
            column: None,
        };
        let whole: Vec<String> = sel(None)
            .apply(items(50))
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(whole.len(), 37);
        let mut parts: Vec<String> = (0..4)
            .flat_map(|i| sel(Some((i, 4))).apply(items(50)))
            .map(|i| i.name)
            .collect();
        parts.sort();
        let mut w = whole.clone();
        w.sort();
        assert_eq!(parts, w);
        // The shuffle moved something, deterministically.
        assert_ne!(
            whole,
            items(37).into_iter().map(|i| i.name).collect::<Vec<_>>()
        );
        let again: Vec<String> = sel(None)
            .apply(items(50))
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(whole, again);
    }

    #[test]
    fn shard_syntax_is_checked() {
        let none = |_: &str| None;
        assert_eq!(parse_shard_with("1/4", &none), Ok((1, 4)));
        assert!(parse_shard_with("4/4", &none).is_err());
        assert!(parse_shard_with("0/0", &none).is_err());
        assert!(parse_shard_with("x", &none).is_err());
        // auto takes the scheduler's index: Kubernetes first, then Slurm.
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "3".to_string());
        let slurm = |k: &str| (k == "SLURM_ARRAY_TASK_ID").then(|| "2".to_string());
        assert_eq!(parse_shard_with("auto/4", &k8s), Ok((3, 4)));
        assert_eq!(parse_shard_with("auto/4", &slurm), Ok((2, 4)));
        assert!(parse_shard_with("auto/3", &k8s)
            .unwrap_err()
            .contains("0 <= i < n"));
        assert!(parse_shard_with("auto/4", &none)
            .unwrap_err()
            .contains("JOB_COMPLETION_INDEX"));
    }

    #[test]
    fn brace_patterns_expand_in_order_with_padding() {
        assert_eq!(
            expand_braces("s/train-{0008..0011}.tar").unwrap(),
            [
                "s/train-0008.tar",
                "s/train-0009.tar",
                "s/train-0010.tar",
                "s/train-0011.tar"
            ]
        );
        assert_eq!(
            expand_braces("{a,b}-{1..2}.tar").unwrap(),
            ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]
        );
        assert_eq!(expand_braces("x-{9..10}").unwrap(), ["x-9", "x-10"]);
        assert!(expand_braces("x-{3..1}").is_err());
        assert!(expand_braces("x-{0..").is_err());
        assert!(expand_braces("x-{0..2000000}").is_err());
    }

    fn streams(n: usize) -> Listing {
        Listing::Streams(
            (0..n)
                .map(|i| Stream {
                    name: format!("s{i}.tar"),
                    origin: Origin::Local(PathBuf::from(format!("s{i}.tar"))),
                    format: StreamFormat::Tar,
                })
                .collect(),
        )
    }

    #[test]
    fn streams_shard_by_file_when_there_are_enough_and_by_sample_otherwise() {
        let sel = |shard, max| Selection {
            shard,
            max_images: max,
            ..Default::default()
        };
        let names = |w: &Work| -> Vec<String> {
            w.segments
                .iter()
                .map(|s| match s {
                    Segment::Stream(s) => s.name.clone(),
                    Segment::Items(_) => unreachable!(),
                })
                .collect()
        };
        let w = sel(Some((1, 3)), None).plan(streams(7), 10).unwrap();
        assert_eq!(names(&w), ["s1.tar", "s4.tar"]);
        assert_eq!(w.filter, SampleFilter::default());
        let w = sel(Some((1, 3)), Some(5)).plan(streams(2), 10).unwrap();
        assert_eq!(names(&w).len(), 2);
        assert_eq!(w.filter.shard, Some((1, 3)));
        assert!(w.filter.keeps(4) && !w.filter.keeps(5) && w.filter.done(5));
        assert!(sel(Some((0, 2)), Some(5)).plan(streams(4), 10).is_err());
        let shuffled = Selection {
            shuffle: Some(1),
            ..Default::default()
        };
        assert!(shuffled
            .plan(streams(2), 10)
            .unwrap_err()
            .contains("--shuffle"));
        // A listing is cut into checkpoint segments.
        let w = Selection::default()
            .plan(Listing::Items(items(25)), 10)
            .unwrap();
        let sizes: Vec<usize> = w
            .segments
            .iter()
            .map(|s| match s {
                Segment::Items(v) => v.len(),
                Segment::Stream(_) => unreachable!(),
            })
            .collect();
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(w.listed, Some(25));
    }
}
