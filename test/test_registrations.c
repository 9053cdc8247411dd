/* Registrations that must never be lost: a real etcd, a real agent, many
 * clients racing over its socket, and etcdctl as the judge.
 *
 * - Quick re-registrations (register, close, register again) and drain /
 *   undrain storms: a delete of an earlier registration must never remove
 *   the newer write of the same key (issue 12, item 1).
 * - After etcd is wiped, reads of services this agent wrote are answered
 *   at once, not after etcd.timeout (item 5).
 * - Ownership follows the process: another connection of the same process
 *   takes a registration over; another process gets `conflict` (item 9). */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agentproc.h"
#include "etcd_proc.h"
#include "testutil.h"

#define CHURN_CLIENTS 40
#define CHURN_CYCLES 15

struct fx {
    struct etcd_cluster *cluster;
    struct agentp agent;
    char dir[512];
};

static void fx_up(struct fx *f, int timeout_ms, const char *yaml)
{
    struct etcd_cluster_opts co = {.members = 1};

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    snprintf(f->dir, sizeof f->dir, "%s/agent", etcd_cluster_dir(f->cluster));
    mkdir(f->dir, 0755);
    ck_assert_int_eq(
        agentp_config(&f->agent, f->dir, etcd_cluster_urls(f->cluster), 10, timeout_ms, yaml), 0);
    ck_assert_int_eq(agentp_start(&f->agent), 0);
}

static void fx_down(struct fx *f)
{
    ck_assert_int_eq(agentp_free(&f->agent), 0);
    etcd_cluster_stop(f->cluster);
}

/* How many keys etcd holds under prefix. */
static int count_keys(struct fx *f, const char *prefix)
{
    static char out[1 << 16];
    const char *args[] = {"get", prefix, "--prefix", "--keys-only", NULL};
    int n = 0;

    if (etcdctl(f->cluster, out, sizeof out, args) != 0)
        return -1;
    for (const char *p = out; *p; p++)
        n += *p == '\n' && p > out && p[-1] != '\n';
    return n;
}

/* Waits (up to timeout_ms) until etcd holds want keys under prefix; then
 * checks they stay for another second, so that a late delete shows. */
static int settle_keys(struct fx *f, const char *prefix, int want, int timeout_ms)
{
    long long start = now_ms();
    int n = -1;

    while (now_ms() - start < timeout_ms) {
        if ((n = count_keys(f, prefix)) == want)
            break;
        usleep(200000);
    }
    if (n != want)
        return n;
    usleep(1000000);
    return count_keys(f, prefix);
}

/* How many of the agent's registrations `status` calls registered. */
static int status_registered(struct fx *f, const char *name)
{
    json_t *st = agent_call(f->agent.sock, "{\"op\":\"status\"}", 5000), *regs, *r;
    size_t i;
    int n = 0;

    ck_assert_ptr_nonnull(st);
    regs = json_object_get(st, "registrations");
    json_array_foreach(regs, i, r) {
        if (strcmp(json_string_value(json_object_get(r, "name")), name))
            continue;
        if (!strcmp(json_string_value(json_object_get(r, "state")), "registered"))
            n++;
        else
            fprintf(stderr, "status: %s %s is %s\n", name,
                    json_string_value(json_object_get(r, "address")),
                    json_string_value(json_object_get(r, "state")));
    }
    json_decref(st);
    return n;
}

/* ---- quick re-registration ---------------------------------------------- */

struct churner {
    const char *sock;
    int i;
    int fd; /* the last connection, kept open */
    int failures;
    int conflicts;
};

/* Registers instance i of name on fd. A `conflict` (the previous
 * connection's close not yet seen, on an agent that refuses another
 * connection of the same process) is retried as a reconnecting client
 * would; *conflicts counts them. */
static int register_on(int fd, const char *name, int i, int *conflicts)
{
    char req[256];

    snprintf(req, sizeof req,
             "{\"op\":\"register\",\"name\":\"%s\",\"address\":\"10.7.%d.%d:80\",\"weight\":%d}",
             name, i / 200, i % 200 + 1, i + 1);
    for (int tries = 0; tries < 100; tries++) {
        json_t *r = sock_call(fd, req, 10000);
        json_t *e = r ? json_object_get(r, "error") : NULL;
        const char *code = e ? json_string_value(json_object_get(e, "code")) : NULL;
        int ok = r && json_is_true(json_object_get(r, "ok"));
        int conflict = code && !strcmp(code, "conflict");
        json_decref(r);
        if (ok)
            return 0;
        if (!conflict)
            return -1;
        ++*conflicts;
        usleep(10000);
    }
    return -1;
}

/* Registers its instance and closes, CHURN_CYCLES times, then registers
 * once more and keeps that connection open. */
static void *churn_main(void *arg)
{
    struct churner *c = arg;

    for (int k = 0; k <= CHURN_CYCLES; k++) {
        int fd = sock_open(c->sock);
        if (fd < 0 || register_on(fd, "churn", c->i, &c->conflicts) < 0)
            c->failures++;
        if (k < CHURN_CYCLES) {
            if (fd >= 0)
                close(fd);
        } else {
            c->fd = fd;
        }
    }
    return NULL;
}

static void churn_round(struct fx *f)
{
    static struct churner c[CHURN_CLIENTS];
    pthread_t t[CHURN_CLIENTS];
    int n;

    for (int i = 0; i < CHURN_CLIENTS; i++) {
        c[i] = (struct churner){.sock = f->agent.sock, .i = i, .fd = -1};
        ck_assert_int_eq(pthread_create(&t[i], NULL, churn_main, &c[i]), 0);
    }
    for (int i = 0; i < CHURN_CLIENTS; i++) {
        pthread_join(t[i], NULL);
        ck_assert_int_eq(c[i].failures, 0);
    }
    ck_assert_int_eq(status_registered(f, "churn"), CHURN_CLIENTS);
    n = settle_keys(f, "/micro/churn/", CHURN_CLIENTS, 15000);
    ck_assert_msg(n == CHURN_CLIENTS, "%d of %d registrations in etcd, while status says all", n,
                  CHURN_CLIENTS);
    ck_assert_int_eq(status_registered(f, "churn"), CHURN_CLIENTS);
    /* The same process registering again is a takeover, never refused. */
    for (int i = 0; i < CHURN_CLIENTS; i++)
        ck_assert_int_eq(c[i].conflicts, 0);
    for (int i = 0; i < CHURN_CLIENTS; i++)
        close(c[i].fd);
    ck_assert_int_eq(settle_keys(f, "/micro/churn/", 0, 15000), 0);
}

/* The same race made likely: while etcd is frozen, each of 40 clients
 * registers and deregisters on one connection and registers again on a
 * new one, so that the first write, its delete and the second write are
 * all waiting together when etcd thaws and takes them in whatever order. */
START_TEST(test_reregistration_while_frozen_kept)
{
    struct fx f;
    int keep[CHURN_CLIENTS], gone[CHURN_CLIENTS], n;
    char req[256], dereq[256];

    fx_up(&f, 10000, "");
    for (int round = 0; round < 3; round++) {
        ck_assert_int_eq(etcd_member_freeze(f.cluster, 0), 0);
        for (int i = 0; i < CHURN_CLIENTS; i++) {
            snprintf(req, sizeof req,
                     "{\"op\":\"register\",\"name\":\"frozen\",\"address\":\"10.3.0.%d:80\"}",
                     i + 1);
            snprintf(dereq, sizeof dereq,
                     "{\"op\":\"deregister\",\"name\":\"frozen\",\"address\":\"10.3.0.%d:80\"}",
                     i + 1);
            gone[i] = sock_open(f.agent.sock);
            ck_assert_int_ge(gone[i], 0);
            ck_assert_int_eq(sock_send(gone[i], req), 0);
            ck_assert_int_eq(sock_send(gone[i], dereq), 0);
            usleep(2000);
            keep[i] = sock_open(f.agent.sock);
            ck_assert_int_ge(keep[i], 0);
            ck_assert_int_eq(sock_send(keep[i], req), 0);
        }
        usleep(500000);
        ck_assert_int_eq(etcd_member_thaw(f.cluster, 0), 0);
        for (int i = 0; i < CHURN_CLIENTS; i++) {
            json_t *r = sock_recv(keep[i], 15000);
            ck_assert_msg(r && json_is_true(json_object_get(r, "ok")), "register %d: %s", i,
                          r ? json_dumps(r, 0) : "no reply");
            json_decref(r);
        }
        n = settle_keys(&f, "/micro/frozen/", CHURN_CLIENTS, 15000);
        ck_assert_msg(n == CHURN_CLIENTS, "round %d: %d of %d registrations in etcd", round, n,
                      CHURN_CLIENTS);
        ck_assert_int_eq(status_registered(&f, "frozen"), CHURN_CLIENTS);
        for (int i = 0; i < CHURN_CLIENTS; i++) {
            close(keep[i]);
            close(gone[i]);
        }
        ck_assert_int_eq(settle_keys(&f, "/micro/frozen/", 0, 15000), 0);
    }
    fx_down(&f);
}
END_TEST

START_TEST(test_quick_reregistration_kept)
{
    struct fx f;

    fx_up(&f, 5000, "");
    /* Several rounds: each round races CHURN_CLIENTS x CHURN_CYCLES
     * deletes against the puts of the next registration. */
    for (int round = 0; round < 3; round++)
        churn_round(&f);
    fx_down(&f);
}
END_TEST

/* ---- drain and undrain -------------------------------------------------- */

#define DRAINED 30

START_TEST(test_drain_undrain_storm_kept)
{
    struct fx f;
    char yaml[8192];
    size_t off;
    int fd, n;

    off = (size_t)snprintf(yaml, sizeof yaml, "services:\n");
    for (int i = 0; i < DRAINED; i++)
        off += (size_t)snprintf(yaml + off, sizeof yaml - off,
                                "  - name: drainy\n    address: 10.8.0.%d:80\n", i + 1);
    fx_up(&f, 5000, yaml);
    ck_assert_int_eq(settle_keys(&f, "/micro/drainy/", DRAINED, 15000), DRAINED);
    fd = sock_open(f.agent.sock);
    ck_assert_int_ge(fd, 0);
    /* Each undrain right behind its drain, every line of a round in one
     * write: deletes and puts of the same keys are in flight together, on
     * as many connections to etcd as the agent opens. */
    for (int round = 0; round < 8; round++) {
        char batch[DRAINED * 2 * 100];
        size_t boff = 0;
        for (int i = 0; i < DRAINED; i++)
            for (int on = 1; on >= 0; on--)
                boff += (size_t)snprintf(batch + boff, sizeof batch - boff,
                                         "{\"op\":\"%s\",\"name\":\"drainy\","
                                         "\"address\":\"10.8.0.%d:80\"}\n",
                                         on ? "drain" : "undrain", i + 1);
        ck_assert_int_eq(write(fd, batch, boff), (ssize_t)boff);
        for (int i = 0; i < DRAINED * 2; i++) {
            json_t *r = sock_recv(fd, 5000);
            ck_assert(r && json_is_true(json_object_get(r, "ok")));
            json_decref(r);
        }
        usleep(50000);
    }
    n = settle_keys(&f, "/micro/drainy/", DRAINED, 15000);
    ck_assert_msg(n == DRAINED, "%d of %d undrained instances in etcd", n, DRAINED);
    ck_assert_int_eq(status_registered(&f, "drainy"), DRAINED);
    close(fd);
    fx_down(&f);
}
END_TEST

/* ---- reloads that remove and re-add ------------------------------------- */

START_TEST(test_reload_storm_kept)
{
    struct fx f;
    char full[4096], none[64];
    size_t off;
    int n;

    off = (size_t)snprintf(full, sizeof full, "services:\n");
    for (int i = 0; i < 20; i++)
        off += (size_t)snprintf(full + off, sizeof full - off,
                                "  - name: reloaded\n    address: 10.6.0.%d:80\n", i + 1);
    snprintf(none, sizeof none, "services: []\n");
    fx_up(&f, 5000, full);
    ck_assert_int_eq(settle_keys(&f, "/micro/reloaded/", 20, 15000), 20);
    for (int round = 0; round < 10; round++) {
        for (int pass = 0; pass < 2; pass++) {
            ck_assert_int_eq(agentp_config(&f.agent, f.dir, etcd_cluster_urls(f.cluster), 10, 5000,
                                           pass ? full : none),
                             0);
            proc_signal(f.agent.p, SIGHUP);
            usleep(5000); /* time to read the file; not to finish the writes */
        }
    }
    n = settle_keys(&f, "/micro/reloaded/", 20, 15000);
    ck_assert_msg(n == 20, "%d of 20 re-added instances in etcd", n);
    fx_down(&f);
}
END_TEST

/* ---- etcd wiped: read-your-writes floor --------------------------------- */

START_TEST(test_wiped_etcd_reads_answered)
{
    struct fx f;
    json_t *r;
    int fd;

    /* A long etcd.timeout: a read that waits for a floor etcd will never
     * reach again would take all of it. */
    fx_up(&f, 60000, "services:\n  - name: floor\n    address: 10.5.0.1:80\n");
    ck_assert_int_eq(settle_keys(&f, "/micro/floor/", 1, 15000), 1);
    /* Raise the floor well above where a fresh etcd starts. */
    fd = sock_open(f.agent.sock);
    ck_assert_int_ge(fd, 0);
    for (int i = 0; i < 30; i++) {
        char req[200];
        snprintf(req, sizeof req,
                 "{\"op\":\"register\",\"name\":\"floor\",\"address\":\"10.5.1.1:80\","
                 "\"weight\":%d}",
                 i + 1);
        r = sock_call(fd, req, 10000);
        ck_assert(r && json_is_true(json_object_get(r, "registered")));
        json_decref(r);
    }
    ck_assert_int_eq(etcd_member_wipe(f.cluster, 0), 0);
    /* The agent finds its lease gone and writes both keys again. */
    ck_assert_int_eq(settle_keys(&f, "/micro/floor/", 2, 30000), 2);
    long long start = now_ms();
    while (status_registered(&f, "floor") != 2 && now_ms() - start < 15000)
        usleep(100000);
    ck_assert_int_eq(status_registered(&f, "floor"), 2);
    /* A resolve is answered from the fresh list, not after 60 s. */
    int rfd = sock_open(f.agent.sock);
    ck_assert_int_ge(rfd, 0);
    r = sock_call(rfd, "{\"op\":\"resolve\",\"service\":\"floor\"}", 20000);
    ck_assert_msg(r != NULL, "resolve after the wipe was not answered within 20 s");
    ck_assert(json_is_true(json_object_get(r, "ok")));
    ck_assert_int_eq(json_array_size(json_object_get(r, "instances")), 2);
    json_decref(r);
    close(rfd);
    close(fd);
    fx_down(&f);
}
END_TEST

/* ---- ownership ---------------------------------------------------------- */

static const char own_req[] =
    "{\"op\":\"register\",\"name\":\"owned\",\"address\":\"10.4.0.1:80\"}";

START_TEST(test_same_process_takes_over)
{
    struct fx f;
    json_t *r;
    int a, b;

    fx_up(&f, 5000, "");
    a = sock_open(f.agent.sock);
    b = sock_open(f.agent.sock);
    ck_assert(a >= 0 && b >= 0);
    r = sock_call(a, own_req, 10000);
    ck_assert(r && json_is_true(json_object_get(r, "registered")));
    json_decref(r);
    /* A client that reconnected before its old connection closed takes its
     * registration back (proto/agent-protocol.md, sections 5 and 8). */
    r = sock_call(b, own_req, 10000);
    ck_assert_msg(r && json_is_true(json_object_get(r, "ok")), "same-process takeover refused: %s",
                  r ? json_dumps(r, 0) : "no reply");
    json_decref(r);
    /* The old connection's close no longer takes it away. */
    close(a);
    usleep(300000);
    ck_assert_int_eq(settle_keys(&f, "/micro/owned/", 1, 5000), 1);
    ck_assert_int_eq(status_registered(&f, "owned"), 1);
    /* Another process gets conflict, naming the rule. */
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        int c = sock_open(f.agent.sock);
        json_t *cr = c >= 0 ? sock_call(c, own_req, 10000) : NULL;
        json_t *e = cr ? json_object_get(cr, "error") : NULL;
        const char *code = e ? json_string_value(json_object_get(e, "code")) : NULL;
        _exit(code && !strcmp(code, "conflict") ? 0 : 1);
    }
    int st;
    ck_assert_int_eq(waitpid(child, &st, 0), child);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "another process was not refused");
    close(b);
    ck_assert_int_eq(settle_keys(&f, "/micro/owned/", 0, 15000), 0);
    fx_down(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("registrations");
    const struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"churn", test_quick_reregistration_kept},
        {"frozen", test_reregistration_while_frozen_kept},
        {"drain", test_drain_undrain_storm_kept},
        {"reload", test_reload_storm_kept},
        {"wipe", test_wiped_etcd_reads_answered},
        {"owner", test_same_process_takes_over},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_set_timeout(tc, 240);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
