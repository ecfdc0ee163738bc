/*
 * policy_vm.h: one sandboxed Lua state with its policies loaded (internal to lua/).
 *
 * policy.c owns the engine (config snapshot, counters, rate limits) and calls hooks;
 * policy_vm.c owns the Lua state: the allocator with its cap, the instruction budget,
 * the sandboxed libraries, `require`, the `cache` module and the loading of policy
 * files. A reload makes a second vm and frees the one that lost.
 */
#ifndef CC_POLICY_VM_H
#define CC_POLICY_VM_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/log.h"
#include "lua/policy.h"

/* What the engine keeps of the config: copied, so the config may be freed. */
struct policy_upstream {
    char *originhost;
    char **upstreamhosts;
    size_t n_upstreamhosts;
};

struct policy_field {
    char *key;
    char *value;
};

struct policy_settings {
    bool has_blobttl;
    uint64_t blobttl_ns;
    struct policy_upstream *upstreams;
    size_t n_upstreams;
    char *log_level;     /* NULL: "info" */
    char *log_formatter; /* NULL: "text" */
    struct policy_field *log_fields;
    size_t n_log_fields;
    char *storage_root; /* may be NULL */
    char *policydir;    /* the drop-in directory, or NULL */
};

struct policy_vm {
    lua_State *L;
    struct policy_engine *pe;
    const struct policy_settings *settings; /* the engine's; outlives the vm's use of it */
    const char *builtin_dir;                /* the engine's */

    size_t mem_used, mem_limit;
    bool mem_refused; /* an allocation was refused (or malloc failed) in this call */

    unsigned long instr_used, instr_limit, hook_period;
    bool budget_exceeded; /* this call ran past its budget: every instruction now fails */
    bool bad_return;      /* the error being raised is a wrong return value */

    int hook_ref[POLICY_HOOK_COUNT];      /* LUA_NOREF when no policy defines the hook */
    bool hook_builtin[POLICY_HOOK_COUNT]; /* the hook in force is the built-in default's */
};

/* Services of the engine (policy.c) that the Lua side calls. */
double policy_engine_now(struct policy_engine *pe);
void policy_engine_script_log(struct policy_engine *pe, enum log_level level, const char *msg);

/*
 * Makes a state and loads the policies: builtin_dir/default.lua, then settings->policydir's
 * files. Returns 0 and the vm in *out, or a negative error (-ENOENT, -EINVAL, -ENOMEM,
 * -ETIMEDOUT) with a message naming file and line in err.
 */
int policy_vm_new(struct policy_engine *pe, const struct policy_settings *settings,
                  const char *builtin_dir, unsigned long instructions, size_t memory_bytes,
                  struct policy_vm **out, char *err, size_t errlen);

/* Closes the state (a __gc metamethod still runs under the budget) and frees the vm. */
void policy_vm_free(struct policy_vm *vm);

/*
 * Runs fn(ud) (a lua_CFunction that finds ud as a light userdata at index 1) under
 * lua_pcall with a traceback handler and the given instruction budget. Returns 0, or
 * -EIO, -ETIMEDOUT, -ENOMEM, -EINVAL (see policy.h) and the error text in msg. After a
 * failure that involved memory the state is fully collected, so it serves the next call.
 */
int policy_vm_call(struct policy_vm *vm, lua_CFunction fn, void *ud, unsigned long instructions,
                   char *msg, size_t msglen);

/* Raises a Lua error that policy_vm_call reports as -EINVAL ("wrong return value"). */
int policy_vm_bad_return(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Marks the current call as out of memory (a malloc of the C side failed) and raises. */
int policy_vm_out_of_memory(lua_State *L);

/* The vm that a state (or a thread of it) belongs to. */
struct policy_vm *policy_vm_of(lua_State *L);

/* Pushes cache.config.upstreams[index + 1] (a read-only table). */
void policy_vm_push_upstream(lua_State *L, size_t index);

#endif
