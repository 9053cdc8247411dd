/* Parsers for the etcd gateway's JSON replies and watch-stream lines. They
 * take outside bytes, so they check every shape and bound and return an
 * error for anything else; they never abort. Kept apart from the client so
 * that they can be unit-tested and fuzzed on their own. */
#ifndef DA_ETCD_PARSE_H
#define DA_ETCD_PARSE_H

#include <stddef.h>

#include "etcd.h"

/* What etcd said when it refused a request. */
struct etcd_error {
    int code; /* gRPC code (5 not found, 9 failed precondition, 14 unavailable, 16 unauthenticated) */
    char message[256]; /* etcd's text, cut to fit */
};

/* Parses a unary reply body. Returns 0 with r filled (free with
 * etcd_result_clear), DA_EETCD/DA_EAUTH/DA_ELEASE/DA_ENOLEADER with e
 * filled when the body is an etcd error, DA_EPROTO when the body is not
 * the JSON it must be, DA_ENOMEM. A keep-alive reply's "result" wrapper is
 * unwrapped. */
int etcd_parse_reply(const char *body, size_t len, struct etcd_result *r, struct etcd_error *e);

void etcd_result_clear(struct etcd_result *r);

/* One line of a watch stream. */
struct etcd_watch_msg {
    int64_t watch_id; /* which watch of the stream (0 when etcd left it out) */
    int64_t revision; /* header.revision */
    uint64_t cluster_id;
    int created;
    int canceled;
    int64_t compact_revision;
    char cancel_reason[256];
    struct etcd_event *events;
    size_t n_events;
};

/* Parses one watch line ({"result":{...}} or {"error":{...}}). Returns 0
 * with m filled (free with etcd_watch_msg_clear), an error code with e
 * filled for an {"error":...} line, DA_EPROTO, DA_ENOMEM. */
int etcd_parse_watch_line(const char *line, size_t len, struct etcd_watch_msg *m,
                          struct etcd_error *e);
void etcd_watch_msg_clear(struct etcd_watch_msg *m);

void etcd_kv_clear(struct etcd_kv *kv);

/* Maps an etcd error (code and text) to a DA_E* code. */
int etcd_error_to_err(const struct etcd_error *e);

#endif
