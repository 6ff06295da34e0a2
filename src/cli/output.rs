//! Output for people and for programs: tables on stdout, `--json` documents, progress on
//! stderr only when it is a terminal. Write errors (a closed pipe) propagate as io errors.

use std::io::{IsTerminal, Write};

use serde::Serialize;

pub struct Out {
    json: bool,
    quiet: bool,
    progress: bool,
}

impl Out {
    pub fn new(json: bool, quiet: bool) -> Out {
        Out {
            json,
            quiet,
            progress: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A human line (suppressed with --json).
    pub fn line(&mut self, s: &str) -> std::io::Result<()> {
        if self.json {
            return Ok(());
        }
        let mut o = std::io::stdout().lock();
        writeln!(o, "{s}")
    }

    /// The JSON document (only with --json).
    pub fn json<T: Serialize>(&mut self, v: &T) -> std::io::Result<()> {
        if !self.json {
            return Ok(());
        }
        let mut o = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut o, v)?;
        writeln!(o)
    }

    /// A progress note on stderr, only for a terminal and without --quiet.
    pub fn progress(&mut self, s: &str) {
        if self.progress && !self.json {
            eprintln!("{s}...");
        }
    }

    /// True with --json.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A warning on stderr (kept with --json, dropped with --quiet).
    pub fn warn(&mut self, s: &str) {
        if !self.quiet {
            eprintln!("warning: {s}");
        }
    }

    /// Whether live progress (bars, notes) should be drawn.
    pub fn shows_progress(&self) -> bool {
        self.progress && !self.json
    }

    /// A progress bar on stderr for store-wide work (`verify`, `reindex`): stage, count,
    /// rate and ETA; hidden with --quiet, --json or when stderr is not a terminal.
    pub fn work_bar(&self, what: &str) -> indicatif::ProgressBar {
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if !self.shows_progress() {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {msg:<10} {bar:30} {pos}/{len}  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_prefix(what.to_string());
        pb
    }

    /// An aligned table (suppressed with --json).
    pub fn table(&mut self, head: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
        if self.json {
            return Ok(());
        }
        let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        let mut o = std::io::stdout().lock();
        let fmt = |cells: Vec<String>| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        if !self.quiet || !rows.is_empty() {
            writeln!(o, "{}", fmt(head.iter().map(|s| s.to_string()).collect()))?;
        }
        for r in rows {
            writeln!(o, "{}", fmt(r))?;
        }
        Ok(())
    }
}

/// `4.2 MB`-style sizes (powers of 1000).
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A text bar of `value / max` over `width` cells.
pub fn bar(value: f64, max: f64, width: usize) -> String {
    if max <= 0.0 || !value.is_finite() {
        return String::new();
    }
    let n = ((value / max) * width as f64).round() as usize;
    "█".repeat(n.min(width))
}

/// Draws `(stage, done, total)` of store-wide work on a [`Out::work_bar`].
pub fn show_work(pb: &indicatif::ProgressBar, stage: &str, done: u64, total: u64) {
    if pb.message() != stage {
        pb.set_message(stage.to_string());
    }
    pb.set_length(total);
    pb.set_position(done);
}
