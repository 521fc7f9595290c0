#!/usr/bin/python3
"""cofferd on a TPM 2.0 token: tpm2-pkcs11 on swtpm behind tpm2-abrmd
(deploy/init-tpm-token.sh), end to end through cofferctl (libcoffer) and gRPC.

What the TPM does (EC P-256/P-384, RSA-2048/3072 signing keys, the sealed
session's identity, the audit seal) works: signatures verify with openssl,
rotation keeps old versions verifying, a sealed session signs, the audit trail
verifies (by the daemon and offline). What it cannot do (Ed25519, RSA-4096,
HMAC, AES-GCM wrapping, imported secrets, API keys) is refused with
FAILED_PRECONDITION and a text naming the missing mechanism, checked exactly.
Without HMAC keys there is no idempotency fingerprint key: cofferd says so at
start, a request carrying a secret is refused its idempotency key (text
checked), and one without a secret still happens once.

Skipped (exit 77, which CTest shows as "Skipped") with the reason when swtpm,
tpm2-abrmd or tpm2-pkcs11 are not installed.
"""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import grpc

from daemon_fixture import INIT_TPM_TOKEN, CofferDaemon, Ctl, SealedRpcError, stubs, tpm_main

pb = stubs().pb

NO_SECRET = ("the token makes no secret keys (C_GenerateKey of a CKM_AES_KEY_GEN key: "
             "CKR_FUNCTION_NOT_SUPPORTED)")
# (key type, the exact refusal of CreateKey)
REFUSED = [
    ("ed25519", "this token cannot generate ed25519 keys: the token has no "
                "CKM_EC_EDWARDS_KEY_PAIR_GEN"),
    ("rsa-4096", "this token cannot generate rsa-4096 keys: the token's "
                 "CKM_RSA_PKCS_KEY_PAIR_GEN takes keys of 1024..3072, not 4096 bits"),
    ("hmac-sha256", "this token cannot generate hmac-sha256 keys: the token has no "
                    "CKM_GENERIC_SECRET_KEY_GEN"),
    ("hmac-sha512", "this token cannot generate hmac-sha512 keys: the token has no "
                    "CKM_GENERIC_SECRET_KEY_GEN"),
    ("aes-256", "this token cannot generate aes-256 keys: the token has no CKM_AES_GCM"),
]
API_KEYS = ("API keys are not available on this token: each secret is an HMAC-SHA256 key "
            "inside it, and this token cannot import hmac-sha256 keys: " + NO_SECRET)


def openssl_verify(pem, sig, msg, tmp, hash_="sha256", pss=False):
    paths = {}
    for name, data in (("pub.pem", pem), ("sig", sig), ("msg", msg)):
        paths[name] = os.path.join(tmp, name)
        with open(paths[name], "wb") as f:
            f.write(data)
    cmd = ["openssl", "dgst", "-" + hash_, "-verify", paths["pub.pem"]]
    if pss:
        cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
    return subprocess.run(cmd + ["-signature", paths["sig"], paths["msg"]],
                          capture_output=True, text=True)


class TpmToken(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(token="tpm")
        try:
            cls.d.start()
            cls.ctl = Ctl(cls.d)
        except Exception:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def create(self, name, type_):
        r = self.ctl("--json", "key", "create", name, "--type", type_)
        return json.loads(r.stdout)

    def test_token_info(self):
        r = self.ctl("--json", "token", "info")
        info = json.loads(r.stdout)
        self.assertEqual(info["label"], "coffer")
        self.assertTrue(info["module"].endswith("libtpm2_pkcs11.so"))
        self.assertFalse(info["session_copies"])   # no C_CopyObject in tpm2-pkcs11
        types = {t["type"]: t for t in info["key_types"]}
        self.assertEqual(len(types), 10)
        for t in ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072"):
            self.assertEqual((types[t]["generate"], types[t]["use"], types[t]["missing"]),
                             (True, True, ""), t)
        for t, text in REFUSED:
            self.assertFalse(types[t]["generate"], t)
            self.assertEqual(types[t]["missing"], text.split(" keys: ", 1)[1], t)
        for t in ("hmac-sha256", "aes-256"):
            self.assertFalse(types[t]["import"], t)
        self.assertIn(API_KEYS, info["unavailable"])
        self.assertIn("Wrap, Unwrap, Rewrap and GenerateDataKey (aes-256 keys): the token has "
                      "no CKM_AES_GCM", info["unavailable"])
        # The table for people.
        r = self.ctl("token", "info")
        self.assertIn("ed25519      no       -      no   the token has no "
                      "CKM_EC_EDWARDS_KEY_PAIR_GEN\n", r.stdout.decode())

    def test_sign_verify_with_openssl(self):
        for name, type_, hash_, pss in (("tp256", "ec-p256", "sha256", False),
                                         ("tp384", "ec-p384", "sha384", False),
                                         ("trsa2k", "rsa-2048", "sha256", True),
                                         ("trsa3k", "rsa-3072", "sha256", True)):
            with self.subTest(type_):
                k = self.create(name, type_)
                self.assertEqual(k["type"], type_)
                msg = ("message for %s" % name).encode()
                sig = self.ctl("sign", name, data=msg).stdout
                pem = self.ctl("key", "pubkey", name).stdout
                v = openssl_verify(pem, sig, msg, self.d.dir, hash_, pss)
                self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
                self.assertIn("Verified OK", v.stdout)
                sigf = os.path.join(self.d.dir, name + ".sig")
                with open(sigf, "wb") as f:
                    f.write(sig)
                self.ctl("verify", name, "--version", "1", "--sig", sigf, data=msg)
                bad = self.ctl("verify", name, "--version", "1", "--sig", sigf, data=msg + b"!",
                               ok=False)
                self.assertNotEqual(bad.returncode, 0)

    def test_rotate(self):
        self.create("trot", "ec-p256")
        msg = b"before rotation"
        sig1 = os.path.join(self.d.dir, "trot1.sig")
        with open(sig1, "wb") as f:
            f.write(self.ctl("sign", "trot", data=msg).stdout)
        k = json.loads(self.ctl("--json", "key", "rotate", "trot").stdout)
        self.assertEqual(k["primary_version"], 2)
        sig2 = self.ctl("sign", "trot", data=msg).stdout
        pem2 = self.ctl("key", "pubkey", "trot", "--version", "2").stdout
        v = openssl_verify(pem2, sig2, msg, self.d.dir)
        self.assertEqual(v.returncode, 0, v.stderr)
        # Version 1 still verifies what it signed.
        self.ctl("verify", "trot", "--version", "1", "--sig", sig1, data=msg)

    def test_refused_by_capability(self):
        admin = self.d.admin_stub()
        for type_, text in REFUSED:
            with self.subTest(type_):
                r = self.ctl("key", "create", "tno-" + type_, "--type", type_, ok=False)
                self.assertEqual(r.stderr.decode(), "cofferctl: %s\n" % text)
                self.assertNotEqual(r.returncode, 0)
                with self.assertRaises(grpc.RpcError) as e:
                    admin.CreateKey(pb.CreateKeyRequest(
                        name="tno-" + type_, type=getattr(pb, type_.upper().replace("-", "_"))))
                self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
                self.assertEqual(e.exception.details(), text)
        # Nothing was left behind in the registry.
        names = [k.name for k in admin.ListKeys(pb.ListKeysRequest()).keys]
        self.assertFalse([n for n in names if n.startswith("tno-")], names)

    def test_import_and_api_keys_refused(self):
        sealed = self.d.sealed_stub("admin", "AdminService")
        for type_, material in ((pb.HMAC_SHA256, b"k" * 32), (pb.AES_256, b"a" * 32)):
            with self.assertRaises(SealedRpcError) as e:
                sealed.ImportKey(pb.ImportKeyRequest(name="timp", type=type_, material=material))
            self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
            name = "hmac-sha256" if type_ == pb.HMAC_SHA256 else "aes-256"
            self.assertEqual(e.exception.details(),
                             "this token cannot import %s keys: %s" % (
                                 name, NO_SECRET if name == "hmac-sha256"
                                 else "the token has no CKM_AES_GCM"))
        with self.assertRaises(SealedRpcError) as e:
            sealed.CreateApiKey(pb.CreateApiKeyRequest(principal=CofferDaemon.PRINCIPAL))
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(e.exception.details(), API_KEYS)
        r = self.ctl("principal", "add-key", CofferDaemon.PRINCIPAL, ok=False)
        self.assertEqual(r.stderr.decode(), "cofferctl: %s\n" % API_KEYS)

    def test_idempotency_without_fingerprint_key(self):
        self.assertIn("idempotency: this token cannot import hmac-sha256 keys: " + NO_SECRET +
                      "; fingerprints are plain SHA-256 digests, and a call whose request "
                      "carries a secret is refused an idempotency key", self.d.log())
        s = self.d.sealed_stub("admin", "AdminService").open()
        path = "/coffer.v1.AdminService/ImportKey"
        req = pb.ImportKeyRequest(name="tidem", type=pb.HMAC_SHA256, material=b"k" * 32)
        code, message, _ = s.call(path, req.SerializeToString(), timeout=10.0,
                                  metadata=[("idempotency-key", "tpm-import-0001")])
        self.assertEqual((code, message), (
            grpc.StatusCode.FAILED_PRECONDITION.value[0],
            path + " carries a secret and this token has no HMAC key to fingerprint it with "
            "(a digest of a secret is never recorded): send it without idempotency-key"))
        # Without a secret: once, however often it is sent.
        admin = self.d.admin_stub()
        admin.CreateKey(pb.CreateKeyRequest(name="tidem-ec", type=pb.EC_P256))
        for _ in range(2):
            admin.RotateKey(pb.RotateKeyRequest(name="tidem-ec"),
                            metadata=[("idempotency-key", "tpm-rotate-0001")])
        versions = admin.GetKey(pb.GetKeyRequest(name="tidem-ec")).versions
        self.assertEqual([v.version for v in versions], [1, 2])

    def test_sealed_session_signs(self):
        self.create("tsealed", "ec-p256")
        svc = self.d.sealed_stub("service")
        r = svc.Sign(pb.SignRequest(key="tsealed", message=b"sealed"))
        pem = self.ctl("key", "pubkey", "tsealed").stdout
        v = openssl_verify(pem, r.signature, b"sealed", self.d.dir)
        self.assertEqual(v.returncode, 0, v.stderr)
        # The identity the session was opened with is the token's P-256 key.
        ident = self.ctl("identity").stdout.decode()
        self.assertIn("BEGIN PUBLIC KEY", ident)

    def test_zz_audit_trail(self):
        # Last (zz): after every other test's records. Sealed by the token's
        # P-256 audit seal key (coffer.audit-seal).
        r = self.ctl("audit", "verify")
        self.assertRegex(r.stdout.decode(),
                         r"^audit trail intact: \d+ records, [1-9]\d* seals verified")
        pub = os.path.join(self.d.state_dir, "audit-seal.pub")
        r = self.ctl("audit", "verify", "--file", os.path.join(self.d.state_dir, "audit.log"),
                     "--public-key", pub)
        self.assertRegex(r.stdout.decode(), r"^audit trail intact: \d+ records, [1-9]\d* seals "
                         r"verified offline")


class PidFiles(unittest.TestCase):
    """init-tpm-token.sh stops only the programs its pid files stand for: a
    stale pid file whose pid now belongs to another process (here `sleep`)
    is refused with the reason, the process left alone, the file kept."""

    def test_foreign_pid_not_killed(self):
        d = tempfile.mkdtemp(prefix="coffer-pidfile-")
        self.addCleanup(shutil.rmtree, d, True)
        sleeper = subprocess.Popen(["sleep", "100"])
        self.addCleanup(sleeper.wait)
        self.addCleanup(sleeper.kill)
        sleep_exe = os.path.realpath(shutil.which("sleep"))
        for what, name, program in (("--stop", "abrmd.pid", "tpm2-abrmd"),
                                    ("--stop", "dbus.pid", "dbus-daemon"),
                                    ("--stop", "swtpm.pid", "swtpm"),
                                    ("--stop-swtpm", "swtpm.pid", "swtpm")):
            pidfile = os.path.join(d, name)
            with open(pidfile, "w") as f:
                f.write("%d\n" % sleeper.pid)
            r = subprocess.run(["/bin/sh", INIT_TPM_TOKEN, what, d], capture_output=True,
                               text=True, timeout=60)
            expected = ["init-tpm-token.sh: %s names pid %d, which runs %s, not %s: not stopping "
                        "it (remove %s if it is stale)" % (pidfile, sleeper.pid, sleep_exe,
                                                           program, pidfile)]
            if what == "--stop":
                expected.append("init-tpm-token.sh: some of the TPM token processes of %s "
                                "were not stopped" % d)
            self.assertEqual((r.returncode, r.stderr.splitlines()), (1, expected), (what, name))
            self.assertIsNone(sleeper.poll(), "%s %s killed the process" % (what, name))
            self.assertTrue(os.path.exists(pidfile))
            os.unlink(pidfile)
        # A pid file whose process is gone: removed, nothing else happens.
        sleeper.kill()
        sleeper.wait()
        with open(os.path.join(d, "swtpm.pid"), "w") as f:
            f.write("%d\n" % sleeper.pid)
        r = subprocess.run(["/bin/sh", INIT_TPM_TOKEN, "--stop", d], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual((r.returncode, r.stderr),
                         (0, "init-tpm-token.sh: stopped the TPM token processes of %s\n" % d))
        self.assertFalse(os.path.exists(os.path.join(d, "swtpm.pid")))


if __name__ == "__main__":
    tpm_main()
