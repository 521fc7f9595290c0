#!/usr/bin/python3
"""The example service (examples/notes_service.py) and its driver
(examples/notes_client.py) against a live cofferd.

The operator's part is done here through coffer.Client: an aes-256 key for
data keys, and each client's secret imported as an hmac-sha256 key (the
client keeps its copy in a file). Then the service runs as its own process
and the driver runs against it, as a client would: signed requests
accepted; replayed, stale, tampered and unsigned ones refused (the verdict
is Coffer's); the stored note is ciphertext under a wrapped data key. Also:
another client cannot read the note, nor replace it with a note of the same
id (each client's notes are its own), a key outside the service's client
prefix is not checked at all, a request replayed after cofferd restarts is
still refused, the audit trail shows the service's sealed data-key calls,
cofferd stopped is a 503 with the reason, and control characters of a
request line are escaped in the service's log.
"""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("COFFER_SOURCE_DIR") or os.path.join(HERE, "..", "..")
BUILD = os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC, "build")
PYPATH = os.path.join(BUILD, "client", "python")
EXAMPLES = os.path.join(SRC, "examples")
sys.path.insert(0, PYPATH)
sys.path.insert(0, EXAMPLES)

import coffer  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
import notes_client  # noqa: E402

from rpc_common import ModuleDaemon  # noqa: E402

SHARED = ModuleDaemon()


class NotesExample(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        SHARED.set_up()
        d = cls.d = SHARED.d
        cls.ident = os.path.join(d.dir, "identity.pem")
        with open(cls.ident, "wb") as f:
            f.write(serialization.load_der_public_key(d.identity).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        op = coffer.Client(d.service_socket, admin_socket=d.admin_socket, identity=cls.ident)
        op.create_key("notes-data", "aes-256")
        cls.secrets = {}
        for who in ("client-alice", "client-bob"):
            secret = os.urandom(32)
            op.import_key(who, "hmac-sha256", secret)      # sealed
            path = os.path.join(d.dir, who + ".secret")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secret.hex().encode() + b"\n")
            os.close(fd)
            cls.secrets[who] = (secret, path)
        cls.op = op
        cls.store = os.path.join(d.dir, "notes")
        env = dict(os.environ, COFFER_PYTHON_PATH=PYPATH)
        cls.log = open(os.path.join(d.dir, "notes.log"), "wb")
        cls.svc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(EXAMPLES, "notes_service.py"), "--socket",
             d.service_socket, "--identity", cls.ident, "--store", cls.store, "--port", "0"],
            stdout=subprocess.PIPE, stderr=cls.log, env=env, text=True)
        line = cls.svc.stdout.readline().strip()
        if not line.startswith("listening on http://127.0.0.1:"):
            cls.svc.kill()
            cls.svc.wait()
            cls.log.close()
            SHARED.tear_down()
            raise AssertionError("notes_service did not start: %r" % line)
        cls.url = line.split()[-1]

    @classmethod
    def tearDownClass(cls):
        try:
            cls.svc.send_signal(signal.SIGTERM)
            rc = cls.svc.wait(30)
        finally:
            cls.svc.stdout.close()
            cls.log.close()
            cls.op.close()
            SHARED.tear_down()
        assert rc == 0, "notes_service exited %d" % rc

    def alice(self):
        return self.notes_client("client-alice")

    def notes_client(self, who):
        secret, _ = self.secrets[who]
        return notes_client.NotesClient(self.url, who, secret)

    def put(self, cl, note, text):
        h, body = cl.signed("PUT", "/v1/notes/" + note, text)
        status, reply = cl.send("PUT", "/v1/notes/" + note, h, body)
        return status, json.loads(reply)

    def get(self, cl, note):
        h, _ = cl.signed("GET", "/v1/notes/" + note)
        return cl.send("GET", "/v1/notes/" + note, h, b"")

    def test_1_the_driver(self):
        _, path = self.secrets["client-alice"]
        r = subprocess.run(["/usr/bin/python3", os.path.join(EXAMPLES, "notes_client.py"),
                            "--url", self.url, "--key-id", "client-alice", "--secret-file",
                            path, "--store", self.store],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, COFFER_PYTHON_PATH=PYPATH))
        print(r.stdout, end="")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout.splitlines()
        self.assertTrue(out[0].startswith("1. signed PUT") and " ok   201 " in out[0], out[0])
        self.assertIn("ok   200 (the same text)", out[1])
        self.assertIn("ok   401 replayed: nonce was already used with this key: a replayed "
                      "request", out[2])
        self.assertRegex(out[3], r"ok   401 expired: timestamp is 36\d\d s old; the window is "
                         r"300 s: sign the request again$")
        self.assertIn("ok   401 bad-signature: signature does not match the canonical request "
                      "under any enabled version of the key", out[4])
        self.assertIn("ok   401 unsigned: the request carries no Authorization header", out[5])
        self.assertIn("note text in the file: no", out[6])
        self.assertEqual(out[-1], "notes_client: OK: signed requests accepted; replayed, stale, "
                         "tampered and unsigned ones refused; the note is stored encrypted")

    def test_2_stored_under_a_wrapped_data_key(self):
        cl = self.alice()
        h, body = cl.signed("PUT", "/v1/notes/secret-1", b"top secret text")
        self.assertEqual(cl.send("PUT", "/v1/notes/secret-1", h, body)[0], 201)
        with open(os.path.join(self.store, "client-alice", "secret-1.json")) as f:
            rec = json.load(f)
        self.assertEqual((rec["owner"], rec["key"], rec["key_version"]),
                         ("client-alice", "notes-data", 1))
        ct = base64.b64decode(rec["ciphertext"])
        self.assertNotIn(b"top secret text", ct)
        self.assertEqual(len(ct), len(b"top secret text") + 16)
        # The data key is a Coffer wrap blob (format 1, version 1) that opens
        # only with the note's context.
        wrapped = base64.b64decode(rec["wrapped_key"])
        self.assertEqual(wrapped[:5], b"\x01\x00\x00\x00\x01")
        ctx = {"service": "notes", "note": "secret-1", "owner": "client-alice"}
        self.assertEqual(len(self.op.unwrap("notes-data", wrapped, ctx).plaintext), 32)
        with self.assertRaises(coffer.InvalidArgument) as e:
            self.op.unwrap("notes-data", wrapped, dict(ctx, owner="client-bob"))
        self.assertEqual(e.exception.message, "ciphertext does not decrypt under key notes-data "
                         "version 1 with this context: it was altered, or the context differs")
        # Bob signs correctly but does not own it.
        secret, _ = self.secrets["client-bob"]
        bob = notes_client.NotesClient(self.url, "client-bob", secret)
        h, _ = bob.signed("GET", "/v1/notes/secret-1")
        status, reply = bob.send("GET", "/v1/notes/secret-1", h, b"")
        self.assertEqual((status, json.loads(reply)), (404, {
            "error": "not-found", "reason": "no note secret-1 of client-bob"}))
        # The audit trail: the service's data key and unwrap went sealed.
        h, _ = cl.signed("GET", "/v1/notes/secret-1")
        self.assertEqual(cl.send("GET", "/v1/notes/secret-1", h, b""),
                         (200, b"top secret text"))
        records = [json.loads(x) for x in self.op.tail_audit(50)]
        methods = [(r["method"], r["sealed"]) for r in records if "method" in r]
        self.assertIn(("/coffer.v1.KeyService/GenerateDataKey", True), methods)
        self.assertIn(("/coffer.v1.KeyService/Unwrap", True), methods)
        self.assertIn(("/coffer.v1.KeyService/VerifyRequestSignature", False), methods)

    def test_3_refusals(self):
        cl = self.alice()
        # A key that is not a client key is never checked against.
        key = notes_client.NotesClient(self.url, "notes-data", b"k" * 32)
        h, _ = key.signed("GET", "/v1/notes/x")
        status, reply = key.send("GET", "/v1/notes/x", h, b"")
        self.assertEqual((status, json.loads(reply)), (401, {
            "error": "unknown-client", "reason": "key notes-data is not a client key of this "
            "service"}))
        h, _ = cl.signed("GET", "/v1/notes/x")
        status, reply = cl.send("GET", "/v1/notes/x", {"Authorization": "Bearer x"}, b"")
        self.assertEqual((status, json.loads(reply)["error"]), (401, "malformed"))
        h, body = cl.signed("PUT", "/v1/notes/Bad_Id", b"x")
        status, reply = cl.send("PUT", "/v1/notes/Bad_Id", h, body)
        self.assertEqual((status, json.loads(reply)["reason"]), (400, "a note id is 1..64 of "
                         "a-z 0-9 - (starting with a letter or digit)"))
        big = b"x" * (64 * 1024 + 1)
        h, body = cl.signed("PUT", "/v1/notes/big", big)
        status, reply = cl.send("PUT", "/v1/notes/big", h, body)
        self.assertEqual((status, json.loads(reply)["error"]), (413, "too-large"))
        # The query is signed too: changing it breaks the signature.
        h, _ = cl.signed("GET", "/v1/notes/x?a=1")
        status, reply = cl.send("GET", "/v1/notes/x?a=2", h, b"")
        self.assertEqual((status, json.loads(reply)["error"]), (401, "bad-signature"))

    def test_4_replay_after_a_restart(self):
        cl = self.alice()
        h, body = cl.signed("PUT", "/v1/notes/after-restart", b"once")
        self.assertEqual(cl.send("PUT", "/v1/notes/after-restart", h, body)[0], 201)
        self.d.restart()
        self.d.ensure_principal()
        deadline = time.monotonic() + 10
        while True:   # the service's client reconnects on its own
            status, reply = cl.send("PUT", "/v1/notes/after-restart", h, body)
            if status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual((status, json.loads(reply)), (401, {
            "error": "replayed", "reason": "nonce was already used with this key: a replayed "
            "request"}))
        h, _ = cl.signed("GET", "/v1/notes/after-restart")
        self.assertEqual(cl.send("GET", "/v1/notes/after-restart", h, b""), (200, b"once"))

    def test_5_another_client_cannot_replace_a_note(self):
        """Bob's PUT of Alice's note id stores Bob's own note: Alice's is
        untouched, also when both write the id at once."""
        alice, bob = self.alice(), self.notes_client("client-bob")
        self.assertEqual(self.put(alice, "shopping", b"alice's list")[0], 201)
        self.assertEqual(self.put(bob, "shopping", b"bob was here"), (201, {
            "id": "shopping", "bytes": 12, "key_version": 1}))
        self.assertEqual(self.get(alice, "shopping"), (200, b"alice's list"))
        self.assertEqual(self.get(bob, "shopping"), (200, b"bob was here"))
        with open(os.path.join(self.store, "client-alice", "shopping.json")) as f:
            self.assertEqual(json.load(f)["owner"], "client-alice")
        results = {}

        def write(cl, text):
            results[text] = self.put(cl, "race", text)[0]

        threads = [threading.Thread(target=write, args=(cl, b"%s %d" % (who, i)))
                   for i in range(3) for cl, who in ((alice, b"alice"), (bob, b"bob"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(sorted(results.values()), [201] * 6)
        status, text = self.get(alice, "race")
        self.assertEqual(status, 200)
        self.assertRegex(text, rb"^alice [012]\Z")
        status, text = self.get(bob, "race")
        self.assertEqual(status, 200)
        self.assertRegex(text, rb"^bob [012]\Z")

    def test_6_key_service_down(self):
        """cofferd stopped: the signature cannot be checked, and the client
        gets 503 with the reason (not a dropped connection)."""
        cl = self.alice()
        self.d.stop()
        try:
            replies = []
            for _ in range(2):
                h, _ = cl.signed("GET", "/v1/notes/shopping")
                status, reply = cl.send("GET", "/v1/notes/shopping", h, b"")
                replies.append((status, json.loads(reply)))
        finally:
            self.d.start()
        # The first call may find the old connection broken (gRPC's words,
        # "Broken pipe", "Socket closed"); the next cannot connect.
        for status, reply in replies:
            self.assertEqual((status, reply["error"]), (503, "unavailable"), reply)
            self.assertRegex(reply["reason"], "^the key service is unavailable: .")
        self.assertTrue(replies[1][1]["reason"].startswith(
            "the key service is unavailable: cannot reach cofferd at %s: failed to connect"
            % self.d.service_socket), replies[1][1]["reason"])

    def test_7_control_characters_escaped_in_the_log(self):
        """A request line with ESC and CR (a forged log line, a terminal
        escape) is logged with them as \\xNN."""
        u = urlsplit(self.url)
        line = b"GET /v1/notes/x\x1b[2J\rnotes: 10.9.9.9 \"PUT /v1/notes/forged\" 201 HTTP/1.1"
        with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
            sock.sendall(line + b"\r\n\r\n")
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        self.assertTrue(reply.startswith(b"HTTP/1.0 400 "), reply)
        want = (b'"GET /v1/notes/x\\x1b[2J\\x0dnotes: 10.9.9.9 "PUT /v1/notes/forged" 201 '
                b'HTTP/1.1" 400')
        deadline = time.monotonic() + 10
        while True:   # the service's stderr, another process: read until the line is in
            with open(self.log.name, "rb") as f:
                logged = f.read()
            if want in logged or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn(want, logged)
        self.assertNotIn(b"\x1b", logged)
        self.assertNotIn(b"\r", logged)


if __name__ == "__main__":
    unittest.main(verbosity=2)
