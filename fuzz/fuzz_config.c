/* Fuzz target: config_load() on arbitrary YAML.
 *
 * The loader reads files, so each input is written to DIR/agent.yaml in a
 * folder made once under /tmp, and loaded from there. A line "#conf.d"
 * in the input starts a conf.d file: the text after it goes to
 * DIR/conf.d/NN-fuzz.yaml (up to four such files), so that the merging of
 * conf.d services is fuzzed too; without one, DIR has no conf.d.
 *
 * Besides memory errors and leaks, it checks what config.h promises: on
 * success every field is within its documented bounds; on failure *out is
 * NULL and err holds one message that starts with the file it is about,
 * truncated to errlen. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"

#define MAX_CONFD 4
#define SEPARATOR "#conf.d\n"

static char dir[64];
static char main_path[128];
static char confd_path[128];

static void cleanup(void)
{
    char p[192];

    for (int i = 0; i < MAX_CONFD; i++) {
        snprintf(p, sizeof p, "%s/%02d-fuzz.yaml", confd_path, i);
        unlink(p);
    }
    rmdir(confd_path);
    unlink(main_path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    snprintf(dir, sizeof dir, "/tmp/da-fuzz-config.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("fuzz_config: mkdtemp");
        abort();
    }
    snprintf(main_path, sizeof main_path, "%s/agent.yaml", dir);
    snprintf(confd_path, sizeof confd_path, "%s/conf.d", dir);
    atexit(cleanup);
    return 0;
}

static void write_file(const char *path, const char *p, size_t n)
{
    FILE *f = fopen(path, "wb");

    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

static bool valid_name(const char *s)
{
    if (!*s)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '/' || *p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

static void check_config(const struct config *c)
{
    FUZZ_CHECK(c->path && !strcmp(c->path, main_path));
    FUZZ_CHECK(c->n_endpoints >= 1 && c->endpoints);
    for (size_t i = 0; i < c->n_endpoints; i++) {
        const char *e = c->endpoints[i];
        size_t n = strlen(e);
        FUZZ_CHECK(!strncmp(e, "http://", 7) || !strncmp(e, "https://", 8));
        FUZZ_CHECK(n > 0 && e[n - 1] != '/');
    }
    FUZZ_CHECK(c->prefix && c->prefix[0] == '/');
    FUZZ_CHECK(c->prefix[strlen(c->prefix) - 1] != '/');
    FUZZ_CHECK(c->timeout_ms >= 1 && c->timeout_ms <= 3600u * 1000);
    FUZZ_CHECK(c->session_ttl_ms >= 2000 && c->session_ttl_ms % 1000 == 0);
    FUZZ_CHECK(c->socket_path &&
               strlen(c->socket_path) < sizeof(((struct sockaddr_un *)0)->sun_path));
    FUZZ_CHECK(c->socket_mode <= 0777);
    FUZZ_CHECK(c->cache_dir);
    FUZZ_CHECK(c->cache_idle_ms > 0);
    FUZZ_CHECK(c->log_level >= 0 && c->log_level <= 3);
    /* A password comes only with its file and a user name. */
    FUZZ_CHECK(!c->password || (c->password_file && c->username));
    FUZZ_CHECK(!c->password_file || c->password);
    FUZZ_CHECK(c->n_services == 0 || c->services);
    for (size_t i = 0; i < c->n_services; i++) {
        const struct config_service *s = &c->services[i];
        FUZZ_CHECK(s->name && valid_name(s->name));
        FUZZ_CHECK(s->address && *s->address);
        FUZZ_CHECK(s->group);
        FUZZ_CHECK(s->file && s->line >= 1 && s->column >= 1);
        FUZZ_CHECK(s->n_meta == 0 || s->meta);
        for (size_t k = 0; k < s->n_meta; k++) {
            FUZZ_CHECK(s->meta[k].key && *s->meta[k].key && s->meta[k].value);
            for (size_t j = 0; j < k; j++)
                FUZZ_CHECK(strcmp(s->meta[j].key, s->meta[k].key) != 0);
        }
        /* (name, address) is unique across the main file and conf.d. */
        FUZZ_CHECK(config_find_service(c, s->name, s->address) == s);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size, *sep;
    char err[CONFIG_ERR_MAX + 16], path[192];
    struct config *c = (struct config *)&c; /* not NULL: must be reset */
    int n_confd = 0, rc;

    /* The main file is everything up to the first separator line. */
    sep = memmem(p, size, SEPARATOR, strlen(SEPARATOR));
    write_file(main_path, p, sep ? (size_t)(sep - p) : size);
    for (int i = 0; i < MAX_CONFD; i++) {
        snprintf(path, sizeof path, "%s/%02d-fuzz.yaml", confd_path, i);
        unlink(path);
    }
    if (sep) {
        if (mkdir(confd_path, 0700) < 0 && errno != EEXIST)
            abort();
        while (sep && n_confd < MAX_CONFD) {
            const char *start = sep + strlen(SEPARATOR);
            sep = memmem(start, (size_t)(end - start), SEPARATOR, strlen(SEPARATOR));
            if (n_confd == MAX_CONFD - 1)
                sep = NULL; /* the last file takes the rest */
            snprintf(path, sizeof path, "%s/%02d-fuzz.yaml", confd_path, n_confd++);
            write_file(path, start, (size_t)((sep ? sep : end) - start));
        }
    } else {
        rmdir(confd_path);
    }

    memset(err, 0x5a, sizeof err);
    rc = config_load(main_path, &c, err, CONFIG_ERR_MAX);
    /* Nothing is written past errlen. */
    for (size_t i = CONFIG_ERR_MAX; i < sizeof err; i++)
        FUZZ_CHECK(err[i] == 0x5a);
    if (rc == 0) {
        FUZZ_CHECK(c != NULL);
        check_config(c);
        FUZZ_CHECK(config_free(c) == NULL);
        return 0;
    }
    FUZZ_CHECK(c == NULL);
    FUZZ_CHECK(rc < 0);
    FUZZ_CHECK(memchr(err, '\0', CONFIG_ERR_MAX));
    /* "FILE:LINE:COLUMN: what" or "FILE: reason", FILE being one of ours. */
    FUZZ_CHECK(!strncmp(err, dir, strlen(dir)));
    FUZZ_CHECK(strstr(err, ": ") != NULL);
    return 0;
}
