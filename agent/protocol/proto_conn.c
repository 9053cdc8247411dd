/* The protocol's connections: their state, what they are sent (replies,
 * errors) and the requests they wait on. When a connection goes, all of
 * that is cancelled at once, so no callback can reach a connection that
 * is gone. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol_internal.h"

/* ---- output ------------------------------------------------------------- */

void proto__send_json(struct conn_state *cs, json_t *o)
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

json_t *proto__reply_new(json_t *id, bool ok)
{
    json_t *o = json_object();

    if (!o)
        return NULL;
    if (id)
        json_object_set(o, "id", id);
    json_object_set_new(o, "ok", json_boolean(ok));
    return o;
}

void proto__send_error(struct conn_state *cs, json_t *id, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    json_t *o = proto__reply_new(id, false);

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (o)
        json_object_set_new(o, "error", json_pack("{s:s, s:s}", "code", code, "message", msg));
    proto__send_json(cs, o);
}

const char *proto__opt_string(json_t *req, const char *name, bool *bad)
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

/* ---- pending requests --------------------------------------------------- */

static void pending_closed(uv_handle_t *h)
{
    struct pending *p = h->data;

    json_decref(p->id);
    free(p->group);
    free(p);
}

/* Takes p off its connection and cancels whatever it waits for. */
void proto__pending_end(struct pending *p)
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
        registry_forget(cs->p->d.registry, p);
    uv_close((uv_handle_t *)&p->timer, pending_closed);
    proto__maybe_end(cs);
}

/* A half-closed connection ends once nothing is owed to it any more. */
void proto__maybe_end(struct conn_state *cs)
{
    if (cs->eof && !cs->pending && !cs->watches)
        server_conn_end(cs->c);
}

/* etcd did not answer in time: the request's own answer to that, or this
 * general one. */
static void pending_timeout(uv_timer_t *t)
{
    struct pending *p = t->data;
    const char *why;

    if (p->on_timeout) {
        p->on_timeout(p);
        return;
    }
    why = etcd_client_last_error(p->cs->p->d.etcd);
    proto__send_error(p->cs, p->id, "unavailable", "etcd did not answer in time (%s)",
                      *why ? why : "no reply");
    proto__pending_end(p);
}

struct pending *proto__pending_new(struct conn_state *cs, enum pending_kind kind, json_t *id,
                                   uint64_t timeout_ms)
{
    struct pending *p = calloc(1, sizeof *p);

    if (!p)
        return NULL;
    p->cs = cs;
    p->kind = kind;
    p->id = id ? json_incref(id) : NULL;
    uv_timer_init(cs->p->d.loop, &p->timer);
    p->timer.data = p;
    if (timeout_ms)
        uv_timer_start(&p->timer, pending_timeout, timeout_ms, 0);
    p->next = cs->pending;
    cs->pending = p;
    return p;
}
