/* Health checks, drain and maintenance end to end: a real etcd, a real
 * agent, real listeners, and etcdctl as the judge of what is registered. */
#include <arpa/inet.h>
#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agentproc.h"
#include "etcd_proc.h"
#include "proc.h"
#include "responder.h"
#include "testutil.h"

struct fx {
    struct etcd_cluster *cluster;
    struct agentp agent;
    char dir[512];
};

static void fx_up(struct fx *f, const char *yaml)
{
    struct etcd_cluster_opts co = {.members = 1};

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    snprintf(f->dir, sizeof f->dir, "%s/agent", etcd_cluster_dir(f->cluster));
    mkdir(f->dir, 0755);
    ck_assert_int_eq(
        agentp_config(&f->agent, f->dir, etcd_cluster_urls(f->cluster), 10, 1000, yaml), 0);
    ck_assert_int_eq(agentp_start(&f->agent), 0);
}

static void fx_down(struct fx *f)
{
    ck_assert_int_eq(agentp_free(&f->agent), 0);
    etcd_cluster_stop(f->cluster);
}

static bool present(struct fx *f, const char *key)
{
    char out[2048];
    const char *args[] = {"get", key, "--print-value-only", NULL};

    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
    return out[0] != '\0';
}

/* Waits until key is (or is not) in etcd; returns the time taken or -1. */
static long long wait_present(struct fx *f, const char *key, bool want, int timeout_ms)
{
    long long start = now_ms();

    while (now_ms() - start < timeout_ms) {
        if (present(f, key) == want)
            return now_ms() - start;
        usleep(50000);
    }
    return -1;
}

/* Stays (or stays not) in etcd for ms; false at the first change. */
static bool stays(struct fx *f, const char *key, bool want, int ms)
{
    long long start = now_ms();

    while (now_ms() - start < ms) {
        if (present(f, key) != want)
            return false;
        usleep(50000);
    }
    return true;
}

static int ctl(struct fx *f, const char *const *args)
{
    char out[4096];
    const char *argv[16] = {BUILD_DIR "/agentctl", "-s", f->agent.sock};
    int n = 3;

    for (; *args && n < 15; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    return proc_run(out, sizeof out, 10000, argv);
}

/* A listening socket on a free loopback port (connects succeed: the kernel
 * completes the handshake even if nobody accepts). */
static int listen_on(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (*port)
        sa.sin_port = htons((uint16_t)*port);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(fd, 64), 0);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* A free port with nothing listening on it. */
static int free_port(void)
{
    int port = 0, fd = listen_on(&port);
    close(fd);
    return port;
}

START_TEST(test_tcp_check_gates_registration)
{
    struct fx f;
    char yaml[512], key[128];
    int port = free_port(), fd;
    long long t;

    snprintf(yaml, sizeof yaml,
             "services:\n  - name: web\n    address: 127.0.0.1:%d\n"
             "    check: {type: tcp, interval: 200ms, timeout: 100ms, rise: 2, fall: 2}\n",
             port);
    snprintf(key, sizeof key, "/micro/web/127.0.0.1:%d", port);
    fx_up(&f, yaml);
    /* Nothing answers: never registered. */
    ck_assert(stays(&f, key, false, 1500));
    json_t *r = agent_call(f.agent.sock, "{\"op\":\"checks\"}", 5000);
    json_t *inst = json_array_get(json_object_get(r, "instances"), 0);
    ck_assert(json_is_false(json_object_get(inst, "healthy")));
    ck_assert_ptr_nonnull(strstr(
        json_string_value(json_object_get(json_object_get(inst, "check"), "output")), "refused"));
    json_decref(r);

    /* It starts answering: registered after rise (2) probes. */
    fd = listen_on(&port);
    t = wait_present(&f, key, true, 5000);
    ck_assert_int_ge(t, 0);
    /* And it stops: removed after fall (2) failures; the lease stays. */
    close(fd);
    t = wait_present(&f, key, false, 5000);
    ck_assert_int_ge(t, 0);
    fx_down(&f);
}
END_TEST

START_TEST(test_http_check_500_vs_200)
{
    static const char *const ok[] = {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"};
    static const char *const bad[] = {"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno"};
    struct responder *good = responder_start(ok, 1), *broken = responder_start(bad, 1);
    struct fx f;
    char yaml[1024];

    snprintf(yaml, sizeof yaml,
             "services:\n"
             "  - name: h\n    address: 127.0.0.1:%d\n"
             "    check: {type: http, interval: 200ms, timeout: 150ms}\n"
             "  - name: h\n    address: 127.0.0.1:%d\n"
             "    check: {type: http, url: \"%s/health\", interval: 200ms, timeout: 150ms}\n",
             responder_port(good), responder_port(broken), responder_url(broken));
    fx_up(&f, yaml);
    char k1[128], k2[128];
    snprintf(k1, sizeof k1, "/micro/h/127.0.0.1:%d", responder_port(good));
    snprintf(k2, sizeof k2, "/micro/h/127.0.0.1:%d", responder_port(broken));
    ck_assert_int_ge(wait_present(&f, k1, true, 5000), 0);
    ck_assert(stays(&f, k2, false, 1000));
    fx_down(&f);
    responder_stop(good);
    responder_stop(broken);
}
END_TEST

START_TEST(test_ttl_check_and_report)
{
    struct fx f;
    const char *key = "/micro/batch/127.0.0.1:7000";

    fx_up(&f, "services:\n  - name: batch\n    address: 127.0.0.1:7000\n"
              "    check: {type: ttl, ttl: 500ms, rise: 1, fall: 1}\n");
    ck_assert(stays(&f, key, false, 800));
    ck_assert_int_eq(
        ctl(&f, (const char *const[]){"check", "pass", "batch", "127.0.0.1:7000", NULL}), 0);
    ck_assert_int_ge(wait_present(&f, key, true, 3000), 0);
    /* No report for a ttl: it expires and leaves. */
    ck_assert_int_ge(wait_present(&f, key, false, 3000), 0);
    /* Reports keep it in. */
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(
            ctl(&f, (const char *const[]){"check", "pass", "batch", "127.0.0.1:7000", NULL}), 0);
        usleep(200000);
    }
    ck_assert(present(&f, key));
    /* Wrong uses say so. */
    ck_assert_int_eq(
        ctl(&f, (const char *const[]){"check", "maybe", "batch", "127.0.0.1:7000", NULL}), 2);
    ck_assert_int_eq(ctl(&f, (const char *const[]){"check", "pass", "nope", "127.0.0.1:1", NULL}),
                     1);
    fx_down(&f);
}
END_TEST

START_TEST(test_drain_and_maint)
{
    struct fx f;
    const char *a = "/micro/svc/127.0.0.1:8001", *b = "/micro/svc/127.0.0.1:8002";

    fx_up(&f, "services:\n  - name: svc\n    address: 127.0.0.1:8001\n"
              "  - name: svc\n    address: 127.0.0.1:8002\n");
    ck_assert_int_ge(wait_present(&f, a, true, 5000), 0);
    ck_assert_int_ge(wait_present(&f, b, true, 5000), 0);

    ck_assert_int_eq(ctl(&f, (const char *const[]){"drain", "svc", "127.0.0.1:8001", NULL}), 0);
    ck_assert_int_ge(wait_present(&f, a, false, 3000), 0);
    ck_assert(present(&f, b));
    /* A reload keeps the drain. */
    proc_signal(f.agent.p, SIGHUP);
    ck_assert(stays(&f, a, false, 1000));
    ck_assert_int_eq(ctl(&f, (const char *const[]){"undrain", "svc", "127.0.0.1:8001", NULL}), 0);
    ck_assert_int_ge(wait_present(&f, a, true, 3000), 0);

    /* Maintenance: everything out, with the reason shown, then back. */
    ck_assert_int_eq(
        ctl(&f, (const char *const[]){"maint", "on", "--reason", "kernel update", NULL}), 0);
    ck_assert_int_ge(wait_present(&f, a, false, 3000), 0);
    ck_assert_int_ge(wait_present(&f, b, false, 3000), 0);
    json_t *r = agent_call(f.agent.sock, "{\"op\":\"status\"}", 5000);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r, "maint"), "reason")),
                     "kernel update");
    json_decref(r);
    proc_signal(f.agent.p, SIGHUP);
    ck_assert(stays(&f, a, false, 1000));
    ck_assert_int_eq(ctl(&f, (const char *const[]){"maint", "off", NULL}), 0);
    ck_assert_int_ge(wait_present(&f, a, true, 3000), 0);
    ck_assert_int_ge(wait_present(&f, b, true, 3000), 0);
    ck_assert_int_eq(ctl(&f, (const char *const[]){"drain", "svc", "10.9.9.9:1", NULL}), 1);
    fx_down(&f);
}
END_TEST

/* A check that never answers delays neither another check nor a socket
 * reply. */
START_TEST(test_slow_check_delays_nothing)
{
    static const char *const hang[] = {"@HANG"};
    struct responder *slow = responder_start(hang, 1);
    struct fx f;
    char yaml[1024];
    int port = 0, fd = listen_on(&port);

    snprintf(yaml, sizeof yaml,
             "services:\n"
             "  - name: slow\n    address: 127.0.0.1:%d\n"
             "    check: {type: http, interval: 3s, timeout: 2500ms}\n"
             "  - name: fast\n    address: 127.0.0.1:%d\n"
             "    check: {type: tcp, interval: 100ms, timeout: 50ms, rise: 2}\n",
             responder_port(slow), port);
    fx_up(&f, yaml);
    char kfast[128];
    snprintf(kfast, sizeof kfast, "/micro/fast/127.0.0.1:%d", port);
    long long t = wait_present(&f, kfast, true, 5000);
    ck_assert_int_ge(t, 0);
    ck_assert_int_lt(t, 2000); /* not held behind the 2.5 s probe */
    long long worst = 0;
    for (int i = 0; i < 20; i++) {
        long long s = now_ms();
        json_t *r = agent_call(f.agent.sock, "{\"op\":\"ping\"}", 5000);
        ck_assert_ptr_nonnull(r);
        json_decref(r);
        if (now_ms() - s > worst)
            worst = now_ms() - s;
        usleep(50000);
    }
    ck_assert_int_lt(worst, 1000);
    close(fd);
    fx_down(&f);
    responder_stop(slow);
}
END_TEST

/* Reads "serving NAME at ADDRESS" from an echo-server's log. */
static bool echo_address(const char *log, char *addr, size_t len)
{
    for (int i = 0; i < 100; i++) {
        FILE *f = fopen(log, "r");
        char line[256];
        while (f && fgets(line, sizeof line, f)) {
            char *at = strstr(line, " at ");
            if (!strncmp(line, "serving ", 8) && at) {
                snprintf(addr, len, "%s", at + 4);
                addr[strcspn(addr, "\n")] = '\0';
                fclose(f);
                return true;
            }
        }
        if (f)
            fclose(f);
        usleep(100000);
    }
    return false;
}

/* A real gRPC server's health: registered while SERVING, removed after
 * fall NOT_SERVING answers, back after rise SERVING ones. */
START_TEST(test_grpc_check_follows_serving)
{
    struct fx f;
    char log[600], addr[128], yaml[512], key[200];
    struct proc *echo;

    fx_up(&f, "");
    snprintf(log, sizeof log, "%s/echo.log", f.dir);
    const char *argv[] = {
        BUILD_DIR "/echo-server", "echo", "127.0.0.1:0", "-s", f.agent.sock, NULL};
    echo = proc_spawn(argv, NULL, log);
    ck_assert_ptr_nonnull(echo);
    ck_assert(echo_address(log, addr, sizeof addr));

    /* A configured instance at the same address, checked over gRPC. */
    snprintf(yaml, sizeof yaml,
             "services:\n  - name: hc\n    address: %s\n"
             "    check: {type: grpc, interval: 200ms, timeout: 150ms, rise: 2, fall: 2}\n",
             addr);
    ck_assert_int_eq(agentp_config(&f.agent, f.dir, etcd_cluster_urls(f.cluster), 10, 1000, yaml),
                     0);
    proc_signal(f.agent.p, SIGHUP);
    snprintf(key, sizeof key, "/micro/hc/%s", addr);
    ck_assert_int_ge(wait_present(&f, key, true, 5000), 0);

    proc_signal(echo, SIGUSR1); /* NOT_SERVING */
    ck_assert_int_ge(wait_present(&f, key, false, 5000), 0);
    json_t *r = agent_call(f.agent.sock, "{\"op\":\"checks\"}", 5000);
    json_t *ck = json_object_get(json_array_get(json_object_get(r, "instances"), 0), "check");
    ck_assert_str_eq(json_string_value(json_object_get(ck, "output")), "NOT_SERVING");
    json_decref(r);
    proc_signal(echo, SIGUSR1); /* SERVING again */
    ck_assert_int_ge(wait_present(&f, key, true, 5000), 0);

    proc_signal(echo, SIGTERM);
    proc_wait(echo, 10000, NULL);
    proc_free(echo);
    fx_down(&f);
}
END_TEST

START_TEST(test_exec_refused_unless_enabled)
{
    char dir[] = "/tmp/da-exec-XXXXXX", path[256], out[2048], errp[300];
    FILE *cf;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/a.yaml", dir);
    snprintf(errp, sizeof errp, "%s/err", dir);
    cf = fopen(path, "w");
    fputs("services:\n  - name: x\n    address: 127.0.0.1:1\n"
          "    check: {type: exec, command: [/bin/true]}\n",
          cf);
    fclose(cf);
    const char *check[] = {BUILD_DIR "/discovery-agent", "-c", path, "--check", NULL};
    ck_assert_int_eq(proc_run_full(out, sizeof out, 5000, check, NULL, errp), 1);
    cf = fopen(path, "a");
    fputs("checks: {exec: true}\n", cf);
    fclose(cf);
    ck_assert_int_eq(proc_run_full(out, sizeof out, 5000, check, NULL, errp), 0);
    unlink(path);
    unlink(errp);
    rmdir(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("health");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_tcp_check_gates_registration);
    tcase_add_test(tc, test_http_check_500_vs_200);
    tcase_add_test(tc, test_ttl_check_and_report);
    tcase_add_test(tc, test_drain_and_maint);
    tcase_add_test(tc, test_slow_check_delays_nothing);
    tcase_add_test(tc, test_exec_refused_unless_enabled);
    tcase_add_test(tc, test_grpc_check_follows_serving);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
