#include "cache_disk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "etcd_parse.h"
#include "hash.h"
#include "mkdir_p.h"

uint64_t cache_disk_hash(const char *name)
{
    return hash_fnv1a(name);
}

/* "<dir>/<16 hex>.list<suffix>": always short, whatever the name. */
static int file_path(char *buf, size_t len, const char *dir, const char *name, const char *suffix)
{
    int n = snprintf(buf, len, "%s/%016llx.list%s", dir, (unsigned long long)cache_disk_hash(name),
                     suffix);

    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* The name earlier versions used: letters, digits, '-', '_' and '.' stay,
 * the rest become %XX, then ".json". Long names do not fit in NAME_MAX
 * this way, which is why it was replaced; such files were never written. */
static int legacy_path(char *buf, size_t len, const char *dir, const char *name)
{
    size_t o = (size_t)snprintf(buf, len, "%s/", dir);

    for (const unsigned char *p = (const unsigned char *)name; *p && o + 4 < len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || (*p == '.' && p != (const unsigned char *)name))
            buf[o++] = (char)*p;
        else
            o += (size_t)snprintf(buf + o, len - o, "%%%02X", *p);
    }
    if (o + sizeof ".json" > len)
        return -ENAMETOOLONG;
    snprintf(buf + o, len - o, ".json");
    return 0;
}

/* Reads a whole regular file without ever waiting on another process:
 * O_NONBLOCK keeps the open of a FIFO from waiting for a writer,
 * O_NOFOLLOW refuses links (to a device, say), and anything but a regular
 * file is refused before the first read. New text, NUL-terminated. */
static int read_regular(const char *path, char **text, size_t *len)
{
    struct stat st;
    char *buf = NULL;
    size_t off = 0;
    int fd, rc;

    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ELOOP ? -EINVAL : -errno;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    rc = -EINVAL;
    if (!S_ISREG(st.st_mode))
        goto out;
    rc = -EFBIG;
    if (st.st_size > (off_t)CACHE_DISK_MAX)
        goto out;
    rc = -ENOMEM;
    if (!(buf = malloc((size_t)st.st_size + 1)))
        goto out;
    /* The size is the one fstat saw: a file that grows meanwhile is cut
     * there, and fails to parse, rather than growing the buffer. */
    while (off < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            goto out;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    buf[off] = '\0';
    *text = buf;
    *len = off;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    close(fd);
    return rc;
}

int cache_disk_prepare(const char *dir)
{
    char path[PATH_MAX];

    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0750) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int cache_disk_save(const char *dir, const char *name, int64_t revision, const struct etcd_kv *kvs,
                    size_t n)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    json_t *o = json_object(), *arr = json_array();
    char *text = NULL;
    int fd = -1, rc = -ENOMEM;

    if (!o || !arr)
        goto out;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_pack("{s:s%, s:s%, s:I}", "key", kvs[i].key, kvs[i].key_len, "value",
                              kvs[i].value, kvs[i].value_len, "lease", (json_int_t)kvs[i].lease);
        /* A key or value that is not UTF-8 cannot be a JSON string; such a
         * value was skipped as invalid anyway, so it is left out here. */
        if (!e)
            continue;
        if (json_array_append_new(arr, e))
            goto out;
    }
    if (json_object_set_new(o, "service", json_string(name)) ||
        json_object_set_new(o, "revision", json_integer(revision)) ||
        json_object_set(o, "kvs", arr))
        goto out;
    if (!(text = json_dumps(o, JSON_COMPACT)))
        goto out;
    if ((rc = file_path(path, sizeof path, dir, name, "")) ||
        (rc = file_path(tmp, sizeof tmp, dir, name, ".tmp")))
        goto out;
    /* A new file of our own, never whatever sits at that name: opening a
     * FIFO or a link someone left there could wait or write elsewhere. */
    if (unlink(tmp) < 0 && errno != ENOENT) {
        rc = -errno;
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0640);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = -errno;
            goto out;
        }
        off += (size_t)w;
    }
    /* No fsync, here or of the folder after the rename: see cache_disk.h. */
    if (close(fd) < 0) {
        fd = -1;
        rc = -errno;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = -errno;
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(text);
    json_decref(arr);
    json_decref(o);
    return rc;
}

int cache_disk_load(const char *dir, const char *name, int64_t *revision, struct etcd_kv **kvs_out,
                    size_t *n_out)
{
    char path[PATH_MAX], old[PATH_MAX], *text = NULL;
    json_t *o, *arr, *e;
    json_error_t jerr;
    struct etcd_kv *kvs = NULL;
    size_t i, n = 0, len = 0;
    bool migrated = false;
    int rc;

    *kvs_out = NULL;
    *n_out = 0;
    if ((rc = file_path(path, sizeof path, dir, name, "")))
        return rc;
    rc = read_regular(path, &text, &len);
    if (rc == -ENOENT && !legacy_path(old, sizeof old, dir, name)) {
        rc = read_regular(old, &text, &len);
        /* From now on under its new name; the name inside is checked
         * below, and a file that is not this service's goes back. */
        if (rc == 0)
            migrated = rename(old, path) == 0;
    }
    if (rc < 0)
        return rc;
    o = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!o)
        return -EINVAL;
    arr = json_object_get(o, "kvs");
    if (!json_is_array(arr) || !json_is_integer(json_object_get(o, "revision")) ||
        !json_is_string(json_object_get(o, "service")) ||
        strcmp(json_string_value(json_object_get(o, "service")), name)) {
        json_decref(o);
        if (migrated)
            rename(path, old);
        return -EINVAL;
    }
    *revision = json_integer_value(json_object_get(o, "revision"));
    if (json_array_size(arr) && !(kvs = calloc(json_array_size(arr), sizeof *kvs))) {
        json_decref(o);
        return -ENOMEM;
    }
    json_array_foreach(arr, i, e) {
        json_t *k = json_object_get(e, "key"), *v = json_object_get(e, "value");
        if (!json_is_string(k) || !json_is_string(v))
            continue;
        kvs[n].key = strndup(json_string_value(k), json_string_length(k));
        kvs[n].value = strndup(json_string_value(v), json_string_length(v));
        kvs[n].key_len = json_string_length(k);
        kvs[n].value_len = json_string_length(v);
        kvs[n].lease = json_integer_value(json_object_get(e, "lease"));
        if (!kvs[n].key || !kvs[n].value) {
            etcd_kv_clear(&kvs[n]);
            continue;
        }
        n++;
    }
    json_decref(o);
    *kvs_out = kvs;
    *n_out = n;
    return 0;
}

void cache_disk_remove(const char *dir, const char *name)
{
    char path[PATH_MAX];

    if (!file_path(path, sizeof path, dir, name, ""))
        unlink(path);
}

/* What a name in cache.dir is to us. */
enum file_kind { FILE_OTHER, FILE_LIST, FILE_LEGACY, FILE_TMP };

static enum file_kind file_kind(const char *f, uint64_t *hash)
{
    size_t n = strlen(f);
    char hex[17];

    if (n == 16 + strlen(".list") || n == 16 + strlen(".list.tmp")) {
        if (strspn(f, "0123456789abcdef") == 16 && !strncmp(f + 16, ".list", 5)) {
            memcpy(hex, f, 16);
            hex[16] = '\0';
            *hash = strtoull(hex, NULL, 16);
            return f[21] ? FILE_TMP : FILE_LIST;
        }
    }
    /* Earlier versions: "<escaped name>.json" and ".json.tmp". */
    if (n > strlen(".json.tmp") && !strcmp(f + n - strlen(".json.tmp"), ".json.tmp"))
        return FILE_TMP;
    if (n > strlen(".json") && !strcmp(f + n - strlen(".json"), ".json"))
        return FILE_LEGACY;
    return FILE_OTHER;
}

struct old_file {
    char *name;
    struct timespec mtime;
};

static int by_mtime(const void *a, const void *b)
{
    const struct old_file *x = a, *y = b;

    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    return (x->mtime.tv_nsec > y->mtime.tv_nsec) - (x->mtime.tv_nsec < y->mtime.tv_nsec);
}

int cache_disk_sweep(const char *dir, uint64_t max_age_ms, size_t cap,
                     bool (*followed)(uint64_t hash, void *arg), void *arg, size_t *n_files)
{
    struct old_file *cand = NULL;
    size_t n_cand = 0, cap_cand = 0, kept = 0;
    struct timespec now;
    struct dirent *de;
    DIR *d;
    int rc = 0;

    *n_files = 0;
    d = opendir(dir);
    if (!d)
        return -errno;
    clock_gettime(CLOCK_REALTIME, &now);
    while ((de = readdir(d))) {
        uint64_t hash = 0;
        enum file_kind k = file_kind(de->d_name, &hash);
        struct stat st;

        /* Never a link, never anything but a regular file: what is not
         * ours stays, and nothing here opens a file. */
        if (k == FILE_OTHER || fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISREG(st.st_mode))
            continue;
        /* Every save renames its temporary file before it returns, on the
         * same thread as this sweep: one seen here was left by a crash. */
        if (k == FILE_TMP) {
            unlinkat(dirfd(d), de->d_name, 0);
            continue;
        }
        if (k == FILE_LIST && followed && followed(hash, arg)) {
            kept++;
            continue;
        }
        int64_t age_ms = (int64_t)(now.tv_sec - st.st_mtim.tv_sec) * 1000 +
                         (now.tv_nsec - st.st_mtim.tv_nsec) / 1000000;
        if (max_age_ms && age_ms >= 0 && (uint64_t)age_ms >= max_age_ms) {
            unlinkat(dirfd(d), de->d_name, 0);
            continue;
        }
        if (n_cand == cap_cand) {
            size_t c2 = cap_cand ? cap_cand * 2 : 64;
            struct old_file *g = realloc(cand, c2 * sizeof *g);
            if (!g) {
                rc = -ENOMEM;
                break;
            }
            cand = g;
            cap_cand = c2;
        }
        if (!(cand[n_cand].name = strdup(de->d_name))) {
            rc = -ENOMEM;
            break;
        }
        cand[n_cand++].mtime = st.st_mtim;
    }
    /* Over the cap: the oldest go first. Followed services keep theirs. */
    if (rc == 0 && kept + n_cand > cap) {
        size_t drop = kept + n_cand - cap;
        if (drop > n_cand)
            drop = n_cand;
        qsort(cand, n_cand, sizeof *cand, by_mtime);
        for (size_t i = 0; i < drop; i++) {
            unlinkat(dirfd(d), cand[i].name, 0);
            free(cand[i].name);
            cand[i].name = NULL;
        }
        *n_files = kept + n_cand - drop;
    } else {
        *n_files = kept + n_cand;
    }
    for (size_t i = 0; i < n_cand; i++)
        free(cand[i].name);
    free(cand);
    closedir(d);
    return rc;
}
