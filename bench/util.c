/* Clocks, samples and their statistics, and small file helpers. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- samples -------------------------------------------------------------- */

void samples_add(struct samples *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return; /* a benchmark short of memory loses a sample, not the run */
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    s->sorted = false;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double samples_pct(struct samples *s, double p)
{
    size_t rank;

    if (!s->n)
        return NAN;
    if (!s->sorted) {
        qsort(s->v, s->n, sizeof *s->v, cmp_double);
        s->sorted = true;
    }
    /* Nearest rank: the smallest sample with at least p% at or below it. */
    rank = (size_t)ceil(p / 100.0 * (double)s->n);
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return s->v[rank - 1];
}

void samples_free(struct samples *s)
{
    free(s->v);
    memset(s, 0, sizeof *s);
}

void samples_merge(struct samples *dst, const struct samples *src)
{
    for (size_t i = 0; i < src->n; i++)
        samples_add(dst, src->v[i]);
}

int samples_write_quantiles(struct samples *s, const char *path)
{
    FILE *f = fopen(path, "w");

    if (!f)
        return -errno;
    fprintf(f, "# percentile  value   (%zu samples)\n", s->n);
    /* 1 - q from 1 down to 1e-4 in equal steps on a log scale. */
    for (double k = 0; k <= 4.0001; k += 0.02) {
        double q = 100.0 * (1.0 - pow(10.0, -k));
        if (s->n && 100.0 - q < 100.0 / (double)s->n)
            break; /* past what the samples can tell */
        fprintf(f, "%.5f %.3f\n", q, samples_pct(s, q));
    }
    fclose(f);
    return 0;
}

/* ---- runs ------------------------------------------------------------------ */

void runs_add(struct runs *r, double x)
{
    if (r->n < RUNS)
        r->v[r->n++] = x;
}

double runs_median(const struct runs *r)
{
    double v[RUNS];

    if (!r->n)
        return NAN;
    memcpy(v, r->v, sizeof v);
    qsort(v, (size_t)r->n, sizeof *v, cmp_double);
    return r->n % 2 ? v[r->n / 2] : (v[r->n / 2 - 1] + v[r->n / 2]) / 2;
}

double runs_min(const struct runs *r)
{
    double m = NAN;

    for (int i = 0; i < r->n; i++)
        if (isnan(m) || r->v[i] < m)
            m = r->v[i];
    return m;
}

double runs_max(const struct runs *r)
{
    double m = NAN;

    for (int i = 0; i < r->n; i++)
        if (isnan(m) || r->v[i] > m)
            m = r->v[i];
    return m;
}

/* ---- small helpers ----------------------------------------------------------- */

long raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}

int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    int rc = 0;

    if (!f)
        return -errno;
    if (fputs(text, f) < 0)
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    return rc;
}
