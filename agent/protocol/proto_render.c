/* Rendering lists for clients: one change of a service is rendered once
 * per group and reused for every watcher of that group and every resolve,
 * and what a watcher last saw is kept as a shared hash (struct seen). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "protocol_internal.h"

/* {"service","revision","stale","instances":[...]} filtered by group,
 * added to o. Instances are sorted by address (the cache keeps them so). */
void proto__add_list(json_t *o, service *svc, const char *group)
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

struct seen *proto__seen_ref(struct seen *v)
{
    if (v)
        v->refs++;
    return v;
}

void proto__seen_unref(struct seen *v)
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
        uint64_t h1 = HASH_FNV1A_BASIS, h2 = 0x9e3779b97f4a7c15ull;
        const unsigned char *p = (const unsigned char *)text;
        for (; *p; p++) {
            h1 = hash_fnv1a_step(h1, *p);
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

bool proto__seen_same(const struct seen *a, const struct seen *b)
{
    return a == b || (a->len == b->len && a->h1 == b->h1 && a->h2 == b->h2);
}

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
    proto__seen_unref(r->seen);
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
    proto__add_list(o, svc, group);
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
const struct render *proto__render(proto *pr, service *svc, const char *group)
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
    pr->renders++;
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

/* Answers a resolve with a list proto__render() made: {"id":ID,"ok":true, then the
 * rendered list without its opening brace. id_text is the id as JSON text
 * (id_len bytes), or NULL for a request without one. */
void proto__send_rendered(struct conn_state *cs, const struct render *r, const char *id_text,
                          size_t id_len)
{
    size_t llen = strlen(r->list), hlen;
    char stack[4096], *buf = stack, *p;

    if (cs->dead)
        return;
    if (id_len + llen + 32 > sizeof stack && !(buf = malloc(id_len + llen + 32))) {
        proto__send_error(cs, NULL, "internal", "out of memory");
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
