"""coffer: a Python client of the Coffer key service (cofferd).

    from coffer import Client
    c = Client(socket="/run/coffer/service.sock", identity="/etc/coffer/identity.pem",
               api_key_file="/etc/billing/coffer.key")
    blob = c.wrap("billing-data", b"card 4111...", {"tenant": "t1"}).ciphertext
    plain = c.unwrap("billing-data", blob, {"tenant": "t1"}).plaintext

Pure Python over python3-grpcio and python3-cryptography: sealed sessions
(proto/session-protocol.md) and API-key call signatures
(proto/call-authentication.md) are done here, as libcoffer does them. The
protocol documents are normative and carry test vectors, which this package
is tested against.

Modules: client (Client; check_items and item_errors for batch results),
errors (CofferError and one class per status), session (the sealed
channel), callauth (signed calls, credentials files), reqsign (HMAC-signed
HTTP requests computed locally), names (enum names), methods (which socket,
which calls are sealed, which are not repeated), v1 (generated protobuf).
"""

from .callauth import ApiKey, read_api_key_file, write_api_key_file
from .client import Client, check_items, item_errors, pb
from .errors import (Aborted, AlreadyExists, Cancelled, CofferError, DeadlineExceeded,
                     FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied,
                     ResourceExhausted, Unauthenticated, Unavailable, Unimplemented)
from .names import VERDICTS
from .reqsign import canonical_query, parse_authorization

__all__ = [
    "Client", "pb", "check_items", "item_errors", "ApiKey", "read_api_key_file",
    "write_api_key_file", "canonical_query", "parse_authorization", "VERDICTS",
    "CofferError", "Aborted", "AlreadyExists", "Cancelled", "DeadlineExceeded",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "PermissionDenied",
    "ResourceExhausted", "Unauthenticated", "Unavailable", "Unimplemented",
]
__version__ = "0.2.0"
