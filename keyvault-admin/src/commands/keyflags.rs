//! `keys create` and `keys update`: their flags become keyvault-core's [`NewKey`] and
//! [`KeyPatch`]. Every value goes through the parser the REST API uses (durations, rate
//! limits, networks, credit bounds, refill intervals), and each error names the flag.

use ipnet::IpNet;
use keyvault_core::{
    Credits, DEFAULT_GRACE, HumanDuration, InvalidInput, KeyPatch, KeyRecord, NewKey, Prefix,
    RateLimit, Refill, RotationPolicy, check_credit_amount, parse_allowlist,
};
use serde_json::{Map, Value};

use super::{cli_actor, duration, key_id, refuse, to_json};
use crate::{
    app::App,
    cli::{KeysCreateArgs, KeysUpdateArgs},
    error::{Error, Result},
    out::{stderr_line, stdout_line},
    views::KeyView,
};

/// Renames a core error's field to the flag that carried the value.
fn flag(name: &'static str) -> impl Fn(InvalidInput) -> Error {
    move |e| Error::input(name, e.message)
}

/// A credit amount (`--credits`, the `N` of `--refill`): a whole number within §3's bounds.
fn amount(text: &str, field: &'static str) -> Result<u64> {
    let n: u64 = text
        .parse()
        .map_err(|_| Error::input(field, "must be a whole number"))?;
    check_credit_amount(n, field).map_err(flag(field))?;
    Ok(n)
}

/// `daily:N` or `monthly:N`.
fn refill(text: &str) -> Result<Refill> {
    Refill::parse_spec(text).map_err(flag("refill"))
}

fn ratelimits(specs: &[String]) -> Result<Vec<RateLimit>> {
    specs
        .iter()
        .map(|s| RateLimit::parse_spec(s).map_err(|e| Error::input(e.field, e.message)))
        .collect()
}

/// The networks of `--ip`; the message names the value that is not one.
fn allowlist(items: &[String]) -> Result<Vec<IpNet>> {
    parse_allowlist(items).map_err(flag("ip"))
}

/// `--metadata K=V`, each value a string. The entry is named by its position, not echoed:
/// a value pasted in the wrong place may be a secret.
fn metadata(items: &[String]) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for (i, item) in items.iter().enumerate() {
        let (k, v) = item
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                Error::input(
                    "metadata",
                    format!("entry {} must look like KEY=VALUE", i + 1),
                )
            })?;
        if map
            .insert(k.to_owned(), Value::String(v.to_owned()))
            .is_some()
        {
            return Err(Error::input("metadata", format!("{k:?} is given twice")));
        }
    }
    Ok(map)
}

fn policy(every: HumanDuration, grace: HumanDuration) -> Result<RotationPolicy> {
    let p = RotationPolicy { every, grace };
    // The policy's only rule is on `every`.
    p.validate().map_err(flag("rotate-every"))?;
    Ok(p)
}

fn opt_duration(text: Option<&str>, field: &str) -> Result<Option<HumanDuration>> {
    text.map(|t| duration(t, field)).transpose()
}

/// The key `keys create` asks for.
pub(super) fn new_key(args: &KeysCreateArgs) -> Result<NewKey> {
    let mut new = NewKey::new(args.name.clone());
    if let Some(p) = &args.prefix {
        new = new.prefix(Prefix::new(p).map_err(|e| Error::input("prefix", e.message))?);
    }
    if let Some(o) = &args.owner {
        new = new.owner(o.clone());
    }
    if let Some(d) = &args.expires_in {
        new = new.expires_at(App::now() + duration(d, "expires-in")?.as_delta());
    }
    let balance = args
        .credits
        .as_deref()
        .map(|c| amount(c, "credits"))
        .transpose()?;
    let refill = args.refill.as_deref().map(refill).transpose()?;
    // A refill alone starts at its amount: the balance it would be set to anyway.
    if let Some(remaining) = balance.or(refill.map(|r| r.amount)) {
        new = new.credits(Credits { remaining, refill });
    }
    new.ratelimits = ratelimits(&args.rate_limits)?;
    new.scopes.clone_from(&args.scopes);
    new.ip_allowlist = allowlist(&args.ips)?;
    new.metadata = metadata(&args.metadata)?;
    if let Some(every) = opt_duration(args.rotate_every.as_deref(), "rotate-every")? {
        let grace = opt_duration(args.rotation_grace.as_deref(), "rotation-grace")?
            .unwrap_or(HumanDuration::new(DEFAULT_GRACE));
        new = new.rotation(policy(every, grace)?);
    }
    Ok(new)
}

/// What `keys update`'s flags ask for. The fields that need the key as it stands (credits
/// and refill, which the patch can only set whole; one half of a rotation policy) wait
/// beside the patch for [`Update::complete`].
#[derive(Debug)]
pub(super) struct Update {
    patch: KeyPatch,
    balance: Option<u64>,
    refill: Option<Refill>,
    every: Option<HumanDuration>,
    grace: Option<HumanDuration>,
}

impl Update {
    /// Parses the flags, reading nothing.
    pub(super) fn parse(a: &KeysUpdateArgs) -> Result<Self> {
        let cleared = |clear: bool, given: Vec<String>| {
            if clear {
                Some(Vec::new())
            } else if given.is_empty() {
                None
            } else {
                Some(given)
            }
        };
        let rate_limits = cleared(a.no_rate_limits, a.rate_limits.clone());
        let ips = cleared(a.no_ip, a.ips.clone());
        let meta = cleared(a.no_metadata, a.metadata.clone());
        let patch = KeyPatch {
            name: a.name.clone(),
            owner_id: match (&a.owner, a.no_owner) {
                (_, true) => Some(None),
                (o, false) => o.clone().map(Some),
            },
            expires_at: if a.no_expiry {
                Some(None)
            } else {
                opt_duration(a.expires_in.as_deref(), "expires-in")?
                    .map(|d| Some(App::now() + d.as_delta()))
            },
            credits: a.no_credits.then_some(None),
            ratelimits: rate_limits.as_deref().map(ratelimits).transpose()?,
            scopes: cleared(a.no_scopes, a.scopes.clone()),
            ip_allowlist: ips.as_deref().map(allowlist).transpose()?,
            metadata: meta.as_deref().map(metadata).transpose()?,
            rotation: a.no_rotation.then_some(None),
            ..KeyPatch::default()
        };
        let update = Self {
            patch,
            balance: a
                .credits
                .as_deref()
                .map(|c| amount(c, "credits"))
                .transpose()?,
            refill: a.refill.as_deref().map(refill).transpose()?,
            every: opt_duration(a.rotate_every.as_deref(), "rotate-every")?,
            grace: opt_duration(a.rotation_grace.as_deref(), "rotation-grace")?,
        };
        if update.patch.fields().is_empty() && !update.needs_record() {
            return Err(Error::input(
                "keys update",
                "nothing to change: give at least one flag (see keyvault keys update --help)",
            ));
        }
        Ok(update)
    }

    /// Whether [`Update::complete`] needs the key as it stands.
    pub(super) fn needs_record(&self) -> bool {
        self.balance.is_some()
            || self.refill.is_some()
            || self.every.is_some()
            || self.grace.is_some()
    }

    /// The patch, completed from `old` (the key as it stands) and `live` (its balance now).
    ///
    /// `KeyPatch` can set the credits only whole (balance and refill together), so a
    /// `--refill` alone writes back the live balance read just before; a spend in between
    /// is given back. Should keyvault-core learn to change a refill alone, this read goes.
    pub(super) fn complete(self, old: &KeyRecord, live: Option<u64>) -> Result<KeyPatch> {
        let mut patch = self.patch;
        let current = old.credits;
        if self.balance.is_some() || self.refill.is_some() {
            let refill = self.refill.or(current.and_then(|c| c.refill));
            let remaining = match (self.balance, current, self.refill) {
                (Some(n), _, _) => n,
                (None, Some(c), _) => live.unwrap_or(c.remaining),
                // Unlimited until now: the balance starts where the refill would set it.
                (None, None, r) => r.map_or(0, |r| r.amount),
            };
            patch.credits = Some(Some(Credits { remaining, refill }));
        }
        if self.every.is_some() || self.grace.is_some() {
            let every = match (self.every, old.rotation) {
                (Some(e), _) => e,
                (None, Some(p)) => p.every,
                (None, None) => {
                    return Err(Error::input(
                        "rotation-grace",
                        "the key has no rotation policy: give --rotate-every too",
                    ));
                }
            };
            let grace = self
                .grace
                .or(old.rotation.map(|p| p.grace))
                .unwrap_or(HumanDuration::new(DEFAULT_GRACE));
            patch.rotation = Some(Some(policy(every, grace)?));
        }
        Ok(patch)
    }
}

/// `keys update`: the id, then the flags, are checked (a refusal audited) before the key
/// is read.
pub(super) async fn update(app: &App, args: &KeysUpdateArgs) -> Result<()> {
    let kv = &app.kv;
    let action = "key.update";
    let id = refuse(app, action, None, key_id(&args.id)).await?;
    let target = id.to_string();
    let up = refuse(app, action, Some(&target), Update::parse(args)).await?;
    let patch = if up.needs_record() {
        // An unknown id is refused and audited here, as `update_key` would.
        let old = refuse(
            app,
            action,
            Some(&target),
            kv.get_key(id).await.map_err(Error::from),
        )
        .await?;
        let live = kv.credits_remaining(&old).await?;
        refuse(app, action, Some(&target), up.complete(&old, live)).await?
    } else {
        up.patch
    };
    let fields = patch.fields().join(", ");
    let record = kv.update_key(id, patch, &cli_actor()).await?;
    let view = KeyView::load(kv, &record).await?;
    if args.json {
        stdout_line(&to_json(&view)?);
    } else {
        for line in key_lines(&view) {
            stdout_line(&line);
        }
    }
    stderr_line(&format!("Updated key {target} ({fields})."));
    Ok(())
}

/// A key for people: one `field: value` line each (`keys update` without `--json`).
pub(super) fn key_lines(v: &KeyView) -> Vec<String> {
    let or = |items: &[String], none: &str| {
        if items.is_empty() {
            none.to_owned()
        } else {
            items.join(", ")
        }
    };
    let time = |t: Option<chrono::DateTime<chrono::Utc>>, none: &str| {
        t.map_or_else(|| none.to_owned(), |t| t.to_rfc3339())
    };
    let credits = v.credits.as_ref().map_or_else(
        || "unlimited".to_owned(),
        |c| match c.refill {
            Some(r) => format!("{} (refill {r})", c.remaining),
            None => c.remaining.to_string(),
        },
    );
    let limits: Vec<String> = v
        .ratelimits
        .iter()
        .map(|l| {
            let period =
                HumanDuration::new(std::time::Duration::from_millis(l.period_ms())).to_string();
            if l.name() == period {
                format!("{}/{period}", l.limit())
            } else {
                format!("{}/{period} ({})", l.limit(), l.name())
            }
        })
        .collect();
    let metadata = if v.metadata.is_empty() {
        "none".to_owned()
    } else {
        Value::Object(v.metadata.clone()).to_string()
    };
    let rotation = v.rotation.map_or_else(
        || "none".to_owned(),
        |p| format!("every {}, grace {}", p.every, p.grace),
    );
    vec![
        format!("id:          {}", v.id),
        format!("name:        {}", v.name),
        format!("start:       {}", v.start),
        format!("owner:       {}", v.owner_id.as_deref().unwrap_or("none")),
        format!("enabled:     {}", v.enabled),
        format!("expires:     {}", time(v.expires_at, "never")),
        format!("credits:     {credits}"),
        format!("rate limits: {}", or(&limits, "none")),
        format!("scopes:      {}", or(&v.scopes, "none")),
        format!("ip:          {}", or(&v.ip_allowlist, "any")),
        format!("metadata:    {metadata}"),
        format!("rotation:    {rotation}"),
        format!("updated:     {}", v.updated_at.to_rfc3339()),
    ]
}

#[cfg(test)]
mod tests {
    use keyvault_core::RefillInterval;

    use super::*;

    #[test]
    fn refills_and_amounts_name_their_flag() {
        let r = refill("monthly:1000").unwrap();
        assert_eq!((r.interval, r.amount), (RefillInterval::Monthly, 1000));
        for bad in ["hourly:5", "daily", "daily:-1", "daily:9007199254740992"] {
            let e = refill(bad).unwrap_err();
            assert_eq!(e.field(), Some("refill"), "{bad}");
        }
        assert_eq!(amount("x", "credits").unwrap_err().field(), Some("credits"));
    }

    #[test]
    fn metadata_entries_are_strings_and_never_echoed() {
        let m = metadata(&["tier=gold".into(), "n=5".into(), "empty=".into()]).unwrap();
        assert_eq!(m["tier"], "gold");
        assert_eq!(m["n"], "5");
        assert_eq!(m["empty"], "");
        let e = metadata(&["a=1".into(), "kv_secretlooking".into()]).unwrap_err();
        assert_eq!(e.field(), Some("metadata"));
        assert!(!e.to_string().contains("secretlooking"), "{e}");
        assert!(metadata(&["=x".into()]).is_err());
        assert!(metadata(&["a=1".into(), "a=2".into()]).is_err());
    }
}
