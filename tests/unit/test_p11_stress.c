/*
 * test_p11_stress — 8 threads of mixed operations for about 10 s (set
 * COFFER_STRESS_SECONDS) while 4 threads generate keys. Zero errors are
 * allowed, and afterwards every key in the token must still be usable: the
 * serialised token writes keep SoftHSM's token intact (SoftHSMv2#573).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/Basic.h>
#include <openssl/rand.h>

#include "cf_status.h"
#include "cf_test_token.h"

#define USERS 8
#define MAKERS 4

static struct cf_test_token tok;
static cf_p11 *p11;
static atomic_int stop;
static const uint8_t msg[] = "stress message";

static const enum cf_key_type base_types[] = {
	CF_KEY_EC_P256, CF_KEY_EC_P384, CF_KEY_ED25519, CF_KEY_RSA_2048,
	CF_KEY_HMAC_SHA256, CF_KEY_HMAC_SHA512, CF_KEY_AES_256,
};
#define NBASE (sizeof(base_types) / sizeof(base_types[0]))
static cf_p11_key *base[NBASE];

static int
suite_init(void)
{
	char name[32];

	if (cf_test_token_create(&tok, "coffer-stress") != 0 || cf_p11_open(&tok.cfg, &p11) != CF_OK)
		return -1;
	for (size_t i = 0; i < NBASE; i++) {
		snprintf(name, sizeof(name), "base-%zu", i);
		if (cf_p11_key_generate(p11, name, 1, base_types[i], 0, &base[i]) != CF_OK)
			return -1;
	}
	return 0;
}

static int
suite_clean(void)
{
	for (size_t i = 0; i < NBASE; i++)
		cf_p11_key_free(base[i]);
	cf_p11_close(p11);
	cf_test_token_destroy(&tok);
	return 0;
}

/* One full use of a key: sign+verify, MAC+verify, or encrypt+decrypt. */
static int
exercise(cf_p11_key *k, const char **what)
{
	enum cf_key_type t = cf_p11_key_type(k);
	cf_buf *out = cf_buf_new(4096);
	cf_secret *pt = NULL;
	uint8_t iv[CF_GCM_IV_LEN];
	int r;

	if (cf_key_type_is_asymmetric(t)) {
		*what = "sign";
		if ((r = cf_p11_sign(k, NULL, msg, sizeof(msg), out)) == CF_OK) {
			*what = "verify";
			r = cf_p11_verify(k, NULL, msg, sizeof(msg), cf_buf_peek(out), cf_buf_len(out));
		}
	} else if (cf_key_type_is_hmac(t)) {
		*what = "mac";
		if ((r = cf_p11_mac(k, msg, sizeof(msg), out)) == CF_OK) {
			*what = "mac-verify";
			r = cf_p11_mac_verify(k, msg, sizeof(msg), cf_buf_peek(out), cf_buf_len(out));
		}
	} else {
		*what = "encrypt";
		if ((r = cf_p11_gcm_encrypt(k, msg, 4, msg, sizeof(msg), iv, out)) == CF_OK) {
			*what = "decrypt";
			r = cf_p11_gcm_decrypt(k, msg, 4, iv, cf_buf_peek(out), cf_buf_len(out), &pt);
			if (r == CF_OK && !cf_secret_equal_mem(pt, msg, sizeof(msg)))
				r = CF_E_INTERNAL;
		}
	}
	cf_secret_free(pt);
	cf_buf_free(out);
	return r;
}

struct worker {
	int id;
	long ops, errors;
};

static void
report(const char *who, int id, const char *what, int r)
{
	fprintf(stderr, "\n  %s %d: %s failed: %s: %s\n", who, id, what, cf_status_name(r),
		cf_error_detail());
}

static void *
user_main(void *arg)
{
	struct worker *w = arg;
	unsigned seed = (unsigned)w->id * 7919u;
	const char *what;

	while (!atomic_load(&stop)) {
		int r = exercise(base[(size_t)rand_r(&seed) % NBASE], &what);

		w->ops++;
		if (r != CF_OK && w->errors++ < 3)
			report("user", w->id, what, r);
	}
	return NULL;
}

static void *
maker_main(void *arg)
{
	static const enum cf_key_type made[] = { CF_KEY_EC_P256, CF_KEY_ED25519,
						 CF_KEY_HMAC_SHA256, CF_KEY_AES_256,
						 CF_KEY_EC_P384 };
	struct worker *w = arg;
	char name[64];
	const char *what;

	for (unsigned n = 0; !atomic_load(&stop); n++) {
		cf_p11_key *k = NULL;
		int r;

		snprintf(name, sizeof(name), "made-%d-%u", w->id, n);
		r = cf_p11_key_generate(p11, name, 1 + n % 3, made[n % 5], 0, &k);
		if (r == CF_OK)
			r = exercise(k, &what);
		else
			what = "generate";
		w->ops++;
		if (r != CF_OK && w->errors++ < 3)
			report("maker", w->id, what, r);
		cf_p11_key_free(k);
	}
	return NULL;
}

struct tally {
	long keys, failures;
};

static int
check_one(const char *name, uint32_t version, enum cf_key_type type, void *arg)
{
	struct tally *t = arg;
	cf_p11_key *k = NULL;
	const char *what = "open";
	int r;

	t->keys++;
	if ((r = cf_p11_key_open(p11, name, version, &k)) == CF_OK &&
	    cf_p11_key_type(k) == type)
		r = exercise(k, &what);
	if (r != CF_OK) {
		if (t->failures++ < 5)
			fprintf(stderr, "\n  key %s/%u unusable (%s): %s\n", name, version, what,
				cf_error_detail());
	}
	cf_p11_key_free(k);
	return 0;
}

static void
test_mixed_load_with_generation(void)
{
	struct worker users[USERS], makers[MAKERS];
	pthread_t ut[USERS], mt[MAKERS];
	const char *env = getenv("COFFER_STRESS_SECONDS");
	unsigned seconds = env ? (unsigned)atoi(env) : 10;
	long ops = 0, errors = 0, made = 0, merrors = 0;
	struct tally t = { 0, 0 };

	for (int i = 0; i < USERS; i++) {
		users[i] = (struct worker){ i, 0, 0 };
		pthread_create(&ut[i], NULL, user_main, &users[i]);
	}
	for (int i = 0; i < MAKERS; i++) {
		makers[i] = (struct worker){ i, 0, 0 };
		pthread_create(&mt[i], NULL, maker_main, &makers[i]);
	}
	sleep(seconds ? seconds : 1);
	atomic_store(&stop, 1);
	for (int i = 0; i < USERS; i++) {
		pthread_join(ut[i], NULL);
		ops += users[i].ops;
		errors += users[i].errors;
	}
	for (int i = 0; i < MAKERS; i++) {
		pthread_join(mt[i], NULL);
		made += makers[i].ops;
		merrors += makers[i].errors;
	}
	fprintf(stderr, "(%ld mixed ops, %ld keys made in %u s) ", ops, made, seconds);
	CU_ASSERT_EQUAL(errors, 0);
	CU_ASSERT_EQUAL(merrors, 0);
	CU_ASSERT(ops > 100);
	CU_ASSERT(made > 10);
	/* Every key in the token is found and usable, from the layer's own list. */
	CU_ASSERT_EQUAL(cf_p11_key_list(p11, check_one, &t), CF_OK);
	fprintf(stderr, "(%ld keys checked) ", t.keys);
	CU_ASSERT_EQUAL(t.keys, (long)NBASE + made);
	CU_ASSERT_EQUAL(t.failures, 0);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "8 users and 4 key makers, then every key usable", test_mixed_load_with_generation },
		{ NULL, NULL },
	};

	return cf_test_main("p11_stress", suite_init, suite_clean, cases);
}
