/* Part 5: the DNS server (issue 15), each figure beside its peer from the
 * same run: unbound (Debian's) with one thread, serving the same A records
 * from local-data, on the same machine.
 *
 *  - Throughput: dnsperf (4 clients, 500 queries in flight, 4 s) asking A
 *    for 10 services of 5 instances, against the agent and against
 *    unbound, alternately, RUNS_DNS times.
 *  - Latency at a fixed moderate rate: one query in flight, 2,000 a
 *    second for 2 s, each round trip timed here; p50 and p99.
 *  - Propagation: a put or delete by another writer, timed from its send
 *    to the first DNS answer that shows it (queries back to back, one in
 *    flight) and, in the same loop, to the update line of a socket
 *    watcher of the same agent.
 *
 * Budget: about 60 s. */
#include <arpa/inet.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "suite.h"

#define SERVICES 10
#define INSTANCES 5
#define RUNS_DNS 3
#define PROP_SERVICE "bench-dnsprop"
#define PROP_WRITES 60

static int free_udp_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_DGRAM, 0), port = -1;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* A query for name A, as dig sends it without EDNS. */
static size_t query(uint8_t *q, uint16_t id, const char *name)
{
    size_t n = 12;

    memset(q, 0, 12);
    q[0] = (uint8_t)(id >> 8);
    q[1] = (uint8_t)id;
    q[2] = 0x01; /* RD */
    q[5] = 1;    /* QDCOUNT */
    for (const char *p = name; *p;) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        q[n++] = (uint8_t)l;
        memcpy(q + n, p, l);
        n += l;
        p += l + (dot ? 1 : 0);
    }
    q[n++] = 0;
    q[n++] = 0;
    q[n++] = 1; /* A */
    q[n++] = 0;
    q[n++] = 1; /* IN */
    return n;
}

static int udp_to(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* One query, its reply in r (n bytes); the round trip in ns, or 0. */
static uint64_t ask(int fd, const uint8_t *q, size_t qlen, uint8_t *r, ssize_t *n)
{
    uint64_t t0 = now_ns();
    struct pollfd p = {.fd = fd, .events = POLLIN};

    if (send(fd, q, qlen, 0) != (ssize_t)qlen)
        return 0;
    while (poll(&p, 1, 1000) > 0) {
        *n = recv(fd, r, 65536, 0);
        if (*n >= 12 && r[0] == q[0] && r[1] == q[1])
            return now_ns() - t0;
    }
    return 0;
}

/* dnsperf's "Queries per second", or NAN. */
static double dnsperf(struct bench *b, int port, const char *data)
{
    static char out[1 << 18]; /* a line per lost query, then the figures */
    char p[16];
    const char *argv[] = {
        "dnsperf", "-s", "127.0.0.1",        "-p", p, "-d", data, "-l", "4", "-c", "4", "-q",
        "500",     "-O", "suppress=timeout", NULL};
    char *at;

    (void)b;
    snprintf(p, sizeof p, "%d", port);
    if (proc_run(out, sizeof out, 60000, argv) != 0 || !(at = strstr(out, "Queries per second:")))
        return NAN;
    return strtod(at + strlen("Queries per second:"), NULL);
}

/* Round trips at 2,000 a second, one in flight, for 2 s. */
static void latency(int port, struct samples *s)
{
    int fd = udp_to(port);
    uint8_t q[512], r[65536];
    ssize_t n;

    if (fd < 0)
        return;
    for (int i = 0; i < 4000; i++) {
        char name[64];
        uint64_t start = now_ns(), rtt;
        snprintf(name, sizeof name, "bench-dns%d.service.disc", i % SERVICES);
        size_t len = query(q, (uint16_t)i, name);
        if ((rtt = ask(fd, q, len, r, &n)))
            samples_add(s, ns_to_us(rtt));
        while (now_ns() - start < 500000)
            ;
    }
    close(fd);
}

static bool has_ip(const uint8_t *r, ssize_t n, const uint8_t ip[4])
{
    for (ssize_t i = 12; i + 4 <= n; i++)
        if (!memcmp(r + i, ip, 4))
            return true;
    return false;
}

/* Puts and deletes of one instance; for each, the time from its send to
 * the first DNS answer that shows it and to the watcher's update. */
static void propagation(struct bench *b, int port, struct lc *watcher, struct samples *sd,
                        struct samples *ss)
{
    static const char key[] = "/micro/" PROP_SERVICE "/10.98.0.1:9000";
    static const uint8_t ip[4] = {10, 98, 0, 1};
    struct gw writer;
    char val[512];
    uint8_t q[512], r[65536];
    size_t qlen = query(q, 1, PROP_SERVICE ".service.disc");
    int fd = udp_to(port);

    if (fd < 0 || gw_open(&writer, b->url) < 0) {
        if (fd >= 0)
            close(fd);
        return;
    }
    instance_value(val, sizeof val, PROP_SERVICE, "10.98.0.1:9000", 1);
    for (int i = 0; i < PROP_WRITES; i++) {
        bool put = i % 2 == 0;
        uint64_t t0 = now_ns(), dns = 0, sock = 0;
        uint16_t id = 0;
        if ((put ? gw_put(&writer, key, val, NULL) : gw_delete(&writer, key, NULL)) < 0)
            break;
        /* gw_put waits for etcd's reply; the clock started before it. */
        while ((!dns || !sock) && now_ns() - t0 < 5000000000ull) {
            ssize_t n = 0;
            q[0] = (uint8_t)(++id >> 8);
            q[1] = (uint8_t)id;
            if (!dns && ask(fd, q, qlen, r, &n) && has_ip(r, n, ip) == put)
                dns = now_ns();
            if (!sock && lc_drain_count(watcher) > 0)
                sock = now_ns();
        }
        if (dns && sock) {
            samples_add(sd, ns_to_us(dns - t0));
            samples_add(ss, ns_to_us(sock - t0));
        }
        sleep_ms(10);
    }
    gw_close(&writer);
    close(fd);
}

static struct proc *unbound_up(struct bench *b, int port)
{
    char dir[512], conf[600], log[600];
    FILE *f;

    snprintf(dir, sizeof dir, "%s/unbound", b->dir);
    snprintf(conf, sizeof conf, "%s/unbound.conf", dir);
    snprintf(log, sizeof log, "%s/unbound.log", dir);
    if (mkdir_p(dir, 0755) < 0 || !(f = fopen(conf, "w")))
        return NULL;
    fprintf(f,
            "server:\n  interface: 127.0.0.1@%d\n  num-threads: 1\n  do-daemonize: no\n"
            "  username: \"\"\n  chroot: \"\"\n  directory: \"%s\"\n  pidfile: \"\"\n"
            "  use-syslog: no\n  logfile: \"%s\"\n  verbosity: 0\n"
            "  local-zone: \"disc.\" static\n",
            port, dir, log);
    for (int s = 0; s < SERVICES; s++)
        for (int i = 0; i < INSTANCES; i++)
            fprintf(f, "  local-data: \"bench-dns%d.service.disc. 0 IN A 10.97.%d.%d\"\n", s, s,
                    i + 1);
    fclose(f);
    const char *argv[] = {"unbound", "-d", "-c", conf, NULL};
    return proc_spawn(argv, NULL, log);
}

/* Waits until port answers name with an A record. */
static bool answers(int port, const char *name)
{
    int fd = udp_to(port);
    uint8_t q[512], r[65536];
    ssize_t n;
    bool ok = false;

    for (int i = 0; fd >= 0 && i < 100 && !ok; i++) {
        size_t len = query(q, (uint16_t)i, name);
        ok = ask(fd, q, len, r, &n) && n > 12 && r[7] > 0; /* ANCOUNT */
        if (!ok)
            sleep_ms(100);
    }
    if (fd >= 0)
        close(fd);
    return ok;
}

void bench_dns(struct bench *b)
{
    struct agentp a;
    struct proc *ub;
    struct gw g;
    struct lc watcher;
    char yaml[1024], data[600], *line;
    const char *saved = b->agent_yaml;
    int aport = free_udp_port(), uport = free_udp_port();
    struct fig *qps, *l50, *l99, *p50, *p99;
    FILE *f;

    printf("bench: dns\n");
    if (gw_open(&g, b->url) < 0)
        return;
    for (int s = 0; s < SERVICES; s++)
        for (int i = 0; i < INSTANCES; i++) {
            char key[128], addr[64], val[512], name[32];
            snprintf(name, sizeof name, "bench-dns%d", s);
            snprintf(addr, sizeof addr, "10.97.%d.%d:80", s, i + 1);
            snprintf(key, sizeof key, "/micro/%s/%s", name, addr);
            instance_value(val, sizeof val, name, addr, i + 1);
            gw_put(&g, key, val, NULL);
        }
    gw_close(&g);
    snprintf(yaml, sizeof yaml, "%sdns:\n  listen: [127.0.0.1:%d]\n", saved ? saved : "", aport);
    b->agent_yaml = yaml;
    int up = agent_up(b, &a, "dns");
    b->agent_yaml = saved;
    if (up < 0)
        return;
    ub = unbound_up(b, uport);
    snprintf(data, sizeof data, "%s/dns-queries.txt", b->dir);
    if (!ub || !(f = fopen(data, "w"))) {
        fprintf(stderr, "bench: dns: unbound did not start\n");
        agent_down(&a);
        proc_free(ub);
        return;
    }
    for (int s = 0; s < SERVICES; s++)
        fprintf(f, "bench-dns%d.service.disc A\n", s);
    fclose(f);
    bool ready = answers(uport, "bench-dns0.service.disc");
    for (int s = 0; ready && s < SERVICES; s++) {
        char name[64];
        snprintf(name, sizeof name, "bench-dns%d.service.disc", s);
        ready = answers(aport, name);
    }
    if (!ready) {
        fprintf(stderr, "bench: dns: the agent or unbound does not answer\n");
        agent_down(&a);
        proc_free(ub);
        return;
    }

    qps = fig_new(b, "dns", "DNS queries per second (dnsperf, A, 4 clients)", "q/s", 0,
                  "unbound, 1 thread, local-data");
    fig_goal(qps, GOAL_RATIO_MIN, 1.0);
    struct fig *qabs = fig_new(b, "dns", "DNS queries per second, against the floor", "q/s", 0, "");
    fig_goal(qabs, GOAL_ABS_MIN, 50000);
    for (int r = 0; r < RUNS_DNS; r++) {
        double x = dnsperf(b, aport, data), y = dnsperf(b, uport, data);
        runs_add(&qps->v, x);
        runs_add(&qps->f, y);
        runs_add(&qabs->v, x);
        printf("bench: dns: run %d: agent %.0f q/s, unbound %.0f q/s\n", r + 1, x, y);
    }

    l50 = fig_new(b, "dns", "DNS latency at 2,000 q/s, p50", "µs", 0,
                  "unbound, 1 thread, local-data");
    l99 = fig_new(b, "dns", "DNS latency at 2,000 q/s, p99", "µs", 0,
                  "unbound, 1 thread, local-data");
    fig_goal(l50, GOAL_RATIO_MAX, 1.2);
    fig_goal(l99, GOAL_RATIO_MAX, 1.2);
    for (int r = 0; r < RUNS_DNS; r++) {
        struct samples sa = {0}, su = {0};
        latency(aport, &sa);
        latency(uport, &su);
        runs_add(&l50->v, samples_pct(&sa, 50));
        runs_add(&l50->f, samples_pct(&su, 50));
        runs_add(&l99->v, samples_pct(&sa, 99));
        runs_add(&l99->f, samples_pct(&su, 99));
        samples_free(&sa);
        samples_free(&su);
    }
    proc_free(ub);

    p50 = fig_new(b, "dns", "Propagation, put/delete to first DNS answer, p50", "µs", 0,
                  "the same agent's socket watcher, same writes");
    p99 = fig_new(b, "dns", "Propagation, put/delete to first DNS answer, p99", "µs", 0,
                  "the same agent's socket watcher, same writes");
    fig_goal(p50, GOAL_RATIO_MAX, 1.3);
    if (lc_open(&watcher, a.sock, true) < 0 ||
        !(line = lc_call(&watcher, "{\"op\":\"watch\",\"id\":1,\"service\":\"" PROP_SERVICE "\"}\n",
                         5000, NULL))) {
        fprintf(stderr, "bench: dns: no socket watcher\n");
        agent_down(&a);
        return;
    }
    answers(aport, PROP_SERVICE ".service.disc"); /* the agent watches it now */
    sleep_ms(300);
    for (int r = 0; r < RUNS_DNS; r++) {
        struct samples sd = {0}, ss = {0};
        propagation(b, aport, &watcher, &sd, &ss);
        runs_add(&p50->v, samples_pct(&sd, 50));
        runs_add(&p50->f, samples_pct(&ss, 50));
        runs_add(&p99->v, samples_pct(&sd, 99));
        runs_add(&p99->f, samples_pct(&ss, 99));
        samples_free(&sd);
        samples_free(&ss);
    }
    lc_close(&watcher);
    note(b,
         "DNS (issue 15): the peer is unbound with one thread serving the same %d A records "
         "from local-data on this machine; dnsperf, the agent and unbound share its cores. "
         "Propagation to DNS is timed to the first answer that shows the write, with queries "
         "sent back to back, one in flight, in the same loop that reads the socket watcher.",
         SERVICES * INSTANCES);
    agent_down(&a);
}
