#!/usr/bin/env bash
# User-space instructions per webhook verification, counted by callgrind on the criterion bench
# (`benches/signature.rs`): the same count on every run, where time on a shared VM moves by more
# than a verifier change gains (docs/PERFORMANCE.md, thirty-first session). Callgrind's CPU has no
# SHA extensions, so SHA-1 and SHA-256 count at their portable code's cost, far above their share
# of the time on a host that has them.
#
#   benches/verify_instructions.sh                          # the cases below
#   benches/verify_instructions.sh twilio-voice github/1024 # criterion case names (regexes)
#   SIGNATURE_BENCH=path/to/signature-<hash> benches/…      # a bench binary built elsewhere (A/B)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(twilio-voice 'twilio/1024' 'twilio-callback/1024' 'github/1024'
  'stripe/1024' 'standard-webhooks/1024' 'slack/1024' 'telnyx/1024')

if ! command -v valgrind >/dev/null; then
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get install -y valgrind >/dev/null 2>&1 ||
    { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y valgrind >/dev/null; }
fi

BENCH=${SIGNATURE_BENCH:-}
if [ -z "$BENCH" ]; then
  BENCH=$(cd "$ROOT" && cargo bench --bench signature --no-run 2>&1 |
    sed -n 's/.*Executable benches\/signature.rs (\(.*\))/\1/p')
  [[ $BENCH = /* ]] || BENCH=$ROOT/$BENCH
fi
[ -x "$BENCH" ] || { echo "no signature bench binary at '$BENCH'" >&2; exit 1; }

OUT=$(mktemp -t verify-callgrind.XXXXXX)
trap 'rm -f "$OUT"' EXIT
# Instructions inside every scheme's `verify`, and the calls to it, for one criterion filter. The
# bench verifies each of its cases once before it measures any (whatever the filter), so a run
# that matches no case counts those alone, and each case's figure is taken over that baseline.
count() {
  valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$OUT" \
    --toggle-collect='*as voxguard::admission::signature::SignatureScheme>::verify' \
    "$BENCH" --bench --profile-time 1 "$1" >/dev/null 2>&1
  python3 - "$OUT" <<'PY'
import sys
total = calls = 0
callee = pending = None
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("summary:"):
        total = int(line.split()[1])
    elif line.startswith("cfn="):
        callee = line[4:].strip()
    elif line.startswith("calls="):
        pending = int(line.split()[0][len("calls="):])
    elif pending is not None and (line[:1].isdigit() or line[:1] in "+-*"):
        if callee.endswith("SignatureScheme>::verify"):
            calls += pending
        pending = None
print(total, calls)
PY
}
read -r base_total base_calls < <(count '^no case has this name$')
for case in "${CASES[@]}"; do
  read -r total calls < <(count "$case")
  if [ "$calls" -le "$base_calls" ]; then
    echo "$case: no verification measured (is the case name right?)" >&2
    continue
  fi
  python3 -c 'import sys; c, t, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); print(f"{c:28s} {t / n:10,.0f} instructions per verify ({n} verifications)")' \
    "$case" $((total - base_total)) $((calls - base_calls))
done
