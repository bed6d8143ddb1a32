#!/usr/bin/env python3
"""Prints benches/compare.sh's results (JSON lines from voxguard-load) as one Markdown table, then
each voxguard configuration as a ratio to nginx and to HAProxy.

Usage: compare_table.py [--check] results.jsonl
--check (compare.sh's SMOKE mode) exits 1 unless every peer ran every load it should, with no error
and no lost message.

With several rounds (compare.sh ROUNDS=N), each figure is the median of its rounds, and the CPU ratios
are also shown round by round (min / median / max), each round's voxguard figure over the same
round's peer."""
import json
import statistics
import sys

CHECK = "--check" in sys.argv[1:]
PATH = [a for a in sys.argv[1:] if a != "--check"][0]

PEERS = ["direct", "nginx", "haproxy", "voxguard", "voxguard-webhook", "voxguard-media"]
OURS = ["voxguard", "voxguard-webhook", "voxguard-media"]
# The media route holds forwarded audio dtmf_lookahead_ms (40 ms) in each direction, so that a tone is
# silenced from its onset: a round trip through it includes 2 × 40 ms by design.
HOLD_MS = {"voxguard-media": 80}
PACED_P99_MS = 20
PACED_CPU_CALLS = 500

rows = [json.loads(l) for l in open(PATH) if l.strip()]


def median_row(found):
    """One result whose every number is the median of `found`'s (the first one's other fields)."""
    row = dict(found[0])
    for key, value in row.items():
        values = [r.get(key) for r in found]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            row[key] = statistics.median(values)
    return row


def get(peer, mode, calls=None, round_no=None):
    found = [r for r in rows
             if r["label"] == peer and r["mode"] == mode and (calls is None or r.get("calls") == calls)
             and (round_no is None or r.get("round") == round_no)]
    if not found:
        return None
    return found[0] if len(found) == 1 else median_row(found)


def per_peer(fn):
    return {p: fn(p) for p in PEERS}


def field(mode, key, scale=1.0, calls=None):
    def f(p):
        r = get(p, mode, calls)
        return None if r is None or key not in r or r[key] is None else r[key] * scale
    return f


def cpu_per_relayed(mode, calls=None):
    # Each echoed message crosses the proxy twice (caller→backend, backend→caller).
    def f(p):
        r = get(p, mode, calls)
        return None if r is None or "proxy_cpu_s" not in r or not r["ops"] else r["proxy_cpu_s"] * 1e6 / (2 * r["ops"])
    return f


def tail_windows(calls):
    # The share of the paced run's 100 ms windows that were in its tail (voxguard-load's tail_windows).
    def f(p):
        r = get(p, "ws_paced", calls)
        return None if r is None or not r.get("windows") else 100.0 * r["tail_windows"] / r["windows"]
    return f


def relayed(mode):
    def f(p):
        r = get(p, mode)
        return None if r is None else 2 * r["ops_per_s"]
    return f


def max_paced(p):
    best = None
    limit = (PACED_P99_MS + HOLD_MS.get(p, 0)) * 1000
    steps = sorted({r["calls"] for r in rows if r["label"] == p and r["mode"] == "ws_paced"})
    for calls in steps:
        r = get(p, "ws_paced", calls)  # with rounds: the median p99 of the step
        if r["errors"] == 0 and r["lost"] == 0 and r["p99_us"] <= limit:
            best = max(best or 0, calls)
    return best if best is not None else (0 if steps else None)


def request_rows(title, mode):
    """An HTTP load's three rows: requests per second, latency, and the proxy's CPU per request."""
    return [
        (f"{title}, req/s", per_peer(field(mode, "ops_per_s")), "{:,.0f}", True),
        ("  p50 / p99 latency, ms", None, f"lat:{mode}", None),
        ("  proxy CPU per request, µs", per_peer(field(mode, "proxy_cpu_us_per_op")), "{:.1f}", False),
    ]


# (title, values by peer, format, higher is better; None for a diagnostic of the run, such as the load
# generator's own figures, which the ratios leave out)
TABLE = [
    *request_rows("HTTP GET keep-alive", "http_get"),
    *request_rows("HTTP POST 2 KB form, GitHub-signed", "http_signed_post"),
    *request_rows("HTTP POST 2 KB form, Twilio-signed", "http_twilio_post"),
    *request_rows("HTTP/2 GET keep-alive (one stream at a time per connection)", "http2_get"),
    *request_rows("HTTP/2 POST 2 KB form, GitHub-signed", "http2_signed_post"),
    ("new TLS connections (resumed), per s", per_peer(field("http_new_connection", "ops_per_s")), "{:,.0f}", True),
    ("  proxy CPU per connection, µs", per_peer(field("http_new_connection", "proxy_cpu_us_per_op")), "{:.1f}", False),
    # One GET each, then quiet: what the keep-alive connections an edge leaves open cost.
    ("RSS per idle keep-alive HTTPS connection, KiB", per_peer(field("http_idle", "rss_per_connection_kib")), "{:.1f}", False),
    ("WebSocket media messages relayed per s (flat out)", per_peer(relayed("ws_flat")), "{:,.0f}", True),
    ("  round trip p50 / p99, ms", None, "lat:ws_flat", None),
    ("  proxy CPU per relayed message, µs", per_peer(cpu_per_relayed("ws_flat")), "{:.2f}", False),
    ("RSS per idle WebSocket connection, KiB", per_peer(field("ws_idle", "rss_per_call_kib")), "{:.1f}", False),
    (f"paced calls (50 msg/s each way) with p99 round trip ≤ {PACED_P99_MS} ms (+hold)", per_peer(max_paced), "{:,.0f}", True),
    (f"  proxy CPU per message, {PACED_CPU_CALLS} paced calls, µs", per_peer(cpu_per_relayed("ws_paced", PACED_CPU_CALLS)), "{:.2f}", False),
    (f"  round trip p50 / p99 at {PACED_CPU_CALLS} calls, ms", None, f"lat:ws_paced:{PACED_CPU_CALLS}", None),
    # A held frame waits for the frames that end its hold: timed from their send, the round trip leaves
    # out the generator's lateness in sending them (shown on the next line, for every peer).
    (f"  round trip p99 at {PACED_CPU_CALLS} calls, from the send that ended the hold, ms",
     per_peer(field("ws_paced", "after_hold_p99_us", 0.001, calls=PACED_CPU_CALLS)), "{:.2f}", False),
    (f"  load generator's send lateness p99 at {PACED_CPU_CALLS} calls, ms",
     per_peer(field("ws_paced", "send_late_p99_us", 0.001, calls=PACED_CPU_CALLS)), "{:.2f}", None),
    # Where the p99 came from: the 100 ms windows in which more than 1 % of the round trips were over
    # the bound (20 ms, plus the hold), and the share of all over-bound round trips inside them. Few
    # windows holding most of them: the tail came in episodes, every call late at once.
    (f"  100 ms windows with > 1 % of round trips over {PACED_P99_MS} ms (+hold) at {PACED_CPU_CALLS} calls, %",
     per_peer(tail_windows(PACED_CPU_CALLS)), "{:.0f}", None),
    (f"  share of the over-bound round trips inside those windows at {PACED_CPU_CALLS} calls, %",
     per_peer(field("ws_paced", "over_bound_in_tail_windows", 100.0, calls=PACED_CPU_CALLS)), "{:.0f}", None),
    # The core the generator shares with the backend: near 100 %, the generator's own delays set the tail.
    (f"  load generator's core busy at {PACED_CPU_CALLS} calls, %",
     per_peer(field("ws_paced", "load_cpu_busy", 100.0, calls=PACED_CPU_CALLS)), "{:.0f}", None),
    (f"  RSS per active call at {PACED_CPU_CALLS} calls, KiB", per_peer(field("ws_paced", "rss_per_call_kib", calls=PACED_CPU_CALLS)), "{:.1f}", False),
]


def instructions(mode, per_relayed=False):
    # INSTRUCTIONS=1 runs: user-space instructions per request, or per relayed message (÷ 2).
    def f(p):
        r = get(p, mode)
        v = None if r is None else r.get("user_instructions_per_op")
        return None if v is None else v / (2 if per_relayed else 1)
    return f


INSTRUCTION_TABLE = [
    ("HTTP GET keep-alive: user-space instructions per request", per_peer(instructions("http_get")), "{:,.0f}", False),
    ("HTTP POST 2 KB form, GitHub-signed: per request", per_peer(instructions("http_signed_post")), "{:,.0f}", False),
    ("HTTP POST 2 KB form, Twilio-signed: per request", per_peer(instructions("http_twilio_post")), "{:,.0f}", False),
    ("HTTP/2 GET keep-alive: per request", per_peer(instructions("http2_get")), "{:,.0f}", False),
    ("HTTP/2 POST 2 KB form, GitHub-signed: per request", per_peer(instructions("http2_signed_post")), "{:,.0f}", False),
    ("new TLS connection (resumed): per connection", per_peer(instructions("http_new_connection")), "{:,.0f}", False),
    ("WebSocket flat out: per relayed message", per_peer(instructions("ws_flat", True)), "{:,.0f}", False),
    ("WebSocket paced: per relayed message", per_peer(instructions("ws_paced", True)), "{:,.0f}", False),
]
if any("user_instructions_per_op" in r for r in rows):
    # Under callgrind the rates, latencies and CPU times mean nothing: only the counts are shown.
    TABLE = INSTRUCTION_TABLE


def startup(kind):
    def f(p):
        r = get(p, "startup")
        return None if r is None else r[kind]
    return f


if TABLE is not INSTRUCTION_TABLE:
    TABLE += [
        ("start-up to ready, shipped proxy.toml, first start (creates dev cert and keys), ms", per_peer(startup("first_ms")), "{:.0f}", False),
        ("start-up to ready, later starts (median of 5), ms", per_peer(startup("median_ms")), "{:.0f}", False),
    ]


def latency(spec, p):
    parts = spec.split(":")
    r = get(p, parts[1], int(parts[2]) if len(parts) > 2 else None)
    if r is None:
        return "—"
    return f"{r['p50_us'] / 1000:.2f} / {r['p99_us'] / 1000:.2f}"


def cell(v, fmt):
    return "—" if v is None else fmt.format(v)


present = [p for p in PEERS if any(r["label"] == p for r in rows)]
print("| path | " + " | ".join(present) + " |")
print("|---" * (len(present) + 1) + "|")
for title, values, fmt, _ in TABLE:
    if values is None:
        print(f"| {title} | " + " | ".join(latency(fmt, p) for p in present) + " |")
    else:
        print(f"| {title} | " + " | ".join(cell(values[p], fmt) for p in present) + " |")

ours = [p for p in OURS if p in present]
peers = [p for p in ["nginx", "haproxy"] if p in present]
if ours and peers:
    print()
    if TABLE is INSTRUCTION_TABLE:
        print("Ratios (voxguard ÷ peer; lower is better):")
    else:
        print("Ratios (voxguard ÷ peer; for req/s and calls higher is better, for CPU and RSS lower is better):")
    print()
    cols = [f"{o} ÷ {p}" for o in ours for p in peers]
    print("| path | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for title, values, fmt, higher_is_better in TABLE:
        if values is None or higher_is_better is None:
            continue
        cells = []
        for o in ours:
            for p in peers:
                a, b = values.get(o), values.get(p)
                cells.append("—" if a is None or not b else f"{a / b:.2f}")
        if all(c == "—" for c in cells):
            continue
        print(f"| {title.strip()} | " + " | ".join(cells) + " |")

rounds = sorted({r["round"] for r in rows if "round" in r})
if len(rounds) > 1 and ours and peers:
    # Each round's ratio, from that round's own figures: a machine whose speed drifts between rounds
    # moves both sides of a ratio together.
    SPREAD = [
        ("HTTP POST 2 KB form, GitHub-signed: proxy CPU per request", "http_signed_post", None, False),
        ("HTTP POST 2 KB form, Twilio-signed: proxy CPU per request", "http_twilio_post", None, False),
        ("HTTP/2 POST 2 KB form, GitHub-signed: proxy CPU per request", "http2_signed_post", None, False),
        ("WebSocket flat out: proxy CPU per relayed message", "ws_flat", None, True),
        (f"WebSocket paced, {PACED_CPU_CALLS} calls: proxy CPU per message", "ws_paced", PACED_CPU_CALLS, True),
    ]
    print()
    print(f"CPU ratios round by round (min / median / max over {len(rounds)} rounds):")
    print()
    cols = [f"{o} ÷ {p}" for o in ours for p in peers]
    print("| path | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for title, mode, calls, per_message in SPREAD:
        def cpu(peer, n):
            r = get(peer, mode, calls, n)
            if r is None or not r.get("ops") or "proxy_cpu_s" not in r:
                return None
            return r["proxy_cpu_s"] / (r["ops"] * (2 if per_message else 1))
        cells = []
        for o in ours:
            for p in peers:
                ratios = [cpu(o, n) / cpu(p, n) for n in rounds if cpu(o, n) and cpu(p, n)]
                cells.append("—" if not ratios else
                             f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}")
        if any(c != "—" for c in cells):
            print(f"| {title} | " + " | ".join(cells) + " |")

if CHECK:
    expected = {
        "direct": ["http_get", "http_signed_post", "http_twilio_post", "ws_flat", "ws_paced"],
        "nginx": ["http_get", "http_signed_post", "http_twilio_post", "http_new_connection", "http_idle", "http2_get", "http2_signed_post", "ws_flat", "ws_idle", "ws_paced"],
        "haproxy": ["http_get", "http_signed_post", "http_twilio_post", "http_new_connection", "http_idle", "http2_get", "http2_signed_post", "ws_flat", "ws_idle", "ws_paced"],
        "voxguard": ["http_get", "http_signed_post", "http_twilio_post", "http_new_connection", "http_idle", "http2_get", "http2_signed_post", "ws_flat", "ws_idle", "ws_paced", "startup"],
        "voxguard-webhook": ["http_get", "http_signed_post", "http_twilio_post", "http_new_connection", "http_idle", "http2_get", "http2_signed_post"],
        "voxguard-media": ["ws_flat", "ws_idle", "ws_paced"],
    }
    problems = []
    for peer, modes in expected.items():
        for mode in modes:
            found = [r for r in rows if r["label"] == peer and r["mode"] == mode]
            if not found:
                problems.append(f"{peer}: no {mode} result")
            for r in found:
                if r.get("errors", 0) or r.get("lost", 0):
                    problems.append(f"{peer} {mode}: {r.get('errors')} errors, {r.get('lost')} lost")
                elif mode not in ("ws_idle", "startup") and not r["ops"]:
                    problems.append(f"{peer} {mode}: nothing completed")
    print()
    if problems:
        print("smoke check FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"smoke check passed: {len(rows)} results, every peer served every load, no errors, nothing lost")
