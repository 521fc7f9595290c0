#!/usr/bin/python3
"""cofferd end to end, through an independent client (Python grpcio).

Interop: every key type created over the admin socket and used over the
service socket; signatures checked with python3-cryptography on the public
key from GetPublicKey, MACs with Python's hmac on an imported secret, wrap
blobs decrypted with AES-GCM on an imported key. Calls that carry secrets
(Wrap, Unwrap, GenerateDataKey with include_plaintext, AdminService/ImportKey)
are refused unsealed, so they go through SessionService/Call in a sealed
session (tests/integration/coffer_session.py via daemon_fixture.SealedStub), pinned to the
identity the fixture fetched at the first start; an inner error is raised as
SealedRpcError with the inner status, so the assertions read as before (the
sealed channel itself is tested in test_session_grpc.py). Bad input: each failure has
its own test and the status code the contract in coffer.proto names.
Lifecycle: SIGTERM with calls in flight, a second daemon on the same
sockets, restart on the same state, start-up reconciliation.

Run:  COFFER_BUILD_DIR=build /usr/bin/python3 tests/integration/test_daemon_grpc.py [-v] [Class.test]
(tests run as root here; the allow-list test needs root and setpriv.)
"""

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest


import grpc  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from daemon_fixture import (INIT_TOKEN, PYTHON, SRC_DIR, CofferDaemon,  # noqa: E402
                            SealedStub, health_check)
from rpc_common import SC, S, pb, ModuleDaemon  # noqa: E402


MIB = 1 << 20
MAX_MESSAGE = MIB + (64 << 10)   # coffer.proto: one request message
MAX_DATA = MIB                   # data to sign or MAC
MAX_WRAP = 64 << 10              # Wrap plaintext
TIMEOUT = 20                     # seconds, per RPC

ASYM = {  # name -> (type, default scheme, default hash, cryptography hash)
    "ec-p256": (pb.EC_P256, pb.ECDSA, pb.SHA256, hashes.SHA256()),
    "ec-p384": (pb.EC_P384, pb.ECDSA, pb.SHA384, hashes.SHA384()),
    "ed25519": (pb.ED25519, pb.EDDSA, pb.HASH_UNSPECIFIED, None),
    "rsa-2048": (pb.RSA_2048, pb.RSA_PSS, pb.SHA256, hashes.SHA256()),
}
SYM = {"hmac-256": (pb.HMAC_SHA256, pb.MAC), "aes-256": (pb.AES_256, pb.WRAP)}

SHARED = ModuleDaemon()
setUpModule, tearDownModule = SHARED.set_up, SHARED.tear_down


# ---- helpers ----

class CofferTestCase(unittest.TestCase):
    maxDiff = None

    @classmethod
    def use_shared_daemon(cls):
        """The module's daemon and its stubs, plain and sealed, on both sockets."""
        cls.d = SHARED.d
        cls.admin = cls.d.admin_stub()
        cls.svc = cls.d.service_stub()
        cls.ssvc = cls.d.sealed_stub("service")   # Wrap, Unwrap, GenerateDataKey plaintext
        cls.sadmin = cls.d.sealed_stub("admin")   # ImportKey

    def assertCode(self, code, fn, *args, details=None, **kw):
        """fn(*args) must fail with `code` (and details containing `details`);
        for a SealedStub method, the inner status of the sealed call."""
        kw.setdefault("timeout", TIMEOUT)
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kw)
        err = cm.exception
        self.assertEqual(err.code(), code, "details: %r" % err.details())
        if details is not None:
            self.assertIn(details, err.details() or "")
        return err


def public_key(svc, name, version=0):
    r = svc.GetPublicKey(pb.GetPublicKeyRequest(key=name, version=version), timeout=TIMEOUT)
    return r, serialization.load_der_public_key(r.der)


def verify_independently(pub, key_type, sig, message, scheme=None, hash_alg=None,
                         raw=False, prehashed=False):
    """Verify with python3-cryptography; raises InvalidSignature."""
    if isinstance(pub, ed25519.Ed25519PublicKey):
        pub.verify(sig, message)
        return
    algo = asym_utils.Prehashed(hash_alg) if prehashed else hash_alg
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if raw:
            n = (pub.curve.key_size + 7) // 8
            if len(sig) != 2 * n:
                raise InvalidSignature("raw ECDSA signature of %d bytes" % len(sig))
            sig = asym_utils.encode_dss_signature(int.from_bytes(sig[:n], "big"),
                                                  int.from_bytes(sig[n:], "big"))
        pub.verify(sig, message, ec.ECDSA(algo))
        return
    assert isinstance(pub, rsa.RSAPublicKey)
    if scheme == pb.RSA_PKCS1:
        pad = padding.PKCS1v15()
    else:
        pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
    pub.verify(sig, message, pad, algo)


def envelope_aad(name, version, context):
    """The AAD of a wrap blob, as daemon/envelope.c builds it: "coffer.v1.wrap\\0",
    u32 len + name, u32 version, u32 n, then (u32 len + key, u32 len + value)
    sorted by key; integers big-endian."""
    def s(b):
        return struct.pack(">I", len(b)) + b
    out = b"coffer.v1.wrap\0" + s(name.encode()) + struct.pack(">II", version, len(context))
    for k in sorted(context, key=lambda x: x.encode()):
        out += s(k.encode()) + s(context[k].encode())
    return out


def raw_call(channel, method, payload, timeout=TIMEOUT):
    """Send raw bytes to a method (no serializer); returns raw response bytes."""
    return channel.unary_unary(method, request_serializer=None,
                               response_deserializer=None)(payload, timeout=timeout)


# ---- interop ----

class InteropTests(CofferTestCase):
    @classmethod
    def setUpClass(cls):
        cls.use_shared_daemon()
        cls.created = {}
        for name, spec in list(ASYM.items()) + list(SYM.items()):
            cls.created[name] = cls.admin.CreateKey(
                pb.CreateKeyRequest(name=name, type=spec[0]), timeout=60)

    def test_create_key_returns_the_key(self):
        for name, k in self.created.items():
            with self.subTest(key=name):
                typ = (ASYM.get(name) or SYM[name])[0]
                purpose = pb.SIGN if name in ASYM else SYM[name][1]
                self.assertEqual((k.name, k.type, k.purpose, k.primary_version),
                                 (name, typ, purpose, 1))
                self.assertEqual([(v.version, v.state) for v in k.versions], [(1, pb.ENABLED)])
                self.assertGreater(k.create_time, 1600000000)
                self.assertFalse(k.exportable)
                # The same record on both sockets.
                self.assertEqual(self.svc.GetKey(pb.GetKeyRequest(name=name), timeout=TIMEOUT), k)
                self.assertEqual(self.admin.GetKey(pb.GetKeyRequest(name=name), timeout=TIMEOUT), k)

    def test_list_keys_sorted_and_paged(self):
        names = sorted(self.created)
        got = [k.name for k in self.svc.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT).keys]
        self.assertEqual([n for n in got if n in self.created], names)
        self.assertEqual(got, sorted(got))
        # Page through the admin socket two at a time.
        seen, token = [], ""
        for _ in range(100):
            r = self.admin.ListKeys(pb.ListKeysRequest(page_size=2, page_token=token),
                                    timeout=TIMEOUT)
            self.assertLessEqual(len(r.keys), 2)
            seen += [k.name for k in r.keys]
            token = r.next_page_token
            if not token:
                break
        self.assertEqual(seen, got)

    def test_sign_verify_with_cryptography(self):
        msg = b"interop message \x00\x01\xff" * 10
        for name, (typ, scheme, hsh, halg) in ASYM.items():
            with self.subTest(key=name):
                r = self.svc.Sign(pb.SignRequest(key=name, message=msg), timeout=TIMEOUT)
                self.assertEqual((r.version, r.scheme, r.hash), (1, scheme, hsh))
                pk, pub = public_key(self.svc, name)
                self.assertEqual((pk.type, pk.version), (typ, 1))
                self.assertEqual(pub.public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo
                                                  ).decode().strip(), pk.pem.strip())
                verify_independently(pub, typ, r.signature, msg, scheme, halg)
                with self.assertRaises(InvalidSignature):
                    verify_independently(pub, typ, r.signature, msg + b"x", scheme, halg)
                v = self.svc.Verify(pb.VerifyRequest(key=name, version=r.version, message=msg,
                                                     signature=r.signature), timeout=TIMEOUT)
                self.assertTrue(v.valid)
                v = self.svc.Verify(pb.VerifyRequest(key=name, version=r.version,
                                                     message=msg + b"x", signature=r.signature),
                                    timeout=TIMEOUT)
                self.assertFalse(v.valid)

    def test_sign_variants_with_cryptography(self):
        msg = b"variant"
        # (key, request extras, verify kwargs)
        cases = [
            ("ec-p256", dict(ecdsa_raw=True), dict(raw=True)),
            ("ec-p384", dict(ecdsa_raw=True), dict(raw=True)),
            ("ec-p256", dict(hash=pb.SHA512), dict(hash_alg=hashes.SHA512())),
            ("rsa-2048", dict(scheme=pb.RSA_PKCS1), dict(scheme=pb.RSA_PKCS1)),
            ("rsa-2048", dict(hash=pb.SHA384), dict(hash_alg=hashes.SHA384())),
        ]
        for name, extra, vkw in cases:
            with self.subTest(key=name, extra=extra):
                typ, scheme, _, halg = ASYM[name]
                r = self.svc.Sign(pb.SignRequest(key=name, message=msg, **extra), timeout=TIMEOUT)
                kw = dict(scheme=scheme, hash_alg=halg)
                kw.update(vkw)
                _, pub = public_key(self.svc, name)
                verify_independently(pub, typ, r.signature, msg, **kw)
                v = self.svc.Verify(pb.VerifyRequest(key=name, version=r.version, message=msg,
                                                     signature=r.signature, **extra),
                                    timeout=TIMEOUT)
                self.assertTrue(v.valid)
        # A digest computed by the caller (not for Ed25519).
        for name in ("ec-p256", "ec-p384", "rsa-2048"):
            with self.subTest(key=name, digest=True):
                typ, scheme, _, _ = ASYM[name]
                dg = hashlib.sha256(msg).digest()
                r = self.svc.Sign(pb.SignRequest(key=name, digest=dg, hash=pb.SHA256),
                                  timeout=TIMEOUT)
                _, pub = public_key(self.svc, name)
                verify_independently(pub, typ, r.signature, dg, scheme, hashes.SHA256(),
                                     prehashed=True)
                verify_independently(pub, typ, r.signature, msg, scheme, hashes.SHA256())

    def test_mac_and_verify_mac(self):
        data = b"mac me" * 100
        m1 = self.svc.Mac(pb.MacRequest(key="hmac-256", data=data), timeout=TIMEOUT)
        m2 = self.svc.Mac(pb.MacRequest(key="hmac-256", data=data), timeout=TIMEOUT)
        self.assertEqual((len(m1.mac), m1.version), (32, 1))
        self.assertEqual(m1.mac, m2.mac)
        other = self.svc.Mac(pb.MacRequest(key="hmac-256", data=data + b"."), timeout=TIMEOUT)
        self.assertNotEqual(other.mac, m1.mac)
        ok = self.svc.VerifyMac(pb.VerifyMacRequest(key="hmac-256", version=1, data=data,
                                                    mac=m1.mac), timeout=TIMEOUT)
        self.assertTrue(ok.valid)
        bad = bytes([m1.mac[0] ^ 1]) + m1.mac[1:]
        for d, m in ((data, bad), (data + b".", m1.mac), (data, m1.mac[:16])):
            r = self.svc.VerifyMac(pb.VerifyMacRequest(key="hmac-256", version=1, data=d, mac=m),
                                   timeout=TIMEOUT)
            self.assertFalse(r.valid)

    def test_mac_of_imported_secret_matches_python_hmac(self):
        secret = os.urandom(48)
        for name, typ, h in (("imp-hmac-256", pb.HMAC_SHA256, hashlib.sha256),
                             ("imp-hmac-512", pb.HMAC_SHA512, hashlib.sha512)):
            with self.subTest(key=name):
                mat = secret if typ == pb.HMAC_SHA256 else secret + secret
                k = self.sadmin.ImportKey(pb.ImportKeyRequest(name=name, type=typ, material=mat),
                                          timeout=TIMEOUT)
                self.assertEqual((k.purpose, k.primary_version), (pb.MAC, 1))
                for data in (b"", b"abc", os.urandom(5000)):
                    r = self.svc.Mac(pb.MacRequest(key=name, data=data), timeout=TIMEOUT)
                    self.assertEqual(r.mac, hmac.new(mat, data, h).digest())

    def test_wrap_unwrap_with_context(self):
        pt = os.urandom(1000)
        ctx = {"tenant": "acme", "purpose": "db-password", "ünï": "cödé"}
        w = self.ssvc.Wrap(pb.WrapRequest(key="aes-256", plaintext=pt, context=ctx),
                           timeout=TIMEOUT)
        self.assertEqual(w.version, 1)
        blob = w.ciphertext
        self.assertEqual(len(blob), 1 + 4 + 12 + len(pt) + 16)
        self.assertEqual(blob[:5], b"\x01\x00\x00\x00\x01")
        # The same context given in another order.
        u = self.ssvc.Unwrap(pb.UnwrapRequest(key="aes-256", ciphertext=blob,
                                              context=dict(reversed(list(ctx.items())))),
                             timeout=TIMEOUT)
        self.assertEqual((u.plaintext, u.version), (pt, 1))
        # Two wraps of the same plaintext differ (fresh IV).
        w2 = self.ssvc.Wrap(pb.WrapRequest(key="aes-256", plaintext=pt, context=ctx),
                            timeout=TIMEOUT)
        self.assertNotEqual(w2.ciphertext, blob)
        # Empty plaintext and empty context work too.
        e = self.ssvc.Wrap(pb.WrapRequest(key="aes-256", plaintext=b""), timeout=TIMEOUT)
        self.assertEqual(self.ssvc.Unwrap(pb.UnwrapRequest(key="aes-256", ciphertext=e.ciphertext),
                                          timeout=TIMEOUT).plaintext, b"")

    def test_unwrap_with_wrong_context_fails(self):
        ctx = {"tenant": "acme", "purpose": "db-password"}
        blob = self.ssvc.Wrap(pb.WrapRequest(key="aes-256", plaintext=b"secret", context=ctx),
                              timeout=TIMEOUT).ciphertext
        for wrong in ({"tenant": "acme", "purpose": "other"}, {"tenant": "acme"}, {},
                      dict(ctx, extra="1"), {"tenant": "acme", "purpose ": "db-password"}):
            with self.subTest(context=wrong):
                self.assertCode(SC.INVALID_ARGUMENT, self.ssvc.Unwrap,
                                pb.UnwrapRequest(key="aes-256", ciphertext=blob, context=wrong))

    def test_unwrap_tampered_or_foreign_blob_fails(self):
        blob = self.ssvc.Wrap(pb.WrapRequest(key="aes-256", plaintext=b"secret"),
                              timeout=TIMEOUT).ciphertext
        for i in (0 + 20, len(blob) - 1):   # ciphertext body, tag
            bad = bytearray(blob)
            bad[i] ^= 0x01
            with self.subTest(byte=i):
                self.assertCode(SC.INVALID_ARGUMENT, self.ssvc.Unwrap,
                                pb.UnwrapRequest(key="aes-256", ciphertext=bytes(bad)))
        self.assertCode(SC.INVALID_ARGUMENT, self.ssvc.Unwrap,
                        pb.UnwrapRequest(key="aes-256", ciphertext=b"\x02" + blob[1:]))
        self.assertCode(SC.INVALID_ARGUMENT, self.ssvc.Unwrap,
                        pb.UnwrapRequest(key="aes-256", ciphertext=blob[:20]))
        # A version the key does not have.
        self.assertCode(SC.NOT_FOUND, self.ssvc.Unwrap,
                        pb.UnwrapRequest(key="aes-256", ciphertext=blob[:1] +
                                         b"\x00\x00\x00\x09" + blob[5:]))
        # Bound to the key name: another AES key cannot open it.
        self.admin.CreateKey(pb.CreateKeyRequest(name="aes-other", type=pb.AES_256),
                             timeout=TIMEOUT)
        self.assertCode(SC.INVALID_ARGUMENT, self.ssvc.Unwrap,
                        pb.UnwrapRequest(key="aes-other", ciphertext=blob))

    def test_wrap_blob_decrypts_with_aesgcm(self):
        """The blob layout and AAD (daemon/envelope.c) with an imported key."""
        key = os.urandom(32)
        self.sadmin.ImportKey(pb.ImportKeyRequest(name="imp-aes", type=pb.AES_256, material=key),
                              timeout=TIMEOUT)
        pt, ctx = b"envelope plaintext", {"b": "2", "a": "1"}
        blob = self.ssvc.Wrap(pb.WrapRequest(key="imp-aes", plaintext=pt, context=ctx),
                              timeout=TIMEOUT).ciphertext
        version = struct.unpack(">I", blob[1:5])[0]
        self.assertEqual((blob[0], version), (1, 1))
        got = AESGCM(key).decrypt(blob[5:17], blob[17:], envelope_aad("imp-aes", 1, ctx))
        self.assertEqual(got, pt)
        # And the other way: a blob made here unwraps in the daemon.
        iv = os.urandom(12)
        mine = b"\x01" + struct.pack(">I", 1) + iv + AESGCM(key).encrypt(
            iv, b"made by python", envelope_aad("imp-aes", 1, ctx))
        u = self.ssvc.Unwrap(pb.UnwrapRequest(key="imp-aes", ciphertext=mine, context=ctx),
                             timeout=TIMEOUT)
        self.assertEqual(u.plaintext, b"made by python")

    def test_generate_data_key(self):
        ctx = {"file": "backup-1"}
        g = self.ssvc.GenerateDataKey(pb.GenerateDataKeyRequest(key="aes-256", context=ctx,
                                                                include_plaintext=True),
                                      timeout=TIMEOUT)
        self.assertEqual((len(g.plaintext), g.version), (32, 1))
        u = self.ssvc.Unwrap(pb.UnwrapRequest(key="aes-256", ciphertext=g.ciphertext, context=ctx),
                             timeout=TIMEOUT)
        self.assertEqual(u.plaintext, g.plaintext)
        g2 = self.ssvc.GenerateDataKey(pb.GenerateDataKeyRequest(key="aes-256", length=16,
                                                                 include_plaintext=True),
                                       timeout=TIMEOUT)
        self.assertEqual(len(g2.plaintext), 16)
        self.assertNotEqual(g2.plaintext, g.plaintext[:16])
        g3 = self.svc.GenerateDataKey(pb.GenerateDataKeyRequest(key="aes-256", length=24),
                                      timeout=TIMEOUT)
        self.assertEqual(g3.plaintext, b"")
        self.assertEqual(len(self.ssvc.Unwrap(pb.UnwrapRequest(key="aes-256",
                                                               ciphertext=g3.ciphertext),
                                              timeout=TIMEOUT).plaintext), 24)
        self.assertCode(SC.INVALID_ARGUMENT, self.svc.GenerateDataKey,
                        pb.GenerateDataKeyRequest(key="aes-256", length=17))

    def test_rotation_wrap_rewrap(self):
        self.admin.CreateKey(pb.CreateKeyRequest(name="rot-aes", type=pb.AES_256), timeout=TIMEOUT)
        pt, ctx = os.urandom(64), {"k": "v"}
        old = self.ssvc.Wrap(pb.WrapRequest(key="rot-aes", plaintext=pt, context=ctx),
                             timeout=TIMEOUT)
        self.assertEqual(old.version, 1)
        k = self.admin.RotateKey(pb.RotateKeyRequest(name="rot-aes"), timeout=TIMEOUT)
        self.assertEqual(k.primary_version, 2)
        self.assertEqual([(v.version, v.state) for v in k.versions],
                         [(1, pb.ENABLED), (2, pb.ENABLED)])
        rw = self.svc.Rewrap(pb.RewrapRequest(key="rot-aes", ciphertext=old.ciphertext,
                                              context=ctx), timeout=TIMEOUT)
        self.assertEqual((rw.version, rw.previous_version), (2, 1))
        self.assertEqual(rw.ciphertext[:5], b"\x01\x00\x00\x00\x02")
        u = self.ssvc.Unwrap(pb.UnwrapRequest(key="rot-aes", ciphertext=rw.ciphertext, context=ctx),
                             timeout=TIMEOUT)
        self.assertEqual((u.plaintext, u.version), (pt, 2))
        # The old blob still opens, under version 1.
        u = self.ssvc.Unwrap(pb.UnwrapRequest(key="rot-aes", ciphertext=old.ciphertext,
                                              context=ctx), timeout=TIMEOUT)
        self.assertEqual((u.plaintext, u.version), (pt, 1))
        # Rewrap needs the right context too.
        self.assertCode(SC.INVALID_ARGUMENT, self.svc.Rewrap,
                        pb.RewrapRequest(key="rot-aes", ciphertext=old.ciphertext))
        self.assertEqual(self.ssvc.Wrap(pb.WrapRequest(key="rot-aes", plaintext=b"x"),
                                        timeout=TIMEOUT).version, 2)
        g = self.svc.GenerateDataKey(pb.GenerateDataKeyRequest(key="rot-aes"), timeout=TIMEOUT)
        self.assertEqual(g.version, 2)

    def test_rotation_sign_and_mac(self):
        msg = b"rotate me"
        for name, typ in (("rot-ec", pb.EC_P256), ("rot-ed", pb.ED25519)):
            with self.subTest(key=name):
                self.admin.CreateKey(pb.CreateKeyRequest(name=name, type=typ), timeout=TIMEOUT)
                s1 = self.svc.Sign(pb.SignRequest(key=name, message=msg), timeout=TIMEOUT)
                _, pub1 = public_key(self.svc, name)
                k = self.admin.RotateKey(pb.RotateKeyRequest(name=name), timeout=TIMEOUT)
                self.assertEqual(k.primary_version, 2)
                s2 = self.svc.Sign(pb.SignRequest(key=name, message=msg), timeout=TIMEOUT)
                self.assertEqual((s1.version, s2.version), (1, 2))
                pk2, pub2 = public_key(self.svc, name)
                self.assertEqual(pk2.version, 2)
                pk1, pub1b = public_key(self.svc, name, version=1)
                self.assertEqual(pk1.version, 1)
                self.assertEqual(pk1.der, pub1.public_bytes(serialization.Encoding.DER,
                                 serialization.PublicFormat.SubjectPublicKeyInfo))
                self.assertNotEqual(pk1.der, pk2.der)
                verify_independently(pub1, typ, s1.signature, msg, pb.ECDSA, hashes.SHA256())
                verify_independently(pub2, typ, s2.signature, msg, pb.ECDSA, hashes.SHA256())
                with self.assertRaises(InvalidSignature):
                    verify_independently(pub1, typ, s2.signature, msg, pb.ECDSA, hashes.SHA256())
                for sig, ver, valid in ((s1, 1, True), (s2, 2, True), (s2, 1, False),
                                        (s1, 2, False)):
                    v = self.svc.Verify(pb.VerifyRequest(key=name, version=ver, message=msg,
                                                         signature=sig.signature),
                                        timeout=TIMEOUT)
                    self.assertEqual(v.valid, valid, (sig.version, ver))
                # Signing with an explicit old version still works.
                s1b = self.svc.Sign(pb.SignRequest(key=name, version=1, message=msg),
                                    timeout=TIMEOUT)
                self.assertEqual(s1b.version, 1)
                verify_independently(pub1, typ, s1b.signature, msg, pb.ECDSA, hashes.SHA256())
        self.admin.CreateKey(pb.CreateKeyRequest(name="rot-mac", type=pb.HMAC_SHA384),
                             timeout=TIMEOUT)
        m1 = self.svc.Mac(pb.MacRequest(key="rot-mac", data=msg), timeout=TIMEOUT)
        self.assertEqual(len(m1.mac), 48)
        self.admin.RotateKey(pb.RotateKeyRequest(name="rot-mac"), timeout=TIMEOUT)
        m2 = self.svc.Mac(pb.MacRequest(key="rot-mac", data=msg), timeout=TIMEOUT)
        self.assertEqual((m1.version, m2.version), (1, 2))
        self.assertNotEqual(m1.mac, m2.mac)
        for m, ver, valid in ((m1, 1, True), (m2, 2, True), (m1, 2, False)):
            r = self.svc.VerifyMac(pb.VerifyMacRequest(key="rot-mac", version=ver, data=msg,
                                                       mac=m.mac), timeout=TIMEOUT)
            self.assertEqual(r.valid, valid)


# ---- bad input ----

class BadInputTests(CofferTestCase):
    @classmethod
    def setUpClass(cls):
        cls.use_shared_daemon()
        cls.svc_ch = cls.d.channel("service")
        cls.admin_ch = cls.d.channel("admin")
        for name, typ in (("bad-hmac", pb.HMAC_SHA256), ("bad-ec", pb.EC_P256),
                          ("bad-aes", pb.AES_256)):
            cls.admin.CreateKey(pb.CreateKeyRequest(name=name, type=typ), timeout=TIMEOUT)

    def test_malformed_protobuf(self):
        self.assertCode(SC.INVALID_ARGUMENT, raw_call, self.svc_ch,
                        "/coffer.v1.KeyService/Sign", b"\xff\xff\xff")

    def test_malformed_protobuf_admin(self):
        # Field 1 (name) as a length-delimited string claiming 100 bytes.
        self.assertCode(SC.INVALID_ARGUMENT, raw_call, self.admin_ch,
                        "/coffer.v1.AdminService/CreateKey", b"\x0a\x64abc")

    def test_unknown_method(self):
        for path in ("/coffer.v1.KeyService/NoSuchMethod", "/no.such.Service/Sign",
                     "/coffer.v1.KeyService/sign"):
            with self.subTest(path=path):
                self.assertCode(SC.UNIMPLEMENTED, raw_call, self.svc_ch, path, b"")
        self.assertCode(SC.UNIMPLEMENTED, raw_call, self.admin_ch,
                        "/coffer.v1.AdminService/DeleteKey", b"")

    def test_oversized_message(self):
        self.assertCode(SC.RESOURCE_EXHAUSTED, self.svc.Sign,
                        pb.SignRequest(key="bad-ec", message=b"\0" * (2 * MIB)))
        # Just above the 1 MiB + 64 KiB message cap.
        self.assertCode(SC.RESOURCE_EXHAUSTED, raw_call, self.svc_ch,
                        "/coffer.v1.KeyService/Mac",
                        pb.MacRequest(key="bad-hmac",
                                      data=b"\0" * (MAX_MESSAGE - 10)).SerializeToString())
        # The daemon still serves afterwards.
        self.svc.Mac(pb.MacRequest(key="bad-hmac", data=b"ok"), timeout=TIMEOUT)

    def test_data_above_limit(self):
        big = b"\0" * (MAX_DATA + 1)
        self.assertLess(len(pb.MacRequest(key="bad-hmac", data=big).SerializeToString()),
                        MAX_MESSAGE)
        for fn, req in ((self.svc.Mac, pb.MacRequest(key="bad-hmac", data=big)),
                        (self.svc.VerifyMac, pb.VerifyMacRequest(key="bad-hmac", version=1,
                                                                 data=big, mac=b"\0" * 32)),
                        (self.svc.Sign, pb.SignRequest(key="bad-ec", message=big)),
                        (self.svc.Verify, pb.VerifyRequest(key="bad-ec", version=1, message=big,
                                                           signature=b"\0" * 64))):
            with self.subTest(req=type(req).__name__):
                self.assertCode(SC.RESOURCE_EXHAUSTED, fn, req, details=str(MAX_DATA))
        # Exactly at the limit is fine.
        self.svc.Mac(pb.MacRequest(key="bad-hmac", data=big[:-1]), timeout=TIMEOUT)

    def test_wrap_plaintext_above_limit(self):
        self.assertCode(SC.RESOURCE_EXHAUSTED, self.ssvc.Wrap,
                        pb.WrapRequest(key="bad-aes", plaintext=b"\0" * (MAX_WRAP + 1)),
                        details=str(MAX_WRAP))
        self.ssvc.Wrap(pb.WrapRequest(key="bad-aes", plaintext=b"\0" * MAX_WRAP), timeout=TIMEOUT)

    def test_context_above_limits(self):
        many = {"k%02d" % i: "v" for i in range(17)}
        self.assertCode(SC.RESOURCE_EXHAUSTED, self.ssvc.Wrap,
                        pb.WrapRequest(key="bad-aes", plaintext=b"x", context=many),
                        details="16")
        self.assertCode(SC.RESOURCE_EXHAUSTED, self.ssvc.Wrap,
                        pb.WrapRequest(key="bad-aes", plaintext=b"x", context={"k" * 129: "v"}),
                        details="128")
        self.assertCode(SC.RESOURCE_EXHAUSTED, self.ssvc.Wrap,
                        pb.WrapRequest(key="bad-aes", plaintext=b"x", context={"k": "v" * 1025}),
                        details="1024")
        self.ssvc.Wrap(pb.WrapRequest(key="bad-aes", plaintext=b"x",
                                      context={"k%02d" % i: "v" * 1024 for i in range(16)}),
                       timeout=TIMEOUT)

    def test_unknown_key(self):
        self.assertCode(SC.NOT_FOUND, self.svc.Sign,
                        pb.SignRequest(key="no-such-key", message=b"x"))
        self.assertCode(SC.NOT_FOUND, self.svc.Mac, pb.MacRequest(key="no-such-key", data=b"x"))
        self.assertCode(SC.NOT_FOUND, self.svc.GetPublicKey,
                        pb.GetPublicKeyRequest(key="no-such-key"))
        self.assertCode(SC.NOT_FOUND, self.svc.GetKey, pb.GetKeyRequest(name="no-such-key"))
        self.assertCode(SC.NOT_FOUND, self.admin.RotateKey, pb.RotateKeyRequest(name="no-such-key"))
        self.assertCode(SC.NOT_FOUND, self.svc.Sign, pb.SignRequest(key="bad-ec", version=7,
                                                                    message=b"x"))

    def test_wrong_purpose(self):
        # The messages name the purpose, so that a sealed call's FAILED_PRECONDITION
        # cannot be the "must be sealed" refusal instead.
        self.assertCode(SC.FAILED_PRECONDITION, self.svc.Sign,
                        pb.SignRequest(key="bad-hmac", message=b"x"), details="needs a sign key")
        self.assertCode(SC.FAILED_PRECONDITION, self.ssvc.Wrap,
                        pb.WrapRequest(key="bad-ec", plaintext=b"x"), details="needs a wrap key")
        self.assertCode(SC.FAILED_PRECONDITION, self.ssvc.Unwrap,
                        pb.UnwrapRequest(key="bad-hmac",
                                         ciphertext=b"\x01\0\0\0\x01" + b"\0" * 40),
                        details="needs a wrap key")
        self.assertCode(SC.FAILED_PRECONDITION, self.svc.Mac,
                        pb.MacRequest(key="bad-aes", data=b"x"), details="needs a mac key")
        self.assertCode(SC.FAILED_PRECONDITION, self.svc.GetPublicKey,
                        pb.GetPublicKeyRequest(key="bad-hmac"))
        self.assertCode(SC.FAILED_PRECONDITION, self.svc.GenerateDataKey,
                        pb.GenerateDataKeyRequest(key="bad-hmac"), details="needs a wrap key")
        self.assertCode(SC.FAILED_PRECONDITION, self.ssvc.GenerateDataKey,
                        pb.GenerateDataKeyRequest(key="bad-ec", include_plaintext=True),
                        details="needs a wrap key")

    def test_admin_methods_not_on_service_socket(self):
        on_service = S.pb_grpc.AdminServiceStub(self.svc_ch)
        self.assertCode(SC.UNIMPLEMENTED, on_service.CreateKey,
                        pb.CreateKeyRequest(name="via-service", type=pb.EC_P256))
        self.assertCode(SC.UNIMPLEMENTED, on_service.RotateKey, pb.RotateKeyRequest(name="bad-ec"))
        self.assertCode(SC.UNIMPLEMENTED, on_service.ImportKey,
                        pb.ImportKeyRequest(name="via-service", type=pb.AES_256,
                                            material=b"\0" * 32))
        self.assertCode(SC.UNIMPLEMENTED, on_service.GetKey, pb.GetKeyRequest(name="bad-ec"))
        # Sealing does not open a way around the socket split: sealed on the
        # service socket, the admin methods are still not served (inner status).
        sealed = SealedStub(self.svc_ch, "AdminService", self.d.identity)
        self.addCleanup(sealed.close)
        self.assertCode(SC.UNIMPLEMENTED, sealed.ImportKey,
                        pb.ImportKeyRequest(name="via-service", type=pb.AES_256,
                                            material=b"\0" * 32),
                        details="not served on the service socket")
        self.assertCode(SC.UNIMPLEMENTED, sealed.CreateKey,
                        pb.CreateKeyRequest(name="via-service", type=pb.EC_P256),
                        details="not served on the service socket")
        self.assertCode(SC.UNIMPLEMENTED, sealed.RotateKey, pb.RotateKeyRequest(name="bad-ec"))
        self.assertEqual(sealed.sessions_opened, 1)   # inner errors keep the session
        self.assertCode(SC.NOT_FOUND, self.svc.GetKey, pb.GetKeyRequest(name="via-service"))
        self.assertEqual(self.svc.GetKey(pb.GetKeyRequest(name="bad-ec"),
                                         timeout=TIMEOUT).primary_version, 1)

    def test_key_service_not_on_admin_socket(self):
        on_admin = S.pb_grpc.KeyServiceStub(self.admin_ch)
        self.assertCode(SC.UNIMPLEMENTED, on_admin.Sign, pb.SignRequest(key="bad-ec", message=b"x"))
        self.assertCode(SC.UNIMPLEMENTED, on_admin.Wrap,
                        pb.WrapRequest(key="bad-aes", plaintext=b"x"))
        self.assertCode(SC.UNIMPLEMENTED, on_admin.GetKey, pb.GetKeyRequest(name="bad-ec"))
        sealed = SealedStub(self.admin_ch, "KeyService", self.d.identity)
        self.addCleanup(sealed.close)
        for fn, req in ((sealed.Wrap, pb.WrapRequest(key="bad-aes", plaintext=b"x")),
                        (sealed.Unwrap, pb.UnwrapRequest(key="bad-aes", ciphertext=b"\x01")),
                        (sealed.GenerateDataKey,
                         pb.GenerateDataKeyRequest(key="bad-aes", include_plaintext=True)),
                        (sealed.Sign, pb.SignRequest(key="bad-ec", message=b"x"))):
            with self.subTest(method=fn.args[0]):
                self.assertCode(SC.UNIMPLEMENTED, fn, req,
                                details="not served on the admin socket")

    def test_invalid_arguments(self):
        cases = [
            (self.svc.Sign, pb.SignRequest()),                                   # no key name
            (self.svc.Sign, pb.SignRequest(key="Bad Name", message=b"x")),
            (self.svc.Sign, pb.SignRequest(key="-lead", message=b"x")),
            (self.svc.Sign, pb.SignRequest(key="a" * 129, message=b"x")),
            (self.svc.Sign, pb.SignRequest(key="bad-ec", message=b"x", digest=b"\0" * 32,
                                           hash=pb.SHA256)),
            (self.svc.Sign, pb.SignRequest(key="bad-ec", digest=b"\0" * 48)),  # not SHA-256
            (self.svc.Sign, pb.SignRequest(key="bad-ec", digest=b"\0" * 31, hash=pb.SHA256)),
            (self.svc.Sign, pb.SignRequest(key="bad-ec", message=b"x", hash=99)),
            (self.svc.Sign, pb.SignRequest(key="bad-ec", message=b"x", scheme=99)),
            (self.svc.Verify, pb.VerifyRequest(key="bad-ec", message=b"x", signature=b"s")),
            (self.svc.VerifyMac, pb.VerifyMacRequest(key="bad-hmac", data=b"x", mac=b"m")),
            (self.ssvc.Unwrap, pb.UnwrapRequest(key="bad-aes", ciphertext=b"")),
            (self.admin.CreateKey, pb.CreateKeyRequest(name="no-type")),
            (self.admin.CreateKey, pb.CreateKeyRequest(name="bad-type", type=77)),
            (self.admin.CreateKey, pb.CreateKeyRequest(name="exp-ec", type=pb.EC_P256,
                                                       exportable=True)),
            (self.sadmin.ImportKey, pb.ImportKeyRequest(name="short", type=pb.HMAC_SHA256,
                                                        material=b"\0" * 16)),
            (self.sadmin.ImportKey, pb.ImportKeyRequest(name="imp-ec", type=pb.EC_P256,
                                                        material=b"\0" * 32)),
            (self.admin.ListKeys, pb.ListKeysRequest(page_size=1001)),
        ]
        for fn, req in cases:
            with self.subTest(req="%s %s" % (type(req).__name__, str(req).replace("\n", " ")[:80])):
                self.assertCode(SC.INVALID_ARGUMENT, fn, req)

    def test_exportable_refused(self):
        """Issue 14 (6): nothing leaves the token, so exportable is refused
        with what to do instead, and no key is made."""
        text = ("exportable keys are not supported: Coffer never exports key material "
                "(use Wrap/GenerateDataKey for data keys); %s the key without exportable")
        err = self.assertCode(SC.INVALID_ARGUMENT, self.admin.CreateKey,
                              pb.CreateKeyRequest(name="exp-mac", type=pb.HMAC_SHA256,
                                                  exportable=True))
        self.assertEqual(err.details(), text % "create")
        err = self.assertCode(SC.INVALID_ARGUMENT, self.sadmin.ImportKey,
                              pb.ImportKeyRequest(name="exp-aes", type=pb.AES_256,
                                                  material=os.urandom(32), exportable=True))
        self.assertEqual(err.details(), text % "import")
        for name in ("exp-mac", "exp-aes"):
            self.assertCode(SC.NOT_FOUND, self.admin.GetKey, pb.GetKeyRequest(name=name))
        # without the flag the same requests succeed, and the key says not exportable
        k = self.admin.CreateKey(pb.CreateKeyRequest(name="exp-mac", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)
        self.assertFalse(k.exportable)

    def test_create_existing_key(self):
        self.assertCode(SC.ALREADY_EXISTS, self.admin.CreateKey,
                        pb.CreateKeyRequest(name="bad-ec", type=pb.EC_P256))
        self.assertCode(SC.ALREADY_EXISTS, self.sadmin.ImportKey,
                        pb.ImportKeyRequest(name="bad-aes", type=pb.AES_256, material=b"\0" * 32))

    def test_health(self):
        h = S.health_pb
        for sock, svc in ((self.d.service_socket, "coffer.v1.KeyService"),
                          (self.d.admin_socket, "coffer.v1.AdminService")):
            self.assertEqual(health_check(sock, ""), h.HealthCheckResponse.SERVING)
            self.assertEqual(health_check(sock, svc), h.HealthCheckResponse.SERVING)
            with self.assertRaises(grpc.RpcError) as cm:
                health_check(sock, "no.such.Service")
            self.assertEqual(cm.exception.code(), SC.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as cm:
            health_check(self.d.service_socket, "coffer.v1.AdminService")
        self.assertEqual(cm.exception.code(), SC.NOT_FOUND)


# ---- peer credentials ----

NOBODY_CLIENT = r'''
import sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[2])
import grpc
from coffer_test_health import health_pb2 as h
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    check = ch.unary_unary("/grpc.health.v1.Health/Check",
                           request_serializer=h.HealthCheckRequest.SerializeToString,
                           response_deserializer=h.HealthCheckResponse.FromString)
    try:
        r = check(h.HealthCheckRequest(), timeout=5)
        print("OK", r.status)
    except grpc.RpcError as e:
        print(e.code().name, e.details())
'''


class AllowListTests(CofferTestCase):
    def test_uid_not_on_allow_list_is_refused(self):
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            self.skipTest("needs root and setpriv")
        d = CofferDaemon(config={"service": {"mode": "0666"}})
        self.addCleanup(d.cleanup)
        d.make_traversable()
        d.start()
        self.assertEqual(os.stat(d.service_socket).st_mode & 0o777, 0o666)
        self.assertEqual(os.stat(d.admin_socket).st_mode & 0o777, 0o600)
        script = os.path.join(d.dir, "client_nobody.py")
        with open(script, "w") as f:
            f.write(NOBODY_CLIENT)
        os.chmod(script, 0o644)
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            PYTHON, "-B", script, d.service_socket, S.dir],
                           capture_output=True, text=True, timeout=30, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("UNAVAILABLE"), r.stdout + r.stderr)
        self.assertTrue(d.wait_for_log("refused connection from uid 65534"), d.log())
        # root (the daemon's own uid, the default allow-list) is served.
        self.assertEqual(health_check(d.service_socket), 1)
        svc = d.service_stub()
        self.assertCode(SC.NOT_FOUND, svc.GetKey, pb.GetKeyRequest(name="nothing"))
        d.stop()


# Connections of uid nobody, one after another: a Mac it has no grant for
# and a GetKey it has, on a fresh connection each time. Prints JSON.
CHURN_CLIENT = r'''
import json, sys
sys.path.insert(0, sys.argv[2])
import grpc
from coffer.v1 import coffer_pb2 as pb
out = []
for _ in range(int(sys.argv[3])):
    with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
        mac = ch.unary_unary("/coffer.v1.KeyService/Mac",
                             request_serializer=pb.MacRequest.SerializeToString,
                             response_deserializer=pb.MacResponse.FromString)
        get = ch.unary_unary("/coffer.v1.KeyService/GetKey",
                             request_serializer=pb.GetKeyRequest.SerializeToString,
                             response_deserializer=pb.Key.FromString)
        row = []
        try:
            mac(pb.MacRequest(key="ci-mac", data=b"d"), timeout=20)
            row += ["OK", ""]
        except grpc.RpcError as e:
            row += [e.code().name, e.details()]
        try:
            get(pb.GetKeyRequest(name="ci-mac"), timeout=20)
            row.append("OK")
        except grpc.RpcError as e:
            row.append(e.code().name + ": " + e.details())
        out.append(row)
print(json.dumps(out))
'''


class ConnectionIdentityTests(CofferTestCase):
    def test_each_connection_is_its_own_caller(self):
        """cofferd reads who is on a connection once, when it is accepted,
        and keeps it by descriptor number: connections of two uids opened and
        closed side by side (their numbers reused in turn) must each be
        served as their own caller, call after call."""
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            self.skipTest("needs root and setpriv")
        d = CofferDaemon(config={"service": {"mode": "0666", "allow_uids": "0 65534"}})
        self.addCleanup(d.cleanup)
        d.make_traversable()
        d.start()
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="ci-mac", type=pb.HMAC_SHA256), timeout=TIMEOUT)
        adm.CreatePrincipal(pb.CreatePrincipalRequest(name="ci-nobody", uids=[65534]),
                            timeout=TIMEOUT)
        adm.GrantPrincipal(pb.GrantRequest(name="ci-nobody", grant=pb.Grant(
            key_pattern="ci-mac", operations=[pb.OP_GET_PUBLIC_KEY])), timeout=TIMEOUT)
        script = os.path.join(d.dir, "churn_nobody.py")
        with open(script, "w") as f:
            f.write(CHURN_CLIENT)
        os.chmod(script, 0o644)
        rounds, mine = 60, []

        def as_root():
            for _ in range(rounds):
                with grpc.insecure_channel("unix:" + d.service_socket) as ch:
                    mac = ch.unary_unary("/coffer.v1.KeyService/Mac",
                                         request_serializer=pb.MacRequest.SerializeToString,
                                         response_deserializer=pb.MacResponse.FromString)
                    try:
                        mine.append(len(mac(pb.MacRequest(key="ci-mac", data=b"d"),
                                            timeout=TIMEOUT).mac))
                    except grpc.RpcError as e:
                        mine.append("%s: %s" % (e.code().name, e.details()))

        t = threading.Thread(target=as_root)
        t.start()
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            PYTHON, "-B", script, d.service_socket, S.dir, str(rounds)],
                           capture_output=True, text=True, timeout=120, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        t.join()
        self.assertEqual(r.returncode, 0, r.stderr)
        theirs = json.loads(r.stdout)
        self.assertEqual(mine, [32] * rounds)
        self.assertEqual(theirs, [["PERMISSION_DENIED",
                                   "principal ci-nobody may not mac with key ci-mac (no grant)",
                                   "OK"]]
                         * rounds)
        d.stop()


# ---- principals ----

class PrincipalTests(CofferTestCase):
    """Deny by default, grants and rate limits as an independent client sees
    them: status codes, messages and the retry-after-ms trailing metadata."""

    def test_no_principal_then_grants(self):
        d = CofferDaemon(grant_all=False)
        self.addCleanup(d.cleanup)
        d.start()
        adm, svc = d.admin_stub(), d.service_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="p-ec", type=pb.EC_P256), timeout=TIMEOUT)
        sign = pb.SignRequest(key="p-ec", message=b"m")
        # Health and the identity are public; everything else needs a principal.
        self.assertEqual(health_check(d.service_socket), 1)
        self.assertCode(SC.UNAUTHENTICATED, svc.Sign, sign, details="no principal for uid %d"
                        % os.geteuid())
        self.assertCode(SC.UNAUTHENTICATED, svc.ListKeys, pb.ListKeysRequest())
        adm.CreatePrincipal(pb.CreatePrincipalRequest(name="me", uids=[os.geteuid()]),
                            timeout=TIMEOUT)
        self.assertCode(SC.PERMISSION_DENIED, svc.Sign, sign,
                        details="principal me may not sign with key p-ec")
        adm.GrantPrincipal(pb.GrantRequest(name="me", grant=pb.Grant(
            key_pattern="p-*", operations=[pb.OP_VERIFY])), timeout=TIMEOUT)
        self.assertCode(SC.PERMISSION_DENIED, svc.Sign, sign)
        p = adm.GrantPrincipal(pb.GrantRequest(name="me", grant=pb.Grant(
            key_pattern="p-*", operations=[pb.OP_SIGN])), timeout=TIMEOUT)
        self.assertEqual(sorted(p.grants[0].operations), [pb.OP_SIGN, pb.OP_VERIFY])
        svc.Sign(sign, timeout=TIMEOUT)
        self.assertTrue(d.wait_for_log("denied: principal me"), d.log())
        # Admin calls' own refusals.
        self.assertCode(SC.ALREADY_EXISTS, adm.CreatePrincipal,
                        pb.CreatePrincipalRequest(name="other", uids=[os.geteuid()]))
        self.assertCode(SC.INVALID_ARGUMENT, adm.CreatePrincipal,
                        pb.CreatePrincipalRequest(name="none"))
        self.assertCode(SC.NOT_FOUND, adm.GetPrincipal, pb.GetPrincipalRequest(name="ghost"))
        self.assertCode(SC.INVALID_ARGUMENT, adm.GrantPrincipal, pb.GrantRequest(
            name="me", grant=pb.Grant(key_pattern="p-*", operations=[42])))
        d.stop()

    def test_rate_limit_retry_after(self):
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        adm, svc = d.admin_stub(), d.service_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="r-mac", type=pb.HMAC_SHA256), timeout=TIMEOUT)
        adm.CreateKey(pb.CreateKeyRequest(name="r-aes", type=pb.AES_256), timeout=TIMEOUT)
        adm.SetRateLimit(pb.SetRateLimitRequest(name=CofferDaemon.PRINCIPAL, limit=pb.RateLimit(
            operation=pb.OP_MAC, per_second=0.5, burst=1)), timeout=TIMEOUT)
        mac = pb.MacRequest(key="r-mac", data=b"d")
        svc.Mac(mac, timeout=TIMEOUT)
        err = self.assertCode(SC.RESOURCE_EXHAUSTED, svc.Mac, mac, details="rate limit")
        trailers = dict(err.trailing_metadata())
        self.assertIn("retry-after-ms", trailers)
        self.assertTrue(1 <= int(trailers["retry-after-ms"]) <= 2000, trailers)
        # Inside a session the inner result carries it.
        adm.SetRateLimit(pb.SetRateLimitRequest(name=CofferDaemon.PRINCIPAL, limit=pb.RateLimit(
            operation=pb.OP_WRAP, per_second=0.5, burst=1)), timeout=TIMEOUT)
        sealed = d.sealed_stub()
        sealed.Wrap(pb.WrapRequest(key="r-aes", plaintext=b"x"), timeout=TIMEOUT)
        err = self.assertCode(SC.RESOURCE_EXHAUSTED, sealed.Wrap,
                              pb.WrapRequest(key="r-aes", plaintext=b"x"))
        self.assertIn("rate limit", err.details())
        d.stop()


# ---- lifecycle ----

class LifecycleTests(CofferTestCase):
    def new_daemon(self, **kw):
        d = CofferDaemon(**kw)
        self.addCleanup(d.cleanup)
        return d.start()

    def test_sigterm_finishes_calls_in_flight(self):
        """SIGTERM while RSA-4096 Sign calls are being served: every call that
        reached the daemon completes with OK, and the daemon exits 0.

        The calls are all sent at once, then a health check on the same
        connection; SIGTERM goes out once that is answered (the daemon has
        read every call: a call still on its way when the daemon shuts down
        is not "in flight" and may be refused) and one call has finished. If every call had already finished by then the attempt
        proves nothing and is repeated."""
        n = 48   # under the 64 requested calls per method the daemon arms at shutdown
        d = self.new_daemon()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="rsa4k", type=pb.RSA_4096), timeout=60)
        _, pub = public_key(d.service_stub(), "rsa4k")
        for attempt in range(3):
            if not d.running:
                d.start()
            ch = d.channel("service")
            grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
            svc = S.pb_grpc.KeyServiceStub(ch)
            first = threading.Event()
            futs = []
            for i in range(n):
                f = svc.Sign.future(pb.SignRequest(key="rsa4k", message=b"in flight %d" % i),
                                    timeout=60)
                f.add_done_callback(lambda _f: first.set())
                futs.append(f)
            # A health check sent after the calls on the same connection:
            # its answer means the daemon has read every call before it.
            S.health_pb_grpc.HealthStub(ch).Check(S.health_pb.HealthCheckRequest(),
                                                  timeout=30)
            self.assertTrue(first.wait(30), "no Sign call finished")
            d.send_signal(signal.SIGTERM)
            done_at_signal = sum(f.done() for f in futs)
            # A new client is refused at once while the calls finish (before,
            # it was queued unanswered until the daemon exited).
            refused = None
            deadline = time.monotonic() + 5
            while refused is None and time.monotonic() < deadline and d.running:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.settimeout(1)
                    try:
                        probe.connect(d.service_socket)
                    except ConnectionRefusedError:
                        refused = d.running
                    except OSError:
                        pass
                time.sleep(0.01)
            results = []
            for f in futs:
                try:
                    results.append(("OK", f.result()))
                except grpc.RpcError as e:
                    results.append((e.code().name, e.details()))
            rc = d.wait(30)
            d.close_channels()
            if done_at_signal < n:
                break
        self.assertLess(done_at_signal, n, "every call finished before SIGTERM, 3 times")
        self.assertTrue(refused, "a new connection was not refused during the grace")
        bad = [r for r in results if r[0] != "OK"]
        self.assertEqual(bad, [], "%d of %d calls in flight at SIGTERM failed (%d had finished "
                         "before it)" % (len(bad), n, done_at_signal))
        for i, (_, r) in enumerate(results):
            verify_independently(pub, pb.RSA_4096, r.signature, b"in flight %d" % i, pb.RSA_PSS,
                                 hashes.SHA256())
        self.assertEqual(rc, 0, d.log())
        log = d.log(all_starts=False)
        self.assertIn("SIGTERM: finishing calls in flight", log)
        self.assertIn("stopped", log)
        self.assertFalse(os.path.exists(d.service_socket))
        self.assertFalse(os.path.exists(d.admin_socket))

    def test_sigint_and_idle_sigterm_exit_0(self):
        d = self.new_daemon()
        d.stop(signal.SIGINT)
        self.assertIn("SIGINT: finishing calls in flight", d.log())
        d.start()
        d.stop(signal.SIGTERM)

    def test_restart_after_sigkill(self):
        d = self.new_daemon()
        k = d.admin_stub().CreateKey(pb.CreateKeyRequest(name="survivor", type=pb.HMAC_SHA256),
                                     timeout=TIMEOUT)
        d.stop(signal.SIGKILL, expect=-signal.SIGKILL)
        # The socket files (and lock files) are left behind; nobody holds the locks.
        self.assertTrue(os.path.exists(d.service_socket))
        d.start()
        self.assertEqual(d.service_stub().GetKey(pb.GetKeyRequest(name="survivor"),
                                                 timeout=TIMEOUT), k)
        self.assertNotIn("reconcile", d.log(all_starts=False))
        d.stop()

    def test_second_daemon_on_same_sockets_is_refused(self):
        d = self.new_daemon()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="k", type=pb.EC_P256), timeout=TIMEOUT)
        r = subprocess.run(d.command(), env=d.env, capture_output=True, text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("another cofferd", r.stderr)
        # Also with only the admin socket shared.
        r = subprocess.run(d.command() + ["--service-socket", os.path.join(d.dir, "other.sock")],
                           env=d.env, capture_output=True, text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("another cofferd", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(d.dir, "other.sock")))
        # The first one is untouched: its sockets are still there and serve.
        self.assertTrue(d.running)
        self.assertEqual(health_check(d.service_socket), 1)
        self.assertEqual(health_check(d.admin_socket), 1)
        self.assertEqual(d.service_stub().Sign(pb.SignRequest(key="k", message=b"x"),
                                               timeout=TIMEOUT).version, 1)
        d.stop()

    def test_restart_keeps_keys_and_versions(self):
        d = self.new_daemon()
        admin, svc = d.admin_stub(), d.service_stub()
        sadmin, ssvc = d.sealed_stub("admin"), d.sealed_stub("service")
        types = {"r-ec": pb.EC_P256, "r-p384": pb.EC_P384, "r-ed": pb.ED25519,
                 "r-rsa": pb.RSA_2048, "r-mac": pb.HMAC_SHA512, "r-aes": pb.AES_256}
        for name, t in types.items():
            admin.CreateKey(pb.CreateKeyRequest(name=name, type=t), timeout=60)
        sadmin.ImportKey(pb.ImportKeyRequest(name="r-exp", type=pb.AES_256,
                                             material=os.urandom(32)),
                         timeout=TIMEOUT)
        msg = b"before restart"
        sigs = {n: [svc.Sign(pb.SignRequest(key=n, message=msg), timeout=TIMEOUT)]
                for n in ("r-ec", "r-p384", "r-ed", "r-rsa")}
        pubs = {n: [public_key(svc, n)[1]] for n in sigs}
        macs = [svc.Mac(pb.MacRequest(key="r-mac", data=msg), timeout=TIMEOUT)]
        blobs = [ssvc.Wrap(pb.WrapRequest(key="r-aes", plaintext=msg, context={"c": "1"}),
                           timeout=TIMEOUT)]
        for name in ("r-ec", "r-ed", "r-mac", "r-aes"):
            admin.RotateKey(pb.RotateKeyRequest(name=name), timeout=TIMEOUT)
        for n in ("r-ec", "r-ed"):
            sigs[n].append(svc.Sign(pb.SignRequest(key=n, message=msg), timeout=TIMEOUT))
            pubs[n].append(public_key(svc, n)[1])
        macs.append(svc.Mac(pb.MacRequest(key="r-mac", data=msg), timeout=TIMEOUT))
        blobs.append(ssvc.Wrap(pb.WrapRequest(key="r-aes", plaintext=msg, context={"c": "1"}),
                               timeout=TIMEOUT))
        before = svc.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        self.assertEqual(len(before.keys), 7)

        old_session = ssvc.session
        d.restart()
        self.assertNotIn("reconcile", d.log(all_starts=False))
        # The identity key lives in the token: the key pinned at the first
        # start is still the daemon's. Sessions do not survive a restart.
        self.assertEqual(d.fetch_identity(), d.identity)
        old_session.stub = S.pb_grpc.SessionServiceStub(d.channel("service"))
        self.assertCode(SC.UNAUTHENTICATED, old_session.call, "/coffer.v1.KeyService/ListKeys",
                        pb.ListKeysRequest().SerializeToString(), details="unknown or ended")
        admin, svc = d.admin_stub(), d.service_stub()
        ssvc = d.sealed_stub("service")
        after = svc.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        self.assertEqual(after, before)
        self.assertEqual(admin.GetKey(pb.GetKeyRequest(name="r-ec"),
                                      timeout=TIMEOUT).primary_version, 2)
        for n, ss in sigs.items():
            for s, pub in zip(ss, pubs[n]):
                with self.subTest(key=n, version=s.version):
                    v = svc.Verify(pb.VerifyRequest(key=n, version=s.version, message=msg,
                                                    signature=s.signature), timeout=TIMEOUT)
                    self.assertTrue(v.valid)
                    pk, pub_after = public_key(svc, n, s.version)
                    self.assertEqual(pk.der, pub.public_bytes(
                        serialization.Encoding.DER,
                        serialization.PublicFormat.SubjectPublicKeyInfo))
                    verify_independently(pub_after, types[n], s.signature, msg,
                                         ASYM_SCHEME[types[n]], ASYM_HASH[types[n]])
            new = svc.Sign(pb.SignRequest(key=n, message=msg), timeout=TIMEOUT)
            self.assertEqual(new.version, len(ss))
        for m in macs:
            self.assertTrue(svc.VerifyMac(pb.VerifyMacRequest(key="r-mac", version=m.version,
                                                              data=msg, mac=m.mac),
                                          timeout=TIMEOUT).valid)
        for b in blobs:
            u = ssvc.Unwrap(pb.UnwrapRequest(key="r-aes", ciphertext=b.ciphertext,
                                             context={"c": "1"}), timeout=TIMEOUT)
            self.assertEqual((u.plaintext, u.version), (msg, b.version))
        self.assertEqual(svc.Mac(pb.MacRequest(key="r-mac", data=msg), timeout=TIMEOUT).version, 2)
        # A restarted daemon keeps creating and rotating.
        k = admin.RotateKey(pb.RotateKeyRequest(name="r-aes"), timeout=TIMEOUT)
        self.assertEqual([v.version for v in k.versions], [1, 2, 3])
        admin.CreateKey(pb.CreateKeyRequest(name="r-new", type=pb.EC_P256), timeout=TIMEOUT)
        d.stop()

    def test_startup_reconciliation_reports_mismatches(self):
        d = self.new_daemon()
        admin = d.admin_stub()
        for name in ("kept", "orphan"):
            admin.CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256), timeout=TIMEOUT)
        d.stop()
        self.assertNotIn("reconcile", d.log())
        # Behind the daemon's back: drop the registry record of "orphan" (its
        # token object stays) and record a version 2 of "kept" that the token
        # never had.
        d.state_query("DELETE FROM versions WHERE name = 'orphan'",
                      "DELETE FROM keys WHERE name = 'orphan'",
                      "INSERT INTO versions (name, version, state, created) "
                      "VALUES ('kept', 2, 1, %d)" % int(time.time()))
        d.start()
        log = d.log(all_starts=False)
        self.assertIn("token objects of orphan version 1 (2) have no registry record", log)
        self.assertIn("key kept version 2 is in the registry but missing from the token", log)
        self.assertIn("2 mismatches", log)
        svc = d.service_stub()
        self.assertCode(SC.NOT_FOUND, svc.GetKey, pb.GetKeyRequest(name="orphan"))
        self.assertEqual(svc.Sign(pb.SignRequest(key="kept", message=b"x"),
                                  timeout=TIMEOUT).version, 1)
        self.assertCode(SC.FAILED_PRECONDITION, svc.Sign,
                        pb.SignRequest(key="kept", version=2, message=b"x"))
        d.stop()

    def test_empty_registry_on_the_same_token_reports_orphans(self):
        d = self.new_daemon()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="lonely", type=pb.ED25519),
                                 timeout=TIMEOUT)
        d.stop()
        other = os.path.join(d.dir, "state2")
        r = subprocess.Popen(d.command(state_dir=other) + ["--state-dir", other,
                                            "--service-socket", os.path.join(d.dir, "s2.sock"),
                                            "--admin-socket", os.path.join(d.dir, "a2.sock")],
                             env=d.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 10
            a2 = os.path.join(d.dir, "a2.sock")
            while time.monotonic() < deadline and not os.path.exists(a2):
                time.sleep(0.05)
            deadline = time.monotonic() + 10
            while True:
                try:
                    health_check(os.path.join(d.dir, "a2.sock"))
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline or r.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            r.send_signal(signal.SIGTERM)
            out, _ = r.communicate(timeout=30)
        self.assertEqual(r.returncode, 0, out)
        self.assertIn("token objects of lonely version 1 (2) have no registry record", out)


ASYM_SCHEME = {pb.EC_P256: pb.ECDSA, pb.EC_P384: pb.ECDSA, pb.ED25519: pb.EDDSA,
               pb.RSA_2048: pb.RSA_PSS}
ASYM_HASH = {pb.EC_P256: hashes.SHA256(), pb.EC_P384: hashes.SHA384(), pb.ED25519: None,
             pb.RSA_2048: hashes.SHA256()}


# ---- deploy files ----

def read(*path):
    with open(os.path.join(*path)) as f:
        return f.read().strip()


class DeployTests(CofferTestCase):
    def test_init_token_is_idempotent_and_keeps_pins_private(self):
        import tempfile
        base = tempfile.mkdtemp(prefix="coffer-it-")
        self.addCleanup(shutil.rmtree, base, True)
        tdir = os.path.join(base, "t")
        r1 = subprocess.run(["/bin/sh", INIT_TOKEN, tdir, "lbl"], capture_output=True, text=True)
        self.assertEqual(r1.returncode, 0, r1.stderr)
        upin, spin = read(tdir, "user.pin"), read(tdir, "so.pin")
        self.assertEqual((len(upin), len(spin)), (32, 32))
        self.assertNotEqual(upin, spin)
        for f in ("user.pin", "so.pin"):
            self.assertEqual(os.stat(os.path.join(tdir, f)).st_mode & 0o777, 0o600)
        for out in (r1.stdout, r1.stderr):
            self.assertNotIn(upin, out)
            self.assertNotIn(spin, out)
        self.assertIn("export SOFTHSM2_CONF=%s/softhsm2.conf" % tdir, r1.stdout)
        self.assertIn("pkcs11:token=lbl", r1.stdout)
        self.assertIn(os.path.join(tdir, "user.pin"), r1.stdout)
        r2 = subprocess.run(["/bin/sh", INIT_TOKEN, tdir, "lbl"], capture_output=True, text=True)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertIn("already exists", r2.stderr)
        self.assertEqual(read(tdir, "user.pin"), upin)
        self.assertEqual(r2.stdout, r1.stdout)
        r3 = subprocess.run(["/bin/sh", INIT_TOKEN], capture_output=True, text=True)
        self.assertEqual(r3.returncode, 2)
        r4 = subprocess.run(["/bin/sh", INIT_TOKEN, tdir, "bad label"], capture_output=True,
                            text=True)
        self.assertNotEqual(r4.returncode, 0)

    def conf_example(self, uncomment):
        path = os.path.join(SRC_DIR, "deploy", "cofferd.conf.example")
        if not uncomment:
            return path
        # Every documented default, set explicitly (empty values stay unset).
        lines = []
        with open(path) as f:
            text = f.read()
        for line in text.splitlines(True):
            s = line.strip()
            if s.startswith(";") and "=" in s and s.split("=", 1)[1].strip():
                lines.append(s[1:] + "\n")
            elif s.startswith("[") and not s.startswith("# "):
                lines.append(s + "\n")
        return "".join(lines)

    def test_conf_example_is_accepted_with_every_default_set(self):
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        text = self.conf_example(True)
        for setting in ("module", "uri", "pin_file", "pool_size", "pool_timeout_ms", "state_dir",
                        "workers", "max_message_bytes", "shutdown_grace_ms", "log_level",
                        "path", "mode"):
            self.assertRegex(text, r"(?m)^%s = " % setting)
        conf = os.path.join(d.dir, "example.conf")
        # On the PostgreSQL run the fixture's backend and dsn go in a [state]
        # of their own, last; the example's uncommented backend is left out
        # (a setting given twice is refused).
        state = "" if d.pg_db is None else "\n[state]\nbackend = %s\ndsn = %s\n" % (
            d.config["state"]["backend"], d.config["state"]["dsn"])
        if state:
            kept, section = [], None
            for line in text.splitlines(True):
                if line.startswith("["):
                    section = line.strip()
                if not (section == "[state]" and line.startswith("backend =")):
                    kept.append(line)
            text = "".join(kept)
        with open(conf, "w") as f:
            f.write(text + state)
        example = self.conf_example(False)
        if state:
            example = os.path.join(d.dir, "example-as-is.conf")
            with open(example, "w") as f:
                f.write(open(self.conf_example(False)).read() + state)
        flags = ["-c", conf, "--module", d.config["token"]["module"], "--token-uri", d.token_uri,
                 "--pin-file", d.pin_file, "--state-dir", d.state_dir,
                 "--service-socket", d.service_socket, "--admin-socket", d.admin_socket]
        for c in (conf, example):
            flags[1] = c
            p = d.spawn([d.cofferd] + flags)
            d.proc = p
            d.wait_ready()
            self.assertEqual(os.stat(d.service_socket).st_mode & 0o777, 0o660)
            self.assertEqual(os.stat(d.admin_socket).st_mode & 0o777, 0o600)
            d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=int(os.environ.get("COFFER_TEST_VERBOSITY", "2")))
