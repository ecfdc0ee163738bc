/*
 * policies.c: the policy adapters. See policies.h.
 */
#include "app/policies.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "cache/links.h"

void policies_blob_table(const struct policies *p, const struct expire_blob *b,
                         struct policy_blob *pb, char digest[72], const char **repos,
                         size_t max_repos)
{
    snprintf(digest, 72, "sha256:%s", b->hex);
    *pb = (struct policy_blob){
        .digest = digest,
        .size = b->size,
        .last_pulled = b->last_pulled,
        .has_created = b->created > 0,
        .created = b->created,
        .has_pulls = true,
        .pulls = b->pulls + pulls_pending(p->pulls, b->hex),
        .repositories = repos,
        .n_repositories = links_index_find(b->links, b->hex, repos, max_repos),
    };
}

int policies_blob_ttl(void *policies, const struct expire_blob *b, double *ttl_s)
{
    const struct policies *p = policies;
    const char *repos[POLICY_BLOB_MAX_REPOSITORIES];
    struct policy_blob pb;
    char digest[72];
    bool has_ttl;
    policies_blob_table(p, b, &pb, digest, repos, POLICY_BLOB_MAX_REPOSITORIES);
    int rc = policy_blob_ttl(p->pe, &pb, &has_ttl, ttl_s);
    if (rc != 0) return rc;
    return has_ttl ? 1 : 0;
}

long policies_evict(void *policies, const budget_blob *cands, size_t n, uint64_t bytes_needed,
                    size_t *victims, size_t max_victims)
{
    const struct policies *p = policies;
    struct policy_blob *pb = calloc(n ? n : 1, sizeof(*pb));
    char(*digests)[72] = calloc(n ? n : 1, sizeof(*digests));
    const char **repos = calloc(n ? n : 1, 8 * sizeof(*repos));
    if (pb == NULL || digests == NULL || repos == NULL) {
        free(pb);
        free(digests);
        free(repos);
        return -ENOMEM;
    }
    /* Eight repositories per candidate: enough for a policy's choice among thousands. */
    for (size_t i = 0; i < n; i++)
        policies_blob_table(p, &cands[i], &pb[i], digests[i], repos + 8 * i, 8);
    size_t *chosen = NULL, n_chosen = 0;
    int rc = policy_evict(p->pe, pb, n, bytes_needed, &chosen, &n_chosen);
    free(pb);
    free(digests);
    free(repos);
    if (rc != 0) return rc;
    long k = 0;
    for (size_t i = 0; i < n_chosen && (size_t)k < max_victims; i++)
        victims[k++] = chosen[i];
    free(chosen);
    return k;
}

bool policies_admit(void *policies, const char *digest, int64_t size,
                    const struct policy_request *req)
{
    const struct policies *p = policies;
    const char *repos[1] = {req->repository};
    struct policy_blob pb = {
        .digest = digest,
        .size_unknown = size < 0,
        .size = size >= 0 ? (uint64_t)size : 0,
        .repositories = repos,
        .n_repositories = req->repository != NULL,
    };
    bool store = true;
    policy_admit(p->pe, &pb, req, &store);
    return store;
}

bool policies_on_upstream_failure(void *policies, const struct policy_request *req,
                                  const struct policy_outage *known)
{
    const struct policies *p = policies;
    bool serve = false;
    policy_on_upstream_failure(p->pe, req, known, &serve);
    return serve;
}

bool policies_expiry_needed(const struct policy_engine *pe, const struct config *cfg)
{
    return cfg->has_blobttl || (policy_has_hook(pe, POLICY_HOOK_BLOB_TTL) &&
                                !policy_hook_is_shipped(pe, POLICY_HOOK_BLOB_TTL));
}
