/*
 * config.h: the Docker Registry config.yml (read with libyaml), as content-cache uses it.
 *
 * The keys read are those the README's "Configuration" lists: version,
 * log.{level,formatter,fields}, storage.filesystem.rootdirectory, storage.delete.enabled,
 * http.{addr,host,secret,draintimeout,headers,tls.{certificate,key,minimumtls},debug.addr},
 * auth.token.{realm,service,issuer,rootcertbundle}, and middleware.registry[] entries; the
 * entry named "downstream" carries our options (blobttl, upstreams, cas, and our
 * extensions policydir, diskbudget, upstreamtimeouts). Every other key is a warning that
 * names file:line, not an error.
 *
 * The same binary runs as the front (the registry side, before an origin registry) when
 * the entry is named "contentcaches" instead, with the options originhost (required),
 * cas, admins, username and password (both or neither), granttl (default 5m, from 1s to
 * 24h) and policydir. One file names one of the two: both is an error that names both
 * lines. The front's origin is kept as the one upstreams entry (upstreams[0], without
 * upstreamhosts), so that what relays to an upstream serves the front unchanged. Its
 * scalar options are overridden by REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_<OPTION>
 * (ORIGINHOST, USERNAME, PASSWORD, GRANTTL, POLICYDIR, and ADMINS as a comma-separated
 * list), the middleware named as OpenShift's registry names its own.
 *
 * Errors name "file:line:column: key: what was expected", the key as a dotted path
 * ("middleware.registry[0].options.blobttl"). Environment variables
 * REGISTRY_<SECTION>_<KEY> (upper case, '_' between levels) override scalar keys, as
 * Docker Registry does; an error in such a value names the variable instead of a line
 * ("REGISTRY_LOG_LEVEL: expected ..."). Overrides apply after the file is read and
 * before values are checked. A null or empty value (in the file or the environment)
 * leaves the key at its default.
 *
 * The file may use anchors and aliases; it may not hold more than one document, a key
 * twice in a map, nesting past 64 levels, or more than 1 MiB.
 */
#ifndef CC_CONFIG_H
#define CC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/log.h"
#include "base/url.h"

struct config_upstream {
    char *originhost;          /* as written, validated by url_parse */
    struct url origin;         /* parsed */
    char **upstreamhosts;      /* as written */
    struct url *upstream_urls; /* parsed, same order */
    size_t n_upstreamhosts;
};

struct config_header { /* http.headers: a name and its values */
    char *name;
    char **values;
    size_t n_values;
};

struct config {
    char *file; /* path the config was read from */

    char *log_level;     /* "error", "warn", "info" (default), "debug" ("warning" is
                            stored as "warn"), always lower case */
    char *log_formatter; /* "text" (default) or "json" ("logstash" is stored as "json",
                            with a warning) */
    struct log_field *log_fields;
    size_t n_log_fields;

    char *storage_root;  /* storage.filesystem.rootdirectory; default /var/lib/registry */
    bool delete_enabled; /* storage.delete.enabled */

    char *http_addr; /* default ":5000" */
    char *http_host;
    char *http_secret;
    uint64_t http_draintimeout_ns; /* default 0: do not wait for in-flight responses */
    struct config_header *http_headers;
    size_t n_http_headers;
    char *http_tls_certificate;
    char *http_tls_key;
    char *http_tls_minimumtls; /* "tls1.2" (default) or "tls1.3" */
    char *http_debug_addr;
    unsigned http_maxconnections; /* http.maxconnections (our extension): client connections
                                     the process holds at once, over every loop; 0: not
                                     set, CONFIG_MAXCONNECTIONS_DEFAULT */

    char *auth_token_realm; /* all four set, or none: auth.token */
    char *auth_token_service;
    char *auth_token_issuer;
    char *auth_token_rootcertbundle;

    bool has_downstream; /* a middleware.registry entry named downstream exists: true in
                            a config that parsed unless it is the front's
                            (has_contentcaches); n_upstreams >= 1 either way */
    bool has_blobttl;
    uint64_t blobttl_ns;
    struct config_upstream *upstreams;
    size_t n_upstreams;
    char **cas;
    size_t n_cas;
    char *policydir;               /* our extension: drop-in policy directory, absolute */
    bool has_budget;               /* our extension: diskbudget */
    uint64_t budget_bytes;         /* diskbudget.maxsize */
    unsigned budget_high_pct;      /* diskbudget.highwatermark, default 90 */
    unsigned budget_low_pct;       /* diskbudget.lowwatermark, default 80 */
    unsigned upstream_connect_ms;  /* upstreamtimeouts.connect (our extension); 0: 10 s */
    unsigned upstream_progress_ms; /* upstreamtimeouts.progress; 0: 30 s */
    unsigned upstream_head_ms;     /* upstreamtimeouts.head: to the final head; 0: 60 s */
    unsigned workers; /* workers (our extension, the cache's and the front's): loops that
                         serve, 1..CONFIG_WORKERS_MAX; 0: not set, one per CPU
                         (config_workers) */

    /* The front: a middleware.registry entry named contentcaches (then has_downstream is
     * false, and upstreams[0] is its originhost). */
    bool has_contentcaches;
    char **admins; /* user names that may register and remove caches */
    size_t n_admins;
    char *front_username; /* the front's pull-only account at the origin, or NULL */
    char *front_password;
    uint64_t granttl_ns; /* lifetime of a redirect grant: default 5 min */

    char **warnings; /* "file:line: key.path: not used by content-cache (ignored)",
                        "REGISTRY_X: environment variable not used ..." and the like;
                        at most 100, the last of them counting the rest */
    size_t n_warnings;
};

/*
 * Parses a config from memory. `filename` is used in messages only; `env` is a
 * NULL-terminated "NAME=value" array (environ, or a test's own), may be NULL.
 * Returns 0 and a new config in *out (free with config_free), or -EINVAL (-ENOMEM when
 * memory ran out) with *out NULL and a message in err (always NUL-terminated; err may
 * be NULL when errlen is 0). Any bytes are safe to pass; more than 1 MiB is refused.
 * Semantic checks (blobttl needs storage.delete.enabled, upstreams non-empty, URLs,
 * absolute cas paths) are made here; whether cas files are readable is checked by
 * config_check_files.
 */
int config_parse(const char *filename, const char *data, size_t len, char *const *env,
                 struct config **out, char *err, size_t errlen);

/*
 * Reads the file at `path` and calls config_parse. -errno when the file cannot be read,
 * -EFBIG when it is larger than 1 MiB; err says which.
 */
int config_load(const char *path, char *const *env, struct config **out, char *err, size_t errlen);

/*
 * Checks what needs the file system: every cas file, http.tls.certificate and
 * auth.token.rootcertbundle is readable and holds "-----BEGIN CERTIFICATE-----",
 * http.tls.key is readable and holds "-----BEGIN", policydir is a directory.
 * Returns 0 or -EINVAL with a message in err that names the key and the path.
 */
int config_check_files(const struct config *cfg, char *err, size_t errlen);

void config_free(struct config *cfg);

/*
 * Parses a size: a positive integer with an optional unit B, KB, MB, GB, TB (powers of
 * 1000) or KiB, MiB, GiB, TiB (powers of 1024). Returns 0, -EINVAL or -ERANGE.
 */
int config_parse_size(const char *text, uint64_t *bytes);

/*
 * Parses a duration as the downstream middleware's blobttl: a positive integer with an
 * optional suffix ns, us, ms, s, m, h; no suffix means nanoseconds. Zero, a sign,
 * fractions, spaces, unknown suffixes and values past UINT64_MAX ns are refused.
 * Returns 0 and the value in *ns, or -EINVAL (malformed) or -ERANGE (overflow, zero).
 */
int config_parse_duration(const char *text, uint64_t *ns);

/* Writes ns as the shortest exact duration config_parse_duration reads back ("24h",
 * "1500ms"), NUL-terminated, into buf. */
void config_format_duration(uint64_t ns, char *buf, size_t len);

/* Defaults and bounds of the front's granttl. */
/* workers: at most this many loops. */
#define CONFIG_WORKERS_MAX 64

/* http.maxconnections: its default, and the most it may be. */
#define CONFIG_MAXCONNECTIONS_DEFAULT 16384
#define CONFIG_MAXCONNECTIONS_MAX 1048576

/* The loops to run: cfg->workers, or when it is not set the CPUs this process may run
 * on (sched_getaffinity), at most CONFIG_WORKERS_MAX. */
unsigned config_workers(const struct config *cfg);

#define CONFIG_GRANTTL_DEFAULT_NS (300ULL * 1000000000ULL)
#define CONFIG_GRANTTL_MIN_NS (1000000000ULL)
#define CONFIG_GRANTTL_MAX_NS (86400ULL * 1000000000ULL)

/* The log section, as log_configure takes it (valid while cfg is). */
static inline struct log_options config_log_options(const struct config *cfg)
{
    return (struct log_options){cfg->log_level, cfg->log_formatter, cfg->log_fields,
                                cfg->n_log_fields};
}

#endif
