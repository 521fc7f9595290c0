"""Shared machinery of test_crash_points.py and test_crash_stress.py: a
cofferd that can be started with crash-point environment, kills from
outside at token file events (inotify), the mutating scenarios of issue 13,
and one crash case (crash, restart, retry twice with the idempotency key,
check every invariant with crash_check).

Crash points (cofferd built with COFFER_CRASH_POINTS): `cofferd
--crash-points` lists them; COFFER_CRASH_AT=<name>[@<n>] makes cofferd
_exit(86) at the n-th pass, COFFER_CRASH_MODE=stop makes it SIGSTOP itself
there (we SIGKILL it), COFFER_CRASH_TRACE=<file> appends every point passed.
"""

import concurrent.futures
import ctypes
import errno
import glob
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import grpc  # noqa: E402

import crash_check  # noqa: E402
from daemon_fixture import (CofferDaemon, Ctl, DaemonError, SealedRpcError,  # noqa: E402
                            stubs)

S = stubs()
pb = S.pb
SC = grpc.StatusCode
T = 30                       # seconds per call
CRASH_EXIT = 86

# Short grace and rotation periods so that the daemon's own mutations
# (destruction by the sweeper, scheduled rotation) happen within a test.
# Seconds from the set-up of a daemon's own mutation to its due time: the
# daemon must stop before (a sanitizer build stops slower).
DUE = 2

CONFIG = {"keys": {"min_destroy_grace": 1, "min_rotation_period": 1},
          "daemon": {"log_level": "info"}}


def sanitizer_build():
    cache = os.path.join(crash_check.build_dir(), "CMakeCache.txt")
    try:
        with open(cache) as f:
            return any(line.startswith("COFFER_SANITIZE:BOOL=ON") for line in f)
    except OSError:
        return False


def quick():
    v = os.environ.get("COFFER_CRASH_QUICK")
    if v is not None:
        return v not in ("", "0")
    return sanitizer_build()


if sanitizer_build():
    DUE = 4


def crash_points(cofferd=None):
    """The registered crash points, or None if this cofferd has none
    (built without COFFER_CRASH_POINTS, or before they existed)."""
    from daemon_fixture import cofferd_path
    try:
        r = subprocess.run([cofferd or cofferd_path(), "--crash-points"], capture_output=True,
                           text=True, timeout=30)
    except OSError:
        return None
    if r.returncode != 0:
        return None
    pts = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    return pts or None


def meta(idem_key, rid):
    m = [("x-request-id", rid)]
    if idem_key:
        m.append(("idempotency-key", idem_key))
    return m


# ---- the daemon ----

class CrashDaemon(CofferDaemon):
    """A CofferDaemon whose next start gets extra environment (crash_env)."""

    def __init__(self, config=None, **kw):
        cfg = {s: dict(v) for s, v in CONFIG.items()}
        for s, v in (config or {}).items():
            cfg.setdefault(s, {}).update(v)
        super().__init__(config=cfg, **kw)
        self.crash_env = {}
        self.ctl = None
        self._sealed = self._admin = self._service = None

    def spawn(self, cmd=None, **kw):
        with open(self.log_path, "ab") as log:
            log.write(("--- cofferd start %d %s---\n" % (
                self.starts + 1, "".join("%s=%s " % kv for kv in sorted(self.crash_env.items()))
            )).encode())
            log.flush()
            return subprocess.Popen(cmd or self.command(), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(self.env, **self.crash_env), **kw)

    def try_start(self):
        """start(); False if cofferd died or stopped itself before it was ready."""
        try:
            self.start()
            return True
        except DaemonError:
            if self.proc is not None and self.proc.poll() is None and self.state() != "T":
                raise
            return False

    def start(self, timeout=None):
        self.close_channels()
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError("already running")
        self._log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.proc = self.spawn()
        self.starts += 1
        try:
            self.wait_ready_or_stopped(timeout or 20)
        except DaemonError:
            raise
        if self.identity is None:
            self.identity = self.fetch_identity()
        if self.grant_all:
            self.ensure_principal()
            self.grant_all = False       # kept in the store; a grant is a mutation
        if self.ctl is None:
            self.ctl = Ctl(self)
        return self

    def wait_ready_or_stopped(self, timeout):
        # The fixture's wait_ready, but a process that stopped itself at a
        # crash point is not waited for.
        deadline = time.monotonic() + timeout
        from daemon_fixture import health_check
        pending = [self.service_socket, self.admin_socket]
        while pending:
            if self.proc.poll() is not None:
                raise DaemonError("cofferd exited with status %d before it was ready; log:\n%s"
                                  % (self.proc.returncode, self.log(all_starts=False)[-3000:]))
            if self.state() == "T":
                raise DaemonError("cofferd stopped itself before it was ready")
            if time.monotonic() > deadline:
                raise DaemonError("cofferd not ready after %s s; log:\n%s"
                                  % (timeout, self.log(all_starts=False)))
            p = pending[0]
            if os.path.exists(p):
                try:
                    if health_check(p, timeout=1.0) == 1:
                        pending.pop(0)
                        continue
                except grpc.RpcError:
                    pass
            time.sleep(0.01)

    def state(self):
        """The process state letter (R, S, T, Z, ...) or None. "T" only once
        every thread has stopped: the main thread stops first, and a thread
        still inside a write() when the SIGKILL comes can leave it half done
        (the kernel checks for a fatal signal between pages), a torn record
        the stop at a crash point never makes."""
        if self.proc is None:
            return None
        pid = self.proc.pid
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read().rsplit(")", 1)[1].split()[0]
            if st != "T":
                return st
            for tid in os.listdir("/proc/%d/task" % pid):
                with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                        return "R"
            return st
        except (OSError, IndexError):
            return None

    def kill9(self):
        self.close_channels()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def admin_stub(self, options=None):
        """One admin stub per start (the fixture makes a channel per call)."""
        if options is not None:
            return super().admin_stub(options)
        if self._admin is None:
            self._admin = super().admin_stub()
        return self._admin

    def service_stub(self, options=None):
        if options is not None:
            return super().service_stub(options)
        if self._service is None:
            self._service = super().service_stub()
        return self._service

    def close_channels(self):
        self._admin = self._service = self._sealed = None
        super().close_channels()

    def sealed_admin(self):
        if self._sealed is None:
            self._sealed = self.sealed_stub("admin", "AdminService")
        return self._sealed

    def check(self, expect=(), intents_empty=True, notes=None):
        return crash_check.check_daemon(self, self.ctl, expect=expect,
                                        intents_empty=intents_empty, notes=notes)

    def objects(self):
        return crash_check.daemon_objects(self)

    def token_object_dir(self):
        dirs = [p for p in glob.glob(os.path.join(self.token_dir, "tokens", "*"))
                if os.path.isdir(p)]
        if len(dirs) != 1:
            raise DaemonError("expected one SoftHSM token directory, found %s" % dirs)
        return dirs[0]


# ---- kills from outside at file events ----

IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_DELETE = 0x200
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class FileWatch:
    """Counts, with inotify, during a call: new *.object files of the token
    closed after writing (first close of each), *.object files deleted, and
    writes to coffer.db-wal; kills `pid` with SIGKILL the moment the n-th
    event of kind `kill_kind` ("new", "del", "wal") happens."""

    def __init__(self, token_dir, state_dir, pid=None, kill_kind=None, kill_n=0):
        self.token_dir, self.state_dir = token_dir, state_dir
        self.pid, self.kill_kind, self.kill_n = pid, kill_kind, kill_n
        self.counts = {"new": 0, "del": 0, "wal": 0}
        self.killed = False
        self.before = set(os.listdir(token_dir))
        self.seen = set()
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for path, mask in ((token_dir, IN_CLOSE_WRITE | IN_DELETE), (state_dir, IN_MODIFY)):
            if _libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch " + path)
        self.wd_token = 1
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _event(self, wd, mask, name):
        kind = None
        if name.endswith(".object") and name != "token.object" and wd == 1:
            if mask & IN_DELETE:
                kind = "del"
            elif mask & IN_CLOSE_WRITE and name not in self.before and name not in self.seen:
                self.seen.add(name)
                kind = "new"
        elif wd == 2 and name == "coffer.db-wal" and mask & IN_MODIFY:
            kind = "wal"
        if kind is None:
            return
        self.counts[kind] += 1
        if (kind == self.kill_kind and self.counts[kind] == self.kill_n and self.pid
                and not self.killed):
            try:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
            except ProcessLookupError:
                pass

    def _run(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.01)
            if not r:
                continue
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            off = 0
            while off + 16 <= len(buf):
                wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + ln].split(b"\0", 1)[0].decode(errors="replace")
                off += 16 + ln
                self._event(wd, mask, name)

    def stop(self):
        time.sleep(0.02)
        self._stop.set()
        self.thread.join()
        os.close(self.fd)
        return self.counts


# ---- scenarios ----

def versions(adm, name):
    return [(v.version, v.state) for v in adm.GetKey(pb.GetKeyRequest(name=name),
                                                       timeout=T).versions]


class Scenario:
    """One mutating RPC. setup(d, i) prepares subject i in a normal run (last
    thing before the daemon stops); call(d, i, md) issues the mutation (md:
    metadata with idempotency key and request id); expect(i, rids): the
    crash_check.Expect of the change; verify(d, i): scenario-specific effect
    problems. background scenarios have no call: the daemon acts by itself
    (settle(d, i) waits for it after the restart)."""
    name = "?"
    background = False
    sealed = False
    method = None
    idempotent = True        # a retry answers like the first call

    def setup(self, d, i):
        pass

    def after_stop(self, d, i):
        """Called with the daemon stopped, after setup(d, i)."""
        pass

    def call(self, d, i, md):
        raise NotImplementedError

    def key(self, i):
        return None

    def version(self, i):
        return None

    def expect(self, i, rids):
        return [crash_check.Expect(self.method, self.key(i), self.version(i), rids)]

    def verify(self, d, i):
        return []

    def settle(self, d, i):
        pass


def sealed_call(d, method, req, md):
    s = d.sealed_admin()
    sess = s.open()
    path = "/coffer.v1.AdminService/" + method
    code, message, resp = sess.call(path, req.SerializeToString(), timeout=T, metadata=md)
    if code != 0:
        raise SealedRpcError(path, code, message)
    out = {"ImportKey": pb.Key, "CreateApiKey": pb.ApiKeySecretResponse,
           "RotateApiKeySecret": pb.ApiKeySecretResponse}[method]
    return out.FromString(resp)


class CreateKey(Scenario):
    method = "CreateKey"

    def __init__(self, typ=pb.EC_P256, tag="ec"):
        self.typ, self.name = typ, "CreateKey-" + tag
        self.tag = tag

    def key(self, i):
        return "ck-%s-%d" % (self.tag, i)

    def version(self, i):
        return 1

    def call(self, d, i, md):
        return d.admin_stub().CreateKey(pb.CreateKeyRequest(name=self.key(i), type=self.typ),
                                        timeout=T, metadata=md)

    def verify(self, d, i):
        v = versions(d.admin_stub(), self.key(i))
        return [] if v == [(1, pb.ENABLED)] else ["%s: versions %s, expected [v1 enabled]"
                                                 % (self.key(i), v)]


class ImportKey(Scenario):
    name = method = "ImportKey"
    sealed = True

    def key(self, i):
        return "ik-%d" % i

    def version(self, i):
        return 1

    def call(self, d, i, md):
        return sealed_call(d, "ImportKey", pb.ImportKeyRequest(
            name=self.key(i), type=pb.HMAC_SHA256, material=bytes([i % 256]) * 32), md)

    def verify(self, d, i):
        v = versions(d.admin_stub(), self.key(i))
        return [] if v == [(1, pb.ENABLED)] else ["%s: versions %s" % (self.key(i), v)]


class RotateKey(Scenario):
    method = "RotateKey"

    def __init__(self, typ=pb.EC_P256, tag="ec"):
        self.typ, self.tag, self.name = typ, tag, "RotateKey-" + tag

    def key(self, i):
        return "rk-%s-%d" % (self.tag, i)

    def version(self, i):
        return 2

    def setup(self, d, i):
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name=self.key(i), type=self.typ), timeout=T)

    def call(self, d, i, md):
        return d.admin_stub().RotateKey(pb.RotateKeyRequest(name=self.key(i)), timeout=T,
                                        metadata=md)

    def verify(self, d, i):
        v = versions(d.admin_stub(), self.key(i))
        out = [] if [x[0] for x in v] == [1, 2] else [
            "%s: versions %s after one rotation (expected 1, 2)" % (self.key(i), v)]
        if self.typ in (pb.EC_P256, pb.RSA_2048):
            try:
                d.service_stub().Sign(pb.SignRequest(key=self.key(i), message=b"m"), timeout=T)
            except grpc.RpcError as e:
                out.append("%s: Sign after the rotation: %s %s" % (self.key(i), e.code(),
                                                                   e.details()))
        return out


class VersionChange(Scenario):
    """A KeyVersionRequest method on version 1 of a key with versions 1, 2
    (2 primary), after `pre` (a list of (method, kwargs))."""

    def __init__(self, method, pre=(), want_state=None, **kw):
        self.name = self.method = method
        self.pre, self.kw, self.want_state = pre, kw, want_state

    def key(self, i):
        return "lc-%s-%d" % (self.method.lower(), i)

    def version(self, i):
        return 1

    def setup(self, d, i):
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name=self.key(i), type=pb.EC_P256), timeout=T)
        a.RotateKey(pb.RotateKeyRequest(name=self.key(i)), timeout=T)
        for m, kw in self.pre:
            getattr(a, m)(pb.KeyVersionRequest(name=self.key(i), version=1, **kw), timeout=T)

    def call(self, d, i, md):
        return getattr(d.admin_stub(), self.method)(
            pb.KeyVersionRequest(name=self.key(i), version=1, **self.kw), timeout=T, metadata=md)

    def verify(self, d, i):
        if self.want_state is None:
            return []
        v = dict(versions(d.admin_stub(), self.key(i)))
        return [] if v.get(1) == self.want_state else [
            "%s: version 1 is %s, expected %s" % (self.key(i), v.get(1), self.want_state)]


class KeyChange(Scenario):
    """SetKeyMinimums / TrimKey / SetRotationSchedule on a key with versions 1, 2."""

    def __init__(self, method, req, pre=None):
        self.name = self.method = method
        self.req, self.pre = req, pre

    def key(self, i):
        return "kc-%s-%d" % (self.method.lower(), i)

    def setup(self, d, i):
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name=self.key(i), type=pb.HMAC_SHA256), timeout=T)
        a.RotateKey(pb.RotateKeyRequest(name=self.key(i)), timeout=T)
        if self.pre:
            self.pre(a, self.key(i))

    def call(self, d, i, md):
        return getattr(d.admin_stub(), self.method)(self.req(self.key(i)), timeout=T,
                                                    metadata=md)


class SweeperDestroy(Scenario):
    """Destruction by the sweeper: version 1 scheduled with a 2 s grace as the
    last thing before the daemon stops; it is due in the crash run."""
    name = "SweeperDestroy"
    method = "DestroyKeyVersion"
    background = True

    def __init__(self, typ=pb.EC_P256, tag="ec"):
        self.typ, self.tag = typ, tag
        self.name = "SweeperDestroy-" + tag

    def key(self, i):
        return "sw-%s-%d" % (self.tag, i)

    def setup(self, d, i):
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name=self.key(i), type=self.typ), timeout=T)
        a.RotateKey(pb.RotateKeyRequest(name=self.key(i)), timeout=T)
        a.ScheduleDestroyKeyVersion(pb.KeyVersionRequest(name=self.key(i), version=1,
                                                         grace_seconds=DUE), timeout=T)

    def expect(self, i, rids):
        return []

    def settle(self, d, i):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if dict(versions(d.admin_stub(), self.key(i))).get(1) == pb.DESTROYED:
                time.sleep(0.1)
                return
            time.sleep(0.1)

    def verify(self, d, i):
        v = dict(versions(d.admin_stub(), self.key(i)))
        return [] if v.get(1) == pb.DESTROYED else [
            "%s: version 1 is %s 10 s after it was due, not destroyed" % (self.key(i), v.get(1))]


class ScheduledRotation(Scenario):
    """A rotation the daemon makes itself: period 1 h, next due 2 s after the
    setup (the last thing before the daemon stops)."""
    name = "ScheduledRotation"
    method = "ScheduledRotation"
    background = True

    def key(self, i):
        return "sr-%d" % i

    def setup(self, d, i):
        a = d.admin_stub()
        a.CreateKey(pb.CreateKeyRequest(name=self.key(i), type=pb.EC_P256), timeout=T)
        a.SetRotationSchedule(pb.SetRotationScheduleRequest(
            name=self.key(i), period_seconds=3600, next_rotation_time=int(time.time()) + DUE),
            timeout=T)

    def expect(self, i, rids):
        return []

    def settle(self, d, i):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len(versions(d.admin_stub(), self.key(i))) >= 2:
                time.sleep(0.3)
                return
            time.sleep(0.1)

    def verify(self, d, i):
        v = [x[0] for x in versions(d.admin_stub(), self.key(i))]
        return [] if v == [1, 2] else ["%s: versions %s after one due rotation (expected 1, 2)"
                                       % (self.key(i), v)]


class PrincipalChange(Scenario):
    def __init__(self, method, req, pre=()):
        self.name = self.method = method
        self.req, self.pre = req, pre

    def key(self, i):
        return "p-%s-%d" % (self.method.lower(), i)

    def setup(self, d, i):
        a = d.admin_stub()
        for p in self.pre:
            p(a, self.key(i), i)

    def call(self, d, i, md):
        return getattr(d.admin_stub(), self.method)(self.req(self.key(i), i), timeout=T,
                                                    metadata=md)


def _mk_principal(a, name, i):
    a.CreatePrincipal(pb.CreatePrincipalRequest(name=name, uids=[30000 + i]), timeout=T)


def _grant(a, name, i):
    a.GrantPrincipal(pb.GrantRequest(name=name, grant=pb.Grant(key_pattern="k-*",
                                                               operations=[1, 2])), timeout=T)


class ApiKeyScenario(Scenario):
    sealed = True

    def __init__(self, method):
        self.name = self.method = method
        self._ids = {}           # subject -> API key id (per scenario: they run at once)

    def principal(self, i):
        return "ak-%s-%d" % (self.method.lower(), i)

    def key(self, i):
        return self.principal(i) if self.method == "CreateApiKey" else self._ids.get(i)

    def setup(self, d, i):
        d.admin_stub().CreatePrincipal(pb.CreatePrincipalRequest(
            name=self.principal(i), uids=[40000 + i]), timeout=T)
        if self.method != "CreateApiKey":
            r = sealed_call(d, "CreateApiKey", pb.CreateApiKeyRequest(principal=self.principal(i)),
                            None)
            self._ids[i] = r.key.id

    def call(self, d, i, md):
        if self.method == "CreateApiKey":
            return sealed_call(d, "CreateApiKey",
                               pb.CreateApiKeyRequest(principal=self.principal(i)), md)
        if self.method == "RotateApiKeySecret":
            return sealed_call(d, "RotateApiKeySecret",
                               pb.RotateApiKeySecretRequest(id=self._ids[i], overlap_seconds=0),
                               md)
        return d.admin_stub().RevokeApiKey(pb.RevokeApiKeyRequest(id=self._ids[i]), timeout=T,
                                           metadata=md)

    def expect(self, i, rids):
        # CreateApiKey names the principal today (the id is not known before
        # the answer): any key, one committed record among the request ids.
        return [crash_check.Expect(self.method, None if self.method == "CreateApiKey"
                                   else self.key(i), None, rids)]

    def verify(self, d, i):
        keys = d.admin_stub().ListApiKeys(pb.ListApiKeysRequest(principal=self.principal(i)),
                                          timeout=T).keys
        if len(keys) != 1:
            return ["principal %s has %d API keys after one %s" % (self.principal(i), len(keys),
                                                                    self.method)]
        k = keys[0]
        gens = sorted(s.generation for s in k.secrets)
        if self.method == "CreateApiKey" and gens != [1]:
            return ["API key %s: secret generations %s, expected [1]" % (k.id, gens)]
        if self.method == "RotateApiKeySecret" and gens != [2]:
            return ["API key %s: live secret generations %s after one rotation with no "
                    "overlap, expected [2]" % (k.id, gens)]
        if self.method == "RevokeApiKey" and (k.revoke_time == 0 or gens):
            return ["API key %s: revoke_time %d, live secrets %s after revocation"
                    % (k.id, k.revoke_time, gens)]
        return []


class VerifyRequestSignature(Scenario):
    """A signed HTTP request verified: its nonce is recorded durably (the
    nonce log). Not idempotent by design: after a crash the retry is VALID
    (nothing recorded) or REPLAYED_NONCE (recorded before the crash); after
    the retries it must be REPLAYED_NONCE."""
    name = "VerifyRequestSignature"
    idempotent = False

    def __init__(self):
        self._signed = {}

    def key(self, i):
        return "nv-%d" % i

    def setup(self, d, i):
        d.admin_stub().CreateKey(pb.CreateKeyRequest(name=self.key(i), type=pb.HMAC_SHA256),
                                 timeout=T)
        parts = pb.HttpRequestParts(key=self.key(i), method="POST", path="/v1/orders",
                                    body_sha256=bytes(32))
        s = d.service_stub().SignHttpRequest(pb.SignHttpRequestRequest(request=parts),
                                             timeout=T)
        parts.timestamp, parts.nonce = s.timestamp, s.nonce
        self._signed[i] = (parts, s.signature)

    def call(self, d, i, md):
        parts, sig = self._signed[i]
        return d.service_stub().VerifyRequestSignature(
            pb.VerifyRequestSignatureRequest(request=parts, signature=sig), timeout=T,
            metadata=[m for m in md if m[0] != "idempotency-key"])

    def expect(self, i, rids):
        return []

    def verify(self, d, i):
        r = self.call(d, i, [])
        return [] if r.verdict == pb.REPLAYED_NONCE else [
            "%s: the nonce verified again after the retries: %s (expected REPLAYED_NONCE)"
            % (self.key(i), pb.RequestVerdict.Name(r.verdict))]


class NonceCompaction(Scenario):
    """The nonce log compacted by the expiry sweep (every 5 s): 70,000 expired
    records appended to nonces.log while the daemon is stopped."""
    name = "NonceCompaction"
    background = True
    DEAD = 70000

    def after_stop(self, d, i):
        path = os.path.join(d.state_dir, "nonces.log")
        rnd = random.Random(i)
        with open(path, "ab") as f:
            if f.tell() == 0:
                f.write(b"COFNONC1" + bytes(8))
            f.write(b"".join(rnd.randbytes(16) + struct.pack("<q", 1000 + n)
                             for n in range(self.DEAD)))

    def expect(self, i, rids):
        return []

    def settle(self, d, i):
        path = os.path.join(d.state_dir, "nonces.log")
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and os.path.getsize(path) > 24 * self.DEAD:
            time.sleep(0.1)

    def verify(self, d, i):
        size = os.path.getsize(os.path.join(d.state_dir, "nonces.log"))
        return [] if size < 24 * self.DEAD else [
            "nonces.log still %d bytes 12 s after start: not compacted" % size]


def scenarios():
    """Every mutating RPC of issue 13, and the daemon's own mutations."""
    def mins(**kw):
        return lambda name: pb.SetKeyMinimumsRequest(name=name, **kw)

    def pre_min(a, name):
        a.SetKeyMinimums(pb.SetKeyMinimumsRequest(name=name, min_version=2, min_verify_version=2),
                         timeout=T)
    return [
        CreateKey(pb.EC_P256, "ec"),
        CreateKey(pb.HMAC_SHA256, "hmac"),
        ImportKey(),
        RotateKey(pb.EC_P256, "ec"),
        RotateKey(pb.AES_256, "aes"),
        VersionChange("SetPrimaryVersion", want_state=pb.ENABLED),
        VersionChange("EnableKeyVersion", pre=[("DisableKeyVersion", {})],
                      want_state=pb.ENABLED),
        VersionChange("DisableKeyVersion", want_state=pb.DISABLED),
        VersionChange("ScheduleDestroyKeyVersion", grace_seconds=3600,
                      want_state=pb.DESTROY_SCHEDULED),
        VersionChange("CancelDestroyKeyVersion",
                      pre=[("ScheduleDestroyKeyVersion", {"grace_seconds": 3600})],
                      want_state=pb.ENABLED),
        KeyChange("SetKeyMinimums", mins(min_version=2)),
        KeyChange("TrimKey", lambda name: pb.TrimKeyRequest(name=name, grace_seconds=3600),
                  pre=pre_min),
        KeyChange("SetRotationSchedule",
                  lambda name: pb.SetRotationScheduleRequest(name=name, period_seconds=7200)),
        SweeperDestroy(pb.EC_P256, "ec"),
        SweeperDestroy(pb.HMAC_SHA256, "hmac"),
        ScheduledRotation(),
        PrincipalChange("CreatePrincipal", lambda n, i: pb.CreatePrincipalRequest(
            name=n, uids=[50000 + i])),
        PrincipalChange("GrantPrincipal", lambda n, i: pb.GrantRequest(
            name=n, grant=pb.Grant(key_pattern="k-*", operations=[1, 2])),
            pre=[_mk_principal]),
        PrincipalChange("RevokePrincipal", lambda n, i: pb.RevokeRequest(
            name=n, key_pattern="k-*", operations=[1]), pre=[_mk_principal, _grant]),
        PrincipalChange("SetRateLimit", lambda n, i: pb.SetRateLimitRequest(
            name=n, limit=pb.RateLimit(per_second=5, burst=10)), pre=[_mk_principal]),
        PrincipalChange("DeletePrincipal", lambda n, i: pb.DeletePrincipalRequest(name=n),
                        pre=[_mk_principal]),
        PrincipalChange("SetPrincipalAuth", lambda n, i: pb.SetPrincipalAuthRequest(
            name=n, require_api_key=True), pre=[_mk_principal]),
        ApiKeyScenario("CreateApiKey"),
        ApiKeyScenario("RotateApiKeySecret"),
        ApiKeyScenario("RevokeApiKey"),
        VerifyRequestSignature(),
        NonceCompaction(),
    ]


# ---- one crash case ----

def normalize(resp):
    """A response as bytes, without a secret (never repeated by design)."""
    if resp is None:
        return None
    c = type(resp)()
    c.CopyFrom(resp)
    if hasattr(c, "secret"):
        c.secret = b""
    return c.SerializeToString()


class Case:
    def __init__(self, sc, i, trigger, mode="exit", restart_trigger=None):
        self.sc, self.i, self.trigger, self.mode = sc, i, trigger, mode
        self.restart_trigger = restart_trigger
        self.outcome = None          # "exit:86", "sigkill", "sigkill-at-stop", "startup",
        self.restart_outcome = None  # "not reached", "crashed at shutdown"
        self.restart_points = []
        self.notes = []
        self.log = ""
        self.problems = []
        self.counts = None
        self.trace = None            # (start lines, call lines) of a trace run

    def label(self):
        t = self.trigger
        s = "%s#%d " % (self.sc.name, self.i)
        if t is None:
            s += "no crash"
        elif t[0] == "point":
            s += "%s@%d (%s)" % (t[1], t[2], self.mode)
        else:
            s += "%s event %d (SIGKILL)" % (t[1], t[2])
        if self.restart_trigger:
            s += " then %s@%d at the restart" % self.restart_trigger[1:]
        return s


_pool = concurrent.futures.ThreadPoolExecutor(8)


def _crash_env(trigger, mode):
    if trigger is None or trigger[0] != "point":
        return {}
    env = {"COFFER_CRASH_AT": "%s@%d" % (trigger[1], trigger[2])}
    if mode == "stop":
        env["COFFER_CRASH_MODE"] = "stop"
    return env


def _read_trace(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _await_crash(d, fut, grace):
    """Wait until cofferd exits or stops itself; returns "exit:<rc>",
    "stopped", or None (still serving `grace` s after the call ended)."""
    deadline = None
    limit = time.monotonic() + T + 15
    while time.monotonic() < limit:
        rc = d.proc.poll()
        if rc is not None:
            return "exit:%d" % rc
        if d.state() == "T":
            return "stopped"
        if fut.done():
            if deadline is None:
                deadline = time.monotonic() + grace
            elif time.monotonic() > deadline:
                return None
        time.sleep(0.003)
    return None


def _end(d):
    """SIGTERM; a stop or crash on the way out is reported as such."""
    d.close_channels()
    if d.proc.poll() is None:
        d.send_signal(signal.SIGTERM)
    end = time.monotonic() + 30
    while d.proc.poll() is None and d.state() != "T" and time.monotonic() < end:
        time.sleep(0.005)
    crashed = d.proc.poll() == CRASH_EXIT or d.state() == "T"
    d.kill9()
    return crashed


def run_case(d, case, next_setup=None, trace_file=None):
    """Run one case on daemon d (stopped; case.sc set up for case.i).
    Crash run, restart, retries, checks; then next_setup() and stop."""
    sc, i = case.sc, case.i
    rid = "%s-%d-%d" % (sc.name.lower(), i, random.randrange(1 << 30))
    rids = [rid + "-a0", rid + "-a1", rid + "-a2"]
    idem = "idem-" + rid

    def do(r):
        if sc.background:
            return sc.settle(d, i)
        return sc.call(d, i, meta(idem, r))

    env = _crash_env(case.trigger, case.mode)
    if trace_file:
        env["COFFER_CRASH_TRACE"] = trace_file
    d.crash_env = env
    first = None
    start_lines = 0
    if not d.try_start():
        how = "startup"
    else:
        start_lines = len(_read_trace(trace_file)) if trace_file else 0
        kind = case.trigger[1] if case.trigger and case.trigger[0] == "file" else None
        watch = FileWatch(d.token_object_dir(), d.state_dir, pid=d.pid, kill_kind=kind,
                          kill_n=case.trigger[2] if kind else 0)
        fut = _pool.submit(do, rids[0])
        how = _await_crash(d, fut, 0.5)
        case.counts = watch.stop()
        if watch.killed:
            how = "sigkill"
        if how is None:
            try:
                first = fut.result(timeout=T)
            except grpc.RpcError as e:
                case.problems.append("the call (not crashed) failed: %s %s"
                                     % (e.code(), e.details()))
    if trace_file:
        lines = _read_trace(trace_file)
        case.trace = (lines[:start_lines], lines[start_lines:])
    if how == "stopped":
        how = "sigkill-at-stop"
    if how is None:
        case.outcome = "crashed at shutdown" if _end(d) else "not reached"
    else:
        d.kill9()
        rc = d.proc.returncode
        if how.startswith("exit:") and rc != CRASH_EXIT:
            case.problems.append("cofferd exited with status %d in the crash run, expected %d;"
                                 " log:\n%s" % (rc, CRASH_EXIT, d.log(all_starts=False)[-3000:]))
        if how == "startup" and rc not in (CRASH_EXIT, -signal.SIGKILL):
            case.problems.append("cofferd failed to start in the crash run (status %s); log:\n%s"
                                 % (rc, d.log(all_starts=False)[-3000:]))
        case.outcome = how
    d.close_channels()
    # A second crash in the start-up after the first (recovery points).
    if case.restart_trigger is not None:
        d.crash_env = _crash_env(case.restart_trigger, case.mode)
        if d.try_start():
            case.restart_outcome = "crashed at shutdown" if _end(d) else "not reached"
        else:
            case.restart_outcome = "crashed"
            d.kill9()
        d.close_channels()
    # Normal restart (traced: what recovery passes), two retries.
    rtrace = (trace_file + ".restart") if trace_file else None
    d.crash_env = {"COFFER_CRASH_TRACE": rtrace} if rtrace else {}
    try:
        d.start()
    except DaemonError as e:
        case.problems.append("cofferd did not start after the crash: %s" % e)
        d.kill9()
        return case
    case.restart_points = _read_trace(rtrace) if rtrace else []
    answers = []
    for r in rids[1:]:
        try:
            answers.append(do(r))
        except grpc.RpcError as e:
            answers.append(None)
            case.problems.append("retry %s with the same idempotency key failed: %s %s"
                                 % (r, e.code(), e.details()))
    if not sc.background and sc.idempotent:
        a = [normalize(x) for x in answers]
        if a[0] is not None and a[1] is not None and a[0] != a[1]:
            case.problems.append("the two retries with one idempotency key answered "
                                 "differently:\n  %s\n  %s" % (answers[0], answers[1]))
        if first is not None and a[0] is not None and normalize(first) != a[0]:
            case.problems.append("the retry answered differently from the first call:\n"
                                 "  %s\n  %s" % (first, answers[0]))
    try:
        case.problems += sc.verify(d, i)
    except grpc.RpcError as e:
        case.problems.append("verify: %s %s" % (e.code(), e.details()))
    case.problems += d.check(expect=[] if sc.background else sc.expect(i, set(rids)),
                             notes=case.notes)
    case.log = d.log(all_starts=False)
    if next_setup is not None:
        next_setup()
    d.stop(expect=None)
    return case


class ScenarioRunner:
    """One daemon per scenario; subjects numbered from 0, each set up in the
    normal run before its crash run."""

    def __init__(self, sc, workdir_prefix="coffer-crash-"):
        self.sc = sc
        self.d = CrashDaemon()
        self.next = 0
        self.cases = []
        self.known = set()       # violations already reported by an earlier case
        self.d.start()
        self._setup_next()
        self.d.stop(expect=None)
        self._after_stop()
        self.trace_dir = self.d.dir

    def _setup_next(self):
        self.sc.setup(self.d, self.next)
        self.next += 1

    def _after_stop(self):
        self.sc.after_stop(self.d, self.next - 1)

    def run(self, trigger, mode="exit", trace=False, restart_trigger=None):
        case = Case(self.sc, self.next - 1, trigger, mode, restart_trigger)
        tf = None
        if trace:
            tf = os.path.join(self.d.dir, "trace-%d" % case.i)
        try:
            run_case(self.d, case, next_setup=self._setup_next, trace_file=tf)
            self._after_stop()
        except Exception as e:          # keep going: report the case
            case.problems.append("harness: %s: %s" % (type(e).__name__, e))
            try:
                self.d.kill9()
            except Exception:
                pass
            if self.next - 1 == case.i:
                try:
                    self.d.crash_env = {}
                    self.d.start()
                    self._setup_next()
                    self.d.stop(expect=None)
                    self._after_stop()
                except Exception as e2:
                    case.problems.append("harness: could not recover: %s" % e2)
        # Report each standing violation once, at the case that caused it.
        new = [p for p in case.problems if p not in self.known]
        self.known.update(case.problems)
        case.problems = new
        self.cases.append(case)
        return case

    def cleanup(self):
        self.d.cleanup()


def hit_plan(trace, sample):
    """[(point, n)] for every pass of the call (n counted from process
    start); sample: only the first and the last pass of each point."""
    start, call = trace
    from collections import Counter
    sc, cc = Counter(start), Counter(call)
    plan = []
    for p in sorted(cc):
        ks = list(range(1, cc[p] + 1))
        if sample and len(ks) > 2:
            ks = [1, cc[p]]
        plan += [(p, sc[p] + k) for k in ks]
    return plan
