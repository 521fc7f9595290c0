/* KeyService's batches: SignBatch, VerifyBatch, MacBatch, VerifyMacBatch.
 * Many items for one key and version, each answered with its own status
 * (coffer.proto, "Batches"). Dispatch has already checked the item count,
 * authorized the call once and taken one rate-limit token per item it lets
 * run (hcall.batch_granted); the key version is resolved once here. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_arena.h"
#include "cf_crashpoint.h"
#include "cf_log.h"
#include "cf_pbwipe.h"
#include "cf_status.h"
#include "cf_time.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"
#include "share.h"

/* Item i (of n) beyond the tokens the rate limits gave the call. */
static int
beyond_limit(const struct hcall *c, enum cf_op op, size_t i, size_t n)
{
	return cf_error(CF_E_EXHAUSTED, "rate limit of principal %s%s%s exceeded at item %zu "
			"of %zu (%u granted); retry after %u ms", c->principal ? c->principal : "",
			c->batch_all_ops ? "" : " for ", c->batch_all_ops ? "" : policy_op_name(op),
			i + 1, n, c->batch_granted, c->batch_retry_ms);
}

/* Item i (of n) found the caller gone (cancelled, or its deadline passed):
 * the call's answer would not be read, so the rest of the batch is not run. */
static int
caller_gone(const struct hcall *c, size_t i, size_t n)
{
	if (c->cancelled != NULL && __atomic_load_n(c->cancelled, __ATOMIC_RELAXED))
		return cf_error(CF_E_CANCELLED, "the caller cancelled the call before item %zu of "
				"%zu ran", i + 1, n);
	if (c->deadline_ms == 0)
		return CF_OK;
	if ((int64_t)cf_mono_ms() < c->deadline_ms)
		return CF_OK;
	return cf_error(CF_E_TIMEOUT, "the call's deadline passed before item %zu of %zu ran", i + 1,
			n);
}

/* The status of an item of a `what` batch that ended with r; the thread's
 * error detail is consumed. */
static Coffer__V1__ItemStatus *
item_status(enum cf_op what, int r)
{
	Coffer__V1__ItemStatus *st = h_new_msg(&coffer__v1__item_status__descriptor);
	const char *msg = r == CF_OK ? "" : cf_error_message(r);

	/* Logged as dispatch logs a call's: a fault, not a refusal. */
	if (r != CF_OK && cf_status_grpc(r) == cf_status_grpc(CF_E_INTERNAL))
		cf_log_error("%s batch item: %s", policy_op_name(what), msg);
	if (st == NULL)
		return NULL;
	st->code = (int32_t)cf_status_grpc(r);
	if (msg[0] != '\0' && (st->message = strdup(msg)) == NULL) {
		protobuf_c_message_free_unpacked(&st->base, &cf_pbwipe_allocator);
		return NULL;
	}
	cf_error_clear();
	return st;
}

/* One item: request, key, item index, its result (to fill), scratch space. */
typedef int (*item_fn)(const void *req, cf_p11_key *k, size_t i, void *result, cf_buf *scratch);

/* A batch's items, run as a job its worker shares with the other cores
 * (share.h): each item writes only its own result. */
struct items_job {
	struct share_job sj;   /* first */
	const struct hcall *c;
	enum cf_op op;
	const void *req;
	cf_p11_key *k;
	item_fn fn;
	size_t scratch;        /* bytes of scratch an item needs, or 0 */
	const ProtobufCMessageDescriptor *d;
	size_t status_offset;
	ProtobufCMessage **v;
	atomic_int nomem;      /* an item's result could not be allocated */
};

/* How long an item of each batch method takes, for share_run (a batch of
 * HMACs stays on its worker; signatures are spread). */
static atomic_uint_fast64_t item_ns[CF_OP_VERIFY_MAC + 1] = {
	[CF_OP_SIGN] = SHARE_ITEM_NS_FIRST, [CF_OP_VERIFY] = SHARE_ITEM_NS_FIRST,
	[CF_OP_MAC] = SHARE_ITEM_NS_FIRST, [CF_OP_VERIFY_MAC] = SHARE_ITEM_NS_FIRST,
};

static void
item_run(struct share_job *sj, size_t i)
{
	struct items_job *j = (struct items_job *)(void *)sj;
	size_t n = sj->n;
	ProtobufCMessage *res;
	Coffer__V1__ItemStatus *st;
	cf_buf *scratch = NULL;
	int r;

	if (atomic_load_explicit(&j->nomem, memory_order_relaxed))
		return;   /* the call fails whole */
	if ((res = j->v[i] = h_new_msg(j->d)) == NULL ||
	    (j->scratch > 0 && (scratch = cf_buf_new(j->scratch)) == NULL))
		goto nomem;
	if (i >= j->c->batch_granted)
		r = beyond_limit(j->c, j->op, i, n);
	else if ((r = caller_gone(j->c, i, n)) == CF_OK) {
		CF_HOLD_POINT("batch.item");
		r = j->fn(j->req, j->k, i, res, scratch);
	}
	cf_buf_free(scratch);
	/* The status is made on the thread whose error detail it consumes. */
	if ((st = item_status(j->op, r)) == NULL)
		goto nomem;
	memcpy((char *)res + j->status_offset, &st, sizeof(st));
	return;
nomem:
	cf_error_clear();
	atomic_store(&j->nomem, 1);
}

/* Run fn for each of the n items of req, up to the ones the rate limits
 * granted, into *results (a new array of n results of type d, each with its
 * status; the count is set at once so that a half-built array is freed with
 * the response). The items are spread over the cores when they take long
 * enough; a caller gone or a rate limit reached is judged per item as it
 * starts (a sealed batch's stay on its worker). Fails only when memory
 * does. */
static int
run_items(const struct hcall *c, enum cf_op op, const void *req, size_t n, cf_p11_key *k,
	  item_fn fn, size_t scratch, const ProtobufCMessageDescriptor *d, void *results,
	  size_t *n_results)
{
	struct items_job j = { .c = c, .op = op, .req = req, .k = k, .fn = fn,
			       .scratch = scratch, .d = d };
	ProtobufCMessage **v = cf_pbwipe_allocator.alloc(NULL, n * sizeof(*v));

	if (v == NULL)
		return cf_nomem();
	memset(v, 0, n * sizeof(*v));
	memcpy(results, &v, sizeof(v));
	*n_results = n;
	j.v = v;
	j.status_offset = protobuf_c_message_descriptor_get_field_by_name(d, "status")->offset;
	atomic_init(&j.nomem, 0);
	j.sj.run = item_run;
	j.sj.n = n;
	j.sj.item_ns = &item_ns[op];
	/* A sealed batch's answer is built in its thread's locked arena
	 * (cf_arena.h), which other threads cannot allocate from: it stays on
	 * its worker. */
	share_run_sync(cf_arena_current() == NULL ? c->sv->share : NULL, &j.sj);
	return atomic_load(&j.nomem) ? cf_nomem() : CF_OK;
}

/* One signing item: its data checked, then signed. */
static int
sign_item(const void *r_, cf_p11_key *k, size_t i, void *res, cf_buf *sig)
{
	const Coffer__V1__SignBatchRequest *req = r_;
	const Coffer__V1__SignBatchItem *it = req->items[i];
	Coffer__V1__SignBatchResult *out = res;
	struct cf_sign_params sp;
	const uint8_t *in;
	size_t inlen;
	int r;

	if ((r = h_sign_params(req->hash, req->scheme, req->ecdsa_raw, it->message, it->digest, &sp,
			       &in, &inlen)) != CF_OK ||
	    (r = h_digest_check(&sp, k, req->key)) != CF_OK ||
	    (r = cf_p11_sign(k, &sp, in, inlen, sig)) != CF_OK)
		return r;
	return h_set_bytes(&out->signature, cf_buf_peek(sig), cf_buf_len(sig));
}

static int
h_sign_batch(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SignBatchRequest *req = (const void *)m;
	Coffer__V1__SignBatchResponse *out;
	struct cf_sign_params sp;
	cf_p11_key *k;
	const uint8_t *in;
	size_t inlen;
	uint32_t ver;
	int r;

	/* The request's own fields, checked once (no data stands in for the items'). */
	if ((r = h_sign_params(req->hash, req->scheme, req->ecdsa_raw, (ProtobufCBinaryData){ 0 },
			       (ProtobufCBinaryData){ 0 }, &sp, &in, &inlen)) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_SIGN, USE_NEW, &k,
				 &ver)) != CF_OK ||
	    (r = cf_p11_sign_check(k, &sp)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__sign_batch_response__descriptor)) == NULL)
		return cf_nomem();
	if ((r = run_items(c, CF_OP_SIGN, req, req->n_items, k, sign_item, CF_P11_MAX_SIG,
			   &coffer__v1__sign_batch_result__descriptor, &out->results,
			   &out->n_results)) == CF_OK) {
		out->version = ver;
		h_sign_used(&sp, k, &out->scheme, &out->hash);
	}
	return h_reply(r, out, resp);
}

static int
verify_item(const void *r_, cf_p11_key *k, size_t i, void *res, cf_buf *unused)
{
	const Coffer__V1__VerifyBatchRequest *req = r_;
	const Coffer__V1__VerifyBatchItem *it = req->items[i];
	Coffer__V1__VerifyBatchResult *out = res;
	struct cf_sign_params sp;
	const uint8_t *in;
	size_t inlen;
	int r;

	(void)unused;
	if ((r = h_sign_params(req->hash, req->scheme, req->ecdsa_raw, it->message, it->digest, &sp,
			       &in, &inlen)) != CF_OK ||
	    (r = h_check_data(it->signature.len, CF_P11_MAX_SIG, "signature")) != CF_OK ||
	    (r = h_digest_check(&sp, k, req->key)) != CF_OK)
		return r;
	r = cf_p11_verify(k, &sp, in, inlen, it->signature.data, it->signature.len);
	out->valid = r == CF_OK;
	return r == CF_E_BAD_SIGNATURE ? CF_OK : r;
}

/* The version a verifying batch names: required, as in Verify and VerifyMac. */
static int
version_required(uint32_t version, const char *single)
{
	if (version == 0)
		return cf_error(CF_E_INVALID_ARG, "version is required: pass the version that "
				"%s returned", single);
	return CF_OK;
}

static int
h_verify_batch(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyBatchRequest *req = (const void *)m;
	Coffer__V1__VerifyBatchResponse *out;
	struct cf_sign_params sp;
	cf_p11_key *k;
	const uint8_t *in;
	size_t inlen;
	uint32_t ver;
	int r;

	if ((r = version_required(req->version, "Sign")) != CF_OK ||
	    (r = h_sign_params(req->hash, req->scheme, req->ecdsa_raw, (ProtobufCBinaryData){ 0 },
			       (ProtobufCBinaryData){ 0 }, &sp, &in, &inlen)) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_SIGN, USE_CHECK, &k,
				 &ver)) != CF_OK ||
	    (r = cf_p11_sign_check(k, &sp)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_batch_response__descriptor)) == NULL)
		return cf_nomem();
	r = run_items(c, CF_OP_VERIFY, req, req->n_items, k, verify_item, 0,
		      &coffer__v1__verify_batch_result__descriptor, &out->results, &out->n_results);
	return h_reply(r, out, resp);
}

static int
mac_item(const void *r_, cf_p11_key *k, size_t i, void *res, cf_buf *mac)
{
	const Coffer__V1__MacBatchItem *it = ((const Coffer__V1__MacBatchRequest *)r_)->items[i];
	Coffer__V1__MacBatchResult *out = res;
	int r;

	if ((r = h_check_data(it->data.len, CF_P11_MAX_DATA, "data")) != CF_OK ||
	    (r = cf_p11_mac(k, it->data.data, it->data.len, mac)) != CF_OK)
		return r;
	return h_set_bytes(&out->mac, cf_buf_peek(mac), cf_buf_len(mac));
}

static int
h_mac_batch(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__MacBatchRequest *req = (const void *)m;
	Coffer__V1__MacBatchResponse *out;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if ((r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_MAC, USE_NEW, &k,
				 &ver)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__mac_batch_response__descriptor)) == NULL)
		return cf_nomem();
	if ((r = run_items(c, CF_OP_MAC, req, req->n_items, k, mac_item, 64,
			   &coffer__v1__mac_batch_result__descriptor, &out->results,
			   &out->n_results)) == CF_OK)
		out->version = ver;
	return h_reply(r, out, resp);
}

static int
verify_mac_item(const void *r_, cf_p11_key *k, size_t i, void *res, cf_buf *unused)
{
	const Coffer__V1__VerifyMacBatchItem *it =
		((const Coffer__V1__VerifyMacBatchRequest *)r_)->items[i];
	Coffer__V1__VerifyBatchResult *out = res;
	int r;

	(void)unused;
	if ((r = h_check_data(it->data.len, CF_P11_MAX_DATA, "data")) != CF_OK ||
	    (r = h_check_data(it->mac.len, 64, "mac")) != CF_OK)
		return r;
	r = cf_p11_mac_verify(k, it->data.data, it->data.len, it->mac.data, it->mac.len);
	out->valid = r == CF_OK;
	return r == CF_E_BAD_SIGNATURE ? CF_OK : r;
}

static int
h_verify_mac_batch(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__VerifyMacBatchRequest *req = (const void *)m;
	Coffer__V1__VerifyMacBatchResponse *out;
	cf_p11_key *k;
	uint32_t ver;
	int r;

	if ((r = version_required(req->version, "Mac")) != CF_OK ||
	    (r = keyring_ref_use(c->sv->kr, c->key, req->version, PURPOSE_MAC, USE_CHECK, &k,
				 &ver)) != CF_OK)
		return r;
	if ((out = h_new_msg(&coffer__v1__verify_mac_batch_response__descriptor)) == NULL)
		return cf_nomem();
	r = run_items(c, CF_OP_VERIFY_MAC, req, req->n_items, k, verify_mac_item, 0,
		      &coffer__v1__verify_batch_result__descriptor, &out->results, &out->n_results);
	return h_reply(r, out, resp);
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_KS_SIGN_BATCH] = h_sign_batch,
	[CF_KS_VERIFY_BATCH] = h_verify_batch,
	[CF_KS_MAC_BATCH] = h_mac_batch,
	[CF_KS_VERIFY_MAC_BATCH] = h_verify_mac_batch,
};

const struct hservice handlers_batch = { .fns = fns };
