/* xds-client: an unmodified gRPC C-core client of xds:///NAME.
 *
 *     GRPC_XDS_BOOTSTRAP=/run/discovery-agent/xds-bootstrap.json \
 *         xds-client xds:///echo [-n CALLS] [-d SECONDS] [-g GROUP]
 *                    [-H HEADER] [-i INTERVAL_MS] [-t DEADLINE_MS] [-W]
 *
 * Nothing here knows about the agent: the channel is a plain
 * grpc_channel_create("xds:///echo", insecure credentials), and gRPC's own
 * xDS client reads the bootstrap named by GRPC_XDS_BOOTSTRAP, asks the
 * agent's xDS server for the listener, routes, clusters and endpoints of
 * "echo", and follows its pushes. This program only calls
 * /echo.Echo/Say (proto/echo.proto) and counts who answered.
 *
 * It makes CALLS calls (default 100), or calls for SECONDS, one every
 * INTERVAL_MS (default: back to back), with the per-call metadata
 * "x-group: GROUP" when -g is given (-H names another header), and prints
 * one JSON object, as test/xds_client.py does:
 *
 *   {"ok":1000,"failed":0,"errors":{},"counts":{"127.0.0.1:5001":750,...},
 *    "first":{ADDR:epoch_ms},"last":{ADDR:epoch_ms},"start":epoch_ms,
 *    "end":epoch_ms,"first_call_ms":12.3}
 *
 * The first call waits for the channel to become ready (the xDS answers
 * come first; -W: it does not wait); later calls fail at once when no backend can take them, so
 * that a failure is seen as one. Exit status: 0 when every call succeeded,
 * 1 when some failed, 2 for bad usage. */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define METHOD "/echo.Echo/Say"
#define MAX_ADDRS 64
#define MAX_ERRORS 16

struct counter {
    char addr[128];
    long n;
    long long first, last;
};

struct error_count {
    char text[160];
    long n;
};

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* google.protobuf.StringValue: 0x0A, a varint length, the bytes. */
static void decode_string_value(const unsigned char *p, size_t len, char *out, size_t outlen)
{
    size_t i = 1, n = 0;
    int shift = 0;

    out[0] = '\0';
    if (len < 2 || p[0] != 0x0A)
        return;
    while (i < len && shift < 35) {
        n |= (size_t)(p[i] & 0x7F) << shift;
        shift += 7;
        if (!(p[i++] & 0x80))
            break;
    }
    if (n > len - i)
        n = len - i;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, p + i, n);
    out[n] = '\0';
}

/* One unary call. Returns the gRPC status; the replying address goes to
 * addr, the status text to details. */
static grpc_status_code call_once(grpc_channel *ch, grpc_completion_queue *cq, const char *header,
                                  const char *group, bool wait, int deadline_ms, char *addr,
                                  size_t addrlen, char *details, size_t dlen)
{
    grpc_slice method = grpc_slice_from_static_string(METHOD);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(deadline_ms, GPR_TIMESPAN));
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                               deadline, NULL);
    grpc_metadata md;
    grpc_metadata_array initial, trailing;
    grpc_byte_buffer *request = grpc_raw_byte_buffer_create(NULL, 0); /* "" */
    grpc_byte_buffer *reply = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice status_details;
    grpc_op ops[6];
    grpc_event ev;

    memset(ops, 0, sizeof ops);
    memset(&md, 0, sizeof md);
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (group) {
        /* Per-call metadata: the agent's routes match it to NAME/GROUP. */
        md.key = grpc_slice_from_static_string(header);
        md.value = grpc_slice_from_static_string(group);
        ops[0].data.send_initial_metadata.count = 1;
        ops[0].data.send_initial_metadata.metadata = &md;
    }
    if (wait)
        ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = request;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &reply;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &status_details;
    addr[0] = details[0] = '\0';
    if (grpc_call_start_batch(call, ops, 6, call, NULL) == GRPC_CALL_OK) {
        ev = grpc_completion_queue_pluck(cq, call, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        (void)ev;
        if (reply) {
            grpc_byte_buffer_reader r;
            if (grpc_byte_buffer_reader_init(&r, reply)) {
                grpc_slice s = grpc_byte_buffer_reader_readall(&r);
                decode_string_value(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), addr, addrlen);
                grpc_slice_unref(s);
                grpc_byte_buffer_reader_destroy(&r);
            }
            grpc_byte_buffer_destroy(reply);
        }
        char *d = grpc_slice_to_c_string(status_details);
        snprintf(details, dlen, "%s", d);
        gpr_free(d);
        grpc_slice_unref(status_details);
    }
    grpc_byte_buffer_destroy(request);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    grpc_call_unref(call);
    return status;
}

static void usage(void)
{
    fprintf(stderr, "usage: xds-client TARGET [-n CALLS] [-d SECONDS] [-g GROUP] [-H HEADER] "
                    "[-i INTERVAL_MS] [-t DEADLINE_MS] [-W]\n"
                    "  with GRPC_XDS_BOOTSTRAP naming the agent's bootstrap file\n");
}

/* Prints s as a JSON string (addresses and gRPC messages are plain text). */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    const char *target, *group = NULL, *header = "x-group";
    long calls = 0, made = 0, ok = 0, failed = 0;
    double duration_s = 0, interval_ms = 0, t0m, first_call_ms = -1;
    int deadline_ms = 5000, opt;
    bool first_waits = true;
    struct counter counts[MAX_ADDRS];
    struct error_count errors[MAX_ERRORS];
    size_t n_counts = 0, n_errors = 0;
    long long start;

    if (argc < 2 || argv[1][0] == '-') {
        usage();
        return 2;
    }
    target = argv[1];
    optind = 2;
    while ((opt = getopt(argc, argv, "n:d:g:H:i:t:W")) != -1) {
        switch (opt) {
        case 'n':
            calls = strtol(optarg, NULL, 10);
            break;
        case 'd':
            duration_s = strtod(optarg, NULL);
            break;
        case 'g':
            group = optarg;
            break;
        case 'H':
            header = optarg;
            break;
        case 'i':
            interval_ms = strtod(optarg, NULL);
            break;
        case 't':
            deadline_ms = (int)strtol(optarg, NULL, 10);
            break;
        case 'W':
            first_waits = false;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (calls <= 0 && duration_s <= 0)
        calls = 100;

    grpc_init();
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_channel *ch = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);

    start = now_ms();
    t0m = mono_ms();
    for (;;) {
        char addr[128], details[160];
        grpc_status_code st;

        if (calls > 0 && made >= calls)
            break;
        if (duration_s > 0 && mono_ms() - t0m >= duration_s * 1000)
            break;
        /* The first call waits while xDS resolves the target. */
        st = call_once(ch, cq, header, group, made == 0 && first_waits,
                       made == 0 && first_waits ? 20000 : deadline_ms, addr, sizeof addr, details,
                       sizeof details);
        made++;
        if (st == GRPC_STATUS_OK) {
            long long at = now_ms();
            size_t i;

            if (first_call_ms < 0)
                first_call_ms = mono_ms() - t0m;
            ok++;
            for (i = 0; i < n_counts && strcmp(counts[i].addr, addr); i++)
                ;
            if (i == n_counts && n_counts < MAX_ADDRS) {
                snprintf(counts[i].addr, sizeof counts[i].addr, "%s", addr);
                counts[i].n = 0;
                counts[i].first = at;
                n_counts++;
            }
            if (i < n_counts) {
                counts[i].n++;
                counts[i].last = at;
            }
        } else {
            char text[160];
            size_t i;

            failed++;
            snprintf(text, sizeof text, "%d: %s", (int)st, details);
            for (i = 0; i < n_errors && strcmp(errors[i].text, text); i++)
                ;
            if (i == n_errors && n_errors < MAX_ERRORS) {
                snprintf(errors[i].text, sizeof errors[i].text, "%s", text);
                errors[i].n = 0;
                n_errors++;
            }
            if (i < n_errors)
                errors[i].n++;
        }
        if (interval_ms > 0)
            usleep((useconds_t)(interval_ms * 1000));
    }

    printf("{\"ok\":%ld,\"failed\":%ld,\"errors\":{", ok, failed);
    for (size_t i = 0; i < n_errors; i++) {
        printf(i ? "," : "");
        json_str(errors[i].text);
        printf(":%ld", errors[i].n);
    }
    printf("},\"counts\":{");
    for (size_t i = 0; i < n_counts; i++) {
        printf(i ? "," : "");
        json_str(counts[i].addr);
        printf(":%ld", counts[i].n);
    }
    printf("},\"first\":{");
    for (size_t i = 0; i < n_counts; i++) {
        printf(i ? "," : "");
        json_str(counts[i].addr);
        printf(":%lld", counts[i].first);
    }
    printf("},\"last\":{");
    for (size_t i = 0; i < n_counts; i++) {
        printf(i ? "," : "");
        json_str(counts[i].addr);
        printf(":%lld", counts[i].last);
    }
    printf("},\"start\":%lld,\"end\":%lld,\"first_call_ms\":%.1f}\n", start, now_ms(),
           first_call_ms);
    fflush(stdout);

    grpc_channel_destroy(ch);
    /* Every call was plucked: nothing is left in the queue. */
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq);
    grpc_shutdown();
    return failed ? 1 : 0;
}
