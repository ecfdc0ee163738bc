/*
 * page.c: the profile page's files, from the build (generated/front_ui.c). See page.h.
 */
#include "front/page.h"

#include <string.h>

#include "registry/respond.h"

/* cmake/embed.cmake's arrays: the files of core/front/ui/. */
extern const unsigned char front_ui_index_html[], front_ui_app_js[], front_ui_app_css[];
extern const size_t front_ui_index_html_len, front_ui_app_js_len, front_ui_app_css_len;

static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                          "base-uri 'none'";

struct ui_file {
    const char *path;
    const char *type;
    const unsigned char *data;
    const size_t *len;
};

static const struct ui_file files[] = {
    {"/", "text/html; charset=utf-8", front_ui_index_html, &front_ui_index_html_len},
    {"/index.html", "text/html; charset=utf-8", front_ui_index_html, &front_ui_index_html_len},
    {"/ui/app.js", "text/javascript; charset=utf-8", front_ui_app_js, &front_ui_app_js_len},
    {"/ui/app.css", "text/css; charset=utf-8", front_ui_app_css, &front_ui_app_css_len},
};

static const struct ui_file *file_of(const char *path, size_t len)
{
    for (size_t i = 0; i < sizeof(files) / sizeof(*files); i++)
        if (strlen(files[i].path) == len && memcmp(files[i].path, path, len) == 0) return &files[i];
    return NULL;
}

bool page_path(const char *path, size_t len)
{
    return file_of(path, len) != NULL;
}

void page_handle(struct http_exchange *x)
{
    size_t len;
    const char *path = http_req_path(x, &len);
    const struct ui_file *f = file_of(path, len);
    if (f == NULL) {
        respond_error(x, REG_ERR_NOT_FOUND, "not found", NULL);
        return;
    }
    if (!http_req_is_get(x) && !http_req_is_head(x)) {
        http_respond_add_header(x, "Allow", "GET, HEAD");
        respond_error(x, REG_ERR_UNSUPPORTED, "the page is read only", NULL);
        return;
    }
    struct http_header h[5] = {
        {"Content-Type", 12, f->type, strlen(f->type)},
        {"Content-Security-Policy", 23, csp, sizeof(csp) - 1},
        {"X-Content-Type-Options", 22, "nosniff", 7},
        {"Referrer-Policy", 15, "no-referrer", 11},
        {"Cache-Control", 13, "no-cache", 8},
    };
    if (http_respond_full(x, 200, h, 5, (const char *)f->data, *f->len) != 0) http_respond_abort(x);
}
