# syntax=docker/dockerfile:1
# The `pulse` image: a release build in a Rust image, then the binary alone
# on Debian slim. protoc comes from the protoc-bin-vendored crate, so the
# builder needs no system protobuf compiler.
#
# scripts/check-docker (run by scripts/test) runs this build stage's steps
# in order on a copy of the build context, outside Docker, and lints this
# file with hadolint; see docs/operations.md "Docker".

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: the manifest, the build
# script, proto/ and migrations/, with stand-in sources, so that a change
# under src/ rebuilds only Pulse.
COPY Cargo.toml Cargo.lock build.rs diesel.toml ./
COPY proto proto
COPY migrations migrations
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin pulse \
    && rm -rf src
COPY src src
# The stand-ins were compiled after the real files' timestamps: touching
# the crate roots makes cargo rebuild Pulse itself (and nothing else).
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin pulse \
    && strip target/release/pulse \
    && target/release/pulse --version > version.txt \
    && grep -q '^pulse ' version.txt

FROM debian:bookworm-slim AS runtime
# curl: the HEALTHCHECK below. Versions are the distribution's current
# security updates, not pins that would break the build when they move.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home pulse
COPY --from=build /src/target/release/pulse /usr/local/bin/pulse
USER 10001
EXPOSE 50051 8080
# Inside a container Pulse listens on every interface, so it refuses to
# start until an API key exists (docker-compose.yml's `init` service makes
# the first one). DATABASE_URL comes from the environment, never the image.
ENV PULSE_GRPC_ADDR=0.0.0.0:50051 \
    PULSE_HTTP_ADDR=0.0.0.0:8080 \
    PULSE_LOG_FORMAT=json
# /readyz: 200 once the database answers and the schema is migrated; the
# port follows PULSE_HTTP_ADDR.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl --fail --silent --show-error --max-time 2 \"http://127.0.0.1:${PULSE_HTTP_ADDR##*:}/readyz\" || exit 1"]
ENTRYPOINT ["pulse"]
CMD ["serve"]
