/* The status and checks operations: what the agent is doing, for
 * operators (agentctl status, agentctl checks). Status reads the parts
 * named in struct proto_deps and its status member, and nothing else. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "protocol_internal.h"

struct checks_ctx {
    json_t *arr;
    uint64_t now;
};

/* The health part of a registration, for status and checks. */
static void add_health(json_t *o, const struct reg_info *ri, uint64_t now)
{
    json_object_set_new(o, "healthy", json_boolean(ri->healthy));
    json_object_set_new(o, "drained", json_boolean(ri->drained));
    if (!ri->check)
        return;
    struct check_state st;
    checker_state(ri->check, &st);
    json_object_set_new(
        o, "check",
        json_pack("{s:s, s:b, s:i, s:i, s:s, s:I, s:I}", "type",
                  check_type_name(checker_spec(ri->check)->type), "healthy", st.healthy, "passes",
                  st.passes, "failures", st.failures, "output", st.output, "changed_ms_ago",
                  st.changed_at_ms ? (json_int_t)(now - st.changed_at_ms) : -1, "last_run_ms_ago",
                  st.last_run_ms ? (json_int_t)(now - st.last_run_ms) : -1));
}

/* ---- status ------------------------------------------------------------- */

static void status_reg(const struct reg_info *ri, void *arg)
{
    static const char *const states[] = {"pending", "registered", "failing", "withheld"};
    json_t *o = instance_to_api(ri->inst);
    struct checks_ctx *x = arg;

    if (!o)
        return;
    json_object_set_new(o, "owner",
                        json_string(ri->owner == REG_OWNER_CONFIG    ? "config"
                                    : ri->owner == REG_OWNER_RUNTIME ? "runtime"
                                                                     : "connection"));
    json_object_set_new(o, "state", json_string(states[ri->state]));
    if (ri->error && *ri->error)
        json_object_set_new(o, "error", json_string(ri->error));
    add_health(o, ri, x->now);
    json_array_append_new(x->arr, o);
}

struct status_svcs {
    json_t *arr;
    const struct policy_config *traffic;
};

static void status_svc(service *svc, void *arg)
{
    struct status_svcs *x = arg;
    const struct policy_guard *g = service_guard(svc);
    json_t *o, *t;
    size_t n;

    service_instances(svc, &n);
    o = json_pack("{s:s, s:I, s:b, s:b, s:I, s:I, s:I}", "service", service_name(svc), "revision",
                  (json_int_t)service_revision(svc), "stale", service_stale(svc), "ready",
                  service_ready(svc), "instances", (json_int_t)n, "skipped",
                  (json_int_t)service_skipped(svc), "watchers",
                  (json_int_t)service_subscribers(svc));
    /* The traffic policy as it stands for this service (docs/traffic.md):
     * zones, loads and priorities, the protection hold, ejection. */
    if (o && (t = policy_plan_json(service_plan(svc), x->traffic))) {
        json_t *od = policy_outlier_json(policy_outlier_of(x->traffic, service_name(svc)));
        json_object_set_new(t, "holds", json_integer((json_int_t)g->holds));
        json_object_set_new(t, "holds_released", json_integer((json_int_t)g->released));
        json_object_set_new(t, "outlier_detection", od ? od : json_null());
        json_object_set_new(o, "traffic", t);
    }
    json_array_append_new(x->arr, o);
}

static void hex(char *buf, size_t len, uint64_t v)
{
    snprintf(buf, len, "%016" PRIx64, v);
}

/* Fills o with the status: the one builder of what `agentctl status` and
 * the HTTP status page show. err and r: etcd's member status (r NULL when
 * err). s: the socket server, for its client count; NULL counts none. */
static void status_fill(json_t *o, proto *pr, server *s, int err, const struct etcd_result *r)
{
    const struct proto_deps *d = &pr->d;
    const struct proto_status_deps *sd = &d->status;
    json_t *etcd, *lease, *regs, *svcs, *eps;
    char buf[32];
    bool any_stale = false;

    json_object_set_new(o, "version", json_string(DA_VERSION));
    json_object_set_new(o, "pid", json_integer(getpid()));
    json_object_set_new(o, "uptime_ms", json_integer((json_int_t)(uv_now(d->loop) - sd->started)));
    json_object_set_new(o, "config", json_string(sd->config_path));
    json_object_set_new(o, "prefix", json_string(d->prefix));

    etcd = json_object();
    eps = json_array();
    for (size_t i = 0; i < sd->n_endpoints; i++)
        json_array_append_new(eps, json_string(sd->endpoints[i]));
    json_object_set_new(etcd, "endpoint", json_string(etcd_client_endpoint(d->etcd)));
    json_object_set_new(etcd, "endpoints", eps);
    json_object_set_new(etcd, "connected", json_boolean(!err && etcd_client_connected(d->etcd)));
    if (!err && r->leader) {
        hex(buf, sizeof buf, r->leader);
        json_object_set_new(etcd, "leader", json_string(buf));
        hex(buf, sizeof buf, r->member_id);
        json_object_set_new(etcd, "member", json_string(buf));
        json_object_set_new(etcd, "version", json_string(r->version));
        json_object_set_new(etcd, "revision", json_integer(r->revision));
    } else {
        json_object_set_new(etcd, "leader", json_null());
    }
    json_object_set_new(etcd, "last_error", json_string(etcd_client_last_error(d->etcd)));
    json_object_set_new(etcd, "requests", json_integer((json_int_t)etcd_client_requests(d->etcd)));
    json_object_set_new(o, "etcd", etcd);

    lease = json_object();
    if (session_lease(sd->session)) {
        hex(buf, sizeof buf, (uint64_t)session_lease(sd->session));
        json_object_set_new(lease, "id", json_string(buf));
    } else {
        json_object_set_new(lease, "id", json_null());
    }
    json_object_set_new(lease, "ttl_s", json_integer(session_ttl(sd->session)));
    json_object_set_new(lease, "remaining_ms", json_integer(session_remaining_ms(sd->session)));
    json_object_set_new(lease, "since_keepalive_ms",
                        json_integer(session_since_keepalive(sd->session)));
    json_object_set_new(lease, "grants", json_integer((json_int_t)session_grants(sd->session)));
    json_object_set_new(o, "lease", lease);

    regs = json_array();
    struct checks_ctx x = {regs, uv_now(d->loop)};
    registry_foreach(d->registry, status_reg, &x);
    json_object_set_new(o, "registrations", regs);
    const char *reason;
    bool maint = registry_in_maint(d->registry, &reason);
    json_object_set_new(o, "maint", json_pack("{s:b, s:s}", "on", maint, "reason", reason));
    svcs = json_array();
    struct status_svcs sx = {svcs, sd->traffic};
    cache_foreach(d->cache, status_svc, &sx);
    size_t k;
    json_t *e;
    json_array_foreach(svcs, k, e) {
        if (json_is_true(json_object_get(e, "stale")))
            any_stale = true;
    }
    json_object_set_new(o, "services", svcs);
    json_object_set_new(o, "clients", json_integer(s ? (json_int_t)server_clients(s) : 0));
    json_object_set_new(o, "skipped", json_integer((json_int_t)cache_skipped_total(d->cache)));
    json_object_set_new(o, "renders", json_integer((json_int_t)pr->renders));
    json_object_set_new(o, "stale", json_boolean(any_stale));
    json_object_set_new(o, "xds", xds_status(d->xds));
    json_object_set_new(o, "dns", dns_status(sd->dns));
}

static void status_done(int err, const struct etcd_result *r, void *arg)
{
    struct pending *p = arg;
    json_t *o = proto__reply_new(p->id, true);

    p->call = NULL;
    if (o)
        status_fill(o, p->cs->p, p->cs->s, err, r);
    proto__send_json(p->cs, o);
    proto__pending_end(p);
}

void proto__op_status(struct conn_state *cs, json_t *req, json_t *id)
{
    struct pending *p = proto__pending_new(cs, P_STATUS, id, 0);
    int rc;

    (void)req;
    if (!p) {
        proto__send_error(cs, id, "internal", "out of memory");
        return;
    }
    /* With etcd known to be unreachable, answer now rather than after a
     * timeout per endpoint: status is what an operator runs at 3 a.m. */
    if (!etcd_client_connected(cs->p->d.etcd)) {
        status_done(DA_EUNAVAIL, NULL, p);
        return;
    }
    rc = etcd_member_status(cs->p->d.etcd, status_done, p, &p->call);
    if (rc)
        status_done(rc, NULL, p);
}

/* ---- the status for other readers (the HTTP status page) ----------------- */

struct proto_status_query {
    proto *p;
    server *s;
    etcd_call *call;
    proto_status_cb cb;
    void *arg;
};

static json_t *status_new(proto *p, server *s, int err, const struct etcd_result *r)
{
    json_t *o = json_object();

    if (o)
        status_fill(o, p, s, err, r);
    return o;
}

static void query_done(int err, const struct etcd_result *r, void *arg)
{
    struct proto_status_query *q = arg;
    proto_status_cb cb = q->cb;
    void *cb_arg = q->arg;
    json_t *o = status_new(q->p, q->s, err, r);

    free(q);
    cb(o, cb_arg);
}

int proto_status_start(proto *p, server *s, json_t **now, proto_status_cb cb, void *arg,
                       proto_status_query **out)
{
    struct proto_status_query *q;
    int rc;

    *out = NULL;
    *now = NULL;
    /* As for the op: with etcd known to be away, answer at once. */
    if (!etcd_client_connected(p->d.etcd)) {
        *now = status_new(p, s, DA_EUNAVAIL, NULL);
        return *now ? 0 : DA_ENOMEM;
    }
    if (!(q = calloc(1, sizeof *q)))
        return DA_ENOMEM;
    q->p = p;
    q->s = s;
    q->cb = cb;
    q->arg = arg;
    rc = etcd_member_status(p->d.etcd, query_done, q, &q->call);
    if (rc) {
        free(q);
        *now = status_new(p, s, rc, NULL);
        return *now ? 0 : DA_ENOMEM;
    }
    *out = q;
    return 0;
}

void proto_status_cancel(proto_status_query *q)
{
    if (!q)
        return;
    etcd_call_cancel(q->call);
    free(q);
}

/* ---- checks ------------------------------------------------------------- */

static void checks_reg(const struct reg_info *ri, void *arg)
{
    struct checks_ctx *x = arg;
    json_t *o = json_pack("{s:s, s:s}", "name", ri->inst->name, "address", ri->inst->address);

    if (!o)
        return;
    add_health(o, ri, x->now);
    json_array_append_new(x->arr, o);
}

void proto__op_checks(struct conn_state *cs, json_t *req, json_t *id)
{
    (void)req;
    struct checks_ctx x = {json_array(), uv_now(cs->p->d.loop)};
    json_t *o = proto__reply_new(id, true);
    const char *reason;
    bool maint = registry_in_maint(cs->p->d.registry, &reason);

    registry_foreach(cs->p->d.registry, checks_reg, &x);
    if (o) {
        json_object_set_new(o, "maint", json_pack("{s:b, s:s}", "on", maint, "reason", reason));
        json_object_set_new(o, "instances", x.arr);
    } else {
        json_decref(x.arr);
    }
    proto__send_json(cs, o);
}
