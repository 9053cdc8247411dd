/* Tests of the health checkers (agent/check*.c) against real things: TCP
 * listeners on the loop, the scripted HTTP responder, real commands, and a
 * real gRPC C-core server implementing grpc.health.v1.Health/Check whose
 * answer the test flips.
 *
 * What is asserted is behaviour: the states reached, their order, the
 * probes counted on the way, and that nothing happens before its time (a
 * timeout or a ttl never fires early; load only makes things later). How
 * fast is measured and printed ("measure: ..."), never asserted: these
 * tests run on loaded machines, and speed goals belong in `make bench`.
 * Every wait has an upper bound of several seconds (LIVE_MS) that is a
 * liveness guard only. Probes expected to finish get a timeout a loaded
 * machine always meets; short timeouts are kept for probes meant to time
 * out. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "check.h"
#include "error.h"
#include "http.h"
#include "log.h"
#include "looptest.h"
#include "responder.h"

/* The bound of every wait for a state: a guard against a test that would
 * never end, not a speed requirement. */
#define LIVE_MS 10000

/* ---- fixture ------------------------------------------------------------------ */

struct fx {
    uv_loop_t loop;
    http_client *http;
    struct check_ctx *ctx;
};

static void fx_init(struct fx *f, bool exec_enabled)
{
    memset(f, 0, sizeof *f);
    ck_assert_int_eq(uv_loop_init(&f->loop), 0);
    ck_assert_int_eq(http_client_new(&f->http, &f->loop), 0);
    ck_assert_int_eq(check_ctx_new(&f->ctx, &f->loop, f->http, exec_enabled), 0);
}

static void fx_finish(struct fx *f)
{
    check_ctx_free(f->ctx);
    http_client_close(f->http);
    ck_assert_int_eq(loop_finish(&f->loop), 0);
}

static uint64_t now_ms(struct fx *f)
{
    uv_update_time(&f->loop);
    return uv_now(&f->loop);
}

/* Health changes seen by a checker's callback. */
struct obs {
    uv_loop_t *loop;
    int n;
    bool healthy;
    uint64_t at[64];
    bool val[64];
    int passes_at_change, failures_at_change;
    uint64_t probes_at_change; /* results counted when it last changed */
    bool stop_self;            /* stop the checker from inside the callback */
};

static void obs_cb(checker *k, bool healthy, void *arg)
{
    struct obs *o = arg;
    struct check_state st;

    checker_state(k, &st);
    ck_assert(st.healthy == healthy);
    ck_assert(o->n == 0 || o->healthy != healthy); /* never twice the same */
    if (o->n < 64) {
        o->at[o->n] = uv_now(o->loop);
        o->val[o->n] = healthy;
    }
    o->n++;
    o->healthy = healthy;
    o->passes_at_change = st.passes;
    o->failures_at_change = st.failures;
    o->probes_at_change = st.probes;
    if (o->stop_self)
        checker_close(k);
}

struct until_changes {
    struct obs *o;
    int n;
};

static bool changes_reached(void *arg)
{
    struct until_changes *u = arg;
    return u->o->n >= u->n;
}

/* Runs until o has seen n changes; returns whether it did in time. */
static bool wait_changes(struct fx *f, struct obs *o, int n, int timeout_ms)
{
    struct until_changes u = {o, n};
    return loop_until_fn(&f->loop, changes_reached, &u, timeout_ms);
}

struct until_probes {
    checker *k;
    uint64_t n;
};

static bool probes_reached(void *arg)
{
    struct until_probes *u = arg;
    struct check_state st;

    checker_state(u->k, &st);
    return st.probes >= u->n;
}

static bool wait_probes(struct fx *f, checker *k, uint64_t n, int timeout_ms)
{
    struct until_probes u = {k, n};
    return loop_until_fn(&f->loop, probes_reached, &u, timeout_ms);
}

static checker *start(struct fx *f, const struct check_spec *spec, const char *address,
                      struct obs *o)
{
    checker *k = NULL;
    char err[256];
    int rc;

    o->loop = &f->loop;
    rc = checker_start(&k, f->ctx, spec, address, obs_cb, o, err, sizeof err);
    ck_assert_msg(rc == 0, "checker_start: %d %s", rc, err);
    ck_assert_int_eq(checker_set_label(k, "svc"), 0);
    return k;
}

static struct check_state state(checker *k)
{
    struct check_state st;
    checker_state(k, &st);
    return st;
}

/* A port on 127.0.0.1 that nothing listens on (bound, then released). */
static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- a TCP listener on the loop -------------------------------------------------- */

struct listener {
    uv_tcp_t tcp;
    int accepted;
};

static void conn_closed(uv_handle_t *h)
{
    free(h);
}

static void on_connection(uv_stream_t *s, int status)
{
    struct listener *l = s->data;
    uv_tcp_t *c;

    if (status < 0)
        return;
    c = malloc(sizeof *c);
    ck_assert_ptr_nonnull(c);
    uv_tcp_init(s->loop, c);
    if (uv_accept(s, (uv_stream_t *)c) == 0)
        l->accepted++;
    uv_close((uv_handle_t *)c, conn_closed);
}

static void listener_start(struct listener *l, uv_loop_t *loop, int port)
{
    struct sockaddr_in sa;

    memset(l, 0, sizeof *l);
    ck_assert_int_eq(uv_ip4_addr("127.0.0.1", port, &sa), 0);
    ck_assert_int_eq(uv_tcp_init(loop, &l->tcp), 0);
    l->tcp.data = l;
    ck_assert_int_eq(uv_tcp_bind(&l->tcp, (struct sockaddr *)&sa, 0), 0);
    ck_assert_int_eq(uv_listen((uv_stream_t *)&l->tcp, 64, on_connection), 0);
}

static void listener_stop(struct listener *l)
{
    uv_close((uv_handle_t *)&l->tcp, NULL);
}

/* ---- a gRPC health server (C-core, generic calls) ------------------------------- */

/* grpc.health.v1.Health/Check: HealthCheckRequest {string service = 1},
 * HealthCheckResponse {ServingStatus status = 1} with 1 SERVING and 2
 * NOT_SERVING, encoded by hand. A service other than "" and `known` is
 * answered NOT_FOUND, as C-core's own health service does. With hang set
 * the server reads the request and never answers. */
struct hsrv {
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    int port;
    int shutdown_tag;
    bool down; /* the queue is shut down: no batch may start (the thread's) */
    atomic_int status;
    atomic_bool hang;
    atomic_int checks;
    char known[64];
    pthread_mutex_t mu;
    char last_service[128];
};

struct scall {
    struct hsrv *s;
    int stage;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *req, *resp;
    int cancelled;
};

static void scall_free(struct scall *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    if (c->req)
        grpc_byte_buffer_destroy(c->req);
    if (c->resp)
        grpc_byte_buffer_destroy(c->resp);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    free(c);
}

static void hsrv_request(struct hsrv *s)
{
    struct scall *c = calloc(1, sizeof *c);

    c->s = s;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    if (grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq, s->cq, c) !=
        GRPC_CALL_OK)
        scall_free(c);
}

/* The service name of a HealthCheckRequest ("" when absent). The test's
 * names are short: field 1 with a one-byte length is all it reads. */
static void parse_request(grpc_byte_buffer *bb, char *out, size_t outlen)
{
    grpc_byte_buffer_reader r;
    grpc_slice s;
    const uint8_t *b;
    size_t n;

    out[0] = '\0';
    if (!bb || !grpc_byte_buffer_reader_init(&r, bb))
        return;
    s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    b = GRPC_SLICE_START_PTR(s);
    n = GRPC_SLICE_LENGTH(s);
    if (n >= 2 && b[0] == 0x0a && b[1] < 0x80 && (size_t)b[1] + 2 <= n && b[1] < outlen) {
        memcpy(out, b + 2, b[1]);
        out[b[1]] = '\0';
    }
    grpc_slice_unref(s);
}

static void hsrv_step(struct scall *c, bool success)
{
    struct hsrv *s = c->s;
    grpc_op ops[4];
    size_t n = 0;
    char service[128];
    static grpc_slice not_found_details;
    static grpc_slice unimpl_details;

    /* The server's shutdown tag comes once its channels are gone, before
     * the last batches of their calls complete; a batch started on the
     * queue after it is shut down makes C-core abort (grpc_cq_begin_op).
     * The call is cancelled anyway: let it go. */
    if (s->down) {
        scall_free(c);
        return;
    }
    memset(ops, 0, sizeof ops);
    switch (c->stage) {
    case 0: /* a new call, or the server is shutting down */
        if (!success) {
            scall_free(c);
            return;
        }
        hsrv_request(s);
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        if (grpc_slice_str_cmp(c->details.method, "/grpc.health.v1.Health/Check") != 0) {
            unimpl_details = grpc_slice_from_static_string("no such method");
            ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
            ops[n].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
            ops[n++].data.send_status_from_server.status_details = &unimpl_details;
            ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
            ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
            c->stage = 2;
        } else {
            ops[n].op = GRPC_OP_RECV_MESSAGE;
            ops[n++].data.recv_message.recv_message = &c->req;
            c->stage = 1;
        }
        break;
    case 1: /* the request is in */
        parse_request(c->req, service, sizeof service);
        pthread_mutex_lock(&s->mu);
        snprintf(s->last_service, sizeof s->last_service, "%s", service);
        pthread_mutex_unlock(&s->mu);
        atomic_fetch_add(&s->checks, 1);
        c->stage = 2;
        ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
        if (atomic_load(&s->hang))
            break; /* ends when the client gives up */
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        if (service[0] && strcmp(service, s->known)) {
            not_found_details = grpc_slice_from_static_string("unknown service");
            ops[n].data.send_status_from_server.status = GRPC_STATUS_NOT_FOUND;
            ops[n++].data.send_status_from_server.status_details = &not_found_details;
        } else {
            uint8_t msg[2] = {0x08, (uint8_t)atomic_load(&s->status)};
            grpc_slice sl = grpc_slice_from_copied_buffer((const char *)msg, sizeof msg);
            c->resp = grpc_raw_byte_buffer_create(&sl, 1);
            grpc_slice_unref(sl);
            ops[n++].data.send_status_from_server.status = GRPC_STATUS_OK;
            ops[n].op = GRPC_OP_SEND_MESSAGE;
            ops[n++].data.send_message.send_message = c->resp;
        }
        break;
    default: /* finished (or cancelled) */
        scall_free(c);
        return;
    }
    ck_assert_int_eq(grpc_call_start_batch(c->call, ops, n, c, NULL), GRPC_CALL_OK);
}

static void *hsrv_main(void *arg)
{
    struct hsrv *s = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        if (ev.tag == &s->shutdown_tag) {
            s->down = true;
            grpc_completion_queue_shutdown(s->cq);
            continue;
        }
        hsrv_step(ev.tag, ev.success != 0);
    }
    return NULL;
}

/* port 0: any free port. */
static struct hsrv *hsrv_start(int port, int status)
{
    struct hsrv *s = calloc(1, sizeof *s);
    grpc_server_credentials *creds;
    char addr[64];

    ck_assert_ptr_nonnull(s);
    grpc_init();
    pthread_mutex_init(&s->mu, NULL);
    atomic_store(&s->status, status);
    snprintf(s->known, sizeof s->known, "known.Service");
    s->cq = grpc_completion_queue_create_for_next(NULL);
    s->server = grpc_server_create(NULL, NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    creds = grpc_insecure_server_credentials_create();
    s->port = grpc_server_add_http2_port(s->server, addr, creds);
    grpc_server_credentials_release(creds);
    ck_assert_int_gt(s->port, 0);
    grpc_server_start(s->server);
    hsrv_request(s);
    ck_assert_int_eq(pthread_create(&s->thread, NULL, hsrv_main, s), 0);
    return s;
}

static void hsrv_stop(struct hsrv *s)
{
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
    grpc_server_cancel_all_calls(s->server);
    pthread_join(s->thread, NULL);
    grpc_server_destroy(s->server);
    grpc_completion_queue_destroy(s->cq);
    pthread_mutex_destroy(&s->mu);
    free(s);
    grpc_shutdown();
}

static char *addr_of(int port)
{
    static char buf[4][32];
    static int i;
    char *b = buf[i++ % 4];

    snprintf(b, sizeof buf[0], "127.0.0.1:%d", port);
    return b;
}

/* ---- specs and names ---------------------------------------------------------------- */

START_TEST(test_types_and_specs)
{
    enum check_type t;
    struct check_spec s = {.type = CHECK_GRPC}, c;
    char err[256];
    char *argv[] = {"/bin/true", NULL};

    for (t = CHECK_NONE; t <= CHECK_TTL; t++) {
        enum check_type back;
        ck_assert_int_eq(check_type_parse(check_type_name(t), &back), 0);
        ck_assert_int_eq(back, t);
    }
    ck_assert_str_eq(check_type_name(CHECK_HTTP), "http");
    ck_assert_int_eq(check_type_parse("HTTP", &t), DA_EINVAL);
    ck_assert_int_eq(check_type_parse("smtp", &t), DA_EINVAL);

    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), 0);
    ck_assert_uint_eq(s.interval_ms, 10000);
    ck_assert_uint_eq(s.timeout_ms, 2000);
    ck_assert_int_eq(s.rise, 2);
    ck_assert_int_eq(s.fall, 3);

    s = (struct check_spec){.type = CHECK_TCP, .interval_ms = 1000};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), 0);
    ck_assert_uint_eq(s.timeout_ms, 500);

    /* A timeout may equal the interval, not exceed it. */
    s = (struct check_spec){.type = CHECK_TCP, .interval_ms = 1000, .timeout_ms = 1000};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), 0);
    ck_assert_uint_eq(s.timeout_ms, 1000);
    s = (struct check_spec){.type = CHECK_TCP, .interval_ms = 1000, .timeout_ms = 1001};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), DA_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "must not be longer than interval"));

    s = (struct check_spec){.type = CHECK_TTL};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), DA_EINVAL);
    s = (struct check_spec){.type = CHECK_NONE};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), DA_EINVAL);
    s = (struct check_spec){.type = CHECK_TCP, .rise = -1};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), DA_EINVAL);
    s = (struct check_spec){.type = CHECK_HTTP, .http_url = "ftp://x/"};
    ck_assert_int_eq(check_spec_normalize(&s, false, err, sizeof err), DA_EINVAL);
    s = (struct check_spec){.type = CHECK_EXEC};
    ck_assert_int_eq(check_spec_normalize(&s, true, err, sizeof err), DA_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "command"));

    s = (struct check_spec){.type = CHECK_EXEC, .exec_argv = argv, .grpc_service = "x"};
    ck_assert_int_eq(check_spec_copy(&c, &s), 0);
    ck_assert_ptr_ne(c.exec_argv, argv);
    ck_assert_str_eq(c.exec_argv[0], "/bin/true");
    ck_assert_ptr_null(c.exec_argv[1]);
    ck_assert(check_spec_equal(&c, &s));
    c.interval_ms = 10000; /* the default written out is the same check */
    ck_assert(check_spec_equal(&c, &s));
    c.rise = 5;
    ck_assert(!check_spec_equal(&c, &s));
    check_spec_clear(&c);
    check_spec_clear(NULL);
}
END_TEST

/* check_spec_build(): the one reader behind the YAML and the JSON front
 * ends, with every limit of the schema. */
START_TEST(test_spec_build)
{
    struct check_input in = {.owner = "service a"};
    struct check_spec s;
    struct check_error why;
    const char *argv[CHECK_ARGV_MAX + 1];
    size_t n;
    const char *const *keys = check_spec_keys(&n);

    ck_assert_uint_eq(n, CHECK_KEY_COUNT);
    ck_assert_str_eq(keys[CHECK_KEY_COMMAND], "command");

    /* No type: the check as a whole is wrong. */
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_COUNT);
    ck_assert_ptr_nonnull(strstr(why.msg, "the check of service a has no type"));

    in.value[CHECK_KEY_TYPE] = (struct check_value){"tcp", false};
    in.value[CHECK_KEY_INTERVAL] = (struct check_value){"1s", true};
    in.value[CHECK_KEY_RISE] = (struct check_value){"100", false};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), 0);
    ck_assert_int_eq(s.type, CHECK_TCP);
    ck_assert_uint_eq(s.interval_ms, 1000);
    ck_assert_uint_eq(s.timeout_ms, 500);
    ck_assert_int_eq(s.rise, 100);
    ck_assert_int_eq(s.fall, CHECK_DEFAULT_FALL);
    check_spec_clear(&s);

    /* rise and fall: 1..100, written as bare numbers. */
    in.value[CHECK_KEY_RISE] = (struct check_value){"101", false};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_RISE);
    in.value[CHECK_KEY_RISE] = (struct check_value){"3", true};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_RISE);
    in.value[CHECK_KEY_RISE] = (struct check_value){NULL, false};
    in.value[CHECK_KEY_FALL] = (struct check_value){"0", false};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_FALL);
    ck_assert_ptr_null(s.http_url);
    in.value[CHECK_KEY_FALL] = (struct check_value){NULL, false};

    in.value[CHECK_KEY_TIMEOUT] = (struct check_value){"soon", true};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_TIMEOUT);
    in.value[CHECK_KEY_TIMEOUT] = (struct check_value){"2s", true};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_COUNT);
    ck_assert_ptr_nonnull(strstr(why.msg, "bad check for service a: tcp check: timeout"));
    in.value[CHECK_KEY_TIMEOUT] = (struct check_value){NULL, false};

    /* exec: a command of 1..64 non-empty items, and only when enabled. */
    in.value[CHECK_KEY_TYPE] = (struct check_value){"exec", false};
    for (size_t i = 0; i <= CHECK_ARGV_MAX; i++)
        argv[i] = "x";
    in.has_command = true;
    in.command = argv;
    in.n_command = CHECK_ARGV_MAX;
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), 0);
    ck_assert_str_eq(s.exec_argv[CHECK_ARGV_MAX - 1], "x");
    ck_assert_ptr_null(s.exec_argv[CHECK_ARGV_MAX]);
    check_spec_clear(&s);
    ck_assert_int_eq(check_spec_build(&s, &in, false, &why), DA_EINVAL);
    ck_assert_ptr_nonnull(strstr(why.msg, "exec checks are disabled"));
    in.n_command = CHECK_ARGV_MAX + 1;
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_COMMAND);
    in.n_command = 0;
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    argv[1] = "";
    in.n_command = 2;
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_COMMAND);
    ck_assert_uint_eq(why.item, 1);
    ck_assert_ptr_null(s.exec_argv);

    /* http: the url's scheme. */
    in = (struct check_input){.owner = NULL};
    in.value[CHECK_KEY_TYPE] = (struct check_value){"http", true};
    in.value[CHECK_KEY_URL] = (struct check_value){"ftp://x/", true};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_URL);
    in.value[CHECK_KEY_URL] = (struct check_value){"https://x/health", true};
    ck_assert_int_eq(check_spec_build(&s, &in, true, NULL), 0);
    ck_assert_str_eq(s.http_url, "https://x/health");
    check_spec_clear(&s);

    in.value[CHECK_KEY_TYPE] = (struct check_value){"none", false};
    ck_assert_int_eq(check_spec_build(&s, &in, true, &why), DA_EINVAL);
    ck_assert_int_eq(why.key, CHECK_KEY_TYPE);
}
END_TEST

START_TEST(test_bad_starts)
{
    struct fx f;
    struct obs o = {0};
    checker *k = NULL;
    char err[256];
    char *argv[] = {"/bin/true", NULL};
    struct check_spec exec = {.type = CHECK_EXEC, .exec_argv = argv, .interval_ms = 200};
    struct check_spec tcp = {.type = CHECK_TCP, .interval_ms = 200};

    fx_init(&f, false);
    /* exec checks disabled: refused with a message, no callback ever. */
    ck_assert_int_eq(checker_start(&k, f.ctx, &exec, NULL, obs_cb, &o, err, sizeof err), DA_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "exec checks are disabled"));
    ck_assert_int_eq(checker_start(&k, f.ctx, &tcp, "no-port", obs_cb, &o, err, sizeof err),
                     DA_EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "host:port"));
    ck_assert_int_eq(checker_start(&k, f.ctx, &tcp, NULL, obs_cb, &o, err, sizeof err), DA_EINVAL);
    ck_assert_int_eq(checker_start(&k, f.ctx, &tcp, "[::1:80", obs_cb, &o, err, sizeof err),
                     DA_EINVAL);
    ck_assert_int_eq(checker_start(&k, f.ctx, &tcp, "h:70000", obs_cb, &o, err, sizeof err),
                     DA_EINVAL);
    /* Enabled later (a reload): new checkers may run commands. */
    check_ctx_set_exec_enabled(f.ctx, true);
    ck_assert_int_eq(checker_start(&k, f.ctx, &exec, NULL, obs_cb, &o, err, sizeof err), 0);
    checker_close(k);
    fx_finish(&f);
    ck_assert_int_eq(o.n, 0);
}
END_TEST

/* ---- tcp ---------------------------------------------------------------------------------- */

START_TEST(test_tcp_not_answering_then_answering)
{
    struct fx f;
    struct obs o = {0};
    struct check_spec spec = {
        .type = CHECK_TCP, .interval_ms = 100, .timeout_ms = 100, .rise = 2, .fall = 3};
    struct listener l;
    int port = free_port();
    checker *k;
    uint64_t t0, up;

    fx_init(&f, false);
    k = start(&f, &spec, addr_of(port), &o);
    /* Nothing listens: never healthy, however many probes. */
    ck_assert(wait_probes(&f, k, 8, LIVE_MS));
    ck_assert_int_eq(o.n, 0);
    ck_assert(!state(k).healthy);
    ck_assert_int_ge(state(k).failures, 8);
    ck_assert_str_eq(state(k).output, "connect: Connection refused");
    ck_assert_uint_eq(state(k).changed_at_ms, 0);

    /* It starts answering: healthy after rise (2) passes, so not before
     * one interval has passed between them. */
    listener_start(&l, &f.loop, port);
    t0 = now_ms(&f);
    ck_assert(wait_changes(&f, &o, 1, LIVE_MS));
    up = o.at[0] - t0;
    fprintf(stderr, "measure: tcp listener up -> healthy: %llu ms (interval 100, rise 2)\n",
            (unsigned long long)up);
    ck_assert(o.val[0]);
    ck_assert_int_eq(o.passes_at_change, 2);
    ck_assert_uint_ge(up, 100 - 10);
    ck_assert_str_eq(state(k).output, "connected");
    ck_assert_uint_eq(state(k).changed_at_ms, o.at[0]);
    ck_assert_int_ge(l.accepted, 2);

    checker_close(k);
    listener_stop(&l);
    fx_finish(&f);
}
END_TEST

START_TEST(test_tcp_host_name)
{
    struct fx f;
    struct obs o = {0};
    struct check_spec spec = {.type = CHECK_TCP, .interval_ms = 100, .timeout_ms = 100, .rise = 1};
    /* The resolver may ask the network about .invalid: give it time, so
     * that the result is the resolver's answer, not our timeout. */
    struct check_spec slow = {.type = CHECK_TCP, .interval_ms = 5000, .timeout_ms = 5000};
    struct listener l;
    char addr[64];
    checker *k;

    fx_init(&f, false);
    listener_start(&l, &f.loop, 0);
    {
        struct sockaddr_in sa;
        int len = sizeof sa;
        ck_assert_int_eq(uv_tcp_getsockname(&l.tcp, (struct sockaddr *)&sa, &len), 0);
        snprintf(addr, sizeof addr, "localhost:%d", ntohs(sa.sin_port));
    }
    k = start(&f, &spec, addr, &o);
    ck_assert(wait_changes(&f, &o, 1, LIVE_MS));
    ck_assert(o.healthy);
    checker_close(k);

    /* A name that does not resolve is a failure with the resolver's text. */
    o = (struct obs){0};
    k = start(&f, &slow, "no-such-host.invalid:80", &o);
    ck_assert(wait_probes(&f, k, 1, LIVE_MS));
    ck_assert_msg(!strncmp(state(k).output, "resolve no-such-host.invalid: ", 30), "%s",
                  state(k).output);
    checker_close(k);
    listener_stop(&l);
    fx_finish(&f);
}
END_TEST

/* ---- http ---------------------------------------------------------------------------------- */

START_TEST(test_http_500_vs_200)
{
    static const char *const r500[] = {
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 15\r\n\r\ndatabase down\r\n"};
    static const char *const r200[] = {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"};
    struct responder *bad = responder_start(r500, 1), *good = responder_start(r200, 1);
    struct fx f;
    struct obs ob = {0}, og = {0};
    struct check_spec sbad = {.type = CHECK_HTTP, .interval_ms = 1000, .timeout_ms = 1000};
    struct check_spec sgood = sbad;
    char url[128];
    checker *kb, *kg;

    ck_assert_ptr_nonnull(bad);
    ck_assert_ptr_nonnull(good);
    fx_init(&f, false);
    snprintf(url, sizeof url, "%s/ready", responder_url(bad));
    sbad.http_url = url;
    kb = start(&f, &sbad, NULL, &ob);
    /* No URL: http://<address>/health. */
    kg = start(&f, &sgood, addr_of(responder_port(good)), &og);
    ck_assert(wait_changes(&f, &og, 1, LIVE_MS));
    ck_assert(og.healthy);
    ck_assert_str_eq(state(kg).output, "HTTP 200: ok");
    ck_assert(!strncmp(responder_last_request(good), "GET /health HTTP/1.1", 20));
    ck_assert(wait_probes(&f, kb, 3, LIVE_MS));
    ck_assert_int_eq(ob.n, 0);
    ck_assert(!state(kb).healthy);
    ck_assert_int_ge(state(kb).failures, 3);
    ck_assert_str_eq(state(kb).output, "HTTP 500: database down");
    ck_assert(!strncmp(responder_last_request(bad), "GET /ready HTTP/1.1", 19));

    checker_close(kb);
    checker_close(kg);
    fx_finish(&f);
    responder_stop(bad);
    responder_stop(good);
}
END_TEST

#define OK200 "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
#define E503 "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"

/* Healthy first, then pass/fail alternating (and two failures in a row at
 * most): with rise 2 and fall 3 nothing changes. */
START_TEST(test_http_flapping_no_change)
{
    static const char *const script[] = {
        OK200, OK200,                                         /* healthy */
        E503,  OK200, E503, OK200, E503, E503,  OK200, E503,  /* flapping */
        OK200, E503,  E503, OK200, E503, OK200, E503,  OK200, /* more of it */
        OK200,
    };
    struct responder *r = responder_start(script, sizeof script / sizeof script[0]);
    struct fx f;
    struct obs o = {0};
    /* A probe that timed out would shift the script: a timeout no loaded
     * machine misses on loopback. */
    struct check_spec spec = {
        .type = CHECK_HTTP, .interval_ms = 250, .timeout_ms = 250, .rise = 2, .fall = 3};
    checker *k;

    ck_assert_ptr_nonnull(r);
    fx_init(&f, false);
    k = start(&f, &spec, addr_of(responder_port(r)), &o);
    ck_assert(wait_probes(&f, k, 19, 3 * LIVE_MS));
    ck_assert_int_eq(o.n, 1); /* the first change only */
    ck_assert(o.val[0]);
    ck_assert(state(k).healthy);
    checker_close(k);
    fx_finish(&f);
    responder_stop(r);
}
END_TEST

/* ---- ttl -------------------------------------------------------------------------------------- */

START_TEST(test_ttl_expires_and_recovers)
{
    struct fx f;
    struct obs o = {0};
    /* A ttl far above the 120 ms between passes below, so that a loaded
     * machine's pauses cannot expire it there. */
    struct check_spec spec = {.type = CHECK_TTL, .ttl_ms = 1000, .rise = 1, .fall = 2};
    struct check_spec tcp = {.type = CHECK_TCP, .interval_ms = 100};
    checker *k, *other;
    uint64_t t0, down;

    fx_init(&f, false);
    k = start(&f, &spec, "127.0.0.1:1", &o);
    loop_for(&f.loop, 50);
    ck_assert_uint_eq(state(k).probes, 0); /* nothing probes a ttl check */
    checker_pass(k);
    ck_assert_int_eq(o.n, 1);
    ck_assert(o.healthy);
    ck_assert_str_eq(state(k).output, "pass");

    /* Passes more often than the ttl keep it healthy. */
    for (int i = 0; i < 5; i++) {
        loop_for(&f.loop, 120);
        checker_pass(k);
    }
    ck_assert_int_eq(o.n, 1);
    ck_assert_int_eq(state(k).failures, 0);

    /* Silence: one failure per ttl, unhealthy after fall (2) of them, so
     * never before two ttls. */
    t0 = now_ms(&f);
    ck_assert(wait_changes(&f, &o, 2, LIVE_MS));
    down = o.at[1] - t0;
    fprintf(stderr, "measure: ttl 1000 ms, fall 2: last pass -> unhealthy: %llu ms\n",
            (unsigned long long)down);
    ck_assert(!o.healthy);
    ck_assert_int_eq(o.failures_at_change, 2);
    ck_assert_uint_ge(down, 2 * 1000 - 10);
    ck_assert_str_eq(state(k).output, "ttl expired");

    /* Recovers with the next pass. */
    checker_pass(k);
    ck_assert_int_eq(o.n, 3);
    ck_assert(o.healthy);

    /* An explicit failure counts, with its reason. */
    checker_fail(k, "disk full");
    ck_assert_str_eq(state(k).output, "disk full");
    ck_assert_int_eq(state(k).failures, 1);
    ck_assert(o.healthy);

    /* pass and fail mean nothing to a probing checker. */
    other = start(&f, &tcp, "127.0.0.1:1", &(struct obs){0});
    checker_pass(other);
    checker_fail(other, "x");
    ck_assert_uint_eq(state(other).probes, 0);
    checker_close(other);
    checker_close(k);
    fx_finish(&f);
}
END_TEST

/* Pass and fail alternating from the start (rise 2, fall 3): never
 * healthy; once healthy, failures between passes never make it unhealthy. */
START_TEST(test_ttl_flapping_no_change)
{
    struct fx f;
    struct obs o = {0};
    struct check_spec spec = {.type = CHECK_TTL, .ttl_ms = 10000, .rise = 2, .fall = 3};
    checker *k;

    fx_init(&f, false);
    k = start(&f, &spec, NULL, &o);
    for (int i = 0; i < 20; i++) {
        checker_pass(k);
        checker_fail(k, "flap");
    }
    ck_assert_int_eq(o.n, 0);
    checker_pass(k);
    checker_pass(k);
    ck_assert_int_eq(o.n, 1);
    for (int i = 0; i < 20; i++) {
        checker_fail(k, "flap");
        checker_fail(k, "flap");
        checker_pass(k);
    }
    ck_assert_int_eq(o.n, 1);
    ck_assert(state(k).healthy);
    checker_fail(k, "down");
    checker_fail(k, "down");
    checker_fail(k, "down");
    ck_assert_int_eq(o.n, 2);
    ck_assert(!o.healthy);
    ck_assert_int_eq(o.failures_at_change, 3);
    checker_close(k);
    fx_finish(&f);
}
END_TEST

/* ---- exec ------------------------------------------------------------------------------------- */

START_TEST(test_exec_results)
{
    struct fx f;
    struct obs ot = {0}, of = {0}, oo = {0}, oe = {0}, on = {0};
    char *t[] = {"/bin/true", NULL};
    char *fl[] = {"/bin/false", NULL};
    char *out[] = {"/bin/sh", "-c", "echo 'first line'; echo second; exit 3", NULL};
    char *err[] = {"sh", "-c", "echo oops >&2; exit 2", NULL}; /* found on PATH */
    char *none[] = {"/nonexistent/cmd", NULL};
    /* Commands that end at once, given a timeout a loaded machine always
     * meets (an 80 ms one once reported "timed out" for /bin/false). */
    struct check_spec s = {.type = CHECK_EXEC, .interval_ms = 2000, .timeout_ms = 2000, .rise = 1};
    checker *kt, *kf, *ko, *ke, *kn;

    fx_init(&f, true);
    s.exec_argv = t;
    kt = start(&f, &s, NULL, &ot);
    s.exec_argv = fl;
    kf = start(&f, &s, NULL, &of);
    s.exec_argv = out;
    ko = start(&f, &s, NULL, &oo);
    s.exec_argv = err;
    ke = start(&f, &s, NULL, &oe);
    s.exec_argv = none;
    kn = start(&f, &s, NULL, &on);
    ck_assert(wait_changes(&f, &ot, 1, LIVE_MS));
    ck_assert(ot.healthy);
    ck_assert_str_eq(state(kt).output, "exit 0");
    ck_assert(wait_probes(&f, kf, 2, LIVE_MS));
    ck_assert(wait_probes(&f, ko, 2, LIVE_MS));
    ck_assert(wait_probes(&f, ke, 2, LIVE_MS));
    ck_assert(wait_probes(&f, kn, 2, LIVE_MS));
    ck_assert_str_eq(state(kf).output, "exit 1");
    ck_assert_str_eq(state(ko).output, "exit 3: first line");
    ck_assert_str_eq(state(ke).output, "exit 2: oops");
    ck_assert_str_eq(state(kn).output, "spawn /nonexistent/cmd: No such file or directory");
    ck_assert_int_eq(of.n + oo.n + oe.n + on.n, 0);
    checker_close(kt);
    checker_close(kf);
    checker_close(ko);
    checker_close(ke);
    checker_close(kn);
    fx_finish(&f);
}
END_TEST

static bool pid_gone(pid_t pid)
{
    char path[64], buf[256];
    FILE *fp;
    char *p;

    if (kill(pid, 0) < 0 && errno == ESRCH)
        return true;
    /* A zombie waiting for a reaper that is not us is dead too. */
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fp = fopen(path, "r");
    if (!fp)
        return true;
    p = fgets(buf, sizeof buf, fp);
    fclose(fp);
    p = p ? strrchr(buf, ')') : NULL;
    return p && (p[2] == 'Z' || p[2] == 'X');
}

/* A command that never ends times out on time, and its whole process group
 * (a background child of the script included) is killed. */
START_TEST(test_exec_timeout_kills_group)
{
    struct fx f;
    struct obs o = {0};
    char pidfile[] = "/tmp/check-test-XXXXXX";
    char script[256];
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    /* Time enough for the shell to start its background child first. */
    struct check_spec s = {
        .type = CHECK_EXEC, .interval_ms = 1500, .timeout_ms = 1000, .exec_argv = argv};
    checker *k;
    uint64_t t0, took;
    FILE *fp;
    int fd = mkstemp(pidfile), pid = 0;

    ck_assert_int_ge(fd, 0);
    close(fd);
    snprintf(script, sizeof script, "sleep 10 & echo $! > %s; sleep 10", pidfile);
    fx_init(&f, true);
    t0 = now_ms(&f);
    k = start(&f, &s, NULL, &o);
    ck_assert(wait_probes(&f, k, 1, LIVE_MS));
    took = state(k).last_run_ms - t0;
    fprintf(stderr, "measure: exec 'sleep 10' with timeout 1000 ms: failed after %llu ms\n",
            (unsigned long long)took);
    ck_assert_str_eq(state(k).output, "timed out after 1000 ms");
    ck_assert_uint_ge(took, 1000 - 5); /* never before its timeout */
    fp = fopen(pidfile, "r");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(fscanf(fp, "%d", &pid), 1);
    fclose(fp);
    unlink(pidfile);
    /* Killed with its group; a loaded machine may take a while to reap. */
    for (int i = 0; i < LIVE_MS / 50 && !pid_gone(pid); i++)
        loop_for(&f.loop, 50);
    ck_assert_msg(pid_gone(pid), "background child %d survived", pid);
    checker_close(k);
    fx_finish(&f);
}
END_TEST

/* ---- grpc ------------------------------------------------------------------------------------- */

START_TEST(test_grpc_not_serving_and_back)
{
    struct hsrv *srv = hsrv_start(0, 1);
    struct fx f;
    struct obs o = {0};
    /* The answers are what is asserted: a timeout no loaded machine misses
     * on loopback, so that none of them is "timed out". */
    struct check_spec spec = {
        .type = CHECK_GRPC, .interval_ms = 500, .timeout_ms = 500, .rise = 2, .fall = 3};
    checker *k;
    uint64_t t0, up, down, back;

    fx_init(&f, false);
    t0 = now_ms(&f);
    k = start(&f, &spec, addr_of(srv->port), &o);
    ck_assert(wait_changes(&f, &o, 1, LIVE_MS));
    up = o.at[0] - t0;
    ck_assert(o.healthy);
    ck_assert_str_eq(state(k).output, "SERVING");
    ck_assert_str_eq(srv->last_service, "");

    /* NOT_SERVING: unhealthy after fall (3) probes, so not before two
     * intervals. */
    atomic_store(&srv->status, 2);
    t0 = now_ms(&f);
    ck_assert(wait_changes(&f, &o, 2, LIVE_MS));
    down = o.at[1] - t0;
    ck_assert(!o.healthy);
    ck_assert_int_eq(o.failures_at_change, 3);
    ck_assert_str_eq(state(k).output, "NOT_SERVING");
    ck_assert_uint_ge(down, 2 * 500 - 10);

    /* Serving again: healthy after rise (2) probes, so not before one
     * interval. */
    atomic_store(&srv->status, 1);
    t0 = now_ms(&f);
    ck_assert(wait_changes(&f, &o, 3, LIVE_MS));
    back = o.at[2] - t0;
    ck_assert(o.healthy);
    ck_assert_int_eq(o.passes_at_change, 2);
    ck_assert_str_eq(state(k).output, "SERVING");
    ck_assert_uint_ge(back, 500 - 10);
    fprintf(stderr,
            "measure: grpc interval 500 fall 3 rise 2: start -> healthy %llu ms, "
            "NOT_SERVING -> unhealthy %llu ms, SERVING -> healthy %llu ms\n",
            (unsigned long long)up, (unsigned long long)down, (unsigned long long)back);
    checker_close(k);
    fx_finish(&f);
    hsrv_stop(srv);
}
END_TEST

START_TEST(test_grpc_service_name)
{
    struct hsrv *srv = hsrv_start(0, 1);
    struct fx f;
    struct obs ok = {0}, ou = {0};
    struct check_spec known = {
        .type = CHECK_GRPC, .interval_ms = 300, .timeout_ms = 300, .grpc_service = "known.Service"};
    struct check_spec unknown = known;
    char target[64];
    checker *kk, *ku;
    uint64_t n;

    unknown.grpc_service = "other.Service";
    fx_init(&f, false);
    /* A full C-core target is accepted as well. */
    snprintf(target, sizeof target, "ipv4:127.0.0.1:%d", srv->port);
    kk = start(&f, &known, target, &ok);
    ku = start(&f, &unknown, addr_of(srv->port), &ou);
    ck_assert(wait_changes(&f, &ok, 1, LIVE_MS));
    ck_assert(wait_probes(&f, ku, 3, LIVE_MS));
    ck_assert_int_eq(ou.n, 0);
    ck_assert_str_eq(state(ku).output, "rpc: NOT_FOUND: unknown service");
    /* With kk gone, the next request the server reads is ku's. */
    checker_close(kk);
    n = state(ku).probes;
    ck_assert(wait_probes(&f, ku, n + 2, LIVE_MS));
    pthread_mutex_lock(&srv->mu);
    ck_assert_str_eq(srv->last_service, "other.Service");
    pthread_mutex_unlock(&srv->mu);
    checker_close(ku);
    fx_finish(&f);
    hsrv_stop(srv);
}
END_TEST

/* No server yet: failures (UNAVAILABLE) and never healthy; a server that
 * starts on the port is seen by the next probes, each of which first
 * reconnects, rather than after C-core's reconnect backoff. */
START_TEST(test_grpc_server_appears)
{
    int port = free_port();
    struct hsrv *srv;
    struct fx f;
    struct obs o = {0};
    struct check_spec spec = {.type = CHECK_GRPC, .interval_ms = 300, .timeout_ms = 300};
    checker *k;
    uint64_t t0, up, p0;

    fx_init(&f, false);
    k = start(&f, &spec, addr_of(port), &o);
    ck_assert(wait_probes(&f, k, 5, LIVE_MS));
    ck_assert_int_eq(o.n, 0);
    ck_assert_int_ge(state(k).failures, 5);
    ck_assert_msg(!strncmp(state(k).output, "rpc: UNAVAILABLE", 16), "%s", state(k).output);
    fprintf(stderr, "measure: grpc, no server: \"%s\"\n", state(k).output);

    srv = hsrv_start(port, 1);
    p0 = state(k).probes;
    t0 = now_ms(&f);
    ck_assert(wait_changes(&f, &o, 1, LIVE_MS));
    up = o.at[0] - t0;
    fprintf(stderr,
            "measure: grpc server started -> healthy: %llu ms, %llu probes "
            "(interval 300, rise 2)\n",
            (unsigned long long)up, (unsigned long long)(o.probes_at_change - p0));
    ck_assert(o.healthy);
    ck_assert_int_eq(o.passes_at_change, 2);
    ck_assert_str_eq(state(k).output, "SERVING");
    checker_close(k);
    fx_finish(&f);
    hsrv_stop(srv);
}
END_TEST

/* A checker stopped while its probe waits for a channel that cannot
 * become ready (a listener that never accepts, so that the HTTP/2
 * handshake never ends and the call waits for its deadline):
 * check_ctx_free(), which joins the gRPC thread, cancels the call instead
 * of waiting for that deadline. */
START_TEST(test_grpc_stop_while_connecting)
{
    struct fx f;
    struct obs o = {0};
    struct check_spec spec = {.type = CHECK_GRPC, .interval_ms = 8000, .timeout_ms = 8000};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    checker *k;
    uint64_t took;
    struct timespec a, b;

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    fx_init(&f, false);
    k = start(&f, &spec, addr_of(ntohs(sa.sin_port)), &o);
    loop_for(&f.loop, 200);                /* the first probe starts at once */
    ck_assert_uint_eq(state(k).probes, 0); /* and is waiting */
    checker_close(k);
    clock_gettime(CLOCK_MONOTONIC, &a);
    check_ctx_free(f.ctx);
    clock_gettime(CLOCK_MONOTONIC, &b);
    took = (uint64_t)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000);
    fprintf(stderr, "measure: check_ctx_free with a probe waiting for a channel: %llu ms\n",
            (unsigned long long)took);
    /* Not a speed bound: waiting for the call's deadline would take the
     * 7.8 s left of it. */
    ck_assert_uint_lt(took, 8000 - 200 - 2000);
    f.ctx = NULL;
    http_client_close(f.http);
    ck_assert_int_eq(loop_finish(&f.loop), 0);
    close(fd);
}
END_TEST

/* ---- slow probes ------------------------------------------------------------------------------ */

/* Watches the fast checker: its results, and how many of them came while
 * the slow http checker went from its first result to its fourth. */
struct sampler {
    uv_timer_t t;
    checker *k, *slow;
    uint64_t last_run, max_gap, results;
    uint64_t results_at_slow1, results_at_slow4;
};

static void sample(uv_timer_t *t)
{
    struct sampler *s = t->data;
    struct check_state st, slow;

    checker_state(s->k, &st);
    if (st.probes != s->results) {
        if (s->last_run && st.last_run_ms - s->last_run > s->max_gap)
            s->max_gap = st.last_run_ms - s->last_run;
        s->last_run = st.last_run_ms;
        s->results = st.probes;
    }
    checker_state(s->slow, &slow);
    if (slow.probes < 1)
        s->results_at_slow1 = s->results;
    if (slow.probes < 4)
        s->results_at_slow4 = s->results;
}

/* Probes that never answer (an HTTP server that hangs, a gRPC server that
 * hangs, `sleep 10`) time out, never before their timeout, and do not hold
 * up a fast checker: a loop blocked by one of them would give the fast
 * checker no result while they hang. */
START_TEST(test_slow_probes_do_not_delay_others)
{
    static const char *const hang[] = {"@HANG"};
    struct responder *r = responder_start(hang, 1);
    struct hsrv *srv = hsrv_start(0, 1);
    struct fx f;
    struct obs oh = {0}, og = {0}, oe = {0}, of = {0};
    char *sleep10[] = {"sleep", "10", NULL};
    struct check_spec slow_http = {.type = CHECK_HTTP, .interval_ms = 300, .timeout_ms = 200};
    struct check_spec slow_grpc = {.type = CHECK_GRPC, .interval_ms = 300, .timeout_ms = 200};
    struct check_spec slow_exec = {
        .type = CHECK_EXEC, .interval_ms = 300, .timeout_ms = 200, .exec_argv = sleep10};
    /* The fast one is expected to pass: a timeout no loaded machine misses. */
    struct check_spec fast = {.type = CHECK_TCP, .interval_ms = 100, .timeout_ms = 100};
    struct listener l;
    struct sampler s = {0};
    checker *kh, *kg, *ke, *kf;
    uint64_t t0, th, tg, te;
    int sockport;

    ck_assert_ptr_nonnull(r);
    atomic_store(&srv->hang, true);
    fx_init(&f, true);
    listener_start(&l, &f.loop, 0);
    {
        struct sockaddr_in sa;
        int len = sizeof sa;
        ck_assert_int_eq(uv_tcp_getsockname(&l.tcp, (struct sockaddr *)&sa, &len), 0);
        sockport = ntohs(sa.sin_port);
    }
    t0 = now_ms(&f);
    kh = start(&f, &slow_http, addr_of(responder_port(r)), &oh);
    kg = start(&f, &slow_grpc, addr_of(srv->port), &og);
    ke = start(&f, &slow_exec, NULL, &oe);
    kf = start(&f, &fast, addr_of(sockport), &of);
    s.k = kf;
    s.slow = kh;
    uv_timer_init(&f.loop, &s.t);
    s.t.data = &s;
    uv_timer_start(&s.t, sample, 1, 1);

    ck_assert(wait_probes(&f, kh, 1, LIVE_MS));
    ck_assert(wait_probes(&f, kg, 1, LIVE_MS));
    ck_assert(wait_probes(&f, ke, 1, LIVE_MS));
    th = state(kh).last_run_ms - t0;
    tg = state(kg).last_run_ms - t0;
    te = state(ke).last_run_ms - t0;
    ck_assert_str_eq(state(kh).output, "timed out after 200 ms");
    ck_assert_str_eq(state(kg).output, "timed out after 200 ms");
    ck_assert_str_eq(state(ke).output, "timed out after 200 ms");
    ck_assert(wait_probes(&f, kh, 4, LIVE_MS));
    ck_assert(wait_probes(&f, kg, 4, LIVE_MS));
    ck_assert(wait_probes(&f, ke, 4, LIVE_MS));
    uv_close((uv_handle_t *)&s.t, NULL);

    fprintf(stderr,
            "measure: hanging probes (timeout 200 ms) failed after http %llu, grpc %llu, "
            "exec %llu ms; fast tcp checker (interval 100): %llu results, %llu while the "
            "hanging http checker went from 1 to 4 results, largest gap %llu ms; hanging "
            "http probes started: %d, grpc: %d\n",
            (unsigned long long)th, (unsigned long long)tg, (unsigned long long)te,
            (unsigned long long)s.results,
            (unsigned long long)(s.results_at_slow4 - s.results_at_slow1),
            (unsigned long long)s.max_gap, responder_requests(r), atomic_load(&srv->checks));
    /* Never before the timeout (a late one is only a slow machine). */
    ck_assert_uint_ge(th, 195);
    ck_assert_uint_ge(tg, 195);
    ck_assert_uint_ge(te, 195);
    /* Not held up: the fast checker kept reporting while probes hung for
     * three intervals of the slow checker. */
    ck_assert_uint_ge(s.results_at_slow4 - s.results_at_slow1, 2);
    ck_assert(state(kf).healthy);
    /* One probe per interval, each abandoned at its timeout: never two at
     * once, so never more requests than probes started. */
    ck_assert_int_ge(responder_requests(r), 1);
    ck_assert_int_le(responder_requests(r), (int)state(kh).probes + 1);
    ck_assert_int_le(atomic_load(&srv->checks), (int)state(kg).probes + 1);
    ck_assert_int_ge(state(kh).failures, 4);
    ck_assert_int_eq(oh.n + og.n + oe.n, 0);

    /* Stopped with probes in flight: nothing leaks (loop_finish). */
    checker_close(kh);
    checker_close(kg);
    checker_close(ke);
    checker_close(kf);
    listener_stop(&l);
    fx_finish(&f);
    hsrv_stop(srv);
    responder_stop(r);
}
END_TEST

/* A timeout equal to the interval (issue 13): the probe that hangs for a
 * whole interval is counted as failed when the next one is due, and that
 * one starts then, rather than being skipped for an interval. Measured
 * against a timer of the same interval on the same loop, so that a slow
 * machine slows both alike. */
struct ticker {
    uv_timer_t t;
    int ticks;
};

static void ticker_cb(uv_timer_t *t)
{
    ((struct ticker *)t->data)->ticks++;
}

START_TEST(test_timeout_equal_to_interval)
{
    static const char *const hang[] = {"@HANG"};
    struct responder *r = responder_start(hang, 1);
    struct check_spec spec = {
        .type = CHECK_HTTP, .interval_ms = 100, .timeout_ms = 100, .fall = 100};
    struct ticker tk = {.ticks = 0};
    struct check_state st;
    struct obs o = {0};
    struct fx f;
    checker *k;

    ck_assert_ptr_nonnull(r);
    fx_init(&f, false);
    uv_timer_init(&f.loop, &tk.t);
    tk.t.data = &tk;
    uv_timer_start(&tk.t, ticker_cb, 100, 100);
    k = start(&f, &spec, addr_of(responder_port(r)), &o);
    ck_assert(wait_probes(&f, k, 12, LIVE_MS));
    st = state(k);
    fprintf(stderr, "measure: timeout == interval: %llu results in %d intervals, %d requests\n",
            (unsigned long long)st.probes, tk.ticks, responder_requests(r));
    ck_assert_str_eq(st.output, "timed out after 100 ms");
    ck_assert_int_eq(st.failures, (int)st.probes);
    /* One result per interval: skipping every other probe would give
     * about 12 results in 24 intervals. */
    ck_assert_int_le(tk.ticks, 12 + 4);
    /* Each probe is a request (one that a loaded machine timed out before
     * it was sent is not), never two at once. */
    ck_assert_int_ge(responder_requests(r), 1);
    ck_assert_int_le(responder_requests(r), (int)st.probes + 1);
    uv_close((uv_handle_t *)&tk.t, NULL);
    checker_close(k);
    fx_finish(&f);
    responder_stop(r);
}
END_TEST

/* ---- lifetime ---------------------------------------------------------------------------------- */

/* A callback may stop its own checker; the context stops what is left. */
START_TEST(test_stop_in_callback_and_ctx_free)
{
    struct hsrv *srv = hsrv_start(0, 1);
    static const char *const hang[] = {"@HANG"};
    struct responder *r = responder_start(hang, 1);
    struct fx f;
    struct obs o1 = {.stop_self = true}, o2 = {0}, o3 = {0};
    struct check_spec g = {.type = CHECK_GRPC, .interval_ms = 100, .timeout_ms = 100, .rise = 1};
    struct check_spec h = {.type = CHECK_HTTP, .interval_ms = 300, .timeout_ms = 250};
    checker *k1;

    fx_init(&f, false);
    k1 = start(&f, &g, addr_of(srv->port), &o1);
    (void)start(&f, &g, addr_of(srv->port), &o2);
    (void)start(&f, &h, addr_of(responder_port(r)), &o3);
    ck_assert(wait_changes(&f, &o1, 1, LIVE_MS));
    ck_assert(wait_changes(&f, &o2, 1, LIVE_MS));
    (void)k1;
    atomic_store(&srv->status, 2);
    ck_assert(wait_changes(&f, &o2, 2, LIVE_MS));
    loop_for(&f.loop, 200);
    ck_assert_int_eq(o1.n, 1); /* stopped in its callback: no more */
    ck_assert_int_eq(o2.n, 2);
    /* The http probe hangs right now; the context stops it. */
    fx_finish(&f);
    ck_assert_int_eq(o3.n, 0);
    hsrv_stop(srv);
    responder_stop(r);
}
END_TEST

/* Teardown with gRPC calls in flight, in every order the loop allows:
 * checkers that stop themselves from their callback, probes cancelled by
 * their timeout (so that the next one first waits for the channel),
 * probes waiting for a channel that cannot connect, and calls a server
 * holds without answering, all cut at a different moment of each round by
 * check_ctx_free(). The gRPC side must never start a call or a watch on
 * its queue once that is shut down (C-core aborts: grpc_cq_begin_op), nor
 * leak a handle. */
START_TEST(test_grpc_teardown_in_flight)
{
    struct hsrv *ok = hsrv_start(0, 1), *hung = hsrv_start(0, 1);
    struct check_spec serve = {.type = CHECK_GRPC, .interval_ms = 10, .timeout_ms = 10, .rise = 1};
    struct check_spec hang = {.type = CHECK_GRPC, .interval_ms = 10, .timeout_ms = 5};
    struct check_spec down = {.type = CHECK_GRPC, .interval_ms = 10, .timeout_ms = 10};
    int down_port = free_port(), self_stops = 0;
    uint64_t probes = 0;

    atomic_store(&hung->hang, true);
    for (int round = 0; round < 40; round++) {
        struct obs os[3] = {{.stop_self = true}, {.stop_self = true}, {.stop_self = true}};
        struct obs oh[2] = {{0}}, od[2] = {{0}};
        checker *kh[2], *kd[2];
        struct fx f;

        fx_init(&f, false);
        for (int i = 0; i < 3; i++)
            (void)start(&f, &serve, addr_of(ok->port), &os[i]);
        for (int i = 0; i < 2; i++) {
            kh[i] = start(&f, &hang, addr_of(hung->port), &oh[i]);
            kd[i] = start(&f, &down, addr_of(down_port), &od[i]);
        }
        /* A different cut each round: 0 to 59 ms in. */
        loop_for(&f.loop, (round * 37) % 60);
        for (int i = 0; i < 2; i++)
            probes += state(kh[i]).probes + state(kd[i]).probes;
        for (int i = 0; i < 3; i++)
            self_stops += os[i].n;
        fx_finish(&f);
    }
    fprintf(stderr,
            "measure: grpc teardown in flight: 40 rounds, %llu probes of hung and "
            "down checkers, %d checkers stopped from their callback\n",
            (unsigned long long)probes, self_stops);
    ck_assert_uint_gt(probes, 0);
    hsrv_stop(hung);
    hsrv_stop(ok);
}
END_TEST

/* The test's own server stopped while probes keep arriving: hsrv_stop()
 * must not start a batch on its queue after shutting it down either. */
START_TEST(test_grpc_server_stops_under_probes)
{
    struct check_spec spec = {.type = CHECK_GRPC, .interval_ms = 2, .timeout_ms = 2};

    for (int round = 0; round < 20; round++) {
        struct hsrv *srv = hsrv_start(0, 1);
        struct obs o[4] = {{0}};
        struct fx f;

        fx_init(&f, false);
        for (int i = 0; i < 4; i++)
            (void)start(&f, &spec, addr_of(srv->port), &o[i]);
        loop_for(&f.loop, 20 + (round * 13) % 40);
        hsrv_stop(srv);
        loop_for(&f.loop, 10);
        fx_finish(&f);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("check");
    TCase *unit = tcase_create("unit");
    TCase *probes = tcase_create("probes");
    TCase *grpc = tcase_create("grpc");

    tcase_add_test(unit, test_types_and_specs);
    tcase_add_test(unit, test_spec_build);
    tcase_add_test(unit, test_bad_starts);
    tcase_add_test(unit, test_ttl_expires_and_recovers);
    tcase_add_test(unit, test_ttl_flapping_no_change);
    tcase_set_timeout(probes, 30);
    tcase_add_test(probes, test_tcp_not_answering_then_answering);
    tcase_add_test(probes, test_tcp_host_name);
    tcase_add_test(probes, test_http_500_vs_200);
    tcase_add_test(probes, test_http_flapping_no_change);
    tcase_add_test(probes, test_exec_results);
    tcase_add_test(probes, test_exec_timeout_kills_group);
    tcase_add_test(probes, test_slow_probes_do_not_delay_others);
    tcase_add_test(probes, test_timeout_equal_to_interval);
    tcase_set_timeout(grpc, 30);
    tcase_add_test(grpc, test_grpc_not_serving_and_back);
    tcase_add_test(grpc, test_grpc_service_name);
    tcase_add_test(grpc, test_grpc_server_appears);
    tcase_add_test(grpc, test_grpc_stop_while_connecting);
    tcase_add_test(grpc, test_stop_in_callback_and_ctx_free);
    tcase_add_test(grpc, test_grpc_teardown_in_flight);
    tcase_add_test(grpc, test_grpc_server_stops_under_probes);
    suite_add_tcase(s, unit);
    suite_add_tcase(s, probes);
    suite_add_tcase(s, grpc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    log_level = LOG_LVL_WARN;
    /* grpc checks load the gRPC module: this build's, not an installed one. */
    setenv("DISCOVERY_AGENT_MODULE_DIR", BUILD_DIR, 1);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
