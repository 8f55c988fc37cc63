//! Logging set-up shared by the three services.
//!
//! `HERALD_LOG` (default `info`) is a `tracing` filter such as
//! `info,herald_dispatcher=debug`; `HERALD_LOG_FORMAT` is `text` (default,
//! for people) or `json` (one object per line, for log pipelines).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Env};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `HERALD_LOG` (default `info`).
    pub filter: String,
    /// `HERALD_LOG_FORMAT` (default `text`).
    pub format: LogFormat,
}

impl LogConfig {
    /// Reads the logging settings.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let filter = env.parse("HERALD_LOG", "info".to_owned(), |v| {
            EnvFilter::try_new(v).map(|_| v.to_owned()).map_err(|err| {
                format!("not a log filter ({err}); write e.g. info or info,herald_dispatcher=debug")
            })
        })?;
        let format = env.parse("HERALD_LOG_FORMAT", LogFormat::Text, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".to_owned()),
        })?;
        Ok(Self { filter, format })
    }
}

/// Installs the global logger. Call once, first thing in `main`.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: in files and log pipelines escape codes
    // get in the way of searching.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
