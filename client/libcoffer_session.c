/*
 * libcoffer_session.c — the caller's side of sealed sessions
 * (proto/session-protocol.md): handshake against the pinned identity, a
 * pool of sessions (one per call in flight, since a session's records are
 * strictly ordered), sealing and opening records, and replacing sessions
 * before their limits. The crypto is cf_session, shared with the daemon.
 */
#include "libcoffer_session.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "cf_arena.h"
#include "cf_session.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "libcoffer_signer.h"

#define SS "/coffer.v1.SessionService/"
#define POOL_IDLE_MAX 16       /* idle sessions kept; more are dropped */
#define RENEW_MARGIN_MS 30000  /* replace a session this long before it expires */
#define CLOSE_WAIT_MS 1000     /* for ending the sessions at close: they expire anyway */

struct lc_session {
	cf_session_keys *keys;
	uint8_t id[CF_SESSION_ID_LEN];
	uint64_t seq;              /* of the next call */
	uint64_t max_records, max_bytes, bytes;
	int64_t expires;           /* monotonic milliseconds */
	struct lc_session *next;
};

struct lc_sessions {
	pthread_mutex_t mu;
	struct lc_session *idle;
	unsigned nidle;
	uint8_t *pin;              /* pinned identity SPKI */
	size_t pinlen;
	cf_session_pin *pinkey;    /* the same, parsed */
	int no_peer_check;         /* coffer_set_session_peer_check(c, 0) */
};

static void
sess_free(struct lc_session *s)
{
	if (s == NULL)
		return;
	cf_session_keys_free(s->keys);
	OPENSSL_clear_free(s, sizeof(*s));
}

/* Free every idle session (p->mu held). */
static void
drop_idle_locked(struct lc_sessions *p)
{
	while (p->idle != NULL) {
		struct lc_session *s = p->idle;

		p->idle = s->next;
		sess_free(s);
	}
	p->nidle = 0;
}

struct lc_sessions *
lc_sessions_new(void)
{
	struct lc_sessions *p = calloc(1, sizeof(*p));

	if (p != NULL && pthread_mutex_init(&p->mu, NULL) != 0) {
		free(p);
		p = NULL;
	}
	return p;
}

void
lc_sessions_free(struct lc_sessions *p)
{
	if (p == NULL)
		return;
	drop_idle_locked(p);
	free(p->pin);
	cf_session_pin_free(p->pinkey);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

void
lc_sessions_set_peer_check(struct lc_sessions *p, int check)
{
	pthread_mutex_lock(&p->mu);
	p->no_peer_check = !check;
	pthread_mutex_unlock(&p->mu);
}

int
lc_sessions_pin(struct lc_sessions *p, const uint8_t *spki, size_t len)
{
	cf_session_pin *key = NULL;
	uint8_t *copy;
	int r;

	if (spki == NULL || len == 0 || len > CF_SESSION_MAX_SPKI)
		return cf_error(CF_E_INVALID_ARG, "identity key missing or too long");
	if ((r = cf_session_pin_new(spki, len, &key)) != CF_OK)
		return r;
	if ((copy = malloc(len)) == NULL) {
		cf_session_pin_free(key);
		return cf_nomem();
	}
	memcpy(copy, spki, len);
	pthread_mutex_lock(&p->mu);
	free(p->pin);
	cf_session_pin_free(p->pinkey);
	p->pin = copy;
	p->pinlen = len;
	p->pinkey = key;
	/* Sessions with another daemon must not survive a new pin. */
	drop_idle_locked(p);
	pthread_mutex_unlock(&p->mu);
	return CF_OK;
}

/* ---- handshake ---- */

static int
handshake(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p,
    struct lc_session **out)
{
	Coffer__V1__OpenSessionRequest req = COFFER__V1__OPEN_SESSION_REQUEST__INIT;
	Coffer__V1__OpenSessionResponse *resp = NULL;
	struct cf_session_hello h;
	uint8_t th[CF_SESSION_TH_LEN], *buf = NULL, *rbuf = NULL;
	char got[CF_SESSION_FPR_LEN + 1], want[CF_SESSION_FPR_LEN + 1];
	cf_session_eph *eph = NULL;
	struct lc_session *s = NULL;
	size_t len, rlen = 0;
	int r, check;

	memset(&h, 0, sizeof(h));
	if (p->pin == NULL)
		return cf_error(CF_E_PRECONDITION, "no daemon identity is pinned, so no sealed "
				"session can be opened: pin the key printed by `cofferctl "
				"identity` (cofferctl --identity FILE, COFFER_IDENTITY, or "
				"coffer_pin_identity_file)");
	if ((r = cf_session_eph_new(NULL, &eph)) != CF_OK)
		return r;
	h.version = CF_SESSION_VERSION;
	cf_session_eph_pub(eph, h.client_pub);
	if (RAND_bytes(h.client_random, sizeof(h.client_random)) != 1) {
		r = cf_error(CF_E_INTERNAL, "no randomness");
		goto out;
	}
	h.principal = "";
	req.version = h.version;
	req.client_ephemeral.data = h.client_pub;
	req.client_ephemeral.len = sizeof(h.client_pub);
	req.client_random.data = h.client_random;
	req.client_random.len = sizeof(h.client_random);
	req.principal = (char *)h.principal;
	len = protobuf_c_message_get_packed_size(&req.base);
	if ((buf = malloc(len)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	protobuf_c_message_pack(&req.base, buf);
	r = lc_signed_transport(t, k, SS "OpenSession", buf, len, &rbuf, &rlen, LC_CIPHERTEXT);
	buf = NULL;
	if (r != CF_OK)
		goto out;
	if ((resp = coffer__v1__open_session_response__unpack(NULL, rlen, rbuf)) == NULL) {
		r = cf_error(CF_E_INTERNAL, "malformed OpenSession response");
		goto out;
	}
	/* The pinned key first: nothing else from an impostor is looked at. */
	if (resp->identity_public_key.len != p->pinlen ||
	    CRYPTO_memcmp(resp->identity_public_key.data, p->pin, p->pinlen) != 0) {
		if (cf_session_fingerprint(resp->identity_public_key.data,
					   resp->identity_public_key.len, got, sizeof(got)) != CF_OK)
			snprintf(got, sizeof(got), "(none)");
		(void)cf_session_fingerprint(p->pin, p->pinlen, want, sizeof(want));
		r = cf_error(CF_E_UNAUTHENTICATED, "the daemon presented identity %s but %s is "
			     "pinned: refusing it", got, want);
		goto out;
	}
	if (resp->session_id.len != CF_SESSION_ID_LEN ||
	    resp->server_ephemeral.len != CF_SESSION_PUB_LEN ||
	    resp->server_random.len != CF_SESSION_RANDOM_LEN || resp->max_records == 0 ||
	    resp->lifetime_seconds == 0) {
		r = cf_error(CF_E_UNAUTHENTICATED, "malformed OpenSession response (field sizes)");
		goto out;
	}
	memcpy(h.session_id, resp->session_id.data, CF_SESSION_ID_LEN);
	memcpy(h.server_pub, resp->server_ephemeral.data, CF_SESSION_PUB_LEN);
	memcpy(h.server_random, resp->server_random.data, CF_SESSION_RANDOM_LEN);
	h.uid = resp->caller_uid;
	h.gid = resp->caller_gid;
	h.spki = p->pin;
	h.spki_len = p->pinlen;
	h.lifetime = resp->lifetime_seconds;
	h.max_records = resp->max_records;
	h.max_bytes = resp->max_bytes;
	if ((r = cf_session_transcript_hash(&h, th)) != CF_OK)
		goto out;
	/* Only what the daemon sent is called an impostor's; this process's
	 * own failures (memory, OpenSSL) keep their status and text. */
	if ((r = cf_session_verify_pinned(p->pinkey, th, resp->signature.data,
					  resp->signature.len)) != CF_OK) {
		if (r == CF_E_BAD_SIGNATURE)
			r = cf_error(CF_E_UNAUTHENTICATED, "the daemon's handshake signature does "
				     "not verify under the pinned identity: refusing it");
		goto out;
	}
	/* The daemon binds the session to the uid/gid it read from the socket
	 * (SO_PEERCRED: the effective ids of whoever called connect()). Other
	 * ids mean another process made the connection and relays our bytes:
	 * the session, its grants and its audit records would be that
	 * process's. */
	pthread_mutex_lock(&p->mu);
	check = !p->no_peer_check;
	pthread_mutex_unlock(&p->mu);
	if (check && (h.uid != (uint32_t)geteuid() || h.gid != (uint32_t)getegid())) {
		r = cf_error(CF_E_UNAUTHENTICATED, "the daemon saw this session opened by uid %u "
			     "gid %u, not by this process (uid %u gid %u): something relays the "
			     "socket; refusing the session (user namespace: "
			     "coffer_set_session_peer_check, cofferctl --no-peer-check)",
			     (unsigned)h.uid, (unsigned)h.gid,
			     (unsigned)geteuid(), (unsigned)getegid());
		goto out;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_session_keys_derive(eph, h.server_pub, th, h.session_id, &s->keys)) != CF_OK) {
		if (r == CF_E_INVALID_ARG)
			r = cf_error(CF_E_UNAUTHENTICATED, "the daemon's ephemeral key is unusable "
				     "(not a usable X25519 public key)");
		goto out;
	}
	memcpy(s->id, h.session_id, CF_SESSION_ID_LEN);
	s->max_records = h.max_records;
	s->max_bytes = h.max_bytes;
	s->expires = cf_session_now() + (int64_t)h.lifetime * 1000;
	*out = s;
	s = NULL;
out:
	cf_session_eph_free(eph);
	sess_free(s);
	coffer__v1__open_session_response__free_unpacked(resp, NULL);
	free(rbuf);
	OPENSSL_cleanse(th, sizeof(th));
	return r;
}

int
lc_sessions_handshake_once(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p)
{
	struct lc_session *s = NULL;
	int r = handshake(t, k, p, &s);

	sess_free(s);
	return r;
}

/* ---- the pool ---- */

/* Room for one more call of `len` bytes, with a margin before expiry. */
static int
usable(const struct lc_session *s, size_t len, int64_t now)
{
	int64_t margin = RENEW_MARGIN_MS;

	if (s->expires - now < 2 * margin)
		margin = (s->expires - now) / 4;
	return s->seq + 1 < s->max_records && s->bytes + len + 1024 < s->max_bytes &&
	       now + margin < s->expires;
}

/* An idle session with room for the call, or a new one; with fresh, always
 * a new one. */
static int
acquire(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p, size_t len, int fresh,
    struct lc_session **out)
{
	struct lc_session *s = NULL, *stale = NULL;
	int64_t now = cf_session_now();

	pthread_mutex_lock(&p->mu);
	while (!fresh && (s = p->idle) != NULL) {
		p->idle = s->next;
		p->nidle--;
		if (usable(s, len, now))
			break;
		s->next = stale;
		stale = s;
	}
	pthread_mutex_unlock(&p->mu);
	while (stale != NULL) {
		struct lc_session *n = stale->next;

		sess_free(stale);
		stale = n;
	}
	if (s != NULL) {
		*out = s;
		return CF_OK;
	}
	return handshake(t, k, p, out);
}

static void
release(struct lc_sessions *p, struct lc_session *s)
{
	pthread_mutex_lock(&p->mu);
	if (p->nidle < POOL_IDLE_MAX) {
		s->next = p->idle;
		p->idle = s;
		p->nidle++;
		s = NULL;
	}
	pthread_mutex_unlock(&p->mu);
	sess_free(s);
}

/* ---- one sealed call ---- */

/* Seal, send, open. On CF_OK *res is the inner result, in locked memory
 * (cf_locked_allocator), as is the record it is opened in. The session's
 * state is unknown after any error: the caller drops it. */
static int
exchange(struct lc_conn *t, struct lc_apikey *k, struct lc_session *s, const char *method,
    const uint8_t *req, size_t len, Coffer__V1__SealedResult **res)
{
	Coffer__V1__SealedCall call = COFFER__V1__SEALED_CALL__INIT;
	Coffer__V1__SealedReply *reply = NULL;
	uint8_t *rec = malloc(len + CF_SESSION_TAG_LEN);
	uint8_t *buf = NULL, *rbuf = NULL, *pt = NULL;
	size_t blen, rlen = 0, ptlen = 0;
	uint64_t seq = s->seq;
	int r;

	if (rec == NULL)
		return cf_nomem();
	if ((r = cf_session_seal_to(s->keys, CF_SESSION_C2S, seq, method, req, len, rec)) != CF_OK)
		goto out;
	call.session_id.data = s->id;
	call.session_id.len = CF_SESSION_ID_LEN;
	call.sequence = seq;
	call.method = (char *)method;
	call.record.data = rec;
	call.record.len = len + CF_SESSION_TAG_LEN;
	blen = protobuf_c_message_get_packed_size(&call.base);
	if ((buf = malloc(blen)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	protobuf_c_message_pack(&call.base, buf);
	s->seq++;
	s->bytes += len;
	r = lc_signed_transport(t, k, SS "Call", buf, blen, &rbuf, &rlen, LC_CIPHERTEXT);
	if (r != CF_OK)
		goto out;
	/* From here the daemon accepted the record: the call may have run, so
	 * a bad reply is never UNAUTHENTICATED (which the caller retries). */
	if ((reply = coffer__v1__sealed_reply__unpack(NULL, rlen, rbuf)) == NULL) {
		r = cf_error(CF_E_INTERNAL, "malformed sealed reply; the call may have run");
		goto out;
	}
	/* Opened in a locked copy, and wiped there. */
	if ((pt = cf_locked_allocator.alloc(NULL, reply->record.len + 1)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	memcpy(pt, reply->record.data, reply->record.len);
	if (reply->sequence != seq ||
	    cf_session_open_in_place(s->keys, CF_SESSION_S2C, seq, method, pt, reply->record.len,
				     &ptlen) != CF_OK) {
		r = cf_error(CF_E_INTERNAL, "the daemon's sealed reply failed authentication "
			     "and was discarded; the call may have run");
		goto out;
	}
	s->bytes += ptlen;
	*res = coffer__v1__sealed_result__unpack(&cf_locked_allocator, ptlen, pt);
	if (*res == NULL)
		r = cf_error(CF_E_INTERNAL, "malformed sealed result");
out:
	/* The envelopes (rec, buf, rbuf) hold ciphertext only: no wipe. */
	if (pt != NULL)
		cf_locked_allocator.free(NULL, pt);   /* wipes */
	coffer__v1__sealed_reply__free_unpacked(reply, NULL);
	free(rbuf);
	free(rec);
	return r;
}

int
lc_sealed_call(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p, const char *method,
    const uint8_t *req, size_t len, uint8_t **out, size_t *outlen)
{
	Coffer__V1__SealedResult *res = NULL;
	struct lc_session *s = NULL;
	char msg[CF_ERROR_DETAIL_MAX];
	int r = CF_E_INTERNAL;

	/* A record the daemon refused (outer UNAUTHENTICATED: expired, evicted,
	 * daemon restarted) did not run: one retry on a new session is safe.
	 * exchange() reports a bad reply otherwise, so it is never retried.
	 * The retry never takes an idle session: after a restart they are all
	 * dead, and so they are dropped. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if ((r = acquire(t, k, p, len, attempt > 0, &s)) != CF_OK)
			return r;
		r = exchange(t, k, s, method, req, len, &res);
		if (r == CF_OK) {
			release(p, s);
			break;
		}
		sess_free(s);
		if (r != CF_E_UNAUTHENTICATED || attempt == 1)
			return r;
		pthread_mutex_lock(&p->mu);
		drop_idle_locked(p);
		pthread_mutex_unlock(&p->mu);
	}
	if (res->code != 0) {
		lc_text_copy(msg, sizeof(msg), res->message, strnlen(res->message, sizeof(msg)));
		r = cf_error(lc_status_from_grpc(res->code), "%s", msg);
	} else if (res->response.data == NULL &&
		   (res->response.data = cf_locked_allocator.alloc(NULL, 1)) == NULL) {
		r = cf_nomem();
	} else {
		/* Handed over, not copied: release with cf_secure_free. */
		*out = res->response.data;
		*outlen = res->response.len;
		res->response.data = NULL;
		res->response.len = 0;
		r = CF_OK;
	}
	protobuf_c_message_free_unpacked(&res->base, &cf_locked_allocator);
	return r;
}

void
lc_sessions_close(struct lc_conn *t, struct lc_apikey *k, struct lc_sessions *p)
{
	unsigned int was = lc_conn_timeout(t);
	struct cf_error_saved err;
	struct lc_session *s;
	int ok = 1;

	pthread_mutex_lock(&p->mu);
	s = p->idle;
	p->idle = NULL;
	p->nidle = 0;
	pthread_mutex_unlock(&p->mu);
	/* One deadline for every CloseSession of the close: a daemon gone,
	 * hung or slow costs it at most that. The idempotency key of the last
	 * call is not this one's. */
	if (was == 0 || was > CLOSE_WAIT_MS)
		lc_conn_set_timeout(t, CLOSE_WAIT_MS);
	lc_conn_set_idem_key(t, NULL);
	cf_error_save(&err);     /* the caller's last error is still its to read */
	lc_call_begin(t);
	while (s != NULL) {
		struct lc_session *n = s->next;
		Coffer__V1__SealedResult *res = NULL;

		if (ok) {
			int r = exchange(t, k, s, SS "CloseSession", NULL, 0, &res);

			/* One session already gone there (expired) says nothing of
			 * the others; any other failure says the daemon is away. */
			ok = r == CF_OK || r == CF_E_UNAUTHENTICATED;
			if (res != NULL)
				protobuf_c_message_free_unpacked(&res->base, &cf_locked_allocator);
		}
		sess_free(s);
		s = n;
	}
	lc_call_end();
	lc_conn_set_timeout(t, was);
	cf_error_restore(&err);
}

int
lc_spki_from_pem_file(const char *path, uint8_t **der, size_t *len)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *pk = NULL;
	unsigned char *d = NULL;
	int n;

	if (f == NULL)
		return cf_error(CF_E_IO, "cannot open identity file %s", path);
	pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (pk == NULL)
		return cf_error(CF_E_INVALID_ARG, "%s holds no PEM public key (\"-----BEGIN PUBLIC "
				"KEY-----\")", path);
	n = i2d_PUBKEY(pk, &d);
	EVP_PKEY_free(pk);
	if (n <= 0)
		return cf_error(CF_E_INTERNAL, "cannot encode the identity key");
	*der = d;
	*len = (size_t)n;
	return CF_OK;
}
