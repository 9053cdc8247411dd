/* The configuration loader's entry points: the main file and conf.d, the
 * defaults, and the public API of config.h. The files of agent/config/ and
 * how they share the work are described in config_internal.h. */
#include "config_internal.h"
#include "dns_rules.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

/* ---- Reading files ----------------------------------------------------- */

/* Reads the file at path into a new NUL-terminated buffer. Returns 0, the
 * negative errno of open() or read(), DA_ENOMEM, or DA_EFBIG when the file holds
 * more than cap bytes. A secret is read into one buffer allocated up front,
 * so that no copy of it is left behind by realloc(); the caller wipes it. */
int config__read_all(const char *path, size_t cap, bool secret, char **out, size_t *outlen)
{
    size_t len = 0, alloc = secret ? cap + 2 : 0;
    char *buf = NULL;
    int fd, r = 0;

    *out = NULL;
    *outlen = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    if (alloc > 0 && !(buf = malloc(alloc))) {
        r = DA_ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t k;

        /* One byte beyond cap is read to tell "exactly cap" from "more",
         * and one more is kept for the NUL. */
        if (len + 1 >= alloc) {
            size_t na = alloc == 0 ? 4096 : alloc * 2;
            char *nb;

            if (alloc >= cap + 2) {
                r = DA_EFBIG;
                goto out;
            }
            if (na > cap + 2)
                na = cap + 2;
            nb = realloc(buf, na);
            if (!nb) {
                r = DA_ENOMEM;
                goto out;
            }
            buf = nb;
            alloc = na;
        }
        k = read(fd, buf + len, alloc - 1 - len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            goto out;
        }
        if (k == 0)
            break;
        len += (size_t)k;
        if (len > cap) {
            r = DA_EFBIG;
            goto out;
        }
    }
    if (!buf && !(buf = malloc(1))) {
        r = DA_ENOMEM;
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
out:
    if (buf && secret)
        explicit_bzero(buf, alloc);
    free(buf);
    close(fd);
    return r;
}

/* Checks that a file named in the configuration can be opened for reading
 * now, so that a wrong TLS path stops the agent at start rather than at its
 * first connection. Returns 0 or a negative errno. */
int config__check_readable(const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    int r = 0;

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0)
        r = -errno;
    else if (S_ISDIR(st.st_mode))
        r = -EISDIR;
    close(fd);
    return r;
}

/* ---- Files ------------------------------------------------------- */

/* Reads one file into ld->cfg. ld->file names it while it is read, and
 * names the main file again afterwards, because a conf.d file's name is
 * freed once that file is done. */
static int load_file(struct loader *ld, const char *file, bool is_main)
{
    struct tree t = {NULL, NULL};
    char *buf = NULL;
    size_t len;
    int r;

    ld->file = file;
    r = config__read_all(file, CONFIG_FILE_MAX, false, &buf, &len);
    if (r == DA_EFBIG)
        r = config__fail_at(ld, file, 0, 0, r,
                            "file too large: a configuration "
                            "file may hold at most 1 MiB");
    else if (r == DA_ENOMEM)
        r = config__fail_oom(ld);
    else if (r < 0)
        r = config__fail_at(ld, file, 0, 0, r, "%s", strerror(-r));
    if (r == 0)
        r = config__build_tree(ld, buf, len, &t);
    if (r == 0)
        r = config__load_root(ld, t.root, is_main);
    config__tree_free(&t);
    free(buf);
    ld->file = ld->cfg->path;
    return r;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The conf.d folder is looked for beside the main file, so that a config
 * tree copied elsewhere (or a test's) keeps working as a whole. */
static int load_conf_d(struct loader *ld)
{
    const char *path = ld->cfg->path;
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    char *dir, **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *d;
    int r = 0;

    dir = malloc(dir_len + sizeof("conf.d"));
    if (!dir)
        return config__fail_oom(ld);
    memcpy(dir, path, dir_len);
    memcpy(dir + dir_len, "conf.d", sizeof("conf.d"));
    d = opendir(dir);
    if (!d) {
        r = errno == ENOENT ? 0 : config__fail_at(ld, dir, 0, 0, -errno, "%s", strerror(errno));
        free(dir);
        return r;
    }
    for (;;) {
        size_t len;

        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno != 0)
                r = config__fail_at(ld, dir, 0, 0, -errno, "%s", strerror(errno));
            break;
        }
        len = strlen(de->d_name);
        /* Hidden files are skipped as a shell's "*.yaml" would, which also
         * keeps editors' swap and backup files out. */
        if (de->d_name[0] == '.' || len <= 5 || strcmp(de->d_name + len - 5, ".yaml"))
            continue;
        if (n == cap) {
            size_t nc = cap == 0 ? 16 : cap * 2;
            char **nn = realloc(names, nc * sizeof(*nn));

            if (!nn) {
                r = config__fail_oom(ld);
                break;
            }
            names = nn;
            cap = nc;
        }
        names[n] = malloc(strlen(dir) + 1 + len + 1);
        if (!names[n]) {
            r = config__fail_oom(ld);
            break;
        }
        snprintf(names[n], strlen(dir) + 1 + len + 1, "%s/%s", dir, de->d_name);
        n++;
    }
    closedir(d);
    if (r == 0 && n > 1)
        qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n && r == 0; i++)
        r = load_file(ld, names[i], false);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(dir);
    return r;
}

/* ---- Public functions ------------------------------------------------- */

static int set_defaults(struct loader *ld, const char *path)
{
    struct config *c = ld->cfg;

    c->timeout_ms = DA_DEFAULT_ETCD_TIMEOUT_MS;
    c->session_ttl_ms = DA_DEFAULT_SESSION_TTL_MS;
    c->socket_mode = DA_DEFAULT_SOCKET_MODE;
    c->cache_idle_ms = DA_DEFAULT_CACHE_IDLE_MS;
    c->xds_enabled = DA_DEFAULT_XDS_ENABLED;
    c->xds_mode = UINT_MAX; /* unset: socket.mode's, see config__default_xds_path() */
    c->xds_idle_ms = DA_DEFAULT_XDS_IDLE_MS;
    c->log_level = DA_DEFAULT_LOG_LEVEL;
    c->log_format = DA_DEFAULT_LOG_FORMAT;
    c->http_enabled = DA_DEFAULT_HTTP_ENABLED;
    c->http_max_connections = DA_DEFAULT_HTTP_MAX_CONNECTIONS;
    c->http_max_request_bytes = DA_DEFAULT_HTTP_MAX_REQUEST;
    c->http_timeout_ms = DA_DEFAULT_HTTP_TIMEOUT_MS;
    c->checks_exec = DA_DEFAULT_CHECKS_EXEC;
    c->dns_enabled = true;
    c->dns_ttl = DNS_DEFAULT_TTL;
    c->dns_max_answers = DNS_DEFAULT_MAX_ANSWERS;
    policy_config_defaults(&c->traffic);
    if (!(c->path = config__dup_str(ld, path)) ||
        !(c->prefix = config__dup_str(ld, DA_DEFAULT_ETCD_PREFIX)) ||
        !(c->socket_path = config__dup_str(ld, DA_DEFAULT_SOCKET_PATH)) ||
        !(c->cache_dir = config__dup_str(ld, DA_DEFAULT_CACHE_DIR)) ||
        !(c->xds_group_header = config__dup_str(ld, DA_DEFAULT_XDS_GROUP_HEADER)) ||
        !(c->dns_domain = config__dup_str(ld, DNS_DEFAULT_DOMAIN)))
        return DA_ENOMEM;
    return 0;
}

static int default_endpoints(struct loader *ld)
{
    struct config *c = ld->cfg;

    if (c->n_endpoints > 0)
        return 0;
    c->endpoints = calloc(1, sizeof(*c->endpoints));
    if (!c->endpoints)
        return config__fail_oom(ld);
    c->n_endpoints = 1;
    c->endpoints[0] = config__dup_str(ld, DA_DEFAULT_ETCD_ENDPOINT);
    return !c->endpoints[0] ? DA_ENOMEM : 0;
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct loader ld = {.err = err, .errlen = errlen};
    int r;

    if (err && errlen > 0)
        err[0] = '\0';
    if (!out || !path || path[0] == '\0') {
        if (out)
            *out = NULL;
        return config__fail_at(&ld, "(none)", 0, 0, DA_EINVAL, "no configuration file given");
    }
    *out = NULL;
    ld.file = path;
    ld.cfg = calloc(1, sizeof(*ld.cfg));
    if (!ld.cfg)
        return config__fail_oom(&ld);
    r = set_defaults(&ld, path);
    if (r == 0)
        r = load_file(&ld, ld.cfg->path, true);
    if (r == 0)
        r = load_conf_d(&ld);
    if (r == 0)
        r = config__check_duplicates(&ld);
    if (r == 0)
        r = config__check_exec_allowed(&ld);
    if (r == 0)
        r = default_endpoints(&ld);
    if (r == 0)
        r = config__default_xds_path(&ld);
    if (r == 0)
        r = config__default_dns_listen(&ld);
    if (r == 0)
        r = config__default_http_listen(&ld);
    if (r < 0) {
        config_free(ld.cfg);
        return r;
    }
    *out = ld.cfg;
    return 0;
}

struct config *config_free(struct config *c)
{
    if (!c)
        return NULL;
    free(c->path);
    for (size_t i = 0; c->endpoints && i < c->n_endpoints; i++)
        free(c->endpoints[i]);
    free(c->endpoints);
    free(c->prefix);
    free(c->username);
    free(c->password_file);
    if (c->password) {
        explicit_bzero(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->tls_ca_file);
    free(c->tls_cert_file);
    free(c->tls_key_file);
    free(c->socket_path);
    free(c->register_uids);
    free(c->register_gids);
    free(c->cache_dir);
    free(c->xds_path);
    free(c->xds_tcp);
    free(c->xds_group_header);
    for (size_t i = 0; c->dns_listen && i < c->n_dns_listen; i++)
        free(c->dns_listen[i]);
    free(c->dns_listen);
    free(c->dns_domain);
    policy_config_clear(&c->traffic);
    for (size_t i = 0; c->dns_recursors && i < c->n_dns_recursors; i++)
        free(c->dns_recursors[i]);
    free(c->dns_recursors);
    for (size_t i = 0; c->http_listen && i < c->n_http_listen; i++)
        free(c->http_listen[i]);
    free(c->http_listen);
    for (size_t i = 0; c->services && i < c->n_services; i++) {
        struct config_service *s = &c->services[i];

        free(s->name);
        free(s->address);
        free(s->group);
        for (size_t j = 0; s->meta && j < s->n_meta; j++) {
            free(s->meta[j].key);
            free(s->meta[j].value);
        }
        free(s->meta);
        free(s->file);
        check_spec_clear(&s->check);
    }
    free(c->services);
    free(c);
    return NULL;
}

const struct config_service *config_find_service(const struct config *c, const char *name,
                                                 const char *address)
{
    if (!c || !name || !address)
        return NULL;
    for (size_t i = 0; i < c->n_services; i++) {
        if (!strcmp(c->services[i].name, name) && !strcmp(c->services[i].address, address))
            return &c->services[i];
    }
    return NULL;
}
