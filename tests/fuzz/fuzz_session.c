/*
 * fuzz_session.c — sealed-session crypto that reads what a peer sent
 * (common/cf_session.c): records, the handshake transcript, the
 * identity key and its signature, the peer's ephemeral key. The daemon's
 * accept path (daemon/session.c, with a real session manager and token) is
 * driven by fuzz_dispatch through SessionService/OpenSession and /Call.
 *
 * Input: byte 0 chooses the operation (mod 5), the rest is its input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_buf.h"
#include "cf_session.h"
#include "cf_status.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cf_session_eph *mine, *peer;
static cf_session_keys *keys;
static const uint8_t sid[CF_SESSION_ID_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14 };

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	uint8_t a[32], b[32], pub[CF_SESSION_PUB_LEN], th[CF_SESSION_TH_LEN];

	(void)argc;
	(void)argv;
	memset(a, 0x11, sizeof(a));
	memset(b, 0x22, sizeof(b));
	memset(th, 0x33, sizeof(th));
	if (cf_session_eph_new(a, &mine) != CF_OK || cf_session_eph_new(b, &peer) != CF_OK)
		abort();
	cf_session_eph_pub(peer, pub);
	if (cf_session_keys_derive(mine, pub, th, sid, &keys) != CF_OK)
		abort();
	return 0;
}

struct in {
	const uint8_t *p, *end;
};

static size_t
left(const struct in *in)
{
	return (size_t)(in->end - in->p);
}

/* Up to n bytes into out (zero-filled past the end of the input). */
static void
get(struct in *in, void *out, size_t n)
{
	size_t k = n < left(in) ? n : left(in);

	memset(out, 0, n);
	memcpy(out, in->p, k);
	in->p += k;
}

/* A string of up to `max` bytes (length byte first), NUL-terminated. */
static char *
get_str(struct in *in, size_t max)
{
	uint8_t n8 = 0;
	size_t n;
	char *s;

	get(in, &n8, 1);
	n = n8 % (max + 1);
	if (n > left(in))
		n = left(in);
	if ((s = malloc(n + 1)) == NULL)
		abort();
	memcpy(s, in->p, n);
	s[n] = '\0';
	in->p += n;
	return s;
}

/* An exact-size heap copy of the rest (ASan sees reads past it). */
static uint8_t *
rest(struct in *in, size_t *n)
{
	uint8_t *b = malloc(left(in) ? left(in) : 1);

	if (b == NULL)
		abort();
	*n = left(in);
	memcpy(b, in->p, *n);
	in->p = in->end;
	return b;
}

static void
transcript(struct in *in)
{
	struct cf_session_hello h;
	uint8_t th[CF_SESSION_TH_LEN], l2[2];
	cf_buf *t = cf_buf_new(1 << 16);
	char *principal;
	uint8_t *spki, *sig;
	size_t spki_len, siglen;

	memset(&h, 0, sizeof(h));
	get(in, &h.version, sizeof(h.version));
	get(in, h.client_pub, sizeof(h.client_pub));
	get(in, h.client_random, sizeof(h.client_random));
	get(in, h.session_id, sizeof(h.session_id));
	get(in, h.server_pub, sizeof(h.server_pub));
	get(in, h.server_random, sizeof(h.server_random));
	get(in, &h.uid, sizeof(h.uid));
	get(in, &h.gid, sizeof(h.gid));
	get(in, &h.lifetime, sizeof(h.lifetime));
	get(in, &h.max_records, sizeof(h.max_records));
	get(in, &h.max_bytes, sizeof(h.max_bytes));
	principal = get_str(in, 255);
	h.principal = principal;
	get(in, l2, 2);
	spki_len = ((size_t)l2[0] << 8 | l2[1]) % 1024;
	if (spki_len > left(in))
		spki_len = left(in);
	if ((spki = malloc(spki_len ? spki_len : 1)) == NULL || t == NULL)
		abort();
	memcpy(spki, in->p, spki_len);
	in->p += spki_len;
	h.spki = spki;
	h.spki_len = spki_len;
	sig = rest(in, &siglen);
	if (cf_session_transcript(&h, t) == CF_OK &&
	    cf_session_transcript_hash(&h, th) == CF_OK)
		(void)cf_session_verify_server(spki, spki_len, th, sig, siglen);
	free(sig);
	free(spki);
	free(principal);
	cf_buf_free(t);
}

static void
pin(struct in *in)
{
	uint8_t l2[2], th[CF_SESSION_TH_LEN] = { 0 };
	char fpr[CF_SESSION_FPR_LEN + 1];
	cf_session_pin *p = NULL;
	uint8_t *spki, *sig;
	size_t spki_len, siglen;

	get(in, l2, 2);
	spki_len = ((size_t)l2[0] << 8 | l2[1]) % 1024;
	if (spki_len > left(in))
		spki_len = left(in);
	if ((spki = malloc(spki_len ? spki_len : 1)) == NULL)
		abort();
	memcpy(spki, in->p, spki_len);
	in->p += spki_len;
	sig = rest(in, &siglen);
	(void)cf_session_fingerprint(spki, spki_len, fpr, sizeof(fpr));
	if (cf_session_pin_new(spki, spki_len, &p) == CF_OK) {
		if (cf_session_verify_pinned(p, th, sig, siglen) == CF_OK)
			abort();   /* nobody signed th */
		cf_session_pin_free(p);
	}
	free(sig);
	free(spki);
}

/* A record from the peer: cf_session_open and its in-place twin agree. */
static void
record(struct in *in)
{
	uint8_t d = 0, *rec, *pt = NULL;
	uint64_t seq;
	char *method;
	size_t reclen, ptlen = 0, ptlen2 = 0;
	int r1, r2;

	get(in, &d, 1);
	get(in, &seq, sizeof(seq));
	method = get_str(in, CF_SESSION_MAX_METHOD + 8);
	rec = rest(in, &reclen);
	r1 = cf_session_open(keys, (d & 1) ? CF_SESSION_C2S : CF_SESSION_S2C, seq, method, rec,
			     reclen, &pt, &ptlen);
	r2 = cf_session_open_in_place(keys, (d & 1) ? CF_SESSION_C2S : CF_SESSION_S2C, seq,
				      method, rec, reclen, &ptlen2);
	if (r1 != r2 || (r1 == CF_OK && (ptlen != ptlen2 || memcmp(pt, rec, ptlen) != 0)))
		abort();
	cf_session_plain_free(pt, ptlen);
	free(rec);
	free(method);
}

/* Seal, maybe alter one bit, open: only the intact record opens, and only
 * with its own direction, sequence number and method. */
static void
roundtrip(struct in *in)
{
	uint8_t ctl[3] = { 0 }, *pt, *out = NULL;
	uint64_t seq;
	char *method;
	size_t len, outlen = 0;
	cf_buf *rec = cf_buf_new((1 << 20) + 64);
	enum cf_session_dir d;
	int r;

	get(in, ctl, sizeof(ctl));
	get(in, &seq, sizeof(seq));
	method = get_str(in, CF_SESSION_MAX_METHOD);
	pt = rest(in, &len);
	d = (ctl[0] & 1) ? CF_SESSION_C2S : CF_SESSION_S2C;
	if (rec == NULL)
		abort();
	if (cf_session_seal(keys, d, seq, method, pt, len, rec) == CF_OK) {
		uint8_t *b = (uint8_t *)cf_buf_peek(rec);
		size_t bl = cf_buf_len(rec);
		int altered = 0;

		if (ctl[0] & 2) {
			b[((size_t)ctl[1] << 8 | ctl[2]) % bl] ^= (uint8_t)(1u << (ctl[0] >> 5));
			altered = 1;
		}
		if (ctl[0] & 4) {
			seq ^= 1;
			altered = 1;
		}
		if (ctl[0] & 8) {
			d = d == CF_SESSION_C2S ? CF_SESSION_S2C : CF_SESSION_C2S;
			altered = 1;
		}
		r = cf_session_open(keys, d, seq, method, b, bl, &out, &outlen);
		if (altered ? r == CF_OK
			    : (r != CF_OK || outlen != len || (len && memcmp(out, pt, len) != 0)))
			abort();
		cf_session_plain_free(out, outlen);
	} else if (method[0] != '\0' && len <= 4096) {
		abort();   /* sealing a valid method cannot fail */
	}
	cf_buf_free(rec);
	free(pt);
	free(method);
}

/* The peer's ephemeral key, whatever it is (low-order points included). */
static void
derive(struct in *in)
{
	uint8_t pub[CF_SESSION_PUB_LEN], th[CF_SESSION_TH_LEN];
	cf_session_keys *k = NULL;

	get(in, pub, sizeof(pub));
	get(in, th, sizeof(th));
	if (cf_session_keys_derive(mine, pub, th, sid, &k) == CF_OK)
		cf_session_keys_free(k);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, data + size };
	uint8_t op = 0;

	get(&in, &op, 1);
	switch (op % 5) {
	case 0: transcript(&in); break;
	case 1: pin(&in); break;
	case 2: record(&in); break;
	case 3: roundtrip(&in); break;
	default: derive(&in); break;
	}
	cf_error_clear();
	return 0;
}
