//! The layers of docs/ARCHITECTURE.md, held by the code's own `use` lines: a module may
//! name (`crate::m`) a module of its own layer or a lower one, never a higher one. Error
//! types (`...Error`) are exempt: errors fold upward by design.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::root;

/// Rank of each top-level module, lowest first (docs/ARCHITECTURE.md draws the same).
const LAYERS: &[(&str, u8)] = &[
    // Pure model, codecs and leaf utilities.
    ("format", 0),
    ("dna", 0),
    ("distance", 0),
    ("mask", 0),
    ("refname", 0),
    ("rng", 0),
    ("fsio", 0),
    ("reference", 0),
    // Storage and producers of DNAs.
    ("store", 1),
    ("stored", 1),
    ("catalogue", 1),
    // Dataset cards: their record, front matter and safe rendering.
    ("card", 1),
    // Object storage, and the shared catalogue's commit log on it.
    ("objstore", 1),
    ("ledger", 1),
    // The derived index reads the store and catalogue through its own `Source` trait.
    ("query", 1),
    ("simfs", 1),
    ("token", 1),
    ("synth", 1),
    ("extract", 1),
    // The store with its catalogue.
    ("db", 2),
    // The application layer and its wire types.
    ("engine", 3),
    ("protocol", 3),
    ("fuzz", 3),
    // Front ends.
    ("cli", 4),
    ("server", 4),
];

fn rank(m: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, r)| *r)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A source file's path under `src` and the top-level module it belongs to.
fn top_module<'a>(src: &Path, f: &'a Path) -> (&'a Path, String) {
    let rel = f.strip_prefix(src).unwrap();
    let top = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string();
    (rel, top)
}

/// The crate modules a file names, with the item named: `crate::query::Mode` gives
/// ("query", "Mode"); grouped imports `crate::{a, b::C}` give each.
fn named(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        let (rest, end) = match rest.strip_prefix('{') {
            Some(group) => (group, group.find('}').unwrap_or(group.len())),
            None => (
                rest,
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len()),
            ),
        };
        for part in rest[..end].split(',') {
            let mut segs = part.trim().split("::");
            let module = segs.next().unwrap_or("").trim().to_string();
            let item = segs.next().unwrap_or("").trim().to_string();
            out.push((module, item));
        }
    }
    out
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = root().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = BTreeMap::new();
    let mut checked = 0;
    for f in &files {
        let (rel, top) = top_module(&src, f);
        let Some(own) = rank(&top) else {
            // lib.rs and main.rs sit above every layer.
            assert!(
                top == "lib" || top == "main",
                "{}: module {top} has no layer in tests/it/layers.rs (add it, and to docs/ARCHITECTURE.md)",
                rel.display()
            );
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (module, item) in named(&text) {
            let Some(theirs) = rank(&module) else {
                continue;
            };
            checked += 1;
            if theirs > own && !item.ends_with("Error") {
                violations
                    .entry(rel.display().to_string())
                    .or_insert_with(Vec::new)
                    .push(format!("crate::{module}::{item}"));
            }
        }
    }
    assert!(
        checked > 100,
        "found only {checked} imports: is the parser broken?"
    );
    assert!(
        violations.is_empty(),
        "lower layers import higher ones: {violations:#?}"
    );
}

/// The checker itself: an import of a higher layer is caught, an error type is not.
#[test]
fn the_layer_check_catches_an_upward_import() {
    let found = named("use crate::{engine::Engine, format::Digest};\nlet x = crate::query::Mode::Auto;\nuse crate::catalogue::CatalogueError;");
    assert_eq!(
        found,
        vec![
            ("engine".to_string(), "Engine".to_string()),
            ("format".to_string(), "Digest".to_string()),
            ("query".to_string(), "Mode".to_string()),
            ("catalogue".to_string(), "CatalogueError".to_string()),
        ]
    );
    assert_eq!(
        named("use crate::Error;"),
        vec![("Error".to_string(), String::new())]
    );
    assert!(rank("db") > rank("query") && rank("engine") > rank("db"));
    assert!(rank("server") > rank("engine") && rank("format") < rank("store"));
}

/// Front ends reach the layers under the engine only through it: no `crate::db`,
/// `crate::query`, `crate::store` or `crate::catalogue` item but error types.
#[test]
fn front_ends_talk_to_the_engine_only() {
    let mut files = Vec::new();
    for d in ["cli", "server"] {
        sources(&root().join("src").join(d), &mut files);
    }
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (module, item) in named(&text) {
            assert!(
                !matches!(
                    module.as_str(),
                    "db" | "query" | "store" | "catalogue" | "objstore" | "ledger"
                ) || item.ends_with("Error"),
                "{}: crate::{module}::{item} (use crate::engine)",
                f.display()
            );
        }
    }
}

/// The pure layer (models, codecs, distances, masks, names, reference files) returns its
/// own errors, folded into the crate's `Error` above it: none of its files names the
/// crate root's `Error`, which would tie it to the storage and server errors it folds.
#[test]
fn the_pure_layer_has_errors_of_its_own() {
    let src = root().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut pure = 0;
    for f in &files {
        let (rel, top) = top_module(&src, f);
        if rank(&top) != Some(0) {
            continue;
        }
        pure += 1;
        let text = std::fs::read_to_string(f).unwrap();
        for (module, _) in named(&text) {
            assert_ne!(
                module,
                "Error",
                "{}: names crate::Error; return this module's own error type",
                rel.display()
            );
        }
    }
    assert!(pure >= 8, "found only {pure} files of the pure layer");
}
