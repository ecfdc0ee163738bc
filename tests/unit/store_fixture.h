/*
 * store_fixture.h: a store on a fresh temporary root for the unit tests of the modules
 * that keep data in it (links, pulls, answers), and its removal. Include after check.h.
 */
#ifndef CC_STORE_FIXTURE_H
#define CC_STORE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/store.h"

/* Makes /tmp/cc-<name>-XXXXXX into root (at least 64 bytes) and opens a store on it. */
static inline struct store *fixture_store_open(char *root, const char *name)
{
    struct store *st = NULL;
    char err[256];
    snprintf(root, 64, "/tmp/cc-%s-XXXXXX", name);
    CHECK(mkdtemp(root) != NULL);
    CHECK_INT(store_open(root, &st, NULL, err, sizeof(err)), 0);
    return st;
}

/* Puts a data file for blob `hex` where the store keeps it (its bytes are not its digest:
 * for modules that only look whether a blob is stored). */
static inline void fixture_blob_put(const char *root, const char *hex)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "mkdir -p '%s/docker/registry/v2/blobs/sha256/%.2s/%s' && "
             "echo x > '%s/docker/registry/v2/blobs/sha256/%.2s/%s/data'",
             root, hex, hex, root, hex, hex);
    CHECK(system(cmd) == 0);
}

static inline void fixture_rm_rf(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    CHECK(system(cmd) == 0);
}

#endif
