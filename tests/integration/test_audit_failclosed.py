#!/usr/bin/python3
"""Fail closed means closed (issue 13, item 7 and "must show" 4).

With [audit] failure = closed, under three kinds of write failure of the
trail — an immutable audit.log (chattr +i), a full disk (a tiny tmpfs
holding the state directory, filled) and a file-size limit on the daemon
(RLIMIT_FSIZE, set with prlimit on the running process) — the first call
after the fault:

* Sign: UNAVAILABLE with a message naming the audit trail and the cause,
  and no signature;
* RotateKey: refused UNAVAILABLE and no version made (the trail is broken by
  then, so audit_admit refuses the call before it runs: nothing reaches the
  token or the store);
* health NOT_SERVING;

and once the fault is removed the trail heals by itself: health SERVING, the
"resumed" record counts the one record that could not be written (the
Sign's, whose result was withheld), and the trail verifies intact, in the
daemon and offline. A fault kind this machine cannot make is skipped with the
reason printed.
"""
import json
import mmap
import os
import queue
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import unittest

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, Ctl, DaemonError, cofferctl_path, stubs  # noqa: E402
from daemon_fixture import skip_test_on_postgresql  # noqa: E402
from rpc_common import KS, SC, TIMEOUT, S, pb  # noqa: E402
from rpc_common import call_authorization as header  # noqa: E402

SERVING = S.health_pb.HealthCheckResponse.SERVING
NOT_SERVING = S.health_pb.HealthCheckResponse.NOT_SERVING


def in_thread(fn):
    """fn() in a thread; returns the thread and a dict that gets "value" (or
    "error", an RpcError) and "took" (seconds)."""
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except grpc.RpcError as e:
            out["error"] = e
        out["took"] = time.monotonic() - t0
    t = threading.Thread(target=run)
    t.start()
    return t, out


def pipeline(d):
    """The daemon's pipelined stream, raw."""
    pp = stubs().pipeline_pb
    return d.channel().stream_stream(
        "/coffer.v1.Pipeline/Stream", request_serializer=pp.PipelineRequest.SerializeToString,
        response_deserializer=pp.PipelineResponse.FromString)


def frame(tag):
    """One message carrying ten Signs of key "s" (ids 0..9)."""
    pp = stubs().pipeline_pb
    reqs = [pp.PipelineRequest(id=i, method="/coffer.v1.KeyService/Sign",
                               request=pb.SignRequest(key="s", message=b"%s %d" % (
                                   tag, i)).SerializeToString()) for i in range(10)]
    top = reqs[0]
    top.more.extend(reqs[1:])
    return top


def answers(msgs):
    """The answers of the frames msgs, flattened."""
    out = []
    for m in msgs:
        out += [m] + list(m.more)
    return out


class FailClosed(unittest.TestCase):
    def daemon(self, workdir=None):
        d = CofferDaemon(config={"audit": {"failure": "closed", "max_wait_ms": "2000"}},
                         workdir=workdir)
        self.addCleanup(d.cleanup)
        return d

    def start(self, d):
        d.start()
        self.path = os.path.join(d.state_dir, "audit.log")
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="s", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        self.assertTrue(d.service_stub().Sign(pb.SignRequest(key="s", message=b"ok"),
                                              timeout=TIMEOUT).signature)
        time.sleep(0.3)     # the idle seal lands before the fault
        return d

    def health(self, d):
        return S.health_pb_grpc.HealthStub(d.channel()).Check(
            S.health_pb.HealthCheckRequest(), timeout=TIMEOUT).status

    def wait_serving(self, d):
        """The trail heals by itself: health says so within 10 s."""
        deadline = time.monotonic() + 10
        while self.health(d) != SERVING:
            self.assertLess(time.monotonic(), deadline, d.log())
            time.sleep(0.1)

    def frame_served_and_verified(self, d, stream, tag):
        """Healed by itself: a frame of 10 answers OK and the trail verifies."""
        self.wait_serving(d)
        got = answers(list(stream(iter([frame(tag)]), timeout=TIMEOUT)))
        self.assertEqual([(a.code, bool(a.response)) for a in got], [(0, True)] * 10)
        time.sleep(0.3)
        r = Ctl(d)("audit", "verify", ok=False)
        self.assertEqual(r.returncode, 0, r.stdout)

    def check_closed(self, d, cause):
        """The fault is in place: nothing is released without its record.
        (On a full tmpfs a record may still fit in the file's last page: a
        call answered OK must then have its record in the file.)"""
        for _ in range(100):
            before = os.path.getsize(self.path)
            try:
                sig = d.service_stub().Sign(pb.SignRequest(key="s", message=b"under fault"),
                                            timeout=TIMEOUT).signature
            except grpc.RpcError as e:
                err = e
                break
            self.assertTrue(sig)
            with open(self.path, "rb") as f:
                f.seek(before)
                self.assertIn(b"/coffer.v1.KeyService/Sign", f.read())
        else:
            self.fail("the fault never showed")
        self.assertEqual(err.code(), SC.UNAVAILABLE, err.details())
        self.assertIn("audit trail cannot be written", err.details())
        self.assertIn(cause, err.details())
        self.assertIn("fails closed", err.details())
        # The error carries no signature back, and no torn record stayed
        # behind.
        self.assertEqual(os.path.getsize(self.path), before)
        with self.assertRaises(grpc.RpcError) as cm:
            d.admin_stub().RotateKey(pb.RotateKeyRequest(name="s"), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
        self.assertIn("audit trail cannot be written", cm.exception.details())
        self.assertEqual(self.health(d), NOT_SERVING)

    def check_healed(self, d):
        self.wait_serving(d)
        self.assertIn("audit: the trail is written again", d.log(all_starts=False))
        with open(self.path) as f:
            recs = [json.loads(x) for x in f]
        resumed = [r for r in recs if r.get("event") == "resumed"]
        self.assertEqual(len(resumed), 1, resumed)
        self.assertEqual(resumed[0]["lost"], 1)     # the Sign's record: its result withheld
        # No version was made while refused.
        listed = d.admin_stub().ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        k = [k for k in listed.keys if k.name == "s"][0]
        self.assertEqual((k.primary_version, len(k.versions)), (1, 1), k)
        self.assertFalse([r for r in recs if r.get("method", "").endswith("/RotateKey")])
        self.assertTrue(d.service_stub().Sign(pb.SignRequest(key="s", message=b"again"),
                                              timeout=TIMEOUT).signature)
        time.sleep(0.3)
        r = Ctl(d)("audit", "verify", ok=False)
        self.assertEqual(r.returncode, 0, r.stdout)
        d.stop()
        r = subprocess.run([cofferctl_path(), "audit", "verify", "--file", self.path,
                            "--public-key", os.path.join(d.state_dir, "audit-seal.pub")] +
                           d.anchor_args(), capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn(b"(clean stop)", r.stdout)

    def test_immutable_trail(self):
        d = self.start(self.daemon())
        if subprocess.run(["chattr", "+i", self.path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here (filesystem or capability)")
        try:
            self.check_closed(d, "Operation not permitted")
        finally:
            subprocess.run(["chattr", "-i", self.path], check=True)
        self.check_healed(d)

    def test_change_first_after_the_fault(self):
        """A rotation that is the first call after the trail became
        unwritable: its version and record commit together in the store, the
        record cannot reach the file, so the caller gets UNAVAILABLE saying
        the change was made; a retry with the same idempotency key once the
        trail heals answers it (one version), and the record reaches the
        trail exactly once."""
        d = self.start(self.daemon())
        if subprocess.run(["chattr", "+i", self.path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here (filesystem or capability)")
        md = [("idempotency-key", "first-after-fault-1")]
        try:
            with self.assertRaises(grpc.RpcError) as cm:
                d.admin_stub().RotateKey(pb.RotateKeyRequest(name="s"), timeout=TIMEOUT,
                                         metadata=md)
            e = cm.exception
            self.assertEqual(e.code(), SC.UNAVAILABLE, e.details())
            self.assertIn("the audit trail cannot be written (", e.details())
            self.assertIn("Operation not permitted", e.details())
            self.assertIn("the change was made and its record kept in the state store: retry "
                          "only with its idempotency key; this daemon fails closed",
                          e.details())
            self.assertEqual(self.health(d), NOT_SERVING)
        finally:
            subprocess.run(["chattr", "-i", self.path], check=True)
        self.wait_serving(d)
        r = d.admin_stub().RotateKey(pb.RotateKeyRequest(name="s"), timeout=TIMEOUT, metadata=md)
        self.assertEqual(r.primary_version, 2)
        self.assertEqual(len(r.versions), 2)
        time.sleep(0.3)
        with open(self.path) as f:
            recs = [json.loads(x) for x in f]
        made = [x for x in recs if x.get("method", "").endswith("/RotateKey")
                and "replay_of" not in x]
        self.assertEqual([(x["key"], x["version"]) for x in made], [("s", 2)], made)
        d.stop()

    def test_full_disk(self):
        work = tempfile.mkdtemp(prefix="coffer-full-")
        self.addCleanup(shutil.rmtree, work, True)
        d = self.daemon(workdir=work)
        os.makedirs(d.state_dir, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                            d.state_dir], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs for the state directory: %s" % r.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", "-l", d.state_dir])
        self.start(d)
        filler = os.path.join(d.state_dir, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        try:
            self.check_closed(d, "No space left on device")
        finally:
            os.unlink(filler)
        self.check_healed(d)

    def test_frame_of_a_stream(self):
        """A pipelined stream's frame whose records cannot be written: none of
        its answers is released OK (no signature leaves), each says why."""
        d = self.start(self.daemon())
        stream = pipeline(d)
        # Opened (and its opening recorded) before the fault.
        q = queue.Queue()
        call = stream(iter(q.get, None), timeout=60)
        q.put(frame(b"before"))
        first = answers([next(call)])
        while len(first) < 10:
            first += answers([next(call)])
        self.assertEqual([a.code for a in first], [0] * 10)
        time.sleep(0.3)     # the idle seal lands before the fault
        if subprocess.run(["chattr", "+i", self.path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here (filesystem or capability)")
        try:
            before = os.path.getsize(self.path)
            q.put(frame(b"fault"))
            got = []
            while len(got) < 10:
                got += answers([next(call)])
            q.put(None)
            self.assertEqual(list(call), [])
            self.assertEqual(sorted(a.id for a in got), list(range(10)))
            for a in got:
                self.assertEqual(a.code, SC.UNAVAILABLE.value[0], a)
                self.assertEqual(a.response, b"")
                self.assertIn("audit trail cannot be written (", a.message)
                self.assertIn("Operation not permitted", a.message)
                self.assertIn("fails closed", a.message)
            # The frame's records were waited for together: the text says so.
            self.assertTrue(any("the records of the calls answered with this one (a stream's "
                                "frame) are not all written, so its result is withheld"
                                in a.message for a in got), [a.message for a in got])
            self.assertEqual(os.path.getsize(self.path), before)
        finally:
            subprocess.run(["chattr", "-i", self.path], check=True)
        self.frame_served_and_verified(d, stream, b"healed")

    def on_a_disk_that_can_hang(self, config=None):
        """A daemon (max_wait_ms 500) whose state directory is a loop-mounted
        ext4, and freeze(on): fsfreeze on it, so that a write there does not
        fail but never returns (thawed at clean-up at the latest)."""
        work = tempfile.mkdtemp(prefix="coffer-hang-")
        self.addCleanup(shutil.rmtree, work, True)
        cfg = {"audit": {"failure": "closed", "max_wait_ms": "500"}}
        cfg.update(config or {})
        d = CofferDaemon(config=cfg, workdir=work)
        self.addCleanup(d.cleanup)
        os.makedirs(d.state_dir, exist_ok=True)
        img = os.path.join(work, "state.ext4")
        with open(img, "wb") as f:
            f.truncate(64 << 20)
        for cmd in (["mkfs.ext4", "-q", "-F", img], ["mount", "-o", "loop", img, d.state_dir]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                self.skipTest("cannot make a loop-mounted ext4 here (%s): %s" % (
                    cmd[0], r.stderr.strip()))
        self.addCleanup(subprocess.run, ["umount", "-l", d.state_dir])
        os.chmod(d.state_dir, 0o700)
        frozen = []

        def freeze(on):
            r = subprocess.run(["fsfreeze", "-f" if on else "-u", d.state_dir],
                               capture_output=True, text=True)
            if on and r.returncode != 0:
                self.skipTest("fsfreeze is not supported here: %s" % r.stderr.strip())
            if on:
                frozen.append(1)
            else:
                frozen.clear()

        self.addCleanup(lambda: frozen and freeze(False))
        return d, freeze

    def test_disk_that_hangs(self):
        """The state directory's file system frozen (fsfreeze on a loop-mounted
        ext4): a write of the trail does not fail, it never returns. The
        trail's writer is stuck in the kernel with a call's record, but the
        call does not wait with it: after max_wait_ms (and at most one
        250 ms tick) its answer is withheld and it is refused, with the
        reason. Health says NOT_SERVING and a new call is refused at once,
        though no call was waiting on the write to notice. A frame that waits
        behind the stuck write is answered, after max_wait_ms, UNAVAILABLE for
        each of its requests with the frame's text. Thawed, the trail heals by
        itself and verifies."""
        d, freeze = self.on_a_disk_that_can_hang()
        self.start(d)

        def stuck_sign(tag):
            """A Sign in a thread: it becomes the writer of its own record and
            hangs with the disk."""
            return in_thread(lambda: d.service_stub().Sign(
                pb.SignRequest(key="s", message=tag), timeout=120).signature)

        why = "the audit trail cannot be written (a record waited more than 500 ms to be written)"
        withheld = why + (": this call's record is not written, so its result is withheld; "
                          "this daemon fails closed (audit.failure = closed)")
        freeze(True)
        t, out = stuck_sign(b"stuck 1")
        t.join(10)
        self.assertFalse(t.is_alive(), "a Sign waits with a frozen disk")
        self.assertNotIn("value", out, "a Sign was answered on a frozen disk")
        self.assertEqual(out["error"].code(), SC.UNAVAILABLE, out["error"].details())
        self.assertEqual(out["error"].details(), withheld)
        self.assertGreaterEqual(out["took"], 0.5)
        self.assertLess(out["took"], 1.5)    # max_wait_ms, a tick, and slack
        # Nobody waited on the write, yet the trail counts as broken.
        self.assertEqual(self.health(d), NOT_SERVING)
        t0 = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            d.service_stub().Sign(pb.SignRequest(key="s", message=b"refused"), timeout=TIMEOUT)
        self.assertLess(time.monotonic() - t0, 0.4, "a refusal must not wait for the disk")
        self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
        self.assertEqual(cm.exception.details(), why + ": calls are refused until it can; "
                         "this daemon fails closed (audit.failure = closed)")
        self.assertIn("audit: a record waited more than 500 ms", d.log(all_starts=False))
        freeze(False)
        self.wait_serving(d)

        # A frame queued behind a stuck write waits max_wait_ms, then no
        # answer of it is released. (The stream is opened, and its opening
        # recorded, before the freeze.)
        stream = pipeline(d)
        q = queue.Queue()
        call = stream(iter(q.get, None), timeout=60)
        q.put(frame(b"before"))
        got = []
        while len(got) < 10:
            got += answers([next(call)])
        self.assertEqual([a.code for a in got], [0] * 10)
        time.sleep(0.3)     # the idle seal lands before the freeze
        freeze(True)
        t, out = stuck_sign(b"stuck 2")
        time.sleep(0.1)
        t0 = time.monotonic()
        q.put(frame(b"behind"))
        got = []
        while len(got) < 10:
            got += answers([next(call)])
        waited = time.monotonic() - t0
        q.put(None)
        t.join(10)
        self.assertEqual(out["error"].details(), withheld)
        self.assertEqual(sorted(a.id for a in got), list(range(10)))
        self.assertGreaterEqual(waited, 0.3)
        for a in got:
            self.assertEqual((a.code, a.response), (SC.UNAVAILABLE.value[0], b""), a)
            self.assertEqual(a.message, why + ": the records of the calls answered with this one "
                             "(a stream's frame) are not all written, so its result is withheld; "
                             "this daemon fails closed (audit.failure = closed)")
        self.assertEqual(self.health(d), NOT_SERVING)
        freeze(False)
        self.frame_served_and_verified(d, stream, b"thawed")

    def test_one_worker_held_on_a_disk_that_hangs(self):
        """With one worker, which then blocks with the frozen disk (a
        CreateKey writing the state), a Sign whose record is stuck is still
        refused after max_wait_ms: the trail's own ticker refuses it, not a
        worker coming round (before: it waited for the thaw). Thawed, the
        blocked call finishes and the daemon serves again by itself."""
        skip_test_on_postgresql(
            "a worker blocked on a frozen state directory", "the state is in PostgreSQL, so "
            "a CreateKey does not write to the frozen directory")
        d, freeze = self.on_a_disk_that_can_hang({"daemon": {"workers": "1"}})
        self.start(d)
        why = "the audit trail cannot be written (a record waited more than 500 ms to be written)"
        freeze(True)
        a, a_out = in_thread(lambda: d.service_stub().Sign(
            pb.SignRequest(key="s", message=b"stuck"), timeout=120).signature)
        time.sleep(0.1)     # the Sign is answered, its record stuck; the worker is free
        b, b_out = in_thread(lambda: d.admin_stub().CreateKey(
            pb.CreateKeyRequest(name="blocked", type=pb.HMAC_SHA256), timeout=120))
        a.join(5)
        held = b.is_alive()
        freeze(False)
        self.assertFalse(a.is_alive(), "a Sign waited with the frozen disk")
        self.assertTrue(held, "the CreateKey did not hold the one worker: %r" % b_out)
        self.assertEqual(a_out["error"].code(), SC.UNAVAILABLE, a_out["error"].details())
        self.assertEqual(a_out["error"].details(), why + (
            ": this call's record is not written, so its result is withheld; "
            "this daemon fails closed (audit.failure = closed)"))
        self.assertGreaterEqual(a_out["took"], 0.5)
        self.assertLess(a_out["took"], 1.5)    # max_wait_ms, a tick, and slack
        b.join(30)
        self.assertFalse(b.is_alive())
        self.wait_serving(d)
        self.assertTrue(d.service_stub().Sign(pb.SignRequest(key="s", message=b"after"),
                                              timeout=TIMEOUT).signature)

    def test_signed_calls_on_a_disk_that_hangs(self):
        """The nonce record's append hangs with the disk (fsfreeze), before any
        record is due: the signed call in it stays with the disk, one queued
        behind it is refused once max_wait_ms has passed (the lock is bounded)
        instead of joining it, and from then on health says NOT_SERVING and
        every call is refused at once naming the file, though no write of the
        trail was ever waited on. Thawed, the stuck call gets its MAC, its
        nonce stays taken, and the daemon serves again by itself."""
        skip_test_on_postgresql(
            "signed calls on a frozen disk", "the nonce record is in PostgreSQL, not in the "
            "state directory (test_fleet_replicas test_7 hangs the server instead)")
        d, freeze = self.on_a_disk_that_can_hang({"requests": {"window": "60"}})
        self.start(d)
        r = d.sealed_stub(kind="admin", service="AdminService").CreateApiKey(
            pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        kid, secret = r.key.id, r.secret
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="m", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)

        def signed(data, timeout=TIMEOUT, md=None):
            req = pb.MacRequest(key="m", data=data)
            md = md or [("authorization",
                         header(kid, secret, KS + "Mac", req.SerializeToString()))]
            return d.service_stub().Mac(req, metadata=md, timeout=timeout).mac, md

        self.assertTrue(signed(b"before")[0])
        time.sleep(0.3)     # the idle seal lands before the freeze
        nonce_log = os.path.join(d.state_dir, "nonces.log")
        freeze(True)
        a, a_out = in_thread(lambda: signed(b"stuck", timeout=120))
        time.sleep(0.2)
        b, b_out = in_thread(lambda: signed(b"behind", timeout=120))
        time.sleep(0.8)
        self.assertTrue(a.is_alive(), "a signed call was answered on a frozen disk: %r" % a_out)
        self.assertEqual(self.health(d), NOT_SERVING)
        refusal = ("the state does not answer: an operation on %s has not returned in 500 ms "
                   "(a frozen file system, a lost device or a server that hangs?); calls are "
                   "refused until it does" % nonce_log)
        for call in (lambda: signed(b"later"),
                     lambda: d.service_stub().Sign(pb.SignRequest(key="s", message=b"x"),
                                                   timeout=TIMEOUT)):
            t0 = time.monotonic()
            with self.assertRaises(grpc.RpcError) as cm:
                call()
            self.assertLess(time.monotonic() - t0, 0.4, "a refusal must not wait for the disk")
            self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
            self.assertEqual(cm.exception.details(), refusal)
        freeze(False)
        for t in (a, b):
            t.join(30)
            self.assertFalse(t.is_alive())
        mac, a_md = a_out["value"]
        self.assertEqual(len(mac), 32)
        # The call queued behind the stuck append was refused by the bounded
        # lock (its answer waited for its record, written once thawed).
        e = b_out["error"]
        self.assertEqual(e.code(), SC.UNAVAILABLE, e.details())
        self.assertEqual(e.details(), "nonce record %s: a write to it has not returned in 500 ms "
                         "(the disk does not answer); retry once it does" % nonce_log)
        self.wait_serving(d)
        self.assertTrue(signed(b"after")[0])
        with self.assertRaises(grpc.RpcError) as cm:
            signed(b"stuck", md=a_md)
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED, cm.exception.details())
        self.assertIn("replayed", cm.exception.details())
        time.sleep(0.3)
        r = Ctl(d)("audit", "verify", ok=False)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_fail_open_on_a_disk_that_hangs(self):
        """[audit] failure = open on a frozen disk: calls that need no disk go
        on (their records wait in memory), health stays SERVING, the log
        raises the ALARM; thawed, their records reach the trail."""
        d, freeze = self.on_a_disk_that_can_hang({"audit": {"failure": "open",
                                                            "max_wait_ms": "500"}})
        self.start(d)
        freeze(True)
        t0 = time.monotonic()
        for i in range(20):
            self.assertTrue(d.service_stub().Sign(pb.SignRequest(key="s", message=b"o%d" % i),
                                                  timeout=TIMEOUT).signature)
            time.sleep(0.05)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertEqual(self.health(d), SERVING)
        d.wait_for_log("ALARM: audit", timeout=5)
        freeze(False)
        deadline = time.monotonic() + 10
        while True:
            with open(self.path, "rb") as f:
                n = f.read().count(b"/coffer.v1.KeyService/Sign")
            if n >= 21:     # start()'s Sign and these 20
                break
            self.assertLess(time.monotonic(), deadline, "%d Sign records after the thaw" % n)
            time.sleep(0.1)

    def test_fail_open_queue_is_bounded_on_a_disk_that_hangs(self):
        """Failing open on a frozen disk, records wait in memory, at most
        [audit] max_queued of them: more are counted lost (before, the queue
        grew until memory ran out; found by a review), said once in the log,
        and the sealed record that heals the trail counts them."""
        d, freeze = self.on_a_disk_that_can_hang({"audit": {
            "failure": "open", "max_wait_ms": "500", "max_queued": "20"}})
        self.start(d)
        freeze(True)
        for i in range(60):
            self.assertTrue(d.service_stub().Sign(pb.SignRequest(key="s", message=b"q%d" % i),
                                                  timeout=TIMEOUT).signature)
        self.assertEqual(self.health(d), SERVING)
        self.assertTrue(d.wait_for_log("ALARM: audit: 20 records wait for the disk; more are "
                                       "not kept ([audit] max_queued, failing open): counted "
                                       "lost", timeout=5), d.log())
        freeze(False)
        d.stop()
        with open(self.path) as f:
            recs = [json.loads(line) for line in f]
        lost = sum(r.get("lost", 0) for r in recs)
        signs = sum(1 for r in recs if r.get("method") == "/coffer.v1.KeyService/Sign")
        self.assertGreaterEqual(lost, 30, [r for r in recs if "lost" in r])
        self.assertLessEqual(signs, 1 + 21 + 1, signs)   # start()'s, the queue, one being written
        self.assertEqual(signs + lost, 61, (signs, lost))

    def test_file_size_limit(self):
        d = self.start(self.daemon())
        size = os.path.getsize(self.path)
        _, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
        try:
            # The soft limit only: it can be raised again without privilege.
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (size, hard))
        except (OSError, AttributeError) as e:
            self.skipTest("cannot set RLIMIT_FSIZE on the daemon: %s" % e)
        try:
            self.check_closed(d, "File too large")
            self.assertTrue(d.running, "a file-size limit must not kill the daemon (SIGXFSZ)")
        finally:
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (hard, hard))
        self.check_healed(d)


    def test_append_only_trail_keeps_a_partial_record(self):
        """An append-only trail (chattr +a) where a write stops part-way (a
        file-size limit 50 bytes past its end): the fragment cannot be cut,
        so nothing is written after it (before: the next batch was glued to
        it once the limit was lifted, and the chain broke for good); calls
        are refused with the reason; a start with the attribute refuses to
        run and says why; without it, the fragment is cut and the trail
        verifies."""
        d = self.start(self.daemon())
        if subprocess.run(["chattr", "+a", self.path], capture_output=True).returncode != 0:
            self.skipTest("chattr +a is not supported here (filesystem or capability)")
        size = os.path.getsize(self.path)
        _, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
        try:
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (size + 50, hard))
            with self.assertRaises(grpc.RpcError) as cm:
                d.service_stub().Sign(pb.SignRequest(key="s", message=b"cut short"),
                                      timeout=TIMEOUT)
            self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
            self.assertEqual(os.path.getsize(self.path), size + 50)
            resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (hard, hard))
            time.sleep(1.5)     # the writer's heal attempts
            with self.assertRaises(grpc.RpcError) as cm:
                d.service_stub().Sign(pb.SignRequest(key="s", message=b"after the limit"),
                                      timeout=TIMEOUT)
            self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
            self.assertIn("a partial record cannot be cut (Operation not permitted, "
                          "append-only): nothing is written after it until a restart; ",
                          cm.exception.details())
            self.assertEqual(os.path.getsize(self.path), size + 50, "a record glued on")
            self.assertEqual(self.health(d), NOT_SERVING)
            # A start cannot cut it either while the attribute stays, and says why.
            d.stop(expect=None)
            with self.assertRaises(DaemonError):
                d.start(timeout=20)
            self.assertIn("ends in a torn record of 50 bytes that cannot be cut: Operation not "
                          "permitted (an append-only file cannot be cut: remove the attribute "
                          "with chattr -a, or move the file aside)", d.log(all_starts=False))
            self.assertNotIn("cut off", d.log(all_starts=False))
        finally:
            if d.running:
                resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (hard, hard))
            subprocess.run(["chattr", "-a", self.path], check=True)
        d.start()
        self.assertIn("ended in a torn record", d.log(all_starts=False))
        self.assertTrue(d.service_stub().Sign(pb.SignRequest(key="s", message=b"healed"),
                                              timeout=TIMEOUT).signature)
        time.sleep(0.3)
        r = Ctl(d)("audit", "verify", ok=False)
        self.assertEqual(r.returncode, 0, r.stdout)


SYNCFAIL_SHIM = os.environ.get("COFFER_SYNCFAIL_SHIM")


class ShimDaemon(CofferDaemon):
    """A daemon with extra environment (a preloaded shim)."""
    extra_env = {}

    @property
    def env(self):
        return dict(super().env, **self.extra_env)


class WritebackError(unittest.TestCase):
    """durability = os: a call is answered once its record is in the kernel,
    and the trail is synced at each seal. A writeback error of those records
    is told to the seal's fdatasync (tests/support/syncfail_shim.c makes it
    fail with EIO, and saves what the disk would then miss). Before, only
    the seal's own batch was cut: the heal chained on records that were not
    on the disk and anchored over them, so once the machine lost them the
    trail read as altered for good. Now everything since the last good
    fdatasync is cut, counted lost in the "resumed" record, and the trail
    the disk keeps verifies."""

    def fail_a_sync(self, before=None):
        """A daemon (durability = os) whose seal's fdatasync fails once after
        calls were answered unsynced (before(d, path): run after the start,
        before those calls). Returns (daemon, trail path, answered, offset and
        bytes the disk would miss, their request ids)."""
        if not SYNCFAIL_SHIM:
            self.skipTest("COFFER_SYNCFAIL_SHIM is not set (no LD_PRELOAD shim under the "
                          "sanitizers)")
        tmp = tempfile.mkdtemp(prefix="coffer-syncfail-")
        self.addCleanup(shutil.rmtree, tmp, True)
        ctl_path = os.path.join(tmp, "ctl")
        with open(ctl_path, "wb") as f:
            f.write(bytes(16))
        d = ShimDaemon(config={"audit": {"failure": "closed", "durability": "os",
                                         "max_wait_ms": "2000"}})
        self.addCleanup(d.cleanup)
        d.extra_env = {"LD_PRELOAD": SYNCFAIL_SHIM, "COFFER_SYNCFAIL_CTL": ctl_path}
        d.start()
        path = os.path.join(d.state_dir, "audit.log")
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="s", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        time.sleep(0.3)     # sealed and synced
        if before is not None:
            before(d, path)
        with open(ctl_path, "r+b") as f:
            m = mmap.mmap(f.fileno(), 16)
        # The first call after a quiet spell carries a seal (synced); the
        # next ones are answered at once, their records in the kernel, until
        # the trail is idle for 20 ms: that seal's fdatasync fails.
        stub = d.service_stub()
        stub.Sign(pb.SignRequest(key="s", message=b"synced"), timeout=TIMEOUT)
        m[0:8] = (1).to_bytes(8, "little")      # the next fdatasync of audit.log fails
        answered = 0
        try:
            for i in range(5):
                stub.Sign(pb.SignRequest(key="s", message=b"unsynced %d" % i), timeout=TIMEOUT)
                answered += 1
        except grpc.RpcError as e:   # a slow machine: the seal came between two calls
            self.assertEqual(e.code(), SC.UNAVAILABLE)
        self.assertGreater(answered, 0)
        deadline = time.monotonic() + 5
        while int.from_bytes(m[8:16], "little") == 0:
            self.assertLess(time.monotonic(), deadline, "no fdatasync failed")
            time.sleep(0.01)
        with open(ctl_path + ".lost", "rb") as f:
            head = f.readline().split()
            off, n = int(head[0]), int(head[1])
            lost = f.read()
        self.assertEqual(len(lost), n)
        lost_recs = [json.loads(x) for x in lost.splitlines()]
        self.assertEqual([r.get("method") for r in lost_recs if "method" in r],
                         ["/coffer.v1.KeyService/Sign"] * answered, lost)
        lost_ids = {r["request_id"] for r in lost_recs if "request_id" in r}
        return d, path, answered, off, lost, lost_ids

    def test_failed_fdatasync_cuts_every_unsynced_record(self):
        d, path, answered, off, lost, lost_ids = self.fail_a_sync()
        n = len(lost)
        stub = d.service_stub()
        # Refused while broken, with the cause; healed by itself within a second or two.
        try:
            stub.Sign(pb.SignRequest(key="s", message=b"while broken"), timeout=TIMEOUT)
        except grpc.RpcError as e:
            self.assertEqual(e.code(), SC.UNAVAILABLE)
            self.assertIn("writing %s: Input/output error" % path, e.details())
        deadline = time.monotonic() + 10
        while True:
            with open(path) as f:
                recs = [json.loads(x) for x in f]
            resumed = [r for r in recs if r.get("event") == "resumed"]
            if resumed:
                break
            self.assertLess(time.monotonic(), deadline, d.log())
            time.sleep(0.1)
        # The five answered records are no longer in the trail, and the
        # heal counts them (before: "lost": 0, and they stayed).
        self.assertFalse([r for r in recs if r.get("request_id") in lost_ids], recs)
        self.assertGreaterEqual(resumed[0]["lost"], answered, resumed)
        self.assertIn("records written since the trail was last synced are cut from it and "
                      "counted lost: the failed fdatasync may be their writeback's",
                      d.log(all_starts=False))
        stub.Sign(pb.SignRequest(key="s", message=b"healed"), timeout=TIMEOUT)
        time.sleep(0.3)
        d.stop()
        # The disk as the failed writeback left it: the bytes the shim saved,
        # where they still are, never got there.
        with open(path, "r+b") as f:
            f.seek(off)
            if f.read(n) == lost:
                f.seek(off)
                f.write(bytes(n))
        r = subprocess.run([cofferctl_path(), "audit", "verify", "--file", path,
                            "--public-key", os.path.join(d.state_dir, "audit-seal.pub")] +
                           d.anchor_args(), capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(b"(clean stop)", r.stdout)


    def test_failed_fdatasync_on_an_append_only_trail(self):
        """The same failure on an append-only trail (chattr +a): what was
        written since the last good fdatasync cannot be cut, so nothing is
        written after it: every call is refused with that reason, health is
        NOT_SERVING, and the log does not promise a restart would cut whole
        records."""
        def append_only(d, path):
            if subprocess.run(["chattr", "+a", path], capture_output=True).returncode != 0:
                self.skipTest("chattr +a is not supported here (filesystem or capability)")
            self.addCleanup(subprocess.run, ["chattr", "-a", path])
        d, path, answered, off, lost, lost_ids = self.fail_a_sync(append_only)
        time.sleep(1.5)     # the writer's heal attempts
        with self.assertRaises(grpc.RpcError) as cm:
            d.service_stub().Sign(pb.SignRequest(key="s", message=b"stuck"), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
        self.assertIn("what was written since the last good fdatasync cannot be cut (Operation "
                      "not permitted, append-only): nothing is written after it until a "
                      "restart; ", cm.exception.details())
        self.assertEqual(S.health_pb_grpc.HealthStub(d.channel()).Check(
            S.health_pb.HealthCheckRequest(), timeout=TIMEOUT).status, NOT_SERVING)
        log = d.log(all_starts=False)
        self.assertIn("what was written since the last good fdatasync cannot be cut", log)
        self.assertNotIn("the restart cuts it", log)
        with open(path, "rb") as f:
            f.seek(off)
            self.assertEqual(f.read(), lost, "written after the records it could not cut")


if __name__ == "__main__":
    unittest.main(verbosity=2)
