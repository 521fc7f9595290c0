"""The lower-case names libcoffer and cofferctl use for enum values
("ec-p256", "verify-mac", "rsa-pss", ...), so callers can write names
instead of protobuf numbers."""

from typing import Dict, Iterable, List, Union

from .errors import InvalidArgument

KEY_TYPES: Dict[str, int] = {
    "ec-p256": 1, "ec-p384": 2, "ed25519": 3, "rsa-2048": 4, "rsa-3072": 5, "rsa-4096": 6,
    "hmac-sha256": 7, "hmac-sha384": 8, "hmac-sha512": 9, "aes-256": 10,
}
OPERATIONS: Dict[str, int] = {
    "all": 0, "sign": 1, "verify": 2, "mac": 3, "verify-mac": 4, "wrap": 5, "unwrap": 6,
    "rewrap": 7, "generate-data-key": 8, "get-public-key": 9,
}
HASHES: Dict[str, int] = {"default": 0, "sha256": 1, "sha384": 2, "sha512": 3}
SCHEMES: Dict[str, int] = {"default": 0, "ecdsa": 1, "eddsa": 2, "rsa-pss": 3, "rsa-pkcs1": 4}
VERDICTS: Dict[int, str] = {1: "valid", 2: "bad-signature", 3: "expired", 4: "clock-skew",
                            5: "replayed"}

Name = Union[str, int]


def enum_value(value: Name, table: Dict[str, int], what: str) -> int:
    """The number of `value`: a number as it is, a name looked up in table."""
    if isinstance(value, bool):
        raise InvalidArgument("%s must be a name or a number, not a bool" % what)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value in table:
        return table[value]
    raise InvalidArgument("unknown %s %r: one of %s" % (what, value, ", ".join(table)))


def operations(values: Iterable[Name]) -> List[int]:
    if isinstance(values, (str, int)):
        values = [values]
    return [enum_value(v, OPERATIONS, "operation") for v in values]
