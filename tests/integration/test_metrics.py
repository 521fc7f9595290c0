#!/usr/bin/python3
"""The Prometheus endpoint (issue 18, "must show" 3): a real cofferd with
[metrics] listen set, scraped with a real Prometheus parser
(prometheus_client.parser from Debian's python3-prometheus-client).

* A burst of calls between two scrapes -- OK, unknown key, denied, rate
  limited, no principal (another uid), signed, badly signed, unsigned where a
  signature is required, sealed -- moves exactly the call counters by
  method and status and the refusal counters by reason that it should, and
  nothing else; each method's histogram counts its calls (+Inf = _count,
  buckets cumulative); token operations grow, token errors do not; a
  sealed session shows as open; the nonce record holds the signed calls'
  nonces; a scheduled rotation due in 2 s is counted once.
* An audit trail that cannot be written (RLIMIT_FSIZE on the daemon) shows
  as audit write failures and coffer_audit_healthy 0, then 1 when healed.
* Only GET (and HEAD) /metrics is served: 404 for another path, 405 (Allow:
  GET, HEAD) for another method; oversized headers are refused; a client that sends half a
  request holds up neither a call nor another scrape.
* On TCP a Host header naming another host (DNS rebinding: a page's own
  name) is answered 421 with its exact text; localhost, 127.x.x.x and [::1]
  (with or without the port) and no Host at all are served.
* Each batch item the rate limits refuse counts as one rate_limited
  refusal: items past the tokens granted, or every item of a batch refused
  whole.
* Configuration errors, with their exact text: a non-loopback address, a
  host name, no port, a bad port, a relative Unix path, the service
  socket's path; a port another process holds stops the daemon, named.
* A Unix socket listener (mode 0600 by default), served and removed at stop.
"""
import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families

from daemon_fixture import (PYTHON, SRC_DIR, CofferDaemon, Ctl, cofferd_path,  # noqa: E402
                            on_postgresql)
sys.path.insert(0, os.path.join(os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC_DIR, "build"),
                                "client", "python"))
import coffer  # noqa: E402
from rpc_common import KS, SC, TIMEOUT, pb, call_authorization  # noqa: E402

STRANGER = 65533        # a uid with no principal

# Every line of a scrape that is not a sample names a family; a counter's
# HELP and TYPE name it without _total.
FAMILIES = {
    "coffer_calls": "counter", "coffer_call_duration_seconds": "histogram",
    "coffer_refusals": "counter", "coffer_token_operations": "counter",
    "coffer_token_errors": "counter", "coffer_token_recoveries": "counter",
    "coffer_token_pool_waits": "counter", "coffer_token_pool_timeouts": "counter",
    "coffer_sealed_sessions_open": "gauge", "coffer_nonce_record_entries": "gauge",
    "coffer_nonce_record_bytes": "gauge", "coffer_audit_write_failures": "counter",
    "coffer_audit_records_lost": "counter", "coffer_audit_healthy": "gauge",
    "coffer_scheduled_work": "counter", "coffer_scheduler_lease_held": "gauge",
    "coffer_pipeline_messages": "counter", "coffer_pipeline_requests": "counter",
}
BUCKETS = ["5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
           "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def request(conn, method="GET", path="/metrics", body=None):
    """(status, headers, body text) of one request on a new connection."""
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode()
    finally:
        conn.close()


def parse(text):
    """{(sample name, ((label, value), ...)): value} of a scrape, after
    checking every family's TYPE."""
    out = {}
    for fam in text_string_to_metric_families(text):
        assert FAMILIES.get(fam.name) == fam.type, (fam.name, fam.type)
        assert fam.documentation, fam.name
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def moved(before, after, prefix):
    """{key: after - before} of the samples named prefix that changed."""
    keys = {k for k in list(before) + list(after) if k[0] == prefix}
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if after.get(k, 0) != before.get(k, 0)}


def key(service, method, code):
    return ("coffer_calls_total", (("code", code), ("method", method), ("service", service)))


def calls(sample, service, method, code):
    return sample.get(key(service, method, code), 0)


def refusal(reason):
    return ("coffer_refusals_total", (("reason", reason),))


def cofferd_config_error(d, metrics):
    """cofferd's error line for a [metrics] section, and its exit status."""
    d.config["metrics"] = metrics
    conf = d.write_config()
    r = subprocess.run([cofferd_path(), "-c", conf], capture_output=True, timeout=60,
                       env=d.env, stdin=subprocess.DEVNULL)
    lines = [ln for ln in r.stderr.decode().splitlines() if " error: " in ln]
    with open(conf) as f:
        line = 1 + [i for i, ln in enumerate(f) if ln.startswith(list(metrics)[-1] + " ")][-1]
    return r.returncode, lines[0].split(" error: ", 1)[1] if lines else "", conf, line


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.d = CofferDaemon(grant_all=False, config={
            "metrics": {"listen": "127.0.0.1:%d" % cls.port},
            "service": {"mode": "0666", "allow_uids": "%d %d" % (os.geteuid(), STRANGER)},
            "audit": {"failure": "closed", "max_wait_ms": "2000"},
            "daemon": {"log_level": "debug"}})
        try:
            cls.d.start()
        except Exception:
            cls.d.cleanup()
            raise
        cls.adm = cls.d.admin_stub()
        cls.svc = cls.d.service_stub()
        cls.adm.CreateKey(pb.CreateKeyRequest(name="m-1", type=pb.HMAC_SHA256), timeout=TIMEOUT)
        cls.adm.CreatePrincipal(pb.CreatePrincipalRequest(name="app", uids=[os.geteuid()]),
                                timeout=TIMEOUT)
        cls.adm.GrantPrincipal(pb.GrantRequest(name="app", grant=pb.Grant(
            key_pattern="m-*", operations=[pb.OP_MAC, pb.OP_VERIFY_MAC])), timeout=TIMEOUT)
        # Three VerifyMac calls, then refused (a token comes back in 1000 s).
        cls.adm.SetRateLimit(pb.SetRateLimitRequest(name="app", limit=pb.RateLimit(
            operation=pb.OP_VERIFY_MAC, per_second=0.001, burst=3)), timeout=TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.d.stop()    # exit status 0 (and, in the sanitizer build, no leak)
        finally:
            cls.d.cleanup()

    def scrape(self):
        status, headers, text = request(http.client.HTTPConnection("127.0.0.1", self.port,
                                                                   timeout=10))
        self.assertEqual(status, 200, text)
        self.assertEqual(headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
        return parse(text)

    def refused(self, code, fn, *args, **kw):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, timeout=TIMEOUT, **kw)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception.details()

    def as_stranger(self):
        """One Mac as a uid with no principal, from a child process."""
        child = ("import grpc, sys\n"
                 "ch = grpc.insecure_channel('unix:' + sys.argv[1])\n"
                 "f = ch.unary_unary('%sMac')\n"
                 "try:\n"
                 "    f(bytes.fromhex(sys.argv[2]), timeout=20)\n"
                 "    print('OK')\n"
                 "except grpc.RpcError as e:\n"
                 "    print(e.code().name)\n" % KS)
        body = pb.MacRequest(key="m-1", data=b"x").SerializeToString().hex()
        self.d.make_traversable()
        r = subprocess.run(["setpriv", "--reuid=%d" % STRANGER, "--regid=%d" % STRANGER,
                            "--clear-groups", PYTHON, "-c", child, self.d.service_socket, body],
                           capture_output=True, text=True, timeout=60, cwd="/",
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        self.assertEqual(r.stdout.strip(), "UNAUTHENTICATED", r.stderr)

    def test_0_batch_rate_limited(self):
        """Each batch item the rate limits refuse is one rate_limited refusal."""
        self.adm.CreateKey(pb.CreateKeyRequest(name="b-ec", type=pb.EC_P256), timeout=TIMEOUT)
        self.adm.GrantPrincipal(pb.GrantRequest(name="app", grant=pb.Grant(
            key_pattern="b-*", operations=[pb.OP_SIGN])), timeout=TIMEOUT)
        # Two signatures, then none for 1000 s.
        self.adm.SetRateLimit(pb.SetRateLimitRequest(name="app", limit=pb.RateLimit(
            operation=pb.OP_SIGN, per_second=0.001, burst=2)), timeout=TIMEOUT)
        batch = lambda n: pb.SignBatchRequest(key="b-ec", items=[  # noqa: E731
            pb.SignBatchItem(message=b"item %d" % i) for i in range(n)])
        before = self.scrape()
        # 5 items for 2 tokens: 2 signed, 3 refused one by one.
        r = self.svc.SignBatch(batch(5), timeout=TIMEOUT)
        self.assertEqual([it.status.code for it in r.results],
                         [0, 0] + [SC.RESOURCE_EXHAUSTED.value[0]] * 3)
        for i, it in enumerate(r.results[2:], 3):
            self.assertRegex(it.status.message, r"^rate limit of principal app for sign exceeded "
                             r"at item %d of 5 \(2 granted\); retry after \d+ ms$" % i)
        after = self.scrape()
        self.assertEqual(moved(before, after, "coffer_refusals_total"),
                         {refusal("rate_limited"): 3})
        # No token left: 4 items refused as a whole count 4, a single Sign 1.
        self.assertRegex(self.refused(SC.RESOURCE_EXHAUSTED, self.svc.SignBatch, batch(4)),
                         r"^rate limit of principal app for sign exceeded; retry after "
                         r"\d+ ms$")
        self.refused(SC.RESOURCE_EXHAUSTED, self.svc.Sign,
                     pb.SignRequest(key="b-ec", message=b"one"))
        self.assertEqual(moved(after, self.scrape(), "coffer_refusals_total"),
                         {refusal("rate_limited"): 4 + 1})

    def test_0a_sessions_ended_at_close(self):
        """Clients end their idle sessions when they close (a sealed
        CloseSession each), so these hold no room in the daemon's session
        table (session.max_sessions) until they expire: the Python package
        after sealed calls on four threads at once, and cofferctl (libcoffer)
        after a command that needs a session. Against a daemon that does not
        answer (SIGSTOP), close() gives up after its second."""
        def sessions_open():
            return self.scrape()[("coffer_sealed_sessions_open", ())]

        open0 = sessions_open()
        c = coffer.Client(self.d.service_socket, identity=self.d.identity, seal_all=True)
        together = threading.Barrier(4)

        def one(i):
            together.wait()
            return c.mac("m-1", b"closing %d" % i).mac
        with ThreadPoolExecutor(4) as ex:
            self.assertEqual([len(m) for m in ex.map(one, range(4))], [32] * 4)
        n = c.sessions_opened()
        self.assertGreaterEqual(n, 1)
        self.assertEqual(sessions_open(), open0 + n)
        c.close()
        self.assertEqual(sessions_open(), open0)

        self.adm.CreatePrincipal(pb.CreatePrincipalRequest(name="m-closer", uids=[4321]),
                                 timeout=TIMEOUT)
        Ctl(self.d)("principal", "add-key", "m-closer",
                    "--out", os.path.join(self.d.dir, "m-closer.key"))
        self.assertEqual(sessions_open(), open0)

        c = coffer.Client(self.d.service_socket, identity=self.d.identity, seal_all=True)
        c.mac("m-1", b"one session")
        os.kill(self.d.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            c.close()
            took = time.monotonic() - t0
        finally:
            os.kill(self.d.proc.pid, signal.SIGCONT)
        self.assertLess(took, 2.0)

    def test_1_burst(self):
        before = self.scrape()
        self.assertEqual(before[("coffer_scheduler_lease_held", ())], 1)
        self.assertEqual(before[("coffer_audit_healthy", ())], 1)
        sessions0 = before[("coffer_sealed_sessions_open", ())]
        nonces0 = before[("coffer_nonce_record_entries", ())]
        # Due in 2 s, then hourly: exactly one scheduled rotation in this test.
        self.adm.SetRotationSchedule(pb.SetRotationScheduleRequest(
            name="m-1", period_seconds=3600, next_rotation_time=int(time.time()) + 2),
            timeout=TIMEOUT)

        # Unsigned, as principal "app".
        mac = None
        for i in range(4):
            mac = self.svc.Mac(pb.MacRequest(key="m-1", data=b"data"), timeout=TIMEOUT).mac
        self.refused(SC.NOT_FOUND, self.svc.Mac, pb.MacRequest(key="m-nope", data=b"x"))
        for i in range(2):
            self.refused(SC.PERMISSION_DENIED, self.svc.Sign,
                         pb.SignRequest(key="m-1", message=b"x"))
        for i in range(3):
            self.assertTrue(self.svc.VerifyMac(pb.VerifyMacRequest(
                key="m-1", version=1, data=b"data", mac=mac), timeout=TIMEOUT).valid)
        for i in range(2):
            self.assertRegex(self.refused(SC.RESOURCE_EXHAUSTED, self.svc.VerifyMac,
                                       pb.VerifyMacRequest(key="m-1", version=1, data=b"data",
                                                           mac=mac)),
                             r"^rate limit of principal app for verify-mac exceeded; retry "
                             r"after \d{6} ms$")
        self.as_stranger()
        # Sealed: OpenSession, then Mac inside SessionService/Call.
        sealed = self.d.sealed_stub("service")
        self.assertEqual(len(sealed.Mac(pb.MacRequest(key="m-1", data=b"s"),
                                        timeout=TIMEOUT).mac), 32)
        mid = self.scrape()
        self.assertEqual(mid[("coffer_sealed_sessions_open", ())], sessions0 + 1)

        # Signed: once app has an API key, every call of app must be signed.
        sealed_admin = self.d.sealed_stub(kind="admin", service="AdminService")
        k = sealed_admin.CreateApiKey(pb.CreateApiKeyRequest(principal="app"), timeout=TIMEOUT)
        for i in range(2):
            req = pb.MacRequest(key="m-1", data=b"signed %d" % i)
            self.svc.Mac(req, timeout=TIMEOUT, metadata=[("authorization", call_authorization(
                k.key.id, k.secret, KS + "Mac", req.SerializeToString()))])
        req = pb.MacRequest(key="m-1", data=b"tampered")
        self.refused(SC.UNAUTHENTICATED, self.svc.Mac, req, metadata=[(
            "authorization", call_authorization(k.key.id, b"\0" * 32, KS + "Mac",
                                                req.SerializeToString()))])
        self.refused(SC.UNAUTHENTICATED, self.svc.Mac, req)

        deadline = time.monotonic() + 15
        while True:
            after = self.scrape()
            rot = ("coffer_scheduled_work_total", (("result", "ok"), ("work", "rotate")))
            if after[rot] - before[rot] >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)

        K, A, S_ = "coffer.v1.KeyService", "coffer.v1.AdminService", "coffer.v1.SessionService"
        expected_calls = {
            key(A, "SetRotationSchedule", "OK"): 1,
            key(K, "Mac", "OK"): 4 + 1 + 2,          # unsigned, sealed, signed
            key(K, "Mac", "NOT_FOUND"): 1,
            key(K, "Mac", "UNAUTHENTICATED"): 1 + 2,  # no principal; bad and no signature
            key(K, "Sign", "PERMISSION_DENIED"): 2,
            key(K, "VerifyMac", "OK"): 3,
            key(K, "VerifyMac", "RESOURCE_EXHAUSTED"): 2,
            key(S_, "OpenSession", "OK"): 2,          # the service and the admin session
            key(S_, "Call", "OK"): 2,                 # the sealed Mac and CreateApiKey
            key(A, "CreateApiKey", "OK"): 1,
        }
        self.assertEqual(moved(before, after, "coffer_calls_total"), expected_calls)
        self.assertEqual(moved(before, after, "coffer_refusals_total"), {
            refusal("no_principal"): 1, refusal("unauthenticated"): 2, refusal("denied"): 2,
            refusal("rate_limited"): 2})

        # Each method's histogram: its calls, cumulative buckets, +Inf = _count.
        per_method = {}
        for (name, labels), v in expected_calls.items():
            lab = dict(labels)
            m = (lab["service"], lab["method"])
            per_method[m] = per_method.get(m, 0) + v
        hist = {}
        for (name, labels), v in after.items():
            if name.startswith("coffer_call_duration_seconds"):
                lab = dict(labels)
                hist.setdefault((lab["service"], lab["method"]), {})[
                    (name, lab.get("le"))] = v
        for m, h in hist.items():
            counts = [h[("coffer_call_duration_seconds_bucket", le)] for le in BUCKETS]
            self.assertEqual(counts, sorted(counts), m)
            self.assertEqual(counts[-1], h[("coffer_call_duration_seconds_count", None)], m)
            self.assertGreater(h[("coffer_call_duration_seconds_sum", None)], 0, m)
            n0 = before.get(("coffer_call_duration_seconds_count",
                             (("method", m[1]), ("service", m[0]))), 0)
            self.assertEqual(counts[-1] - n0, per_method.get(m, 0), m)
        for m in per_method:
            self.assertIn(m, hist)

        ops = after[("coffer_token_operations_total", ())] - \
            before[("coffer_token_operations_total", ())]
        self.assertGreaterEqual(ops, 7 + 3)      # every Mac and VerifyMac that ran
        self.assertEqual(after[("coffer_token_errors_total", ())],
                         before[("coffer_token_errors_total", ())])
        self.assertEqual(after[("coffer_nonce_record_entries", ())], nonces0 + 2)
        # The record's file (none on PostgreSQL, where the record is a table).
        if on_postgresql():
            self.assertEqual(after[("coffer_nonce_record_bytes", ())], 0)
        else:
            self.assertGreater(after[("coffer_nonce_record_bytes", ())],
                               before[("coffer_nonce_record_bytes", ())])
        self.assertEqual(moved(before, after, "coffer_scheduled_work_total"), {rot: 1})
        self.assertIn("lifecycle: scheduled rotation of key m-1 made version 2", self.d.log())
        for name in ("coffer_audit_write_failures_total", "coffer_audit_records_lost_total",
                     "coffer_token_pool_timeouts_total", "coffer_token_recoveries_total"):
            self.assertEqual(after[(name, ())], before[(name, ())], name)

    def test_2_audit_failure(self):
        """A trail that cannot be written: counted, and healthy again after."""
        path = os.path.join(self.d.state_dir, "audit.log")
        before = self.scrape()
        time.sleep(0.3)     # the idle seal lands before the fault
        _, hard = resource.prlimit(self.d.pid, resource.RLIMIT_FSIZE)
        try:
            resource.prlimit(self.d.pid, resource.RLIMIT_FSIZE, (os.path.getsize(path), hard))
        except (OSError, AttributeError) as e:
            self.skipTest("cannot set RLIMIT_FSIZE on the daemon: %s" % e)
        try:
            # Admin calls: app must sign its calls now (test_1_burst).
            self.assertIn("audit trail cannot be written", self.refused(
                SC.UNAVAILABLE, self.adm.GetKey, pb.GetKeyRequest(name="m-1")))
            during = self.scrape()
        finally:
            resource.prlimit(self.d.pid, resource.RLIMIT_FSIZE, (hard, hard))
        self.assertEqual(during[("coffer_audit_healthy", ())], 0)
        self.assertGreaterEqual(during[("coffer_audit_write_failures_total", ())] -
                                before[("coffer_audit_write_failures_total", ())], 1)
        self.assertGreaterEqual(during[("coffer_audit_records_lost_total", ())] -
                                before[("coffer_audit_records_lost_total", ())], 1)
        self.assertEqual(calls(during, "coffer.v1.AdminService", "GetKey", "UNAVAILABLE") -
                         calls(before, "coffer.v1.AdminService", "GetKey", "UNAVAILABLE"), 1)
        deadline = time.monotonic() + 10
        while self.scrape()[("coffer_audit_healthy", ())] != 1:
            self.assertLess(time.monotonic(), deadline, self.d.log())
            time.sleep(0.2)

    def test_3_only_get_metrics(self):
        conn = lambda: http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)  # noqa
        for path in ("/", "/metrics/", "/metricsx", "/../metrics", "/debug"):
            status, _, body = request(conn(), path=path)
            self.assertEqual((status, body), (404, "not found: this endpoint serves GET "
                                                   "/metrics only\n"), path)
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE"):
            status, headers, body = request(conn(), method=method, body=b"x" * 100)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers["Allow"], "GET, HEAD", method)
            self.assertEqual(body, "method not allowed: this endpoint serves GET "
                                   "/metrics only\n", method)
        # HEAD: GET's status and headers, no body (RFC 9110 9.3.2).
        status, headers, body = request(conn(), method="HEAD")
        self.assertEqual((status, body), (200, ""))
        self.assertEqual(headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
        self.assertGreater(int(headers["Content-Length"]), 1000)
        # A query string is not part of the path.
        self.assertEqual(request(conn(), path="/metrics?name=x")[0], 200)
        # Headers beyond the bound: refused, not buffered.
        c = conn()
        c.putrequest("GET", "/metrics")
        c.putheader("X-Big", "a" * (64 << 10))
        try:
            c.endheaders()
            status = c.getresponse().status
        except (ConnectionError, http.client.HTTPException):
            status = None     # closed without an answer: refused too
        finally:
            c.close()
        self.assertIn(status, (None, 413, 414, 431))
        # Half a request held open holds up neither a call nor a scrape.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /metr")
            t = time.monotonic()
            self.scrape()
            self.adm.ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
            self.assertLess(time.monotonic() - t, 4)

    def test_3c_trickled_requests_cut_off(self):
        """MHD's own timeout is one of silence: a byte every second kept a
        connection for hours, and 16 of them shut every scrape out. Each
        request now has 5 s to arrive whole."""
        socks, t0 = [], time.monotonic()
        try:
            for _ in range(16):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                s.sendall(b"GET /metrics HTTP/1.1\r\n")
                socks.append(s)
            closed = {}
            while len(closed) < len(socks) and time.monotonic() - t0 < 20:
                for i, s in enumerate(socks):
                    if i in closed:
                        continue
                    try:
                        s.sendall(b"X")
                        s.setblocking(False)
                        try:
                            gone = s.recv(1) == b""
                        except BlockingIOError:
                            gone = False
                        finally:
                            s.setblocking(True)
                    except OSError:
                        gone = True
                    if gone:
                        closed[i] = time.monotonic() - t0
                time.sleep(0.5)
            self.assertEqual(len(closed), 16, "connections still open after 20 s")
            self.assertLess(max(closed.values()), 7.5, closed)
            self.assertGreater(min(closed.values()), 4.0, closed)
            self.scrape()
        finally:
            for s in socks:
                s.close()

    def test_3b_host_header(self):
        """On TCP, only a Host naming this host (DNS rebinding: a page's own name)."""
        def get(host):
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                c.putrequest("GET", "/metrics", skip_host=True)
                c.putheader("Host", host)
                c.endheaders()
                r = c.getresponse()
                return r.status, r.read().decode()
            finally:
                c.close()

        refusal_text = ("misdirected request: this endpoint answers Host localhost, "
                        "127.0.0.0/8 or [::1] only\n")
        for host in ("evil.example", "evil.example:%d" % self.port, "127.0.0.1.evil.example",
                     "localhost.evil.example", "127.0.0.1:%d.evil.example" % self.port,
                     "[::1].evil.example", "[::2]:%d" % self.port, "10.0.0.1", "",
                     ":%d" % self.port, "localhost:99999", "localhost:"):
            self.assertEqual(get(host), (421, refusal_text), host)
        self.assertIn('metrics: refused a request for Host "evil.example": not localhost or a '
                      "loopback address (a web page's name re-pointed at this host?)",
                      self.d.log())
        for host in ("127.0.0.1:%d" % self.port, "127.0.0.1", "localhost",
                     "localhost:%d" % self.port, "LocalHost", "127.3.2.1:%d" % self.port,
                     "[::1]:%d" % self.port, "[::1]"):
            status, text = get(host)
            self.assertEqual(status, 200, (host, text))
            self.assertIn("coffer_calls_total", text, host)
        # No Host at all (HTTP/1.0): served.
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            with s.makefile("rb") as f:
                data = f.read()     # to the end: the server closes after an HTTP/1.0 answer
        self.assertTrue(data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200"),
                        data[:200])

    def test_4_config_errors(self):
        d = CofferDaemon(grant_all=False)
        self.addCleanup(d.cleanup)
        d.init_token()
        tail = ("the metrics endpoint has no authentication, so it listens on 127.0.0.0/8, "
                "[::1] or a Unix socket (unix:/path) only")
        cases = [
            ("0.0.0.0:9464", '"0.0.0.0:9464" is not a loopback address: ' + tail),
            ("192.168.1.10:9464", '"192.168.1.10:9464" is not a loopback address: ' + tail),
            ("[::]:9464", '"[::]:9464" is not a loopback address: ' + tail),
            ("localhost:9464", '"localhost:9464": "localhost" is not a numeric IPv4 address '
                               "(host names are not looked up; [IPv6] goes in brackets)"),
            ("127.0.0.1", '"127.0.0.1" has no port: give 127.0.0.1:PORT, [::1]:PORT or '
                          "unix:/path"),
            ("127.0.0.1:0", '"127.0.0.1:0": the port must be a number in 1..65535'),
            ("127.0.0.1:70000", '"127.0.0.1:70000": the port must be a number in 1..65535'),
            ("::1:9464", '"::1:9464": "::1" is not a numeric IPv4 address (host names are not '
                         "looked up; [IPv6] goes in brackets)"),
            ("unix:metrics.sock", '"unix:metrics.sock": a Unix socket needs an absolute path '
                                  "(unix:/run/coffer/metrics.sock)"),
            ("127.0.0.1." + "a" * 70 + ":9464",
             '"127.0.0.1.%s": the address before the port is longer than any numeric '
             "address (80 bytes); host names are not looked up" % ("a" * 70 + ":9464")[:70]),
        ]
        for value, text in cases:
            rc, err, conf, line = cofferd_config_error(d, {"listen": value})
            self.assertEqual(rc, 2, value)
            self.assertEqual(err, "configuration: %s:%d: [metrics] listen: %s" % (conf, line, text))
        rc, err, conf, _ = cofferd_config_error(d, {"listen": "unix:" + d.service_socket})
        self.assertEqual((rc, err), (2, "configuration: [metrics] listen names the service "
                                        "socket's path; give the metrics endpoint its own"))
        # A Unix path that is a file, not a socket (a typo onto the state
        # database, say): the daemon does not start, the file stays.
        precious = os.path.join(d.dir, "precious.txt")
        with open(precious, "w") as f:
            f.write("keep me\n")
        rc, err, _, _ = cofferd_config_error(d, {"listen": "unix:" + precious})
        self.assertEqual((rc, err), (1, "metrics socket path %s exists and is not a socket; "
                                        "it is left as it is: choose another path, or move "
                                        "that file away" % precious))
        with open(precious) as f:
            self.assertEqual(f.read(), "keep me\n")
        # A port another process holds: the daemon does not start, and says why.
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            addr = "127.0.0.1:%d" % busy.getsockname()[1]
            rc, err, _, _ = cofferd_config_error(d, {"listen": addr})
        self.assertEqual((rc, err), (1, "metrics: cannot listen on %s: Address already in use"
                                        % addr))

    def test_5_unix_socket(self):
        d = CofferDaemon()
        self.addCleanup(d.cleanup)
        path = os.path.join(d.dir, "run", "metrics.sock")
        d.config["metrics"] = {"listen": "unix:" + path}
        d.start()
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertIn("metrics: serving GET /metrics on unix:" + path, d.log())
        d.service_stub().ListKeys(pb.ListKeysRequest(), timeout=TIMEOUT)
        status, headers, text = request(UnixHTTP(path))
        self.assertEqual(status, 200, text)
        s = parse(text)
        self.assertEqual(calls(s, "coffer.v1.KeyService", "ListKeys", "OK"), 1)
        self.assertEqual(request(UnixHTTP(path), method="POST")[0], 405)
        self.assertEqual(request(UnixHTTP(path), path="/x")[0], 404)
        d.stop()
        self.assertFalse(os.path.exists(path))
        # Off by default: no [metrics], no endpoint.
        del d.config["metrics"]
        d.start()
        self.assertNotIn("metrics: serving", d.log(all_starts=False))
        self.assertFalse(os.path.exists(path))


if __name__ == "__main__":
    unittest.main(verbosity=2)
