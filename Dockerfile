# Multi-stage build of the `pulse` binary. The build steps mirror what CI runs
# (`cargo build --locked`); protoc comes from the protoc-bin-vendored crate, so
# the builder needs no system protobuf compiler.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not refetch the registry.
COPY Cargo.toml Cargo.lock ./
RUN cargo fetch --locked
COPY build.rs diesel.toml ./
COPY proto proto
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bin pulse \
    && strip target/release/pulse

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home pulse
COPY --from=build /src/target/release/pulse /usr/local/bin/pulse
USER pulse
EXPOSE 50051 8080
ENV PULSE_GRPC_ADDR=0.0.0.0:50051 \
    PULSE_HTTP_ADDR=0.0.0.0:8080 \
    PULSE_LOG_FORMAT=json
ENTRYPOINT ["pulse"]
CMD ["serve"]
