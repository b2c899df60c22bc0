# Redis from Debian's package, for machines without an image registry (deploy/build-offline-images.sh).
# Laid out like the official `redis` image: data in /data, runs as user redis, `redis-server` on PATH.
ARG BASE_IMAGE=stampede-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
# No config file: listen on every interface; protected mode off as in the official image (the
# container network is the boundary; set a password with --requirepass for anything else).
CMD ["redis-server", "--protected-mode", "no"]
