#!/usr/bin/python3
"""check_error_hygiene — every failure status carries its own message.

A static scan of common/, client/, daemon/ and pkcs11/ (*.c) for the three shapes that
hand a caller a status without text, so that cf_error_detail() still holds an
earlier failure's detail (issue 14, defect 1):

  (a) bare returns:            return CF_E_NOMEM;          -> cf_nomem() / cf_error()
  (b) literal assignments:     r = CF_E_NOT_FOUND;         -> r = cf_error(...)
  (c) literal conditionals:    return ok ? CF_OK : CF_E_X; -> ... : cf_error(CF_E_X, ...)

(b) has sentinels: `int r = CF_E_INTERNAL;` that every path overwrites before
it returns. Those are listed in SENTINELS below, by file:function and status,
each with the reason it cannot leak; anything else fails. Prints file:line
for each finding; exit status 1 if there is one.

    check_error_hygiene.py [SOURCE_DIR]     (default: $COFFER_SOURCE_DIR or ..)
"""

import os
import re
import sys

DIRS = ("common", "client", "daemon", "pkcs11")

# (file, function, status): why this literal never reaches a caller as-is.
SENTINELS = {
	("common/cf_session.c", "cf_session_eph_new", "CF_E_INTERNAL"):
		"every path assigns r (cf_nomem, cf_error or CF_OK) before out:",
	("client/libcoffer_session.c", "lc_sealed_call", "CF_E_INTERNAL"):
		"the retry loop assigns r on its first pass",
	("client/libcoffer_transport.c", "lc_transport", "CF_E_INTERNAL"):
		"every goto out follows r = cf_error(...) or r = <callee status>",
	("daemon/apikeys.c", "apikeys_verify", "CF_E_BAD_SIGNATURE"):
		"loop sentinel: a remaining CF_E_BAD_SIGNATURE becomes cf_error(UNAUTHENTICATED)",
	("daemon/rpc.c", "peer_identify", "CF_E_DENIED"):
		"its only caller answers the fixed text 'caller identity unavailable'",
	("pkcs11/p11_ops.c", "ecdsa_from_der", "CF_E_BAD_SIGNATURE"):
		"static; its only caller replaces any failure with cf_error(BAD_SIGNATURE)",
	("pkcs11/p11_pubkey.c", "p11_ec_pkey", "CF_E_INVALID_ARG"):
		"every path assigns r or returns cf_error() before out:",
	("pkcs11/p11_pubkey.c", "p11_rsa_pkey", "CF_E_INTERNAL"):
		"every path assigns r (cf_error or CF_OK) before out:",
}

BARE_RETURN = re.compile(r"\breturn\s*\(?\s*(CF_E_[A-Z_]+)\s*\)?\s*;")
ASSIGN = re.compile(r"(?<![=!<>])=\s*(CF_E_[A-Z_]+)\s*;")
TERNARY = re.compile(r"\?\s*(CF_E_[A-Z_]+)\s*:|:\s*(CF_E_[A-Z_]+)\s*[;)]")
# A BSD-style definition: the name at column 0, followed by "(".
FUNC = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\(", re.M)


def strip_comments_and_strings(text):
	"""Blank out comments and string/char literals, keeping offsets and newlines."""
	out = []
	i, n = 0, len(text)
	while i < n:
		c = text[i]
		if text.startswith("/*", i):
			j = text.find("*/", i + 2)
			j = n if j < 0 else j + 2
			out.append(re.sub(r"[^\n]", " ", text[i:j]))
			i = j
		elif text.startswith("//", i):
			j = text.find("\n", i)
			j = n if j < 0 else j
			out.append(" " * (j - i))
			i = j
		elif c in "\"'":
			j = i + 1
			while j < n and text[j] != c:
				j += 2 if text[j] == "\\" else 1
			j = min(j + 1, n)
			out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j - 1]) + c)
			i = j
		else:
			out.append(c)
			i += 1
	return "".join(out)


def function_at(code, pos):
	name = None
	for m in FUNC.finditer(code, 0, pos):
		name = m.group(1)
	return name or "?"


def scan(src):
	findings, used = [], set()
	for d in DIRS:
		for root, _, files in os.walk(os.path.join(src, d)):
			for f in sorted(files):
				if not f.endswith(".c"):
					continue
				path = os.path.join(root, f)
				rel = os.path.relpath(path, src)
				with open(path, encoding="utf-8", errors="replace") as fh:
					code = strip_comments_and_strings(fh.read())

				def line(pos):
					return code.count("\n", 0, pos) + 1

				for m in BARE_RETURN.finditer(code):
					findings.append("%s:%d: bare `return %s;` leaves the previous detail: "
							"use cf_error(%s, \"...\") (cf_nomem() for CF_E_NOMEM)"
							% (rel, line(m.start()), m.group(1), m.group(1)))
				for m in ASSIGN.finditer(code):
					key = (rel, function_at(code, m.start()), m.group(1))
					if key in SENTINELS:
						used.add(key)
						continue
					findings.append("%s:%d: %s() assigns the literal %s: a status without "
							"its own text; use cf_error(), or list it in SENTINELS "
							"with the reason it is always overwritten"
							% (rel, line(m.start()), key[1], m.group(1)))
				for m in TERNARY.finditer(code):
					st = m.group(1) or m.group(2)
					# `case CF_E_X:` labels and `x == CF_E_X ?` tests are not values.
					pre = code[max(0, m.start() - 40):m.start()]
					if re.search(r"\bcase\s*$", pre):
						continue
					# The status argument of cf_error() itself has its text.
					stmt = code[max(code.rfind(";", 0, m.start()),
							code.rfind("{", 0, m.start()),
							code.rfind("}", 0, m.start())) + 1:m.start()]
					if re.search(r"\bcf_error\s*\(\s*[^,]*$", stmt):
						continue
					findings.append("%s:%d: conditional yields the literal %s: use "
							"cf_error(%s, \"...\") in that branch"
							% (rel, line(m.start()), st, st))
	for key in sorted(set(SENTINELS) - used):
		findings.append("%s: SENTINELS lists %s() = %s, which is no longer there: "
				"drop it from the list" % key)
	return findings


def main():
	src = (sys.argv[1] if len(sys.argv) > 1 else
	       os.environ.get("COFFER_SOURCE_DIR") or
	       os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
	if not os.path.isdir(os.path.join(src, "daemon")):
		print("check_error_hygiene: %s is not a Coffer source tree" % src, file=sys.stderr)
		return 2
	findings = scan(src)
	for f in findings:
		print(f)
	print("check_error_hygiene: %d finding(s) in %s/{%s}/*.c"
	      % (len(findings), src, ",".join(DIRS)))
	return 1 if findings else 0


if __name__ == "__main__":
	sys.exit(main())
