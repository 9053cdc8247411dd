#include "cache_disk.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "etcd_parse.h"

/* Service names may hold any byte but '/', so they are escaped into file
 * names: letters, digits, '-', '_' and '.' stay, the rest become %XX. */
static int file_path(char *buf, size_t len, const char *dir, const char *name, const char *suffix)
{
    size_t o = (size_t)snprintf(buf, len, "%s/", dir);

    for (const unsigned char *p = (const unsigned char *)name; *p && o + 4 < len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || (*p == '.' && p != (const unsigned char *)name))
            buf[o++] = (char)*p;
        else
            o += (size_t)snprintf(buf + o, len - o, "%%%02X", *p);
    }
    if (o + strlen(suffix) + 1 > len)
        return -ENAMETOOLONG;
    snprintf(buf + o, len - o, "%s", suffix);
    return 0;
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

int cache_disk_save(const char *dir, const char *name, int64_t revision,
                    const struct etcd_kv *kvs, size_t n)
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
    if ((rc = file_path(path, sizeof path, dir, name, ".json")) ||
        (rc = file_path(tmp, sizeof tmp, dir, name, ".json.tmp")))
        goto out;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
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
    if (fsync(fd) < 0 || close(fd) < 0) {
        fd = -1;
        rc = -errno;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = -errno;
        goto out;
    }
    /* The rename itself must reach the disk too. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
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

int cache_disk_load(const char *dir, const char *name, int64_t *revision,
                    struct etcd_kv **kvs_out, size_t *n_out)
{
    char path[PATH_MAX];
    json_t *o, *arr, *e;
    json_error_t jerr;
    struct etcd_kv *kvs = NULL;
    struct stat st;
    size_t i, n = 0;
    int rc;

    *kvs_out = NULL;
    *n_out = 0;
    if ((rc = file_path(path, sizeof path, dir, name, ".json")))
        return rc;
    if (stat(path, &st) < 0)
        return -errno;
    if (st.st_size > (off_t)CACHE_DISK_MAX)
        return -EFBIG;
    o = json_load_file(path, 0, &jerr);
    if (!o)
        return -EINVAL;
    arr = json_object_get(o, "kvs");
    if (!json_is_array(arr) || !json_is_integer(json_object_get(o, "revision")) ||
        !json_is_string(json_object_get(o, "service")) ||
        strcmp(json_string_value(json_object_get(o, "service")), name)) {
        json_decref(o);
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

    if (!file_path(path, sizeof path, dir, name, ".json"))
        unlink(path);
}
