/*
 * warm_cmd.h: `content-cache warm CONFIG IMAGE... [options]`, the command that warms a
 * store before a rollout (the engine is cache/warm.h), and the credentials it reads.
 *
 * Options (each also as --name=value):
 *   --platform P[,P...]   only these platforms of an index (os/arch[/variant]); repeatable
 *   --jobs N              blobs fetched at once (1..64, default 4)
 *   --creds USER:PASS     credentials for the registry of the references given (all
 *                         for one upstreams entry, or the command line is wrong)
 *   --creds-file FILE     the same, from the first line of FILE
 *   --authfile FILE       a Docker config.json whose `auths` give each registry its own
 *                         (default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json,
 *                         when it exists)
 *   --json                a JSON summary on stdout instead of lines
 *
 * Credentials are only sent to the registry they are for, and never printed. Output: on a
 * terminal, a line per reference redrawn as it moves (blobs, bytes, rate); otherwise a
 * line per reference when it ends. Exit codes: WARM_EXIT_*.
 */
#ifndef CC_WARM_CMD_H
#define CC_WARM_CMD_H

#include <stdbool.h>
#include <stddef.h>

#include "base/config.h"
#include "cache/warm.h"

enum warm_exit {
    WARM_EXIT_OK = 0,      /* every reference warmed */
    WARM_EXIT_FAILED = 1,  /* some reference failed (each is named, with its reason), or
                              the warm was interrupted (SIGINT, SIGTERM) */
    WARM_EXIT_USAGE = 2,   /* the command line is wrong */
    WARM_EXIT_RUNTIME = 3, /* the storage root is not usable */
};

struct warm_cmd_args {
    const char *config;
    const char *images[WARM_MAX_IMAGES];
    size_t n_images;
    char platforms_buf[1024]; /* the --platform values, split in place */
    const char *platforms[WARM_MAX_PLATFORMS];
    size_t n_platforms;
    unsigned jobs;
    const char *creds, *creds_file, *authfile;
    bool json;
};

/* The lines of the usage text about `warm` (main.c's usage includes them). */
extern const char warm_cmd_usage[];

/*
 * Reads argv[2..argc) (argv[1] is "warm"). Returns 0, or -EINVAL with a sentence in why
 * (the command line is wrong: exit WARM_EXIT_USAGE).
 */
int warm_cmd_parse(int argc, char **argv, struct warm_cmd_args *a, char *why, size_t why_len);

/*
 * Runs the warm with cfg (loaded and checked by the caller; policies from
 * builtin_policies, which may be NULL) and prints as described above. Returns a
 * warm_exit code (1 also for a config whose policies do not load, as for serving).
 */
int warm_cmd_run(const struct config *cfg, const struct warm_cmd_args *a,
                 const char *builtin_policies);

#endif
