"""End-to-end: the front's configuration (issue 18, step 1).

A config.yml whose middleware.registry names `contentcaches` makes the same binary the
front: `--check` validates it and prints the front's settings (never the password), a
file with both `downstream` and `contentcaches` is refused naming both lines, the
REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_* variables override the options, and
`content-cache CONFIG` serves whichever mode the file names: the front relays the
registry API of a real origin.

Run alone: CC_BINARY=build/content-cache python3 tests/e2e/test_front_config.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import expect, expect_eq  # noqa: E402
from e2e_front import front, Front  # noqa: E402

REPO = "org/app"


def body(run):
    work = run.work
    origin = run.origin()
    image = h.make_oci_layout(work.sub("layout"), h.random_layers([3000, 5000], seed=18),
                              tag="1")
    h.push(work, image, origin, REPO, "1")

    def check_prints_front():
        f = Front(work, origin, name="checked", admins=["admin", "ops"],
                  account=("cache-reader", "s3cret-pw"), granttl="90s")
        path = f.write_config()
        r = f.run_binary(["--check", path])
        expect_eq(r.returncode, 0, "exit code of --check (stderr %r)" % r.stderr)
        for line in ("mode:          front (contentcaches)",
                     "origin:        %s" % origin.url,
                     "admins:        admin, ops",
                     "account:       cache-reader (password set)",
                     "grant ttl:     90s",
                     "workers:       %d loop" % h.DEFAULT_WORKERS):
            expect(line in r.stdout, "--check prints %r; it printed:\n%s" % (line, r.stdout))
        expect("s3cret-pw" not in r.stdout + r.stderr, "--check never prints the password")

    run.check("--check validates a contentcaches config and prints the front's settings, "
              "never the password", check_prints_front)

    def both_is_an_error():
        f = Front(work, origin, name="both", workers=0,  # (no workers line: line numbers)
                  extra_options="    - name: downstream\n      options:\n        upstreams:\n"
                                "          - originhost: %s\n" % origin.url)
        path = f.write_config()
        r = f.run_binary(["--check", path])
        expect_eq(r.returncode, 1, "exit code of --check")
        expect("a contentcaches middleware (line 11) and a downstream middleware (line 15) "
               "in one file" in r.stderr, "the error names both lines: %r" % r.stderr)
        r = f.run_binary([path])
        expect_eq(r.returncode, 1, "exit code of serving it")

    run.check("a file with both downstream and contentcaches is refused, naming both lines",
              both_is_an_error)

    def env_overrides():
        f = Front(work, "http://unused.invalid:5000", name="env",
                  env={"REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_ORIGINHOST": origin.url,
                       "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_USERNAME": "reader",
                       "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_PASSWORD": "from-env",
                       "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_GRANTTL": "2m"})
        path = f.write_config()
        r = f.run_binary(["--check", path])
        expect_eq(r.returncode, 0, "exit code of --check (stderr %r)" % r.stderr)
        expect("origin:        %s" % origin.url in r.stdout, "the origin from the environment")
        expect("grant ttl:     2m" in r.stdout, "the grant TTL from the environment")
        expect("account:       reader (password set)" in r.stdout, "the account")

    run.check("REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_* override the front's options",
              env_overrides)

    def serves_the_front():
        f = front(run, origin)
        r = h.request(f.port, "GET", "/v2/")
        h.expect_status(r, 200)
        expect_eq(r.header(h.API_VERSION_HEADER), h.API_VERSION, "API version header")
        out = work.sub("pulled", mkdir=True)
        h.pull(work, f, REPO, "1", out)
        h.verify_pulled(out, image)
        expect("front for origin %s" % origin.url in f.stderr_text(),
               "the front says what it stands before")

    run.check("`content-cache CONFIG` with contentcaches runs the front, which relays pulls",
              serves_the_front)


if __name__ == "__main__":
    h.main("front_config", body)
