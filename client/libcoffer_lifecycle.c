/*
 * libcoffer_lifecycle.c — the AdminService calls of a key's lifecycle:
 * primary version, enable/disable, destruction with a grace period,
 * minimum versions, trim and the rotation schedule. Each answers with the
 * key's metadata as it is afterwards.
 */
#include "libcoffer.h"

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"

#define AS "/coffer.v1.AdminService/"

int
coffer_key_version_action(coffer_client *c, const char *name, uint32_t version,
    enum coffer_version_action action, unsigned int flags, int64_t grace_seconds,
    struct coffer_key_info **out)
{
	static const char *const methods[] = {
		[COFFER_SET_PRIMARY] = AS "SetPrimaryVersion",
		[COFFER_ENABLE_VERSION] = AS "EnableKeyVersion",
		[COFFER_DISABLE_VERSION] = AS "DisableKeyVersion",
		[COFFER_SCHEDULE_DESTROY] = AS "ScheduleDestroyKeyVersion",
		[COFFER_CANCEL_DESTROY] = AS "CancelDestroyKeyVersion",
	};
	Coffer__V1__KeyVersionRequest req = COFFER__V1__KEY_VERSION_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	if ((unsigned)action < COFFER_SET_PRIMARY || (unsigned)action > COFFER_CANCEL_DESTROY)
		return cf_error(CF_E_INVALID_ARG, "unknown version action %d", (int)action);
	if ((flags & ~COFFER_FORCE) != 0)
		return cf_error(CF_E_INVALID_ARG, "unknown flags 0x%x", flags);
	req.name = (char *)name;
	req.version = version;
	req.force = (flags & COFFER_FORCE) != 0;
	req.grace_seconds = grace_seconds;
	return lc_key_call(c, methods[action], &req.base, out);
}

int
coffer_set_key_minimums(coffer_client *c, const char *name, uint32_t min_version,
    uint32_t min_verify_version, uint32_t keep_last, struct coffer_key_info **out)
{
	Coffer__V1__SetKeyMinimumsRequest req = COFFER__V1__SET_KEY_MINIMUMS_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	req.min_version = min_version;
	req.min_verify_version = min_verify_version;
	req.keep_last = keep_last;
	return lc_key_call(c, AS "SetKeyMinimums", &req.base, out);
}

int
coffer_trim_key(coffer_client *c, const char *name, int64_t grace_seconds,
    struct coffer_key_info **out)
{
	Coffer__V1__TrimKeyRequest req = COFFER__V1__TRIM_KEY_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	req.grace_seconds = grace_seconds;
	return lc_key_call(c, AS "TrimKey", &req.base, out);
}

int
coffer_set_rotation_schedule(coffer_client *c, const char *name, int64_t period_seconds,
    int64_t next_rotation_time, struct coffer_key_info **out)
{
	Coffer__V1__SetRotationScheduleRequest req =
		COFFER__V1__SET_ROTATION_SCHEDULE_REQUEST__INIT;
	int r;

	if ((r = lc_check_client(c, name)) != CF_OK)
		return r;
	req.name = (char *)name;
	req.period_seconds = period_seconds;
	req.next_rotation_time = next_rotation_time;
	return lc_key_call(c, AS "SetRotationSchedule", &req.base, out);
}
