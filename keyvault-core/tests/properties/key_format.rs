//! CONTRACT §1: `<prefix>_<body><checksum>`, accepted exactly when its shape and CRC32 hold.

use keyvault_core::{ApiKey, Prefix, parse_key};
use proptest::prelude::*;

use crate::model::{BASE62, reference_checksum};

/// The contract's description of a well-formed key, checked character by character: split
/// at the last `_`; the prefix is `[a-z][a-z0-9_]{0,19}`; after the `_` come exactly 40 + 6
/// characters of the base62 alphabet, and the last 6 are the checksum of everything before.
/// Returns `(prefix, body)` for an accepted key.
fn reference_parse(text: &str) -> Option<(&str, &str)> {
    let sep = text.rfind('_')?;
    let (prefix, rest) = (&text[..sep], &text[sep + 1..]);
    let mut chars = prefix.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || prefix.chars().count() > 20 {
        return None;
    }
    if rest.chars().count() != 46 || !rest.chars().all(|c| BASE62.contains(c)) {
        return None;
    }
    // All base62 from here on: byte offsets are character offsets.
    let (body, checksum) = rest.split_at(40);
    let signed = &text[..sep + 1 + 40];
    (reference_checksum(signed) == checksum).then_some((prefix, body))
}

/// A key made by hand from the contract: prefix, `_`, 40 base62 characters, checksum.
fn constructed_key() -> impl Strategy<Value = String> {
    ("[a-z][a-z0-9_]{0,19}", "[0-9A-Za-z]{40}").prop_map(|(prefix, body)| {
        let signed = format!("{prefix}_{body}");
        let sum = reference_checksum(&signed);
        format!("{signed}{sum}")
    })
}

/// Texts near the key shape: a plausible prefix, an `_`, about 46 alphanumerics (a random
/// checksum, so almost always wrong), with now and then a stray `_`, `-` or non-ASCII letter.
fn key_shaped() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_é-]{0,24}_[0-9A-Za-z_é-]{44,48}"
}

fn assert_agrees(text: &str) -> Result<(), TestCaseError> {
    let got = parse_key(text);
    let want = reference_parse(text);
    prop_assert_eq!(got.map(|p| (p.prefix, p.body)), want, "text {:?}", text);
    if let Some(p) = got {
        prop_assert_eq!(p.full, text);
        // The display start of CONTRACT §1: the prefix, `_`, four body characters.
        prop_assert_eq!(p.start(), format!("{}_{}", p.prefix, &p.body[..4]));
    }
    // Never panics, whatever the text: the redacted `Debug` parses too.
    let _ = format!("{:?}", ApiKey::from_presented(text));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any Unicode string: the parser never panics and agrees with the reference.
    #[test]
    fn any_string_is_parsed_as_the_contract_says(text in any::<String>()) {
        assert_agrees(&text)?;
    }

    /// Strings shaped almost like keys (where a parser's boundary mistakes live).
    #[test]
    fn key_shaped_strings_are_parsed_as_the_contract_says(text in key_shaped()) {
        assert_agrees(&text)?;
    }

    /// Keys built by hand from the contract's description are all accepted, prefix and body
    /// as built.
    #[test]
    fn keys_built_from_the_contract_are_accepted(key in constructed_key()) {
        let p = parse_key(&key);
        prop_assert!(p.is_some(), "refused {:?}", key);
        assert_agrees(&key)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The library's generator makes keys of the contract's shape for any valid prefix
    /// (`kvt` included: API tokens share the format).
    #[test]
    fn generated_keys_match_the_contract(prefix in "[a-z][a-z0-9_]{0,19}") {
        let key = ApiKey::generate(&Prefix::any(&prefix).unwrap());
        let text = key.expose();
        prop_assert_eq!(text.len(), prefix.len() + 1 + 46);
        prop_assert_eq!(reference_parse(text).map(|(p, _)| p), Some(prefix.as_str()));
        assert_agrees(text)?;
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the character at this index (modulo the length) with this one.
    Replace(usize, char),
    /// Delete the character at this index.
    Delete(usize),
    /// Insert a character before this index.
    Insert(usize, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Mostly characters a key may hold, so that the checksum is what has to refuse them.
    let ch = prop_oneof![
        4 => proptest::sample::select(BASE62.chars().collect::<Vec<_>>()),
        1 => proptest::sample::select(vec!['_', '-', ' ', '.', 'é', '\0', '\u{1F511}']),
        1 => any::<char>(),
    ];
    prop_oneof![
        3 => (any::<usize>(), ch.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        1 => any::<usize>().prop_map(Mutation::Delete),
        1 => (any::<usize>(), ch).prop_map(|(i, c)| Mutation::Insert(i, c)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Every single-character change to a valid key (library-made or built by hand) is
    /// judged as the reference judges it; a substitution is always refused (CRC32 detects
    /// every error within 32 bits, and base62 of a CRC is one-to-one).
    #[test]
    fn single_character_mutations_are_refused(
        key in prop_oneof![
            constructed_key(),
            "[a-z][a-z0-9_]{0,19}".prop_map(|p| {
                ApiKey::generate(&Prefix::any(&p).unwrap()).expose().to_owned()
            }),
        ],
        m in mutation(),
    ) {
        let mut chars: Vec<char> = key.chars().collect();
        let substitution = match m {
            Mutation::Replace(i, c) => {
                let i = i % chars.len();
                if chars[i] == c {
                    return Ok(());
                }
                chars[i] = c;
                true
            }
            Mutation::Delete(i) => {
                chars.remove(i % chars.len());
                false
            }
            Mutation::Insert(i, c) => {
                chars.insert(i % (chars.len() + 1), c);
                false
            }
        };
        let text: String = chars.into_iter().collect();
        assert_agrees(&text)?;
        if substitution {
            prop_assert!(parse_key(&text).is_none(), "accepted {:?} (from {:?})", text, key);
        }
    }
}
