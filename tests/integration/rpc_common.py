"""What the Python tests against cofferd share, so that each test file starts
with its own matter:

    from rpc_common import KS, SC, TIMEOUT, S, pb, call_authorization

S, pb          the stubs generated from proto/ (daemon_fixture.stubs())
SC             grpc.StatusCode
TIMEOUT        seconds per RPC
KS, AS, SS     method path prefixes of KeyService, AdminService, SessionService
call_authorization(key_id, secret, path, body, ...)
               the "authorization" value of a signed call, written from
               proto/call-authentication.md alone (Python hmac, hashlib)
ModuleDaemon   one daemon for every test of a module
"""

import hashlib
import hmac
import secrets
import time

import grpc

from daemon_fixture import CofferDaemon, stubs

S = stubs()
pb = S.pb
SC = grpc.StatusCode
TIMEOUT = 20

KS = "/coffer.v1.KeyService/"
AS = "/coffer.v1.AdminService/"
SS = "/coffer.v1.SessionService/"

CALL_AUTH_LABEL = "COFFER-HMAC-SHA256"


def string_to_sign(path, body, timestamp, nonce, key_id):
    return "\n".join([CALL_AUTH_LABEL, path, hashlib.sha256(body).hexdigest(), str(timestamp),
                      nonce, key_id]).encode()


def call_authorization(key_id, secret, path, body, timestamp=None, nonce=None):
    """The header value signing `body` (the raw request bytes) sent to `path`;
    now and a fresh random nonce unless given."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_hex(16)
    sig = hmac.new(secret, string_to_sign(path, body, ts, nonce, key_id),
                   hashlib.sha256).hexdigest()
    return "%s keyId=%s, timestamp=%d, nonce=%s, signature=%s" % (CALL_AUTH_LABEL, key_id, ts,
                                                                   nonce, sig)


class ModuleDaemon:
    """One CofferDaemon for every test of a module:

        SHARED = ModuleDaemon()
        setUpModule, tearDownModule = SHARED.set_up, SHARED.tear_down

    SHARED.d is the daemon once set up; tear_down asserts it exits 0.
    config: as CofferDaemon's."""

    def __init__(self, config=None):
        self.config = config
        self.d = None

    def set_up(self):
        self.d = CofferDaemon(config=self.config)
        try:
            self.d.start()
        except Exception:
            self.d.cleanup()
            raise

    def tear_down(self):
        if self.d is not None:
            try:
                self.d.stop()   # asserts exit status 0
            finally:
                self.d.cleanup()
