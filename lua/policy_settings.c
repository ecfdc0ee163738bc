/*
 * policy_settings.c: the config as the policy engine keeps it, and as cache.config.
 */
#include "lua/policy_settings.h"

#include <stdlib.h>
#include <string.h>

#include "base/config.h"

void policy_settings_free(struct policy_settings *s)
{
    if (s == NULL) return;
    for (size_t i = 0; i < s->n_upstreams; i++) {
        free(s->upstreams[i].originhost);
        for (size_t j = 0; j < s->upstreams[i].n_upstreamhosts; j++)
            free(s->upstreams[i].upstreamhosts[j]);
        free(s->upstreams[i].upstreamhosts);
    }
    free(s->upstreams);
    for (size_t i = 0; i < s->n_log_fields; i++) {
        free(s->log_fields[i].key);
        free(s->log_fields[i].value);
    }
    free(s->log_fields);
    free(s->log_level);
    free(s->log_formatter);
    free(s->storage_root);
    free(s->policydir);
    free(s);
}

/* strdup that maps NULL to NULL and sets *failed when memory runs out. */
static char *copy_string(const char *text, bool *failed)
{
    char *copy;

    if (text == NULL) return NULL;
    if ((copy = strdup(text)) == NULL) *failed = true;
    return copy;
}

struct policy_settings *policy_settings_new(const struct config *cfg)
{
    struct policy_settings *s = calloc(1, sizeof *s);
    bool failed = false;

    if (s == NULL) return NULL;
    if (cfg == NULL) return s;
    s->has_blobttl = cfg->has_blobttl;
    s->blobttl_ns = cfg->blobttl_ns;
    s->log_level = copy_string(cfg->log_level, &failed);
    s->log_formatter = copy_string(cfg->log_formatter, &failed);
    s->storage_root = copy_string(cfg->storage_root, &failed);
    s->policydir = copy_string(cfg->policydir, &failed);
    if (cfg->n_upstreams && !(s->upstreams = calloc(cfg->n_upstreams, sizeof *s->upstreams)))
        goto nomem;
    s->n_upstreams = cfg->n_upstreams;
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const struct config_upstream *from = &cfg->upstreams[i];
        struct policy_upstream *to = &s->upstreams[i];
        to->originhost = copy_string(from->originhost, &failed);
        if (from->n_upstreamhosts &&
            !(to->upstreamhosts = calloc(from->n_upstreamhosts, sizeof *to->upstreamhosts)))
            goto nomem;
        to->n_upstreamhosts = from->n_upstreamhosts;
        for (size_t j = 0; j < from->n_upstreamhosts; j++)
            to->upstreamhosts[j] = copy_string(from->upstreamhosts[j], &failed);
    }
    if (cfg->n_log_fields && !(s->log_fields = calloc(cfg->n_log_fields, sizeof *s->log_fields)))
        goto nomem;
    s->n_log_fields = cfg->n_log_fields;
    for (size_t i = 0; i < cfg->n_log_fields; i++) {
        s->log_fields[i].key =
            copy_string(cfg->log_fields[i].key ? cfg->log_fields[i].key : "", &failed);
        s->log_fields[i].value = copy_string(cfg->log_fields[i].value, &failed);
    }
    if (!failed) return s;
nomem:
    policy_settings_free(s);
    return NULL;
}

static void push_string_field(lua_State *L, const char *key, const char *value)
{
    if (value == NULL) return;
    lua_pushstring(L, value);
    lua_setfield(L, -2, key);
}

void policy_settings_push(lua_State *L, void *settings)
{
    const struct policy_settings *s = settings;

    lua_createtable(L, 0, 6);
    if (s->has_blobttl) {
        if (s->blobttl_ns % 1000000000u == 0)
            lua_pushinteger(L, (lua_Integer)(s->blobttl_ns / 1000000000u));
        else
            lua_pushnumber(L, (double)s->blobttl_ns / 1e9);
        lua_setfield(L, -2, "blobttl");
    }

    lua_createtable(L, (int)s->n_upstreams, 0);
    for (size_t i = 0; i < s->n_upstreams; i++) {
        const struct policy_upstream *u = &s->upstreams[i];
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, (lua_Integer)i + 1);
        lua_setfield(L, -2, "index");
        push_string_field(L, "originhost", u->originhost);
        lua_createtable(L, (int)u->n_upstreamhosts, 0);
        for (size_t j = 0; j < u->n_upstreamhosts; j++) {
            lua_pushstring(L, u->upstreamhosts[j]);
            lua_rawseti(L, -2, (lua_Integer)j + 1);
        }
        lua_setfield(L, -2, "upstreamhosts");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "upstreams");

    lua_createtable(L, 0, 3);
    push_string_field(L, "level", s->log_level ? s->log_level : "info");
    push_string_field(L, "formatter", s->log_formatter ? s->log_formatter : "text");
    lua_createtable(L, (int)s->n_log_fields, 0);
    for (size_t i = 0; i < s->n_log_fields; i++) {
        lua_createtable(L, 0, 2);
        push_string_field(L, "key", s->log_fields[i].key);
        push_string_field(L, "value", s->log_fields[i].value ? s->log_fields[i].value : "");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "fields");
    lua_setfield(L, -2, "log");

    push_string_field(L, "storage_root", s->storage_root);
    push_string_field(L, "policydir", s->policydir);
}
