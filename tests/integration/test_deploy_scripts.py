#!/usr/bin/python3
"""deploy/init-token.sh cut short (found by a review of the deploy files):

* Ctrl-C (SIGINT to its process group) while softhsm2-util initialises the
  token: no PIN file is left of a token that was never made, and a re-run
  succeeds (before, the PIN files stayed and every re-run refused to
  overwrite them: "exists but no token ... does").
* softhsm2-util failing: the same, and its message is passed on.
* A finished run: both PIN files 0600, and a re-run leaves them alone.
"""
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("COFFER_SOURCE_DIR") or os.path.join(HERE, "..", "..")
INIT = os.path.join(SRC, "deploy", "init-token.sh")

# Lists slots through the real tool; --init-token waits (or fails, exit 1).
STUB = """#!/bin/sh
case "$*" in *--show-slots*) exec softhsm2-util "$@" ;; esac
[ "$STUB_MODE" = fail ] && { echo "stub: refused" >&2; exit 1; }
touch "$STUB_STARTED"
exec sleep 60
"""


class InitToken(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="coffer-init-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.stub = os.path.join(self.dir, "stub")
        with open(self.stub, "w") as f:
            f.write(STUB)
        os.chmod(self.stub, 0o755)
        self.tok = os.path.join(self.dir, "tok")
        self.started = os.path.join(self.dir, "started")

    def pins(self):
        return sorted(n for n in os.listdir(self.tok) if "pin" in n)

    def env(self, mode):
        return dict(os.environ, SOFTHSM2_UTIL=self.stub, STUB_MODE=mode,
                    STUB_STARTED=self.started)

    def rerun_succeeds(self):
        r = subprocess.run(["sh", INIT, self.tok], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.pins(), ["so.pin", "user.pin"])
        for n in self.pins():
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.tok, n)).st_mode), 0o600)
        with open(os.path.join(self.tok, "user.pin")) as f:
            pin = f.read()
        r = subprocess.run(["sh", INIT, self.tok], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("already exists", r.stderr)
        with open(os.path.join(self.tok, "user.pin")) as f:
            self.assertEqual(f.read(), pin)

    def test_interrupted_while_initialising(self):
        p = subprocess.Popen(["sh", INIT, self.tok], env=self.env("wait"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.started):
            self.assertLess(time.monotonic(), deadline, "the stub never ran")
            time.sleep(0.02)
        self.assertEqual(self.pins(), ["so.pin", "user.pin"])   # written before
        os.killpg(p.pid, signal.SIGINT)                          # Ctrl-C
        p.communicate(timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.pins(), [], "PIN files of a token never made")
        self.rerun_succeeds()

    def test_softhsm_fails(self):
        r = subprocess.run(["sh", INIT, self.tok], env=self.env("fail"), capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("stub: refused", r.stderr)
        self.assertIn("softhsm2-util --init-token failed", r.stderr)
        self.assertEqual(self.pins(), [])
        self.rerun_succeeds()


if __name__ == "__main__":
    unittest.main(verbosity=2)
