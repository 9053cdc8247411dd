/*
 * Proves the integration-test harness itself: child processes (proc), real
 * etcd clusters (etcd_proc) and the scripted HTTP responder (responder).
 * Every other integration test builds on these, so a failure here should be
 * fixed first.
 */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_proc.h"
#include "proc.h"
#include "responder.h"
#include "testutil.h"

/* ---- proc ------------------------------------------------------------- */

START_TEST(test_proc_run)
{
    static const char *const echo[] = {"echo", "hello", NULL};
    static const char *const exit3[] = {"sh", "-c", "exit 3", NULL};
    static const char *const killed[] = {"sh", "-c", "kill -9 $$", NULL};
    static const char *const missing[] = {"no-such-command-here", NULL};
    static const char *const slow[] = {"sleep", "5", NULL};
    static const char *const big[] = {"sh", "-c", "seq 1 100000", NULL};
    static const char *const env[] = {"sh", "-c", "printf %s \"$HARNESS_X\"", NULL};
    static const char *const add[] = {"HARNESS_X=replaced", NULL};
    char out[64];
    long long t0;

    ck_assert_int_eq(proc_run(out, sizeof(out), 5000, echo), 0);
    ck_assert_str_eq(out, "hello\n");
    ck_assert_int_eq(proc_run(out, sizeof(out), 5000, exit3), 3);
    ck_assert_int_eq(proc_run(out, sizeof(out), 5000, killed), 128 + SIGKILL);
    ck_assert_int_eq(proc_run(out, sizeof(out), 5000, missing), -1);
    /* Output past the buffer is drained, so the command is not blocked. */
    ck_assert_int_eq(proc_run(out, 8, 5000, big), 0);
    ck_assert_str_eq(out, "1\n2\n3\n4");
    setenv("HARNESS_X", "inherited", 1);
    ck_assert_int_eq(proc_run_env(out, sizeof(out), 5000, env, add), 0);
    ck_assert_str_eq(out, "replaced");
    t0 = now_ms();
    ck_assert_int_eq(proc_run(out, sizeof(out), 200, slow), -1);
    ck_assert_int_lt(now_ms() - t0, 2000);
}
END_TEST

START_TEST(test_proc_spawn)
{
    static const char *const talk[] = {
        "sh",
        "-c",
        "echo \"out $HARNESS_Y\"; echo err >&2",
        NULL,
    };
    static const char *const add[] = {"HARNESS_Y=yes", NULL};
    static const char *const sleeper[] = {"sleep", "30", NULL};
    char log[] = "/tmp/harness-proc-XXXXXX";
    char text[128] = "";
    struct proc *p;
    int fd, status = -1;
    ssize_t n;

    fd = mkstemp(log);
    ck_assert_int_ge(fd, 0);
    p = proc_spawn(talk, add, log);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(proc_wait(p, 5000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_int_eq(proc_pid(p), -1);
    n = read(fd, text, sizeof(text) - 1);
    ck_assert_int_gt(n, 0);
    text[n] = '\0';
    ck_assert_str_eq(text, "out yes\nerr\n");
    p = proc_free(p);
    close(fd);
    unlink(log);

    p = proc_spawn(sleeper, NULL, NULL);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(proc_wait(p, 100, &status), -ETIMEDOUT);
    ck_assert_int_eq(proc_signal(p, SIGSTOP), 0);
    ck_assert_int_eq(proc_wait_stopped(p, 2000), 0);
    ck_assert(proc_alive(p));
    ck_assert_int_eq(proc_signal(p, SIGCONT), 0);
    ck_assert_int_eq(proc_signal(p, SIGTERM), 0);
    ck_assert_int_eq(proc_wait(p, 5000, &status), 0);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    ck_assert_int_eq(proc_signal(p, SIGTERM), -ESRCH);
    proc_free(p);
}
END_TEST

/* ---- responder -------------------------------------------------------- */

/* Runs curl with any proxy from the environment turned off. */
static int curl(char *out, size_t outlen, const char *a1, const char *a2, const char *a3,
                const char *a4, const char *a5)
{
    const char *argv[16] = {"curl", "-s", "--noproxy", "*", "--max-time", "5"};
    const char *extra[] = {a1, a2, a3, a4, a5};
    int k = 6;
    size_t i;

    for (i = 0; i < sizeof(extra) / sizeof(extra[0]) && extra[i] != NULL; i++)
        argv[k++] = extra[i];
    argv[k] = NULL;
    return proc_run(out, outlen, 10000, argv);
}

static int connect_to(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static void send_str(int fd, const char *s)
{
    ck_assert_int_eq(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Reads until EOF, error or timeout; returns bytes read or -errno. */
static ssize_t recv_all(int fd, char *buf, size_t len, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    size_t got = 0;

    buf[0] = '\0';
    while (got < len - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - now_ms();
        ssize_t n;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            break;
        n = recv(fd, buf + got, len - 1 - got, 0);
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        got += (size_t)n;
        buf[got] = '\0';
    }
    return (ssize_t)got;
}

START_TEST(test_responder_curl)
{
    static const char *const replies[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
        "@SLOW:300:HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    };
    char out[256], url[128];
    struct responder *r = responder_start(replies, 3);
    char big[4096];
    long long t0;

    ck_assert_ptr_nonnull(r);
    ck_assert_int_gt(responder_port(r), 0);
    ck_assert_ptr_null(responder_last_request(r));
    snprintf(url, sizeof(url), "%s/a", responder_url(r));
    ck_assert_int_eq(curl(out, sizeof(out), url, NULL, NULL, NULL, NULL), 0);
    ck_assert_str_eq(out, "hello");
    ck_assert(strncmp(responder_last_request(r), "GET /a HTTP/1.1\r\n", 17) == 0);

    snprintf(url, sizeof(url), "%s/b", responder_url(r));
    ck_assert_int_eq(curl(out, sizeof(out), "-w", "%{http_code}", "-d", "x=1", url), 0);
    ck_assert_str_eq(out, "busy503");
    ck_assert(strncmp(responder_last_request(r), "POST /b ", 8) == 0);
    ck_assert_ptr_nonnull(strstr(responder_last_request(r), "\r\n\r\nx=1"));

    t0 = now_ms();
    ck_assert_int_eq(curl(out, sizeof(out), url, NULL, NULL, NULL, NULL), 0);
    ck_assert_str_eq(out, "ok");
    ck_assert_int_ge(now_ms() - t0, 300);

    /* Requests past the script get its last reply again. */
    ck_assert_int_eq(curl(out, sizeof(out), url, NULL, NULL, NULL, NULL), 0);
    ck_assert_str_eq(out, "ok");

    /* A big body with Expect: 100-continue must not cost curl's 1 s wait. */
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    t0 = now_ms();
    ck_assert_int_eq(curl(out, sizeof(out), "-H", "Expect: 100-continue", "-d", big, url), 0);
    ck_assert_str_eq(out, "ok");
    ck_assert_int_lt(now_ms() - t0, 300 + 900);
    ck_assert_int_eq(responder_requests(r), 5);
    ck_assert_ptr_nonnull(strstr(responder_request(r, 4), "bbbb"));
    ck_assert_uint_eq(strlen(strstr(responder_request(r, 4), "\r\n\r\n") + 4), sizeof(big) - 1);
    ck_assert_ptr_null(responder_request(r, 5));
    responder_stop(r);
}
END_TEST

START_TEST(test_responder_raw)
{
    static const char *const replies[] = {
        "@CLOSE",
        "@RESET",
        "@HANG",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    };
    static const char get[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    struct responder *r = responder_start(replies, 4);
    char buf[512], out[64];
    int fd, hang_fd;
    long long t0;

    ck_assert_ptr_nonnull(r);
    fd = connect_to(responder_port(r));
    send_str(fd, get);
    ck_assert_int_eq(recv_all(fd, buf, sizeof(buf), 3000), 0);
    close(fd);

    fd = connect_to(responder_port(r));
    send_str(fd, get);
    ck_assert_int_eq(recv_all(fd, buf, sizeof(buf), 3000), -ECONNRESET);
    close(fd);

    hang_fd = connect_to(responder_port(r));
    send_str(hang_fd, get);
    ck_assert_int_eq(responder_wait_requests(r, 3, 3000), 0);
    ck_assert_int_eq(recv_all(hang_fd, buf, sizeof(buf), 300), 0);

    /* The hanging connection does not hold up others. */
    ck_assert_int_eq(curl(out, sizeof(out), responder_url(r), NULL, NULL, NULL, NULL), 0);
    ck_assert_str_eq(out, "hi");

    /* Pipelined requests, the second with a chunked body, on one socket. */
    fd = connect_to(responder_port(r));
    send_str(fd, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                 "POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\nabc\r\n");
    ck_assert_int_eq(responder_wait_requests(r, 5, 3000), 0);
    send_str(fd, "2\r\nde\r\n0\r\n\r\n");
    ck_assert_int_eq(responder_wait_requests(r, 6, 3000), 0);
    ck_assert_ptr_nonnull(strstr(responder_last_request(r), "abc\r\n2\r\nde\r\n0\r\n\r\n"));
    ck_assert_int_gt(recv_all(fd, buf, sizeof(buf), 300), 0);
    ck_assert_str_eq(buf, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                          "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
    close(fd);

    /* Stopping wakes the hanging reply; its client then sees the close. */
    t0 = now_ms();
    responder_stop(r);
    ck_assert_int_lt(now_ms() - t0, 2000);
    ck_assert_int_eq(recv_all(hang_fd, buf, sizeof(buf), 1000), 0);
    close(hang_fd);
    responder_stop(NULL);
}
END_TEST

START_TEST(test_responder_bad_script)
{
    static const char *const bad[] = {"@SLOW:abc:x"};

    ck_assert_ptr_null(responder_start(bad, 1));
    ck_assert_ptr_null(responder_start(bad, 0));
}
END_TEST

/* ---- etcd ------------------------------------------------------------- */

/* etcdctl with up to four arguments; returns its exit status. */
static int ctl(struct etcd_cluster *c, char *out, size_t outlen, const char *a1, const char *a2,
               const char *a3, const char *a4)
{
    const char *const args[] = {a1, a2, a3, a4, NULL};

    return etcdctl(c, out, outlen, args);
}

static int ctl_as(struct etcd_cluster *c, const char *user, char *out, size_t outlen,
                  const char *a1, const char *a2, const char *a3)
{
    const char *const args[] = {a1, a2, a3, NULL};

    return etcdctl_as(c, user, out, outlen, args);
}

START_TEST(test_etcd_single)
{
    struct etcd_cluster_opts opts = {.members = 1};
    struct etcd_cluster *c;
    struct stat st;
    char out[4096], health[256], url[128];
    long long t0 = now_ms();

    c = etcd_cluster_start(&opts);
    ck_assert_ptr_nonnull(c);
    fprintf(stderr, "harness: 1 member up in %lld ms\n", now_ms() - t0);
    ck_assert_int_eq(etcd_cluster_size(c), 1);
    ck_assert(strncmp(etcd_member_url(c, 0), "http://127.0.0.1:", 17) == 0);
    ck_assert_str_eq(etcd_cluster_urls(c), etcd_member_url(c, 0));
    ck_assert_ptr_null(etcd_member_url(c, 1));
    ck_assert_int_eq(stat(etcd_cluster_dir(c), &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_ptr_null(etcd_cluster_ca_file(c));
    ck_assert_int_eq(etcd_cluster_leader(c), 0);

    ck_assert_int_eq(ctl(c, out, sizeof(out), "put", "k", "v", NULL), 0);
    ck_assert_str_eq(out, "OK\n");
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", "--print-value-only", NULL), 0);
    ck_assert_str_eq(out, "v\n");

    /* A graceful restart keeps the data. */
    ck_assert_int_eq(etcd_member_stop(c, 0), 0);
    ck_assert(!etcd_member_running(c, 0));
    ck_assert_int_eq(etcd_member_start(c, 0), 0);
    ck_assert_int_eq(etcd_member_start(c, 0), -EBUSY);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", "--print-value-only", NULL), 0);
    ck_assert_str_eq(out, "v\n");

    /* A frozen member accepts connections but never answers. */
    ck_assert_int_eq(etcd_member_freeze(c, 0), 0);
    snprintf(url, sizeof(url), "%s/health", etcd_member_url(c, 0));
    ck_assert_int_eq(curl(health, sizeof(health), "--max-time", "1", url, NULL, NULL), 28);
    ck_assert_int_eq(etcd_member_thaw(c, 0), 0);
    ck_assert_int_eq(etcd_cluster_wait_healthy(c, 5000), 0);
    ck_assert_int_eq(curl(health, sizeof(health), url, NULL, NULL, NULL, NULL), 0);
    ck_assert_ptr_nonnull(strstr(health, "\"health\":\"true\""));

    /* A wipe is a new cluster: the key and the history are gone. */
    ck_assert_int_eq(ctl(c, out, sizeof(out), "put", "k2", "v2", NULL), 0);
    ck_assert_int_eq(etcd_member_wipe(c, 0), 0);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", "--print-value-only", NULL), 0);
    ck_assert_str_eq(out, "");
    ck_assert_int_eq(ctl(c, out, sizeof(out), "endpoint", "status", "-w", "json"), 0);
    ck_assert_ptr_nonnull(strstr(out, "\"revision\":1,"));

    ck_assert_int_eq(etcd_member_kill(c, 0), 0);
    ck_assert_int_eq(etcd_member_kill(c, 0), -ESRCH);
    etcd_cluster_stop(c);
    etcd_cluster_stop(NULL);
}
END_TEST

START_TEST(test_etcd_three)
{
    struct etcd_cluster_opts opts = {.members = 3};
    struct etcd_cluster *c;
    char out[4096];
    long long t0 = now_ms();
    int leader, next, i;

    c = etcd_cluster_start(&opts);
    ck_assert_ptr_nonnull(c);
    fprintf(stderr, "harness: 3 members up in %lld ms\n", now_ms() - t0);
    ck_assert_int_eq(etcd_cluster_size(c), 3);
    ck_assert_int_eq((int)strlen(etcd_cluster_urls(c)),
                     (int)(strlen(etcd_member_url(c, 0)) + strlen(etcd_member_url(c, 1)) +
                           strlen(etcd_member_url(c, 2)) + 2));
    ck_assert_int_eq(ctl(c, out, sizeof(out), "put", "k", "v", NULL), 0);

    leader = etcd_cluster_leader(c);
    ck_assert_int_ge(leader, 0);
    ck_assert_int_eq(etcd_member_kill(c, leader), 0);
    t0 = now_ms();
    next = etcd_cluster_leader(c);
    fprintf(stderr, "harness: new leader %d (was %d) after %lld ms\n", next, leader, now_ms() - t0);
    ck_assert_int_ge(next, 0);
    ck_assert_int_ne(next, leader);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "put", "k", "v2", NULL), 0);

    /* The killed member rejoins with its old data and catches up. */
    t0 = now_ms();
    ck_assert_int_eq(etcd_member_start(c, leader), 0);
    ck_assert_int_eq(etcd_cluster_wait_healthy(c, 10000), 0);
    fprintf(stderr, "harness: old leader rejoined in %lld ms\n", now_ms() - t0);
    for (i = 0; i < 3; i++)
        ck_assert(etcd_member_running(c, i));
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", "--print-value-only", NULL), 0);
    ck_assert_str_eq(out, "v2\n");

    /* Freezing the leader also makes the others elect a new one. */
    leader = etcd_cluster_leader(c);
    ck_assert_int_ge(leader, 0);
    ck_assert_int_eq(etcd_member_freeze(c, leader), 0);
    next = etcd_cluster_leader(c);
    ck_assert_int_ge(next, 0);
    ck_assert_int_ne(next, leader);
    ck_assert_int_eq(etcd_member_thaw(c, leader), 0);
    ck_assert_int_eq(etcd_cluster_wait_healthy(c, 10000), 0);
    etcd_cluster_stop(c);
}
END_TEST

START_TEST(test_etcd_auth)
{
    struct etcd_cluster_opts opts = {.members = 1, .auth = 1};
    struct etcd_cluster *c;
    char out[4096];

    c = etcd_cluster_start(&opts);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "put", "k", "v", NULL), 0);
    ck_assert_int_ne(ctl_as(c, NULL, out, sizeof(out), "put", "k", "x"), 0);
    ck_assert_int_ne(ctl_as(c, "root:wrong", out, sizeof(out), "get", "k", NULL), 0);
    ck_assert_int_eq(ctl_as(c, "root:rootpw", out, sizeof(out), "get", "k", "--print-value-only"),
                     0);
    ck_assert_str_eq(out, "v\n");
    ck_assert_int_eq(ctl(c, out, sizeof(out), "user", "list", NULL, NULL), 0);
    ck_assert_str_eq(out, "root\n");

    /* After a wipe the same credentials work, and auth is on again. */
    ck_assert_int_eq(etcd_member_wipe(c, 0), 0);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", NULL, NULL), 0);
    ck_assert_str_eq(out, "");
    ck_assert_int_ne(ctl_as(c, NULL, out, sizeof(out), "put", "k", "x"), 0);
    etcd_cluster_stop(c);
}
END_TEST

START_TEST(test_etcd_tls)
{
    struct etcd_cluster_opts opts = {.members = 1, .tls = 1};
    struct etcd_cluster *c;
    char out[4096], url[128];
    long long t0 = now_ms();

    c = etcd_cluster_start(&opts);
    ck_assert_ptr_nonnull(c);
    fprintf(stderr, "harness: tls member up in %lld ms (with certificates)\n", now_ms() - t0);
    ck_assert(strncmp(etcd_member_url(c, 0), "https://127.0.0.1:", 18) == 0);
    ck_assert_ptr_nonnull(etcd_cluster_ca_file(c));
    ck_assert_int_eq(access(etcd_cluster_client_cert(c), R_OK), 0);
    ck_assert_int_eq(access(etcd_cluster_client_key(c), R_OK), 0);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "put", "k", "v", NULL), 0);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", "--print-value-only", NULL), 0);
    ck_assert_str_eq(out, "v\n");

    snprintf(url, sizeof(url), "%s/health", etcd_member_url(c, 0));
    {
        const char *const with[] = {
            "curl",       "-s",
            "--noproxy",  "*",
            "--max-time", "5",
            "--cacert",   etcd_cluster_ca_file(c),
            "--cert",     etcd_cluster_client_cert(c),
            "--key",      etcd_cluster_client_key(c),
            url,          NULL,
        };
        const char *const without[] = {
            "curl", "-s", "--noproxy", "*", "--max-time", "5", "--cacert", etcd_cluster_ca_file(c),
            url,    NULL,
        };

        ck_assert_int_eq(proc_run(out, sizeof(out), 10000, with), 0);
        ck_assert_ptr_nonnull(strstr(out, "\"health\":\"true\""));
        /* Client certificates are required. */
        ck_assert_int_ne(proc_run(out, sizeof(out), 10000, without), 0);
    }
    ck_assert_int_eq(etcd_member_stop(c, 0), 0);
    ck_assert_int_eq(etcd_member_start(c, 0), 0);
    ck_assert_int_eq(ctl(c, out, sizeof(out), "get", "k", "--print-value-only", NULL), 0);
    ck_assert_str_eq(out, "v\n");
    etcd_cluster_stop(c);
}
END_TEST

START_TEST(test_etcd_bad_opts)
{
    struct etcd_cluster_opts opts = {.members = 2};

    ck_assert_ptr_null(etcd_cluster_start(&opts));
}
END_TEST

static Suite *harness_suite(void)
{
    Suite *s = suite_create("harness");
    TCase *tp = tcase_create("proc");
    TCase *tr = tcase_create("responder");
    TCase *te = tcase_create("etcd");

    tcase_set_timeout(tp, 30);
    tcase_add_test(tp, test_proc_run);
    tcase_add_test(tp, test_proc_spawn);
    suite_add_tcase(s, tp);

    tcase_set_timeout(tr, 30);
    tcase_add_test(tr, test_responder_curl);
    tcase_add_test(tr, test_responder_raw);
    tcase_add_test(tr, test_responder_bad_script);
    suite_add_tcase(s, tr);

    /* Clusters start inside each test: Check forks one process per test. */
    tcase_set_timeout(te, 60);
    tcase_add_test(te, test_etcd_single);
    tcase_add_test(te, test_etcd_three);
    tcase_add_test(te, test_etcd_auth);
    tcase_add_test(te, test_etcd_tls);
    tcase_add_test(te, test_etcd_bad_opts);
    suite_add_tcase(s, te);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(harness_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
