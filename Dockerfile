# syntax=docker/dockerfile:1
#
# dfgraph container image.
#
#   docker build -t dfgraph:local .
#   docker run --rm -p 8080:8080 dfgraph:local            # simulated cluster, demo
#   docker run --rm -p 8080:8080 dfgraph:local serve --manager 10.0.0.2:65003 --scheduler-cluster-id 1
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.
# The whole context (minus what .dockerignore drops) is copied, so new
# workspace members under crates/ build without touching this file.

############################ build ############################
FROM rust:1-bookworm AS builder

WORKDIR /src

# Protos are compiled by protox (pure Rust, no protoc); tikv-jemallocator
# builds jemalloc with the gcc/make the rust image already ships.
COPY . .

# The registry, git checkouts and target/ live in BuildKit cache mounts, so
# a rebuild after a source change recompiles only dfgraph itself. target/ is
# a cache mount, hence the binary is copied out in the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin dfgraph \
    && install -D -m 0755 target/release/dfgraph /out/dfgraph

############################ runtime ############################
FROM debian:bookworm-slim

# ca-certificates: TLS toward schedulers, the manager and rediss://.
# curl: the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 65532 dfgraph \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin dfgraph

COPY --from=builder /out/dfgraph /usr/local/bin/dfgraph

USER 65532:65532

# `listen` config key (src/config.rs); the built-in default 127.0.0.1:8080
# would be unreachable from outside the container.
ENV DFGRAPH_LISTEN=0.0.0.0:8080

EXPOSE 8080

# Liveness of `serve` only. Containers running another subcommand
# (e.g. `simulate`, which has no HTTP server) must override or disable it
# (docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

ENTRYPOINT ["/usr/local/bin/dfgraph"]
CMD ["serve"]
