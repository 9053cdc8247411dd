/* The one watch stream that every watch of a client shares.
 *
 * etcd's gateway reads the body of a /v3/watch request as it arrives, one
 * WatchRequest (JSON) after another, and streams one WatchResponse per line
 * back, each naming its watch_id: the multiplexing etcd's own clients do
 * over gRPC. So the client keeps one request open whose body never ends
 * (http.h: open_body), a watch sends its create_request on it (and a
 * cancel_request when it stops), and each line goes to the watch it names
 * (etcd_watch.c). 1,000 watches cost one connection rather than 1,000, and
 * a few hundred bytes each rather than ~20 KB of curl state and a socket.
 *
 * The stream lives on one endpoint. When it ends (error, member gone, a
 * malformed line), every watch on it is told and the stream opens again
 * after a backoff; each watch then creates itself anew from its own last
 * delivered revision + 1. Stream-wide problems (no leader, a bad token, a
 * line that does not parse) end the stream; a watch's own (a compacted
 * revision, a cancel) stay with that watch.
 *
 * One quirk of the gateway (etcd 3.4, Go's HTTP/1.1 server), measured: it
 * writes the response's status line only after it has read a second
 * request line past the first, and a line is only read when it arrives,
 * so a stream whose only line is one create_request never answers (it did
 * not within 5 s; with a second line it answered at once). Once the
 * response has begun, every reply comes at once. So until the first line
 * comes back, the stream sends a progress_request (harmless: etcd answers
 * it with watch_id -1, which no watch has) every PUMP_MS, for at most
 * PUMP_MAX times; measured, the first reply then comes after 2 or 3. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "etcd.h"
#include "etcd_internal.h"
#include "etcd_parse.h"
#include "log.h"
#include "metrics.h"

#define PUMP_MS 20
#define PUMP_MAX 100

struct etcd_wstream {
    etcd_client *c;
    http_req *req;     /* the open request, or NULL */
    size_t endpoint;   /* where it went */
    bool waiting_auth; /* opens once a token comes */
    bool restart_now;  /* ended on purpose: open again at once */
    int last_err;      /* why the stream ended, when it ended itself */
    struct backoff backoff;
    uv_timer_t timer; /* backoff */
    uv_timer_t pump;  /* progress_requests until the first reply */
    int pumps;        /* sent on this stream */
    uint64_t opened;  /* uv_now when it was opened */
    bool answered;    /* a line came back on this stream */
    int handles;      /* timers not yet closed; freed at 0 */
    char *line;       /* a line not yet complete */
    size_t len, cap;
    unsigned gen; /* counts streams closed: a callback may close one */
};

static void ws_open(struct etcd_wstream *ws);

static void ws_timer_fired(uv_timer_t *t)
{
    ws_open(t->data);
}

static void ws_retry_later(struct etcd_wstream *ws)
{
    uv_timer_start(&ws->timer, ws_timer_fired, backoff_next(&ws->backoff), 0);
}

/* ---- lines ------------------------------------------------------------ */

/* Handles one complete line. Returns 0 to go on, 1 to end the stream. */
static int handle_line(struct etcd_wstream *ws, const char *line, size_t len)
{
    etcd_client *c = ws->c;
    struct etcd_watch_msg m;
    struct etcd_error e;
    int rc;

    rc = etcd_parse_watch_line(line, len, &m, &e);
    if (rc) {
        if (rc == DA_ENOLEADER)
            etcd__endpoint_failed(c, ws->endpoint, rc, e.message);
        else if (rc == DA_EAUTH)
            etcd__token_invalid(c);
        log_warn("etcd: watch stream: %s", rc == DA_EPROTO ? "malformed watch line" : e.message);
        ws->last_err = rc;
        return 1;
    }
    backoff_reset(&ws->backoff); /* etcd answers: the next failure starts afresh */
    if (!ws->answered) {
        ws->answered = true;
        uv_timer_stop(&ws->pump);
    }
    rc = etcd__watches_message(c, &m);
    etcd_watch_msg_clear(&m);
    if (rc) {
        /* A token etcd no longer takes: the stream carries it, so a new
         * stream (after a new token) is the fix, not a backoff. */
        ws->restart_now = rc == DA_EAUTH;
        ws->last_err = rc;
        return 1;
    }
    return 0;
}

static int on_chunk(http_req *req, const char *data, size_t len, void *arg)
{
    struct etcd_wstream *ws = arg;
    unsigned gen = ws->gen;
    const char *nl;

    (void)req;
    while (len > 0) {
        nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        if (ws->len + take > ws->c->max_reply) {
            log_warn("etcd: watch stream: a line passed %zu bytes", ws->c->max_reply);
            ws->last_err = DA_EMSGSIZE;
            return 1;
        }
        if (nl && ws->len == 0) {
            /* A whole line in the chunk: parsed where it is, no copy. */
            if (take > 0 && handle_line(ws, data, take))
                return 1;
            if (ws->gen != gen)
                return 1; /* a watch's callback closed the stream */
            data += take + 1;
            len -= take + 1;
            continue;
        }
        if (ws->len + take + 1 > ws->cap) {
            size_t cap = ws->cap ? ws->cap : 4096;
            while (cap < ws->len + take + 1)
                cap *= 2;
            char *p = realloc(ws->line, cap);
            if (!p) {
                ws->last_err = DA_ENOMEM;
                return 1;
            }
            ws->line = p;
            ws->cap = cap;
        }
        memcpy(ws->line + ws->len, data, take);
        ws->len += take;
        if (!nl)
            break;
        data += take + 1;
        len -= take + 1;
        size_t n = ws->len;
        ws->len = 0;
        if (n > 0 && handle_line(ws, ws->line, n))
            return 1;
        if (ws->gen != gen)
            return 1;
    }
    return 0;
}

/* ---- the request -------------------------------------------------------- */

static void ws_done(http_req *req, int err, long status, const char *body, size_t len, void *arg)
{
    struct etcd_wstream *ws = arg;
    etcd_client *c = ws->c;

    (void)body;
    (void)len;
    ws->req = NULL;
    ws->len = 0;
    ws->gen++;
    if (err && err != DA_ECANCELED) {
        etcd__endpoint_failed(c, ws->endpoint, err, http_req_errtext(req));
        ws->last_err = err;
    } else if (!err && status != 200) {
        ws->last_err = status == 503 ? DA_ENOLEADER : DA_EHTTP;
        if (status == 503)
            etcd__endpoint_failed(c, ws->endpoint, DA_ENOLEADER, "HTTP 503");
    } else if (!err) {
        /* The member closed a healthy stream (it is shutting down). */
        ws->last_err = DA_ETRANSPORT;
    }
    if (ws->restart_now) {
        ws->restart_now = false;
        etcd__watches_stream_down(c, 0, false);
        ws_open(ws);
        return;
    }
    etcd__watches_stream_down(c, ws->last_err, true);
    if (c->watches && !ws->req)
        ws_retry_later(ws);
}

static int ws_start(struct etcd_wstream *ws)
{
    etcd_client *c = ws->c;
    char url[1024], auth[1024];
    const char *hdrs[5];
    struct http_req_opts opts = {0};

    ws->endpoint = c->cur;
    ws->last_err = 0;
    etcd__headers(c, hdrs, auth, sizeof auth);
    snprintf(url, sizeof url, "%s/v3/watch", c->endpoints[c->cur]);
    opts.url = url;
    opts.headers = hdrs;
    opts.connect_timeout_ms = c->timeout_ms;
    opts.max_body = c->max_reply;
    opts.on_chunk = on_chunk;
    opts.open_body = true;
    opts.tls = &c->tls;
    opts.keepalive_idle_s = c->ka_idle;
    opts.keepalive_intvl_s = c->ka_intvl;
    opts.keepalive_cnt = c->ka_cnt;
    c->requests++;
    return http_request(c->streams, &opts, ws_done, ws, &ws->req);
}

/* A stream that has not answered within etcd.timeout is given up as its
 * member's failure. A member restarted without a quorum (the whole cluster
 * coming back) takes the request and never answers it: the fleet benchmark
 * found every agent's watches stuck that way for good after a cluster
 * outage, with the lease and the registrations back and every list stale. */
static void stream_unanswered(struct etcd_wstream *ws)
{
    etcd_client *c = ws->c;

    uv_timer_stop(&ws->pump);
    http_cancel(ws->req);
    ws->req = NULL;
    ws->len = 0;
    ws->gen++;
    ws->last_err = DA_ETIMEDOUT;
    log_warn("etcd: watch stream: %s did not answer within %ld ms", c->endpoints[ws->endpoint],
             c->timeout_ms);
    etcd__endpoint_failed(c, ws->endpoint, DA_ETIMEDOUT, "the watch stream did not answer");
    etcd__watches_stream_down(c, DA_ETIMEDOUT, true);
    if (c->watches && !ws->req)
        ws_retry_later(ws);
}

static void pump_fired(uv_timer_t *t)
{
    static const char progress[] = "{\"progress_request\":{}}\n";
    struct etcd_wstream *ws = t->data;

    if (!ws->req || ws->answered) {
        uv_timer_stop(&ws->pump);
        return;
    }
    if (uv_now(ws->c->loop) - ws->opened >= (uint64_t)ws->c->timeout_ms) {
        stream_unanswered(ws);
        return;
    }
    /* Past PUMP_MAX the timer only watches the clock. */
    if (++ws->pumps <= PUMP_MAX)
        http_req_send(ws->req, progress, sizeof progress - 1);
}

/* Opens the stream if it is closed and may open now. */
static void ws_open(struct etcd_wstream *ws)
{
    etcd_client *c = ws->c;
    int rc;

    if (ws->req || ws->waiting_auth || !c->watches)
        return;
    uv_timer_stop(&ws->timer);
    if (etcd__need_token(c)) {
        ws->waiting_auth = true;
        return;
    }
    if ((rc = ws_start(ws)) < 0) {
        ws->req = NULL;
        etcd__watches_stream_down(c, rc, true);
        ws_retry_later(ws);
        return;
    }
    ws->answered = false;
    ws->pumps = 0;
    ws->opened = uv_now(c->loop);
    uv_timer_start(&ws->pump, pump_fired, PUMP_MS, PUMP_MS);
    metrics.watch_stream_connects++;
    etcd__watches_stream_open(c);
}

/* ---- what etcd_watch.c and etcd.c call ---------------------------------- */

static struct etcd_wstream *get(etcd_client *c)
{
    struct etcd_wstream *ws = c->ws;

    if (ws)
        return ws;
    if (!(ws = calloc(1, sizeof *ws)))
        return NULL;
    ws->c = c;
    ws->backoff = ETCD_WATCH_BACKOFF;
    uv_timer_init(c->loop, &ws->timer);
    uv_timer_init(c->loop, &ws->pump);
    ws->timer.data = ws->pump.data = ws;
    ws->handles = 2;
    c->ws = ws;
    return ws;
}

int etcd__ws_open(etcd_client *c)
{
    struct etcd_wstream *ws = get(c);

    if (!ws)
        return DA_ENOMEM;
    /* In backoff, the timer opens it. */
    if (!uv_is_active((uv_handle_t *)&ws->timer))
        ws_open(ws);
    return 0;
}

bool etcd__ws_is_open(const etcd_client *c)
{
    return c->ws && c->ws->req;
}

int etcd__ws_send(etcd_client *c, const char *line, size_t len)
{
    if (!etcd__ws_is_open(c))
        return DA_EINVAL;
    return http_req_send(c->ws->req, line, len);
}

void etcd__ws_close(etcd_client *c)
{
    struct etcd_wstream *ws = c->ws;

    if (!ws)
        return;
    if (ws->req)
        http_cancel(ws->req);
    ws->req = NULL;
    ws->len = 0;
    ws->gen++;
    backoff_reset(&ws->backoff);
    ws->waiting_auth = false;
    uv_timer_stop(&ws->timer);
    uv_timer_stop(&ws->pump);
    free(ws->line);
    ws->line = NULL;
    ws->cap = 0;
}

void etcd__ws_moved(etcd_client *c)
{
    struct etcd_wstream *ws = c->ws;

    /* A stream on the old endpoint may hang silently (a frozen member keeps
     * its TCP connections open), so it moves at once rather than waiting
     * to notice. */
    if (!ws || !ws->req || ws->endpoint == c->cur)
        return;
    http_cancel(ws->req);
    ws->req = NULL;
    ws->len = 0;
    ws->gen++;
    backoff_reset(&ws->backoff);
    etcd__watches_stream_down(c, 0, false);
    ws_open(ws);
}

void etcd__ws_token(etcd_client *c, int err)
{
    struct etcd_wstream *ws = c->ws;

    if (!ws || !ws->waiting_auth)
        return;
    ws->waiting_auth = false;
    if (err) {
        etcd__watches_stream_down(c, err, true);
        ws_retry_later(ws);
    } else {
        ws_open(ws);
    }
}

static void ws_closed(uv_handle_t *h)
{
    struct etcd_wstream *ws = h->data;

    if (--ws->handles > 0)
        return;
    free(ws->line);
    free(ws);
}

void etcd__ws_free(etcd_client *c)
{
    struct etcd_wstream *ws = c->ws;

    if (!ws)
        return;
    if (ws->req)
        http_cancel(ws->req);
    ws->req = NULL;
    ws->gen++;
    c->ws = NULL;
    uv_close((uv_handle_t *)&ws->timer, ws_closed);
    uv_close((uv_handle_t *)&ws->pump, ws_closed);
}
