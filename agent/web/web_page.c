/* The status page: web_page.html, made into a C string at build time
 * (the Makefile writes web_page.h from it), so that the page is edited as
 * HTML and served from memory with nothing to install beside the agent. */
#include "web_internal.h"

const char web__page[] =
#include "web_page.h"
    ;

const size_t web__page_len = sizeof web__page - 1;
