/* discovery-agent: command line, then agent.c does the rest. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "agent.h"
#include "config.h"
#include "defaults.h"
#include "fdlimit.h"
#include "log.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: discovery-agent [-c FILE] [--check]\n"
               "\n"
               "Keeps this host's service instances registered in etcd and serves live\n"
               "address lists on a unix socket.\n"
               "\n"
               "  -c, --config FILE  configuration (default " DA_DEFAULT_CONFIG ",\n"
               "                     plus conf.d/*.yaml beside it)\n"
               "      --check        validate the configuration and exit\n"
               "  -V, --version      print the version and exit\n"
               "  -h, --help         this text\n"
               "\n"
               "Signals: SIGHUP reloads the configuration; SIGTERM or SIGINT deregisters\n"
               "this host's instances, revokes the lease and exits.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = DA_DEFAULT_CONFIG;
    bool check = false;
    struct config *cfg;
    struct agent a;
    uv_loop_t loop;
    char err[1024];
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'V':
            printf("discovery-agent %s\n", AGENT_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    rc = config_load(path, &cfg, err, sizeof err);
    if (rc) {
        fprintf(stderr, "<3>discovery-agent: %s\n", err);
        return 1;
    }
    if (check) {
        printf("%s: ok (%zu endpoint(s), %zu service instance(s))\n", path, cfg->n_endpoints,
               cfg->n_services);
        config_free(cfg);
        return 0;
    }

    /* Every client is a file descriptor: allow as many as the hard limit
     * lets us, rather than the soft default of 1024. Clients never get the
     * last FDLIMIT_RESERVE of them (fdlimit.h). */
    long nofile = fdlimit_raise();
    if (nofile >= 0 && nofile <= 2 * FDLIMIT_RESERVE)
        log_warn("agent: RLIMIT_NOFILE is %ld and %d descriptors are kept for etcd, health "
                 "checks and files, so few local clients can connect: raise LimitNOFILE",
                 nofile, FDLIMIT_RESERVE);
    /* A client that goes away mid-write must be an EPIPE, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&loop) < 0) {
        fprintf(stderr, "<3>discovery-agent: cannot create the event loop\n");
        config_free(cfg);
        return 1;
    }
    rc = agent_start(&a, &loop, cfg, err, sizeof err);
    if (rc)
        log_error("%s", err);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        log_warn("agent: handles left open at exit");
    config_free(a.cfg);
    return rc ? 1 : a.exit_code;
}
