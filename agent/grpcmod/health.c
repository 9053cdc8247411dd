/* grpc health probes, in the module: grpc.health.v1.Health/Check with
 * C-core; SERVING passes, any other answer, an error status or a timeout
 * fails. The daemon's side (check_grpc.c) turns checkers into channels and
 * probes, and results into check results.
 *
 * All calls go to one completion queue, drained through the module's
 * bridge (cq_bridge.c) by one thread of ours for the whole life of the
 * gm_health (C-core connects and reconnects only while some thread polls;
 * see grpc-core-facts.md). The loop creates each call and starts its one
 * batch; the loop also reads the reply, gives the result and frees the
 * call. So the loop never blocks on gRPC, and the thread touches nothing.
 *
 * A probe that follows a failure first waits (through the same queue) for
 * the channel to leave TRANSIENT_FAILURE, see gm__health_probe(); its
 * second step, the call, is started by the loop.
 *
 * A cancelled probe (the checker timed it out, or stopped) has had its
 * call cancelled; C-core still completes the batch, and the loop then
 * frees it without a result. gm__health_free() shuts the queue down, lets
 * the thread drain the remaining (cancelled) calls, and frees them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "error.h"
#include "grpcmod_internal.h"

#define HEALTH_METHOD "/grpc.health.v1.Health/Check"
/* As CHECK_OUTPUT_MAX of the daemon: the longest output line kept. */
#define OUTPUT_MAX 256
/* The longest service name a HealthCheckRequest carries (the daemon's
 * CHECK_SERVICE_MAX refuses longer ones before they get here). */
#define SERVICE_MAX 1024

struct gm_health {
    struct gm__bridge *b;
};

struct gm_hchan {
    gm_health *h;
    grpc_channel *channel;
    grpc_slice method;
    grpc_slice request; /* the encoded HealthCheckRequest */
    bool last_failed;
};

struct gm_hprobe {
    struct gm__tag tag;
    gm_hchan *c; /* NULL once cancelled */
    gm_probe_cb cb;
    void *arg;
    grpc_call *call;
    grpc_byte_buffer *send_buf, *recv_buf;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    uint64_t timeout_ms;
    gpr_timespec deadline; /* of the whole probe */
    bool watching;         /* waiting for the channel to leave failure */
};

static int start_call(gm_hprobe *p);

/* ---- replies ------------------------------------------------------------------ */

static const char *status_name(grpc_status_code c)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
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

/* The first line of data (up to '\r' or '\n', leading blank lines
 * skipped, control bytes made '?'), bounded: check__first_line()'s rule,
 * which the module cannot call (it links nothing of the daemon's). */
static void first_line(char *out, size_t outlen, const char *data, size_t len)
{
    size_t n = 0;

    if (!outlen)
        return;
    while (len && (*data == '\n' || *data == '\r')) {
        data++;
        len--;
    }
    for (size_t i = 0; i < len && n + 1 < outlen; i++) {
        unsigned char ch = (unsigned char)data[i];
        if (ch == '\r' || ch == '\n')
            break;
        out[n++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    out[n] = '\0';
}

static void probe_free(gm_hprobe *p)
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
static bool outcome(const gm_hprobe *p, bool ok, char *out, size_t outlen)
{
    char details[OUTPUT_MAX];
    grpc_byte_buffer_reader r;
    grpc_slice s;
    uint64_t st = 0;
    int rc = -1;

    if (!ok) {
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
        first_line(details, sizeof details, (const char *)GRPC_SLICE_START_PTR(p->details),
                   GRPC_SLICE_LENGTH(p->details));
        snprintf(out, outlen, "rpc: %s%s%s", status_name(p->status), *details ? ": " : "", details);
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

/* A finished batch (or watch), on the loop: give the result if the probe
 * is still wanted, then free it. */
static void probe_finished(struct gm__tag *t, bool ok)
{
    gm_hprobe *p = gm__container_of(t, gm_hprobe, tag);
    char out[OUTPUT_MAX];
    bool pass;

    if (p->watching) {
        /* The channel has left TRANSIENT_FAILURE (or the wait is over):
         * now the call, within what is left of the timeout. */
        p->watching = false;
        if (!p->c)
            goto done;
        if (start_call(p) == 0)
            return;
        p->cb(p->arg, false, "rpc: cannot start the call");
        goto done;
    }
    if (p->c) {
        pass = outcome(p, ok, out, sizeof out);
        p->c->last_failed = !pass;
        p->cb(p->arg, pass, out);
    }
done:
    probe_free(p);
}

/* ---- the queue ------------------------------------------------------------------ */

int gm__health_new(gm_health **out, uv_loop_t *loop)
{
    gm_health *h = calloc(1, sizeof *h);
    int rc;

    *out = NULL;
    if (!h)
        return DA_ENOMEM;
    if ((rc = gm__bridge_new(&h->b, loop, NULL, NULL)) < 0) {
        free(h);
        return rc;
    }
    *out = h;
    return 0;
}

void gm__health_free(gm_health *h)
{
    if (!h)
        return;
    /* Every channel is gone and every call cancelled: the queue's shutdown
     * completes once those calls have ended, and their completions free
     * them (cancelled: no result). */
    gm__bridge_shutdown_sync(h->b);
    free(h);
}

/* ---- channels --------------------------------------------------------------------- */

static grpc_slice encode_request(const char *service)
{
    size_t n = service ? strnlen(service, SERVICE_MAX) : 0, len = 0;
    uint8_t buf[1 + 10 + SERVICE_MAX];

    if (!n)
        return grpc_empty_slice(); /* all fields default: an empty message */
    buf[len++] = 0x0a;             /* field 1, length-delimited */
    for (size_t v = n;; v >>= 7) {
        buf[len++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        if (v < 0x80)
            break;
    }
    memcpy(buf + len, service, n);
    return grpc_slice_from_copied_buffer((const char *)buf, len + n);
}

int gm__health_channel_new(gm_hchan **out, gm_health *h, const char *target, const char *service,
                           int backoff_initial_ms, int backoff_max_ms)
{
    gm_hchan *c = calloc(1, sizeof *c);
    grpc_channel_credentials *creds;
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
         .value.integer = backoff_initial_ms},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
         .value.integer = backoff_initial_ms},
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
         .value.integer = backoff_max_ms},
        /* A probe is one attempt: a retried call would hide a failure. */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ENABLE_RETRIES, .value.integer = 0},
    };
    grpc_channel_args chargs = {.num_args = sizeof args / sizeof args[0], .args = args};

    *out = NULL;
    if (!c)
        return DA_ENOMEM;
    c->h = h;
    creds = grpc_insecure_credentials_create();
    /* One channel per checker, kept across probes so that a healthy
     * instance is probed on its open connection. */
    c->channel = grpc_channel_create(target, creds, &chargs);
    grpc_channel_credentials_release(creds);
    c->method = grpc_slice_from_static_string(HEALTH_METHOD);
    c->request = encode_request(service);
    *out = c;
    return 0;
}

void gm__health_channel_free(gm_hchan *c)
{
    if (!c)
        return;
    /* A cancelled call still holds its channel; destroying ours is safe.
     * (The single-address channel is not one of the multi-address ones
     * grpc-core-facts.md warns leak sockets when destroyed mid-connect.) */
    grpc_channel_destroy(c->channel);
    grpc_slice_unref(c->request);
    free(c);
}

/* ---- probes ------------------------------------------------------------------------ */

/* Creates p's call and starts its one batch. Returns 0 or -1. */
static int start_call(gm_hprobe *p)
{
    gm_hchan *c = p->c;
    grpc_op ops[6];

    /* The second step of a probe that waited for its channel comes from
     * the queue, so it may come as the queue ends. */
    if (gm__bridge_is_shut(c->h->b))
        return -1;
    p->call =
        grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                 gm__bridge_queue(c->h->b), c->method, NULL, p->deadline, NULL);
    p->send_buf = grpc_raw_byte_buffer_create(&c->request, 1);
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
    return grpc_call_start_batch(p->call, ops, sizeof ops / sizeof ops[0], &p->tag, NULL) ==
                   GRPC_CALL_OK
               ? 0
               : -1;
}

gm_hprobe *gm__health_probe(gm_hchan *c, uint64_t timeout_ms, gm_probe_cb cb, void *arg)
{
    gm_hprobe *p;
    grpc_connectivity_state cs;
    gpr_timespec now;

    /* No probe once gm__health_free() has shut the queue down (see
     * gm__bridge_is_shut()): the checkers are all stopped by then, but
     * an abort must not rest on the caller's order. */
    if (gm__bridge_is_shut(c->h->b) || !(p = calloc(1, sizeof *p)))
        return NULL;
    p->tag.fn = probe_finished;
    p->c = c;
    p->cb = cb;
    p->arg = arg;
    p->timeout_ms = timeout_ms;
    p->details = grpc_empty_slice();
    grpc_metadata_array_init(&p->initial_md);
    grpc_metadata_array_init(&p->trailing_md);
    now = gpr_now(GPR_CLOCK_MONOTONIC);
    p->deadline = gpr_time_add(now, gpr_time_from_millis((int64_t)timeout_ms, GPR_TIMESPAN));

    /* After a failure the channel is likely in TRANSIENT_FAILURE, waiting
     * out its reconnect backoff, and a call now would fail at once even if
     * the server is back. So first reconnect now, and give the channel up
     * to half the timeout to leave that state; the call follows (see
     * probe_finished). An instance that came back passes on this probe;
     * one still down fails with C-core's reason (UNAVAILABLE: ...). */
    if (c->last_failed) {
        grpc_channel_reset_connect_backoff(c->channel);
        cs = grpc_channel_check_connectivity_state(c->channel, 1);
        if (cs == GRPC_CHANNEL_TRANSIENT_FAILURE || cs == GRPC_CHANNEL_IDLE) {
            p->watching = true;
            grpc_channel_watch_connectivity_state(
                c->channel, cs,
                gpr_time_add(now, gpr_time_from_millis((int64_t)timeout_ms / 2, GPR_TIMESPAN)),
                gm__bridge_queue(c->h->b), &p->tag);
            return p;
        }
    }
    if (start_call(p) < 0) {
        probe_free(p);
        return NULL;
    }
    return p;
}

void gm__health_cancel(gm_hprobe *p)
{
    /* The next probe of this channel starts by reconnecting. */
    p->c->last_failed = true;
    p->c = NULL;
    /* The batch completes (CANCELLED) on the thread, or the watch by its
     * deadline; probe_finished() then frees p. */
    if (p->call)
        grpc_call_cancel(p->call, NULL);
}
