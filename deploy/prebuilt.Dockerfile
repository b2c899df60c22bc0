# The node image from a binary built outside Docker (deploy/build-offline-images.sh): the project
# Dockerfile's `runtime-base` stage (user, ports, health check, entrypoint) plus the binary. The
# build context is a directory holding just `stampede`, built for the base image's glibc
# (Debian bookworm or older).
ARG BASE_IMAGE=stampede-runtime-base:bookworm
FROM ${BASE_IMAGE}
COPY stampede /usr/local/bin/stampede
RUN ["/usr/local/bin/stampede", "--version"]
