#!/usr/bin/python3
"""A small HTTP API that keeps its clients' notes, written with the Python
standard library and the Coffer client (the seed use case, end to end).

    PUT /v1/notes/<id>     store the body (at most 64 KiB) as this client's note <id>
    GET /v1/notes/<id>     this client's note <id>

Each client has its own notes: they are stored per client (DIR/<client>/
<id>.json), so a PUT can only ever replace the sender's own note, and
another client's note of the same id is neither touched nor revealed.

Every request carries an HMAC signature (proto/request-signing.md):

    Authorization: COFFER-HMAC-SHA256-HTTP keyId=<client>, version=<n>,
                   timestamp=<unix s>, nonce=<nonce>, signature=<hex>

The client's secret is an hmac-sha256 key in Coffer named <client> (only
names starting with --clients, "client-" by default, are taken: a client
cannot make this service check against any other key). The service never
holds a client secret: Coffer checks the signature in its token, the
timestamp window and the nonce (a replay is refused, also across restarts).

Each note is encrypted with a fresh data key from Coffer (GenerateDataKey
under --data-key, bound to the note id and the client as context): the
service encrypts with the plaintext data key (AES-256-GCM), forgets it,
and stores only the wrapped data key beside the ciphertext. Reading a
note unwraps the data key through Coffer (Unwrap, with the same context,
so one client's wrapped key does not open for another), then decrypts.

    notes_service.py --socket S --identity identity.pem --store DIR [--port 0]

The service prints "listening on http://127.0.0.1:PORT" once it serves.
"""

import argparse
import base64
import itertools
import json
import os
import re
import signal
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The installed package, or the build tree's copy (build/client/python).
if os.environ.get("COFFER_PYTHON_PATH"):
    sys.path.insert(0, os.environ["COFFER_PYTHON_PATH"])
import coffer  # noqa: E402

BODY_MAX = 64 * 1024
NOTE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
NOTE_PATH = re.compile(r"/v1/notes/([^/]*)\Z")
FORMAT = 1
# Control characters in a log line as \xNN (and "\" as "\\"), so a request
# line cannot forge log lines or move a terminal's cursor.
LOG_ESCAPES = str.maketrans({c: "\\x%02x" % c for c in itertools.chain(range(0x20),
                                                                     range(0x7f, 0xa0))})
LOG_ESCAPES[ord("\\")] = "\\\\"


def coffer_refusal(e: "coffer.CofferError"):
    """(status, error, reason) of a Coffer failure that is not the client's
    doing: 503 while the key service is unreachable, else 500 (Coffer's
    message goes to the service's log, not to the client)."""
    if isinstance(e, coffer.Unavailable):
        return 503, "unavailable", "the key service is unavailable: " + e.message
    return 500, "internal", ("the key service refused the operation (%s); the service's log "
                             "has the reason" % e.code.name)


def log(text: str) -> None:
    sys.stderr.write("notes: %s\n" % text.translate(LOG_ESCAPES))


class NotesService:
    """What the handler calls: request authentication and the note store."""

    def __init__(self, client: coffer.Client, store: str, data_key: str, clients: str) -> None:
        self.coffer = client
        self.store = store
        self.data_key = data_key
        self.clients = clients

    def authenticate(self, method: str, target: str, headers, body: bytes):
        """The client's key id, or (status, error, reason) for a refusal."""
        header = headers.get("Authorization")
        if header is None:
            return None, (401, "unsigned", "the request carries no Authorization header")
        try:
            cred = coffer.parse_authorization(header)
        except coffer.InvalidArgument as e:
            return None, (401, "malformed", e.message)
        if not cred.key_id.startswith(self.clients):
            return None, (401, "unknown-client", "key %s is not a client key of this service"
                          % cred.key_id)
        # The path as sent (no normalisation) and the raw query.
        path, _, query = target.partition("?")
        try:
            r = self.coffer.verify_http_request(cred.key_id, method, path, query, body,
                                                cred.timestamp, cred.nonce, cred.signature)
        except coffer.NotFound:
            return None, (401, "unknown-client", "no client key %s" % cred.key_id)
        except (coffer.InvalidArgument, coffer.ResourceExhausted) as e:
            return None, (400, "malformed", e.message)
        except coffer.CofferError as e:
            log("coffer refused to check a request of %s: %s" % (cred.key_id, e))
            return None, coffer_refusal(e)
        if not r.valid:
            return None, (401, coffer.VERDICTS.get(r.verdict, "invalid"), r.reason)
        return cred.key_id, None

    def _dir(self, owner: str) -> str:
        # owner is the name of a key Coffer just checked a signature with:
        # [a-z0-9][a-z0-9._-]*, one path component.
        return os.path.join(self.store, owner)

    def _file(self, owner: str, note_id: str) -> str:
        return os.path.join(self._dir(owner), note_id + ".json")

    @staticmethod
    def _context(note_id: str, owner: str):
        return {"service": "notes", "note": note_id, "owner": owner}

    def put(self, owner: str, note_id: str, text: bytes) -> dict:
        dk = self.coffer.generate_data_key(self.data_key, length=32,
                                           context=self._context(note_id, owner))
        nonce = os.urandom(12)
        aad = ("notes/v1 %s %s" % (note_id, owner)).encode()
        ct = AESGCM(dk.plaintext).encrypt(nonce, text, aad)
        record = {"format": FORMAT, "owner": owner, "key": self.data_key,
                  "key_version": dk.version,
                  "wrapped_key": base64.b64encode(dk.ciphertext).decode(),
                  "nonce": base64.b64encode(nonce).decode(),
                  "ciphertext": base64.b64encode(ct).decode()}
        # Written whole or not at all, in the owner's directory only: two
        # PUTs at once each rename a whole file, the later one wins.
        os.makedirs(self._dir(owner), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._dir(owner), prefix=".note-")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._file(owner, note_id))
        return {"id": note_id, "bytes": len(text), "key_version": dk.version}

    def get(self, owner: str, note_id: str):
        try:
            with open(self._file(owner, note_id)) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        if record.get("owner") != owner:
            return None     # not this client's (a file moved by hand): as if absent
        dk = self.coffer.unwrap(record["key"], base64.b64decode(record["wrapped_key"]),
                                self._context(note_id, owner))
        aad = ("notes/v1 %s %s" % (note_id, owner)).encode()
        return AESGCM(dk.plaintext).decrypt(base64.b64decode(record["nonce"]),
                                            base64.b64decode(record["ciphertext"]), aad)


class Handler(BaseHTTPRequestHandler):
    service: NotesService = None
    server_version = "coffer-notes/1"

    def log_message(self, fmt, *args):   # one line per request, no bodies or headers
        log("%s %s" % (self.address_string(), fmt % args))

    def reply(self, status: int, obj=None, body: bytes = None, ctype="application/json"):
        data = body if body is not None else (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, status: int, error: str, reason: str):
        self.reply(status, {"error": error, "reason": reason})

    def handle_one(self, method: str):
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit():
            return self.refuse(400, "malformed", "Content-Length must be a number")
        if int(length) > BODY_MAX:
            return self.refuse(413, "too-large", "a note is at most %d bytes" % BODY_MAX)
        body = self.rfile.read(int(length)) if int(length) else b""
        owner, refusal = self.service.authenticate(method, self.path, self.headers, body)
        if refusal:
            return self.refuse(*refusal)
        m = NOTE_PATH.match(urlsplit(self.path).path)
        if m is None:
            return self.refuse(404, "not-found", "the API is /v1/notes/<id>")
        note_id = m.group(1)
        if not NOTE_ID.match(note_id):
            return self.refuse(400, "malformed", "a note id is 1..64 of a-z 0-9 - "
                               "(starting with a letter or digit)")
        try:
            if method == "PUT":
                return self.reply(201, self.service.put(owner, note_id, body))
            text = self.service.get(owner, note_id)
            if text is None:
                return self.refuse(404, "not-found", "no note %s of %s" % (note_id, owner))
            return self.reply(200, body=text, ctype="application/octet-stream")
        except coffer.CofferError as e:
            log("coffer refused %s %s of %s: %s" % (method, note_id, owner, e))
            return self.refuse(*coffer_refusal(e))

    def do_PUT(self):
        self.handle_one("PUT")

    def do_GET(self):
        self.handle_one("GET")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", required=True, help="cofferd's service socket")
    ap.add_argument("--identity", required=True, help="the daemon's identity (PEM)")
    ap.add_argument("--api-key-file", help="this service's own Coffer API key, if its "
                    "principal has one")
    ap.add_argument("--store", required=True, help="directory of the encrypted notes")
    ap.add_argument("--data-key", default="notes-data", help="the aes-256 key of data keys")
    ap.add_argument("--clients", default="client-",
                    help="prefix of the hmac-sha256 keys of clients")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--bind", default="127.0.0.1")
    a = ap.parse_args(argv)
    os.makedirs(a.store, mode=0o700, exist_ok=True)
    client = coffer.Client(a.socket, identity=a.identity, api_key_file=a.api_key_file)
    Handler.service = NotesService(client, a.store, a.data_key, a.clients)
    httpd = ThreadingHTTPServer((a.bind, a.port), Handler)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print("listening on http://%s:%d" % httpd.server_address[:2], flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
