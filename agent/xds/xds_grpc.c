/* The xDS server's gRPC transport; see xds_grpc.h for the contract.
 *
 * gRPC runs only while somebody uses it, and is mapped only once somebody
 * has. C-core's threads (timers, executors, event engine) wake up about
 * once a second each and hold a few MiB, and its libraries (gRPC, abseil,
 * libstdc++) cost more MiB the moment they are loaded, whether or not a
 * client ever comes; most agents have no xDS client most of the time. So
 * the agent listens itself, on plain non-blocking sockets polled by the
 * loop, and a "core" (the gRPC module's server: grpc_init(), a server,
 * its completion queue and the thread that drains it; grpc_module.h)
 * starts only when a connection has sent its first bytes, the module
 * being loaded the first time; each accepted socket is handed to that
 * server. Once no ADS stream has been open and no connection has come for
 * idle_ms, the core is shut down and grpc_shutdown() ends C-core's threads
 * (the module stays mapped: gRPC's libraries do not unload cleanly); the
 * next connection starts another core. Only one core exists at a time: a
 * connection that comes while one is shutting down waits for the end.
 *
 * Without the module (not installed, or of another version), every
 * connection that speaks is closed with the reason logged; the agent and
 * its other front ends go on. */
#include "xds_grpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "defaults.h"
#include "error.h"
#include "fdlimit.h"
#include "grpc_module.h"
#include "log.h"
#include "xds_listen.h"

#define DEFAULT_MAX_STREAMS 1024
#define DEFAULT_MAX_MESSAGE (1024 * 1024)
#define DEFAULT_IDLE_MS DA_DEFAULT_XDS_IDLE_MS
/* TCP addresses one xds.tcp may stand for ("localhost": 127.0.0.1, ::1). */
#define MAX_TCP 4
/* Connections that have sent nothing yet while no core runs; past it the
 * oldest is closed (a real client speaks at once). */
#define MAX_PENDING 64
/* Accepts per wake-up of a listener, so that a flood cannot hold the loop. */
#define ACCEPT_BURST 32
/* How long listening pauses when the process is out of descriptors. */
#define ACCEPT_RETRY_MS 1000
/* At most one line per this long about connections refused. */
#define ACCEPT_WARN_MS 10000
#define PEER_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) + 16)

struct listener {
    xgrpc *g;
    uv_poll_t poll;
    int fd;
    bool tcp;
    bool polled; /* poll is initialized: its close closes fd */
};

/* A connection accepted while no core runs, until it sends something: a
 * peer that only checks that the socket is alive (a second agent at its
 * start, a monitoring probe) then costs no gRPC start. */
struct pending {
    xgrpc *g;
    uv_poll_t poll;
    int fd; /* -1 once handed to C-core */
    char *peer;
    bool ready; /* it has sent bytes: it wants gRPC */
    struct pending *prev, *next;
};

struct xgrpc {
    uv_loop_t *loop;
    struct xgrpc_callbacks cb;
    void *arg;
    size_t max_streams, max_message;
    uint64_t idle_ms;
    struct listener ls[1 + MAX_TCP];
    size_t n_ls;
    uv_timer_t idle;  /* the linger: stops the core when it fires */
    uv_timer_t retry; /* listens again after running out of fds */
    uint64_t last_refuse_warn;
    size_t refused;          /* connections refused since the last warning */
    struct pending *pending; /* newest first */
    size_t n_pending;
    const struct da_grpc_module *m; /* loaded with the first core */
    gm_xds *core;                   /* running, or NULL */
    gm_xds *stopping;               /* shutting down, or NULL */
    size_t n_open;                  /* ADS streams whose on_close has not run */
    uint64_t starts;
    int handles; /* uv handles whose close callback has not run */
    bool closing;
    char *path;
    bool made; /* the socket file at path is ours: dev, ino */
    dev_t dev;
    ino_t ino;
    int tcp_port;
};

static void idle_arm(xgrpc *g);

/* ---- peers -------------------------------------------------------------- */

/* "unix:", "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", as gRPC names the
 * peers of the sockets it accepts itself. NULL when out of memory. */
static char *peer_name(const struct sockaddr_storage *ss, socklen_t len)
{
    char ip[INET6_ADDRSTRLEN] = "", out[PEER_MAX];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(out, sizeof out, "ipv4:%s:%u", ip, (unsigned)ntohs(a->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(out, sizeof out, "ipv6:[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
    } else if (ss->ss_family == AF_UNIX) {
        const struct sockaddr_un *a = (const struct sockaddr_un *)ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        size_t n = (size_t)len > off ? (size_t)len - off : 0;
        /* A client's socket is unnamed (or abstract): "unix:". */
        snprintf(out, sizeof out, "unix:%.*s", (int)strnlen(a->sun_path, n), a->sun_path);
    } else {
        snprintf(out, sizeof out, "unknown:");
    }
    return strdup(out);
}

/* ---- the core: C-core's server in the module, while somebody uses it ---- */

/* The last uv handle of g has closed: free it (after xgrpc_close()). A
 * core counts as one handle until the module says it has stopped. */
static void handle_closed(xgrpc *g)
{
    if (--g->handles > 0 || !g->closing)
        return;
    free(g->path);
    free(g);
}

static void pending_serve(xgrpc *g);

/* The module's callbacks: streams go to the caller's, counted here for
 * the linger. */
static void core_on_open(xgrpc_stream *st, void *arg)
{
    xgrpc *g = arg;

    g->n_open++;
    g->cb.on_open(st, g->arg);
}

static void core_on_message(xgrpc_stream *st, const uint8_t *data, size_t len, void *arg)
{
    xgrpc *g = arg;

    g->cb.on_message(st, data, len, g->arg);
}

static void core_on_sent(xgrpc_stream *st, void *arg)
{
    xgrpc *g = arg;

    g->cb.on_sent(st, g->arg);
}

static void core_on_close(xgrpc_stream *st, void *arg)
{
    xgrpc *g = arg;

    g->n_open--;
    g->cb.on_close(st, g->arg);
    idle_arm(g);
}

/* The core that was stopping is gone, its threads with it (unless a gRPC
 * health check holds gRPC too). */
static void core_on_stopped(void *arg)
{
    xgrpc *g = arg;

    g->stopping = NULL;
    /* A connection that came meanwhile starts the next core. */
    pending_serve(g);
    handle_closed(g);
}

/* Loads the module (the first time) and starts a server with no port: its
 * connections come from hand_over(). 0 with g->core set, or a negative
 * code with the reason in err and nothing left running. */
static int core_start(xgrpc *g, char *err, size_t errlen)
{
    static const struct gm_xds_callbacks cb = {
        core_on_open, core_on_message, core_on_sent, core_on_close, core_on_stopped,
    };
    int rc;

    if (!g->m && !(g->m = grpc_module_get("xDS", err, errlen)))
        return DA_ENOENT;
    if ((rc = g->m->xds_start(&g->core, g->loop, g->max_streams, g->max_message, &cb, g)) < 0) {
        snprintf(err, errlen, "cannot start gRPC: %s", da_strerror(rc));
        return rc;
    }
    g->handles++;
    g->starts++;
    return 0;
}

/* Cancels every stream (on_close for each open one, now) and shuts the
 * server down; core_on_stopped() follows once it is gone. */
static void core_stop(xgrpc *g)
{
    gm_xds *c = g->core;

    g->core = NULL;
    g->stopping = c;
    uv_timer_stop(&g->idle);
    g->m->xds_stop(c);
}

static void on_idle(uv_timer_t *t)
{
    xgrpc *g = t->data;
    gm_xds *c = g->core;

    if (!c)
        return;
    /* Completions already handed over may open a stream: run them first. */
    g->m->xds_run(c);
    if (g->core != c || g->n_open > 0)
        return;
    log_info("xds: no xDS stream for %llu ms: gRPC stops until the next connection",
             (unsigned long long)g->idle_ms);
    core_stop(g);
}

/* The linger restarts when the last stream ends and at every new
 * connection, so that a client connecting just as it ends is not cut. */
static void idle_arm(xgrpc *g)
{
    if (g->core && g->n_open == 0 && !g->closing)
        uv_timer_start(&g->idle, on_idle, g->idle_ms, 0);
}

/* Gives fd (and peer) to the running core, which owns them from here. */
static void hand_over(xgrpc *g, int fd, char *peer)
{
    log_debug("xds: connection from %s", peer ? peer : "?");
    g->m->xds_add_fd(g->core, fd, peer);
    idle_arm(g);
}

/* ---- connections waiting for their first bytes ---------------------------- */

static void pending_closed(uv_handle_t *h)
{
    struct pending *p = h->data;
    xgrpc *g = p->g;

    if (p->fd >= 0)
        close(p->fd);
    free(p->peer);
    free(p);
    handle_closed(g);
}

static void pending_close(struct pending *p)
{
    xgrpc *g = p->g;

    if (p->prev)
        p->prev->next = p->next;
    else
        g->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    g->n_pending--;
    /* Synchronously out of the loop's epoll set: fd may go to C-core. */
    uv_close((uv_handle_t *)&p->poll, pending_closed);
}

/* Starts a core if a waiting connection has spoken, and hands every
 * waiting connection to the running core. */
static void pending_serve(xgrpc *g)
{
    struct pending *p, *ready = NULL;
    char why[1024];

    if (g->closing || g->stopping || !g->pending)
        return;
    for (p = g->pending; p && !ready; p = p->next)
        if (p->ready)
            ready = p;
    if (!g->core && !ready)
        return;
    if (!g->core) {
        if (core_start(g, why, sizeof why) < 0) {
            log_error("xds: %s; closing %zu xDS connection(s)", why, g->n_pending);
            while (g->pending)
                pending_close(g->pending);
            return;
        }
        log_info("xds: gRPC started for a connection from %s", ready->peer ? ready->peer : "?");
    }
    while (g->pending) {
        int fd;
        char *peer;

        p = g->pending;
        fd = p->fd;
        peer = p->peer;
        p->fd = -1;
        p->peer = NULL;
        pending_close(p);
        hand_over(g, fd, peer);
    }
}

static void on_pending(uv_poll_t *h, int status, int events)
{
    struct pending *p = h->data;
    char b;
    ssize_t n;

    (void)events;
    if (status < 0) {
        pending_close(p);
        return;
    }
    /* Peeked, not read: the bytes stay for C-core. */
    n = recv(p->fd, &b, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        log_debug("xds: %s closed before sending anything", p->peer ? p->peer : "?");
        pending_close(p);
        return;
    }
    p->ready = true;
    uv_poll_stop(&p->poll);
    pending_serve(p->g);
}

/* Steals fd and peer. */
static void pending_add(xgrpc *g, int fd, char *peer)
{
    struct pending *p = calloc(1, sizeof *p);

    if (!p || uv_poll_init(g->loop, &p->poll, fd) < 0) {
        log_error("xds: out of memory: closing the connection from %s", peer ? peer : "?");
        close(fd);
        free(peer);
        free(p);
        return;
    }
    if (g->n_pending >= MAX_PENDING) {
        struct pending *old = g->pending;
        while (old->next)
            old = old->next;
        log_warn("xds: %zu connections have sent nothing yet: closing the oldest, from %s",
                 g->n_pending, old->peer ? old->peer : "?");
        pending_close(old);
    }
    p->g = g;
    p->fd = fd;
    p->peer = peer;
    p->poll.data = p;
    g->handles++;
    p->next = g->pending;
    if (g->pending)
        g->pending->prev = p;
    g->pending = p;
    g->n_pending++;
    uv_poll_start(&p->poll, UV_READABLE, on_pending);
}

/* ---- listening ------------------------------------------------------------ */

static void on_listen(uv_poll_t *h, int status, int events);

static void listen_resume(uv_timer_t *t)
{
    xgrpc *g = t->data;

    for (size_t i = 0; i < g->n_ls; i++)
        uv_poll_start(&g->ls[i].poll, UV_READABLE, on_listen);
}

/* Out of descriptors (or memory): the pending connection would wake the
 * loop again at once, so listening pauses for a while. */
static void listen_pause(xgrpc *g, int err)
{
    log_warn("xds: cannot accept xDS connections: %s; trying again in %d ms", strerror(err),
             ACCEPT_RETRY_MS);
    for (size_t i = 0; i < g->n_ls; i++)
        uv_poll_stop(&g->ls[i].poll);
    uv_timer_start(&g->retry, listen_resume, ACCEPT_RETRY_MS, 0);
}

/* Closes a connection that would take a descriptor kept for the agent's
 * own work; says so at most once per ACCEPT_WARN_MS. */
static void refuse(xgrpc *g, int fd)
{
    uint64_t now = uv_now(g->loop);

    close(fd);
    g->refused++;
    if (g->last_refuse_warn != 0 && now - g->last_refuse_warn < ACCEPT_WARN_MS)
        return;
    g->last_refuse_warn = now ? now : 1;
    log_warn("xds: refused %zu connection(s): clients hold every file descriptor but the %d "
             "kept for etcd, health checks and files (RLIMIT_NOFILE %ld)",
             g->refused, FDLIMIT_RESERVE, fdlimit_get());
    g->refused = 0;
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    struct listener *l = h->data;
    xgrpc *g = l->g;

    (void)events;
    if (status < 0) {
        listen_pause(g, -status);
        return;
    }
    for (int i = 0; i < ACCEPT_BURST && !g->closing; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int one = 1;

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                listen_pause(g, errno);
            return;
        }
        /* The descriptors above the reserve's line are the agent's own
         * (fdlimit.h); a gRPC client sees the close as UNAVAILABLE. */
        if (!fdlimit_client_ok(fd)) {
            refuse(g, fd);
            continue;
        }
        /* As gRPC's own listener does: small frames go out at once. */
        if (l->tcp)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (g->core)
            hand_over(g, fd, peer_name(&ss, len));
        else
            pending_add(g, fd, peer_name(&ss, len));
    }
}

/* The socket file, if it is still the one we made (a new agent may have
 * made another). */
static void unlink_ours(xgrpc *g)
{
    struct stat st;

    if (g->made && lstat(g->path, &st) == 0 && st.st_dev == g->dev && st.st_ino == g->ino)
        unlink(g->path);
}

static void listener_add(xgrpc *g, int fd, bool tcp)
{
    struct listener *l = &g->ls[g->n_ls++];

    l->g = g;
    l->fd = fd;
    l->tcp = tcp;
}

static int listen_unix(xgrpc *g, const char *path, unsigned mode, char *err, size_t errlen)
{
    int fd = xlisten_unix(path, mode, &g->dev, &g->ino, err, errlen);

    if (fd < 0)
        return fd;
    g->made = true;
    listener_add(g, fd, false);
    return 0;
}

static int listen_tcp(xgrpc *g, const char *hostport, char *err, size_t errlen)
{
    int fds[MAX_TCP];
    int n = xlisten_tcp(hostport, fds, MAX_TCP, &g->tcp_port, err, errlen);

    for (int i = 0; i < n; i++)
        listener_add(g, fds[i], true);
    return n < 0 ? n : 0;
}

/* ---- start and close ------------------------------------------------------ */

static void listener_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    xgrpc *g = l->g;

    close(l->fd);
    handle_closed(g);
}

static void timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

/* Closes what g holds; g goes with its last handle (now, if it has none). */
static void close_all(xgrpc *g)
{
    g->closing = true;
    g->handles++; /* g must outlive this function */
    if (g->core)
        core_stop(g);
    for (size_t i = 0; i < g->n_ls; i++) {
        if (g->ls[i].polled) {
            uv_close((uv_handle_t *)&g->ls[i].poll, listener_closed);
        } else {
            close(g->ls[i].fd);
            g->handles--;
        }
    }
    g->n_ls = 0;
    unlink_ours(g);
    while (g->pending)
        pending_close(g->pending);
    uv_close((uv_handle_t *)&g->idle, timer_closed);
    uv_close((uv_handle_t *)&g->retry, timer_closed);
    handle_closed(g);
}

int xgrpc_start(xgrpc **out, uv_loop_t *loop, const struct xgrpc_options *o,
                const struct xgrpc_callbacks *cb, void *arg, char *err, size_t errlen)
{
    xgrpc *g;
    int rc;

    *out = NULL;
    if (errlen)
        err[0] = '\0';
    if (o->listen_fd <= 0 && (rc = xlisten_check_path(o->path, err, errlen)) < 0) {
        if (errlen && !err[0])
            snprintf(err, errlen, "cannot use %s: %s", o->path, strerror(-rc));
        return rc;
    }
    g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(o->path))) {
        free(g);
        if (o->listen_fd > 0)
            close(o->listen_fd);
        snprintf(err, errlen, "out of memory");
        return DA_ENOMEM;
    }
    g->loop = loop;
    g->cb = *cb;
    g->arg = arg;
    g->max_streams = o->max_streams ? o->max_streams : DEFAULT_MAX_STREAMS;
    g->max_message = o->max_message ? o->max_message : DEFAULT_MAX_MESSAGE;
    g->idle_ms = o->idle_ms ? o->idle_ms : DEFAULT_IDLE_MS;
    rc = 0;
    if (o->listen_fd > 0)
        listener_add(g, o->listen_fd, false); /* socket activation: g->made stays false */
    else
        rc = listen_unix(g, o->path, o->mode, err, errlen);
    if (!rc && o->tcp)
        rc = listen_tcp(g, o->tcp, err, errlen);
    if (rc) {
        for (size_t i = 0; i < g->n_ls; i++)
            close(g->ls[i].fd);
        unlink_ours(g);
        free(g->path);
        free(g);
        return rc;
    }
    /* Counted before they exist: close_all() closes each exactly once. */
    g->handles = 2 + (int)g->n_ls;
    uv_timer_init(loop, &g->idle);
    uv_timer_init(loop, &g->retry);
    g->idle.data = g->retry.data = g;
    for (size_t i = 0; i < g->n_ls; i++) {
        struct listener *l = &g->ls[i];
        if ((rc = uv_poll_init(loop, &l->poll, l->fd)) == 0) {
            l->polled = true;
            l->poll.data = l;
            rc = uv_poll_start(&l->poll, UV_READABLE, on_listen);
        }
        if (rc < 0) {
            snprintf(err, errlen, "cannot watch the xDS socket: %s", uv_strerror(rc));
            close_all(g);
            return DA_ENOMEM;
        }
    }
    *out = g;
    return 0;
}

/* ---- streams: the caller's side ----------------------------------------- */

/* A stream exists only while a core runs, so the module is loaded and this
 * returns it at once (one module serves every xgrpc). */
static const struct da_grpc_module *mod(void)
{
    return grpc_module_get("xDS", NULL, 0);
}

int xgrpc_send(xgrpc_stream *st, const uint8_t *data, size_t len)
{
    return mod()->stream_send(st, data, len);
}

void xgrpc_finish(xgrpc_stream *st, int code, const char *message)
{
    mod()->stream_finish(st, code, message);
}

void xgrpc_stream_set_data(xgrpc_stream *st, void *data)
{
    mod()->stream_set_data(st, data);
}

void *xgrpc_stream_data(const xgrpc_stream *st)
{
    return mod()->stream_data(st);
}

const char *xgrpc_stream_peer(const xgrpc_stream *st)
{
    return mod()->stream_peer(st);
}

int xgrpc_tcp_port(const xgrpc *g)
{
    return g ? g->tcp_port : 0;
}

bool xgrpc_running(const xgrpc *g)
{
    return g && g->core;
}

uint64_t xgrpc_starts(const xgrpc *g)
{
    return g ? g->starts : 0;
}

void xgrpc_close(xgrpc *g)
{
    if (!g || g->closing)
        return;
    close_all(g);
}
