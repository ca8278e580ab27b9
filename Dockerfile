# All Tollgate binaries in one small image; docker-compose.yml picks the command.
#   docker build -t tollgate:dev .
FROM rust:1-bookworm AS build
WORKDIR /src

# 1. Dependencies only: the manifests, the lock file, the protos and stub
#    sources. This layer is rebuilt only when a manifest or Cargo.lock changes,
#    so editing the code does not rebuild the ~300 dependencies.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY shared/Cargo.toml shared/build.rs shared/
COPY control-plane/Cargo.toml control-plane/
COPY data-plane/Cargo.toml data-plane/
COPY data-plane/plugin-api/Cargo.toml data-plane/plugin-api/
COPY data-plane/plugins/Cargo.toml data-plane/plugins/
COPY data-plane/lb/Cargo.toml data-plane/lb/
COPY data-plane/telemetry/Cargo.toml data-plane/telemetry/
COPY data-plane/proxy/Cargo.toml data-plane/proxy/
COPY integration-tests/Cargo.toml integration-tests/
COPY examples/echo-upstream/Cargo.toml examples/echo-upstream/
RUN set -e; \
    for crate in shared control-plane data-plane data-plane/plugin-api data-plane/plugins \
                 data-plane/lb data-plane/telemetry data-plane/proxy integration-tests \
                 examples/echo-upstream; do \
      mkdir -p "$crate/src"; touch "$crate/src/lib.rs"; \
    done; \
    mkdir -p control-plane/src/bin; \
    for bin in control-plane/src/bin/tollgate-cp.rs control-plane/src/bin/tollgatectl.rs \
               data-plane/src/main.rs examples/echo-upstream/src/main.rs; do \
      echo 'fn main() {}' > "$bin"; \
    done; \
    cargo build --release --locked --bins; \
    # Forget the stubs and their artifacts: only the dependencies are kept.
    rm -rf target/release/.fingerprint/tollgate-* target/release/deps/*tollgate* \
           target/release/build/tollgate-* target/release/tollgate* \
           shared/src control-plane/src data-plane/src data-plane/*/src integration-tests/src \
           examples/echo-upstream/src

# 2. The real sources.
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/tollgate/cp /var/lib/tollgate/dp /var/lib/tollgate/ca /var/lib/tollgate/join \
 && chown -R 65534:65534 /var/lib/tollgate
COPY --from=build /src/target/release/tollgate-cp /src/target/release/tollgatectl \
     /src/target/release/tollgate-dp /src/target/release/tollgate-echo /usr/local/bin/
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY deploy/healthcheck.sh /usr/local/bin/tollgate-healthcheck
COPY examples /etc/tollgate/examples
COPY deploy/compose/gateway.yaml /etc/tollgate/compose/gateway.yaml
# Data planes own /var/lib/tollgate/dp (config cache, --state-dir); the
# control plane /var/lib/tollgate/cp (its store and cluster CA); compose
# mounts the published CA certificate at /var/lib/tollgate/ca and the join
# tokens at /var/lib/tollgate/join. Both belong to the unprivileged user, so
# named volumes mounted there start with the right owner.
USER 65534:65534
WORKDIR /var/lib/tollgate
# 8000 proxy, 8100 data-plane status, 7070 admin API, 7071 config stream, 9090 control-plane metrics.
EXPOSE 8000 8100 7070 7071 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["tollgate-healthcheck"]
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["tollgate-dp", "--help"]
