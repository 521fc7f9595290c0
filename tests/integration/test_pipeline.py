#!/usr/bin/python3
"""The pipelined stream (coffer.v1.Pipeline/Stream, proto/pipeline.md)
driven with raw grpcio, against the document:

* many requests on one stream, answered by id: every signature verified
  (python3-cryptography) against its own message, MACs equal to the unary
  call's; each request's audit record carries "<stream id>.<id>";
* each request answers exactly what the unary call answers (status and
  text): unknown key, a MAC key asked to sign, a bad digest; methods the
  stream does not carry are refused in the answer, the stream goes on; a
  request that is no PipelineRequest ends the stream;
* the opening: refused on the admin socket, without a principal and, for a
  principal that signs, unsigned, badly signed or replayed, with the unary
  texts; a signed opening carries unsigned requests; revoking its key, or
  rotating out the secret that signed the opening, refuses the stream's
  later requests; grants and rate limits per request; VerifyRequestSignature
  on a stream takes [requests] window as it is now (SIGHUP), not as it was
  when the stream opened;
* 1,000 requests sent before any answer is read all come back (flow
  control), requests from 8 threads on one stream each answered once; a
  half-close answers what was sent, then OK; a cancelled stream leaves the
  daemon serving; SIGTERM ends an idle stream at once (UNAVAILABLE), not
  after the grace period.
"""
import hashlib
import json
import os
import queue
import secrets
import signal
import threading
import time
import unittest

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from daemon_fixture import CofferDaemon, stubs
from rpc_common import KS, SC, TIMEOUT, call_authorization, pb
from test_request_signing import sign   # the document's signer, written from it

PP = stubs().pipeline_pb
PATH = "/coffer.v1.Pipeline/Stream"


def stream_of(channel):
    return channel.stream_stream(PATH, request_serializer=PP.PipelineRequest.SerializeToString,
                                 response_deserializer=PP.PipelineResponse.FromString)


def req(i, method, msg):
    return PP.PipelineRequest(id=i, method=KS + method if "/" not in method else method,
                              request=msg.SerializeToString())


def code_of(sc):
    return sc.value[0]


class Pipeline(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"requests": {"window": "60"}})
        cls.d.start()
        cls.adm = cls.d.admin_stub()
        cls.svc = cls.d.service_stub()
        for name, t in (("p-ec", pb.EC_P256), ("p-mac", pb.HMAC_SHA256)):
            cls.adm.CreateKey(pb.CreateKeyRequest(name=name, type=t), timeout=TIMEOUT)
        der = cls.svc.GetPublicKey(pb.GetPublicKeyRequest(key="p-ec"), timeout=TIMEOUT).der
        cls.pub = serialization.load_der_public_key(der)

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def run_stream(self, reqs, channel=None, metadata=None, timeout=60):
        return list(stream_of(channel or self.d.channel("service"))(
            iter(reqs), timeout=timeout, metadata=metadata))

    def unary_error(self, method, msg):
        with self.assertRaises(grpc.RpcError) as e:
            getattr(self.svc, method)(msg, timeout=TIMEOUT)
        return code_of(e.exception.code()), e.exception.details()

    def audit_records(self):
        with open(os.path.join(self.d.config["daemon"]["state_dir"], "audit.log")) as f:
            return [json.loads(line) for line in f if line.startswith("{")]

    # -- requests --

    def test_many_requests_by_id(self):
        msgs = {i: b"pipelined %d" % i for i in range(200)}
        reqs = [req(i, "Sign", pb.SignRequest(key="p-ec", message=m)) for i, m in msgs.items()]
        reqs += [req(1000 + i, "Mac", pb.MacRequest(key="p-mac", data=b"m%d" % i))
                 for i in range(20)]
        got = self.run_stream(reqs, metadata=[("x-request-id", "pipe-many")])
        self.assertEqual(sorted(r.id for r in got), sorted(r.id for r in reqs))
        for r in got:
            self.assertEqual((r.code, r.message), (0, ""), r)
            self.assertEqual(r.request_id, "pipe-many.%d" % r.id)
            if r.id < 1000:
                sig = pb.SignResponse.FromString(r.response).signature
                self.pub.verify(sig, msgs[r.id], ec.ECDSA(hashes.SHA256()))
            else:
                unary = self.svc.Mac(pb.MacRequest(key="p-mac", data=b"m%d" % (r.id - 1000)),
                                     timeout=TIMEOUT).mac
                self.assertEqual(pb.MacResponse.FromString(r.response).mac, unary)
        # One audit record per request, under its own request id; one for the opening.
        recs = {x.get("request_id"): x for x in self.audit_records()}
        self.assertEqual(recs["pipe-many"]["method"], PATH)
        self.assertEqual(recs["pipe-many"]["result"], "OK")
        for r in got:
            rec = recs["pipe-many.%d" % r.id]
            self.assertEqual(rec["method"], KS + ("Sign" if r.id < 1000 else "Mac"))
            self.assertEqual(rec["result"], "OK")

    def test_errors_are_the_unary_ones(self):
        digest_short = pb.SignRequest(key="p-ec", digest=b"\x01" * 5)
        cases = [("Sign", pb.SignRequest(key="p-none", message=b"x")),
                 ("Sign", pb.SignRequest(key="p-mac", message=b"x")),
                 ("Sign", digest_short),
                 ("Verify", pb.VerifyRequest(key="p-ec", message=b"x", signature=b"\x30")),
                 ("Mac", pb.MacRequest(key="p-ec", data=b"x"))]
        got = {r.id: r for r in self.run_stream([req(i, m, x) for i, (m, x) in
                                                  enumerate(cases)])}
        for i, (m, x) in enumerate(cases):
            with self.subTest(case=i):
                self.assertEqual((got[i].code, got[i].message), self.unary_error(m, x))

    def test_methods_the_stream_does_not_carry(self):
        bad = [PP.PipelineRequest(id=1, method="/coffer.v1.AdminService/CreateKey"),
               PP.PipelineRequest(id=2, method=KS + "Wrap",
                                  request=pb.WrapRequest(key="p-ec").SerializeToString()),
               PP.PipelineRequest(id=3, method=KS + "NoSuch"),
               req(4, "Sign", pb.SignRequest(key="p-ec", message=b"after them"))]
        got = {r.id: r for r in self.run_stream(bad)}
        inv = code_of(SC.INVALID_ARGUMENT)
        self.assertEqual((got[1].code, got[1].message), (inv, (
            'a pipelined stream carries KeyService methods ("/coffer.v1.KeyService/Sign"), '
            'not "/coffer.v1.AdminService/CreateKey"')))
        self.assertEqual((got[2].code, got[2].message), (inv, (
            "/coffer.v1.KeyService/Wrap carries secrets: seal it in a session instead of "
            "sending it on a pipelined stream")))
        self.assertEqual((got[3].code, got[3].message), (inv, (
            'a pipelined stream carries KeyService methods ("/coffer.v1.KeyService/Sign"), '
            'not "/coffer.v1.KeyService/NoSuch"')))
        self.assertEqual(got[4].code, 0)
        # Each refusal is recorded as a refused request of the stream.
        recs = {x.get("request_id"): x for x in self.audit_records()}
        for i in (1, 2, 3):
            rec = [r for k, r in recs.items() if k and k.endswith(".%d" % i) and
                   k.startswith(got[i].request_id.rsplit(".", 1)[0])]
            self.assertEqual([(r["method"], r["result"], r["principal"]) for r in rec],
                             [(PATH, "INVALID_ARGUMENT", "tester")])

    def test_a_request_that_is_no_pipeline_request(self):
        raw = self.d.channel("service").stream_stream(
            PATH, request_serializer=lambda b: b,
            response_deserializer=PP.PipelineResponse.FromString)
        ok = req(1, "Sign", pb.SignRequest(key="p-ec", message=b"x")).SerializeToString()
        # A NUL inside the method string: what is checked must be what runs.
        nul = PP.PipelineRequest(id=2, method=KS + "Sign\x00junk").SerializeToString()
        for bad, text in ((b"\xff\xff", "request is not a valid coffer.v1.PipelineRequest "
                           "message: bad field tag at byte 0"),
                          (nul, "field coffer.v1.PipelineRequest.method: a NUL byte at offset "
                           "26; protocol strings are UTF-8 text without NUL")):
            got = []
            with self.assertRaises(grpc.RpcError) as e:
                for r in raw(iter([ok, bad, ok]), timeout=TIMEOUT):
                    got.append(r)
            self.assertEqual(e.exception.code(), SC.INVALID_ARGUMENT)
            self.assertTrue(e.exception.details().startswith(text), e.exception.details())
            # Requests read with it (run by other workers) may be answered.
            self.assertLessEqual(len(got), 2)
            self.assertEqual([(r.id, r.code) for r in got], [(1, 0)] * len(got))

    # -- frames: several requests in one message (PipelineRequest.more) --

    def frame(self, reqs):
        top = PP.PipelineRequest()
        top.CopyFrom(reqs[0])
        top.more.extend(reqs[1:])
        return top

    def answers(self, msgs):
        """Every answer the messages carry, and how many messages carried several."""
        out, framed = [], 0
        for m in msgs:
            framed += 1 if len(m.more) else 0
            for a in m.more:
                self.assertEqual(len(a.more), 0, "nested answer frames")
            top = PP.PipelineResponse()
            top.CopyFrom(m)
            del top.more[:]
            out += [top] + list(m.more)
        return out, framed

    def test_frames(self):
        # The opening announces frames.
        call = stream_of(self.d.channel("service"))(iter([]), timeout=TIMEOUT)
        self.assertIn(("coffer-pipeline", "frames"), call.initial_metadata())
        list(call)
        # One message of 60 requests: each answered once, exactly as alone.
        msgs = {i: b"framed %d" % i for i in range(40)}
        reqs = [req(i, "Sign", pb.SignRequest(key="p-ec", message=m)) for i, m in msgs.items()]
        reqs += [req(100 + i, "Mac", pb.MacRequest(key="p-mac", data=b"f%d" % i))
                 for i in range(16)]
        bad = [req(200, "Sign", pb.SignRequest(key="p-none", message=b"x")),
               req(201, "Mac", pb.MacRequest(key="p-ec", data=b"x")),
               PP.PipelineRequest(id=202, method=KS + "Wrap"),
               PP.PipelineRequest(id=203, method="/coffer.v1.AdminService/CreateKey")]
        got, _ = self.answers(self.run_stream([self.frame(reqs + bad)],
                                              metadata=[("x-request-id", "pipe-frame")]))
        self.assertEqual(sorted(a.id for a in got), sorted(r.id for r in reqs + bad))
        by = {a.id: a for a in got}
        for i, m in msgs.items():
            self.assertEqual((by[i].code, by[i].message), (0, ""))
            self.pub.verify(pb.SignResponse.FromString(by[i].response).signature, m,
                            ec.ECDSA(hashes.SHA256()))
        for i in range(16):
            unary = self.svc.Mac(pb.MacRequest(key="p-mac", data=b"f%d" % i), timeout=TIMEOUT)
            self.assertEqual(pb.MacResponse.FromString(by[100 + i].response).mac, unary.mac)
        self.assertEqual((by[200].code, by[200].message),
                         self.unary_error("Sign", pb.SignRequest(key="p-none", message=b"x")))
        self.assertEqual((by[201].code, by[201].message),
                         self.unary_error("Mac", pb.MacRequest(key="p-ec", data=b"x")))
        inv = code_of(SC.INVALID_ARGUMENT)
        self.assertEqual((by[202].code, by[202].message), (inv, (
            "/coffer.v1.KeyService/Wrap carries secrets: seal it in a session instead of "
            "sending it on a pipelined stream")))
        self.assertEqual((by[203].code, by[203].message), (inv, (
            'a pipelined stream carries KeyService methods ("/coffer.v1.KeyService/Sign"), '
            'not "/coffer.v1.AdminService/CreateKey"')))
        # Each request of the frame has its own record under its own id.
        recs = {x.get("request_id"): x for x in self.audit_records()}
        for a in got:
            self.assertEqual(a.request_id, "pipe-frame.%d" % a.id)
            rec = recs["pipe-frame.%d" % a.id]
            self.assertEqual(rec["result"], "OK" if a.code == 0 else
                             ("NOT_FOUND" if a.id == 200 else rec["result"]))
        self.assertEqual(recs["pipe-frame.0"]["method"], KS + "Sign")
        self.assertEqual(recs["pipe-frame.203"]["method"], PATH)

    def test_frames_many_in_flight(self):
        # 50 frames of 20 MACs written before an answer is read: all answered once,
        # and the answers come in frames too (the caller sent frames).
        reqs = [self.frame([req(f * 100 + k, "Mac", pb.MacRequest(key="p-mac", data=b"%d" % k))
                            for k in range(20)]) for f in range(50)]
        got, framed = self.answers(self.run_stream(reqs))
        self.assertEqual(sorted(a.id for a in got),
                         sorted(f * 100 + k for f in range(50) for k in range(20)))
        self.assertTrue(all(a.code == 0 for a in got))
        self.assertGreater(framed, 0)

    def test_no_frames_for_a_caller_that_sends_none(self):
        # A caller that never sent a frame (an older client) never gets one,
        # however many answers wait to be sent.
        reqs = [req(i, "Mac", pb.MacRequest(key="p-mac", data=b"%d" % i)) for i in range(500)]
        msgs = self.run_stream(reqs)
        self.assertEqual(len(msgs), 500)
        self.assertTrue(all(len(m.more) == 0 for m in msgs))

    def test_bad_frames_end_the_stream(self):
        ok = req(1, "Mac", pb.MacRequest(key="p-mac", data=b"x"))
        nested = self.frame([req(2, "Mac", pb.MacRequest(key="p-mac", data=b"y")),
                             self.frame([req(7, "Mac", pb.MacRequest(key="p-mac", data=b"z")),
                                         req(8, "Mac", pb.MacRequest(key="p-mac", data=b"w"))])])
        big = self.frame([req(k, "Mac", pb.MacRequest(key="p-mac", data=b"b"))
                          for k in range(1025)])
        nul = self.frame([req(3, "Mac", pb.MacRequest(key="p-mac", data=b"y")),
                          PP.PipelineRequest(id=4, method=KS + "Mac\x00junk")])
        for bad, text in (
                (nested, "request 7 of a frame carries requests in its own `more`: frames do "
                         "not nest"),
                (big, "a frame of 1025 requests is above the limit of 1024: send fewer per "
                      "message"),
                (nul, "field coffer.v1.PipelineRequest.method: a NUL byte at offset 25; "
                      "protocol strings are UTF-8 text without NUL")):
            got = []
            with self.assertRaises(grpc.RpcError) as e:
                for r in stream_of(self.d.channel("service"))(iter([ok, bad]), timeout=TIMEOUT):
                    got.append(r)
            self.assertEqual((e.exception.code(), e.exception.details()),
                             (SC.INVALID_ARGUMENT, text))
            # None of the bad frame's requests ran; the one before it may be answered.
            self.assertLessEqual([r.id for r in got], [1])
        # 1024 is allowed.
        got, _ = self.answers(self.run_stream([self.frame(
            [req(k, "Mac", pb.MacRequest(key="p-mac", data=b"b")) for k in range(1024)])]))
        self.assertEqual(len(got), 1024)

    # -- the opening --

    def test_admin_socket(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.run_stream([], channel=self.d.channel("admin"))
        self.assertEqual((e.exception.code(), e.exception.details()),
                         (SC.UNIMPLEMENTED, "%s is not served on the admin socket" % PATH))

    def test_idempotency_key_on_the_opening(self):
        # The stream carries no changes: a key on its opening is refused at
        # once, well formed or not, rather than inherited by every request.
        text = ("idempotency-key does not apply to %s: it carries no changes; send the "
                "change as a unary call with the key" % PATH)
        def refusals():
            return sum(1 for r in self.audit_records()
                       if r.get("method") == PATH and r.get("result") == "INVALID_ARGUMENT")
        before = refusals()
        for key in ("retry-0001", "bad key!"):
            with self.assertRaises(grpc.RpcError) as e:
                self.run_stream([req(1, "Sign", pb.SignRequest(key="p-ec", message=b"x"))],
                                metadata=[("idempotency-key", key)])
            self.assertEqual((e.exception.code(), e.exception.details()),
                             (SC.INVALID_ARGUMENT, text))
        # Each refused opening has its record (written before the answer).
        self.assertEqual(refusals(), before + 2)

    def test_flow_control_and_threads(self):
        # 1,000 requests written before one answer is read.
        q = queue.Queue()
        call = stream_of(self.d.channel("service"))(iter(q.get, None), timeout=120)
        for i in range(1000):
            q.put(req(i, "Mac", pb.MacRequest(key="p-mac", data=b"%d" % i)))
        time.sleep(1.0)
        ids = []
        senders = [threading.Thread(target=lambda t=t: [q.put(req(10000 + 100 * t + k, "Mac",
                   pb.MacRequest(key="p-mac", data=b"t"))) for k in range(50)])
                   for t in range(8)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        q.put(None)   # half-close: what was sent is answered, then OK
        for r in call:
            self.assertEqual(r.code, 0, r.message)
            ids.append(r.id)
        self.assertEqual(call.code(), SC.OK)
        self.assertEqual(sorted(ids), list(range(1000)) + sorted(
            10000 + 100 * t + k for t in range(8) for k in range(50)))

    def test_cancelled_stream(self):
        q = queue.Queue()
        call = stream_of(self.d.channel("service"))(iter(q.get, None), timeout=60)
        for i in range(50):
            q.put(req(i, "Sign", pb.SignRequest(key="p-ec", message=b"c")))
        next(call)
        call.cancel()
        q.put(None)
        # The daemon goes on serving, streams and calls.
        got = self.run_stream([req(1, "Sign", pb.SignRequest(key="p-ec", message=b"after"))])
        self.assertEqual(got[0].code, 0)


class PipelineAuth(unittest.TestCase):
    """The opening's authentication, and what is checked per request."""

    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"requests": {"window": "60"}})
        cls.d.start()
        cls.adm = cls.d.admin_stub()
        cls.adm.CreateKey(pb.CreateKeyRequest(name="a-ec", type=pb.EC_P256), timeout=TIMEOUT)
        sadm = cls.d.sealed_stub(kind="admin", service="AdminService")
        r = sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        cls.key_id, cls.secret = r.key.id, r.secret

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def signed(self, nonce=None, secret=None):
        return [("authorization", call_authorization(self.key_id, secret or self.secret, PATH,
                                                     b"", nonce=nonce))]

    def open(self, reqs, metadata):
        return list(stream_of(self.d.channel("service"))(iter(reqs), timeout=TIMEOUT,
                                                          metadata=metadata))

    def refused(self, metadata):
        with self.assertRaises(grpc.RpcError) as e:
            self.open([req(1, "Sign", pb.SignRequest(key="a-ec", message=b"x"))], metadata)
        return e.exception.code(), e.exception.details()

    def test_1_unsigned_or_badly_signed_opening(self):
        with self.assertRaises(grpc.RpcError) as u:
            self.d.service_stub().Sign(pb.SignRequest(key="a-ec", message=b"x"),
                                       timeout=TIMEOUT)
        self.assertEqual(self.refused(None), (u.exception.code(), u.exception.details()))
        code, text = self.refused(self.signed(secret=b"\x00" * 32))
        self.assertEqual(code, SC.UNAUTHENTICATED)
        self.assertIn("signature", text)
        # A header signed over another path (a unary Sign's) does not open a stream.
        other = [("authorization", call_authorization(self.key_id, self.secret, KS + "Sign",
                                                      b""))]
        self.assertEqual(self.refused(other)[0], SC.UNAUTHENTICATED)

    def test_2_signed_opening_replay_grants_limits_revocation(self):
        nonce = secrets.token_hex(16)
        md = self.signed(nonce=nonce)
        got = self.open([req(i, "Sign", pb.SignRequest(key="a-ec", message=b"s%d" % i))
                         for i in range(5)], md)
        self.assertEqual([r.code for r in got], [0] * 5)
        # The same opening again: its nonce is spent.
        code, text = self.refused(md)
        self.assertEqual(code, SC.UNAUTHENTICATED)
        self.assertEqual(text, "replayed nonce: nonce %s was already used with API key %s; "
                         "sign every call with a fresh nonce" % (nonce, self.key_id))
        # Per request: a grant taken away, a rate limit, a revoked key.
        q = queue.Queue()
        call = stream_of(self.d.channel("service"))(iter(q.get, None), timeout=60,
                                                    metadata=self.signed())
        q.put(req(1, "Sign", pb.SignRequest(key="a-ec", message=b"1")))
        self.assertEqual(next(call).code, 0)
        self.adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
            operation=pb.OP_SIGN, per_second=0.001, burst=1)), timeout=TIMEOUT)
        for i in (2, 3):
            q.put(req(i, "Sign", pb.SignRequest(key="a-ec", message=b"%d" % i)))
        # They may run in parallel: whichever takes the one token runs.
        two, three = sorted((next(call), next(call)), key=lambda r: r.code)
        self.assertEqual(sorted((two.id, three.id)), [2, 3])
        self.assertEqual(two.code, 0)
        self.assertEqual(three.code, code_of(SC.RESOURCE_EXHAUSTED))
        self.assertGreater(three.retry_after_ms, 0)
        self.assertEqual(three.message, "rate limit of principal tester for sign exceeded; "
                         "retry after %d ms" % three.retry_after_ms)
        self.adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
            operation=pb.OP_SIGN, per_second=0)), timeout=TIMEOUT)
        self.adm.RevokeApiKey(pb.RevokeApiKeyRequest(id=self.key_id), timeout=TIMEOUT)
        q.put(req(4, "Sign", pb.SignRequest(key="a-ec", message=b"4")))
        four = next(call)
        self.assertEqual((four.code, four.message), (code_of(SC.UNAUTHENTICATED), (
            "the API key %s that opened this stream was revoked (or is no longer principal "
            "tester's): open a new stream signed with a live key" % self.key_id)))
        q.put(None)
        self.assertEqual(list(call), [])
        self.assertEqual(call.code(), SC.OK)


    def test_3_secret_rotated_out(self):
        """A stream lives as long as the secret that signed its opening.
        Before, rotating that secret out (overlap 0) left the stream signing
        (found by a review)."""
        sadm = self.d.sealed_stub(kind="admin", service="AdminService")
        k = sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        q = queue.Queue()
        md = [("authorization", call_authorization(k.key.id, k.secret, PATH, b""))]
        call = stream_of(self.d.channel("service"))(iter(q.get, None), timeout=60, metadata=md)
        q.put(req(1, "Sign", pb.SignRequest(key="a-ec", message=b"1")))
        self.assertEqual(next(call).code, 0)
        r2 = sadm.RotateApiKeySecret(pb.RotateApiKeySecretRequest(id=k.key.id,
                                                                  overlap_seconds=0),
                                     timeout=TIMEOUT)
        q.put(req(2, "Sign", pb.SignRequest(key="a-ec", message=b"2")))
        two = next(call)
        self.assertEqual((two.code, two.message), (code_of(SC.UNAUTHENTICATED), (
            "the secret of API key %s that signed this stream's opening (generation 1) was "
            "rotated out: open a new stream signed with a live secret" % k.key.id)))
        q.put(None)
        self.assertEqual(list(call), [])
        # A stream opened with the new secret; rotated with an overlap, its
        # secret still verifies, so the stream goes on.
        md = [("authorization", call_authorization(k.key.id, r2.secret, PATH, b""))]
        q = queue.Queue()
        call = stream_of(self.d.channel("service"))(iter(q.get, None), timeout=60, metadata=md)
        q.put(req(1, "Sign", pb.SignRequest(key="a-ec", message=b"1")))
        self.assertEqual(next(call).code, 0)
        sadm.RotateApiKeySecret(pb.RotateApiKeySecretRequest(id=k.key.id, overlap_seconds=600),
                                timeout=TIMEOUT)
        q.put(req(2, "Sign", pb.SignRequest(key="a-ec", message=b"2")))
        self.assertEqual(next(call).code, 0)
        q.put(None)
        self.assertEqual(list(call), [])
        self.adm.RevokeApiKey(pb.RevokeApiKeyRequest(id=k.key.id), timeout=TIMEOUT)


class PipelineWindow(unittest.TestCase):
    def test_window_lowered_while_a_stream_is_open(self):
        """VerifyRequestSignature on a stream judges a timestamp by the
        window in force now. Before, a stream kept the window it opened
        with, so after SIGHUP lowered it a request whose nonce the record
        had already forgotten was VALID again there (found by a review)."""
        d = CofferDaemon(config={"requests": {"window": "600"}})
        self.addCleanup(d.cleanup)
        d.start()
        secret = os.urandom(32)
        d.sealed_stub("admin").ImportKey(pb.ImportKeyRequest(
            name="w-rq", type=pb.HMAC_SHA256, material=secret), timeout=TIMEOUT)
        q = queue.Queue()
        call = stream_of(d.channel("service"))(iter(q.get, None), timeout=60)
        body = hashlib.sha256(b"").digest()

        def verify(i, age):
            ts, nonce = int(time.time()) - age, secrets.token_hex(16)
            parts = pb.HttpRequestParts(key="w-rq", method="GET", path="/v1/x",
                                        canonical_query="", body_sha256=body, timestamp=ts,
                                        nonce=nonce)
            q.put(req(i, "VerifyRequestSignature", pb.VerifyRequestSignatureRequest(
                request=parts, signature=sign(secret, "GET", "/v1/x", "", body, ts, nonce,
                                              "w-rq"))))
            r = next(call)
            self.assertEqual(r.code, 0, r.message)
            return pb.VerifyRequestSignatureResponse.FromString(r.response)

        self.assertEqual(verify(1, 100).verdict, pb.VALID)
        d.config["requests"] = {"window": "30"}
        d.write_config()
        before = d.log().count("SIGHUP: reloaded")
        d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while d.log().count("SIGHUP: reloaded") <= before:
            self.assertLess(time.monotonic(), deadline, d.log())
            time.sleep(0.05)
        v = verify(2, 100)
        self.assertEqual(v.verdict, pb.EXPIRED, v.reason)
        self.assertEqual(verify(3, 10).verdict, pb.VALID)
        # The service allow-list narrowed to nobody: the open stream's next
        # request is refused with its text, the stream goes on answering.
        d.config.setdefault("service", {})["allow_uids"] = "65534"
        d.write_config()
        before = d.log().count("SIGHUP: reloaded")
        d.send_signal(signal.SIGHUP)
        while d.log().count("SIGHUP: reloaded") <= before:
            self.assertLess(time.monotonic(), deadline + 5, d.log())
            time.sleep(0.05)
        q.put(req(4, "Mac", pb.MacRequest(key="w-rq", data=b"x")))
        r = next(call)
        self.assertEqual((r.id, r.code), (4, code_of(SC.PERMISSION_DENIED)))
        self.assertEqual(r.message, "uid %d gid %d is no longer on the service socket's "
                         "allow-list (a reload changed it): this connection serves no more "
                         "calls" % (os.geteuid(), os.getegid()))
        q.put(None)
        self.assertEqual(list(call), [])


class PipelineKeyAddedLater(unittest.TestCase):
    def test_unsigned_stream_after_the_principal_gets_a_key(self):
        """A stream opened unsigned, while the uid alone was enough: once
        the principal has an API key its requests are refused, and stay
        refused once the key is revoked (sticky). Before, the stream went
        on signing without the secret (found by a review)."""
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="l-ec", type=pb.EC_P256),
                                 timeout=TIMEOUT)
        q = queue.Queue()
        call = stream_of(d.channel("service"))(iter(q.get, None), timeout=60)
        q.put(req(1, "Sign", pb.SignRequest(key="l-ec", message=b"1")))
        self.assertEqual(next(call).code, 0)
        sadm = d.sealed_stub(kind="admin", service="AdminService")
        kid = sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"),
                                timeout=TIMEOUT).key.id
        text = ("principal tester has an API key now and this stream was opened unsigned: "
                "open a new stream signed with a live key")
        q.put(req(2, "Sign", pb.SignRequest(key="l-ec", message=b"2")))
        two = next(call)
        self.assertEqual((two.code, two.message), (code_of(SC.UNAUTHENTICATED), text))
        d.admin_stub().RevokeApiKey(pb.RevokeApiKeyRequest(id=kid), timeout=TIMEOUT)
        q.put(req(3, "Sign", pb.SignRequest(key="l-ec", message=b"3")))
        three = next(call)
        self.assertEqual((three.code, three.message), (code_of(SC.UNAUTHENTICATED), text))
        q.put(None)
        self.assertEqual(list(call), [])


class PipelineNoPrincipal(unittest.TestCase):
    def test_no_principal(self):
        d = CofferDaemon(grant_all=False)
        self.addCleanup(d.cleanup)
        d.start()
        with self.assertRaises(grpc.RpcError) as u:
            d.service_stub().ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        with self.assertRaises(grpc.RpcError) as e:
            list(stream_of(d.channel("service"))(iter([]), timeout=TIMEOUT))
        self.assertEqual((e.exception.code(), e.exception.details()),
                         (u.exception.code(), u.exception.details()))

    def test_sigterm_ends_an_idle_stream(self):
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        q = queue.Queue()
        call = stream_of(d.channel("service"))(iter(q.get, None), timeout=120)
        q.put(PP.PipelineRequest(id=1, method=KS + "ListKeys",
                                 request=pb.ListKeysRequest().SerializeToString()))
        self.assertEqual(next(call).code, 0)
        t0 = time.monotonic()
        d.send_signal(signal.SIGTERM)
        with self.assertRaises(grpc.RpcError) as e:
            next(call)
        # The status races the connection's close: either way UNAVAILABLE.
        self.assertEqual(e.exception.code(), SC.UNAVAILABLE)
        self.assertIn(e.exception.details(), ("cofferd is shutting down", "Socket closed"))
        self.assertEqual(d.wait(30), 0)
        self.assertLess(time.monotonic() - t0, 5.0)
        q.put(None)


if __name__ == "__main__":
    unittest.main(verbosity=2)
