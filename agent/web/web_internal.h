/* What the files of the HTTP listener share: web.c (the listeners on the
 * loop, dispatch, responses), web_metrics.c (the exposition) and
 * web_page.c (the status page). Nothing outside agent/web/ includes this. */
#ifndef DA_WEB_INTERNAL_H
#define DA_WEB_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include "web.h"

struct web_listener;
struct web_req;

struct web {
    struct web_options o;
    struct web_deps d;
    struct web_listener *listeners;
    size_t n_listeners;
    struct web_req *reqs; /* requests waiting for the status */
    bool closing;
};

/* A growing text buffer with a hard cap set at init: a reply body. */
struct web_buf {
    char *p;
    size_t len, cap, max;
    bool failed; /* out of memory or over max: the reply is an error */
};

void web__buf_init(struct web_buf *b, size_t max);
void web__buf_add(struct web_buf *b, const char *s, size_t n);
void web__buf_printf(struct web_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void web__buf_free(struct web_buf *b);

/* web_metrics.c: the whole exposition into b. */
void web__metrics(web *w, struct web_buf *b);

/* web_page.c: the status page (one static document) and its type. */
extern const char web__page[];
extern const size_t web__page_len;

#endif
