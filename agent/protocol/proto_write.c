/* The operations that change registrations: register, deregister, check
 * reports, drain, undrain and maintenance. The dispatcher has checked that
 * the peer may change them (protocol.c) before any of these runs. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "instance.h"
#include "protocol_internal.h"

/* ---- register and deregister -------------------------------------------- */

/* {"type","interval","timeout","rise","fall","service","url","command","ttl"},
 * as a service's check: in the configuration. This reads the JSON shapes
 * (strings, integers, a list of strings for command) and leaves every rule
 * of the schema to check_spec_build(), which the configuration calls too. */
static int check_from_json(json_t *o, bool exec_enabled, struct check_spec *spec, char *err,
                           size_t errlen)
{
    size_t n_keys;
    const char *const *keys = check_spec_keys(&n_keys);
    char nums[CHECK_KEY_COUNT][24];
    const char *argv[CHECK_ARGV_MAX];
    struct check_input in = {.owner = NULL};
    struct check_error why;
    int rc;

    memset(spec, 0, sizeof *spec);
    if (!json_is_object(o)) {
        snprintf(err, errlen,
                 "check must be an object with \"type\": grpc, tcp, http, exec or ttl");
        return DA_EINVAL;
    }
    for (size_t k = 0; k < n_keys; k++) {
        json_t *v = json_object_get(o, keys[k]);

        if (!v)
            continue;
        if (k == CHECK_KEY_COMMAND) {
            if (!json_is_array(v)) {
                snprintf(err, errlen, "check.command must be a list of strings, the program first");
                return DA_EINVAL;
            }
            in.has_command = true;
            in.n_command = json_array_size(v);
            in.command = argv;
            /* A longer list is refused by check_spec_build() by its length. */
            for (size_t i = 0; i < in.n_command && i < CHECK_ARGV_MAX; i++) {
                if (!(argv[i] = json_string_value(json_array_get(v, i)))) {
                    snprintf(err, errlen, "check.command must be a list of strings");
                    return DA_EINVAL;
                }
            }
        } else if (json_is_string(v)) {
            in.value[k] = (struct check_value){json_string_value(v), true};
        } else if (json_is_integer(v)) {
            snprintf(nums[k], sizeof nums[k], "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            in.value[k] = (struct check_value){nums[k], false};
        } else {
            snprintf(err, errlen, "check.%s must be %s", keys[k],
                     k == CHECK_KEY_RISE || k == CHECK_KEY_FALL ? "a whole number" : "a string");
            return DA_EINVAL;
        }
    }
    rc = check_spec_build(spec, &in, exec_enabled, &why);
    if (rc < 0)
        snprintf(err, errlen, "%s", why.msg);
    return rc;
}

static void reg_done(int err, void *arg)
{
    struct pending *p = arg;
    json_t *o = proto__reply_new(p->id, true);

    if (o) {
        json_object_set_new(o, "registered", json_boolean(err == 0));
        if (err == DA_ECANCELED)
            json_object_set_new(o, "message",
                                json_string("removed before it was written (deregistered, or "
                                            "the agent is stopping)"));
        else if (err == DA_EWITHHELD)
            json_object_set_new(o, "message",
                                json_string("accepted; kept out of etcd until its health check "
                                            "passes (or while drained or in maintenance)"));
        else if (err)
            json_object_set_new(o, "message",
                                json_pack("s+", "accepted; the write failed and is retried: ",
                                          etcd_client_last_error(p->cs->p->d.etcd)));
    }
    proto__send_json(p->cs, o);
    p->in_registry = false; /* the registry is done with p */
    proto__pending_end(p);
}

/* etcd did not answer in time: the registration stays and is written
 * when etcd answers; the client hears that it is not written yet. */
static void reg_timeout(struct pending *p)
{
    const char *why = etcd_client_last_error(p->cs->p->d.etcd);
    json_t *o = proto__reply_new(p->id, true);

    if (o) {
        json_object_set_new(o, "registered", json_false());
        json_object_set_new(o, "message",
                            json_pack("s+",
                                      "accepted; not yet written to etcd, which did not answer: ",
                                      *why ? why : "no reply"));
    }
    proto__send_json(p->cs, o);
    proto__pending_end(p);
}

/* The connection's peer process (0 if the kernel did not say), which owns
 * its registrations together with every other connection it opens. */
static pid_t peer_pid(const struct conn_state *cs)
{
    pid_t pid = 0;

    if (server_conn_peer(cs->c, &pid, NULL, NULL) != 0)
        return 0;
    return pid;
}

void proto__op_register(struct conn_state *cs, json_t *req, json_t *id)
{
    const struct proto_deps *d = &cs->p->d;
    struct instance inst;
    char err[256];
    json_t *persist = json_object_get(req, "persist");
    struct pending *p;
    int rc;

    if (persist && !json_is_boolean(persist)) {
        proto__send_error(cs, id, "bad_request", "'persist' must be true or false");
        return;
    }
    rc = instance_from_api(req, &inst, err, sizeof err);
    if (rc) {
        proto__send_error(cs, id, rc == DA_ENOMEM ? "internal" : "bad_request", "%s", err);
        return;
    }
    struct check_spec spec = {0};
    json_t *chk = json_object_get(req, "check");
    if (chk && (rc = check_from_json(chk, d->checks_exec, &spec, err, sizeof err))) {
        instance_clear(&inst);
        proto__send_error(cs, id, "bad_request", "%s", err);
        return;
    }
    p = proto__pending_new(cs, P_REGISTER, id, d->timeout_ms);
    if (!p) {
        instance_clear(&inst);
        check_spec_clear(&spec);
        proto__send_error(cs, id, "internal", "out of memory");
        return;
    }
    p->in_registry = true;
    p->on_timeout = reg_timeout;
    err[0] = '\0';
    rc = registry_add(d->registry, &inst, json_is_true(persist) ? REG_OWNER_RUNTIME : cs->id,
                      peer_pid(cs), chk ? &spec : NULL, reg_done, p, err, sizeof err);
    instance_clear(&inst);
    check_spec_clear(&spec);
    if (rc) {
        proto__pending_end(p);
        proto__send_error(cs, id,
                          rc == DA_EACCES   ? "conflict"
                          : rc == DA_EINVAL ? "bad_request"
                                            : "unavailable",
                          "%s", *err ? err : da_strerror(rc));
    }
}

static void dereg_done(int err, void *arg)
{
    struct pending *p = arg;

    if (err) {
        proto__send_error(p->cs, p->id, "unavailable", "delete failed: %s (%s)", da_strerror(err),
                          etcd_client_last_error(p->cs->p->d.etcd));
    } else {
        proto__send_json(p->cs, proto__reply_new(p->id, true));
    }
    p->in_registry = false;
    proto__pending_end(p);
}

void proto__op_deregister(struct conn_state *cs, json_t *req, json_t *id)
{
    bool bad = false;
    const char *name = proto__opt_string(req, "name", &bad);
    const char *address = proto__opt_string(req, "address", &bad);
    struct pending *p;
    int rc;

    if (bad || !name || !address) {
        proto__send_error(cs, id, "bad_request", "'name' and 'address' (strings) are required");
        return;
    }
    p = proto__pending_new(cs, P_DEREGISTER, id, cs->p->d.timeout_ms);
    if (!p) {
        proto__send_error(cs, id, "internal", "out of memory");
        return;
    }
    p->in_registry = true;
    rc = registry_remove(cs->p->d.registry, name, address, cs->id, peer_pid(cs), dereg_done, p);
    if (rc) {
        proto__pending_end(p);
        if (rc == DA_ENOENT)
            proto__send_error(cs, id, "not_found", "%s %s is not registered by this agent", name,
                              address);
        else if (rc == DA_EACCES)
            proto__send_error(cs, id, "forbidden",
                              "%s %s belongs to the configuration or to another process's "
                              "connection",
                              name, address);
        else
            proto__send_error(cs, id, "internal", "%s", da_strerror(rc));
    }
}

/* ---- health checks, drain, maintenance ---------------------------------- */

static bool name_address(struct conn_state *cs, json_t *req, json_t *id, const char **name,
                         const char **address)
{
    bool bad = false;

    *name = proto__opt_string(req, "name", &bad);
    *address = proto__opt_string(req, "address", &bad);
    if (bad || !*name || !*address) {
        proto__send_error(cs, id, "bad_request", "'name' and 'address' (strings) are required");
        return false;
    }
    return true;
}

void proto__op_check(struct conn_state *cs, json_t *req, json_t *id)
{
    const char *name, *address;
    bool bad = false;
    const char *status = proto__opt_string(req, "status", &bad);
    const char *output = proto__opt_string(req, "output", &bad);
    int rc;

    if (!name_address(cs, req, id, &name, &address))
        return;
    if (bad || !status || (strcmp(status, "pass") && strcmp(status, "fail"))) {
        proto__send_error(cs, id, "bad_request", "'status' must be \"pass\" or \"fail\"");
        return;
    }
    rc = registry_check_report(cs->p->d.registry, name, address, !strcmp(status, "pass"), output);
    if (rc == DA_ENOENT)
        proto__send_error(cs, id, "not_found", "%s %s is not registered by this agent", name,
                          address);
    else if (rc)
        proto__send_error(cs, id, "bad_request", "%s %s has no ttl check to report to", name,
                          address);
    else
        proto__send_json(cs, proto__reply_new(id, true));
}

static void drain(struct conn_state *cs, json_t *req, json_t *id, bool on)
{
    const char *name, *address;

    if (!name_address(cs, req, id, &name, &address))
        return;
    if (registry_drain(cs->p->d.registry, name, address, on))
        proto__send_error(cs, id, "not_found", "%s %s is not registered by this agent", name,
                          address);
    else
        proto__send_json(cs, proto__reply_new(id, true));
}

void proto__op_drain(struct conn_state *cs, json_t *req, json_t *id)
{
    drain(cs, req, id, true);
}

void proto__op_undrain(struct conn_state *cs, json_t *req, json_t *id)
{
    drain(cs, req, id, false);
}

void proto__op_maint(struct conn_state *cs, json_t *req, json_t *id)
{
    json_t *on = json_object_get(req, "on");
    bool bad = false;
    const char *reason = proto__opt_string(req, "reason", &bad);

    if (bad || !json_is_boolean(on)) {
        proto__send_error(cs, id, "bad_request",
                          "'on' (true or false) is required; 'reason' is a string");
        return;
    }
    registry_maint(cs->p->d.registry, json_is_true(on), reason);
    proto__send_json(cs, proto__reply_new(id, true));
}
