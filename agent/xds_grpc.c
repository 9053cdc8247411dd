/* The xDS server's gRPC transport; see xds_grpc.h for the contract.
 *
 * Each stream owns one tag per kind of batch (new call, receive, send,
 * status, close), and each kind has at most one batch in flight, so a tag
 * can carry its own link for the hand-over list: the completion thread
 * never allocates. A stream is freed once its call has closed (the
 * RECV_CLOSE_ON_SERVER batch completed) and no batch of it is in flight. */
#include "xds_grpc.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.h"
#include "log.h"

#define DEFAULT_MAX_STREAMS 1024
#define DEFAULT_MAX_MESSAGE (1024 * 1024)

enum tag_kind { T_NEW, T_RECV, T_SEND, T_STATUS, T_CLOSE, T_SHUTDOWN };

struct tag {
    enum tag_kind kind;
    xgrpc_stream *st;  /* NULL for T_SHUTDOWN */
    int ok;
    struct tag *next;  /* on the hand-over list */
};

struct xgrpc_stream {
    xgrpc *g;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    struct tag t_new, t_recv, t_send, t_status, t_close;
    grpc_byte_buffer *recv_buf;
    grpc_byte_buffer *send_buf;
    grpc_slice status_details;
    int cancelled;
    int pending;       /* batches in flight */
    bool linked;       /* on g->streams */
    bool open;         /* an ADS stream whose on_close has not run */
    bool closed;       /* the call is over */
    bool md_sent;      /* initial metadata went out */
    bool sending;
    bool finishing, status_started;
    int status_code;
    char *peer;        /* gpr_malloc()ed by gRPC */
    void *data;
    xgrpc_stream *prev, *next;
};

struct xgrpc {
    uv_loop_t *loop;
    struct xgrpc_callbacks cb;
    void *arg;
    size_t max_streams;
    grpc_server *server;
    grpc_completion_queue *cq;
    uv_thread_t thread;
    uv_async_t async;
    uv_mutex_t mu;
    struct tag *head, *tail; /* completed, for the loop; under mu */
    bool cq_done;            /* the thread has seen the queue's end; under mu */
    struct tag t_shutdown;
    xgrpc_stream *streams;
    size_t n_open;
    bool closing;
    char *path;
    dev_t dev;
    ino_t ino;
    int tcp_port;
};

/* ---- the completion thread ---------------------------------------------- */

static void cq_thread(void *arg)
{
    xgrpc *g = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        bool end = ev.type == GRPC_QUEUE_SHUTDOWN;

        uv_mutex_lock(&g->mu);
        if (end) {
            g->cq_done = true;
        } else if (ev.type == GRPC_OP_COMPLETE) {
            struct tag *t = ev.tag;
            t->ok = ev.success;
            t->next = NULL;
            if (g->tail)
                g->tail->next = t;
            else
                g->head = t;
            g->tail = t;
        }
        uv_mutex_unlock(&g->mu);
        uv_async_send(&g->async);
        if (end)
            return;
    }
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
    xgrpc *g = st->g;

    if (st->linked) {
        if (st->prev)
            st->prev->next = st->next;
        else
            g->streams = st->next;
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
    if (st->peer)
        gpr_free(st->peer);
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
        log_error("xds: cannot start a gRPC batch on stream %s: error %d", st->peer, (int)e);
        grpc_call_cancel(st->call, NULL);
        return false;
    }
    st->pending++;
    return true;
}

/* Asks gRPC for the next incoming call. */
static void request_next(xgrpc *g)
{
    xgrpc_stream *st = calloc(1, sizeof *st);
    grpc_call_error e;

    if (!st) {
        log_error("xds: out of memory: no more xDS streams are accepted");
        return;
    }
    st->g = g;
    stream_init_tags(st);
    st->status_details = grpc_empty_slice();
    grpc_call_details_init(&st->details);
    grpc_metadata_array_init(&st->md);
    e = grpc_server_request_call(g->server, &st->call, &st->details, &st->md, g->cq, g->cq,
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

static void on_new(xgrpc *g, xgrpc_stream *st, int ok)
{
    grpc_op op;

    st->pending--;
    if (!ok || g->closing) {
        /* The server is shutting down: unref cancels a call we got. */
        stream_free(st);
        return;
    }
    st->next = g->streams;
    if (g->streams)
        g->streams->prev = st;
    g->streams = st;
    st->linked = true;
    request_next(g);
    st->peer = grpc_call_get_peer(st->call);
    if (grpc_slice_str_cmp(st->details.method, XGRPC_METHOD)) {
        char *m = grpc_slice_to_c_string(st->details.method);
        log_debug("xds: %s called %s: UNIMPLEMENTED", st->peer, m ? m : "?");
        gpr_free(m);
        reject(st, GRPC_STATUS_UNIMPLEMENTED, "this server serves only " XGRPC_METHOD);
        maybe_free(st);
        return;
    }
    if (g->n_open >= g->max_streams) {
        log_warn("xds: %zu xDS streams are open, the most allowed: refusing %s", g->n_open,
                 st->peer);
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
    g->n_open++;
    start_recv(st);
    g->cb.on_open(st, g->arg);
}

static void on_recv(xgrpc *g, xgrpc_stream *st, int ok)
{
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
        if (st->open && !st->finishing && !st->closed && !g->closing)
            start_recv(st);
    } else if (ok && st->open) {
        /* The client half-closed: it wants nothing more. */
        xgrpc_finish(st, GRPC_STATUS_OK, "");
    }
    maybe_free(st);
}

static void on_send(xgrpc *g, xgrpc_stream *st, int ok)
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
        g->cb.on_sent(st, g->arg);
    maybe_free(st);
}

static void on_close(xgrpc *g, xgrpc_stream *st)
{
    st->pending--;
    st->closed = true;
    if (st->open) {
        st->open = false;
        g->n_open--;
        g->cb.on_close(st, g->arg);
    }
    maybe_free(st);
}

/* ---- the loop side ------------------------------------------------------ */

/* A start that failed after the handle was made. */
static void async_closed_free(uv_handle_t *h)
{
    xgrpc *g = h->data;

    free(g->path);
    free(g);
}

static void async_closed(uv_handle_t *h)
{
    xgrpc *g = h->data;

    uv_mutex_destroy(&g->mu);
    free(g->path);
    free(g);
    grpc_shutdown();
}

/* The socket file, if it is still the one we made (gRPC may have removed
 * it, and a new agent may have made another). */
static void unlink_ours(xgrpc *g)
{
    struct stat st;

    if (g->path && lstat(g->path, &st) == 0 && st.st_dev == g->dev && st.st_ino == g->ino)
        unlink(g->path);
}

/* The thread has drained the queue: nothing of gRPC's can call us now. */
static void finish_close(xgrpc *g)
{
    uv_thread_join(&g->thread);
    while (g->streams) {
        xgrpc_stream *st = g->streams;
        st->pending = 0;
        st->closed = true;
        stream_free(st);
    }
    grpc_server_destroy(g->server);
    grpc_completion_queue_destroy(g->cq);
    unlink_ours(g);
    uv_close((uv_handle_t *)&g->async, async_closed);
}

static void on_async(uv_async_t *h)
{
    xgrpc *g = h->data;
    struct tag *list;
    bool done;

    uv_mutex_lock(&g->mu);
    list = g->head;
    g->head = g->tail = NULL;
    done = g->cq_done;
    uv_mutex_unlock(&g->mu);

    while (list) {
        struct tag *t = list;
        list = t->next;
        switch (t->kind) {
        case T_NEW:
            on_new(g, t->st, t->ok);
            break;
        case T_RECV:
            on_recv(g, t->st, t->ok);
            break;
        case T_SEND:
            on_send(g, t->st, t->ok);
            break;
        case T_STATUS:
            t->st->pending--;
            maybe_free(t->st);
            break;
        case T_CLOSE:
            on_close(g, t->st);
            break;
        case T_SHUTDOWN:
            /* Every call has been cancelled; what they still have in
             * flight completes before the queue reports its end. */
            grpc_completion_queue_shutdown(g->cq);
            break;
        }
    }
    if (done)
        finish_close(g);
}

/* ---- start -------------------------------------------------------------- */

static int mkdirs(const char *path)
{
    char buf[sizeof(((struct sockaddr_un *)0)->sun_path)];
    size_t len = strlen(path);

    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    return 0;
}

/* Refuses a live socket or a file that is no socket; removes a stale
 * socket (gRPC would remove even a live one). */
static int check_path(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "xds.path %s is too long for a unix socket", path);
        return -ENAMETOOLONG;
    }
    if ((rc = mkdirs(path)) < 0) {
        snprintf(err, errlen, "cannot create the folder of %s: %s", path, strerror(-rc));
        return rc;
    }
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; not removing it", path);
        return -EEXIST;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
        close(fd);
        if (rc == 0) {
            snprintf(err, errlen, "another agent is listening on %s", path);
            return -EADDRINUSE;
        }
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove the stale socket %s: %s", path, strerror(errno));
        return -errno;
    }
    return 0;
}

/* Shuts down a server whose thread never started, on this thread. */
static void teardown_sync(grpc_server *server, grpc_completion_queue *cq)
{
    struct tag t = {.kind = T_SHUTDOWN};
    grpc_event ev;

    if (server) {
        grpc_server_shutdown_and_notify(server, cq, &t);
        do
            ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        while (!(ev.type == GRPC_OP_COMPLETE && ev.tag == &t));
        grpc_server_destroy(server);
    }
    grpc_completion_queue_shutdown(cq);
    do
        ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    while (ev.type != GRPC_QUEUE_SHUTDOWN);
    grpc_completion_queue_destroy(cq);
}

int xgrpc_start(xgrpc **out, uv_loop_t *loop, const struct xgrpc_options *o,
                const struct xgrpc_callbacks *cb, void *arg, char *err, size_t errlen)
{
    size_t max_message = o->max_message ? o->max_message : DEFAULT_MAX_MESSAGE;
    grpc_arg args[3];
    grpc_channel_args ca = {3, args};
    grpc_server_credentials *creds;
    xgrpc *g;
    char target[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
    struct stat st;
    mode_t old;
    bool async_made = false;
    int rc, port;

    *out = NULL;
    if (errlen)
        err[0] = '\0';
    if ((rc = check_path(o->path, err, errlen)) < 0) {
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
    g->t_shutdown.kind = T_SHUTDOWN;

    grpc_init();
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)max_message;
    /* Two agents must never share a TCP port, as gRPC's default allows. */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
    args[1].value.integer = 0;
    /* Idle clients keep their stream for good; a dead peer on TCP is
     * found by keepalive pings rather than never. */
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_KEEPALIVE_TIME_MS;
    args[2].value.integer = 60000;
    g->server = grpc_server_create(&ca, NULL);
    g->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(g->server, g->cq, NULL);

    /* gRPC binds (and listens) here: the umask gives the socket its mode
     * from the start, so no client connects through wider permissions. */
    snprintf(target, sizeof target, "unix:%s", o->path);
    creds = grpc_insecure_server_credentials_create();
    old = umask(~o->mode & 0777);
    port = grpc_server_add_http2_port(g->server, target, creds);
    umask(old);
    if (!port) {
        snprintf(err, errlen, "cannot listen on %s (see gRPC's message above)", target);
        rc = -EADDRNOTAVAIL;
    } else if (chmod(o->path, o->mode) < 0 || lstat(o->path, &st) < 0) {
        snprintf(err, errlen, "cannot set the mode of %s: %s", o->path, strerror(errno));
        rc = -errno;
    } else {
        g->dev = st.st_dev;
        g->ino = st.st_ino;
        rc = 0;
    }
    if (!rc && o->tcp) {
        g->tcp_port = grpc_server_add_http2_port(g->server, o->tcp, creds);
        if (!g->tcp_port) {
            snprintf(err, errlen, "cannot listen on %s for xDS (in use?)", o->tcp);
            rc = -EADDRINUSE;
        }
    }
    grpc_server_credentials_release(creds);
    grpc_server_start(g->server);
    if (!rc && uv_mutex_init(&g->mu) < 0) {
        snprintf(err, errlen, "cannot create the xDS server's mutex");
        rc = DA_ENOMEM;
    } else if (!rc && uv_async_init(loop, &g->async, on_async) < 0) {
        snprintf(err, errlen, "cannot create the xDS server's loop handle");
        uv_mutex_destroy(&g->mu);
        rc = DA_ENOMEM;
    } else if (!rc) {
        g->async.data = g;
        if (uv_thread_create(&g->thread, cq_thread, g) < 0) {
            snprintf(err, errlen, "cannot start the xDS completion thread");
            uv_mutex_destroy(&g->mu);
            rc = DA_ENOMEM;
            async_made = true;
        }
    }
    if (rc) {
        teardown_sync(g->server, g->cq);
        unlink_ours(g);
        grpc_shutdown();
        if (async_made) {
            uv_close((uv_handle_t *)&g->async, async_closed_free);
        } else {
            free(g->path);
            free(g);
        }
        return rc;
    }
    request_next(g);
    *out = g;
    return 0;
}

/* ---- streams: the caller's side ----------------------------------------- */

int xgrpc_send(xgrpc_stream *st, const uint8_t *data, size_t len)
{
    grpc_op ops[2];
    grpc_slice s;
    size_t n = 0;

    if (!st->open || st->finishing || st->closed || st->g->closing)
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

void xgrpc_close(xgrpc *g)
{
    if (!g || g->closing)
        return;
    g->closing = true;
    for (xgrpc_stream *st = g->streams; st; st = st->next) {
        if (st->open) {
            st->open = false;
            g->n_open--;
            g->cb.on_close(st, g->arg);
        }
    }
    grpc_server_shutdown_and_notify(g->server, g->cq, &g->t_shutdown);
    grpc_server_cancel_all_calls(g->server);
}
