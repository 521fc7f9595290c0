#include "session.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cf_log.h"
#include "cf_status.h"

#define BUCKETS 1024u            /* power of two; ids are random */
#define PENDING_SLOTS 256u       /* distinct uids with a handshake in progress */

struct session {
	uint8_t id[CF_SESSION_ID_LEN];
	uid_t uid;
	gid_t gid;
	cf_session_keys *keys;
	uint64_t next_seq;           /* the next caller record */
	uint64_t recs_in, recs_out, bytes_in, bytes_out;
	/* The reply being sealed by the one call that holds the next sequence
	 * number; added to the counts when it releases the session. */
	uint64_t reply_recs, reply_bytes;
	int64_t expires, last_used;  /* monotonic milliseconds */
	int ended;
	unsigned refs;               /* the table's own reference + calls in flight */
	struct session *next;        /* hash chain */
};

struct pending {
	uid_t uid;
	unsigned n;
};

struct session_mgr {
	cf_p11_key *identity;
	uint8_t spki[CF_SESSION_MAX_SPKI];
	size_t spki_len;
	char fpr[CF_SESSION_FPR_LEN + 1];
	struct session_cfg cfg;
	pthread_mutex_t mu;
	struct session *buckets[BUCKETS];
	unsigned count;
	struct pending pending[PENDING_SLOTS];
};

static unsigned
bucket_of(const uint8_t *id)
{
	unsigned h;

	memcpy(&h, id, sizeof(h));
	return h & (BUCKETS - 1);
}

/* ---- identity ---- */

int
session_mgr_open(cf_p11 *p11, const struct session_cfg *cfg, session_mgr **out)
{
	session_mgr *sm;
	cf_buf *der = NULL;
	int r, created;

	if ((sm = calloc(1, sizeof(*sm))) == NULL)
		return cf_nomem();
	sm->cfg = *cfg;
	pthread_mutex_init(&sm->mu, NULL);
	if ((r = cf_p11_key_ensure(p11, SESSION_IDENTITY_KEY, 1, CF_KEY_EC_P256, &sm->identity,
				   &created)) != CF_OK)
		goto out;
	if (created)
		cf_log_info("session: created the identity key in the token");
	if ((der = cf_buf_new(CF_SESSION_MAX_SPKI)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_p11_pubkey_der(sm->identity, der)) != CF_OK ||
	    (r = cf_session_fingerprint(cf_buf_peek(der), cf_buf_len(der), sm->fpr,
					sizeof(sm->fpr))) != CF_OK)
		goto out;
	sm->spki_len = cf_buf_len(der);
	memcpy(sm->spki, cf_buf_peek(der), sm->spki_len);
	cf_log_info("session: identity %s", sm->fpr);
	*out = sm;
	sm = NULL;
out:
	cf_buf_free(der);
	session_mgr_close(sm);
	return r;
}

static void
session_free(struct session *s)
{
	cf_session_keys_free(s->keys);
	OPENSSL_clear_free(s, sizeof(*s));
}

void
session_mgr_close(session_mgr *sm)
{
	if (sm == NULL)
		return;
	for (unsigned b = 0; b < BUCKETS; b++)
		while (sm->buckets[b] != NULL) {
			struct session *s = sm->buckets[b];

			sm->buckets[b] = s->next;
			session_free(s);
		}
	cf_p11_key_free(sm->identity);
	pthread_mutex_destroy(&sm->mu);
	free(sm);
}

const uint8_t *
session_identity(const session_mgr *sm, size_t *len)
{
	*len = sm->spki_len;
	return sm->spki;
}

const char *
session_fingerprint(const session_mgr *sm)
{
	return sm->fpr;
}

/* ---- the table (callers hold sm->mu) ---- */

static void
unref_locked(struct session *s)
{
	if (--s->refs == 0)
		session_free(s);
}

/* Take s out of the table; it is freed when its last call releases it. */
static void
unlink_locked(session_mgr *sm, struct session *s)
{
	struct session **pp = &sm->buckets[bucket_of(s->id)];

	for (; *pp != NULL; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			s->next = NULL;
			s->ended = 1;
			sm->count--;
			unref_locked(s);
			return;
		}
}

static struct session *
find_locked(session_mgr *sm, const uint8_t *id)
{
	for (struct session *s = sm->buckets[bucket_of(id)]; s != NULL; s = s->next)
		if (CRYPTO_memcmp(s->id, id, CF_SESSION_ID_LEN) == 0)
			return s;
	return NULL;
}

static int
spent_locked(const session_mgr *sm, const struct session *s, int64_t now)
{
	return now >= s->expires || s->recs_in >= sm->cfg.max_records ||
	       s->recs_out >= sm->cfg.max_records || s->bytes_in > sm->cfg.max_bytes ||
	       s->bytes_out > sm->cfg.max_bytes;
}

static unsigned
expire_locked(session_mgr *sm, int64_t now)
{
	unsigned ended = 0;

	for (unsigned b = 0; b < BUCKETS; b++) {
		struct session *s = sm->buckets[b], *next;

		for (; s != NULL; s = next) {
			next = s->next;
			if (spent_locked(sm, s, now)) {
				unlink_locked(sm, s);
				ended++;
			}
		}
	}
	return ended;
}

unsigned
session_expire(session_mgr *sm)
{
	unsigned ended;

	pthread_mutex_lock(&sm->mu);
	ended = expire_locked(sm, cf_session_now());
	pthread_mutex_unlock(&sm->mu);
	return ended;
}

/* End expired sessions; make room for one more session of uid by ending its
 * least recently used one if it has max_per_caller already. */
static void
sweep_locked(session_mgr *sm, uid_t uid, int64_t now)
{
	struct session *lru = NULL;
	unsigned mine = 0;

	expire_locked(sm, now);
	for (unsigned b = 0; b < BUCKETS; b++)
		for (struct session *s = sm->buckets[b]; s != NULL; s = s->next) {
			if (s->uid != uid)
				continue;
			mine++;
			if (lru == NULL || s->last_used < lru->last_used)
				lru = s;
		}
	if (mine >= sm->cfg.max_per_caller && lru != NULL) {
		cf_log_info("session: uid %u has %u sessions; ending its least recently used",
			    (unsigned)uid, mine);
		unlink_locked(sm, lru);
	}
}

static unsigned
sessions_of_locked(const session_mgr *sm, uid_t uid)
{
	unsigned n = 0;

	for (unsigned b = 0; b < BUCKETS; b++)
		for (const struct session *s = sm->buckets[b]; s != NULL; s = s->next)
			n += s->uid == uid;
	return n;
}

static int
full_error(const session_mgr *sm)
{
	return cf_error(CF_E_EXHAUSTED, "the daemon holds %u sessions (session.max_sessions); "
			"retry later", sm->count);
}

static struct pending *
pending_slot_locked(session_mgr *sm, uid_t uid, int create)
{
	struct pending *free_slot = NULL;

	for (unsigned i = 0; i < PENDING_SLOTS; i++) {
		if (sm->pending[i].n > 0 && sm->pending[i].uid == uid)
			return &sm->pending[i];
		if (sm->pending[i].n == 0 && free_slot == NULL)
			free_slot = &sm->pending[i];
	}
	if (create && free_slot != NULL)
		free_slot->uid = uid;
	return create ? free_slot : NULL;
}

/* ---- handshake ---- */

static int
pending_enter(session_mgr *sm, uid_t uid)
{
	struct pending *p;
	int r = CF_OK;

	pthread_mutex_lock(&sm->mu);
	/* A full table is said before any work (the token's signature among
	 * it), unless the caller's own oldest session will make room. */
	if (sm->count >= sm->cfg.max_sessions) {
		expire_locked(sm, cf_session_now());
		if (sm->count >= sm->cfg.max_sessions && sessions_of_locked(sm, uid) <
							 sm->cfg.max_per_caller) {
			r = full_error(sm);
			pthread_mutex_unlock(&sm->mu);
			return r;
		}
	}
	if ((p = pending_slot_locked(sm, uid, 1)) == NULL)
		r = cf_error(CF_E_EXHAUSTED, "too many callers are opening sessions; retry");
	else if (p->n >= sm->cfg.max_pending)
		r = cf_error(CF_E_EXHAUSTED, "uid %u already has %u handshakes in progress "
			     "(session.max_pending); retry", (unsigned)uid, p->n);
	else
		p->n++;
	pthread_mutex_unlock(&sm->mu);
	return r;
}

static void
pending_leave(session_mgr *sm, uid_t uid)
{
	struct pending *p;

	pthread_mutex_lock(&sm->mu);
	if ((p = pending_slot_locked(sm, uid, 0)) != NULL)
		p->n--;
	pthread_mutex_unlock(&sm->mu);
}

int
session_handshake(session_mgr *sm, uid_t uid, gid_t gid, struct cf_session_hello *h,
		  cf_buf *sig)
{
	uint8_t th[CF_SESSION_TH_LEN];
	cf_session_eph *eph = NULL;
	struct session *s = NULL;
	cf_buf *msg = NULL;
	int64_t now;
	int r;

	if (h->version != CF_SESSION_VERSION)
		return cf_error(CF_E_INVALID_ARG, "session protocol version %u is not supported; "
				"this daemon speaks version %u", h->version, CF_SESSION_VERSION);
	if (h->principal != NULL && strlen(h->principal) > CF_SESSION_MAX_PRINCIPAL)
		return cf_error(CF_E_INVALID_ARG, "principal longer than %d bytes",
				CF_SESSION_MAX_PRINCIPAL);
	if ((r = pending_enter(sm, uid)) != CF_OK)
		return r;
	if ((s = calloc(1, sizeof(*s))) == NULL || (msg = cf_buf_new(128)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = cf_session_eph_new(NULL, &eph)) != CF_OK)
		goto out;
	if (RAND_bytes(h->session_id, CF_SESSION_ID_LEN) != 1 ||
	    RAND_bytes(h->server_random, CF_SESSION_RANDOM_LEN) != 1) {
		r = cf_error(CF_E_INTERNAL, "no randomness");
		goto out;
	}
	cf_session_eph_pub(eph, h->server_pub);
	h->uid = (uint32_t)uid;
	h->gid = (uint32_t)gid;
	h->spki = sm->spki;
	h->spki_len = sm->spki_len;
	h->lifetime = sm->cfg.lifetime;
	h->max_records = sm->cfg.max_records;
	h->max_bytes = sm->cfg.max_bytes;
	if ((r = cf_session_transcript_hash(h, th)) != CF_OK)
		goto out;
	if ((r = cf_session_keys_derive(eph, h->client_pub, th, h->session_id, &s->keys)) != CF_OK) {
		/* Only the client's key is named; our own failures (memory)
		 * keep their status and text. */
		if (r == CF_E_INVALID_ARG)
			r = cf_error(CF_E_INVALID_ARG, "client_ephemeral is not a usable X25519 "
				     "public key");
		goto out;
	}
	cf_session_eph_free(eph);   /* forward secrecy: gone before anything else */
	eph = NULL;
	if ((r = cf_session_signed_message(th, msg)) != CF_OK ||
	    (r = cf_p11_sign(sm->identity, NULL, cf_buf_peek(msg), cf_buf_len(msg), sig)) != CF_OK)
		goto out;
	memcpy(s->id, h->session_id, CF_SESSION_ID_LEN);
	s->uid = uid;
	s->gid = gid;
	now = cf_session_now();
	s->expires = now + (int64_t)sm->cfg.lifetime * 1000;
	s->last_used = now;
	s->refs = 1;
	pthread_mutex_lock(&sm->mu);
	sweep_locked(sm, uid, now);
	if (sm->count >= sm->cfg.max_sessions) {
		r = full_error(sm);
		pthread_mutex_unlock(&sm->mu);
		goto out;
	}
	s->next = sm->buckets[bucket_of(s->id)];
	sm->buckets[bucket_of(s->id)] = s;
	sm->count++;
	pthread_mutex_unlock(&sm->mu);
	s = NULL;
out:
	pending_leave(sm, uid);
	cf_session_eph_free(eph);
	if (s != NULL)
		session_free(s);
	cf_buf_free(msg);
	OPENSSL_cleanse(th, sizeof(th));
	return r;
}

/* ---- records ---- */

/* The session id (CF_SESSION_ID_LEN bytes), the caller's (mu held). */
static int
mine_locked(session_mgr *sm, uid_t uid, gid_t gid, const uint8_t *id, struct session **out)
{
	struct session *s;

	if ((s = find_locked(sm, id)) == NULL)
		return cf_error(CF_E_UNAUTHENTICATED, "session unknown or ended; open a new session");
	if (s->uid != uid || s->gid != gid) {
		cf_log_warn("session: uid %u gid %u presented a session of uid %u gid %u",
			    (unsigned)uid, (unsigned)gid, (unsigned)s->uid, (unsigned)s->gid);
		return cf_error(CF_E_UNAUTHENTICATED, "session belongs to another caller");
	}
	*out = s;
	return CF_OK;
}

int
session_known(session_mgr *sm, uid_t uid, gid_t gid, const uint8_t *id, size_t idlen)
{
	struct session *s;
	int r;

	if (idlen != CF_SESSION_ID_LEN)
		return cf_error(CF_E_INVALID_ARG, "session_id must be %d bytes", CF_SESSION_ID_LEN);
	pthread_mutex_lock(&sm->mu);
	r = mine_locked(sm, uid, gid, id, &s);
	pthread_mutex_unlock(&sm->mu);
	return r;
}

int
session_accept(session_mgr *sm, uid_t uid, gid_t gid, const uint8_t *id, size_t idlen,
	       uint64_t seq, const char *method, uint8_t *rec, size_t reclen,
	       session **out, size_t *ptlen)
{
	struct session *s;
	int64_t now = cf_session_now();
	size_t plen = reclen >= CF_SESSION_TAG_LEN ? reclen - CF_SESSION_TAG_LEN : 0;
	uint64_t expected;
	int r;

	if (idlen != CF_SESSION_ID_LEN)
		return cf_error(CF_E_INVALID_ARG, "session_id must be %d bytes", CF_SESSION_ID_LEN);
	if (method == NULL || method[0] == '\0' || strlen(method) > CF_SESSION_MAX_METHOD)
		return cf_error(CF_E_INVALID_ARG, "method must be 1..%d bytes",
				CF_SESSION_MAX_METHOD);
	pthread_mutex_lock(&sm->mu);
	if ((r = mine_locked(sm, uid, gid, id, &s)) != CF_OK) {
		pthread_mutex_unlock(&sm->mu);
		return r;
	}
	if (spent_locked(sm, s, now) || s->bytes_in + plen > sm->cfg.max_bytes) {
		unlink_locked(sm, s);
		pthread_mutex_unlock(&sm->mu);
		return cf_error(CF_E_UNAUTHENTICATED, "session expired (lifetime or record limit); "
				"open a new session");
	}
	expected = s->next_seq;
	if (seq != expected) {
		unlink_locked(sm, s);
		pthread_mutex_unlock(&sm->mu);
		return cf_error(CF_E_UNAUTHENTICATED, "record out of sequence (got %llu, expected "
				"%llu): replayed or reordered; the session is ended",
				(unsigned long long)seq, (unsigned long long)expected);
	}
	/* Claim the number before decrypting, so a concurrent copy of this
	 * record cannot also be accepted. */
	s->next_seq++;
	s->recs_in++;
	s->bytes_in += plen;   /* what the record holds if it opens */
	s->last_used = now;
	s->refs++;
	pthread_mutex_unlock(&sm->mu);
	if ((r = cf_session_open_in_place(s->keys, CF_SESSION_C2S, seq, method, rec, reclen,
					  ptlen)) != CF_OK) {
		pthread_mutex_lock(&sm->mu);
		if (!s->ended)
			unlink_locked(sm, s);
		unref_locked(s);
		pthread_mutex_unlock(&sm->mu);
		return cf_error(CF_E_UNAUTHENTICATED, "record failed authentication (tampered, "
				"truncated, reflected or from another session); the session is ended");
	}
	*out = s;
	return CF_OK;
}

int
session_reply(session *s, uint64_t seq, const char *method, const uint8_t *pt, size_t len,
	      uint8_t *out)
{
	int r = cf_session_seal_to(s->keys, CF_SESSION_S2C, seq, method, pt, len, out);

	/* Counted when the call releases the session: one lock per call less. */
	if (r == CF_OK) {   /* atomic: a misbehaving caller may overlap two records */
		__atomic_fetch_add(&s->reply_recs, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&s->reply_bytes, (uint64_t)len, __ATOMIC_RELAXED);
	}
	return r;
}

void
session_end(session_mgr *sm, session *s)
{
	pthread_mutex_lock(&sm->mu);
	if (!s->ended)
		unlink_locked(sm, s);
	pthread_mutex_unlock(&sm->mu);
}

void
session_release(session_mgr *sm, session *s)
{
	if (s == NULL)
		return;
	pthread_mutex_lock(&sm->mu);
	s->recs_out += __atomic_exchange_n(&s->reply_recs, 0, __ATOMIC_RELAXED);
	s->bytes_out += __atomic_exchange_n(&s->reply_bytes, 0, __ATOMIC_RELAXED);
	unref_locked(s);
	pthread_mutex_unlock(&sm->mu);
}

unsigned
session_count(session_mgr *sm)
{
	unsigned n;

	pthread_mutex_lock(&sm->mu);
	n = sm->count;
	pthread_mutex_unlock(&sm->mu);
	return n;
}
