#include "dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "callauth.h"
#include "cf_arena.h"
#include "cf_crashpoint.h"
#include "cf_keytype.h"
#include "cf_log.h"
#include "cf_methods.h"
#include "cf_pbcheck.h"
#include "cf_pbwipe.h"
#include "cf_reqsign.h"
#include "cf_status.h"
#include "cf_time.h"
#include "coffer/v1/coffer.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pbfield.h"
#include "handlers_table.h"
#include "iowatch.h"
#include "metrics.h"

/* A method as this daemon runs it: its facts (cf_methods.h), its messages,
 * its handler. */
struct method {
	const struct cf_method *d;
	const ProtobufCMessageDescriptor *input, *output;
	handler_fn fn;          /* NULL for SessionService/Call, run here */
	/* How its messages are allocated: wiped on free, except the envelope
	 * of a sealed call, which holds ciphertext only. */
	ProtobufCAllocator *alloc;
};

struct dispatch {
	struct dispatch_cfg cfg;
	struct method m[CF_METHOD__COUNT];   /* by enum cf_method_id */
};

unsigned
dispatch_status(int st)
{
	return cf_status_grpc(st);
}

const char *
dispatch_status_name(int st)
{
	return cf_grpc_code_name(dispatch_status(st));
}

/* ---- the method table ---- */

static const ProtobufCServiceDescriptor *const services[] = {
	&coffer__v1__key_service__descriptor, &coffer__v1__admin_service__descriptor,
	&coffer__v1__session_service__descriptor, &grpc__health__v1__health__descriptor,
};

/* Field `name` of message type d ("outer.inner": of a nested message) if
 * it is a single field of `type`, else NULL. */
static const ProtobufCFieldDescriptor *
field_of(const ProtobufCMessageDescriptor *d, const char *name, ProtobufCType type)
{
	const ProtobufCFieldDescriptor *f;
	const char *dot = strchr(name, '.');
	char outer[32];

	if (dot != NULL) {
		snprintf(outer, sizeof(outer), "%.*s", (int)(dot - name), name);
		if ((f = protobuf_c_message_descriptor_get_field_by_name(d, outer)) == NULL ||
		    f->type != PROTOBUF_C_TYPE_MESSAGE)
			return NULL;
		d = f->descriptor;
		name = dot + 1;
	}
	f = protobuf_c_message_descriptor_get_field_by_name(d, name);
	return f != NULL && f->type == type && f->label != PROTOBUF_C_LABEL_REPEATED ? f : NULL;
}

/* The fields a table entry names exist in its messages, with their types:
 * a misspelt secret field would otherwise keep a secret unsealed or in an
 * idempotency record. */
static int
check_fields(const struct cf_method *cm, const ProtobufCMethodDescriptor *md)
{
	if ((cm->key_field != NULL &&
	     field_of(md->input, cm->key_field, PROTOBUF_C_TYPE_STRING) == NULL) ||
	    (cm->secret_if != NULL &&
	     field_of(md->input, cm->secret_if, PROTOBUF_C_TYPE_BOOL) == NULL) ||
	    (cm->secret_in != NULL &&
	     (strchr(cm->secret_in, '.') != NULL ||    /* carries_secret reads it at the top */
	      field_of(md->input, cm->secret_in, PROTOBUF_C_TYPE_BYTES) == NULL)) ||
	    (cm->secret_out != NULL &&
	     field_of(md->output, cm->secret_out, PROTOBUF_C_TYPE_BYTES) == NULL) ||
	    ((cm->flags & CF_MF_SECRET) != 0) != (cm->secret_what != NULL))
		return cf_error(CF_E_INTERNAL, "method table entry %s names a field its messages "
				"lack", cm->path);
	return CF_OK;
}

/* Method table entry id against the .proto's descriptors and the handlers. */
static int
bind(struct method *e, enum cf_method_id id)
{
	const struct cf_method *cm = &cf_methods[id];
	const ProtobufCMethodDescriptor *md = NULL;

	for (size_t i = 0; i < sizeof(services) / sizeof(services[0]) && md == NULL; i++)
		if (strcmp(services[i]->name, cm->service) == 0)
			md = protobuf_c_service_descriptor_get_method_by_name(services[i],
									     cm->name);
	if (md == NULL)
		return cf_error(CF_E_INTERNAL, "method table entry %s is no method of the .proto",
				cm->path);
	e->d = cm;
	e->input = md->input;
	e->output = md->output;
	e->fn = handlers_find(id);
	e->alloc = id == CF_SS_CALL ? NULL : &cf_pbwipe_allocator;
	if (e->fn == NULL && id != CF_SS_CALL)
		return cf_error(CF_E_INTERNAL, "no handler for %s", cm->path);
	return check_fields(cm, md);
}

int
dispatch_new(const struct dispatch_cfg *cfg, dispatch **out)
{
	unsigned n = 0;
	dispatch *d;
	int r = CF_OK;

	/* Every entry binds a distinct method (paths are unique), so equal
	 * counts mean every method of the .proto has its entry. */
	for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++)
		n += services[i]->n_methods;
	if (n != CF_METHOD__COUNT)
		return cf_error(CF_E_INTERNAL, "the .proto has %u methods and the method table %d",
				n, CF_METHOD__COUNT);
	if ((d = calloc(1, sizeof(*d))) == NULL)
		return cf_nomem();
	d->cfg = *cfg;
	for (int id = 0; id < CF_METHOD__COUNT && r == CF_OK; id++)
		r = bind(&d->m[id], (enum cf_method_id)id);
	if (r != CF_OK) {
		dispatch_free(d);
		return r;
	}
	*out = d;
	return CF_OK;
}

void
dispatch_free(dispatch *d)
{
	free(d);
}

size_t
dispatch_count(const dispatch *d)
{
	(void)d;
	return CF_METHOD__COUNT;
}

const char *
dispatch_path(const dispatch *d, size_t i)
{
	return d->m[i].d->path;
}

int
dispatch_ciphertext(const dispatch *d, size_t i)
{
	return d->m[i].alloc == NULL;
}

int
dispatch_batch(const dispatch *d, size_t i)
{
	return (d->m[i].d->flags & CF_MF_BATCH) != 0;
}

int
dispatch_mutating(const dispatch *d, size_t i)
{
	return (d->m[i].d->flags & CF_MF_MUTATING) != 0;
}

static const struct method *
find_path(const dispatch *d, const char *path)
{
	const struct cf_method *cm = cf_method_by_path(path);

	return cm != NULL ? &d->m[cm - cf_methods] : NULL;
}

/* ---- calls ---- */

/* What the audit record of a call needs from inside it. */
struct note {
	char principal[STORE_PRINCIPAL_NAME_MAX + 1];
	char key[CF_KEY_NAME_MAX + 1];
	uint32_t version;
	int inner_ran;          /* SessionService/Call: the sealed call ran (and was recorded) */
	unsigned changes;       /* changes committed, each with its audit record (store_call) */
	char replay_of[AUDIT_REQUEST_ID_MAX + 1];   /* answered from the first attempt's record */
	int batch;               /* a batch call (its record counts items, 0 too) */
	uint32_t items, failed;  /* a batch: its items, and how many failed */
};

/* One call inside dispatch: what its handler sees (hc) and what stays
 * dispatch's own. A sealed call's inner call starts from a copy of its
 * envelope's (derive). */
struct dctx {
	const struct dcall *dc;   /* from the adapter: services, caller, metadata */
	struct hcall hc;
	struct keyring_ref key;   /* the key the call names; hc.key points here */
	int sealed;               /* the call arrived inside a session */
	int authenticated;        /* an enclosing call (SessionService/Call) was authenticated */
	uint32_t key_gen;         /* the API-key secret that signed the call (0: unsigned) */
	uint32_t batch_taken;     /* rate-limit tokens authorize took for a batch's items */
	uint32_t batch_refused;   /* ... and the items it had none for */
};

/* to = a copy of from, its handler's key its own. */
static void
derive(struct dctx *to, const struct dctx *from)
{
	*to = *from;
	to->hc.key = &to->key;
}

static int run(const dispatch *d, const struct method *m, const struct dctx *h,
	       const uint8_t *in, size_t inlen, uint8_t **out, size_t *outlen,
	       uint32_t *retry_after_ms);

/* Into cf_pbwipe_allocator's memory (a sealed call's locked arena); release
 * with wipe_free. */
static int
pack(const ProtobufCMessage *msg, uint8_t **out, size_t *outlen)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = cf_pbwipe_allocator.alloc(NULL, len ? len : 1);

	if (buf == NULL)
		return cf_nomem();
	protobuf_c_message_pack(msg, buf);
	*out = buf;
	*outlen = len;
	return CF_OK;
}

static void
wipe_free(uint8_t *p, size_t len)
{
	(void)len;
	cf_wipe_free(p);   /* leaves the current arena's blocks to the arena */
}

/* Record the call c: waiting for the record, or queued in its frame's group. */
static int
record(const struct dcall *c, const struct audit_event *ev)
{
	return c->audit_group != NULL ? audit_record_in(c->sv->au, ev, c->audit_group) :
					audit_record(c->sv->au, ev);
}

/* A sealed record refused before any method ran (no such method, or one
 * never sealed): recorded as the method asked for, with its refusal, as
 * every call is. A refusal releases nothing, so a record that cannot be
 * written changes nothing of the answer. */
static void
record_sealed_refusal(const struct dctx *h, const char *method, int status)
{
	struct audit_event ev = {
		.principal = h->hc.principal, .uid = h->hc.uid, .pid = h->hc.pid,
		.admin = h->hc.admin, .sealed = 1, .method = method, .key = "",
		.result = dispatch_status_name(status), .request_id = h->dc->request_id,
	};

	if (h->hc.sv->au != NULL)
		(void)record(h->dc, &ev);
}

/* SessionService/Call: open the record, run the inner method as a sealed
 * call, seal its status and response. Errors returned from here are the
 * record's own (the inner call did not run); once the record is accepted the
 * inner outcome travels sealed and this returns CF_OK.
 *
 * Everything that holds the inner call's plaintext lives in a locked arena
 * of this call (cf_arena.h), current while the inner call runs: the opened
 * record, the inner request and response messages and their packed forms,
 * and the packed SealedResult, which is sealed out of it into the reply. */
static int
sealed_call(const dispatch *d, const struct dctx *h, Coffer__V1__SealedCall *req,
	    ProtobufCMessage **resp, int *inner_ran)
{
	Coffer__V1__SealedResult res = COFFER__V1__SEALED_RESULT__INIT;
	Coffer__V1__SealedReply *reply = NULL;
	const struct method *inner;
	struct dctx h2;
	session *s = NULL;
	cf_arena *arena = NULL;
	uint8_t *iout = NULL, *rec = NULL, *pt;
	size_t ptlen = 0, ioutlen = 0, rlen = 0;
	char imsg[CF_ERROR_DETAIL_MAX];
	int r, ir;

	if (h->sealed)
		return cf_error(CF_E_PRECONDITION, "SessionService/Call cannot be sealed itself");
	/* Refused before anything is decrypted: the session stays usable. */
	if (req->record.len > CF_SECRET_MAX + CF_SESSION_TAG_LEN)
		return cf_error(CF_E_TOO_LARGE, "a sealed record of %zu bytes carries more than "
				"the %u-byte payload limit of a session", req->record.len,
				CF_SECRET_MAX);
	/* A record for no session of the caller's costs no locked memory (an
	 * mmap and mlock of up to 1 MiB each; found by a review). */
	if ((r = session_known(h->hc.sv->sm, h->hc.uid, h->hc.gid, req->session_id.data,
			       req->session_id.len)) != CF_OK)
		return r;
	if ((r = cf_arena_new(&arena)) != CF_OK)
		return r;
	/* The record is opened in a locked copy, and wiped there. */
	if ((pt = cf_arena_alloc(arena, req->record.len)) == NULL) {
		cf_arena_free(arena);
		return cf_error(CF_E_EXHAUSTED, "cannot lock %zu bytes of memory to open a sealed "
				"record (RLIMIT_MEMLOCK; cofferd.service sets LimitMEMLOCK)",
				req->record.len);
	}
	if (req->record.len > 0)
		memcpy(pt, req->record.data, req->record.len);
	if ((r = session_accept(h->hc.sv->sm, h->hc.uid, h->hc.gid, req->session_id.data,
				req->session_id.len, req->sequence, req->method, pt,
				req->record.len, &s, &ptlen)) != CF_OK) {
		cf_arena_free(arena);
		return r;
	}
	cf_arena_set_current(arena);
	derive(&h2, h);
	h2.sealed = 1;
	h2.hc.sess = s;
	*inner_ran = 1;   /* its record is the inner call's (run), or the refusal's below */
	if ((inner = find_path(d, req->method)) == NULL)
		ir = cf_error(CF_E_UNIMPLEMENTED, "unknown method %s", req->method);
	else if (inner->d->flags & CF_MF_NEVER_SEALED)
		ir = cf_error(CF_E_PRECONDITION, "%s cannot be called inside a session",
			      inner->d->path);
	else {
		uint64_t t0 = metrics_start();

		ir = run(d, inner, &h2, pt, ptlen, &iout, &ioutlen, &res.retry_after_ms);
		metrics_call((unsigned)(inner - d->m), dispatch_status(ir), t0);
	}
	imsg[0] = '\0';
	if (ir != CF_OK) {
		const char *em = cf_error_message(ir);

		/* A proto3 string: the caller's bytes in it are escaped. */
		cf_text_escape(em, strlen(em), imsg, sizeof(imsg));
		if (dispatch_status(ir) == dispatch_status(CF_E_INTERNAL))
			cf_log_error("%s (sealed): %s", req->method, imsg);
	}
	if (inner == NULL || (inner->d->flags & CF_MF_NEVER_SEALED))
		record_sealed_refusal(h, req->method, ir);
	res.code = dispatch_status(ir);
	res.message = imsg;
	res.response.data = iout;
	res.response.len = ioutlen;
	/* The result is packed in the arena and sealed out of it into the
	 * record that carries it (ciphertext: ordinary memory). */
	r = pack(&res.base, &pt, &rlen);
	cf_arena_set_current(NULL);
	if (r != CF_OK)
		goto out;
	if ((rec = malloc(rlen + CF_SESSION_TAG_LEN)) == NULL ||
	    (reply = malloc(sizeof(*reply))) == NULL) {
		r = cf_nomem();
		goto out;
	}
	coffer__v1__sealed_reply__init(reply);
	if ((r = session_reply(s, req->sequence, req->method, pt, rlen, rec)) != CF_OK)
		goto out;
	reply->record.data = rec;
	reply->record.len = rlen + CF_SESSION_TAG_LEN;
	reply->sequence = req->sequence;
	rec = NULL;
	*resp = &reply->base;
	reply = NULL;
out:
	cf_arena_set_current(NULL);
	free(reply);
	free(rec);
	if (!cf_arena_contains(arena, iout))   /* a replayed answer is heap */
		wipe_free(iout, ioutlen);
	/* A result too large for the arena was packed in the wiping heap. */
	if (!cf_arena_contains(arena, pt))
		wipe_free(pt, rlen);
	session_release(h->hc.sv->sm, s);
	cf_arena_free(arena);       /* wipes */
	return r;
}

/* For the audit record: the key (or principal, or API key) a call is
 * about, and the key version: the one the request names (a lifecycle
 * change, a verify), else the one its response names. */
static void
note_call(const struct method *m, const ProtobufCMessage *req, const ProtobufCMessage *resp,
	  struct note *n)
{
	static const char *const fields[] = { "key", "name", "id", "principal", "request.key" };
	const char *v = pb_str_field(req, m->d->key_field);

	for (size_t i = 0; v[0] == '\0' && i < sizeof(fields) / sizeof(fields[0]); i++)
		v = pb_str_field(req, fields[i]);
	snprintf(n->key, sizeof(n->key), "%s", v);
	n->version = pb_u32_field(req, "version");
	if (n->version == 0 && resp != NULL)
		n->version = pb_u32_field(resp, "version");
	if (n->version == 0 && resp != NULL)
		n->version = pb_u32_field(resp, "primary_version");
	if (m->d->flags & CF_MF_BATCH) {
		n->batch = 1;
		n->items = (uint32_t)pb_count_field(req, "items");
		n->failed = resp != NULL ? (uint32_t)pb_failed_items(resp) : n->items;
	}
}

/* Service socket, before the request is decoded: who is calling (into who
 * and h2->hc.principal), and is the call signed as the principal requires? */
/* A pipelined stream's request: the API-key secret that signed the opening
 * must still be live, its key not revoked and still the principal's
 * (revoking the key, or rotating that secret out, ends the stream's
 * authentication as it ends the secret's calls). */
static int
stream_key_live(const struct dctx *h, const char *who)
{
	int live = h->hc.sv->ak == NULL ? APIKEYS_KEY_GONE :
		   apikeys_secret_live(h->hc.sv->ak, who, h->dc->stream_key_id,
				       h->dc->stream_key_gen, cf_wall_s());

	if (live == APIKEYS_SECRET_GONE)
		return cf_error(CF_E_UNAUTHENTICATED, "the secret of API key %s that signed this "
				"stream's opening (generation %u) was rotated out: open a new "
				"stream signed with a live secret", h->dc->stream_key_id,
				h->dc->stream_key_gen);
	if (live != APIKEYS_SECRET_LIVE)
		return cf_error(CF_E_UNAUTHENTICATED, "the API key %s that opened this stream was "
				"revoked (or is no longer principal %s's): open a new stream signed "
				"with a live key", h->dc->stream_key_id, who);
	return CF_OK;
}

static int
authenticate(const struct method *m, const struct dctx *h, const uint8_t *in, size_t inlen,
	     struct dctx *h2, char *who)
{
	struct callauth_call ca = {
		.path = m->d->path, .body = in, .body_len = inlen, .authz = h->dc->authz,
		.authz_len = h->dc->authz_len, .authz_n = h->dc->authz_n,
		.require_api_key = h->dc->require_api_key,
	};
	int r;

	if (h->hc.admin || (m->d->flags & CF_MF_OPEN) || h->hc.sv->pol == NULL)
		return CF_OK;
	if ((r = policy_identify(h->hc.sv->pol, h->hc.uid, h->hc.gid, who)) != CF_OK) {
		metrics_add(M_REFUSED_NO_PRINCIPAL, 1);
		cf_log_warn("refused: uid %u gid %u pid %d: %s: no principal", (unsigned)h->hc.uid,
			    (unsigned)h->hc.gid, (int)h->hc.pid, m->d->path);
		return r;
	}
	h2->hc.principal = who;
	if (h->dc->stream_key_id != NULL && h->dc->stream_key_id[0] != '\0' &&
	    (r = stream_key_live(h, who)) != CF_OK) {
		metrics_add(M_REFUSED_UNAUTHENTICATED, 1);
		return r;
	}
	/* Opened unsigned: good while the uid alone is. Once the principal has
	 * an API key (or had one), the stream's requests are not signed calls. */
	if (h->dc->stream_key_id != NULL && h->dc->stream_key_id[0] == '\0' &&
	    h->hc.sv->ak != NULL && apikeys_required(h->hc.sv->ak, who) != APIKEYS_NONE) {
		metrics_add(M_REFUSED_UNAUTHENTICATED, 1);
		return cf_error(CF_E_UNAUTHENTICATED, "principal %s has an API key now and this "
				"stream was opened unsigned: open a new stream signed with a live "
				"key", who);
	}
	/* A sealed call's inner call was signed as part of its envelope, a
	 * stream's request with the stream's opening. */
	if (!h->authenticated &&
	    (r = callauth_check(h->hc.sv->ak, h->hc.sv->nn, h->hc.sv->window, &ca, who,
				&h2->key_gen)) != CF_OK) {
		if (r == CF_E_UNAUTHENTICATED) {
			metrics_add(M_REFUSED_UNAUTHENTICATED, 1);
			cf_log_warn("unauthenticated: principal %s (uid %u pid %d): %s: %s", who,
				    (unsigned)h->hc.uid, (int)h->hc.pid, m->d->path,
				    cf_error_detail());
		}
		return r;
	}
	h2->authenticated = 1;
	return CF_OK;
}

/* The key the call names (cf_method.key_field) into h2->key: its name
 * validated and the key looked up, once for the whole call. A key that does
 * not exist is the handler's to report, after its own checks of the request. */
static int
resolve_key(const struct method *m, const ProtobufCMessage *req, struct dctx *h2)
{
	const char *key = pb_str_field(req, m->d->key_field);
	int r;

	memset(&h2->key, 0, sizeof(h2->key));
	if (m->d->key_field == NULL)
		return CF_OK;
	/* An empty name: "key name is empty" on the service socket, "the key
	 * name is required" on the admin socket, as each has always said. */
	if ((r = h2->hc.admin ? handlers_check_key_name(key) : cf_key_name_check(key)) != CF_OK)
		return r;
	h2->key.name = key;
	if (h2->hc.sv->kr != NULL)
		(void)keyring_find(h2->hc.sv->kr, key, &h2->key);
	return CF_OK;
}

/* Service socket: may the principal do this? One decision (policy_authorize):
 * grants, the key's own limit, then the rate limits. */
static int
authorize(const struct method *m, struct dctx *h, const ProtobufCMessage *req, const char *who,
	  uint32_t *retry_after_ms)
{
	const char *key = h->key.name != NULL ? h->key.name : "";
	uint32_t key_ops, want = 1;
	int r, own_limit;

	/* A batch: its size checked before anything is spent on it. */
	if (m->d->flags & CF_MF_BATCH) {
		size_t n = pb_count_field(req, "items");

		if (n == 0)
			return cf_error(CF_E_INVALID_ARG, "%s has no items: send 1 to %d", m->d->name,
					CF_BATCH_MAX);
		if (n > CF_BATCH_MAX)
			return cf_error(CF_E_TOO_LARGE, "%s has %zu items; the limit is %d",
					m->d->name, n, CF_BATCH_MAX);
		want = (uint32_t)n;
	}

	if (h->hc.admin || (m->d->flags & CF_MF_OPEN) || h->hc.sv->pol == NULL)
		return CF_OK;
	/* SessionService/Call only carries the inner call, which is checked (and
	 * counted against the rate limits) on its own: counting the envelope too
	 * would charge every sealed call twice. */
	if (m->fn == NULL)
		return CF_OK;
	key_ops = h->hc.sv->kr != NULL ? keyring_ref_allowed_ops(h->hc.sv->kr, &h->key) : 0;
	r = policy_authorize_n(h->hc.sv->pol, who, m->d->op, key, key_ops, want,
			       &h->hc.batch_granted, retry_after_ms, &own_limit,
			       &h->hc.batch_all_ops);
	/* Part of a batch granted: the call goes on, the rest of it refused item by item. */
	if (r == CF_OK && (m->d->flags & CF_MF_BATCH)) {
		h->batch_taken = h->hc.batch_granted;
		h->batch_refused = want - h->hc.batch_granted;
		h->hc.batch_retry_ms = *retry_after_ms;
		*retry_after_ms = 0;
	}
	/* A refusal per operation refused: each item of a batch refused whole. */
	if (r == CF_E_EXHAUSTED)
		metrics_add(M_REFUSED_RATE_LIMITED, want);
	else if (r == CF_E_UNAUTHENTICATED)   /* the principal went meanwhile */
		metrics_add(M_REFUSED_NO_PRINCIPAL, 1);
	if (r == CF_E_DENIED) {
		metrics_add(M_REFUSED_DENIED, 1);
		cf_log_warn("denied: principal %s (uid %u pid %d): %s on key \"%s\": %s", who,
			    (unsigned)h->hc.uid, (int)h->hc.pid, policy_op_name(m->d->op), key,
			    own_limit ? "the key's own limit" : "not granted");
	}
	return r;
}

/* A call that carries secrets (cf_method.secret_what) must arrive sealed,
 * unless the daemon allows secrets unsealed. */
static int
require_sealed(const struct method *m, const struct dctx *h, const ProtobufCMessage *req)
{
	const struct cf_method *d = m->d;

	if (!(d->flags & CF_MF_SECRET) || h->sealed || h->dc->unsealed_secrets ||
	    (d->secret_if != NULL && !pb_bool_field(req, d->secret_if)))
		return CF_OK;
	return cf_error(CF_E_PRECONDITION, "%s%s%s %s, so it must be sealed in a session "
			"(SessionService/OpenSession, then SessionService/Call; libcoffer and "
			"cofferctl do this for you)", d->name, d->secret_if != NULL ? " with " : "",
			d->secret_if != NULL ? d->secret_if : "", d->secret_what);
}

/* resp packed without the secret it may carry (cf_method.secret_out): what
 * an idempotency record keeps. *out NULL if there was none to take out. */
static int
pack_without_secrets(const struct method *m, ProtobufCMessage *resp, uint8_t **out,
		     size_t *outlen)
{
	const ProtobufCFieldDescriptor *f;
	ProtobufCBinaryData *b, saved;
	int r;

	*out = NULL;
	if (m->d->secret_out == NULL ||
	    (f = field_of(resp->descriptor, m->d->secret_out, PROTOBUF_C_TYPE_BYTES)) == NULL)
		return CF_OK;
	b = (ProtobufCBinaryData *)(void *)((char *)resp + f->offset);
	if (b->len == 0)
		return CF_OK;
	saved = *b;
	b->len = 0;
	r = pack(resp, out, outlen);
	*b = saved;
	return r;
}

/* A mutating call's changes commit their own audit records (store_call in
 * store.h): this is what such a record says. */
struct change_ctx {
	struct store_call sc;
	const struct method *m;
	const struct dctx *h;
};

static int
change_record(const struct store_call *c, const char *name, uint32_t version, char *buf,
	      size_t len)
{
	const struct change_ctx *cc = c->arg;
	struct audit_event ev = {
		.principal = cc->h->hc.principal, .uid = cc->h->hc.uid, .pid = cc->h->hc.pid,
		.admin = cc->h->hc.admin, .sealed = cc->h->sealed, .method = cc->m->d->path,
		.key = name,
		.version = version, .result = "OK", .request_id = cc->h->dc->request_id,
	};

	return audit_format_change(&ev, buf, len);
}

/* The handler; a mutating one with the calling thread's store_call set. */
static int
run_handler(const struct method *m, const struct dctx *h, const ProtobufCMessage *req,
	    ProtobufCMessage **resp, struct note *n)
{
	struct change_ctx cc = { .m = m, .h = h };
	int r;

	if ((r = require_sealed(m, h, req)) != CF_OK)
		return r;
	if (!(m->d->flags & CF_MF_MUTATING))
		return m->fn(&h->hc, req, resp);
	cc.sc.idem_key = h->dc->idem_key[0] != '\0' ? h->dc->idem_key : NULL;
	cc.sc.idem_owner = h->dc->idm != NULL ? idem_owner(h->dc->idm) : NULL;
	cc.sc.uid = h->hc.uid;
	cc.sc.record = h->hc.sv->au != NULL ? change_record : NULL;
	cc.sc.arg = &cc;
	store_call_set(&cc.sc);
	r = m->fn(&h->hc, req, resp);
	store_call_set(NULL);
	n->changes = cc.sc.effects;
	return r;
}

/* req's secret field (cf_method.secret_in) is not empty. */
static int
carries_secret(const struct method *m, const ProtobufCMessage *req)
{
	const ProtobufCFieldDescriptor *f;

	if (m->d->secret_in == NULL ||
	    (f = field_of(req->descriptor, m->d->secret_in, PROTOBUF_C_TYPE_BYTES)) == NULL)
		return 0;
	return ((const ProtobufCBinaryData *)(const void *)((const char *)req + f->offset))->len > 0;
}

/* A mutating call with an idempotency key: once (idempotency.h). */
static int
run_once(const struct method *m, const struct dctx *h, const uint8_t *in, size_t inlen,
	 const ProtobufCMessage *req, ProtobufCMessage **resp, uint8_t **out, size_t *outlen,
	 struct note *n)
{
	struct store_idem first;
	uint8_t *kept = NULL;
	size_t keptlen = 0;
	char msg[CF_ERROR_DETAIL_MAX];
	const char *first_id = h->dc->request_id;
	enum idem_start start;
	int r;

	memset(&first, 0, sizeof(first));
	if ((r = idem_begin(h->dc->idm, h->dc->idem_key, h->hc.uid, m->d->path, in, inlen,
			    carries_secret(m, req), h->dc->request_id, &first, &start)) != CF_OK)
		return r;
	if (start == IDEM_REPLAY) {
		snprintf(n->replay_of, sizeof(n->replay_of), "%s", first.request_id);
		if (first.status != CF_OK) {
			free(first.response);
			return cf_error(first.status, "%s", first.message);
		}
		*out = first.response != NULL ? first.response : malloc(1);
		*outlen = first.response_len;
		if (*out == NULL)
			return cf_nomem();
		/* Read back only for its audit record (the key and version it named). */
		*resp = protobuf_c_message_unpack(m->output, m->alloc, *outlen, *out);
		return CF_OK;
	}
	if (start == IDEM_COMMITTED) {
		/* Its change (and the change's audit record) committed; the answer
		 * was lost with the daemon: read the change back. */
		snprintf(n->replay_of, sizeof(n->replay_of), "%s", first.request_id);
		first_id = n->replay_of;
		/* Read back as the store has it now: the change may have been
		 * made by another replica, its notification not yet here. */
		int stale = 0;

		if (h->hc.sv->st != NULL && store_backend(h->hc.sv->st) == STORE_POSTGRESQL &&
		    ((h->hc.sv->kr != NULL && keyring_refresh(h->hc.sv->kr, first.effect_name)) ||
		     (h->hc.sv->pol != NULL && policy_refresh(h->hc.sv->pol) != CF_OK) ||
		     (h->hc.sv->ak != NULL && apikeys_refresh(h->hc.sv->ak) != CF_OK))) {
			cf_log_warn("idempotency key %s: re-reading %s: %s", h->dc->idem_key,
				    first.effect_name, cf_error_detail());
			stale = 1;
		}
		r = handlers_describe(&h->hc, m->output, first.effect_name,
				      (m->d->flags & CF_MF_MAKES) ? first.effect_version : 0, resp);
		/* Not found in memory that could not be re-read: what the call
		 * made may just not be here yet. Not final (the record stays for
		 * the retry), unlike a thing re-read and gone since. */
		if (r == CF_E_NOT_FOUND && stale)
			r = cf_error(CF_E_UNAVAILABLE, "idempotency key %s: %s, which its first "
				     "attempt made, is not read on this replica yet; retry",
				     h->dc->idem_key, first.effect_name);
	} else {
		r = run_handler(m, h, req, resp, n);
	}
	if (r == CF_OK)
		r = pack(*resp, out, outlen);
	if (r == CF_OK)
		r = pack_without_secrets(m, *resp, &kept, &keptlen);
	snprintf(msg, sizeof(msg), "%s", r == CF_OK ? "" : cf_error_message(r));
	idem_finish(h->dc->idm, h->dc->idem_key, h->hc.uid, m->d->path, first_id,
		    start == IDEM_COMMITTED || n->changes > 0, r, msg,
		    kept != NULL ? kept : *out, kept != NULL ? keptlen : *outlen);
	free(first.response);
	wipe_free(kept, keptlen);
	return r == CF_OK ? CF_OK : cf_error(r, "%s", msg);
}

static int
run_call(const dispatch *d, const struct method *m, const struct dctx *h, const uint8_t *in,
	 size_t inlen, uint8_t **out, size_t *outlen, uint32_t *retry_after_ms, struct note *n)
{
	ProtobufCMessage *req = NULL, *resp = NULL;
	struct dctx h2;
	char who[STORE_PRINCIPAL_NAME_MAX + 1];
	int r;

	derive(&h2, h);
	if (!(m->d->socket & (h->hc.admin ? CF_SOCK_ADMIN : CF_SOCK_SERVICE)))
		return cf_error(CF_E_UNIMPLEMENTED, "%s is not served on the %s socket", m->d->path,
				h->hc.admin ? "admin" : "service");
	if ((m->d->flags & CF_MF_SEALED_ONLY) && !h->sealed)
		return cf_error(CF_E_PRECONDITION, "%s is only valid inside a session", m->d->path);
	if (h->dc->idem_bad)
		return cf_error(CF_E_INVALID_ARG, "idempotency-key must be %d..%d characters of "
				"A-Z a-z 0-9 . _ : -", IDEM_KEY_MIN, STORE_IDEM_KEY_MAX);
	/* Which one a retry would send is anyone's guess (a proxy that adds
	 * its own): the last one won, and a retry with the first ran again
	 * (found from outside). */
	if (h->dc->idem_n > 1)
		return cf_error(CF_E_INVALID_ARG, "%u idempotency-key entries; send exactly one",
				h->dc->idem_n);
	if (d->cfg.require_sealed && m->d->socket == CF_SOCK_SERVICE && !h->sealed)
		return cf_error(CF_E_PRECONDITION, "this daemon requires every KeyService call to "
				"be sealed in a session (session.require_sealed)");
	r = authenticate(m, h, in, inlen, &h2, who);
	if (h2.hc.principal != NULL)
		snprintf(n->principal, sizeof(n->principal), "%s", h2.hc.principal);
	if (r != CF_OK)
		return r;
	/* protobuf-c cuts a string at its first NUL: refuse what would make the
	 * daemon read less than was sent (and sealed, and signed), and invalid
	 * UTF-8, before anything reads the request. */
	if ((r = cf_pb_check_strings(m->input, in, inlen)) != CF_OK)
		return r;
	req = protobuf_c_message_unpack(m->input, m->alloc, inlen, in);
	if (req == NULL)
		return cf_error(CF_E_INVALID_ARG, "request is not a valid %s message",
				m->input->name);
	if ((r = resolve_key(m, req, &h2)) != CF_OK ||
	    (r = authorize(m, &h2, req, who, retry_after_ms)) != CF_OK) {
		/* refused */
	} else if ((m->d->flags & CF_MF_MUTATING) && h->dc->idm != NULL &&
		   h->dc->idem_key[0] != '\0') {
		r = run_once(m, &h2, in, inlen, req, &resp, out, outlen, n);
	} else {
		r = m->fn != NULL ? run_handler(m, &h2, req, &resp, n)
				  : sealed_call(d, &h2, (Coffer__V1__SealedCall *)(void *)req, &resp,
						&n->inner_ran);
		/* A batch refused as a whole (its key, version, hash...) ran none
		 * of the items it was charged for. */
		if (r != CF_OK && h2.batch_taken > 0)
			policy_refund_n(h->hc.sv->pol, who, m->d->op, h2.batch_taken);
		/* A batch answered item by item: those beyond the rate limits were
		 * refused (RESOURCE_EXHAUSTED), one refusal each. */
		if (r == CF_OK && h2.batch_refused > 0)
			metrics_add(M_REFUSED_RATE_LIMITED, h2.batch_refused);
		if (r == CF_OK)
			r = pack(resp, out, outlen);
	}
	/* A sealed call's envelope is recorded only when its inner call never ran. */
	if (!n->inner_ran)
		note_call(m, req, r == CF_OK ? resp : NULL, n);
	protobuf_c_message_free_unpacked(req, m->alloc);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, m->alloc);
	return r;
}


/* The call's answer is not released: its record is not durable. */
static int
withhold(uint8_t **out, size_t *outlen, int r)
{
	if (*out != NULL)
		wipe_free(*out, *outlen);
	*out = NULL;
	*outlen = 0;
	return r;
}

/* Run a method and record it in the audit trail: every call, refused ones
 * included, but not health checks, and a sealed call once (its inner
 * call's record; the envelope's only when the inner call never ran). A
 * change's record was committed with the change (store_call) and only has
 * to reach the trail. Failing closed, nothing is released unless its
 * record is durable: a record that cannot be written turns the answer into
 * UNAVAILABLE. */
static int
run(const dispatch *d, const struct method *m, const struct dctx *h, const uint8_t *in,
    size_t inlen, uint8_t **out, size_t *outlen, uint32_t *retry_after_ms)
{
	struct note n;
	int r, ar;

	memset(&n, 0, sizeof(n));
	r = run_call(d, m, h, in, inlen, out, outlen, retry_after_ms, &n);
	if (h->hc.sv->au == NULL || (m->d->flags & CF_MF_HEALTH) || n.inner_ran)
		return r;
	if (n.changes > 0) {
		CF_HOLD_POINT("dispatch.change-made");   /* installed, not yet flushed */
		/* Its detail says the change was made and how to get its answer. */
		if ((ar = audit_flush_outbox(h->hc.sv->au)) != CF_OK)
			return withhold(out, outlen, ar);
		return r;
	}
	{
		struct audit_event ev = {
			.principal = n.principal, .uid = h->hc.uid, .pid = h->hc.pid,
			.admin = h->hc.admin,
			.sealed = h->sealed, .method = m->d->path, .key = n.key,
			.version = n.version,
			.result = dispatch_status_name(r), .request_id = h->dc->request_id,
			.replay_of = n.replay_of[0] != '\0' ? n.replay_of : NULL,
			.batch = n.batch, .items = n.items, .failed = n.failed,
		};

		if ((ar = record(h->dc, &ev)) != CF_OK && r == CF_OK)
			return withhold(out, outlen, ar);
	}
	return r;
}

/* Failing closed, before anything runs: the audit trail can be written, and
 * no write of the state hangs (iowatch.h). Failing open, calls go on: those
 * that need the disk wait for it, bounded, and say so. */
static int
admit(const struct dcall *c)
{
	int r;

	if (c->sv->au == NULL)
		return iowatch_admit();
	if ((r = audit_admit(c->sv->au)) != CF_OK || audit_fails_open(c->sv->au))
		return r;
	return iowatch_admit();
}

unsigned
dispatch_call(const dispatch *d, size_t i, const struct dcall *c, const uint8_t *in,
	      size_t inlen, uint8_t **out, size_t *outlen, char *msg, size_t msglen,
	      uint32_t *retry_after_ms)
{
	const struct method *m = &d->m[i];
	struct dctx call = { .dc = c, .hc = { .sv = c->sv, .uid = c->uid, .gid = c->gid,
					      .pid = c->pid, .admin = c->admin,
					      .batch_granted = UINT32_MAX,
					      .deadline_ms = c->deadline_ms,
					      .cancelled = c->cancelled } };
	uint64_t t0 = metrics_start();
	unsigned code;
	int r;

	call.hc.key = &call.key;
	call.authenticated = c->stream_key_id != NULL;
	cf_error_clear();
	*retry_after_ms = 0;
	/* Failing closed: nothing runs while the audit trail cannot be written
	 * or a write of the state hangs. */
	if ((m->d->flags & CF_MF_HEALTH) || (r = admit(c)) == CF_OK)
		r = run(d, m, &call, in, inlen, out, outlen, retry_after_ms);
	code = dispatch_status(r);
	if (r == CF_OK) {
		snprintf(msg, msglen, "%s", "");
	} else {
		const char *em = cf_error_message(r);

		/* grpc-status-message is read as UTF-8: the caller's bytes are escaped. */
		cf_text_escape(em, strlen(em), msg, msglen);
	}
	if (code == dispatch_status(CF_E_INTERNAL))
		cf_log_error("%s: %s", m->d->path, msg);
	if (c->metrics_t0 != NULL)
		*c->metrics_t0 = t0;
	else
		metrics_call((unsigned)i, code, t0);
	return code;
}

/* ---- the pipelined stream (proto/pipeline.md) ---- */

const char dispatch_pipeline_path[] = "/coffer.v1.Pipeline/Stream";

static const struct cf_method pipeline_cm = {
	.path = dispatch_pipeline_path, .service = "coffer.v1.Pipeline", .name = "Stream",
	.socket = CF_SOCK_SERVICE,
};

unsigned
dispatch_open_stream(const dispatch *d, const struct dcall *c, char *key_id, size_t kidlen,
		     uint32_t *key_gen, char who[STORE_PRINCIPAL_NAME_MAX + 1], char *msg,
		     size_t msglen)
{
	const struct method m = { .d = &pipeline_cm };
	struct dctx call = { .dc = c, .hc = { .sv = c->sv, .uid = c->uid, .gid = c->gid,
					      .pid = c->pid, .admin = c->admin } };
	struct dctx h2;
	struct cf_call_auth a;
	int r;

	(void)d;
	who[0] = '\0';
	call.hc.key = &call.key;
	derive(&h2, &call);
	cf_error_clear();
	snprintf(key_id, kidlen, "%s", "");
	*key_gen = 0;
	if (c->admin)
		r = cf_error(CF_E_UNIMPLEMENTED, "%s is not served on the admin socket",
			     dispatch_pipeline_path);
	else if ((r = admit(c)) != CF_OK)
		;   /* failing closed, as every call */
	else if (c->idem_key[0] != '\0' || c->idem_bad)
		/* Each request would inherit it (and a malformed one refuse them
		 * all), yet the stream carries no change for it to guard. */
		r = cf_error(CF_E_INVALID_ARG, "idempotency-key does not apply to %s: it carries "
			     "no changes; send the change as a unary call with the key",
			     dispatch_pipeline_path);
	else if (c->sv->pol == NULL)
		r = cf_error(CF_E_UNAVAILABLE, "this daemon has no principals: no stream can be "
			     "opened");
	else if ((r = authenticate(&m, &call, (const uint8_t *)"", 0, &h2, who)) == CF_OK &&
		 c->authz_n == 1 && cf_callauth_parse(c->authz, c->authz_len, &a) == CF_OK) {
		snprintf(key_id, kidlen, "%s", a.key_id);
		*key_gen = h2.key_gen;
	}
	if (c->sv->au != NULL && r != CF_E_UNIMPLEMENTED) {
		struct audit_event ev = {
			.principal = who, .uid = c->uid, .pid = c->pid, .method = dispatch_pipeline_path,
			.key = "", .result = dispatch_status_name(r), .request_id = c->request_id,
		};
		int ar = audit_record(c->sv->au, &ev);

		if (ar != CF_OK && r == CF_OK)
			r = ar;   /* nothing is released without its record */
	}
	if (r == CF_OK) {
		snprintf(msg, msglen, "%s", "");
	} else {
		const char *em = cf_error_message(r);

		cf_text_escape(em, strlen(em), msg, msglen);
	}
	return dispatch_status(r);
}

unsigned
dispatch_pipeline_call(const dispatch *d, const struct dcall *c, const char *path,
		       const uint8_t *in, size_t inlen, uint8_t **out, size_t *outlen, char *msg,
		       size_t msglen, uint32_t *retry_after_ms)
{
	const struct method *m = find_path(d, path);
	const char *em;
	int r;

	if (m != NULL && strcmp(m->d->service, "coffer.v1.KeyService") == 0 &&
	    !(m->d->flags & (CF_MF_MUTATING | CF_MF_SECRET)))
		return dispatch_call(d, (size_t)(m - d->m), c, in, inlen, out, outlen, msg, msglen,
				     retry_after_ms);
	*out = NULL;
	*outlen = 0;
	*retry_after_ms = 0;
	cf_error_clear();
	if (m == NULL || strcmp(m->d->service, "coffer.v1.KeyService") != 0)
		r = cf_error(CF_E_INVALID_ARG, "a pipelined stream carries KeyService methods "
			     "(\"/coffer.v1.KeyService/Sign\"), not \"%.200s\"", path);
	else
		r = cf_error(CF_E_INVALID_ARG, "%s carries secrets: seal it in a session instead "
			     "of sending it on a pipelined stream", m->d->path);
	/* Refused before any method ran: recorded as the stream's, under the
	 * request's id (the caller's path is in the answer, not the trail). */
	if (c->sv->au != NULL) {
		struct audit_event ev = {
			.principal = c->stream_principal, .uid = c->uid, .pid = c->pid,
			.method = dispatch_pipeline_path, .key = "",
			.result = dispatch_status_name(r), .request_id = c->request_id,
		};

		(void)record(c, &ev);   /* a refusal: nothing to withhold */
	}
	em = cf_error_message(r);
	cf_text_escape(em, strlen(em), msg, msglen);
	return dispatch_status(r);
}
