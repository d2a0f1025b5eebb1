# syntax=docker/dockerfile:1
# Multi-stage build of the `parley` binary. The assistant CLIs (Claude Code, Codex)
# are installed from the npm registry in the runtime image, and their config
# directories live on a volume so a container restart does not destroy sessions.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Build dependencies first so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
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
 && mkdir -p /data/claude /data/codex /data/work \
 && chown -R parley:parley /data
COPY --from=build /src/target/release/parley /usr/local/bin/parley
USER parley
ENV PARLEY_BIND=0.0.0.0:8080 \
    CLAUDE_CONFIG_DIR=/data/claude \
    CODEX_HOME=/data/codex \
    RUST_LOG=info
VOLUME ["/data"]
WORKDIR /data/work
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/parley"]
CMD ["serve"]
