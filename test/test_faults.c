/* Fault tolerance of the daemon (issue 6, "Faults to survive"): real etcd
 * members that are killed, frozen, stopped and compacted, a real
 * discovery-agent process that is frozen and killed, and a burst of writes
 * by another writer.
 *
 * Every test checks invariants, not only survival:
 *  - the lists the agent serves end equal to what etcd holds (etcdctl is the
 *    judge);
 *  - no watcher's stream has a revision going backwards, or an update line
 *    that repeats the one before it: a reader thread keeps a watch open
 *    through the fault and reads every line;
 *  - our own instance is never missing from etcd for longer than the
 *    documented bound: a monitor thread reads its key from etcd every
 *    100 ms (through the gateway, from whichever member answers) and
 *    measures every run of "absent" answers. Where etcd stays available the
 *    key must never be absent; where etcd (or the agent's only member) goes
 *    away, it must be back within the session TTL plus a few seconds of
 *    etcd being reachable again (docs/architecture.md, "Session").
 *
 * Measured numbers are printed on stderr as "faults: ..." lines.
 * ETCD_HARNESS_KEEP=1 keeps each test's folder (etcd logs, agent.log). */
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agentproc.h"
#include "b64.h"
#include "etcd_proc.h"
#include "proc.h"
#include "testutil.h"

#define TIMEOUT_MS 1000 /* the agent's etcd.timeout */

/* ---- a small etcd gateway client (libcurl, one handle per thread) ------- */

struct gwbuf {
    char *p;
    size_t len, cap;
};

static size_t gw_write(char *data, size_t size, size_t nmemb, void *arg)
{
    struct gwbuf *b = arg;
    size_t n = size * nmemb, take = n;

    if (take > b->cap - 1 - b->len)
        take = b->cap - 1 - b->len;
    memcpy(b->p + b->len, data, take);
    b->len += take;
    b->p[b->len] = '\0';
    return n;
}

/* POSTs body to base+path; the reply's JSON, or NULL (no answer, not 200,
 * not JSON). */
static json_t *gw_post(CURL *h, const char *base, const char *path, const char *body,
                       long timeout_ms)
{
    char url[256], buf[16384];
    struct gwbuf b = {buf, 0, sizeof buf};
    struct curl_slist *hdrs = NULL;
    long code = 0;
    json_t *o = NULL;

    buf[0] = '\0';
    snprintf(url, sizeof url, "%s%s", base, path);
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Grpc-Metadata-Hasleader: true");
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, gw_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (curl_easy_perform(h) == CURLE_OK &&
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code == 200)
        o = json_loadb(buf, b.len, 0, NULL);
    curl_slist_free_all(hdrs);
    return o;
}

/* The header revision of a gateway reply, or -1. */
static long long gw_revision(json_t *o)
{
    const char *s = json_string_value(json_object_get(json_object_get(o, "header"), "revision"));

    return s ? atoll(s) : -1;
}

/* ---- the key monitor: is our key in etcd, every 100 ms ------------------ */

struct keymon {
    pthread_t th;
    pthread_mutex_t mu;
    char urls[ETCD_MAX_MEMBERS][64];
    int n_urls, cur;
    char key[256];
    volatile int stop;
    /* samples */
    int present, absent, unknown;
    long long absent_since; /* start of the absent run under way, or 0 */
    long long longest_gap;  /* ms from the first absent sample to the next present one */
    long long first_absent, last_absent, last_present;
    char lease[32];                     /* of the last present sample (decimal) */
    long long mark, present_after_mark; /* first present sample at or after mark */
    int lease_changes;
    /* the agent's log: when a line with pattern was first written after
     * km_arm_log() (to the 100 ms of the poll) */
    char logpath[600];
    long log_off;
    char pattern[128];
    long long pattern_seen;
};

/* 1 present (lease into lease), 0 absent, -1 no member answered. */
static int km_probe(struct keymon *m, CURL *h, char *lease, size_t llen)
{
    char kb[400], body[512];

    b64_encode(m->key, strlen(m->key), kb);
    snprintf(body, sizeof body, "{\"key\":\"%s\"}", kb);
    for (int i = 0; i < m->n_urls; i++) {
        int k = (m->cur + i) % m->n_urls;
        json_t *o = gw_post(h, m->urls[k], "/v3/kv/range", body, 400);
        if (!o)
            continue;
        m->cur = k;
        json_t *kvs = json_object_get(o, "kvs");
        int st = json_array_size(kvs) > 0;
        if (st) {
            const char *l = json_string_value(json_object_get(json_array_get(kvs, 0), "lease"));
            snprintf(lease, llen, "%s", l ? l : "0");
        }
        json_decref(o);
        return st;
    }
    return -1;
}

static void km_scan_log(struct keymon *m, long long t)
{
    FILE *f;
    char line[4096];

    if (!m->logpath[0] || !(f = fopen(m->logpath, "r")))
        return;
    if (fseek(f, m->log_off, SEEK_SET) == 0) {
        while (fgets(line, sizeof line, f)) {
            size_t n = strlen(line);
            if (n == 0 || line[n - 1] != '\n')
                break; /* a line still being written: read it next time */
            m->log_off += (long)n;
            if (m->pattern[0] && !m->pattern_seen && strstr(line, m->pattern))
                m->pattern_seen = t;
        }
    }
    fclose(f);
}

static void *km_main(void *arg)
{
    struct keymon *m = arg;
    CURL *h = curl_easy_init();

    while (!m->stop) {
        long long t = now_ms();
        char lease[32] = "";
        int st = km_probe(m, h, lease, sizeof lease);

        pthread_mutex_lock(&m->mu);
        if (st == 1) {
            m->present++;
            m->last_present = t;
            if (m->mark && t >= m->mark && !m->present_after_mark)
                m->present_after_mark = t;
            if (m->absent_since) {
                if (t - m->absent_since > m->longest_gap)
                    m->longest_gap = t - m->absent_since;
                m->absent_since = 0;
            }
            if (m->lease[0] && strcmp(m->lease, lease))
                m->lease_changes++;
            snprintf(m->lease, sizeof m->lease, "%s", lease);
        } else if (st == 0) {
            m->absent++;
            if (!m->absent_since)
                m->absent_since = t;
            if (!m->first_absent)
                m->first_absent = t;
            m->last_absent = t;
        } else {
            m->unknown++;
        }
        km_scan_log(m, now_ms());
        pthread_mutex_unlock(&m->mu);
        long long left = t + 100 - now_ms();
        if (left > 0)
            sleep_ms((long)left);
    }
    curl_easy_cleanup(h);
    return NULL;
}

static void km_start(struct keymon *m, struct etcd_cluster *c, const char *key, const char *logpath)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->n_urls = etcd_cluster_size(c);
    for (int i = 0; i < m->n_urls; i++)
        snprintf(m->urls[i], sizeof m->urls[i], "%s", etcd_member_url(c, i));
    snprintf(m->key, sizeof m->key, "%s", key);
    if (logpath) {
        struct stat st;
        snprintf(m->logpath, sizeof m->logpath, "%s", logpath);
        m->log_off = stat(logpath, &st) == 0 ? (long)st.st_size : 0;
    }
    ck_assert_int_eq(pthread_create(&m->th, NULL, km_main, m), 0);
}

/* From now on, note the first sample that finds the key. */
static void km_mark(struct keymon *m)
{
    pthread_mutex_lock(&m->mu);
    m->mark = now_ms();
    m->present_after_mark = 0;
    pthread_mutex_unlock(&m->mu);
}

/* From now on, note when the agent first logs a line containing pattern. */
static void km_arm_log(struct keymon *m, const char *pattern)
{
    struct stat st;

    pthread_mutex_lock(&m->mu);
    if (stat(m->logpath, &st) == 0)
        m->log_off = (long)st.st_size;
    snprintf(m->pattern, sizeof m->pattern, "%s", pattern);
    m->pattern_seen = 0;
    pthread_mutex_unlock(&m->mu);
}

static long long km_pattern_seen(struct keymon *m)
{
    long long t;

    pthread_mutex_lock(&m->mu);
    t = m->pattern_seen;
    pthread_mutex_unlock(&m->mu);
    return t;
}

static void km_stop(struct keymon *m)
{
    m->stop = 1;
    pthread_join(m->th, NULL);
    if (m->absent_since) { /* still absent at the end */
        long long t = now_ms() - m->absent_since;
        if (t > m->longest_gap)
            m->longest_gap = t;
    }
    pthread_mutex_destroy(&m->mu);
}

static void km_report(const struct keymon *m, const char *test)
{
    fprintf(stderr,
            "faults: %s: key monitor: %d present, %d absent, %d unanswered samples; "
            "longest gap %lld ms; lease changes %d\n",
            test, m->present, m->absent, m->unknown, m->longest_gap, m->lease_changes);
}

/* ---- watch readers: every line of a watch, through the fault ------------ */

struct upd {
    long long t;
    long long rev;
    int stale;
    int reply;  /* the watch reply (a list), not an update line */
    int conn;   /* which watch reply it follows: 1 for the first connection's */
    char *list; /* "addr/weight,..." in the agent's order */
};

struct wreader {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char sock[600];
    char req[256];
    int reconnect; /* connect again, and watch again, when the agent goes */
    volatile int stop;
    struct upd *u;
    size_t n, cap;
    int conns;          /* connections that got their watch reply */
    long long last_eof; /* when the last connection ended */
    char err[1024];     /* the first broken invariant */
};

/* "addr/weight,..." of a list object's instances, in their order. */
static char *list_of(json_t *o)
{
    json_t *arr = json_object_get(o, "instances"), *e;
    size_t i, cap = 64, off = 0;
    char *s;

    json_array_foreach(arr, i, e) {
        const char *a = json_string_value(json_object_get(e, "address"));
        cap += (a ? strlen(a) : 1) + 32;
    }
    s = malloc(cap);

    s[0] = '\0';
    json_array_foreach(arr, i, e) {
        const char *a = json_string_value(json_object_get(e, "address"));
        off += (size_t)snprintf(s + off, cap - off, "%s%s/%lld", i ? "," : "", a ? a : "?",
                                (long long)json_integer_value(json_object_get(e, "weight")));
    }
    return s;
}

static void wr_fail(struct wreader *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void wr_fail(struct wreader *w, const char *fmt, ...)
{
    va_list ap;

    if (w->err[0])
        return;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof w->err, fmt, ap);
    va_end(ap);
}

static void wr_line(struct wreader *w, const char *line, size_t len, int conn)
{
    json_t *o = json_loadb(line, len, 0, NULL);
    struct upd u = {.t = now_ms()};

    if (!o) {
        wr_fail(w, "a line that is not JSON: %.200s", line);
        return;
    }
    if (!json_object_get(o, "event")) {
        if (!json_is_true(json_object_get(o, "ok"))) {
            char *t = json_dumps(o, JSON_COMPACT);
            wr_fail(w, "watch refused: %.300s", t ? t : "?");
            free(t);
            json_decref(o);
            return;
        }
        u.reply = 1;
    }
    u.rev = json_integer_value(json_object_get(o, "revision"));
    u.stale = json_is_true(json_object_get(o, "stale"));
    u.list = list_of(o);
    json_decref(o);

    pthread_mutex_lock(&w->mu);
    /* Lines are numbered by watch: the n-th watch reply and its updates. */
    u.conn = w->conns + u.reply;
    if (w->n) {
        const struct upd *p = &w->u[w->n - 1];
        if (u.rev < p->rev)
            wr_fail(w, "revision went backwards: %lld after %lld (line %zu, connection %d%s)",
                    u.rev, p->rev, w->n, conn, u.reply ? ", watch reply" : "");
        if (!u.reply && p->conn == u.conn && u.stale == p->stale && !strcmp(u.list, p->list))
            wr_fail(w, "update line %zu repeats the one before (revision %lld, %s)", w->n, u.rev,
                    u.list);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->u = realloc(w->u, w->cap * sizeof *w->u);
    }
    w->u[w->n++] = u;
    if (u.reply)
        w->conns++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void *wr_main(void *arg)
{
    struct wreader *w = arg;
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    int conn = 0;

    while (!w->stop) {
        int fd = sock_open(w->sock);
        size_t len = 0;
        bool eof = false;

        if (fd < 0 || sock_send(fd, w->req) < 0) {
            if (fd >= 0)
                close(fd);
            sleep_ms(20);
            continue;
        }
        conn++;
        while (!w->stop && !eof) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 100) <= 0)
                continue;
            if (len + 65536 > cap) {
                cap *= 2;
                buf = realloc(buf, cap);
            }
            ssize_t r = read(fd, buf + len, cap - len);
            if (r <= 0) {
                eof = r == 0 || (errno != EINTR && errno != EAGAIN);
                continue;
            }
            len += (size_t)r;
            size_t start = 0;
            for (size_t i = len - (size_t)r; i < len; i++)
                if (buf[i] == '\n') {
                    wr_line(w, buf + start, i - start, conn);
                    start = i + 1;
                }
            memmove(buf, buf + start, len - start);
            len -= start;
        }
        close(fd);
        pthread_mutex_lock(&w->mu);
        if (eof && !w->reconnect)
            wr_fail(w, "the agent closed the watching connection after %zu lines (revision %lld)",
                    w->n, w->n ? w->u[w->n - 1].rev : -1);
        w->last_eof = now_ms();
        pthread_cond_broadcast(&w->cv);
        pthread_mutex_unlock(&w->mu);
        if (!w->reconnect)
            break;
    }
    free(buf);
    return NULL;
}

static void wr_start(struct wreader *w, const char *sock, const char *service, const char *group,
                     int reconnect)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    snprintf(w->sock, sizeof w->sock, "%s", sock);
    if (group)
        snprintf(w->req, sizeof w->req,
                 "{\"op\":\"watch\",\"id\":1,\"service\":\"%s\",\"group\":\"%s\"}", service, group);
    else
        snprintf(w->req, sizeof w->req, "{\"op\":\"watch\",\"id\":1,\"service\":\"%s\"}", service);
    w->reconnect = reconnect;
    ck_assert_int_eq(pthread_create(&w->th, NULL, wr_main, w), 0);
}

/* Waits until the newest line has list want (NULL: any) and staleness
 * stale (-1: any), and at least conns connections got their reply. Returns
 * the ms waited, or -1 after timeout_ms. */
static long long wr_wait(struct wreader *w, const char *want, int stale, int conns, int timeout_ms)
{
    long long start = now_ms(), r = -1;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (!w->reconnect && w->last_eof)
            break; /* that connection is over: nothing more will come */
        if (w->n && w->conns >= conns) {
            const struct upd *u = &w->u[w->n - 1];
            if ((!want || !strcmp(u->list, want)) && (stale < 0 || u->stale == stale)) {
                r = now_ms() - start;
                break;
            }
        }
        long long left = start + timeout_ms - now_ms();
        if (left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long ns = ts.tv_nsec + (left < 50 ? left : 50) * 1000000LL;
        ts.tv_sec += ns / 1000000000LL;
        ts.tv_nsec = ns % 1000000000LL;
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    pthread_mutex_unlock(&w->mu);
    return r;
}

/* The newest line's list, revision and staleness (list copied into buf). */
static size_t wr_last(struct wreader *w, char *buf, size_t len, long long *rev, int *stale)
{
    size_t n;

    pthread_mutex_lock(&w->mu);
    n = w->n;
    buf[0] = '\0';
    if (n) {
        snprintf(buf, len, "%s", w->u[n - 1].list);
        if (rev)
            *rev = w->u[n - 1].rev;
        if (stale)
            *stale = w->u[n - 1].stale;
    }
    pthread_mutex_unlock(&w->mu);
    return n;
}

static size_t wr_count(struct wreader *w)
{
    size_t n;

    pthread_mutex_lock(&w->mu);
    n = w->n;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* When the first line with list want (NULL: any), staleness stale (-1:
 * any), on connection conn or later, was read; -1 if none. */
static long long wr_time_of(struct wreader *w, const char *want, int stale, int conn)
{
    long long t = -1;

    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->n && t < 0; i++) {
        const struct upd *u = &w->u[i];
        if ((!want || !strcmp(u->list, want)) && (stale < 0 || u->stale == stale) &&
            u->conn >= conn)
            t = u->t;
    }
    pthread_mutex_unlock(&w->mu);
    return t;
}

/* Stops the thread; the lines stay readable until wr_free(). */
static void wr_stop(struct wreader *w)
{
    w->stop = 1;
    pthread_join(w->th, NULL);
}

static void wr_free(struct wreader *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->u[i].list);
    free(w->u);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void wr_dump(const struct wreader *w, const char *name)
{
    for (size_t i = 0; i < w->n; i++)
        fprintf(stderr, "  %s[%zu] +%lld ms conn %d %s rev %lld stale %d: %.160s\n", name, i,
                w->u[i].t - w->u[0].t, w->u[i].conn, w->u[i].reply ? "reply " : "update",
                w->u[i].rev, w->u[i].stale, w->u[i].list);
}

/* Every line from index from on (where the list had prev): each change of
 * list must be the next of want[] at exactly revision revs[k], all of them,
 * in order, and nothing else may change the list. Lines that change only
 * "stale" are allowed (they keep list and revision). */
static void wr_check_steps(struct wreader *w, size_t from, const char *prev,
                           const char *const want[], const long long revs[], size_t n_want)
{
    size_t k = 0;
    const char *cur = prev;

    for (size_t i = from; i < w->n; i++) {
        const struct upd *u = &w->u[i];
        if (!strcmp(u->list, cur))
            continue;
        if (k >= n_want || strcmp(u->list, want[k]) || u->rev != revs[k]) {
            wr_dump(w, "watch");
            ck_abort_msg("line %zu: list %s at revision %lld; expected step %zu: %s at %lld", i,
                         u->list, u->rev, k, k < n_want ? want[k] : "(none)",
                         k < n_want ? revs[k] : -1);
        }
        cur = u->list;
        k++;
    }
    if (k != n_want) {
        wr_dump(w, "watch");
        ck_abort_msg("only %zu of %zu changes reached the watcher", k, n_want);
    }
}

/* ---- fixture: a cluster and an agent ------------------------------------ */

struct fx {
    struct etcd_cluster *c;
    struct agentp a;
    char dir[512];
    int ttl;
};

static const char self_key[] = "/micro/self/10.1.0.1:9000";
static const char self_list[] = "10.1.0.1:9000/3";
static const char self_yaml[] = "services:\n"
                                "  - name: self\n"
                                "    address: 10.1.0.1:9000\n"
                                "    weight: 3\n"
                                "    group: A\n";

static void fx_cluster(struct fx *f, int members)
{
    struct etcd_cluster_opts co = {.members = members};

    memset(f, 0, sizeof *f);
    f->c = etcd_cluster_start(&co);
    ck_assert_ptr_nonnull(f->c);
    /* The harness removes its folder when a test fails; with
     * ETCD_HARNESS_KEEP set, the agent's folder (config, log, cache) is
     * kept apart, so that a failure can be looked into. */
    const char *keep = getenv("ETCD_HARNESS_KEEP");
    if (keep && *keep && strcmp(keep, "0")) {
        snprintf(f->dir, sizeof f->dir, "/tmp/faults-agent-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(f->dir));
        fprintf(stderr, "faults: agent folder %s (kept)\n", f->dir);
    } else {
        snprintf(f->dir, sizeof f->dir, "%s/agent", etcd_cluster_dir(f->c));
        mkdir(f->dir, 0755);
    }
}

static void fx_agent(struct fx *f, const char *endpoints, int ttl, const char *yaml)
{
    f->ttl = ttl;
    ck_assert_int_eq(agentp_config(&f->a, f->dir, endpoints, ttl, TIMEOUT_MS, yaml), 0);
    ck_assert_int_eq(agentp_start(&f->a), 0);
}

static void fx_down(struct fx *f)
{
    ck_assert_int_eq(agentp_free(&f->a), 0);
    etcd_cluster_stop(f->c);
}

/* ---- etcdctl: the other writer and the judge ---------------------------- */

/* A numeric field of `etcdctl ... -w fields` output ("\"Name\" : 12"), or -1. */
static long long field_num(const char *out, const char *name)
{
    char pat[64];
    const char *p;

    snprintf(pat, sizeof pat, "\"%s\" : ", name);
    p = strstr(out, pat);
    return p ? atoll(p + strlen(pat)) : -1;
}

/* Runs etcdctl, retrying while the cluster is electing (a put right after
 * a kill may fail once); returns its output in out. */
static void ctl(struct fx *f, char *out, size_t len, const char *const args[])
{
    int rc = -1;

    for (int i = 0; i < 5 && rc != 0; i++) {
        rc = etcdctl(f->c, out, len, args);
        if (rc != 0)
            sleep_ms(500);
    }
    ck_assert_msg(rc == 0, "etcdctl %s %s failed", args[0], args[1] ? args[1] : "");
}

static char *web_value(char *buf, size_t len, const char *addr, int weight)
{
    snprintf(buf, len, "{\"Name\":\"web\",\"Address\":\"%s\",\"Weight\":%d}", addr, weight);
    return buf;
}

/* Puts /micro/<svc>/<addr>; returns the revision of the put. */
static long long ctl_put(struct fx *f, const char *svc, const char *addr, int weight)
{
    char key[256], val[256], out[2048];

    snprintf(key, sizeof key, "/micro/%s/%s", svc, addr);
    web_value(val, sizeof val, addr, weight);
    if (strcmp(svc, "web"))
        snprintf(val, sizeof val, "{\"Name\":\"%s\",\"Address\":\"%s\",\"Weight\":%d}", svc, addr,
                 weight);
    const char *args[] = {"put", key, val, "-w", "fields", NULL};
    ctl(f, out, sizeof out, args);
    long long rev = field_num(out, "Revision");
    ck_assert_int_gt(rev, 0);
    return rev;
}

static long long ctl_del(struct fx *f, const char *svc, const char *addr)
{
    char key[256], out[2048];

    snprintf(key, sizeof key, "/micro/%s/%s", svc, addr);
    const char *args[] = {"del", key, "-w", "fields", NULL};
    ctl(f, out, sizeof out, args);
    long long rev = field_num(out, "Revision");
    ck_assert_int_gt(rev, 0);
    return rev;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What etcd holds under /micro/<svc>/, as "addr/weight,..." sorted by
 * address (the agent's order), only group's instances when group is set.
 * Values that are not instances are left out, as the agent does. */
static char *ctl_list(struct fx *f, const char *svc, const char *group)
{
    size_t cap = 4 << 20, n = 0, ncap = 1024, off = 0;
    char *out = malloc(cap), prefix[256], **items = malloc(ncap * sizeof *items), *res;

    snprintf(prefix, sizeof prefix, "/micro/%s/", svc);
    const char *args[] = {"get", "--prefix", prefix, NULL};
    ctl(f, out, cap, args);
    /* Lines alternate: key, value (our values are one line of JSON). */
    char *save = NULL, *key = strtok_r(out, "\n", &save);
    while (key) {
        char *val = strtok_r(NULL, "\n", &save);
        if (!val)
            break;
        json_t *o = json_loads(val, 0, NULL);
        const char *addr = json_string_value(json_object_get(o, "Address"));
        const char *g = json_string_value(json_object_get(o, "Group"));
        json_int_t w = json_integer_value(json_object_get(o, "Weight"));
        if (addr && (!group || (g && !strcmp(g, group)))) {
            if (n == ncap)
                items = realloc(items, (ncap *= 2) * sizeof *items);
            items[n] = malloc(strlen(addr) + 24);
            sprintf(items[n++], "%s/%lld", addr, (long long)(w > 0 ? w : 1));
        }
        json_decref(o);
        key = strtok_r(NULL, "\n", &save);
    }
    qsort(items, n, sizeof *items, cmp_str);
    res = malloc(n * 48 + 1);
    res[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        off += (size_t)sprintf(res + off, "%s%s", i ? "," : "", items[i]);
        free(items[i]);
    }
    free(items);
    free(out);
    return res;
}

/* The lease a key is attached to (0: none), or -1 if there is no such key. */
static long long ctl_lease(struct fx *f, const char *key)
{
    char out[4096];
    const char *args[] = {"get", key, "-w", "fields", NULL};

    ctl(f, out, sizeof out, args);
    if (field_num(out, "Count") <= 0)
        return -1;
    return field_num(out, "Lease");
}

/* Polls until key is present (present=1) or absent; ms taken, or -1. */
static long long ctl_wait_key(struct fx *f, const char *key, int present, int timeout_ms)
{
    long long start = now_ms();

    while (now_ms() - start < timeout_ms) {
        if ((ctl_lease(f, key) >= 0) == present)
            return now_ms() - start;
        sleep_ms(100);
    }
    return -1;
}

/* ---- the agent's socket ------------------------------------------------- */

static json_t *status(struct fx *f)
{
    json_t *r = agent_call(f->a.sock, "{\"op\":\"status\"}", 5000);

    ck_assert_msg(r != NULL, "no status reply");
    return r;
}

static const char *st_endpoint(json_t *st)
{
    return json_string_value(json_object_get(json_object_get(st, "etcd"), "endpoint"));
}

static long long st_lease(json_t *st)
{
    const char *s = json_string_value(json_object_get(json_object_get(st, "lease"), "id"));

    return s ? (long long)strtoull(s, NULL, 16) : 0;
}

static const char *st_reg_state(json_t *st)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(st, "registrations"), 0), "state"));
}

/* Resolves svc: its list into a malloc'd string; stale and revision out. */
static char *resolve(struct fx *f, const char *svc, int *stale, long long *rev)
{
    char req[256];
    json_t *r;
    char *l;

    snprintf(req, sizeof req, "{\"op\":\"resolve\",\"service\":\"%s\"}", svc);
    r = agent_call(f->a.sock, req, 5000);
    ck_assert_msg(r != NULL, "no reply to %s", req);
    ck_assert_msg(json_is_true(json_object_get(r, "ok")), "resolve %s failed", svc);
    l = list_of(r);
    if (stale)
        *stale = json_is_true(json_object_get(r, "stale"));
    if (rev)
        *rev = json_integer_value(json_object_get(r, "revision"));
    json_decref(r);
    return l;
}

/* The member index whose URL the agent's status names. */
static int member_of(struct fx *f, const char *url)
{
    for (int i = 0; i < etcd_cluster_size(f->c); i++)
        if (url && !strcmp(url, etcd_member_url(f->c, i)))
            return i;
    return -1;
}

/* Makes member to the leader (etcdctl move-leader) unless it is already. */
static void move_leader(struct fx *f, int to)
{
    char out[4096], hex[32] = "";
    const char *list[] = {"member", "list", NULL};

    if (etcd_cluster_leader(f->c) == to)
        return;
    ctl(f, out, sizeof out, list);
    /* "8e9e05c52164694d, started, m0, http://peer, http://client, false" */
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        char client[96];
        snprintf(client, sizeof client, ", %s", etcd_member_url(f->c, to));
        if (strstr(line, client)) {
            snprintf(hex, sizeof hex, "%.*s", (int)strcspn(line, ","), line);
            break;
        }
    }
    ck_assert_msg(hex[0], "member %d not in member list", to);
    const char *mv[] = {"move-leader", hex, NULL};
    ctl(f, out, sizeof out, mv);
    for (int i = 0; i < 50 && etcd_cluster_leader(f->c) != to; i++)
        sleep_ms(100);
    ck_assert_int_eq(etcd_cluster_leader(f->c), to);
}

/* ---- 1, 2, 3: a member goes away while etcd stays available ------------- */

enum member_fault { KILL_AGENTS_MEMBER, KILL_LEADER, FREEZE_AGENTS_MEMBER };

static void member_fault(enum member_fault kind, const char *name)
{
    struct fx f;
    struct keymon km;
    struct wreader wr;
    json_t *st;
    char *l;
    int victim, used;

    fx_cluster(&f, 3);
    ck_assert_int_ge(ctl_put(&f, "web", "10.2.0.1:80", 1), 0);
    fx_agent(&f, etcd_cluster_urls(f.c), 5, self_yaml);
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, 10000), 0);

    st = status(&f);
    used = member_of(&f, st_endpoint(st));
    long long lease = st_lease(st);
    json_decref(st);
    ck_assert_int_ge(used, 0);
    ck_assert_int_ne(lease, 0);
    ck_assert_int_eq(ctl_lease(&f, self_key), lease);

    /* Kill the leader: make sure it is not the agent's member, so that the
     * agent's member loses its leader and stays up. The other two: make
     * sure the agent's member is a follower, so that the cluster keeps its
     * leader and only the agent has to move. Either way: move the
     * leadership to the next member. */
    move_leader(&f, (used + 1) % 3);
    victim = kind == KILL_LEADER ? etcd_cluster_leader(f.c) : used;
    ck_assert_int_ge(victim, 0);

    wr_start(&wr, f.a.sock, "web", NULL, 0);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.1:80/1", 0, 1, 5000), 0);
    km_start(&km, f.c, self_key, f.a.log);
    sleep_ms(300); /* a few "present" samples before the fault */
    km_arm_log(&km, "failed (");

    long long t0 = now_ms();
    if (kind == FREEZE_AGENTS_MEMBER)
        ck_assert_int_eq(etcd_member_freeze(f.c, victim), 0);
    else
        ck_assert_int_eq(etcd_member_kill(f.c, victim), 0);
    /* The other writer waits for the new leader: a put sent during the
     * election can hang for etcdctl's whole 5 s timeout. */
    if (kind == KILL_LEADER)
        ck_assert_int_eq(etcd_cluster_wait_healthy(f.c, 10000), 0);

    /* Another writer's puts after the fault reach the watcher, each one,
     * at its own revision. The first one measures the failover. */
    const char *want[5] = {"10.2.0.1:80/1,10.2.0.2:80/1",
                           "10.2.0.1:80/1,10.2.0.2:80/1,10.2.0.3:80/2",
                           "10.2.0.2:80/1,10.2.0.3:80/2", "10.2.0.2:80/1,10.2.0.3:80/7",
                           "10.2.0.2:80/1,10.2.0.3:80/7,10.2.0.4:80/1"};
    long long revs[5];
    size_t n_steps = 4;
    size_t from = wr_count(&wr);
    revs[0] = ctl_put(&f, "web", "10.2.0.2:80", 1);
    long long t_put = now_ms() - t0;
    long long seen = wr_wait(&wr, want[0], 0, 1, 30000);
    ck_assert_msg(seen >= 0, "a put after the fault never reached the watcher");
    long long t_watch = now_ms() - t0;
    revs[1] = ctl_put(&f, "web", "10.2.0.3:80", 2);
    ck_assert_int_ge(wr_wait(&wr, want[1], 0, 1, 10000), 0);
    revs[2] = ctl_del(&f, "web", "10.2.0.1:80");
    ck_assert_int_ge(wr_wait(&wr, want[2], 0, 1, 10000), 0);
    revs[3] = ctl_put(&f, "web", "10.2.0.3:80", 7);
    ck_assert_int_ge(wr_wait(&wr, want[3], 0, 1, 10000), 0);

    /* The agent no longer uses the victim (asked only now: a status call
     * would itself move the agent away from a dead member). */
    long long t_moved = km_pattern_seen(&km);
    st = status(&f);
    char ep[128];
    snprintf(ep, sizeof ep, "%s", st_endpoint(st) ? st_endpoint(st) : "?");
    if (kind != KILL_LEADER)
        ck_assert_msg(member_of(&f, ep) != victim, "status still names %s", ep);
    ck_assert_msg(json_is_true(json_object_get(json_object_get(st, "etcd"), "connected")),
                  "status: not connected");
    /* Same lease: the session survived the fault. */
    ck_assert_int_eq(st_lease(st), lease);
    ck_assert_str_eq(st_reg_state(st), "registered");
    json_decref(st);
    ck_assert_int_eq(ctl_lease(&f, self_key), lease);

    if (kind == FREEZE_AGENTS_MEMBER) {
        /* Thawed: everything still follows. */
        ck_assert_int_eq(etcd_member_thaw(f.c, victim), 0);
        ck_assert_int_eq(etcd_cluster_wait_healthy(f.c, 10000), 0);
        revs[4] = ctl_put(&f, "web", "10.2.0.4:80", 1);
        ck_assert_int_ge(wr_wait(&wr, want[4], 0, 1, 10000), 0);
        n_steps = 5;
    }
    sleep_ms(300);
    km_stop(&km);
    wr_stop(&wr);
    km_report(&km, name);
    fprintf(stderr,
            "faults: %s: member %d killed/frozen (agent was on %d, now on %s); first put "
            "committed %lld ms after the fault and reached the watcher %lld ms later "
            "(%lld ms in all); the agent logged the endpoint failure %lld ms after the fault\n",
            name, victim, used, ep, t_put, seen, t_watch, t_moved ? t_moved - t0 : -1);
    ck_assert_msg(!wr.err[0], "watcher: %s", wr.err);
    wr_check_steps(&wr, from, "10.2.0.1:80/1", want, revs, n_steps);
    /* etcd stayed available: our key never left it, under one lease. */
    ck_assert_msg(km.absent == 0, "our key was absent in %d samples (longest %lld ms)", km.absent,
                  km.longest_gap);
    ck_assert_int_eq(km.lease_changes, 0);
    ck_assert_int_gt(km.present, 0);
    if (kind == FREEZE_AGENTS_MEMBER)
        /* Seconds, not minutes: the keep-alive (every TTL/3) times out
         * after etcd.timeout and moves the client and its watches. */
        ck_assert_msg(t_watch <= f.ttl * 1000 + 2 * TIMEOUT_MS + 5000,
                      "the agent took %lld ms to move away from a frozen member", t_watch);
    /* Final lists equal etcd's. */
    char *truth = ctl_list(&f, "web", NULL);
    int stale;
    l = resolve(&f, "web", &stale, NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_int_eq(stale, 0);
    free(l);
    free(truth);
    wr_free(&wr);
    fx_down(&f);
}

START_TEST(test_kill_agents_member)
{
    member_fault(KILL_AGENTS_MEMBER, "kill-member");
}
END_TEST

START_TEST(test_kill_leader)
{
    member_fault(KILL_LEADER, "kill-leader");
}
END_TEST

START_TEST(test_freeze_agents_member)
{
    member_fault(FREEZE_AGENTS_MEMBER, "freeze-member");
}
END_TEST

/* ---- 4: the whole cluster down for longer than the TTL ------------------ */

enum outage {
    ETCD_DOWN,   /* a 1-member cluster: its member is killed */
    QUORUM_LOST, /* 3 members: the two the agent does not use are killed */
    CUT_OFF,     /* 3 members, the agent knows member 0 only: it is killed */
};

/*
 * Etcd unreachable for 6 s, twice the session TTL, then back:
 *  - ETCD_DOWN: connections refused;
 *  - QUORUM_LOST: the survivor (the agent's member) answers "no leader" and
 *    cancels the agent's watch for it, the others refuse; the cluster has no
 *    leader, so no lease can expire;
 *  - CUT_OFF: the rest of the cluster runs on: our lease expires there and
 *    our key is deleted (correct), another writer changes the list.
 * The agent serves the last list, stale, throughout; once etcd is back its
 * watch resumes and our key is in etcd again under its live lease, within
 * TTL + 5 s.
 * (A 3-member cluster cannot be killed whole and restarted with the
 * harness: a 3.4 member serves clients only once it has published itself
 * through raft, so etcd_member_start() of the first one waits for a quorum
 * that is not there yet.)
 */
/* The i-th member an outage takes down (i from first to last): with a
 * quorum lost, the two that are not the agent's (mine). */
static int victim(enum outage kind, int i, int mine)
{
    if (kind != QUORUM_LOST)
        return i;
    return i <= mine ? i - 1 : i;
}

static void outage(enum outage kind, const char *name)
{
    struct fx f;
    struct keymon km;
    struct wreader wr;
    json_t *st;
    int stale, members = kind == ETCD_DOWN ? 1 : 3;
    int first = kind == QUORUM_LOST ? 1 : 0, last = kind == CUT_OFF ? 0 : members - 1;
    long long rev;
    char *l;

    fx_cluster(&f, members);
    ctl_put(&f, "web", "10.2.0.1:80", 1);
    fx_agent(&f, kind == CUT_OFF ? etcd_member_url(f.c, 0) : etcd_cluster_urls(f.c), 3, self_yaml);
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, 10000), 0);
    st = status(&f);
    long long lease = st_lease(st);
    /* The agent starts on a member drawn at random (fleet spread): with a
     * quorum lost, the two members it does not use go. */
    int mine = member_of(&f, st_endpoint(st));
    ck_assert_int_ge(mine, 0);
    if (kind != QUORUM_LOST)
        ck_assert_int_eq(mine, 0);
    json_decref(st);
    /* Cut off from a follower: the leader keeps counting our lease down
     * (a new leader would first extend it by a whole TTL). */
    if (kind == CUT_OFF)
        move_leader(&f, 1);
    wr_start(&wr, f.a.sock, "web", NULL, 0);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.1:80/1", 0, 1, 5000), 0);
    km_start(&km, f.c, self_key, NULL);
    sleep_ms(300);
    long long rev1;
    wr_last(&wr, (char[256]){0}, 256, &rev1, NULL);

    long long t0 = now_ms();
    for (int i = first; i <= last; i++)
        ck_assert_int_eq(etcd_member_kill(f.c, victim(kind, i, mine)), 0);
    if (kind == CUT_OFF)
        ctl_put(&f, "web", "10.2.0.3:80", 1);
    /* The last known list stays, marked stale, and is never emptied. */
    long long t_stale = wr_wait(&wr, "10.2.0.1:80/1", 1, 1, 10000);
    ck_assert_msg(t_stale >= 0, "the watcher never saw the list turn stale");
    while (now_ms() - t0 < 6000) {
        l = resolve(&f, "web", &stale, &rev);
        ck_assert_str_eq(l, "10.2.0.1:80/1");
        ck_assert_int_eq(stale, 1);
        ck_assert_int_eq(rev, rev1);
        free(l);
        sleep_ms(250);
    }
    for (int i = first; i <= last; i++)
        ck_assert_int_eq(etcd_member_start(f.c, victim(kind, i, mine)), 0);
    long long t_back = now_ms();
    km_mark(&km);
    ck_assert_int_eq(etcd_cluster_wait_healthy(f.c, 10000), 0);

    /* A put right after the restart is seen; the watch is live again. */
    long long rev2 = ctl_put(&f, "web", "10.2.0.2:80", 1);
    const char *want = kind == CUT_OFF ? "10.2.0.1:80/1,10.2.0.2:80/1,10.2.0.3:80/1"
                                       : "10.2.0.1:80/1,10.2.0.2:80/1";
    long long t_watch = wr_wait(&wr, want, 0, 1, 20000);
    ck_assert_msg(t_watch >= 0, "the watch did not resume after etcd came back");
    long long r;
    wr_last(&wr, (char[256]){0}, 256, &r, NULL);
    /* After a reconnection the agent confirms its list with a range read,
     * stamped with etcd's revision at that moment: at least the put's (it
     * may be later: our own re-registration comes after it). Revisions
     * never going back is checked by the reader throughout. */
    ck_assert_int_ge(r, rev2);

    /* Ours: registered (key present, under the agent's live lease). */
    long long t_key = -1, cur = 0;
    while (now_ms() - t_back < (f.ttl + 10) * 1000) {
        st = status(&f);
        cur = st_lease(st);
        const char *state = st_reg_state(st);
        bool ok = state && !strcmp(state, "registered") && cur && ctl_lease(&f, self_key) == cur;
        json_decref(st);
        if (ok) {
            t_key = now_ms() - t_back;
            break;
        }
        sleep_ms(100);
    }
    ck_assert_msg(t_key >= 0, "our key is not back under the agent's lease");
    sleep_ms(300);
    km_stop(&km);
    wr_stop(&wr);
    km_report(&km, name);
    fprintf(stderr,
            "faults: %s: list stale after %lld ms; etcd back after %lld ms; a put after the "
            "restart reached the watcher in %lld ms; our key found in etcd %lld ms after etcd "
            "was back (confirmed under the agent's lease at %lld ms); lease %s (%llx -> %llx)\n",
            name, t_stale, t_back - t0, t_watch,
            km.present_after_mark ? km.present_after_mark - t_back : -1, t_key,
            cur == lease ? "kept" : "replaced", (unsigned long long)lease, (unsigned long long)cur);
    if (getenv("FAULTS_DUMP"))
        wr_dump(&wr, name);
    ck_assert_msg(!wr.err[0], "watcher: %s", wr.err);
    /* Bound: any absence ends within TTL + a few seconds of etcd's return. */
    ck_assert_msg(km.absent == 0 || km.last_absent <= t_back + f.ttl * 1000 + 5000,
                  "our key was still absent %lld ms after etcd came back", km.last_absent - t_back);
    ck_assert_int_gt(km.present, 0);
    if (kind == CUT_OFF) {
        /* The lease did expire in the cluster, so this was a real loss. */
        ck_assert_msg(km.absent > 0, "our key never left etcd while the agent was cut off");
        ck_assert_int_ne(cur, lease);
    }

    char *truth = ctl_list(&f, "web", NULL);
    l = resolve(&f, "web", &stale, NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_int_eq(stale, 0);
    free(l);
    free(truth);
    truth = ctl_list(&f, "self", NULL);
    ck_assert_str_eq(truth, self_list);
    free(truth);
    if (kind == CUT_OFF) {
        /* etcd changed while the agent was cut off: from then on the old
         * list may only be served as stale, never as live. */
        for (size_t i = 0; i < wr.n; i++)
            if (wr.u[i].t > t0 && !wr.u[i].stale && !strcmp(wr.u[i].list, "10.2.0.1:80/1")) {
                wr_dump(&wr, name);
                ck_abort_msg("line %zu: the list from before the cut-off, which etcd had "
                             "replaced meanwhile, served as live (stale false) at revision %lld",
                             i, wr.u[i].rev);
            }
    }
    wr_free(&wr);
    fx_down(&f);
}

START_TEST(test_etcd_down_past_ttl)
{
    outage(ETCD_DOWN, "etcd-down");
}
END_TEST

START_TEST(test_quorum_lost_past_ttl)
{
    outage(QUORUM_LOST, "quorum-lost");
}
END_TEST

START_TEST(test_cut_off_past_ttl)
{
    outage(CUT_OFF, "cut-off");
}
END_TEST

/* ---- 5: history compacted while the agent is cut off -------------------- */

START_TEST(test_compacted_while_cut_off)
{
    struct fx f;
    struct keymon km;
    struct wreader wr;
    char out[4096];
    int stale;

    fx_cluster(&f, 3);
    ctl_put(&f, "web", "10.2.0.1:80", 1);
    ctl_put(&f, "web", "10.2.0.2:80", 1);
    /* The agent knows member 0 only. */
    fx_agent(&f, etcd_member_url(f.c, 0), 5, self_yaml);
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, 10000), 0);
    wr_start(&wr, f.a.sock, "web", NULL, 0);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.1:80/1,10.2.0.2:80/1", 0, 1, 5000), 0);
    km_start(&km, f.c, self_key, NULL);
    sleep_ms(300);

    ck_assert_int_eq(etcd_member_kill(f.c, 0), 0);
    long long t0 = now_ms();
    /* (If member 0 led, a put sent during the election can hang for
     * etcdctl's whole 5 s timeout.) */
    ck_assert_int_eq(etcd_cluster_wait_healthy(f.c, 10000), 0);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.1:80/1,10.2.0.2:80/1", 1, 1, 10000), 0);
    size_t from = wr_count(&wr);
    /* Through the other members: changes the agent cannot see, one key
     * that comes and goes entirely, then the history is compacted away. */
    ctl_put(&f, "web", "10.2.0.3:80", 1);
    ctl_del(&f, "web", "10.2.0.1:80");
    ctl_put(&f, "web", "10.2.0.4:80", 1);
    ctl_del(&f, "web", "10.2.0.4:80");
    long long last = ctl_put(&f, "web", "10.2.0.2:80", 5);
    const char *get[] = {"get", "/micro/web/", "-w", "fields", NULL};
    ctl(&f, out, sizeof out, get);
    long long newest = field_num(out, "Revision");
    ck_assert_int_ge(newest, last);
    char rv[32];
    snprintf(rv, sizeof rv, "%lld", newest);
    const char *compact[] = {"compact", rv, NULL};
    ctl(&f, out, sizeof out, compact);
    ck_assert_int_eq(etcd_member_start(f.c, 0), 0);
    long long t_back = now_ms();

    /* One correct list: the final one, at a revision no older than the
     * compaction, with nothing of the history in between. */
    const char *final = "10.2.0.2:80/5,10.2.0.3:80/1";
    long long t_list = wr_wait(&wr, final, 0, 1, 20000);
    ck_assert_msg(t_list >= 0, "the watcher never got the list after the compaction");
    /* The agent confirms its list with a range read as soon as the stream
     * is back, so the right list may come before etcd's compaction notice
     * (sent ~100 ms after the stream is created); the watch must still go
     * through the compaction path. */
    bool compacted = false;
    for (int i = 0; i < 50 && !compacted; i++) {
        compacted = agentp_log_has(&f.a, "compacted");
        if (!compacted)
            sleep_ms(100);
    }
    ck_assert_msg(compacted, "the agent did not go through the compaction path");
    /* A later change still follows. */
    long long rev = ctl_put(&f, "web", "10.2.0.5:80", 1);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.2:80/5,10.2.0.3:80/1,10.2.0.5:80/1", 0, 1, 10000), 0);
    long long r;
    wr_last(&wr, (char[256]){0}, 256, &r, NULL);
    ck_assert_int_eq(r, rev);
    /* Ours is back (if the lease lapsed while cut off) within the bound. */
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, (f.ttl + 5) * 1000), 0);
    sleep_ms(300);
    km_stop(&km);
    wr_stop(&wr);
    km_report(&km, "compaction");
    fprintf(stderr,
            "faults: compaction: member 0 down %lld ms; watcher had the compacted list %lld ms "
            "after its restart\n",
            t_back - t0, t_list);
    ck_assert_msg(!wr.err[0], "watcher: %s", wr.err);
    ck_assert_msg(km.absent == 0 || km.last_absent <= t_back + f.ttl * 1000 + 5000,
                  "our key was still absent %lld ms after the member came back",
                  km.last_absent - t_back);
    char *truth = ctl_list(&f, "web", NULL);
    char *l = resolve(&f, "web", &stale, NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_int_eq(stale, 0);
    free(l);
    free(truth);
    pthread_mutex_lock(&wr.mu);
    size_t lists = 0;
    for (size_t i = from; i < wr.n; i++) {
        const struct upd *u = &wr.u[i];
        if (!strcmp(u->list, "10.2.0.1:80/1,10.2.0.2:80/1")) {
            /* The old list may only be served as stale. */
            if (!u->stale) {
                wr_dump(&wr, "watch");
                ck_abort_msg("line %zu: the pre-compaction list, from before member 0 went "
                             "down, served as live (stale false) at revision %lld",
                             i, u->rev);
            }
            continue;
        }
        if (!strcmp(u->list, final)) {
            ck_assert_msg(u->rev >= newest, "compacted list at revision %lld < %lld", u->rev,
                          newest);
            lists++;
            continue;
        }
        if (!strcmp(u->list, "10.2.0.2:80/5,10.2.0.3:80/1,10.2.0.5:80/1"))
            continue;
        wr_dump(&wr, "watch");
        ck_abort_msg("line %zu has a list that never was etcd's whole state: %s", i, u->list);
    }
    pthread_mutex_unlock(&wr.mu);
    ck_assert_int_ge(lists, 1);
    wr_free(&wr);
    fx_down(&f);
}
END_TEST

/* ---- 6: the agent frozen past its TTL ----------------------------------- */

START_TEST(test_agent_frozen_past_ttl)
{
    struct fx f;
    struct keymon km;
    struct wreader self, web;
    json_t *st;
    int stale;

    fx_cluster(&f, 1);
    ctl_put(&f, "web", "10.2.0.1:80", 1);
    fx_agent(&f, etcd_cluster_urls(f.c), 3, self_yaml);
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, 10000), 0);
    st = status(&f);
    long long lease = st_lease(st);
    json_decref(st);
    wr_start(&self, f.a.sock, "self", NULL, 0);
    wr_start(&web, f.a.sock, "web", NULL, 0);
    ck_assert_int_ge(wr_wait(&self, self_list, 0, 1, 5000), 0);
    ck_assert_int_ge(wr_wait(&web, "10.2.0.1:80/1", 0, 1, 5000), 0);
    km_start(&km, f.c, self_key, NULL);
    sleep_ms(300);

    ck_assert_int_eq(proc_signal(f.a.p, SIGSTOP), 0);
    ck_assert_int_eq(proc_wait_stopped(f.a.p, 5000), 0);
    long long t0 = now_ms();
    /* Its lease expires: its key leaves etcd (that is correct). */
    long long t_gone = ctl_wait_key(&f, self_key, 0, (f.ttl + 5) * 1000);
    ck_assert_msg(t_gone >= 0, "our key stayed in etcd with the agent frozen");
    long long rev = ctl_put(&f, "web", "10.2.0.2:80", 1);
    sleep_ms(500);
    ck_assert_int_eq(proc_signal(f.a.p, SIGCONT), 0);
    long long t_cont = now_ms();

    /* It notices the lost lease, takes a new one and registers again. */
    long long t_back = -1, cur = 0;
    while (now_ms() - t_cont < (f.ttl + 10) * 1000) {
        long long l = ctl_lease(&f, self_key);
        if (l > 0 && l != lease) {
            st = status(&f);
            cur = st_lease(st);
            json_decref(st);
            if (cur == l) {
                t_back = now_ms() - t_cont;
                break;
            }
        }
        sleep_ms(100);
    }
    ck_assert_msg(t_back >= 0, "the agent did not register again under a new lease");
    ck_assert_int_ge(wr_wait(&web, "10.2.0.1:80/1,10.2.0.2:80/1", 0, 1, 10000), 0);
    long long t_web = wr_time_of(&web, "10.2.0.1:80/1,10.2.0.2:80/1", 0, 1) - t_cont;
    long long r;
    wr_last(&web, (char[256]){0}, 256, &r, NULL);
    ck_assert_int_ge(r, rev);
    ck_assert_int_ge(wr_wait(&self, self_list, 0, 1, 10000), 0);
    sleep_ms(300);
    km_stop(&km);
    wr_stop(&self);
    wr_stop(&web);
    km_report(&km, "agent-frozen");
    fprintf(stderr,
            "faults: agent-frozen: key left etcd %lld ms after SIGSTOP (ttl %d s); registered "
            "again under a new lease %lld ms after SIGCONT; watcher had the put made while "
            "frozen %lld ms after SIGCONT\n",
            t_gone, f.ttl, t_back, t_web);
    ck_assert_msg(!self.err[0], "self watcher: %s", self.err);
    ck_assert_msg(!web.err[0], "web watcher: %s", web.err);
    ck_assert_msg(t_back <= f.ttl * 1000 + 5000, "registered again only %lld ms after SIGCONT",
                  t_back);
    /* The key was gone only while the agent was frozen, plus the bound. */
    ck_assert_int_gt(km.absent, 0);
    ck_assert_msg(km.last_absent <= t_cont + f.ttl * 1000 + 5000,
                  "absent until %lld ms after SIGCONT", km.last_absent - t_cont);
    (void)t0;
    char *l = resolve(&f, "self", &stale, NULL);
    char *truth = ctl_list(&f, "self", NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_str_eq(l, self_list);
    free(l);
    free(truth);
    l = resolve(&f, "web", &stale, NULL);
    truth = ctl_list(&f, "web", NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_int_eq(stale, 0);
    free(l);
    free(truth);
    wr_free(&self);
    wr_free(&web);
    fx_down(&f);
}
END_TEST

/* ---- 7: the agent killed (SIGKILL) and restarted ------------------------ */

START_TEST(test_agent_killed_and_restarted)
{
    struct fx f;
    struct keymon km;
    struct wreader wr;
    json_t *st;
    int stale;
    char *l, *truth;

    fx_cluster(&f, 1);
    ctl_put(&f, "web", "10.2.0.1:80", 1);
    fx_agent(&f, etcd_cluster_urls(f.c), 3, self_yaml);
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, 10000), 0);
    /* A client that reconnects by itself and watches again. */
    wr_start(&wr, f.a.sock, "web", NULL, 1);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.1:80/1", 0, 1, 5000), 0);
    km_start(&km, f.c, self_key, NULL);
    sleep_ms(500); /* past the 200 ms coalescing of the disk cache */

    /* (a) etcd up: SIGKILL, a change while the agent is dead, restart. */
    st = status(&f);
    long long lease1 = st_lease(st);
    json_decref(st);
    ck_assert_int_eq(proc_signal(f.a.p, SIGKILL), 0);
    proc_wait(f.a.p, 5000, NULL);
    agentp_free(&f.a);
    long long t0 = now_ms();
    long long rev = ctl_put(&f, "web", "10.2.0.2:80", 1);
    long long t_spawn = now_ms();
    ck_assert_int_eq(agentp_start(&f.a), 0);
    ck_assert_msg(wr_wait(&wr, NULL, -1, 2, 10000) >= 0, "the client did not reconnect");
    ck_assert_msg(wr_wait(&wr, "10.2.0.1:80/1,10.2.0.2:80/1", 0, 2, 10000) >= 0,
                  "the reconnected client never got the current list");
    long long t_recon = wr_time_of(&wr, NULL, -1, 2) - t_spawn;
    long long t_cur = wr_time_of(&wr, "10.2.0.1:80/1,10.2.0.2:80/1", 0, 2) - t_spawn;
    long long r;
    wr_last(&wr, (char[256]){0}, 256, &r, NULL);
    ck_assert_int_ge(r, rev);
    /* Ours: under the new agent's lease, and it stays after the old lease
     * expires. */
    st = status(&f);
    long long lease2 = st_lease(st);
    json_decref(st);
    ck_assert_int_ne(lease2, 0);
    ck_assert_int_ne(lease2, lease1);
    long long t_key = -1;
    for (int i = 0; i < 100 && t_key < 0; i++) {
        if (ctl_lease(&f, self_key) == lease2)
            t_key = now_ms() - t0;
        else
            sleep_ms(100);
    }
    ck_assert_int_ge(t_key, 0);
    fprintf(stderr,
            "faults: agent-kill (etcd up): the client had its watch reply again %lld ms after "
            "the new agent was spawned, the current list %lld ms after; key under the new lease "
            "%lld ms after the kill\n",
            t_recon, t_cur, t_key);
    sleep_ms((f.ttl + 2) * 1000); /* the old lease is gone now */
    ck_assert_int_eq(ctl_lease(&f, self_key), lease2);

    /* (b) etcd down: SIGKILL, restart: the saved lists within a second. */
    ck_assert_int_eq(etcd_member_kill(f.c, 0), 0);
    ck_assert_int_ge(wr_wait(&wr, "10.2.0.1:80/1,10.2.0.2:80/1", 1, 2, 10000), 0);
    sleep_ms(500);
    ck_assert_int_eq(proc_signal(f.a.p, SIGKILL), 0);
    proc_wait(f.a.p, 5000, NULL);
    agentp_free(&f.a);
    t_spawn = now_ms();
    ck_assert_int_eq(agentp_spawn(&f.a), 0);
    long long t_first = -1;
    json_t *res = NULL;
    while (now_ms() - t_spawn < 5000) {
        res = agent_call(f.a.sock, "{\"op\":\"resolve\",\"service\":\"web\"}", 200);
        if (res && json_is_true(json_object_get(res, "ok"))) {
            t_first = now_ms() - t_spawn;
            break;
        }
        json_decref(res);
        res = NULL;
        sleep_ms(10);
    }
    ck_assert_msg(t_first >= 0, "the restarted agent served nothing with etcd down");
    l = list_of(res);
    ck_assert_str_eq(l, "10.2.0.1:80/1,10.2.0.2:80/1");
    ck_assert(json_is_true(json_object_get(res, "stale")));
    free(l);
    json_decref(res);
    ck_assert_msg(wr_wait(&wr, "10.2.0.1:80/1,10.2.0.2:80/1", 1, 3, 10000) >= 0,
                  "the client did not reconnect to the agent started with etcd down");
    long long t_recon2 = wr_time_of(&wr, NULL, -1, 3) - t_spawn;

    /* etcd back: live again, converging to etcd's truth. */
    ck_assert_int_eq(etcd_member_start(f.c, 0), 0);
    long long t_back = now_ms();
    rev = ctl_put(&f, "web", "10.2.0.3:80", 1);
    ck_assert_msg(wr_wait(&wr, "10.2.0.1:80/1,10.2.0.2:80/1,10.2.0.3:80/1", 0, 3, 20000) >= 0,
                  "the watch did not become live after etcd came back");
    long long t_live = wr_time_of(&wr, "10.2.0.1:80/1,10.2.0.2:80/1,10.2.0.3:80/1", 0, 3) - t_back;
    ck_assert_int_ge(ctl_wait_key(&f, self_key, 1, (f.ttl + 5) * 1000), 0);
    st = status(&f);
    long long lease3 = st_lease(st);
    json_decref(st);
    long long t_key3 = -1;
    while (now_ms() - t_back < (f.ttl + 8) * 1000) {
        st = status(&f);
        lease3 = st_lease(st);
        json_decref(st);
        if (lease3 && ctl_lease(&f, self_key) == lease3) {
            t_key3 = now_ms() - t_back;
            break;
        }
        sleep_ms(100);
    }
    ck_assert_msg(t_key3 >= 0, "our key is not under the restarted agent's lease");
    sleep_ms(300);
    km_stop(&km);
    wr_stop(&wr);
    km_report(&km, "agent-kill");
    fprintf(stderr,
            "faults: agent-kill (etcd down): first resolve served %lld ms after spawn (stale, "
            "from disk); the watching client had its reply %lld ms after spawn; after etcd "
            "returned: a put reached the watcher at %lld ms, key under the new lease at %lld ms\n",
            t_first, t_recon2, t_live, t_key3);
    ck_assert_msg(!wr.err[0], "watcher: %s", wr.err);
    ck_assert_msg(t_first <= 1000, "first list only %lld ms after spawn", t_first);
    ck_assert_msg(km.absent == 0 || km.longest_gap <= f.ttl * 1000 + 5000,
                  "our key was absent for %lld ms", km.longest_gap);
    truth = ctl_list(&f, "web", NULL);
    l = resolve(&f, "web", &stale, NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_int_eq(stale, 0);
    free(l);
    free(truth);
    wr_free(&wr);
    fx_down(&f);
}
END_TEST

/* ---- 8: a burst by another writer --------------------------------------- */

/* Pings the agent every 50 ms on one connection and keeps the slowest
 * answer: how long the agent's loop leaves a client waiting. */
struct pinger {
    pthread_t th;
    char sock[600];
    volatile int stop;
    long long worst, worst_at;
    int lost;
};

static void *pinger_main(void *arg)
{
    struct pinger *p = arg;
    int fd = sock_open(p->sock);

    while (!p->stop && fd >= 0) {
        long long t = now_ms();
        json_t *r = sock_call(fd, "{\"op\":\"ping\"}", 30000);
        long long d = now_ms() - t;
        if (!r) {
            p->lost++;
            break;
        }
        json_decref(r);
        if (d > p->worst) {
            p->worst = d;
            p->worst_at = t;
        }
        sleep_ms(50);
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

#define BURST_N 1000

struct burst_writer {
    pthread_t th;
    const char *url;
    int parity; /* keys i with i % 2 == parity */
    long long last_rev;
    int failures;
    char err[256];
};

static void burst_addr(char *buf, size_t len, int i)
{
    snprintf(buf, len, "10.3.%d.%d:80", i / 200, i % 200 + 1);
}

static int burst_weight(int i)
{
    return i % 10 == 3 ? 9 : 1 + i % 5;
}

static int burst_op(struct burst_writer *b, CURL *h, int i, int del, int weight)
{
    char addr[64], key[128], val[256], kb[256], vb[512], body[1024];

    burst_addr(addr, sizeof addr, i);
    snprintf(key, sizeof key, "/micro/burst/%s", addr);
    b64_encode(key, strlen(key), kb);
    if (del) {
        snprintf(body, sizeof body, "{\"key\":\"%s\"}", kb);
    } else {
        snprintf(val, sizeof val,
                 "{\"Name\":\"burst\",\"Address\":\"%s\",\"Weight\":%d,\"Group\":\"%s\","
                 "\"Metadata\":{\"version\":\"1.4.%d\",\"zone\":\"eu-west-1%c\"}}",
                 addr, weight, i % 4 == 1 ? "A" : "B", i % 7, 'a' + i % 3);
        b64_encode(val, strlen(val), vb);
        snprintf(body, sizeof body, "{\"key\":\"%s\",\"value\":\"%s\"}", kb, vb);
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        json_t *o = gw_post(h, b->url, del ? "/v3/kv/deleterange" : "/v3/kv/put", body, 5000);
        long long rev = gw_revision(o);
        json_decref(o);
        if (rev > 0) {
            if (rev > b->last_rev)
                b->last_rev = rev;
            return 0;
        }
        b->failures++;
    }
    snprintf(b->err, sizeof b->err, "%s of key %d failed 5 times", del ? "delete" : "put", i);
    return -1;
}

/* Even keys are put, then deleted 6 keys later; odd keys are put, and
 * those with i % 10 == 3 put again with another weight. Final state: the
 * 500 odd keys. */
static void *burst_main(void *arg)
{
    struct burst_writer *b = arg;
    CURL *h = curl_easy_init();

    for (int i = b->parity; i < BURST_N && !b->err[0]; i += 2) {
        burst_op(b, h, i, 0, i % 10 == 3 ? 1 : burst_weight(i));
        if (b->parity == 0 && i >= 12)
            burst_op(b, h, i - 12, 1, 0);
        if (b->parity == 1 && i % 10 == 3 && i >= 20)
            burst_op(b, h, i - 20, 0, burst_weight(i - 20));
    }
    for (int i = BURST_N - 12 + b->parity; i < BURST_N && !b->err[0]; i += 2)
        if (b->parity == 0)
            burst_op(b, h, i, 1, 0);
    for (int i = BURST_N - 20 + b->parity; i < BURST_N && !b->err[0]; i += 2)
        if (b->parity == 1 && i % 10 == 3)
            burst_op(b, h, i, 0, burst_weight(i));
    curl_easy_cleanup(h);
    return NULL;
}

START_TEST(test_burst)
{
    struct fx f;
    struct keymon km;
    struct wreader wr[3];
    struct burst_writer bw[2];
    char *l, *truth, *truth_a;
    int stale;

    fx_cluster(&f, 1);
    fx_agent(&f, etcd_cluster_urls(f.c), 5,
             "services:\n  - name: burst\n    address: 10.1.0.1:9000\n    weight: 3\n"
             "    group: A\n");
    ck_assert_int_ge(ctl_wait_key(&f, "/micro/burst/10.1.0.1:9000", 1, 10000), 0);
    wr_start(&wr[0], f.a.sock, "burst", NULL, 0);
    wr_start(&wr[1], f.a.sock, "burst", NULL, 0);
    wr_start(&wr[2], f.a.sock, "burst", "A", 0);
    for (int i = 0; i < 3; i++)
        ck_assert_int_ge(wr_wait(&wr[i], self_list, 0, 1, 5000), 0);
    km_start(&km, f.c, "/micro/burst/10.1.0.1:9000", NULL);
    sleep_ms(300);

    struct pinger pg = {0};
    snprintf(pg.sock, sizeof pg.sock, "%s", f.a.sock);
    ck_assert_int_eq(pthread_create(&pg.th, NULL, pinger_main, &pg), 0);

    long long t0 = now_ms();
    for (int i = 0; i < 2; i++) {
        memset(&bw[i], 0, sizeof bw[i]);
        bw[i].url = etcd_member_url(f.c, 0);
        bw[i].parity = i;
        ck_assert_int_eq(pthread_create(&bw[i].th, NULL, burst_main, &bw[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(bw[i].th, NULL);
    long long t_burst = now_ms() - t0;
    for (int i = 0; i < 2; i++)
        ck_assert_msg(!bw[i].err[0], "writer %d: %s", i, bw[i].err);
    long long last = bw[0].last_rev > bw[1].last_rev ? bw[0].last_rev : bw[1].last_rev;

    truth = ctl_list(&f, "burst", NULL);
    truth_a = ctl_list(&f, "burst", "A");
    /* The known final state: our instance and the 500 odd keys. */
    size_t n = 1;
    for (const char *p = truth; *p; p++)
        n += *p == ',';
    ck_assert_uint_eq(n, BURST_N / 2 + 1);
    ck_assert_ptr_nonnull(strstr(truth, "10.1.0.1:9000/3"));

    long long t_conv[3];
    for (int i = 0; i < 3; i++)
        t_conv[i] = wr_wait(&wr[i], i == 2 ? truth_a : truth, 0, 1, 30000);
    /* Our key under the agent's current lease before the monitor stops,
     * so that a gap is measured whole. */
    for (int i = 0; i < 100; i++) {
        json_t *st = status(&f);
        long long cur = st_lease(st);
        json_decref(st);
        if (cur && ctl_lease(&f, "/micro/burst/10.1.0.1:9000") == cur)
            break;
        sleep_ms(100);
    }
    sleep_ms(500); /* nothing more may come */
    pg.stop = 1;
    pthread_join(pg.th, NULL);
    km_stop(&km);
    for (int i = 0; i < 3; i++)
        wr_stop(&wr[i]);
    km_report(&km, "burst");
    fprintf(stderr,
            "faults: burst: %d puts, %d deletes, %d overwrites in %lld ms (%d retried); "
            "watchers converged %lld/%lld/%lld ms after the burst; %zu/%zu/%zu lines; "
            "slowest ping %lld ms (sent %lld ms after the burst began)\n",
            BURST_N, BURST_N / 2, BURST_N / 10, t_burst, bw[0].failures + bw[1].failures, t_conv[0],
            t_conv[1], t_conv[2], wr[0].n, wr[1].n, wr[2].n, pg.worst, pg.worst_at - t0);
    for (int i = 0; i < 3; i++)
        if (wr[i].err[0])
            fprintf(stderr, "faults: burst: watcher %d: %s\n", i, wr[i].err);
    /* Our key: etcd stayed available, so it never left, under one lease. */
    ck_assert_msg(km.absent == 0 && km.lease_changes == 0,
                  "our key was absent from etcd in %d samples (longest %lld ms) and changed "
                  "lease %d times during another writer's burst",
                  km.absent, km.longest_gap, km.lease_changes);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(!wr[i].err[0], "watcher %d: %s", i, wr[i].err);
        /* Its last line is etcd's final state, at the last write's revision. */
        const struct upd *u = &wr[i].u[wr[i].n - 1];
        ck_assert_msg(!strcmp(u->list, i == 2 ? truth_a : truth),
                      "watcher %d: its last list (revision %lld) is not etcd's final state", i,
                      u->rev);
        ck_assert_int_eq(u->stale, 0);
        if (i < 2)
            ck_assert_int_eq(u->rev, last);
    }
    l = resolve(&f, "burst", &stale, NULL);
    ck_assert_str_eq(l, truth);
    ck_assert_int_eq(stale, 0);
    free(l);
    json_t *st = status(&f);
    ck_assert_str_eq(st_reg_state(st), "registered");
    ck_assert_int_eq(ctl_lease(&f, "/micro/burst/10.1.0.1:9000"), st_lease(st));
    json_decref(st);
    free(truth);
    free(truth_a);
    for (int i = 0; i < 3; i++)
        wr_free(&wr[i]);
    fx_down(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("faults");
    TCase *members = tcase_create("members");
    TCase *down = tcase_create("outage");
    TCase *agent = tcase_create("agent");
    TCase *burst = tcase_create("burst");

    tcase_set_timeout(members, 90);
    tcase_add_test(members, test_kill_agents_member);
    tcase_add_test(members, test_kill_leader);
    tcase_add_test(members, test_freeze_agents_member);
    tcase_set_timeout(down, 90);
    tcase_add_test(down, test_etcd_down_past_ttl);
    tcase_add_test(down, test_quorum_lost_past_ttl);
    tcase_add_test(down, test_cut_off_past_ttl);
    tcase_add_test(down, test_compacted_while_cut_off);
    tcase_set_timeout(agent, 90);
    tcase_add_test(agent, test_agent_frozen_past_ttl);
    tcase_add_test(agent, test_agent_killed_and_restarted);
    tcase_set_timeout(burst, 90);
    tcase_add_test(burst, test_burst);
    suite_add_tcase(s, members);
    suite_add_tcase(s, down);
    suite_add_tcase(s, agent);
    suite_add_tcase(s, burst);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
