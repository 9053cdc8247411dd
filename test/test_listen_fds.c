/* Socket activation (agent/listen_fds.c): the variables read as
 * sd_listen_fds(3) says, and a restart that no client notices.
 *
 * The restart test runs the agent the way systemd runs it from
 * discovery-agent.socket, with Debian's systemd-socket-activate holding
 * agent.sock and xds.sock and passing them (LISTEN_FDS, LISTEN_FDNAMES) to
 * a shell that starts the agent again whenever it exits, each time with
 * LISTEN_PID set to the agent's own pid. While a python3-grpcio xDS client
 * calls xds:///echo and a libdiscovery watcher follows "echo", the agent is
 * stopped with SIGTERM and comes back: no connection to either socket may
 * be refused meanwhile, the xDS client must take an instance put right
 * after the restart within two seconds (the bound: it must not sit
 * in gRPC's reconnect backoff), and the watcher's list must end right. The
 * other delays are printed, not asserted. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agentproc.h"
#include "discovery/discovery.h"
#include "etcd_proc.h"
#include "listen_fds.c"
#include "proc.h"
#include "testutil.h"

#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "test/data"
#endif
#ifndef BUILD_DIR
#define BUILD_DIR "build"
#endif

#define PYTHON "/usr/bin/python3"
#define PY_CLIENT TEST_DATA_DIR "/../xds_client.py"
#define PY_ECHO TEST_DATA_DIR "/../xds_echo.py"
#define ACTIVATE "/usr/bin/systemd-socket-activate"

/* ---- the variables ---------------------------------------------------------- */

static int unix_listener(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);

    ck_assert_int_ge(fd, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    unlink(path);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    return fd;
}

/* Puts fds a and b at 3 and 4, as systemd would, keeping whatever was
 * there (Check's own descriptors) to put back. */
struct saved {
    int fd3, fd4;
};

static struct saved place(int a, int b)
{
    /* Out of the way first: a or b may be 3 or 4 themselves. */
    int ha = fcntl(a, F_DUPFD_CLOEXEC, 20), hb = fcntl(b, F_DUPFD_CLOEXEC, 20);
    struct saved s;

    close(a);
    close(b);
    s.fd3 = fcntl(3, F_DUPFD_CLOEXEC, 20);
    s.fd4 = fcntl(4, F_DUPFD_CLOEXEC, 20);
    ck_assert_int_eq(dup2(ha, 3), 3);
    ck_assert_int_eq(dup2(hb, 4), 4);
    close(ha);
    close(hb);
    return s;
}

static void restore(struct saved s)
{
    close(3);
    close(4);
    if (s.fd3 >= 0) {
        dup2(s.fd3, 3);
        close(s.fd3);
    }
    if (s.fd4 >= 0) {
        dup2(s.fd4, 4);
        close(s.fd4);
    }
}

static void set_env(const char *pid, const char *fds, const char *names)
{
    char own[32];

    snprintf(own, sizeof own, "%ld", (long)getpid());
    setenv("LISTEN_PID", pid ? pid : own, 1);
    setenv("LISTEN_FDS", fds, 1);
    if (names)
        setenv("LISTEN_FDNAMES", names, 1);
    else
        unsetenv("LISTEN_FDNAMES");
}

START_TEST(test_not_activated)
{
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    ck_assert_int_eq(listen_fds_init(), 0);
    ck_assert_int_eq(listen_fds_take("agent", "/nowhere"), -ENOENT);
    ck_assert_int_eq(listen_fds_close_rest(), 0);
}
END_TEST

/* Variables for another process (a shell between systemd and us) are
 * neither used nor removed. */
START_TEST(test_other_pid_ignored)
{
    set_env("1", "2", "agent:xds");
    ck_assert_int_eq(listen_fds_init(), 0);
    ck_assert_str_eq(getenv("LISTEN_FDS"), "2");
    ck_assert_int_eq(listen_fds_take("agent", NULL), -ENOENT);
}
END_TEST

START_TEST(test_malformed_refused)
{
    set_env(NULL, "two", NULL);
    ck_assert_int_eq(listen_fds_init(), -EINVAL);
    ck_assert_int_eq(listen_fds_take("agent", NULL), -ENOENT);
}
END_TEST

/* By bound path first, whatever the names say; then by name; each once;
 * taken descriptors are non-blocking and close-on-exec, the variables
 * gone; the rest is closed. */
START_TEST(test_take_by_path_then_name)
{
    char dir[] = "/tmp/test_listen_fds.XXXXXX", a[300], x[300];
    int fl;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(a, sizeof a, "%s/agent.sock", dir);
    snprintf(x, sizeof x, "%s/xds.sock", dir);
    /* fd 3 is xds.sock, fd 4 agent.sock, and both are named "agent": one
     * socket unit names all its sockets alike. */
    int fx = unix_listener(x), fa = unix_listener(a);
    struct saved s = place(fx, fa);
    set_env(NULL, "2", "agent:agent");
    int n = listen_fds_init();
    int got_a = listen_fds_take("agent", a);
    int again = listen_fds_take("agent", a);
    int got_x = listen_fds_take("xds", x);
    int fd_flags = fcntl(3, F_GETFD);
    fl = fcntl(4, F_GETFL);
    bool env_gone = !getenv("LISTEN_PID") && !getenv("LISTEN_FDS") && !getenv("LISTEN_FDNAMES");
    int rest = listen_fds_close_rest();
    restore(s);
    rm_rf(dir);

    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(got_a, 4);
    ck_assert_int_eq(again, -ENOENT);
    ck_assert_int_eq(got_x, 3);
    ck_assert(fd_flags & FD_CLOEXEC);
    ck_assert(fl & O_NONBLOCK);
    ck_assert(env_gone);
    ck_assert_int_eq(rest, 0);
}
END_TEST

/* A name alone finds a socket bound elsewhere; a passed descriptor that is
 * no listening unix socket is refused and closed; one nobody takes is
 * closed by close_rest. */
START_TEST(test_name_fallback_and_refusals)
{
    char dir[] = "/tmp/test_listen_fds.XXXXXX", p[300];
    int sv[2];

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(p, sizeof p, "%s/elsewhere.sock", dir);
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int fl = unix_listener(p);
    struct saved s = place(fl, sv[0]);
    set_env(NULL, "2", "xds:agent");
    int got_x = listen_fds_take("xds", "/not/this/path");
    int got_a = listen_fds_take("agent", "/nor/this");
    bool closed4 = fcntl(4, F_GETFD) < 0;
    int rest = listen_fds_close_rest();
    restore(s);
    close(sv[1]);
    rm_rf(dir);

    ck_assert_int_eq(got_x, 3);
    ck_assert_int_eq(got_a, -ENOTSOCK);
    ck_assert(closed4);
    ck_assert_int_eq(rest, 0);
}
END_TEST

/* ---- a restart no client notices ------------------------------------------- */

static long long real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
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

static long read_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;

    if (f) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    return pid;
}

static void put_echo(struct etcd_cluster *c, int port)
{
    char key[128], value[256], out[512];

    snprintf(key, sizeof key, "/micro/echo/127.0.0.1:%d", port);
    snprintf(value, sizeof value,
             "{\"Name\":\"echo\",\"Address\":\"127.0.0.1:%d\",\"Weight\":1,\"Group\":\"\"}", port);
    const char *args[] = {"put", key, value, NULL};
    ck_assert_int_eq(etcdctl(c, out, sizeof out, args), 0);
}

/* What the watcher was last told. */
struct watcher {
    char addrs[512]; /* "a,b" */
    int lists, gone;
};

static void on_list(struct disc_watch *w, const struct disc_list *list, int err, void *arg)
{
    struct watcher *wt = arg;
    size_t o = 0;

    (void)w;
    if (err) {
        wt->gone++;
        return;
    }
    wt->addrs[0] = '\0';
    for (size_t i = 0; i < list->n && o + 64 < sizeof wt->addrs; i++)
        o += (size_t)snprintf(wt->addrs + o, sizeof wt->addrs - o, "%s%s", i ? "," : "",
                              list->instances[i].address);
    wt->lists++;
}

/* A connect to path: 0, or the errno that refused it. */
static int try_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0), rc = 0;

    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS)
        rc = errno;
    close(fd);
    return rc;
}

START_TEST(test_restart_under_clients)
{
    struct etcd_cluster_opts co = {.members = 1};
    struct etcd_cluster *cluster;
    struct agentp ap;
    struct watcher wt = {0};
    struct disc_watch *w;
    disc_client *dc;
    char dir[512], xds[600], pidfile[600], stop[600], script[4096], boot[600], log[600];
    char echo_log[600], py_out[600], p0s[16], p1s[16];
    int p0 = free_port(), p1 = free_port(), refused = 0, tries = 0;

    if (access(ACTIVATE, X_OK) != 0) {
        fprintf(stderr, "test_listen_fds: %s missing (Debian's systemd): skipped\n", ACTIVATE);
        return;
    }
    cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(cluster);
    snprintf(dir, sizeof dir, "%s/agent", etcd_cluster_dir(cluster));
    mkdir(dir, 0755);
    snprintf(xds, sizeof xds, "%s/xds.sock", dir);
    snprintf(pidfile, sizeof pidfile, "%s/agent.pid", dir);
    snprintf(stop, sizeof stop, "%s/stop", dir);
    snprintf(boot, sizeof boot, "%s/xds-bootstrap.json", dir);
    snprintf(log, sizeof log, "%s/activate.log", dir);
    char extra[700];
    snprintf(extra, sizeof extra, "xds:\n  path: %s\n", xds);
    ck_assert_int_eq(agentp_config(&ap, dir, etcd_cluster_urls(cluster), 10, 1000, extra), 0);

    /* Echo servers on p0 and p1; p0 is registered now, p1 after the restart. */
    snprintf(echo_log, sizeof echo_log, "%s/echo.log", dir);
    snprintf(p0s, sizeof p0s, "%d", p0);
    snprintf(p1s, sizeof p1s, "%d", p1);
    const char *eargv[] = {PYTHON, PY_ECHO, p0s, p1s, NULL};
    struct proc *echo = proc_spawn(eargv, NULL, echo_log);
    ck_assert_ptr_nonnull(echo);
    for (int i = 0; i < 200 && !file_has(echo_log, "ready"); i++)
        sleep_ms(50);
    ck_assert(file_has(echo_log, "ready"));
    put_echo(cluster, p0);

    /* systemd-socket-activate holds both sockets and passes them on; the
     * shell restarts the agent until told to stop, with LISTEN_PID the
     * agent's own (sh -c's $$, kept by exec). */
    snprintf(script, sizeof script,
             "while [ ! -e '%s' ]; do /bin/sh -c 'echo $$ > \"%s\"; export LISTEN_PID=$$; "
             "exec \"%s\" -c \"%s\"' >> '%s' 2>&1; done",
             stop, pidfile, BUILD_DIR "/discovery-agent", ap.conf, ap.log);
    char l1[700], l2[700];
    snprintf(l1, sizeof l1, "--listen=%s", ap.sock);
    snprintf(l2, sizeof l2, "--listen=%s", xds);
    const char *aargv[] = {ACTIVATE, l1, l2, "--fdname=agent:xds", "/bin/sh", "-c", script, NULL};
    struct proc *act = proc_spawn(aargv, NULL, log);
    ck_assert_ptr_nonnull(act);
    for (int i = 0; i < 200 && access(xds, F_OK) != 0; i++)
        sleep_ms(20);

    /* The watcher's connection is the first: it starts the agent. */
    ck_assert_int_eq(disc_client_open(&dc, ap.sock), 0);
    ck_assert_int_eq(disc_watch(dc, "echo", NULL, on_list, &wt, &w), 0);
    char want0[64], want01[128];
    snprintf(want0, sizeof want0, "127.0.0.1:%d", p0);
    snprintf(want01, sizeof want01, "127.0.0.1:%d,127.0.0.1:%d", p0 < p1 ? p0 : p1,
             p0 < p1 ? p1 : p0);
    for (int i = 0; i < 500 && strcmp(wt.addrs, want0); i++)
        disc_client_wait(dc, 20);
    ck_assert_str_eq(wt.addrs, want0);
    ck_assert(agentp_log_has(&ap, "the socket systemd passed"));
    long pid1 = read_pid(pidfile);
    ck_assert_int_gt(pid1, 0);
    for (int i = 0; i < 200 && access(boot, F_OK) != 0; i++)
        sleep_ms(20);

    /* The xDS client: a call every 20 ms for 12 s. */
    char benv[700];
    snprintf(benv, sizeof benv, "GRPC_XDS_BOOTSTRAP=%s", boot);
    snprintf(py_out, sizeof py_out, "%s/client.out", dir);
    const char *penv[] = {benv, "GRPC_VERBOSITY=ERROR", NULL};
    const char *pargv[] = {PYTHON, PY_CLIENT,       "xds:///echo", "--duration",
                           "12",   "--interval-ms", "20",          NULL};
    struct proc *py = proc_spawn(pargv, penv, py_out);
    ck_assert_ptr_nonnull(py);
    for (long long until = real_ms() + 3000; real_ms() < until;)
        disc_client_wait(dc, 20);

    /* The restart: SIGTERM, then connect to both sockets as fast as we can
     * until the next agent is up; none may be refused. */
    long long t_term = real_ms();
    ck_assert_int_eq(kill((pid_t)pid1, SIGTERM), 0);
    long pid2 = pid1;
    while (pid2 == pid1 || pid2 <= 0) {
        int e1 = try_connect(ap.sock), e2 = try_connect(xds);
        refused += (e1 != 0) + (e2 != 0);
        tries += 2;
        if (e1 || e2)
            fprintf(stderr, "test_listen_fds: connect refused: %s / %s\n", strerror(e1),
                    strerror(e2));
        disc_client_wait(dc, 2);
        pid2 = read_pid(pidfile);
        ck_assert_msg(real_ms() - t_term < 30000, "no new agent after 30 s");
    }
    long long t_new = real_ms();
    /* The push right after the restart. */
    long long t_put = real_ms();
    put_echo(cluster, p1);
    for (int i = 0; i < 500 && strcmp(wt.addrs, want01); i++) {
        int e1 = try_connect(ap.sock), e2 = try_connect(xds);
        refused += (e1 != 0) + (e2 != 0);
        tries += 2;
        disc_client_wait(dc, 20);
    }
    long long t_list = real_ms();
    ck_assert_str_eq(wt.addrs, want01);

    /* The client's result: no failed call, and p1 served soon after its put. */
    int status = 0;
    ck_assert_int_eq(proc_wait(py, 30000, &status), 0);
    proc_free(py);
    json_t *r = NULL;
    FILE *fp = fopen(py_out, "r");
    char line[8192];
    ck_assert_ptr_nonnull(fp);
    while (fgets(line, sizeof line, fp))
        if (line[0] == '{') {
            json_decref(r);
            r = json_loads(line, 0, NULL);
        }
    fclose(fp);
    ck_assert_msg(r != NULL, "no result in %s", py_out);
    char a1[64];
    snprintf(a1, sizeof a1, "127.0.0.1:%d", p1);
    json_t *first = json_object_get(json_object_get(r, "first"), a1);
    long long failed = json_integer_value(json_object_get(r, "failed"));
    long long ok = json_integer_value(json_object_get(r, "ok"));
    fprintf(stderr,
            "test_listen_fds: agent down for %lld ms (SIGTERM to new pid); %d of %d connects "
            "refused; watcher: %d lists, told gone %d times, right list %lld ms after the put; "
            "xDS client: %lld ok, %lld failed, new instance served %lld ms after its put\n",
            t_new - t_term, refused, tries, wt.lists, wt.gone, t_list - t_put, ok, failed,
            first ? (long long)json_integer_value(first) - t_put : -1);
    ck_assert_int_eq(refused, 0);
    ck_assert_int_eq(failed, 0);
    ck_assert_msg(first != NULL, "the xDS client never called the instance put after the restart");
    ck_assert_int_lt(json_integer_value(first) - t_put, 2000);
    json_decref(r);

    /* Down: the loop stops, then the agent. */
    disc_client_close(dc);
    FILE *sf = fopen(stop, "w");
    if (sf)
        fclose(sf);
    kill((pid_t)read_pid(pidfile), SIGTERM);
    ck_assert_int_eq(proc_wait(act, 30000, &status), 0);
    proc_free(act);
    proc_free(echo);
    ck_assert_int_eq(agentp_log_has(&ap, "ERROR: AddressSanitizer"), 0);
    etcd_cluster_stop(cluster);
}
END_TEST

static Suite *listen_fds_suite(void)
{
    Suite *s = suite_create("listen_fds");
    TCase *tc = tcase_create("env");
    TCase *e2e = tcase_create("restart");

    tcase_add_test(tc, test_not_activated);
    tcase_add_test(tc, test_other_pid_ignored);
    tcase_add_test(tc, test_malformed_refused);
    tcase_add_test(tc, test_take_by_path_then_name);
    tcase_add_test(tc, test_name_fallback_and_refusals);
    suite_add_tcase(s, tc);
    tcase_set_timeout(e2e, 120);
    tcase_add_test(e2e, test_restart_under_clients);
    suite_add_tcase(s, e2e);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(listen_fds_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
