#!/usr/bin/env bash
# Side by side in one run: one uvicorn server vs Ray Serve with 2 replicas (eSpeak, this machine).
#   scripts/bench_ray.sh OUTDIR [CLIENTS] [RUNS]     (RAY_ARGS="--ingress proxy ..." adds serve-ray flags)
# Starts both servers, runs `stream-tts bench` against each in turn RUNS times (alternating, so
# machine noise hits both alike), writes OUTDIR/{uvicorn,ray}-N.json and prints server TTFA
# p50/p95 and underruns per run.
set -euo pipefail
out=${1:?usage: scripts/bench_ray.sh OUTDIR [CLIENTS] [RUNS]}
clients=${2:-16}
runs=${3:-3}
py=${PYTHON:-python}
mkdir -p "$out"
u_port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
r_port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
$py -m stream_server serve --engine espeak --port "$u_port" >"$out/uvicorn.log" 2>&1 &
u_pid=$!
$py -m stream_server serve-ray --engine espeak --replicas 2 --num-cpus 0.5 ${RAY_ARGS:-} --port "$r_port" >"$out/ray.log" 2>&1 &
r_pid=$!
trap 'kill -INT $u_pid $r_pid 2>/dev/null; wait $u_pid $r_pid 2>/dev/null || true' EXIT
for name in uvicorn ray; do
  port=$u_port; [ "$name" = ray ] && port=$r_port
  ok=0
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  if [ $ok = 0 ]; then
    echo "bench_ray: the $name server did not become ready; end of $out/$name.log:" >&2
    tail -n 20 "$out/$name.log" >&2
    exit 1
  fi
done
sleep 5  # let the second Ray replica finish its start-up too
for i in $(seq 1 "$runs"); do
  for name in uvicorn ray; do
    port=$u_port; [ "$name" = ray ] && port=$r_port
    $py -m stream_server bench --url "ws://127.0.0.1:$port/v1/stream" --clients "$clients" \
      --rounds 2 --json "$out/$name-$i.json" >"$out/$name-$i.txt" 2>&1
  done
done
$py - "$out" "$runs" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
for name in ("uvicorn", "ray"):
    p50s, p95s, under = [], [], 0
    for i in range(1, runs + 1):
        level = json.load(open(f"{out}/{name}-{i}.json"))["levels"][0]
        p50s.append(level["server_ttfa_ms"]["p50"]); p95s.append(level["server_ttfa_ms"]["p95"])
        under += level["underruns"]["total"]
    print(f"{name:8s} server TTFA p50 {statistics.median(p50s):.1f} ms, p95 {statistics.median(p95s):.1f} ms "
          f"(per run p95: {', '.join(f'{v:.1f}' for v in p95s)}), underruns {under}")
PY
