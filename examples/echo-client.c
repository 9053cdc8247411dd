/* echo-client: calls /echo.Echo/Say (proto/echo.proto) through
 * libdiscovery's channel shim and counts which instance answered.
 *
 *     echo-client TARGET [--calls N] [--duration-ms D] [--concurrency C]
 *                 [--group G] [--deadline-ms D] [--ready-timeout-ms T]
 *                 [--json] [--log-failures] [-s SOCKET]
 *
 * TARGET is registry:///NAME or registry:///NAME?group=G. It makes N calls
 * (default 100), or keeps calling for D ms with --duration-ms, with C calls
 * in flight at a time (default 8), each with a deadline of --deadline-ms
 * (default 5000). --group picks the group per call. --ready-timeout-ms
 * first waits (disc_channel_wait) until the channel is READY.
 *
 * Prints "ADDR N" lines sorted by address, then "failed N"; with --json
 * exactly {"counts":{"ADDR":N,...},"failed":N}. Why calls failed goes to
 * stderr; --log-failures also prints every failed call there, as
 * "echo-client: call failed at MS: REASON" with MS on CLOCK_MONOTONIC in
 * milliseconds, so that a test can tell when calls failed relative to what
 * it did meanwhile. Exit 0 if no call failed, 1 otherwise, 2 on bad usage.
 *
 * The messages are google.protobuf.StringValue, encoded by hand (field 1,
 * wire type 2). One thread drives every call through one completion queue:
 * each call is a single batch with all six client ops. */
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "discovery/discovery.h"
#include "discovery/grpc.h"

#define METHOD "/echo.Echo/Say"
#define MAX_REASONS 16

#include "stringvalue.h"

/* ---- tallies -------------------------------------------------------------- */

struct count {
    char *key;
    long n;
    int64_t first_ms; /* CLOCK_MONOTONIC of the first one */
};

static int64_t now_ms(void);

struct tally {
    struct count *v;
    size_t n, cap;
};

/* Adds one to key's count (key copied). false when out of memory. */
static bool tally_add(struct tally *t, const char *key, size_t keylen)
{
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->v[i].key) == keylen && !memcmp(t->v[i].key, key, keylen)) {
            t->v[i].n++;
            return true;
        }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct count *v = realloc(t->v, cap * sizeof *v);
        if (!v)
            return false;
        t->v = v;
        t->cap = cap;
    }
    t->v[t->n].key = strndup(key, keylen);
    if (!t->v[t->n].key)
        return false;
    t->v[t->n].first_ms = now_ms();
    t->v[t->n++].n = 1;
    return true;
}

static int count_cmp(const void *a, const void *b)
{
    return strcmp(((const struct count *)a)->key, ((const struct count *)b)->key);
}

static void tally_free(struct tally *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].key);
    free(t->v);
}

/* ---- calls ---------------------------------------------------------------- */

struct call {
    grpc_call *call;
    grpc_metadata_array initial_md, trailing_md;
    grpc_byte_buffer *request, *response;
    grpc_status_code status;
    grpc_slice details;
    bool in_use;
};

struct run {
    disc_channel *ch;
    const char *group;
    grpc_completion_queue *cq;
    grpc_slice request_payload;
    int deadline_ms;
    struct tally counts;
    struct tally reasons; /* "CODE: details" of failed calls */
    long failed;
    bool log_failures;
    bool xds;        /* --xds: the group goes as the x-group header */
    bool first_seen; /* --first-seen: when each address first answered */
    grpc_metadata group_md;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fail_call(struct run *r, const char *why)
{
    bool known = false;

    r->failed++;
    if (r->log_failures)
        fprintf(stderr, "echo-client: call failed at %lld: %s\n", (long long)now_ms(), why);
    for (size_t i = 0; i < r->reasons.n && !known; i++)
        known = !strcmp(r->reasons.v[i].key, why);
    /* A bounded report: further kinds of failure are only counted. */
    if (!known && r->reasons.n >= MAX_REASONS)
        why = "other failures";
    tally_add(&r->reasons, why, strlen(why));
}

/* Starts one call in c. false if it could not start (counted failed). */
static bool call_start(struct run *r, struct call *c)
{
    grpc_slice method = grpc_slice_from_static_string(METHOD);
    gpr_timespec deadline = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                         gpr_time_from_millis(r->deadline_ms, GPR_TIMESPAN));
    grpc_op ops[6];

    memset(c, 0, sizeof *c);
    c->call = disc_channel_create_call(r->ch, r->group, NULL, GRPC_PROPAGATE_DEFAULTS, r->cq,
                                       method, NULL, deadline);
    if (!c->call) {
        fail_call(r, "disc_channel_create_call: out of memory");
        return false;
    }
    grpc_metadata_array_init(&c->initial_md);
    grpc_metadata_array_init(&c->trailing_md);
    c->request = grpc_raw_byte_buffer_create(&r->request_payload, 1);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (r->xds && r->group) {
        ops[0].data.send_initial_metadata.count = 1;
        ops[0].data.send_initial_metadata.metadata = &r->group_md;
    }
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->request;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &c->response;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &c->trailing_md;
    ops[5].data.recv_status_on_client.status = &c->status;
    ops[5].data.recv_status_on_client.status_details = &c->details;
    if (grpc_call_start_batch(c->call, ops, 6, c, NULL) != GRPC_CALL_OK) {
        fail_call(r, "grpc_call_start_batch refused the call");
        grpc_metadata_array_destroy(&c->initial_md);
        grpc_metadata_array_destroy(&c->trailing_md);
        grpc_byte_buffer_destroy(c->request);
        grpc_call_unref(c->call);
        return false;
    }
    c->in_use = true;
    return true;
}

/* The call's batch completed: count it, free it. */
static void call_done(struct run *r, struct call *c)
{
    char why[512];

    if (c->status != GRPC_STATUS_OK) {
        char *d = grpc_slice_to_c_string(c->details);
        snprintf(why, sizeof why, "status %d: %s", (int)c->status, d ? d : "");
        gpr_free(d);
        fail_call(r, why);
    } else if (!c->response) {
        fail_call(r, "status OK without a message");
    } else {
        grpc_byte_buffer_reader rd;
        const unsigned char *val;
        size_t vlen;

        if (!grpc_byte_buffer_reader_init(&rd, c->response)) {
            fail_call(r, "unreadable response");
        } else {
            grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
            grpc_byte_buffer_reader_destroy(&rd);
            if (!sv_decode(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all), &val, &vlen) ||
                vlen == 0)
                fail_call(r, "the response is not a google.protobuf.StringValue address");
            else if (!tally_add(&r->counts, (const char *)val, vlen))
                fail_call(r, "out of memory");
            grpc_slice_unref(all);
        }
    }
    grpc_metadata_array_destroy(&c->initial_md);
    grpc_metadata_array_destroy(&c->trailing_md);
    grpc_byte_buffer_destroy(c->request);
    if (c->response)
        grpc_byte_buffer_destroy(c->response);
    grpc_slice_unref(c->details);
    grpc_call_unref(c->call);
    c->in_use = false;
}

/* ---- output --------------------------------------------------------------- */

static int print_json(const struct run *r)
{
    json_t *root = json_object(), *counts = json_object();
    char *text;

    if (!root || !counts)
        return -1;
    for (size_t i = 0; i < r->counts.n; i++)
        json_object_set_new(counts, r->counts.v[i].key, json_integer(r->counts.v[i].n));
    json_object_set_new(root, "counts", counts);
    json_object_set_new(root, "failed", json_integer(r->failed));
    /* Keys sorted: the addresses, and "counts" before "failed". */
    text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    if (!text)
        return -1;
    printf("%s\n", text);
    free(text);
    return 0;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: echo-client TARGET [--calls N] [--duration-ms D] [--concurrency C]\n"
                    "                   [--group G] [--deadline-ms D] [--ready-timeout-ms T]\n"
                    "                   [--json] [--log-failures] [--xds] [-s SOCKET]\n"
                    "  --xds         resolve through the agent's xDS server (one xds:/// channel)\n"
                    "  --first-seen  print on stderr when each address first answered\n"
                    "                (CLOCK_MONOTONIC ms)\n");
    exit(2);
}

static long parse_long(const char *opt, const char *s, long min, long max)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "echo-client: %s wants an integer from %ld to %ld, not '%s'\n", opt, min,
                max, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    struct disc_channel_options o = {0};
    const char *target = NULL;
    long calls = 100, duration_ms = -1, concurrency = 8, ready_ms = -1;
    bool json = false;
    struct run r;
    struct call *slots;
    unsigned char payload[32];
    long started = 0, outstanding = 0;
    int64_t t0, end_at = 0;
    int rc;

    memset(&r, 0, sizeof r);
    r.deadline_ms = 5000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--calls") && more)
            calls = parse_long(a, argv[++i], 0, LONG_MAX);
        else if (!strcmp(a, "--duration-ms") && more)
            duration_ms = parse_long(a, argv[++i], 0, INT_MAX);
        else if (!strcmp(a, "--concurrency") && more)
            concurrency = parse_long(a, argv[++i], 1, 10000);
        else if (!strcmp(a, "--group") && more)
            r.group = argv[++i];
        else if (!strcmp(a, "--deadline-ms") && more)
            r.deadline_ms = (int)parse_long(a, argv[++i], 1, INT_MAX);
        else if (!strcmp(a, "--ready-timeout-ms") && more)
            ready_ms = parse_long(a, argv[++i], 0, INT_MAX);
        else if (!strcmp(a, "--json"))
            json = true;
        else if (!strcmp(a, "--log-failures"))
            r.log_failures = true;
        else if (!strcmp(a, "--xds"))
            r.xds = o.use_xds = true;
        else if (!strcmp(a, "--first-seen"))
            r.first_seen = true;
        else if (!strcmp(a, "-s") && more)
            o.socket_path = argv[++i];
        else if (a[0] == '-' && a[1])
            usage();
        else if (!target)
            target = a;
        else
            usage();
    }
    if (!target)
        usage();

    grpc_init();
    if (r.xds && r.group) {
        r.group_md.key = grpc_slice_from_static_string("x-group");
        r.group_md.value = grpc_slice_from_copied_string(r.group);
    }
    rc = disc_channel_create(target, &o, &r.ch);
    if (rc) {
        fprintf(stderr, "echo-client: %s: %s (%s)\n", target, disc_strerror(rc), disc_err_name(rc));
        grpc_shutdown();
        return 1;
    }
    if (ready_ms >= 0) {
        rc = disc_channel_wait(r.ch, r.group, 0, (int)ready_ms);
        if (rc)
            fprintf(stderr, "echo-client: %s not ready within %ld ms (%s); calling anyway\n",
                    target, ready_ms, disc_err_name(rc));
    }
    r.cq = grpc_completion_queue_create_for_next(NULL);
    r.request_payload =
        grpc_slice_from_copied_buffer((const char *)payload, sv_encode("hello", 5, payload));
    slots = calloc((size_t)concurrency, sizeof *slots);
    if (!slots) {
        fprintf(stderr, "echo-client: out of memory\n");
        return 1;
    }

    t0 = now_ms();
    if (duration_ms >= 0)
        end_at = t0 + duration_ms;
    for (;;) {
        /* Keep every slot busy while there is more to do. */
        for (long i = 0; i < concurrency; i++) {
            bool more = duration_ms >= 0 ? now_ms() < end_at : started < calls;
            if (slots[i].in_use || !more)
                continue;
            started++;
            if (call_start(&r, &slots[i]))
                outstanding++;
        }
        if (!outstanding) {
            bool more = duration_ms >= 0 ? now_ms() < end_at : started < calls;
            if (!more)
                break;
            continue;
        }
        grpc_event ev = grpc_completion_queue_next(r.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE) {
            call_done(&r, ev.tag);
            outstanding--;
        }
    }

    if (json) {
        if (print_json(&r) < 0) {
            fprintf(stderr, "echo-client: out of memory\n");
            return 1;
        }
    } else {
        qsort(r.counts.v, r.counts.n, sizeof *r.counts.v, count_cmp);
        for (size_t i = 0; i < r.counts.n; i++)
            printf("%s %ld\n", r.counts.v[i].key, r.counts.v[i].n);
        printf("failed %ld\n", r.failed);
    }
    if (r.first_seen)
        for (size_t i = 0; i < r.counts.n; i++)
            fprintf(stderr, "first %s %lld\n", r.counts.v[i].key,
                    (long long)r.counts.v[i].first_ms);
    fflush(stdout);
    for (size_t i = 0; i < r.reasons.n; i++)
        fprintf(stderr, "echo-client: %ld call(s) failed with %s\n", r.reasons.v[i].n,
                r.reasons.v[i].key);
    fprintf(stderr, "echo-client: %ld calls in %lld ms, %ld failed\n", started,
            (long long)(now_ms() - t0), r.failed);

    grpc_completion_queue_shutdown(r.cq);
    while (grpc_completion_queue_next(r.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(r.cq);
    disc_channel_destroy(r.ch);
    grpc_slice_unref(r.request_payload);
    free(slots);
    tally_free(&r.counts);
    tally_free(&r.reasons);
    grpc_shutdown();
    return r.failed ? 1 : 0;
}
