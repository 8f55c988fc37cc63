# Shared helpers for scripts/up, scripts/test and scripts/bench: install and
# start the local broker and Redis on 127.0.0.1. Source it; do not run it.
#
# The broker is Apache Kafka by default (HERALD_BROKER=kafka): its jars are
# resolved from Maven Central by Maven (scripts/kafka/pom.xml pins the
# version), cached, and started as KRaft nodes, each broker and controller in
# one process. HERALD_BROKER=tansu runs Tansu instead, a Kafka-compatible
# broker that `cargo install` alone provides.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERALD_BROKER="${HERALD_BROKER:-kafka}"
HERALD_CACHE_DIR="${HERALD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}"

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
# memory:// and sqlite:// storage need these features.
TANSU_FEATURES="dynostore,libsql"

KAFKA_POM="$REPO_ROOT/scripts/kafka/pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_POM")"
# Heap of one test broker. Kafka's own start script takes 1 GiB; a test node
# holding a few thousand small partitions runs in half of that.
KAFKA_HEAP="${KAFKA_HEAP:-512m}"

herald_log() { printf '[herald] %s\n' "$*" >&2; }
herald_die() { herald_log "error: $*"; exit 1; }

herald_sudo() { if [ "$(id -u)" -ne 0 ]; then sudo "$@"; else "$@"; fi; }

APT_UPDATED=""
herald_apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        herald_sudo apt-get update -qq >/dev/null || herald_die "apt-get update failed"
        APT_UPDATED=yes
    fi
    DEBIAN_FRONTEND=noninteractive herald_sudo apt-get install -y -qq "$@" >/dev/null
}

# A free TCP port on 127.0.0.1.
herald_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until something accepts connections on 127.0.0.1:$1 (at most $2 s).
herald_wait_port() {
    local port="$1" limit="${2:-60}" waited=0
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        sleep 0.2
        waited=$((waited + 1))
        [ "$waited" -ge $((limit * 5)) ] && return 1
    done
    return 0
}

# Waits until the broker at $1 (host:port) answers a metadata request that
# lists at least $2 brokers (at most $3 s). A broker whose port is open may
# still be starting; one that lists itself in the metadata serves clients.
herald_wait_metadata() {
    local address="$1" want="${2:-1}" limit="${3:-60}" start=$SECONDS listed
    while :; do
        listed="$(python3 "$REPO_ROOT/scripts/kafka/metadata.py" "$address" 2>/dev/null | wc -l)"
        [ "$listed" -ge "$want" ] && return 0
        [ $((SECONDS - start)) -ge "$limit" ] && return 1
        sleep 0.2
    done
}

herald_ensure_redis() {
    command -v redis-server >/dev/null && return 0
    herald_log "installing redis-server (Debian package)"
    herald_apt_install redis-server \
        || herald_die "cannot install redis-server; install Redis 7 and put redis-server on PATH"
}

# Debian's Chromium and its WebDriver, for the console's and portal's
# browser tests (HERALD_TEST_CHROMIUM, HERALD_TEST_CHROMEDRIVER name others).
herald_ensure_browser() {
    local chromium="${HERALD_TEST_CHROMIUM:-/usr/bin/chromium}"
    local driver="${HERALD_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}"
    [ -x "$chromium" ] && [ -x "$driver" ] && return 0
    herald_log "installing Chromium and its WebDriver (Debian packages chromium, chromium-driver)"
    herald_apt_install chromium chromium-driver \
        || herald_die "cannot install chromium and chromium-driver; the browser tests need them"
}

# Starts Redis on 127.0.0.1:$1, keeping its files in $2. Sets REDIS_PID.
herald_start_redis() {
    local port="$1" dir="$2"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
        --protected-mode yes >"$dir/redis.log" 2>&1 &
    REDIS_PID=$!
    herald_wait_port "$port" 30 || herald_die "Redis did not start on port $port (see $dir/redis.log)"
}

# --- the suite's Python tools -------------------------------------------------

# Installs the Python tools of scripts/test-tools/requirements.txt (every
# version pinned) into a virtualenv of their own under HERALD_CACHE_DIR, one
# per version of that file, and sets HERALD_TEST_TOOLS to its bin directory.
herald_ensure_test_tools() {
    local requirements="$REPO_ROOT/scripts/test-tools/requirements.txt"
    local digest
    digest="$(sha256sum "$requirements" | cut -c1-12)"
    local venv="$HERALD_CACHE_DIR/test-tools-$digest"
    local tool missing=""
    for tool in openapi-spec-validator st hadolint kubernetes-validate; do
        [ -x "$venv/bin/$tool" ] || missing=1
    done
    if [ -n "$missing" ]; then
        herald_log "installing the suite's Python tools (scripts/test-tools/requirements.txt)"
        rm -rf "$venv"
        mkdir -p "$HERALD_CACHE_DIR"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            herald_apt_install python3-venv || herald_die "cannot create a Python virtualenv; install python3-venv"
            python3 -m venv "$venv" || herald_die "cannot create a Python virtualenv in $venv"
        fi
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
            || { rm -rf "$venv"; herald_die "cannot install the suite's Python tools from PyPI"; }
    fi
    HERALD_TEST_TOOLS="$venv/bin"
}

# --- the broker, whichever it is ---------------------------------------------

# Installs what HERALD_BROKER needs.
herald_ensure_broker() {
    case "$HERALD_BROKER" in
        kafka) herald_ensure_kafka ;;
        tansu) herald_ensure_tansu ;;
        *) herald_die "HERALD_BROKER=$HERALD_BROKER: use kafka (Apache Kafka, the default) or tansu" ;;
    esac
}

# Starts a single broker on 127.0.0.1:$1, keeping its data and log in $2.
# Sets BROKER_PID and BROKER_LOG, and exports HERALD_KAFKA_FETCH_WAIT when the
# broker needs a fetch wait of its own (see herald_start_tansu).
herald_start_broker() {
    case "$HERALD_BROKER" in
        kafka) herald_start_kafka "$@" ;;
        tansu) herald_start_tansu "$@" ;;
        *) herald_die "HERALD_BROKER=$HERALD_BROKER: use kafka or tansu" ;;
    esac
}

# --- Apache Kafka ----------------------------------------------------------------

# Java's major version, or 0 when there is no java.
herald_java_major() {
    command -v java >/dev/null || { echo 0; return; }
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

herald_ensure_java() {
    if [ "$(herald_java_major)" -lt 17 ]; then
        herald_log "installing Java 17 (Debian package openjdk-17-jre-headless)"
        herald_apt_install openjdk-17-jre-headless || herald_die "cannot install Java 17; Apache Kafka 4 needs Java 17 or newer"
        [ "$(herald_java_major)" -ge 17 ] || herald_die "java on PATH is older than 17; put Java 17+ first on PATH"
    fi
    if ! command -v mvn >/dev/null; then
        herald_log "installing Maven (Debian package maven)"
        herald_apt_install maven || herald_die "cannot install Maven"
    fi
}

# The directory of the pinned broker's jars; a change to the pom makes a new one.
herald_kafka_libs() {
    local digest
    digest="$(sha256sum "$KAFKA_POM" | cut -c1-12)"
    echo "$HERALD_CACHE_DIR/kafka-$KAFKA_VERSION-$digest/libs"
}

# Resolves the pinned Apache Kafka broker and its dependencies from Maven
# Central into the cache, once. Sets KAFKA_LIBS.
herald_ensure_kafka() {
    herald_ensure_java
    KAFKA_LIBS="$(herald_kafka_libs)"
    [ -f "$KAFKA_LIBS/.complete" ] && return 0
    herald_log "resolving Apache Kafka $KAFKA_VERSION with Maven into $KAFKA_LIBS (once)"
    local partial="$KAFKA_LIBS.partial"
    rm -rf "$partial"
    mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$partial" >&2 \
        || herald_die "Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    rm -rf "$KAFKA_LIBS"
    mv "$partial" "$KAFKA_LIBS"
    touch "$KAFKA_LIBS/.complete"
}

# A new KRaft cluster id: 16 random bytes in URL-safe base64, as Kafka's own
# `kafka-storage random-uuid` prints them (never starting with '-').
herald_kafka_cluster_id() {
    python3 -c '
import base64, uuid
while True:
    id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not id.startswith("-"):
        print(id)
        break'
}

# Prepares one KRaft node (broker and controller in one process) in $1:
# node id $2, client port $3, controller port $4, controller voters $5
# ("1@127.0.0.1:9093,…"), cluster id $6, heap $7, replication factor $8.
# Writes $1/server.properties, formats $1/data unless it already holds a
# formatted log, and writes $1/run, which starts the node in the foreground
# (so a test can start it again after killing it).
herald_prepare_kafka_node() {
    local dir="$1" node_id="$2" port="$3" controller_port="$4" voters="$5"
    local cluster_id="$6" heap="$7" replication="$8"
    local min_isr=$((replication > 1 ? replication - 1 : 1))
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<EOF
# One KRaft node of Herald's local broker, written by scripts/lib.sh.
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# Herald creates its own topics; a typo must not create one silently.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$replication
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replication
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
# A new consumer group gets its partitions at once rather than after 3 s.
group.initial.rebalance.delay.ms=0
# Two cores: fewer threads than Kafka's defaults (3 network, 8 I/O).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
# Small index files: a test broker holds thousands of small partitions.
log.index.size.max.bytes=1048576
EOF
    if [ ! -f "$dir/data/meta.properties" ]; then
        java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.properties" \
            kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
            >"$dir/format.log" 2>&1 \
            || herald_die "cannot format the Kafka log directory $dir/data (see $dir/format.log)"
    fi
    cat >"$dir/run" <<EOF
#!/usr/bin/env bash
# Starts Kafka node $node_id in the foreground (written by scripts/lib.sh).
ulimit -n "\$(ulimit -Hn)" 2>/dev/null || true
exec java -Xms$heap -Xmx$heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \\
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \\
    -Dlog4j2.configurationFile="$REPO_ROOT/scripts/kafka/log4j2.properties" \\
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
EOF
    chmod +x "$dir/run"
}

# Starts a single Apache Kafka node on 127.0.0.1:$1, keeping its data and log
# in $2 (a directory that already holds a formatted node is reused as it is,
# with its topics). Sets BROKER_PID and BROKER_LOG.
herald_start_kafka() {
    local port="$1" dir="$2" controller_port cluster_id
    controller_port="$(herald_free_port)"
    cluster_id="$(herald_kafka_cluster_id)"
    herald_prepare_kafka_node "$dir" 1 "$port" "$controller_port" "1@127.0.0.1:$controller_port" \
        "$cluster_id" "$KAFKA_HEAP" 1
    BROKER_LOG="$dir/kafka.log"
    "$dir/run" >"$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    herald_wait_metadata "127.0.0.1:$port" 1 120 \
        || herald_die "Apache Kafka did not answer on port $port within 120 s (see $BROKER_LOG)"
}

# Prepares (does not start) a cluster of $1 KRaft nodes in $2/node-1 … with
# Herald's topics replicated to all of them (min.insync.replicas one less).
# Each node starts with $2/node-N/run; $2/bootstrap holds the client address
# list, $2/nodes one "id port" line per node. The broker-failure tests start,
# kill and restart the nodes themselves.
herald_prepare_kafka_cluster() {
    local count="$1" dir="$2" cluster_id voters="" bootstrap="" i
    local -a ports controller_ports
    cluster_id="$(herald_kafka_cluster_id)"
    for i in $(seq 1 "$count"); do
        ports[i]="$(herald_free_port)"
        controller_ports[i]="$(herald_free_port)"
        voters="${voters:+$voters,}$i@127.0.0.1:${controller_ports[i]}"
        bootstrap="${bootstrap:+$bootstrap,}127.0.0.1:${ports[i]}"
    done
    mkdir -p "$dir"
    : >"$dir/nodes"
    for i in $(seq 1 "$count"); do
        herald_prepare_kafka_node "$dir/node-$i" "$i" "${ports[i]}" "${controller_ports[i]}" "$voters" \
            "$cluster_id" "${KAFKA_CLUSTER_HEAP:-256m}" "$count"
        echo "$i ${ports[i]}" >>"$dir/nodes"
    done
    echo "$bootstrap" >"$dir/bootstrap"
}

# --- Tansu -------------------------------------------------------------------

herald_ensure_tansu() {
    if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "tansu $TANSU_VERSION"; then
        return 0
    fi
    herald_log "installing the Tansu broker $TANSU_VERSION with cargo (several minutes, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
        || herald_die "cannot install tansu"
    command -v tansu >/dev/null || herald_die "tansu was installed but is not on PATH (add \$CARGO_HOME/bin)"
}

# Starts Tansu on 127.0.0.1:$1, keeping its data and log in $2. Sets
# BROKER_PID and BROKER_LOG.
#
# Storage is SQLite, not memory://: Tansu 0.6's in-memory engine answers a
# fetch that starts inside a record batch with the wrong records (later ones,
# some several times), which is exactly what a consumer does when it resumes
# from a committed offset. SQLite storage serves every offset correctly and
# survives a broker restart.
#
# Tansu 0.6 holds every fetch for the consumer's whole fetch.wait.max.ms,
# even with records waiting, so Herald's consumers are told to wait only
# 10 ms there (HERALD_KAFKA_FETCH_WAIT); Kafka answers as soon as a record
# arrives, and Herald's default suits it.
herald_start_tansu() {
    local port="$1" dir="$2"
    mkdir -p "$dir"
    export HERALD_KAFKA_FETCH_WAIT="${HERALD_KAFKA_FETCH_WAIT:-10ms}"
    BROKER_LOG="$dir/tansu.log"
    # Tansu exports its own traces when OTEL_EXPORTER_OTLP_ENDPOINT is set;
    # keep it to itself. The SQLite path is relative to the data directory.
    (
        cd "$dir" && exec env -u OTEL_EXPORTER_OTLP_ENDPOINT tansu broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "sqlite://tansu.db"
    ) >"$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    herald_wait_metadata "127.0.0.1:$port" 1 60 \
        || herald_die "Tansu did not answer on port $port (see $BROKER_LOG)"
}
