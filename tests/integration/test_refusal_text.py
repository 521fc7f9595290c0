#!/usr/bin/python3
"""The exact text of every refusal a caller can reach from outside.

Issue 14, defect 1: a detail formatted from itself came out garbled ("key
name: key name: ust start with..."), and a status returned without its own
text carried an earlier failure's detail. Every row of ROWS below provokes one
refusal against a real cofferd on a real SoftHSM token -- on the service and
the admin socket, unsealed and sealed, as the test's uid and as other uids --
and checks its status and its EXACT message (an anchored regular expression
only where the text holds a variable value: a time, an id, a count). Each
text must also be printable UTF-8 and must not contain the text of the
refusal provoked just before it (stale detail).

When a message is changed on purpose, update its row: rows are
(id, status, expected text, provocation); `test_refusal_text.py --dump`
prints every row with the text the daemon gives now.

Rows needing another uid run a small client under `setpriv --reuid=N`
(root and setpriv required; skipped otherwise).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unittest

import grpc  # noqa: E402

from daemon_fixture import PYTHON, CofferDaemon, SealedRpcError, cofferd_path  # noqa: E402
from rpc_common import CALL_AUTH_LABEL as LABEL  # noqa: E402
from rpc_common import call_authorization as authz  # noqa: E402
from rpc_common import AS, KS, SS, TIMEOUT, S, pb  # noqa: E402

NOBODY, STRANGER = 65534, 65533      # a uid with a narrow principal; one with none
DUMP = "--dump" in sys.argv
# cofferd's log line prefix: time, pid, level.
LOGLINE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z cofferd\[\d+\] error: "


class RX(str):
    """An expected text that holds a variable value: matched in full as a
    regular expression."""


def LOG(text):
    """cofferd's log line holding `text` (after its time, pid and level)."""
    return RX(LOGLINE + re.escape(text))


def raw(sock, path, body=b"", md=()):
    """One unary call with raw bytes: (status name, details, trailers)."""
    with grpc.insecure_channel("unix:" + sock) as ch:
        f = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            f(body, metadata=list(md), timeout=TIMEOUT)
            return ("OK", "", {})
        except grpc.RpcError as e:
            return (e.code().name, e.details(), dict(e.trailing_metadata() or ()))


# A client run as another uid: reads [[socket, path, body hex, metadata]...]
# as JSON on stdin, prints [[status, details, trailers]...]. No stubs needed.
CHILD = r'''
import json, sys, grpc
out = []
for sock, path, body, md in json.load(sys.stdin):
    with grpc.insecure_channel("unix:" + sock) as ch:
        f = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            f(bytes.fromhex(body), metadata=[tuple(m) for m in md], timeout=20)
            out.append(["OK", "", {}])
        except grpc.RpcError as e:
            out.append([e.code().name, e.details(), dict(e.trailing_metadata() or ())])
print(json.dumps(out))
'''


def as_uid(d, uid, calls):
    """calls: [(path, request message)] on the service socket, as `uid`."""
    script = os.path.join(d.dir, "refusal_child.py")
    with open(script, "w") as f:
        f.write(CHILD)
    os.chmod(script, 0o644)
    todo = [[d.service_socket, p, m.SerializeToString().hex(), []] for p, m in calls]
    r = subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
                        PYTHON, "-B", script], input=json.dumps(todo), capture_output=True,
                       text=True, timeout=60, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if r.returncode != 0:
        raise AssertionError("client as uid %d failed: %s" % (uid, r.stderr))
    return [tuple(x) for x in json.loads(r.stdout)]


def cofferd_stderr(d, *args):
    """cofferd's first stderr line for a bad command line, and its status."""
    r = subprocess.run([cofferd_path(), "-c", d.conf_path] + list(args), capture_output=True,
                       timeout=60, env=d.env, stdin=subprocess.DEVNULL)
    err = r.stderr.decode("utf-8")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return ("exit %d" % r.returncode, lines[0] if lines else "", {})


# ---- the provocations (t: the test class, with its daemon) ----

def svc(t, method, req, md=()):
    return raw(t.d.service_socket, KS + method, req.SerializeToString(), md)


def adm(t, method, req, md=()):
    return raw(t.d.admin_socket, AS + method, req.SerializeToString(), md)


def sealed(t, kind, method, req):
    stub = t.sealed[kind]
    try:
        getattr(stub, method)(req, timeout=TIMEOUT)
        return ("OK", "", {})
    except SealedRpcError as e:
        return (e.code().name, e.details(), {})
    except grpc.RpcError as e:
        return ("outer " + e.code().name, e.details(), {})


def sealed_path(t, kind, path, body=b""):
    """A sealed call of any method path, through t's session on `kind`."""
    code, message, _ = t.sealed[kind].open().call(path, body, timeout=TIMEOUT)
    return (_CODES.get(code, str(code)), message, {})


_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


def sadm(t, method, req):
    return sealed(t, "admin", method, req)


def ssvc(t, method, req):
    return sealed(t, "service", method, req)


def signed(t, method, req, **kw):
    """A KeyService call with an authorization header of t's API key; kw:
    header (the value itself, or a list), key_id, secret, ts, nonce, path, body."""
    body = req.SerializeToString()
    if "header" in kw:
        h = kw["header"]
        md = [("authorization", v) for v in (h if isinstance(h, list) else [h])]
    else:
        md = [("authorization", authz(kw.get("key_id", t.key_id), kw.get("secret", t.secret),
                                      kw.get("path", KS + method), kw.get("body", body),
                                      timestamp=kw.get("ts"), nonce=kw.get("nonce")))]
    return raw(t.d.service_socket, KS + method, body, md)


def replayed(t):
    req = pb.GetKeyRequest(name="rk-ec")
    h = authz(t.key_id, t.secret, KS + "GetKey", req.SerializeToString(),
              nonce="0123456789abcdef0123456789abcdef")
    first = signed(t, "GetKey", req, header=h)
    assert first[0] == "OK", first
    return signed(t, "GetKey", req, header=h)


def good_header(t):
    return authz(t.key_id, t.secret, KS + "GetKey", pb.GetKeyRequest(name="rk-ec")
                 .SerializeToString())


def rate_limited(t):
    """The limited principal (uid NOBODY) has a burst of 2 GetKey calls."""
    return t.nobody["ratelimit"]


MB = 1024 * 1024
NAME129 = "k" * 129
KEY = "rk-ec"

# (id, status, expected text, provocation). Status "exit N" is cofferd's exit
# status for a command-line row.
ROWS = [
    # -- method and socket --
    ("unknown method", "UNIMPLEMENTED",
     'unknown method',
     lambda t: raw(t.d.service_socket, KS + "Nope")),
    ("unknown service", "UNIMPLEMENTED",
     'unknown method',
     lambda t: raw(t.d.service_socket, "/coffer.v1.Nope/Sign")),
    ("admin method on service socket", "UNIMPLEMENTED",
     '/coffer.v1.AdminService/CreateKey is not served on the service socket',
     lambda t: raw(t.d.service_socket, AS + "CreateKey", pb.CreateKeyRequest(
         name="x", type=pb.AES_256).SerializeToString())),
    ("key method on admin socket", "UNIMPLEMENTED",
     '/coffer.v1.KeyService/GetKey is not served on the admin socket',
     lambda t: raw(t.d.admin_socket, KS + "GetKey",
                   pb.GetKeyRequest(name=KEY).SerializeToString())),
    ("garbage request (service)", "INVALID_ARGUMENT",
     'request is not a valid coffer.v1.SignRequest message: bad field tag at byte 0',
     lambda t: raw(t.d.service_socket, KS + "Sign", b"\xff\xff\xff\xff")),
    ("garbage request (admin)", "INVALID_ARGUMENT",
     'request is not a valid coffer.v1.CreateKeyRequest message: truncated',
     lambda t: raw(t.d.admin_socket, AS + "CreateKey", b"\x0a\x80")),
    ("health of an unknown service", "NOT_FOUND",
     'no service "nope" on this socket',
     lambda t: raw(t.d.service_socket, "/grpc.health.v1.Health/Check",
                   S.health_pb.HealthCheckRequest(service="nope").SerializeToString())),
    # -- sealing --
    ("Wrap unsealed", "FAILED_PRECONDITION",
     'Wrap takes plaintext, so it must be sealed in a session (SessionService/OpenSession, then SessionService/Call; libcoffer and cofferctl do this for you)',
     lambda t: svc(t, "Wrap", pb.WrapRequest(key="rk-aes", plaintext=b"x"))),
    ("Unwrap unsealed", "FAILED_PRECONDITION",
     'Unwrap returns plaintext, so it must be sealed in a session (SessionService/OpenSession, then SessionService/Call; libcoffer and cofferctl do this for you)',
     lambda t: svc(t, "Unwrap", pb.UnwrapRequest(key="rk-aes", ciphertext=b"x"))),
    ("GenerateDataKey with plaintext unsealed", "FAILED_PRECONDITION",
     'GenerateDataKey with include_plaintext returns the data key, so it must be sealed in a session (SessionService/OpenSession, then SessionService/Call; libcoffer and cofferctl do this for you)',
     lambda t: svc(t, "GenerateDataKey", pb.GenerateDataKeyRequest(
         key="rk-aes", include_plaintext=True))),
    ("ImportKey unsealed", "FAILED_PRECONDITION",
     'ImportKey carries key material, so it must be sealed in a session (SessionService/OpenSession, then SessionService/Call; libcoffer and cofferctl do this for you)',
     lambda t: adm(t, "ImportKey", pb.ImportKeyRequest(name="imp", type=pb.AES_256,
                                                       material=b"k" * 32))),
    ("CreateApiKey unsealed", "FAILED_PRECONDITION",
     'CreateApiKey returns or takes an API secret, so it must be sealed in a session (SessionService/OpenSession, then SessionService/Call; libcoffer and cofferctl do this for you)',
     lambda t: adm(t, "CreateApiKey", pb.CreateApiKeyRequest(principal="tester"))),
    ("sealed Call outside a session", "UNAUTHENTICATED",
     'session unknown or ended; open a new session',
     lambda t: raw(t.d.service_socket, SS + "Call", pb.SealedCall(
         session_id=b"\x00" * 16, method=KS + "GetKey", record=b"r" * 32).SerializeToString())),
    ("sealed: unknown method", "UNIMPLEMENTED",
     'unknown method /coffer.v1.KeyService/Nope',
     lambda t: sealed_path(t, "service", KS + "Nope")),
    ("sealed: admin method in a service-socket session", "UNIMPLEMENTED",
     '/coffer.v1.AdminService/CreateKey is not served on the service socket',
     lambda t: sealed_path(t, "service", AS + "CreateKey")),
    ("sealed: OpenSession inside a session", "FAILED_PRECONDITION",
     '/coffer.v1.SessionService/OpenSession cannot be called inside a session', lambda t: sealed_path(t, "service", SS + "OpenSession")),
    ("sealed: Call inside a session", "FAILED_PRECONDITION",
     '/coffer.v1.SessionService/Call cannot be called inside a session', lambda t: sealed_path(t, "service", SS + "Call")),
    ("sealed: garbage inner request", "INVALID_ARGUMENT",
     'request is not a valid coffer.v1.GetKeyRequest message: bad field tag at byte 0',
     lambda t: sealed_path(t, "service", KS + "GetKey", b"\xff\xff")),
    # -- idempotency key --
    ("idempotency key with a bad character", "INVALID_ARGUMENT",
     'idempotency-key must be 8..128 characters of A-Z a-z 0-9 . _ : -',
     lambda t: adm(t, "RotateKey", pb.RotateKeyRequest(name=KEY),
                   md=[("idempotency-key", "bad key!")])),
    ("idempotency key too long", "INVALID_ARGUMENT",
     'idempotency-key must be 8..128 characters of A-Z a-z 0-9 . _ : -',
     lambda t: adm(t, "RotateKey", pb.RotateKeyRequest(name=KEY),
                   md=[("idempotency-key", "k" * 200)])),
    ("two idempotency keys (a retry could send either)", "INVALID_ARGUMENT",
     '2 idempotency-key entries; send exactly one',
     lambda t: adm(t, "RotateKey", pb.RotateKeyRequest(name=KEY),
                   md=[("idempotency-key", "first-key-1"), ("idempotency-key", "second-key-1")])),
    ("idempotency key reused for another request", "FAILED_PRECONDITION",
     'idempotency key reused-key-1 was used for another request (/coffer.v1.AdminService/RotateKey); use a new key for a new request',
     lambda t: t.idem_reuse),
    # -- key names --
    ("key name with upper case", "INVALID_ARGUMENT",
     'key name must start with a lower-case letter or digit',
     lambda t: svc(t, "Sign", pb.SignRequest(key="Bad-Name", message=b"m"))),
    ("key name empty", "INVALID_ARGUMENT",
     'key name is empty',
     lambda t: svc(t, "Sign", pb.SignRequest(key="", message=b"m"))),
    ("key name too long", "INVALID_ARGUMENT",
     'key name longer than 128 characters',
     lambda t: svc(t, "Sign", pb.SignRequest(key=NAME129, message=b"m"))),
    ("key name with a slash (sealed)", "INVALID_ARGUMENT",
     'key name character 2 is not one of a-z 0-9 . _ -',
     lambda t: ssvc(t, "Wrap", pb.WrapRequest(key="a/b", plaintext=b"x"))),
    ("CreateKey name with upper case", "INVALID_ARGUMENT",
     'key name must start with a lower-case letter or digit',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name="Bad-Name", type=pb.AES_256))),
    ("GetKey (admin) name too long", "INVALID_ARGUMENT",
     'key name longer than 128 characters',
     lambda t: adm(t, "GetKey", pb.GetKeyRequest(name=NAME129))),
    # -- keys and versions --
    ("unknown key (Sign)", "NOT_FOUND",
     'key no-such-key does not exist',
     lambda t: svc(t, "Sign", pb.SignRequest(key="no-such-key", message=b"m"))),
    ("unknown key (GetKey admin)", "NOT_FOUND",
     'key no-such-key does not exist',
     lambda t: adm(t, "GetKey", pb.GetKeyRequest(name="no-such-key"))),
    ("unknown key (sealed Wrap)", "NOT_FOUND",
     'key no-such-key does not exist',
     lambda t: ssvc(t, "Wrap", pb.WrapRequest(key="no-such-key", plaintext=b"x"))),
    ("Sign with an AES key", "FAILED_PRECONDITION",
     'key rk-aes is a wrap key (aes-256); this operation needs a sign key',
     lambda t: svc(t, "Sign", pb.SignRequest(key="rk-aes", message=b"m"))),
    ("Mac with an EC key", "FAILED_PRECONDITION",
     'key rk-ec is a sign key (ec-p256); this operation needs a mac key',
     lambda t: svc(t, "Mac", pb.MacRequest(key=KEY, data=b"m"))),
    ("Wrap with an HMAC key (sealed)", "FAILED_PRECONDITION",
     'key rk-hmac is a mac key (hmac-sha256); this operation needs a wrap key',
     lambda t: ssvc(t, "Wrap", pb.WrapRequest(key="rk-hmac", plaintext=b"x"))),
    ("GetPublicKey of an AES key", "FAILED_PRECONDITION",
     'key rk-aes is a wrap key (aes-256); this operation needs a sign key',
     lambda t: svc(t, "GetPublicKey", pb.GetPublicKeyRequest(key="rk-aes"))),
    ("SignHttpRequest with an EC key", "FAILED_PRECONDITION",
     'key rk-ec is a sign key (ec-p256); this operation needs a mac key',
     lambda t: svc(t, "SignHttpRequest", pb.SignHttpRequestRequest(
         request=pb.HttpRequestParts(key=KEY, method="GET", path="/",
                                     body_sha256=b"\0" * 32)))),
    ("unknown version", "NOT_FOUND",
     'key rk-ec has no version 9',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, version=9, message=b"m"))),
    ("disabled version", "FAILED_PRECONDITION",
     'key rk-ec version 1 is disabled',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, version=1, message=b"m"))),
    ("Verify without a version", "INVALID_ARGUMENT",
     'version is required: pass the version that Sign returned',
     lambda t: svc(t, "Verify", pb.VerifyRequest(key=KEY, message=b"m", signature=b"s"))),
    ("VerifyMac without a version", "INVALID_ARGUMENT",
     'version is required: pass the version that Mac returned',
     lambda t: svc(t, "VerifyMac", pb.VerifyMacRequest(key="rk-hmac", data=b"m", mac=b"m"))),
    ("message and digest both", "INVALID_ARGUMENT",
     'give either message or digest, not both',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, message=b"m", digest=b"d" * 32))),
    ("unknown hash", "INVALID_ARGUMENT",
     'unknown hash 77',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, message=b"m", hash=77))),
    ("unknown signature scheme", "INVALID_ARGUMENT",
     'unknown signature scheme 77',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, message=b"m", scheme=77))),
    ("digest of the wrong length", "INVALID_ARGUMENT",
     'a sha256 digest is 32 bytes, got 5',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, digest=b"d" * 5, hash=pb.SHA256))),
    ("data key length", "INVALID_ARGUMENT",
     'data key length must be 16, 24 or 32 bytes, not 7',
     lambda t: svc(t, "GenerateDataKey", pb.GenerateDataKeyRequest(key="rk-aes", length=7))),
    ("Unwrap of garbage (sealed)", "INVALID_ARGUMENT",
     'ciphertext of 7 bytes is too short to be a Coffer wrap blob',
     lambda t: ssvc(t, "Unwrap", pb.UnwrapRequest(key="rk-aes", ciphertext=b"garbage"))),
    ("ListKeys page_size", "INVALID_ARGUMENT",
     'page_size 5000 exceeds 1000',
     lambda t: svc(t, "ListKeys", pb.ListKeysRequest(page_size=5000))),
    ("ListKeys page_token", "INVALID_ARGUMENT",
     'page_token is not one this daemon issued',
     lambda t: adm(t, "ListKeys", pb.ListKeysRequest(page_token="Nope!"))),
    ("HTTP parts missing", "INVALID_ARGUMENT",
     'key name is empty',
     lambda t: svc(t, "SignHttpRequest", pb.SignHttpRequestRequest())),
    ("HTTP body_sha256 length", "INVALID_ARGUMENT",
     'body_sha256 must be 32 bytes, not 5',
     lambda t: svc(t, "SignHttpRequest", pb.SignHttpRequestRequest(
         request=pb.HttpRequestParts(key="rk-hmac", method="GET", path="/",
                                     body_sha256=b"\0" * 5)))),
    ("key's own allowed operations", "PERMISSION_DENIED",
     'key rk-signonly does not allow verify (its own limit)',
     lambda t: svc(t, "Verify", pb.VerifyRequest(key="rk-signonly", version=1, message=b"m",
                                                 signature=b"s"))),
    # -- limits --
    ("Sign message above 1 MiB", "RESOURCE_EXHAUSTED",
     'message of 1048577 bytes exceeds the limit of 1048576 bytes',
     lambda t: svc(t, "Sign", pb.SignRequest(key=KEY, message=b"m" * (MB + 1)))),
    ("Mac data above 1 MiB", "RESOURCE_EXHAUSTED",
     'data of 1048577 bytes exceeds the limit of 1048576 bytes',
     lambda t: svc(t, "Mac", pb.MacRequest(key="rk-hmac", data=b"m" * (MB + 1)))),
    ("Verify signature above 512 bytes", "RESOURCE_EXHAUSTED",
     'signature of 513 bytes exceeds the limit of 512 bytes',
     lambda t: svc(t, "Verify", pb.VerifyRequest(key=KEY, version=2, message=b"m",
                                                 signature=b"s" * 513))),
    ("Wrap plaintext above 64 KiB (sealed)", "RESOURCE_EXHAUSTED",
     'plaintext of 65537 bytes exceeds the limit of 65536 bytes',
     lambda t: ssvc(t, "Wrap", pb.WrapRequest(key="rk-aes", plaintext=b"p" * 65537))),
    ("VerifyMac mac above 64 bytes", "RESOURCE_EXHAUSTED",
     'mac of 65 bytes exceeds the limit of 64 bytes',
     lambda t: svc(t, "VerifyMac", pb.VerifyMacRequest(key="rk-hmac", version=2, data=b"m",
                                                       mac=b"m" * 65))),
    ("VerifyMac data above 1 MiB", "RESOURCE_EXHAUSTED",
     'data of 1048577 bytes exceeds the limit of 1048576 bytes',
     lambda t: svc(t, "VerifyMac", pb.VerifyMacRequest(key="rk-hmac", version=2,
                                                       data=b"m" * (MB + 1), mac=b"m" * 32))),
    ("Unwrap ciphertext above the largest blob (sealed)", "RESOURCE_EXHAUSTED",
     'ciphertext of 70000 bytes exceeds the limit of 65569 bytes',
     lambda t: ssvc(t, "Unwrap", pb.UnwrapRequest(key="rk-aes", ciphertext=b"c" * 70000))),
    ("ImportKey material above 512 bytes (sealed)", "RESOURCE_EXHAUSTED",
     'key material of 513 bytes exceeds the limit of 512 bytes',
     lambda t: sadm(t, "ImportKey", pb.ImportKeyRequest(name="imp", type=pb.HMAC_SHA256,
                                                        material=b"k" * 513))),
    ("context with 17 entries", "RESOURCE_EXHAUSTED",
     'context has 17 entries; the limit is 16',
     lambda t: svc(t, "GenerateDataKey", pb.GenerateDataKeyRequest(
         key="rk-aes", context={"k%d" % i: "v" for i in range(17)}))),
    ("context key above 128 bytes", "RESOURCE_EXHAUSTED",
     'a context key is longer than 128 bytes',
     lambda t: svc(t, "GenerateDataKey", pb.GenerateDataKeyRequest(
         key="rk-aes", context={"k" * 129: "v"}))),
    ("context value above 1024 bytes", "RESOURCE_EXHAUSTED",
     'a context value is longer than 1024 bytes',
     lambda t: svc(t, "GenerateDataKey", pb.GenerateDataKeyRequest(
         key="rk-aes", context={"k": "v" * 1025}))),
    ("request above the message limit", "RESOURCE_EXHAUSTED",
     'Received message larger than max (2097164 vs. 1114112)',
     lambda t: raw(t.d.service_socket, KS + "Sign", pb.SignRequest(
         key=KEY, message=b"m" * (2 * MB)).SerializeToString())),
    ("TailAudit count above 1000", "INVALID_ARGUMENT",
     'count is at most 1000',
     lambda t: adm(t, "TailAudit", pb.TailAuditRequest(count=1001))),
    ("ImportKey material too short (sealed)", "INVALID_ARGUMENT",
     'an aes-256 key is 32 bytes, not 5',
     lambda t: sadm(t, "ImportKey", pb.ImportKeyRequest(name="imp", type=pb.AES_256,
                                                        material=b"k" * 5))),
    # -- CreateKey --
    ("CreateKey exists", "ALREADY_EXISTS",
     'key rk-ec already exists',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name=KEY, type=pb.EC_P256))),
    ("CreateKey without a type", "INVALID_ARGUMENT",
     'type is missing or unknown (0)',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name="new-key"))),
    ("CreateKey unknown type", "INVALID_ARGUMENT",
     'type is missing or unknown (99)',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name="new-key", type=99))),
    ("CreateKey operation the type cannot do", "INVALID_ARGUMENT",
     'allowed_operations holds an operation that an aes-256 key cannot do',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name="new-key", type=pb.AES_256,
                                                       allowed_operations=[pb.OP_SIGN]))),
    ("CreateKey rotation period below the minimum", "INVALID_ARGUMENT",
     'rotation period 5 s is outside 3600 s .. 315360000 s ([keys] min_rotation_period .. 10 years)',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name="new-key", type=pb.AES_256,
                                                       rotation_period=5))),
    ("CreateKey exportable", "INVALID_ARGUMENT",
     'exportable keys are not supported: Coffer never exports key material (use '
     'Wrap/GenerateDataKey for data keys); create the key without exportable',
     lambda t: adm(t, "CreateKey", pb.CreateKeyRequest(name="new-key", type=pb.EC_P256,
                                                       exportable=True))),
    # -- lifecycle --
    ("RotateKey unknown key", "NOT_FOUND",
     'key no-such-key does not exist',
     lambda t: adm(t, "RotateKey", pb.RotateKeyRequest(name="no-such-key"))),
    ("disable the primary", "FAILED_PRECONDITION",
     'key rk-ec version 2 is the primary version; make another version primary first, or pass force (--force) to disable it anyway (new operations then fail)',
     lambda t: adm(t, "DisableKeyVersion", pb.KeyVersionRequest(name=KEY, version=2))),
    ("destroy the primary", "FAILED_PRECONDITION",
     'key rk-ec version 2 is the primary version; make another version primary first, or pass force (--force) to destroy it anyway (new operations then fail)',
     lambda t: adm(t, "ScheduleDestroyKeyVersion", pb.KeyVersionRequest(name=KEY, version=2))),
    ("destroy with a grace below the minimum", "INVALID_ARGUMENT",
     'grace period 5 s is outside 86400 s .. 31536000 s ([keys] min_destroy_grace .. 365 days)',
     lambda t: adm(t, "ScheduleDestroyKeyVersion", pb.KeyVersionRequest(
         name=KEY, version=1, grace_seconds=5))),
    ("enable a version scheduled for destruction", "FAILED_PRECONDITION",
     'key rk-hmac version 1 is scheduled for destruction; cancel-destroy restores it',
     lambda t: adm(t, "EnableKeyVersion", pb.KeyVersionRequest(name="rk-hmac", version=1))),
    ("cancel destruction of a version not scheduled", "FAILED_PRECONDITION",
     'key rk-ec version 2 is not scheduled for destruction (it is enabled)',
     lambda t: adm(t, "CancelDestroyKeyVersion", pb.KeyVersionRequest(name=KEY, version=2))),
    ("version 0 in a lifecycle call", "INVALID_ARGUMENT",
     'version is required: the key version to change (GetKey lists them)',
     lambda t: adm(t, "EnableKeyVersion", pb.KeyVersionRequest(name=KEY, version=0))),
    ("SetPrimaryVersion unknown version", "NOT_FOUND",
     'key rk-ec has no version 9',
     lambda t: adm(t, "SetPrimaryVersion", pb.KeyVersionRequest(name=KEY, version=9))),
    ("SetPrimaryVersion to a disabled version", "FAILED_PRECONDITION",
     'key rk-ec version 1 is disabled; only an enabled version can be primary',
     lambda t: adm(t, "SetPrimaryVersion", pb.KeyVersionRequest(name=KEY, version=1))),
    ("minimum above the primary", "FAILED_PRECONDITION",
     'key rk-ec: min_version 3 would exceed the primary version 2; make a newer version primary (or rotate) first',
     lambda t: adm(t, "SetKeyMinimums", pb.SetKeyMinimumsRequest(name=KEY, min_version=3))),
    ("Sign below the minimum version", "FAILED_PRECONDITION",
     "key rk-min version 1 is below the key's minimum version 2 for new operations",
     lambda t: svc(t, "Sign", pb.SignRequest(key="rk-min", version=1, message=b"m"))),
    ("rotation schedule below the minimum", "INVALID_ARGUMENT",
     'rotation period 5 s is outside 3600 s .. 315360000 s ([keys] min_rotation_period .. 10 years)',
     lambda t: adm(t, "SetRotationSchedule", pb.SetRotationScheduleRequest(
         name=KEY, period_seconds=5))),
    # -- principals and grants --
    ("CreatePrincipal exists", "ALREADY_EXISTS",
     'principal tester already exists',
     lambda t: adm(t, "CreatePrincipal", pb.CreatePrincipalRequest(name="tester", uids=[1]))),
    ("CreatePrincipal bad name", "INVALID_ARGUMENT",
     'principal name must be 1..64 of a-z 0-9 . _ -, starting with a letter or digit',
     lambda t: adm(t, "CreatePrincipal", pb.CreatePrincipalRequest(name="Bad Name", uids=[1]))),
    ("CreatePrincipal name too long", "INVALID_ARGUMENT",
     'principal name longer than 64 characters',
     lambda t: adm(t, "CreatePrincipal", pb.CreatePrincipalRequest(name="p" * 65, uids=[1]))),
    ("CreatePrincipal without uid or gid", "INVALID_ARGUMENT",
     'a principal needs at least one uid or gid',
     lambda t: adm(t, "CreatePrincipal", pb.CreatePrincipalRequest(name="empty"))),
    ("GetPrincipal unknown", "NOT_FOUND",
     'no principal ghost',
     lambda t: adm(t, "GetPrincipal", pb.GetPrincipalRequest(name="ghost"))),
    ("GrantPrincipal without a grant", "INVALID_ARGUMENT",
     'grant is required',
     lambda t: adm(t, "GrantPrincipal", pb.GrantRequest(name="tester"))),
    ("GrantPrincipal bad pattern", "INVALID_ARGUMENT",
     'key pattern character 2 is not one of a-z 0-9 . _ - * ?',
     lambda t: adm(t, "GrantPrincipal", pb.GrantRequest(name="tester", grant=pb.Grant(
         key_pattern="a b", operations=[pb.OP_SIGN])))),
    ("GrantPrincipal no operations", "INVALID_ARGUMENT",
     'operations missing or unknown',
     lambda t: adm(t, "GrantPrincipal", pb.GrantRequest(name="tester", grant=pb.Grant(
         key_pattern="x")))),
    ("GrantPrincipal unknown principal", "NOT_FOUND",
     'no principal ghost',
     lambda t: adm(t, "GrantPrincipal", pb.GrantRequest(name="ghost", grant=pb.Grant(
         key_pattern="x", operations=[pb.OP_SIGN])))),
    ("RevokePrincipal grant not held", "NOT_FOUND",
     'principal tester has no grant for zz*',
     lambda t: adm(t, "RevokePrincipal", pb.RevokeRequest(name="tester", key_pattern="zz*"))),
    ("SetRateLimit without a limit", "INVALID_ARGUMENT",
     'limit is required',
     lambda t: adm(t, "SetRateLimit", pb.SetRateLimitRequest(name="tester"))),
    ("SetRateLimit negative rate", "INVALID_ARGUMENT",
     'rate must be 0 (remove) .. 1000000 per second',
     lambda t: adm(t, "SetRateLimit", pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
         per_second=-1, burst=1)))),
    ("SetRateLimit slower than one a day", "INVALID_ARGUMENT",
     'rate must be at least one a day (0.0000116 per second), or 0 to remove the limit',
     lambda t: adm(t, "SetRateLimit", pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
         per_second=1e-7, burst=1)))),
    ("SetRateLimit burst 0", "INVALID_ARGUMENT",
     'burst must be 1 .. 1000000',
     lambda t: adm(t, "SetRateLimit", pb.SetRateLimitRequest(name="tester", limit=pb.RateLimit(
         per_second=1, burst=0)))),
    ("DeletePrincipal unknown", "NOT_FOUND",
     'no principal ghost',
     lambda t: adm(t, "DeletePrincipal", pb.DeletePrincipalRequest(name="ghost"))),
    ("no principal for the uid", "UNAUTHENTICATED",
     'no principal for uid 65533 gid 65533; an administrator adds one with `cofferctl principal create NAME --uid 65533`',
     lambda t: t.stranger["nothing"]),
    ("principal without a grant", "PERMISSION_DENIED",
     'principal limited may not sign with key rk-ec (no grant)',
     lambda t: t.nobody["denied"]),
    ("rate limit", "RESOURCE_EXHAUSTED",
     RX(r'rate limit of principal limited for get-public-key exceeded; retry after \d+ ms'), rate_limited),
    # -- API keys (admin, sealed) --
    ("CreateApiKey unknown principal", "NOT_FOUND",
     'no principal ghost',
     lambda t: sadm(t, "CreateApiKey", pb.CreateApiKeyRequest(principal="ghost"))),
    ("CreateApiKey short secret", "INVALID_ARGUMENT",
     'an imported API secret must be 32..64 bytes, got 5',
     lambda t: sadm(t, "CreateApiKey", pb.CreateApiKeyRequest(principal="tester",
                                                              secret=b"short"))),
    ("RotateApiKeySecret bad id", "INVALID_ARGUMENT",
     'an API key id is "ak_" and 24 lower-case hex digits',
     lambda t: sadm(t, "RotateApiKeySecret", pb.RotateApiKeySecretRequest(id="ak_nope"))),
    ("RotateApiKeySecret unknown id", "NOT_FOUND",
     'no API key ak_00000000000000000000beef',
     lambda t: sadm(t, "RotateApiKeySecret", pb.RotateApiKeySecretRequest(
         id="ak_00000000000000000000beef"))),
    ("RotateApiKeySecret overlap above 90 days", "INVALID_ARGUMENT",
     'overlap_seconds is at most 7776000 (90 days)',
     lambda t: sadm(t, "RotateApiKeySecret", pb.RotateApiKeySecretRequest(
         id=t.other_id, overlap_seconds=91 * 86400))),
    ("RevokeApiKey unknown id", "NOT_FOUND",
     'no API key ak_00000000000000000000beef',
     lambda t: adm(t, "RevokeApiKey", pb.RevokeApiKeyRequest(id="ak_00000000000000000000beef"))),
    # -- the authorization header (calls of principal tester, which has an API key) --
    ("authorization missing", "UNAUTHENTICATED",
     'principal tester has an API key, so every call must carry "authorization: COFFER-HMAC-SHA256 keyId=..., timestamp=..., nonce=..., signature=..." (libcoffer: coffer_set_api_key; cofferctl: --api-key FILE)',
     lambda t: svc(t, "GetKey", pb.GetKeyRequest(name=KEY))),
    ("authorization twice", "UNAUTHENTICATED",
     'malformed authorization: the call carries 2 authorization entries; send exactly one',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=[good_header(t), good_header(t)])),
    ("authorization: x", "UNAUTHENTICATED",
     'malformed authorization: must start with "COFFER-HMAC-SHA256 " (one space)',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), header="x")),
    ("authorization: Bearer", "UNAUTHENTICATED",
     'malformed authorization: must start with "COFFER-HMAC-SHA256 " (one space)',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), header="Bearer abc")),
    ("authorization: label only", "UNAUTHENTICATED",
     'malformed authorization: must start with "COFFER-HMAC-SHA256 " (one space)',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), header=LABEL)),
    ("authorization: fields missing", "UNAUTHENTICATED",
     'malformed authorization: lacks nonce',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=LABEL + " keyId=%s, timestamp=1" % t.key_id)),
    ("authorization: trailing comma", "UNAUTHENTICATED",
     'malformed authorization: ends with a comma or a space',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), header=good_header(t) + ",")),
    ("authorization: field without =", "UNAUTHENTICATED",
     "malformed authorization: a field without '=' (the form is name=value, comma-separated)",
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=LABEL + " keyId, timestamp=1")),
    ("authorization: unknown field", "UNAUTHENTICATED",
     'malformed authorization: unexpected or repeated field "extra" (expected keyId, timestamp, nonce, signature once each)',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=good_header(t) + ", extra=1")),
    ("authorization: bad key id", "UNAUTHENTICATED",
     'malformed authorization: keyId is not an API key id ("ak_" and 24 lower-case hex digits)',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=good_header(t).replace("keyId=ak_", "keyId=AK_"))),
    ("authorization: bad timestamp", "UNAUTHENTICATED",
     'malformed authorization: timestamp must be Unix seconds in decimal',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=good_header(t).replace("timestamp=", "timestamp=-"))),
    ("authorization: nonce charset", "UNAUTHENTICATED",
     'malformed authorization: nonce character 16 is not allowed',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=re.sub(r"nonce=[^,]*", "nonce=" + "a" * 15 + "!",
                                    good_header(t)))),
    ("authorization: nonce too short", "UNAUTHENTICATED",
     'malformed authorization: nonce must be 16..64 characters',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=re.sub(r"nonce=[^,]*", "nonce=short", good_header(t)))),
    ("authorization: signature not hex", "UNAUTHENTICATED",
     'malformed authorization: signature must be 64 hex digits',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      header=good_header(t)[:-1] + "g")),
    ("authorization: signature too short", "UNAUTHENTICATED",
     'malformed authorization: signature must be 64 hex digits',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), header=good_header(t)[:-2])),
    ("authorization: above 512 bytes", "UNAUTHENTICATED",
     'malformed authorization: longer than 512 bytes',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), header=LABEL + " " + "x" * 600)),
    ("authorization: expired", "UNAUTHENTICATED",
     # (1001 if a second turns between reading the clock here and in cofferd)
     RX(r'expired: the timestamp is (1000|1001) s old and the window is 300 s; sign each '
        r'call when it is sent'),
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), ts=int(time.time()) - 1000)),
    ("authorization: clock skew", "UNAUTHENTICATED",
     RX(r"clock skew: the timestamp is (999|1000|1001) s ahead of the daemon's clock \(at most 1 s is "
        r"accepted\); check the caller's clock"),
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), ts=int(time.time()) + 1000)),
    ("authorization: unknown key", "UNAUTHENTICATED",
     'unknown API key ak_00000000000000000000beef',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY),
                      key_id="ak_00000000000000000000beef")),
    ("authorization: revoked key", "UNAUTHENTICATED",
     'API key {revoked_id} was revoked',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), key_id=t.revoked_id,
                      secret=t.revoked_secret)),
    ("authorization: another principal's key", "UNAUTHENTICATED",
     "API key {other_id} is not a key of principal tester (the caller's uid/gid)",
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), key_id=t.other_id,
                      secret=t.other_secret)),
    ("authorization: bad signature", "UNAUTHENTICATED",
     'bad signature: it matches no live secret of API key {key_id} (a rotated-out secret stops at its deadline); check the secret and the canonical string',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), secret=b"\x01" * 32)),
    ("authorization: signed for another method", "UNAUTHENTICATED",
     'bad signature: it matches no live secret of API key {key_id} (a rotated-out secret stops at its deadline); check the secret and the canonical string',
     lambda t: signed(t, "GetKey", pb.GetKeyRequest(name=KEY), path=KS + "ListKeys")),
    ("authorization: replayed nonce", "UNAUTHENTICATED",
     'replayed nonce: nonce 0123456789abcdef0123456789abcdef was already used with API key {key_id}; sign every call with a fresh nonce', replayed),
    # -- cofferd's command line --
    ("cofferd --workers abc", "exit 2",
     LOG('configuration: --workers: "abc" is not a number in 1..64'),
     lambda t: cofferd_stderr(t.d, "--workers", "abc")),
    ("cofferd --workers 0", "exit 2",
     LOG('configuration: --workers: "0" is not a number in 1..64'),
     lambda t: cofferd_stderr(t.d, "--workers", "0")),
    ("cofferd --log-level loud", "exit 2",
     LOG('configuration: --log-level: log_level must be error, warn, info or debug'),
     lambda t: cofferd_stderr(t.d, "--log-level", "loud")),
    ("cofferd unexpected argument", "exit 2",
     'cofferd: unexpected argument "extra"',
     lambda t: cofferd_stderr(t.d, "extra")),
    ("cofferd unknown option", "exit 2",
     RX(r".*/cofferd: unrecognized option '--nope'"),
     lambda t: cofferd_stderr(t.d, "--nope")),
    ("cofferd missing configuration file", "exit 2",
     LOG('configuration: cannot open configuration file /nonexistent/cofferd.conf: '
         'No such file or directory'),
     lambda t: cofferd_stderr(t.d, "-c", "/nonexistent/cofferd.conf")),
    ("cofferd --check-config, a setting given twice", "exit 2",
     RX(LOGLINE + re.escape("configuration: ") + r"/.*/twice\.conf:3: " +
        re.escape("[daemon] workers is set again (first on line 2): keep one")),
     lambda t: cofferd_stderr(t.d, "--check-config", "-c", conf_file(
         t, "twice.conf", "[daemon]\nworkers = 2\nworkers = 3\n"))),
    ("cofferd --check-config, a comment after a value", "exit 2",
     RX(LOGLINE + re.escape("configuration: ") + r"/.*/inline\.conf:2: " +
        re.escape("[daemon] state_dir: a ';' after a blank in the value: write a comment "
                  "on a line of its own")),
     lambda t: cofferd_stderr(t.d, "--check-config", "-c", conf_file(
         t, "inline.conf", "[daemon]\nstate_dir = /var/lib/coffer ; prod\n"))),
    ("cofferd --check-config, a file that loads", "exit 0", "",
     lambda t: cofferd_stderr(t.d, "--check-config")),
]


def conf_file(t, name, text):
    """A configuration file in the test daemon's directory; its path."""
    path = os.path.join(t.d.dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def can_switch_uid():
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


class RefusalText(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = cls.d = CofferDaemon(config={
            "service": {"mode": "0666", "allow_uids": "0 %d %d" % (NOBODY, STRANGER)}})
        d.make_traversable()
        d.start()
        a = d.admin_stub()

        def call(method, req, md=()):
            return getattr(a, method)(req, metadata=list(md), timeout=TIMEOUT)

        for name, typ, ops in (("rk-ec", pb.EC_P256, []), ("rk-aes", pb.AES_256, []),
                               ("rk-hmac", pb.HMAC_SHA256, []), ("rk-min", pb.EC_P256, []),
                               ("rk-signonly", pb.EC_P256, [pb.OP_SIGN])):
            call("CreateKey", pb.CreateKeyRequest(name=name, type=typ, allowed_operations=ops))
        for name in ("rk-ec", "rk-hmac", "rk-min"):
            call("RotateKey", pb.RotateKeyRequest(name=name))      # version 2, primary
        call("DisableKeyVersion", pb.KeyVersionRequest(name="rk-ec", version=1))
        call("DisableKeyVersion", pb.KeyVersionRequest(name="rk-hmac", version=1))
        call("ScheduleDestroyKeyVersion", pb.KeyVersionRequest(name="rk-hmac", version=1))
        call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="rk-min", min_version=2))
        # An idempotency key reused for another request.
        call("RotateKey", pb.RotateKeyRequest(name="rk-aes"), md=[("idempotency-key", "reused-key-1")])
        cls.idem_reuse = adm(cls, "RotateKey", pb.RotateKeyRequest(name="rk-min"),
                             md=[("idempotency-key", "reused-key-1")])
        cls.sealed = {"service": d.sealed_stub(),
                      "admin": d.sealed_stub(kind="admin", service="AdminService")}
        # Another principal with an API key (not the caller's).
        call("CreatePrincipal", pb.CreatePrincipalRequest(name="other", uids=[4242]))
        r = cls.sealed["admin"].CreateApiKey(pb.CreateApiKeyRequest(principal="other"),
                                             timeout=TIMEOUT)
        cls.other_id, cls.other_secret = r.key.id, r.secret
        # Other uids: one with a narrow principal and a rate limit, one with none.
        cls.nobody, cls.stranger = {}, {}
        if can_switch_uid():
            call("CreatePrincipal", pb.CreatePrincipalRequest(name="limited", uids=[NOBODY]))
            call("GrantPrincipal", pb.GrantRequest(name="limited", grant=pb.Grant(
                key_pattern="rk-ec", operations=[pb.OP_GET_PUBLIC_KEY])))
            call("SetRateLimit", pb.SetRateLimitRequest(name="limited", limit=pb.RateLimit(
                operation=pb.OP_GET_PUBLIC_KEY, per_second=0.001, burst=2)))
            get = (KS + "GetKey", pb.GetKeyRequest(name="rk-ec"))
            res = as_uid(d, NOBODY, [get, get, get,
                                     (KS + "Sign", pb.SignRequest(key="rk-ec", message=b"m"))])
            assert res[0][0] == "OK" and res[1][0] == "OK", res
            cls.nobody = {"ratelimit": res[2], "denied": res[3]}
            cls.stranger = {"nothing": as_uid(d, STRANGER, [get])[0]}
        cls.api_ready = False

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    @classmethod
    def setup_api_keys(cls):
        """From here on the caller's principal must sign its KeyService calls."""
        sa = cls.sealed["admin"]
        r = sa.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        cls.key_id, cls.secret = r.key.id, r.secret
        r = sa.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=TIMEOUT)
        cls.revoked_id, cls.revoked_secret = r.key.id, r.secret
        sa.RevokeApiKey(pb.RevokeApiKeyRequest(id=cls.revoked_id), timeout=TIMEOUT)
        cls.api_ready = True

    def provoke(self, row):
        rid, _, _, fn = row
        if rid.startswith("authorization") and not self.api_ready:
            self.setup_api_keys()
        if (rid in ("no principal for the uid", "principal without a grant", "rate limit")
                and not can_switch_uid()):
            return None
        return fn(self)

    def test_every_refusal_text(self):
        if not DUMP:
            check_rows(self, ROWS)


def check_rows(tc, rows):
    """Provoke each row in order (tc.provoke) and check its status and text."""
    def expected(want):
        for k in ("key_id", "other_id", "revoked_id"):   # this run's API key ids
            if hasattr(tc, k):
                want = type(want)(want.replace("{%s}" % k, getattr(tc, k)))
        return want

    # Another refusal's whole text inside this one is a stale or doubled detail.
    others = {expected(w) for _, _, w, _ in rows if not isinstance(w, RX) and len(w) >= 16}
    previous = None
    for row in rows:
        rid, code, want, _ = row
        with tc.subTest(row=rid):
            got = tc.provoke(row)
            if got is None:
                tc.skipTest("needs root and setpriv")   # only this row
            status, text, trailers = got
            want = expected(want)
            tc.assertEqual(status, code, "%s: %r" % (rid, text))
            tc.assertTrue(text.isprintable(), "%s: not printable: %r" % (rid, text))
            tc.assertNotIn("\ufffd", text, rid)
            text.encode("utf-8")
            if isinstance(want, RX):
                tc.assertRegex(text, "^(?:%s)$" % want, rid)
            else:
                tc.assertEqual(text, want, rid)
            for other in others - {want}:
                # "X; more" or "X: more" extends X as a sentence; anywhere else,
                # or twice, it is another refusal's detail.
                rest = text[len(other):] if text.startswith(other) else None
                if rest is not None and rest[:1] in (";", ":") and other not in rest:
                    continue
                tc.assertNotIn(other, text, "%s holds another refusal's text" % rid)
            if previous and previous != text:
                tc.assertNotIn(previous, text, "%s carries the previous refusal's text" % rid)
            if rid == "rate limit":
                tc.assertTrue(1 <= int(trailers.get("retry-after-ms", "0")), trailers)
            previous = text


# A daemon that requires sealing and signed calls of everybody.
STRICT_ROWS = [
    ("require_sealed: unsealed KeyService call", "FAILED_PRECONDITION",
     'this daemon requires every KeyService call to be sealed in a session '
     '(session.require_sealed)',
     lambda t: svc(t, "GetKey", pb.GetKeyRequest(name=KEY))),
    ("require_api_key: a session of a principal without an API key", "outer UNAUTHENTICATED",
     'this daemon requires every caller to sign its calls with an API key '
     '(requests.require_api_key) and principal tester has none: cofferctl principal add-key '
     'tester',
     lambda t: ssvc(t, "GetKey", pb.GetKeyRequest(name=KEY))),
    ("require_sealed: Health is still served unsealed", "OK", "",
     lambda t: raw(t.d.service_socket, "/grpc.health.v1.Health/Check",
                   S.health_pb.HealthCheckRequest().SerializeToString())),
]


class StrictRefusalText(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"session": {"require_sealed": "true"},
                                     "requests": {"require_api_key": "true"}})
        try:
            cls.d.start()
        except Exception:
            cls.d.cleanup()
            raise
        cls.sealed = {"service": cls.d.sealed_stub()}

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def provoke(self, row):
        return row[3](self)

    def test_every_refusal_text(self):
        if not DUMP:
            check_rows(self, STRICT_ROWS)


def dump():
    """Print every row with the text the daemon answers now."""
    for t, rows in ((RefusalText, ROWS), (StrictRefusalText, STRICT_ROWS)):
        t.setUpClass()
        try:
            for row in rows:
                got = t.provoke(t(), row)
                print("    (%r, %r, %r)," % (row[0], got and got[0], got and got[1]))
        finally:
            t.tearDownClass()


if __name__ == "__main__":
    if DUMP:
        dump()
    else:
        unittest.main(verbosity=2)
