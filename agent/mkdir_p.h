/* mkdir -p, written once for every folder the agent makes: the socket
 * server's and the xDS server's socket folders (unix_listen.c) and
 * cache.dir (cache_disk.c). */
#ifndef DA_MKDIR_P_H
#define DA_MKDIR_P_H

#include <sys/types.h>

/* Creates dir and every missing folder above it: dir itself with mode, the
 * ones above with 0755 (both less the umask). A folder that exists already
 * is left as it is, mode included. Returns 0, -ENAMETOOLONG when dir does
 * not fit in PATH_MAX, -ENOTDIR when dir or a folder above it is a file,
 * or the -errno of the mkdir() that failed. */
int mkdir_p(const char *dir, mode_t mode);

#endif
