/* The xDS server's gRPC transport; see xds_grpc.h for the contract.
 *
 * gRPC runs only while somebody uses it. C-core's threads (timers,
 * executors, event engine) wake up about once a second each and hold a
 * few MiB, whether or not a client ever comes, and most agents have no
 * xDS client most of the time. So the agent listens itself, on plain
 * non-blocking sockets polled by the loop, and a "core" (grpc_init(), a
 * server, its completion queue and the thread that drains it) starts only
 * when a connection has sent its first bytes; each accepted socket is
 * handed to that server with grpc_server_add_channel_from_fd(). Once no
 * ADS stream has been open and no connection has come for idle_ms, the
 * core is shut down and grpc_shutdown() ends C-core's threads (1.51 joins
 * them before returning when it is called from a thread of ours); the
 * next connection starts another core. Only one core exists at a time:
 * a connection that comes while one is shutting down waits for the end.
 *
 * Each stream owns one tag per kind of batch (new call, receive, send,
 * status, close), and each kind has at most one batch in flight, so a tag
 * can carry its own link for the hand-over list: the completion thread
 * never allocates. A stream is freed once its call has closed (the
 * RECV_CLOSE_ON_SERVER batch completed) and no batch of it is in flight. */
#include "xds_grpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
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

#include "error.h"
#include "fdlimit.h"
#include "log.h"
#include "xds_listen.h"

#define DEFAULT_MAX_STREAMS 1024
#define DEFAULT_MAX_MESSAGE (1024 * 1024)
#define DEFAULT_IDLE_MS 60000
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

enum tag_kind { T_NEW, T_RECV, T_SEND, T_STATUS, T_CLOSE, T_SHUTDOWN };

struct core;

struct tag {
    enum tag_kind kind;
    xgrpc_stream *st;  /* NULL for T_SHUTDOWN */
    int ok;
    struct tag *next;  /* on the hand-over list */
};

struct xgrpc_stream {
    struct core *c;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    struct tag t_new, t_recv, t_send, t_status, t_close;
    grpc_byte_buffer *recv_buf;
    grpc_byte_buffer *send_buf;
    grpc_slice status_details;
    int cancelled;
    int pending;       /* batches in flight */
    bool linked;       /* on c->streams */
    bool open;         /* an ADS stream whose on_close has not run */
    bool closed;       /* the call is over */
    bool md_sent;      /* initial metadata went out */
    bool sending;
    bool finishing, status_started;
    int status_code;
    char *peer;        /* ours (malloc) */
    void *data;
    xgrpc_stream *prev, *next;
};

/* One run of C-core, from the connection that started it to the end of
 * the linger after its last stream. */
struct core {
    xgrpc *g;
    grpc_server *server;
    grpc_completion_queue *cq;
    grpc_server_credentials *creds;
    uv_thread_t thread;
    uv_async_t async;
    uv_mutex_t mu;
    struct tag *head, *tail; /* completed, for the loop; under mu */
    bool cq_done;            /* the thread has seen the queue's end; under mu */
    struct tag t_shutdown;
    xgrpc_stream *streams;
    size_t n_open;           /* ADS streams whose on_close has not run */
    bool stopping;
};

struct listener {
    xgrpc *g;
    uv_poll_t poll;
    int fd;
    bool tcp;
    bool polled;             /* poll is initialized: its close closes fd */
};

/* A connection accepted while no core runs, until it sends something: a
 * peer that only checks that the socket is alive (a second agent at its
 * start, a monitoring probe) then costs no gRPC start. */
struct pending {
    xgrpc *g;
    uv_poll_t poll;
    int fd;                  /* -1 once handed to C-core */
    char *peer;
    bool ready;              /* it has sent bytes: it wants gRPC */
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
    uv_timer_t idle;         /* the linger: stops the core when it fires */
    uv_timer_t retry;        /* listens again after running out of fds */
    uint64_t last_refuse_warn;
    size_t refused;          /* connections refused since the last warning */
    struct pending *pending; /* newest first */
    size_t n_pending;
    struct core *core;       /* running, or NULL */
    struct core *stopping;   /* shutting down, or NULL */
    char **peers;            /* by fd: who is on a socket given to C-core */
    size_t n_peers;
    uint64_t starts;
    int handles;             /* uv handles whose close callback has not run */
    bool closing;
    char *path;
    bool made;               /* the socket file at path is ours: dev, ino */
    dev_t dev;
    ino_t ino;
    int tcp_port;
};

static void idle_arm(xgrpc *g);

/* ---- the completion thread ---------------------------------------------- */

static void cq_thread(void *arg)
{
    struct core *c = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        bool end = ev.type == GRPC_QUEUE_SHUTDOWN;

        uv_mutex_lock(&c->mu);
        if (end) {
            c->cq_done = true;
        } else if (ev.type == GRPC_OP_COMPLETE) {
            struct tag *t = ev.tag;
            t->ok = ev.success;
            t->next = NULL;
            if (c->tail)
                c->tail->next = t;
            else
                c->head = t;
            c->tail = t;
        }
        uv_mutex_unlock(&c->mu);
        uv_async_send(&c->async);
        if (end)
            return;
    }
}

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

/* C-core knows a socket handed to it only as "fd:N": remember who is on
 * fd. The table grows to the highest fd handed over; an entry is replaced
 * when its number comes back. Steals peer. */
static void peer_set(xgrpc *g, int fd, char *peer)
{
    if ((size_t)fd >= g->n_peers) {
        size_t n = g->n_peers ? g->n_peers : 16;
        char **v;

        while (n <= (size_t)fd)
            n *= 2;
        if (!(v = realloc(g->peers, n * sizeof *v))) {
            free(peer);
            return;
        }
        memset(v + g->n_peers, 0, (n - g->n_peers) * sizeof *v);
        g->peers = v;
        g->n_peers = n;
    }
    free(g->peers[fd]);
    g->peers[fd] = peer;
}

/* The call's peer, "fd:N" turned back into the address accepted on N.
 * New (malloc), or NULL when out of memory. */
static char *call_peer(xgrpc *g, grpc_call *call)
{
    char *p = grpc_call_get_peer(call), *end, *out;
    const char *known = NULL;
    long fd;

    if (p && !strncmp(p, "fd:", 3)) {
        errno = 0;
        fd = strtol(p + 3, &end, 10);
        if (!errno && end != p + 3 && !*end && fd >= 0 && (size_t)fd < g->n_peers)
            known = g->peers[fd];
    }
    out = strdup(known ? known : p ? p : "?");
    gpr_free(p);
    return out;
}

/* ---- streams ------------------------------------------------------------ */

static void stream_init_tags(xgrpc_stream *st)
{
    struct tag *tags[] = {&st->t_new, &st->t_recv, &st->t_send, &st->t_status, &st->t_close};
    enum tag_kind kinds[] = {T_NEW, T_RECV, T_SEND, T_STATUS, T_CLOSE};

    for (size_t i = 0; i < sizeof tags / sizeof *tags; i++) {
        tags[i]->kind = kinds[i];
        tags[i]->st = st;
    }
}

static void stream_free(xgrpc_stream *st)
{
    struct core *c = st->c;

    if (st->linked) {
        if (st->prev)
            st->prev->next = st->next;
        else
            c->streams = st->next;
        if (st->next)
            st->next->prev = st->prev;
    }
    if (st->call)
        grpc_call_unref(st->call);
    if (st->recv_buf)
        grpc_byte_buffer_destroy(st->recv_buf);
    if (st->send_buf)
        grpc_byte_buffer_destroy(st->send_buf);
    grpc_slice_unref(st->status_details);
    grpc_call_details_destroy(&st->details);
    grpc_metadata_array_destroy(&st->md);
    free(st->peer);
    free(st);
}

static void maybe_free(xgrpc_stream *st)
{
    if ((st->closed || !st->call) && st->pending == 0)
        stream_free(st);
}

static bool batch(xgrpc_stream *st, const grpc_op *ops, size_t n, struct tag *t)
{
    grpc_call_error e = grpc_call_start_batch(st->call, ops, n, t, NULL);

    if (e != GRPC_CALL_OK) {
        log_error("xds: cannot start a gRPC batch on stream %s: error %d", xgrpc_stream_peer(st),
                  (int)e);
        grpc_call_cancel(st->call, NULL);
        return false;
    }
    st->pending++;
    return true;
}

/* Asks gRPC for the next incoming call. */
static void request_next(struct core *c)
{
    xgrpc_stream *st = calloc(1, sizeof *st);
    grpc_call_error e;

    if (!st) {
        log_error("xds: out of memory: no more xDS streams are accepted");
        return;
    }
    st->c = c;
    stream_init_tags(st);
    st->status_details = grpc_empty_slice();
    grpc_call_details_init(&st->details);
    grpc_metadata_array_init(&st->md);
    e = grpc_server_request_call(c->server, &st->call, &st->details, &st->md, c->cq, c->cq,
                                 &st->t_new);
    if (e != GRPC_CALL_OK) {
        log_error("xds: cannot ask gRPC for calls: error %d", (int)e);
        stream_free(st);
        return;
    }
    st->pending = 1;
}

static void start_recv(xgrpc_stream *st)
{
    grpc_op op;

    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &st->recv_buf;
    batch(st, &op, 1, &st->t_recv);
}

static void start_status(xgrpc_stream *st)
{
    grpc_op ops[2];
    size_t n = 0;

    st->status_started = true;
    memset(ops, 0, sizeof ops);
    if (!st->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        st->md_sent = true;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)st->status_code;
    ops[n].data.send_status_from_server.status_details = &st->status_details;
    n++;
    batch(st, ops, n, &st->t_status);
}

/* Ends a call that is not an ADS stream we serve, in one batch. */
static void reject(xgrpc_stream *st, grpc_status_code code, const char *why)
{
    grpc_op ops[3];

    memset(ops, 0, sizeof ops);
    grpc_slice_unref(st->status_details);
    st->status_details = grpc_slice_from_copied_string(why);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = code;
    ops[1].data.send_status_from_server.status_details = &st->status_details;
    ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[2].data.recv_close_on_server.cancelled = &st->cancelled;
    st->md_sent = st->status_started = st->finishing = true;
    if (!batch(st, ops, 3, &st->t_close))
        st->closed = true;
}

static void on_new(struct core *c, xgrpc_stream *st, int ok)
{
    xgrpc *g = c->g;
    grpc_op op;

    st->pending--;
    if (!ok || c->stopping) {
        /* The server is shutting down: unref cancels a call we got. */
        stream_free(st);
        return;
    }
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    st->linked = true;
    request_next(c);
    st->peer = call_peer(g, st->call);
    if (grpc_slice_str_cmp(st->details.method, XGRPC_METHOD)) {
        char *m = grpc_slice_to_c_string(st->details.method);
        log_debug("xds: %s called %s: UNIMPLEMENTED", xgrpc_stream_peer(st), m ? m : "?");
        gpr_free(m);
        reject(st, GRPC_STATUS_UNIMPLEMENTED, "this server serves only " XGRPC_METHOD);
        maybe_free(st);
        return;
    }
    if (c->n_open >= g->max_streams) {
        log_warn("xds: %zu xDS streams are open, the most allowed: refusing %s", c->n_open,
                 xgrpc_stream_peer(st));
        reject(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "too many xDS streams on this agent");
        maybe_free(st);
        return;
    }
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &st->cancelled;
    if (!batch(st, &op, 1, &st->t_close)) {
        st->closed = true;
        maybe_free(st);
        return;
    }
    st->open = true;
    c->n_open++;
    start_recv(st);
    g->cb.on_open(st, g->arg);
}

static void on_recv(struct core *c, xgrpc_stream *st, int ok)
{
    xgrpc *g = c->g;
    grpc_byte_buffer *buf = st->recv_buf;

    st->pending--;
    st->recv_buf = NULL;
    if (ok && buf) {
        grpc_byte_buffer_reader r;
        if (st->open && !st->finishing && grpc_byte_buffer_reader_init(&r, buf)) {
            grpc_slice s = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            g->cb.on_message(st, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), g->arg);
            grpc_slice_unref(s);
        }
        grpc_byte_buffer_destroy(buf);
        if (st->open && !st->finishing && !st->closed && !c->stopping)
            start_recv(st);
    } else if (ok && st->open) {
        /* The client half-closed: it wants nothing more. */
        xgrpc_finish(st, GRPC_STATUS_OK, "");
    }
    maybe_free(st);
}

static void on_send(struct core *c, xgrpc_stream *st, int ok)
{
    st->pending--;
    st->sending = false;
    if (st->send_buf) {
        grpc_byte_buffer_destroy(st->send_buf);
        st->send_buf = NULL;
    }
    if (st->finishing && !st->status_started && !st->closed)
        start_status(st);
    else if (ok && st->open && !st->finishing)
        c->g->cb.on_sent(st, c->g->arg);
    maybe_free(st);
}

static void on_close(struct core *c, xgrpc_stream *st)
{
    xgrpc *g = c->g;

    st->pending--;
    st->closed = true;
    if (st->open) {
        st->open = false;
        c->n_open--;
        g->cb.on_close(st, g->arg);
        idle_arm(g);
    }
    maybe_free(st);
}

/* ---- the core: C-core's server, while somebody uses it ------------------- */

/* The last uv handle of g has closed: free it (after xgrpc_close()). */
static void handle_closed(xgrpc *g)
{
    if (--g->handles > 0 || !g->closing)
        return;
    for (size_t i = 0; i < g->n_peers; i++)
        free(g->peers[i]);
    free(g->peers);
    free(g->path);
    free(g);
}

static void pending_serve(xgrpc *g);

static void core_closed(uv_handle_t *h)
{
    struct core *c = h->data;
    xgrpc *g = c->g;
    bool was_stopping = g->stopping == c;

    uv_mutex_destroy(&c->mu);
    grpc_server_credentials_release(c->creds);
    free(c);
    /* The last reference (unless a gRPC health check holds one): C-core's
     * threads end here. */
    grpc_shutdown();
    if (was_stopping) {
        g->stopping = NULL;
        /* A connection that came meanwhile starts the next core. */
        pending_serve(g);
    }
    handle_closed(g);
}

/* The thread has drained the queue: nothing of gRPC's can call us now. */
static void finish_close(struct core *c)
{
    uv_thread_join(&c->thread);
    while (c->streams) {
        xgrpc_stream *st = c->streams;
        st->pending = 0;
        st->closed = true;
        stream_free(st);
    }
    grpc_server_destroy(c->server);
    grpc_completion_queue_destroy(c->cq);
    uv_close((uv_handle_t *)&c->async, core_closed);
}

/* Runs the completions the thread has handed over. */
static void core_drain(struct core *c)
{
    struct tag *list;
    bool done;

    uv_mutex_lock(&c->mu);
    list = c->head;
    c->head = c->tail = NULL;
    done = c->cq_done;
    uv_mutex_unlock(&c->mu);

    while (list) {
        struct tag *t = list;
        list = t->next;
        switch (t->kind) {
        case T_NEW:
            on_new(c, t->st, t->ok);
            break;
        case T_RECV:
            on_recv(c, t->st, t->ok);
            break;
        case T_SEND:
            on_send(c, t->st, t->ok);
            break;
        case T_STATUS:
            t->st->pending--;
            maybe_free(t->st);
            break;
        case T_CLOSE:
            on_close(c, t->st);
            break;
        case T_SHUTDOWN:
            /* Every call has been cancelled; what they still have in
             * flight completes before the queue reports its end. */
            grpc_completion_queue_shutdown(c->cq);
            break;
        }
    }
    if (done)
        finish_close(c);
}

static void on_async(uv_async_t *h)
{
    core_drain(h->data);
}

/* Shuts down a server whose thread never started, on this thread. */
static void teardown_sync(grpc_server *server, grpc_completion_queue *cq)
{
    struct tag t = {.kind = T_SHUTDOWN};
    grpc_event ev;

    grpc_server_shutdown_and_notify(server, cq, &t);
    do
        ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    while (!(ev.type == GRPC_OP_COMPLETE && ev.tag == &t));
    grpc_server_destroy(server);
    grpc_completion_queue_shutdown(cq);
    do
        ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    while (ev.type != GRPC_QUEUE_SHUTDOWN);
    grpc_completion_queue_destroy(cq);
}

/* Initializes gRPC and starts a server with no port: its connections
 * come from hand_over(). 0 with g->core set, or a negative code with
 * nothing left running. */
static int core_start(xgrpc *g)
{
    struct core *c = calloc(1, sizeof *c);
    grpc_arg args[2];
    grpc_channel_args ca = {2, args};

    if (!c)
        return DA_ENOMEM;
    if (uv_mutex_init(&c->mu) < 0) {
        free(c);
        return DA_ENOMEM;
    }
    c->g = g;
    c->t_shutdown.kind = T_SHUTDOWN;
    grpc_init();
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)g->max_message;
    /* Idle clients keep their stream for good; a dead peer on TCP is
     * found by keepalive pings rather than never. Sockets handed over
     * take the server's arguments. */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_KEEPALIVE_TIME_MS;
    args[1].value.integer = 60000;
    c->server = grpc_server_create(&ca, NULL);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(c->server, c->cq, NULL);
    grpc_server_start(c->server);
    /* grpc_server_add_channel_from_fd() takes insecure credentials only:
     * the socket's permissions (and loopback) are the access control. */
    c->creds = grpc_insecure_server_credentials_create();
    if (uv_async_init(g->loop, &c->async, on_async) < 0)
        goto fail;
    c->async.data = c;
    g->handles++;
    if (uv_thread_create(&c->thread, cq_thread, c) < 0) {
        teardown_sync(c->server, c->cq);
        uv_close((uv_handle_t *)&c->async, core_closed); /* frees c, grpc_shutdown() */
        return DA_ENOMEM;
    }
    request_next(c);
    g->core = c;
    g->starts++;
    return 0;
fail:
    teardown_sync(c->server, c->cq);
    grpc_server_credentials_release(c->creds);
    uv_mutex_destroy(&c->mu);
    free(c);
    grpc_shutdown();
    return DA_ENOMEM;
}

/* Cancels every stream (on_close for each open one, now) and shuts the
 * server down; core_closed() ends it once the queue is drained. */
static void core_stop(xgrpc *g)
{
    struct core *c = g->core;

    g->core = NULL;
    g->stopping = c;
    c->stopping = true;
    uv_timer_stop(&g->idle);
    for (xgrpc_stream *st = c->streams; st; st = st->next) {
        if (st->open) {
            st->open = false;
            c->n_open--;
            g->cb.on_close(st, g->arg);
        }
    }
    grpc_server_shutdown_and_notify(c->server, c->cq, &c->t_shutdown);
    grpc_server_cancel_all_calls(c->server);
}

static void on_idle(uv_timer_t *t)
{
    xgrpc *g = t->data;
    struct core *c = g->core;

    if (!c)
        return;
    /* Completions already handed over may open a stream: run them first. */
    core_drain(c);
    if (g->core != c || c->n_open > 0)
        return;
    log_info("xds: no xDS stream for %llu ms: gRPC stops until the next connection",
             (unsigned long long)g->idle_ms);
    core_stop(g);
}

/* The linger restarts when the last stream ends and at every new
 * connection, so that a client connecting just as it ends is not cut. */
static void idle_arm(xgrpc *g)
{
    if (g->core && g->core->n_open == 0 && !g->closing)
        uv_timer_start(&g->idle, on_idle, g->idle_ms, 0);
}

/* Gives fd (and peer) to the running core, which owns them from here. */
static void hand_over(xgrpc *g, int fd, char *peer)
{
    log_debug("xds: connection from %s", peer ? peer : "?");
    peer_set(g, fd, peer);
    grpc_server_add_channel_from_fd(g->core->server, fd, g->core->creds);
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
    int rc;

    if (g->closing || g->stopping || !g->pending)
        return;
    for (p = g->pending; p && !ready; p = p->next)
        if (p->ready)
            ready = p;
    if (!g->core && !ready)
        return;
    if (!g->core) {
        if ((rc = core_start(g)) < 0) {
            log_error("xds: cannot start gRPC: %s; closing %zu xDS connection(s)",
                      da_strerror(rc), g->n_pending);
            while (g->pending)
                pending_close(g->pending);
            return;
        }
        log_info("xds: gRPC started for a connection from %s",
                 ready->peer ? ready->peer : "?");
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
    if ((rc = xlisten_check_path(o->path, err, errlen)) < 0) {
        if (errlen && !err[0])
            snprintf(err, errlen, "cannot use %s: %s", o->path, strerror(-rc));
        return rc;
    }
    g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(o->path))) {
        free(g);
        snprintf(err, errlen, "out of memory");
        return DA_ENOMEM;
    }
    g->loop = loop;
    g->cb = *cb;
    g->arg = arg;
    g->max_streams = o->max_streams ? o->max_streams : DEFAULT_MAX_STREAMS;
    g->max_message = o->max_message ? o->max_message : DEFAULT_MAX_MESSAGE;
    g->idle_ms = o->idle_ms ? o->idle_ms : DEFAULT_IDLE_MS;
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

int xgrpc_send(xgrpc_stream *st, const uint8_t *data, size_t len)
{
    grpc_op ops[2];
    grpc_slice s;
    size_t n = 0;

    if (!st->open || st->finishing || st->closed || st->c->stopping)
        return DA_ECANCELED;
    if (st->sending)
        return DA_EINVAL;
    s = grpc_slice_from_copied_buffer((const char *)data, len);
    st->send_buf = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    memset(ops, 0, sizeof ops);
    if (!st->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        st->md_sent = true;
    }
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = st->send_buf;
    n++;
    if (!batch(st, ops, n, &st->t_send)) {
        grpc_byte_buffer_destroy(st->send_buf);
        st->send_buf = NULL;
        return DA_ECANCELED;
    }
    st->sending = true;
    return 0;
}

void xgrpc_finish(xgrpc_stream *st, int code, const char *message)
{
    if (st->finishing || st->closed)
        return;
    st->finishing = true;
    st->status_code = code;
    grpc_slice_unref(st->status_details);
    st->status_details = grpc_slice_from_copied_string(message ? message : "");
    if (!st->sending)
        start_status(st);
}

void xgrpc_stream_set_data(xgrpc_stream *st, void *data)
{
    st->data = data;
}

void *xgrpc_stream_data(const xgrpc_stream *st)
{
    return st->data;
}

const char *xgrpc_stream_peer(const xgrpc_stream *st)
{
    return st->peer ? st->peer : "?";
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
