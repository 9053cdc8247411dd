/* Part 2a: propagation delay. Another writer (this benchmark, on its own
 * keep-alive connection to the gateway) puts or deletes an instance, and
 * etcd acknowledges it; we time, from the moment the writer sent it, the
 * update line at a socket watcher of the agent and, as the floor, the same
 * event on a watch the benchmark holds directly on etcd's gateway. (From
 * the acknowledgement the floor would be zero: the watch event often
 * leaves the gateway before the put's reply.) One poll loop sees all
 * three sockets, so the three moments come from one clock with no thread
 * hand-off in between.
 *
 * Budget: 5 runs x 100 writes (put, delete, put, ...), 5 to 15 ms apart:
 * about 10 s. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suite.h"

#define SERVICE "bench-prop"
#define WRITES 100

struct moments {
    uint64_t send, ack, gw, agent;
};

/* One write and the three moments it makes. 0, or -1 on a timeout. */
static int one_write(struct gw *writer, struct gw_watch *gw, struct lc *watcher, bool put,
                     struct moments *m)
{
    static const char key[] = "/micro/" SERVICE "/10.99.0.1:9000";
    char val[512];
    uint64_t deadline;

    memset(m, 0, sizeof *m);
    instance_value(val, sizeof val, SERVICE, "10.99.0.1:9000", 1);
    m->send = now_ns();
    if ((put ? gw_send_put(writer, key, val) : gw_send_delete(writer, key)) < 0)
        return -1;
    deadline = m->send + 5000000000ull;
    while (!m->ack || !m->gw || !m->agent) {
        struct pollfd p[3] = {{.fd = writer->fd, .events = POLLIN},
                              {.fd = gw->g.fd, .events = POLLIN},
                              {.fd = watcher->fd, .events = POLLIN}};
        if (now_ns() > deadline)
            return -1;
        if (poll(p, 3, 100) <= 0)
            continue;
        uint64_t now = now_ns();
        if (p[0].revents && !m->ack) {
            int rc = gw_poll_reply(writer, NULL);
            if (rc < 0)
                return -1;
            if (rc > 0)
                m->ack = now;
        }
        if (p[1].revents) {
            int n = gw_watch_read(gw, NULL);
            if (n < 0)
                return -1;
            if (n > 0 && !m->gw)
                m->gw = now;
        }
        if (p[2].revents) {
            int n = lc_drain_count(watcher);
            if (n < 0)
                return -1;
            if (n > 0 && !m->agent)
                m->agent = now;
        }
    }
    return 0;
}

static double d_us(uint64_t from, uint64_t to)
{
    return ((double)to - (double)from) / 1e3;
}

void bench_propagation(struct bench *b)
{
    struct agentp a;
    struct gw writer, g;
    struct gw_watch gw;
    struct lc watcher;
    struct proc *perf;
    char *line;
    struct fig *p50, *p99, *s50, *s99, *ack50;

    printf("bench: propagation\n");
    if (gw_open(&g, b->url) < 0)
        return;
    for (int i = 0; i < 3; i++) {
        char key[128], addr[64], val[512];
        snprintf(addr, sizeof addr, "10.0.1.%d:8080", i + 1);
        snprintf(key, sizeof key, "/micro/%s/%s", SERVICE, addr);
        instance_value(val, sizeof val, SERVICE, addr, 1);
        gw_put(&g, key, val, NULL);
    }
    gw_close(&g);
    if (agent_up(b, &a, "propagation") < 0)
        return;
    if (lc_open(&watcher, a.sock, true) < 0 ||
        !(line = lc_call(&watcher, "{\"op\":\"watch\",\"id\":1,\"service\":\"" SERVICE "\"}\n",
                         5000, NULL)) ||
        !strstr(line, "\"ok\":true") || gw_watch_open(&gw, b->url, "/micro/" SERVICE "/") < 0 ||
        gw_open(&writer, b->url) < 0) {
        fprintf(stderr, "bench: propagation: setup failed\n");
        agent_down(&a);
        return;
    }
    /* The agent's own watch must be live before the first write. */
    sleep_ms(300);

    /* Timed from the moment the writer sends: on a large share of writes
     * the direct watch has the event before the writer has etcd's reply,
     * so from the acknowledgement the floor is zero (see the note). */
    p50 = fig_new(b, "propagation", "Propagation, put/delete to socket watcher, p50", "µs", 0,
                  "the same event on a watch held directly on etcd's gateway");
    p99 = fig_new(b, "propagation", "Propagation, put/delete to socket watcher, p99", "µs", 0,
                  "the same event on a watch held directly on etcd's gateway");
    s50 = fig_new(b, "propagation", "Delay the agent adds to the direct watch, p50", "µs", 0, NULL);
    s99 = fig_new(b, "propagation", "Delay the agent adds to the direct watch, p99", "µs", 0, NULL);
    ack50 =
        fig_new(b, "propagation", "(etcd put/delete round trip, p50, for scale)", "µs", 0, NULL);
    fig_goal(p50, GOAL_RATIO_MAX, 1.3);
    fig_goal(p99, GOAL_RATIO_MAX, 2.0);

    perf = perf_begin(b, agent_pid(&a), "propagation");
    int early = 0, total = 0;
    for (int r = 0; r < RUNS; r++) {
        struct samples sa = {0}, sf = {0}, sd = {0}, sack = {0};
        for (int i = 0; i < WRITES; i++) {
            struct moments m;
            if (one_write(&writer, &gw, &watcher, i % 2 == 0, &m) < 0) {
                fprintf(stderr, "bench: propagation: write %d timed out\n", i);
                continue;
            }
            total++;
            if (m.gw < m.ack)
                early++;
            samples_add(&sa, d_us(m.send, m.agent));
            samples_add(&sf, d_us(m.send, m.gw));
            samples_add(&sd, d_us(m.gw, m.agent));
            samples_add(&sack, d_us(m.send, m.ack));
            sleep_ms(5 + rand() % 10);
        }
        runs_add(&p50->v, samples_pct(&sa, 50));
        runs_add(&p50->f, samples_pct(&sf, 50));
        runs_add(&p99->v, samples_pct(&sa, 99));
        runs_add(&p99->f, samples_pct(&sf, 99));
        runs_add(&s50->v, samples_pct(&sd, 50));
        runs_add(&s99->v, samples_pct(&sd, 99));
        runs_add(&ack50->v, samples_pct(&sack, 50));
        samples_merge(&b->prop_agent, &sa);
        samples_merge(&b->prop_floor, &sf);
        printf("bench:   run %d: p50 %.0f / %.0f us, p99 %.0f / %.0f us; added p50 %.0f us; "
               "ack p50 %.0f us\n",
               r + 1, samples_pct(&sa, 50), samples_pct(&sf, 50), samples_pct(&sa, 99),
               samples_pct(&sf, 99), samples_pct(&sd, 50), samples_pct(&sack, 50));
        samples_free(&sa);
        samples_free(&sf);
        samples_free(&sd);
        samples_free(&sack);
    }
    perf_end(perf);
    note(b,
         "Propagation: %d writes (puts and deletes alternating, 5-15 ms apart); on %d of "
         "them (%.0f%%) the direct gateway watch saw the event before the writer had etcd's "
         "acknowledgement.",
         total, early, total ? 100.0 * early / total : 0.0);
    gw_close(&writer);
    gw_watch_close(&gw);
    lc_close(&watcher);
    agent_down(&a);
}
