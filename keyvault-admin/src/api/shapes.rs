//! Schemas the derive cannot spell from a field's type: strings the server parses (times,
//! addresses, networks, durations, ids) described by a `pattern` beside their `format`.
//!
//! JSON Schema 2020-12 treats `format` as an annotation, so a validator (and a fuzzer's idea
//! of "valid") would take `""` for a date-time; the pattern is what makes the document say
//! what the server accepts. Each pattern is a subset of what the server's parser takes (an
//! RFC 3339 time with `T` and `Z`, addresses as RFC 3986 writes them), so nothing the
//! document calls valid is refused for its shape.

use utoipa::openapi::{
    Array, ArrayBuilder, KnownFormat, Object, ObjectBuilder, SchemaFormat, Type, schema::SchemaType,
};

/// What Rust's `char::is_whitespace` (and so `str::trim`) calls white space, as a class body:
/// `\s` means other things to other regex engines (ECMA-262 has U+FEFF, not U+0085).
const WHITE_SPACE: &str = r"\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// `char::is_control`: the C0 and C1 controls and DEL.
const CONTROL: &str = r"\x00-\x1F\x7F-\x9F";

/// An RFC 3339 time with a real month, day, hour, minute and second (a day past its month's
/// end still matches: chrono refuses it with a 400).
const DATE_TIME: &str = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// A UUID in its hyphenated form (the server also reads other forms, never needs them).
const UUID: &str = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";

/// A key prefix, `[a-z][a-z0-9_]{0,19}` but not the `kvt` of API tokens (spelled without a
/// look-ahead, which not every generator of matching strings reads).
const PREFIX: &str = "^(k(v(t[a-z0-9_]{1,17}|[a-su-z0-9_][a-z0-9_]{0,17})?|[a-uw-z0-9_][a-z0-9_]{0,18})?|[a-jl-z][a-z0-9_]{0,19})$";

/// CONTRACT §3's durations, `<n>ms|s|m|h|d` with at most 15 digits.
pub(crate) const DURATION: &str = "^[0-9]{1,15}(ms|s|m|h|d)$";

const V4_OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

fn ipv4() -> String {
    format!(r"{o}\.{o}\.{o}\.{o}", o = V4_OCTET)
}

/// RFC 3986's `IPv6address`, which is what `std::net::Ipv6Addr` parses.
fn ipv6() -> String {
    let h = "[0-9A-Fa-f]{1,4}";
    let ls32 = format!("({h}:{h}|{})", ipv4());
    let alternatives = [
        format!("({h}:){{6}}{ls32}"),
        format!("::({h}:){{5}}{ls32}"),
        format!("({h})?::({h}:){{4}}{ls32}"),
        format!("(({h}:){{0,1}}{h})?::({h}:){{3}}{ls32}"),
        format!("(({h}:){{0,2}}{h})?::({h}:){{2}}{ls32}"),
        format!("(({h}:){{0,3}}{h})?::{h}:{ls32}"),
        format!("(({h}:){{0,4}}{h})?::{ls32}"),
        format!("(({h}:){{0,5}}{h})?::{h}"),
        format!("(({h}:){{0,6}}{h})?::"),
    ];
    format!("({})", alternatives.join("|"))
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(b: ObjectBuilder) -> ObjectBuilder {
    b.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

fn date_time_builder() -> ObjectBuilder {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .pattern(Some(DATE_TIME))
        .examples(["2030-01-01T00:00:00Z"])
}

/// An RFC 3339 time.
pub(crate) fn date_time() -> Object {
    date_time_builder().build()
}

/// An RFC 3339 time or `null`.
pub(crate) fn date_time_or_null() -> Object {
    nullable(date_time_builder()).build()
}

fn uuid_builder() -> ObjectBuilder {
    string()
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .pattern(Some(UUID))
}

/// A key's or a token's id.
pub(crate) fn uuid() -> Object {
    uuid_builder().build()
}

/// An id or `null`.
pub(crate) fn uuid_or_null() -> Object {
    nullable(uuid_builder()).build()
}

/// An IPv4 or IPv6 address (as `std::net::IpAddr` parses it) or `null`.
pub(crate) fn ip_or_null() -> Object {
    nullable(string())
        .description(Some("An IPv4 or IPv6 address"))
        .pattern(Some(format!("^({}|{})$", ipv4(), ipv6())))
        .examples(["203.0.113.7"])
        .build()
}

fn cidr() -> Object {
    let v4 = format!("{}(/(3[0-2]|[12]?[0-9]))?", ipv4());
    let v6 = format!("{}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?", ipv6());
    string()
        .description(Some(
            "A network (`10.0.0.0/8`, `2001:db8::/32`) or an address (taken as /32 or /128)",
        ))
        .pattern(Some(format!("^({v4}|{v6})$")))
        .build()
}

fn cidr_list() -> ArrayBuilder {
    ArrayBuilder::new().items(cidr()).max_items(Some(100))
}

/// An IP allow-list: networks or addresses, at most 100; empty means any.
pub(crate) fn allowlist() -> Array {
    cidr_list().build()
}

/// An allow-list, or `null` (in a PATCH: any address).
pub(crate) fn allowlist_or_null() -> Array {
    cidr_list()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .build()
}

fn scope() -> Object {
    string()
        .min_length(Some(1))
        .max_length(Some(128))
        .pattern(Some(format!("^[^{WHITE_SPACE}]+$")))
        .build()
}

fn scope_list() -> ArrayBuilder {
    ArrayBuilder::new().items(scope()).max_items(Some(100))
}

/// A key's scopes: at most 100, each 1–128 characters without white space.
pub(crate) fn scopes() -> Array {
    scope_list().build()
}

/// Scopes, or `null` (in a PATCH: none).
pub(crate) fn scopes_or_null() -> Array {
    scope_list()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .build()
}

/// A name of 1–200 characters that is not blank.
pub(crate) fn name() -> Object {
    string()
        .min_length(Some(1))
        .max_length(Some(200))
        .pattern(Some(format!("[^{WHITE_SPACE}]")))
        .build()
}

/// A rate limit's name: 1–64 characters without control characters.
pub(crate) fn limit_name() -> Object {
    string()
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some(format!("^[^{CONTROL}]+$")))
        .build()
}

/// A key prefix or `null` (the default, `kv`).
pub(crate) fn prefix_or_null() -> Object {
    nullable(string())
        .pattern(Some(PREFIX))
        .examples(["acme"])
        .build()
}

/// A duration (`90s`, `15m`, `24h`, `30d`).
pub(crate) fn duration() -> Object {
    string().pattern(Some(DURATION)).examples(["30d"]).build()
}

/// A duration or `null`.
pub(crate) fn duration_or_null() -> Object {
    nullable(string().pattern(Some(DURATION))).build()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    /// Whether `text` matches `pattern` as a JSON Schema validator reads it (the crate
    /// Schemathesis uses, from Python, is this one).
    fn matches(pattern: &str, text: &str) -> bool {
        let schema = serde_json::json!({ "pattern": pattern });
        jsonschema::validator_for(&schema)
            .expect("the pattern compiles")
            .is_valid(&serde_json::json!(text))
    }

    #[test]
    fn the_address_patterns_agree_with_the_parser() {
        let ip = format!("^({}|{})$", ipv4(), ipv6());
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.1.2.3",
            "::",
            "::1",
            "1::",
            "2001:db8::1",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "::ffff:192.0.2.1",
            "1:2:3:4:5:6:1.2.3.4",
            "FE80::ABCD",
        ] {
            assert!(text.parse::<IpAddr>().is_ok(), "{text}");
            assert!(matches(&ip, text), "{text} should match");
        }
        for text in [
            "",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            "1:2:3:4::5:6:7:8",
            "1.2.3.4::",
            "fe80::1%eth0",
            " 10.0.0.1",
            "12345::",
        ] {
            assert!(text.parse::<IpAddr>().is_err(), "{text}");
            assert!(!matches(&ip, text), "{text} should not match");
        }
    }

    #[test]
    fn white_space_is_what_trim_removes() {
        let blank = jsonschema::validator_for(&serde_json::json!({
            "pattern": format!("^[{WHITE_SPACE}]*$")
        }))
        .unwrap();
        for c in (0..=0x3100).chain([0xFEFF]).filter_map(char::from_u32) {
            assert_eq!(
                blank.is_valid(&serde_json::json!(c.to_string())),
                c.is_whitespace(),
                "U+{:04X}",
                c as u32
            );
        }
        let control = jsonschema::validator_for(&serde_json::json!({
            "pattern": format!("^[{CONTROL}]$")
        }))
        .unwrap();
        for c in (0..=0x3000).filter_map(char::from_u32) {
            assert_eq!(
                control.is_valid(&serde_json::json!(c.to_string())),
                c.is_control(),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn the_prefix_pattern_is_what_keys_may_use() {
        let mut texts: Vec<String> = ["kv", "k", "kvt", "kvtx", "kvx", "kx", "a", "z_9", "K", "9a"]
            .map(String::from)
            .into();
        texts.push("k".repeat(20));
        texts.push("k".repeat(21));
        texts.push(format!("kvt{}", "a".repeat(17)));
        texts.push(format!("kvt{}", "a".repeat(18)));
        for t in &texts {
            let ok = keyvault_core::Prefix::new(t).is_ok();
            assert_eq!(matches(PREFIX, t), ok, "{t}");
        }
    }

    #[test]
    fn date_times_in_the_pattern_parse() {
        for text in [
            "2030-01-01T00:00:00Z",
            "2030-12-31T23:59:59.123456789+05:30",
            "1999-02-28T12:00:00-23:59",
        ] {
            assert!(matches(DATE_TIME, text), "{text}");
            assert!(
                text.parse::<chrono::DateTime<chrono::Utc>>().is_ok(),
                "{text}"
            );
            assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "{text}");
        }
        for text in [
            "",
            "2030-01-01",
            "2030-13-01T00:00:00Z",
            "2030-01-01T24:00:00Z",
        ] {
            assert!(!matches(DATE_TIME, text), "{text}");
        }
    }
}
