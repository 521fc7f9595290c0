#!/usr/bin/python3
"""Idempotency keys on mutating admin calls, against cofferd:

* the same request twice with one key makes one version, and the repeat gets
  the first response; another request with the key is refused; a key is
  per caller; errors are replayed, a malformed key is refused;
* 16 concurrent duplicates execute once;
* the record survives a restart;
* a secret in a response (CreateApiKey) is not kept: the repeat has none;
* a request that carries a secret (an imported API secret) is recorded by a
  fingerprint keyed in the token, not by a digest of the request that a
  guess at the secret could be tested against;
* cofferctl: --idempotency-key makes a repeated command a no-op;
* an answer lost after its change committed, retried after later changes:
  the retry names what its first attempt made (the version, the secret
  generation), not what the key is now;
* crash safety: cofferd killed with SIGKILL at random moments during 200
  rotations, each retried with its key until it answers: every rotation is
  there exactly once (versions 2..201, each key's answer a distinct
  version), and after a last restart no token object is left unclaimed.
"""
import concurrent.futures
import hashlib
import os
import random
import re
import signal
import subprocess
import threading
import time
import unittest

import grpc  # noqa: E402

from crash_harness import CRASH_EXIT, CrashDaemon, crash_points, sanitizer_build  # noqa: E402
from daemon_fixture import CofferDaemon, SealedRpcError, cofferctl_path  # noqa: E402
from rpc_common import SC, TIMEOUT, pb  # noqa: E402


def idem(key):
    return [("idempotency-key", key)]


class Idempotency(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def adm(self):
        return self.d.admin_stub()

    def versions(self, name):
        return [v.version for v in self.adm().GetKey(pb.GetKeyRequest(name=name),
                                                     timeout=TIMEOUT).versions]

    def test_same_request_twice_is_one_change(self):
        a = self.adm()
        a.CreateKey(pb.CreateKeyRequest(name="twice", type=pb.EC_P256), timeout=TIMEOUT,
                    metadata=idem("create-twice-1"))
        again = a.CreateKey(pb.CreateKeyRequest(name="twice", type=pb.EC_P256),
                            timeout=TIMEOUT, metadata=idem("create-twice-1"))
        self.assertEqual(again.name, "twice")     # not ALREADY_EXISTS: the first answer
        r1 = a.RotateKey(pb.RotateKeyRequest(name="twice"), timeout=TIMEOUT,
                         metadata=idem("rotate-twice-1"))
        r2 = a.RotateKey(pb.RotateKeyRequest(name="twice"), timeout=TIMEOUT,
                         metadata=idem("rotate-twice-1"))
        self.assertEqual(r1.SerializeToString(), r2.SerializeToString())
        self.assertEqual(self.versions("twice"), [1, 2])
        # Without a key, each call acts.
        a.RotateKey(pb.RotateKeyRequest(name="twice"), timeout=TIMEOUT)
        self.assertEqual(self.versions("twice"), [1, 2, 3])

    def test_other_request_with_the_key_is_refused(self):
        a = self.adm()
        a.CreateKey(pb.CreateKeyRequest(name="other-a", type=pb.EC_P256), timeout=TIMEOUT)
        a.CreateKey(pb.CreateKeyRequest(name="other-b", type=pb.EC_P256), timeout=TIMEOUT)
        a.RotateKey(pb.RotateKeyRequest(name="other-a"), timeout=TIMEOUT,
                    metadata=idem("rotate-other-1"))
        with self.assertRaises(grpc.RpcError) as cm:
            a.RotateKey(pb.RotateKeyRequest(name="other-b"), timeout=TIMEOUT,
                        metadata=idem("rotate-other-1"))
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        self.assertIn("was used for another request", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            a.CreatePrincipal(pb.CreatePrincipalRequest(name="p-other", uids=[7001]),
                              timeout=TIMEOUT, metadata=idem("rotate-other-1"))
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        self.assertEqual(self.versions("other-b"), [1])

    def test_errors_are_replayed_and_bad_keys_refused(self):
        a = self.adm()
        for _ in range(2):
            with self.assertRaises(grpc.RpcError) as cm:
                a.RotateKey(pb.RotateKeyRequest(name="no-such-key"), timeout=TIMEOUT,
                            metadata=idem("rotate-missing-1"))
            self.assertEqual(cm.exception.code(), SC.NOT_FOUND)
        for bad in ("short", "x" * 129, "has space in it", "semi;colon-key"):
            with self.assertRaises(grpc.RpcError) as cm:
                a.RotateKey(pb.RotateKeyRequest(name="twice"), timeout=TIMEOUT,
                            metadata=idem(bad))
            self.assertEqual(cm.exception.code(), SC.INVALID_ARGUMENT)
            self.assertIn("idempotency-key", cm.exception.details())

    def test_concurrent_duplicates_execute_once(self):
        a = self.adm()
        a.CreateKey(pb.CreateKeyRequest(name="conc", type=pb.RSA_2048), timeout=60)
        req = pb.RotateKeyRequest(name="conc")

        def one(_):
            return self.d.admin_stub().RotateKey(req, timeout=60,
                                                 metadata=idem("rotate-conc-1"))
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            res = list(ex.map(one, range(16)))
        self.assertEqual(len({r.SerializeToString() for r in res}), 1)
        self.assertEqual(self.versions("conc"), [1, 2])

    def test_secret_is_not_repeated(self):
        self.adm().CreatePrincipal(pb.CreatePrincipalRequest(name="idem-p", uids=[7002]),
                                   timeout=TIMEOUT)
        # A sealed call carries the key on its envelope.
        s = self.d.sealed_stub(kind="admin", service="AdminService")
        k1 = s_call(s, "CreateApiKey", pb.CreateApiKeyRequest(principal="idem-p"),
                    "apikey-once-1")
        k2 = s_call(s, "CreateApiKey", pb.CreateApiKeyRequest(principal="idem-p"),
                    "apikey-once-1")
        self.assertEqual(len(k1.secret), 32)
        self.assertEqual(k2.secret, b"")
        self.assertEqual(k1.key.id, k2.key.id)
        keys = self.adm().ListApiKeys(pb.ListApiKeysRequest(principal="idem-p"),
                                      timeout=TIMEOUT).keys
        self.assertEqual(len(keys), 1)

    def test_fingerprint_of_a_secret_is_keyed(self):
        self.adm().CreatePrincipal(pb.CreatePrincipalRequest(name="idem-fp", uids=[7005]),
                                   timeout=TIMEOUT)
        s = self.d.sealed_stub(kind="admin", service="AdminService")
        secret = b"correct horse battery staple!!!!"   # 32 bytes, guessable
        req = pb.CreateApiKeyRequest(principal="idem-fp", secret=secret)
        k1 = s_call(s, "CreateApiKey", req, "apikey-fingerprint-1")
        expr = ("encode(fingerprint, 'hex')" if self.d.pg_db is not None
                else "lower(hex(fingerprint))")
        rows = self.d.state_query("SELECT %s FROM idempotency WHERE key = "
                                  "'apikey-fingerprint-1'" % expr)
        digest = hashlib.sha256(b"/coffer.v1.AdminService/CreateApiKey\0" +
                                req.SerializeToString()).hexdigest()
        self.assertEqual(len(rows), 1)
        self.assertEqual(len(rows[0][0]), 64)
        self.assertNotEqual(rows[0][0], digest)
        # Still the same request's fingerprint: repeated, it is answered;
        # with another secret, refused.
        k2 = s_call(s, "CreateApiKey", req, "apikey-fingerprint-1")
        self.assertEqual((k1.key.id, k2.secret), (k2.key.id, b""))
        with self.assertRaises(SealedRpcError) as cm:
            s_call(s, "CreateApiKey", pb.CreateApiKeyRequest(
                principal="idem-fp", secret=b"correct horse battery staple!!!?"),
                "apikey-fingerprint-1")
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        self.assertEqual(cm.exception.details(),
                         "idempotency key apikey-fingerprint-1 was used for another request "
                         "(/coffer.v1.AdminService/CreateApiKey); use a new key for a new "
                         "request")

    def test_keys_are_per_caller(self):
        # The same key from another uid is another record: uid nobody may not
        # reach the admin socket, so check the store instead (either backend).
        self.adm().CreatePrincipal(pb.CreatePrincipalRequest(name="per-uid", uids=[7003]),
                                   timeout=TIMEOUT, metadata=idem("principal-per-uid"))
        rows = self.d.state_query("SELECT uid, method, CAST(done AS INTEGER) FROM idempotency "
                                  "WHERE key = 'principal-per-uid'")
        self.assertEqual(rows, [(str(os.geteuid()), "/coffer.v1.AdminService/CreatePrincipal",
                                 "1")])

    def test_zz_survives_restart_and_cofferctl(self):
        a = self.adm()
        a.CreateKey(pb.CreateKeyRequest(name="restart-k", type=pb.EC_P256), timeout=TIMEOUT)
        r1 = a.RotateKey(pb.RotateKeyRequest(name="restart-k"), timeout=TIMEOUT,
                         metadata=idem("rotate-restart-1"))
        self.d.restart()
        r2 = self.d.admin_stub().RotateKey(pb.RotateKeyRequest(name="restart-k"),
                                           timeout=TIMEOUT, metadata=idem("rotate-restart-1"))
        self.assertEqual(r1.SerializeToString(), r2.SerializeToString())
        self.assertEqual(self.versions("restart-k"), [1, 2])
        ctl = cofferctl_path()
        env = dict(self.d.env, COFFER_ADMIN_SOCKET=self.d.admin_socket)
        for _ in range(2):
            out = subprocess.run([ctl, "--json", "--idempotency-key", "ctl-rotate-0001", "key",
                                  "rotate", "restart-k"], env=env, capture_output=True,
                                 text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.versions("restart-k"), [1, 2, 3])
        # Without --idempotency-key each command is its own change.
        for _ in range(2):
            subprocess.run([ctl, "key", "rotate", "restart-k"], env=env, check=True,
                           capture_output=True, timeout=60)
        self.assertEqual(self.versions("restart-k"), [1, 2, 3, 4, 5])


def s_call(stub, name, req, key):
    """A sealed admin call whose envelope carries an idempotency key."""
    s = stub.open()
    path = "/coffer.v1.AdminService/" + name
    code, message, response = s.call(path, req.SerializeToString(), timeout=TIMEOUT,
                                     metadata=idem(key))
    if code != 0:
        raise SealedRpcError(path, code, message)
    return getattr(pb, {"CreateApiKey": "ApiKeySecretResponse",
                        "RotateApiKeySecret": "ApiKeySecretResponse"}[name]).FromString(response)


class LostAnswer(unittest.TestCase):
    """cofferd exits just after a change's commit (crash point
    `<point>.committed`), so its caller never hears; other changes follow;
    the retry with the first attempt's key answers what that attempt made."""

    @classmethod
    def setUpClass(cls):
        if not crash_points():
            raise unittest.SkipTest("cofferd built without COFFER_CRASH_POINTS")
        cls.d = CrashDaemon()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def lost(self, point, call):
        """call() with cofferd set to exit at the first pass of `point`:
        it must fail, cofferd must exit there; then cofferd runs again."""
        d = self.d
        d.stop(expect=None)
        d.crash_env = {"COFFER_CRASH_AT": point + "@1"}
        try:
            d.start()
            with self.assertRaises(grpc.RpcError) as cm:
                call()
            self.assertEqual(cm.exception.code(), SC.UNAVAILABLE, cm.exception.details())
            self.assertEqual(d.proc.wait(timeout=30), CRASH_EXIT, d.log()[-2000:])
        finally:
            d.stop(expect=None)
            d.crash_env = {}
            d.start()

    def set_made(self, key, version):
        """The record of idempotency key `key` names `version` as what its
        call made (as a replica that has not read it back would find it)."""
        self.d.stop()
        self.d.state_query("UPDATE idempotency SET effect_version = %d WHERE key = '%s'"
                           % (version, key))
        self.d.start()

    def test_rotation_answers_its_version(self):
        a = self.d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="lost-rot", type=pb.EC_P256), timeout=TIMEOUT)
        a.SetKeyMinimums(pb.SetKeyMinimumsRequest(name="lost-rot", min_version=1,
                                                  min_verify_version=1), timeout=TIMEOUT)
        req = pb.RotateKeyRequest(name="lost-rot")
        self.lost("store.version-add.committed", lambda: self.d.admin_stub().RotateKey(
            req, timeout=TIMEOUT, metadata=idem("lost-rotation-1")))
        a = self.d.admin_stub()
        for _ in range(2):
            a.RotateKey(req, timeout=TIMEOUT)
        a.SetKeyMinimums(pb.SetKeyMinimumsRequest(name="lost-rot", min_version=4,
                                                  min_verify_version=3), timeout=TIMEOUT)
        r = a.RotateKey(req, timeout=TIMEOUT, metadata=idem("lost-rotation-1"))
        self.assertEqual(r.primary_version, 2)
        self.assertEqual([v.version for v in r.versions], [1, 2])
        self.assertEqual((r.min_version, r.min_verify_version), (2, 2))
        self.assertIn("answering it without acting again", self.d.log(all_starts=False))
        now = a.GetKey(pb.GetKeyRequest(name="lost-rot"), timeout=TIMEOUT)
        self.assertEqual([v.version for v in now.versions], [1, 2, 3, 4])
        self.assertEqual(now.primary_version, 4)
        # Done now: a repeat replays that answer.
        again = a.RotateKey(req, timeout=TIMEOUT, metadata=idem("lost-rotation-1"))
        self.assertEqual(again.SerializeToString(), r.SerializeToString())

    def test_version_not_seen_here_is_unavailable(self):
        """A record naming a version this daemon does not hold (as a replica
        whose reload failed would find it) answers UNAVAILABLE with its text
        and stays for the next retry, which answers once the version is
        there."""
        a = self.d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="lost-unseen", type=pb.EC_P256), timeout=TIMEOUT)
        req = pb.RotateKeyRequest(name="lost-unseen")

        def rotate():
            return self.d.admin_stub().RotateKey(req, timeout=TIMEOUT,
                                                 metadata=idem("lost-unseen-1"))

        self.lost("store.version-add.committed", rotate)
        self.set_made("lost-unseen-1", 99)
        for _ in range(2):
            with self.assertRaises(grpc.RpcError) as cm:
                rotate()
            self.assertEqual((cm.exception.code(), cm.exception.details()), (
                SC.UNAVAILABLE, "key lost-unseen: version 99, which this call made, is not "
                "known to this replica yet; retry"))
        self.set_made("lost-unseen-1", 2)
        self.assertEqual(rotate().primary_version, 2)
        self.assertEqual([v.version for v in self.d.admin_stub().GetKey(
            pb.GetKeyRequest(name="lost-unseen"), timeout=TIMEOUT).versions], [1, 2])

    def test_secret_not_seen_here_is_unavailable(self):
        """The same for an API key: a record naming a secret generation this
        daemon does not hold answers UNAVAILABLE with its text and stays;
        the retry answers once the generation is there."""
        self.d.admin_stub().CreatePrincipal(pb.CreatePrincipalRequest(name="lost-u",
                                                                      uids=[7014]),
                                            timeout=TIMEOUT)
        kid = s_call(self.d.sealed_stub(kind="admin", service="AdminService"), "CreateApiKey",
                     pb.CreateApiKeyRequest(principal="lost-u"), "lost-u-create").key.id
        req = pb.RotateApiKeySecretRequest(id=kid, overlap_seconds=3600)

        def rotate():
            return s_call(self.d.sealed_stub(kind="admin", service="AdminService"),
                          "RotateApiKeySecret", req, "lost-u-rotate-1")

        self.lost("store.apikey-put.committed", rotate)
        self.set_made("lost-u-rotate-1", 99)
        for _ in range(2):
            with self.assertRaises(SealedRpcError) as cm:
                rotate()
            self.assertEqual((cm.exception.code(), cm.exception.details()), (
                SC.UNAVAILABLE, "API key %s: secret generation 99, which this call made, is "
                "not known to this replica yet; retry" % kid))
        self.set_made("lost-u-rotate-1", 2)
        r = rotate()
        self.assertEqual(r.secret, b"")
        self.assertEqual([(x.generation, x.expire_time) for x in r.key.secrets][:1], [(2, 0)])

    def test_creation_answers_version_1(self):
        req = pb.CreateKeyRequest(name="lost-create", type=pb.HMAC_SHA256)
        self.lost("store.key-create.committed", lambda: self.d.admin_stub().CreateKey(
            req, timeout=TIMEOUT, metadata=idem("lost-create-1")))
        a = self.d.admin_stub()
        a.RotateKey(pb.RotateKeyRequest(name="lost-create"), timeout=TIMEOUT)
        r = a.CreateKey(req, timeout=TIMEOUT, metadata=idem("lost-create-1"))
        self.assertEqual((r.name, r.primary_version, [v.version for v in r.versions]),
                         ("lost-create", 1, [1]))

    def test_version_change_answers_the_key_as_it_is(self):
        """A change that makes nothing (a version disabled) is answered
        with the key as it is now, later rotations included."""
        a = self.d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name="lost-dis", type=pb.EC_P256), timeout=TIMEOUT)
        a.RotateKey(pb.RotateKeyRequest(name="lost-dis"), timeout=TIMEOUT)
        req = pb.KeyVersionRequest(name="lost-dis", version=1)
        self.lost("store.key-save.committed", lambda: self.d.admin_stub().DisableKeyVersion(
            req, timeout=TIMEOUT, metadata=idem("lost-disable-1")))
        a = self.d.admin_stub()
        a.RotateKey(pb.RotateKeyRequest(name="lost-dis"), timeout=TIMEOUT)
        r = a.DisableKeyVersion(req, timeout=TIMEOUT, metadata=idem("lost-disable-1"))
        self.assertEqual(r.primary_version, 3)
        self.assertEqual([(v.version, v.state) for v in r.versions],
                         [(1, pb.DISABLED), (2, pb.ENABLED), (3, pb.ENABLED)])
        self.assertIn("answering it without acting again", self.d.log(all_starts=False))

    def test_api_key_creation_answers_generation_1(self):
        self.d.admin_stub().CreatePrincipal(pb.CreatePrincipalRequest(name="lost-c",
                                                                      uids=[7012]),
                                            timeout=TIMEOUT)
        req = pb.CreateApiKeyRequest(principal="lost-c")

        def create():
            return s_call(self.d.sealed_stub(kind="admin", service="AdminService"),
                          "CreateApiKey", req, "lost-apikey-create-1")
        self.lost("store.apikey-put.committed", create)
        kid = self.d.admin_stub().ListApiKeys(pb.ListApiKeysRequest(principal="lost-c"),
                                              timeout=TIMEOUT).keys[0].id
        s_call(self.d.sealed_stub(kind="admin", service="AdminService"), "RotateApiKeySecret",
               pb.RotateApiKeySecretRequest(id=kid, overlap_seconds=3600), "lost-c-rotate")
        r = create()
        self.assertEqual(r.secret, b"")
        self.assertEqual((r.key.id, [(x.generation, x.expire_time) for x in r.key.secrets]),
                         (kid, [(1, 0)]))

    def test_secret_rotation_answers_its_generation(self):
        self.d.admin_stub().CreatePrincipal(pb.CreatePrincipalRequest(name="lost-p",
                                                                      uids=[7011]),
                                            timeout=TIMEOUT)
        s = self.d.sealed_stub(kind="admin", service="AdminService")
        kid = s_call(s, "CreateApiKey", pb.CreateApiKeyRequest(principal="lost-p"),
                     "lost-apikey-create").key.id
        req = pb.RotateApiKeySecretRequest(id=kid, overlap_seconds=3600)

        def rotate(key):
            return s_call(self.d.sealed_stub(kind="admin", service="AdminService"),
                          "RotateApiKeySecret", req, key)
        self.lost("store.apikey-put.committed", lambda: rotate("lost-apikey-rotate-1"))
        rotate("lost-apikey-rotate-2")
        r = rotate("lost-apikey-rotate-1")
        self.assertEqual(r.secret, b"")          # shown once, in the answer that was lost
        self.assertEqual([(x.generation, x.expire_time) for x in r.key.secrets][:1], [(2, 0)])
        self.assertEqual(sorted(x.generation for x in r.key.secrets), [1, 2])
        now = self.d.admin_stub().ListApiKeys(pb.ListApiKeysRequest(principal="lost-p"),
                                              timeout=TIMEOUT).keys[0]
        self.assertEqual(sorted(x.generation for x in now.secrets), [1, 2, 3])


    def test_deleted_principal_takes_its_api_keys(self):
        """DeletePrincipal revokes the principal's API keys in its own
        change: cofferd exiting right after that change committed leaves no
        live key of a principal that is gone (before, the keys were revoked
        one by one afterwards, and stayed live). The retry answers it."""
        a = self.d.admin_stub()
        a.CreatePrincipal(pb.CreatePrincipalRequest(name="lost-d", uids=[7013]),
                          timeout=TIMEOUT)
        s = self.d.sealed_stub(kind="admin", service="AdminService")
        kids = sorted(s_call(s, "CreateApiKey", pb.CreateApiKeyRequest(principal="lost-d"),
                             "lost-d-key-%d" % i).key.id for i in range(2))
        req = pb.DeletePrincipalRequest(name="lost-d")
        self.lost("store.principal-delete.committed", lambda: self.d.admin_stub().DeletePrincipal(
            req, timeout=TIMEOUT, metadata=idem("lost-delete-1")))
        a = self.d.admin_stub()
        keys = a.ListApiKeys(pb.ListApiKeysRequest(principal="lost-d"), timeout=TIMEOUT).keys
        self.assertEqual(sorted(k.id for k in keys), kids)
        for k in keys:
            self.assertNotEqual(k.revoke_time, 0, "key %s of a deleted principal is live" % k.id)
            self.assertEqual(len(k.secrets), 0)
        # The start found their secrets' objects, which no record claims any
        # more, and removed them.
        self.assertEqual(len(re.findall(r"API key (%s) secret 1" % "|".join(kids),
                                        self.d.log(all_starts=False))), 2,
                         self.d.log(all_starts=False)[-3000:])
        with self.assertRaises(grpc.RpcError) as cm:
            a.GetPrincipal(pb.GetPrincipalRequest(name="lost-d"), timeout=TIMEOUT)
        self.assertEqual(cm.exception.code(), SC.NOT_FOUND)
        # A principal made again under the name starts with no key, unsigned.
        a.CreatePrincipal(pb.CreatePrincipalRequest(name="lost-d", uids=[7013]),
                          timeout=TIMEOUT)
        self.assertEqual(a.DeletePrincipal(req, timeout=TIMEOUT, metadata=idem("lost-delete-1")),
                         pb.DeletePrincipalResponse())
        self.assertIn("answering it without acting again", self.d.log(all_starts=False))
        a.GetPrincipal(pb.GetPrincipalRequest(name="lost-d"), timeout=TIMEOUT)
        self.assertEqual([k.revoke_time != 0 for k in a.ListApiKeys(
            pb.ListApiKeysRequest(principal="lost-d"), timeout=TIMEOUT).keys], [True, True])


class CrashSafety(unittest.TestCase):
    # Fewer under the sanitizers (3x slower): test_crash_stress runs the 200
    # there, and test_crash_points every crash point.
    ROTATIONS = 60 if sanitizer_build() else 200

    def test_sigkill_during_rotations(self):
        d = CofferDaemon()
        d.start()
        try:
            d.admin_stub().CreateKey(pb.CreateKeyRequest(name="crash-k", type=pb.EC_P256),
                                     timeout=TIMEOUT)
            rnd = random.Random(7)
            kills = 0
            answers = {}
            for i in range(self.ROTATIONS):
                key = "crash-rotation-%04d" % i
                attempt = 0
                while True:
                    if not d.running:
                        d.close_channels()
                        d.start()
                    stub = d.admin_stub()
                    grpc.channel_ready_future(d._channels[-1]).result(timeout=TIMEOUT)
                    # A first attempt is killed one time in three, at a random
                    # moment while the daemon works on it.
                    timer = None
                    if attempt == 0 and rnd.random() < 0.33:
                        proc = d.proc
                        timer = threading.Timer(rnd.uniform(0.0, 0.012),
                                                lambda p=proc: p.send_signal(signal.SIGKILL))
                        timer.start()
                    try:
                        r = stub.RotateKey(pb.RotateKeyRequest(name="crash-k"), timeout=10,
                                           metadata=idem(key))
                        answers[key] = r.primary_version
                    except grpc.RpcError as e:
                        self.assertIn(e.code(), (SC.UNAVAILABLE, SC.CANCELLED, SC.UNKNOWN),
                                      e.details())
                    if timer is not None:
                        timer.join()
                        d.proc.wait()
                        kills += 1
                    if key in answers and d.running:
                        break
                    attempt += 1
            self.assertGreater(kills, self.ROTATIONS * 3 // 20)   # ≈ 35% of calls are killed
            # Every key answered with its own version: each rotation once.
            self.assertEqual(sorted(answers.values()), list(range(2, 2 + self.ROTATIONS)))
            if d.running:
                d.stop()
            d.start()
            adm = d.admin_stub()
            info = adm.GetKey(pb.GetKeyRequest(name="crash-k"), timeout=TIMEOUT)
            self.assertEqual([v.version for v in info.versions],
                             list(range(1, 2 + self.ROTATIONS)))
            # Repeats answer as the first time, with no new version.
            for key, v in list(answers.items())[::20]:
                r = adm.RotateKey(pb.RotateKeyRequest(name="crash-k"), timeout=TIMEOUT,
                                  metadata=idem(key))
                self.assertEqual(r.primary_version, v)
            self.assertEqual(len(adm.GetKey(pb.GetKeyRequest(name="crash-k"),
                                            timeout=TIMEOUT).versions), 1 + self.ROTATIONS)
            # A clean start: nothing in the token that no record claims.
            self.assertNotIn("reconcile:", d.log(all_starts=False))
            print("\n%d SIGKILLs during %d rotations; %d interrupted creations undone at a start" %
                  (kills, self.ROTATIONS,
                   d.log().count("recovered: the interrupted creation of crash-k")))
        finally:
            d.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
