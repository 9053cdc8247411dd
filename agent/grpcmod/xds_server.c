/* The xDS server's gRPC side, in the module: one run of a C-core server
 * (from the connection that started it to the end of the linger after its
 * last stream, both decided by agent/xds/xds_grpc.c), its ADS streams and
 * their batches. xds_grpc.h has the contract the daemon offers on top.
 *
 * The server has no port: every connection is a socket the daemon
 * accepted and handed over (gm__xds_add_fd(), with
 * grpc_server_add_channel_from_fd()). Completions come through the
 * module's bridge (cq_bridge.c), so every function here runs on the loop.
 *
 * Each stream owns one tag per kind of batch (new call, receive, send,
 * status, close), and each kind has at most one batch in flight. A stream
 * is freed once its call has closed (the RECV_CLOSE_ON_SERVER batch
 * completed) and no batch of it is in flight. */
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "grpcmod_internal.h"

#define XGRPC_METHOD                                                                               \
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"

struct xgrpc_stream {
    gm_xds *c;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    struct gm__tag t_new, t_recv, t_send, t_status, t_close;
    grpc_byte_buffer *recv_buf;
    grpc_byte_buffer *send_buf;
    grpc_slice status_details;
    int cancelled;
    int pending;  /* batches in flight */
    bool linked;  /* on c->streams */
    bool open;    /* an ADS stream whose on_close has not run */
    bool closed;  /* the call is over */
    bool md_sent; /* initial metadata went out */
    bool sending;
    bool finishing, status_started;
    int status_code;
    char *peer; /* ours (malloc) */
    void *data;
    xgrpc_stream *prev, *next;
};

struct gm_xds {
    struct gm__bridge *b;
    grpc_completion_queue *cq; /* the bridge's */
    grpc_server *server;
    grpc_server_credentials *creds;
    struct gm_xds_callbacks cb;
    void *arg;
    size_t max_streams, max_message;
    struct gm__tag t_shutdown;
    xgrpc_stream *streams;
    size_t n_open; /* ADS streams whose on_close has not run */
    bool stopping;
    char **peers; /* by fd: who is on a socket handed over */
    size_t n_peers;
};

/* ---- peers -------------------------------------------------------------- */

/* C-core knows a socket handed to it only as "fd:N": remember who is on
 * fd. The table grows to the highest fd handed over; an entry is replaced
 * when its number comes back. Steals peer. */
static void peer_set(gm_xds *c, int fd, char *peer)
{
    if ((size_t)fd >= c->n_peers) {
        size_t n = c->n_peers ? c->n_peers : 16;
        char **v;

        while (n <= (size_t)fd)
            n *= 2;
        if (!(v = realloc(c->peers, n * sizeof *v))) {
            free(peer);
            return;
        }
        memset(v + c->n_peers, 0, (n - c->n_peers) * sizeof *v);
        c->peers = v;
        c->n_peers = n;
    }
    free(c->peers[fd]);
    c->peers[fd] = peer;
}

/* The call's peer, "fd:N" turned back into the address accepted on N.
 * New (malloc), or NULL when out of memory. */
static char *call_peer(gm_xds *c, grpc_call *call)
{
    char *p = grpc_call_get_peer(call), *end, *out;
    const char *known = NULL;
    long fd;

    if (p && !strncmp(p, "fd:", 3)) {
        errno = 0;
        fd = strtol(p + 3, &end, 10);
        if (!errno && end != p + 3 && !*end && fd >= 0 && (size_t)fd < c->n_peers)
            known = c->peers[fd];
    }
    out = strdup(known ? known : p ? p : "?");
    gpr_free(p);
    return out;
}

/* ---- streams ------------------------------------------------------------ */

static void stream_free(xgrpc_stream *st)
{
    gm_xds *c = st->c;

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

static bool batch(xgrpc_stream *st, const grpc_op *ops, size_t n, struct gm__tag *t)
{
    grpc_call_error e;

    /* The server's shutdown tag comes before the last batches of its
     * cancelled calls complete (on_shutdown then shuts the queue down),
     * and one of those completions may want the next step (a status after
     * a send): there is no one left to send it to, and C-core would abort
     * on a batch started on the shut queue. */
    if (gm__bridge_is_shut(st->c->b))
        return false;
    e = grpc_call_start_batch(st->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        log_error("xds: cannot start a gRPC batch on stream %s: error %d", gm__stream_peer(st),
                  (int)e);
        grpc_call_cancel(st->call, NULL);
        return false;
    }
    st->pending++;
    return true;
}

static void on_new(struct gm__tag *t, bool ok);
static void on_recv(struct gm__tag *t, bool ok);
static void on_send(struct gm__tag *t, bool ok);
static void on_status(struct gm__tag *t, bool ok);
static void on_close(struct gm__tag *t, bool ok);

/* Asks gRPC for the next incoming call. */
static void request_next(gm_xds *c)
{
    xgrpc_stream *st = calloc(1, sizeof *st);
    grpc_call_error e;

    if (!st) {
        log_error("xds: out of memory: no more xDS streams are accepted");
        return;
    }
    st->c = c;
    st->t_new.fn = on_new;
    st->t_recv.fn = on_recv;
    st->t_send.fn = on_send;
    st->t_status.fn = on_status;
    st->t_close.fn = on_close;
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

static void on_new(struct gm__tag *t, bool ok)
{
    xgrpc_stream *st = gm__container_of(t, xgrpc_stream, t_new);
    gm_xds *c = st->c;
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
    st->peer = call_peer(c, st->call);
    if (grpc_slice_str_cmp(st->details.method, XGRPC_METHOD)) {
        char *m = grpc_slice_to_c_string(st->details.method);
        log_debug("xds: %s called %s: UNIMPLEMENTED", gm__stream_peer(st), m ? m : "?");
        gpr_free(m);
        reject(st, GRPC_STATUS_UNIMPLEMENTED, "this server serves only " XGRPC_METHOD);
        maybe_free(st);
        return;
    }
    if (c->n_open >= c->max_streams) {
        log_warn("xds: %zu xDS streams are open, the most allowed: refusing %s", c->n_open,
                 gm__stream_peer(st));
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
    c->cb.on_open(st, c->arg);
}

static void on_recv(struct gm__tag *t, bool ok)
{
    xgrpc_stream *st = gm__container_of(t, xgrpc_stream, t_recv);
    gm_xds *c = st->c;
    grpc_byte_buffer *buf = st->recv_buf;

    st->pending--;
    st->recv_buf = NULL;
    if (ok && buf) {
        grpc_byte_buffer_reader r;
        if (st->open && !st->finishing && grpc_byte_buffer_reader_init(&r, buf)) {
            grpc_slice s = grpc_byte_buffer_reader_readall(&r);
            grpc_byte_buffer_reader_destroy(&r);
            c->cb.on_message(st, GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), c->arg);
            grpc_slice_unref(s);
        }
        grpc_byte_buffer_destroy(buf);
        if (st->open && !st->finishing && !st->closed && !c->stopping)
            start_recv(st);
    } else if (ok && st->open) {
        /* The client half-closed: it wants nothing more. */
        gm__stream_finish(st, GRPC_STATUS_OK, "");
    }
    maybe_free(st);
}

static void on_send(struct gm__tag *t, bool ok)
{
    xgrpc_stream *st = gm__container_of(t, xgrpc_stream, t_send);
    gm_xds *c = st->c;

    st->pending--;
    st->sending = false;
    if (st->send_buf) {
        grpc_byte_buffer_destroy(st->send_buf);
        st->send_buf = NULL;
    }
    if (st->finishing && !st->status_started && !st->closed)
        start_status(st);
    else if (ok && st->open && !st->finishing)
        c->cb.on_sent(st, c->arg);
    maybe_free(st);
}

static void on_status(struct gm__tag *t, bool ok)
{
    xgrpc_stream *st = gm__container_of(t, xgrpc_stream, t_status);

    (void)ok;
    st->pending--;
    maybe_free(st);
}

static void on_close(struct gm__tag *t, bool ok)
{
    xgrpc_stream *st = gm__container_of(t, xgrpc_stream, t_close);
    gm_xds *c = st->c;

    (void)ok;
    st->pending--;
    st->closed = true;
    if (st->open) {
        st->open = false;
        c->n_open--;
        c->cb.on_close(st, c->arg);
    }
    maybe_free(st);
}

/* ---- the server ------------------------------------------------------------ */

/* Every call has been cancelled; what they still have in flight completes
 * before the queue reports its end. */
static void on_shutdown(struct gm__tag *t, bool ok)
{
    gm_xds *c = gm__container_of(t, gm_xds, t_shutdown);

    (void)ok;
    gm__bridge_shutdown(c->b);
}

/* The bridge's end: nothing of gRPC's can call us now. */
static void xds_end(void *arg)
{
    gm_xds *c = arg;
    void (*on_stopped)(void *) = c->cb.on_stopped;
    void *cb_arg = c->arg;

    while (c->streams) {
        xgrpc_stream *st = c->streams;
        st->pending = 0;
        st->closed = true;
        stream_free(st);
    }
    grpc_server_destroy(c->server);
    grpc_server_credentials_release(c->creds);
    for (size_t i = 0; i < c->n_peers; i++)
        free(c->peers[i]);
    free(c->peers);
    free(c);
    on_stopped(cb_arg);
}

int gm__xds_start(gm_xds **out, uv_loop_t *loop, size_t max_streams, size_t max_message,
                  const struct gm_xds_callbacks *cb, void *arg)
{
    gm_xds *c = calloc(1, sizeof *c);
    grpc_arg args[2];
    grpc_channel_args ca = {2, args};
    int rc;

    *out = NULL;
    if (!c)
        return DA_ENOMEM;
    c->cb = *cb;
    c->arg = arg;
    c->max_streams = max_streams;
    c->max_message = max_message;
    c->t_shutdown.fn = on_shutdown;
    /* The bridge takes the reference to gRPC (grpc_init()) first. */
    if ((rc = gm__bridge_new(&c->b, loop, xds_end, c)) < 0) {
        free(c);
        return rc;
    }
    c->cq = gm__bridge_queue(c->b);
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[0].value.integer = (int)max_message;
    /* Idle clients keep their stream for good; a dead peer on TCP is
     * found by keepalive pings rather than never. Sockets handed over
     * take the server's arguments. */
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_KEEPALIVE_TIME_MS;
    args[1].value.integer = 60000;
    c->server = grpc_server_create(&ca, NULL);
    grpc_server_register_completion_queue(c->server, c->cq, NULL);
    grpc_server_start(c->server);
    /* grpc_server_add_channel_from_fd() takes insecure credentials only:
     * the socket's permissions (and loopback) are the access control. */
    c->creds = grpc_insecure_server_credentials_create();
    request_next(c);
    *out = c;
    return 0;
}

void gm__xds_add_fd(gm_xds *c, int fd, char *peer)
{
    peer_set(c, fd, peer);
    grpc_server_add_channel_from_fd(c->server, fd, c->creds);
}

void gm__xds_run(gm_xds *c)
{
    gm__bridge_run(c->b);
}

void gm__xds_stop(gm_xds *c)
{
    if (c->stopping)
        return;
    c->stopping = true;
    for (xgrpc_stream *st = c->streams; st; st = st->next) {
        if (st->open) {
            st->open = false;
            c->n_open--;
            c->cb.on_close(st, c->arg);
        }
    }
    grpc_server_shutdown_and_notify(c->server, c->cq, &c->t_shutdown);
    grpc_server_cancel_all_calls(c->server);
}

/* ---- streams: the daemon's side ----------------------------------------- */

int gm__stream_send(xgrpc_stream *st, const uint8_t *data, size_t len)
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

void gm__stream_finish(xgrpc_stream *st, int code, const char *message)
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

void gm__stream_set_data(xgrpc_stream *st, void *data)
{
    st->data = data;
}

void *gm__stream_data(const xgrpc_stream *st)
{
    return st->data;
}

const char *gm__stream_peer(const xgrpc_stream *st)
{
    return st->peer ? st->peer : "?";
}
