/* Part 2b: from an instance's put to the first call it serves through the
 * gRPC shim (lib/grpc_channel.c, registry:///NAME).
 *
 * Two build/echo-server processes: E0 registers bench-echo through the
 * agent (so the channel always has somewhere to send calls), E1 registers
 * under another name, bench-echo-x, only so that it serves. The benchmark
 * then puts E1's address under bench-echo itself, as another writer would,
 * while a thread keeps 4 calls in flight on registry:///bench-echo; the
 * figure is from etcd's acknowledgement of that put to the first reply from
 * E1 of a call started after the put. The shim runs with its defaults, so
 * its settle_ms (which coalesces bursts of changes) is part of it.
 * Floor: the put's event on the benchmark's direct gateway watch.
 *
 * Budget: 5 runs x 8 puts, about 0.3 s each: 15 s. */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "discovery/discovery.h"
#include "discovery/grpc.h"
#include "suite.h"

#define SERVICE "bench-echo"
#define PUTS 8
#define SLOTS 4
#define METHOD "/echo.Echo/Say"

struct slot {
    grpc_call *call;
    grpc_metadata_array imd, tmd;
    grpc_byte_buffer *req, *resp;
    grpc_status_code status;
    grpc_slice details;
    uint64_t started;
    bool busy;
};

struct caller {
    disc_channel *ch;
    grpc_completion_queue *cq;
    char want[64];          /* E1's address */
    _Atomic uint64_t armed; /* count replies of calls started at or after this */
    _Atomic uint64_t hit;   /* when the first such reply from E1 came */
    atomic_bool stop;
    struct slot slots[SLOTS];
    long calls, failed;
};

static bool start_call(struct caller *c, struct slot *s)
{
    static const unsigned char payload[] = {0x0A, 0x05, 'h', 'e', 'l', 'l', 'o'};
    grpc_slice method = grpc_slice_from_static_string(METHOD);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(2000, GPR_TIMESPAN));
    grpc_slice pl = grpc_slice_from_static_buffer(payload, sizeof payload);
    grpc_op ops[6];

    memset(s, 0, sizeof *s);
    s->started = now_ns();
    s->call = disc_channel_create_call(c->ch, NULL, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, method,
                                       NULL, deadline);
    if (!s->call)
        return false;
    grpc_metadata_array_init(&s->imd);
    grpc_metadata_array_init(&s->tmd);
    s->req = grpc_raw_byte_buffer_create(&pl, 1);
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = s->req;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->imd;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &s->resp;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &s->tmd;
    ops[5].data.recv_status_on_client.status = &s->status;
    ops[5].data.recv_status_on_client.status_details = &s->details;
    if (grpc_call_start_batch(s->call, ops, 6, s, NULL) != GRPC_CALL_OK) {
        grpc_metadata_array_destroy(&s->imd);
        grpc_metadata_array_destroy(&s->tmd);
        grpc_byte_buffer_destroy(s->req);
        grpc_call_unref(s->call);
        return false;
    }
    s->busy = true;
    return true;
}

/* The reply's StringValue is the address of the instance that served. */
static bool served_by(struct slot *s, const char *want)
{
    grpc_byte_buffer_reader rd;
    bool match = false;

    if (s->status != GRPC_STATUS_OK || !s->resp || !grpc_byte_buffer_reader_init(&rd, s->resp))
        return false;
    grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
    const unsigned char *p = GRPC_SLICE_START_PTR(all);
    size_t n = GRPC_SLICE_LENGTH(all), wl = strlen(want);
    /* field 1, length-delimited, a short string: 0x0A LEN bytes */
    if (n >= 2 && p[0] == 0x0A && p[1] == wl && n == wl + 2 && !memcmp(p + 2, want, wl))
        match = true;
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&rd);
    return match;
}

static void end_call(struct slot *s)
{
    grpc_metadata_array_destroy(&s->imd);
    grpc_metadata_array_destroy(&s->tmd);
    grpc_byte_buffer_destroy(s->req);
    if (s->resp)
        grpc_byte_buffer_destroy(s->resp);
    grpc_slice_unref(s->details);
    grpc_call_unref(s->call);
    s->busy = false;
}

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    int busy = 0;

    for (int i = 0; i < SLOTS; i++)
        busy += start_call(c, &c->slots[i]);
    while (busy > 0) {
        grpc_event ev = grpc_completion_queue_next(
            c->cq,
            gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(100, GPR_TIMESPAN)),
            NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        struct slot *s = ev.tag;
        uint64_t armed = atomic_load(&c->armed);
        c->calls++;
        if (s->status != GRPC_STATUS_OK)
            c->failed++;
        if (armed && s->started >= armed && !atomic_load(&c->hit) && served_by(s, c->want))
            atomic_store(&c->hit, now_ns());
        bool failed = s->status != GRPC_STATUS_OK;
        end_call(s);
        busy--;
        if (!atomic_load(&c->stop)) {
            if (failed)
                usleep(1000); /* no busy loop on a failing channel */
            busy += start_call(c, s);
        }
    }
    return NULL;
}

/* "serving NAME at ADDR" from an echo-server's log. */
static int served_address(const char *log, char *addr, size_t cap)
{
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            char *at = strstr(line, " at ");
            if (!strncmp(line, "serving ", 8) && at) {
                snprintf(addr, cap, "%s", at + 4);
                addr[strcspn(addr, "\r\n")] = '\0';
                fclose(f);
                return 0;
            }
        }
        if (f)
            fclose(f);
        sleep_ms(50);
    }
    return -1;
}

static struct proc *echo_start(struct bench *b, const struct agentp *a, const char *name,
                               char *addr, size_t cap)
{
    char log[600];
    const char *argv[] = {BUILD_DIR "/echo-server", name, "127.0.0.1:0", "-s", a->sock, NULL};
    struct proc *p;

    snprintf(log, sizeof log, "%s/%s.log", b->dir, name);
    p = proc_spawn(argv, NULL, log);
    if (p && served_address(log, addr, cap) < 0) {
        fprintf(stderr, "bench: grpc: %s did not start; see %s\n", name, log);
        p = proc_free(p);
    }
    return p;
}

void bench_grpc(struct bench *b)
{
    struct disc_channel_options o = {0};
    struct agentp a;
    struct caller c;
    struct proc *e0 = NULL, *e1 = NULL;
    char addr0[64], key[128], val[512];
    struct gw writer = {.fd = -1};
    struct gw_watch gw = {.g.fd = -1};
    pthread_t th;
    struct fig *f50, *f99;
    bool threaded = false;

    printf("bench: grpc shim\n");
    if (access(BUILD_DIR "/echo-server", X_OK) != 0) {
        note(b, "gRPC shim: skipped, %s/echo-server is not built.", BUILD_DIR);
        return;
    }
    memset(&c, 0, sizeof c);
    if (agent_up(b, &a, "grpc") < 0)
        return;
    e0 = echo_start(b, &a, SERVICE, addr0, sizeof addr0);
    e1 = echo_start(b, &a, SERVICE "-x", c.want, sizeof c.want);
    if (!e0 || !e1 || gw_open(&writer, b->url) < 0 ||
        gw_watch_open(&gw, b->url, "/micro/" SERVICE "/") < 0) {
        note(b, "gRPC shim: skipped, the echo servers or etcd did not start.");
        goto out;
    }
    grpc_init();
    o.socket_path = a.sock;
    if (disc_channel_create("registry:///" SERVICE, &o, &c.ch) != 0 ||
        disc_channel_wait(c.ch, NULL, 0, 5000) != 0) {
        note(b, "gRPC shim: skipped, the channel did not become ready.");
        goto out_grpc;
    }
    c.cq = grpc_completion_queue_create_for_next(NULL);
    if (pthread_create(&th, NULL, caller_main, &c) != 0)
        goto out_grpc;
    threaded = true;
    snprintf(key, sizeof key, "/micro/%s/%s", SERVICE, c.want);
    instance_value(val, sizeof val, SERVICE, c.want, 1);

    f50 = fig_new(b, "grpc", "Put to first call served through the gRPC shim, p50", "ms", 1,
                  "the put's event on a direct gateway watch");
    fig_goal(f50, GOAL_RATIO_MAX, 2.0); /* issue 18 */
    f99 = fig_new(b, "grpc", "Put to first call served through the gRPC shim, max", "ms", 1,
                  "the same");
    for (int r = 0; r < RUNS; r++) {
        struct samples sa = {0}, sf = {0};
        for (int i = 0; i < PUTS; i++) {
            uint64_t send, ack = 0, seen = 0, deadline;
            int64_t rev = -1;

            atomic_store(&c.hit, 0);
            send = now_ns();
            atomic_store(&c.armed, send);
            if (gw_send_put(&writer, key, val) < 0)
                break;
            deadline = send + 5000000000ull;
            while ((!ack || !seen || !atomic_load(&c.hit)) && now_ns() < deadline) {
                struct pollfd p[2] = {{.fd = writer.fd, .events = POLLIN},
                                      {.fd = gw.g.fd, .events = POLLIN}};
                poll(p, 2, 1);
                uint64_t now = now_ns();
                if (p[0].revents && !ack && gw_poll_reply(&writer, NULL) > 0)
                    ack = now;
                if (p[1].revents && gw_watch_read(&gw, NULL) > 0 && !seen)
                    seen = now;
            }
            uint64_t hit = atomic_load(&c.hit);
            atomic_store(&c.armed, 0);
            if (ack && seen && hit) {
                samples_add(&sa, (double)(hit - send) / 1e6);
                samples_add(&sf, (double)(seen - send) / 1e6);
                samples_add(&b->prop_grpc, (double)(hit - send) / 1e3);
            } else {
                fprintf(stderr, "bench: grpc: put %d not served within 5 s\n", i);
            }
            /* Take E1 out again and wait until the shim has a channel
             * without it, so that the next put starts from the same state. */
            gw_delete(&writer, key, &rev);
            /* The delete's event too, so that the next put's is the next
             * event on the direct watch. */
            for (uint64_t until = now_ns() + 2000000000ull; now_ns() < until;) {
                struct pollfd p = {.fd = gw.g.fd, .events = POLLIN};
                if (poll(&p, 1, 10) > 0 && gw_watch_read(&gw, NULL) != 0)
                    break;
            }
            disc_channel_wait(c.ch, NULL, rev, 5000);
            sleep_ms(100);
        }
        runs_add(&f50->v, samples_pct(&sa, 50));
        runs_add(&f50->f, samples_pct(&sf, 50));
        runs_add(&f99->v, samples_pct(&sa, 100));
        runs_add(&f99->f, samples_pct(&sf, 100));
        printf("bench:   run %d: p50 %.1f ms (floor %.2f ms), max %.1f ms\n", r + 1,
               samples_pct(&sa, 50), samples_pct(&sf, 50), samples_pct(&sa, 100));
        samples_free(&sa);
        samples_free(&sf);
    }
    note(b,
         "gRPC shim: %ld calls made, %ld failed, while instances came and went; the "
         "shim's defaults (lib/include/discovery/grpc.h) were used, its settle_ms included.",
         c.calls, c.failed);
out_grpc:
    if (threaded) {
        atomic_store(&c.stop, true);
        pthread_join(th, NULL);
    }
    if (c.cq) {
        grpc_completion_queue_shutdown(c.cq);
        while (grpc_completion_queue_next(c.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(c.cq);
    }
    disc_channel_destroy(c.ch);
    grpc_shutdown();
out:
    gw_close(&writer);
    gw_watch_close(&gw);
    proc_free(e0);
    proc_free(e1);
    agent_down(&a);
}
