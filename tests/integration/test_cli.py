#!/usr/bin/python3
"""cofferctl as people use it, against cofferd:

* `rewrap --batch`: blobs wrapped under version 1, after a rotation, are
  moved to the primary version in order, one per line; each still unwraps
  to its plaintext; a blob already current is counted so; a bad line is
  reported by number and written unchanged (exit 1), the output stays whole
  and a second run finishes; the progress line appears with --progress and
  on a terminal (a pty), and not otherwise; --json gives a summary; after
  the job, version 1 can be destroyed and every blob still unwraps;
* `key pubkey --format jwk`: the JWK of EC P-256, P-384, Ed25519 and RSA
  keys is the same key as the PEM, and verifies a signature the daemon made
  (python3-cryptography); kid is "NAME:VERSION";
* every read answers --json with valid JSON;
* the manual page (build/cofferctl.1, written from --help at build time)
  names every command, and groff finds nothing to warn about;
* --help and the manual page give the --idempotency-key format, with the
  daemon's limits; `--grace 0` is refused (it would have meant 7 days);
* `token info --json` on SoftHSM: every key type can be generated and
  used, the secret ones imported, session copies on, nothing unavailable;
* the [admin] comment of deploy/cofferd.conf.example names every
  AdminService method of the proto;
* Sign/Verify with a digest and no hash use the key's default hash (P-256
  and RSA SHA-256, P-384 SHA-384); a digest for Ed25519 is refused;
* `request sign` then `request verify`: valid once, then "invalid:
  replayed" (exit 1); a tampered path or body: "invalid: bad-signature";
  with a known secret the signature is the one computed here from
  proto/request-signing.md (vector 2), and its old timestamp is expired;
  missing or bad arguments are usage errors (exit 2) saying what is needed.
"""
import base64
import hashlib
import hmac
import json
import os
import pty
import re
import sqlite3
import subprocess
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: E402

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, Ctl, cofferctl_path, stubs  # noqa: E402

SRC = os.environ.get("COFFER_SOURCE_DIR", os.path.join(HERE, "..", ".."))


def b64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def blob_version(blob):
    # proto/README.md "Wrapped blob": 0x01 | version (4, big-endian) | ...
    return int.from_bytes(blob[1:5], "big")


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"keys": {"min_destroy_grace": "1"}})
        cls.d.start()
        cls.ctl = Ctl(cls.d)

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def path(self, name):
        return os.path.join(self.d.dir, name)

    def unwrap(self, key, blob):
        with open(self.path("one.blob"), "wb") as f:
            f.write(blob)
        return self.ctl("unwrap", key, "--in", self.path("one.blob"), "--out", "-").stdout

    # ---- rewrap --batch ----

    def test_rewrap_batch(self):
        c = self.ctl
        c("key", "create", "batch-k", "--type", "aes-256")
        plains = [os.urandom(20 + i) for i in range(40)]
        lines = []
        for p in plains:
            out = json.loads(c("--json", "wrap", "batch-k", "--in", "-", data=p).stdout)
            lines.append(out["ciphertext"])
        src = self.path("blobs.txt")
        with open(src, "w") as f:
            f.write("# wrapped under version 1\n\n" + "\n".join(lines) + "\n")
        c("key", "rotate", "batch-k")
        # One blob already under version 2, and one line that is no blob.
        cur = json.loads(c("--json", "wrap", "batch-k", "--in", "-", data=b"now").stdout)
        with open(src, "a") as f:
            f.write(cur["ciphertext"] + "\nnot*base64\n")
        dst = self.path("blobs.new")
        r = c("rewrap", "batch-k", "--batch", "--progress", "--in", src, "--out", dst, ok=False)
        self.assertEqual(r.returncode, 6, r.stderr)            # invalid input
        self.assertIn(b"line 44: not a base64 blob", r.stderr)
        self.assertIn(b"rewrap: 44/44 lines (100%), 40 moved to the primary version, "
                      b"1 already on it, 1 failed", r.stderr)
        with open(src) as f:
            before = f.read().split("\n")
        with open(dst) as f:
            after = f.read().split("\n")
        self.assertEqual(len(after), len(before))               # whole, in order
        self.assertEqual(after[:2], before[:2])                 # comment, blank kept
        self.assertEqual(after[-2], "not*base64")               # the bad line unchanged
        for i, p in enumerate(plains):
            blob = base64.b64decode(after[2 + i])
            self.assertNotEqual(after[2 + i], before[2 + i])
            self.assertEqual(blob_version(blob), 2)
            self.assertEqual(self.unwrap("batch-k", blob), p)
        # Version 1 can go now; every moved blob still unwraps.
        c("key", "schedule-destroy", "batch-k", "1", "--grace", "3600")
        self.assertEqual(self.unwrap("batch-k", base64.b64decode(after[2])), plains[0])
        r = c("unwrap", "batch-k", "--in", "-", "--out", "-",
              data=base64.b64decode(before[2]), ok=False)
        self.assertEqual(r.returncode, 6)
        self.assertIn(b"version 1 is scheduled for destruction", r.stderr)
        # A second run over the output, with the bad line gone, finishes
        # cleanly; --json gives the summary; no progress without a terminal.
        with open(dst, "w") as f:
            f.write("\n".join(a for a in after if a != "not*base64"))
        r = c("--json", "rewrap", "batch-k", "--batch", "--in", dst, "--out",
              self.path("blobs.again"))
        self.assertEqual(json.loads(r.stdout),
                         {"lines": 43, "moved": 0, "current": 41, "failed": 0})
        self.assertNotIn(b"rewrap:", r.stderr)

    def test_rewrap_batch_in_place(self):
        """--in and --out the same file: rewritten whole (a temporary file
        renamed over it), a failing line kept byte for byte (CRLF too)."""
        c = self.ctl
        c("key", "create", "inplace-k", "--type", "aes-256")
        plains = [os.urandom(16) for _ in range(5)]
        blobs = [json.loads(c("--json", "wrap", "inplace-k", "--in", "-", data=p).stdout)
                 ["ciphertext"] for p in plains]
        c("key", "rotate", "inplace-k")
        f = self.path("inplace.txt")
        with open(f, "wb") as out:
            out.write(("\n".join(blobs) + "\n").encode() + b"bad\x00line\r\n")
        r = c("rewrap", "inplace-k", "--batch", "--in", f, "--out", f, ok=False)
        self.assertEqual(r.returncode, 6, r.stderr)
        with open(f, "rb") as g:
            lines = g.read().split(b"\n")
        self.assertEqual(lines[5], b"bad\x00line\r")     # unchanged, byte for byte
        for i, p in enumerate(plains):
            blob = base64.b64decode(lines[i])
            self.assertEqual(blob_version(blob), 2)
            self.assertEqual(self.unwrap("inplace-k", blob), p)
        self.assertEqual([n for n in os.listdir(self.d.dir) if "rewrap-" in n], [])
        # A run that cannot start (unknown --in) leaves the target untouched.
        with open(f, "rb") as g:
            before = g.read()
        c("rewrap", "inplace-k", "--batch", "--in", self.path("nope"), "--out", f, ok=False)
        with open(f, "rb") as g:
            self.assertEqual(g.read(), before)

    def test_rewrap_batch_unreadable_input_keeps_the_target(self):
        """--in that fails mid-read (a directory: fopen takes it, getline
        fails with EISDIR): --out is left as it was, exit 1. Before, the
        partial (empty) output was renamed over it: with --in and --out the
        same file, every blob not yet read was lost (found by a review)."""
        c = self.ctl
        c("key", "create", "unread-k", "--type", "aes-256")
        f = self.path("unread.txt")
        blob = json.loads(c("--json", "wrap", "unread-k", "--in", "-", data=b"p").stdout)
        with open(f, "w") as out:
            out.write(blob["ciphertext"] + "\n")
        with open(f, "rb") as g:
            before = g.read()
        d = self.path("a-directory")
        os.makedirs(d, exist_ok=True)
        r = c("rewrap", "unread-k", "--batch", "--in", d, "--out", f, ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(b"Is a directory", r.stderr)
        self.assertIn(("%s is left as it was: the input could not be read to its end"
                       % f).encode(), r.stderr)
        with open(f, "rb") as g:
            self.assertEqual(g.read(), before)
        self.assertEqual([n for n in os.listdir(self.d.dir) if "rewrap-" in n], [])

    def test_unwrap_json_with_out_file(self):
        """unwrap --json --out FILE: the plaintext goes to FILE (0600), the
        JSON names only the version. Before, --out was ignored and the
        plaintext printed in the JSON (found by a review)."""
        c = self.ctl
        c("key", "create", "uj-k", "--type", "aes-256")
        secret = os.urandom(40)
        blob = json.loads(c("--json", "wrap", "uj-k", "--in", "-", data=secret).stdout)
        out = self.path("uj.plain")
        r = c("--json", "unwrap", "uj-k", "--in", "-", "--out", out,
              data=base64.b64decode(blob["ciphertext"]))
        self.assertEqual(json.loads(r.stdout), {"version": 1})
        with open(out, "rb") as g:
            self.assertEqual(g.read(), secret)
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o600)
        # Without --out the JSON still carries it.
        r = c("--json", "unwrap", "uj-k", "--in", "-", data=base64.b64decode(blob["ciphertext"]))
        self.assertEqual(base64.b64decode(json.loads(r.stdout)["plaintext"]), secret)

    def test_secret_out_is_a_new_file(self):
        """A plaintext written over an existing file goes to a new inode
        (mode 0600) renamed over it: a reader that opened the old file, or
        a hard link to it, never sees the secret. Before, the file was
        truncated and written in place (found by a review)."""
        c = self.ctl
        c("key", "create", "nf-k", "--type", "aes-256")
        secret = os.urandom(32)
        blob = base64.b64decode(json.loads(
            c("--json", "wrap", "nf-k", "--in", "-", data=secret).stdout)["ciphertext"])
        out, link = self.path("nf.plain"), self.path("nf.link")
        with open(out, "w") as g:
            g.write("old\n")
        os.chmod(out, 0o644)
        os.link(out, link)
        with open(out, "rb") as reader:
            c("unwrap", "nf-k", "--in", "-", "--out", out, data=blob)
            self.assertEqual(reader.read(), b"old\n")
        with open(out, "rb") as g:
            self.assertEqual(g.read(), secret)
        self.assertEqual(os.stat(out).st_mode & 0o777, 0o600)
        with open(link, "rb") as g:
            self.assertEqual(g.read(), b"old\n")
        self.assertEqual([n for n in os.listdir(self.d.dir) if n.startswith(".cofferctl-")], [])
        # Through a symbolic link: the target gets it, made 0600 first.
        target, sym = self.path("nf.target"), self.path("nf.sym")
        with open(target, "w") as g:
            g.write("old\n")
        os.chmod(target, 0o644)
        os.symlink(target, sym)
        c("unwrap", "nf-k", "--in", "-", "--out", sym, data=blob)
        self.assertTrue(os.path.islink(sym))
        with open(target, "rb") as g:
            self.assertEqual(g.read(), secret)
        self.assertEqual(os.stat(target).st_mode & 0o777, 0o600)
        # A file in a directory where no file can be made (immutable here;
        # a root-owned /etc/app for a user): written in place, made 0600.
        ro = self.path("nf-ro")
        os.makedirs(ro)
        inside = os.path.join(ro, "key")
        with open(inside, "w") as g:
            g.write("old\n")
        os.chmod(inside, 0o644)
        if subprocess.run(["chattr", "+i", ro], capture_output=True).returncode != 0:
            return      # chattr +i not supported here: the rest is checked above
        try:
            c("unwrap", "nf-k", "--in", "-", "--out", inside, data=blob)
            with open(inside, "rb") as g:
                self.assertEqual(g.read(), secret)
            self.assertEqual(os.stat(inside).st_mode & 0o777, 0o600)
        finally:
            subprocess.run(["chattr", "-i", ro], check=True)

    def test_rate_too_small_and_empty_import_refused(self):
        """--rate 1e-400 reads as 0, which would remove the limit: refused.
        An empty --import file would let the daemon make a secret instead:
        refused before any call (found by a review)."""
        c = self.ctl
        c("principal", "create", "tiny-rate", "--uid", "4711")
        r = c("principal", "limit", "tiny-rate", "--rate", "1e-400", "--burst", "1", ok=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(b"too small to be told from 0 (which removes the limit); the slowest "
                      b"rate is one a day, 0.0000116", r.stderr)
        empty = self.path("empty.secret")
        open(empty, "w").close()
        r = c("principal", "add-key", "tiny-rate", "--import", empty, ok=False)
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertEqual(r.stderr, ("cofferctl: %s holds 0 bytes; an imported secret is 32 to "
                                    "64 bytes\n" % empty).encode())
        self.assertEqual(json.loads(c("--json", "principal", "keys", "tiny-rate").stdout), [])

    def test_set_rotation_times(self):
        c = self.ctl
        c("key", "create", "rot-k", "--type", "ec-p256")
        r = c("key", "set-rotation", "rot-k", "--rotation-period", "90d", "--next", "30d",
              ok=False)
        self.assertEqual(r.returncode, 2)                  # 30d is not a time
        r = c("key", "set-rotation", "rot-k", "--rotation-period", "90d", "--next", "1000",
              ok=False)
        self.assertEqual(r.returncode, 6)                  # in the past
        self.assertIn(b"in the past", r.stderr)
        k = json.loads(c("--json", "key", "set-rotation", "rot-k", "--rotation-period", "90d",
                         "--next", "+1h").stdout)
        self.assertEqual(k["rotation_period"], 90 * 86400)
        self.assertLess(abs(k["next_rotation_time"] - (int(time.time()) + 3600)), 5)
        r = c("key", "pubkey", "rot-k", "--der", "--format", "jwk", ok=False)
        self.assertEqual(r.returncode, 2)

    def test_rewrap_batch_progress_on_a_terminal(self):
        c = self.ctl
        c("key", "create", "tty-k", "--type", "aes-256")
        blob = json.loads(c("--json", "wrap", "tty-k", "--in", "-", data=b"x").stdout)
        src = self.path("tty.txt")
        with open(src, "w") as f:
            f.write(blob["ciphertext"] + "\n")
        master, slave = pty.openpty()
        try:
            r = subprocess.run([cofferctl_path(), "rewrap", "tty-k", "--batch", "--in", src,
                                "--out", self.path("tty.out")], env=c.env, stderr=slave,
                               stdout=subprocess.DEVNULL, timeout=60)
            os.close(slave)
            slave = -1
            seen = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            os.close(master)
            if slave != -1:
                os.close(slave)
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"rewrap: 1/1 lines (100%)", seen)

    def test_rewrap_batch_refusals(self):
        c = self.ctl
        r = c("--json", "rewrap", "x", "--batch", ok=False)
        self.assertEqual(r.returncode, 2)
        self.assertIn(b"give --out FILE", r.stderr)
        r = c("rewrap", "x", "--progress", ok=False)
        self.assertEqual(r.returncode, 2)
        r = c("rewrap", "x", "--batch", "--in", self.path("missing"), ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"No such file", r.stderr)

    # ---- JWK ----

    def check_jwk(self, name, ktype, verify):
        c = self.ctl
        c("key", "create", name, "--type", ktype)
        msg = os.urandom(100)
        sig = json.loads(c("--json", "sign", name, "--in", "-", data=msg).stdout)
        jwk = json.loads(c("key", "pubkey", name, "--format", "jwk").stdout)
        pem = c("key", "pubkey", name).stdout
        both = json.loads(c("--json", "key", "pubkey", name).stdout)
        self.assertEqual(both["jwk"], jwk)
        self.assertEqual(jwk["kid"], "%s:%d" % (name, sig["version"]))
        self.assertEqual(jwk["use"], "sig")
        key = verify(jwk, base64.b64decode(sig["signature"]), msg)
        self.assertEqual(
            key.public_bytes(serialization.Encoding.PEM,
                             serialization.PublicFormat.SubjectPublicKeyInfo), pem)
        # A signature over other bytes does not verify: the check can fail.
        with self.assertRaises(Exception):
            verify(jwk, base64.b64decode(sig["signature"]), msg + b"!")
        return jwk

    def test_jwk_ec(self):
        for name, ktype, crv, curve, h, size in (
                ("jwk-p256", "ec-p256", "P-256", ec.SECP256R1(), hashes.SHA256(), 32),
                ("jwk-p384", "ec-p384", "P-384", ec.SECP384R1(), hashes.SHA384(), 48)):
            def verify(jwk, sig, msg, curve=curve, h=h):
                k = ec.EllipticCurvePublicNumbers(int.from_bytes(b64u(jwk["x"]), "big"),
                                                  int.from_bytes(b64u(jwk["y"]), "big"),
                                                  curve).public_key()
                k.verify(sig, msg, ec.ECDSA(h))
                return k
            jwk = self.check_jwk(name, ktype, verify)
            self.assertEqual((jwk["kty"], jwk["crv"], jwk["alg"]), ("EC", crv,
                                                                    "ES" + crv[2:]))
            self.assertEqual((len(b64u(jwk["x"])), len(b64u(jwk["y"]))), (size, size))

    def test_jwk_ed25519(self):
        def verify(jwk, sig, msg):
            k = ed25519.Ed25519PublicKey.from_public_bytes(b64u(jwk["x"]))
            k.verify(sig, msg)
            return k
        jwk = self.check_jwk("jwk-ed", "ed25519", verify)
        self.assertEqual((jwk["kty"], jwk["crv"], jwk["alg"]), ("OKP", "Ed25519", "EdDSA"))

    def test_jwk_rsa(self):
        def verify(jwk, sig, msg):
            k = rsa.RSAPublicNumbers(int.from_bytes(b64u(jwk["e"]), "big"),
                                     int.from_bytes(b64u(jwk["n"]), "big")).public_key()
            k.verify(sig, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                           salt_length=32), hashes.SHA256())
            return k
        jwk = self.check_jwk("jwk-rsa", "rsa-2048", verify)
        self.assertEqual(jwk["kty"], "RSA")
        self.assertNotIn("alg", jwk)
        self.assertNotIn("=", jwk["n"] + jwk["e"])   # base64url without padding

    def test_jwk_refused_for_secret_keys(self):
        self.ctl("key", "create", "jwk-hmac", "--type", "hmac-sha256")
        r = self.ctl("key", "pubkey", "jwk-hmac", "--format", "jwk", ok=False)
        self.assertEqual(r.returncode, 6)
        r = self.ctl("key", "pubkey", "jwk-hmac", "--format", "xml", ok=False)
        self.assertEqual(r.returncode, 2)

    # ---- --json on every read ----

    def test_every_read_has_json(self):
        c = self.ctl
        c("key", "create", "json-k", "--type", "ec-p256")
        reads = [["key", "list"], ["key", "list", "--admin"], ["key", "show", "json-k"],
                 ["key", "show", "json-k", "--admin"], ["key", "pubkey", "json-k"],
                 ["principal", "list"], ["principal", "show", self.d.PRINCIPAL],
                 ["principal", "keys"], ["audit", "tail", "--count", "3"],
                 ["audit", "verify"], ["identity"], ["health"], ["health", "--admin"]]
        for args in reads:
            out = c("--json", *args).stdout
            self.assertIsInstance(json.loads(out), (dict, list), args)
        show = json.loads(c("--json", "key", "show", "json-k").stdout)
        for field in ("min_version", "min_verify_version", "rotation_period",
                      "next_rotation_time", "versions", "primary_version"):
            self.assertIn(field, show)
        self.assertIn("destroy_time", show["versions"][0])

    # ---- request sign, request verify ----

    def test_request_sign_then_verify(self):
        """Signed once, valid once: the same request again is refused as
        replayed (exit 1), a tampered path as a bad signature; --json says
        the same; the body comes from a file or stdin."""
        c = self.ctl
        c("key", "create", "req-k", "--type", "hmac-sha256")
        body = self.path("req-body.json")
        with open(body, "wb") as f:
            f.write(b'{"amount":42}')
        req = ["req-k", "--method", "POST", "--path", "/v1/orders", "--query", "b=2&a=1"]
        r = c("request", "sign", *req, "--body", body)
        lines = dict(l.split(": ", 1) for l in r.stdout.decode().splitlines())
        self.assertEqual(sorted(lines), ["authorization", "nonce", "signature", "timestamp",
                                         "version"])
        self.assertEqual(lines["authorization"],
                         "COFFER-HMAC-SHA256-HTTP keyId=req-k, version=1, timestamp=%s, "
                         "nonce=%s, signature=%s" % (lines["timestamp"], lines["nonce"],
                                                     lines["signature"]))
        self.assertLess(abs(int(lines["timestamp"]) - time.time()), 5)
        self.assertRegex(lines["signature"], "^[0-9a-f]{64}$")
        hdr = ["--timestamp", lines["timestamp"], "--nonce", lines["nonce"],
               "--signature", lines["signature"]]
        r = c("request", "verify", *req, *hdr, "--body", "-", data=b'{"amount":42}')
        self.assertEqual(r.stdout, b"valid (key version 1)\n")
        replayed = ("invalid: replayed: nonce was already used with this key: a replayed "
                    "request\n").encode()
        r = c("request", "verify", *req, *hdr, "--body", body, ok=False)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (1, replayed, b""))
        r = c("--json", "request", "verify", *req, *hdr, "--body", body, ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(json.loads(r.stdout), {
            "valid": False, "verdict": "replayed", "version": 1,
            "reason": "nonce was already used with this key: a replayed request"})
        # A fresh signature, checked against a tampered path (and body):
        # refused, and its nonce is not used up by the forgery.
        s = json.loads(c("--json", "request", "sign", *req, "--body", body).stdout)
        self.assertEqual((s["version"], s["authorization"].split(" ")[0]),
                         (1, "COFFER-HMAC-SHA256-HTTP"))
        hdr = ["--timestamp", str(s["timestamp"]), "--nonce", s["nonce"],
               "--signature", s["signature"]]
        bad = ("invalid: bad-signature: signature does not match the canonical request "
               "under any enabled version of the key\n").encode()
        for args in (["--path", "/v1/orders/"], ["--body", "-"]):
            tampered = req + args if args[0] == "--body" else req[:3] + args + req[5:]
            with self.subTest(tampered=args):
                r = c("request", "verify", *tampered, *hdr,
                      *([] if args[0] == "--body" else ["--body", body]), data=b"{}",
                      ok=False)
                self.assertEqual((r.returncode, r.stdout), (1, bad))
        r = c("--json", "request", "verify", *req, *hdr, "--body", body)
        self.assertEqual(json.loads(r.stdout)["verdict"], "valid")

    def test_request_sign_matches_the_spec(self):
        """With a known secret, --timestamp and --nonce: the signature of
        vector 2 of proto/request-signing.md, computed here independently;
        the timestamp is old, so verify says expired (exit 1)."""
        c = self.ctl
        secret = bytes(range(32))
        c("key", "import", "orders-api", "--type", "hmac-sha256", "--in", "-", data=secret)
        req = ["orders-api", "--method", "POST", "--path", "/v1/orders", "--query",
               "b=2&a=1&a=0&c", "--body", "-"]
        ts, nonce = 1764300001, "n0nce-0000000002"
        s = json.loads(c("--json", "request", "sign", *req, "--timestamp", str(ts),
                         "--nonce", nonce, data=b'{"amount":42}').stdout)
        canonical = "\n".join(["COFFER-HMAC-SHA256-HTTP", "POST", "/v1/orders",
                               "a=0&a=1&b=2&c=", hashlib.sha256(b'{"amount":42}').hexdigest(),
                               str(ts), nonce, "orders-api"]).encode()
        want = hmac.new(secret, canonical, hashlib.sha256).hexdigest()
        self.assertEqual(want, "c71fdf57e057a2e3a69cf4f759daaa182f0f24e12c85d6ec4ed7d06b4a1776d1")
        self.assertEqual((s["signature"], s["timestamp"], s["nonce"]), (want, ts, nonce))
        r = c("request", "verify", *req, "--timestamp", str(ts), "--nonce", nonce,
              "--signature", want, data=b'{"amount":42}', ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stdout.decode(), r"^invalid: expired: timestamp is \d+ s old; the "
                         r"window is 300 s: sign the request again\n$")

    def test_request_usage_errors(self):
        c = self.ctl
        try_help = "Try 'cofferctl --help'."
        for args, first in (
                (["request"], "cofferctl: request needs a subcommand: sign or verify"),
                (["request", "forge", "k"], "cofferctl: unknown command: forge"),
                (["request", "sign", "k", "--path", "/x"],
                 "cofferctl: request sign needs --method M and --path P"),
                (["request", "verify", "k", "--method", "GET", "--timestamp", "1",
                  "--nonce", "n" * 16, "--signature", "0" * 64],
                 "cofferctl: request verify needs --method M and --path P"),
                (["request", "verify", "k", "--method", "GET", "--path", "/x"],
                 "cofferctl: request verify needs --timestamp T, --nonce N and --signature S "
                 "(from the request's Authorization header)"),
                (["request", "verify", "k", "--method", "GET", "--path", "/x", "--timestamp",
                  "-5", "--nonce", "n" * 16, "--signature", "0" * 64],
                 "cofferctl: --timestamp -5: not a Unix time in seconds"),
                (["request", "sign", "k", "--method", "GET", "--path", "/x", "--signature",
                  "00"],
                 "cofferctl: unknown option, or option without its argument: --signature"),
                (["request", "sign", "--method", "GET", "--path", "/x"],
                 "cofferctl: wrong number of arguments")):
            with self.subTest(args=args):
                r = c(*args, ok=False)
                self.assertEqual(r.returncode, 2, r.stderr)
                err = r.stderr.decode().splitlines()
                self.assertEqual(err[0], first)
                self.assertIn(err[1], (try_help, "usage: cofferctl request sign KEY --method M "
                                       "--path P [--query Q] [--body FILE|-]"))
        # Parts the daemon refuses: exit 6 with its reason; a missing body: 1.
        c("key", "create", "req-u", "--type", "hmac-sha256")
        r = c("request", "sign", "req-u", "--method", "get", "--path", "/x", ok=False)
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertIn(b"method character 1 is not allowed", r.stderr)
        r = c("request", "sign", "req-u", "--method", "GET", "--path", "/x", "--body",
              self.path("no-such-body"), ok=False)
        self.assertEqual((r.returncode, r.stderr.decode()),
                         (1, "cofferctl: %s: No such file or directory\n"
                          % self.path("no-such-body")))
        # Not an hmac-sha256 key.
        c("key", "create", "req-ec", "--type", "ec-p256")
        r = c("request", "sign", "req-ec", "--method", "GET", "--path", "/x", ok=False)
        self.assertEqual(r.returncode, 6, r.stderr)

    # ---- help texts ----

    def test_idempotency_key_format_in_help_and_man_page(self):
        # The limits are the daemon's (daemon/dispatch.c checks them).
        with open(os.path.join(SRC, "daemon", "idempotency.h")) as f:
            lo = re.search(r"#define IDEM_KEY_MIN (\d+)", f.read()).group(1)
        with open(os.path.join(SRC, "daemon", "store.h")) as f:
            hi = re.search(r"#define STORE_IDEM_KEY_MAX (\d+)", f.read()).group(1)
        fmt = "%s to %s characters of A-Z a-z 0-9 . _ : -" % (lo, hi)
        top = subprocess.run([cofferctl_path(), "--help"], capture_output=True, text=True,
                             check=True).stdout
        opt = top.split("--idempotency-key K")[1].split("\n  --")[0]
        self.assertIn(fmt, " ".join(opt.split()))
        page = os.path.join(os.path.dirname(cofferctl_path()), "cofferctl.1")
        with open(page) as f:
            man = f.read().replace("\\-", "-")
        self.assertGreaterEqual(man.count(fmt), 1, "cofferctl.1 lacks " + fmt)
        # A key outside the format: refused with the same words.
        r = self.ctl("key", "list", "--idempotency-key", "short", ok=False)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.decode().splitlines()[0],
                         "cofferctl: --idempotency-key short: want %s..%s of "
                         "A-Z a-z 0-9 . _ : -" % (lo, hi))

    def test_a_change_without_an_answer_names_its_idempotency_key(self):
        """A rotation whose answer does not come in time (the SQLite store
        held by another process for 2.5 s, cofferctl's --timeout 1 s) may
        still be made: cofferctl names the idempotency key it used, and the
        retry with it answers that rotation without making another. Before,
        the key was never shown and a retry rotated again (found by a
        client written from the documents alone)."""
        if self.d.pg_db is not None:
            self.skipTest("holds the SQLite file")
        c = self.ctl
        c("key", "create", "hint-k", "--type", "ec-p256")
        db = sqlite3.connect(os.path.join(self.d.state_dir, "coffer.db"), timeout=10,
                             isolation_level=None, check_same_thread=False)
        db.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(2.5, lambda: db.execute("ROLLBACK"))
        release.start()
        try:
            r = c("--timeout", "1000", "key", "rotate", "hint-k", ok=False)
        finally:
            release.join()
            db.close()
        self.assertEqual(r.returncode, 5, r.stderr)
        lines = r.stderr.decode().splitlines()
        self.assertEqual(len(lines), 2, lines)
        # The key last (a ':' after it was copied with it, a valid key: a
        # second rotation; found from outside).
        m = re.fullmatch(r"cofferctl: if this command changes something, a retry answers a "
                         r"change already made instead of making it again when it carries "
                         r"this command's key: --idempotency-key (ctl-[0-9a-f]{24})", lines[1])
        self.assertIsNotNone(m, lines)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:      # the rotation, made after the hold
            show = json.loads(c("--json", "key", "show", "hint-k").stdout)
            if len(show["versions"]) == 2:
                break
            time.sleep(0.1)
        self.assertEqual([v["version"] for v in show["versions"]], [1, 2])
        again = json.loads(c("--json", "--idempotency-key", m.group(1), "key", "rotate",
                             "hint-k").stdout)
        self.assertEqual(again["primary_version"], 2, again)
        show = json.loads(c("--json", "key", "show", "hint-k").stdout)
        self.assertEqual([v["version"] for v in show["versions"]], [1, 2])
        # A read names the key too: harmless (it changes nothing), and the
        # same words whatever the command.
        r = subprocess.run([cofferctl_path(), "--admin-socket", "/nonexistent/admin.sock",
                            "--timeout", "500", "key", "list", "--admin"],
                           capture_output=True)
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertRegex(r.stderr, rb"--idempotency-key ctl-[0-9a-f]{24}\n$")

    def test_a_repeated_add_key_names_the_key_and_the_remedy(self):
        """A repeat of add-key answered from its idempotency record carries no
        secret: cofferctl names the key and the two ways out, both of which
        work. Before, "its secret was shown the first time only", though
        the first answer may never have arrived (found from outside)."""
        c = self.ctl
        c("principal", "create", "repeat-p", "--uid", "4242")
        first = json.loads(c("--json", "--idempotency-key", "repeat-add-key-1", "principal",
                             "add-key", "repeat-p").stdout)
        kid = first["key"]["id"]
        r = c("--idempotency-key", "repeat-add-key-1", "principal", "add-key", "repeat-p",
              ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(r.stderr.decode(), "cofferctl: the daemon answered a repeat of this "
                         "request (same idempotency key) for API key %s: its secret is in the "
                         "first answer only, which may have been lost; if nobody holds it, "
                         "make a new one with 'cofferctl principal rotate-secret %s --overlap "
                         "0' or revoke the key with 'cofferctl principal revoke-key %s'\n"
                         % (kid, kid, kid))
        rot = json.loads(c("--json", "principal", "rotate-secret", kid, "--overlap",
                           "0").stdout)
        self.assertTrue(rot["secret"])
        c("principal", "revoke-key", kid)

    def test_grace_zero_refused(self):
        c = self.ctl
        c("key", "create", "grace-k", "--type", "ec-p256")
        c("key", "rotate", "grace-k")
        want = ("cofferctl: --grace 0: a grace period cannot be 0 (destruction always waits "
                "at least [keys] min_destroy_grace, 1d by default); leave --grace out for "
                "the daemon's default, [keys] destroy_grace")
        c("key", "set-min", "grace-k", "--keep-last", "1")     # version 1 can be trimmed
        for args in (("key", "schedule-destroy", "grace-k", "1", "--grace", "0"),
                     ("key", "schedule-destroy", "grace-k", "1", "--grace", "0d"),
                     ("key", "trim", "grace-k", "--grace", "0")):
            with self.subTest(args=args):
                r = c(*args, ok=False)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stderr.decode().splitlines()[0],
                                 want.replace("--grace 0:", "--grace %s:" % args[-1]))
        # Nothing was scheduled.
        show = json.loads(c("--json", "key", "show", "grace-k").stdout)
        self.assertEqual([(v["version"], v["destroy_time"]) for v in show["versions"]],
                         [(1, 0), (2, 0)])
        # A real grace period still works.
        c("key", "trim", "grace-k", "--grace", "2d")
        show = json.loads(c("--json", "key", "show", "grace-k").stdout)
        self.assertAlmostEqual(show["versions"][0]["destroy_time"] - time.time(), 2 * 86400,
                               delta=60)

    # ---- token info ----

    def test_token_info_on_softhsm(self):
        # SoftHSM makes every key type; the TPM's refusals are test_tpm_token's.
        info = json.loads(self.ctl("--json", "token", "info").stdout)
        self.assertTrue(info["session_copies"])
        self.assertGreater(info["mechanisms"], 20)
        self.assertEqual(info["unavailable"], [])
        for t in info["key_types"]:
            secret = t["type"].startswith(("hmac", "aes"))
            self.assertEqual((t["generate"], t["import"], t["use"], t["missing"]),
                             (True, secret, True, ""), t["type"])
        self.assertEqual(len(info["key_types"]), 10)

    # ---- deploy/cofferd.conf.example ----

    def test_admin_comment_names_every_admin_method(self):
        with open(os.path.join(SRC, "proto", "coffer", "v1", "coffer.proto")) as f:
            svc = f.read().split("service AdminService {")[1].split("}")[0]
        methods = re.findall(r"^\s*rpc (\w+)\(", svc, re.M)
        self.assertGreater(len(methods), 20)
        with open(os.path.join(SRC, "deploy", "cofferd.conf.example")) as f:
            conf = f.read()
        comment = conf.split("\n[admin]\n")[0].rsplit("\n\n", 1)[1]
        self.assertTrue(comment.startswith("# The admin socket:"), comment)
        words = set(re.findall(r"\w+", comment))
        self.assertEqual([m for m in methods if m not in words], [])

    # ---- digests ----

    def test_sign_digest_default_hash(self):
        S = stubs()
        pb = S.pb
        svc = self.d.service_stub()
        msg = b"a digest made by the caller"
        for name, typ, h, want in (("dg-p256", "ec-p256", hashlib.sha256, pb.SHA256),
                                   ("dg-p384", "ec-p384", hashlib.sha384, pb.SHA384),
                                   ("dg-rsa", "rsa-2048", hashlib.sha256, pb.SHA256)):
            with self.subTest(key=name):
                self.ctl("key", "create", name, "--type", typ)
                dg = h(msg).digest()
                r = svc.Sign(pb.SignRequest(key=name, digest=dg), timeout=60)
                self.assertEqual(r.hash, want)
                pub = serialization.load_pem_public_key(svc.GetPublicKey(
                    pb.GetPublicKeyRequest(key=name), timeout=60).pem.encode())
                alg = hashes.SHA256() if want == pb.SHA256 else hashes.SHA384()
                if typ.startswith("ec"):
                    pub.verify(r.signature, dg, ec.ECDSA(Prehashed(alg)))
                    pub.verify(r.signature, msg, ec.ECDSA(alg))
                else:
                    pub.verify(r.signature, dg, padding.PSS(padding.MGF1(alg), alg.digest_size),
                               Prehashed(alg))
                # cofferctl --prehashed without --hash: the key's default too.
                sig = json.loads(self.ctl("--json", "sign", name, "--prehashed", "--in", "-",
                                          data=dg).stdout)
                self.assertTrue(svc.Verify(pb.VerifyRequest(
                    key=name, version=sig["version"], message=msg,
                    signature=base64.b64decode(sig["signature"])), timeout=60).valid)
                for kw in (dict(digest=dg), dict(message=msg), dict(digest=dg, hash=want)):
                    v = svc.Verify(pb.VerifyRequest(key=name, version=r.version,
                                                    signature=r.signature, **kw), timeout=60)
                    self.assertTrue(v.valid, kw)
        # The default's length applies: a SHA-384 digest for a P-256 key.
        refusals = (
            (pb.SignRequest(key="dg-p256", digest=hashlib.sha384(msg).digest()),
             grpc.StatusCode.INVALID_ARGUMENT, "a sha256 digest is 32 bytes, got 48"),
            (pb.SignRequest(key="dg-p256", digest=b"\0" * 32, hash=pb.SHA384),
             grpc.StatusCode.INVALID_ARGUMENT, "a sha384 digest is 48 bytes, got 32"),
        )
        self.ctl("key", "create", "dg-ed", "--type", "ed25519")
        ed = ("key dg-ed is ed25519, which signs the message itself (no prehash): send the "
              "message, not a digest")
        refusals += (
            (pb.SignRequest(key="dg-ed", digest=hashlib.sha256(msg).digest()),
             grpc.StatusCode.FAILED_PRECONDITION, ed),
            (pb.SignRequest(key="dg-ed", digest=hashlib.sha512(msg).digest(), hash=pb.SHA512),
             grpc.StatusCode.FAILED_PRECONDITION, ed),
            (pb.VerifyRequest(key="dg-ed", version=1, digest=hashlib.sha256(msg).digest(),
                              signature=b"\0" * 64),
             grpc.StatusCode.FAILED_PRECONDITION, ed),
        )
        for req, code, text in refusals:
            with self.subTest(req=str(req)[:60]):
                fn = svc.Sign if isinstance(req, pb.SignRequest) else svc.Verify
                with self.assertRaises(grpc.RpcError) as cm:
                    fn(req, timeout=60)
                self.assertEqual((cm.exception.code(), cm.exception.details()), (code, text))

    # ---- the manual page ----

    def test_man_page(self):
        page = os.path.join(os.path.dirname(cofferctl_path()), "cofferctl.1")
        with open(page) as f:
            text = f.read()
        top = subprocess.run([cofferctl_path(), "--help"], capture_output=True, text=True,
                             check=True).stdout
        cmds = [l.split()[:2] if l.split()[0] in ("key", "principal", "audit", "request")
                else l.split()[:1]
                for l in top.split("Commands:\n")[1].split("\n\n")[0].splitlines()
                if l.startswith("  ") and not l.startswith("   ")]
        self.assertGreater(len(cmds), 30)
        for words in cmds:
            self.assertIn(".B " + "\\-".join(" ".join(words).split("-")), text, words)
        r = subprocess.run(["groff", "-man", "-ww", "-z", page], capture_output=True,
                           text=True)
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        r = subprocess.run(["man", "-l", page], capture_output=True, text=True,
                           env=dict(os.environ, MANPAGER="cat", MANWIDTH="80"))
        self.assertEqual(r.returncode, 0)
        self.assertIn("key schedule-destroy NAME VERSION", r.stdout)
        self.assertIn("EXIT STATUS", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
