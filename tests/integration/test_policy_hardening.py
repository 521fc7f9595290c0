#!/usr/bin/python3
"""Issue 14, defects 5, 10 and 11, against a real cofferd on a real token:

* ListKeys on the service socket lists exactly the keys GetKey would show
  (a get-public-key grant the key's own limit allows): nothing without a
  grant, the granted ones with a partial grant, page tokens never naming a
  hidden key; the admin socket still lists every key;
* each API key has its own share of the nonce record: one key at its limit
  is refused (the message names the key and the limit, a warning is logged,
  at most once per 10 s) while another key's calls go on; a call's
  timestamp may be at most 1 s ahead of the daemon's clock;
* a principal whose last API key is revoked still has to sign (the refusal
  says what to do), across a restart, until `cofferctl principal set-auth
  NAME --uid-only` (SetPrincipalAuth, audited, idempotent) allows uid-only
  calls again;
* a principal change waiting on the state store (its tables locked by
  another session) does not hold up other callers' calls.
"""
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
import unittest

import grpc  # noqa: E402

from daemon_fixture import CofferDaemon, Ctl, health_check  # noqa: E402
from rpc_common import call_authorization  # noqa: E402
from rpc_common import KS, SC, pb  # noqa: E402

T = 20


def authz(key_id, secret, method, req, timestamp=None):
    return [("authorization", call_authorization(key_id, secret, KS + method,
                                                 req.SerializeToString(), timestamp))]

class ListKeysGrants(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(grant_all=False)
        cls.d.start()
        cls.adm = cls.d.admin_stub()
        cls.adm.CreatePrincipal(pb.CreatePrincipalRequest(name="tester", uids=[os.geteuid()]),
                                timeout=T)
        for name in ("alpha-1", "alpha-2", "beta-1", "gamma-1"):
            cls.adm.CreateKey(pb.CreateKeyRequest(name=name, type=pb.HMAC_SHA256), timeout=T)
        # Granted below, but its own limit excludes get-public-key.
        cls.adm.CreateKey(pb.CreateKeyRequest(name="alpha-3", type=pb.HMAC_SHA256,
                                              allowed_operations=[pb.OP_MAC]), timeout=T)

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def names(self, stub=None, page_size=0):
        stub = stub or self.d.service_stub()
        out, token, pages = [], "", 0
        while True:
            r = stub.ListKeys(pb.ListKeysRequest(page_size=page_size, page_token=token),
                              timeout=T)
            out += [k.name for k in r.keys]
            pages += 1
            if not r.next_page_token:
                return out, pages
            # A token names a key the caller was shown, never a hidden one.
            self.assertIn(r.next_page_token, out)
            token = r.next_page_token

    def denied(self, name, text):
        with self.assertRaises(grpc.RpcError) as cm:
            self.d.service_stub().GetKey(pb.GetKeyRequest(name=name), timeout=T)
        self.assertEqual(cm.exception.code(), SC.PERMISSION_DENIED)
        self.assertEqual(cm.exception.details(), text)

    def grant(self, pattern, ops):
        self.adm.GrantPrincipal(pb.GrantRequest(name="tester", grant=pb.Grant(
            key_pattern=pattern, operations=ops)), timeout=T)

    def test_listing_follows_get_key(self):
        # No grant at all: GetKey is refused and ListKeys shows nothing.
        self.denied("alpha-1", "principal tester may not get-public-key with key alpha-1 "
                    "(no grant)")
        self.assertEqual(self.names(), ([], 1))
        # A grant of another operation does not show metadata.
        self.grant("beta-1", [pb.OP_MAC])
        self.denied("beta-1", "principal tester may not get-public-key with key beta-1 "
                    "(no grant)")
        self.assertEqual(self.names()[0], [])
        # A partial grant: exactly the keys GetKey answers.
        self.grant("alpha-*", [pb.OP_GET_PUBLIC_KEY])
        self.d.service_stub().GetKey(pb.GetKeyRequest(name="alpha-2"), timeout=T)
        self.denied("alpha-3", "key alpha-3 does not allow get-public-key (its own limit)")
        self.assertEqual(self.names()[0], ["alpha-1", "alpha-2"])
        # Page by page: hidden keys are skipped (the page after alpha-2 is
        # empty: keys follow, none of them visible).
        self.assertEqual(self.names(page_size=1), (["alpha-1", "alpha-2"], 3))
        # Sealed calls are filtered the same way.
        r = self.d.sealed_stub().ListKeys(pb.ListKeysRequest(), timeout=T)
        self.assertEqual([k.name for k in r.keys], ["alpha-1", "alpha-2"])
        # The admin socket lists every key.
        self.assertEqual(self.names(self.adm)[0],
                         ["alpha-1", "alpha-2", "alpha-3", "beta-1", "gamma-1"])
        # Granting the rest shows the rest (alpha-3 stays hidden: its own limit).
        self.grant("*", [pb.OP_GET_PUBLIC_KEY])
        self.assertEqual(self.names(page_size=2)[0], ["alpha-1", "alpha-2", "beta-1",
                                                      "gamma-1"])


class NonceShares(unittest.TestCase):
    """The default share: an eighth of max_nonces."""
    SHARE = 125
    CONFIG = {"window": "60", "max_nonces": "1000"}

    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon(config={"requests": cls.CONFIG})
        cls.d.start()
        sadm = cls.d.sealed_stub(kind="admin", service="AdminService")
        cls.keys = [sadm.CreateApiKey(pb.CreateApiKeyRequest(principal="tester"), timeout=T)
                    for _ in range(2)]

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def list_keys(self, k, **kw):
        req = pb.ListKeysRequest()
        return self.d.service_stub().ListKeys(
            req, metadata=authz(k.key.id, k.secret, "ListKeys", req, **kw), timeout=T)

    def test_one_key_at_its_share_does_not_refuse_another(self):
        busy, quiet = self.keys
        stub = self.d.service_stub()
        req = pb.ListKeysRequest()
        for _ in range(self.SHARE):
            stub.ListKeys(req, metadata=authz(busy.key.id, busy.secret, "ListKeys", req),
                          timeout=T)
        for _ in range(5):
            with self.assertRaises(grpc.RpcError) as cm:
                self.list_keys(busy)
            self.assertEqual(cm.exception.code(), SC.RESOURCE_EXHAUSTED)
            self.assertEqual(cm.exception.details(),
                             "coffer.apikey.%s holds %d unexpired nonces, the limit of one "
                             "key (requests.max_nonces_per_key = %d); retry once older ones "
                             "expire (their timestamp plus the window)"
                             % (busy.key.id, self.SHARE, self.SHARE))
        # Another key of the same principal (and so anyone else) goes on.
        self.list_keys(quiet)
        # Logged, naming the key and the limit: once for the five refusals.
        line = ("warn: refused a signed call: nonce scope coffer.apikey.%s holds %d "
                "unexpired nonces, its share of the nonce record "
                "(requests.max_nonces_per_key = %d)" % (busy.key.id, self.SHARE, self.SHARE))
        self.assertTrue(self.d.wait_for_log(line), self.d.log()[-2000:])
        self.assertEqual(self.d.log().count("refused a signed call"), 1)
        self.assertNotIn(busy.secret.hex(), self.d.log())

    def test_future_timestamps_bounded(self):
        # The caller signs on this host: 1 s ahead (a second boundary) is
        # accepted, more is refused, so no nonce outlives now + window + 2.
        k = self.keys[1]
        self.list_keys(k, timestamp=int(time.time()) + 1)
        for ahead in (5, 50):
            with self.assertRaises(grpc.RpcError) as cm:
                self.list_keys(k, timestamp=int(time.time()) + ahead)
            self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED)
            self.assertRegex(cm.exception.details(),
                             r"^clock skew: the timestamp is (%d|%d) s ahead of the daemon's "
                             r"clock \(at most 1 s is accepted\); check the caller's clock$"
                             % (ahead, ahead - 1))
        # The past side keeps the whole window.
        self.list_keys(k, timestamp=int(time.time()) - 50)


class NonceSharesConfigured(NonceShares):
    """[requests] max_nonces_per_key."""
    SHARE = 100
    CONFIG = {"window": "60", "max_nonces": "1000", "max_nonces_per_key": "100"}

    def test_future_timestamps_bounded(self):
        pass   # as in NonceShares


class StickySignedCalls(unittest.TestCase):
    def setUp(self):
        self.d = CofferDaemon()
        self.d.start()
        self.ctl = Ctl(self.d)

    def tearDown(self):
        self.d.cleanup()

    def unsigned(self):
        return self.d.service_stub().ListKeys(pb.ListKeysRequest(), timeout=T)

    def refused_unsigned(self, text):
        with self.assertRaises(grpc.RpcError) as cm:
            self.unsigned()
        self.assertEqual(cm.exception.code(), SC.UNAUTHENTICATED)
        self.assertEqual(cm.exception.details(), text)

    STICKY = ("principal tester requires signed calls (it had API keys; the last was "
              "revoked): create a key with cofferctl principal add-key tester, or allow "
              "uid-only calls with cofferctl principal set-auth tester --uid-only")

    def test_revoking_the_last_key_keeps_signing_required(self):
        self.unsigned()
        ak = json.loads(self.ctl("--json", "principal", "add-key", "tester").stdout)
        kid = ak["key"]["id"]
        with self.assertRaises(grpc.RpcError) as cm:
            self.unsigned()
        self.assertIn("principal tester has an API key, so every call must carry",
                      cm.exception.details())
        self.ctl("principal", "revoke-key", kid)
        self.refused_unsigned(self.STICKY)
        # Persistent: a restart does not forget it.
        self.d.restart()
        self.refused_unsigned(self.STICKY)
        # --uid-only while a key is live says so and changes nothing yet.
        ak2 = json.loads(self.ctl("--json", "principal", "add-key", "tester").stdout)
        r = self.ctl("principal", "set-auth", "tester", "--uid-only")
        self.assertEqual(r.stdout.decode(), "tester may call with its uid only once its API "
                         "keys are revoked; it has a live one now\n")
        with self.assertRaises(grpc.RpcError) as cm:
            self.unsigned()
        self.assertIn("has an API key", cm.exception.details())
        self.ctl("principal", "revoke-key", ak2["key"]["id"])
        self.unsigned()
        # A key made later sets it again ...
        ak3 = json.loads(self.ctl("--json", "principal", "add-key", "tester").stdout)
        self.ctl("principal", "revoke-key", ak3["key"]["id"])
        self.refused_unsigned(self.STICKY)
        # ... until the explicit operator action restores uid-only calls.
        r = self.ctl("principal", "set-auth", "tester", "--uid-only")
        self.assertEqual(r.stdout.decode(), "tester may call with its uid only\n")
        self.unsigned()
        self.d.restart()
        self.unsigned()
        tail = self.ctl("audit", "tail", "--count", "50").stdout.decode()
        recs = [json.loads(x) for x in tail.splitlines()
                if x.startswith("{") and "SetPrincipalAuth" in x]
        self.assertEqual(len(recs), 2, tail)   # both --uid-only
        self.assertTrue(all(x["result"] == "OK" and x["key"] == "tester" for x in recs), recs)
        # --signed-only sets it back without a key.
        r = self.ctl("--json", "principal", "set-auth", "tester", "--signed-only")
        self.assertEqual(json.loads(r.stdout), {"name": "tester", "require_api_key": True,
                                                "has_live_key": False})
        self.refused_unsigned(self.STICKY)

    def test_set_auth_rpc_idempotent_and_refusals(self):
        adm = self.d.admin_stub()
        md = [("idempotency-key", "set-auth-0000000001")]
        req = pb.SetPrincipalAuthRequest(name="tester", require_api_key=True)
        a = adm.SetPrincipalAuth(req, metadata=md, timeout=T)
        b = adm.SetPrincipalAuth(req, metadata=md, timeout=T)
        self.assertEqual((a.name, a.require_api_key, a.has_live_key), ("tester", True, False))
        self.assertEqual(a, b)
        self.refused_unsigned(self.STICKY)
        # The same key with another request is refused.
        with self.assertRaises(grpc.RpcError) as cm:
            adm.SetPrincipalAuth(pb.SetPrincipalAuthRequest(name="tester"), metadata=md,
                                 timeout=T)
        self.assertEqual(cm.exception.code(), SC.FAILED_PRECONDITION)
        with self.assertRaises(grpc.RpcError) as cm:
            adm.SetPrincipalAuth(pb.SetPrincipalAuthRequest(name="nobody"), timeout=T)
        self.assertEqual(cm.exception.code(), SC.NOT_FOUND)
        self.assertEqual(cm.exception.details(), "no principal nobody")
        # Not on the service socket.
        with self.assertRaises(grpc.RpcError) as cm:
            self.d.channel("service").unary_unary(
                "/coffer.v1.AdminService/SetPrincipalAuth",
                request_serializer=pb.SetPrincipalAuthRequest.SerializeToString,
                response_deserializer=pb.SetPrincipalAuthResponse.FromString)(
                    pb.SetPrincipalAuthRequest(name="tester"), timeout=T)
        self.assertEqual(cm.exception.code(), SC.UNIMPLEMENTED)
        # cofferctl wants exactly one of the two options.
        r = self.ctl("principal", "set-auth", "tester", ok=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("principal set-auth needs --uid-only or --signed-only", r.stderr.decode())
        # Deleting the principal ends it: one made later under the name does
        # not inherit it.
        adm.DeletePrincipal(pb.DeletePrincipalRequest(name="tester"), timeout=T)
        self.d.ensure_principal()
        self.unsigned()
        self.d.restart()
        self.unsigned()




class ChangeWaitingOnTheStore(unittest.TestCase):
    def test_calls_go_on_while_a_principal_change_waits(self):
        """Before, a principal change held the principals' lock, which
        every call reads, across its store write: while the store waited
        (a lock another session held, a slow PostgreSQL) every call on the
        daemon waited too (found by a review)."""
        d = CofferDaemon()
        d.config.setdefault("state", {})["wait_ms"] = "4000"    # either backend
        self.addCleanup(d.cleanup)
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="w-ec", type=pb.EC_P256), timeout=T)
        svc = d.service_stub()
        svc.Sign(pb.SignRequest(key="w-ec", message=b"before"), timeout=T)
        release = hold_principals(d)
        done = []
        grant = threading.Thread(target=lambda: done.append(self._grant(d)))
        grant.start()
        time.sleep(0.5)                 # the grant waits on the store
        t0 = time.monotonic()
        svc.Sign(pb.SignRequest(key="w-ec", message=b"meanwhile"), timeout=T)
        took = time.monotonic() - t0
        still_waiting = grant.is_alive()
        release()
        grant.join(timeout=30)
        self.assertLess(took, 1.0, "a Sign waited %.2f s behind a principal change" % took)
        self.assertTrue(still_waiting, "the grant did not wait on the store")
        self.assertEqual(len(done), 1)

    def test_postgresql_changes_queued_behind_the_fleet_lock_wait_one_bound(self):
        """Six changes, more than the four threads for changes, each with an
        idempotency key, while an operator holds the fleet's change lock:
        each is refused after its one 30 s bound, queue included. Before,
        the idempotency record's transaction took the tally of the queue
        with it: the last two were refused after 59.9 s (found from
        outside)."""
        d = self._pg_daemon()
        release = psql_holding(d, "SELECT pg_advisory_lock(1131374182, 1);")
        time.sleep(0.5)
        got, took = [None] * 6, [0.0] * 6

        def create(i):
            t0 = time.monotonic()
            try:
                d.admin_stub().CreateKey(pb.CreateKeyRequest(name="q-%d" % i,
                                                             type=pb.EC_P256),
                                         metadata=[("idempotency-key", "queued-create-%d" % i)],
                                         timeout=90)
                got[i] = "OK"
            except grpc.RpcError as e:
                got[i] = e
            took[i] = time.monotonic() - t0
        try:
            changes = [threading.Thread(target=create, args=(i,)) for i in range(6)]
            for t in changes:
                t.start()
            for t in changes:
                t.join()
        finally:
            release()
        for e in got:
            self.assertIsInstance(e, grpc.RpcError)
            self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
            self.assertIn("fleet: waited 30 s for the registry's change lock", e.details())
        self.assertLess(max(took), 33.0, took)

    def test_postgresql_a_change_waiting_on_a_held_table_is_no_hung_server(self):
        """A grant waits 6 s (lock_timeout, 2/3 of [state] wait_ms = 9 s) on
        the principals an operator holds: health stays SERVING all along,
        past [audit] max_wait_ms (2 s), the limit for a server that hangs.
        Before, the replica said NOT_SERVING from 2 s on, and a load
        balancer would have pulled it (found from outside)."""
        d = CofferDaemon()
        if d.pg_db is None:
            self.skipTest("PostgreSQL backend only (tests/run-on-postgresql.sh)")
        d.config["state"]["wait_ms"] = "9000"
        self.addCleanup(d.cleanup)
        d.start()
        release = hold_principals(d)
        done = []
        try:
            grant = threading.Thread(target=lambda: done.append(self._grant(d)))
            grant.start()
            healths = []
            for _ in range(5):
                time.sleep(1.0)
                healths.append(health_check(d.service_socket, timeout=T))
            grant.join()
        finally:
            release()
        self.assertEqual(healths, [1] * 5)              # SERVING throughout
        self.assertIsInstance(done[0], grpc.RpcError)
        self.assertEqual(done[0].code(), grpc.StatusCode.UNAVAILABLE, done[0].details())
        self.assertIn("waited 6000 ms for a lock another PostgreSQL session holds",
                      done[0].details())
        self.assertEqual(health_check(d.service_socket, timeout=T), 1)

    def test_changes_waiting_on_the_store_leave_the_workers_free(self):
        """Eight changes wait on a store another process holds, more than
        the daemon's four workers: Sign and health checks are answered at
        once meanwhile, and each change is refused after about one bound,
        its time queued behind the others counted. Before, the changes ran
        on the workers: a Mac waited 15 s, health did not answer, and the
        queued changes were refused after 5, 10, then 15 s (found by a
        client written from the documents alone)."""
        d = CofferDaemon()
        d.config.setdefault("state", {})["wait_ms"] = "1500"
        d.config.setdefault("daemon", {})["workers"] = "4"
        self.addCleanup(d.cleanup)
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="w-ec", type=pb.EC_P256), timeout=T)
        svc = d.service_stub()
        got, took = [None] * 8, [0.0] * 8

        def grant(i):
            t0 = time.monotonic()
            got[i] = self._grant(d)
            took[i] = time.monotonic() - t0
        release = hold_principals(d)
        signs, healths = [], []
        try:
            changes = [threading.Thread(target=grant, args=(i,)) for i in range(8)]
            for t in changes:
                t.start()
            time.sleep(0.3)
            for i in range(8):
                t0 = time.monotonic()
                svc.Sign(pb.SignRequest(key="w-ec", message=b"%d" % i), timeout=T)
                signs.append(time.monotonic() - t0)
                t0 = time.monotonic()
                healths.append(health_check(d.service_socket, timeout=T))
                signs.append(time.monotonic() - t0)
                time.sleep(0.1)
            for t in changes:
                t.join()
        finally:
            release()
        self.assertLess(max(signs), 0.5, signs)
        self.assertEqual(healths, [1] * 8)              # SERVING
        for e in got:
            self.assertIsInstance(e, grpc.RpcError)
            self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
        # One bound each (1 s on PostgreSQL, 5 s on SQLite), the queue included.
        self.assertLess(max(took), 2.0 if d.pg_db is not None else 6.0, took)
        self.assertEqual(self._grant(d), "OK")

    def test_the_trail_anchor_gives_way_to_a_lock_held_elsewhere(self):
        """The audit trail's anchor, written in the background after each
        seal, waits at most 100 ms for the store another process holds, and
        says so once; it waited the whole busy timeout (5 s on SQLite) with
        the store's one connection, and every change queued behind it
        (found in this project). Anchored again once the hold ends."""
        d = CofferDaemon()
        d.config.setdefault("state", {})["wait_ms"] = "1500"
        self.addCleanup(d.cleanup)
        d.start()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="w-ec", type=pb.EC_P256), timeout=T)
        svc = d.service_stub()
        if d.pg_db is not None:
            release = psql_holding(d, "BEGIN; LOCK TABLE audit_anchor IN ACCESS EXCLUSIVE MODE;")
        else:
            release = hold_principals(d)      # the whole file on SQLite
        try:
            for i in range(10):             # seals, each anchored in the background
                svc.Sign(pb.SignRequest(key="w-ec", message=b"%d" % i), timeout=T)
                time.sleep(0.15)
            time.sleep(0.3)
            held = d.log()
        finally:
            release()
        for i in range(5):
            svc.Sign(pb.SignRequest(key="w-ec", message=b"after %d" % i), timeout=T)
            time.sleep(0.15)
        deadline = time.monotonic() + 10
        while "in the state store again, after" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        failed = [x for x in held.splitlines() if "audit: cannot anchor record" in x]
        self.assertEqual(len(failed), 1, held)
        self.assertIn("(tried again at each seal; logged again when one succeeds)", failed[0])
        if d.pg_db is not None:
            self.assertIn("waited 100 ms for a lock another PostgreSQL session holds",
                          failed[0])
        else:
            self.assertIn("database is locked: another process holds the write lock of %s; "
                          "waited 100 ms for it" % os.path.join(d.state_dir, "coffer.db"),
                          failed[0])
        again = re.findall(r"audit: anchored record \d+ in the state store again, after "
                           r"(\d+) failed tries", d.log())
        self.assertEqual(len(again), 1, d.log())
        self.assertGreaterEqual(int(again[0]), 2)

    def test_a_lock_held_elsewhere_is_unavailable_with_its_text(self):
        """A change refused because another session held the store past its
        wait is UNAVAILABLE, which clients retry, with the lock's text; it
        was INTERNAL ("a bug"), and nothing retried it (found by a client
        written from the documents alone). It is refused after one wait:
        on SQLite the audit trail's anchor, written in the background, waited
        out the busy timeout first with the store's connection, and the
        change then waited its own (9.5 s for a 5 s bound; found in this
        project), and two changes queued for the store's connection waited
        one after the other; the text names the file and the wait."""
        d = CofferDaemon()
        # PostgreSQL's lock_timeout: 2/3 of it. SQLite waits its own busy
        # timeout (5 s) instead.
        d.config.setdefault("state", {})["wait_ms"] = "1500"
        self.addCleanup(d.cleanup)
        d.start()
        release = hold_principals(d)
        got, took = [None, None], [0.0, 0.0]

        def grant(i):
            t0 = time.monotonic()
            # With an idempotency key, as cofferctl sends: its record, written
            # first, took the tally of the wait with it (2.0 s on PostgreSQL
            # for a 1 s bound; found from outside).
            got[i] = self._grant(d, "held-grant-%d" % i)
            took[i] = time.monotonic() - t0
        try:
            both = [threading.Thread(target=grant, args=(i,)) for i in range(2)]
            for t in both:
                t.start()
            for t in both:
                t.join()
        finally:
            release()
        for e in got:
            self.assertIsInstance(e, grpc.RpcError)
            self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
            if d.pg_db is not None:
                self.assertIn("state store: ", e.details())
                self.assertIn(": waited 1000 ms for a lock another PostgreSQL session holds (an "
                              "operator's transaction, a VACUUM FULL...): canceling statement "
                              "due to lock timeout", e.details())
            else:
                self.assertEqual(e.details(), "state store: starting a transaction: database "
                                 "is locked: another process holds the write lock of %s; "
                                 "waited 5000 ms for it (an sqlite3 shell, a backup, cofferctl "
                                 "on the state directory?)"
                                 % os.path.join(d.state_dir, "coffer.db"))
        # One bound each (1 s on PostgreSQL, 5 s on SQLite), not one after
        # another: before, 2.0 s and 9.5-10 s for the second.
        self.assertLess(max(took), 1.7 if d.pg_db is not None else 6.0, took)
        self.assertEqual(self._grant(d), "OK")

    def test_postgresql_lock_held_elsewhere_is_no_dead_server(self):
        """On PostgreSQL a statement waits for a lock another session holds
        at most lock_timeout (2/3 of [state] wait_ms), then the change is
        refused with its text and the server is not taken for hung. Before,
        the wait ran into the statement's bound: "PostgreSQL did not answer",
        health NOT_SERVING and signed calls refused (found by a review)."""
        d = self._pg_daemon()
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name="w-ec", type=pb.EC_P256), timeout=T)
        release = hold_principals(d)
        try:
            # The replica's own reload of the principals (a notification)
            # meets the same lock, fails and is tried again: the grant
            # waits for none of its tries. Before, the reloads took the
            # store's connection again before the waiting grant woke:
            # 5.3-7.4 s here (found by CI: 5.7 s).
            reload_on_held_table(d)
            t0 = time.monotonic()
            got = self._grant(d)
            took = time.monotonic() - t0
            health = health_check(d.service_socket)
            d.service_stub().Sign(pb.SignRequest(key="w-ec", message=b"x"), timeout=T)
        finally:
            release()
        self.assertIsInstance(got, grpc.RpcError)
        self.assertEqual(got.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("waited 2000 ms for a lock another PostgreSQL session holds (an "
                      "operator's transaction, a VACUUM FULL...): canceling statement due to "
                      "lock timeout", got.details())
        # The grant's own wait (2 s), and at most a reload's short one: before,
        # more waits (reloads that came first again), or, earlier, a dead
        # server (two statements given up).
        self.assertLess(took, 3.0)
        self.assertEqual(health, 1)     # SERVING

    def test_postgresql_reloads_on_a_held_table_hold_up_no_other_change(self):
        """The replica's reloads of a table another session holds wait
        SQLDB_YIELD_LOCK_MS (100 ms) for it, not the changes' lock_timeout,
        and are tried again a second later: the store has one connection,
        and before, every key created while an operator held the principals'
        table queued behind reloads that each waited 2 s (2.0-5.7 s per
        CreateKey, found while fixing the test above)."""
        d = self._pg_daemon()
        adm = d.admin_stub()
        release = hold_principals(d)
        try:
            reload_on_held_table(d)
            took = []
            for i in range(3):
                t0 = time.monotonic()
                adm.CreateKey(pb.CreateKeyRequest(name="w-%d" % i, type=pb.EC_P256), timeout=T)
                took.append(time.monotonic() - t0)
            time.sleep(1.5)   # more tries of the reload, while the table is held
        finally:
            release()
        self.assertLess(max(took), 1.0, "CreateKey took %s s" % ["%.2f" % t for t in took])
        # The reload's failure says what it met, once, and the replica
        # reloads by itself once the table is free.
        self.assertEqual(self._grant(d), "OK")
        # Tried again while the table was held (about 1.9 s), a second apart:
        # before, one try every 0.3 s (and each of them warned).
        self._assert_reload_failed_once(d)

    def test_postgresql_own_changes_reload_nothing(self):
        """A change this replica made is installed as it commits: its own
        notification reloads nothing. Before, it found the change still
        holding its mutex (busy) and became a reload of keys, principals and
        API keys (found by a review: 10 CreateKeys, 9 reloads of every key,
        18 of the principals, 19 of the API keys); here that reload met the
        held principals' table and warned."""
        d = self._pg_daemon()
        adm = d.admin_stub()
        release = hold_principals(d)
        try:
            for i in range(4):
                adm.CreateKey(pb.CreateKeyRequest(name="own-%d" % i, type=pb.EC_P256), timeout=T)
            time.sleep(1.5)
        finally:
            release()
        log = d.log()
        self.assertNotIn("fleet: reloading the registry", log)
        self.assertNotIn("re-reading", log)

    def test_postgresql_a_failed_reload_is_not_hidden_by_a_change_in_progress(self):
        """A reload that fails (the principals' table held) while a key change
        of this replica waits for the fleet's lock (an operator holds it) is
        tried again a second later and says why, once. Before, the busy keys
        hid the principals' failure: no warning, and a try every pass."""
        d = self._pg_daemon()
        adm = d.admin_stub()
        unlock = psql_holding(d, "SELECT pg_advisory_lock(1131374182, 1);")
        made = []
        creating = threading.Thread(target=lambda: made.append(adm.CreateKey(
            pb.CreateKeyRequest(name="waits", type=pb.EC_P256), timeout=T)))
        try:
            time.sleep(0.3)
            creating.start()
            time.sleep(0.3)             # the change waits for the lock, its mutex held
            release = hold_principals(d)
            try:
                reload_on_held_table(d)
                time.sleep(2.0)
            finally:
                release()
        finally:
            unlock()
            creating.join(timeout=T)
        self.assertEqual(len(made), 1)
        self._assert_reload_failed_once(d)

    def test_postgresql_a_held_nonce_table_refuses_signed_calls_in_time(self):
        """Signed calls while another session holds the nonce table: each is
        refused UNAVAILABLE within the claim's bound ([audit] max_wait_ms,
        2 s) with the lock's text, health stays SERVING (a lock is no server
        that hangs), and the first call after the release passes at once.
        Before: "did not answer the claim in 2000 ms (a server that hangs)",
        then a call that waited 7-10 s behind the lock (the reconnection's
        CREATE INDEX IF NOT EXISTS; found by a client written from the
        documents alone)."""
        d = self._pg_daemon()
        k = d.sealed_stub(kind="admin", service="AdminService").CreateApiKey(
            pb.CreateApiKeyRequest(principal="tester"), timeout=T)
        stub = d.service_stub()
        req = pb.ListKeysRequest()

        def signed():
            t0 = time.monotonic()
            try:
                stub.ListKeys(req, metadata=authz(k.key.id, k.secret, "ListKeys", req),
                              timeout=T)
                return "OK", time.monotonic() - t0
            except grpc.RpcError as e:
                return e, time.monotonic() - t0

        self.assertEqual(signed()[0], "OK")
        release = psql_holding(d, "BEGIN; LOCK TABLE coffer_nonces IN ACCESS EXCLUSIVE MODE;")
        try:
            time.sleep(0.5)
            refused = [signed() for _ in range(3)]
            health = health_check(d.service_socket)
        finally:
            release()
        for got, took in refused:
            self.assertIsInstance(got, grpc.RpcError)
            self.assertEqual(got.code(), grpc.StatusCode.UNAVAILABLE, got.details())
            self.assertEqual(got.details(), "nonce record: waited 1333 ms for a lock another "
                             "PostgreSQL session holds (an operator's transaction, a VACUUM "
                             "FULL...): canceling statement due to lock timeout")
            self.assertLess(took, 2.0)
        self.assertEqual(health, 1)     # SERVING
        got, took = signed()
        self.assertEqual(got, "OK")
        self.assertLess(took, 1.0)

    def _assert_reload_failed_once(self, d):
        """The replica's reload of the held principals' table warned once,
        with the lock's whole text, was tried 2-4 times (about 2 s, a second
        apart) and succeeded by itself once the table was free."""
        self.assertTrue(d.wait_for_log("fleet: reloaded the registry after ", timeout=10),
                        d.log())
        log = d.log()
        warned = re.findall(r"fleet: reloading the registry: (.*); trying again every 1000 ms",
                            log)
        self.assertEqual(len(warned), 1, log)
        self.assertIn("state store: loading principals: waited 100 ms for a lock another "
                      "PostgreSQL session holds (an operator's transaction, a VACUUM FULL...): "
                      "canceling statement due to lock timeout", warned[0])
        tries = int(re.search(r"reloaded the registry after (\d+) failed tries", log).group(1))
        self.assertGreaterEqual(tries, 2, log)
        self.assertLessEqual(tries, 4, log)

    def _pg_daemon(self):
        """A daemon on PostgreSQL whose statements wait 3 s at most (2 s for
        a lock)."""
        d = CofferDaemon()
        if d.pg_db is None:
            self.skipTest("PostgreSQL backend only (tests/run-on-postgresql.sh)")
        d.config["state"]["wait_ms"] = "3000"
        self.addCleanup(d.cleanup)
        d.start()
        return d

    @staticmethod
    def _grant(d, idem=None):
        try:
            d.admin_stub().GrantPrincipal(pb.GrantRequest(name="tester", grant=pb.Grant(
                key_pattern="w-*", operations=[pb.OP_SIGN])), timeout=T,
                metadata=[("idempotency-key", idem)] if idem else None)
            return "OK"
        except grpc.RpcError as e:
            return e


def reload_on_held_table(d):
    """The replica reloads its principals (the notification another replica's
    change sends) while hold_principals holds their table."""
    subprocess.run(["psql", "-X", "-q", "-h", os.environ["COFFER_TEST_PG_HOST"], "-d", d.pg_db,
                    "-c", "NOTIFY coffer, 'principal tester'"], check=True, timeout=30)
    time.sleep(0.3)


def psql_holding(d, sql):
    """A psql session on the daemon's database that ran `sql` and stays open
    (what it holds with it) until the returned function is called."""
    holder = subprocess.Popen(["psql", "-X", "-q", "-h", os.environ["COFFER_TEST_PG_HOST"],
                               "-d", d.pg_db], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True)
    holder.stdin.write(sql + "\n")
    holder.stdin.flush()

    def release():
        holder.stdin.write("ROLLBACK;\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    return release


def hold_principals(d):
    """Another session holds the principals' table (PostgreSQL) or the whole
    store (SQLite) until the returned function is called."""
    if d.pg_db is not None:
        release = psql_holding(d, "BEGIN; LOCK TABLE principals IN ACCESS EXCLUSIVE MODE;")
    else:
        db = sqlite3.connect(os.path.join(d.state_dir, "coffer.db"), timeout=10,
                             isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")

        def release():
            db.execute("ROLLBACK")
            db.close()
    time.sleep(0.5)                     # the lock is held
    return release


if __name__ == "__main__":
    unittest.main(verbosity=2)
