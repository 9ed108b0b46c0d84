# Sourced by scripts/bolt.sh and scripts/pgo.sh, after
# benches/load/one_route.sh: the training run both optimizers learn from.
#
# train UPSTREAM_BIN STEER_BIN: STEER_BIN behind the three shapes the
# benchmarks measure (HTTP/1.1 in and out, HTTP/2 over TLS to HTTP/1.1,
# HTTP/2 over TLS to h2c), each under load (50 connections) and one
# request at a time (a tenth as many requests), whose wakeups and waits
# take paths that batching skips; the JSON access log on, as operators
# run steer and as benches/load/run.sh measures it. UPSTREAM_BIN serves
# as the upstream. STEER_BIN is stopped with SIGTERM after each shape (a
# graceful stop: an instrumented binary writes its profile as it exits).
# $REQUESTS per run under load.
train() {
  local upstream_bin="$1" steer_bin="$2" proto pid url run runs
  start_upstream "$upstream_bin"
  for proto in http1 h2c; do
    ACCESS=1 TLS=1 PROTO="$proto" write_routes
    "$steer_bin" run --config "$work/routes.toml" --workers 1 >"$work/train-$proto.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_ready "$work/train-$proto.log"
    url="/demo/bytes?n=64"
    runs=("$REQUESTS https://127.0.0.1:$https$url -c 50 -m 10"
      "$((REQUESTS / 10)) https://127.0.0.1:$https$url -c 1")
    [ "$proto" = http1 ] && runs+=("$REQUESTS http://127.0.0.1:$http$url --h1 -c 50"
      "$((REQUESTS / 10)) http://127.0.0.1:$http$url --h1 -c 1")
    for run in "${runs[@]}"; do
      # shellcheck disable=SC2086  # the run's words are h2load's arguments
      timeout 300 h2load -n $run >"$work/h2load.out"
      grep -q " 0 failed, 0 errored" "$work/h2load.out" || { cat "$work/h2load.out" >&2; exit 1; }
    done
    stop "$pid" 30
    [ "$killed" = 0 ] || { echo "train: steer ($proto) did not stop within 30 s; its profile is lost" >&2; exit 1; }
  done
}
