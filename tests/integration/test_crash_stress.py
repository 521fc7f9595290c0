#!/usr/bin/python3
"""Kill -9 during a long run of mutations (issue 13, "Must show" 2).

200 rotations (four keys: EC P-256, Ed25519, HMAC, AES), 50 destructions
(schedule-destroy of an old version with a 1 s grace, destroyed by the
sweeper while the run goes on) and 50 API key rotations (no overlap: the
old secret is destroyed in the call), shuffled. Each is sent with its own
idempotency key and retried with it until it answers. Meanwhile cofferd is
killed:
  * at random times (SIGKILL from outside, every 0.02..0.25 s);
  * at chosen points: a restart is armed, in turn, with COFFER_CRASH_AT at a
    registered crash point (a random pass 1..3; _exit, or stop + SIGKILL)
    when cofferd has them, or SIGKILL at the n-th new or deleted token
    object file (inotify).
At the end (a clean start, the sweeper done): every answer repeated with its
key is the same; crash_check.py over registry, raw Cryptoki listing and
audit trail; counts printed: duplicated or missing versions, orphan or
duplicate token objects, changes without an audit record, all 0.

The run is split in COFFER_STRESS_SEGMENTS (4) parts, each on its own daemon
and token, COFFER_CRASH_JOBS (3) at once: SoftHSM slows down with every
object in a token (start-up and lookups), and the totals are what count.
Environment also: COFFER_STRESS_SEED (default 13), COFFER_STRESS_SCALE
(default 1.0; 0.25 runs a quarter of everything), COFFER_STRESS_KILL_P
(0.25: the chance of a random kill per call), COFFER_STRESS_VERBOSE=1.
"""
import collections
import concurrent.futures
import os
import random
import signal
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import crash_check  # noqa: E402
import crash_harness as H  # noqa: E402
from daemon_fixture import skip_test_on_postgresql  # noqa: E402


def setUpModule():
    skip_test_on_postgresql("test_crash_stress (every test)", crash_check.POSTGRESQL_SKIP)
from crash_harness import T, pb  # noqa: E402

SEED = int(os.environ.get("COFFER_STRESS_SEED", "13"))
SCALE = float(os.environ.get("COFFER_STRESS_SCALE", "1.0"))
ROTATIONS = int(200 * SCALE)
DESTRUCTIONS = int(50 * SCALE)
API_ROTATIONS = int(50 * SCALE)
KEYS = (("st-ec", pb.EC_P256), ("st-ed", pb.ED25519), ("st-hmac", pb.HMAC_SHA256),
        ("st-aes", pb.AES_256))
PRINCIPALS = 5
# The run is split over SEGMENTS daemons, each with its own token (SoftHSM's
# start-up and lookups slow down with every object a token holds), JOBS at once.
SEGMENTS = int(os.environ.get("COFFER_STRESS_SEGMENTS", "4"))
JOBS = int(os.environ.get("COFFER_CRASH_JOBS", "3"))


class Killer(threading.Thread):
    """SIGKILLs cofferd at a random moment when asked (schedule), and
    finishes off a cofferd that stopped itself at a crash point."""

    def __init__(self, d, rnd):
        super().__init__(daemon=True)
        self.d, self.rnd = d, rnd
        self.done = threading.Event()
        self.kills = collections.Counter()
        self.lock = threading.Lock()
        self.due = None                   # (pid, monotonic time, what)

    def schedule(self, p, window, what="random SIGKILL", any_pid=False):
        """With probability p, a kill within `window` seconds from now (of
        this cofferd, or any_pid: of the one then running)."""
        if self.rnd.random() < p and (any_pid or self.d.proc is not None):
            with self.lock:
                self.due = (None if any_pid else self.d.proc.pid,
                            time.monotonic() + self.rnd.uniform(0, window), what)

    def cancel(self):
        with self.lock:
            self.due = None

    def run(self):
        while not self.done.is_set():
            time.sleep(0.001)
            proc = self.d.proc
            if proc is None or proc.poll() is not None:
                continue
            if self.d.state() == "T":
                proc.kill()
                self.kills["stop+SIGKILL at a point"] += 1
                continue
            with self.lock:
                due = self.due
                if due and due[0] in (None, proc.pid) and time.monotonic() >= due[1]:
                    self.due = None
                else:
                    due = None
            if due:
                try:
                    proc.kill()
                    self.kills[due[2]] += 1
                except ProcessLookupError:
                    pass


class Stress(unittest.TestCase):
    def test_kill9_during_rotations_destructions_and_api_key_rotations(self):
        t0 = time.monotonic()
        segs = []
        for i in range(SEGMENTS):
            def share(total):
                return total // SEGMENTS + (1 if i < total % SEGMENTS else 0)
            segs.append((i, share(ROTATIONS), share(DESTRUCTIONS), share(API_ROTATIONS)))
        with concurrent.futures.ThreadPoolExecutor(JOBS) as ex:
            res = list(ex.map(lambda a: self.segment(*a), segs))
        tot = collections.Counter()
        kills, restarts = collections.Counter(), collections.Counter()
        everything = []
        for r in res:
            tot.update(r["counts"])
            kills.update(r["kills"])
            restarts.update(r["restarts"])
            everything += ["[segment %d] %s" % (r["seg"], p) for p in r["registry"] + r["token"]
                           + r["audit"] + r["problems"] + r["replay"]]
        print("stress: %d rotations, %d destructions (%d versions destroyed), %d API key "
              "rotations in %d segments (a daemon and token each) in %.0f s; kills: %s; "
              "restarts armed: %s" % (tot["rotations"], tot["destructions"], tot["destroyed"],
                                      tot["api_rotations"], SEGMENTS, time.monotonic() - t0,
                                      dict(kills), dict(restarts)), flush=True)
        print("stress: %d duplicated or missing versions, %d orphan or duplicate token objects, "
              "%d changes without (exactly one) audit record, %d replay records that do not "
              "name the version, %d other problems; %d empty SoftHSM object files noted" % (
                  tot["registry"], tot["token"], tot["audit"], tot["replay"], tot["problems"],
                  tot["notes"]), flush=True)
        if everything:
            self.fail("%d problem(s):\n%s" % (len(everything), "\n".join(
                "- " + p for p in everything[:60])))
        self.assertEqual(tot["rotations"], ROTATIONS)
        self.assertEqual(tot["api_rotations"], API_ROTATIONS)
        self.assertEqual(tot["destructions"], DESTRUCTIONS)
        self.assertEqual(tot["destroyed"], DESTRUCTIONS)

    def segment(self, seg, n_rot, n_destroy, n_api):
        """One daemon and token: n_rot rotations, n_destroy destructions and
        n_api API key rotations under kills; the counts and problems."""
        t0 = time.monotonic()
        rnd = random.Random(SEED * 100 + seg)
        points = H.crash_points()
        d = H.CrashDaemon()
        self.addCleanup(d.cleanup)
        d.start()
        a = d.admin_stub()
        for name, typ in KEYS:
            a.CreateKey(pb.CreateKeyRequest(name=name, type=typ), timeout=T)
        api_ids = []
        for p in range(PRINCIPALS):
            a.CreatePrincipal(pb.CreatePrincipalRequest(name="st-p%d" % p, uids=[62000 + p]),
                              timeout=T)
            r = H.sealed_call(d, "CreateApiKey", pb.CreateApiKeyRequest(principal="st-p%d" % p),
                              None)
            api_ids.append(r.key.id)

        ops = ([("rotate", KEYS[i % len(KEYS)][0]) for i in range(n_rot)] +
               [("destroy", None)] * n_destroy +
               [("apirot", api_ids[i % len(api_ids)]) for i in range(n_api)])
        # Destructions need old versions: none in the first fifth.
        head = [o for o in ops if o[0] != "destroy"][:len(ops) // 5]
        rest = [o for o in ops if o[0] != "destroy"][len(ops) // 5:] + \
            [o for o in ops if o[0] == "destroy"]
        rnd.shuffle(rest)
        ops = head + rest

        killer = Killer(d, rnd)
        killer.start()
        self.addCleanup(killer.done.set)
        kill_p = float(os.environ.get("COFFER_STRESS_KILL_P", "0.25"))
        restarts = collections.Counter()
        arms = ["point-exit", "point-stop", "file-new", "file-del", "none", "none"]
        if points is None:
            arms = ["file-new", "file-del", "none", "none"]
        watch = [None]
        start_times = []

        def restart():
            if d.proc is not None and d.proc.poll() == H.CRASH_EXIT:
                killer.kills["_exit(86) at a crash point"] += 1
            d.kill9()
            if watch[0] is not None:
                watch[0].stop()
                if watch[0].killed:
                    killer.kills["SIGKILL at a token file event"] += 1
                watch[0] = None
            arm = rnd.choice(arms)
            d.crash_env = {}
            if arm.startswith("point"):
                d.crash_env = {"COFFER_CRASH_AT": "%s@%d" % (rnd.choice(points),
                                                             rnd.randint(1, 3))}
                if arm == "point-stop":
                    d.crash_env["COFFER_CRASH_MODE"] = "stop"
            restarts[arm] += 1
            t_start = time.monotonic()
            tok_file = os.path.join(d.token_object_dir(), "token.object")
            with open(tok_file, "rb") as f:
                tok_saved = f.read()
            for attempt in range(5):
                if attempt == 0 and not arm.startswith("point"):
                    # Now and then a random kill in the start-up (recovery).
                    killer.schedule(0.15, 0.15, "random SIGKILL in start-up", any_pid=True)
                if d.try_start():
                    break
                restarts["died in start-up"] += 1
                d.kill9()
                d.crash_env = {}
                # SoftHSM's file store rewrites token.object in place at every
                # login: a kill in that write tears SoftHSM's own token record
                # (not Coffer's state; seen about once in a few runs). Counted,
                # and the record as it was before this start put back.
                with open(tok_file, "rb") as f:
                    torn = f.read() != tok_saved
                if torn and "no token matches" in d.log()[-2000:]:
                    restarts["SoftHSM token.object torn in its login"] += 1
                    with open(tok_file, "wb") as f:
                        f.write(tok_saved)
            else:
                self.fail("cofferd does not start; log:\n" + d.log()[-4000:])
            killer.cancel()
            start_times.append(time.monotonic() - t_start)
            if arm.startswith("file"):
                watch[0] = H.FileWatch(d.token_object_dir(), d.state_dir, pid=d.pid,
                                       kill_kind=arm[5:], kill_n=rnd.randint(1, 2))

        done = []          # (op, request, idem key, answer, request ids)
        problems = []
        destroyed_target = set()
        tick = time.monotonic()
        for n, (kind, subject) in enumerate(ops):
            if os.environ.get("COFFER_STRESS_VERBOSE") and n % 25 == 0:
                print("  segment %d op %d: %.1f s, kills %s, restarts %s, start-up %.2f s" % (
                    seg, n, time.monotonic() - tick, dict(killer.kills), dict(restarts),
                    sum(start_times[-5:]) / max(len(start_times[-5:]), 1)), flush=True)
            idem = "stress-%d-%d-%d" % (SEED, seg, n)
            rids = []
            req = None
            attempt = 0
            while True:
                attempt += 1
                rid = "%s-a%d" % (idem, attempt)
                rids.append(rid)
                md = H.meta(idem, rid)
                # A random kill while this call (or the sweeper) runs.
                killer.schedule(kill_p, 0.04)
                try:
                    if not d.running:
                        raise grpc.RpcError()
                    if kind == "rotate":
                        ans = d.admin_stub().RotateKey(pb.RotateKeyRequest(name=subject),
                                                       timeout=T, metadata=md)
                    elif kind == "apirot":
                        ans = H.sealed_call(d, "RotateApiKeySecret", pb.RotateApiKeySecretRequest(
                            id=subject, overlap_seconds=0), md)
                    else:
                        if req is None:
                            req = self.pick_destroy(d, rnd, destroyed_target)
                            if req is None:
                                break
                        ans = d.admin_stub().ScheduleDestroyKeyVersion(req, timeout=T,
                                                                       metadata=md)
                    done.append((kind, subject if req is None else req.name, idem, ans, rids,
                                 req))
                    break
                except grpc.RpcError as e:
                    code = e.code() if hasattr(e, "code") and callable(e.code) else None
                    if d.running and d.state() != "T" and code not in (
                            None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                            grpc.StatusCode.DEADLINE_EXCEEDED):
                        problems.append("op %d %s %s attempt %d: %s %s" % (
                            n, kind, subject, attempt, code, e.details()))
                        break
                    if not d.running or d.state() == "T":
                        restart()
                    else:
                        time.sleep(0.05)
                    if attempt > 60:
                        problems.append("op %d %s %s: no answer after 60 attempts" % (
                            n, kind, subject))
                        break
        killer.cancel()
        if watch[0] is not None:
            watch[0].stop()
        killer.done.set()
        killer.join()
        d.kill9()
        d.crash_env = {}
        d.start()

        # Let the sweeper finish every scheduled destruction.
        a = d.admin_stub()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = [(k, v, s) for k, _ in KEYS for v, s in H.versions(a, k)
                       if s == pb.DESTROY_SCHEDULED]
            if not pending:
                break
            time.sleep(0.2)
        else:
            problems.append("versions still destroy-scheduled 20 s after the run: %s" % pending)

        # Every answer again with its key: the same answer.
        expect = []
        for kind, subject, idem, ans, rids, req in done:
            rid = idem + "-again"
            try:
                if kind == "rotate":
                    again = a.RotateKey(pb.RotateKeyRequest(name=subject), timeout=T,
                                        metadata=H.meta(idem, rid))
                    expect.append(crash_check.Expect("RotateKey", subject, ans.primary_version,
                                                     set(rids) | {rid}))
                elif kind == "apirot":
                    again = H.sealed_call(d, "RotateApiKeySecret", pb.RotateApiKeySecretRequest(
                        id=subject, overlap_seconds=0), H.meta(idem, rid))
                    expect.append(crash_check.Expect("RotateApiKeySecret", subject, None,
                                                     set(rids) | {rid}))
                else:
                    again = a.ScheduleDestroyKeyVersion(req, timeout=T,
                                                        metadata=H.meta(idem, rid))
                    expect.append(crash_check.Expect("ScheduleDestroyKeyVersion", subject,
                                                     req.version, set(rids) | {rid}))
            except grpc.RpcError as e:
                problems.append("%s %s (%s) repeated: %s %s" % (kind, subject, idem, e.code(),
                                                                e.details()))
                continue
            if H.normalize(again) != H.normalize(ans):
                problems.append("%s %s (%s): the repeated answer differs:\n  %s\n  %s"
                                % (kind, subject, idem, ans, again))

        # Counts.
        rot_by_key = collections.Counter(s for k, s, *_ in done if k == "rotate")
        rot_by_api = collections.Counter(s for k, s, *_ in done if k == "apirot")
        versions_problems = []
        for name, _ in KEYS:
            vs = [v for v, _ in H.versions(a, name)]
            want = list(range(1, rot_by_key[name] + 2))
            if vs != want:
                versions_problems.append("key %s: versions %s, expected 1..%d (%d rotations)"
                                         % (name, _ranges(vs), want[-1], rot_by_key[name]))
            answered = [ans.primary_version for k, s, _, ans, _, _ in done
                        if k == "rotate" and s == name]
            dup = [v for v, c in collections.Counter(answered).items() if c > 1]
            if dup:
                versions_problems.append("key %s: versions %s answered to two rotations"
                                         % (name, dup))
        for kid in api_ids:
            keys = [k for p in range(PRINCIPALS) for k in a.ListApiKeys(
                pb.ListApiKeysRequest(principal="st-p%d" % p), timeout=T).keys if k.id == kid]
            gens = sorted(s.generation for s in keys[0].secrets) if keys else None
            if gens != [1 + rot_by_api[kid]]:
                versions_problems.append("API key %s: live generations %s after %d rotations "
                                         "(expected [%d])" % (kid, gens, rot_by_api[kid],
                                                              1 + rot_by_api[kid]))
        destroyed = sum(1 for k, _ in KEYS for v, s in H.versions(a, k) if s == pb.DESTROYED)
        notes = []
        check = d.check(expect=expect, notes=notes)
        token = [p for p in check if p.startswith("token:")]
        replay = [p for p in check if p.startswith("audit") and "names version" in p]
        audit = [p for p in check if p.startswith("audit") and p not in replay]
        registry = [p for p in check if p.startswith("registry:")] + versions_problems
        if os.environ.get("COFFER_STRESS_VERBOSE"):
            print("  segment %d: %.0f s" % (seg, time.monotonic() - t0), flush=True)
        return {"seg": seg, "registry": registry, "token": token, "audit": audit,
                "replay": replay,
                "problems": problems, "kills": killer.kills, "restarts": restarts,
                "counts": collections.Counter(
                    rotations=sum(rot_by_key.values()), api_rotations=sum(rot_by_api.values()),
                    destructions=sum(1 for x in done if x[0] == "destroy"), destroyed=destroyed,
                    registry=len(registry), token=len(token), audit=len(audit),
                    replay=len(replay),
                    problems=len(problems), notes=len(notes))}

    def pick_destroy(self, d, rnd, taken):
        """A ScheduleDestroyKeyVersion request for an old enabled version."""
        a = d.admin_stub()
        names = [k for k, _ in KEYS]
        rnd.shuffle(names)
        for name in names:
            key = a.GetKey(pb.GetKeyRequest(name=name), timeout=T)
            for v in key.versions:
                if (v.state == pb.ENABLED and v.version != key.primary_version and
                        (name, v.version) not in taken):
                    taken.add((name, v.version))
                    return pb.KeyVersionRequest(name=name, version=v.version, grace_seconds=1)
        return None


def _ranges(vs):
    if len(vs) < 8:
        return str(vs)
    return "[%d..%d, %d of them]" % (vs[0], vs[-1], len(vs))


if __name__ == "__main__":
    unittest.main(verbosity=2)
