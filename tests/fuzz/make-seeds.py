#!/usr/bin/python3
"""Write the seed corpora of the fuzz targets: tests/fuzz/corpus/<target>/.

Small valid inputs, in each target's input format (see the comment at the top
of tests/fuzz/fuzz_<target>.c): real authorization headers, request-signing
fields, wrap contexts and plaintexts, session records, the shipped
configuration file, one serialized request per dispatcher method (built with
the Python stubs of tests/integration/daemon_fixture.py), and audit lines written by the
daemon's own audit code: fuzz_dispatch is run over the dispatcher seeds with
its token kept, and its trail is read back.

    /usr/bin/python3 tests/fuzz/make-seeds.py [BUILD_DIR]   (default build-fuzz)

Without a built fuzz_dispatch the audit seeds are left as they are.
"""
import hashlib
import hmac
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from daemon_fixture import stubs  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")
KEY_ID = "ak_0123456789abcdef01234567"
NONCE = "n0nce-0123456789_abc"


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in seeds:
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def callauth():
    sig = hashlib.sha256(b"x").hexdigest()
    h = "COFFER-HMAC-SHA256 keyId=%s, timestamp=1764900000, nonce=%s, signature=%s" % (
        KEY_ID, NONCE, sig)
    return [("valid", h),
            ("nospace", h.replace(", ", ",")),
            ("reordered", "COFFER-HMAC-SHA256 signature=%s, nonce=%s, keyId=%s, "
             "timestamp=1" % (sig.upper(), NONCE, KEY_ID)),
            ("repeated", h + ", nonce=" + NONCE),
            ("short", "COFFER-HMAC-SHA256 keyId=ak_")]


def reqsign():
    def f(*parts):
        return "\n".join(parts)
    return [("get", f("GET", "/v1/orders", "b=2&a=1&a", "", "1764900000", NONCE, "rest-key")),
            ("post", f("POST", "/v1/orders/42", "", '{"qty":1}', "1764900000", NONCE, "k")),
            ("escapes", f("PUT", "/a%20b", "x=%41%2b+&y=%7E~&=&&z", "body", "0", NONCE, "k")),
            ("bad-escape", f("GET", "/", "a=%G1&b=%4", "", "1", NONCE, "k"))]


def envelope():
    def env(mode, pairs, flip, rest):
        out = bytes([mode, len(pairs), flip])
        for k, v in pairs:
            out += bytes([len(k)]) + k + bytes([len(v)]) + v
        return out + rest
    blob = b"\x01\x00\x00\x00\x01" + b"\x00" * 12 + b"ciphertext" + b"\x00" * 16
    return [("blob", env(0, [], 0, blob)),
            ("blob-ctx", env(0, [(b"tenant", b"acme")], 0, blob)),
            ("seal", env(1, [], 0, b"a secret")),
            ("seal-ctx", env(1, [(b"a", b"1"), (b"b", b"2")], 0, b"secret")),
            ("seal-flip", env(3, [(b"tenant", b"acme")], 0x11, b"secret")),
            ("seal-dup", env(1, [(b"a", b"1"), (b"a", b"2")], 0, b"secret"))]


def session():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    hello = (struct.pack("<I", 1) + b"\x01" * 32 + b"\x02" * 32 + b"\x03" * 16 +
             b"\x04" * 32 + b"\x05" * 32 + struct.pack("<IIIQQ", 1000, 1000, 3600, 1 << 20,
                                                       1 << 30))
    method = b"/coffer.v1.KeyService/Sign"
    return [("transcript", b"\x00" + hello + b"\x06tester" + struct.pack(">H", len(spki)) +
             spki + b"\x30\x06\x02\x01\x01\x02\x01\x01"),
            ("pin", b"\x01" + struct.pack(">H", len(spki)) + spki + b"\x30\x44" + b"\x00" * 68),
            ("record", b"\x02\x01" + struct.pack("<Q", 0) + bytes([len(method)]) + method +
             b"\x00" * 40),
            ("roundtrip", b"\x03\x00\x00\x00" + struct.pack("<Q", 7) + bytes([len(method)]) +
             method + b"inner request"),
            ("roundtrip-tamper", b"\x43\x00\x05\x00" + struct.pack("<Q", 7) +
             bytes([len(method)]) + method + b"inner request"),
            ("derive", b"\x04" + b"\x09" + b"\x00" * 31 + b"\x33" * 32),
            ("derive-low-order", b"\x04" + b"\x00" * 64)]


def config():
    with open(os.path.join(ROOT, "deploy", "cofferd.conf.example")) as f:
        example = f.read()
    uncommented = "\n".join(l[1:] if l.startswith(";") and "=" in l else l
                            for l in example.splitlines()) + "\n"
    return [("example", example), ("uncommented", uncommented),
            ("small", "[token]\nuri = pkcs11:token=coffer\n[service]\nallow_uids = 0,1000\n"
             "allow_gids = 0\n[audit]\nfailure = open\n"),
            ("bad", "[nosuch]\nx = 1\n[session]\nlifetime = -1\n")]


# ---- the dispatcher: the method table in the order of dispatch_new() ----

def methods(s):
    out = []
    for svc in ("KeyService", "AdminService", "SessionService"):
        d = s.pb.DESCRIPTOR.services_by_name[svc]
        out += [(svc, m) for m in d.methods]
    out += [("Health", m) for m in s.health_pb.DESCRIPTOR.services_by_name["Health"].methods]
    return out


def requests(s):
    """(service, method) -> a list of valid request messages."""
    pb = s.pb
    parts = pb.HttpRequestParts(key="fz-hmac256", method="GET", path="/v1/orders",
                                canonical_query="a=1&b=2", body_sha256=hashlib.sha256(b"").digest(),
                                timestamp=0, nonce="")
    signed = pb.HttpRequestParts(key="fz-hmac256", method="POST", path="/v1/x",
                                 canonical_query="", body_sha256=hashlib.sha256(b"b").digest(),
                                 timestamp=1764900000, nonce=NONCE)
    ctx = {"tenant": "acme"}
    R = {
        "Sign": [pb.SignRequest(key=k, message=b"hello") for k in
                 ("fz-ec256", "fz-ec384", "fz-ed25519", "fz-rsa2048")] +
                [pb.SignRequest(key="fz-ec256", digest=hashlib.sha256(b"m").digest())],
        "Verify": [pb.VerifyRequest(key="fz-ec256", message=b"hello", signature=b"\x30\x06")],
        "Mac": [pb.MacRequest(key=k, data=b"data") for k in
                ("fz-hmac256", "fz-hmac384", "fz-hmac512")],
        "VerifyMac": [pb.VerifyMacRequest(key="fz-hmac256", data=b"data", mac=b"\x00" * 32)],
        "Wrap": [pb.WrapRequest(key="fz-aes", plaintext=b"secret", context=ctx)],
        "Unwrap": [pb.UnwrapRequest(key="fz-aes", ciphertext=b"\x01\x00\x00\x00\x01" +
                                    b"\x00" * 40, context=ctx)],
        "Rewrap": [pb.RewrapRequest(key="fz-aes", ciphertext=b"\x01\x00\x00\x00\x01" +
                                    b"\x00" * 40)],
        "GenerateDataKey": [pb.GenerateDataKeyRequest(key="fz-aes", length=32, context=ctx,
                                                      include_plaintext=True)],
        "GetPublicKey": [pb.GetPublicKeyRequest(key="fz-ed25519")],
        "GetKey": [pb.GetKeyRequest(name="fz-aes-export")],
        "ListKeys": [pb.ListKeysRequest(page_size=2), pb.ListKeysRequest(page_token="fz-ec")],
        "VerifyRequestSignature": [pb.VerifyRequestSignatureRequest(
            request=signed, signature=hashlib.sha256(b"s").hexdigest())],
        "SignHttpRequest": [pb.SignHttpRequestRequest(request=parts)],
        "SignBatch": [pb.SignBatchRequest(key="fz-ec256", items=[
            pb.SignBatchItem(message=b"a"), pb.SignBatchItem(digest=hashlib.sha256(b"b").digest()),
            pb.SignBatchItem(message=b"c", digest=b"d")])],
        "VerifyBatch": [pb.VerifyBatchRequest(key="fz-ec256", version=1, items=[
            pb.VerifyBatchItem(message=b"a", signature=b"\x30\x06"),
            pb.VerifyBatchItem(digest=b"\x00" * 32, signature=b"")])],
        "MacBatch": [pb.MacBatchRequest(key="fz-hmac256", items=[
            pb.MacBatchItem(data=b"x"), pb.MacBatchItem(data=b"")])],
        "VerifyMacBatch": [pb.VerifyMacBatchRequest(key="fz-hmac256", version=1, items=[
            pb.VerifyMacBatchItem(data=b"x", mac=b"\x00" * 32),
            pb.VerifyMacBatchItem(data=b"y", mac=b"\x00" * 65)])],
        "CreateKey": [pb.CreateKeyRequest(name="fz-new", type=pb.EC_P256),
                      pb.CreateKeyRequest(name="fz-new-aes", type=pb.AES_256, exportable=True,
                                          rotation_period=86400)],
        "ImportKey": [pb.ImportKeyRequest(name="fz-imported", type=pb.HMAC_SHA256,
                                          material=b"k" * 32)],
        "RotateKey": [pb.RotateKeyRequest(name="fz-hmac256")],
        "SetPrimaryVersion": [pb.KeyVersionRequest(name="fz-ec256", version=1)],
        "EnableKeyVersion": [pb.KeyVersionRequest(name="fz-ec256", version=1)],
        "DisableKeyVersion": [pb.KeyVersionRequest(name="fz-ec384", version=2)],
        "ScheduleDestroyKeyVersion": [pb.KeyVersionRequest(name="fz-ec384", version=1,
                                                           grace_seconds=86400)],
        "CancelDestroyKeyVersion": [pb.KeyVersionRequest(name="fz-ec384", version=1)],
        "SetKeyMinimums": [pb.SetKeyMinimumsRequest(name="fz-hmac256", min_version=1,
                                                    keep_last=2)],
        "TrimKey": [pb.TrimKeyRequest(name="fz-hmac256", grace_seconds=86400)],
        "SetRotationSchedule": [pb.SetRotationScheduleRequest(name="fz-aes",
                                                              period_seconds=86400)],
        "CreatePrincipal": [pb.CreatePrincipalRequest(name="svc", uids=[4242], gids=[4243])],
        "GetPrincipal": [pb.GetPrincipalRequest(name="fuzzer")],
        "ListPrincipals": [pb.ListPrincipalsRequest()],
        "GrantPrincipal": [pb.GrantRequest(name="fuzzer", grant=pb.Grant(
            key_pattern="fz-*", operations=[pb.OP_SIGN, pb.OP_WRAP]))],
        "RevokePrincipal": [pb.RevokeRequest(name="fuzzer", key_pattern="*",
                                             operations=[pb.OP_MAC])],
        "SetRateLimit": [pb.SetRateLimitRequest(name="fuzzer", limit=pb.RateLimit(
            operation=pb.OP_SIGN, per_second=1e6, burst=1000))],
        "DeletePrincipal": [pb.DeletePrincipalRequest(name="svc")],
        "CreateApiKey": [pb.CreateApiKeyRequest(principal="fuzzer")],
        "RotateApiKeySecret": [pb.RotateApiKeySecretRequest(id=KEY_ID, overlap_seconds=60)],
        "RevokeApiKey": [pb.RevokeApiKeyRequest(id=KEY_ID)],
        "SetPrincipalAuth": [pb.SetPrincipalAuthRequest(name="fuzzer", require_api_key=False)],
        "ListApiKeys": [pb.ListApiKeysRequest(principal="fuzzer")],
        "TailAudit": [pb.TailAuditRequest(count=5)],
        "VerifyAudit": [pb.VerifyAuditRequest()],
        "GetTokenInfo": [pb.GetTokenInfoRequest()],
        "GetIdentity": [pb.GetIdentityRequest()],
        "OpenSession": [pb.OpenSessionRequest(version=1, client_ephemeral=b"\x09" + b"\x00" * 31,
                                              client_random=b"\x07" * 32)],
        "Call": [pb.SealedCall(session_id=b"\x00" * 16, sequence=0,
                               method="/coffer.v1.KeyService/Sign", record=b"\x00" * 32)],
        "CloseSession": [pb.CloseSessionRequest()],
        "Check": [s.health_pb.HealthCheckRequest(service="")],
    }
    return R


ADMIN, SEALED, AUTHZ, IDEM = 0x01, 0x02, 0x04, 0x08


def dispatch(s):
    R = requests(s)
    seeds = []
    authz = ("COFFER-HMAC-SHA256 keyId=%s, timestamp=1764900000, nonce=%s, signature=%s" % (
        KEY_ID, NONCE, "0" * 64)).encode()
    for i, (svc, m) in enumerate(methods(s)):
        for j, msg in enumerate(R[m.name]):
            body = msg.SerializeToString()
            name = "%02d-%s-%s-%d" % (i, svc, m.name, j)
            if svc == "AdminService":
                seeds.append((name, bytes([i, ADMIN]) + body))
                if j == 0 and m.name.startswith("Create"):
                    seeds.append((name + "-idem", bytes([i, ADMIN | IDEM, 12]) +
                                  b"fuzz-idem-01" + body))
                continue
            seeds.append((name, bytes([i, 0]) + body))
            if svc == "KeyService":
                seeds.append((name + "-sealed", bytes([i, SEALED]) + body))
                if j == 0:
                    seeds.append((name + "-authz", bytes([i, AUTHZ, len(authz)]) + authz +
                                  body))
            elif m.name == "CloseSession":
                seeds.append((name + "-sealed", bytes([i, SEALED]) + body))
    return seeds


def audit_lines(build, dispatch_dir):
    """Run fuzz_dispatch over the dispatcher seeds, keep its token, read the trail."""
    exe = os.path.join(build, "tests", "fuzz", "fuzz_dispatch")
    if not os.access(exe, os.X_OK):
        print("make-seeds: no %s: audit seeds left as they are" % exe)
        return None
    tmp = tempfile.mkdtemp(prefix="coffer-seeds-")
    try:
        env = dict(os.environ, TMPDIR=tmp, COFFER_TEST_KEEP="1",
                   ASAN_OPTIONS="detect_leaks=0")
        files = sorted(os.path.join(dispatch_dir, f) for f in os.listdir(dispatch_dir))
        subprocess.run([exe] + files, env=env, check=True, capture_output=True)
        for root, _, names in os.walk(tmp):
            for n in names:
                if n.startswith("audit") and n.endswith(".log"):
                    with open(os.path.join(root, n), "rb") as f:
                        return f.read()
        raise SystemExit("make-seeds: fuzz_dispatch wrote no audit trail under " + tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def audit(trail):
    lines = trail.split(b"\n")[:-1]
    unsigned = []
    for l in lines:
        body = l[:l.rindex(b',"chain":"')]
        k = body.rfind(b',"sig":"')
        if k >= 0:
            body = body[:k] + b',"sig":""'
        unsigned.append(body + b',"chain":"' + b"0" * 64 + b'"}')
    first = b"\n".join(lines[:8]) + b"\n"
    chain = lines[3][-66:-2]
    return [("trail", b"\x00" + trail),
            ("trail-head", b"\x00" + first),
            ("trail-resigned", bytes([0x01 | 0x02 | 0x04 | 0x10]) + b"\n".join(unsigned) + b"\n"),
            ("trail-exact", bytes([0x01 | 0x02 | 0x04 | 0x08 | 0x10]) +
             b"\n".join(unsigned[:6]) + b"\n"),
            ("trail-anchor-text", bytes([0x80]) + b"4:" + chain + b"\n" + first),
            ("trail-torn", bytes([0x01 | 0x04 | 0x40]) + b"\n".join(unsigned) + b"\n" +
             lines[-1][:30]),
            ("hmac-seal", bytes([0x01 | 0x02 | 0x20]) + b'{"seq":1,"event":"seal","seal":""'
             b',"chain":"' + b"0" * 64 + b'"}\n')]


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build-fuzz")
    s = stubs()
    write("callauth", callauth())
    write("reqsign", reqsign())
    write("envelope", envelope())
    write("session", session())
    write("config", config())
    write("dispatch", dispatch(s))
    trail = audit_lines(build, os.path.join(CORPUS, "dispatch"))
    if trail is not None:
        write("audit", audit(trail))
    for t in sorted(os.listdir(CORPUS)):
        print("make-seeds: %-9s %d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))


if __name__ == "__main__":
    main()
