/* The HTTP listener on the agent's loop: one libmicrohttpd daemon per
 * address of http.listen, each in MHD's epoll mode with no thread. Its
 * epoll descriptor is watched by a uv_poll_t and MHD_run() runs when it is
 * readable; MHD_get_timeout() after each run sets a uv_timer_t that runs
 * it again, for idle connections to time out. MHD's own threads would read
 * the agent's parts (cache, registry, session) from another thread, and all
 * of that state lives on the loop with no lock; run from the loop, every
 * handler is just another callback of it.
 *
 * The one request that waits is /status.json: it asks etcd for its member
 * status, like `agentctl status`. Its connection is suspended meanwhile
 * (MHD_suspend_connection) and resumed from the etcd callback; the resume
 * wakes MHD's epoll descriptor, and so the loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "validate.h"
#include "web_internal.h"

/* The longest reply body: a /metrics of a host watching a few thousand
 * services stays well under it. */
#define WEB_MAX_BODY (16u * 1024 * 1024)

struct web_listener {
    web *w;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t timer;
    int port;
    char addr[VALIDATE_ADDRESS_MAX + 1];
};

/* A /status.json request waiting for etcd. */
struct web_req {
    web *w;
    struct MHD_Connection *conn;
    struct web_listener *l;
    proto_status_query *q;
    char *body; /* the status as JSON once it came; NULL: unavailable */
    bool done;
    struct web_req *prev, *next;
};

/* ---- the reply buffer ----------------------------------------------------- */

void web__buf_init(struct web_buf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

static bool buf_room(struct web_buf *b, size_t n)
{
    size_t cap;
    char *p;

    if (b->failed)
        return false;
    if (b->len + n + 1 <= b->cap)
        return true;
    if (b->len + n + 1 > b->max) {
        b->failed = true;
        return false;
    }
    cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1)
        cap *= 2;
    if (cap > b->max)
        cap = b->max;
    if (!(p = realloc(b->p, cap))) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void web__buf_add(struct web_buf *b, const char *s, size_t n)
{
    if (!buf_room(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void web__buf_printf(struct web_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->failed)
        return;
    va_start(ap, fmt);
    n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if (b->p && b->len + (size_t)n < b->cap) {
        b->len += (size_t)n;
        return;
    }
    if (!buf_room(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void web__buf_free(struct web_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- replies ------------------------------------------------------------- */

/* The page's policy: its own inline script and style, fetches to itself,
 * nothing from anywhere else. */
#define PAGE_CSP                                                                                   \
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "                  \
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "                     \
    "frame-ancestors 'none'"

/* Queues a reply; body is copied unless mode says otherwise. */
static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    enum MHD_Result rc;

    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free((void *)body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (!strncmp(type, "text/html", 9))
        MHD_add_response_header(r, "Content-Security-Policy", PAGE_CSP);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    return reply(c, status, "text/plain; charset=utf-8", text, strlen(text), MHD_RESPMEM_MUST_COPY);
}

static enum MHD_Result reply_buf(struct MHD_Connection *c, const char *type, struct web_buf *b)
{
    if (b->failed || !b->p) {
        web__buf_free(b);
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    /* The buffer goes to MHD, which frees it with the response. */
    return reply(c, MHD_HTTP_OK, type, b->p, b->len, MHD_RESPMEM_MUST_FREE);
}

/* ---- the endpoints ---------------------------------------------------------- */

static enum MHD_Result serve_metrics(struct web_listener *l, struct MHD_Connection *c,
                                     void **req_cls)
{
    struct web_buf b;

    (void)req_cls;
    web__buf_init(&b, WEB_MAX_BODY);
    web__metrics(l->w, &b);
    return reply_buf(c, "text/plain; version=0.0.4; charset=utf-8", &b);
}

/* Answering at all is the proof: the handler runs on the agent's loop. */
static enum MHD_Result serve_healthz(struct web_listener *l, struct MHD_Connection *c,
                                     void **req_cls)
{
    (void)l;
    (void)req_cls;
    return reply_text(c, MHD_HTTP_OK, "ok: the agent's loop is running\n");
}

static enum MHD_Result serve_readyz(struct web_listener *l, struct MHD_Connection *c,
                                    void **req_cls)
{
    char why[256], text[300];
    bool ready = l->w->d.ready(l->w->d.ready_arg, why, sizeof why);

    (void)req_cls;
    snprintf(text, sizeof text, "%s: %s\n", ready ? "ready" : "not ready", why);
    return reply_text(c, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text);
}

static enum MHD_Result serve_page(struct web_listener *l, struct MHD_Connection *c, void **req_cls)
{
    (void)l;
    (void)req_cls;
    return reply(c, MHD_HTTP_OK, "text/html; charset=utf-8", web__page, web__page_len,
                 MHD_RESPMEM_PERSISTENT);
}

static void req_unlink(struct web_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (r->w->reqs == r)
        r->w->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void run_soon(struct web_listener *l);

static void status_came(json_t *status, void *arg)
{
    struct web_req *r = arg;

    r->q = NULL;
    r->done = true;
    if (status) {
        r->body = json_dumps(status, JSON_COMPACT);
        json_decref(status);
    }
    req_unlink(r);
    MHD_resume_connection(r->conn);
    run_soon(r->l);
}

static enum MHD_Result reply_status(struct web_req *r)
{
    char *body = r->body;

    r->body = NULL;
    if (!body)
        return reply_text(r->conn, MHD_HTTP_SERVICE_UNAVAILABLE, "status unavailable\n");
    return reply(r->conn, MHD_HTTP_OK, "application/json", body, strlen(body),
                 MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result serve_status(struct web_listener *l, struct MHD_Connection *c,
                                    void **req_cls)
{
    struct web_req *r = calloc(1, sizeof *r);
    json_t *now = NULL;
    enum MHD_Result rc;

    if (!r)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    r->w = l->w;
    r->l = l;
    r->conn = c;
    if (proto_status_start(l->w->d.proto, l->w->d.server, &now, status_came, r, &r->q) < 0) {
        free(r);
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    if (now) {
        r->body = json_dumps(now, JSON_COMPACT);
        json_decref(now);
        rc = reply_status(r);
        free(r);
        return rc;
    }
    /* Freed when the request completes (on_completed), whatever happens. */
    *req_cls = r;
    r->next = l->w->reqs;
    if (r->next)
        r->next->prev = r;
    l->w->reqs = r;
    MHD_suspend_connection(c);
    return MHD_YES;
}

typedef enum MHD_Result (*web_handler)(struct web_listener *l, struct MHD_Connection *c,
                                       void **req_cls);

/* Every path the listener serves; anything else is 404. */
static const struct route {
    const char *path;
    web_handler fn;
} routes[] = {
    {"/metrics", serve_metrics}, {"/healthz", serve_healthz},    {"/readyz", serve_readyz},
    {"/", serve_page},           {"/status.json", serve_status},
};

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct web_listener *l = cls;
    struct web_req *r = *req_cls;

    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    if (r && r->done)
        return reply_status(r); /* resumed: the status came */
    if (r)
        return MHD_YES;
    /* Read-only: nothing but GET and HEAD, whatever the path. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path))
            return routes[i].fn(l, c, req_cls);
    return reply_text(c, MHD_HTTP_NOT_FOUND,
                      "not found: try /, /metrics, /healthz, /readyz or /status.json\n");
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct web_req *r = *req_cls;

    (void)cls;
    (void)c;
    (void)toe;
    if (!r)
        return;
    *req_cls = NULL;
    proto_status_cancel(r->q);
    req_unlink(r);
    free(r->body);
    free(r);
}

/* MHD's own complaints (a client's malformed request, mostly): debug. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct web_listener *l = cls;
    char line[512];
    size_t n;

    if (log_level > LOG_LVL_DEBUG)
        return;
    vsnprintf(line, sizeof line, fmt, ap);
    n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_debug("http: %s: %s", l->addr, line);
}

/* ---- MHD on the loop -------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

/* Runs MHD, then arms the timer for what it must do next without a socket
 * event (a connection timing out, a resumed connection). */
static void run_mhd(struct web_listener *l)
{
    MHD_UNSIGNED_LONG_LONG ms = 0;

    if (!l->mhd)
        return;
    MHD_run(l->mhd);
    if (MHD_get_timeout(l->mhd, &ms) == MHD_YES)
        uv_timer_start(&l->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&l->timer);
}

static void on_timer(uv_timer_t *t)
{
    run_mhd(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run_mhd(p->data);
}

static void run_soon(struct web_listener *l)
{
    if (l->mhd)
        uv_timer_start(&l->timer, on_timer, 0, 0);
}

/* ---- start and stop ----------------------------------------------------------- */

/* A listening socket for addr, non-blocking and close-on-exec; MHD takes
 * it. Returns the descriptor, or -1 with err saying why and what to do. */
static int listen_on(const char *addr, int *port, char *err, size_t errlen)
{
    struct validate_hostport hp;
    struct sockaddr_storage ss;
    socklen_t sl;
    char why[200];
    int fd, one = 1;

    if (validate_hostport(addr, strlen(addr), VALIDATE_LISTEN, &hp, why, sizeof why) !=
            VALIDATE_OK ||
        !*hp.host) {
        snprintf(err, errlen, "http.listen '%s' is not an IP address and port (%s)", addr,
                 *hp.host ? why : "give the address, e.g. 127.0.0.1:8608");
        return -1;
    }
    memset(&ss, 0, sizeof ss);
    if (!hp.ipv6 && uv_ip4_addr(hp.host, hp.port, (struct sockaddr_in *)&ss) == 0)
        sl = sizeof(struct sockaddr_in);
    else if (hp.ipv6 && uv_ip6_addr(hp.host, hp.port, (struct sockaddr_in6 *)&ss) == 0)
        sl = sizeof(struct sockaddr_in6);
    else {
        snprintf(err, errlen,
                 "http.listen '%s': the host must be an IP address (127.0.0.1, [::1]), "
                 "not a name",
                 addr);
        return -1;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "http.listen '%s': cannot make a socket: %s", addr, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "cannot listen on http.listen '%s': %s; %s", addr, strerror(e),
                 e == EADDRINUSE      ? "another program holds that port: pick another port in "
                                        "http.listen, or set http.enabled: false"
                 : e == EADDRNOTAVAIL ? "no interface of this host has that address: fix "
                                        "http.listen"
                                      : "fix http.listen or set http.enabled: false");
        return -1;
    }
    sl = sizeof ss;
    *port = hp.port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                              : ((struct sockaddr_in6 *)&ss)->sin6_port);
    return fd;
}

static int listener_start(web *w, struct web_listener *l, const char *addr, char *err,
                          size_t errlen)
{
    const union MHD_DaemonInfo *info;
    int fd;

    l->w = w;
    snprintf(l->addr, sizeof l->addr, "%s", addr);
    if ((fd = listen_on(addr, &l->port, err, errlen)) < 0)
        return DA_EINVAL;
    /* No thread: MHD_USE_EPOLL without MHD_USE_INTERNAL_POLLING_THREAD is
     * driven by MHD_run() from our loop. */
    l->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0, NULL,
                              NULL, on_request, l, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)w->o.max_connections,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)w->o.timeout_s,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)w->o.max_request_bytes,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, l, MHD_OPTION_END);
    if (!l->mhd) {
        close(fd);
        snprintf(err, errlen, "cannot serve HTTP on http.listen '%s' (libmicrohttpd refused)",
                 addr);
        return DA_EINVAL;
    }
    info = MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    uv_timer_init(w->d.loop, &l->timer);
    l->timer.data = l;
    if (!info || uv_poll_init(w->d.loop, &l->poll, info->epoll_fd) < 0) {
        snprintf(err, errlen, "cannot watch the HTTP listener of '%s' on the loop", addr);
        return DA_EINVAL;
    }
    l->poll.data = l;
    uv_poll_start(&l->poll, UV_READABLE, on_poll);
    run_mhd(l);
    return 0;
}

static void free_when_closed(uv_handle_t *h)
{
    struct web_listener *l = h->data;
    web *w = l->w;

    /* Two handles per listener, all of one array: the last close frees. */
    if (--w->n_listeners == 0) {
        free(w->listeners);
        free(w);
    }
}

int web_start(web **out, const struct web_options *o, const struct web_deps *d, char *err,
              size_t errlen)
{
    web *w = calloc(1, sizeof *w);
    int rc = 0;

    *out = NULL;
    if (!w || !(w->listeners = calloc(o->n_listen ? o->n_listen : 1, sizeof *w->listeners))) {
        free(w);
        snprintf(err, errlen, "cannot start the HTTP listener: out of memory");
        return DA_ENOMEM;
    }
    w->o = *o;
    w->d = *d;
    for (size_t i = 0; i < o->n_listen; i++) {
        struct web_listener *l = &w->listeners[i];
        if ((rc = listener_start(w, l, o->listen[i], err, errlen)) < 0) {
            /* The one that failed may hold a daemon and a timer already. */
            if (l->mhd || l->timer.loop)
                w->n_listeners = i + 1;
            web_close(w);
            return rc;
        }
        w->n_listeners = i + 1;
        log_info("http: serving /metrics, /healthz, /readyz and the status page on http://%s/",
                 o->listen[i]);
    }
    *out = w;
    return 0;
}

web *web_close(web *w)
{
    size_t n;

    if (!w || w->closing)
        return NULL;
    w->closing = true;
    /* A suspended connection must be resumed before its daemon stops:
     * answer each 503, once, from a last run. */
    while (w->reqs) {
        struct web_req *r = w->reqs;
        proto_status_cancel(r->q);
        r->q = NULL;
        r->done = true;
        req_unlink(r);
        MHD_resume_connection(r->conn);
    }
    n = w->n_listeners;
    if (n == 0) {
        free(w->listeners);
        free(w);
        return NULL;
    }
    w->n_listeners = 0;
    for (size_t i = 0; i < n; i++) {
        struct web_listener *l = &w->listeners[i];
        if (l->mhd) {
            MHD_run(l->mhd);
            MHD_stop_daemon(l->mhd);
            l->mhd = NULL;
        }
        if (l->timer.loop) {
            w->n_listeners++;
            uv_close((uv_handle_t *)&l->timer, free_when_closed);
        }
        if (l->poll.loop) {
            w->n_listeners++;
            uv_close((uv_handle_t *)&l->poll, free_when_closed);
        }
    }
    if (w->n_listeners == 0) {
        free(w->listeners);
        free(w);
    }
    return NULL;
}

int web_port(const web *w)
{
    return w && w->n_listeners ? w->listeners[0].port : 0;
}
