/*
 * respond.c: registry error responses. See respond.h.
 */
#include "registry/respond.h"

#define RESPOND_BODY_MAX 2048
#define RESPOND_HEADERS_MAX 8

void respond_error_with(struct http_exchange *x, enum registry_error_code code, int status,
                        const struct http_header *extra, size_t n_extra, const char *message,
                        const char *detail)
{
    char body[RESPOND_BODY_MAX];
    int n = registry_error_json(code, message, detail, body, sizeof(body));
    if (n < 0) n = 0;
    struct http_header hdrs[RESPOND_HEADERS_MAX];
    size_t nh = 0;
    hdrs[nh++] = (struct http_header){"Content-Type", 12, "application/json; charset=utf-8", 31};
    hdrs[nh++] = (struct http_header){"X-Content-Type-Options", 22, "nosniff", 7};
    if (code == REG_ERR_UNSUPPORTED) hdrs[nh++] = (struct http_header){"Allow", 5, "GET, HEAD", 9};
    for (size_t i = 0; i < n_extra && nh < RESPOND_HEADERS_MAX; i++)
        hdrs[nh++] = extra[i];
    if (status <= 0) status = registry_error_status(code);
    http_log_set_error(x, message);
    if (http_respond_full(x, status, hdrs, nh, body, (size_t)n) != 0) http_respond_abort(x);
}

void respond_error(struct http_exchange *x, enum registry_error_code code, const char *message,
                   const char *detail)
{
    respond_error_with(x, code, 0, NULL, 0, message, detail);
}
