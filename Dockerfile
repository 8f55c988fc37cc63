# Herald: one image with all three binaries (herald-ingest, herald-fanout,
# herald-dispatcher); the container's command picks one.
#
#   docker build -t herald .
#   docker run herald herald-ingest

# ---- build -----------------------------------------------------------------
# The toolchain the project is built and tested with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by the rdkafka crate (make, perl and a C
# compiler are in this image).
# Dependencies first, in their own layer: the manifests and empty crate
# roots are enough to build them, and this layer is reused until a manifest
# or the lock file changes.
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/build.rs crates/core/
COPY crates/ingest/Cargo.toml crates/ingest/
COPY crates/fanout/Cargo.toml crates/fanout/
COPY crates/dispatcher/Cargo.toml crates/dispatcher/
COPY crates/bench/Cargo.toml crates/bench/
COPY tests/Cargo.toml tests/
COPY proto proto
RUN for c in core ingest fanout dispatcher; do mkdir -p crates/$c/src && echo "" > crates/$c/src/lib.rs; done \
    && for c in ingest fanout dispatcher bench; do mkdir -p crates/$c/src && echo "fn main() {}" > crates/$c/src/main.rs; done \
    && mkdir -p tests/support tests/e2e && echo "" > tests/support/lib.rs && echo "" > tests/e2e/main.rs \
    && cargo build --release --locked -p herald-ingest -p herald-fanout -p herald-dispatcher \
    && rm -rf crates/*/src tests/support tests/e2e

# Then Herald itself.
COPY crates crates
COPY tests tests
RUN touch crates/*/src/*.rs \
    && cargo build --release --locked -p herald-ingest -p herald-fanout -p herald-dispatcher

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /src/target/release/herald-ingest /src/target/release/herald-fanout /src/target/release/herald-dispatcher /usr/local/bin/
USER 10001
ENV HERALD_INGEST_ADDR=0.0.0.0:8080 \
    HERALD_OPS_ADDR=0.0.0.0:9090 \
    HERALD_LOG_FORMAT=json
EXPOSE 8080 9090
# herald-ingest answers on 8080, fan-out and dispatchers on their ops port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:8080/healthz || curl -fsS http://127.0.0.1:9090/healthz"]
CMD ["herald-ingest"]
