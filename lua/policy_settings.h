/*
 * policy_settings.h: the part of the config that the policy engine keeps (internal to
 * lua/): copied from a struct config, so that the config may be freed or replaced, and
 * handed to policies as the table cache.config.
 */
#ifndef CC_POLICY_SETTINGS_H
#define CC_POLICY_SETTINGS_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;

/* What the engine keeps of the config: copied, so the config may be freed. */
struct policy_upstream {
    char *originhost;
    char **upstreamhosts;
    size_t n_upstreamhosts;
};

struct policy_field {
    char *key;
    char *value;
};

struct policy_settings {
    bool has_blobttl;
    uint64_t blobttl_ns;
    struct policy_upstream *upstreams;
    size_t n_upstreams;
    char *log_level;     /* NULL: "info" */
    char *log_formatter; /* NULL: "text" */
    struct policy_field *log_fields;
    size_t n_log_fields;
    char *storage_root; /* may be NULL */
    char *policydir;    /* the drop-in directory, or NULL */
};

/* Copies what the policies see of cfg (NULL: an empty config). NULL without memory. */
struct policy_settings *policy_settings_new(const struct config *cfg);

/* Frees the settings and every string in them; NULL is a no-op. */
void policy_settings_free(struct policy_settings *s);

/*
 * Pushes cache.config as a plain table: blobttl (seconds), upstreams ({index,
 * originhost, upstreamhosts} each), log ({level, formatter, fields}), storage_root,
 * policydir. `settings` is a struct policy_settings (the signature of
 * policy_vm_options.push_config). Raises a Lua error only when memory runs out.
 */
void policy_settings_push(lua_State *L, void *settings);

#endif
