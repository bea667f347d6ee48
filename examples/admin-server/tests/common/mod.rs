//! Drives the real `keyvault` binary: servers on port 0, CLI invocations, a tiny HTTP/1.1
//! client, and a transcript of everything the processes printed, to grep for secrets.
#![allow(dead_code, unreachable_pub)]

// The pieces both server harnesses share (secrets grep, a PostgreSQL database per test).
#[path = "../../../../keyvault-admin/tests/common/shared.rs"]
mod shared;

pub(crate) use shared::*;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_keyvault");

/// The variables a test controls; any inherited value is removed first.
const CONTROLLED: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "KEYVAULT_BIND",
    "KEYVAULT_PEPPER",
    "KEYVAULT_TRUSTED_PROXIES",
    "KEYVAULT_LOG",
    "KEYVAULT_LOG_FORMAT",
    "KEYVAULT_INSTANCES",
    "KEYVAULT_CREDITS_FAIL_MODE",
];

/// One deployment's settings: a working directory and environment.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) dir: PathBuf,
    pub(crate) vars: Vec<(String, String)>,
    pub(crate) transcript: Arc<Mutex<String>>,
}

impl Env {
    /// A deployment on a fresh SQLite file in `dir`.
    pub(crate) fn sqlite(dir: &Path) -> Self {
        let url = format!("sqlite://{}", dir.join("keyvault.db").display());
        Self {
            dir: dir.to_owned(),
            vars: vec![("DATABASE_URL".into(), url)],
            transcript: Arc::default(),
        }
    }

    pub(crate) fn with(mut self, k: &str, v: &str) -> Self {
        self.vars.retain(|(name, _)| name != k);
        self.vars.push((k.into(), v.into()));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(&self.dir);
        for k in CONTROLLED {
            c.env_remove(k);
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// Runs a command; its stderr (and, unless `secret_stdout`, its stdout) join the
    /// transcript.
    pub(crate) fn run_with(&self, args: &[&str], stdin: Option<&str>, secret_stdout: bool) -> Out {
        let mut c = self.command();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn keyvault");
        {
            let mut sin = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                // The process may exit without reading (a usage error).
                let _ = sin.write_all(s.as_bytes());
            }
        }
        let out = child.wait_with_output().expect("wait keyvault");
        let o = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&o.stderr);
        if !secret_stdout {
            t.push_str(&o.stdout);
        }
        o
    }

    pub(crate) fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None, false)
    }

    /// Runs a command whose standard output is a secret shown once (kept out of the grep).
    pub(crate) fn run_secret(&self, args: &[&str]) -> Out {
        self.run_with(args, None, true)
    }

    /// Creates an API token with the CLI.
    pub(crate) fn token(&self, role: &str) -> String {
        let o = self.run_secret(&[
            "token",
            "create",
            "--name",
            &format!("{role} token"),
            "--role",
            role,
        ]);
        assert_eq!(o.code, 0, "token create: {}", o.stderr);
        o.stdout.trim().to_owned()
    }

    pub(crate) fn serve(&self) -> Server {
        Server::start(self)
    }
}

#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    /// Asserts a failure with exactly one line on stderr.
    pub(crate) fn assert_one_line_error(&self, what: &str) {
        assert_ne!(self.code, 0, "{what}: expected failure, got {self:?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected one line on stderr, got {:?}",
            self.stderr
        );
    }
}

/// A running `keyvault serve`.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) transcript: Arc<Mutex<String>>,
}

fn pump(
    r: impl Read + Send + 'static,
    transcript: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            let mut t = transcript.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
}

impl Server {
    /// Signs in through the form as a browser does (the form's CSRF token and its nonce
    /// cookie first); the answer to the form's post.
    #[allow(dead_code, reason = "not every test binary signs in")]
    pub(crate) fn sign_in(&self, username: &str, password: &str) -> Resp {
        let form = self.req("GET", "/admin/login").send();
        assert_eq!(form.status, 200, "{}", form.text());
        let nonce = form
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("the sign-in form sets its nonce")
            .to_owned();
        let text = form.text();
        let marker = r#"name="csrf" value=""#;
        let at = text.find(marker).expect("a CSRF token") + marker.len();
        let csrf = &text[at..at + text[at..].find('"').unwrap()];
        let body = format!(
            "username={username}&password={}&csrf={csrf}",
            password.replace(' ', "+")
        );
        self.req("POST", "/admin/login")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", &nonce)
            .raw(body.as_bytes())
            .send()
    }

    pub(crate) fn start(env: &Env) -> Server {
        let mut c = env.command();
        // Verbose logs make the secret grep meaningful.
        c.env("KEYVAULT_LOG", "debug");
        c.args(["serve", "--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn keyvault serve");
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().unwrap(), env.transcript.clone(), None);
        pump(
            child.stderr.take().unwrap(),
            env.transcript.clone(),
            Some(tx),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    // A plain line, or a JSON line in the JSON format.
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        break addr.parse().expect("bound address");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start: {}", env.transcript.lock().unwrap());
                }
            }
        };
        Server {
            child,
            addr,
            transcript: env.transcript.clone(),
        }
    }

    pub(crate) fn req(&self, method: &str, path: &str) -> Req {
        Req {
            addr: self.addr,
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn terminate(mut self) -> i32 {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the output pumps drain.
                std::thread::sleep(Duration::from_millis(100));
                return s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Asserts a problem document with this status and code.
    pub(crate) fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["status"], status, "{v}");
        v
    }
}

impl Req {
    pub(crate) fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub(crate) fn token(self, t: &str) -> Self {
        self.header("Authorization", &format!("Bearer {t}"))
    }
    pub(crate) fn json(mut self, v: &Value) -> Self {
        self.body = Some(serde_json::to_vec(v).unwrap());
        self.header("Content-Type", "application/json")
    }
    pub(crate) fn raw(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }

    pub(crate) fn send(&self) -> Resp {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.path, self.addr
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = self.body.clone().unwrap_or_default();
        if self.body.is_some() || !matches!(self.method.as_str(), "GET" | "HEAD" | "DELETE") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // The server may answer (413) and close before reading a large body.
        let _ = s.write_all(&body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let resp = parse_response(&raw);
        // No request of any test, good or bad, is ever answered 500.
        assert_ne!(
            resp.status,
            500,
            "{} {} answered 500: {}",
            self.method,
            self.path,
            String::from_utf8_lossy(&resp.body)
        );
        resp
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut i = 0;
        while let Some(end) = rest[i..].windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&rest[i..i + end]).into_owned();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            i += end + 2;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[i..i + size]);
            i += size + 2;
        }
        rest = body;
    }
    Resp {
        status,
        headers,
        body: rest,
    }
}

/// Polls `f` until it returns true or `within` passes; returns how long it took.
pub(crate) fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Env {
    /// A deployment on its own PostgreSQL database, with Redis.
    pub(crate) fn postgres(dir: &Path, db: &PgDb) -> Self {
        Self {
            dir: dir.to_owned(),
            vars: vec![
                ("DATABASE_URL".into(), db.url.clone()),
                ("REDIS_URL".into(), redis_url()),
            ],
            transcript: Arc::default(),
        }
    }
}
