/*
 * test_p11_recovery — the layer survives what happens to long-running token
 * clients: every session closed under it, the library finalized under it, a
 * logout, session objects destroyed behind its back, and all of that while
 * other threads keep signing; sessions stuck in an operation. The next operation must succeed without a
 * restart of the process.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <CUnit/Basic.h>

#include "cf_status.h"
#include "cf_test_token.h"

static struct cf_test_token tok;
static cf_p11 *p11;
static cf_p11_key *ec, *mac;
static const uint8_t msg[] = "recovery";

static int
suite_init(void)
{
	if (cf_test_token_create(&tok, "coffer-recovery") != 0 || cf_p11_open(&tok.cfg, &p11) != CF_OK)
		return -1;
	if (cf_p11_key_generate(p11, "rec-ec", 1, CF_KEY_EC_P256, 0, &ec) != CF_OK ||
	    cf_p11_key_generate(p11, "rec-mac", 1, CF_KEY_HMAC_SHA256, 0, &mac) != CF_OK)
		return -1;
	return 0;
}

static int
suite_clean(void)
{
	cf_p11_key_free(ec);
	cf_p11_key_free(mac);
	cf_p11_close(p11);
	cf_test_token_destroy(&tok);
	return 0;
}

/* Sign and MAC once; both must succeed. */
static void
use_keys(void)
{
	cf_buf *out = cf_buf_new(CF_P11_MAX_SIG);
	int r;

	r = cf_p11_sign(ec, NULL, msg, sizeof(msg), out);
	if (r != CF_OK)
		fprintf(stderr, "\n  sign: %s\n", cf_error_detail());
	CU_ASSERT_EQUAL(r, CF_OK);
	CU_ASSERT_EQUAL(cf_p11_verify(ec, NULL, msg, sizeof(msg), cf_buf_peek(out),
				      cf_buf_len(out)), CF_OK);
	cf_buf_reset(out);
	r = cf_p11_mac(mac, msg, sizeof(msg), out);
	if (r != CF_OK)
		fprintf(stderr, "\n  mac: %s\n", cf_error_detail());
	CU_ASSERT_EQUAL(r, CF_OK);
	cf_buf_free(out);
}

static void
test_close_all_sessions(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;

	struct cf_p11_stats s0, s1;

	use_keys();
	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	/* Closes the layer's anchor and pool too, which also ends the login. */
	CU_ASSERT_EQUAL(f->C_CloseAllSessions(slot), CKR_OK);
	cf_p11_stats(p11, &s0);
	use_keys();
	use_keys();
	/* One recovery (for metrics), and no operation failed. */
	cf_p11_stats(p11, &s1);
	CU_ASSERT_EQUAL(s1.recoveries - s0.recoveries, 1);
	CU_ASSERT_EQUAL(s1.errors, s0.errors);
}

static void
test_finalize_and_reinitialize(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;

	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	CU_ASSERT_EQUAL(f->C_Finalize(NULL), CKR_OK);
	use_keys();
	/* generation and lookup work after re-initialisation too */
	{
		cf_p11_key *k = NULL;

		CU_ASSERT_EQUAL(cf_p11_key_generate(p11, "after-finalize", 1, CF_KEY_ED25519, 0, &k),
				CF_OK);
		cf_p11_key_free(k);
		CU_ASSERT_EQUAL(cf_p11_key_open(p11, "after-finalize", 1, &k), CF_OK);
		cf_p11_key_free(k);
	}
}

static void
test_logout(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;

	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	/* The login belongs to the application: this logs the layer out too. */
	CU_ASSERT_EQUAL(f->C_Logout(s), CKR_OK);
	f->C_CloseSession(s);
	use_keys();
}

static void
test_session_copies_destroyed(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_BBOOL no = CK_FALSE;
	CK_ATTRIBUTE q[] = { { CKA_TOKEN, &no, sizeof(no) } };
	CK_OBJECT_HANDLE objs[32];
	CK_ULONG n = 0;

	use_keys();
	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	/* The layer's in-token session copies are visible to the application. */
	CU_ASSERT_EQUAL_FATAL(f->C_FindObjectsInit(s, q, 1), CKR_OK);
	CU_ASSERT_EQUAL(f->C_FindObjects(s, objs, 32, &n), CKR_OK);
	f->C_FindObjectsFinal(s);
	CU_ASSERT(n >= 2);
	for (CK_ULONG i = 0; i < n; i++)
		CU_ASSERT_EQUAL(f->C_DestroyObject(s, objs[i]), CKR_OK);
	f->C_CloseSession(s);
	use_keys();
}

static void
test_key_destroyed_elsewhere(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE o;
	cf_p11_key *k = NULL;
	cf_buf *out = cf_buf_new(CF_P11_MAX_SIG);

	CU_ASSERT_EQUAL_FATAL(cf_p11_key_generate(p11, "doomed", 1, CF_KEY_EC_P256, 0, &k), CF_OK);
	CU_ASSERT_EQUAL(cf_p11_sign(k, NULL, msg, sizeof(msg), out), CF_OK);
	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	CU_ASSERT_FATAL(cf_test_raw_find(f, s, CKO_PRIVATE_KEY, "coffer/doomed/1", &o) == 0);
	CU_ASSERT_EQUAL(f->C_DestroyObject(s, o), CKR_OK);
	/* The layer keeps signing with its session copy until the handle goes
	 * stale; once it re-resolves, the key is reported missing, cleanly. */
	CU_ASSERT_EQUAL(f->C_CloseAllSessions(slot), CKR_OK);
	cf_buf_reset(out);
	CU_ASSERT_EQUAL(cf_p11_sign(k, NULL, msg, sizeof(msg), out), CF_E_NOT_FOUND);
	cf_p11_key_free(k);
	cf_buf_free(out);
	use_keys();
}

/* Workers sign under the read side; the main thread breaks sessions under
 * the write side. SoftHSM frees a session's operation state in
 * C_CloseAllSessions even while another thread is inside C_Sign on it (a
 * use-after-free in the module), so sessions are broken only between
 * operations -- every worker then meets the dead sessions at once and they
 * race to recover. */
static pthread_rwlock_t gate = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;

struct signer {
	atomic_int *stop;
	long ok, failed;
};

static void *
signer_main(void *arg)
{
	struct signer *sg = arg;
	cf_buf *out = cf_buf_new(CF_P11_MAX_SIG);

	while (!atomic_load(sg->stop)) {
		int r;

		pthread_rwlock_rdlock(&gate);
		r = cf_p11_sign(ec, NULL, msg, sizeof(msg), out);
		pthread_rwlock_unlock(&gate);
		cf_buf_reset(out);
		if (r == CF_OK)
			sg->ok++;
		else {
			if (sg->failed++ == 0)
				fprintf(stderr, "\n  signer: %s\n", cf_error_detail());
		}
	}
	cf_buf_free(out);
	return NULL;
}

/* Sessions closed five times between the signatures of four threads: no
 * caller sees an error. */
static void
test_recovery_under_load(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	atomic_int stop = 0;
	struct signer sg[4];
	pthread_t th[4];
	struct timespec pause = { 0, 150 * 1000000L };
	long ok = 0, failed = 0;

	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	for (int i = 0; i < 4; i++) {
		sg[i] = (struct signer){ &stop, 0, 0 };
		pthread_create(&th[i], NULL, signer_main, &sg[i]);
	}
	for (int round = 0; round < 5; round++) {
		nanosleep(&pause, NULL);
		pthread_rwlock_wrlock(&gate);
		CU_ASSERT_EQUAL(f->C_CloseAllSessions(slot), CKR_OK);
		pthread_rwlock_unlock(&gate);
	}
	nanosleep(&pause, NULL);
	atomic_store(&stop, 1);
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		ok += sg[i].ok;
		failed += sg[i].failed;
	}
	fprintf(stderr, "(%ld signatures, %ld failed) ", ok, failed);
	CU_ASSERT(ok > 100);
	CU_ASSERT_EQUAL(failed, 0);
}

/* Every session of the module but ours left in an active signing
 * operation, the way a tpm2-pkcs11 session gets stuck under load: the layer
 * drops each such session (CKR_OPERATION_ACTIVE) and goes on with a fresh
 * one, never failing the call. */
static void
test_stuck_sessions(void)
{
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE o;
	CK_MECHANISM m = { CKM_ECDSA, NULL, 0 };
	unsigned stuck = 0;

	use_keys();
	use_keys();
	CU_ASSERT_FATAL(cf_test_raw_open(&tok, &f, &slot, &s) == 0);
	CU_ASSERT_FATAL(cf_test_raw_find(f, s, CKO_PRIVATE_KEY, "coffer/rec-ec/1", &o) == 0);
	/* Session handles are small numbers in SoftHSM, shared by the process. */
	for (CK_SESSION_HANDLE h = 1; h < 256; h++)
		if (h != s && f->C_SignInit(h, &m, o) == CKR_OK)
			stuck++;
	fprintf(stderr, "(%u sessions stuck) ", stuck);
	CU_ASSERT(stuck >= 2);
	for (int i = 0; i < 4; i++)
		use_keys();
	f->C_CloseSession(s);
}

int
main(void)
{
	static const struct cf_test_case cases[] = {
		{ "C_CloseAllSessions under the layer", test_close_all_sessions },
		{ "C_Finalize under the layer", test_finalize_and_reinitialize },
		{ "logout under the layer", test_logout },
		{ "session copies destroyed behind its back", test_session_copies_destroyed },
		{ "key destroyed elsewhere: clean NOT_FOUND", test_key_destroyed_elsewhere },
		{ "sessions closed while 4 threads sign", test_recovery_under_load },
		{ "sessions stuck in an operation", test_stuck_sessions },
		{ NULL, NULL },
	};

	return cf_test_main("p11_recovery", suite_init, suite_clean, cases);
}
