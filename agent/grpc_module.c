/* Finds and loads the gRPC module; see grpc_module.h.
 *
 * The folder of the running program comes before the installed one, so
 * that build/discovery-agent takes build/discovery-agent-grpc.so (of its
 * own build) even on a machine where a package has installed another.
 * The environment variable, when set, is the only place looked at: a test
 * that points it somewhere gets that module or a clear failure, never a
 * module found elsewhere by accident. */
#include "grpc_module.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#ifndef DA_MODULEDIR
#define DA_MODULEDIR "/usr/local/lib/discovery-agent"
#endif

#define MAX_DIRS 3

static const struct da_grpc_module *loaded;

static const struct da_grpc_host host = {
    .log_level = &log_level,
    .log_write = log_write,
};

/* The folder of /proc/self/exe into out; false when it cannot be read. */
static bool exe_dir(char *out, size_t outlen)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    char *slash;

    if (n <= 0)
        return false;
    path[n] = '\0';
    if (!(slash = strrchr(path, '/')))
        return false;
    *slash = '\0';
    snprintf(out, outlen, "%s", path[0] ? path : "/");
    return true;
}

/* The folders to look in, in order; returns how many. */
static int module_dirs(char dirs[MAX_DIRS][PATH_MAX])
{
    const char *env = getenv(DA_GRPC_MODULE_ENV);
    int n = 0;

    if (env && *env) {
        snprintf(dirs[n++], PATH_MAX, "%s", env);
        return n;
    }
    if (exe_dir(dirs[n], PATH_MAX))
        n++;
    if (n == 0 || strcmp(dirs[0], DA_MODULEDIR))
        snprintf(dirs[n++], PATH_MAX, "%s", DA_MODULEDIR);
    return n;
}

/* Loads the module at path. NULL with err filled when it is not one of
 * ours, or of another version. */
static const struct da_grpc_module *load(const char *what, const char *path, char *err,
                                         size_t errlen)
{
    const struct da_grpc_module *m;
    void *h;

    /* RTLD_LOCAL: gRPC's symbols stay the module's; RTLD_NOW: a missing
     * library or symbol shows here, not in the middle of a call. */
    if (!(h = dlopen(path, RTLD_NOW | RTLD_LOCAL))) {
        snprintf(err, errlen, "%s needs %s: %s", what, DA_GRPC_MODULE_FILE, dlerror());
        return NULL;
    }
    if (!(m = dlsym(h, DA_GRPC_MODULE_SYMBOL))) {
        snprintf(err, errlen, "%s needs %s: %s is not the agent's gRPC module (no %s)", what,
                 DA_GRPC_MODULE_FILE, path, DA_GRPC_MODULE_SYMBOL);
        /* Nothing of it has run but its constructors: unloading is safe. */
        dlclose(h);
        return NULL;
    }
    if (m->version != DA_GRPC_MODULE_VERSION) {
        snprintf(err, errlen,
                 "%s needs %s of interface version %d, but %s has version %u (built for "
                 "agent %s; this agent is %s): install the module of this agent's version",
                 what, DA_GRPC_MODULE_FILE, DA_GRPC_MODULE_VERSION, path, (unsigned)m->version,
                 m->version >= 1 && m->built ? m->built : "?", DA_VERSION);
        /* Not unloaded: gRPC's libraries do not promise to unload cleanly,
         * and keeping a refused module mapped costs only memory. */
        return NULL;
    }
    m->init(&host);
    return m;
}

const struct da_grpc_module *grpc_module_get(const char *what, char *err, size_t errlen)
{
    char dirs[MAX_DIRS][PATH_MAX], path[PATH_MAX + sizeof DA_GRPC_MODULE_FILE + 1];
    char tried[3 * PATH_MAX] = "";
    int n;

    if (loaded)
        return loaded;
    n = module_dirs(dirs);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dirs[i], DA_GRPC_MODULE_FILE);
        if (access(path, F_OK) == 0) {
            if ((loaded = load(what, path, err, errlen)))
                log_info("grpc: loaded %s for %s", path, what);
            return loaded;
        }
        snprintf(tried + strlen(tried), sizeof tried - strlen(tried), "%s%s", i ? ", " : "",
                 dirs[i]);
    }
    snprintf(err, errlen,
             "%s needs %s: not found in %s; install the agent's gRPC module there (or set %s "
             "to its folder)",
             what, DA_GRPC_MODULE_FILE, tried, DA_GRPC_MODULE_ENV);
    return NULL;
}

bool grpc_module_loaded(void)
{
    return loaded != NULL;
}
