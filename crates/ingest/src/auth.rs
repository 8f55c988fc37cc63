//! Bearer-token authentication, scopes and per-key rate limits of the API.
//!
//! A key has one of two scopes: `ingest` may only send events (`POST
//! /v1/events`), `admin` may do everything. Keys are configured as SHA-256
//! digests (`HERALD_API_KEY_HASHES`, `HERALD_API_KEYS_FILE`); plain keys
//! (`HERALD_API_KEYS`) are still read, as `admin` keys, and kept only as
//! digests too.
//!
//! Application tokens (`hat_…`, issued by `POST
//! /v1/applications/{app}/tokens`, stored in Redis as digests) see one
//! application: a `portal` token its endpoints and dead letters, an
//! `ingest` token its events. Anything of another application answers 404,
//! exactly as if it did not exist.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use herald_core::application::{TOKEN_PREFIX, TokenScope};
use herald_core::rate_limit::Clock;

use crate::error::ApiError;
use crate::state::AppState;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /v1/events` only.
    Ingest,
    /// Every route.
    Admin,
}

impl Scope {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "ingest" => Some(Scope::Ingest),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Ingest => 0,
            Scope::Admin => 1,
        }
    }

    /// Its name in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What the key may do (for an application token: `ingest` or, for a
    /// portal token, none of the key scopes — see `application`).
    pub scope: Scope,
    /// A short digest that names the key (for its rate limit) without
    /// revealing it.
    pub key_id: String,
    /// For an application token: the one application it sees, and how.
    pub application: Option<(String, TokenScope)>,
}

impl Caller {
    /// The application an application token is limited to.
    pub fn only_application(&self) -> Option<&str> {
        self.application.as_ref().map(|(app, _)| app.as_str())
    }
}

#[derive(Clone)]
struct KeyEntry {
    digest: [u8; 32],
    scope: Scope,
}

/// The accepted API keys, kept only as SHA-256 digests. A presented key is
/// hashed and compared against every digest in constant time, so neither the
/// comparison's timing nor a memory dump gives a key away.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<KeyEntry>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.entries.len())
    }
}

impl ApiKeys {
    /// Keys given in plain text; they have the `admin` scope.
    pub fn new(keys: &[String]) -> Self {
        let mut all = Self::default();
        for key in keys {
            all.entries.push(KeyEntry {
                digest: Sha256::digest(key.as_bytes()).into(),
                scope: Scope::Admin,
            });
        }
        all
    }

    /// Adds keys given as `scope:sha256hex` entries, separated by commas or
    /// line breaks; blank lines and lines starting with `#` are skipped.
    pub fn add_hashed(&mut self, text: &str) -> Result<(), String> {
        for entry in text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            self.entries.push(parse_hashed_entry(entry)?);
        }
        Ok(())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller `presented` identifies, if it is one of the keys.
    pub fn find(&self, presented: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Look at every key, without stopping at a match.
        let mut found = subtle::Choice::from(0);
        let mut scope = 0u8;
        for entry in &self.entries {
            let matches = entry.digest.ct_eq(&digest);
            found |= matches;
            scope = u8::conditional_select(&scope, &entry.scope.bit(), matches);
        }
        bool::from(found).then(|| Caller {
            scope: if scope == Scope::Admin.bit() {
                Scope::Admin
            } else {
                Scope::Ingest
            },
            key_id: herald_core::event::hex(&digest[..8]),
            application: None,
        })
    }

    /// Whether an `admin` key whose id ([`Caller::key_id`]) is `key_id` is
    /// still configured.
    pub fn has_admin_key(&self, key_id: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.scope == Scope::Admin && herald_core::event::hex(&e.digest[..8]) == key_id)
    }

    /// Whether `presented` is one of the keys.
    pub fn accepts(&self, presented: &str) -> bool {
        self.find(presented).is_some()
    }
}

fn parse_hashed_entry(entry: &str) -> Result<KeyEntry, String> {
    let how = "write scope:sha256hex, e.g. ingest:<the 64 hex digits of `printf %s \"$KEY\" | sha256sum`>, with scope ingest or admin";
    let (scope, hex) = entry
        .split_once(':')
        .ok_or_else(|| format!("an entry has no scope; {how}"))?;
    let scope = Scope::parse(scope.trim())
        .ok_or_else(|| format!("unknown scope {:?}; {how}", scope.trim()))?;
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        // The entry is not echoed: it may be a plain key put here by mistake.
        return Err(format!(
            "an entry's digest is not 64 hexadecimal digits; {how}"
        ));
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex digits");
    }
    Ok(KeyEntry { digest, scope })
}

/// Rejects requests without a valid `Authorization: Bearer <key>`, or whose
/// key lacks the scope of the route; applies the per-key event rate limit.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let is_event = request.method() == Method::POST && is_event_route(request.uri().path());
    let authorization = request.headers().get(AUTHORIZATION).cloned();
    let checked = check_api_key(&state, authorization).await.and_then(|caller| {
        if let Some((app, scope)) = &caller.application {
            authorize_token(app, *scope, request.method(), request.uri().path())?;
            return Ok(caller);
        }
        if caller.scope == Scope::Ingest && !is_event {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this API key has the `ingest` scope, which allows only POST /v1/events and /v1/events/batch; {} {} needs a key with the `admin` scope",
                    request.method(),
                    request.uri().path()
                ),
            ));
        }
        Ok(caller)
    });
    let caller = checked.inspect_err(|err| {
        if is_event {
            herald_core::metrics::metrics()
                .events_rejected
                .get_or_create(&herald_core::metrics::label("reason", err.code))
                .inc();
        }
    })?;
    // A batch is charged per event, once its handler has counted them.
    if is_event && request.uri().path() == "/v1/events" {
        take_ingest_slots(&state, &caller, 1).await?;
    }
    let mut request = request;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Charges `events` events to the caller's key under
/// `HERALD_INGEST_RATE_LIMIT`, or answers `429 rate_limited` (counted as
/// refused events) when the key has sent too many.
pub async fn take_ingest_slots(
    state: &AppState,
    caller: &Caller,
    events: u32,
) -> Result<(), ApiError> {
    let Some(limit) = state.ingest_rate_limit else {
        return Ok(());
    };
    match state
        .limiter
        .try_acquire_ingest(
            &caller.key_id,
            events,
            limit.per_second,
            limit.burst,
            Clock::Redis,
        )
        .await
    {
        Ok(0) => Ok(()),
        Ok(wait_ms) => {
            herald_core::metrics::metrics()
                .events_rejected
                .get_or_create(&herald_core::metrics::label("reason", "rate_limited"))
                .inc_by(u64::from(events));
            let seconds = wait_ms.div_ceil(1000).max(1);
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this API key may send {} events per second (bursts of {}); retry after {seconds} s",
                    limit.per_second, limit.burst
                ),
            );
            err.retry_after_secs = Some(seconds);
            Err(err)
        }
        // Without Redis the event cannot be de-duplicated either, and is
        // refused by the handler; the limit does not add a second error.
        Err(_) => Ok(()),
    }
}

/// The routes that send events, which `ingest` keys and tokens may reach.
fn is_event_route(path: &str) -> bool {
    path == "/v1/events" || path == "/v1/events/batch"
}

/// What an application token may reach: an `ingest` token `POST
/// /v1/events` (the handler holds it to its application); a `portal` token
/// the routes under its application (not the application itself, nor its
/// tokens) and the dead-letter routes (which hold it to its application).
/// A route of another application is a 404, as if it did not exist.
pub(crate) fn authorize_token(
    app: &str,
    scope: TokenScope,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    let forbidden = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this application token has the `{}` scope, which does not allow {method} {path}",
                scope.name()
            ),
        )
    };
    let under = path
        .strip_prefix("/v1/applications/")
        .map(|rest| rest.split_once('/').unwrap_or((rest, "")));
    match scope {
        TokenScope::Ingest if method == Method::POST && is_event_route(path) => Ok(()),
        TokenScope::Ingest => Err(forbidden()),
        TokenScope::Portal => match under {
            Some((target, _)) if percent_decoded(target) != app => {
                Err(crate::applications::not_found(&percent_decoded(target)))
            }
            Some((_, rest)) if rest.starts_with("endpoints") || rest.starts_with("events") => {
                Ok(())
            }
            Some(_) => Err(forbidden()),
            None if path == "/v1/dlq" || path == "/v1/dlq/replay" => Ok(()),
            None => Err(forbidden()),
        },
    }
}

/// A path segment with its `%XX` escapes decoded (axum decodes route
/// parameters the same way).
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn check_api_key(
    state: &AppState,
    authorization: Option<axum::http::HeaderValue>,
) -> Result<Caller, ApiError> {
    let header = authorization.ok_or_else(|| {
        ApiError::unauthorized(
            "missing Authorization header; send `Authorization: Bearer <api key>`",
        )
    })?;
    let key = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <api key>`")
        })?;
    if key.starts_with(TOKEN_PREFIX) {
        let now = herald_core::event::unix_millis(time::OffsetDateTime::now_utc());
        let token = state.applications.find_token(key, now).await?.ok_or_else(|| {
            ApiError::unauthorized("the application token is not valid: it has expired, was revoked, or never existed")
        })?;
        return Ok(Caller {
            scope: Scope::Ingest,
            key_id: token.id.clone(),
            application: Some((token.application, token.scope)),
        });
    }
    state
        .api_keys
        .find(key)
        .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))
}

/// The per-key limit on events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestRateLimit {
    /// Events per second and key.
    pub per_second: u32,
    /// Events accepted at once after a quiet spell.
    pub burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(key: &str) -> String {
        herald_core::event::hex(&Sha256::digest(key.as_bytes()))
    }

    #[test]
    fn only_configured_keys_are_accepted() {
        let keys = ApiKeys::new(&[
            "first-key-0123456789".to_owned(),
            "second-key-0123456789".to_owned(),
        ]);
        assert!(keys.accepts("first-key-0123456789"));
        assert!(keys.accepts("second-key-0123456789"));
        assert!(!keys.accepts("first-key-012345678"));
        assert!(!keys.accepts(""));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
    }

    #[test]
    fn hashed_keys_carry_their_scope() {
        let mut keys = ApiKeys::new(&["plain-admin-key-0123456789".to_owned()]);
        let text = format!(
            "# producers\ningest:{}\n\nadmin:{} , ingest:{}",
            sha256_hex("ingest-key-0123456789"),
            sha256_hex("admin-key-0123456789").to_uppercase(),
            sha256_hex("other-ingest-0123456789"),
        );
        keys.add_hashed(&text).unwrap();
        assert_eq!(keys.len(), 4);
        let scope = |k: &str| keys.find(k).map(|c| c.scope);
        assert_eq!(scope("ingest-key-0123456789"), Some(Scope::Ingest));
        assert_eq!(scope("other-ingest-0123456789"), Some(Scope::Ingest));
        assert_eq!(scope("admin-key-0123456789"), Some(Scope::Admin));
        assert_eq!(scope("plain-admin-key-0123456789"), Some(Scope::Admin));
        assert_eq!(scope("unknown-key-0123456789"), None);
        // Key ids tell keys apart without revealing them.
        let a = keys.find("ingest-key-0123456789").unwrap().key_id;
        let b = keys.find("other-ingest-0123456789").unwrap().key_id;
        assert_ne!(a, b);
        assert!(!a.contains("ingest-key"));
    }

    #[test]
    fn bad_hashed_entries_say_how_to_write_them_without_echoing() {
        let mut keys = ApiKeys::default();
        let err = keys.add_hashed("my-plain-secret-key-123").unwrap_err();
        assert!(err.contains("no scope"), "{err}");
        assert!(!err.contains("my-plain-secret"), "{err}");
        let err = keys.add_hashed("reader:abcd").unwrap_err();
        assert!(err.contains("unknown scope \"reader\""), "{err}");
        let err = keys.add_hashed("ingest:my-plain-secret-key").unwrap_err();
        assert!(err.contains("64 hexadecimal digits"), "{err}");
        assert!(!err.contains("my-plain-secret"), "{err}");
    }
}
