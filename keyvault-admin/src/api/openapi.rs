//! The OpenAPI 3.1 document (`/openapi.json`) and its browsable UI (`/docs`, served from
//! files compiled into the binary: no CDN).
//!
//! The request types of the API are keyvault-core's own (`NewKey`, `KeyPatch`), which know
//! nothing of OpenAPI; the schema-only types here describe them on the wire.
#![allow(dead_code)]

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(ToSchema)]
pub(crate) struct ProblemDoc {
    /// A URN naming the problem.
    r#type: String,
    title: String,
    status: u16,
    /// Stable, machine-readable: `invalid_json`, `invalid_field`, `missing_field`,
    /// `invalid_value`, `invalid_query`, `invalid_request`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `method_not_allowed`, `backend_unavailable`.
    code: String,
    detail: String,
    /// The bad field, for input errors (`ratelimits[0].limit`, `events[3].status`).
    field: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct Status {
    status: String,
}

#[derive(ToSchema)]
#[schema(as = Refill)]
pub(crate) struct RefillDoc {
    #[schema(pattern = "^(daily|monthly)$")]
    interval: String,
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    amount: u64,
}

#[derive(ToSchema)]
#[schema(as = Credits)]
pub(crate) struct CreditsDoc {
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    remaining: u64,
    refill: Option<RefillDoc>,
}

#[derive(ToSchema)]
#[schema(as = RateLimit)]
pub(crate) struct RateLimitDoc {
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    #[schema(minimum = 1, maximum = 1000000000)]
    limit: u32,
    #[schema(minimum = 1, maximum = 31536000000_i64)]
    period_ms: u64,
}

#[derive(ToSchema)]
#[schema(as = RotationPolicy)]
pub(crate) struct RotationDoc {
    /// A duration: `<n>ms|s|m|h|d`, at least 1m.
    #[schema(example = "30d", pattern = "^[0-9]{1,15}(ms|s|m|h|d)$")]
    every: String,
    /// A duration (default 24h).
    #[schema(example = "24h", pattern = "^[0-9]{1,15}(ms|s|m|h|d)$")]
    grace: Option<String>,
}

/// `POST /v1/keys` (unknown fields are refused).
#[derive(ToSchema)]
#[schema(as = NewKey)]
pub(crate) struct NewKeyDoc {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    /// `[a-z][a-z0-9_]{0,19}`, default `kv`; `kvt` is reserved.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,19}$")]
    prefix: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    owner_id: Option<String>,
    enabled: Option<bool>,
    /// Must be in the future.
    expires_at: Option<DateTime<Utc>>,
    credits: Option<CreditsDoc>,
    ratelimits: Option<Vec<RateLimitDoc>>,
    scopes: Option<Vec<String>>,
    /// CIDRs (v4 or v6) or addresses.
    ip_allowlist: Option<Vec<String>>,
    metadata: Option<BTreeMap<String, Value>>,
    rotation: Option<RotationDoc>,
}

/// `PATCH /v1/keys/{id}`: each field given replaces the stored one; `null` clears the
/// nullable ones (`expires_at`, `credits`, `rotation`).
#[derive(ToSchema)]
#[schema(as = KeyPatch)]
pub(crate) struct KeyPatchDoc {
    name: Option<String>,
    enabled: Option<bool>,
    expires_at: Option<DateTime<Utc>>,
    credits: Option<CreditsDoc>,
    ratelimits: Option<Vec<RateLimitDoc>>,
    scopes: Option<Vec<String>>,
    ip_allowlist: Option<Vec<String>>,
    metadata: Option<BTreeMap<String, Value>>,
    rotation: Option<RotationDoc>,
}

/// A key (never the key itself or its digest).
#[derive(ToSchema)]
#[schema(as = Key)]
pub(crate) struct KeyDoc {
    id: String,
    name: String,
    /// The prefix and the first four characters of the body (`kv_AbCd`).
    start: String,
    prefix: String,
    owner_id: Option<String>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    /// The live balance and the refill; null: unlimited.
    credits: Option<CreditsDoc>,
    ratelimits: Vec<RateLimitDoc>,
    scopes: Vec<String>,
    ip_allowlist: Vec<String>,
    metadata: BTreeMap<String, Value>,
    rotation: Option<RotationDoc>,
    next_rotation_at: Option<DateTime<Utc>>,
    rotated_from: Option<String>,
    superseded_by: Option<String>,
    grace_until: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

/// A key just created: the key's fields and, once, the key.
#[derive(ToSchema)]
#[schema(as = CreatedKey)]
pub(crate) struct CreatedKeyDoc {
    /// The key: shown here once, never again.
    key: String,
    id: String,
    name: String,
    start: String,
    prefix: String,
    owner_id: Option<String>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    credits: Option<CreditsDoc>,
    ratelimits: Vec<RateLimitDoc>,
    scopes: Vec<String>,
    ip_allowlist: Vec<String>,
    metadata: BTreeMap<String, Value>,
    rotation: Option<RotationDoc>,
    next_rotation_at: Option<DateTime<Utc>>,
    rotated_from: Option<String>,
    superseded_by: Option<String>,
    grace_until: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
#[schema(as = KeyPage)]
pub(crate) struct KeyPageDoc {
    items: Vec<KeyDoc>,
    /// Opaque; null on the last page.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = RotateRequest)]
pub(crate) struct RotateDoc {
    /// How long the old key keeps working (default 86400, at most a year).
    #[schema(minimum = 0, maximum = 31536000)]
    grace_seconds: Option<u64>,
}

#[derive(ToSchema)]
#[schema(as = RotatedKey)]
pub(crate) struct RotatedDoc {
    id: String,
    /// The new key: shown here once.
    key: String,
    start: String,
    name: String,
    old_id: String,
    old_key_expires_at: DateTime<Utc>,
}

#[derive(ToSchema)]
#[schema(as = BatchRequest)]
pub(crate) struct BatchDoc {
    #[schema(pattern = "^(enable|disable|delete)$")]
    action: String,
    #[schema(max_items = 1000)]
    ids: Vec<String>,
}

#[derive(ToSchema)]
#[schema(as = BatchItem)]
pub(crate) struct BatchItemDoc {
    id: Option<String>,
    ok: bool,
    /// The problem code when `ok` is false.
    error: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = BatchResult)]
pub(crate) struct BatchResultDoc {
    results: Vec<BatchItemDoc>,
}

#[derive(ToSchema)]
#[schema(as = VerifyRequest)]
pub(crate) struct VerifyDoc {
    /// The presented key; anything that does not parse answers NOT_FOUND.
    key: String,
    /// Credits to spend (default 1; 0 is a pure check).
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    cost: Option<u64>,
    scopes: Option<Vec<String>>,
    /// The caller's IP address, for keys with an allow-list.
    ip: Option<String>,
    provider: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = LimitState)]
pub(crate) struct LimitStateDoc {
    name: String,
    limit: u32,
    remaining: u64,
    reset_at: DateTime<Utc>,
    /// For an exhausted limit: milliseconds until the next token.
    retry_after_ms: Option<u64>,
}

#[derive(ToSchema)]
#[schema(as = Remaining)]
pub(crate) struct RemainingDoc {
    remaining: u64,
}

#[derive(ToSchema)]
#[schema(as = Verification)]
pub(crate) struct VerificationDoc {
    valid: bool,
    /// NOT_FOUND, DISABLED, EXPIRED, FORBIDDEN, INSUFFICIENT_PERMISSIONS, RATE_LIMITED,
    /// USAGE_EXCEEDED or VALID.
    code: String,
    key_id: Option<String>,
    owner_id: Option<String>,
    name: Option<String>,
    scopes: Option<Vec<String>>,
    expires_at: Option<DateTime<Utc>>,
    credits: Option<RemainingDoc>,
    ratelimits: Option<Vec<LimitStateDoc>>,
}

#[derive(ToSchema)]
#[schema(as = UsageEvent)]
pub(crate) struct UsageEventDoc {
    key_id: String,
    provider: String,
    #[schema(minimum = 100, maximum = 599)]
    status: u16,
    #[schema(minimum = 0, maximum = 86400000)]
    latency_ms: f64,
    ts: Option<DateTime<Utc>>,
    /// Counted once, however often it is reported.
    request_id: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = UsageBatch)]
pub(crate) struct UsageDoc {
    #[schema(max_items = 10000)]
    events: Vec<UsageEventDoc>,
}

#[derive(ToSchema)]
#[schema(as = Accepted)]
pub(crate) struct AcceptedDoc {
    accepted: u64,
}

#[derive(ToSchema)]
#[schema(as = NewToken)]
pub(crate) struct NewTokenDoc {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(pattern = "^(admin|operator|viewer|verifier)$")]
    role: String,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
#[schema(as = CreatedToken)]
pub(crate) struct CreatedTokenDoc {
    id: String,
    /// The token: shown here once.
    token: String,
    name: String,
    role: String,
    start: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(ToSchema)]
#[schema(as = Token)]
pub(crate) struct TokenDoc {
    id: String,
    name: String,
    role: String,
    start: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    created_by: String,
}

#[derive(ToSchema)]
#[schema(as = TokenPage)]
pub(crate) struct TokenPageDoc {
    items: Vec<TokenDoc>,
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[schema(as = Percentiles)]
pub(crate) struct PercentilesDoc {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
}

#[derive(ToSchema)]
#[schema(as = ProviderStats)]
pub(crate) struct ProviderDoc {
    provider: String,
    calls: u64,
    success_rate: Option<f64>,
}

#[derive(ToSchema)]
#[schema(as = TimePoint)]
pub(crate) struct TimePointDoc {
    ts: DateTime<Utc>,
    calls: u64,
    errors: u64,
}

#[derive(ToSchema)]
#[schema(as = StatsOverview)]
pub(crate) struct StatsDoc {
    calls: u64,
    /// A fraction in [0, 1]; null without calls.
    success_rate: Option<f64>,
    latency_ms: PercentilesDoc,
    by_provider: Vec<ProviderDoc>,
    timeseries: Vec<TimePointDoc>,
}

#[derive(ToSchema)]
#[schema(as = AuditRecord)]
pub(crate) struct AuditDoc {
    seq: u64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    target_id: Option<String>,
    source_ip: Option<String>,
    request_id: Option<String>,
    /// success or refused.
    outcome: String,
    details: Value,
    prev_hash: String,
    hash: String,
}

#[derive(ToSchema)]
#[schema(as = AuditPage)]
pub(crate) struct AuditPageDoc {
    items: Vec<AuditDoc>,
    next_cursor: Option<String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("kvt_… API token")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyvault",
        description = "API-key management: create, verify, limit, rotate and audit keys. \
            Authenticate with `Authorization: Bearer <API token>` (`keyvault token create`)."
    ),
    paths(
        super::healthz, super::readyz, super::metrics, super::signin::index,
        super::keys::create, super::keys::list, super::keys::get, super::keys::update,
        super::keys::delete, super::keys::rotate, super::keys::batch,
        super::verify::verify, super::verify::usage,
        super::tokens::create, super::tokens::list, super::tokens::revoke,
        super::reports::stats, super::reports::audit,
    ),
    components(schemas(ProblemDoc)),
    modifiers(&Security),
    tags(
        (name = "keys", description = "Key management"),
        (name = "verification", description = "For services that verify over HTTP"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "statistics"), (name = "audit"), (name = "operations"), (name = "dashboard"),
    )
)]
pub(crate) struct ApiDoc;
