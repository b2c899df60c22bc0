# The Stampede node image.
#
#   docker build -t stampede .
#   docker run --rm -p 8080:8080 -p 61613:61613 -p 9090:9090 stampede
#
# Base images are build arguments, for mirrors and air-gapped machines:
#   BUILDER_IMAGE  an image with a Rust toolchain (cargo) and a C linker, Debian bookworm or older
#   RUNTIME_IMAGE  the image the binary runs on; its glibc must be at least the builder's
#
# Without an image registry, deploy/build-offline-images.sh builds the `runtime-base` stage on a
# base image made from Debian's packages and adds a binary built on the host (see docs/deploy.md).
# Plain Dockerfile syntax only: builds with BuildKit and with the legacy builder alike.
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# Everything but the binary. The first stage, so `--target runtime-base` builds nothing else.
FROM ${RUNTIME_IMAGE} AS runtime-base
# ca-certificates: rediss:// to a Redis with a public certificate.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stampede \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin stampede
COPY deploy/stampede-probe /usr/local/bin/stampede-probe
# NO_COLOR: plain log lines for `docker logs`.
ENV RUST_LOG=info NO_COLOR=1
# 8080: WebSocket (/ws); 61613: STOMP over TCP; 9090: admin (/healthz, /readyz, /metrics, /api/v1).
EXPOSE 8080 61613 9090
USER 10001:10001
# bash's /dev/tcp, no curl needed. Kubernetes ignores this and uses the chart's probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["stampede-probe", "/healthz"]
# Settings come from STAMPEDE_* environment variables (docs/configuration.md) or flags given as
# the container's command. SIGTERM drains (STAMPEDE_DRAIN_PERIOD, default 30s): give the container
# at least that long to stop (docker stop -t, stop_grace_period, terminationGracePeriodSeconds).
ENTRYPOINT ["/usr/local/bin/stampede"]

# The workspace's manifests alone (Cargo.toml of every member, and Cargo.lock): the builder copies
# them by content, so its dependency layer is reused until a manifest changes.
FROM ${BUILDER_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -name Cargo.toml -not -path './target/*' -exec install -D -m 0644 {} /manifests/{} \; \
 && install -m 0644 Cargo.lock /manifests/Cargo.lock

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# Dependencies first, in their own layer: built with stub sources (one per target a manifest
# names, plus src/lib.rs and src/main.rs), which are then removed. The vendored crates
# (vendor/README.md) are dependencies too: copied whole, not stubbed.
COPY --from=manifests /manifests/ ./
COPY vendor/ vendor/
RUN set -e; \
    for manifest in $(find . -mindepth 2 -name Cargo.toml -not -path './vendor/*'); do \
        member=$(dirname "$manifest"); \
        for stub in src/lib.rs src/main.rs $(sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest"); do \
            mkdir -p "$member/$(dirname "$stub")"; \
            case "$stub" in src/lib.rs) : >"$member/$stub" ;; *) echo 'fn main() {}' >"$member/$stub" ;; esac; \
            echo "$member/$stub" >>/tmp/stubs; \
        done; \
    done; \
    cargo build --release --locked -p stampede; \
    xargs rm -f </tmp/stubs
COPY . .
# touch: the stub build's outputs are newer than the copied sources.
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p stampede \
 && install -D -m 0755 target/release/stampede /out/stampede \
 && /out/stampede --version

FROM runtime-base AS runtime
COPY --from=builder /out/stampede /usr/local/bin/stampede
