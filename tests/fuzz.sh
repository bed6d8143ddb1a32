#!/usr/bin/env bash
# Fuzzes every parser voxguard owns with cargo-fuzz on the stable toolchain (`-s none`: coverage
# guided, no sanitizer; the crate forbids unsafe code, so panics and aborts are what can be found).
#
#   tests/fuzz.sh              CI: replays fuzz/regressions/, then 10 s per target; new inputs go to a
#                              scratch dir, the committed corpus is only read
#   tests/fuzz.sh --long [S]   S seconds per target (default 600); new inputs are merged into
#                              fuzz/corpus/ and the corpus is minimised (commit what changed)
#   FUZZ_TARGETS="a b" limits the targets.
#
# A crash leaves its input in fuzz/artifacts/TARGET/. Turn it into a regression test: fix the bug,
# copy the input to fuzz/regressions/TARGET/, and add a unit test for the case near the parser.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

long=0
seconds=10
if [ "${1:-}" = "--long" ]; then
  long=1
  seconds=${2:-600}
fi
targets=${FUZZ_TARGETS:-signature_headers proxy_protocol client_address media_codecs recording_reader audit_verifier config_loader}

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --quiet --locked cargo-fuzz
fi
cargo fuzz build -s none >/dev/null

for target in $targets; do
  if compgen -G "regressions/$target/*" >/dev/null; then
    cargo fuzz run -s none "$target" regressions/"$target"/* -- -runs=0 -timeout=10 >/dev/null 2>&1 || {
      echo "FAILED: $target no longer survives a past crash (fuzz/regressions/$target)" >&2
      exit 1
    }
  fi
  if [ "$long" = 1 ]; then
    dirs=(corpus/"$target")
  else
    scratch=../target/fuzz-scratch/$target
    rm -rf "$scratch" && mkdir -p "$scratch"
    dirs=("$scratch" corpus/"$target")
  fi
  log=../target/fuzz-$target.log
  mkdir -p ../target
  if ! cargo fuzz run -s none "$target" "${dirs[@]}" -- -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=1024 >"$log" 2>&1; then
    echo "FAILED: $target (log: target/fuzz-$target.log; input: fuzz/artifacts/$target/)" >&2
    grep -E "panicked|ERROR|SUMMARY" "$log" | head -5 >&2
    exit 1
  fi
  echo "$target: $(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | sed 's/Done //; s/ second/ s/'), no crash"
  if [ "$long" = 1 ]; then
    cargo fuzz cmin -s none "$target" corpus/"$target" >/dev/null 2>&1
  fi
done
