//! Starting and watching Herald's processes, and talking to its API.
//!
//! Every mode of the benchmark starts a fresh ingest, fan-out and
//! dispatcher(s) with a topic prefix of its own, so a mode never sees another
//! mode's backlog. All modes share one Redis prefix, so the endpoints are
//! registered once per run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The application every benchmark event is addressed to, and whose
/// endpoints the benchmark registers.
pub const BENCH_APP: &str = "bench";

/// What every Herald process of one mode shares.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Directory holding `herald-ingest`, `herald-fanout` and
    /// `herald-dispatcher`.
    pub bin_dir: PathBuf,
    /// Where each process's log goes.
    pub log_dir: PathBuf,
    /// Environment of every process.
    pub env: Vec<(String, String)>,
}

/// One running Herald process.
#[derive(Debug)]
pub struct Process {
    /// `ingest`, `fanout`, `dispatcher-1`, …
    pub name: String,
    child: Child,
    log: PathBuf,
    /// `host:port` of its ops server (`/metrics`), if it has one.
    ops_addr: Option<String>,
}

impl Process {
    /// Starts `binary` with the deployment's environment plus `extra`.
    pub fn spawn(
        deployment: &Deployment,
        binary: &str,
        name: &str,
        extra: &[(&str, String)],
    ) -> Result<Process, String> {
        std::fs::create_dir_all(&deployment.log_dir)
            .map_err(|e| format!("cannot create {}: {e}", deployment.log_dir.display()))?;
        let log = deployment.log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let path = deployment.bin_dir.join(binary);
        let mut command = Command::new(&path);
        command
            .envs(deployment.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log,
            ops_addr: extra
                .iter()
                .find(|(k, _)| *k == "HERALD_OPS_ADDR")
                .map(|(_, v)| v.clone()),
        })
    }

    /// Saves the process's `/metrics` next to its log (as `<name>.metrics`),
    /// for finding out why a phase did not complete.
    pub async fn save_metrics(&self) {
        let Some(addr) = &self.ops_addr else { return };
        let text = match reqwest::get(format!("http://{addr}/metrics")).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(err) => format!("cannot read /metrics: {err}"),
        };
        let _ = std::fs::write(self.log.with_extension("metrics"), text);
    }

    /// Where its `/metrics` are served (fan-out and dispatchers).
    pub fn ops_addr(&self) -> Option<&str> {
        self.ops_addr.as_deref()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the log contains `needle`, or the process exited, or
    /// `limit` passed.
    pub async fn wait_for_log(&mut self, needle: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|text| text.contains(needle)) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not log {needle:?} within {limit:?}; see {}",
                    self.name,
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks it to stop (SIGTERM) and waits up to `limit` before killing it.
    pub fn stop(&mut self, limit: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the unlabelled series `series` (e.g.
/// `herald_allocations_total`) on the `/metrics` served at `ops_addr`;
/// `None` when the process does not export it.
pub async fn metric(ops_addr: &str, series: &str) -> Result<Option<f64>, String> {
    let text = reqwest::get(format!("http://{ops_addr}/metrics"))
        .await
        .map_err(|e| format!("reading {ops_addr}/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("reading {ops_addr}/metrics: {e}"))?;
    Ok(text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .parse::<f64>()
            .ok()
    }))
}

/// Heap allocations so far of each process of `processes` that serves
/// `/metrics` and was built with the `count-allocations` feature
/// (`scripts/bench` builds so), in order; `None` for the others.
pub async fn allocations(processes: &[(String, Process)]) -> Vec<Option<f64>> {
    let mut counts = Vec::with_capacity(processes.len());
    for (_, process) in processes {
        counts.push(match process.ops_addr() {
            Some(addr) => metric(addr, "herald_allocations_total")
                .await
                .ok()
                .flatten(),
            None => None,
        });
    }
    counts
}

/// A connection to the Redis at `url`.
async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("Redis: {e}"))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))
}

/// One section of Redis's `INFO`.
async fn redis_info(url: &str, section: &str) -> Result<String, String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut redis_connection(url).await?)
        .await
        .map_err(|e| format!("Redis INFO: {e}"))
}

/// Redis's `used_memory`, in bytes.
pub async fn redis_used_memory(url: &str) -> Result<u64, String> {
    let info = redis_info(url, "memory").await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:")?.trim().parse().ok())
        .ok_or_else(|| "Redis INFO memory has no used_memory".to_owned())
}

/// Redis's own account of the commands it ran so far (`INFO
/// commandstats`): per command, its calls and the microseconds spent in
/// them. Commands a script runs are counted too, inside the script's own.
pub async fn redis_command_stats(
    url: &str,
) -> Result<std::collections::BTreeMap<String, (u64, u64)>, String> {
    Ok(parse_command_stats(&redis_info(url, "commandstats").await?))
}

/// `cmdstat_zadd:calls=3,usec=12,usec_per_call=4.00,…` lines, by command.
fn parse_command_stats(info: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.trim().parse().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// What the attempt log holds under `prefix`: attempts (the counts
/// `attempts:batched` and `attempts:retained`), and entries in the logs by
/// endpoint.
pub async fn attempts_retained(url: &str, prefix: &str) -> Result<(u64, u64), String> {
    let mut conn = redis_connection(url).await?;
    // Batches, and event logs of the layout before them.
    let (batched, former): (Option<u64>, Option<u64>) = redis::pipe()
        .get(format!("{prefix}attempts:batched"))
        .get(format!("{prefix}attempts:retained"))
        .query_async(&mut conn)
        .await
        .map_err(|e| format!("Redis GET: {e}"))?;
    let by_event = batched.unwrap_or(0) + former.unwrap_or(0);
    let mut by_endpoint = 0;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}attempts:endpoint:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis SCAN: {e}"))?;
        for key in keys {
            let kept: u64 = redis::cmd("ZCARD")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("Redis ZCARD: {e}"))?;
            by_endpoint += kept;
        }
        if next == 0 {
            return Ok((by_event, by_endpoint));
        }
        cursor = next;
    }
}

/// CPU time and memory of a process, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), in MiB.
    pub peak_rss_mib: f64,
}

/// How busy the whole machine was over a phase, from `/proc/stat` and
/// `/proc/pressure/cpu` (Linux; zeros elsewhere).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MachineLoad {
    /// Share of all cores' time spent running anything, in percent.
    pub busy_percent: f64,
    /// Share of the phase during which some runnable task waited for a
    /// core (CPU pressure, "some"), in percent; `None` where the kernel
    /// does not report CPU pressure.
    pub waited_percent: Option<f64>,
}

/// A reading of the machine's CPU counters, for [`MachineLoad`].
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    at: std::time::Instant,
    busy_ticks: f64,
    all_ticks: f64,
    stalled_us: Option<f64>,
}

impl MachineCpu {
    /// Reads the counters now.
    pub fn read() -> MachineCpu {
        let (busy_ticks, all_ticks) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().find(|l| l.starts_with("cpu "))?;
                let ticks: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|t| t.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal …
                let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0.0);
                let all: f64 = ticks.iter().take(8).sum();
                Some((all - idle, all))
            })
            .unwrap_or((0.0, 0.0));
        let stalled_us = std::fs::read_to_string("/proc/pressure/cpu")
            .ok()
            .and_then(|text| {
                let some = text.lines().find(|l| l.starts_with("some "))?;
                some.split_whitespace()
                    .find_map(|field| field.strip_prefix("total="))?
                    .parse()
                    .ok()
            });
        MachineCpu {
            at: std::time::Instant::now(),
            busy_ticks,
            all_ticks,
            stalled_us,
        }
    }

    /// The load between `self` and a later reading.
    pub fn until(&self, later: &MachineCpu) -> MachineLoad {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-6);
        let all = (later.all_ticks - self.all_ticks).max(1e-9);
        MachineLoad {
            busy_percent: 100.0 * (later.busy_ticks - self.busy_ticks) / all,
            waited_percent: self
                .stalled_us
                .zip(later.stalled_us)
                .map(|(before, after)| (after - before) / (seconds * 10_000.0)),
        }
    }
}

/// One thread's name and CPU seconds so far.
#[derive(Debug, Clone)]
pub struct ThreadCpu {
    /// Its name (the kernel keeps 15 characters).
    pub name: String,
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
}

/// Each thread of a process, by thread id (`/proc/PID/task/*/stat`; empty
/// elsewhere). By id, not name: threads come and go (a JVM starts and
/// stops compiler threads as it needs them), and one that ended must not
/// take its CPU out of a sum over its name.
pub fn thread_cpu(pid: u32) -> std::collections::BTreeMap<u32, ThreadCpu> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if let Some(cpu_seconds) = cpu_seconds_in_stat(&stat) {
            threads.insert(
                tid,
                ThreadCpu {
                    name: stat[open + 1..close].to_owned(),
                    cpu_seconds,
                },
            );
        }
    }
    threads
}

/// What a process's threads took between two [`thread_cpu`] readings
/// `seconds` apart, summed by thread name, as (name, percent of one core),
/// busiest first. A thread that started meanwhile counts from zero; one
/// that ended is left out.
pub fn thread_shares(
    before: &std::collections::BTreeMap<u32, ThreadCpu>,
    after: &std::collections::BTreeMap<u32, ThreadCpu>,
    seconds: f64,
) -> Vec<(String, f64)> {
    let mut by_name: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
    for (tid, thread) in after {
        let was = before.get(tid).map_or(0.0, |t| t.cpu_seconds);
        *by_name.entry(&thread.name).or_insert(0.0) += (thread.cpu_seconds - was).max(0.0);
    }
    let mut shares: Vec<(String, f64)> = by_name
        .into_iter()
        .map(|(name, cpu)| (name.to_owned(), 100.0 * cpu / seconds.max(1e-6)))
        .filter(|(_, percent)| *percent > 0.0)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

/// [`usage`] of each process of `watched` (name, pid), in order.
pub fn usages(watched: &[(String, u32)]) -> Vec<Usage> {
    watched.iter().map(|(_, pid)| usage(*pid)).collect()
}

/// Reads a process's CPU time and peak RSS; zeros where `/proc` has no
/// answer (another operating system, or the process is gone).
pub fn usage(pid: u32) -> Usage {
    let cpu_seconds = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| cpu_seconds_in_stat(&stat))
        .unwrap_or(0.0);
    let peak_rss_mib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib / 1024.0)
        })
        .unwrap_or(0.0);
    Usage {
        cpu_seconds,
        peak_rss_mib,
    }
}

/// User + system CPU seconds in a `/proc/…/stat` line (a process's or a
/// thread's): fields after the parenthesised name start at field 3
/// (state); utime and stime are fields 14 and 15.
fn cpu_seconds_in_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Herald's HTTP API, as the benchmark uses it.
#[derive(Debug, Clone)]
pub struct Api {
    /// Base URL of herald-ingest.
    pub base_url: String,
    api_key: String,
    http: reqwest::Client,
}

impl Api {
    /// A client for the ingest at `base_url`.
    pub fn new(base_url: String, api_key: String) -> Api {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Api {
            base_url,
            api_key,
            http,
        }
    }

    /// POSTs a JSON body; returns the status and the answer's text.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<(u16, String), String> {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// PATCHes with a JSON body; returns the status and the answer's text.
    pub async fn patch(&self, path: &str, body: Vec<u8>) -> Result<(u16, String), String> {
        self.send(reqwest::Method::PATCH, path, body).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base_url))
            .bearer_auth(&self.api_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, text))
    }

    /// Waits until `GET /readyz` answers 200.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let ready = self
                .http
                .get(format!("{}/readyz", self.base_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "herald-ingest at {} was not ready within {limit:?}",
                    self.base_url
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers an endpoint of [`BENCH_APP`] (created on first use);
    /// returns its id and its secret.
    pub async fn register(
        &self,
        url: &str,
        event_types: &[String],
    ) -> Result<(String, String), String> {
        let app = serde_json::json!({ "id": BENCH_APP, "name": "herald-bench" });
        let (status, text) = self
            .post("/v1/applications", serde_json::to_vec(&app).expect("JSON"))
            .await?;
        if status != 201 && status != 409 {
            return Err(format!(
                "creating the application answered {status}: {text}"
            ));
        }
        let body = serde_json::json!({ "url": url, "event_types": event_types });
        let answer = self.create_endpoint(BENCH_APP, &body).await?;
        let field = |name: &str| {
            answer[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no {name} in {answer}"))
        };
        Ok((field("id")?, field("secret")?))
    }

    /// Creates an endpoint of application `app` from `body`; returns the
    /// API's answer (with its `id` and `secret`).
    pub async fn create_endpoint(
        &self,
        app: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let (status, text) = self
            .post(
                &format!("/v1/applications/{app}/endpoints"),
                serde_json::to_vec(body).expect("JSON"),
            )
            .await?;
        if status != 201 {
            return Err(format!(
                "registering an endpoint of {app} ({}) answered {status}: {text}",
                body["url"]
            ));
        }
        serde_json::from_str(&text).map_err(|e| format!("endpoint answer: {e}"))
    }

    /// Deletes an endpoint.
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), String> {
        let response = self
            .http
            .delete(format!(
                "{}/v1/applications/{BENCH_APP}/endpoints/{id}",
                self.base_url
            ))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|e| format!("DELETE endpoint {id}: {e}"))?;
        match response.status().as_u16() {
            200 | 204 => Ok(()),
            status => Err(format!("DELETE endpoint {id} answered {status}")),
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The directory the benchmark's own executable is in, where cargo puts
/// Herald's binaries too.
pub fn own_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_stats_are_read_by_command() {
        let info = "# Commandstats\r\ncmdstat_zadd:calls=204000,usec=732597,usec_per_call=3.59,rejected_calls=0,failed_calls=0\r\ncmdstat_evalsha:calls=7,usec=70,usec_per_call=10.00\r\nbroken_line\r\n";
        let stats = parse_command_stats(info);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats["zadd"], (204_000, 732_597));
        assert_eq!(stats["evalsha"], (7, 70));
    }
}
