#!/usr/bin/python3
"""The Python client package (client/python/coffer) against its documents
and against a live cofferd.

Vectors: the test vectors of proto/session-protocol.md,
call-authentication.md and request-signing.md recomputed by the package's
own functions (coffer.session, coffer.callauth, coffer.reqsign), the code
its Client runs; tampered records do not open.

MethodTable: the package's sealed methods are exactly the rows of
common/cf_methods.c that carry CF_MF_SECRET, and every method of the .proto
goes to the socket that serves it.

Live*: a real cofferd on a throw-away token (daemon_fixture: SoftHSM2, or a
TPM 2.0 with COFFER_TEST_TOKEN=tpm as test_python_client_tpm runs it),
driven only through coffer.Client: every KeyService and AdminService call,
sealed calls (session reuse, renewal before the record limit and lifetime,
one retry after the daemon ended a session, idle sessions after a restart,
a new pin while a call is in flight), no repeat of a nonce check whose
answer was lost, API-key signed calls (plain and sealed; both sides of a
fork), and errors with the daemon's exact text. What needs a capability the
token lacks is skipped by capability after its refusal is checked
(token_caps.py); the run ends with the list of skips.

The package is imported from $COFFER_BUILD_DIR/client/python (the build's
copy, with the generated coffer/v1 modules), before daemon_fixture
generates its own stubs (rpc_common, at import): both then use the one
coffer.v1.coffer_pb2.
"""

import hashlib
import itertools
import os
import re
import signal
import sys
import tempfile
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("COFFER_SOURCE_DIR") or os.path.join(HERE, "..", "..")
BUILD = os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC, "build")
sys.path.insert(0, os.path.join(BUILD, "client", "python"))

import grpc  # noqa: E402

import coffer  # noqa: E402
from coffer import callauth, methods, reqsign, session  # noqa: E402
from coffer import pb  # noqa: E402
from fake_daemon import FakeDaemon, listing_backwards, listing_repeating  # noqa: E402
from cryptography.exceptions import InvalidTag  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding, x25519  # noqa: E402

from daemon_fixture import test_token, tpm_main  # noqa: E402
from rpc_common import ModuleDaemon  # noqa: E402
from token_caps import API_KEYS, TokenCaps, needs  # noqa: E402


def doc_vectors(name):
    """The `name: value` lines of the vector block of proto/<name>, as text."""
    with open(os.path.join(SRC, "proto", name), encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- vectors:begin -->", 1)[1].split("<!-- vectors:end -->", 1)[0]
    out = {}
    for line in block.splitlines():
        if ":" not in line or line.startswith("```"):
            continue
        k, _, v = line.partition(": ")
        if not v and k.endswith(":"):
            k = k[:-1]
        if k in out:
            raise AssertionError("%s: %s twice" % (name, k))
        out[k] = v
    return out


# ---- vectors ----

class SessionVectors(unittest.TestCase):
    """proto/session-protocol.md through coffer.session."""

    @classmethod
    def setUpClass(cls):
        cls.v = doc_vectors("session-protocol.md")

    def h(self, k):
        return bytes.fromhex(self.v[k])

    def hello(self):
        v = self.v
        return session.Hello(1, self.h("client_ephemeral"), self.h("client_random"),
                             v["principal"], self.h("session_id"), self.h("server_ephemeral"),
                             self.h("server_random"), int(v["caller_uid"]),
                             int(v["caller_gid"]), self.h("identity_public_key"),
                             int(v["lifetime_seconds"]), int(v["max_records"]),
                             int(v["max_bytes"]))

    def keys(self):
        priv = x25519.X25519PrivateKey.from_private_bytes(self.h("client_ephemeral_private"))
        shared = priv.exchange(x25519.X25519PublicKey.from_public_bytes(
            self.h("server_ephemeral")))
        return session.derive(shared, self.h("transcript_hash"))

    def test_handshake(self):
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        for side in ("client", "server"):
            priv = x25519.X25519PrivateKey.from_private_bytes(
                self.h(side + "_ephemeral_private"))
            self.assertEqual(priv.public_key().public_bytes(*raw), self.h(side + "_ephemeral"))
        t = session.transcript(self.hello())
        self.assertEqual(t.hex(), self.v["transcript"])
        th = hashlib.sha256(t).digest()
        self.assertEqual(th, self.h("transcript_hash"))
        self.assertEqual(session.signed_message(th), self.h("signed_message"))
        ident = serialization.load_der_public_key(self.h("identity_public_key"))
        ident.verify(self.h("signature"), session.signed_message(th), ec.ECDSA(hashes.SHA256()))
        self.assertEqual(session.load_identity(self.h("identity_public_key")),
                         self.h("identity_public_key"))
        # Both sides reach the same secret.
        spriv = x25519.X25519PrivateKey.from_private_bytes(self.h("server_ephemeral_private"))
        shared = spriv.exchange(x25519.X25519PublicKey.from_public_bytes(
            self.h("client_ephemeral")))
        self.assertEqual(shared, self.h("shared_secret"))
        k = self.keys()
        for name in ("c2s_key", "c2s_iv", "s2c_key", "s2c_iv"):
            self.assertEqual(getattr(k, name), self.h(name), name)

    def test_records(self):
        k, sid = self.keys(), self.h("session_id")
        n = 0
        for i in range(1, 10):
            p = "record%d_" % i
            if p + "direction" not in self.v:
                break
            n += 1
            d, seq = int(self.v[p + "direction"]), int(self.v[p + "sequence"])
            m = self.v[p + "method"]
            key, iv = k.of(d)
            self.assertEqual(session.record_nonce(iv, seq), self.h(p + "nonce"), p)
            self.assertEqual(session.record_aad(sid, d, seq, m), self.h(p + "aad"), p)
            rec = session.seal(k, sid, d, seq, m, self.h(p + "plaintext"))
            self.assertEqual(rec, self.h(p + "record"), p)
            self.assertEqual(session.open_record(k, sid, d, seq, m, rec), self.h(p + "plaintext"))
            flipped = bytearray(rec)
            flipped[0] ^= 1
            for bad in ((sid, 3 - d, seq, m, rec), (sid, d, seq + 1, m, rec),
                        (bytes(16), d, seq, m, rec), (sid, d, seq, m + "x", rec),
                        (sid, d, seq, m, rec[:-1]), (sid, d, seq, m, rec[:15]),
                        (sid, d, seq, m, bytes(flipped))):
                with self.assertRaises(InvalidTag, msg="%s %r" % (p, bad[1:4])):
                    session.open_record(k, *bad)
        self.assertEqual(n, 3)

    def test_pinned_identity_must_be_p256(self):
        p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with self.assertRaises(coffer.InvalidArgument) as e:
            session.load_identity(p384)
        self.assertEqual(e.exception.message,
                         "the pinned identity is not an EC P-256 key: a Coffer daemon's "
                         "identity is one")
        with self.assertRaises(coffer.InvalidArgument) as e:
            session.load_identity(b"junk")
        self.assertEqual(e.exception.message, "the pinned identity holds no public key (a PEM "
                         "\"-----BEGIN PUBLIC KEY-----\" or SubjectPublicKeyInfo DER)")


class HandshakeChecks(unittest.TestCase):
    """SessionPool.handshake against forged OpenSession answers (a fake
    transport signs them with a throw-away identity): each bad answer is
    refused by the check the document names, before any key is derived."""

    RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw

    def setUp(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.pool = session.SessionPool(self.spki, pb)
        self.server = None

    def daemon(self, sign_with=None, raw=None, **change):
        """A transport answering OpenSession as a daemon would, but for `change`."""
        def send(path, body):
            self.assertEqual(path, "/coffer.v1.SessionService/OpenSession")
            if raw is not None:
                return raw
            req = pb.OpenSessionRequest.FromString(body)
            self.assertEqual((req.version, len(req.client_ephemeral), len(req.client_random),
                              req.principal), (1, 32, 32, ""))
            eph = x25519.X25519PrivateKey.generate()
            f = dict(session_id=os.urandom(16), server_ephemeral=eph.public_key().public_bytes(
                *self.RAW), server_random=os.urandom(32), caller_uid=os.geteuid(),
                caller_gid=os.getegid(), identity_public_key=self.spki, lifetime_seconds=60,
                max_records=10, max_bytes=1 << 20)
            f.update(change)
            hello = session.Hello(1, req.client_ephemeral, req.client_random, "",
                                  f["session_id"], f["server_ephemeral"], f["server_random"],
                                  f["caller_uid"], f["caller_gid"], self.spki,
                                  f["lifetime_seconds"], f["max_records"], f["max_bytes"])
            th = hashlib.sha256(session.transcript(hello)).digest()
            sig = (sign_with or self.key).sign(session.signed_message(th),
                                               ec.ECDSA(hashes.SHA256()))
            self.server = (eph, req.client_ephemeral, th, f["session_id"])
            return pb.OpenSessionResponse(signature=sig, **f).SerializeToString()
        return send

    def refused(self, text, **kw):
        with self.assertRaises(coffer.Unauthenticated) as e:
            self.pool.handshake(self.daemon(**kw))
        self.assertEqual(e.exception.message, text)
        self.assertEqual(self.pool.opened, 0)

    def test_a_good_answer(self):
        s = self.pool.handshake(self.daemon())
        eph, client_pub, th, sid = self.server
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(client_pub))
        server_keys = session.derive(shared, th)
        rec = session.seal(s.keys, s.id, session.C2S, 0, "/coffer.v1.KeyService/Wrap", b"p")
        self.assertEqual(session.open_record(server_keys, sid, session.C2S, 0,
                                             "/coffer.v1.KeyService/Wrap", rec), b"p")
        self.assertEqual((s.id, s.sequence, s.max_records, self.pool.opened), (sid, 0, 10, 1))

    def test_bad_answers(self):
        other = ec.generate_private_key(ec.SECP256R1())
        other_spki = other.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.refused("the daemon presented identity %s but %s is pinned: refusing it"
                     % (session.fingerprint(other_spki), session.fingerprint(self.spki)),
                     identity_public_key=other_spki, sign_with=other)
        sizes = "malformed OpenSession response (field sizes)"
        self.refused(sizes, session_id=bytes(15))
        self.refused(sizes, server_ephemeral=bytes(31))
        self.refused(sizes, server_random=bytes(33))
        self.refused(sizes, lifetime_seconds=0)
        self.refused(sizes, max_records=0)
        # In the document's order: sizes before the signature, the signature
        # before the ids.
        self.refused(sizes, session_id=bytes(15), sign_with=other)
        self.refused("the daemon's handshake signature does not verify under the pinned "
                     "identity: refusing it", caller_uid=os.geteuid() + 1, sign_with=other)
        self.refused("the daemon's handshake signature does not verify under the pinned "
                     "identity: refusing it", sign_with=other)
        self.refused("the daemon saw this session opened by uid %d gid %d, not by this process "
                     "(uid %d gid %d): something relays the socket; refusing the session (user "
                     "namespace: Client(peer_check=False))"
                     % (os.geteuid() + 1, os.getegid(), os.geteuid(), os.getegid()),
                     caller_uid=os.geteuid() + 1)
        # A low-order point: the shared secret would be all zero.
        self.refused("the daemon's ephemeral key is unusable", server_ephemeral=bytes(32))
        self.refused("malformed OpenSession response", raw=b"\xff\xff")


class CallAuthVectors(unittest.TestCase):
    """proto/call-authentication.md through coffer.callauth."""

    def test_vectors(self):
        v = doc_vectors("call-authentication.md")
        secret = bytes.fromhex(v["secret"])
        for i in (1, 2):
            p = "call%d_" % i
            args = (v[p + "path"], bytes.fromhex(v[p + "body"]), int(v[p + "timestamp"]),
                    v[p + "nonce"], v[p + "key_id"])
            self.assertEqual(callauth.string_to_sign(*args).hex(), v[p + "string_to_sign"], p)
            sig = callauth.signature(secret, *args)
            self.assertEqual(sig, v[p + "signature"], p)
            self.assertEqual(callauth.authorization(args[4], args[2], args[3], sig),
                             v[p + "authorization"], p)

    def test_api_key_header(self):
        """ApiKey.header signs with the keyed HMAC, fresh nonces each call."""
        v = doc_vectors("call-authentication.md")
        k = callauth.ApiKey(v["call2_key_id"], bytes.fromhex(v["secret"]))
        body = bytes.fromhex(v["call2_body"])
        seen = set()
        for _ in range(3):
            h = k.header(v["call2_path"], body, timestamp=1764300001)
            m = re.fullmatch(r"COFFER-HMAC-SHA256 keyId=(ak_[0-9a-f]{24}), timestamp=(\d+), "
                             r"nonce=([0-9a-f]{32}), signature=([0-9a-f]{64})", h)
            self.assertIsNotNone(m, h)
            self.assertEqual(m.group(4), callauth.signature(
                bytes.fromhex(v["secret"]), v["call2_path"], body, 1764300001, m.group(3),
                m.group(1)))
            seen.add(m.group(3))
        self.assertEqual(len(seen), 3)

    def test_credentials_file(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        path = os.path.join(tmp.name, "k")
        callauth.write_api_key_file(path, "ak_" + "ab" * 12, bytes(range(32)))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(callauth.read_api_key_file(path).id, "ak_" + "ab" * 12)
        with self.assertRaises(coffer.InvalidArgument) as e:
            callauth.write_api_key_file(path, "ak_" + "ab" * 12, bytes(range(32)))
        self.assertEqual(e.exception.message, "cannot create API key file %s: it exists (it is "
                         "never replaced: choose another name)" % path)
        os.chmod(path, 0o640)
        with self.assertRaises(coffer.FailedPrecondition) as e:
            callauth.read_api_key_file(path)
        self.assertEqual(e.exception.message, "API key file %s can be read by group or others; "
                         "chmod 600 it" % path)
        with self.assertRaises(coffer.InvalidArgument) as e:
            callauth.ApiKey("ak_XYZ", bytes(32))
        self.assertEqual(e.exception.message,
                         "an API key id is \"ak_\" and 24 lower-case hex digits")


class RequestSigningVectors(unittest.TestCase):
    """proto/request-signing.md through coffer.reqsign."""

    def test_vectors(self):
        v = doc_vectors("request-signing.md")
        secret = bytes.fromhex(v["secret"])
        for i in range(1, 5):
            p = "request%d_" % i
            body = v[p + "body"].encode()
            self.assertEqual(reqsign.canonical_query(v[p + "raw_query"]),
                             v[p + "canonical_query"], p)
            self.assertEqual(hashlib.sha256(body).hexdigest(), v[p + "body_sha256"], p)
            sts = reqsign.string_to_sign(v[p + "method"], v[p + "path"], v[p + "canonical_query"],
                                         hashlib.sha256(body).digest(), int(v[p + "timestamp"]),
                                         v[p + "nonce"], v[p + "key_id"])
            self.assertEqual(sts.hex(), v[p + "string_to_sign"], p)
            self.assertEqual(reqsign.sign(secret, v[p + "method"], v[p + "path"],
                                          v[p + "raw_query"], body, int(v[p + "timestamp"]),
                                          v[p + "nonce"], v[p + "key_id"]),
                             v[p + "signature"], p)

    def test_query_errors(self):
        for q, msg in (("a=%4", "query has a truncated %-escape"),
                       ("a=%zz", "query has a bad %-escape"),
                       ("a" * 8193, "query longer than 8192 bytes"),
                       ("&".join("p%d" % i for i in range(257)),
                        "query has more than 256 parameters")):
            with self.assertRaises(coffer.CofferError) as e:
                reqsign.canonical_query(q)
            self.assertEqual(e.exception.message, msg)

    def test_authorization_round_trip(self):
        h = reqsign.authorization("orders-api", 3, 1764300000, "n0nce-0000000001", "ab" * 32)
        c = reqsign.parse_authorization(h)
        self.assertEqual((c.key_id, c.version, c.timestamp, c.nonce, c.signature),
                         ("orders-api", 3, 1764300000, "n0nce-0000000001", "ab" * 32))
        for bad, msg in (("Basic x", "authorization: must start with \"COFFER-HMAC-SHA256-HTTP \""),
                         (h.replace(", version=3", ""), "authorization: lacks version"),
                         (h + ", nonce=x", "authorization: nonce given twice")):
            with self.assertRaises(coffer.InvalidArgument) as e:
                reqsign.parse_authorization(bad)
            self.assertEqual(e.exception.message, msg)


class MethodTable(unittest.TestCase):
    """coffer.methods against common/cf_methods.c and the .proto."""

    def test_secret_methods_are_the_table_s(self):
        with open(os.path.join(SRC, "common", "cf_methods.c")) as f:
            src = f.read()
        secret, n = set(), 0
        for m in re.finditer(r"\[CF_\w+\] = \{ (KEY_METHOD|ADMIN|CHANGE|M)\(\s*(?:(\w+), )?"
                             r"\"(\w+)\"(.*?)\},\n", src, re.S):
            macro, svc, name, rest = m.groups()
            service = {"KEY_METHOD": "KS", "ADMIN": "AS", "CHANGE": "AS"}.get(macro, svc)
            n += 1
            if "CF_MF_SECRET" in rest:
                secret.add("/coffer.v1.%s/%s" % ({"KS": "KeyService", "AS": "AdminService"}
                                                 [service], name))
        self.assertEqual(n, 50)   # every row of the table was read
        self.assertEqual(secret, set(methods.SECRET_METHODS))

    def test_every_rpc_has_a_client_method(self):
        """Each KeyService and AdminService RPC is a Client method (snake case
        of its name, but for these)."""
        other = {"GrantPrincipal": "grant", "RevokePrincipal": "revoke",
                 "VerifyRequestSignature": "verify_http_request"}
        for svc in ("KeyService", "AdminService"):
            for m in pb.DESCRIPTOR.services_by_name[svc].methods:
                name = other.get(m.name) or re.sub(r"(?<!^)([A-Z])", r"_\1", m.name).lower()
                self.assertTrue(callable(getattr(coffer.Client, name, None)),
                                "%s/%s: no Client.%s" % (svc, m.name, name))

    def test_every_method_on_its_socket(self):
        n = 0
        for svc, kind in (("KeyService", methods.SERVICE), ("AdminService", methods.ADMIN)):
            for m in pb.DESCRIPTOR.services_by_name[svc].methods:
                self.assertEqual(methods.socket_of("/coffer.v1.%s/%s" % (svc, m.name)), kind)
                n += 1
        self.assertEqual(n, 17 + 28)
        # Every public method of Client that names an RPC exists in the .proto.
        names = {m.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
        for path in methods.SECRET_METHODS:
            self.assertIn(path.rsplit("/", 1)[1], names)


# ---- against cofferd ----

class HostileServer(unittest.TestCase):
    """coffer.Client against a grpcio server that misbehaves (fake_daemon),
    each case failing on the code before (found by a review of the
    package): one deadline per call, a listing that does not advance, a
    malformed identity, threads racing set_api_key and close()."""

    def fake(self, handlers):
        f = FakeDaemon(handlers)
        self.addCleanup(f.stop)
        return f

    def test_deadline_counts_from_the_start(self):
        """A Sign answered UNAVAILABLE after 0.45 s under a 0.5 s timeout
        is repeated (once) only within what is left (before: 0.9 s); an
        idempotent admin call is retried within its timeout, not for
        restart_wait (before: 10 s)."""
        def slow_unavailable(req, ctx):
            time.sleep(0.45)
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "token busy")

        f = self.fake({"/coffer.v1.KeyService/Sign": slow_unavailable,
                       "/coffer.v1.AdminService/RotateKey": slow_unavailable})
        c = coffer.Client(socket=f.path, admin_socket=f.path, timeout=0.5)
        self.addCleanup(c.close)
        t = time.monotonic()
        with self.assertRaises((coffer.DeadlineExceeded, coffer.Unavailable)) as cm:
            c.sign("k", b"m")
        took = time.monotonic() - t
        self.assertLess(took, 0.8, "the call outlived its deadline: %s" % cm.exception)
        t = time.monotonic()
        with self.assertRaises(coffer.Unavailable) as cm:   # what it met, not a deadline
            c.rotate_key("k", idempotency_key="abcdefgh")
        self.assertEqual(cm.exception.message, "token busy")
        self.assertLess(time.monotonic() - t, 1.2)
        self.assertLessEqual(f.calls["/coffer.v1.AdminService/RotateKey"], 2)

    def test_listing_that_does_not_advance(self):
        def empty_pages(req, ctx):
            return pb.ListKeysResponse(next_page_token="again").SerializeToString()

        pages = []

        def same_token(req, ctx):
            pages.append(1)
            return pb.ListKeysResponse(keys=[pb.Key(name="k%03d" % len(pages))],
                                       next_page_token="same").SerializeToString()

        for fn, text in ((listing_repeating(pb), "is not in name order ('k1' after 'k1')"),
                         (listing_backwards(pb), "is not in name order ('c' after 'm')"),
                         (empty_pages, "does not advance (page token 'again')"),
                         (same_token, "does not advance (page token 'same')")):
            f = self.fake({"/coffer.v1.KeyService/ListKeys": fn})
            with coffer.Client(socket=f.path, timeout=5) as c:
                with self.assertRaises(coffer.Internal) as cm:
                    c.list_keys()
            self.assertEqual(str(cm.exception.message), "the server's key listing " + text)
            self.assertLessEqual(f.calls["/coffer.v1.KeyService/ListKeys"], 3, fn.__name__)

    def test_malformed_identity_is_internal(self):
        f = self.fake({"/coffer.v1.SessionService/GetIdentity": lambda req, ctx: b"\xff"})
        with coffer.Client(socket=f.path, timeout=5) as c:
            with self.assertRaises(coffer.Internal) as cm:
                c.get_identity()
        self.assertEqual(cm.exception.message,
                         "malformed response to /coffer.v1.SessionService/GetIdentity")

    def test_threads_racing_set_api_key_and_close(self):
        """Every failure a call meets while another thread changes the API
        key or closes the Client is a CofferError (before: AttributeError
        from the key read twice, ValueError from a closed channel)."""
        mac = pb.MacResponse(mac=b"\x01" * 32, version=1).SerializeToString()
        f = self.fake({"/coffer.v1.KeyService/Mac": lambda req, ctx: mac})
        c = coffer.Client(socket=f.path, timeout=5)
        self.addCleanup(c.close)
        stop = time.monotonic() + 2.0
        bad, done = [], [0]

        def caller():
            while time.monotonic() < stop:
                try:
                    c.mac("k", b"x")
                    done[0] += 1
                except coffer.CofferError:
                    pass
                except Exception as e:        # noqa: BLE001 (the point of the test)
                    bad.append(repr(e))

        def meddler():
            while time.monotonic() < stop:
                c.set_api_key("ak_0123456789abcdef01234567", b"s" * 32)
                c.set_api_key(None)
                c.close()

        ts = [threading.Thread(target=caller) for _ in range(8)] + [
            threading.Thread(target=meddler)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(bad[:3], [], "%d non-Coffer errors" % len(bad))
        self.assertGreater(done[0], 0)

    def test_session_keys_not_in_a_repr(self):
        k = session.DirectionKeys(b"\x11" * 32, b"\x22" * 12, b"\x33" * 32, b"\x44" * 12)
        self.assertNotIn("x11", repr(k))
        self.assertNotIn("x44", repr(k))

    def test_identity_as_pem_text(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        der = key.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        text = key.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.assertEqual(session.load_identity(text), der)


def client(d, **kw):
    kw.setdefault("identity", d.identity)
    return coffer.Client(d.service_socket, admin_socket=d.admin_socket, **kw)


class Live(unittest.TestCase):
    """A daemon of its own per class (CONFIG), with the keys KEYS made
    through a Client (self.c) on both sockets."""

    CONFIG = None
    # py-ec carries the sealed round trips of the session cases (every token signs).
    KEYS = (("py-ec", "ec-p256"), ("py-mac", "hmac-sha256"), ("py-aes", "aes-256"))

    @classmethod
    def setUpClass(cls):
        cls.D = ModuleDaemon(cls.CONFIG)
        cls.D.set_up()
        cls.d = cls.D.d
        cls.c = client(cls.d)
        cls.caps = TokenCaps(cls.c)
        # The token's keys; a case needing another says so (@needs, caps.has).
        cls.made = [name for name, kind in cls.KEYS if cls.caps.can(kind)]
        for name, kind in cls.KEYS:
            if name in cls.made:
                cls.c.create_key(name, kind)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        cls.D.tear_down()


class LiveCalls(Live):
    """Every call of coffer.Client once, and its refusals, with the text."""

    KEYS = (("py-ec", "ec-p256"), ("py-ed", "ed25519"), ("py-rsa", "rsa-2048"),
            ("py-mac", "hmac-sha256"), ("py-aes", "aes-256"))

    def err(self, cls, text, fn, *a, **kw):
        with self.assertRaises(cls) as e:
            fn(*a, **kw)
        self.assertEqual(e.exception.message, text)
        return e.exception

    # -- signatures --

    def test_sign_verify(self):
        c = self.c
        pub = serialization.load_der_public_key(c.get_public_key("py-ec").der)
        s = c.sign("py-ec", b"hello")
        self.assertEqual((s.version, s.scheme, s.hash), (1, pb.ECDSA, pb.SHA256))
        pub.verify(s.signature, b"hello", ec.ECDSA(hashes.SHA256()))
        self.assertTrue(c.verify("py-ec", 1, s.signature, b"hello"))
        self.assertFalse(c.verify("py-ec", 1, s.signature, b"hellO"))
        d = c.sign("py-ec", digest=hashlib.sha256(b"x").digest(), ecdsa_raw=True)
        self.assertEqual(len(d.signature), 64)
        self.assertTrue(c.verify("py-ec", 1, d.signature, digest=hashlib.sha256(b"x").digest(),
                                 ecdsa_raw=True))
        if self.caps.has("ed25519", "test_sign_verify: Ed25519"):
            e = c.sign("py-ed", b"m")
            serialization.load_der_public_key(c.get_public_key("py-ed", 1).der).verify(
                e.signature, b"m")
        pss = c.sign("py-rsa", b"m")
        serialization.load_der_public_key(c.get_public_key("py-rsa").der).verify(
            pss.signature, b"m", padding.PSS(padding.MGF1(hashes.SHA256()),
                                             hashes.SHA256.digest_size), hashes.SHA256())
        # GetTokenInfo has no word on schemes: the refusal is the evidence.
        r = self.caps.refused_by_token(
            lambda: c.sign("py-rsa", b"m", scheme="rsa-pkcs1", hash="sha384"),
            "test_sign_verify: rsa-pkcs1", "RSA PKCS#1 v1.5 signatures")
        if r is not None:
            serialization.load_der_public_key(c.get_public_key("py-rsa").der).verify(
                r.signature, b"m", padding.PKCS1v15(), hashes.SHA384())
            self.assertTrue(c.verify("py-rsa", 1, r.signature, b"m", scheme="rsa-pkcs1",
                                     hash="sha384"))
        self.err(coffer.NotFound, "key py-none does not exist", c.sign, "py-none", b"x")
        self.err(coffer.InvalidArgument, "key name must start with a lower-case letter or digit",
                 c.sign, "Py", b"x")
        self.err(coffer.InvalidArgument, "give exactly one of message or digest", c.sign,
                 "py-ec", b"x", digest=b"y")
        self.err(coffer.InvalidArgument, "unknown scheme 'pss': one of default, ecdsa, eddsa, "
                 "rsa-pss, rsa-pkcs1", c.sign, "py-rsa", b"m", scheme="pss")
        if not self.caps.has("hmac-sha256", "test_sign_verify: a mac key to sign"):
            return
        e = self.err(coffer.FailedPrecondition, "key py-mac is a mac key (hmac-sha256); this "
                     "operation needs a sign key", c.sign, "py-mac", b"x")
        self.assertEqual((e.code.name, e.method), ("FAILED_PRECONDITION",
                                                   "/coffer.v1.KeyService/Sign"))

    @needs("hmac-sha256")
    def test_mac(self):
        c = self.c
        m = c.mac("py-mac", b"data")
        self.assertEqual((len(m.mac), m.version), (32, 1))
        self.assertTrue(c.verify_mac("py-mac", 1, b"data", m.mac))
        self.assertFalse(c.verify_mac("py-mac", 1, b"datA", m.mac))
        self.err(coffer.NotFound, "key py-mac has no version 9", c.verify_mac, "py-mac", 9,
                 b"data", m.mac)

    def test_batches(self):
        c = self.c
        s = c.sign_batch("py-ec", [b"a", b"b", b"c"])
        self.assertEqual([r.status.code for r in s.results], [0, 0, 0])
        v = c.verify_batch("py-ec", s.version, [(b"a", s.results[0].signature),
                                                 (b"B", s.results[1].signature),
                                                 (b"c", b"\x30\x00")])
        self.assertEqual([r.valid for r in v.results], [True, False, False])
        d = c.sign_batch("py-ec", digests=[b"short", hashlib.sha256(b"a").digest()])
        self.assertEqual(coffer.errors.status_code(d.results[0].status.code).name,
                         "INVALID_ARGUMENT")
        self.assertEqual(d.results[0].status.message, "a sha256 digest is 32 bytes, got 5")
        self.assertEqual(d.results[1].status.code, 0)
        self.err(coffer.InvalidArgument, "SignBatch has no items: send 1 to 1024",
                 c.sign_batch, "py-ec", [])
        if not self.caps.has("hmac-sha256", "test_batches: MacBatch, VerifyMacBatch"):
            return
        m = c.mac_batch("py-mac", [b"1", b"2"])
        self.assertEqual(m.version, 1)
        vm = c.verify_mac_batch("py-mac", 1, [(b"1", m.results[0].mac), (b"2", m.results[0].mac)])
        self.assertEqual([r.valid for r in vm.results], [True, False])
        self.err(coffer.InvalidArgument, "MacBatch has no items: send 1 to 1024",
                 c.mac_batch, "py-mac", [])

    def test_check_items(self):
        """coffer.check_items: the results when every item succeeded, else
        the first failed item's error with its index; item_errors lists them."""
        c = self.c
        ok = c.sign_batch("py-ec", [b"a", b"b"])
        self.assertEqual(list(coffer.check_items(ok)), list(ok.results))
        self.assertEqual(coffer.item_errors(ok), [])
        good = hashlib.sha256(b"a").digest()
        d = c.sign_batch("py-ec", digests=[good, b"short", good, b"x" * 33])
        self.err(coffer.InvalidArgument, "item 1 of 4 (2 failed): a sha256 digest is 32 bytes, "
                 "got 5", coffer.check_items, d)
        self.assertEqual([(i, type(e), e.message) for i, e in coffer.item_errors(d)], [
            (1, coffer.InvalidArgument, "a sha256 digest is 32 bytes, got 5"),
            (3, coffer.InvalidArgument, "a sha256 digest is 32 bytes, got 33")])

    # -- sealed --

    @needs("aes-256")
    def test_wrap_unwrap_rewrap_data_key(self):
        c = client(self.d)
        w = c.wrap("py-aes", b"the secret", {"tenant": "t1"})
        self.assertEqual(w.version, 1)
        self.assertNotIn(b"the secret", w.ciphertext)
        u = c.unwrap("py-aes", w.ciphertext, {"tenant": "t1"})
        self.assertEqual((u.plaintext, u.version), (b"the secret", 1))
        r = c.rewrap("py-aes", w.ciphertext, {"tenant": "t1"})
        self.assertEqual(c.unwrap("py-aes", r.ciphertext, {"tenant": "t1"}).plaintext,
                         b"the secret")
        g = c.generate_data_key("py-aes", length=16, context={"f": "1"})
        self.assertEqual(len(g.plaintext), 16)
        self.assertEqual(c.unwrap("py-aes", g.ciphertext, {"f": "1"}).plaintext, g.plaintext)
        self.assertEqual(c.generate_data_key("py-aes", include_plaintext=False).plaintext, b"")
        # One session carried all of it.
        self.assertEqual(c.sessions_opened(), 1)
        self.err(coffer.InvalidArgument, "ciphertext does not decrypt under key py-aes version 1 "
                 "with this context: it was altered, or the context differs",
                 c.unwrap, "py-aes", w.ciphertext, {"tenant": "t2"})
        self.err(coffer.NotFound, "key py-nokey does not exist", c.wrap, "py-nokey", b"x")
        # The failed inner calls did not cost the session.
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (1, 0))
        c.close()

    def test_no_pin_no_sealed_call(self):
        c = coffer.Client(self.d.service_socket)
        self.err(coffer.FailedPrecondition, "no daemon identity is pinned, so no sealed session "
                 "can be opened: pin the key printed by `cofferctl identity` "
                 "(Client(identity=FILE))", c.wrap, "py-aes", b"x")
        # Unsealed calls need no pin.
        self.assertEqual(c.sign("py-ec", b"x").version, 1)
        self.assertEqual(c.get_identity().public_key, self.d.identity)

    def test_other_identity_refused(self):
        other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        c = client(self.d, identity=other)
        self.err(coffer.Unauthenticated, "the daemon presented identity %s but %s is pinned: "
                 "refusing it" % (session.fingerprint(self.d.identity), session.fingerprint(other)),
                 c.unwrap, "py-aes", b"\x01" + bytes(40))
        self.assertEqual(c.sessions_opened(), 0)
        ident = c.get_identity()
        self.assertEqual(ident.fingerprint, session.fingerprint(self.d.identity))
        pem = os.path.join(self.d.dir, "identity.pem")
        with open(pem, "wb") as f:
            f.write(serialization.load_der_public_key(ident.public_key).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        c.pin_identity(pem)
        if self.caps.has("aes-256", "test_other_identity_refused: a wrap after the new pin"):
            self.assertEqual(c.wrap("py-aes", b"x").version, 1)

    def test_a_new_pin_drops_the_sessions_of_calls_in_flight(self):
        """A call in flight when another identity is pinned ends on its
        session, which is then dropped: the next call opens a session
        against the new pin (refused here: this daemon is not the one
        pinned), never reusing one agreed with the daemon pinned before."""
        c = client(self.d, seal_all=True)     # sealed Signs: every token signs
        c.sign("py-ec", b"a")      # an idle session, agreed with this daemon
        inside, go = threading.Event(), threading.Event()
        real = session.SessionPool._exchange

        def held(pool, send, s, method, request):
            inside.set()
            go.wait(60)
            return real(pool, send, s, method, request)

        other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        with mock.patch.object(session.SessionPool, "_exchange", held):
            with ThreadPoolExecutor(1) as ex:
                flight = ex.submit(c.sign, "py-ec", b"in flight")
                self.assertTrue(inside.wait(60))
                c.pin_identity(other)
                go.set()
                self.assertEqual(flight.result(60).version, 1)
        self.err(coffer.Unauthenticated, "the daemon presented identity %s but %s is pinned: "
                 "refusing it" % (session.fingerprint(self.d.identity), session.fingerprint(other)),
                 c.sign, "py-ec", b"after the new pin")
        self.assertEqual(c.sessions_opened(), 1)
        c.close()

    def test_peer_check(self):
        """The uid/gid the daemon signed must be this process's: with another
        euid (as through a relay) the session is refused, unless peer_check
        is off."""
        c = client(self.d, seal_all=True)
        uid, gid = os.geteuid(), os.getegid()
        with mock.patch.object(session.os, "geteuid", return_value=54321):
            self.err(coffer.Unauthenticated, "the daemon saw this session opened by uid %d gid "
                     "%d, not by this process (uid 54321 gid %d): something relays the socket; "
                     "refusing the session (user namespace: Client(peer_check=False))"
                     % (uid, gid, gid), c.sign, "py-ec", b"x")
            self.assertEqual(c.sessions_opened(), 0)
            off = client(self.d, peer_check=False, seal_all=True)
            self.assertEqual(off.sign("py-ec", b"x").version, 1)
            self.assertEqual(off.sessions_opened(), 1)

    def test_unsealed_secret_call_is_refused_by_the_daemon(self):
        """What the package seals, the daemon refuses unsealed (the raw stub)."""
        import grpc
        from daemon_fixture import stubs
        ks = stubs().pb_grpc.KeyServiceStub(self.d.channel("service"))
        with self.assertRaises(grpc.RpcError) as e:
            ks.Wrap(pb.WrapRequest(key="py-aes", plaintext=b"x"), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("must be sealed", e.exception.details())

    # -- keys --

    def test_key_metadata(self):
        c = self.c
        k = c.get_key("py-ec")
        self.assertEqual((k.name, k.type, k.purpose, k.primary_version), ("py-ec", pb.EC_P256,
                                                                            pb.SIGN, 1))
        self.assertEqual(c.get_key("py-ec", admin=True).name, "py-ec")
        names = [k.name for k in c.list_keys()]
        self.assertEqual(names, sorted(names))
        self.assertTrue(set(self.made) <= set(names))
        # The service socket lists what the caller may GetKey: not py-life,
        # whose own limit excludes get-public-key (test_create_...).
        self.assertEqual([n for n in (k.name for k in c.list_keys(admin=True))
                          if n != "py-life"], names)
        pk = c.get_public_key("py-ec")
        self.assertTrue(pk.pem.startswith("-----BEGIN PUBLIC KEY-----"))
        self.err(coffer.NotFound, "key py-zz does not exist", c.get_key, "py-zz")
        if not self.caps.has("hmac-sha256", "test_key_metadata: a mac key's public key"):
            return
        self.err(coffer.FailedPrecondition, "key py-mac is a mac key (hmac-sha256); this "
                 "operation needs a sign key", c.get_public_key, "py-mac")

    def test_create_import_rotate_lifecycle(self):
        c = self.c
        k = c.create_key("py-life", "ec-p256", allowed_operations=["sign", "verify"])
        self.assertEqual(list(k.allowed_operations), [pb.OP_SIGN, pb.OP_VERIFY])
        self.err(coffer.AlreadyExists, "key py-life already exists", c.create_key, "py-life",
                 "ec-p256")
        self.err(coffer.InvalidArgument, "unknown key type 'ec-p999': one of ec-p256, ec-p384, "
                 "ed25519, rsa-2048, rsa-3072, rsa-4096, hmac-sha256, hmac-sha384, hmac-sha512, "
                 "aes-256", c.create_key, "py-x", "ec-p999")
        # The key's own limit: no get-public-key, whatever the grant.
        self.err(coffer.PermissionDenied, "key py-life does not allow get-public-key (its own "
                 "limit)", c.get_public_key, "py-life")
        k = c.rotate_key("py-life", idempotency_key="py-rotate-0001")
        self.assertEqual(k.primary_version, 2)
        # The same idempotency key: the first answer, no third version.
        self.assertEqual(c.rotate_key("py-life", idempotency_key="py-rotate-0001")
                         .primary_version, 2)
        self.err(coffer.InvalidArgument, "an idempotency key is 8..128 characters of A-Z a-z "
                 "0-9 . _ : -", c.rotate_key, "py-life", idempotency_key="bad key")
        self.assertEqual(c.set_primary_version("py-life", 1).primary_version, 1)
        self.err(coffer.FailedPrecondition, "key py-life version 1 is the primary version; make "
                 "another version primary first, or pass force (--force) to disable it anyway "
                 "(new operations then fail)", c.disable_key_version, "py-life", 1)
        k = c.disable_key_version("py-life", 2)
        self.assertEqual(k.versions[1].state, pb.DISABLED)
        self.assertEqual(c.enable_key_version("py-life", 2).versions[1].state, pb.ENABLED)
        k = c.schedule_destroy_key_version("py-life", 2, grace_seconds=86400)
        self.assertEqual(k.versions[1].state, pb.DESTROY_SCHEDULED)
        self.assertGreater(k.versions[1].destroy_time, time.time() + 86000)
        self.assertEqual(c.cancel_destroy_key_version("py-life", 2).versions[1].state,
                         pb.ENABLED)
        c.rotate_key("py-life")
        k = c.set_primary_version("py-life", 3)
        k = c.set_key_minimums("py-life", min_version=3, min_verify_version=2)
        self.assertEqual((k.min_version, k.min_verify_version), (3, 2))
        k = c.trim_key("py-life", grace_seconds=86400)
        self.assertEqual(k.versions[0].state, pb.DESTROY_SCHEDULED)
        k = c.set_rotation_schedule("py-life", 7200)
        self.assertEqual(k.rotation_period, 7200)
        self.assertGreater(k.next_rotation_time, time.time() + 7000)
        if not self.caps.has("import:hmac-sha256", "test_create_import_rotate_lifecycle: import"):
            return
        material = bytes(range(32))
        k = c.import_key("py-imported", "hmac-sha256", material)   # sealed
        self.assertEqual(k.type, pb.HMAC_SHA256)
        import hmac as hmac_mod
        self.assertEqual(c.mac("py-imported", b"z").mac,
                         hmac_mod.new(material, b"z", hashlib.sha256).digest())

    # -- HMAC-signed HTTP requests --

    @needs("import:hmac-sha256")
    def test_http_requests(self):
        c = self.c
        secret = os.urandom(32)
        c.import_key("orders-api", "hmac-sha256", secret)
        now = int(time.time())
        # The service's client signs with its own copy; Coffer verifies.
        sig = reqsign.sign(secret, "POST", "/v1/orders", "b=2&a=1", b'{"n":1}', now,
                           "nonce-python-00001", "orders-api")
        args = ("orders-api", "POST", "/v1/orders", "a=1&b=2", b'{"n":1}', now,
                "nonce-python-00001")
        r = c.verify_http_request(*args, sig)
        self.assertEqual((r.valid, r.verdict, r.version), (True, pb.VALID, 1))
        r = c.verify_http_request(*args, sig)
        self.assertEqual((r.valid, coffer.VERDICTS[r.verdict]), (False, "replayed"))
        self.assertEqual(r.reason, "nonce was already used with this key: a replayed request")
        r = c.verify_http_request("orders-api", "POST", "/v1/orders", "a=1&b=2", b'{"n":2}', now,
                                  "nonce-python-00002", sig)
        self.assertEqual(coffer.VERDICTS[r.verdict], "bad-signature")
        old = now - 3600
        stale = reqsign.sign(secret, "GET", "/", "", b"", old, "nonce-python-00003", "orders-api")
        r = c.verify_http_request("orders-api", "GET", "/", "", b"", old, "nonce-python-00003",
                                  stale)
        self.assertEqual(coffer.VERDICTS[r.verdict], "expired")
        # Coffer signs; the local code agrees.
        s = c.sign_http_request("orders-api", "GET", "/v1/items", "z=1&y=%7e", b"")
        self.assertEqual(s.signature, reqsign.sign(secret, "GET", "/v1/items", "z=1&y=%7e", b"",
                                                   s.timestamp, s.nonce, "orders-api"))
        self.assertEqual(s.authorization, reqsign.authorization("orders-api", s.version,
                                                                s.timestamp, s.nonce,
                                                                s.signature))
        self.err(coffer.InvalidArgument, "method character 1 is not allowed",
                 c.verify_http_request, "orders-api", "get", "/", "", b"", now,
                 "nonce-python-00004", sig)

    @needs("hmac-sha256")
    def test_a_nonce_check_is_not_repeated(self):
        """The one repeat of a KeyService call on UNAVAILABLE (the answer
        lost with the connection) is not made for VerifyRequestSignature:
        the daemon ran it and recorded the nonce, so a repeat would turn a
        valid request into "replayed". SignHttpRequest records nothing and
        is repeated."""
        c = client(self.d)
        real = coffer.Client._unary
        sent = []

        def first_answer_lost(cl, kind, path, body, idem, deadline=None):
            sent.append(path.rsplit("/", 1)[1])
            answer = real(cl, kind, path, body, idem, deadline)   # the daemon ran the call
            if len(sent) == 1:
                raise coffer.Unavailable("Socket closed", method=path)
            return answer

        s = c.sign_http_request("py-mac", "GET", "/v1/once")
        args = ("py-mac", "GET", "/v1/once", "", b"", s.timestamp, s.nonce, s.signature)
        with mock.patch.object(coffer.Client, "_unary", first_answer_lost):
            self.err(coffer.Unavailable, "Socket closed", c.verify_http_request, *args)
        self.assertEqual(sent, ["VerifyRequestSignature"])
        r = c.verify_http_request(*args)         # it did run: the nonce is recorded
        self.assertEqual((r.valid, coffer.VERDICTS[r.verdict]), (False, "replayed"))
        sent.clear()
        with mock.patch.object(coffer.Client, "_unary", first_answer_lost):
            again = c.sign_http_request("py-mac", "GET", "/v1/twice")
        self.assertEqual(sent, ["SignHttpRequest", "SignHttpRequest"])
        self.assertTrue(c.verify_http_request("py-mac", "GET", "/v1/twice", "", b"",
                                              again.timestamp, again.nonce,
                                              again.signature).valid)
        c.close()

    # -- principals and the audit trail --

    def test_principals(self):
        c = self.c
        p = c.create_principal("py-svc", uids=[4242], idempotency_key="py-create-4242")
        self.assertEqual((p.name, list(p.uids)), ("py-svc", [4242]))
        self.err(coffer.AlreadyExists, "uid 4242 belongs to principal py-svc (a uid or gid names one "
                 "principal)",
                 c.create_principal, "py-svc2", uids=[4242])
        p = c.grant("py-svc", "py-*", ["sign", "verify"])
        self.assertEqual([(g.key_pattern, list(g.operations)) for g in p.grants],
                         [("py-*", [pb.OP_SIGN, pb.OP_VERIFY])])
        p = c.revoke("py-svc", "py-*", ["verify"])
        self.assertEqual(list(p.grants[0].operations), [pb.OP_SIGN])
        p = c.set_rate_limit("py-svc", 5.0, 10, operation="sign")
        self.assertEqual([(lim.operation, lim.per_second, lim.burst) for lim in p.limits],
                         [(pb.OP_SIGN, 5.0, 10)])
        self.assertEqual(c.get_principal("py-svc").name, "py-svc")
        self.assertIn("py-svc", [x.name for x in c.list_principals()])
        r = c.set_principal_auth("py-svc", True)
        self.assertEqual((r.require_api_key, r.has_live_key), (True, False))
        c.delete_principal("py-svc")
        self.err(coffer.NotFound, "no principal py-svc", c.get_principal, "py-svc")
        self.err(coffer.NotFound, "principal tester has no grant for nothing-*",
                 c.revoke, "tester", "nothing-*")

    def test_token_info(self):
        t = self.c.get_token_info()
        self.assertEqual(t.module, self.d.module)
        kinds = {k.type: k for k in t.key_types}
        self.assertTrue(kinds[pb.EC_P256].can_generate and kinds[pb.EC_P256].can_use)
        # A token that makes every type and runs session copies (SoftHSM2)
        # lacks nothing; one that does not says what it lacks.
        complete = all(k.can_generate for k in t.key_types) and t.session_copies
        self.assertEqual(complete, list(t.unavailable) == [], list(t.unavailable))
        self.assertEqual(kinds[pb.HMAC_SHA256].can_import,
                         not any(u.startswith("API keys") for u in t.unavailable))

    def test_audit(self):
        c = self.c
        c.sign("py-ec", b"audited")
        lines = c.tail_audit(5)
        self.assertLessEqual(len(lines), 5)
        self.assertTrue(any('"method":"/coffer.v1.KeyService/Sign"' in x for x in lines))
        v = c.verify_audit()
        self.assertTrue(v.ok, v.reason)
        self.assertGreater(v.records, 0)

    def test_idempotent_call_rides_out_a_restart(self):
        """With an idempotency key an admin call is repeated while the daemon
        is away (restart_wait; 10 s by default, more here: a loaded machine
        may take longer to start a daemon); without one it fails at once."""
        c = self.c
        c.restart_wait = 60.0
        c.create_key("py-ride", "ec-p256")
        self.d.stop()
        try:
            t0 = time.monotonic()
            with self.assertRaises(coffer.Unavailable):
                c.rotate_key("py-ride")
            self.assertLess(time.monotonic() - t0, 2)
            later = threading.Timer(1.0, self.d.start)
            later.start()
            t1 = time.monotonic()
            try:
                k = c.rotate_key("py-ride", idempotency_key="py-ride-out-0001")
            finally:
                later.join()
            self.assertGreater(time.monotonic() - t1, 0.9)   # it waited for the daemon
        finally:
            if not self.d.running:
                self.d.start()
        self.assertEqual([v.version for v in k.versions], [1, 2])
        self.assertEqual(c.get_key("py-ride", admin=True).primary_version, 2)

    def sign_together(self, c, n, text):
        """n sealed Signs on Client c (seal_all) in flight at once: n
        sessions in use."""
        together = threading.Barrier(n, timeout=60)
        arrivals = itertools.count()
        real = session.SessionPool._exchange

        def in_flight_together(pool, send, s, method, request):
            if next(arrivals) < n:    # a retry (after them all) goes straight on
                together.wait()
            return real(pool, send, s, method, request)

        with mock.patch.object(session.SessionPool, "_exchange", in_flight_together):
            with ThreadPoolExecutor(n) as ex:
                self.assertEqual([w.version for w in ex.map(
                    lambda i: c.sign("py-ec", b"%s %d" % (text, i)), range(n))], [1] * n)

    def test_idle_sessions_after_a_restart(self):
        """Calls in flight together leave several idle sessions; cofferd
        restarts and knows none of them: the first sealed call's refusal
        ("session unknown or ended") forgets them all and its one retry
        opens a new session, so every call after the restart succeeds, and
        no later call meets one of the dead sessions."""
        c = client(self.d, seal_all=True)
        n = 4
        self.sign_together(c, n, b"before")
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (n, 0))
        self.d.restart()
        deadline = time.monotonic() + 30
        while True:     # the channel reconnects (an unsealed call: no session used)
            try:
                c.health()
                break
            except coffer.Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for i in range(n + 1):
            text = b"after the restart %d" % i
            self.assertTrue(c.verify("py-ec", 1, c.sign("py-ec", text).signature, text))
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (n + 1, 1))
        # n at once: one on the live session, n - 1 on new ones, none refused.
        self.sign_together(c, n, b"after")
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (2 * n, 1))
        c.close()

    def test_health(self):
        c = self.c
        self.assertEqual(c.health(), "SERVING")
        self.assertEqual(c.health("coffer.v1.KeyService"), "SERVING")
        self.assertEqual(c.health("coffer.v1.AdminService", admin=True), "SERVING")
        self.err(coffer.NotFound, "no service \"coffer.v1.AdminService\" on this socket",
                 c.health, "coffer.v1.AdminService")

    def test_threads_share_a_client(self):
        """80 sealed round trips from 8 threads on one Client: one session
        per call in flight, none refused."""
        c = client(self.d, seal_all=True)

        def work(i):
            text = b"thread data %d" % i
            return c.verify("py-ec", 1, c.sign("py-ec", text).signature, text)

        with ThreadPoolExecutor(8) as ex:
            self.assertEqual(list(ex.map(work, range(80))), [True] * 80)
        self.assertEqual(c.sealed_retries(), 0)
        self.assertTrue(1 <= c.sessions_opened() <= 8, c.sessions_opened())
        c.close()

    def test_deadline(self):
        c = client(self.d, timeout=1.0)
        c.sign("py-ec", b"connected")
        os.kill(self.d.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            self.err(coffer.DeadlineExceeded, "no answer from cofferd at %s within 1.0 s"
                     % self.d.service_socket, c.sign, "py-ec", b"x")
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            os.kill(self.d.pid, signal.SIGCONT)
        c.close()

    def test_socket_errors(self):
        c = coffer.Client(os.path.join(self.d.dir, "absent.sock"))
        absent = os.path.join(self.d.dir, "absent.sock")
        with self.assertRaises(coffer.Unavailable) as e:
            c.mac("py-mac", b"x")
        # gRPC's own words follow ours: "failed to connect to all addresses; ..."
        self.assertTrue(e.exception.message.startswith(
            "cannot reach cofferd at %s: failed to connect" % absent), e.exception.message)
        self.assertIn("No such file or directory", e.exception.message)
        self.err(coffer.InvalidArgument, "no admin socket was given to this Client "
                 "(Client(admin_socket=...))", c.list_principals)
        # An admin socket is not a service socket: the daemon says so.
        wrong = coffer.Client(self.d.admin_socket, identity=self.d.identity)
        self.err(coffer.Unimplemented, "/coffer.v1.KeyService/Mac is not served on the admin "
                 "socket", wrong.mac, "py-mac", b"x")


class LiveSessions(Live):
    """Renewal before the record limit and the lifetime, and the one retry
    after the daemon ended a session (max_per_caller = 1); require_sealed."""

    CONFIG = {"session": {"max_records": "3", "max_per_caller": "1", "lifetime": "3",
                          "require_sealed": "true"}}

    def test_seal_all(self):
        """[session] require_sealed: every KeyService call must be sealed."""
        with self.assertRaises(coffer.FailedPrecondition) as e:
            client(self.d).sign("py-ec", b"x")
        self.assertEqual(e.exception.message, "this daemon requires every KeyService call to be "
                         "sealed in a session (session.require_sealed)")
        c = client(self.d, seal_all=True)
        s = c.sign("py-ec", b"x")
        self.assertTrue(c.verify("py-ec", s.version, s.signature, b"x"))
        self.assertEqual(c.sessions_opened(), 1)
        if self.caps.has("hmac-sha256", "test_seal_all: a sealed MAC"):
            m = c.mac("py-mac", b"x")     # (max_records 3: on a second session)
            self.assertTrue(c.verify_mac("py-mac", m.version, b"x", m.mac))

    def test_renewed_before_the_record_limit(self):
        c = client(self.d, seal_all=True)
        sigs = [c.sign("py-ec", b"%d" % i).signature for i in range(6)]
        # Sequence numbers 0 and 1 per session (max_records 3 allows 0..2,
        # libcoffer keeps one in reserve): three sessions, no refusal.
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (3, 0))
        self.assertTrue(c.verify("py-ec", 1, sigs[5], b"5"))

    def test_renewed_before_the_lifetime(self):
        c = client(self.d, seal_all=True)
        c.sign("py-ec", b"a")
        time.sleep(3.2)
        c.sign("py-ec", b"b")
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (2, 0))

    def test_one_retry_after_the_daemon_ended_the_session(self):
        a, b = client(self.d, seal_all=True), client(self.d, seal_all=True)
        a.sign("py-ec", b"a")
        b.sign("py-ec", b"b")       # one session per uid: a's is ended
        self.assertTrue(a.verify("py-ec", 1, a.sign("py-ec", b"again").signature, b"again"))
        self.assertEqual(a.sealed_retries(), 1)
        self.assertEqual(a.sessions_opened(), 2)


class LiveApiKeys(Live):
    """Calls signed with an API key (plain and sealed), refused without,
    with a wrong or revoked key; a rate limit's retry-after."""

    @needs(API_KEYS, "hmac-sha256", "aes-256")
    def test_signed_calls(self):
        adm = coffer.Client(admin_socket=self.d.admin_socket, identity=self.d.identity)
        made = adm.create_api_key("tester")           # sealed on the admin socket
        key_id, secret = made.key.id, made.secret
        self.assertEqual(len(secret), 32)
        self.assertEqual([k.id for k in adm.list_api_keys("tester")], [key_id])
        path = os.path.join(self.d.dir, "tester.key")
        coffer.write_api_key_file(path, key_id, secret)

        unsigned = client(self.d)
        self.assertEqual(unsigned.api_key_id, None)
        text = ("principal tester has an API key, so every call must carry \"authorization: "
                "COFFER-HMAC-SHA256 keyId=..., timestamp=..., nonce=..., signature=...\" "
                "(libcoffer: coffer_set_api_key; cofferctl: --api-key FILE)")
        with self.assertRaises(coffer.Unauthenticated) as e:
            unsigned.mac("py-mac", b"x")
        self.assertEqual(e.exception.message, text)
        with self.assertRaises(coffer.Unauthenticated) as e:   # the handshake is refused too
            unsigned.wrap("py-aes", b"x")
        self.assertEqual(e.exception.message, text)

        signed = client(self.d, api_key_file=path)
        self.assertEqual(signed.api_key_id, key_id)
        later = client(self.d)
        later.set_api_key_file(path)
        self.assertEqual(later.mac("py-mac", b"x").version, 1)
        later.set_api_key(None)
        self.assertEqual(later.api_key_id, None)
        for _ in range(3):   # a fresh nonce per call
            self.assertEqual(signed.mac("py-mac", b"x").version, 1)
        w = signed.wrap("py-aes", b"sealed and signed")
        self.assertEqual(signed.unwrap("py-aes", w.ciphertext).plaintext, b"sealed and signed")

        wrong = client(self.d, api_key=(key_id, os.urandom(32)))
        with self.assertRaises(coffer.Unauthenticated) as e:
            wrong.mac("py-mac", b"x")
        self.assertEqual(e.exception.message,
                         "bad signature: it matches no live secret of API key %s (a rotated-out "
                         "secret stops at its deadline); check the secret and the canonical "
                         "string" % key_id)

        # Rotation with overlap: both secrets sign until the deadline.
        rot = adm.rotate_api_key_secret(key_id, overlap_seconds=600)
        self.assertEqual(len(rot.key.secrets), 2)
        self.assertEqual(signed.mac("py-mac", b"old secret").version, 1)
        fresh = client(self.d, api_key=(key_id, rot.secret))
        self.assertEqual(fresh.mac("py-mac", b"new secret").version, 1)

        # A rate limit: RESOURCE_EXHAUSTED with retry_after_ms, plain and
        # sealed (the session is open before the limit is set).
        fresh.wrap("py-aes", b"before the limit")
        adm.set_rate_limit("tester", 0.01, 1)
        try:
            hit = None
            for _ in range(3):
                try:
                    fresh.mac("py-mac", b"r")
                except coffer.ResourceExhausted as e:
                    hit = e
                    break
            self.assertIsNotNone(hit)
            self.assertGreater(hit.retry_after_ms, 0)
            # (its limit is of all operations: the refusal names none)
            self.assertEqual(hit.message, "rate limit of principal tester exceeded; "
                             "retry after %d ms" % hit.retry_after_ms)
            with self.assertRaises(coffer.ResourceExhausted) as e:
                fresh.wrap("py-aes", b"r")
            w = e.exception
            self.assertGreater(w.retry_after_ms, 0)
            self.assertEqual(w.message, "rate limit of principal tester exceeded; "
                             "retry after %d ms" % w.retry_after_ms)
            # Refused inside the session (SealedResult): the session goes on.
            self.assertEqual((fresh.sessions_opened(), fresh.sealed_retries()), (1, 0))
        finally:
            adm.set_rate_limit("tester", 0, 1)

        revoked = adm.revoke_api_key(key_id)
        self.assertGreater(revoked.revoke_time, 0)
        with self.assertRaises(coffer.Unauthenticated) as e:
            fresh.mac("py-mac", b"x")
        self.assertEqual(e.exception.message, "API key %s was revoked" % key_id)
        with self.assertRaises(coffer.Unauthenticated) as e:
            unsigned.mac("py-mac", b"x")
        self.assertEqual(e.exception.message,
                         "principal tester requires signed calls (it had API keys; the last was "
                         "revoked): create a key with cofferctl principal add-key tester, or "
                         "allow uid-only calls with cofferctl principal set-auth tester "
                         "--uid-only")
        r = adm.set_principal_auth("tester", False)
        self.assertEqual((r.require_api_key, r.has_live_key), (False, False))
        self.assertEqual(unsigned.mac("py-mac", b"x").version, 1)


class LiveFork(Live):
    """A Client made before os.fork(), used by the parent and the child."""

    @needs(API_KEYS, "hmac-sha256", "aes-256")
    def test_signed_and_sealed_calls_on_both_sides_of_a_fork(self):
        """The child draws its own nonce prefix (the same sequence as the
        parent's would be refused as replayed) and opens its own sessions
        (the parent's keys and sequence numbers are not used twice)."""
        adm = coffer.Client(admin_socket=self.d.admin_socket, identity=self.d.identity)
        made = adm.create_api_key("tester")
        c = client(self.d, api_key=(made.key.id, made.secret))
        self.assertEqual(c.mac("py-mac", b"before the fork").version, 1)
        self.assertEqual(c.wrap("py-aes", b"sealed before the fork").version, 1)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:     # the child: report through the pipe, never return into unittest
            out = "child failed before its calls"
            try:
                os.close(r)
                got = c.unwrap("py-aes", c.wrap("py-aes", b"child").ciphertext).plaintext
                out = "mac %d unwrap %s sessions %d retries %d" % (
                    c.mac("py-mac", b"child").version, got.decode(), c.sessions_opened(),
                    c.sealed_retries())
            except BaseException as e:   # anything, as text for the parent
                out = "child failed: %r" % e
            finally:
                os.write(w, out.encode())
                os._exit(0)
        os.close(w)
        try:
            with os.fdopen(r, "rb") as f:
                child = f.read().decode()
        finally:
            _, status = os.waitpid(pid, 0)
        self.assertEqual(status, 0)
        self.assertEqual(child, "mac 1 unwrap child sessions 2 retries 0")
        # The parent goes on with its nonces and its session, none refused.
        self.assertEqual(c.mac("py-mac", b"after the fork").version, 1)
        self.assertEqual(c.unwrap("py-aes", c.wrap("py-aes", b"parent").ciphertext).plaintext,
                         b"parent")
        self.assertEqual((c.sessions_opened(), c.sealed_retries()), (1, 0))
        c.close()
        adm.close()


if __name__ == "__main__":
    if test_token() == "tpm":
        tpm_main()      # exit 77 (skipped) without swtpm & co., unless COFFER_REQUIRE_TPM=1
    else:
        unittest.main(verbosity=2)
