//! Where the router is mounted. A host may nest it under a prefix (`Router::nest("/kv", …)`);
//! every redirect, cookie path, form action and link the server makes must then carry that
//! prefix. axum keeps the path the client asked for in `OriginalUri` and gives the nested
//! router the rest, so the prefix is what the one has in front of the other.

use std::convert::Infallible;

use axum::{
    extract::{FromRequestParts, OriginalUri},
    http::request::Parts,
};

/// The path prefix the router answers under: `""` at the root, else `/kv`-like (no
/// trailing slash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mount(String);

impl Mount {
    /// `path` (absolute, from the router's root) as the client must ask for it.
    pub(crate) fn path(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    fn of(parts: &Parts) -> Self {
        let Some(OriginalUri(original)) = parts.extensions.get::<OriginalUri>() else {
            return Self::default();
        };
        let (full, inner) = (original.path(), parts.uri.path());
        let prefix = match full.strip_suffix(inner) {
            Some(p) => p,
            // `/kv` itself reaches the nested router as `/`.
            None if inner == "/" => full,
            None => "",
        };
        let prefix = prefix.trim_end_matches('/');
        // The prefix lands in `Location` and `Set-Cookie`: anything beyond plain path
        // characters (a `;` from a host's wildcard segment) could add cookie attributes.
        let plain = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~%".contains(&b));
        if plain {
            Self(prefix.to_owned())
        } else {
            Self::default()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Mount {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Request, Uri};

    fn mount(original: &str, inner: &str) -> String {
        let (mut parts, ()) = Request::builder().uri(inner).body(()).unwrap().into_parts();
        parts
            .extensions
            .insert(OriginalUri(original.parse::<Uri>().unwrap()));
        Mount::of(&parts).path("")
    }

    #[test]
    fn the_prefix_is_what_the_host_matched() {
        assert_eq!(mount("/admin", "/admin"), "");
        assert_eq!(mount("/kv/admin", "/admin"), "/kv");
        assert_eq!(mount("/a/b/v1/keys?x=1", "/v1/keys?x=1"), "/a/b");
        assert_eq!(mount("/kv", "/"), "/kv");
        assert_eq!(mount("/kv/", "/"), "/kv");
        assert_eq!(mount("/a;Domain=x/admin", "/admin"), "");
        let (parts, ()) = Request::builder()
            .uri("/admin")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(Mount::of(&parts), Mount::default());
    }
}
