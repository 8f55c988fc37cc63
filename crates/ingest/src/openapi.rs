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
/// it: up to 32 pairs, keys of 1–64 characters, values of at most 1024.
pub fn metadata_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        // `null` is taken as absent.
        .schema_type(types(Type::Object, true))
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

/// `url` of `POST …/endpoints`: the grammar Herald enforces
/// ([`herald_core::endpoint::URL_PATTERN`]).
pub fn endpoint_url() -> utoipa::openapi::Object {
    endpoint_url_schema(false)
}

/// `url` of `PATCH …/endpoints/{id}` (`null` is taken as absent).
pub fn endpoint_url_or_null() -> utoipa::openapi::Object {
    endpoint_url_schema(true)
}

fn endpoint_url_schema(nullable: bool) -> utoipa::openapi::Object {
    use herald_core::endpoint::{MAX_URL_LEN, URL_PATTERN};
    use utoipa::openapi::schema::ObjectBuilder;
    ObjectBuilder::new()
        .schema_type(types(utoipa::openapi::schema::Type::String, nullable))
        .description(Some(
            "Where the webhooks go: `http` or `https`, at most 2048 characters of \
             RFC 3986 (others percent-encoded), an ASCII host name, IPv4 or [IPv6] \
             address, no fragment; its host allowed by the outbound address policy",
        ))
        .pattern(Some(URL_PATTERN))
        .max_length(Some(MAX_URL_LEN))
        .examples([serde_json::json!("https://hooks.example.com/orders")])
        .build()
}

/// `secret` of `POST …/endpoints`
/// ([`herald_core::signing::SECRET_PATTERN`]; `null` is taken as absent).
pub fn endpoint_secret() -> utoipa::openapi::Object {
    secret_schema("The signing secret (`whsec_` + base64 of 24–64 bytes); generated when absent.")
}

/// `secret` of `POST …/secret/rotate`.
pub fn rotated_secret() -> utoipa::openapi::Object {
    secret_schema("The new secret (`whsec_` + base64 of 24–64 bytes); generated when absent.")
}

fn secret_schema(description: &str) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(types(Type::String, true))
        .description(Some(description))
        .pattern(Some(herald_core::signing::SECRET_PATTERN))
        .build()
}

/// `event_types` of `POST …/endpoints`.
pub fn event_types() -> utoipa::openapi::schema::Array {
    event_types_schema(false)
}

/// `event_types` of `PATCH …/endpoints/{id}` (`null` is taken as absent).
pub fn event_types_or_null() -> utoipa::openapi::schema::Array {
    event_types_schema(true)
}

fn event_types_schema(nullable: bool) -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .schema_type(types(Type::Array, nullable))
        .description(Some(
            "What it subscribes to, 1–256 entries: exact types, `prefix.*` (every type \
             that starts with `prefix.`) or `*`",
        ))
        .items(ObjectBuilder::new().schema_type(Type::String).pattern(Some(
            "^([*]|[A-Za-z0-9._-]{1,128}|[A-Za-z0-9._-]{1,128}[.][*])$",
        )))
        .min_items(Some(1))
        .max_items(Some(256))
        .examples([serde_json::json!(["order.*"])])
        .build()
}

/// `headers` of an endpoint's body (`null` is taken as absent): header
/// names that are HTTP tokens and not Herald's own, values of printable
/// ASCII.
pub fn custom_headers() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    // Any of `names`, in any case, which a JSON Schema pattern can only
    // spell out.
    let any_of = |names: &[&str]| -> String {
        names
            .iter()
            .map(|name| {
                name.chars()
                    .map(|c| {
                        if c.is_ascii_alphabetic() {
                            format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                        } else {
                            c.to_string()
                        }
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    let reserved = any_of(crate::endpoints::RESERVED_HEADERS);
    let prefixes = any_of(crate::endpoints::RESERVED_HEADER_PREFIXES);
    ObjectBuilder::new()
        .schema_type(types(Type::Object, true))
        .description(Some(
            "Sent with every webhook: at most 32, names that are HTTP tokens and none \
             that Herald sets itself or that steer the connection, values of printable \
             ASCII up to 4096 characters",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!(
                    "^(?!({prefixes})|({reserved})$)[-!#$%&'*+.^_`|~0-9A-Za-z]+$"
                ))),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[\t -~]*$"))
                .max_length(Some(crate::endpoints::MAX_HEADER_VALUE_LEN)),
        ))
        .max_properties(Some(crate::endpoints::MAX_HEADERS))
        .examples([serde_json::json!({"X-Team": "billing"})])
        .build()
}

/// `ty`, or `ty` and `null`.
fn types(ty: utoipa::openapi::schema::Type, nullable: bool) -> utoipa::openapi::schema::SchemaType {
    use utoipa::openapi::schema::{SchemaType, Type};
    if nullable {
        SchemaType::from_iter([ty, Type::Null])
    } else {
        SchemaType::new(ty)
    }
}

/// What the annotations cannot say, written into the finished document
/// (the routes' schemas are only there once the router has collected
/// them):
/// - `POST /v1/dlq/replay` takes exactly one of its fields, and utoipa
///   writes the body's `maxProperties` but not its `minProperties`;
/// - the errors every `/v1` operation can answer whatever it does (no key,
///   a scope that does not allow it, a body too large or not JSON, Redis
///   away, a fault of Herald's own);
/// - the links from what a creation answers to the operations on what it
///   created, which clients and tools (Schemathesis's stateful phase)
///   follow.
pub fn finish(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{RefOr, Schema};
    if let Some(RefOr::T(Schema::Object(replay))) = document
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("ReplayRequest"))
    {
        replay.min_properties = Some(1);
    }
    for (path, item) in document.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for operation in operations(item) {
            add_shared_errors(operation);
        }
    }
    for (from, status, links) in links() {
        let operation = document
            .paths
            .paths
            .values_mut()
            .flat_map(operations)
            .find(|op| op.operation_id.as_deref() == Some(from))
            .unwrap_or_else(|| panic!("a link starts at {from}, which is no operation"));
        let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
            panic!("a link starts at {from} {status}, which it does not answer");
        };
        for (name, to, parameters) in links {
            // utoipa 5.5 writes `Link::operation_id` as `operation_id`,
            // where OpenAPI says `operationId`; the field goes in through
            // the link's extensions, which are written as they are.
            let mut link = utoipa::openapi::link::LinkBuilder::new().extensions(Some(
                utoipa::openapi::extensions::Extensions::from_iter([("operationId", to)]),
            ));
            for &(parameter, expression) in parameters {
                link = link.parameter(parameter, expression);
            }
            response.links.insert(name.to_owned(), link.build().into());
        }
    }
}

/// The operations of a path.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .flatten()
}

/// The errors every `/v1` operation answers whatever it does, unless it
/// documents them itself: 401, 403, 500 and 503, and for one that takes a
/// body, 413 and 415.
fn add_shared_errors(operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let takes_body = operation.request_body.is_some();
    let responses = &mut operation.responses.responses;
    let mut shared = vec![
        ("401", "`unauthorized`"),
        (
            "403",
            "`forbidden`: the key's or token's scope does not allow this operation",
        ),
        (
            "500",
            "`internal`: a fault of Herald's own, described in its log",
        ),
        ("503", "`redis_unavailable`: Redis is away; retry later"),
    ];
    if takes_body {
        shared.extend([
            ("413", "`body_too_large`"),
            ("415", "`unsupported_media_type`"),
        ]);
    }
    for (status, description) in shared {
        responses.entry(status.to_owned()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        });
    }
}

/// A link: its name, the operation it leads to, and that operation's
/// parameters as runtime expressions.
type Link = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Where what an operation answers leads: (operation, status, links).
fn links() -> [(&'static str, &'static str, Vec<Link>); 4] {
    const APP: (&str, &str) = ("app", "$response.body#/id");
    const ENDPOINT_APP: (&str, &str) = ("app", "$response.body#/application_id");
    const ENDPOINT: (&str, &str) = ("id", "$response.body#/id");
    [
        (
            "create_application",
            "201",
            vec![
                ("get", "get_application", &[APP]),
                ("update", "update_application", &[APP]),
                ("delete", "delete_application", &[APP]),
                ("list_endpoints", "list_endpoints", &[APP]),
                ("create_endpoint", "create_endpoint", &[APP]),
                ("issue_token", "issue_application_token", &[APP]),
                (
                    "list_dead_letters",
                    "list_dead_letters",
                    &[("application", "$response.body#/id")],
                ),
            ],
        ),
        (
            "create_endpoint",
            "201",
            vec![
                ("get", "get_endpoint", &[ENDPOINT_APP, ENDPOINT]),
                ("update", "update_endpoint", &[ENDPOINT_APP, ENDPOINT]),
                ("delete", "delete_endpoint", &[ENDPOINT_APP, ENDPOINT]),
                (
                    "attempts",
                    "list_endpoint_attempts",
                    &[ENDPOINT_APP, ENDPOINT],
                ),
                ("health", "get_endpoint_health", &[ENDPOINT_APP, ENDPOINT]),
                ("secret", "get_endpoint_secret", &[ENDPOINT_APP, ENDPOINT]),
                (
                    "rotate_secret",
                    "rotate_endpoint_secret",
                    &[ENDPOINT_APP, ENDPOINT],
                ),
                (
                    "list_dead_letters",
                    "list_dead_letters",
                    &[
                        ("application", "$response.body#/application_id"),
                        ("endpoint_id", "$response.body#/id"),
                    ],
                ),
            ],
        ),
        (
            "issue_application_token",
            "201",
            vec![(
                "revoke",
                "revoke_application_token",
                &[
                    ("app", "$response.body#/application_id"),
                    ("token", "$response.body#/id"),
                ],
            )],
        ),
        (
            "send_event",
            "202",
            vec![(
                "attempts",
                "list_event_attempts",
                &[
                    ("app", "$request.body#/application"),
                    ("id", "$response.body#/id"),
                ],
            )],
        ),
    ]
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
