//! A real headless Chromium, driven over WebDriver by Chromium's own
//! `chromedriver`, for the console's and portal's tests.
//!
//! The client is the handful of W3C WebDriver calls the tests need (open a
//! page, find, click, type, read, screenshot, the browser's console log),
//! written against the protocol over reqwest: a client crate would bring a
//! second HTTP stack and a WebDriver-types crate for the same few requests.
//!
//! `HERALD_TEST_CHROMIUM` and `HERALD_TEST_CHROMEDRIVER` name the binaries
//! (default `/usr/bin/chromium` and `/usr/bin/chromedriver`, Debian's
//! `chromium` and `chromium-driver`, which scripts/test installs).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The W3C name of the property holding an element's id.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session, closed (and chromedriver stopped) on drop.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    session_url: String,
    driver: Child,
    /// Where screenshots go: `target/browser-screenshots`.
    pub screenshots: PathBuf,
    /// Chromium's profile directory, this session's own.
    profile: PathBuf,
}

/// One entry of the browser's console log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, …
    pub level: String,
    /// What it says.
    pub message: String,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> Browser {
        let chromium =
            std::env::var("HERALD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver = std::env::var("HERALD_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = crate::free_port();
        let target = crate::bin_path("herald-ingest")
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .to_path_buf();
        let screenshots = target.join("browser-screenshots");
        std::fs::create_dir_all(&screenshots).expect("screenshot dir");
        // Only warnings: chromedriver's verbose log would hold what the tests
        // type, API keys among it.
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--log-level=WARNING")
            .arg(format!(
                "--log-path={}",
                target.join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start {chromedriver}: {err}; install Debian's chromium-driver (scripts/test does)")
            });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            std::env::temp_dir().join(format!("herald-chromium-{}", crate::random_suffix()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            "--disable-extensions",
                            "--disable-background-networking",
                            "--window-size=1280,1100",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("new session answer");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused a session: {created}"))
            .to_owned();
        Browser {
            http,
            session_url: format!("{base}/session/{session}"),
            driver,
            screenshots,
            profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session_url);
        let request = self.http.request(method.clone(), &url);
        let request = match body {
            Some(body) => request.json(&body),
            None if method == reqwest::Method::POST => request.json(&json!({})),
            None => request,
        };
        let answer: Value = request
            .send()
            .await
            .unwrap_or_else(|err| panic!("WebDriver {method} {path}: {err}"))
            .json()
            .await
            .unwrap_or_else(|err| panic!("WebDriver {method} {path}: {err}"));
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {error}: {}",
                answer["value"]["message"]
            );
        }
        answer["value"].clone()
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The URL shown.
    pub async fn url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's title.
    pub async fn title(&self) -> String {
        self.command(reqwest::Method::GET, "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The elements matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.command(
            reqwest::Method::POST,
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .await
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned())))
        .collect()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub async fn find(&self, css: &str) -> Element {
        let started = Instant::now();
        loop {
            if let Some(element) = self.find_all(css).await.into_iter().next() {
                return element;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let url = self.url().await;
                panic!("no element {css:?} on {url}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.click_element(&element).await;
    }

    /// Clicks `element`.
    pub async fn click_element(&self, element: &Element) {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            None,
        )
        .await;
    }

    /// Replaces the text of the field matching `css` with `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/clear", element.0),
            None,
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.element_text(&element).await
    }

    /// The visible text of `element`.
    pub async fn element_text(&self, element: &Element) -> String {
        self.command(
            reqwest::Method::GET,
            &format!("/element/{}/text", element.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Runs `script` in the page as an asynchronous script: it ends by
    /// calling `done(value)`, and that value is returned.
    pub async fn execute_async(&self, script: &str) -> Value {
        let wrapped = format!("const done = arguments[arguments.length - 1]; {script}");
        self.command(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": wrapped, "args": [] })),
        )
        .await
    }

    /// Saves a screenshot as `target/browser-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write screenshot");
        path
    }

    /// The browser's console-log entries since the last call (Chromium's
    /// log endpoint hands each entry out once).
    pub async fn console_entries(&self) -> Vec<LogEntry> {
        self.command(
            reqwest::Method::POST,
            "/se/log",
            Some(json!({ "type": "browser" })),
        )
        .await
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| LogEntry {
            level: e["level"].as_str().unwrap_or_default().to_owned(),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
    }

    /// Panics when the page logged an error (a failed request, a policy
    /// violation, a script error) since the last check.
    pub async fn assert_no_console_errors(&self, page: &str) {
        let errors: Vec<String> = self
            .console_entries()
            .await
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .map(|e| e.message)
            .collect();
        assert!(errors.is_empty(), "{page} logged errors: {errors:#?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver: end it by its profile,
        // which names this session alone.
        let _ = self.driver.start_kill();
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(self.profile.display().to_string())
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
