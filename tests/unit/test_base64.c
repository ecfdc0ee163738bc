/*
 * test_base64.c: strict base64 (core/base/base64.c): the RFC 4648 vectors both ways, in
 * both alphabets, one encoding per byte string, and a round trip of every length.
 */
#include <errno.h>
#include <stdlib.h>

#include "check.h"
#include "base/base64.h"

static void test_vectors(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const std[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const url[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    char out[32];
    unsigned char dec[32];
    size_t n;
    for (size_t i = 0; i < 7; i++) {
        CHECK_INT(base64_encode((const unsigned char *)plain[i], strlen(plain[i]), false, out,
                                sizeof(out)),
                  (int)strlen(std[i]));
        CHECK_STR(out, std[i]);
        CHECK_INT(base64_encode((const unsigned char *)plain[i], strlen(plain[i]), true, out,
                                sizeof(out)),
                  (int)strlen(url[i]));
        CHECK_STR(out, url[i]);
        CHECK_INT(base64_decode(std[i], strlen(std[i]), false, dec, &n), 0);
        CHECK(n == strlen(plain[i]) && memcmp(dec, plain[i], n) == 0);
        CHECK_INT(base64_decode(url[i], strlen(url[i]), true, dec, &n), 0);
        CHECK(n == strlen(plain[i]) && memcmp(dec, plain[i], n) == 0);
    }
    /* The other alphabet, a second encoding of the same bytes, bad lengths. */
    unsigned char ff[2] = {0xfb, 0xff};
    CHECK_INT(base64_encode(ff, 2, false, out, sizeof(out)), 4);
    CHECK_STR(out, "+/8=");
    CHECK_INT(base64_encode(ff, 2, true, out, sizeof(out)), 3);
    CHECK_STR(out, "-_8");
    CHECK_INT(base64_decode("-_8", 3, false, dec, &n), -EINVAL);
    CHECK_INT(base64_decode("+/8=", 4, true, dec, &n), -EINVAL);
    CHECK_INT(base64_decode("Zh", 2, true, dec, &n), -EINVAL); /* bits left over */
    CHECK_INT(base64_decode("Z", 1, true, dec, &n), -EINVAL);
    CHECK_INT(base64_decode("Zg=", 3, false, dec, &n), -EINVAL);
    CHECK_INT(base64_encode(ff, 2, false, out, 4), -ENOSPC);
}

static void test_round_trip(void)
{
    unsigned char in[300], dec[300];
    char enc[500];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (unsigned char)(i * 37 + 11);
    for (size_t len = 0; len <= sizeof(in); len++) {
        for (int u = 0; u <= 1; u++) {
            int n = base64_encode(in, len, u, enc, sizeof(enc));
            CHECK(n == (int)base64_encoded_len(len, u));
            size_t m = 0;
            CHECK_INT(base64_decode(enc, (size_t)n, u, dec, &m), 0);
            CHECK(m == len && memcmp(dec, in, len) == 0);
        }
    }
}

int main(void)
{
    RUN(test_vectors);
    RUN(test_round_trip);
    return check_summary();
}
