//! Resolved configuration: what the flags and environment mean.

use ipnet::IpNet;
use std::num::NonZeroU32;

pub use keyvault::deploy::DatabaseUrl;
use keyvault::{
    deploy::RedisSettings,
    redis::{FailMode, RedisConfig, RedisCreditConfig, RedisLimiterConfig},
};
use keyvault_axum::TrustedProxies;
use keyvault_core::KeyHasher;

use crate::{
    cli::Global,
    error::{Error, Result},
};

/// The length below which `SECRET_KEY` is flagged as weak.
pub(crate) const MIN_SECRET_KEY_BYTES: usize = 32;

/// Everything the commands need from the flags and environment.
#[derive(Clone)]
pub struct Config {
    /// An SQLite file or PostgreSQL (the server never runs on an in-memory database).
    pub(crate) db: DatabaseUrl,
    pub(crate) redis: Option<RedisSettings>,
    pub(crate) secret_key: Option<String>,
    pub(crate) hasher: KeyHasher,
    /// Whose `X-Forwarded-For` is believed; `None`: nobody's.
    pub(crate) trusted_proxies: Option<TrustedProxies>,
    /// How often the alert rules are evaluated.
    pub(crate) alert_interval: std::time::Duration,
    /// Whether deliveries may reach private addresses (`KEYVAULT_ALLOW_PRIVATE_WEBHOOKS`).
    pub(crate) allow_private_webhooks: bool,
    /// The waits between a delivery's attempts.
    pub(crate) retry_delays: Vec<std::time::Duration>,
    /// The language of Slack messages.
    pub(crate) lang: crate::dashboard::Lang,
    /// How often `serve` runs its jobs.
    pub(crate) job_interval: std::time::Duration,
    /// Whether `serve` rotates due keys itself (`KEYVAULT_AUTO_ROTATE`).
    pub(crate) auto_rotate: bool,
    /// Keys expired for longer than this are deleted; `None`: kept.
    pub(crate) cleanup_after: Option<std::time::Duration>,
    /// Usage older than this is deleted; `None`: kept.
    pub(crate) usage_retention: Option<std::time::Duration>,
    /// Requests handled at once (`KEYVAULT_MAX_CONCURRENCY`).
    pub(crate) max_concurrency: usize,
    /// How long `serve` waits for a request's head (`KEYVAULT_HEADER_TIMEOUT`).
    pub(crate) header_timeout: std::time::Duration,
    /// How long a request may take until its response starts (`KEYVAULT_REQUEST_TIMEOUT`).
    pub(crate) request_timeout: std::time::Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("db", &self.db)
            .field("redis", &self.redis)
            .field("peppered", &self.hasher.is_peppered())
            .field("trusted_proxies", &self.trusted_proxies)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The configuration the environment (and a `.env` file already loaded) describes, with
    /// the defaults of the `keyvault` command.
    pub fn from_env() -> Result<Self> {
        #[derive(clap::Parser)]
        struct EnvOnly {
            #[command(flatten)]
            global: Global,
        }
        let parsed = <EnvOnly as clap::Parser>::try_parse_from(["keyvault"])
            .map_err(|e| Error::input("environment", e.kind().to_string()))?;
        Self::from_args(&parsed.global)
    }

    /// The configuration the command line's global flags describe.
    pub fn from_args(g: &Global) -> Result<Self> {
        let db = DatabaseUrl::parse(&g.database_url)?;
        if let DatabaseUrl::Sqlite { path: None, .. } = db {
            return Err(Error::input(
                "DATABASE_URL",
                "an SQLite URL needs a file path (sqlite://keyvault.db)",
            ));
        }
        // Checked with or without Redis: a typo must not wait for the day Redis is added.
        let (limiter, credits) = redis_behaviour(g)?;
        let redis = g
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|url| {
                // Several node URLs, comma-separated, name a Redis Cluster (CONTRACT §4).
                let node = |u: &str| {
                    let u = u.trim();
                    u.starts_with("redis://") || u.starts_with("rediss://")
                };
                if url.split(',').all(node) {
                    let namespace = RedisConfig::new(g.redis_namespace.trim())
                        .map_err(|e| Error::input("KEYVAULT_REDIS_NAMESPACE", e.message))?;
                    Ok(RedisSettings::new(url)
                        .config(namespace)
                        .limiter(limiter)
                        .credits(credits))
                } else {
                    Err(Error::input(
                        "REDIS_URL",
                        "must start with redis:// or rediss:// (for a Redis Cluster: node URLs separated by commas, each so)",
                    ))
                }
            })
            .transpose()?;
        let hasher = match g.pepper.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => KeyHasher::with_pepper(p.as_bytes())
                .map_err(|e| Error::input("KEYVAULT_PEPPER", e.message))?,
            None => KeyHasher::sha256(),
        };
        // Any value is a valid secret (the deployment chose it); `serve` flags a short one.
        let secret_key = g.secret_key.clone().filter(|s| !s.is_empty());
        let nets = parse_proxies(g.trusted_proxies.as_deref().unwrap_or(""))?;
        let trusted_proxies = (!nets.is_empty()).then(|| TrustedProxies::new(nets));
        let alert_interval = duration(&g.alert_interval, "KEYVAULT_ALERT_INTERVAL")?;
        if alert_interval < std::time::Duration::from_millis(100)
            || alert_interval > std::time::Duration::from_secs(86_400)
        {
            return Err(Error::input(
                "KEYVAULT_ALERT_INTERVAL",
                "must be from 100ms to 24h",
            ));
        }
        let allow_private_webhooks = match g.allow_private_webhooks.trim() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            _ => {
                return Err(Error::input(
                    "KEYVAULT_ALLOW_PRIVATE_WEBHOOKS",
                    "must be true or false",
                ));
            }
        };
        let retry_delays = parse_delays(&g.notify_retry_delays)?;
        let lang = crate::dashboard::Lang::from_code(g.lang.trim())
            .ok_or_else(|| Error::input("KEYVAULT_LANG", "must be en or zh-CN"))?;
        let job_interval = duration(&g.job_interval, "KEYVAULT_JOB_INTERVAL")?;
        if job_interval < std::time::Duration::from_millis(100)
            || job_interval > std::time::Duration::from_secs(86_400)
        {
            return Err(Error::input(
                "KEYVAULT_JOB_INTERVAL",
                "must be from 100ms to 24h",
            ));
        }
        let auto_rotate = match g.auto_rotate.trim() {
            "on" | "true" | "1" => true,
            "off" | "false" | "0" => false,
            _ => return Err(Error::input("KEYVAULT_AUTO_ROTATE", "must be on or off")),
        };
        let cleanup_after = optional_duration(&g.cleanup_after, "KEYVAULT_CLEANUP_AFTER")?;
        let usage_retention = optional_duration(&g.usage_retention, "KEYVAULT_USAGE_RETENTION")?;
        if usage_retention.is_some_and(|d| d < std::time::Duration::from_secs(1)) {
            return Err(Error::input(
                "KEYVAULT_USAGE_RETENTION",
                "must be at least 1s (or off)",
            ));
        }
        let max_concurrency = g
            .max_concurrency
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| {
                Error::input(
                    "KEYVAULT_MAX_CONCURRENCY",
                    "must be a whole number from 1 to 1000000",
                )
            })?;
        let header_timeout = bounded_timeout(&g.header_timeout, "KEYVAULT_HEADER_TIMEOUT")?;
        let request_timeout = bounded_timeout(&g.request_timeout, "KEYVAULT_REQUEST_TIMEOUT")?;
        Ok(Self {
            db,
            redis,
            secret_key,
            hasher,
            trusted_proxies,
            alert_interval,
            allow_private_webhooks,
            retry_delays,
            lang,
            job_interval,
            auto_rotate,
            cleanup_after,
            usage_retention,
            max_concurrency,
            header_timeout,
            request_timeout,
        })
    }
}

/// A duration setting (`90s`, `30d`), or an error naming it.
fn duration(text: &str, name: &str) -> Result<std::time::Duration> {
    keyvault_core::HumanDuration::parse(text.trim(), name)
        .map(|d| d.get())
        .map_err(|e| Error::input(name, e.message))
}

/// A timeout setting: from 100ms (shorter would cut honest clients on a slow link) to 1h.
fn bounded_timeout(text: &str, name: &str) -> Result<std::time::Duration> {
    let d = duration(text, name)?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
        return Err(Error::input(name, "must be from 100ms to 1h"));
    }
    Ok(d)
}

/// A duration setting that `off` turns off.
fn optional_duration(text: &str, name: &str) -> Result<Option<std::time::Duration>> {
    match text.trim() {
        "off" => Ok(None),
        other => duration(other, name).map(Some),
    }
}

/// `KEYVAULT_NOTIFY_RETRY_DELAYS`: 1–20 durations, each from 1ms to 24h.
fn parse_delays(text: &str) -> Result<Vec<std::time::Duration>> {
    const NAME: &str = "KEYVAULT_NOTIFY_RETRY_DELAYS";
    let delays = text
        .split(',')
        .map(|d| {
            let d = keyvault_core::HumanDuration::parse(d.trim(), NAME)
                .map_err(|e| Error::input(NAME, e.message))?
                .get();
            if d.is_zero() || d > std::time::Duration::from_secs(86_400) {
                return Err(Error::input(NAME, "each wait must be from 1ms to 24h"));
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>>>()?;
    if delays.len() > 20 {
        return Err(Error::input(NAME, "at most 20 waits"));
    }
    Ok(delays)
}

/// What the limiter and the credit cache do while Redis is unreachable.
fn redis_behaviour(g: &Global) -> Result<(RedisLimiterConfig, RedisCreditConfig)> {
    let instances =
        g.instances.trim().parse::<NonZeroU32>().map_err(|_| {
            Error::input("KEYVAULT_INSTANCES", "must be a whole number, at least 1")
        })?;
    let credits_mode = match g.credits_fail_mode.as_str() {
        "closed" => FailMode::Closed,
        "open" => FailMode::Open,
        _ => {
            return Err(Error::input(
                "KEYVAULT_CREDITS_FAIL_MODE",
                "must be closed or open",
            ));
        }
    };
    Ok((
        RedisLimiterConfig::default().instances(instances),
        RedisCreditConfig::default().fail_mode(credits_mode),
    ))
}

fn parse_proxies(text: &str) -> Result<Vec<IpNet>> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    keyvault_core::parse_allowlist(&items)
        .map_err(|e| Error::input("KEYVAULT_TRUSTED_PROXIES", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded_and_name_their_variable() {
        for (name, text) in [
            ("KEYVAULT_HEADER_TIMEOUT", "50ms"),
            ("KEYVAULT_REQUEST_TIMEOUT", "2h"),
            ("KEYVAULT_REQUEST_TIMEOUT", "soon"),
        ] {
            let e = bounded_timeout(text, name).unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
        assert_eq!(
            bounded_timeout("10s", "KEYVAULT_HEADER_TIMEOUT").unwrap(),
            std::time::Duration::from_secs(10)
        );
        let d = Config::from_args(&Global {
            database_url: "sqlite://x.db".into(),
            ..Global::default()
        })
        .unwrap();
        assert_eq!(
            (d.header_timeout, d.request_timeout),
            (
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(30)
            )
        );
    }

    #[test]
    fn proxies_are_cidrs() {
        assert_eq!(parse_proxies("10.0.0.0/8, ::1").unwrap().len(), 2);
        assert!(parse_proxies("nope").is_err());
        assert!(parse_proxies("").unwrap().is_empty());
    }
}
