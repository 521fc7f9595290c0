"""HMAC-signed HTTP requests (proto/request-signing.md), computed locally.

A REST service keeps its clients' secrets in Coffer and checks requests with
Client.verify_http_request; a client that holds its own copy of a secret
signs with these functions (or asks Coffer: Client.sign_http_request). Both
sides build the same canonical request:

    canonical_query("b=2&a=1")  -> "a=1&b=2"
    string_to_sign(...)         -> the eight lines
    sign(secret, ...)           -> 64 lower-case hex
    authorization(...) / parse_authorization(header)
"""

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from .errors import InvalidArgument, ResourceExhausted

LABEL = "COFFER-HMAC-SHA256-HTTP"
QUERY_MAX = 8192
PARAMS_MAX = 256
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = "0123456789abcdefABCDEF"


def _decode(s: str) -> bytes:
    raw = s.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:   # '%'
            if i + 2 >= len(raw):
                raise InvalidArgument("query has a truncated %-escape")
            pair = raw[i + 1:i + 3].decode("latin-1")
            if pair[0] not in _HEX or pair[1] not in _HEX:
                raise InvalidArgument("query has a bad %-escape")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _encode(b: bytes) -> str:
    return "".join(chr(c) if c in _UNRESERVED else "%%%02X" % c for c in b)


def canonical_query(raw_query: str) -> str:
    """The canonical query of what follows '?' (empty: empty): pairs split
    at the first '=', percent-decoded, re-encoded (unreserved bytes as they
    are, others %XX upper-case), sorted by encoded name then value."""
    raw_query = raw_query or ""
    if len(raw_query.encode("utf-8")) > QUERY_MAX:
        raise ResourceExhausted("query longer than %d bytes" % QUERY_MAX)
    pairs: List[Tuple[str, str]] = []
    for piece in raw_query.split("&"):
        if not piece:
            continue
        if len(pairs) == PARAMS_MAX:
            raise ResourceExhausted("query has more than %d parameters" % PARAMS_MAX)
        name, _, value = piece.partition("=")
        pairs.append((_encode(_decode(name)), _encode(_decode(value))))
    pairs.sort(key=lambda p: (p[0].encode("ascii"), p[1].encode("ascii")))
    return "&".join("%s=%s" % p for p in pairs)


def string_to_sign(method: str, path: str, canonical_q: str, body_sha256: bytes,
                   timestamp: int, nonce: str, key_id: str) -> bytes:
    """The eight lines the signature covers (the canonical query already built)."""
    return "\n".join((LABEL, method, path, canonical_q, body_sha256.hex(), str(timestamp),
                      nonce, key_id)).encode("utf-8")


def sign(secret: bytes, method: str, path: str, raw_query: str, body: bytes, timestamp: int,
         nonce: str, key_id: str) -> str:
    """The request's signature (64 lower-case hex) under `secret`."""
    msg = string_to_sign(method, path, canonical_query(raw_query),
                         hashlib.sha256(body).digest(), timestamp, nonce, key_id)
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def authorization(key_id: str, version: int, timestamp: int, nonce: str, sig: str) -> str:
    """The Authorization header value a client sends."""
    return "%s keyId=%s, version=%d, timestamp=%d, nonce=%s, signature=%s" % (
        LABEL, key_id, version, timestamp, nonce, sig)


@dataclass
class Credentials:
    """The parts of an Authorization header a service passes to Coffer."""
    key_id: str
    version: int
    timestamp: int
    nonce: str
    signature: str


_FIELD = re.compile(r"(keyId|version|timestamp|nonce|signature)=([A-Za-z0-9._-]+)\Z")


def parse_authorization(header: str) -> Credentials:
    """Credentials of a `COFFER-HMAC-SHA256-HTTP ...` header value; raises
    InvalidArgument naming what is wrong. Values are checked for shape only:
    Coffer checks the rest (and the signature)."""
    if not isinstance(header, str) or not header.startswith(LABEL + " "):
        raise InvalidArgument("authorization: must start with \"%s \"" % LABEL)
    fields: Dict[str, str] = {}
    for part in header[len(LABEL) + 1:].split(","):
        m = _FIELD.match(part.strip())
        if m is None:
            raise InvalidArgument("authorization: malformed field %r" % part.strip()[:80])
        if m.group(1) in fields:
            raise InvalidArgument("authorization: %s given twice" % m.group(1))
        fields[m.group(1)] = m.group(2)
    missing = [f for f in ("keyId", "version", "timestamp", "nonce", "signature")
               if f not in fields]
    if missing:
        raise InvalidArgument("authorization: lacks %s" % ", ".join(missing))
    if not fields["version"].isdigit() or not fields["timestamp"].isdigit():
        raise InvalidArgument("authorization: version and timestamp must be decimal numbers")
    return Credentials(fields["keyId"], int(fields["version"]), int(fields["timestamp"]),
                       fields["nonce"], fields["signature"])
