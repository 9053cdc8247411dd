/* Tests of agentctl (agent/agentctl.c) as users and scripts run it: the
 * real binary against a real agent on a real etcd, checking its output and
 * its exit status (0 done, 1 refused or failed, 2 usage, 3 no agent). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_proc.h"
#include "proc.h"
#include "testutil.h"

#define AGENTCTL BUILD_DIR "/agentctl"

/* ---- fixture: etcd, an agent, and a place for agentctl's stderr --------- */

struct fx {
    struct etcd_cluster *cluster;
    struct proc *agent;
    char dir[256], conf[512], sock[512], log[512], err[512];
};

static void fx_start(struct fx *f)
{
    struct etcd_cluster_opts co = {.members = 1};
    const char *argv[] = {BUILD_DIR "/discovery-agent", "-c", f->conf, NULL};
    long long until;
    FILE *cf;

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    snprintf(f->dir, sizeof f->dir, "%s", etcd_cluster_dir(f->cluster));
    snprintf(f->conf, sizeof f->conf, "%s/agent.yaml", f->dir);
    snprintf(f->sock, sizeof f->sock, "%s/agent.sock", f->dir);
    snprintf(f->log, sizeof f->log, "%s/agent.log", f->dir);
    snprintf(f->err, sizeof f->err, "%s/agentctl.err", f->dir);
    cf = fopen(f->conf, "w");
    ck_assert_ptr_nonnull(cf);
    fprintf(cf,
            "etcd:\n  endpoints: [%s]\n  timeout: 2s\n"
            "session:\n  ttl: 2s\n"
            "socket:\n  path: %s\n"
            "cache:\n  dir: %s/cache\n"
            "log:\n  level: debug\n"
            "http:\n  enabled: false\n"
            "services:\n  - name: cfg\n    address: 127.0.0.1:9300\n    weight: 4\n"
            "    group: G\n    metadata: { version: \"1.0\" }\n"
            "dns:\n  enabled: false\n",
            etcd_member_url(f->cluster, 0), f->sock, f->dir);
    fclose(cf);
    f->agent = proc_spawn(argv, NULL, f->log);
    ck_assert_ptr_nonnull(f->agent);
    /* Ready once the socket is there and the configured instance is in etcd. */
    until = now_ms() + 10000;
    for (;;) {
        char out[512];
        const char *args[] = {"get", "--print-value-only", "/micro/cfg/127.0.0.1:9300", NULL};
        if (access(f->sock, F_OK) == 0 && etcdctl(f->cluster, out, sizeof out, args) == 0 && out[0])
            break;
        ck_assert_msg(proc_alive(f->agent), "the agent exited; see %s", f->log);
        ck_assert_msg(now_ms() < until, "the agent is not ready after 10 s; see %s", f->log);
        sleep_ms(50);
    }
}

static void fx_stop(struct fx *f)
{
    if (f->agent)
        proc_stop(f->agent, SIGTERM, 5000);
    proc_free(f->agent);
    etcd_cluster_stop(f->cluster);
}

/* Runs agentctl with args (NULL-terminated, without the program name),
 * with -s SOCK first when sock is set; stdout into out, stderr into
 * errbuf. Returns the exit status. */
static int run_env(const char *sock, const char *const env[], char *out, size_t outlen,
                   char *errbuf, size_t errlen, const char *const args[])
{
    const char *argv[32];
    char errpath[] = "/tmp/test_agentctl.err.XXXXXX";
    int n = 0, st, fd;
    ssize_t got;

    argv[n++] = AGENTCTL;
    if (sock) {
        argv[n++] = "-s";
        argv[n++] = sock;
    }
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    fd = mkstemp(errpath);
    ck_assert_int_ge(fd, 0);
    close(fd);
    st = proc_run_full(out, outlen, 20000, argv, env, errpath);
    fd = open(errpath, O_RDONLY);
    got = fd >= 0 ? read(fd, errbuf, errlen - 1) : -1;
    errbuf[got > 0 ? got : 0] = '\0';
    if (fd >= 0)
        close(fd);
    unlink(errpath);
    return st;
}

static char OUT[1 << 16], ERR[1 << 14];

#define RUN(sock, ...)                                                                             \
    run_env((sock), NULL, OUT, sizeof OUT, ERR, sizeof ERR,                                        \
            (const char *const[]){__VA_ARGS__, NULL})

static void etcd_get(struct fx *f, const char *key, char *out, size_t len)
{
    const char *args[] = {"get", "--print-value-only", key, NULL};

    ck_assert_int_eq(etcdctl(f->cluster, out, len, args), 0);
    out[strcspn(out, "\n")] = '\0';
}

/* Runs resolve NAME --json until its list has n instances, at most 5 s:
 * the agent's cache may answer from a revision older than a write that
 * was just confirmed. Returns the last list (new reference). */
static json_t *resolve_until(struct fx *f, const char *name, size_t n)
{
    long long until = now_ms() + 5000;

    for (;;) {
        json_t *j;
        ck_assert_int_eq(RUN(f->sock, "resolve", name, "--json"), 0);
        j = json_loads(OUT, 0, NULL);
        ck_assert_ptr_nonnull(j);
        if (json_array_size(json_object_get(j, "instances")) == n || now_ms() > until)
            return j;
        json_decref(j);
        sleep_ms(50);
    }
}

/* ---- usage -------------------------------------------------------------- */

START_TEST(test_usage_errors)
{
    const char *nosock = "/nonexistent/agent.sock";

    /* Usage errors are found before any connection is tried. */
    ck_assert_int_eq(RUN(nosock, "frobnicate"), 2);
    ck_assert_ptr_nonnull(strstr(ERR, "unknown command 'frobnicate'"));
    ck_assert_int_eq(
        run_env(NULL, NULL, OUT, sizeof OUT, ERR, sizeof ERR, (const char *const[]){NULL}), 2);
    ck_assert_ptr_nonnull(strstr(ERR, "a command is required"));
    ck_assert_int_eq(RUN(nosock, "resolve"), 2);
    ck_assert_ptr_nonnull(strstr(ERR, "usage: agentctl [-s SOCKET] resolve NAME"));
    ck_assert_int_eq(RUN(nosock, "resolve", "a", "b"), 2);
    ck_assert_int_eq(RUN(nosock, "resolve", "a", "--frob"), 2);
    ck_assert_ptr_nonnull(strstr(ERR, "unknown option '--frob'"));
    ck_assert_int_eq(RUN(nosock, "resolve", "a", "--group"), 2);
    ck_assert_int_eq(RUN(nosock, "resolve", "a", "--weight", "3"), 2);
    ck_assert_int_eq(RUN(nosock, "status", "extra"), 2);
    ck_assert_int_eq(RUN(nosock, "status", "--json=yes"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a", "1.2.3.4:5", "--weight", "x"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a", "1.2.3.4:5", "--weight", "0"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a", "1.2.3.4:5", "--weight", "99999999999"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a", "1.2.3.4:5", "--meta", "novalue"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a", "1.2.3.4:5", "--meta", "=v"), 2);
    ck_assert_int_eq(RUN(nosock, "register", "a", "1.2.3.4:5", "--meta", "k=1", "--meta", "k=2"),
                     2);
    ck_assert_int_eq(RUN(nosock, "deregister", "a"), 2);
    ck_assert_int_eq(
        run_env(NULL, NULL, OUT, sizeof OUT, ERR, sizeof ERR, (const char *const[]){"-s", NULL}),
        2);
    ck_assert_int_eq(run_env(NULL, NULL, OUT, sizeof OUT, ERR, sizeof ERR,
                             (const char *const[]){"--bogus", "status", NULL}),
                     2);
    ck_assert_int_eq(run_env(NULL, NULL, OUT, sizeof OUT, ERR, sizeof ERR,
                             (const char *const[]){"--timeout", "soon", "status", NULL}),
                     2);
    /* Nothing on stdout for a usage error: scripts read stdout. */
    ck_assert_str_eq(OUT, "");
}
END_TEST

START_TEST(test_help)
{
    static const char *const cmds[] = {"status", "services", "resolve",
                                       "watch",  "register", "deregister"};

    ck_assert_int_eq(RUN(NULL, "--help"), 0);
    ck_assert_ptr_nonnull(strstr(OUT, "usage: agentctl"));
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        ck_assert_ptr_nonnull(strstr(OUT, cmds[i]));
    ck_assert_ptr_nonnull(strstr(OUT, "Exit status"));
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char want[64];
        ck_assert_int_eq(RUN("/nonexistent/agent.sock", cmds[i], "--help"), 0);
        snprintf(want, sizeof want, "usage: agentctl [-s SOCKET] %s", cmds[i]);
        ck_assert_msg(strstr(OUT, want), "%s --help: %s", cmds[i], OUT);
    }
    ck_assert_int_eq(RUN(NULL, "help", "watch"), 0);
    ck_assert_ptr_nonnull(strstr(OUT, "watch NAME"));
    ck_assert_int_eq(RUN(NULL, "--version"), 0);
    ck_assert_ptr_nonnull(strstr(OUT, "agentctl "));
}
END_TEST

/* ---- no agent ----------------------------------------------------------- */

START_TEST(test_no_agent)
{
    char dir[] = "/tmp/test_agentctl.XXXXXX", sock[128], env[160];
    const char *commands[][4] = {
        {"status", NULL},
        {"services", "--json", NULL},
        {"resolve", "x", NULL},
        {"watch", "x", NULL},
        {"register", "x", "1.2.3.4:5", NULL},
        {"deregister", "x", "1.2.3.4:5", NULL},
    };

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sock, sizeof sock, "%s/agent.sock", dir);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const char *args[8];
        size_t n = 0;
        for (; commands[i][n]; n++)
            args[n] = commands[i][n];
        args[n] = NULL;
        ck_assert_int_eq(run_env(sock, NULL, OUT, sizeof OUT, ERR, sizeof ERR, args), 3);
        ck_assert_msg(strstr(ERR, "no agent at ") && strstr(ERR, sock) &&
                          strstr(ERR, "is discovery-agent running?") &&
                          strstr(ERR, "No such file or directory"),
                      "%s: %s", commands[i][0], ERR);
    }
    /* $DISCOVERY_SOCKET is used without -s... */
    snprintf(env, sizeof env, "DISCOVERY_SOCKET=%s", sock);
    ck_assert_int_eq(run_env(NULL, (const char *const[]){env, NULL}, OUT, sizeof OUT, ERR,
                             sizeof ERR, (const char *const[]){"status", NULL}),
                     3);
    ck_assert_ptr_nonnull(strstr(ERR, sock));
    /* ...and the default without either. An agent may run there on this
     * machine, or have left its socket file behind: then it answers (0) or
     * is named as absent (3). */
    int rc = run_env(NULL, (const char *const[]){"DISCOVERY_SOCKET=", NULL}, OUT, sizeof OUT, ERR,
                     sizeof ERR, (const char *const[]){"status", NULL});
    ck_assert_msg(rc == 0 || (rc == 3 && strstr(ERR, "/run/discovery-agent/agent.sock")),
                  "default socket: exit %d: %s", rc, ERR);
    /* A file that is not a socket is no agent either. */
    {
        FILE *f = fopen(sock, "w");
        ck_assert_ptr_nonnull(f);
        fclose(f);
        ck_assert_int_eq(RUN(sock, "status"), 3);
        unlink(sock);
    }
    rmdir(dir);
}
END_TEST

/* ---- against an agent --------------------------------------------------- */

START_TEST(test_register_resolve_deregister)
{
    struct fx f;
    char value[1024], want[1024];
    json_t *j;
    long long rev;

    fx_start(&f);
    ck_assert_int_eq(RUN(f.sock, "register", "svc", "127.0.0.1:9200", "--weight", "7", "--group",
                         "A", "--meta", "version=1.2", "--meta=zone=eu"),
                     0);
    ck_assert_ptr_nonnull(strstr(OUT, "registered svc 127.0.0.1:9200"));
    etcd_get(&f, "/micro/svc/127.0.0.1:9200", value, sizeof value);
    j = json_loads(value, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "Weight")), 7);
    ck_assert_str_eq(json_string_value(json_object_get(j, "Group")), "A");
    json_decref(j);

    /* resolve --json: exactly one object of exactly this shape. */
    j = resolve_until(&f, "svc", 1);
    rev = json_integer_value(json_object_get(j, "revision"));
    ck_assert_int_gt(rev, 0);
    json_decref(j);
    snprintf(want, sizeof want,
             "{\"service\":\"svc\",\"revision\":%lld,\"stale\":false,\"instances\":[{\"name\":"
             "\"svc\",\"address\":\"127.0.0.1:9200\",\"weight\":7,\"group\":\"A\",\"metadata\":{"
             "\"version\":\"1.2\",\"zone\":\"eu\"}}]}\n",
             rev);
    ck_assert_str_eq(OUT, want);

    /* A second instance, sorted by address; a group filter. */
    ck_assert_int_eq(RUN(f.sock, "register", "svc", "127.0.0.1:10000"), 0);
    json_decref(resolve_until(&f, "svc", 2));
    ck_assert_int_eq(RUN(f.sock, "resolve", "--json", "svc"), 0); /* options anywhere */
    j = json_loads(OUT, 0, NULL);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "instances")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(j, "instances"), 0), "address")),
                     "127.0.0.1:10000");
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_array_get(json_object_get(j, "instances"), 0), "weight")),
                     1);
    json_decref(j);
    ck_assert_int_eq(RUN(f.sock, "resolve", "svc", "--group", "B", "--json"), 0);
    j = json_loads(OUT, 0, NULL);
    ck_assert_uint_eq(json_array_size(json_object_get(j, "instances")), 0);
    json_decref(j);

    /* The human table. */
    ck_assert_int_eq(RUN(f.sock, "resolve", "svc"), 0);
    ck_assert_ptr_nonnull(strstr(OUT, "ADDRESS          ZONE  WEIGHT  GROUP  METADATA\n"));
    ck_assert_ptr_nonnull(
        strstr(OUT, "127.0.0.1:9200   eu    7       A      version=1.2,zone=eu\n"));
    ck_assert_ptr_nonnull(strstr(OUT, "127.0.0.1:10000  ?     1       -      -\n"));

    /* deregister: gone from etcd; again: refused (exit 1). */
    ck_assert_int_eq(RUN(f.sock, "deregister", "svc", "127.0.0.1:9200"), 0);
    etcd_get(&f, "/micro/svc/127.0.0.1:9200", value, sizeof value);
    ck_assert_str_eq(value, "");
    ck_assert_int_eq(RUN(f.sock, "deregister", "svc", "127.0.0.1:9200"), 1);
    ck_assert_ptr_nonnull(strstr(ERR, "not_found"));

    /* The agent's own instance cannot be taken over or removed. */
    ck_assert_int_eq(RUN(f.sock, "register", "cfg", "127.0.0.1:9300"), 1);
    ck_assert_ptr_nonnull(strstr(ERR, "conflict"));
    ck_assert_int_eq(RUN(f.sock, "deregister", "cfg", "127.0.0.1:9300"), 1);
    ck_assert_ptr_nonnull(strstr(ERR, "forbidden"));
    /* An address the agent would refuse: the library applies the agent's
     * rules (validate.h) itself, so it is a usage error with the reason. */
    ck_assert_int_eq(RUN(f.sock, "register", "svc", "host:99999"), 2);
    ck_assert_ptr_nonnull(strstr(ERR, "bad address 'host:99999': the port must be 1..65535"));
    ck_assert_int_eq(RUN(f.sock, "register", "svc", "1.2.3.4:05"), 2);
    ck_assert_ptr_nonnull(strstr(ERR, "write the port without leading zeros"));

    /* -s wins over $DISCOVERY_SOCKET. */
    ck_assert_int_eq(run_env(f.sock, (const char *const[]){"DISCOVERY_SOCKET=/nonexistent", NULL},
                             OUT, sizeof OUT, ERR, sizeof ERR,
                             (const char *const[]){"resolve", "cfg", NULL}),
                     0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_status_and_services)
{
    struct fx f;
    json_t *j, *e;
    size_t i;
    bool found = false;

    fx_start(&f);
    ck_assert_int_eq(RUN(f.sock, "resolve", "cfg"), 0); /* now watched */
    ck_assert_int_eq(RUN(f.sock, "status"), 0);
    ck_assert_ptr_nonnull(strstr(OUT, etcd_member_url(f.cluster, 0)));
    ck_assert_ptr_nonnull(strstr(OUT, "leader "));
    ck_assert_ptr_nonnull(strstr(OUT, "remaining"));
    ck_assert_ptr_nonnull(strstr(OUT, "registrations (1)"));
    ck_assert_ptr_nonnull(strstr(OUT, "127.0.0.1:9300"));
    ck_assert_ptr_nonnull(strstr(OUT, "registered"));
    ck_assert_ptr_nonnull(strstr(OUT, "watched services"));
    ck_assert_ptr_nonnull(strstr(OUT, "live"));
    ck_assert_ptr_nonnull(strstr(OUT, "skipped"));
    ck_assert_ptr_nonnull(strstr(OUT, "clients"));

    ck_assert_int_eq(RUN(f.sock, "status", "--json"), 0);
    j = json_loads(OUT, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_ptr_null(json_object_get(j, "id"));
    ck_assert_ptr_null(json_object_get(j, "ok"));
    ck_assert(json_is_object(json_object_get(j, "etcd")));
    ck_assert(json_is_object(json_object_get(j, "lease")));
    json_decref(j);

    ck_assert_int_eq(RUN(f.sock, "services"), 0);
    ck_assert_ptr_nonnull(strstr(OUT, "NAME  INSTANCES  WATCHED  REGISTERED\n"));
    ck_assert_ptr_nonnull(strstr(OUT, "cfg   1          yes      yes\n"));
    ck_assert_int_eq(RUN(f.sock, "services", "--json"), 0);
    j = json_loads(OUT, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_ptr_null(json_object_get(j, "ok"));
    json_array_foreach(json_object_get(j, "services"), i, e) {
        if (!strcmp(json_string_value(json_object_get(e, "name")), "cfg")) {
            found = true;
            ck_assert_int_eq(json_integer_value(json_object_get(e, "instances")), 1);
        }
    }
    ck_assert(found);
    json_decref(j);
    fx_stop(&f);
}
END_TEST

/* Reads a file into buf; its length. */
static size_t slurp(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, len - 1) : -1;

    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

/* Waits until the file holds text, at most ms. */
static bool wait_text(const char *path, const char *text, int ms)
{
    static char buf[1 << 16];
    long long until = now_ms() + ms;

    for (;;) {
        slurp(path, buf, sizeof buf);
        if (strstr(buf, text))
            return true;
        if (now_ms() > until)
            return false;
        sleep_ms(50);
    }
}

START_TEST(test_watch)
{
    struct fx f;
    char out[512], buf[1 << 16], *line, *nl;
    struct proc *w, *wj;
    int status, lines = 0;
    const char *human[] = {AGENTCTL, "-s", NULL, "watch", "svc", NULL};
    const char *json[] = {AGENTCTL, "-s", NULL, "watch", "svc", "--json", NULL};
    char hpath[600], jpath[600];

    fx_start(&f);
    human[2] = json[2] = f.sock;
    snprintf(hpath, sizeof hpath, "%s/watch.out", f.dir);
    snprintf(jpath, sizeof jpath, "%s/watch-json.out", f.dir);
    ck_assert_int_eq(
        RUN(f.sock, "register", "svc", "127.0.0.1:9200", "--weight", "7", "--group", "A"), 0);
    w = proc_spawn(human, NULL, hpath);
    wj = proc_spawn(json, NULL, jpath);
    ck_assert_ptr_nonnull(w);
    ck_assert_ptr_nonnull(wj);

    /* The first list: each instance joins. */
    ck_assert(wait_text(hpath, "+ 127.0.0.1:9200 joined (weight 7, group A)\n", 5000));
    ck_assert(wait_text(jpath, "\"address\":\"127.0.0.1:9200\"", 5000));

    /* Another writer's instance joins, a weight changes, one leaves. */
    {
        const char *args[] = {"put", "/micro/svc/10.0.0.7:8082",
                              "{\"Name\":\"svc\",\"Address\":\"10.0.0.7:8082\",\"Weight\":1,"
                              "\"Group\":\"A\"}",
                              NULL};
        ck_assert_int_eq(etcdctl(f.cluster, out, sizeof out, args), 0);
    }
    ck_assert(wait_text(hpath, "+ 10.0.0.7:8082 joined (weight 1, group A)\n", 5000));
    ck_assert_int_eq(
        RUN(f.sock, "register", "svc", "127.0.0.1:9200", "--weight", "5", "--group", "A"), 0);
    ck_assert(wait_text(hpath, "~ 127.0.0.1:9200 weight 7 -> 5\n", 5000));
    ck_assert_int_eq(RUN(f.sock, "deregister", "svc", "127.0.0.1:9200"), 0);
    ck_assert(wait_text(hpath, "- 127.0.0.1:9200 left\n", 5000));
    ck_assert(wait_text(jpath,
                        "\"instances\":[{\"name\":\"svc\",\"address\":\"10.0.0.7:8082\","
                        "\"weight\":1,\"group\":\"A\",\"metadata\":{}}]}\n",
                        5000));

    /* Lines carry the revision and the local time. */
    slurp(hpath, buf, sizeof buf);
    ck_assert_ptr_nonnull(strstr(buf, " rev "));

    /* Every --json line is one list object of the fixed shape. */
    slurp(jpath, buf, sizeof buf);
    for (line = buf; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        json_t *j;
        const char *k;
        json_t *v;
        const char *keys[] = {"service", "revision", "stale", "instances"};
        size_t n = 0;

        *nl = '\0';
        j = json_loads(line, 0, NULL);
        ck_assert_msg(j != NULL, "not JSON: %s", line);
        json_object_foreach(j, k, v) {
            ck_assert_uint_lt(n, 4);
            ck_assert_str_eq(k, keys[n++]);
        }
        ck_assert_uint_eq(n, 4);
        json_decref(j);
        lines++;
    }
    ck_assert_int_ge(lines, 4);

    /* Ctrl-C ends it with 0. */
    ck_assert_int_eq(proc_signal(w, SIGINT), 0);
    ck_assert_int_eq(proc_signal(wj, SIGINT), 0);
    ck_assert_int_eq(proc_wait(w, 5000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ck_assert_int_eq(proc_wait(wj, 5000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    proc_free(w);
    proc_free(wj);
    fx_stop(&f);
}
END_TEST

/* The agent restarts under a running watch: it says so and goes on. */
START_TEST(test_watch_survives_restart)
{
    struct fx f;
    char path[600];
    const char *argv[] = {AGENTCTL, "-s", NULL, "watch", "cfg", NULL};
    const char *agent[] = {BUILD_DIR "/discovery-agent", "-c", NULL, NULL};
    struct proc *w;
    int status;

    fx_start(&f);
    argv[2] = f.sock;
    agent[2] = f.conf;
    snprintf(path, sizeof path, "%s/watch.out", f.dir);
    w = proc_spawn(argv, NULL, path);
    ck_assert(wait_text(path, "+ 127.0.0.1:9300 joined (weight 4, group G)\n", 5000));
    ck_assert_int_eq(proc_stop(f.agent, SIGKILL, 1000) >= 0, 1);
    f.agent = proc_free(f.agent);
    ck_assert(wait_text(path, "went away", 5000));
    f.agent = proc_spawn(agent, NULL, f.log);
    ck_assert(wait_text(path, "reconnected", 10000));
    ck_assert(proc_alive(w));
    ck_assert_int_eq(proc_signal(w, SIGINT), 0);
    ck_assert_int_eq(proc_wait(w, 5000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    proc_free(w);
    fx_stop(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("agentctl");
    TCase *cli = tcase_create("cli");
    TCase *agent = tcase_create("agent");

    tcase_set_timeout(cli, 60);
    tcase_add_test(cli, test_usage_errors);
    tcase_add_test(cli, test_help);
    tcase_add_test(cli, test_no_agent);
    tcase_set_timeout(agent, 90);
    tcase_add_test(agent, test_register_resolve_deregister);
    tcase_add_test(agent, test_status_and_services);
    tcase_add_test(agent, test_watch);
    tcase_add_test(agent, test_watch_survives_restart);
    suite_add_tcase(s, cli);
    suite_add_tcase(s, agent);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
