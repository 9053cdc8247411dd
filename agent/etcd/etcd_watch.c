/* Watches: each one's state, on the stream they share.
 *
 * All watches of a client travel on one stream (etcd_watch_stream.c): a
 * watch sends a create_request with its own watch_id and start revision,
 * and the stream hands it the lines that carry that id. A watch goes
 * through these states:
 *   (snapshot) --range--> (on the stream) --stream ends--> (waiting for
 *   the stream) --> (on the stream) ...
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
#include "metrics.h"

struct etcd_watch {
    etcd_client *c;
    char *key, *end;
    size_t klen, elen;
    etcd_watch_cb cb;
    void *arg;

    int64_t next_rev;    /* first revision not yet delivered */
    uint64_t cluster_id; /* of the etcd cluster the receiver's view is from */
    int64_t id;          /* watch_id of its create on the stream; 0: none */
    bool need_snapshot;  /* the next step is a range read */
    bool on_stream;      /* its create was sent on the open stream */
    bool want_stream;    /* waits for the stream to open */
    bool live;           /* the stream said "created" */
    bool down;           /* DOWN was reported and UP not yet */
    bool stopped;
    struct backoff backoff;

    etcd_call *range;
    uv_timer_t timer; /* backoff; the watch is freed in its close callback */

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

    backoff_reset(&w->backoff);
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

/* Tries again after the next backoff. */
static void retry_later(etcd_watch *w)
{
    uv_timer_start(&w->timer, timer_fired, backoff_next(&w->backoff), 0);
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

/* ---- on the stream ---------------------------------------------------- */

/* Sends the watch's create_request: from next_rev, under a new watch_id
 * (etcd 3.4 takes the client's id; a fresh one per create means a late
 * line for an old create never lands on the new one). */
static void send_create(etcd_watch *w)
{
    etcd_client *c = w->c;
    char *kb = malloc(B64_ENCODED_SIZE(w->klen)), *eb = malloc(B64_ENCODED_SIZE(w->elen));
    char *line = NULL;
    size_t len;
    int rc = DA_ENOMEM;

    if (!kb || !eb)
        goto out;
    b64_encode(w->key, w->klen, kb);
    b64_encode(w->end, w->elen, eb);
    len = strlen(kb) + strlen(eb) + 160;
    if (!(line = malloc(len)))
        goto out;
    w->id = ++c->watch_ids;
    snprintf(line, len,
             "{\"create_request\":{\"key\":\"%s\"%s%s%s,\"start_revision\":\"%" PRId64
             "\",\"watch_id\":\"%" PRId64 "\"}}\n",
             kb, w->elen ? ",\"range_end\":\"" : "", w->elen ? eb : "", w->elen ? "\"" : "",
             w->next_rev, w->id);
    rc = etcd__ws_send(c, line, strlen(line));
out:
    free(kb);
    free(eb);
    free(line);
    if (rc < 0) {
        w->id = 0;
        report_down(w, rc);
        retry_later(w);
        return;
    }
    w->on_stream = true;
}

/* Asks etcd to drop the watch's create on the stream (if any). */
static void send_cancel(etcd_watch *w)
{
    char line[96];

    if (w->on_stream && etcd__ws_is_open(w->c)) {
        snprintf(line, sizeof line, "{\"cancel_request\":{\"watch_id\":\"%" PRId64 "\"}}\n", w->id);
        etcd__ws_send(w->c, line, strlen(line));
    }
    w->on_stream = false;
    w->live = false;
    w->id = 0;
}

/* The stream will not deliver for this watch any more: read the range
 * again, then create anew. */
static void resnapshot(etcd_watch *w)
{
    send_cancel(w);
    w->need_snapshot = true;
    step(w);
}

/* One line of the stream for this watch. Returns 0 to go on, or an error
 * that ends the whole stream. */
static int handle(etcd_watch *w, const struct etcd_watch_msg *m)
{
    if (m->canceled) {
        w->on_stream = false;
        w->live = false;
        w->id = 0;
        if (m->compact_revision > 0) {
            metrics.watch_compactions++;
            log_info("etcd: watch on %.*s: revision %" PRId64 " compacted (oldest %" PRId64
                     "); reading the range again",
                     (int)w->klen, w->key, w->next_rev, m->compact_revision);
            w->need_snapshot = true;
            step(w);
            return 0;
        }
        log_warn("etcd: watch on %.*s canceled: %s", (int)w->klen, w->key,
                 m->cancel_reason[0] ? m->cancel_reason : "no reason given");
        if (strstr(m->cancel_reason, "token") || strstr(m->cancel_reason, "permission")) {
            /* The stream's token: every watch on it needs a new one. */
            etcd__token_invalid(w->c);
            return DA_EAUTH;
        }
        report_down(w, DA_EETCD);
        retry_later(w);
        return 0;
    }
    if (m->created && w->cluster_id && m->cluster_id && m->cluster_id != w->cluster_id) {
        /* A different cluster: etcd was wiped and started anew (or the
         * endpoints now name another cluster). Its revisions mean nothing
         * against ours: read the range again. */
        log_warn("etcd: watch on %.*s: etcd is a new cluster (id %" PRIx64 ", was %" PRIx64
                 "); reading the range again",
                 (int)w->klen, w->key, m->cluster_id, w->cluster_id);
        etcd__note_history(w->c, m->cluster_id, m->revision, -1);
        resnapshot(w);
        return 0;
    }
    if (m->created && m->revision > 0 && m->revision < w->next_rev - 1) {
        /* etcd is behind what we delivered: its data was wiped or restored
         * from an old backup. Only a fresh read tells the truth now. */
        log_warn("etcd: watch on %.*s: etcd is at revision %" PRId64 " but we saw %" PRId64
                 " (data wiped?); reading the range again",
                 (int)w->klen, w->key, m->revision, w->next_rev - 1);
        etcd__note_history(w->c, m->cluster_id, m->revision, -1);
        resnapshot(w);
        return 0;
    }
    if (m->created) {
        if (m->cluster_id)
            w->cluster_id = m->cluster_id;
        w->live = true;
        backoff_reset(&w->backoff);
        etcd__endpoint_ok(w->c);
        report_up(w, m->revision);
        if (w->stopped || !w->on_stream)
            return 0;
    }
    if (m->n_events) {
        /* Skip anything at or below what was delivered: a resumed watch
         * starts at next_rev, but a response may straddle it. */
        size_t first = 0;
        while (first < m->n_events && m->events[first].kv.mod_revision < w->next_rev)
            first++;
        if (first < m->n_events) {
            struct etcd_watch_update u = {.kind = ETCD_WATCH_EVENTS};
            metrics.watch_events += m->n_events - first;
            u.events = m->events + first;
            u.n_events = m->n_events - first;
            u.revision = m->events[m->n_events - 1].kv.mod_revision;
            w->next_rev = u.revision + 1;
            report(w, &u);
        }
    }
    return 0;
}

/* Does whatever comes next: read the range, or join the stream. */
static void step(etcd_watch *w)
{
    int rc;

    if (w->stopped || w->range || w->on_stream)
        return;
    uv_timer_stop(&w->timer);
    if (w->need_snapshot) {
        rc = etcd_range(w->c, w->key, w->klen, w->elen ? w->end : NULL, w->elen, 0, 0, range_done,
                        w, &w->range);
        if (rc < 0) {
            w->range = NULL;
            report_down(w, rc);
            retry_later(w);
        }
        return;
    }
    if (etcd__ws_is_open(w->c)) {
        send_create(w);
        return;
    }
    w->want_stream = true;
    if ((rc = etcd__ws_open(w->c)) < 0) {
        w->want_stream = false;
        report_down(w, rc);
        retry_later(w);
    }
}

/* ---- what the stream and the client call -------------------------------- */

int etcd__watches_message(etcd_client *c, const struct etcd_watch_msg *m)
{
    etcd_watch *w;

    for (w = c->watches; w; w = w->next)
        if (w->on_stream && w->id == m->watch_id)
            return handle(w, m);
    if (m->created && m->canceled) {
        /* A create etcd refused without our id (it answers -1 when the
         * create itself is wrong): which watch is unknown, so all go again
         * on a new stream. */
        log_warn("etcd: watch stream: a watch was refused (%s)",
                 m->cancel_reason[0] ? m->cancel_reason : "no reason given");
        return DA_EETCD;
    }
    return 0; /* a line for a watch that was stopped or cancelled */
}

void etcd__watches_stream_open(etcd_client *c)
{
    for (etcd_watch *w = c->watches, *next; w; w = next) {
        next = w->next;
        if (w->stopped || !w->want_stream)
            continue;
        if (!etcd__ws_is_open(c))
            return; /* a callback closed it; the rest wait for the next */
        w->want_stream = false;
        send_create(w);
    }
}

void etcd__watches_stream_down(etcd_client *c, int err, bool tell)
{
    /* A watch stopped by a callback below stays readable until the loop
     * frees it, and keeps its next pointer: the walk goes on past it. */
    for (etcd_watch *w = c->watches, *next; w; w = next) {
        next = w->next;
        if (w->stopped || !(w->on_stream || w->want_stream))
            continue;
        w->on_stream = false;
        w->want_stream = true;
        w->live = false;
        w->id = 0;
        if (tell)
            report_down(w, err);
    }
}

void etcd__watches_moved(etcd_client *c)
{
    etcd__ws_moved(c);
}

void etcd__watches_token(etcd_client *c, int err)
{
    etcd__ws_token(c, err);
}

static void watch_closed(uv_handle_t *h)
{
    etcd_watch *w = h->data;

    free(w->key);
    free(w->end);
    free(w);
}

void etcd_watch_close(etcd_watch *w)
{
    etcd_client *c;

    if (!w || w->stopped)
        return;
    c = w->c;
    send_cancel(w);
    w->stopped = true;
    w->want_stream = false;
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
    if (!c->watches)
        etcd__ws_close(c); /* no watch left: no connection either */
}

void etcd__watches_free(etcd_client *c)
{
    while (c->watches)
        etcd_watch_close(c->watches);
    etcd__ws_free(c);
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
    w->backoff = ETCD_WATCH_BACKOFF;
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
