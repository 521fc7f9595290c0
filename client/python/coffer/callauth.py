"""Signed calls with a principal's API key (proto/call-authentication.md).

    string_to_sign(path, body, timestamp, nonce, key_id) -> bytes
    authorization(key_id, timestamp, nonce, signature) -> header value
    ApiKey(id, secret).header(path, body) -> a fresh header for one call
    read_api_key_file(path) / write_api_key_file(path, id, secret)

The body is the serialized request exactly as sent: the client serializes a
request once and sends the bytes it signed.
"""

import hashlib
import hmac
import itertools
import os
import re
import stat
import threading
import time
from typing import Optional, Tuple

from . import forks
from .errors import FailedPrecondition, InvalidArgument

LABEL = "COFFER-HMAC-SHA256"
FILE_MAGIC = "COFFER-API-KEY 1"
FILE_MAX = 512
_ID = re.compile(r"ak_[0-9a-f]{24}\Z")


def check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not _ID.match(key_id):
        raise InvalidArgument("an API key id is \"ak_\" and 24 lower-case hex digits")


def string_to_sign(path: str, body: bytes, timestamp: int, nonce: str, key_id: str) -> bytes:
    """The six lines the HMAC covers, joined by newlines."""
    return "\n".join((LABEL, path, hashlib.sha256(body).hexdigest(), str(timestamp), nonce,
                      key_id)).encode("utf-8")


def signature(secret: bytes, path: str, body: bytes, timestamp: int, nonce: str,
              key_id: str) -> str:
    """The lower-case hex HMAC-SHA256 of the string to sign."""
    return hmac.new(secret, string_to_sign(path, body, timestamp, nonce, key_id),
                    hashlib.sha256).hexdigest()


def authorization(key_id: str, timestamp: int, nonce: str, sig: str) -> str:
    """The `authorization` metadata value, fields in libcoffer's order."""
    return "%s keyId=%s, timestamp=%d, nonce=%s, signature=%s" % (LABEL, key_id, timestamp,
                                                                 nonce, sig)


class ApiKey:
    """An API key id and secret that sign calls. Nonces are a random prefix
    chosen when the key is set and a counter: unique without drawing random
    bytes per call, as libcoffer makes them. A forked child draws a prefix
    of its own (else parent and child would send the same nonces and the
    daemon would refuse one of each pair as replayed)."""

    def __init__(self, key_id: str, secret: bytes) -> None:
        check_key_id(key_id)
        if not 32 <= len(secret) <= 64:
            raise InvalidArgument("an API secret is 32..64 bytes, got %d" % len(secret))
        self.id = key_id
        self._mac = hmac.new(bytes(secret), digestmod=hashlib.sha256)   # keyed once
        self._new_sequence()
        forks.watch(self)

    def _new_sequence(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def header(self, path: str, body: bytes, timestamp: Optional[int] = None) -> str:
        """The authorization value of one call of `path` with `body`."""
        ts = int(time.time()) if timestamp is None else timestamp
        with self._lock:
            nonce = "%s%016x" % (self._prefix, next(self._counter))
        mac = self._mac.copy()
        mac.update(string_to_sign(path, body, ts, nonce, self.id))
        return authorization(self.id, ts, nonce, mac.hexdigest())

    def _after_fork(self) -> None:
        # A new lock too: the old one may be held by a thread the child
        # does not have.
        self._new_sequence()


def parse_api_key_text(text: str, where: str) -> Tuple[str, bytes]:
    """(id, secret) of a credentials file's text."""
    head = FILE_MAGIC + "\nid "
    if not text.startswith(head):
        raise InvalidArgument("%s is not a Coffer API key file (it must start with \"%s\")"
                              % (where, FILE_MAGIC))
    lines = text[len(head):].split("\n")
    if len(lines) < 2 or not lines[1].startswith("secret "):
        raise InvalidArgument("%s: expected an \"id\" line, then a \"secret\" line" % where)
    key_id, hexs = lines[0], lines[1][len("secret "):]
    if len(hexs) % 2 or not 64 <= len(hexs) <= 128:
        raise InvalidArgument("%s: the secret must be 64..128 hex digits" % where)
    try:
        secret = bytes.fromhex(hexs)
    except ValueError:
        raise InvalidArgument("%s: the secret must be hex digits" % where)
    check_key_id(key_id)
    return key_id, secret


def read_api_key_file(path: str) -> ApiKey:
    """The ApiKey of a credentials file (`cofferctl principal add-key --out`),
    refusing one that group or others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidArgument("cannot open API key file %s: %s" % (path, e.strerror))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument("API key file %s is not a regular file" % path)
        if st.st_mode & 0o077:
            raise FailedPrecondition("API key file %s can be read by group or others; "
                                     "chmod 600 it" % path)
        data = os.read(fd, FILE_MAX)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidArgument("%s is not a Coffer API key file (it must start with \"%s\")"
                              % (path, FILE_MAGIC))
    return ApiKey(*parse_api_key_text(text, path))


def write_api_key_file(path: str, key_id: str, secret: bytes) -> None:
    """Write a credentials file, mode 0600; an existing file is never replaced."""
    check_key_id(key_id)
    if not 32 <= len(secret) <= 64:
        raise InvalidArgument("an API secret is 32..64 bytes, got %d" % len(secret))
    text = "%s\nid %s\nsecret %s\n" % (FILE_MAGIC, key_id, bytes(secret).hex())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        raise InvalidArgument("cannot create API key file %s: it exists (it is never "
                              "replaced: choose another name)" % path)
    except OSError as e:
        raise InvalidArgument("cannot create API key file %s: %s" % (path, e.strerror))
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise InvalidArgument("cannot write API key file %s: %s" % (path, e.strerror))
    os.close(fd)
