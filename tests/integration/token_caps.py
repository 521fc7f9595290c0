"""What the daemon's token can do (AdminService/GetTokenInfo), for Python
suites that run on either token (COFFER_TEST_TOKEN; tests/support/
cf_test_caps.h is the C side). A case that needs a capability the token
lacks is skipped by capability, never by token name: first the daemon's
refusal is checked (FAILED_PRECONDITION with its exact text), then
"SKIP <case>: token lacks <capability> (<why>)" is printed and kept for the
list printed when the process exits.

    caps = TokenCaps(client)          # a coffer.Client with an admin socket
    if caps.has("aes-256", "test_x: the envelope part"): ...
    @needs("aes-256", "hmac-sha256")  # on a TestCase method; self.caps
"""
import atexit
import functools
import sys
import unittest

import coffer
from coffer import pb

SKIPPED = []   # "<case>: token lacks <capability> (<why>)"
API_KEYS = "api-keys"


def type_name(t):
    """pb.EC_P256 -> "ec-p256"."""
    return pb.KeyType.Name(t).lower().replace("_", "-")


def _note(what, capability, why):
    line = "%s: token lacks %s (%s)" % (what, capability, why)
    SKIPPED.append(line)
    print("SKIP " + line, file=sys.stderr, flush=True)


def _summary():
    print("\nskipped by capability (%d):" % len(SKIPPED), file=sys.stderr)
    for line in SKIPPED:
        print("  " + line, file=sys.stderr)
    if not SKIPPED:
        print("  none: the token has every capability the cases need", file=sys.stderr)
    sys.stderr.flush()



def _check(cond, text):
    if not cond:
        raise AssertionError(text)


class TokenCaps:
    _summary_due = False

    def __init__(self, client):
        # The list at exit, once a daemon was asked (not when nothing ran).
        if not TokenCaps._summary_due:
            TokenCaps._summary_due = True
            atexit.register(_summary)
        self.c = client
        self.info = client.get_token_info()
        self.types = {type_name(k.type): k for k in self.info.key_types}

    def can(self, capability):
        """Without checks or notes: "<type>" (generate), "import:<type>", "api-keys"."""
        if capability == API_KEYS:
            return self._api_keys_line() is None
        if capability.startswith("import:"):
            return self.types[capability[7:]].can_import
        return self.types[capability].can_generate

    def _api_keys_line(self):
        lines = [u for u in self.info.unavailable if u.startswith("API keys are not available")]
        return lines[0] if lines else None

    def _stated(self, kind, why):
        """A reason GetTokenInfo states: the type's own, or within an unavailable line."""
        return bool(why) and (why == kind.missing or any(why in u for u in self.info.unavailable))

    def has(self, capability, what):
        """True when the token can; else the refusal checked, the skip of
        `what` noted, False."""
        if self.can(capability):
            return True
        if capability == API_KEYS:
            line = self._api_keys_line()
            try:
                self.c.create_api_key("tester")
                raise AssertionError("CreateApiKey succeeded on a token that lists: " + line)
            except coffer.FailedPrecondition as e:
                _check(e.message == line, "CreateApiKey refused with %r, not %r"
                       % (e.message, line))
            _note(what, "API keys", line)
            return False
        if capability.startswith("import:"):
            t = capability[7:]
            kind, prefix = self.types[t], "this token cannot import %s keys: " % t
            try:
                self.c.import_key("caps-refused", t, bytes(range(64)))
                raise AssertionError("ImportKey of %s succeeded; GetTokenInfo says no" % t)
            except coffer.FailedPrecondition as e:
                why = e.message[len(prefix):] if e.message.startswith(prefix) else ""
                _check(self._stated(kind, why), "ImportKey of %s refused with %r, not %r and "
                       "a reason GetTokenInfo states" % (t, e.message, prefix))
            _note(what, "%s imports" % t, why)
            return False
        kind = self.types[capability]
        expect = "this token cannot generate %s keys: %s" % (capability, kind.missing)
        try:
            self.c.create_key("caps-refused", capability)
            raise AssertionError("CreateKey of %s succeeded; GetTokenInfo says no" % capability)
        except coffer.FailedPrecondition as e:
            _check(e.message == expect, "CreateKey refused with %r, not %r" % (e.message, expect))
        _note(what, "%s keys" % capability, kind.missing)
        return False

    def refused_by_token(self, fn, what, capability):
        """For what the token's mechanism list cannot tell (a signature
        scheme of a usable key type, learned when the token first refuses
        it): fn()'s result; or, when the daemon refuses it with
        FAILED_PRECONDITION "this token cannot make <capability>: <why>"
        and GetTokenInfo now lists "<capability>: <why>", the skip noted
        and None."""
        try:
            return fn()
        except coffer.FailedPrecondition as e:
            # From then on GetTokenInfo lists it, with the refusal's reason.
            self.info = self.c.get_token_info()
            whys = [u[len(capability) + 2:] for u in self.info.unavailable
                    if u.startswith(capability + ": ")]
            _check(len(whys) == 1, "%s refused (%r) but GetTokenInfo lists %r"
                   % (capability, e.message, list(self.info.unavailable)))
            expect = "this token cannot make %s: %s" % (capability, whys[0])
            _check(e.message == expect, "%s: refused with %r, not %r"
                   % (capability, e.message, expect))
            _note(what, capability, whys[0])
            return None


def needs(*capabilities):
    """A TestCase method that needs every capability (TokenCaps.can's
    names) of the token behind self.caps: skipped (each lack checked and
    noted) otherwise."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(self):
            lacking = [c for c in capabilities if not self.caps.has(c, fn.__name__)]
            if lacking:
                raise unittest.SkipTest("token lacks " + ", ".join(lacking))
            return fn(self)
        return run
    return wrap
