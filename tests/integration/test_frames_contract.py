#!/usr/bin/python3
"""Frames on the pipelined stream (proto/pipeline.md, "Frames: several
requests, or answers, in one message"), checked from the outside against the
document and proto/coffer/v1/pipeline.proto alone, with raw grpcio:

* the opening announces "coffer-pipeline: frames" in its response headers,
  before the caller has sent anything;
* every request of a frame is answered exactly once, with the status, text
  and response of the same unary call, under its own audit record
  "<stream id>.<id>" (duplicate ids included: the daemon echoes them);
* refused methods inside a frame are answered INVALID_ARGUMENT and run
  nothing, the others run; an empty request, an empty first request;
* a frame that nests, holds more than 1,024 requests, or carries a NUL or
  invalid UTF-8 in any method ends the stream with INVALID_ARGUMENT and runs
  none of its requests; exactly 1,024 is allowed;
* answers: never in frames for a caller that never sent one, in frames once
  it has; never nested; at most 64 KiB a message unless one answer alone;
  released only once every record of the frame is written;
* the message size limit (1 MiB + 64 KiB), rate limits, key limits and
  grants per item, retry_after_ms, nonces of VerifyRequestSignature;
* half-close after a frame, many frames from several threads, a caller that
  reads nothing while 20 frames of 1,024 wait; a cancelled stream, an
  expired deadline or SIGTERM in the middle of a large frame: the requests
  not started never start, the daemon goes on serving (or exits at once);
* any valid protobuf encoding of a frame is read as protobuf reads it;
* a frame whose records cannot be written (audit.log made immutable):
  answers that would have been OK are UNAVAILABLE, the others unchanged;
* a signed opening carries unsigned frames; revoking its key refuses each.

Run: cd build && COFFER_BUILD_DIR=$PWD /usr/bin/python3 \
         ../tests/integration/test_frames_contract.py -v
"""
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import unittest

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from daemon_fixture import CofferDaemon, stubs
from rpc_common import KS, SC, TIMEOUT, call_authorization, pb

PP = stubs().pipeline_pb
PATH = "/coffer.v1.Pipeline/Stream"
AS = "/coffer.v1.AdminService/"
HEADER = ("coffer-pipeline", "frames")
MAX_FRAME = 1024
ANSWER_FRAME_BYTES = 64 * 1024
MESSAGE_LIMIT = 1024 * 1024 + 64 * 1024     # coffer.proto: one request message

INV = SC.INVALID_ARGUMENT.value[0]
EXHAUSTED = SC.RESOURCE_EXHAUSTED.value[0]
DENIED = SC.PERMISSION_DENIED.value[0]
NAMES = {c.value[0]: c.name for c in SC}


# ---- wire helpers ----

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wt, payload):
    if wt == 0:
        return varint(num << 3) + varint(payload)
    return varint((num << 3) | 2) + varint(len(payload)) + payload


def enc_req(id=None, method=None, request=None, more=()):
    """A PipelineRequest by hand, so that a method may hold bytes protobuf
    would refuse to serialise (NUL is legal in protobuf, invalid UTF-8 is not)."""
    out = b""
    if id is not None:
        out += field(1, 0, id)
    if method is not None:
        out += field(2, 2, method if isinstance(method, bytes) else method.encode())
    if request is not None:
        out += field(3, 2, request)
    for m in more:
        out += field(4, 2, m)
    return out


def req(i, method, msg=None):
    body = b"" if msg is None else (msg if isinstance(msg, bytes) else msg.SerializeToString())
    return PP.PipelineRequest(id=i, method=method if method.startswith("/") or method == ""
                              else KS + method, request=body)


def frame(reqs):
    top = PP.PipelineRequest()
    top.CopyFrom(reqs[0])
    top.more.extend(reqs[1:])
    return top


def mac(i, data, key="f-mac"):
    return req(i, "Mac", pb.MacRequest(key=key, data=data))


def ser(m):
    return m if isinstance(m, bytes) else m.SerializeToString()


class FrameCase(unittest.TestCase):
    """What the test classes share: one daemon per class (setUpClass)."""

    d = None

    @classmethod
    def start_daemon(cls, keys=()):
        """A daemon (60 s window) with its admin and service stubs, and keys
        (name, type, allowed operations) made."""
        cls.d = CofferDaemon(config={"requests": {"window": "60"}})
        cls.d.start()
        cls.adm = cls.d.admin_stub()
        cls.svc = cls.d.service_stub()
        for name, t, ops in keys:
            cls.adm.CreateKey(pb.CreateKeyRequest(name=name, type=t, allowed_operations=ops),
                              timeout=TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.cleanup()

    # -- calls --

    def stream(self, channel=None):
        """The stream with raw requests (bytes) and answers as (size, message)."""
        return (channel or self.d.channel("service")).stream_stream(
            PATH, request_serializer=lambda b: b,
            response_deserializer=lambda b: (len(b), PP.PipelineResponse.FromString(b)))

    def exchange(self, msgs, metadata=None, timeout=30, channel=None):
        """Send msgs, half-close, read everything: (messages, error or None, call)."""
        call = self.stream(channel)(iter([ser(m) for m in msgs]), timeout=timeout,
                                    metadata=metadata)
        got, err = [], None
        try:
            for x in call:
                got.append(x)
        except grpc.RpcError as e:
            err = e
        return got, err, call

    def answers(self, got):
        """Every answer carried by the messages; no answer frame nests."""
        out = []
        for size, m in got:
            for a in m.more:
                self.assertEqual(len(a.more), 0, "an answer inside a frame has its own more")
            top = PP.PipelineResponse()
            top.CopyFrom(m)
            del top.more[:]
            out.append(top)
            out.extend(m.more)
        return out

    def run_ok(self, msgs, metadata=None, timeout=30):
        got, err, call = self.exchange(msgs, metadata, timeout)
        self.assertIsNone(err, err and "%s %s" % (err.code(), err.details()))
        self.assertEqual(call.code(), SC.OK)
        return self.answers(got), got

    def unary(self, method, body, request_id=None):
        """The same request as a unary call: (code, message, response bytes)."""
        path = method if method.startswith("/") else KS + method
        call = self.d.channel("service").unary_unary(path, request_serializer=lambda b: b,
                                                     response_deserializer=lambda b: b)
        md = [("x-request-id", request_id)] if request_id else None
        try:
            return 0, "", call(ser(body), timeout=TIMEOUT, metadata=md)
        except grpc.RpcError as e:
            return e.code().value[0], e.details(), b""

    # -- the audit trail --

    def audit(self):
        with open(os.path.join(self.d.state_dir, "audit.log")) as f:
            return [json.loads(line) for line in f
                    if line.startswith("{") and line.endswith("\n")]

    def records(self, prefix):
        """Records whose request id starts with prefix + "."."""
        return [r for r in self.audit() if str(r.get("request_id", "")).startswith(prefix + ".")]

    def assert_rest_never_start(self, prefix, n, what, when):
        """Of a frame of n requests under prefix, the ones not started when it
        was cancelled never start: the records stop growing, short of n."""
        time.sleep(1.5)
        n1 = len(self.records(prefix))
        time.sleep(1.5)
        n2 = len(self.records(prefix))
        self.assertEqual(n1, n2, "requests of %s still being started" % what)
        self.assertLess(n2, n, "every request of %s ran (%d recorded; %s)" % (what, n2, when))

    @staticmethod
    def comparable(rec):
        return {k: v for k, v in rec.items()
                if k not in ("seq", "time", "chain", "request_id", "pid", "outbox")}

    def assert_no_records(self, prefix, settle=0.3):
        time.sleep(settle)
        self.assertEqual([(r["request_id"], r["method"]) for r in self.records(prefix)], [])


class Frames(FrameCase):
    @classmethod
    def setUpClass(cls):
        cls.start_daemon((("f-ec", pb.EC_P256, ()), ("f-mac", pb.HMAC_SHA256, ()),
                          ("f-mac512", pb.HMAC_SHA512, ()), ("f-aes", pb.AES_256, ()),
                          ("f-vonly", pb.EC_P256, (pb.OP_VERIFY, pb.OP_GET_PUBLIC_KEY))))
        der = cls.svc.GetPublicKey(pb.GetPublicKeyRequest(key="f-ec"), timeout=TIMEOUT).der
        cls.pub = serialization.load_der_public_key(der)

    def verify_sig(self, sig, msg):
        self.pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))

    # ---- the opening ----

    def test_01_opening_announces_frames_before_any_request(self):
        # "Send frames only after seeing it": the header must come with the
        # opening, before the caller has written one request.
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=30)
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("md", call.initial_metadata()),
                             daemon=True)
        t.start()
        t.join(5)
        try:
            self.assertIn("md", box, "no response headers within 5 s of an opening that sent "
                          "no request: a caller waiting for coffer-pipeline cannot start")
            self.assertIn(HEADER, list(box["md"]))
        finally:
            q.put(None)
        self.assertEqual(list(call), [])
        self.assertEqual(call.code(), SC.OK)

    def test_02_refused_opening_runs_no_frame(self):
        # The refused opening ends the stream before any request is read.
        text = ("idempotency-key does not apply to /coffer.v1.Pipeline/Stream: it carries no "
                "changes; send the change as a unary call with the key")
        f = frame([mac(i, b"refused opening %d" % i) for i in range(10)])
        got, err, _ = self.exchange([f], metadata=[("idempotency-key", "k-0001"),
                                                   ("x-request-id", "fc-refused")])
        self.assertIsNotNone(err)
        self.assertEqual((err.code(), err.details()), (SC.INVALID_ARGUMENT, text))
        self.assertEqual(got, [])
        self.assert_no_records("fc-refused")
        # The admin socket does not serve the stream, frames or not.
        got, err, _ = self.exchange([f], channel=self.d.channel("admin"))
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), SC.UNIMPLEMENTED)
        self.assertEqual(got, [])

    # ---- each request as the unary call ----

    def test_03_frame_answers_are_the_unary_answers(self):
        sign_ok = pb.SignRequest(key="f-ec", message=b"framed sign")
        cases = [
            ("Mac", pb.MacRequest(key="f-mac", data=b"frame mac")),
            ("Mac", pb.MacRequest(key="f-ec", data=b"x")),                  # wrong key type
            ("Mac", pb.MacRequest(key="f-none", data=b"x")),                # unknown key
            ("Sign", pb.SignRequest(key="f-none", message=b"x")),
            ("Sign", pb.SignRequest(key="f-mac", message=b"x")),
            ("Sign", pb.SignRequest(key="f-ec", digest=b"\x01" * 5)),       # bad digest
            ("Sign", pb.SignRequest(key="f-ec", message=b"m", digest=b"\x01" * 32)),
            ("Sign", pb.SignRequest()),                                      # empty request
            ("Sign", b"\xff\xff"),                                           # not a SignRequest
            ("Sign", pb.SignRequest(key="Bad Name!", message=b"x")),
            ("Sign", pb.SignRequest(key="f-vonly", message=b"x")),          # the key's limit
            ("Verify", pb.VerifyRequest(key="f-ec", version=1, message=b"x",
                                        signature=b"\x30\x00")),
            ("Verify", pb.VerifyRequest(key="f-ec", message=b"x", signature=b"\x30")),
            ("VerifyMac", pb.VerifyMacRequest(key="f-mac", version=1, data=b"x",
                                              mac=b"\x00" * 32)),
            ("GetPublicKey", pb.GetPublicKeyRequest(key="f-ec")),
            ("GetPublicKey", pb.GetPublicKeyRequest(key="f-ec", version=99)),
            ("GetKey", pb.GetKeyRequest(name="f-mac")),
            ("ListKeys", pb.ListKeysRequest(page_size=5000)),
            ("Rewrap", pb.RewrapRequest(key="f-aes", ciphertext=b"xx")),
            ("MacBatch", pb.MacBatchRequest(key="f-mac")),                   # no items
            ("MacBatch", pb.MacBatchRequest(key="f-mac", items=[
                pb.MacBatchItem(data=b"%d" % k) for k in range(MAX_FRAME + 1)])),
            ("MacBatch", pb.MacBatchRequest(key="f-mac", items=[
                pb.MacBatchItem(data=b"%d" % k) for k in range(5)])),
            ("SignHttpRequest", pb.SignHttpRequestRequest(request=pb.HttpRequestParts(
                key="f-mac", method="get", path="/x", body_sha256=b"\x00" * 32))),
            ("VerifyRequestSignature", pb.VerifyRequestSignatureRequest(
                request=pb.HttpRequestParts(key="f-mac", method="GET", path="/x",
                                            body_sha256=b"\x00" * 3), signature="zz")),
        ]
        reqs = [req(i, m, x) for i, (m, x) in enumerate(cases)] + [req(999, "Sign", sign_ok)]
        got, msgs = self.run_ok([frame(reqs)], metadata=[("x-request-id", "fc-unary")])
        self.assertEqual(sorted(a.id for a in got), sorted(r.id for r in reqs),
                         "each request of the frame answered exactly once")
        by = {a.id: a for a in got}
        recs = self.records("fc-unary")
        for i, (m, x) in enumerate(cases):
            with self.subTest(case=i, method=m):
                code, text, body = self.unary(m, x, request_id="fc-unary-u%d" % i)
                a = by[i]
                self.assertEqual((a.code, a.message), (code, text))
                if code == 0:
                    self.assertEqual(a.response, body)
                else:
                    self.assertEqual(a.response, b"")
                self.assertEqual(a.retry_after_ms, 0)
                self.assertEqual(a.request_id, "fc-unary.%d" % i)
                mine = [r for r in recs if r["request_id"] == "fc-unary.%d" % i]
                self.assertEqual([(r["method"], r["result"]) for r in mine],
                                 [(KS + m, NAMES[code])], "one audit record per request")
                # The same record as the unary call's, but for when, who (pid)
                # and under which request id.
                theirs = [r for r in self.audit() if r.get("request_id") == "fc-unary-u%d" % i]
                self.assertEqual(len(theirs), 1)
                self.assertEqual(self.comparable(mine[0]), self.comparable(theirs[0]))
        s = by[999]
        self.assertEqual((s.code, s.request_id), (0, "fc-unary.999"))
        self.verify_sig(pb.SignResponse.FromString(s.response).signature, b"framed sign")
        self.assertEqual(len(recs), len(reqs), "one record per request, no more")

    def test_04_duplicate_ids_and_extreme_ids(self):
        # The daemon echoes ids, does not check them: every request answered.
        dup = [mac(77, b"dup a"), mac(77, b"dup b"), mac(77, b"dup c"),
               req(77, "Sign", pb.SignRequest(key="f-none", message=b"x")),
               req(77, "Wrap", pb.WrapRequest(key="f-aes", plaintext=b"p")),
               req(77, "GetPublicKey", pb.GetPublicKeyRequest(key="f-ec"))]
        top = 2 ** 64 - 1
        got, _ = self.run_ok([frame(dup), frame([mac(top, b"max id"), mac(0, b"zero id"),
                                                 mac(top, b"max id again")])],
                             metadata=[("x-request-id", "fc-dup")])
        self.assertEqual(sorted(a.id for a in got), [0] + [77] * 6 + [top] * 2)
        for a in got:
            self.assertEqual(a.request_id, "fc-dup.%d" % a.id)
        d77 = [a for a in got if a.id == 77]
        self.assertEqual(sorted(a.code for a in d77),
                         sorted([0, 0, 0, 0, SC.NOT_FOUND.value[0], INV]))
        # The four that ran answered the unary responses, one each.
        want = sorted([self.unary("Mac", pb.MacRequest(key="f-mac", data=x))[2]
                       for x in (b"dup a", b"dup b", b"dup c")]
                      + [self.unary("GetPublicKey", pb.GetPublicKeyRequest(key="f-ec"))[2]])
        self.assertEqual(sorted(a.response for a in d77 if a.code == 0), want)
        self.assertEqual(sorted(a.response for a in got if a.id == top),
                         sorted(self.unary("Mac", pb.MacRequest(key="f-mac", data=x))[2]
                                for x in (b"max id", b"max id again")))
        recs = self.records("fc-dup")
        self.assertEqual(sum(1 for r in recs if r["request_id"] == "fc-dup.77"), 6)
        self.assertEqual(sum(1 for r in recs if r["request_id"] == "fc-dup.%d" % top), 2)
        self.assertEqual(sum(1 for r in recs if r["request_id"] == "fc-dup.0"), 1)

    def test_05_refused_methods_inside_a_frame(self):
        sealed = self.d.sealed_stub()
        blob = sealed.Wrap(pb.WrapRequest(key="f-aes", plaintext=b"secret"),
                           timeout=TIMEOUT).ciphertext
        refused = {
            1: (AS + "CreateKey", pb.CreateKeyRequest(name="fc-made-by-frame", type=pb.EC_P256)),
            3: (AS + "ListKeys", pb.ListKeysRequest()),
            4: (KS + "Wrap", pb.WrapRequest(key="f-aes", plaintext=b"p")),
            5: (KS + "Unwrap", pb.UnwrapRequest(key="f-aes", ciphertext=blob)),
            6: (KS + "GenerateDataKey", pb.GenerateDataKeyRequest(key="f-aes")),
            7: (KS + "GenerateDataKey", pb.GenerateDataKeyRequest(key="f-aes",
                                                                 include_plaintext=True)),
            8: ("/coffer.v1.SessionService/GetIdentity", pb.GetIdentityRequest()),
            9: (PATH, b""),
            10: ("/grpc.health.v1.Health/Check", b""),
            11: (KS + "NoSuch", b""),
            12: ("Sign", pb.SignRequest(key="f-ec", message=b"x")),
            13: (KS + "sign", pb.SignRequest(key="f-ec", message=b"x")),
            14: (KS + "Sign/", pb.SignRequest(key="f-ec", message=b"x")),
            15: ("//coffer.v1.KeyService/Sign", pb.SignRequest(key="f-ec", message=b"x")),
            16: (KS + "S\u00efgn", pb.SignRequest(key="f-ec", message=b"x")),
            17: ("", pb.SignRequest(key="f-ec", message=b"x")),
        }
        allowed = {
            2: ("Mac", pb.MacRequest(key="f-mac", data=b"between refusals")),
            20: ("GetPublicKey", pb.GetPublicKeyRequest(key="f-ec")),
            21: ("Rewrap", pb.RewrapRequest(key="f-aes", ciphertext=blob)),
            22: ("Sign", pb.SignRequest(key="f-ec", message=b"after refusals")),
        }
        # The first request of the frame is a refused one.
        items = [PP.PipelineRequest(id=i, method=m, request=ser(x))
                 for i, (m, x) in sorted(refused.items())]
        items.insert(1, req(2, *allowed[2]))
        items += [req(i, m, x) for i, (m, x) in sorted(allowed.items()) if i != 2]
        got, _ = self.run_ok([frame(items)], metadata=[("x-request-id", "fc-mixed")])
        self.assertEqual(sorted(a.id for a in got), sorted(list(refused) + list(allowed)))
        by = {a.id: a for a in got}
        # Each answered as if it had come in a message of its own.
        alone, _ = self.run_ok([PP.PipelineRequest(id=i, method=m, request=ser(x))
                                for i, (m, x) in refused.items()],
                               metadata=[("x-request-id", "fc-mixed-alone")])
        alone = {a.id: a for a in alone}
        for i, (m, x) in refused.items():
            with self.subTest(id=i, method=m):
                self.assertEqual(by[i].code, INV, by[i].message)
                self.assertIn(m, by[i].message, "the refusal names the method")
                self.assertEqual(by[i].response, b"")
                self.assertEqual((by[i].code, by[i].message), (alone[i].code, alone[i].message))
        for i, (m, x) in allowed.items():
            with self.subTest(id=i, method=m):
                self.assertEqual((by[i].code, by[i].message), (0, ""))
        self.assertEqual(by[2].response, self.unary(*allowed[2])[2])
        self.assertEqual(by[20].response, self.unary(*allowed[20])[2])
        self.assertEqual(pb.RewrapResponse.FromString(by[21].response).previous_version, 1)
        self.verify_sig(pb.SignResponse.FromString(by[22].response).signature, b"after refusals")
        # Refusals are recorded as refused requests of the stream.
        recs = {}
        for r in self.records("fc-mixed"):
            recs.setdefault(r["request_id"], []).append(r)
        alone_recs = {r["request_id"]: r for r in self.records("fc-mixed-alone")}
        for i in refused:
            self.assertEqual([(r["method"], r["result"]) for r in recs.get("fc-mixed.%d" % i, [])],
                             [(PATH, "INVALID_ARGUMENT")], "record of refused request %d" % i)
            self.assertEqual(self.comparable(recs["fc-mixed.%d" % i][0]),
                             self.comparable(alone_recs["fc-mixed-alone.%d" % i]))
        for i, (m, _) in allowed.items():
            self.assertEqual([(r["method"], r["result"]) for r in recs["fc-mixed.%d" % i]],
                             [(KS + m, "OK")])
        # Nothing refused ran: the AdminService request made no key.
        with self.assertRaises(grpc.RpcError) as e:
            self.adm.GetKey(pb.GetKeyRequest(name="fc-made-by-frame"), timeout=TIMEOUT)
        self.assertEqual(e.exception.code(), SC.NOT_FOUND)

    def test_06_empty_requests_in_a_frame(self):
        # An unframed empty request: what each empty one in a frame must answer.
        alone, _ = self.run_ok([PP.PipelineRequest()])
        self.assertEqual(len(alone), 1)
        self.assertEqual((alone[0].id, alone[0].code), (0, INV))
        # A frame whose first request is empty; an empty element inside more.
        f1 = PP.PipelineRequest(more=[mac(1, b"e1"), mac(2, b"e2")])
        f2 = frame([mac(3, b"e3"), PP.PipelineRequest(), mac(4, b"e4")])
        f3 = enc_req(more=[enc_req(), enc_req()])          # nothing but empty requests
        got, _ = self.run_ok([f1, f2, f3], metadata=[("x-request-id", "fc-empty")])
        self.assertEqual(sorted(a.id for a in got), [0, 0, 0, 0, 0, 1, 2, 3, 4])
        for a in got:
            if a.id == 0:
                self.assertEqual((a.code, a.message), (alone[0].code, alone[0].message))
            else:
                self.assertEqual((a.code, a.message), (0, ""))
                self.assertEqual(a.response, self.unary(
                    "Mac", pb.MacRequest(key="f-mac", data=b"e%d" % a.id))[2])
        recs = self.records("fc-empty")
        self.assertEqual(sorted((r["request_id"], r["method"], r["result"]) for r in recs
                                if r["request_id"] == "fc-empty.0"),
                         [("fc-empty.0", PATH, "INVALID_ARGUMENT")] * 5)

    def test_07_stream_id_without_x_request_id(self):
        got, _ = self.run_ok([frame([mac(i, b"sid %d" % i) for i in range(5)])])
        prefixes = {a.request_id.rsplit(".", 1)[0] for a in got}
        self.assertEqual(len(prefixes), 1, prefixes)
        sid = prefixes.pop()
        self.assertTrue(sid)
        for a in got:
            self.assertEqual(a.request_id, "%s.%d" % (sid, a.id))
        opening = [r for r in self.audit() if r.get("request_id") == sid]
        self.assertEqual([(r["method"], r["result"]) for r in opening], [(PATH, "OK")])
        self.assertEqual(sorted(r["request_id"] for r in self.records(sid)),
                         sorted("%s.%d" % (sid, i) for i in range(5)))

    # ---- frames that end the stream ----

    def bad_frame(self, sid, bad, text=None, check=None):
        """Send an ordinary request, the bad frame, another request: the
        stream ends INVALID_ARGUMENT; none of the frame's requests (ids >=
        100) ran; the request after it is not answered."""
        before = mac(1, b"before " + sid.encode())
        after = mac(2, b"after " + sid.encode())
        got, err, _ = self.exchange([before, bad, after], metadata=[("x-request-id", sid)])
        self.assertIsNotNone(err, "the stream went on after a bad frame")
        self.assertEqual(err.code(), SC.INVALID_ARGUMENT, err.details())
        if text is not None:
            self.assertEqual(err.details(), text)
        if check is not None:
            check(err.details())
        ids = [a.id for a in self.answers(got)]
        self.assertLessEqual(set(ids), {1}, "only the request before the frame may be answered")
        time.sleep(0.3)
        ran = sorted(r["request_id"] for r in self.records(sid))
        self.assertLessEqual(set(ran), {sid + ".1"}, "requests of a refused frame ran")
        return err.details()

    def test_08_frames_do_not_nest(self):
        inner = [mac(200, b"n200"), mac(201, b"n201")]
        nested = frame([mac(100 + k, b"n%d" % k) for k in range(4)]
                       + [PP.PipelineRequest(id=142, method=KS + "Mac", request=pb.MacRequest(
                           key="f-mac", data=b"n").SerializeToString(), more=inner)]
                       + [mac(105 + k, b"n%d" % k) for k in range(3)])
        # The offender is the 5th request of the frame (index 4), id 142.
        doc = "request %s of a frame carries requests in its own `more`: frames do not nest"
        def which(details):
            self.assertIn(details, [doc % n for n in (142, 4, 5)],
                          "expected the document's text naming request 142 (id) or its place")
        self.bad_frame("fc-nest", nested, check=which)
        # One empty request inside `more` is still a request in its own `more`.
        empty_nest = enc_req(100, KS + "Mac", ser(pb.MacRequest(key="f-mac", data=b"x")), more=[
            ser(mac(101, b"y")), enc_req(142, KS + "Mac", ser(pb.MacRequest(key="f-mac")),
                                         more=[b""]), ser(mac(103, b"z"))])
        self.bad_frame("fc-nest-empty", empty_nest, check=which)
        # The first request of a frame nests inside a further request's more.
        deep = enc_req(100, KS + "Mac", ser(pb.MacRequest(key="f-mac", data=b"x")), more=[
            enc_req(142, KS + "Mac", ser(pb.MacRequest(key="f-mac")), more=[
                enc_req(300, KS + "Mac", b"", more=[ser(mac(301, b"deep"))])])])
        self.bad_frame("fc-nest-deep", deep, check=lambda t: self.assertIn(
            t, [doc % n for n in (142, 1, 2)]))

    def test_09_frame_limit_1024(self):
        def big(n):
            return frame([mac(100 + k, b"%d" % (k % 7)) for k in range(n)])
        # Exactly 1024 (the first request and 1023 in more) is allowed.
        got, msgs = self.run_ok([big(MAX_FRAME)], metadata=[("x-request-id", "fc-1024")],
                                timeout=60)
        self.assertEqual(sorted(a.id for a in got), list(range(100, 100 + MAX_FRAME)))
        want = {k: self.svc.Mac(pb.MacRequest(key="f-mac", data=b"%d" % k), timeout=TIMEOUT).mac
                for k in range(7)}
        for a in got:
            self.assertEqual(a.code, 0, a.message)
            self.assertEqual(pb.MacResponse.FromString(a.response).mac, want[(a.id - 100) % 7])
        self.assertLess(len(msgs), MAX_FRAME, "a caller that sent a frame is answered in frames")
        self.assertEqual(len(self.records("fc-1024")), MAX_FRAME)
        # 1025 and 1500: refused with the document's text, none runs.
        for n in (MAX_FRAME + 1, 1500):
            self.bad_frame("fc-%d" % n, big(n),
                           text="a frame of %d requests is above the limit of 1024: send fewer "
                                "per message" % n)

    def test_10_nul_and_invalid_utf8_in_frame_methods(self):
        body = ser(pb.MacRequest(key="f-mac", data=b"u"))
        good = [enc_req(100 + k, KS + "Mac", body) for k in range(6)]
        cases = [
            ("nested-nul", b"/coffer.v1.KeyService/Mac\x00junk", 3, "nul"),
            ("nested-ff", b"/coffer.v1.KeyService/Mac\xff", 2, "utf-8"),
            ("nested-overlong", b"/coffer.v1.KeyService/\xc0\x80Mac", 5, "utf-8"),
            ("nested-surrogate", b"/coffer.v1.KeyService/\xed\xa0\x80", 1, "utf-8"),
            ("nested-truncated", b"/coffer.v1.KeyService/Ma\xe2\x82", 4, "utf-8"),
            ("top-nul", b"/coffer.v1.KeyService/Mac\x00", None, "nul"),
            ("top-ff", b"\xfe/coffer.v1.KeyService/Mac", None, "utf-8"),
        ]
        for name, method, at, word in cases:
            with self.subTest(case=name):
                if at is None:
                    bad = enc_req(150, method, body, more=good)
                else:
                    more = list(good)
                    more.insert(at, enc_req(150, method, body))
                    bad = enc_req(99 + 100, KS + "Mac", body, more=more)
                details = self.bad_frame("fc-%s" % name, bad)
                self.assertIn(word, details.lower(), "the refusal says why")

    # ---- answers in frames ----

    def test_11_no_frames_until_the_caller_sends_one(self):
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60)
        n = 400
        for i in range(n):
            q.put(ser(mac(i, b"s%d" % (i % 5))))
        time.sleep(0.7)    # let the answers pile up, ready to be sent together
        first = [next(call) for _ in range(n)]
        self.assertEqual(sorted(m.id for _, m in first), list(range(n)))
        self.assertEqual([m.id for _, m in first if len(m.more)], [],
                         "a caller that never sent a frame received one")
        # Now one frame: its 300 answers, released together, come in frames.
        q.put(ser(frame([mac(1000 + k, b"f%d" % k) for k in range(300)])))
        later = []
        while sum(1 + len(m.more) for _, m in later) < 300:
            later.append(next(call))
        q.put(None)
        rest = list(call)
        self.assertEqual(call.code(), SC.OK)
        ans = self.answers(later + rest)
        self.assertEqual(sorted(a.id for a in ans), list(range(1000, 1300)))
        self.assertTrue(all(a.code == 0 for a in ans))
        self.assertLess(len(later + rest), 300, "once the caller sent a frame, the daemon "
                        "answers in frames too")

    def test_11b_frames_are_per_stream_not_per_connection(self):
        # Two streams on one channel (one HTTP/2 connection): the one that
        # sends frames gets frames, the one that never does never gets one.
        ch = self.d.channel("service")
        qa, qb = queue.Queue(), queue.Queue()
        a = self.stream(ch)(iter(qa.get, None), timeout=60)
        b = self.stream(ch)(iter(qb.get, None), timeout=60)
        for f in range(10):
            qa.put(ser(frame([mac(f * 100 + k, b"a%d" % k) for k in range(100)])))
        first = next(a)
        for i in range(400):
            qb.put(ser(mac(i, b"b%d" % (i % 3))))
        for f in range(10, 20):
            qa.put(ser(frame([mac(f * 100 + k, b"a%d" % k) for k in range(100)])))
        time.sleep(0.7)
        qa.put(None)
        qb.put(None)
        got_b = list(b)
        got_a = [first] + list(a)
        self.assertEqual((a.code(), b.code()), (SC.OK, SC.OK))
        self.assertEqual(sorted(m.id for _, m in got_b), list(range(400)))
        self.assertEqual([m.id for _, m in got_b if len(m.more)], [],
                         "a stream that never sent a frame received one (its neighbour did)")
        ans = self.answers(got_a)
        self.assertEqual(sorted(x.id for x in ans), list(range(2000)))
        self.assertLess(len(got_a), 2000)

    def test_12_answer_frames_at_most_64k(self):
        batches = {}
        items = []
        for k in range(6):        # ~28 KB answers: two fit in 64 KiB, three do not
            r = pb.MacBatchRequest(key="f-mac512", items=[
                pb.MacBatchItem(data=b"%d/%d" % (k, j)) for j in range(400)])
            batches[10 + k] = r
            items.append(req(10 + k, "MacBatch", r))
        signed = {}
        for k in range(2):        # ~79 KB answers: above 64 KiB, each goes alone
            msgs = [b"sb %d %d" % (k, j) for j in range(MAX_FRAME)]
            signed[20 + k] = msgs
            items.append(req(20 + k, "SignBatch", pb.SignBatchRequest(
                key="f-ec", items=[pb.SignBatchItem(message=m) for m in msgs])))
        items += [mac(100 + k, b"small %d" % k) for k in range(200)]
        items.insert(3, items.pop(-1))
        got, msgs = self.run_ok([frame(items)], metadata=[("x-request-id", "fc-64k")], timeout=60)
        self.assertEqual(sorted(a.id for a in got), sorted(r.id for r in items))
        for size, m in msgs:
            if len(m.more):
                self.assertLessEqual(size, ANSWER_FRAME_BYTES,
                                     "an answer frame of %d answers is %d bytes"
                                     % (1 + len(m.more), size))
            if size > ANSWER_FRAME_BYTES:
                self.assertEqual(len(m.more), 0, "a larger answer goes alone")
        by = {a.id: a for a in got}
        for i, r in batches.items():
            self.assertEqual(by[i].code, 0, by[i].message)
            self.assertEqual(by[i].response, self.unary("MacBatch", r)[2])
        for i, ms in signed.items():
            self.assertEqual(by[i].code, 0, by[i].message)
            res = pb.SignBatchResponse.FromString(by[i].response).results
            self.assertEqual(len(res), len(ms))
            for j in (0, 511, len(ms) - 1):
                self.assertEqual(res[j].status.code, 0)
                self.verify_sig(res[j].signature, ms[j])
        self.assertTrue(any(len(m.more) for _, m in msgs), "the small answers came alone")
        self.assertGreaterEqual(sum(1 for size, _ in msgs if size > ANSWER_FRAME_BYTES), 2)

    def test_12b_answer_frame_at_exactly_64k(self):
        # Three MacBatch answers whose frame would be exactly 65,536 bytes, and
        # one byte more: the first may go as one message, the second may not.
        def mb(k):
            return pb.MacBatchRequest(key="f-mac", items=[pb.MacBatchItem(data=b"%d" % j)
                                                          for j in range(k)])
        body = {k: self.unary("MacBatch", mb(k))[2] for k in range(570, 576)}

        def size(sid, parts):
            ans = [PP.PipelineResponse(id=i, response=body[k], request_id="%s.%d" % (sid, i))
                   for i, k in parts]
            top = PP.PipelineResponse()
            top.CopyFrom(ans[0])
            top.more.extend(ans[1:])
            return top.ByteSize()

        ids = [1, 60, 600, 6000, 50000, 500000, 5000000]
        for target in (ANSWER_FRAME_BYTES, ANSWER_FRAME_BYTES + 1):
            found = None
            for pad in range(16):
                sid = "fc-edge" + "x" * pad
                for k in body:
                    for trio in itertools.combinations(ids, 3):
                        if size(sid, [(i, k) for i in trio]) == target:
                            found = sid, [(i, k) for i in trio]
                            break
                    if found:
                        break
                if found:
                    break
            self.assertIsNotNone(found, "no frame of %d bytes found" % target)
            sid, parts = found
            with self.subTest(bytes=target):
                got, msgs = self.run_ok([frame([req(i, "MacBatch", mb(k)) for i, k in parts])],
                                        metadata=[("x-request-id", sid)])
                self.assertEqual(sorted(a.id for a in got), sorted(i for i, _ in parts))
                for a in got:
                    self.assertEqual((a.code, a.response), (0, body[dict(parts)[a.id]]))
                for n, m in msgs:
                    self.assertLessEqual(n, ANSWER_FRAME_BYTES,
                                         "an answer frame of %d answers is %d bytes"
                                         % (1 + len(m.more), n))

    def test_13_records_written_before_the_frame_is_answered(self):
        items = [mac(k, b"rel %d" % k) for k in range(300)]
        items.insert(150, req(5000, "SignBatch", pb.SignBatchRequest(key="f-ec", items=[
            pb.SignBatchItem(message=b"%d" % j) for j in range(MAX_FRAME)])))
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=[("x-request-id", "fc-rel")])
        q.put(ser(frame(items)))
        first = next(call)
        seen = {r["request_id"] for r in self.records("fc-rel")}
        q.put(None)
        list(call)
        self.assertEqual(call.code(), SC.OK)
        missing = sorted({"fc-rel.%d" % r.id for r in items} - seen)
        self.assertEqual(missing, [], "answers of a frame released before all its records "
                         "were written (first answer: id %d)" % first[1].id)

    # ---- sizes ----

    def test_14_message_size_limit(self):
        # Tens of KiB each: 24 x 40 KiB in one frame, all answered as unary.
        datas = [os.urandom(40 * 1024) for _ in range(24)]
        got, _ = self.run_ok([frame([mac(i, x) for i, x in enumerate(datas)])])
        self.assertEqual(sorted(a.id for a in got), list(range(24)))
        for a in got:
            self.assertEqual(a.response, self.unary("Mac", pb.MacRequest(
                key="f-mac", data=datas[a.id]))[2])
        # A request above the data limit inside a frame: the unary answer.
        over = pb.MacRequest(key="f-mac", data=b"o" * (1024 * 1024 + 1))
        got, _ = self.run_ok([frame([mac(1, b"x"), req(2, "Mac", over), mac(3, b"y")])])
        by = {a.id: a for a in got}
        self.assertEqual(sorted(by), [1, 2, 3])
        self.assertEqual((by[2].code, by[2].message), self.unary("Mac", over)[:2])
        self.assertEqual((by[1].code, by[3].code), (0, 0))
        # A frame of exactly 1 MiB + 64 KiB is one request message within the
        # limit; one byte more is above it (RESOURCE_EXHAUSTED naming it).
        def sized(total):
            n = total - 2000
            while True:
                f = frame([mac(1, b"a" * (1024 * 1024 - 100)), mac(2, b"b" * n)])
                if f.ByteSize() == total:
                    return f
                n += total - f.ByteSize()
        at = sized(MESSAGE_LIMIT)
        got, _ = self.run_ok([at])
        self.assertEqual(sorted((a.id, a.code) for a in got), [(1, 0), (2, 0)])
        got, err, _ = self.exchange([mac(9, b"first"), sized(MESSAGE_LIMIT + 1)],
                                    metadata=[("x-request-id", "fc-over")])
        self.assertIsNotNone(err, "a frame above 1 MiB + 64 KiB was accepted")
        self.assertEqual(err.code(), SC.RESOURCE_EXHAUSTED, err.details())
        self.assertTrue(str(MESSAGE_LIMIT) in err.details() or "64 KiB" in err.details(),
                        "the message names the limit: %s" % err.details())
        self.assertLessEqual({a.id for a in self.answers(got)}, {9})
        # The daemon goes on serving.
        got, _ = self.run_ok([frame([mac(1, b"x"), mac(2, b"y")])])
        self.assertEqual(len(got), 2)

    # ---- the stream's life ----

    def test_15_half_close_right_after_frames(self):
        fa = frame([mac(k, b"h%d" % k) for k in range(200)])
        fb = frame([req(500 + k, "Sign", pb.SignRequest(key="f-ec", message=b"h%d" % k))
                    for k in range(50)]
                   + [req(600, "SignBatch", pb.SignBatchRequest(key="f-ec", items=[
                       pb.SignBatchItem(message=b"%d" % j) for j in range(MAX_FRAME)]))])
        got, err, call = self.exchange([fa, fb, mac(700, b"single")])
        self.assertIsNone(err, err and err.details())
        self.assertEqual(call.code(), SC.OK)
        ans = self.answers(got)
        self.assertEqual(sorted(a.id for a in ans),
                         list(range(200)) + list(range(500, 550)) + [600, 700])
        self.assertTrue(all(a.code == 0 for a in ans), [a.message for a in ans if a.code])
        for a in ans:
            if 500 <= a.id < 550:
                self.verify_sig(pb.SignResponse.FromString(a.response).signature,
                                b"h%d" % (a.id - 500))

    def test_16_many_frames_from_threads_on_one_stream(self):
        want = {k: self.svc.Mac(pb.MacRequest(key="f-mac", data=b"t%d" % k), timeout=TIMEOUT).mac
                for k in range(16)}
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=90,
                             metadata=[("x-request-id", "fc-threads")])
        threads, frames, per = 8, 25, 16

        def writer(t):
            for f in range(frames):
                base = (t * frames + f) * per
                if f % 5 == 4:       # now and then singles between the frames
                    for k in range(per):
                        q.put(ser(mac(base + k, b"t%d" % k)))
                else:
                    q.put(ser(frame([mac(base + k, b"t%d" % k) for k in range(per)])))

        ws = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
        got = []
        reader = threading.Thread(target=lambda: got.extend(call))
        reader.start()
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        q.put(None)
        reader.join(60)
        self.assertFalse(reader.is_alive(), "answers still missing after 60 s")
        self.assertEqual(call.code(), SC.OK)
        ans = self.answers(got)
        total = threads * frames * per
        self.assertEqual(sorted(a.id for a in ans), list(range(total)))
        for a in ans:
            self.assertEqual(a.code, 0, a.message)
            self.assertEqual(pb.MacResponse.FromString(a.response).mac, want[a.id % per])
        self.assertEqual(len(self.records("fc-threads")), total)

    def test_17_cancel_in_the_middle_of_a_large_frame(self):
        n = 128      # batches of 1,024 ECDSA signatures: seconds of work
        big = frame([req(k, "SignBatch", pb.SignBatchRequest(key="f-ec", items=[
            pb.SignBatchItem(message=b"%d" % (j % 10)) for j in range(MAX_FRAME)]))
            for k in range(n)])
        self.assertLess(big.ByteSize(), MESSAGE_LIMIT)
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=[("x-request-id", "fc-cancel")])
        q.put(ser(big))
        deadline = time.monotonic() + 10
        while not self.records("fc-cancel") and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertTrue(self.records("fc-cancel"), "the large frame never started")
        call.cancel()
        q.put(None)
        t0 = time.monotonic()
        # The daemon serves unary calls and other streams.
        self.assertEqual(len(self.svc.Mac(pb.MacRequest(key="f-mac", data=b"c"),
                                          timeout=10).mac), 32)
        got, _ = self.run_ok([frame([mac(k, b"c%d" % k) for k in range(50)])], timeout=10)
        self.assertEqual(sorted(a.id for a in got), list(range(50)))
        served = time.monotonic() - t0
        # The requests of the frame not yet started never start (not recorded).
        self.assert_rest_never_start("fc-cancel", n, "the cancelled frame",
                                     "the daemon served others after %.2f s" % served)

    def test_17b_cancel_stops_a_batch_a_frame_carries(self):
        # A SignBatch carried by a frame stops its items when the stream is
        # cancelled, as a unary one does: the rest answer CANCELLED and the
        # record counts them failed (it once ran all 1,024, seconds of
        # RSA-4096 signatures, for nobody).
        self.adm.CreateKey(pb.CreateKeyRequest(name="f-rsa-c", type=pb.RSA_4096), timeout=120)
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=[("x-request-id", "fc-bcancel")])
        # The stream open and answering first, so that the batch has started
        # when the cancel comes.
        q.put(ser(frame([mac(0, b"first")])))
        self.assertEqual([a.id for a in self.answers([next(call)])], [0])
        q.put(ser(frame([req(1, "SignBatch", pb.SignBatchRequest(key="f-rsa-c", items=[
            pb.SignBatchItem(message=b"%d" % j) for j in range(MAX_FRAME)]))])))
        time.sleep(0.3)
        call.cancel()
        q.put(None)
        deadline = time.monotonic() + 30
        while (not any(r.get("items") for r in self.records("fc-bcancel")) and
               time.monotonic() < deadline):
            time.sleep(0.05)
        recs = [r for r in self.records("fc-bcancel") if r.get("items")]
        self.assertEqual(len(recs), 1, self.records("fc-bcancel"))
        self.assertEqual(recs[0].get("items"), MAX_FRAME, recs[0])
        self.assertGreater(recs[0].get("failed", 0), 0,
                           "the cancelled stream's batch ran every item: %s" % recs[0])

    def test_18_flow_control_with_large_frames(self):
        # 20 frames of 1,024 written before one answer is read: far more than
        # the 256 answers the daemon lets wait; all are answered once read.
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=90)
        nf = 20
        for f in range(nf):
            q.put(ser(frame([mac(f * MAX_FRAME + k, b"fl%d" % (k % 3))
                             for k in range(MAX_FRAME)])))
        time.sleep(1.0)
        q.put(None)
        got = []
        reader = threading.Thread(target=lambda: got.extend(call))
        reader.start()
        reader.join(60)
        self.assertFalse(reader.is_alive(), "answers still missing after 60 s")
        self.assertEqual(call.code(), SC.OK)
        ans = self.answers(got)
        self.assertEqual(sorted(a.id for a in ans), list(range(nf * MAX_FRAME)))
        self.assertTrue(all(a.code == 0 for a in ans))

    def test_19_repeated_method_field(self):
        # Protobuf keeps the last of a repeated scalar field: the method that
        # runs is the last one, so a NUL in it must end the stream, nested too.
        body = ser(pb.MacRequest(key="f-mac", data=b"r"))
        ok_method = (KS + "Mac").encode()
        bad = enc_req(100, ok_method, body, more=[
            ser(mac(101, b"r1")),
            enc_req(102, ok_method, body) + field(2, 2, ok_method + b"\x00x"),
            ser(mac(103, b"r3"))])
        details = self.bad_frame("fc-lastnul", bad)
        self.assertIn("nul", details.lower())
        bad = enc_req(100, ok_method, body, more=[
            ser(mac(101, b"r1")),
            enc_req(102, ok_method, body) + field(2, 2, ok_method + b"\xff"),
            ser(mac(103, b"r3"))])
        details = self.bad_frame("fc-lastff", bad)
        self.assertIn("utf-8", details.lower())

    def test_20_deadline_in_the_middle_of_a_large_frame(self):
        n = 128
        big = frame([req(k, "SignBatch", pb.SignBatchRequest(key="f-ec", items=[
            pb.SignBatchItem(message=b"%d" % (j % 10)) for j in range(MAX_FRAME)]))
            for k in range(n)])
        t0 = time.monotonic()
        got, err, _ = self.exchange([big], metadata=[("x-request-id", "fc-deadline")],
                                    timeout=0.5)
        self.assertIsNotNone(err)
        self.assertEqual(err.code(), SC.DEADLINE_EXCEEDED)
        self.assertEqual(got, [], "a frame's answers are released together")
        self.assertEqual(len(self.svc.Mac(pb.MacRequest(key="f-mac", data=b"d"),
                                          timeout=10).mac), 32)
        served = time.monotonic() - t0
        self.assert_rest_never_start("fc-deadline", n, "the expired frame",
                                     "a unary call was served %.2f s after the opening" % served)

    def test_21_frames_in_any_valid_encoding(self):
        # A frame is any valid encoding of a PipelineRequest: fields out of
        # order, `more` split around other fields, unknown fields, repeated
        # scalars (the last wins), non-minimal varints. Each request is
        # answered as protobuf reads it (python's parser is the reference).
        M = (KS + "Mac").encode()
        b = {x: ser(pb.MacRequest(key="f-mac", data=x)) for x in (b"A", b"B", b"C")}
        dup = field(1, 0, 5) + field(2, 2, M) + field(3, 2, b[b"A"]) + field(1, 0, 6) \
            + field(3, 2, b[b"B"])
        nonmin = b"\x08\x87\x00" + b"\x12" + bytes([len(M) | 0x80, 0x00]) + M \
            + field(3, 2, b[b"C"])
        encodings = {
            "out-of-order": field(4, 2, enc_req(2, M, b[b"B"])) + field(3, 2, b[b"A"])
            + field(2, 2, M) + field(1, 0, 1),
            "split-more": field(4, 2, enc_req(2, M, b[b"B"])) + field(1, 0, 1)
            + field(4, 2, enc_req(3, M, b[b"C"])) + field(2, 2, M) + field(3, 2, b[b"A"])
            + field(4, 2, dup),
            "unknown-fields": enc_req(1, M, b[b"A"]) + field(9, 0, 7) + field(15, 2, b"zz")
            + field(4, 2, enc_req(2, M, b[b"B"]) + field(9, 0, 7) + b"\x5d\x01\x02\x03\x04"),
            "repeated-scalars": enc_req(1, M, b[b"A"], more=[dup, dup]),
            "non-minimal-varints": enc_req(1, M, b[b"A"], more=[nonmin]) + field(4, 2, nonmin),
            "method-twice": field(1, 0, 1) + field(2, 2, b"/x") + field(2, 2, M)
            + field(3, 2, b[b"A"]) + field(4, 2, field(1, 0, 2) + field(2, 2, M)
                                           + field(2, 2, b"/x") + field(3, 2, b[b"B"])),
        }
        for name, raw in encodings.items():
            with self.subTest(encoding=name):
                ref = PP.PipelineRequest.FromString(raw)
                self.assertGreater(len(ref.more), 0)
                items = [ref] + list(ref.more)
                got, _ = self.run_ok([raw])
                self.assertEqual(sorted(a.id for a in got), sorted(r.id for r in items))
                want = sorted((r.id,) + self.unary(r.method, r.request)
                              if r.method.startswith(KS) else (r.id, INV)
                              for r in items)
                have = sorted((a.id, a.code, a.message, a.response) if a.code != INV
                              else (a.id, a.code) for a in got)
                self.assertEqual(have, want)

class FramesShutdown(FrameCase):
    def test_sigterm_in_the_middle_of_a_large_frame(self):
        self.d = CofferDaemon()
        self.addCleanup(self.d.cleanup)
        self.d.start()
        self.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="t-ec", type=pb.EC_P256),
                                      timeout=TIMEOUT)
        n = 128
        big = frame([req(k, "SignBatch", pb.SignBatchRequest(key="t-ec", items=[
            pb.SignBatchItem(message=b"%d" % (j % 10)) for j in range(MAX_FRAME)]))
            for k in range(n)])
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=[("x-request-id", "fc-term")])
        q.put(ser(big))
        deadline = time.monotonic() + 10
        while not self.records("fc-term") and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        self.d.send_signal(signal.SIGTERM)
        got = []
        with self.assertRaises(grpc.RpcError) as e:
            for x in call:
                got.append(x)
        q.put(None)
        self.assertEqual(e.exception.code(), SC.UNAVAILABLE)
        self.assertIn(e.exception.details(), ("cofferd is shutting down", "Socket closed"))
        self.assertEqual(got, [], "answers of a frame interrupted by the shutdown were sent")
        self.assertEqual(self.d.wait(30), 0)
        self.assertLess(time.monotonic() - t0, 5.0, "the stream held the shutdown")
        self.assertLess(len(self.records("fc-term")), n,
                        "every request of the frame ran after SIGTERM")


class FramesAuditClosed(FrameCase):
    """When a frame's records cannot be written (the daemon fails closed),
    every answer of it that would have been OK is UNAVAILABLE with the audit
    trail's reason; the others keep their own status and text."""

    def test_frame_whose_records_cannot_be_written(self):
        if os.geteuid() != 0 or not shutil.which("chattr"):
            self.skipTest("needs root and chattr to make audit.log immutable")
        self.d = CofferDaemon()
        self.addCleanup(self.d.cleanup)
        self.d.start()
        audit = os.path.join(self.d.state_dir, "audit.log")
        adm = self.d.admin_stub()
        for name, t in (("a-mac", pb.HMAC_SHA256), ("a-ec", pb.EC_P256)):
            adm.CreateKey(pb.CreateKeyRequest(name=name, type=t), timeout=TIMEOUT)
        cases = {
            10: ("Mac", pb.MacRequest(key="a-mac", data=b"a")),
            11: ("Sign", pb.SignRequest(key="a-none", message=b"x")),
            12: ("Wrap", pb.WrapRequest(key="a-mac", plaintext=b"p")),
            13: ("Mac", pb.MacRequest(key="a-mac", data=b"b")),
            14: ("Mac", pb.MacRequest(key="a-ec", data=b"x")),
            15: ("GetPublicKey", pb.GetPublicKeyRequest(key="a-ec")),
        }
        unary = {i: self.unary(m, x) for i, (m, x) in cases.items() if m != "Wrap"}
        self.assertEqual([i for i, u in sorted(unary.items()) if u[0] == 0], [10, 13, 15])
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60)
        q.put(ser(mac(1, b"before", key="a-mac")))
        self.assertEqual(next(call)[1].code, 0)
        r = subprocess.run(["chattr", "+i", audit], capture_output=True)
        if r.returncode != 0:
            q.put(None)
            list(call)
            self.skipTest("chattr +i: %s" % r.stderr.decode().strip())
        try:
            q.put(ser(frame([req(i, m, x) for i, (m, x) in sorted(cases.items())])))
            got = []
            while len(got) < len(cases):
                got.extend(self.answers([next(call)]))
        finally:
            subprocess.run(["chattr", "-i", audit], capture_output=True)
            q.put(None)
        list(call)
        by = {a.id: a for a in got}
        self.assertEqual(sorted(by), sorted(cases))
        reasons = set()
        for i in (10, 13, 15):
            self.assertEqual(by[i].code, SC.UNAVAILABLE.value[0], by[i].message)
            self.assertEqual(by[i].response, b"", "a result whose record is missing was sent")
            reasons.add(by[i].message)
        self.assertEqual(len(reasons), 1, reasons)
        self.assertIn("audit", reasons.pop().lower())
        for i in (11, 14):
            self.assertEqual((by[i].code, by[i].message), unary[i][:2],
                             "an answer that was not OK changed")
        self.assertEqual(by[12].code, INV)
        self.assertIn(KS + "Wrap", by[12].message)


class FramesSigned(FrameCase):
    """A principal that signs its calls: the opening is signed, the requests
    of its frames are not; revoking the key refuses each later request."""

    @classmethod
    def setUpClass(cls):
        cls.start_daemon((("s-mac", pb.HMAC_SHA256, ()),))
        sadm = cls.d.sealed_stub(kind="admin", service="AdminService")
        r = sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        cls.key_id, cls.secret = r.key.id, r.secret

    def signed(self):
        return [("authorization", call_authorization(self.key_id, self.secret, PATH, b""))]

    def test_signed_opening_frames_and_revocation(self):
        f = frame([mac(i, b"sg%d" % i, key="s-mac") for i in range(6)]
                  + [req(9, "Wrap", pb.WrapRequest(key="s-mac"))])
        # Unsigned: refused as the unary call is, none of the frame runs.
        code, text, _ = self.unary("Mac", pb.MacRequest(key="s-mac", data=b"u"))
        self.assertEqual(code, SC.UNAUTHENTICATED.value[0])
        got, err, _ = self.exchange([f], metadata=[("x-request-id", "fc-unsigned")])
        self.assertIsNotNone(err)
        self.assertEqual((err.code().value[0], err.details()), (code, text))
        self.assertEqual(got, [])
        self.assert_no_records("fc-unsigned")
        # Signed: the requests of the frame run unsigned.
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=self.signed() + [("x-request-id", "fc-signed")])
        q.put(ser(f))
        ans = []
        while len(ans) < 7:
            ans.extend(self.answers([next(call)]))
        self.assertEqual(sorted((a.id, a.code) for a in ans),
                         [(i, 0) for i in range(6)] + [(9, INV)])
        self.adm.RevokeApiKey(pb.RevokeApiKeyRequest(id=self.key_id), timeout=TIMEOUT)
        q.put(ser(frame([mac(20 + i, b"after", key="s-mac") for i in range(5)])))
        later = []
        while len(later) < 5:
            later.extend(self.answers([next(call)]))
        q.put(None)
        list(call)
        self.assertEqual(call.code(), SC.OK)
        self.assertEqual(sorted(a.id for a in later), list(range(20, 25)))
        for a in later:
            self.assertEqual(a.code, SC.UNAUTHENTICATED.value[0])
            self.assertIn("that opened this stream was revoked", a.message)
            self.assertEqual(a.response, b"")


class FramesPolicy(FrameCase):
    """Rate limits, key limits, grants and nonces, per request of a frame."""

    @classmethod
    def setUpClass(cls):
        cls.start_daemon((("p-ec", pb.EC_P256, ()), ("p-mac", pb.HMAC_SHA256, ())))

    def limit(self, op, per_second, burst=1):
        self.adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
            operation=op, per_second=per_second, burst=burst)), timeout=TIMEOUT)

    def test_rate_limits_per_request_of_a_frame(self):
        good = self.svc.Mac(pb.MacRequest(key="p-mac", data=b"rl"), timeout=TIMEOUT)
        vm = pb.VerifyMacRequest(key="p-mac", version=good.version, data=b"rl", mac=good.mac)
        self.limit(pb.OP_VERIFY_MAC, 0.01, burst=5)
        self.addCleanup(self.limit, pb.OP_VERIFY_MAC, 0)
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=[("x-request-id", "fc-rate")])
        items = [req(i, "VerifyMac", vm) for i in range(1, 9)]
        items += [req(20 + k, "Mac", pb.MacRequest(key="p-mac", data=b"free")) for k in range(3)]
        q.put(ser(frame(items)))
        got = []
        while len(got) < len(items):
            got.extend(self.answers([next(call)]))
        # The unary call now: refused by the same empty bucket.
        code, text, _ = self.unary("VerifyMac", vm)
        self.assertEqual(code, EXHAUSTED)
        by = {}
        for a in got:
            by.setdefault(a.id, []).append(a)
        self.assertEqual(sorted(by), sorted(r.id for r in items))
        vms = [by[i][0] for i in range(1, 9)]
        ok = [a for a in vms if a.code == 0]
        refused = [a for a in vms if a.code != 0]
        self.assertEqual((len(ok), len(refused)), (5, 3), "5 tokens: 5 run, 3 refused")
        for a in ok:
            self.assertTrue(pb.VerifyMacResponse.FromString(a.response).valid)
            self.assertEqual(a.retry_after_ms, 0)
        for a in refused:
            self.assertEqual(a.code, EXHAUSTED)
            self.assertGreater(a.retry_after_ms, 0)
            self.assertLessEqual(a.retry_after_ms, 100 * 1000 + 1000)
            self.assertEqual(re.sub(r"\d+", "#", a.message), re.sub(r"\d+", "#", text))
        for k in range(3):
            self.assertEqual((by[20 + k][0].code, by[20 + k][0].retry_after_ms), (0, 0))
        recs = {r["request_id"]: r["result"] for r in self.records("fc-rate")}
        self.assertEqual(sorted(recs["fc-rate.%d" % a.id] for a in vms),
                         ["OK"] * 5 + ["RESOURCE_EXHAUSTED"] * 3)
        # The limit removed: the next frame on the same stream runs in full.
        self.limit(pb.OP_VERIFY_MAC, 0)
        q.put(ser(frame([req(100 + i, "VerifyMac", vm) for i in range(8)])))
        again = []
        while len(again) < 8:
            again.extend(self.answers([next(call)]))
        q.put(None)
        list(call)
        self.assertEqual(call.code(), SC.OK)
        self.assertEqual(sorted((a.id, a.code, a.retry_after_ms) for a in again),
                         [(100 + i, 0, 0) for i in range(8)])

    def test_rate_limited_batch_inside_a_frame(self):
        # A batch item takes one token each: its items beyond the bucket are
        # refused inside the batch's answer, as the unary batch would be.
        self.limit(pb.OP_SIGN, 0.01, burst=6)
        self.addCleanup(self.limit, pb.OP_SIGN, 0)
        sb = pb.SignBatchRequest(key="p-ec", items=[pb.SignBatchItem(message=b"%d" % j)
                                                    for j in range(4)])
        got, _ = self.run_ok([frame([req(1, "SignBatch", sb), req(2, "SignBatch", sb),
                                     req(3, "Sign", pb.SignRequest(key="p-ec", message=b"x"))])])
        by = {a.id: a for a in got}
        self.assertEqual(sorted(by), [1, 2, 3])
        # 6 tokens for 9 signatures; nothing else may have taken them.
        signed = 0
        for i in (1, 2):
            if by[i].code == 0:
                res = pb.SignBatchResponse.FromString(by[i].response).results
                signed += sum(1 for r in res if r.status.code == 0)
                for r in res:
                    if r.status.code:
                        self.assertEqual(r.status.code, EXHAUSTED)
            else:
                self.assertEqual(by[i].code, EXHAUSTED)
                self.assertGreater(by[i].retry_after_ms, 0)
        signed += 1 if by[3].code == 0 else 0
        self.assertEqual(signed, 6, "six tokens, six signatures")
        if by[3].code:
            self.assertEqual(by[3].code, EXHAUSTED)
            self.assertGreater(by[3].retry_after_ms, 0)

    def test_grants_and_key_limits_per_request_as_they_change(self):
        self.adm.CreateKey(pb.CreateKeyRequest(name="p-vonly", type=pb.EC_P256,
                                               allowed_operations=[pb.OP_VERIFY]),
                           timeout=TIMEOUT)
        q = queue.Queue()
        call = self.stream()(iter(q.get, None), timeout=60,
                             metadata=[("x-request-id", "fc-grant")])

        def send(items):
            q.put(ser(frame(items)))
            out = []
            while len(out) < len(items):
                out.extend(self.answers([next(call)]))
            self.assertEqual(sorted(a.id for a in out), sorted(r.id for r in items))
            return {a.id: a for a in out}

        mreq = pb.MacRequest(key="p-mac", data=b"g")
        sreq = pb.SignRequest(key="p-vonly", message=b"g")
        preq = pb.GetPublicKeyRequest(key="p-ec")
        by = send([req(1, "Mac", mreq), req(2, "Sign", sreq), req(3, "GetPublicKey", preq)])
        self.assertEqual(by[1].code, 0)
        self.assertEqual((by[2].code, by[2].message), self.unary("Sign", sreq)[:2])
        self.assertEqual(by[2].code, DENIED)
        self.assertEqual(by[3].code, 0)
        # The grant of MAC taken away: checked per request, on the open stream.
        self.adm.RevokePrincipal(pb.RevokeRequest(name="tester", key_pattern="*",
                                                  operations=[pb.OP_MAC]), timeout=TIMEOUT)
        try:
            by = send([req(4, "Mac", mreq), req(5, "GetPublicKey", preq), req(6, "Mac", mreq)])
            unary = self.unary("Mac", mreq)[:2]
        finally:
            self.adm.GrantPrincipal(pb.GrantRequest(name="tester", grant=pb.Grant(
                key_pattern="*", operations=[pb.OP_MAC])), timeout=TIMEOUT)
        self.assertEqual(unary[0], DENIED)
        self.assertEqual((by[4].code, by[4].message), unary)
        self.assertEqual((by[6].code, by[6].message), unary)
        self.assertEqual(by[5].code, 0)
        by = send([req(7, "Mac", mreq)])
        self.assertEqual(by[7].code, 0)
        q.put(None)
        list(call)
        self.assertEqual(call.code(), SC.OK)
        recs = {r["request_id"]: r["result"] for r in self.records("fc-grant")}
        self.assertEqual([recs.get("fc-grant.%d" % i) for i in (2, 4, 6)],
                         ["PERMISSION_DENIED"] * 3)

    def test_one_nonce_verified_once_in_a_frame(self):
        parts = pb.HttpRequestParts(key="p-mac", method="POST", path="/v1/orders",
                                    body_sha256=b"\x11" * 32)
        s = self.svc.SignHttpRequest(pb.SignHttpRequestRequest(request=parts), timeout=TIMEOUT)
        parts.timestamp, parts.nonce = s.timestamp, s.nonce
        v = pb.VerifyRequestSignatureRequest(request=parts, signature=s.signature)
        got, _ = self.run_ok([frame([req(i, "VerifyRequestSignature", v) for i in range(8)])])
        self.assertEqual(sorted(a.id for a in got), list(range(8)))
        verdicts = sorted(pb.VerifyRequestSignatureResponse.FromString(a.response).verdict
                          for a in got if a.code == 0)
        self.assertEqual(verdicts, [pb.VALID] + [pb.REPLAYED_NONCE] * 7,
                         "concurrent requests of one frame with one nonce: exactly one valid")


if __name__ == "__main__":
    unittest.main(verbosity=2)
