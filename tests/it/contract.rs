//! The API contract, checked by an independent property-based tester: Schemathesis (PyPI
//! `schemathesis`) generates requests from schema/openapi.json (examples, coverage,
//! fuzzing and stateful phases, every check) and sends them to a real `vdna-db serve` on
//! loopback, authenticated as admin, over a store holding reference DNAs. It must report
//! no failure: every schema-valid request accepted, every schema-violating one refused,
//! every status code and response body as documented. Settings and the two documented
//! exceptions: tests/contract/schemathesis.toml.
//!
//! Short by default (30 cases per operation and phase, a fixed seed);
//! `VDNA_DB_CONTRACT_EXAMPLES=500` is the long mode, `VDNA_DB_CONTRACT_SEED` picks
//! another seed. Without `st` on the PATH the test says so and passes, unless
//! VDNA_DB_REQUIRE_SCHEMATHESIS=1 (CI sets it).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::server::start_server;
use crate::util::{self, root};

fn schemathesis_installed() -> bool {
    util::installed(
        "st",
        "--version",
        "schemathesis",
        "pip install schemathesis",
        "VDNA_DB_REQUIRE_SCHEMATHESIS",
    )
}

fn env_or(k: &str, d: &str) -> String {
    std::env::var(k)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| d.to_string())
}

/// Runs Schemathesis against `url` with `extra` arguments; panics with its report on any
/// failure.
fn schemathesis(url: &str, token: &str, extra: &[&str]) {
    let dir = util::tmp();
    let examples = env_or("VDNA_DB_CONTRACT_EXAMPLES", "30");
    let seed = env_or("VDNA_DB_CONTRACT_SEED", "1");
    let out = Command::new("st")
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(root().join("tests/contract/schemathesis.toml"))
        .arg("run")
        .arg(root().join("schema/openapi.json"))
        .args(["--url", url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--generation-database", "none", "--workers", "2"])
        .args(extra)
        .output()
        .expect("st runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found the server and schema/openapi.json in disagreement:\n{report}"
    );
    // A run that tested nothing would pass too: it must have generated cases.
    assert!(
        report.contains(" passed") && !report.contains(" 0 generated"),
        "{report}"
    );
}

#[test]
fn schemathesis_finds_the_server_and_its_openapi_document_in_agreement() {
    if !schemathesis_installed() {
        return;
    }
    let dir = util::tmp();
    let home = dir.path().join("store");
    for (set, dist) in [
        ("gradients", "histogram-100"),
        ("checker", "histogram-100"),
        ("checker", "gaussian"),
    ] {
        let f = util::fixture(set, dist);
        util::ok(
            &home,
            &[
                "push",
                f.to_str().unwrap(),
                "--name",
                &format!("ds/{set}-{dist}:v1"),
            ],
        );
    }
    let token = util::json(&home, &["token", "create", "--scope", "admin"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let srv = start_server(&home, &[]);
    // Every operation but revoking tokens, whose stateful links would revoke the token
    // the run authenticates with (everything after would be a documented 401).
    schemathesis(
        &srv.url,
        &token,
        &["--exclude-path-regex", "^/v1/admin/tokens/"],
    );
    // Revoking, alone, without the stateful phase (ids are generated, not listed).
    schemathesis(
        &srv.url,
        &token,
        &[
            "--include-path-regex",
            "^/v1/admin/tokens/",
            "--phases",
            "examples,coverage,fuzzing",
        ],
    );
    // The store is still whole after thousands of generated requests.
    drop(srv);
    let v = util::json(&home, &["verify"]);
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
}

/// The typed request bodies of `vdna_db::protocol` and the document's request schemas name
/// the same fields, both ways: a field the server reads is documented, a documented field
/// is read.
#[test]
fn typed_request_bodies_and_the_openapi_document_name_the_same_fields() {
    use vdna_db::protocol::*;
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/openapi.json")).unwrap())
            .unwrap();
    let documented = |path: &str, method: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
            ["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}: no documented JSON body"))
            .keys()
            .cloned()
            .collect()
    };
    let fields =
        |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    // Every optional field set, so none is skipped when serialised.
    let query = QueryBody {
        reference: Some("a:v1".into()),
        metric: Some("emd".into()),
        filters: [("k".to_string(), "v".to_string())].into(),
        tag: Some("v1".into()),
        exclude_self: true,
        mode: Some(vdna_db::query::Mode::Exact),
        approx: true,
        per_layer: true,
        ..QueryBody::default()
    };
    let compare = CompareBody {
        a: "a".into(),
        b: "b".into(),
        mask: "all".into(),
        metric: Some("emd".into()),
        top_neurons: 3,
    };
    let set_ref = SetRef {
        digest: "d".into(),
        annotations: Default::default(),
    };
    let token = TokenCreate {
        scope: "push".into(),
        label: "l".into(),
    };
    for (path, method, typed) in [
        ("/v1/query", "post", serde_json::to_value(&query).unwrap()),
        (
            "/v1/compare",
            "post",
            serde_json::to_value(&compare).unwrap(),
        ),
        (
            "/v1/refs/{name}",
            "put",
            serde_json::to_value(&set_ref).unwrap(),
        ),
        (
            "/v1/admin/tokens",
            "post",
            serde_json::to_value(&token).unwrap(),
        ),
        (
            "/v1/admin/gc",
            "post",
            serde_json::to_value(GcBody {
                grace_secs: Some(1),
            })
            .unwrap(),
        ),
        (
            "/v1/admin/verify",
            "post",
            serde_json::to_value(VerifyBody { repair: true }).unwrap(),
        ),
        (
            "/v1/admin/reindex",
            "post",
            serde_json::to_value(ReindexBody {
                graphs_min: Some(1),
            })
            .unwrap(),
        ),
    ] {
        assert_eq!(fields(typed), documented(path, method), "{method} {path}");
    }
}
