/* The HTTP listener (agent/web/) of a real agent against real etcd:
 * /metrics checked by promtool and scraped by a real Prometheus server,
 * the counters moving as the test registers, watches and kills etcd,
 * /readyz before and after the session, methods other than GET and HEAD,
 * the status page in headless Chromium, no secret in any output, and an
 * address that cannot be bound. HTTP is fetched with curl(1). */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agentproc.h"
#include "etcd_proc.h"
#include "proc.h"

struct fx {
    struct etcd_cluster *cluster;
    struct agentp agent;
    int port;
    char base[64]; /* http://127.0.0.1:PORT */
    char pwfile[600];
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

    nanosleep(&ts, NULL);
}

/* A loopback port free now (the kernel's pick, released at once). */
static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Fetches base+path with method; the body into out, the status code
 * returned (0: no answer). With headers, the response's headers come
 * first in out. */
static int http(const char *base, const char *method, const char *path, bool headers, char *out,
                size_t len)
{
    char url[256];
    const char *argv[] = {
        "curl",           "-s", "-m", "10", "-X", method, headers ? "-i" : "-s", "-w",
        "\n%{http_code}", url,  NULL};
    const char *argv_head[] = {"curl", "-s", "-m", "10", "-I", "-w", "\n%{http_code}", url, NULL};
    char *nl;
    int code;

    snprintf(url, sizeof url, "%s%s", base, path);
    out[0] = '\0';
    if (proc_run(out, len, 15000, strcmp(method, "HEAD") ? argv : argv_head) != 0)
        return 0;
    nl = strrchr(out, '\n');
    if (!nl)
        return 0;
    code = atoi(nl + 1);
    *nl = '\0';
    return code;
}

/* The value of the series written exactly as series (name{labels}) in a
 * /metrics body; -1 when absent. */
static double series(const char *body, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = body; (p = strstr(p, name)); p += n)
        if ((p == body || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static double metric(struct fx *f, const char *name)
{
    static char body[1 << 20];

    ck_assert_int_eq(http(f->base, "GET", "/metrics", false, body, sizeof body), 200);
    return series(body, name);
}

/* Polls until the series reaches at least want, for up to ms. */
static double metric_reaches(struct fx *f, const char *name, double want, int ms)
{
    long long until = now_ms() + ms;
    double v;

    while ((v = metric(f, name)) < want && now_ms() < until)
        nap(100);
    return v;
}

/* etcd (with auth and TLS when secure) and an agent with HTTP on a port
 * of its own; extra YAML is added to the agent's configuration. */
static void fx_up(struct fx *f, bool secure, const char *extra)
{
    struct etcd_cluster_opts co = {.members = 1, .auth = secure, .tls = 0};
    char yaml[4096];
    FILE *pf;

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    f->port = free_port();
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", f->port);
    snprintf(f->pwfile, sizeof f->pwfile, "%s/etcd.password", etcd_cluster_dir(f->cluster));
    if (secure) {
        pf = fopen(f->pwfile, "w");
        ck_assert_ptr_nonnull(pf);
        fputs(ETCD_ROOT_PASSWORD "\n", pf);
        fclose(pf);
        chmod(f->pwfile, 0600);
    }
    snprintf(yaml, sizeof yaml,
             "http:\n  listen: [127.0.0.1:%d]\n"
             "services:\n  - name: web-test\n    address: 127.0.0.1:9301\n    weight: 3\n"
             "%s%s",
             f->port, extra ? extra : "", "");
    ck_assert_int_eq(agentp_config(&f->agent, etcd_cluster_dir(f->cluster),
                                   etcd_cluster_urls(f->cluster), 4, 2000, yaml),
                     0);
    if (secure) {
        /* etcd.username and friends go into the etcd section. */
        char conf[8192];
        FILE *cf = fopen(f->agent.conf, "r");
        size_t n = fread(conf, 1, sizeof conf - 1, cf);
        conf[n] = '\0';
        fclose(cf);
        char *timeout = strstr(conf, "  timeout:");
        ck_assert_ptr_nonnull(timeout);
        char head[8192];
        snprintf(head, sizeof head, "%.*s  username: " ETCD_ROOT_USER "\n  password_file: %s\n%s",
                 (int)(timeout - conf), conf, f->pwfile, timeout);
        cf = fopen(f->agent.conf, "w");
        fputs(head, cf);
        fclose(cf);
    }
}

static void fx_down(struct fx *f)
{
    ck_assert_int_eq(agentp_free(&f->agent), 0);
    etcd_cluster_stop(f->cluster);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    n = (long)fread(buf, 1, (size_t)n, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void wait_ready(struct fx *f)
{
    char out[512];
    long long until = now_ms() + 15000;

    while (http(f->base, "GET", "/readyz", false, out, sizeof out) != 200) {
        if (now_ms() > until) {
            char *log = slurp(f->agent.log);
            size_t n = strlen(log);
            ck_abort_msg("not ready after 15 s: %s; the agent's log ends: %s", out,
                         log + (n > 1500 ? n - 1500 : 0));
        }
        nap(100);
    }
    ck_assert_msg(strstr(out, "session lease held"), "%s", out);
}

/* ---- metrics: promtool, counters, secrets --------------------------------------- */

static void assert_no_secret(const char *where, const char *text, const char *key)
{
    ck_assert_msg(!strstr(text, ETCD_ROOT_PASSWORD), "the etcd password is in %s", where);
    ck_assert_msg(!strstr(text, key), "the TLS key is in %s", where);
    ck_assert_msg(!strcasestr(text, "authorization:"), "an auth header is in %s", where);
}

START_TEST(metrics_promtool_counters_secrets)
{
    static char body[1 << 20];
    struct fx f;
    char cmd[512], out[4096], key[64];
    int fd;
    json_t *r;

    fx_up(&f, true, NULL);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    wait_ready(&f);

    /* promtool checks the exposition's syntax and conventions. */
    snprintf(cmd, sizeof cmd, "curl -sf %s/metrics | promtool check metrics", f.base);
    const char *sh[] = {"sh", "-c", cmd, NULL};
    int rc = proc_run(out, sizeof out, 30000, sh);
    ck_assert_msg(rc == 0, "promtool: %s", out);

    ck_assert(metric_reaches(&f, "discovery_agent_lease_held", 1, 5000) == 1);
    ck_assert(metric(&f, "discovery_agent_registrations{state=\"registered\"}") == 1);
    ck_assert(metric(&f, "discovery_agent_lease_grants_total") >= 1);
    ck_assert(metric(&f, "discovery_agent_build_info{version=\"" DA_VERSION "\"}") == 1);
    ck_assert(metric(&f, "discovery_agent_process_open_fds") > 0);

    /* Register and watch through the socket: the counters move. */
    double puts = metric(&f, "discovery_agent_etcd_requests_total{op=\"txn\",result=\"ok\"}") +
                  metric(&f, "discovery_agent_etcd_requests_total{op=\"put\",result=\"ok\"}");
    r = agent_call(f.agent.sock,
                   "{\"op\":\"register\",\"name\":\"web-rt\",\"address\":\"127.0.0.1:9302\","
                   "\"persist\":true}",
                   5000);
    ck_assert_ptr_nonnull(r);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    fd = sock_open(f.agent.sock);
    ck_assert_int_ge(fd, 0);
    r = sock_call(fd, "{\"op\":\"watch\",\"service\":\"web-test\"}", 5000);
    ck_assert_ptr_nonnull(r);
    json_decref(r);
    ck_assert(metric_reaches(&f, "discovery_agent_registrations{state=\"registered\"}", 2, 5000) ==
              2);
    ck_assert(metric(&f, "discovery_agent_etcd_requests_total{op=\"txn\",result=\"ok\"}") +
                  metric(&f, "discovery_agent_etcd_requests_total{op=\"put\",result=\"ok\"}") >
              puts);
    ck_assert(metric(&f, "discovery_agent_socket_watches_total") >= 1);
    ck_assert(metric(&f, "discovery_agent_socket_clients") >= 1);
    ck_assert(metric(&f, "discovery_agent_cache_services") >= 1);
    ck_assert(metric(&f, "discovery_agent_service_watchers{service=\"web-test\"}") >= 1);
    ck_assert(metric(&f, "discovery_agent_etcd_watch_stream_connects_total") >= 1);
    /* A change of the watched service reaches the watcher: an update line. */
    const char *put[] = {"put", "/micro/web-test/127.0.0.1:9399",
                         "{\"Name\":\"web-test\",\"Address\":\"127.0.0.1:9399\",\"Weight\":1,"
                         "\"Group\":\"\"}",
                         NULL};
    ck_assert_int_eq(
        etcdctl_as(f.cluster, ETCD_ROOT_USER ":" ETCD_ROOT_PASSWORD, out, sizeof out, put), 0);
    ck_assert(metric_reaches(&f, "discovery_agent_socket_update_lines_total", 1, 5000) >= 1);
    ck_assert(metric(&f, "discovery_agent_etcd_watch_events_total") >= 1);
    ck_assert(metric(&f, "discovery_agent_watch_delivery_delay_seconds_count") >= 1);

    /* Nothing secret in the metrics, the status, the page or the log. */
    /* The cluster has auth but no TLS here (the gateway refuses auth over
     * client-certificate TLS in this harness), so the key is a decoy of
     * the same shape. */
    snprintf(key, sizeof key, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC");
    ck_assert_int_eq(http(f.base, "GET", "/metrics", true, body, sizeof body), 200);
    assert_no_secret("/metrics", body, key);
    ck_assert_int_eq(http(f.base, "GET", "/status.json", true, body, sizeof body), 200);
    assert_no_secret("/status.json", body, key);
    ck_assert_msg(strstr(body, "web-rt"), "%s", body);
    ck_assert_int_eq(http(f.base, "GET", "/", true, body, sizeof body), 200);
    assert_no_secret("/", body, key);

    /* etcd goes away: failures counted, etcd_connected 0, the lists stale,
     * and the status still answers at once. */
    ck_assert_int_eq(etcd_member_kill(f.cluster, 0), 0);
    ck_assert(metric_reaches(&f,
                             "discovery_agent_etcd_requests_total{op=\"lease_keepalive\","
                             "result=\"unreachable\"}",
                             1, 10000) >= 1);
    ck_assert(metric(&f, "discovery_agent_etcd_connected") == 0);
    ck_assert(metric_reaches(&f, "discovery_agent_cache_stale_services", 1, 10000) >= 1);
    ck_assert_int_eq(http(f.base, "GET", "/status.json", false, body, sizeof body), 200);
    ck_assert_msg(strstr(body, "\"connected\":false"), "%s", body);
    close(fd);

    char *log = slurp(f.agent.log);
    assert_no_secret("the agent's log", log, key);
    free(log);
    fx_down(&f);
}
END_TEST

/* ---- readyz and methods ------------------------------------------------------------ */

START_TEST(readyz_before_and_after_session)
{
    struct fx f;
    char out[512];
    int code;

    fx_up(&f, false, NULL);
    /* No etcd yet: the agent serves HTTP, but holds no session. */
    ck_assert_int_eq(etcd_member_stop(f.cluster, 0), 0);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    code = http(f.base, "GET", "/readyz", false, out, sizeof out);
    ck_assert_msg(code == 503, "%d %s", code, out);
    ck_assert_msg(strstr(out, "not ready: waiting for the etcd session lease"), "%s", out);
    ck_assert_int_eq(http(f.base, "GET", "/healthz", false, out, sizeof out), 200);
    ck_assert_int_eq(etcd_member_start(f.cluster, 0), 0);
    wait_ready(&f);
    fx_down(&f);
}
END_TEST

START_TEST(only_get_and_head)
{
    static const char *const paths[] = {"/metrics", "/healthz", "/readyz", "/", "/status.json"};
    static const char *const methods[] = {"POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
    struct fx f;
    static char out[1 << 20];

    fx_up(&f, false, NULL);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    wait_ready(&f);
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        for (size_t m = 0; m < sizeof methods / sizeof *methods; m++) {
            int code = http(f.base, methods[m], paths[i], true, out, sizeof out);
            ck_assert_msg(code == 405, "%s %s: %d", methods[m], paths[i], code);
            ck_assert_msg(strcasestr(out, "Allow: GET, HEAD"), "%s %s: %s", methods[m], paths[i],
                          out);
        }
        ck_assert_int_eq(http(f.base, "HEAD", paths[i], false, out, sizeof out), 200);
        ck_assert_int_eq(http(f.base, "GET", paths[i], false, out, sizeof out), 200);
    }
    ck_assert_int_eq(http(f.base, "GET", "/nope", false, out, sizeof out), 404);
    fx_down(&f);
}
END_TEST

START_TEST(address_taken_stops_the_start)
{
    struct fx f;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int fd, status;
    char want[128];

    fx_up(&f, false, NULL);
    /* Someone else holds the port. */
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)f.port);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(fd, 1), 0);
    ck_assert_int_eq(agentp_spawn(&f.agent), 0);
    ck_assert_int_eq(proc_wait(f.agent.p, 10000, &status), 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    snprintf(want, sizeof want, "http.listen '127.0.0.1:%d'", f.port);
    ck_assert_msg(agentp_log_has(&f.agent, want), "no '%s' in %s", want, f.agent.log);
    ck_assert(agentp_log_has(&f.agent, "pick another port"));
    close(fd);
    fx_down(&f);
}
END_TEST

/* ---- a real Prometheus server ----------------------------------------------------------- */

static bool prom_has(const char *prom, const char *query, const char *want)
{
    char url[512], out[8192];
    const char *argv[] = {"curl", "-s", "-m", "5", "-G", url, "--data-urlencode", query, NULL};

    snprintf(url, sizeof url, "%s/api/v1/query", prom);
    return proc_run(out, sizeof out, 10000, argv) == 0 && strstr(out, want);
}

START_TEST(prometheus_scrapes)
{
    struct fx f;
    char dir[700], conf[800], data[800], listen[64], prom[80], cfgarg[900], dataarg[900],
        listenarg[100], plog[800];
    int pport;
    FILE *cf;

    fx_up(&f, false, NULL);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    wait_ready(&f);
    snprintf(dir, sizeof dir, "%s/prometheus", etcd_cluster_dir(f.cluster));
    mkdir(dir, 0755);
    snprintf(conf, sizeof conf, "%s/prometheus.yml", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(plog, sizeof plog, "%s/prometheus.log", dir);
    cf = fopen(conf, "w");
    ck_assert_ptr_nonnull(cf);
    fprintf(cf,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: agent\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n",
            f.port);
    fclose(cf);
    pport = free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", pport);
    snprintf(prom, sizeof prom, "http://%s", listen);
    snprintf(cfgarg, sizeof cfgarg, "--config.file=%s", conf);
    snprintf(dataarg, sizeof dataarg, "--storage.tsdb.path=%s", data);
    snprintf(listenarg, sizeof listenarg, "--web.listen-address=%s", listen);
    const char *argv[] = {"prometheus", cfgarg, dataarg, listenarg, NULL};
    struct proc *p = proc_spawn(argv, NULL, plog);
    ck_assert_ptr_nonnull(p);

    long long until = now_ms() + 60000;
    bool lease = false, regs = false;
    while (!(lease && regs) && now_ms() < until) {
        nap(500);
        lease = lease || prom_has(prom, "query=discovery_agent_lease_held", "\"1\"]");
        regs = regs || prom_has(prom, "query=discovery_agent_registrations{state=\"registered\"}",
                                "\"1\"]");
    }
    ck_assert_int_eq(proc_stop(p, SIGTERM, 10000) >= 0, 1);
    proc_free(p);
    ck_assert_msg(lease, "Prometheus has no discovery_agent_lease_held 1; see %s", plog);
    ck_assert_msg(regs, "Prometheus has no registered registration; see %s", plog);
    fx_down(&f);
}
END_TEST

/* ---- the status page in Chromium ------------------------------------------------------ */

/* Chromium prints the page's console messages on stderr with
 * --enable-logging=stderr as "CONSOLE(...)" lines (errors and uncaught
 * exceptions among them); a page that renders cleanly prints none. */
START_TEST(status_page_in_chromium)
{
    struct fx f;
    static char dom[1 << 20];
    char url[128], profile[700], profarg[800], errlog[800];
    const char *shot = getenv("STATUS_PAGE_SCREENSHOT");
    int fd;
    json_t *r;

    fx_up(&f, false, NULL);
    ck_assert_int_eq(agentp_start(&f.agent), 0);
    wait_ready(&f);
    /* A watched service with a watcher, and a second registration. */
    r = agent_call(f.agent.sock,
                   "{\"op\":\"register\",\"name\":\"page-rt\",\"address\":\"127.0.0.1:9303\","
                   "\"weight\":7,\"persist\":true}",
                   5000);
    ck_assert_ptr_nonnull(r);
    json_decref(r);
    fd = sock_open(f.agent.sock);
    r = sock_call(fd, "{\"op\":\"watch\",\"service\":\"web-test\"}", 5000);
    json_decref(r);

    snprintf(url, sizeof url, "%s/", f.base);
    snprintf(profile, sizeof profile, "%s/chromium", etcd_cluster_dir(f.cluster));
    snprintf(profarg, sizeof profarg, "--user-data-dir=%s", profile);
    snprintf(errlog, sizeof errlog, "%s/chromium.err", etcd_cluster_dir(f.cluster));
    const char *argv[] = {"chromium",
                          "--headless",
                          "--disable-gpu",
                          "--no-sandbox",
                          profarg,
                          "--enable-logging=stderr",
                          "--v=0",
                          "--virtual-time-budget=5000",
                          "--dump-dom",
                          url,
                          NULL};
    ck_assert_int_eq(proc_run_full(dom, sizeof dom, 90000, argv, NULL, errlog), 0);
    ck_assert_msg(strstr(dom, "<td>web-test</td>"), "no web-test in the page: %.2000s", dom);
    ck_assert_msg(strstr(dom, "<td>page-rt</td>"), "no page-rt in the page");
    ck_assert_msg(strstr(dom, "registered"), "no state in the page");
    ck_assert_msg(strstr(dom, "live"), "no freshness in the page");
    char *err = slurp(errlog);
    ck_assert_msg(!strstr(err, "CONSOLE"), "console messages: %s", err);
    free(err);

    if (shot && *shot) {
        char shotarg[800];
        snprintf(shotarg, sizeof shotarg, "--screenshot=%s", shot);
        const char *sargv[] = {"chromium",
                               "--headless",
                               "--disable-gpu",
                               "--no-sandbox",
                               profarg,
                               "--hide-scrollbars",
                               "--window-size=1280,1000",
                               "--virtual-time-budget=5000",
                               shotarg,
                               url,
                               NULL};
        ck_assert_int_eq(proc_run_full(dom, sizeof dom, 90000, sargv, NULL, errlog), 0);
    }
    close(fd);
    fx_down(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("web");
    TCase *t = tcase_create("metrics");

    tcase_set_timeout(t, 120);
    tcase_add_test(t, metrics_promtool_counters_secrets);
    tcase_add_test(t, readyz_before_and_after_session);
    tcase_add_test(t, only_get_and_head);
    tcase_add_test(t, address_taken_stops_the_start);
    suite_add_tcase(s, t);
    t = tcase_create("prometheus");
    tcase_set_timeout(t, 150);
    tcase_add_test(t, prometheus_scrapes);
    suite_add_tcase(s, t);
    t = tcase_create("page");
    tcase_set_timeout(t, 200);
    tcase_add_test(t, status_page_in_chromium);
    suite_add_tcase(s, t);
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
