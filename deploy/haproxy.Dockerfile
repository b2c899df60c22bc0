# HAProxy from Debian's package, for machines without an image registry (deploy/build-offline-images.sh).
# Laid out like the official `haproxy` image: config at /usr/local/etc/haproxy/haproxy.cfg, runs as
# user haproxy in the foreground (master-worker), bash available for the health check.
ARG BASE_IMAGE=stampede-base:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /usr/local/etc/haproxy /var/lib/haproxy \
 && cp /etc/haproxy/haproxy.cfg /usr/local/etc/haproxy/haproxy.cfg \
 && chown haproxy:haproxy /var/lib/haproxy
USER haproxy
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
