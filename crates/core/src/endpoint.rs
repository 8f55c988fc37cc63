//! Endpoints (the subscribers) and their storage in Redis. The services
//! cache them in their own ways (fan-out its subscriptions, the dispatchers
//! the endpoints they deliver to); both notice changes through the change
//! counter, with [`retry_until_loaded`] and [`refresh_every`].
//!
//! Redis layout, under the configured key prefix:
//! - `endpoint:{id}`: the endpoint as JSON ([`Endpoint`]);
//! - `endpoints`: sorted set of endpoint ids, scored by creation time;
//! - `endpoint:{id}:version`: a counter bumped by every change to it, which
//!   the dispatchers poll to notice changes without reading the endpoint
//!   (fan-out polls the application's counter instead).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::event::validate_event_type;
use crate::redis_store::{Keys, StoreError};
use crate::signing::Secret;

/// Most secrets that keep signing after rotations (the oldest one goes first
/// when a rotation would keep more).
pub const MAX_PREVIOUS_SECRETS: usize = 5;

/// An HTTP endpoint and the event types it subscribes to, as stored.
///
/// Its `Debug` output leaves the secrets out, so an endpoint can be logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ep_…`, assigned at creation.
    pub id: String,
    /// The application it belongs to (it never moves to another).
    #[serde(default)]
    pub application_id: String,
    /// Absolute http(s) URL the webhooks are POSTed to.
    pub url: String,
    /// Subscriptions: exact types, `prefix.*` or `*`.
    pub event_types: Vec<String>,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
    /// Extra headers sent with every webhook.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A disabled endpoint receives nothing.
    #[serde(default)]
    pub disabled: bool,
    /// Why Herald disabled the endpoint by itself (e.g. it answered 410
    /// Gone); cleared when it is enabled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Most deliveries per second, across all dispatchers; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Signing secret, `whsec_…`.
    pub secret: String,
    /// Secrets replaced by a rotation that keep signing, beside the current
    /// one, until they expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<RetiringSecret>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("application_id", &self.application_id)
            .field("url", &redacted_url(&self.url))
            .field("event_types", &self.event_types)
            .field("disabled", &self.disabled)
            .field("rate_limit", &self.rate_limit)
            .field("previous_secrets", &self.previous_secrets.len())
            .finish_non_exhaustive()
    }
}

/// A secret replaced by a rotation, still signing until `expires_at_ms`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RetiringSecret {
    /// The old secret, `whsec_…`.
    pub secret: String,
    /// When it stops signing (Unix milliseconds).
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for RetiringSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetiringSecret")
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Makes `new` the signing secret. The current one keeps signing beside
    /// it for `grace_ms` (not at all when 0); secrets whose time is up are
    /// dropped.
    pub fn rotate_secret(&mut self, new: &Secret, grace_ms: i64, now_ms: i64) {
        let old = std::mem::replace(&mut self.secret, new.expose());
        self.previous_secrets.retain(|s| s.expires_at_ms > now_ms);
        if grace_ms > 0 {
            self.previous_secrets.push(RetiringSecret {
                secret: old,
                expires_at_ms: now_ms.saturating_add(grace_ms),
            });
        }
        self.previous_secrets
            .sort_by_key(|s| std::cmp::Reverse(s.expires_at_ms));
        self.previous_secrets.truncate(MAX_PREVIOUS_SECRETS);
    }
}

/// One entry of `event_types`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventTypePattern {
    /// `*`: every event.
    All,
    /// `order.*`: every type that starts with `order.` (kept with the dot).
    Prefix(String),
    /// `order.created`: that type only.
    Exact(String),
}

impl EventTypePattern {
    /// Reads a pattern, saying what is wrong with a bad one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            validate_event_type(prefix).map_err(|p| format!("{text:?}: the prefix {p}"))?;
            return Ok(Self::Prefix(format!("{prefix}.")));
        }
        validate_event_type(text)
            .map_err(|p| format!("{text:?} {p} (use an exact type, `prefix.*` or `*`)"))?;
        Ok(Self::Exact(text.to_owned()))
    }

    /// Whether an event of `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Prefix(prefix) => event_type.starts_with(prefix.as_str()),
            Self::Exact(exact) => exact == event_type,
        }
    }
}

/// Four decimal numbers of 0–255, as [`URL_PATTERN`] writes an IPv4
/// address.
macro_rules! ipv4 {
    () => {
        "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
    };
}

/// The endpoint URLs Herald takes: `http` or `https`, optional user info,
/// a host name (whose last label starts with a letter), an IPv4 address or
/// a bracketed IPv6 address, an optional port, and a path and query of
/// RFC 3986 characters (others percent-encoded); no fragment.
///
/// The API's OpenAPI document states this pattern and [`validate_url`]
/// enforces it, so that what the document calls valid is what Herald
/// accepts. It is stricter than a URL parser: a parser forgives much (a
/// space, a non-ASCII host, a fragment) that a receiver may read otherwise.
/// It uses only what ECMAScript (the dialect of JSON Schema) and Rust read
/// alike. One gap: a label `xn--…` that is not valid Punycode matches the
/// pattern, but the URL parser refuses it.
pub const URL_PATTERN: &str = concat!(
    "^[Hh][Tt][Tt][Pp][Ss]?://",
    // user info
    "(([A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*@)?",
    "(",
    // host name, perhaps fully qualified (`example.com.`)
    "([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\\.)*[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?\\.?",
    // IPv4, four decimal numbers (not the octal, hex or shortened forms
    // that parsers read differently)
    "|",
    ipv4!(),
    // IPv6
    "|\\[(",
    "([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}",
    "|([0-9A-Fa-f]{1,4}:){1,7}:",
    "|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}",
    "|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}",
    "|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}",
    "|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}",
    "|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}",
    "|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}",
    "|:((:[0-9A-Fa-f]{1,4}){1,7}|:)",
    // with an IPv4 address in its last 32 bits
    "|([0-9A-Fa-f]{1,4}:){6}",
    ipv4!(),
    "|::([Ff]{4}(:0{1,4})?:)?",
    ipv4!(),
    "|([0-9A-Fa-f]{1,4}:){1,4}:",
    ipv4!(),
    ")\\]",
    ")",
    // port
    "(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    // path
    "(/([A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*)?",
    // query
    "(\\?([A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?",
    "$"
);

/// Longest endpoint URL, in characters (bytes: [`URL_PATTERN`] is ASCII).
pub const MAX_URL_LEN: usize = 2048;

/// Checks an endpoint URL: at most [`MAX_URL_LEN`], of [`URL_PATTERN`].
pub fn validate_url(text: &str) -> Result<url::Url, String> {
    static PATTERN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(URL_PATTERN).expect("URL_PATTERN is valid"));
    if text.len() > MAX_URL_LEN {
        return Err(format!(
            "is {} characters long; the limit is {MAX_URL_LEN}",
            text.len()
        ));
    }
    if !PATTERN.is_match(text) {
        // Say the likeliest cause first.
        let problem = match url::Url::parse(text) {
            Err(err) => format!("is not an absolute URL ({err})"),
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!("must use http or https, not {:?}", url.scheme())
            }
            Ok(url) if url.fragment().is_some() => {
                "may not have a fragment (`#…`): it is never sent".to_owned()
            }
            Ok(url) if matches!(url.host(), Some(url::Host::Ipv4(_))) => {
                "writes an IPv4 address in a form parsers read differently (octal, hex, a bare integer, a short form or a trailing dot): write four decimal numbers".to_owned()
            }
            Ok(_) => "may hold only RFC 3986 characters, others percent-encoded, and an ASCII host name, IPv4 or [IPv6] address".to_owned(),
        };
        return Err(problem);
    }
    let url = url::Url::parse(text).map_err(|err| format!("is not an absolute URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must use http or https, not {:?}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    Ok(url)
}

/// The URL without user info, query or fragment, for logs, spans and
/// `Debug`: endpoint URLs sometimes carry credentials or tokens there
/// (`https://user:pw@host/hook?token=…`). Text that is not a URL becomes
/// `(not a URL)`, since it could be anything.
pub fn redacted_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// An endpoint ready for use: its secret decoded, and what every request to
/// it needs (its URL, the URL as logs may show it, its custom headers) made
/// once, so that a delivery parses and copies none of it.
///
/// It keeps only what a delivery reads, not the stored [`Endpoint`]: a
/// dispatcher holds thousands of these (`HERALD_DISPATCHER_CACHE_ENTRIES`),
/// and the stored record's strings (its description, subscriptions,
/// timestamps, the secrets as text) were half of each.
#[derive(Debug)]
pub struct ResolvedEndpoint {
    /// `endpoint.id`, shared: every attempt's log entry names it, and a
    /// clone of this copies nothing.
    pub id: std::sync::Arc<str>,
    /// Whether the endpoint is disabled (its deliveries are dead-lettered).
    pub disabled: bool,
    /// Why it was disabled, when it says.
    pub disabled_reason: Option<String>,
    /// Most deliveries per second to it, across replicas.
    pub rate_limit: Option<u32>,
    /// The decoded signing secret.
    pub secret: Secret,
    /// Rotated-out secrets that still sign, with when they stop (Unix
    /// milliseconds).
    pub previous: Vec<(Secret, i64)>,
    /// `endpoint.url`, parsed.
    pub url: url::Url,
    /// `url` without its user info: what the request is sent to.
    pub request_url: url::Url,
    /// `request_url` (without its fragment) as the HTTP client takes it,
    /// parsed once rather than for every request.
    pub request_uri: http::Uri,
    /// `Authorization: Basic …` from the URL's user info, when it has one
    /// (marked sensitive, so it is never logged).
    pub basic_auth: Option<http::HeaderValue>,
    /// The URL without credentials, query or fragment ([`redacted_url`]).
    pub redacted_url: String,
    /// `endpoint.headers` as request headers.
    pub headers: http::HeaderMap,
}

/// A URL's user info as a basic-auth header, and the URL without it (user
/// and password percent-decoded, as browsers and HTTP clients send them).
fn split_user_info(url: &url::Url) -> (url::Url, Option<http::HeaderValue>) {
    use base64::Engine as _;
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    if url.username().is_empty() && url.password().is_none() {
        return (url.clone(), None);
    }
    let credentials = format!(
        "{}:{}",
        decode(url.username()),
        url.password().map(decode).unwrap_or_default()
    );
    let mut header = http::HeaderValue::try_from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    ))
    .ok();
    if let Some(header) = &mut header {
        header.set_sensitive(true);
    }
    let mut bare = url.clone();
    // A URL with user info has an authority, from which both can go.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (bare, header)
}

impl ResolvedEndpoint {
    /// Decodes a stored endpoint; fails if what is stored is not valid.
    pub fn new(endpoint: Endpoint) -> Result<Self, String> {
        let secret = Secret::parse(&endpoint.secret)
            .map_err(|p| format!("endpoint {} has an unusable secret: it {p}", endpoint.id))?;
        let previous = endpoint
            .previous_secrets
            .iter()
            .map(|s| Secret::parse(&s.secret).map(|secret| (secret, s.expires_at_ms)))
            .collect::<Result<_, _>>()
            .map_err(|p| {
                format!(
                    "endpoint {} has an unusable previous secret: it {p}",
                    endpoint.id
                )
            })?;
        let url = url::Url::parse(&endpoint.url)
            .map_err(|err| format!("endpoint {} has an unusable URL: {err}", endpoint.id))?;
        let mut headers = http::HeaderMap::with_capacity(endpoint.headers.len());
        for (name, value) in &endpoint.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!(
                    "endpoint {} has an unusable header name {name:?}",
                    endpoint.id
                )
            })?;
            let value = http::HeaderValue::from_str(value).map_err(|_| {
                format!(
                    "endpoint {} has an unusable value for header {name}",
                    endpoint.id
                )
            })?;
            headers.insert(name, value);
        }
        let (request_url, basic_auth) = split_user_info(&url);
        let mut sent = request_url.clone();
        sent.set_fragment(None);
        let request_uri = sent.as_str().parse().map_err(|err| {
            format!(
                "endpoint {} has a URL the HTTP client cannot take: {err}",
                endpoint.id
            )
        })?;
        Ok(Self {
            redacted_url: redacted_url(&endpoint.url),
            url,
            request_url,
            request_uri,
            basic_auth,
            headers,
            id: std::sync::Arc::from(endpoint.id.as_str()),
            disabled: endpoint.disabled,
            disabled_reason: endpoint.disabled_reason,
            rate_limit: endpoint.rate_limit,
            secret,
            previous,
        })
    }

    /// About how many heap bytes holding this takes: the struct, its URLs
    /// and strings, headers and secrets (an estimate within allocator
    /// rounding, for a cache's byte bound).
    pub fn held_bytes(&self) -> usize {
        // An allocation's bookkeeping and its size class's rounding.
        const PER_ALLOCATION: usize = 16;
        // A secret's key and the Vec around it.
        const SECRET: usize = 64;
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 64)
            .sum();
        std::mem::size_of::<Self>()
            + self.id.len()
            + self.url.as_str().len()
            + self.request_url.as_str().len()
            // `request_uri` holds the same text once more.
            + self.request_url.as_str().len()
            + self.redacted_url.len()
            + self.disabled_reason.as_ref().map_or(0, String::len)
            + self.basic_auth.as_ref().map_or(0, |h| h.len() + 32)
            + headers
            + (1 + self.previous.len()) * SECRET
            + 8 * PER_ALLOCATION
    }

    /// The secrets that sign a webhook sent at `now_ms`: the current one,
    /// then every rotated-out one whose grace period is still running.
    pub fn signing_secrets(&self, now_ms: i64) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.secret).chain(
            self.previous
                .iter()
                .filter(move |(_, expires_at_ms)| *expires_at_ms > now_ms)
                .map(|(secret, _)| secret),
        )
    }
}

/// Creates endpoint KEYS[1] in application KEYS[3] unless the application
/// is gone: indexes it (KEYS[2], KEYS[4]) and bumps the application's and
/// its own counters (KEYS[5], KEYS[6]). 1 created, 0 no such application.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
redis.call('INCR', KEYS[5])
redis.call('INCR', KEYS[6])
return 1
"#;

/// Deletes endpoint KEYS[1], unindexes it (KEYS[2], KEYS[3]) and bumps the
/// application's and its own counters (KEYS[4], KEYS[5]). 1 deleted, 0 it
/// did not exist.
const DELETE: &str = r#"
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
redis.call('INCR', KEYS[5])
return 1
"#;

/// Reads and writes endpoints in Redis.
#[derive(Clone)]
pub struct EndpointStore {
    redis: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for EndpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointStore")
            .field("keys", &self.keys)
            .finish()
    }
}

impl EndpointStore {
    /// A store over an existing connection.
    pub fn new(redis: ConnectionManager, keys: Keys) -> Self {
        Self { redis, keys }
    }

    /// Saves a new endpoint in its application. Returns false when the
    /// application does not exist (any more).
    pub async fn create(&self, endpoint: &Endpoint, created_ms: i64) -> Result<bool, StoreError> {
        let json = serde_json::to_string(endpoint)?;
        let app = endpoint.application_id.as_str();
        let mut conn = self.redis.clone();
        let created: i64 = Script::new(CREATE)
            .key(self.keys.endpoint(&endpoint.id))
            .key(self.keys.endpoint_index())
            .key(self.keys.application(app))
            .key(self.keys.application_endpoints(app))
            .key(self.keys.application_version(app))
            .key(self.keys.endpoint_version(&endpoint.id))
            .arg(json)
            .arg(created_ms)
            .arg(&endpoint.id)
            .invoke_async(&mut conn)
            .await?;
        Ok(created == 1)
    }

    /// Removes an endpoint. Returns false when it did not exist.
    pub async fn delete(&self, endpoint: &Endpoint) -> Result<bool, StoreError> {
        let app = endpoint.application_id.as_str();
        let mut conn = self.redis.clone();
        let deleted: i64 = Script::new(DELETE)
            .key(self.keys.endpoint(&endpoint.id))
            .key(self.keys.endpoint_index())
            .key(self.keys.application_endpoints(app))
            .key(self.keys.application_version(app))
            .key(self.keys.endpoint_version(&endpoint.id))
            .arg(&endpoint.id)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    /// Disables an endpoint, recording why. Returns false when it does not
    /// exist.
    pub async fn disable(&self, id: &str, reason: &str) -> Result<bool, StoreError> {
        let changed = self
            .modify(id, |endpoint| {
                endpoint.disabled = true;
                endpoint.disabled_reason = Some(reason.to_owned());
                endpoint.updated_at =
                    crate::event::format_timestamp(time::OffsetDateTime::now_utc());
            })
            .await?;
        Ok(changed.is_some())
    }

    /// Changes an endpoint atomically ([`crate::redis_store::modify_json`]),
    /// so concurrent changes (a PATCH, a rotation, a 410 disabling it) never
    /// undo one another, and bumps the change counters. Returns the
    /// endpoint as written, or `None` when it does not exist (any more).
    pub async fn modify(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Endpoint),
    ) -> Result<Option<Endpoint>, StoreError> {
        // The application never changes: read it first, to bump its counter.
        let Some(current) = self.get(id).await? else {
            return Ok(None);
        };
        let counters = [
            self.keys.application_version(&current.application_id),
            self.keys.endpoint_version(id),
        ];
        crate::redis_store::modify_json(&self.redis, &self.keys.endpoint(id), &counters, |e| {
            change(e)
        })
        .await
    }

    /// One endpoint, if it exists, with its change counter as it was when
    /// it was read (read together, atomically).
    pub async fn get_versioned(&self, id: &str) -> Result<Option<(i64, Endpoint)>, StoreError> {
        let mut conn = self.redis.clone();
        let (version, json): (Option<i64>, Option<String>) = redis::pipe()
            .atomic()
            .get(self.keys.endpoint_version(id))
            .get(self.keys.endpoint(id))
            .query_async(&mut conn)
            .await?;
        json.map(|j| Ok((version.unwrap_or(0), serde_json::from_str(&j)?)))
            .transpose()
    }

    /// The change counters of several endpoints, in the same order (0 for
    /// one never changed).
    pub async fn versions(&self, ids: &[&str]) -> Result<Vec<i64>, StoreError> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.keys.endpoint_version(id))
            .collect();
        crate::redis_store::mget_counters(&self.redis, &keys).await
    }

    /// One endpoint, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        crate::redis_store::get_json(&self.redis, &self.keys.endpoint(id)).await
    }

    /// A page of an application's endpoints in creation order, starting at
    /// index `start`.
    pub async fn list(
        &self,
        application_id: &str,
        start: usize,
        limit: usize,
    ) -> Result<Vec<Endpoint>, StoreError> {
        let mut conn = self.redis.clone();
        let stop = (start + limit).saturating_sub(1);
        let ids: Vec<String> = conn
            .zrange(
                self.keys.application_endpoints(application_id),
                start as isize,
                stop as isize,
            )
            .await?;
        self.get_many(&ids).await
    }

    /// Every endpoint of an application, read as `T` ([`Endpoint`], or a
    /// part of it such as fan-out's subscriptions), with the application's
    /// change counter as it was before the read: a change made during it
    /// leaves the counter ahead. `None` when the application does not exist.
    pub async fn of_application<T: DeserializeOwned>(
        &self,
        application_id: &str,
    ) -> Result<Option<(i64, Vec<T>)>, StoreError> {
        let mut conn = self.redis.clone();
        let (version, exists, ids): (Option<i64>, bool, Vec<String>) = redis::pipe()
            .atomic()
            .get(self.keys.application_version(application_id))
            .exists(self.keys.application(application_id))
            .zrange(self.keys.application_endpoints(application_id), 0, -1)
            .query_async(&mut conn)
            .await?;
        if !exists {
            return Ok(None);
        }
        Ok(Some((version.unwrap_or(0), self.get_many(&ids).await?)))
    }

    async fn get_many<T: DeserializeOwned>(&self, ids: &[String]) -> Result<Vec<T>, StoreError> {
        let keys: Vec<String> = ids.iter().map(|id| self.keys.endpoint(id)).collect();
        crate::redis_store::mget_json(&self.redis, &keys).await
    }
}

/// Calls `refresh` until it succeeds (backing off) or `shutdown` fires.
/// Returns false on shutdown. The services' endpoint caches load with it.
pub async fn retry_until_loaded<F, Fut>(shutdown: &CancellationToken, refresh: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100));
    loop {
        match refresh().await {
            Ok(()) => return true,
            Err(err) => {
                tracing::warn!(error = %err, "cannot load endpoints from Redis yet; retrying");
            }
        }
        if backoff.pause(shutdown).await.is_err() {
            return false;
        }
    }
}

/// Calls `refresh` every `interval` until `shutdown`, logging an outage
/// once when it starts and once when it ends. The services' endpoint caches
/// watch the change counter with it.
pub async fn refresh_every<F, Fut>(interval: Duration, shutdown: &CancellationToken, refresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match refresh().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("endpoint cache refreshes again");
            }
            Ok(()) => {}
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(error = %err, "cannot refresh endpoints; using the last copy until Redis answers");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_becomes_basic_auth_and_leaves_the_url() {
        let url = url::Url::parse("https://her%40ld:p%3Aw@example.com:8443/hook?x=1").unwrap();
        let (bare, auth) = split_user_info(&url);
        assert_eq!(bare.as_str(), "https://example.com:8443/hook?x=1");
        let auth = auth.expect("a basic-auth header");
        // base64("her@ld:p:w")
        assert_eq!(auth.to_str().unwrap(), "Basic aGVyQGxkOnA6dw==");
        assert!(auth.is_sensitive());
        // A user without a password still authenticates, with an empty one.
        let (_, auth) = split_user_info(&url::Url::parse("http://user@h/").unwrap());
        assert_eq!(auth.unwrap().to_str().unwrap(), "Basic dXNlcjo=");
        let plain = url::Url::parse("https://example.com/hook").unwrap();
        assert_eq!(split_user_info(&plain), (plain.clone(), None));
    }

    #[test]
    fn urls_in_logs_and_debug_carry_no_credentials() {
        assert_eq!(
            redacted_url("https://user:pw@example.com:8443/hook?token=abc#x"),
            "https://example.com:8443/hook"
        );
        assert_eq!(redacted_url("not a url, user:pw"), "(not a URL)");
        let mut endpoint = endpoint("ep_1", &["*"], false);
        endpoint.url = "https://user:hunter2@example.com/hook?token=tok".to_owned();
        let debug = format!("{endpoint:?}");
        assert!(debug.contains("https://example.com/hook"), "{debug}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("token"),
            "{debug}"
        );
    }

    fn endpoint(id: &str, types: &[&str], disabled: bool) -> Endpoint {
        Endpoint {
            id: id.to_owned(),
            application_id: "acme".to_owned(),
            url: "http://example.com/hook".to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            description: String::new(),
            headers: BTreeMap::new(),
            disabled,
            disabled_reason: None,
            rate_limit: None,
            secret: Secret::generate().expose(),
            previous_secrets: Vec::new(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    /// What fan-out reads of `endpoint(..)`: parsed from its stored JSON,
    /// as the cache does.
    #[test]
    fn patterns_parse_and_match() {
        assert_eq!(EventTypePattern::parse("*"), Ok(EventTypePattern::All));
        let prefix = EventTypePattern::parse("order.*").unwrap();
        assert!(prefix.matches("order.created"));
        assert!(prefix.matches("order.item.added"));
        assert!(!prefix.matches("order"));
        assert!(!prefix.matches("orders.created"));
        assert!(
            EventTypePattern::parse("order.created")
                .unwrap()
                .matches("order.created")
        );
        assert!(EventTypePattern::parse("order*").is_err());
        assert!(EventTypePattern::parse(".*").is_err());
        assert!(EventTypePattern::parse("").is_err());
    }

    #[test]
    fn rotated_secrets_sign_until_their_grace_ends() {
        let mut e = endpoint("ep_1", &["*"], false);
        let first = Secret::parse(&e.secret).unwrap();
        let second = Secret::generate();
        e.rotate_secret(&second, 1_000, 10_000);
        let resolved = ResolvedEndpoint::new(e.clone()).unwrap();
        let signing = |now| resolved.signing_secrets(now).collect::<Vec<_>>();
        assert_eq!(signing(10_999), vec![&second, &first]);
        assert_eq!(signing(11_000), vec![&second]);
        // A rotation without grace retires the current secret at once, and
        // expired ones are dropped.
        let third = Secret::generate();
        e.rotate_secret(&third, 0, 20_000);
        assert!(e.previous_secrets.is_empty());
        assert_eq!(e.secret, third.expose());
        // The stored form round-trips; Debug shows no secret.
        e.rotate_secret(&Secret::generate(), 5_000, 30_000);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), e);
        let debug = format!("{e:?}");
        assert!(!debug.contains("whsec_"), "{debug}");
        for n in 0..10 {
            e.rotate_secret(&Secret::generate(), 5_000, 30_000 + n);
        }
        assert_eq!(e.previous_secrets.len(), MAX_PREVIOUS_SECRETS);
    }

    #[test]
    fn a_resolved_endpoint_keeps_what_deliveries_read_and_counts_its_bytes() {
        let mut e = endpoint("ep_1", &["order.created"], true);
        e.disabled_reason = Some("410 Gone".to_owned());
        e.rate_limit = Some(5);
        let plain = ResolvedEndpoint::new(e.clone()).unwrap();
        assert_eq!(&*plain.id, "ep_1");
        assert!(plain.disabled);
        assert_eq!(plain.disabled_reason.as_deref(), Some("410 Gone"));
        assert_eq!(plain.rate_limit, Some(5));
        assert!(plain.held_bytes() > std::mem::size_of::<ResolvedEndpoint>());
        // What it holds counts: the URL (four times: parsed, as sent, as
        // the client takes it, redacted), a header, a previous secret.
        e.url = format!("{}/{}", e.url, "x".repeat(200));
        let longer = ResolvedEndpoint::new(e.clone()).unwrap();
        assert!(longer.held_bytes() >= plain.held_bytes() + 4 * 200);
        e.headers.insert("x-tenant".to_owned(), "acme".to_owned());
        e.rotate_secret(&Secret::generate(), 1_000, 0);
        let more = ResolvedEndpoint::new(e).unwrap();
        assert_eq!(more.previous.len(), 1);
        assert!(more.held_bytes() > longer.held_bytes() + 64);
    }

    #[test]
    fn urls_are_validated() {
        assert!(validate_url("https://example.com/x").is_ok());
        assert!(
            validate_url("ftp://example.com")
                .unwrap_err()
                .contains("http or https")
        );
        assert!(validate_url("/relative").unwrap_err().contains("absolute"));
        assert!(validate_url("example.com").is_err());
        for good in [
            "http://127.0.0.1:8080/hook",
            "https://user:p%40ss@hooks.example.com/a/b?token=x%20y&z=1",
            "HTTPS://Hooks.Example.COM",
            "http://[::1]:9000/x",
            "http://[2001:db8::8a2e:370:7334]/",
            "http://localhost:65535",
            "https://hooks.example.com./x",
            "http://[::ffff:192.0.2.1]/",
            "http://[64:ff9b::192.0.2.1]/",
            "https://xn--bcher-kva.example/",
        ] {
            assert!(
                validate_url(good).is_ok(),
                "{good}: {:?}",
                validate_url(good)
            );
        }
        for (bad, needle) in [
            ("https://example.com/a#frag", "fragment"),
            ("https://example.com/a b", "RFC 3986"),
            ("https://bücher.example/", "RFC 3986"),
            ("https://example.com:70000/", "absolute"),
            ("http://1.2.3.999/", "absolute"),
            ("http://[:::1]/", "absolute"),
            ("http://0x7f.1/", "four decimal numbers"),
            ("http://2130706433/", "four decimal numbers"),
            ("http://0177.0.0.1/", "four decimal numbers"),
            ("http://127.1/", "four decimal numbers"),
            ("http://example.com/%zz", "RFC 3986"),
        ] {
            let err = validate_url(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(validate_url(&long).unwrap_err().contains("limit is 2048"));
    }

    proptest::proptest! {
        /// What the pattern (and so the API's document) calls a URL, a URL
        /// parser reads as an http(s) URL with a host, so `validate_url`
        /// accepts it.
        #[test]
        fn every_url_of_the_pattern_is_accepted(
            url in proptest::string::string_regex(URL_PATTERN.trim_start_matches('^').trim_end_matches('$')).unwrap()
        ) {
            proptest::prop_assume!(url.len() <= MAX_URL_LEN);
            // A label that begins `xn--` is an internationalized name's
            // ASCII form and must also be valid Punycode, which no pattern
            // can say: `validate_url` refuses an invalid one ("invalid
            // international domain name").
            proptest::prop_assume!(!has_a_punycode_label(&url));
            proptest::prop_assert!(validate_url(&url).is_ok(), "{url}: {:?}", validate_url(&url));
        }
    }

    /// Whether a label of `url`'s host begins `xn--` (in any case).
    fn has_a_punycode_label(url: &str) -> bool {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        host.split('.').any(|label| {
            label
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("xn--"))
        })
    }

    #[test]
    fn punycode_labels_are_told() {
        assert!(has_a_punycode_label("HTtP://xN--a"));
        assert!(has_a_punycode_label(
            "https://u:p@a.XN--bcher-kva.example:8443/x"
        ));
        assert!(!has_a_punycode_label("https://example.com/xn--a"));
        assert!(!has_a_punycode_label("https://x@example.com/?q=xn--"));
        assert!(validate_url("https://xn--bcher-kva.example/").is_ok());
    }
}
