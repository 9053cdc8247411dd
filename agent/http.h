/* HTTP client on the libuv loop: one libcurl multi handle, a uv_poll_t per
 * socket curl asks us to watch, one uv_timer_t for curl's timeouts.
 *
 * Callbacks (chunk and done) are never called from inside libcurl's own
 * callbacks: data is collected there and handed over after
 * curl_multi_socket_action() returns, so a callback may start or cancel any
 * request, including its own. */
#ifndef DA_HTTP_H
#define DA_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct http_client http_client;
typedef struct http_req http_req;

/* Called once when a request ends, unless it was cancelled first. err is 0
 * when an HTTP reply was read in full (any status), else a DA_E* code
 * (DA_ETIMEDOUT, DA_ETRANSPORT, DA_EMSGSIZE, DA_ECANCELED when a chunk
 * callback asked to stop). body is the buffered reply (NUL-terminated,
 * borrowed for the call) or NULL for a streaming request. The request is
 * freed when the callback returns. */
typedef void (*http_done_cb)(http_req *req, int err, long status, const char *body, size_t len,
                             void *arg);

/* Streaming requests get the body in pieces as it arrives. Return 0 to go
 * on, or non-zero to abort the transfer (done then reports DA_ECANCELED). */
typedef int (*http_chunk_cb)(http_req *req, const char *data, size_t len, void *arg);

struct http_tls {
    const char *ca_file;   /* NULL: the system's CA store */
    const char *cert_file; /* client certificate, or NULL */
    const char *key_file;
};

struct http_req_opts {
    const char *url;
    const char *body; /* POST body (copied); NULL makes a GET */
    size_t body_len;
    const char *const *headers; /* NULL-terminated "Name: value" lines */
    long timeout_ms;            /* whole transfer; 0 = none (watches) */
    long connect_timeout_ms;    /* 0 = curl's default */
    size_t max_body;            /* cap on the buffered body or one pending chunk */
    http_chunk_cb on_chunk;     /* set for a streaming request */
    const struct http_tls *tls; /* NULL: plain defaults */
    /* TCP keep-alive probes (seconds); 0 leaves them off. Used on watches,
     * which may be silent for hours on a healthy connection. */
    int keepalive_idle_s;
    int keepalive_intvl_s;
    int keepalive_cnt;
    /* Keeps the request body open: body (if any) is its first bytes and
     * http_req_send() adds more for as long as the request lives. The
     * body's declared length (HTTP_OPEN_BODY_LENGTH) is never reached,
     * so a server that reads the body as it comes (etcd's gateway does on
     * /v3/watch) takes each piece as it is sent. Only for streaming
     * requests (on_chunk set). */
    bool open_body;
};

/* The Content-Length an open body declares: 10^15 bytes. */
#define HTTP_OPEN_BODY_LENGTH 1000000000000000LL

/* Creates a client bound to loop. Returns 0 or DA_ENOMEM. */
int http_client_new(http_client **out, uv_loop_t *loop);

/* Starts a request. On success *out (may be NULL) is a borrowed handle valid
 * until done runs or http_cancel is called. On error, done is never called. */
int http_request(http_client *c, const struct http_req_opts *o, http_done_cb done, void *arg,
                 http_req **out);

/* Sends more of an open body (the request was started with open_body).
 * data is copied; curl sends it on the loop's next turn. Returns 0,
 * DA_ENOMEM, or DA_EINVAL if the request was cancelled. */
int http_req_send(http_req *r, const char *data, size_t len);

/* Stops a request; its done callback will not run. Safe from any callback. */
void http_cancel(http_req *req);

/* libcurl's text for the last failure (empty if none); valid in callbacks. */
const char *http_req_errtext(const http_req *req);

/* Cancels every request (no callbacks), cleans up the multi handle, and
 * closes the loop handles; the client is freed by the loop, so the caller
 * must run the loop once more (uv_run) before uv_loop_close(). */
void http_client_close(http_client *c);

#endif
