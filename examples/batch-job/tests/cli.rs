//! The command-line program, run for real (in-memory: nothing survives between runs, so each
//! test checks one run's output).

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use serde_json::Value;

fn batch_job(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_batch-job"))
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("KEYVAULT_PEPPER")
        .args(args)
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn create_keys_reports_bad_rows_by_line_and_creates_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("keys.csv");
    std::fs::write(
        &csv,
        "name,owner,credits,limits\n\
         billing,team-a,1000,100/60s;1000/1d\n\
         ,team-b,10,\n\
         search,team-c,lots,\n\
         \"quoted, name\",,,\n\
         limits-bad,team-d,,100/0s\n\
         too,many,fields,1/1s,extra\n\
         plain,,,\n",
    )
    .unwrap();
    let out = dir.path().join("new-keys.jsonl");
    let res = batch_job(
        dir.path(),
        &[
            "create-keys",
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(
        res.status.code(),
        Some(1),
        "bad rows fail the run: {stderr}"
    );
    for (line, field) in [(3, "name"), (4, "credits"), (6, "limits"), (7, "fields")] {
        assert!(
            stderr.contains(&format!("line {line}: ")) && stderr.contains(field),
            "line {line} ({field}) reported: {stderr}"
        );
    }
    assert!(
        !stderr.contains("line 2:") && !stderr.contains("line 5:") && !stderr.contains("line 8:")
    );
    assert!(stderr.contains("4 of 7 rows refused"), "{stderr}");
    assert_eq!(mode(&out), 0o600);
    let keys: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = keys.iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["billing", "quoted, name", "plain"]);
    assert_eq!(keys[0]["line"], 2);
    assert_eq!(keys[0]["owner_id"], "team-a");
    for k in &keys {
        let key = k["key"].as_str().unwrap();
        assert!(key.starts_with("kv_") && key.len() == 49);
        // Shown in the file only.
        assert!(!stderr.contains(key));
        assert!(!String::from_utf8_lossy(&res.stdout).contains(key));
    }
    // A second run appends: keys handed out earlier are never overwritten.
    std::fs::write(&csv, "name\nsecond-run\n").unwrap();
    let res = batch_job(
        dir.path(),
        &[
            "create-keys",
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 4);
}

#[test]
fn an_unknown_column_refuses_the_file_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("keys.csv");
    std::fs::write(&csv, "name,credit\na,1\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let res = batch_job(
        dir.path(),
        &[
            "create-keys",
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("unknown column \"credit\""));
    assert!(!out.exists());
}

#[test]
fn usage_report_writes_a_csv_and_checks_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("usage.csv");
    let res = batch_job(
        dir.path(),
        &[
            "usage-report",
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2026-01-02T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("period_start,period_end,provider,calls,errors,success_rate,p50_ms,p95_ms,p99_ms")
    );
    assert_eq!(
        lines.next(),
        Some("2026-01-01T00:00:00Z,2026-01-02T00:00:00Z,*,0,0,,,,")
    );
    let res = batch_job(
        dir.path(),
        &[
            "usage-report",
            "--from",
            "2026-01-02T00:00:00Z",
            "--to",
            "2026-01-01T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("--from"));
}

#[test]
fn rotate_due_creates_its_output_file_private() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rotated.jsonl");
    let res = batch_job(dir.path(), &["rotate-due", "--out", out.to_str().unwrap()]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(String::from_utf8_lossy(&res.stderr).contains("rotated 0 keys"));
    assert_eq!(mode(&out), 0o600);
}

#[test]
fn help_says_an_in_memory_database_is_useless_here() {
    let dir = tempfile::tempdir().unwrap();
    let res = batch_job(dir.path(), &["--help"]);
    let help = String::from_utf8_lossy(&res.stdout);
    assert!(help.contains("DATABASE_URL"));
    assert!(help.contains("useless"), "{help}");
}
