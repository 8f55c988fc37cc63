//! The API's OpenAPI 3.1 document, generated from the handlers' own
//! `#[utoipa::path]` annotations and their request and response types, so
//! that it cannot drift from the code: the router is built from the same
//! annotated handlers (`utoipa_axum::routes!`), and a route without one
//! does not exist.
//!
//! What is here is what every operation shares: the document's head, the
//! error body, the security schemes and the tags.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's head; the paths come from the router.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Herald's HTTP API: events in, applications and their endpoints, \
                       attempts and dead letters."
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "events", description = "Events handed to Herald"),
        (name = "applications", description = "The platform's customers and their tokens"),
        (name = "endpoints", description = "An application's webhook endpoints"),
        (name = "attempts", description = "Delivery attempts"),
        (name = "dead letters", description = "Deliveries that could not be made, and their replay"),
        (name = "health", description = "Liveness and readiness")
    )
)]
pub struct ApiDoc;

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error's code, for programs, and its message, for people.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, e.g. `invalid_field`, `application_not_found`.
    pub code: String,
    /// What exactly is wrong, and how to put it right.
    pub message: String,
}

/// What a metadata map may hold, as `POST/PATCH /v1/applications` check
/// it: up to 32 pairs, keys of 1–64 bytes, values of at most 1024.
pub fn metadata_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        // `null` is taken as absent.
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some("Up to 32 string pairs of your own"))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(1024)),
        ))
        .max_properties(Some(32))
        .build()
}

/// What the annotations cannot say, written into the finished document
/// (the routes' schemas are only there once the router has collected
/// them): `POST /v1/dlq/replay` takes exactly one of its fields, and utoipa
/// writes the body's `maxProperties` but not its `minProperties`.
pub fn finish(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    if let Some(RefOr::T(Schema::Object(replay))) = document
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("ReplayRequest"))
    {
        replay.min_properties = Some(1);
    }
}

/// The keys that open the API.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key of scope `ingest` (events only) or `admin` (everything)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "application_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("hat_…")
                    .description(Some(
                        "An application token (`POST /v1/applications/{app}/tokens`): \
                         `portal` manages its application's endpoints, attempts and dead \
                         letters; `ingest` sends its application's events. Anything of \
                         another application answers 404.",
                    ))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    /// `openapi.json` at the repository's root is the document the code
    /// generates, so that every change to the API shows in review. Run with
    /// `HERALD_UPDATE_OPENAPI=1` to write it after changing the API.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
        let generated = crate::openapi_document()
            .to_pretty_json()
            .expect("the document is JSON")
            + "\n";
        if std::env::var_os("HERALD_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi.json differs from the document the code generates; \
             run `HERALD_UPDATE_OPENAPI=1 cargo test -p herald-ingest --lib openapi` \
             and commit the result"
        );
    }
}
