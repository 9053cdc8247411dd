/* The one check of a service name or address that both libraries make
 * (internal.h). It is in a file of its own because each library links it
 * in: it is hidden, so libdiscovery-grpc cannot take it from
 * libdiscovery.so. */
#include <string.h>

#include "internal.h"

bool disc__valid_name(const char *s)
{
    size_t n;

    if (!s)
        return false;
    n = strlen(s);
    if (!n || n > 253 || !strcmp(s, ".") || !strcmp(s, ".."))
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '/' || *p <= ' ' || *p == 0x7f)
            return false;
    return true;
}
