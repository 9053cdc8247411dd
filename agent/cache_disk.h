/* The cache's copy on disk: one JSON file per service in cache.dir, so that
 * an agent restarted while etcd is down serves the last known lists from
 * its first second. Files are written whole and atomically (temporary file,
 * fsync, rename, fsync of the folder), so a crash leaves the old file or
 * the new one, never half of one. */
#ifndef DA_CACHE_DISK_H
#define DA_CACHE_DISK_H

#include <stddef.h>
#include <stdint.h>

#include "etcd.h"

/* Files larger than this are refused on load. */
#define CACHE_DISK_MAX (64u << 20)

/* kvs[i].key holds the key's part after "<prefix>/<name>/". Returns 0 or a
 * negative errno. */
int cache_disk_save(const char *dir, const char *name, int64_t revision,
                    const struct etcd_kv *kvs, size_t n);

/* Reads a service's file: new kvs (free each with etcd_kv_clear, then the
 * array) and the revision. Returns 0, -ENOENT when there is none, -EINVAL
 * for a file that is not ours, or another negative errno. */
int cache_disk_load(const char *dir, const char *name, int64_t *revision,
                    struct etcd_kv **kvs, size_t *n);

/* Removes a service's file (the service was dropped as idle). */
void cache_disk_remove(const char *dir, const char *name);

/* Creates dir (and parents) with mode 0750 if missing. */
int cache_disk_prepare(const char *dir);

#endif
