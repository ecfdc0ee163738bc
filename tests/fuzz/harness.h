/*
 * harness.h: what every fuzz target shares.
 *
 * HARNESS_REQUIRE(cond, what) checks a promise of the code under test (or of the
 * harness): when cond is false it reports "broken promise: <what>" and aborts, which
 * libFuzzer records as a crash with the input. The report goes to stderr and to the
 * sanitizers' report descriptor, so it is seen also when the target's own output is
 * discarded (-close_fd_mask=3, which tests/fuzz/run.sh uses).
 */
#ifndef CC_FUZZ_HARNESS_H
#define CC_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

/* The entry point libFuzzer calls with each input; every target defines it. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HARNESS_REQUIRE(cond, what)                                                                \
    do {                                                                                           \
        if (!(cond)) harness_fail(__FILE__, __LINE__, (what));                                     \
    } while (0)

/* The same, unconditionally: the harness itself cannot go on. */
#define HARNESS_FAIL(what) harness_fail(__FILE__, __LINE__, (what))

__attribute__((noreturn)) void harness_fail(const char *file, int line, const char *what);

/*
 * Creates the directory $TMPDIR/cc-fuzz-<name>-<pid> (TMPDIR unset: /tmp) for the
 * target's files and writes its path into out. It is removed when the process exits
 * normally; those of earlier processes that are gone (a crash skips the clean-up) are
 * removed first. Fails the harness when it cannot be made.
 */
void harness_tmpdir(const char *name, char *out, size_t len);

#endif
