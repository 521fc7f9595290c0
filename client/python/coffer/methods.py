"""Which socket serves each RPC and which RPCs travel sealed.

The daemon's rules live in common/cf_methods.c; this is the client's copy of
the two facts it needs (tests/integration/test_python_client.py fails when
the two disagree):

  * the socket: KeyService on the service socket, AdminService on the admin
    socket (SessionService on both);
  * "carries secrets" (CF_MF_SECRET): these calls are always sealed in a
    session, exactly as libcoffer seals them. With seal_all=True a Client
    also seals every other KeyService call (for a daemon with
    [session] require_sealed).

API-key call signatures are checked on the service socket only
(proto/call-authentication.md), so only service-socket calls are signed.
"""

from typing import FrozenSet

KEY_SERVICE = "coffer.v1.KeyService"
ADMIN_SERVICE = "coffer.v1.AdminService"
SESSION_SERVICE = "coffer.v1.SessionService"
HEALTH_SERVICE = "grpc.health.v1.Health"

SERVICE = "service"
ADMIN = "admin"

# Methods whose request or response holds secret plaintext (CF_MF_SECRET).
SECRET_METHODS: FrozenSet[str] = frozenset({
    "/coffer.v1.KeyService/Wrap",
    "/coffer.v1.KeyService/Unwrap",
    "/coffer.v1.KeyService/GenerateDataKey",
    "/coffer.v1.AdminService/ImportKey",
    "/coffer.v1.AdminService/CreateApiKey",
    "/coffer.v1.AdminService/RotateApiKeySecret",
})

# KeyService methods that change the daemon's state: a repeat after a lost
# answer would not be the same call. VerifyRequestSignature records the
# nonce of a valid request, so a repeat of a call that ran says
# REPLAYED_NONCE. (SignHttpRequest records nothing: it is repeatable.)
NOT_REPEATABLE: FrozenSet[str] = frozenset({
    "/coffer.v1.KeyService/VerifyRequestSignature",
})


def path(service: str, name: str) -> str:
    """The gRPC path of method `name` of `service`."""
    return "/%s/%s" % (service, name)


def socket_of(method: str) -> str:
    """SERVICE or ADMIN: the socket whose channel carries `method`."""
    return ADMIN if method.startswith("/%s/" % ADMIN_SERVICE) else SERVICE


def must_seal(method: str, seal_all: bool = False) -> bool:
    """Whether a call of `method` goes through a sealed session."""
    if method in SECRET_METHODS:
        return True
    return seal_all and method.startswith("/%s/" % KEY_SERVICE)
