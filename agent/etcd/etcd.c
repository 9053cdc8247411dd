/* etcd requests: building the JSON bodies, choosing the endpoint, failing
 * over, authenticating, and parsing replies. Watches are in etcd_watch.c
 * and etcd_watch_stream.c. */
#include "etcd.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "backoff.h"
#include "defaults.h"
#include "error.h"
#include "etcd_internal.h"
#include "etcd_parse.h"
#include "log.h"
#include "metrics.h"

/* Range reads sent at once; more wait in a queue. Watching 1,000 services
 * starts 1,000 snapshot reads together: sent at once they open 1,000
 * connections, which curl then keeps idle in its cache for good (1,000 fds
 * here and in etcd, and curl polls every idle one whenever a request looks
 * for a connection to reuse: 1,000 poll() calls per keep-alive at rest).
 * Writes and lease calls never wait behind reads: a keep-alive must not
 * starve. */
#define ETCD_MAX_READS 8

struct etcd_call {
    etcd_client *c;
    char *path;
    char *body;
    size_t body_len;
    etcd_cb cb;
    void *arg;
    http_req *req;
    size_t endpoint; /* index the request went to */
    size_t tries;    /* endpoints tried */
    bool auth_retried;
    bool waiting_auth; /* parked until a token comes */
    bool is_auth;      /* the authenticate call itself */
    bool is_read;      /* a range read: counted in c->reads, may queue */
    bool counted;      /* in flight and counted in c->reads */
    bool queued;       /* on c->qhead */
    int64_t floor;     /* the highest revision answered before it was sent */
    uint64_t sent_ns;  /* uv_hrtime() at the last send, for the latency metric */
    struct etcd_call *prev, *next;
    struct etcd_call *qnext;
};

static int call_send(struct etcd_call *call);

/* ---- helpers ---------------------------------------------------------- */

size_t etcd_prefix_end(const char *prefix, size_t klen, char *end)
{
    memcpy(end, prefix, klen);
    while (klen > 0) {
        unsigned char ch = (unsigned char)end[klen - 1];
        if (ch < 0xff) {
            end[klen - 1] = (char)(ch + 1);
            return klen;
        }
        klen--;
    }
    /* Every byte was 0xff: the range runs to the end of the key space,
     * which etcd spells as the single byte 0. */
    end[0] = '\0';
    return 1;
}

static int set_b64(json_t *obj, const char *name, const char *p, size_t n)
{
    char stack[256], *buf = stack;
    size_t need = B64_ENCODED_SIZE(n);
    int rc;

    if (need > sizeof stack && !(buf = malloc(need)))
        return DA_ENOMEM;
    b64_encode(p, n, buf);
    rc = json_object_set_new(obj, name, json_string(buf)) ? DA_ENOMEM : 0;
    if (buf != stack)
        free(buf);
    return rc;
}

static int set_i64(json_t *obj, const char *name, int64_t v)
{
    char buf[24];

    /* The gateway takes int64 as strings, and writes them that way too. */
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return json_object_set_new(obj, name, json_string(buf)) ? DA_ENOMEM : 0;
}

void etcd__headers(etcd_client *c, const char **hdrs, char *authbuf, size_t len)
{
    size_t n = 0;

    hdrs[n++] = "Content-Type: application/json";
    /* A member cut off from its cluster then answers at once with "no
     * leader" instead of hanging until the request times out. */
    hdrs[n++] = "Grpc-Metadata-Hasleader: true";
    if (c->token) {
        /* etcd's gateway wants the raw token, without "Bearer". */
        snprintf(authbuf, len, "Authorization: %s", c->token);
        hdrs[n++] = authbuf;
    }
    hdrs[n] = NULL;
}

static void set_error(etcd_client *c, const char *fmt, const char *a, const char *b)
{
    snprintf(c->last_error, sizeof c->last_error, fmt, a, b);
}

void etcd__endpoint_ok(etcd_client *c)
{
    c->tried = 0;
    if (!c->connected) {
        c->connected = true;
        log_info("etcd: connected to %s", c->endpoints[c->cur]);
    }
}

/* The member to move to when c->cur fails: one drawn at random among
 * those not tried since the last answer (all the others once every one has
 * failed), so that a dead member's share of a fleet spreads evenly over the
 * survivors instead of landing on the next member of the list. */
static size_t pick_other(etcd_client *c)
{
    size_t left = 0, k;

    c->tried |= 1ull << c->cur;
    for (size_t i = 0; i < c->n_endpoints; i++)
        left += !(c->tried >> i & 1);
    if (!left) {
        c->tried = 1ull << c->cur;
        left = c->n_endpoints - 1;
    }
    k = (size_t)backoff_pick(left);
    for (size_t i = 0; i < c->n_endpoints; i++)
        if (!(c->tried >> i & 1) && k-- == 0)
            return i;
    return c->cur; /* not reached */
}

void etcd__endpoint_failed(etcd_client *c, size_t idx, int err, const char *why)
{
    set_error(c, "%s: %s", c->endpoints[idx], why && *why ? why : da_strerror(err));
    if (idx != c->cur)
        return; /* someone moved on already */
    if (c->n_endpoints > 1) {
        metrics.etcd_failovers++;
        c->cur = pick_other(c);
        log_warn("etcd: %s failed (%s); trying %s", c->endpoints[idx],
                 why && *why ? why : da_strerror(err), c->endpoints[c->cur]);
        etcd__watches_moved(c);
    } else if (c->connected) {
        log_warn("etcd: %s failed (%s)", c->endpoints[idx], why && *why ? why : da_strerror(err));
    }
    c->connected = false;
}

/* ---- the read queue ----------------------------------------------------- */

static void dequeue(etcd_client *c, struct etcd_call *call)
{
    struct etcd_call **pp = &c->qhead, *prev = NULL;

    while (*pp && *pp != call) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (*pp) {
        *pp = call->qnext;
        if (c->qtail == call)
            c->qtail = prev;
    }
    call->qnext = NULL;
    call->queued = false;
}

/* Sends queued reads while fewer than ETCD_MAX_READS are in flight. It runs
 * no callback, so it is safe wherever a call ends. A read that cannot be
 * sent now (out of memory) goes back to the head of the queue and is tried
 * again when the next read ends. */
static void pump(etcd_client *c)
{
    while (c->qhead && c->reads < ETCD_MAX_READS && !c->freeing) {
        struct etcd_call *call = c->qhead;

        c->qhead = call->qnext;
        if (!c->qhead)
            c->qtail = NULL;
        call->qnext = NULL;
        call->queued = false;
        if (call_send(call) < 0) {
            call->queued = true;
            call->qnext = c->qhead;
            c->qhead = call;
            if (!c->qtail)
                c->qtail = call;
            break;
        }
    }
}

/* ---- calls ------------------------------------------------------------ */

static void call_unlink(struct etcd_call *call)
{
    etcd_client *c = call->c;

    if (call->prev)
        call->prev->next = call->next;
    else if (c->calls == call)
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
    if (c->auth == call)
        c->auth = NULL;
    if (call->queued)
        dequeue(c, call);
    if (call->counted) {
        call->counted = false;
        c->reads--;
        pump(c);
    }
}

static void call_free(struct etcd_call *call)
{
    free(call->path);
    free(call->body);
    free(call);
}

/* Ends a call: unlinks it first so that the callback may start or cancel
 * anything, then frees it. */
static void call_finish(struct etcd_call *call, int err, const struct etcd_result *r)
{
    call_unlink(call);
    if (call->cb)
        call->cb(err, err ? NULL : r, call->arg);
    call_free(call);
}

void etcd_call_cancel(etcd_call *call)
{
    if (!call)
        return;
    if (call->req)
        http_cancel(call->req);
    call_unlink(call);
    call_free(call);
}

static void auth_done(int err, const struct etcd_result *r, void *arg);

bool etcd__need_token(etcd_client *c)
{
    json_t *o;
    struct etcd_call *call;

    if (!c->username || c->token)
        return false;
    if (c->auth)
        return true;
    o = json_pack("{s:s, s:s}", "name", c->username, "password", c->password);
    call = calloc(1, sizeof *call);
    if (!o || !call || !(call->body = json_dumps(o, JSON_COMPACT)) ||
        !(call->path = strdup("/v3/auth/authenticate"))) {
        json_decref(o);
        if (call)
            call_free(call);
        return true; /* the next request tries again */
    }
    json_decref(o);
    call->c = c;
    call->body_len = strlen(call->body);
    call->cb = auth_done;
    call->arg = c;
    call->is_auth = true;
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    c->auth = call;
    if (call_send(call) < 0) {
        call_unlink(call);
        call_free(call);
    }
    return true;
}

void etcd__token_invalid(etcd_client *c)
{
    free(c->token);
    c->token = NULL;
}

/* The authenticate call ended: send or fail every call parked for it. */
static void auth_done(int err, const struct etcd_result *r, void *arg)
{
    etcd_client *c = arg;
    struct etcd_call *call, *next;

    if (!err) {
        if (!r->token || !*r->token) {
            err = DA_EPROTO;
        } else {
            free(c->token);
            c->token = strdup(r->token);
            if (!c->token)
                err = DA_ENOMEM;
        }
    }
    if (err)
        log_error("etcd: authentication as %s failed: %s", c->username,
                  err == DA_EAUTH ? c->last_error : da_strerror(err));
    for (call = c->calls; call; call = next) {
        next = call->next;
        if (!call->waiting_auth)
            continue;
        call->waiting_auth = false;
        if (err) {
            call_finish(call, err, NULL);
            next = c->calls; /* the callback may have changed the list */
        } else if ((err = call_send(call)) < 0) {
            call_finish(call, err, NULL);
            next = c->calls;
            err = 0;
        }
    }
    etcd__watches_token(c, err);
}

static void http_done(http_req *req, int err, long status, const char *body, size_t len, void *arg)
{
    struct etcd_call *call = arg;
    etcd_client *c = call->c;
    struct etcd_result r;
    struct etcd_error e;
    int rc;

    (void)req;
    call->req = NULL;
    if (call->counted) {
        /* Room for the next queued read, sent before any callback runs. */
        call->counted = false;
        c->reads--;
        pump(c);
    }
    if (err) {
        metrics_etcd_request(call->path, err, metrics_since(call->sent_ns, uv_hrtime()));
        /* A reply too large is etcd's answer, not a broken endpoint. */
        if (err == DA_EMSGSIZE) {
            set_error(c, "%s: %s", c->endpoints[call->endpoint], "reply over the size limit");
            call_finish(call, err, NULL);
            return;
        }
        etcd__endpoint_failed(c, call->endpoint, err, http_req_errtext(req));
        goto retry;
    }

    rc = etcd_parse_reply(body, len, &r, &e);
    if (rc == 0 && status != 200)
        rc = DA_EHTTP;
    if (rc == DA_EPROTO && status != 200) {
        /* Not JSON at all: something other than etcd's gateway answered,
         * or a member without a leader answered 503. */
        snprintf(e.message, sizeof e.message, "HTTP %ld", status);
        rc = status == 503 ? DA_ENOLEADER : DA_EHTTP;
    }
    metrics_etcd_request(call->path, rc, metrics_since(call->sent_ns, uv_hrtime()));
    if (rc) {
        if (rc != DA_EPROTO && rc != DA_ENOMEM && rc != DA_EHTTP)
            set_error(c, "%s: %s", c->endpoints[call->endpoint], e.message);
        else
            set_error(c, "%s: %s", c->endpoints[call->endpoint],
                      rc == DA_EHTTP ? e.message : da_strerror(rc));
    }
    if (rc == 0 || rc == DA_EETCD || rc == DA_ELEASE || rc == DA_EPROTO || rc == DA_EHTTP)
        etcd__endpoint_ok(c);
    if (rc == DA_ENOLEADER) {
        etcd__endpoint_failed(c, call->endpoint, rc, e.message);
        goto retry;
    }
    if (rc == DA_EAUTH && !call->is_auth && c->username && !call->auth_retried &&
        strstr(e.message, "token")) {
        /* Tokens expire, and a simple token is known only to the member
         * that issued it: authenticate again and retry once. */
        etcd__endpoint_ok(c);
        call->auth_retried = true;
        etcd__token_invalid(c);
        if ((rc = call_send(call)) < 0)
            call_finish(call, rc, NULL);
        return;
    }
    if (!rc && !strncmp(call->path, "/v3/kv/", 7))
        etcd__note_history(c, r.cluster_id, r.revision, call->floor);
    call_finish(call, rc, rc ? NULL : &r);
    if (!rc)
        etcd_result_clear(&r);
    return;

retry:
    if (++call->tries < c->n_endpoints) {
        if ((rc = call_send(call)) < 0)
            call_finish(call, rc, NULL);
        return;
    }
    call_finish(call, err ? err : DA_ENOLEADER, NULL);
}

static int call_send(struct etcd_call *call)
{
    etcd_client *c = call->c;
    const char *hdrs[5];
    char auth[1024], url[1024];
    struct http_req_opts o = {0};

    if (!call->is_auth && etcd__need_token(c)) {
        call->waiting_auth = true;
        return 0;
    }
    if (call->is_read && c->reads >= ETCD_MAX_READS) {
        call->queued = true;
        call->qnext = NULL;
        if (c->qtail)
            c->qtail->qnext = call;
        else
            c->qhead = call;
        c->qtail = call;
        return 0;
    }
    call->endpoint = c->cur;
    call->floor = c->max_rev;
    etcd__headers(c, hdrs, auth, sizeof auth);
    snprintf(url, sizeof url, "%s%s", c->endpoints[c->cur], call->path);
    o.url = url;
    o.body = call->body;
    o.body_len = call->body_len;
    o.headers = hdrs;
    o.timeout_ms = c->timeout_ms;
    o.connect_timeout_ms = c->timeout_ms;
    o.max_body = c->max_reply;
    o.tls = &c->tls;
    c->requests++;
    call->sent_ns = uv_hrtime();
    int rc = http_request(c->http, &o, http_done, call, &call->req);
    if (rc == 0 && call->is_read) {
        call->counted = true;
        c->reads++;
    }
    return rc;
}

/* Takes the body (stolen). */
static int call_start(etcd_client *c, const char *path, json_t *body, etcd_cb cb, void *arg,
                      etcd_call **out)
{
    struct etcd_call *call;
    int rc;

    if (!body)
        return DA_ENOMEM;
    call = calloc(1, sizeof *call);
    if (!call || !(call->path = strdup(path)) || !(call->body = json_dumps(body, JSON_COMPACT))) {
        json_decref(body);
        if (call)
            call_free(call);
        return DA_ENOMEM;
    }
    json_decref(body);
    call->c = c;
    call->body_len = strlen(call->body);
    call->cb = cb;
    call->arg = arg;
    call->is_read = !strcmp(path, "/v3/kv/range");
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    if ((rc = call_send(call)) < 0) {
        call_unlink(call);
        call_free(call);
        return rc;
    }
    if (out)
        *out = call;
    return 0;
}

/* ---- KV --------------------------------------------------------------- */

static json_t *range_body(const char *key, size_t klen, const char *end, size_t elen)
{
    json_t *o = json_object();

    if (!o || set_b64(o, "key", key, klen) || (end && set_b64(o, "range_end", end, elen))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int etcd_range(etcd_client *c, const char *key, size_t klen, const char *range_end, size_t relen,
               int flags, int64_t limit, etcd_cb cb, void *arg, etcd_call **out)
{
    json_t *o = range_body(key, klen, range_end, relen);

    if (o && (flags & ETCD_RANGE_KEYS_ONLY))
        json_object_set_new(o, "keys_only", json_true());
    if (o && (flags & ETCD_RANGE_COUNT_ONLY))
        json_object_set_new(o, "count_only", json_true());
    if (o && limit > 0 && set_i64(o, "limit", limit)) {
        json_decref(o);
        o = NULL;
    }
    return call_start(c, "/v3/kv/range", o, cb, arg, out);
}

int etcd_put(etcd_client *c, const char *key, size_t klen, const char *val, size_t vlen,
             int64_t lease, etcd_cb cb, void *arg, etcd_call **out)
{
    json_t *o = json_object();

    if (o && (set_b64(o, "key", key, klen) || set_b64(o, "value", val, vlen) ||
              (lease && set_i64(o, "lease", lease)))) {
        json_decref(o);
        o = NULL;
    }
    return call_start(c, "/v3/kv/put", o, cb, arg, out);
}

static json_t *txn_op(const struct etcd_op *op)
{
    json_t *inner = json_object(), *wrap = json_object();
    const char *name = op->type == ETCD_OP_PUT      ? "request_put"
                       : op->type == ETCD_OP_DELETE ? "request_delete_range"
                                                    : "request_range";

    if (!inner || !wrap || set_b64(inner, "key", op->key, op->klen) ||
        (op->type == ETCD_OP_PUT && set_b64(inner, "value", op->value, op->vlen)) ||
        (op->type == ETCD_OP_PUT && op->lease && set_i64(inner, "lease", op->lease)) ||
        json_object_set_new(wrap, name, inner)) {
        json_decref(inner);
        json_decref(wrap);
        return NULL;
    }
    return wrap;
}

static json_t *txn_cmp(const struct etcd_cmp *cmp)
{
    static const char *const targets[] = {"VALUE", "MOD", "LEASE", "VERSION"};
    static const char *const fields[] = {"value", "mod_revision", "lease", "version"};
    static const char *const ops[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};
    json_t *o = json_object();
    int rc;

    if (!o)
        return NULL;
    rc = set_b64(o, "key", cmp->key, cmp->klen) ||
         json_object_set_new(o, "target", json_string(targets[cmp->target])) ||
         json_object_set_new(o, "result", json_string(ops[cmp->op]));
    if (!rc)
        rc = cmp->target == ETCD_CMP_VALUE ? set_b64(o, "value", cmp->value, cmp->vlen)
                                           : set_i64(o, fields[cmp->target], cmp->number);
    if (rc) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int etcd_txn(etcd_client *c, const struct etcd_cmp *cmp, size_t n_cmp,
             const struct etcd_op *success, size_t n_success, const struct etcd_op *failure,
             size_t n_failure, etcd_cb cb, void *arg, etcd_call **out)
{
    json_t *o = json_object(), *a = json_array(), *s = json_array(), *f = json_array();
    size_t i;

    if (!o || !a || !s || !f)
        goto nomem;
    for (i = 0; i < n_cmp; i++)
        if (json_array_append_new(a, txn_cmp(&cmp[i])))
            goto nomem;
    for (i = 0; i < n_success; i++)
        if (json_array_append_new(s, txn_op(&success[i])))
            goto nomem;
    for (i = 0; i < n_failure; i++)
        if (json_array_append_new(f, txn_op(&failure[i])))
            goto nomem;
    json_object_set_new(o, "compare", a);
    json_object_set_new(o, "success", s);
    json_object_set_new(o, "failure", f);
    return call_start(c, "/v3/kv/txn", o, cb, arg, out);
nomem:
    json_decref(o);
    json_decref(a);
    json_decref(s);
    json_decref(f);
    return DA_ENOMEM;
}

/* ---- leases and status ------------------------------------------------ */

static json_t *id_body(const char *name, int64_t v)
{
    json_t *o = json_object();

    if (o && set_i64(o, name, v)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int etcd_lease_grant(etcd_client *c, int64_t ttl, etcd_cb cb, void *arg, etcd_call **out)
{
    return call_start(c, "/v3/lease/grant", id_body("TTL", ttl), cb, arg, out);
}

int etcd_lease_keepalive(etcd_client *c, int64_t id, etcd_cb cb, void *arg, etcd_call **out)
{
    /* One keep-alive per request: the gateway's stream endpoint does not
     * reliably serve a second message on the same request. */
    return call_start(c, "/v3/lease/keepalive", id_body("ID", id), cb, arg, out);
}

int etcd_lease_revoke(etcd_client *c, int64_t id, etcd_cb cb, void *arg, etcd_call **out)
{
    /* 3.4's gateway serves revoke under /v3/kv/lease/ (and not at
     * /v3/lease/revoke, which answers 404). */
    return call_start(c, "/v3/kv/lease/revoke", id_body("ID", id), cb, arg, out);
}

int etcd_member_status(etcd_client *c, etcd_cb cb, void *arg, etcd_call **out)
{
    return call_start(c, "/v3/maintenance/status", json_object(), cb, arg, out);
}

/* ---- client ----------------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int etcd_client_new(etcd_client **out, uv_loop_t *loop, http_client *http,
                    const struct etcd_options *o)
{
    etcd_client *c;

    /* 64: the width of c->tried, and the config loader's limit. */
    if (!o->n_endpoints || o->n_endpoints > 64)
        return DA_EINVAL;
    c = calloc(1, sizeof *c);
    if (!c)
        return DA_ENOMEM;
    c->loop = loop;
    c->http = http;
    if (http_client_new(&c->streams, loop) < 0) {
        free(c);
        return DA_ENOMEM;
    }
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DA_DEFAULT_ETCD_TIMEOUT_MS;
    c->max_reply = o->max_reply ? o->max_reply : 64u << 20;
    c->ka_idle = o->watch_keepalive_idle_s > 0 ? o->watch_keepalive_idle_s : 2;
    c->ka_intvl = o->watch_keepalive_intvl_s > 0 ? o->watch_keepalive_intvl_s : 1;
    c->ka_cnt = o->watch_keepalive_cnt > 0 ? o->watch_keepalive_cnt : 3;
    c->endpoints = calloc(o->n_endpoints, sizeof *c->endpoints);
    if (!c->endpoints)
        goto nomem;
    c->n_endpoints = o->n_endpoints;
    for (size_t i = 0; i < o->n_endpoints; i++) {
        size_t n = strlen(o->endpoints[i]);
        if (!(c->endpoints[i] = strdup(o->endpoints[i])))
            goto nomem;
        while (n > 0 && c->endpoints[i][n - 1] == '/')
            c->endpoints[i][--n] = '\0';
    }
    /* A fleet shares one list: starting every agent on its first member
     * would put the whole fleet's leases and streams on one member. */
    c->cur = (size_t)backoff_pick(c->n_endpoints);
    if (o->username && (!(c->username = strdup(o->username)) ||
                        !(c->password = strdup(o->password ? o->password : ""))))
        goto nomem;
    if ((o->tls.ca_file && !(c->ca_file = dup_or_null(o->tls.ca_file))) ||
        (o->tls.cert_file && !(c->cert_file = dup_or_null(o->tls.cert_file))) ||
        (o->tls.key_file && !(c->key_file = dup_or_null(o->tls.key_file))))
        goto nomem;
    c->tls.ca_file = c->ca_file;
    c->tls.cert_file = c->cert_file;
    c->tls.key_file = c->key_file;
    *out = c;
    return 0;
nomem:
    etcd_client_free(c);
    return DA_ENOMEM;
}

etcd_client *etcd_client_free(etcd_client *c)
{
    if (!c)
        return NULL;
    c->freeing = true; /* cancelling reads must not send queued ones */
    while (c->calls)
        etcd_call_cancel(c->calls);
    etcd__watches_free(c);
    http_client_close(c->streams); /* freed by the loop, as c->http is */
    for (size_t i = 0; c->endpoints && i < c->n_endpoints; i++)
        free(c->endpoints[i]);
    free(c->endpoints);
    free(c->username);
    if (c->password)
        memset(c->password, 0, strlen(c->password));
    free(c->password);
    free(c->token);
    free(c->ca_file);
    free(c->cert_file);
    free(c->key_file);
    free(c);
    return NULL;
}

const char *etcd_client_endpoint(const etcd_client *c)
{
    return c->endpoints[c->cur];
}

bool etcd_client_connected(const etcd_client *c)
{
    return c->connected;
}

const char *etcd_client_last_error(const etcd_client *c)
{
    return c->last_error;
}

void etcd__note_history(etcd_client *c, uint64_t cluster_id, int64_t revision, int64_t floor)
{
    bool restarted = floor < 0;

    if (!restarted && cluster_id && c->cluster_id && cluster_id != c->cluster_id)
        restarted = true;
    if (!restarted && revision > 0 && revision < floor)
        restarted = true;
    if (cluster_id)
        c->cluster_id = cluster_id;
    if (restarted) {
        log_warn("etcd: its history restarted (revision %" PRId64 ", had seen %" PRId64
                 "): wiped or restored; forgetting revisions seen before",
                 revision, c->max_rev);
        c->epoch++;
        c->max_rev = revision;
    } else if (revision > c->max_rev) {
        c->max_rev = revision;
    }
}

unsigned etcd_client_epoch(const etcd_client *c)
{
    return c->epoch;
}

size_t etcd_client_requests(const etcd_client *c)
{
    return c->requests;
}
