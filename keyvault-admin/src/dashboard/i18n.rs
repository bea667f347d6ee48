//! The dashboard's languages and message catalogues (`locales/*.toml`, embedded). Every
//! interface string is looked up here; data is shown as it is.

use std::{collections::HashMap, fmt::Write as _, sync::LazyLock};

use axum::http::{HeaderMap, header};

/// A language of the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Lang {
    #[default]
    En,
    ZhCn,
}

/// The cookie that holds the visitor's choice.
pub(crate) const LANG_COOKIE: &str = "kv_lang";

impl Lang {
    pub(crate) const ALL: [Lang; 2] = [Lang::En, Lang::ZhCn];

    /// The BCP 47 tag, as `<html lang>` and the cookie carry it.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::ZhCn => "zh-CN",
        }
    }

    pub(crate) fn from_code(code: &str) -> Option<Lang> {
        Lang::ALL.into_iter().find(|l| l.code() == code)
    }

    /// The cookie's choice; without one, the first English or Chinese language of
    /// `Accept-Language` by weight (any `zh…` is Simplified Chinese); else English.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Lang {
        if let Some(l) = super::session::cookie(headers, LANG_COOKIE).and_then(Lang::from_code) {
            return l;
        }
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(from_accept_language)
            .unwrap_or_default()
    }

    fn catalogue(self) -> &'static HashMap<String, String> {
        &CATALOGUES[self as usize]
    }

    /// The message `key` in this language. A key missing from the catalogue (a test keeps
    /// both complete) shows in English, or as an ellipsis, rather than failing the page.
    pub(crate) fn t(self, key: &str) -> &'static str {
        match self.catalogue().get(key) {
            Some(s) => s.as_str(),
            None => {
                debug_assert!(false, "message {key:?} missing in {}", self.code());
                tracing::warn!(
                    key,
                    lang = self.code(),
                    "message missing from the catalogue"
                );
                Lang::En.catalogue().get(key).map_or("…", String::as_str)
            }
        }
    }

    /// The message `key`, when the catalogue has it (for keys made at run time).
    pub(crate) fn lookup(self, key: &str) -> Option<&'static str> {
        self.catalogue().get(key).map(String::as_str)
    }

    /// The message `key` with its `{name}` placeholders replaced.
    pub(crate) fn tf(self, key: &str, args: &[(&str, &str)]) -> String {
        let mut out = self.t(key).to_owned();
        for (name, value) in args {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    /// A whole number grouped by thousands, as both languages write it (`12,345`).
    pub(crate) fn num(self, n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// The catalogue the scripts need (the keys under `js.`), as a JSON object.
    pub(crate) fn script_messages(self) -> String {
        let mut keys: Vec<_> = self
            .catalogue()
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("js.").map(|k| (k, v)))
            .collect();
        keys.sort();
        let map: serde_json::Map<_, _> = keys
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        // Inside a `<script>` data block, `<` must not open `</script>`.
        serde_json::Value::Object(map)
            .to_string()
            .replace('<', "\\u003c")
    }
}

fn from_accept_language(value: &str) -> Option<Lang> {
    let mut tags: Vec<(f32, usize, &str)> = value
        .split(',')
        .enumerate()
        .filter_map(|(i, part)| {
            let mut it = part.split(';');
            let tag = it.next()?.trim();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
            (q > 0.0 && !tag.is_empty()).then_some((q, i, tag))
        })
        .collect();
    // By weight, then in the order given.
    tags.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    tags.into_iter().find_map(|(_, _, tag)| {
        let primary = tag.split('-').next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::ZhCn),
            _ => None,
        }
    })
}

const SOURCES: [(&str, &str); 2] = [
    ("en", include_str!("../../locales/en.toml")),
    ("zh-CN", include_str!("../../locales/zh-CN.toml")),
];

static CATALOGUES: LazyLock<[HashMap<String, String>; 2]> =
    LazyLock::new(|| SOURCES.map(|(code, text)| parse(code, text)));

/// Flattens a catalogue's tables into dotted keys (`[nav] keys = …` → `nav.keys`).
fn parse(code: &str, text: &str) -> HashMap<String, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut HashMap<String, String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                let mut s = String::from(prefix);
                let _ = write!(s, ".{k}");
                s
            };
            match v {
                toml::Value::String(s) => {
                    out.insert(key, s.clone());
                }
                toml::Value::Table(t) => walk(&key, t, out),
                _ => tracing::warn!(key, "catalogue entries are strings or tables"),
            }
        }
    }
    let mut out = HashMap::new();
    match text.parse::<toml::Table>() {
        Ok(table) => walk("", &table, &mut out),
        // The catalogues are compiled in and checked by the tests below.
        Err(e) => tracing::error!(lang = code, error = %e, "message catalogue does not parse"),
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(lang: Lang) -> BTreeSet<&'static str> {
        lang.catalogue().keys().map(String::as_str).collect()
    }

    #[test]
    fn both_catalogues_parse_and_hold_the_same_messages() {
        for (code, text) in SOURCES {
            assert!(text.parse::<toml::Table>().is_ok(), "{code} does not parse");
        }
        let (en, zh) = (keys(Lang::En), keys(Lang::ZhCn));
        assert!(en.len() > 100, "{}", en.len());
        let missing_zh: Vec<_> = en.difference(&zh).collect();
        let missing_en: Vec<_> = zh.difference(&en).collect();
        assert!(missing_zh.is_empty(), "missing in zh-CN: {missing_zh:?}");
        assert!(missing_en.is_empty(), "missing in en: {missing_en:?}");
        for lang in Lang::ALL {
            for (k, v) in lang.catalogue() {
                assert!(!v.trim().is_empty(), "{k} is empty in {}", lang.code());
            }
        }
    }

    /// Every message a template or handler asks for exists (`.t("…")`, `.tf("…"`,
    /// `msg: "…"`).
    #[test]
    fn every_message_used_is_in_the_catalogue() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["templates", "src/dashboard"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        let en = keys(Lang::En);
        let mut used = 0;
        for f in files {
            if f.ends_with("i18n.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            for pat in [".t(\"", ".tf(\"", "msg: \""] {
                for (i, _) in text.match_indices(pat) {
                    let rest = &text[i + pat.len()..];
                    let key = &rest[..rest.find('"').unwrap()];
                    if key.is_empty() || key.contains('{') || key.contains(' ') {
                        continue;
                    }
                    used += 1;
                    assert!(
                        en.contains(key),
                        "{} uses {key:?}, not in the catalogue",
                        f.display()
                    );
                }
            }
        }
        assert!(used > 50, "{used}");
    }

    #[test]
    fn accept_language_picks_the_first_english_or_chinese_by_weight() {
        let cases = [
            ("zh-TW,zh;q=0.9", Some(Lang::ZhCn)),
            ("fr-FR, en;q=0.5, zh;q=0.8", Some(Lang::ZhCn)),
            ("en-GB,zh-CN;q=0.9", Some(Lang::En)),
            ("de, fr", None),
            ("zh;q=0, en;q=0.1", Some(Lang::En)),
            ("", None),
            (";;;,q=", None),
        ];
        for (header, want) in cases {
            assert_eq!(from_accept_language(header), want, "{header}");
        }
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(Lang::En.num(0), "0");
        assert_eq!(Lang::En.num(999), "999");
        assert_eq!(Lang::ZhCn.num(1_234_567), "1,234,567");
    }
}
