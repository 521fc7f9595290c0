#!/usr/bin/python3
"""cofferd under systemd's notification protocol (issue 18; daemon/notify.c).

The test plays the service manager: it binds an AF_UNIX datagram socket, starts a
real cofferd with NOTIFY_SOCKET naming it (and WATCHDOG_USEC where the watchdog is
tested) and reads what arrives, with the sender's pid (SO_PASSCRED):

* READY=1 with STATUS= naming both sockets, sent once both serve: at the moment
  it arrives a call on each socket succeeds at once (fail-fast, no waiting for a
  connection) and the log already says "ready:"; nothing before it. A daemon that
  fails to start sends no READY=1.
* No WATCHDOG=1 without WATCHDOG_USEC; with WATCHDOG_USEC=1 s, one every 0.5 s;
  none when WATCHDOG_PID names another process; a WATCHDOG_USEC that is not a
  number is logged. A run of scheduled rotations longer than the watchdog
  period (100 keys due at once, every 3 s) never leaves a whole period unpinged,
  and SIGTERM is still answered within seconds.
* SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, taken between the
  signal and the message) before the reload, READY=1 after it; a configuration
  with an error: READY=1 again, STATUS= saying why the reload failed.
* SIGTERM: STOPPING=1 (STATUS= says calls in flight finish), then exit 0.
* A NOTIFY_SOCKET nobody listens on: the daemon serves anyway and says once why
  the notification failed.
* In the unit's namespaces (PrivateNetwork=yes, ProcSubset=pid: a network
  namespace of its own, /proc mounted subset=pid): READY=1 still reaches the
  manager's socket and both sockets serve calls.
"""
import datetime
import os
import signal
import socket
import struct
import re
import subprocess
import sys
import time
import unittest


from daemon_fixture import CofferDaemon, health_check
from rpc_common import pb

READY_WAIT = 40.0


class Notifications:
    """The fake manager's socket: every datagram as (monotonic time, pid,
    {field: value}, raw text)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.seen = []

    def close(self):
        self.sock.close()

    FILLER = b"X-TEST-FILLER=1"

    def fill(self):
        """Fill the socket's queue (net.unix.max_dgram_qlen datagrams of our
        own) so that the next sender blocks in sendmsg until we read."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n = 0
        try:
            while True:
                s.sendto(self.FILLER, socket.MSG_DONTWAIT, self.path)
                n += 1
        except BlockingIOError:
            return n
        finally:
            s.close()

    def recv(self, timeout):
        """The next message (the fillers skipped), or None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                return None
            if data != self.FILLER:
                break
        pid = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", cdata[:12])[0]
        text = data.decode()
        fields = dict(line.split("=", 1) for line in text.split("\n") if line)
        msg = (time.monotonic(), pid, fields, text)
        self.seen.append(msg)
        return msg

    def until(self, key, timeout, proc=None):
        """Messages up to and including the first with field `key`; fails the
        test after timeout seconds or when proc exits first."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s within %.0f s; got %r" % (key, timeout, got))
            msg = self.recv(min(left, 0.5))
            if msg is None:
                if proc is not None and proc.poll() is not None:
                    raise AssertionError("cofferd exited (%d) before %s; got %r"
                                         % (proc.returncode, key, got))
                continue
            got.append(msg)
            if key in msg[2]:
                return got

    def collect(self, seconds):
        end = time.monotonic() + seconds
        got = []
        while time.monotonic() < end:
            msg = self.recv(end - time.monotonic())
            if msg is not None:
                got.append(msg)
        return got


class Daemon(CofferDaemon):
    """The fixture's daemon with extra environment (NOTIFY_SOCKET, ...)."""

    extra_env = {}

    @property
    def env(self):
        e = super().env
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            e.pop(k, None)
        e.update(self.extra_env)
        return e


def serves_now(path):
    """One call on a new channel that does not wait for the connection
    (grpc fails fast when the socket is missing or refuses)."""
    return health_check(path, timeout=2.0) == 1


class SystemdNotify(unittest.TestCase):
    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.cleanup)
        self.n = Notifications(os.path.join(self.d.dir, "notify.sock"))
        self.addCleanup(self.n.close)
        self.d.extra_env = {"NOTIFY_SOCKET": self.n.path}

    def spawn(self, hold=False):
        """Start cofferd (not waiting for health), wait for READY=1 and check,
        right then, that both sockets serve; the messages up to READY=1.
        hold: the notify socket's queue is full first, so cofferd's first
        message blocks in sendmsg until we read: both sockets must serve
        while READY=1 is still held (a READY=1 sent any earlier would hold
        the start-up and the sockets would never answer)."""
        d = self.d
        d._log_offset = os.path.getsize(d.log_path) if os.path.exists(d.log_path) else 0
        if hold:
            self.assertGreater(self.n.fill(), 0)
        d.proc = d.spawn()
        d.starts += 1
        if hold:
            d.wait_ready(READY_WAIT)
        got = self.n.until("READY", READY_WAIT, d.proc)
        self.assertTrue(serves_now(d.service_socket), "service socket not serving at READY=1")
        self.assertTrue(serves_now(d.admin_socket), "admin socket not serving at READY=1")
        self.assertIn("ready: service %s, admin %s" % (d.service_socket, d.admin_socket),
                      d.log(all_starts=False))
        for _, pid, fields, text in got:
            self.assertEqual(pid, d.pid, "message %r not from cofferd's main pid" % text)
        self.assertEqual([m[3] for m in got[:-1]], [], "messages before READY=1")
        d.identity = d.fetch_identity()
        d.ensure_principal()
        return got

    def stop(self):
        """SIGTERM, exit 0; the messages from then on end with STOPPING=1."""
        self.d.stop()
        got = [m[3] for m in self.n.collect(0.2)]
        self.assertEqual(got[-1:], ["STOPPING=1\nSTATUS=stopping: finishing calls in flight"])

    def test_ready_reload_stop(self):
        d = self.d
        got = self.spawn(hold=True)
        ready = got[-1][2]
        self.assertEqual(ready["READY"], "1")
        self.assertEqual(ready["STATUS"], "serving: service %s, admin %s"
                         % (d.service_socket, d.admin_socket))
        # Real calls on both sockets.
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="n-sign", type=pb.EC_P256), timeout=30)
        d.service_stub().Sign(pb.SignRequest(key="n-sign", message=b"x"), timeout=30)
        # No watchdog configured: nothing until the next event.
        self.assertEqual([m[3] for m in self.n.collect(2.5)], [], "unrequested messages")

        # SIGHUP: RELOADING=1 with the time it began, then READY=1.
        d.config["daemon"]["log_level"] = "debug"
        d.write_config()
        before = time.monotonic_ns() // 1000
        d.send_signal(signal.SIGHUP)
        got = self.n.until("READY", 20, d.proc)
        after = time.monotonic_ns() // 1000
        self.assertEqual(len(got), 2, [m[3] for m in got])
        rel = got[0][2]
        self.assertEqual(rel.get("RELOADING"), "1", got[0][3])
        self.assertTrue(before <= int(rel["MONOTONIC_USEC"]) <= after,
                        "MONOTONIC_USEC %s not within %d..%d" % (rel["MONOTONIC_USEC"],
                                                                before, after))
        self.assertEqual(got[1][2]["STATUS"], ready["STATUS"])
        self.assertIn("SIGHUP: reloaded %s: log_level debug" % d.conf_path, d.log())

        # A file with an error: nothing changes, READY=1 says why.
        with open(d.conf_path, "a") as f:
            f.write("[daemon]\nworkers = many\n")
        d.send_signal(signal.SIGHUP)
        got = self.n.until("READY", 20, d.proc)
        self.assertEqual([list(m[2])[0] for m in got], ["RELOADING", "READY"])
        status = got[1][2]["STATUS"]
        self.assertTrue(status.startswith(ready["STATUS"] + "; last reload failed, previous "
                                          "settings kept: %s:" % d.conf_path), status)
        self.assertIn('workers: "many" is not a number in 1..64', status)
        self.assertTrue(serves_now(d.service_socket))
        d.write_config()
        d.send_signal(signal.SIGHUP)
        got = self.n.until("READY", 20, d.proc)
        self.assertEqual(got[-1][2]["STATUS"], ready["STATUS"])

        # SIGTERM: STOPPING=1, then a clean exit.
        d.close_channels()
        d.send_signal(signal.SIGTERM)
        got = self.n.until("STOPPING", 20)
        self.assertEqual(got[-1][2], {"STOPPING": "1",
                                      "STATUS": "stopping: finishing calls in flight"})
        self.assertEqual(d.wait(30), 0, d.log())
        self.assertEqual([m[3] for m in self.n.collect(0.2)], [])

    def test_watchdog(self):
        d = self.d
        d.extra_env["WATCHDOG_USEC"] = "1000000"
        got = self.spawn()
        self.assertIn("systemd watchdog: WATCHDOG=1 every 500 ms", d.log())
        pings = [t for t, pid, f, _ in self.n.collect(5.0) if f == {"WATCHDOG": "1"}]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        # Every 0.5 s: 9 to 11 in 5 s, none late enough to trip the 1 s watchdog.
        self.assertTrue(8 <= len(pings) <= 11, "%d pings in 5 s: %r" % (len(pings), gaps))
        self.assertTrue(all(0.3 < g < 0.9 for g in gaps), "gaps %r" % gaps)
        # Pinged during calls too (the pings come from the main loop, not a
        # call's thread): a burst of calls does not hold them back.
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="w-mac", type=pb.HMAC_SHA256), timeout=30)
        svc = d.service_stub()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0:
            svc.Mac(pb.MacRequest(key="w-mac", data=b"y"), timeout=30)
        pings = [t for t, _, f, _ in self.n.collect(0.6) if f == {"WATCHDOG": "1"}]
        self.assertTrue(pings, "no ping during and after a burst of calls")
        self.stop()

        # WATCHDOG_PID names another process: the variables are not ours.
        d.extra_env["WATCHDOG_PID"] = "1"
        self.n.seen = []
        self.spawn()
        self.assertEqual([m[3] for m in self.n.collect(1.6)], [])
        self.assertNotIn("systemd watchdog", d.log(all_starts=False))
        self.stop()

        # Not a number: logged, no pings, the daemon serves.
        del d.extra_env["WATCHDOG_PID"]
        d.extra_env["WATCHDOG_USEC"] = "soon"
        self.spawn()
        self.assertIn('systemd watchdog: $WATCHDOG_USEC "soon" or $WATCHDOG_PID is not valid '
                      '(Invalid argument): no watchdog pings', d.log(all_starts=False))
        self.assertEqual([m[3] for m in self.n.collect(1.2)], [])
        self.stop()

    def test_watchdog_during_scheduled_work(self):
        """Scheduled rotations run on the periodic work's thread (chores.c),
        the pings from the main loop while that thread moves: a run of many
        (each a token key generation) longer than the watchdog period must
        not starve them, so the manager does not kill a daemon that is busy
        but progressing; and SIGTERM is answered at once meanwhile."""
        d = self.d
        keys = 100
        d.config.setdefault("keys", {})["min_rotation_period"] = "3"
        d.extra_env["WATCHDOG_USEC"] = "2000000"
        self.spawn()
        adm = d.admin_stub()
        for i in range(keys):
            adm.CreateKey(pb.CreateKeyRequest(name="wd-%03d" % i, type=pb.EC_P256,
                                              rotation_period=3), timeout=60)
        # They fall due within a second or two of each other: a tick or two
        # make them all (each a key generation and two durable commits).
        msgs = self.n.collect(0.1)
        deadline = time.monotonic() + 120
        while d.log().count(" made version 2") < keys:
            self.assertLess(time.monotonic(), deadline, "rotations not done: " + d.log()[-2000:])
            msgs += self.n.collect(0.5)
        msgs += self.n.collect(1.6)
        pings = [t for t, _, f, _ in msgs if f == {"WATCHDOG": "1"}]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        made = [datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
                for m in re.finditer(r"^(\S+)Z .*lifecycle: scheduled rotation of key wd-\d+ made version 2",
                                     d.log(), re.M)]
        span = max(made) - min(made) if made else 0.0
        print("%d rotations made over %.1f s of log time; %d pings, longest gap %.2f s"
              % (len(made), span, len(pings), max(gaps)), file=sys.stderr)
        # The run outlasted the watchdog period (else this proves nothing)...
        self.assertGreater(span, 2.0, "the rotations took %.1f s: make more keys" % span)
        # ...and the manager never waited a whole period for a ping.
        self.assertLess(max(gaps), 2.0, "gaps %r" % ["%.2f" % g for g in gaps])
        # Every key is due again every 3 s, more than the daemon makes in
        # that time: it is busy for good. SIGTERM is still answered at once
        # (each tick's scheduled work is bounded; the rest waits its turn).
        t0 = time.monotonic()
        self.stop()
        took = time.monotonic() - t0
        print("SIGTERM while rotating: exited in %.2f s" % took, file=sys.stderr)
        self.assertLess(took, 5.0)

    def test_no_ready_when_start_fails(self):
        d = self.d
        d.config["token"]["uri"] = "pkcs11:token=no-such-token"
        d.proc = d.spawn()
        rc = d.proc.wait(60)
        self.assertNotEqual(rc, 0)
        self.assertIn("token:", d.log())
        self.assertEqual([m[3] for m in self.n.collect(0.3)], [],
                         "a daemon that failed to start notified")

    def test_unit_namespaces(self):
        d = self.d
        wrapper = os.path.join(d.dir, "sandboxed-cofferd")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec unshare -m -n --propagation private sh -c 'mount -t proc "
                    "-o subset=pid,hidepid=invisible proc /proc && exec \"$0\" \"$@\"' %s \"$@\"\n"
                    % d.cofferd)
        os.chmod(wrapper, 0o755)
        r = subprocess.run([wrapper, "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest("no private network namespace or /proc subset=pid here: "
                          + r.stderr.strip())
        d.cofferd = wrapper
        got = self.spawn()
        self.assertEqual(got[-1][2]["READY"], "1")
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="ns-sign", type=pb.EC_P256), timeout=30)
        d.service_stub().Sign(pb.SignRequest(key="ns-sign", message=b"x"), timeout=30)
        self.stop()

    def test_unreachable_notify_socket(self):
        d = self.d
        gone = os.path.join(d.dir, "gone.sock")
        d.extra_env["NOTIFY_SOCKET"] = gone
        d.start()
        self.assertTrue(d.wait_for_log("systemd notification \"READY=1\" to $NOTIFY_SOCKET "
                                       "failed: No such file or directory (further failures "
                                       "are not logged)"), d.log())
        d.stop()
        self.assertEqual(d.log().count("systemd notification"), 1, d.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
