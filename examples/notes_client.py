#!/usr/bin/python3
"""Drive the notes service (notes_service.py) as a client would, and show
what Coffer refuses.

The client holds its own API secret (a file of 64 hex digits; the operator
imported the same secret into Coffer as the hmac-sha256 key <key-id>) and
signs each request with coffer.reqsign, as any REST client library would.
Steps, each printed with what the service answered:

  1. a signed PUT of a note: accepted (201)
  2. a signed GET of it: the same text (200)
  3. the PUT's exact bytes sent again (a replay): refused, "replayed"
  4. a request signed an hour ago (stale): refused, "expired"
  5. a signed request whose body is changed on the way (tampered):
     refused, "bad-signature"
  6. no signature at all: refused, "unsigned"
  7. with --store: the note's file (DIR/<key-id>/<note>.json) holds a
     wrapped data key and ciphertext, and neither the note's text nor its
     base64 appears in it

    notes_client.py --url http://127.0.0.1:PORT --key-id client-alice \\
        --secret-file alice.secret [--store DIR]

Exit status 0 when every step behaved as described, 1 otherwise.
"""

import argparse
import base64
import http.client
import json
import os
import secrets
import sys
import time
from urllib.parse import urlsplit

if os.environ.get("COFFER_PYTHON_PATH"):
    sys.path.insert(0, os.environ["COFFER_PYTHON_PATH"])
from coffer import reqsign  # noqa: E402


class NotesClient:
    def __init__(self, url: str, key_id: str, secret: bytes) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.key_id = key_id
        self.secret = secret

    def signed(self, method: str, target: str, body: bytes = b"", timestamp: int = None):
        """(headers, body) of a request signed now (or at timestamp)."""
        ts = int(time.time()) if timestamp is None else timestamp
        nonce = secrets.token_hex(16)
        path, _, query = target.partition("?")
        sig = reqsign.sign(self.secret, method, path, query, body, ts, nonce, self.key_id)
        return {"Authorization": reqsign.authorization(self.key_id, 1, ts, nonce, sig)}, body

    def send(self, method: str, target: str, headers: dict, body: bytes):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            c.request(method, target, body=body, headers=headers)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--key-id", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--store", help="the service's store directory, to look at the file")
    ap.add_argument("--note", default="groceries")
    a = ap.parse_args(argv)
    with open(a.secret_file) as f:
        secret = bytes.fromhex(f.read().strip())
    cl = NotesClient(a.url, a.key_id, secret)
    text = ("milk, eggs, and the launch code %s" % secrets.token_hex(8)).encode()
    target = "/v1/notes/" + a.note
    failures = []

    def step(n, what, status, body, want_status, want_error=None):
        verdict = ""
        if want_error is not None:
            try:
                got = json.loads(body)
            except ValueError:
                got = {}
            verdict = got.get("error", "")
            ok = status == want_status and verdict == want_error
            shown = "%d %s: %s" % (status, verdict, got.get("reason", body[:200]))
        else:
            ok = status == want_status
            shown = "%d %s" % (status, body[:200].decode(errors="replace").strip())
        print("%d. %-34s %s %s" % (n, what, "ok  " if ok else "FAIL", shown), flush=True)
        if not ok:
            failures.append(n)

    h, body = cl.signed("PUT", target, text)
    status, reply = cl.send("PUT", target, h, body)
    step(1, "signed PUT", status, reply, 201)

    h2, _ = cl.signed("GET", target)
    status2, got = cl.send("GET", target, h2, b"")
    step(2, "signed GET", status2, got if got != text else b"(the same text)", 200)
    if got != text:
        failures.append(2)

    status, reply = cl.send("PUT", target, h, body)          # the very same request
    step(3, "the PUT replayed", status, reply, 401, "replayed")

    h, body = cl.signed("PUT", target, b"stale", timestamp=int(time.time()) - 3600)
    status, reply = cl.send("PUT", target, h, body)
    step(4, "a PUT signed an hour ago", status, reply, 401, "expired")

    h, body = cl.signed("PUT", target, b"pay 10 to bob")
    status, reply = cl.send("PUT", target, h, b"pay 99 to eve")
    step(5, "a PUT tampered on the way", status, reply, 401, "bad-signature")

    status, reply = cl.send("GET", target, {}, b"")
    step(6, "an unsigned GET", status, reply, 401, "unsigned")

    if a.store:
        name = os.path.join(a.key_id, a.note + ".json")
        with open(os.path.join(a.store, name), "rb") as f:
            raw = f.read()
        record = json.loads(raw)
        leaked = text in raw or base64.b64encode(text) in raw
        print("7. on disk (%s): key %s version %d, wrapped data key %d bytes, "
              "ciphertext %d bytes; note text in the file: %s"
              % (name, record["key"], record["key_version"],
                 len(base64.b64decode(record["wrapped_key"])),
                 len(base64.b64decode(record["ciphertext"])), "YES" if leaked else "no"))
        print("   ciphertext: %s..." % base64.b64decode(record["ciphertext"])[:24].hex())
        if leaked or len(base64.b64decode(record["ciphertext"])) != len(text) + 16:
            failures.append(7)
    if failures:
        print("notes_client: steps %s did not behave as expected" % failures)
        return 1
    print("notes_client: OK: signed requests accepted; replayed, stale, tampered and unsigned "
          "ones refused; the note is stored encrypted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
