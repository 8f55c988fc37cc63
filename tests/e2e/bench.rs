//! The benchmark still works end to end: a short `herald-bench --smoke` run
//! against the test broker and Redis. Its timings mean nothing here and are
//! not looked at; what must hold is that every mode ran, every webhook
//! arrived exactly once with a valid signature (the benchmark fails
//! otherwise), and the report has every figure and target.

use std::process::Command;

use herald_tests::{Behaviour, Receiver, bin_path, infra, log_dir, random_suffix};
use serde_json::Value;

/// What a finished `herald-bench --smoke` run left: its stdout, its JSON
/// report and its run id. Fails the test if the run failed.
struct SmokeRun {
    stdout: String,
    report: Value,
    run_id: String,
}

/// Whether the suite runs on Tansu, which must keep the run's topics.
fn tansu() -> bool {
    std::env::var("HERALD_TEST_BROKER").is_ok_and(|broker| broker == "tansu")
}

/// Runs `herald-bench --smoke` against the test broker and Redis, with
/// `extra` arguments.
async fn smoke_run(extra: &[&str]) -> SmokeRun {
    let infra = infra();
    let logs = log_dir().join(format!("bench-{}", random_suffix()));
    std::fs::create_dir_all(&logs).expect("log dir");
    let json_path = logs.join("report.json");
    let bench = bin_path("herald-bench");
    let mut command = Command::new(&bench);
    if tansu() {
        command.arg("--keep-topics");
    }
    command
        .args(["--smoke", "--brokers", &infra.kafka_brokers])
        .args(["--redis", &infra.redis_url])
        .args(extra)
        .arg("--bin-dir")
        .arg(bench.parent().expect("bin dir"))
        .arg("--log-dir")
        .arg(&logs)
        .arg("--json")
        .arg(&json_path);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run herald-bench"))
        .await
        .expect("bench task");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "herald-bench failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    let report =
        serde_json::from_slice(&std::fs::read(&json_path).expect("JSON report")).expect("JSON");
    let run_id = stderr
        .split_whitespace()
        .skip_while(|word| *word != "run")
        .nth(1)
        .and_then(|id| id.strip_suffix(':'))
        .unwrap_or_else(|| panic!("no run id in:\n{stderr}"))
        .to_owned();
    SmokeRun {
        stdout,
        report,
        run_id,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke_run_of_the_benchmark_reports_every_mode_and_target() {
    let infra = infra();
    let SmokeRun {
        stdout,
        report,
        run_id,
        ..
    } = smoke_run(&[]).await;
    assert!(stdout.contains("targets"), "no targets in:\n{stdout}");
    assert_eq!(report["setup"]["smoke"], true);
    let broker = &report["baselines"]["broker_throughput"];
    assert_eq!(broker["delivered"], broker["expected"]);
    assert!(broker["delivered_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        report["baselines"]["receiver"]["posts_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(report["baselines"]["broker_latency"]["result"]["latency"]["p50_ms"].is_number());
    let relay = &report["baselines"]["relay_throughput"];
    assert_eq!(relay["delivered"], relay["expected"]);
    assert_eq!(relay["duplicates"], 0);
    assert!(report["baselines"]["relay_latency"]["result"]["latency"]["p50_ms"].is_number());
    let against_relay = report["against_relay"].as_array().expect("against_relay");
    assert_eq!(against_relay.len(), 5, "{}", report["against_relay"]);
    // The floors: what the client libraries cost herald-bench itself.
    for (line, needle) in against_relay[3..]
        .iter()
        .zip(["floor, a relay stage", "floor, a bare POST"])
    {
        assert!(line.as_str().unwrap().starts_with(needle), "{line}");
    }
    // CPU time is counted in clock ticks: a smoke run's few records may
    // take none. The bare POSTs run flat out for a while, so they take
    // some.
    for floor in [
        &report["baselines"]["broker_client_us"],
        &report["baselines"]["relay_client_us"],
    ] {
        let floor = floor.as_f64().unwrap();
        assert!(floor.is_finite() && floor >= 0.0, "{}", report["baselines"]);
    }
    let post_floor = report["baselines"]["receiver"]["cpu_us_per_post"]
        .as_f64()
        .unwrap();
    assert!(
        post_floor.is_finite() && post_floor > 0.0,
        "{}",
        report["baselines"]
    );

    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "fanout-1",
            "fanout-10",
            "fanout-10-one-dead",
            "slow-endpoints-1-dispatcher",
            "slow-endpoints-2-dispatchers",
            "apps"
        ]
    );
    for mode in modes {
        let kafka = &mode["kafka"];
        assert!(kafka["expected"].as_u64().unwrap() > 0, "{mode}");
        assert_eq!(kafka["delivered"], kafka["expected"], "{mode}");
        assert_eq!(kafka["duplicates"], 0, "{mode}");
        let processes: Vec<&str> = mode["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(processes.contains(&"herald-fanout"), "{processes:?}");
        for process in mode["processes"].as_array().unwrap() {
            assert!(
                process["peak_rss_mib"].as_f64().unwrap() > 1.0,
                "no memory figure for {process}"
            );
        }
    }
    // Redis's commands during fan-out 1's Kafka phase: the attempt log's
    // batches among them, one HSET per batch of webhooks.
    let commands = modes[0]["redis_commands"]
        .as_array()
        .expect("redis_commands");
    let hset = commands
        .iter()
        .find(|c| c["command"] == "hset")
        .unwrap_or_else(|| panic!("no HSET among {commands:?}"));
    let batches_per_webhook = hset["calls_per_webhook"].as_f64().unwrap();
    assert!(
        batches_per_webhook > 0.0 && batches_per_webhook <= 1.0,
        "{hset}"
    );
    // The latency phase's time, hop by hop, from Herald's own histograms:
    // every event passed each of them once.
    let fanout_1 = &modes[0];
    let latency_events = fanout_1["latency"]["result"]["delivered"].as_u64().unwrap();
    let split: Vec<(&str, u64)> = fanout_1["latency_split"]["histograms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry[0].as_str().unwrap(),
                entry[1]["samples"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        split.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        [
            "herald_fanout_event_wait_seconds",
            "herald_delivery_first_attempt_wait_seconds",
            "herald_delivery_attempt_duration_seconds",
            "herald_delivery_end_to_end_seconds",
        ]
    );
    for (name, samples) in &split {
        assert!(
            *samples >= latency_events,
            "{name}: {samples} samples for {latency_events} events"
        );
    }
    let machine = &fanout_1["latency"]["machine"];
    let busy = machine["busy_percent"].as_f64().unwrap();
    assert!(busy > 0.0 && busy <= 100.0, "{machine}");
    assert!(
        report["latency_breakdown"]
            .as_array()
            .is_some_and(|lines| lines.len() >= 5),
        "{}",
        report["latency_breakdown"]
    );

    let dead = &modes[2];
    assert_eq!(dead["dead_endpoints"], 1);
    // Its target compares with an all-healthy phase of its own.
    let all_healthy = &dead["all_healthy"];
    assert!(all_healthy["expected"].as_u64().unwrap() > 0, "{dead}");
    assert_eq!(all_healthy["delivered"], all_healthy["expected"]);
    assert_eq!(all_healthy["duplicates"], 0);
    assert!(
        modes[1]["all_healthy"].is_null(),
        "only the dead mode has one"
    );
    assert!(
        dead["dead_endpoint_requests"].as_u64().unwrap() >= 1,
        "the dead endpoint was never tried: {dead}"
    );
    assert_eq!(modes[4]["dispatchers"], 2);
    let dispatchers: Vec<&Value> = modes[4]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("herald-dispatcher"))
        .collect();
    assert_eq!(dispatchers.len(), 2, "{}", modes[4]["processes"]);
    let http = &modes[0]["http"];
    assert_eq!(http["delivered"], http["expected"]);

    // The ordinary-load mode: an idle stack of ingest, fan-out and two
    // dispatchers (plus what --observe adds), then a rated phase to ten
    // endpoints.
    let ordinary = &report["ordinary"];
    let load = &ordinary["load"]["result"];
    assert!(load["expected"].as_u64().unwrap() > 0, "{ordinary}");
    assert_eq!(load["delivered"], load["expected"], "{ordinary}");
    assert_eq!(ordinary["load"]["rate"], 200.0);
    let idle: Vec<&str> = ordinary["idle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        idle,
        [
            "herald-ingest",
            "herald-fanout",
            "herald-dispatcher-1",
            "herald-dispatcher-2"
        ]
    );
    assert!(ordinary["idle_cpu_percent"].as_f64().unwrap() >= 0.0);
    assert!(stdout.contains("ordinary load, 200 events/s"), "{stdout}");

    // The apps mode: every application's events reached exactly its own
    // endpoints (the run fails on one that reached another's), and its own
    // figures are there.
    let apps = &report["apps"];
    assert_eq!(apps["applications"], 20, "{apps}");
    assert_eq!(apps["endpoints"], 200, "{apps}");
    assert_eq!(apps["registered_through"], "api");
    assert!(
        apps["redis_bytes_per_endpoint"].as_f64().unwrap() > 0.0,
        "{apps}"
    );
    let lookups =
        apps["fanout_cache_hits"].as_u64().unwrap() + apps["fanout_cache_misses"].as_u64().unwrap();
    assert!(
        lookups >= modes[5]["kafka"]["events"].as_u64().unwrap(),
        "{apps}"
    );
    assert_eq!(apps["failed_changes"], 0, "{apps}");
    assert_eq!(apps["propagation"]["samples"], 3, "{apps}");
    assert!(stdout.contains("change → fan-out"), "{stdout}");

    let targets: Vec<&str> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in [
        "throughput, fan-out 1",
        "throughput, fan-out 10",
        "one endpoint dead",
        "two dispatchers",
        "latency p50 at 20 % load",
        "latency p99 at 20 % load",
        "p50 at 2000 webhooks/s",
        "p99 at 2000 webhooks/s",
        "idle stack",
        "memory",
        "applications, throughput",
        "applications, memory",
        "change → fan-out p99",
    ] {
        assert!(
            targets.contains(&expected),
            "{expected} missing: {targets:?}"
        );
    }

    // It leaves no Redis key of the run behind.
    let mut redis = redis::Client::open(infra.redis_url.as_str())
        .expect("Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("bench-{run_id}:*"))
        .query_async(&mut redis)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "{} Redis keys left behind", keys.len());

    // Nor, on Apache Kafka, a topic.
    if !tansu() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &infra.kafka_brokers)
            .create()
            .expect("metadata client");
        let metadata = consumer
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .expect("metadata");
        let left: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|t| t.name())
            .filter(|name| name.starts_with(&format!("bench-{run_id}")))
            .collect();
        assert!(left.is_empty(), "topics left behind: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apps_mode_can_write_its_endpoints_straight_into_redis() {
    let SmokeRun { report, .. } = smoke_run(&["--modes", "apps", "--seed-directly"]).await;
    let modes = report["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 1, "{modes:?}");
    let kafka = &modes[0]["kafka"];
    assert!(kafka["expected"].as_u64().unwrap() > 0, "{kafka}");
    assert_eq!(kafka["delivered"], kafka["expected"], "{kafka}");
    assert_eq!(kafka["duplicates"], 0, "{kafka}");
    let apps = &report["apps"];
    assert_eq!(apps["registered_through"], "redis", "{apps}");
    assert_eq!(apps["endpoints"], 200, "{apps}");
    // The changes go through the API to endpoints the API never created.
    assert_eq!(apps["failed_changes"], 0, "{apps}");
    assert_eq!(apps["propagation"]["samples"], 3, "{apps}");
}

#[tokio::test(flavor = "multi_thread")]
async fn against_a_target_url_the_dispatchers_count_the_deliveries() {
    let target = Receiver::start(Behaviour::Accept).await;
    let SmokeRun { report, run_id, .. } = smoke_run(&["--target-url", &target.url()]).await;
    assert!(
        report["setup"]["webhooks_to"]
            .as_str()
            .unwrap()
            .contains(&target.url()),
        "{}",
        report["setup"]
    );
    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["fanout-1", "fanout-10"]);
    assert!(
        modes[0]["latency"]["result"]["latency"]["p50_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // The dispatchers' count matches what really reached the target: every
    // event of each Kafka phase, once per subscribed endpoint.
    let arrived = target.id_counts();
    for mode in modes {
        let kafka = &mode["kafka"];
        assert_eq!(kafka["delivered"], kafka["expected"], "{mode}");
        let prefix = format!("{run_id}-{}-kafka-", mode["name"].as_str().unwrap());
        let at_target: usize = arrived
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            at_target as u64,
            kafka["expected"].as_u64().unwrap(),
            "{mode}"
        );
    }
}
