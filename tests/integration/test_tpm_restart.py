#!/usr/bin/python3
"""The TPM behind cofferd goes away and comes back while cofferd serves.

swtpm is stopped (deploy/init-tpm-token.sh --stop-swtpm) under a running
cofferd on a tpm2-pkcs11 token: every call that needs the token fails with
UNAVAILABLE and a text saying the token is not answering -- never INTERNAL,
never a crash. swtpm is started again on the same state (--start-swtpm, which
also restarts tpm2-abrmd: the resource manager does not follow a TPM reset,
see the script), so cofferd's module loses its TPM and its connection: the
next calls
succeed, signatures verify with openssl, keys made before are still there and
the audit trail still verifies, all without restarting cofferd (same pid).
tpm2-pkcs11 stays broken after its TPM restarts until the module is
finalized and initialised again; the PKCS#11 layer does that (pkcs11/cf_p11.h,
Recovery). Two rounds.

Skipped (exit 77) with the reason when swtpm, tpm2-abrmd or tpm2-pkcs11 are
not installed.
"""
import re
import sys
import time
import unittest

import grpc

from daemon_fixture import CofferDaemon, Ctl, stubs, tpm_main
from test_tpm_token import openssl_verify

pb = stubs().pb
# The text says the token is not answering and, in brackets, why (the
# failed recovery's own reason, or the error that followed one).
LOST = re.compile(r"the token is not answering \((.+: .+ \(CKR_[A-Z_]+\)|CKR_[A-Z_]+ after "
                  r"recovering the session)\)")
BACK_WITHIN = 10.0   # seconds; the first call after the restart normally succeeds


class TpmRestart(unittest.TestCase):
    def setUp(self):
        self.d = CofferDaemon(token="tpm")
        self.addCleanup(self.d.cleanup)
        self.d.start()
        self.ctl = Ctl(self.d)
        self.ctl("key", "create", "before", "--type", "ec-p256")
        self.svc = self.d.service_stub()

    def sign(self, key, msg):
        return self.svc.Sign(pb.SignRequest(key=key, message=msg), timeout=60)

    def test_swtpm_restart(self):
        pid = self.d.pid
        pem = self.ctl("key", "pubkey", "before").stdout
        self.sign("before", b"warm")
        for rnd in (1, 2):
            with self.subTest(round=rnd):
                self.d.tpm_ctl("stop-swtpm")
                for i in range(3):
                    with self.assertRaises(grpc.RpcError) as e:
                        self.sign("before", b"while down %d" % i)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE,
                                     e.exception.details())
                    self.assertRegex(e.exception.details(), LOST)
                    print("  while down: %s" % e.exception.details(), file=sys.stderr)
                r = self.ctl("key", "create", "during-%d" % rnd, "--type", "ec-p256", ok=False)
                self.assertNotEqual(r.returncode, 0)
                self.assertRegex(r.stderr.decode(), LOST)
                self.d.tpm_ctl("start-swtpm")
                deadline, tries = time.monotonic() + BACK_WITHIN, 0
                while True:
                    tries += 1
                    try:
                        sig = self.sign("before", b"after restart").signature
                        break
                    except grpc.RpcError as e:
                        if time.monotonic() > deadline:
                            self.fail("still failing %.0f s after swtpm came back: %s %s"
                                      % (BACK_WITHIN, e.code(), e.details()))
                        print("  after restart: %s %s" % (e.code(), e.details()), file=sys.stderr)
                        time.sleep(0.2)
                print("round %d: signing again after %d call(s)" % (rnd, tries),
                      file=sys.stderr, flush=True)
                v = openssl_verify(pem, sig, b"after restart", self.d.dir)
                self.assertEqual(v.returncode, 0, v.stderr)
                # New keys work too, and the daemon never restarted.
                self.ctl("key", "create", "after-%d" % rnd, "--type", "ec-p384")
                self.sign("after-%d" % rnd, b"new key")
                self.assertEqual(self.d.pid, pid)
        self.assertRegex(self.ctl("audit", "verify").stdout.decode(),
                         r"^audit trail intact: \d+ records")


if __name__ == "__main__":
    tpm_main()
