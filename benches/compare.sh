#!/usr/bin/env bash
# Side-by-side load test: direct to the backend, through nginx, through HAProxy, and through voxguard
# in three configurations (plain relay, signed webhooks, full media pipeline), on this machine, in one
# run. Prints one table (docs/PERFORMANCE.md explains it) and keeps the raw JSON lines.
#
#   benches/compare.sh                 # about 12 minutes
#   QUICK=1 benches/compare.sh         # about 4 minutes: shorter loads, one paced step
#   SMOKE=1 benches/compare.sh         # about 2 minutes, debug build: checks that every peer serves every
#                                      # load with no error and no lost message (.ci/run runs this);
#                                      # its figures mean nothing
#   ROUNDS=3 QUICK=1 benches/compare.sh # the loads three times over, peers interleaved within each round;
#                                      # the table shows each figure's median over the rounds and the
#                                      # spread of the per-round ratios (a noisy machine drifts over
#                                      # minutes: interleaving puts every peer through the same drift)
#   INSTRUCTIONS=1 benches/compare.sh  # about 6 minutes: each proxy under callgrind, user-space instructions
#                                      # per request or relayed message (deterministic to ~2 %: A/B runs
#                                      # on a noisy machine, where CPU time swings by half between runs)
#
# Settings (environment): DURATION (10s), CONNS (64), CALLS (64 flat-out calls), IDLE_CALLS (1000),
# IDLE_CONNS (1000 idle keep-alive HTTPS connections),
# PACED_STEPS ("250 500 750 1000"), PACED_DURATION (5s), ROUNDS (1), PEERS ("direct nginx haproxy voxguard
# voxguard-webhook voxguard-media"), LOADS ("http h2 ws"; h2: the GET and the GitHub-signed POST over
# HTTP/2, which every peer offers by ALPN beside HTTP/1.1), OUT (the results file; default in the temp dir),
# VOXGUARD_BIN (a voxguard binary to measure instead of the one built here: A/B runs of two builds).
# PROFILE_DIR (INSTRUCTIONS mode: keep each load's callgrind profile there, named peer-NN-short|long.pid,
# for callgrind_annotate).
#
# Everything listens on 127.0.0.1 only; every load is bounded in time; only the processes this script
# started are stopped. The proxy under test is pinned to CPU 1 and the load generator and backend to
# CPU 0 (taskset), so that the generator cannot starve the proxy (and each proxy gets one core:
# nginx one worker, HAProxy one thread, voxguard's runtime sizes itself to the one CPU it may use).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=${QUICK:-}
SMOKE=${SMOKE:-}
INSTRUCTIONS=${INSTRUCTIONS:-}
if [ -n "$INSTRUCTIONS" ]; then
  # Under callgrind a proxy runs ~50x slower: few connections, so that none saturates, and no idle load
  # (it has no messages). Each load runs twice, at its duration and three times that, on the same proxy
  # process; the instructions of the difference over the operations of the difference leave out
  # start-up, handshakes and warm-up.
  DURATION=${DURATION:-2s}; PACED_DURATION=${PACED_DURATION:-2s}; CONNS=${CONNS:-8}; CALLS=${CALLS:-8}
  PACED_STEPS=${PACED_STEPS:-10}; WS_WARMUP=${WS_WARMUP:-1s}; RAMP=${RAMP:-500ms}
  PEERS=${PEERS:-"nginx haproxy voxguard voxguard-webhook voxguard-media"}
fi
if [ -n "$SMOKE" ]; then
  DURATION=${DURATION:-1s}; PACED_DURATION=${PACED_DURATION:-1s}; CONNS=${CONNS:-4}; CALLS=${CALLS:-4}
  IDLE_CALLS=${IDLE_CALLS:-20}; IDLE_CONNS=${IDLE_CONNS:-20}; PACED_STEPS=${PACED_STEPS:-20}; WS_WARMUP=${WS_WARMUP:-1s}; RAMP=${RAMP:-500ms}
  PROFILE=${PROFILE:-debug}
fi
WS_WARMUP=${WS_WARMUP:-3s}
RAMP=${RAMP:-2s}
PROFILE=${PROFILE:-release}
DURATION=${DURATION:-$([ -n "$QUICK" ] && echo 4s || echo 10s)}
PACED_DURATION=${PACED_DURATION:-$([ -n "$QUICK" ] && echo 3s || echo 5s)}
CONNS=${CONNS:-64}
CALLS=${CALLS:-64}
IDLE_CALLS=${IDLE_CALLS:-1000}
IDLE_CONNS=${IDLE_CONNS:-1000}
PACED_STEPS=${PACED_STEPS:-$([ -n "$QUICK" ] && echo "500" || echo "250 500 750 1000")}
PEERS=${PEERS:-"direct nginx haproxy voxguard voxguard-webhook voxguard-media"}
LOADS=${LOADS:-"http h2 ws"}
SECRET=compare-secret
LOAD_CPU=0
PROXY_CPU=1
[ "$(nproc)" -ge 2 ] || { LOAD_CPU=0; PROXY_CPU=0; echo "warning: one CPU: proxy and load share it" >&2; }

# --- tools ---------------------------------------------------------------------------------------
missing=()
tools="nginx:nginx haproxy:haproxy openssl:openssl taskset:util-linux"
[ -z "$INSTRUCTIONS" ] || tools="$tools valgrind:valgrind"
for tool in $tools; do
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get install -y "${missing[@]}" >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y "${missing[@]}" >/dev/null; }
fi
PATH=$PATH:/usr/sbin
# The proxy and the harness are built apart: built together, cargo unifies the features of the
# dependencies they share, and the harness's dev-dependencies (tokio-tungstenite's client `connect`,
# which turns on tungstenite's `handshake`) changed the proxy's own types. That binary's session task
# was 512 bytes larger than the one `cargo build --release --bin voxguard` (the README, the
# Dockerfile) makes (docs/PERFORMANCE.md, nineteenth session).
PROFILE_FLAG=(); [ "$PROFILE" != release ] || PROFILE_FLAG=(--release)
(cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" --quiet --bin voxguard)
(cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" --quiet --example voxguard-load)
VOXGUARD=${VOXGUARD_BIN:-$ROOT/target/$PROFILE/voxguard}
LOAD=$ROOT/target/$PROFILE/examples/voxguard-load
ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d -t voxguard-compare.XXXXXX)
OUT=${OUT:-$WORK/results.jsonl}
: >"$OUT"
STARTED=()
cleanup() {
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"/voxguard-*.*/
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }

# --- certificate (ECDSA P-256, as in the issue's reference figures) and backend ------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=compare CA" \
  -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" -CAcreateserial -days 2 \
  -extfile "$WORK/leaf.ext" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy.pem"

taskset -c "$LOAD_CPU" "$LOAD" backend >"$WORK/backend.out" &
BACKEND_PID=$!
STARTED+=("$BACKEND_PID")
for _ in $(seq 50); do [ -s "$WORK/backend.out" ] && grep -q '^ws ' "$WORK/backend.out" && break; sleep 0.1; done
HTTP_BACKEND=$(awk '/^http /{print $2}' "$WORK/backend.out")
WS_BACKEND=$(awk '/^ws /{print $2}' "$WORK/backend.out")

# --- peer configurations ---------------------------------------------------------------------------
nginx_conf() { # $1 port
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 19000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 9000; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  upstream app { server $HTTP_BACKEND; keepalive 64; }
  upstream media { server $WS_BACKEND; }
  server {
    listen 127.0.0.1:$1 ssl http2;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    keepalive_requests 1000000;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /stream {
      proxy_pass http://media; proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection "upgrade";
      proxy_read_timeout 300s;
    }
  }
}
NGINX
}

haproxy_conf() { # $1 port
  cat >"$WORK/haproxy.cfg" <<HAPROXY
global
  nbthread 1
  maxconn 9000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout tunnel 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:$1 ssl crt $WORK/haproxy.pem alpn h2,http/1.1
  use_backend media if { path_beg /stream }
  default_backend app
backend app
  server app $HTTP_BACKEND
backend media
  server media $WS_BACKEND
HAPROXY
}

voxguard_conf() { # $1 port, $2 admin port, $3 plain|webhook|media
  # Each start gets a new data directory. The earlier ones' recordings are emptied, not deleted, until
  # the run ends: on ext4 without a journal (as on the reference machine) the kernel skips inodes
  # freed in the last one to six minutes when it allocates one, so creating a recording right after
  # deleting thousands cost ~1 ms of kernel CPU on the proxy's core instead of ~0.1 ms, and the next
  # load measured that (docs/PERFORMANCE.md, nineteenth session).
  find "$WORK" -path "$WORK/voxguard-*/recordings/*" -type f -size +0 -exec truncate -s 0 {} + 2>/dev/null || true
  local dir
  dir=$(mktemp -d "$WORK/voxguard-$3.XXXXXX")
  local hook="" twilio="" media=""
  if [ "$3" = webhook ]; then
    hook=$'[route.webhook]\nscheme = "github"\nsecret_env = "COMPARE_WEBHOOK_SECRET"'
    # Twilio signs the URL it called: the origin is the route's public_url, as behind a real edge.
    twilio=$'[route.webhook]\nscheme = "twilio"\nsecret_env = "COMPARE_WEBHOOK_SECRET"\npublic_url = "https://voice.example.com"'
  fi
  if [ "$3" = media ]; then
    # Every redactor on (the defaults), DTMF tones masked in both streams, encrypted recording.
    media=$'[route.media]\nprotocol = "twilio"\nrecord = true\ndtmf_events = "both"'
  fi
  cat >"$dir/proxy.toml" <<VOXGUARD
[server]
listen = "127.0.0.1:$1"
data_dir = "$dir/data"
max_connections = 40000
[server.tls]
cert_file = "$WORK/cert.pem"
key_file = "$WORK/key.pem"
[admin]
listen = "127.0.0.1:$2"
[audit]
dir = "$dir/data/audit"
[recording]
dir = "$dir/data/recordings"
[log]
level = "warn"
[[upstream]]
name = "app"
url = "http://$HTTP_BACKEND"
[[upstream]]
name = "media"
url = "http://$WS_BACKEND"
[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
[[route]]
name = "hook"
path_prefix = "/hook"
upstream = "app"
$hook
[[route]]
name = "twilio"
path_prefix = "/twilio"
upstream = "app"
$twilio
[[route]]
name = "stream"
path_prefix = "/stream"
upstream = "media"
websocket = true
$media
VOXGUARD
  echo "$dir/proxy.toml"
}

# --- one peer at a time ------------------------------------------------------------------------------
PEER_PIDS=()
WRAP=()
if [ -n "$INSTRUCTIONS" ]; then
  mkdir -p "$WORK/callgrind"
  [ -z "${PROFILE_DIR:-}" ] || mkdir -p "$PROFILE_DIR"
  WRAP=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file="$WORK/callgrind/%p")
fi
start_peer() { # $1 peer, $2 port → sets PEER_PIDS
  local peer=$1 port=$2
  case $peer in
    nginx)
      nginx_conf "$port"
      # Under callgrind, one process (its control cannot reach a worker that dropped root).
      taskset -c "$PROXY_CPU" "${WRAP[@]}" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" \
        -g "daemon off;${INSTRUCTIONS:+ master_process off;}" &
      local master=$!; STARTED+=("$master"); wait_port "$port"; sleep "$([ -n "$INSTRUCTIONS" ] && echo 2 || echo 0.3)"
      PEER_PIDS=("$master" $(pgrep -P "$master" || true)) ;;
    haproxy)
      haproxy_conf "$port"
      taskset -c "$PROXY_CPU" "${WRAP[@]}" haproxy -db -f "$WORK/haproxy.cfg" &
      local pid=$!; STARTED+=("$pid"); wait_port "$port"; PEER_PIDS=("$pid") ;;
    voxguard*)
      local variant=${peer#voxguard}; variant=${variant#-}; variant=${variant:-plain}
      local conf; conf=$(voxguard_conf "$port" "$(free_port)" "$variant")
      COMPARE_WEBHOOK_SECRET=$SECRET taskset -c "$PROXY_CPU" "${WRAP[@]}" "$VOXGUARD" run --config "$conf" \
        >"$WORK/voxguard-$variant.log" 2>&1 &
      local pid=$!; STARTED+=("$pid"); wait_port "$port"; PEER_PIDS=("$pid") ;;
  esac
}

stop_peer() {
  for pid in "${PEER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PEER_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PEER_PIDS=()
}

load() { # $1 peer, then harness arguments; appends one JSON line to $OUT
  [ -z "$INSTRUCTIONS" ] || { load_instructions "$@"; return 0; }
  local peer=$1; shift
  local pids=()
  for pid in "${PEER_PIDS[@]}"; do pids+=(--pid "$pid"); done
  local line
  line=$(taskset -c "$LOAD_CPU" "$LOAD" "$@" --label "$peer" ${CA:+--ca "$CA"} "${pids[@]}" \
    --load-pid "$BACKEND_PID") || {
    echo "load failed for $peer: $*" >&2; return 0; }
  line="${line%\}},\"round\":$ROUND}"
  echo "$line" >>"$OUT"
  echo "  $line" >&2
}

# The proxy's user-space instructions so far (every process of it), after a callgrind dump.
instructions() {
  local total=0 pid file
  for pid in "${PEER_PIDS[@]}"; do
    callgrind_control -d "$pid" >/dev/null 2>&1 || continue
    file=
    for _ in $(seq 50); do
      file=$(ls -t "$WORK/callgrind/$pid".* 2>/dev/null | head -1)
      [ -n "$file" ] && grep -q '^summary:' "$file" && break
      sleep 0.1
    done
    [ -n "$file" ] || continue
    total=$((total + $(awk '/^summary:/{print $2}' "$file")))
    [ -z "${PROFILE_DIR:-}" ] || cp "$file" "$PROFILE_DIR/$PROFILE_TAG.$pid"
    rm -f "$WORK/callgrind/$pid".*
  done
  echo "$total"
}

# INSTRUCTIONS mode: the load at its duration and at three times that; appends the longer one's JSON
# line with user_instructions_per_op = Δ instructions ÷ Δ operations.
load_instructions() {
  local peer=$1; shift
  [ ${#PEER_PIDS[@]} -gt 0 ] || return 0 # direct: no proxy to count
  [[ " $* " != *" --idle "* ]] || return 0
  local short=() long=() prev=
  for a in "$@"; do
    # The duration each load was given (whole seconds), and three times it.
    if [ "$prev" = --duration ]; then short+=("$a"); long+=("$(( ${a%s} * 3 ))s"); else short+=("$a"); long+=("$a"); fi
    prev=$a
  done
  local pid
  LOAD_NO=$((${LOAD_NO:-0} + 1)); PROFILE_TAG=$(printf '%s-%02d-short' "$peer" "$LOAD_NO")
  for pid in "${PEER_PIDS[@]}"; do callgrind_control -z "$pid" >/dev/null 2>&1 || true; done
  local first; first=$(taskset -c "$LOAD_CPU" "$LOAD" "${short[@]}" --label "$peer" --ca "$CA") || { echo "load failed for $peer" >&2; return 0; }
  local i1; i1=$(instructions)
  PROFILE_TAG=${PROFILE_TAG%-short}-long
  for pid in "${PEER_PIDS[@]}"; do callgrind_control -z "$pid" >/dev/null 2>&1 || true; done
  local second; second=$(taskset -c "$LOAD_CPU" "$LOAD" "${long[@]}" --label "$peer" --ca "$CA") || { echo "load failed for $peer" >&2; return 0; }
  local i2; i2=$(instructions)
  python3 - "$first" "$second" "$i1" "$i2" >>"$OUT" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
i1, i2 = int(sys.argv[3]), int(sys.argv[4])
ops = b["ops"] - a["ops"]
b["user_instructions_per_op"] = (i2 - i1) / ops if ops > 0 and i1 and i2 else None
print(json.dumps(b))
PY
  echo "  $(tail -1 "$OUT")" >&2
}

# Each load runs on a freshly started peer, so that memory left over from one load (allocator
# caches, session caches) does not flatter or spoil the next one's RSS figures.
fresh() { # $1 peer; sets HTTP, WS, CA
  if [ "$1" = direct ]; then
    PEER_PIDS=(); CA=
    HTTP=http://$HTTP_BACKEND; WS=ws://$WS_BACKEND
  else
    [ ${#PEER_PIDS[@]} -eq 0 ] || stop_peer
    local port; port=$(free_port); start_peer "$1" "$port"; CA=$WORK/ca.pem
    HTTP=https://127.0.0.1:$port; WS=wss://127.0.0.1:$port
  fi
}

# With ROUNDS > 1 the whole sequence repeats; every result line carries its round.
for ROUND in $(seq "${ROUNDS:-1}"); do
  [ "${ROUNDS:-1}" -eq 1 ] || echo "=== round $ROUND of $ROUNDS" >&2
  for peer in $PEERS; do
    echo "== $peer" >&2
    # The webhook configuration differs from the plain one only on HTTP, the media one only on WebSocket.
    if [ "$peer" != voxguard-media ] && [[ " $LOADS " == *" http "* ]]; then
      fresh "$peer"; load "$peer" http --url "$HTTP/" --connections "$CONNS" --duration "$DURATION"
      fresh "$peer"; load "$peer" http --url "$HTTP/hook" --connections "$CONNS" --duration "$DURATION" \
        --post-bytes 2048 --sign-github "$SECRET"
      fresh "$peer"; load "$peer" http --url "$HTTP/twilio" --connections "$CONNS" --duration "$DURATION" \
        --post-bytes 2048 --sign-twilio "$SECRET" --public-url https://voice.example.com
      if [ "$peer" != direct ]; then
        fresh "$peer"; load "$peer" http --url "$HTTP/" --connections 16 --duration "$DURATION" --new-connections
        fresh "$peer"; load "$peer" http --url "$HTTP/" --connections "$IDLE_CONNS" --idle \
          --duration 2s --warmup "$WS_WARMUP"
      fi
    fi
    # HTTP/2 from the client (Go's HTTP client, curl and browsers choose it when offered), HTTP/1.1 to
    # the backend, one request at a time per connection as above. The backend speaks no TLS, so no
    # direct row.
    if [ "$peer" != direct ] && [ "$peer" != voxguard-media ] && [[ " $LOADS " == *" h2 "* ]]; then
      fresh "$peer"; load "$peer" http --h2 --url "$HTTP/" --connections "$CONNS" --duration "$DURATION"
      fresh "$peer"; load "$peer" http --h2 --url "$HTTP/hook" --connections "$CONNS" --duration "$DURATION" \
        --post-bytes 2048 --sign-github "$SECRET"
    fi
    if [ "$peer" != voxguard-webhook ] && [[ " $LOADS " == *" ws "* ]]; then
      fresh "$peer"; load "$peer" ws --url "$WS/stream" --calls "$CALLS" --rate 0 --duration "$DURATION"
      if [ "$peer" != direct ]; then
        fresh "$peer"; load "$peer" ws --url "$WS/stream" --calls "$IDLE_CALLS" --idle \
          --duration 2s --warmup "$WS_WARMUP" --ramp "$RAMP"
      fi
      # The media route holds each frame until 2 more have come (dtmf_lookahead_ms, 40 ms) each way:
      # the harness also times each round trip from the send of the frame that ended its hold. Its
      # bound for the tail windows is the table's: 20 ms plus the 80 ms hold.
      hold=(--tail-bound 20ms)
      [ "$peer" != voxguard-media ] || hold=(--hold-frames 4 --tail-bound 100ms)
      for calls in $PACED_STEPS; do
        fresh "$peer"; load "$peer" ws --url "$WS/stream" --calls "$calls" --rate 50 \
          --duration "$PACED_DURATION" --warmup "$WS_WARMUP" --ramp "$RAMP" "${hold[@]}"
      done
    fi
    [ ${#PEER_PIDS[@]} -eq 0 ] || stop_peer
  done
done

# Start-up to ready with the shipped proxy.toml (embedded defaults, dev certificate, local data dir):
# the first start creates the dev certificate and keys, later ones load them.
if [ -z "$INSTRUCTIONS" ] && [[ " $PEERS " == *" voxguard "* ]]; then
  echo "== voxguard start-up" >&2
  mkdir -p "$WORK/startup"
  python3 - "$VOXGUARD" "$ROOT/proxy.toml" "$WORK/startup" "$(free_port)" "$(free_port)" >>"$OUT" <<'PY'
import json, os, statistics, subprocess, sys, time, urllib.request
binary, config, cwd, tls, admin = sys.argv[1:]
env = dict(os.environ, VOXGUARD_LISTEN=f"127.0.0.1:{tls}", VOXGUARD_ADMIN_LISTEN=f"127.0.0.1:{admin}",
           VOXGUARD_LOG_LEVEL="warn")
times = []
for _ in range(6):
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "run", "--config", config], cwd=cwd, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).status == 200:
                break
        except Exception:
            if p.poll() is not None or time.monotonic() - t0 > 10:
                sys.exit("voxguard did not become ready")
            time.sleep(0.001)
    times.append((time.monotonic() - t0) * 1000)
    p.terminate(); p.wait()
print(json.dumps({"mode": "startup", "label": "voxguard", "first_ms": times[0],
                  "median_ms": statistics.median(times[1:])}))
PY
  tail -1 "$OUT" | sed 's/^/  /' >&2
fi

python3 "$ROOT/benches/compare_table.py" ${SMOKE:+--check} "$OUT"
echo "raw results: $OUT" >&2
