//! The real binary on in-memory backends: the demo key file, and a graceful shutdown that
//! keeps every usage event.

mod common;

use std::{os::unix::fs::PermissionsExt, process::Command};

use serde_json::Value;

#[test]
fn sigterm_after_300_requests_leaves_300_usage_events() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("demo.key");
    let summary = dir.path().join("usage.json");
    let mut server = common::start(
        &[
            ("KEYVAULT_DEMO_KEY_FILE", key_file.as_os_str()),
            ("KEYVAULT_USAGE_SUMMARY_FILE", summary.as_os_str()),
        ],
        dir.path(),
    );
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the demo key file is the owner's only");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        key.starts_with("kv_") && key.len() == 49,
        "a CONTRACT §1 key"
    );

    let mut conn = common::send_300(&server.addr, &key);
    // Not a request through the layer: it does not count.
    let (status, metrics) = common::request(&mut conn, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("keyvault_usage_dropped_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keyvault_usage_recorded_total 300"),
        "{metrics}"
    );
    let status = common::sigterm(&mut server);
    assert!(status.success(), "{status}");

    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(summary["overview"]["calls"], 300, "{summary}");
    assert_eq!(summary["recorder"]["dropped"], 0);
    let calls = |p: &str| {
        summary["overview"]["by_provider"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["provider"] == p)
            .map(|x| x["calls"].as_u64().unwrap())
    };
    assert_eq!(calls("demo"), Some(200));
    assert_eq!(calls("openai"), Some(50));
    assert_eq!(calls("anthropic"), Some(50));

    // The key is never printed.
    let (stdout, stderr) = common::output(&mut server);
    assert!(!stdout.contains(&key));
    assert!(stderr.iter().all(|l| !l.contains(&key)));
    assert!(
        stderr.iter().any(|l| l.contains("usage flushed")),
        "{stderr:?}"
    );
}

#[test]
fn an_unknown_database_scheme_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_host-app"))
        .current_dir(dir.path())
        .env("DATABASE_URL", "mysql://nowhere")
        .env("KEYVAULT_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL"), "{err}");
}
