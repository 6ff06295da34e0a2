//! The web catalogue in a real headless browser (Debian's `chromium`): pages load from the
//! real server, the DOM holds what the catalogue holds, and screenshots are kept as
//! artifacts in target/web-screenshots/. Without chromium the test says so and stops,
//! unless VDNA_DB_REQUIRE_BROWSER is set (CI sets it and installs chromium).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::server::start_server;
use crate::util::{self, root};

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            let out = Command::new("which").arg(b).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

fn browser(bin: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1400",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("running chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn web_pages_render_the_catalogue_in_a_browser() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("VDNA_DB_REQUIRE_BROWSER").is_none(),
            "VDNA_DB_REQUIRE_BROWSER is set but no chromium was found"
        );
        eprintln!(
            "SKIPPED web_pages_render_the_catalogue_in_a_browser: install chromium to run it"
        );
        return;
    };
    let dir = util::tmp();
    let home = dir.path().join("server");
    let fix = root().join("fixtures/reference");
    for (file, name) in [
        ("gradients-histogram-100.json", "ref/gradients:h100"),
        ("checker-histogram-100.json", "ref/checker:h100"),
        ("gradients-gaussian.json", "ref/gradients:gauss"),
    ] {
        util::ok(
            &home,
            &[
                "push",
                fix.join(file).to_str().unwrap(),
                "--name",
                name,
                "--meta",
                "origin=reference",
            ],
        );
    }
    let expected = util::json(
        &home,
        &["compare", "ref/gradients:h100", "ref/checker:h100"],
    );
    let srv = start_server(&home, &[]);
    let shots = root().join("target/web-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = |name: &str, url: &str| {
        let p = shots.join(format!("{name}.png"));
        browser(&bin, &[&format!("--screenshot={}", p.display())], url);
        assert!(
            std::fs::metadata(&p)
                .map(|m| m.len() > 10_000)
                .unwrap_or(false),
            "no screenshot of {url}"
        );
    };

    // Catalogue: every dataset, with a link to its page; search narrows it.
    let dom = browser(&bin, &["--dump-dom"], &format!("{}/", srv.url));
    assert!(dom.contains("<table id=\"datasets\">"), "{dom}");
    for n in [
        "ref/gradients:h100",
        "ref/checker:h100",
        "ref/gradients:gauss",
    ] {
        assert!(dom.contains(&format!("href=\"/d/{n}\"")), "{n} missing");
    }
    assert!(dom.contains("origin=reference"));
    let dom = browser(&bin, &["--dump-dom"], &format!("{}/?q=checker", srv.url));
    assert!(dom.contains("ref/checker:h100") && !dom.contains("href=\"/d/ref/gradients:h100\""));
    shot("catalogue", &format!("{}/", srv.url));

    // Dataset page: one plot row per layer and the nearest dataset.
    let dom = browser(
        &bin,
        &["--dump-dom"],
        &format!("{}/d/ref/gradients:h100", srv.url),
    );
    assert_eq!(
        dom.matches("class=\"layer\"").count(),
        16,
        "one row per layer"
    );
    assert!(dom.contains("<table id=\"results\">") && dom.contains("ref/checker:h100"));
    shot("dataset", &format!("{}/d/ref/gradients:h100", srv.url));

    // Compare page: the same distance as the CLI.
    let url = format!(
        "{}/compare?a=ref/gradients:h100&b=ref/checker:h100&mask=all",
        srv.url
    );
    let dom = browser(&bin, &["--dump-dom"], &url);
    let want = format!("{:.6}", expected["distance"].as_f64().unwrap());
    assert!(dom.contains(&want), "compare page lacks {want}");
    assert_eq!(
        dom.matches("class=\"bar\"").count(),
        16 + 12,
        "16 layer bars and 12 neurons"
    );
    shot("compare", &url);

    // Its three most different neurons, drawn: each plot an SVG of both distributions.
    assert_eq!(dom.matches("<figure>").count(), 3, "three neuron plots");
    let src = dom
        .split("<img src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let plot = format!("{}{src}", srv.url);
    let svg = browser(&bin, &["--dump-dom"], &plot);
    assert_eq!(svg.matches("class=\"dist\"").count(), 2, "{svg}");
    assert!(svg.contains("EMD = "), "{svg}");
    shot("neuron", &plot);

    // Query page: ranked results, the DNA itself first.
    let url = format!("{}/query?ref=ref/checker:h100&mask=layer4_*&k=3", srv.url);
    let dom = browser(&bin, &["--dump-dom"], &url);
    let first = dom.split("<tbody>").nth(1).unwrap_or("");
    assert!(first.contains("ref/checker:h100"), "{dom}");
    shot("query", &url);

    // A bad request renders an error page, not a crash.
    let dom = browser(
        &bin,
        &["--dump-dom"],
        &format!("{}/query?ref=ref/none:v1", srv.url),
    );
    assert!(dom.contains("404"), "{dom}");
}
