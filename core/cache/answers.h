/*
 * answers.h: the origin's answers to "may this credential pull this repository", kept on
 * disk for the outage policy (policy.h, on_upstream_failure), as hashes only.
 *
 * An answer is a record of ANSWERS_RECORD bytes in one file,
 * <root>/docker/registry/v2/_content-cache/auth/answers, of ANSWERS_SLOTS slots (at most
 * 3 MiB, sparse until used): the SHA-256 over the length-prefixed origin, credential
 * (the client's whole Authorization value; "" for an anonymous client) and repository,
 * when the origin answered (Unix seconds, with a fraction) and whether it said yes (a
 * 2xx) or no (401 or 403, kept with that status). No credential, token or password is
 * ever written: only the hash, which opens nothing by itself.
 *
 * The slot of a key is fixed by its hash, so the file holds at most ANSWERS_SLOTS answers
 * and a newer answer of another key may take an older one's slot: that loses the older
 * answer (an unknown credential is never served), it never turns a refusal into a yes.
 * The answers of one key are written in the order they came (one writer on the thread
 * pool, a queue in between), so a refusal that came after a yes is the one on disk; the
 * queue is looked at first by a lookup.
 *
 * The challenge (WWW-Authenticate) of the origin's last 401 to a client without a
 * credential is kept beside it, per origin (challenge-<first 16 hex of the origin's
 * SHA-256>), so that during an outage a client is still told how to authenticate.
 *
 * answers_record and answers_challenge_record run on the loop and queue the write;
 * *_sync functions block (the thread pool). Errors are -errno.
 */
#ifndef CC_ANSWERS_H
#define CC_ANSWERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cache/store.h"

#define ANSWERS_SLOTS 65536
#define ANSWERS_RECORD 48
#define ANSWERS_CHALLENGE_MAX 512

struct answers;

/* The key of an answer: SHA-256 over origin, credential and repository, each
 * length-prefixed. */
void answers_key(const char *origin, const char *credential, size_t cred_len, const char *repo,
                 size_t repo_len, unsigned char key[32]);

/* Opens (creating) the answers file of the store: blocking, at start. NULL when it cannot
 * be opened (logged): answers are then not kept, and the outage policy sees none. */
struct answers *answers_open(uv_loop_t *loop, const struct store *st);

/* Waits for the writes queued (blocking, at shutdown) and frees. NULL is a no-op. */
void answers_close(struct answers *a);

/* The origin answered `status` for this key now: 2xx is a yes, 401 and 403 a no; other
 * statuses are not answers about the credential and are not kept. */
void answers_record(struct answers *a, const unsigned char key[32], int status);

/* The origin's 401 challenge for a client without a credential. */
void answers_challenge_record(struct answers *a, const char *origin, const char *challenge,
                              size_t len);

/*
 * The last answer for key: true with *status (200 for a yes, else 401 or 403) and *when
 * (Unix seconds). Looks at the queue first (loop thread), then reads the file: call it on
 * the thread pool with from_queue false after answers_lookup_queued said nothing.
 */
bool answers_lookup_queued(const struct answers *a, const unsigned char key[32], int *status,
                           double *when);
bool answers_lookup_sync(const struct answers *a, const unsigned char key[32], int *status,
                         double *when);

/* The challenge kept for origin, into buf (NUL-terminated); false when none. Blocking. */
bool answers_challenge_sync(const struct answers *a, const char *origin, char *buf, size_t len);

#endif
