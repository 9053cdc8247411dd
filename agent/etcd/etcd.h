/* Asynchronous etcd v3 client over the JSON gateway (POST /v3/...).
 *
 * One client holds a list of endpoints and uses one at a time. A request
 * that fails on the transport, times out, or meets a member without a
 * leader moves the client to the next endpoint and is retried there, until
 * every endpoint has been tried once. Every reply is parsed against bounds
 * (etcd_parse.h); the callback gets either a parsed result or an error.
 *
 * Ownership: strings passed in are copied; results passed to callbacks are
 * borrowed for the duration of the call. */
#ifndef DA_ETCD_H
#define DA_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http.h"

typedef struct etcd_client etcd_client;
typedef struct etcd_watch etcd_watch;

struct etcd_options {
    const char *const *endpoints; /* "http://host:port" or https:// */
    size_t n_endpoints;
    long timeout_ms;      /* per request; default 5000 */
    size_t max_reply;     /* cap on one reply body or watch line; default 64 MiB */
    const char *username; /* NULL: no auth */
    const char *password;
    struct http_tls tls;
    /* TCP keep-alive on watch connections: idle, interval, count. */
    int watch_keepalive_idle_s;  /* default 2 */
    int watch_keepalive_intvl_s; /* default 1 */
    int watch_keepalive_cnt;     /* default 3 */
};

struct etcd_kv {
    char *key;
    size_t key_len;
    char *value; /* NUL-terminated too, for convenience; may hold NULs */
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
};

/* Everything any reply can carry; each call fills what its reply has. */
struct etcd_result {
    int64_t revision; /* header.revision */
    uint64_t cluster_id;
    uint64_t member_id;
    int64_t raft_term;
    struct etcd_kv *kvs; /* range, txn (first range response), delete prev_kv */
    size_t n_kvs;
    int64_t count;
    bool more;
    bool succeeded; /* txn */
    int64_t lease_id;
    int64_t ttl;      /* lease grant, keepalive: -1 when gone */
    uint64_t leader;  /* maintenance status */
    char version[32]; /* maintenance status */
    char *token;      /* authenticate */
};

/* err is 0 or a DA_E* code; r is NULL when err != 0. When etcd itself
 * refused (DA_EETCD, DA_EAUTH, DA_ELEASE), etcd_client_last_error() has
 * its message during the call. */
typedef void (*etcd_cb)(int err, const struct etcd_result *r, void *arg);

enum { ETCD_RANGE_KEYS_ONLY = 1, ETCD_RANGE_COUNT_ONLY = 2 };

int etcd_client_new(etcd_client **out, uv_loop_t *loop, http_client *http,
                    const struct etcd_options *o);
/* Cancels every request and watch (no callbacks) and frees the client.
 * Accepts NULL; returns NULL. */
etcd_client *etcd_client_free(etcd_client *c);

const char *etcd_client_endpoint(const etcd_client *c); /* the one in use */
bool etcd_client_connected(const etcd_client *c);       /* last request reached etcd */
const char *etcd_client_last_error(const etcd_client *c);
size_t etcd_client_requests(const etcd_client *c); /* requests sent so far */
/* Bumped each time etcd's history restarts: its cluster id changed, or a
 * revision went back (wiped, or restored from an older backup). Revisions
 * remembered from an earlier epoch mean nothing against the new ones. */
unsigned etcd_client_epoch(const etcd_client *c);

/* Handle of a single request, to cancel it; NULL-safe. After the callback
 * ran, the handle is gone. */
typedef struct etcd_call etcd_call;
void etcd_call_cancel(etcd_call *call);

/* KV. range_end NULL: the single key; see etcd_prefix_end() for a prefix.
 * Each returns 0 and calls cb later, or an error and never calls cb. */
int etcd_range(etcd_client *c, const char *key, size_t klen, const char *range_end, size_t relen,
               int flags, int64_t limit, etcd_cb cb, void *arg, etcd_call **out);
int etcd_put(etcd_client *c, const char *key, size_t klen, const char *val, size_t vlen,
             int64_t lease, etcd_cb cb, void *arg, etcd_call **out);

/* A compare-and-put: put key=val (with lease) only if the key's current
 * value differs from val or its lease differs from lease... expressed as
 * etcd compares. A compare of mod_revision == 0 means "does not exist". */
enum etcd_cmp_target { ETCD_CMP_VALUE, ETCD_CMP_MOD, ETCD_CMP_LEASE, ETCD_CMP_VERSION };
enum etcd_cmp_op { ETCD_CMP_EQUAL, ETCD_CMP_NOT_EQUAL, ETCD_CMP_GREATER, ETCD_CMP_LESS };
struct etcd_cmp {
    const char *key;
    size_t klen;
    enum etcd_cmp_target target;
    enum etcd_cmp_op op;
    const char *value; /* ETCD_CMP_VALUE */
    size_t vlen;
    int64_t number; /* the other targets */
};
enum etcd_op_type { ETCD_OP_PUT, ETCD_OP_DELETE, ETCD_OP_RANGE };
struct etcd_op {
    enum etcd_op_type type;
    const char *key;
    size_t klen;
    const char *value; /* put */
    size_t vlen;
    int64_t lease; /* put */
};
int etcd_txn(etcd_client *c, const struct etcd_cmp *cmp, size_t n_cmp,
             const struct etcd_op *success, size_t n_success, const struct etcd_op *failure,
             size_t n_failure, etcd_cb cb, void *arg, etcd_call **out);

/* Leases. ttl in seconds. */
int etcd_lease_grant(etcd_client *c, int64_t ttl, etcd_cb cb, void *arg, etcd_call **out);
int etcd_lease_keepalive(etcd_client *c, int64_t id, etcd_cb cb, void *arg, etcd_call **out);
int etcd_lease_revoke(etcd_client *c, int64_t id, etcd_cb cb, void *arg, etcd_call **out);

/* The status of the member in use: leader, version, member id. */
int etcd_member_status(etcd_client *c, etcd_cb cb, void *arg, etcd_call **out);

/* Writes into end the key just past every key starting with prefix (the
 * prefix with its last byte below 0xff incremented and the rest cut), as
 * etcd's range_end wants. Returns its length (0 means "to the end"). end
 * must hold klen bytes. */
size_t etcd_prefix_end(const char *prefix, size_t klen, char *end);

/* ---- watches ---------------------------------------------------------- */

enum etcd_event_type { ETCD_EVENT_PUT, ETCD_EVENT_DELETE };
struct etcd_event {
    enum etcd_event_type type;
    struct etcd_kv kv;
};

enum etcd_watch_kind {
    ETCD_WATCH_SNAPSHOT, /* the full range at revision: replaces what was known */
    ETCD_WATCH_EVENTS,   /* changes after what was delivered before */
    ETCD_WATCH_DOWN,     /* the stream is broken; reconnecting (err says why) */
    ETCD_WATCH_UP,       /* the stream is live again; revision: etcd's then. The
                          * changes missed meanwhile follow as EVENTS (or a
                          * SNAPSHOT after a compaction) */
};

struct etcd_watch_update {
    enum etcd_watch_kind kind;
    int err;                   /* ETCD_WATCH_DOWN */
    int64_t revision;          /* the revision the receiver is now current at */
    const struct etcd_kv *kvs; /* SNAPSHOT */
    size_t n_kvs;
    const struct etcd_event *events; /* EVENTS, in revision order */
    size_t n_events;
};

typedef void (*etcd_watch_cb)(etcd_watch *w, const struct etcd_watch_update *u, void *arg);

/* Watches [key, range_end). With start_revision 0, the watch first reads the
 * range (a SNAPSHOT) and then follows changes from that revision + 1; with a
 * start revision, it delivers EVENTS from there. Either way, a broken stream
 * is resumed, on another endpoint if need be, from the last delivered
 * revision + 1, and a compacted history leads to a new SNAPSHOT, so the
 * receiver never misses or repeats a change. */
int etcd_watch_start(etcd_client *c, const char *key, size_t klen, const char *range_end,
                     size_t relen, int64_t start_revision, etcd_watch_cb cb, void *arg,
                     etcd_watch **out);
void etcd_watch_close(etcd_watch *w); /* no callback after this; NULL-safe */
bool etcd_watch_live(const etcd_watch *w);

#endif
