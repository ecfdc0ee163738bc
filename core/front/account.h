/*
 * account.h: the front's own pull-only account at the origin (the contentcaches options
 * username and password), with which it fetches the blobs that caches ask for with a
 * grant (the cache has no credentials of the user's: the grant stands for them).
 *
 * Which Authorization goes with a pull of a repository: none without an account; with
 * one, "Basic <user:password>" when the origin takes Basic credentials, or, when its
 * /v2/ answers with a Bearer challenge (token auth), a token from its realm for
 * repository:<name>:pull, kept until 10 s before it expires (at most
 * ACCOUNT_TOKENS tokens, the least recently used dropped). Which of the two is learned
 * once, by a GET /v2/ with the Basic credentials, again after a failure.
 *
 * Several loops (workers): each loop has its own origin_account (its probe, its jobs),
 * and they keep their tokens in one struct account_tokens, under its mutex (held for a
 * lookup or a store, never across a callback), so a token one loop got serves every
 * loop. Two loops that miss the same repository at once may each ask the realm.
 *
 * No credential or token is logged. A function that returns an error never calls its
 * callback; callbacks come from the loop. Loop thread only, but for account_tokens.
 */
#ifndef CC_FRONT_ACCOUNT_H
#define CC_FRONT_ACCOUNT_H

#include <uv.h>

#include "net/upstream.h"

#define ACCOUNT_PENDING 1 /* origin_account_get: the callback will tell */
#define ACCOUNT_TOKENS 256

struct origin_account;
struct account_job;

/* err 0 with the Authorization value to send (NULL: none), valid during the call; or
 * -EACCES (the origin refused the account), -EIO (it could not be asked). */
typedef void (*account_cb)(void *arg, int err, const char *authorization);

/* The tokens the accounts of a process keep, for every loop; NULL: out of memory. Freed
 * after every account that uses it. */
struct account_tokens;
struct account_tokens *account_tokens_new(void);
void account_tokens_free(struct account_tokens *t);

/* username NULL: anonymous. Strings are copied; the pool and tokens must outlive the
 * object. */
struct origin_account *origin_account_new(uv_loop_t *loop, struct upstream_pool *pool,
                                          const char *origin_base, const char *username,
                                          const char *password, struct account_tokens *tokens);
/* No job may be pending. */
void origin_account_free(struct origin_account *a);

/*
 * The Authorization for pulling `repo`. Returns 0 with *now set (NULL: none; valid until
 * the next call), or ACCOUNT_PENDING: then cb comes from the loop unless
 * account_job_cancel(*job) comes first. A negative error otherwise.
 */
int origin_account_get(struct origin_account *a, const char *repo, const char **now, account_cb cb,
                       void *arg, struct account_job **job);

void account_job_cancel(struct account_job *job);

#endif
