//! [`Pagination`]: the `limit` and `cursor` of every list endpoint, read one way, and the
//! `next_cursor` of the page it answers. Cursors are opaque to clients: a kind's prefix
//! (`k1.`) and the position of the last item seen.

use std::{fmt::Display, marker::PhantomData, str::FromStr};

use axum::{extract::FromRequestParts, http::request::Parts};
use keyvault_core::{KeyId, Page};
use uuid::Uuid;

use super::extract::QueryParams;
use crate::error::Error;

/// What a list endpoint lists: its cursor's prefix and the position it resumes after.
pub(crate) trait Listed {
    /// Names the cursor's kind and format version, so a cursor of one list is refused by
    /// another.
    const PREFIX: &'static str;
    /// The last item seen.
    type Position: FromStr + Display;
}

/// `GET /v1/keys`: newest first, after a key id.
#[derive(Debug)]
pub(crate) struct Keys;
impl Listed for Keys {
    const PREFIX: &'static str = "k1.";
    type Position = KeyId;
}

/// `GET /v1/tokens`: newest first, after a token id.
#[derive(Debug)]
pub(crate) struct Tokens;
impl Listed for Tokens {
    const PREFIX: &'static str = "t1.";
    type Position = Uuid;
}

/// `GET /v1/audit`: newest first, before a sequence number.
#[derive(Debug)]
pub(crate) struct Audit;
impl Listed for Audit {
    const PREFIX: &'static str = "a1.";
    type Position = u64;
}

/// `GET /v1/alerts`: newest first, after an alert id.
#[derive(Debug)]
pub(crate) struct Alerts;
impl Listed for Alerts {
    const PREFIX: &'static str = "al1.";
    type Position = Uuid;
}

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

/// A list request: `limit` (1–100, default 50), `cursor` (a previous `next_cursor`), and the
/// endpoint's other query parameters, for the handler to take and [`finish`](QueryParams::finish).
/// Take it as `Result<Pagination<_>, Error>` to answer a bad query after the role check.
#[derive(Debug)]
pub(crate) struct Pagination<L: Listed> {
    pub(crate) limit: usize,
    pub(crate) after: Option<L::Position>,
    pub(crate) query: QueryParams,
    listed: PhantomData<L>,
}

impl<L: Listed> Pagination<L> {
    /// The cursor of the page after `page`, whose items are at `position`; none on the last.
    pub(crate) fn next_cursor<T>(
        page: &Page<T>,
        position: impl Fn(&T) -> L::Position,
    ) -> Option<String> {
        let last = page.items.last().filter(|_| page.has_more)?;
        Some(format!("{}{}", L::PREFIX, position(last)))
    }
}

impl<L: Listed, S: Send + Sync> FromRequestParts<S> for Pagination<L> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut query = QueryParams::from_request_parts(parts, state).await?;
        let limit = query
            .parse(
                "limit",
                |v| v.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)),
                "a whole number from 1 to 100",
            )?
            .unwrap_or(DEFAULT_LIMIT);
        let after = query.parse(
            "cursor",
            |v| v.strip_prefix(L::PREFIX)?.parse().ok(),
            "a next_cursor from a previous page",
        )?;
        Ok(Self {
            limit,
            after,
            query,
            listed: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pagination<L: Listed>(uri: &str) -> Result<Pagination<L>, Error> {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        Pagination::<L>::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn limits_and_cursors_are_read_and_checked_once_for_every_list() {
        let p = pagination::<Audit>("/v1/audit").await.unwrap();
        assert_eq!((p.limit, p.after), (DEFAULT_LIMIT, None));
        let p = pagination::<Audit>("/v1/audit?limit=7&cursor=a1.42&actor=x")
            .await
            .unwrap();
        assert_eq!((p.limit, p.after), (7, Some(42)));
        let mut rest = p.query;
        assert_eq!(rest.take("actor").as_deref(), Some("x"));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=",
            "cursor=k1.42",
            "cursor=a1.x",
        ] {
            assert!(
                pagination::<Audit>(&format!("/v1/audit?{bad}"))
                    .await
                    .is_err(),
                "{bad}"
            );
        }
        let id = KeyId::new();
        let p = pagination::<Keys>(&format!("/v1/keys?cursor=k1.{id}"))
            .await
            .unwrap();
        assert_eq!(p.after, Some(id));
    }

    #[test]
    fn the_next_cursor_names_the_last_item_only_when_more_follow() {
        let more = Page {
            items: vec![5_u64, 4],
            has_more: true,
        };
        assert_eq!(
            Pagination::<Audit>::next_cursor(&more, |n| *n).as_deref(),
            Some("a1.4")
        );
        let last = Page {
            items: vec![3_u64],
            has_more: false,
        };
        assert_eq!(Pagination::<Audit>::next_cursor(&last, |n| *n), None);
    }
}
