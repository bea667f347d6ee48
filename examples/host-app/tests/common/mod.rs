//! Drives the real `host-app` binary over loopback.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) stderr: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts host-app on an ephemeral port with only `envs` (and PATH) in its environment.
pub(crate) fn start(envs: &[(&str, &std::ffi::OsStr)], dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_host-app"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KEYVAULT_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    let mut seen = Vec::new();
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("host-app did not start: {seen:?}"));
        addr = line
            .split_once("listening addr=")
            .map(|(_, a)| a.trim().to_owned());
        seen.push(line);
    }
    Server {
        child,
        addr: addr.unwrap(),
        stderr: rx,
    }
}

/// One HTTP/1.1 request on a kept-alive connection; returns the status and the body.
pub(crate) fn request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, String) {
    try_request(conn, method, path, key, body).unwrap()
}

/// [`request`], failing with the I/O error (a read timeout, a closed connection) instead of
/// panicking.
pub(crate) fn try_request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes())?;
    let mut status_line = String::new();
    conn.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the headers"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().map_err(|_| bad("bad content-length"))?;
        }
    }
    let mut buf = vec![0; len];
    conn.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

/// 300 requests on one kept-alive connection, returned open: 150 hello, 50 chat, 50 embed with `key`, and 50 hello with a wrong key.
pub(crate) fn send_300(addr: &str, key: &str) -> BufReader<TcpStream> {
    let mut conn = BufReader::new(TcpStream::connect(addr).unwrap());
    let mut statuses = Vec::new();
    for i in 0..300 {
        let status = match i % 6 {
            0..=2 => request(&mut conn, "GET", "/v1/hello", key, ""),
            3 => request(&mut conn, "POST", "/v1/chat", key, "{\"i\":1}"),
            4 => request(&mut conn, "POST", "/v1/embed", key, "{\"i\":2}"),
            _ => request(&mut conn, "GET", "/v1/hello", "kv_not_a_key", ""),
        };
        statuses.push(status.0);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 250);
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 50);
    // Returned open: a kept-alive client must not hold the shutdown up.
    conn
}

/// Sends SIGTERM and waits (at most 10 s) for the exit.
pub(crate) fn sigterm(server: &mut Server) -> ExitStatus {
    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    for _ in 0..200 {
        if let Some(s) = server.child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("host-app did not stop within 10 s of SIGTERM");
}

/// Everything the process wrote.
pub(crate) fn output(server: &mut Server) -> (String, Vec<String>) {
    let mut stdout = String::new();
    if let Some(mut out) = server.child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    (stdout, server.stderr.try_iter().collect())
}
