#!/usr/bin/env python3
"""Slow and flooding clients against voxguard while a legitimate client sends 20 requests/s:

  slowloris      slowhttptest -H: 2,000 connections sending their request head a header at a time
  slow-body      slowhttptest -B: 1,000 POSTs whose bodies trickle in
  slow-read      slowhttptest -X: 1,000 clients reading responses a byte at a time
  conn-flood     10,000 connections from 250 loopback sources (127.0.0.2-251), held open

Each case passes when the legitimate client (a keep-alive connection, re-opened every 10th request,
from 127.0.0.1) sees zero errors and a p99 under 50 ms during the attack. The proxy's RSS before and
after and its CPU seconds are reported; for the flood, connections refused at accept are read
from voxguard_admission_refusals_total.

Usage: slow_clients.py HOST:PORT CA_PEM PROXY_PID ADMIN_PORT SECONDS CASE[,CASE]  (one JSON line per case)
run.sh runs the slow cases against a proxy without a per-address limit (what they test is the
timeouts), and the flood against one with `max_connections_per_ip = 20` (what it tests is that
limit: refused at accept, before TLS).
"""
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

P99_BOUND_MS = 50.0
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def legit_client(host, port, ca, stop, out):
    """20 requests/s until `stop`; appends latencies (ms) and errors to `out`."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    conn = None
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        next_at += 0.05
        started = time.monotonic()
        try:
            if conn is None or n % 10 == 0:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
            conn.request("GET", "/", headers={"Host": "localhost"})
            res = conn.getresponse()
            res.read()
            if res.status != 200:
                out["errors"].append("status %d" % res.status)
            out["latencies"].append((time.monotonic() - started) * 1000)
        except Exception as e:  # noqa: BLE001 - every failure counts as an error
            out["errors"].append(type(e).__name__)
            conn = None
        n += 1
        time.sleep(max(0.0, next_at - time.monotonic()))


def p99(values):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def slowhttptest(mode_args, url, seconds):
    return subprocess.Popen(
        ["slowhttptest", "-g", "-o", "/tmp/voxguard-slowhttptest", "-u", url, "-l", str(seconds),
         "-r", "500", "-p", "3"] + mode_args,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def flood(host, port, seconds):
    """Opens 40 connections from each of 250 loopback sources and holds them; returns a stopper."""
    sockets = []
    done = threading.Event()

    def run():
        for i in range(250):
            source = "127.0.0.%d" % (i + 2)
            for _ in range(40):
                if done.is_set():
                    return
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.bind((source, 0))
                    s.connect_ex((host, port))
                except OSError:
                    s.close()
                    continue
                sockets.append(s)
        done.wait(seconds)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def stop():
        done.set()
        t.join()
        for s in sockets:
            s.close()
        return len(sockets)
    return stop


def refusals(admin_port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin_port, timeout=5).read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("voxguard_admission_refusals_total{") and 'route="_accept"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    port = int(port)
    ca, pid, admin_port = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seconds = int(sys.argv[5])
    wanted = sys.argv[6].split(",")
    url = "https://localhost:%d/" % port
    cases = [
        ("slowloris", ["-H", "-c", "2000", "-i", "5", "-s", "8192"]),
        ("slow-body", ["-B", "-c", "1000", "-i", "5", "-s", "8192"]),
        ("slow-read", ["-X", "-c", "1000", "-k", "20", "-n", "5", "-w", "1", "-y", "1", "-z", "1"]),
        ("conn-flood", None),
    ]
    failures = 0
    for name, mode in [c for c in cases if c[0] in wanted]:
        rss0, cpu0, refused0 = rss_kib(pid), proc_cpu_s(pid), refusals(admin_port)
        attack = slowhttptest(mode, url, seconds) if mode else None
        stop_flood = None if mode else flood(host, port, seconds)
        time.sleep(3)  # let the attack build up before measuring
        out = {"latencies": [], "errors": []}
        stop = threading.Event()
        client = threading.Thread(target=legit_client, args=(host, port, ca, stop, out))
        client.start()
        time.sleep(max(1, seconds - 5))
        peak_rss = rss_kib(pid)
        stop.set()
        client.join()
        held = None
        if attack:
            attack.terminate()
            attack.wait()
        else:
            held = stop_flood()
        time.sleep(1)
        tail = p99(out["latencies"])
        ok = not out["errors"] and tail is not None and tail < P99_BOUND_MS
        failures += not ok
        line = {"case": name, "ok": ok, "legit_requests": len(out["latencies"]),
                "legit_errors": len(out["errors"]), "error_kinds": sorted(set(out["errors"]))[:5],
                "legit_p99_ms": round(tail, 2) if tail is not None else None,
                "proxy_cpu_s": round(proc_cpu_s(pid) - cpu0, 2), "rss_before_kib": rss0,
                "rss_under_attack_kib": peak_rss, "rss_after_kib": rss_kib(pid)}
        if held is not None:
            line["flood_connections"] = held
            line["refused_at_accept"] = refusals(admin_port) - refused0
            ok = ok and line["refused_at_accept"] > 0
            line["ok"] = ok
            failures += not ok and not failures
        print(json.dumps(line), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
