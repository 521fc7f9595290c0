#include "idempotency.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/evp.h>

#include "cf_buf.h"
#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_status.h"
#include "cf_time.h"
#include "change_mu.h"

/* A (key, uid) whose call is running, and its request's fingerprint (the
 * outcome is recorded with it: one token MAC per call, not two). */
struct running {
	char key[STORE_IDEM_KEY_MAX + 1];
	uint32_t uid;
	uint8_t fp[32];
	struct running *next;
};

struct idem {
	store *st;
	cf_p11_key *fpkey;       /* keys the fingerprints; NULL: the token has no HMAC */
	unsigned retention;
	char self[STORE_OWNER_MAX + 1];   /* this process's incarnation */
	int (*alive)(void *arg, const char *owner, int *alive);
	void *alive_arg;
	pthread_mutex_t mu;
	pthread_cond_t cv;       /* a running call finished */
	struct running *run;
	struct running *release;  /* records to release once the store answers */
};

#define IDEM_POLL_MS 20   /* re-reading a record another replica is running */
/* Fingerprints are MACs under this key: the digest of a request that
 * carries a secret (ImportKey's material, an API secret) would otherwise let
 * whoever reads the database test guesses of that secret offline. */
static const char FP_DOMAIN[] = "coffer idempotency fingerprint v1";

/* Without a fleet: a pending record is running only if this process holds it. */
static int
alone_alive(void *arg, const char *owner, int *alive)
{
	idem *i = arg;

	*alive = strcmp(owner, i->self) == 0;
	return CF_OK;
}

void
idem_set_owner(idem *i, const char *self,
	       int (*alive)(void *arg, const char *owner, int *alive), void *arg)
{
	snprintf(i->self, sizeof(i->self), "%s", self);
	i->alive = alive;
	i->alive_arg = arg;
}

/* The token's fingerprint key, made if missing: generated, or where the
 * token can only import HMAC keys (as API-key secrets are made), imported
 * from its own random bytes. NULL (CF_OK) on a token that can do neither. */
static int
fingerprint_key(cf_p11 *p11, cf_p11_key **out)
{
	cf_secret *m = NULL;
	int created = 0, r;

	*out = NULL;
	if (cf_p11_can_create(p11, CF_KEY_HMAC_SHA256, 0) == CF_OK) {
		r = cf_p11_key_ensure(p11, IDEM_FINGERPRINT_KEY, 1, CF_KEY_HMAC_SHA256, out,
				      &created);
	} else if (cf_p11_can_create(p11, CF_KEY_HMAC_SHA256, 1) == CF_OK) {
		r = cf_p11_key_open(p11, IDEM_FINGERPRINT_KEY, 1, out);
		if (r == CF_E_NOT_FOUND) {
			cf_error_clear();
			if ((r = cf_secret_new(32, &m)) == CF_OK &&
			    (r = cf_p11_random(p11, m)) == CF_OK &&
			    (r = cf_p11_key_import(p11, IDEM_FINGERPRINT_KEY, 1, CF_KEY_HMAC_SHA256,
						   m, 0, out)) == CF_OK)
				created = 1;
			else if (r == CF_E_EXISTS)   /* another process made it meanwhile */
				r = cf_p11_key_open(p11, IDEM_FINGERPRINT_KEY, 1, out);
			cf_secret_free(m);
		}
		if (r == CF_OK && cf_p11_key_type(*out) != CF_KEY_HMAC_SHA256) {
			r = cf_error(CF_E_CONFIG, "token object %s version 1 is %s, not hmac-sha256",
				     IDEM_FINGERPRINT_KEY, cf_key_type_name(cf_p11_key_type(*out)));
			cf_p11_key_free(*out);
			*out = NULL;
		}
	} else {
		cf_log_warn("idempotency: %s; fingerprints are plain SHA-256 digests, and a call "
			    "whose request carries a secret is refused an idempotency key",
			    cf_error_detail());
		cf_error_clear();
		return CF_OK;
	}
	if (r != CF_OK)
		return cf_error(r, "the idempotency fingerprint key %s, which cofferd makes in the "
				"token at its first start: %s", IDEM_FINGERPRINT_KEY,
				cf_error_detail());
	/* Made now: on a first start, or on a token restored without it, when
	 * records kept under the lost one no longer match their retries. */
	if (created)
		cf_log_info("idempotency: made the fingerprint key %s in the token (if the token "
			    "lost an earlier one, records made under it no longer match their "
			    "retries)", IDEM_FINGERPRINT_KEY);
	return CF_OK;
}

int
idem_open(store *st, unsigned retention_s, cf_p11 *p11, idem **out)
{
	idem *i = calloc(1, sizeof(*i));
	uint8_t rnd[8];
	int r;

	if (i == NULL)
		return cf_nomem();
	i->st = st;
	if (p11 != NULL && (r = fingerprint_key(p11, &i->fpkey)) != CF_OK) {
		free(i);
		return r;
	}
	i->retention = retention_s;
	/* An owner id of its own: records a previous process left pending are
	 * then seen as interrupted. */
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		cf_p11_key_free(i->fpkey);
		free(i);
		return cf_error(CF_E_INTERNAL, "random number generator failed");
	}
	snprintf(i->self, sizeof(i->self), "local/%ld/%02x%02x%02x%02x%02x%02x%02x%02x",
		 (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
	i->alive = alone_alive;
	i->alive_arg = i;
	pthread_mutex_init(&i->mu, NULL);
	pthread_cond_init(&i->cv, NULL);
	*out = i;
	return CF_OK;
}

void
idem_close(idem *i)
{
	if (i == NULL)
		return;
	while (i->release != NULL) {
		struct running *q = i->release;

		i->release = q->next;
		free(q);
	}
	cf_p11_key_free(i->fpkey);
	pthread_cond_destroy(&i->cv);
	pthread_mutex_destroy(&i->mu);
	free(i);
}

int
idem_key_check(const char *key)
{
	size_t n = strlen(key);

	if (n < IDEM_KEY_MIN || n > STORE_IDEM_KEY_MAX)
		goto bad;
	for (size_t k = 0; k < n; k++) {
		char c = key[k];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			goto bad;
	}
	return CF_OK;
bad:
	return cf_error(CF_E_INVALID_ARG, "idempotency-key must be %d..%d characters of A-Z a-z "
			"0-9 . _ : -", IDEM_KEY_MIN, STORE_IDEM_KEY_MAX);
}

/* The request's fingerprint: out = HMAC (in the token) of digest, the
 * SHA-256 of method and request, which is also what a cofferd before keyed
 * fingerprints recorded (such records still match until they expire).
 * Without a fingerprint key (a token without HMAC keys), out = digest, and a
 * request that carries a secret is refused rather than recorded so. */
static int
fingerprint(const idem *i, const char *method, const uint8_t *req, size_t len,
	    int carries_secret, uint8_t out[32], uint8_t digest[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t in[sizeof(FP_DOMAIN) + 32];
	cf_buf *mac = NULL;
	int ok, r;

	ok = c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	     EVP_DigestUpdate(c, method, strlen(method) + 1) == 1 &&
	     EVP_DigestUpdate(c, req != NULL ? req : (const uint8_t *)"", len) == 1 &&
	     EVP_DigestFinal_ex(c, digest, NULL) == 1;
	EVP_MD_CTX_free(c);
	if (!ok)
		return cf_error(CF_E_INTERNAL, "idempotency: cannot hash the request");
	if (i->fpkey == NULL) {
		if (carries_secret)
			return cf_error(CF_E_PRECONDITION, "%s carries a secret and this token "
					"has no HMAC key to fingerprint it with (a digest of a "
					"secret is never recorded): send it without "
					"idempotency-key", method);
		memcpy(out, digest, 32);
		return CF_OK;
	}
	memcpy(in, FP_DOMAIN, sizeof(FP_DOMAIN));
	memcpy(in + sizeof(FP_DOMAIN), digest, 32);
	if ((mac = cf_buf_new(64)) == NULL)
		return cf_nomem();
	r = cf_p11_mac(i->fpkey, in, sizeof(in), mac);
	if (r == CF_OK && cf_buf_len(mac) != 32)
		r = cf_error(CF_E_INTERNAL, "idempotency: the fingerprint key made a %zu-byte "
			     "MAC, not 32", cf_buf_len(mac));
	if (r == CF_OK)
		memcpy(out, cf_buf_peek(mac), 32);
	else
		r = cf_error(r, "idempotency: cannot fingerprint the request: %s",
			     cf_error_detail());
	OPENSSL_cleanse(in, sizeof(in));
	cf_buf_free(mac);
	return r;
}

static struct running **
find_running(idem *i, const char *key, uint32_t uid)
{
	struct running **p;

	for (p = &i->run; *p != NULL; p = &(*p)->next)
		if ((*p)->uid == uid && strcmp((*p)->key, key) == 0)
			return p;
	return NULL;
}

/* Remember a record to release when the store answers again. */
static void
queue_release(idem *i, const char *key, uint32_t uid)
{
	struct running *q = calloc(1, sizeof(*q));

	if (q == NULL)
		return;   /* it stays pending: a duplicate waits, then times out */
	snprintf(q->key, sizeof(q->key), "%s", key);
	q->uid = uid;
	pthread_mutex_lock(&i->mu);
	q->next = i->release;
	i->release = q;
	pthread_mutex_unlock(&i->mu);
}

const char *
idem_owner(const idem *i)
{
	return i->self;
}

static void
done_running(idem *i, const char *key, uint32_t uid)
{
	struct running **p, *r;

	pthread_mutex_lock(&i->mu);
	if ((p = find_running(i, key, uid)) != NULL) {
		r = *p;
		*p = r->next;
		free(r);
	}
	pthread_cond_broadcast(&i->cv);
	pthread_mutex_unlock(&i->mu);
}

/* idem_begin once the request's fingerprints are known. */
static int
begin(idem *i, const char *key, uint32_t uid, const char *method, const uint8_t fp[32],
      const uint8_t digest[32], const char *request_id, struct store_idem *first,
      enum idem_start *start)
{
	struct store_idem rec, mine;
	struct running *me;
	struct timespec until;
	uint64_t t0 = cf_mono_ms();
	int64_t until_ms = (int64_t)t0 + IDEM_WAIT_MS;
	int r;

	memset(&rec, 0, sizeof(rec));
	if ((me = calloc(1, sizeof(*me))) == NULL)
		return cf_nomem();
	snprintf(me->key, sizeof(me->key), "%s", key);
	me->uid = uid;
	memcpy(me->fp, fp, sizeof(me->fp));
	/* Concurrent duplicates: one runs, the others wait for its outcome
	 * (a turn: the claim below waits for a store another process holds
	 * only what is left of one bound, change_mu.h). */
	cf_deadline_in(&until, IDEM_WAIT_MS);
	pthread_mutex_lock(&i->mu);
	while (find_running(i, key, uid) != NULL)
		if (cf_cond_wait_until(&i->cv, &i->mu, &until) != 0) {
			pthread_mutex_unlock(&i->mu);
			free(me);
			return cf_error(CF_E_TIMEOUT, "a call with idempotency key %s is still "
					"running; retry later", key);
		}
	change_mu_waited(cf_mono_ms() - t0);
	me->next = i->run;
	i->run = me;
	/* A release queued by an earlier attempt of this key would take this
	 * attempt's record: this attempt settles it instead. */
	for (struct running **q = &i->release; *q != NULL;)
		if ((*q)->uid == uid && strcmp((*q)->key, key) == 0) {
			struct running *gone = *q;

			*q = gone->next;
			free(gone);
		} else {
			q = &(*q)->next;
		}
	pthread_mutex_unlock(&i->mu);

	/* Recorded before the call acts (a crash leaves it pending), by an
	 * atomic insert: of concurrent duplicates on several replicas, one
	 * inserts and runs; the others find its record. */
	memset(&mine, 0, sizeof(mine));
	snprintf(mine.key, sizeof(mine.key), "%s", key);
	mine.uid = uid;
	snprintf(mine.method, sizeof(mine.method), "%s", method);
	memcpy(mine.fingerprint, fp, 32);
	mine.created = (int64_t)time(NULL);
	snprintf(mine.request_id, sizeof(mine.request_id), "%s", request_id);
	snprintf(mine.owner, sizeof(mine.owner), "%s", i->self);
	r = store_idem_claim(i->st, &mine, &rec);
	while (r == CF_E_EXISTS) {
		int alive = 0;

		cf_error_clear();
		if (strcmp(rec.method, method) != 0 ||
		    (CRYPTO_memcmp(rec.fingerprint, fp, 32) != 0 &&
		     CRYPTO_memcmp(rec.fingerprint, digest, 32) != 0)) {
			r = cf_error(CF_E_PRECONDITION, "idempotency key %s was used for another "
				     "request (%s); use a new key for a new request", key, rec.method);
			break;
		}
		if (rec.done) {
			*first = rec;
			*start = IDEM_REPLAY;
			done_running(i, key, uid);
			return CF_OK;
		}
		/* Not done: another process (a replica) may still be running it. */
		if (strcmp(rec.owner, i->self) != 0 &&
		    (r = i->alive(i->alive_arg, rec.owner, &alive)) != CF_OK)
			break;
		if (rec.committed && (!alive || strcmp(rec.owner, i->self) == 0)) {
			/* Its change committed and its caller was never answered:
			 * answered now from what it changed, the record adopted so
			 * that this attempt settles it. */
			if (strcmp(rec.owner, i->self) != 0 &&
			    (r = store_idem_adopt(i->st, key, uid, rec.owner, i->self)) != CF_OK) {
				free(rec.response);
				rec.response = NULL;
				if (r != CF_E_EXISTS)
					break;
				memset(&rec, 0, sizeof(rec));
				r = store_idem_claim(i->st, &mine, &rec);
				continue;
			}
			cf_log_info("idempotency key %s: an interrupted %s had committed its change "
				    "to %s; answering it without acting again", key, method,
				    rec.effect_name);
			*first = rec;
			*start = IDEM_COMMITTED;
			return CF_OK;
		}
		if (!rec.committed && (!alive || strcmp(rec.owner, i->self) == 0)) {
			/* Its first attempt died before committing anything (what it
			 * made in the token is undone: recovery at start, or the
			 * fleet's sweep under the change lock): run it again, this
			 * attempt now the one a later replay names. */
			cf_log_info("idempotency key %s: an interrupted %s had changed nothing; "
				    "running it again", key, method);
			free(rec.response);
			rec.response = NULL;
			/* (A crash after this leaves what idempotency.pending.committed
			 * leaves: pending, nothing committed.) */
			if ((r = store_idem_takeover(i->st, &mine, rec.owner)) == CF_OK)
				return CF_OK;
		} else if ((int64_t)cf_mono_ms() > until_ms) {
			r = cf_error(CF_E_TIMEOUT, "a call with idempotency key %s is still running "
				     "on replica %s; retry later", key, rec.owner);
			break;
		} else {
			free(rec.response);
			rec.response = NULL;
			usleep(IDEM_POLL_MS * 1000);
		}
		if (r != CF_E_EXISTS && r != CF_OK)   /* the takeover failed */
			break;
		/* Again: what is recorded now (taken over, finished), or ours if
		 * it is gone. */
		memset(&rec, 0, sizeof(rec));
		r = store_idem_claim(i->st, &mine, &rec);
	}
	if (r == CF_OK) {
		CF_CRASH_POINT("idempotency.pending.committed");
		return CF_OK;
	}
	free(rec.response);
	done_running(i, key, uid);
	return r;
}

int
idem_begin(idem *i, const char *key, uint32_t uid, const char *method, const uint8_t *req,
	   size_t len, int carries_secret, const char *request_id, struct store_idem *first,
	   enum idem_start *start)
{
	uint8_t fp[32], digest[32];
	int r;

	*start = IDEM_RUN;
	r = fingerprint(i, method, req, len, carries_secret, fp, digest);
	if (r == CF_OK)
		r = begin(i, key, uid, method, fp, digest, request_id, first, start);
	/* An unkeyed digest of a request that may carry a secret. */
	OPENSSL_cleanse(digest, sizeof(digest));
	return r;
}

/* Outcomes that a retry may change: not kept, so the retry runs. */
static int
transient(int status)
{
	switch (status) {
	case CF_E_UNAVAILABLE:
	case CF_E_BUSY:
	case CF_E_TIMEOUT:
	case CF_E_CANCELLED:
	case CF_E_INTERNAL:
	case CF_E_NOMEM:
	case CF_E_IO:
		return 1;
	default:
		return 0;
	}
}

void
idem_finish(idem *i, const char *key, uint32_t uid, const char *method,
	    const char *request_id, int committed, int status, const char *message,
	    const uint8_t *resp, size_t resp_len)
{
	struct store_idem rec;
	struct running **me;
	int r;

	if (transient(status) && committed) {
		/* Stays pending and committed (as the store marked it): a retry
		 * answers the change instead of making it again. */
		r = CF_OK;
	} else if (transient(status)) {
		r = store_idem_release(i->st, key, uid, i->self);
	} else {
		memset(&rec, 0, sizeof(rec));
		snprintf(rec.key, sizeof(rec.key), "%s", key);
		rec.uid = uid;
		snprintf(rec.method, sizeof(rec.method), "%s", method);
		pthread_mutex_lock(&i->mu);
		me = find_running(i, key, uid);
		if (me != NULL)
			memcpy(rec.fingerprint, (*me)->fp, sizeof(rec.fingerprint));
		pthread_mutex_unlock(&i->mu);
		if (me == NULL) {
			/* A caller that skipped idem_begin: nothing of its own to settle. */
			cf_log_error("idempotency key %s: an outcome without its start is not "
				     "recorded", key);
			return;
		}
		snprintf(rec.request_id, sizeof(rec.request_id), "%s", request_id);
		rec.committed = committed;
		rec.done = 1;
		rec.status = status;
		snprintf(rec.message, sizeof(rec.message), "%s", message ? message : "");
		rec.response = (uint8_t *)resp;
		rec.response_len = resp_len;
		rec.created = (int64_t)time(NULL);
		r = store_idem_settle(i->st, &rec, i->self);
		if (r == CF_OK)
			CF_CRASH_POINT("idempotency.done.committed");
	}
	if (r == CF_E_EXISTS) {
		cf_log_warn("idempotency key %s: %s", key, cf_error_detail());
	} else if (r != CF_OK) {
		cf_log_error("idempotency key %s: cannot record the outcome: %s%s", key,
			     cf_error_detail(), committed ? "" : "; releasing it once the store "
			     "answers again");
		/* Left pending and ours, a duplicate elsewhere would wait for a
		 * call that is over: released (nothing was committed) as soon as
		 * the store can be written (idem_retry). */
		if (!committed)
			queue_release(i, key, uid);
	}
	done_running(i, key, uid);
}

void
idem_retry(idem *i)
{
	struct running *q, *next;

	pthread_mutex_lock(&i->mu);
	q = i->release;
	i->release = NULL;
	pthread_mutex_unlock(&i->mu);
	for (; q != NULL; q = next) {
		int r = store_idem_release(i->st, q->key, q->uid, i->self);

		next = q->next;
		if (r == CF_OK || r == CF_E_EXISTS) {
			cf_log_info("idempotency key %s: released after the store came back",
				    q->key);
			free(q);
			continue;
		}
		cf_error_clear();
		pthread_mutex_lock(&i->mu);
		q->next = i->release;
		i->release = q;
		pthread_mutex_unlock(&i->mu);
	}
}

void
idem_expire(idem *i, int64_t now)
{
	if (store_idem_expire(i->st, now - (int64_t)i->retention) != CF_OK)
		cf_log_error("idempotency: %s", cf_error_detail());
}
