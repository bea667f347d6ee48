//! The dashboard's static files (CONTRACT §6): everything under `keyvault-admin/static/`,
//! embedded in the binary and served under `/admin/assets/` by content-hashed names.
//!
//! A page links `path("vendor/bootstrap.min.css")`, which names the file with the first ten
//! hex digits of its SHA-256 (`assets/vendor/bootstrap.min.0123456789.css`). Because a name
//! changes whenever its content does, every answer may be cached for a year as `immutable`:
//! a browser fetches each version of each file once, and a new release is picked up at once
//! because its pages name new files. Unhashed names are not served, so nothing can be cached
//! under a name whose content later changes.
//!
//! Nothing is read from disk at run time and nothing is fetched at build time: the vendored
//! files are committed (`scripts/vendor-assets.sh` refreshes them) and `rust-embed` includes
//! every file under `static/` (in debug builds too: its `debug-embed` feature), so a file
//! added there is served without any change here. Hashes and gzip copies are computed once per
//! process, when the router is built.

use std::{borrow::Cow, collections::HashMap, fmt::Write as _, io::Write as _, sync::LazyLock};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::Path,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use flate2::{Compression, write::GzEncoder};
use rust_embed::RustEmbed;
use sha2::{Digest as _, Sha256};

use crate::error::Code;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Static;

/// Where assets sit, relative to `/admin/`.
const PREFIX: &str = "assets/";

/// What [`path`] answers for a name that does not exist: under the assets route, but no file
/// is ever served by that name (it carries no hash), so it answers 404.
const MISSING: &str = "assets/missing-asset";

/// How many hex digits of the SHA-256 name a version: 40 bits, so two versions of one file
/// colliding is not a practical concern.
const HASH_LEN: usize = 10;

const CACHE_FOREVER: &str = "public, max-age=31536000, immutable";

/// One embedded file, ready to serve.
#[derive(Debug)]
struct Asset {
    /// `assets/vendor/bootstrap.min.<hash>.css`: what pages link, relative to `/admin/`.
    url: String,
    /// `"<hash>"`.
    etag: HeaderValue,
    content_type: &'static str,
    plain: Bytes,
    /// Only for text types, and only when it is smaller.
    gzip: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Catalogue {
    assets: Vec<Asset>,
    /// Logical name (`vendor/bootstrap.min.css`) → index.
    by_logical: HashMap<String, usize>,
    /// Hashed name as it follows `/admin/assets/` → index.
    by_hashed: HashMap<String, usize>,
}

static CATALOGUE: LazyLock<Catalogue> = LazyLock::new(|| {
    let mut cat = Catalogue::default();
    for logical in Static::iter() {
        let Some(file) = Static::get(&logical) else {
            continue;
        };
        // With `debug-embed` the data is always borrowed from the binary; the owned arm only
        // keeps this correct if that ever changes.
        let plain = match file.data {
            Cow::Borrowed(b) => Bytes::from_static(b),
            Cow::Owned(v) => Bytes::from(v),
        };
        let hash = content_hash(&plain);
        let hashed = hashed_name(&logical, &hash);
        let gzip = is_text(&logical)
            .then(|| gzip(&plain))
            .filter(|g| g.len() < plain.len())
            .map(Bytes::from);
        let etag = HeaderValue::from_str(&format!("\"{hash}\"")).expect("hex is a valid header");
        let i = cat.assets.len();
        cat.assets.push(Asset {
            url: format!("{PREFIX}{hashed}"),
            etag,
            content_type: content_type(&logical),
            plain,
            gzip,
        });
        cat.by_hashed.insert(hashed, i);
        cat.by_logical.insert(logical.into_owned(), i);
    }
    cat
});

/// The URL of a static file, relative to `/admin/` (callers prepend the mount prefix and
/// `/admin/`): `path("vendor/bootstrap.min.css")` is
/// `"assets/vendor/bootstrap.min.<hash>.css"`.
///
/// `logical` is the file's path under `keyvault-admin/static/`. An unknown name is a bug in a
/// template: debug builds (and so every test that renders the page) panic; release builds log
/// it and answer a name that 404s rather than take the page down.
#[allow(
    dead_code,
    reason = "called by the dashboard's page templates, which are written alongside"
)]
pub(crate) fn path(logical: &str) -> &'static str {
    let cat: &'static Catalogue = &CATALOGUE;
    match cat.by_logical.get(logical) {
        Some(&i) => &cat.assets[i].url,
        None => {
            debug_assert!(
                false,
                "no static file `{logical}` under keyvault-admin/static/"
            );
            tracing::error!(
                asset = logical,
                "a page links a static file that does not exist"
            );
            MISSING
        }
    }
}

/// `GET` and `HEAD /admin/assets/{*file}`, for hashed names only. Merged into the admin
/// router, so a mount prefix applies to it as to every other route.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // Hashing and compressing ~0.5 MB takes a moment: done while the server starts, not on
    // the first page view.
    LazyLock::force(&CATALOGUE);
    Router::new().route("/admin/assets/{*file}", get(serve))
}

async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let cat: &'static Catalogue = &CATALOGUE;
    let Some(asset) = cat.by_hashed.get(&file).map(|&i| &cat.assets[i]) else {
        return Code::NotFound.problem("no such asset").into_response();
    };
    let mut res = if none_match(&headers, &asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let gzip = asset.gzip.as_ref().filter(|_| accepts_gzip(&headers));
        let mut res = match gzip {
            Some(g) => {
                let mut res = Response::new(Body::from(g.clone()));
                res.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                res
            }
            None => Response::new(Body::from(asset.plain.clone())),
        };
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        res.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        res
    };
    // A 304 carries the validators and cache policy a 200 would (RFC 9110 §15.4.5).
    let h = res.headers_mut();
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_FOREVER),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    res
}

/// The first [`HASH_LEN`] hex digits of the SHA-256 of `data`.
fn content_hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(HASH_LEN);
    for b in &digest[..HASH_LEN / 2] {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// `vendor/bootstrap.min.css` → `vendor/bootstrap.min.<hash>.css`; a name without an
/// extension (`LICENSE`) gets the hash as one.
fn hashed_name(logical: &str, hash: &str) -> String {
    let file_start = logical.rfind('/').map_or(0, |i| i + 1);
    match logical[file_start..].rfind('.').filter(|&i| i > 0) {
        Some(dot) => {
            let (stem, ext) = logical.split_at(file_start + dot);
            format!("{stem}.{hash}{ext}")
        }
        None => format!("{logical}.{hash}"),
    }
}

fn extension(logical: &str) -> &str {
    let file = logical.rsplit('/').next().unwrap_or(logical);
    match file.rfind('.') {
        Some(i) if i > 0 => &file[i + 1..],
        _ => "",
    }
}

fn content_type(logical: &str) -> &'static str {
    match extension(logical).to_ascii_lowercase().as_str() {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "md" => "text/markdown; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        _ => "application/octet-stream",
    }
}

/// Types worth compressing; images and fonts are compressed already.
fn is_text(logical: &str) -> bool {
    matches!(
        extension(logical).to_ascii_lowercase().as_str(),
        "css" | "js" | "mjs" | "svg" | "json" | "md" | "txt"
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // Best compression: it runs once per process, and every page view gains from it.
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 3), Compression::best());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .expect("gzip into memory cannot fail")
}

/// Whether `Accept-Encoding` (every instance of it) allows gzip: `gzip` or `x-gzip` with a
/// weight above 0, or else `*` with one. `gzip;q=0` refuses it even beside `*`. No header
/// means no preference (RFC 9110 §12.5.3) but the identity body is what every client reads,
/// so gzip is sent only when asked for. A malformed weight counts as 0: the plain body is
/// never wrong.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut star = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let mut q = 1.0_f32;
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_q(v.trim()).unwrap_or(0.0);
                }
            }
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.map_or(q, |g: f32| g.max(q)));
            } else if coding == "*" {
                star = Some(q);
            }
        }
    }
    gzip.or(star).is_some_and(|q| q > 0.0)
}

/// A weight as RFC 9110 §12.4.2 spells it: `0`, `1`, or either with up to three decimals
/// (`0.5`, `1.000`). Anything else (`.5`, `2`, `-1`, `1e0`) is refused.
fn parse_q(v: &str) -> Option<f32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits_ok = frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit());
    let ok = match int {
        "0" => digits_ok,
        "1" => digits_ok && frac.bytes().all(|b| b == b'0'),
        _ => false,
    };
    ok.then(|| v.parse().ok()).flatten()
}

/// Whether `If-None-Match` names this asset's tag (or is `*`). The comparison is weak, as
/// RFC 9110 §13.1.2 asks: a `W/` prefix is ignored.
fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// The vendored files pages link, by logical name.
    const VENDORED: [&str; 3] = [
        "vendor/bootstrap.min.css",
        "vendor/bootstrap.bundle.min.js",
        "vendor/chart.umd.min.js",
    ];

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn every_vendored_file_is_embedded_with_its_licence_and_versions() {
        for name in VENDORED.iter().chain(&[
            "vendor/LICENSE-bootstrap.txt",
            "vendor/LICENSE-chartjs.md",
            "vendor/VERSIONS.md",
        ]) {
            let url = path(name);
            assert!(url.starts_with("assets/vendor/"), "{name} → {url}");
            let a = &CATALOGUE.assets[CATALOGUE.by_logical[*name]];
            assert!(a.plain.len() > 500, "{name} is {} bytes", a.plain.len());
        }
        for name in VENDORED {
            let body = &CATALOGUE.assets[CATALOGUE.by_logical[name]].plain;
            let text = std::str::from_utf8(body).unwrap();
            assert!(
                !text.contains("sourceMappingURL"),
                "{name} names a missing map"
            );
        }
    }

    #[test]
    fn the_hash_is_the_start_of_the_sha256_and_lands_before_the_extension() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(content_hash(b"abc"), "ba7816bf8f");
        assert_eq!(content_hash(b"abc"), content_hash(b"abc"));
        assert_ne!(content_hash(b"abc"), content_hash(b"abd"));
        assert_eq!(
            hashed_name("vendor/bootstrap.min.css", "h"),
            "vendor/bootstrap.min.h.css"
        );
        assert_eq!(hashed_name("js/app.js", "h"), "js/app.h.js");
        assert_eq!(hashed_name("vendor/LICENSE", "h"), "vendor/LICENSE.h");
        assert_eq!(hashed_name("a.b/LICENSE", "h"), "a.b/LICENSE.h");
        assert_eq!(hashed_name(".hidden", "h"), ".hidden.h");
    }

    #[test]
    fn path_names_the_content_hash_of_the_embedded_file() {
        let a = &CATALOGUE.assets[CATALOGUE.by_logical["vendor/bootstrap.min.css"]];
        let hash = content_hash(&a.plain);
        assert_eq!(
            path("vendor/bootstrap.min.css"),
            format!("assets/vendor/bootstrap.min.{hash}.css")
        );
        assert_eq!(a.etag, format!("\"{hash}\"").as_str());
        // The hashed name is what the route looks up; the logical one is not.
        assert!(
            CATALOGUE
                .by_hashed
                .contains_key(&format!("vendor/bootstrap.min.{hash}.css"))
        );
        assert!(!CATALOGUE.by_hashed.contains_key("vendor/bootstrap.min.css"));
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "no static file"))]
    fn an_unknown_name_is_loud_in_debug_and_a_404_in_release() {
        assert_eq!(path("vendor/nope.css"), MISSING);
        assert!(!CATALOGUE.by_hashed.contains_key(&MISSING[PREFIX.len()..]));
    }

    #[test]
    fn gzip_copies_round_trip_and_exist_for_text_only() {
        let mut compressed = 0;
        for (logical, &i) in &CATALOGUE.by_logical {
            let a = &CATALOGUE.assets[i];
            match &a.gzip {
                Some(g) => {
                    assert!(is_text(logical), "{logical}");
                    assert_eq!(gunzip(g), a.plain, "{logical}");
                    compressed += 1;
                }
                None => assert!(!is_text(logical) || a.plain.len() < 200, "{logical}"),
            }
        }
        assert!(compressed >= VENDORED.len());
        assert_eq!(gunzip(&gzip(b"")), b"");
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type("vendor/bootstrap.min.css"),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type("js/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("img/logo.SVG"), "image/svg+xml");
        assert_eq!(
            content_type("vendor/VERSIONS.md"),
            "text/markdown; charset=utf-8"
        );
        assert_eq!(content_type("vendor/LICENSE"), "application/octet-stream");
        assert!(is_text("a.json") && !is_text("a.png") && !is_text("LICENSE"));
    }

    #[test]
    fn accept_encoding() {
        let ae = |v: &str| accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, v)]));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(ae("gzip"));
        assert!(ae("GZip"));
        assert!(ae("x-gzip"));
        assert!(ae("gzip, deflate, br, zstd"));
        assert!(ae("br;q=1.0, gzip;q=0.8, *;q=0.1"));
        assert!(ae("*"));
        assert!(ae("gzip ; q=0.001"));
        assert!(!ae("identity"));
        assert!(!ae("br, deflate"));
        assert!(!ae("gzip;q=0"));
        assert!(!ae("gzip;q=0.000"));
        assert!(!ae("gzip;q=0, *"));
        assert!(!ae("*, gzip;q=0"));
        assert!(!ae("*;q=0"));
        assert!(!ae("br, *;q=0"));
        // Malformed weights do not enable it.
        assert!(!ae("gzip;q=abc"));
        assert!(!ae("gzip;q=2"));
        assert!(!ae("gzip;q=.5"));
        assert!(!ae("gzip;q=0.0001"));
        assert!(!ae("gzip;q=1.5"));
        // Every header instance counts.
        assert!(accepts_gzip(&headers(&[
            (header::ACCEPT_ENCODING, "br"),
            (header::ACCEPT_ENCODING, "gzip"),
        ])));
    }

    #[test]
    fn if_none_match() {
        let tag = HeaderValue::from_static("\"0123456789\"");
        let inm = |v: &str| none_match(&headers(&[(header::IF_NONE_MATCH, v)]), &tag);
        assert!(!none_match(&HeaderMap::new(), &tag));
        assert!(inm("\"0123456789\""));
        assert!(inm("W/\"0123456789\""));
        assert!(inm("\"other\", \"0123456789\""));
        assert!(inm("*"));
        assert!(!inm("\"other\""));
        assert!(!inm("0123456789"));
    }
}
