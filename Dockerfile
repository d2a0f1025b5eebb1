# syntax=docker/dockerfile:1
# Multi-stage build of the `parley` binary. The assistant CLIs (Claude Code, Codex)
# are installed from the npm registry in the runtime image. Everything that must
# outlive the container lives under /data, a volume: the CLIs' config directories
# (transcripts, rollouts, logins) and the conversations' working directories
# (PARLEY_DATA_DIR=/data, so the workspace root is /data/workspaces). `parley serve`
# warns at start about any of them left on the container's own file system.
#
# tests/container.rs starts the binary with this file's ENV and runs its HEALTHCHECK
# command, so keep both in the forms it reads: one `ENV` block of KEY=value lines and
# an exec-form `CMD [...]`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Build dependencies first so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
# jemalloc's build-time options (docs/architecture.md#idle-event-streams).
COPY .cargo .cargo
COPY crates crates
COPY src src
COPY migrations migrations
COPY web web
RUN cargo build --release --locked --bin parley

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini nodejs npm git \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g --no-fund --no-audit @anthropic-ai/claude-code@2.1.329 @openai/codex@0.169.0 \
 && npm cache clean --force \
 && useradd --create-home --uid 10001 parley \
 && mkdir -p /data/claude /data/codex /data/workspaces \
 && chown -R parley:parley /data
COPY --from=build /src/target/release/parley /usr/local/bin/parley
USER parley
ENV PARLEY_BIND=0.0.0.0:8080 \
    PARLEY_AUTH=on \
    PARLEY_DATA_DIR=/data \
    PARLEY_IN_CONTAINER=true \
    PARLEY_LOG_FORMAT=json \
    CLAUDE_CONFIG_DIR=/data/claude \
    CODEX_HOME=/data/codex \
    RUST_LOG=info
VOLUME ["/data"]
WORKDIR /data
EXPOSE 8080
# Ready means the process answers and its database is reachable (GET /readyz).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/parley", "health"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/parley"]
CMD ["serve"]
