//! The key format (CONTRACT §1): `<prefix>_<body><checksum>`.
//!
//! Parsing is pure and allocation-free: anything that does not have the shape or whose CRC32
//! checksum is wrong is rejected here, before any store is touched.

use std::fmt;

use rand::{TryRng, rngs::SysRng};

use crate::error::InvalidInput;

/// Length of the random body.
pub const BODY_LEN: usize = 40;
/// Length of the base62 CRC32 checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 20;
/// The default prefix of keys.
pub const DEFAULT_PREFIX: &str = "kv";
/// The prefix reserved for the standalone server's API tokens.
pub const TOKEN_PREFIX: &str = "kvt";
/// The secret-scanning regex published in the README.
pub const SCANNING_REGEX: &str = r"\b[a-z][a-z0-9_]{0,19}_[0-9A-Za-z]{46}\b";

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A validated key prefix: `[a-z][a-z0-9_]{0,19}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Prefix(String);

impl Prefix {
    /// Validates a prefix for keys. `kvt` is refused: it is reserved for API tokens.
    pub fn new(prefix: &str) -> Result<Self, InvalidInput> {
        let p = Self::any(prefix)?;
        if p.0 == TOKEN_PREFIX {
            return Err(InvalidInput::new(
                "prefix",
                "\"kvt\" is reserved for API tokens",
            ));
        }
        Ok(p)
    }

    /// Validates a prefix without refusing the reserved token prefix (for API tokens).
    pub fn any(prefix: &str) -> Result<Self, InvalidInput> {
        if is_valid_prefix(prefix.as_bytes()) {
            Ok(Self(prefix.to_owned()))
        } else {
            Err(InvalidInput::new(
                "prefix",
                "must match [a-z][a-z0-9_]{0,19}",
            ))
        }
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Prefix::any(&s).map_err(serde::de::Error::custom)
    }
}

/// Character classes, one table lookup per byte: every key is parsed on the request path.
const BODY_CHAR: u8 = 1;
const PREFIX_CHAR: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() {
            t[c] |= BODY_CHAR;
        }
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' {
            t[c] |= PREFIX_CHAR;
        }
        c += 1;
    }
    t
};

fn all_of_class(bytes: &[u8], class: u8) -> bool {
    // `fold` rather than `all`: no early exit, so the loop has no branch per byte (a key
    // that fails is rare, and short).
    bytes
        .iter()
        .fold(class, |acc, &b| acc & CLASSES[usize::from(b)])
        == class
}

fn is_valid_prefix(p: &[u8]) -> bool {
    matches!(p.first(), Some(b'a'..=b'z'))
        && p.len() <= MAX_PREFIX_LEN
        && all_of_class(&p[1..], PREFIX_CHAR)
}

/// A plaintext key. Its `Debug` is redacted and it has neither `Display` nor `Serialize`:
/// the text is reached only through [`ApiKey::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Generates a key with the given prefix from the operating system's CSPRNG.
    pub fn generate(prefix: &Prefix) -> Self {
        let mut key = String::with_capacity(prefix.0.len() + 1 + BODY_LEN + CHECKSUM_LEN);
        key.push_str(&prefix.0);
        key.push('_');
        let mut pool = [0u8; 64];
        let mut body = 0;
        while body < BODY_LEN {
            // Without the OS's randomness no safe key can be made; nothing sensible remains
            // but to stop.
            #[allow(clippy::expect_used)]
            SysRng
                .try_fill_bytes(&mut pool)
                .expect("the operating system's CSPRNG is unavailable");
            // 62 does not divide 256: bytes ≥ 248 are rejected so every character is uniform.
            for &b in pool.iter().filter(|&&b| b < 248).take(BODY_LEN - body) {
                key.push(char::from(BASE62[usize::from(b % 62)]));
                body += 1;
            }
        }
        let checksum = base62_checksum(crc32fast::hash(key.as_bytes()));
        // The alphabet is ASCII, so this cannot fail.
        key.push_str(std::str::from_utf8(&checksum).unwrap_or_default());
        Self(key)
    }

    /// Wraps presented text without checking it; [`parse`] checks it.
    pub fn from_presented(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The plaintext. Show it to the key's owner once; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Parses the key (see [`parse`]).
    pub fn parse(&self) -> Option<ParsedKey<'_>> {
        parse(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match parse(&self.0) {
            Some(p) => write!(f, "ApiKey({}_****)", p.prefix),
            None => f.write_str("ApiKey(****)"),
        }
    }
}

/// A syntactically valid key with a correct checksum, borrowed from the presented text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The whole key.
    pub full: &'a str,
    /// The prefix (before the last `_`).
    pub prefix: &'a str,
    /// The 40-character random body.
    pub body: &'a str,
}

impl ParsedKey<'_> {
    /// The display start: the prefix, `_` and the first four characters of the body.
    pub fn start(&self) -> String {
        format!("{}_{}", self.prefix, &self.body[..4])
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}_****)", self.prefix)
    }
}

/// Parses `<prefix>_<body><checksum>`, splitting at the last `_`, and checks the checksum.
/// Returns `None` for anything that is not a well-formed key.
pub fn parse(key: &str) -> Option<ParsedKey<'_>> {
    let bytes = key.as_bytes();
    // The body and checksum are alphanumeric, so the last `_` (if the key is well formed)
    // sits just before them: found by position, not by a scan.
    let sep = bytes.len().checked_sub(BODY_LEN + CHECKSUM_LEN + 1)?;
    let (prefix, rest) = (&bytes[..sep], &bytes[sep + 1..]);
    if bytes[sep] != b'_' || !all_of_class(rest, BODY_CHAR) || !is_valid_prefix(prefix) {
        return None;
    }
    let (signed, checksum) = bytes.split_at(sep + 1 + BODY_LEN);
    if base62_checksum(crc32fast::hash(signed)) != checksum {
        return None;
    }
    // All ASCII: these slices fall on character boundaries.
    Some(ParsedKey {
        full: key,
        prefix: &key[..sep],
        body: &key[sep + 1..sep + 1 + BODY_LEN],
    })
}

/// CRC32 in base62, most significant digit first, left-padded with '0' to six characters.
fn base62_checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn checksum_matches_zlib_crc32_in_base62() {
        // Vectors computed independently with Python's zlib.crc32.
        for key in [
            "kv_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA3vFAOz",
            "my_app_01234567890123456789012345678901234567892xComn",
        ] {
            let p = parse(key).expect("vector parses");
            assert_eq!(p.full, key);
        }
        assert_eq!(base62_checksum(0), *b"000000");
        assert_eq!(base62_checksum(61), *b"00000z");
        assert_eq!(base62_checksum(62), *b"000010");
        assert_eq!(base62_checksum(u32::MAX), *b"4gfFC3");
    }

    #[test]
    fn generated_keys_have_the_contract_shape_and_parse() {
        let prefix = Prefix::new("my_app").unwrap();
        for _ in 0..100_000 {
            let key = ApiKey::generate(&prefix);
            let p = key.parse().expect("generated keys parse");
            assert_eq!(p.prefix, "my_app");
            assert_eq!(p.body.len(), BODY_LEN);
            assert_eq!(key.expose().len(), "my_app_".len() + 46);
        }
    }

    #[test]
    fn every_single_character_mutation_is_rejected() {
        let alphabet: Vec<u8> = (0u8..=127).filter(|c| c.is_ascii_graphic()).collect();
        let prefixes = ["kv", "a", "my_app", "x1_y2_z3"];
        let mut mutated = 0u64;
        for i in 0..10_000 {
            let prefix = Prefix::new(prefixes[i % prefixes.len()]).unwrap();
            let key = ApiKey::generate(&prefix);
            let original = key.expose().as_bytes();
            let mut buf = original.to_vec();
            for pos in 0..buf.len() {
                for &c in &alphabet {
                    if c == original[pos] {
                        continue;
                    }
                    buf[pos] = c;
                    let s = std::str::from_utf8(&buf).unwrap();
                    assert!(parse(s).is_none(), "mutation accepted: {s}");
                    mutated += 1;
                }
                buf[pos] = original[pos];
                // Deletion of the character at `pos`.
                let mut deleted = buf.clone();
                deleted.remove(pos);
                assert!(parse(std::str::from_utf8(&deleted).unwrap()).is_none());
            }
        }
        assert!(mutated > 10_000 * 40 * 90);
    }

    #[test]
    fn a_correct_checksum_does_not_make_a_bad_shape_valid() {
        // Each text carries the right checksum for what precedes it, so only the shape checks
        // can refuse it.
        let body = "A".repeat(BODY_LEN);
        let with_checksum = |signed: &str| {
            let sum = base62_checksum(crc32fast::hash(signed.as_bytes()));
            format!("{signed}{}", std::str::from_utf8(&sum).unwrap())
        };
        assert!(parse(&with_checksum(&format!("kv_{body}"))).is_some());
        for signed in [
            format!("kv_{}_{}", &body[..20], &body[21..]),
            format!("kv_{}-", &body[..39]),
            format!("kv_{}é", &body[..38]),
            format!("kv-{body}"),
            format!("Kv_{body}"),
            format!("_{body}"),
            format!("{}_{body}", "k".repeat(MAX_PREFIX_LEN + 1)),
            format!("kv__{}", &body[..39]),
            body.clone(),
        ] {
            let text = with_checksum(&signed);
            assert!(parse(&text).is_none(), "accepted: {text}");
        }
        // A prefix may itself contain `_`: the last one separates.
        let text = with_checksum(&format!("my_app_{body}"));
        let p = parse(&text).unwrap();
        assert_eq!((p.prefix, p.body), ("my_app", body.as_str()));
    }

    #[test]
    fn random_strings_are_rejected() {
        let mut rng = StdRng::seed_from_u64(0x6b76);
        let mut buf = String::new();
        for i in 0..1_000_000 {
            buf.clear();
            if i % 2 == 0 {
                // Key-shaped: a valid prefix, '_', 46 alphanumerics (a random checksum).
                buf.push(char::from(b'a' + rng.random_range(0..26u8)));
                buf.push('_');
                for _ in 0..46 {
                    buf.push(char::from(BASE62[rng.random_range(0..62usize)]));
                }
            } else {
                let len = rng.random_range(0..80usize);
                for _ in 0..len {
                    buf.push(char::from(rng.random_range(32..127u8)));
                }
            }
            assert!(parse(&buf).is_none(), "random string accepted: {buf}");
        }
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Prefix::new("kv").is_ok());
        assert!(Prefix::new("a_b_9").is_ok());
        assert!(Prefix::new("abcdefghijklmnopqrst").is_ok());
        for bad in [
            "",
            "Kv",
            "9kv",
            "_kv",
            "kv-x",
            "abcdefghijklmnopqrstu",
            "kvt",
            "é",
        ] {
            let err = Prefix::new(bad).unwrap_err();
            assert_eq!(err.field, "prefix", "{bad}");
        }
        assert!(Prefix::any("kvt").is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKey::generate(&Prefix::default());
        let shown = format!("{key:?} {:?}", key.parse().unwrap());
        assert!(!shown.contains(&key.expose()[3..]), "{shown}");
        assert!(shown.contains("kv_****"));
    }

    #[test]
    fn start_is_prefix_and_four_body_characters() {
        let key = ApiKey::generate(&Prefix::new("acme").unwrap());
        let p = key.parse().unwrap();
        assert_eq!(p.start(), key.expose()[..9]);
    }
}
