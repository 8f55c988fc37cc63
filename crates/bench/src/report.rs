//! The benchmark's figures: the summary table on standard output, the
//! targets with met / not met, and the same figures as JSON.

use serde::Serialize;

use crate::apps::AppsReport;
use crate::baseline::ReceiverBaseline;
use crate::herald::Usage;
use crate::load::{MAX_FANOUT, Percentiles, PhaseResult};
use crate::ordinary::OrdinaryLoadReport;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine and the run's settings.
    pub setup: Setup,
    /// The broker and receiver baselines.
    pub baselines: Baselines,
    /// Herald, one entry per mode.
    pub modes: Vec<ModeReport>,
    /// The `ordinary-load` mode, when it ran.
    pub ordinary: Option<OrdinaryLoadReport>,
    /// The `apps` mode's own figures, when it ran (its phase is in `modes`).
    pub apps: Option<AppsReport>,
    /// The targets, each met or not.
    pub targets: Vec<Target>,
    /// Herald against the relayed baseline ([`against_relay`]).
    pub against_relay: Vec<String>,
    /// Where the latency phase's time went ([`latency_breakdown`]).
    pub latency_breakdown: Vec<String>,
}

/// The machine and the run's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// CPU model.
    pub cpu: String,
    /// CPUs the benchmark can use.
    pub cpus: usize,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Record size in bytes.
    pub record_bytes: usize,
    /// Partitions of every topic.
    pub partitions: i32,
    /// Endpoints registered (10 of them subscribed).
    pub registered_endpoints: usize,
    /// Deliveries per throughput phase.
    pub deliveries_per_phase: usize,
    /// Where webhooks went and how they were counted.
    pub webhooks_to: String,
    /// Short run that only checks the benchmark works.
    pub smoke: bool,
}

/// The baselines.
#[derive(Debug, Clone, Serialize)]
pub struct Baselines {
    /// Produce → consume through one topic, flat out (the better of two
    /// rounds).
    pub broker_throughput: PhaseResult,
    /// herald-bench's CPU per record over that phase: one produce and one
    /// consume by the Kafka client with Herald's settings.
    pub broker_client_us: f64,
    /// Produce → consume at the rate of Herald's latency phase.
    pub broker_latency: Option<RatedPhase>,
    /// Produce → relay through a second topic → consume, flat out: the
    /// floor of any pipeline with a topic between its stages.
    pub relay_throughput: PhaseResult,
    /// herald-bench's CPU per record over that phase: two produces and two
    /// consumes.
    pub relay_client_us: f64,
    /// The same at the rate of Herald's latency phase.
    pub relay_latency: Option<RatedPhase>,
    /// Bare POSTs to the receiver.
    pub receiver: ReceiverBaseline,
}

/// A phase run at a fixed rate.
#[derive(Debug, Clone, Serialize)]
pub struct RatedPhase {
    /// Events per second.
    pub rate: f64,
    /// What it measured.
    pub result: PhaseResult,
    /// How busy the machine was meanwhile.
    pub machine: crate::herald::MachineLoad,
}

/// Where the latency phase's time went.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySplit {
    /// Herald's own histograms over the phase (name, percentiles): the
    /// first hop, the second, the request, end to end (and the control
    /// readers' when they ran).
    pub histograms: Vec<(String, Percentiles)>,
    /// CPU of Herald's processes, the observed ones and the benchmark
    /// itself over the phase.
    pub processes: Vec<ProcessReport>,
    /// The observed processes' busiest threads over the phase: (process,
    /// [(thread name, percent of one core)]).
    pub threads: Vec<(String, Vec<(String, f64)>)>,
}

/// One mode's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// Name, e.g. `fanout-10`.
    pub name: String,
    /// Dispatcher replicas.
    pub dispatchers: usize,
    /// Endpoints per event.
    pub fan_out: usize,
    /// Endpoints answering 500 (their deliveries are not counted).
    pub dead_endpoints: usize,
    /// Requests the dead endpoints got during the Kafka phase.
    pub dead_endpoint_requests: u64,
    /// Events produced straight to `herald.events`, flat out.
    pub kafka: PhaseResult,
    /// In a mode with a dead endpoint: the same phase with every endpoint
    /// healthy, run just before by the same processes on the same topics,
    /// which the dead-endpoint target compares against (other modes run on
    /// processes and topics of their own, and a shared machine drifts
    /// between modes).
    pub all_healthy: Option<PhaseResult>,
    /// Events posted to `POST /v1/events`, flat out.
    pub http: Option<PhaseResult>,
    /// The same events posted to `POST /v1/events/batch`, 100 a request.
    pub http_batch: Option<PhaseResult>,
    /// What an event accepted over `POST /v1/events` cost, per process
    /// (fan-out 1: one webhook per event).
    pub http_cost: Option<CostPerWebhook>,
    /// The same over `POST /v1/events/batch`.
    pub http_batch_cost: Option<CostPerWebhook>,
    /// Events produced at 20 % of the Kafka phase's rate.
    pub latency: Option<RatedPhase>,
    /// Where that phase's time went.
    pub latency_split: Option<LatencySplit>,
    /// Herald's processes (and any observed ones) during the Kafka phase.
    pub processes: Vec<ProcessReport>,
    /// What the attempt log grew by in Redis during the Kafka phase.
    pub attempt_log: Option<AttemptLogGrowth>,
    /// Redis's commands during the Kafka phase, costliest first.
    pub redis_commands: Vec<RedisCommandCost>,
}

/// One Redis command's share of a phase, per delivered webhook.
#[derive(Debug, Clone, Serialize)]
pub struct RedisCommandCost {
    /// The command (lower case, as Redis names it).
    pub command: String,
    /// Calls per webhook.
    pub calls_per_webhook: f64,
    /// Microseconds Redis spent running it per webhook (its own count; a
    /// script's includes the commands it ran, and reading and answering
    /// requests is in neither).
    pub us_per_webhook: f64,
}

impl RedisCommandCost {
    /// The commands run between two [`crate::herald::redis_command_stats`]
    /// readings, per one of `webhooks`, costliest first.
    pub fn between(
        before: &std::collections::BTreeMap<String, (u64, u64)>,
        after: &std::collections::BTreeMap<String, (u64, u64)>,
        webhooks: usize,
    ) -> Vec<RedisCommandCost> {
        let per = webhooks.max(1) as f64;
        let mut costs: Vec<RedisCommandCost> = after
            .iter()
            .filter_map(|(command, (calls, usec))| {
                let (calls_before, usec_before) = before.get(command).copied().unwrap_or((0, 0));
                let calls = calls.checked_sub(calls_before)?;
                (calls > 0).then(|| RedisCommandCost {
                    command: command.clone(),
                    calls_per_webhook: calls as f64 / per,
                    us_per_webhook: usec.saturating_sub(usec_before) as f64 / per,
                })
            })
            .collect();
        costs.sort_by(|a, b| b.us_per_webhook.total_cmp(&a.us_per_webhook));
        costs
    }
}

/// What the attempt log grew by in Redis over a phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AttemptLogGrowth {
    /// Attempts added to the logs by event (their budget's count).
    pub by_event: i64,
    /// Entries added to the logs by endpoint (a batch's attempts to an
    /// endpoint take one).
    pub by_endpoint: i64,
    /// Growth of Redis's `used_memory`, bytes.
    pub redis_bytes: i64,
}

impl AttemptLogGrowth {
    /// Redis bytes per attempt retained, with its share of the endpoint
    /// logs. (Until endpoint logs named batches, the figure divided by
    /// attempts and endpoint-log entries together, an entry per attempt.)
    pub fn bytes_per_attempt(&self) -> f64 {
        self.redis_bytes as f64 / self.by_event.max(1) as f64
    }
}

/// One process's use of the machine.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// Name.
    pub name: String,
    /// CPU seconds during the Kafka phase.
    pub cpu_seconds: f64,
    /// Those as a share of one CPU over the phase, in percent.
    pub cpu_percent: f64,
    /// CPU microseconds per delivered webhook of the phase (the same
    /// figure as milliseconds per 1,000).
    pub cpu_us_per_delivery: f64,
    /// Heap allocations per delivered webhook of the phase, for processes
    /// built with the `count-allocations` feature that serve `/metrics`.
    pub allocations_per_delivery: Option<f64>,
    /// Peak RSS over the process's life, MiB (for Herald's processes, that
    /// is the mode's whole run).
    pub peak_rss_mib: f64,
}

impl ProcessReport {
    /// One report per process of `watched` (name, pid), from its usage
    /// `before` (as [`crate::herald::usages`] read it) to now, over a phase
    /// of `seconds` with `deliveries`.
    pub fn since(
        watched: &[(String, u32)],
        before: Vec<Usage>,
        seconds: f64,
        deliveries: usize,
    ) -> Vec<ProcessReport> {
        watched
            .iter()
            .zip(before)
            .map(|((name, pid), before)| {
                ProcessReport::new(
                    name,
                    before,
                    crate::herald::usage(*pid),
                    seconds,
                    deliveries,
                )
            })
            .collect()
    }

    /// From usage before and after a phase of `seconds` with `deliveries`.
    pub fn new(
        name: &str,
        before: Usage,
        after: Usage,
        seconds: f64,
        deliveries: usize,
    ) -> ProcessReport {
        let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        ProcessReport {
            name: name.to_owned(),
            cpu_seconds: cpu,
            cpu_percent: 100.0 * cpu / seconds.max(1e-6),
            cpu_us_per_delivery: 1e6 * cpu / (deliveries.max(1) as f64),
            allocations_per_delivery: None,
            peak_rss_mib: after.peak_rss_mib,
        }
    }
}

/// What one delivered webhook cost in CPU during a mode's Kafka phase,
/// in microseconds, by process (dispatcher replicas summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CostPerWebhook {
    /// herald-ingest.
    pub ingest_us: f64,
    /// herald-fanout.
    pub fanout_us: f64,
    /// Every herald-dispatcher replica.
    pub dispatchers_us: f64,
    /// Herald's processes together.
    pub herald_us: f64,
    /// Redis (the process observed as `redis`), for Herald's calls.
    pub redis_us: f64,
    /// The dispatchers' heap allocations per webhook, when counted.
    pub dispatcher_allocations: Option<f64>,
}

impl CostPerWebhook {
    /// From the mode's process reports over its Kafka phase.
    pub fn of(mode: &ModeReport) -> CostPerWebhook {
        Self::of_processes(&mode.processes)
    }

    /// From the process reports of a phase.
    pub fn of_processes(processes: &[ProcessReport]) -> CostPerWebhook {
        let sum = |prefix: &str| -> f64 {
            processes
                .iter()
                .filter(|p| p.name.starts_with(prefix))
                .map(|p| p.cpu_us_per_delivery)
                .sum()
        };
        let dispatchers: Vec<&ProcessReport> = processes
            .iter()
            .filter(|p| p.name.starts_with("herald-dispatcher"))
            .collect();
        let dispatcher_allocations = dispatchers
            .iter()
            .map(|p| p.allocations_per_delivery)
            .sum::<Option<f64>>()
            .filter(|_| !dispatchers.is_empty());
        CostPerWebhook {
            ingest_us: sum("herald-ingest"),
            fanout_us: sum("herald-fanout"),
            dispatchers_us: sum("herald-dispatcher"),
            herald_us: sum("herald-"),
            redis_us: sum("redis"),
            dispatcher_allocations,
        }
    }
}

/// One target and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What it is about.
    pub name: String,
    /// The rule.
    pub rule: String,
    /// What was measured against the rule.
    pub measured: String,
    /// Whether the rule held.
    pub met: bool,
}

/// Evaluates the targets from the report's figures. Targets whose modes did
/// not run are left out.
pub fn targets(
    baselines: &Baselines,
    modes: &[ModeReport],
    ordinary: Option<&OrdinaryLoadReport>,
    apps: Option<&AppsReport>,
) -> Vec<Target> {
    let mode = |name: &str| modes.iter().find(|m| m.name == name);
    let broker = baselines.broker_throughput.delivered_per_s;
    let mut targets = Vec::new();
    let mut ratio_target = |name: &str, rule: &str, value: f64, base: f64, at_least: f64| {
        let ratio = value / base.max(1e-9);
        targets.push(Target {
            name: name.to_owned(),
            rule: rule.to_owned(),
            measured: format!("{:.2} ({value:.0} vs {base:.0})", ratio),
            met: ratio >= at_least,
        });
    };
    if let Some(one) = mode("fanout-1") {
        ratio_target(
            "throughput, fan-out 1",
            "webhooks/s ≥ 0.5 × broker records/s",
            one.kafka.delivered_per_s,
            broker,
            0.5,
        );
    }
    if let Some(ten) = mode("fanout-10") {
        ratio_target(
            "throughput, fan-out 10",
            "webhooks/s ≥ 0.8 × broker records/s",
            ten.kafka.delivered_per_s,
            broker,
            0.8,
        );
    }
    if let Some(dead) = mode("fanout-10-one-dead")
        && let Some(all_healthy) = &dead.all_healthy
    {
        // The healthy nine endpoints' share of the all-healthy phase.
        let healthy_before = all_healthy.delivered_per_s * 9.0 / 10.0;
        ratio_target(
            "one endpoint dead",
            "healthy webhooks/s ≥ 0.9 × the all-healthy phase's",
            dead.kafka.delivered_per_s,
            healthy_before,
            0.9,
        );
    }
    if let (Some(one), Some(two)) = (
        mode("slow-endpoints-1-dispatcher"),
        mode("slow-endpoints-2-dispatchers"),
    ) {
        ratio_target(
            "two dispatchers",
            "webhooks/s ≥ 1.6 × one dispatcher's (slow endpoints)",
            two.kafka.delivered_per_s,
            one.kafka.delivered_per_s,
            1.6,
        );
    }
    if let (Some(many), Some(one)) = (mode("apps"), mode("fanout-1")) {
        ratio_target(
            "applications, throughput",
            "webhooks/s ≥ 0.9 × fan-out 1's (one application)",
            many.kafka.delivered_per_s,
            one.kafka.delivered_per_s,
            0.9,
        );
    }
    let relay = baselines.relay_throughput.delivered_per_s;
    if let Some(one) = mode("fanout-1") {
        ratio_target(
            "fan-out 1 against the relay",
            "webhooks/s ≥ 0.8 × the relayed records/s",
            one.kafka.delivered_per_s,
            relay,
            0.8,
        );
        if let Some(http) = &one.http {
            ratio_target(
                "HTTP ingest",
                "POST /v1/events accepted/s ≥ 0.5 × fan-out 1's Kafka-in webhooks/s",
                http.accepted_per_s,
                one.kafka.delivered_per_s,
                0.5,
            );
        }
        if let Some(batch) = &one.http_batch {
            ratio_target(
                "HTTP ingest, batches",
                "POST /v1/events/batch accepted events/s ≥ 0.5 × the same",
                batch.accepted_per_s,
                one.kafka.delivered_per_s,
                0.5,
            );
        }
    }
    for (name, herald_limit) in [("fanout-10", 30.0), ("fanout-1", 40.0)] {
        let Some(m) = mode(name) else { continue };
        let cost = CostPerWebhook::of(m);
        targets.push(Target {
            name: format!("Herald CPU, {name}"),
            rule: format!("Herald's processes ≤ {herald_limit:.0} µs per webhook"),
            measured: format!(
                "{:.1} µs (ingest {:.1}, fan-out {:.1}, dispatchers {:.1})",
                cost.herald_us, cost.ingest_us, cost.fanout_us, cost.dispatchers_us
            ),
            met: cost.herald_us <= herald_limit,
        });
        if m.processes.iter().any(|p| p.name == "redis") {
            targets.push(Target {
                name: format!("Redis CPU, {name}"),
                rule: "Redis ≤ 5 µs per webhook".into(),
                measured: format!("{:.1} µs", cost.redis_us),
                met: cost.redis_us <= 5.0,
            });
        }
    }
    if let Some(ten) = mode("fanout-10") {
        if let Some(allocations) = CostPerWebhook::of(ten).dispatcher_allocations {
            targets.push(Target {
                name: "dispatcher allocations".into(),
                rule: "≤ 60 heap allocations per webhook (fan-out 10)".into(),
                measured: format!("{allocations:.0}"),
                met: allocations <= 60.0,
            });
        }
        targets.push(Target {
            name: "throughput, fan-out 10".into(),
            rule: "≥ 19,000 verified webhooks/s".into(),
            measured: format!("{:.0}", ten.kafka.delivered_per_s),
            met: ten.kafka.delivered_per_s >= 19_000.0,
        });
    }
    if let (Some(herald), Some(relayed)) = (
        mode("fanout-1").and_then(|m| m.latency.as_ref()),
        baselines.relay_latency.as_ref(),
    ) {
        let (h, r) = (&herald.result.latency, &relayed.result.latency);
        for (name, measured, limit, rule) in [
            (
                "p50 at 20 % load, relayed",
                h.p50_ms,
                r.p50_ms + 5.0,
                "≤ the relayed records' p50 + 5 ms",
            ),
            (
                "p99 at 20 % load, relayed",
                h.p99_ms,
                r.p99_ms + 20.0,
                "≤ the relayed records' p99 + 20 ms",
            ),
        ] {
            targets.push(Target {
                name: name.into(),
                rule: rule.into(),
                measured: format!("{measured:.1} ms vs limit {limit:.1} ms"),
                met: measured <= limit,
            });
        }
    }
    if let (Some(herald), Some(broker)) = (
        mode("fanout-1").and_then(|m| m.latency.as_ref()),
        baselines.broker_latency.as_ref(),
    ) {
        let (h, b) = (&herald.result.latency, &broker.result.latency);
        targets.push(Target {
            name: "latency p50 at 20 % load".into(),
            rule: "≤ 2 × broker p50 + 5 ms".into(),
            measured: format!("{:.1} ms vs limit {:.1} ms", h.p50_ms, 2.0 * b.p50_ms + 5.0),
            met: h.p50_ms <= 2.0 * b.p50_ms + 5.0,
        });
        targets.push(Target {
            name: "latency p99 at 20 % load".into(),
            rule: "≤ 2 × broker p99 + 20 ms".into(),
            measured: format!(
                "{:.1} ms vs limit {:.1} ms",
                h.p99_ms,
                2.0 * b.p99_ms + 20.0
            ),
            met: h.p99_ms <= 2.0 * b.p99_ms + 20.0,
        });
    }
    if let Some(many) = mode("apps") {
        let peak = |name: &str| {
            many.processes
                .iter()
                .filter(|p| p.name.starts_with(name))
                .map(|p| p.peak_rss_mib)
                .fold(0.0, f64::max)
        };
        let (fanout, dispatcher) = (peak("herald-fanout"), peak("herald-dispatcher"));
        targets.push(Target {
            name: "applications, memory".into(),
            rule: "fan-out and dispatcher ≤ 64 MiB peak RSS".into(),
            measured: format!("fan-out {fanout:.1} MiB, dispatcher {dispatcher:.1} MiB"),
            met: fanout <= 64.0 && dispatcher <= 64.0,
        });
    }
    if let Some(apps) = apps {
        let p99 = apps.propagation.p99_ms;
        targets.push(Target {
            name: "change → fan-out p99".into(),
            rule: "≤ 1,250 ms (cache refresh 1 s + 250 ms)".into(),
            measured: format!("{p99:.0} ms over {} changes", apps.propagation.samples),
            met: p99 <= 1250.0,
        });
    }
    if let Some(ordinary) = ordinary {
        let latency = &ordinary.load.result.latency;
        let webhooks = ordinary.load.rate * MAX_FANOUT as f64;
        for (name, rule, measured, limit) in [
            (
                format!("p50 at {webhooks:.0} webhooks/s"),
                "≤ 5 ms end to end",
                latency.p50_ms,
                5.0,
            ),
            (
                format!("p99 at {webhooks:.0} webhooks/s"),
                "≤ 25 ms end to end",
                latency.p99_ms,
                25.0,
            ),
        ] {
            targets.push(Target {
                name,
                rule: rule.into(),
                measured: format!("{measured:.1} ms"),
                met: measured <= limit,
            });
        }
        targets.push(Target {
            name: "idle stack".into(),
            rule: "broker, Redis, Herald ≤ 2 % of one CPU".into(),
            measured: format!("{:.2} %", ordinary.idle_cpu_percent),
            met: ordinary.idle_cpu_percent <= 2.0,
        });
    }
    let ordinary_processes = ordinary
        .iter()
        .flat_map(|o| o.processes.iter().map(|p| (p, "ordinary-load")));
    let heaviest = modes
        .iter()
        .flat_map(|m| m.processes.iter().map(move |p| (p, m.name.as_str())))
        .chain(ordinary_processes)
        .filter(|(p, _)| p.name.starts_with("herald-"))
        .map(|(p, mode)| (format!("{} in {mode}", p.name), p.peak_rss_mib))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((name, peak)) = heaviest {
        targets.push(Target {
            name: "memory".into(),
            rule: "every Herald process ≤ 64 MiB peak RSS".into(),
            measured: format!("largest {peak:.1} MiB ({name})"),
            met: peak <= 64.0,
        });
    }
    targets
}

/// Herald against the relayed broker baseline: the same broker work per
/// webhook that Herald cannot avoid (two topics), without Herald's own. These
/// are context for the targets, not targets.
pub fn against_relay(baselines: &Baselines, modes: &[ModeReport]) -> Vec<String> {
    let mut lines = Vec::new();
    let relay = baselines.relay_throughput.delivered_per_s;
    for name in ["fanout-1", "fanout-10"] {
        if let Some(mode) = modes.iter().find(|m| m.name == name) {
            lines.push(format!(
                "throughput, {name}: {:.2} of the relayed rate ({:.0} vs {relay:.0} webhooks/s)",
                mode.kafka.delivered_per_s / relay.max(1e-9),
                mode.kafka.delivered_per_s
            ));
        }
    }
    if let (Some(herald), Some(relayed)) = (
        fanout_1(modes).and_then(|m| m.latency.as_ref()),
        baselines.relay_latency.as_ref(),
    ) {
        let (h, r) = (&herald.result.latency, &relayed.result.latency);
        lines.push(format!(
            "latency at {:.0}/s: p50 {:+.1} ms, p99 {:+.1} ms over the relayed records' ({:.1} ms, {:.1} ms)",
            herald.rate,
            h.p50_ms - r.p50_ms,
            h.p99_ms - r.p99_ms,
            r.p50_ms,
            r.p99_ms
        ));
    }
    // The floors under Herald's stages: what the same client libraries
    // cost in herald-bench's baselines, beside what the stage built on them
    // costs per webhook.
    let process_us = |mode: &str, process: &str| {
        modes
            .iter()
            .find(|m| m.name == mode)?
            .processes
            .iter()
            .find(|p| p.name.starts_with(process))
            .map(|p| p.cpu_us_per_delivery)
    };
    let beside = |what: Option<f64>, name: &str| {
        what.map_or(String::new(), |us| {
            format!("; {name}: {us:.1} µs per webhook")
        })
    };
    lines.push(format!(
        "floor, a relay stage (one consume, one produce): {:.1} µs of CPU per record{}",
        (baselines.relay_client_us - baselines.broker_client_us).max(0.0),
        beside(
            process_us("fanout-1", "herald-fanout"),
            "herald-fanout at fan-out 1"
        )
    ));
    lines.push(format!(
        "floor, a bare POST (client and receiver in one process): {:.1} µs of CPU{}",
        baselines.receiver.cpu_us_per_post,
        beside(
            process_us("fanout-10", "herald-dispatcher"),
            "herald-dispatcher at fan-out 10"
        )
    ));
    lines
}

/// The fan-out 1 mode, which runs the latency phase.
fn fanout_1(modes: &[ModeReport]) -> Option<&ModeReport> {
    modes.iter().find(|m| m.name == "fanout-1")
}

/// Where the latency phase's time went: the machine's load, each
/// process's CPU, the broker's busiest threads, and Herald's histograms of
/// each hop.
pub fn latency_breakdown(baselines: &Baselines, modes: &[ModeReport]) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(mode) = fanout_1(modes) else {
        return lines;
    };
    if let (Some(herald), Some(relayed)) = (mode.latency.as_ref(), baselines.relay_latency.as_ref())
    {
        let waited = |load: &crate::herald::MachineLoad| {
            load.waited_percent
                .map_or_else(|| "n/a".to_owned(), |p| format!("{p:.0} %"))
        };
        lines.push(format!(
            "the machine meanwhile: cores {:.0} % busy, a task waiting for a core {} of the time (relayed: {:.0} %, {})",
            herald.machine.busy_percent,
            waited(&herald.machine),
            relayed.machine.busy_percent,
            waited(&relayed.machine),
        ));
    }
    let Some(split) = &mode.latency_split else {
        return lines;
    };
    let shares: Vec<String> = split
        .processes
        .iter()
        .map(|p| format!("{} {:.0} %", p.name, p.cpu_percent))
        .collect();
    lines.push(format!("  CPU of one core: {}", shares.join(", ")));
    for (process, threads) in &split.threads {
        let threads: Vec<String> = threads
            .iter()
            .map(|(name, percent)| format!("{name} {percent:.0} %"))
            .collect();
        lines.push(format!(
            "    {process}'s busiest threads: {}",
            threads.join(", ")
        ));
    }
    lines.push("of which, from Herald's histograms (p50 / p99 ms):".to_owned());
    for (name, p) in &split.histograms {
        let what = match name.as_str() {
            "herald_fanout_event_wait_seconds" => "event record → fan-out starts",
            "herald_delivery_first_attempt_wait_seconds" => "fan-out → first attempt starts",
            "herald_delivery_attempt_duration_seconds" => "the webhook request",
            "herald_delivery_end_to_end_seconds" => "end to end (event timestamp → 2xx)",
            "plain reader: event records" => "control: event record → a plain reader",
            "plain reader: delivery records" => "control: delivery record → a plain reader",
            other => other,
        };
        lines.push(format!(
            "  {what:<38} {:>7.1} / {:>7.1}   ({} samples)",
            p.p50_ms, p.p99_ms, p.samples
        ));
    }
    lines
}

/// Prints the summary table.
pub fn print(report: &Report) {
    let s = &report.setup;
    println!();
    println!(
        "Herald benchmark: {} × {}, broker {}",
        s.cpus, s.cpu, s.brokers
    );
    println!(
        "records of {} bytes, {} partitions, {} endpoints registered (10 subscribed), {} deliveries per throughput phase{}",
        s.record_bytes,
        s.partitions,
        s.registered_endpoints,
        s.deliveries_per_phase,
        if s.smoke {
            " (smoke run: figures mean nothing)"
        } else {
            ""
        }
    );
    println!("webhooks to {}", s.webhooks_to);
    println!();
    let b = &report.baselines;
    let broker = b.broker_throughput.delivered_per_s;
    println!(
        "{:<34} {:>11} {:>9} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>5}",
        "",
        "accepted/s",
        "ack p99",
        "arrived/s",
        "×broker",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "dup"
    );
    let row = |label: &str, r: &PhaseResult| {
        println!(
            "{label:<34} {:>11.0} {:>9.1} {:>11.0} {:>7.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>5}",
            r.accepted_per_s,
            r.accept_latency.p99_ms,
            r.delivered_per_s,
            r.delivered_per_s / broker.max(1e-9),
            r.latency.p50_ms,
            r.latency.p95_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.duplicates
        );
    };
    row("broker produce→consume", &b.broker_throughput);
    if let Some(rated) = &b.broker_latency {
        row(&format!("broker at {:.0}/s", rated.rate), &rated.result);
    }
    row("broker, relayed (two topics)", &b.relay_throughput);
    if let Some(rated) = &b.relay_latency {
        row(
            &format!("broker, relayed, at {:.0}/s", rated.rate),
            &rated.result,
        );
    }
    println!(
        "{:<34} {:>11} {:>11.0}   (bare POSTs, {} connections)",
        "receiver", "", b.receiver.posts_per_s, b.receiver.concurrency
    );
    for mode in &report.modes {
        if let Some(all_healthy) = &mode.all_healthy {
            row(&format!("{} (all healthy)", mode.name), all_healthy);
        }
        row(&format!("{} (Kafka in)", mode.name), &mode.kafka);
        if let Some(http) = &mode.http {
            row(&format!("{} (HTTP in)", mode.name), http);
        }
        if let Some(rated) = &mode.latency {
            row(
                &format!("{} at {:.0}/s", mode.name, rated.rate),
                &rated.result,
            );
        }
        if mode.dead_endpoints > 0 {
            println!(
                "{:<34} dead endpoint got {} requests during the phase (breaker)",
                "", mode.dead_endpoint_requests
            );
        }
    }
    println!();
    println!(
        "{:<40} {:>8} {:>7} {:>12} {:>12} {:>13}",
        "processes during each Kafka phase",
        "CPU s",
        "CPU %",
        "CPU µs/hook",
        "allocs/hook",
        "peak RSS MiB"
    );
    for mode in &report.modes {
        for p in &mode.processes {
            println!(
                "{:<40} {:>8.2} {:>7.0} {:>12.1} {:>12} {:>13.1}",
                format!("{} {}", mode.name, p.name),
                p.cpu_seconds,
                p.cpu_percent,
                p.cpu_us_per_delivery,
                p.allocations_per_delivery
                    .map_or("-".to_owned(), |a| format!("{a:.0}")),
                p.peak_rss_mib
            );
        }
        // Once the budget trims during the phase, the growth says nothing
        // of what an attempt costs.
        if let Some(log) = mode
            .attempt_log
            .as_ref()
            .filter(|log| log.redis_bytes > 0 && log.by_event as usize >= mode.kafka.delivered)
        {
            println!(
                "{:<40} +{} attempts, +{} endpoint-log entries (one per batch and endpoint), Redis +{:.1} MiB: {:.0} bytes per retained attempt, endpoint logs included",
                format!("{} attempt log", mode.name),
                log.by_event,
                log.by_endpoint,
                log.redis_bytes as f64 / (1 << 20) as f64,
                log.bytes_per_attempt()
            );
        }
        if !mode.redis_commands.is_empty() {
            let shown: Vec<String> = mode
                .redis_commands
                .iter()
                .take(8)
                .map(|c| {
                    format!(
                        "{} {:.2}×/{:.2} µs",
                        c.command, c.calls_per_webhook, c.us_per_webhook
                    )
                })
                .collect();
            println!(
                "{:<40} per webhook: {}",
                format!("{} Redis commands", mode.name),
                shown.join(", ")
            );
        }
        for (route, cost) in [
            ("POST /v1/events", &mode.http_cost),
            ("POST /v1/events/batch", &mode.http_batch_cost),
        ] {
            if let Some(cost) = cost {
                println!(
                    "{:<40} ingest {:.1} µs per accepted event, Herald {:.1}, Redis {:.1}",
                    format!("{} {route}", mode.name),
                    cost.ingest_us,
                    cost.herald_us,
                    cost.redis_us
                );
            }
        }
        let cost = CostPerWebhook::of(mode);
        println!(
            "{:<40} {:>8} {:>7} {:>12.1}   Herald ({:.1} ingest, {:.1} fan-out, {:.1} dispatchers), Redis {:.1}",
            format!("{} per webhook", mode.name),
            "",
            "",
            cost.herald_us,
            cost.ingest_us,
            cost.fanout_us,
            cost.dispatchers_us,
            cost.redis_us
        );
    }
    if let Some(ordinary) = &report.ordinary {
        print_ordinary(ordinary, &row);
    }
    if let Some(apps) = &report.apps {
        print_apps(apps, &row);
    }
    if !report.against_relay.is_empty() {
        println!();
        println!("against the relayed baseline (two topics, no other work)");
        for line in &report.against_relay {
            println!("  {line}");
        }
    }
    if !report.latency_breakdown.is_empty() {
        println!();
        println!("where the latency phase's time went");
        for line in &report.latency_breakdown {
            println!("  {line}");
        }
    }
    println!();
    println!("targets");
    for t in &report.targets {
        println!(
            "  {:<9} {:<26} {:<50} {}",
            if t.met { "met" } else { "NOT MET" },
            t.name,
            t.rule,
            t.measured
        );
    }
}

/// The `apps` mode's own figures.
fn print_apps(apps: &AppsReport, row: &impl Fn(&str, &PhaseResult)) {
    let p = &apps.propagation;
    println!();
    row("apps, first pass (cold caches)", &apps.first_pass);
    println!(
        "apps: {} applications × {MAX_FANOUT} endpoints = {} endpoints, registered through {} \
         in {:.1} s ({:.0}/s)",
        apps.applications,
        apps.endpoints,
        if apps.registered_through == "api" {
            "the API"
        } else {
            "Herald's stores straight into Redis"
        },
        apps.registration_seconds,
        apps.registrations_per_s
    );
    println!(
        "  Redis memory per endpoint {:.0} bytes; fan-out cache hit rate {:.1} % \
         ({} hits, {} misses) in the measured phase",
        apps.redis_bytes_per_endpoint,
        100.0 * apps.fanout_cache_hit_rate,
        apps.fanout_cache_hits,
        apps.fanout_cache_misses
    );
    println!(
        "  {} endpoint changes during the phase ({} failed); change → fan-out p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms over {} changes (events straight to Kafka)",
        apps.changes_during_phase, apps.failed_changes, p.p50_ms, p.p99_ms, p.max_ms, p.samples
    );
}

/// The `ordinary-load` mode's lines: its phase in the table's columns, then
/// each process idle and under the load.
fn print_ordinary(ordinary: &OrdinaryLoadReport, row: &impl Fn(&str, &PhaseResult)) {
    println!();
    row(
        &format!(
            "ordinary load, {:.0} events/s × {MAX_FANOUT}",
            ordinary.load.rate
        ),
        &ordinary.load.result,
    );
    println!();
    println!(
        "{:<40} {:>12} {:>10} {:>12} {:>13}",
        "processes of ordinary-load", "idle CPU %", "load CPU %", "CPU µs/hook", "peak RSS MiB"
    );
    for (idle, load) in ordinary.idle.iter().zip(&ordinary.processes) {
        println!(
            "{:<40} {:>12.2} {:>10.1} {:>12.1} {:>13.1}",
            idle.name,
            idle.cpu_percent,
            load.cpu_percent,
            load.cpu_us_per_delivery,
            load.peak_rss_mib
        );
    }
    println!(
        "{:<40} {:>12.2}   (over {:.0} s)",
        "all together", ordinary.idle_cpu_percent, ordinary.idle_seconds
    );
}
