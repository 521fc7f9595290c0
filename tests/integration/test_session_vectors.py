#!/usr/bin/python3
"""The test vectors of proto/session-protocol.md, recomputed independently.

coffer_session.py (written from the document alone, not from the C code)
recomputes every vector from the fixed inputs: the ephemeral public keys,
the transcript built item by item, TH, the signed message, the shared secret
from both sides, the four keys/IVs, and per record the AAD, nonce, record and
its opening; the vector signature must verify under the vector identity key.
Negative checks: a flipped byte, the other direction, another sequence,
another session id, another method or a truncated record must not open.

HandshakeChecks feeds OpenSessionResponses to the caller's checks (the vector
response itself, then responses signed by a throw-away key) and checks that
each bad one is refused by the check the document names, in its order.
FakeDaemonSession runs Session over a real grpc channel against a small
in-process SessionService written here from the same reading of the
document: it exercises the gRPC plumbing of coffer_session, it is not an
interop test (that needs cofferd).

Every mismatch names its field. Run:
    /usr/bin/python3 tests/integration/test_session_vectors.py [-v]
The document is $COFFER_SOURCE_DIR/proto/session-protocol.md, else
<this file>/../proto/session-protocol.md.
"""

import concurrent.futures
import hashlib
import os
import shutil
import struct
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

import coffer_session as cs  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, x25519  # noqa: E402


def doc_path():
    src = os.environ.get("COFFER_SOURCE_DIR")
    if src:
        return os.path.join(src, "proto", "session-protocol.md")
    return os.path.join(HERE, "..", "..", "proto", "session-protocol.md")


BEGIN = "<!-- vectors:begin -->"
END = "<!-- vectors:end -->"

# Values that are not hex in the vector block.
TEXT_FIELDS = {"principal"}
INT_FIELDS = {"caller_uid", "caller_gid", "lifetime_seconds", "max_records", "max_bytes"}

REQUIRED = (
    "client_ephemeral_private", "client_ephemeral", "client_random", "principal",
    "server_ephemeral_private", "server_ephemeral", "server_random", "session_id",
    "caller_uid", "caller_gid", "identity_public_key", "lifetime_seconds", "max_records",
    "max_bytes", "transcript", "transcript_hash", "signed_message", "signature",
    "shared_secret", "c2s_key", "c2s_iv", "s2c_key", "s2c_iv",
)
RECORD_KEYS = ("direction", "sequence", "method", "plaintext", "aad", "nonce", "record")


def parse_vectors(text):
    """The `name: value` lines between the markers -> (fields, records).

    fields: name -> bytes (hex), str (principal) or int; records: a list of
    dicts (index, direction, sequence, method, plaintext, aad, nonce,
    record), in index order.
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError("the document must hold exactly one %s and one %s" % (BEGIN, END))
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    raw = {}
    for n, line in enumerate(block.splitlines(), 1):
        if not line.strip() or line.strip().startswith("```"):
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError("vector line %d is not 'name: value': %r" % (n, line))
        if name in raw:
            raise ValueError("vector %s appears twice" % name)
        raw[name] = value

    def conv(name, value):
        base = name.split("_", 1)[1] if name.startswith("record") else name
        try:
            if name in TEXT_FIELDS or (name.startswith("record") and base == "method"):
                return value
            if name in INT_FIELDS or (name.startswith("record")
                                      and base in ("direction", "sequence")):
                return int(value, 10)
            return bytes.fromhex(value)
        except ValueError as e:
            raise ValueError("vector %s: bad value %r (%s)" % (name, value, e))

    fields, records = {}, {}
    for name, value in raw.items():
        if name.startswith("record"):
            head, _, key = name.partition("_")
            idx = head[len("record"):]
            if not idx.isdigit() or key not in RECORD_KEYS:
                raise ValueError("unknown vector %s" % name)
            records.setdefault(int(idx), {"index": int(idx)})[key] = conv(name, value)
        else:
            fields[name] = conv(name, value)
    missing = [n for n in REQUIRED if n not in fields]
    for i, r in records.items():
        missing += ["record%d_%s" % (i, k) for k in RECORD_KEYS if k not in r]
    if missing:
        raise ValueError("vectors missing: %s" % ", ".join(missing))
    unknown = sorted(set(fields) - set(REQUIRED))
    if unknown:
        raise ValueError("unknown vectors: %s" % ", ".join(unknown))
    if not records:
        raise ValueError("no record vectors")
    return fields, [records[i] for i in sorted(records)]


def load():
    with open(doc_path(), encoding="utf-8") as f:
        return parse_vectors(f.read())


def _hex(v):
    return v.hex() if isinstance(v, (bytes, bytearray)) else repr(v)


class VectorCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.V, cls.R = load()

    def check(self, field, got, want):
        """Compare one value; a mismatch names the field and shows both."""
        with self.subTest(field=field):
            if got != want:
                self.fail("%s mismatch:\n  computed: %s\n  document: %s"
                          % (field, _hex(got), _hex(want)))

    def transcript_fields(self):
        V = self.V
        f = {name: V[name] for name in cs.TRANSCRIPT_FIELDS if name in V}
        f["version"] = cs.VERSION
        return f

    def record_key(self, direction):
        k = cs.derive_keys(self.V["shared_secret"], self.V["transcript_hash"])
        name = "c2s" if direction == cs.C2S else "s2c"
        return k[name + "_key"], k[name + "_iv"]


class Vectors(VectorCase):
    def test_ephemeral_public_keys(self):
        V = self.V
        self.check("client_ephemeral", cs.x25519_public(V["client_ephemeral_private"]),
                   V["client_ephemeral"])
        self.check("server_ephemeral", cs.x25519_public(V["server_ephemeral_private"]),
                   V["server_ephemeral"])

    def test_transcript_item_by_item(self):
        """Split the document's transcript at its length prefixes and compare
        each item with the one built from the named field."""
        t = self.V["transcript"]
        items, off = [], 0
        while off < len(t):
            self.assertLessEqual(off + 2, len(t), "transcript: truncated length prefix")
            n = struct.unpack(">H", t[off:off + 2])[0]
            items.append(t[off + 2:off + 2 + n])
            off += 2 + n
        self.assertEqual(off, len(t), "transcript: last item overruns")
        V = self.V
        want = [
            ("item 1 label", cs.HANDSHAKE_LABEL),
            ("item 2 version", struct.pack(">I", 1)),
            ("item 3 client_ephemeral", V["client_ephemeral"]),
            ("item 4 client_random", V["client_random"]),
            ("item 5 principal", V["principal"].encode("utf-8")),
            ("item 6 session_id", V["session_id"]),
            ("item 7 server_ephemeral", V["server_ephemeral"]),
            ("item 8 server_random", V["server_random"]),
            ("item 9 caller_uid||caller_gid", struct.pack(">II", V["caller_uid"],
                                                           V["caller_gid"])),
            ("item 10 identity_public_key", V["identity_public_key"]),
            ("item 11 lifetime||max_records||max_bytes",
             struct.pack(">IQQ", V["lifetime_seconds"], V["max_records"], V["max_bytes"])),
        ]
        self.check("transcript item count", len(items), len(want))
        sizes = (19, 4, 32, 32, None, 16, 32, 32, 8, 91, 20)   # the table's byte counts
        for (name, w), got, size in zip(want, items, sizes):
            self.check("transcript " + name, got, w)
            if size is not None:
                self.check("transcript %s size" % name, len(got), size)

    def test_transcript(self):
        self.check("transcript", cs.transcript(self.transcript_fields()), self.V["transcript"])

    def test_transcript_hash(self):
        t = cs.transcript(self.transcript_fields())
        self.check("transcript_hash", cs.transcript_hash(t), self.V["transcript_hash"])

    def test_signed_message(self):
        sm = cs.signed_message(self.V["transcript_hash"])
        self.check("signed_message", sm, self.V["signed_message"])
        self.check("signed_message length", len(sm), 59)

    def test_signature_verifies(self):
        V = self.V
        with self.subTest(field="signature"):
            try:
                cs.verify_signature(V["identity_public_key"], V["signature"],
                                    V["signed_message"])
            except cs.SessionError as e:
                self.fail("signature: does not verify under identity_public_key: %s" % e)
        # ... and only over the signed message.
        bad = bytearray(V["signed_message"])
        bad[-1] ^= 1
        for name, msg in (("signed_message with a flipped bit", bytes(bad)),
                          ("TH instead of the signed message", V["transcript_hash"]),
                          ("the transcript instead of the signed message", V["transcript"])):
            with self.subTest(field="signature over " + name):
                with self.assertRaises(cs.SessionError, msg="signature verifies over " + name):
                    cs.verify_signature(V["identity_public_key"], V["signature"], msg)

    def test_identity_key_is_p256_spki(self):
        key = serialization.load_der_public_key(self.V["identity_public_key"])
        self.check("identity_public_key curve", getattr(key, "curve", None) and key.curve.name,
                   "secp256r1")
        fp = cs.fingerprint(self.V["identity_public_key"])
        self.check("fingerprint", fp,
                   "sha256:" + hashlib.sha256(self.V["identity_public_key"]).hexdigest())

    def test_shared_secret_both_sides(self):
        V = self.V
        self.check("shared_secret (caller side)",
                   cs.x25519_shared(V["client_ephemeral_private"], V["server_ephemeral"]),
                   V["shared_secret"])
        self.check("shared_secret (daemon side)",
                   cs.x25519_shared(V["server_ephemeral_private"], V["client_ephemeral"]),
                   V["shared_secret"])

    def test_keys(self):
        k = cs.derive_keys(self.V["shared_secret"], self.V["transcript_hash"])
        for name in ("c2s_key", "c2s_iv", "s2c_key", "s2c_iv"):
            self.check(name, k[name], self.V[name])

    def test_records(self):
        sid = self.V["session_id"]
        for r in self.R:
            p = "record%d_" % r["index"]
            d, n, m = r["direction"], r["sequence"], r["method"]
            key, iv = self.record_key(d)
            self.check(p + "aad", cs.aad(sid, d, n, m), r["aad"])
            self.check(p + "nonce", cs.nonce(iv, n), r["nonce"])
            rec = cs.seal(key, iv, sid, d, n, m, r["plaintext"])
            self.check(p + "record", rec, r["record"])
            self.check(p + "record length", len(rec), len(r["plaintext"]) + cs.TAG_LEN)
            try:
                plain = cs.open_(key, iv, sid, d, n, m, r["record"])
            except cs.SessionError as e:
                self.fail("%sopen: the document's record does not open: %s" % (p, e))
            self.check(p + "plaintext (opened)", plain, r["plaintext"])

    def test_records_refused(self):
        """Each alteration must make open_ fail ("Records": a reflected
        record, a record from another session, a truncated or a tampered
        record do not open)."""
        sid = self.V["session_id"]
        other_sid = bytes(b ^ 0xFF for b in sid)
        for r in self.R:
            p = "record%d " % r["index"]
            d, n, m, rec = r["direction"], r["sequence"], r["method"], r["record"]
            key, iv = self.record_key(d)
            other = cs.S2C if d == cs.C2S else cs.C2S
            okey, oiv = self.record_key(other)
            cases = []
            for i in range(len(rec)):
                b = bytearray(rec)
                b[i] ^= 0x01
                cases.append(("byte %d flipped" % i, (key, iv, sid, d, n, m, bytes(b))))
            cases += [
                ("other direction (AAD only)", (key, iv, sid, other, n, m, rec)),
                ("other direction (its key, IV and AAD)", (okey, oiv, sid, other, n, m, rec)),
                ("sequence + 1", (key, iv, sid, d, n + 1, m, rec)),
                ("other session_id", (key, iv, other_sid, d, n, m, rec)),
                ("other method", (key, iv, sid, d, n, m + "x", rec)),
                ("other key", (okey, iv, sid, d, n, m, rec)),
                ("extra byte appended", (key, iv, sid, d, n, m, rec + b"\x00")),
            ]
            if n > 0:
                cases.append(("sequence - 1", (key, iv, sid, d, n - 1, m, rec)))
            for cut in sorted({1, cs.TAG_LEN, len(rec)}):
                if cut <= len(rec):
                    cases.append(("truncated by %d byte(s)" % cut,
                                  (key, iv, sid, d, n, m, rec[:len(rec) - cut])))
            for name, args in cases:
                with self.subTest(field=p + name):
                    try:
                        cs.open_(*args)
                    except cs.RecordError:
                        continue
                    self.fail("%s%s: open_ accepted it" % (p, name))

    def test_nonce_counter_layout(self):
        """nonce = iv XOR (4 zero bytes || n big-endian): the first 4 IV
        bytes never change, the sequence lands in the last 8."""
        iv = self.V["c2s_iv"]
        n = 0x0102030405060708
        got = cs.nonce(iv, n)
        self.check("nonce prefix", got[:4], iv[:4])
        self.check("nonce counter", bytes(a ^ b for a, b in zip(got[4:], iv[4:])),
                   struct.pack(">Q", n))


# ---- the caller's handshake checks ----

def _stubs():
    from daemon_fixture import stubs
    return stubs()


def spki(key):
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def signed_response(pb, hs, key, sign=None, **over):
    """An OpenSessionResponse for handshake `hs`, signed by `key` over the
    transcript of its own fields; `over` replaces fields, and `sign` (a dict
    of transcript field overrides) makes the signature cover other values
    than the ones sent."""
    f = {
        "session_id": os.urandom(16),
        "server_ephemeral": x25519.X25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        "server_random": os.urandom(32), "caller_uid": 1000, "caller_gid": 1000,
        "identity_public_key": spki(key), "lifetime_seconds": 3600,
        "max_records": 1000000, "max_bytes": 1 << 30,
    }
    f.update(over)
    t = dict(f, version=hs.version, client_ephemeral=hs.client_ephemeral,
             client_random=hs.client_random, principal=hs.principal)
    t.update(sign or {})
    msg = cs.signed_message(cs.transcript_hash(cs.transcript(t)))
    f["signature"] = key.sign(msg, ec.ECDSA(hashes.SHA256()))
    return pb.OpenSessionResponse(**f)


class HandshakeChecks(VectorCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pb = _stubs().pb
        cls.key = ec.generate_private_key(ec.SECP256R1())

    def vector_handshake(self, pinned=None):
        V = self.V
        return cs.Handshake(V["identity_public_key"] if pinned is None else pinned,
                            principal=V["principal"],
                            client_private=V["client_ephemeral_private"],
                            client_random=V["client_random"])

    def vector_response(self):
        V = self.V
        return self.pb.OpenSessionResponse(
            session_id=V["session_id"], server_ephemeral=V["server_ephemeral"],
            server_random=V["server_random"], caller_uid=V["caller_uid"],
            caller_gid=V["caller_gid"], identity_public_key=V["identity_public_key"],
            lifetime_seconds=V["lifetime_seconds"], max_records=V["max_records"],
            max_bytes=V["max_bytes"], signature=V["signature"])

    def refused(self, what, hs, resp, check):
        with self.subTest(field=what):
            try:
                hs.finish(resp)
            except cs.SessionError as e:
                self.assertEqual(e.check, check, "%s: refused by the %r check, expected %r (%s)"
                                 % (what, e.check, check, e))
                return
            self.fail("%s: the handshake was accepted" % what)

    def test_vector_response_accepted(self):
        """The document's own response (with its signature) passes the
        caller's checks and yields the document's keys, whatever the form
        of the pin."""
        V = self.V
        pem = serialization.load_der_public_key(V["identity_public_key"]).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for form, pin in (("DER", V["identity_public_key"]), ("PEM", pem),
                          ("fingerprint", cs.fingerprint(V["identity_public_key"]))):
            hs = self.vector_handshake(pin)
            self.check("request client_ephemeral (%s pin)" % form,
                       hs.request(self.pb).client_ephemeral, V["client_ephemeral"])
            try:
                res = hs.finish(self.vector_response())
            except cs.SessionError as e:
                self.fail("handshake with the vector response (%s pin) refused: %s" % (form, e))
            self.check("transcript (handshake, %s pin)" % form, res["transcript"],
                       V["transcript"])
            for name in ("c2s_key", "c2s_iv", "s2c_key", "s2c_iv"):
                self.check("%s (handshake, %s pin)" % (name, form), res["keys"][name], V[name])

    def test_vector_response_altered(self):
        """Any transcript value of the response changed: the signature no
        longer verifies. The pinned key changed: refused first."""
        V = self.V
        for name, value in (("session_id", bytes(16)), ("server_ephemeral", bytes(32)),
                            ("server_random", bytes(32)), ("caller_uid", 0),
                            ("caller_gid", 0), ("lifetime_seconds", 3601),
                            ("max_records", 1000001), ("max_bytes", 1 << 31)):
            resp = self.vector_response()
            setattr(resp, name, value)
            self.refused("vector response with other " + name, self.vector_handshake(),
                         resp, "signature")
        for name, hs_args in (("principal", {"principal": "billinG"}),
                              ("client_random", {"client_random": bytes(32)}),
                              ("client_ephemeral", {"client_private": bytes(range(32))}),
                              ("version", {"version": 2})):
            args = dict(principal=V["principal"], client_private=V["client_ephemeral_private"],
                        client_random=V["client_random"])
            args.update(hs_args)
            self.refused("vector response to a request with other " + name,
                         cs.Handshake(V["identity_public_key"], **args),
                         self.vector_response(), "signature")
        resp = self.vector_response()
        resp.signature = resp.signature[:-1] + bytes([resp.signature[-1] ^ 1])
        self.refused("vector response with a flipped signature byte",
                     self.vector_handshake(), resp, "signature")
        self.refused("vector response, another key pinned",
                     self.vector_handshake(spki(self.key)), self.vector_response(),
                     "pinned_key")

    def test_check_order(self):
        """Handshake step 3: pinned key, then sizes, then signature, then
        the shared secret."""
        pb, key = self.pb, self.key
        pin = spki(key)
        other = ec.generate_private_key(ec.SECP256R1())
        hs = lambda: cs.Handshake(pin, principal="p")  # noqa: E731

        h = hs()
        try:
            h.finish(signed_response(pb, h, key))
        except cs.SessionError as e:
            self.fail("good response refused: %s" % e)

        h = hs()
        self.refused("another identity, validly signed by it", h,
                     signed_response(pb, h, other), "pinned_key")
        h = hs()
        self.refused("another identity and a bad signature", h,
                     signed_response(pb, h, other, sign={"caller_uid": 1}), "pinned_key")
        h = hs()
        self.refused("same identity key in another encoding (PEM instead of DER)", h,
                     signed_response(pb, h, key, identity_public_key=key.public_key()
                                     .public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat
                                                   .SubjectPublicKeyInfo)), "pinned_key")
        h = hs()
        self.refused("signed by another key", h,
                     signed_response(pb, h, other, identity_public_key=pin), "signature")
        h = hs()
        resp = signed_response(pb, h, key)
        resp.signature = b""
        self.refused("empty signature", h, resp, "signature")
        h = hs()
        resp = signed_response(pb, h, key)
        r, s = __import__("cryptography.hazmat.primitives.asymmetric.utils",
                          fromlist=["x"]).decode_dss_signature(resp.signature)
        resp.signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        self.refused("raw r||s signature instead of DER", h, resp, "signature")
        h = hs()
        msg = cs.transcript_hash(cs.transcript(dict(
            version=1, client_ephemeral=h.client_ephemeral, client_random=h.client_random,
            principal="p", session_id=bytes(16), server_ephemeral=bytes(32),
            server_random=bytes(32), caller_uid=1, caller_gid=1, identity_public_key=pin,
            lifetime_seconds=1, max_records=1, max_bytes=1)))
        resp = pb.OpenSessionResponse(
            session_id=bytes(16), server_ephemeral=x25519_public_nonzero(),
            server_random=bytes(32), caller_uid=1, caller_gid=1, identity_public_key=pin,
            lifetime_seconds=1, max_records=1, max_bytes=1,
            signature=key.sign(msg, ec.ECDSA(hashes.SHA256())))
        self.refused("signature over TH, not over the signed message", h, resp, "signature")
        for name, value in (("session_id", os.urandom(15)), ("session_id", os.urandom(17)),
                            ("session_id", b""), ("server_ephemeral", os.urandom(31)),
                            ("server_ephemeral", os.urandom(33)),
                            ("server_random", os.urandom(31)),
                            ("server_random", b"")):
            h = hs()
            self.refused("%s of %d bytes, validly signed" % (name, len(value)), h,
                         signed_response(pb, h, key, **{name: value}), "sizes")
            h = hs()
            self.refused("%s of %d bytes, bad signature" % (name, len(value)), h,
                         signed_response(pb, h, key, sign={"caller_gid": 7}, **{name: value}),
                         "sizes")
        # Low-order X25519 points: the shared secret is all zero.
        for name, point in (("zero point", bytes(32)),
                            ("point 1", (1).to_bytes(32, "little"))):
            h = hs()
            self.refused("server_ephemeral = %s, validly signed" % name, h,
                         signed_response(pb, h, key, server_ephemeral=point), "shared_secret")
        h = hs()
        h.finish(signed_response(pb, h, key))
        self.refused("a handshake finished twice", h, signed_response(pb, h, key), "unusable")


def x25519_public_nonzero():
    return cs.x25519_public(os.urandom(32))


# ---- Session over grpc against an in-process stand-in ----

class FakeSessionService:
    """A minimal daemon side, from the document, for plumbing tests only.

    Inner methods: /test.Echo/Echo answers its request bytes; /test.Echo/Fail
    answers code 5 "no such thing"; CloseSession ends the session.
    `misbehave` makes the next reply wrong: "sequence", "reflect", "tamper",
    "method", "not_result", "session".
    """

    def __init__(self, pb):
        self.pb = pb
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.spki = spki(self.key)
        self.sessions = {}
        self.misbehave = None

    def GetIdentity(self, request, context):
        return self.pb.GetIdentityResponse(public_key=self.spki,
                                           fingerprint=cs.fingerprint(self.spki))

    def OpenSession(self, req, context):
        import grpc
        if (req.version != 1 or len(req.client_ephemeral) != 32 or len(req.client_random) != 32
                or len(req.principal.encode()) > 128):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad OpenSessionRequest")
        priv = os.urandom(32)
        f = dict(version=1, client_ephemeral=req.client_ephemeral,
                 client_random=req.client_random, principal=req.principal,
                 session_id=os.urandom(16), server_ephemeral=cs.x25519_public(priv),
                 server_random=os.urandom(32), caller_uid=os.getuid(), caller_gid=os.getgid(),
                 identity_public_key=self.spki, lifetime_seconds=60, max_records=100,
                 max_bytes=1 << 20)
        th = cs.transcript_hash(cs.transcript(f))
        keys = cs.derive_keys(cs.x25519_shared(priv, req.client_ephemeral), th)
        self.sessions[f["session_id"]] = {"keys": keys, "next": 0}
        sig = self.key.sign(cs.signed_message(th), ec.ECDSA(hashes.SHA256()))
        for k in ("version", "client_ephemeral", "client_random", "principal"):
            del f[k]
        return self.pb.OpenSessionResponse(signature=sig, **f)

    def Call(self, c, context):
        import grpc
        UN = grpc.StatusCode.UNAUTHENTICATED
        s = self.sessions.get(c.session_id)
        if s is None:
            context.abort(UN, "unknown or ended session")
        if c.sequence != s["next"]:
            del self.sessions[c.session_id]
            context.abort(UN, "out of sequence")
        k = s["keys"]
        try:
            plain = cs.open_(k["c2s_key"], k["c2s_iv"], c.session_id, cs.C2S, c.sequence,
                             c.method, c.record)
        except cs.RecordError:
            del self.sessions[c.session_id]
            context.abort(UN, "record fails authentication")
        s["next"] += 1
        if c.method == "/test.Echo/Echo":
            result = self.pb.SealedResult(code=0, response=plain)
        elif c.method == cs.CLOSE_METHOD:
            result = self.pb.SealedResult(code=0)
            del self.sessions[c.session_id]
        else:
            result = self.pb.SealedResult(code=5, message="no such thing")
        body = result.SerializeToString()
        how, self.misbehave = self.misbehave, None
        seq, d, key, iv, method, sid = (c.sequence, cs.S2C, k["s2c_key"], k["s2c_iv"],
                                        c.method, c.session_id)
        if how == "sequence":
            seq += 1
        elif how == "reflect":
            d, key, iv = cs.C2S, k["c2s_key"], k["c2s_iv"]
        elif how == "method":
            method = "/test.Echo/Other"
        elif how == "not_result":
            body = b"\xff"
        elif how == "session":
            sid = bytes(16)
        rec = cs.seal(key, iv, sid, d, seq, method, body)
        if how == "tamper":
            rec = rec[:-1] + bytes([rec[-1] ^ 1])
        return self.pb.SealedReply(sequence=seq if how == "sequence" else c.sequence,
                                   record=rec)

    def CloseSession(self, request, context):
        import grpc
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "only valid sealed")


class FakeDaemonSession(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import grpc
        cls.grpc = grpc
        cls.S = _stubs()
        cls.dir = tempfile.mkdtemp(prefix="coffer-session-test-")
        cls.service = FakeSessionService(cls.S.pb)
        cls.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        cls.S.pb_grpc.add_SessionServiceServicer_to_server(cls.service, cls.server)
        cls.address = "unix:" + os.path.join(cls.dir, "s.sock")
        cls.server.add_insecure_port(cls.address)
        cls.server.start()
        cls.channel = grpc.insecure_channel(cls.address)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.server.stop(None).wait()
        shutil.rmtree(cls.dir, True)

    def open(self, **kw):
        return cs.Session.open(self.channel, self.service.spki, principal="t",
                               stubs=self.S, **kw)

    def test_calls_and_close(self):
        s = self.open()
        self.assertEqual((s.caller_uid, s.caller_gid), (os.getuid(), os.getgid()))
        for i in range(3):
            self.assertEqual(s.next_seq, i, "next_seq")
            self.assertEqual(s.call("/test.Echo/Echo", b"hello %d" % i), (0, "", b"hello %d" % i))
        self.assertEqual(s.call("/test.Echo/Fail", b""), (5, "no such thing", b""))
        self.assertFalse(s.exhausted())
        self.assertEqual(s.close(), (0, ""))
        with self.assertRaises(cs.SessionError) as e:
            s.call("/test.Echo/Echo", b"x")
        self.assertEqual(e.exception.check, "unusable")
        # The stand-in ended it: a well-formed next record is refused.
        with self.assertRaises(self.grpc.RpcError) as e:
            s.stub.Call(s.seal_call("/test.Echo/Echo", b"x"))
        self.assertEqual(e.exception.code(), self.grpc.StatusCode.UNAUTHENTICATED)

    def test_pin_by_fingerprint_and_mismatch(self):
        s = cs.Session.open(self.channel, cs.fingerprint(self.service.spki), stubs=self.S)
        self.assertEqual(s.call("/test.Echo/Echo", b"a"), (0, "", b"a"))
        other = spki(ec.generate_private_key(ec.SECP256R1()))
        with self.assertRaises(cs.SessionError) as e:
            cs.Session.open(self.channel, other, stubs=self.S)
        self.assertEqual(e.exception.check, "pinned_key")

    def test_hand_built_records(self):
        s = self.open()
        s.call("/test.Echo/Echo", b"0")
        replay = s.seal_call("/test.Echo/Echo", b"0", seq=0)
        self.assertEqual(replay.sequence, 0)
        with self.assertRaises(self.grpc.RpcError) as e:
            s.stub.Call(replay)
        self.assertEqual(e.exception.code(), self.grpc.StatusCode.UNAUTHENTICATED)
        s = self.open()
        reflected = s.seal_call("/test.Echo/Echo", b"0", direction=cs.S2C)
        with self.assertRaises(self.grpc.RpcError) as e:
            s.stub.Call(reflected)
        self.assertEqual(e.exception.code(), self.grpc.StatusCode.UNAUTHENTICATED)
        s = self.open()
        sc = s.seal_call("/test.Echo/Echo", b"good")
        reply = s.stub.Call(sc)
        self.assertEqual(s.open_reply(reply, 0, "/test.Echo/Echo").response, b"good")
        with self.assertRaises(cs.SessionError):
            s.open_reply(reply, 1, "/test.Echo/Echo")
        with self.assertRaises(cs.RecordError):
            s.open_reply(reply, 0, "/test.Echo/Other")

    def test_bad_replies(self):
        for how, check in (("sequence", "reply_sequence"), ("reflect", "record"),
                           ("tamper", "record"), ("method", "record"),
                           ("session", "record"), ("not_result", "result")):
            with self.subTest(reply=how):
                s = self.open()
                self.service.misbehave = how
                with self.assertRaises(cs.SessionError) as e:
                    s.call("/test.Echo/Echo", b"x")
                self.assertEqual(e.exception.check, check, "reply %s" % how)
                self.assertFalse(s.usable, "session still usable after a bad reply (%s)" % how)
                self.assertEqual(s.next_seq, 1)

    def test_outer_error_ends_session(self):
        s = self.open()
        self.service.sessions.clear()
        with self.assertRaises(self.grpc.RpcError):
            s.call("/test.Echo/Echo", b"x")
        self.assertFalse(s.usable)


if __name__ == "__main__":
    unittest.main()
