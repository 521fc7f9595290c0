#!/usr/bin/python3
"""Sessions cannot be misbound through a relay (issue 14, defect 4).

A process of another uid that can reach the service socket may relay it: it
connects to cofferd itself and copies a caller's bytes both ways. cofferd
then reads the relay's ids from the socket (SO_PEERCRED) and binds the
session, its grants and its audit records to the relay's principal. Here a
byte relay runs as nobody (uid 65534, its own principal "relay" with every
grant) in front of the service socket, and root talks through it:

  a. cofferctl wrap (libcoffer) through the relay is refused with the
     mismatch text, exit 3, nothing written; the audit trail has no Wrap
     attributed to the relay (only its OpenSession); the Python caller
     (tests/integration/coffer_session.py) refuses it too;
  b. with cofferctl --no-peer-check (the user-namespace escape) the wrap
     works, and runs and is recorded as the relay's principal: the
     documented consequence; Python's peer_check=False likewise;
  c. an OpenSessionRequest claiming principal "alice" from a connection
     resolved as another principal is PERMISSION_DENIED naming both, through
     the relay and directly, and on the admin socket (no principals there);
     an empty claim and the connection's own name still open sessions.

Run:  COFFER_BUILD_DIR=build /usr/bin/python3 tests/integration/test_session_relay.py [-v]
(needs root and setpriv).
"""

import json
import os
import shutil
import subprocess
import time
import unittest

import grpc  # noqa: E402

import coffer_session as cs  # noqa: E402
from daemon_fixture import PYTHON, CofferDaemon, Ctl  # noqa: E402
from rpc_common import KS, SC, TIMEOUT, S, pb  # noqa: E402

NOBODY = 65534

MISMATCH = ("the daemon saw this session opened by uid 65534 gid 65534, not by this process "
            "(uid 0 gid 0): something relays the socket; refusing the session")

# Runs as nobody: accept on argv[1], connect each client to argv[2] (as
# nobody) and copy the bytes both ways.
RELAY = r'''
import os, socket, sys, threading
listen, target = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(listen)
os.chmod(listen, 0o666)
srv.listen(64)

def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

print("ready uid=%d gid=%d" % (os.geteuid(), os.getegid()), flush=True)
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.connect(target)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
'''


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"), "needs root and setpriv")
class RelayTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = cls.d = CofferDaemon(config={"service": {"mode": "0666", "allow_uids": "0,65534"}})
        try:
            d.make_traversable()
            d.start()
            d.ensure_principal("relay", uid=NOBODY)
            # alice exists (another uid): a claim of a real principal's name.
            d.admin_stub().CreatePrincipal(pb.CreatePrincipalRequest(name="alice",
                                                                     uids=[4242]),
                                           timeout=TIMEOUT)
            d.admin_stub().CreateKey(pb.CreateKeyRequest(name="relay-aes", type=pb.AES_256),
                                     timeout=TIMEOUT)
            cls.ctl = Ctl(d)
            rdir = os.path.join(d.dir, "relay")
            os.makedirs(rdir)
            script = os.path.join(rdir, "relay.py")
            with open(script, "w") as f:
                f.write(RELAY)
            os.chmod(script, 0o644)
            os.chown(rdir, NOBODY, NOBODY)
            cls.relay_socket = os.path.join(rdir, "relay.sock")
            cls.relay = subprocess.Popen(
                ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                 PYTHON, "-B", script, cls.relay_socket, d.service_socket],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
            line = cls.relay.stdout.readline()
            if line.strip() != "ready uid=65534 gid=65534":
                raise AssertionError("relay did not start: %r %s" % (line,
                                                                     cls.relay.stderr.read()))
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        relay = getattr(cls, "relay", None)
        if relay is not None:
            relay.kill()
            relay.wait()
            relay.stdout.close()
            relay.stderr.close()
        cls.d.cleanup()

    def audit(self):
        time.sleep(0.2)   # the record is written after the answer
        with open(os.path.join(self.d.state_dir, "audit.log")) as f:
            return [r for r in (json.loads(x) for x in f) if "method" in r]

    def wrap_via_relay(self, name, *flags):
        plain = os.path.join(self.d.dir, name + ".plain")
        blob = os.path.join(self.d.dir, name + ".blob")
        secret = os.urandom(32)
        with open(plain, "wb") as f:
            f.write(secret)
        r = self.ctl("--socket", self.relay_socket, *flags, "wrap", "relay-aes", "--in", plain,
                     "--out", blob, ok=False)
        return r, secret, blob

    def claim(self, channel, principal):
        stub = S.pb_grpc.SessionServiceStub(channel)
        hs = cs.Handshake(self.d.identity, principal)
        return stub.OpenSession(hs.request(pb), timeout=TIMEOUT)

    def assertRefused(self, code, text, fn, *args):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args)
        self.assertEqual((cm.exception.code(), cm.exception.details()), (code, text))

    # a.
    def test_a_libcoffer_refuses_a_relayed_session(self):
        before = len(self.audit())
        r, _, blob = self.wrap_via_relay("a")
        new = self.audit()[before:]
        self.assertEqual([x for x in new if x["principal"] == "relay" and x["sealed"]], [],
                         "a sealed call ran as the relay's principal")
        # The daemon saw the relay open a session, and nothing else.
        self.assertEqual([(x["method"], x["principal"], x["uid"], x["result"]) for x in new],
                         [("/coffer.v1.SessionService/OpenSession", "relay", NOBODY, "OK")])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertEqual(r.stderr.decode(), "cofferctl: " + MISMATCH + " (user namespace: "
                         "coffer_set_session_peer_check, cofferctl --no-peer-check)\n")
        self.assertFalse(os.path.exists(blob))

    def test_a_python_caller_refuses_a_relayed_session(self):
        with grpc.insecure_channel("unix:" + self.relay_socket) as ch:
            with self.assertRaises(cs.SessionError) as cm:
                cs.Session.open(ch, self.d.identity, timeout=TIMEOUT)
        self.assertEqual(cm.exception.check, "caller_ids")
        self.assertIn(MISMATCH, str(cm.exception))

    # b.
    def test_b_no_peer_check_runs_as_the_relay(self):
        before = len(self.audit())
        r, secret, blob = self.wrap_via_relay("b", "--no-peer-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        # A real wrap: root unwraps it directly.
        out = self.ctl("unwrap", "relay-aes", "--in", blob, "--out", "-").stdout
        self.assertEqual(out, secret)
        wraps = [x for x in self.audit()[before:] if x["method"] == KS + "Wrap"]
        self.assertEqual([(x["principal"], x["uid"], x["sealed"], x["result"]) for x in wraps],
                         [("relay", NOBODY, True, "OK")])

    def test_b_python_peer_check_off(self):
        with grpc.insecure_channel("unix:" + self.relay_socket) as ch:
            s = cs.Session.open(ch, self.d.identity, timeout=TIMEOUT, peer_check=False)
            self.assertEqual((s.caller_uid, s.caller_gid), (NOBODY, NOBODY))
            code, msg, _ = s.call(KS + "ListKeys", b"")
            self.assertEqual((code, msg), (0, ""))
            s.close()

    # c.
    def test_c_claims_of_another_principal_are_refused(self):
        d = self.d
        with grpc.insecure_channel("unix:" + self.relay_socket) as ch:
            self.assertRefused(SC.PERMISSION_DENIED,
                               "this connection is principal relay (uid 65534), not alice: a "
                               "session cannot claim another principal", self.claim, ch, "alice")
            self.assertRefused(SC.PERMISSION_DENIED,
                               "this connection is principal relay (uid 65534), not tester: a "
                               "session cannot claim another principal", self.claim, ch, "tester")
            # Its own name, or none, opens a session (bound to the relay).
            for name in ("relay", ""):
                with self.subTest(claim=name):
                    s = cs.Session.open(ch, d.identity, principal=name, timeout=TIMEOUT,
                                        peer_check=False)
                    self.assertEqual(s.call(KS + "ListKeys", b"")[:2], (0, ""))
                    s.close()
        ch = d.channel("service")
        self.assertRefused(SC.PERMISSION_DENIED,
                           "this connection is principal tester (uid 0), not alice: a session "
                           "cannot claim another principal", self.claim, ch, "alice")
        for name in ("tester", ""):
            with self.subTest(claim=name):
                s = cs.Session.open(ch, d.identity, principal=name, timeout=TIMEOUT)
                self.assertEqual(s.call(KS + "ListKeys", b"")[:2], (0, ""))
                s.close()
        # The admin socket has no principals: any claim is refused.
        adm = d.channel("admin")
        self.assertRefused(SC.PERMISSION_DENIED,
                           "this connection (uid 0, admin socket) has no principal, not tester: "
                           "a session cannot claim one; send an empty principal",
                           self.claim, adm, "tester")
        s = cs.Session.open(adm, d.identity, timeout=TIMEOUT)
        self.assertEqual(s.call("/coffer.v1.AdminService/ListKeys", b"")[:2], (0, ""))
        s.close()
        # A claim above the size limit is still that error, not this one.
        self.assertRefused(SC.INVALID_ARGUMENT, "principal longer than 128 bytes",
                           self.claim, ch, "p" * 129)
        self.assertTrue(d.wait_for_log('refused: principal relay (uid 65534 pid'), d.log())
        self.assertIn('OpenSession claims principal "alice"', d.log())
        # The refusals are in the trail, with the claim as the record's key.
        denied = [(x["principal"], x["key"]) for x in self.audit()
                  if x["method"].endswith("/OpenSession") and x["result"] == "PERMISSION_DENIED"]
        self.assertIn(("relay", "alice"), denied)
        self.assertIn(("tester", "alice"), denied)


if __name__ == "__main__":
    unittest.main()
