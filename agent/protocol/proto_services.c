/* The services operation (every service under the prefix in etcd) and
 * the xDS ones (what the xDS server sends for a service, and the bootstrap
 * gRPC clients need). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "protocol_internal.h"
#include "validate.h"

/* ---- services ----------------------------------------------------------- */

struct svc_count {
    char *name;
    size_t n;
};

static int by_name(const void *x, const void *y)
{
    return strcmp(((const struct svc_count *)x)->name, ((const struct svc_count *)y)->name);
}

static void note_reg(const struct reg_info *ri, void *arg)
{
    json_object_set_new(arg, ri->inst->name, json_true());
}

static void mark_watched(service *svc, void *arg)
{
    size_t k;
    json_t *e;

    json_array_foreach((json_t *)arg, k, e) {
        if (!strcmp(json_string_value(json_object_get(e, "name")), service_name(svc)))
            json_object_set_new(e, "watched", json_true());
    }
}

static void services_done(int err, const struct etcd_result *r, void *arg)
{
    struct pending *p = arg;
    const struct proto_deps *d = &p->cs->p->d;
    size_t plen = strlen(d->prefix) + 1, n = 0;
    struct svc_count *v = NULL;
    json_t *o, *arr, *regs;

    p->call = NULL;
    if (err) {
        proto__send_error(p->cs, p->id, "unavailable", "cannot list services: %s (%s)",
                          da_strerror(err), etcd_client_last_error(d->etcd));
        proto__pending_end(p);
        return;
    }
    v = calloc(r->n_kvs ? r->n_kvs : 1, sizeof *v);
    if (!v) {
        proto__send_error(p->cs, p->id, "internal", "out of memory");
        proto__pending_end(p);
        return;
    }
    for (size_t i = 0; i < r->n_kvs; i++) {
        if (r->kvs[i].key_len <= plen)
            continue;
        const char *k = r->kvs[i].key + plen;
        const char *slash = memchr(k, '/', r->kvs[i].key_len - plen);
        if (!slash || slash == k)
            continue;
        size_t len = (size_t)(slash - k);
        if (n && strlen(v[n - 1].name) == len && !memcmp(v[n - 1].name, k, len)) {
            v[n - 1].n++; /* keys come sorted, so a name's keys are together */
            continue;
        }
        if (!(v[n].name = strndup(k, len)))
            break;
        v[n++].n = 1;
    }
    qsort(v, n, sizeof *v, by_name);
    regs = json_object();
    registry_foreach(d->registry, note_reg, regs);
    o = proto__reply_new(p->id, true);
    arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, json_pack("{s:s, s:I, s:b, s:b}", "name", v[i].name, "instances",
                                             (json_int_t)v[i].n, "watched", 0, "registered",
                                             json_object_get(regs, v[i].name) != NULL));
        free(v[i].name);
    }
    free(v);
    json_decref(regs);
    /* "watched": this agent follows the service in its cache. */
    cache_foreach(d->cache, mark_watched, arr);
    if (o) {
        json_object_set_new(o, "revision", json_integer(r->revision));
        json_object_set_new(o, "services", arr);
    } else {
        json_decref(arr);
    }
    proto__send_json(p->cs, o);
    proto__pending_end(p);
}

void proto__op_services(struct conn_state *cs, json_t *req, json_t *id)
{
    const struct proto_deps *d = &cs->p->d;
    char key[1024], end[1024];
    size_t klen = (size_t)snprintf(key, sizeof key, "%s/", d->prefix), elen;
    struct pending *p = proto__pending_new(cs, P_SERVICES, id, 0);
    int rc;

    (void)req;
    if (!p) {
        proto__send_error(cs, id, "internal", "out of memory");
        return;
    }
    elen = etcd_prefix_end(key, klen, end);
    rc = etcd_range(d->etcd, key, klen, end, elen, ETCD_RANGE_KEYS_ONLY, 0, services_done, p,
                    &p->call);
    if (rc) {
        proto__pending_end(p);
        proto__send_error(cs, id, "internal", "%s", da_strerror(rc));
    }
}

/* ---- xDS ---------------------------------------------------------------- */

/* The resources the xDS server sends for a service (xds.h). */
static void xds_ready(json_t *res, void *arg)
{
    struct pending *p = arg;
    json_t *o = proto__reply_new(p->id, true);

    p->xq = NULL; /* the query is over: nothing to cancel */
    if (o && res)
        json_object_update(o, res);
    json_decref(res);
    proto__send_json(p->cs, o);
    proto__pending_end(p);
}

void proto__op_xds(struct conn_state *cs, json_t *req, json_t *id)
{
    bool bad = false;
    const char *name = proto__opt_string(req, "service", &bad);
    json_t *now = NULL;
    struct pending *p;
    char why[128], shown[VALIDATE_EXCERPT + 4];
    int rc;

    if (bad || !name) {
        proto__send_error(cs, id, "bad_request", "'service' (a string) is required");
        return;
    }
    if (!validate_name(name, why, sizeof why)) {
        proto__send_error(cs, id, "bad_name", "bad service name '%s': %s",
                          validate_excerpt(name, shown, sizeof shown), why);
        return;
    }
    p = proto__pending_new(cs, P_XDS, id, cs->p->d.timeout_ms);
    if (!p) {
        proto__send_error(cs, id, "internal", "out of memory");
        return;
    }
    rc = xds_describe(cs->p->d.xds, name, &now, xds_ready, p, &p->xq);
    if (rc) {
        proto__pending_end(p);
        if (rc == DA_EINVAL)
            proto__send_error(cs, id, "bad_name", "bad service name '%s'",
                              validate_excerpt(name, shown, sizeof shown));
        else
            proto__send_error(cs, id, "internal", "%s", da_strerror(rc));
        return;
    }
    if (now)
        xds_ready(now, p);
}

/* The bootstrap JSON gRPC clients need (GRPC_XDS_BOOTSTRAP). */
void proto__op_xds_bootstrap(struct conn_state *cs, json_t *req, json_t *id)
{
    json_t *b = xds_bootstrap(cs->p->d.xds), *o;

    (void)req;
    if (!b) {
        proto__send_error(cs, id, "disabled", "the xDS server is disabled (xds.enabled: false)");
        return;
    }
    o = proto__reply_new(id, true);
    if (o) {
        json_object_set_new(o, "bootstrap", b);
        json_object_set_new(o, "file", json_string(xds_bootstrap_path(cs->p->d.xds)));
    } else {
        json_decref(b);
    }
    proto__send_json(cs, o);
}
