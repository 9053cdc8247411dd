/* What the files of the socket protocol share: protocol.c (the op table,
 * dispatch and the server's callbacks), proto_conn.c (connection state,
 * replies, pending requests), proto_render.c (rendered lists),
 * proto_list.c (resolve, watch, unwatch), proto_write.c (the ops that
 * change registrations), proto_status.c (status, checks) and
 * proto_services.c (services, xds, xds_bootstrap). Nothing outside
 * agent/protocol/ includes this. */
#ifndef DA_PROTOCOL_INTERNAL_H
#define DA_PROTOCOL_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "protocol.h"

/* What the protocol has beside its dependencies. */
struct proto {
    struct proto_deps d;
    uint64_t renders; /* lists rendered for clients, for status */
};

struct cwatch; /* a watch of a connection (proto_list.c) */

/* A connection's state, made at its first line. It holds its watches and
 * the requests still waiting for something (a first list, an etcd answer,
 * a write); when the connection goes, all of that is cancelled at once. */
struct conn_state {
    proto *p;
    server *s; /* the server c belongs to, for status's client count */
    server_conn *c;
    uint64_t id;
    bool dead;      /* a send failed: on_close is coming */
    bool eof;       /* the peer half-closed: end once everything is answered */
    int may_change; /* 0 not yet known, 1 yes, -1 no (peer credentials) */
    uint64_t next_watch;
    struct cwatch *watches;
    struct pending *pending;
};

enum pending_kind { P_RESOLVE, P_WATCH, P_REGISTER, P_DEREGISTER, P_SERVICES, P_STATUS, P_XDS };

/* A request waiting for something. */
struct pending {
    struct conn_state *cs;
    enum pending_kind kind;
    json_t *id;
    service *svc;
    char *group;
    bool prefer_zone; /* P_RESOLVE/P_WATCH: the policy's choice (policy.h) */
    cache_sub *sub;
    etcd_call *call;
    uint64_t watch;   /* P_WATCH: the watch id to create */
    int64_t min_rev;  /* P_RESOLVE/P_WATCH: our own last write to show */
    bool in_registry; /* registry_forget() needed at the end */
    xds_query *xq;    /* P_XDS: waiting for the service's first list */
    /* Runs when the timer given to proto__pending_new() fires, and must
     * end p; NULL: an "unavailable" error, then the end. */
    void (*on_timeout)(struct pending *p);
    uv_timer_t timer;
    bool timer_on;
    struct pending *next;
};

/* ---- proto_conn.c: output and pending requests ---------------------------- */

/* Sends o (stolen; NULL is ignored) as one line. */
void proto__send_json(struct conn_state *cs, json_t *o);

/* {"id":id,"ok":ok}, new; id borrowed (NULL: none). */
json_t *proto__reply_new(json_t *id, bool ok);

/* {"id":id,"ok":false,"error":{"code":code,"message":...}}. */
void proto__send_error(struct conn_state *cs, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The member name of req as a string (borrowed), NULL when absent or
 * null; sets *bad when it is there but not a string. */
const char *proto__opt_string(json_t *req, const char *name, bool *bad);

/* A new request of cs waiting for something, its id referenced; a timer
 * of timeout_ms (0: none) then calls p->on_timeout. NULL when out of
 * memory. */
struct pending *proto__pending_new(struct conn_state *cs, enum pending_kind kind, json_t *id,
                                   uint64_t timeout_ms);

/* Takes p off its connection, cancels whatever it waits for and frees it
 * (from the loop). */
void proto__pending_end(struct pending *p);

/* A half-closed connection ends once nothing is owed to it any more. */
void proto__maybe_end(struct conn_state *cs);

/* ---- proto_render.c: lists rendered once per change ------------------------ */

/* The text a watcher compares (a list without its revision), shared by the
 * render and by every watcher that was sent it: 10,000 watchers used to keep
 * a copy each (a kilobyte for a 10-instance service, 10 MB in all), and
 * each change copied it once per watcher. */
struct seen {
    int refs;
    size_t len;
    uint64_t h1, h2;
};

struct seen *proto__seen_ref(struct seen *v); /* NULL-safe */
void proto__seen_unref(struct seen *v);       /* NULL-safe */
bool proto__seen_same(const struct seen *a, const struct seen *b);

/* One change of a service is rendered once per group and reused for every
 * watcher of that group and every resolve: with a thousand watchers of a
 * large service, rendering per watcher was what stalled the loop. The
 * renders of the service's current list are kept with the service, one per
 * group asked for (the cache frees them at its next change), so watchers of
 * different groups no longer evict each other's render: one slot shared by
 * every group rendered 20,000 instances once per watcher when groups
 * alternated. */
struct render {
    char *group;       /* NULL: every group */
    bool zoned;        /* the prefer_zone form */
    char *list;        /* {"service",..,"revision",..,"stale",..,"instances":[..]} then '\n',
                  * so that every line sent from it can end with its last bytes */
    size_t len;        /* of the JSON text, without that '\n' */
    struct seen *seen; /* the same without the revision: what a watcher sees change */
    struct render *next;
};

/* The service's list for group (NULL: all), rendered at most once per
 * change; borrowed until the service next changes. NULL when out of
 * memory. */
const struct render *proto__render(proto *pr, service *svc, const char *group, bool zoned);

/* {"service","revision","stale","instances":[...]} filtered by group,
 * added to o; zoned: the prefer_zone form (docs/traffic.md). */
void proto__add_list(json_t *o, service *svc, const char *group, bool zoned);

/* Answers with r: {"id":ID,"ok":true, then r's list. id_text is the id as
 * JSON text (id_len bytes), or NULL for a request without one. */
void proto__send_rendered(struct conn_state *cs, const struct render *r, const char *id_text,
                          size_t id_len);

/* ---- the operations --------------------------------------------------------- */

/* Each answers req (borrowed), whose "id" is id (borrowed, may be NULL). */
void proto__op_resolve(struct conn_state *cs, json_t *req, json_t *id); /* proto_list.c */
void proto__op_watch(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_unwatch(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_register(struct conn_state *cs, json_t *req, json_t *id); /* proto_write.c */
void proto__op_deregister(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_check(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_drain(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_undrain(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_maint(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_status(struct conn_state *cs, json_t *req, json_t *id); /* proto_status.c */
void proto__op_checks(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_services(struct conn_state *cs, json_t *req, json_t *id); /* proto_services.c */
void proto__op_xds(struct conn_state *cs, json_t *req, json_t *id);
void proto__op_xds_bootstrap(struct conn_state *cs, json_t *req, json_t *id);

/* proto_list.c: answers the commonest line, a resolve whose list is
 * there, without parsing it as JSON; false when it must take the general
 * path. */
bool proto__fast_resolve(struct conn_state *cs, const char *line, size_t len);

/* proto_list.c: ends every watch of a closing connection. */
void proto__watches_free(struct conn_state *cs);

#endif
