#include "cf_audit_verify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <sqlite3.h>

#include "cf_hex.h"
#include "cf_status.h"

#define SIG_MAX 80               /* DER ECDSA P-256: at most 72 bytes */

void
cf_audit_chain_next(const uint8_t prev[32], const char *body, size_t len, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t d[32];

	/* out may be prev: hash first, then overwrite. */
	memset(d, 0, sizeof(d));
	if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, prev, 32) == 1 && EVP_DigestUpdate(c, body, len) == 1)
		EVP_DigestFinal_ex(c, d, NULL);
	EVP_MD_CTX_free(c);
	memcpy(out, d, 32);
}

void
cf_audit_hmac_input(const uint8_t prev[32], uint64_t seq, uint8_t out[40])
{
	memcpy(out, prev, 32);
	for (int i = 0; i < 8; i++)
		out[32 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

size_t
cf_audit_sig_input(const uint8_t prev[32], uint64_t seq, const char *body, size_t len,
		   uint8_t *out)
{
	cf_audit_hmac_input(prev, seq, out);
	memcpy(out + 40, body, len);
	return 40 + len;
}

/* The trail's hex is lower-case, exactly as written: another spelling of the
 * same bytes is an alteration too. */
static int
lower_hex(const char *s, size_t digits, uint8_t *out)
{
	if (digits % 2 != 0 || strspn(s, "0123456789abcdef") < digits)
		return -1;
	return cf_hex_decode(s, out, digits / 2);
}

/* "{\"seq\":N," and the number; -1 if the line does not start so. */
static int
parse_seq(const char *s, uint64_t *seq)
{
	static const char pre[] = "{\"seq\":";
	char *end;

	if (strncmp(s, pre, sizeof(pre) - 1) != 0 || s[sizeof(pre) - 1] < '0' ||
	    s[sizeof(pre) - 1] > '9')
		return -1;
	errno = 0;
	*seq = strtoull(s + sizeof(pre) - 1, &end, 10);
	return errno == 0 && *end == ',' ? 0 : -1;
}

/* The last occurrence of field in body[0..len) (field starts with a comma and
 * a quote, which never stand together inside an escaped string). */
static const char *
last_field(const char *body, size_t len, const char *field)
{
	size_t fl = strlen(field);

	for (size_t i = len >= fl ? len - fl + 1 : 0; i-- > 0;)
		if (memcmp(body + i, field, fl) == 0)
			return body + i;
	return NULL;
}

/* A number field "name":N of body, or 0. */
static uint64_t
num_field(const char *body, size_t len, const char *name)
{
	const char *p = last_field(body, len, name);

	return p != NULL ? strtoull(p + strlen(name), NULL, 10) : 0;
}

struct walk {
	const struct cf_audit_verify_opts *o;
	struct cf_audit_report *rep;
	uint8_t prev[32];        /* chain value of the last record */
	uint64_t line;
	uint64_t last_seal;      /* line of the last seal that verified */
	int anchor_seen;
	int bad;
};

static void
bad(struct walk *w, uint64_t line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The first verdict stands; reading goes on for where the file ends. */
static void
bad(struct walk *w, uint64_t line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (w->bad)
		return;
	w->bad = 1;
	w->rep->ok = 0;
	w->rep->first_bad = line;
	n = snprintf(w->rep->reason, sizeof(w->rep->reason), "record %llu: ",
		     (unsigned long long)line);
	va_start(ap, fmt);
	vsnprintf(w->rep->reason + n, sizeof(w->rep->reason) - (size_t)n, fmt, ap);
	va_end(ap);
}

/* The first record not covered by a seal that verified, for a tail that was
 * cut or rewritten from there on. */
static uint64_t
unsealed_from(const struct walk *w)
{
	return w->last_seal + 1;
}

static int
check_sig(struct walk *w, const uint8_t before[32], uint64_t seq, const char *s,
	  const char *sig, size_t body_len)
{
	size_t digits = (size_t)(s + body_len - 1 - (sig + strlen(CF_AUDIT_SIG_FIELD)));
	uint8_t der[SIG_MAX], *in = NULL;
	EVP_MD_CTX *md = NULL;
	size_t inlen;
	int r = CF_OK, v;

	if (digits > 2 * SIG_MAX || lower_hex(sig + strlen(CF_AUDIT_SIG_FIELD), digits, der) != 0) {
		bad(w, w->line, "malformed seal signature: it was altered");
		goto out;
	}
	if (w->o->pub == NULL) {
		w->rep->unchecked++;
		goto out;
	}
	if ((in = malloc(40 + body_len)) == NULL || (md = EVP_MD_CTX_new()) == NULL) {
		r = cf_nomem();
		goto out;
	}
	inlen = cf_audit_sig_input(before, seq, s, (size_t)(sig - s), in);
	v = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, w->o->pub) == 1 ?
		    EVP_DigestVerify(md, der, digits / 2, in, inlen) : -1;
	if (v == 1) {
		w->rep->seals++;
		w->last_seal = w->line;
	} else if (w->last_seal + 1 < w->line) {
		bad(w, w->line, "its seal does not verify with the audit seal key: it, or one of "
		    "records %llu..%llu since the last good seal, was altered (the chain values "
		    "were recomputed)", (unsigned long long)unsealed_from(w),
		    (unsigned long long)w->line - 1);
	} else {
		bad(w, w->line, "its seal does not verify with the audit seal key: it was altered");
	}
out:
	EVP_MD_CTX_free(md);
	free(in);
	return r;
}

static int
check_hmac(struct walk *w, const uint8_t before[32], uint64_t seq, const char *seal,
	   size_t digits)
{
	uint8_t mac[32], in[40];
	int r;

	if (digits != 64 || lower_hex(seal + strlen(CF_AUDIT_HMAC_FIELD), 64, mac) != 0) {
		bad(w, w->line, "malformed seal: it was altered");
		return CF_OK;
	}
	if (w->o->hmac_verify == NULL) {
		w->rep->unchecked++;
		return CF_OK;
	}
	cf_audit_hmac_input(before, seq, in);
	r = w->o->hmac_verify(w->o->hmac_arg, in, mac, sizeof(mac));
	if (r == CF_E_BAD_SIGNATURE) {
		bad(w, w->line, "its seal does not verify with the token's audit key: the records "
		    "before it were rewritten");
		return CF_OK;
	}
	if (r == CF_OK) {
		w->rep->seals++;
		w->last_seal = w->line;
	}
	return r;
}

/* A start record in which the daemon reported tampering it found. */
static void
check_start(struct walk *w, const char *s, size_t body_len)
{
	static const char tf[] = ",\"tampered\":\"";
	const char *t;
	uint64_t at;
	size_t n = 0;
	char what[400];

	if (last_field(s, body_len, ",\"event\":\"start\"") == NULL ||
	    (t = last_field(s, body_len, tf)) == NULL)
		return;
	t += sizeof(tf) - 1;
	while (t + n < s + body_len && t[n] != '"' && n < sizeof(what) - 1)
		n++;
	memcpy(what, t, n);
	what[n] = '\0';
	at = num_field(s, body_len, ",\"tamper_at\":");
	bad(w, at != 0 && at <= w->line ? at : w->line, "altered while the daemon was stopped "
	    "(found at its start, record %llu): %s", (unsigned long long)w->line, what);
}

/* A record body {"seq":N,"outbox":ID,rest...: ID and rest to outbox_seen. */
static void
outbox_seen(struct walk *w, const char *s, size_t body_len)
{
	static const char field[] = ",\"outbox\":";
	const char *p = memchr(s, ',', body_len), *end = s + body_len;
	int64_t id = 0;

	if (p == NULL || (size_t)(end - p) <= strlen(field) ||
	    memcmp(p, field, strlen(field)) != 0)
		return;
	for (p += strlen(field); p < end && *p >= '0' && *p <= '9'; p++) {
		if (id > (INT64_MAX - (*p - '0')) / 10)
			return;   /* no id the outbox could hold */
		id = id * 10 + (*p - '0');
	}
	if (id > 0 && p < end && *p == ',')
		w->o->outbox_seen(w->o->outbox_arg, id, p + 1, (size_t)(end - p - 1));
}

/* One complete line s[0..n) (without its newline). */
static int
one_line(struct walk *w, const char *s, size_t n)
{
	const struct cf_audit_anchor *an = w->o->anchor;
	const char *ch, *sig, *seal;
	uint8_t c[32], before[32];
	uint64_t seq;
	size_t body_len;
	int r = CF_OK;

	w->line++;
	ch = last_field(s, n, CF_AUDIT_CHAIN_FIELD);
	if (ch == NULL || (size_t)(s + n - ch) != strlen(CF_AUDIT_CHAIN_FIELD) + 64 + 2 ||
	    memcmp(s + n - 2, "\"}", 2) != 0 ||
	    lower_hex(ch + strlen(CF_AUDIT_CHAIN_FIELD), 64, c) != 0 || parse_seq(s, &seq) != 0) {
		bad(w, w->line, "malformed: no sequence number or chain value where it belongs "
		    "(altered or cut)");
		return CF_OK;
	}
	body_len = (size_t)(ch - s);
	w->rep->last_seq = seq;
	memcpy(w->rep->last_chain, c, 32);
	if (an != NULL && seq > an->seq)
		w->rep->beyond_anchor++;
	if (w->bad)
		return CF_OK;
	if (seq > w->line) {
		bad(w, w->line, "missing: the record here is number %llu, so records %llu..%llu "
		    "were deleted (or moved: records reordered)", (unsigned long long)seq,
		    (unsigned long long)w->line, (unsigned long long)seq - 1);
		return CF_OK;
	}
	if (seq < w->line) {
		bad(w, w->line, "the record here is number %llu: a record was inserted, or records "
		    "were reordered", (unsigned long long)seq);
		return CF_OK;
	}
	memcpy(before, w->prev, 32);
	cf_audit_chain_next(before, s, body_len, w->prev);
	if (CRYPTO_memcmp(w->prev, c, 32) != 0) {
		bad(w, w->line, "its chain value does not follow from its content and the record "
		    "before it: it was altered");
		return CF_OK;
	}
	if (an != NULL && seq > an->seq && w->o->outbox_seen != NULL)
		outbox_seen(w, s, body_len);
	if (body_len > 0 && s[body_len - 1] == '"' &&
	    (sig = last_field(s, body_len, CF_AUDIT_SIG_FIELD)) != NULL) {
		if ((r = check_sig(w, before, seq, s, sig, body_len)) != CF_OK || w->bad)
			return r;
		check_start(w, s, body_len);
	} else if (body_len > 0 && s[body_len - 1] == '"' &&
		   (seal = last_field(s, body_len, CF_AUDIT_HMAC_FIELD)) != NULL) {
		r = check_hmac(w, before, seq, seal, (size_t)(s + body_len - 1 - seal) -
			       strlen(CF_AUDIT_HMAC_FIELD));
		if (r != CF_OK || w->bad)
			return r;
	}
	if (an != NULL && seq == an->seq) {
		if (CRYPTO_memcmp(c, an->chain, 32) == 0)
			w->anchor_seen = 1;
		else if (w->last_seal + 1 < w->line)
			bad(w, unsealed_from(w), "record %llu is not the one anchored in the state "
			    "store (its chain value differs): records %llu..%llu, after the last "
			    "good seal, were rewritten", (unsigned long long)seq,
			    (unsigned long long)unsealed_from(w), (unsigned long long)seq);
		else
			bad(w, w->line, "it is not the record anchored in the state store (its "
			    "chain value differs): it was rewritten");
	} else if (an != NULL && w->o->exact && w->anchor_seen) {
		bad(w, w->line, "it follows record %llu, the last one the daemon wrote and "
		    "anchored: it was added to the trail afterwards", (unsigned long long)an->seq);
	}
	return CF_OK;
}

static void
at_end(struct walk *w)
{
	const struct cf_audit_anchor *an = w->o->anchor;
	struct cf_audit_report *rep = w->rep;

	if (rep->torn > 0 && (an == NULL || (!w->o->exact && w->anchor_seen)))
		; /* a crash while writing: cut at the next start */
	else if (rep->torn > 0)
		bad(w, w->line + 1, "cut short: the file ends inside it%s",
		    w->o->exact ? ", after the daemon's last complete record" : "");
	if (an != NULL && !w->anchor_seen && w->line < an->seq) {
		if (w->last_seal >= w->line)
			bad(w, w->line + 1, "missing: the trail ends at record %llu, before record "
			    "%llu anchored in the state store: records %llu..%llu were removed, or "
			    "the file is an older copy", (unsigned long long)w->line,
			    (unsigned long long)an->seq, (unsigned long long)w->line + 1,
			    (unsigned long long)an->seq);
		else
			bad(w, unsealed_from(w), "not authenticated: the trail ends at record "
			    "%llu, before its anchored record %llu, and no good seal covers records "
			    "%llu..%llu: they may have been rewritten", (unsigned long long)w->line,
			    (unsigned long long)an->seq, (unsigned long long)unsealed_from(w),
			    (unsigned long long)w->line);
	}
	rep->records = w->line;
	rep->unsealed = w->line - w->last_seal;
}

/* One line of f: its length in the file (newline included; 0 at the end),
 * whether it ended with a newline (*nl), and at most cap of its bytes in
 * buf (*kept). A line longer than any record is read to its end without
 * being kept: a hostile file with a line of gigabytes costs no memory
 * (before, getline held it whole). */
static size_t
line_in(FILE *f, char *buf, size_t cap, size_t *kept, int *nl)
{
	size_t n = 0;
	int c;

	*kept = 0;
	*nl = 0;
	while ((c = getc_unlocked(f)) != EOF) {
		if (*kept < cap)
			buf[(*kept)++] = (char)c;
		n++;
		if (c == '\n') {
			*nl = 1;
			break;
		}
	}
	return n;
}

int
cf_audit_verify_file(const char *path, const struct cf_audit_verify_opts *o,
		     struct cf_audit_report *rep)
{
	struct walk w;
	FILE *f = NULL;
	char buf[CF_AUDIT_LINE_MAX + 2];
	size_t got, kept;
	off_t at = 0;
	int r = CF_OK, nl;

	memset(rep, 0, sizeof(*rep));
	memset(&w, 0, sizeof(w));
	w.o = o;
	w.rep = rep;
	rep->ok = 1;
	if ((f = fopen(path, "re")) == NULL) {
		r = cf_error(errno == ENOENT ? CF_E_NOT_FOUND : CF_E_IO, "cannot read %s: %s",
			     path, strerror(errno));
		goto out;
	}
	while ((o->limit == 0 || at < o->limit) &&
	       (got = line_in(f, buf, sizeof(buf), &kept, &nl)) > 0) {
		if (!nl) {                          /* the end of the file, mid-line */
			rep->torn = (off_t)got;
			break;
		}
		if (kept < got) {                   /* too long to be a record */
			at += (off_t)got;
			rep->good_size = at;
			bad(&w, ++w.line, "longer than any record the daemon writes: altered");
			continue;
		}
		buf[got - 1] = '\0';
		at += (off_t)got;
		rep->good_size = at;
		if (got - 1 > CF_AUDIT_LINE_MAX)
			bad(&w, ++w.line, "longer than any record the daemon writes: altered");
		else if ((r = one_line(&w, buf, got - 1)) != CF_OK)
			goto out;
	}
	if (ferror(f)) {
		r = cf_error(CF_E_IO, "reading %s: %s", path, strerror(errno));
		goto out;
	}
	at_end(&w);
out:
	if (f != NULL)
		fclose(f);
	return r;
}

int
cf_audit_pubkey_parse(const char *pem, size_t len, EVP_PKEY **out)
{
	BIO *b = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *k = b != NULL ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;

	BIO_free(b);
	if (k == NULL)
		return cf_error(CF_E_INVALID_ARG, "not a PEM public key");
	if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC || EVP_PKEY_get_bits(k) != 256) {
		EVP_PKEY_free(k);
		return cf_error(CF_E_WRONG_KEY_TYPE, "the audit seal key is an EC P-256 key; this "
				"one is not");
	}
	*out = k;
	return CF_OK;
}

int
cf_audit_pubkey_load(const char *pem_path, EVP_PKEY **out)
{
	char buf[4096];
	FILE *f = fopen(pem_path, "re");
	size_t n;
	int r;

	if (f == NULL)
		return cf_error(CF_E_IO, "cannot read %s: %s", pem_path, strerror(errno));
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if ((r = cf_audit_pubkey_parse(buf, n, out)) != CF_OK)
		r = cf_error(r, "%s: not a PEM EC P-256 public key", pem_path);
	return r;
}

int
cf_audit_anchor_read(const char *db_path, struct cf_audit_anchor *out)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	struct cf_audit_anchor a;
	const char *hex;
	int r, rc;

	memset(&a, 0, sizeof(a));
	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "SELECT seq, chain, clean, time FROM audit_anchor", -1, &st,
			       NULL) != SQLITE_OK) {
		r = cf_error(CF_E_IO, "cannot read the audit anchor in %s: %s", db_path,
			     db != NULL ? sqlite3_errmsg(db) : "out of memory");
		goto out;
	}
	if ((rc = sqlite3_step(st)) == SQLITE_DONE) {
		r = cf_error(CF_E_NOT_FOUND, "%s holds no audit anchor (the trail was never "
			     "anchored)", db_path);
		goto out;
	}
	if (rc != SQLITE_ROW) {
		r = cf_error(CF_E_IO, "cannot read the audit anchor in %s: %s", db_path,
			     sqlite3_errmsg(db));
		goto out;
	}
	hex = (const char *)sqlite3_column_text(st, 1);
	if (hex == NULL || strlen(hex) != 64 || lower_hex(hex, 64, a.chain) != 0 ||
	    sqlite3_column_int64(st, 0) <= 0) {
		r = cf_error(CF_E_IO, "the audit anchor in %s is malformed (its record number must "
			     "be positive and its chain value 64 lowercase hex digits): give the "
			     "anchor to check with --anchor SEQ:CHAIN instead", db_path);
		goto out;
	}
	a.seq = (uint64_t)sqlite3_column_int64(st, 0);
	a.clean = sqlite3_column_int(st, 2) != 0;
	a.time = sqlite3_column_int64(st, 3);
	/* One row per replica name (schema 9); a SQLite store has one daemon,
	 * so a second row means the replica was renamed: which trail is which
	 * cannot be told from here. */
	if ((rc = sqlite3_step(st)) != SQLITE_DONE && rc != SQLITE_ROW) {
		r = cf_error(CF_E_IO, "cannot read the audit anchor in %s: %s", db_path,
			     sqlite3_errmsg(db));
		goto out;
	}
	if (rc == SQLITE_ROW) {
		r = cf_error(CF_E_INVALID_ARG, "%s holds the audit anchors of several replica "
			     "names ([state] replica was changed); give the anchor to check with "
			     "--anchor SEQ:CHAIN instead", db_path);
		goto out;
	}
	*out = a;
	r = CF_OK;
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return r;
}

int
cf_audit_anchor_parse(const char *s, struct cf_audit_anchor *out)
{
	struct cf_audit_anchor a;
	const char *colon = strchr(s, ':');
	char *end;

	memset(&a, 0, sizeof(a));
	errno = 0;
	if (colon == NULL || s[0] < '0' || s[0] > '9' ||
	    (a.seq = strtoull(s, &end, 10)) == 0 || errno != 0 || end != colon ||
	    strlen(colon + 1) != 64 || lower_hex(colon + 1, 64, a.chain) != 0)
		return cf_error(CF_E_INVALID_ARG, "an anchor is SEQ:CHAIN (the record's number and "
				"its 64 lower-case hex chain value)");
	*out = a;
	return CF_OK;
}

void
cf_audit_lines_free(char **lines, size_t n)
{
	for (size_t i = 0; lines != NULL && i < n; i++)
		free(lines[i]);
	free(lines);
}
