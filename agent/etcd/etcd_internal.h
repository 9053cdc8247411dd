/* What etcd.c (requests, endpoints, auth), etcd_watch.c (each watch) and
 * etcd_watch_stream.c (the stream they share) share. Nothing outside
 * agent/etcd/ includes this. */
#ifndef DA_ETCD_INTERNAL_H
#define DA_ETCD_INTERNAL_H

#include "backoff.h"
#include "etcd.h"

struct etcd_client {
    uv_loop_t *loop;
    http_client *http;
    /* Watch streams get a curl multi handle of their own: every connection
     * of a multi handle sits in its cache, and each request walks the cache
     * looking for one to reuse. With 1,000 streams in it, each keep-alive
     * walked 1,000 busy connections, the largest part of the CPU at rest. */
    http_client *streams;
    char **endpoints;
    size_t n_endpoints;
    size_t cur; /* endpoint in use */
    /* Endpoints that failed since the last answer (bit i: endpoints[i]),
     * so that a failover draws among the members not yet tried and a
     * request meets every member once before it gives up. */
    uint64_t tried;
    long timeout_ms;
    size_t max_reply;
    char *username, *password, *token;
    char *ca_file, *cert_file, *key_file;
    struct http_tls tls;
    int ka_idle, ka_intvl, ka_cnt;

    bool connected;
    char last_error[256];
    size_t requests;

    struct etcd_call *calls; /* every call in flight or waiting */
    /* Range reads in flight (at most ETCD_MAX_READS), those queued behind
     * them, and whether the client is being freed (nothing more is sent). */
    size_t reads;
    struct etcd_call *qhead, *qtail;
    bool freeing;
    struct etcd_watch *watches; /* every watch not stopped */
    struct etcd_wstream *ws;    /* the stream they share (etcd_watch_stream.c) */
    int64_t watch_ids;          /* the last watch_id given out */
    struct etcd_call *auth;     /* the authenticate call in flight, if any */

    /* etcd's history as seen so far: a new cluster id, or a revision
     * below one already seen, means it was wiped or restored and starts
     * a new epoch (etcd_client_epoch). */
    uint64_t cluster_id;
    int64_t max_rev;
    unsigned epoch;
};

/* The backoff of watches and their stream (backoff.h): 100 ms doubling to
 * 5 s, with full jitter, so that many agents cut off together do not come
 * back in step. */
#define ETCD_WATCH_BACKOFF BACKOFF_INIT(100, 5000)

/* Fills hdrs (room for 4 and a NULL) with the headers every request
 * carries; authbuf holds the Authorization line. */
void etcd__headers(etcd_client *c, const char **hdrs, char *authbuf, size_t len);

/* The endpoint at idx failed (transport, timeout, no leader): if it is
 * still the one in use, move to the next and tell the watches. */
void etcd__endpoint_failed(etcd_client *c, size_t idx, int err, const char *why);
void etcd__endpoint_ok(etcd_client *c);

/* Returns true when auth is configured and no token is held yet; starts
 * authenticating if nobody has. The watches are told when a token comes
 * (etcd__watches_token). */
bool etcd__need_token(etcd_client *c);
void etcd__token_invalid(etcd_client *c);

/* Notes the header of a reply. cluster_id 0: not known. floor: the
 * highest revision answered before the request was sent (c->max_rev
 * then), or -1 when the caller knows etcd's history restarted (a watch saw
 * it). For KV requests only: a write answers after it applies and a read
 * is linearizable, so the reply's revision is at least any revision
 * answered before it was sent while etcd keeps its data. Replies of
 * requests in flight together may come back in any order. */
void etcd__note_history(etcd_client *c, uint64_t cluster_id, int64_t revision, int64_t floor);

/* Implemented in etcd_watch.c, for etcd.c. */
void etcd__watches_moved(etcd_client *c);
void etcd__watches_token(etcd_client *c, int err);
void etcd__watches_free(etcd_client *c);

/* Implemented in etcd_watch.c, for the stream: a parsed line (returns 0,
 * or an error that ends the stream: DA_EAUTH to open it again at once with
 * a new token), the stream opened (watches waiting for it send their
 * creates), the stream ended (every watch on it waits for the next one;
 * with tell, each reports DOWN with err). */
struct etcd_watch_msg;
int etcd__watches_message(etcd_client *c, const struct etcd_watch_msg *m);
void etcd__watches_stream_open(etcd_client *c);
void etcd__watches_stream_down(etcd_client *c, int err, bool tell);

/* Implemented in etcd_watch_stream.c: open the stream if it is closed (in
 * backoff or waiting for a token, it opens later by itself), whether it is
 * open, send a request line on it (only while open), close it (no watch
 * left), and the client's hooks. */
int etcd__ws_open(etcd_client *c);
bool etcd__ws_is_open(const etcd_client *c);
int etcd__ws_send(etcd_client *c, const char *line, size_t len);
void etcd__ws_close(etcd_client *c);
void etcd__ws_moved(etcd_client *c);
void etcd__ws_token(etcd_client *c, int err);
void etcd__ws_free(etcd_client *c);

#endif
