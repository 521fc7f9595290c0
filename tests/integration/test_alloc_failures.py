#!/usr/bin/python3
"""Every allocation cofferd's own code makes on a call's path, failed one at
a time, against a real cofferd on a real SoftHSM token.

cofferd runs with tests/support/failmalloc_shim.c preloaded. For each
operation, an unarmed call first counts K, the allocations Coffer's code
makes while serving it (the shim counts only calls from the program's own
code, never from gRPC, absl or OpenSSL). Then, for n = 1 .. K + 2, the shim
is armed to fail the n-th of them and the call is made again:

* cofferd never crashes or hangs: the call is answered within its deadline
  and cofferd is still running;
* an answer is either right (a signature that verifies, the MAC of the
  message, the right verdict) or a refusal whose status is
  RESOURCE_EXHAUSTED, UNAVAILABLE or INTERNAL, with a text that says what
  failed (never empty);
* the same call, unarmed, then succeeds: nothing was left broken;
* every call answered OK has its audit record (its x-request-id in the
  trail), and `cofferctl audit verify` accepts the trail at the end.

The count is per process, so an allocation of a background thread (the
keyring's tick, the trail's writer) may take the n-th turn instead of the
call's: the failure then lands there, and the checks hold either way.
Growth of a table happens at its capacity's boundaries only, so a sweep
reaches those allocations when they fall inside it (CreateKey's version
array always does). The tests run in name order: test_y_* gives the test's
principal an API key, after which its calls must be signed.

Not under the sanitizers (their runtime must be the first library loaded).
"""
import collections
import mmap
import os
import re
import struct
import tempfile
import time
import unittest

import grpc  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from crash_harness import CrashDaemon, sanitizer_build  # noqa: E402
from daemon_fixture import Ctl, SealedRpcError, stubs  # noqa: E402
from rpc_common import KS, TIMEOUT, call_authorization, pb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("COFFER_BUILD_DIR", os.path.join(HERE, "..", "..", "build"))
SHIM = os.environ.get("COFFER_FAILMALLOC_SHIM",
                      os.path.join(BUILD, "tests", "libcf_failmalloc.so"))
ALLOWED = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
           grpc.StatusCode.INTERNAL}
MSG = b"the message of the allocation failure test"
HEAL_S = 15   # a trail that failed a write retries every second; slack for a slow machine
PP = stubs().pipeline_pb
PIPE = "/coffer.v1.Pipeline/Stream"


class Control:
    """The shim's shared counters: countdown, failed, counted."""

    def __init__(self, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 24)
        self.f = open(path, "r+b")
        self.m = mmap.mmap(self.f.fileno(), 24)

    def get(self, i):
        return struct.unpack_from("<q", self.m, 8 * i)[0]

    def arm(self, n):
        struct.pack_into("<q", self.m, 0, n)

    def counted(self):
        return self.get(2)

    def failed(self):
        return self.get(1)


def s_idem(d, method, req, idem):
    """A sealed admin call whose envelope carries an idempotency key."""
    s = d.sealed_stub(kind="admin", service="AdminService").open()
    path = "/coffer.v1.AdminService/" + method
    code, message, resp = s.call(path, req.SerializeToString(), timeout=TIMEOUT,
                                 metadata=[("idempotency-key", idem)])
    if code != 0:
        raise SealedRpcError(path, code, message)
    return pb.ApiKeySecretResponse.FromString(resp)


@unittest.skipIf(sanitizer_build(), "the sanitizers' runtime must be loaded first")
class AllocFailures(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(SHIM):
            raise unittest.SkipTest("%s is not built" % SHIM)
        cls.tmp = tempfile.mkdtemp(prefix="coffer-failmalloc-")
        cls.ctl = Control(os.path.join(cls.tmp, "ctl"))
        cls.d = CrashDaemon()
        cls.d.crash_env = {"LD_PRELOAD": SHIM,
                           "COFFER_FAILMALLOC_CTL": os.path.join(cls.tmp, "ctl")}
        cls.d.start()
        a = cls.d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="fm-ec", type=pb.EC_P256), timeout=TIMEOUT)
        a.CreateKey(pb.CreateKeyRequest(name="fm-mac", type=pb.HMAC_SHA256), timeout=TIMEOUT)
        s = cls.d.service_stub()
        cls.sig = s.Sign(pb.SignRequest(key="fm-ec", message=MSG), timeout=TIMEOUT).signature
        cls.mac = s.Mac(pb.MacRequest(key="fm-mac", data=MSG), timeout=TIMEOUT).mac
        a.CreateKey(pb.CreateKeyRequest(name="fm-aes", type=pb.AES_256), timeout=TIMEOUT)
        cls.answered = []      # request ids answered OK
        cls.seq = 0

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def call(self, name, fn, check):
        """fn(metadata) with a fresh request id, the shim disarmed after it
        (before the answer is checked); (status, details)."""
        type(self).seq += 1
        rid = "fm-%s-%d" % (name, self.seq)
        try:
            r = fn([("x-request-id", rid)])
        except grpc.RpcError as e:
            return e.code(), e.details()
        finally:
            self.ctl.arm(0)
        ids = check(r)
        self.answered += [rid] if ids is None else ["%s.%d" % (rid, i) for i in ids]
        return grpc.StatusCode.OK, ""

    def armed(self, call):
        """call() with the shim as armed, disarmed after: (answer, None) or
        (None, the error)."""
        try:
            return call(), None
        except grpc.RpcError as e:
            return None, e
        finally:
            self.ctl.arm(0)

    def retried(self, what, call):
        """call() until it answers (a trail that failed a write heals within
        a second); its answer."""
        t0 = time.monotonic()
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                self.assertIsNone(self.d.proc.poll(), "cofferd exited (%s); log:\n%s" % (
                    self.d.proc.poll(), self.d.log()[-3000:]))
                self.assertLess(time.monotonic(), t0 + HEAL_S, "%s: %s %s" % (
                    what, e.code(), e.details()))
                time.sleep(0.05)

    def sweep(self, name, fn, check):
        self.ctl.arm(0)
        c0 = self.ctl.counted()
        code, text = self.call(name, fn, check)
        self.assertEqual(code, grpc.StatusCode.OK, text)
        k = self.ctl.counted() - c0
        self.assertGreater(k, 0, "the shim counted no allocation of %s" % name)
        seen = collections.Counter()
        heals = []
        for n in range(1, k + 3):
            f0 = self.ctl.failed()
            self.ctl.arm(n)
            t0 = time.monotonic()
            code, text = self.call(name, fn, check)
            self.ctl.arm(0)
            took = time.monotonic() - t0
            self.assertIsNone(self.d.proc.poll(), "cofferd exited (%s) after failing allocation "
                              "%d of %s; log:\n%s" % (self.d.proc.poll(), n, name,
                                                      self.d.log()[-3000:]))
            # (A change's sweep retries with its key inside fn: up to HEAL_S.)
            self.assertLess(took, TIMEOUT + HEAL_S, "%s, allocation %d: %.1f s" % (name, n, took))
            if code != grpc.StatusCode.OK:
                self.assertIn(code, ALLOWED, "%s, allocation %d failed: %s %s"
                              % (name, n, code, text))
                self.assertTrue(text.strip(), "%s, allocation %d failed: %s with no text"
                                % (name, n, code))
                self.assertGreater(self.ctl.failed(), f0)
            seen[(code.name, text)] += 1
            # Nothing left broken: the same call, unarmed, succeeds. A trail
            # that failed a write refuses calls (fail closed) until its
            # writer writes again, which it retries every second.
            t1 = time.monotonic()
            while True:
                code2, text2 = self.call(name, fn, check)
                if code2 == grpc.StatusCode.OK:
                    break
                self.assertTrue(code2 == grpc.StatusCode.UNAVAILABLE and
                                "the audit trail cannot be written" in text2 and
                                time.monotonic() < t1 + HEAL_S,
                                "%s after allocation %d failed: %s %s"
                                % (name, n, code2, text2))
                time.sleep(0.05)
            if time.monotonic() - t1 > 0.05:
                heals.append(round(time.monotonic() - t1, 2))
        print("\n%s: %d allocations of Coffer's code per call, each failed in turn: %s; "
              "trail healed after %s s" % (name, k, dict(seen), heals), flush=True)

    def test_sign(self):
        s = self.d.service_stub()
        self.sweep("Sign", lambda md: s.Sign(pb.SignRequest(key="fm-ec", message=MSG),
                                             timeout=TIMEOUT, metadata=md),
                   lambda r: self.assertTrue(self.d.service_stub().Verify(pb.VerifyRequest(
                       key="fm-ec", version=1, message=MSG, signature=r.signature),
                       timeout=TIMEOUT).valid))

    def test_mac(self):
        s = self.d.service_stub()
        self.sweep("Mac", lambda md: s.Mac(pb.MacRequest(key="fm-mac", data=MSG),
                                           timeout=TIMEOUT, metadata=md),
                   lambda r: self.assertEqual(r.mac, self.mac))

    def test_verify(self):
        s = self.d.service_stub()
        self.sweep("Verify", lambda md: s.Verify(pb.VerifyRequest(
            key="fm-ec", version=1, message=MSG, signature=self.sig), timeout=TIMEOUT,
            metadata=md),
                   lambda r: self.assertTrue(r.valid))

    def test_verify_mac_batch(self):
        s = self.d.service_stub()
        items = [pb.VerifyMacBatchItem(data=MSG, mac=self.mac),
                 pb.VerifyMacBatchItem(data=MSG + b"!", mac=self.mac)]

        def check(r):
            self.assertEqual([x.valid for x in r.results], [True, False])
        self.sweep("VerifyMacBatch", lambda md: s.VerifyMacBatch(pb.VerifyMacBatchRequest(
            key="fm-mac", version=1, items=items), timeout=TIMEOUT, metadata=md), check)

    def test_sign_batch(self):
        """A batch of signatures, its items run on the worker and the other
        core's helper (share_run_sync): an allocation failing on either
        thread fails the call whole, or its one item with the text of it
        (only when an allocation failed), and every other item is signed."""
        s = self.d.service_stub()
        msgs = [MSG + b" %d" % i for i in range(6)]
        failed_before = [0]

        def run(md):
            failed_before[0] = self.ctl.failed()
            return s.SignBatch(pb.SignBatchRequest(
                key="fm-ec", items=[pb.SignBatchItem(message=m) for m in msgs]),
                timeout=TIMEOUT, metadata=md)

        def check(r):
            ok = [(m, x.signature) for m, x in zip(msgs, r.results) if x.status.code == 0]
            for x in r.results:
                if x.status.code != 0:
                    self.assertGreater(self.ctl.failed(), failed_before[0], x.status.message)
                    self.assertEqual(x.status.code, grpc.StatusCode.INTERNAL.value[0])
                    self.assertRegex(x.status.message, r"^out of memory \([a-z_0-9]+\)$")
            self.assertGreaterEqual(len(ok), len(msgs) - 1)
            v = self.d.service_stub().VerifyBatch(pb.VerifyBatchRequest(
                key="fm-ec", version=r.version, items=[
                    pb.VerifyBatchItem(message=m, signature=sig) for m, sig in ok]),
                timeout=TIMEOUT)
            self.assertEqual([x.valid for x in v.results], [True] * len(ok))
        self.sweep("SignBatch", run, check)

    def test_admin_principal(self):
        """CreatePrincipal with an idempotency key, retried with its key until
        it answers: the principal is then there (store and memory alike),
        once; a grant on it works."""
        a = self.d.admin_stub()
        n = [0]

        def make(md):
            n[0] += 1
            name, idem = "fm-p%d" % n[0], "fm-principal-%d" % n[0]
            req = pb.CreatePrincipalRequest(name=name, uids=[80000 + n[0]])
            first, err = self.armed(lambda: a.CreatePrincipal(
                req, timeout=TIMEOUT, metadata=md + [("idempotency-key", idem)]))
            again = self.retried(idem, lambda: a.CreatePrincipal(
                req, timeout=TIMEOUT, metadata=[("idempotency-key", idem)]))
            self.assertEqual(again.name, name)
            got = a.GetPrincipal(pb.GetPrincipalRequest(name=name), timeout=TIMEOUT)
            self.assertEqual(list(got.uids), [80000 + n[0]])
            a.GrantPrincipal(pb.GrantRequest(name=name, grant=pb.Grant(
                key_pattern="fm-*", operations=[pb.OP_SIGN])), timeout=TIMEOUT)
            names = [x.name for x in a.ListPrincipals(pb.ListPrincipalsRequest(),
                                                      timeout=TIMEOUT).principals]
            self.assertEqual(names.count(name), 1)
            if first is None:
                raise err
            return first

        self.sweep("CreatePrincipal", make, lambda r: None)

    def test_list_and_tail(self):
        a = self.d.admin_stub()

        def both(md):
            keys = a.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT, metadata=md)
            tail = a.TailAudit(pb.TailAuditRequest(count=5), timeout=TIMEOUT, metadata=md)
            return keys, tail

        def check(r):
            self.assertIn("fm-aes", [k.name for k in r[0].keys])   # the first by name
            self.assertEqual(len(r[1].records), 5)
            return []
        self.sweep("ListKeys-TailAudit", both, check)

    def test_rest_signature(self):
        """SignHttpRequest, then VerifyRequestSignature of what it signed."""
        s = self.d.service_stub()
        body = bytes(32)

        def rest(md):
            parts = pb.HttpRequestParts(key="fm-mac", method="POST", path="/v1/orders",
                                        canonical_query="a=1", body_sha256=body)
            r = s.SignHttpRequest(pb.SignHttpRequestRequest(request=parts), timeout=TIMEOUT,
                                  metadata=md)
            parts.timestamp, parts.nonce = r.timestamp, r.nonce
            return s.VerifyRequestSignature(pb.VerifyRequestSignatureRequest(
                request=parts, signature=r.signature), timeout=TIMEOUT, metadata=md)

        def check(v):
            self.assertEqual((v.verdict, v.valid), (pb.VALID, True), v.reason)
            return []
        self.sweep("REST-sign-verify", rest, check)

    def test_sealed_wrap(self):
        """Wrap, Unwrap and GenerateDataKey sealed in one session."""
        ctx = {"tenant": "fm"}

        def wrap(md):
            st = self.d.sealed_stub()
            w = st.Wrap(pb.WrapRequest(key="fm-aes", plaintext=MSG, context=ctx),
                        timeout=TIMEOUT)
            u = st.Unwrap(pb.UnwrapRequest(key="fm-aes", ciphertext=w.ciphertext,
                                           context=ctx), timeout=TIMEOUT)
            g = st.GenerateDataKey(pb.GenerateDataKeyRequest(
                key="fm-aes", context=ctx, include_plaintext=True), timeout=TIMEOUT)
            return u, g

        def check(r):
            self.assertEqual(r[0].plaintext, MSG)
            self.assertEqual(len(r[1].plaintext), 32)
            return []
        self.sweep("sealed-Wrap-Unwrap-GenerateDataKey", wrap, check)

    def test_sealed_sign(self):
        """A session opened (the handshake) and a Sign sealed in it."""
        def sealed(md):
            return self.d.sealed_stub().Sign(pb.SignRequest(key="fm-ec", message=MSG),
                                             timeout=TIMEOUT)

        def check(r):
            self.assertTrue(self.d.service_stub().Verify(pb.VerifyRequest(
                key="fm-ec", version=1, message=MSG, signature=r.signature),
                timeout=TIMEOUT).valid)
            return []   # its record carries the daemon's request id, not ours
        self.sweep("sealed-Sign", sealed, check)

    def test_stream_frame(self):
        """A frame of 2 Signs and 3 Macs on the pipelined stream: each answer
        right, or refused with its own status and text."""
        msgs = [b"frame %d" % i for i in range(5)]
        reqs = [PP.PipelineRequest(id=i, method=KS + ("Sign" if i < 2 else "Mac"), request=(
            pb.SignRequest(key="fm-ec", message=m) if i < 2 else
            pb.MacRequest(key="fm-mac", data=m)).SerializeToString())
            for i, m in enumerate(msgs)]
        top = PP.PipelineRequest()
        top.CopyFrom(reqs[0])
        top.more.extend(reqs[1:])
        macs = {i: self.d.service_stub().Mac(pb.MacRequest(key="fm-mac", data=msgs[i]),
                                             timeout=TIMEOUT).mac for i in range(2, 5)}

        def run(md):
            st = self.d.channel("service").stream_stream(
                PIPE, request_serializer=PP.PipelineRequest.SerializeToString,
                response_deserializer=PP.PipelineResponse.FromString)
            out = []
            for m in st(iter([top]), timeout=TIMEOUT, metadata=md):
                one = PP.PipelineResponse()
                one.CopyFrom(m)
                del one.more[:]
                out += [one] + list(m.more)
            return out

        def check(answers):
            self.assertEqual(sorted(a.id for a in answers), list(range(5)))
            ok = []
            for a in answers:
                if a.code != 0:
                    self.assertIn(a.code, {c.value[0] for c in ALLOWED}, a.message)
                    self.assertTrue(a.message.strip())
                    continue
                if a.id < 2:
                    self.assertTrue(self.d.service_stub().Verify(pb.VerifyRequest(
                        key="fm-ec", version=1, message=msgs[a.id],
                        signature=pb.SignResponse.FromString(a.response).signature),
                        timeout=TIMEOUT).valid)
                else:
                    self.assertEqual(pb.MacResponse.FromString(a.response).mac, macs[a.id])
                ok.append(a.id)
            return ok
        self.sweep("stream-frame", run, check)

    def test_key_creation(self):
        """CreateKey with an idempotency key, retried with it until it
        answers: the key then signs (store and memory alike), once."""
        a = self.d.admin_stub()
        n = [0]

        def create(md):
            n[0] += 1
            name, idem = "fm-ck%d" % n[0], "fm-createkey-%d" % n[0]
            req = pb.CreateKeyRequest(name=name, type=pb.EC_P256)
            first, err = self.armed(lambda: a.CreateKey(
                req, timeout=TIMEOUT, metadata=md + [("idempotency-key", idem)]))
            again = self.retried(idem, lambda: a.CreateKey(
                req, timeout=TIMEOUT, metadata=[("idempotency-key", idem)]))
            self.assertEqual((again.name, again.primary_version), (name, 1))
            sig = self.d.service_stub().Sign(pb.SignRequest(key=name, message=MSG),
                                             timeout=TIMEOUT)
            self.assertEqual(sig.version, 1)
            self.assertEqual([v.version for v in a.GetKey(pb.GetKeyRequest(name=name),
                                                          timeout=TIMEOUT).versions], [1])
            if first is None:
                raise err
            return first
        self.sweep("CreateKey", create, lambda r: None)

    def test_rotation_once_per_key(self):
        """RotateKey with an idempotency key: whatever allocation fails, the
        key retried until it answers makes exactly one version."""
        a = self.d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="fm-rot", type=pb.EC_P256), timeout=TIMEOUT)
        n_keys = [0]

        def rotate(md):
            n_keys[0] += 1
            idem = "fm-rotation-%d" % n_keys[0]
            rotate_it = lambda m: a.RotateKey(pb.RotateKeyRequest(name="fm-rot"),
                                              timeout=TIMEOUT,
                                              metadata=m + [("idempotency-key", idem)])
            first, err = self.armed(lambda: rotate_it(md))
            # Retried with its key until it answers: the same answer, one version.
            again = self.retried(idem, lambda: rotate_it([]))
            if first is not None:
                self.assertEqual(again.primary_version, first.primary_version)
            versions = [v.version for v in a.GetKey(pb.GetKeyRequest(name="fm-rot"),
                                                    timeout=TIMEOUT).versions]
            self.assertEqual(versions, list(range(1, n_keys[0] + 2)), idem)
            self.assertEqual(again.primary_version, n_keys[0] + 1)
            if first is None:
                raise err
            return first
        self.sweep("RotateKey", rotate, lambda r: None)

    def test_api_key_creation(self):
        """CreateApiKey (sealed) with an idempotency key, retried with it
        until it answers: the key is then listed, once (store and memory
        alike); revoked after, to stay under the per-principal limit."""
        a = self.d.admin_stub()
        a.CreatePrincipal(pb.CreatePrincipalRequest(name="fm-ak", uids=[81000]),
                          timeout=TIMEOUT)
        n = [0]

        def create(md):
            n[0] += 1
            idem = "fm-apikey-%d" % n[0]
            req = pb.CreateApiKeyRequest(principal="fm-ak")
            first, err = self.armed(lambda: s_idem(self.d, "CreateApiKey", req, idem))
            again = self.retried(idem, lambda: s_idem(self.d, "CreateApiKey", req, idem))
            ids = [k.id for k in a.ListApiKeys(pb.ListApiKeysRequest(principal="fm-ak"),
                                               timeout=TIMEOUT).keys if not k.revoke_time]
            self.assertEqual(ids, [again.key.id])
            a.RevokeApiKey(pb.RevokeApiKeyRequest(id=again.key.id), timeout=TIMEOUT)
            if first is None:
                raise err
            return first
        # (Sealed: its record carries the daemon's request id, not ours.)
        self.sweep("CreateApiKey", create, lambda r: [])

    def test_y_signed_calls(self):
        """API-key signed calls (run late: from now on the principal must
        sign every call)."""
        sadm = self.d.sealed_stub(kind="admin", service="AdminService")
        k = sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        mac = self.d.channel("service").unary_unary(KS + "Mac", request_serializer=None,
                                                    response_deserializer=None)
        body = pb.MacRequest(key="fm-mac", data=MSG).SerializeToString()

        def signed(md):
            auth = call_authorization(k.key.id, k.secret, KS + "Mac", body)
            return pb.MacResponse.FromString(mac(body, timeout=TIMEOUT,
                                                 metadata=md + [("authorization", auth)]))
        self.sweep("signed-Mac", signed, lambda r: self.assertEqual(r.mac, self.mac))

    def test_yz_revoked_api_key(self):
        """RevokeApiKey with an idempotency key, retried with it until it
        answers: the key then verifies nothing (store and memory alike)."""
        adm = self.d.admin_stub()
        mac = self.d.channel("service").unary_unary(KS + "Mac", request_serializer=None,
                                                    response_deserializer=None)
        body = pb.MacRequest(key="fm-mac", data=MSG).SerializeToString()
        n = [0]

        def revoke(md):
            n[0] += 1
            armed = self.ctl.get(0)
            self.ctl.arm(0)
            k = self.d.sealed_stub(kind="admin", service="AdminService").CreateApiKey(
                pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
            self.ctl.arm(armed)
            idem = "fm-revoke-%d" % n[0]
            req = pb.RevokeApiKeyRequest(id=k.key.id)
            first, err = self.armed(lambda: adm.RevokeApiKey(
                req, timeout=TIMEOUT, metadata=md + [("idempotency-key", idem)]))
            self.retried(idem, lambda: adm.RevokeApiKey(
                req, timeout=TIMEOUT, metadata=[("idempotency-key", idem)]))
            with self.assertRaises(grpc.RpcError) as cm:
                mac(body, timeout=TIMEOUT, metadata=[("authorization", call_authorization(
                    k.key.id, k.secret, KS + "Mac", body))])
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("revoked", cm.exception.details())
            if first is None:
                raise err
            return first
        self.sweep("RevokeApiKey", revoke, lambda r: None)

    def test_zz_every_answer_recorded(self):
        Ctl(self.d)("audit", "verify")
        with open(os.path.join(self.d.state_dir, "audit.log")) as f:
            trail = f.read()
        self.assertGreater(len(self.answered), 100, "the sweeps ran before this test")
        missing = [r for r in self.answered if '"%s"' % r not in trail]
        self.assertEqual(missing, [], "answered OK without an audit record")
        print("\n%d calls answered OK, each with its record; audit verify passes" %
              len(self.answered), flush=True)


@unittest.skipIf(sanitizer_build(), "the sanitizers' runtime must be loaded first")
class ThreadFailures(unittest.TestCase):
    """Every thread cofferd's own code starts, failed in turn: the shim makes
    its n-th pthread_create fail with EAGAIN, for n = 1, 2, ... until a start
    where none failed; once that one alone, once it and every later one (a
    process out of threads). Each start either ends with a non-zero status
    and a line that says which thread could not start and why (not a crash,
    not a hang), or serves: a Sign answered right, a clean stop, and the
    thread it went without named in the log."""

    MSG = b"the thread failure test's message"
    SAYS = re.compile(r"[^\n]*(cannot start|started \d+ of the \d+)[^\n]*thread[^\n]*"
                      r"(Resource temporarily unavailable|EAGAIN)[^\n]*")

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(SHIM):
            raise unittest.SkipTest("%s is not built" % SHIM)
        cls.d = CrashDaemon()
        cls.d.start()
        cls.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="ft-ec", type=pb.EC_P256),
                                     timeout=TIMEOUT)
        der = cls.d.service_stub().GetPublicKey(pb.GetPublicKeyRequest(key="ft-ec"),
                                                timeout=TIMEOUT).der
        cls.pub = serialization.load_der_public_key(der)
        cls.d.stop()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def sweep(self, only):
        d, seen = self.d, []
        for n in range(1, 64):
            d.crash_env = {"LD_PRELOAD": SHIM, "COFFER_FAILTHREAD_FROM": str(n)}
            if only:
                d.crash_env["COFFER_FAILTHREAD_ONLY"] = "1"
            served = d.try_start()
            if served:
                sig = d.service_stub().Sign(pb.SignRequest(key="ft-ec", message=self.MSG),
                                            timeout=TIMEOUT).signature
                self.pub.verify(sig, self.MSG, ec.ECDSA(hashes.SHA256()))
                d.stop()
            else:
                d.proc.wait(timeout=30)
            log = d.log(all_starts=False)
            if "failthread: pthread_create #%d failed" % n not in log:
                self.assertTrue(served, "start %d ended without a thread failing:\n%s" %
                                (n, log[-2000:]))
                break
            said = ([None] + list(self.SAYS.finditer(log)))[-1]   # the last such line
            self.assertIsNotNone(said, "start %d: no line says which thread and why\n%s" %
                                 (n, log[-2000:]))
            if not served:
                self.assertGreater(d.proc.returncode, 0,
                                   "start %d: status %d (a signal is a crash)\n%s" %
                                   (n, d.proc.returncode, log[-2000:]))
            seen.append("#%d %s: %s" % (n, "served" if served else
                                        "exit %d" % d.proc.returncode,
                                        said.group(0).split(": ", 1)[-1]))
        else:
            self.fail("cofferd started more than 63 threads of its own")
        self.assertGreater(len(seen), 5, "too few thread starts reached: %r" % seen)
        print("\n" + "\n".join(seen), flush=True)

    def test_one_thread_start_failing(self):
        self.sweep(only=True)

    def test_out_of_threads_from_each_start(self):
        self.sweep(only=False)

if __name__ == "__main__":
    unittest.main(verbosity=2)
