#!/usr/bin/python3
"""The audit trail of cofferd, through cofferctl and an independent reading
of <state_dir>/audit.log:

* every call leaves one record with time, principal, uid/pid, method, key
  and version, result and request id (the caller's x-request-id, sent back
  in the trailing metadata); refused calls too; health checks not;
* `cofferctl audit verify` passes on the untouched trail, and names the
  first bad record when one byte is changed or a record is deleted (and
  passes again once repaired); the chain is resumed across a restart, and a
  torn last record (a crash mid-write) is cut off;
* after a run that wraps, unwraps, makes a data key, imports a key, issues
  an API key and rotates keys, none of those secrets is in the trail or the
  log (raw, hex, base64);
* fail closed: a trail that cannot be written (a file size limit) refuses
  calls with UNAVAILABLE and the health check says NOT_SERVING; fail open:
  calls go on and the log raises an alarm.
"""
import base64
import json
import os
import resource
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, Ctl, stubs  # noqa: E402

S = stubs()
pb = S.pb
SC = grpc.StatusCode
TIMEOUT = 20


def forms(secret):
    """The ways a secret could show up in text."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")]


class AuditTrail(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon()
        cls.d.start()
        cls.ctl = Ctl(cls.d)
        cls.path = os.path.join(cls.d.state_dir, "audit.log")
        cls.secrets = []
        c = cls.ctl
        c("key", "create", "wrap-k", "--type", "aes-256")
        c("key", "create", "sig-k", "--type", "ec-p256")
        # Wrap and unwrap a known secret (sealed).
        secret = os.urandom(48)
        cls.secrets.append(secret)
        blob = os.path.join(cls.d.dir, "blob")
        with open(os.path.join(cls.d.dir, "plain"), "wb") as f:
            f.write(secret)
        c("wrap", "wrap-k", "--in", os.path.join(cls.d.dir, "plain"), "--out", blob)
        out = c("unwrap", "wrap-k", "--in", blob, "--out", "-").stdout
        assert out == secret
        os.unlink(os.path.join(cls.d.dir, "plain"))
        # A data key in the clear, an imported key, an API key.
        dk = c("datakey", "wrap-k", "--out", os.path.join(cls.d.dir, "dk.wrapped"),
               "--plaintext-out", "-").stdout
        cls.secrets.append(dk)
        material = os.urandom(32)
        cls.secrets.append(material)
        c("key", "import", "imp-k", "--type", "hmac-sha256", "--in", "-", data=material)
        ak = c("--json", "principal", "add-key", "tester").stdout
        api = json.loads(ak)
        cls.secrets.append(base64.b64decode(api["secret"]))
        c("principal", "revoke-key", api["key"]["id"])
        # Rotations, a refused call, a signature with a request id.
        c("key", "rotate", "wrap-k")
        c("key", "rotate", "sig-k")
        c("sign", "nope-k", "--in", blob, ok=False)
        cls.sign_rid = "test-request-0001"
        _, call = cls.d.service_stub().Sign.with_call(
            pb.SignRequest(key="sig-k", message=b"m"), timeout=TIMEOUT,
            metadata=[("x-request-id", cls.sign_rid)])
        cls.trailer = dict(call.trailing_metadata())

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def records(self):
        with open(self.path) as f:
            return [json.loads(line) for line in f]

    def verify(self):
        r = self.ctl("audit", "verify", ok=False)
        self.quiesce()
        return r.returncode, r.stdout.decode()

    @staticmethod
    def quiesce():
        """Let the writer's idle seal (20 ms after the last record) land
        before the test edits the file under it."""
        time.sleep(0.2)

    def test_records_have_every_field(self):
        recs = [r for r in self.records() if "method" in r]
        want = {"seq", "time", "principal", "uid", "pid", "socket", "sealed", "method", "key",
                "version", "result", "request_id", "chain"}
        for r in recs:
            self.assertEqual(set(r), want, r)
        by = {}
        for r in recs:
            by.setdefault(r["method"].rsplit("/", 1)[1], []).append(r)
        wrap = by["Wrap"][0]
        self.assertEqual((wrap["key"], wrap["version"], wrap["result"], wrap["sealed"],
                          wrap["principal"], wrap["socket"]),
                         ("wrap-k", 1, "OK", True, "tester", "service"))
        self.assertEqual(wrap["uid"], os.geteuid())
        self.assertTrue(any(r["key"] == "wrap-k" and r["version"] == 2 for r in by["RotateKey"]))
        refused = [r for r in by["Sign"] if r["key"] == "nope-k"]
        self.assertEqual(refused[0]["result"], "NOT_FOUND")
        mine = [r for r in by["Sign"] if r["request_id"] == self.sign_rid]
        self.assertEqual(len(mine), 1)
        self.assertEqual(self.trailer.get("x-request-id"), self.sign_rid)
        self.assertEqual(by["CreateApiKey"][0]["key"], "tester")
        self.assertEqual(by["CreateApiKey"][0]["sealed"], True)
        self.assertNotIn("Check", by)  # health checks are not recorded
        # Sealed calls are recorded once, as their inner call.
        self.assertNotIn("Call", by)

    def test_tail(self):
        out = self.ctl("audit", "tail", "--count", "3").stdout.decode().splitlines()
        self.assertEqual(len(out), 3)
        seqs = [json.loads(x)["seq"] for x in out]
        self.assertEqual(seqs, sorted(seqs))
        arr = json.loads(self.ctl("--json", "audit", "tail", "--count", "5").stdout)
        self.assertEqual(len(arr), 5)
        r = self.ctl("audit", "tail", "--count", "1001", ok=False)
        self.assertEqual(r.returncode, 2)

    def test_no_secret_in_trail_or_log(self):
        with open(self.path, "rb") as f:
            trail = f.read()
        log = self.d.log().encode()
        self.assertGreater(len(self.secrets), 3)
        for s in self.secrets:
            for form in forms(s):
                self.assertNotIn(form, trail)
                self.assertNotIn(form, log)

    def test_verify_names_altered_and_deleted_records(self):
        self.quiesce()
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)
        self.assertIn("audit trail intact", out)
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        k = next(i for i, line in enumerate(lines) if b'"method":"/coffer.v1.KeyService/Wrap"'
                 in line)
        # One byte changed in record k+1 (1-based): named.
        off = sum(len(x) + 1 for x in lines[:k]) + lines[k].index(b'"result":"OK"') + 10
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(b"X")
        rc, out = self.verify()
        self.assertEqual(rc, 1, out)
        self.assertIn("BROKEN at record %d:" % (k + 1), out)
        self.assertIn("altered", out)
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(b"O")
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)
        # Record k+1 deleted: named.
        with open(self.path, "rb") as f:
            whole = f.read()
        lines = whole.split(b"\n")
        removed = lines.pop(k)
        with open(self.path, "wb") as f:
            f.write(b"\n".join(lines))
        rc, out = self.verify()
        self.assertEqual(rc, 1, out)
        self.assertIn("BROKEN at record %d:" % (k + 1), out)
        self.assertIn("deleted", out)
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        lines.insert(k, removed)
        with open(self.path, "wb") as f:
            f.write(b"\n".join(lines))
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)

    def test_rewritten_chain_is_caught_by_the_seal(self):
        """An attacker who edits a record and recomputes every chain value
        after it (SHA-256 needs no key) is caught by the next seal, which
        needs the token's audit key."""
        import hashlib
        self.quiesce()
        with open(self.path, "rb") as f:
            original = f.read()
        lines = original.split(b"\n")[:-1]
        k = next(i for i, line in enumerate(lines) if b'"key":"nope-k"' in line)
        lines[k] = lines[k].replace(b'"result":"NOT_FOUND"', b'"result":"OK"')
        prev = bytes(32) if k == 0 else bytes.fromhex(
            json.loads(lines[k - 1])["chain"])
        for i in range(k, len(lines)):
            body = lines[i][:lines[i].rindex(b',"chain":"')]
            prev = hashlib.sha256(prev + body).digest()
            lines[i] = body + b',"chain":"' + prev.hex().encode() + b'"}'
        tampered = b"\n".join(lines) + b"\n"
        try:
            with open(self.path, "wb") as f:
                f.write(tampered)
            rc, out = self.verify()
            self.assertEqual(rc, 1, out)
            self.assertIn("seal does not verify", out)
            # The first seal after the edited record is where it shows.
            j = next(i for i in range(k + 1, len(lines)) if b'"seal":"' in lines[i])
            self.assertIn("BROKEN at record %d:" % (j + 1), out)
        finally:
            # Back as it was, with what the daemon appended meanwhile.
            with open(self.path, "rb") as f:
                appended = f.read()[len(tampered):]
            with open(self.path, "wb") as f:
                f.write(original + appended)
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)

    def test_zz_restart_resumes_the_chain_and_cuts_a_torn_record(self):
        n = len(self.records())
        self.d.stop()
        with open(self.path, "ab") as f:
            f.write(b'{"seq":%d,"time":"2026-' % (n + 1))
        self.d.start()
        self.assertIn("torn record", self.d.log(all_starts=False))
        self.ctl = Ctl(self.d)
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)
        recs = self.records()
        self.assertGreater(len(recs), n)
        self.assertEqual([r["seq"] for r in recs], list(range(1, len(recs) + 1)))


class FailureModes(unittest.TestCase):
    def start_limited(self, mode):
        """cofferd whose files cannot grow past 300 KB (RLIMIT_FSIZE)."""
        d = CofferDaemon(config={"audit": {"failure": mode, "max_wait_ms": "500"}})
        lim = 300 * 1024
        d.spawn_kw = {"preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                 (lim, lim))}
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="k", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)
        return d

    def health(self, d):
        return S.health_pb_grpc.HealthStub(d.channel()).Check(
            S.health_pb.HealthCheckRequest(), timeout=TIMEOUT).status

    def fill(self, d):
        """Make calls until the trail stops growing; returns the error seen."""
        svc = d.service_stub()
        path = os.path.join(d.state_dir, "audit.log")
        for _ in range(5000):
            try:
                svc.Mac(pb.MacRequest(key="k", data=b"x" * 10), timeout=TIMEOUT)
            except grpc.RpcError as e:
                return e
            if "cannot be written" in d.log(all_starts=False):
                return None
        self.fail("the trail never filled %d bytes" % os.path.getsize(path))

    def test_fail_closed(self):
        d = self.start_limited("closed")
        try:
            self.fill(d)
            with self.assertRaises(grpc.RpcError) as cm:
                d.service_stub().Mac(pb.MacRequest(key="k", data=b"x"), timeout=TIMEOUT)
            self.assertEqual(cm.exception.code(), SC.UNAVAILABLE)
            self.assertIn("audit trail cannot be written", cm.exception.details())
            self.assertIn("fails closed", cm.exception.details())
            self.assertEqual(self.health(d), S.health_pb.HealthCheckResponse.NOT_SERVING)
            self.assertIn("audit: the trail cannot be written", d.log())
        finally:
            d.cleanup()

    def test_fail_open(self):
        d = self.start_limited("open")
        try:
            self.assertIsNone(self.fill(d))
            for _ in range(3):
                d.service_stub().Mac(pb.MacRequest(key="k", data=b"x"), timeout=TIMEOUT)
            self.assertEqual(self.health(d), S.health_pb.HealthCheckResponse.SERVING)
            d.wait_for_log("ALARM: audit", timeout=5)
        finally:
            d.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
