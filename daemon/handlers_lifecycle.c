/* AdminService: a key's lifecycle after its creation — primary version,
 * enable/disable, destruction with a grace period, minimum versions, trim
 * and the rotation schedule (keyring_change does the checking). */
#include <string.h>

#include "cf_status.h"
#include "coffer/v1/coffer.pb-c.h"
#include "handlers_common.h"

/* Apply one change to key `name`; the key as it is afterwards. */
static int
change(const struct hcall *c, const char *name, enum key_change what,
       const struct key_change_args *a, ProtobufCMessage **resp)
{
	struct store_key info;

	memset(&info, 0, sizeof(info));
	return h_key_response(keyring_change(c->sv->kr, name, what, a, &info), &info, resp);
}

static int
version_change(const struct hcall *c, const ProtobufCMessage *m, enum key_change what,
	       ProtobufCMessage **resp)
{
	const Coffer__V1__KeyVersionRequest *req = (const void *)m;
	struct key_change_args a = { .version = req->version, .force = req->force,
				     .grace = req->grace_seconds };

	if (req->grace_seconds != 0 && what != KC_SCHEDULE_DESTROY)
		return cf_error(CF_E_INVALID_ARG, "grace_seconds only applies to "
				"ScheduleDestroyKeyVersion");
	if (req->force && what != KC_DISABLE && what != KC_SCHEDULE_DESTROY)
		return cf_error(CF_E_INVALID_ARG, "force only applies to DisableKeyVersion and "
				"ScheduleDestroyKeyVersion");
	return change(c, req->name, what, &a, resp);
}

static int
h_set_primary(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	return version_change(c, m, KC_SET_PRIMARY, resp);
}

static int
h_enable(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	return version_change(c, m, KC_ENABLE, resp);
}

static int
h_disable(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	return version_change(c, m, KC_DISABLE, resp);
}

static int
h_schedule_destroy(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	return version_change(c, m, KC_SCHEDULE_DESTROY, resp);
}

static int
h_cancel_destroy(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	return version_change(c, m, KC_CANCEL_DESTROY, resp);
}

static int
h_set_minimums(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SetKeyMinimumsRequest *req = (const void *)m;
	struct key_change_args a = { .min_version = req->min_version,
				     .min_verify = req->min_verify_version,
				     .keep_last = req->keep_last };

	if (a.min_version == 0 && a.min_verify == 0 && a.keep_last == 0)
		return cf_error(CF_E_INVALID_ARG, "give min_version, min_verify_version or "
				"keep_last");
	return change(c, req->name, KC_SET_MINIMUMS, &a, resp);
}

static int
h_trim(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__TrimKeyRequest *req = (const void *)m;
	struct key_change_args a = { .grace = req->grace_seconds };

	return change(c, req->name, KC_TRIM, &a, resp);
}

static int
h_set_rotation(const struct hcall *c, const ProtobufCMessage *m, ProtobufCMessage **resp)
{
	const Coffer__V1__SetRotationScheduleRequest *req = (const void *)m;
	struct key_change_args a = { .period = req->period_seconds,
				     .next = req->next_rotation_time };

	if (a.period == 0 && a.next != 0)
		return cf_error(CF_E_INVALID_ARG, "next_rotation_time needs a period");
	return change(c, req->name, KC_SET_ROTATION, &a, resp);
}

static const handler_fn fns[CF_METHOD__COUNT] = {
	[CF_AS_SET_PRIMARY_VERSION] = h_set_primary,
	[CF_AS_ENABLE_KEY_VERSION] = h_enable,
	[CF_AS_DISABLE_KEY_VERSION] = h_disable,
	[CF_AS_SCHEDULE_DESTROY_KEY_VERSION] = h_schedule_destroy,
	[CF_AS_CANCEL_DESTROY_KEY_VERSION] = h_cancel_destroy,
	[CF_AS_SET_KEY_MINIMUMS] = h_set_minimums,
	[CF_AS_TRIM_KEY] = h_trim,
	[CF_AS_SET_ROTATION_SCHEDULE] = h_set_rotation,
};

const struct hservice handlers_lifecycle = { .fns = fns };
