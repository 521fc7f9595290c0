/*
 * libcoffer_batch.c — KeyService's batches: many items for one key and
 * version in one call (coffer.proto, "Batches"), each item answered with its
 * own status.
 */
#include "libcoffer_rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "libcoffer_transport.h"

#define KS "/coffer.v1.KeyService/"

/* The item messages of a request, built from `items` in one allocation. */
struct batch {
	void **ptrs;                             /* the request's items */
	char *mem;
};

static int
batch_check(coffer_client *c, const char *key, const struct coffer_batch_item *items, size_t n,
    int verify)
{
	int r;

	if ((r = lc_check_client(c, key)) != CF_OK)
		return r;
	/* How many items is the daemon's to judge (it says so precisely). */
	if (items == NULL && n > 0)
		return cf_error(CF_E_INVALID_ARG, "NULL items");
	for (size_t i = 0; i < n; i++)
		if ((items[i].data == NULL && items[i].len > 0) ||
		    (verify && items[i].tag == NULL && items[i].taglen > 0))
			return cf_error(CF_E_INVALID_ARG, "item %zu: NULL data or %s", i,
			    verify ? "signature/MAC" : "length");
	return CF_OK;
}

static int
batch_new(struct batch *b, const ProtobufCMessageDescriptor *d, size_t n)
{
	b->ptrs = calloc(n ? n : 1, sizeof(*b->ptrs));
	b->mem = calloc(n ? n : 1, d->sizeof_message);
	if (b->ptrs == NULL || b->mem == NULL) {
		free(b->ptrs);
		free(b->mem);
		return cf_nomem();
	}
	for (size_t i = 0; i < n; i++) {
		b->ptrs[i] = b->mem + i * d->sizeof_message;
		protobuf_c_message_init(d, b->ptrs[i]);
	}
	return CF_OK;
}

static void
batch_free(struct batch *b)
{
	free(b->ptrs);
	free(b->mem);
}

static ProtobufCBinaryData
bin(const uint8_t *p, size_t len)
{
	ProtobufCBinaryData d = { len, (uint8_t *)(uintptr_t)p };

	return d;
}

/* Item i's outcome from its result's status (NULL: a malformed answer). */
static void
item_outcome(struct coffer_batch_item *it, const Coffer__V1__ItemStatus *st)
{
	it->error[0] = '\0';
	if (st == NULL) {
		it->status = cf_error(CF_E_INTERNAL, "the server returned no status for it");
		snprintf(it->error, sizeof(it->error), "%s", cf_error_detail());
		cf_error_clear();
		return;
	}
	it->status = st->code == 0 ? CF_OK : lc_status_from_grpc((unsigned)st->code);
	if (st->code != 0 && st->message != NULL && st->message[0] != '\0')
		lc_text_copy(it->error, sizeof(it->error), st->message,
		    strnlen(st->message, sizeof(it->error)));
	else if (st->code != 0)
		snprintf(it->error, sizeof(it->error), "%s", cf_strerror(it->status));
	cf_error_clear();
}

/* The answer must have one result per item. */
static int
results_check(size_t got, size_t n)
{
	if (got != n)
		return cf_error(CF_E_INTERNAL, "the server answered %zu results for %zu items",
		    got, n);
	return CF_OK;
}

/* Bytes of an OK item into it->out; an empty one is a server error. */
static void
item_bytes(struct coffer_batch_item *it, const ProtobufCBinaryData *b, const char *what)
{
	it->out.data = NULL;
	it->out.len = 0;
	if (it->status != CF_OK)
		return;
	if (b->len == 0 || (it->out.data = malloc(b->len)) == NULL) {
		it->status = b->len == 0 ?
		    cf_error(CF_E_INTERNAL, "the server returned an empty %s", what) :
		    cf_error(CF_E_NOMEM, "out of memory for the %s", what);
		snprintf(it->error, sizeof(it->error), "%s", cf_error_detail());
		cf_error_clear();
		return;
	}
	memcpy(it->out.data, b->data, b->len);
	it->out.len = b->len;
}

static void
sign_opts(const struct coffer_sign_opts *o, Coffer__V1__Hash *hash,
    Coffer__V1__SignatureScheme *scheme, protobuf_c_boolean *raw)
{
	if (o == NULL)
		return;
	*hash = (Coffer__V1__Hash)o->hash;
	*scheme = (Coffer__V1__SignatureScheme)o->scheme;
	*raw = o->ecdsa_raw != 0;
}

int
coffer_sign_batch(coffer_client *c, const char *key, uint32_t version,
    const struct coffer_sign_opts *opts, struct coffer_batch_item *items, size_t n,
    uint32_t *used_version)
{
	Coffer__V1__SignBatchRequest req = COFFER__V1__SIGN_BATCH_REQUEST__INIT;
	Coffer__V1__SignBatchResponse *resp;
	ProtobufCMessage *m = NULL;
	struct batch b;
	int r;

	if ((r = batch_check(c, key, items, n, 0)) != CF_OK ||
	    (r = batch_new(&b, &coffer__v1__sign_batch_item__descriptor, n)) != CF_OK)
		return r;
	for (size_t i = 0; i < n; i++) {
		Coffer__V1__SignBatchItem *it = b.ptrs[i];

		if (opts != NULL && opts->prehashed)
			it->digest = bin(items[i].data, items[i].len);
		else
			it->message = bin(items[i].data, items[i].len);
	}
	req.key = (char *)key;
	req.version = version;
	sign_opts(opts, &req.hash, &req.scheme, &req.ecdsa_raw);
	req.n_items = n;
	req.items = (Coffer__V1__SignBatchItem **)b.ptrs;
	r = lc_rpc(c, KS "SignBatch", &req.base, &coffer__v1__sign_batch_response__descriptor, 0,
	    &m);
	batch_free(&b);
	if (r != CF_OK)
		return r;
	resp = (Coffer__V1__SignBatchResponse *)m;
	if ((r = results_check(resp->n_results, n)) == CF_OK) {
		for (size_t i = 0; i < n; i++) {
			item_outcome(&items[i], resp->results[i]->status);
			item_bytes(&items[i], &resp->results[i]->signature, "signature");
		}
		if (used_version != NULL)
			*used_version = resp->version;
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_verify_batch(coffer_client *c, const char *key, uint32_t version,
    const struct coffer_sign_opts *opts, struct coffer_batch_item *items, size_t n)
{
	Coffer__V1__VerifyBatchRequest req = COFFER__V1__VERIFY_BATCH_REQUEST__INIT;
	Coffer__V1__VerifyBatchResponse *resp;
	ProtobufCMessage *m = NULL;
	struct batch b;
	int r;

	if ((r = batch_check(c, key, items, n, 1)) != CF_OK ||
	    (r = batch_new(&b, &coffer__v1__verify_batch_item__descriptor, n)) != CF_OK)
		return r;
	for (size_t i = 0; i < n; i++) {
		Coffer__V1__VerifyBatchItem *it = b.ptrs[i];

		if (opts != NULL && opts->prehashed)
			it->digest = bin(items[i].data, items[i].len);
		else
			it->message = bin(items[i].data, items[i].len);
		it->signature = bin(items[i].tag, items[i].taglen);
	}
	req.key = (char *)key;
	req.version = version;
	sign_opts(opts, &req.hash, &req.scheme, &req.ecdsa_raw);
	req.n_items = n;
	req.items = (Coffer__V1__VerifyBatchItem **)b.ptrs;
	r = lc_rpc(c, KS "VerifyBatch", &req.base,
	    &coffer__v1__verify_batch_response__descriptor, 0, &m);
	batch_free(&b);
	if (r != CF_OK)
		return r;
	resp = (Coffer__V1__VerifyBatchResponse *)m;
	if ((r = results_check(resp->n_results, n)) == CF_OK)
		for (size_t i = 0; i < n; i++) {
			item_outcome(&items[i], resp->results[i]->status);
			items[i].valid = items[i].status == CF_OK && resp->results[i]->valid;
		}
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_mac_batch(coffer_client *c, const char *key, uint32_t version,
    struct coffer_batch_item *items, size_t n, uint32_t *used_version)
{
	Coffer__V1__MacBatchRequest req = COFFER__V1__MAC_BATCH_REQUEST__INIT;
	Coffer__V1__MacBatchResponse *resp;
	ProtobufCMessage *m = NULL;
	struct batch b;
	int r;

	if ((r = batch_check(c, key, items, n, 0)) != CF_OK ||
	    (r = batch_new(&b, &coffer__v1__mac_batch_item__descriptor, n)) != CF_OK)
		return r;
	for (size_t i = 0; i < n; i++)
		((Coffer__V1__MacBatchItem *)b.ptrs[i])->data = bin(items[i].data, items[i].len);
	req.key = (char *)key;
	req.version = version;
	req.n_items = n;
	req.items = (Coffer__V1__MacBatchItem **)b.ptrs;
	r = lc_rpc(c, KS "MacBatch", &req.base, &coffer__v1__mac_batch_response__descriptor, 0,
	    &m);
	batch_free(&b);
	if (r != CF_OK)
		return r;
	resp = (Coffer__V1__MacBatchResponse *)m;
	if ((r = results_check(resp->n_results, n)) == CF_OK) {
		for (size_t i = 0; i < n; i++) {
			item_outcome(&items[i], resp->results[i]->status);
			item_bytes(&items[i], &resp->results[i]->mac, "MAC");
		}
		if (used_version != NULL)
			*used_version = resp->version;
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

int
coffer_verify_mac_batch(coffer_client *c, const char *key, uint32_t version,
    struct coffer_batch_item *items, size_t n)
{
	Coffer__V1__VerifyMacBatchRequest req = COFFER__V1__VERIFY_MAC_BATCH_REQUEST__INIT;
	Coffer__V1__VerifyMacBatchResponse *resp;
	ProtobufCMessage *m = NULL;
	struct batch b;
	int r;

	if ((r = batch_check(c, key, items, n, 1)) != CF_OK ||
	    (r = batch_new(&b, &coffer__v1__verify_mac_batch_item__descriptor, n)) != CF_OK)
		return r;
	for (size_t i = 0; i < n; i++) {
		Coffer__V1__VerifyMacBatchItem *it = b.ptrs[i];

		it->data = bin(items[i].data, items[i].len);
		it->mac = bin(items[i].tag, items[i].taglen);
	}
	req.key = (char *)key;
	req.version = version;
	req.n_items = n;
	req.items = (Coffer__V1__VerifyMacBatchItem **)b.ptrs;
	r = lc_rpc(c, KS "VerifyMacBatch", &req.base,
	    &coffer__v1__verify_mac_batch_response__descriptor, 0, &m);
	batch_free(&b);
	if (r != CF_OK)
		return r;
	resp = (Coffer__V1__VerifyMacBatchResponse *)m;
	if ((r = results_check(resp->n_results, n)) == CF_OK)
		for (size_t i = 0; i < n; i++) {
			item_outcome(&items[i], resp->results[i]->status);
			items[i].valid = items[i].status == CF_OK && resp->results[i]->valid;
		}
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}
