#!/usr/bin/python3
"""HMAC-signed HTTP requests against cofferd, with an independent
implementation of proto/request-signing.md (Python hmac, hashlib, urllib):

* the document's vectors are reproduced from their inputs;
* on random requests, signatures made here are VALID for the daemon and the
  daemon's SignHttpRequest signatures equal ours;
* every verdict: bad signature, expired, clock skew, replayed nonce (also
  after a daemon restart), two concurrent copies accepted exactly once;
  malformed parts and a missing grant are errors;
* what the document states precisely: the path and the canonical query are
  signed as given (no normalisation by cofferd), the window's edge seconds
  are inside, signatures in either hex case, SignHttpRequest's header
  follows the grammar.
"""
import concurrent.futures
import hashlib
import hmac
import os
import random
import string
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon  # noqa: E402
from rpc_common import SC, TIMEOUT, pb  # noqa: E402

UNRESERVED = set(string.ascii_letters + string.digits + "-._~")


def doc_path():
    src = os.environ.get("COFFER_SOURCE_DIR", os.path.join(HERE, "..", ".."))
    return os.path.join(src, "proto", "request-signing.md")


def pct_decode(s):
    out, i = bytearray(), 0
    b = s.encode()
    while i < len(b):
        if b[i:i + 1] == b"%":
            h = b[i + 1:i + 3].decode("ascii", "replace")
            if len(h) != 2 or any(c not in string.hexdigits for c in h):
                raise ValueError("bad escape")
            out.append(int(h, 16))
            i += 3
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def pct_encode(b):
    return "".join(chr(c) if chr(c) in UNRESERVED else "%%%02X" % c for c in b)


def canonical_query(raw):
    pairs = []
    for piece in raw.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append((pct_encode(pct_decode(name)), pct_encode(pct_decode(value))))
    pairs.sort(key=lambda p: (p[0].encode(), p[1].encode()))
    return "&".join("%s=%s" % p for p in pairs)


def string_to_sign(method, path, cquery, body_sha256, timestamp, nonce, key):
    return "\n".join(["COFFER-HMAC-SHA256-HTTP", method, path, cquery, body_sha256.hex(),
                      str(timestamp), nonce, key]).encode()


def sign(secret, *parts):
    return hmac.new(secret, string_to_sign(*parts), hashlib.sha256).hexdigest()


def vectors():
    with open(doc_path()) as f:
        text = f.read()
    block = text.split("<!-- vectors:begin -->")[1].split("<!-- vectors:end -->")[0]
    v = {}
    for line in block.splitlines():
        if ": " in line or line.endswith(":"):
            k, _, val = line.partition(": ")
            v[k.rstrip(":")] = val
    return v


class Vectors(unittest.TestCase):
    def test_document_vectors(self):
        v = vectors()
        secret = bytes.fromhex(v["secret"])
        n = 0
        while "request%d_method" % (n + 1) in v:
            n += 1
            f = lambda k: v["request%d_%s" % (n, k)]  # noqa: E731
            cq = canonical_query(f("raw_query"))
            self.assertEqual(cq, f("canonical_query"), "request%d canonical query" % n)
            body = hashlib.sha256(f("body").encode()).digest()
            self.assertEqual(body.hex(), f("body_sha256"))
            s = string_to_sign(f("method"), f("path"), cq, body, int(f("timestamp")),
                               f("nonce"), f("key_id"))
            self.assertEqual(s.hex(), f("string_to_sign"), "request%d string" % n)
            self.assertEqual(hmac.new(secret, s, hashlib.sha256).hexdigest(),
                             f("signature"), "request%d signature" % n)
        self.assertGreaterEqual(n, 4)


def random_request(rng):
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
    path = "/" + "/".join(rng.choice(["v1", "orders", "items", "%C3%A9", "a.b", "x_y", "~z"])
                          for _ in range(rng.randint(1, 4)))
    q = "&".join("%s=%s" % (rng.choice(["a", "b", "A", "z%20z", "%7E", "k+1"]),
                            rng.choice(["", "1", "two words".replace(" ", "%20"), "%2F", "+"]))
                 for _ in range(rng.randint(0, 5)))
    body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    nonce = "".join(rng.choice(string.ascii_letters + string.digits + "-_")
                    for _ in range(rng.randint(16, 64)))
    return method, path, q, hashlib.sha256(body).digest(), nonce


class AgainstDaemon(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"requests": {"window": "300"}})
        cls.d.start()
        cls.secret = os.urandom(32)
        cls.d.sealed_stub("admin").ImportKey(pb.ImportKeyRequest(
            name="orders-api", type=pb.HMAC_SHA256, material=cls.secret), timeout=TIMEOUT)
        cls.svc = cls.d.service_stub()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def parts(self, method, path, cq, body, ts, nonce, key="orders-api"):
        return pb.HttpRequestParts(key=key, method=method, path=path, canonical_query=cq,
                                   body_sha256=body, timestamp=ts, nonce=nonce)

    def verify(self, parts, sig):
        return self.svc.VerifyRequestSignature(pb.VerifyRequestSignatureRequest(
            request=parts, signature=sig), timeout=TIMEOUT)

    def test_random_requests_agree_both_ways(self):
        rng = random.Random(4711)
        for _ in range(40):
            method, path, raw, body, nonce = random_request(rng)
            cq = canonical_query(raw)
            ts = int(time.time())
            mine = sign(self.secret, method, path, cq, body, ts, nonce, "orders-api")
            r = self.verify(self.parts(method, path, cq, body, ts, nonce), mine)
            self.assertEqual((r.verdict, r.valid), (pb.VALID, True), (method, path, cq, r.reason))
            # The daemon signs what we would sign (another nonce: that one is used).
            other = nonce[:63] + "x"
            s = self.svc.SignHttpRequest(pb.SignHttpRequestRequest(request=self.parts(
                method, path, cq, body, ts, other)), timeout=TIMEOUT)
            self.assertEqual(s.signature, sign(self.secret, method, path, cq, body, ts,
                                               other, "orders-api"))
            self.assertIn("signature=" + s.signature, s.authorization)

    def test_sign_request_fills_time_and_nonce(self):
        body = hashlib.sha256(b"").digest()
        s = self.svc.SignHttpRequest(pb.SignHttpRequestRequest(request=self.parts(
            "GET", "/x", "", body, 0, "")), timeout=TIMEOUT)
        self.assertLessEqual(abs(s.timestamp - time.time()), 5)
        self.assertGreaterEqual(len(s.nonce), 16)
        r = self.verify(self.parts("GET", "/x", "", body, s.timestamp, s.nonce), s.signature)
        self.assertEqual(r.verdict, pb.VALID)

    def test_verdicts(self):
        body = hashlib.sha256(b"{}").digest()
        now = int(time.time())

        def check(ts, nonce, sig=None, want=pb.VALID, reason=None):
            sig = sig or sign(self.secret, "POST", "/v1/pay", "a=1", body, ts, nonce,
                              "orders-api")
            r = self.verify(self.parts("POST", "/v1/pay", "a=1", body, ts, nonce), sig)
            self.assertEqual(r.verdict, want, r.reason)
            self.assertEqual(r.valid, want == pb.VALID)
            if reason:
                self.assertIn(reason, r.reason)
            return r

        check(now, "verdict-nonce-0001")
        check(now, "verdict-nonce-0001", want=pb.REPLAYED_NONCE, reason="replayed")
        check(now, "verdict-nonce-0002", sig="0" * 64, want=pb.BAD_SIGNATURE)
        check(now, "verdict-nonce-0003", sig="zz" * 32, want=pb.BAD_SIGNATURE,
              reason="64 hex")
        other = hmac.new(os.urandom(32), b"x", hashlib.sha256).hexdigest()
        check(now, "verdict-nonce-0004", sig=other, want=pb.BAD_SIGNATURE)
        # 5 s past the 300 s window, not 1: a loaded machine can put a second
        # between reading the clock here and there (the edges themselves:
        # test_window_edges_are_inside, test_window_judged_on_the_precise_clock).
        check(now - 305, "verdict-nonce-0005", want=pb.EXPIRED, reason="old")
        check(now + 305, "verdict-nonce-0006", want=pb.CLOCK_SKEW, reason="clock")
        # A forged request does not use up its nonce.
        check(now, "verdict-nonce-0007", sig="1" * 64, want=pb.BAD_SIGNATURE)
        check(now, "verdict-nonce-0007")
        # The same nonce under another key is another nonce.
        self.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="other-api",
                                                          type=pb.HMAC_SHA256), timeout=TIMEOUT)
        s = self.svc.SignHttpRequest(pb.SignHttpRequestRequest(request=self.parts(
            "POST", "/v1/pay", "a=1", body, now, "verdict-nonce-0001", key="other-api")),
            timeout=TIMEOUT)
        r = self.verify(self.parts("POST", "/v1/pay", "a=1", body, now, "verdict-nonce-0001",
                                   key="other-api"), s.signature)
        self.assertEqual(r.verdict, pb.VALID, r.reason)

    def test_path_and_query_signed_as_given(self):
        body = hashlib.sha256(b"").digest()
        ts = int(time.time())
        n = iter(range(100))

        def verdict(signed_path, sent_path, signed_q="a=1", sent_q="a=1"):
            nonce = "as-given-nonce-%04d" % next(n)
            sig = sign(self.secret, "GET", signed_path, signed_q, body, ts, nonce, "orders-api")
            return self.verify(self.parts("GET", sent_path, sent_q, body, ts, nonce),
                               sig).verdict
        for path in ("/v1/./orders", "/v1//orders", "/v1/x/../orders", "/v1/%7Eorders",
                     "/v1/%7eorders", "/V1/orders"):
            with self.subTest(path=path):
                self.assertEqual(verdict(path, path), pb.VALID)
                self.assertEqual(verdict("/v1/orders", path), pb.BAD_SIGNATURE)
        # An escape is not decoded, and its case is part of the path too.
        self.assertEqual(verdict("/v1/%7Eorders", "/v1/%7eorders"), pb.BAD_SIGNATURE)
        self.assertEqual(verdict("/v1/~orders", "/v1/%7Eorders"), pb.BAD_SIGNATURE)
        # The canonical query is taken as given: cofferd does not sort it.
        self.assertEqual(verdict("/q", "/q", "b=1&a=2", "b=1&a=2"), pb.VALID)
        self.assertEqual(verdict("/q", "/q", "a=2&b=1", "b=1&a=2"), pb.BAD_SIGNATURE)

    def test_window_edges_are_inside(self):
        body = hashlib.sha256(b"edge").digest()
        n = iter(range(1000))

        def edges(t0):
            out = []
            for ts in (t0 - 300, t0 + 300, t0 - 301, t0 + 301):
                nonce = "window-edge-%06d" % next(n)
                r = self.verify(self.parts("PUT", "/e", "", body, ts, nonce),
                                sign(self.secret, "PUT", "/e", "", body, ts, nonce,
                                     "orders-api"))
                out.append((r.verdict, r.reason))
            return out
        for _ in range(5):
            time.sleep(1.02 - time.time() % 1 if time.time() % 1 > 0.3 else 0)
            t0 = int(time.time())
            got = edges(t0)
            if int(time.time()) == t0:
                break
        self.assertEqual(got, [
            (pb.VALID, "valid"), (pb.VALID, "valid"),
            (pb.EXPIRED, "timestamp is 301 s old; the window is 300 s: sign the request again"),
            (pb.CLOCK_SKEW, "timestamp is 301 s ahead of the daemon's clock; the window is "
             "300 s: check the client's clock")])

    def test_window_judged_on_the_precise_clock(self):
        """Right after a second's turn the kernel's coarse clock (time(2))
        can still show the second before; the daemon must judge against
        the clock a caller reads (Python's time.time()): a request 301 s
        old is refused and one 300 s ahead accepted, at the turn too."""
        body = hashlib.sha256(b"turn").digest()
        for i in range(5):
            t = time.time()
            time.sleep(max(0.0, 0.995 - t % 1))
            start = int(time.time())
            while int(time.time()) == start:
                pass
            ts = int(time.time())
            got = []
            for k, (when, want) in enumerate(((ts - 301, pb.EXPIRED), (ts + 300, pb.VALID))):
                nonce = "second-turn-nonce-%d-%d" % (i, k)
                r = self.verify(self.parts("PUT", "/t", "", body, when, nonce),
                                sign(self.secret, "PUT", "/t", "", body, when, nonce,
                                     "orders-api"))
                got.append((r.verdict, r.reason))
            self.assertEqual(got, [
                (pb.EXPIRED, "timestamp is 301 s old; the window is 300 s: sign the request "
                 "again"), (pb.VALID, "valid")], "at the turn of second %d" % ts)

    def test_signature_hex_either_case(self):
        body = hashlib.sha256(b"case").digest()
        ts = int(time.time())
        for i, f in enumerate((str.upper, lambda h: h[:32] + h[32:].upper())):
            nonce = "hex-case-nonce-%04d" % i
            sig = f(sign(self.secret, "GET", "/h", "", body, ts, nonce, "orders-api"))
            r = self.verify(self.parts("GET", "/h", "", body, ts, nonce), sig)
            self.assertEqual(r.verdict, pb.VALID, r.reason)

    def test_sign_request_header_grammar(self):
        body = hashlib.sha256(b"").digest()
        s = self.svc.SignHttpRequest(pb.SignHttpRequestRequest(request=self.parts(
            "GET", "/g", "", body, 0, "")), timeout=TIMEOUT)
        self.assertRegex(s.authorization,
                         r"\ACOFFER-HMAC-SHA256-HTTP keyId=orders-api, version=[1-9][0-9]*, "
                         r"timestamp=(0|[1-9][0-9]{0,10}), nonce=[A-Za-z0-9_-]{16,64}, "
                         r"signature=[0-9a-f]{64}\Z")
        self.assertIn("timestamp=%d, nonce=%s, signature=%s" % (s.timestamp, s.nonce,
                                                                  s.signature), s.authorization)

    def test_concurrent_copies_accepted_once(self):
        body = hashlib.sha256(b"c").digest()
        ts = int(time.time())
        for round_ in range(5):
            nonce = "concurrent-%06d-xx" % round_
            sig = sign(self.secret, "POST", "/c", "", body, ts, nonce, "orders-api")
            parts = self.parts("POST", "/c", "", body, ts, nonce)
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                got = list(ex.map(lambda _: self.verify(parts, sig).verdict, range(8)))
            self.assertEqual(got.count(pb.VALID), 1, got)
            self.assertEqual(got.count(pb.REPLAYED_NONCE), 7, got)

    def test_errors(self):
        body = hashlib.sha256(b"").digest()
        bad = [
            self.parts("get", "/x", "", body, 1, "n" * 16),
            self.parts("GET", "x", "", body, 1, "n" * 16),
            self.parts("GET", "/x y", "", body, 1, "n" * 16),
            self.parts("GET", "/x", "", body[:31], 1, "n" * 16),
            self.parts("GET", "/x", "", body, 1, "short"),
            self.parts("GET", "/x", "", body, 1, "n" * 65),
            self.parts("GET", "/x", "", body, 1, "bad nonce here!!"),
        ]
        for p in bad:
            with self.assertRaises(grpc.RpcError) as cm:
                self.verify(p, "0" * 64)
            self.assertEqual(cm.exception.code(), SC.INVALID_ARGUMENT, str(p))
        with self.assertRaises(grpc.RpcError) as cm:
            self.verify(self.parts("GET", "/x", "", body, 1, "n" * 16, key="no-such-key"),
                        "0" * 64)
        self.assertEqual(cm.exception.code(), SC.NOT_FOUND)
        # Not an HMAC-SHA256 key.
        self.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="mac384", type=pb.HMAC_SHA384),
                                      timeout=TIMEOUT)
        with self.assertRaises(grpc.RpcError) as cm:
            self.verify(self.parts("GET", "/x", "", body, 1, "n" * 16, key="mac384"), "0" * 64)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)


class FullRecord(unittest.TestCase):
    def test_full_nonce_record_refuses_rather_than_forgets(self):
        # One key may fill the whole record only when its share is the whole.
        d = CofferDaemon(config={"requests": {"max_nonces": "1000",
                                              "max_nonces_per_key": "1000"}})
        self.addCleanup(d.cleanup)
        d.start()
        secret = os.urandom(32)
        d.sealed_stub("admin").ImportKey(pb.ImportKeyRequest(
            name="full-api", type=pb.HMAC_SHA256, material=secret), timeout=TIMEOUT)
        svc = d.service_stub()
        body = hashlib.sha256(b"").digest()
        ts = int(time.time())

        def verify(i):
            nonce = "full-record-%06d" % i
            return svc.VerifyRequestSignature(pb.VerifyRequestSignatureRequest(
                request=pb.HttpRequestParts(key="full-api", method="GET", path="/f",
                                            canonical_query="", body_sha256=body,
                                            timestamp=ts, nonce=nonce),
                signature=sign(secret, "GET", "/f", "", body, ts, nonce, "full-api")),
                timeout=TIMEOUT)

        for i in range(1000):
            self.assertEqual(verify(i).verdict, pb.VALID, i)
        with self.assertRaises(grpc.RpcError) as cm:
            verify(1000)
        self.assertEqual(cm.exception.code(), SC.RESOURCE_EXHAUSTED)
        self.assertIn("nonce record", cm.exception.details())
        # Full does not mean forgetful: a recorded nonce is still a replay.
        self.assertEqual(verify(0).verdict, pb.REPLAYED_NONCE)
        d.stop()


class AcrossRestart(unittest.TestCase):
    def test_replay_after_restart_and_grants(self):
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        secret = os.urandom(32)
        d.sealed_stub("admin").ImportKey(pb.ImportKeyRequest(
            name="r-api", type=pb.HMAC_SHA256, material=secret), timeout=TIMEOUT)
        body = hashlib.sha256(b"restart").digest()
        ts = int(time.time())
        parts = pb.HttpRequestParts(key="r-api", method="POST", path="/r", canonical_query="",
                                    body_sha256=body, timestamp=ts, nonce="restart-nonce-0001")
        req = pb.VerifyRequestSignatureRequest(
            request=parts, signature=sign(secret, "POST", "/r", "", body, ts,
                                          "restart-nonce-0001", "r-api"))
        self.assertEqual(d.service_stub().VerifyRequestSignature(req, timeout=TIMEOUT).verdict,
                         pb.VALID)
        d.restart()
        r = d.service_stub().VerifyRequestSignature(req, timeout=TIMEOUT)
        self.assertEqual(r.verdict, pb.REPLAYED_NONCE, r.reason)
        # Without the verify-mac grant: PERMISSION_DENIED.
        adm = d.admin_stub()
        adm.RevokePrincipal(pb.RevokeRequest(name=CofferDaemon.PRINCIPAL, key_pattern="*",
                                             operations=[pb.OP_VERIFY_MAC]), timeout=TIMEOUT)
        with self.assertRaises(grpc.RpcError) as cm:
            d.service_stub().VerifyRequestSignature(req, timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.PERMISSION_DENIED)
        self.assertIn("verify-mac", cm.exception.details())
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
