/* Tests of libdiscovery (lib/client.c, lib/list.c, lib/error.c): against a
 * real discovery-agent on a real etcd (started by the harness), with
 * etcdctl as the other writer and the judge; and against a fake agent, a
 * unix socket served by a thread of the test, for what a real agent never
 * sends (garbage, over-long lines) or when timing must be exact. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <discovery/discovery.h>

#include "agentproc.h"
#include "etcd_proc.h"
#include "proc.h"
#include "testutil.h"

/* ---- a real agent on a real etcd ---------------------------------------- */

struct fx {
    struct etcd_cluster *cluster;
    struct proc *agent;
    char conf[512], sock[512], log[512];
};

static void agent_start(struct fx *f)
{
    const char *argv[] = {BUILD_DIR "/discovery-agent", "-c", f->conf, NULL};
    long long until = now_ms() + 10000;

    f->agent = proc_spawn(argv, NULL, f->log);
    ck_assert_ptr_nonnull(f->agent);
    /* Ready when the socket answers a ping. */
    for (;;) {
        disc_client *c = NULL;
        char *reply = NULL;
        int rc = disc_client_open(&c, f->sock);

        if (rc == 0)
            rc = disc_request_json(c, "{\"op\":\"ping\"}", 2000, &reply);
        free(reply);
        disc_client_close(c);
        if (rc == 0)
            return;
        ck_assert_msg(proc_alive(f->agent), "the agent exited; see %s", f->log);
        ck_assert_msg(now_ms() < until, "the agent did not answer within 10 s; see %s", f->log);
        sleep_ms(50);
    }
}

static void fx_start(struct fx *f, const char *extra_yaml)
{
    struct etcd_cluster_opts co = {.members = 1};
    const char *dir;
    FILE *cf;

    memset(f, 0, sizeof *f);
    f->cluster = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->cluster);
    dir = etcd_cluster_dir(f->cluster);
    snprintf(f->conf, sizeof f->conf, "%s/agent.yaml", dir);
    snprintf(f->sock, sizeof f->sock, "%s/agent.sock", dir);
    snprintf(f->log, sizeof f->log, "%s/agent.log", dir);
    cf = fopen(f->conf, "w");
    ck_assert_ptr_nonnull(cf);
    fprintf(cf,
            "etcd:\n  endpoints: [%s]\n  timeout: 2s\n"
            "session:\n  ttl: 2s\n"
            "socket:\n  path: %s\n"
            "cache:\n  dir: %s/cache\n"
            "log:\n  level: debug\n%s%s%s",
            etcd_member_url(f->cluster, 0), f->sock, dir, extra_yaml ? extra_yaml : "",
            agentp_dns_off(extra_yaml), agentp_http_off(extra_yaml));
    fclose(cf);
    agent_start(f);
}

static void fx_stop(struct fx *f)
{
    if (f->agent)
        proc_stop(f->agent, SIGTERM, 5000);
    f->agent = proc_free(f->agent);
    etcd_cluster_stop(f->cluster);
}

/* The value of key in etcd ("" if none) into out. */
static void etcd_get(struct fx *f, const char *key, char *out, size_t len)
{
    const char *args[] = {"get", "--print-value-only", key, NULL};

    ck_assert_int_eq(etcdctl(f->cluster, out, len, args), 0);
    out[strcspn(out, "\n")] = '\0';
}

static void etcd_put(struct fx *f, const char *key, const char *value)
{
    char out[256];
    const char *args[] = {"put", key, value, NULL};

    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
}

static void etcd_del(struct fx *f, const char *key)
{
    char out[256];
    const char *args[] = {"del", key, NULL};

    ck_assert_int_eq(etcdctl(f->cluster, out, sizeof out, args), 0);
}

/* Waits up to ms for key to be present (want) or absent (!want). */
static bool etcd_wait_key(struct fx *f, const char *key, bool want, int ms)
{
    long long until = now_ms() + ms;
    char out[1024];

    for (;;) {
        etcd_get(f, key, out, sizeof out);
        if ((*out != '\0') == want)
            return true;
        if (now_ms() > until)
            return false;
        sleep_ms(100);
    }
}

/* ---- a watcher that records what it is told ---------------------------- */

#define MAX_SEEN 256

struct seen {
    int n;
    int err[MAX_SEEN];
    int64_t rev[MAX_SEEN];
    bool stale[MAX_SEEN];
    char addrs[MAX_SEEN][256]; /* "a,b,c" */
    int32_t first_weight[MAX_SEEN];
    char first_meta[MAX_SEEN][64]; /* "k=v" of the first instance */
    char service[64];
};

static void record(struct disc_watch *w, const struct disc_list *l, int err, void *arg)
{
    struct seen *s = arg;
    int i = s->n;

    ck_assert_ptr_nonnull(w);
    ck_assert_int_lt(i, MAX_SEEN);
    s->err[i] = err;
    if (l) {
        size_t used = 0;
        ck_assert_int_eq(err, 0);
        snprintf(s->service, sizeof s->service, "%s", l->service);
        s->rev[i] = l->revision;
        s->stale[i] = l->stale;
        s->addrs[i][0] = '\0';
        for (size_t k = 0; k < l->n; k++)
            used += (size_t)snprintf(s->addrs[i] + used, sizeof s->addrs[i] - used, "%s%s",
                                     k ? "," : "", l->instances[k].address);
        if (l->n) {
            s->first_weight[i] = l->instances[0].weight;
            if (l->instances[0].n_meta)
                snprintf(s->first_meta[i], sizeof s->first_meta[i], "%s=%s",
                         l->instances[0].meta_keys[0], l->instances[0].meta_values[0]);
        }
    } else {
        ck_assert_int_ne(err, 0);
    }
    s->n++;
}

/* Runs the client until the watcher's latest list is addrs (or err, when
 * addrs is NULL), at most ms. */
static bool wait_for(disc_client *c, struct seen *s, const char *addrs, int err, int ms)
{
    long long until = now_ms() + ms;

    for (;;) {
        if (s->n > 0) {
            int i = s->n - 1;
            if (addrs ? s->err[i] == 0 && !strcmp(s->addrs[i], addrs) : s->err[i] == err)
                return true;
        }
        if (now_ms() > until)
            return false;
        disc_client_wait(c, 100);
    }
}

static int count_err(const struct seen *s, int err, int from)
{
    int n = 0;

    for (int i = from; i < s->n; i++)
        n += s->err[i] == err;
    return n;
}

/* ---- errors ------------------------------------------------------------- */

START_TEST(test_error_table)
{
    static const int codes[] = {DISC_EINVAL,      DISC_ENOMEM,    DISC_ENOAGENT, DISC_EACCES,
                                DISC_ECLOSED,     DISC_ETIMEDOUT, DISC_EPROTO,   DISC_EREFUSED,
                                DISC_EINPROGRESS, DISC_EUNAVAIL,  DISC_EINTR,    DISC_ESYSTEM};

    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        ck_assert_int_lt(codes[i], 0);
        ck_assert_str_ne(disc_strerror(codes[i]), "unknown error");
        ck_assert_str_ne(disc_err_name(codes[i]), "DISC_UNKNOWN");
        for (size_t j = 0; j < i; j++)
            ck_assert_int_ne(codes[i], codes[j]);
    }
    ck_assert_str_eq(disc_err_name(DISC_ENOAGENT), "DISC_ENOAGENT");
    ck_assert_str_eq(disc_strerror(DISC_ENOAGENT), "no agent at the socket");
    ck_assert_str_eq(disc_strerror(-9999), "unknown error");
    ck_assert_str_eq(disc_err_name(12345), "DISC_UNKNOWN");
}
END_TEST

START_TEST(test_bad_arguments)
{
    disc_client *c = (disc_client *)1;
    char longpath[200];

    memset(longpath, 'x', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    ck_assert_int_eq(disc_client_open(&c, longpath), DISC_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(disc_client_open(&c, ""), DISC_EINVAL);
    ck_assert_int_eq(disc_client_open(NULL, "/x"), DISC_EINVAL);
    ck_assert_ptr_null(disc_client_close(NULL));
    ck_assert_ptr_null(disc_list_free(NULL));
    ck_assert_ptr_null(disc_list_dup(NULL));
    disc_unwatch(NULL);
    ck_assert_int_eq(disc_client_fd(NULL), -1);
    ck_assert_int_eq(disc_client_process(NULL), DISC_EINVAL);
    ck_assert_int_eq(disc_client_wait(NULL, 0), DISC_EINVAL);
    ck_assert_int_eq(disc_resolve(NULL, "a", NULL, 10, NULL), DISC_EINVAL);
}
END_TEST

/* ---- against a real agent ----------------------------------------------- */

START_TEST(test_resolve_register_deregister)
{
    struct fx f;
    disc_client *c;
    struct disc_list *l;
    const char *keys[] = {"zone", "version"}, *values[] = {"eu", "1.4.2"};
    struct disc_registration r = {.name = "svc",
                                  .address = "127.0.0.1:9001",
                                  .weight = 5,
                                  .group = "A",
                                  .n_meta = 2,
                                  .meta_keys = keys,
                                  .meta_values = values};
    const char *code, *msg;
    char out[1024], *reply;
    json_t *j;

    fx_start(&f, NULL);
    ck_assert_int_eq(disc_client_open(&c, f.sock), 0);
    ck_assert_str_eq(disc_client_path(c), f.sock);
    ck_assert_int_ge(disc_client_fd(c), 0);

    /* Nothing yet: an empty list at a real revision. */
    ck_assert_int_eq(disc_resolve(c, "svc", NULL, 5000, &l), 0);
    ck_assert_str_eq(l->service, "svc");
    ck_assert_uint_eq(l->n, 0);
    ck_assert_int_gt(l->revision, 0);
    ck_assert(!l->stale);
    l = disc_list_free(l);

    ck_assert_int_eq(disc_register(c, &r, 5000), 0);
    etcd_get(&f, "/micro/svc/127.0.0.1:9001", out, sizeof out);
    j = json_loads(out, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "Name")), "svc");
    ck_assert_str_eq(json_string_value(json_object_get(j, "Address")), "127.0.0.1:9001");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "Weight")), 5);
    ck_assert_str_eq(json_string_value(json_object_get(j, "Group")), "A");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "Metadata"), "zone")),
                     "eu");
    json_decref(j);

    /* The agent's cache may still be at a revision before the write. */
    for (long long until = now_ms() + 5000;;) {
        ck_assert_int_eq(disc_resolve(c, "svc", NULL, 5000, &l), 0);
        if (l->n == 1 || now_ms() > until)
            break;
        l = disc_list_free(l);
        sleep_ms(50);
    }
    ck_assert_uint_eq(l->n, 1);
    ck_assert_str_eq(l->instances[0].name, "svc");
    ck_assert_str_eq(l->instances[0].address, "127.0.0.1:9001");
    ck_assert_str_eq(l->instances[0].group, "A");
    ck_assert_int_eq(l->instances[0].weight, 5);
    ck_assert_uint_eq(l->instances[0].n_meta, 2);
    ck_assert_str_eq(l->instances[0].meta_keys[0], "version"); /* sorted by key */
    ck_assert_str_eq(l->instances[0].meta_values[0], "1.4.2");
    ck_assert_str_eq(l->instances[0].meta_keys[1], "zone");
    {
        struct disc_list *d = disc_list_dup(l);
        l = disc_list_free(l);
        ck_assert_ptr_nonnull(d);
        ck_assert_str_eq(d->instances[0].meta_values[1], "eu");
        disc_list_free(d);
    }

    /* A group that has nothing. */
    ck_assert_int_eq(disc_resolve(c, "svc", "B", 5000, &l), 0);
    ck_assert_uint_eq(l->n, 0);
    l = disc_list_free(l);

    /* Raw requests, for agentctl. */
    ck_assert_int_eq(disc_request_json(c, "{\"op\":\"status\"}", 5000, &reply), 0);
    j = json_loads(reply, 0, NULL);
    free(reply);
    ck_assert(json_is_true(json_object_get(j, "ok")));
    ck_assert_ptr_nonnull(json_object_get(j, "lease"));
    json_decref(j);
    ck_assert_int_eq(disc_request_json(c, "{\"op\":\"frobnicate\"}", 5000, &reply), DISC_EREFUSED);
    ck_assert_ptr_null(reply);
    ck_assert_int_eq(disc_client_last_error(c, &code, &msg), DISC_EREFUSED);
    ck_assert_str_eq(code, "unknown_op");
    ck_assert_int_eq(disc_request_json(c, "{\"op\":\"watch\",\"service\":\"x\"}", 5000, &reply),
                     DISC_EINVAL);
    ck_assert_int_eq(disc_request_json(c, "not json", 5000, &reply), DISC_EINVAL);
    ck_assert_int_eq(disc_request_json(c, "[1]", 5000, &reply), DISC_EINVAL);

    /* Refused locally, and by the agent. */
    ck_assert_int_eq(disc_resolve(c, "bad/name", NULL, 5000, &l), DISC_EINVAL);
    ck_assert_ptr_null(l);
    r.address = "nocolon";
    ck_assert_int_eq(disc_register(c, &r, 5000), DISC_EINVAL);
    /* The library applies the agent's own address rule (validate.h). */
    r.address = "host:notaport";
    ck_assert_int_eq(disc_register(c, &r, 5000), DISC_EINVAL);
    ck_assert_int_eq(disc_client_last_error(c, &code, &msg), DISC_EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "bad address 'host:notaport'"));
    r.address = "1.2.3.4:05";
    ck_assert_int_eq(disc_register(c, &r, 5000), DISC_EINVAL);
    /* What only the agent checks comes back as its refusal. */
    r.address = "1.2.3.4:5";
    r.group = "a\tb";
    ck_assert_int_eq(disc_register(c, &r, 5000), DISC_EREFUSED);
    ck_assert_int_eq(disc_client_last_error(c, &code, &msg), DISC_EREFUSED);
    ck_assert_str_eq(code, "bad_request");
    ck_assert_ptr_nonnull(strstr(msg, "a group may not contain control characters"));
    r.group = "A";

    /* Deregister: gone from etcd; a second time the agent has nothing. */
    ck_assert_int_eq(disc_deregister(c, "svc", "127.0.0.1:9001", 5000), 0);
    etcd_get(&f, "/micro/svc/127.0.0.1:9001", out, sizeof out);
    ck_assert_str_eq(out, "");
    ck_assert_int_eq(disc_deregister(c, "svc", "127.0.0.1:9001", 5000), DISC_EREFUSED);
    disc_client_last_error(c, &code, &msg);
    ck_assert_str_eq(code, "not_found");

    disc_client_close(c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_registration_conflict)
{
    struct fx f;
    disc_client *c;
    struct disc_registration r = {.name = "cfg", .address = "127.0.0.1:9300", .weight = 1};
    const char *code;

    fx_start(&f, "services:\n  - name: cfg\n    address: 127.0.0.1:9300\n");
    ck_assert_int_eq(disc_client_open(&c, f.sock), 0);
    ck_assert_int_eq(disc_register(c, &r, 5000), DISC_EREFUSED);
    disc_client_last_error(c, &code, NULL);
    ck_assert_str_eq(code, "conflict");
    ck_assert_int_eq(disc_deregister(c, "cfg", "127.0.0.1:9300", 5000), DISC_EREFUSED);
    disc_client_last_error(c, &code, NULL);
    ck_assert_str_eq(code, "forbidden");
    disc_client_close(c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_watch_sees_other_writer)
{
    struct fx f;
    disc_client *c;
    struct disc_watch *w, *wa;
    struct seen s = {0}, sa = {0};

    fx_start(&f, NULL);
    ck_assert_int_eq(disc_client_open(&c, f.sock), 0);
    ck_assert_int_eq(disc_watch(c, "svc", NULL, record, &s, &w), 0);
    ck_assert_int_eq(disc_watch(c, "svc", "A", record, &sa, &wa), 0);
    ck_assert_str_eq(disc_watch_service(w), "svc");
    ck_assert_ptr_null(disc_watch_group(w));
    ck_assert_str_eq(disc_watch_group(wa), "A");
    ck_assert_int_eq(s.n, 0); /* never inside disc_watch() */
    ck_assert(wait_for(c, &s, "", 0, 5000));
    ck_assert(wait_for(c, &sa, "", 0, 5000));
    ck_assert_str_eq(s.service, "svc");

    etcd_put(&f, "/micro/svc/1.2.3.4:80",
             "{\"Name\":\"svc\",\"Address\":\"1.2.3.4:80\",\"Weight\":1,\"Group\":\"\"}");
    ck_assert(wait_for(c, &s, "1.2.3.4:80", 0, 5000));
    etcd_put(&f, "/micro/svc/1.2.3.5:80",
             "{\"Name\":\"svc\",\"Address\":\"1.2.3.5:80\",\"Weight\":3,\"Group\":\"A\","
             "\"Metadata\":{\"v\":\"2\"}}");
    ck_assert(wait_for(c, &s, "1.2.3.4:80,1.2.3.5:80", 0, 5000));
    /* The group's watcher sees only its own. */
    ck_assert(wait_for(c, &sa, "1.2.3.5:80", 0, 5000));
    ck_assert_int_eq(sa.first_weight[sa.n - 1], 3);
    ck_assert_str_eq(sa.first_meta[sa.n - 1], "v=2");
    /* A value that is no instance is skipped, the rest kept. */
    etcd_put(&f, "/micro/svc/9.9.9.9:1", "not an instance");
    etcd_del(&f, "/micro/svc/1.2.3.4:80");
    ck_assert(wait_for(c, &s, "1.2.3.5:80", 0, 5000));
    for (int i = 1; i < s.n; i++)
        ck_assert_int_ge(s.rev[i], s.rev[i - 1]);

    /* After unwatch, nothing more for it. */
    disc_unwatch(wa);
    {
        int before = sa.n;
        etcd_del(&f, "/micro/svc/1.2.3.5:80");
        ck_assert(wait_for(c, &s, "", 0, 5000));
        ck_assert_int_eq(sa.n, before);
    }
    disc_unwatch(w);
    disc_client_close(c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_close_removes_registration)
{
    struct fx f;
    disc_client *c;
    struct disc_registration r = {.name = "svc", .address = "127.0.0.1:9100", .weight = 1};
    struct disc_registration p = {.name = "svc", .address = "127.0.0.1:9101", .persist = true};

    fx_start(&f, NULL);
    ck_assert_int_eq(disc_client_open(&c, f.sock), 0);
    ck_assert_int_eq(disc_register(c, &r, 5000), 0);
    ck_assert_int_eq(disc_register(c, &p, 5000), 0);
    ck_assert(etcd_wait_key(&f, "/micro/svc/127.0.0.1:9100", true, 100));
    ck_assert(etcd_wait_key(&f, "/micro/svc/127.0.0.1:9101", true, 100));
    c = disc_client_close(c);
    ck_assert_ptr_null(c);
    ck_assert(etcd_wait_key(&f, "/micro/svc/127.0.0.1:9100", false, 5000));
    /* persist outlives the client. */
    ck_assert(etcd_wait_key(&f, "/micro/svc/127.0.0.1:9101", true, 100));
    fx_stop(&f);
}
END_TEST

START_TEST(test_agent_restart)
{
    struct fx f;
    disc_client *c;
    struct disc_watch *w;
    struct seen s = {0};
    struct disc_registration r = {.name = "svc", .address = "127.0.0.1:9200", .weight = 2};
    const char *key = "/micro/svc/127.0.0.1:9200";
    int gone_at, rc;
    long long until;

    fx_start(&f, NULL);
    ck_assert_int_eq(disc_client_open(&c, f.sock), 0);
    ck_assert_int_eq(disc_register(c, &r, 5000), 0);
    ck_assert_int_eq(disc_watch(c, "svc", NULL, record, &s, &w), 0);
    ck_assert(wait_for(c, &s, "127.0.0.1:9200", 0, 5000));

    /* Killed: the client sees the end, each watcher is told once. */
    ck_assert_int_eq(proc_signal(f.agent, SIGKILL), 0);
    proc_wait(f.agent, 5000, NULL);
    f.agent = proc_free(f.agent);
    gone_at = s.n;
    ck_assert(wait_for(c, &s, NULL, DISC_ENOAGENT, 5000));
    ck_assert_int_eq(disc_client_fd(c), -1);
    ck_assert_int_eq(disc_client_events(c), 0);
    ck_assert_int_ge(disc_client_timeout(c), 0);
    /* Blocking calls fail at once while it is away. */
    {
        struct disc_list *l;
        ck_assert_int_eq(disc_resolve(c, "svc", NULL, 5000, &l), DISC_ENOAGENT);
    }
    /* Its lease expires (ttl 2 s): the instance leaves etcd. */
    ck_assert(etcd_wait_key(&f, key, false, 10000));
    /* Keep the client retrying a while: still told only once. */
    until = now_ms() + 1500;
    while (now_ms() < until)
        disc_client_wait(c, 100);
    ck_assert_int_eq(s.n, gone_at + 1);
    ck_assert_int_eq(count_err(&s, DISC_ENOAGENT, gone_at), 1);

    /* The same agent again: the client reconnects by itself, registers
     * again, and the watcher gets the current list, which has it. */
    agent_start(&f);
    ck_assert(wait_for(c, &s, "127.0.0.1:9200", 0, 15000));
    ck_assert_int_ge(disc_client_fd(c), 0);
    ck_assert(etcd_wait_key(&f, key, true, 5000));
    ck_assert_int_eq(count_err(&s, DISC_ENOAGENT, 0), 1);

    /* And it works as before. */
    etcd_put(&f, "/micro/svc/1.2.3.4:80",
             "{\"Name\":\"svc\",\"Address\":\"1.2.3.4:80\",\"Weight\":1,\"Group\":\"\"}");
    ck_assert(wait_for(c, &s, "1.2.3.4:80,127.0.0.1:9200", 0, 5000));
    rc = disc_deregister(c, "svc", "127.0.0.1:9200", 5000);
    ck_assert_int_eq(rc, 0);
    ck_assert(wait_for(c, &s, "1.2.3.4:80", 0, 5000));
    disc_client_close(c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_event_loop)
{
    struct fx f;
    disc_client *c;
    struct disc_watch *w;
    struct seen s = {0};
    long long until;
    int polls = 0;

    fx_start(&f, NULL);
    ck_assert_int_eq(disc_client_open(&c, f.sock), 0);
    ck_assert_int_eq(disc_watch(c, "loop", NULL, record, &s, &w), 0);
    until = now_ms() + 8000;
    /* A program's own loop: poll the fd for its events, bounded by the
     * library's timeout, then process. */
    while (now_ms() < until && !(s.n > 0 && !strcmp(s.addrs[s.n - 1], "10.0.0.1:1"))) {
        struct pollfd pfd = {.fd = disc_client_fd(c), .events = (short)disc_client_events(c)};
        int t = disc_client_timeout(c), n;

        if (t < 0 || t > 200)
            t = 200;
        n = poll(&pfd, pfd.fd >= 0 ? 1 : 0, t);
        ck_assert_int_ge(n, 0);
        polls++;
        ck_assert_int_eq(disc_client_process(c), 0);
        if (s.n == 1 && s.err[0] == 0 && s.addrs[0][0] == '\0' && polls < 1000) {
            polls = 1000; /* once: the first list is in, now a change */
            etcd_put(&f, "/micro/loop/10.0.0.1:1",
                     "{\"Name\":\"loop\",\"Address\":\"10.0.0.1:1\",\"Weight\":1,\"Group\":\"\"}");
        }
    }
    ck_assert_int_ge(s.n, 2);
    ck_assert_str_eq(s.addrs[s.n - 1], "10.0.0.1:1");
    disc_client_close(c);
    fx_stop(&f);
}
END_TEST

/* ---- a fake agent ------------------------------------------------------- */

struct fake;
typedef void (*fake_serve)(struct fake *f, int fd, int conn);

struct fake {
    char dir[64], path[128];
    int lfd;
    pthread_t th;
    fake_serve serve;
    void *arg;
    atomic_int conns;
    atomic_bool stop;
};

static void *fake_main(void *arg)
{
    struct fake *f = arg;

    while (!atomic_load(&f->stop)) {
        struct pollfd pfd = {.fd = f->lfd, .events = POLLIN};
        int fd;

        if (poll(&pfd, 1, 50) <= 0)
            continue;
        fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        f->serve(f, fd, atomic_fetch_add(&f->conns, 1));
        close(fd);
    }
    return NULL;
}

static void fake_path(struct fake *f)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_client.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/agent.sock", f->dir);
    f->lfd = -1;
}

static void fake_listen(struct fake *f, fake_serve serve, void *arg)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    f->serve = serve;
    f->arg = arg;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", f->path);
    f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(f->lfd, 0);
    ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(f->lfd, 16), 0);
    ck_assert_int_eq(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
    if (f->lfd >= 0) {
        atomic_store(&f->stop, true);
        pthread_join(f->th, NULL);
        close(f->lfd);
    }
    unlink(f->path);
    rmdir(f->dir);
}

/* Reads one line (at most len - 1 bytes) within ms; its length, or -1 at
 * EOF or timeout. */
static int fake_read_line(int fd, char *buf, size_t len, int ms)
{
    size_t n = 0;

    while (n + 1 < len) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, ms) <= 0 || read(fd, buf + n, 1) != 1)
            return -1;
        if (buf[n] == '\n') {
            buf[n] = '\0';
            return (int)n;
        }
        n++;
    }
    buf[n] = '\0';
    return (int)n;
}

static void fake_write(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n <= 0)
            return; /* the client hung up: fine for a fake */
        s += n;
        len -= (size_t)n;
    }
}

static void fake_print(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fake_print(int fd, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fake_write(fd, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

/* The request's "id" and "op". */
static long long req_id(const char *line, char *op, size_t oplen)
{
    json_t *j = json_loads(line, 0, NULL);
    long long id = json_integer_value(json_object_get(j, "id"));

    const char *o = json_string_value(json_object_get(j, "op"));

    snprintf(op, oplen, "%s", o ? o : "");
    json_decref(j);
    return id;
}

/* Waits until the client closes its end. */
static void fake_drain(int fd)
{
    char buf[4096];

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 5000) <= 0 || read(fd, buf, sizeof buf) <= 0)
            return;
    }
}

#define LIST(rev, addrs_json)                                                                      \
    "\"service\":\"s\",\"revision\":" #rev ",\"stale\":false,\"instances\":[" addrs_json "]"
#define INST(addr)                                                                                 \
    "{\"name\":\"s\",\"address\":\"" addr "\",\"weight\":1,\"group\":\"\",\"metadata\":{}}"

/* ---- malformed lines ---------------------------------------------------- */

/* Each is the agent's answer to a resolve; %1$lld is the request's id. */
static const char *const bad_replies[] = {
    "not json\n",
    "[1,2,3]\n",
    "{\"id\":%1$lld}\n",
    "{\"id\":%1$lld,\"ok\":\"yes\"}\n",
    "{\"id\":%1$lld,\"ok\":true}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":\"7\",\"stale\":false,"
    "\"instances\":[]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":{}}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[1]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[{\"name\":\"s\"}]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[{\"name\":\"s\",\"address\":\"a:1\",\"weight\":99999999999}]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[{\"name\":\"s\",\"address\":\"a:1\",\"weight\":1.5}]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[{\"name\":\"s\",\"address\":\"a:1\",\"metadata\":{\"k\":1}}]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[{\"name\":\"s\",\"address\":\"a:1\",\"metadata\":[]}]}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\",\"revision\":7,\"stale\":false,"
    "\"instances\":[{\"name\":\"s\",\"address\":\"a:1\",\"group\":5}]}\n",
    "{\"id\":%1$lld,\"id\":%1$lld,\"ok\":true}\n", /* duplicate member */
    "{\"event\":5}\n",
    "{\"event\":\"update\"}\n",
    "{\"id\":%1$lld,\"ok\":true,\"service\":\"s\xff\xfe\"}\n", /* not UTF-8 */
    "\x01\x02\x03\x04\n",
};

struct bad_case {
    int which; /* index into bad_replies; -1 deep nesting, -2 too long, -3 a NUL */
};

static void serve_bad(struct fake *f, int fd, int conn)
{
    struct bad_case *bc = f->arg;
    char line[4096], op[32];
    long long id;

    (void)conn;
    if (fake_read_line(fd, line, sizeof line, 5000) < 0)
        return;
    id = req_id(line, op, sizeof op);
    if (bc->which >= 0) {
        char buf[1024];
        int n = snprintf(buf, sizeof buf, bad_replies[bc->which], id);
        fake_write(fd, buf, (size_t)n);
    } else if (bc->which == -3) {
        char buf[128];
        size_t n = (size_t)snprintf(buf, sizeof buf, "{\"id\":%lld,", id);
        buf[n++] = '\0';
        memcpy(buf + n, "\"ok\":true}\n", 11);
        fake_write(fd, buf, n + 11);
    } else if (bc->which == -1) {
        size_t depth = 100000;
        char *deep = malloc(depth + 1);
        memset(deep, '[', depth);
        deep[depth] = '\n';
        fake_write(fd, deep, depth + 1);
        free(deep);
    } else {
        /* 16 MiB and a bit with no '\n': the client must stop reading and
         * drop the connection rather than grow without bound. */
        size_t chunk = 1 << 20;
        char *b = malloc(chunk);
        memset(b, 'a', chunk);
        for (int i = 0; i < 17; i++)
            fake_write(fd, b, chunk);
        free(b);
    }
    fake_drain(fd);
}

static void check_bad(int which)
{
    struct fake fk;
    struct bad_case bc = {which};
    disc_client *c;
    struct disc_list *l = (struct disc_list *)1;
    const char *msg;
    int rc;

    fake_path(&fk);
    fake_listen(&fk, serve_bad, &bc);
    ck_assert_int_eq(disc_client_open(&c, fk.path), 0);
    rc = disc_resolve(c, "s", NULL, 10000, &l);
    disc_client_last_error(c, NULL, &msg);
    ck_assert_msg(rc == DISC_EPROTO, "case %d: %s (%s)", which, disc_err_name(rc), msg);
    ck_assert_ptr_null(l);
    ck_assert_str_ne(msg, "");
    /* The connection was dropped: the client will open a new one. */
    ck_assert_int_eq(disc_client_fd(c), -1);
    disc_client_close(c);
    fake_stop(&fk);
}

START_TEST(test_malformed_reply)
{
    check_bad(_i);
}
END_TEST

START_TEST(test_deep_nesting)
{
    check_bad(-1);
}
END_TEST

START_TEST(test_line_too_long)
{
    check_bad(-2);
}
END_TEST

START_TEST(test_nul_in_line)
{
    check_bad(-3);
}
END_TEST

/* A watch whose update line is garbage: process() says so, the watcher is
 * told the agent is away, and the reconnect brings the watch back. */
static void serve_bad_update(struct fake *f, int fd, int conn)
{
    char line[4096], op[32];
    long long id;

    (void)f;
    if (fake_read_line(fd, line, sizeof line, 5000) < 0)
        return;
    id = req_id(line, op, sizeof op);
    if (strcmp(op, "watch"))
        return;
    fake_print(fd, "{\"id\":%lld,\"ok\":true,\"watch\":1," LIST(5, INST("a:1")) "}\n", id);
    if (conn == 0) {
        sleep_ms(100);
        fake_print(fd, "{\"event\":\"update\",\"watch\":1,\"service\":\"s\",\"revision\":6,"
                       "\"stale\":false,\"instances\":[{\"address\":7}]}\n");
    }
    fake_drain(fd);
}

START_TEST(test_malformed_update)
{
    struct fake fk;
    disc_client *c;
    struct disc_watch *w;
    struct seen s = {0};
    long long until;
    int saw_proto = 0;

    fake_path(&fk);
    fake_listen(&fk, serve_bad_update, NULL);
    ck_assert_int_eq(disc_client_open(&c, fk.path), 0);
    ck_assert_int_eq(disc_watch(c, "s", NULL, record, &s, &w), 0);
    until = now_ms() + 5000;
    while (now_ms() < until && atomic_load(&fk.conns) < 2) {
        int rc = disc_client_wait(c, 100);
        if (rc == DISC_EPROTO)
            saw_proto++;
        else
            ck_assert_int_eq(rc, 0);
    }
    ck_assert_int_eq(saw_proto, 1);
    ck_assert(wait_for(c, &s, "a:1", 0, 5000));
    /* list, gone, list again: the bad update was never delivered. */
    ck_assert_int_eq(s.n, 3);
    ck_assert_int_eq(s.err[1], DISC_ENOAGENT);
    ck_assert_int_eq(s.rev[0], 5);
    ck_assert_int_eq(s.rev[2], 5);
    disc_client_close(c);
    fake_stop(&fk);
}
END_TEST

/* ---- queued updates ----------------------------------------------------- */

/* Answers the watch; then, to the resolve, sends three updates before the
 * resolve's own reply. */
static void serve_queue(struct fake *f, int fd, int conn)
{
    char line[4096], op[32];
    long long id;

    (void)f;
    (void)conn;
    while (fake_read_line(fd, line, sizeof line, 5000) >= 0) {
        id = req_id(line, op, sizeof op);
        if (!strcmp(op, "watch")) {
            fake_print(fd, "{\"id\":%lld,\"ok\":true,\"watch\":3," LIST(5, INST("a:1")) "}\n", id);
        } else if (!strcmp(op, "resolve")) {
            for (int rev = 6; rev <= 8; rev++)
                fake_print(fd,
                           "{\"event\":\"update\",\"watch\":3,\"service\":\"s\",\"revision\":%d,"
                           "\"stale\":false,\"instances\":[" INST("a:%d") "]}\n",
                           rev, rev);
            /* An update for a watch of nobody's is dropped. */
            fake_print(fd, "{\"event\":\"update\",\"watch\":99," LIST(9, "") "}\n");
            fake_print(fd, "{\"id\":%lld,\"ok\":true," LIST(8, INST("a:8")) "}\n", id);
        } else if (!strcmp(op, "unwatch")) {
            fake_print(fd, "{\"id\":%lld,\"ok\":true,\"removed\":1}\n", id);
        }
    }
}

START_TEST(test_updates_queued_during_call)
{
    struct fake fk;
    disc_client *c;
    struct disc_watch *w;
    struct disc_list *l;
    struct seen s = {0};

    fake_path(&fk);
    fake_listen(&fk, serve_queue, NULL);
    ck_assert_int_eq(disc_client_open(&c, fk.path), 0);
    ck_assert_int_eq(disc_watch(c, "s", NULL, record, &s, &w), 0);
    ck_assert(wait_for(c, &s, "a:1", 0, 5000));
    ck_assert_int_eq(s.n, 1);

    ck_assert_int_eq(disc_resolve(c, "s", NULL, 5000, &l), 0);
    ck_assert_int_eq(l->revision, 8);
    disc_list_free(l);
    /* Nothing ran inside the blocking call; the updates wait, in order. */
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(disc_client_timeout(c), 0);
    ck_assert_int_eq(disc_client_process(c), 0);
    ck_assert_int_eq(s.n, 4);
    for (int i = 1; i <= 3; i++) {
        char want[16];
        snprintf(want, sizeof want, "a:%d", i + 5);
        ck_assert_int_eq(s.rev[i], i + 5);
        ck_assert_str_eq(s.addrs[i], want);
    }
    ck_assert_int_eq(disc_client_timeout(c), -1);
    disc_unwatch(w);
    disc_client_close(c);
    fake_stop(&fk);
}
END_TEST

/* ---- callbacks that end things ------------------------------------------ */

struct ender {
    disc_client *c;
    struct disc_watch *other;
    int calls;
    bool close_client;
};

static void end_in_callback(struct disc_watch *w, const struct disc_list *l, int err, void *arg)
{
    struct ender *e = arg;

    (void)l;
    (void)err;
    e->calls++;
    disc_unwatch(e->other); /* its queued news must not be delivered */
    e->other = NULL;
    if (e->close_client)
        disc_client_close(e->c);
    else
        disc_unwatch(w);
}

static void must_not_run(struct disc_watch *w, const struct disc_list *l, int err, void *arg)
{
    (void)w;
    (void)l;
    (void)err;
    (void)arg;
    ck_abort_msg("a callback ran after its watch ended");
}

static void serve_watches(struct fake *f, int fd, int conn)
{
    char line[4096], op[32];
    int n = 0;

    (void)f;
    (void)conn;
    while (fake_read_line(fd, line, sizeof line, 5000) >= 0) {
        long long id = req_id(line, op, sizeof op);
        if (!strcmp(op, "watch"))
            fake_print(fd, "{\"id\":%lld,\"ok\":true,\"watch\":%d," LIST(5, "") "}\n", id, ++n);
    }
}

START_TEST(test_end_inside_callback)
{
    for (int close_client = 0; close_client <= 1; close_client++) {
        struct fake fk;
        struct ender e = {0};
        struct disc_watch *w1, *w2;
        long long until;

        fake_path(&fk);
        fake_listen(&fk, serve_watches, NULL);
        ck_assert_int_eq(disc_client_open(&e.c, fk.path), 0);
        e.close_client = close_client;
        ck_assert_int_eq(disc_watch(e.c, "s", NULL, end_in_callback, &e, &w1), 0);
        ck_assert_int_eq(disc_watch(e.c, "s", NULL, must_not_run, NULL, &w2), 0);
        e.other = w2;
        /* Both replies are read before any callback runs. */
        until = now_ms() + 5000;
        while (disc_client_timeout(e.c) != 0 && now_ms() < until) {
            struct disc_list *l;
            disc_resolve(e.c, "s", NULL, 50, &l); /* reads, runs nothing */
            disc_list_free(l);
        }
        ck_assert_int_eq(disc_client_timeout(e.c), 0);
        if (close_client) {
            ck_assert_int_eq(disc_client_process(e.c), DISC_ECLOSED);
        } else {
            ck_assert_int_eq(disc_client_process(e.c), 0);
            ck_assert_int_eq(disc_client_wait(e.c, 100), 0);
            disc_client_close(e.c);
        }
        ck_assert_int_eq(e.calls, 1);
        fake_stop(&fk);
    }
}
END_TEST

/* ---- starting before the agent ------------------------------------------ */

struct seen_reqs {
    atomic_int watches, registers;
};

static void serve_record(struct fake *f, int fd, int conn)
{
    struct seen_reqs *sr = f->arg;
    char line[4096], op[32];

    (void)conn;
    while (fake_read_line(fd, line, sizeof line, 5000) >= 0) {
        long long id = req_id(line, op, sizeof op);
        if (!strcmp(op, "watch")) {
            atomic_fetch_add(&sr->watches, 1);
            fake_print(fd, "{\"id\":%lld,\"ok\":true,\"watch\":1," LIST(5, INST("a:1")) "}\n", id);
        } else if (!strcmp(op, "register")) {
            atomic_fetch_add(&sr->registers, 1);
            fake_print(fd, "{\"id\":%lld,\"ok\":true,\"registered\":true}\n", id);
        }
    }
}

START_TEST(test_start_before_agent)
{
    struct fake fk;
    struct seen_reqs sr = {0};
    disc_client *c = NULL;
    struct disc_watch *w;
    struct seen s = {0};
    struct disc_registration r = {.name = "s", .address = "a:1"};
    const char *msg;
    struct disc_list *l;

    fake_path(&fk);
    ck_assert_int_eq(disc_client_open(&c, fk.path), DISC_ENOAGENT);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(disc_client_last_error(c, NULL, &msg), DISC_ENOAGENT);
    ck_assert_ptr_nonnull(strstr(msg, "connect"));
    ck_assert_int_eq(disc_resolve(c, "s", NULL, 1000, &l), DISC_ENOAGENT);
    /* Remembered, and sent once the agent is there. */
    ck_assert_int_eq(disc_register(c, &r, 1000), DISC_ENOAGENT);
    ck_assert_int_eq(disc_watch(c, "s", NULL, record, &s, &w), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert(wait_for(c, &s, NULL, DISC_ENOAGENT, 2000));

    fake_listen(&fk, serve_record, &sr);
    ck_assert(wait_for(c, &s, "a:1", 0, 5000));
    ck_assert_int_eq(count_err(&s, DISC_ENOAGENT, 0), 1);
    ck_assert_int_eq(atomic_load(&sr.watches), 1);
    ck_assert_int_eq(atomic_load(&sr.registers), 1);
    disc_client_close(c);
    fake_stop(&fk);
}
END_TEST

/* ---- timeouts ----------------------------------------------------------- */

static void serve_silent(struct fake *f, int fd, int conn)
{
    char line[4096], op[32];

    (void)f;
    (void)conn;
    /* Answers the first request only after the client gave up on it, and
     * the second at once: the late reply must not be taken for it. */
    if (fake_read_line(fd, line, sizeof line, 5000) < 0)
        return;
    long long id1 = req_id(line, op, sizeof op);
    if (fake_read_line(fd, line, sizeof line, 5000) < 0)
        return;
    long long id2 = req_id(line, op, sizeof op);
    fake_print(fd, "{\"id\":%lld,\"ok\":true," LIST(1, INST("late:1")) "}\n", id1);
    fake_print(fd, "{\"id\":%lld,\"ok\":true," LIST(2, INST("right:1")) "}\n", id2);
    fake_drain(fd);
}

START_TEST(test_timeout_and_late_reply)
{
    struct fake fk;
    disc_client *c;
    struct disc_list *l;
    long long t0;

    fake_path(&fk);
    fake_listen(&fk, serve_silent, NULL);
    ck_assert_int_eq(disc_client_open(&c, fk.path), 0);
    t0 = now_ms();
    ck_assert_int_eq(disc_resolve(c, "s", NULL, 200, &l), DISC_ETIMEDOUT);
    ck_assert_int_ge(now_ms() - t0, 190);
    ck_assert_int_eq(disc_resolve(c, "s", NULL, 5000, &l), 0);
    ck_assert_str_eq(l->instances[0].address, "right:1");
    disc_list_free(l);
    disc_client_close(c);
    fake_stop(&fk);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static Suite *suite(void)
{
    Suite *s = suite_create("client");
    TCase *unit = tcase_create("unit");
    TCase *fake = tcase_create("fake-agent");
    TCase *agent = tcase_create("agent");

    tcase_add_test(unit, test_error_table);
    tcase_add_test(unit, test_bad_arguments);
    tcase_set_timeout(fake, 60);
    tcase_add_loop_test(fake, test_malformed_reply, 0,
                        (int)(sizeof bad_replies / sizeof bad_replies[0]));
    tcase_add_test(fake, test_deep_nesting);
    tcase_add_test(fake, test_line_too_long);
    tcase_add_test(fake, test_nul_in_line);
    tcase_add_test(fake, test_malformed_update);
    tcase_add_test(fake, test_updates_queued_during_call);
    tcase_add_test(fake, test_end_inside_callback);
    tcase_add_test(fake, test_start_before_agent);
    tcase_add_test(fake, test_timeout_and_late_reply);
    tcase_set_timeout(agent, 90);
    tcase_add_test(agent, test_resolve_register_deregister);
    tcase_add_test(agent, test_registration_conflict);
    tcase_add_test(agent, test_watch_sees_other_writer);
    tcase_add_test(agent, test_close_removes_registration);
    tcase_add_test(agent, test_agent_restart);
    tcase_add_test(agent, test_event_loop);
    suite_add_tcase(s, unit);
    suite_add_tcase(s, fake);
    suite_add_tcase(s, agent);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    /* The fake agent writes to clients that hang up. */
    signal(SIGPIPE, SIG_IGN);
    srunner_run_all(sr, CK_ENV); /* CK_VERBOSITY=verbose lists every test */
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
