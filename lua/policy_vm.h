/*
 * policy_vm.h: one sandboxed Lua state with policy files loaded into it (internal to
 * lua/). It knows nothing of particular hooks or of the config: the engine (policy.c)
 * names the hooks, pushes the table that becomes cache.config and answers cache.now(),
 * cache.log() and print() through the host callbacks below.
 *
 * A vm owns: the allocator with its cap; the budget of each call; the sandboxed libraries
 * (sandbox.h); `require`, which finds modules in the builtin and drop-in directories; the
 * global `cache` (now, log and config, read-only); and the loading of policy files, each
 * of which returns a table of hooks: the hooks of later files replace those of earlier
 * ones. The engine runs a hook by policy_vm_call with a lua_CFunction of its own that
 * pushes the hook (policy_vm_push_hook) and its arguments, calls it and checks what it
 * returns.
 *
 * The budget of a call is counted in steps, and a call that spends it fails with
 * -ETIMEDOUT: one step per Lua instruction (a count hook), per step of pattern matching
 * and per element or byte that a library function goes through in C (sandbox.h), and per
 * 64 bytes allocated. Once spent, every further instruction of the call fails, so a
 * policy that catches the error with pcall gains nothing. Besides steps, a call has a
 * deadline on the monotonic clock, POLICY_VM_NS_PER_STEP per step of its budget (at
 * least POLICY_VM_MIN_DEADLINE_MS), checked whenever the count hook runs (every 1,000
 * instructions) and whenever a library function charges its work: it catches work that
 * no step counts, such as one instruction that compares or converts a string of many
 * MiB. The one escape left is the time between two checks: at most 1,000 instructions,
 * each bounded by the memory cap. No policy code can run outside a call: the sandbox
 * lets no policy make a finalizer, so collecting garbage and policy_vm_free run none.
 *
 * The host's callbacks are called only from within policy_vm_new and policy_vm_call
 * (push_config only from policy_vm_new), on the thread that called them (the loop's);
 * a vm is not safe to share between threads.
 */
#ifndef CC_POLICY_VM_H
#define CC_POLICY_VM_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/log.h"

/* Room for this many hooks. */
#define POLICY_VM_MAX_HOOKS 12
/* The deadline of a call: this many ns per step of its budget, and at least ... */
#define POLICY_VM_NS_PER_STEP 1000
/* ... this many ms. */
#define POLICY_VM_MIN_DEADLINE_MS 100
/* An allocation costs one step per this many bytes. */
#define POLICY_VM_ALLOC_BYTES_PER_STEP 64

struct policy_vm;

/* What the policies ask of the engine during a call. Neither may raise a Lua error. */
struct policy_vm_host {
    double (*now)(void *ud);                                      /* cache.now() */
    void (*log)(void *ud, enum log_level level, const char *msg); /* cache.log, print */
    /* cache.turn(key): the number of calls so far with this key, this one included, for
     * the whole process (1, 2, 3, ...), or 0 for a key it does not keep (then nil).
     * NULL: no cache.turn. */
    unsigned long (*turn)(void *ud, long long key);
    void *ud;
};

/* A file of the built-in policies as it was shipped: its name in the builtin directory
 * ("logformat.lua", "lib/x.lua") and the SHA-256 of its bytes, in lowercase hex. */
struct policy_vm_shipped {
    const char *name;
    const char *sha256;
};

struct policy_vm_options {
    const char *builtin_dir; /* default.lua, and modules for require */
    const char *dropin_dir;  /* "*.lua" files loaded after it, or NULL */
    /* Instead of listing dropin_dir: exactly these files, in this order (full paths; the
     * busted specs load one example at a time). dropin_dir still serves require. */
    const char *const *dropin_files;
    size_t n_dropin_files;
    /* The built-in files as shipped (policy_vm_builtin_pristine); may be NULL. */
    const struct policy_vm_shipped *shipped;
    size_t n_shipped;
    const char *const *hook_names; /* the hooks a policy file may define */
    size_t n_hooks;                /* at most POLICY_VM_MAX_HOOKS */
    unsigned long instructions;    /* the budget of loading one file */
    size_t memory_bytes;           /* the cap on the state's memory */
    struct policy_vm_host host;
    /* Called once, by policy_vm_new under lua_pcall (it may raise a memory error):
     * pushes a plain table of plain values, which becomes cache.config, read-only. */
    void (*push_config)(lua_State *L, void *config_ud);
    void *config_ud;
};

/*
 * Makes a state and loads the policies: builtin_dir/default.lua, then the drop-in files
 * (regular files, links followed, named "*.lua" and not starting with '.', in byte order
 * of their names). The vm keeps the options' strings, hook_names and host.ud by pointer:
 * they must outlive it (config_ud is used only during this call). Returns 0 and the vm in
 * *out, or a negative error with a message naming file and line in err (always
 * NUL-terminated when errlen > 0): -ENOENT (the drop-in directory cannot be read),
 * -ENOMEM, -EINVAL (a file does not load, fails, runs past its budget or does not return
 * a table of functions).
 */
int policy_vm_new(const struct policy_vm_options *options, struct policy_vm **out, char *err,
                  size_t errlen);

/* Closes the state and frees the vm; NULL is a no-op. Runs no policy code: it takes time
 * in proportion to the memory the state holds (at most the cap). */
void policy_vm_free(struct policy_vm *vm);

/*
 * Runs fn(ud) (a lua_CFunction that finds ud as a light userdata at index 1) under
 * lua_pcall with a traceback handler and a budget of `steps`. Returns 0, or a negative
 * error and the error text in msg: -ETIMEDOUT (past the budget or the deadline),
 * -ENOMEM (the memory cap, or a malloc of the C side), -EINVAL (policy_vm_bad_return),
 * -EIO (any other error). After a failure that involved memory the state is fully
 * collected, so it serves the next call.
 */
int policy_vm_call(struct policy_vm *vm, lua_CFunction fn, void *ud, unsigned long steps, char *msg,
                   size_t msglen);

/* Raises a Lua error that policy_vm_call reports as -EINVAL ("wrong return value"). */
int policy_vm_bad_return(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Marks the current call as out of memory (a malloc of the C side failed) and raises. */
int policy_vm_out_of_memory(lua_State *L);

/* Within a call: pushes hook h (an index into options.hook_names). */
void policy_vm_push_hook(lua_State *L, size_t h);

/* Within a call: pushes cache.config (the read-only view). */
void policy_vm_push_config(lua_State *L);

/* Whether some policy defines hook h, and whether the one in force is default.lua's. */
bool policy_vm_has_hook(const struct policy_vm *vm, size_t h);
bool policy_vm_hook_is_builtin(const struct policy_vm *vm, size_t h);

/*
 * True when every file loaded from the builtin directory (default.lua and the modules it
 * and the drop-ins required from there) is byte for byte one of options.shipped, by
 * SHA-256: the built-in policies in this state are the shipped ones. False when one was
 * edited, added, or options.shipped was empty.
 */
bool policy_vm_builtin_pristine(const struct policy_vm *vm);

/* Bytes the state holds, and the cap (applies from the next allocation). */
size_t policy_vm_memory(const struct policy_vm *vm);
void policy_vm_set_memory_limit(struct policy_vm *vm, size_t bytes);

#endif
