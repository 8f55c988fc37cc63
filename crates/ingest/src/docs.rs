//! `GET /docs`: the API reference as one HTML page, rendered on the server
//! from the OpenAPI document ([`crate::openapi`]).
//!
//! Herald's own few lines rather than a bundled viewer: the viewers that
//! utoipa integrates (Scalar, Redoc) load their scripts from a CDN, and the
//! page must work on an installation with no internet. It needs no script
//! at all; every value from the document is HTML-escaped.

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

/// The page, rendered once, and its policy, which allows nothing but its
/// own stylesheet (by digest): no script, nothing from elsewhere, no
/// framing.
#[derive(Debug, Clone)]
pub struct Page {
    html: Bytes,
    policy: HeaderValue,
}

impl Page {
    /// The page for `document` (the OpenAPI document as JSON).
    pub fn new(document: &Value) -> Page {
        let digest = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE));
        Page {
            html: Bytes::from(render(document)),
            policy: HeaderValue::from_str(&format!(
                "default-src 'none'; style-src 'sha256-{digest}'; frame-ancestors 'none'"
            ))
            .expect("the policy is ASCII"),
        }
    }

    /// The page as an HTML answer.
    pub fn response(&self) -> Response {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CONTENT_SECURITY_POLICY, self.policy.clone()),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            self.html.clone(),
        )
            .into_response()
    }
}

/// The page for `document` (the OpenAPI document as JSON).
pub fn render(document: &Value) -> String {
    let mut page = String::new();
    let title = text(&document["info"]["title"]);
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} API</title><style>{STYLE}</style></head><body>\
         <h1>{title} API</h1><p>{}</p>\
         <p>The same as a machine-readable document: <a href=\"/openapi.json\">/openapi.json</a> \
         (OpenAPI {}).</p>",
        text(&document["info"]["description"]),
        text(&document["openapi"]),
    );
    page.push_str("<nav><ul>");
    for tag in document["tags"].as_array().into_iter().flatten() {
        let name = text(&tag["name"]);
        let _ = write!(
            page,
            "<li><a href=\"#tag-{}\">{name}</a></li>",
            anchor(&name)
        );
    }
    page.push_str("<li><a href=\"#schemas\">schemas</a></li></ul></nav>");
    for tag in document["tags"].as_array().into_iter().flatten() {
        let name = tag["name"].as_str().unwrap_or_default();
        let _ = write!(
            page,
            "<section><h2 id=\"tag-{}\">{}</h2><p>{}</p>",
            anchor(&escape(name)),
            escape(name),
            text(&tag["description"])
        );
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                let tagged = operation["tags"]
                    .as_array()
                    .is_some_and(|tags| tags.iter().any(|t| t == name));
                if tagged {
                    operation_html(&mut page, method, path, operation);
                }
            }
        }
        page.push_str("</section>");
    }
    page.push_str("<section><h2 id=\"schemas\">Schemas</h2>");
    for (name, schema) in document["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        schema_html(&mut page, name, schema);
    }
    page.push_str("</section></body></html>");
    page
}

fn operation_html(page: &mut String, method: &str, path: &str, operation: &Value) {
    let _ = write!(
        page,
        "<article><h3><code class=\"method\">{}</code> <code>{}</code></h3>\
         <p>{}</p><p>{}</p>",
        escape(&method.to_uppercase()),
        escape(path),
        text(&operation["summary"]),
        text(&operation["description"]),
    );
    let security: Vec<String> = operation["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_object())
        .map(|s| {
            if s.is_empty() {
                "none".to_owned()
            } else {
                s.keys().map(|k| escape(k)).collect::<Vec<_>>().join(" + ")
            }
        })
        .collect();
    if !security.is_empty() {
        let _ = write!(page, "<p>Authorization: {}</p>", security.join(" or "));
    }
    if let Some(parameters) = operation["parameters"].as_array() {
        page.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>");
        for p in parameters {
            let _ = write!(
                page,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&p["name"]),
                if p["required"] == true { " *" } else { "" },
                text(&p["in"]),
                type_html(&p["schema"]),
                text(&p["description"]),
            );
        }
        page.push_str("</table>");
    }
    if let Some(schema) = operation["requestBody"]["content"]
        .as_object()
        .and_then(|content| content.values().next())
        .map(|media| &media["schema"])
    {
        let _ = write!(page, "<p>Body: {}</p>", type_html(schema));
    }
    page.push_str("<table><tr><th>status</th><th></th><th>body</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        let body = response["content"]
            .as_object()
            .and_then(|content| content.values().next())
            .map(|media| type_html(&media["schema"]))
            .unwrap_or_default();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
            escape(status),
            text(&response["description"]),
        );
    }
    page.push_str("</table></article>");
}

fn schema_html(page: &mut String, name: &str, schema: &Value) {
    let _ = write!(
        page,
        "<article><h3 id=\"schema-{}\"><code>{}</code></h3><p>{}</p>",
        anchor(&escape(name)),
        escape(name),
        text(&schema["description"])
    );
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if let Some(properties) = schema["properties"].as_object() {
        page.push_str("<table><tr><th>field</th><th>type</th><th></th></tr>");
        for (field, property) in properties {
            let _ = write!(
                page,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                escape(field),
                if required.contains(&field.as_str()) {
                    " *"
                } else {
                    ""
                },
                type_html(property),
                text(&property["description"]),
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</article>");
}

/// A schema's type, linking to the named schemas it refers to.
fn type_html(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = escape(reference.rsplit('/').next().unwrap_or(reference));
        return format!("<a href=\"#schema-{}\">{name}</a>", anchor(&name));
    }
    if let Some(all) = schema["oneOf"].as_array().or(schema["allOf"].as_array()) {
        return all.iter().map(type_html).collect::<Vec<_>>().join(" | ");
    }
    let kind = match &schema["type"] {
        Value::String(kind) => escape(kind),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .map(escape)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    };
    if kind.starts_with("array") {
        return format!("array of {}", type_html(&schema["items"]));
    }
    kind
}

/// A description: escaped, with its `code` spans set as code.
fn text(value: &Value) -> String {
    let escaped = value.as_str().map(escape).unwrap_or_default();
    let mut out = String::with_capacity(escaped.len());
    for (n, piece) in escaped.split('`').enumerate() {
        if n % 2 == 1 {
            let _ = write!(out, "<code>{piece}</code>");
        } else {
            out.push_str(piece);
        }
    }
    out
}

/// HTML-escapes `raw`.
fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An id for `name`: letters, digits and dashes.
fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;\
padding:0 1rem;color:#1d1d1f}h2{border-bottom:1px solid #ddd;margin-top:2.5rem}\
article{margin:1.5rem 0}table{border-collapse:collapse;margin:.5rem 0}\
td,th{border:1px solid #e3e3e3;padding:.25rem .5rem;text-align:left;vertical-align:top}\
code{font:13px ui-monospace,monospace}.method{font-weight:bold}nav ul{padding:0}\
nav li{display:inline;margin-right:1rem}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_and_schema_is_on_the_page_and_nothing_is_unescaped() {
        let document: Value =
            serde_json::from_str(&crate::openapi_document().to_json().unwrap()).unwrap();
        let page = render(&document);
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    page.contains(&format!(
                        "<code class=\"method\">{}</code> <code>{}</code>",
                        method.to_uppercase(),
                        escape(path)
                    )),
                    "{method} {path} is not on the page"
                );
            }
        }
        for name in document["components"]["schemas"]
            .as_object()
            .unwrap()
            .keys()
        {
            assert!(
                page.contains(&format!("id=\"schema-{}\"", anchor(name))),
                "{name}"
            );
        }
        let hostile = serde_json::json!({
            "info": {"title": "<script>alert(1)</script>"},
            "tags": [], "paths": {}, "components": {"schemas": {}}
        });
        let page = render(&hostile);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
