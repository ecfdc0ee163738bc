/*
 * harness.c: the report of a broken promise, and the targets' temporary directories. See
 * harness.h.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <sanitizer/common_interface_defs.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void harness_fail(const char *file, int line, const char *what)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "broken promise: %s (%s:%d)", what, file, line);
    __sanitizer_report_error_summary(msg); /* (stderr, unless libFuzzer moved it) */
    abort();
}

static char tmpdir_made[4096];

static void rm_rf(const char *path)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "harness: could not remove %s\n", path);
}

static void remove_tmpdir(void)
{
    rm_rf(tmpdir_made);
}

void harness_tmpdir(const char *name, char *out, size_t len)
{
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "cc-fuzz-%s-", name);
    DIR *d = opendir(base);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        long pid = strtol(e->d_name + strlen(prefix), NULL, 10);
        if (pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
            char old[4096];
            snprintf(old, sizeof(old), "%s/%s", base, e->d_name);
            rm_rf(old);
        }
    }
    if (d != NULL) closedir(d);
    int n = snprintf(out, len, "%s/%s%d", base, prefix, (int)getpid());
    HARNESS_REQUIRE(n > 0 && (size_t)n < len && (size_t)n < sizeof(tmpdir_made),
                    "a temporary directory name");
    HARNESS_REQUIRE(mkdir(out, 0700) == 0 || errno == EEXIST, "a temporary directory");
    if (tmpdir_made[0] == '\0') atexit(remove_tmpdir);
    memcpy(tmpdir_made, out, (size_t)n + 1);
}
