"""The caller side of Coffer's sealed sessions, in Python.

Written from proto/session-protocol.md ("the document") and
proto/coffer/v1/coffer.proto alone, without looking at the C implementation,
so that the tests can check the daemon against an independent reading of the
protocol. Section names in the docstrings below are the document's.

Two layers:

* pure functions (no gRPC): transcript(), transcript_hash(),
  signed_message(), derive_keys(), aad(), nonce(), seal(), open_(),
  fingerprint(), plus x25519_public(), x25519_shared(), verify_signature();
* Handshake and Session, which speak SessionService over a grpc channel with
  the stubs that daemon_fixture.stubs() generates from the proto.

    import coffer_session as cs
    s = cs.Session.open(channel, pinned_spki_der, principal="billing")
    code, message, response = s.call("/coffer.v1.KeyService/Unwrap",
                                     pb.UnwrapRequest(...).SerializeToString())
    s.close()

Errors: every refusal by this side is a SessionError whose `check` names the
rule that failed (RecordError for a record that does not open). Errors of the
daemon (the outer gRPC status) are raised as the grpc.RpcError itself, so a
test can look at e.code(); the Session is unusable afterwards either way
("Records": a caller must stop using the session after any outer error).

Python cannot wipe memory: the "wipe" of the document ("Key schedule") is
approximated by dropping references.
"""

import hashlib
import hmac
import os
import struct
import time

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1

HANDSHAKE_LABEL = b"coffer/v1 handshake"          # transcript item 1, 19 bytes
SIGNATURE_LABEL = b"coffer/v1 server signature"   # signed message prefix, 26 bytes
RECORD_LABEL = b"coffer/v1 record"                # AAD prefix, 16 bytes

C2S = 1   # direction: caller to daemon
S2C = 2   # direction: daemon to caller

EPHEMERAL_LEN = 32
RANDOM_LEN = 32
SESSION_ID_LEN = 16
SHARED_LEN = 32
KEY_LEN = 32
IV_LEN = 12
TAG_LEN = 16
MAX_PRINCIPAL = 128
MAX_METHOD = 128

SERVICE = "/coffer.v1.SessionService/"
CLOSE_METHOD = SERVICE + "CloseSession"

# The transcript items in the order of the table in "Transcript".
TRANSCRIPT_FIELDS = (
    "version", "client_ephemeral", "client_random", "principal", "session_id",
    "server_ephemeral", "server_random", "caller_uid", "caller_gid",
    "identity_public_key", "lifetime_seconds", "max_records", "max_bytes",
)


class SessionError(Exception):
    """This side refused a handshake, a reply or the use of a session.

    `check` names the rule that failed: "pinned_key", "signature", "sizes",
    "shared_secret" (handshake, "Handshake" step 3, in that order),
    "reply_sequence", "record", "result" (a reply, "Records"), "unusable" (the
    session ended or failed earlier), "argument" (a value that cannot be
    encoded).
    """

    def __init__(self, check, message):
        super().__init__("%s: %s" % (check, message))
        self.check = check


class RecordError(SessionError):
    """A record did not open (wrong key, nonce, AAD, tampered or truncated)."""

    def __init__(self, message="record does not open"):
        super().__init__("record", message)


def _b(value):
    """str -> UTF-8 bytes; bytes-like -> bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


# ---- handshake ("Transcript") ----

def _item(data):
    """One transcript item: 2-byte big-endian length, then the bytes."""
    if len(data) > 0xFFFF:
        raise SessionError("argument", "transcript item of %d bytes does not fit "
                           "a 2-byte length" % len(data))
    return struct.pack(">H", len(data)) + data


def transcript(fields):
    """The transcript T ("Transcript"): the 11 items of the table, each as a
    2-byte big-endian length followed by its bytes.

    fields: a mapping (or an object with attributes) holding the names in
    TRANSCRIPT_FIELDS; principal may be str (encoded UTF-8) or bytes. The
    item sizes are not checked here, only that each fits its length or
    integer width: the size checks are the caller's third check.
    """
    def get(name):
        return fields[name] if isinstance(fields, dict) else getattr(fields, name)

    try:
        ints = (struct.pack(">I", get("version")),
                struct.pack(">II", get("caller_uid"), get("caller_gid")),
                struct.pack(">IQQ", get("lifetime_seconds"), get("max_records"),
                            get("max_bytes")))
    except struct.error as e:
        raise SessionError("argument", "integer out of range: %s" % e)
    items = (
        HANDSHAKE_LABEL,                       # 1
        ints[0],                               # 2 version
        _b(get("client_ephemeral")),           # 3
        _b(get("client_random")),              # 4
        _b(get("principal")),                  # 5
        _b(get("session_id")),                 # 6
        _b(get("server_ephemeral")),           # 7
        _b(get("server_random")),              # 8
        ints[1],                               # 9 caller_uid || caller_gid
        _b(get("identity_public_key")),        # 10
        ints[2],                               # 11 lifetime || max_records || max_bytes
    )
    return b"".join(_item(i) for i in items)


def transcript_hash(t):
    """TH = SHA-256(T) ("Transcript")."""
    return hashlib.sha256(t).digest()


def signed_message(th):
    """The signed message ("Transcript"): "coffer/v1 server signature", one
    zero byte, TH; 59 bytes."""
    if len(th) != 32:
        raise SessionError("argument", "TH is %d bytes, not 32" % len(th))
    return SIGNATURE_LABEL + b"\x00" + th


def fingerprint(spki_der):
    """"sha256:" + lower-case hex SHA-256 of the SPKI DER ("Roles and keys")."""
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()


def verify_signature(spki_der, signature, message):
    """Check step 2 of "Handshake": `signature` is a DER ECDSA P-256 signature
    with SHA-256 over `message` under the key `spki_der`. Raises
    SessionError("signature")."""
    try:
        key = serialization.load_der_public_key(spki_der)
    except ValueError as e:
        raise SessionError("signature", "identity key is not a valid SPKI: %s" % e)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SessionError("signature", "identity key is not EC P-256")
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise SessionError("signature", "signature does not verify under the identity key")


def x25519_public(private):
    """The 32-byte X25519 public key of a 32-byte private key."""
    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_shared(private, peer_public):
    """shared = X25519(own private, peer public) ("Key schedule"); all zero
    is an error (SessionError("shared_secret"))."""
    try:
        priv = x25519.X25519PrivateKey.from_private_bytes(private)
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
    except ValueError as e:
        raise SessionError("sizes", "X25519 key: %s" % e)
    try:
        shared = priv.exchange(peer)
    except ValueError:
        # OpenSSL refuses an all-zero result itself.
        raise SessionError("shared_secret", "X25519 shared secret is all zero")
    if not any(shared):
        raise SessionError("shared_secret", "X25519 shared secret is all zero")
    return shared


def _hkdf(shared, th, info, length):
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=th, info=info).derive(shared)


def derive_keys(shared, th):
    """The key schedule ("Key schedule"): HKDF-SHA256 (RFC 5869) with
    IKM = shared, salt = TH. Returns dict c2s_key, c2s_iv, s2c_key, s2c_iv."""
    return {
        "c2s_key": _hkdf(shared, th, b"coffer/v1 c2s key", KEY_LEN),
        "c2s_iv": _hkdf(shared, th, b"coffer/v1 c2s iv", IV_LEN),
        "s2c_key": _hkdf(shared, th, b"coffer/v1 s2c key", KEY_LEN),
        "s2c_iv": _hkdf(shared, th, b"coffer/v1 s2c iv", IV_LEN),
    }


# ---- records ("Records") ----

def aad(session_id, direction, seq, method):
    """AAD = "coffer/v1 record" || session_id || d (1 byte) || n (8, BE)
    || len(method) (2, BE) || method ("Records")."""
    m = _b(method)
    if len(m) > 0xFFFF:
        raise SessionError("argument", "method of %d bytes does not fit a 2-byte length"
                           % len(m))
    if not 0 <= direction <= 0xFF or not 0 <= seq < 1 << 64:
        raise SessionError("argument", "direction or sequence out of range")
    return (RECORD_LABEL + _b(session_id) + bytes([direction]) + struct.pack(">Q", seq)
            + struct.pack(">H", len(m)) + m)


def nonce(iv, seq):
    """nonce = iv_d XOR (4 zero bytes || n as 8-byte big-endian) ("Records")."""
    if len(iv) != IV_LEN:
        raise SessionError("argument", "IV is %d bytes, not 12" % len(iv))
    if not 0 <= seq < 1 << 64:
        raise SessionError("argument", "sequence out of range")
    counter = b"\x00\x00\x00\x00" + struct.pack(">Q", seq)
    return bytes(a ^ b for a, b in zip(iv, counter))


def seal(key, iv, session_id, direction, seq, method, plaintext):
    """record = AES-256-GCM(key_d, nonce, AAD, P): ciphertext || 16-byte tag
    ("Records")."""
    return AESGCM(key).encrypt(nonce(iv, seq), bytes(plaintext),
                               aad(session_id, direction, seq, method))


def open_(key, iv, session_id, direction, seq, method, record):
    """The inverse of seal(); raises RecordError if the record does not open
    (tampered, truncated, other key, direction, sequence, session or method)."""
    record = bytes(record)
    if len(record) < TAG_LEN:
        raise RecordError("record of %d bytes is shorter than a tag" % len(record))
    try:
        return AESGCM(key).decrypt(nonce(iv, seq), record,
                                   aad(session_id, direction, seq, method))
    except InvalidTag:
        raise RecordError()


# ---- gRPC side ----

def _stubs():
    from daemon_fixture import stubs
    return stubs()


def pinned_der(pinned):
    """The pinned identity: SPKI DER bytes, PEM bytes/str ("-----BEGIN"), or a
    "sha256:<hex>" fingerprint ("Roles and keys": a PEM file or a
    fingerprint). Returns ("der", bytes) or ("fingerprint", str)."""
    if isinstance(pinned, str) and pinned.startswith("sha256:"):
        return "fingerprint", pinned.lower()
    raw = _b(pinned)
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(raw)
        raw = key.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return "der", raw


class Handshake:
    """One caller-side handshake ("Handshake"), without the transport.

    client_private and client_random may be fixed (the test vectors); by
    default they are fresh. request() makes the OpenSessionRequest; finish()
    runs the caller's checks on the OpenSessionResponse in the document's
    order and returns a dict: session_id, keys (derive_keys), fields (the
    transcript fields), transcript, transcript_hash, limits.
    """

    def __init__(self, pinned, principal="", client_private=None, client_random=None,
                 version=VERSION, expect_ids=None):
        self.pin_kind, self.pin = pinned_der(pinned)
        self.expect_ids = expect_ids
        self.principal = principal
        self.version = version
        self._private = client_private if client_private is not None else os.urandom(32)
        self.client_ephemeral = x25519_public(self._private)
        self.client_random = client_random if client_random is not None else os.urandom(32)

    def request(self, pb):
        """OpenSessionRequest ("Handshake" step 1)."""
        return pb.OpenSessionRequest(version=self.version,
                                     client_ephemeral=self.client_ephemeral,
                                     client_random=self.client_random,
                                     principal=self.principal)

    def finish(self, resp):
        """"Handshake" step 3: the checks, in this order, then the key schedule.

        1. identity_public_key is byte-for-byte the pinned key;
        2. signature verifies (ECDSA P-256/SHA-256, DER) over the signed
           message of the transcript built from our request and `resp`;
        3. the field sizes are right, and the X25519 shared secret is not
           all zero;
        and, when expect_ids (uid, gid) is given, the signed caller_uid /
        caller_gid are those ids (no relay made the connection).
        """
        if self._private is None:
            raise SessionError("unusable", "handshake already finished")
        ident = bytes(resp.identity_public_key)
        # 1. pinned key
        if self.pin_kind == "der":
            if not hmac.compare_digest(ident, self.pin):
                raise SessionError("pinned_key", "identity_public_key is not the pinned key")
        elif not hmac.compare_digest(fingerprint(ident), self.pin):
            raise SessionError("pinned_key", "identity key fingerprint %s is not the pinned %s"
                               % (fingerprint(ident), self.pin))
        # 2. field sizes and non-zero limits, before anything is built from them
        for name, want in (("session_id", SESSION_ID_LEN),
                           ("server_ephemeral", EPHEMERAL_LEN),
                           ("server_random", RANDOM_LEN)):
            got = len(bytes(getattr(resp, name)))
            if got != want:
                raise SessionError("sizes", "%s is %d bytes, not %d" % (name, got, want))
        if resp.lifetime_seconds == 0 or resp.max_records == 0:
            raise SessionError("sizes", "lifetime_seconds and max_records must not be zero")
        # 3. signature over the signed message
        fields = {
            "version": self.version,
            "client_ephemeral": self.client_ephemeral,
            "client_random": self.client_random,
            "principal": _b(self.principal),
            "session_id": bytes(resp.session_id),
            "server_ephemeral": bytes(resp.server_ephemeral),
            "server_random": bytes(resp.server_random),
            "caller_uid": resp.caller_uid,
            "caller_gid": resp.caller_gid,
            "identity_public_key": ident,
            "lifetime_seconds": resp.lifetime_seconds,
            "max_records": resp.max_records,
            "max_bytes": resp.max_bytes,
        }
        try:
            t = transcript(fields)
        except SessionError as e:
            # A field too long to be a transcript item cannot be covered by
            # any signature.
            raise SessionError("signature", "no transcript can be built (%s)" % e)
        th = transcript_hash(t)
        verify_signature(ident, bytes(resp.signature), signed_message(th))
        # The ids the daemon read from the socket: another process's mean it
        # relays our bytes, and the session would be bound to it.
        if self.expect_ids is not None and \
                (resp.caller_uid, resp.caller_gid) != tuple(self.expect_ids):
            raise SessionError("caller_ids", "the daemon saw this session opened by uid %d "
                               "gid %d, not by this process (uid %d gid %d): something "
                               "relays the socket; refusing the session"
                               % (resp.caller_uid, resp.caller_gid, *self.expect_ids))
        # 4. the shared secret
        private, self._private = self._private, None   # forget it (forward secrecy)
        shared = x25519_shared(private, fields["server_ephemeral"])
        keys = derive_keys(shared, th)
        del shared, private
        return {
            "session_id": fields["session_id"], "keys": keys, "fields": fields,
            "transcript": t, "transcript_hash": th,
            "limits": {"lifetime_seconds": resp.lifetime_seconds,
                       "max_records": resp.max_records, "max_bytes": resp.max_bytes},
        }


class Session:
    """An open sealed session ("Records"), one call at a time.

    Attributes: session_id, keys, next_seq (the sequence of the next call),
    limits, caller_uid / caller_gid (as the daemon saw them), opened_at
    (time.monotonic() when OpenSession was sent), c2s_bytes / s2c_bytes
    (plaintext bytes sealed / opened), usable.
    The limits are not enforced here (so that tests can watch the daemon
    enforce them); exhausted() tells whether one is reached.
    """

    def __init__(self, stub, pb, result, opened_at=None):
        self.stub = stub
        self.pb = pb
        self.session_id = result["session_id"]
        self.keys = result["keys"]
        self.limits = result["limits"]
        self.fields = result["fields"]
        self.caller_uid = self.fields["caller_uid"]
        self.caller_gid = self.fields["caller_gid"]
        self.transcript_hash = result["transcript_hash"]
        self.opened_at = time.monotonic() if opened_at is None else opened_at
        self.next_seq = 0
        self.c2s_bytes = 0
        self.s2c_bytes = 0
        self.usable = True
        self.closed = False

    @classmethod
    def open(cls, channel, pinned_spki_der, principal="", timeout=10.0, stubs=None,
             peer_check=True, **handshake_args):
        """OpenSession over `channel` and the caller's checks ("Handshake").

        pinned_spki_der: the pinned identity (SPKI DER, PEM or "sha256:..."
        fingerprint). Raises SessionError if a check fails, grpc.RpcError if
        the daemon refuses. handshake_args go to Handshake (fixed
        client_private / client_random / version for tests). peer_check:
        refuse a session whose signed caller ids are not our effective ones
        (what SO_PEERCRED reports); False for a user namespace that maps them.
        """
        s = stubs or _stubs()
        stub = s.pb_grpc.SessionServiceStub(channel)
        if peer_check:
            handshake_args.setdefault("expect_ids", (os.geteuid(), os.getegid()))
        hs = Handshake(pinned_spki_der, principal, **handshake_args)
        opened_at = time.monotonic()
        resp = stub.OpenSession(hs.request(s.pb), timeout=timeout)
        return cls(stub, s.pb, hs.finish(resp), opened_at)

    # -- limits ("Limits") --

    def exhausted(self, now=None):
        """True once the lifetime, record or byte limit is reached (counted
        here from our side: records = calls sealed, bytes = plaintext)."""
        now = time.monotonic() if now is None else now
        return (now - self.opened_at >= self.limits["lifetime_seconds"]
                or self.next_seq >= self.limits["max_records"]
                or max(self.c2s_bytes, self.s2c_bytes) >= self.limits["max_bytes"])

    # -- records --

    def seal_call(self, method, plaintext, seq=None, direction=C2S, session_id=None):
        """A SealedCall for `method` carrying `plaintext` sealed under c2s.

        seq defaults to next_seq; the counter is NOT advanced (call() does
        that), so tests can build replayed, reordered, reflected
        (direction=S2C seals with the s2c key and direction 2) or
        foreign-session records by hand and send them with self.stub.Call.
        """
        seq = self.next_seq if seq is None else seq
        sid = self.session_id if session_id is None else session_id
        if direction == S2C:
            key, iv = self.keys["s2c_key"], self.keys["s2c_iv"]
        else:
            key, iv = self.keys["c2s_key"], self.keys["c2s_iv"]
        record = seal(key, iv, sid, direction, seq, method, plaintext)
        return self.pb.SealedCall(session_id=sid, sequence=seq, method=method, record=record)

    def open_reply(self, reply, seq, method):
        """Check a SealedReply ("Records": the caller checks the reply):
        sequence equals the call's, the record opens under s2c_key with
        direction 2, the same seq and method; returns the SealedResult."""
        if reply.sequence != seq:
            raise SessionError("reply_sequence", "reply sequence %d, call sequence %d"
                               % (reply.sequence, seq))
        plain = open_(self.keys["s2c_key"], self.keys["s2c_iv"], self.session_id, S2C,
                      seq, method, reply.record)
        try:
            result = self.pb.SealedResult.FromString(plain)
        except Exception as e:  # google.protobuf.message.DecodeError
            raise SessionError("result", "reply record is not a SealedResult: %s" % e)
        self.s2c_bytes += len(plain)
        return result

    def call(self, method, request, timeout=10.0, metadata=None):
        """One sealed call: returns (code, message, response bytes) of the
        inner call. An outer gRPC error is raised as grpc.RpcError, a bad
        reply as SessionError; after either the session is unusable.
        metadata: extra gRPC metadata for the envelope (e.g. an
        idempotency key)."""
        if not self.usable:
            raise SessionError("unusable", "session has ended or failed")
        seq = self.next_seq
        sealed = self.seal_call(method, request, seq)
        self.next_seq += 1          # this sequence number is spent whatever happens
        self.c2s_bytes += len(request)
        try:
            reply = self.stub.Call(sealed, timeout=timeout, metadata=metadata)
            result = self.open_reply(reply, seq, method)
        except BaseException:
            self._end()
            raise
        return result.code, result.message, bytes(result.response)

    def close(self, timeout=10.0):
        """Sealed SessionService/CloseSession; returns (code, message) of the
        inner call. The session is unusable afterwards."""
        if not self.usable:
            return None
        try:
            code, message, _ = self.call(CLOSE_METHOD,
                                         self.pb.CloseSessionRequest().SerializeToString(),
                                         timeout=timeout)
        finally:
            self._end()
        self.closed = True
        return code, message

    def _end(self):
        # The keys stay readable so that a test can still seal records for a
        # session the daemon should have ended; wipe() drops them.
        self.usable = False

    def wipe(self):
        """Drop the four derived values ("Key schedule": wiped when the
        session ends) and make the session unusable."""
        self.usable = False
        self.keys = {k: None for k in self.keys}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.usable:
            try:
                self.close()
            except Exception:
                pass
