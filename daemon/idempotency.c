#include "idempotency.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_status.h"

/* A (key, uid) whose call is running. */
struct running {
	char key[STORE_IDEM_KEY_MAX + 1];
	uint32_t uid;
	struct running *next;
};

struct idem {
	store *st;
	unsigned retention;
	pthread_mutex_t mu;
	pthread_cond_t cv;       /* a running call finished */
	struct running *run;
};

int
idem_open(store *st, unsigned retention_s, idem **out)
{
	idem *i = calloc(1, sizeof(*i));

	if (i == NULL)
		return cf_nomem();
	i->st = st;
	i->retention = retention_s;
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

static void
fingerprint(const char *method, const uint8_t *req, size_t len, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();

	memset(out, 0, 32);
	if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(c, method, strlen(method) + 1) == 1 &&
	    EVP_DigestUpdate(c, req != NULL ? req : (const uint8_t *)"", len) == 1)
		EVP_DigestFinal_ex(c, out, NULL);
	EVP_MD_CTX_free(c);
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

int
idem_begin(idem *i, const char *key, uint32_t uid, const char *method, const uint8_t *req,
	   size_t len, const char *request_id, struct store_idem *first, enum idem_start *start)
{
	struct store_idem rec;
	struct running *me;
	struct timespec until;
	uint8_t fp[32];
	int r;

	*start = IDEM_RUN;
	fingerprint(method, req, len, fp);
	if ((me = calloc(1, sizeof(*me))) == NULL)
		return cf_nomem();
	snprintf(me->key, sizeof(me->key), "%s", key);
	me->uid = uid;
	/* Concurrent duplicates: one runs, the others wait for its outcome. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += IDEM_WAIT_MS / 1000;
	pthread_mutex_lock(&i->mu);
	while (find_running(i, key, uid) != NULL)
		if (pthread_cond_timedwait(&i->cv, &i->mu, &until) != 0) {
			pthread_mutex_unlock(&i->mu);
			free(me);
			return cf_error(CF_E_TIMEOUT, "a call with idempotency key %s is still "
					"running; retry later", key);
		}
	me->next = i->run;
	i->run = me;
	pthread_mutex_unlock(&i->mu);

	memset(&rec, 0, sizeof(rec));
	r = store_idem_get(i->st, key, uid, &rec);
	if (r == CF_E_NOT_FOUND) {
		/* Recorded before the call acts: a crash leaves it pending. */
		snprintf(rec.key, sizeof(rec.key), "%s", key);
		rec.uid = uid;
		snprintf(rec.method, sizeof(rec.method), "%s", method);
		memcpy(rec.fingerprint, fp, 32);
		rec.created = (int64_t)time(NULL);
		snprintf(rec.request_id, sizeof(rec.request_id), "%s", request_id);
		if ((r = store_idem_put(i->st, &rec)) == CF_OK) {
			CF_CRASH_POINT("idempotency.pending.committed");
			return CF_OK;
		}
	} else if (r == CF_OK && (strcmp(rec.method, method) != 0 ||
				  CRYPTO_memcmp(rec.fingerprint, fp, 32) != 0)) {
		r = cf_error(CF_E_PRECONDITION, "idempotency key %s was used for another request "
			     "(%s); use a new key for a new request", key, rec.method);
	} else if (r == CF_OK && !rec.done && rec.committed) {
		cf_log_info("idempotency key %s: an interrupted %s had committed its change to %s; "
			    "answering it without acting again", key, method, rec.effect_name);
		*first = rec;
		*start = IDEM_COMMITTED;
		return CF_OK;
	} else if (r == CF_OK && !rec.done) {
		/* Its first attempt died before committing anything (start-up
		 * recovery removed what it made in the token): run it again. */
		cf_log_info("idempotency key %s: an interrupted %s had changed nothing; running it "
			    "again", key, method);
		free(rec.response);
		rec.response = NULL;
		rec.response_len = 0;
		/* This attempt is now the one a later replay names. */
		snprintf(rec.request_id, sizeof(rec.request_id), "%s", request_id);
		/* (A crash after this leaves what idempotency.pending.committed
		 * leaves: pending, nothing committed.) */
		if ((r = store_idem_put(i->st, &rec)) == CF_OK)
			return CF_OK;
	} else if (r == CF_OK) {
		*first = rec;
		*start = IDEM_REPLAY;
		done_running(i, key, uid);
		return CF_OK;
	}
	free(rec.response);
	done_running(i, key, uid);
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
idem_finish(idem *i, const char *key, uint32_t uid, const char *method, const uint8_t *req,
	    size_t len, const char *request_id, int committed, int status, const char *message,
	    const uint8_t *resp, size_t resp_len)
{
	struct store_idem rec;
	int r;

	if (transient(status) && committed) {
		/* Stays pending and committed (as the store marked it): a retry
		 * answers the change instead of making it again. */
		r = CF_OK;
	} else if (transient(status)) {
		r = store_idem_delete(i->st, key, uid);
	} else {
		memset(&rec, 0, sizeof(rec));
		snprintf(rec.key, sizeof(rec.key), "%s", key);
		rec.uid = uid;
		snprintf(rec.method, sizeof(rec.method), "%s", method);
		fingerprint(method, req, len, rec.fingerprint);
		snprintf(rec.request_id, sizeof(rec.request_id), "%s", request_id);
		rec.committed = committed;
		rec.done = 1;
		rec.status = status;
		snprintf(rec.message, sizeof(rec.message), "%s", message ? message : "");
		rec.response = (uint8_t *)resp;
		rec.response_len = resp_len;
		rec.created = (int64_t)time(NULL);
		r = store_idem_put(i->st, &rec);
		if (r == CF_OK)
			CF_CRASH_POINT("idempotency.done.committed");
	}
	if (r != CF_OK)
		cf_log_error("idempotency key %s: cannot record the outcome: %s", key,
			     cf_error_detail());
	done_running(i, key, uid);
}

void
idem_expire(idem *i, int64_t now)
{
	if (store_idem_expire(i->st, now - (int64_t)i->retention) != CF_OK)
		cf_log_error("idempotency: %s", cf_error_detail());
}
