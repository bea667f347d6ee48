//! Drives keyvault-admin's router in-process: a fresh deployment per test, requests sent with
//! `oneshot` from a loopback peer (no sockets), and every log line captured so that tests can
//! grep them for secrets.
#![allow(dead_code, unreachable_pub)]

pub mod backup;
pub mod ownpg;
pub mod routes;
mod shared;

pub use shared::*;

use std::{
    net::SocketAddr,
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::ConnectInfo, http::Request};
use http_body_util::BodyExt;
use keyvault_admin::{Admin, App, Config, cli::Global};
use keyvault_core::Actor;
use serde_json::Value;
use tower::ServiceExt;

/// Every log line of this process (nextest runs each test in a process of its own).
static LOGS: Mutex<String> = Mutex::new(String::new());

#[derive(Clone)]
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the logs at `debug`, which makes the secret grep meaningful, through the
/// server's own subscriber (so that `/v1/logs` has this process's records). `KEYVAULT_LOG_FORMAT`
/// is read as `serve` reads it.
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let format = keyvault_admin::logs::Format::from_env().expect("a log format");
        keyvault_admin::logs::install(
            tracing_subscriber::EnvFilter::new("debug,sqlx=warn"),
            format,
            || Box::new(LogWriter),
            false,
        );
    });
}

/// What the process has logged so far.
pub fn logs() -> String {
    LOGS.lock().unwrap().clone()
}

/// The settings of one deployment, as `keyvault`'s global flags would give them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub redis_url: Option<String>,
    pub secret_key: Option<String>,
    pub pepper: Option<String>,
    pub trusted_proxies: Option<String>,
    /// `KEYVAULT_ALERT_INTERVAL` (default 30s).
    pub alert_interval: Option<String>,
    /// `KEYVAULT_ALLOW_PRIVATE_WEBHOOKS`.
    pub allow_private_webhooks: bool,
    /// `KEYVAULT_NOTIFY_RETRY_DELAYS` (default the server's).
    pub retry_delays: Option<String>,
    /// `KEYVAULT_LANG`.
    pub lang: Option<String>,
    /// `KEYVAULT_JOB_INTERVAL`, `KEYVAULT_AUTO_ROTATE`, `KEYVAULT_CLEANUP_AFTER` and
    /// `KEYVAULT_USAGE_RETENTION` (default the server's).
    pub job_interval: Option<String>,
    pub auto_rotate: Option<String>,
    pub cleanup_after: Option<String>,
    pub usage_retention: Option<String>,
    /// `KEYVAULT_INSTANCES` (default 1).
    pub instances: Option<String>,
    /// `KEYVAULT_MAX_CONCURRENCY` (default 1024).
    pub max_concurrency: Option<String>,
    /// `KEYVAULT_HEADER_TIMEOUT` (default 10s) and `KEYVAULT_REQUEST_TIMEOUT` (default 30s).
    pub header_timeout: Option<String>,
    pub request_timeout: Option<String>,
    /// `KEYVAULT_REDIS_NAMESPACE` (default `keyvault`).
    pub redis_namespace: Option<String>,
}

impl Settings {
    /// A fresh SQLite file in `dir`.
    pub fn sqlite(dir: &std::path::Path) -> Self {
        Self {
            database_url: format!("sqlite://{}", dir.join("keyvault.db").display()),
            redis_url: None,
            secret_key: None,
            pepper: None,
            trusted_proxies: None,
            alert_interval: None,
            allow_private_webhooks: false,
            retry_delays: None,
            lang: None,
            job_interval: None,
            auto_rotate: None,
            cleanup_after: None,
            usage_retention: None,
            instances: None,
            max_concurrency: None,
            header_timeout: None,
            request_timeout: None,
            redis_namespace: None,
        }
    }

    pub fn config(&self) -> Config {
        Config::from_args(&Global {
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            redis_namespace: self
                .redis_namespace
                .clone()
                .unwrap_or_else(|| "keyvault".into()),
            secret_key: self.secret_key.clone(),
            pepper: self.pepper.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            instances: self.instances.clone().unwrap_or_else(|| "1".into()),
            credits_fail_mode: "closed".into(),
            alert_interval: self.alert_interval.clone().unwrap_or_else(|| "30s".into()),
            allow_private_webhooks: if self.allow_private_webhooks {
                "true"
            } else {
                "false"
            }
            .into(),
            notify_retry_delays: self
                .retry_delays
                .clone()
                .unwrap_or_else(|| "10s,30s,5m,30m,2h".into()),
            lang: self.lang.clone().unwrap_or_else(|| "en".into()),
            job_interval: self.job_interval.clone().unwrap_or_else(|| "60s".into()),
            auto_rotate: self.auto_rotate.clone().unwrap_or_else(|| "on".into()),
            cleanup_after: self.cleanup_after.clone().unwrap_or_else(|| "30d".into()),
            usage_retention: self.usage_retention.clone().unwrap_or_else(|| "90d".into()),
            max_concurrency: self
                .max_concurrency
                .clone()
                .unwrap_or_else(|| "1024".into()),
            header_timeout: self.header_timeout.clone().unwrap_or_else(|| "10s".into()),
            request_timeout: self.request_timeout.clone().unwrap_or_else(|| "30s".into()),
        })
        .expect("test settings are valid")
    }
}

/// One deployment's router, served in-process.
pub struct Server {
    pub app: App,
    pub admin: Admin,
    router: Router,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A deployment on a fresh SQLite file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start(&Settings::sqlite(dir.path())).await;
        s._dir = Some(dir);
        s
    }

    /// A deployment on a fresh SQLite file, its app changed by `f` first (a resolver, a
    /// notifier).
    pub async fn sqlite_with(f: impl FnOnce(App) -> App) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = App::open(Settings::sqlite(dir.path()).config())
            .await
            .expect("open the app");
        let mut s = Self::of(f(app));
        s._dir = Some(dir);
        s
    }

    pub async fn start(settings: &Settings) -> Self {
        capture_logs();
        let app = App::open(settings.config()).await.expect("open the app");
        Self::of(app)
    }

    /// The deployment of an app opened (and perhaps changed) by the test.
    pub fn of(app: App) -> Self {
        capture_logs();
        let admin = Admin::new(app.clone());
        // One deployment per test process: its figures go to the process's recorder.
        if let Some(r) = admin.metrics_recorder() {
            let _ = metrics::set_global_recorder(r);
        }
        Self {
            router: admin.router(),
            app,
            admin,
            _dir: None,
        }
    }

    /// The router itself, for requests the helpers cannot make (a body that never ends).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// An API token of this role, made through the library.
    pub async fn token(&self, role: &str) -> String {
        let created = self
            .app
            .create_token(
                &format!("{role} token"),
                role.parse().unwrap(),
                None,
                &Actor::library(),
            )
            .await
            .expect("create a token");
        created.token.expose().to_owned()
    }

    /// Posts the sign-in form as a browser does: the form's page first (its CSRF token and
    /// the nonce cookie behind it), then the form.
    pub async fn sign_in(&self, username: &str, password: &str) -> Resp {
        let form = self.req("GET", "/admin/login").send().await;
        assert_eq!(form.status, 200, "{}", form.text());
        let nonce = form
            .cookie("kv_login")
            .expect("the sign-in form sets its nonce");
        let body = serde_html_form::to_string([
            ("username", username),
            ("password", password),
            ("csrf", &form.csrf()),
        ])
        .unwrap();
        self.req("POST", "/admin/login")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Cookie", &format!("kv_login={nonce}"))
            .raw(body.as_bytes())
            .send()
            .await
    }

    /// A signed-in dashboard session of `username`.
    pub async fn session(&self, username: &str, password: &str) -> Session {
        let r = self.sign_in(username, password).await;
        assert_eq!(r.status, 303, "{}", r.text());
        let cookie = format!("kv_session={}", r.cookie("kv_session").unwrap());
        let page = self
            .req("GET", "/admin")
            .header("Cookie", &cookie)
            .send()
            .await;
        assert_eq!(page.status, 200, "{}", page.text());
        Session {
            router: self.router.clone(),
            cookie,
            csrf: page.csrf(),
        }
    }

    pub fn req(&self, method: &str, path: &str) -> Req {
        Req {
            router: self.router.clone(),
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            peer: "127.0.0.1:40000".parse().unwrap(),
        }
    }
}

/// The real `serve` loop (what `keyvault serve` runs: hyper's HTTP/1 connections with the
/// header timeout, the router with its connection's peer, graceful shutdown) on a port of
/// 127.0.0.1 chosen by the system.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Asks the server to stop and waits for `serve` to return; `None` when it has not
    /// returned within `within`.
    pub async fn stop(mut self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(within, &mut self.task)
            .await
            .ok()
            .map(|joined| {
                joined.expect("serve returned an error or panicked");
                start.elapsed()
            })
    }
}

impl Server {
    /// This deployment served over TCP by [`keyvault_admin::serve`].
    pub async fn serve_tcp(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.clone();
        let task = tokio::spawn(async move {
            keyvault_admin::serve(admin, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Served {
            addr,
            stop: Some(stop),
            task,
        }
    }
}

/// A request being built.
#[derive(Clone)]
pub struct Req {
    router: Router,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    peer: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A signed-in browser: its session cookie and the session's CSRF token.
#[derive(Clone)]
pub struct Session {
    router: Router,
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    /// A request carrying the session cookie.
    pub fn req(&self, method: &str, path: &str) -> Req {
        Req {
            router: self.router.clone(),
            method: method.into(),
            path: path.into(),
            headers: vec![("Cookie".into(), self.cookie.clone())],
            body: None,
            peer: "127.0.0.1:40000".parse().unwrap(),
        }
    }

    /// A form post carrying the session's CSRF token.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut all = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.req("POST", path)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .raw(serde_html_form::to_string(&all).unwrap().as_bytes())
            .send()
            .await
    }

    /// A script's change: JSON with the token in `X-CSRF-Token`.
    pub async fn script(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.req(method, path)
            .header("X-CSRF-Token", &self.csrf)
            .json(body)
            .send()
            .await
    }
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The value a `Set-Cookie` of this response gives `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| {
                let pair = v.split(';').next()?;
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| v.to_owned())
            })
    }
    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        let page = self.text();
        let marker = r#"name="csrf" value=""#;
        let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
        page[at..at + page[at..].find('"').unwrap()].to_owned()
    }
    /// Asserts a problem document with this status and code.
    pub fn problem(&self, status: u16, code: &str) -> Value {
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
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn token(self, t: &str) -> Self {
        self.header("Authorization", &format!("Bearer {t}"))
    }
    pub fn json(mut self, v: &Value) -> Self {
        self.body = Some(serde_json::to_vec(v).unwrap());
        self.header("Content-Type", "application/json")
    }
    pub fn raw(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }
    /// The TCP peer the request comes from.
    pub fn peer(mut self, peer: &str) -> Self {
        self.peer = peer.parse().unwrap();
        self
    }

    /// Sends the request and answers with the status, the headers and the body as it comes
    /// (for streams, which never end).
    pub async fn open(self) -> (u16, Vec<(String, String)>, Body) {
        let mut b = Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header("host", "127.0.0.1:8080")
            .extension(ConnectInfo(self.peer));
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Body::from(self.body.unwrap_or_default())).unwrap();
        let res = self.router.oneshot(req).await.unwrap();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        (res.status().as_u16(), headers, res.into_body())
    }

    pub async fn send(self) -> Resp {
        let mut b = Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .header("host", "127.0.0.1:8080")
            .extension(ConnectInfo(self.peer));
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b.body(Body::from(self.body.unwrap_or_default())).unwrap();
        let res = self.router.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let (method, path) = (self.method, self.path);
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        never_500(&method, &path, status, &body);
        Resp {
            status,
            headers,
            body,
        }
    }
}

/// No request of any test, good or bad, is ever answered 500: every answer the helpers get
/// passes here.
fn never_500(method: &str, path: &str, status: u16, body: &[u8]) {
    assert_ne!(
        status,
        500,
        "{method} {path} answered 500: {}",
        String::from_utf8_lossy(body)
    );
}

impl Req {
    /// Sends it over TCP to a server started by [`Server::serve_tcp`], through its
    /// connection handling (timeouts, load shedding) rather than to the router.
    pub async fn send_to(self, client: &reqwest::Client, addr: SocketAddr) -> Resp {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut b = client.request(method, format!("http://{addr}{}", self.path));
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let res = b.body(self.body.unwrap_or_default()).send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = res.bytes().await.unwrap().to_vec();
        never_500(&self.method, &self.path, status, &body);
        Resp {
            status,
            headers,
            body,
        }
    }
}

/// Polls `f` until it returns true or `within` passes; returns how long it took.
pub async fn eventually(within: Duration, f: impl AsyncFn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Settings {
    /// A deployment on its own PostgreSQL database, with Redis.
    pub fn postgres(db: &PgDb) -> Self {
        Self {
            database_url: db.url.clone(),
            redis_url: Some(redis_url()),
            secret_key: None,
            pepper: None,
            trusted_proxies: None,
            alert_interval: None,
            allow_private_webhooks: false,
            retry_delays: None,
            lang: None,
            job_interval: None,
            auto_rotate: None,
            cleanup_after: None,
            usage_retention: None,
            instances: None,
            max_concurrency: None,
            header_timeout: None,
            request_timeout: None,
            redis_namespace: None,
        }
    }
}
