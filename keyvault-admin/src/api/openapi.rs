//! The OpenAPI 3.1 document (`/openapi.json`). Request and response schemas are derived
//! from the types the handlers read and write (`wire`, `views` and each endpoint's module);
//! only the problem document (keyvault-axum's) and keyvault-core's statistics and audit
//! records, which cannot derive a schema, are described by schema-only types.

use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)]
pub(crate) struct ProblemDoc {
    /// A URN naming the problem.
    r#type: String,
    title: String,
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// Stable, machine-readable: `invalid_json`, `invalid_field`, `missing_field`,
    /// `invalid_value`, `invalid_query`, `invalid_request`, `invalid_body`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `successor_claimed`, `payload_too_large`,
    /// `method_not_allowed`, `backend_unavailable`, `overloaded`, `request_timeout`,
    /// `response_timeout`, `internal`.
    code: String,
    #[schema(required = false)]
    detail: String,
    /// The bad field, for input errors (`ratelimits[0].limit`, `events[3].status`).
    #[schema(required = false)]
    field: String,
}

/// `{"status": "ok"}` or `{"status": "ready"}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Status {
    status: String,
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
        components.add_security_scheme(
            "old_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("the old key of an automatic rotation")
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
        super::healthz, super::readyz, super::metrics,
        super::keys::create, super::keys::list, super::keys::get, super::keys::update,
        super::keys::delete, super::keys::rotate, super::keys::batch,
        super::successor::claim, super::successor::end_grace,
        super::verify::verify, super::verify::usage,
        super::tokens::create, super::tokens::list, super::tokens::revoke,
        super::reports::stats, super::reports::audit, super::reports::logs,
        super::live::live, super::live::stream,
        super::alerts::create_rule, super::alerts::list_rules, super::alerts::get_rule,
        super::alerts::update_rule, super::alerts::delete_rule, super::alerts::list_alerts,
        super::alerts::acknowledge,
        super::notifiers::create, super::notifiers::list, super::notifiers::delete,
        super::notifiers::test,
    ),
    components(schemas(ProblemDoc)),
    modifiers(&Security),
    tags(
        (name = "keys", description = "Key management"),
        (name = "verification", description = "For services that verify over HTTP"),
        (name = "tokens", description = "API tokens (admin)"),
        (name = "statistics"), (name = "audit"),
        (name = "alerts", description = "Alert rules, the alerts they raise, and the channels notified"),
        (name = "operations"),
    )
)]
pub(crate) struct ApiDoc;
