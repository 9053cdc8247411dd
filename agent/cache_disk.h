/* The cache's copy on disk: one JSON file per service in cache.dir, so that
 * an agent restarted while etcd is down serves the last known lists from
 * its first second. Files are written whole and replaced atomically
 * (temporary file, rename), so a crash of the agent leaves the old file or
 * the new one, never half of one. They are not fsync'ed: the copy is a
 * hint for a restart while etcd is down, and the two fsyncs cost more than
 * the rest of an update delivered to 100 watchers (make bench, issue 18);
 * after a power loss a file may be older than the last save or not whole,
 * and one that is not whole fails its parse on load and is not served.
 *
 * A file is named after a hash of the service's name ("<16 hex>.list"), so
 * that every valid name fits in NAME_MAX; the name itself is inside the
 * file and checked on load, so a collision is never served as the wrong
 * service. Files of earlier versions ("<escaped name>.json") are still
 * read, and renamed to the new name when read. Only regular files are
 * read, opened non-blocking and without following links, so that nothing
 * placed in the folder (a FIFO, a link to a device) can stop the loop. */
#ifndef DA_CACHE_DISK_H
#define DA_CACHE_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "etcd.h"

/* Files larger than this are refused on load. */
#define CACHE_DISK_MAX (64u << 20)

/* At most this many saved lists in cache.dir: beyond it the oldest files of
 * services the agent does not follow are removed, and new ones are not
 * written until a sweep makes room. */
#define CACHE_DISK_FILES 4096

/* The hash that names a service's file (hash_fnv1a() of the name). */
uint64_t cache_disk_hash(const char *name);

/* kvs[i].key holds the key's part after "<prefix>/<name>/". Returns 0 or a
 * negative errno. */
int cache_disk_save(const char *dir, const char *name, int64_t revision, const struct etcd_kv *kvs,
                    size_t n);

/* Reads a service's file: new kvs (free each with etcd_kv_clear, then the
 * array) and the revision. Returns 0, -ENOENT when there is none, -EINVAL
 * for a file that is not ours (another service's, not JSON, not a regular
 * file, a link), or another negative errno. */
int cache_disk_load(const char *dir, const char *name, int64_t *revision, struct etcd_kv **kvs,
                    size_t *n);

/* Removes a service's file (the service was dropped as idle). */
void cache_disk_remove(const char *dir, const char *name);

/* Visits every file of ours in dir: removes temporary files a crash left,
 * files of services that followed(hash, arg) does not claim whose mtime is
 * max_age_ms old or more (0: none for their age), then, while more than cap
 * files are left, the oldest of those. Files of other versions count as
 * not followed. *n_files gets the number of saved lists left. Returns 0 or
 * a negative errno (dir unreadable). */
int cache_disk_sweep(const char *dir, uint64_t max_age_ms, size_t cap,
                     bool (*followed)(uint64_t hash, void *arg), void *arg, size_t *n_files);

/* Creates dir (and parents) with mode 0750 if missing. */
int cache_disk_prepare(const char *dir);

#endif
