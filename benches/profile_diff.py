#!/usr/bin/env python3
"""Per-operation self cost of two callgrind profiles from `INSTRUCTIONS=1 PROFILE_DIR=… compare.sh`,
function by function, side by side.

Each load leaves a short and a long profile (`PEER-NN-short.PID`, `PEER-NN-long.PID`); the difference
leaves out start-up and warm-up. It is divided by the difference in calls to a marker function that
runs once per operation (`payload::decode` for media messages, `from_utf8` for WebSocket text
messages): exact, unlike the harness's round-trip count, which moves with how messages batch.
It also prints the wake-ups (`epoll_wait` calls) per operation: a paced load's instructions per
message move with them, from run to run, so compare paced profiles at similar wake-up rates.

Usage: profile_diff.py MARKER DIR_A TAG_A DIR_B TAG_B [ROWS]
  e.g. profile_diff.py payload::decode before voxguard-media-03 after voxguard-media-03 30
"""
import collections
import glob
import sys


def load(path, marker):
    """Self cost per function, the calls to functions whose name contains `marker`, and the calls to
    `epoll_wait` (the process's wake-ups)."""
    cost, calls, waits = collections.Counter(), 0, 0
    fn = callee = None
    pending = None  # a `calls=` line: the next cost line is the call's inclusive cost, not self cost
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            fn = line[3:].strip()
        elif line.startswith("cfn="):
            callee = line[4:].strip()
        elif line.startswith("calls="):
            pending = int(line.split()[0][len("calls="):])
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if pending is not None:
                if callee and marker in callee:
                    calls += pending
                if callee == "epoll_wait":
                    waits += pending
                pending = None
            elif len(parts) >= 2 and fn:
                cost[fn] += int(parts[1])
    return cost, calls, waits


def per_operation(directory, tag, marker):
    """Self cost per function per operation, the operations, and the wake-ups per operation."""
    (long_cost, long_calls, long_waits), (short_cost, short_calls, short_waits) = (
        load(glob.glob(f"{directory}/{tag}-{kind}.*")[0], marker) for kind in ("long", "short"))
    ops = long_calls - short_calls
    if ops <= 0:
        sys.exit(f"{directory}/{tag}: no calls to {marker!r} between the short and long profiles")
    cost = {f: (long_cost[f] - short_cost[f]) / ops for f in set(long_cost) | set(short_cost)}
    return cost, ops, (long_waits - short_waits) / ops


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    marker, dir_a, tag_a, dir_b, tag_b = sys.argv[1:6]
    rows = int(sys.argv[6]) if len(sys.argv) > 6 else 30
    a, ops_a, waits_a = per_operation(dir_a, tag_a, marker)
    b, ops_b, waits_b = per_operation(dir_b, tag_b, marker)
    print(f"operations: {ops_a} / {ops_b}; instructions per operation: "
          f"{sum(a.values()):,.0f} / {sum(b.values()):,.0f}")
    # A paced load's count moves with how many messages each wake-up handles, which varies from
    # run to run under callgrind: compare paced runs at similar wake-ups per operation.
    print(f"wake-ups (epoll_wait) per operation: {waits_a:.2f} / {waits_b:.2f}")
    for f in sorted(set(a) | set(b), key=lambda f: -abs(b.get(f, 0) - a.get(f, 0)))[:rows]:
        before, after = a.get(f, 0), b.get(f, 0)
        print(f"{before:9,.0f} {after:9,.0f} {after - before:+8,.0f}  {f[:110]}")


if __name__ == "__main__":
    main()
