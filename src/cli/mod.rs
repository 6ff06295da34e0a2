//! The command line: clap definitions, one handler per command, human and `--json`
//! output, and the mapping from errors to exit codes. Handlers call [`crate::Engine`]
//! and format what it returns; no application or storage logic lives here.

mod extract;
mod output;
mod remote;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::distance::Metric;
use crate::engine::{self as db, AnyDna};
use crate::format::DistKind;
use crate::refname::RefName;
use crate::Engine;
use output::{human_bytes, Out};

const MASK_HELP: &str = "Mask grammar (which neurons count):
  all | *                 every neuron (the default)
  layer3_*                every neuron of the layers matching a glob (* and ?)
  layer3_2:17,40-59       neurons 17 and 40..59 of layer3_2
  @weather                a named mask stored with `vdna-db mask add`
  -layer1_*               exclusion; a spec opening with one starts from all neurons
Terms combine left to right, separated by spaces or commas: 'all -layer1_* layer1_2:0-9'.";

const COMPARE_HELP: &str = "Examples:
  vdna-db compare cityscapes:v2 mine.vdna --mask 'layer4_*' --per-layer
  vdna-db compare a b --top-neurons 10 --json

Mask grammar (which neurons count):
  all | *                 every neuron (the default)
  layer3_*                every neuron of the layers matching a glob (* and ?)
  layer3_2:17,40-59       neurons 17 and 40..59 of layer3_2
  @weather                a named mask stored with `vdna-db mask add`
  -layer1_*               exclusion; a spec opening with one starts from all neurons";

const QUERY_HELP: &str = "Examples:
  vdna-db query mine.vdna --top 5
  vdna-db query cityscapes:v2 --mask @weather --exclude-self --filter domain=driving
  vdna-db query mine:v1 --approx --explain --json

The exact path (default) returns what a brute-force scan would, pruning with provable
lower bounds; --approx may use an HNSW graph built by `vdna-db reindex` for the
all-neurons and whole-layer masks and re-ranks its candidates exactly; --estimate ranks
them by the summaries' lower bound instead and reads no DNA (distances marked ~).
Masks: see `vdna-db compare --help` or `vdna-db --help`.";

/// vdna-db: a registry and database of Visual DNAs.
///
/// A Visual DNA summarises an image dataset as per-neuron activation distributions of a
/// frozen network. vdna-db stores DNAs content-addressed and compressed, names them
/// (name:tag), compares them under neuron masks with the reference library's distances,
/// and ranks the closest stored datasets to a new one.
#[derive(Parser, Debug)]
#[command(name = "vdna-db", version, propagate_version = true, after_help = MASK_HELP)]
pub struct Cli {
    /// Store root [default: $VDNA_DB_HOME, else the per-user data directory]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print results as JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but results and errors
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Talk to a vdna-db server instead of the local store (push, pull, ls, show, query, compare)
    #[arg(long, global = true, env = "VDNA_DB_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// API token for --remote writes (or private servers)
    #[arg(
        long,
        global = true,
        env = "VDNA_DB_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Seconds to wait for another vdna-db process to release the local store before
    /// failing as busy (one process opens a store at a time)
    #[arg(
        long,
        global = true,
        env = "VDNA_DB_LOCK_WAIT",
        value_name = "SECS",
        default_value_t = 10.0
    )]
    pub lock_wait: f64,
    /// Codec of histogram layers this command stores: fast (4-byte shuffle + zstd, about
    /// 0.7x the reference's npz, decodes 3-4x faster) or compact (context-modelled rANS,
    /// about 0.5x). Stored objects of either codec read alike
    #[arg(
        long,
        global = true,
        env = "VDNA_DB_CODEC",
        value_parser = ["fast", "compact"],
        default_value = "fast"
    )]
    pub codec: String,
    /// Where the store lives: a directory (the embedded store; alone, the same as
    /// --home), s3://BUCKET/PREFIX (S3 or any S3-compatible server; credentials, region
    /// and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL; several `serve` replicas can share one bucket) or memory://NAME
    /// (this process only, for tests). With a bucket, or a directory and another --home,
    /// --home is this process's cache of the store (catalogue view and index, rebuilt
    /// from the store when deleted), so several processes can share one store, each with
    /// its own --home [default for a bucket: a directory per bucket under the per-user
    /// cache directory]
    #[arg(long, global = true, env = "VDNA_DB_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Seconds a read may lag behind other processes' writes to a shared store before it
    /// catches up (a process always sees its own writes at once)
    #[arg(
        long,
        global = true,
        env = "VDNA_DB_REFRESH",
        value_name = "SECS",
        default_value_t = 1.0
    )]
    pub refresh: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an empty store (other commands create it on first use too)
    Init,
    /// Store a DNA from a .vdna bundle or a reference .json/.npz pair (named after the file unless --name)
    Import(PushArgs),
    /// Store a DNA and name it (same inputs as import; --name is required)
    Push(PushArgs),
    /// Write a stored DNA to a .vdna bundle or a reference .json/.npz pair
    Export(ExportArgs),
    /// List named DNAs
    Ls(LsArgs),
    /// Show a DNA: space, layers, blobs, annotations
    Show(ShowArgs),
    /// Give a stored DNA another name
    Tag { source: String, target: String },
    /// Remove a name (objects stay until `gc`)
    Rm { reference: String },
    /// Distance between two DNAs under a mask
    #[command(after_help = COMPARE_HELP)]
    Compare(CompareArgs),
    /// Rank the stored DNAs closest to a DNA under a mask
    #[command(after_help = QUERY_HELP)]
    Query(QueryArgs),
    /// Manage named masks
    #[command(subcommand)]
    Mask(MaskCommand),
    /// Dataset cards: markdown saying what a dataset is (description, source, licence,
    /// citation, tags), shown on its catalogue page and searched by the catalogue
    #[command(subcommand, after_help = CARD_HELP)]
    Card(CardCommand),
    /// Re-hash every object and check every name; exit 1 if anything is wrong
    Verify {
        /// Also rebuild derived state (summary segments, HNSW graphs) from the objects
        #[arg(long)]
        repair: bool,
    },
    /// Remove objects no name reaches
    Gc {
        /// Spare unreachable objects younger than this many seconds (an upload sends its
        /// objects before the manifest that makes them reachable)
        #[arg(long, value_name = "SECS", default_value_t = 900)]
        grace: u64,
    },
    /// Rebuild the query index (derived state) from the objects and the catalogue
    Reindex {
        /// Build HNSW graphs (for `query --approx`) in spaces with at least this many DNAs
        #[arg(
            long,
            value_name = "N",
            env = "VDNA_DB_HNSW_MIN_ROWS",
            default_value_t = 2000
        )]
        graphs_min: usize,
    },
    /// Build a demo catalogue (reference fixtures plus synthetic datasets) and query it
    Demo(DemoArgs),
    /// Turn an image source into a DNA file (.vdna bundle or reference pair)
    Extract(extract::ExtractArgs),
    /// Merge DNAs of one space (e.g. the shards of an extraction) into one
    #[command(
        after_help = "Histograms add, Gaussians combine exactly from image counts, ranges take min / max.

Examples:
  vdna-db merge part0.vdna part1.vdna part2.vdna part3.vdna -o whole.vdna
  vdna-db merge photos:v1 new-photos.vdna --name photos:v2
  vdna-db merge --shards imagenet:train      # the parts pushed with --shard I/N
                                             # (stored as imagenet:train-shard-I-of-N)"
    )]
    Merge(MergeArgs),
    /// Compute per-neuron activation ranges over calibration images (reference JSON layout)
    Ranges(extract::RangesArgs),
    /// Write an extractor's default weights as safetensors
    Weights(extract::WeightsArgs),
    /// Serve the store over HTTP (JSON API under /v1)
    Serve(remote::ServeArgs),
    /// Manage API tokens of this store's server
    #[command(subcommand)]
    Token(remote::TokenCommand),
    /// Fetch a DNA from a server (--remote) into the local store, verifying every digest
    Pull(remote::PullArgs),
}

#[derive(Args, Debug)]
#[command(after_help = extract::EXTRACT_HELP)]
pub struct PushArgs {
    /// A .vdna bundle, a reference pair (path to its .json, its .npz, or their common stem),
    /// or an image source (directory, image, .txt list, .zip, .tar) to extract first
    pub path: PathBuf,
    /// Name to give it: name[:tag], tag defaults to latest [import default: the file's stem]
    #[arg(long, short)]
    pub name: Option<String>,
    /// Annotation to attach (repeatable): --meta source=flickr --meta split=val
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// A markdown dataset card to set on the name (see `vdna-db card --help`); checked
    /// before anything is stored
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
    #[command(flatten)]
    pub extract: extract::ExtractFlags,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// DNAs to merge: stored name:tag or digests, .vdna bundles or reference pairs
    #[arg(required_unless_present = "shards", num_args = 2..)]
    pub inputs: Vec<String>,
    /// Merge the stored parts NAME:TAG-shard-I-of-N of a distributed extraction (checked:
    /// exactly parts 0..N-1, one space, one source selection) into NAME:TAG
    #[arg(long, value_name = "NAME:TAG", conflicts_with = "inputs")]
    pub shards: Option<String>,
    /// Write the merged DNA to this .vdna bundle
    #[arg(long, short, required_unless_present_any = ["name", "shards"])]
    pub output: Option<PathBuf>,
    /// Store the merged DNA under this name[:tag]
    #[arg(long, short)]
    pub name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A stored name:tag or digest
    pub reference: String,
    /// Output format
    #[arg(long, value_parser = ["vdna", "reference"], default_value = "vdna")]
    pub format: String,
    /// Output path (reference format: the stem; .json and .npz are written beside it)
    #[arg(long, short)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only names matching this glob (e.g. 'synth/*')
    pub pattern: Option<String>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// A stored name:tag or digest, or a DNA file
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// First DNA: a stored name:tag or digest, a .vdna bundle, a reference pair or an image source
    pub a: String,
    /// Second DNA, same forms
    pub b: String,
    /// Neurons to compare (see the mask grammar in --help); a spec may open with an
    /// exclusion (`--mask -layer1_*`)
    #[arg(long, short, default_value = "all", allow_hyphen_values = true)]
    pub mask: String,
    /// Distance: emd (histograms), nfd (gaussian, layer-gaussian), fd (layer-gaussian)
    #[arg(long)]
    pub metric: Option<String>,
    /// Print the distance of every masked layer
    #[arg(long)]
    pub per_layer: bool,
    /// Print the N neurons that differ most
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub top_neurons: usize,
    #[command(flatten)]
    pub extract: extract::ExtractFlags,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The query DNA: a stored name:tag or digest, a .vdna bundle, a reference pair or an
    /// image source (extracted first)
    pub source: String,
    /// How many results
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top: usize,
    /// Neurons to compare (see the mask grammar in --help); a spec may open with an
    /// exclusion (`--mask -layer1_*`)
    #[arg(long, short, default_value = "all", allow_hyphen_values = true)]
    pub mask: String,
    /// Distance: emd, nfd or fd (default: emd for histograms, nfd for Gaussians)
    #[arg(long)]
    pub metric: Option<String>,
    /// Force the exact path (the bound cascade, or a scan); without --exact, --approx or
    /// --estimate the planner chooses and --explain states its rule
    #[arg(long, conflicts_with_all = ["approx", "estimate"])]
    pub exact: bool,
    /// Force the approximate path: the mask's HNSW graph where one is built, else bound
    /// ranking with a budget of exact distances; the answers' distances are exact (a
    /// catalogue too small to gain from it is still answered exactly)
    #[arg(long, conflicts_with = "estimate")]
    pub approx: bool,
    /// Fastest: like --approx, but rank by the summaries' estimate of the distance (its
    /// sketch lower bound) and decode no DNA; estimated distances print with a `~` (and
    /// `"estimated": true` in --json). Histogram DNAs; small catalogues answer exactly
    #[arg(long)]
    pub estimate: bool,
    /// Only DNAs whose annotation KEY equals VALUE (repeatable)
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Only refs with this tag
    #[arg(long)]
    pub tag: Option<String>,
    /// Leave out stored DNAs identical to the query
    #[arg(long)]
    pub exclude_self: bool,
    /// Print the plan, candidates per stage, bytes read and time per stage
    #[arg(long)]
    pub explain: bool,
    /// Print the per-layer distances of each hit
    #[arg(long)]
    pub per_layer: bool,
    #[command(flatten)]
    pub extract: extract::ExtractFlags,
}

#[derive(Subcommand, Debug)]
pub enum MaskCommand {
    /// Store a named mask, usable as @NAME in any mask spec
    Add {
        name: String,
        /// The mask spec; it may open with an exclusion (`mask add no-early -layer1_*`)
        #[arg(allow_hyphen_values = true)]
        spec: String,
    },
    /// List named masks
    Ls,
    /// Remove a named mask
    Rm { name: String },
}

const CARD_HELP: &str =
    "A card is CommonMark text of at most 64 KiB. It may open with a front matter block
of `key: value` lines between two `---` lines; title, source, license (or licence),
citation and tags are shown as fields, other keys as a table:

  ---
  title: Street scenes
  source: https://example.org/street-scenes
  license: CC-BY-4.0
  tags: [urban, photos]
  citation: |
    @misc{street, title={Street scenes}, year={2026}}
  ---
  Photos of streets taken at dawn, 2,000 images at 512 px.

Raw HTML in a card is shown as text, links go only to http(s), mailto and this site,
and images are shown as links. `rm` removes a name's card with it; `tag` copies it.

Examples:
  vdna-db push photos/ --name streets:v1 --card README.md
  vdna-db card set streets:v1 CARD.md
  vdna-db card show streets:v1 --json
  vdna-db --remote https://dna.example.org card set streets:v1 CARD.md";

#[derive(Subcommand, Debug)]
pub enum CardCommand {
    /// Set the card of a name:tag from a markdown file (- for standard input)
    Set { reference: String, file: PathBuf },
    /// Print the card of a name:tag (--json: its markdown and parsed fields)
    Show { reference: String },
    /// Remove the card of a name:tag
    Rm { reference: String },
}

/// Reads a card file (or standard input for `-`) and checks it before anything is stored.
fn read_card(path: &Path, what: &str) -> Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the card from standard input")?;
        s
    } else {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading card {}", path.display()))?;
        String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!(
                "card {} is not UTF-8 text: save it as UTF-8 markdown",
                path.display()
            )
        })?
    };
    crate::card::validate(what, &text)?;
    Ok(text)
}

/// Prints a card: its fields, then its markdown.
fn print_card(out: &mut Out, name: &str, markdown: &str, updated: u64) -> Result<()> {
    let c = crate::card::parse(markdown).unwrap_or_default();
    out.json(&serde_json::json!({
        "ref": name,
        "markdown": markdown,
        "updated": updated,
        "title": c.title,
        "source": c.source,
        "license": c.license,
        "citation": c.citation,
        "tags": c.tags,
    }))?;
    out.line(markdown.trim_end())?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Images generated per scene dataset (sky, forest, city, night, beach) and extracted
    /// with the embedded efficientnet_lite0; 0 skips extraction
    #[arg(long, default_value_t = 48)]
    pub images: u64,
    /// Folder of reference .json/.npz pairs to import first
    #[arg(long, default_value = "fixtures/reference")]
    pub fixtures: PathBuf,
    /// Synthetic dataset families to add
    #[arg(long, default_value_t = 4)]
    pub families: usize,
    /// Members per family
    #[arg(long, default_value_t = 3)]
    pub members: usize,
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    // Fault-injection builds read their fail points from FAILPOINTS.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let mut out = Out::new(cli.json, cli.quiet);
    match run(cli, &mut out) {
        Ok(code) => code,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return 0;
            }
            let _ = std::io::stdout().flush();
            eprintln!("error: {e:#}");
            let internal = e
                .chain()
                .filter_map(|c| c.downcast_ref::<crate::Error>())
                .any(|v| !v.is_user_error());
            if internal {
                2
            } else {
                1
            }
        }
    }
}

/// Where the local store is and how to open it (from the global flags).
pub struct StoreAt {
    home: Option<PathBuf>,
    lock_wait: f64,
    codec: String,
    store: Option<String>,
    refresh: f64,
}

impl StoreAt {
    fn of(cli: &Cli) -> StoreAt {
        StoreAt {
            home: cli.home.clone(),
            lock_wait: cli.lock_wait,
            codec: cli.codec.clone(),
            store: cli.store.clone(),
            refresh: cli.refresh,
        }
    }
}

/// The local cache of a store in a bucket: a directory per bucket URL under the
/// per-user cache directory.
fn cache_home(loc: &db::Location) -> PathBuf {
    let url = loc.url();
    let readable: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    let tag = &crate::format::Digest::of(url.as_bytes()).hex()[..8];
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("vdna-db")
        .join(format!("{readable}-{tag}"))
}

fn open_db(at: &StoreAt) -> Result<Engine> {
    let location = match &at.store {
        Some(s) => Some(db::Location::parse(s)?),
        None => None,
    };
    let home = match (&location, &at.home) {
        (_, Some(h)) => h.clone(),
        (Some(db::Location::Local(dir)), None) => dir.clone(),
        (Some(loc), None) => cache_home(loc),
        (None, None) => db::default_home(),
    };
    if !(at.lock_wait.is_finite() && at.lock_wait >= 0.0) {
        bail!(
            "--lock-wait {}: expected a number of seconds >= 0",
            at.lock_wait
        );
    }
    if !(at.refresh.is_finite() && at.refresh >= 0.0) {
        bail!(
            "--refresh {}: expected a number of seconds >= 0",
            at.refresh
        );
    }
    let opts = db::OpenOptions {
        location,
        refresh: std::time::Duration::from_secs_f64(at.refresh.min(86_400.0)),
        lock_wait: std::time::Duration::from_secs_f64(at.lock_wait.min(86_400.0)),
        histogram_codec: if at.codec == "compact" {
            crate::format::Codec::Hist
        } else {
            crate::format::Codec::Shuffle32
        },
        ..db::OpenOptions::default()
    };
    Engine::open_with(&home, &opts).map_err(|e| {
        let busy = matches!(
            e,
            crate::Error::Catalogue(crate::catalogue::CatalogueError::Busy(_))
        );
        let err = anyhow::Error::new(e).context(format!("opening store {}", home.display()));
        match remote::serving_url(&home) {
            Some(url) if busy => err.context(format!(
                "a server at {url} owns this store: run the command through it with --remote {url} (gc, verify, reindex and token need an admin token: --token)"
            )),
            _ => err,
        }
    })
}

fn parse_meta(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for it in items {
        let Some((k, v)) = it.split_once('=') else {
            bail!("--meta {it:?}: expected KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--meta {it:?}: empty key");
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// A DNA named on the command line: a file when one exists at that path, else a stored ref.
fn load_any(db: &Engine, spec: &str) -> Result<(AnyDna, String)> {
    let p = Path::new(spec);
    if p.is_file() || crate::reference::looks_like_pair(p) {
        let (dna, _) = db::read_dna_file(p).with_context(|| format!("reading DNA file {spec}"))?;
        return Ok((AnyDna::Owned(dna), spec.to_string()));
    }
    let (digest, name) = db.resolve(spec)?;
    let stored = db.open_dna(&digest)?;
    Ok((
        AnyDna::Stored(stored),
        name.map_or(digest.to_string(), |n| n.to_string()),
    ))
}

/// Resolves an input on disk through the library's one resolver
/// ([`crate::engine::resolve_path`]) with the extraction flags, showing extraction
/// progress; `None` when nothing is at that path (the spec then names a stored DNA,
/// locally or on the server).
fn resolve_file(
    path: &Path,
    out: &mut Out,
    flags: &extract::ExtractFlags,
) -> Result<Option<crate::engine::Resolved>> {
    let kind = crate::engine::path_kind(path);
    if kind == crate::engine::PathKind::Missing {
        return Ok(None);
    }
    let settings = flags.settings()?;
    let resolved = if kind == crate::engine::PathKind::Images {
        extract::with_progress(
            out,
            &settings,
            |cb| Ok(crate::engine::resolve_path(path, &settings, cb)?),
            |r| r.as_ref().and_then(|r| r.report.as_ref()),
        )
        .with_context(|| format!("extracting a DNA from {}", path.display()))?
    } else {
        out.progress(&format!("reading {}", path.display()));
        crate::engine::resolve_path(path, &settings, &|_| {})?
    };
    let resolved =
        resolved.with_context(|| format!("{} vanished while being read", path.display()))?;
    if resolved.pinned {
        out.progress("pinned to the given weights and activation ranges");
    }
    Ok(Some(resolved))
}

/// The DNA of an input on disk, for query and compare: see [`resolve_file`].
fn file_input(
    spec: &str,
    out: &mut Out,
    flags: &extract::ExtractFlags,
) -> Result<Option<crate::dna::Dna>> {
    match resolve_file(Path::new(spec), out, flags)? {
        Some(r) => Ok(Some(
            r.input
                .into_dna()
                .with_context(|| format!("reading DNA file {spec}"))?,
        )),
        None => Ok(None),
    }
}

/// Like [`load_any`], through [`file_input`]: images are extracted and reference pairs
/// pinned with `flags`.
fn load_input(
    db: &Engine,
    spec: &str,
    out: &mut Out,
    flags: &extract::ExtractFlags,
) -> Result<(AnyDna, String)> {
    match file_input(spec, out, flags)? {
        Some(dna) => Ok((AnyDna::Owned(dna), spec.to_string())),
        None => load_any(db, spec),
    }
}

/// The `--remote` forms of push, import, ls, show, query and compare; `None` when the
/// command has no remote form (it then runs locally).
fn run_remote(cli: &Cli, url: &str, out: &mut Out) -> Result<Option<i32>> {
    let c = remote::client(url, &cli.token);
    match &cli.command {
        Command::Push(a) | Command::Import(a) => {
            let store = StoreAt::of(cli);
            let (input, mut ann, default) = resolve_push_input(&store, out, a)?;
            let name = push_name(a, default)?;
            let name = shard_target(out, a, name, &mut ann)?;
            let card = a
                .card
                .as_deref()
                .map(|p| read_card(p, &name.to_string()))
                .transpose()?;
            let objects = input.into_objects(3);
            remote::push_remote(out, &c, &objects, &name, &ann)?;
            extract::remove_checkpoint(out, &a.extract);
            if let Some(md) = card {
                let body = crate::protocol::SetCard { markdown: md };
                c.put_json(&format!("/v1/cards/{name}"), &serde_json::to_value(&body)?)
                    .with_context(|| {
                        format!("{name} is pushed, but its card was not set: run vdna-db --remote {url} card set {name} FILE")
                    })?;
                out.line(&format!("set the card of {name}"))?;
            }
        }
        Command::Ls(a) => {
            // The server pages its list (at most 1,000 a page): read every page.
            let mut rows: Vec<db::Listing> = Vec::new();
            loop {
                let v = c.get_json(&format!("/v1/datasets?limit=1000&offset={}", rows.len()))?;
                let page: Vec<db::Listing> = serde_json::from_value(v["items"].clone())
                    .context("reading the server's dataset list")?;
                let total = v["total"].as_u64().unwrap_or(0) as usize;
                let empty = page.is_empty();
                rows.extend(page);
                if empty || rows.len() >= total {
                    break;
                }
            }
            if let Some(p) = &a.pattern {
                rows.retain(|r| {
                    crate::mask::glob_match(p, &r.name) || crate::mask::glob_match(p, &r.reference)
                });
            }
            out.json(&rows)?;
            print_listing(out, &rows)?;
        }
        Command::Show(a) => {
            let v = c.get_json(&format!("/v1/datasets/{}", a.reference))?;
            out.json(&v)?;
            out.line(&format!(
                "{}\n  digest   {}\n  space    {}\n  images   {}\n  layers   {}",
                v["ref"].as_str().unwrap_or(&a.reference),
                v["digest"].as_str().unwrap_or("?"),
                v["space_digest"].as_str().unwrap_or("?"),
                v["images"],
                v["layers"].as_array().map_or(0, |l| l.len())
            ))?;
        }
        Command::Query(a) => {
            let mut body = crate::protocol::QueryBody {
                reference: None,
                mask: a.mask.clone(),
                k: a.top,
                metric: a.metric.clone(),
                filters: parse_meta(&a.filters)?,
                tag: a.tag.clone(),
                exclude_self: a.exclude_self,
                mode: Some(query_mode(a)),
                approx: false,
                per_layer: a.per_layer,
            };
            let v = match file_input(&a.source, out, &a.extract)? {
                None => {
                    body.reference = Some(a.source.clone());
                    c.post_json("/v1/query", &serde_json::to_value(&body)?)?
                }
                Some(dna) => {
                    let bundle = db::bundle_of(&dna, &BTreeMap::new(), 3);
                    c.query_bundle(&bundle, &body.to_query_string())?
                }
            };
            let res: crate::engine::QueryResult =
                serde_json::from_value(v).context("reading the server's query answer")?;
            print_query(out, &res, a, &format!("{} on {url}", a.source))?;
            return Ok(Some(0));
        }
        Command::Compare(a) => {
            let body = crate::protocol::CompareBody {
                a: a.a.clone(),
                b: a.b.clone(),
                mask: a.mask.clone(),
                metric: a.metric.clone(),
                top_neurons: a.top_neurons,
            };
            let v = c.post_json("/v1/compare", &serde_json::to_value(&body)?)?;
            let cmp: crate::engine::Comparison =
                serde_json::from_value(v).context("reading the server's comparison")?;
            print_comparison(out, &cmp, a, &a.a, &a.b)?;
        }
        Command::Verify { repair } => {
            let body = crate::protocol::VerifyBody { repair: *repair };
            let v = c.post_json("/v1/admin/verify", &serde_json::to_value(&body)?)?;
            let r: crate::engine::VerifyOutcome =
                serde_json::from_value(v).context("reading the server's verify report")?;
            return Ok(Some(print_verify(out, &r, *repair)?));
        }
        Command::Gc { grace } => {
            let body = crate::protocol::GcBody {
                grace_secs: Some(*grace),
            };
            let v = c.post_json("/v1/admin/gc", &serde_json::to_value(&body)?)?;
            let r: crate::engine::GcReport =
                serde_json::from_value(v).context("reading the server's gc report")?;
            print_gc(out, &r, *grace)?;
        }
        Command::Reindex { graphs_min } => {
            let t = std::time::Instant::now();
            let body = crate::protocol::ReindexBody {
                graphs_min: Some(*graphs_min),
            };
            let v = c.post_json("/v1/admin/reindex", &serde_json::to_value(&body)?)?;
            let r: crate::engine::ReindexReport =
                serde_json::from_value(v).context("reading the server's reindex report")?;
            print_reindex(out, &r, t.elapsed().as_secs_f64())?;
        }
        Command::Token(t) => remote::run_token_remote(&c, out, t)?,
        Command::Tag { source, target } => {
            let new = RefName::parse(target)?;
            let (digest, annotations) = if source.starts_with("sha256:") {
                (source.clone(), BTreeMap::new())
            } else {
                let from = RefName::parse(source)?;
                let v = c.get_json(&format!("/v1/refs/{from}"))?;
                let digest = v["digest"]
                    .as_str()
                    .with_context(|| format!("the server's record of {from} has no digest"))?
                    .to_string();
                let ann = serde_json::from_value(v["annotations"].clone()).unwrap_or_default();
                (digest, ann)
            };
            let body = crate::protocol::SetRef {
                digest: digest.clone(),
                annotations,
            };
            c.put_json(&format!("/v1/refs/{new}"), &serde_json::to_value(&body)?)?;
            // The card goes with the name, as a local tag does.
            if let Ok(from) = RefName::parse(source) {
                match c.get_json(&format!("/v1/cards/{from}")) {
                    Ok(v) => {
                        let body = crate::protocol::SetCard {
                            markdown: v["markdown"].as_str().unwrap_or_default().to_string(),
                        };
                        c.put_json(&format!("/v1/cards/{new}"), &serde_json::to_value(&body)?)?;
                    }
                    Err(crate::Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            out.line(&format!("{new} -> {digest}"))?;
            out.json(&serde_json::json!({ "ref": new.to_string(), "digest": digest }))?;
        }
        Command::Card(cmd) => match cmd {
            CardCommand::Set { reference, file } => {
                let name = RefName::parse(reference)?;
                let md = read_card(file, reference)?;
                let body = crate::protocol::SetCard { markdown: md };
                let v = c.put_json(&format!("/v1/cards/{name}"), &serde_json::to_value(&body)?)?;
                out.line(&format!("set the card of {name} on {url}"))?;
                out.json(&v)?;
            }
            CardCommand::Show { reference } => {
                let name = RefName::parse(reference)?;
                let v = c.get_json(&format!("/v1/cards/{name}"))?;
                print_card(
                    out,
                    &name.to_string(),
                    v["markdown"].as_str().unwrap_or_default(),
                    v["updated"].as_u64().unwrap_or(0),
                )?;
            }
            CardCommand::Rm { reference } => {
                let name = RefName::parse(reference)?;
                let v = c.delete_json(&format!("/v1/cards/{name}"))?;
                out.line(&format!("removed the card of {name} on {url}"))?;
                out.json(&v)?;
            }
        },
        Command::Rm { reference } => {
            let name = RefName::parse(reference)?;
            let v = c.delete_json(&format!("/v1/refs/{name}"))?;
            out.line(&format!(
                "removed {name} (was {}; gc --remote frees its objects)",
                v["digest"].as_str().unwrap_or("?")
            ))?;
            out.json(&v)?;
        }
        _ => return Ok(None),
    }
    Ok(Some(0))
}

/// Prints what `verify` found (locally or from a server) and picks the exit code.
fn print_verify(out: &mut Out, r: &crate::engine::VerifyOutcome, repair: bool) -> Result<i32> {
    out.json(r)?;
    for p in &r.problems {
        out.line(&format!("BAD {}: {}", p.object, p.problem))?;
    }
    for p in &r.index_problems {
        out.line(&format!(
            "{} {}: {}",
            if repair { "REPAIRED" } else { "DAMAGED" },
            p.object,
            p.problem
        ))?;
    }
    if let Some(x) = &r.reindexed {
        out.line(&format!(
            "rebuilt derived state: {} DNAs in {} spaces",
            x.dnas, x.spaces
        ))?;
    }
    out.line(&format!(
        "checked {} objects and {} names: {}",
        r.objects_checked,
        r.refs_checked,
        if r.problems.is_empty() {
            "all good".to_string()
        } else {
            format!("{} problems", r.problems.len())
        }
    ))?;
    if !r.problems.is_empty() {
        out.line(
            "damaged objects cannot be rebuilt from others: re-import or pull the DNAs named above",
        )?;
        return Ok(1);
    }
    if !r.clean() {
        out.line("the index is derived state: vdna-db verify --repair rebuilds it")?;
        return Ok(1);
    }
    Ok(0)
}

fn print_gc(out: &mut Out, r: &crate::engine::GcReport, grace: u64) -> Result<()> {
    out.json(r)?;
    out.line(&format!(
        "removed {} objects ({}), kept {}{}",
        r.objects_removed,
        human_bytes(r.bytes_freed),
        r.objects_kept,
        if r.objects_recent > 0 {
            format!(
                "; spared {} unreachable objects younger than {grace} s (--grace 0 removes them)",
                r.objects_recent
            )
        } else {
            String::new()
        }
    ))?;
    Ok(())
}

fn print_reindex(out: &mut Out, r: &crate::engine::ReindexReport, secs: f64) -> Result<()> {
    out.json(r)?;
    out.line(&format!(
        "reindexed {} DNAs in {} spaces ({} HNSW graphs) in {secs:.2} s",
        r.dnas, r.spaces, r.graphs,
    ))?;
    Ok(())
}

/// The planner mode `--exact` / `--approx` / `--estimate` ask for (the planner chooses
/// without any).
fn query_mode(a: &QueryArgs) -> crate::engine::Mode {
    if a.exact {
        crate::engine::Mode::Exact
    } else if a.approx {
        crate::engine::Mode::Approx
    } else if a.estimate {
        crate::engine::Mode::Estimate
    } else {
        crate::engine::Mode::Auto
    }
}

fn run(cli: Cli, out: &mut Out) -> Result<i32> {
    if let Some(url) = cli.remote.clone() {
        if let Some(code) = run_remote(&cli, &url, out)? {
            return Ok(code);
        }
    }
    let store = StoreAt::of(&cli);
    match cli.command {
        Command::Init => {
            let db = open_db(&store)?;
            out.line(&format!("store ready at {}", db.home().display()))?;
            out.json(&serde_json::json!({ "home": db.home() }))?;
        }
        Command::Import(a) => push(&store, out, a, false)?,
        Command::Push(a) => push(&store, out, a, true)?,
        Command::Export(a) => {
            let db = open_db(&store)?;
            let (digest, name) = db.resolve(&a.reference)?;
            let ann = db.annotations(name.as_ref())?;
            let written: Vec<PathBuf> = if a.format == "vdna" {
                let bytes = db.export_bundle(&digest, &ann)?;
                crate::fsio::write_file_atomic(&a.output, &bytes)
                    .with_context(|| format!("writing {}", a.output.display()))?;
                vec![a.output.clone()]
            } else {
                let dna = db.open_dna(&digest)?.load()?;
                let (j, n) = crate::engine::export_reference(&dna, &ann, &a.output)?;
                vec![j, n]
            };
            for w in &written {
                out.line(&format!("wrote {}", w.display()))?;
            }
            out.json(&serde_json::json!({ "digest": digest, "written": written }))?;
        }
        Command::Ls(a) => {
            let db = open_db(&store)?;
            let mut rows = db.list()?;
            if let Some(p) = &a.pattern {
                rows.retain(|r| {
                    crate::mask::glob_match(p, &r.name) || crate::mask::glob_match(p, &r.reference)
                });
            }
            out.json(&rows)?;
            print_listing(out, &rows)?;
        }
        Command::Show(a) => show(&store, out, &a.reference)?,
        Command::Tag { source, target } => {
            let db = open_db(&store)?;
            let (digest, name) = db.tag(&source, &target)?;
            out.line(&format!("{name} -> {digest}"))?;
            out.json(&serde_json::json!({ "ref": name.to_string(), "digest": digest }))?;
        }
        Command::Rm { reference } => {
            let db = open_db(&store)?;
            let (name, digest) = db.remove(&reference)?;
            out.line(&format!(
                "removed {name} (was {}; run vdna-db gc to free its objects)",
                digest.short()
            ))?;
            out.json(&serde_json::json!({ "removed": name.to_string(), "digest": digest }))?;
        }
        Command::Compare(a) => compare(&store, out, a)?,
        Command::Query(a) => return query(&store, out, a),
        Command::Card(c) => {
            let db = open_db(&store)?;
            match c {
                CardCommand::Set { reference, file } => {
                    let md = read_card(&file, &reference)?;
                    let name = db.set_card(&reference, &md)?;
                    out.line(&format!("set the card of {name} ({} bytes)", md.len()))?;
                    out.json(&serde_json::json!({ "ref": name.to_string(), "bytes": md.len() }))?;
                }
                CardCommand::Show { reference } => {
                    let name = RefName::parse(&reference)?;
                    let Some(c) = db.card(&name)? else {
                        bail!("{name} has no card (set one with vdna-db card set {name} FILE)");
                    };
                    print_card(out, &name.to_string(), &c.markdown, c.updated)?;
                }
                CardCommand::Rm { reference } => {
                    if !db.remove_card(&reference)? {
                        bail!("{reference} has no card");
                    }
                    out.line(&format!("removed the card of {reference}"))?;
                    out.json(&serde_json::json!({ "ref": reference, "removed": true }))?;
                }
            }
        }
        Command::Mask(m) => {
            let db = open_db(&store)?;
            match m {
                MaskCommand::Add { name, spec } => {
                    let m = db.add_mask(&name, &spec)?;
                    out.line(&format!("mask @{} = {}", m.name, m.spec))?;
                    out.json(&serde_json::json!({ "name": m.name, "spec": m.spec }))?;
                }
                MaskCommand::Ls => {
                    let masks = db.masks()?;
                    out.json(
                        &masks
                            .iter()
                            .map(|(n, s)| serde_json::json!({"name": n, "spec": s}))
                            .collect::<Vec<_>>(),
                    )?;
                    out.table(
                        &["NAME", "SPEC"],
                        masks
                            .iter()
                            .map(|(n, s)| vec![format!("@{n}"), s.clone()])
                            .collect(),
                    )?;
                }
                MaskCommand::Rm { name } => {
                    let name = name.trim_start_matches('@').to_string();
                    db.remove_mask(&name)?;
                    out.line(&format!("removed mask @{name}"))?;
                    out.json(&serde_json::json!({ "removed": name }))?;
                }
            }
        }
        Command::Verify { repair } => {
            let db = open_db(&store)?;
            let pb = out.work_bar("verify");
            let r = db.verify_with(repair, &|stage, done, total| {
                output::show_work(&pb, stage, done, total)
            });
            pb.finish_and_clear();
            return print_verify(out, &r?, repair);
        }
        Command::Gc { grace } => {
            let db = open_db(&store)?;
            let r = db.gc(Some(std::time::Duration::from_secs(grace)))?;
            print_gc(out, &r, grace)?;
        }
        Command::Reindex { graphs_min } => {
            let db = open_db(&store)?;
            let t = std::time::Instant::now();
            let pb = out.work_bar("reindex");
            let r = db.reindex_with(Some(graphs_min), &|stage, done, total| {
                output::show_work(&pb, stage, done, total)
            });
            pb.finish_and_clear();
            print_reindex(out, &r?, t.elapsed().as_secs_f64())?;
        }
        Command::Demo(a) => return demo(&store, out, a),
        Command::Extract(a) => extract::run_extract(out, a)?,
        Command::Merge(a) => merge(&store, out, a)?,
        Command::Ranges(a) => extract::run_ranges(out, a)?,
        Command::Weights(a) => extract::run_weights(out, a)?,
        Command::Serve(a) => remote::run_serve(open_db(&store)?, out, a)?,
        Command::Token(t) => remote::run_token(&open_db(&store)?, out, t)?,
        Command::Pull(a) => {
            let Some(url) = &cli.remote else {
                bail!("pull needs --remote URL (or VDNA_DB_REMOTE)");
            };
            let c = remote::client(url, &cli.token);
            remote::run_pull(&open_db(&store)?, out, &c, a)?
        }
    }
    Ok(0)
}

fn print_hits(out: &mut Out, hits: &[crate::engine::Hit]) -> std::io::Result<()> {
    out.table(
        &["RANK", "NAME", "DIGEST", "DISTANCE", "IMAGES"],
        hits.iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    (i + 1).to_string(),
                    r.reference.clone(),
                    r.digest.short(),
                    if r.estimated {
                        format!("~{:.6}", r.distance)
                    } else {
                        format!("{:.6}", r.distance)
                    },
                    r.images.to_string(),
                ]
            })
            .collect(),
    )
}

fn print_listing(out: &mut Out, rows: &[db::Listing]) -> std::io::Result<()> {
    out.table(
        &[
            "NAME",
            "TAG",
            "DIGEST",
            "EXTRACTOR",
            "KIND",
            "IMAGES",
            "SIZE",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.tag.clone(),
                    r.digest.short(),
                    r.extractor.clone(),
                    r.dist.clone(),
                    r.images.to_string(),
                    human_bytes(r.stored_bytes),
                ]
            })
            .collect(),
    )
}

/// The one resolver behind `push` and `import`, local and `--remote` alike: a file input
/// through [`resolve_file`], or, when no file is at that path, a stored name or digest of
/// the local store (as `docker push` sends a local image). Returns the input, its
/// annotations (--meta first, then the input's own) and the name it defaults to.
fn resolve_push_input(
    home: &StoreAt,
    out: &mut Out,
    a: &PushArgs,
) -> Result<(
    crate::engine::Input,
    BTreeMap<String, String>,
    Option<RefName>,
)> {
    let mut ann = parse_meta(&a.meta)?;
    let resolved = match resolve_file(&a.path, out, &a.extract)? {
        Some(r) => r,
        None => open_db(home)?.resolve_stored(&a.path.to_string_lossy())?,
    };
    if let Some(rep) = &resolved.report {
        out.progress(&format!("storing the DNA of {} images", rep.images));
    }
    for (k, v) in resolved.annotations {
        ann.entry(k).or_insert(v);
    }
    Ok((resolved.input, ann, resolved.default_name))
}

/// With `--shard i/n` over an image source, the name the part is stored under
/// (`NAME:TAG-shard-i-of-n`) and the marks `merge --shards` checks; otherwise `name`.
fn shard_target(
    out: &mut Out,
    a: &PushArgs,
    name: RefName,
    ann: &mut BTreeMap<String, String>,
) -> Result<RefName> {
    let Some((i, n)) = a.extract.shard else {
        return Ok(name);
    };
    if crate::engine::path_kind(&a.path) != crate::engine::PathKind::Images {
        return Ok(name);
    }
    let f = &a.extract;
    // Everything that selects the images, except the shard index.
    let selection = serde_json::json!({
        "source": a.path.to_string_lossy(),
        "shuffle": f.shuffle.then_some(f.seed),
        "max_images": f.max_images,
        "shards": n,
        "column": f.column,
    })
    .to_string();
    ann.extend(crate::engine::shard_annotations(&name, i, n, &selection));
    let part = crate::engine::shard_name(&name, i, n)?;
    out.progress(&format!(
        "shard {i} of {n} of {name}: stored as {part}; join the parts with `vdna-db merge --shards {name}`"
    ));
    Ok(part)
}

/// The name a push stores under: --name, else the input's default (its file stem, or the
/// stored name it was read from).
fn push_name(a: &PushArgs, default: Option<RefName>) -> Result<RefName> {
    match a.name.as_deref() {
        Some(n) => Ok(RefName::parse(n)?),
        None => default.with_context(|| {
            format!(
                "cannot derive a name from {}; give --name NAME[:TAG]",
                a.path.display()
            )
        }),
    }
}

fn push(home: &StoreAt, out: &mut Out, a: PushArgs, require_name: bool) -> Result<()> {
    if require_name && a.name.is_none() {
        bail!("push needs --name NAME[:TAG] (use import to store without a name)");
    }
    let (input, mut ann, default) = resolve_push_input(home, out, &a)?;
    // Without --name, import names the DNA after its file (gc removes unnamed DNAs).
    let name = push_name(&a, default)?;
    let name = shard_target(out, &a, name, &mut ann)?;
    let card = a
        .card
        .as_deref()
        .map(|p| read_card(p, &name.to_string()))
        .transpose()?;
    let db = open_db(home)?;
    let report = match &input {
        crate::engine::Input::Dna(dna) => {
            out.progress("compressing and storing");
            db.push(dna, Some(&name), ann)?
        }
        crate::engine::Input::Bundle(b) => db.push_bundle(b, Some(&name), ann)?,
    };
    extract::remove_checkpoint(out, &a.extract);
    out.json(&report)?;
    out.line(&format!(
        "stored {}{} ({}, {} images, {} at rest for {} raw, {} new objects)",
        report.digest.short(),
        report
            .reference
            .as_deref()
            .map(|r| format!(" as {r}"))
            .unwrap_or_default(),
        report.space,
        report.images,
        human_bytes(report.stored_bytes),
        human_bytes(report.raw_bytes),
        report.new_objects
    ))?;
    if let Some(md) = card {
        db.set_card(&name.to_string(), &md).with_context(|| {
            format!("{name} is stored, but its card was not set: run vdna-db card set {name} FILE")
        })?;
        out.line(&format!("set the card of {name} ({} bytes)", md.len()))?;
    }
    Ok(())
}

fn merge(home: &StoreAt, out: &mut Out, a: MergeArgs) -> Result<()> {
    let name = a.name.as_deref().map(RefName::parse).transpose()?;
    if let Some(whole) = &a.shards {
        return merge_shards(home, out, whole, name, a.output.as_deref());
    }
    // Stored inputs need the store; files alone do not.
    let needs_store = name.is_some()
        || a.inputs.iter().any(|i| {
            let p = Path::new(i);
            !(p.is_file() || crate::reference::looks_like_pair(p))
        });
    let db = if needs_store {
        Some(open_db(home)?)
    } else {
        None
    };
    let mut merged: Option<crate::dna::Dna> = None;
    for spec in &a.inputs {
        let p = Path::new(spec);
        let dna = if p.is_file() || crate::reference::looks_like_pair(p) {
            db::read_dna_file(p)
                .with_context(|| format!("reading DNA file {spec}"))?
                .0
        } else {
            let db = db.as_ref().context("a store is needed for stored inputs")?;
            let (digest, _) = db.resolve(spec)?;
            db.open_dna(&digest)?.load()?
        };
        merged = Some(match merged {
            None => dna,
            Some(m) => m.merge(&dna).with_context(|| format!("merging {spec}"))?,
        });
    }
    let dna = merged.context("nothing to merge")?;
    let mut ann = BTreeMap::new();
    ann.insert("merged_from".to_string(), a.inputs.join(" "));
    if let Some(o) = &a.output {
        let bytes = db::bundle_of(&dna, &ann, 3);
        crate::fsio::write_file_atomic(o, &bytes)
            .with_context(|| format!("writing {}", o.display()))?;
        out.line(&format!("wrote {} ({} images)", o.display(), dna.images))?;
    }
    let stored = match (&name, &db) {
        (Some(n), Some(db)) => {
            let r = db.push(&dna, Some(n), ann)?;
            out.line(&format!(
                "stored {} as {n} ({} images)",
                r.digest.short(),
                dna.images
            ))?;
            Some(r.digest)
        }
        _ => None,
    };
    out.json(&serde_json::json!({
        "digest": dna.digest(),
        "images": dna.images,
        "written": a.output,
        "stored": stored,
    }))?;
    Ok(())
}

/// `merge --shards`: the checked parts of a distributed extraction, added up and stored
/// under the whole's name (or `--name`), and written to `-o` when given. Running it again
/// stores the same DNA again.
fn merge_shards(
    home: &StoreAt,
    out: &mut Out,
    whole: &str,
    name: Option<RefName>,
    output: Option<&Path>,
) -> Result<()> {
    let whole = RefName::parse(whole)?;
    let db = open_db(home)?;
    let set = db.shard_set(&whole)?;
    out.progress(&format!("merging {} shards of {whole}", set.count));
    let dna = db.merge_shards(&set)?;
    let target = name.unwrap_or_else(|| whole.clone());
    // The parts' own annotations (source, extractor, --meta), without their shard marks.
    let first = RefName::parse(&set.parts[0].0)?;
    let mut ann: BTreeMap<String, String> = db
        .annotations(Some(&first))?
        .into_iter()
        .filter(|(k, _)| !k.starts_with(crate::engine::SHARD))
        .collect();
    ann.insert(
        "merged_from".to_string(),
        format!("{} shards of {whole}", set.count),
    );
    if let Some(o) = output {
        crate::fsio::write_file_atomic(o, &db::bundle_of(&dna, &ann, 3))
            .with_context(|| format!("writing {}", o.display()))?;
        out.line(&format!("wrote {} ({} images)", o.display(), dna.images))?;
    }
    let r = db.push(&dna, Some(&target), ann)?;
    out.line(&format!(
        "merged {} shards of {whole} ({} images) and stored {} as {target}",
        set.count,
        dna.images,
        r.digest.short()
    ))?;
    out.json(&serde_json::json!({
        "digest": r.digest,
        "images": dna.images,
        "stored": target.to_string(),
        "written": output,
        "shards": set,
    }))?;
    Ok(())
}

fn show(home: &StoreAt, out: &mut Out, spec: &str) -> Result<()> {
    let db = open_db(home)?;
    let (dna, label) = load_any(&db, spec)?;
    let ann = match &dna {
        AnyDna::Stored(_) => db
            .resolve(spec)
            .ok()
            .and_then(|(_, n)| db.annotations(n.as_ref()).ok())
            .unwrap_or_default(),
        AnyDna::Owned(_) => BTreeMap::new(),
    };
    let space = dna.space().clone();
    let mut layers = Vec::new();
    for (i, l) in space.layers.iter().enumerate() {
        let (digest, size, stored, codec) = match &dna {
            AnyDna::Stored(s) => {
                let r = &s.manifest.layers[i];
                let h = db.object_header(&r.digest)?;
                (
                    r.digest.to_string(),
                    r.size,
                    h.encoded_len(),
                    h.codec.name(),
                )
            }
            AnyDna::Owned(_) => (String::new(), 0, 0, ""),
        };
        layers.push(serde_json::json!({"name": l.name, "neurons": l.neurons, "digest": digest, "raw_bytes": size, "stored_bytes": stored, "codec": codec}));
    }
    let digest = dna.digest();
    out.json(&serde_json::json!({
        "ref": label, "digest": digest, "space_digest": space.digest(), "space": space,
        "images": dna.images(), "layers": layers, "annotations": ann,
    }))?;
    out.line(&format!(
        "{label}\n  digest   {digest}\n  space    {} {}",
        space.digest().short(),
        space.describe()
    ))?;
    out.line(&format!("  images   {}", dna.images()))?;
    for (k, v) in &ann {
        if k != "reference.metadata" {
            out.line(&format!("  {k} = {v}"))?;
        }
    }
    out.table(
        &["LAYER", "NEURONS", "BLOB", "RAW", "STORED", "CODEC"],
        layers
            .iter()
            .map(|l| {
                vec![
                    l["name"].as_str().unwrap_or("").to_string(),
                    l["neurons"].to_string(),
                    l["digest"]
                        .as_str()
                        .map(|d| d.get(..19).unwrap_or(d).to_string())
                        .unwrap_or_default(),
                    human_bytes(l["raw_bytes"].as_u64().unwrap_or(0)),
                    human_bytes(l["stored_bytes"].as_u64().unwrap_or(0)),
                    l["codec"].as_str().unwrap_or("").to_string(),
                ]
            })
            .collect(),
    )?;
    Ok(())
}

fn parse_metric(m: &Option<String>) -> Result<Option<Metric>> {
    m.as_deref()
        .map(|s| Metric::parse(s).with_context(|| format!("--metric {s:?}: use emd, nfd or fd")))
        .transpose()
}

fn compare(home: &StoreAt, out: &mut Out, a: CompareArgs) -> Result<()> {
    let db = open_db(home)?;
    let (da, la) = load_input(&db, &a.a, out, &a.extract)?;
    let (db_, lb) = load_input(&db, &a.b, out, &a.extract)?;
    let metric = parse_metric(&a.metric)?;
    let c = db.compare(&da, &db_, &a.mask, metric, a.top_neurons)?;
    print_comparison(out, &c, &a, &la, &lb)
}

/// Prints a comparison (local or from a server): `--json`, the distance, and the
/// per-layer and per-neuron tables as asked.
fn print_comparison(
    out: &mut Out,
    c: &crate::engine::Comparison,
    a: &CompareArgs,
    la: &str,
    lb: &str,
) -> Result<()> {
    let per_layer: serde_json::Map<String, serde_json::Value> = c
        .per_layer
        .iter()
        .map(|l| (l.layer.clone(), serde_json::json!(l.distance)))
        .collect();
    out.json(&serde_json::json!({
        "a": la, "b": lb, "metric": c.metric, "distance": c.distance, "neurons": c.neurons,
        "mask": a.mask, "per_layer": per_layer,
        "per_layer_neurons": c.per_layer.iter().map(|l| (l.layer.clone(), l.neurons)).collect::<BTreeMap<_,_>>(),
        "top_neurons": c.top_neurons,
    }))?;
    out.line(&format!(
        "{} {:.6} over {} neurons ({la} vs {lb})",
        c.metric.name(),
        c.distance,
        c.neurons
    ))?;
    if a.per_layer {
        let max = c.per_layer.iter().map(|l| l.distance).fold(0.0, f64::max);
        out.table(
            &["LAYER", "NEURONS", "DISTANCE", ""],
            c.per_layer
                .iter()
                .map(|l| {
                    vec![
                        l.layer.clone(),
                        l.neurons.to_string(),
                        format!("{:.6}", l.distance),
                        output::bar(l.distance, max, 30),
                    ]
                })
                .collect(),
        )?;
    }
    if a.top_neurons > 0 {
        out.table(
            &["NEURON", "DISTANCE"],
            c.top_neurons
                .iter()
                .map(|n| {
                    vec![
                        format!("{}#{}", n.layer, n.index),
                        format!("{:.6}", n.distance),
                    ]
                })
                .collect(),
        )?;
    }
    Ok(())
}

fn query(home: &StoreAt, out: &mut Out, a: QueryArgs) -> Result<i32> {
    let db = open_db(home)?;
    let (q, label) = load_input(&db, &a.source, out, &a.extract)?;
    let filters = parse_meta(&a.filters).context("--filter")?;
    let req = crate::engine::QueryRequest {
        mask: a.mask.clone(),
        k: a.top,
        metric: parse_metric(&a.metric)?,
        mode: query_mode(&a),
        filters,
        tag: a.tag.clone(),
        exclude_self: a.exclude_self,
        per_layer: a.per_layer,
    };
    let res = db.query(&q, &req)?;
    print_query(out, &res, &a, &label)?;
    Ok(0)
}

/// Prints a query's answer (local or from a server) as `--json`, the hit table, the
/// per-layer breakdown and the plan as asked.
fn print_query(
    out: &mut Out,
    res: &crate::engine::QueryResult,
    a: &QueryArgs,
    label: &str,
) -> Result<()> {
    out.json(res)?;
    out.line(&format!(
        "top {} of {} by {} over {} neurons ({label})",
        res.results.len(),
        res.plan.candidates,
        res.metric.name(),
        res.neurons
    ))?;
    print_hits(out, &res.results)?;
    if a.per_layer {
        for r in &res.results {
            out.line(&format!("{}:", r.reference))?;
            let max = r.per_layer.iter().map(|l| l.distance).fold(0.0, f64::max);
            out.table(
                &["  LAYER", "DISTANCE", ""],
                r.per_layer
                    .iter()
                    .map(|l| {
                        vec![
                            format!("  {}", l.layer),
                            format!("{:.6}", l.distance),
                            output::bar(l.distance, max, 30),
                        ]
                    })
                    .collect(),
            )?;
        }
    }
    if a.explain {
        out.line(&res.plan.explain())?;
    }
    Ok(())
}

/// The demo's first part: generated scene datasets extracted into DNAs, pushed, and a
/// new sample of one scene queried against them.
fn demo_scenes(db: &Engine, out: &mut Out, per_family: u64) -> Result<()> {
    use crate::extract::scenes;
    let dir = std::env::temp_dir().join(format!("vdna-db-demo-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let flags = extract::ExtractFlags::default();
    let t0 = std::time::Instant::now();
    let mut images = 0;
    out.line(&format!(
        "generating {} scene datasets of {per_family} images and extracting them with {} ({})",
        scenes::FAMILIES.len(),
        flags.extractor,
        flags.dist
    ))?;
    for family in scenes::FAMILIES {
        let d = dir.join(family);
        scenes::write_family(&d, family, 2023, per_family, 256, 192)
            .with_context(|| format!("writing demo images to {}", d.display()))?;
        let (dna, rep) = extract::extract_source(out, &d, &flags)?;
        images += rep.images;
        let name = RefName::parse(&format!("scenes/{family}:v1"))?;
        let mut ann = BTreeMap::new();
        ann.insert("scene".to_string(), family.to_string());
        ann.insert("generator".to_string(), "procedural".to_string());
        let r = db.push(&dna, Some(&name), ann)?;
        out.line(&format!(
            "  pushed {name:<22} {} ({} images, {:.0} images/s)",
            r.digest.short(),
            rep.images,
            rep.images as f64 / rep.timings.wall_s.max(1e-9)
        ))?;
    }
    // A fresh sample of skies, never stored: which stored dataset looks like it?
    let q = dir.join("new-skies");
    scenes::write_family(&q, "sky", 7, (per_family / 2).max(1), 256, 192)?;
    let (qdna, rep) = extract::extract_source(out, &q, &flags)?;
    images += rep.images;
    out.line(&format!(
        "extracted {images} images in {:.1} s",
        t0.elapsed().as_secs_f64()
    ))?;
    let qdna = AnyDna::Owned(qdna);
    for mask in ["all", "blocks_1*", "head"] {
        let req = crate::engine::QueryRequest {
            mask: mask.into(),
            k: 3,
            ..Default::default()
        };
        let res = db.query(&qdna, &req)?;
        out.line(&format!(
            "\n$ vdna-db query new-skies/ --top 3 --mask '{mask}'"
        ))?;
        print_hits(out, &res.results)?;
    }
    Ok(())
}

/// Removes a scratch directory when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn demo(home: &StoreAt, out: &mut Out, a: DemoArgs) -> Result<i32> {
    let db = open_db(home)?;
    if a.images > 0 {
        demo_scenes(&db, out, a.images)?;
        out.line("")?;
    }
    let t0 = std::time::Instant::now();
    let mut imported = Vec::new();
    if a.fixtures.is_dir() {
        let mut jsons: Vec<PathBuf> = std::fs::read_dir(&a.fixtures)
            .with_context(|| format!("reading {}", a.fixtures.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        jsons.sort();
        for j in jsons {
            let stem = j
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let name = RefName::parse(&format!("reference/{}", stem.replace(['_', '.'], "-")))?;
            let imp = crate::reference::import_pair(&j)?;
            let r = db.push(&imp.dna, Some(&name), imp.annotations)?;
            out.line(&format!(
                "imported {name:<40} {} {}",
                r.digest.short(),
                r.space
            ))?;
            imported.push((name, imp.dna.space.clone()));
        }
    } else {
        out.line(&format!(
            "no fixtures at {} (run from the repository root to include them)",
            a.fixtures.display()
        ))?;
    }
    // Synthetic families in the space of the first imported histogram DNA, or a small one.
    let space = imported
        .iter()
        .map(|i| i.1.clone())
        .find(|s| matches!(s.dist, DistKind::Histogram { bins: 100 }))
        .unwrap_or_else(|| {
            crate::format::SpaceConfig::unpinned(
                "rand_resnet50",
                crate::synth::resnet50_layers(),
                DistKind::Histogram { bins: 100 },
            )
        });
    let spec = crate::synth::CatalogueSpec {
        seed: 2023,
        families: a.families,
        members: a.members,
        layers: space.layers.clone(),
        dist: space.dist,
        extractor: space.extractor.name.clone(),
        images: 32,
        positions: 196,
        spread: 1.0,
    };
    let mut n = 0;
    for f in 0..a.families {
        for m in 0..a.members {
            let mut dna = crate::synth::member(&spec, f, m);
            dna.space = space.clone();
            let name = RefName::parse(&crate::synth::member_name(f, m))?;
            let mut ann = BTreeMap::new();
            ann.insert("family".to_string(), format!("{f:02}"));
            ann.insert("synthetic".to_string(), "true".to_string());
            db.push(&dna, Some(&name), ann)?;
            n += 1;
        }
    }
    out.line(&format!(
        "added {n} synthetic DNAs ({} families) in {:.1} s",
        a.families,
        t0.elapsed().as_secs_f64()
    ))?;
    let rows = db.list()?;
    out.line(&format!("\n$ vdna-db ls   ({} DNAs)", rows.len()))?;
    print_listing(out, &rows)?;
    // Compare two imported DNAs of one space, preferring 1000-bin histograms.
    let pair = imported
        .iter()
        .enumerate()
        .flat_map(|(i, a)| imported[i + 1..].iter().map(move |b| (a, b)))
        .filter(|(a, b)| a.1 == b.1)
        .max_by_key(|(a, _)| matches!(a.1.dist, DistKind::Histogram { bins: 1000 }));
    if let Some(((a_name, _), (b_name, _))) = pair {
        let (da, _) = load_any(&db, &a_name.to_string())?;
        let (dbb, _) = load_any(&db, &b_name.to_string())?;
        let c = db.compare(&da, &dbb, "all", None, 3)?;
        out.line(&format!(
            "\n$ vdna-db compare {a_name} {b_name} --top-neurons 3\n{} {:.6} over {} neurons",
            c.metric.name(),
            c.distance,
            c.neurons
        ))?;
        for n in &c.top_neurons {
            out.line(&format!("  {}#{}  {:.4}", n.layer, n.index, n.distance))?;
        }
    }
    let probe = crate::synth::member_name(0, 0);
    let (q, _) = load_any(&db, &format!("{probe}:latest"))?;
    for mask in ["all", "layer4_*"] {
        let req = crate::engine::QueryRequest {
            mask: mask.into(),
            k: 5,
            ..Default::default()
        };
        let res = db.query(&q, &req)?;
        out.line(&format!(
            "\n$ vdna-db query {probe} --top 5 --mask '{mask}'"
        ))?;
        print_hits(out, &res.results)?;
        out.line(&format!(
            "({} candidates, {} exact distances, {:.1} ms)",
            res.plan.candidates, res.plan.exact_computed, res.plan.total_ms
        ))?;
    }
    out.line(&format!(
        "\nstore: {} (try: vdna-db --home {} ls)",
        db.home().display(),
        db.home().display()
    ))?;
    Ok(0)
}
