/* SessionService (GetIdentity, OpenSession, CloseSession; Call itself is
 * run by the dispatcher) and grpc.health.v1. */
#include <string.h>

#include "cf_log.h"
#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "handlers_common.h"
#include "iowatch.h"

static int
h_get_identity(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__GetIdentityResponse *out;
	const uint8_t *spki;
	size_t len;
	int r;

	(void)m;
	if ((out = h_new_msg(&coffer__v1__get_identity_response__descriptor)) == NULL)
		return cf_nomem();
	spki = session_identity(c->sv->sm, &len);
	if ((r = h_set_bytes(&out->public_key, spki, len)) == CF_OK &&
	    (out->fingerprint = strdup(session_fingerprint(c->sv->sm))) == NULL)
		r = cf_nomem();
	return h_reply(r, out, resp);
}

static int
h_open_session(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__OpenSessionRequest *req = (const void *)m;
	Coffer__V1__OpenSessionResponse *out = NULL;
	struct cf_session_hello h;
	cf_buf *sig = NULL;
	int r;

	memset(&h, 0, sizeof(h));
	if (req->client_ephemeral.len != CF_SESSION_PUB_LEN ||
	    req->client_random.len != CF_SESSION_RANDOM_LEN)
		return cf_error(CF_E_INVALID_ARG, "client_ephemeral and client_random must be %d "
				"and %d bytes", CF_SESSION_PUB_LEN, CF_SESSION_RANDOM_LEN);
	h.version = req->version;
	memcpy(h.client_pub, req->client_ephemeral.data, CF_SESSION_PUB_LEN);
	memcpy(h.client_random, req->client_random.data, CF_SESSION_RANDOM_LEN);
	h.principal = req->principal;
	/* The signed transcript names the claimed principal: only the one this
	 * connection is (from its peer credentials) may be claimed, or a relay
	 * would get a session whose transcript says it is its client. A claim
	 * too long to be valid is left to session_handshake's size check. */
	if (req->principal[0] != '\0' && strlen(req->principal) <= CF_SESSION_MAX_PRINCIPAL &&
	    (c->principal == NULL || strcmp(req->principal, c->principal) != 0)) {
		cf_log_warn("refused: %s%s (uid %u pid %d): OpenSession claims principal \"%.64s\"",
			    c->principal != NULL ? "principal " : "no principal",
			    c->principal != NULL ? c->principal : "", (unsigned)c->uid, (int)c->pid,
			    req->principal);
		if (c->principal == NULL)
			return cf_error(CF_E_DENIED, "this connection (uid %u%s) has no principal, "
					"not %.64s: a session cannot claim one; send an empty principal",
					(unsigned)c->uid, c->admin ? ", admin socket" : "",
					req->principal);
		return cf_error(CF_E_DENIED, "this connection is principal %s (uid %u), not %.64s: "
				"a session cannot claim another principal", c->principal,
				(unsigned)c->uid, req->principal);
	}
	if ((sig = cf_buf_new(CF_P11_MAX_SIG)) == NULL)
		return cf_nomem();
	if ((r = session_handshake(c->sv->sm, c->uid, c->gid, &h, sig)) != CF_OK)
		goto out;
	if ((out = h_new_msg(&coffer__v1__open_session_response__descriptor)) == NULL) {
		r = cf_nomem();
		goto out;
	}
	if ((r = h_set_bytes(&out->session_id, h.session_id, CF_SESSION_ID_LEN)) != CF_OK ||
	    (r = h_set_bytes(&out->server_ephemeral, h.server_pub, CF_SESSION_PUB_LEN)) != CF_OK ||
	    (r = h_set_bytes(&out->server_random, h.server_random, CF_SESSION_RANDOM_LEN)) != CF_OK ||
	    (r = h_set_bytes(&out->identity_public_key, h.spki, h.spki_len)) != CF_OK ||
	    (r = h_set_bytes(&out->signature, cf_buf_peek(sig), cf_buf_len(sig))) != CF_OK)
		goto out;
	out->caller_uid = h.uid;
	out->caller_gid = h.gid;
	out->lifetime_seconds = h.lifetime;
	out->max_records = h.max_records;
	out->max_bytes = h.max_bytes;
out:
	cf_buf_free(sig);
	return h_reply(r, out, resp);
}

/* Only reachable sealed (the dispatcher refuses it otherwise). */
static int
h_close_session(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	Coffer__V1__CloseSessionResponse *out;

	(void)m;
	if ((out = h_new_msg(&coffer__v1__close_session_response__descriptor)) == NULL)
		return cf_nomem();
	session_end(c->sv->sm, c->sess);
	*resp = &out->base;
	return CF_OK;
}

/* ---- grpc.health.v1 ---- */

static int
h_health(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Grpc__Health__V1__HealthCheckRequest *req = (const void *)m;
	Grpc__Health__V1__HealthCheckResponse *out;
	const char *s = req->service;
	char hung[512];

	/* Every service served on this socket. */
	if (s[0] != '\0' && !cf_service_served(s, c->admin ? CF_SOCK_ADMIN : CF_SOCK_SERVICE))
		return cf_error(CF_E_NOT_FOUND, "no service \"%.64s\" on this socket", s);
	if ((out = h_new_msg(&grpc__health__v1__health_check_response__descriptor)) == NULL)
		return cf_nomem();
	/* Failing closed on an unwritable audit trail, a state database
	 * removed under us or a disk that hangs: say so (failing open, only
	 * the state database counts). */
	out->status = (c->sv->au != NULL && !audit_healthy(c->sv->au)) ||
		      (c->sv->st != NULL && !store_healthy(c->sv->st)) ||
		      ((c->sv->au == NULL || !audit_fails_open(c->sv->au)) &&
		       iowatch_hung(hung, sizeof(hung))) ?
		GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING :
		GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
	*resp = &out->base;
	return CF_OK;
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_SS_GET_IDENTITY] = h_get_identity,
	[CF_SS_OPEN_SESSION] = h_open_session,
	[CF_SS_CLOSE_SESSION] = h_close_session,
	[CF_HEALTH_CHECK] = h_health,
};

const struct hservice handlers_session = { .fns = fns };
