#include "error.h"

#include <string.h>

const char *da_strerror(int err)
{
    switch (err) {
#define XX(name, code, text)                                                                       \
    case code:                                                                                     \
        return text;
        DA_ERRNO_MAP(XX)
#undef XX
    }
    return err < 0 && err > -4000 ? strerror(-err) : "unknown error";
}
