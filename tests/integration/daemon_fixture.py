"""A running cofferd on a throw-away SoftHSM2 token, for Python tests.

    from daemon_fixture import CofferDaemon, stubs

    d = CofferDaemon()             # temp dir + token (deploy/init-token.sh)
    d.start()                      # waits until both sockets answer Health/Check
    pb, pb_grpc = stubs().pb, stubs().pb_grpc
    admin = pb_grpc.AdminServiceStub(d.channel("admin"))
    ...
    d.stop()                       # SIGTERM, asserts exit status 0
    d.start()                      # same token, same state directory
    d.cleanup()                    # stops it if running, removes the temp dir

Calls that carry secrets (Wrap, Unwrap, GenerateDataKey with plaintext,
AdminService/ImportKey) are refused unsealed; send them in a sealed session
(proto/session-protocol.md, tests/integration/coffer_session.py):

    svc = d.sealed_stub("service")   # KeyService methods, sealed
    svc.Wrap(pb.WrapRequest(...))    # -> WrapResponse; inner errors raise
                                     #    SealedRpcError (a grpc.RpcError)

d.identity is the daemon's identity public key (SPKI DER), fetched with
SessionService/GetIdentity right after the first start: the operator's
trust-on-first-use step. It is kept across restarts and pinned by
sealed_stub().

In a unittest.TestCase: `d = CofferDaemon(); self.addCleanup(d.cleanup)`.

Where cofferd is found, first match wins:
  $COFFER_COFFERD (or $COFFER_CFFERD)     the binary itself
  $COFFER_BUILD_DIR/daemon/cofferd        CTest sets COFFER_BUILD_DIR
  <this file>/../build/daemon/cofferd
Other environment: COFFER_SOFTHSM_MODULE (the PKCS#11 module), COFFER_KEEP_TMP=1
(keep temp dirs for a post-mortem), TMPDIR.

The token: SoftHSM2 (deploy/init-token.sh) unless CofferDaemon(token="tpm")
or COFFER_TEST_TOKEN=tpm: then a TPM 2.0 token on swtpm behind tpm2-abrmd
(deploy/init-tpm-token.sh, stopped by cleanup()), whose environment
(TPM2_PKCS11_TCTI, DBUS_SESSION_BUS_ADDRESS, ...) d.env carries. tpm_missing()
says why such a token cannot be made here (None if it can).

The state backend: SQLite (<state_dir>/coffer.db) unless COFFER_TEST_BACKEND=
postgresql, with COFFER_TEST_PG_HOST the socket directory of a running server
(tests/run-on-postgresql.sh sets both). Then every daemon gets [state]
backend = postgresql, dsn = host=<COFFER_TEST_PG_HOST> dbname=<d.pg_db>, where
d.pg_db = pg_dbname(d.state_dir) is created before the first start and dropped
by cleanup(): a daemon restarted on the same state dir finds its state again.
A test that looks at the SQLite file itself checks on_postgresql() and does
the same through psql(), or calls skip_on_postgresql() for that one check.

The Python stubs are generated at run time from proto/ with grpc_tools.protoc
into a temp dir (once per process). grpc/health/v1/health.proto is compiled
from a copy under another directory name, because a generated top-level
"grpc" package would shadow grpcio itself; the wire names (grpc.health.v1.*)
are unchanged.

Only /usr/bin/python3 (Debian's python3-grpcio, python3-grpc-tools) is supported.
"""

import atexit
import functools
import hashlib
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
SRC_DIR = os.path.dirname(os.path.dirname(HERE))
PROTO_DIR = os.path.join(SRC_DIR, "proto")
INIT_TOKEN = os.path.join(SRC_DIR, "deploy", "init-token.sh")
INIT_TPM_TOKEN = os.path.join(SRC_DIR, "deploy", "init-tpm-token.sh")
TPM_PROGRAMS = ("swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_ptool", "tpm2_dictionarylockout",
                "tpm2_getcap")
PYTHON = "/usr/bin/python3"
READY_TIMEOUT = 30.0   # a loaded 2-core machine: reconcile after a kill can take 10 s

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class DaemonError(Exception):
    """cofferd did not start, did not become ready, or exited badly."""


def cofferd_path():
    for var in ("COFFER_COFFERD", "COFFER_CFFERD"):
        if os.environ.get(var):
            return os.environ[var]
    build = os.environ.get("COFFER_BUILD_DIR") or os.path.join(SRC_DIR, "build")
    return os.path.join(build, "daemon", "cofferd")


def softhsm_module():
    if os.environ.get("COFFER_SOFTHSM_MODULE"):
        return os.environ["COFFER_SOFTHSM_MODULE"]
    for p in ("/usr/lib/softhsm/libsofthsm2.so",
              "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
              "/usr/lib64/pkcs11/libsofthsm2.so"):
        if os.path.exists(p):
            return p
    raise DaemonError("libsofthsm2.so not found; set COFFER_SOFTHSM_MODULE")


def tpm_module():
    for p in ("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
              "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
              "/usr/lib/pkcs11/libtpm2_pkcs11.so"):
        if os.path.exists(p):
            return p
    return None


def tpm_missing():
    """Why no swtpm-backed TPM token can be made here, or None."""
    gone = [p for p in TPM_PROGRAMS if shutil.which(p) is None]
    if tpm_module() is None:
        gone.append("libtpm2_pkcs11.so")
    if gone:
        return ("not installed: %s (deploy/install-deps.sh: swtpm swtpm-tools tpm2-tools "
                "tpm2-abrmd libtpm2-pkcs11-1 libtpm2-pkcs11-tools libtss2-tcti-swtpm0 "
                "libtss2-tcti-tabrmd0 dbus)" % ", ".join(gone))
    return None


def tpm_main():
    """The main of a test that needs a TPM token: without one, print why and
    exit 77 (CTest's SKIP_RETURN_CODE for it: shown as skipped), or 1 with
    COFFER_REQUIRE_TPM=1 (CI, where the packages are installed); else run
    its unittest cases."""
    why = tpm_missing()
    if why is not None:
        required = os.environ.get("COFFER_REQUIRE_TPM", "") not in ("", "0")
        print("%s: no TPM token: %s" % ("FAIL (COFFER_REQUIRE_TPM=1)" if required else "SKIP",
                                        why), flush=True)
        sys.exit(1 if required else 77)
    import unittest
    unittest.main(module="__main__", verbosity=2)


def test_token():
    """The token kind tests run on: "softhsm" (default) or "tpm"."""
    t = os.environ.get("COFFER_TEST_TOKEN", "") or "softhsm"
    if t not in ("softhsm", "tpm"):
        raise DaemonError("COFFER_TEST_TOKEN=%s: softhsm or tpm" % t)
    return t


def _keep_tmp():
    return os.environ.get("COFFER_KEEP_TMP", "") not in ("", "0")


# ---- the state backend ----

def test_backend():
    """"sqlite" or "postgresql" (COFFER_TEST_BACKEND); raises DaemonError on
    anything else, or on postgresql without COFFER_TEST_PG_HOST."""
    b = os.environ.get("COFFER_TEST_BACKEND", "") or "sqlite"
    if b not in ("sqlite", "postgresql"):
        raise DaemonError("COFFER_TEST_BACKEND=%s: expected sqlite or postgresql" % b)
    if b == "postgresql" and not os.environ.get("COFFER_TEST_PG_HOST"):
        raise DaemonError("COFFER_TEST_BACKEND=postgresql needs COFFER_TEST_PG_HOST (the socket "
                          "directory of a running server): use tests/run-on-postgresql.sh")
    return b


def on_postgresql():
    return test_backend() == "postgresql"


def skip_on_postgresql(what, reason):
    """On PostgreSQL: print that the check `what` is skipped and why, return
    True (the caller then skips that one check). On SQLite: False."""
    if not on_postgresql():
        return False
    print("SKIP (postgresql): %s: %s" % (what, reason), file=sys.stderr, flush=True)
    return True


def skip_test_on_postgresql(what, reason):
    """On PostgreSQL: print why and skip the whole test (unittest.SkipTest)."""
    if skip_on_postgresql(what, reason):
        import unittest
        raise unittest.SkipTest("postgresql: " + reason)


def pg_dbname(state_dir):
    """The database of the daemon whose state dir is state_dir."""
    return "coffer_" + hashlib.sha256(state_dir.encode()).hexdigest()[:16]


def psql(dbname, sql, check=True):
    """Run sql in dbname on the test server (psql -At): the rows as lists of
    strings. Raises DaemonError on an error when check."""
    r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-v", "ON_ERROR_STOP=1",
                        "-h", os.environ["COFFER_TEST_PG_HOST"], "-d", dbname, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise DaemonError("psql -d %s -c %r: %s" % (dbname, sql, r.stderr.strip()))
    return [line.split("\x1f") for line in r.stdout.split("\n") if line]


def pg_createdb(dbname):
    """CREATE DATABASE unless it exists (a concurrent creator may win)."""
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                        "-h", os.environ["COFFER_TEST_PG_HOST"], "-d", "postgres",
                        "-c", "CREATE DATABASE %s" % dbname],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0 and "already exists" not in r.stderr:
        raise DaemonError("cannot create database %s on the test PostgreSQL server %s: %s"
                          % (dbname, os.environ["COFFER_TEST_PG_HOST"], r.stderr.strip()))


def pg_dropdb(dbname):
    psql("postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % dbname)


def pg_copydb(src, dst):
    """dst (replaced) a copy of src, which nobody may be connected to."""
    pg_dropdb(dst)
    psql("postgres", "CREATE DATABASE %s TEMPLATE %s" % (dst, src))


# ---- generated stubs ----

_stubs = None
_stubs_lock = threading.Lock()


def stubs():
    """Generate (once per process) and import the stubs.

    Returns a namespace: pb (coffer_pb2), pb_grpc (coffer_pb2_grpc),
    pipeline_pb, pipeline_pb_grpc (the pipelined stream's),
    health_pb (health_pb2), health_pb_grpc (health_pb2_grpc), dir (the
    directory that must be on sys.path of any other process using them;
    world-readable so that a client run as another user can import them).
    """
    global _stubs
    with _stubs_lock:
        if _stubs is not None:
            return _stubs
        out = tempfile.mkdtemp(prefix="coffer-stubs-")
        if not _keep_tmp():
            atexit.register(shutil.rmtree, out, True)
        # health.proto under a directory name that is not "grpc".
        hsrc = os.path.join(out, "_proto", "coffer_test_health")
        os.makedirs(hsrc)
        shutil.copy(os.path.join(PROTO_DIR, "grpc", "health", "v1", "health.proto"), hsrc)
        gen = os.path.join(out, "py")
        os.makedirs(gen)
        for include, proto in ((PROTO_DIR, "coffer/v1/coffer.proto"),
                               (PROTO_DIR, "coffer/v1/pipeline.proto"),
                               (os.path.join(out, "_proto"), "coffer_test_health/health.proto")):
            r = subprocess.run([PYTHON, "-m", "grpc_tools.protoc", "-I", include,
                                "--python_out=" + gen, "--grpc_python_out=" + gen, proto],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise DaemonError("protoc %s failed:\n%s%s" % (proto, r.stdout, r.stderr))
        for root, dirs, files in os.walk(out):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        if gen not in sys.path:
            sys.path.insert(0, gen)
        importlib.invalidate_caches()
        ns = types.SimpleNamespace(
            dir=gen,
            pb=importlib.import_module("coffer.v1.coffer_pb2"),
            pb_grpc=importlib.import_module("coffer.v1.coffer_pb2_grpc"),
            pipeline_pb=importlib.import_module("coffer.v1.pipeline_pb2"),
            pipeline_pb_grpc=importlib.import_module("coffer.v1.pipeline_pb2_grpc"),
            health_pb=importlib.import_module("coffer_test_health.health_pb2"),
            health_pb_grpc=importlib.import_module("coffer_test_health.health_pb2_grpc"))
        _stubs = ns
        return ns


def health_check(socket_path, service="", timeout=1.0):
    """One grpc.health.v1 Check on a fresh channel; returns the serving status
    (an int) or raises grpc.RpcError."""
    h = stubs().health_pb
    with grpc.insecure_channel("unix:" + socket_path) as ch:
        check = ch.unary_unary(HEALTH_CHECK,
                               request_serializer=h.HealthCheckRequest.SerializeToString,
                               response_deserializer=h.HealthCheckResponse.FromString)
        return check(h.HealthCheckRequest(service=service), timeout=timeout).status


# ---- the daemon ----

def _ini(sections):
    lines = []
    for sec, kv in sections.items():
        lines.append("[%s]" % sec)
        for k, v in kv.items():
            if v is not None:
                lines.append("%s = %s" % (k, v))
        lines.append("")
    return "\n".join(lines)


class CofferDaemon:
    """One cofferd with its own temp dir, token, state dir and sockets.

    config: {"section": {"name": value}} merged over the fixture's settings
    (value None deletes a setting) and written to DIR/cofferd.conf.
    args: extra command-line flags.
    token_of: another CofferDaemon whose token (directory, SOFTHSM2_CONF,
    PIN file, URI) this one uses instead of making its own.
    """

    # The principal start() gives this process's uid (cofferd denies by
    # default); grant_all=False leaves the daemon without it.
    PRINCIPAL = "tester"

    def __init__(self, config=None, args=(), label="coffer", workdir=None, cofferd=None,
                 grant_all=True, token_of=None, token=None):
        self.grant_all = grant_all
        self.token = token_of.token if token_of is not None else (token or test_token())
        self._tpm_env = {}
        self.cofferd = cofferd or cofferd_path()
        if not os.access(self.cofferd, os.X_OK):
            raise DaemonError("%s is not built (set COFFER_BUILD_DIR or COFFER_COFFERD)"
                              % self.cofferd)
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="coffer-d-")
        # token_of: another fixture whose token this daemon shares (replicas
        # of a fleet); its token is neither made nor removed here.
        if token_of is not None:
            label = token_of.label
        self.label = label
        self.token_dir = token_of.token_dir if token_of else os.path.join(
            self.dir, "tpm" if self.token == "tpm" else "hsm")
        self.softhsm_conf = os.path.join(self.token_dir, "softhsm2.conf")
        self.pin_file = os.path.join(self.token_dir, "user.pin")
        self.token_uri = "pkcs11:token=" + label
        self.state_dir = os.path.join(self.dir, "state")
        self.run_dir = os.path.join(self.dir, "run")
        self.service_socket = os.path.join(self.run_dir, "service.sock")
        self.admin_socket = os.path.join(self.run_dir, "admin.sock")
        self.log_path = os.path.join(self.dir, "cofferd.log")
        self.conf_path = os.path.join(self.dir, "cofferd.conf")
        self.args = list(args)
        self.spawn_kw = {}       # extra subprocess.Popen arguments for start()
        self.proc = None
        self.starts = 0
        self._log_offset = 0
        self._channels = []
        self.identity = None     # SPKI DER, pinned at the first start
        os.makedirs(self.run_dir, exist_ok=True)
        self._own_token = token_of is None
        if token_of is None:
            self.init_token()
        else:
            self.init_token_output = token_of.init_token_output
            self._tpm_env = token_of._tpm_env
        self.module = tpm_module() if self.token == "tpm" else softhsm_module()
        self.config = {
            "token": {"module": self.module, "uri": self.token_uri,
                      "pin_file": self.pin_file},
            "daemon": {"state_dir": self.state_dir, "log_level": "info"},
            "service": {"path": self.service_socket},
            "admin": {"path": self.admin_socket},
        }
        for sec, kv in (config or {}).items():
            self.config.setdefault(sec, {}).update(kv)
        # The backend under test, unless the test configures [state] itself.
        self.pg_db = None
        self._other_dbs = []     # of command(state_dir=...)
        if on_postgresql() and "state" not in (config or {}):
            self.pg_db = pg_dbname(self.config["daemon"]["state_dir"])
            pg_createdb(self.pg_db)
            self.config["state"] = {
                "backend": "postgresql",
                "dsn": "host=%s dbname=%s" % (os.environ["COFFER_TEST_PG_HOST"], self.pg_db)}

    # -- setup --

    @property
    def env(self):
        e = dict(os.environ)
        e["SOFTHSM2_CONF"] = self.softhsm_conf
        e.update(self._tpm_env)
        return e

    def init_token(self):
        if self.token == "tpm":
            why = tpm_missing()
            if why is not None:
                raise DaemonError("no TPM token: " + why)
        script = INIT_TPM_TOKEN if self.token == "tpm" else INIT_TOKEN
        # The token is initialised by this build's cofferd (--init-token).
        env = dict(os.environ, COFFERD=self.cofferd)
        if os.environ.get("COFFER_SOFTHSM_MODULE"):
            env["SOFTHSM2_MODULE"] = os.environ["COFFER_SOFTHSM_MODULE"]
        r = subprocess.run(["/bin/sh", script, self.token_dir, self.label],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise DaemonError("%s failed (%d):\n%s%s" %
                              (os.path.basename(script), r.returncode, r.stdout, r.stderr))
        self.init_token_output = r.stdout
        if self.token == "tpm":
            # DIR/env: "NAME=value; export NAME" lines.
            with open(os.path.join(self.token_dir, "env")) as f:
                for line in f:
                    name, _, rest = line.strip().partition("=")
                    if name:
                        self._tpm_env[name] = rest.split(";", 1)[0]
        return r

    def tpm_ctl(self, what):
        """TPM token only: "stop-swtpm" or "start-swtpm" (deploy/init-tpm-token.sh)."""
        subprocess.run(["/bin/sh", INIT_TPM_TOKEN, "--" + what, self.token_dir], check=True,
                       capture_output=True, timeout=60)

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write(_ini(self.config))
        return self.conf_path

    def make_traversable(self):
        """chmod 0755 the temp dir and the socket dir, so that other users
        (e.g. nobody) can reach sockets whose mode lets them connect."""
        for d in (self.dir, self.run_dir):
            os.chmod(d, 0o755)

    # -- the state store behind the daemon's back --

    def anchor_args(self):
        """cofferctl audit verify's arguments naming where this daemon's
        audit anchor is kept: its SQLite store, or its replica's row in the
        PostgreSQL state."""
        if self.pg_db is None:
            return ["--state-db", os.path.join(self.state_dir, "coffer.db")]
        replica = self.config["state"].get("replica") or socket.gethostname()
        return ["--state-dsn", self.config["state"]["dsn"], "--replica", replica]

    def state_query(self, *statements, readonly=False):
        """Run SQL statements in one transaction on this daemon's state
        store: <state_dir>/coffer.db, or its PostgreSQL database. The rows
        they return, each a tuple of strings (None for NULL), so that both
        backends compare alike (a boolean is "t"/"f" on PostgreSQL)."""
        if self.pg_db is not None:
            if readonly:
                statements = ("SET TRANSACTION READ ONLY",) + statements
            r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-P", "null=\x1e",
                                "-v", "ON_ERROR_STOP=1", "-1",
                                "-h", os.environ["COFFER_TEST_PG_HOST"], "-d", self.pg_db,
                                "-f", "-"], input=";\n".join(statements) + ";\n",
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise DaemonError("psql -d %s: %s" % (self.pg_db, r.stderr.strip()))
            # Not splitlines(): it splits at \x1e too.
            return [tuple(None if v == "\x1e" else v for v in line.split("\x1f"))
                    for line in r.stdout.split("\n") if line]
        import sqlite3
        path = os.path.join(self.state_dir, "coffer.db")
        db = sqlite3.connect("file:%s%s" % (path, "?mode=ro" if readonly else ""), uri=True,
                             timeout=10)
        rows = []
        try:
            with db:
                for st in statements:
                    rows += db.execute(st).fetchall()
            return [tuple(None if v is None else str(v) for v in row) for row in rows]
        finally:
            db.close()

    def save_state(self, tag):
        """A copy of the stopped daemon's state store (restore_state(tag))."""
        if self.pg_db is not None:
            pg_copydb(self.pg_db, "%s_%s" % (self.pg_db, tag))
            return
        saved = os.path.join(self.dir, "saved-" + tag)
        shutil.rmtree(saved, ignore_errors=True)
        os.makedirs(saved)
        for f in os.listdir(self.state_dir):
            if f.startswith("coffer.db"):
                shutil.copy(os.path.join(self.state_dir, f), saved)

    def restore_state(self, tag):
        """The stopped daemon's state store as save_state(tag) left it."""
        if self.pg_db is not None:
            pg_copydb("%s_%s" % (self.pg_db, tag), self.pg_db)
            return
        saved = os.path.join(self.dir, "saved-" + tag)
        for f in os.listdir(self.state_dir):
            if f.startswith("coffer.db"):
                os.unlink(os.path.join(self.state_dir, f))
        for f in os.listdir(saved):
            shutil.copy(os.path.join(saved, f), self.state_dir)

    # -- process --

    def command(self, state_dir=None):
        """cofferd with this fixture's configuration; with state_dir, another
        daemon's state: that directory (and on PostgreSQL its own database,
        dropped by cleanup()), in a configuration file of its own."""
        if state_dir is None:
            return [self.cofferd, "-c", self.write_config()] + self.args
        config = {sec: dict(kv) for sec, kv in self.config.items()}
        config["daemon"]["state_dir"] = state_dir
        if self.pg_db is not None:
            db = pg_dbname(state_dir)
            pg_createdb(db)
            self._other_dbs.append(db)
            config["state"]["dsn"] = "host=%s dbname=%s" % (os.environ["COFFER_TEST_PG_HOST"], db)
        path = os.path.join(self.dir, "cofferd-%s.conf" % os.path.basename(state_dir))
        with open(path, "w") as f:
            f.write(_ini(config))
        return [self.cofferd, "-c", path] + self.args

    def spawn(self, cmd=None, **kw):
        """Start a cofferd process with this fixture's environment, output
        appended to the log; returns the Popen (not tracked as self.proc)."""
        with open(self.log_path, "ab") as log:
            log.write(("--- cofferd start %d ---\n" % (self.starts + 1)).encode())
            log.flush()
            return subprocess.Popen(cmd or self.command(), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=self.env, **kw)

    def start(self, timeout=READY_TIMEOUT):
        if self.running:
            raise DaemonError("already running")
        self._log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.proc = self.spawn(**self.spawn_kw)
        self.starts += 1
        self.wait_ready(timeout)
        if self.identity is None:
            self.identity = self.fetch_identity()
        if self.grant_all:
            self.ensure_principal()
        return self

    def ensure_principal(self, name=PRINCIPAL, uid=None):
        """Give uid (default: ours) the principal `name` with every operation
        on every key; an existing one is kept and granted."""
        pb = stubs().pb
        adm = self.admin_stub()
        try:
            adm.CreatePrincipal(pb.CreatePrincipalRequest(
                name=name, uids=[os.geteuid() if uid is None else uid]), timeout=10)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        adm.GrantPrincipal(pb.GrantRequest(name=name, grant=pb.Grant(
            key_pattern="*", operations=list(range(1, 10)))), timeout=10)

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        pending = [self.service_socket, self.admin_socket]
        last = None
        while pending:
            rc = self.proc.poll()
            if rc is not None:
                raise DaemonError("cofferd exited with status %d before it was ready:\n%s"
                                  % (rc, self.log()))
            if time.monotonic() > deadline:
                raise DaemonError("cofferd not ready after %.0f s (%s); log:\n%s"
                                  % (timeout, last, self.log()))
            path = pending[0]
            if os.path.exists(path):
                try:
                    if health_check(path, timeout=1.0) == 1:  # SERVING
                        pending.pop(0)
                        continue
                except grpc.RpcError as e:
                    last = "%s: %s %s" % (path, e.code(), e.details())
            time.sleep(0.05)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def send_signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DaemonError("cofferd did not exit within %s s after the signal; log:\n%s"
                              % (timeout, self.log()))

    def stop(self, sig=signal.SIGTERM, timeout=30, expect=0):
        """Signal cofferd, wait for it and check its exit status (None: any)."""
        self.close_channels()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.send_signal(sig)
            # A test that froze it (SIGSTOP) and failed before going on
            # must not leave it unable to take the signal.
            self.send_signal(signal.SIGCONT)
        rc = self.wait(timeout)
        if expect is not None and rc != expect:
            raise AssertionError("cofferd exited with status %d, expected %d; log:\n%s"
                                 % (rc, expect, self.log()))
        return rc

    def restart(self, timeout=READY_TIMEOUT):
        self.stop()
        return self.start(timeout)

    # -- clients --

    def socket(self, kind):
        return {"service": self.service_socket, "admin": self.admin_socket}[kind]

    def channel(self, kind="service", options=None):
        """A grpc channel to the service or admin socket, closed by stop()."""
        ch = grpc.insecure_channel("unix:" + self.socket(kind), options=options or [])
        self._channels.append(ch)
        return ch

    def service_stub(self, options=None):
        return stubs().pb_grpc.KeyServiceStub(self.channel("service", options))

    def admin_stub(self, options=None):
        return stubs().pb_grpc.AdminServiceStub(self.channel("admin", options))

    def fetch_identity(self, kind="service"):
        """SessionService/GetIdentity now: the identity public key (SPKI DER)."""
        pb, pb_grpc = stubs().pb, stubs().pb_grpc
        with grpc.insecure_channel("unix:" + self.socket(kind)) as ch:
            return pb_grpc.SessionServiceStub(ch).GetIdentity(pb.GetIdentityRequest(),
                                                              timeout=10).public_key

    def sealed_stub(self, kind="service", service=None, pinned=None, principal=""):
        """A SealedStub on a new channel to `kind`; service defaults to the
        socket's own (KeyService / AdminService), pinned to self.identity."""
        if service is None:
            service = {"service": "KeyService", "admin": "AdminService"}[kind]
        return SealedStub(self.channel(kind), service,
                          self.identity if pinned is None else pinned, principal)

    def close_channels(self):
        for ch in self._channels:
            ch.close()
        self._channels = []

    # -- logs --

    def log(self, all_starts=True):
        """The daemon's stderr (every start, or only since the last start)."""
        try:
            with open(self.log_path, "rb") as f:
                if not all_starts:
                    f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    # -- teardown --

    def cleanup(self):
        try:
            if self.running:
                self.stop(expect=None)
        finally:
            self.close_channels()
            if self.token == "tpm" and self._own_token:
                subprocess.run(["/bin/sh", INIT_TPM_TOKEN, "--stop", self.token_dir],
                               capture_output=True, timeout=60)
            if self._own_dir and not _keep_tmp():
                shutil.rmtree(self.dir, ignore_errors=True)
                if self.pg_db is not None:
                    for (name,) in psql("postgres", "SELECT datname FROM pg_database WHERE "
                                        "datname LIKE '%s%%'" % self.pg_db):
                        pg_dropdb(name)   # with the copies of save_state
                    for name in self._other_dbs:
                        pg_dropdb(name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False


# ---- sealed calls ----

_STATUS = {c.value[0]: c for c in grpc.StatusCode}


class SealedRpcError(grpc.RpcError):
    """A sealed call whose record was accepted and whose inner call failed:
    the inner status (SealedResult.code/message), shaped like a grpc.RpcError
    (code(), details()) so tests can treat it like an unsealed call's error."""

    def __init__(self, method, code, message):
        self.method = method
        self.inner_code = code
        self._code = _STATUS.get(code, grpc.StatusCode.UNKNOWN)
        self._details = message
        super().__init__("%s (sealed): %s: %s" % (method, self._code.name, message))

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()

    def initial_metadata(self):
        return ()


class SealedStub:
    """The methods of one service ("KeyService", "AdminService") sent with
    SessionService/Call in a sealed session over `channel`, opened with
    coffer_session.Session on first use and pinned to `pinned`.

        stub.Wrap(request, timeout=...) -> the inner response message

    A failed inner call raises SealedRpcError (inner code and message); an
    outer error (the record was refused, transport) raises the grpc.RpcError
    itself and the next call opens a new session; a bad reply raises
    coffer_session.SessionError. One call at a time (one session).
    """

    def __init__(self, channel, service, pinned, principal=""):
        self.channel = channel
        self.pinned = pinned
        self.principal = principal
        self._desc = stubs().pb.DESCRIPTOR.services_by_name[service]
        self.session = None
        self.sessions_opened = 0

    def open(self, timeout=None):
        import coffer_session
        if self.session is None or not self.session.usable:
            self.session = coffer_session.Session.open(self.channel, self.pinned,
                                                       self.principal,
                                                       timeout=timeout or 10.0)
            self.sessions_opened += 1
        return self.session

    def call(self, name, request, timeout=None):
        md = self._desc.methods_by_name[name]
        path = "/%s/%s" % (self._desc.full_name, name)
        s = self.open(timeout)
        code, message, response = s.call(path, request.SerializeToString(),
                                         timeout=timeout or 10.0)
        if code != 0:
            raise SealedRpcError(path, code, message)
        return getattr(stubs().pb, md.output_type.name).FromString(response)

    def __getattr__(self, name):
        if name.startswith("_") or name not in self._desc.methods_by_name:
            raise AttributeError(name)
        return functools.partial(self.call, name)

    def close(self):
        if self.session is not None and self.session.usable:
            return self.session.close()
        return None


def cofferctl_path():
    return os.path.join(os.environ.get("COFFER_BUILD_DIR", os.path.join(HERE, "..", "..", "build")),
                        "cofferctl")


class Ctl:
    """cofferctl against daemon d, with its identity pinned; raises on a
    non-zero exit unless ok=False."""

    def __init__(self, d):
        self.d = d
        self.ident = os.path.join(d.dir, "identity.pem")
        self.env = dict(d.env, COFFER_SOCKET=d.service_socket,
                        COFFER_ADMIN_SOCKET=d.admin_socket)
        subprocess.run([cofferctl_path(), "identity", "--out", self.ident], env=self.env,
                       check=True, capture_output=True, timeout=60)

    def __call__(self, *args, ok=True, data=None, **kw):
        r = subprocess.run([cofferctl_path(), "--identity", self.ident] + list(args),
                           env=self.env, capture_output=True, timeout=60, input=data, **kw)
        if ok and r.returncode != 0:
            raise AssertionError("cofferctl %s: %d %s" % (args, r.returncode, r.stderr))
        return r
