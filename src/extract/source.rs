//! Image sources: a directory (recursive), a `.txt` list of paths, a single image, or a
//! `.zip` / `.tar` archive. Listing is sorted and deterministic, so `--shuffle --seed`,
//! `--max-images` and `--shard i/n` select the same images on every machine.
//!
//! Owns: finding images and reading their bytes. Must not: decode them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        }
    }
}

fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// True when `path` looks like an image source rather than a DNA file: a directory, an
/// image, a `.txt` list or a `.zip` / `.tar` archive.
pub fn looks_like_image_source(path: &Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let name = path.to_string_lossy().to_ascii_lowercase();
    is_image_name(&name)
        || name.ends_with(".txt")
        || name.ends_with(".zip")
        || name.ends_with(".tar")
}

/// Lists the images of a source, sorted by name as the reference sorts them (a `.txt`
/// list by its resolved paths).
pub fn list(path: &Path) -> Result<Vec<ImageItem>, ExtractError> {
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
                "not an image source: give a directory, an image ({}), a .txt list or a .zip/.tar archive",
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

/// Parses `i/n` with `0 <= i < n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('/')
        .ok_or_else(|| format!("shard {s:?}: expected i/n, e.g. 0/4"))?;
    let (i, n): (usize, usize) = (
        a.trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: {a:?} is not a number"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: {b:?} is not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {s:?}: need 0 <= i < n"));
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
        assert_eq!(parse_shard("1/4"), Ok((1, 4)));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("0/0").is_err());
        assert!(parse_shard("x").is_err());
    }
}
