#!/usr/bin/env python3
"""HTTP/2 abuse cases against voxguard's TLS listener, each on its own connection, written as raw
frames (hyperframe + hpack) since a well-behaved h2 client refuses to send them:

  rapid-reset    20,000 HEADERS each cancelled at once by RST_STREAM (CVE-2023-44487)
  continuation   one HEADERS without END_HEADERS, then CONTINUATION frames up to 8 MiB (CVE-2024-27316)
  ping-flood     100,000 PINGs while never reading the PING ACKs
  settings-flood 100,000 SETTINGS frames while never reading the ACKs
  hpack-bomb     a 4 KiB header put in the dynamic table, then one header block with 16,000
                 one-byte references to it (64 MiB once decoded)

Each case passes when the proxy ends the connection (GOAWAY or close), stops reading from it, or
(HPACK bomb) refuses the stream with RST_STREAM or a 4xx while the connection lives on, within 20 s; its CPU time for the case stays under the bound; its RSS grows by less than the bound;
and a fresh, well-behaved h2 request afterwards gets 200/404/502 (the proxy still serves).

Usage: h2_abuse.py HOST:PORT CA_PEM PROXY_PID  (exits 1 if any case fails; one JSON line per case)
"""
import json
import os
import socket
import ssl
import sys
import time

import hpack
from hyperframe.frame import (ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CPU_BOUND_S = 5.0
RSS_BOUND_KIB = 64 * 1024
CASE_TIMEOUT_S = 20.0
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_kib(pid, key):
    for line in open("/proc/%d/status" % pid):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Conn:
    def __init__(self, addr, ca):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["h2"])
        ctx.check_hostname = False
        raw = socket.create_connection(addr, timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2", "h2 not negotiated"
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())
        self.encoder = hpack.Encoder()
        self.buf = b""

    def send(self, *frames):
        self.sock.sendall(b"".join(f.serialize() for f in frames))

    def headers_block(self, extra=()):
        return self.encoder.encode([(":method", "GET"), (":scheme", "https"),
                                    (":authority", "localhost"), (":path", "/")] + list(extra))

    def read_frames(self, timeout, stop=lambda frame: False):
        """Frames until `timeout` passes, the proxy closes, or it sends GOAWAY. Returns
        (frames, ended, goaway_error_code)."""
        self.sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        frames = []
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                return frames, True, None
            if not data:
                return frames, True, None
            self.buf += data
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                frames.append(frame)
                if isinstance(frame, GoAwayFrame):
                    return frames, True, frame.error_code
                if stop(frame):
                    return frames, False, None
        return frames, False, None


def send_flood(conn, frames_iter, limit_s):
    """Writes frames until done, or until the proxy stops reading (a write blocks) or closes."""
    conn.sock.settimeout(2.0)
    started = time.monotonic()
    sent = 0
    try:
        for chunk in frames_iter:
            conn.sock.sendall(chunk)
            sent += 1
            if time.monotonic() - started > limit_s:
                break
    except socket.timeout:
        return sent, "stopped reading"
    except (ConnectionError, ssl.SSLError, OSError):
        return sent, "closed"
    return sent, "accepted"


def rapid_reset(conn):
    def frames():
        for i in range(20000):
            sid = 2 * i + 1
            yield (HeadersFrame(sid, conn.headers_block(), flags=["END_HEADERS", "END_STREAM"]).serialize()
                   + RstStreamFrame(sid, error_code=8).serialize())
    return send_flood(conn, frames(), CASE_TIMEOUT_S)


def continuation(conn):
    block = conn.headers_block()
    fragment = hpack.Encoder().encode([("x-flood", "a" * 4000)])

    def frames():
        yield HeadersFrame(1, block, flags=["END_STREAM"]).serialize()
        for _ in range(2048):  # 8 MiB of header block, never ending
            yield ContinuationFrame(1, fragment).serialize()
    return send_flood(conn, frames(), CASE_TIMEOUT_S)


def ping_flood(conn):
    frames = (PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize() for i in range(100000))
    return send_flood(conn, frames, CASE_TIMEOUT_S)


def settings_flood(conn):
    frames = (SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize()
              for _ in range(100000))
    return send_flood(conn, frames, CASE_TIMEOUT_S)


def hpack_bomb(conn):
    # 0x40: literal with incremental indexing, new name; the entry lands at dynamic index 62.
    name, value = b"x-bomb", b"b" * 4000
    insert = bytes([0x40, len(name)]) + name + bytes([0x7f, 0x80 + ((len(value) - 127) & 0x7f),
                                                      (len(value) - 127) >> 7]) + value
    first = conn.headers_block() + insert
    conn.send(HeadersFrame(1, first, flags=["END_HEADERS", "END_STREAM"]))
    refs = bytes([0x80 | 62]) * 16000  # indexed header field, dynamic index 62, each 4 KiB decoded
    # Re-send the pseudo-headers by static index: :method GET (2), :scheme https (7), :path / (4).
    block = bytes([0x82, 0x87, 0x84]) + bytes([0x41, 9]) + b"localhost" + refs
    return send_flood(conn, iter([HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"]).serialize()]),
                      CASE_TIMEOUT_S)


CASES = [("rapid-reset", rapid_reset), ("continuation", continuation), ("ping-flood", ping_flood),
         ("settings-flood", settings_flood), ("hpack-bomb", hpack_bomb)]


def stream_refused(frames, stream_id):
    """How the proxy refused one stream and kept the connection: RST_STREAM, or a 4xx response."""
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 65536
    for f in frames:
        if isinstance(f, RstStreamFrame) and f.stream_id == stream_id:
            return "RST_STREAM %d" % f.error_code
        if isinstance(f, HeadersFrame):
            try:
                status = dict(decoder.decode(f.data)).get(":status")
            except Exception:  # noqa: BLE001 - a block we cannot decode is not a refusal
                continue
            if f.stream_id == stream_id and status and status.startswith("4"):
                return status
    return None


def still_serves(addr, ca):
    conn = Conn(addr, ca)
    conn.send(HeadersFrame(1, conn.headers_block(), flags=["END_HEADERS", "END_STREAM"]))
    frames, _, _ = conn.read_frames(5)
    for f in frames:
        if isinstance(f, HeadersFrame) and f.stream_id == 1:
            status = dict(hpack.Decoder().decode(f.data)).get(":status")
            conn.sock.close()
            return status
    conn.sock.close()
    return None


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    addr, ca, pid = (host, int(port)), sys.argv[2], int(sys.argv[3])
    failures = 0
    for name, attack in CASES:
        cpu0, rss0 = proc_cpu_s(pid), proc_kib(pid, "VmRSS")
        conn = Conn(addr, ca)
        started = time.monotonic()
        sent, during = attack(conn)
        frames, ended, goaway = conn.read_frames(
            CASE_TIMEOUT_S if during == "accepted" else 3,
            stop=lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 3)
        refused = stream_refused(frames, 3) if name == "hpack-bomb" else None
        elapsed = time.monotonic() - started
        conn.sock.close()
        time.sleep(0.5)
        cpu, rss = proc_cpu_s(pid) - cpu0, proc_kib(pid, "VmRSS")
        status = still_serves(addr, ca)
        outcome = ("goaway" if goaway is not None else "closed" if ended or during == "closed"
                   else "stopped reading" if during == "stopped reading"
                   else "stream refused (%s)" % refused if refused else "none")
        ok = (outcome != "none" and cpu < CPU_BOUND_S and rss - rss0 < RSS_BOUND_KIB
              and status in ("200", "404", "502"))
        failures += not ok
        print(json.dumps({"case": name, "ok": ok, "frames_sent": sent, "outcome": outcome,
                          "goaway_error": goaway, "seconds": round(elapsed, 2),
                          "proxy_cpu_s": round(cpu, 2), "rss_before_kib": rss0, "rss_after_kib": rss,
                          "peak_rss_kib": proc_kib(pid, "VmHWM"), "then_status": status}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
