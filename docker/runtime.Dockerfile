# Runtime image of one ringstore binary on a prebuilt base, for hosts without a registry:
# scripts/build-images stages the binary alone as the build context and runs
#
#   docker build -f docker/runtime.Dockerfile --build-arg BASE=ringstore/base:bookworm \
#       --build-arg BIN=dbnode -t ringstore/dbnode:latest <dir holding dbnode>
#
# The base must have librocksdb7.8, ca-certificates and curl (ringstore/base:bookworm has).
# On hosts that can pull, dbnode/Dockerfile and gateway/Dockerfile build the same images
# from source.
ARG BASE=ringstore/base:bookworm
FROM ${BASE}
ARG BIN
LABEL org.opencontainers.image.vendor=ringstore \
      org.opencontainers.image.title="ringstore ${BIN}"

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home ringstore \
    && mkdir -p /data/db \
    && chown -R ringstore:ringstore /data
# The staged binaries: BIN, and for dbnode the operator's CLI `ringstore` beside it.
COPY . /usr/local/bin/

ENV RINGSTORE_BIN=${BIN} \
    DATA_DIR=/data/db \
    NATS_URL=nats://nats:4222 \
    LOG_FORMAT=json \
    RUST_LOG=info
WORKDIR /data
USER 10001:10001
# gateway: GET /health answers 200; dbnode: the process (PID 1) is alive.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/bin/sh", "-c", "if [ \"$RINGSTORE_BIN\" = gateway ]; then curl -fsS -o /dev/null http://127.0.0.1:${REST_PORT:-3001}/health; else /usr/local/bin/dbnode --check; fi"]
# exec: the binary itself is PID 1 and gets SIGTERM from `docker stop` (graceful shutdown).
ENTRYPOINT ["/bin/sh", "-c", "exec \"/usr/local/bin/$RINGSTORE_BIN\" \"$@\"", "--"]
