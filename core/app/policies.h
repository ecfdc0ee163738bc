/*
 * policies.h: the policy adapters: the callbacks through which the cache's modules ask
 * the policy engine (lua/policy.h), and the tables they hand the hooks.
 *
 *   blob_ttl   expiry (expire.h): a stored blob's table from the store (links.h for its
 *              repositories, pulls.h for its pulls, the data file's times)
 *   evict      the disk budget (budget.h): the candidates' tables, the same way
 *   admit      a fetch about to start (blob.h)
 *   (format_log, every access-log line, is process_format_access in process.h: the C
 *              twin while the hook in force is the shipped one byte for byte)
 *
 * When a hook is missing or fails (the engine logs and counts it), each falls back to a
 * plain last resort, not a copy of the default policy: the configured blobttl, least
 * recently pulled first, store, the C access line.
 *
 * Everything runs on the loop thread (or in a command). The engine and the pull counter
 * must outlive the adapters.
 */
#ifndef CC_POLICIES_H
#define CC_POLICIES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/config.h"
#include "base/log.h"
#include "cache/budget.h"
#include "cache/expire.h"
#include "cache/pulls.h"
#include "lua/policy.h"

struct policies {
    struct policy_engine *pe;
    struct pulls *pulls; /* counts not yet on disk are added to blob.pulls; may be NULL */
};

/* Fills pb (and its digest and repositories, which must outlive it) from a listed blob. */
void policies_blob_table(const struct policies *p, const struct expire_blob *b,
                         struct policy_blob *pb, char digest[72], const char **repos,
                         size_t max_repos);

/* An expire_ttl_fn: 1 with a TTL, 0 to keep, -ENOENT or an error for the default. */
int policies_blob_ttl(void *policies, const struct expire_blob *b, double *ttl_s);

/* A budget_evict_fn. */
long policies_evict(void *policies, const budget_blob *cands, size_t n, uint64_t bytes_needed,
                    size_t *victims, size_t max_victims);

/* A blob_admit_fn. */
bool policies_admit(void *policies, const char *digest, int64_t size,
                    const struct policy_request *req);

/* An outage_policy_fn: the on_upstream_failure policy (false when it fails). */
bool policies_on_upstream_failure(void *policies, const struct policy_request *req,
                                  const struct policy_outage *known);

/*
 * Whether expiry has anything to do: a blobttl is configured, or the blob_ttl in force is
 * not the shipped one (a drop-in or an edited default may give TTLs without a blobttl;
 * the shipped one gives none then, so no sweep runs for it).
 */
bool policies_expiry_needed(const struct policy_engine *pe, const struct config *cfg);

#endif
