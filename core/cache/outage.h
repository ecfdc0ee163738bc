/*
 * outage.h: what the cache answers from what it holds when every upstream of a request
 * failed (refused, timed out, 5xx): the outage policy's question and the rules around it.
 *
 * A handler (blob.c, manifest.c, the /v2/ fallback) gathers what it holds into a struct
 * policy_outage (policy.h: the tag's last digest and age, whether the manifest or blob is
 * stored and linked in the repository), on the thread pool; the origin's last answer for
 * the client's credential comes from answers.h (outage_auth_*). Then outage_decide, on the
 * loop, asks the on_upstream_failure policy and applies what no policy can change:
 *
 *   - a credential the origin refused (its last answer was 401 or 403) is refused again,
 *     with that status and the origin's challenge; so is one the origin never answered,
 *     unless auth.token verified it here;
 *   - what is not stored, or not linked in the repository, is never served;
 *   - otherwise the policy decides; an error in it (or no policy) serves nothing.
 *
 * A response served this way says so in the access log (stale=true, stale_age) and in
 * content_cache_stale_responses_total{kind}. Everything runs on the loop but *_sync.
 */
#ifndef CC_OUTAGE_H
#define CC_OUTAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "base/metrics.h"
#include "cache/answers.h"
#include "lua/policy.h"

/* The on_upstream_failure policy: true to serve what is held. */
typedef bool (*outage_policy_fn)(void *ud, const struct policy_request *req,
                                 const struct policy_outage *known);

struct outage;

/* answers may be NULL (no answer is known then). NULL without memory. */
struct outage *outage_new(struct answers *answers, outage_policy_fn policy, void *ud);
void outage_free(struct outage *o);

/* The client's credential and repository, for outage_auth_*: its answer key. */
struct outage_auth {
    unsigned char key[32];
    bool token_verified; /* auth.token verified the credential here, now */
    bool found;          /* the origin's last answer is known: */
    int status;          /* 200, 401 or 403 */
    double when;         /* Unix seconds */
};

/* Fills a->key from the origin, credential and repository (loop). */
void outage_auth_init(struct outage_auth *a, const char *origin, const char *credential,
                      size_t cred_len, const char *repo, size_t repo_len, bool token_verified);
/* Looks for the answer among those still queued (loop): true when found. */
bool outage_auth_queued(const struct outage *o, struct outage_auth *a);
/* Reads it from disk (thread pool), unless already found. */
void outage_auth_sync(const struct outage *o, struct outage_auth *a);

enum outage_answer {
    OUTAGE_FAIL,   /* answer the upstream's failure (503 UNAVAILABLE naming it, or 502) */
    OUTAGE_SERVE,  /* serve what is held: stale=true, *age_s old */
    OUTAGE_REFUSE, /* refuse the credential: *status (401 or 403) with the challenge */
};

/*
 * The decision for req (kind "base", "manifest" or "blob"), with known filled by the
 * handler (its auth part is filled here from a) and `held`: whether what would be served
 * is stored and linked in the repository (always true for "base"). now: Unix seconds.
 */
enum outage_answer outage_decide(struct outage *o, const struct policy_request *req,
                                 struct policy_outage *known, const struct outage_auth *a,
                                 bool held, double now, uint64_t *age_s, int *status);

/* A response was served stale (counted by kind). */
void outage_count_stale(struct outage *o, const char *kind);

/* A metrics_render_fn over a struct outage: stale responses by kind. */
void outage_render_metrics(const void *outage, struct textbuf *out);

#endif
