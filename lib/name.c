/* The check of a service name that both libraries make (internal.h): the
 * agent's own rule (agent/validate.h), so a client refuses exactly what the
 * agent would. It is in a file of its own because each library links it
 * in, with validate.o: both are hidden, so libdiscovery-grpc cannot take
 * them from libdiscovery.so. */
#include "internal.h"
#include "validate.h"

bool disc__valid_name(const char *s)
{
    return s && validate_name(s, NULL, 0);
}
