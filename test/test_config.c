/* Unit tests for the configuration loader, agent/config/.
 *
 * Bad input lives as data: every test/data/config-invalid/NAME.yaml must be
 * refused with the message in NAME.err, which holds the text that follows
 * "FILE:" (e.g. "4:3: unknown key 'tiemout' in etcd"). A case that needs a
 * conf.d folder is a folder of its own, config-invalid/NAME/, holding
 * agent.yaml, agent.err and conf.d/; in an .err file "{dir}" stands for the
 * case's folder, and a text that starts with "{dir}" is the whole message
 * (the error is then in another file than the main one). Every
 * test/data/config-valid/NAME.yaml and config-valid/NAME/agent.yaml must
 * load; a few are also checked value by value. Cases that depend on file
 * permissions, sizes or absolute paths are written to a temporary folder by
 * the tests themselves.
 *
 * This file includes the loader's files (agent/config/config*.c) to reach their
 * static helpers and to wrap their allocations, so that every allocation
 * failure can be tried (jansson's test_chaos.c does the same). It must
 * therefore not be linked with a second copy of their objects; linking with
 * libagent.a is fine, because an archive member is only pulled in for
 * symbols that are still missing. (check_spec.c, which builds a service's
 * check, is linked, not included: its allocations are not wrapped.) */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml.h>

#include "testutil.h"

/* ---- Allocation failure injection ------------------------------------ */

/* When fail_after is n >= 0, the allocation after n successful ones fails
 * (and so does every later one, as on a machine that is really out of
 * memory); -1 turns failures off. */
static long fail_after = -1;
static int alloc_failed;

static int inject(void)
{
    if (fail_after < 0)
        return 0;
    if (fail_after == 0) {
        alloc_failed = 1;
        return 1;
    }
    fail_after--;
    return 0;
}

static void *t_malloc(size_t n)
{
    return inject() ? NULL : malloc(n);
}

static void *t_calloc(size_t n, size_t m)
{
    return inject() ? NULL : calloc(n, m);
}

static void *t_realloc(void *p, size_t n)
{
    return inject() ? NULL : realloc(p, n);
}

static char *t_strdup(const char *s)
{
    return inject() ? NULL : strdup(s);
}

static char *t_strndup(const char *s, size_t n)
{
    return inject() ? NULL : strndup(s, n);
}

#undef malloc
#undef calloc
#undef realloc
#undef strdup
#undef strndup
#define malloc t_malloc
#define calloc t_calloc
#define realloc t_realloc
#define strdup t_strdup
#define strndup t_strndup
#include "config.c"
#include "config_read.c"
#include "config_sections.c"
#include "config_services.c"
#include "config_traffic.c"
#include "config_tree.c"
#undef malloc
#undef calloc
#undef realloc
#undef strdup
#undef strndup

#ifndef TEST_DATA_DIR
#define TEST_DATA_DIR "test/data"
#endif

#define CONF_DIR TEST_DATA_DIR "/../../conf"

/* ---- Helpers ---------------------------------------------------------- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    ck_assert_msg(f != NULL, "cannot open %s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    ck_assert_msg(fd >= 0, "cannot create %s: %s", path, strerror(errno));
    ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static void write_text(const char *path, const char *text)
{
    write_file(path, text, strlen(text));
}

/* A temporary folder per test; tests run in forked children, so a global
 * is private to one test. */
static char tmp_dir[256];

static const char *tmp_path(char *buf, const char *name)
{
    snprintf(buf, PATH_MAX, "%s/%s", tmp_dir, name);
    return buf;
}

static void tmp_setup(void)
{
    const char *base = getenv("TMPDIR");

    snprintf(tmp_dir, sizeof(tmp_dir), "%s/test_config.XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmp_dir));
}

static void tmp_teardown(void)
{
    /* Restore permissions a test may have taken away, so that removing
     * works for users other than root. */
    char p[PATH_MAX];

    chmod(tmp_path(p, "conf.d"), 0700);
    rm_rf(tmp_dir);
}

/* Loads the config text written to a temporary agent.yaml; returns what
 * config_load() returned, with the config in *out and the message in err. */
static int load_text(const char *text, struct config **out, char *err, size_t errlen)
{
    char p[PATH_MAX];

    write_text(tmp_path(p, "agent.yaml"), text);
    return config_load(p, out, err, errlen);
}

/* The message for a config written by load_text(), less "FILE:". */
static const char *msg_after_file(const char *err)
{
    char p[PATH_MAX];
    size_t n;

    tmp_path(p, "agent.yaml");
    n = strlen(p);
    ck_assert_msg(strncmp(err, p, n) == 0 && err[n] == ':', "message not about %s: %s", p, err);
    return err + n + 1;
}

static void assert_defaults(const struct config *c)
{
    ck_assert_uint_eq(c->n_endpoints, 1);
    ck_assert_str_eq(c->endpoints[0], "http://127.0.0.1:2379");
    ck_assert_str_eq(c->prefix, "/micro");
    ck_assert_uint_eq(c->timeout_ms, 5000);
    ck_assert_ptr_null(c->username);
    ck_assert_ptr_null(c->password_file);
    ck_assert_ptr_null(c->password);
    ck_assert_ptr_null(c->tls_ca_file);
    ck_assert_ptr_null(c->tls_cert_file);
    ck_assert_ptr_null(c->tls_key_file);
    ck_assert_uint_eq(c->session_ttl_ms, 10000);
    ck_assert_str_eq(c->socket_path, "/run/discovery-agent/agent.sock");
    ck_assert_uint_eq(c->socket_mode, 0660);
    ck_assert_str_eq(c->cache_dir, "/var/lib/discovery-agent");
    ck_assert_uint_eq(c->cache_idle_ms, 600000);
    ck_assert_int_eq(c->log_level, 1); /* info */
}

static const char *meta(const struct config_service *s, const char *key)
{
    for (size_t i = 0; i < s->n_meta; i++) {
        if (strcmp(s->meta[i].key, key) == 0)
            return s->meta[i].value;
    }
    return NULL;
}

/* ---- The data folders ------------------------------------------------ */

struct data_case {
    char yaml[PATH_MAX];
    char err[PATH_MAX];      /* the expected message; unused for valid cases */
    char dir[PATH_MAX - 64]; /* the case's folder, for "{dir}" */
};

static struct data_case *invalid_cases, *valid_cases;
static size_t n_invalid, n_valid;

static int cmp_cases(const void *a, const void *b)
{
    return strcmp(((const struct data_case *)a)->yaml, ((const struct data_case *)b)->yaml);
}

/* Lists the cases of one data folder: its *.yaml files, and its
 * subfolders that hold an agent.yaml. */
static struct data_case *list_cases(const char *dir, size_t *n)
{
    struct data_case *v = NULL;
    size_t cap = 0;
    struct dirent *de;
    DIR *d = opendir(dir);

    *n = 0;
    if (d == NULL) {
        fprintf(stderr, "cannot open %s: %s\n", dir, strerror(errno));
        return NULL;
    }
    while ((de = readdir(d)) != NULL) {
        struct data_case c;
        struct stat st;
        size_t len = strlen(de->d_name);

        if (de->d_name[0] == '.')
            continue;
        snprintf(c.yaml, sizeof(c.yaml), "%s/%s", dir, de->d_name);
        if (stat(c.yaml, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            snprintf(c.dir, sizeof(c.dir), "%s/%s", dir, de->d_name);
            snprintf(c.yaml, sizeof(c.yaml), "%s/agent.yaml", c.dir);
            snprintf(c.err, sizeof(c.err), "%s/agent.err", c.dir);
            if (access(c.yaml, F_OK) < 0)
                continue;
        } else if (len > 5 && strcmp(de->d_name + len - 5, ".yaml") == 0) {
            snprintf(c.dir, sizeof(c.dir), "%s", dir);
            snprintf(c.err, sizeof(c.err), "%s/%.*s.err", dir, (int)(len - 5), de->d_name);
        } else {
            continue;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            v = realloc(v, cap * sizeof(*v));
            if (v == NULL)
                abort();
        }
        v[(*n)++] = c;
    }
    closedir(d);
    if (*n > 1)
        qsort(v, *n, sizeof(*v), cmp_cases);
    return v;
}

/* Builds the message a case expects from its .err file. */
static char *expected_message(const struct data_case *c)
{
    char *text = read_text(c->err), *out, *p;
    size_t len = strlen(text), cap, dl = strlen(c->dir);
    const char *s;

    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    cap = strlen(c->yaml) + 1 + len * (dl + 1) + 1;
    out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    p = out;
    if (strncmp(text, "{dir}", 5) != 0)
        p += snprintf(p, cap, "%s:", c->yaml);
    for (s = text; *s != '\0';) {
        if (strncmp(s, "{dir}", 5) == 0) {
            memcpy(p, c->dir, dl);
            p += dl;
            s += 5;
        } else {
            *p++ = *s++;
        }
    }
    *p = '\0';
    free(text);
    return out;
}

START_TEST(data_folders_have_cases)
{
    ck_assert_msg(n_invalid >= 50,
                  "only %zu invalid cases found in " TEST_DATA_DIR "/config-invalid", n_invalid);
    ck_assert_msg(n_valid >= 5, "only %zu valid cases found in " TEST_DATA_DIR "/config-valid",
                  n_valid);
}
END_TEST

START_TEST(invalid_case)
{
    const struct data_case *c = &invalid_cases[_i];
    char err[CONFIG_ERR_MAX];
    struct config *cfg = (struct config *)&err; /* must become NULL */
    char *want = expected_message(c);
    int r = config_load(c->yaml, &cfg, err, sizeof(err));

    ck_assert_msg(r < 0, "%s was accepted", c->yaml);
    ck_assert_ptr_null(cfg);
    ck_assert_msg(strcmp(err, want) == 0, "%s:\n  got  %s\n  want %s", c->yaml, err, want);
    free(want);
}
END_TEST

START_TEST(valid_case)
{
    const struct data_case *c = &valid_cases[_i];
    char err[CONFIG_ERR_MAX];
    struct config *cfg = NULL;
    int r = config_load(c->yaml, &cfg, err, sizeof(err));

    ck_assert_msg(r == 0, "%s refused: %s", c->yaml, err);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_str_eq(err, "");
    ck_assert_str_eq(cfg->path, c->yaml);
    ck_assert_uint_ge(cfg->n_endpoints, 1);
    config_free(cfg);
}
END_TEST

/* ---- Valid files, value by value -------------------------------------- */

START_TEST(empty_files_mean_defaults)
{
    static const char *const names[] = {
        "empty.yaml",
        "comments-only.yaml",
        "document-only.yaml",
        "null-sections.yaml",
    };
    char path[PATH_MAX], err[CONFIG_ERR_MAX];
    struct config *c;

    snprintf(path, sizeof(path), TEST_DATA_DIR "/config-valid/%s", names[_i]);
    ck_assert_msg(config_load(path, &c, err, sizeof(err)) == 0, "%s", err);
    assert_defaults(c);
    ck_assert_uint_eq(c->n_services, 0);
    ck_assert_ptr_null(config_free(c));
}
END_TEST

START_TEST(full_file)
{
    const char *path = TEST_DATA_DIR "/config-valid/full.yaml";
    const struct config_service *s;
    char err[CONFIG_ERR_MAX];
    struct config *c;

    ck_assert_msg(config_load(path, &c, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(c->n_endpoints, 4);
    ck_assert_str_eq(c->endpoints[0], "http://10.0.0.1:2379");
    ck_assert_str_eq(c->endpoints[1], "https://etcd-2.example.com:2379");
    ck_assert_str_eq(c->endpoints[2], "http://[fd00::3]:2379");
    ck_assert_str_eq(c->endpoints[3], "http://etcd-4");
    ck_assert_str_eq(c->prefix, "/services/prod");
    ck_assert_uint_eq(c->timeout_ms, 90000);
    ck_assert_uint_eq(c->session_ttl_ms, 30000);
    ck_assert_str_eq(c->socket_path, "/tmp/discovery-agent-test.sock");
    ck_assert_uint_eq(c->socket_mode, 0640);
    ck_assert_str_eq(c->cache_dir, "/tmp/discovery-agent-cache");
    ck_assert_uint_eq(c->cache_idle_ms, 3600000);
    ck_assert_int_eq(c->log_level, 0); /* debug */
    ck_assert_ptr_null(c->username);
    ck_assert_ptr_null(c->password);
    ck_assert_ptr_null(c->tls_ca_file);

    ck_assert_uint_eq(c->n_services, 4);
    s = &c->services[0];
    ck_assert_str_eq(s->name, "user-server");
    ck_assert_str_eq(s->address, "10.0.0.5:8082");
    ck_assert_int_eq(s->weight, 10);
    ck_assert_str_eq(s->group, "A");
    ck_assert_str_eq(s->file, path);
    ck_assert_int_eq(s->line, 23);
    ck_assert_int_eq(s->column, 5);
    ck_assert_uint_eq(s->n_meta, 5);
    /* Metadata keeps file order, and numbers and booleans as written. */
    ck_assert_str_eq(s->meta[0].key, "version");
    ck_assert_str_eq(s->meta[4].key, "empty");
    ck_assert_str_eq(meta(s, "version"), "1.4.2");
    ck_assert_str_eq(meta(s, "port"), "8082");
    ck_assert_str_eq(meta(s, "canary"), "true");
    ck_assert_str_eq(meta(s, "release"), "1.10");
    ck_assert_str_eq(meta(s, "empty"), "");

    s = &c->services[1];
    ck_assert_str_eq(s->address, "[::1]:8082");
    ck_assert_int_eq(s->weight, 0);
    ck_assert_str_eq(s->group, "");
    ck_assert_uint_eq(s->n_meta, 0);
    s = &c->services[2];
    ck_assert_str_eq(s->address, "user-2.internal:8082");
    ck_assert_int_eq(s->weight, -3);
    s = &c->services[3];
    ck_assert_str_eq(s->name, "echo");
    ck_assert_str_eq(s->address, "localhost:50051");
    ck_assert_int_eq(s->weight, INT32_MAX);
    ck_assert_uint_eq(s->n_meta, 2);
    ck_assert_str_eq(meta(s, "zone"), "eu-west-1a");
    ck_assert_str_eq(meta(s, "owner"), "team-a");
    ck_assert_int_eq(s->line, 35);

    ck_assert_ptr_eq(config_find_service(c, "user-server", "[::1]:8082"), &c->services[1]);
    ck_assert_ptr_eq(config_find_service(c, "echo", "localhost:50051"), &c->services[3]);
    ck_assert_ptr_null(config_find_service(c, "echo", "10.0.0.5:8082"));
    ck_assert_ptr_null(config_find_service(c, "nope", "localhost:50051"));
    ck_assert_ptr_null(config_find_service(c, NULL, "localhost:50051"));
    ck_assert_ptr_null(config_find_service(NULL, "echo", "localhost:50051"));
    config_free(c);
}
END_TEST

START_TEST(conf_d_order)
{
    const char *path = TEST_DATA_DIR "/config-valid/with-conf-d/agent.yaml";
    const char *dir = TEST_DATA_DIR "/config-valid/with-conf-d/conf.d";
    char err[CONFIG_ERR_MAX], want[PATH_MAX];
    struct config *c;

    ck_assert_msg(config_load(path, &c, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(c->log_level, 3); /* error */
    ck_assert_uint_eq(c->n_services, 4);
    ck_assert_str_eq(c->services[0].address, "127.0.0.1:50051");
    ck_assert_str_eq(c->services[0].file, path);
    ck_assert_int_eq(c->services[0].line, 5);
    ck_assert_str_eq(c->services[1].address, "127.0.0.1:8080");
    ck_assert_str_eq(c->services[2].address, "127.0.0.1:8081");
    ck_assert_str_eq(c->services[2].group, "B");
    snprintf(want, sizeof(want), "%s/10-web.yaml", dir);
    ck_assert_str_eq(c->services[2].file, want);
    ck_assert_int_eq(c->services[2].line, 4);
    ck_assert_str_eq(c->services[3].name, "echo");
    ck_assert_str_eq(c->services[3].address, "127.0.0.1:50052");
    snprintf(want, sizeof(want), "%s/30-echo.yaml", dir);
    ck_assert_str_eq(c->services[3].file, want);
    config_free(c);
}
END_TEST

START_TEST(flow_style_and_bom)
{
    char err[CONFIG_ERR_MAX];
    struct config *c;

    ck_assert_int_eq(
        config_load(TEST_DATA_DIR "/config-valid/flow-style.yaml", &c, err, sizeof(err)), 0);
    ck_assert_uint_eq(c->socket_mode, 0660);
    ck_assert_uint_eq(c->n_services, 1);
    ck_assert_int_eq(c->services[0].weight, 3);
    ck_assert_str_eq(meta(&c->services[0], "v"), "1");
    config_free(c);

    ck_assert_int_eq(config_load(TEST_DATA_DIR "/config-valid/bom-crlf.yaml", &c, err, sizeof(err)),
                     0);
    ck_assert_int_eq(c->log_level, 2); /* warn */
    ck_assert_uint_eq(c->n_services, 1);
    ck_assert_int_eq(c->services[0].line, 4);
    ck_assert_int_eq(c->services[0].column, 5);
    config_free(c);
}
END_TEST

/* The shipped example must load and state the true defaults, so that an
 * operator who reads it learns what the agent does without it. */
START_TEST(example_config)
{
    char err[CONFIG_ERR_MAX];
    struct config *c;

    ck_assert_msg(config_load(CONF_DIR "/agent.yaml", &c, err, sizeof(err)) == 0, "%s", err);
    assert_defaults(c);
    ck_assert_uint_eq(c->n_services, 0);
    config_free(c);
}
END_TEST

/* Every key the loader knows must be explained in conf/agent.yaml. */
START_TEST(example_config_names_every_key)
{
    char *text = read_text(CONF_DIR "/agent.yaml");
    size_t n_check_keys;
    const char *const *check_keys = check_spec_keys(&n_check_keys);
    const char *const *lists[] = {
        top_keys, etcd_keys,    tls_keys, session_keys, socket_keys, cache_keys,
        log_keys, service_keys, xds_keys, check_keys,   checks_keys,
    };
    const size_t sizes[] = {
        ARRAY_SIZE(top_keys),    ARRAY_SIZE(etcd_keys),
        ARRAY_SIZE(tls_keys),    ARRAY_SIZE(session_keys),
        ARRAY_SIZE(socket_keys), ARRAY_SIZE(cache_keys),
        ARRAY_SIZE(log_keys),    ARRAY_SIZE(service_keys),
        ARRAY_SIZE(xds_keys),    n_check_keys,
        ARRAY_SIZE(checks_keys),
    };

    for (size_t l = 0; l < ARRAY_SIZE(lists); l++) {
        for (size_t k = 0; k < sizes[l]; k++) {
            char want[64];

            snprintf(want, sizeof(want), "%s:", lists[l][k]);
            ck_assert_msg(strstr(text, want) != NULL, "conf/agent.yaml does not mention '%s'",
                          want);
        }
    }
    free(text);
}
END_TEST

/* The xds section: its defaults, every key, and the defaults that follow
 * the socket section (docs/xds.md). */
START_TEST(xds_section)
{
    char err[CONFIG_ERR_MAX];
    struct config *c;

    ck_assert_int_eq(config_load(TEST_DATA_DIR "/config-valid/empty.yaml", &c, err, sizeof(err)),
                     0);
    ck_assert_int_eq(c->xds_enabled, 1);
    ck_assert_str_eq(c->xds_path, "/run/discovery-agent/xds.sock");
    ck_assert_uint_eq(c->xds_mode, 0660);
    ck_assert_ptr_null(c->xds_tcp);
    ck_assert_str_eq(c->xds_group_header, "x-group");
    ck_assert_uint_eq(c->xds_idle_ms, 60000);
    ck_assert_int_eq(c->xds_test_host_names, 0);
    config_free(c);

    ck_assert_int_eq(config_load(TEST_DATA_DIR "/config-valid/xds.yaml", &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c->xds_enabled, 0);
    ck_assert_str_eq(c->xds_path, "/tmp/discovery-agent-test/xds.sock");
    ck_assert_uint_eq(c->xds_mode, 0666);
    ck_assert_str_eq(c->xds_tcp, "[::1]:18000");
    ck_assert_str_eq(c->xds_group_header, "x-team.v2_a");
    ck_assert_uint_eq(c->xds_idle_ms, 120000);
    ck_assert_int_eq(c->xds_test_host_names, 1);
    config_free(c);

    ck_assert_int_eq(
        config_load(TEST_DATA_DIR "/config-valid/xds-follows-socket.yaml", &c, err, sizeof(err)),
        0);
    ck_assert_str_eq(c->xds_path, "/tmp/discovery-agent-test/xds.sock");
    ck_assert_uint_eq(c->xds_mode, 0600);
    ck_assert_str_eq(c->xds_tcp, "localhost:18001");
    config_free(c);

    ck_assert_int_eq(
        config_load(TEST_DATA_DIR "/config-valid/xds-relative-socket.yaml", &c, err, sizeof(err)),
        0);
    ck_assert_str_eq(c->xds_path, "xds.sock");
    ck_assert_int_eq(c->xds_enabled, 1);
    ck_assert_str_eq(c->xds_tcp, "127.1.2.3:18002");
    config_free(c);
}
END_TEST

/* The dns section: its defaults, and every key set. */
START_TEST(dns_section)
{
    char err[CONFIG_ERR_MAX];
    struct config *c;

    ck_assert_int_eq(config_load(TEST_DATA_DIR "/config-valid/empty.yaml", &c, err, sizeof(err)),
                     0);
    ck_assert_int_eq(c->dns_enabled, 1);
    ck_assert_uint_eq(c->n_dns_listen, 1);
    ck_assert_str_eq(c->dns_listen[0], "127.0.0.1:8600");
    ck_assert_str_eq(c->dns_domain, "disc");
    ck_assert_uint_eq(c->dns_ttl, 0);
    ck_assert_uint_eq(c->dns_max_answers, 16);
    ck_assert_uint_eq(c->n_dns_recursors, 0);
    config_free(c);

    ck_assert_int_eq(config_load(TEST_DATA_DIR "/config-valid/dns.yaml", &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c->dns_enabled, 0);
    ck_assert_uint_eq(c->n_dns_listen, 2);
    ck_assert_str_eq(c->dns_listen[1], "[::1]:5353");
    ck_assert_str_eq(c->dns_domain, "Consul.Local.");
    ck_assert_uint_eq(c->dns_ttl, 5);
    ck_assert_uint_eq(c->dns_max_answers, 3);
    /* 127.0.0.1:8600 is no listener of this agent (its listeners are on
     * 5353), so it may be a recursor. */
    ck_assert_uint_eq(c->n_dns_recursors, 3);
    ck_assert_str_eq(c->dns_recursors[0], "10.0.0.2");
    ck_assert_str_eq(c->dns_recursors[1], "[2001:db8::53]:5353");
    config_free(c);
}
END_TEST

/* locality: and traffic: their defaults, and every key set. */
START_TEST(traffic_section)
{
    char err[CONFIG_ERR_MAX];
    struct config *c;
    const struct policy_outlier *o;

    ck_assert_int_eq(config_load(TEST_DATA_DIR "/config-valid/empty.yaml", &c, err, sizeof(err)),
                     0);
    ck_assert_ptr_null(c->traffic.zone);
    ck_assert(c->traffic.overprovisioning == 1.4);
    ck_assert(c->traffic.protection.enabled && c->traffic.protection.max_drop == 0.5);
    ck_assert_uint_eq(c->traffic.protection.hold_ms, 30000);
    ck_assert_ptr_null(policy_outlier_of(&c->traffic, "echo"));
    config_free(c);

    ck_assert_msg(config_load(TEST_DATA_DIR "/config-valid/traffic.yaml", &c, err, sizeof(err)) ==
                      0,
                  "%s", err);
    ck_assert_str_eq(c->traffic.zone, "eu-west-1a");
    ck_assert_str_eq(c->traffic.region, "eu-west-1");
    ck_assert(c->traffic.overprovisioning == 1.2);
    ck_assert_uint_eq(c->traffic.size_window_ms, 300000);
    ck_assert(c->traffic.protection.max_drop == 0.3);
    ck_assert_uint_eq(c->traffic.protection.hold_ms, 45000);
    ck_assert_uint_eq(c->traffic.protection.window_ms, 5000);
    ck_assert_uint_eq(c->traffic.n_services, 3);
    ck_assert(!policy_protection_of(&c->traffic, "pay")->enabled);
    /* A service inherits the section's protection. */
    ck_assert(policy_protection_of(&c->traffic, "user")->max_drop == 0.3);
    ck_assert_ptr_null(policy_outlier_of(&c->traffic, "user"));
    o = policy_outlier_of(&c->traffic, "pay");
    ck_assert_ptr_nonnull(o);
    ck_assert_uint_eq(o->interval_ms, 1000);
    ck_assert_uint_eq(o->base_ejection_ms, 3000);
    ck_assert_uint_eq(o->max_ejection_ms, 300000);
    ck_assert_uint_eq(o->max_ejection_percent, 50);
    ck_assert(o->failure_percentage && !o->success_rate);
    ck_assert_uint_eq(o->fp_threshold, 40);
    ck_assert_uint_eq(o->fp_enforcement, 100);
    ck_assert_uint_eq(o->fp_minimum_hosts, 3);
    ck_assert_uint_eq(o->fp_request_volume, 10);
    /* {}: success-rate ejection with A50's defaults. */
    o = policy_outlier_of(&c->traffic, "echo");
    ck_assert(o && o->success_rate && !o->failure_percentage);
    ck_assert_uint_eq(o->sr_stdev_factor, 1900);
    config_free(c);
}
END_TEST

START_TEST(demo_config)
{
    char err[CONFIG_ERR_MAX];
    struct config *c;
    const struct config_service *s;

    ck_assert_msg(config_load(CONF_DIR "/demo.yaml", &c, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(c->n_endpoints, 1);
    ck_assert_str_eq(c->endpoints[0], "http://127.0.0.1:2379");
    ck_assert_str_eq(c->socket_path, "build/run/agent.sock");
    ck_assert_str_eq(c->cache_dir, "build/run/cache");
    /* The demo's echo servers register themselves (test/demo-run). */
    ck_assert_uint_eq(c->n_services, 0);
    s = config_find_service(c, "echo", "127.0.0.1:50051");
    ck_assert_ptr_null(s);
    ck_assert(c->http_enabled);
    ck_assert_uint_eq(c->n_http_listen, 1);
    ck_assert_str_eq(c->http_listen[0], "127.0.0.1:8608");
    config_free(c);
}
END_TEST

/* ---- Cases written at run time ---------------------------------------- */

START_TEST(missing_main_file)
{
    char p[PATH_MAX], err[CONFIG_ERR_MAX], want[PATH_MAX + 64];
    struct config *c = (struct config *)&err;

    tmp_path(p, "nope.yaml");
    ck_assert_int_eq(config_load(p, &c, err, sizeof(err)), -ENOENT);
    ck_assert_ptr_null(c);
    snprintf(want, sizeof(want), "%s: No such file or directory", p);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(main_file_is_a_folder)
{
    char err[CONFIG_ERR_MAX], want[PATH_MAX + 64];
    struct config *c;

    ck_assert_int_eq(config_load(tmp_dir, &c, err, sizeof(err)), -EISDIR);
    snprintf(want, sizeof(want), "%s: Is a directory", tmp_dir);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(file_size_cap)
{
    char p[PATH_MAX], err[CONFIG_ERR_MAX], want[PATH_MAX + 128];
    char *big = malloc(CONFIG_FILE_MAX + 1);
    struct config *c;

    /* Exactly the cap is fine: a comment that fills the file. */
    ck_assert_ptr_nonnull(big);
    memset(big, 'x', CONFIG_FILE_MAX + 1);
    big[0] = '#';
    tmp_path(p, "big.yaml");
    write_file(p, big, CONFIG_FILE_MAX);
    ck_assert_msg(config_load(p, &c, err, sizeof(err)) == 0, "%s", err);
    config_free(c);

    write_file(p, big, CONFIG_FILE_MAX + 1);
    ck_assert_int_eq(config_load(p, &c, err, sizeof(err)), -EFBIG);
    ck_assert_ptr_null(c);
    snprintf(want, sizeof(want),
             "%s: file too large: a configuration file "
             "may hold at most 1 MiB",
             p);
    ck_assert_str_eq(err, want);

    /* The cap holds for conf.d files too. */
    write_text(tmp_path(p, "agent.yaml"), "");
    mkdir(tmp_path(p, "conf.d"), 0700);
    write_file(tmp_path(p, "conf.d/10-big.yaml"), big, CONFIG_FILE_MAX + 1);
    ck_assert_int_eq(config_load(tmp_path(p, "agent.yaml"), &c, err, sizeof(err)), -EFBIG);
    free(big);
}
END_TEST

START_TEST(password_file)
{
    static const struct {
        const char *content;
        size_t len;
        const char *password; /* NULL: refused */
        const char *message;
    } cases[] = {
        {"s3cret\n", 7, "s3cret", NULL},
        {"s3cret", 6, "s3cret", NULL},
        {"s3cret\r\n", 8, "s3cret", NULL},
        {"s3cret\n\n", 8, "s3cret\n", NULL},
        {" two words ", 11, " two words ", NULL},
        {"", 0, NULL, "is empty: write the password into it"},
        {"\n", 1, NULL, "is empty: write the password into it"},
        {"a\0b\n", 4, NULL,
         "contains a NUL byte: write the password as "
         "text"},
    };
    char pw[PATH_MAX], text[2 * PATH_MAX];
    char err[CONFIG_ERR_MAX], want[PATH_MAX + 128];
    struct config *c;

    tmp_path(pw, "etcd.password");
    snprintf(text, sizeof(text),
             "etcd:\n  username: agent\n"
             "  password_file: %s\n",
             pw);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        write_file(pw, cases[i].content, cases[i].len);
        if (cases[i].password != NULL) {
            ck_assert_msg(load_text(text, &c, err, sizeof(err)) == 0, "%s", err);
            ck_assert_str_eq(c->username, "agent");
            ck_assert_str_eq(c->password_file, pw);
            ck_assert_str_eq(c->password, cases[i].password);
            config_free(c);
        } else {
            ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
            snprintf(want, sizeof(want), "3:3: etcd.password_file '%s' %s", pw, cases[i].message);
            ck_assert_str_eq(msg_after_file(err), want);
        }
    }

    /* A file that is too large is someone's mistake, not a password. */
    {
        char *big = malloc(CONFIG_PASSWORD_MAX + 1);

        ck_assert_ptr_nonnull(big);
        memset(big, 'p', CONFIG_PASSWORD_MAX + 1);
        write_file(pw, big, CONFIG_PASSWORD_MAX);
        ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), 0);
        ck_assert_uint_eq(strlen(c->password), CONFIG_PASSWORD_MAX);
        config_free(c);
        write_file(pw, big, CONFIG_PASSWORD_MAX + 1);
        ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "is larger than 4096 bytes"));
        free(big);
    }

    /* Root reads files whatever their mode, so only others can try this. */
    if (geteuid() != 0) {
        write_text(pw, "s3cret\n");
        chmod(pw, 0);
        ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
        snprintf(want, sizeof(want),
                 "3:3: cannot read etcd.password_file "
                 "'%s': Permission denied",
                 pw);
        ck_assert_str_eq(msg_after_file(err), want);
    }
}
END_TEST

START_TEST(tls_files)
{
    char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], text[4 * PATH_MAX];
    char err[CONFIG_ERR_MAX], want[PATH_MAX + 128];
    struct config *c;

    write_text(tmp_path(ca, "ca.pem"), "ca\n");
    write_text(tmp_path(cert, "client.pem"), "cert\n");
    write_text(tmp_path(key, "client.key"), "key\n");
    snprintf(text, sizeof(text),
             "etcd:\n"
             "  endpoints: [https://10.0.0.1:2379, http://10.0.0.2:2379]\n"
             "  tls:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n",
             ca, cert, key);
    ck_assert_msg(load_text(text, &c, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(c->tls_ca_file, ca);
    ck_assert_str_eq(c->tls_cert_file, cert);
    ck_assert_str_eq(c->tls_key_file, key);
    config_free(c);

    /* Only a CA: the server is checked, the client shows no certificate. */
    snprintf(text, sizeof(text),
             "etcd:\n  endpoints: [https://10.0.0.1]\n"
             "  tls: {ca_file: %s}\n",
             ca);
    ck_assert_msg(load_text(text, &c, err, sizeof(err)) == 0, "%s", err);
    ck_assert_ptr_null(c->tls_cert_file);
    config_free(c);

    /* A key file that is gone is reported at its key. */
    snprintf(text, sizeof(text),
             "etcd:\n  endpoints: [https://10.0.0.1]\n"
             "  tls:\n    cert_file: %s\n    key_file: %s.gone\n",
             cert, key);
    ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want),
             "5:5: cannot read etcd.tls.key_file "
             "'%s.gone': No such file or directory",
             key);
    ck_assert_str_eq(msg_after_file(err), want);
}
END_TEST

START_TEST(conf_d_unreadable)
{
    char p[PATH_MAX], err[CONFIG_ERR_MAX], want[PATH_MAX + 64];
    struct config *c;

    if (geteuid() == 0)
        return; /* root reads files whatever their mode */
    mkdir(tmp_path(p, "conf.d"), 0700);
    write_text(tmp_path(p, "conf.d/10-x.yaml"), "services: []\n");
    chmod(p, 0);
    ck_assert_int_eq(load_text("", &c, err, sizeof(err)), -EACCES);
    snprintf(want, sizeof(want), "%s: Permission denied", p);
    ck_assert_str_eq(err, want);

    chmod(p, 0600);
    chmod(tmp_path(p, "conf.d"), 0);
    ck_assert_int_eq(load_text("", &c, err, sizeof(err)), -EACCES);
    snprintf(want, sizeof(want), "%s: Permission denied", p);
    ck_assert_str_eq(err, want);
}
END_TEST

START_TEST(conf_d_beside_relative_path)
{
    char cwd[PATH_MAX], err[CONFIG_ERR_MAX], p[PATH_MAX];
    struct config *c;

    /* A main file named without a folder finds conf.d in the current
     * folder, and messages name the files as the caller would. */
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
    mkdir(tmp_path(p, "conf.d"), 0700);
    write_text(tmp_path(p, "conf.d/10-x.yaml"), "services:\n  - {name: x, address: '127.0.0.1:1'}\n"
                                                "  - {name: x, address: '127.0.0.1:1'}\n");
    write_text(tmp_path(p, "agent.yaml"), "");
    ck_assert_int_eq(chdir(tmp_dir), 0);
    ck_assert_int_eq(config_load("agent.yaml", &c, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "conf.d/10-x.yaml:3:5: duplicate service instance "
                          "x 127.0.0.1:1 (first at conf.d/10-x.yaml:2:5): remove "
                          "one of them");
    ck_assert_int_eq(chdir(cwd), 0);
}
END_TEST

START_TEST(socket_path_length)
{
    char text[512], path[200], err[CONFIG_ERR_MAX];
    struct config *c;

    /* sun_path holds 108 bytes with the NUL: 107 fit, 108 do not. */
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    path[107] = '\0';
    snprintf(text, sizeof(text), "socket: {path: %s}\n", path);
    ck_assert_msg(load_text(text, &c, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(strlen(c->socket_path), 107);
    config_free(c);
    path[107] = 'a';
    path[108] = '\0';
    snprintf(text, sizeof(text), "socket: {path: %s}\n", path);
    ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(msg_after_file(err), "1:16: socket.path is 108 bytes "
                                          "long, but a unix socket path holds at most 107: "
                                          "choose a shorter path");
}
END_TEST

START_TEST(socket_modes)
{
    static const struct {
        const char *text;
        unsigned mode;
    } modes[] = {
        {"0660", 0660}, {"\"0660\"", 0660}, {"'0600'", 0600}, {"0o640", 0640},
        {"0", 0},       {"0000", 0},        {"0777", 0777},   {"00644", 0644},
    };
    char text[128], err[CONFIG_ERR_MAX];
    struct config *c;

    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        snprintf(text, sizeof(text), "socket:\n  mode: %s\n", modes[i].text);
        ck_assert_msg(load_text(text, &c, err, sizeof(err)) == 0, "%s: %s", modes[i].text, err);
        ck_assert_uint_eq(c->socket_mode, modes[i].mode);
        config_free(c);
    }
}
END_TEST

START_TEST(values_that_load)
{
    /* Small valid configs and the one value each must produce. */
    char err[CONFIG_ERR_MAX];
    struct config *c;

    ck_assert_int_eq(load_text("etcd: {prefix: '/a/b///'}\n", &c, err, sizeof(err)), 0);
    ck_assert_str_eq(c->prefix, "/a/b");
    config_free(c);
    ck_assert_int_eq(load_text("session: {ttl: 2s}\ncache: {idle: 1ms}\n"
                               "etcd: {timeout: 1h}\n",
                               &c, err, sizeof(err)),
                     0);
    ck_assert_uint_eq(c->session_ttl_ms, 2000);
    ck_assert_uint_eq(c->cache_idle_ms, 1);
    ck_assert_uint_eq(c->timeout_ms, 3600000);
    config_free(c);
    ck_assert_int_eq(load_text("xds: {idle: 500ms}\n", &c, err, sizeof(err)), 0);
    ck_assert_uint_eq(c->xds_idle_ms, 500);
    config_free(c);
    ck_assert_int_eq(load_text("services:\n"
                               "  - {name: a, address: 'h:1', weight: -2147483648}\n"
                               "  - {name: a, address: '[::ffff:1.2.3.4]:65535'}\n"
                               "  - {name: 'ü', address: 'a_b.c-d:80', group: ~x}\n",
                               &c, err, sizeof(err)),
                     0);
    ck_assert_int_eq(c->services[0].weight, INT32_MIN);
    ck_assert_int_eq(c->services[1].weight, 1);
    ck_assert_str_eq(c->services[2].name, "ü");
    ck_assert_str_eq(c->services[2].group, "~x");
    config_free(c);
    ck_assert_int_eq(load_text("log: {level: warn}\n", &c, err, sizeof(err)), 0);
    ck_assert_int_eq(c->log_level, 2); /* warn */
    config_free(c);
    /* A check's timeout may equal its interval (issue 13). */
    ck_assert_int_eq(load_text("services:\n"
                               "  - name: a\n"
                               "    address: 127.0.0.1:1\n"
                               "    check: {type: tcp, interval: 1s, timeout: 1s}\n",
                               &c, err, sizeof(err)),
                     0);
    ck_assert_int_eq(c->services[0].check.type, CHECK_TCP);
    ck_assert_uint_eq(c->services[0].check.interval_ms, 1000);
    ck_assert_uint_eq(c->services[0].check.timeout_ms, 1000);
    config_free(c);
}
END_TEST

START_TEST(many_entries)
{
    /* Thousands of metadata keys and services: duplicates are still found,
     * the earliest one is named, and quickly. */
    size_t cap = 1 << 20, off = 0;
    char *text = malloc(cap), err[CONFIG_ERR_MAX];
    char p[PATH_MAX], want[PATH_MAX + 128];
    struct config *c;

    ck_assert_ptr_nonnull(text);
    off += (size_t)snprintf(text + off, cap - off,
                            "services:\n"
                            "  - name: big\n    address: h:1\n"
                            "    metadata:\n");
    for (int i = 0; i < 5000; i++)
        off += (size_t)snprintf(text + off, cap - off, "      k%d: v\n", i);
    off += (size_t)snprintf(text + off, cap - off,
                            "      k4999: again\n"
                            "      k10: again\n");
    ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(msg_after_file(err), "5005:7: metadata key 'k4999' "
                                          "given twice for service big (first at 5004:7): keep "
                                          "only one");

    off = (size_t)snprintf(text, cap, "services:\n");
    for (int i = 0; i < 20000; i++)
        off +=
            (size_t)snprintf(text + off, cap - off, "  - {name: s, address: 'h:%d'}\n", 20000 - i);
    off += (size_t)snprintf(text + off, cap - off,
                            "  - {name: s, address: 'h:7'}\n"
                            "  - {name: s, address: 'h:3'}\n");
    ck_assert_int_eq(load_text(text, &c, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want),
             "20002:5: duplicate service instance s h:7 "
             "(first at %s:19995:5): remove one of them",
             tmp_path(p, "agent.yaml"));
    ck_assert_str_eq(msg_after_file(err), want);
    free(text);
}
END_TEST

START_TEST(error_buffer)
{
    char err[16], p[PATH_MAX];
    struct config *c;

    /* A short buffer gets the start of the message, terminated. */
    memset(err, 'x', sizeof(err));
    tmp_path(p, "nope.yaml");
    ck_assert_int_eq(config_load(p, &c, err, sizeof(err)), -ENOENT);
    ck_assert_uint_eq(strlen(err), sizeof(err) - 1);
    ck_assert_int_eq(strncmp(err, p, sizeof(err) - 1), 0);
    /* No buffer at all is fine too. */
    ck_assert_int_eq(config_load(p, &c, NULL, 0), -ENOENT);
    ck_assert_int_eq(config_load(NULL, &c, err, sizeof(err)), -EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(config_load("", &c, NULL, 0), -EINVAL);
    ck_assert_int_eq(config_load(p, NULL, NULL, 0), -EINVAL);
    ck_assert_ptr_null(config_free(NULL));
}
END_TEST

/* ---- Static helpers ----------------------------------------------------- */

START_TEST(endpoints)
{
    static const struct {
        const char *url;
        int want;
        size_t keep;
    } cases[] = {
        {"http://127.0.0.1:2379", VALIDATE_OK, 21},
        {"https://etcd:2379/", VALIDATE_OK, 17},
        {"http://etcd//", VALIDATE_OK, 11},
        {"http://etcd/gateway/", VALIDATE_OK, 19},
        {"http://[::1]", VALIDATE_OK, 12},
        {"HTTP://etcd", VALIDATE_BAD, 0},
        {"http://", VALIDATE_BAD, 0},
        {"http://etcd:", VALIDATE_BAD, 0},
        {"http://etcd:0", VALIDATE_PORT_RANGE, 0},
        {"http://u@etcd", VALIDATE_BAD, 0},
        {"http://etcd#x", VALIDATE_BAD, 0},
        {"http://et cd", VALIDATE_BAD, 0},
        {"unix:///run/etcd.sock", VALIDATE_BAD, 0},
    };

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char why[160] = "";
        size_t keep = 0;
        int r = check_endpoint(cases[i].url, why, sizeof(why), &keep);

        ck_assert_msg(r == cases[i].want, "%s: got %d (%s)", cases[i].url, r, why);
        if (r == VALIDATE_OK)
            ck_assert_uint_eq(keep, cases[i].keep);
    }
}
END_TEST

START_TEST(modes_weights_and_hints)
{
    unsigned mode = 1;
    int32_t w = 5;

    ck_assert_int_eq(parse_mode("0755", &mode), 0);
    ck_assert_uint_eq(mode, 0755);
    ck_assert_int_eq(parse_mode("755", &mode), -1);
    ck_assert_int_eq(parse_mode("0o", &mode), -1);
    ck_assert_int_eq(parse_mode("0o8", &mode), -1);
    ck_assert_int_eq(parse_mode("0x1ff", &mode), -1);
    ck_assert_int_eq(parse_mode("01000", &mode), -2);
    ck_assert_int_eq(parse_mode("077777777777777777777777777", &mode), -2);
    ck_assert_uint_eq(mode, 0755);

    ck_assert_int_eq(parse_weight("0", &w), 0);
    ck_assert_int_eq(w, 0);
    ck_assert_int_eq(parse_weight("-7", &w), 0);
    ck_assert_int_eq(w, -7);
    ck_assert_int_eq(parse_weight("2147483647", &w), 0);
    ck_assert_int_eq(parse_weight("9223372036854775808", &w), -2);
    ck_assert_int_eq(parse_weight("1e3", &w), -1);
    ck_assert_int_eq(parse_weight("", &w), -1);
    ck_assert_int_eq(parse_weight("-", &w), -1);
    ck_assert_int_eq(parse_weight("1_000", &w), -1);
    ck_assert_int_eq(w, 2147483647);

    ck_assert_uint_eq(edit_distance("tiemout", "timeout"), 1);
    ck_assert_uint_eq(edit_distance("", "ttl"), 3);
    ck_assert_uint_eq(edit_distance("wieght", "weight"), 1);
    ck_assert_uint_eq(edit_distance("level", "level"), 0);
}
END_TEST

/* Fails every allocation in turn, from the first on: each run must end in
 * -ENOMEM with "out of memory" and free everything (the leak check is the
 * sanitizer's or valgrind's), until a run needs no failure and succeeds. */
static void chaos(const char *path)
{
    char err[CONFIG_ERR_MAX];
    long n;

    for (n = 0;; n++) {
        struct config *c = (struct config *)&err;
        int r;

        fail_after = n;
        alloc_failed = 0;
        r = config_load(path, &c, err, sizeof(err));
        fail_after = -1;
        if (!alloc_failed) {
            ck_assert_msg(r == 0, "%s: %s", path, err);
            config_free(c);
            break;
        }
        ck_assert_msg(r == -ENOMEM, "allocation %ld: got %d: %s", n, r, err);
        ck_assert_ptr_null(c);
        ck_assert_msg(strstr(err, ": out of memory") != NULL, "%s", err);
    }
    ck_assert_int_gt(n, 20);
}

START_TEST(out_of_memory)
{
    char pw[PATH_MAX], ca[PATH_MAX], text[4 * PATH_MAX];

    chaos(TEST_DATA_DIR "/config-valid/full.yaml");
    chaos(TEST_DATA_DIR "/config-valid/with-conf-d/agent.yaml");
    write_text(tmp_path(pw, "pw"), "secret\n");
    write_text(tmp_path(ca, "ca.pem"), "ca\n");
    snprintf(text, sizeof(text),
             "etcd:\n  endpoints: [https://h]\n"
             "  username: u\n  password_file: %s\n  tls: {ca_file: %s}\n"
             "services:\n  - {name: a, address: 'h:1', group: g,"
             " metadata: {k: v}}\n",
             pw, ca);
    write_text(tmp_path(pw, "agent.yaml"), text);
    chaos(pw);
}
END_TEST

/* ---- Runner ------------------------------------------------------------ */

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc;

    tc = tcase_create("data");
    tcase_add_test(tc, data_folders_have_cases);
    tcase_add_loop_test(tc, invalid_case, 0, (int)n_invalid);
    tcase_add_loop_test(tc, valid_case, 0, (int)n_valid);
    tcase_add_loop_test(tc, empty_files_mean_defaults, 0, 4);
    tcase_add_test(tc, full_file);
    tcase_add_test(tc, conf_d_order);
    tcase_add_test(tc, flow_style_and_bom);
    tcase_add_test(tc, example_config);
    tcase_add_test(tc, example_config_names_every_key);
    tcase_add_test(tc, demo_config);
    tcase_add_test(tc, xds_section);
    tcase_add_test(tc, dns_section);
    tcase_add_test(tc, traffic_section);
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, missing_main_file);
    tcase_add_test(tc, main_file_is_a_folder);
    tcase_add_test(tc, file_size_cap);
    tcase_add_test(tc, password_file);
    tcase_add_test(tc, tls_files);
    tcase_add_test(tc, conf_d_unreadable);
    tcase_add_test(tc, conf_d_beside_relative_path);
    tcase_add_test(tc, socket_path_length);
    tcase_add_test(tc, socket_modes);
    tcase_add_test(tc, values_that_load);
    tcase_add_test(tc, many_entries);
    tcase_add_test(tc, error_buffer);
    tcase_add_test(tc, out_of_memory);
    /* The many-entries and out-of-memory tests take a while under
     * valgrind. */
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);

    tc = tcase_create("helpers");
    tcase_add_test(tc, endpoints);
    tcase_add_test(tc, modes_weights_and_hints);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    invalid_cases = list_cases(TEST_DATA_DIR "/config-invalid", &n_invalid);
    valid_cases = list_cases(TEST_DATA_DIR "/config-valid", &n_valid);
    sr = srunner_create(config_suite());
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(invalid_cases);
    free(valid_cases);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
