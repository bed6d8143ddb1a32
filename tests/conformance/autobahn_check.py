#!/usr/bin/env python3
"""Compares Autobahn|Testsuite fuzzingclient results: each voxguard agent against the direct
connection to the same echo backend.

- Passthrough agent: every case must be OK, NON-STRICT or INFORMATIONAL (behaviour and close
  behaviour) wherever the direct connection's is.
- Media agent (a Twilio Media Streams route): cases where the client sends data messages send
  arbitrary text and binary, which such a route cannot redact and so drops by design
  (docs/media.md, "Bad input"). For those the check is the opposite one: nothing may come back.
  Every other case (framing, control frames, close handling, invalid UTF-8, limits) must pass as
  on the direct connection.
- Both: compression cases (12, 13) are UNIMPLEMENTED through voxguard, which never negotiates
  permessage-deflate; they are counted, not failed.

Usage: autobahn_check.py REPORT_DIR/index.json  (exits 1 on any regression)
"""
import json
import os
import sys

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
# permessage-deflate (cases 12 and 13) is stripped from every handshake so that each message stays
# inspectable; through voxguard those cases report UNIMPLEMENTED.
COMPRESSION = ("12", "13")


def case_key(case_id):
    return [int(p) for p in case_id.split(".")]


def passed(result):
    return result["behavior"] in PASSING and result["behaviorClose"] in PASSING


def main(index_path):
    index = json.load(open(index_path))
    report_dir = os.path.dirname(index_path)
    direct = index.pop("direct")

    def details(result):
        return json.load(open(os.path.join(report_dir, result["reportfile"])))

    failures = 0
    for agent, results in sorted(index.items()):
        media = "media" in agent
        checked = by_design = not_negotiated = skipped = 0
        regressions = []
        for case_id in sorted(direct, key=case_key):
            reference, ours = direct[case_id], results.get(case_id)
            if ours is None:
                if media and case_id.split(".")[0] == "9":
                    skipped += 1  # excluded by run.sh: large arbitrary messages, dropped by design
                else:
                    regressions.append((case_id, "not run"))
                continue
            sends_data = any(e[0] == "message" for e in details(reference)["received"])
            if media and sends_data:
                by_design += 1
                leaked = [e for e in details(ours)["received"] if e[0] == "message"]
                if leaked:
                    regressions.append((case_id, "forwarded a message a media route must drop"))
                continue
            if case_id.split(".")[0] in COMPRESSION and ours["behavior"] == "UNIMPLEMENTED":
                not_negotiated += 1
                continue
            checked += 1
            if passed(reference) and not passed(ours):
                regressions.append(
                    (case_id, "%s/%s (direct %s/%s)" % (
                        ours["behavior"], ours["behaviorClose"],
                        reference["behavior"], reference["behaviorClose"]))
                )
        counts = {}
        for r in results.values():
            counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
        line = "%-16s %3d cases: %s" % (
            agent, len(results), ", ".join("%s %d" % kv for kv in sorted(counts.items())))
        line += "; %d compared with direct" % checked
        if media:
            line += ", %d dropped by design with nothing forwarded" % by_design
        if skipped:
            line += ", %d large-message cases not run (dropped by design)" % skipped
        if not_negotiated:
            line += ", %d compression cases not negotiated by design" % not_negotiated
        print(line)
        for case_id, why in regressions:
            print("  REGRESSION %s: %s" % (case_id, why))
        failures += len(regressions)
    counts = {}
    for r in direct.values():
        counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
    print("%-16s %3d cases: %s" % (
        "direct", len(direct), ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
