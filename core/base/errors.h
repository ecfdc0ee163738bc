/*
 * errors.h: the one error convention of content-cache.
 *
 * A function that can fail returns 0 (or a size, count or index >= 0) on success and a
 * negative errno value on failure: -ENOENT, -ENOSPC, -EINVAL. Never a positive errno,
 * never -1 for "some error", never errno alone.
 *
 * libuv's UV_E* codes are negative errno values on this platform (UV_ENOENT is -ENOENT),
 * so an error from libuv is passed on as it is, and the two spellings compare equal.
 * Spelling: modules that sit on libuv (core/net, the parts of core/cache that run on the
 * loop) write UV_E*; modules that wrap plain system calls or parse bytes write -E*. The
 * assertions below make the equivalence a build failure, not an assumption.
 *
 * A function that takes a callback and fails never calls the callback; each header says
 * so where it applies.
 */
#ifndef CC_ERRORS_H
#define CC_ERRORS_H

#include <errno.h>
#include <uv.h>

_Static_assert(UV_ENOENT == -ENOENT, "libuv error codes must be negative errno values");
_Static_assert(UV_EINVAL == -EINVAL, "libuv error codes must be negative errno values");
_Static_assert(UV_ENOMEM == -ENOMEM, "libuv error codes must be negative errno values");
_Static_assert(UV_ENOSPC == -ENOSPC, "libuv error codes must be negative errno values");
_Static_assert(UV_EAGAIN == -EAGAIN, "libuv error codes must be negative errno values");
_Static_assert(UV_EEXIST == -EEXIST, "libuv error codes must be negative errno values");
_Static_assert(UV_EIO == -EIO, "libuv error codes must be negative errno values");
_Static_assert(UV_ETIMEDOUT == -ETIMEDOUT, "libuv error codes must be negative errno values");
_Static_assert(UV_ECANCELED == -ECANCELED, "libuv error codes must be negative errno values");
_Static_assert(UV_ECONNRESET == -ECONNRESET, "libuv error codes must be negative errno values");

#endif
