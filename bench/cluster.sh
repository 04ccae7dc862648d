# shellcheck shell=bash
# Shared by bench/run, bench/profile and bench/idle: source it from the repository root. Starts
# a process cluster (nats-server with JetStream, db-0..db-{NODES-1} (3 by default) over
# PARTITIONS partitions (the dbnode's default), the gateway) from release binaries on free
# loopback ports in a temp dir, and removes everything on exit.
#
# After `start_cluster`: $work (temp dir), $base (gateway URL), $pids (the nats-servers,
# the dbnodes, the gateway, then whatever the caller adds), and `preload` (BENCH_USERS users
# u0..u{N-1}). NATS_NODES=3 runs a 3-server NATS cluster with R3 logs (STREAM_REPLICAS=3);
# NATS_SYNC=always makes JetStream fsync every append before acknowledging it.

say() { printf '==> %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_cluster() {
  say "building release binaries"
  cargo build --release -q -p dbnode -p gateway
  local bin=${CARGO_TARGET_DIR:-$PWD/target}/release
  work=$(mktemp -d)
  pids=()
  trap cleanup EXIT
  local rest_port nodes=${NATS_NODES:-1} urls=() routes=() cluster_ports=() i
  rest_port=$(free_port)
  # NATS_SYNC=always: JetStream fsyncs every append before acknowledging it (the default
  # flushes every 2 minutes).
  {
    echo "jetstream {"
    [ "${NATS_SYNC:-default}" = always ] && echo "  sync_interval: always"
    echo "}"
  } >"$work/nats.conf"
  for ((i = 0; i < nodes; i++)); do
    urls+=("nats://127.0.0.1:$(free_port)")
    cluster_ports+=("$(free_port)")
  done
  for ((i = 0; i < nodes; i++)); do
    local args=(-c "$work/nats.conf" -js -a 127.0.0.1 -p "${urls[i]##*:}" -sd "$work/js/nats-$i")
    if [ "$nodes" -gt 1 ]; then
      routes=()
      for p in "${cluster_ports[@]}"; do
        [ "$p" = "${cluster_ports[i]}" ] || routes+=("nats://127.0.0.1:$p")
      done
      args+=(-n "nats-$i" --cluster_name bench --cluster "nats://127.0.0.1:${cluster_ports[i]}"
        --routes "$(IFS=,; echo "${routes[*]}")")
    fi
    nats-server "${args[@]}" >"$work/nats-$i.log" 2>&1 &
    pids+=($!)
  done
  NATS_URL=$(IFS=,; echo "${urls[*]}")
  export NATS_URL RUST_LOG=warn STREAM_REPLICAS=$nodes
  # The nodes make the first partition map themselves (an open server): NODES nodes over
  # PARTITIONS partitions (the dbnode's defaults: 3 over 12).
  export NODES=${NODES:-3}
  [ -z "${PARTITIONS:-}" ] || export PARTITIONS
  say "started $nodes nats-server(s) (sync: ${NATS_SYNC:-default}); starting db-0..db-$((NODES - 1)), gateway"
  for ((i = 0; i < NODES; i++)); do
    DB_INSTANCE_ID=db-$i DATA_DIR=$work/db-$i "$bin/dbnode" >"$work/db-$i.log" 2>&1 &
    pids+=($!)
  done
  REST_PORT=$rest_port "$bin/gateway" >"$work/gateway.log" 2>&1 &
  pids+=($!)
  base=http://127.0.0.1:$rest_port
  for _ in $(seq 1 300); do curl -fsS "$base/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$base/ready" >/dev/null || { tail -n 20 "$work"/*.log; exit 1; }
}

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then say "kept $work"; else rm -rf "$work"; fi
}

# POSTs u0..u{BENCH_USERS-1} with wrk; sets $preload_ms.
preload() {
  say "preloading $BENCH_USERS users"
  local start have last from
  start=$(date +%s%N)
  have=$(user_count)
  last=-1
  while [ "$have" -lt "$BENCH_USERS" ]; do
    # Resume a little before what exists (the overlap answers 409); start over if stuck on a hole.
    from=$(( have > 5000 ? have - 5000 : 0 ))
    [ "$have" -eq "$last" ] && from=0
    BENCH_FROM=$from wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s bench/lua/preload.lua "$base" \
      >"$work/preload.out" || { cat "$work/preload.out"; exit 1; }
    last=$have
    have=$(user_count)
  done
  preload_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  say "preloaded in ${preload_ms} ms"
}

user_count() { curl -fsS "$base/api/users/count" | tr -dc 0-9; }
