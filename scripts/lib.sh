# Shared helpers for scripts/up and scripts/test: install and start the
# local broker (Tansu, a Kafka-compatible broker) and Redis on 127.0.0.1.
# Source it; do not run it.

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
# memory:// and sqlite:// storage need these features.
TANSU_FEATURES="dynostore,libsql"

herald_log() { printf '[herald] %s\n' "$*" >&2; }
herald_die() { herald_log "error: $*"; exit 1; }

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

herald_ensure_redis() {
    command -v redis-server >/dev/null && return 0
    herald_log "installing redis-server (Debian package)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null || herald_die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null \
        || herald_die "cannot install redis-server; install Redis 7 and put redis-server on PATH"
}

herald_ensure_tansu() {
    if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "tansu $TANSU_VERSION"; then
        return 0
    fi
    herald_log "installing the Tansu broker $TANSU_VERSION with cargo (several minutes, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
        || herald_die "cannot install tansu"
    command -v tansu >/dev/null || herald_die "tansu was installed but is not on PATH (add \$CARGO_HOME/bin)"
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

# Starts Tansu on 127.0.0.1:$1, keeping its data and log in $2. Sets
# TANSU_PID.
#
# Storage is SQLite, not memory://: Tansu 0.6's in-memory engine answers a
# fetch that starts inside a record batch with the wrong records (later ones,
# some several times), which is exactly what a consumer does when it resumes
# from a committed offset. SQLite storage serves every offset correctly and
# survives a broker restart.
herald_start_tansu() {
    local port="$1" dir="$2"
    mkdir -p "$dir"
    # Tansu exports its own traces when OTEL_EXPORTER_OTLP_ENDPOINT is set;
    # keep it to itself. The SQLite path is relative to the data directory.
    (
        cd "$dir" && exec env -u OTEL_EXPORTER_OTLP_ENDPOINT tansu broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "sqlite://tansu.db"
    ) >"$dir/tansu.log" 2>&1 &
    TANSU_PID=$!
    herald_wait_port "$port" 60 || herald_die "Tansu did not start on port $port (see $dir/tansu.log)"
}
