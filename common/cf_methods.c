#include "cf_methods.h"

#include <string.h>

#define KS "coffer.v1.KeyService"
#define AS "coffer.v1.AdminService"
#define SS "coffer.v1.SessionService"
#define HS "grpc.health.v1.Health"
#define M(svc, nm) .path = "/" svc "/" nm, .service = svc, .name = nm

/* A KeyService method: served on the service socket, its key in `key`. */
#define KEY_METHOD(nm, o) M(KS, nm), .socket = CF_SOCK_SERVICE, .op = (o), .key_field = "key"
#define ADMIN(nm) M(AS, nm), .socket = CF_SOCK_ADMIN
#define CHANGE(nm) ADMIN(nm), .flags = CF_MF_MUTATING
#define API_SECRET .secret_what = "returns or takes an API secret", .secret_in = "secret", \
	.secret_out = "secret"

const struct cf_method cf_methods[CF_METHOD__COUNT] = {
	[CF_KS_SIGN] = { KEY_METHOD("Sign", CF_OP_SIGN) },
	[CF_KS_VERIFY] = { KEY_METHOD("Verify", CF_OP_VERIFY) },
	[CF_KS_MAC] = { KEY_METHOD("Mac", CF_OP_MAC) },
	[CF_KS_VERIFY_MAC] = { KEY_METHOD("VerifyMac", CF_OP_VERIFY_MAC) },
	[CF_KS_WRAP] = { KEY_METHOD("Wrap", CF_OP_WRAP), .flags = CF_MF_SECRET,
			 .secret_what = "takes plaintext", .secret_in = "plaintext" },
	[CF_KS_UNWRAP] = { KEY_METHOD("Unwrap", CF_OP_UNWRAP), .flags = CF_MF_SECRET,
			   .secret_what = "returns plaintext", .secret_out = "plaintext" },
	[CF_KS_REWRAP] = { KEY_METHOD("Rewrap", CF_OP_REWRAP) },
	[CF_KS_GENERATE_DATA_KEY] = { KEY_METHOD("GenerateDataKey", CF_OP_GENERATE_DATA_KEY),
				      .flags = CF_MF_SECRET, .secret_what = "returns the data key",
				      .secret_if = "include_plaintext",
				      .secret_out = "plaintext" },
	[CF_KS_GET_PUBLIC_KEY] = { KEY_METHOD("GetPublicKey", CF_OP_GET_PUBLIC_KEY) },
	[CF_KS_GET_KEY] = { M(KS, "GetKey"), .socket = CF_SOCK_SERVICE,
			    .op = CF_OP_GET_PUBLIC_KEY, .key_field = "name" },
	[CF_KS_LIST_KEYS] = { M(KS, "ListKeys"), .socket = CF_SOCK_SERVICE, .op = CF_OP_NONE },
	[CF_KS_VERIFY_REQUEST_SIGNATURE] = { M(KS, "VerifyRequestSignature"),
					     .socket = CF_SOCK_SERVICE, .op = CF_OP_VERIFY_MAC,
					     .key_field = "request.key", .flags = CF_MF_NO_RETRY },
	[CF_KS_SIGN_HTTP_REQUEST] = { M(KS, "SignHttpRequest"), .socket = CF_SOCK_SERVICE,
				      .op = CF_OP_MAC, .key_field = "request.key" },
	[CF_KS_SIGN_BATCH] = { KEY_METHOD("SignBatch", CF_OP_SIGN), .flags = CF_MF_BATCH },
	[CF_KS_VERIFY_BATCH] = { KEY_METHOD("VerifyBatch", CF_OP_VERIFY), .flags = CF_MF_BATCH },
	[CF_KS_MAC_BATCH] = { KEY_METHOD("MacBatch", CF_OP_MAC), .flags = CF_MF_BATCH },
	[CF_KS_VERIFY_MAC_BATCH] = { KEY_METHOD("VerifyMacBatch", CF_OP_VERIFY_MAC),
				     .flags = CF_MF_BATCH },

	[CF_AS_CREATE_KEY] = { ADMIN("CreateKey"), .flags = CF_MF_MUTATING | CF_MF_MAKES },
	[CF_AS_IMPORT_KEY] = { ADMIN("ImportKey"),
			       .flags = CF_MF_MUTATING | CF_MF_SECRET | CF_MF_MAKES,
			       .secret_what = "carries key material", .secret_in = "material" },
	[CF_AS_ROTATE_KEY] = { ADMIN("RotateKey"), .flags = CF_MF_MUTATING | CF_MF_MAKES },
	[CF_AS_SET_PRIMARY_VERSION] = { CHANGE("SetPrimaryVersion") },
	[CF_AS_ENABLE_KEY_VERSION] = { CHANGE("EnableKeyVersion") },
	[CF_AS_DISABLE_KEY_VERSION] = { CHANGE("DisableKeyVersion") },
	[CF_AS_SCHEDULE_DESTROY_KEY_VERSION] = { CHANGE("ScheduleDestroyKeyVersion") },
	[CF_AS_CANCEL_DESTROY_KEY_VERSION] = { CHANGE("CancelDestroyKeyVersion") },
	[CF_AS_SET_KEY_MINIMUMS] = { CHANGE("SetKeyMinimums") },
	[CF_AS_TRIM_KEY] = { CHANGE("TrimKey") },
	[CF_AS_SET_ROTATION_SCHEDULE] = { CHANGE("SetRotationSchedule") },
	/* The handler is KeyService's: it uses the key dispatch looked up. */
	[CF_AS_GET_KEY] = { ADMIN("GetKey"), .key_field = "name" },
	[CF_AS_LIST_KEYS] = { ADMIN("ListKeys") },
	[CF_AS_CREATE_PRINCIPAL] = { CHANGE("CreatePrincipal") },
	[CF_AS_GET_PRINCIPAL] = { ADMIN("GetPrincipal") },
	[CF_AS_LIST_PRINCIPALS] = { ADMIN("ListPrincipals") },
	[CF_AS_GRANT_PRINCIPAL] = { CHANGE("GrantPrincipal") },
	[CF_AS_REVOKE_PRINCIPAL] = { CHANGE("RevokePrincipal") },
	[CF_AS_SET_RATE_LIMIT] = { CHANGE("SetRateLimit") },
	[CF_AS_DELETE_PRINCIPAL] = { CHANGE("DeletePrincipal") },
	[CF_AS_CREATE_API_KEY] = { ADMIN("CreateApiKey"),
				   .flags = CF_MF_MUTATING | CF_MF_SECRET | CF_MF_MAKES,
				   API_SECRET },
	[CF_AS_ROTATE_API_KEY_SECRET] = { ADMIN("RotateApiKeySecret"),
					  .flags = CF_MF_MUTATING | CF_MF_SECRET | CF_MF_MAKES,
					  API_SECRET },
	[CF_AS_REVOKE_API_KEY] = { CHANGE("RevokeApiKey") },
	[CF_AS_SET_PRINCIPAL_AUTH] = { CHANGE("SetPrincipalAuth") },
	[CF_AS_LIST_API_KEYS] = { ADMIN("ListApiKeys") },
	[CF_AS_TAIL_AUDIT] = { ADMIN("TailAudit") },
	[CF_AS_VERIFY_AUDIT] = { ADMIN("VerifyAudit") },
	[CF_AS_GET_TOKEN_INFO] = { ADMIN("GetTokenInfo") },

	/* A session is opened outside one, and only a sealed call closes it. */
	[CF_SS_GET_IDENTITY] = { M(SS, "GetIdentity"), .socket = CF_SOCK_BOTH,
				 .flags = CF_MF_OPEN | CF_MF_NEVER_SEALED },
	[CF_SS_OPEN_SESSION] = { M(SS, "OpenSession"), .socket = CF_SOCK_BOTH,
				 .flags = CF_MF_NEVER_SEALED },
	[CF_SS_CALL] = { M(SS, "Call"), .socket = CF_SOCK_BOTH, .flags = CF_MF_NEVER_SEALED },
	[CF_SS_CLOSE_SESSION] = { M(SS, "CloseSession"), .socket = CF_SOCK_BOTH,
				  .flags = CF_MF_SEALED_ONLY },

	[CF_HEALTH_CHECK] = { M(HS, "Check"), .socket = CF_SOCK_BOTH,
			      .flags = CF_MF_OPEN | CF_MF_HEALTH },
};

const struct cf_method *
cf_method_by_path(const char *path)
{
	for (size_t i = 0; i < CF_METHOD__COUNT; i++)
		if (strcmp(cf_methods[i].path, path) == 0)
			return &cf_methods[i];
	return NULL;
}

int
cf_service_served(const char *service, enum cf_socket s)
{
	for (size_t i = 0; i < CF_METHOD__COUNT; i++)
		if ((cf_methods[i].socket & s) != 0 && strcmp(cf_methods[i].service, service) == 0)
			return 1;
	return 0;
}
