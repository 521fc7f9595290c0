#!/usr/bin/python3
"""Protocol strings are UTF-8 text without NUL (issue 14, defects 2 and 3),
sent as raw wire bytes to a real cofferd:

* a NUL in a string field is refused (INVALID_ARGUMENT, naming the field
  and the offset) instead of being read up to the NUL: a SealedCall whose
  record was sealed over ".../GetKey" but whose method is ".../GetKey\\0junk",
  a principal "me\\0" + 1,000,000 bytes (the 128-byte limit holds on the
  whole field);
* invalid UTF-8 in a string field is refused the same way, unsealed and
  sealed, and every answer parses in Python protobuf: status details and
  SealedResult.message are valid UTF-8, the caller's bytes escaped;
* the audit record of such a call is valid UTF-8 JSON.
"""
import json
import os
import time
import unittest

import grpc  # noqa: E402

import coffer_session  # noqa: E402
from daemon_fixture import CofferDaemon  # noqa: E402
from rpc_common import AS, KS, SC, SS, TIMEOUT, pb  # noqa: E402

RULE = "; protocol strings are UTF-8 text without NUL"


def field(num, value):
    """A length-delimited field (wire type 2) with raw bytes."""
    tag, n, out = bytes([num << 3 | 2]), len(value), b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return tag + out + value


class WireStrings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = CofferDaemon()
        cls.d.start()
        cls.audit_path = os.path.join(cls.d.state_dir, "audit.log")
        cls.d.admin_stub().CreateKey(pb.CreateKeyRequest(name="sig-k", type=pb.EC_P256),
                                     timeout=TIMEOUT)

    @classmethod
    def tearDownClass(cls):
        cls.d.cleanup()

    def raw(self, kind, path, body, metadata=None):
        """Send raw request bytes; the response bytes, or the RpcError."""
        call = self.d.channel(kind).unary_unary(path, request_serializer=None,
                                                response_deserializer=None)
        try:
            return call(body, timeout=TIMEOUT, metadata=metadata)
        except grpc.RpcError as e:
            return e

    def refused(self, e, code, details):
        self.assertIsInstance(e, grpc.RpcError, "accepted: %r" % (e,))
        # grpcio shows invalid UTF-8 as U+FFFD (or as Latin-1): compare the exact text.
        self.assertNotIn("\ufffd", e.details())
        self.assertEqual((e.code(), e.details()), (code, details))

    def session(self, kind="service"):
        return coffer_session.Session.open(self.d.channel(kind), self.d.fetch_identity(kind))

    def audit_record(self, request_id):
        """The audit record with this request id, read as UTF-8 JSON."""
        until = time.monotonic() + 10
        while True:
            with open(self.audit_path, "rb") as f:
                lines = f.read().splitlines()
            found = [ln for ln in lines if request_id.encode() in ln]
            if found or time.monotonic() > until:
                break
            time.sleep(0.05)
        self.assertEqual(len(found), 1, "records with %s: %r" % (request_id, found))
        return json.loads(found[0].decode("utf-8"))

    # (a) What runs is what was sealed: no NUL in SealedCall.method.
    def test_sealed_method_with_nul(self):
        s = self.session()
        inner = pb.GetKeyRequest(name="sig-k").SerializeToString()
        sealed = s.seal_call(KS + "GetKey", inner, 0)    # sealed over the short method
        sealed.method = KS + "GetKey\0junk"
        e = self.raw("service", SS + "Call", sealed.SerializeToString())
        self.refused(e, SC.INVALID_ARGUMENT, "field coffer.v1.SealedCall.method: a NUL byte "
                     "at offset 28" + RULE)
        # The refusal used no sequence number: the session goes on at 0.
        code, message, resp = s.call(KS + "GetKey", inner)
        self.assertEqual((code, message), (0, ""))
        self.assertEqual(pb.Key.FromString(resp).name, "sig-k")

    # (b) The principal's 128-byte limit holds on the whole field.
    def test_open_session_principal(self):
        hs = coffer_session.Handshake(self.d.fetch_identity())
        req = hs.request(pb)
        req.principal = ""
        body = req.SerializeToString()
        e = self.raw("service", SS + "OpenSession",
                     body + field(4, b"me\0" + b"x" * 1000000))
        self.refused(e, SC.INVALID_ARGUMENT, "field coffer.v1.OpenSessionRequest.principal: "
                     "a NUL byte at offset 2" + RULE)
        e = self.raw("service", SS + "OpenSession", body + field(4, b"m" * 129))
        self.refused(e, SC.INVALID_ARGUMENT, "principal longer than 128 bytes")
        # 128 bytes is within the limit (the claim is the caller's own business here).
        r = self.raw("service", SS + "OpenSession", body + field(4, b"m" * 128))
        if isinstance(r, grpc.RpcError):
            self.assertNotIn("longer than", r.details())
        else:
            self.assertEqual(len(pb.OpenSessionResponse.FromString(r).session_id), 16)

    # (c) Invalid UTF-8 in a key name, unsealed.
    def test_key_name_invalid_utf8(self):
        for method, num, name in (("GetKey", 1, "GetKeyRequest.name"),
                                  ("Sign", 1, "SignRequest.key")):
            e = self.raw("service", KS + method, field(num, b"k\xbdz"))
            self.refused(e, SC.INVALID_ARGUMENT, "field coffer.v1.%s: invalid UTF-8 at "
                         "offset 1%s" % (name, RULE))
        # Overlong, surrogate and above U+10FFFF, nested in a message.
        for bad, at in ((b"ab\xc0\xaf", 2), (b"\xed\xa0\x80", 0), (b"k\xf4\x90\x80\x80", 1)):
            e = self.raw("service", KS + "VerifyRequestSignature",
                         field(1, field(1, bad)) + field(2, b"00"))
            self.refused(e, SC.INVALID_ARGUMENT, "field coffer.v1.HttpRequestParts.key: "
                         "invalid UTF-8 at offset %d%s" % (at, RULE))

    # (d) Where the daemon echoes the caller's text, the reply stays UTF-8
    # text: hostile bytes are refused, control characters escaped.
    def test_echoed_names(self):
        e = self.raw("admin", AS + "GetPrincipal", field(1, b"no\xbdbody"))
        self.refused(e, SC.INVALID_ARGUMENT, "field coffer.v1.GetPrincipalRequest.name: "
                     "invalid UTF-8 at offset 2" + RULE)
        e = self.raw("admin", AS + "GetPrincipal", field(1, b"no\x1b[2Jbody"))
        self.refused(e, SC.NOT_FOUND, "no principal no\\x1b[2Jbody")
        e = self.raw("service", SS + "OpenSession", field(4, b"\xbd"))
        self.refused(e, SC.INVALID_ARGUMENT, "field coffer.v1.OpenSessionRequest.principal: "
                     "invalid UTF-8 at offset 0" + RULE)

    # (e) A sealed inner call: the SealedResult parses, its message is
    # UTF-8 text (hostile bytes refused, control characters escaped).
    def test_sealed_result_parses(self):
        s, sa = self.session(), self.session("admin")
        code, message, _ = sa.call(AS + "GetPrincipal", field(1, b"no\xbdbody"))
        self.assertEqual((code, message), (SC.INVALID_ARGUMENT.value[0],
                         "field coffer.v1.GetPrincipalRequest.name: invalid UTF-8 at offset 2"
                         + RULE))
        code, message, _ = s.call(KS + "GetKey", field(1, b"k\xbdz"))
        self.assertEqual((code, message), (SC.INVALID_ARGUMENT.value[0],
                         "field coffer.v1.GetKeyRequest.name: invalid UTF-8 at offset 1" + RULE))
        code, message, _ = sa.call(AS + "GetPrincipal", field(1, b"no\x07body"))
        self.assertEqual((code, message), (SC.NOT_FOUND.value[0], "no principal no\\x07body"))

    # (f) The audit records of such calls are UTF-8 JSON.
    def test_audit_records_utf8(self):
        sa = self.session("admin")
        for rid, body, result, key in (
                ("wire-strings-audit-1", field(1, b"no\xbdbody"), "INVALID_ARGUMENT", ""),
                ("wire-strings-audit-2", field(1, b"no\x07body"), "NOT_FOUND", "no\x07body")):
            try:
                sa.call(AS + "GetPrincipal", body, metadata=[("x-request-id", rid)])
            except coffer_session.SessionError:
                sa = self.session("admin")      # the reply did not parse: checked in (e)
            rec = self.audit_record(rid)
            self.assertEqual((rec["method"], rec["result"], rec["sealed"], rec["key"]),
                             (AS + "GetPrincipal", result, True, key))
        rid = "wire-strings-audit-3"
        self.raw("service", KS + "Sign", field(1, b"k\xbdz"), metadata=[("x-request-id", rid)])
        rec = self.audit_record(rid)
        self.assertEqual((rec["method"], rec["result"], rec["sealed"], rec["key"]),
                         (KS + "Sign", "INVALID_ARGUMENT", False, ""))

    # TailAudit answers the file's lines as strings: a line altered to hold
    # bytes that are not UTF-8 comes back escaped, and the answer parses.
    def test_tail_audit_altered_line(self):
        rid = "wire-strings-tail-1"
        self.raw("service", KS + "GetKey", pb.GetKeyRequest(name="tail-k").SerializeToString(),
                 metadata=[("x-request-id", rid)])
        self.audit_record(rid)
        with open(self.audit_path, "r+b") as f:
            data = f.read()
            at = data.index(b'"key":"tail-k"') + len(b'"key":"')
            f.seek(at)
            f.write(b"\xbd")      # same length: "tail-k" becomes "\xbdail-k"
        recs = self.d.admin_stub().TailAudit(pb.TailAuditRequest(count=1000),
                                             timeout=TIMEOUT).records
        hit = [r for r in recs if rid in r]
        self.assertEqual(len(hit), 1)
        self.assertIn('"key":"\\xbdail-k"', hit[0])

if __name__ == "__main__":
    unittest.main(verbosity=2)
