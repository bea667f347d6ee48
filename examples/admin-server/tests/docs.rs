//! The documentation, checked against the code.
//!
//! - The shell blocks of the README's "The first minutes" and of `docs/quickstart.md` run as
//!   written, in a fresh directory, on the binaries of this build. `cargo run --release -p
//!   keyvault-admin-server -- ARGS` and `cargo run --release -p host-app -- ARGS` are answered
//!   by a `cargo` on `PATH` that runs the `keyvault` binary of this package, or this test
//!   binary acting as `host-app` (`host_app_entry` below: the host application is a library
//!   with a thin `main`, and a test package cannot depend on another package's binary).
//!   `cargo build --release -p keyvault-admin-server -p host-app` (either package, or both)
//!   does nothing and succeeds: the guides build both up front so that a newcomer waits for
//!   one release build instead of two, and this test has its binaries already; the
//!   `target/release/host-app` they then run is the same `host-app` stand-in.
//!   `127.0.0.1:8080` and `127.0.0.1:8081` in a block become free ports. A block preceded by
//!   `<!-- test: background -->` is started, waited for (its port accepts connections) and
//!   stopped at the end; `<!-- test: expect TEXT -->` requires `TEXT` in the block's output.
//! - `docs/api.md` names every operation of the running server's `/openapi.json`.
//! - Local links (files and `#anchors`) of every Markdown file of the repository resolve.
//! - Each Chinese guide has its English twin's fenced code blocks (identical, in order) and as
//!   many headings at each level, and the two link to each other.

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser;

const KEYVAULT: &str = env!("CARGO_BIN_EXE_keyvault");

/// Variables a block must not inherit from the test's environment (which may name the test
/// PostgreSQL and Redis): the documented commands run on their zero-configuration defaults.
const CONTROLLED: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "KEYVAULT_BIND",
    "KEYVAULT_PEPPER",
    "KEYVAULT_TRUSTED_PROXIES",
    "KEYVAULT_INSTANCES",
    "KEYVAULT_CREDITS_FAIL_MODE",
    "KEYVAULT_LOG",
    "KEYVAULT_LOG_FORMAT",
    "KEYVAULT_DEMO_KEY_FILE",
    "KEYVAULT_USAGE_SUMMARY_FILE",
];

/// The guides that have a Chinese twin (`X.md` and `X.zh-CN.md`). A `*.zh-CN.md` missing
/// from this list fails `chinese_guides_match_their_english_twins`.
const TWINS: &[&str] = &[
    "README.md",
    "CONTRIBUTING.md",
    "docs/quickstart.md",
    "docs/server.md",
    "docs/deployment.md",
    "docs/scaling.md",
    "docs/api.md",
    "docs/library.md",
    "docs/plugins.md",
    "docs/faq.md",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Markdown, as much of it as the checks need.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    lang: String,
    code: String,
    /// The `<!-- test: … -->` markers on the lines just before the fence.
    markers: Vec<String>,
    /// The `##` heading the block is under (the last heading of level 2 before it).
    section: String,
}

#[derive(Debug, Default)]
struct Doc {
    blocks: Vec<Block>,
    /// (level, text) of every heading outside code blocks.
    headings: Vec<(usize, String)>,
    /// Every line outside code blocks.
    prose: Vec<String>,
}

fn parse(text: &str) -> Doc {
    let mut doc = Doc::default();
    let mut markers = Vec::new();
    let mut section = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("```") {
            let fence_len = 3 + rest.chars().take_while(|c| *c == '`').count();
            let fence = "`".repeat(fence_len);
            let lang = rest.trim_start_matches('`').trim().to_owned();
            let mut code = String::new();
            for l in lines.by_ref() {
                if l.trim_start().starts_with(&fence) {
                    break;
                }
                code.push_str(l);
                code.push('\n');
            }
            doc.blocks.push(Block {
                lang,
                code,
                markers: std::mem::take(&mut markers),
                section: section.clone(),
            });
            continue;
        }
        if let Some(m) = trimmed
            .strip_prefix("<!-- test:")
            .and_then(|m| m.strip_suffix("-->"))
        {
            markers.push(m.trim().to_owned());
            continue;
        }
        if !trimmed.is_empty() {
            markers.clear();
        }
        let level = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            let title = line[level..].trim().to_owned();
            if level == 2 {
                section = title.clone();
            }
            doc.headings.push((level, title));
        }
        doc.prose.push(line.to_owned());
    }
    doc
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(doc: &Doc) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, h) in &doc.headings {
        let base = slug(h);
        let mut s = base.clone();
        let mut n = 1;
        while seen.contains(&s) {
            s = format!("{base}-{n}");
            n += 1;
        }
        seen.insert(s);
    }
    seen
}

/// The targets of `[text](target)` and `![alt](target)` outside code (blocks and spans).
fn links(doc: &Doc) -> Vec<String> {
    let mut out = Vec::new();
    for line in &doc.prose {
        // Inline code spans are not links.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_owned());
            rest = &after[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<String> {
    let mut files = Vec::new();
    let mut add_dir = |dir: &str, only_readme: bool| {
        let Ok(entries) = fs::read_dir(repo().join(dir)) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if path.is_dir() && only_readme {
                if path.join("README.md").is_file() {
                    files.push(format!("{dir}{name}/README.md"));
                }
            } else if !only_readme && name.ends_with(".md") {
                files.push(format!("{dir}{name}"));
            }
        }
    };
    add_dir("", false);
    add_dir("docs/", false);
    add_dir("", true);
    add_dir("examples/", true);
    files.sort();
    files.dedup();
    files
}

// ---------------------------------------------------------------------------------------
// Running the shell blocks.

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address")
}

const CARGO_SHIM: &str = r#"#!/usr/bin/env bash
# Stands in for `cargo` in the documented commands: runs the binaries of this test's build.
set -euo pipefail
cmd="${1:-}"
case "$cmd" in
  build|run) shift ;;
  *) echo "docs test: unsupported cargo command: $*" >&2; exit 97 ;;
esac
pkg=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --release|-q|--quiet) shift ;;
    -p|--package)
      case "$2" in
        keyvault-admin-server|host-app) ;;
        *) echo "docs test: unsupported package: $2" >&2; exit 97 ;;
      esac
      # `build` takes several packages; `run` takes one.
      if [[ "$cmd" == run && -n "$pkg" ]]; then
        echo "docs test: cargo run with two packages" >&2; exit 97
      fi
      pkg="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "docs test: unsupported cargo flag: $1" >&2; exit 97 ;;
  esac
done
# The binaries are this test's own build: nothing to build.
if [[ "$cmd" == build ]]; then
  if [[ $# -gt 0 || -z "$pkg" ]]; then
    echo "docs test: cargo build takes -p PACKAGE... and no arguments" >&2; exit 97
  fi
  exit 0
fi
case "$pkg" in
  keyvault-admin-server)
    export KEYVAULT_BIND="${KEYVAULT_BIND:-$DOCS_SERVER_BIND}"
    exec "$DOCS_KEYVAULT" "$@" ;;
  host-app)
    export KEYVAULT_BIND="${KEYVAULT_BIND:-$DOCS_HOST_BIND}"
    DOCS_HOST_APP_ARGS="$(printf '%s\n' "$@")"
    export DOCS_HOST_APP_ARGS
    exec "$DOCS_TEST_EXE" --exact host_app_entry --nocapture ;;
  *) echo "docs test: unsupported package: $pkg" >&2; exit 97 ;;
esac
"#;

/// Not a test of its own: this binary acting as `host-app` for the `cargo` shim (see the
/// module's comment). Without `DOCS_HOST_APP_ARGS` it does nothing.
#[test]
fn host_app_entry() {
    let Ok(args) = std::env::var("DOCS_HOST_APP_ARGS") else {
        return;
    };
    // As host-app's `main`: `.env` first, never over the real environment.
    let _ = dotenvy::dotenv();
    let argv = std::iter::once("host-app".to_owned())
        .chain(args.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    let config = host_app::Config::parse_from(argv);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(host_app::run(config)).expect("host-app");
}

/// A directory where the documented commands run, and the processes they left running.
struct Session {
    work: tempfile::TempDir,
    bin: tempfile::TempDir,
    server: SocketAddr,
    host: SocketAddr,
    background: Vec<(Child, PathBuf, String)>,
}

impl Session {
    fn new() -> Self {
        let bin = tempfile::tempdir().expect("a temp dir");
        let shim = bin.path().join("cargo");
        fs::write(&shim, CARGO_SHIM).expect("writing the cargo shim");
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).expect("chmod");
        // The documented `target/release/host-app` (the binary of the release build the
        // guide starts with) is host-app through the shim as well.
        let work = tempfile::tempdir().expect("a temp dir");
        let release = work.path().join("target/release");
        fs::create_dir_all(&release).expect("target/release");
        let host = release.join("host-app");
        fs::write(
            &host,
            "#!/usr/bin/env bash\nexec cargo run --release -p host-app -- \"$@\"\n",
        )
        .expect("writing target/release/host-app");
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755)).expect("chmod");
        Self {
            work,
            bin,
            server: free_addr(),
            host: free_addr(),
            background: Vec::new(),
        }
    }

    fn substitute(&self, code: &str) -> String {
        code.replace("127.0.0.1:8080", &self.server.to_string())
            .replace("127.0.0.1:8081", &self.host.to_string())
    }

    fn command(&self, code: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("set -euo pipefail\n{code}"))
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        for v in CONTROLLED {
            cmd.env_remove(v);
        }
        let path = format!(
            "{}:{}",
            self.bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let exe = std::env::current_exe().expect("the test binary");
        cmd.env("PATH", path)
            .env("DOCS_KEYVAULT", KEYVAULT)
            .env("DOCS_TEST_EXE", exe)
            .env("DOCS_SERVER_BIND", self.server.to_string())
            .env("DOCS_HOST_BIND", self.host.to_string())
            .process_group(0);
        cmd
    }

    fn run(&mut self, file: &str, block: &Block) {
        let code = self.substitute(&block.code);
        if block.markers.iter().any(|m| m == "background") {
            self.start(file, &code);
        } else {
            let output = self.foreground(file, &code);
            for m in &block.markers {
                if let Some(want) = m.strip_prefix("expect ") {
                    assert!(
                        output.contains(want.trim()),
                        "{file}: the block's output lacks {want:?}\n--- block ---\n{code}--- output ---\n{output}"
                    );
                }
            }
        }
    }

    fn foreground(&self, file: &str, code: &str) -> String {
        let out_path = self.bin.path().join("foreground.log");
        let log = fs::File::create(&out_path).expect("a log file");
        let mut child = self
            .command(code)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("running bash");
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting") {
                break Some(s);
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        match status {
            Some(s) if s.success() => output,
            Some(s) => panic!(
                "{file}: a block failed ({s})\n--- block ---\n{code}--- output ---\n{output}"
            ),
            None => panic!(
                "{file}: a block ran over 120 s\n--- block ---\n{code}--- output ---\n{output}"
            ),
        }
    }

    fn start(&mut self, file: &str, code: &str) {
        let log_path = self
            .bin
            .path()
            .join(format!("background-{}.log", self.background.len()));
        let log = fs::File::create(&log_path).expect("a log file");
        let mut child = self
            .command(code)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("running bash");
        let addr = if code.contains("host-app") {
            self.host
        } else {
            self.server
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            let exited = child.try_wait().expect("waiting");
            if exited.is_some() || Instant::now() > deadline {
                kill_group(&mut child);
                let output = fs::read_to_string(&log_path).unwrap_or_default();
                panic!(
                    "{file}: a background block never listened on {addr} ({exited:?})\n--- block ---\n{code}--- output ---\n{output}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.background.push((child, log_path, code.to_owned()));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Newest first: the host application stops before the server it writes to.
        for (child, _, _) in self.background.iter_mut().rev() {
            kill_group(child);
        }
    }
}

/// SIGTERM to the block's process group (it was started as its own group), then SIGKILL if
/// it has not exited within 15 seconds.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console")
}

fn run_blocks(file: &str, blocks: &[Block]) {
    assert!(
        blocks.iter().any(|b| is_shell(&b.lang)),
        "{file}: no shell block found"
    );
    let mut session = Session::new();
    for b in blocks.iter().filter(|b| is_shell(&b.lang)) {
        session.run(file, b);
    }
}

#[test]
fn readme_first_minutes_run_as_written() {
    let doc = parse(&read("README.md"));
    let blocks: Vec<Block> = doc
        .blocks
        .into_iter()
        .filter(|b| b.section == "The first minutes")
        .collect();
    run_blocks("README.md (The first minutes)", &blocks);
}

#[test]
fn quickstart_runs_as_written() {
    let doc = parse(&read("docs/quickstart.md"));
    run_blocks("docs/quickstart.md", &doc.blocks);
}

// ---------------------------------------------------------------------------------------
// The API reference against the OpenAPI document.

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting");
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("writing");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reading");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {path}: a chunked answer"
    );
    body.to_owned()
}

/// Whether `text` names `op` (`GET /v1/keys`) not as the start of a longer path.
fn names(text: &str, op: &str) -> bool {
    text.match_indices(op).any(|(at, _)| {
        !text[at + op.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || "/{}_-".contains(c))
    })
}

#[test]
fn api_md_names_every_openapi_operation() {
    let mut session = Session::new();
    let serve = Block {
        lang: "sh".into(),
        code: "cargo run --release -p keyvault-admin-server -- serve\n".into(),
        markers: vec!["background".into()],
        section: String::new(),
    };
    session.run("(the openapi check)", &serve);
    let body = http_get(session.server, "/openapi.json");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("/openapi.json is JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let api = read("docs/api.md");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "patch", "delete", "head", "options"] {
            if item.get(method).is_some() {
                ops.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(
        ops.len() >= 30,
        "only {} operations in /openapi.json",
        ops.len()
    );
    let missing: Vec<&String> = ops.iter().filter(|op| !names(&api, op)).collect();
    assert!(
        missing.is_empty(),
        "docs/api.md does not mention these operations of /openapi.json: {missing:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Links and twins.

#[test]
fn local_links_resolve() {
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() >= 10, "too few Markdown files: {files:?}");
    for file in &files {
        let doc = parse(&read(file));
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        for target in links(&doc) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let rel = if path.is_empty() {
                PathBuf::from(file)
            } else {
                dir.join(path)
            };
            let full = repo().join(&rel);
            if !full.exists() {
                broken.push(format!("{file}: {target} (no such file)"));
                continue;
            }
            if let Some(anchor) = anchor
                && full.extension().is_some_and(|e| e == "md")
            {
                let target_doc = parse(&fs::read_to_string(&full).unwrap_or_default());
                if !anchors(&target_doc).contains(anchor) {
                    broken.push(format!("{file}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

fn twin_of(english: &str) -> String {
    english.replace(".md", ".zh-CN.md")
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

#[test]
fn chinese_guides_match_their_english_twins() {
    let mut problems = Vec::new();
    for file in markdown_files() {
        if let Some(stem) = file.strip_suffix(".zh-CN.md") {
            let en = format!("{stem}.md");
            if !TWINS.contains(&en.as_str()) {
                problems.push(format!("{file}: its English twin {en} is not in TWINS"));
            }
        }
    }
    for en in TWINS {
        let zh = twin_of(en);
        let en_text = read(en);
        let zh_text = read(&zh);
        let (en_doc, zh_doc) = (parse(&en_text), parse(&zh_text));
        let strip = |d: &Doc| -> Vec<(String, String)> {
            d.blocks
                .iter()
                .map(|b| (b.lang.clone(), b.code.clone()))
                .collect()
        };
        let (en_blocks, zh_blocks) = (strip(&en_doc), strip(&zh_doc));
        if en_blocks.len() != zh_blocks.len() {
            problems.push(format!(
                "{zh}: {} code blocks, {en} has {}",
                zh_blocks.len(),
                en_blocks.len()
            ));
        }
        for (i, (a, b)) in en_blocks.iter().zip(&zh_blocks).enumerate() {
            if a != b {
                problems.push(format!(
                    "{zh}: code block {} differs from {en}'s\n--- {en} ---\n{}--- {zh} ---\n{}",
                    i + 1,
                    a.1,
                    b.1
                ));
            }
        }
        for level in 1..=6 {
            let count = |d: &Doc| d.headings.iter().filter(|(l, _)| *l == level).count();
            if count(&en_doc) != count(&zh_doc) {
                problems.push(format!(
                    "{zh}: {} headings of level {level}, {en} has {}",
                    count(&zh_doc),
                    count(&en_doc)
                ));
            }
        }
        let en_links = links(&en_doc);
        let zh_links = links(&zh_doc);
        if !en_links.iter().any(|l| l == file_name(&zh)) {
            problems.push(format!("{en} does not link to {}", file_name(&zh)));
        }
        if !zh_links.iter().any(|l| l == file_name(en)) {
            problems.push(format!("{zh} does not link to {}", file_name(en)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Several instances behind nginx"),
        "several-instances-behind-nginx"
    );
    assert_eq!(slug("Plugins: stores, limiters"), "plugins-stores-limiters");
    assert_eq!(slug("`GET /v1/keys` and more"), "get-v1keys-and-more");
    assert_eq!(slug("多个实例与 nginx"), "多个实例与-nginx");
    assert!(names("`GET /v1/keys/{id}`", "GET /v1/keys/{id}"));
    assert!(!names("`GET /v1/keys/{id}`", "GET /v1/keys"));
}
