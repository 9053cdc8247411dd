/* Part 1: resolve round trips over the socket, one client, and throughput
 * with 1, 8 and 64 clients; each beside a bare unix-socket server of the
 * same request and reply sizes in another process (floor.c).
 *
 * Budget: latency 5 x (20,000 agent + 20,000 floor round trips, in
 * alternating blocks of 500), a few seconds; throughput 3 x 5 x 2 windows of 1.2 s, about 40 s. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "suite.h"

#define SERVICE "bench-resolve"
#define LAT_N 20000
#define LAT_WARM 2000
#define LAT_BLOCK 500
#define TPUT_WARM_S 0.2
#define TPUT_S 1.0

static const char REQ[] = "{\"op\":\"resolve\",\"id\":1,\"service\":\"" SERVICE "\"}\n";

/* n blocking round trips on c; every latency into s, in microseconds. */
static int pingpong(struct lc *c, int n, struct samples *s)
{
    size_t len;

    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        if (lc_send(c, REQ, sizeof REQ - 1) < 0 || !lc_line(c, -1, &len))
            return -1;
        if (s)
            samples_add(s, ns_to_us(now_ns() - t0));
    }
    return 0;
}

/* Pins pid (0: this thread) to one CPU, or lets it run on any (cpu < 0). */
static void pin(pid_t pid, int cpu)
{
    cpu_set_t set;
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    CPU_ZERO(&set);
    for (int i = 0; i < n && i < CPU_SETSIZE; i++)
        if (cpu < 0 || i == cpu)
            CPU_SET(i, &set);
    sched_setaffinity(pid, sizeof set, &set);
}

/* One run: LAT_N round trips to the agent and LAT_N to the floor, in
 * alternating blocks of LAT_BLOCK, so that both see the same moments of a
 * noisy machine. */
static int latency_run(const char *agent, const char *floor_path, struct samples *sa,
                       struct samples *sf)
{
    struct lc a, f;
    int rc = -1;

    if (lc_open(&a, agent, false) < 0)
        return -1;
    if (lc_open(&f, floor_path, false) < 0) {
        lc_close(&a);
        return -1;
    }
    if (pingpong(&a, LAT_WARM, NULL) < 0 || pingpong(&f, LAT_WARM, NULL) < 0)
        goto out;
    int block =
        getenv("BENCH_LAT_BLOCK") ? (int)strtol(getenv("BENCH_LAT_BLOCK"), NULL, 10) : LAT_BLOCK;
    if (block < 1 || block > LAT_N)
        block = LAT_BLOCK;
    for (int done = 0; done < LAT_N; done += block)
        if (pingpong(&a, block, sa) < 0 || pingpong(&f, block, sf) < 0)
            goto out;
    rc = 0;
out:
    lc_close(&a);
    lc_close(&f);
    return rc;
}

/* Closed loop: clients connections, one request in flight on each; replies
 * per second over TPUT_S after TPUT_WARM_S. */
static double throughput(const char *path, int clients)
{
    struct lc *cs = calloc((size_t)clients, sizeof *cs);
    struct epoll_event ev = {.events = EPOLLIN}, evs[256];
    int ep = epoll_create1(EPOLL_CLOEXEC), opened = 0;
    uint64_t start, t_begin, t_end;
    long count = 0;
    double rate = -1;

    if (!cs || ep < 0)
        goto out;
    for (; opened < clients; opened++) {
        if (lc_open(&cs[opened], path, true) < 0)
            goto out;
        ev.data.ptr = &cs[opened];
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[opened].fd, &ev);
    }
    start = now_ns();
    t_begin = start + (uint64_t)(TPUT_WARM_S * 1e9);
    t_end = t_begin + (uint64_t)(TPUT_S * 1e9);
    for (int i = 0; i < clients; i++)
        lc_send(&cs[i], REQ, sizeof REQ - 1);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, 1000);
        uint64_t now = now_ns();
        if (n <= 0 || now >= t_end)
            break;
        for (int i = 0; i < n; i++) {
            struct lc *c = evs[i].data.ptr;
            int lines = lc_drain_count(c);
            if (lines < 0)
                goto out;
            for (int k = 0; k < lines; k++) {
                if (now >= t_begin)
                    count++;
                lc_send(c, REQ, sizeof REQ - 1);
            }
        }
    }
    rate = (double)count / TPUT_S;
out:
    for (int i = 0; i < opened; i++)
        lc_close(&cs[i]);
    free(cs);
    if (ep >= 0)
        close(ep);
    return rate;
}

void bench_resolve(struct bench *b)
{
    struct agentp a;
    struct gw g;
    char floor_path[600], *reply;
    size_t len;
    pid_t floor_pid = -1;
    struct lc c;
    struct proc *perf = NULL;
    struct fig *f50, *f99, *f999, *fa50, *fa99, *ft[3];
    static const int conc[3] = {1, 8, 64};

    printf("bench: resolve\n");
    /* A service of three instances, as a small real one. */
    if (gw_open(&g, b->url) < 0) {
        fprintf(stderr, "bench: resolve: no etcd\n");
        return;
    }
    for (int i = 0; i < 3; i++) {
        char key[128], addr[64], val[512];
        snprintf(addr, sizeof addr, "10.0.0.%d:8080", i + 1);
        snprintf(key, sizeof key, "/micro/%s/%s", SERVICE, addr);
        instance_value(val, sizeof val, SERVICE, addr, 1);
        gw_put(&g, key, val, NULL);
    }
    gw_close(&g);

    if (agent_up(b, &a, "resolve") < 0)
        return;
    /* The first resolve waits for etcd; later ones are served from the
     * cache. Its reply is the floor server's reply, byte for byte. */
    if (lc_open(&c, a.sock, false) < 0 || !(reply = lc_call(&c, REQ, 5000, &len)) ||
        !strstr(reply, "\"ok\":true")) {
        fprintf(stderr, "bench: resolve: no reply from the agent\n");
        agent_down(&a);
        return;
    }
    reply[len] = '\n';
    snprintf(floor_path, sizeof floor_path, "%s/floor.sock", b->dir);
    floor_pid = floor_echo_start(floor_path, reply, len + 1);
    note(b,
         "Resolve: request %zu bytes, reply %zu bytes (a service of 3 instances); "
         "%d round trips per run to each after %d to warm up, in alternating blocks of %d "
         "(agent, floor, agent, ...), so that both see the same moments of the machine.",
         sizeof REQ - 1, len + 1, LAT_N, LAT_WARM, LAT_BLOCK);
    lc_close(&c);
    if (floor_pid < 0) {
        agent_down(&a);
        return;
    }

    f50 = fig_new(b, "resolve", "Resolve round trip, p50, client and server on one CPU", "µs", 1,
                  "bare unix-socket ping-pong, same sizes, same CPU");
    f99 = fig_new(b, "resolve", "Resolve round trip, p99, one CPU", "µs", 1, "the same");
    f999 = fig_new(b, "resolve", "Resolve round trip, p99.9, one CPU", "µs", 1, "the same");
    fig_goal(f50, GOAL_RATIO_MAX, 1.5);
    fig_goal(f99, GOAL_RATIO_MAX, 3.0);

    fa50 = fig_new(b, "resolve", "Resolve round trip, p50, client and server on different CPUs",
                   "µs", 1, "bare unix-socket ping-pong, same sizes, same CPUs");
    fa99 = fig_new(b, "resolve", "Resolve round trip, p99, client and server on different CPUs",
                   "µs", 1, "the same");

    /* Where the two processes run decides the round trip more than either
     * does: on one CPU a round trip is two context switches; across CPUs
     * it is two cross-CPU wakeups, which on this virtual machine cost tens
     * of microseconds each way. Left to the scheduler, runs flip between
     * the two. So each run is measured both ways, the server (the agent's
     * loop thread, or the floor process) pinned beside the client or away
     * from it, and the floor always exactly as the agent. */
    pid_t apid = agent_pid(&a);
    perf = perf_begin(b, apid, "resolve-latency");
    for (int r = 0; r < RUNS; r++) {
        for (int apart = 0; apart < 2; apart++) {
            struct samples sa = {0}, sf = {0};
            pin(0, 0);
            pin(apid, apart);
            pin(floor_pid, apart);
            if (latency_run(a.sock, floor_path, &sa, &sf) < 0)
                fprintf(stderr, "bench: resolve: run %d failed\n", r + 1);
            if (!apart) {
                runs_add(&f50->v, samples_pct(&sa, 50));
                runs_add(&f99->v, samples_pct(&sa, 99));
                runs_add(&f999->v, samples_pct(&sa, 99.9));
                runs_add(&f50->f, samples_pct(&sf, 50));
                runs_add(&f99->f, samples_pct(&sf, 99));
                runs_add(&f999->f, samples_pct(&sf, 99.9));
                samples_merge(&b->resolve_agent, &sa);
                samples_merge(&b->resolve_floor, &sf);
            } else {
                runs_add(&fa50->v, samples_pct(&sa, 50));
                runs_add(&fa99->v, samples_pct(&sa, 99));
                runs_add(&fa50->f, samples_pct(&sf, 50));
                runs_add(&fa99->f, samples_pct(&sf, 99));
            }
            printf("bench:   run %d, %s: p50 %.1f / %.1f us, p99 %.1f / %.1f us\n", r + 1,
                   apart ? "apart" : "one CPU", samples_pct(&sa, 50), samples_pct(&sf, 50),
                   samples_pct(&sa, 99), samples_pct(&sf, 99));
            samples_free(&sa);
            samples_free(&sf);
        }
    }
    pin(0, -1);
    pin(apid, -1);
    pin(floor_pid, -1);
    perf_end(perf);

    for (int k = 0; k < 3; k++) {
        char name[96];
        snprintf(name, sizeof name, "Resolves per second, %d client%s", conc[k],
                 conc[k] > 1 ? "s" : "");
        ft[k] = fig_new(b, "resolve", name, "/s", 0,
                        "bare unix-socket server (epoll, one thread), same sizes and clients");
    }
    fig_goal(ft[2], GOAL_ABS_MIN, 100000);
    perf = perf_begin(b, agent_pid(&a), "resolve-throughput");
    for (int k = 0; k < 3; k++)
        for (int r = 0; r < RUNS; r++) {
            double ra, rf;
            if (r % 2 == 0) {
                ra = throughput(a.sock, conc[k]);
                rf = throughput(floor_path, conc[k]);
            } else {
                rf = throughput(floor_path, conc[k]);
                ra = throughput(a.sock, conc[k]);
            }
            runs_add(&ft[k]->v, ra);
            runs_add(&ft[k]->f, rf);
            printf("bench:   %d clients, run %d: %.0f / %.0f per s\n", conc[k], r + 1, ra, rf);
        }
    perf_end(perf);
    floor_stop(floor_pid);
    agent_down(&a);
}
