/* The xDS server's protocol: subscriptions, state of the world, ACK and
 * NACK. See xds.h for the contract and docs/xds.md for the behaviour.
 *
 * Three kinds of objects, all on the loop thread:
 *   xsvc     a service some stream or query named: its cache subscription
 *            and its model (resolved endpoints); shared, reference-counted.
 *   xstream  one ADS stream: per type, the names subscribed, the resources
 *            of the last response (to tell whether anything changed), its
 *            nonce and version, and what the client ACKed or NACKed.
 *   query    an "xds" op of the socket waiting for a service's first list.
 * A service's change reaches its streams as a "pump": each stream compares
 * what it would send now with what it sent last, type by type, and sends
 * the first type that differs; the next goes when that send completes. */
#include "xds.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "defaults.h"
#include "error.h"
#include "log.h"
#include "validate.h"
#include "xds_dns.h"
#include "xds_grpc.h"
#include "xds_resources.h"

#define DEFAULT_HOLD_MS 5000
#define TICK_MS 1000
/* Names re-resolved this often (in ticks); xds_dns.h keeps the answers. */
#define DNS_TICKS 30
/* Bounds on what one request may subscribe to. */
#define MAX_NAMES 1024
#define MAX_NAME_LEN 512
#define NODE_CLUSTER "discovery-agent"
#define BOOTSTRAP_NAME "xds-bootstrap.json"

struct xsvc {
    xds *x;
    char *name;
    service *svc; /* NULL: not a valid service name */
    cache_sub *sub;
    size_t refs;
    bool built;   /* model holds the service's resolved list */
    bool waiting; /* a host name lookup is running */
    struct xds_model model;
    uint64_t created;
    struct xsvc *next;
};

struct sent {
    char *name;
    struct xds_blob blob;
};

struct tstate {
    bool requested; /* the client asked for this type on this stream */
    char **names;   /* subscribed: sorted, unique */
    size_t n_names;
    struct sent *sent; /* the resources of the last response */
    size_t n_sent;
    bool sent_any;
    char nonce[24]; /* of the last response; "" before one */
    char version[24];
    char *acked; /* the version the client last accepted */
    uint64_t nacks;
    char *last_nack;
};

struct xstream {
    xds *x;
    xgrpc_stream *gs;
    uint64_t id;
    char *node_id, *node_cluster, *user_agent;
    char *peer;
    uint64_t opened;
    uint64_t next_nonce;
    uint64_t requests, responses, nacks;
    struct tstate t[XDS_NTYPES];
    struct xsvc **svcs; /* every service named, referenced */
    size_t n_svcs;
    bool busy; /* a response is being sent */
    bool held; /* a type waits for a service's first list */
    struct xstream *prev, *next;
};

struct xds_query {
    xds *x;
    struct xsvc *s;
    xds_query_cb cb;
    void *arg;
    struct xds_query *prev, *next;
};

struct xds {
    uv_loop_t *loop;
    cache *cache;
    bool enabled, send_host_names;
    const struct policy_config *traffic;
    char *path, *tcp, *group_header;
    unsigned mode;
    uint64_t hold_ms, idle_ms;
    int listen_fd; /* passed by systemd, until xds_start hands it on; 0: none */
    char *abs_path, *bootstrap_file;
    char node_id[256];
    xgrpc *g;
    xdns *dns;
    struct xsvc *svcs;
    struct xstream *streams;
    struct xds_query *queries;
    uv_timer_t tick;
    uint64_t ticks;
    uint64_t versions[XDS_NTYPES];
    uint64_t next_stream_id, streams_total, nacks_total, responses_total;
    bool closing;
};

static void pump(struct xstream *st);
static void query_done(struct xds_query *q);

/* ---- services ----------------------------------------------------------- */

static int lookup(const char *host, char ip[INET6_ADDRSTRLEN], void *arg)
{
    xds *x = arg;

    return xdns_lookup(x->dns, host, ip);
}

static void tick_need(xds *x);

/* Tells every stream and query that uses s about its new model. */
static void svc_changed(struct xsvc *s)
{
    xds *x = s->x;

    s->refs++; /* a query's end must not free s under us */
    for (struct xstream *st = x->streams; st; st = st->next)
        for (size_t i = 0; i < st->n_svcs; i++)
            if (st->svcs[i] == s) {
                pump(st);
                break;
            }
    for (struct xds_query *q = x->queries, *next; q; q = next) {
        next = q->next;
        if (q->s == s)
            query_done(q);
    }
    s->refs--;
}

static void svc_rebuild(struct xsvc *s)
{
    xds *x = s->x;
    struct xds_model m;
    const struct instance *const *v;
    size_t n;
    int rc;

    if (!s->svc || !service_ready(s->svc) || x->closing)
        return;
    v = service_instances(s->svc, &n);
    rc = xds_model_build(&m, s->name, v, n, x->send_host_names ? NULL : lookup, x);
    if (rc == 1) {
        s->waiting = true; /* the lookup's answer rebuilds */
        return;
    }
    if (rc < 0) {
        log_error("xds: %s: %s; keeping the last resources", s->name, da_strerror(rc));
        return;
    }
    s->waiting = false;
    /* The traffic policy of this list (policy.h): zones, loads, outlier
     * detection; the cache made the plan, the model only carries it. */
    if (xds_model_set_policy(&m, v, n, service_plan(s->svc),
                             policy_outlier_of(x->traffic, s->name)) < 0) {
        xds_model_clear(&m);
        log_error("xds: %s: out of memory; keeping the last resources", s->name);
        return;
    }
    bool same = s->built && xds_model_equal(&m, &s->model);
    xds_model_clear(&s->model);
    s->model = m;
    if (m.uses_names)
        tick_need(x); /* names are looked up again on the tick */
    if (same)
        return;
    s->built = true;
    log_debug("xds: %s: %zu endpoint(s), %zu group(s), %zu left out, revision %lld", s->name,
              m.n_eps, m.n_groups, m.n_dropped, (long long)service_revision(s->svc));
    svc_changed(s);
}

static void on_cache(service *svc, void *arg)
{
    (void)svc;
    svc_rebuild(arg);
}

static struct xsvc *svc_find(xds *x, const char *name)
{
    for (struct xsvc *s = x->svcs; s; s = s->next)
        if (!strcmp(s->name, name))
            return s;
    return NULL;
}

/* The service called name, made (and watched) if new; NULL only when out
 * of memory. Not referenced: the caller takes a reference. */
static struct xsvc *svc_get(xds *x, const char *name)
{
    struct xsvc *s = svc_find(x, name);
    int err;

    if (s)
        return s;
    s = calloc(1, sizeof *s);
    if (!s || !(s->name = strdup(name))) {
        free(s);
        return NULL;
    }
    s->x = x;
    s->created = uv_now(x->loop);
    s->svc = cache_get(x->cache, name, &err);
    if (s->svc && !(s->sub = cache_subscribe(s->svc, on_cache, s)))
        s->svc = NULL;
    s->next = x->svcs;
    x->svcs = s;
    svc_rebuild(s); /* nobody uses it yet: no notification goes out */
    return s;
}

static void svc_free(struct xsvc *s)
{
    cache_unsubscribe(s->sub);
    xds_model_clear(&s->model);
    free(s->name);
    free(s);
}

static void svc_unref(struct xsvc *s)
{
    xds *x = s->x;

    if (--s->refs)
        return;
    for (struct xsvc **pp = &x->svcs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    svc_free(s);
}

/* A host name got its first or a new address: rebuild what used one. */
static void on_dns(void *arg)
{
    xds *x = arg;
    struct xsvc *next;

    for (struct xsvc *s = x->svcs; s; s = next) {
        s->refs++;
        if (s->waiting || s->model.uses_names)
            svc_rebuild(s);
        next = s->next;
        svc_unref(s);
    }
}

/* ---- streams: what to send ---------------------------------------------- */

static void sent_clear(struct sent *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        xds_blob_clear(&v[i].blob);
    }
    free(v);
}

static bool sent_equal(const struct sent *a, size_t na, const struct sent *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i].name, b[i].name) || !xds_blob_equal(&a[i].blob, &b[i].blob))
            return false;
    return true;
}

/* The service part of a resource name: "echo" of "echo/A". */
static struct xsvc *stream_svc(struct xstream *st, const char *name)
{
    size_t len = strcspn(name, "/");

    for (size_t i = 0; i < st->n_svcs; i++)
        if (strlen(st->svcs[i]->name) == len && !strncmp(st->svcs[i]->name, name, len))
            return st->svcs[i];
    return NULL;
}

/* What a response of type t would carry now. Returns the count, or -1
 * when it must wait (a listener or cluster of a service whose first list
 * has not come yet: leaving it out would read as its deletion to a client
 * that had it from an agent before this one). */
static ssize_t build(struct xstream *st, enum xds_type t, struct sent **out)
{
    xds *x = st->x;
    struct tstate *ts = &st->t[t];
    struct sent *v = calloc(ts->n_names ? ts->n_names : 1, sizeof *v);
    uint64_t now = uv_now(x->loop);
    size_t n = 0;

    *out = NULL;
    if (!v)
        return 0;
    for (size_t i = 0; i < ts->n_names; i++) {
        struct xsvc *s = stream_svc(st, ts->names[i]);
        int rc;

        if (!s || !s->svc)
            continue; /* not a service name: it never exists */
        if (!s->built) {
            if ((t == XDS_LDS || t == XDS_CDS) && now - s->created < x->hold_ms) {
                sent_clear(v, n);
                return -1;
            }
            continue;
        }
        rc = xds_resource(&s->model, t, ts->names[i], x->group_header, &v[n].blob);
        if (rc)
            continue;
        if (!(v[n].name = strdup(ts->names[i]))) {
            xds_blob_clear(&v[n].blob);
            continue;
        }
        n++;
    }
    *out = v;
    return (ssize_t)n;
}

static bool send_type(struct xstream *st, enum xds_type t, struct sent *v, size_t n)
{
    xds *x = st->x;
    struct tstate *ts = &st->t[t];
    struct xds_blob *res = calloc(n ? n : 1, sizeof *res), msg = {0};
    char version[24], nonce[24];
    int rc;

    if (!res)
        return false;
    for (size_t i = 0; i < n; i++)
        res[i] = v[i].blob;
    snprintf(version, sizeof version, "%llu", (unsigned long long)++x->versions[t]);
    snprintf(nonce, sizeof nonce, "%llu", (unsigned long long)++st->next_nonce);
    rc = xds_response(t, version, nonce, res, n, &msg);
    free(res);
    if (rc)
        return false;
    rc = xgrpc_send(st->gs, msg.data, msg.len);
    xds_blob_clear(&msg);
    if (rc)
        return false;
    memcpy(ts->version, version, sizeof version);
    memcpy(ts->nonce, nonce, sizeof nonce);
    sent_clear(ts->sent, ts->n_sent);
    ts->sent = v;
    ts->n_sent = n;
    ts->sent_any = true;
    st->busy = true;
    st->responses++;
    x->responses_total++;
    log_debug("xds: stream %llu: %s version %s nonce %s, %zu resource(s)",
              (unsigned long long)st->id, xds_type_name[t], version, nonce, n);
    return true;
}

/* Sends the first type, in the order the client needs them, whose state
 * differs from what this stream was last sent. */
static void pump(struct xstream *st)
{
    if (st->busy || st->x->closing)
        return;
    st->held = false;
    for (int t = 0; t < XDS_NTYPES; t++) {
        struct tstate *ts = &st->t[t];
        struct sent *v;
        ssize_t n;

        if (!ts->requested)
            continue;
        n = build(st, (enum xds_type)t, &v);
        if (n < 0) {
            st->held = true; /* the tick tries again */
            tick_need(st->x);
            continue;
        }
        if ((!ts->sent_any && n == 0) ||
            (ts->sent_any && sent_equal(v, (size_t)n, ts->sent, ts->n_sent))) {
            sent_clear(v, (size_t)n);
            continue;
        }
        if (send_type(st, (enum xds_type)t, v, (size_t)n))
            return;
        sent_clear(v, (size_t)n);
    }
}

/* ---- streams: what the client asks for ---------------------------------- */

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Makes the sorted, unique, bounded list of names of a request (taking
 * the strings). */
static void take_names(struct xds_request *r, char ***out, size_t *n_out)
{
    size_t n = 0;

    for (size_t i = 0; i < r->n_names; i++) {
        size_t len = strlen(r->names[i]);
        if (n < MAX_NAMES && len && len <= MAX_NAME_LEN)
            r->names[n++] = r->names[i];
        else
            free(r->names[i]);
    }
    qsort(r->names, n, sizeof *r->names, name_cmp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k && !strcmp(r->names[k - 1], r->names[i]))
            free(r->names[i]);
        else
            r->names[k++] = r->names[i];
    }
    *out = r->names;
    *n_out = k;
    r->names = NULL;
    r->n_names = 0;
}

static bool names_equal(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]))
            return false;
    return true;
}

static void names_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Re-derives the services a stream uses from all its names. */
static void stream_services(struct xstream *st)
{
    xds *x = st->x;
    size_t cap = 0, n = 0;
    struct xsvc **v;

    for (int t = 0; t < XDS_NTYPES; t++)
        cap += st->t[t].n_names;
    v = calloc(cap ? cap : 1, sizeof *v);
    if (!v)
        return;
    for (int t = 0; t < XDS_NTYPES; t++) {
        for (size_t i = 0; i < st->t[t].n_names; i++) {
            const char *nm = st->t[t].names[i];
            size_t len = strcspn(nm, "/");
            char svc[MAX_NAME_LEN + 1];
            struct xsvc *s;
            bool dup = false;

            memcpy(svc, nm, len);
            svc[len] = '\0';
            for (size_t k = 0; k < n && !dup; k++)
                dup = !strcmp(v[k]->name, svc);
            if (dup || !(s = svc_get(x, svc)))
                continue;
            s->refs++;
            v[n++] = s;
        }
    }
    for (size_t i = 0; i < st->n_svcs; i++)
        svc_unref(st->svcs[i]);
    free(st->svcs);
    st->svcs = v;
    st->n_svcs = n;
}

static char *dup_text(const char *s)
{
    return strdup(s ? s : "");
}

static void on_message(xgrpc_stream *gs, const uint8_t *data, size_t len, void *arg)
{
    xds *x = arg;
    struct xstream *st = xgrpc_stream_data(gs);
    struct xds_request r;
    struct tstate *ts;
    int t, rc;

    if (!st)
        return;
    rc = xds_request_parse(data, len, &r);
    if (rc) {
        log_warn("xds: stream %llu from %s: %s; ending it", (unsigned long long)st->id, st->peer,
                 rc == DA_EPROTO ? "not a DiscoveryRequest" : da_strerror(rc));
        xgrpc_finish(gs, 3 /* INVALID_ARGUMENT */, "not a DiscoveryRequest");
        return;
    }
    st->requests++;
    if (r.node_id && !st->node_id) {
        st->node_id = dup_text(r.node_id);
        st->node_cluster = dup_text(r.node_cluster);
        st->user_agent = dup_text(r.user_agent);
        log_info("xds: stream %llu: node \"%s\" (%s) on %s", (unsigned long long)st->id,
                 st->node_id ? st->node_id : "", st->user_agent ? st->user_agent : "?", st->peer);
    }
    t = xds_type_of(r.type_url);
    if (t < 0) {
        log_debug("xds: stream %llu: type %s is not served; ignored", (unsigned long long)st->id,
                  r.type_url ? r.type_url : "(none)");
        xds_request_clear(&r);
        return;
    }
    ts = &st->t[t];
    if (r.nonce && *r.nonce) {
        if (strcmp(r.nonce, ts->nonce)) {
            /* An answer to an older response: a newer one is on its way,
             * and the client will answer that. */
            log_debug("xds: stream %llu: stale nonce %s for %s (last %s); ignored",
                      (unsigned long long)st->id, r.nonce, xds_type_name[t], ts->nonce);
            xds_request_clear(&r);
            return;
        }
        if (r.nack) {
            const char *why = r.error_message ? r.error_message : "";
            ts->nacks++;
            st->nacks++;
            x->nacks_total++;
            /* Once per text: a client NACKs the same resource again on
             * every push until it is fixed. */
            if (!ts->last_nack || strcmp(ts->last_nack, why))
                log_warn("xds: node \"%s\" (stream %llu) NACKed %s version %s (nonce %s; its "
                         "request says version \"%s\"); it keeps its last accepted config: %s",
                         st->node_id ? st->node_id : "?", (unsigned long long)st->id,
                         xds_type_name[t], ts->version, ts->nonce, r.version_info, why);
            free(ts->last_nack);
            ts->last_nack = dup_text(why);
        } else {
            free(ts->acked);
            ts->acked = dup_text(r.version_info);
        }
    } else {
        /* A first request for the type: send the whole state, whatever
         * this stream was sent before. */
        ts->requested = true;
        sent_clear(ts->sent, ts->n_sent);
        ts->sent = NULL;
        ts->n_sent = 0;
        ts->sent_any = false;
    }
    /* Subscriptions may change on any request, ACKs included. */
    char **names;
    size_t n;
    take_names(&r, &names, &n);
    if (!names_equal(names, n, ts->names, ts->n_names)) {
        names_free(ts->names, ts->n_names);
        ts->names = names;
        ts->n_names = n;
        stream_services(st);
    } else {
        names_free(names, n);
    }
    xds_request_clear(&r);
    pump(st);
}

static void on_open(xgrpc_stream *gs, void *arg)
{
    xds *x = arg;
    struct xstream *st = calloc(1, sizeof *st);

    if (!st || !(st->peer = strdup(xgrpc_stream_peer(gs)))) {
        free(st);
        xgrpc_finish(gs, 8 /* RESOURCE_EXHAUSTED */, "out of memory");
        return;
    }
    st->x = x;
    st->gs = gs;
    st->id = ++x->next_stream_id;
    st->opened = uv_now(x->loop);
    st->next = x->streams;
    if (x->streams)
        x->streams->prev = st;
    x->streams = st;
    x->streams_total++;
    xgrpc_stream_set_data(gs, st);
    log_debug("xds: stream %llu opened by %s", (unsigned long long)st->id, st->peer);
}

static void on_sent(xgrpc_stream *gs, void *arg)
{
    struct xstream *st = xgrpc_stream_data(gs);

    (void)arg;
    if (!st)
        return;
    st->busy = false;
    pump(st);
}

static void on_close(xgrpc_stream *gs, void *arg)
{
    xds *x = arg;
    struct xstream *st = xgrpc_stream_data(gs);

    if (!st)
        return;
    xgrpc_stream_set_data(gs, NULL);
    if (st->prev)
        st->prev->next = st->next;
    else
        x->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    log_info("xds: stream %llu (node \"%s\") closed after %llu request(s), %llu response(s)",
             (unsigned long long)st->id, st->node_id ? st->node_id : "?",
             (unsigned long long)st->requests, (unsigned long long)st->responses);
    for (size_t i = 0; i < st->n_svcs; i++)
        svc_unref(st->svcs[i]);
    free(st->svcs);
    for (int t = 0; t < XDS_NTYPES; t++) {
        struct tstate *ts = &st->t[t];
        names_free(ts->names, ts->n_names);
        sent_clear(ts->sent, ts->n_sent);
        free(ts->acked);
        free(ts->last_nack);
    }
    free(st->node_id);
    free(st->node_cluster);
    free(st->user_agent);
    free(st->peer);
    free(st);
}

/* ---- the tick ----------------------------------------------------------- */

static void on_tick(uv_timer_t *t);

/* Starts the tick if it is not running: something now needs it. */
static void tick_need(xds *x)
{
    if (!x->closing && !uv_is_active((uv_handle_t *)&x->tick))
        uv_timer_start(&x->tick, on_tick, TICK_MS, TICK_MS);
}

/* Whether the tick has work: a stream held back, or a list built from host
 * names (looked up again every DNS_TICKS). An agent nobody asks over xDS
 * then wakes for nothing: the tick used to run every second for good. */
static bool tick_wanted(const xds *x)
{
    for (const struct xstream *st = x->streams; st; st = st->next)
        if (st->held)
            return true;
    for (const struct xsvc *s = x->svcs; s; s = s->next)
        if (s->model.uses_names)
            return true;
    return false;
}

static void on_tick(uv_timer_t *t)
{
    xds *x = t->data;

    x->ticks++;
    for (struct xstream *st = x->streams; st; st = st->next)
        if (st->held)
            pump(st);
    /* Names are looked up again in the background once their answer is
     * old (xds_dns.c); asking for them is what starts that. */
    if (x->ticks % DNS_TICKS == 0) {
        struct xsvc *next;
        for (struct xsvc *s = x->svcs; s; s = next) {
            s->refs++;
            if (s->model.uses_names)
                svc_rebuild(s);
            next = s->next;
            svc_unref(s);
        }
    }
    if (!tick_wanted(x))
        uv_timer_stop(&x->tick);
}

/* ---- queries ------------------------------------------------------------ */

static json_t *describe(xds *x, struct xsvc *s)
{
    json_t *o = json_object(), *arrs[XDS_NTYPES], *dropped = json_array();
    static const char *const keys[XDS_NTYPES] = {"listeners", "route_configurations", "clusters",
                                                 "cluster_load_assignments"};
    size_t nc = s->model.n_groups + 1;

    json_object_set_new(o, "service", json_string(s->name));
    json_object_set_new(o, "revision", json_integer(service_revision(s->svc)));
    json_object_set_new(o, "stale", json_boolean(service_stale(s->svc)));
    json_object_set_new(o, "group_header", json_string(x->group_header));
    for (int t = 0; t < XDS_NTYPES; t++) {
        arrs[t] = json_array();
        /* Listener and route: one each; clusters and assignments: NAME,
         * then NAME/G per group. */
        for (size_t i = 0; i < (t == XDS_LDS || t == XDS_RDS ? 1 : nc); i++) {
            const char *group = i ? s->model.groups[i - 1] : NULL;
            size_t len = strlen(s->name) + (group ? strlen(group) + 1 : 0) + 1;
            char *name = malloc(len);
            struct xds_blob b;

            if (!name)
                continue;
            snprintf(name, len, group ? "%s/%s" : "%s", s->name, group);
            if (!xds_resource(&s->model, (enum xds_type)t, name, x->group_header, &b)) {
                json_array_append_new(arrs[t], xds_resource_json((enum xds_type)t, b.data, b.len));
                xds_blob_clear(&b);
            }
            free(name);
        }
        json_object_set_new(o, keys[t], arrs[t]);
    }
    for (size_t i = 0; i < s->model.n_dropped; i++)
        json_array_append_new(dropped,
                              json_pack("{s:s, s:s}", "address", s->model.dropped[i].address,
                                        "reason", s->model.dropped[i].reason));
    json_object_set_new(o, "left_out", dropped);
    return o;
}

static void query_unlink(struct xds_query *q)
{
    xds *x = q->x;

    if (q->prev)
        q->prev->next = q->next;
    else
        x->queries = q->next;
    if (q->next)
        q->next->prev = q->prev;
}

static void query_done(struct xds_query *q)
{
    json_t *res = describe(q->x, q->s);

    query_unlink(q);
    q->cb(res, q->arg);
    svc_unref(q->s);
    free(q);
}

int xds_describe(xds *x, const char *name, json_t **now, xds_query_cb cb, void *arg,
                 xds_query **out)
{
    struct xsvc *s;
    struct xds_query *q;

    *now = NULL;
    *out = NULL;
    if (!validate_name(name, NULL, 0))
        return DA_EINVAL;
    if (!(s = svc_get(x, name)))
        return DA_ENOMEM;
    s->refs++;
    if (!s->svc) {
        svc_unref(s);
        return DA_EINVAL;
    }
    if (s->built) {
        *now = describe(x, s);
        svc_unref(s);
        return 0;
    }
    if (!(q = calloc(1, sizeof *q))) {
        svc_unref(s);
        return DA_ENOMEM;
    }
    q->x = x;
    q->s = s;
    q->cb = cb;
    q->arg = arg;
    q->next = x->queries;
    if (x->queries)
        x->queries->prev = q;
    x->queries = q;
    *out = q;
    return 0;
}

void xds_query_cancel(xds_query *q)
{
    if (!q)
        return;
    query_unlink(q);
    svc_unref(q->s);
    free(q);
}

/* ---- status and bootstrap ----------------------------------------------- */

static json_t *names_json(char **v, size_t n)
{
    json_t *a = json_array();

    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

json_t *xds_status(xds *x)
{
    json_t *o = json_object(), *clients = json_array();
    int port = xgrpc_tcp_port(x->g);

    json_object_set_new(o, "enabled", json_boolean(x->enabled));
    json_object_set_new(o, "path", json_string(x->path));
    json_object_set_new(o, "tcp", x->tcp ? json_string(x->tcp) : json_null());
    json_object_set_new(o, "tcp_port", port ? json_integer(port) : json_null());
    json_object_set_new(o, "group_header", json_string(x->group_header));
    json_object_set_new(o, "bootstrap", x->enabled ? json_string(x->bootstrap_file) : json_null());
    json_object_set_new(o, "grpc_running", json_boolean(xgrpc_running(x->g)));
    json_object_set_new(o, "grpc_starts", json_integer((json_int_t)xgrpc_starts(x->g)));
    json_object_set_new(o, "streams_total", json_integer((json_int_t)x->streams_total));
    json_object_set_new(o, "responses", json_integer((json_int_t)x->responses_total));
    json_object_set_new(o, "nacks", json_integer((json_int_t)x->nacks_total));
    for (struct xstream *st = x->streams; st; st = st->next) {
        json_t *c = json_object(), *sub = json_object(), *acked = json_object(),
               *nacks = json_object();

        json_object_set_new(c, "stream", json_integer((json_int_t)st->id));
        json_object_set_new(c, "node", st->node_id ? json_string(st->node_id) : json_null());
        json_object_set_new(c, "user_agent",
                            st->user_agent ? json_string(st->user_agent) : json_null());
        json_object_set_new(c, "peer", json_string(st->peer));
        json_object_set_new(c, "connected_ms",
                            json_integer((json_int_t)(uv_now(x->loop) - st->opened)));
        for (int t = 0; t < XDS_NTYPES; t++) {
            struct tstate *ts = &st->t[t];
            json_object_set_new(sub, xds_type_name[t], names_json(ts->names, ts->n_names));
            json_object_set_new(acked, xds_type_name[t],
                                ts->acked && *ts->acked ? json_string(ts->acked) : json_null());
            json_object_set_new(nacks, xds_type_name[t], json_integer((json_int_t)ts->nacks));
        }
        json_object_set_new(c, "subscribed", sub);
        json_object_set_new(c, "acked", acked);
        json_object_set_new(c, "nacks", json_integer((json_int_t)st->nacks));
        json_object_set_new(c, "nacks_by_type", nacks);
        const char *last = NULL;
        for (int t = 0; t < XDS_NTYPES; t++)
            if (st->t[t].last_nack)
                last = st->t[t].last_nack;
        json_object_set_new(c, "last_nack", last ? json_string(last) : json_null());
        json_object_set_new(c, "requests", json_integer((json_int_t)st->requests));
        json_object_set_new(c, "responses", json_integer((json_int_t)st->responses));
        json_array_append_new(clients, c);
    }
    json_object_set_new(o, "clients", clients);
    return o;
}

json_t *xds_bootstrap(const xds *x)
{
    char uri[4200];

    if (!x->enabled)
        return NULL;
    /* abs_path starts with '/': "unix:///run/discovery-agent/xds.sock". */
    snprintf(uri, sizeof uri, "unix://%s", x->abs_path);
    return json_pack("{s:[{s:s, s:[{s:s}]}], s:{s:s, s:s}}", "xds_servers", "server_uri", uri,
                     "channel_creds", "type", "insecure", "node", "id", x->node_id, "cluster",
                     NODE_CLUSTER);
}

const char *xds_bootstrap_path(const xds *x)
{
    return x->bootstrap_file;
}

/* Writes the bootstrap beside the socket, whole or not at all (a client
 * starting meanwhile reads the old file or the new one). */
static int write_bootstrap(xds *x)
{
    json_t *b = xds_bootstrap(x);
    size_t len = strlen(x->bootstrap_file) + 16;
    char *tmp = malloc(len);
    int rc = 0;

    if (!b || !tmp) {
        json_decref(b);
        free(tmp);
        return DA_ENOMEM;
    }
    snprintf(tmp, len, "%s.tmp", x->bootstrap_file);
    if (json_dump_file(b, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0 || chmod(tmp, 0644) < 0 ||
        rename(tmp, x->bootstrap_file) < 0) {
        rc = errno ? -errno : DA_EINVAL;
        unlink(tmp);
    }
    json_decref(b);
    free(tmp);
    return rc;
}

/* ---- life --------------------------------------------------------------- */

static char *absolute(const char *path)
{
    char cwd[4096];
    size_t len;
    char *out;

    if (path[0] == '/')
        return strdup(path);
    if (!getcwd(cwd, sizeof cwd))
        return strdup(path);
    len = strlen(cwd) + strlen(path) + 2;
    if ((out = malloc(len)))
        snprintf(out, len, "%s/%s", cwd, path);
    return out;
}

int xds_new(xds **out, uv_loop_t *loop, cache *c, const struct xds_options *o)
{
    xds *x = calloc(1, sizeof *x);
    const char *slash;
    size_t dlen, blen;

    *out = NULL;
    if (!x)
        return DA_ENOMEM;
    x->loop = loop;
    x->cache = c;
    x->enabled = o->enabled;
    x->send_host_names = o->send_host_names;
    x->traffic = o->traffic;
    x->mode = o->mode;
    x->hold_ms = o->hold_ms ? o->hold_ms : DEFAULT_HOLD_MS;
    x->idle_ms = o->idle_ms;
    x->listen_fd = o->listen_fd;
    x->path = strdup(o->path);
    x->tcp = o->tcp ? strdup(o->tcp) : NULL;
    x->group_header = strdup(o->group_header ? o->group_header : DA_DEFAULT_XDS_GROUP_HEADER);
    x->abs_path = x->path ? absolute(x->path) : NULL;
    if (!x->path || (o->tcp && !x->tcp) || !x->group_header || !x->abs_path)
        goto fail;
    slash = strrchr(x->abs_path, '/');
    dlen = (size_t)(slash - x->abs_path) + 1;
    blen = dlen + sizeof BOOTSTRAP_NAME;
    if (!(x->bootstrap_file = malloc(blen)))
        goto fail;
    snprintf(x->bootstrap_file, blen, "%.*s%s", (int)dlen, x->abs_path, BOOTSTRAP_NAME);
    if (gethostname(x->node_id, sizeof x->node_id - 1) < 0 || !x->node_id[0])
        snprintf(x->node_id, sizeof x->node_id, "localhost");
    if (xdns_new(&x->dns, loop, on_dns, x))
        goto fail;
    uv_timer_init(loop, &x->tick);
    x->tick.data = x;
    *out = x;
    return 0;
fail:
    free(x->path);
    free(x->tcp);
    free(x->group_header);
    free(x->abs_path);
    free(x->bootstrap_file);
    free(x);
    return DA_ENOMEM;
}

int xds_start(xds *x, char *err, size_t errlen)
{
    struct xgrpc_options go = {0};
    struct xgrpc_callbacks cb = {on_open, on_message, on_sent, on_close};
    int rc;

    if (!x->enabled) {
        log_info("xds: disabled (xds.enabled: false)");
        return 0;
    }
    go.path = x->path;
    go.mode = x->mode;
    go.tcp = x->tcp;
    go.idle_ms = x->idle_ms;
    go.listen_fd = x->listen_fd;
    x->listen_fd = 0; /* xgrpc_start steals it */
    rc = xgrpc_start(&x->g, x->loop, &go, &cb, x, err, errlen);
    if (rc)
        return rc;
    rc = write_bootstrap(x);
    if (rc)
        log_warn("xds: cannot write %s: %s; `agentctl xds-bootstrap` still prints it",
                 x->bootstrap_file, rc == DA_ENOMEM ? "out of memory" : strerror(-rc));
    /* The tick starts when something needs it (tick_need). */
    if (x->tcp)
        log_info("xds: serving ADS on unix:%s and %s (port %d); bootstrap %s%s", x->path, x->tcp,
                 xgrpc_tcp_port(x->g), x->bootstrap_file,
                 x->send_host_names ? "; TEST MODE: host names are sent unresolved" : "");
    else
        log_info("xds: serving ADS on unix:%s; bootstrap %s%s", x->path, x->bootstrap_file,
                 x->send_host_names ? "; TEST MODE: host names are sent unresolved" : "");
    return 0;
}

static void tick_closed(uv_handle_t *h)
{
    xds *x = h->data;

    free(x->path);
    free(x->tcp);
    free(x->group_header);
    free(x->abs_path);
    free(x->bootstrap_file);
    free(x);
}

xds *xds_close(xds *x)
{
    if (!x || x->closing)
        return NULL;
    x->closing = true;
    if (x->listen_fd > 0)
        close(x->listen_fd); /* passed, never started */
    /* Streams go first (their on_close drops their services), then the
     * queries; every cache subscription is gone when this returns. */
    xgrpc_close(x->g);
    x->g = NULL;
    while (x->queries)
        xds_query_cancel(x->queries);
    while (x->svcs) {
        struct xsvc *s = x->svcs;
        x->svcs = s->next;
        svc_free(s);
    }
    x->dns = xdns_close(x->dns);
    uv_close((uv_handle_t *)&x->tick, tick_closed);
    return NULL;
}
