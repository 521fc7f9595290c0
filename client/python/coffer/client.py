"""Client: every Coffer call from Python, sealed and signed as libcoffer does.

    c = Client(socket="/run/coffer/service.sock", identity="identity.pem",
               api_key_file="billing.key")
    sig = c.sign("billing-signer", b"hello")
    assert c.verify("billing-signer", sig.version, sig.signature, b"hello")

Calls that carry secrets (Wrap, Unwrap, GenerateDataKey, ImportKey,
CreateApiKey, RotateApiKeySecret) travel in a sealed session against the
pinned identity; every service-socket call is signed with the API key when
one is set. Failures raise CofferError subclasses (coffer.errors) with the
daemon's message.

Thread-safe: one Client may be shared by threads (one gRPC channel per
socket; one session per call in flight). A Client made before os.fork()
works in the child, which opens sessions and draws nonces of its own.
"""

import hashlib
import itertools
import os
import threading
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import callauth, forks, health, methods, reqsign
from .errors import (Cancelled, CofferError, DeadlineExceeded, Internal, InvalidArgument,
                     ResourceExhausted, Unavailable, error_for, status_code)
from .names import HASHES, KEY_TYPES, OPERATIONS, SCHEMES, Name, enum_value, operations
from .session import SessionPool, load_identity

try:
    from .v1 import coffer_pb2 as pb
except ImportError as e:   # pragma: no cover - a packaging error, said plainly
    raise ImportError("coffer.v1.coffer_pb2 is missing: it is generated from "
                      "proto/coffer/v1/coffer.proto (see coffer/v1/__init__.py): use the "
                      "build tree's copy (build/client/python) or run grpc_tools.protoc") from e

KS = methods.KEY_SERVICE
AS = methods.ADMIN_SERVICE
SS = methods.SESSION_SERVICE

DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE = 8 << 20          # libcoffer's cap, both ways
RESTART_WAIT = 10.0            # seconds an idempotent admin call rides out a restart
IDEM_RETRY_S = 0.25
CLOSE_WAIT = 1.0               # seconds close() gives ending sessions at the daemon
LIST_PAGE = 1000

Context = Optional[Mapping[str, str]]
PathLike = Union[str, "os.PathLike[str]"]


def _ks(name: str) -> str:
    return methods.path(KS, name)


def _as(name: str) -> str:
    return methods.path(AS, name)


class Client:
    """A client of one cofferd.

    socket         the service socket (KeyService); None: no service calls
    admin_socket   the admin socket (AdminService); None: no admin calls
    identity       the daemon's pinned identity: a PEM file path (`cofferctl
                   identity --out FILE`), or PEM/DER bytes. Needed for sealed
                   calls; without it they raise FailedPrecondition.
    api_key_file   a credentials file (`cofferctl principal add-key --out`)
                   whose key signs every service-socket call; or
    api_key        (id, secret) to the same effect
    timeout        seconds per call, its handshake, repetitions and waits
                   across a restart included (None: no deadline)
    seal_all       seal every KeyService call (daemon with require_sealed)
    peer_check     refuse sessions the daemon saw opened by other uid/gid
                   than this process's (False only in user namespaces)
    restart_wait   seconds an admin call with an idempotency key keeps being
                   repeated while the daemon is unreachable (a restart),
                   within its timeout
    """

    def __init__(self, socket: Optional[PathLike] = None, *,
                 admin_socket: Optional[PathLike] = None,
                 identity: Union[PathLike, bytes, None] = None,
                 api_key_file: Optional[PathLike] = None,
                 api_key: Optional[Tuple[str, bytes]] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT,
                 seal_all: bool = False, peer_check: bool = True,
                 restart_wait: float = RESTART_WAIT) -> None:
        if socket is None and admin_socket is None:
            raise InvalidArgument("give the service socket, the admin socket, or both")
        if api_key_file is not None and api_key is not None:
            raise InvalidArgument("give api_key_file or api_key, not both")
        self._paths = {methods.SERVICE: socket, methods.ADMIN: admin_socket}
        for kind, p in self._paths.items():
            if p is not None:
                p = os.fspath(p)
                p = p[5:] if p.startswith("unix:") else p
                if not p:
                    raise InvalidArgument("empty %s socket path" % kind)
                if len(p.encode()) > 107:
                    raise InvalidArgument("%s socket path longer than 107 bytes" % kind)
                self._paths[kind] = p
        self.timeout = timeout
        self.seal_all = seal_all
        self.restart_wait = restart_wait
        pinned = load_identity(identity) if identity is not None else None
        self._pools = {k: SessionPool(pinned, pb, peer_check) for k in self._paths}
        self._api_key: Optional[callauth.ApiKey] = None
        if api_key_file is not None:
            self._api_key = callauth.read_api_key_file(os.fspath(api_key_file))
        elif api_key is not None:
            self._api_key = callauth.ApiKey(api_key[0], api_key[1])
        self._channels: Dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        forks.watch(self)

    def _after_fork(self) -> None:
        """In a forked child: no session of the parent's is used (the same
        keys and sequence numbers would seal two records under one nonce)."""
        self._lock = threading.Lock()
        for pool in self._pools.values():
            pool.after_fork()

    # ---- configuration ----

    def pin_identity(self, identity: Union[PathLike, bytes]) -> None:
        """Pin (another) daemon identity; open sessions are dropped, those of
        calls in flight too when the calls end."""
        pinned = load_identity(identity)
        for pool in self._pools.values():
            pool.pin(pinned)

    def set_api_key(self, key_id: Optional[str], secret: Optional[bytes] = None) -> None:
        """Sign later calls with this API key (None: stop signing)."""
        self._api_key = None if key_id is None else callauth.ApiKey(key_id, secret or b"")

    def set_api_key_file(self, path: PathLike) -> None:
        self._api_key = callauth.read_api_key_file(os.fspath(path))

    @property
    def api_key_id(self) -> Optional[str]:
        k = self._api_key
        return k.id if k else None

    def sessions_opened(self, kind: str = methods.SERVICE) -> int:
        """Handshakes completed on the service (or "admin") socket."""
        return self._pools[kind].opened

    def sealed_retries(self, kind: str = methods.SERVICE) -> int:
        """Sealed calls repeated on a new session after the daemon refused
        their record (expired, evicted, restarted: the call had not run)."""
        return self._pools[kind].retried

    def close(self) -> None:
        """End the idle sessions at the daemon (at most CLOSE_WAIT seconds
        in all), close the channels and forget every session."""
        until = time.monotonic() + CLOSE_WAIT
        for kind, pool in self._pools.items():
            def send(path: str, data: bytes, kind: str = kind) -> bytes:
                return self._unary(kind, path, data, None, until)
            pool.close_idle(send)
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels = {}
        for pool in self._pools.values():
            pool.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport ----

    def _channel(self, kind: str) -> grpc.Channel:
        path = self._paths[kind]
        if path is None:
            raise InvalidArgument("no %s socket was given to this Client (Client(%s=...))"
                                  % (kind, "socket" if kind == methods.SERVICE
                                         else "admin_socket"))
        with self._lock:
            ch = self._channels.get(kind)
            if ch is None:
                ch = grpc.insecure_channel("unix:" + path, options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                    ("grpc.enable_http_proxy", 0),
                    # A restarted daemon is found at the next call, not after
                    # gRPC's reconnect backoff.
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.use_local_subchannel_pool", 1),
                    ("grpc.primary_user_agent", "coffer-python")])
                self._channels[kind] = ch
            return ch

    def _unary(self, kind: str, path: str, body: bytes, idempotency_key: Optional[str],
               deadline: Optional[float] = None) -> bytes:
        """One RPC, within what is left of the call's `deadline` (monotonic
        seconds; None: a call of its own, self.timeout)."""
        md: List[Tuple[str, str]] = []
        api_key = self._api_key   # read once: another thread may set it meanwhile
        if kind == methods.SERVICE and api_key is not None:
            md.append(("authorization", api_key.header(path, body)))
        if idempotency_key:
            md.append(("idempotency-key", idempotency_key))
        left = self.timeout if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise DeadlineExceeded("no answer from cofferd at %s within %s s"
                                   % (self._paths[kind], self.timeout), method=path)
        try:
            call = self._channel(kind).unary_unary(path)   # bytes in, bytes out
            return call(body, timeout=left, metadata=md or None)
        except grpc.RpcError as e:
            raise self._rpc_error(kind, path, e) from None
        except ValueError as e:
            # grpcio's answer for a channel close() shut meanwhile ("Cannot
            # invoke RPC: Channel closed!", "... on closed channel!").
            text = str(e).lower()
            if "channel" not in text or "closed" not in text:
                raise
            raise Cancelled("the Client was closed while the call was made",
                            method=path) from None

    def _rpc_error(self, kind: str, path: str, e: grpc.RpcError) -> CofferError:
        code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
        msg = (e.details() if callable(getattr(e, "details", None)) else None) or ""
        trailers = dict(e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else {}
        retry = trailers.get("retry-after-ms")
        if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in msg:
            msg = "cannot reach cofferd at %s: %s" % (self._paths[kind], msg)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and msg == "Deadline Exceeded":
            msg = "no answer from cofferd at %s within %s s" % (self._paths[kind], self.timeout)
        return error_for(code, msg, method=path,
                         retry_after_ms=int(retry) if retry and retry.isdigit() else None,
                         request_id=trailers.get("x-request-id"))

    def _call(self, method: str, request, response_type, idempotency_key: Optional[str] = None):
        """`method` with `request` (a protobuf message): sealed where it must
        be, signed when a key is set; the response message."""
        kind = methods.socket_of(method)
        if idempotency_key is not None:
            _check_idempotency_key(idempotency_key)
        body = request.SerializeToString()   # serialized once: the bytes signed are sent
        if len(body) > MAX_MESSAGE:
            raise ResourceExhausted("request of %d bytes is above the %d-byte message limit"
                                    % (len(body), MAX_MESSAGE), method=method)
        sealed = methods.must_seal(method, self.seal_all)

        # One deadline for the whole call: its handshake, its repetitions and
        # its waits across a restart (as libcoffer's).
        deadline = None if self.timeout is None else time.monotonic() + self.timeout

        def send(path: str, data: bytes) -> bytes:
            return self._unary(kind, path, data, idempotency_key, deadline)

        give_up = time.monotonic() + self.restart_wait
        if deadline is not None:
            give_up = min(give_up, deadline)
        for attempt in itertools.count():
            try:
                if sealed:
                    result = self._pools[kind].call(send, method, body)
                    if result.code != 0:
                        raise error_for(status_code(result.code), result.message, method=method,
                                        retry_after_ms=result.retry_after_ms or None)
                    raw = result.response
                else:
                    raw = send(method, body)
                break
            except Unavailable:
                # With an idempotency key an admin call is safe to repeat
                # across a restart; a KeyService call is repeated once (the
                # connection may have died unnoticed) unless it changes the
                # daemon's state (methods.NOT_REPEATABLE).
                if idempotency_key and kind == methods.ADMIN and time.monotonic() < give_up:
                    time.sleep(max(0.0, min(IDEM_RETRY_S, give_up - time.monotonic())))
                    # Out of time: what was met is the answer, not a deadline.
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                    continue
                if (kind == methods.SERVICE and attempt == 0
                        and method not in methods.NOT_REPEATABLE):
                    continue
                raise
        try:
            return response_type.FromString(raw)
        except Exception:
            raise Internal("malformed response to %s" % method, method=method) from None

    # ---- KeyService: signatures and MACs ----

    def sign(self, key: str, message: Optional[bytes] = None, *, digest: Optional[bytes] = None,
             version: int = 0, hash: Name = 0, scheme: Name = 0,
             ecdsa_raw: bool = False) -> "pb.SignResponse":
        """Sign `message` (at most 1 MiB; the daemon hashes it) or a `digest`
        of `hash`. Returns SignResponse: signature, version (keep it for
        verify), scheme, hash."""
        req = pb.SignRequest(key=key, version=version, hash=enum_value(hash, HASHES, "hash"),
                             scheme=enum_value(scheme, SCHEMES, "scheme"), ecdsa_raw=ecdsa_raw)
        _message_or_digest(req, message, digest)
        return self._call(_ks("Sign"), req, pb.SignResponse)

    def verify(self, key: str, version: int, signature: bytes, message: Optional[bytes] = None,
               *, digest: Optional[bytes] = None, hash: Name = 0, scheme: Name = 0,
               ecdsa_raw: bool = False) -> bool:
        """Whether `signature` by version `version` of `key` is valid over
        `message` (or `digest`). A wrong signature is False, not an error."""
        req = pb.VerifyRequest(key=key, version=version, signature=signature,
                               hash=enum_value(hash, HASHES, "hash"),
                               scheme=enum_value(scheme, SCHEMES, "scheme"), ecdsa_raw=ecdsa_raw)
        _message_or_digest(req, message, digest)
        return self._call(_ks("Verify"), req, pb.VerifyResponse).valid

    def mac(self, key: str, data: bytes, *, version: int = 0) -> "pb.MacResponse":
        """HMAC of `data` (at most 1 MiB). Returns MacResponse: mac, version."""
        return self._call(_ks("Mac"), pb.MacRequest(key=key, version=version, data=data),
                          pb.MacResponse)

    def verify_mac(self, key: str, version: int, data: bytes, mac: bytes) -> bool:
        """Whether `mac` is version `version`'s HMAC of `data` (compared in the token)."""
        return self._call(_ks("VerifyMac"), pb.VerifyMacRequest(key=key, version=version,
                                                                data=data, mac=mac),
                          pb.VerifyMacResponse).valid

    # ---- KeyService: batches ----

    def sign_batch(self, key: str, messages: Optional[Sequence[bytes]] = None, *,
                   digests: Optional[Sequence[bytes]] = None, version: int = 0,
                   hash: Name = 0, scheme: Name = 0,
                   ecdsa_raw: bool = False) -> "pb.SignBatchResponse":
        """Sign 1..1024 messages (or digests) with one version. Each result
        has its own status (code 0: its signature); coffer.check_items()
        raises the first failed item."""
        if (messages is None) == (digests is None):
            raise InvalidArgument("give messages or digests")
        items = ([pb.SignBatchItem(message=m) for m in messages] if messages is not None
                 else [pb.SignBatchItem(digest=d) for d in digests])
        req = pb.SignBatchRequest(key=key, version=version, hash=enum_value(hash, HASHES, "hash"),
                                  scheme=enum_value(scheme, SCHEMES, "scheme"),
                                  ecdsa_raw=ecdsa_raw, items=items)
        return self._call(_ks("SignBatch"), req, pb.SignBatchResponse)

    def verify_batch(self, key: str, version: int, items: Iterable[Tuple[bytes, bytes]], *,
                     prehashed: bool = False, hash: Name = 0, scheme: Name = 0,
                     ecdsa_raw: bool = False) -> "pb.VerifyBatchResponse":
        """Verify (message, signature) pairs — (digest, signature) with
        prehashed — with version `version`; results[i].valid per item."""
        its = [pb.VerifyBatchItem(digest=m, signature=s) if prehashed
               else pb.VerifyBatchItem(message=m, signature=s) for m, s in items]
        req = pb.VerifyBatchRequest(key=key, version=version,
                                    hash=enum_value(hash, HASHES, "hash"),
                                    scheme=enum_value(scheme, SCHEMES, "scheme"),
                                    ecdsa_raw=ecdsa_raw, items=its)
        return self._call(_ks("VerifyBatch"), req, pb.VerifyBatchResponse)

    def mac_batch(self, key: str, data: Sequence[bytes], *,
                  version: int = 0) -> "pb.MacBatchResponse":
        """HMAC of each of 1..1024 data items with one version."""
        req = pb.MacBatchRequest(key=key, version=version,
                                 items=[pb.MacBatchItem(data=d) for d in data])
        return self._call(_ks("MacBatch"), req, pb.MacBatchResponse)

    def verify_mac_batch(self, key: str, version: int,
                         items: Iterable[Tuple[bytes, bytes]]) -> "pb.VerifyMacBatchResponse":
        """Compare each (data, mac) pair in the token with version `version`."""
        req = pb.VerifyMacBatchRequest(key=key, version=version, items=[
            pb.VerifyMacBatchItem(data=d, mac=m) for d, m in items])
        return self._call(_ks("VerifyMacBatch"), req, pb.VerifyMacBatchResponse)

    # ---- KeyService: envelope encryption (sealed) ----

    def wrap(self, key: str, plaintext: bytes, context: Context = None) -> "pb.WrapResponse":
        """Encrypt `plaintext` (at most 64 KiB) under the primary version,
        bound to the key name and `context`. Sealed. WrapResponse:
        ciphertext (a self-describing blob), version."""
        return self._call(_ks("Wrap"), pb.WrapRequest(key=key, plaintext=plaintext,
                                                      context=dict(context or {})),
                          pb.WrapResponse)

    def unwrap(self, key: str, ciphertext: bytes,
               context: Context = None) -> "pb.UnwrapResponse":
        """Decrypt a blob of wrap() (same key name and context). Sealed.
        UnwrapResponse: plaintext, version."""
        return self._call(_ks("Unwrap"), pb.UnwrapRequest(key=key, ciphertext=ciphertext,
                                                          context=dict(context or {})),
                          pb.UnwrapResponse)

    def rewrap(self, key: str, ciphertext: bytes,
               context: Context = None) -> "pb.RewrapResponse":
        """Re-encrypt a blob under the primary version without the plaintext
        leaving the daemon. RewrapResponse: ciphertext, version, previous_version."""
        return self._call(_ks("Rewrap"), pb.RewrapRequest(key=key, ciphertext=ciphertext,
                                                          context=dict(context or {})),
                          pb.RewrapResponse)

    def generate_data_key(self, key: str, *, length: int = 32, context: Context = None,
                          include_plaintext: bool = True) -> "pb.GenerateDataKeyResponse":
        """A fresh data key of `length` bytes (16, 24 or 32): ciphertext (a
        wrap blob of it, for storage) and, with include_plaintext, plaintext
        (to encrypt with now). Sealed."""
        req = pb.GenerateDataKeyRequest(key=key, length=length, context=dict(context or {}),
                                        include_plaintext=include_plaintext)
        return self._call(_ks("GenerateDataKey"), req, pb.GenerateDataKeyResponse)

    # ---- KeyService: keys ----

    def get_public_key(self, key: str, version: int = 0) -> "pb.GetPublicKeyResponse":
        """The public key of an asymmetric key version (0: primary): der, pem, type, version."""
        return self._call(_ks("GetPublicKey"), pb.GetPublicKeyRequest(key=key, version=version),
                          pb.GetPublicKeyResponse)

    def get_key(self, name: str, *, admin: bool = False) -> "pb.Key":
        """A key's metadata, through the service socket (needs a
        get-public-key grant) or, with admin=True, the admin socket."""
        return self._call(_as("GetKey") if admin else _ks("GetKey"), pb.GetKeyRequest(name=name),
                          pb.Key)

    def list_keys(self, *, admin: bool = False) -> List["pb.Key"]:
        """Every key the caller may see (every page), ordered by name."""
        method = _as("ListKeys") if admin else _ks("ListKeys")
        keys: List[pb.Key] = []
        token = ""
        while True:
            resp = self._call(method, pb.ListKeysRequest(page_size=LIST_PAGE, page_token=token),
                              pb.ListKeysResponse)
            # A listing that goes back or stands still would never end: the
            # server's tokens are trusted no further than its name order.
            for k in resp.keys:
                if keys and k.name <= keys[-1].name:
                    raise Internal("the server's key listing is not in name order (%r after "
                                   "%r)" % (k.name[:64], keys[-1].name[:64]), method=method)
                keys.append(k)
            if not resp.next_page_token:
                return keys
            if not resp.keys or resp.next_page_token == token:
                raise Internal("the server's key listing does not advance (page token %r)"
                               % resp.next_page_token[:64], method=method)
            token = resp.next_page_token

    def get_identity(self, *, admin: bool = False) -> "pb.GetIdentityResponse":
        """The daemon's identity: public_key (SPKI DER, to pin) and fingerprint.
        Trust it only through a channel you trust (first use, or compare the
        fingerprint with the operator's)."""
        kind = methods.ADMIN if admin else methods.SERVICE
        method = methods.path(SS, "GetIdentity")
        raw = self._unary(kind, method, pb.GetIdentityRequest().SerializeToString(), None)
        try:
            return pb.GetIdentityResponse.FromString(raw)
        except Exception:
            raise Internal("malformed response to %s" % method, method=method) from None

    def health(self, service: str = "", *, admin: bool = False) -> str:
        """grpc.health.v1 Check of the service (or admin) socket: "SERVING",
        "NOT_SERVING", ... for the daemon ("") or a service it serves
        ("coffer.v1.KeyService"); NotFound for a service it does not."""
        kind = methods.ADMIN if admin else methods.SERVICE
        raw = self._unary(kind, health.PATH,
                          health.HealthCheckRequest(service=service).SerializeToString(), None)
        try:
            status = health.HealthCheckResponse.FromString(raw).status
        except Exception:
            raise Internal("malformed response to %s" % health.PATH, method=health.PATH) from None
        return health.STATUS_NAMES.get(status, "UNKNOWN")

    # ---- KeyService: HMAC-signed HTTP requests ----

    def _parts(self, key: str, method: str, path: str, raw_query: str, body: bytes,
               timestamp: int, nonce: str) -> "pb.HttpRequestParts":
        return pb.HttpRequestParts(key=key, method=method, path=path,
                                   canonical_query=reqsign.canonical_query(raw_query),
                                   body_sha256=hashlib.sha256(body).digest(),
                                   timestamp=timestamp, nonce=nonce)

    def sign_http_request(self, key: str, method: str, path: str, raw_query: str = "",
                          body: bytes = b"", *, timestamp: int = 0,
                          nonce: str = "") -> "pb.SignHttpRequestResponse":
        """Sign an outgoing request with the hmac-sha256 key `key` (the API
        key id on the REST side); timestamp 0 is now, nonce "" a fresh one.
        SignHttpRequestResponse: signature, timestamp, nonce, version,
        authorization (the header value)."""
        req = pb.SignHttpRequestRequest(request=self._parts(key, method, path, raw_query, body,
                                                            timestamp, nonce))
        return self._call(_ks("SignHttpRequest"), req, pb.SignHttpRequestResponse)

    def verify_http_request(self, key: str, method: str, path: str, raw_query: str,
                            body: bytes, timestamp: int, nonce: str,
                            signature: str) -> "pb.VerifyRequestSignatureResponse":
        """Check an incoming request's signature: the window, the signature
        in the token and the nonce (recorded when valid). A refusal is a
        verdict, not an error: .valid, .verdict (coffer.names.VERDICTS),
        .reason, .version."""
        req = pb.VerifyRequestSignatureRequest(
            request=self._parts(key, method, path, raw_query, body, timestamp, nonce),
            signature=signature)
        return self._call(_ks("VerifyRequestSignature"), req, pb.VerifyRequestSignatureResponse)

    # ---- AdminService: keys ----

    def create_key(self, name: str, type: Name, *, allowed_operations: Iterable[Name] = (),
                   rotation_period: int = 0, idempotency_key: Optional[str] = None) -> "pb.Key":
        """Generate version 1 of a key in the token. type: "ec-p256",
        "hmac-sha256", "aes-256", ... or a KeyType number."""
        req = pb.CreateKeyRequest(name=name, type=enum_value(type, KEY_TYPES, "key type"),
                                  allowed_operations=operations(allowed_operations),
                                  rotation_period=rotation_period)
        return self._call(_as("CreateKey"), req, pb.Key, idempotency_key)

    def import_key(self, name: str, type: Name, material: bytes, *,
                   allowed_operations: Iterable[Name] = (),
                   idempotency_key: Optional[str] = None) -> "pb.Key":
        """Import raw secret material (HMAC or AES-256). Sealed."""
        req = pb.ImportKeyRequest(name=name, type=enum_value(type, KEY_TYPES, "key type"),
                                  material=material,
                                  allowed_operations=operations(allowed_operations))
        return self._call(_as("ImportKey"), req, pb.Key, idempotency_key)

    def rotate_key(self, name: str, *, idempotency_key: Optional[str] = None) -> "pb.Key":
        """A new version, made primary."""
        return self._call(_as("RotateKey"), pb.RotateKeyRequest(name=name), pb.Key,
                          idempotency_key)

    def _version_call(self, rpc: str, name: str, version: int, force: bool = False,
                      grace_seconds: int = 0, idempotency_key: Optional[str] = None) -> "pb.Key":
        req = pb.KeyVersionRequest(name=name, version=version, force=force,
                                   grace_seconds=grace_seconds)
        return self._call(_as(rpc), req, pb.Key, idempotency_key)

    def set_primary_version(self, name: str, version: int, *,
                            idempotency_key: Optional[str] = None) -> "pb.Key":
        return self._version_call("SetPrimaryVersion", name, version,
                                  idempotency_key=idempotency_key)

    def enable_key_version(self, name: str, version: int, *,
                           idempotency_key: Optional[str] = None) -> "pb.Key":
        return self._version_call("EnableKeyVersion", name, version,
                                  idempotency_key=idempotency_key)

    def disable_key_version(self, name: str, version: int, *, force: bool = False,
                            idempotency_key: Optional[str] = None) -> "pb.Key":
        """force: also the primary or the last enabled version."""
        return self._version_call("DisableKeyVersion", name, version, force,
                                  idempotency_key=idempotency_key)

    def schedule_destroy_key_version(self, name: str, version: int, *, grace_seconds: int = 0,
                                     force: bool = False,
                                     idempotency_key: Optional[str] = None) -> "pb.Key":
        """Destroy the version's token objects after grace_seconds (0: the
        daemon's default, 7 days) unless cancelled."""
        return self._version_call("ScheduleDestroyKeyVersion", name, version, force,
                                  grace_seconds, idempotency_key)

    def cancel_destroy_key_version(self, name: str, version: int, *,
                                   idempotency_key: Optional[str] = None) -> "pb.Key":
        return self._version_call("CancelDestroyKeyVersion", name, version,
                                  idempotency_key=idempotency_key)

    def set_key_minimums(self, name: str, *, min_version: int = 0, min_verify_version: int = 0,
                         keep_last: int = 0, idempotency_key: Optional[str] = None) -> "pb.Key":
        """0 leaves a minimum as it is, 1 removes it; keep_last N keeps the
        newest N versions usable for verify and unwrap."""
        req = pb.SetKeyMinimumsRequest(name=name, min_version=min_version,
                                       min_verify_version=min_verify_version,
                                       keep_last=keep_last)
        return self._call(_as("SetKeyMinimums"), req, pb.Key, idempotency_key)

    def trim_key(self, name: str, *, grace_seconds: int = 0,
                 idempotency_key: Optional[str] = None) -> "pb.Key":
        """Schedule the destruction of every version below min_verify_version."""
        return self._call(_as("TrimKey"), pb.TrimKeyRequest(name=name,
                                                            grace_seconds=grace_seconds),
                          pb.Key, idempotency_key)

    def set_rotation_schedule(self, name: str, period_seconds: int, *,
                              next_rotation_time: int = 0,
                              idempotency_key: Optional[str] = None) -> "pb.Key":
        """Rotate every period_seconds (0: never), first at next_rotation_time
        (0: one period from now)."""
        req = pb.SetRotationScheduleRequest(name=name, period_seconds=period_seconds,
                                            next_rotation_time=next_rotation_time)
        return self._call(_as("SetRotationSchedule"), req, pb.Key, idempotency_key)

    # ---- AdminService: principals ----

    def create_principal(self, name: str, *, uids: Iterable[int] = (), gids: Iterable[int] = (),
                         idempotency_key: Optional[str] = None) -> "pb.Principal":
        req = pb.CreatePrincipalRequest(name=name, uids=list(uids), gids=list(gids))
        return self._call(_as("CreatePrincipal"), req, pb.Principal, idempotency_key)

    def get_principal(self, name: str) -> "pb.Principal":
        return self._call(_as("GetPrincipal"), pb.GetPrincipalRequest(name=name), pb.Principal)

    def list_principals(self) -> List["pb.Principal"]:
        return list(self._call(_as("ListPrincipals"), pb.ListPrincipalsRequest(),
                               pb.ListPrincipalsResponse).principals)

    def grant(self, name: str, key_pattern: str, ops: Iterable[Name], *,
              idempotency_key: Optional[str] = None) -> "pb.Principal":
        """Add operations ("sign", "verify-mac", ...) on keys matching
        key_pattern (a name or a glob) to principal `name`."""
        req = pb.GrantRequest(name=name, grant=pb.Grant(key_pattern=key_pattern,
                                                        operations=operations(ops)))
        return self._call(_as("GrantPrincipal"), req, pb.Principal, idempotency_key)

    def revoke(self, name: str, key_pattern: str, ops: Iterable[Name] = (), *,
               idempotency_key: Optional[str] = None) -> "pb.Principal":
        """Remove operations (all when none are given) from a grant."""
        req = pb.RevokeRequest(name=name, key_pattern=key_pattern, operations=operations(ops))
        return self._call(_as("RevokePrincipal"), req, pb.Principal, idempotency_key)

    def set_rate_limit(self, name: str, per_second: float, burst: int, *,
                       operation: Name = 0,
                       idempotency_key: Optional[str] = None) -> "pb.Principal":
        """A token bucket for the principal (operation "all": every call
        together); per_second 0 removes it."""
        op = enum_value(operation, OPERATIONS, "operation")
        req = pb.SetRateLimitRequest(name=name, limit=pb.RateLimit(
            operation=op, per_second=per_second, burst=burst))
        return self._call(_as("SetRateLimit"), req, pb.Principal, idempotency_key)

    def delete_principal(self, name: str, *, idempotency_key: Optional[str] = None) -> None:
        """Delete a principal (its API keys are revoked)."""
        self._call(_as("DeletePrincipal"), pb.DeletePrincipalRequest(name=name),
                   pb.DeletePrincipalResponse, idempotency_key)

    # ---- AdminService: API keys ----

    def create_api_key(self, principal: str, *, secret: bytes = b"",
                       idempotency_key: Optional[str] = None) -> "pb.ApiKeySecretResponse":
        """A new API key for `principal`: key and, when the token generated
        it (secret empty), the secret, shown this once. Sealed."""
        return self._call(_as("CreateApiKey"), pb.CreateApiKeyRequest(principal=principal,
                                                                      secret=secret),
                          pb.ApiKeySecretResponse, idempotency_key)

    def rotate_api_key_secret(self, key_id: str, *, overlap_seconds: int = 0,
                              secret: bytes = b"",
                              idempotency_key: Optional[str] = None
                              ) -> "pb.ApiKeySecretResponse":
        """A new current secret; older ones verify for overlap_seconds more. Sealed."""
        req = pb.RotateApiKeySecretRequest(id=key_id, overlap_seconds=overlap_seconds,
                                           secret=secret)
        return self._call(_as("RotateApiKeySecret"), req, pb.ApiKeySecretResponse,
                          idempotency_key)

    def revoke_api_key(self, key_id: str, *,
                       idempotency_key: Optional[str] = None) -> "pb.ApiKey":
        """Destroy every secret of the key; its id stays known as revoked."""
        return self._call(_as("RevokeApiKey"), pb.RevokeApiKeyRequest(id=key_id), pb.ApiKey,
                          idempotency_key)

    def set_principal_auth(self, name: str, require_api_key: bool, *,
                           idempotency_key: Optional[str] = None
                           ) -> "pb.SetPrincipalAuthResponse":
        """Whether `name` must sign its calls while it has no live API key."""
        req = pb.SetPrincipalAuthRequest(name=name, require_api_key=require_api_key)
        return self._call(_as("SetPrincipalAuth"), req, pb.SetPrincipalAuthResponse,
                          idempotency_key)

    def list_api_keys(self, principal: str = "") -> List["pb.ApiKey"]:
        """API keys of `principal` ("": of every principal), by id."""
        return list(self._call(_as("ListApiKeys"), pb.ListApiKeysRequest(principal=principal),
                               pb.ListApiKeysResponse).keys)

    # ---- AdminService: the audit trail ----

    def tail_audit(self, count: int = 20) -> List[str]:
        """The last `count` (1..1000) audit records, oldest first, as JSON lines."""
        return list(self._call(_as("TailAudit"), pb.TailAuditRequest(count=count),
                               pb.TailAuditResponse).records)

    def verify_audit(self) -> "pb.VerifyAuditResponse":
        """The daemon's check of its trail: ok, records, seals, first_bad, reason."""
        return self._call(_as("VerifyAudit"), pb.VerifyAuditRequest(), pb.VerifyAuditResponse)

    # ---- AdminService: the token ----

    def get_token_info(self) -> "pb.GetTokenInfoResponse":
        """What the daemon's token is and can do: label, module, mechanisms,
        and per key type whether it can be generated, imported and used
        (with what the token lacks when not)."""
        return self._call(_as("GetTokenInfo"), pb.GetTokenInfoRequest(),
                          pb.GetTokenInfoResponse)


def item_errors(response) -> List[Tuple[int, CofferError]]:
    """(index, error) of each failed item of a batch response (SignBatch,
    VerifyBatch, MacBatch, VerifyMacBatch), in order; the error is the
    CofferError subclass of the item's status, with its message."""
    return [(i, error_for(status_code(r.status.code), r.status.message))
            for i, r in enumerate(response.results) if r.status.code != 0]


def check_items(response):
    """The results of a batch response when every item succeeded; else
    raises the first failed item's error, its message prefixed with the
    item's index and the count of failed items."""
    failed = item_errors(response)
    if failed:
        i, e = failed[0]
        raise error_for(e.code, "item %d of %d (%d failed): %s"
                        % (i, len(response.results), len(failed), e.message))
    return response.results


def _message_or_digest(req, message: Optional[bytes], digest: Optional[bytes]) -> None:
    if (message is None) == (digest is None):
        raise InvalidArgument("give exactly one of message or digest")
    if message is not None:
        req.message = message
    else:
        req.digest = digest


_IDEM_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def _check_idempotency_key(key: str) -> None:
    if not 8 <= len(key) <= 128 or not set(key) <= _IDEM_CHARS:
        raise InvalidArgument("an idempotency key is 8..128 characters of A-Z a-z 0-9 . _ : -")
