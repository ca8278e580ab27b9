# Builds all Tollgate binaries into one small image; docker-compose.yml picks the entrypoint.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tollgate-cp /src/target/release/tollgatectl \
     /src/target/release/tollgate-dp /src/target/release/tollgate-echo /usr/local/bin/
COPY examples /etc/tollgate/examples
USER 65534:65534
