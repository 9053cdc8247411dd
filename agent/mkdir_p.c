/* mkdir -p; see mkdir_p.h. */
#include "mkdir_p.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

int mkdir_p(const char *dir, mode_t mode)
{
    char buf[PATH_MAX];
    size_t len = strlen(dir);
    struct stat st;

    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, dir, len + 1);
    /* Each '/' after the first byte ends a folder above dir: cut there,
     * make it, and put the '/' back. */
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(buf, mode) == 0)
        return 0;
    if (errno != EEXIST)
        return -errno;
    /* What is there must be a folder (or a link to one), as for mkdir -p:
     * a file in its place would only fail later, with less to say. */
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}
