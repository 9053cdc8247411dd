/* The gRPC module's one exported symbol (grpc_module.h): the interface
 * version, and the entry points of the xDS server (xds_server.c) and of
 * grpc health checks (health.c). Everything else in the module is hidden
 * (-fvisibility=hidden), so that its names cannot collide with the
 * daemon's. */
#include "grpcmod_internal.h"

const struct da_grpc_host *gm__host;

static void module_init(const struct da_grpc_host *host)
{
    gm__host = host;
}

__attribute__((visibility("default"))) const struct da_grpc_module da_grpc_module = {
    .version = DA_GRPC_MODULE_VERSION,
    .built = DA_VERSION,
    .init = module_init,

    .xds_start = gm__xds_start,
    .xds_add_fd = gm__xds_add_fd,
    .xds_run = gm__xds_run,
    .xds_stop = gm__xds_stop,
    .stream_send = gm__stream_send,
    .stream_finish = gm__stream_finish,
    .stream_set_data = gm__stream_set_data,
    .stream_data = gm__stream_data,
    .stream_peer = gm__stream_peer,

    .health_new = gm__health_new,
    .health_free = gm__health_free,
    .health_channel_new = gm__health_channel_new,
    .health_channel_free = gm__health_channel_free,
    .health_probe = gm__health_probe,
    .health_cancel = gm__health_cancel,
};
