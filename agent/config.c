/* The configuration loader.
 *
 * A file is read whole (up to CONFIG_FILE_MAX), turned by libyaml's event
 * API into a small tree of nodes that remember their line and column, and
 * that tree is then walked section by section. The tree step exists so that
 * every later message can point at the exact key or value it is about, and
 * so that anchors, aliases and tags are refused where they appear (libyaml's
 * document API would resolve aliases silently). */
#include "config.h"
#include "duration.h"
#include "validate.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <grp.h>
#include <pwd.h>
#include <yaml.h>

/* Our schema is four levels deep; anything much deeper is a mistake or an
 * attack, and a cap keeps the node stack a fixed array. */
#define MAX_DEPTH 32

/* A password file holds one password; a cap stops a wrong path (a log file,
 * say) from being read into memory and sent to etcd. */
#define PASSWORD_MAX 4096

/* An etcd cluster has a handful of members; a cap keeps the duplicate check
 * trivial and catches a runaway list. */
#define MAX_ENDPOINTS 64

/* A per-request timeout above an hour is never what was meant, and the cap
 * keeps the value safe to hand to libcurl as a long. */
#define TIMEOUT_MAX_MS (3600u * 1000u)

/* etcd refuses leases longer than this many seconds (its MaxLeaseTTL). */
#define TTL_MAX_S 9000000000ull
#define TTL_MIN_MS 2000u

/* Longest usable unix socket path, without the NUL. */
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path) - 1)

#define DEFAULT_ENDPOINT "http://127.0.0.1:2379"
#define DEFAULT_PREFIX "/micro"
#define DEFAULT_TIMEOUT_MS 5000u
#define DEFAULT_TTL_MS 10000u
#define DEFAULT_SOCKET_PATH "/run/discovery-agent/agent.sock"
#define DEFAULT_SOCKET_MODE 0660u
#define DEFAULT_CACHE_DIR "/var/lib/discovery-agent"
#define DEFAULT_CACHE_IDLE_MS (10u * 60u * 1000u)
#define DEFAULT_XDS_SOCKET_NAME "xds.sock"  /* beside socket.path */
#define DEFAULT_XDS_GROUP_HEADER "x-group"
#define DEFAULT_XDS_IDLE_MS (60u * 1000u)
/* http: loopback only. Port 8608: beside the agent's DNS port (8600) and
 * outside 9100-9999, where Prometheus exporters take theirs (node 9100,
 * CoreDNS 9153, ...); Consul (8300-8302, 8500-8503, 8600), Nomad
 * (4646-4648), Vault (8200-8201) and Istio's agent (15000-15090) use none
 * of it. */
#define DEFAULT_HTTP_LISTEN "127.0.0.1:8608"
#define DEFAULT_HTTP_MAX_CONNECTIONS 64u
#define DEFAULT_HTTP_MAX_REQUEST 16384u     /* request line and headers */
#define DEFAULT_HTTP_TIMEOUT_MS (10u * 1000u) /* idle connection */
#define MAX_HTTP_LISTEN 16
/* A header name is one token of an HTTP/2 header block; a cap keeps it
 * readable in routes and messages. */
#define XDS_HEADER_MAX 64

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- The YAML tree ---------------------------------------------------- */

enum node_kind { NODE_SCALAR, NODE_SEQ, NODE_MAP };

/* Every node of a tree is also on the tree's next_alloc list, so that
 * freeing a tree needs no recursion. */
struct node {
    enum node_kind kind;
    int line, column;          /* 1-based, where the node starts */
    int plain;                 /* a scalar written without quotes */
    char *text;                /* a scalar's value, NUL-terminated */
    struct node **items;       /* a sequence's items, or a mapping's keys */
    size_t n_items, cap_items; /* and values alternately */
    struct node *next_alloc;
};

struct tree {
    struct node *root;         /* NULL for a file without a document */
    struct node *all;
};

/* ---- The loader's state and its error reporting --------------------- */

struct loader {
    struct config *cfg;
    const char *file;          /* the file being read, for messages */
    char *err;
    size_t errlen;
    int failed;                /* the first message wins */
    size_t cap_services;
};

/* A user's text as it may appear inside a message: at most 64 bytes of it,
 * cut on a character boundary, with control bytes shown as '?', so that one
 * message stays one readable line. */
struct shown {
    char s[80];
};

static const char *show(struct shown *b, const char *s)
{
    size_t n = strlen(s), max = 64, i;

    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        b->s[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (n < strlen(s)) {
        memcpy(b->s + i, "...", 3);
        i += 3;
    }
    b->s[i] = '\0';
    return b->s;
}

static int vfail(struct loader *ld, const char *file, int line, int column,
                 int code, const char *fmt, va_list ap)
{
    if (!ld->failed && ld->err != NULL && ld->errlen > 0) {
        int n;

        if (line > 0)
            n = snprintf(ld->err, ld->errlen, "%s:%d:%d: ", file, line,
                         column);
        else
            n = snprintf(ld->err, ld->errlen, "%s: ", file);
        if (n >= 0 && (size_t)n < ld->errlen)
            vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
    }
    ld->failed = 1;
    return code;
}

__attribute__((format(printf, 6, 7)))
static int fail_at(struct loader *ld, const char *file, int line, int column,
                   int code, const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vfail(ld, file, line, column, code, fmt, ap);
    va_end(ap);
    return r;
}

/* Reports a content error at a node of the file being read. */
__attribute__((format(printf, 3, 4)))
static int fail_node(struct loader *ld, const struct node *n,
                     const char *fmt, ...)
{
    va_list ap;
    int r;

    va_start(ap, fmt);
    r = vfail(ld, ld->file, n->line, n->column, -EINVAL, fmt, ap);
    va_end(ap);
    return r;
}

static int fail_oom(struct loader *ld)
{
    return fail_at(ld, ld->file, 0, 0, -ENOMEM, "out of memory");
}

static char *dup_str(struct loader *ld, const char *s)
{
    char *d = strdup(s);

    if (d == NULL)
        fail_oom(ld);
    return d;
}

/* Replaces *dst with a copy of s. */
static int set_str(struct loader *ld, char **dst, const char *s)
{
    char *d = dup_str(ld, s);

    if (d == NULL)
        return -ENOMEM;
    free(*dst);
    *dst = d;
    return 0;
}

/* ---- Reading files -------------------------------------------------- */

/* Reads the file at path into a new NUL-terminated buffer. Returns 0, the
 * negative errno of open() or read(), -ENOMEM, or -EFBIG when the file holds
 * more than cap bytes. A secret is read into one buffer allocated up front,
 * so that no copy of it is left behind by realloc(); the caller wipes it. */
static int read_all(const char *path, size_t cap, int secret, char **out,
                    size_t *outlen)
{
    size_t len = 0, alloc = secret ? cap + 2 : 0;
    char *buf = NULL;
    int fd, r = 0;

    *out = NULL;
    *outlen = 0;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    if (alloc > 0 && (buf = malloc(alloc)) == NULL) {
        r = -ENOMEM;
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
                r = -EFBIG;
                goto out;
            }
            if (na > cap + 2)
                na = cap + 2;
            nb = realloc(buf, na);
            if (nb == NULL) {
                r = -ENOMEM;
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
            r = -EFBIG;
            goto out;
        }
    }
    if (buf == NULL && (buf = malloc(1)) == NULL) {
        r = -ENOMEM;
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    buf = NULL;
out:
    if (buf != NULL && secret)
        explicit_bzero(buf, alloc);
    free(buf);
    close(fd);
    return r;
}

/* Checks that a file named in the configuration can be opened for reading
 * now, so that a wrong TLS path stops the agent at start rather than at its
 * first connection. Returns 0 or a negative errno. */
static int check_readable(const char *path)
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

/* ---- Building the tree ------------------------------------------------ */

static void tree_free(struct tree *t)
{
    struct node *n = t->all;

    while (n != NULL) {
        struct node *next = n->next_alloc;
        free(n->text);
        free(n->items);
        free(n);
        n = next;
    }
    t->all = NULL;
    t->root = NULL;
}

static int add_item(struct node *parent, struct node *child)
{
    if (parent->n_items == parent->cap_items) {
        size_t nc = parent->cap_items == 0 ? 8 : parent->cap_items * 2;
        struct node **ni = realloc(parent->items, nc * sizeof(*ni));

        if (ni == NULL)
            return -ENOMEM;
        parent->items = ni;
        parent->cap_items = nc;
    }
    parent->items[parent->n_items++] = child;
    return 0;
}

static int syntax_error(struct loader *ld, const yaml_parser_t *p,
                        const char *buf, size_t len)
{
    const char *problem = p->problem ? p->problem : "unknown problem";

    if (p->error == YAML_MEMORY_ERROR)
        return fail_oom(ld);
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset, not a mark; count lines and
         * characters up to it ourselves. */
        int line = 1, column = 1;

        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (buf[i] == '\n') {
                line++;
                column = 1;
            } else if (((unsigned char)buf[i] & 0xC0) != 0x80) {
                column++;
            }
        }
        if (p->problem_value != -1)
            return fail_at(ld, ld->file, line, column, -EINVAL,
                           "%s (#x%X): the file must be UTF-8 text without "
                           "control characters", problem,
                           (unsigned)p->problem_value);
        return fail_at(ld, ld->file, line, column, -EINVAL,
                       "%s: the file must be UTF-8 text", problem);
    }
    if (p->context != NULL)
        return fail_at(ld, ld->file, (int)p->problem_mark.line + 1,
                       (int)p->problem_mark.column + 1, -EINVAL,
                       "YAML syntax error: %s (%s at %d:%d)", problem,
                       p->context, (int)p->context_mark.line + 1,
                       (int)p->context_mark.column + 1);
    return fail_at(ld, ld->file, (int)p->problem_mark.line + 1,
                   (int)p->problem_mark.column + 1, -EINVAL,
                   "YAML syntax error: %s", problem);
}

/* Handles one event: a new node joins its parent (or becomes the root) and
 * collections are pushed and popped. */
static int tree_event(struct loader *ld, struct tree *t,
                      const yaml_event_t *ev, struct node **stack,
                      int *depth, int *docs)
{
    struct shown a;
    const yaml_char_t *anchor = NULL, *tag = NULL;
    struct node *n;
    int line = (int)ev->start_mark.line + 1;
    int column = (int)ev->start_mark.column + 1;

    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++*docs > 1)
            return fail_at(ld, ld->file, line, column, -EINVAL,
                           "a second YAML document starts here: a "
                           "configuration file holds one; move it to a "
                           "file of its own");
        return 0;
    case YAML_ALIAS_EVENT:
        return fail_at(ld, ld->file, line, column, -EINVAL,
                       "aliases ('*%s') are not supported: write the value "
                       "out in full",
                       show(&a, (const char *)ev->data.alias.anchor));
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        --*depth;
        return 0;
    case YAML_SCALAR_EVENT:
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        break;
    default:
        return 0;
    }

    if (anchor != NULL)
        return fail_at(ld, ld->file, line, column, -EINVAL,
                       "anchors ('&%s') and aliases are not supported: "
                       "write each value out in full",
                       show(&a, (const char *)anchor));
    if (tag != NULL)
        return fail_at(ld, ld->file, line, column, -EINVAL,
                       "tags ('%s') are not supported: remove the tag, and "
                       "quote the value if it must be text",
                       show(&a, (const char *)tag));
    if (ev->type == YAML_SCALAR_EVENT &&
        memchr(ev->data.scalar.value, '\0', ev->data.scalar.length) != NULL)
        return fail_at(ld, ld->file, line, column, -EINVAL,
                       "a value holds a NUL character (\\0): remove it");
    if (ev->type != YAML_SCALAR_EVENT && *depth >= MAX_DEPTH)
        return fail_at(ld, ld->file, line, column, -EINVAL,
                       "values are nested more than %d levels deep: the "
                       "configuration needs at most four", MAX_DEPTH);

    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return fail_oom(ld);
    n->next_alloc = t->all;
    t->all = n;
    n->line = line;
    n->column = column;
    if (ev->type == YAML_SCALAR_EVENT) {
        n->kind = NODE_SCALAR;
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        n->text = strndup((const char *)ev->data.scalar.value,
                          ev->data.scalar.length);
        if (n->text == NULL)
            return fail_oom(ld);
    } else {
        n->kind = ev->type == YAML_MAPPING_START_EVENT ? NODE_MAP : NODE_SEQ;
    }
    if (*depth == 0)
        t->root = n;
    else if (add_item(stack[*depth - 1], n) < 0)
        return fail_oom(ld);
    if (n->kind != NODE_SCALAR)
        stack[(*depth)++] = n;
    return 0;
}

static int build_tree(struct loader *ld, const char *buf, size_t len,
                      struct tree *t)
{
    struct node *stack[MAX_DEPTH];
    yaml_parser_t p;
    int depth = 0, docs = 0, r = 0, done = 0;

    if (!yaml_parser_initialize(&p))
        return fail_oom(ld);
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    while (!done && r == 0) {
        yaml_event_t ev;

        if (!yaml_parser_parse(&p, &ev)) {
            r = syntax_error(ld, &p, buf, len);
            break;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        r = tree_event(ld, t, &ev, stack, &depth, &docs);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return r;
}

/* ---- Reading values out of the tree ----------------------------------- */

/* YAML's spellings of null; an empty plain value is one too. */
static int is_null(const struct node *n)
{
    return n->kind == NODE_SCALAR && n->plain &&
           (n->text[0] == '\0' || strcmp(n->text, "~") == 0 ||
            strcmp(n->text, "null") == 0 || strcmp(n->text, "Null") == 0 ||
            strcmp(n->text, "NULL") == 0);
}

static const char *kind_name(const struct node *n)
{
    if (n->kind == NODE_MAP)
        return "a mapping";
    if (n->kind == NODE_SEQ)
        return "a sequence";
    return is_null(n) ? "an empty value" : "a single value";
}

/* Returns 0 if val is a mapping, 1 if it is empty (which counts as an empty
 * mapping), or an error. */
static int want_map(struct loader *ld, const char *what,
                    const struct node *val)
{
    if (val->kind == NODE_MAP)
        return 0;
    if (is_null(val))
        return 1;
    return fail_node(ld, val, "%s must be a mapping (indented 'key: value' "
                     "lines), not %s", what, kind_name(val));
}

/* Like want_map(), for sequences. */
static int want_seq(struct loader *ld, const char *what,
                    const struct node *val)
{
    if (val->kind == NODE_SEQ)
        return 0;
    if (is_null(val))
        return 1;
    return fail_node(ld, val, "%s must be a sequence (indented '- item' "
                     "lines, or [a, b]), not %s", what, kind_name(val));
}

/* Gets the text of a single value; an empty value is an error reported at
 * key, because an empty value's own mark points past the line. */
static int want_text(struct loader *ld, const char *what,
                     const struct node *key, const struct node *val,
                     const char **text)
{
    *text = "";
    if (val->kind != NODE_SCALAR)
        return fail_node(ld, val, "%s must be a single value, not %s", what,
                         kind_name(val));
    if (is_null(val))
        return fail_node(ld, key, "%s has no value: write one after the "
                         "':'", what);
    *text = val->text;
    return 0;
}

/* Like want_text(), and the text may not be "". */
static int want_nonempty(struct loader *ld, const char *what,
                         const struct node *key, const struct node *val,
                         const char **text)
{
    int r = want_text(ld, what, key, val, text);

    if (r == 0 && (*text)[0] == '\0')
        return fail_node(ld, val, "%s is empty: give a value", what);
    return r;
}

/* Optimal string alignment distance, for "did you mean" hints. Both
 * strings are short: callers pass known keys and skip long input. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t d[33][33];

    if (la > 32 || lb > 32)
        return SIZE_MAX;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = d[i - 1][j] + 1;

            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
                a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[la][lb];
}

/* Writes "a, b, c" into buf, cut short if it does not fit. */
static void join_keys(char *buf, size_t size, const char *const *keys,
                      size_t n_keys)
{
    size_t off = 0;

    buf[0] = '\0';
    for (size_t k = 0; k < n_keys && off < size; k++) {
        int w = snprintf(buf + off, size - off, "%s%s", k ? ", " : "",
                         keys[k]);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

/* Checks the i-th key of map against the section's known keys. Returns the
 * key's index, or an error for a key that is not a plain name, is unknown,
 * or was given before in this mapping (seen[] holds the earlier key nodes).
 * where completes "unknown key 'x' ...", e.g. "in etcd". */
static int section_key(struct loader *ld, const struct node *map, size_t i,
                       const char *const *keys, size_t n_keys,
                       const struct node **seen, const char *where)
{
    const struct node *key = map->items[2 * i];
    struct shown a;
    size_t best = SIZE_MAX, best_d = SIZE_MAX;
    char list[256];

    if (key->kind != NODE_SCALAR)
        return fail_node(ld, key, "keys must be plain names, not %s",
                         kind_name(key));
    for (size_t k = 0; k < n_keys; k++) {
        size_t d;

        if (strcmp(key->text, keys[k]) == 0) {
            if (seen[k] != NULL)
                return fail_node(ld, key, "key '%s' given twice %s (first "
                                 "at %d:%d): keep only one", keys[k], where,
                                 seen[k]->line, seen[k]->column);
            seen[k] = key;
            return (int)k;
        }
        d = edit_distance(key->text, keys[k]);
        if (d < best_d) {
            best_d = d;
            best = k;
        }
    }
    if (best_d <= 2 && best_d < strlen(keys[best]))
        return fail_node(ld, key, "unknown key '%s' %s (did you mean '%s'?)",
                         show(&a, key->text), where, keys[best]);
    /* Without a close match, listing the known keys tells the reader what
     * may go here. */
    join_keys(list, sizeof(list), keys, n_keys);
    return fail_node(ld, key, "unknown key '%s' %s (known keys: %s)",
                     show(&a, key->text), where, list);
}

/* ---- Checking values -------------------------------------------------- */

/* Puts why into the caller's buffer for check_endpoint(). */
static int fail_why(char *buf, size_t len, const char *why)
{
    snprintf(buf, len, "%s", why);
    return VALIDATE_BAD;
}

/* Checks an etcd endpoint URL; on success *keep is the length without
 * trailing slashes. The reason for a refusal goes into why. */
static int check_endpoint(const char *url, char *why, size_t whylen,
                          size_t *keep)
{
    size_t len = strlen(url), skip, auth;
    int r;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c == 0x7f)
            return fail_why(why, whylen, "it may not contain spaces or "
                            "control characters");
    }
    if (strncmp(url, "http://", 7) == 0)
        skip = 7;
    else if (strncmp(url, "https://", 8) == 0)
        skip = 8;
    else
        return fail_why(why, whylen, "it must start with http:// or "
                        "https://");
    if (strpbrk(url, "?#") != NULL)
        return fail_why(why, whylen, "it may not have a query or fragment "
                        "('?' or '#')");
    auth = strcspn(url + skip, "/");
    if (memchr(url + skip, '@', auth) != NULL)
        return fail_why(why, whylen, "put the user in etcd.username and the "
                        "password in etcd.password_file, not in the URL");
    r = validate_hostport(url + skip, auth, VALIDATE_PORT_OPTIONAL, NULL,
                          why, whylen);
    if (r != VALIDATE_OK)
        return r;
    while (len > skip + auth && url[len - 1] == '/')
        len--;
    *keep = len;
    return VALIDATE_OK;
}

/* ---- Sections --------------------------------------------------------- */

static int load_duration(struct loader *ld, const char *what,
                         const struct node *key, const struct node *val,
                         uint64_t *ms)
{
    struct shown a;
    const char *text;
    int r = want_text(ld, what, key, val, &text);

    if (r < 0)
        return r;
    if (duration_parse(text, ms) < 0)
        return fail_node(ld, val, "bad duration '%s' for %s: use 500ms, "
                         "10s, 2m", show(&a, text), what);
    return 0;
}

static int load_endpoints(struct loader *ld, const struct node *key,
                          const struct node *val)
{
    struct config *c = ld->cfg;
    struct shown a;
    int r = want_seq(ld, "etcd.endpoints", val);

    if (r < 0)
        return r;
    if (r == 1 || val->n_items == 0)
        return fail_node(ld, key, "etcd.endpoints is empty: list at least "
                         "one etcd member, e.g. [" DEFAULT_ENDPOINT "]");
    if (val->n_items > MAX_ENDPOINTS)
        return fail_node(ld, val, "etcd.endpoints lists %zu URLs: at most %d "
                         "are supported", val->n_items, MAX_ENDPOINTS);
    c->endpoints = calloc(val->n_items, sizeof(*c->endpoints));
    if (c->endpoints == NULL)
        return fail_oom(ld);
    c->n_endpoints = val->n_items;
    for (size_t i = 0; i < val->n_items; i++) {
        const struct node *item = val->items[i];
        const char *text;
        char why[160];
        size_t keep;

        r = want_nonempty(ld, "an etcd.endpoints entry", item, item, &text);
        if (r < 0)
            return r;
        r = check_endpoint(text, why, sizeof(why), &keep);
        if (r == VALIDATE_PORT_RANGE)
            return fail_node(ld, item, "port out of range in endpoint '%s': "
                             "use 1..65535", show(&a, text));
        if (r != VALIDATE_OK)
            return fail_node(ld, item, "bad endpoint URL '%s' in "
                             "etcd.endpoints: %s", show(&a, text), why);
        c->endpoints[i] = strndup(text, keep);
        if (c->endpoints[i] == NULL)
            return fail_oom(ld);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->endpoints[j], c->endpoints[i]) == 0)
                return fail_node(ld, item, "endpoint '%s' is listed twice "
                                 "in etcd.endpoints (first at %d:%d): keep "
                                 "only one", show(&a, text),
                                 val->items[j]->line, val->items[j]->column);
        }
    }
    return 0;
}

static int load_prefix(struct loader *ld, const struct node *key,
                       const struct node *val)
{
    struct shown a;
    const char *text;
    size_t len;
    int r = want_nonempty(ld, "etcd.prefix", key, val, &text);

    if (r < 0)
        return r;
    len = strlen(text);
    while (len > 1 && text[len - 1] == '/')
        len--;
    if (text[0] != '/')
        return fail_node(ld, val, "bad etcd.prefix '%s': it must start "
                         "with '/', e.g. " DEFAULT_PREFIX, show(&a, text));
    if (len == 1)
        return fail_node(ld, val, "bad etcd.prefix '%s': it needs a name "
                         "after '/', e.g. " DEFAULT_PREFIX, show(&a, text));
    if (len > VALIDATE_PREFIX_MAX)
        return fail_node(ld, val, "etcd.prefix is %zu bytes long: at most %d "
                         "fit in the keys of every service", len,
                         VALIDATE_PREFIX_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch <= 0x20 || ch == 0x7f)
            return fail_node(ld, val, "bad etcd.prefix '%s': it may not "
                             "contain spaces or control characters",
                             show(&a, text));
        if (ch == '/' && i > 0 && text[i - 1] == '/')
            return fail_node(ld, val, "bad etcd.prefix '%s': it may not "
                             "contain '//'", show(&a, text));
    }
    free(ld->cfg->prefix);
    ld->cfg->prefix = strndup(text, len);
    if (ld->cfg->prefix == NULL)
        return fail_oom(ld);
    return 0;
}

/* Reads the etcd password now, so that a missing or unreadable file stops
 * the agent at start rather than at its first request. */
static int load_password(struct loader *ld, const struct node *key)
{
    struct config *c = ld->cfg;
    struct shown a;
    char *buf;
    size_t len;
    int r = read_all(c->password_file, PASSWORD_MAX, 1, &buf, &len);

    if (r == -ENOMEM)
        return fail_oom(ld);
    if (r == -EFBIG)
        return fail_node(ld, key, "etcd.password_file '%s' is larger than "
                         "%d bytes: it must hold only the password",
                         show(&a, c->password_file), PASSWORD_MAX);
    if (r < 0)
        return fail_node(ld, key, "cannot read etcd.password_file '%s': %s",
                         show(&a, c->password_file), strerror(-r));
    /* One trailing newline is what an editor or "echo" leaves; a second one
     * would be part of the password. */
    if (len > 0 && buf[len - 1] == '\n') {
        buf[--len] = '\0';
        if (len > 0 && buf[len - 1] == '\r')
            buf[--len] = '\0';
    }
    if (len == 0)
        r = fail_node(ld, key, "etcd.password_file '%s' is empty: write the "
                      "password into it", show(&a, c->password_file));
    else if (strlen(buf) != len)
        r = fail_node(ld, key, "etcd.password_file '%s' contains a NUL "
                      "byte: write the password as text",
                      show(&a, c->password_file));
    if (r < 0) {
        explicit_bzero(buf, len);
        free(buf);
        return r;
    }
    c->password = buf;
    return 0;
}

static const char *const tls_keys[] = { "ca_file", "cert_file", "key_file" };
enum { TLS_CA, TLS_CERT, TLS_KEY };

static int load_tls(struct loader *ld, const struct node *val,
                    const struct node **seen)
{
    static const char *const what[] = {
        "etcd.tls.ca_file", "etcd.tls.cert_file", "etcd.tls.key_file"
    };
    struct config *c = ld->cfg;
    char **dst[] = { &c->tls_ca_file, &c->tls_cert_file, &c->tls_key_file };
    int r = want_map(ld, "etcd.tls", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *v = val->items[2 * i + 1];
        const char *text;
        int k = section_key(ld, val, i, tls_keys, ARRAY_SIZE(tls_keys), seen,
                            "in etcd.tls");

        if (k < 0)
            return k;
        r = want_nonempty(ld, what[k], val->items[2 * i], v, &text);
        if (r == 0)
            r = set_str(ld, dst[k], text);
        if (r < 0)
            return r;
    }
    if ((seen[TLS_CERT] == NULL) != (seen[TLS_KEY] == NULL)) {
        int has_cert = seen[TLS_CERT] != NULL;
        return fail_node(ld, has_cert ? seen[TLS_CERT] : seen[TLS_KEY],
                         "%s is set without %s: a client certificate needs "
                         "its key, so give both or neither",
                         what[has_cert ? TLS_CERT : TLS_KEY],
                         what[has_cert ? TLS_KEY : TLS_CERT]);
    }
    for (size_t k = 0; k < ARRAY_SIZE(tls_keys); k++) {
        struct shown a;

        if (seen[k] == NULL)
            continue;
        r = check_readable(*dst[k]);
        if (r < 0)
            return fail_node(ld, seen[k], "cannot read %s '%s': %s", what[k],
                             show(&a, *dst[k]), strerror(-r));
    }
    return 0;
}

static const char *const etcd_keys[] = {
    "endpoints", "prefix", "timeout", "username", "password_file", "tls"
};
enum { ETCD_ENDPOINTS, ETCD_PREFIX, ETCD_TIMEOUT, ETCD_USERNAME,
       ETCD_PASSWORD_FILE, ETCD_TLS };

static int load_etcd(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(etcd_keys)] = { NULL };
    const struct node *tls_seen[ARRAY_SIZE(tls_keys)] = { NULL };
    struct config *c = ld->cfg;
    int r = want_map(ld, "etcd", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2 && r == 0; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        int key = section_key(ld, val, i, etcd_keys, ARRAY_SIZE(etcd_keys),
                              seen, "in etcd");

        switch (key) {
        case ETCD_ENDPOINTS:
            r = load_endpoints(ld, k, v);
            break;
        case ETCD_PREFIX:
            r = load_prefix(ld, k, v);
            break;
        case ETCD_TIMEOUT:
            r = load_duration(ld, "etcd.timeout", k, v, &c->timeout_ms);
            if (r == 0 && c->timeout_ms == 0)
                r = fail_node(ld, v, "etcd.timeout must be more than 0, "
                              "e.g. 5s");
            if (r == 0 && c->timeout_ms > TIMEOUT_MAX_MS)
                r = fail_node(ld, v, "etcd.timeout is longer than 1h: it "
                              "bounds a single request, e.g. 5s");
            break;
        case ETCD_USERNAME:
            r = want_nonempty(ld, "etcd.username", k, v, &text);
            if (r == 0)
                r = set_str(ld, &c->username, text);
            break;
        case ETCD_PASSWORD_FILE:
            r = want_nonempty(ld, "etcd.password_file", k, v, &text);
            if (r == 0)
                r = set_str(ld, &c->password_file, text);
            break;
        case ETCD_TLS:
            r = load_tls(ld, v, tls_seen);
            break;
        default:
            r = key;  /* section_key() has reported it */
            break;
        }
    }
    if (r < 0)
        return r;

    /* Checks that involve more than one key, made once the whole section
     * is known. */
    if ((seen[ETCD_USERNAME] == NULL) != (seen[ETCD_PASSWORD_FILE] == NULL)) {
        if (seen[ETCD_USERNAME] != NULL)
            return fail_node(ld, seen[ETCD_USERNAME], "etcd.username is set "
                             "without etcd.password_file: give both or "
                             "neither");
        return fail_node(ld, seen[ETCD_PASSWORD_FILE], "etcd.password_file "
                         "is set without etcd.username: give both or "
                         "neither");
    }
    if (tls_seen[TLS_CA] || tls_seen[TLS_CERT]) {
        int https = 0;

        for (size_t i = 0; i < c->n_endpoints; i++)
            https |= strncmp(c->endpoints[i], "https://", 8) == 0;
        if (!https)
            return fail_node(ld, seen[ETCD_TLS], "etcd.tls is set but no "
                             "endpoint in etcd.endpoints uses https://: "
                             "change the endpoints or remove etcd.tls");
    }
    if (c->password_file != NULL)
        return load_password(ld, seen[ETCD_PASSWORD_FILE]);
    return 0;
}

static const char *const session_keys[] = { "ttl" };

static int load_session(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(session_keys)] = { NULL };
    struct config *c = ld->cfg;
    int r = want_map(ld, "session", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        int key = section_key(ld, val, i, session_keys,
                              ARRAY_SIZE(session_keys), seen, "in session");

        if (key < 0)
            return key;
        r = load_duration(ld, "session.ttl", k, v, &c->session_ttl_ms);
        if (r < 0)
            return r;
        if (c->session_ttl_ms % 1000 != 0)
            return fail_node(ld, v, "session.ttl must be a whole number of "
                             "seconds, because etcd leases count seconds: "
                             "e.g. 10s");
        if (c->session_ttl_ms < TTL_MIN_MS)
            return fail_node(ld, v, "session.ttl must be at least 2s, so "
                             "that the lease can be renewed in time: e.g. "
                             "10s");
        if (c->session_ttl_ms / 1000 > TTL_MAX_S)
            return fail_node(ld, v, "session.ttl is longer than etcd allows "
                             "(%llus): e.g. 10s", TTL_MAX_S);
    }
    return 0;
}

/* Parses a socket mode: octal with a leading 0 ("0660") or YAML 1.2's "0o"
 * ("0o660"). A leading 0 is required because "660" read as decimal or as
 * octal gives different permissions, and a guess would be wrong for
 * someone. Returns 0, -1 for bad syntax or -2 for a value above 0777. */
static int parse_mode(const char *text, unsigned *mode)
{
    const char *p = text;
    unsigned long v;
    char *end;

    if (p[0] != '0')
        return -1;
    if (p[1] == 'o' || p[1] == 'O')
        p += 2;
    if (*p == '\0' && p != text + 1)
        return -1;  /* "0o" with no digits */
    for (const char *q = p; *q != '\0'; q++) {
        if (*q < '0' || *q > '7')
            return -1;
    }
    errno = 0;
    v = strtoul(p, &end, 8);
    if (errno != 0 || *end != '\0' || v > 0777)
        return -2;
    *mode = (unsigned)v;
    return 0;
}

static const char *const socket_keys[] = {
    "path", "mode", "register_users", "register_groups"
};

/* A list of user or group names (or numeric ids), resolved now, so that a
 * typo is refused at load rather than locking everyone out at run time. */
static int load_ids(struct loader *ld, const char *what, const struct node *v,
                    int groups, unsigned **out, size_t *n_out)
{
    struct shown a;
    int r = want_seq(ld, what, v);

    if (r != 0)
        return r < 0 ? r : 0;
    free(*out);
    *out = calloc(v->n_items ? v->n_items : 1, sizeof(**out));
    *n_out = 0;
    if (*out == NULL)
        return fail_oom(ld);
    for (size_t i = 0; i < v->n_items; i++) {
        const char *text;
        char *end;
        unsigned long id;

        if ((r = want_nonempty(ld, what, NULL, v->items[i], &text)) < 0)
            return r;
        errno = 0;
        id = strtoul(text, &end, 10);
        if (!errno && *end == '\0' && end != text && id < 0xffffffffUL) {
            (*out)[(*n_out)++] = (unsigned)id;
            continue;
        }
        if (groups) {
            struct group *g = getgrnam(text);
            if (g == NULL)
                return fail_node(ld, v->items[i], "unknown group '%s' in %s",
                                 show(&a, text), what);
            (*out)[(*n_out)++] = (unsigned)g->gr_gid;
        } else {
            struct passwd *p = getpwnam(text);
            if (p == NULL)
                return fail_node(ld, v->items[i], "unknown user '%s' in %s",
                                 show(&a, text), what);
            (*out)[(*n_out)++] = (unsigned)p->pw_uid;
        }
    }
    return 0;
}

static int load_socket(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(socket_keys)] = { NULL };
    struct config *c = ld->cfg;
    int r = want_map(ld, "socket", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        struct shown a;
        int key = section_key(ld, val, i, socket_keys,
                              ARRAY_SIZE(socket_keys), seen, "in socket");

        if (key < 0)
            return key;
        if (key == 2 || key == 3) {
            r = load_ids(ld, key == 2 ? "socket.register_users"
                                      : "socket.register_groups", v, key == 3,
                         key == 2 ? &c->register_uids : &c->register_gids,
                         key == 2 ? &c->n_register_uids : &c->n_register_gids);
            if (r < 0)
                return r;
            c->register_limited = true;
            continue;
        }
        r = want_nonempty(ld, key == 0 ? "socket.path" : "socket.mode", k, v,
                          &text);
        if (r < 0)
            return r;
        if (key == 0) {
            size_t len = strlen(text);

            if (len > SUN_PATH_MAX)
                return fail_node(ld, v, "socket.path is %zu bytes long, but "
                                 "a unix socket path holds at most %zu: "
                                 "choose a shorter path", len, SUN_PATH_MAX);
            r = set_str(ld, &c->socket_path, text);
            if (r < 0)
                return r;
        } else {
            r = parse_mode(text, &c->socket_mode);
            if (r == -2)
                return fail_node(ld, v, "bad socket.mode '%s': it is above "
                                 "0777; give permission bits only, e.g. "
                                 "\"0660\"", show(&a, text));
            if (r < 0)
                return fail_node(ld, v, "bad socket.mode '%s': write it in "
                                 "octal with a leading 0, e.g. \"0660\"",
                                 show(&a, text));
        }
    }
    return 0;
}

static const char *const cache_keys[] = { "dir", "idle" };

static int load_cache(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(cache_keys)] = { NULL };
    struct config *c = ld->cfg;
    int r = want_map(ld, "cache", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        int key = section_key(ld, val, i, cache_keys, ARRAY_SIZE(cache_keys),
                              seen, "in cache");

        if (key < 0)
            return key;
        if (key == 0) {
            r = want_nonempty(ld, "cache.dir", k, v, &text);
            if (r == 0)
                r = set_str(ld, &c->cache_dir, text);
        } else {
            r = load_duration(ld, "cache.idle", k, v, &c->cache_idle_ms);
            if (r == 0 && c->cache_idle_ms == 0)
                r = fail_node(ld, v, "cache.idle must be more than 0, e.g. "
                              "10m");
        }
        if (r < 0)
            return r;
    }
    return 0;
}

static const char *const log_keys[] = { "level", "format" };
/* In the order of their numbers in struct config's log_level. */
static const char *const log_levels[] = { "debug", "info", "warn", "error" };
/* In the order of their numbers in struct config's log_format. */
static const char *const log_formats[] = { "text", "json" };

static int load_log(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(log_keys)] = { NULL };
    int r = want_map(ld, "log", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text;
        struct shown a;
        int key = section_key(ld, val, i, log_keys, ARRAY_SIZE(log_keys),
                              seen, "in log");
        size_t l;

        if (key < 0)
            return key;
        if (key == 1) {
            r = want_text(ld, "log.format", k, v, &text);
            if (r < 0)
                return r;
            for (l = 0; l < ARRAY_SIZE(log_formats); l++) {
                if (strcmp(text, log_formats[l]) == 0)
                    break;
            }
            if (l == ARRAY_SIZE(log_formats))
                return fail_node(ld, v, "bad log.format '%s': use text or "
                                 "json", show(&a, text));
            ld->cfg->log_format = (int)l;
            continue;
        }
        r = want_text(ld, "log.level", k, v, &text);
        if (r < 0)
            return r;
        for (l = 0; l < ARRAY_SIZE(log_levels); l++) {
            if (strcmp(text, log_levels[l]) == 0)
                break;
        }
        if (l == ARRAY_SIZE(log_levels))
            return fail_node(ld, v, "bad log level '%s' for log.level: use "
                             "debug, info, warn or error", show(&a, text));
        ld->cfg->log_level = (int)l;
    }
    return 0;
}

static int cmp_key_nodes(const void *a, const void *b)
{
    const struct node *x = *(const struct node *const *)a;
    const struct node *y = *(const struct node *const *)b;
    int r = strcmp(x->text, y->text);

    if (r != 0)
        return r;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    return (x->column > y->column) - (x->column < y->column);
}

static int load_metadata(struct loader *ld, struct config_service *s,
                         const struct node *val)
{
    struct shown a, b;
    const struct node **keys = NULL;
    const struct node *dup = NULL, *first = NULL;
    size_t n = val->n_items / 2, total = 0;
    char why[160];
    int r = want_map(ld, "metadata", val);

    if (r != 0 || n == 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < n; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];

        if (k->kind != NODE_SCALAR)
            return fail_node(ld, k, "metadata keys of service %s must be "
                             "text, not %s", show(&a, s->name),
                             kind_name(k));
        if (is_null(k) || k->text[0] == '\0')
            return fail_node(ld, k, "a metadata key of service %s is empty: "
                             "give it a name", show(&a, s->name));
        if (v->kind != NODE_SCALAR)
            return fail_node(ld, v, "metadata '%s' of service %s must be a "
                             "single value (text or a number), not %s",
                             show(&a, k->text), show(&b, s->name),
                             kind_name(v));
        if (is_null(v))
            return fail_node(ld, k, "metadata '%s' of service %s has no "
                             "value: give one, or write \"\" for empty text",
                             show(&a, k->text), show(&b, s->name));
        if (!validate_meta_key(k->text, why, sizeof(why)) ||
            !validate_meta_value(v->text, strlen(v->text), why, sizeof(why)))
            return fail_node(ld, k, "bad metadata '%s' of service %s: %s",
                             show(&a, k->text), show(&b, s->name), why);
        total += strlen(k->text) + strlen(v->text);
    }
    if (!validate_meta_size(total, why, sizeof(why)))
        return fail_node(ld, val, "metadata of service %s is too large: %s",
                         show(&a, s->name), why);
    /* Metadata may be long, so duplicates are found by sorting rather
     * than by comparing every pair; the one reported is the earliest
     * repeat in the file. */
    keys = malloc(n * sizeof(*keys));
    if (keys == NULL)
        return fail_oom(ld);
    for (size_t i = 0; i < n; i++)
        keys[i] = val->items[2 * i];
    qsort(keys, n, sizeof(*keys), cmp_key_nodes);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(keys[i - 1]->text, keys[i]->text) == 0 &&
            (i < 2 || strcmp(keys[i - 2]->text, keys[i]->text) != 0) &&
            (dup == NULL || keys[i]->line < dup->line ||
             (keys[i]->line == dup->line && keys[i]->column < dup->column))) {
            dup = keys[i];
            first = keys[i - 1];
        }
    }
    free(keys);
    if (dup != NULL)
        return fail_node(ld, dup, "metadata key '%s' given twice for service "
                         "%s (first at %d:%d): keep only one",
                         show(&a, dup->text), show(&b, s->name), first->line,
                         first->column);
    s->meta = calloc(n, sizeof(*s->meta));
    if (s->meta == NULL)
        return fail_oom(ld);
    s->n_meta = n;
    for (size_t i = 0; i < n; i++) {
        s->meta[i].key = dup_str(ld, val->items[2 * i]->text);
        s->meta[i].value = dup_str(ld, val->items[2 * i + 1]->text);
        if (s->meta[i].key == NULL || s->meta[i].value == NULL)
            return -ENOMEM;
    }
    return 0;
}

static int parse_weight(const char *text, int32_t *weight)
{
    const char *p = text;
    char *end;
    long long v;

    if (*p == '+' || *p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    errno = 0;
    v = strtoll(text, &end, 10);
    if (*end != '\0')
        return -1;
    if (errno == ERANGE || !validate_weight(v, NULL, 0))
        return -2;
    *weight = (int32_t)v;
    return 0;
}

/* A service's check: mapping. Types and their own keys are in check.h;
 * exec being allowed is checked once every file is read (checks.exec may
 * come later in the file). */
static const char *const check_keys[] = {
    "type", "interval", "timeout", "rise", "fall", "service", "url",
    "command", "ttl"
};
enum { CK_TYPE, CK_INTERVAL, CK_TIMEOUT, CK_RISE, CK_FALL, CK_SERVICE,
       CK_URL, CK_COMMAND, CK_TTL };

static int load_count(struct loader *ld, const char *what,
                      const struct node *key, const struct node *val,
                      int *out)
{
    struct shown a;
    const char *text;
    char *end;
    long v;
    int r = want_text(ld, what, key, val, &text);

    if (r < 0)
        return r;
    errno = 0;
    v = strtol(text, &end, 10);
    if (!val->plain || errno || *end || end == text || v < 1 || v > 100)
        return fail_node(ld, val, "%s must be a whole number from 1 to 100, "
                         "not '%s'", what, show(&a, text));
    *out = (int)v;
    return 0;
}

static int load_check(struct loader *ld, struct config_service *s,
                      const struct node *map)
{
    const struct node *seen[ARRAY_SIZE(check_keys)] = { NULL };
    const struct node *vals[ARRAY_SIZE(check_keys)] = { NULL };
    struct check_spec *ck = &s->check;
    struct shown a, b;
    const char *text;
    int r = want_map(ld, "check", map);

    if (r != 0)
        return r < 0 ? r : 0;
    s->check_line = map->line;
    s->check_column = map->column;
    for (size_t i = 0; i < map->n_items / 2; i++) {
        int k = section_key(ld, map, i, check_keys, ARRAY_SIZE(check_keys),
                            seen, "in a check");
        if (k < 0)
            return k;
        vals[k] = map->items[2 * i + 1];
    }
    if (vals[CK_TYPE] == NULL)
        return fail_node(ld, map, "the check of service %s has no type: add "
                         "'type: grpc' (or tcp, http, exec, ttl)",
                         show(&a, s->name));
    r = want_nonempty(ld, "check type", seen[CK_TYPE], vals[CK_TYPE], &text);
    if (r < 0)
        return r;
    if (check_type_parse(text, &ck->type) < 0 || ck->type == CHECK_NONE)
        return fail_node(ld, vals[CK_TYPE], "unknown check type '%s' for "
                         "service %s: use grpc, tcp, http, exec or ttl",
                         show(&a, text), show(&b, s->name));
    if (vals[CK_INTERVAL] && (r = load_duration(ld, "check.interval",
            seen[CK_INTERVAL], vals[CK_INTERVAL], &ck->interval_ms)) < 0)
        return r;
    if (vals[CK_TIMEOUT] && (r = load_duration(ld, "check.timeout",
            seen[CK_TIMEOUT], vals[CK_TIMEOUT], &ck->timeout_ms)) < 0)
        return r;
    if (vals[CK_TTL] && (r = load_duration(ld, "check.ttl", seen[CK_TTL],
            vals[CK_TTL], &ck->ttl_ms)) < 0)
        return r;
    if (vals[CK_RISE] && (r = load_count(ld, "check.rise", seen[CK_RISE],
            vals[CK_RISE], &ck->rise)) < 0)
        return r;
    if (vals[CK_FALL] && (r = load_count(ld, "check.fall", seen[CK_FALL],
            vals[CK_FALL], &ck->fall)) < 0)
        return r;
    if (vals[CK_SERVICE]) {
        if ((r = want_text(ld, "check.service", seen[CK_SERVICE],
                           vals[CK_SERVICE], &text)) < 0)
            return r;
        if ((ck->grpc_service = dup_str(ld, text)) == NULL)
            return -ENOMEM;
    }
    if (vals[CK_URL]) {
        if ((r = want_nonempty(ld, "check.url", seen[CK_URL], vals[CK_URL],
                               &text)) < 0)
            return r;
        if (strncmp(text, "http://", 7) && strncmp(text, "https://", 8))
            return fail_node(ld, vals[CK_URL], "check.url '%s' must start "
                             "with http:// or https://", show(&a, text));
        if ((ck->http_url = dup_str(ld, text)) == NULL)
            return -ENOMEM;
    }
    if (vals[CK_COMMAND]) {
        const struct node *cmd = vals[CK_COMMAND];
        if ((r = want_seq(ld, "check.command", cmd)) < 0)
            return r;
        if (r > 0 || cmd->n_items == 0)
            return fail_node(ld, cmd, "check.command must be a list of "
                             "strings, the program first: [/bin/check, arg]");
        ck->exec_argv = calloc(cmd->n_items + 1, sizeof(*ck->exec_argv));
        if (ck->exec_argv == NULL)
            return fail_oom(ld);
        for (size_t i = 0; i < cmd->n_items; i++) {
            if ((r = want_nonempty(ld, "each check.command item", NULL,
                                   cmd->items[i], &text)) < 0)
                return r;
            if ((ck->exec_argv[i] = dup_str(ld, text)) == NULL)
                return -ENOMEM;
        }
    }
    /* Everything but exec's permission is validated now, with defaults. */
    char why[256];
    if (check_spec_normalize(ck, true, why, sizeof(why)) < 0)
        return fail_node(ld, map, "bad check for service %s: %s",
                         show(&a, s->name), why);
    return 0;
}

/* Exec checks run commands as the agent: refused unless checks.exec. */
static int check_exec_allowed(struct loader *ld)
{
    for (size_t i = 0; i < ld->cfg->n_services; i++) {
        const struct config_service *s = &ld->cfg->services[i];
        if (s->check.type == CHECK_EXEC && !ld->cfg->checks_exec)
            return fail_at(ld, s->file, s->check_line, s->check_column,
                           -EINVAL, "service %s has an exec check, but exec "
                           "checks are off: set 'checks: {exec: true}' in %s",
                           s->name, ld->cfg->path);
    }
    return 0;
}

static const char *const checks_keys[] = { "exec" };

static int load_checks(struct loader *ld, const struct node *val)
{
    const struct node *seen[ARRAY_SIZE(checks_keys)] = { NULL };
    struct shown a;
    const char *text;
    int r = want_map(ld, "checks", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *v = val->items[2 * i + 1];
        int k = section_key(ld, val, i, checks_keys, ARRAY_SIZE(checks_keys),
                            seen, "in checks");
        if (k < 0)
            return k;
        if ((r = want_text(ld, "checks.exec", seen[k], v, &text)) < 0)
            return r;
        if (!strcmp(text, "true"))
            ld->cfg->checks_exec = true;
        else if (!strcmp(text, "false"))
            ld->cfg->checks_exec = false;
        else
            return fail_node(ld, v, "checks.exec must be true or false, not "
                             "'%s'", show(&a, text));
    }
    return 0;
}

static const char *const service_keys[] = {
    "name", "address", "weight", "group", "metadata", "check"
};
enum { SVC_NAME, SVC_ADDRESS, SVC_WEIGHT, SVC_GROUP, SVC_METADATA, SVC_CHECK };

static int load_service(struct loader *ld, const struct node *entry)
{
    const struct node *seen[ARRAY_SIZE(service_keys)] = { NULL };
    const struct node *vals[ARRAY_SIZE(service_keys)] = { NULL };
    struct config *c = ld->cfg;
    struct config_service *s;
    struct validate_hostport hp;
    struct shown a, b;
    const char *text;
    char why[160];
    int r;

    if (entry->kind != NODE_MAP)
        return fail_node(ld, entry, "each services entry must be a mapping "
                         "with at least name: and address:, not %s",
                         kind_name(entry));
    if (c->n_services == ld->cap_services) {
        size_t nc = ld->cap_services == 0 ? 8 : ld->cap_services * 2;
        struct config_service *ns = realloc(c->services, nc * sizeof(*ns));

        if (ns == NULL)
            return fail_oom(ld);
        c->services = ns;
        ld->cap_services = nc;
    }
    /* The entry joins the config before it is filled in, so that
     * config_free() releases whatever part of it an error leaves. */
    s = &c->services[c->n_services++];
    memset(s, 0, sizeof(*s));
    s->weight = 1;
    s->line = entry->line;
    s->column = entry->column;
    if ((s->file = dup_str(ld, ld->file)) == NULL)
        return -ENOMEM;

    /* Keys are checked first and values afterwards in a fixed order, so
     * that every message about a value can name the service. */
    for (size_t i = 0; i < entry->n_items / 2; i++) {
        int k = section_key(ld, entry, i, service_keys,
                            ARRAY_SIZE(service_keys), seen,
                            "in a services entry");
        if (k < 0)
            return k;
        vals[k] = entry->items[2 * i + 1];
    }
    if (vals[SVC_NAME] == NULL)
        return fail_node(ld, entry, "services entry has no name: add "
                         "'name: SERVICE'");
    r = want_nonempty(ld, "the service name", seen[SVC_NAME], vals[SVC_NAME],
                      &text);
    if (r < 0)
        return r;
    if (!validate_name(text, why, sizeof(why)))
        return fail_node(ld, vals[SVC_NAME], "bad service name '%s': %s",
                         show(&a, text), why);
    if ((s->name = dup_str(ld, text)) == NULL)
        return -ENOMEM;

    if (vals[SVC_ADDRESS] == NULL)
        return fail_node(ld, entry, "service %s has no address: add "
                         "'address: HOST:PORT'", show(&a, s->name));
    r = want_nonempty(ld, "the service address", seen[SVC_ADDRESS],
                      vals[SVC_ADDRESS], &text);
    if (r < 0)
        return r;
    r = validate_hostport(text, strlen(text), 0, &hp, why, sizeof(why));
    if (r == VALIDATE_PORT_RANGE)
        return fail_node(ld, vals[SVC_ADDRESS], "port %s out of range in "
                         "address of service %s: use 1..65535",
                         show(&a, text + hp.port_at), show(&b, s->name));
    if (r != VALIDATE_OK)
        return fail_node(ld, vals[SVC_ADDRESS], "bad address '%s' for "
                         "service %s: %s", show(&a, text), show(&b, s->name),
                         why);
    if ((s->address = dup_str(ld, text)) == NULL)
        return -ENOMEM;

    if (vals[SVC_WEIGHT] != NULL) {
        const struct node *v = vals[SVC_WEIGHT];

        r = want_text(ld, "the service weight", seen[SVC_WEIGHT], v, &text);
        if (r < 0)
            return r;
        r = v->plain ? parse_weight(text, &s->weight) : -1;
        if (r == -2)
            return fail_node(ld, v, "weight %s of service %s is out of "
                             "range: use at most 2147483647",
                             show(&a, text), show(&b, s->name));
        if (r < 0)
            return fail_node(ld, v, "weight '%s' of service %s is not an "
                             "integer: write a whole number without quotes, "
                             "e.g. 10", show(&a, text), show(&b, s->name));
    }

    text = "";
    if (vals[SVC_GROUP] != NULL) {
        r = want_text(ld, "the service group", seen[SVC_GROUP],
                      vals[SVC_GROUP], &text);
        if (r < 0)
            return r;
        if (!validate_group(text, why, sizeof(why)))
            return fail_node(ld, vals[SVC_GROUP], "bad group '%s' for "
                             "service %s: %s", show(&a, text),
                             show(&b, s->name), why);
    }
    if ((s->group = dup_str(ld, text)) == NULL)
        return -ENOMEM;

    if (vals[SVC_METADATA] != NULL &&
        (r = load_metadata(ld, s, vals[SVC_METADATA])) < 0)
        return r;
    if (vals[SVC_CHECK] != NULL)
        return load_check(ld, s, vals[SVC_CHECK]);
    return 0;
}

static int load_services(struct loader *ld, const struct node *val)
{
    int r = want_seq(ld, "services", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items; i++) {
        r = load_service(ld, val->items[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- xds: the xDS (ADS) server for gRPC clients (docs/xds.md) ------- */

/* YAML 1.2's core booleans, written without quotes. Returns 0 and sets *b,
 * or -1. */
static int parse_bool(const struct node *v, int *b)
{
    static const char *const yes[] = { "true", "True", "TRUE" };
    static const char *const no[] = { "false", "False", "FALSE" };

    if (v->kind != NODE_SCALAR || !v->plain)
        return -1;
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcmp(v->text, yes[i]) == 0) {
            *b = 1;
            return 0;
        }
        if (strcmp(v->text, no[i]) == 0) {
            *b = 0;
            return 0;
        }
    }
    return -1;
}

/* The xDS server has no authentication, so its TCP port may only listen on
 * a loopback address: 127.0.0.0/8, [::1] or localhost. */
static int is_loopback_host(const char *s, size_t len)
{
    struct in_addr a4;
    char tmp[INET_ADDRSTRLEN + 1];

    if (len == 9 && strncmp(s, "localhost", 9) == 0)
        return 1;
    if (len == 5 && strncmp(s, "[::1]", 5) == 0)
        return 1;
    if (len >= sizeof(tmp))
        return 0;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    return inet_pton(AF_INET, tmp, &a4) == 1 &&
           (ntohl(a4.s_addr) >> 24) == 127;
}

/* A header name gRPC can match: lower case (gRPC lower-cases the names it
 * receives, and its matchers compare them as given), made of letters,
 * digits, '-', '_' and '.', and not one of gRPC's own ("grpc-...") or a
 * pseudo-header, which gRPC's route matching never sees. Returns NULL or
 * what is wrong. */
static const char *check_header_name(const char *s)
{
    size_t len = strlen(s);

    if (len > XDS_HEADER_MAX)
        return "it is longer than 64 bytes";
    if (strncmp(s, "grpc-", 5) == 0)
        return "gRPC clients never match headers that start with 'grpc-'";
    for (; *s != '\0'; s++) {
        char c = *s;

        if (c >= 'A' && c <= 'Z')
            return "write it in lower case";
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return "use letters, digits, '-', '_' and '.' only";
    }
    return NULL;
}

static const char *const xds_keys[] = {
    "enabled", "path", "mode", "tcp", "group_header", "idle",
    "test_send_host_names"
};
enum { XDS_ENABLED, XDS_PATH, XDS_MODE, XDS_TCP, XDS_GROUP_HEADER, XDS_IDLE,
       XDS_TEST_HOST_NAMES };

static int load_xds(struct loader *ld, const struct node *val)
{
    static const char *const what[] = {
        "xds.enabled", "xds.path", "xds.mode", "xds.tcp", "xds.group_header",
        "xds.idle", "xds.test_send_host_names"
    };
    const struct node *seen[ARRAY_SIZE(xds_keys)] = { NULL };
    struct config *c = ld->cfg;
    int r = want_map(ld, "xds", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        const char *text, *why;
        char reason[160];
        struct validate_hostport hp;
        struct shown a;
        int key = section_key(ld, val, i, xds_keys, ARRAY_SIZE(xds_keys),
                              seen, "in xds");

        if (key < 0)
            return key;
        r = want_nonempty(ld, what[key], k, v, &text);
        if (r < 0)
            return r;
        switch (key) {
        case XDS_ENABLED:
        case XDS_TEST_HOST_NAMES:
            if (parse_bool(v, key == XDS_ENABLED ? &c->xds_enabled
                                                 : &c->xds_test_host_names) < 0)
                return fail_node(ld, v, "bad %s '%s': write true or false, "
                                 "without quotes", what[key], show(&a, text));
            break;
        case XDS_PATH:
            if (strlen(text) > SUN_PATH_MAX)
                return fail_node(ld, v, "xds.path is %zu bytes long, but a "
                                 "unix socket path holds at most %zu: choose "
                                 "a shorter path", strlen(text), SUN_PATH_MAX);
            r = set_str(ld, &c->xds_path, text);
            break;
        case XDS_MODE:
            r = parse_mode(text, &c->xds_mode);
            if (r == -2)
                return fail_node(ld, v, "bad xds.mode '%s': it is above "
                                 "0777; give permission bits only, e.g. "
                                 "\"0660\"", show(&a, text));
            if (r < 0)
                return fail_node(ld, v, "bad xds.mode '%s': write it in "
                                 "octal with a leading 0, e.g. \"0660\"",
                                 show(&a, text));
            break;
        case XDS_TCP:
            r = validate_hostport(text, strlen(text), 0, &hp, reason,
                                  sizeof(reason));
            if (r == VALIDATE_PORT_RANGE)
                return fail_node(ld, v, "port %s out of range in xds.tcp: use "
                                 "1..65535", show(&a, text + hp.port_at));
            if (r != VALIDATE_OK)
                return fail_node(ld, v, "bad xds.tcp '%s': %s", show(&a, text),
                                 reason);
            if (!is_loopback_host(text, hp.host_len))
                return fail_node(ld, v, "xds.tcp '%s' is not a loopback "
                                 "address: the xDS server has no "
                                 "authentication, so use 127.0.0.1, [::1] or "
                                 "localhost", show(&a, text));
            r = set_str(ld, &c->xds_tcp, text);
            break;
        case XDS_GROUP_HEADER:
            why = check_header_name(text);
            if (why != NULL)
                return fail_node(ld, v, "bad xds.group_header '%s': %s",
                                 show(&a, text), why);
            r = set_str(ld, &c->xds_group_header, text);
            break;
        case XDS_IDLE:
            r = load_duration(ld, what[key], k, v, &c->xds_idle_ms);
            if (r == 0 && c->xds_idle_ms == 0)
                r = fail_node(ld, v, "xds.idle must be more than 0, e.g. "
                              "60s");
            break;
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Without xds.path, the xDS socket goes beside the main socket, so that
 * two agents with their own socket folders (tests, say) never share it;
 * with the default socket.path this is /run/discovery-agent/xds.sock.
 * Without xds.mode, it gets socket.mode: whoever may use the agent may use
 * its xDS server. */
static int default_xds_path(struct loader *ld)
{
    struct config *c = ld->cfg;
    const char *slash = strrchr(c->socket_path, '/');
    size_t dir_len = slash != NULL ? (size_t)(slash - c->socket_path) + 1 : 0;
    size_t len = dir_len + sizeof(DEFAULT_XDS_SOCKET_NAME) - 1;

    if (c->xds_mode == UINT_MAX)
        c->xds_mode = c->socket_mode;
    if (c->xds_path != NULL)
        return 0;
    if (len > SUN_PATH_MAX)
        return fail_at(ld, c->path, 0, 0, -EINVAL, "the xDS socket beside "
                       "socket.path would be %zu bytes long, but a unix "
                       "socket path holds at most %zu: set xds.path", len,
                       SUN_PATH_MAX);
    c->xds_path = malloc(len + 1);
    if (c->xds_path == NULL)
        return fail_oom(ld);
    memcpy(c->xds_path, c->socket_path, dir_len);
    memcpy(c->xds_path + dir_len, DEFAULT_XDS_SOCKET_NAME,
           sizeof(DEFAULT_XDS_SOCKET_NAME));
    return 0;
}

/* ---- http: the operators' listener (agent/web/, docs/operations.md) -- */

static const char *const http_keys[] = {
    "enabled", "listen", "max_connections", "max_request_bytes", "timeout"
};
enum { HTTP_ENABLED, HTTP_LISTEN, HTTP_MAX_CONNECTIONS, HTTP_MAX_REQUEST,
       HTTP_TIMEOUT };

/* A whole number in [lo, hi] for what. */
static int load_number(struct loader *ld, const char *what,
                       const struct node *key, const struct node *val,
                       long lo, long hi, long *out)
{
    struct shown a;
    const char *text;
    char *end;
    long v;
    int r = want_text(ld, what, key, val, &text);

    if (r < 0)
        return r;
    errno = 0;
    v = strtol(text, &end, 10);
    if (!val->plain || errno || *end || end == text || v < lo || v > hi)
        return fail_node(ld, val, "%s must be a whole number from %ld to "
                         "%ld, not '%s'", what, lo, hi, show(&a, text));
    *out = v;
    return 0;
}

/* http.listen: IP literals only (the listener binds them; a name would
 * be resolved at every start to who knows what), each once. */
static int load_http_listen(struct loader *ld, const struct node *key,
                            const struct node *val)
{
    struct config *c = ld->cfg;
    struct shown a;
    int r = want_seq(ld, "http.listen", val);

    if (r < 0)
        return r;
    if (r == 1 || val->n_items == 0)
        return fail_node(ld, key, "http.listen is empty: list at least one "
                         "address, e.g. [" DEFAULT_HTTP_LISTEN "], or set "
                         "http.enabled: false");
    if (val->n_items > MAX_HTTP_LISTEN)
        return fail_node(ld, val, "http.listen lists %zu addresses: at most "
                         "%d are supported", val->n_items, MAX_HTTP_LISTEN);
    c->http_listen = calloc(val->n_items, sizeof(*c->http_listen));
    if (c->http_listen == NULL)
        return fail_oom(ld);
    c->n_http_listen = val->n_items;
    for (size_t i = 0; i < val->n_items; i++) {
        const struct node *item = val->items[i];
        const char *text;
        char why[160];
        struct validate_hostport hp;
        unsigned char ip[sizeof(struct in6_addr)];

        r = want_nonempty(ld, "an http.listen entry", item, item, &text);
        if (r < 0)
            return r;
        r = validate_hostport(text, strlen(text), VALIDATE_LISTEN, &hp, why,
                              sizeof(why));
        if (r == VALIDATE_PORT_RANGE)
            return fail_node(ld, item, "port out of range in http.listen "
                             "'%s': use 1..65535", show(&a, text));
        if (r != VALIDATE_OK)
            return fail_node(ld, item, "bad http.listen '%s': %s",
                             show(&a, text), why);
        if (inet_pton(hp.ipv6 ? AF_INET6 : AF_INET, hp.host, ip) != 1)
            return fail_node(ld, item, "bad http.listen '%s': give an IP "
                             "address and a port, e.g. 127.0.0.1:8608 or "
                             "[::1]:8608", show(&a, text));
        if ((c->http_listen[i] = dup_str(ld, text)) == NULL)
            return -ENOMEM;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(c->http_listen[j], text) == 0)
                return fail_node(ld, item, "'%s' is listed twice in "
                                 "http.listen: keep only one",
                                 show(&a, text));
        }
    }
    return 0;
}

static int load_http(struct loader *ld, const struct node *val)
{
    static const char *const what[] = {
        "http.enabled", "http.listen", "http.max_connections",
        "http.max_request_bytes", "http.timeout"
    };
    const struct node *seen[ARRAY_SIZE(http_keys)] = { NULL };
    struct config *c = ld->cfg;
    int r = want_map(ld, "http", val);

    if (r != 0)
        return r < 0 ? r : 0;
    for (size_t i = 0; i < val->n_items / 2; i++) {
        const struct node *k = val->items[2 * i], *v = val->items[2 * i + 1];
        struct shown a;
        long n;
        int key = section_key(ld, val, i, http_keys, ARRAY_SIZE(http_keys),
                              seen, "in http");

        if (key < 0)
            return key;
        switch (key) {
        case HTTP_ENABLED:
            if (parse_bool(v, &c->http_enabled) < 0)
                return fail_node(ld, v, "bad http.enabled '%s': write true "
                                 "or false, without quotes",
                                 show(&a, v->text ? v->text : ""));
            break;
        case HTTP_LISTEN:
            r = load_http_listen(ld, k, v);
            break;
        case HTTP_MAX_CONNECTIONS:
            r = load_number(ld, what[key], k, v, 1, 10000, &n);
            c->http_max_connections = (unsigned)n;
            break;
        case HTTP_MAX_REQUEST:
            r = load_number(ld, what[key], k, v, 4096, 1048576, &n);
            c->http_max_request_bytes = (size_t)n;
            break;
        case HTTP_TIMEOUT:
            r = load_duration(ld, what[key], k, v, &c->http_timeout_ms);
            if (r == 0 && (c->http_timeout_ms < 1000 ||
                           c->http_timeout_ms % 1000 != 0))
                r = fail_node(ld, v, "http.timeout must be whole seconds, "
                              "at least 1s, e.g. 10s");
            break;
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Without http.listen, the listener serves on the loopback address only. */
static int default_http_listen(struct loader *ld)
{
    struct config *c = ld->cfg;

    if (c->http_listen != NULL)
        return 0;
    c->http_listen = calloc(1, sizeof(*c->http_listen));
    if (c->http_listen == NULL)
        return fail_oom(ld);
    if ((c->http_listen[0] = dup_str(ld, DEFAULT_HTTP_LISTEN)) == NULL)
        return -ENOMEM;
    c->n_http_listen = 1;
    return 0;
}

static const char *const top_keys[] = {
    "etcd", "session", "socket", "cache", "log", "services", "xds", "checks",
    "http"
};
enum { TOP_ETCD, TOP_SESSION, TOP_SOCKET, TOP_CACHE, TOP_LOG, TOP_SERVICES,
       TOP_XDS, TOP_CHECKS, TOP_HTTP };

static int load_root(struct loader *ld, const struct node *root, int is_main)
{
    const struct node *seen[ARRAY_SIZE(top_keys)] = { NULL };
    int r = 0;

    /* A file with no document, or with only "---", means all defaults. */
    if (root == NULL || is_null(root))
        return 0;
    if (root->kind != NODE_MAP)
        return fail_node(ld, root, "the top level must be a mapping of "
                         "sections such as 'etcd:' and 'services:', not %s",
                         kind_name(root));
    for (size_t i = 0; i < root->n_items / 2 && r == 0; i++) {
        const struct node *k = root->items[2 * i];
        const struct node *v = root->items[2 * i + 1];
        int key;

        if (!is_main && (k->kind != NODE_SCALAR ||
                         strcmp(k->text, "services") != 0))
            return fail_node(ld, k, "only 'services' may be set in conf.d "
                             "files: move this to %s", ld->cfg->path);
        key = section_key(ld, root, i, top_keys, ARRAY_SIZE(top_keys), seen,
                          "at the top level");
        switch (key) {
        case TOP_ETCD:
            r = load_etcd(ld, v);
            break;
        case TOP_SESSION:
            r = load_session(ld, v);
            break;
        case TOP_SOCKET:
            r = load_socket(ld, v);
            break;
        case TOP_CACHE:
            r = load_cache(ld, v);
            break;
        case TOP_LOG:
            r = load_log(ld, v);
            break;
        case TOP_SERVICES:
            r = load_services(ld, v);
            break;
        case TOP_CHECKS:
            r = load_checks(ld, v);
            break;
        case TOP_XDS:
            r = load_xds(ld, v);
            break;
        case TOP_HTTP:
            r = load_http(ld, v);
            break;
        default:
            r = key;
            break;
        }
    }
    return r;
}

/* ---- Files ------------------------------------------------------------ */

/* Reads one file into ld->cfg. ld->file names it while it is read, and
 * names the main file again afterwards, because a conf.d file's name is
 * freed once that file is done. */
static int load_file(struct loader *ld, const char *file, int is_main)
{
    struct tree t = { NULL, NULL };
    char *buf = NULL;
    size_t len;
    int r;

    ld->file = file;
    r = read_all(file, CONFIG_FILE_MAX, 0, &buf, &len);
    if (r == -EFBIG)
        r = fail_at(ld, file, 0, 0, r, "file too large: a configuration "
                    "file may hold at most 1 MiB");
    else if (r == -ENOMEM)
        r = fail_oom(ld);
    else if (r < 0)
        r = fail_at(ld, file, 0, 0, r, "%s", strerror(-r));
    if (r == 0)
        r = build_tree(ld, buf, len, &t);
    if (r == 0)
        r = load_root(ld, t.root, is_main);
    tree_free(&t);
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
    size_t dir_len = slash != NULL ? (size_t)(slash - path) + 1 : 0;
    char *dir, **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *d;
    int r = 0;

    dir = malloc(dir_len + sizeof("conf.d"));
    if (dir == NULL)
        return fail_oom(ld);
    memcpy(dir, path, dir_len);
    memcpy(dir + dir_len, "conf.d", sizeof("conf.d"));
    d = opendir(dir);
    if (d == NULL) {
        r = errno == ENOENT ? 0 : fail_at(ld, dir, 0, 0, -errno, "%s",
                                          strerror(errno));
        free(dir);
        return r;
    }
    for (;;) {
        size_t len;

        errno = 0;
        de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                r = fail_at(ld, dir, 0, 0, -errno, "%s", strerror(errno));
            break;
        }
        len = strlen(de->d_name);
        /* Hidden files are skipped as a shell's "*.yaml" would, which also
         * keeps editors' swap and backup files out. */
        if (de->d_name[0] == '.' || len <= 5 ||
            strcmp(de->d_name + len - 5, ".yaml") != 0)
            continue;
        if (n == cap) {
            size_t nc = cap == 0 ? 16 : cap * 2;
            char **nn = realloc(names, nc * sizeof(*nn));

            if (nn == NULL) {
                r = fail_oom(ld);
                break;
            }
            names = nn;
            cap = nc;
        }
        names[n] = malloc(strlen(dir) + 1 + len + 1);
        if (names[n] == NULL) {
            r = fail_oom(ld);
            break;
        }
        snprintf(names[n], strlen(dir) + 1 + len + 1, "%s/%s", dir,
                 de->d_name);
        n++;
    }
    closedir(d);
    if (r == 0 && n > 1)
        qsort(names, n, sizeof(*names), cmp_names);
    for (size_t i = 0; i < n && r == 0; i++)
        r = load_file(ld, names[i], 0);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(dir);
    return r;
}

static int cmp_services(const void *a, const void *b)
{
    const struct config_service *x = *(const struct config_service *const *)a;
    const struct config_service *y = *(const struct config_service *const *)b;
    int r = strcmp(x->name, y->name);

    if (r == 0)
        r = strcmp(x->address, y->address);
    if (r == 0)
        r = (x > y) - (x < y);  /* file order: one array, main file first */
    return r;
}

/* Two entries with one name and address would be one etcd key, so the
 * second would silently replace the first. The one reported is the earliest
 * repeat, in the order the files were read. */
static int check_duplicates(struct loader *ld)
{
    const struct config *c = ld->cfg;
    const struct config_service **v, *dup = NULL, *first = NULL;
    struct shown a, b;

    if (c->n_services < 2)
        return 0;
    v = malloc(c->n_services * sizeof(*v));
    if (v == NULL)
        return fail_oom(ld);
    for (size_t i = 0; i < c->n_services; i++)
        v[i] = &c->services[i];
    qsort(v, c->n_services, sizeof(*v), cmp_services);
    for (size_t i = 1; i < c->n_services; i++) {
        if (strcmp(v[i - 1]->name, v[i]->name) == 0 &&
            strcmp(v[i - 1]->address, v[i]->address) == 0 &&
            (i < 2 || strcmp(v[i - 2]->name, v[i]->name) != 0 ||
             strcmp(v[i - 2]->address, v[i]->address) != 0) &&
            (dup == NULL || v[i] < dup)) {
            dup = v[i];
            first = v[i - 1];
        }
    }
    free(v);
    if (dup == NULL)
        return 0;
    return fail_at(ld, dup->file, dup->line, dup->column, -EINVAL,
                   "duplicate service instance %s %s (first at %s:%d:%d): "
                   "remove one of them", show(&a, dup->name),
                   show(&b, dup->address), first->file, first->line,
                   first->column);
}

/* ---- Public functions ------------------------------------------------- */

static int set_defaults(struct loader *ld, const char *path)
{
    struct config *c = ld->cfg;

    c->timeout_ms = DEFAULT_TIMEOUT_MS;
    c->session_ttl_ms = DEFAULT_TTL_MS;
    c->socket_mode = DEFAULT_SOCKET_MODE;
    c->cache_idle_ms = DEFAULT_CACHE_IDLE_MS;
    c->xds_enabled = 1;
    c->xds_mode = UINT_MAX;  /* unset: socket.mode's, see default_xds_path() */
    c->xds_idle_ms = DEFAULT_XDS_IDLE_MS;
    c->log_level = 1;  /* info: the index in log_levels[] */
    c->http_enabled = 1;
    c->http_max_connections = DEFAULT_HTTP_MAX_CONNECTIONS;
    c->http_max_request_bytes = DEFAULT_HTTP_MAX_REQUEST;
    c->http_timeout_ms = DEFAULT_HTTP_TIMEOUT_MS;
    if ((c->path = dup_str(ld, path)) == NULL ||
        (c->prefix = dup_str(ld, DEFAULT_PREFIX)) == NULL ||
        (c->socket_path = dup_str(ld, DEFAULT_SOCKET_PATH)) == NULL ||
        (c->cache_dir = dup_str(ld, DEFAULT_CACHE_DIR)) == NULL ||
        (c->xds_group_header = dup_str(ld, DEFAULT_XDS_GROUP_HEADER)) == NULL)
        return -ENOMEM;
    return 0;
}

static int default_endpoints(struct loader *ld)
{
    struct config *c = ld->cfg;

    if (c->n_endpoints > 0)
        return 0;
    c->endpoints = calloc(1, sizeof(*c->endpoints));
    if (c->endpoints == NULL)
        return fail_oom(ld);
    c->n_endpoints = 1;
    c->endpoints[0] = dup_str(ld, DEFAULT_ENDPOINT);
    return c->endpoints[0] == NULL ? -ENOMEM : 0;
}

int config_load(const char *path, struct config **out, char *err,
                size_t errlen)
{
    struct loader ld = { .err = err, .errlen = errlen };
    int r;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL || path == NULL || path[0] == '\0') {
        if (out != NULL)
            *out = NULL;
        return fail_at(&ld, "(none)", 0, 0, -EINVAL,
                       "no configuration file given");
    }
    *out = NULL;
    ld.file = path;
    ld.cfg = calloc(1, sizeof(*ld.cfg));
    if (ld.cfg == NULL)
        return fail_oom(&ld);
    r = set_defaults(&ld, path);
    if (r == 0)
        r = load_file(&ld, ld.cfg->path, 1);
    if (r == 0)
        r = load_conf_d(&ld);
    if (r == 0)
        r = check_duplicates(&ld);
    if (r == 0)
        r = check_exec_allowed(&ld);
    if (r == 0)
        r = default_endpoints(&ld);
    if (r == 0)
        r = default_xds_path(&ld);
    if (r == 0)
        r = default_http_listen(&ld);
    if (r < 0) {
        config_free(ld.cfg);
        return r;
    }
    *out = ld.cfg;
    return 0;
}

struct config *config_free(struct config *c)
{
    if (c == NULL)
        return NULL;
    free(c->path);
    for (size_t i = 0; c->endpoints != NULL && i < c->n_endpoints; i++)
        free(c->endpoints[i]);
    free(c->endpoints);
    free(c->prefix);
    free(c->username);
    free(c->password_file);
    if (c->password != NULL) {
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
    for (size_t i = 0; c->http_listen != NULL && i < c->n_http_listen; i++)
        free(c->http_listen[i]);
    free(c->http_listen);
    for (size_t i = 0; c->services != NULL && i < c->n_services; i++) {
        struct config_service *s = &c->services[i];

        free(s->name);
        free(s->address);
        free(s->group);
        for (size_t j = 0; s->meta != NULL && j < s->n_meta; j++) {
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

const struct config_service *config_find_service(const struct config *c,
                                                 const char *name,
                                                 const char *address)
{
    if (c == NULL || name == NULL || address == NULL)
        return NULL;
    for (size_t i = 0; i < c->n_services; i++) {
        if (strcmp(c->services[i].name, name) == 0 &&
            strcmp(c->services[i].address, address) == 0)
            return &c->services[i];
    }
    return NULL;
}
