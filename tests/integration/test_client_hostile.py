#!/usr/bin/python3
"""libcoffer and cofferctl against a daemon that misbehaves: a grpcio server
on a Unix socket written here, answering as a buggy or hostile cofferd
would (found by a review of the client, each case failing on the code
before):

* A call's deadline counts from its start: a Sign answered UNAVAILABLE
  after 0.45 s, under a 500 ms timeout, is not repeated with a new one
  (before: 0.9 s); an idempotent admin call met by UNAVAILABLE is retried
  within its deadline only (before: 41 attempts, 22 s, under --timeout 1000).
* A key listing whose pages repeat (page tokens alternating) or go back in
  name order is refused at once (before: memory grew until the 1,000,000-key
  bound, or the OOM killer).
* `key pubkey` prints a PEM made from the DER the daemon sent, never the
  daemon's own PEM text (escape sequences, another key); DER that is not a
  SubjectPublicKeyInfo is refused with its text.
* A pipelined stream that stops answering is dropped after one call's
  deadline: the next lone call goes unary and succeeds (before: every later
  call waited out its deadline on the dead stream, until coffer_close).
* coffer_public_key_jwk with a kid near its bound: valid JSON or "kid too
  long", never a truncated object returned as success.
"""
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import grpc  # noqa: E402
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from daemon_fixture import cofferctl_path, stubs  # noqa: E402
from fake_daemon import FakeDaemon, listing_backwards, listing_repeating  # noqa: E402

CTL = cofferctl_path()
LIBCOFFER = os.path.join(os.path.dirname(CTL), "libcoffer.so")
CHILD_ENV = dict(os.environ)


def sanitizer_build():
    try:
        with open(os.path.join(os.path.dirname(CTL), "CMakeCache.txt")) as f:
            return any(line.startswith("COFFER_SANITIZE:BOOL=ON") for line in f)
    except OSError:
        return False


# A sanitizer build's libcoffer.so needs its runtime loaded first: this
# process runs again with it preloaded (leaks not checked: Python's own
# allocations are not freed at exit); cofferctl gets the environment as
# it was.
if sanitizer_build() and "COFFER_HOSTILE_PRELOADED" not in os.environ:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    env = dict(os.environ, COFFER_HOSTILE_PRELOADED="1", LD_PRELOAD=libasan,
               ASAN_OPTIONS="detect_leaks=0",
               COFFER_HOSTILE_ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", ""))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
if "COFFER_HOSTILE_PRELOADED" in os.environ:
    CHILD_ENV.pop("LD_PRELOAD", None)
    CHILD_ENV.pop("COFFER_HOSTILE_PRELOADED", None)
    CHILD_ENV["ASAN_OPTIONS"] = CHILD_ENV.pop("COFFER_HOSTILE_ASAN_OPTIONS", "")

S = stubs()
pb = S.pb


def spki(key):
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def ctl(*args, timeout=120):
    """cofferctl's (exit status, stdout bytes, stderr text, seconds taken)."""
    t = time.monotonic()
    r = subprocess.run([CTL] + list(args), capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=CHILD_ENV)
    return r.returncode, r.stdout, r.stderr.decode(), time.monotonic() - t


class Hostile(unittest.TestCase):
    def fake(self, handlers, streams=None):
        f = FakeDaemon(handlers, streams)
        self.addCleanup(f.stop)
        return f

    def test_deadline_counts_from_the_start(self):
        def sign(req, ctx):
            time.sleep(0.45)
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "token busy")

        f = self.fake({"/coffer.v1.KeyService/Sign": sign})
        with tempfile.NamedTemporaryFile() as msg:
            rc, _, err, took = ctl("--socket", f.path, "--timeout", "500", "sign", "k",
                                   "--in", msg.name)
        self.assertNotEqual(rc, 0)
        self.assertIn("no answer from cofferd at %s within 500 ms" % f.path, err)
        self.assertLess(took, 0.8, "the call outlived its deadline")
        self.assertEqual(f.calls["/coffer.v1.KeyService/Sign"], 2)   # the one repetition

    def test_idempotent_retries_within_the_deadline(self):
        def rotate(req, ctx):
            time.sleep(0.3)
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "token busy")

        f = self.fake({"/coffer.v1.AdminService/RotateKey": rotate})
        rc, _, err, took = ctl("--admin-socket", f.path, "--timeout", "1000", "key", "rotate",
                               "k")
        self.assertNotEqual(rc, 0)
        self.assertLess(took, 1.6, "retried past the deadline: %d attempts"
                        % f.calls["/coffer.v1.AdminService/RotateKey"])
        self.assertGreaterEqual(f.calls["/coffer.v1.AdminService/RotateKey"], 2)
        self.assertTrue("token busy" in err or "within 1000 ms" in err, err)

    def test_listing_that_does_not_advance(self):
        for fn in (listing_repeating(pb), listing_backwards(pb)):
            f = self.fake({"/coffer.v1.KeyService/ListKeys": fn})
            rc, _, err, took = ctl("--socket", f.path, "key", "list")
            self.assertNotEqual(rc, 0, fn.__name__)
            self.assertIn("the server's key listing is not in name order", err, fn.__name__)
            self.assertLess(took, 10, fn.__name__)
            self.assertLessEqual(f.calls["/coffer.v1.KeyService/ListKeys"], 3, fn.__name__)

    def test_public_key_pem_made_from_der(self):
        a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        answer = {}

        def get_public_key(req, ctx):
            return pb.GetPublicKeyResponse(der=answer["der"], pem=answer["pem"], version=1,
                                           type=pb.EC_P256).SerializeToString()

        f = self.fake({"/coffer.v1.KeyService/GetPublicKey": get_public_key})
        answer.update(der=spki(a), pem="\x1b]0;pwned\x07\x1b[2J" + pem(b).decode())
        rc, out, err, _ = ctl("--socket", f.path, "key", "pubkey", "k")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, pem(a))
        answer.update(der=b"\x30\x03junk", pem=pem(b).decode())
        rc, out, err, _ = ctl("--socket", f.path, "key", "pubkey", "k")
        self.assertNotEqual(rc, 0)
        self.assertEqual(out, b"")
        self.assertIn("the server returned a public key that is not a SubjectPublicKeyInfo",
                      err)

    def test_stalled_stream_is_dropped(self):
        """The stream accepted, never answered; unary calls answered."""
        def sign(req, ctx):
            return pb.SignResponse(signature=b"S" * 8, version=7).SerializeToString()

        def stalled(reqs, ctx):
            ctx.send_initial_metadata((("coffer-pipeline", "frames"),))
            while ctx.is_active():
                time.sleep(0.05)
            return iter(())

        f = self.fake({"/coffer.v1.KeyService/Sign": sign},
                      {"/coffer.v1.Pipeline/Stream": stalled})
        lib = ctypes.CDLL(LIBCOFFER)
        lib.coffer_error_message.restype = ctypes.c_char_p
        c = ctypes.c_void_p()
        self.assertEqual(lib.coffer_connect(f.path.encode(), 0, ctypes.byref(c)), 0)
        self.addCleanup(lib.coffer_close, c)
        lib.coffer_set_timeout(c, 500)
        msg = b"hello"
        # A call started takes the stream even alone (COFFER_PIPELINE_AUTO).
        call = ctypes.c_void_p()
        self.assertEqual(lib.coffer_sign_start(c, b"k", 0, msg, len(msg), None,
                                               ctypes.byref(call)), 0)
        res = ctypes.create_string_buffer(4096)
        r = lib.coffer_wait(call, res)
        self.assertNotEqual(r, 0)
        self.assertIn(b"within 500 ms", lib.coffer_error_message())
        # A lone call afterwards: unary, answered.
        sig = (ctypes.c_void_p * 2)()
        ver = ctypes.c_uint32()
        t = time.monotonic()
        r = lib.coffer_sign(c, b"k", 0, msg, len(msg), None, sig, ctypes.byref(ver))
        self.assertEqual(r, 0, lib.coffer_error_message())
        self.assertEqual(ver.value, 7)
        self.assertLess(time.monotonic() - t, 0.5)
        lib.coffer_bytes_free(sig)


    def test_jwk_kid_at_its_bound(self):
        class Bytes(ctypes.Structure):
            _fields_ = [("data", ctypes.c_char_p), ("len", ctypes.c_size_t)]

        class PublicKey(ctypes.Structure):
            _fields_ = [("der", Bytes), ("pem", ctypes.c_char_p), ("type", ctypes.c_int),
                        ("version", ctypes.c_uint32)]

        lib = ctypes.CDLL(LIBCOFFER)
        lib.coffer_error_message.restype = ctypes.c_char_p
        der = spki(ec.generate_private_key(ec.SECP256R1()))
        pk = PublicKey(Bytes(der, len(der)), None, 1, 1)   # COFFER_KEY_EC_P256
        ok = too_long = 0
        for n in range(3800, 4100):
            out = ctypes.c_char_p()
            r = lib.coffer_public_key_jwk(ctypes.byref(pk), b"a" * n, ctypes.byref(out))
            if r != 0:
                self.assertEqual(lib.coffer_error_message(), b"kid too long", n)
                too_long += 1
                continue
            text = ctypes.string_at(out).decode()
            ctypes.CDLL(None).free(out)
            self.assertEqual(json.loads(text)["kid"], "a" * n, n)
            ok += 1
        self.assertGreater(ok, 0)
        self.assertGreater(too_long, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
