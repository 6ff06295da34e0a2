//! Samples of streamed files, read front to back: webdataset tar shards and Parquet files
//! whose column holds encoded images.
//!
//! Webdataset: a sample is a run of consecutive members sharing a key, the member's path
//! up to the first dot of its file name (`train/000123.jpg` and `train/000123.cls` are
//! sample `train/000123`, with extensions `jpg` and `cls`). The image is the member whose
//! whole extension is an image type, the first of [`PREFERRED`] when there are several;
//! other members are never kept in memory. A sample without one is reported as skipped.
//!
//! Parquet: the column is a struct with a binary `bytes` field and an optional `path`
//! (how Hugging Face datasets stores an `Image` feature) or a binary column. A row without
//! bytes is reported as skipped. Memory holds one record batch of the column (the
//! extraction batch size) and the reader's buffers for the row group being read; a
//! Parquet file over HTTP or S3 is read with range requests in windows of
//! [`WINDOW`] bytes.
//!
//! Owns: reading samples' bytes out of streams. Must not: decode images.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow_array::{
    Array, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray, StringArray,
    StringViewArray, StructArray,
};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::reader::ChunkReader;

use super::source::{ImageItem, Origin, Stream, StreamFormat, MAX_IMAGE_BYTES};
use super::ExtractError;

/// Image extensions of webdataset members, in the order one is picked when a sample has
/// several.
pub const PREFERRED: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm",
];

/// Bytes fetched per range request when a Parquet file is read over the network.
pub const WINDOW: u64 = 8 << 20;

/// Calls `f` with every sample of `stream` in order (an unreadable sample comes as an
/// item whose read fails, so it is reported); stops early when `f` breaks. An error
/// reading the file itself (not one sample) ends the stream with that error.
pub fn for_each_sample(
    stream: &Stream,
    column: Option<&str>,
    batch: usize,
    f: &mut dyn FnMut(ImageItem) -> ControlFlow<()>,
) -> Result<(), ExtractError> {
    let err = |msg: String| stream.error(msg);
    match stream.format {
        StreamFormat::Tar => tar_samples(stream, f).map_err(|e| err(e.to_string())),
        StreamFormat::Parquet => match &stream.origin {
            Origin::Local(p) => {
                let file = std::fs::File::open(p).map_err(|e| err(e.to_string()))?;
                parquet_samples(stream, file, column, batch, f)
            }
            #[cfg(feature = "object-store")]
            Origin::Remote { remote, key } => {
                match RangeFile::open(remote.clone(), key) {
                    Ok(file) => parquet_samples(stream, file, column, batch, f),
                    // A server without range requests: the file is spooled to a temporary
                    // file (disk, not memory) and read from there.
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        let file = spool(&stream.origin).map_err(|e| err(e.to_string()))?;
                        parquet_samples(stream, file, column, batch, f)
                    }
                    Err(e) => Err(err(e.to_string())),
                }
            }
        },
    }
}

/// A member path's key and extension (webdataset: split at the first dot of the name).
pub fn split_key(path: &str) -> (&str, &str) {
    let name_at = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_at..].find('.') {
        Some(d) => (&path[..name_at + d], &path[name_at + d + 1..]),
        None => (path, ""),
    }
}

/// One sample being gathered: its key, image members and the other members' extensions.
#[derive(Default)]
struct Gather {
    key: Option<String>,
    images: Vec<(String, Vec<u8>)>,
    oversize: Option<(String, u64)>,
    others: Vec<String>,
}

impl Gather {
    fn flush(&mut self, shard: &str) -> Option<ImageItem> {
        let key = self.key.take()?;
        let images = std::mem::take(&mut self.images);
        let others = std::mem::take(&mut self.others);
        let oversize = self.oversize.take();
        let best = images.into_iter().min_by_key(|(ext, _)| {
            PREFERRED
                .iter()
                .position(|p| p == ext)
                .unwrap_or(PREFERRED.len())
        });
        Some(match (best, oversize) {
            (Some((ext, bytes)), _) => ImageItem::in_memory(format!("{shard}/{key}.{ext}"), bytes),
            (None, Some((ext, n))) => ImageItem::unreadable(
                format!("{shard}/{key}.{ext}"),
                format!("{n} bytes is over the {MAX_IMAGE_BYTES}-byte image limit"),
            ),
            (None, None) => ImageItem::unreadable(
                format!("{shard}/{key}"),
                format!(
                    "the sample has no image member (members: {}; images are {})",
                    if others.is_empty() {
                        "none".to_string()
                    } else {
                        others.join(", ")
                    },
                    PREFERRED.join(", ")
                ),
            ),
        })
    }
}

fn tar_samples(
    stream: &Stream,
    f: &mut dyn FnMut(ImageItem) -> ControlFlow<()>,
) -> std::io::Result<()> {
    use std::io::Read;
    let mut archive = tar::Archive::new(stream.origin.open()?);
    let mut g = Gather::default();
    for e in archive.entries()? {
        let mut e = e?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let path = e.path()?.to_string_lossy().into_owned();
        let (key, ext) = split_key(&path);
        let ext = ext.to_ascii_lowercase();
        if g.key.as_deref() != Some(key) {
            if let Some(item) = g.flush(&stream.name) {
                if f(item).is_break() {
                    return Ok(());
                }
            }
            g.key = Some(key.to_string());
        }
        if PREFERRED.contains(&ext.as_str()) {
            let n = e.size();
            if n > MAX_IMAGE_BYTES {
                g.oversize = Some((ext, n));
                continue;
            }
            let mut v = Vec::with_capacity(n as usize);
            (&mut e).take(MAX_IMAGE_BYTES).read_to_end(&mut v)?;
            g.images.push((ext, v));
        } else {
            g.others.push(ext);
        }
    }
    if let Some(item) = g.flush(&stream.name) {
        let _ = f(item);
    }
    Ok(())
}

/// True for a column that can hold encoded images.
fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

fn is_image_column(t: &DataType) -> bool {
    match t {
        DataType::Struct(fields) => fields
            .iter()
            .any(|f| f.name() == "bytes" && is_binary(f.data_type())),
        t => is_binary(t),
    }
}

/// Picks the image column: the one named, else the only image-like one (a struct with
/// binary `bytes`, or a binary column), preferring `image` / `img` among several.
fn pick_column(schema: &arrow_schema::Schema, column: Option<&str>) -> Result<usize, String> {
    let describe = || {
        schema
            .fields()
            .iter()
            .map(|f| format!("{} ({})", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(c) = column {
        let (i, f) = schema
            .column_with_name(c)
            .ok_or_else(|| format!("no column {c:?}; the columns are {}", describe()))?;
        if !is_image_column(f.data_type()) {
            return Err(format!(
                "column {c:?} is {}, not encoded images (a struct with binary `bytes`, as \
                 Hugging Face datasets writes, or a binary column)",
                f.data_type()
            ));
        }
        return Ok(i);
    }
    let found: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| is_image_column(schema.field(i).data_type()))
        .collect();
    match found.as_slice() {
        [i] => Ok(*i),
        [] => Err(format!(
            "no column of encoded images (a struct with binary `bytes`, or a binary column); \
             the columns are {}",
            describe()
        )),
        many => many
            .iter()
            .copied()
            .find(|&i| matches!(schema.field(i).name().as_str(), "image" | "img"))
            .ok_or_else(|| {
                format!(
                    "several columns could hold images ({}): choose one with --column NAME",
                    many.iter()
                        .map(|&i| schema.field(i).name().clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }),
    }
}

/// Row `r` of `a` read as the first of the array types given that `a` is; `None` for a
/// null or another type.
macro_rules! value_at {
    ($a:expr, $r:expr, $($t:ty),+) => {{
        let (a, r) = ($a, $r);
        let any = a.as_any();
        if a.is_null(r) {
            None
        } else {
            None$(.or_else(|| any.downcast_ref::<$t>().map(|x| x.value(r))))+
        }
    }};
}

/// The bytes of row `r` of a binary array of any width.
fn binary_at(a: &dyn Array, r: usize) -> Option<&[u8]> {
    value_at!(a, r, BinaryArray, LargeBinaryArray, BinaryViewArray)
}

/// The text of row `r` of a string array of any width.
fn string_at(a: &dyn Array, r: usize) -> Option<&str> {
    value_at!(a, r, StringArray, LargeStringArray, StringViewArray)
}

fn parquet_samples<R: ChunkReader + 'static>(
    stream: &Stream,
    file: R,
    column: Option<&str>,
    batch: usize,
    f: &mut dyn FnMut(ImageItem) -> ControlFlow<()>,
) -> Result<(), ExtractError> {
    let err = |msg: String| stream.error(msg);
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| err(format!("not a readable Parquet file: {e}")))?;
    let index = pick_column(builder.schema(), column).map_err(err)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch.max(1))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut row = 0u64;
    for rb in reader {
        let rb = rb.map_err(|e| err(format!("reading row {row}: {e}")))?;
        let col = rb.column(0);
        let (bytes, paths): (Arc<dyn Array>, Option<Arc<dyn Array>>) =
            match col.as_any().downcast_ref::<StructArray>() {
                Some(s) => (
                    s.column_by_name("bytes")
                        .cloned()
                        .ok_or_else(|| err("the image column has no `bytes` field".into()))?,
                    s.column_by_name("path").cloned(),
                ),
                None => (col.clone(), None),
            };
        for r in 0..rb.num_rows() {
            let path = paths
                .as_deref()
                .and_then(|p| string_at(p, r))
                .filter(|p| !p.is_empty());
            let name = match path {
                Some(p) => format!("{}#{row}:{p}", stream.name),
                None => format!("{}#{row}", stream.name),
            };
            let item = match (col.is_null(r), binary_at(bytes.as_ref(), r)) {
                (false, Some(b)) if b.len() as u64 <= MAX_IMAGE_BYTES => {
                    ImageItem::in_memory(name, b.to_vec())
                }
                (false, Some(b)) => ImageItem::unreadable(
                    name,
                    format!(
                        "{} bytes is over the {MAX_IMAGE_BYTES}-byte image limit",
                        b.len()
                    ),
                ),
                _ => ImageItem::unreadable(name, "the row has no image bytes".into()),
            };
            row += 1;
            if f(item).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Copies a remote file into an unnamed temporary file (removed from the directory at once,
/// so nothing is left behind however the process ends) and returns it rewound.
#[cfg(feature = "object-store")]
fn spool(origin: &Origin) -> std::io::Result<std::fs::File> {
    use std::io::Seek;
    let path = std::env::temp_dir().join(format!(
        "vdna-db-spool-{}.parquet",
        crate::objstore::random_id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let _ = std::fs::remove_file(&path);
    std::io::copy(&mut origin.open()?, &mut file)?;
    file.rewind()?;
    Ok(file)
}

/// A Parquet file on a server, read with range requests of [`WINDOW`] bytes; the last
/// window is kept, so the reader's sequential reads of a column chunk cost one request a
/// window.
#[cfg(feature = "object-store")]
#[derive(Clone)]
struct RangeFile(Arc<RangeInner>);

#[cfg(feature = "object-store")]
struct RangeInner {
    remote: Arc<crate::objstore::Remote>,
    key: String,
    len: u64,
    window: std::sync::Mutex<(u64, bytes::Bytes)>,
}

#[cfg(feature = "object-store")]
impl RangeFile {
    fn open(remote: Arc<crate::objstore::Remote>, key: &str) -> std::io::Result<RangeFile> {
        let len = remote
            .head(key)?
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{}/{key}: not found", remote.url()),
                )
            })?
            .size;
        let file = RangeFile(Arc::new(RangeInner {
            remote,
            key: key.to_string(),
            len,
            window: Default::default(),
        }));
        // The footer is read first anyway: fetching it now tells whether the server takes
        // range requests.
        file.0.read_at(len.saturating_sub(WINDOW), WINDOW)?;
        Ok(file)
    }
}

#[cfg(feature = "object-store")]
impl RangeInner {
    /// Up to `want` bytes at `pos` (fewer at a window's or the file's end).
    fn read_at(&self, pos: u64, want: u64) -> std::io::Result<bytes::Bytes> {
        if pos >= self.len || want == 0 {
            return Ok(bytes::Bytes::new());
        }
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (start, buf) = &*w;
        if pos < *start || pos >= start + buf.len() as u64 {
            let n = WINDOW.max(want).min(self.len - pos);
            let b = bytes::Bytes::from(self.remote.get_range(&self.key, pos, n)?);
            *w = (pos, b);
        }
        let (start, buf) = &*w;
        let at = (pos - start) as usize;
        let end = (at as u64 + want).min(buf.len() as u64) as usize;
        Ok(buf.slice(at..end))
    }
}

#[cfg(feature = "object-store")]
impl parquet::file::reader::Length for RangeFile {
    fn len(&self) -> u64 {
        self.0.len
    }
}

#[cfg(feature = "object-store")]
impl ChunkReader for RangeFile {
    type T = RangeRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<RangeRead> {
        Ok(RangeRead {
            file: self.clone(),
            pos: start,
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        let mut out = Vec::new();
        let mut pos = start;
        let end = start + length as u64;
        while pos < end {
            let b = self
                .0
                .read_at(pos, end - pos)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            if b.is_empty() {
                return Err(parquet::errors::ParquetError::EOF(format!(
                    "{} ends before byte {end}",
                    self.0.key
                )));
            }
            if out.is_empty() && b.len() == length {
                return Ok(b);
            }
            pos += b.len() as u64;
            out.extend_from_slice(&b);
        }
        Ok(bytes::Bytes::from(out))
    }
}

/// A sequential reader over a [`RangeFile`] from a position.
#[cfg(feature = "object-store")]
struct RangeRead {
    file: RangeFile,
    pos: u64,
}

#[cfg(feature = "object-store")]
impl std::io::Read for RangeRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let b = self.file.0.read_at(self.pos, buf.len() as u64)?;
        buf[..b.len()].copy_from_slice(&b);
        self.pos += b.len() as u64;
        Ok(b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webdataset_keys_split_at_the_first_dot_of_the_name() {
        assert_eq!(split_key("a/b/000123.jpg"), ("a/b/000123", "jpg"));
        assert_eq!(split_key("x.seg.png"), ("x", "seg.png"));
        assert_eq!(split_key("dir.v2/x.cls"), ("dir.v2/x", "cls"));
        assert_eq!(split_key("noext"), ("noext", ""));
    }
}
