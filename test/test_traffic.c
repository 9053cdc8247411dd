/* End-to-end tests of the traffic policy (agent/policy.c, docs/traffic.md)
 * with real etcd, a real agent and unmodified gRPC clients:
 *
 *  - zones: six echo servers in three zones (a and b of region r1, c of
 *    r2), registered in etcd with Metadata zone/region as another writer
 *    would; the agent is in zone a. Clients of xds:///echo (python3-grpcio)
 *    call only zone a; the socket's prefer_zone list and DNS SRV
 *    priorities say the same. Zone a's servers leave one by one (key
 *    deleted, then the server stopped, as the server helper does): traffic
 *    spreads to zone b by the thinning rule, then moves there whole, with
 *    no failed call; it returns when zone a comes back.
 *  - protection: deleting the whole prefix (etcdctl del --prefix /micro/)
 *    leaves every client on its list, marked protected, for the hold time;
 *    then the drop applies.
 *
 * No timing assertions: only generous bounds for liveness. */
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
#include <unistd.h>

#include "agentproc.h"
#include "b64.h"
#include "etcd_proc.h"
#include "proc.h"
#include "testutil.h"

#ifndef BUILD_DIR
#define BUILD_DIR "build"
#endif
#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "test/data"
#endif

#define PYTHON "/usr/bin/python3"
#define PY_CLIENT TEST_DATA_DIR "/../xds_client.py"
#define PY_ECHO TEST_DATA_DIR "/../xds_echo.py"
#define N 6

static const char *const zone_of[N] = {"a", "a", "b", "b", "c", "c"};
static const char *const region_of[N] = {"r1", "r1", "r1", "r1", "r2", "r2"};

struct fx {
    struct etcd_cluster *cluster;
    struct agentp agent;
    char dir[512], bootstrap[600];
    struct proc *echo[N];
    int port[N];
    int dns_port;
};

static int free_port(int type)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, type, 0), port;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static bool file_has(const char *path, const char *text)
{
    char buf[65536];
    FILE *f = fopen(path, "r");
    size_t n;

    if (!f)
        return false;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
}

/* One request to etcd's JSON gateway. */
static void etcd_post(struct fx *f, const char *path, const char *body)
{
    const char *url = etcd_member_url(f->cluster, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    char req[2048], reply[4096];
    int fd, n, got = 0;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)atoi(strrchr(url, ':') + 1));
    fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    n = snprintf(req, sizeof req,
                 "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                 path, strlen(body), body);
    ck_assert_int_eq(write(fd, req, (size_t)n), n);
    while ((n = (int)read(fd, reply + got, sizeof reply - 1 - (size_t)got)) > 0)
        got += n;
    close(fd);
    reply[got] = '\0';
    ck_assert_msg(strstr(reply, " 200 ") != NULL, "etcd said: %s", reply);
}

static void put(struct fx *f, int i)
{
    char key[128], value[512], k64[B64_ENCODED_SIZE(128)], v64[B64_ENCODED_SIZE(512)];
    char body[1536];

    snprintf(key, sizeof key, "/micro/echo/127.0.0.1:%d", f->port[i]);
    snprintf(value, sizeof value,
             "{\"Name\":\"echo\",\"Address\":\"127.0.0.1:%d\",\"Weight\":1,\"Group\":\"\","
             "\"Metadata\":{\"zone\":\"%s\",\"region\":\"%s\"}}",
             f->port[i], zone_of[i], region_of[i]);
    b64_encode(key, strlen(key), k64);
    b64_encode(value, strlen(value), v64);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\"}", k64, v64);
    etcd_post(f, "/v3/kv/put", body);
}

static void del(struct fx *f, int i)
{
    char key[128], k64[B64_ENCODED_SIZE(128)], body[512];

    snprintf(key, sizeof key, "/micro/echo/127.0.0.1:%d", f->port[i]);
    b64_encode(key, strlen(key), k64);
    snprintf(body, sizeof body, "{\"key\":\"%s\"}", k64);
    etcd_post(f, "/v3/kv/deleterange", body);
}

static int half_failing = -1; /* the server that fails half its calls */

static void echo_start(struct fx *f, int i)
{
    char port[16], log[700];
    const char *argv[] = {PYTHON, PY_ECHO, port, NULL};

    snprintf(port, sizeof port, "%d%s", f->port[i], i == half_failing ? "/half" : "");
    snprintf(log, sizeof log, "%s/echo-%d.log", f->dir, i);
    unlink(log);
    f->echo[i] = proc_spawn(argv, NULL, log);
    ck_assert_ptr_nonnull(f->echo[i]);
    for (int k = 0; k < 200 && !file_has(log, "ready"); k++)
        usleep(50000);
    ck_assert_msg(file_has(log, "ready"), "echo server %d did not start", i);
}

/* A server leaving as the server helper does: deregistered first, then
 * stopped once the agent has pushed the change. */
static void echo_leave(struct fx *f, int i)
{
    del(f, i);
    sleep_ms(1500);
    f->echo[i] = proc_free(f->echo[i]);
}

static void fx_up(struct fx *f, const char *extra)
{
    struct etcd_cluster_opts co = {.members = 1};
    char yaml[2048];

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    snprintf(f->dir, sizeof f->dir, "%s/agent", etcd_cluster_dir(f->cluster));
    mkdir(f->dir, 0755);
    snprintf(f->bootstrap, sizeof f->bootstrap, "%s/xds-bootstrap.json", f->dir);
    f->dns_port = free_port(SOCK_DGRAM);
    snprintf(yaml, sizeof yaml,
             "locality:\n  zone: a\n  region: r1\n"
             "dns:\n  listen: [127.0.0.1:%d]\n%s",
             f->dns_port, extra);
    ck_assert_int_eq(
        agentp_config(&f->agent, f->dir, etcd_cluster_urls(f->cluster), 10, 1000, yaml), 0);
    ck_assert_int_eq(agentp_start(&f->agent), 0);
    for (int i = 0; i < N; i++) {
        f->port[i] = free_port(SOCK_STREAM);
        echo_start(f, i);
        put(f, i);
    }
}

static void fx_down(struct fx *f)
{
    for (int i = 0; i < N; i++)
        proc_free(f->echo[i]);
    ck_assert_int_eq(agentp_free(&f->agent), 0);
    etcd_cluster_stop(f->cluster);
}

/* N calls of python3-grpcio's xds:///echo, interval_ms apart; its JSON
 * result. */
static json_t *py_calls_every(struct fx *f, int calls, int interval_ms, const char *tag)
{
    char out[700], n[16], iv[16], env[700], line[8192];
    const char *argv[] = {PYTHON,          PY_CLIENT, "xds:///echo", "--calls", n,
                          "--interval-ms", iv,        NULL};
    const char *envv[] = {env, "GRPC_VERBOSITY=ERROR", NULL};
    struct proc *p;
    json_t *r = NULL;
    FILE *fp;
    int status = 0;

    snprintf(out, sizeof out, "%s/client-%s.out", f->dir, tag);
    snprintf(n, sizeof n, "%d", calls);
    snprintf(iv, sizeof iv, "%d", interval_ms);
    snprintf(env, sizeof env, "GRPC_XDS_BOOTSTRAP=%s", f->bootstrap);
    p = proc_spawn(argv, envv, out);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(proc_wait(p, 60000, &status), 0);
    proc_free(p);
    fp = fopen(out, "r");
    ck_assert_ptr_nonnull(fp);
    while (fgets(line, sizeof line, fp))
        if (line[0] == '{') {
            json_decref(r);
            r = json_loads(line, 0, NULL);
        }
    fclose(fp);
    ck_assert_msg(r != NULL, "no result from the client in %s", out);
    return r;
}

static json_t *py_calls(struct fx *f, int calls, const char *tag)
{
    return py_calls_every(f, calls, 0, tag);
}

static long long count_of(struct fx *f, json_t *r, int i)
{
    char a[32];

    snprintf(a, sizeof a, "127.0.0.1:%d", f->port[i]);
    return json_integer_value(json_object_get(json_object_get(r, "counts"), a));
}

static long long zone_calls(struct fx *f, json_t *r, const char *zone)
{
    long long n = 0;

    for (int i = 0; i < N; i++)
        if (!strcmp(zone_of[i], zone))
            n += count_of(f, r, i);
    return n;
}

static void no_failures(json_t *r, const char *who)
{
    ck_assert_msg(json_integer_value(json_object_get(r, "failed")) == 0, "%s: %lld call(s) failed",
                  who, (long long)json_integer_value(json_object_get(r, "failed")));
}

/* The prefer_zone list: how many instances are in use, of which zone a's. */
static json_t *resolve_zoned(struct fx *f)
{
    json_t *r = agent_call(f->agent.sock,
                           "{\"op\":\"resolve\",\"service\":\"echo\",\"prefer_zone\":true}", 5000);
    ck_assert_ptr_nonnull(r);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    return r;
}

static size_t used(json_t *r, const char *zone)
{
    json_t *arr = json_object_get(r, "instances"), *v;
    size_t i, n = 0;

    json_array_foreach(arr, i, v)
        n += !zone || !strcmp(json_string_value(json_object_get(v, "zone")), zone);
    return n;
}

/* Waits until the prefer_zone list uses n instances, want_a of zone a. */
static json_t *wait_used(struct fx *f, size_t n, size_t want_a)
{
    json_t *r = NULL;

    for (int k = 0; k < 100; k++) {
        json_decref(r);
        r = resolve_zoned(f);
        if (used(r, NULL) == n && used(r, "a") == want_a)
            return r;
        sleep_ms(100);
    }
    char *s = json_dumps(r, 0);
    ck_abort_msg("prefer_zone list never used %zu (%zu of zone a): %s", n, want_a, s);
    return NULL;
}

/* dig's SRV answers: "PRIO WEIGHT PORT TARGET" lines. */
static int srv_priority_of(struct fx *f, int port)
{
    char cmd[512], line[512];
    int prio = -1, pr, w, pt;
    FILE *p;

    snprintf(cmd, sizeof cmd, "dig +short -p %d @127.0.0.1 SRV echo.service.disc", f->dns_port);
    p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "%d %d %d", &pr, &w, &pt) == 3 && pt == port)
            prio = pr;
    pclose(p);
    return prio;
}

/* agentctl's output for args, into buf. */
static const char *ctl(struct fx *f, const char *args, char *buf, size_t len)
{
    char cmd[1024];
    size_t n;
    FILE *p;

    snprintf(cmd, sizeof cmd, "%s/agentctl -s %s %s", BUILD_DIR, f->agent.sock, args);
    p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    n = fread(buf, 1, len - 1, p);
    buf[n] = '\0';
    pclose(p);
    return buf;
}

START_TEST(test_zone_failover)
{
    struct fx f;
    json_t *r;

    fx_up(&f, "");
    /* Zone a only, on every interface. */
    r = wait_used(&f, 2, 2);
    ck_assert_uint_eq(json_array_size(json_object_get(r, "standby")), 4);
    json_decref(r);
    ck_assert_int_eq(srv_priority_of(&f, f.port[0]), 0);
    ck_assert_int_eq(srv_priority_of(&f, f.port[2]), 1);
    ck_assert_int_eq(srv_priority_of(&f, f.port[4]), 2);
    r = py_calls(&f, 60, "all-a");
    no_failures(r, "zone a whole");
    ck_assert_int_eq(zone_calls(&f, r, "a"), 60);
    json_decref(r);

    /* One of zone a's two leaves: 1.4 x 1/2 = 70% stays, 30% goes to b. */
    echo_leave(&f, 0);
    r = wait_used(&f, 3, 1);
    json_decref(r);
    ck_assert_int_eq(srv_priority_of(&f, f.port[1]), 0);
    ck_assert_int_eq(srv_priority_of(&f, f.port[2]), 0);
    {
        char out[8192];
        ctl(&f, "resolve echo --prefer-zone", out, sizeof out);
        ck_assert_msg(strstr(out, "loads          zone 70.0%, region 30.0%, rest 0.0%"), "%s", out);
        ck_assert_msg(strstr(out, "standby") && strstr(out, "in use"), "%s", out);
        ctl(&f, "status", out, sizeof out);
        ck_assert_msg(strstr(out, "70%/30%/0%"), "%s", out);
    }
    r = py_calls(&f, 200, "thin-a");
    no_failures(r, "zone a thinned");
    ck_assert_int_gt(zone_calls(&f, r, "a"), 0);
    ck_assert_int_gt(zone_calls(&f, r, "b"), 0);
    ck_assert_int_eq(zone_calls(&f, r, "c"), 0);
    /* The rule's 70/30, loosely: a takes clearly more than b. */
    ck_assert_int_gt(zone_calls(&f, r, "a"), zone_calls(&f, r, "b"));
    json_decref(r);

    /* The last of zone a leaves: zone b takes everything. */
    echo_leave(&f, 1);
    r = wait_used(&f, 2, 0);
    json_decref(r);
    r = py_calls(&f, 60, "none-a");
    no_failures(r, "zone a gone");
    ck_assert_int_eq(zone_calls(&f, r, "b"), 60);
    json_decref(r);

    /* Zone a comes back: all of it returns there. */
    echo_start(&f, 0);
    echo_start(&f, 1);
    put(&f, 0);
    put(&f, 1);
    r = wait_used(&f, 2, 2);
    json_decref(r);
    sleep_ms(1000); /* the EDS push reaches the next client's first call */
    r = py_calls(&f, 60, "back-a");
    no_failures(r, "zone a back");
    ck_assert_int_eq(zone_calls(&f, r, "a"), 60);
    json_decref(r);
    fx_down(&f);
}
END_TEST

START_TEST(test_prefix_delete_is_held)
{
    struct fx f;
    char k64[B64_ENCODED_SIZE(64)], e64[B64_ENCODED_SIZE(64)], body[512];
    json_t *r = NULL, *st;
    long long t0;
    bool empty = false;

    fx_up(&f, "traffic:\n  protection:\n    hold: 4s\n");
    r = wait_used(&f, 2, 2);
    json_decref(r);
    /* etcdctl del --prefix /micro/ */
    b64_encode("/micro/", 7, k64);
    b64_encode("/micro0", 7, e64);
    snprintf(body, sizeof body, "{\"key\":\"%s\",\"range_end\":\"%s\"}", k64, e64);
    t0 = now_ms();
    etcd_post(&f, "/v3/kv/deleterange", body);
    sleep_ms(500);
    /* Held: the last list, marked protected, on the socket... */
    r = agent_call(f.agent.sock, "{\"op\":\"resolve\",\"service\":\"echo\"}", 5000);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(json_array_size(json_object_get(r, "instances")), N);
    ck_assert(json_is_true(json_object_get(r, "protected")));
    json_decref(r);
    /* ...in status... */
    st = agent_call(f.agent.sock, "{\"op\":\"status\"}", 5000);
    ck_assert_ptr_nonnull(st);
    {
        json_t *svcs = json_object_get(st, "services"), *v;
        size_t i;
        bool seen = false;
        json_array_foreach(svcs, i, v)
            if (!strcmp(json_string_value(json_object_get(v, "service")), "echo"))
                seen = json_is_true(json_object_get(json_object_get(v, "traffic"), "protected"));
        ck_assert_msg(seen, "status does not say echo is protected");
    }
    json_decref(st);
    /* ...and the xDS clients still call zone a. */
    r = py_calls(&f, 40, "held");
    no_failures(r, "held list");
    ck_assert_int_eq(zone_calls(&f, r, "a"), 40);
    json_decref(r);
    /* Past the hold, a fresh read confirms the drop: it applies. */
    while (now_ms() - t0 < 30000) {
        r = agent_call(f.agent.sock, "{\"op\":\"resolve\",\"service\":\"echo\"}", 5000);
        empty = r && json_array_size(json_object_get(r, "instances")) == 0;
        if (empty)
            ck_assert(!json_is_true(json_object_get(r, "protected")));
        json_decref(r);
        if (empty)
            break;
        sleep_ms(200);
    }
    ck_assert_msg(empty, "the held drop never applied");
    ck_assert(agentp_log_has(&f.agent, "holding the last list"));
    fx_down(&f);
}
END_TEST

/* A server of zone a failing every second call is ejected by the client's
 * outlier detection (gRPC A50, sent in the CDS cluster): after the first
 * intervals it gets almost no call. Without ejection, round robin would
 * give it half the calls and half of those would fail. */
START_TEST(test_outlier_ejected)
{
    struct fx f;
    json_t *r, *st;
    long long bad, good;

    half_failing = 0;
    fx_up(&f, "traffic:\n  services:\n    echo:\n      outlier_detection:\n"
              "        interval: 1s\n        base_ejection_time: 30s\n"
              "        max_ejection_percent: 50\n"
              "        failure_percentage: { threshold: 30, minimum_hosts: 2, "
              "request_volume: 10 }\n");
    r = wait_used(&f, 2, 2);
    json_decref(r);
    r = py_calls_every(&f, 600, 10, "outlier");
    bad = count_of(&f, r, 0);
    good = count_of(&f, r, 1);
    ck_assert_msg(good > 0 && bad * 4 < good,
                  "the half-failing server was not ejected: %lld good replies from it, %lld "
                  "from the healthy one",
                  bad, good);
    json_decref(r);
    /* Accepted, not NACKed, and shown in status. */
    st = agent_call(f.agent.sock, "{\"op\":\"status\"}", 5000);
    ck_assert_ptr_nonnull(st);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(st, "xds"), "nacks")), 0);
    json_decref(st);
    half_failing = -1;
    fx_down(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("traffic");
    TCase *tc = tcase_create("zones");

    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, test_zone_failover);
    tcase_add_test(tc, test_prefix_delete_is_held);
    tcase_add_test(tc, test_outlier_ejected);
    suite_add_tcase(s, tc);
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
