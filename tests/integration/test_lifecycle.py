#!/usr/bin/python3
"""Key lifecycle (AdminService) against a real cofferd on a throw-away token.

The daemon runs with [keys] min_destroy_grace = 2 and min_rotation_period = 3
(so that grace periods and rotation periods of a few seconds are allowed, and
1 s / 2 s are below the configured minimum). Every refusal is checked by its
status code and by the words of its message that name the reason, and the
key is read back to show that a refused call changed nothing.

  SetPrimaryVersion      ok (Sign with version 0 then uses it); refused for a
                         disabled version, a version below min_version
                         (FAILED_PRECONDITION), a missing version (NOT_FOUND),
                         version 0 and force (INVALID_ARGUMENT)
  Disable/Enable         Sign, Verify and GetPublicKey with a disabled version
                         are FAILED_PRECONDITION naming the state; enable makes
                         the old signature verify again; disabling the primary
                         needs force, after which Sign with version 0 fails;
                         disabling / destroying the last enabled version needs
                         force
  ScheduleDestroy        grace 0 = the default (destroy_time = now + 604800);
                         grace below min_destroy_grace, above 365 days or
                         negative: INVALID_ARGUMENT; the primary needs force;
                         the version is refused for Verify and Sign at once;
                         scheduling twice, enabling or disabling it: refused
  CancelDestroy          restores ENABLED, or DISABLED when it was disabled
                         (also after TrimKey); refused when not scheduled
  Grace period over      grace 2 s, the daemon down until past destroy_time:
                         cancel is refused ("grace period ended"); within a few
                         seconds the version is DESTROYED, its token objects
                         are gone (SoftHSM object files), the log and the
                         audit trail (cofferd/DestroyKeyVersion) say so;
                         enable, cancel, schedule, set-primary, Sign and Verify
                         of it are refused; after a restart it is still
                         DESTROYED and no "reconcile:" warning names it
  SetKeyMinimums         min_version: Sign/Mac with an older explicit version
                         fails, Verify/VerifyMac of an old signature/MAC still
                         works; min_verify_version then makes that Verify fail;
                         keep_last N sets min_verify = newest - N + 1 and raises
                         min_version; refusals (min_version above the primary,
                         also through keep_last; min_verify above min_version;
                         keep_last with min_verify_version; all zero)
  TrimKey                refused without min_verify_version; schedules exactly
                         the enabled/disabled versions below min_verify (an
                         already scheduled one keeps its destroy_time); grace
                         checked as in ScheduleDestroy; grace 0 = default
  Wrap / Rewrap          a blob wrapped under version 1 is rewrapped to the new
                         primary after a rotation; once version 1 is disabled,
                         Unwrap (sealed) and Rewrap of the old blob are
                         FAILED_PRECONDITION; GenerateDataKey with the primary
                         disabled is FAILED_PRECONDITION
  Idempotency            ScheduleDestroyKeyVersion twice with one
                         idempotency-key returns the first response (not
                         "already scheduled"); a CancelDestroy repeated with its
                         key is answered the same, not "not scheduled"
  Rotation schedule      CreateKey rotation_period gives next_rotation_time =
                         create_time + period, below the minimum (or negative)
                         is INVALID_ARGUMENT and creates nothing;
                         SetRotationSchedule limits; next 0 = now + period;
                         period 3600 with next = now + 2: exactly one version
                         appears when due (not before), next_rotation_time =
                         its create_time + 3600, no second one; a manual
                         RotateKey also moves next_rotation_time; log line and
                         audit record (cofferd/ScheduledRotation); period 0
                         turns it off
  Rotation after downtime  period 4 s, the daemon down for more than 3
                         periods: exactly one rotation shortly after the start
                         (not one per missed period), next = its create_time +
                         4; turned off, the count stays
  Default minimums       a daemon without [keys] settings refuses a grace of
                         one hour and a rotation period of one minute

Run:  /usr/bin/python3 tests/integration/test_lifecycle.py [-v] [Class.test]
"""
import glob
import json
import os
import time
import unittest

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon  # noqa: E402
from rpc_common import SC, TIMEOUT, pb  # noqa: E402


MIN_GRACE = 2          # [keys] min_destroy_grace of the test daemon
MIN_PERIOD = 3         # [keys] min_rotation_period of the test daemon
DEFAULT_GRACE = 604800  # [keys] destroy_grace, not set: the daemon's default
MAX_GRACE = 365 * 86400
MAX_PERIOD = 10 * 365 * 86400   # "10 years"; anything far above it is refused
CONFIG = {"keys": {"min_destroy_grace": str(MIN_GRACE),
                   "min_rotation_period": str(MIN_PERIOD)}}

ENABLED, DISABLED = pb.ENABLED, pb.DISABLED
SCHEDULED, DESTROYED = pb.DESTROY_SCHEDULED, pb.DESTROYED


def idem(key):
    return [("idempotency-key", key)]


def now():
    return int(time.time())


def before():
    """A lower bound for the daemon's time(NULL) from now on: glibc reads the
    coarse real-time clock there, which lags time.time() by up to a tick
    (so just after a second boundary the daemon may still see the last one)."""
    return int(time.time() - 0.05)


class LifecycleBase(unittest.TestCase):
    """One daemon per class, started with the class's `config`."""
    d = None
    config = None

    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config=cls.config)
        try:
            cls.d.start()
        except Exception:
            cls.d.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.d is not None:
            cls.d.cleanup()

    def setUp(self):
        self.stubs()

    def stubs(self):
        """Fresh stubs (after a restart the old channels are closed)."""
        self.a = self.d.admin_stub()
        self.s = self.d.service_stub()

    # -- keys --

    def get(self, name):
        return self.a.GetKey(pb.GetKeyRequest(name=name), timeout=TIMEOUT)

    def states(self, name):
        return {v.version: v.state for v in self.get(name).versions}

    def version(self, name, version):
        for v in self.get(name).versions:
            if v.version == version:
                return v
        self.fail("key %s has no version %d" % (name, version))

    def new_key(self, name, versions=1, type=pb.EC_P256, **kw):
        self.a.CreateKey(pb.CreateKeyRequest(name=name, type=type, **kw), timeout=TIMEOUT)
        for _ in range(versions - 1):
            self.a.RotateKey(pb.RotateKeyRequest(name=name), timeout=TIMEOUT)
        k = self.get(name)
        self.assertEqual([v.version for v in k.versions], list(range(1, versions + 1)))
        self.assertEqual(k.primary_version, versions)
        return k

    def kv(self, name, version, force=False, grace=0):
        return pb.KeyVersionRequest(name=name, version=version, force=force,
                                    grace_seconds=grace)

    def call(self, method, req, **kw):
        return getattr(self.a, method)(req, timeout=TIMEOUT, **kw)

    def refused(self, fn, req, code, *words, **kw):
        """fn(req) fails with `code` and a message holding every word."""
        with self.assertRaises(grpc.RpcError) as cm:
            fn(req, timeout=TIMEOUT, **kw)
        e = cm.exception
        self.assertEqual(e.code(), code, "%s: %s" % (e.code(), e.details()))
        for w in words:
            self.assertIn(w, e.details())
        return e

    # -- using keys --

    def sign(self, name, version=0, message=b"lifecycle message"):
        return self.s.Sign(pb.SignRequest(key=name, version=version, message=message),
                           timeout=TIMEOUT)

    def verify_req(self, name, resp, message=b"lifecycle message"):
        return pb.VerifyRequest(key=name, version=resp.version, message=message,
                                signature=resp.signature)

    def verify(self, name, resp, message=b"lifecycle message"):
        return self.s.Verify(self.verify_req(name, resp, message), timeout=TIMEOUT).valid

    # -- daemon side --

    def audit(self, count=1000):
        recs = self.a.TailAudit(pb.TailAuditRequest(count=count), timeout=TIMEOUT).records
        return [json.loads(r) for r in recs]

    def token_objects(self):
        """SoftHSM2 (file back end) keeps one file per token object."""
        return len(glob.glob(os.path.join(self.d.token_dir, "tokens", "*", "*.object")))

    def assertBetween(self, x, lo, hi):
        self.assertTrue(lo <= x <= hi, "%d not in %d .. %d (%+d .. %+d)"
                        % (x, lo, hi, x - lo, x - hi))

    def poll(self, cond, timeout, step=0.1):
        deadline = time.monotonic() + timeout
        while True:
            r = cond()
            if r or time.monotonic() > deadline:
                return r
            time.sleep(step)


class Lifecycle(LifecycleBase):
    config = CONFIG

    # ---- 1. transitions and refusals ----

    def test_set_primary(self):
        self.new_key("prim", 3)
        k = self.call("SetPrimaryVersion", self.kv("prim", 1))
        self.assertEqual(k.primary_version, 1)
        self.assertEqual(self.sign("prim").version, 1)
        self.assertEqual(self.call("SetPrimaryVersion", self.kv("prim", 3)).primary_version, 3)
        self.assertEqual(self.sign("prim").version, 3)
        # A disabled version cannot be primary.
        self.call("DisableKeyVersion", self.kv("prim", 2))
        self.refused(self.a.SetPrimaryVersion, self.kv("prim", 2), SC.FAILED_PRECONDITION,
                     "version 2 is disabled", "only an enabled version can be primary")
        # Nor one below min_version.
        self.call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="prim", min_version=2))
        self.refused(self.a.SetPrimaryVersion, self.kv("prim", 1), SC.FAILED_PRECONDITION,
                     "version 1 is below the key's min_version 2")
        self.refused(self.a.SetPrimaryVersion, self.kv("prim", 9), SC.NOT_FOUND,
                     "has no version 9")
        self.refused(self.a.SetPrimaryVersion, self.kv("prim", 0), SC.INVALID_ARGUMENT,
                     "version is required")
        self.refused(self.a.SetPrimaryVersion, self.kv("prim", 3, force=True),
                     SC.INVALID_ARGUMENT, "force only applies")
        self.refused(self.a.SetPrimaryVersion, self.kv("no-such-key", 1), SC.NOT_FOUND,
                     "no-such-key does not exist")
        k = self.get("prim")
        self.assertEqual(k.primary_version, 3)
        self.assertEqual(self.states("prim"), {1: ENABLED, 2: DISABLED, 3: ENABLED})

    def test_disable_enable(self):
        self.new_key("dis", 2)
        sig1 = self.sign("dis", 1)
        self.assertEqual(sig1.version, 1)
        k = self.call("DisableKeyVersion", self.kv("dis", 1))
        self.assertEqual({v.version: v.state for v in k.versions}, {1: DISABLED, 2: ENABLED})
        self.refused(self.s.Sign, pb.SignRequest(key="dis", version=1, message=b"x"),
                     SC.FAILED_PRECONDITION, "key dis version 1 is disabled")
        self.refused(self.s.Verify, self.verify_req("dis", sig1), SC.FAILED_PRECONDITION,
                     "key dis version 1 is disabled")
        self.refused(self.s.GetPublicKey, pb.GetPublicKeyRequest(key="dis", version=1),
                     SC.FAILED_PRECONDITION, "version 1 is disabled")
        # Disabling a disabled version is a no-op; grace is not for disable.
        self.assertEqual(self.call("DisableKeyVersion", self.kv("dis", 1)).versions[0].state,
                         DISABLED)
        self.refused(self.a.DisableKeyVersion, self.kv("dis", 1, grace=3600),
                     SC.INVALID_ARGUMENT, "grace_seconds only applies")
        k = self.call("EnableKeyVersion", self.kv("dis", 1))
        self.assertEqual({v.version: v.state for v in k.versions}, {1: ENABLED, 2: ENABLED})
        self.assertTrue(self.verify("dis", sig1))
        self.assertFalse(self.verify("dis", sig1, message=b"another message"))
        # The primary: refused without force, then with force new operations fail.
        self.refused(self.a.DisableKeyVersion, self.kv("dis", 2), SC.FAILED_PRECONDITION,
                     "version 2 is the primary version", "force")
        self.assertEqual(self.states("dis"), {1: ENABLED, 2: ENABLED})
        k = self.call("DisableKeyVersion", self.kv("dis", 2, force=True))
        self.assertEqual(k.primary_version, 2)
        self.assertEqual({v.version: v.state for v in k.versions}, {1: ENABLED, 2: DISABLED})
        self.refused(self.s.Sign, pb.SignRequest(key="dis", message=b"x"),
                     SC.FAILED_PRECONDITION, "key dis version 2 is disabled")
        self.assertEqual(self.sign("dis", 1).version, 1)   # an explicit enabled one works
        # Version 1 is now the last enabled one (and not the primary).
        self.refused(self.a.DisableKeyVersion, self.kv("dis", 1), SC.FAILED_PRECONDITION,
                     "version 1 is the last enabled version")
        self.refused(self.a.ScheduleDestroyKeyVersion, self.kv("dis", 1, grace=3600),
                     SC.FAILED_PRECONDITION, "version 1 is the last enabled version")
        self.assertEqual(self.states("dis"), {1: ENABLED, 2: DISABLED})
        k = self.call("DisableKeyVersion", self.kv("dis", 1, force=True))
        self.assertEqual({v.version: v.state for v in k.versions}, {1: DISABLED, 2: DISABLED})
        self.call("EnableKeyVersion", self.kv("dis", 2))
        self.assertEqual(self.sign("dis").version, 2)

    def test_schedule_and_cancel_destroy(self):
        self.new_key("sched", 3)
        sig1 = self.sign("sched", 1)
        # grace 0: the daemon's default, 7 days.
        t0 = before()
        k = self.call("ScheduleDestroyKeyVersion", self.kv("sched", 1))
        t1 = now()
        v1 = k.versions[0]
        self.assertEqual(v1.state, SCHEDULED)
        self.assertBetween(v1.destroy_time, t0 + DEFAULT_GRACE, t1 + DEFAULT_GRACE)
        # Refused at once for verifying and signing.
        self.refused(self.s.Verify, self.verify_req("sched", sig1), SC.FAILED_PRECONDITION,
                     "key sched version 1 is scheduled for destruction")
        self.refused(self.s.Sign, pb.SignRequest(key="sched", version=1, message=b"x"),
                     SC.FAILED_PRECONDITION, "version 1 is scheduled for destruction")
        self.refused(self.a.ScheduleDestroyKeyVersion, self.kv("sched", 1),
                     SC.FAILED_PRECONDITION, "already scheduled for destruction")
        self.refused(self.a.EnableKeyVersion, self.kv("sched", 1), SC.FAILED_PRECONDITION,
                     "scheduled for destruction", "cancel-destroy restores it")
        self.refused(self.a.DisableKeyVersion, self.kv("sched", 1), SC.FAILED_PRECONDITION,
                     "version 1 is scheduled for destruction")
        self.assertEqual(self.version("sched", 1).destroy_time, v1.destroy_time)
        # Cancel: back to ENABLED, and it verifies again.
        k = self.call("CancelDestroyKeyVersion", self.kv("sched", 1))
        self.assertEqual((k.versions[0].state, k.versions[0].destroy_time), (ENABLED, 0))
        self.assertTrue(self.verify("sched", sig1))
        self.refused(self.a.CancelDestroyKeyVersion, self.kv("sched", 1),
                     SC.FAILED_PRECONDITION, "version 1 is not scheduled for destruction",
                     "it is enabled")
        # A disabled version comes back disabled.
        self.call("DisableKeyVersion", self.kv("sched", 2))
        t0 = before()
        k = self.call("ScheduleDestroyKeyVersion", self.kv("sched", 2, grace=3600))
        t1 = now()
        self.assertEqual(k.versions[1].state, SCHEDULED)
        self.assertBetween(k.versions[1].destroy_time, t0 + 3600, t1 + 3600)
        k = self.call("CancelDestroyKeyVersion", self.kv("sched", 2))
        self.assertEqual((k.versions[1].state, k.versions[1].destroy_time), (DISABLED, 0))
        # Grace limits: [keys] min_destroy_grace .. 365 days; never negative.
        for grace in (MIN_GRACE - 1, MAX_GRACE + 1, -5):
            self.refused(self.a.ScheduleDestroyKeyVersion, self.kv("sched", 1, grace=grace),
                         SC.INVALID_ARGUMENT, "grace period %d s is outside %d s" %
                         (grace, MIN_GRACE))
        k = self.call("ScheduleDestroyKeyVersion", self.kv("sched", 1, grace=MAX_GRACE))
        self.assertEqual(k.versions[0].state, SCHEDULED)
        self.call("CancelDestroyKeyVersion", self.kv("sched", 1))
        # The primary needs force; with force, new operations then fail.
        self.refused(self.a.ScheduleDestroyKeyVersion, self.kv("sched", 3, grace=3600),
                     SC.FAILED_PRECONDITION, "version 3 is the primary version")
        self.assertEqual(self.states("sched"), {1: ENABLED, 2: DISABLED, 3: ENABLED})
        k = self.call("ScheduleDestroyKeyVersion", self.kv("sched", 3, force=True, grace=3600))
        self.assertEqual((k.primary_version, k.versions[2].state), (3, SCHEDULED))
        self.refused(self.s.Sign, pb.SignRequest(key="sched", message=b"x"),
                     SC.FAILED_PRECONDITION, "version 3 is scheduled for destruction")
        self.call("CancelDestroyKeyVersion", self.kv("sched", 3))
        self.assertEqual(self.sign("sched").version, 3)
        self.assertEqual(self.states("sched"), {1: ENABLED, 2: DISABLED, 3: ENABLED})

    def test_idempotent_schedule_destroy(self):
        self.new_key("idem", 2)
        req = self.kv("idem", 1, grace=3600)
        r1 = self.call("ScheduleDestroyKeyVersion", req, metadata=idem("lc-destroy-idem-1"))
        r2 = self.call("ScheduleDestroyKeyVersion", req, metadata=idem("lc-destroy-idem-1"))
        self.assertEqual(r1.versions[0].state, SCHEDULED)
        self.assertEqual(r1.SerializeToString(), r2.SerializeToString())
        # Without the key, the same request is a second change: refused.
        self.refused(self.a.ScheduleDestroyKeyVersion, req, SC.FAILED_PRECONDITION,
                     "already scheduled for destruction")
        # The key belongs to that request.
        self.refused(self.a.CancelDestroyKeyVersion, self.kv("idem", 1),
                     SC.FAILED_PRECONDITION, "was used for another request",
                     metadata=idem("lc-destroy-idem-1"))
        self.assertEqual(self.version("idem", 1).destroy_time, r1.versions[0].destroy_time)
        c1 = self.call("CancelDestroyKeyVersion", self.kv("idem", 1),
                       metadata=idem("lc-cancel-idem-1"))
        c2 = self.call("CancelDestroyKeyVersion", self.kv("idem", 1),
                       metadata=idem("lc-cancel-idem-1"))
        self.assertEqual(c1.versions[0].state, ENABLED)
        self.assertEqual(c1.SerializeToString(), c2.SerializeToString())
        self.refused(self.a.CancelDestroyKeyVersion, self.kv("idem", 1),
                     SC.FAILED_PRECONDITION, "not scheduled for destruction")

    def test_minimums(self):
        self.new_key("mins", 4)
        sig = {v: self.sign("mins", v) for v in (1, 2, 3)}
        k = self.call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="mins", min_version=3))
        self.assertEqual((k.min_version, k.min_verify_version), (3, 0))
        for v in (1, 2):
            self.refused(self.s.Sign, pb.SignRequest(key="mins", version=v, message=b"x"),
                         SC.FAILED_PRECONDITION, "version %d is below the key's minimum "
                         "version 3 for new operations" % v)
        self.assertEqual(self.sign("mins", 3).version, 3)
        self.assertEqual(self.sign("mins").version, 4)
        self.assertTrue(self.verify("mins", sig[1]))    # old signatures still verify
        k = self.call("SetKeyMinimums",
                      pb.SetKeyMinimumsRequest(name="mins", min_verify_version=2))
        self.assertEqual((k.min_version, k.min_verify_version), (3, 2))
        self.refused(self.s.Verify, self.verify_req("mins", sig[1]), SC.FAILED_PRECONDITION,
                     "version 1 is below the key's minimum version 2 for verify and unwrap")
        self.refused(self.s.GetPublicKey, pb.GetPublicKeyRequest(key="mins", version=1),
                     SC.FAILED_PRECONDITION, "below the key's minimum version 2")
        self.assertTrue(self.verify("mins", sig[2]))
        # Refusals leave the minimums as they were.
        self.refused(self.a.SetKeyMinimums, pb.SetKeyMinimumsRequest(name="mins", min_version=5),
                     SC.FAILED_PRECONDITION, "min_version 5 would exceed the primary version 4")
        self.refused(self.a.SetKeyMinimums,
                     pb.SetKeyMinimumsRequest(name="mins", min_verify_version=4),
                     SC.FAILED_PRECONDITION, "min_verify_version 4 would exceed min_version 3")
        self.refused(self.a.SetKeyMinimums,
                     pb.SetKeyMinimumsRequest(name="mins", keep_last=2, min_verify_version=3),
                     SC.INVALID_ARGUMENT, "not both")
        self.refused(self.a.SetKeyMinimums, pb.SetKeyMinimumsRequest(name="mins"),
                     SC.INVALID_ARGUMENT, "give min_version, min_verify_version or keep_last")
        k = self.get("mins")
        self.assertEqual((k.min_version, k.min_verify_version), (3, 2))
        # keep_last 1: min_verify = 4 - 1 + 1 = 4, and min_version raised to 4.
        k = self.call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="mins", keep_last=1))
        self.assertEqual((k.min_version, k.min_verify_version), (4, 4))
        self.refused(self.s.Verify, self.verify_req("mins", sig[3]), SC.FAILED_PRECONDITION,
                     "version 3 is below the key's minimum version 4")
        self.refused(self.s.Sign, pb.SignRequest(key="mins", version=3, message=b"x"),
                     SC.FAILED_PRECONDITION, "minimum version 4 for new operations")
        s4 = self.sign("mins")
        self.assertEqual(s4.version, 4)
        self.assertTrue(self.verify("mins", s4))
        # keep_last whose min_version would pass the primary.
        self.new_key("mins-old-primary", 3)
        self.call("SetPrimaryVersion", self.kv("mins-old-primary", 1))
        self.refused(self.a.SetKeyMinimums,
                     pb.SetKeyMinimumsRequest(name="mins-old-primary", keep_last=2),
                     SC.FAILED_PRECONDITION, "min_version 2 would exceed the primary version 1")
        k = self.call("SetKeyMinimums",
                      pb.SetKeyMinimumsRequest(name="mins-old-primary", keep_last=3))
        self.assertEqual((k.min_version, k.min_verify_version), (1, 1))

    def test_minimums_mac(self):
        self.new_key("mins-mac", 2, type=pb.HMAC_SHA256)
        m1 = self.s.Mac(pb.MacRequest(key="mins-mac", version=1, data=b"d"), timeout=TIMEOUT)
        self.assertEqual(m1.version, 1)
        self.call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="mins-mac", min_version=2))
        self.refused(self.s.Mac, pb.MacRequest(key="mins-mac", version=1, data=b"d"),
                     SC.FAILED_PRECONDITION, "minimum version 2 for new operations")
        vm = pb.VerifyMacRequest(key="mins-mac", version=1, data=b"d", mac=m1.mac)
        self.assertTrue(self.s.VerifyMac(vm, timeout=TIMEOUT).valid)
        self.call("SetKeyMinimums",
                  pb.SetKeyMinimumsRequest(name="mins-mac", min_verify_version=2))
        self.refused(self.s.VerifyMac, vm, SC.FAILED_PRECONDITION,
                     "minimum version 2 for verify and unwrap")

    def test_trim(self):
        self.new_key("trim", 5)
        self.refused(self.a.TrimKey, pb.TrimKeyRequest(name="trim"), SC.FAILED_PRECONDITION,
                     "has no min_verify_version")
        self.call("DisableKeyVersion", self.kv("trim", 2))
        early = self.call("ScheduleDestroyKeyVersion",
                          self.kv("trim", 1, grace=7200)).versions[0].destroy_time
        k = self.call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="trim", keep_last=2))
        self.assertEqual((k.min_version, k.min_verify_version), (4, 4))
        for grace in (MIN_GRACE - 1, MAX_GRACE + 1):
            self.refused(self.a.TrimKey, pb.TrimKeyRequest(name="trim", grace_seconds=grace),
                         SC.INVALID_ARGUMENT, "grace period %d s is outside" % grace)
        self.assertEqual(self.states("trim"),
                         {1: SCHEDULED, 2: DISABLED, 3: ENABLED, 4: ENABLED, 5: ENABLED})
        t0 = before()
        k = self.call("TrimKey", pb.TrimKeyRequest(name="trim", grace_seconds=3600))
        t1 = now()
        got = {v.version: (v.state, v.destroy_time) for v in k.versions}
        self.assertEqual({v: s for v, (s, _) in got.items()},
                         {1: SCHEDULED, 2: SCHEDULED, 3: SCHEDULED, 4: ENABLED, 5: ENABLED})
        self.assertEqual(got[1][1], early)     # already scheduled: left as it was
        for v in (2, 3):
            self.assertBetween(got[v][1], t0 + 3600, t1 + 3600)
        for v in (4, 5):
            self.assertEqual(got[v][1], 0)
        # Trim remembered what each was: cancel restores it.
        k = self.call("CancelDestroyKeyVersion", self.kv("trim", 2))
        self.assertEqual(k.versions[1].state, DISABLED)
        k = self.call("CancelDestroyKeyVersion", self.kv("trim", 3))
        self.assertEqual(k.versions[2].state, ENABLED)
        # grace 0: the default.
        t0 = before()
        k = self.call("TrimKey", pb.TrimKeyRequest(name="trim"))
        t1 = now()
        for v in (2, 3):
            self.assertEqual(k.versions[v - 1].state, SCHEDULED)
            self.assertBetween(k.versions[v - 1].destroy_time, t0 + DEFAULT_GRACE,
                               t1 + DEFAULT_GRACE)
        self.assertEqual(k.versions[0].destroy_time, early)
        self.assertEqual([v.state for v in k.versions[3:]], [ENABLED, ENABLED])

    def test_request_signature_with_primary_disabled(self):
        """VerifyRequestSignature checks every enabled version: a disabled
        primary does not stop an older version's signature from verifying,
        and a version below min_verify_version is not tried."""
        import hashlib
        self.new_key("req-k", versions=2, type=pb.HMAC_SHA256)
        self.call("SetPrimaryVersion", self.kv("req-k", 1))

        def parts(nonce):
            return pb.HttpRequestParts(key="req-k", method="GET", path="/p",
                                       canonical_query="",
                                       body_sha256=hashlib.sha256(b"").digest(),
                                       timestamp=now(), nonce=nonce)
        def sign(p):
            return (self.s.SignHttpRequest(pb.SignHttpRequestRequest(request=p),
                                           timeout=TIMEOUT).signature, p)
        # One set of parts per request: built twice, the two timestamps
        # could fall on either side of a second.
        signed = [sign(parts(n)) for n in ("nonce-lifecycle-0000001", "nonce-lifecycle-0000002")]
        self.call("SetPrimaryVersion", self.kv("req-k", 2))
        self.call("DisableKeyVersion", self.kv("req-k", 2, force=True))
        sig, p = signed[0]
        r = self.s.VerifyRequestSignature(pb.VerifyRequestSignatureRequest(
            request=p, signature=sig), timeout=TIMEOUT)
        self.assertEqual((r.verdict, r.valid, r.version), (pb.VALID, True, 1), r.reason)
        # With version 2 enabled again and version 1 below the minimum, the
        # same kind of signature no longer verifies.
        self.call("EnableKeyVersion", self.kv("req-k", 2))
        self.call("SetKeyMinimums", pb.SetKeyMinimumsRequest(name="req-k", keep_last=1))
        sig, p = signed[1]
        r = self.s.VerifyRequestSignature(pb.VerifyRequestSignatureRequest(
            request=p, signature=sig), timeout=TIMEOUT)
        self.assertEqual((r.verdict, r.valid), (pb.BAD_SIGNATURE, False), r.reason)

    def test_rewrap(self):
        self.new_key("wrapk", 1, type=pb.AES_256)
        sealed = self.d.sealed_stub("service")
        ctx = {"app": "lifecycle"}
        secret = os.urandom(40)
        w1 = sealed.Wrap(pb.WrapRequest(key="wrapk", plaintext=secret, context=ctx))
        self.assertEqual(w1.version, 1)
        self.call("RotateKey", pb.RotateKeyRequest(name="wrapk"))
        rw = self.s.Rewrap(pb.RewrapRequest(key="wrapk", ciphertext=w1.ciphertext,
                                            context=ctx), timeout=TIMEOUT)
        self.assertEqual((rw.version, rw.previous_version), (2, 1))
        self.assertNotEqual(rw.ciphertext, w1.ciphertext)
        u = sealed.Unwrap(pb.UnwrapRequest(key="wrapk", ciphertext=rw.ciphertext, context=ctx))
        self.assertEqual((u.plaintext, u.version), (secret, 2))
        u = sealed.Unwrap(pb.UnwrapRequest(key="wrapk", ciphertext=w1.ciphertext, context=ctx))
        self.assertEqual((u.plaintext, u.version), (secret, 1))
        # Version 1 disabled: the old blob no longer opens, the rewrapped one does.
        self.call("DisableKeyVersion", self.kv("wrapk", 1))
        self.refused(sealed.Unwrap, pb.UnwrapRequest(key="wrapk", ciphertext=w1.ciphertext,
                                                     context=ctx),
                     SC.FAILED_PRECONDITION, "key wrapk version 1 is disabled")
        self.refused(self.s.Rewrap, pb.RewrapRequest(key="wrapk", ciphertext=w1.ciphertext,
                                                     context=ctx),
                     SC.FAILED_PRECONDITION, "key wrapk version 1 is disabled")
        u = sealed.Unwrap(pb.UnwrapRequest(key="wrapk", ciphertext=rw.ciphertext, context=ctx))
        self.assertEqual(u.plaintext, secret)
        # The primary disabled: no new data keys.
        self.call("DisableKeyVersion", self.kv("wrapk", 2, force=True))
        self.refused(self.s.GenerateDataKey, pb.GenerateDataKeyRequest(key="wrapk"),
                     SC.FAILED_PRECONDITION, "key wrapk version 2 is disabled")
        self.call("EnableKeyVersion", self.kv("wrapk", 2))
        self.assertEqual(self.s.GenerateDataKey(pb.GenerateDataKeyRequest(key="wrapk"),
                                                timeout=TIMEOUT).version, 2)

    # ---- destruction when the grace period is over (restarts the daemon) ----

    def test_grace_period_over(self):
        self.new_key("gone", 2)
        sig1 = self.sign("gone", 1)
        objects = self.token_objects()
        k = self.call("ScheduleDestroyKeyVersion", self.kv("gone", 1, grace=MIN_GRACE))
        due = k.versions[0].destroy_time
        self.assertIn(due - now(), range(MIN_GRACE - 1, MIN_GRACE + 1))
        # Stopped until destroy_time has passed: the daemon destroys due
        # versions once a second, the first time about a second after it is
        # ready, so the cancel below meets the "grace period ended" check
        # rather than a version destroyed a moment before.
        self.d.stop()
        while time.time() < due + 0.2:
            time.sleep(0.05)
        self.d.start()
        self.stubs()
        self.refused(self.a.CancelDestroyKeyVersion, self.kv("gone", 1),
                     SC.FAILED_PRECONDITION, "version 1: the grace period ended")
        v1 = self.poll(lambda: (lambda v: v if v.state == DESTROYED else None)(
            self.version("gone", 1)), 5)
        self.assertIsNotNone(v1, "version 1 not destroyed: %s" % self.get("gone"))
        self.assertGreaterEqual(v1.destroy_time, due)
        self.assertLessEqual(v1.destroy_time, now())
        self.assertEqual(self.states("gone"), {1: DESTROYED, 2: ENABLED})
        self.assertEqual(self.token_objects(), objects - 2)   # private + public key
        self.assertTrue(self.d.wait_for_log(
            "lifecycle: key gone version 1 destroyed in the token", 2), self.d.log())
        recs = [r for r in self.audit() if r.get("method") == "cofferd/DestroyKeyVersion"
                and r.get("key") == "gone"]
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual((recs[0].get("version"), recs[0].get("result")), (1, "OK"))
        # Gone for good.
        self.refused(self.a.EnableKeyVersion, self.kv("gone", 1), SC.FAILED_PRECONDITION,
                     "version 1 is destroyed; it cannot be restored")
        self.refused(self.a.CancelDestroyKeyVersion, self.kv("gone", 1),
                     SC.FAILED_PRECONDITION, "version 1 was destroyed at")
        self.refused(self.a.ScheduleDestroyKeyVersion, self.kv("gone", 1, grace=3600),
                     SC.FAILED_PRECONDITION, "version 1 is destroyed")
        self.refused(self.a.SetPrimaryVersion, self.kv("gone", 1), SC.FAILED_PRECONDITION,
                     "version 1 is destroyed")
        self.refused(self.s.Verify, self.verify_req("gone", sig1), SC.FAILED_PRECONDITION,
                     "key gone version 1 is destroyed")
        self.refused(self.s.Sign, pb.SignRequest(key="gone", version=1, message=b"x"),
                     SC.FAILED_PRECONDITION, "key gone version 1 is destroyed")
        # After a restart: still destroyed, nothing to reconcile about it.
        self.d.restart()
        self.stubs()
        v = self.version("gone", 1)
        self.assertEqual((v.state, v.destroy_time), (DESTROYED, v1.destroy_time))
        log = self.d.log(all_starts=False)
        self.assertIn("ready:", log)
        self.assertEqual([line for line in log.splitlines()
                          if "reconcile:" in line and "gone" in line], [], log)
        self.assertEqual(self.token_objects(), objects - 2)
        self.refused(self.s.Verify, self.verify_req("gone", sig1), SC.FAILED_PRECONDITION,
                     "key gone version 1 is destroyed")
        self.assertEqual(self.sign("gone").version, 2)

    # ---- 2. scheduled rotation ----

    def test_rotation_period_on_create_and_limits(self):
        k = self.new_key("rot-create", 1, rotation_period=7200)
        self.assertEqual(k.rotation_period, 7200)
        self.assertEqual(k.next_rotation_time, k.create_time + 7200)
        self.assertEqual(k.next_rotation_time, k.versions[0].create_time + 7200)
        plain = self.new_key("rot-none", 1)
        self.assertEqual((plain.rotation_period, plain.next_rotation_time), (0, 0))
        for period in (MIN_PERIOD - 1, -1):
            self.refused(self.a.CreateKey, pb.CreateKeyRequest(
                name="rot-short", type=pb.EC_P256, rotation_period=period),
                SC.INVALID_ARGUMENT, "rotation period %d s is outside %d s" %
                (period, MIN_PERIOD))
        self.refused(self.a.GetKey, pb.GetKeyRequest(name="rot-short"), SC.NOT_FOUND)
        # SetRotationSchedule: the same limits; next 0 = now + period.
        for period in (MIN_PERIOD - 1, MAX_PERIOD + 86400):
            self.refused(self.a.SetRotationSchedule, pb.SetRotationScheduleRequest(
                name="rot-none", period_seconds=period), SC.INVALID_ARGUMENT,
                "rotation period %d s is outside" % period)
        self.refused(self.a.SetRotationSchedule, pb.SetRotationScheduleRequest(
            name="rot-none", period_seconds=3600, next_rotation_time=-1),
            SC.INVALID_ARGUMENT, "cannot be negative")
        self.refused(self.a.SetRotationSchedule, pb.SetRotationScheduleRequest(
            name="rot-none", period_seconds=0, next_rotation_time=now() + 60),
            SC.INVALID_ARGUMENT, "next_rotation_time needs a period")
        k = self.get("rot-none")
        self.assertEqual((k.rotation_period, k.next_rotation_time), (0, 0))
        t0 = before()
        k = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(
            name="rot-none", period_seconds=MIN_PERIOD * 1000))
        t1 = now()
        self.assertEqual(k.rotation_period, MIN_PERIOD * 1000)
        self.assertBetween(k.next_rotation_time, t0 + MIN_PERIOD * 1000, t1 + MIN_PERIOD * 1000)
        k = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(name="rot-none"))
        self.assertEqual((k.rotation_period, k.next_rotation_time), (0, 0))
        self.assertEqual(len(k.versions), 1)

    def test_scheduled_rotation_fires_once(self):
        self.new_key("rot-due", 1)
        due = now() + 2
        k = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(
            name="rot-due", period_seconds=3600, next_rotation_time=due))
        self.assertEqual((k.rotation_period, k.next_rotation_time), (3600, due))
        k = self.poll(lambda: (lambda k: k if len(k.versions) > 1 else None)(
            self.get("rot-due")), 5)
        self.assertIsNotNone(k, "no scheduled rotation within 5 s of %d" % due)
        self.assertEqual([v.version for v in k.versions], [1, 2])
        v2 = k.versions[1]
        self.assertGreaterEqual(v2.create_time, due)           # not before it was due
        self.assertEqual((k.primary_version, v2.state), (2, ENABLED))
        self.assertEqual(k.next_rotation_time, v2.create_time + 3600)
        self.assertEqual(k.rotation_period, 3600)
        self.assertEqual(self.sign("rot-due").version, 2)
        # No second one (the daemon looks once a second).
        time.sleep(2.2)
        k = self.get("rot-due")
        self.assertEqual([v.version for v in k.versions], [1, 2])
        self.assertEqual(k.next_rotation_time, v2.create_time + 3600)
        self.assertTrue(self.d.wait_for_log(
            "lifecycle: scheduled rotation of key rot-due made version 2", 2))
        self.assertEqual(self.d.log().count("scheduled rotation of key rot-due "), 1)
        recs = [r for r in self.audit() if r.get("method") == "cofferd/ScheduledRotation"
                and r.get("key") == "rot-due"]
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual((recs[0].get("version"), recs[0].get("result")), (2, "OK"))
        # A manual rotation also moves the next one.
        k = self.call("RotateKey", pb.RotateKeyRequest(name="rot-due"))
        self.assertEqual(k.primary_version, 3)
        self.assertEqual(k.next_rotation_time, k.versions[2].create_time + 3600)
        k = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(
            name="rot-due", period_seconds=0))
        self.assertEqual((k.rotation_period, k.next_rotation_time), (0, 0))

    def test_zz_rotation_after_downtime(self):
        period = 4
        self.new_key("rot-down", 1)
        k = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(
            name="rot-down", period_seconds=period))
        due = k.next_rotation_time
        self.assertEqual(len(k.versions), 1)
        self.d.stop()
        # Down for more than three periods after the due time was set.
        while time.time() < due + 2 * period + 1:
            time.sleep(0.1)
        started = before()
        self.d.start()
        self.stubs()
        k = self.poll(lambda: (lambda k: k if len(k.versions) > 1 else None)(
            self.get("rot-down")), 4, step=0.05)
        # Off at once, before the next period ends.
        off = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(
            name="rot-down", period_seconds=0))
        self.assertIsNotNone(k, "no rotation within 4 s of the start")
        self.assertEqual([v.version for v in k.versions], [1, 2])
        v2 = k.versions[1]
        self.assertGreaterEqual(v2.create_time, started)
        self.assertEqual(k.next_rotation_time, v2.create_time + period)
        self.assertEqual([v.version for v in off.versions], [1, 2])
        self.assertEqual((off.rotation_period, off.next_rotation_time), (0, 0))
        while time.time() < v2.create_time + period + 1.5:
            time.sleep(0.1)
        self.assertEqual([v.version for v in self.get("rot-down").versions], [1, 2])
        log = self.d.log(all_starts=False)
        self.assertEqual(log.count("lifecycle: scheduled rotation of key rot-down "), 1, log)
        self.assertIn("lifecycle: scheduled rotation of key rot-down made version 2", log)
        recs = [r for r in self.audit() if r.get("method") == "cofferd/ScheduledRotation"
                and r.get("key") == "rot-down"]
        self.assertEqual([r.get("version") for r in recs], [2], recs)


class DefaultMinimums(LifecycleBase):
    """Without [keys] settings: min_destroy_grace 1 day, min_rotation_period 1 hour."""

    config = None

    def test_default_minimums(self):
        self.new_key("dflt", 2)
        self.refused(self.a.ScheduleDestroyKeyVersion, self.kv("dflt", 1, grace=3600),
                     SC.INVALID_ARGUMENT, "grace period 3600 s is outside 86400 s")
        t0 = before()
        k = self.call("ScheduleDestroyKeyVersion", self.kv("dflt", 1, grace=86400))
        self.assertBetween(k.versions[0].destroy_time, t0 + 86400, now() + 86400)
        self.refused(self.a.SetRotationSchedule, pb.SetRotationScheduleRequest(
            name="dflt", period_seconds=60), SC.INVALID_ARGUMENT,
            "rotation period 60 s is outside 3600 s")
        self.refused(self.a.CreateKey, pb.CreateKeyRequest(
            name="dflt-rot", type=pb.EC_P256, rotation_period=600), SC.INVALID_ARGUMENT,
            "rotation period 600 s is outside 3600 s")
        k = self.call("SetRotationSchedule", pb.SetRotationScheduleRequest(
            name="dflt", period_seconds=3600))
        self.assertEqual(k.rotation_period, 3600)


if __name__ == "__main__":
    unittest.main(verbosity=2)
