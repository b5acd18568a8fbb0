# syntax=docker/dockerfile:1
# The portcullis image: one static binary (musl) on an empty base, running as
# a non-root user. The same image runs the controller (`controller`), the
# provisioned proxies (`proxy --gateway ns/name`) and standalone mode (`run`).
#
#   docker build -t portcullis:0.1.0 .
ARG RUST_VERSION=1.85

FROM rust:${RUST_VERSION}-alpine AS build
RUN apk add --no-cache musl-dev gcc ca-certificates
WORKDIR /src
COPY . .
# Caches survive between builds; the binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis \
 && cp target/release/portcullis /portcullis \
 && /portcullis --version

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /portcullis /portcullis
# 65532: the conventional "nonroot" user; no shell, no package manager, no
# writable path needed (the chart mounts the root filesystem read-only).
USER 65532:65532
EXPOSE 8080 8443 9901 9902
ENTRYPOINT ["/portcullis"]
CMD ["--help"]
