/*
 * jwt.h: auth_token_verify (auth.h) in its three steps, for token_check.c, which runs the
 * second one on the thread pool. Internal to access/.
 *
 *   jwt_check_begin       for the loop: all that needs no signature check (the frame, the
 *                         JOSE header, alg, crit, the key it names; an x5c chain parsed,
 *                         its keys bounded and its path to the bundle found, x5c.h) and
 *                         the hash of what was signed. Microseconds.
 *   jwt_check_signatures  for any thread: the signatures, with keys that step 1 bounded or
 *                         copies of the bundle's. Up to a few milliseconds.
 *   jwt_check_claims      for the loop: the claims of a token whose signature verified.
 *
 * Results and reasons are auth_token_verify's.
 */
#ifndef CC_JWT_H
#define CC_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "access/auth.h"

struct jwt_check; /* one token between the steps; owns everything step 2 reads of it */

/* Step 1 for header[0..len) at now_s. Returns 0 and *out (free with jwt_check_free), or
 * an error with the reason in why (*out NULL). */
int jwt_check_begin(const struct auth_verifier *v, const char *header, size_t len, int64_t now_s,
                    struct jwt_check **out, char *why, size_t why_len);

/* Step 2. Reads c and the verifier's bundle (its DER and key IDs, never its parsed keys),
 * writes only c: checks of different tokens may run on different threads at once. */
int jwt_check_signatures(const struct auth_verifier *v, struct jwt_check *c, char *why,
                         size_t why_len);

void jwt_check_free(struct jwt_check *c);

/* Step 3: header's claims grant `action` on repo at now_s. */
int jwt_check_claims(const struct auth_verifier *v, const char *header, size_t len,
                     const char *repo, size_t repo_len, const char *action, int64_t now_s,
                     char *why, size_t why_len);

/* The verifier keeps token_check.c's state (NULL until auth_token_verifier_attach) and
 * frees it with token_lane_free. */
struct token_lane;
struct token_lane **jwt_verifier_lane(struct auth_verifier *v);
void token_lane_free(struct token_lane *lane);

#endif
