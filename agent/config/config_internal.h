/* Between the files of the configuration loader (agent/config/), and
 * included only by them. Internal names carry the second prefix config__.
 *
 *   config.c           files (the main one, conf.d), defaults, the public API
 *   config_tree.c      the YAML tree: libyaml's events turned into nodes that
 *                      remember their line and column
 *   config_read.c      typed readers of tree nodes (mappings, lists, text,
 *                      durations, booleans, known keys) and the messages
 *                      "FILE:LINE:COLUMN: what is wrong"
 *   config_sections.c  the top level and its sections: etcd, session,
 *                      socket, cache, log, checks, xds
 *   config_services.c  the services: entries, their metadata and checks
 *   config_traffic.c   locality: and traffic: (the policy of policy.h)
 *
 * A file is read whole (up to CONFIG_FILE_MAX), turned into a tree, and the
 * tree is then walked section by section. The tree step exists so that
 * every later message can point at the exact key or value it is about, and
 * so that anchors, aliases and tags are refused where they appear
 * (libyaml's document API would resolve aliases silently). */
#ifndef AGENT_CONFIG_INTERNAL_H
#define AGENT_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "defaults.h"

/* A password file holds one password; a cap stops a wrong path (a log file,
 * say) from being read into memory and sent to etcd. */
#define CONFIG_PASSWORD_MAX 4096

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- The YAML tree (config_tree.c) ----------------------------------- */

enum node_kind { NODE_SCALAR, NODE_SEQ, NODE_MAP };

/* Every node of a tree is also on the tree's next_alloc list, so that
 * freeing a tree needs no recursion. */
struct node {
    enum node_kind kind;
    int line, column;          /* 1-based, where the node starts */
    bool plain;                /* a scalar written without quotes */
    char *text;                /* a scalar's value, NUL-terminated */
    struct node **items;       /* a sequence's items, or a mapping's keys */
    size_t n_items, cap_items; /* and values alternately */
    struct node *next_alloc;
};

struct tree {
    struct node *root; /* NULL for a file without a document */
    struct node *all;
};

/* ---- The loader's state ----------------------------------------------- */

struct loader {
    struct config *cfg;
    const char *file; /* the file being read, for messages */
    char *err;
    size_t errlen;
    bool failed; /* the first message wins */
    size_t cap_services;
};

/* Parses buf (len bytes, the text of ld->file) into *t, which the caller
 * frees with config__tree_free() whatever the result. Returns 0 or a
 * DA_E* code with the message reported. */
int config__build_tree(struct loader *ld, const char *buf, size_t len, struct tree *t);
void config__tree_free(struct tree *t);

/* ---- Messages (config_read.c) ---------------------------------------- */

/* A user's text as it may appear inside a message: at most 64 bytes of it,
 * cut on a character boundary, with control bytes shown as '?', so that one
 * message stays one readable line. */
struct shown {
    char s[80];
};

/* Fills b from s and returns b->s. */
const char *config__show(struct shown *b, const char *s);

/* Each reports "FILE:LINE:COLUMN: message" (or "FILE: message" when line
 * is 0) into the loader's buffer unless a message is already there, and
 * returns code: DA_EINVAL for content (config__fail_node), DA_ENOMEM
 * (config__fail_oom). */
int config__fail_at(struct loader *ld, const char *file, int line, int column, int code,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int config__fail_node(struct loader *ld, const struct node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int config__fail_oom(struct loader *ld);

/* strdup() that reports its failure; NULL then. */
char *config__dup_str(struct loader *ld, const char *s);
/* Replaces *dst with a copy of s. Returns 0 or DA_ENOMEM (reported). */
int config__set_str(struct loader *ld, char **dst, const char *s);

/* ---- Typed readers (config_read.c) ------------------------------------ */

/* YAML's spellings of null; an empty plain value is one too. */
bool config__is_null(const struct node *n);
/* "a mapping", "a sequence", "an empty value" or "a single value". */
const char *config__kind_name(const struct node *n);

/* Each returns 0 if val is of the kind, 1 if it is empty (which counts as
 * an empty mapping or sequence), or an error. what names the value in
 * messages ("etcd.tls"). */
int config__want_map(struct loader *ld, const char *what, const struct node *val);
int config__want_seq(struct loader *ld, const char *what, const struct node *val);
/* Gets the text of a single value into *text (borrowed from val); an empty
 * value is an error reported at key, because an empty value's own mark
 * points past the line. config__want_nonempty also refuses "". */
int config__want_text(struct loader *ld, const char *what, const struct node *key,
                      const struct node *val, const char **text);
int config__want_nonempty(struct loader *ld, const char *what, const struct node *key,
                          const struct node *val, const char **text);
/* A duration ("500ms", "10s", "2m") into *ms. */
int config__load_duration(struct loader *ld, const char *what, const struct node *key,
                          const struct node *val, uint64_t *ms);
/* YAML 1.2's core booleans, written without quotes. Returns 0 and sets *b,
 * or -1 (nothing reported: the caller names the key). */
int config__parse_bool(const struct node *v, bool *b);

/* A list of IP[:port] addresses (dns.listen, dns.recursors, http.listen),
 * the one reader of them: each entry is checked with validate_hostport()
 * and must be an IP literal (a listener binds it; a name would resolve to
 * who knows what at every start), none twice, at most max. On success
 * *out (owned by the config) holds n copies; an empty list is an error
 * with the text empty, or fine (*out NULL) when empty is NULL. */
struct config_ip_list {
    const char *what; /* the key: "dns.listen" */
    unsigned flags;   /* validate_hostport()'s */
    size_t max;
    const char *example;   /* after "give an IP address, such as " */
    const char *empty;     /* the error for an empty list, or NULL */
    const char *port_hint; /* after "use 1..65535", or NULL */
};
int config__load_ip_list(struct loader *ld, const struct config_ip_list *spec,
                         const struct node *key, const struct node *val, char ***out, size_t *n);

/* Checks the i-th key of map against the section's known keys. Returns the
 * key's index, or an error for a key that is not a plain name, is unknown
 * (with a "did you mean" or the list of known keys), or was given before
 * in this mapping (seen[] holds the earlier key nodes). where completes
 * "unknown key 'x' ...", e.g. "in etcd". */
int config__section_key(struct loader *ld, const struct node *map, size_t i,
                        const char *const *keys, size_t n_keys, const struct node **seen,
                        const char *where);

/* ---- Files (config.c) ------------------------------------------------- */

/* Reads the file at path into a new NUL-terminated buffer. Returns 0, the
 * negative errno of open() or read(), DA_ENOMEM, or DA_EFBIG when the file
 * holds more than cap bytes. A secret is read into one buffer allocated up
 * front, so that no copy of it is left behind by realloc(); the caller
 * wipes it. Reports nothing. */
int config__read_all(const char *path, size_t cap, bool secret, char **out, size_t *outlen);
/* Whether a file named in the configuration can be opened for reading now.
 * Returns 0 or a negative errno. */
int config__check_readable(const char *path);

/* ---- Sections (config_sections.c) and services (config_services.c) --- */

/* Reads one file's top level; conf.d files (!is_main) may set only
 * services. */
int config__load_root(struct loader *ld, const struct node *root, bool is_main);
/* Gives xds.path and xds.mode their defaults, which follow socket.path and
 * socket.mode, once every file is read. */
int config__default_xds_path(struct loader *ld);
/* Without dns.listen, the default address. */
int config__default_dns_listen(struct loader *ld);
/* The http: section (config_http.c), and http.listen's default once every
 * file is read. */
int config__load_http(struct loader *ld, const struct node *val);
int config__default_http_listen(struct loader *ld);

/* locality: and traffic: (config_traffic.c). */
int config__load_locality(struct loader *ld, const struct node *val);
int config__load_traffic(struct loader *ld, const struct node *val);

/* The services: sequence of one file, appended to ld->cfg->services. */
int config__load_services(struct loader *ld, const struct node *val);
/* Once every file is read: no two entries with one name and address. */
int config__check_duplicates(struct loader *ld);
/* Once every file is read: exec checks only with checks.exec. */
int config__check_exec_allowed(struct loader *ld);

#endif
