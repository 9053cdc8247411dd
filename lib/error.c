/* libdiscovery's error codes: one table (DISC_ERRNO_MAP in discovery.h)
 * gives each code its name and its text, as libuv's UV_ERRNO_MAP does. */
#include "discovery/discovery.h"

const char *disc_strerror(int code)
{
    switch (code) {
#define XX(name, value, text)                                                                      \
    case DISC_##name:                                                                              \
        return text;
        DISC_ERRNO_MAP(XX)
#undef XX
    case 0:
        return "success";
    default:
        return "unknown error";
    }
}

const char *disc_err_name(int code)
{
    switch (code) {
#define XX(name, value, text)                                                                      \
    case DISC_##name:                                                                              \
        return "DISC_" #name;
        DISC_ERRNO_MAP(XX)
#undef XX
    case 0:
        return "DISC_OK";
    default:
        return "DISC_UNKNOWN";
    }
}
