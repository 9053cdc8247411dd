/* The socket protocol: one JSON request per line, one reply per request
 * (echoing its "id"), and update lines for watches. proto/agent-protocol.md
 * is its specification; keep the two in step.
 *
 * Each connection has a conn_state holding its watches and the requests
 * still waiting for something (a first list, an etcd answer, a write). When
 * the connection goes, all of that is cancelled at once, so no callback can
 * reach a connection that is gone. */
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "duration.h"

#include <grp.h>
#include <pwd.h>
#include "error.h"
#include "log.h"
#include "validate.h"

const char proto_too_long_reply[] =
    "{\"ok\":false,\"error\":{\"code\":\"line_too_long\",\"message\":\"request line over 65536 "
    "bytes; the connection is closed\"}}\n";

const char proto_busy_reply[] =
    "{\"ok\":false,\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many "
    "connections: the agent's clients hold every file descriptor but those it keeps for etcd, "
    "health checks and files (or 16384 clients are connected); this connection is closed: "
    "close idle connections or raise the agent's LimitNOFILE\"}}\n";

struct conn_state;

static void maybe_end(struct conn_state *cs);
static int check_from_json(json_t *o, bool exec_enabled, struct check_spec *spec, char *err,
                           size_t errlen);
struct reg_info;
static void add_health(json_t *o, const struct reg_info *ri, uint64_t now);
struct checks_ctx {
    json_t *arr;
    uint64_t now;
};

enum pending_kind { P_RESOLVE, P_WATCH, P_REGISTER, P_DEREGISTER, P_SERVICES, P_STATUS, P_XDS };

/* A request waiting for something. */
struct pending {
    struct conn_state *cs;
    enum pending_kind kind;
    json_t *id;
    service *svc;
    char *group;
    cache_sub *sub;
    etcd_call *call;
    uint64_t watch; /* P_WATCH: the watch id to create */
    int64_t min_rev; /* P_RESOLVE/P_WATCH: our own last write to show */
    bool in_registry; /* registry_forget() needed at the end */
    xds_query *xq;    /* P_XDS: waiting for the service's first list */
    uv_timer_t timer;
    bool timer_on;
    struct pending *next;
};

struct cwatch {
    struct conn_state *cs;
    uint64_t id;
    service *svc;
    char *group;
    cache_sub *sub;
    struct seen *last; /* the list last sent, to skip updates that change nothing */
    struct cwatch *next;
};

struct conn_state {
    struct agent *a;
    server_conn *c;
    uint64_t id;
    bool dead; /* a send failed: on_close is coming */
    bool eof;  /* the peer half-closed: end once everything is answered */
    int may_change; /* 0 not yet known, 1 yes, -1 no (peer credentials) */
    uint64_t next_watch;
    struct cwatch *watches;
    struct pending *pending;
};

/* ---- output ------------------------------------------------------------- */

static void send_json(struct conn_state *cs, json_t *o)
{
    char *text;
    size_t len;

    if (!o)
        return;
    if (cs->dead) {
        json_decref(o);
        return;
    }
    text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return;
    len = strlen(text);
    text[len] = '\n'; /* replaces the NUL; sent with its length */
    if (server_send(cs->c, text, len + 1) != 0)
        cs->dead = true;
    free(text);
}

static json_t *reply_new(json_t *id, bool ok)
{
    json_t *o = json_object();

    if (!o)
        return NULL;
    if (id)
        json_object_set(o, "id", id);
    json_object_set_new(o, "ok", json_boolean(ok));
    return o;
}

static void send_error(struct conn_state *cs, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void send_error(struct conn_state *cs, json_t *id, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    json_t *o = reply_new(id, false);

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (o)
        json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", code, "message", msg));
    send_json(cs, o);
}

/* {"service","revision","stale","instances":[...]} filtered by group,
 * added to o. Instances are sorted by address (the cache keeps them so). */
static void add_list(json_t *o, service *svc, const char *group)
{
    size_t n;
    const struct instance *const *v = service_instances(svc, &n);
    json_t *arr = json_array();

    json_object_set_new(o, "service", json_string(service_name(svc)));
    json_object_set_new(o, "revision", json_integer(service_revision(svc)));
    json_object_set_new(o, "stale", json_boolean(service_stale(svc)));
    /* Only before the first list: an empty "instances" then means "not
     * known yet", not "none registered". */
    if (!service_ready(svc))
        json_object_set_new(o, "ready", json_false());
    for (size_t i = 0; arr && i < n; i++)
        if (!group || !strcmp(v[i]->group, group))
            json_array_append_new(arr, instance_to_api(v[i]));
    json_object_set_new(o, "instances", arr);
}

/* ---- pending requests --------------------------------------------------- */

static void pending_closed(uv_handle_t *h)
{
    struct pending *p = h->data;

    json_decref(p->id);
    free(p->group);
    free(p);
}

/* Takes p off its connection and cancels whatever it waits for. */
static void pending_end(struct pending *p)
{
    struct conn_state *cs = p->cs;

    for (struct pending **pp = &cs->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    cache_unsubscribe(p->sub);
    p->sub = NULL;
    etcd_call_cancel(p->call);
    p->call = NULL;
    xds_query_cancel(p->xq);
    p->xq = NULL;
    if (p->in_registry)
        registry_forget(cs->a->registry, p);
    uv_close((uv_handle_t *)&p->timer, pending_closed);
    maybe_end(cs);
}

static void pending_timeout(uv_timer_t *t);

/* A half-closed connection ends once nothing is owed to it any more. */
static void maybe_end(struct conn_state *cs)
{
    if (cs->eof && !cs->pending && !cs->watches)
        server_conn_end(cs->c);
}

static struct pending *pending_new(struct conn_state *cs, enum pending_kind kind, json_t *id,
                                   uint64_t timeout_ms)
{
    struct pending *p = calloc(1, sizeof *p);

    if (!p)
        return NULL;
    p->cs = cs;
    p->kind = kind;
    p->id = id ? json_incref(id) : NULL;
    uv_timer_init(cs->a->loop, &p->timer);
    p->timer.data = p;
    if (timeout_ms)
        uv_timer_start(&p->timer, pending_timeout, timeout_ms, 0);
    p->next = cs->pending;
    cs->pending = p;
    return p;
}

/* ---- watches ------------------------------------------------------------ */

/* The text a watcher compares (a list without its revision), shared by the
 * render and by every watcher that was sent it: 10,000 watchers used to keep
 * a copy each (a kilobyte for a 10-instance service, 10 MB in all), and
 * each change copied it once per watcher. */
struct seen {
    int refs;
    size_t len;
    uint64_t h1, h2;
};

static struct seen *seen_ref(struct seen *v)
{
    if (v)
        v->refs++;
    return v;
}

static void seen_unref(struct seen *v)
{
    if (v && --v->refs == 0)
        free(v);
}

/* Takes text (from json_dumps, freed here); NULL if text is. A watcher
 * keeps what it last saw only to compare with the next list, so it keeps
 * the list's length and two 64-bit hashes of it (FNV-1a and a multiply-
 * rotate hash) rather than the text: the text cost ~1 KB per watched
 * 10-instance service. */
static struct seen *seen_new(char *text)
{
    struct seen *v = text ? malloc(sizeof *v) : NULL;

    if (v) {
        uint64_t h1 = 1469598103934665603ull, h2 = 0x9e3779b97f4a7c15ull;
        const unsigned char *p = (const unsigned char *)text;
        for (; *p; p++) {
            h1 = (h1 ^ *p) * 1099511628211ull;
            h2 = (h2 ^ *p) * 0xff51afd7ed558ccdull;
            h2 = (h2 << 31) | (h2 >> 33);
        }
        v->refs = 1;
        v->len = (size_t)(p - (const unsigned char *)text);
        v->h1 = h1;
        v->h2 = h2;
    }
    free(text);
    return v;
}

static bool seen_same(const struct seen *a, const struct seen *b)
{
    return a == b || (a->len == b->len && a->h1 == b->h1 && a->h2 == b->h2);
}

/* One change of a service is rendered once per group and reused for every
 * watcher of that group and every resolve: with a thousand watchers of a
 * large service, rendering per watcher was what stalled the loop. The
 * renders of the service's current list are kept with the service, one per
 * group asked for (the cache frees them at its next change), so watchers of
 * different groups no longer evict each other's render: one slot shared by
 * every group rendered 20,000 instances once per watcher when groups
 * alternated. */
struct render {
    char *group; /* NULL: every group */
    char *list;  /* {"service",..,"revision",..,"stale",..,"instances":[..]} */
    struct seen *seen; /* the same without the revision: what a watcher sees change */
    struct render *next;
};

/* A service's renders, most recently used first. */
struct renders {
    struct render *head;
    size_t n;
};

/* Renders kept per service beyond one per subscriber: the groups watched
 * are at most the subscribers, so a change never evicts a group its
 * watchers still need, and resolves of any other groups share these few
 * (a client asking for a thousand made-up groups cannot grow the table). */
#define RENDERS_SPARE 8

static void render_free(struct render *r)
{
    free(r->group);
    free(r->list);
    seen_unref(r->seen);
    free(r);
}

static void renders_free(void *arg)
{
    struct renders *t = arg;

    while (t->head) {
        struct render *r = t->head;
        t->head = r->next;
        render_free(r);
    }
    free(t);
}

static struct render *render_new(service *svc, const char *group)
{
    struct render *r = calloc(1, sizeof *r);
    json_t *o = json_object();

    if (!r || !o)
        goto fail;
    add_list(o, svc, group);
    r->list = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    /* Revisions are left out of what a watcher "sees": a change elsewhere
     * in the service moves the revision but not this group's list. */
    json_object_del(o, "revision");
    r->seen = seen_new(json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER));
    r->group = group ? strdup(group) : NULL;
    if (!r->list || !r->seen || (group && !r->group))
        goto fail;
    json_decref(o);
    return r;
fail:
    json_decref(o);
    if (r)
        render_free(r);
    return NULL;
}

/* The service's list for group (NULL: all), rendered at most once per
 * change; borrowed until the service next changes. NULL when out of
 * memory. */
static const struct render *render(struct agent *a, service *svc, const char *group)
{
    struct renders *t = service_derived(svc);
    struct render **pp, *r;
    size_t cap = service_subscribers(svc) + RENDERS_SPARE;

    if (!t) {
        if (!(t = calloc(1, sizeof *t)))
            return NULL;
        service_set_derived(svc, t, renders_free);
    }
    for (pp = &t->head; (r = *pp) != NULL; pp = &r->next)
        if ((!group && !r->group) || (group && r->group && !strcmp(group, r->group))) {
            *pp = r->next; /* to the front */
            r->next = t->head;
            t->head = r;
            return r;
        }
    if (!(r = render_new(svc, group)))
        return NULL;
    a->renders++;
    /* Over the cap, the least recently used goes (a watcher still holds
     * the seen it was sent). */
    while (t->n >= cap && t->head) {
        for (pp = &t->head; (*pp)->next; pp = &(*pp)->next)
            ;
        render_free(*pp);
        *pp = NULL;
        t->n--;
    }
    r->next = t->head;
    t->head = r;
    t->n++;
    return r;
}

static void watch_update(service *svc, void *arg)
{
    struct cwatch *w = arg;
    const struct render *r;
    char head[64];
    size_t hlen, llen;
    char *line;

    if (w->cs->dead || !(r = render(w->cs->a, svc, w->group)))
        return;
    if (w->last && seen_same(w->last, r->seen))
        return; /* nothing this watcher sees has changed */
    seen_unref(w->last);
    w->last = seen_ref(r->seen);
    /* {"event":"update","watch":N, + the list without its opening brace */
    hlen = (size_t)snprintf(head, sizeof head, "{\"event\":\"update\",\"watch\":%llu,",
                            (unsigned long long)w->id);
    llen = strlen(r->list);
    line = malloc(hlen + llen + 1);
    if (!line)
        return;
    memcpy(line, head, hlen);
    memcpy(line + hlen, r->list + 1, llen - 1);
    line[hlen + llen - 1] = '\n';
    if (server_send(w->cs->c, line, hlen + llen) != 0)
        w->cs->dead = true;
    free(line);
}

static void cwatch_free(struct cwatch *w)
{
    cache_unsubscribe(w->sub);
    seen_unref(w->last);
    free(w->group);
    free(w);
}

/* Replies to a watch request and starts sending updates. */
static void watch_begin(struct pending *p)
{
    struct conn_state *cs = p->cs;
    struct cwatch *w = calloc(1, sizeof *w);
    const struct render *r;
    json_t *o;

    if (!w || (p->group && !(w->group = strdup(p->group)))) {
        free(w);
        send_error(cs, p->id, "internal", "out of memory");
        return;
    }
    w->cs = cs;
    w->id = p->watch;
    w->svc = p->svc;
    w->sub = cache_subscribe(p->svc, watch_update, w);
    if (!w->sub) {
        cwatch_free(w);
        send_error(cs, p->id, "internal", "out of memory");
        return;
    }
    w->next = cs->watches;
    cs->watches = w;
    r = render(cs->a, p->svc, w->group);
    w->last = r ? seen_ref(r->seen) : NULL;
    o = reply_new(p->id, true);
    if (o) {
        json_object_set_new(o, "watch", json_integer((json_int_t)w->id));
        add_list(o, p->svc, p->group);
    }
    send_json(cs, o);
}

/* ---- resolve and watch -------------------------------------------------- */

/* Appends the decimal digits of v at p; returns the end. */
static char *put_i64(char *p, int64_t v)
{
    char tmp[24];
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    int n = 0;

    do
        tmp[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0)
        *p++ = '-';
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

/* Answers a resolve with a list render() made: {"id":ID,"ok":true, then the
 * rendered list without its opening brace. id_text is the id as JSON text
 * (id_len bytes), or NULL for a request without one. */
static void send_rendered(struct conn_state *cs, const struct render *r, const char *id_text,
                          size_t id_len)
{
    size_t llen = strlen(r->list), hlen;
    char stack[4096], *buf = stack, *p;

    if (cs->dead)
        return;
    if (id_len + llen + 32 > sizeof stack && !(buf = malloc(id_len + llen + 32))) {
        send_error(cs, NULL, "internal", "out of memory");
        return;
    }
    p = buf;
    if (id_text) {
        memcpy(p, "{\"id\":", 6);
        memcpy(p + 6, id_text, id_len);
        p += 6 + id_len;
        memcpy(p, ",\"ok\":true,", 11);
        p += 11;
    } else {
        memcpy(p, "{\"ok\":true,", 11);
        p += 11;
    }
    hlen = (size_t)(p - buf);
    memcpy(p, r->list + 1, llen - 1);
    buf[hlen + llen - 1] = '\n';
    if (server_send(cs->c, buf, hlen + llen) != 0)
        cs->dead = true;
    if (buf != stack)
        free(buf);
}

/* A resolve whose list is there: no pending request, no timer, no JSON
 * built; false if it must take the general path (out of memory, or an id
 * that is a string too long for the stack). */
static bool resolve_now(struct conn_state *cs, json_t *id, service *svc, const char *group)
{
    const struct render *r = render(cs->a, svc, group);
    char num[24], *ids = NULL;
    bool done = false;

    if (!r)
        return false;
    if (!id) {
        send_rendered(cs, r, NULL, 0);
        done = true;
    } else if (json_is_integer(id)) {
        send_rendered(cs, r, num, (size_t)(put_i64(num, json_integer_value(id)) - num));
        done = true;
    } else if ((ids = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT)) != NULL) {
        send_rendered(cs, r, ids, strlen(ids));
        done = true;
    }
    free(ids);
    return done;
}

static void list_ready(struct pending *p)
{
    if (p->kind == P_WATCH) {
        watch_begin(p);
    } else {
        json_t *o = reply_new(p->id, true);
        if (o)
            add_list(o, p->svc, p->group);
        send_json(p->cs, o);
    }
    pending_end(p);
}

/* A list is ready to answer with once the cache has one and it shows this
 * agent's own last change to the service (read your writes). While etcd is
 * away (stale), waiting would not help: the stale list is the answer. */
static bool answerable(service *svc, int64_t min_rev)
{
    return service_ready(svc) && (service_stale(svc) || service_revision(svc) >= min_rev);
}

static void first_list(service *svc, void *arg)
{
    struct pending *p = arg;

    if (answerable(svc, p->min_rev))
        list_ready(p);
}

static void pending_timeout(uv_timer_t *t)
{
    struct pending *p = t->data;
    struct conn_state *cs = p->cs;
    const char *why = etcd_client_last_error(cs->a->etcd);

    switch (p->kind) {
    case P_WATCH:
        /* The watch stays: its list comes as an update when etcd answers. */
        list_ready(p);
        return;
    case P_RESOLVE:
        if (service_ready(p->svc)) {
            /* It has a list, only not yet our last write: better that. */
            list_ready(p);
            return;
        }
        send_error(cs, p->id, "unavailable", "no list for %s yet: etcd did not answer (%s)",
                   service_name(p->svc), *why ? why : "no reply");
        break;
    case P_REGISTER: {
        json_t *o = reply_new(p->id, true);
        if (o) {
            json_object_set_new(o, "registered", json_false());
            json_object_set_new(
                o, "message",
                json_pack("s+", "accepted; not yet written to etcd, which did not answer: ",
                          *why ? why : "no reply"));
        }
        send_json(cs, o);
        break;
    }
    default:
        send_error(cs, p->id, "unavailable", "etcd did not answer in time (%s)",
                   *why ? why : "no reply");
        break;
    }
    pending_end(p);
}

static const char *opt_string(json_t *req, const char *name, bool *bad)
{
    json_t *v = json_object_get(req, name);

    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_string(v)) {
        *bad = true;
        return NULL;
    }
    return json_string_value(v);
}

static void op_list(struct conn_state *cs, json_t *req, json_t *id, bool watch)
{
    struct agent *a = cs->a;
    bool bad = false;
    const char *name = opt_string(req, "service", &bad);
    const char *group = opt_string(req, "group", &bad);
    service *svc;
    struct pending *p;
    char why[128], shown[VALIDATE_EXCERPT + 4];
    int err;

    if (bad || !name) {
        send_error(cs, id, "bad_request", "'service' (a string) is required; 'group' is a string");
        return;
    }
    /* The rule a registration obeys: a name that cannot be registered has
     * no key range to watch either. */
    if (!validate_name(name, why, sizeof why)) {
        send_error(cs, id, "bad_name", "bad service name '%s': %s",
                   validate_excerpt(name, shown, sizeof shown), why);
        return;
    }
    svc = cache_get(a->cache, name, &err);
    if (!svc) {
        if (err == DA_EINVAL)
            send_error(cs, id, "bad_name", "bad service name '%s'", name);
        else
            send_error(cs, id, "internal", "%s", da_strerror(err));
        return;
    }
    int64_t min_rev = registry_written_revision(a->registry, name);
    bool now = answerable(svc, min_rev);
    if (now && !watch && resolve_now(cs, id, svc, group))
        return;
    p = pending_new(cs, watch ? P_WATCH : P_RESOLVE, id, now ? 0 : a->cfg->timeout_ms);
    if (!p || (group && !(p->group = strdup(group)))) {
        if (p)
            pending_end(p);
        send_error(cs, id, "internal", "out of memory");
        return;
    }
    p->svc = svc;
    p->min_rev = min_rev;
    if (watch)
        p->watch = ++cs->next_watch;
    if (now) {
        list_ready(p);
        return;
    }
    p->sub = cache_subscribe(svc, first_list, p);
}

static void op_unwatch(struct conn_state *cs, json_t *req, json_t *id)
{
    json_t *v = json_object_get(req, "watch");
    bool bad = false;
    const char *name = opt_string(req, "service", &bad);
    const char *group = opt_string(req, "group", &bad);
    size_t n = 0;

    if (bad || (!json_is_integer(v) && !name)) {
        send_error(cs, id, "bad_request", "give 'watch' (the id from the watch reply) or 'service'");
        return;
    }
    for (struct cwatch **pp = &cs->watches; *pp;) {
        struct cwatch *w = *pp;
        if ((json_is_integer(v) && (json_int_t)w->id == json_integer_value(v)) ||
            (!json_is_integer(v) && !strcmp(service_name(w->svc), name) &&
             (!group || (w->group && !strcmp(w->group, group))))) {
            *pp = w->next;
            cwatch_free(w);
            n++;
        } else {
            pp = &w->next;
        }
    }
    if (!n) {
        send_error(cs, id, "not_found", "no such watch on this connection");
        return;
    }
    maybe_end(cs);
    json_t *o = reply_new(id, true);
    if (o)
        json_object_set_new(o, "removed", json_integer((json_int_t)n));
    send_json(cs, o);
}

/* ---- register and deregister -------------------------------------------- */

static void reg_done(int err, void *arg)
{
    struct pending *p = arg;
    json_t *o = reply_new(p->id, true);

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
                                          etcd_client_last_error(p->cs->a->etcd)));
    }
    send_json(p->cs, o);
    p->in_registry = false; /* the registry is done with p */
    pending_end(p);
}

static bool may_change(struct conn_state *cs, json_t *id, const char *op);

/* The connection's peer process (0 if the kernel did not say), which owns
 * its registrations together with every other connection it opens. */
static pid_t peer_pid(const struct conn_state *cs)
{
    pid_t pid = 0;

    if (server_conn_peer(cs->c, &pid, NULL, NULL) != 0)
        return 0;
    return pid;
}

static void op_register(struct conn_state *cs, json_t *req, json_t *id)
{
    struct agent *a = cs->a;
    struct instance inst;
    char err[256];
    json_t *persist = json_object_get(req, "persist");
    struct pending *p;
    int rc;

    if (!may_change(cs, id, "register"))
        return;
    if (persist && !json_is_boolean(persist)) {
        send_error(cs, id, "bad_request", "'persist' must be true or false");
        return;
    }
    rc = instance_from_api(req, &inst, err, sizeof err);
    if (rc) {
        send_error(cs, id, rc == DA_ENOMEM ? "internal" : "bad_request", "%s", err);
        return;
    }
    struct check_spec spec = {0};
    json_t *chk = json_object_get(req, "check");
    if (chk && (rc = check_from_json(chk, a->cfg->checks_exec, &spec, err, sizeof err))) {
        instance_clear(&inst);
        send_error(cs, id, "bad_request", "%s", err);
        return;
    }
    p = pending_new(cs, P_REGISTER, id, a->cfg->timeout_ms);
    if (!p) {
        instance_clear(&inst);
        check_spec_clear(&spec);
        send_error(cs, id, "internal", "out of memory");
        return;
    }
    p->in_registry = true;
    err[0] = '\0';
    rc = registry_add(a->registry, &inst, json_is_true(persist) ? REG_OWNER_RUNTIME : cs->id,
                      peer_pid(cs), chk ? &spec : NULL, reg_done, p, err, sizeof err);
    instance_clear(&inst);
    check_spec_clear(&spec);
    if (rc) {
        pending_end(p);
        send_error(cs, id,
                   rc == DA_EACCES  ? "conflict"
                   : rc == DA_EINVAL ? "bad_request"
                                     : "unavailable",
                   "%s", *err ? err : da_strerror(rc));
    }
}

static void dereg_done(int err, void *arg)
{
    struct pending *p = arg;

    if (err) {
        send_error(p->cs, p->id, "unavailable", "delete failed: %s (%s)", da_strerror(err),
                   etcd_client_last_error(p->cs->a->etcd));
    } else {
        send_json(p->cs, reply_new(p->id, true));
    }
    p->in_registry = false;
    pending_end(p);
}

static void op_deregister(struct conn_state *cs, json_t *req, json_t *id)
{
    bool bad = false;
    const char *name = opt_string(req, "name", &bad);
    const char *address = opt_string(req, "address", &bad);
    struct pending *p;
    int rc;

    if (bad || !name || !address) {
        send_error(cs, id, "bad_request", "'name' and 'address' (strings) are required");
        return;
    }
    if (!may_change(cs, id, "deregister"))
        return;
    p = pending_new(cs, P_DEREGISTER, id, cs->a->cfg->timeout_ms);
    if (!p) {
        send_error(cs, id, "internal", "out of memory");
        return;
    }
    p->in_registry = true;
    rc = registry_remove(cs->a->registry, name, address, cs->id, peer_pid(cs), dereg_done, p);
    if (rc) {
        pending_end(p);
        if (rc == DA_ENOENT)
            send_error(cs, id, "not_found", "%s %s is not registered by this agent", name,
                       address);
        else if (rc == DA_EACCES)
            send_error(cs, id, "forbidden",
                       "%s %s belongs to the configuration or to another process's "
                       "connection",
                       name,
                       address);
        else
            send_error(cs, id, "internal", "%s", da_strerror(rc));
    }
}

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
    struct agent *a = p->cs->a;
    size_t plen = strlen(a->cfg->prefix) + 1, n = 0;
    struct svc_count *v = NULL;
    json_t *o, *arr, *regs;

    p->call = NULL;
    if (err) {
        send_error(p->cs, p->id, "unavailable", "cannot list services: %s (%s)",
                   da_strerror(err), etcd_client_last_error(a->etcd));
        pending_end(p);
        return;
    }
    v = calloc(r->n_kvs ? r->n_kvs : 1, sizeof *v);
    if (!v) {
        send_error(p->cs, p->id, "internal", "out of memory");
        pending_end(p);
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
    registry_foreach(a->registry, note_reg, regs);
    o = reply_new(p->id, true);
    arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(
            arr, json_pack("{s:s, s:I, s:b, s:b}", "name", v[i].name, "instances",
                           (json_int_t)v[i].n, "watched", 0, "registered",
                           json_object_get(regs, v[i].name) != NULL));
        free(v[i].name);
    }
    free(v);
    json_decref(regs);
    /* "watched": this agent follows the service in its cache. */
    cache_foreach(a->cache, mark_watched, arr);
    if (o) {
        json_object_set_new(o, "revision", json_integer(r->revision));
        json_object_set_new(o, "services", arr);
    } else {
        json_decref(arr);
    }
    send_json(p->cs, o);
    pending_end(p);
}

static void op_services(struct conn_state *cs, json_t *id)
{
    struct agent *a = cs->a;
    char key[1024], end[1024];
    size_t klen = (size_t)snprintf(key, sizeof key, "%s/", a->cfg->prefix), elen;
    struct pending *p = pending_new(cs, P_SERVICES, id, 0);
    int rc;

    if (!p) {
        send_error(cs, id, "internal", "out of memory");
        return;
    }
    elen = etcd_prefix_end(key, klen, end);
    rc = etcd_range(a->etcd, key, klen, end, elen, ETCD_RANGE_KEYS_ONLY, 0, services_done, p,
                    &p->call);
    if (rc) {
        pending_end(p);
        send_error(cs, id, "internal", "%s", da_strerror(rc));
    }
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

static void status_svc(service *svc, void *arg)
{
    size_t n;

    service_instances(svc, &n);
    json_array_append_new(
        arg, json_pack("{s:s, s:I, s:b, s:b, s:I, s:I, s:I}", "service", service_name(svc),
                       "revision", (json_int_t)service_revision(svc), "stale", service_stale(svc),
                       "ready", service_ready(svc), "instances", (json_int_t)n, "skipped",
                       (json_int_t)service_skipped(svc), "watchers",
                       (json_int_t)service_subscribers(svc)));
}

static void hex(char *buf, size_t len, uint64_t v)
{
    snprintf(buf, len, "%016" PRIx64, v);
}

static void status_done(int err, const struct etcd_result *r, void *arg)
{
    struct pending *p = arg;
    struct agent *a = p->cs->a;
    json_t *o = reply_new(p->id, true), *etcd, *lease, *regs, *svcs, *eps;
    char buf[32];
    bool any_stale = false;

    p->call = NULL;
    if (!o) {
        pending_end(p);
        return;
    }
    json_object_set_new(o, "version", json_string(AGENT_VERSION));
    json_object_set_new(o, "pid", json_integer(getpid()));
    json_object_set_new(o, "uptime_ms", json_integer((json_int_t)(uv_now(a->loop) - a->started)));
    json_object_set_new(o, "config", json_string(a->cfg->path));
    json_object_set_new(o, "prefix", json_string(a->cfg->prefix));

    etcd = json_object();
    eps = json_array();
    for (size_t i = 0; i < a->cfg->n_endpoints; i++)
        json_array_append_new(eps, json_string(a->cfg->endpoints[i]));
    json_object_set_new(etcd, "endpoint", json_string(etcd_client_endpoint(a->etcd)));
    json_object_set_new(etcd, "endpoints", eps);
    json_object_set_new(etcd, "connected", json_boolean(!err && etcd_client_connected(a->etcd)));
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
    json_object_set_new(etcd, "last_error", json_string(etcd_client_last_error(a->etcd)));
    json_object_set_new(etcd, "requests", json_integer((json_int_t)etcd_client_requests(a->etcd)));
    json_object_set_new(o, "etcd", etcd);

    lease = json_object();
    if (session_lease(a->session)) {
        hex(buf, sizeof buf, (uint64_t)session_lease(a->session));
        json_object_set_new(lease, "id", json_string(buf));
    } else {
        json_object_set_new(lease, "id", json_null());
    }
    json_object_set_new(lease, "ttl_s", json_integer(session_ttl(a->session)));
    json_object_set_new(lease, "remaining_ms", json_integer(session_remaining_ms(a->session)));
    json_object_set_new(lease, "since_keepalive_ms",
                        json_integer(session_since_keepalive(a->session)));
    json_object_set_new(lease, "grants", json_integer((json_int_t)session_grants(a->session)));
    json_object_set_new(o, "lease", lease);

    regs = json_array();
    struct checks_ctx x = {regs, uv_now(a->loop)};
    registry_foreach(a->registry, status_reg, &x);
    json_object_set_new(o, "registrations", regs);
    const char *reason;
    bool maint = registry_in_maint(a->registry, &reason);
    json_object_set_new(o, "maint", json_pack("{s:b, s:s}", "on", maint, "reason", reason));
    svcs = json_array();
    cache_foreach(a->cache, status_svc, svcs);
    size_t k;
    json_t *e;
    json_array_foreach(svcs, k, e) {
        if (json_is_true(json_object_get(e, "stale")))
            any_stale = true;
    }
    json_object_set_new(o, "services", svcs);
    json_object_set_new(o, "clients", json_integer((json_int_t)server_clients(a->server)));
    json_object_set_new(o, "skipped", json_integer((json_int_t)cache_skipped_total(a->cache)));
    json_object_set_new(o, "renders", json_integer((json_int_t)a->renders));
    json_object_set_new(o, "stale", json_boolean(any_stale));
    json_object_set_new(o, "xds", xds_status(a->xds));
    json_object_set_new(o, "dns", dns_status(a->dns));
    send_json(p->cs, o);
    pending_end(p);
}

static void op_status(struct conn_state *cs, json_t *id)
{
    struct pending *p = pending_new(cs, P_STATUS, id, 0);
    int rc;

    if (!p) {
        send_error(cs, id, "internal", "out of memory");
        return;
    }
    /* With etcd known to be unreachable, answer now rather than after a
     * timeout per endpoint: status is what an operator runs at 3 a.m. */
    if (!etcd_client_connected(cs->a->etcd)) {
        status_done(DA_EUNAVAIL, NULL, p);
        return;
    }
    rc = etcd_member_status(cs->a->etcd, status_done, p, &p->call);
    if (rc)
        status_done(rc, NULL, p);
}

/* ---- health checks, drain, maintenance ---------------------------------- */

static int json_duration(json_t *o, const char *name, uint64_t *ms, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, name);

    if (!v)
        return 0;
    if (!json_is_string(v) || duration_parse(json_string_value(v), ms) < 0) {
        snprintf(err, errlen, "check.%s must be a duration such as \"500ms\" or \"10s\"", name);
        return DA_EINVAL;
    }
    return 0;
}

/* {"type","interval","timeout","rise","fall","service","url","command","ttl"},
 * as a service's check: in the configuration. */
static int check_from_json(json_t *o, bool exec_enabled, struct check_spec *spec, char *err,
                           size_t errlen)
{
    json_t *v;
    int rc;

    memset(spec, 0, sizeof *spec);
    if (!json_is_object(o) || !json_is_string(json_object_get(o, "type")) ||
        check_type_parse(json_string_value(json_object_get(o, "type")), &spec->type) < 0 ||
        spec->type == CHECK_NONE) {
        snprintf(err, errlen, "check must be an object with \"type\": grpc, tcp, http, exec or ttl");
        return DA_EINVAL;
    }
    if ((rc = json_duration(o, "interval", &spec->interval_ms, err, errlen)) ||
        (rc = json_duration(o, "timeout", &spec->timeout_ms, err, errlen)) ||
        (rc = json_duration(o, "ttl", &spec->ttl_ms, err, errlen)))
        goto fail;
    static const char *const counts[] = {"rise", "fall"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(o, counts[i]);
        if (!v)
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 100) {
            snprintf(err, errlen, "check.%s must be an integer from 1 to 100", counts[i]);
            rc = DA_EINVAL;
            goto fail;
        }
        *(i ? &spec->fall : &spec->rise) = (int)json_integer_value(v);
    }
    static const char *const strs[] = {"service", "url"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(o, strs[i]);
        if (!v)
            continue;
        char **dst = i ? &spec->http_url : &spec->grpc_service;
        if (!json_is_string(v) || !(*dst = strdup(json_string_value(v)))) {
            snprintf(err, errlen, "check.%s must be a string", strs[i]);
            rc = DA_EINVAL;
            goto fail;
        }
    }
    v = json_object_get(o, "command");
    if (v) {
        size_t n = json_is_array(v) ? json_array_size(v) : 0;
        if (!n || n > 64 || !(spec->exec_argv = calloc(n + 1, sizeof *spec->exec_argv))) {
            snprintf(err, errlen, "check.command must be a list of strings, the program first");
            rc = DA_EINVAL;
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *a = json_array_get(v, i);
            if (!json_is_string(a) || !(spec->exec_argv[i] = strdup(json_string_value(a)))) {
                snprintf(err, errlen, "check.command must be a list of strings");
                rc = DA_EINVAL;
                goto fail;
            }
        }
    }
    if ((rc = check_spec_normalize(spec, exec_enabled, err, errlen)))
        goto fail;
    return 0;
fail:
    check_spec_clear(spec);
    return rc;
}

/* Whether this connection's peer may change registrations: everyone,
 * unless socket.register_users/groups say who (SO_PEERCRED's uid and gid,
 * and the user's other groups). Decided once per connection. */
static bool may_change(struct conn_state *cs, json_t *id, const char *op)
{
    const struct config *cfg = cs->a->cfg;
    pid_t pid;
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    bool have_peer;

    if (!cfg->register_limited)
        return true;
    /* Read every time, not only when the verdict is made: the refusal
     * names the peer, and a cached verdict must not name an unset uid. */
    have_peer = server_conn_peer(cs->c, &pid, &uid, &gid) == 0;
    if (cs->may_change == 0) {
        cs->may_change = -1;
        if (have_peer) {
            for (size_t i = 0; i < cfg->n_register_uids; i++)
                if (cfg->register_uids[i] == (unsigned)uid)
                    cs->may_change = 1;
            gid_t groups[256];
            int ng = 1;
            groups[0] = gid;
            struct passwd pw, *pp = NULL;
            char buf[4096];
            if (getpwuid_r(uid, &pw, buf, sizeof buf, &pp) == 0 && pp) {
                ng = (int)(sizeof groups / sizeof groups[0]);
                if (getgrouplist(pp->pw_name, gid, groups, &ng) < 0)
                    ng = 1;
            }
            for (int k = 0; k < ng && cs->may_change < 0; k++)
                for (size_t i = 0; i < cfg->n_register_gids; i++)
                    if (cfg->register_gids[i] == (unsigned)groups[k])
                        cs->may_change = 1;
        }
    }
    if (cs->may_change > 0)
        return true;
    if (have_peer)
        send_error(cs, id, "forbidden",
                   "uid %ld may not %s: socket.register_users and register_groups in the "
                   "agent's configuration say who may; this connection may only read",
                   (long)uid, op);
    else
        send_error(cs, id, "forbidden",
                   "a peer whose credentials the kernel did not give may not %s: "
                   "socket.register_users and register_groups in the agent's configuration "
                   "say who may; this connection may only read",
                   op);
    return false;
}

static bool name_address(struct conn_state *cs, json_t *req, json_t *id, const char **name,
                         const char **address)
{
    bool bad = false;

    *name = opt_string(req, "name", &bad);
    *address = opt_string(req, "address", &bad);
    if (bad || !*name || !*address) {
        send_error(cs, id, "bad_request", "'name' and 'address' (strings) are required");
        return false;
    }
    return true;
}

static void op_check_report(struct conn_state *cs, json_t *req, json_t *id)
{
    const char *name, *address;
    bool bad = false;
    const char *status = opt_string(req, "status", &bad);
    const char *output = opt_string(req, "output", &bad);
    int rc;

    if (!name_address(cs, req, id, &name, &address) || !may_change(cs, id, "report checks"))
        return;
    if (bad || !status || (strcmp(status, "pass") && strcmp(status, "fail"))) {
        send_error(cs, id, "bad_request", "'status' must be \"pass\" or \"fail\"");
        return;
    }
    rc = registry_check_report(cs->a->registry, name, address, !strcmp(status, "pass"), output);
    if (rc == DA_ENOENT)
        send_error(cs, id, "not_found", "%s %s is not registered by this agent", name, address);
    else if (rc)
        send_error(cs, id, "bad_request", "%s %s has no ttl check to report to", name, address);
    else
        send_json(cs, reply_new(id, true));
}

static void op_drain(struct conn_state *cs, json_t *req, json_t *id, bool on)
{
    const char *name, *address;

    if (!name_address(cs, req, id, &name, &address) ||
        !may_change(cs, id, on ? "drain" : "undrain"))
        return;
    if (registry_drain(cs->a->registry, name, address, on))
        send_error(cs, id, "not_found", "%s %s is not registered by this agent", name, address);
    else
        send_json(cs, reply_new(id, true));
}

static void op_maint(struct conn_state *cs, json_t *req, json_t *id)
{
    json_t *on = json_object_get(req, "on");
    bool bad = false;
    const char *reason = opt_string(req, "reason", &bad);

    if (bad || !json_is_boolean(on)) {
        send_error(cs, id, "bad_request", "'on' (true or false) is required; 'reason' is a string");
        return;
    }
    if (!may_change(cs, id, "switch maintenance"))
        return;
    registry_maint(cs->a->registry, json_is_true(on), reason);
    send_json(cs, reply_new(id, true));
}

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
                  check_type_name(checker_spec(ri->check)->type), "healthy", st.healthy,
                  "passes", st.passes, "failures", st.failures, "output", st.output,
                  "changed_ms_ago", st.changed_at_ms ? (json_int_t)(now - st.changed_at_ms) : -1,
                  "last_run_ms_ago", st.last_run_ms ? (json_int_t)(now - st.last_run_ms) : -1));
}

static void checks_reg(const struct reg_info *ri, void *arg)
{
    struct checks_ctx *x = arg;
    json_t *o = json_pack("{s:s, s:s}", "name", ri->inst->name, "address", ri->inst->address);

    if (!o)
        return;
    add_health(o, ri, x->now);
    json_array_append_new(x->arr, o);
}

static void op_checks(struct conn_state *cs, json_t *id)
{
    struct checks_ctx x = {json_array(), uv_now(cs->a->loop)};
    json_t *o = reply_new(id, true);
    const char *reason;
    bool maint = registry_in_maint(cs->a->registry, &reason);

    registry_foreach(cs->a->registry, checks_reg, &x);
    if (o) {
        json_object_set_new(o, "maint", json_pack("{s:b, s:s}", "on", maint, "reason", reason));
        json_object_set_new(o, "instances", x.arr);
    } else {
        json_decref(x.arr);
    }
    send_json(cs, o);
}

/* ---- xDS ---------------------------------------------------------------- */

/* The resources the xDS server sends for a service (xds.h). */
static void xds_ready(json_t *res, void *arg)
{
    struct pending *p = arg;
    json_t *o = reply_new(p->id, true);

    p->xq = NULL; /* the query is over: nothing to cancel */
    if (o && res)
        json_object_update(o, res);
    json_decref(res);
    send_json(p->cs, o);
    pending_end(p);
}

static void op_xds(struct conn_state *cs, json_t *req, json_t *id)
{
    bool bad = false;
    const char *name = opt_string(req, "service", &bad);
    json_t *now = NULL;
    struct pending *p;
    char why[128], shown[VALIDATE_EXCERPT + 4];
    int rc;

    if (bad || !name) {
        send_error(cs, id, "bad_request", "'service' (a string) is required");
        return;
    }
    if (!validate_name(name, why, sizeof why)) {
        send_error(cs, id, "bad_name", "bad service name '%s': %s",
                   validate_excerpt(name, shown, sizeof shown), why);
        return;
    }
    p = pending_new(cs, P_XDS, id, cs->a->cfg->timeout_ms);
    if (!p) {
        send_error(cs, id, "internal", "out of memory");
        return;
    }
    rc = xds_describe(cs->a->xds, name, &now, xds_ready, p, &p->xq);
    if (rc) {
        pending_end(p);
        if (rc == DA_EINVAL)
            send_error(cs, id, "bad_name", "bad service name '%s'",
                       validate_excerpt(name, shown, sizeof shown));
        else
            send_error(cs, id, "internal", "%s", da_strerror(rc));
        return;
    }
    if (now)
        xds_ready(now, p);
}

/* The bootstrap JSON gRPC clients need (GRPC_XDS_BOOTSTRAP). */
static void op_xds_bootstrap(struct conn_state *cs, json_t *id)
{
    json_t *b = xds_bootstrap(cs->a->xds), *o;

    if (!b) {
        send_error(cs, id, "disabled", "the xDS server is disabled (xds.enabled: false)");
        return;
    }
    o = reply_new(id, true);
    if (o) {
        json_object_set_new(o, "bootstrap", b);
        json_object_set_new(o, "file", json_string(xds_bootstrap_path(cs->a->xds)));
    } else {
        json_decref(b);
    }
    send_json(cs, o);
}

/* ---- dispatch ----------------------------------------------------------- */

static struct conn_state *state_of(struct agent *a, server_conn *c)
{
    struct conn_state *cs = server_conn_data(c);

    if (cs)
        return cs;
    cs = calloc(1, sizeof *cs);
    if (!cs)
        return NULL;
    cs->a = a;
    cs->c = c;
    cs->id = server_conn_id(c);
    server_conn_set_data(c, cs);
    return cs;
}

/* ---- the common request, parsed by hand -------------------------------------
 *
 * {"op":"resolve","id":7,"service":"echo"} is most of what the socket
 * carries, and jansson's parser costs about 10,000 instructions for it
 * (callgrind): more than everything else a resolve does, syscalls aside.
 * This reads exactly that shape (members in any order, "id" a string or an
 * integer, an optional "group" string), ASCII without escapes, and answers
 * when the list is there. Anything else (another op or member, escapes,
 * non-ASCII, null, a duplicate, a list still to wait for) returns false
 * and takes the general path, which gives the same answer or the precise
 * error. */
struct fast_str {
    const char *p;
    size_t n;
};

static const char *fast_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* A string without escapes, control or non-ASCII bytes; p at its quote. */
static const char *fast_string(const char *p, const char *end, struct fast_str *out)
{
    const char *q;

    if (p >= end || *p != '"')
        return NULL;
    for (q = ++p; q < end && *q != '"'; q++)
        if (*q == '\\' || (unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e)
            return NULL;
    if (q >= end)
        return NULL;
    out->p = p;
    out->n = (size_t)(q - p);
    return q + 1;
}

static bool fast_is(const struct fast_str *v, const char *lit)
{
    size_t n = strlen(lit);
    return v->n == n && !memcmp(v->p, lit, n);
}

static bool fast_resolve(struct conn_state *cs, const char *line, size_t len)
{
    const char *p = line, *end = line + len;
    struct fast_str key, op = {0}, svc = {0}, grp = {0}, id = {0};
    bool have_op = false, have_svc = false, have_grp = false, have_id = false;
    char name[256], group[256];
    const struct render *r;
    service *sv;
    int err;

    p = fast_ws(p, end);
    if (p >= end || *p++ != '{')
        return false;
    for (;;) {
        p = fast_ws(p, end);
        if (!(p = fast_string(p, end, &key)))
            return false;
        p = fast_ws(p, end);
        if (p >= end || *p++ != ':')
            return false;
        p = fast_ws(p, end);
        if (fast_is(&key, "id")) {
            const char *q = p;
            if (have_id)
                return false;
            have_id = true;
            if (p < end && *p == '"') {
                /* Quotes included: the id's JSON text, as it came. */
                if (!(p = fast_string(p, end, &id)))
                    return false;
            } else {
                if (p < end && *p == '-')
                    p++;
                if (p >= end || *p < '0' || *p > '9' ||
                    (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9'))
                    return false;
                while (p < end && *p >= '0' && *p <= '9')
                    p++;
                /* Past 18 digits it may not fit int64, and jansson writes
                 * -0 as 0: jansson decides those. */
                if (p - q > 18 || (p - q == 2 && q[0] == '-' && q[1] == '0'))
                    return false;
            }
            id.p = q;
            id.n = (size_t)(p - q);
        } else {
            struct fast_str *v;
            bool *have;
            if (fast_is(&key, "op"))
                v = &op, have = &have_op;
            else if (fast_is(&key, "service"))
                v = &svc, have = &have_svc;
            else if (fast_is(&key, "group"))
                v = &grp, have = &have_grp;
            else
                return false;
            if (*have || !(p = fast_string(p, end, v)))
                return false;
            *have = true;
        }
        p = fast_ws(p, end);
        if (p >= end)
            return false;
        if (*p == '}')
            break;
        if (*p++ != ',')
            return false;
    }
    if (fast_ws(p + 1, end) != end || !have_op || !fast_is(&op, "resolve") || !have_svc ||
        svc.n >= sizeof name || grp.n >= sizeof group)
        return false;
    memcpy(name, svc.p, svc.n);
    name[svc.n] = '\0';
    if (have_grp)
        memcpy(group, grp.p, grp.n);
    group[grp.n] = '\0';
    sv = cache_get(cs->a->cache, name, &err);
    if (!sv || !answerable(sv, registry_written_revision(cs->a->registry, name)) ||
        !(r = render(cs->a, sv, have_grp ? group : NULL)))
        return false;
    send_rendered(cs, r, have_id ? id.p : NULL, have_id ? id.n : 0);
    return true;
}

void proto_on_line(server *s, server_conn *c, char *line, size_t len, void *arg)
{
    struct agent *a = arg;
    struct conn_state *cs = state_of(a, c);
    json_error_t jerr;
    json_t *req, *id, *op;
    const char *name;

    (void)s;
    if (!cs) {
        server_conn_close(c);
        return;
    }
    if (cs->dead)
        return;
    if (fast_resolve(cs, line, len))
        return;
    /* Depth is bounded by jansson itself (2048 levels); duplicates are
     * refused so that a request means one thing. */
    req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req) {
        send_error(cs, NULL, "bad_json", "not JSON: %s at column %d", jerr.text, jerr.column);
        return;
    }
    if (!json_is_object(req)) {
        send_error(cs, NULL, "bad_request", "a request is a JSON object with an \"op\"");
        json_decref(req);
        return;
    }
    id = json_object_get(req, "id");
    if (id && !json_is_string(id) && !json_is_integer(id)) {
        send_error(cs, NULL, "bad_request", "'id' must be a string or an integer");
        json_decref(req);
        return;
    }
    op = json_object_get(req, "op");
    name = json_is_string(op) ? json_string_value(op) : NULL;
    if (!name)
        send_error(cs, id, "bad_request", "'op' (a string) is required");
    else if (!strcmp(name, "resolve"))
        op_list(cs, req, id, false);
    else if (!strcmp(name, "watch"))
        op_list(cs, req, id, true);
    else if (!strcmp(name, "unwatch"))
        op_unwatch(cs, req, id);
    else if (!strcmp(name, "register"))
        op_register(cs, req, id);
    else if (!strcmp(name, "deregister"))
        op_deregister(cs, req, id);
    else if (!strcmp(name, "status"))
        op_status(cs, id);
    else if (!strcmp(name, "services"))
        op_services(cs, id);
    else if (!strcmp(name, "ping"))
        send_json(cs, reply_new(id, true));
    else if (!strcmp(name, "check"))
        op_check_report(cs, req, id);
    else if (!strcmp(name, "drain"))
        op_drain(cs, req, id, true);
    else if (!strcmp(name, "undrain"))
        op_drain(cs, req, id, false);
    else if (!strcmp(name, "maint"))
        op_maint(cs, req, id);
    else if (!strcmp(name, "checks"))
        op_checks(cs, id);
    else if (!strcmp(name, "xds"))
        op_xds(cs, req, id);
    else if (!strcmp(name, "xds_bootstrap"))
        op_xds_bootstrap(cs, id);
    else
        send_error(cs, id, "unknown_op",
                   "unknown op '%.64s': use resolve, watch, unwatch, register, deregister, "
                   "status, services, ping, check, checks, drain, undrain, maint, xds, "
                   "xds_bootstrap",
                   name);
    json_decref(req);
}

void proto_on_eof(server *s, server_conn *c, void *arg)
{
    struct conn_state *cs = server_conn_data(c);

    (void)s;
    (void)arg;
    if (!cs) {
        server_conn_end(c);
        return;
    }
    cs->eof = true;
    maybe_end(cs);
}

void proto_on_close(server *s, server_conn *c, void *arg)
{
    struct agent *a = arg;
    struct conn_state *cs = server_conn_data(c);

    (void)s;
    if (!cs)
        return;
    cs->eof = false;
    while (cs->pending)
        pending_end(cs->pending);
    while (cs->watches) {
        struct cwatch *w = cs->watches;
        cs->watches = w->next;
        cwatch_free(w);
    }
    /* Registrations made by this connection leave with it. */
    cs->eof = false; /* nothing to end any more */
    registry_remove_owner(a->registry, cs->id);
    free(cs);
}
