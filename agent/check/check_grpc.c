/* grpc probes: grpc.health.v1.Health/Check with gRPC C-core, SERVING
 * passes; any other answer, an error status or a timeout fails.
 *
 * Threads. Every gRPC checker has its own channel, but all calls go to one
 * completion queue owned by the context, and one thread of ours sits in
 * grpc_completion_queue_next() on it for the whole life of the context
 * (C-core connects and reconnects only while some thread polls; see
 * grpc-core-facts.md). The loop thread creates each call and starts its one
 * batch (both are non-blocking and thread-safe in C-core); the polling
 * thread does nothing but move finished probes onto a mutex-protected list
 * and wake the loop with uv_async_send(). The loop then reads the reply,
 * counts the result and frees the call. So the loop never blocks on gRPC,
 * and the thread never touches a checker.
 *
 * A probe that follows a failure first waits (through the same queue) for
 * the channel to leave TRANSIENT_FAILURE, see grpc_start(); its second step,
 * the call, is started by the loop.
 *
 * A probe whose checker let go of it (timeout, stop) has had its call
 * cancelled; C-core still completes the batch, and the loop then frees it
 * without counting it. check_ctx_free() shuts the queue down, lets the
 * thread drain the remaining (cancelled) calls, joins it, and frees what it
 * queued. */
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "check_internal.h"
#include "error.h"

#define HEALTH_METHOD "/grpc.health.v1.Health/Check"
/* Reconnect backoff: the channel's own retries start after at most 1 s and
 * grow to at most one interval (C-core's defaults are 1 s and 120 s), so a
 * down instance is retried at least once between probes. Each probe after
 * a failure also resets the backoff (see grpc_start). */
#define INITIAL_BACKOFF_MS 1000
#define MAX_BACKOFF_MS 120000

struct check__grpc {
    grpc_completion_queue *cq;
    pthread_t thread;
    uv_async_t async;
    pthread_mutex_t mu;
    struct grpc_probe *done_head, *done_tail; /* under mu */
};

struct grpc_priv {
    grpc_channel *channel;
    grpc_slice method;
    grpc_slice request; /* the encoded HealthCheckRequest */
    bool last_failed;
};

struct grpc_probe {
    struct check__probe base;
    grpc_call *call;
    grpc_byte_buffer *send_buf, *recv_buf;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    uint64_t timeout_ms;
    gpr_timespec deadline;   /* of the whole probe */
    bool watching;           /* waiting for the channel to leave failure */
    bool ok;                 /* the batch's success, from the thread */
    struct grpc_probe *next; /* in the done list */
};

static int start_call(struct grpc_probe *p, struct grpc_priv *g, grpc_completion_queue *cq);

/* ---- the polling thread ------------------------------------------------------ */

static void *poll_thread(void *arg)
{
    struct check__grpc *g = arg;

    for (;;) {
        grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                                   NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        struct grpc_probe *p = ev.tag;
        p->ok = ev.success != 0;
        p->next = NULL;
        pthread_mutex_lock(&g->mu);
        if (g->done_tail)
            g->done_tail->next = p;
        else
            g->done_head = p;
        g->done_tail = p;
        pthread_mutex_unlock(&g->mu);
        uv_async_send(&g->async);
    }
    return NULL;
}

/* ---- replies ------------------------------------------------------------------ */

static const char *status_name(grpc_status_code c)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((unsigned)c < sizeof names / sizeof names[0])
        return names[c];
    return "status?";
}

static const char *serving_name(uint64_t s)
{
    switch (s) {
    case 0:
        return "UNKNOWN";
    case 1:
        return "SERVING";
    case 2:
        return "NOT_SERVING";
    case 3:
        return "SERVICE_UNKNOWN";
    default:
        return NULL;
    }
}

static int varint(const uint8_t *b, size_t n, size_t *i, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*i >= n)
            return -1;
        uint8_t c = b[(*i)++];
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

/* HealthCheckResponse { ServingStatus status = 1; }: the last status field
 * wins, unknown fields are skipped, as protobuf parsers do. Returns 0 or
 * -1 for a malformed message. */
static int parse_response(const uint8_t *b, size_t n, uint64_t *status)
{
    size_t i = 0;
    uint64_t key, v;

    *status = 0;
    while (i < n) {
        if (varint(b, n, &i, &key) < 0)
            return -1;
        switch (key & 7) {
        case 0:
            if (varint(b, n, &i, &v) < 0)
                return -1;
            if (key >> 3 == 1)
                *status = v;
            break;
        case 1:
            if (n - i < 8)
                return -1;
            i += 8;
            break;
        case 2:
            if (varint(b, n, &i, &v) < 0 || v > n - i)
                return -1;
            i += (size_t)v;
            break;
        case 5:
            if (n - i < 4)
                return -1;
            i += 4;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

static void probe_free(struct grpc_probe *p)
{
    if (p->call)
        grpc_call_unref(p->call);
    if (p->send_buf)
        grpc_byte_buffer_destroy(p->send_buf);
    if (p->recv_buf)
        grpc_byte_buffer_destroy(p->recv_buf);
    grpc_metadata_array_destroy(&p->initial_md);
    grpc_metadata_array_destroy(&p->trailing_md);
    grpc_slice_unref(p->details);
    free(p);
}

/* The result of a finished call: pass or not, and its output line. */
static bool outcome(const struct grpc_probe *p, char *out, size_t outlen)
{
    char details[CHECK_OUTPUT_MAX];
    grpc_byte_buffer_reader r;
    grpc_slice s;
    uint64_t st = 0;
    int rc = -1;

    if (!p->ok) {
        /* Only a batch refused as a whole fails here: C-core reports a
         * failed call through its status. */
        snprintf(out, outlen, "rpc: the call failed");
        return false;
    }
    if (p->status == GRPC_STATUS_DEADLINE_EXCEEDED) {
        snprintf(out, outlen, "timed out after %llu ms", (unsigned long long)p->timeout_ms);
        return false;
    }
    if (p->status != GRPC_STATUS_OK) {
        check__first_line(details, sizeof details,
                          (const char *)GRPC_SLICE_START_PTR(p->details),
                          GRPC_SLICE_LENGTH(p->details));
        snprintf(out, outlen, "rpc: %s%s%s", status_name(p->status), *details ? ": " : "",
                 details);
        return false;
    }
    if (!p->recv_buf) {
        snprintf(out, outlen, "rpc: OK without a response message");
        return false;
    }
    if (grpc_byte_buffer_reader_init(&r, p->recv_buf)) {
        s = grpc_byte_buffer_reader_readall(&r);
        grpc_byte_buffer_reader_destroy(&r);
        rc = parse_response(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), &st);
        grpc_slice_unref(s);
    }
    if (rc < 0)
        snprintf(out, outlen, "rpc: malformed HealthCheckResponse");
    else if (serving_name(st))
        snprintf(out, outlen, "%s", serving_name(st));
    else
        snprintf(out, outlen, "status %llu", (unsigned long long)st);
    return rc == 0 && st == 1;
}

/* A finished call, on the loop: count it if its checker still waits for
 * it, then free it. */
static void probe_finished(struct grpc_probe *p)
{
    checker *k = p->base.k;
    char out[CHECK_OUTPUT_MAX];
    bool pass;

    if (p->watching) {
        /* The channel has left TRANSIENT_FAILURE (or the wait is over):
         * now the call, within what is left of the timeout. */
        p->watching = false;
        if (!k)
            goto done;
        if (start_call(p, k->priv, k->ctx->grpc->cq) == 0)
            return;
        check__report(&p->base, false, "rpc: cannot start the call");
        goto done;
    }
    if (k) {
        pass = outcome(p, out, sizeof out);
        ((struct grpc_priv *)k->priv)->last_failed = !pass;
        check__report(&p->base, pass, "%s", out);
    }
done:
    probe_free(p);
}

/* Takes the done list (under the lock) and finishes each probe. */
static void drain_done(struct check__grpc *g)
{
    struct grpc_probe *p;

    pthread_mutex_lock(&g->mu);
    p = g->done_head;
    g->done_head = g->done_tail = NULL;
    pthread_mutex_unlock(&g->mu);
    while (p) {
        struct grpc_probe *next = p->next;
        probe_finished(p);
        p = next;
    }
}

static void async_cb(uv_async_t *a)
{
    drain_done(a->data);
}

/* ---- the context's side ------------------------------------------------------ */

static void grpc_ctx_closed(uv_handle_t *h)
{
    struct check__grpc *g = h->data;

    pthread_mutex_destroy(&g->mu);
    free(g);
}

static int grpc_ctx_start(struct check_ctx *ctx)
{
    struct check__grpc *g = calloc(1, sizeof *g);
    sigset_t all, old;
    int rc;

    if (!g)
        return DA_ENOMEM;
    if (pthread_mutex_init(&g->mu, NULL) != 0) {
        free(g);
        return DA_ENOMEM;
    }
    grpc_init();
    g->cq = grpc_completion_queue_create_for_next(NULL);
    if (!g->cq || uv_async_init(ctx->loop, &g->async, async_cb) < 0)
        goto fail;
    g->async.data = g;
    /* The thread takes no signals: the loop handles the daemon's. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&g->thread, NULL, poll_thread, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        grpc_completion_queue_shutdown(g->cq);
        grpc_completion_queue_destroy(g->cq);
        grpc_shutdown();
        uv_close((uv_handle_t *)&g->async, grpc_ctx_closed); /* frees g */
        return DA_ENOMEM;
    }
    ctx->grpc = g;
    return 0;
fail:
    if (g->cq)
        grpc_completion_queue_destroy(g->cq);
    grpc_shutdown();
    pthread_mutex_destroy(&g->mu);
    free(g);
    return DA_ENOMEM;
}

void check__grpc_ctx_free(struct check_ctx *ctx)
{
    struct check__grpc *g = ctx->grpc;

    if (!g)
        return;
    ctx->grpc = NULL;
    /* Every checker is stopped and every call cancelled: the queue's
     * shutdown completes once those calls have ended. */
    grpc_completion_queue_shutdown(g->cq);
    pthread_join(g->thread, NULL);
    drain_done(g);
    grpc_completion_queue_destroy(g->cq);
    grpc_shutdown();
    uv_close((uv_handle_t *)&g->async, grpc_ctx_closed);
}

/* ---- the type ------------------------------------------------------------------- */

/* "ipv4:1.2.3.4:5", "ipv6:[::1]:5", "dns:///name:5"; a target that already
 * names a scheme is taken as it is. */
static int make_target(const char *address, char *out, size_t outlen)
{
    static const char *const schemes[] = {"ipv4:", "ipv6:", "unix:", "unix-abstract:", "dns:"};
    char host[CHECK_ADDRESS_MAX + 1];
    unsigned char buf[sizeof(struct in6_addr)];
    int port;

    for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
        if (!strncmp(address, schemes[i], strlen(schemes[i]))) {
            snprintf(out, outlen, "%s", address);
            return 0;
        }
    if (check__split_address(address, host, sizeof host, &port) < 0)
        return DA_EINVAL;
    if (inet_pton(AF_INET, host, buf) == 1)
        snprintf(out, outlen, "ipv4:%s:%d", host, port);
    else if (inet_pton(AF_INET6, host, buf) == 1)
        snprintf(out, outlen, "ipv6:[%s]:%d", host, port);
    else
        snprintf(out, outlen, "dns:///%s:%d", host, port);
    return 0;
}

static grpc_slice encode_request(const char *service)
{
    size_t n = service ? strlen(service) : 0, len = 0;
    uint8_t buf[1 + 10 + CHECK_SERVICE_MAX];

    if (!n)
        return grpc_empty_slice(); /* all fields default: an empty message */
    buf[len++] = 0x0a; /* field 1, length-delimited */
    for (size_t v = n; ; v >>= 7) {
        buf[len++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        if (v < 0x80)
            break;
    }
    memcpy(buf + len, service, n);
    return grpc_slice_from_copied_buffer((const char *)buf, len + n);
}

static int grpc_init_k(checker *k, char *err, size_t errlen)
{
    char target[CHECK_ADDRESS_MAX + 32];
    struct grpc_priv *g;
    grpc_channel_credentials *creds;
    int backoff_max = k->spec.interval_ms < MAX_BACKOFF_MS ? (int)k->spec.interval_ms
                                                           : MAX_BACKOFF_MS;
    int backoff_initial = backoff_max < INITIAL_BACKOFF_MS ? backoff_max : INITIAL_BACKOFF_MS;
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = backoff_initial},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
         .value.integer = backoff_initial},
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
         .value.integer = backoff_max},
        /* A probe is one attempt: a retried call would hide a failure. */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_RETRIES, .value.integer = 0},
    };
    grpc_channel_args chargs = {.num_args = sizeof args / sizeof args[0], .args = args};

    if (make_target(k->address, target, sizeof target) < 0) {
        snprintf(err, errlen, "grpc check: address \"%s\" is not host:port", k->address);
        return DA_EINVAL;
    }
    if (!k->ctx->grpc && grpc_ctx_start(k->ctx) < 0)
        return DA_ENOMEM;
    g = calloc(1, sizeof *g);
    if (!g)
        return DA_ENOMEM;
    creds = grpc_insecure_credentials_create();
    /* One channel per checker, kept across probes so that a healthy
     * instance is probed on its open connection. */
    g->channel = grpc_channel_create(target, creds, &chargs);
    grpc_channel_credentials_release(creds);
    g->method = grpc_slice_from_static_string(HEALTH_METHOD);
    g->request = encode_request(k->spec.grpc_service);
    k->priv = g;
    return 0;
}

static void grpc_fini(checker *k)
{
    struct grpc_priv *g = k->priv;

    if (!g)
        return;
    /* A cancelled call still holds its channel; destroying ours is safe.
     * (The single-address channel is not one of the multi-address ones
     * grpc-core-facts.md warns leak sockets when destroyed mid-connect.) */
    grpc_channel_destroy(g->channel);
    grpc_slice_unref(g->request);
    free(g);
    k->priv = NULL;
}

/* Creates p's call and starts its one batch. Returns 0 or -1. */
static int start_call(struct grpc_probe *p, struct grpc_priv *g, grpc_completion_queue *cq)
{
    grpc_op ops[6];

    p->call = grpc_channel_create_call(g->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, g->method,
                                       NULL, p->deadline, NULL);
    p->send_buf = grpc_raw_byte_buffer_create(&g->request, 1);
    if (!p->call || !p->send_buf)
        return -1;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = p->send_buf;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &p->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &p->recv_buf;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &p->trailing_md;
    ops[5].data.recv_status_on_client.status = &p->status;
    ops[5].data.recv_status_on_client.status_details = &p->details;
    return grpc_call_start_batch(p->call, ops, sizeof ops / sizeof ops[0], p, NULL) ==
                   GRPC_CALL_OK
               ? 0
               : -1;
}

static struct check__probe *grpc_start(checker *k)
{
    struct grpc_priv *g = k->priv;
    grpc_completion_queue *cq = k->ctx->grpc->cq;
    struct grpc_probe *p = calloc(1, sizeof *p);
    grpc_connectivity_state cs;
    gpr_timespec now;

    if (!p) {
        check__report_k(k, false, "out of memory");
        return NULL;
    }
    p->timeout_ms = k->spec.timeout_ms;
    p->details = grpc_empty_slice();
    grpc_metadata_array_init(&p->initial_md);
    grpc_metadata_array_init(&p->trailing_md);
    now = gpr_now(GPR_CLOCK_MONOTONIC);
    p->deadline = gpr_time_add(now, gpr_time_from_millis((int64_t)p->timeout_ms, GPR_TIMESPAN));

    /* After a failure the channel is likely in TRANSIENT_FAILURE, waiting
     * out its reconnect backoff, and a call now would fail at once even if
     * the server is back. So first reconnect now, and give the channel up
     * to half the timeout to leave that state; the call follows (see
     * probe_finished). An instance that came back passes on this probe;
     * one still down fails with C-core's reason (UNAVAILABLE: ...). */
    if (g->last_failed) {
        grpc_channel_reset_connect_backoff(g->channel);
        cs = grpc_channel_check_connectivity_state(g->channel, 1);
        if (cs == GRPC_CHANNEL_TRANSIENT_FAILURE || cs == GRPC_CHANNEL_IDLE) {
            p->watching = true;
            grpc_channel_watch_connectivity_state(
                g->channel, cs,
                gpr_time_add(now, gpr_time_from_millis((int64_t)p->timeout_ms / 2, GPR_TIMESPAN)),
                cq, p);
            return &p->base;
        }
    }
    if (start_call(p, g, cq) < 0) {
        probe_free(p);
        check__report_k(k, false, "rpc: cannot start the call");
        return NULL;
    }
    return &p->base;
}

static void grpc_abandon(struct check__probe *base)
{
    struct grpc_probe *p = check__container_of(base, struct grpc_probe, base);

    if (base->k && base->k->priv)
        ((struct grpc_priv *)base->k->priv)->last_failed = true;
    check__detach(base);
    /* The batch completes (CANCELLED) on the thread, or the watch by its
     * deadline; probe_finished() then frees p. */
    if (p->call)
        grpc_call_cancel(p->call, NULL);
}

const struct check__type check__grpc = {
    .init = grpc_init_k,
    .fini = grpc_fini,
    .start = grpc_start,
    .abandon = grpc_abandon,
};
