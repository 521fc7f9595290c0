/*
 * bench_p11 — operations per second through Coffer's PKCS#11 layer, beside a
 * baseline of raw Cryptoki calls on the same keys.
 *
 * usage: bench_p11 [--seconds N] [--rounds R] [--ops LIST] [--threads LIST] [--cpu]
 *                  [--uri URI --pin-file FILE [--module PATH]]
 *
 * Without --uri it makes a throw-away SoftHSM2 token (cf_test_token). It
 * generates one key per operation, then measures each operation for N
 * seconds at each thread count through the layer (cf_p11_*) and N seconds
 * with raw C_SignInit/C_Sign or C_EncryptInit/C_Encrypt on an in-token
 * session copy of the same key (the layer also works on session copies, so
 * the difference is the layer's own cost). The two paths run in alternating
 * slices so that changing background load affects both alike. This is a
 * benchmark, not a test.
 */
#define CRYPTOKI_COMPAT
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "cf_bench.h"
#include "cf_p11.h"
#include "cf_status.h"
#include "cf_test_token.h"

#define MAX_THREADS 64
#define MAX_THREAD_COUNTS 16
#define KEY_VERSION 1u
#define OUT_MAX 2048

enum op_id { OP_ECDSA, OP_ED25519, OP_RSA_PSS, OP_HMAC, OP_GCM, OP__COUNT };

struct op_def {
	const char *name;
	enum cf_key_type type;
	size_t msglen;
};

static const struct op_def ops[OP__COUNT] = {
	[OP_ECDSA] = { "ecdsa-p256-sign", CF_KEY_EC_P256, 32 },
	[OP_ED25519] = { "ed25519-sign", CF_KEY_ED25519, 32 },
	[OP_RSA_PSS] = { "rsa2048-pss-sign", CF_KEY_RSA_2048, 32 },
	[OP_HMAC] = { "hmac-sha256-256b", CF_KEY_HMAC_SHA256, 256 },
	[OP_GCM] = { "aes256-gcm-enc-1k", CF_KEY_AES_256, 1024 },
};

/* Raw Cryptoki access to the same token. */
struct raw {
	void *dl;
	CK_FUNCTION_LIST *f;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE holder;          /* owns the session copies; open all run */
	CK_OBJECT_HANDLE copy[OP__COUNT];  /* session copies of the keys (or the token objects) */
	int copied[OP__COUNT];             /* copy[] is a session copy to destroy */
};

/* One measurement: one operation, one path, n threads. */
struct run {
	enum op_id op;
	int use_raw;
	cf_p11_key *key;
	struct raw *raw;
	const EVP_MD *sha256;
	const uint8_t *msg;
	pthread_barrier_t start;
	atomic_bool stop;
	struct cf_bench_failure fail;
};

struct worker {
	struct run *run;
	pthread_t tid;
	unsigned long ops;
	double elapsed;
	double cpu;                        /* thread CPU seconds in the loop */
};

static double
clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Record the first failure and stop every thread. */
static void
run_fail(struct run *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void
run_fail(struct run *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cf_bench_failure_vset(&r->fail, fmt, ap);
	va_end(ap);
	atomic_store(&r->stop, true);
}

/* ---- one operation through the layer ---- */

static int
coffer_op(struct run *r, cf_buf *out)
{
	static const struct cf_sign_params pss = { CF_SIG_RSA_PSS, CF_HASH_SHA256, 0, 0 };
	const struct op_def *d = &ops[r->op];
	uint8_t iv[CF_GCM_IV_LEN];
	int st;

	cf_buf_reset(out);
	switch (r->op) {
	case OP_ECDSA:
	case OP_ED25519:
		st = cf_p11_sign(r->key, NULL, r->msg, d->msglen, out);
		break;
	case OP_RSA_PSS:
		st = cf_p11_sign(r->key, &pss, r->msg, d->msglen, out);
		break;
	case OP_HMAC:
		st = cf_p11_mac(r->key, r->msg, d->msglen, out);
		break;
	default:
		st = cf_p11_gcm_encrypt(r->key, NULL, 0, r->msg, d->msglen, iv, out);
		break;
	}
	if (st != CF_OK) {
		run_fail(r, "%s through coffer: %s: %s", d->name, cf_status_name(st),
			 cf_error_detail());
		return -1;
	}
	return 0;
}

/* ---- the same operation with raw Cryptoki calls ---- */

static int
raw_op(struct run *r, CK_SESSION_HANDLE s, uint8_t *out)
{
	const struct op_def *d = &ops[r->op];
	CK_FUNCTION_LIST *f = r->raw->f;
	CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
	CK_GCM_PARAMS gp;
	CK_MECHANISM mech = { 0, NULL, 0 };
	uint8_t digest[32], iv[CF_GCM_IV_LEN];
	const uint8_t *in = r->msg;
	CK_ULONG inlen = d->msglen, outlen = OUT_MAX, want;
	unsigned int mdlen;
	CK_RV rv;

	switch (r->op) {
	case OP_ECDSA:
	case OP_RSA_PSS:
		if (!EVP_Digest(r->msg, d->msglen, digest, &mdlen, r->sha256, NULL)) {
			run_fail(r, "%s raw: SHA-256 failed", d->name);
			return -1;
		}
		in = digest;
		inlen = sizeof(digest);
		if (r->op == OP_ECDSA) {
			mech.mechanism = CKM_ECDSA;
			want = 64;
		} else {
			mech.mechanism = CKM_RSA_PKCS_PSS;
			mech.pParameter = &pss;
			mech.ulParameterLen = sizeof(pss);
			want = 256;
		}
		break;
	case OP_ED25519:
		mech.mechanism = CKM_EDDSA;
		want = 64;
		break;
	case OP_HMAC:
		mech.mechanism = CKM_SHA256_HMAC;
		want = 32;
		break;
	default:
		if (RAND_bytes(iv, sizeof(iv)) != 1) {
			run_fail(r, "%s raw: RAND_bytes failed", d->name);
			return -1;
		}
		memset(&gp, 0, sizeof(gp));
		gp.pIv = iv;
		gp.ulIvLen = sizeof(iv);
		gp.ulIvBits = sizeof(iv) * 8;
		gp.pAAD = NULL;
		gp.ulAADLen = 0;
		gp.ulTagBits = CF_GCM_TAG_LEN * 8;
		mech.mechanism = CKM_AES_GCM;
		mech.pParameter = &gp;
		mech.ulParameterLen = sizeof(gp);
		want = d->msglen + CF_GCM_TAG_LEN;
		if ((rv = f->C_EncryptInit(s, &mech, r->raw->copy[r->op])) != CKR_OK ||
		    (rv = f->C_Encrypt(s, (CK_BYTE_PTR)in, inlen, out, &outlen)) != CKR_OK) {
			run_fail(r, "%s raw: C_EncryptInit/C_Encrypt returned 0x%lx", d->name,
				 (unsigned long)rv);
			return -1;
		}
		goto check;
	}
	if ((rv = f->C_SignInit(s, &mech, r->raw->copy[r->op])) != CKR_OK ||
	    (rv = f->C_Sign(s, (CK_BYTE_PTR)in, inlen, out, &outlen)) != CKR_OK) {
		run_fail(r, "%s raw: C_SignInit/C_Sign returned 0x%lx", d->name, (unsigned long)rv);
		return -1;
	}
check:
	if (outlen != want) {
		run_fail(r, "%s raw: token returned %lu bytes, expected %lu", d->name,
			 (unsigned long)outlen, (unsigned long)want);
		return -1;
	}
	return 0;
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct run *r = w->run;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	cf_buf *out = NULL;
	uint8_t *rawout = NULL;
	unsigned long n = 0;
	double t0, c0;
	CK_RV rv;

	/* Set up outside the timed loop; every thread reaches the barrier. */
	if (r->use_raw) {
		if ((rawout = malloc(OUT_MAX)) == NULL)
			run_fail(r, "out of memory");
		else if ((rv = r->raw->f->C_OpenSession(r->raw->slot, CKF_SERIAL_SESSION, NULL,
							   NULL, &s)) != CKR_OK)
			run_fail(r, "raw C_OpenSession returned 0x%lx", (unsigned long)rv);
	} else if ((out = cf_buf_new(OUT_MAX)) == NULL) {
		run_fail(r, "out of memory");
	}
	pthread_barrier_wait(&r->start);
	t0 = clock_s(CLOCK_MONOTONIC);
	c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
	while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		if ((r->use_raw ? raw_op(r, s, rawout) : coffer_op(r, out)) != 0)
			break;
		n++;
	}
	w->elapsed = clock_s(CLOCK_MONOTONIC) - t0;
	w->cpu = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
	w->ops = n;
	if (s != CK_INVALID_HANDLE)
		(void)r->raw->f->C_CloseSession(s);
	free(rawout);
	cf_buf_free(out);
	return NULL;
}

/* Results of one path (coffer or raw) summed over the slices of a measurement. */
struct tally {
	double rate;          /* sum over slices of ops/s */
	unsigned slices;
	double cpu;           /* thread CPU seconds */
	unsigned long ops;
};

/* Run one slice and add it to *t; 0, or -1 after printing why. */
static int
measure(struct run *r, unsigned nthreads, double seconds, struct tally *t)
{
	struct worker w[MAX_THREADS];
	struct timespec ts;
	double rate = 0.0;
	unsigned started = 0;
	int e;

	atomic_store(&r->stop, false);
	cf_bench_failure_reset(&r->fail);
	pthread_barrier_init(&r->start, NULL, nthreads + 1);
	for (unsigned i = 0; i < nthreads; i++) {
		w[i].run = r;
		w[i].ops = 0;
		w[i].elapsed = 0.0;
		w[i].cpu = 0.0;
		if ((e = pthread_create(&w[i].tid, NULL, worker_main, &w[i])) != 0) {
			fprintf(stderr, "bench_p11: pthread_create: %s\n", strerror(e));
			exit(1); /* the barrier cannot be released any more */
		}
		started++;
	}
	pthread_barrier_wait(&r->start);
	ts.tv_sec = (time_t)seconds;
	ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
	while (!atomic_load(&r->stop) && nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	atomic_store(&r->stop, true);
	for (unsigned i = 0; i < started; i++) {
		pthread_join(w[i].tid, NULL);
		if (w[i].elapsed > 0.0)
			rate += (double)w[i].ops / w[i].elapsed;
		t->cpu += w[i].cpu;
		t->ops += w[i].ops;
	}
	t->rate += rate;
	t->slices++;
	pthread_barrier_destroy(&r->start);
	if (atomic_load(&r->fail.failed)) {
		fprintf(stderr, "bench_p11: %s\n", r->fail.text);
		return -1;
	}
	return 0;
}

/*
 * Measure both paths for `seconds` each, in `rounds` alternating slices
 * (coffer, raw, raw, coffer, ...) so that drifting background load hits both
 * alike. Returns 0 or -1.
 */
static int
compare(struct run *r, unsigned nthreads, double seconds, unsigned rounds, struct tally *coffer,
	struct tally *raw)
{
	double slice = seconds / rounds;

	memset(coffer, 0, sizeof(*coffer));
	memset(raw, 0, sizeof(*raw));
	for (unsigned i = 0; i < rounds; i++) {
		for (int j = 0; j < 2; j++) {
			r->use_raw = (int)((i + (unsigned)j) & 1u);
			if (measure(r, nthreads, slice, r->use_raw ? raw : coffer) != 0)
				return -1;
		}
	}
	return 0;
}

static double
tally_rate(const struct tally *t)
{
	return t->slices > 0 ? t->rate / t->slices : 0.0;
}

static double
tally_cpu_us(const struct tally *t)
{
	return t->ops > 0 ? 1e6 * t->cpu / (double)t->ops : 0.0;
}

/* ---- raw setup: same module, same token, session copies of the keys ---- */

static int
raw_find_slot(struct raw *raw, const char *token_uri)
{
	P11KitUri *uri = NULL;
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64, matches = 0;
	CK_TOKEN_INFO ti;
	CK_RV rv;
	int ur, ret = -1;

	if ((uri = p11_kit_uri_new()) == NULL)
		return -1;
	if ((ur = p11_kit_uri_parse(token_uri, P11_KIT_URI_FOR_TOKEN, uri)) != P11_KIT_URI_OK) {
		fprintf(stderr, "bench_p11: bad URI %s: %s\n", token_uri, p11_kit_uri_message(ur));
		goto out;
	}
	if ((rv = raw->f->C_GetSlotList(CK_TRUE, slots, &n)) != CKR_OK) {
		fprintf(stderr, "bench_p11: raw C_GetSlotList returned 0x%lx\n", (unsigned long)rv);
		goto out;
	}
	for (CK_ULONG i = 0; i < n; i++) {
		if (raw->f->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
		    p11_kit_uri_match_token_info(uri, &ti) && matches++ == 0)
			raw->slot = slots[i];
	}
	if (matches != 1) {
		fprintf(stderr, "bench_p11: %lu tokens match %s\n", (unsigned long)matches,
			token_uri);
		goto out;
	}
	ret = 0;
out:
	p11_kit_uri_free(uri);
	return ret;
}

/* Log in on the holder session; the layer normally has done it already. */
static int
raw_login(struct raw *raw, const char *pin_file)
{
	char pin[256];
	size_t len = 0;
	FILE *fp;
	CK_RV rv;

	if ((fp = fopen(pin_file, "r")) == NULL) {
		fprintf(stderr, "bench_p11: %s: %s\n", pin_file, strerror(errno));
		return -1;
	}
	len = fread(pin, 1, sizeof(pin) - 1, fp);
	fclose(fp);
	while (len > 0 && (pin[len - 1] == '\n' || pin[len - 1] == '\r'))
		len--;
	rv = raw->f->C_Login(raw->holder, CKU_USER, (CK_UTF8CHAR_PTR)pin, len);
	OPENSSL_cleanse(pin, sizeof(pin));
	if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
		fprintf(stderr, "bench_p11: raw C_Login returned 0x%lx\n", (unsigned long)rv);
		return -1;
	}
	return 0;
}

static int
raw_open(struct raw *raw, const struct cf_p11_config *cfg)
{
	CK_C_INITIALIZE_ARGS args;
	CK_C_GetFunctionList getfl;
	CK_RV rv;

	memset(raw, 0, sizeof(*raw));
	raw->holder = CK_INVALID_HANDLE;
	for (int i = 0; i < OP__COUNT; i++)
		raw->copy[i] = CK_INVALID_HANDLE;
	/* The layer has loaded the module already: this shares its instance. */
	if ((raw->dl = dlopen(cfg->module_path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "bench_p11: dlopen %s: %s\n", cfg->module_path, dlerror());
		return -1;
	}
	if ((getfl = (CK_C_GetFunctionList)dlsym(raw->dl, "C_GetFunctionList")) == NULL ||
	    getfl(&raw->f) != CKR_OK || raw->f == NULL) {
		fprintf(stderr, "bench_p11: %s: no usable C_GetFunctionList\n", cfg->module_path);
		return -1;
	}
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = raw->f->C_Initialize(&args);
	if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		fprintf(stderr, "bench_p11: raw C_Initialize returned 0x%lx\n", (unsigned long)rv);
		return -1;
	}
	if (raw_find_slot(raw, cfg->token_uri) != 0)
		return -1;
	if ((rv = raw->f->C_OpenSession(raw->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
					NULL, &raw->holder)) != CKR_OK) {
		raw->holder = CK_INVALID_HANDLE;
		fprintf(stderr, "bench_p11: raw C_OpenSession returned 0x%lx\n", (unsigned long)rv);
		return -1;
	}
	return raw_login(raw, cfg->pin_file);
}

/* Find the key object of a version and make a session copy of it; a module
 * without C_CopyObject (tpm2-pkcs11) is measured on the token object, as the
 * layer then works. */
static int
raw_copy_key(struct raw *raw, enum op_id op, const cf_p11_key *k)
{
	CK_OBJECT_CLASS cls = cf_key_type_is_asymmetric(ops[op].type) ? CKO_PRIVATE_KEY :
			      CKO_SECRET_KEY;
	CK_BBOOL ck_false = CK_FALSE;
	CK_ATTRIBUTE tpl[] = { { CKA_TOKEN, &ck_false, sizeof(ck_false) } };
	char label[CF_KEY_NAME_MAX + 32];
	CK_ATTRIBUTE q[2];
	CK_OBJECT_HANDLE found[2];
	CK_ULONG n = 0;
	CK_RV rv;

	snprintf(label, sizeof(label), "coffer/%s/%u", cf_p11_key_name(k), cf_p11_key_version(k));
	q[0].type = CKA_CLASS;
	q[0].pValue = &cls;
	q[0].ulValueLen = sizeof(cls);
	q[1].type = CKA_LABEL;
	q[1].pValue = label;
	q[1].ulValueLen = strlen(label);
	if ((rv = raw->f->C_FindObjectsInit(raw->holder, q, 2)) != CKR_OK) {
		fprintf(stderr, "bench_p11: raw C_FindObjectsInit returned 0x%lx\n",
			(unsigned long)rv);
		return -1;
	}
	rv = raw->f->C_FindObjects(raw->holder, found, 2, &n);
	(void)raw->f->C_FindObjectsFinal(raw->holder);
	if (rv != CKR_OK || n != 1) {
		fprintf(stderr, "bench_p11: %s: found %lu objects labelled %s (rv 0x%lx)\n",
			ops[op].name, (unsigned long)n, label, (unsigned long)rv);
		return -1;
	}
	rv = raw->f->C_CopyObject(raw->holder, found[0], tpl, 1, &raw->copy[op]);
	if (rv == CKR_FUNCTION_NOT_SUPPORTED) {
		raw->copy[op] = found[0];
		return 0;
	}
	raw->copied[op] = rv == CKR_OK;
	if (rv != CKR_OK) {
		raw->copy[op] = CK_INVALID_HANDLE;
		fprintf(stderr, "bench_p11: %s: raw C_CopyObject returned 0x%lx\n", ops[op].name,
			(unsigned long)rv);
		return -1;
	}
	return 0;
}

static void
raw_close(struct raw *raw)
{
	if (raw->f != NULL && raw->holder != CK_INVALID_HANDLE) {
		for (int i = 0; i < OP__COUNT; i++)
			if (raw->copied[i])
				(void)raw->f->C_DestroyObject(raw->holder, raw->copy[i]);
		(void)raw->f->C_CloseSession(raw->holder);
	}
	/* No C_Finalize: the layer owns the module's initialisation. */
	if (raw->dl != NULL)
		dlclose(raw->dl);
	memset(raw, 0, sizeof(*raw));
}

/* ---- options ---- */

static void
usage(FILE *fp)
{
	fprintf(fp,
		"usage: bench_p11 [options]\n"
		"  --seconds N       measure each operation and path for N seconds (default 2)\n"
		"  --rounds R        split each measurement into R slices, alternating coffer\n"
		"                    and raw (default 4)\n"
		"  --ops LIST        comma-separated subset of:");
	for (int i = 0; i < OP__COUNT; i++)
		fprintf(fp, "%s%s", i ? "," : " ", ops[i].name);
	fprintf(fp,
		"\n"
		"  --threads LIST    comma-separated thread counts (default 1,2; max %d)\n"
		"  --cpu             also print the CPU time per operation (microseconds of\n"
		"                    the calling threads; less sensitive to other load)\n"
		"  --uri URI         use this existing token instead of a temporary one\n"
		"  --pin-file FILE   user PIN of that token (required with --uri)\n"
		"  --module PATH     PKCS#11 module (default: %s)\n"
		"  --help            this text\n"
		"Keys named bench-<pid>-* are generated in the token and, for an existing\n"
		"token, destroyed again at the end.\n", MAX_THREADS, cf_test_module());
}

static int
parse_ops(const char *list, int selected[OP__COUNT])
{
	char *copy = strdup(list), *save = NULL, *tok;
	int any = 0, ret = 0;

	if (copy == NULL)
		return -1;
	memset(selected, 0, sizeof(int) * OP__COUNT);
	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		int i;

		for (i = 0; i < OP__COUNT; i++)
			if (strcmp(tok, ops[i].name) == 0)
				break;
		if (i == OP__COUNT) {
			fprintf(stderr, "bench_p11: unknown operation \"%s\"\n", tok);
			ret = -1;
			break;
		}
		selected[i] = 1;
		any = 1;
	}
	free(copy);
	return ret == 0 && any ? 0 : -1;
}

static int
parse_threads(const char *list, unsigned counts[MAX_THREAD_COUNTS], unsigned *n)
{
	const char *q = list;
	char *end;
	unsigned long v;

	*n = 0;
	while (*q != '\0') {
		errno = 0;
		v = strtoul(q, &end, 10);
		if (end == q || errno != 0 || v < 1 || v > MAX_THREADS ||
		    (*end != ',' && *end != '\0') || *n == MAX_THREAD_COUNTS) {
			fprintf(stderr, "bench_p11: bad --threads list \"%s\" (1..%d, at most %d "
				"entries)\n", list, MAX_THREADS, MAX_THREAD_COUNTS);
			return -1;
		}
		counts[(*n)++] = (unsigned)v;
		q = *end == ',' ? end + 1 : end;
	}
	return *n > 0 ? 0 : -1;
}

/* ---- main ---- */

int
main(int argc, char **argv)
{
	struct cf_test_token tok;
	struct cf_p11_config cfg = { 0 };
	struct raw raw;
	struct run run;
	cf_p11 *p = NULL;
	cf_p11_key *keys[OP__COUNT] = { NULL };
	int selected[OP__COUNT] = { 1, 1, 1, 1, 1 };
	unsigned counts[MAX_THREAD_COUNTS] = { 1, 2 }, ncounts = 2, maxthreads = 0;
	const char *uri = NULL, *pin_file = NULL, *module = NULL;
	double seconds = 2.0;
	uint8_t msg[1024];
	char date[64];
	time_t t;
	struct tally ct, rt;
	unsigned rounds = 4;
	int r, rc = 1, have_token = 0, have_raw = 0, show_cpu = 0;

	memset(&raw, 0, sizeof(raw));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		}
		if (strcmp(a, "--cpu") == 0) {
			show_cpu = 1;
			continue;
		}
		if (v == NULL) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--seconds") == 0) {
			char *end;

			seconds = strtod(v, &end);
			if (end == v || *end != '\0' || !(seconds > 0.0 && seconds <= 3600.0)) {
				fprintf(stderr, "bench_p11: bad --seconds \"%s\"\n", v);
				return 2;
			}
		} else if (strcmp(a, "--rounds") == 0) {
			char *end;
			unsigned long n = strtoul(v, &end, 10);

			if (end == v || *end != '\0' || n < 1 || n > 1000) {
				fprintf(stderr, "bench_p11: bad --rounds \"%s\"\n", v);
				return 2;
			}
			rounds = (unsigned)n;
		} else if (strcmp(a, "--ops") == 0) {
			if (parse_ops(v, selected) != 0)
				return 2;
		} else if (strcmp(a, "--threads") == 0) {
			if (parse_threads(v, counts, &ncounts) != 0)
				return 2;
		} else if (strcmp(a, "--uri") == 0) {
			uri = v;
		} else if (strcmp(a, "--pin-file") == 0) {
			pin_file = v;
		} else if (strcmp(a, "--module") == 0) {
			module = v;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if ((uri == NULL) != (pin_file == NULL)) {
		fprintf(stderr, "bench_p11: --uri and --pin-file go together\n");
		return 2;
	}
	for (unsigned i = 0; i < ncounts; i++)
		if (counts[i] > maxthreads)
			maxthreads = counts[i];

	if (uri != NULL) {
		cfg.module_path = module != NULL ? module : cf_test_module();
		cfg.token_uri = uri;
		cfg.pin_file = pin_file;
	} else {
		if (cf_test_token_create(&tok, "coffer-bench") != 0)
			goto out;
		have_token = 1;
		cfg = tok.cfg;
		if (module != NULL)
			cfg.module_path = module;
	}
	/* Enough pooled sessions that threads never wait for one. */
	cfg.pool_size = maxthreads > 8 ? maxthreads : 0;
	if ((r = cf_p11_open(&cfg, &p)) != CF_OK) {
		fprintf(stderr, "bench_p11: cf_p11_open: %s: %s\n", cf_status_name(r),
			cf_error_detail());
		goto out;
	}
	for (int i = 0; i < OP__COUNT; i++) {
		char name[64];

		if (!selected[i])
			continue;
		snprintf(name, sizeof(name), "bench-%ld-%s", (long)getpid(),
			 cf_key_type_name(ops[i].type));
		if ((r = cf_p11_key_generate(p, name, KEY_VERSION, ops[i].type, 0, &keys[i])) !=
		    CF_OK) {
			fprintf(stderr, "bench_p11: generating %s: %s: %s\n", name, cf_status_name(r),
				cf_error_detail());
			goto out;
		}
	}
	have_raw = 1; /* raw_close() undoes a partial raw_open() too */
	if (raw_open(&raw, &cfg) != 0)
		goto out;
	for (int i = 0; i < OP__COUNT; i++)
		if (selected[i] && raw_copy_key(&raw, (enum op_id)i, keys[i]) != 0)
			goto out;

	memset(&run, 0, sizeof(run));
	cf_bench_failure_init(&run.fail);
	run.raw = &raw;
	run.msg = msg;
	if ((run.sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL ||
	    RAND_bytes(msg, sizeof(msg)) != 1) {
		fprintf(stderr, "bench_p11: OpenSSL set-up failed\n");
		goto out_run;
	}

	t = time(NULL);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", localtime(&t));
	printf("# bench_p11 %s  module %s  token %s  cpus %ld  %.3g s per path in %u slices\n",
	       date, cfg.module_path, cfg.token_uri, sysconf(_SC_NPROCESSORS_ONLN), seconds, rounds);
	printf("%-20s %-8s %-14s %-11s %-10s", "operation", "threads", "coffer ops/s", "raw ops/s",
	       "coffer/raw");
	if (show_cpu)
		printf("  %-14s %-11s %s", "coffer cpu/op", "raw cpu/op", "overhead");
	printf("\n");
	fflush(stdout);
	for (int i = 0; i < OP__COUNT; i++) {
		if (!selected[i])
			continue;
		run.op = (enum op_id)i;
		run.key = keys[i];
		/* Warm up both paths once (session copy, pooled session, caches). */
		if (compare(&run, 1, 0.1, 1, &ct, &rt) != 0)
			goto out_run;
		for (unsigned c = 0; c < ncounts; c++) {
			if (compare(&run, counts[c], seconds, rounds, &ct, &rt) != 0)
				goto out_run;
			printf("%-20s %-8u %-14.0f %-11.0f %5.1f%%", ops[i].name, counts[c],
			       tally_rate(&ct), tally_rate(&rt),
			       tally_rate(&rt) > 0.0 ? 100.0 * tally_rate(&ct) / tally_rate(&rt) : 0.0);
			if (show_cpu)
				printf("      %-14.2f %-11.2f %+.2f us", tally_cpu_us(&ct),
				       tally_cpu_us(&rt), tally_cpu_us(&ct) - tally_cpu_us(&rt));
			printf("\n");
			fflush(stdout);
		}
	}
	rc = 0;
out_run:
	EVP_MD_free((EVP_MD *)run.sha256);
	cf_bench_failure_fini(&run.fail);
out:
	if (have_raw)
		raw_close(&raw);
	for (int i = 0; i < OP__COUNT; i++) {
		/* A temporary token disappears as a whole; clean up an existing one. */
		if (keys[i] != NULL && !have_token && (r = cf_p11_key_destroy(keys[i])) != CF_OK)
			fprintf(stderr, "bench_p11: destroying %s: %s: %s\n",
				cf_p11_key_name(keys[i]), cf_status_name(r), cf_error_detail());
		cf_p11_key_free(keys[i]);
	}
	cf_p11_close(p);
	if (have_token)
		cf_test_token_destroy(&tok);
	return rc;
}
