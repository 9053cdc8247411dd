/* The health-check schema: what a check is (struct check_spec), its keys,
 * its defaults and its limits, written once for every reader. The YAML
 * reader (a service's check: in the configuration) and the JSON reader (the
 * socket's register op) both hand what they read to check_spec_build(), so
 * that a check the configuration accepts is exactly one the socket accepts,
 * and the other way round. checker_start() applies the same rules again
 * through check_spec_normalize().
 *
 * Nothing here needs the event loop: the configuration includes this
 * header, not check.h. */
#ifndef DA_CHECK_SPEC_H
#define DA_CHECK_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "defaults.h"

enum check_type { CHECK_NONE = 0, CHECK_GRPC, CHECK_TCP, CHECK_HTTP, CHECK_EXEC, CHECK_TTL };

/* The defaults' home is defaults.h; these are their names here. */
#define CHECK_DEFAULT_INTERVAL_MS DA_DEFAULT_CHECK_INTERVAL_MS
#define CHECK_DEFAULT_TIMEOUT_MS DA_DEFAULT_CHECK_TIMEOUT_MS
#define CHECK_DEFAULT_RISE DA_DEFAULT_CHECK_RISE
#define CHECK_DEFAULT_FALL DA_DEFAULT_CHECK_FALL

/* Limits on what a check may ask for. */
#define CHECK_RISE_FALL_MAX 100 /* rise and fall: 1..100 */
#define CHECK_ARGV_MAX 64       /* exec: items of command, the program first */
#define CHECK_SERVICE_MAX 1024  /* grpc: bytes of service */
#define CHECK_URL_MAX 4096      /* http: bytes of url */

/* What to check and how often. A zero interval_ms, timeout_ms, rise or fall
 * means its default; the default timeout is 2 s, or half the interval when
 * the interval is 2 s or less. interval_ms, timeout_ms are unused by ttl. */
struct check_spec {
    enum check_type type;
    uint64_t interval_ms; /* default 10s */
    uint64_t timeout_ms;  /* default 2s, and <= interval */
    int rise;             /* consecutive passes to become healthy; default 2 */
    int fall;             /* consecutive failures to become unhealthy; default 3 */
    char *
        grpc_service; /* grpc: the service name asked in HealthCheckRequest; NULL/"" = server overall */
    char *http_url;   /* http: full URL; NULL = http://<address>/health */
    char **exec_argv; /* exec: argv, NULL-terminated (run without a shell) */
    uint64_t ttl_ms;  /* ttl: the application must report pass at least this often */
};

/* Helpers for owners of specs (configuration, registry). A spec filled by
 * check_spec_copy() or check_spec_build() owns its strings;
 * check_spec_clear() frees them and zeroes the spec (any spec whose strings
 * are heap-allocated, NULL-safe). check_spec_copy returns 0 or DA_ENOMEM
 * (dst is then cleared). */
int check_spec_copy(struct check_spec *dst, const struct check_spec *src);
void check_spec_clear(struct check_spec *s);
/* Same check once defaults are applied (a reload can keep a checker). */
bool check_spec_equal(const struct check_spec *a, const struct check_spec *b);

/* Applies the defaults to *s in place and validates it, as checker_start
 * does, without needing an address (so the configuration can refuse a bad
 * check when it is loaded). exec_enabled: whether exec checks are allowed.
 * Returns 0 or DA_EINVAL with a reason in err. Allocates nothing. */
int check_spec_normalize(struct check_spec *s, bool exec_enabled, char *err, size_t errlen);

const char *check_type_name(enum check_type t); /* "grpc", ..., "none"; static */
/* "grpc", "tcp", "http", "exec", "ttl", "none" (exact, lower case).
 * Returns 0 or DA_EINVAL. */
int check_type_parse(const char *s, enum check_type *out);

/* ---- reading a check ------------------------------------------------------ */

/* The keys of a check, the same in YAML and in JSON. */
enum check_key {
    CHECK_KEY_TYPE,
    CHECK_KEY_INTERVAL,
    CHECK_KEY_TIMEOUT,
    CHECK_KEY_RISE,
    CHECK_KEY_FALL,
    CHECK_KEY_SERVICE,
    CHECK_KEY_URL,
    CHECK_KEY_COMMAND,
    CHECK_KEY_TTL,
    CHECK_KEY_COUNT
};

/* The key names in enum check_key order ("type", "interval", ...); static.
 * *n gets CHECK_KEY_COUNT. */
const char *const *check_spec_keys(size_t *n);

/* One value as a reader found it. quoted: written as a string ("3" in
 * JSON, '3' or "3" in YAML) rather than as a bare number or word; counts
 * must be bare numbers. text is borrowed. */
struct check_value {
    const char *text;
    bool quoted;
};

/* A check as a reader found it, before any rule of the schema is applied.
 * A reader only checks the shape its format gives each value (one value,
 * or a list of strings for command) and leaves every rule to
 * check_spec_build(). Everything is borrowed. */
struct check_input {
    struct check_value value[CHECK_KEY_COUNT]; /* text NULL: key absent; command's is unused */
    bool has_command;                          /* command was given, with: */
    const char *const *command;                /* its n_command items */
    size_t n_command;
    const char *owner; /* for messages: "service NAME", or NULL */
};

/* Where check_spec_build() found a check wrong, for a reader to point at:
 * key is the key (CHECK_KEY_COUNT: the check as a whole), item the index
 * in command when key is CHECK_KEY_COMMAND and one item is wrong (else
 * SIZE_MAX). msg says what is wrong and how to fix it, without the
 * reader's position. */
struct check_error {
    enum check_key key;
    size_t item;
    char msg[320];
};

/* Builds *out from in: parses durations and counts, checks every limit,
 * applies the defaults (check_spec_normalize). exec_enabled as for
 * check_spec_normalize (the configuration passes true and checks
 * checks.exec once every file is read). On success returns 0 and *out owns
 * its strings (check_spec_clear()). On failure returns DA_EINVAL or
 * DA_ENOMEM, fills *why (may be NULL) and leaves *out cleared. */
int check_spec_build(struct check_spec *out, const struct check_input *in, bool exec_enabled,
                     struct check_error *why);

#endif
