#!/usr/bin/python3
"""Crash-consistency invariants of a cofferd state directory and its token
(issue 13), checked from outside: the token through tests/p11_objects (raw
Cryptoki, none of Coffer's code), coffer.db read-only with sqlite3 (or a fleet's
PostgreSQL database through psql: read_registry_pg), audit.log
parsed line by line.

    from crash_check import check, check_daemon, Expect
    problems = check_daemon(d)            # d: a daemon_fixture.CofferDaemon
    problems = check(state_dir, objects)  # objects: token_objects(...)

Each returns a list of violations, each a sentence naming what is wrong
(key, version, label, CKA_ID, audit record). The invariants:

 V  versions of every key are numbered 1..n with no gap; the primary is one
    of them; no version row without its key;
 T  every version that is enabled, disabled or destroy-scheduled has exactly
    its objects in the token: one private + one public (asymmetric types) or
    one secret (HMAC, AES), of the key's type, on the token, with the CKA_ID
    the registry records (versions.ckaid; SHA-256(label)[:16] when NULL or
    before that column); every API key secret (api_secrets) has exactly one
    secret object coffer/coffer.apikey.<id>/<generation>;
 D  destroyed versions have no object left;
 O  no object carries a Coffer label (coffer/...) that no registry row claims
    (the daemon's own keys, names starting "coffer." other than
    coffer.apikey.*, are allowed); no two objects share label and class;
 I  the intents table is empty (after a start-up; intents_empty=False skips);
 A  every committed change has exactly one audit record naming it: each
    version row one CreateKey/ImportKey (version 1) or RotateKey/
    ScheduledRotation (version n > 1) record with result OK naming key and
    version; each destroyed version one DestroyKeyVersion record; each API
    key as many CreateApiKey/RotateApiKeySecret records as secret generations
    it had, each revoked key one RevokeApiKey record (or, revoked with its
    principal, a DeletePrincipal record naming that); no such record names a
    version the registry does not have; a record of a replayed call carries
    "replay_of" naming the request id of a committed record of the same
    method; every expected change (Expect, from the test that made it) has
    exactly one committed record, the other answers to its request ids are
    replays of it; every line of audit.log parses;
 AV `cofferctl audit verify` says intact (when a Ctl is given and the daemon
    runs).

Command line (for a post-mortem of a kept temp dir):
    crash_check.py DIR               DIR: a daemon_fixture temp dir
                                     (DIR/state, DIR/hsm)
exit status 0: no violation, 1: violations (printed), 2: usage.
"""

import collections
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

ENABLED, DISABLED, DESTROY_SCHEDULED, DESTROYED = 1, 2, 3, 4
STATE_NAMES = {1: "enabled", 2: "disabled", 3: "destroy-scheduled", 4: "destroyed"}
LIVE = (ENABLED, DISABLED, DESTROY_SCHEDULED)

LABEL_PREFIX = "coffer/"
APIKEY_PREFIX = "coffer.apikey."
OWN_PREFIX = "coffer."

# Methods whose committed record names a version they made.
MAKE_FIRST = ("CreateKey", "ImportKey")
MAKE_NEXT = ("RotateKey", "ScheduledRotation")
DESTROY = ("DestroyKeyVersion",)
APIKEY_SECRET = ("CreateApiKey", "RotateApiKeySecret")
APIKEY_REVOKE = ("RevokeApiKey",)


def build_dir():
    return os.environ.get("COFFER_BUILD_DIR") or os.path.join(HERE, "..", "..", "build")


def p11_objects_path():
    return os.environ.get("COFFER_P11_OBJECTS") or os.path.join(build_dir(), "tests",
                                                                  "p11_objects")


class CheckError(Exception):
    """The checker could not read something (not a violation)."""


def p11_tool(module, token_label, pin_file, softhsm_conf, *action):
    env = dict(os.environ, SOFTHSM2_CONF=softhsm_conf)
    r = subprocess.run([p11_objects_path(), "--module", module, "--token-label", token_label,
                        "--pin-file", pin_file] + list(action),
                       env=env, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise CheckError("p11_objects %s failed (%d): %s" % (" ".join(action), r.returncode,
                                                            r.stderr.strip()))
    return r.stdout


def token_objects(module, token_label, pin_file, softhsm_conf):
    """Every object of the token as a dict: class, label, id, key_type, token."""
    out = p11_tool(module, token_label, pin_file, softhsm_conf)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def key_family(type_name):
    """(asymmetric?, PKCS#11 key type name) for a registry type string."""
    t = type_name.lower()
    if t.startswith("ec-"):
        return True, "ec"
    if t.startswith("rsa"):
        return True, "rsa"
    if t.startswith("ed25519"):
        return True, "ec_edwards"
    if t.startswith("hmac"):
        return False, "generic_secret"
    if t.startswith("aes"):
        return False, "aes"
    return None, None


def default_ckaid(label):
    return hashlib.sha256(label.encode()).digest()[:16].hex()


def _rec_time(r):
    """A record's time ("2026-12-07T02:29:23.208Z") in whole seconds since
    the epoch (UTC); -1 if it has none."""
    import calendar
    try:
        return calendar.timegm(time.strptime(r.get("time", "")[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return -1


def short_method(m):
    return (m or "").rsplit("/", 1)[-1]


class Expect:
    """A change a test made: exactly one committed audit record of `method`
    (short name, e.g. "SetPrimaryVersion") naming `key` (None: any key) and
    `version` (None: any version) among the records with request ids in `request_ids` (the
    crashed call and its retries); the other OK records of those ids must
    be replays naming it."""

    def __init__(self, method, key, version=None, request_ids=()):
        self.method = method
        self.key = key
        self.version = version
        self.request_ids = set(request_ids)

    def __repr__(self):
        return "%s %s%s" % (self.method, self.key,
                            "" if self.version is None else " v%d" % self.version)


def _columns(db, table):
    return [r[1] for r in db.execute("PRAGMA table_info(%s)" % table)]


def _tables(db):
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# Why the crash tests do not run on the PostgreSQL backend.
POSTGRESQL_SKIP = ("the crash loops kill at writes to coffer.db-wal, break copies of the state "
                   "dir and check the registry in the SQLite file (crash_check.read_registry); "
                   "crashes on PostgreSQL are the fleet's kill -9 test (issue 16)")


def read_registry(state_dir):
    """The registry in <state_dir>/coffer.db, read-only: keys, versions, api
    keys, secrets, intents (read_registry_pg: from a PostgreSQL database)."""
    if os.environ.get("COFFER_TEST_BACKEND") == "postgresql":
        raise CheckError("crash_check reads the SQLite state store only: " + POSTGRESQL_SKIP)
    path = os.path.join(state_dir, "coffer.db")
    if not os.path.exists(path):
        raise CheckError("no state store at %s" % path)
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return _registry(lambda sql: db.execute(sql).fetchall(), _tables(db),
                         lambda t: _columns(db, t))
    finally:
        db.close()


def read_registry_pg(host, dbname):
    """The same registry from a PostgreSQL database (the fleet's shared
    state: the same tables), through psql; host: the server's socket dir."""
    def q(sql):
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host,
                            "-d", dbname, "-c", "SELECT row_to_json(t) FROM (%s) t" % sql],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise CheckError("psql -d %s: %s" % (dbname, r.stderr.strip()))
        return [list(json.loads(line).values()) for line in r.stdout.splitlines() if line]

    tables = {r[0] for r in q("SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = current_schema()")}
    return _registry(q, tables, lambda t: [r[0] for r in q(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = '%s' ORDER BY ordinal_position" % t)])


def _registry(q, tables, columns):
    """read_registry's result from q(sql) -> rows, the table names and
    columns(table) -> column names."""
    reg = {"keys": {}, "versions": collections.defaultdict(dict), "api_keys": {},
           "api_secrets": collections.defaultdict(dict), "intents": [],
           "has_ckaid": False, "has_intents": "intents" in tables, "orphan_versions": []}
    for name, typ, primary in q("SELECT name, type, primary_version FROM keys"):
        reg["keys"][name] = {"type": typ, "primary": primary}
    reg["has_ckaid"] = "ckaid" in columns("versions")
    for row in q("SELECT name, version, state%s FROM versions" % (
            ", ckaid" if reg["has_ckaid"] else "")):
        name, ver, state = row[0], row[1], row[2]
        ckaid = row[3] if reg["has_ckaid"] else None
        if isinstance(ckaid, bytes):
            ckaid = ckaid.hex()
        if name not in reg["keys"]:
            reg["orphan_versions"].append((name, ver))
        reg["versions"][name][ver] = {"state": state, "ckaid": ckaid.lower() if ckaid
                                      else None}
    if "api_keys" in tables:
        for kid, principal, revoked, nextgen in q(
                "SELECT id, principal, revoked, next_generation FROM api_keys"):
            reg["api_keys"][kid] = {"principal": principal, "revoked": revoked,
                                    "next_generation": nextgen}
        has_ck = "ckaid" in columns("api_secrets")
        for row in q("SELECT id, generation%s FROM api_secrets" % (", ckaid" if has_ck
                                                                   else "")):
            ck = row[2] if len(row) > 2 else None
            if isinstance(ck, bytes):
                ck = ck.hex()
            reg["api_secrets"][row[0]][row[1]] = {"ckaid": ck.lower() if ck else None}
    if reg["has_intents"]:
        cols = columns("intents")
        reg["intents"] = [dict(zip(cols, r)) for r in q("SELECT * FROM intents")]
    return reg


def read_audit(state_dir):
    """(records, problems): the parsed lines of audit.log, each with its line
    number in "_line"; a line that does not parse is a problem."""
    path = os.path.join(state_dir, "audit.log")
    recs, problems = [], []
    if not os.path.exists(path):
        return recs, problems
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        problems.append("audit: audit.log does not end with a newline (torn last record, "
                        "line %d)" % len(lines))
    for i, raw in enumerate(lines, 1):
        try:
            r = json.loads(raw)
            if not isinstance(r, dict):
                raise ValueError("not an object")
        except ValueError as e:
            problems.append("audit: audit.log line %d is not a JSON record (%s): %r"
                            % (i, e, raw[:120]))
            continue
        r["_line"] = i
        recs.append(r)
    return recs, problems


def _rec_str(r):
    return "record seq %s (line %d: %s %s v%s %s request_id %s%s)" % (
        r.get("seq"), r["_line"], short_method(r.get("method")), r.get("key"),
        r.get("version"), r.get("result"), r.get("request_id"),
        (" replay_of %s" % r["replay_of"]) if "replay_of" in r else "")


def check_token(reg, objects, allow_intents=False, notes=None):
    """Invariants V, T, D, O (and I when intents must be empty: see check).
    An object without a readable class or label (SoftHSM creates an object
    file empty, then writes it: a kill between leaves one) carries no
    Coffer label; it is not a violation, but noted in `notes` (a list)."""
    out = []
    by_label = collections.defaultdict(list)
    for o in objects:
        if o.get("class") is None or o.get("label") is None:
            if notes is not None:
                notes.append("token: an object whose class or label cannot be read (an "
                             "empty SoftHSM object file?): %s" % json.dumps(o, sort_keys=True))
            continue
        by_label[o.get("label")].append(o)

    # O: no two objects share label and class (Coffer's labels; SoftHSM
    # leaves an empty label on an object file a kill cut short).
    for label, objs in sorted(by_label.items(), key=lambda kv: str(kv[0])):
        if not label.startswith(LABEL_PREFIX):
            if notes is not None and label == "":
                notes.append("token: %d object(s) with an empty label (an object file a kill "
                             "cut short?): %s" % (len(objs), ", ".join(
                                 "%s id %r" % (o.get("class"), o.get("id")) for o in objs)))
            continue
        cnt = collections.Counter(o.get("class") for o in objs)
        for cls, n in sorted(cnt.items(), key=lambda kv: str(kv[0])):
            if n > 1:
                out.append("token: %d %s objects carry the label %s (ids %s)" % (
                    n, cls, label, ", ".join(sorted(str(o.get("id")) for o in objs
                                                     if o.get("class") == cls))))

    # V: numbering.
    for name, k in sorted(reg["keys"].items()):
        vers = sorted(reg["versions"].get(name, {}))
        if vers != list(range(1, len(vers) + 1)):
            out.append("registry: key %s has versions %s, not 1..%d without gaps"
                       % (name, vers, len(vers)))
        if not vers:
            out.append("registry: key %s has no version" % name)
        elif k["primary"] not in vers:
            out.append("registry: key %s names primary version %s, which it does not have"
                       % (name, k["primary"]))
    for name, ver in reg["orphan_versions"]:
        out.append("registry: version %s/%d has no key row" % (name, ver))

    intents = {}
    if allow_intents:
        for it in reg["intents"]:
            intents[(it.get("name"), it.get("version"))] = it

    claimed = set()
    # T, D for key versions.
    for name, vers in sorted(reg["versions"].items()):
        k = reg["keys"].get(name)
        asym, ktype = key_family(k["type"]) if k else (None, None)
        for ver, v in sorted(vers.items()):
            label = "%s%s/%d" % (LABEL_PREFIX, name, ver)
            claimed.add(label)
            objs = by_label.get(label, [])
            where = "key %s version %d (%s)" % (name, ver, STATE_NAMES.get(v["state"],
                                                                            v["state"]))
            if v["state"] == DESTROYED:
                if objs and (name, ver) not in intents:
                    out.append("token: %s still has %d object(s): %s" % (
                        where, len(objs), ", ".join("%s id %s" % (o.get("class"), o.get("id"))
                                                   for o in objs)))
                continue
            if v["state"] not in LIVE:
                out.append("registry: %s has an unknown state" % where)
                continue
            want = {"private": 1, "public": 1} if asym else {"secret": 1}
            have = collections.Counter(o.get("class") for o in objs)
            if dict(have) != want and (name, ver) not in intents:
                out.append("token: %s has %s in the token, expected %s" % (
                    where, dict(sorted(have.items())) or "no object",
                    " + ".join("%d %s" % (n, c) for c, n in want.items())))
            ck = v["ckaid"] or default_ckaid(label)
            for o in objs:
                if o.get("id") != ck:
                    out.append("token: %s: %s object has CKA_ID %s, the registry records %s%s"
                               % (where, o.get("class"), o.get("id"), ck,
                                  "" if v["ckaid"] else " (SHA-256 of the label)"))
                if ktype and o.get("key_type") != ktype:
                    out.append("token: %s: %s object is of key type %s, expected %s"
                               % (where, o.get("class"), o.get("key_type"), ktype))
                if o.get("token") is not True:
                    out.append("token: %s: %s object is not a token object"
                               % (where, o.get("class")))

    # T for API key secrets.
    for kid, gens in sorted(reg["api_secrets"].items()):
        for gen, s in sorted(gens.items()):
            label = "%s%s%s/%d" % (LABEL_PREFIX, APIKEY_PREFIX, kid, gen)
            claimed.add(label)
            objs = by_label.get(label, [])
            have = collections.Counter(o.get("class") for o in objs)
            if dict(have) != {"secret": 1}:
                out.append("token: API key %s secret generation %d has %s in the token, "
                           "expected 1 secret" % (kid, gen, dict(have) or "no object"))
            for o in objs:
                if s["ckaid"] and o.get("id") != s["ckaid"]:
                    out.append("token: API key %s generation %d: object CKA_ID %s, the "
                               "registry records %s" % (kid, gen, o.get("id"), s["ckaid"]))

    # O: every other Coffer label must be the daemon's own key.
    for label, objs in sorted(by_label.items(), key=lambda kv: str(kv[0])):
        if not isinstance(label, str) or not label.startswith(LABEL_PREFIX) or label in claimed:
            continue
        rest = label[len(LABEL_PREFIX):]
        name, _, ver = rest.rpartition("/")
        if name.startswith(OWN_PREFIX) and not name.startswith(APIKEY_PREFIX) \
                and name not in reg["keys"]:
            continue
        try:
            vnum = int(ver)
        except ValueError:
            vnum = None
        if (name, vnum) in intents:
            continue
        why = ("no API key secret row claims it" if name.startswith(APIKEY_PREFIX)
               else "key %s has no version %s" % (name, ver) if name in reg["keys"]
               else "no key %s in the registry" % name)
        out.append("token: orphan object(s) %s: %s (%s)" % (
            label, ", ".join("%s id %s" % (o.get("class"), o.get("id")) for o in objs), why))
    return out


def check_audit(reg, recs, expect=()):
    """Invariant A."""
    out = []
    ok = [r for r in recs if "method" in r and r.get("result") == "OK"]
    committed = [r for r in ok if "replay_of" not in r]
    replays = [r for r in ok if "replay_of" in r]

    def committed_of(methods):
        idx = collections.defaultdict(list)
        for r in committed:
            if short_method(r.get("method")) in methods:
                idx[(r.get("key"), r.get("version"))].append(r)
        return idx

    makes_first, makes_next = committed_of(MAKE_FIRST), committed_of(MAKE_NEXT)
    destroys = committed_of(DESTROY)
    for name, vers in sorted(reg["versions"].items()):
        if name.startswith(OWN_PREFIX):
            continue
        for ver, v in sorted(vers.items()):
            idx, meths = (makes_first, MAKE_FIRST) if ver == 1 else (makes_next, MAKE_NEXT)
            got = idx.get((name, ver), [])
            if len(got) != 1:
                out.append("audit: key %s version %d has %d %s records naming it%s" % (
                    name, ver, len(got), "/".join(meths),
                    (": " + "; ".join(_rec_str(r) for r in got)) if got else
                    " (a change without an audit record)"))
            if v["state"] == DESTROYED:
                got = destroys.get((name, ver), [])
                if len(got) != 1:
                    out.append("audit: key %s version %d is destroyed and has %d "
                               "DestroyKeyVersion records naming it%s" % (
                                   name, ver, len(got),
                                   (": " + "; ".join(_rec_str(r) for r in got)) if got else ""))
    # Records naming what does not exist.
    for idx, what in ((makes_first, "made"), (makes_next, "made"), (destroys, "destroyed")):
        for (name, ver), rs in sorted(idx.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0)):
            v = reg["versions"].get(name, {}).get(ver)
            if v is None or (what == "destroyed" and v["state"] != DESTROYED):
                for r in rs:
                    out.append("audit: %s says key %s version %s was %s, the registry has %s"
                               % (_rec_str(r), name, ver, what,
                                  "no such version" if v is None else
                                  "it " + STATE_NAMES.get(v["state"], "?")))

    # API keys: as many secret records as generations, revocations once.
    by_principal = collections.defaultdict(list)
    for kid, a in reg["api_keys"].items():
        by_principal[a["principal"]].append(kid)
    secret_recs = [r for r in committed if short_method(r.get("method")) in APIKEY_SECRET]
    for principal, kids in sorted(by_principal.items()):
        names = {principal} | set(kids) | {APIKEY_PREFIX + k for k in kids}
        want = sum(max(reg["api_keys"][k]["next_generation"] - 1, 0) for k in kids)
        got = [r for r in secret_recs if r.get("key") in names]
        if len(got) != want:
            out.append("audit: the API keys of principal %s (%s) had %d secret generations, "
                       "%d CreateApiKey/RotateApiKeySecret records name them%s" % (
                           principal, ", ".join(sorted(kids)), want, len(got),
                           (": " + "; ".join(_rec_str(r) for r in got)) if got else ""))
    revokes = [r for r in committed if short_method(r.get("method")) in APIKEY_REVOKE]
    deletions = [r for r in committed if short_method(r.get("method")) == "DeletePrincipal"]
    for kid, a in sorted(reg["api_keys"].items()):
        got = [r for r in revokes if r.get("key") in (kid, APIKEY_PREFIX + kid)]
        # A principal's deletion revokes its live keys in its own change,
        # under one record naming the principal: revoked as the change began,
        # its record made as it commits (after any wait for the store).
        by_deletion = not got and any(
            r.get("key") == a["principal"] and -1 <= _rec_time(r) - a["revoked"] <= 30
            for r in deletions)
        if a["revoked"] and len(got) != 1 and not by_deletion:
            out.append("audit: API key %s is revoked and %d RevokeApiKey records name it "
                       "(and no DeletePrincipal record names its principal)" % (kid, len(got)))
        if not a["revoked"] and got:
            out.append("audit: API key %s is not revoked, yet %s" % (kid, _rec_str(got[0])))

    # Replays name a committed record of the same method. (The daemon's own
    # actions, methods "cofferd/...", share fixed request ids.)
    by_rid = collections.defaultdict(list)
    for r in committed:
        by_rid[r.get("request_id")].append(r)
    for rid, rs in by_rid.items():
        if len(rs) > 1 and not all(str(r.get("method")).startswith("cofferd/") for r in rs):
            out.append("audit: %d committed records carry request id %s: %s"
                       % (len(rs), rid, "; ".join(_rec_str(r) for r in rs)))
    for r in replays:
        orig = [o for o in by_rid.get(r["replay_of"], [])
                if short_method(o.get("method")) == short_method(r.get("method"))]
        if not orig:
            out.append("audit: %s is a replay of request %s, which has no committed %s record"
                       % (_rec_str(r), r["replay_of"], short_method(r.get("method"))))

    # Expected changes.
    for e in expect:
        mine = [r for r in ok if r.get("request_id") in e.request_ids]
        hits = [r for r in mine if "replay_of" not in r and short_method(r.get("method")) ==
                e.method and (e.key is None or r.get("key") == e.key) and
                (e.version is None or r.get("version") == e.version)]
        if len(hits) != 1:
            out.append("audit: change %r (request ids %s): %d committed records%s" % (
                e, ", ".join(sorted(e.request_ids)), len(hits),
                (": " + "; ".join(_rec_str(r) for r in mine)) if mine else
                " (no OK record of these request ids)"))
            continue
        for r in mine:
            if r is hits[0]:
                continue
            if "replay_of" not in r:
                out.append("audit: change %r: %s answers the same call again without "
                           "\"replay_of\"" % (e, _rec_str(r)))
            elif r["replay_of"] != hits[0].get("request_id"):
                out.append("audit: change %r: %s names replay_of %s, the change is %s"
                           % (e, _rec_str(r), r["replay_of"], hits[0].get("request_id")))
            elif e.version is not None and r.get("version") != e.version:
                out.append("audit: change %r: replay %s names version %s"
                           % (e, _rec_str(r), r.get("version")))
    return out


def check(state_dir, objects, intents_empty=True, allow_intents=False, audit=True, expect=(),
          notes=None):
    """Every invariant except AV; objects: token_objects(...)."""
    reg = read_registry(state_dir)
    out = []
    if intents_empty and reg["has_intents"] and reg["intents"]:
        out.append("registry: %d intent(s) left after start-up: %s" % (
            len(reg["intents"]), "; ".join(
                "%s %s/%s ckaid %s" % ({1: "make", 2: "destroy"}.get(i.get("kind"), i.get("kind")),
                                        i.get("name"), i.get("version"),
                                        i.get("ckaid")) for i in reg["intents"])))
    out += check_token(reg, objects, allow_intents=allow_intents, notes=notes)
    if audit:
        recs, problems = read_audit(state_dir)
        out += problems
        out += check_audit(reg, recs, expect)
    return out


def softhsm_module():
    from daemon_fixture import softhsm_module as m
    return m()


def daemon_objects(d):
    return token_objects(d.config["token"]["module"], d.label, d.pin_file, d.softhsm_conf)


def audit_verify(ctl):
    """[] if `cofferctl audit verify` says intact, else its complaint."""
    r = ctl("audit", "verify", ok=False)
    text = (r.stdout + r.stderr).decode(errors="replace").strip()
    if r.returncode != 0 or "intact" not in text:
        return ["audit verify: exit %d: %s" % (r.returncode, text)]
    return []


def check_daemon(d, ctl=None, expect=(), intents_empty=True, allow_intents=False, audit=True,
                 notes=None):
    """check() for a daemon_fixture.CofferDaemon (running or stopped), plus
    `cofferctl audit verify` when ctl is given and the daemon runs."""
    out = check(d.state_dir, daemon_objects(d), intents_empty=intents_empty,
                allow_intents=allow_intents, audit=audit, expect=expect, notes=notes)
    if ctl is not None and d.running and audit:
        out += audit_verify(ctl)
    return out


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.split("Command line")[1], file=sys.stderr)
        return 2
    top = argv[1]
    hsm = os.path.join(top, "hsm")
    conf = os.path.join(hsm, "softhsm2.conf")
    label = "coffer"
    cfg = os.path.join(top, "cofferd.conf")
    module = None
    if os.path.exists(cfg):
        for line in open(cfg):
            k, _, v = line.partition("=")
            if k.strip() == "module":
                module = v.strip()
            if k.strip() == "uri" and "token=" in v:
                label = v.strip().split("token=", 1)[1].split(";")[0]
    sys.path.insert(0, HERE)
    module = module or softhsm_module()
    objs = token_objects(module, label, os.path.join(hsm, "user.pin"), conf)
    notes = []
    problems = check(os.path.join(top, "state"), objs, notes=notes)
    for p in notes:
        print("note: " + p)
    for p in problems:
        print(p)
    print("%d objects, %d violation(s)" % (len(objs), len(problems)), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
