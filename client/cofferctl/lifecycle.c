/*
 * A key's lifecycle: its versions (set-primary, enable, disable,
 * schedule-destroy, cancel-destroy), the minimums, trim, and the rotation
 * schedule. Each prints the key's metadata afterwards.
 */
#include "cofferctl.h"
#include "options.h"

/* The VERSION operand of a version command. */
static int
version_arg(const struct opts *o, uint32_t *v)
{
	if (parse_u32(o->args[1], 1, VERSION_MAX, v) != 0)
		return bad_value("VERSION", o->args[1], "not a number from 1 to 1000000");
	return EXIT_OK;
}

static int
call_version(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_key_version_action(c, o->args[0], j->used, j->action,
	    o->force ? COFFER_FORCE : 0, o->grace, &j->key);
}

/* set-primary, enable, disable, schedule-destroy, cancel-destroy: the
 * options each does not take are refused by its option list. */
static int
version_job(struct ctl *ctl, const struct opts *o, enum coffer_version_action action)
{
	struct job j;
	int rc;

	job_init(&j);
	j.action = action;
	if ((rc = version_arg(o, &j.used)) != EXIT_OK)
		return rc;
	return run_job(ctl, o, 1, call_version, put_job_key, &j);
}

#define VERSION_CMD(fn, action)                                                \
	int fn(struct ctl *ctl, const struct opts *o) { return version_job(ctl, o, action); }
VERSION_CMD(cmd_key_set_primary, COFFER_SET_PRIMARY)
VERSION_CMD(cmd_key_enable, COFFER_ENABLE_VERSION)
VERSION_CMD(cmd_key_disable, COFFER_DISABLE_VERSION)
VERSION_CMD(cmd_key_schedule_destroy, COFFER_SCHEDULE_DESTROY)
VERSION_CMD(cmd_key_cancel_destroy, COFFER_CANCEL_DESTROY)
#undef VERSION_CMD

static int
call_set_min(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_set_key_minimums(c, o->args[0], o->min_version, o->min_verify,
	    o->keep_last, &j->key);
}

int
cmd_key_set_min(struct ctl *ctl, const struct opts *o)
{
	if (o->min_version == 0 && o->min_verify == 0 && o->keep_last == 0)
		return usage_error("key set-min needs --min-version, --min-verify-version or "
		    "--keep-last", NULL);
	if (o->keep_last != 0 && o->min_verify != 0)
		return usage_error("give --keep-last or --min-verify-version, not both", NULL);
	return run_call(ctl, o, 1, call_set_min, put_job_key);
}

static int
call_trim(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_trim_key(c, o->args[0], o->grace, &j->key);
}

int
cmd_key_trim(struct ctl *ctl, const struct opts *o)
{
	return run_call(ctl, o, 1, call_trim, put_job_key);
}

static int
call_set_rotation(coffer_client *c, const struct opts *o, struct job *j)
{
	return coffer_set_rotation_schedule(c, o->args[0], o->period, o->next, &j->key);
}

int
cmd_key_set_rotation(struct ctl *ctl, const struct opts *o)
{
	if (!o->have_period)
		return usage_error("key set-rotation needs --rotation-period DURATION (0: off)",
		    NULL);
	if (o->period == 0 && o->next != 0)
		return usage_error("--next needs a rotation period", NULL);
	return run_call(ctl, o, 1, call_set_rotation, put_job_key);
}
