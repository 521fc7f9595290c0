"""The caller's side of sealed sessions (proto/session-protocol.md).

The byte-level pieces are plain functions, so the document's vectors can be
checked against exactly the code that talks to cofferd:

    transcript(hello) -> T                      the 11 length-prefixed items
    signed_message(sha256(T))                   what the identity key signs
    derive(shared, th) -> DirectionKeys          HKDF: key and IV per direction
    record_nonce / record_aad / seal / open_record

A SessionPool opens sessions against a pinned identity and hands one to each
call in flight (a session's records are strictly ordered), replacing a
session before its lifetime, record or byte limit, as libcoffer does.
Each session carries the pool's generation when it was opened; a new pin,
close() or fork() starts a new generation, so a session agreed with the
previous daemon (or shared with the other side of a fork) is never reused.
"""

import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CofferError, FailedPrecondition, Internal, InvalidArgument, Unauthenticated

VERSION = 1
HANDSHAKE_LABEL = b"coffer/v1 handshake"
SIGNATURE_LABEL = b"coffer/v1 server signature"
RECORD_LABEL = b"coffer/v1 record"
C2S = 1        # caller to daemon
S2C = 2        # daemon to caller
ID_LEN = 16
PUB_LEN = 32
RANDOM_LEN = 32
TAG_LEN = 16
METHOD_MAX = 128
PRINCIPAL_MAX = 128

RENEW_MARGIN = 30.0   # replace a session this long before it expires (seconds)
POOL_IDLE_MAX = 16    # idle sessions kept per pool
# The daemon's refusal of a record whose session it does not hold (it
# restarted, or evicted the session): every idle session is as dead.
SESSION_GONE = "session unknown or ended"
CLOSE_METHOD = "/coffer.v1.SessionService/CloseSession"


@dataclass
class Hello:
    """Everything the transcript covers: the caller's OpenSessionRequest and
    the daemon's OpenSessionResponse, as the caller sees them."""
    version: int
    client_ephemeral: bytes
    client_random: bytes
    principal: str
    session_id: bytes
    server_ephemeral: bytes
    server_random: bytes
    caller_uid: int
    caller_gid: int
    identity: bytes            # SPKI DER
    lifetime_seconds: int
    max_records: int
    max_bytes: int


def _item(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def transcript(h: Hello) -> bytes:
    """T: each item as a 2-byte big-endian length and its bytes, in the
    document's order."""
    items = (
        HANDSHAKE_LABEL,
        struct.pack(">I", h.version),
        h.client_ephemeral,
        h.client_random,
        h.principal.encode("utf-8"),
        h.session_id,
        h.server_ephemeral,
        h.server_random,
        struct.pack(">II", h.caller_uid, h.caller_gid),
        h.identity,
        struct.pack(">IQQ", h.lifetime_seconds, h.max_records, h.max_bytes),
    )
    return b"".join(_item(i) for i in items)


def signed_message(th: bytes) -> bytes:
    """The 59 bytes the daemon's identity key signs (ECDSA P-256, SHA-256)."""
    return SIGNATURE_LABEL + b"\x00" + th


@dataclass
class DirectionKeys:
    """AES-256-GCM key and 12-byte IV of both directions (never in a repr:
    a log or an error report that formats a session must not print them)."""
    c2s_key: bytes = field(repr=False)
    c2s_iv: bytes = field(repr=False)
    s2c_key: bytes = field(repr=False)
    s2c_iv: bytes = field(repr=False)

    def of(self, direction: int) -> Tuple[bytes, bytes]:
        if direction == C2S:
            return self.c2s_key, self.c2s_iv
        if direction == S2C:
            return self.s2c_key, self.s2c_iv
        raise ValueError("direction must be 1 (c2s) or 2 (s2c)")


def _hkdf(shared: bytes, th: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=th, info=info).derive(shared)


def derive(shared: bytes, th: bytes) -> DirectionKeys:
    """The key schedule: HKDF-SHA256 with salt TH, one info per value."""
    if len(shared) != 32 or shared == bytes(32):
        raise Unauthenticated("the X25519 shared secret is all zero: the daemon's ephemeral "
                              "key is unusable")
    return DirectionKeys(_hkdf(shared, th, b"coffer/v1 c2s key", 32),
                         _hkdf(shared, th, b"coffer/v1 c2s iv", 12),
                         _hkdf(shared, th, b"coffer/v1 s2c key", 32),
                         _hkdf(shared, th, b"coffer/v1 s2c iv", 12))


def record_nonce(iv: bytes, sequence: int) -> bytes:
    """iv XOR (4 zero bytes || sequence as 8 bytes big-endian)."""
    counter = b"\x00" * 4 + struct.pack(">Q", sequence)
    return bytes(a ^ b for a, b in zip(iv, counter))


def record_aad(session_id: bytes, direction: int, sequence: int, method: str) -> bytes:
    m = method.encode("utf-8")
    return (RECORD_LABEL + session_id + bytes([direction]) + struct.pack(">Q", sequence)
            + struct.pack(">H", len(m)) + m)


def seal(keys: DirectionKeys, session_id: bytes, direction: int, sequence: int, method: str,
         plaintext: bytes) -> bytes:
    """ciphertext || tag of `plaintext` in `direction` with `sequence`."""
    key, iv = keys.of(direction)
    return AESGCM(key).encrypt(record_nonce(iv, sequence), plaintext,
                               record_aad(session_id, direction, sequence, method))


def open_record(keys: DirectionKeys, session_id: bytes, direction: int, sequence: int,
                method: str, record: bytes) -> bytes:
    """The plaintext of `record`; raises InvalidTag when it does not open
    (tampered, truncated, another direction, sequence, session or method)."""
    if len(record) < TAG_LEN:
        raise InvalidTag()
    key, iv = keys.of(direction)
    return AESGCM(key).decrypt(record_nonce(iv, sequence), record,
                               record_aad(session_id, direction, sequence, method))


def fingerprint(spki: bytes) -> str:
    """"sha256:" and the lower-case hex SHA-256 of a SubjectPublicKeyInfo."""
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def load_identity(pinned) -> bytes:
    """The SPKI DER of a pinned identity given as DER bytes, PEM bytes or
    text, or the path of a PEM file (as `cofferctl identity --out` writes).
    Only an EC P-256 key can be a daemon's identity."""
    if isinstance(pinned, str) and pinned.lstrip().startswith("-----BEGIN"):
        pinned = pinned.encode()      # PEM text, not a path
    if isinstance(pinned, (str, os.PathLike)):
        path = os.fspath(pinned)
        try:
            with open(path, "rb") as f:
                data = f.read(64 * 1024)
        except OSError as e:
            raise InvalidArgument("cannot read identity file %s: %s" % (path, e.strerror))
        what = path
    else:
        data, what = bytes(pinned), "the pinned identity"
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except ValueError:
        raise InvalidArgument("%s holds no public key (a PEM \"-----BEGIN PUBLIC KEY-----\" "
                              "or SubjectPublicKeyInfo DER)" % what)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidArgument("%s is not an EC P-256 key: a Coffer daemon's identity is one"
                              % what)
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


# ---- sessions ----

class Session:
    """One open session: its keys, id, next sequence number and limits, and
    the generation of the pool (the pin) it was opened under."""

    def __init__(self, session_id: bytes, keys: DirectionKeys, hello: Hello,
                 generation: int = 0) -> None:
        self.id = session_id
        self.generation = generation
        self.keys = keys
        self.sequence = 0
        self.max_records = hello.max_records
        self.max_bytes = hello.max_bytes
        self.bytes = 0
        self.expires = time.monotonic() + hello.lifetime_seconds

    def usable(self, length: int, now: float) -> bool:
        """Room for one more call of `length` bytes, with a margin before
        the end of its lifetime (a quarter of what is left, once less than
        two margins are)."""
        margin = RENEW_MARGIN
        if self.expires - now < 2 * margin:
            margin = (self.expires - now) / 4
        return (self.sequence + 1 < self.max_records
                and self.bytes + length + 1024 < self.max_bytes
                and now + margin < self.expires)


# send(path, request_bytes) -> response bytes; raises CofferError.
Transport = Callable[[str, bytes], bytes]


class SessionPool:
    """Sessions with one daemon, pinned to its identity (SPKI DER)."""

    def __init__(self, pinned: Optional[bytes], pb, peer_check: bool = True) -> None:
        self.pinned = pinned
        self.pb = pb
        self.peer_check = peer_check
        self._idle: List[Session] = []
        self._lock = threading.Lock()
        self.generation = 0  # bumped by pin() and clear(): older sessions are dropped
        self.opened = 0     # handshakes completed (for tests and metrics)
        self.retried = 0    # calls retried after the daemon refused a record

    def pin(self, pinned: bytes) -> None:
        """Pin another identity: idle sessions are forgotten, and so are
        those of calls in flight when they end (they were agreed with the
        daemon pinned before)."""
        with self._lock:
            self.pinned = pinned
            self._forget_locked()

    def handshake(self, send: Transport) -> Session:
        """Open a session (one OpenSession round trip) and check the answer
        in the document's order before deriving any key."""
        pb = self.pb
        with self._lock:   # one pin for the whole handshake, even if pin() runs meanwhile
            pinned, generation = self.pinned, self.generation
        if pinned is None:
            raise FailedPrecondition("no daemon identity is pinned, so no sealed session can "
                                     "be opened: pin the key printed by `cofferctl identity` "
                                     "(Client(identity=FILE))")
        eph = x25519.X25519PrivateKey.generate()
        client_pub = eph.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        client_random = os.urandom(RANDOM_LEN)
        req = pb.OpenSessionRequest(version=VERSION, client_ephemeral=client_pub,
                                    client_random=client_random, principal="")
        raw = send("/coffer.v1.SessionService/OpenSession", req.SerializeToString())
        try:
            resp = pb.OpenSessionResponse.FromString(raw)
        except Exception:
            raise Unauthenticated("malformed OpenSession response")
        if resp.identity_public_key != pinned:
            got = fingerprint(resp.identity_public_key) if resp.identity_public_key else "(none)"
            raise Unauthenticated("the daemon presented identity %s but %s is pinned: "
                                  "refusing it" % (got, fingerprint(pinned)))
        if (len(resp.session_id) != ID_LEN or len(resp.server_ephemeral) != PUB_LEN
                or len(resp.server_random) != RANDOM_LEN or resp.lifetime_seconds == 0
                or resp.max_records == 0):
            raise Unauthenticated("malformed OpenSession response (field sizes)")
        hello = Hello(VERSION, client_pub, client_random, "", resp.session_id,
                      resp.server_ephemeral, resp.server_random, resp.caller_uid,
                      resp.caller_gid, pinned, resp.lifetime_seconds, resp.max_records,
                      resp.max_bytes)
        th = hashlib.sha256(transcript(hello)).digest()
        key = serialization.load_der_public_key(pinned)
        try:
            key.verify(resp.signature, signed_message(th), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise Unauthenticated("the daemon's handshake signature does not verify under "
                                  "the pinned identity: refusing it")
        # The daemon binds the session to the ids it read from the socket;
        # other ids than ours mean another process connected and relays it.
        if self.peer_check and (resp.caller_uid != os.geteuid()
                                or resp.caller_gid != os.getegid()):
            raise Unauthenticated(
                "the daemon saw this session opened by uid %d gid %d, not by this process "
                "(uid %d gid %d): something relays the socket; refusing the session (user "
                "namespace: Client(peer_check=False))"
                % (resp.caller_uid, resp.caller_gid, os.geteuid(), os.getegid()))
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(resp.server_ephemeral)
            shared = eph.exchange(peer)
        except ValueError:
            raise Unauthenticated("the daemon's ephemeral key is unusable")
        keys = derive(shared, th)
        with self._lock:
            self.opened += 1
        return Session(resp.session_id, keys, hello, generation)

    def _acquire(self, send: Transport, length: int, fresh: bool = False) -> Session:
        """An idle session with room for `length` bytes, or a new one (always
        a new one when `fresh`)."""
        now = time.monotonic()
        with self._lock:
            while self._idle and not fresh:
                s = self._idle.pop()
                if s.usable(length, now):
                    return s
        return self.handshake(send)

    def _release(self, s: Session) -> None:
        with self._lock:
            if s.generation == self.generation and len(self._idle) < POOL_IDLE_MAX:
                self._idle.append(s)

    def _forget_locked(self) -> None:
        self._idle = []
        self.generation += 1

    def clear(self) -> None:
        """Forget every session: the idle ones now, those of calls in flight
        when the calls end (close(), a fork)."""
        with self._lock:
            self._forget_locked()

    def close_idle(self, send: Transport) -> None:
        """End the idle sessions at the daemon (sealed CloseSession), so that
        they hold no room in its session table until they expire; those of
        calls in flight are dropped when the calls end. Best effort: the
        first failure other than a session already gone there stops it (the
        daemon is away; its sessions expire by themselves)."""
        with self._lock:
            idle = self._idle
            self._forget_locked()
        for s in idle:
            try:
                self._exchange(send, s, CLOSE_METHOD, b"")
            except Unauthenticated:
                continue
            except CofferError:
                break

    def after_fork(self) -> None:
        """In a forked child: the sessions are the parent's too (the same
        keys and sequence numbers), so none is used here; the lock may have
        been held by a thread the child does not have."""
        self._lock = threading.Lock()
        self.clear()

    def _exchange(self, send: Transport, s: Session, method: str, request: bytes):
        pb = self.pb
        seq = s.sequence
        record = seal(s.keys, s.id, C2S, seq, method, request)
        envelope = pb.SealedCall(session_id=s.id, sequence=seq, method=method, record=record)
        s.sequence += 1
        s.bytes += len(request)
        raw = send("/coffer.v1.SessionService/Call", envelope.SerializeToString())
        # The record was accepted: the call may have run, so nothing below
        # is UNAUTHENTICATED (which would be retried).
        try:
            reply = pb.SealedReply.FromString(raw)
        except Exception:
            raise Internal("malformed sealed reply; the call may have run", method=method)
        try:
            if reply.sequence != seq:
                raise InvalidTag()
            plain = open_record(s.keys, s.id, S2C, seq, method, reply.record)
        except InvalidTag:
            raise Internal("the daemon's sealed reply failed authentication and was "
                           "discarded; the call may have run", method=method)
        s.bytes += len(plain)
        try:
            return pb.SealedResult.FromString(plain)
        except Exception:
            raise Internal("malformed sealed result", method=method)

    def call(self, send: Transport, method: str, request: bytes):
        """`method` with the serialized `request`, sealed; the SealedResult.
        A record the daemon refused (outer UNAUTHENTICATED: the session
        expired, was evicted, or the daemon restarted) did not run, so it is
        retried once on a session opened for the retry (an idle one may be
        as dead: after a restart they all are, and a refusal saying so
        forgets them); any other failure drops the session and is raised."""
        for attempt in (0, 1):
            s = self._acquire(send, len(request), fresh=attempt == 1)
            try:
                result = self._exchange(send, s, method, request)
            except Unauthenticated as e:
                if attempt == 1:
                    raise
                with self._lock:
                    self.retried += 1
                    if e.message.startswith(SESSION_GONE) and s.generation == self.generation:
                        self._idle = []
                continue
            self._release(s)
            return result
        raise AssertionError("unreachable")
