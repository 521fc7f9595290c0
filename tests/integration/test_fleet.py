#!/usr/bin/python3
"""A fleet (issue 16, "Must show" 2, 3 and 4): three cofferd replicas, one
PostgreSQL server (tests/support/pg_server.sh, started for this module and
stopped at exit), one SoftHSM2 token directory. Replica r1's fixture makes the
token; r2 and r3 use it ([token] uri, pin_file, SOFTHSM2_CONF) with
[token] lock_file = <token dir>/coffer.lock; each replica has its own state
dir and sockets, and [state] backend = postgresql, dsn = host=<socket dir>
dbname=coffer_fleet, replica = r1 | r2 | r3.

 1 replays      N API-key signed calls (KeyService/Mac) and N REST request
                signatures (KeyService/VerifyRequestSignature, itself a
                signed call) round-robin over the replicas, each replayed to
                another replica, half of them at the same moment, half after
                the answer: every nonce accepted exactly once, the replay
                refused as replayed (COFFER_FLEET_N, default 10,000 each;
                the rate is printed)
 2 idempotency  16 concurrent duplicates of one RotateKey (one
                idempotency-key) spread over the replicas, three rounds: one
                new version, one answer for all; the key again on every
                replica: the same answer
 3 scheduled    a key with a 3 s rotation period while three replicas run
                ([keys] min_rotation_period = 1): one version per due period
                (versions contiguous, consecutive create times at least a
                period apart and at most a period + 2 s), each scheduled
                rotation logged once, by one replica, the only one that ever
                said "fleet: this replica (...) now does the scheduled work"
 4 revocation   20 times: an API key made on one replica, revoked on it, and
                the two others polled with signed calls until they refuse it:
                p50/max of the propagation time printed, max <= 1 s
 5 kill -9      the scheduled-work holder killed with SIGKILL at random
                moments (and restarted) during 200 idempotent rotations
                driven through the two others (one in four sent to the
                victim while it runs, retried elsewhere with its key when it
                dies), while the holder also rotates a 1 s-period key:
                versions 1..N contiguous with N = 1 + rotations on every
                replica, each answer its own version, repeats answered alike;
                the lease moves to another replica after the holder's kill
                (log, delay printed); afterwards crash_check's token
                invariants over the registry read from PostgreSQL: no orphan
                or missing token object, no intent left
 6 outage       PostgreSQL stopped for 10 s under load (signed calls, REST
                signatures, rotations with idempotency keys, health checks):
                every refused call is UNAVAILABLE naming PostgreSQL; no
                wrong answer (a fresh REST nonce never called replayed, every
                accepted nonce refused when replayed afterwards, rotations
                retried with their keys give versions 1..N once each);
                health NOT_SERVING during the outage; after the server is
                back every replica (same process) answers health SERVING,
                signed calls, REST signatures and rotations

Environment: COFFER_FLEET_N (default 10000), COFFER_FLEET_ROTATIONS (200),
COFFER_FLEET_SEED (16), and those of daemon_fixture.
Run:  /usr/bin/python3 tests/integration/test_fleet.py [-v] [Fleet.test_...]
      ctest --test-dir build -R test_fleet_replicas -V   (test_fleet: the C test)
"""
import atexit
import calendar
import collections
import concurrent.futures
import contextlib
import hashlib
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import crash_check  # noqa: E402
import test_systemd_notify as tsn  # noqa: E402  (its fake manager's socket)
from crash_harness import CrashDaemon, crash_points, meta, normalize, sealed_call  # noqa: E402
from daemon_fixture import SRC_DIR, health_check, psql  # noqa: E402
from rpc_common import KS, SC, pb, call_authorization  # noqa: E402
from test_request_signing import sign as rest_sign  # noqa: E402

N = int(os.environ.get("COFFER_FLEET_N", "10000"))
ROTATIONS = int(os.environ.get("COFFER_FLEET_ROTATIONS", "200"))
SEED = int(os.environ.get("COFFER_FLEET_SEED", "16"))
T = 30                        # seconds per call
DB = "coffer_fleet"
REPLICAS = ("r1", "r2", "r3")
PG_SERVER = os.path.join(SRC_DIR, "tests", "support", "pg_server.sh")
SERVING, NOT_SERVING = 1, 2

LEASE_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z \S+\[(\d+)\] \w+: "
                      r"fleet: this replica \(([^)]*)\) now does the scheduled work")
SCHED_RE = re.compile(r"lifecycle: scheduled rotation of key (\S+) made version (\d+)")


def log_time(stamp):
    """A cf_log time stamp (UTC, milliseconds) as seconds since the epoch."""
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + \
        int(stamp[20:23]) / 1000.0


def pctl(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


class PgServer:
    """The module's PostgreSQL server, through tests/support/pg_server.sh."""

    def __init__(self, top):
        self.dir = os.path.join(top, "pg")
        self.host = None
        self.up = False

    def _run(self, *args):
        r = subprocess.run(["/bin/bash", PG_SERVER] + list(args), capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("pg_server.sh %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
        return r.stdout

    def start(self):
        self.host = self._run("start", self.dir).strip().splitlines()[-1]
        self.up = True
        return self.host

    def stop(self):
        self._run("stop", self.dir)
        self.up = False

    def createdb(self, name):
        self._run("createdb", self.dir, name)

    def pause(self, on):
        """SIGSTOP (on) or SIGCONT the server and its processes: a server
        alive to the kernel (connections accepted, packets acknowledged)
        that answers nothing, as when its disk hangs."""
        if on:
            with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
                pm = int(f.readline())
            kids = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True,
                                  text=True).stdout.split()
            self.paused = [pm] + [int(k) for k in kids]
        for pid in getattr(self, "paused", []):
            try:
                os.kill(pid, signal.SIGSTOP if on else signal.SIGCONT)
            except ProcessLookupError:
                pass
        if not on:
            self.paused = []

    def stop_quietly(self):
        if self.up:
            try:
                self.stop()
            except Exception as e:  # at exit: say it, do not raise
                print("test_fleet: stopping PostgreSQL: %s" % e, file=sys.stderr)


class ApiKey:
    """An API key of the principal "tester": signs calls (rpc_common)."""

    def __init__(self, key_id, secret):
        self.id, self.secret = key_id, secret

    def md(self, path, body, nonce=None):
        return [("authorization", call_authorization(self.id, self.secret, path, body,
                                                     nonce=nonce))]


def code_of(e):
    c = getattr(e, "code", None)
    return c() if callable(c) else None


def details_of(e):
    d = getattr(e, "details", None)
    return (d() if callable(d) else str(e)) or ""


class Fleet(unittest.TestCase):
    top = pg = None
    reps = []

    # ---- set-up: PostgreSQL, one token, three replicas ----

    @classmethod
    def setUpClass(cls):
        cls.top = tempfile.mkdtemp(prefix="coffer-fleet-")
        os.chmod(cls.top, 0o755)
        cls.pg = PgServer(cls.top)
        atexit.register(cls._teardown)
        # ctest's timeout sends SIGTERM: exit through atexit (server stopped).
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
        try:
            cls.pg.start()
            os.environ["COFFER_TEST_PG_HOST"] = cls.pg.host     # daemon_fixture.psql
            cls.pg.createdb(DB)
            cls.reps = []
            for name in REPLICAS:
                d = CrashDaemon(config=cls.replica_config(name),
                                token_of=cls.reps[0] if cls.reps else None)
                cls.reps.append(d)
                if len(cls.reps) == 1:
                    d.config["token"]["lock_file"] = os.path.join(d.token_dir, "coffer.lock")
                d.start()
            a = cls.reps[0].admin_stub()
            a.CreateKey(pb.CreateKeyRequest(name="fleet-mac", type=pb.HMAC_SHA256), timeout=T)
            cls.rest_secret = os.urandom(32)
            sealed_call(cls.reps[0], "ImportKey", pb.ImportKeyRequest(
                name="fleet-rest", type=pb.HMAC_SHA256, material=cls.rest_secret), None)
            r = sealed_call(cls.reps[1], "CreateApiKey",
                            pb.CreateApiKeyRequest(principal="tester"), None)
            cls.api = ApiKey(r.key.id, r.secret)
        except BaseException:
            cls._teardown()
            raise

    @classmethod
    def replica_config(cls, name):
        # wait_ms: a statement of the store waits at most 5 s for the server
        # (test_7 stops it; 30 s by default).
        cfg = {"state": {"backend": "postgresql", "wait_ms": "5000",
                         "dsn": "host=%s dbname=%s" % (cls.pg.host, DB), "replica": name},
               "requests": {"window": "300"},
               "daemon": {"log_level": "info"}}
        if cls.reps:
            cfg["token"] = {"lock_file": os.path.join(cls.reps[0].token_dir, "coffer.lock")}
        return cfg

    @classmethod
    def tearDownClass(cls):
        cls._teardown()

    @classmethod
    def _teardown(cls):
        # Replicas first (r1 last: its directory holds the token), then the
        # server, then the directory.
        for d in reversed(cls.reps):
            try:
                d.cleanup()
            except Exception as e:
                print("test_fleet: %s" % e, file=sys.stderr)
        cls.reps = []
        if cls.pg is not None:
            cls.pg.stop_quietly()
        if cls.top and os.environ.get("COFFER_KEEP_TMP", "") in ("", "0"):
            shutil.rmtree(cls.top, ignore_errors=True)
            cls.top = None

    def setUp(self):
        # A case that failed half-way leaves nothing down for the next one.
        if not self.pg.up:
            self.pg.start()
        for d in self.reps:
            if not d.running:
                d.kill9()
                d.start()
        # A case that paused PostgreSQL leaves replicas that find it back by
        # themselves, shortly after: a call before then is (rightly) refused.
        self.wait_serving()

    def wait_serving(self, timeout=30):
        """Waits until every replica's health says SERVING again."""
        deadline = time.monotonic() + timeout
        back = set()
        while len(back) < 3 and time.monotonic() < deadline:
            for i in range(3):
                if i not in back and health_check(self.reps[i].service_socket,
                                                  timeout=5) == SERVING:
                    back.add(i)
            if len(back) < 3:
                time.sleep(0.1)
        self.assertEqual(len(back), 3, "replicas serving again %d s after: %s"
                         % (timeout, sorted(REPLICAS[i] for i in back)))

    # ---- calls ----

    _chans = {}

    def chan(self, i):
        """A service channel to replica i (one per process of it)."""
        d = self.reps[i]
        key = (i, d.pid)
        ch = self._chans.get(key)
        if ch is None:
            ch = grpc.insecure_channel("unix:" + d.service_socket)
            self._chans[key] = ch
        return ch

    def raw(self, i, method):
        """KeyService/method on replica i, bytes in and out."""
        return self.chan(i).unary_unary(KS + method)

    def admin(self, i):
        return self.reps[i].admin_stub()

    def mac_call(self, i, body, md, timeout=T):
        return pb.MacResponse.FromString(self.raw(i, "Mac")(body, metadata=md, timeout=timeout))

    def signed_mac(self, i, key=None, data=b"fleet", timeout=T):
        body = pb.MacRequest(key="fleet-mac", data=data).SerializeToString()
        return self.mac_call(i, body, (key or self.api).md(KS + "Mac", body), timeout)

    def rest_request(self):
        """(parts, signature) of a fresh REST request signed with fleet-rest."""
        body = hashlib.sha256(secrets.token_bytes(8)).digest()
        ts, nonce = int(time.time()), secrets.token_hex(16)
        sig = rest_sign(self.rest_secret, "POST", "/v1/orders", "a=1", body, ts, nonce,
                        "fleet-rest")
        parts = pb.HttpRequestParts(key="fleet-rest", method="POST", path="/v1/orders",
                                    canonical_query="a=1", body_sha256=body, timestamp=ts,
                                    nonce=nonce)
        return parts, sig

    def rest_verify(self, i, parts, sig, timeout=T):
        """VerifyRequestSignature on replica i, itself a signed call."""
        body = pb.VerifyRequestSignatureRequest(request=parts, signature=sig).SerializeToString()
        out = self.raw(i, "VerifyRequestSignature")(
            body, metadata=self.api.md(KS + "VerifyRequestSignature", body), timeout=timeout)
        return pb.VerifyRequestSignatureResponse.FromString(out)

    def versions(self, i, name):
        k = self.admin(i).GetKey(pb.GetKeyRequest(name=name), timeout=T)
        return k, [v.version for v in k.versions]

    def same_versions_everywhere(self, name, want):
        """Every replica serves exactly `want`, at the latest 1 s after the
        last change (the propagation bound: a change made through one
        replica reaches the others by NOTIFY)."""
        for i in range(3):
            deadline = time.monotonic() + 1.0
            _, vs = self.versions(i, name)
            while vs != want and time.monotonic() < deadline:
                time.sleep(0.02)
                _, vs = self.versions(i, name)
            self.assertEqual(vs, want, "key %s as replica %s sees it" % (name, REPLICAS[i]))

    def lease_lines(self):
        """Every "now does the scheduled work" line: (time, replica index, pid,
        incarnation), in time order."""
        out = []
        for i, d in enumerate(self.reps):
            for line in d.log().splitlines():
                m = LEASE_RE.match(line)
                if m:
                    out.append((log_time(m.group(1)), i, int(m.group(2)), m.group(3)))
        return sorted(out)

    def current_holder(self):
        """The replica index whose running process announced the lease last,
        or None."""
        lines = [x for x in self.lease_lines() if self.reps[x[1]].pid == x[2]
                 and self.reps[x[1]].running]
        return lines[-1][1] if lines else None

    def lease_holder(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            h = self.current_holder()
            if h is not None:
                return h
            if time.monotonic() > deadline:
                self.fail("no running replica says it does the scheduled work; logs:\n%s"
                          % self.log_tails())
            time.sleep(0.1)

    def log_tails(self, n=3000):
        return "\n".join("--- %s ---\n%s" % (REPLICAS[i], d.log()[-n:])
                         for i, d in enumerate(self.reps))

    # ---- 1. replays ----

    def known_everywhere(self, api):
        """Wait (at most 5 s) until every replica accepts calls signed with
        api: a key made on one reaches the others by notification, within
        milliseconds, and within 1 s by contract (test 4 measures it)."""
        body = pb.MacRequest(key="fleet-mac", data=b"known?").SerializeToString()
        for r in range(len(self.reps)):
            deadline = time.monotonic() + 5
            while True:
                try:
                    self.raw(r, "Mac")(body, metadata=api.md(KS + "Mac", body), timeout=T)
                    break
                except grpc.RpcError as e:
                    if "unknown API key" not in details_of(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)

    def test_1_replayed_to_another_replica_refused(self):
        self.known_everywhere(self.api)
        t0 = time.monotonic()
        accepted = collections.Counter()      # nonce -> acceptances
        refusals = collections.Counter()
        problems = []
        lock = threading.Lock()

        def note(nonce, kind, outcome, detail=""):
            with lock:
                if outcome == "accepted":
                    accepted[nonce] += 1
                elif outcome == "replay-refused":
                    refusals[kind] += 1
                    accepted[nonce] += 0
                else:
                    problems.append("%s nonce %s: %s" % (kind, nonce, detail))

        def call_item(i, together):
            a, b = i % 3, (i + 1 + (i // 3) % 2) % 3       # b: either other replica
            body = pb.MacRequest(key="fleet-mac", data=b"fleet %d" % i).SerializeToString()
            nonce = secrets.token_hex(16)
            md = self.api.md(KS + "Mac", body, nonce=nonce)

            def outcome(fut):
                try:
                    fut.result()
                    return "accepted", ""
                except grpc.RpcError as e:
                    if code_of(e) == SC.UNAUTHENTICATED and "replayed nonce" in details_of(e):
                        return "replay-refused", ""
                    return "error", "%s %s" % (code_of(e), details_of(e))
            if together:
                futs = [self.raw(r, "Mac").future(body, metadata=md, timeout=T) for r in (a, b)]
                for f in futs:
                    note(nonce, "call", *outcome(f))
            else:
                for r in (a, b):
                    note(nonce, "call", *outcome(self.raw(r, "Mac").future(
                        body, metadata=md, timeout=T)))

        def rest_item(i, together):
            a, b = i % 3, (i + 1 + (i // 3) % 2) % 3
            parts, sig = self.rest_request()
            body = pb.VerifyRequestSignatureRequest(request=parts,
                                                    signature=sig).SerializeToString()

            def send(r):
                return self.raw(r, "VerifyRequestSignature").future(
                    body, metadata=self.api.md(KS + "VerifyRequestSignature", body), timeout=T)

            def outcome(fut):
                try:
                    v = pb.VerifyRequestSignatureResponse.FromString(fut.result())
                except grpc.RpcError as e:
                    return "error", "%s %s" % (code_of(e), details_of(e))
                if v.verdict == pb.VALID and v.valid:
                    return "accepted", ""
                if v.verdict == pb.REPLAYED_NONCE and not v.valid:
                    return "replay-refused", ""
                return "error", "verdict %s (%s)" % (v.verdict, v.reason)
            if together:
                futs = [send(a), send(b)]
                for f in futs:
                    note(parts.nonce, "rest", *outcome(f))
            else:
                for r in (a, b):
                    note(parts.nonce, "rest", *outcome(send(r)))

        def item(i):
            together = (i // 2) % 2 == 0
            (call_item if i % 2 == 0 else rest_item)(i // 2, together)

        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            list(ex.map(item, range(2 * N), chunksize=64))
        el = time.monotonic() - t0
        twice = sorted(n for n, c in accepted.items() if c > 1)
        never = sorted(n for n, c in accepted.items() if c == 0)
        print("\nfleet replays: %d signed calls + %d REST signatures, each sent to one replica "
              "and replayed to another (half at once): %d RPCs in %.1f s (%.0f/s); accepted "
              "twice %d, accepted never %d, replays refused %s, other answers %d" % (
                  N, N, 4 * N, el, 4 * N / el, len(twice), len(never), dict(refusals),
                  len(problems)), flush=True)
        self.assertEqual(twice, [], "nonces accepted twice")
        self.assertEqual(problems[:20], [], "%d unexpected answers" % len(problems))
        self.assertEqual(never, [], "nonces accepted by no replica")
        self.assertEqual(len(accepted), 2 * N)
        self.assertEqual(sum(refusals.values()), 2 * N)

    # ---- 2. idempotency across replicas ----

    def test_2_concurrent_duplicates_across_replicas(self):
        for rnd in range(3):
            name = "fleet-idem-%d" % rnd
            self.admin(rnd % 3).CreateKey(pb.CreateKeyRequest(name=name, type=pb.RSA_2048),
                                          timeout=60)
            key = "fleet-rotate-dup-%d" % rnd
            gate = threading.Barrier(16)

            def one(j):
                stub = self.admin(j % 3)
                gate.wait()
                t = time.monotonic()
                r = stub.RotateKey(pb.RotateKeyRequest(name=name), timeout=60,
                                   metadata=meta(key, "%s-%d" % (key, j)))
                return r, time.monotonic() - t
            with concurrent.futures.ThreadPoolExecutor(16) as ex:
                res = list(ex.map(one, range(16)))
            answers = {normalize(r) for r, _ in res}
            print("\nfleet idempotency round %d: 16 duplicates over 3 replicas: %d distinct "
                  "answer(s), version %s, slowest %.2f s" % (
                      rnd, len(answers), sorted({r.primary_version for r, _ in res}),
                      max(t for _, t in res)), flush=True)
            self.assertEqual(len(answers), 1)
            self.same_versions_everywhere(name, [1, 2])
            # The key sent again to each replica: the same answer, no change.
            for i in range(3):
                again = self.admin(i).RotateKey(pb.RotateKeyRequest(name=name), timeout=T,
                                                metadata=meta(key, "%s-again-%d" % (key, i)))
                self.assertEqual({normalize(again)}, answers)
            self.same_versions_everywhere(name, [1, 2])

    # ---- 3. scheduled rotation, one leader ----

    def test_3_scheduled_rotation_once_per_period(self):
        period = 3
        name = "fleet-sched"
        self.admin(0).CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256), timeout=T)
        k = self.admin(1).SetRotationSchedule(pb.SetRotationScheduleRequest(
            name=name, period_seconds=period), timeout=T)
        first_due = k.next_rotation_time
        while time.time() < first_due + 4 * period + 0.5:
            time.sleep(0.1)
        off = self.admin(2).SetRotationSchedule(pb.SetRotationScheduleRequest(
            name=name, period_seconds=0), timeout=T)
        vs = [v.version for v in off.versions]
        time.sleep(period + 1.5)
        self.same_versions_everywhere(name, vs)
        k, _ = self.versions(0, name)
        times = [v.create_time for v in k.versions]
        gaps = [b - a for a, b in zip(times[1:], times[2:])]
        print("\nfleet scheduled rotation: period %d s, %d rotations in %.0f s after the first "
              "due time; gaps between them %s s" % (period, len(vs) - 1,
                                                     off.versions[-1].create_time - first_due,
                                                     gaps), flush=True)
        self.assertEqual(vs, list(range(1, len(vs) + 1)))
        self.assertGreaterEqual(len(vs) - 1, 4, "rotations missed: %s" % times)
        self.assertGreaterEqual(times[1], first_due)
        for g in gaps:
            # Two rotations for one due time would be closer than a period;
            # a missed one would leave two periods between them.
            self.assertGreaterEqual(g, period, times)
            self.assertLessEqual(g, period + 2, times)
        # The log: each rotation once, all by the one replica that took the lease.
        made = collections.Counter()
        by = set()
        for i, d in enumerate(self.reps):
            for m in SCHED_RE.finditer(d.log()):
                if m.group(1) == name:
                    made[int(m.group(2))] += 1
                    by.add(REPLICAS[i])
        leases = self.lease_lines()
        print("fleet scheduled work: lease lines %s; rotations logged by %s" % (
            [(REPLICAS[i], inc) for _, i, _, inc in leases], sorted(by)), flush=True)
        self.assertEqual(dict(made), {v: 1 for v in vs[1:]})
        self.assertEqual(len(leases), 1, leases)
        self.assertEqual(by, {REPLICAS[leases[0][1]]})

    # ---- 4. revocation reaches the other replicas ----

    def test_4_revoked_api_key_refused_elsewhere_within_1s(self):
        delays, create_delays, texts = [], [], collections.Counter()
        for it in range(20):
            origin = it % 3
            others = [i for i in range(3) if i != origin]
            r = sealed_call(self.reps[origin], "CreateApiKey",
                            pb.CreateApiKeyRequest(principal="tester"), None)
            key = ApiKey(r.key.id, r.secret)
            t_made = time.monotonic()
            self.signed_mac(origin, key)
            for i in others:
                while True:
                    try:
                        self.signed_mac(i, key)
                        break
                    except grpc.RpcError as e:
                        if time.monotonic() - t_made > 5:
                            self.fail("API key %s made on %s not usable on %s after 5 s: %s"
                                      % (key.id, REPLICAS[origin], REPLICAS[i], details_of(e)))
                create_delays.append(time.monotonic() - t_made)
            self.admin(origin).RevokeApiKey(pb.RevokeApiKeyRequest(id=key.id), timeout=T)
            t0 = time.monotonic()

            def poll(i):
                while True:
                    try:
                        self.signed_mac(i, key, timeout=5)
                    except grpc.RpcError as e:
                        return time.monotonic() - t0, code_of(e), details_of(e)
                    if time.monotonic() - t0 > 10:
                        return None, None, "still accepted 10 s after the revocation"
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                res = list(ex.map(poll, others))
            for i, (dt, code, text) in zip(others, res):
                self.assertIsNotNone(dt, "%s: %s" % (REPLICAS[i], text))
                self.assertEqual(code, SC.UNAUTHENTICATED, "%s: %s" % (REPLICAS[i], text))
                texts[re.sub(r"[0-9a-f]{8,}", "ID", text)] += 1
                delays.append(dt)
        print("\nfleet revocation: %d refusals on the other replicas after a revocation: "
              "p50 %.1f ms, max %.1f ms (a new API key usable elsewhere: p50 %.1f ms, max "
              "%.1f ms); refusal texts %s" % (
                  len(delays), 1000 * statistics.median(delays), 1000 * max(delays),
                  1000 * statistics.median(create_delays), 1000 * max(create_delays),
                  dict(texts)), flush=True)
        self.assertLessEqual(max(delays), 1.0)
        for text in texts:
            self.assertIn("revoked", text)

    def test_4b_deleted_principal_keys_revoked_elsewhere_within_1s(self):
        """DeletePrincipal on one replica revokes the principal's API keys in
        its own change: every other replica holds them revoked within 1 s,
        and their objects are destroyed, a key made on another replica just
        before included."""
        def keys(i):
            return sorted((k.id, k.revoke_time != 0) for k in self.admin(i).ListApiKeys(
                pb.ListApiKeysRequest(principal="fleet-gone"), timeout=T).keys)
        self.admin(0).CreatePrincipal(pb.CreatePrincipalRequest(name="fleet-gone",
                                                                uids=[4343]), timeout=T)
        ids = sorted(sealed_call(self.reps[0], "CreateApiKey",
                                 pb.CreateApiKeyRequest(principal="fleet-gone"), None).key.id
                     for _ in range(2))
        deadline = time.monotonic() + 5
        while any(keys(i) != [(k, False) for k in ids] for i in (1, 2)):
            self.assertLess(time.monotonic(), deadline, "keys not seen: %s" % keys(1))
            time.sleep(0.02)
        # One more, made on another replica just before: the deleting one
        # need not have read it, and must still destroy its object.
        ids = sorted(ids + [sealed_call(self.reps[2], "CreateApiKey", pb.CreateApiKeyRequest(
            principal="fleet-gone"), None).key.id])
        self.admin(0).DeletePrincipal(pb.DeletePrincipalRequest(name="fleet-gone"), timeout=T)
        t0 = time.monotonic()
        took = {}
        while len(took) < 2 and time.monotonic() - t0 < 10:
            for i in (1, 2):
                if i not in took and keys(i) == [(k, True) for k in ids]:
                    took[i] = time.monotonic() - t0
            time.sleep(0.01)
        print("\nfleet principal deletion: its 2 API keys revoked on the other replicas "
              "after %s ms" % {REPLICAS[i]: round(1000 * t) for i, t in took.items()},
              flush=True)
        self.assertEqual(sorted(took), [1, 2], "still live elsewhere: %s" % keys(1))
        self.assertLessEqual(max(took.values()), 1.0)
        self.assertEqual(keys(0), [(k, True) for k in ids])
        # Their secrets' objects are gone from the token now, not at a start.
        left = [o["label"] for o in crash_check.daemon_objects(self.reps[0])
                if any(k in o["label"] for k in ids)]
        self.assertEqual(left, [], "objects of the deleted principal's API keys")

    def api_key_of_its_own(self, name, uid):
        self.admin(0).CreatePrincipal(pb.CreatePrincipalRequest(name=name, uids=[uid]),
                                      timeout=T)
        return sealed_call(self.reps[0], "CreateApiKey",
                           pb.CreateApiKeyRequest(principal=name), None).key.id

    @contextlib.contextmanager
    def secret_left_behind(self, kid):
        """A RotateApiKeySecret of kid on r1 whose commit is lost with
        PostgreSQL (r1 held once the new secret's object is made, the server
        then stopped with SIGSTOP until the record's statement gives up): r1
        keeps the object, as the commit may have happened. Yields with the
        object there and no record of it; r1 is restarted afterwards (its
        start would remove the object)."""
        with self.held_at(0, "apikeys.rotate.secret-made") as wait_held, \
                concurrent.futures.ThreadPoolExecutor(1) as ex:
            lost = ex.submit(sealed_call, self.reps[0], "RotateApiKeySecret",
                             pb.RotateApiKeySecretRequest(id=kid), None)
            release = wait_held()
            self.pg.pause(True)
            try:
                open(release, "w").close()
                # The record's statement gives up after wait_ms (5 s).
                deadline = time.monotonic() + 30
                while "its object is kept" not in self.reps[0].log(all_starts=False):
                    self.assertLess(time.monotonic(), deadline, "no lost commit")
                    time.sleep(0.05)
            finally:
                self.pg.pause(False)
            with self.assertRaises(grpc.RpcError) as cm:
                lost.result(timeout=60)
            self.assertEqual(code_of(cm.exception), SC.UNAVAILABLE, details_of(cm.exception))
            # Another replica may have met the hang too (a reconnection given
            # up after its bound), and is back only once it has reconnected.
            self.wait_serving()
            yield

    def test_4c_secret_left_by_a_lost_commit_does_not_block_rotations(self):
        """A RotateApiKeySecret whose commit is lost with PostgreSQL keeps
        its new secret's object, as the commit may have happened. It did
        not, so the next rotation, on another replica, makes the same
        generation again: the leftover is destroyed first. Before, every
        later rotation of the key was refused ALREADY_EXISTS until some
        replica restarted."""
        if not crash_points():
            self.skipTest("cofferd built without COFFER_CRASH_POINTS")
        kid = self.api_key_of_its_own("fleet-left", 4344)
        with self.secret_left_behind(kid):
            r = sealed_call(self.reps[1], "RotateApiKeySecret",
                            pb.RotateApiKeySecretRequest(id=kid), None)
            self.assertEqual(r.key.secrets[0].generation, 2)
            self.assertIn("an object no record claims (left by an attempt that did not "
                          "complete) is destroyed", self.reps[1].log(all_starts=False))
            self.check_token()

    def test_4d_leftover_removal_never_takes_the_next_holders_secret(self):
        """As 4c, but r2's rotation, which finds the leftover object under
        the change lock, is held there (its first step of two: the search
        and the check that the lock is still its own), and its lock's
        session is cut. r3's rotation takes the lock, destroys the leftover,
        makes generation 2 again and commits. Released, r2 destroys nothing
        (the lock is no longer its own) and its commit is refused by the
        fence; r3's secret is the one the token holds. Before, r2 checked
        the lock first and searched after: it found r3's new object and
        destroyed it, leaving generation 2 recorded without its secret."""
        if not crash_points():
            self.skipTest("cofferd built without COFFER_CRASH_POINTS")
        kid = self.api_key_of_its_own("fleet-left2", 4345)
        with self.held_at(1, "apikeys.leftover.between") as r2_held:
            with self.secret_left_behind(kid), concurrent.futures.ThreadPoolExecutor(1) as ex:
                held = ex.submit(sealed_call, self.reps[1], "RotateApiKeySecret",
                                 pb.RotateApiKeySecretRequest(id=kid), None)
                release = r2_held()
                self.cut_change_lock()
                r = sealed_call(self.reps[2], "RotateApiKeySecret",
                                pb.RotateApiKeySecretRequest(id=kid), None)
                self.assertEqual(r.key.secrets[0].generation, 2)
                open(release, "w").close()
                with self.assertRaises(grpc.RpcError) as cm:
                    held.result(timeout=30)
                self.assertEqual(code_of(cm.exception), SC.UNAVAILABLE, details_of(cm.exception))
                self.assertIn("this replica lost the registry change lock",
                              details_of(cm.exception))
                self.check_token()

    def test_3b_lease_leaves_a_replica_whose_trail_fails_closed(self):
        """The lease holder's audit trail becomes unwritable (chattr +i): it
        fails closed, so it can do no scheduled work, and holding the lease
        would stop that work for the whole fleet. It lets the lease go and
        another replica takes it; healed, it does not take it back."""
        h = self.lease_holder()
        d = self.reps[h]
        path = os.path.join(d.state_dir, "audit.log")
        if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here (filesystem or capability)")
        new = None
        try:
            deadline = time.monotonic() + 10
            while True:     # the next record written finds the fault
                self.assertLess(time.monotonic(), deadline, "the trail never failed")
                try:
                    self.signed_mac(h, data=b"under fault %f" % time.monotonic())
                except grpc.RpcError as e:
                    self.assertEqual(code_of(e), SC.UNAVAILABLE, details_of(e))
                    self.assertIn("audit trail cannot be written", details_of(e))
                    break
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5 and new is None:
                c = self.current_holder()
                new = c if c is not None and c != h else None
                time.sleep(0.02)
            took = time.monotonic() - t0
        finally:
            subprocess.run(["chattr", "-i", path], check=True)
        self.assertIsNotNone(new, "the lease stayed with %s; logs:\n%s"
                             % (REPLICAS[h], self.log_tails()))
        print("\nfleet lease: %s (its trail failing closed) left it, %s took it after %d ms"
              % (REPLICAS[h], REPLICAS[new], round(1000 * took)), flush=True)
        self.assertIn("leaves the scheduled work to another: its audit trail refuses records "
                      "(failing closed)", d.log(all_starts=False))
        time.sleep(2)       # healed meanwhile (its 1 s retry)
        self.signed_mac(h, data=b"healed")
        self.assertEqual(self.current_holder(), new)

    def test_3c_lease_leaves_a_replica_whose_periodic_work_is_stuck(self):
        """The lease holder's periodic work hangs in a step (held at the
        hold point chores.lead, as a token or disk that hangs would hold
        it): past the step's bound it lets the lease go, another replica
        takes it, and the stuck one does not take it back once it moves
        again. Before, it kept the lease while doing nothing, and the whole
        fleet's scheduled rotations and destructions stopped with it."""
        if not crash_points():
            self.skipTest("cofferd built without COFFER_CRASH_POINTS")
        h = self.lease_holder()
        d, others = self.reps[h], [x for x in range(3) if x != h]
        hold = tempfile.mkdtemp(prefix="coffer-hold-", dir=self.top)
        new = None
        try:
            # Alone, it takes the lease at once; its first round as the
            # holder stops at the point.
            for x in others:
                self.reps[x].stop()
            d.stop()
            d.crash_env = {"COFFER_CRASH_AT": "chores.lead@1", "COFFER_CRASH_MODE": "hold",
                           "COFFER_CRASH_HOLD": hold, "COFFER_TEST_CHORES_BOUND_MS": "2000"}
            d.start()
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(hold, "held")):
                self.assertLess(time.monotonic(), deadline, "never held: " + d.log()[-2000:])
                time.sleep(0.02)
            t0 = time.monotonic()
            self.assertEqual(self.lease_holder(), h)
            for x in others:
                self.reps[x].start()
            # Stuck once no step ended for its bound (2 s) and 2 s more.
            while time.monotonic() - t0 < 15 and new is None:
                c = self.current_holder()
                new = c if c is not None and c != h else None
                time.sleep(0.05)
            took = time.monotonic() - t0
            self.assertIsNotNone(new, "the lease stayed with %s; logs:\n%s"
                                 % (REPLICAS[h], self.log_tails()))
            print("\nfleet lease: %s (its periodic work held) left it, %s took it %.1f s "
                  "after the hold" % (REPLICAS[h], REPLICAS[new], took), flush=True)
            self.assertGreater(took, 3.5, "left before the bound")
            self.assertIn("leaves the scheduled work to another: its periodic work is stuck "
                          "(a step has not ended within its bound: a token or disk that "
                          "hangs?)", d.log(all_starts=False))
            # Moving again, it serves and leaves the lease where it is.
            open(os.path.join(hold, "release"), "w").close()
            time.sleep(2)
            self.signed_mac(h, data=b"moving again")
            self.assertEqual(self.current_holder(), new)
        finally:
            open(os.path.join(hold, "release"), "w").close()
            for x in others:
                if not self.reps[x].running:
                    self.reps[x].start()
            d.stop()
            d.crash_env = {}
            d.start()

    def test_3d_change_stuck_in_the_change_lock_ends_its_replica(self):
        """A RotateKey on r1 held inside the fleet's change lock (after its
        commit, as a token that does not answer would hold it). Past the
        bound, r1 says so and exits (status 3), the lock goes with its
        session, and a rotation waiting on r3 goes through at once. Before,
        r1 held the lock until someone restarted it, and every replica's
        changes timed out after 30 s saying another replica's change was
        under way."""
        if not crash_points():
            self.skipTest("cofferd built without COFFER_CRASH_POINTS")
        a = self.admin(1)
        for name in ("stuck-k", "after-k"):
            a.CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256), timeout=T)
        d, hold = self.reps[0], tempfile.mkdtemp(prefix="coffer-hold-", dir=self.top)
        d.stop()
        d.crash_env = {"COFFER_CRASH_AT": "store.version-add.committed@1",
                       "COFFER_CRASH_MODE": "hold", "COFFER_CRASH_HOLD": hold,
                       "COFFER_TEST_CHORES_BOUND_MS": "3000"}
        try:
            d.start()
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                held = ex.submit(lambda: self.admin(0).RotateKey(
                    pb.RotateKeyRequest(name="stuck-k"), timeout=60))
                deadline = time.monotonic() + 30
                while not os.path.exists(os.path.join(hold, "held")):
                    self.assertLess(time.monotonic(), deadline, "never held")
                    time.sleep(0.01)
                t0 = time.monotonic()
                waiting = ex.submit(lambda: self.admin(2).RotateKey(
                    pb.RotateKeyRequest(name="after-k"), timeout=60))
                rc = d.proc.wait(20)
                exited = time.monotonic() - t0
                r = waiting.result(timeout=30)
                through = time.monotonic() - t0
                with self.assertRaises(grpc.RpcError) as cm:
                    held.result(timeout=30)
            print("\nfleet: a change held in the lock on %s: exited after %.1f s, a rotation "
                  "waiting on %s went through after %.1f s"
                  % (REPLICAS[0], exited, REPLICAS[2], through), flush=True)
            self.assertEqual(rc, 3, d.log()[-2000:])
            self.assertEqual(code_of(cm.exception), SC.UNAVAILABLE, details_of(cm.exception))
            self.assertEqual(r.primary_version, 2)
            self.assertGreater(exited, 2.5)
            self.assertLess(through, 15)
            self.assertRegex(d.log(all_starts=False),
                             r"ALARM: fleet: a change has held the fleet's change lock for \d+ "
                             r"ms without committing, past its bound of 3000 ms \(a token that "
                             r"does not answer\?\), and every replica's changes wait for it: "
                             r"exiting so that the lock goes with this process \(the service "
                             r"manager starts cofferd again\)")
        finally:
            open(os.path.join(hold, "release"), "w").close()
            if d.running:
                d.stop(expect=None)
            d.crash_env = {}
            d.start()
        # Its change committed before the hold: every replica sees it.
        self.same_versions_everywhere("stuck-k", [1, 2])
        self.check_token()

    # ---- 3e-3g. a change whose lock connection alone is cut ----

    @contextlib.contextmanager
    def held_at(self, i, point):
        """Replica i restarted with its first pass at `point` held; yields a
        function that waits for the hold and returns the file that releases
        it. The replica is restarted without the hold afterwards."""
        d, hold = self.reps[i], tempfile.mkdtemp(prefix="coffer-hold-", dir=self.top)
        d.stop()
        d.crash_env = {"COFFER_CRASH_AT": point + "@1", "COFFER_CRASH_MODE": "hold",
                       "COFFER_CRASH_HOLD": hold}

        def wait_held():
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(hold, "held")):
                self.assertLess(time.monotonic(), deadline, "never held at " + point)
                time.sleep(0.01)
            return os.path.join(hold, "release")
        try:
            d.start()
            yield wait_held
        finally:
            open(os.path.join(hold, "release"), "w").close()
            d.stop()
            d.crash_env = {}
            d.start()

    @contextlib.contextmanager
    def r1_disabling_held_at(self, name, point, workers=1):
        """A key `name` with three versions, and r1 disabling version 1, held
        at `point` with its change lock's connection then cut; yields r1's
        call (a future), the file that releases it, and the executor (of
        `workers` threads) that runs it."""
        if not crash_points():
            self.skipTest("cofferd built without COFFER_CRASH_POINTS")
        self.key_with_versions(name, 3)
        with self.held_at(0, point) as wait_held, \
                concurrent.futures.ThreadPoolExecutor(workers) as ex:
            first = ex.submit(lambda: self.admin(0).DisableKeyVersion(
                pb.KeyVersionRequest(name=name, version=1), timeout=60))
            release = wait_held()
            self.cut_change_lock()
            yield first, release, ex

    def cut_change_lock(self):
        """Terminate the one session that holds the fleet's registry change
        lock (1131374182, 1), PostgreSQL staying up."""
        lockers = psql(DB, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' "
                       "AND classid = 1131374182 AND objid = 1 AND objsubid = 2 AND granted")
        self.assertEqual(len(lockers), 1, lockers)
        psql(DB, "SELECT pg_terminate_backend(%d)" % int(lockers[0][0]))

    def key_with_versions(self, name, n):
        a = self.admin(1)
        a.CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256), timeout=T)
        for _ in range(n - 1):
            a.RotateKey(pb.RotateKeyRequest(name=name), timeout=T)

    def same_states_everywhere(self, name, want):
        """Every replica serves the versions of `name` in states `want`
        within 1 s."""
        for i in range(3):
            deadline = time.monotonic() + 1.0
            while True:
                k, _ = self.versions(i, name)
                states = [v.state for v in k.versions]
                if states == want or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            self.assertEqual(states, want, REPLICAS[i])

    def test_3e_change_whose_lock_was_cut_commits_nothing(self):
        """A DisableKeyVersion of version 1 on r1, held after it read the key
        under the fleet's change lock; the lock's connection alone is then
        cut (pg_terminate_backend, PostgreSQL up), and r2 takes the lock and
        disables version 2. Released, r1's change is refused UNAVAILABLE
        with the reason, and version 2 stays disabled on every replica.
        Before, r1 committed the key as it had read it: version 2 enabled
        again, r2's change silently undone."""
        name = "fenced-k"
        with self.r1_disabling_held_at(name, "keyring.change.read") as (held, release, _):
            k2 = self.admin(1).DisableKeyVersion(pb.KeyVersionRequest(name=name, version=2),
                                                 timeout=T)
            self.assertEqual([v.state for v in k2.versions],
                             [pb.ENABLED, pb.DISABLED, pb.ENABLED])
            open(release, "w").close()
            with self.assertRaises(grpc.RpcError) as cm:
                held.result(timeout=30)
        self.assertEqual(code_of(cm.exception), SC.UNAVAILABLE, details_of(cm.exception))
        self.assertEqual(details_of(cm.exception),
                         "fleet: this replica lost the registry change lock while the "
                         "change ran (the lock's PostgreSQL connection was cut) and "
                         "another replica has taken it since; not committing a change "
                         "made from what may be stale; retry")
        self.same_states_everywhere(name, [pb.ENABLED, pb.DISABLED, pb.ENABLED])
        # Taken again, r1's changes go through.
        k = self.admin(0).DisableKeyVersion(pb.KeyVersionRequest(name=name, version=1), timeout=T)
        self.assertEqual([v.state for v in k.versions], [pb.DISABLED, pb.DISABLED, pb.ENABLED])

    def test_3f_change_that_lost_its_lock_while_committing_comes_first(self):
        """r1's DisableKeyVersion of version 1 held inside its transaction
        (the fence checked, before the commit), and its lock's connection
        cut; r2, disabling version 2, takes the lock and waits for r1's
        commit before it reads the key, so both changes stand. Before, r2
        read the key while r1's transaction was open and wrote version 1
        back enabled over r1's commit."""
        name = "fenced-k2"
        with self.r1_disabling_held_at(name, "store.key-save.before-commit", 2) as \
                (first, release, ex):
            second = ex.submit(lambda: self.admin(1).DisableKeyVersion(
                pb.KeyVersionRequest(name=name, version=2), timeout=60))
            time.sleep(1.0)
            self.assertFalse(second.done(), "r2 did not wait for r1's commit")
            open(release, "w").close()
            k1 = first.result(timeout=30)
            k2 = second.result(timeout=30)
        self.assertEqual([v.state for v in k1.versions], [pb.DISABLED, pb.ENABLED, pb.ENABLED])
        self.assertEqual([v.state for v in k2.versions], [pb.DISABLED, pb.DISABLED, pb.ENABLED])
        self.same_states_everywhere(name, [pb.DISABLED, pb.DISABLED, pb.ENABLED])

    def test_3f2_next_holder_waits_for_a_commit_at_most_its_lock_timeout(self):
        """As 3f, but r1 stays held: r2's change waits for r1's open
        transaction no longer than the store's lock_timeout (two thirds of
        wait_ms: 3.3 s) and is refused UNAVAILABLE, saying why; released,
        r1 commits, and r2's retry goes through over it."""
        name = "fenced-k4"
        with self.r1_disabling_held_at(name, "store.key-save.before-commit") as \
                (first, release, _):
            t0 = time.monotonic()
            with self.assertRaises(grpc.RpcError) as cm:
                self.admin(1).DisableKeyVersion(pb.KeyVersionRequest(name=name, version=2),
                                                timeout=30)
            waited = time.monotonic() - t0
            open(release, "w").close()
            first.result(timeout=30)
        self.assertEqual(code_of(cm.exception), SC.UNAVAILABLE, details_of(cm.exception))
        self.assertEqual(details_of(cm.exception),
                         "fleet: a replica that lost the registry change lock may still be "
                         "committing a change; retry (waited 3333 ms for a lock another "
                         "PostgreSQL session holds (an operator's transaction, a VACUUM "
                         "FULL...): canceling statement due to lock timeout)")
        self.assertGreater(waited, 3.0)
        self.assertLess(waited, 10.0)
        k2 = self.admin(1).DisableKeyVersion(pb.KeyVersionRequest(name=name, version=2), timeout=T)
        self.assertEqual([v.state for v in k2.versions], [pb.DISABLED, pb.DISABLED, pb.ENABLED])
        self.same_states_everywhere(name, [pb.DISABLED, pb.DISABLED, pb.ENABLED])

    def test_3g_rotation_refused_by_the_fence_leaves_no_object(self):
        """A RotateKey on r1 held once its intent is committed, before it
        makes the version's objects; its lock's connection cut, r2 creates
        another key (its change lock's sweep drops r1's intent, which names
        no object yet). Released, r1 makes the objects, its commit is
        refused by the fence, and it destroys them: a rotation on r3 then
        makes version 2, and the token holds no object no record claims.
        Before, r1 kept them as if its commit's outcome were unknown, and
        every later rotation of the key was refused ALREADY_EXISTS."""
        if not crash_points():
            self.skipTest("cofferd built without COFFER_CRASH_POINTS")
        name = "fenced-k3"
        self.key_with_versions(name, 1)
        with self.held_at(0, "store.intent-add.committed") as wait_held, \
                concurrent.futures.ThreadPoolExecutor(1) as ex:
            held = ex.submit(lambda: self.admin(0).RotateKey(
                pb.RotateKeyRequest(name=name), timeout=60))
            release = wait_held()
            self.cut_change_lock()
            self.admin(1).CreateKey(pb.CreateKeyRequest(name=name + "-other",
                                                        type=pb.EC_P256), timeout=T)
            self.assertIn("the interrupted creation of %s version 2 was undone (0 token "
                          "objects removed)" % name, self.reps[1].log(all_starts=False))
            open(release, "w").close()
            with self.assertRaises(grpc.RpcError) as cm:
                held.result(timeout=30)
        self.assertEqual(code_of(cm.exception), SC.UNAVAILABLE, details_of(cm.exception))
        self.assertIn("this replica lost the registry change lock", details_of(cm.exception))
        k = self.admin(2).RotateKey(pb.RotateKeyRequest(name=name), timeout=T)
        self.assertEqual((k.primary_version, [v.version for v in k.versions]), (2, [1, 2]))
        self.same_versions_everywhere(name, [1, 2])
        self.check_token()

    # ---- 5. kill -9 during rotations ----

    def test_5_kill9_during_rotations(self):
        rnd = random.Random(SEED)
        name, tick = "fleet-crash", "fleet-tick"
        self.admin(0).CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256), timeout=T)
        # The holder of the lease rotates this one every second meanwhile.
        self.admin(1).CreateKey(pb.CreateKeyRequest(name=tick, type=pb.EC_P256,
                                                    rotation_period=1), timeout=T)
        victim = self.lease_holder()
        others = [i for i in range(3) if i != victim]
        vd = self.reps[victim]
        done = threading.Event()
        kills = []          # (time.time() of the kill, the victim held the lease)
        restart_times = []
        killer_errors = []

        def killer():
            try:
                while not done.is_set():
                    if done.wait(rnd.uniform(0.3, 2.5)):
                        break
                    held = self.current_holder() == victim
                    kills.append((time.time(), held))
                    vd.kill9()
                    t = time.monotonic()
                    for _ in range(5):
                        try:
                            if vd.try_start():
                                break
                        except Exception as e:
                            raise AssertionError("%s hangs in its start-up: %s\n%s" % (
                                REPLICAS[victim], e, self.where_stuck(vd)))
                        vd.kill9()
                    else:
                        raise AssertionError("%s does not start again:\n%s"
                                             % (REPLICAS[victim], vd.log()[-3000:]))
                    restart_times.append(time.monotonic() - t)
            except BaseException as e:
                killer_errors.append(e)
        kt = threading.Thread(target=killer, daemon=True)
        kt.start()

        answers = {}          # idempotency key -> answer
        problems, retried = [], collections.Counter()
        t0 = time.monotonic()
        try:
            for n in range(ROTATIONS):
                idem = "fleet-kill-%d" % n
                target = victim if n % 4 == 3 else others[n % 2]
                for attempt in range(100):
                    try:
                        r = self.admin(target).RotateKey(
                            pb.RotateKeyRequest(name=name), timeout=T,
                            metadata=meta(idem, "%s-a%d" % (idem, attempt)))
                        answers[idem] = r
                        break
                    except (grpc.RpcError, ValueError) as e:
                        # ValueError: the killer closed the victim's channel.
                        code = code_of(e) if isinstance(e, grpc.RpcError) else SC.CANCELLED
                        if code not in (SC.UNAVAILABLE, SC.CANCELLED, SC.UNKNOWN,
                                        SC.DEADLINE_EXCEEDED):
                            problems.append("rotation %d attempt %d on %s: %s %s" % (
                                n, attempt, REPLICAS[target], code, details_of(e)))
                            break
                        retried[(REPLICAS[target], code.name)] += 1
                        # Retried with its key on one of the replicas not killed.
                        target = others[(n + attempt) % 2]
                        time.sleep(0.05)
                else:
                    problems.append("rotation %d: no answer after 100 attempts" % n)
        finally:
            done.set()
            kt.join(120)
        run_s = time.monotonic() - t0
        if killer_errors:
            raise killer_errors[0]
        if not vd.running:
            vd.kill9()
            vd.start()
        # The tick key's schedule off, then quiet: every replica agrees.
        self.admin(others[0]).SetRotationSchedule(pb.SetRotationScheduleRequest(
            name=tick, period_seconds=0), timeout=T)
        time.sleep(2)

        ok = len(answers)
        want = list(range(1, ok + 2))
        seen = {}
        for i in range(3):
            _, seen[REPLICAS[i]] = self.versions(i, name)
        versions_of = sorted(r.primary_version for r in answers.values())
        tick_k, tick_vs = self.versions(0, tick)
        tick_times = [v.create_time for v in tick_k.versions]
        # The lease after each kill of its holder: who took it, how soon.
        leases = self.lease_lines()
        moves = []
        for kt_, held in kills:
            if held:
                nxt = [x for x in leases if x[0] >= kt_ - 0.002 and x[1] != victim]
                moves.append((nxt[0][0] - kt_, REPLICAS[nxt[0][1]]) if nxt else (None, None))
        print("\nfleet kill -9: %d rotations (%d answered) through %s, victim %s (the lease "
              "holder) killed %d times (%d while holding the lease), restarts %.1f s p50 / "
              "%.1f s max, %.0f s; retries %s" % (
                  ROTATIONS, ok, [REPLICAS[i] for i in others], REPLICAS[victim], len(kills),
                  sum(1 for _, h in kills if h),
                  statistics.median(restart_times) if restart_times else 0,
                  max(restart_times) if restart_times else 0, run_s, dict(retried)),
              flush=True)
        print("fleet kill -9: versions seen %s; lease moves after the holder's kill "
              "(seconds, to): %s; %s rotated by schedule to version %d" % (
                  {k: "%d..%d (%d)" % (v[0], v[-1], len(v)) for k, v in seen.items()},
                  moves, tick, tick_vs[-1]), flush=True)
        self.assertEqual(problems, [])
        self.assertEqual(ok, ROTATIONS)
        self.assertGreater(len(kills), 0)
        for rep, vs in seen.items():
            self.assertEqual(vs, want, "key %s as %s sees it" % (name, rep))
        self.assertEqual(versions_of, want[1:], "each rotation's answer its own version")
        # Each key again, on any replica: the first answer, no new version.
        for idem in rnd.sample(sorted(answers), 25):
            again = self.admin(rnd.randrange(3)).RotateKey(
                pb.RotateKeyRequest(name=name), timeout=T, metadata=meta(idem, idem + "-again"))
            self.assertEqual(normalize(again), normalize(answers[idem]), idem)
        self.same_versions_everywhere(name, want)
        # The scheduled key: contiguous, one version per due second at most.
        self.assertEqual(tick_vs, list(range(1, len(tick_vs) + 1)))
        self.assertTrue(all(b - a >= 1 for a, b in zip(tick_times[1:], tick_times[2:])),
                        tick_times)
        self.assertTrue(moves, "the victim never held the lease when killed")
        self.assertNotIn((None, None), moves, "the lease did not move after a kill of its "
                         "holder; lease lines: %s" % leases)
        self.assertLessEqual(max(m[0] for m in moves), 5.0)
        # The token against the registry in PostgreSQL.
        self.check_token()

    def where_stuck(self, d):
        """What a cofferd that does not become ready waits for: its threads'
        stacks (gdb) and PostgreSQL's sessions and locks."""
        out = []
        if d.running and shutil.which("gdb"):
            r = subprocess.run(["gdb", "-p", str(d.pid), "-batch", "-ex",
                                "thread apply all bt 12"], capture_output=True, text=True,
                               timeout=120)
            out.append("stacks of pid %d:\n%s" % (d.pid, "\n".join(
                ln for ln in r.stdout.splitlines() if ln.startswith(("#", "Thread")))))
        for sql in ("SELECT pid, application_name, state, wait_event_type, wait_event, "
                    "left(query, 80) FROM pg_stat_activity WHERE datname = '%s'" % DB,
                    "SELECT locktype, objid, pid, mode, granted FROM pg_locks "
                    "WHERE locktype = 'advisory'"):
            try:
                out.append("%s:\n%s" % (sql, "\n".join(" | ".join(r) for r in psql(DB, sql))))
            except Exception as e:
                out.append("%s: %s" % (sql, e))
        out.append("logs:\n" + self.log_tails(1500))
        return "\n".join(out)

    def check_token(self):
        reg = crash_check.read_registry_pg(self.pg.host, DB)
        objects = crash_check.daemon_objects(self.reps[0])
        notes = []
        problems = crash_check.check_token(reg, objects, notes=notes)
        if reg["intents"]:
            problems.append("registry: %d intent(s) left: %s" % (len(reg["intents"]),
                                                                 reg["intents"]))
        print("fleet token: %d objects, %d key versions and %d API key secrets in the "
              "registry; %d problem(s)%s" % (
                  len(objects), sum(len(v) for v in reg["versions"].values()),
                  sum(len(v) for v in reg["api_secrets"].values()), len(problems),
                  "; notes: %s" % notes if notes else ""), flush=True)
        self.assertEqual(problems, [])

    # ---- 6. PostgreSQL down for 10 s under load ----

    def test_6_postgresql_down_10s_under_load(self):
        name = "fleet-outage"
        self.admin(0).CreateKey(pb.CreateKeyRequest(name=name, type=pb.EC_P256), timeout=T)
        pids = [d.pid for d in self.reps]
        stop = threading.Event()
        lock = threading.Lock()
        refused = collections.Counter()      # (kind, code, text) of every refusal
        wrong = []
        accepted_calls = []                  # (replica, body, md)
        accepted_rest = []                   # (replica, parts, sig)
        ok = collections.Counter()
        health = collections.defaultdict(set)
        rot_keys, rot_answers, rot_first = [], {}, {}
        phase = ["before"]

        def refusal(kind, e):
            with lock:
                refused[(kind, phase[0], code_of(e), details_of(e))] += 1

        def signed_worker(w):
            i = w
            while not stop.is_set():
                i = (i + 1) % 3
                body = pb.MacRequest(key="fleet-mac", data=b"outage").SerializeToString()
                md = self.api.md(KS + "Mac", body)
                try:
                    self.mac_call(i, body, md, timeout=15)
                    with lock:
                        accepted_calls.append((i, body, md))
                        ok[("call", phase[0])] += 1
                except grpc.RpcError as e:
                    refusal("call", e)
                    time.sleep(0.01)

        def rest_worker():
            i = 0
            while not stop.is_set():
                i = (i + 1) % 3
                parts, sig = self.rest_request()
                try:
                    v = self.rest_verify(i, parts, sig, timeout=15)
                except grpc.RpcError as e:
                    refusal("rest", e)
                    time.sleep(0.01)
                    continue
                with lock:
                    if v.verdict == pb.VALID and v.valid:
                        accepted_rest.append((i, parts, sig))
                        ok[("rest", phase[0])] += 1
                    else:
                        wrong.append("fresh REST nonce on %s answered %s (%s) %s" % (
                            REPLICAS[i], v.verdict, v.reason, phase[0]))

        def rotation_worker():
            n = 0
            while not stop.is_set():
                idem = "fleet-outage-%d" % n
                rot_keys.append(idem)
                try:
                    r = self.admin(n % 3).RotateKey(pb.RotateKeyRequest(name=name), timeout=15,
                                                    metadata=meta(idem, idem + "-a0"))
                    rot_answers[idem] = r
                    with lock:
                        ok[("rotation", phase[0])] += 1
                except grpc.RpcError as e:
                    refusal("rotation", e)
                    rot_first[idem] = "%s on %s while PostgreSQL %s: %s %s" % (
                        idem, REPLICAS[n % 3], phase[0], code_of(e), details_of(e))
                    time.sleep(0.5)
                n += 1

        def health_worker():
            while not stop.is_set():
                for i, d in enumerate(self.reps):
                    try:
                        st = health_check(d.service_socket, timeout=2)
                    except grpc.RpcError as e:
                        st = "error %s" % code_of(e)
                    with lock:
                        health[(i, phase[0])].add(st)
                time.sleep(0.1)

        threads = [threading.Thread(target=signed_worker, args=(w,)) for w in range(3)]
        threads += [threading.Thread(target=f) for f in (rest_worker, rotation_worker,
                                                          health_worker)]
        for t in threads:
            t.start()
        try:
            time.sleep(2)
            phase[0] = "down"
            t_down = time.monotonic()
            self.pg.stop()
            while time.monotonic() < t_down + 10:
                time.sleep(0.1)
            phase[0] = "back"
            self.pg.start()
            t_back = time.monotonic()
            # Every replica serves again: health and a signed call, unaided.
            back_after = {}
            while len(back_after) < 3 and time.monotonic() < t_back + 30:
                for i in range(3):
                    if i in back_after:
                        continue
                    try:
                        if health_check(self.reps[i].service_socket, timeout=2) == SERVING:
                            self.signed_mac(i, timeout=5)
                            back_after[i] = time.monotonic() - t_back
                    except grpc.RpcError:
                        pass
                time.sleep(0.05)
            time.sleep(1)
            phase[0] = "after"
            time.sleep(1)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
            if not self.pg.up:
                self.pg.start()
        self.assertEqual(len(back_after), 3, "replicas serving again 30 s after PostgreSQL "
                         "came back: %s; logs:\n%s" % (
                             [REPLICAS[i] for i in back_after], self.log_tails()))
        self.assertEqual([d.pid for d in self.reps], pids, "a replica was restarted")

        # Nothing accepted twice: every accepted nonce replayed to another replica.
        replays_ok = []
        for i, body, md in accepted_calls:
            try:
                self.mac_call((i + 1) % 3, body, md)
                replays_ok.append("signed call accepted on %s was accepted again on %s"
                                  % (REPLICAS[i], REPLICAS[(i + 1) % 3]))
            except grpc.RpcError as e:
                if not (code_of(e) == SC.UNAUTHENTICATED and "replayed" in details_of(e)):
                    wrong.append("replay of a signed call: %s %s" % (code_of(e), details_of(e)))
        for i, parts, sig in accepted_rest:
            v = self.rest_verify((i + 2) % 3, parts, sig)
            if v.verdict != pb.REPLAYED_NONCE:
                replays_ok.append("REST nonce %s accepted on %s answered %s on %s" % (
                    parts.nonce, REPLICAS[i], v.verdict, REPLICAS[(i + 2) % 3]))
        # Every rotation refused meanwhile, retried with its key once the
        # server is back: it answers (made now, or the version it made).
        # (A replica's first use of a connection the restart cut may answer
        # UNAVAILABLE while it reconnects: stuck means every retry failed.)
        stuck = []
        for n, idem in enumerate(rot_keys):
            if idem in rot_answers:
                continue
            failed = []
            for i in ((n + 1) % 3, n % 3):
                try:
                    rot_answers[idem] = self.admin(i).RotateKey(
                        pb.RotateKeyRequest(name=name), timeout=T,
                        metadata=meta(idem, "%s-retry-%d" % (idem, i)))
                    break
                except grpc.RpcError as e:
                    failed.append("%s; retried on %s after the outage: %s %s; its record: %s; "
                                  "log: %s" % (
                        rot_first[idem], REPLICAS[i], code_of(e), details_of(e), psql(
                            DB, "SELECT uid, method, done, status, message, request_id, "
                            "committed, effect_version FROM idempotency WHERE key = '%s'"
                            % idem), [ln for d in self.reps for ln in d.log().splitlines()
                                       if idem in ln][:4]))
            if idem not in rot_answers:
                stuck += failed
        answered = sorted(r.primary_version for r in rot_answers.values())
        want = list(range(1, len(rot_keys) + 2))
        # Each replica, the same process as before, serves every kind of call.
        for i in range(3):
            self.assertEqual(health_check(self.reps[i].service_socket, timeout=2), SERVING)
            self.signed_mac(i)
            parts, sig = self.rest_request()
            self.assertEqual(self.rest_verify(i, parts, sig).verdict, pb.VALID)
            self.admin(i).RotateKey(pb.RotateKeyRequest(name=name), timeout=T)
            want.append(want[-1] + 1)

        bad = {k: n for k, n in refused.items()
               if not (k[2] == SC.UNAVAILABLE and "PostgreSQL" in k[3])}
        print("\nfleet PostgreSQL outage (10 s): answered %s; refused %d (%s); back on every "
              "replica after %s s; health seen %s" % (
                  dict(ok), sum(refused.values()),
                  dict(collections.Counter((k[0], k[1], k[2].name if k[2] else None)
                                           for k in refused.elements())),
                  {REPLICAS[i]: round(t, 2) for i, t in sorted(back_after.items())},
                  {"%s %s" % (REPLICAS[i], ph): sorted(map(str, s))
                   for (i, ph), s in sorted(health.items())}), flush=True)
        for (kind, ph, code, text), n in sorted(refused.items(), key=lambda kv: -kv[1])[:8]:
            print("  %d x %s %s: %s %s" % (n, kind, ph, code, text[:200]), flush=True)
        print("fleet PostgreSQL outage: after it, %d accepted signed calls and %d accepted REST "
              "signatures replayed to another replica: %d accepted again; %d wrong answers; "
              "%d rotations retried with their keys, %d of them stuck" % (
                  len(accepted_calls), len(accepted_rest), len(replays_ok), len(wrong),
                  len(rot_first), len(stuck)), flush=True)
        for line in stuck:
            print("  stuck: " + line, flush=True)
        self.assertEqual(bad, {}, "refusals that are not UNAVAILABLE naming PostgreSQL")
        self.assertEqual(stuck, [], "rotations whose idempotency key no longer answers")
        self.assertEqual(wrong, [])
        self.assertEqual(replays_ok, [], "accepted twice")
        self.assertEqual(answered, list(range(2, len(rot_keys) + 2)))
        self.same_versions_everywhere(name, want)
        self.assertTrue(any(ph == "down" for (_, ph, _, _) in refused),
                        "nothing was refused while PostgreSQL was down")
        for i in range(3):
            self.assertIn(NOT_SERVING, health[(i, "down")],
                          "%s: health while PostgreSQL was down: %s" % (
                              REPLICAS[i], health[(i, "down")]))


    def test_7_postgresql_that_hangs(self):
        """PostgreSQL stopped with SIGSTOP: connections are accepted and
        acknowledged, nothing is answered, so no connection or TCP timeout
        fires. On each replica the first signed call waits for its nonce
        claim at most [audit] max_wait_ms (2 s), then is refused UNAVAILABLE
        saying so; the next is refused at once (the server is known not to
        answer); health says NOT_SERVING; a key's metadata, which needs only
        memory, is still read at once. Once the server resumes every
        replica serves signed calls again by itself, and nothing accepted is
        accepted twice."""
        first = "nonce record: PostgreSQL did not answer the claim in 2000 ms (a server that " \
            "hangs: stopped, or its disk)"
        then = "nonce record: PostgreSQL does not answer (a statement was given up after its " \
            "bound); calls that need it are refused until it answers"
        seen, health = [], {}
        for i in range(3):      # connections fresh (test_6 restarted the server)
            self.signed_mac(i, data=b"before the hang")
        self.pg.pause(True)
        try:
            for i in range(3):
                for want in (first, then):
                    t0 = time.monotonic()
                    with self.assertRaises(grpc.RpcError) as cm:
                        self.signed_mac(i, data=b"hang %d %s" % (i, want[:20].encode()),
                                        timeout=20)
                    e = cm.exception
                    seen.append((REPLICAS[i], code_of(e), round(time.monotonic() - t0, 2),
                                 details_of(e)))
                    self.assertEqual((code_of(e), details_of(e)), (SC.UNAVAILABLE, want),
                                     REPLICAS[i])
                    self.assertLess(time.monotonic() - t0, 5 if want == first else 1,
                                    REPLICAS[i])
                health[REPLICAS[i]] = health_check(self.reps[i].service_socket, timeout=5)
                # A read from memory is still served, at once.
                t0 = time.monotonic()
                k = self.admin(i).GetKey(pb.GetKeyRequest(name="fleet-mac"), timeout=5)
                self.assertEqual(k.name, "fleet-mac")
                self.assertLess(time.monotonic() - t0, 1, REPLICAS[i])
        finally:
            self.pg.pause(False)
        print("\nfleet PostgreSQL stopped (SIGSTOP): %s; health %s" % (
            [(r, c.name if c else None, t) for r, c, t, _ in seen], health), flush=True)
        self.assertEqual(set(health.values()), {NOT_SERVING}, health)
        self.wait_serving()
        for i in range(3):
            body = pb.MacRequest(key="fleet-mac", data=b"after the hang").SerializeToString()
            md = self.api.md(KS + "Mac", body)
            self.mac_call(i, body, md, timeout=T)
            with self.assertRaises(grpc.RpcError) as cm:
                self.mac_call((i + 1) % 3, body, md, timeout=T)
            self.assertEqual(code_of(cm.exception), SC.UNAUTHENTICATED)
            self.assertIn("replayed", details_of(cm.exception))

    def test_7b_postgresql_that_hangs_calls_at_once(self):
        """The same hang met by calls at once on one replica. Eight signed
        calls: each refused within the claim's bound (2 s) and a margin;
        before, the claims queued behind the batch that timed out each
        reconnected for connect_timeout (5 s) first, and waited up to
        7 s. Four idempotent creations (the store): the first waits out
        wait_ms (5 s) and one reconnection attempt (5 s), the others are
        refused once that attempt ends, not after one attempt each in turn
        (before: 10, 15, 20 and 25 s)."""
        for i in range(3):
            self.signed_mac(i, data=b"before the hang, at once")
        self.pg.pause(True)
        try:
            def timed(fn):
                t0 = time.monotonic()
                try:
                    fn()
                    return None, time.monotonic() - t0
                except grpc.RpcError as e:
                    return e, time.monotonic() - t0
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                macs = list(ex.map(lambda k: timed(lambda: self.signed_mac(
                    0, data=b"at once %d" % k, timeout=60)), range(8)))
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                made = list(ex.map(lambda k: timed(lambda: self.admin(0).CreateKey(
                    pb.CreateKeyRequest(name="fleet-hang-%d" % k, type=pb.HMAC_SHA256),
                    timeout=120, metadata=[("idempotency-key", "fleet-hang-%d" % k)])),
                    range(4)))
        finally:
            self.pg.pause(False)
        print("\nfleet PostgreSQL hung, calls at once: 8 signed calls refused after %s s; "
              "4 creations refused after %s s" % (sorted(round(t, 2) for _, t in macs),
                                                  sorted(round(t, 2) for _, t in made)),
              flush=True)
        for e, t in macs + made:
            self.assertIsNotNone(e)
            self.assertEqual(code_of(e), SC.UNAVAILABLE, details_of(e))
            self.assertIn("PostgreSQL", details_of(e))
        self.assertLess(max(t for _, t in macs), 3.5)
        self.assertLess(max(t for _, t in made), 13)

    def test_7c_watchdog_pings_while_postgresql_hangs(self):
        """A replica under systemd's watchdog (6 s here; the unit's is 30 s)
        keeps pinging while PostgreSQL hangs for 16 s: its periodic work on
        the state (the audit outbox, scheduled work, expiries) waits on its
        own thread. Before, the main loop waited out each statement's bound
        and a reconnection in turn (5 + 5 s here, 35 s with the defaults),
        and systemd would have killed every replica, which then could not
        start while the server hung."""
        d, path = self.reps[2], os.path.join(self.top, "notify.sock")
        n = tsn.Notifications(path)
        d.stop()
        d.crash_env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "6000000"}
        try:
            d.start()
            n.until("READY", 30)
            self.pg.pause(True)
            try:
                msgs = n.collect(16.0)
            finally:
                self.pg.pause(False)
            msgs += n.collect(4.0)
            pings = [t for t, _, f, _ in msgs if f == {"WATCHDOG": "1"}]
            gaps = [b - a for a, b in zip(pings, pings[1:])]
            print("\nfleet PostgreSQL hung 16 s: %d watchdog pings, longest gap %.2f s"
                  % (len(pings), max(gaps) if gaps else -1), flush=True)
            self.assertGreaterEqual(len(pings), 5, "pings %r" % pings)
            self.assertLess(max(gaps), 6.0, "gaps %r" % ["%.2f" % g for g in gaps])
            self.assertNotIn("no WATCHDOG=1", d.log(all_starts=False))
        finally:
            n.close()
            d.stop()
            d.crash_env = {}
            d.start()


if __name__ == "__main__":
    unittest.main(verbosity=2)
