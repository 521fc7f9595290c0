#!/usr/bin/python3
"""Crash consistency at every named crash point (issue 13, DESIGN.md §4a).

For each mutating scenario (tests/integration/crash_harness.py: CreateKey (EC, HMAC),
sealed ImportKey, RotateKey (EC, AES), every lifecycle change, destruction by
the sweeper (EC, HMAC), scheduled rotation, principal create/grant/revoke/
limit/delete, API key create/rotate/revoke) one traced run learns the crash
points the mutation passes (COFFER_CRASH_TRACE); then for every point and
every pass the daemon is started with COFFER_CRASH_AT=<point>@<n>, the call
is made with an idempotency key and dies there (exit 86), the daemon is
restarted, the call retried twice with the same key (both answers equal, the
effect made once), and crash_check.py checks every invariant (registry,
token through raw Cryptoki, audit trail, `cofferctl audit verify`).
Start-up recovery points seen after a crash get a second crash there.
The same loop runs with COFFER_CRASH_MODE=stop and SIGKILL from outside, and
with "token file events" as extra points: SIGKILL the moment the n-th new
SoftHSM *.object file is closed after writing, or the n-th one is deleted
(inotify). Every registered point (`cofferd --crash-points`) must have been
crashed at at least once. Counts are printed.

The seven reproductions of the issue are named regression tests
(test_repro_1 ... test_repro_7), and test_checker_detects_* show that every
check of crash_check.py can fail.

Environment: COFFER_CRASH_QUICK=1 (default in a sanitizer build) samples the
passes of a point (its first and last) in the _exit loop, and in the stop
loop crashes at each point in one scenario only (the stop loop always
samples passes); COFFER_CRASH_FULL=1 runs every pass in both loops;
COFFER_CRASH_JOBS (default 3) scenarios at once, each on its own daemon and
token, plus one thread for each background scenario;
COFFER_CRASH_ONLY=<substring> runs only the scenarios whose name contains it
(and skips the coverage check); COFFER_KEEP_TMP=1 keeps the
daemons' directories (tests/integration/crash_check.py DIR checks one again).

Times (2 CPUs): about 4 min in a RelWithDebInfo build, 5.5 min with
ASan+UBSan.
"""
import collections
import concurrent.futures
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import crash_check  # noqa: E402
import crash_harness as H  # noqa: E402
from daemon_fixture import skip_test_on_postgresql  # noqa: E402


def setUpModule():
    skip_test_on_postgresql("test_crash_points (every test)", crash_check.POSTGRESQL_SKIP)
from crash_harness import T, pb  # noqa: E402

JOBS = int(os.environ.get("COFFER_CRASH_JOBS", "3"))
FULL = os.environ.get("COFFER_CRASH_FULL", "") not in ("", "0")
CRASHED = ("exit:86", "sigkill", "sigkill-at-stop", "startup", "crashed at shutdown")


def selected(scs):
    only = os.environ.get("COFFER_CRASH_ONLY")
    return [s for s in scs if not only or only.lower() in s.name.lower()]


def _shape(problem):
    """A problem with its numbers, ids and names blurred: one line per kind."""
    p = re.sub(r"[0-9a-f]{16,}", "H", problem)
    p = re.sub(r"\b(ak_)?[a-z]+(-[a-z0-9]+)*-\d+(-\d+)*(-a\d)?\b", "NAME", p)
    return re.sub(r"\d+", "N", p)


def report(test, cases, title, limit=25, extra=()):
    """Fail listing each kind of problem once (with how many cases had it
    and the first case), then the first problems in full."""
    bad = [(c, p) for c in cases for p in c.problems]
    if not bad and not extra:
        return
    kinds = collections.OrderedDict()
    for c, p in bad:
        kinds.setdefault(_shape(p), []).append((c, p))
    lines = ["%s: %d problem(s) of %d kind(s) in %d of %d cases" % (
        title, len(bad), len(kinds), len({id(c) for c, _ in bad}), len(cases))]
    lines += list(extra)
    for k, items in kinds.items():
        c, p = items[0]
        scs = sorted({ci.sc.name for ci, _ in items})
        lines.append("- %dx in %s; first [%s]:\n    %s" % (
            len(items), ", ".join(scs), c.label(), p.replace("\n", "\n    ")))
    lines.append("first %d in full:" % min(limit, len(bad)))
    for c, p in bad[:limit]:
        lines.append("  [%s] %s" % (c.label(), p))
    test.fail("\n".join(lines))


def run_scenarios(fn, scs):
    """fn(scenario) -> list of cases, JOBS scenarios at once. The background
    scenarios (the daemon's own work: every case waits for it to fall due)
    are mostly asleep and the longest: each gets a thread of its own beside
    the JOBS, instead of holding one of them for the whole loop."""
    slow = [s for s in scs if s.background]
    fast = [s for s in scs if not s.background]
    out = []
    with concurrent.futures.ThreadPoolExecutor(max(len(slow), 1)) as bg, \
            concurrent.futures.ThreadPoolExecutor(JOBS) as ex:
        waits = [bg.submit(fn, s) for s in slow]
        for cases in ex.map(fn, fast):
            out += cases
        for w in waits:
            out += w.result()
    return out


def _rd(path):
    with open(path, "rb") as f:
        return f.read()


def _wr(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _reported(log, label):
    """Does a log line name NAME/VERSION (as coffer/NAME/VERSION, NAME/VERSION
    or "NAME version VERSION")?"""
    name, ver = label.split("/")
    return any(label in ln or re.search(r"\b%s\b.*\bversion %s\b" % (re.escape(name), ver), ln)
               for ln in log.splitlines())


def p11(d):
    """p11_objects on d's token with the given action."""
    def run(*action):
        return crash_check.p11_tool(d.config["token"]["module"], d.label, d.pin_file,
                                    d.softhsm_conf, *action)
    return run


class CrashLoops(unittest.TestCase):
    """Every crash point of every scenario, in both modes; token file events."""

    @classmethod
    def setUpClass(cls):
        cls.points = H.crash_points()

    def need_points(self):
        if self.points is None:
            self.fail("cofferd --crash-points lists nothing: cofferd built without "
                      "COFFER_CRASH_POINTS, or from before crash points existed")

    def loop(self, mode, sample, once=False):
        """once: each point in one scenario only (the first that passes it)."""
        covered = collections.Counter()
        seen = set()
        recovery = {}
        first_sc = [True]

        def one(sc):
            r = H.ScenarioRunner(sc)
            cases = []
            try:
                c0 = r.run(None, trace=True)
                cases.append(c0)
                if c0.trace is None:
                    return cases
                start, call = c0.trace
                baseline = set(start)
                seen.update(start)
                seen.update(call)
                plan = H.hit_plan((start, call), sample)
                if first_sc[0]:
                    # The start-up's own points, once.
                    first_sc[0] = False
                    plan = H.hit_plan(([], start), sample) + plan
                for p, n in plan:
                    if once and covered[p]:
                        continue
                    c = r.run(("point", p, n), mode, trace=True)
                    cases.append(c)
                    if c.outcome in CRASHED:
                        covered[p] += 1
                    for rp in c.restart_points:
                        seen.add(rp)
                        if rp not in baseline and (sc.name, rp) not in recovery:
                            recovery[(sc.name, rp)] = (c.trigger, c.restart_points.index(rp))
                # Recovery points this scenario revealed: crash there too (each
                # scenario tries its own: a restart may pass a point because
                # of what an earlier case left, which its trigger alone does
                # not make again).
                for (name, rp), (trig, _) in sorted(recovery.items()):
                    if name != sc.name or covered[rp]:
                        continue
                    c = r.run(trig, mode, trace=True, restart_trigger=("point", rp, 1))
                    cases.append(c)
                    if c.restart_outcome == "crashed":
                        covered[rp] += 1
            finally:
                r.cleanup()
            print("  %-28s %3d cases (%s)" % (sc.name, len(cases) - 1, mode), flush=True)
            return cases

        t0 = time.monotonic()
        scs = selected(H.scenarios())
        cases = run_scenarios(one, scs)
        crash_cases = [c for c in cases if c.trigger is not None]
        pairs = {(c.sc.name, c.trigger[1]) for c in crash_cases}
        crashed = [c for c in crash_cases if c.outcome in CRASHED]
        print("crash points (%s): %d registered, %d passed by the scenarios; %d (scenario, "
              "point) cases, %d runs, %d crashed where asked, %d not reached; %.0f s"
              % (mode, len(self.points), len(seen), len(pairs), len(crash_cases), len(crashed),
                 len(crash_cases) - len(crashed), time.monotonic() - t0), flush=True)
        extra = []
        if not os.environ.get("COFFER_CRASH_ONLY"):
            uncovered = sorted(set(self.points) - set(covered))
            unknown = sorted(seen - set(self.points))
            if uncovered:
                extra.append("registered crash points no scenario crashed at (add a scenario "
                             "that passes them): %s" % ", ".join(uncovered))
            if unknown:
                extra.append("points passed but not listed by --crash-points: %s"
                             % ", ".join(unknown))
        report(self, cases, "crash points (%s)" % mode, extra=extra)

    def test_crash_points_exit(self):
        self.need_points()
        self.loop("exit", sample=H.quick() and not FULL)

    def test_crash_points_stop(self):
        self.need_points()
        if H.sanitizer_build() and not FULL:
            # _exit and SIGKILL leave the same state behind; the sanitizers
            # look for memory errors on the paths the _exit loop already
            # takes. The normal build runs this loop (COFFER_CRASH_FULL=1
            # forces it here).
            self.skipTest("stop + SIGKILL loop: run in the normal build")
        self.loop("stop", sample=not FULL, once=H.quick() and not FULL)

    def test_token_file_events(self):
        """SIGKILL from outside at the n-th new token object file closed after
        writing, and at the n-th deleted one, for every scenario."""
        def one(sc):
            r = H.ScenarioRunner(sc)
            cases = []
            try:
                c0 = r.run(None)
                cases.append(c0)
                counts = c0.counts or {}
                for kind in ("new", "del"):
                    for n in range(1, counts.get(kind, 0) + 1):
                        cases.append(r.run(("file", kind, n)))
            finally:
                r.cleanup()
            return cases
        t0 = time.monotonic()
        cases = run_scenarios(one, selected(H.scenarios()))
        ev = [c for c in cases if c.trigger is not None]
        print("token file events: %d cases (%d new-object, %d deletion), %d killed in time, "
              "%d left an unreadable (empty) SoftHSM object file; %.0f s" % (
                  len(ev), sum(c.trigger[1] == "new" for c in ev),
                  sum(c.trigger[1] == "del" for c in ev),
                  sum(c.outcome == "sigkill" for c in ev), sum(bool(c.notes) for c in ev),
                  time.monotonic() - t0), flush=True)
        self.assertGreater(len(ev), 0)
        report(self, cases, "token file events")


class Repro(unittest.TestCase):
    """The seven reproductions of issue 13."""

    def runner(self, sc):
        r = H.ScenarioRunner(sc)
        self.addCleanup(r.cleanup)
        return r

    def test_repro_1_one_idempotency_key_two_rotations(self):
        """SIGKILL at every write to coffer.db-wal of a RotateKey with an
        idempotency key; the retry must not make a second version."""
        r = self.runner(H.RotateKey(pb.EC_P256, "ec"))
        c0 = r.run(None)
        w = c0.counts["wal"]
        ns = list(range(1, w + 1))
        if len(ns) > 30:
            ns = sorted(set(ns[:10] + random.Random(1).sample(ns, 20)))
        cases = [c0] + [r.run(("file", "wal", n)) for n in ns]
        points = H.crash_points()
        if points is not None:
            pl = H.hit_plan(r.run(None, trace=True).trace, sample=False)
            cases += [r.run(("point", p, n)) for p, n in pl]
        print("repro 1: %d WAL-write kills, %d crash points of RotateKey" % (
            len(ns), len(cases) - 1 - len(ns)), flush=True)
        report(self, cases, "repro 1")

    def test_repro_2_primary_that_cannot_sign(self):
        """SIGKILL as each new object file of a rotation is written (public
        before private); the retry's version must sign, one object each."""
        cases = []
        for typ, tag in ((pb.EC_P256, "ec"), (pb.RSA_2048, "rsa")):
            r = self.runner(H.RotateKey(typ, tag))
            c0 = r.run(None)
            cases.append(c0)
            self.assertGreaterEqual(c0.counts["new"], 2, "a key pair is two object files")
            cases += [r.run(("file", "new", n)) for n in range(1, c0.counts["new"] + 1)]
        report(self, cases, "repro 2")

    def test_repro_3_change_without_audit_record(self):
        """A replay's record says it is a replay of the original request and
        names the version; a crash between commit and audit write leaves
        exactly one record (every crash point of RotateKey when built in)."""
        sc = H.RotateKey(pb.HMAC_SHA256, "hmac3")
        r = self.runner(sc)
        c0 = r.run(None)      # call + two retries with one key, checked with Expect
        cases = [c0]
        recs, _ = crash_check.read_audit(r.d.state_dir)
        mine = [x for x in recs if x.get("method", "").endswith("/RotateKey")
                and x.get("key") == sc.key(0)]
        self.assertEqual(len(mine), 3, mine)
        for x in mine[1:]:
            self.assertEqual(x.get("replay_of"), mine[0].get("request_id"),
                             "a replay's record must name the original: %s" % x)
            self.assertEqual(x.get("version"), 2, "a replay's record names the version: %s" % x)
        if H.crash_points() is not None:
            pl = H.hit_plan(r.run(None, trace=True).trace, sample=False)
            cases += [r.run(("point", p, n)) for p, n in pl]
        report(self, cases, "repro 3")

    def test_repro_4_interrupted_destruction(self):
        """Destruction by the sweeper (grace 2 s) killed as each object file
        disappears: recorded destroyed only with no object left, audited
        once."""
        cases = []
        for typ, tag in ((pb.EC_P256, "ec"), (pb.HMAC_SHA256, "hmac")):
            r = self.runner(H.SweeperDestroy(typ, tag))
            c0 = r.run(None)
            cases.append(c0)
            self.assertGreaterEqual(c0.counts["del"], 1)
            cases += [r.run(("file", "del", n)) for n in range(1, c0.counts["del"] + 1)]
        report(self, cases, "repro 4")

    def test_repro_5_reconciliation_reports_duplicates_and_leftovers(self):
        """Objects a crash could leave (a duplicate pair under a version's
        label, the public half of an unrecorded version, an object of a
        destroyed version, an unclaimed secret) are each reported at the next
        start."""
        d = H.CrashDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="r5", type=pb.EC_P256), timeout=T)
        a.RotateKey(pb.RotateKeyRequest(name="r5"), timeout=T)
        a.ScheduleDestroyKeyVersion(pb.KeyVersionRequest(name="r5", version=1, grace_seconds=1),
                                    timeout=T)
        deadline = time.monotonic() + 10
        while dict(H.versions(a, "r5")).get(1) != pb.DESTROYED:
            self.assertLess(time.monotonic(), deadline, "version 1 not destroyed")
            time.sleep(0.1)
        self.assertEqual(d.check(), [])
        d.stop()
        tool = p11(d)
        tool("--generate-ec-pair", "coffer/r5/2", "aa" * 16)          # duplicate pair
        tool("--generate-ec-pair", "coffer/r5/3", "bb" * 16)          # unrecorded version...
        tool("--destroy", "coffer/r5/3", "private")                     # ...half of it
        tool("--generate-secret", "coffer/r5/1", "cc" * 16)           # destroyed version
        tool("--generate-secret", "coffer/ghost/1", "dd" * 16)        # no such key
        planted = crash_check.check_daemon(d)
        for want in ("2 private objects carry the label coffer/r5/2", "coffer/r5/3",
                     "key r5 version 1 (destroyed) still has", "coffer/ghost/1"):
            self.assertTrue(any(want in p for p in planted), (want, planted))
        try:
            d.start()
        except H.DaemonError as e:
            self.fail("cofferd does not start on a token with these leftovers: %s" % e)
        log = d.log(all_starts=False)
        missing = []
        for label, what in (("r5/2", "duplicate objects of a live version"),
                            ("r5/3", "half pair of an unrecorded version"),
                            ("r5/1", "object of a destroyed version"),
                            ("ghost/1", "object of no key")):
            if not _reported(log, label):
                missing.append("%s (coffer/%s)" % (what, label))
        self.assertEqual(missing, [], "start-up reconciliation did not report these; log:\n"
                         + log)
        # Whatever was repaired, what is left is still reported next time.
        left = crash_check.check_daemon(d)
        if left:
            d.restart()
            log = d.log(all_starts=False)
            for p in left:
                for label in ("r5/2", "r5/3", "r5/1", "ghost/1"):
                    if "coffer/" + label in p:
                        self.assertTrue(_reported(log, label), "left in the token but not "
                                        "reported at the next start: %s; log:\n%s" % (p, log))

    def test_repro_6_audit_tail_cut_or_forged(self):
        """With the daemon stopped, dropping the last record or cutting it in
        half must be caught by `audit verify` (forging the last record with a
        recomputed chain, and the offline verifier: tests/test_audit*.py)."""
        problems = []
        for how in ("drop the last record", "cut the last record in half"):
            d = H.CrashDaemon()
            self.addCleanup(d.cleanup)
            d.start()
            a = d.admin_stub()
            a.CreateKey(pb.CreateKeyRequest(name="r6", type=pb.EC_P256), timeout=T)
            a.RotateKey(pb.RotateKeyRequest(name="r6"), timeout=T)
            time.sleep(0.2)
            d.stop()
            path = os.path.join(d.state_dir, "audit.log")
            with open(path, "rb") as f:
                lines = f.read().splitlines(keepends=True)
            last = lines[-1]
            if how.startswith("drop"):
                data = b"".join(lines[:-1])
            else:
                data = b"".join(lines[:-1]) + last[:len(last) // 2]
            with open(path, "wb") as f:
                f.write(data)
            d.start()
            r = d.ctl("audit", "verify", ok=False)
            out = (r.stdout + r.stderr).decode(errors="replace")
            if r.returncode == 0 and "intact" in out:
                problems.append("%s (%s): audit verify says: %s" % (how, last[:80], out.strip()))
        self.assertEqual(problems, [])

    def test_repro_8_crash_at_the_start_after_a_clean_stop(self):
        """A clean stop anchors the trail's exact end. A start that crashes
        after writing its start record and before anchoring it (found by a
        review: the window of `audit.start.written`) must not leave records
        after that "clean" end: the next start would call the trail altered
        (ALARM, tamper_at in its start record) and every verify fail. Nor
        may one that crashes just after marking the anchor in use
        (`audit.start.in-use`, nothing written yet)."""
        for point, adopted in (("audit.start.in-use", None), ("audit.start.written", 1)):
            with self.subTest(point=point):
                d = H.CrashDaemon()
                self.addCleanup(d.cleanup)
                d.start()
                d.admin_stub().CreateKey(pb.CreateKeyRequest(name="r8", type=pb.EC_P256),
                                         timeout=T)
                d.stop()
                d.crash_env = {"COFFER_CRASH_AT": "%s@1" % point}
                self.assertFalse(d.try_start(), "cofferd did not stop at %s" % point)
                self.assertEqual(d.proc.wait(timeout=30), 86, d.log(all_starts=False)[-2000:])
                d.crash_env = {}
                d.start()
                log = d.log(all_starts=False)
                self.assertNotIn("ALARM", log)
                if adopted:
                    self.assertIn("adopted %d records written after the last anchor" % adopted,
                                  log)
                else:
                    self.assertNotIn("adopted", log)
                r = d.ctl("audit", "verify", ok=False)
                out = (r.stdout + r.stderr).decode(errors="replace")
                self.assertEqual(r.returncode, 0, out)
                with open(os.path.join(d.state_dir, "audit.log")) as f:
                    self.assertNotIn("tamper", f.read())
                d.stop()

    @unittest.skip("forging the last record with a recomputed chain, replacing the trail "
                   "with an older copy and the offline verifier: tests/test_audit*.py "
                   "(helper-1)")
    def test_repro_6b_audit_forged_tail(self):
        pass

    def test_repro_7_fail_closed_serves_no_call_without_a_record(self):
        """[audit] failure = closed, trail idle, audit.log made immutable
        (chattr +i): the next Sign and the next rotation fail UNAVAILABLE and
        no version is made (full disk and file-size limit: tests/test_audit*.py)."""
        if shutil.which("chattr") is None:
            self.skipTest("no chattr")
        d = H.CrashDaemon(config={"audit": {"failure": "closed"}})
        self.addCleanup(d.cleanup)
        d.start()
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="r7", type=pb.EC_P256), timeout=T)
        svc = d.service_stub()
        svc.Sign(pb.SignRequest(key="r7", message=b"m"), timeout=T)
        time.sleep(0.3)          # idle: the seal is written
        path = os.path.join(d.state_dir, "audit.log")
        if subprocess.run(["chattr", "+i", path], capture_output=True).returncode != 0:
            self.skipTest("chattr +i not supported here")
        self.addCleanup(subprocess.run, ["chattr", "-i", path], capture_output=True)
        released = []
        try:
            svc.Sign(pb.SignRequest(key="r7", message=b"m"), timeout=T)
            released.append("Sign returned a signature")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                released.append("Sign: %s %s (expected UNAVAILABLE)" % (e.code(), e.details()))
        try:
            a.RotateKey(pb.RotateKeyRequest(name="r7"), timeout=T)
            released.append("RotateKey made a version")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                released.append("RotateKey: %s %s (expected UNAVAILABLE)"
                                % (e.code(), e.details()))
        subprocess.run(["chattr", "-i", path], capture_output=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                vs = H.versions(d.admin_stub(), "r7")
                break
            except grpc.RpcError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.2)
        if len(vs) != 1:
            released.append("versions after the refused rotation: %s" % vs)
        self.assertEqual(released, [])


class CheckerDetects(unittest.TestCase):
    """Each check of crash_check.py fails when its invariant is broken."""

    @classmethod
    def setUpClass(cls):
        d = cls.d = H.CrashDaemon()
        d.start()
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="ck-ec", type=pb.EC_P256), timeout=T)
        a.RotateKey(pb.RotateKeyRequest(name="ck-ec"), timeout=T)
        a.RotateKey(pb.RotateKeyRequest(name="ck-ec"), timeout=T)
        a.CreateKey(pb.CreateKeyRequest(name="ck-h", type=pb.HMAC_SHA256), timeout=T)
        a.CreatePrincipal(pb.CreatePrincipalRequest(name="ck-p", uids=[61000]), timeout=T)
        H.sealed_call(d, "CreateApiKey", pb.CreateApiKeyRequest(principal="ck-p"), None)
        time.sleep(0.2)
        d.stop()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def setUp(self):
        self.tool = p11(self.d)
        # A copy of the state dir to break; the token is restored by each test.
        self.state = tempfile.mkdtemp(prefix="coffer-ck-")
        self.addCleanup(shutil.rmtree, self.state, True)
        for f in os.listdir(self.d.state_dir):
            p = os.path.join(self.d.state_dir, f)
            if os.path.isfile(p):
                shutil.copy(p, self.state)

    def check(self):
        return crash_check.check(self.state, self.d.objects())

    def assertReports(self, text, problems=None):
        problems = self.check() if problems is None else problems
        self.assertTrue(any(text in p for p in problems),
                        "expected a violation containing %r, got %s" % (text, problems))

    def sql(self, stmt, *args):
        db = sqlite3.connect(os.path.join(self.state, "coffer.db"))
        db.execute(stmt, args)
        db.commit()
        db.close()

    def test_checker_detects_nothing_on_a_clean_daemon(self):
        self.assertEqual(self.check(), [])

    def test_checker_detects_orphan_object(self):
        self.tool("--generate-secret", "coffer/ck-ec/9", "01" * 16)
        self.addCleanup(self.tool, "--destroy", "coffer/ck-ec/9")
        self.assertReports("orphan object(s) coffer/ck-ec/9")
        self.tool("--generate-secret", "coffer/coffer.apikey.ak_nope/1", "02" * 16)
        self.addCleanup(self.tool, "--destroy", "coffer/coffer.apikey.ak_nope/1")
        self.assertReports("orphan object(s) coffer/coffer.apikey.ak_nope/1")

    def test_checker_detects_duplicate_objects(self):
        self.tool("--generate-ec-pair", "coffer/ck-ec/2", "03" * 16)
        self.addCleanup(self.tool, "--destroy", "coffer/ck-ec/2", "private", "03" * 16)
        self.addCleanup(self.tool, "--destroy", "coffer/ck-ec/2", "public", "03" * 16)
        p = self.check()
        self.assertReports("2 private objects carry the label coffer/ck-ec/2", p)
        self.assertReports("key ck-ec version 2 (enabled) has {'private': 2, 'public': 2}", p)

    def test_checker_detects_half_pair(self):
        # Plant a pair under an unclaimed label, remove its private half.
        self.tool("--generate-ec-pair", "coffer/ck-ec/7", "04" * 16)
        self.tool("--destroy", "coffer/ck-ec/7", "private")
        self.addCleanup(self.tool, "--destroy", "coffer/ck-ec/7")
        self.assertReports("orphan object(s) coffer/ck-ec/7: public id " + "04" * 16)

    def test_checker_detects_missing_and_wrong_id(self):
        # The listing edited: another CKA_ID, a missing half, a missing secret.
        objs = self.d.objects()
        for o in objs:
            if o["label"] == "coffer/ck-h/1":
                o["id"] = "ff" * 16
        self.assertReports("key ck-h version 1 (enabled): secret object has CKA_ID " + "ff" * 16,
                           crash_check.check(self.state, objs))
        objs = [o for o in self.d.objects() if not (o["label"] == "coffer/ck-ec/3"
                                                    and o["class"] == "private")]
        self.assertReports("key ck-ec version 3 (enabled) has {'public': 1} in the token, "
                           "expected 1 private + 1 public", crash_check.check(self.state, objs))
        objs = [o for o in self.d.objects() if not o["label"].startswith("coffer/coffer.apikey.")]
        self.assertReports("secret generation 1 has no object in the token",
                           crash_check.check(self.state, objs))

    def test_checker_detects_gap_and_row_deletion(self):
        self.sql("DELETE FROM versions WHERE name = 'ck-ec' AND version = 2")
        p = self.check()
        self.assertReports("key ck-ec has versions [1, 3], not 1..2 without gaps", p)
        self.assertReports("orphan object(s) coffer/ck-ec/2", p)
        self.assertReports("says key ck-ec version 2 was made, the registry has no such version", p)

    def test_checker_detects_destroyed_version_with_objects(self):
        self.sql("UPDATE versions SET state = 4 WHERE name = 'ck-ec' AND version = 1")
        p = self.check()
        self.assertReports("key ck-ec version 1 (destroyed) still has 2 object(s)", p)
        self.assertReports("key ck-ec version 1 is destroyed and has 0 DestroyKeyVersion", p)

    def test_checker_detects_primary_outside_versions(self):
        self.sql("UPDATE keys SET primary_version = 7 WHERE name = 'ck-ec'")
        self.assertReports("key ck-ec names primary version 7")

    def test_checker_detects_left_intent(self):
        db = sqlite3.connect(os.path.join(self.state, "coffer.db"))
        if "intents" not in crash_check._tables(db):
            db.execute("CREATE TABLE intents (id INTEGER PRIMARY KEY, kind INTEGER, name TEXT, "
                       "version INTEGER, ckaid TEXT, created INTEGER)")
        db.execute("INSERT INTO intents (kind, name, version, ckaid, created) "
                   "VALUES (1, 'ck-ec', 4, '00', 0)")
        db.commit()
        db.close()
        self.assertReports("1 intent(s) left after start-up: make ck-ec/4")

    def test_checker_detects_wrong_recorded_ckaid(self):
        db = sqlite3.connect(os.path.join(self.state, "coffer.db"))
        if "ckaid" not in crash_check._columns(db, "versions"):
            db.execute("ALTER TABLE versions ADD COLUMN ckaid TEXT")
        db.execute("UPDATE versions SET ckaid = ? WHERE name = 'ck-h' AND version = 1",
                   ("ab" * 16,))
        db.commit()
        db.close()
        self.assertReports("the registry records " + "ab" * 16)

    def test_checker_detects_missing_audit_record(self):
        path = os.path.join(self.state, "audit.log")
        lines = _rd(path).splitlines(keepends=True)
        keep = [ln for ln in lines if not (b"/RotateKey" in ln and b'"version":3' in ln)]
        self.assertEqual(len(keep), len(lines) - 1)
        _wr(path, b"".join(keep))
        self.assertReports("key ck-ec version 3 has 0 RotateKey/ScheduledRotation records "
                           "naming it (a change without an audit record)")

    def test_checker_detects_duplicate_audit_record_and_torn_line(self):
        path = os.path.join(self.state, "audit.log")
        lines = _rd(path).splitlines(keepends=True)
        dup = [ln for ln in lines if b"/RotateKey" in ln and b'"version":2' in ln][0]
        _wr(path, b"".join(lines) + dup + b'{"seq":99,"ti')
        p = self.check()
        self.assertReports("key ck-ec version 2 has 2 RotateKey/ScheduledRotation records", p)
        self.assertReports("torn last record", p)
        self.assertReports("is not a JSON record", p)

    def test_checker_detects_api_key_generation_without_record(self):
        path = os.path.join(self.state, "audit.log")
        lines = _rd(path).splitlines(keepends=True)
        _wr(path, b"".join(ln for ln in lines if b"/CreateApiKey" not in ln))
        self.assertReports("had 1 secret generations, 0 CreateApiKey/RotateApiKeySecret")

    def test_checker_detects_replay_faults(self):
        # Synthetic records: the audit rules alone.
        reg = crash_check.read_registry(self.state)
        base = {"method": "/coffer.v1.AdminService/SetPrimaryVersion", "key": "ck-ec",
                "version": 1, "result": "OK"}
        recs = [dict(base, request_id="a0", _line=1), dict(base, request_id="a1", _line=2),
                dict(base, request_id="a2", replay_of="zz", _line=3)]
        e = crash_check.Expect("SetPrimaryVersion", "ck-ec", 1, {"a0", "a1", "a2"})
        p = crash_check.check_audit(reg, [], [e])
        self.assertReports("no OK record of these request ids", p)
        p = crash_check.check_audit(reg, recs, [e])
        self.assertReports("2 committed records", p)
        self.assertReports("is a replay of request zz, which has no committed", p)
        recs = [dict(base, request_id="a0", _line=1), dict(base, request_id="a1", _line=2,
                                                           replay_of="a0", version=0)]
        p = crash_check.check_audit(reg, recs, [e])
        self.assertReports("replay record seq None (line 2: SetPrimaryVersion ck-ec v0", p)
        # A replay recorded like a new change (what issue 13 saw: version 0).
        recs = [dict(base, request_id="a0", _line=1), dict(base, request_id="a1", _line=2,
                                                           version=0)]
        e = crash_check.Expect("SetPrimaryVersion", "ck-ec", 1, {"a0", "a1"})
        p = crash_check.check_audit(reg, recs, [e])
        self.assertReports("answers the same call again without \"replay_of\"", p)

    def test_checker_detects_audit_verify_failure(self):
        d = self.d
        d.start()
        self.addCleanup(d.stop)
        self.assertEqual(crash_check.audit_verify(d.ctl), [])
        # Flip one byte of a record in the middle (the daemon's verify says where).
        path = os.path.join(d.state_dir, "audit.log")
        data = bytearray(_rd(path))
        orig = bytes(data)
        i = data.index(b'"method":"/coffer.v1.AdminService/CreateKey"') + 12
        data[i] ^= 0x01
        _wr(path, bytes(data))
        try:
            p = crash_check.audit_verify(d.ctl)
        finally:
            _wr(path, orig)
        self.assertReports("audit verify: exit", p)


if __name__ == "__main__":
    unittest.main(verbosity=2)
