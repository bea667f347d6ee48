//! A PostgreSQL server of the test's own (never the shared one): `initdb` into a temporary
//! directory and `postgres` on a free port, run as the `postgres` user (both refuse root),
//! which the test can hang (SIGSTOP/SIGCONT) or kill (SIGKILL) and start again. The shape of
//! keyvault-redis's `OwnRedis`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// `/usr/lib/postgresql/<version>/bin`, the newest; the test fails when there is none.
fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("postgres").exists() && d.join("initdb").exists());
    dirs.sort();
    dirs.pop().expect(
        "the fault tests need PostgreSQL's server binaries (initdb, postgres) in \
         /usr/lib/postgresql/*/bin: apt-get install postgresql",
    )
}

fn as_postgres(bin: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin).args(args);
    c
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

pub struct OwnPg {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The `runuser` processes, reaped on drop.
    children: std::sync::Mutex<Vec<std::process::Child>>,
}

impl OwnPg {
    pub async fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let owner = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(owner.success(), "chown of {} failed", dir.path().display());
        let data = dir.path().join("data");
        let init = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        )
        .output()
        .expect("runuser initdb");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            port,
            dir,
            bin,
            children: Default::default(),
        };
        pg.restart().await;
        let admin = pg.url("postgres");
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE kv")
            .execute(&mut c)
            .await
            .unwrap();
        pg
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts the server (again) and waits until it takes connections; returns how long it
    /// took.
    pub async fn restart(&self) -> Duration {
        let started = Instant::now();
        let data = self.dir.path().join("data");
        let sock = self.dir.path().to_str().unwrap().to_owned();
        let port = self.port.to_string();
        let child = as_postgres(
            &self.bin.join("postgres"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port,
                "-k",
                &sock,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("runuser postgres");
        self.children.lock().unwrap().push(child);
        let url = self.url("postgres");
        while started.elapsed() < Duration::from_secs(30) {
            if <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .is_ok()
            {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the test's postgres on port {} did not start", self.port);
    }

    /// The postmaster and every process it started.
    fn pids(&self) -> Vec<u32> {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        let Some(master) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![master];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid …: the command may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(master) {
                pids.push(pid);
            }
        }
        pids
    }

    /// A crash: SIGKILL to the postmaster and its backends; returns once they are gone.
    pub async fn kill(&self) {
        let pids = self.kill_now();
        self.gone(&pids).await;
    }

    /// SIGKILL to the postmaster and its backends, without waiting: the processes signalled.
    pub fn kill_now(&self) -> Vec<u32> {
        let pids = self.pids();
        for &p in &pids {
            signal("-KILL", p);
        }
        pids
    }

    /// Returns once every process of `pids` is gone.
    pub async fn gone(&self, pids: &[u32]) {
        let start = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "postgres survived SIGKILL"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A hang: every process stopped (SIGSTOP); connections stay open, nothing answers.
    pub fn stop(&self) {
        for p in self.pids() {
            signal("-STOP", p);
        }
    }

    /// The end of a hang (SIGCONT).
    pub fn resume(&self) {
        for p in self.pids() {
            signal("-CONT", p);
        }
    }
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        for p in self.pids() {
            signal("-CONT", p);
            signal("-KILL", p);
        }
        for mut c in self.children.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
