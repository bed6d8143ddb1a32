"""Signs one webhook request with the provider's official SDK, as the provider would send it.

Reads a JSON object on stdin: scheme, secret, url, body (text), params ([[name, value], ...] for a
form body), timestamp (Unix seconds) and id (delivery id). Writes a JSON object: the headers to send,
the exact body bytes (as text) and the URL to call. Used by tests/integration/webhook.rs.
"""

import base64
import datetime
import json
import sys
import urllib.parse


def twilio(req):
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(req["secret"])
    url = req["url"]
    if req.get("params") is not None:
        body = urllib.parse.urlencode([tuple(p) for p in req["params"]])
        # Twilio's validators take the decoded form; a multi-valued name is a list.
        params = {}
        for name, value in req["params"]:
            params.setdefault(name, []).append(value)

        class Multi(dict):
            def getall(self, name):
                return self[name]

        signature = validator.compute_signature(url, Multi(params))
        content_type = "application/x-www-form-urlencoded"
    else:
        body = req["body"]
        separator = "&" if "?" in url else "?"
        url = url + separator + "bodySHA256=" + validator.compute_hash(body)
        signature = validator.compute_signature(url, {})
        content_type = "application/json"
    headers = [["X-Twilio-Signature", signature], ["Content-Type", content_type]]
    if req.get("id"):
        headers.append(["I-Twilio-Idempotency-Token", req["id"]])
    return headers, body, url


def stripe(req):
    from stripe import WebhookSignature

    header = WebhookSignature.generate_signature_header(
        req["body"], req["secret"], req["timestamp"]
    )
    return [["Stripe-Signature", header], ["Content-Type", "application/json"]], req["body"], req["url"]


def standard_webhooks(req, library="standardwebhooks"):
    """Standard Webhooks' own library (webhook-* headers), or Svix's (svix-* headers)."""
    if library == "svix":
        from svix.webhooks import Webhook
    else:
        from standardwebhooks.webhooks import Webhook

    when = datetime.datetime.fromtimestamp(req["timestamp"], tz=datetime.timezone.utc)
    signature = Webhook(req["secret"]).sign(req["id"], when, req["body"])
    prefix = "svix" if library == "svix" else "webhook"
    headers = [
        [prefix + "-id", req["id"]],
        [prefix + "-timestamp", str(req["timestamp"])],
        [prefix + "-signature", signature],
        ["Content-Type", "application/json"],
    ]
    return headers, req["body"], req["url"]


def slack(req):
    from slack_sdk.signature import SignatureVerifier

    ts = str(req["timestamp"])
    signature = SignatureVerifier(req["secret"]).generate_signature(timestamp=ts, body=req["body"])
    headers = [
        ["X-Slack-Request-Timestamp", ts],
        ["X-Slack-Signature", signature],
        ["Content-Type", "application/x-www-form-urlencoded"],
    ]
    return headers, req["body"], req["url"]


def telnyx(req):
    # telnyx-python verifies with PyNaCl; Telnyx signs "timestamp|body" with the account's key.
    from nacl.signing import SigningKey

    key = SigningKey(base64.b64decode(req["secret"]))
    ts = str(req["timestamp"])
    signed = key.sign((ts + "|" + req["body"]).encode())
    headers = [
        ["telnyx-signature-ed25519", base64.b64encode(signed.signature).decode()],
        ["telnyx-timestamp", ts],
        ["Content-Type", "application/json"],
    ]
    return headers, req["body"], req["url"]


SCHEMES = {
    "twilio": twilio,
    "stripe": stripe,
    "standard-webhooks": standard_webhooks,
    "svix": lambda req: standard_webhooks(req, library="svix"),
    "slack": slack,
    "telnyx": telnyx,
}


def main():
    req = json.load(sys.stdin)
    headers, body, url = SCHEMES[req["scheme"]](req)
    json.dump({"headers": headers, "body": body, "url": url}, sys.stdout)


if __name__ == "__main__":
    main()
