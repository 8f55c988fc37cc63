//! The console's and portal's settings (`HERALD_CONSOLE_*`, `HERALD_PORTAL_*`).

use std::time::Duration;

use herald_core::config::{ConfigError, Env};

/// How the console and portal look and who may frame them.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// `HERALD_CONSOLE_SESSION_TTL` (default `8h`): how long a console or
    /// portal session lasts after logging in (a portal session never
    /// outlives its token).
    pub session_ttl: Duration,
    /// `HERALD_PORTAL_TITLE` (default `Webhooks`): the platform's name, shown
    /// on every portal page.
    pub portal_title: String,
    /// `HERALD_PORTAL_ACCENT` (default `#4f46e5`): the portal's accent
    /// colour, `#rgb` or `#rrggbb`.
    pub portal_accent: String,
    /// `HERALD_PORTAL_FRAME_ANCESTORS` (default none): the origins (e.g.
    /// `https://app.example.com`, separated by spaces or commas) whose pages
    /// may show the portal in an iframe. The console can never be framed.
    pub portal_frame_ancestors: Vec<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(8 * 3600),
            portal_title: "Webhooks".to_owned(),
            portal_accent: "#4f46e5".to_owned(),
            portal_frame_ancestors: Vec::new(),
        }
    }
}

impl ConsoleSettings {
    /// Reads and checks the settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let session_ttl = env.duration("HERALD_CONSOLE_SESSION_TTL", defaults.session_ttl)?;
        if session_ttl < Duration::from_secs(60) || session_ttl > Duration::from_secs(30 * 86_400) {
            return Err(ConfigError {
                key: "HERALD_CONSOLE_SESSION_TTL".to_owned(),
                value: env.raw("HERALD_CONSOLE_SESSION_TTL").map(str::to_owned),
                problem: "must be between 1m and 30d".to_owned(),
            });
        }
        let portal_title = env.parse("HERALD_PORTAL_TITLE", defaults.portal_title, |v| {
            if v.chars().count() > 80 {
                Err("must be at most 80 characters".to_owned())
            } else {
                Ok(v.to_owned())
            }
        })?;
        let portal_accent = env.parse("HERALD_PORTAL_ACCENT", defaults.portal_accent, |v| {
            parse_colour(v).ok_or_else(|| "expected a colour such as #4f46e5 or #46e".to_owned())
        })?;
        let portal_frame_ancestors =
            env.parse("HERALD_PORTAL_FRAME_ANCESTORS", Vec::new(), parse_origins)?;
        Ok(Self {
            session_ttl,
            portal_title,
            portal_accent,
            portal_frame_ancestors,
        })
    }
}

/// `#rgb` or `#rrggbb`, lower-cased.
fn parse_colour(text: &str) -> Option<String> {
    let hex = text.strip_prefix('#')?;
    ((hex.len() == 3 || hex.len() == 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("#{}", hex.to_ascii_lowercase()))
}

/// Origins for a `frame-ancestors` directive: `https://host[:port]` (or
/// `http://`), nothing that could end the directive or add a source.
fn parse_origins(text: &str) -> Result<Vec<String>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|origin| {
            let url = url::Url::parse(origin)
                .map_err(|_| format!("{origin:?} is not an origin such as https://app.example.com"))?;
            let plain = matches!(url.scheme(), "https" | "http")
                && url.host_str().is_some()
                && url.path() == "/"
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none()
                && origin
                    .trim_end_matches('/')
                    .split_once("://")
                    .is_some_and(|(_, rest)| !rest.contains(['/', '?', '#', ';', ' ', '\'', '*']));
            if !plain {
                return Err(format!(
                    "{origin:?} is not an origin such as https://app.example.com (a scheme and a host, with no path)"
                ));
            }
            Ok(url.origin().ascii_serialization())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_hex_only() {
        assert_eq!(parse_colour("#4F46E5").as_deref(), Some("#4f46e5"));
        assert_eq!(parse_colour("#abc").as_deref(), Some("#abc"));
        assert_eq!(parse_colour("red"), None);
        assert_eq!(parse_colour("#abcd"), None);
        assert_eq!(parse_colour("#12345g"), None);
        assert_eq!(parse_colour("#000;}body{"), None);
    }

    #[test]
    fn frame_ancestors_are_plain_origins() {
        assert_eq!(
            parse_origins("https://app.example.com, http://localhost:3000").unwrap(),
            vec!["https://app.example.com", "http://localhost:3000"]
        );
        assert_eq!(
            parse_origins("https://app.example.com/").unwrap(),
            vec!["https://app.example.com"]
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com;script-src",
            "javascript:alert(1)",
            "*",
            "https://user@app.example.com",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }
}
