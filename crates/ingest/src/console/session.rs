//! Sessions of the console and the portal, kept in Redis.
//!
//! Logging in exchanges a credential (an `admin` API key for the console, a
//! `portal` application token for the portal) for a random session id in a
//! cookie. Redis keeps only the id's SHA-256 digest
//! (`console:session:{digest}`), with the session's CSRF token and whom it
//! speaks for; the credential itself is kept nowhere. A session expires
//! after `HERALD_CONSOLE_SESSION_TTL`, a portal session also when its token
//! expires or is revoked.
//!
//! The cookie is `HttpOnly`, `SameSite=Strict`, scoped to its area's path,
//! and `Secure` when the page was served over TLS (Herald sits behind a TLS
//! proxy, which says so with `X-Forwarded-Proto: https`). A portal that may
//! be framed (`HERALD_PORTAL_FRAME_ANCESTORS`) is a third-party page inside
//! the platform's, where a `Strict` cookie is never sent: over TLS its cookie
//! is `SameSite=None; Secure; Partitioned` instead, and its forms rely on
//! the CSRF token alone.

use axum::http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::state::AppState;

/// Which of the two sites a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// `/console`: an operator, with an `admin` key's rights.
    Console,
    /// `/portal`: one application's customer, with a `portal` token's.
    Portal,
}

impl Area {
    /// Where its pages live.
    pub fn base(self) -> &'static str {
        match self {
            Area::Console => "/console",
            Area::Portal => "/portal",
        }
    }

    fn cookie(self) -> &'static str {
        match self {
            Area::Console => "herald_console",
            Area::Portal => "herald_portal",
        }
    }

    /// The cookie of the login form's CSRF token.
    fn login_cookie(self) -> &'static str {
        match self {
            Area::Console => "herald_console_login",
            Area::Portal => "herald_portal_login",
        }
    }
}

/// A session as Redis keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    /// Its area.
    pub area: Area,
    /// The token every form of the session must carry.
    pub csrf: String,
    /// Names the key (console) or token (portal) that opened it.
    pub key_id: String,
    /// For a portal session, the one application it sees.
    #[serde(default)]
    pub application: Option<String>,
    /// When it ends (Unix milliseconds).
    pub expires_at_ms: i64,
}

/// A session found from its cookie.
#[derive(Debug, Clone)]
pub struct Session {
    /// The digest Redis knows it by.
    pub digest: String,
    /// What Redis holds.
    pub stored: StoredSession,
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    herald_core::event::hex(&rand::random::<[u8; 32]>())
}

fn digest(id: &str) -> String {
    herald_core::event::hex(&Sha256::digest(id.as_bytes()))
}

/// Whether two secrets are equal, in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Starts a session; returns the cookie's value.
pub async fn create(
    state: &AppState,
    stored: &StoredSession,
    now_ms: i64,
) -> Result<String, crate::error::ApiError> {
    let id = random_token();
    let ttl_ms = (stored.expires_at_ms - now_ms).max(1);
    let mut redis = state.redis.clone();
    redis::cmd("SET")
        .arg(state.keys.console_session(&digest(&id)))
        .arg(serde_json::to_string(stored).map_err(crate::error::ApiError::internal)?)
        .arg("PX")
        .arg(ttl_ms)
        .query_async::<()>(&mut redis)
        .await?;
    Ok(id)
}

/// The session of `area` that the request's cookie names, if it is still
/// valid.
pub async fn find(
    state: &AppState,
    area: Area,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<Option<Session>, crate::error::ApiError> {
    let Some(id) = cookie(headers, area.cookie()) else {
        return Ok(None);
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let digest = digest(id);
    let Some(stored) = herald_core::redis_store::get_json::<StoredSession>(
        &state.redis,
        &state.keys.console_session(&digest),
    )
    .await?
    else {
        return Ok(None);
    };
    if stored.area != area || stored.expires_at_ms <= now_ms {
        return Ok(None);
    }
    if area == Area::Portal {
        // A revoked token ends its sessions at once.
        let mut redis = state.redis.clone();
        let alive: bool = redis::cmd("EXISTS")
            .arg(state.keys.application_token(&stored.key_id))
            .query_async(&mut redis)
            .await?;
        if !alive {
            end(state, &digest).await?;
            return Ok(None);
        }
    }
    Ok(Some(Session { digest, stored }))
}

/// Ends the session known by `digest`.
pub async fn end(state: &AppState, digest: &str) -> Result<(), crate::error::ApiError> {
    let mut redis = state.redis.clone();
    redis::cmd("DEL")
        .arg(state.keys.console_session(digest))
        .query_async::<()>(&mut redis)
        .await?;
    Ok(())
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// Whether the browser reached Herald over TLS (directly or through a
/// proxy that says so).
pub fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("https")
        });
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

/// How a cookie of `area` is set for this request.
#[derive(Debug, Clone, Copy)]
pub struct CookiePolicy {
    area: Area,
    secure: bool,
    /// The portal may be framed by another site.
    framed: bool,
}

impl CookiePolicy {
    /// The policy for a request of `area`.
    pub fn new(state: &AppState, area: Area, headers: &HeaderMap) -> Self {
        Self {
            area,
            secure: over_tls(headers),
            framed: area == Area::Portal && !state.console.portal_frame_ancestors.is_empty(),
        }
    }

    /// `Set-Cookie` of cookie `name` holding `value` (hex digits, or
    /// nothing to remove it) for `max_age_seconds`.
    fn set_cookie(&self, name: &str, value: &str, max_age_seconds: u64) -> HeaderValue {
        let same_site = if self.framed && self.secure {
            "None; Partitioned"
        } else {
            "Strict"
        };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={}; Max-Age={max_age_seconds}; HttpOnly; SameSite={same_site}{}",
            self.area.base(),
            if self.secure { "; Secure" } else { "" }
        ))
        .expect("an ASCII cookie")
    }

    /// `Set-Cookie` for a new session.
    pub fn session(&self, id: &str, max_age_seconds: u64) -> HeaderValue {
        self.set_cookie(self.area.cookie(), id, max_age_seconds)
    }

    /// `Set-Cookie` that removes the session's cookie.
    pub fn cleared(&self) -> HeaderValue {
        self.set_cookie(self.area.cookie(), "", 0)
    }

    /// `Set-Cookie` of the login form's CSRF token (ten minutes).
    pub fn login(&self, token: &str) -> HeaderValue {
        self.set_cookie(self.area.login_cookie(), token, 600)
    }

    /// `Set-Cookie` that removes the login form's token.
    pub fn login_cleared(&self) -> HeaderValue {
        self.set_cookie(self.area.login_cookie(), "", 0)
    }

    /// The login form's CSRF token the browser sent back.
    pub fn login_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie(headers, self.area.login_cookie())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = headers(&[("cookie", "a=1; herald_console_login=x; herald_console=abc")]);
        assert_eq!(cookie(&h, "herald_console"), Some("abc"));
        assert_eq!(cookie(&h, "herald_console_login"), Some("x"));
        assert_eq!(cookie(&h, "herald"), None);
        let h = headers(&[("cookie", "a=1"), ("cookie", "herald_portal=p")]);
        assert_eq!(cookie(&h, "herald_portal"), Some("p"));
    }

    #[test]
    fn tls_is_what_the_proxy_says() {
        assert!(!over_tls(&headers(&[])));
        assert!(over_tls(&headers(&[("x-forwarded-proto", "https")])));
        assert!(over_tls(&headers(&[("x-forwarded-proto", "HTTPS, http")])));
        assert!(!over_tls(&headers(&[("x-forwarded-proto", "http")])));
        assert!(over_tls(&headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https;by=203.0.113.43"
        )])));
    }

    #[test]
    fn session_cookies_are_http_only_strict_and_secure_over_tls() {
        let plain = CookiePolicy {
            area: Area::Console,
            secure: false,
            framed: false,
        };
        let cookie = plain.session("ab", 60);
        let cookie = cookie.to_str().unwrap();
        assert_eq!(
            cookie,
            "herald_console=ab; Path=/console; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        let tls = CookiePolicy {
            secure: true,
            ..plain
        };
        assert!(
            tls.session("ab", 60)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        assert!(tls.cleared().to_str().unwrap().contains("Max-Age=0"));
        // A framed portal's cookie must be sent inside the platform's page.
        let framed = CookiePolicy {
            area: Area::Portal,
            secure: true,
            framed: true,
        };
        let cookie = framed.session("ab", 60);
        assert!(
            cookie
                .to_str()
                .unwrap()
                .contains("Path=/portal; Max-Age=60; HttpOnly; SameSite=None; Partitioned; Secure")
        );
        // Without TLS a browser refuses SameSite=None: stay Strict.
        let framed_plain = CookiePolicy {
            secure: false,
            ..framed
        };
        assert!(
            framed_plain
                .session("ab", 60)
                .to_str()
                .unwrap()
                .contains("SameSite=Strict")
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
