#!/usr/bin/python3
"""cofferd as a process (issue 14, defects 7, 8, 9 and three of 12).

* SIGHUP re-reads the configuration file: the log level and the sockets'
  allow-lists apply to what comes next, a changed socket path, [metrics]
  listen or [requests] max_nonces_per_key is logged as needing a restart, a
  bad file is logged and changes nothing; the daemon keeps serving (it used
  to die of SIGHUP).
* The state database removed or replaced under the running daemon: every
  change is refused UNAVAILABLE with a message naming the file, it is logged
  once, health says NOT_SERVING.
* A full disk under the state database: the refusal names the cause
  ("database or disk is full"), not the failed ROLLBACK after it.
* SIGTERM with an idle client connection open exits at once.
* Health for coffer.v1.SessionService is SERVING on both sockets.
* A flood of connections that never speak does not lock good clients out
  (the listen backlog is the system's maximum).
"""
import errno
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, health_check, skip_test_on_postgresql  # noqa: E402
from rpc_common import SC, TIMEOUT, S, pb  # noqa: E402

SERVING = S.health_pb.HealthCheckResponse.SERVING
NOT_SERVING = S.health_pb.HealthCheckResponse.NOT_SERVING


def fresh_health(path, timeout):
    """Health/Check on a new connection (grpcio would otherwise reuse an open
    one to the same socket: the allow-list is checked at accept)."""
    h = S.health_pb
    with grpc.insecure_channel("unix:" + path,
                               options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=h.HealthCheckRequest.SerializeToString,
                               response_deserializer=h.HealthCheckResponse.FromString)
        return check(h.HealthCheckRequest(), timeout=timeout).status


def mount_tmpfs(test, path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        test.skipTest("cannot mount a tmpfs (needs root and mount(2)): %s" % r.stderr.strip())
    test.addCleanup(subprocess.run, ["umount", "-l", path])


class Process(unittest.TestCase):
    def daemon(self, **kw):
        d = CofferDaemon(**kw)
        self.addCleanup(d.cleanup)
        return d

    def refused(self, fn, code, text):
        with self.assertRaises(grpc.RpcError) as cm:
            fn()
        if isinstance(code, tuple):
            self.assertIn(cm.exception.code(), code, cm.exception.details())
        else:
            self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn(text, cm.exception.details())
        return cm.exception.details()

    # ---- 7: SIGHUP ----

    def reload(self, d, expect):
        before = d.log().count(expect)
        d.write_config()
        d.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while d.log().count(expect) <= before:
            self.assertTrue(d.running, "cofferd died of SIGHUP; log:\n" + d.log())
            self.assertLess(time.monotonic(), deadline, "no %r in the log:\n%s" % (expect, d.log()))
            time.sleep(0.05)
        self.assertTrue(d.running)
        time.sleep(0.1)   # the log level applies just after that line

    def test_sighup_reloads(self):
        d = self.daemon()
        d.start()
        conf = d.conf_path
        # The request window, seen through a signed request 120 s old: valid
        # under the default 300 s, expired once the window is 60 s, on a
        # connection open before the reload.
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="api", type=pb.HMAC_SHA256),
                                 timeout=TIMEOUT)
        svc = d.service_stub()

        def verify_old(nonce):
            parts = pb.HttpRequestParts(key="api", method="GET", path="/x", canonical_query="",
                                        body_sha256=bytes(32), timestamp=int(time.time()) - 120,
                                        nonce=nonce)
            sig = svc.SignHttpRequest(pb.SignHttpRequestRequest(request=parts),
                                      timeout=TIMEOUT).signature
            return svc.VerifyRequestSignature(pb.VerifyRequestSignatureRequest(
                request=parts, signature=sig), timeout=TIMEOUT).verdict

        self.assertEqual(verify_old("window-nonce-0001"), pb.VALID)
        d.config["requests"] = {"window": "60"}
        self.reload(d, "SIGHUP: reloaded %s: log_level info, shutdown_grace_ms 10000, "
                    "[requests] window 60" % conf)
        self.assertEqual(verify_old("window-nonce-0002"), pb.EXPIRED)
        # Allow-list: only nobody on the service socket; new connections
        # from us are refused, and so is the next call on the one already
        # open (before, it went on serving: a revocation that did not
        # revoke); the admin socket is untouched.
        d.config["service"]["allow_uids"] = "65534"
        self.reload(d, "SIGHUP: reloaded %s: log_level info, shutdown_grace_ms 10000, "
                    "[requests] window 60, service allow-list 1 uids 0 gids, admin allow-list "
                    "1 uids 0 gids" % conf)
        with self.assertRaises(grpc.RpcError) as cm:
            fresh_health(d.service_socket, 2)
        self.assertEqual(cm.exception.code(), SC.UNAVAILABLE)
        self.assertTrue(d.wait_for_log("service socket: refused connection from uid %d gid %d"
                                       % (os.geteuid(), os.getegid())), d.log())
        with self.assertRaises(grpc.RpcError) as cm:
            verify_old("window-nonce-0003")
        self.assertEqual(cm.exception.code(), SC.PERMISSION_DENIED)
        self.assertEqual(cm.exception.details(),
                         "uid %d gid %d is no longer on the service socket's allow-list (a "
                         "reload changed it): this connection serves no more calls"
                         % (os.geteuid(), os.getegid()))
        self.assertEqual(fresh_health(d.admin_socket, 5), SERVING)
        # Log level error: the next refusal (a warning) is not logged.
        d.config["daemon"]["log_level"] = "error"
        d.config["daemon"]["shutdown_grace_ms"] = "3000"
        self.reload(d, "SIGHUP: reloaded %s: log_level error, shutdown_grace_ms 3000, "
                    "[requests] window 60" % conf)
        warned = d.log().count("refused connection from uid")
        with self.assertRaises(grpc.RpcError):
            fresh_health(d.service_socket, 2)
        time.sleep(0.3)
        self.assertEqual(d.log().count("refused connection from uid"), warned, d.log())
        # A bad file: logged with its error (at error level), nothing changes.
        with open(conf, "a") as f:
            f.write("[daemon]\nworkers = abc\n")
        d.send_signal(signal.SIGHUP)
        self.assertTrue(d.wait_for_log(
            "SIGHUP: configuration not reloaded, nothing changed: %s:" % conf), d.log())
        self.assertIn('[daemon] workers: "abc" is not a number in 1..64', d.log())
        self.assertTrue(d.running)
        with self.assertRaises(grpc.RpcError):
            fresh_health(d.service_socket, 2)
        # Back to info and the default allow-list; a socket path that cannot
        # change without a restart is named, the old socket keeps serving.
        d.config["daemon"]["log_level"] = "info"
        del d.config["service"]["allow_uids"]
        d.config["admin"]["path"] = os.path.join(d.run_dir, "other.sock")
        self.reload(d, "SIGHUP: [admin] path changed in %s: needs a restart (the running "
                    "daemon keeps the old value)" % conf)
        self.assertEqual(fresh_health(d.service_socket, 5), SERVING)
        self.assertEqual(fresh_health(d.admin_socket, 5), SERVING)
        self.assertFalse(os.path.exists(os.path.join(d.run_dir, "other.sock")))
        d.config["admin"]["path"] = d.admin_socket
        # [metrics] and the nonce limit per key are set up at start too:
        # named, and no endpoint appears.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        d.config["metrics"] = {"listen": "127.0.0.1:%d" % port}
        d.config["requests"]["max_nonces_per_key"] = "5000"
        d.config.setdefault("state", {})["wait_ms"] = "5000"
        self.reload(d, "SIGHUP: [metrics] listen changed in %s: needs a restart (the running "
                    "daemon keeps the old value)" % conf)
        for what in ("[requests] max_nonces_per_key", "[state] wait_ms"):
            self.assertIn("SIGHUP: %s changed in %s: needs a restart (the running daemon "
                          "keeps the old value)" % (what, conf), d.log())
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        self.assertNotIn("metrics: serving", d.log())
        del d.config["metrics"]
        del d.config["requests"]["max_nonces_per_key"]
        del d.config["state"]["wait_ms"]
        d.write_config()
        d.stop()
        self.assertIn("SIGTERM: finishing calls in flight", d.log())

    # ---- 8: the state database removed or replaced ----

    def check_db_gone(self, d, how):
        db = os.path.join(d.state_dir, "coffer.db")
        text = ("the state database %s was removed or replaced while cofferd ran; restart "
                "cofferd after restoring it; refusing changes" % db)
        adm = d.admin_stub()
        for name in ("after-1", "after-2"):
            self.refused(lambda: adm.CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256),
                                               timeout=TIMEOUT), SC.UNAVAILABLE, text)
        self.refused(lambda: adm.RotateKey(pb.RotateKeyRequest(name="before"), timeout=TIMEOUT),
                     SC.UNAVAILABLE, text)
        # Reads still answer from what the daemon holds.
        self.assertEqual(adm.GetKey(pb.GetKeyRequest(name="before"), timeout=TIMEOUT).name,
                         "before")
        for sock in (d.service_socket, d.admin_socket):
            self.assertEqual(health_check(sock, timeout=5), NOT_SERVING)
        line = ("error: state store: the state database %s was %s while cofferd ran; refusing "
                "every change until cofferd is restarted with it restored" % (db, how))
        self.assertEqual(d.log().count(line), 1, d.log())

    DB_FILE_SKIP = ("the state is not a file under state_dir on PostgreSQL (a server that "
                    "goes away is the PostgreSQL backend's own test)")

    def test_db_removed(self):
        skip_test_on_postgresql("state database file removed", self.DB_FILE_SKIP)
        d = self.daemon()
        d.start()
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="before", type=pb.EC_P256), timeout=TIMEOUT)
        os.unlink(os.path.join(d.state_dir, "coffer.db"))
        self.check_db_gone(d, "removed")

    def test_db_replaced(self):
        skip_test_on_postgresql("state database file replaced", self.DB_FILE_SKIP)
        d = self.daemon()
        d.start()
        adm = d.admin_stub()
        adm.CreateKey(pb.CreateKeyRequest(name="before", type=pb.EC_P256), timeout=TIMEOUT)
        db = os.path.join(d.state_dir, "coffer.db")
        shutil.copyfile(db, db + ".new")
        os.rename(db + ".new", db)
        self.check_db_gone(d, "replaced")

    # ---- 9: a full disk ----

    def test_disk_full_names_the_cause(self):
        skip_test_on_postgresql("state database on a full file system",
                                "the database is a symlinked SQLite file on a small tmpfs; "
                                "PostgreSQL keeps its files in its own data directory")
        work = tempfile.mkdtemp(prefix="coffer-full-")
        self.addCleanup(shutil.rmtree, work, True)
        d = self.daemon(workdir=work)
        # Only the database (and its WAL, which SQLite keeps beside the
        # symlink's target) on the tiny file system: the audit trail stays
        # writable, so what answers is the store.
        small = os.path.join(work, "small")
        mount_tmpfs(self, small, "16m")
        os.makedirs(d.state_dir, exist_ok=True)
        os.symlink(os.path.join(small, "coffer.db"), os.path.join(d.state_dir, "coffer.db"))
        d.start()
        self.assertTrue(os.path.exists(os.path.join(small, "coffer.db-wal")),
                        "SQLite did not put the WAL beside the database: %s" % os.listdir(small))
        filler = os.path.join(small, "filler")
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
        adm = d.admin_stub()
        try:
            details = self.refused(
                lambda: adm.CreatePrincipal(pb.CreatePrincipalRequest(
                    name="p" * 60, uids=list(range(100000, 100064))), timeout=TIMEOUT),
                (SC.INTERNAL, SC.UNAVAILABLE, SC.RESOURCE_EXHAUSTED),
                "database or disk is full")
            # The statement that hit the full disk (here the commit), then
            # SQLite's text for SQLITE_FULL; never the failed ROLLBACK after.
            self.assertRegex(details, r"^state store: [a-z' ]+: database or disk is full$")
        finally:
            os.unlink(filler)
        adm.CreatePrincipal(pb.CreatePrincipalRequest(name="p" * 60, uids=[100000]),
                            timeout=TIMEOUT)

    # ---- 12: SIGTERM, health, backlog ----

    def test_sigterm_with_idle_connection_is_prompt(self):
        d = self.daemon()
        d.start()
        ch = grpc.insecure_channel("unix:" + d.service_socket)
        self.addCleanup(ch.close)
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=S.health_pb.HealthCheckRequest.SerializeToString,
                               response_deserializer=S.health_pb.HealthCheckResponse.FromString)
        self.assertEqual(check(S.health_pb.HealthCheckRequest(), timeout=5).status, SERVING)
        t0 = time.monotonic()
        d.send_signal(signal.SIGTERM)
        self.assertEqual(d.wait(10), 0)
        took = time.monotonic() - t0
        self.assertLess(took, 1.0, "SIGTERM with an idle connection took %.2f s" % took)
        self.assertNotIn("grace period over", d.log())

    def test_health_names_every_served_service(self):
        d = self.daemon()
        d.start()
        for sock, own, other in ((d.service_socket, "coffer.v1.KeyService",
                                  "coffer.v1.AdminService"),
                                 (d.admin_socket, "coffer.v1.AdminService",
                                  "coffer.v1.KeyService")):
            for svc in ("", own, "coffer.v1.SessionService", "grpc.health.v1.Health"):
                self.assertEqual(health_check(sock, svc, timeout=5), SERVING, (sock, svc))
            with self.assertRaises(grpc.RpcError) as cm:
                health_check(sock, other, timeout=5)
            self.assertEqual(cm.exception.code(), SC.NOT_FOUND)
            self.assertEqual(cm.exception.details(), 'no service "%s" on this socket' % other)

    def cpu_s(self, pid):
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def test_out_of_descriptors_backs_off(self):
        """cofferd out of file descriptors with connections waiting: the
        accept thread tries again every 100 ms, logs it once, and a client
        is served again once descriptors are free. Before, accept4
        failed with the connection still queued, poll reported it at once,
        and the thread spun a core logging a line per pass (review)."""
        if shutil.which("prlimit") is None:
            self.skipTest("prlimit not found")
        d = self.daemon()
        d.start()
        pid = d.pid
        base = len(os.listdir("/proc/%d/fd" % pid))
        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=%d:%d" % (base + 8, base + 8)],
                       check=True)
        flood = []
        self.addCleanup(lambda: [c.close() for c in flood])
        for _ in range(40):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(d.service_socket)
            except BlockingIOError:
                pass
            flood.append(c)
        time.sleep(0.5)
        cpu0, t0 = self.cpu_s(pid), time.monotonic()
        time.sleep(2.0)
        cpu = (self.cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        lines = d.log(all_starts=False).count("service socket: accept: Too many open files")
        print("\nout of descriptors: %.2f CPUs for 2 s, %d log line(s)" % (cpu, lines),
              flush=True)
        self.assertLess(cpu, 0.3)
        self.assertEqual(lines, 1, d.log()[-3000:])
        self.assertIn("service socket: accept: Too many open files: connections wait; trying "
                      "again every 100 ms", d.log(all_starts=False))
        # The flood gone (its connections closed, their descriptors freed),
        # a new client is served under the same limit.
        for c in flood:
            c.close()
        flood.clear()
        self.assertEqual(fresh_health(d.admin_socket, 10), SERVING)

    def test_connection_flood_leaves_room(self):
        with open("/proc/sys/net/core/somaxconn") as f:
            somaxconn = int(f.read())
        n = min(2000, somaxconn - 16)
        if n < 1000:
            self.skipTest("net.core.somaxconn is %d: too small to tell a 128 backlog apart"
                          % somaxconn)
        d = self.daemon()
        d.start()
        flood = []
        self.addCleanup(lambda: [s.close() for s in flood])
        # Stopped, the daemon accepts nothing: every connection waits in the
        # backlog, as under a flood faster than the accept thread.
        d.send_signal(signal.SIGSTOP)
        try:
            refused = 0
            for _ in range(n):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(d.service_socket)
                except BlockingIOError:
                    refused += 1
                flood.append(s)
            result = {}

            def good():
                try:
                    result["status"] = fresh_health(d.service_socket, 15)
                except grpc.RpcError as e:
                    result["error"] = "%s %s" % (e.code(), e.details())

            t = threading.Thread(target=good)
            t.start()
            time.sleep(1.0)
        finally:
            d.send_signal(signal.SIGCONT)
        t.join(30)
        self.assertEqual(result, {"status": SERVING})
        self.assertEqual(refused, 0, "%d of %d idle connections refused by the backlog"
                         % (refused, n))
        for s in flood:
            s.close()
        flood.clear()
        d.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
