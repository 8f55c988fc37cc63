//! `scripts/up`, the README's one command, run as a user runs it: it starts
//! its own Apache Kafka and Redis and four Herald processes, supervises
//! them, and stops them all on Ctrl-C. `kill -9` of a dispatcher and then of
//! fan-out brings each back, and every event sent meanwhile arrives.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herald_tests::{Behaviour, Receiver, free_port, log_dir, random_suffix};
use serde_json::json;

/// A running `scripts/up`, stopped with SIGINT on drop.
struct LocalStack {
    child: Child,
    state_dir: PathBuf,
    ingest_url: String,
    api_key: String,
}

impl LocalStack {
    /// Starts `scripts/up` with the suite's binaries (no build) and waits
    /// for the lines it prints once the stack is ready.
    fn start(name: &str) -> LocalStack {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repository root");
        let id = random_suffix();
        let state_dir = std::env::temp_dir().join(format!("herald-up-{id}"));
        let bin_dir = herald_tests::bin_path("herald-ingest")
            .parent()
            .expect("bin dir")
            .to_path_buf();
        // With SIGINT back to its default: a suite started in the
        // background of a non-interactive shell inherits it ignored, and a
        // shell cannot trap a signal ignored when it started, so Ctrl-C
        // would never reach scripts/up's handler.
        let mut child = Command::new("env")
            .arg("--default-signal=INT")
            .arg(root.join("scripts/up"))
            .env("HERALD_BIN_DIR", &bin_dir)
            .env("HERALD_STATE_DIR", &state_dir)
            .env("HERALD_LOG_DIR", log_dir().join(format!("{name}-{id}")))
            .env("HERALD_INGEST_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("HERALD_KAFKA_PORT", free_port().to_string())
            .env("HERALD_REDIS_PORT", free_port().to_string())
            .env("HERALD_API_KEY", format!("test-key-{}", random_suffix()))
            .env("HERALD_TOPIC_PARTITIONS", "4")
            .env("HERALD_ENDPOINT_CACHE_REFRESH", "100ms")
            .env("HERALD_RETRY_SCHEDULE", "1s,2s,4s")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/up");
        // The ready lines, read on a thread of their own so that a stack
        // that never gets ready fails the test instead of hanging it.
        let stdout = child.stdout.take().expect("stdout");
        let (lines, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut settings = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        while !settings.contains_key("HERALD_API_KEY") {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = ready
                .recv_timeout(left)
                .expect("scripts/up printed its settings within 180 s");
            if let Some((key, value)) = line.split_once('=') {
                settings.insert(key.to_owned(), value.to_owned());
            }
        }
        LocalStack {
            child,
            state_dir,
            ingest_url: settings["HERALD_INGEST_URL"].clone(),
            api_key: settings["HERALD_API_KEY"].clone(),
        }
    }

    /// The process id `scripts/up` recorded for `name` (e.g. `fanout`), if
    /// that process is running.
    fn pid(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.state_dir.join(format!("run/{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// `kill -9` of `name`, then waits until the supervisor started it again
    /// under a new process id and that process is still alive a second later.
    async fn kill_and_wait_for_restart(&self, name: &str) {
        let old = self
            .pid(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        signal(old, "-KILL");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(new) = self.pid(name)
                && new != old
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if self.pid(name) == Some(new) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not started again within 60 s of kill -9"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ctrl-C: waits for `scripts/up` to stop everything; returns its exit
    /// status.
    fn interrupt(&mut self, limit: Duration) -> std::process::ExitStatus {
        signal(self.child.id(), "-INT");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scripts/up did not stop within {limit:?} of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process ids of everything the supervisors still list.
    fn recorded_pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.state_dir.join("run"))
            .map(|dir| {
                dir.filter_map(|entry| {
                    let text = std::fs::read_to_string(entry.ok()?.path()).ok()?;
                    text.trim().parse().ok()
                })
                .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.interrupt(Duration::from_secs(90));
        }
        for pid in self.recorded_pids() {
            signal(pid, "-KILL");
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_stack_brings_killed_services_back_and_loses_nothing() {
    let mut stack = LocalStack::start("local-stack");
    let http = reqwest::Client::new();
    let receiver = Receiver::start(Behaviour::Accept).await;
    let app = http
        .post(format!("{}/v1/applications", stack.ingest_url))
        .bearer_auth(&stack.api_key)
        .json(&json!({"id": "app_test", "name": "local stack"}))
        .send()
        .await
        .expect("POST /v1/applications");
    assert_eq!(app.status(), 201);
    let created: serde_json::Value = http
        .post(format!(
            "{}/v1/applications/app_test/endpoints",
            stack.ingest_url
        ))
        .bearer_auth(&stack.api_key)
        .json(&json!({"url": receiver.url(), "event_types": ["*"]}))
        .send()
        .await
        .expect("POST /v1/applications/app_test/endpoints")
        .json()
        .await
        .expect("JSON answer");
    receiver.set_secret(created["secret"].as_str().expect("secret"));
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Events go in all along, one every 10 ms, while first a dispatcher
    // and then fan-out are killed.
    let sending = {
        let (http, url, key) = (
            http.clone(),
            stack.ingest_url.clone(),
            stack.api_key.clone(),
        );
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(20) {
                let id = format!("up_{i}");
                let status = http
                    .post(format!("{url}/v1/events"))
                    .bearer_auth(&key)
                    .json(&json!({"application": "app_test", "id": id, "type": "local.test", "payload": {"i": i}}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                assert_eq!(status, 202, "ingest refused event {id}");
                sent.push(id);
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.kill_and_wait_for_restart("dispatcher-1").await;
    stack.kill_and_wait_for_restart("fanout").await;
    let sent = sending.await.expect("sending");

    assert!(
        receiver
            .wait_until_delivered(&sent, Duration::from_secs(120))
            .await,
        "not every event sent while services were killed arrived ({} of {})",
        receiver
            .received()
            .iter()
            .map(|r| r.webhook_id())
            .collect::<HashSet<_>>()
            .len(),
        sent.len()
    );
    assert!(receiver.received().iter().all(|r| r.signature_valid));

    // Ctrl-C stops everything, Herald and the broker and Redis alike.
    let pids = stack.recorded_pids();
    assert_eq!(pids.len(), 6, "broker, Redis and four Herald processes");
    let status = stack.interrupt(Duration::from_secs(90));
    assert!(status.success(), "scripts/up exited with {status}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still runs after scripts/up stopped"
        );
    }
}
