/*
 * outage.c: answering from what is held while the upstreams fail. See outage.h.
 */
#include "cache/outage.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"

struct outage {
    struct answers *answers;
    outage_policy_fn policy;
    void *ud;
    uint64_t stale_base, stale_manifest, stale_blob;
};

struct outage *outage_new(struct answers *answers, outage_policy_fn policy, void *ud)
{
    struct outage *o = calloc(1, sizeof(*o));
    if (o == NULL) return NULL;
    o->answers = answers;
    o->policy = policy;
    o->ud = ud;
    return o;
}

void outage_free(struct outage *o)
{
    free(o);
}

void outage_auth_init(struct outage_auth *a, const char *origin, const char *credential,
                      size_t cred_len, const char *repo, size_t repo_len, bool token_verified)
{
    memset(a, 0, sizeof(*a));
    answers_key(origin, credential, cred_len, repo, repo_len, a->key);
    a->token_verified = token_verified;
}

bool outage_auth_queued(const struct outage *o, struct outage_auth *a)
{
    a->found = answers_lookup_queued(o->answers, a->key, &a->status, &a->when);
    return a->found;
}

void outage_auth_sync(const struct outage *o, struct outage_auth *a)
{
    if (!a->found) a->found = answers_lookup_sync(o->answers, a->key, &a->status, &a->when);
}

enum outage_answer outage_decide(struct outage *o, const struct policy_request *req,
                                 struct policy_outage *known, const struct outage_auth *a,
                                 bool held, double now, uint64_t *age_s, int *status)
{
    bool base = req->kind != NULL && strcmp(req->kind, "base") == 0;
    double age = 0;
    *age_s = 0;
    *status = 0;
    known->has_auth = a->token_verified || a->found;
    known->auth_verified_here = a->token_verified;
    known->auth_allowed = a->token_verified || (a->found && a->status == 200);
    known->auth_age = a->token_verified ? 0 : (a->found && now > a->when ? now - a->when : 0);
    /* What no policy can change. A refusal is the origin's, again. */
    if (!base && !a->token_verified && a->found && a->status != 200) {
        *status = a->status;
        return OUTAGE_REFUSE;
    }
    if (!base && (!known->has_auth || !held)) return OUTAGE_FAIL;
    bool serve = o->policy != NULL && o->policy(o->ud, req, known);
    if (!serve) return OUTAGE_FAIL;
    if (!base) age = known->auth_age;
    if (known->has_tag && known->tag_age > age) age = known->tag_age;
    *age_s = age > 0 ? (uint64_t)age : 0;
    return OUTAGE_SERVE;
}

void outage_count_stale(struct outage *o, const char *kind)
{
    if (strcmp(kind, "base") == 0)
        o->stale_base++;
    else if (strcmp(kind, "manifest") == 0)
        o->stale_manifest++;
    else
        o->stale_blob++;
}

void outage_render_metrics(const void *outage, struct textbuf *out)
{
    const struct outage *o = outage;
    static const char name[] = "content_cache_stale_responses_total";
    metrics_help(out, name, "counter",
                 "Responses served from what the cache held while every upstream failed (the "
                 "on_upstream_failure policy), by kind.");
    metrics_labelled(out, name, "kind", "base", o->stale_base);
    metrics_labelled(out, name, "kind", "manifest", o->stale_manifest);
    metrics_labelled(out, name, "kind", "blob", o->stale_blob);
}
