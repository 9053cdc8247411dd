/* echo-server: serves /echo.Echo/Say (proto/echo.proto) with gRPC C-core
 * and libdiscovery's server helper, answering each call with the address
 * this instance registered.
 *
 *     echo-server NAME LISTEN_ADDR [--weight N] [--group G]
 *                 [--advertise HOST] [-s SOCKET]
 *
 * It binds LISTEN_ADDR ("127.0.0.1:0" picks a free port), registers NAME at
 * the bound address through the agent, prints "serving NAME at ADDRESS"
 * once registered, and serves until SIGTERM or SIGINT; then it deregisters
 * first, lets the calls in flight finish, and exits 0.
 *
 * The messages are google.protobuf.StringValue, encoded by hand (field 1,
 * wire type 2), so that any gRPC implementation can call it.
 *
 * Serving. One completion queue and this one thread: CALL_SLOTS calls are
 * requested from the server at all times, and each slot runs one call
 * through its states (requested, message received, reply sent) before it
 * requests the next. A second thread only waits for the signals and starts
 * the shutdown, which must not block the serving loop: calls keep being
 * served while the helper deregisters. */
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "discovery/discovery.h"
#include "discovery/grpc.h"

#define CALL_SLOTS 32
#define METHOD "/echo.Echo/Say"
/* The standard health service (grpc.health.v1), so that the agent can run
 * a grpc check against this server; SIGUSR1 flips it between SERVING and
 * NOT_SERVING, for tests and demos of health checks. */
#define HEALTH "/grpc.health.v1.Health/Check"

static atomic_bool not_serving;
/* Calls still running this long after the shutdown began are cancelled
 * (a unary echo never takes that long unless its client stalls). */
#define SHUTDOWN_GRACE_MS 10000
/* The largest request we decode; the reply is an address. */
#define MAX_REQUEST ((size_t)4 * 1024 * 1024)

#include "stringvalue.h"

/* ---- the serving loop ----------------------------------------------------- */

enum slot_state { SLOT_IDLE, SLOT_REQUESTED, SLOT_RECV, SLOT_SEND };

struct slot {
    enum slot_state state;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array request_md;
    grpc_byte_buffer *request;
    grpc_byte_buffer *reply;
    int cancelled; /* filled by RECV_CLOSE_ON_SERVER */
};

struct echo {
    grpc_server *server;
    grpc_completion_queue *cq;
    disc_server *ds;
    grpc_slice reply_payload; /* the encoded address */
    struct slot slots[CALL_SLOTS];
    atomic_bool shutting_down;
    char shutdown_tag; /* its address is the tag */
};

static void slot_request(struct echo *e, struct slot *s)
{
    grpc_call_details_init(&s->details);
    grpc_metadata_array_init(&s->request_md);
    s->call = NULL;
    s->request = s->reply = NULL;
    /* Requested even while the shutdown runs: the helper keeps serving
     * through its drain, and once C-core's shutdown has begun the request
     * completes at once with success 0, which ends the slot. A slot left
     * unrequested would strand the calls that arrive meanwhile, and C-core
     * cancels those at its shutdown. */
    if (grpc_server_request_call(e->server, &s->call, &s->details, &s->request_md, e->cq, e->cq,
                                 s) != GRPC_CALL_OK) {
        grpc_call_details_destroy(&s->details);
        grpc_metadata_array_destroy(&s->request_md);
        s->state = SLOT_IDLE;
        return;
    }
    s->state = SLOT_REQUESTED;
}

/* Ends the slot's call and requests the next one. */
static void slot_finish(struct echo *e, struct slot *s)
{
    if (s->call)
        grpc_call_unref(s->call);
    if (s->request)
        grpc_byte_buffer_destroy(s->request);
    if (s->reply)
        grpc_byte_buffer_destroy(s->reply);
    grpc_call_details_destroy(&s->details);
    grpc_metadata_array_destroy(&s->request_md);
    s->call = NULL;
    s->request = s->reply = NULL;
    slot_request(e, s);
}

/* Reads the whole request; false if there is none or it is malformed. */
static bool request_ok(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    grpc_slice all;
    const unsigned char *val;
    size_t vlen;
    bool ok;

    if (!bb || grpc_byte_buffer_length(bb) > MAX_REQUEST || !grpc_byte_buffer_reader_init(&r, bb))
        return false;
    all = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ok = sv_decode(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), &val, &vlen);
    grpc_slice_unref(all);
    return ok;
}

/* The request arrived: answer with the address, or with an error status. */
static void slot_reply(struct echo *e, struct slot *s, bool ok)
{
    grpc_op ops[4];
    grpc_status_code status = GRPC_STATUS_OK;
    const char *details = "";
    size_t n = 0;

    /* HealthCheckResponse { status = 1 (SERVING) or 2 (NOT_SERVING) }. */
    static const char serving[] = {0x08, 0x01}, not_serv[] = {0x08, 0x02};
    bool health = grpc_slice_str_cmp(s->details.method, HEALTH) == 0;
    grpc_slice health_reply =
        grpc_slice_from_static_buffer(atomic_load(&not_serving) ? not_serv : serving, 2);

    if (!health && grpc_slice_str_cmp(s->details.method, METHOD) != 0) {
        status = GRPC_STATUS_UNIMPLEMENTED;
        details = "unknown method: this server has only " METHOD " and " HEALTH;
    } else if (!health && (!ok || !request_ok(s->request))) {
        status = GRPC_STATUS_INVALID_ARGUMENT;
        details = "the request is not a google.protobuf.StringValue";
    }
    memset(ops, 0, sizeof ops);
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n++].data.send_initial_metadata.count = 0;
    if (status == GRPC_STATUS_OK) {
        s->reply = grpc_raw_byte_buffer_create(health ? &health_reply : &e->reply_payload, 1);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = s->reply;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = status;
    grpc_slice det = grpc_slice_from_static_string(details);
    ops[n++].data.send_status_from_server.status_details = &det;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &s->cancelled;
    s->state = SLOT_SEND;
    if (grpc_call_start_batch(s->call, ops, n, s, NULL) != GRPC_CALL_OK)
        slot_finish(e, s);
}

static void slot_event(struct echo *e, struct slot *s, bool ok)
{
    switch (s->state) {
    case SLOT_REQUESTED:
        if (!ok) {
            /* The server is shutting down: the request was cancelled. */
            grpc_call_details_destroy(&s->details);
            grpc_metadata_array_destroy(&s->request_md);
            s->state = SLOT_IDLE;
            return;
        }
        {
            grpc_op op;
            memset(&op, 0, sizeof op);
            op.op = GRPC_OP_RECV_MESSAGE;
            op.data.recv_message.recv_message = &s->request;
            s->state = SLOT_RECV;
            if (grpc_call_start_batch(s->call, &op, 1, s, NULL) != GRPC_CALL_OK)
                slot_finish(e, s);
        }
        return;
    case SLOT_RECV:
        slot_reply(e, s, ok);
        return;
    case SLOT_SEND:
        slot_finish(e, s);
        return;
    case SLOT_IDLE:
        return;
    }
}

static bool all_idle(const struct echo *e)
{
    for (int i = 0; i < CALL_SLOTS; i++)
        if (e->slots[i].state != SLOT_IDLE)
            return false;
    return true;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Serves until the shutdown tag came and every slot is idle. */
static void serve(struct echo *e)
{
    bool shut_down = false, cancelled = false;
    int64_t shutdown_began = 0;

    for (int i = 0; i < CALL_SLOTS; i++)
        slot_request(e, &e->slots[i]);
    while (!(shut_down && all_idle(e))) {
        gpr_timespec deadline =
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(200, GPR_TIMESPAN));
        grpc_event ev = grpc_completion_queue_next(e->cq, deadline, NULL);

        if (atomic_load(&e->shutting_down) && !shutdown_began)
            shutdown_began = now_ms();
        if (shutdown_began && !cancelled && now_ms() - shutdown_began > SHUTDOWN_GRACE_MS) {
            grpc_server_cancel_all_calls(e->server);
            cancelled = true;
        }
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        if (ev.tag == &e->shutdown_tag)
            shut_down = true;
        else
            slot_event(e, ev.tag, ev.success != 0);
    }
}

/* ---- signals -------------------------------------------------------------- */

struct sigwaiter {
    sigset_t set;
    struct echo *e;
};

/* Waits for SIGTERM or SIGINT (blocked in every thread), then deregisters
 * and starts the server's shutdown; the serving loop sees its tag. */
static void *sig_main(void *arg)
{
    struct sigwaiter *w = arg;
    int sig;

    for (;;) {
        if (sigwait(&w->set, &sig) != 0)
            continue;
        if (sig != SIGUSR1)
            break;
        atomic_store(&not_serving, !atomic_load(&not_serving));
        printf("health: %s\n", atomic_load(&not_serving) ? "NOT_SERVING" : "SERVING");
        fflush(stdout);
    }
    atomic_store(&w->e->shutting_down, true);
    disc_server_shutdown(w->e->ds, w->e->cq, &w->e->shutdown_tag);
    return NULL;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: echo-server NAME LISTEN_ADDR [--weight N] [--group G] "
                    "[--advertise HOST] [-s SOCKET]\n");
    exit(2);
}

static int32_t parse_weight(const char *s)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT32_MAX) {
        fprintf(stderr, "echo-server: bad weight '%s': an integer from 0 to %d\n", s, INT32_MAX);
        exit(2);
    }
    return (int32_t)v;
}

int main(int argc, char **argv)
{
    struct disc_server_options o = {0};
    const char *name = NULL, *listen_addr = NULL;
    struct sigwaiter w;
    pthread_t sig_thread;
    struct echo e;
    unsigned char *payload;
    char addr[320];
    int rc;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--weight") && i + 1 < argc)
            o.weight = parse_weight(argv[++i]);
        else if (!strcmp(a, "--group") && i + 1 < argc)
            o.group = argv[++i];
        else if (!strcmp(a, "--advertise") && i + 1 < argc)
            o.advertise_host = argv[++i];
        else if (!strcmp(a, "-s") && i + 1 < argc)
            o.socket_path = argv[++i];
        else if (a[0] == '-' && a[1])
            usage();
        else if (!name)
            name = a;
        else if (!listen_addr)
            listen_addr = a;
        else
            usage();
    }
    if (!name || !listen_addr)
        usage();

    /* Blocked before gRPC starts its threads, so that they inherit the
     * mask and only sig_main() ever sees these signals. */
    sigemptyset(&w.set);
    sigaddset(&w.set, SIGTERM);
    sigaddset(&w.set, SIGINT);
    sigaddset(&w.set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &w.set, NULL);
    signal(SIGPIPE, SIG_IGN);

    grpc_init();
    memset(&e, 0, sizeof e);
    atomic_init(&e.shutting_down, false);
    e.cq = grpc_completion_queue_create_for_next(NULL);
    {
        /* gRPC sets SO_REUSEPORT by default, so a second server could bind
         * an address another one serves and registers, and then take its
         * registration over. One address, one process. */
        grpc_arg arg = {
            .type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0};
        grpc_channel_args args = {.num_args = 1, .args = &arg};
        e.server = grpc_server_create(&args, NULL);
    }
    grpc_server_register_completion_queue(e.server, e.cq, NULL);
    rc = disc_server_start(e.server, name, listen_addr, &o, &e.ds);
    if (rc) {
        fprintf(stderr, "echo-server: cannot serve %s at %s: %s (%s)\n", name, listen_addr,
                disc_strerror(rc), disc_err_name(rc));
        grpc_server_destroy(e.server);
        grpc_completion_queue_shutdown(e.cq);
        while (grpc_completion_queue_next(e.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(e.cq);
        grpc_shutdown();
        return 1;
    }
    snprintf(addr, sizeof addr, "%s", disc_server_address(e.ds));
    payload = malloc(strlen(addr) + 11);
    if (!payload) {
        fprintf(stderr, "echo-server: out of memory\n");
        return 1;
    }
    e.reply_payload = grpc_slice_from_copied_buffer((const char *)payload,
                                                    sv_encode(addr, strlen(addr), payload));
    free(payload);

    w.e = &e;
    if (pthread_create(&sig_thread, NULL, sig_main, &w) != 0) {
        fprintf(stderr, "echo-server: cannot start the signal thread\n");
        return 1;
    }
    printf("serving %s at %s\n", name, addr);
    {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        /* When it was registered, for measuring how soon clients use it. */
        printf("registered_at_ms %lld\n", (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    }
    fflush(stdout);

    serve(&e);

    pthread_join(sig_thread, NULL);
    grpc_server_destroy(e.server);
    e.ds = disc_server_free(e.ds);
    grpc_completion_queue_shutdown(e.cq);
    while (grpc_completion_queue_next(e.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(e.cq);
    grpc_slice_unref(e.reply_payload);
    grpc_shutdown();
    fprintf(stderr, "echo-server: %s at %s stopped\n", name, addr);
    return 0;
}
