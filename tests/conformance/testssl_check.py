#!/usr/bin/env python3
"""Fails on any testssl.sh finding of MEDIUM severity or above that is not listed, with its
reason, in the accepted file (lines: `ID  reason`).

Usage: testssl_check.py TESTSSL_JSON ACCEPTED_TXT
"""
import json
import sys

SEVERE = ("MEDIUM", "HIGH", "CRITICAL")


def main(report_path, accepted_path):
    accepted = {}
    for line in open(accepted_path):
        line = line.strip()
        if line and not line.startswith("#"):
            finding_id, _, reason = line.partition(" ")
            accepted[finding_id] = reason.strip()
    findings = json.load(open(report_path))
    if isinstance(findings, dict):
        findings = findings.get("scanResult", findings)
    counts = {}
    unexpected = []
    for f in findings:
        severity = f.get("severity", "")
        counts[severity] = counts.get(severity, 0) + 1
        if severity in SEVERE:
            if f["id"] in accepted:
                print("accepted %-8s %s: %s (%s)" % (severity, f["id"], f.get("finding", ""),
                                                     accepted[f["id"]]))
            else:
                unexpected.append(f)
    print("testssl.sh findings by severity: %s" % ", ".join(
        "%s %d" % kv for kv in sorted(counts.items())))
    for f in unexpected:
        print("UNEXPECTED %-8s %s: %s" % (f["severity"], f["id"], f.get("finding", "")))
    if not findings:
        print("no findings: the scan did not run")
        return 1
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
