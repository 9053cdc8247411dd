/* What /proc says about a process: resident memory, CPU time, threads, and
 * its TCP connections to a port. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

static long status_field(pid_t pid, const char *name)
{
    char path[64], line[256];
    size_t nlen = strlen(name);
    long v = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, name, nlen) && line[nlen] == ':') {
            v = strtol(line + nlen + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

long proc_rss_kib(pid_t pid)
{
    return status_field(pid, "VmRSS");
}

long proc_rss_anon_kib(pid_t pid)
{
    return status_field(pid, "RssAnon");
}

int proc_threads(pid_t pid)
{
    return (int)status_field(pid, "Threads");
}

double proc_cpu_s(pid_t pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut = 0, st = 0;
    FILE *f;
    size_t n;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return -1;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields are counted
     * from the last ')'. utime and stime are fields 14 and 15. */
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

double proc_cpu_sched_s(pid_t pid)
{
    char path[64];
    unsigned long long total = 0;
    struct dirent *d;
    DIR *dir;

    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    dir = opendir(path);
    if (!dir)
        return -1;
    while ((d = readdir(dir))) {
        char p2[160];
        unsigned long long ns;
        FILE *f;
        if (d->d_name[0] == '.')
            continue;
        snprintf(p2, sizeof p2, "%s/%s/schedstat", path, d->d_name);
        f = fopen(p2, "r");
        if (f && fscanf(f, "%llu", &ns) == 1)
            total += ns;
        if (f)
            fclose(f);
    }
    closedir(dir);
    return (double)total / 1e9;
}

static int cmp_ul(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return (x > y) - (x < y);
}

int proc_tcp_conns_to(pid_t pid, int port)
{
    char path[96], link[64], line[512];
    unsigned long *inodes = NULL;
    size_t n = 0, cap = 0;
    struct dirent *d;
    int count = 0;
    DIR *dir;
    FILE *f;

    /* The socket inodes the process holds... */
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    dir = opendir(path);
    if (!dir)
        return -1;
    while ((d = readdir(dir))) {
        char fdpath[160];
        ssize_t l;
        unsigned long ino;

        snprintf(fdpath, sizeof fdpath, "%s/%s", path, d->d_name);
        l = readlink(fdpath, link, sizeof link - 1);
        if (l <= 0)
            continue;
        link[l] = '\0';
        if (sscanf(link, "socket:[%lu]", &ino) != 1)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            unsigned long *v = realloc(inodes, cap * sizeof *v);
            if (!v)
                break;
            inodes = v;
        }
        inodes[n++] = ino;
    }
    closedir(dir);
    qsort(inodes, n, sizeof *inodes, cmp_ul);

    /* ...that the TCP table shows established to 127.0.0.1:port. */
    snprintf(path, sizeof path, "/proc/%d/net/tcp", (int)pid);
    f = fopen(path, "r");
    if (!f) {
        free(inodes);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        unsigned rport, state;
        unsigned long ino;
        if (sscanf(line, " %*d: %*x:%*x %*x:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &rport, &state,
                   &ino) != 3)
            continue;
        if ((int)rport == port && state == 1 /* ESTABLISHED */ && n &&
            bsearch(&ino, inodes, n, sizeof *inodes, cmp_ul))
            count++;
    }
    fclose(f);
    free(inodes);
    return count;
}
