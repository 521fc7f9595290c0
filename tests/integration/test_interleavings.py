#!/usr/bin/python3
"""Two calls interleaved at a chosen step, not at a hoped-for moment: cofferd
(built with COFFER_CRASH_POINTS) holds the first call's thread at a named
point (COFFER_CRASH_MODE=hold, cf_crashpoint.h) while the second runs, then
lets it go on; the trace of points passed (COFFER_CRASH_TRACE) says whether
the second committed meanwhile.

* CreateApiKey or RotateApiKeySecret held after the new secret's object is
  made while DeletePrincipal runs: the deletion waits, then takes the key
  with it; no live key of a gone principal, no secret recorded, no API-key
  object left in the token, nothing for the next start to clean. (Before,
  the deletion did not wait: a rotation wrote the key back live after it,
  and on PostgreSQL the objects were left in the token.)
* A SignBatch held before an item while the sweeper destroys the key's
  version: the daemon lives, the held item fails with its own status and
  the others are signed. (Before, the sweeper freed the handle the batch
  was signing with: a use after free.)
* A signed call held in the nonce record's append (its lock held): a
  scrape of the metrics endpoint is answered at once. (Before, the scrape
  waited for that lock and the endpoint stopped answering anything.)
"""
import concurrent.futures
import http.client
import os
import shutil
import signal
import socket
import tempfile
import time
import unittest

import grpc  # noqa: E402

import test_idempotency as ti  # noqa: E402  (its sealed call helper)
from crash_harness import CrashDaemon, crash_points  # noqa: E402
from daemon_fixture import on_postgresql  # noqa: E402
from rpc_common import KS, SC, TIMEOUT, pb, call_authorization  # noqa: E402

s_call = ti.s_call


class Interleaving(unittest.TestCase):
    """Two admin calls interleaved at a chosen step: cofferd holds the first
    call's thread at a crash point (COFFER_CRASH_MODE=hold) while the second
    runs, then lets it go on."""

    def setUp(self):
        if not crash_points():
            raise unittest.SkipTest("cofferd built without COFFER_CRASH_POINTS")
        self.hold = tempfile.mkdtemp(prefix="coffer-hold-")
        self.addCleanup(shutil.rmtree, self.hold, True)

    def start(self, config=None):
        self.d = CrashDaemon(config=config)
        self.addCleanup(self.d.cleanup)
        self.d.start()

    def restart_holding(self, points, **env):
        """cofferd restarted to hold a thread at each of `points` (a
        comma-separated COFFER_CRASH_AT list), with extra environment."""
        d = self.d
        d.stop()
        d.crash_env = dict({"COFFER_CRASH_AT": points, "COFFER_CRASH_MODE": "hold",
                            "COFFER_CRASH_HOLD": self.hold}, **env)
        d.start()

    def while_held(self, point, first, second, committed, wait=1.5):
        """first() runs until its thread reaches `point` and is held there;
        then second() starts; crash point `committed` passed within `wait`
        seconds means the second did not wait for the first. The first is
        let go; both answer. (first's outcome: its answer or its RpcError,
        whether `committed` was passed while first was held.)"""
        d, trace = self.d, os.path.join(self.hold, "trace")
        self.restart_holding(point + "@1", COFFER_CRASH_TRACE=trace)
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            f1 = ex.submit(first)
            wait_for(lambda: os.path.exists(os.path.join(self.hold, "held")), 30,
                     "the first call never reached %s" % point)
            f2 = ex.submit(second)

            def passed():
                with open(trace) as f:
                    return committed + "\n" in f.read()
            # A second call that waits keeps waiting; one that does not
            # commits within this.
            early = wait_for(passed, wait, None)
            open(os.path.join(self.hold, "release"), "w").close()
            f2.result(timeout=TIMEOUT)
            try:
                out = f1.result(timeout=TIMEOUT)
            except grpc.RpcError as e:
                out = e
        d.stop()
        d.crash_env = {}
        d.start()
        return out, early

    def gone_without_a_trace(self, principal):
        """No live key of the deleted principal, in memory or in the store;
        no secret of it recorded or in the token; nothing for the start to
        clean (this start came after the calls)."""
        d = self.d
        self.assertNotIn("not recorded", d.log(all_starts=False))
        for k in d.admin_stub().ListApiKeys(pb.ListApiKeysRequest(principal=principal),
                                            timeout=TIMEOUT).keys:
            self.assertNotEqual(k.revoke_time, 0, "key %s of a deleted principal is live"
                                % k.id)
        self.assertEqual(d.state_query(
            "SELECT id, revoked FROM api_keys WHERE principal = '%s' AND revoked = 0"
            % principal), [], "live in the store")
        self.assertEqual(d.state_query(
            "SELECT s.id, s.generation FROM api_secrets s JOIN api_keys k ON k.id = s.id "
            "WHERE k.principal = '%s'" % principal), [], "secrets in the store")
        objs = d.objects()
        self.assertTrue(any(o["label"].startswith("coffer/") for o in objs), objs)
        self.assertEqual([o["label"] for o in objs if "coffer.apikey." in o["label"]], [],
                         "an API key's object outlived its principal")
        if not on_postgresql():   # (crash_check reads the SQLite file)
            self.assertEqual(d.check(), [])

    def test_api_key_made_while_its_principal_is_deleted(self):
        """CreateApiKey held after its secret's object is made, before its
        record commits; DeletePrincipal meanwhile waits for it, then takes
        the new key with it."""
        self.start()
        a = self.d.admin_stub()
        a.CreatePrincipal(pb.CreatePrincipalRequest(name="race-p", uids=[7021]),
                          timeout=TIMEOUT)
        out, early = self.while_held(
            "apikeys.create.secret-made",
            lambda: s_call(self.d.sealed_stub(kind="admin", service="AdminService"),
                           "CreateApiKey", pb.CreateApiKeyRequest(principal="race-p"),
                           "race-key-1"),
            lambda: self.d.admin_stub().DeletePrincipal(
                pb.DeletePrincipalRequest(name="race-p"), timeout=TIMEOUT),
            "store.principal-delete.committed")
        self.assertFalse(early, "the deletion did not wait for the key's creation")
        self.assertIsInstance(out, pb.ApiKeySecretResponse, out)
        self.gone_without_a_trace("race-p")

    def test_api_key_rotated_while_its_principal_is_deleted(self):
        """RotateApiKeySecret held after the new secret's object is made;
        DeletePrincipal meanwhile. Before, the deletion committed at once and
        the rotation then wrote the key back live, secrets and all, for a
        principal that was gone (found by a review; 39 rounds in 40 with
        real timing)."""
        self.start()
        a = self.d.admin_stub()
        a.CreatePrincipal(pb.CreatePrincipalRequest(name="race-r", uids=[7022]),
                          timeout=TIMEOUT)
        sealed = self.d.sealed_stub(kind="admin", service="AdminService")
        kid = s_call(sealed, "CreateApiKey", pb.CreateApiKeyRequest(principal="race-r"),
                     "race-key-2").key.id
        out, early = self.while_held(
            "apikeys.rotate.secret-made",
            lambda: s_call(self.d.sealed_stub(kind="admin", service="AdminService"),
                           "RotateApiKeySecret", pb.RotateApiKeySecretRequest(
                               id=kid, overlap_seconds=3600), "race-rot-1"),
            lambda: self.d.admin_stub().DeletePrincipal(
                pb.DeletePrincipalRequest(name="race-r"), timeout=TIMEOUT),
            "store.principal-delete.committed")
        self.assertFalse(early, "the deletion did not wait for the rotation")
        self.assertIsInstance(out, pb.ApiKeySecretResponse, out)
        self.assertEqual([s.generation for s in out.key.secrets], [2, 1])
        self.gone_without_a_trace("race-r")


    def test_batch_signing_while_its_version_is_destroyed(self):
        """SignBatch held before an item; meanwhile its key's only version is
        scheduled for destruction (grace 1 s) and the sweeper destroys it;
        then the batch signs on with the handle it borrowed. The sweeper
        used to free that handle (a use after free: ASan's
        heap-use-after-free in the review's run); now it is kept until
        close, without its session copies, and the held item fails alone."""
        self.start(config={"keys": {"min_destroy_grace": "1"}})
        self.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="doomed", type=pb.EC_P256),
                                      timeout=TIMEOUT)
        items = [pb.SignBatchItem(message=b"m%d" % i) for i in range(8)]
        out, destroyed = self.while_held(
            "batch.item",
            lambda: self.d.service_stub().SignBatch(
                pb.SignBatchRequest(key="doomed", items=items), timeout=TIMEOUT),
            lambda: self.d.admin_stub().ScheduleDestroyKeyVersion(pb.KeyVersionRequest(
                name="doomed", version=1, force=True, grace_seconds=1), timeout=TIMEOUT),
            "keyring.destroy.objects-gone", wait=30)
        self.assertTrue(destroyed, "the sweeper did not destroy the version within 30 s")
        self.check_retired_items(out, len(items))
        # The version is destroyed, the daemon serves on.
        with self.assertRaises(grpc.RpcError) as cm:
            self.d.service_stub().Sign(pb.SignRequest(key="doomed", message=b"x"),
                                       timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION, cm.exception.details())
        self.assertIsNone(self.d.proc.poll())
        self.assertNotIn("AddressSanitizer", self.d.log())


    def test_scrape_while_a_nonce_append_is_held(self):
        """A signed call held in the nonce record's append, its lock held (as
        behind a write to the log that does not return): the metrics endpoint
        answers at once. A scrape used to take that lock, and the endpoint's
        one thread then stopped every request, 404s included, and the
        daemon's stop (found by a review)."""
        if on_postgresql():
            raise unittest.SkipTest("the nonce record's file: SQLite state only")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.start(config={"metrics": {"listen": "127.0.0.1:%d" % port}})
        d = self.d
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="hk", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)
        k = s_call(d.sealed_stub(kind="admin", service="AdminService"), "CreateApiKey",
                   pb.CreateApiKeyRequest(principal=d.PRINCIPAL), "scrape-key")
        req = pb.MacRequest(key="hk", data=b"x")

        def signed_mac():
            return d.service_stub().Mac(req, timeout=TIMEOUT, metadata=[(
                "authorization", call_authorization(k.key.id, k.secret, KS + "Mac",
                                                    req.SerializeToString()))])

        def get(path):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                c.request("GET", path)
                r = c.getresponse()
                return r.status, r.read().decode()
            finally:
                c.close()
        self.restart_holding("nonces.appended@1")
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            f = ex.submit(signed_mac)
            wait_for(lambda: os.path.exists(os.path.join(self.hold, "held")), 30,
                     "the signed call never reached nonces.appended")
            t = time.monotonic()
            try:
                status, text = get("/metrics")
                missing = get("/x")[0]
            finally:
                open(os.path.join(self.hold, "release"), "w").close()
            took = time.monotonic() - t
            self.assertEqual(len(f.result(timeout=TIMEOUT).mac), 32)
        self.assertEqual((status, missing), (200, 404), text)
        self.assertIn("coffer_nonce_record_entries", text)
        self.assertLess(took, 2.0)
        d.stop()
        d.crash_env = {}

    def test_call_that_sees_a_change_is_recorded_after_it(self):
        """RotateKey held once its version 2 is committed and in memory,
        before its call has waited for its record; a Sign meanwhile signs
        with version 2. In the trail the rotation's record comes first: a
        change's record is queued as it commits, before anyone can see the
        change. Before, the Sign's record was written first, so the trail
        showed a version used before it was made (found by a review)."""
        import json
        self.start()
        d = self.d
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="ord-k", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        self.restart_holding("dispatch.change-made@1")
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                f = ex.submit(lambda: d.admin_stub().RotateKey(
                    pb.RotateKeyRequest(name="ord-k"), timeout=TIMEOUT))
                wait_for(lambda: os.path.exists(os.path.join(self.hold, "held")), 30,
                         "the rotation never reached dispatch.change-made")
                try:
                    sig = d.service_stub().Sign(pb.SignRequest(key="ord-k", message=b"m"),
                                                timeout=TIMEOUT)
                finally:
                    open(os.path.join(self.hold, "release"), "w").close()
                self.assertEqual(f.result(timeout=TIMEOUT).primary_version, 2)
            self.assertEqual(sig.version, 2)
        finally:
            d.stop()
            d.crash_env = {}
        with open(os.path.join(d.state_dir, "audit.log")) as fh:
            recs = [json.loads(line) for line in fh]
        order = [(r["method"].rsplit("/", 1)[1], r.get("version")) for r in recs
                 if r.get("key") == "ord-k" and r.get("method", "").endswith(
                     ("/RotateKey", "/Sign"))]
        self.assertEqual(order, [("RotateKey", 2), ("Sign", 2)], order)

    def test_second_sigterm_ends_a_stuck_shutdown(self):
        """A call that never ends (held, as behind a token that does not
        answer) holds the shutdown past its grace: a second SIGTERM ends the
        process at once, status 1, saying so. Before, only SIGKILL did
        (found by a review)."""
        self.start(config={"daemon": {"shutdown_grace_ms": "60000"}})
        d = self.d
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="sig-k", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        self.restart_holding("dispatch.change-made@1")
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            f = ex.submit(lambda: d.admin_stub().RotateKey(pb.RotateKeyRequest(name="sig-k"),
                                                           timeout=120))
            wait_for(lambda: os.path.exists(os.path.join(self.hold, "held")), 30,
                     "the rotation never reached dispatch.change-made")
            d.send_signal(signal.SIGTERM)
            wait_for(lambda: "SIGTERM: finishing calls in flight" in d.log(all_starts=False),
                     10, "no shutdown began")
            time.sleep(0.5)
            self.assertTrue(d.running)           # the grace goes on, the call held
            t = time.monotonic()
            d.send_signal(signal.SIGTERM)
            rc = d.proc.wait(10)
            took = time.monotonic() - t
            with self.assertRaises(grpc.RpcError):
                f.result(timeout=30)
        self.assertEqual(rc, 1, d.log()[-2000:])
        self.assertLess(took, 2.0)
        self.assertIn("SIGTERM again: exiting without waiting for the calls in flight",
                      d.log(all_starts=False))
        open(os.path.join(self.hold, "release"), "w").close()
        d.crash_env = {}
        d.start()      # the rotation had committed: a clean start, version 2 kept
        self.assertEqual(d.admin_stub().GetKey(pb.GetKeyRequest(name="sig-k"),
                                               timeout=TIMEOUT).primary_version, 2)

    def check_retired_items(self, out, n):
        """A SignBatch answer whose items after the destruction failed, each
        alone, with the destruction's text; the others signed. (With one CPU
        every item runs on the held thread, and all fail.)"""
        self.assertIsInstance(out, pb.SignBatchResponse, out)
        failed = [(r.status.code, r.status.message) for r in out.results if r.status.code]
        self.assertGreaterEqual(len(failed), 1, "every item signed")
        self.assertEqual(set(failed), {(SC.FAILED_PRECONDITION.value[0], "signing: the key "
                                        "version was destroyed while this call held it "
                                        "(P11_RV_RETIRED)")},
                         failed)
        self.assertEqual(sum(1 for r in out.results if r.signature), n - len(failed))

    def test_batch_signing_while_the_destruction_is_under_way(self):
        """The sweeper held after it retired the version's handle, before it
        destroys the objects; a SignBatch that had borrowed the handle then
        goes on. Its items must not look the objects up again: they would
        sign with a version being destroyed and copy it into the session,
        out of the destruction's reach (found by a review: 1,024 items of a
        destroyed version signed, the copies kept until the daemon ended)."""
        self.start(config={"keys": {"min_destroy_grace": "1"}})
        d = self.d
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="doomed2", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        self.restart_holding("batch.item@1,keyring.destroy.retired@1")
        items = [pb.SignBatchItem(message=b"m%d" % i) for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            batch = ex.submit(d.service_stub().SignBatch,
                              pb.SignBatchRequest(key="doomed2", items=items), timeout=TIMEOUT)
            wait_for(lambda: os.path.exists(os.path.join(self.hold, "held")), 30,
                     "the batch was not held")
            d.admin_stub().ScheduleDestroyKeyVersion(pb.KeyVersionRequest(
                name="doomed2", version=1, force=True, grace_seconds=1), timeout=TIMEOUT)
            wait_for(lambda: os.path.exists(os.path.join(self.hold, "held2")), 30,
                     "the sweeper did not reach the version within 30 s")
            open(os.path.join(self.hold, "release"), "w").close()
            out = batch.result(timeout=TIMEOUT)
            open(os.path.join(self.hold, "release2"), "w").close()
        self.check_retired_items(out, len(items))
        wait_for(lambda: "key doomed2 version 1 destroyed in the token" in d.log(), 30,
                 "the destruction did not finish")
        self.assertEqual([o["label"] for o in d.objects() if "doomed2" in o["label"]], [])
        self.assertIsNone(d.proc.poll())


def wait_for(cond, seconds, failure):
    """True once cond() is; False after `seconds` (AssertionError(failure)
    instead, unless failure is None)."""
    end = time.monotonic() + seconds
    while True:
        if cond():
            return True
        if time.monotonic() >= end:
            if failure is not None:
                raise AssertionError(failure)
            return False
        time.sleep(0.005)


if __name__ == "__main__":
    unittest.main(verbosity=2)
