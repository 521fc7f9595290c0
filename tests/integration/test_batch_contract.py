#!/usr/bin/python3
"""The batch RPCs (SignBatch, VerifyBatch, MacBatch, VerifyMacBatch) tested
from the outside: written from proto/coffer/v1/coffer.proto ("Batches"),
proto/README.md and README.md alone, with raw grpcio stubs (not the coffer
package), against a real cofferd on a throw-away SoftHSM2 token. It tries to
break the documented contract:

  counts          0 items and 1,025 refuse the call (the text names the
                  count and the limit); 1 and 1,024 items are served, every
                  result checked
  own status      one bad item (wrong-length digest, both or neither of
                  message and digest, a digest for Ed25519, an oversize
                  message or MAC input, a signature above 512 bytes) fails
                  alone, with the code and text the single method gives for
                  the same input; the others succeed
  independence    every signature is checked with python3-cryptography
                  against GetPublicKey (ECDSA DER and raw, P-384, Ed25519,
                  RSA-PSS, PKCS#1 v1.5); MACs equal Python's hmac over the
                  imported material and the unary Mac's
  verify          well-formed but wrong items (a flipped bit, another
                  item's signature, a truncated MAC) answer valid=false
                  with status OK, as the unary Verify/VerifyMac do
  request level   the wrong purpose, no such key, a bad name, no such
                  version, a disabled, destroy-scheduled or destroyed
                  version, a missing version for Verify*, an unknown hash or
                  scheme: the call fails with the single method's code and text
  size            items at their maximum (1 MiB) served; a request above
                  1 MiB + 64 KiB refused RESOURCE_EXHAUSTED naming the limit;
                  1,024 items filling the message limit served
  rate limits     a per-operation bucket of 5: 8 items serve 5, items 6..8
                  answer RESOURCE_EXHAUSTED "exceeded at item N of 8 (5
                  granted); retry after N ms"; an empty bucket refuses the
                  call (retry-after-ms trailer); a request-level fault gives
                  its tokens back; the audit record (cofferctl audit tail)
                  counts "items" and "failed"
  deadlines       200 ms on 1,024 RSA signatures: the caller gets
                  DEADLINE_EXCEEDED, the audit record counts the unrun
                  items as failed, the daemon answers at once after
  concurrency     16 threads of mixed good/bad batches for 10 s: every
                  answer consistent with its own request (no cross-talk)

After every test the daemon is alive, healthy, and its log has no sanitizer
report or crash.
"""

import hashlib
import hmac
import json
import os
import random
import re
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: E402
    Prehashed, encode_dss_signature)

from daemon_fixture import Ctl, health_check  # noqa: E402
from rpc_common import SC, TIMEOUT, ModuleDaemon, pb  # noqa: E402

MIB = 1024 * 1024
MAX_MESSAGE = MIB + 64 * 1024   # proto: one request message at most 1 MiB + 64 KiB
MAX_ITEMS = 1024
OK = 0
CODE = {c.value[0]: c for c in SC}

SHARED = ModuleDaemon(config={"keys": {"min_destroy_grace": "2"}})
setUpModule, tearDownModule = SHARED.set_up, SHARED.tear_down

HMAC_MATERIAL = bytes(range(7, 39))    # 32 bytes, imported: MACs checkable here
CRASH_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
               "runtime error:", "Segmentation fault", "SIGSEGV", "SIGABRT", "stack-buffer",
               "heap-buffer", "double free", "Assertion", "INTERNAL")


def hash_of(h):
    return {pb.SHA384: hashes.SHA384(), pb.SHA512: hashes.SHA512()}.get(h, hashes.SHA256())


def verify_sig(pub, sig, scheme, h, message=None, digest=None, raw=False):
    """True if sig is a valid signature by pub; python3-cryptography only."""
    algo = hash_of(h)
    data, alg = (digest, Prehashed(algo)) if digest is not None else (message, algo)
    try:
        if isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, message)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            if raw:
                n = (pub.curve.key_size + 7) // 8
                if len(sig) != 2 * n:
                    return False
                sig = encode_dss_signature(int.from_bytes(sig[:n], "big"),
                                           int.from_bytes(sig[n:], "big"))
            pub.verify(sig, data, ec.ECDSA(alg))
        elif isinstance(pub, rsa.RSAPublicKey):
            pad = (padding.PKCS1v15() if scheme == pb.RSA_PKCS1 else
                   padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size))
            pub.verify(sig, data, pad, alg)
        else:
            raise AssertionError("unexpected key %r" % pub)
        return True
    except InvalidSignature:
        return False


def item_status(result):
    return (result.status.code, result.status.message)


class Contract(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        d = cls.d = SHARED.d
        cls.svc = d.service_stub()
        cls.adm = d.admin_stub()
        for name, typ in (("bc-ec", pb.EC_P256), ("bc-p384", pb.EC_P384), ("bc-ed", pb.ED25519),
                          ("bc-rsa", pb.RSA_2048), ("bc-life", pb.EC_P256)):
            cls.adm.CreateKey(pb.CreateKeyRequest(name=name, type=typ), timeout=120)
        d.sealed_stub("admin").ImportKey(pb.ImportKeyRequest(
            name="bc-hmac", type=pb.HMAC_SHA256, material=HMAC_MATERIAL), timeout=60)
        cls.pub = {}
        for name in ("bc-ec", "bc-p384", "bc-ed", "bc-rsa"):
            der = cls.svc.GetPublicKey(pb.GetPublicKeyRequest(key=name), timeout=TIMEOUT).der
            cls.pub[name] = serialization.load_der_public_key(der)

    def tearDown(self):
        # After every attack: alive, healthy, no crash or sanitizer report.
        self.assertTrue(self.d.running, "cofferd died:\n" + self.d.log()[-4000:])
        self.assertEqual(health_check(self.d.service_socket, timeout=10), 1)
        log = self.d.log()
        for mark in CRASH_MARKS:
            self.assertNotIn(mark, log, "cofferd log:\n" + log[-4000:])

    # -- helpers --

    def call(self, method, request, timeout=TIMEOUT, metadata=None):
        return getattr(self.svc, method)(request, timeout=timeout, metadata=metadata)

    def error(self, method, request, timeout=TIMEOUT, metadata=None):
        """The grpc.RpcError of a call that must fail."""
        try:
            r = self.call(method, request, timeout, metadata)
        except grpc.RpcError as e:
            return e
        self.fail("%s succeeded, expected an error: %s" % (method, r))

    def assertRefused(self, e, code, text):
        """code and the exact text (str) or a full-match regex (re.Pattern)."""
        self.assertEqual(e.code(), code, e.details())
        if isinstance(text, re.Pattern):
            self.assertRegex(e.details(), text)
            self.assertIsNotNone(text.fullmatch(e.details()), e.details())
        else:
            self.assertEqual(e.details(), text)

    def unary(self, method, request):
        """(code, message) of a single call: (0, response) when it succeeds."""
        try:
            return OK, self.call(method, request)
        except grpc.RpcError as e:
            return e.code().value[0], e.details()

    def assertLikeUnary(self, result, method, request, what):
        """A batch item answered as the single method answers the same input:
        the same code and the same text."""
        code, got = self.unary(method, request)
        self.assertNotEqual(code, OK, "%s: the unary %s accepts it" % (what, method))
        self.assertEqual(item_status(result), (code, got),
                         "%s: the item's status differs from the unary %s's" % (what, method))

    def assertCallLikeUnary(self, method, request, unary_method, unary_request, what):
        """A request-level fault: the batch fails as the single method does."""
        code, text = self.unary(unary_method, unary_request)
        self.assertNotEqual(code, OK, "%s: the unary %s accepts it" % (what, unary_method))
        e = self.error(method, request)
        self.assertEqual((e.code().value[0], e.details()), (code, text),
                         "%s: %s fails otherwise than %s" % (what, method, unary_method))
        return e

    def audit_record(self, request_id, timeout=10.0):
        """The audit record of the call sent with x-request-id request_id,
        read with `cofferctl audit tail`."""
        ctl = getattr(type(self), "_ctl", None)
        if ctl is None:
            ctl = type(self)._ctl = Ctl(self.d)
        deadline = time.monotonic() + timeout
        while True:
            out = ctl("audit", "tail", "--count", "200").stdout.decode()
            for line in out.splitlines():
                if request_id in line:
                    return json.loads(line[line.index("{"):])
            if time.monotonic() > deadline:
                self.fail("no audit record with request_id %s in:\n%s" % (request_id, out))
            time.sleep(0.2)

    # -- item counts --

    def batch(self, method, key, n, version=0):
        """A well-formed request of n items."""
        if method == "SignBatch":
            return pb.SignBatchRequest(key=key, version=version, items=[
                pb.SignBatchItem(message=b"m%d" % i) for i in range(n)])
        if method == "VerifyBatch":
            return pb.VerifyBatchRequest(key=key, version=version or 1, items=[
                pb.VerifyBatchItem(message=b"m%d" % i, signature=b"\x30\x00") for i in range(n)])
        if method == "MacBatch":
            return pb.MacBatchRequest(key=key, version=version, items=[
                pb.MacBatchItem(data=b"d%d" % i) for i in range(n)])
        return pb.VerifyMacBatchRequest(key=key, version=version or 1, items=[
            pb.VerifyMacBatchItem(data=b"d%d" % i, mac=bytes(32)) for i in range(n)])

    def test_counts(self):
        """0 and 1,025 items refuse the call; the text says how many and the
        limit. The documents list both as request-level faults without a
        code; cofferd answers no items INVALID_ARGUMENT and too many
        RESOURCE_EXHAUSTED (the proto's "a request above a limit"): both
        defensible, pinned here."""
        for method, key in (("SignBatch", "bc-ec"), ("VerifyBatch", "bc-ec"),
                            ("MacBatch", "bc-hmac"), ("VerifyMacBatch", "bc-hmac")):
            with self.subTest(method=method):
                e = self.error(method, self.batch(method, key, 0))
                self.assertRefused(e, SC.INVALID_ARGUMENT, "%s has no items: send 1 to 1024"
                                   % method)
                e = self.error(method, self.batch(method, key, MAX_ITEMS + 1))
                self.assertRefused(e, SC.RESOURCE_EXHAUSTED,
                                   "%s has 1025 items; the limit is 1024" % method)
        # One record, counting every item as failed.
        rid = "batch-contract-" + uuid.uuid4().hex
        self.error("MacBatch", self.batch("MacBatch", "bc-hmac", MAX_ITEMS + 1),
                   metadata=[("x-request-id", rid)])
        rec = self.audit_record(rid)
        self.assertEqual((rec["method"], rec["result"], rec.get("items"), rec.get("failed")),
                         ("/coffer.v1.KeyService/MacBatch", "RESOURCE_EXHAUSTED", 1025, 1025),
                         rec)
        # 4,096 empty items (2 bytes each): unpacked, then refused by count.
        e = self.raw_error("SignBatch", b"\x0a\x05bc-ec" + b"\x32\x00" * 4096)
        self.assertRefused(e, SC.RESOURCE_EXHAUSTED,
                           "SignBatch has 4096 items; the limit is 1024")
        # 500,000 (well within the message limit): refused from the wire bytes,
        # before protobuf-c allocates one message per item (before, about
        # 40 MB and half a million allocations for each such call).
        e = self.raw_error("SignBatch", b"\x0a\x05bc-ec" + b"\x32\x00" * 500000)
        self.assertRefused(e, SC.RESOURCE_EXHAUSTED,
                           "field coffer.v1.SignBatchRequest.items repeats more than 4096 "
                           "times")
        e = self.raw_error("Rewrap", b"\x0a\x05bc-ec" + b"\x1a\x00" * 500000)
        self.assertRefused(e, SC.RESOURCE_EXHAUSTED,
                           "field coffer.v1.RewrapRequest.context repeats more than 4096 "
                           "times")

    def test_empty_batch_audit_record(self):
        """The proto: "audit: one record for the call, with "items" (how many)
        and "failed" (how many answered an error)". A call of 0 items gets a
        record without either field, although zero counts are written
        elsewhere ("failed":0) and 1,025 items are counted."""
        rid = "batch-contract-" + uuid.uuid4().hex
        self.error("MacBatch", self.batch("MacBatch", "bc-hmac", 0),
                   metadata=[("x-request-id", rid)])
        rec = self.audit_record(rid)
        self.assertEqual((rec["result"], rec.get("items"), rec.get("failed")),
                         ("INVALID_ARGUMENT", 0, 0), rec)

    def raw_error(self, method, body):
        """Send body, raw bytes, as the request of KeyService/method: the error."""
        f = self.d.channel("service").unary_unary("/coffer.v1.KeyService/" + method)
        try:
            r = f(body, timeout=TIMEOUT)
        except grpc.RpcError as e:
            return e
        self.fail("%s succeeded, expected an error: %r" % (method, r[:200]))

    def test_wire_attacks(self):
        """Bytes no stub would send: each refused with the field and the place."""
        item = b"\x32\x03\x0a\x01x"    # items { message: "x" }
        cases = (
            (b"\x0a\x07bc-ec\xff\xfe" + item, SC.INVALID_ARGUMENT,
             "field coffer.v1.SignBatchRequest.key: invalid UTF-8 at offset 5; protocol "
             "strings are UTF-8 text without NUL"),
            (b"\x0a\x06bc\x00-ec" + item, SC.INVALID_ARGUMENT,
             "field coffer.v1.SignBatchRequest.key: a NUL byte at offset 2; protocol strings "
             "are UTF-8 text without NUL"),
            (b"\x0a\x05bc-ec\x32\x10\x0a\x01x", SC.INVALID_ARGUMENT,
             "request is not a valid coffer.v1.SignBatchRequest message: truncated"),
            (b"\xff\xff\xff", SC.INVALID_ARGUMENT,
             "request is not a valid coffer.v1.SignBatchRequest message: bad field tag at byte 0"),
            (b"\x0a\x05bc-ec" + item + b"\x18\x63", SC.INVALID_ARGUMENT, "unknown hash 99"),
            (b"\x0a\x05bc-ec" + item + b"\x20\x09", SC.INVALID_ARGUMENT,
             "unknown signature scheme 9"),
            (b"\x0a\x05bc-ec" + item + b"\x10\xff\xff\xff\xff\x0f", SC.NOT_FOUND,
             "key bc-ec has no version 4294967295"),
        )
        for body, code, text in cases:
            with self.subTest(body=body[:24]):
                self.assertRefused(self.raw_error("SignBatch", body), code, text)

    def test_one_and_max_items(self):
        pub = self.pub["bc-ec"]
        for n in (1, MAX_ITEMS):
            with self.subTest(n=n):
                r = self.call("SignBatch", self.batch("SignBatch", "bc-ec", n), timeout=120)
                self.assertEqual(len(r.results), n)
                self.assertEqual((r.version, r.scheme, r.hash), (1, pb.ECDSA, pb.SHA256))
                for i, res in enumerate(r.results):
                    self.assertEqual(item_status(res), (OK, ""), i)
                    self.assertTrue(verify_sig(pub, res.signature, pb.ECDSA, pb.SHA256,
                                               message=b"m%d" % i), "item %d" % i)
                # Every third item verified against the next item's message:
                # exactly those are invalid.
                v = self.call("VerifyBatch", pb.VerifyBatchRequest(
                    key="bc-ec", version=1, items=[
                        pb.VerifyBatchItem(message=b"m%d" % (i + (i % 3 == 2)),
                                           signature=res.signature)
                        for i, res in enumerate(r.results)]), timeout=120)
                self.assertEqual([(x.status.code, x.valid) for x in v.results],
                                 [(OK, i % 3 != 2) for i in range(n)])
                m = self.call("MacBatch", self.batch("MacBatch", "bc-hmac", n), timeout=120)
                self.assertEqual(m.version, 1)
                self.assertEqual(
                    [(x.status.code, x.mac) for x in m.results],
                    [(OK, hmac.new(HMAC_MATERIAL, b"d%d" % i, hashlib.sha256).digest())
                     for i in range(n)])
                vm = self.call("VerifyMacBatch", pb.VerifyMacBatchRequest(
                    key="bc-hmac", version=1, items=[
                        pb.VerifyMacBatchItem(data=b"d%d" % i, mac=x.mac)
                        for i, x in enumerate(m.results)]), timeout=120)
                self.assertEqual([(x.status.code, x.valid) for x in vm.results],
                                 [(OK, True)] * n)

    # -- each item its own status --

    def test_sign_items_fail_alone(self):
        good = hashlib.sha256(b"pre-hashed").digest()
        items = [
            ("message", pb.SignBatchItem(message=b"first"), None),
            ("5-byte digest", pb.SignBatchItem(digest=b"12345"), None),
            ("good digest", pb.SignBatchItem(digest=good), None),
            ("message and digest", pb.SignBatchItem(message=b"x", digest=good), None),
            # proto3 cannot tell an empty message from none: signed as b"",
            # as the unary Sign does (the documents are silent).
            ("neither = empty message", pb.SignBatchItem(), None),
            ("48-byte digest", pb.SignBatchItem(digest=bytes(48)), None),
            ("1 MiB + 1 message", pb.SignBatchItem(message=b"o" * (MIB + 1)), None),
            ("last message", pb.SignBatchItem(message=b"last"), None),
        ]
        r = self.call("SignBatch", pb.SignBatchRequest(key="bc-ec", items=[i[1] for i in items]),
                      timeout=60)
        self.assertEqual(len(r.results), len(items))
        pub = self.pub["bc-ec"]
        for (what, it, _), res in zip(items, r.results):
            with self.subTest(item=what):
                unary = pb.SignRequest(key="bc-ec", message=it.message, digest=it.digest)
                if what in ("message", "good digest", "last message", "neither = empty message"):
                    self.assertEqual(item_status(res), (OK, ""))
                    self.assertTrue(verify_sig(pub, res.signature, pb.ECDSA, pb.SHA256,
                                               message=it.message, digest=it.digest or None))
                    self.assertEqual(self.unary("Sign", unary)[0], OK)
                else:
                    self.assertEqual(res.signature, b"", "a failed item carries no signature")
                    self.assertLikeUnary(res, "Sign", unary, what)
        # The texts themselves: what is wrong, with the numbers.
        IA, RE = SC.INVALID_ARGUMENT.value[0], SC.RESOURCE_EXHAUSTED.value[0]
        self.assertEqual([item_status(x) for x in r.results], [
            (OK, ""), (IA, "a sha256 digest is 32 bytes, got 5"), (OK, ""),
            (IA, "give either message or digest, not both"), (OK, ""),
            (IA, "a sha256 digest is 32 bytes, got 48"),
            (RE, "message of 1048577 bytes exceeds the limit of 1048576 bytes"), (OK, "")])

    def test_ed25519_digest_and_other_keys(self):
        """Ed25519 takes no digest (FAILED_PRECONDITION for that item only);
        P-384 with SHA-512, raw ECDSA, RSA-PSS and PKCS#1 v1.5 signatures
        verify independently."""
        r = self.call("SignBatch", pb.SignBatchRequest(key="bc-ed", items=[
            pb.SignBatchItem(message=b"a"), pb.SignBatchItem(digest=bytes(32)),
            pb.SignBatchItem(message=b"c" * MIB)]), timeout=60)
        self.assertEqual((r.scheme, r.hash), (pb.EDDSA, pb.HASH_UNSPECIFIED))
        self.assertTrue(verify_sig(self.pub["bc-ed"], r.results[0].signature, pb.EDDSA, 0,
                                   message=b"a"))
        self.assertEqual(item_status(r.results[1]), (
            SC.FAILED_PRECONDITION.value[0], "key bc-ed is ed25519, which signs the message "
            "itself (no prehash): send the message, not a digest"))
        self.assertLikeUnary(r.results[1], "Sign", pb.SignRequest(key="bc-ed", digest=bytes(32)),
                             "Ed25519 digest")
        self.assertTrue(verify_sig(self.pub["bc-ed"], r.results[2].signature, pb.EDDSA, 0,
                                   message=b"c" * MIB), "a 1 MiB message, the maximum")
        cases = (("bc-p384", pb.SHA512, pb.SCHEME_UNSPECIFIED, False, 64),
                 ("bc-p384", pb.HASH_UNSPECIFIED, pb.ECDSA, True, 48),
                 ("bc-ec", pb.SHA384, pb.ECDSA, True, 48),
                 ("bc-rsa", pb.SHA256, pb.RSA_PSS, False, 32),
                 ("bc-rsa", pb.SHA512, pb.RSA_PKCS1, False, 64))
        for key, h, scheme, raw, dlen in cases:
            with self.subTest(key=key, hash=h, scheme=scheme, raw=raw):
                msgs = [b"one", b"two" * 100, b"", b"four"]
                items = [pb.SignBatchItem(message=m) for m in msgs if m]
                items.append(pb.SignBatchItem(digest=bytes(range(dlen))))
                items.append(pb.SignBatchItem(digest=bytes(dlen - 1)))
                r = self.call("SignBatch", pb.SignBatchRequest(
                    key=key, hash=h, scheme=scheme, ecdsa_raw=raw, items=items), timeout=60)
                want_h = h or (pb.SHA384 if key == "bc-p384" else pb.SHA256)
                want_s = scheme or (pb.RSA_PSS if key == "bc-rsa" else pb.ECDSA)
                self.assertEqual((r.hash, r.scheme, r.version), (want_h, want_s, 1))
                for it, res in list(zip(items, r.results))[:-1]:
                    self.assertEqual(item_status(res), (OK, ""))
                    self.assertTrue(verify_sig(self.pub[key], res.signature, want_s, want_h,
                                               message=it.message or None,
                                               digest=it.digest or None, raw=raw))
                self.assertLikeUnary(r.results[-1], "Sign", pb.SignRequest(
                    key=key, hash=h, scheme=scheme, ecdsa_raw=raw, digest=bytes(dlen - 1)),
                    "short digest")

    def test_verify_items(self):
        msgs = [b"v%d" % i for i in range(4)]
        sigs = [x.signature for x in self.call("SignBatch", pb.SignBatchRequest(
            key="bc-ec", items=[pb.SignBatchItem(message=m) for m in msgs])).results]
        flipped = bytearray(sigs[0])
        flipped[-1] ^= 1
        cases = [
            ("good", pb.VerifyBatchItem(message=msgs[0], signature=sigs[0]), True),
            ("flipped bit", pb.VerifyBatchItem(message=msgs[0], signature=bytes(flipped)), False),
            ("another item's signature", pb.VerifyBatchItem(message=msgs[1], signature=sigs[2]),
             False),
            ("another message", pb.VerifyBatchItem(message=b"other", signature=sigs[3]), False),
            ("digest of the message", pb.VerifyBatchItem(
                digest=hashlib.sha256(msgs[3]).digest(), signature=sigs[3]), True),
            ("10 garbage bytes", pb.VerifyBatchItem(message=msgs[0], signature=b"g" * 10), None),
            ("empty signature", pb.VerifyBatchItem(message=msgs[0]), None),
            ("513-byte signature", pb.VerifyBatchItem(message=msgs[0], signature=bytes(513)),
             None),
            ("message and digest", pb.VerifyBatchItem(
                message=msgs[0], digest=hashlib.sha256(msgs[0]).digest(), signature=sigs[0]),
             None),
            ("7-byte digest", pb.VerifyBatchItem(digest=bytes(7), signature=sigs[0]), None),
            ("good, last", pb.VerifyBatchItem(message=msgs[2], signature=sigs[2]), True),
        ]
        r = self.call("VerifyBatch", pb.VerifyBatchRequest(key="bc-ec", version=1,
                                                           items=[c[1] for c in cases]))
        self.assertEqual(len(r.results), len(cases))
        for (what, it, valid), res in zip(cases, r.results):
            with self.subTest(item=what):
                unary = pb.VerifyRequest(key="bc-ec", version=1, message=it.message,
                                         digest=it.digest, signature=it.signature)
                code, answer = self.unary("Verify", unary)
                if valid is not None:
                    self.assertEqual((res.status.code, res.status.message, res.valid),
                                     (OK, "", valid))
                    self.assertEqual((code, answer.valid), (OK, valid), "the unary Verify")
                elif code == OK:
                    # Well-formed but wrong: valid=false, as the unary says.
                    self.assertEqual((res.status.code, res.valid), (OK, answer.valid))
                    self.assertFalse(res.valid)
                else:
                    self.assertFalse(res.valid, "a failed item is not valid")
                    self.assertLikeUnary(res, "Verify", unary, what)
        # "at most 512 bytes": a limit, so RESOURCE_EXHAUSTED naming it.
        self.assertEqual(item_status(r.results[7]), (
            SC.RESOURCE_EXHAUSTED.value[0],
            "signature of 513 bytes exceeds the limit of 512 bytes"))
        self.assertEqual(item_status(r.results[8]), (
            SC.INVALID_ARGUMENT.value[0], "give either message or digest, not both"))
        self.assertEqual(item_status(r.results[9]), (
            SC.INVALID_ARGUMENT.value[0], "a sha256 digest is 32 bytes, got 7"))

    def test_mac_items(self):
        mac = lambda d: hmac.new(HMAC_MATERIAL, d, hashlib.sha256).digest()  # noqa: E731
        # Two calls: 1 MiB and 1 MiB + 1 together exceed the message limit.
        datas = [b"alpha", b"", b"z" * MIB, b"z" * (MIB + 1), b"omega"]
        r1 = self.call("MacBatch", pb.MacBatchRequest(
            key="bc-hmac", items=[pb.MacBatchItem(data=x) for x in datas[:3]]), timeout=60)
        r2 = self.call("MacBatch", pb.MacBatchRequest(
            key="bc-hmac", items=[pb.MacBatchItem(data=x) for x in datas[3:]]), timeout=60)
        results = list(r1.results) + list(r2.results)
        self.assertEqual(len(results), len(datas))
        for data, res in zip(datas, results):
            with self.subTest(size=len(data)):
                code, unary = self.unary("Mac", pb.MacRequest(key="bc-hmac", data=data))
                if code == OK:
                    self.assertEqual((res.status.code, res.status.message, res.mac),
                                     (OK, "", mac(data)))
                    self.assertEqual(unary.mac, res.mac)
                else:
                    self.assertEqual((res.status.code, res.status.message, res.mac),
                                     (code, unary, b""))
        self.assertEqual(results[0].mac, mac(b"alpha"))
        self.assertEqual(results[1].mac, mac(b""), "empty data is data")
        self.assertEqual(results[2].mac, mac(b"z" * MIB), "1 MiB is the maximum, allowed")
        self.assertEqual(item_status(results[3]), (
            SC.RESOURCE_EXHAUSTED.value[0],
            "data of 1048577 bytes exceeds the limit of 1048576 bytes"))
        self.assertEqual(results[4].mac, mac(b"omega"))
        good = mac(b"data")
        bad = bytearray(good)
        bad[0] ^= 0x80
        cases = [("good", b"data", good, True), ("flipped", b"data", bytes(bad), False),
                 ("other data", b"datA", good, False), ("truncated", b"data", good[:16], None),
                 ("empty mac", b"data", b"", None), ("long", b"data", good + b"\0", None),
                 ("513-byte mac", b"data", bytes(513), None),
                 ("good again", b"data", good, True)]
        r = self.call("VerifyMacBatch", pb.VerifyMacBatchRequest(
            key="bc-hmac", version=1,
            items=[pb.VerifyMacBatchItem(data=c[1], mac=c[2]) for c in cases]))
        for (what, data, m, valid), res in zip(cases, r.results):
            with self.subTest(item=what):
                code, unary = self.unary("VerifyMac", pb.VerifyMacRequest(
                    key="bc-hmac", version=1, data=data, mac=m))
                if code == OK:
                    self.assertEqual((res.status.code, res.status.message, res.valid),
                                     (OK, "", unary.valid))
                    if valid is not None:
                        self.assertEqual(res.valid, valid)
                else:
                    self.assertFalse(res.valid)
                    self.assertEqual(item_status(res), (code, unary))
        # A MAC of the wrong length is well-formed but wrong (valid=false,
        # as the unary VerifyMac says); above 64 bytes it is a limit.
        self.assertEqual([(x.status.code, x.valid) for x in r.results[:7]],
                         [(OK, True), (OK, False), (OK, False), (OK, False), (OK, False),
                          (OK, False), (SC.RESOURCE_EXHAUSTED.value[0], False)])
        self.assertEqual(r.results[6].status.message,
                         "mac of 513 bytes exceeds the limit of 64 bytes")
        self.assertEqual((r.results[7].status.code, r.results[7].valid), (OK, True))

    # -- request-level faults --

    def test_request_faults_like_unary(self):
        sig = self.call("Sign", pb.SignRequest(key="bc-ec", message=b"x")).signature
        cases = [
            ("MAC key in SignBatch", "SignBatch", pb.SignBatchRequest(
                key="bc-hmac", items=[pb.SignBatchItem(message=b"x")]),
             "Sign", pb.SignRequest(key="bc-hmac", message=b"x"), SC.FAILED_PRECONDITION),
            ("MAC key in VerifyBatch", "VerifyBatch", pb.VerifyBatchRequest(
                key="bc-hmac", version=1, items=[pb.VerifyBatchItem(message=b"x",
                                                                    signature=sig)]),
             "Verify", pb.VerifyRequest(key="bc-hmac", version=1, message=b"x", signature=sig),
             SC.FAILED_PRECONDITION),
            ("signing key in MacBatch", "MacBatch", pb.MacBatchRequest(
                key="bc-ec", items=[pb.MacBatchItem(data=b"x")]),
             "Mac", pb.MacRequest(key="bc-ec", data=b"x"), SC.FAILED_PRECONDITION),
            ("signing key in VerifyMacBatch", "VerifyMacBatch", pb.VerifyMacBatchRequest(
                key="bc-ec", version=1, items=[pb.VerifyMacBatchItem(data=b"x", mac=bytes(32))]),
             "VerifyMac", pb.VerifyMacRequest(key="bc-ec", version=1, data=b"x", mac=bytes(32)),
             SC.FAILED_PRECONDITION),
            ("no such key", "SignBatch", pb.SignBatchRequest(
                key="bc-nope", items=[pb.SignBatchItem(message=b"x")]),
             "Sign", pb.SignRequest(key="bc-nope", message=b"x"), SC.NOT_FOUND),
            ("bad key name", "MacBatch", pb.MacBatchRequest(
                key="Bad Name", items=[pb.MacBatchItem(data=b"x")]),
             "Mac", pb.MacRequest(key="Bad Name", data=b"x"), SC.INVALID_ARGUMENT),
            ("no such version", "SignBatch", pb.SignBatchRequest(
                key="bc-ec", version=99, items=[pb.SignBatchItem(message=b"x")]),
             "Sign", pb.SignRequest(key="bc-ec", version=99, message=b"x"), SC.NOT_FOUND),
            ("no such version (mac)", "VerifyMacBatch", pb.VerifyMacBatchRequest(
                key="bc-hmac", version=7, items=[pb.VerifyMacBatchItem(data=b"x",
                                                                       mac=bytes(32))]),
             "VerifyMac", pb.VerifyMacRequest(key="bc-hmac", version=7, data=b"x",
                                              mac=bytes(32)), SC.NOT_FOUND),
            ("verify without version", "VerifyBatch", pb.VerifyBatchRequest(
                key="bc-ec", items=[pb.VerifyBatchItem(message=b"x", signature=sig)]),
             "Verify", pb.VerifyRequest(key="bc-ec", message=b"x", signature=sig),
             SC.INVALID_ARGUMENT),
            ("verify-mac without version", "VerifyMacBatch", pb.VerifyMacBatchRequest(
                key="bc-hmac", items=[pb.VerifyMacBatchItem(data=b"x", mac=bytes(32))]),
             "VerifyMac", pb.VerifyMacRequest(key="bc-hmac", data=b"x", mac=bytes(32)),
             SC.INVALID_ARGUMENT),
            ("unknown hash", "SignBatch", pb.SignBatchRequest(
                key="bc-ec", hash=77, items=[pb.SignBatchItem(message=b"x")]),
             "Sign", pb.SignRequest(key="bc-ec", hash=77, message=b"x"), SC.INVALID_ARGUMENT),
            ("unknown scheme", "VerifyBatch", pb.VerifyBatchRequest(
                key="bc-ec", version=1, scheme=42,
                items=[pb.VerifyBatchItem(message=b"x", signature=sig)]),
             "Verify", pb.VerifyRequest(key="bc-ec", version=1, scheme=42, message=b"x",
                                        signature=sig), SC.INVALID_ARGUMENT),
        ]
        texts = {
            "MAC key in SignBatch":
                "key bc-hmac is a mac key (hmac-sha256); this operation needs a sign key",
            "MAC key in VerifyBatch":
                "key bc-hmac is a mac key (hmac-sha256); this operation needs a sign key",
            "signing key in MacBatch":
                "key bc-ec is a sign key (ec-p256); this operation needs a mac key",
            "signing key in VerifyMacBatch":
                "key bc-ec is a sign key (ec-p256); this operation needs a mac key",
            "no such key": "key bc-nope does not exist",
            "bad key name": "key name must start with a lower-case letter or digit",
            "no such version": "key bc-ec has no version 99",
            "no such version (mac)": "key bc-hmac has no version 7",
            "verify without version": "version is required: pass the version that Sign returned",
            "verify-mac without version":
                "version is required: pass the version that Mac returned",
            "unknown hash": "unknown hash 77",
            "unknown scheme": "unknown signature scheme 42",
        }
        for what, method, req, umethod, ureq, code in cases:
            with self.subTest(case=what):
                e = self.assertCallLikeUnary(method, req, umethod, ureq, what)
                self.assertRefused(e, code, texts[what])

    def test_key_scheme_mismatch_fails_call(self):
        """The proto: "A request-level error (bad key, version, hash, scheme,
        no items, too many) fails the whole call as the single method would,
        and gives back the rate-limit tokens it took." A scheme or hash the
        key cannot use is such a fault (the unary Sign refuses it), yet
        cofferd answers the call OK, repeats the refusal on every item, heads
        the response with the scheme it cannot use (scheme: RSA_PSS for a
        P-256 key), and keeps the tokens: a bucket of 3 is spent by a batch
        that could never sign anything."""
        three = [pb.SignBatchItem(message=b"x%d" % i) for i in range(3)]
        cases = (
            ("RSA scheme on an EC key", pb.SignBatchRequest(
                key="bc-ec", scheme=pb.RSA_PSS, items=three),
             pb.SignRequest(key="bc-ec", scheme=pb.RSA_PSS, message=b"x")),
            ("a hash for Ed25519", pb.SignBatchRequest(key="bc-ed", hash=pb.SHA512, items=three),
             pb.SignRequest(key="bc-ed", hash=pb.SHA512, message=b"x")),
            ("ecdsa_raw for Ed25519", pb.SignBatchRequest(key="bc-ed", ecdsa_raw=True,
                                                          items=three),
             pb.SignRequest(key="bc-ed", ecdsa_raw=True, message=b"x")),
        )
        sig = self.call("Sign", pb.SignRequest(key="bc-ec", message=b"x")).signature
        cases += (("EdDSA scheme in VerifyBatch on an EC key", pb.VerifyBatchRequest(
            key="bc-ec", version=1, scheme=pb.EDDSA,
            items=[pb.VerifyBatchItem(message=b"x", signature=sig)] * 2),
            pb.VerifyRequest(key="bc-ec", version=1, scheme=pb.EDDSA, message=b"x",
                             signature=sig)),)
        failures = []
        for what, req, unary in cases:
            method = "VerifyBatch" if isinstance(req, pb.VerifyBatchRequest) else "SignBatch"
            code, text = self.unary(method[:-5], unary)
            self.assertNotEqual(code, OK, what)
            try:
                r = self.call(method, req)
                failures.append("%s: %s answered OK%s with items %s; the unary %s: %s %r" % (
                    what, method, " (scheme %s, hash %s)" % (
                        pb.SignatureScheme.Name(r.scheme), pb.Hash.Name(r.hash))
                    if method == "SignBatch" else "", [item_status(x) for x in r.results],
                    method[:-5], CODE[code].name, text))
            except grpc.RpcError as e:
                if (e.code().value[0], e.details()) != (code, text):
                    failures.append("%s: %s %r, the unary %s %s %r" % (
                        what, e.code().name, e.details(), method[:-5], CODE[code].name, text))
        # Its tokens come back: with a bucket of 3, a refused batch of 3 then
        # a good batch of 3, which must be served in full.
        adm = self.adm
        adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
            operation=pb.OP_SIGN, per_second=0.001, burst=3)), timeout=30)
        self.addCleanup(adm.SetRateLimit, pb.SetRateLimitRequest(
            name="tester", limit=pb.RateLimit(operation=pb.OP_SIGN, per_second=0)), timeout=30)
        try:
            self.call("SignBatch", cases[0][1])
        except grpc.RpcError:
            pass
        try:
            r = self.call("SignBatch", pb.SignBatchRequest(key="bc-ec", items=three))
            got = [item_status(x) for x in r.results]
            if got != [(OK, "")] * 3:
                failures.append("a bucket of 3 after a refused batch of 3 served %s" % got)
        except grpc.RpcError as e:
            failures.append("a bucket of 3 after a refused batch of 3: %s %r" % (
                e.code().name, e.details()))
        self.assertEqual(failures, [])

    def test_versions_disabled_destroyed(self):
        adm = self.adm
        sig1 = self.call("Sign", pb.SignRequest(key="bc-life", message=b"v1")).signature
        adm.RotateKey(pb.RotateKeyRequest(name="bc-life"), timeout=60)

        def check(state):
            text = "key bc-life version 1 is %s" % state
            es = self.assertCallLikeUnary(
                "SignBatch", pb.SignBatchRequest(key="bc-life", version=1,
                                                 items=[pb.SignBatchItem(message=b"x")]),
                "Sign", pb.SignRequest(key="bc-life", version=1, message=b"x"), state)
            e = self.assertCallLikeUnary(
                "VerifyBatch", pb.VerifyBatchRequest(key="bc-life", version=1, items=[
                    pb.VerifyBatchItem(message=b"v1", signature=sig1)]),
                "Verify", pb.VerifyRequest(key="bc-life", version=1, message=b"v1",
                                           signature=sig1), state)
            self.assertEqual(e.code(), SC.FAILED_PRECONDITION, e.details())
            self.assertRefused(es, SC.FAILED_PRECONDITION, text)
            self.assertRefused(e, SC.FAILED_PRECONDITION, text)
            # The primary still serves.
            r = self.call("SignBatch", pb.SignBatchRequest(key="bc-life", items=[
                pb.SignBatchItem(message=b"x")]))
            self.assertEqual((r.version, r.results[0].status.code), (2, OK))

        ok = self.call("VerifyBatch", pb.VerifyBatchRequest(key="bc-life", version=1, items=[
            pb.VerifyBatchItem(message=b"v1", signature=sig1)]))
        self.assertEqual((ok.results[0].status.code, ok.results[0].valid), (OK, True))
        adm.DisableKeyVersion(pb.KeyVersionRequest(name="bc-life", version=1), timeout=30)
        check("disabled")
        adm.ScheduleDestroyKeyVersion(pb.KeyVersionRequest(name="bc-life", version=1,
                                                           grace_seconds=2), timeout=30)
        check("scheduled for destruction")
        deadline = time.monotonic() + 30
        while True:
            k = adm.GetKey(pb.GetKeyRequest(name="bc-life"), timeout=10)
            if k.versions[0].state == pb.DESTROYED:
                break
            self.assertLess(time.monotonic(), deadline, "version 1 not destroyed: %s" % k)
            time.sleep(0.3)
        check("destroyed")

    def test_not_allowed(self):
        """No grant, or the key's own limit: the whole call is refused as the
        unary call is, with one audit record counting its items."""
        adm = self.adm
        adm.RevokePrincipal(pb.RevokeRequest(name="tester", key_pattern="*",
                                             operations=[pb.OP_VERIFY]), timeout=30)
        self.addCleanup(adm.GrantPrincipal, pb.GrantRequest(name="tester", grant=pb.Grant(
            key_pattern="*", operations=[pb.OP_VERIFY])), timeout=30)
        sig = self.call("Sign", pb.SignRequest(key="bc-ec", message=b"p")).signature
        rid = "batch-contract-" + uuid.uuid4().hex
        req = pb.VerifyBatchRequest(key="bc-ec", version=1, items=[
            pb.VerifyBatchItem(message=b"p", signature=sig) for _ in range(4)])
        code, text = self.unary("Verify", pb.VerifyRequest(key="bc-ec", version=1,
                                                           message=b"p", signature=sig))
        e = self.error("VerifyBatch", req, metadata=[("x-request-id", rid)])
        self.assertEqual((e.code().value[0], e.details()), (code, text))
        self.assertRefused(e, SC.PERMISSION_DENIED, re.compile(
            r"principal tester .*\bverify\b.*\bbc-ec\b.*"))
        rec = self.audit_record(rid)
        self.assertEqual((rec["result"], rec.get("items"), rec.get("failed")),
                         ("PERMISSION_DENIED", 4, 4), rec)
        # A key that may only verify: SignBatch and MacBatch-like misuse refused.
        adm.CreateKey(pb.CreateKeyRequest(name="bc-verify-only", type=pb.EC_P256,
                                          allowed_operations=[pb.OP_VERIFY,
                                                              pb.OP_GET_PUBLIC_KEY]), timeout=60)
        e = self.assertCallLikeUnary(
            "SignBatch", pb.SignBatchRequest(key="bc-verify-only", items=[
                pb.SignBatchItem(message=b"x")] * 2),
            "Sign", pb.SignRequest(key="bc-verify-only", message=b"x"), "the key's own limit")
        self.assertRefused(e, SC.PERMISSION_DENIED, re.compile(r".*\bbc-verify-only\b.*"))

    def test_sealed_batch(self):
        """A batch inside a sealed session answers item by item as unsealed."""
        sealed = self.d.sealed_stub("service")
        req = pb.SignBatchRequest(key="bc-ec", items=[
            pb.SignBatchItem(message=b"sealed 1"), pb.SignBatchItem(digest=bytes(31)),
            pb.SignBatchItem(message=b"sealed 3")])
        r = sealed.SignBatch(req, timeout=TIMEOUT)
        self.assertEqual([x.status.code for x in r.results],
                         [OK, SC.INVALID_ARGUMENT.value[0], OK])
        self.assertEqual(r.results[1].status.message, "a sha256 digest is 32 bytes, got 31")
        for i in (0, 2):
            self.assertTrue(verify_sig(self.pub["bc-ec"], r.results[i].signature, pb.ECDSA,
                                       pb.SHA256, message=req.items[i].message))
        try:
            sealed.MacBatch(pb.MacBatchRequest(key="bc-hmac"), timeout=TIMEOUT)
            self.fail("an empty sealed batch was served")
        except grpc.RpcError as e:
            self.assertRefused(e, SC.INVALID_ARGUMENT, "MacBatch has no items: send 1 to 1024")

    # -- size --

    def test_message_size_limit(self):
        # Two 600 KiB items: the request is above 1 MiB + 64 KiB.
        big = pb.SignBatchRequest(key="bc-ec", items=[
            pb.SignBatchItem(message=b"a" * (600 * 1024)) for _ in range(2)])
        size = big.ByteSize()
        self.assertGreater(size, MAX_MESSAGE)
        e = self.error("SignBatch", big)
        self.assertRefused(e, SC.RESOURCE_EXHAUSTED, re.compile(
            r".*\b%d\b.*\b%d\b.*" % (size, MAX_MESSAGE)))
        e = self.error("MacBatch", pb.MacBatchRequest(key="bc-hmac", items=[
            pb.MacBatchItem(data=b"b" * MIB) for _ in range(8)]))
        self.assertEqual(e.code(), SC.RESOURCE_EXHAUSTED, e.details())
        self.assertRegex(e.details(), r"\b%d\b" % MAX_MESSAGE)
        # 1,024 items that fill the limit are served, each checked.
        per = (MAX_MESSAGE - 64) // MAX_ITEMS - 8
        datas = [bytes([i % 251]) * per for i in range(MAX_ITEMS)]
        req = pb.MacBatchRequest(key="bc-hmac", items=[pb.MacBatchItem(data=x) for x in datas])
        self.assertLessEqual(req.ByteSize(), MAX_MESSAGE)
        self.assertGreater(req.ByteSize(), MAX_MESSAGE - 16 * 1024)
        r = self.call("MacBatch", req, timeout=120)
        self.assertEqual([(x.status.code, x.mac) for x in r.results],
                         [(OK, hmac.new(HMAC_MATERIAL, x, hashlib.sha256).digest())
                          for x in datas])

    # -- rate limits and the audit record --

    def test_rate_limit_per_item(self):
        """OP_VERIFY_MAC limited to a bucket of 5 (one token per 1,000 s)."""
        adm = self.adm
        adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
            operation=pb.OP_VERIFY_MAC, per_second=0.001, burst=5)), timeout=30)
        self.addCleanup(adm.SetRateLimit, pb.SetRateLimitRequest(
            name="tester", limit=pb.RateLimit(operation=pb.OP_VERIFY_MAC, per_second=0)),
            timeout=30)
        good = hmac.new(HMAC_MATERIAL, b"r", hashlib.sha256).digest()

        def vm(n, version=1):
            return pb.VerifyMacBatchRequest(key="bc-hmac", version=version, items=[
                pb.VerifyMacBatchItem(data=b"r", mac=good) for _ in range(n)])

        # A request-level fault first: its 3 tokens come back.
        e = self.error("VerifyMacBatch", vm(3, version=9))
        self.assertEqual(e.code(), SC.NOT_FOUND, e.details())
        rid = "batch-contract-" + uuid.uuid4().hex
        r = self.call("VerifyMacBatch", vm(8), metadata=[("x-request-id", rid)])
        got = [(x.status.code, x.valid) for x in r.results]
        self.assertEqual(got, [(OK, True)] * 5 + [(SC.RESOURCE_EXHAUSTED.value[0], False)] * 3,
                         "5 tokens (the refused call gave its 3 back)")
        for i, x in enumerate(r.results[5:], 6):
            self.assertRegex(x.status.message, r"^.*exceeded at item %d of 8 \(5 granted\); "
                             r"retry after \d+ ms$" % i)
            ms = int(re.search(r"retry after (\d+) ms", x.status.message).group(1))
            self.assertTrue(0 < ms <= 1000 * 1000, x.status.message)
        rec = self.audit_record(rid)
        self.assertEqual((rec.get("method"), rec.get("key"), rec.get("items"),
                          rec.get("failed")),
                         ("/coffer.v1.KeyService/VerifyMacBatch", "bc-hmac", 8, 3), rec)
        # The bucket is empty: the call as a whole is refused, as a single
        # VerifyMac would be, with the trailer.
        e = self.error("VerifyMacBatch", vm(2))
        self.assertEqual(e.code(), SC.RESOURCE_EXHAUSTED, e.details())
        trailer = dict(e.trailing_metadata() or ())
        self.assertIn("retry-after-ms", trailer, e.details())
        self.assertGreater(int(trailer["retry-after-ms"]), 0)
        single = self.error("VerifyMac", pb.VerifyMacRequest(key="bc-hmac", version=1,
                                                             data=b"r", mac=good))
        self.assertEqual(single.code(), SC.RESOURCE_EXHAUSTED)
        strip = lambda s: re.sub(r"\d+ ms", "N ms", s)  # noqa: E731
        self.assertEqual(strip(e.details()), strip(single.details()))

    def test_rate_limit_two_buckets(self):
        """Items are covered by every bucket of the principal: all of its
        calls 6, verify-mac 4. A batch of 8 gets 4; the shared bucket pays
        for those 4 only (one token per item served), so a sign batch of 3
        after it gets 2."""
        adm = self.adm
        for op, burst in ((pb.OPERATION_UNSPECIFIED, 6), (pb.OP_VERIFY_MAC, 4)):
            adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
                operation=op, per_second=0.001, burst=burst)), timeout=30)
            self.addCleanup(adm.SetRateLimit, pb.SetRateLimitRequest(
                name="tester", limit=pb.RateLimit(operation=op, per_second=0)), timeout=30)
        good = hmac.new(HMAC_MATERIAL, b"t", hashlib.sha256).digest()
        r = self.call("VerifyMacBatch", pb.VerifyMacBatchRequest(
            key="bc-hmac", version=1, items=[pb.VerifyMacBatchItem(data=b"t", mac=good)] * 8))
        self.assertEqual([(x.status.code, x.valid) for x in r.results],
                         [(OK, True)] * 4 + [(SC.RESOURCE_EXHAUSTED.value[0], False)] * 4)
        self.assertRegex(r.results[4].status.message,
                         r"^rate limit of principal tester for verify-mac exceeded at item 5 of 8 "
                         r"\(4 granted\); retry after \d+ ms$")
        r = self.call("SignBatch", pb.SignBatchRequest(key="bc-ec", items=[
            pb.SignBatchItem(message=b"s%d" % i) for i in range(3)]))
        self.assertEqual([x.status.code for x in r.results],
                         [OK, OK, SC.RESOURCE_EXHAUSTED.value[0]],
                         [item_status(x) for x in r.results])
        # Which bucket ran dry is test_rate_limit_names_its_bucket's matter.
        self.assertRegex(r.results[2].status.message,
                         r"^rate limit of principal tester( for [a-z-]+)? exceeded at item 3 of 3 "
                         r"\(2 granted\); retry after \d+ ms$")

    def test_rate_limit_names_its_bucket(self):
        """Only the principal's all-operations bucket is limited (burst 2):
        the third MAC item is refused naming no operation (it once said "for
        mac", a limit that does not exist, sending an operator to look for
        it in `principal show`)."""
        adm = self.adm
        adm.SetRateLimit(pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
            operation=pb.OPERATION_UNSPECIFIED, per_second=0.001, burst=2)), timeout=30)
        self.addCleanup(adm.SetRateLimit, pb.SetRateLimitRequest(
            name="tester", limit=pb.RateLimit(operation=pb.OPERATION_UNSPECIFIED,
                                              per_second=0)), timeout=30)
        r = self.call("MacBatch", pb.MacBatchRequest(key="bc-hmac", items=[
            pb.MacBatchItem(data=b"b%d" % i) for i in range(3)]))
        self.assertEqual([x.status.code for x in r.results],
                         [OK, OK, SC.RESOURCE_EXHAUSTED.value[0]])
        self.assertRegex(r.results[2].status.message,
                         r"^rate limit of principal tester exceeded at item 3 of 3 \(2 granted\); "
                         r"retry after \d+ ms$")

    # -- deadlines --

    def test_deadline_big_rsa_batch(self):
        req = pb.SignBatchRequest(key="bc-rsa", items=[
            pb.SignBatchItem(message=b"deadline %d" % i) for i in range(MAX_ITEMS)])
        rid = "batch-contract-" + uuid.uuid4().hex
        t0 = time.monotonic()
        try:
            r = self.call("SignBatch", req, timeout=0.05, metadata=[("x-request-id", rid)])
        except grpc.RpcError as e:
            self.assertEqual(e.code(), SC.DEADLINE_EXCEEDED, e.details())
        else:
            # The daemon answers once the deadline passes, items cut off
            # failed each with its own status; on a loaded machine that
            # answer can beat the client's own timer (seen once in CI).
            cut = [(x.status.code, x.status.message) for x in r.results if x.status.code]
            self.assertGreater(len(cut), MAX_ITEMS // 4)
            for code, text in cut:
                self.assertIn(code, (SC.DEADLINE_EXCEEDED.value[0], SC.CANCELLED.value[0]), text)
                self.assertRegex(text, r"^the (call's deadline passed|caller cancelled the "
                                 r"call) before item \d+ of 1024 ran$")
        self.assertLess(time.monotonic() - t0, 5)
        rec = self.audit_record(rid, timeout=30)
        self.assertEqual((rec.get("method"), rec.get("items")),
                         ("/coffer.v1.KeyService/SignBatch", MAX_ITEMS), rec)
        self.assertGreater(rec.get("failed", 0), MAX_ITEMS // 4,
                           "most of 1,024 RSA items cannot run in 50 ms: %s" % rec)
        # The daemon serves at once.
        t1 = time.monotonic()
        r = self.call("SignBatch", pb.SignBatchRequest(key="bc-rsa", items=[
            pb.SignBatchItem(message=b"after")]), timeout=10)
        self.assertEqual(r.results[0].status.code, OK)
        self.assertLess(time.monotonic() - t1, 5)

    def test_cancelled_batch_stops(self):
        """A caller that cancels has given up as one whose deadline passed:
        the items not yet run answer CANCELLED (counted as failed in the
        record), so it does not hold a worker. (It once ran all 1,024 RSA
        items of a call cancelled after 50 ms.)"""
        req = pb.SignBatchRequest(key="bc-rsa", items=[
            pb.SignBatchItem(message=b"cancel %d" % i) for i in range(MAX_ITEMS)])
        rid = "batch-contract-" + uuid.uuid4().hex
        fut = self.svc.SignBatch.future(req, timeout=120, metadata=[("x-request-id", rid)])
        time.sleep(0.05)
        self.assertTrue(fut.cancel(), "the batch ended within 50 ms")
        rec = self.audit_record(rid, timeout=30)
        self.assertEqual(rec.get("items"), MAX_ITEMS, rec)
        self.assertGreater(rec.get("failed", 0), 0, "a cancelled batch ran every item: %s" % rec)

    # -- concurrency --

    def test_concurrent_mixed(self):
        pub = self.pub["bc-ec"]
        stop = time.monotonic() + 10
        errors = []
        counts = [0] * 16
        bad_digest_text = {}
        pool_msgs = [b"pool %d" % i for i in range(32)]
        signed = self.call("SignBatch", pb.SignBatchRequest(
            key="bc-ec", items=[pb.SignBatchItem(message=m) for m in pool_msgs]))
        pool = list(zip(pool_msgs, [x.signature for x in signed.results]))

        def worker(w):
            rnd = random.Random(w)
            svc = self.d.service_stub()
            try:
                while time.monotonic() < stop and not errors:
                    kind = rnd.choice(("sign", "mac", "verify-mac", "verify"))
                    n = rnd.randint(1, 8)
                    msgs = [b"w%d-%d-%s" % (w, i, os.urandom(6).hex().encode())
                            for i in range(n)]
                    bad = rnd.randrange(n + 1)   # n: none bad
                    if kind == "sign":
                        items = [pb.SignBatchItem(digest=bytes(5)) if i == bad
                                 else pb.SignBatchItem(message=m) for i, m in enumerate(msgs)]
                        r = svc.SignBatch(pb.SignBatchRequest(key="bc-ec", items=items),
                                          timeout=60)
                        assert len(r.results) == n, r
                        for i, res in enumerate(r.results):
                            if i == bad:
                                assert res.status.code == SC.INVALID_ARGUMENT.value[0], res
                                bad_digest_text.setdefault(res.status.message, 0)
                                bad_digest_text[res.status.message] += 1
                            else:
                                assert res.status.code == OK, res
                                assert verify_sig(pub, res.signature, pb.ECDSA, pb.SHA256,
                                                  message=msgs[i]), \
                                    "worker %d item %d: not the signature of its message" % (w, i)
                    elif kind == "mac":
                        r = svc.MacBatch(pb.MacBatchRequest(key="bc-hmac", items=[
                            pb.MacBatchItem(data=m) for m in msgs]), timeout=60)
                        want = [hmac.new(HMAC_MATERIAL, m, hashlib.sha256).digest()
                                for m in msgs]
                        assert [x.mac for x in r.results] == want, \
                            "worker %d: MACs not those of its own items" % w
                    elif kind == "verify":
                        picks = [rnd.randrange(len(pool)) for _ in range(n)]
                        wrong = [rnd.random() < 0.3 for _ in range(n)]
                        items = [pb.VerifyBatchItem(
                            message=pool[p][0] if not bad_ else pool[(p + 1) % len(pool)][0],
                            signature=pool[p][1]) for p, bad_ in zip(picks, wrong)]
                        if bad < n:
                            items[bad] = pb.VerifyBatchItem(message=b"x", signature=bytes(600))
                        r = svc.VerifyBatch(pb.VerifyBatchRequest(key="bc-ec", version=1,
                                                                  items=items), timeout=60)
                        got = [(x.status.code, x.valid) for x in r.results]
                        want = [(SC.RESOURCE_EXHAUSTED.value[0], False) if i == bad
                                else (OK, not wrong[i]) for i in range(n)]
                        assert got == want, (w, got, want)
                    else:
                        macs = [hmac.new(HMAC_MATERIAL, m, hashlib.sha256).digest()
                                for m in msgs]
                        if bad < n:
                            macs[bad] = macs[(bad + 1) % n] if n > 1 else bytes(32)
                        r = svc.VerifyMacBatch(pb.VerifyMacBatchRequest(
                            key="bc-hmac", version=1, items=[
                                pb.VerifyMacBatchItem(data=m, mac=x)
                                for m, x in zip(msgs, macs)]), timeout=60)
                        got = [(x.status.code, x.valid) for x in r.results]
                        assert got == [(OK, i != bad) for i in range(n)], (w, got, bad)
                    counts[w] += 1
            except Exception as e:   # noqa: BLE001 -- reported by the main thread
                errors.append("worker %d: %r" % (w, e))

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            self.assertFalse(t.is_alive(), "a worker hangs")
        self.assertEqual(errors, [])
        self.assertTrue(all(c > 0 for c in counts), counts)
        # One text for the one fault, whichever thread and item.
        self.assertEqual(len(bad_digest_text), 1, bad_digest_text)
        print("concurrent: %d batches by 16 threads in 10 s" % sum(counts), file=sys.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
