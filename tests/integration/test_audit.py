#!/usr/bin/python3
"""The audit trail of cofferd, through cofferctl and an independent reading
of <state_dir>/audit.log:

* every call leaves one record with time, principal, uid/pid, method, key
  and version, result and request id (the caller's x-request-id, sent back
  in the trailing metadata); refused calls too; health checks not;
* `cofferctl audit verify` passes on the untouched trail, and names the
  first bad record when one byte is changed or a record is deleted (and
  passes again once repaired); a crash's torn last record is cut off at the
  next start;
* every tamper of issue 13 (flip a byte, delete, insert, reorder, drop the
  last record, cut it in half, forge it with a recomputed chain after
  deleting the last seals, replace the file with an older copy) is named —
  line and reason — by the offline verifier (`cofferctl audit verify --file
  --public-key --state-db`, no daemon) and by the daemon's own verify after
  it starts on the tampered trail; a clean stop and a SIGKILL followed by a
  start both verify intact, the start record saying what it found;
* after a run that wraps, unwraps, makes a data key, imports a key, issues
  an API key and rotates keys, none of those secrets is in the trail or the
  log (raw, hex, base64);
* fail closed: a trail that cannot be written (a file size limit) refuses
  calls with UNAVAILABLE and the health check says NOT_SERVING; fail open:
  calls go on and the log raises an alarm (tests/integration/test_audit_failclosed.py:
  the three failure kinds).
"""
import base64
import json
import os
import resource
import signal
import subprocess
import time
import unittest

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, Ctl, cofferctl_path  # noqa: E402
from rpc_common import SC, TIMEOUT, S, pb  # noqa: E402


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
        c("principal", "set-auth", "tester", "--uid-only")   # calls below are unsigned
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
            # Records of committed changes come through the store's outbox.
            self.assertEqual(set(r) - {"outbox"}, want, r)
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
        # The record of the change names what it made (the API key's id).
        self.assertTrue(by["CreateApiKey"][0]["key"].startswith("ak_"), by["CreateApiKey"])
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
            j = next(i for i in range(k + 1, len(lines)) if b'"sig":"' in lines[i])
            self.assertIn("BROKEN at record %d:" % (j + 1), out)
        finally:
            # Back as it was, with what the daemon appended meanwhile.
            with open(self.path, "rb") as f:
                appended = f.read()[len(tampered):]
            with open(self.path, "wb") as f:
                f.write(original + appended)
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)

    def test_zz_crash_torn_record_is_cut_at_restart(self):
        """A daemon killed while writing leaves a torn last line past its
        anchor: the next start cuts it, says so, and the chain goes on."""
        n = len(self.records())
        self.d.stop(sig=signal.SIGKILL, expect=None)
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
        start = [r for r in recs if r.get("event") == "start"][-1]
        self.assertEqual(start["anchor"], "crash")
        self.assertGreater(start["cut_bytes"], 0)
        self.assertNotIn("tampered", start)


    def test_zz_forged_outbox_id_hides_no_later_change(self):
        """After a crash, records past the anchor are adopted, and anyone
        can chain one on (SHA-256 needs no key). One claiming a huge outbox
        id made every later change's record count as written already: the
        calls were answered OK with no record (found by a review). Now a
        change's record is skipped only if the file holds that very record."""
        n = len(self.records())
        self.d.stop(sig=signal.SIGKILL, expect=None)
        with open(self.path, "rb") as f:
            lines = f.read().splitlines()
        lines.append(b'{"seq":%d,"outbox":9223372036854775806,"time":"2026-12-07T00:00:00Z",'
                     b'"method":"/forged","chain":"%s"}' % (n + 1, b"0" * 64))
        with open(self.path, "wb") as f:
            f.write(b"\n".join(rechain(lines, len(lines) - 1)) + b"\n")
        self.d.start()
        self.ctl = Ctl(self.d)
        rid = "after-forged-outbox-1"
        self.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="after-forge", type=pb.EC_P256),
                                      timeout=TIMEOUT, metadata=[("x-request-id", rid)])
        mine = [r for r in self.records() if r.get("request_id") == rid]
        self.assertEqual([(r["method"], r["key"]) for r in mine],
                         [("/coffer.v1.AdminService/CreateKey", "after-forge")])
        rc, out = self.verify()
        self.assertEqual(rc, 0, out)


def ctl_offline(*args):
    return subprocess.run([cofferctl_path()] + list(args), capture_output=True, timeout=60)


def rechain(lines, k):
    """Recompute the chain values of lines[k:] (what anyone can do: SHA-256
    needs no key)."""
    import hashlib
    prev = bytes(32) if k == 0 else bytes.fromhex(json.loads(lines[k - 1])["chain"])
    for i in range(k, len(lines)):
        body = lines[i][:lines[i].rindex(b',"chain":"')]
        prev = hashlib.sha256(prev + body).digest()
        lines[i] = body + b',"chain":"' + prev.hex().encode() + b'"}'
    return lines


class AppendedWhileRunning(unittest.TestCase):
    def test_record_appended_by_another_process(self):
        """The daemon's verify reads up to where it last wrote; a record
        another process chained on meanwhile was not seen until the daemon
        wrote again (found by a review). Now named at once."""
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="ap", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        ctl = Ctl(d)
        AuditTrail.quiesce()
        self.assertEqual(ctl("audit", "verify", ok=False).returncode, 0)
        AuditTrail.quiesce()           # the verify's own record and seal
        path = os.path.join(d.state_dir, "audit.log")
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        n = len(lines)
        lines.append(b'{"seq":%d,"time":"2026-12-07T00:00:00Z","method":"/forged","chain":"%s"}'
                     % (n + 1, b"0" * 64))
        extra = rechain(lines, n)[n] + b"\n"
        with open(path, "ab") as f:
            f.write(extra)
        r = ctl("audit", "verify", ok=False)
        out = r.stdout.decode() + r.stderr.decode()
        self.assertEqual(r.returncode, 1, out)
        self.assertIn("BROKEN at record %d: record %d: %d bytes follow record %d, the last the "
                      "daemon wrote: another process appended to the file"
                      % (n + 1, n + 1, len(extra), n), out)


    def test_tail_shows_no_unfinished_line(self):
        """A last line without its newline (a batch being written) is not
        a record: audit tail showed it, cut by one byte (found by a review)."""
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        ctl = Ctl(d)
        AuditTrail.quiesce()
        path = os.path.join(d.state_dir, "audit.log")
        with open(path, "rb") as f:
            last = f.read().splitlines()[-1]
        with open(path, "ab") as f:
            f.write(b'{"seq":999,"time":"2026-12-07T00:00:00Z","unfinished')
        out = ctl("audit", "tail", "--count", "1").stdout
        self.assertNotIn(b"unfinished", out)
        self.assertEqual(json.loads(out)["seq"], json.loads(last)["seq"])


class Tampering(unittest.TestCase):
    """Each tamper of issue 13, made while the daemon is stopped, named by the
    offline verifier (from the state store's anchor) and by the daemon's
    verify once it has started on the tampered trail."""

    @classmethod
    def setUpClass(cls):
        cls.d = d = CofferDaemon()
        d.start()
        cls.path = os.path.join(d.state_dir, "audit.log")
        cls.pub = os.path.join(d.state_dir, "audit-seal.pub")
        adm, svc = d.admin_stub(), d.service_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="t", type=pb.EC_P256), timeout=TIMEOUT)
        for i in range(3):
            svc.Sign(pb.SignRequest(key="t", message=b"%d" % i), timeout=TIMEOUT)
        d.stop()
        with open(cls.path, "rb") as f:
            cls.older = f.read()       # an older copy: the trail at the first clean stop
        d.start()
        svc = d.service_stub()
        svc.Sign(pb.SignRequest(key="t", message=b"a"), timeout=TIMEOUT)
        time.sleep(0.2)                # sealed when idle
        svc.Sign(pb.SignRequest(key="t", message=b"last"), timeout=TIMEOUT)
        time.sleep(0.2)
        d.stop()
        d.save_state("clean")
        with open(cls.path, "rb") as f:
            cls.pristine = f.read()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def setUp(self):
        # Every test starts from the trail and state store of the clean stop.
        self.d.restore_state("clean")
        with open(self.path, "wb") as f:
            f.write(self.pristine)

    def tearDown(self):
        if self.d.running:
            self.d.stop()

    def lines(self):
        return self.pristine.split(b"\n")[:-1]

    def write(self, data):
        with open(self.path, "wb") as f:
            f.write(data)

    def offline(self):
        """The offline verifier's exit status and output (the anchor from the
        state: SQLite file or PostgreSQL)."""
        r = ctl_offline("audit", "verify", "--file", self.path, "--public-key", self.pub,
                        *self.d.anchor_args())
        return r.returncode, r.stdout.decode() + r.stderr.decode()

    def daemon_verify(self):
        self.d.start()
        r = Ctl(self.d)("audit", "verify", ok=False)
        return r.returncode, r.stdout.decode() + r.stderr.decode()

    def assert_named(self, line, *words):
        """Both verifiers name `line` (1-based) and say why."""
        for who, res in (("offline", self.offline()), ("daemon", self.daemon_verify())):
            if res is None:
                continue
            rc, out = res
            self.assertEqual(rc, 1, "%s: %s" % (who, out))
            self.assertIn("BROKEN at record %d: record %d:" % (line, line), out, who)
            for w in words:
                self.assertIn(w, out, "%s: %s" % (who, out))
        # The daemon said so at its start too, and sealed that in its start
        # record (every later verify reports it).
        self.assertIn("ALARM: audit: %s was altered" % self.path, self.d.log(all_starts=False))

    def test_intact_after_clean_stop_and_start(self):
        res = self.offline()
        if res is not None:
            rc, out = res
            self.assertEqual(rc, 0, out)
            self.assertIn("anchor: record %d (clean stop)" % len(self.lines()), out)
        rc, out = self.daemon_verify()
        self.assertEqual(rc, 0, out)
        with open(self.path) as f:
            events = [r for r in map(json.loads, f) if "event" in r]
        self.assertEqual([r["event"] for r in events], ["start", "stop", "start", "stop",
                                                         "start"])
        self.assertEqual((events[-1]["anchor"], events[-1]["anchored"]),
                         ("clean", len(self.lines())))
        # After a clean stop the last record is a sealed stop record.
        self.assertEqual(json.loads(self.lines()[-1])["event"], "stop")
        self.assertIn("sig", json.loads(self.lines()[-1]))

    def test_flip_a_byte(self):
        lines = self.lines()
        k = next(i for i, x in enumerate(lines) if b'"message"' not in x and
                 b'KeyService/Sign' in x)
        off = sum(len(x) + 1 for x in lines[:k]) + lines[k].index(b'"result":"OK"') + 10
        data = bytearray(self.pristine)
        data[off] ^= 0x01
        self.write(bytes(data))
        self.assert_named(k + 1, "altered")

    def test_delete_a_record(self):
        lines = self.lines()
        k = len(lines) // 2
        del lines[k]
        self.write(b"\n".join(lines) + b"\n")
        self.assert_named(k + 1, "missing", "deleted")

    def test_insert_a_record(self):
        lines = self.lines()
        k = len(lines) // 2
        lines.insert(k, lines[2])      # an old record played again
        self.write(b"\n".join(lines) + b"\n")
        self.assert_named(k + 1, "the record here is number 3", "inserted")

    def test_reorder_two_records(self):
        lines = self.lines()
        k = len(lines) // 2
        lines[k], lines[k + 1] = lines[k + 1], lines[k]
        self.write(b"\n".join(lines) + b"\n")
        self.assert_named(k + 1, "reordered")

    def test_drop_the_last_record(self):
        lines = self.lines()
        self.write(b"\n".join(lines[:-1]) + b"\n")
        self.assert_named(len(lines), "missing", "anchored in the state store",
                          "records %d..%d were removed" % (len(lines), len(lines)))

    def test_cut_the_last_record_in_half(self):
        lines = self.lines()
        self.write(self.pristine[:-(len(lines[-1]) // 2)])
        self.assert_named(len(lines), "cut short")

    def test_forge_the_last_record_and_delete_the_last_seals(self):
        """Delete the seal and the stop record after the last call, rewrite
        that call's record (it failed, say) with a recomputed chain: no seal
        covers it any more, and the anchor shows the tail is gone."""
        lines = self.lines()
        k = max(i for i, x in enumerate(lines) if b'"sig":"' not in x)
        self.assertEqual(len(lines) - k, 3)          # the call, a seal, the stop record
        self.assertIn(b'"sig":"', lines[k - 1])      # sealed before it
        lines = lines[:k + 1]
        lines[k] = lines[k].replace(b'"result":"OK"', b'"result":"PERMISSION_DENIED"')
        self.write(b"\n".join(rechain(lines, k)) + b"\n")
        self.assert_named(k + 1, "not authenticated", "may have been rewritten")

    def test_replace_the_file_with_an_older_copy(self):
        m = self.older.count(b"\n")
        self.write(self.older)
        self.assert_named(m + 1, "older copy", "records %d..%d were removed"
                          % (m + 1, len(self.lines())))

    def test_move_the_file_aside(self):
        """The remedy the ALARM names (and how a trail is rotated): the file
        moved aside, the daemon begins a new trail, sound by itself, whose
        start record names the previous one's anchor; that file still
        verifies offline against it. (The new trail used to be judged as
        records 1..N removed, and reported BROKEN by every verify.)"""
        aside = self.path + ".1"
        os.rename(self.path, aside)
        self.addCleanup(lambda: os.path.exists(aside) and os.unlink(aside))
        rc, out = self.daemon_verify()
        self.assertEqual(rc, 0, out)
        self.assertIn("intact", out)
        log = self.d.log(all_starts=False)
        self.assertNotIn("ALARM", log)
        self.assertIn("holds no record, where the state store anchors record %d of a trail: "
                      "a new trail begins" % len(self.lines()), log)
        with open(self.path) as f:
            first = json.loads(f.readline())
        self.assertEqual((first["seq"], first["event"], first["new_trail"]), (1, "start", True))
        seq, chain = first["previous_anchor"].split(":")
        self.assertEqual(int(seq), len(self.lines()))
        self.assertEqual(chain, json.loads(self.lines()[-1])["chain"])
        r = ctl_offline("audit", "verify", "--file", aside, "--public-key", self.pub,
                        "--anchor", first["previous_anchor"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.d.stop()
        rc, out = self.offline()
        self.assertEqual(rc, 0, out)

    def test_offline_without_anchor_or_key(self):
        # Without the anchor a cut tail cannot be seen (and it says so) ...
        self.write(b"\n".join(self.lines()[:-1]) + b"\n")
        r = ctl_offline("audit", "verify", "--file", self.path, "--public-key", self.pub)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(b"no anchor given", r.stdout)
        # ... with an anchor noted elsewhere it can.
        last = json.loads(self.lines()[-1])
        r = ctl_offline("audit", "verify", "--file", self.path, "--public-key", self.pub,
                        "--anchor", "%d:%s" % (last["seq"], last["chain"]))
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(b"BROKEN at record %d:" % last["seq"], r.stdout)
        # Another key: every seal fails, the first one named.
        other = os.path.join(self.d.dir, "other.pem")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", other + ".key"], check=True)
        subprocess.run(["openssl", "ec", "-in", other + ".key", "-pubout", "-out", other],
                       check=True, capture_output=True)
        self.write(self.pristine)
        r = ctl_offline("audit", "verify", "--file", self.path, "--public-key", other,
                        *self.d.anchor_args())
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(b"BROKEN at record 1: record 1: its seal does not verify", r.stdout)
        r = ctl_offline("audit", "verify", "--file", self.path)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"--public-key", r.stderr)


class Crash(unittest.TestCase):
    def test_sigkill_then_start_verifies_intact(self):
        """SIGKILL amid a burst of calls: records written after the last
        anchor are adopted at the next start (the start record says how
        many) and the trail verifies intact, offline and in the daemon."""
        import threading
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        path = os.path.join(d.state_dir, "audit.log")
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="c", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)
        svc = d.service_stub()
        stop = threading.Event()

        def burst():
            while not stop.is_set():
                try:
                    svc.Mac(pb.MacRequest(key="c", data=b"x"), timeout=TIMEOUT)
                except grpc.RpcError:
                    return
        t = threading.Thread(target=burst)
        t.start()
        time.sleep(0.5)
        # The writer seals (and anchors) whenever it is idle for 20 ms, so
        # a kill at a random moment may find nothing after the anchor. Frozen
        # with SIGSTOP, the file and the anchor can be compared exactly: kill
        # only once records were written after the last anchor.
        deadline = time.monotonic() + 60
        while True:
            os.kill(d.pid, signal.SIGSTOP)
            with open(path, "rb") as f:
                lines = [x for x in f.read().split(b"\n")[:-1] if x]
            rec = json.loads(lines[-1]) if lines else {}
            # One daemon: one anchor row (keyed by id on SQLite, by replica
            # on PostgreSQL).
            rows = d.state_query("SELECT seq FROM audit_anchor", readonly=True)
            row = (int(rows[0][0]),) if rows else None
            # Only a seal is anchored (these calls move no outbox): frozen
            # mid-commit, the anchor read here may lag the one a restart
            # recovers from the WAL, but never past the last seal, so a last
            # line that is a call record is past every anchor.
            if row is not None and rec.get("seq", 0) > row[0] and "sig" not in rec:
                break
            self.assertLess(time.monotonic(), deadline, "no record after the anchor in 60 s")
            os.kill(d.pid, signal.SIGCONT)
            time.sleep(0.002)
        d.stop(sig=signal.SIGKILL, expect=None)
        stop.set()
        t.join()
        pub = os.path.join(d.state_dir, "audit-seal.pub")
        # Offline, before the restart: the anchor is not a clean stop's, so
        # the records after it are fine (and said to be unsealed).
        r = ctl_offline("audit", "verify", "--file", path, "--public-key", pub,
                        *d.anchor_args())
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(b"stopped without a clean stop", r.stdout)
        with open(path) as f:
            n = sum(1 for _ in f)
        d.start()
        with open(path) as f:
            recs = [json.loads(x) for x in f]
        start = recs[-1] if recs[-1].get("event") == "start" else \
            [x for x in recs if x.get("event") == "start"][-1]
        self.assertEqual(start["anchor"], "crash")
        self.assertGreaterEqual(start["seq"], n + 1)
        self.assertGreater(start.get("adopted", 0), 0, start)
        self.assertEqual(start["adopted"], n - start["anchored"])
        self.assertNotIn("tampered", start)
        rc = Ctl(d)("audit", "verify", ok=False)
        self.assertEqual(rc.returncode, 0, rc.stdout)
        d.stop()
        r = ctl_offline("audit", "verify", "--file", path, "--public-key", pub,
                        *d.anchor_args())
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(b"(clean stop)", r.stdout)


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

    def test_fail_open_heals_under_traffic_with_a_trace(self):
        """Failing open, calls answered while the trail could not be written
        have no record; the trail must say how many, in the sealed record
        that heals it. With calls still coming as the file becomes writable
        again, their batch healed it plainly and the count was only logged
        (review): the trail then verified intact with no trace of the loss."""
        import threading
        d = CofferDaemon(config={"audit": {"failure": "open"}})
        self.addCleanup(d.cleanup)
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="k", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)
        path = os.path.join(d.state_dir, "audit.log")
        if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here (filesystem or capability)")
        svc = d.service_stub()
        try:
            for i in range(5):
                svc.Mac(pb.MacRequest(key="k", data=b"lost %d" % i), timeout=TIMEOUT)
            stop = threading.Event()

            def traffic():
                while not stop.is_set():
                    svc.Mac(pb.MacRequest(key="k", data=b"meanwhile"), timeout=TIMEOUT)
            t = threading.Thread(target=traffic)
            t.start()
            time.sleep(0.3)
        finally:
            subprocess.run(["chattr", "-i", path], check=True)
        time.sleep(1.5)
        stop.set()
        t.join()
        self.assert_loss_sealed(d, path, 5)

    def assert_loss_sealed(self, d, path, at_least):
        """Once d stops: the trail says, in a sealed record, that at least
        at_least records were lost, and verifies intact offline. Its records."""
        d.stop()
        with open(path) as f:
            recs = [json.loads(line) for line in f]
        lost = [r for r in recs if "lost" in r]
        self.assertTrue(lost, "no record says what was lost")
        self.assertGreaterEqual(sum(r["lost"] for r in lost), at_least, lost)
        self.assertIn("sig", lost[-1])
        r = ctl_offline("audit", "verify", "--file", path, "--public-key",
                        os.path.join(d.state_dir, "audit-seal.pub"), *d.anchor_args())
        self.assertEqual(r.returncode, 0, r.stdout)
        return recs

    def test_fail_open_heals_with_a_trace_when_a_change_writes_first(self):
        """The same when the first write after the file is writable again is
        a change's own (its record from the outbox, written by the call):
        that batch cleared the break plainly, before the writer's retry
        could write the count (found by a review)."""
        d = CofferDaemon(config={"audit": {"failure": "open"}})
        self.addCleanup(d.cleanup)
        d.start()
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="k", type=pb.HMAC_SHA256), timeout=TIMEOUT)
        path = os.path.join(d.state_dir, "audit.log")
        if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here (filesystem or capability)")
        try:
            for i in range(3):
                d.service_stub().Mac(pb.MacRequest(key="k", data=b"lost %d" % i),
                                     timeout=TIMEOUT)
            time.sleep(1.2)             # the writer's retry has failed at least once
        finally:
            subprocess.run(["chattr", "-i", path], check=True)
        adm.CreateKey(pb.CreateKeyRequest(name="first-after", type=pb.HMAC_SHA256),
                      timeout=TIMEOUT)
        recs = self.assert_loss_sealed(d, path, 3)
        made = [r for r in recs if r.get("key") == "first-after"]
        self.assertEqual(len(made), 1, made)


if __name__ == "__main__":
    unittest.main(verbosity=2)
