# fleetdns container image: `docker build -t fleetdns:0.1.0 .` at the repository root.
# The Kubernetes manifests in deploy/ run it as user 65532 with a read-only root
# filesystem; it needs no shell and writes nothing.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Dependencies first, against placeholder sources: this layer is rebuilt only
# when Cargo.toml or Cargo.lock change, not on every source edit. The benches
# are copied because Cargo.toml declares them and cargo checks that they exist.
COPY Cargo.toml Cargo.lock ./
COPY benches benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin fleetdns \
    && rm -rf src
# The real sources; config/demo is embedded in the binary (`fleetdns demo`).
COPY src src
COPY config config
# COPY keeps the sources' timestamps, which can be older than the placeholder
# build's outputs: touch them so that cargo rebuilds fleetdns itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin fleetdns \
    && install -m 0755 target/release/fleetdns /usr/local/bin/fleetdns

# glibc and libgcc without a shell or package manager; the `nonroot` user is 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/fleetdns /usr/local/bin/fleetdns
# Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
# DNS (UDP and TCP), ops (/healthz, /readyz, /metrics), mesh (mTLS over TCP).
EXPOSE 5353/udp 5353/tcp 9153/tcp 7950/tcp
ENTRYPOINT ["/usr/local/bin/fleetdns"]
