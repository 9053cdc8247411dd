/* The list operations: resolve, watch and unwatch, and the hand-parsed
 * fast path for the commonest request, a resolve whose list is there. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "metrics.h"
#include "protocol_internal.h"
#include "validate.h"

struct cwatch {
    struct conn_state *cs;
    uint64_t id;
    service *svc;
    char *group;
    cache_sub *sub;
    struct seen *last; /* the list last sent, to skip updates that change nothing */
    struct cwatch *next;
};

/* ---- watches ------------------------------------------------------------ */

static void watch_update(service *svc, void *arg)
{
    struct cwatch *w = arg;
    const struct render *r;
    char head[64];
    size_t hlen, llen;
    char *line;

    if (w->cs->dead || !(r = proto__render(w->cs->p, svc, w->group)))
        return;
    if (w->last && proto__seen_same(w->last, r->seen))
        return; /* nothing this watcher sees has changed */
    proto__seen_unref(w->last);
    w->last = proto__seen_ref(r->seen);
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
    else
        metrics.socket_updates++;
    free(line);
}

static void cwatch_free(struct cwatch *w)
{
    cache_unsubscribe(w->sub);
    proto__seen_unref(w->last);
    free(w->group);
    free(w);
}

/* Ends every watch of a closing connection. */
void proto__watches_free(struct conn_state *cs)
{
    while (cs->watches) {
        struct cwatch *w = cs->watches;
        cs->watches = w->next;
        cwatch_free(w);
    }
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
        proto__send_error(cs, p->id, "internal", "out of memory");
        return;
    }
    w->cs = cs;
    w->id = p->watch;
    w->svc = p->svc;
    w->sub = cache_subscribe(p->svc, watch_update, w);
    if (!w->sub) {
        cwatch_free(w);
        proto__send_error(cs, p->id, "internal", "out of memory");
        return;
    }
    w->next = cs->watches;
    cs->watches = w;
    r = proto__render(cs->p, p->svc, w->group);
    w->last = r ? proto__seen_ref(r->seen) : NULL;
    o = proto__reply_new(p->id, true);
    if (o) {
        json_object_set_new(o, "watch", json_integer((json_int_t)w->id));
        proto__add_list(o, p->svc, p->group);
    }
    proto__send_json(cs, o);
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

/* A resolve whose list is there: no pending request, no timer, no JSON
 * built; false if it must take the general path (out of memory, or an id
 * that is a string too long for the stack). */
static bool resolve_now(struct conn_state *cs, json_t *id, service *svc, const char *group)
{
    const struct render *r = proto__render(cs->p, svc, group);
    char num[24], *ids = NULL;
    bool done = false;

    if (!r)
        return false;
    if (!id) {
        proto__send_rendered(cs, r, NULL, 0);
        done = true;
    } else if (json_is_integer(id)) {
        proto__send_rendered(cs, r, num, (size_t)(put_i64(num, json_integer_value(id)) - num));
        done = true;
    } else if ((ids = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT)) != NULL) {
        proto__send_rendered(cs, r, ids, strlen(ids));
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
        json_t *o = proto__reply_new(p->id, true);
        if (o)
            proto__add_list(o, p->svc, p->group);
        proto__send_json(p->cs, o);
    }
    proto__pending_end(p);
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

/* etcd did not answer in time. */
static void list_timeout(struct pending *p)
{
    const char *why;

    /* A watch stays: its list comes as an update when etcd answers. A
     * resolve whose service has a list, only not yet our last write, is
     * better answered with that. */
    if (p->kind == P_WATCH || service_ready(p->svc)) {
        list_ready(p);
        return;
    }
    why = etcd_client_last_error(p->cs->p->d.etcd);
    proto__send_error(p->cs, p->id, "unavailable", "no list for %s yet: etcd did not answer (%s)",
                      service_name(p->svc), *why ? why : "no reply");
    proto__pending_end(p);
}

static void list(struct conn_state *cs, json_t *req, json_t *id, bool watch)
{
    const struct proto_deps *d = &cs->p->d;
    bool bad = false;
    const char *name = proto__opt_string(req, "service", &bad);
    const char *group = proto__opt_string(req, "group", &bad);
    service *svc;
    struct pending *p;
    char why[128], shown[VALIDATE_EXCERPT + 4];
    int err;

    if (bad || !name) {
        proto__send_error(cs, id, "bad_request",
                          "'service' (a string) is required; 'group' is a string");
        return;
    }
    /* The rule a registration obeys: a name that cannot be registered has
     * no key range to watch either. */
    if (!validate_name(name, why, sizeof why)) {
        proto__send_error(cs, id, "bad_name", "bad service name '%s': %s",
                          validate_excerpt(name, shown, sizeof shown), why);
        return;
    }
    svc = cache_get(d->cache, name, &err);
    if (!svc) {
        if (err == DA_EINVAL)
            proto__send_error(cs, id, "bad_name", "bad service name '%s'", name);
        else
            proto__send_error(cs, id, "internal", "%s", da_strerror(err));
        return;
    }
    int64_t min_rev = registry_written_revision(d->registry, name);
    bool now = answerable(svc, min_rev);
    if (now && !watch && resolve_now(cs, id, svc, group))
        return;
    p = proto__pending_new(cs, watch ? P_WATCH : P_RESOLVE, id, now ? 0 : d->timeout_ms);
    if (!p || (group && !(p->group = strdup(group)))) {
        if (p)
            proto__pending_end(p);
        proto__send_error(cs, id, "internal", "out of memory");
        return;
    }
    p->svc = svc;
    p->min_rev = min_rev;
    p->on_timeout = list_timeout;
    if (watch)
        p->watch = ++cs->next_watch;
    if (now) {
        list_ready(p);
        return;
    }
    p->sub = cache_subscribe(svc, first_list, p);
}

void proto__op_resolve(struct conn_state *cs, json_t *req, json_t *id)
{
    metrics.socket_resolves++;
    list(cs, req, id, false);
}

void proto__op_watch(struct conn_state *cs, json_t *req, json_t *id)
{
    metrics.socket_watches++;
    list(cs, req, id, true);
}

void proto__op_unwatch(struct conn_state *cs, json_t *req, json_t *id)
{
    json_t *v = json_object_get(req, "watch");
    bool bad = false;
    const char *name = proto__opt_string(req, "service", &bad);
    const char *group = proto__opt_string(req, "group", &bad);
    size_t n = 0;

    if (bad || (!json_is_integer(v) && !name)) {
        proto__send_error(cs, id, "bad_request",
                          "give 'watch' (the id from the watch reply) or 'service'");
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
        proto__send_error(cs, id, "not_found", "no such watch on this connection");
        return;
    }
    proto__maybe_end(cs);
    json_t *o = proto__reply_new(id, true);
    if (o)
        json_object_set_new(o, "removed", json_integer((json_int_t)n));
    proto__send_json(cs, o);
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

bool proto__fast_resolve(struct conn_state *cs, const char *line, size_t len)
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
    sv = cache_get(cs->p->d.cache, name, &err);
    if (!sv || !answerable(sv, registry_written_revision(cs->p->d.registry, name)) ||
        !(r = proto__render(cs->p, sv, have_grp ? group : NULL)))
        return false;
    metrics.socket_resolves++;
    proto__send_rendered(cs, r, have_id ? id.p : NULL, have_id ? id.n : 0);
    return true;
}
