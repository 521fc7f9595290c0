#!/usr/bin/python3
"""Principals' API keys and signed calls against cofferd, with an
independent implementation of proto/call-authentication.md (Python hmac,
hashlib) that signs raw gRPC calls:

* the document's vectors are reproduced from their inputs;
* a signed call is accepted, and every refusal has its status and reason:
  missing, malformed (many ways) and duplicated headers, bad signature
  (wrong secret, changed body, changed method), expired, clock skew,
  unknown key, another principal's key, revoked key, replayed nonce (also
  after a restart), an old secret after its rotation deadline;
* a captured call sent again is refused, and 8 concurrent copies of one
  call succeed exactly once;
* secrets are shown only sealed, are never in the daemon's log, and are
  destroyed in the token at their deadline (start-up reconciliation too);
* grants still apply after authentication; [requests] require_api_key;
* the document's request bytes are sent to cofferd as the raw body of the
  method they name, signed with the test's own key (the doc's string is
  rebuilt first): accepted, and the old, wrong bytes of the second vector
  are refused with their INVALID_ARGUMENT text;
* what the document states precisely: the signature covers the bytes after
  gRPC decompression, and the exact bytes sent (an explicit default field
  signed as sent is accepted, a re-serialisation is not); the window's edge
  seconds are inside, a rotated-out secret's deadline second is not;
  signature hex in either case, the body hash lower-case only; the header
  grammar (one space after the label, spaces only after commas, names
  case-sensitive, no empty field, no trailing comma).
"""
import concurrent.futures
import hashlib
import hmac
import os
import re
import secrets
import signal
import subprocess
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, SealedRpcError, cofferctl_path  # noqa: E402
from rpc_common import CALL_AUTH_LABEL as LABEL  # noqa: E402
from rpc_common import call_authorization as header, string_to_sign  # noqa: E402
from rpc_common import KS, SC, TIMEOUT, S, pb  # noqa: E402

# cofferd's answer to a MacRequest whose field 2 (uint32 version) arrives
# length-delimited: protobuf-c cannot unpack it.
OLD_BODY_REFUSAL = "request is not a valid coffer.v1.MacRequest message"


def doc_path():
    src = os.environ.get("COFFER_SOURCE_DIR", os.path.join(HERE, "..", ".."))
    return os.path.join(src, "proto", "call-authentication.md")


def doc_vectors():
    with open(doc_path()) as f:
        doc = f.read()
    block = doc.split("<!-- vectors:begin -->")[1].split("<!-- vectors:end -->")[0]
    return dict(re.findall(r"^(\w+): ?(.*)$", block, re.M))


def at_second_start(fn, attempts=5):
    """fn(t0) run early in the second t0, again until it also ended in t0
    (the daemon's clock is whole seconds): what edge tests need."""
    for _ in range(attempts):
        time.sleep(1.02 - time.time() % 1 if time.time() % 1 > 0.3 else 0)
        t0 = int(time.time())
        out = fn(t0)
        if int(time.time()) == t0:
            return out
    raise AssertionError("could not run within one second %d times" % attempts)


def at_second_turn(fn, attempts=5):
    """fn(t0) run as soon as the second t0 begins (the kernel's coarse clock,
    time(2), may still show the second before), again until it also ended
    in t0."""
    for _ in range(attempts):
        time.sleep(max(0.0, 0.995 - time.time() % 1))
        start = int(time.time())
        while int(time.time()) == start:
            pass
        t0 = int(time.time())
        out = fn(t0)
        if int(time.time()) == t0:
            return out
    raise AssertionError("could not run within one second %d times" % attempts)


class Vectors(unittest.TestCase):
    def test_document_vectors(self):
        with open(doc_path()) as f:
            doc = f.read()
        block = doc.split("<!-- vectors:begin -->")[1].split("<!-- vectors:end -->")[0]
        kv = dict(re.findall(r"^(\w+): ?(.*)$", block, re.M))
        secret = bytes.fromhex(kv["secret"])
        n = 0
        for i in range(1, 10):
            p = "call%d_" % i
            if p + "path" not in kv:
                break
            body = bytes.fromhex(kv[p + "body"])
            s = string_to_sign(kv[p + "path"], body, int(kv[p + "timestamp"]),
                               kv[p + "nonce"], kv[p + "key_id"])
            self.assertEqual(s.hex(), kv[p + "string_to_sign"])
            sig = hmac.new(secret, s, hashlib.sha256).hexdigest()
            self.assertEqual(sig, kv[p + "signature"])
            self.assertEqual(kv[p + "authorization"],
                             header(kv[p + "key_id"], secret, kv[p + "path"], body,
                                    int(kv[p + "timestamp"]), kv[p + "nonce"]))
            n += 1
        self.assertGreaterEqual(n, 2)


class CallAuth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"requests": {"window": "60"}})
        cls.d.start()
        cls.adm = cls.d.admin_stub()
        cls.sadm = cls.d.sealed_stub(kind="admin", service="AdminService")
        cls.adm.CreateKey(pb.CreateKeyRequest(name="api-mac", type=pb.HMAC_SHA256),
                          timeout=TIMEOUT)
        r = cls.sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"),
                                  timeout=TIMEOUT)
        cls.key_id, cls.secret = r.key.id, r.secret

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def svc(self):
        return self.d.service_stub()

    def call(self, method, req, key_id=None, secret=None, path=None, body=None, **kw):
        """Call KeyService.method signed over (path, body) (default: the real
        ones), or with the header given as kw["authz"] (list: several)."""
        path = path or KS + method
        raw = req.SerializeToString()
        if "authz" in kw:
            authz = kw.pop("authz")
            md = [("authorization", a) for a in (authz if isinstance(authz, list)
                                                  else [authz])]
        else:
            md = [("authorization", header(key_id or self.key_id, secret or self.secret,
                                           path, raw if body is None else body, **kw))]
        return getattr(self.svc(), method)(req, metadata=md, timeout=TIMEOUT)

    def refused(self, code, pattern, method="Mac", req=None, **kw):
        req = req or pb.MacRequest(key="api-mac", data=b"hello")
        with self.assertRaises(grpc.RpcError) as cm:
            self.call(method, req, **kw)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertRegex(cm.exception.details(), pattern)
        return cm.exception.details()

    # -- accepted --

    def test_signed_calls_accepted(self):
        r = self.call("Mac", pb.MacRequest(key="api-mac", data=b"hello"))
        self.assertEqual(len(r.mac), 32)
        self.call("ListKeys", pb.ListKeysRequest())
        # Field order and spacing of the header are free.
        raw = pb.ListKeysRequest().SerializeToString()
        ts, nonce = int(time.time()), secrets.token_hex(16)
        sig = hmac.new(self.secret, string_to_sign(KS + "ListKeys", raw, ts, nonce, self.key_id),
                       hashlib.sha256).hexdigest().upper()
        self.call("ListKeys", pb.ListKeysRequest(),
                  authz="%s signature=%s,nonce=%s,   timestamp=%d,keyId=%s" %
                  (LABEL, sig, nonce, ts, self.key_id))

    def test_public_methods_need_no_signature(self):
        h = S.health_pb_grpc.HealthStub(self.d.channel()).Check(
            S.health_pb.HealthCheckRequest(), timeout=TIMEOUT)
        self.assertEqual(h.status, S.health_pb.HealthCheckResponse.SERVING)
        ident = S.pb_grpc.SessionServiceStub(self.d.channel()).GetIdentity(
            pb.GetIdentityRequest(), timeout=TIMEOUT)
        self.assertTrue(ident.fingerprint.startswith("sha256:"))

    # -- the document's vectors, sent --

    # The second vector's bytes before the fix: field 2 (version, uint32)
    # encoded as a length-delimited "hello".
    OLD_CALL2_BODY = "0a076170692d6d6163120568656c6c6f"

    def raw_call(self, path, body, secret=None, key_id=None, nonce=None, timestamp=None,
                 deserializer=None, **kw):
        """Send body as the raw request of path, signed over body."""
        fn = self.d.channel().unary_unary(path, request_serializer=None,
                                          response_deserializer=deserializer)
        md = [("authorization", header(key_id or self.key_id, secret or self.secret, path,
                                       body, timestamp=timestamp, nonce=nonce))]
        return fn(body, metadata=md, timeout=TIMEOUT, **kw)

    def test_document_vectors_sent_to_the_daemon(self):
        kv = doc_vectors()
        responses = {KS + "ListKeys": pb.ListKeysResponse, KS + "Mac": pb.MacResponse}
        sent = 0
        for i in range(1, 10):
            p = "call%d_" % i
            if p + "path" not in kv:
                break
            path, body = kv[p + "path"], bytes.fromhex(kv[p + "body"])
            # The string the document gives is the one built here from its
            # inputs; the one sent differs only in the last three lines.
            doc_s = bytes.fromhex(kv[p + "string_to_sign"])
            self.assertEqual(doc_s, string_to_sign(path, body, int(kv[p + "timestamp"]),
                                                   kv[p + "nonce"], kv[p + "key_id"]))
            ts = int(time.time())
            mine = string_to_sign(path, body, ts, kv[p + "nonce"], self.key_id)
            self.assertEqual(mine.split(b"\n")[:3], doc_s.split(b"\n")[:3])
            # The document's bytes are the message it names, serialised.
            if path == KS + "Mac":
                with open(doc_path()) as f:
                    self.assertIn('MacRequest { key: "api-mac", data: "hello" }',
                                  " ".join(f.read().split()))
                self.assertEqual(body, pb.MacRequest(key="api-mac", data=b"hello")
                                 .SerializeToString())
            r = self.raw_call(path, body, nonce=kv[p + "nonce"], timestamp=ts,
                              deserializer=responses[path].FromString)
            if path == KS + "Mac":
                # The MAC of "hello" under api-mac, as a normal call makes it.
                self.assertEqual(r.mac, self.call("Mac", pb.MacRequest(key="api-mac",
                                                                       data=b"hello")).mac)
            sent += 1
        self.assertGreaterEqual(sent, 2)
        # The bytes the document used to give: well signed, and refused.
        with self.assertRaises(grpc.RpcError) as cm:
            self.raw_call(KS + "Mac", bytes.fromhex(self.OLD_CALL2_BODY))
        self.assertEqual((cm.exception.code(), cm.exception.details()),
                         (SC.INVALID_ARGUMENT, OLD_BODY_REFUSAL))

    def test_signature_covers_the_decompressed_bytes(self):
        req = pb.MacRequest(key="api-mac", data=b"compress me " * 4096)
        md = [("authorization", header(self.key_id, self.secret, KS + "Mac",
                                       req.SerializeToString()))]
        r = self.svc().Mac(req, metadata=md, timeout=TIMEOUT, compression=grpc.Compression.Gzip)
        self.assertEqual(r.mac, self.call("Mac", req).mac)

    def test_the_exact_bytes_sent_are_signed(self):
        # protobufjs-style: version 0 written explicitly (field 2, varint 0).
        explicit = bytes.fromhex("0a076170692d6d6163" "1000" "1a0568656c6c6f")
        canonical = pb.MacRequest(key="api-mac", data=b"hello").SerializeToString()
        self.assertEqual(pb.MacRequest.FromString(explicit).SerializeToString(), canonical)
        r = self.raw_call(KS + "Mac", explicit, deserializer=pb.MacResponse.FromString)
        self.assertEqual(len(r.mac), 32)
        # Signed over a re-serialisation (what another library would write),
        # sent as written: refused.
        fn = self.d.channel().unary_unary(KS + "Mac", request_serializer=None)
        md = [("authorization", header(self.key_id, self.secret, KS + "Mac", canonical))]
        with self.assertRaises(grpc.RpcError) as cm:
            fn(explicit, metadata=md, timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED)
        self.assertTrue(cm.exception.details().startswith(
            "bad signature: it matches no live secret of API key %s" % self.key_id))

    def test_window_edges_are_inside(self):
        def edges(t0):
            out = []
            # t0 + 1 first: at the turn, a coarse clock would call it 2 s ahead
            for ts in (t0 + 1, t0 - 60, t0 - 61, t0 + 2):
                try:
                    self.call("ListKeys", pb.ListKeysRequest(), timestamp=ts)
                    out.append("ok")
                except grpc.RpcError as e:
                    out.append((e.code(), e.details()))
            return out
        # Early in a second, and at its very turn: the daemon judges on the
        # clock a caller reads, not on the coarse one a tick behind it.
        for when in (at_second_start, at_second_turn):
            self.assertEqual(when(edges), [
                "ok", "ok",
                (SC.UNAUTHENTICATED, "expired: the timestamp is 61 s old and the window is "
                 "60 s; sign each call when it is sent"),
                (SC.UNAUTHENTICATED, "clock skew: the timestamp is 2 s ahead of the daemon's "
                 "clock (at most 1 s is accepted); check the caller's clock")], when.__name__)

    def test_hex_case(self):
        raw = pb.ListKeysRequest().SerializeToString()
        ts, nonce = int(time.time()), secrets.token_hex(16)
        sig = hmac.new(self.secret, string_to_sign(KS + "ListKeys", raw, ts, nonce,
                                                   self.key_id), hashlib.sha256).hexdigest()
        # Signature digits in mixed case: accepted.
        mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(sig))
        self.call("ListKeys", pb.ListKeysRequest(),
                  authz="%s keyId=%s, timestamp=%d, nonce=%s, signature=%s" %
                  (LABEL, self.key_id, ts, nonce, mixed))
        # The body hash in the signed string is lower-case: upper-case is
        # another string, so another signature.
        s = string_to_sign(KS + "ListKeys", raw, ts, nonce, self.key_id).split(b"\n")
        s[2] = s[2].upper()
        bad = hmac.new(self.secret, b"\n".join(s), hashlib.sha256).hexdigest()
        self.refused(SC.UNAUTHENTICATED, "^bad signature", method="ListKeys",
                     req=pb.ListKeysRequest(),
                     authz="%s keyId=%s, timestamp=%d, nonce=%s, signature=%s" %
                     (LABEL, self.key_id, ts, secrets.token_hex(16), bad))
        # The key id is lower-case hex only.
        self.refused(SC.UNAUTHENTICATED, "^malformed authorization: keyId is not an API key id",
                     key_id="ak_00000000000000000000BEEF")

    def test_header_grammar(self):
        good = header(self.key_id, self.secret, KS + "Mac", b"")
        begin = 'malformed authorization: must start with "COFFER-HMAC-SHA256 " (one space)'
        cases = {
            good.replace(LABEL + " ", LABEL + "  "): begin,
            good.replace(LABEL, LABEL.lower()): begin,
            # Named as what it is (it was "keyId is not an API key id": found
            # by a client written from the documents alone).
            good.replace(", timestamp", " , timestamp"):
                "malformed authorization: a space inside or before a comma (spaces are "
                "allowed after a comma only)",
            good.replace(", timestamp", ", , timestamp"):
                "malformed authorization: a field without '=' (the form is name=value, "
                "comma-separated)",
            good.replace("keyId=", "keyid="):
                'malformed authorization: unexpected or repeated field "keyid" (expected '
                'keyId, timestamp, nonce, signature once each)',
            good + ",": "malformed authorization: ends with a comma or a space",
            re.sub(r"timestamp=\d+", "timestamp=100000000000", good):
                "malformed authorization: timestamp must be Unix seconds in decimal",
            re.sub(r"timestamp=\d+", "timestamp=+1", good):
                "malformed authorization: timestamp must be Unix seconds in decimal",
        }
        for value, why in cases.items():
            with self.subTest(value=value[:60]):
                self.assertEqual(self.refused(SC.UNAUTHENTICATED, "^malformed", authz=value),
                                 why)
        # The method path is not normalised: another case is another (no) method.
        for path in ("/coffer.v1.keyservice/Mac", "/coffer.v1.KeyService//Mac"):
            with self.subTest(path=path):
                with self.assertRaises(grpc.RpcError) as cm:
                    self.raw_call(path, pb.MacRequest(key="api-mac").SerializeToString())
                self.assertEqual(cm.exception.code(), SC.UNIMPLEMENTED, cm.exception.details())
        # "0" is a timestamp (an old one).
        self.refused(SC.UNAUTHENTICATED, "^expired: the timestamp is", timestamp=0)

    # -- refusals --

    def test_missing_header(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.svc().Mac(pb.MacRequest(key="api-mac", data=b"x"), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED)
        self.assertIn("principal tester has an API key, so every call must carry",
                      cm.exception.details())

    def test_malformed_headers(self):
        good = header(self.key_id, self.secret, KS + "Mac", b"")
        cases = {
            "Bearer abc": "must start with",
            LABEL: "must start with",
            LABEL + " keyId=%s, timestamp=1" % self.key_id: "lacks nonce",
            good + ", extra=1": "unexpected or repeated field",
            good + ", nonce=aaaaaaaaaaaaaaaaaa": "unexpected or repeated field",
            good.replace("keyId=ak_", "keyId=AK_"): "keyId is not an API key id",
            good.replace("timestamp=", "timestamp=0"): "timestamp must be",
            good.replace("timestamp=", "timestamp=-"): "timestamp must be",
            good[:-2]: "signature must be 64 hex",
            good[:-1] + "g": "signature must be 64 hex",
            re.sub(r"nonce=[^,]*", "nonce=short", good): "nonce must be 16..64",
            re.sub(r"nonce=[^,]*", "nonce=" + "a" * 15 + "!", good): "nonce",
            good.replace(", ", " "): "",
            LABEL + " " + "x" * 600: "longer than 512",
        }
        for value, why in cases.items():
            with self.subTest(value=value[:60]):
                d = self.refused(SC.UNAUTHENTICATED, "malformed", authz=value)
                self.assertIn(why, d)
        self.refused(SC.UNAUTHENTICATED, "exactly one", authz=[good, good])

    def test_bad_signature(self):
        self.refused(SC.UNAUTHENTICATED, "bad signature: it matches no live secret of API key "
                     + self.key_id, secret=os.urandom(32))
        # The signature covers the body and the method.
        self.refused(SC.UNAUTHENTICATED, "bad signature",
                     body=pb.MacRequest(key="api-mac", data=b"other").SerializeToString())
        self.refused(SC.UNAUTHENTICATED, "bad signature", path=KS + "VerifyMac")

    def test_timestamp_window(self):
        self.refused(SC.UNAUTHENTICATED, r"expired: the timestamp is \d+ s old and the window "
                     r"is 60 s", timestamp=int(time.time()) - 120)
        self.refused(SC.UNAUTHENTICATED, r"clock skew: the timestamp is \d+ s ahead",
                     timestamp=int(time.time()) + 120)
        # Inside the window in the past, at most 1 s ahead: accepted.
        self.call("ListKeys", pb.ListKeysRequest(), timestamp=int(time.time()) - 50)
        self.call("ListKeys", pb.ListKeysRequest(), timestamp=int(time.time()) + 1)

    def test_unknown_key_and_other_principals_key(self):
        self.refused(SC.UNAUTHENTICATED, "unknown API key ak_00000000000000000000beef",
                     key_id="ak_00000000000000000000beef")
        self.adm.CreatePrincipal(pb.CreatePrincipalRequest(name="other", uids=[4242]),
                                 timeout=TIMEOUT)
        try:
            r = self.sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="other"),
                                       timeout=TIMEOUT)
            self.refused(SC.UNAUTHENTICATED, "is not a key of principal tester",
                         key_id=r.key.id, secret=r.secret)
        finally:
            self.adm.DeletePrincipal(pb.DeletePrincipalRequest(name="other"), timeout=TIMEOUT)
        # Deleting the principal revoked its key.
        keys = self.adm.ListApiKeys(pb.ListApiKeysRequest(principal="other"), timeout=TIMEOUT)
        self.assertEqual(len(keys.keys), 1)
        self.assertNotEqual(keys.keys[0].revoke_time, 0)
        self.assertEqual(len(keys.keys[0].secrets), 0)

    def test_replay_refused_and_concurrent_copies_succeed_once(self):
        req = pb.MacRequest(key="api-mac", data=b"pay 10")
        md = [("authorization", header(self.key_id, self.secret, KS + "Mac",
                                       req.SerializeToString()))]
        self.svc().Mac(req, metadata=md, timeout=TIMEOUT)
        with self.assertRaises(grpc.RpcError) as cm:
            self.svc().Mac(req, metadata=md, timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED)
        self.assertIn("replayed nonce", cm.exception.details())
        # 8 copies of one fresh call at once: exactly one runs.
        md = [("authorization", header(self.key_id, self.secret, KS + "Mac",
                                       req.SerializeToString()))]
        stubs_ = [self.d.service_stub() for _ in range(8)]

        def one(st):
            try:
                st.Mac(req, metadata=md, timeout=TIMEOUT)
                return "ok"
            except grpc.RpcError as e:
                return e.code()
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            res = list(ex.map(one, stubs_))
        self.assertEqual(res.count("ok"), 1, res)
        self.assertEqual(res.count(SC.UNAUTHENTICATED), 7, res)

    def test_grants_still_apply(self):
        self.adm.CreateKey(pb.CreateKeyRequest(name="ungranted-key", type=pb.HMAC_SHA256),
                           timeout=TIMEOUT)
        self.adm.RevokePrincipal(pb.RevokeRequest(name="tester", key_pattern="*",
                                                  operations=[pb.OP_MAC]), timeout=TIMEOUT)
        try:
            self.refused(SC.PERMISSION_DENIED, "mac",
                         req=pb.MacRequest(key="ungranted-key", data=b"x"))
        finally:
            self.d.ensure_principal()

    def test_secret_only_sealed_and_never_logged(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.adm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        self.assertIn("must be sealed", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            self.adm.RotateApiKeySecret(pb.RotateApiKeySecretRequest(id=self.key_id),
                                        timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        log = self.d.log()
        for form in (self.secret.hex(), self.secret.hex().upper()):
            self.assertNotIn(form, log)
        self.assertIn("unauthenticated: principal tester", log)

    def test_admin_argument_errors(self):
        for req, code, why in (
                (pb.CreateApiKeyRequest(principal="nobody-here"), SC.NOT_FOUND, "no principal"),
                (pb.CreateApiKeyRequest(principal="tester", secret=b"short"),
                 SC.INVALID_ARGUMENT, "32..64 bytes"),
                (pb.RotateApiKeySecretRequest(id="ak_nope"), SC.INVALID_ARGUMENT, "ak_"),
                (pb.RotateApiKeySecretRequest(id="ak_00000000000000000000beef"),
                 SC.NOT_FOUND, "no API key"),
                (pb.RotateApiKeySecretRequest(id=self.key_id, overlap_seconds=91 * 86400),
                 SC.INVALID_ARGUMENT, "90 days")):
            with self.subTest(req=str(req)):
                name = type(req).__name__[:-len("Request")]
                with self.assertRaises(SealedRpcError) as cm:
                    getattr(self.sadm, name)(req, timeout=TIMEOUT)
                self.assertEqual(cm.exception.code(), code, cm.exception.details())
                self.assertIn(why, cm.exception.details())


class Lifecycle(unittest.TestCase):
    """Rotation, revocation and restarts, each on a daemon of its own."""

    def setUp(self):
        self.d = CofferDaemon()
        self.d.start()
        self.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="api-mac", type=pb.HMAC_SHA256),
                                      timeout=TIMEOUT)

    def tearDown(self):
        self.d.cleanup()

    def sadm(self):
        return self.d.sealed_stub(kind="admin", service="AdminService")

    def mac(self, key_id, secret, nonce=None, timestamp=None):
        req = pb.MacRequest(key="api-mac", data=b"hello")
        md = [("authorization", header(key_id, secret, KS + "Mac", req.SerializeToString(),
                                       timestamp=timestamp, nonce=nonce))]
        return self.d.service_stub().Mac(req, metadata=md, timeout=TIMEOUT)

    def assert_refused(self, pattern, *args, **kw):
        with self.assertRaises(grpc.RpcError) as cm:
            self.mac(*args, **kw)
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED, cm.exception.details())
        self.assertRegex(cm.exception.details(), pattern)

    def test_rotation_with_overlap_then_deadline(self):
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        r = self.sadm().RotateApiKeySecret(pb.RotateApiKeySecretRequest(
            id=k.key.id, overlap_seconds=3), timeout=TIMEOUT)
        self.assertEqual(r.key.id, k.key.id)
        self.assertEqual(len(r.secret), 32)
        self.assertNotEqual(r.secret, k.secret)
        self.assertEqual([s.generation for s in r.key.secrets], [2, 1])
        self.assertEqual(r.key.secrets[0].expire_time, 0)
        deadline = r.key.secrets[1].expire_time
        self.assertTrue(0 < deadline - time.time() <= 3.5)
        # Both verify during the overlap.
        self.mac(k.key.id, r.secret)
        self.mac(k.key.id, k.secret)
        # After the deadline the old one is refused at once (before the sweep)...
        time.sleep(max(0.0, deadline - time.time()) + 1.1)
        self.assert_refused("bad signature.*rotated-out secret stops at its deadline",
                            k.key.id, k.secret)
        self.mac(k.key.id, r.secret)
        # ... and within the 5 s sweep it is destroyed in the token.
        self.d.wait_for_log("old secret(s) past the rotation deadline destroyed", timeout=10)
        keys = self.d.admin_stub().ListApiKeys(pb.ListApiKeysRequest(), timeout=TIMEOUT)
        self.assertEqual([s.generation for s in keys.keys[0].secrets], [2])
        # A restart finds nothing unclaimed in the token and the old secret stays refused.
        self.d.restart()
        self.assertNotIn("apikey", self.d.log(all_starts=False).split("ready:")[0])
        self.assert_refused("bad signature", k.key.id, k.secret)
        self.mac(k.key.id, r.secret)

    def test_rotation_deadline_second_is_excluded(self):
        """An old secret verifies in the second before its deadline, not in
        the deadline's second (expire_time is the first refused second)."""
        def sleep_to(t):
            time.sleep(max(0.0, t - time.time()))
        for _ in range(3):
            k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"),
                                         timeout=TIMEOUT)
            r = self.sadm().RotateApiKeySecret(pb.RotateApiKeySecretRequest(
                id=k.key.id, overlap_seconds=2), timeout=TIMEOUT)
            deadline = r.key.secrets[1].expire_time
            sleep_to(deadline - 1 + 0.02)
            try:
                self.mac(k.key.id, k.secret)
                ok = True
            except grpc.RpcError:
                ok = False
            if int(time.time()) != deadline - 1:
                continue        # too slow to tell: try again
            self.assertTrue(ok, "refused in the second before the deadline")
            sleep_to(deadline + 0.02)
            self.assert_refused("^bad signature: it matches no live secret of API key %s "
                                r"\(a rotated-out secret stops at its deadline\)" % k.key.id,
                                k.key.id, k.secret)
            if int(time.time()) == deadline:
                return
        self.fail("could not call within the second before and of the deadline")

    def test_rotation_without_overlap_and_imported_secret(self):
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        mine = os.urandom(48)
        r = self.sadm().RotateApiKeySecret(pb.RotateApiKeySecretRequest(
            id=k.key.id, secret=mine), timeout=TIMEOUT)
        self.assertEqual(r.secret, b"")    # imported: nothing to show
        self.assertEqual(len(r.key.secrets), 1)
        self.assert_refused("bad signature", k.key.id, k.secret)
        self.mac(k.key.id, mine)

    def test_four_live_secrets_at_most(self):
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        secrets_ = [k.secret]
        for _ in range(3):
            secrets_.append(self.sadm().RotateApiKeySecret(pb.RotateApiKeySecretRequest(
                id=k.key.id, overlap_seconds=600), timeout=TIMEOUT).secret)
        for s in secrets_:
            self.mac(k.key.id, s)
        with self.assertRaises(SealedRpcError) as cm:
            self.sadm().RotateApiKeySecret(pb.RotateApiKeySecretRequest(
                id=k.key.id, overlap_seconds=600), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        self.assertIn("already has 4 secrets", cm.exception.details())

    def test_revoked_key(self):
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        self.mac(k.key.id, k.secret)
        rv = self.d.admin_stub().RevokeApiKey(pb.RevokeApiKeyRequest(id=k.key.id),
                                              timeout=TIMEOUT)
        self.assertNotEqual(rv.revoke_time, 0)
        self.assertEqual(len(rv.secrets), 0)
        # Presented credentials are checked; tester still has to sign until
        # an operator allows uid-only calls again.
        self.assert_refused("API key %s was revoked" % k.key.id, k.key.id, k.secret)
        with self.assertRaises(grpc.RpcError) as cm:
            self.d.service_stub().ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        self.assertIn("principal tester requires signed calls (it had API keys; the last was "
                      "revoked)", cm.exception.details())
        self.d.admin_stub().SetPrincipalAuth(pb.SetPrincipalAuthRequest(name="tester"),
                                             timeout=TIMEOUT)
        self.d.service_stub().ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        with self.assertRaises(SealedRpcError) as cm:
            self.sadm().RotateApiKeySecret(pb.RotateApiKeySecretRequest(id=k.key.id),
                                           timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        self.d.restart()
        self.assert_refused("was revoked", k.key.id, k.secret)

    def test_replay_refused_after_restart(self):
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        ts, nonce = int(time.time()), secrets.token_hex(16)
        self.mac(k.key.id, k.secret, nonce=nonce, timestamp=ts)
        self.d.restart()
        self.assert_refused("replayed nonce", k.key.id, k.secret, nonce=nonce, timestamp=ts)
        # The key and its secret survived the restart.
        self.mac(k.key.id, k.secret)

    def test_replay_refused_after_the_window_is_raised(self):
        """A nonce is kept until its timestamp has left the window. Raised
        (SIGHUP, or a restart with another configuration), every nonce
        recorded is kept longer by as much, and timestamps whose nonces may
        already be gone (older than the old window then) stay refused.
        Before, a call signed under a 3 s window was accepted again once the
        window became 600 s (found by a review)."""
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        self.d.config["requests"] = {"window": "3"}
        self.d.restart()

        def call():
            ts, nonce = int(time.time()), secrets.token_hex(16)
            self.mac(k.key.id, k.secret, nonce=nonce, timestamp=ts)
            return ts, nonce

        def replay(sent, pattern):
            self.assert_refused(pattern, k.key.id, k.secret, nonce=sent[1], timestamp=sent[0])

        a = call()
        time.sleep(max(0, a[0] + 5 - time.time()))     # past a + 3 + 1: forgotten
        b = call()
        # SIGHUP raises it while b is still recorded.
        self.d.config["requests"] = {"window": "600"}
        self.d.write_config()
        before = self.d.log().count("SIGHUP: reloaded")
        self.d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.d.log().count("SIGHUP: reloaded") <= before:
            self.assertLess(time.monotonic(), deadline, self.d.log())
            time.sleep(0.05)
        time.sleep(max(0, b[0] + 5 - time.time()))     # past b + 3 + 1
        replay(b, "replayed nonce")
        # Its nonce may be gone already (SQLite: dropped; PostgreSQL keeps
        # rows 300 s longer for clock skew): refused either way.
        gone = (r"^(expired: the timestamp is \d+ s old, from before \[requests\] window was "
                r"raised \(600 s now\), and its nonce may be forgotten; sign each call when "
                r"it is sent$|replayed nonce)")
        replay(a, gone)
        # A restart at 3 s, a call, a restart at 600 s: the same.
        self.d.config["requests"] = {"window": "3"}
        self.d.restart()
        c = call()
        self.d.config["requests"] = {"window": "600"}
        self.d.restart()
        time.sleep(max(0, c[0] + 5 - time.time()))
        replay(c, "replayed nonce")
        for old in (b, a):       # older than the old window when it was raised
            replay(old, gone)
        self.mac(k.key.id, k.secret)

    def test_require_api_key(self):
        self.d.stop()
        self.d.config.setdefault("requests", {})["require_api_key"] = "true"
        self.d.start()
        with self.assertRaises(grpc.RpcError) as cm:
            self.d.service_stub().ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED)
        self.assertIn("requires every caller to sign", cm.exception.details())
        self.assertIn("principal add-key tester", cm.exception.details())
        k = self.sadm().CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        self.mac(k.key.id, k.secret)


class Cofferctl(unittest.TestCase):
    """The credentials file and --api-key, through cofferctl (libcoffer)."""

    def test_add_key_file_and_signed_commands(self):
        ctl = cofferctl_path()
        with CofferDaemon() as d:
            ident = os.path.join(d.dir, "identity.pem")
            env = dict(d.env, COFFER_SOCKET=d.service_socket, COFFER_ADMIN_SOCKET=d.admin_socket)

            def run(*args, ok=True):
                r = subprocess.run([ctl, "--identity", ident] + list(args), env=env,
                                   capture_output=True, text=True, timeout=60)
                if ok:
                    self.assertEqual(r.returncode, 0, r.stderr)
                return r
            subprocess.run([ctl, "identity", "--out", ident], env=env, check=True,
                           capture_output=True, timeout=60)
            run("key", "create", "api-mac", "--type", "hmac-sha256")
            cred = os.path.join(d.dir, "tester.key")
            out = run("principal", "add-key", "tester", "--out", cred).stdout
            self.assertIn("credentials written to", out)
            self.assertEqual(os.stat(cred).st_mode & 0o777, 0o600)
            with open(cred) as f:
                lines = f.read().splitlines()
            self.assertEqual(lines[0], "COFFER-API-KEY 1")
            key_id, secret = lines[1].split()[1], lines[2].split()[1]
            self.assertNotIn(secret, out)
            # Unsigned: refused with the reason and exit status 3.
            r = run("key", "list", ok=False)
            self.assertEqual(r.returncode, 3, r.stderr)
            self.assertIn("every call must carry", r.stderr)
            # Signed (also a sealed call): accepted.
            data = os.path.join(d.dir, "data")
            with open(data, "wb") as f:
                f.write(b"hello")
            run("--api-key", cred, "key", "list")
            self.assertIn('"mac":', run("--api-key", cred, "--json", "mac", "api-mac", "--in",
                                        data).stdout)
            # Sealed calls are signed too (OpenSession and each envelope).
            run("--api-key", cred, "key", "create", "wrap-key", "--type", "aes-256")
            wrapped = os.path.join(d.dir, "wrapped")
            run("--api-key", cred, "wrap", "wrap-key", "--in", data, "--out", wrapped)
            self.assertEqual(run("--api-key", cred, "unwrap", "wrap-key", "--in", wrapped,
                                 "--out", "-").stdout, "hello")
            r = run("unwrap", "wrap-key", "--in", wrapped, "--out", "-", ok=False)
            self.assertEqual(r.returncode, 3, r.stderr)
            # The file is never replaced, and a loose mode is refused.
            r = run("principal", "add-key", "tester", "--out", cred, ok=False)
            self.assertIn("never replaced", r.stderr)
            os.chmod(cred, 0o644)
            r = run("--api-key", cred, "key", "list", ok=False)
            self.assertIn("chmod 600", r.stderr)
            os.chmod(cred, 0o600)
            # rotate-secret: the old file keeps working for the overlap.
            cred2 = os.path.join(d.dir, "tester2.key")
            run("principal", "rotate-secret", key_id, "--overlap", "1h", "--out", cred2)
            run("--api-key", cred, "key", "list")
            run("--api-key", cred2, "key", "list")
            shown = run("principal", "show", "tester").stdout
            self.assertIn(key_id, shown)
            self.assertIn("secret 2 (current)", shown)
            self.assertIn("secret 1 (until", shown)
            keys = run("--json", "principal", "keys").stdout
            self.assertIn('"generation":1', keys)
            run("principal", "revoke-key", key_id)
            r = run("--api-key", cred2, "key", "list", ok=False)
            self.assertIn("was revoked", r.stderr)
            self.assertNotIn(secret, d.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
