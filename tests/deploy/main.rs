//! Checks of the deployment files: the compose file's services, replicas,
//! health checks, start-up order and OTLP wiring, and the Dockerfile. They
//! run without a container engine: hadolint (installed by scripts/test)
//! checks the Dockerfile, and `docker compose config` the compose file
//! where Docker is installed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use herald_core::config::{Env, KafkaConfig};
use herald_core::retry::RetrySchedule;
use serde_yaml::Value;

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
}

fn compose() -> Value {
    let text =
        std::fs::read_to_string(repo_file("docker-compose.yml")).expect("docker-compose.yml");
    let mut value: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(!service.is_null(), "service {name} is missing");
    service
}

fn env_of<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

const HERALD: [&str; 3] = ["herald-ingest", "herald-fanout", "herald-dispatcher"];

#[test]
fn compose_has_the_whole_stack() {
    let compose = compose();
    let names: BTreeSet<&str> = compose["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .filter_map(Value::as_str)
        .collect();
    for expected in ["kafka", "kafka-init", "redis", "jaeger", "receiver"]
        .iter()
        .chain(HERALD.iter())
    {
        assert!(names.contains(expected), "no {expected} service");
    }
    let kafka_image = service(&compose, "kafka")["image"].as_str().unwrap();
    assert!(
        kafka_image.starts_with("apache/kafka:3."),
        "pinned official image, not {kafka_image}"
    );
    assert!(
        service(&compose, "redis")["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:7")
    );
    assert_eq!(
        service(&compose, "herald-dispatcher")["deploy"]["replicas"].as_u64(),
        Some(3)
    );
    assert_eq!(
        env_of(service(&compose, "kafka"), "KAFKA_PROCESS_ROLES"),
        Some("broker,controller"),
        "KRaft"
    );
}

#[test]
fn compose_checks_health_and_starts_in_order() {
    let compose = compose();
    for name in ["kafka", "redis"].iter().chain(HERALD.iter()) {
        let test = &service(&compose, name)["healthcheck"]["test"];
        assert!(
            test.is_sequence() && !test.as_sequence().unwrap().is_empty(),
            "{name} has no healthcheck"
        );
    }
    for name in HERALD {
        let depends = &service(&compose, name)["depends_on"];
        assert_eq!(
            depends["kafka-init"]["condition"], "service_completed_successfully",
            "{name}"
        );
        assert_eq!(depends["redis"]["condition"], "service_healthy", "{name}");
    }
    assert_eq!(
        service(&compose, "kafka-init")["depends_on"]["kafka"]["condition"],
        "service_healthy"
    );
    for name in ["herald-fanout", "herald-dispatcher"] {
        assert_eq!(
            service(&compose, name)["depends_on"]["herald-ingest"]["condition"],
            "service_healthy"
        );
    }
    // Longer than the dispatcher's default drain timeout (30 s).
    assert_eq!(
        service(&compose, "herald-dispatcher")["stop_grace_period"],
        "45s"
    );
}

#[test]
fn every_herald_service_sends_traces_to_jaeger() {
    let compose = compose();
    assert_eq!(
        env_of(service(&compose, "jaeger"), "COLLECTOR_OTLP_ENABLED"),
        Some("true")
    );
    for name in HERALD {
        let service = service(&compose, name);
        let endpoint = env_of(service, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
        assert_eq!(endpoint, "http://jaeger:4318", "{name}");
        assert_eq!(
            env_of(service, "OTEL_EXPORTER_OTLP_PROTOCOL"),
            Some("http/protobuf")
        );
        assert_eq!(env_of(service, "OTEL_SERVICE_NAME"), Some(name));
        assert_eq!(env_of(service, "HERALD_KAFKA_BROKERS"), Some("kafka:9092"));
        assert_eq!(
            env_of(service, "HERALD_REDIS_URL"),
            Some("redis://redis:6379")
        );
    }
}

#[test]
fn ingest_and_dispatchers_may_reach_the_example_receiver() {
    let compose = compose();
    let subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .expect("the compose network has a fixed subnet");
    let subnet = herald_core::destination::parse_cidrs(subnet).expect("a CIDR")[0];
    for name in ["herald-ingest", "herald-dispatcher"] {
        let allowed = env_of(service(&compose, name), "HERALD_ALLOWED_DESTINATION_CIDRS")
            .unwrap_or_else(|| panic!("{name} has no HERALD_ALLOWED_DESTINATION_CIDRS"));
        let allowed = herald_core::destination::parse_cidrs(allowed).expect("valid CIDRs");
        assert!(
            allowed.iter().any(|net| net.contains(&subnet)),
            "{name} does not allow the receiver's network {subnet}"
        );
    }
}

#[test]
fn the_init_job_creates_every_topic_herald_uses() {
    let compose = compose();
    let script = service(&compose, "kafka-init")["command"][0]
        .as_str()
        .unwrap();
    let kafka = KafkaConfig::from_env(&Env::default()).unwrap();
    let mut topics = vec![
        kafka.events_topic(),
        kafka.deliveries_topic(),
        kafka.topic(herald_core::topics::DLQ),
    ];
    topics.extend(RetrySchedule::default().tier_topics(&kafka));
    for topic in topics {
        assert!(
            script.contains(&format!("{topic}:")),
            "kafka-init does not create {topic}"
        );
    }
}

#[test]
fn the_dockerfile_builds_the_workspace_binaries_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo_file("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.matches("\nFROM ").count() >= 1 && dockerfile.contains(" AS build"),
        "multi-stage"
    );
    let copied: BTreeSet<String> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY --from=build"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|word| word.strip_prefix("/src/target/release/"))
        .map(str::to_owned)
        .collect();
    let mut binaries = BTreeSet::new();
    for krate in ["ingest", "fanout", "dispatcher"] {
        let manifest =
            std::fs::read_to_string(repo_file(&format!("crates/{krate}/Cargo.toml"))).unwrap();
        let parsed: toml_like::Manifest = toml_like::parse(&manifest);
        binaries.extend(parsed.bins);
    }
    assert_eq!(
        copied, binaries,
        "the image holds exactly the workspace's binaries"
    );
    assert!(
        dockerfile.contains("\nUSER 10001"),
        "runs as a non-root user"
    );
    assert!(dockerfile.contains("\nHEALTHCHECK "), "has a health check");
    let ignore = std::fs::read_to_string(repo_file(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "target/ stays out of the build context"
    );

    let output = Command::new(herald_tests::test_tool("hadolint"))
        .arg(repo_file("Dockerfile"))
        .output()
        .expect("run hadolint (scripts/test installs it)");
    assert!(
        output.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn docker_compose_parses_the_file_when_installed() {
    let available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        println!(
            "the docker compose client is not installed; the YAML checks above stand in for it"
        );
        return;
    }
    let output = Command::new("docker")
        .args(["compose", "-f"])
        .arg(repo_file("docker-compose.yml"))
        .args(["config", "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Just enough of Cargo.toml to list `[[bin]]` names.
mod toml_like {
    pub struct Manifest {
        pub bins: Vec<String>,
    }

    pub fn parse(text: &str) -> Manifest {
        let mut bins = Vec::new();
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin && let Some(name) = line.strip_prefix("name = ") {
                bins.push(name.trim_matches('"').to_owned());
            }
        }
        Manifest { bins }
    }
}

/// `kubectl kustomize <dir>`, as parsed documents.
fn render(dir: &str) -> (String, Vec<Value>) {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_file(dir))
        .output()
        .expect("kubectl is installed (scripts/test installs it)");
    assert!(
        output.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML"))
        .collect();
    (text, docs)
}

use serde::Deserialize as _;

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Validates rendered manifests against the Kubernetes API schemas.
fn validate(text: &str, dir: &str) {
    let path = std::env::temp_dir().join(format!("herald-{}.yaml", dir.replace('/', "-")));
    std::fs::write(&path, text).unwrap();
    let output = Command::new(herald_tests::test_tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.30.0"])
        .arg(&path)
        .output()
        .expect("run kubernetes-validate (scripts/test installs it)");
    assert!(
        output.status.success(),
        "{dir} does not validate: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_kubernetes_base_and_overlay_render_and_validate() {
    for dir in ["deploy/base", "deploy/overlays/production"] {
        let (text, docs) = render(dir);
        validate(&text, dir);
        for name in HERALD {
            let deployment = find(&docs, "Deployment", name);
            let spec = &deployment["spec"]["template"]["spec"];
            let container = &spec["containers"][0];
            assert_eq!(
                container["readinessProbe"]["httpGet"]["path"], "/readyz",
                "{dir} {name}"
            );
            assert_eq!(
                container["livenessProbe"]["httpGet"]["path"], "/healthz",
                "{dir} {name}"
            );
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !container["resources"][kind][resource].is_null(),
                        "{dir} {name} {kind}.{resource}"
                    );
                }
            }
            assert_eq!(
                spec["securityContext"]["runAsNonRoot"], true,
                "{dir} {name}"
            );
            assert_eq!(container["args"][0], name);
            // Graceful termination outlasts the drain timeout (30 s).
            assert!(
                spec["terminationGracePeriodSeconds"].as_u64().unwrap() > 30,
                "{dir} {name}"
            );
            find(&docs, "Service", name);
            find(&docs, "PodDisruptionBudget", name);
        }
        find(&docs, "ConfigMap", "herald-config");
        find(&docs, "Secret", "herald-api-keys");
        find(&docs, "Job", "herald-topics");
        let hpa = find(&docs, "HorizontalPodAutoscaler", "herald-dispatcher");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "herald-dispatcher");
        // No more dispatchers than partitions of herald.deliveries.
        let partitions: u64 =
            find(&docs, "ConfigMap", "herald-config")["data"]["HERALD_TOPIC_PARTITIONS"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        assert!(
            hpa["spec"]["maxReplicas"].as_u64().unwrap() <= partitions,
            "{dir}"
        );
        assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    }
    let (_, production) = render("deploy/overlays/production");
    let deployment = find(&production, "Deployment", "herald-dispatcher");
    assert_eq!(deployment["metadata"]["namespace"], "herald");
    assert_eq!(
        find(&production, "HorizontalPodAutoscaler", "herald-dispatcher")["spec"]["maxReplicas"],
        24
    );
}
