/* Watch streams over the gateway.
 *
 * The gateway's /v3/watch is half-duplex over HTTP/1.1: one request carries
 * one create_request and the response streams a JSON object per line for as
 * long as the connection lives. So each watch is its own HTTP request, and
 * resuming means a new request from the last delivered revision + 1.
 *
 * A watch goes through these states:
 *   (snapshot) --range--> (streaming) --end/error--> (backoff) --> ...
 * A compacted start revision sends it back to (snapshot): the range read
 * replaces what the receiver knew, so nothing is missed or applied twice. */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "error.h"
#include "etcd.h"
#include "etcd_internal.h"
#include "etcd_parse.h"
#include "log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

struct etcd_watch {
    etcd_client *c;
    char *key, *end;
    size_t klen, elen;
    etcd_watch_cb cb;
    void *arg;

    int64_t next_rev;   /* first revision not yet delivered */
    uint64_t cluster_id; /* of the etcd cluster the receiver's view is from */
    bool need_snapshot; /* the next step is a range read */
    bool live;          /* the stream said "created" */
    bool down;          /* DOWN was reported and UP not yet */
    bool waiting_auth;
    bool restart_now; /* we ended the stream on purpose: go again at once */
    bool stopped;
    int last_err;
    unsigned backoff_ms;
    size_t endpoint; /* where the stream went */

    http_req *req;
    etcd_call *range;
    uv_timer_t timer; /* backoff; the watch is freed in its close callback */

    char *line; /* a line not yet complete */
    size_t len, cap;

    struct etcd_watch *prev, *next;
};

static void step(etcd_watch *w);

static void report(etcd_watch *w, const struct etcd_watch_update *u)
{
    w->cb(w, u, w->arg);
}

static void report_down(etcd_watch *w, int err)
{
    struct etcd_watch_update u = {.kind = ETCD_WATCH_DOWN, .err = err};

    w->live = false;
    w->last_err = err;
    if (w->down)
        return;
    w->down = true;
    u.revision = w->next_rev - 1;
    report(w, &u);
}

/* etcd_rev: etcd's revision when the stream was created. The changes up
 * to it come after this (or a compaction notice does), so the receiver
 * knows it has caught up only once it has seen that revision. */
static void report_up(etcd_watch *w, int64_t etcd_rev)
{
    struct etcd_watch_update u = {.kind = ETCD_WATCH_UP};

    w->backoff_ms = 0;
    if (!w->down)
        return;
    w->down = false;
    u.revision = etcd_rev;
    report(w, &u);
}

static void timer_fired(uv_timer_t *t)
{
    step(t->data);
}

/* Full jitter between half and all of the backoff, so that many agents
 * cut off together do not come back in step. */
static void retry_later(etcd_watch *w)
{
    unsigned ms;

    w->backoff_ms = w->backoff_ms ? w->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (w->backoff_ms > BACKOFF_MAX_MS)
        w->backoff_ms = BACKOFF_MAX_MS;
    ms = w->backoff_ms / 2 + (unsigned)rand() % (w->backoff_ms / 2 + 1);
    uv_timer_start(&w->timer, timer_fired, ms, 0);
}

/* ---- snapshot --------------------------------------------------------- */

static void range_done(int err, const struct etcd_result *r, void *arg)
{
    etcd_watch *w = arg;
    struct etcd_watch_update u = {.kind = ETCD_WATCH_SNAPSHOT};

    w->range = NULL;
    if (err) {
        report_down(w, err);
        retry_later(w);
        return;
    }
    w->need_snapshot = false;
    w->next_rev = r->revision + 1;
    if (r->cluster_id)
        w->cluster_id = r->cluster_id;
    u.revision = r->revision;
    u.kvs = r->kvs;
    u.n_kvs = r->n_kvs;
    report(w, &u);
    if (!w->stopped)
        step(w);
}

/* ---- stream ----------------------------------------------------------- */

/* Handles one complete line. Returns 0 to go on, 1 to end the stream. */
static int handle_line(etcd_watch *w, const char *line, size_t len)
{
    struct etcd_watch_msg m;
    struct etcd_error e;
    int rc;

    rc = etcd_parse_watch_line(line, len, &m, &e);
    if (rc) {
        if (rc == DA_ENOLEADER)
            etcd__endpoint_failed(w->c, w->endpoint, rc, e.message);
        else if (rc == DA_EAUTH)
            etcd__token_invalid(w->c);
        log_warn("etcd: watch on %.*s: %s", (int)w->klen, w->key,
                 rc == DA_EPROTO ? "malformed watch line" : e.message);
        w->last_err = rc;
        return 1;
    }
    if (m.canceled) {
        if (m.compact_revision > 0) {
            log_info("etcd: watch on %.*s: revision %" PRId64 " compacted (oldest %" PRId64
                     "); reading the range again",
                     (int)w->klen, w->key, w->next_rev, m.compact_revision);
            w->need_snapshot = true;
            w->restart_now = true;
            w->last_err = DA_ECOMPACTED;
        } else {
            log_warn("etcd: watch on %.*s canceled: %s", (int)w->klen, w->key,
                     m.cancel_reason[0] ? m.cancel_reason : "no reason given");
            if (strstr(m.cancel_reason, "token") || strstr(m.cancel_reason, "permission"))
                etcd__token_invalid(w->c);
            w->last_err = DA_EETCD;
        }
        etcd_watch_msg_clear(&m);
        return 1;
    }
    if (m.created && w->cluster_id && m.cluster_id && m.cluster_id != w->cluster_id) {
        /* A different cluster: etcd was wiped and started anew (or the
         * endpoints now name another cluster). Its revisions mean nothing
         * against ours: read the range again. */
        log_warn("etcd: watch on %.*s: etcd is a new cluster (id %" PRIx64 ", was %" PRIx64
                 "); reading the range again",
                 (int)w->klen, w->key, m.cluster_id, w->cluster_id);
        w->need_snapshot = true;
        w->restart_now = true;
        etcd_watch_msg_clear(&m);
        return 1;
    }
    if (m.created && m.revision > 0 && m.revision < w->next_rev - 1) {
        /* etcd is behind what we delivered: its data was wiped or restored
         * from an old backup. Only a fresh read tells the truth now. */
        log_warn("etcd: watch on %.*s: etcd is at revision %" PRId64 " but we saw %" PRId64
                 " (data wiped?); reading the range again",
                 (int)w->klen, w->key, m.revision, w->next_rev - 1);
        w->need_snapshot = true;
        w->restart_now = true;
        etcd_watch_msg_clear(&m);
        return 1;
    }
    if (m.created) {
        if (m.cluster_id)
            w->cluster_id = m.cluster_id;
        w->live = true;
        etcd__endpoint_ok(w->c);
        report_up(w, m.revision);
    }
    if (m.n_events) {
        /* Skip anything at or below what was delivered: a resumed stream
         * starts at next_rev, but a response may straddle it. */
        size_t first = 0;
        while (first < m.n_events && m.events[first].kv.mod_revision < w->next_rev)
            first++;
        if (first < m.n_events) {
            struct etcd_watch_update u = {.kind = ETCD_WATCH_EVENTS};
            u.events = m.events + first;
            u.n_events = m.n_events - first;
            u.revision = m.events[m.n_events - 1].kv.mod_revision;
            w->next_rev = u.revision + 1;
            report(w, &u);
        }
    }
    etcd_watch_msg_clear(&m);
    return w->stopped ? 1 : 0;
}

static int on_chunk(http_req *req, const char *data, size_t len, void *arg)
{
    etcd_watch *w = arg;
    const char *nl;

    (void)req;
    while (len > 0) {
        nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (w->len + take > w->c->max_reply) {
            log_warn("etcd: watch on %.*s: a line passed %zu bytes", (int)w->klen, w->key,
                     w->c->max_reply);
            w->last_err = DA_EMSGSIZE;
            return 1;
        }
        if (nl && w->len == 0) {
            /* A whole line in the chunk: parsed where it is, no copy. */
            if (take > 0 && handle_line(w, data, take))
                return 1;
            data += take + 1;
            len -= take + 1;
            continue;
        }
        if (w->len + take + 1 > w->cap) {
            size_t cap = w->cap ? w->cap : 4096;
            while (cap < w->len + take + 1)
                cap *= 2;
            char *p = realloc(w->line, cap);
            if (!p) {
                w->last_err = DA_ENOMEM;
                return 1;
            }
            w->line = p;
            w->cap = cap;
        }
        memcpy(w->line + w->len, data, take);
        w->len += take;
        if (!nl)
            break;
        data += take + 1;
        len -= take + 1;
        size_t n = w->len;
        w->len = 0;
        if (n > 0 && handle_line(w, w->line, n))
            return 1;
    }
    /* A watch may sit idle for hours: it keeps a line buffer only while a
     * line is incomplete (4 KiB per watch otherwise, 4 MB for 1,000). */
    if (w->len == 0 && w->line) {
        free(w->line);
        w->line = NULL;
        w->cap = 0;
    }
    return 0;
}

static void stream_done(http_req *req, int err, long status, const char *body, size_t len,
                        void *arg)
{
    etcd_watch *w = arg;

    (void)body;
    (void)len;
    w->req = NULL;
    w->len = 0;
    if (w->stopped)
        return;
    if (w->restart_now) {
        w->restart_now = false;
        step(w);
        return;
    }
    if (err && err != DA_ECANCELED) {
        etcd__endpoint_failed(w->c, w->endpoint, err, http_req_errtext(req));
        w->last_err = err;
    } else if (!err && status != 200) {
        w->last_err = status == 503 ? DA_ENOLEADER : DA_EHTTP;
        if (status == 503)
            etcd__endpoint_failed(w->c, w->endpoint, DA_ENOLEADER, "HTTP 503");
    } else if (!err) {
        /* The member closed a healthy stream (it is shutting down). */
        w->last_err = DA_ETRANSPORT;
    }
    report_down(w, w->last_err);
    retry_later(w);
}

static int stream_start(etcd_watch *w)
{
    etcd_client *c = w->c;
    json_t *o = json_object(), *cr = json_object();
    char revbuf[24], url[1024], auth[1024];
    char *kb = NULL, *eb = NULL, *body = NULL;
    const char *hdrs[5];
    struct http_req_opts opts = {0};
    int rc = DA_ENOMEM;

    kb = malloc(B64_ENCODED_SIZE(w->klen));
    eb = malloc(B64_ENCODED_SIZE(w->elen));
    if (!o || !cr || !kb || !eb)
        goto out;
    b64_encode(w->key, w->klen, kb);
    b64_encode(w->end, w->elen, eb);
    snprintf(revbuf, sizeof revbuf, "%" PRId64, w->next_rev);
    if (json_object_set_new(cr, "key", json_string(kb)) ||
        (w->elen && json_object_set_new(cr, "range_end", json_string(eb))) ||
        json_object_set_new(cr, "start_revision", json_string(revbuf)) ||
        json_object_set(o, "create_request", cr))
        goto out;
    if (!(body = json_dumps(o, JSON_COMPACT)))
        goto out;

    w->endpoint = c->cur;
    etcd__headers(c, hdrs, auth, sizeof auth);
    snprintf(url, sizeof url, "%s/v3/watch", c->endpoints[c->cur]);
    opts.url = url;
    opts.body = body;
    opts.body_len = strlen(body);
    opts.headers = hdrs;
    opts.connect_timeout_ms = c->timeout_ms;
    opts.max_body = c->max_reply;
    opts.on_chunk = on_chunk;
    opts.tls = &c->tls;
    opts.keepalive_idle_s = c->ka_idle;
    opts.keepalive_intvl_s = c->ka_intvl;
    opts.keepalive_cnt = c->ka_cnt;
    c->requests++;
    rc = http_request(c->streams, &opts, stream_done, w, &w->req);
out:
    json_decref(o);
    json_decref(cr);
    free(kb);
    free(eb);
    free(body);
    return rc;
}

/* Does whatever comes next: wait for a token, read the range, or stream. */
static void step(etcd_watch *w)
{
    int rc;

    if (w->stopped || w->req || w->range)
        return;
    uv_timer_stop(&w->timer);
    if (etcd__need_token(w->c)) {
        w->waiting_auth = true;
        return;
    }
    if (w->need_snapshot) {
        rc = etcd_range(w->c, w->key, w->klen, w->elen ? w->end : NULL, w->elen, 0, 0,
                        range_done, w, &w->range);
    } else {
        rc = stream_start(w);
    }
    if (rc < 0) {
        report_down(w, rc);
        retry_later(w);
    }
}

/* ---- client hooks ------------------------------------------------------ */

void etcd__watches_moved(etcd_client *c)
{
    /* A stream on the old endpoint may hang silently (a frozen member keeps
     * its TCP connections open), so streams are moved at once rather than
     * left to notice. */
    for (etcd_watch *w = c->watches; w; w = w->next) {
        if (w->req && w->endpoint != c->cur) {
            http_cancel(w->req);
            w->req = NULL;
            w->live = false;
            w->len = 0;
            step(w);
        }
    }
}

void etcd__watches_token(etcd_client *c, int err)
{
    for (etcd_watch *w = c->watches; w; w = w->next) {
        if (!w->waiting_auth)
            continue;
        w->waiting_auth = false;
        if (err) {
            report_down(w, err);
            retry_later(w);
        } else {
            step(w);
        }
    }
}

static void watch_closed(uv_handle_t *h)
{
    etcd_watch *w = h->data;

    free(w->key);
    free(w->end);
    free(w->line);
    free(w);
}

void etcd_watch_stop(etcd_watch *w)
{
    etcd_client *c;

    if (!w || w->stopped)
        return;
    c = w->c;
    w->stopped = true;
    if (w->req)
        http_cancel(w->req);
    w->req = NULL;
    etcd_call_cancel(w->range);
    w->range = NULL;
    if (w->prev)
        w->prev->next = w->next;
    else
        c->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, watch_closed);
}

void etcd__watches_free(etcd_client *c)
{
    while (c->watches)
        etcd_watch_stop(c->watches);
}

int etcd_watch_start(etcd_client *c, const char *key, size_t klen, const char *range_end,
                     size_t relen, int64_t start_revision, etcd_watch_cb cb, void *arg,
                     etcd_watch **out)
{
    etcd_watch *w;

    if (!klen || !cb)
        return DA_EINVAL;
    w = calloc(1, sizeof *w);
    if (!w)
        return DA_ENOMEM;
    w->key = malloc(klen);
    w->end = malloc(relen ? relen : 1);
    if (!w->key || !w->end) {
        free(w->key);
        free(w->end);
        free(w);
        return DA_ENOMEM;
    }
    memcpy(w->key, key, klen);
    w->klen = klen;
    if (range_end)
        memcpy(w->end, range_end, relen);
    w->elen = range_end ? relen : 0;
    w->c = c;
    w->cb = cb;
    w->arg = arg;
    w->next_rev = start_revision;
    w->need_snapshot = start_revision <= 0;
    uv_timer_init(c->loop, &w->timer);
    w->timer.data = w;
    w->next = c->watches;
    if (c->watches)
        c->watches->prev = w;
    c->watches = w;
    if (out)
        *out = w;
    /* The first step runs from the loop, so the caller has its handle
     * before any callback. */
    uv_timer_start(&w->timer, timer_fired, 0, 0);
    return 0;
}

bool etcd_watch_live(const etcd_watch *w)
{
    return w->live;
}

int64_t etcd_watch_revision(const etcd_watch *w)
{
    return w->next_rev - 1;
}
