"""The exceptions of the Coffer client: one per gRPC status a call can end
with, all under CofferError.

Every exception carries the gRPC status (``.code``, a ``grpc.StatusCode``)
and the daemon's own text (``.message``), unchanged: cofferd's messages say
what failed and what to do, so they are what a caller shows. Failures found
locally (a pinned identity that does not match, a credentials file readable
by others, a reply that fails authentication) use the same classes with a
message written here.
"""

from typing import Dict, Optional, Type

import grpc


class CofferError(Exception):
    """A call that did not succeed.

    code            the gRPC status (grpc.StatusCode)
    message         the daemon's message, or the local reason
    method          the RPC's path ("/coffer.v1.KeyService/Sign"), when known
    retry_after_ms  RESOURCE_EXHAUSTED by a rate limit: when a token is back
    request_id      the daemon's x-request-id of the call, when it sent one
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: Optional[grpc.StatusCode] = None,
                 method: Optional[str] = None, retry_after_ms: Optional[int] = None,
                 request_id: Optional[str] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.method = method
        self.retry_after_ms = retry_after_ms
        self.request_id = request_id

    def __str__(self) -> str:
        return "%s: %s" % (self.code.name, self.message)


class InvalidArgument(CofferError):
    """Malformed input: a bad name, a missing field, a blob that does not decrypt."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CofferError):
    """No such key, version, principal or API key."""
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CofferError):
    """The name (or a uid/gid of a principal) is taken."""
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CofferError):
    """No grant for this operation on this key, or the key's own limit."""
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CofferError):
    """The caller, its signature or its session was refused, or the daemon
    is not the pinned one."""
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(CofferError):
    """A size limit, a rate limit (see retry_after_ms) or a full table."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CofferError):
    """The key's type, purpose or state does not allow it, or the call must
    be sealed."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(CofferError):
    """cofferd is not reachable, or its token or store is unavailable."""
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(CofferError):
    """The method is not served on this socket."""
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(CofferError):
    """The call's deadline passed."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(CofferError):
    """The call was cancelled (the daemon stopped while it ran)."""
    code = grpc.StatusCode.CANCELLED


class Aborted(CofferError):
    """A conflict; retrying may work."""
    code = grpc.StatusCode.ABORTED


class Internal(CofferError):
    """A bug, an unexpected token failure, or a reply this client could not
    read (then the call may have run)."""
    code = grpc.StatusCode.INTERNAL


_BY_CODE: Dict[grpc.StatusCode, Type[CofferError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, PermissionDenied,
                              Unauthenticated, ResourceExhausted, FailedPrecondition,
                              Unavailable, Unimplemented, DeadlineExceeded, Cancelled,
                              Aborted, Internal)
}
_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}
# As libcoffer's table: OUT_OF_RANGE is an invalid argument; UNKNOWN and
# DATA_LOSS are internal.
_BY_CODE[grpc.StatusCode.OUT_OF_RANGE] = InvalidArgument
_BY_CODE[grpc.StatusCode.UNKNOWN] = Internal
_BY_CODE[grpc.StatusCode.DATA_LOSS] = Internal


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric status (SealedResult.code,
    ItemStatus.code); UNKNOWN for a number gRPC does not define."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def error_for(code: grpc.StatusCode, message: str, **kw) -> CofferError:
    """The exception for a status `code` with `message`."""
    cls = _BY_CODE.get(code, CofferError)
    return cls(message, code=code, **kw)
