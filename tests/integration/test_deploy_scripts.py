#!/usr/bin/python3
"""deploy/init-token.sh cut short (found by a review of the deploy files):

* Ctrl-C (SIGINT to its process group) while the token is initialised
  (`cofferd --init-token`): no PIN file is left of a token that was never
  made, and a re-run succeeds (before, the PIN files stayed and every re-run
  refused to overwrite them: "exists but no token ... does").
* the initialisation failing: the same, and its message is passed on.
* A finished run: both PIN files 0600, and a re-run leaves them alone.
* Neither PIN is ever on a command line (every local user can read another
  process's argv): every program the script runs to list or initialise the
  token is wrapped and its arguments recorded (before: softhsm2-util
  --so-pin ... --pin ...).
"""
import os
import re
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

BUILD = os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC, "build")
COFFERD = os.path.join(BUILD, "daemon", "cofferd")

# Stands in for cofferd --init-token: waits (or fails, exit 1).
STUB = """#!/bin/sh
[ "$STUB_MODE" = fail ] && { echo "stub: refused" >&2; exit 1; }
touch "$STUB_STARTED"
exec sleep 60
"""

# Records its arguments (one line per run), then runs the real program.
RECORDER = """#!/bin/sh
printf '%%s\\n' "$*" >>"%s"
exec "%s" "$@"
"""

MODULE = os.environ.get("COFFER_SOFTHSM_MODULE") or "/usr/lib/softhsm/libsofthsm2.so"

# Stands in for a cofferd --init-token killed between C_InitToken and
# C_InitPIN: the token is made (its SO PIN from --so-pin-file, through the
# real module), then the process is killed.
HALF = """#!/usr/bin/python3
import ctypes, os, signal, sys
a = sys.argv[1:]
label, so = a[a.index("--init-token") + 1], a[a.index("--so-pin-file") + 1]
lib = ctypes.CDLL(a[a.index("--module") + 1] if "--module" in a else %r)
U = ctypes.c_ulong
assert lib.C_Initialize(None) == 0
n = U(0)
assert lib.C_GetSlotList(ctypes.c_ubyte(0), None, ctypes.byref(n)) == 0
slots = (U * n.value)()
assert lib.C_GetSlotList(ctypes.c_ubyte(0), slots, ctypes.byref(n)) == 0
pin = open(so, "rb").read().strip()
rv = lib.C_InitToken(U(slots[n.value - 1]), pin, U(len(pin)), label.encode().ljust(32))
assert rv == 0, hex(rv)
os.kill(os.getpid(), signal.SIGKILL)
""" % MODULE


def write_exe(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


def write_pin(path, data):
    """A PIN file of mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, data)
    os.close(fd)
    return path


def user_pin_set(conf):
    """softhsm2-util's word on the token of conf: its user PIN is set."""
    out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True,
                         env=dict(os.environ, SOFTHSM2_CONF=conf)).stdout
    return re.search(r"User PIN init\.:\s+yes", out) is not None


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
        return dict(os.environ, COFFERD=self.stub, STUB_MODE=mode, STUB_STARTED=self.started)

    def run_init(self, env=None):
        return subprocess.run(["sh", INIT, self.tok], capture_output=True, text=True,
                              timeout=60, env=env or dict(os.environ, COFFERD=COFFERD))

    def rerun_succeeds(self):
        r = self.run_init()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.pins(), ["so.pin", "user.pin"])
        for n in self.pins():
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.tok, n)).st_mode), 0o600)
        with open(os.path.join(self.tok, "user.pin")) as f:
            pin = f.read()
        r = self.run_init()
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

    def test_killed_between_token_and_user_pin(self):
        """cofferd --init-token killed after C_InitToken, before C_InitPIN:
        the token exists without a user PIN, so its PIN files stay; a re-run
        finishes it (before: "already exists", and cofferd could never log
        in), and a run after that leaves it alone."""
        half = os.path.join(self.dir, "half")
        write_exe(half, HALF)
        r = self.run_init(dict(os.environ, COFFERD=half))
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(self.pins(), ["so.pin", "user.pin"], r.stderr)
        conf = os.path.join(self.tok, "softhsm2.conf")
        self.assertFalse(user_pin_set(conf), "the stand-in set the user PIN")
        with open(os.path.join(self.tok, "user.pin")) as f:
            pin = f.read()
        r = self.run_init()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('cofferd: the token "coffer" existed without a user PIN (its '
                      'initialisation was cut short): set it from %s'
                      % os.path.join(self.tok, "user.pin"), r.stderr + r.stdout)
        self.assertTrue(user_pin_set(conf))
        with open(os.path.join(self.tok, "user.pin")) as f:
            self.assertEqual(f.read(), pin)
        r = self.run_init()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("already exists", r.stderr)

    def test_softhsm_fails(self):
        r = subprocess.run(["sh", INIT, self.tok], env=self.env("fail"), capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("stub: refused", r.stderr)
        self.assertIn("cofferd --init-token failed", r.stderr)
        self.assertEqual(self.pins(), [])
        self.rerun_succeeds()


    def test_no_pin_on_a_command_line(self):
        log = os.path.join(self.dir, "argv")
        wrap = {}
        for name, real in (("cofferd", COFFERD), ("softhsm2-util", shutil.which("softhsm2-util"))):
            wrap[name] = os.path.join(self.dir, "rec-" + name)
            with open(wrap[name], "w") as f:
                f.write(RECORDER % (log, real))
            os.chmod(wrap[name], 0o755)
        r = self.run_init(dict(os.environ, COFFERD=wrap["cofferd"],
                               SOFTHSM2_UTIL=wrap["softhsm2-util"]))
        self.assertEqual(r.returncode, 0, r.stderr)
        pins = []
        for n in ("user.pin", "so.pin"):
            with open(os.path.join(self.tok, n)) as f:
                pins.append(f.read().strip())
        self.assertTrue(all(len(p) == 32 for p in pins), pins)
        with open(log) as f:
            runs = f.read().splitlines()
        self.assertTrue(any("--init-token coffer" in a for a in runs), runs)
        for a in runs:
            for p in pins:
                self.assertNotIn(p, a, "a PIN on a command line")
        for p in pins:
            self.assertNotIn(p, r.stdout + r.stderr)
        # The token is made, with its user PIN set.
        out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True,
                             text=True, env=dict(os.environ, SOFTHSM2_CONF=os.path.join(
                                 self.tok, "softhsm2.conf"))).stdout
        self.assertRegex(out, r"User PIN init\.:\s+yes")
        self.assertRegex(out, r"Label:\s+coffer\s")
        print("\n%d runs recorded, no PIN among their arguments" % len(runs), flush=True)


class InitTokenRefusals(unittest.TestCase):
    """cofferd --init-token refused, each with its status and text."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="coffer-init-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        os.makedirs(os.path.join(self.dir, "tokens"))
        self.conf = os.path.join(self.dir, "softhsm2.conf")
        with open(self.conf, "w") as f:
            f.write("directories.tokendir = %s/tokens\nobjectstore.backend = file\n"
                    "log.level = ERROR\n" % self.dir)
        for n in ("so.pin", "user.pin"):
            write_pin(os.path.join(self.dir, n), b"0123456789abcdef\n")

    def init(self, *args):
        r = subprocess.run([COFFERD, "--init-token"] + list(args), capture_output=True,
                           text=True, timeout=60,
                           env=dict(os.environ, SOFTHSM2_CONF=self.conf))
        return r.returncode, r.stdout + r.stderr

    def pins(self):
        return ["--so-pin-file", os.path.join(self.dir, "so.pin"),
                "--pin-file", os.path.join(self.dir, "user.pin")]

    def init_with_so_pin(self, so_pin_file):
        return self.init("coffer", "--so-pin-file", so_pin_file,
                         "--pin-file", os.path.join(self.dir, "user.pin"))

    def test_refusals(self):
        rc, out = self.init("coffer", "--pin-file", os.path.join(self.dir, "user.pin"))
        self.assertEqual(rc, 2, out)
        self.assertIn("--init-token LABEL needs --so-pin-file PATH and --pin-file PATH", out)
        rc, out = self.init("x" * 33, *self.pins())
        self.assertEqual(rc, 1, out)
        self.assertIn("a token label is 1 to 32 bytes", out)
        os.chmod(os.path.join(self.dir, "so.pin"), 0o644)
        rc, out = self.init("coffer", *self.pins())
        self.assertEqual(rc, 1, out)
        self.assertIn("SO PIN file", out)
        self.assertNotIn("0123456789abcdef", out)
        os.chmod(os.path.join(self.dir, "so.pin"), 0o600)
        short = write_pin(os.path.join(self.dir, "short.pin"), b"12\n")
        rc, out = self.init_with_so_pin(short)
        self.assertEqual(rc, 1, out)
        self.assertIn("initialising the token: C_InitToken: the token refused the PIN of %s "
                      "(CKR_PIN_INCORRECT; SoftHSM2 takes 4 to 255 bytes)" % short, out)
        rc, out = self.init("coffer", *self.pins())
        self.assertEqual(rc, 0, out)
        self.assertIn('initialised the token "coffer"', out)
        rc, out = self.init("coffer", *self.pins())
        self.assertEqual(rc, 3, out)
        self.assertRegex(out, r'a token labelled "coffer" exists already \(slot \d+\): not '
                              r'initialising another')

    def test_token_without_user_pin(self):
        """A token whose initialisation stopped before C_InitPIN: --init-token
        sets the user PIN (with the SO PIN of the file), once."""
        half = os.path.join(self.dir, "half")
        write_exe(half, HALF)
        subprocess.run([half, "--init-token", "coffer"] + self.pins(), timeout=60,
                       env=dict(os.environ, SOFTHSM2_CONF=self.conf))
        self.assertFalse(user_pin_set(self.conf))
        wrong = write_pin(os.path.join(self.dir, "wrong.pin"), b"not-the-so-pin\n")
        rc, out = self.init_with_so_pin(wrong)
        self.assertEqual(rc, 1, out)
        self.assertIn("initialising the token: logging in as the security officer: the token "
                      "refused the PIN of %s (CKR_PIN_INCORRECT" % wrong, out)
        self.assertFalse(user_pin_set(self.conf))
        rc, out = self.init("coffer", *self.pins())
        self.assertEqual(rc, 0, out)
        self.assertIn('the token "coffer" existed without a user PIN', out)
        self.assertTrue(user_pin_set(self.conf))
        rc, out = self.init("coffer", *self.pins())
        self.assertEqual(rc, 3, out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
