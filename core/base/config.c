/*
 * config.c: the Docker Registry config.yml, read into struct config (see config.h).
 *
 * Reading happens in four steps, each one pass:
 *   1. libyaml events -> a small tree of nodes that remember their line and column. The
 *      tree bounds nesting depth and anchors; aliases point at the node they name.
 *   2. The tree is walked against a schema (tables of known keys below). Scalar keys
 *      that the environment may override are only collected ("pending") here; lists and
 *      the downstream middleware are converted at once. Unknown keys become warnings.
 *   3. REGISTRY_* environment variables replace pending values.
 *   4. Pending values are converted and checked, then the checks that span keys run
 *      (blobttl needs storage.delete.enabled, auth.token is all or nothing, ...).
 * An error stops everything; its message names the file, line, column and key path, or
 * the environment variable the bad value came from.
 */
#include "base/config.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

#define CONFIG_MAX_BYTES (1024 * 1024) /* a bigger file is refused */
#define CONFIG_MAX_DEPTH 64            /* nesting of lists and maps */
#define CONFIG_MAX_NODES 100000        /* values in the file, before aliases */
#define CONFIG_MAX_ANCHORS 256
#define CONFIG_MAX_VALUES 10000 /* nodes the walk may visit: bounds alias expansion */
#define CONFIG_MAX_WARNINGS 100
#define CONFIG_MAX_PENDING 32
#define PATH_LEN 256
#define PEM_MAX_BYTES (16 * 1024 * 1024)

/* ---- The tree ------------------------------------------------------------------------ */

enum ynode_kind { YN_SCALAR, YN_SEQ, YN_MAP };

struct ynode {
    enum ynode_kind kind;
    bool plain;           /* an unquoted scalar: "", "~" and "null" then mean null */
    char *text;           /* scalar: NUL-terminated, holds no NUL */
    struct ynode **items; /* list: the items; map: key, value, key, value, ... */
    size_t n_items, cap_items;
    unsigned line, col; /* 1-based */
    struct ynode *next; /* every node of a document, to free them */
};

struct anchor {
    char *name;
    struct ynode *node;
};

/* A scalar key's value from the file or the environment, converted in step 4. */
struct pending {
    const struct field *field;
    const char *text;    /* in the tree or the environment; "" means not set */
    char path[PATH_LEN]; /* dotted key path */
    char env[64];        /* the variable it came from, or "" when from the file */
    unsigned line, col;
};

struct section;

struct ctx {
    const char *file;
    const char *data;
    size_t len;
    struct config *cfg;
    char *err;
    size_t errlen;
    struct ynode *nodes; /* all nodes, for freeing */
    size_t n_nodes;
    struct ynode *root;
    long budget; /* nodes the walk may still visit */
    size_t n_warnings_dropped;

    struct pending pending[CONFIG_MAX_PENDING];
    size_t n_pending;
    struct {
        const struct section *section;
        const struct ynode *node;
    } seen[16]; /* sections met in the file, for messages about what they lack */
    size_t n_seen;

    bool version_ok;
    const struct ynode *registry_node;
    unsigned downstream_line;
    unsigned contentcaches_line;
    const struct ynode *contentcaches_node; /* the entry, for messages about what it lacks */
    char contentcaches_path[PATH_LEN];      /* "middleware.registry[N].options" */
    unsigned blobttl_line, blobttl_col;
    char blobttl_path[PATH_LEN];
};

/* ---- Messages ------------------------------------------------------------------------ */

/* Writes text as a double-quoted string, escaped and cut with "..." at 80 bytes, into buf. */
static const char *quote(const char *text, char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t pos = 0;
    buf[pos++] = '"';
    for (; *p && p - (const unsigned char *)text < 80 && pos + 12 < len; p++) {
        if (*p == '"' || *p == '\\')
            pos += (size_t)snprintf(buf + pos, len - pos, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            pos += (size_t)snprintf(buf + pos, len - pos, "\\x%02x", *p);
        else
            buf[pos++] = (char)*p;
    }
    snprintf(buf + pos, len - pos, "%s\"", *p ? "..." : "");
    return buf;
}

/* Writes "where: message" into ctx->err; where is "file:line:col: path" or a variable. */
static int fail_v(struct ctx *ctx, const char *env, unsigned line, unsigned col, const char *path,
                  const char *fmt, va_list ap)
{
    int n;
    if (env && *env)
        n = snprintf(ctx->err, ctx->errlen, "%s: ", env);
    else if (path && *path)
        n = snprintf(ctx->err, ctx->errlen, "%s:%u:%u: %s: ", ctx->file, line, col, path);
    else
        n = snprintf(ctx->err, ctx->errlen, "%s:%u:%u: ", ctx->file, line, col);
    if (n >= 0 && (size_t)n < ctx->errlen)
        vsnprintf(ctx->err + n, ctx->errlen - (size_t)n, fmt, ap);
    return -EINVAL;
}

__attribute__((format(printf, 5, 6))) static int
fail_at(struct ctx *ctx, unsigned line, unsigned col, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(ctx, NULL, line, col, path, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

__attribute__((format(printf, 4, 5))) static int
fail_node(struct ctx *ctx, const struct ynode *node, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(ctx, NULL, node->line, node->col, path, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* libyaml's marks count from 0; messages count from 1. */
#define MARK_LINE(mark) ((unsigned)(mark).line + 1)
#define MARK_COL(mark) ((unsigned)(mark).column + 1)

__attribute__((format(printf, 3, 4))) static int
fail_pending(struct ctx *ctx, const struct pending *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(ctx, p->env, p->line, p->col, p->path, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int out_of_memory(struct ctx *ctx)
{
    snprintf(ctx->err, ctx->errlen, "%s: out of memory", ctx->file);
    return -ENOMEM;
}

/* Adds a warning; past CONFIG_MAX_WARNINGS they are only counted. */
__attribute__((format(printf, 2, 3))) static void warn(struct ctx *ctx, const char *fmt, ...)
{
    struct config *cfg = ctx->cfg;
    if (cfg->n_warnings >= CONFIG_MAX_WARNINGS) {
        ctx->n_warnings_dropped++;
        return;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    char **grown = realloc(cfg->warnings, (cfg->n_warnings + 1) * sizeof(*grown));
    if (grown == NULL) return; /* a lost warning is not worth failing for */
    cfg->warnings = grown;
    if ((cfg->warnings[cfg->n_warnings] = strdup(buf)) != NULL) cfg->n_warnings++;
}

static void warn_unknown(struct ctx *ctx, const struct ynode *key, const char *path)
{
    warn(ctx, "%s:%u: %s: not used by content-cache (ignored)", ctx->file, key->line, path);
}

/*
 * Writes parent ".key" (or "key" at the top) into out (PATH_LEN bytes), replacing
 * unprintable bytes with '?' and cutting with "..." what does not fit.
 */
static void path_key(char *out, const char *parent, const char *key)
{
    const size_t max = PATH_LEN - 4; /* room for "..." and the NUL */
    size_t pos = 0;
    for (; *parent && pos < max; parent++)
        out[pos++] = *parent;
    if (pos > 0 && pos < max) out[pos++] = '.';
    for (; *key && pos < max; key++)
        out[pos++] = (*key > 0x20 && *key < 0x7f) ? *key : '?';
    if (*parent || *key) {
        memcpy(out + pos, "...", 3);
        pos += 3;
    }
    out[pos] = '\0';
}

static void path_index(char *out, const char *parent, size_t index)
{
    snprintf(out, PATH_LEN, "%.200s[%zu]", parent, index);
}

/* ---- Step 1: YAML to a tree ---------------------------------------------------------- */

static int node_new(struct ctx *ctx, enum ynode_kind kind, yaml_mark_t mark, struct ynode **out)
{
    if (++ctx->n_nodes > CONFIG_MAX_NODES)
        return fail_at(ctx, MARK_LINE(mark), MARK_COL(mark), NULL, "more than %d values",
                       CONFIG_MAX_NODES);
    struct ynode *node = calloc(1, sizeof(*node));
    if (node == NULL) return out_of_memory(ctx);
    node->kind = kind;
    node->line = MARK_LINE(mark);
    node->col = MARK_COL(mark);
    node->next = ctx->nodes;
    ctx->nodes = node;
    *out = node;
    return 0;
}

static int node_append(struct ynode *parent, struct ynode *child)
{
    if (parent->n_items == parent->cap_items) {
        size_t cap = parent->cap_items ? parent->cap_items * 2 : 8;
        struct ynode **grown = realloc(parent->items, cap * sizeof(*grown));
        if (grown == NULL) return -ENOMEM;
        parent->items = grown;
        parent->cap_items = cap;
    }
    parent->items[parent->n_items++] = child;
    return 0;
}

static void nodes_free(struct ctx *ctx)
{
    while (ctx->nodes) {
        struct ynode *next = ctx->nodes->next;
        free(ctx->nodes->text);
        free(ctx->nodes->items);
        free(ctx->nodes);
        ctx->nodes = next;
    }
}

static int syntax_error(struct ctx *ctx, const yaml_parser_t *parser)
{
    if (parser->error == YAML_MEMORY_ERROR) return out_of_memory(ctx);
    unsigned line = (unsigned)parser->problem_mark.line + 1;
    unsigned col = (unsigned)parser->problem_mark.column + 1;
    if (parser->error == YAML_READER_ERROR) { /* only a byte offset: count lines to it */
        line = 1;
        col = 1;
        for (size_t i = 0; i < parser->problem_offset && i < ctx->len; i++) {
            if (ctx->data[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
    }
    int n = snprintf(ctx->err, ctx->errlen, "%s:%u:%u: invalid YAML: %s", ctx->file, line, col,
                     parser->problem ? parser->problem : "syntax error");
    if (parser->context && n >= 0 && (size_t)n < ctx->errlen)
        snprintf(ctx->err + n, ctx->errlen - (size_t)n, " (%s at line %u, column %u)",
                 parser->context, (unsigned)parser->context_mark.line + 1,
                 (unsigned)parser->context_mark.column + 1);
    return -EINVAL;
}

/* What tree_load keeps while it reads events. */
struct builder {
    struct {
        struct ynode *node;
        char *anchor; /* its anchor, named once the node is complete */
    } open[CONFIG_MAX_DEPTH];
    size_t depth;
    struct anchor anchors[CONFIG_MAX_ANCHORS];
    size_t n_anchors;
};

/* Names `node` by `anchor` (a copy that the builder now owns, or NULL: out of memory). */
static int anchor_add(struct ctx *ctx, struct builder *b, char *anchor, struct ynode *node)
{
    if (anchor == NULL) return out_of_memory(ctx);
    if (b->n_anchors == CONFIG_MAX_ANCHORS) {
        free(anchor);
        return fail_node(ctx, node, NULL, "more than %d anchors", CONFIG_MAX_ANCHORS);
    }
    b->anchors[b->n_anchors].name = anchor;
    b->anchors[b->n_anchors++].node = node;
    return 0;
}

/* The node an alias names: the latest complete node with that anchor. */
static int alias_find(struct ctx *ctx, struct builder *b, const yaml_event_t *ev,
                      struct ynode **out)
{
    const char *name = (const char *)ev->data.alias.anchor;
    char q[128];
    for (size_t i = b->n_anchors; i-- > 0;) {
        if (strcmp(b->anchors[i].name, name) == 0) {
            *out = b->anchors[i].node;
            return 0;
        }
    }
    return fail_at(ctx, MARK_LINE(ev->start_mark), MARK_COL(ev->start_mark), NULL,
                   "alias %s names no anchor defined before it", quote(name, q, sizeof(q)));
}

/* Handles one event: a new node joins its parent (or is the root). */
static int tree_event(struct ctx *ctx, struct builder *b, const yaml_event_t *ev)
{
    struct ynode *node = NULL;
    const char *anchor = NULL;
    int rc = 0;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        if ((rc = node_new(ctx, YN_SCALAR, ev->start_mark, &node)) != 0) return rc;
        if ((node->text = malloc(ev->data.scalar.length + 1)) == NULL) return out_of_memory(ctx);
        memcpy(node->text, ev->data.scalar.value, ev->data.scalar.length);
        node->text[ev->data.scalar.length] = '\0';
        node->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (strlen(node->text) != ev->data.scalar.length)
            return fail_node(ctx, node, NULL, "a value holds a NUL character");
        anchor = (const char *)ev->data.scalar.anchor;
        break;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        rc = node_new(ctx, ev->type == YAML_MAPPING_START_EVENT ? YN_MAP : YN_SEQ, ev->start_mark,
                      &node);
        if (rc != 0) return rc;
        if (b->depth == CONFIG_MAX_DEPTH)
            return fail_node(ctx, node, NULL, "nesting deeper than %d levels", CONFIG_MAX_DEPTH);
        break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        /* Anchors name complete nodes only: no alias can make a cycle. */
        b->depth--;
        if (b->open[b->depth].anchor == NULL) return 0;
        rc = anchor_add(ctx, b, b->open[b->depth].anchor, b->open[b->depth].node);
        b->open[b->depth].anchor = NULL;
        return rc;
    case YAML_ALIAS_EVENT:
        if ((rc = alias_find(ctx, b, ev, &node)) != 0) return rc;
        break;
    default:
        return 0;
    }

    if (b->depth == 0)
        ctx->root = node;
    else if (node_append(b->open[b->depth - 1].node, node) != 0)
        return out_of_memory(ctx);

    if (ev->type == YAML_SEQUENCE_START_EVENT || ev->type == YAML_MAPPING_START_EVENT) {
        const char *name = ev->type == YAML_MAPPING_START_EVENT
                               ? (const char *)ev->data.mapping_start.anchor
                               : (const char *)ev->data.sequence_start.anchor;
        b->open[b->depth].node = node;
        b->open[b->depth].anchor = NULL;
        b->depth++;
        if (name && (b->open[b->depth - 1].anchor = strdup(name)) == NULL)
            return out_of_memory(ctx);
    }
    if (anchor) return anchor_add(ctx, b, strdup(anchor), node);
    return 0;
}

/* Builds ctx->root (NULL for an empty stream) from the YAML text. */
static int tree_load(struct ctx *ctx, const char *data, size_t len)
{
    struct builder *b = calloc(1, sizeof(*b));
    yaml_parser_t parser;
    int documents = 0, rc = 0;
    bool done = false;
    if (b == NULL || !yaml_parser_initialize(&parser)) {
        free(b);
        return out_of_memory(ctx);
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = syntax_error(ctx, &parser);
            break;
        }
        if (ev.type == YAML_STREAM_END_EVENT)
            done = true;
        else if (ev.type == YAML_DOCUMENT_START_EVENT && ++documents > 1)
            rc = fail_at(ctx, MARK_LINE(ev.start_mark), MARK_COL(ev.start_mark), NULL,
                         "only one YAML document is allowed");
        else
            rc = tree_event(ctx, b, &ev);
        yaml_event_delete(&ev);
    }
    while (b->depth > 0)
        free(b->open[--b->depth].anchor);
    for (size_t i = 0; i < b->n_anchors; i++)
        free(b->anchors[i].name);
    free(b);
    yaml_parser_delete(&parser);
    return rc;
}

/* ---- Step 2: the walk ---------------------------------------------------------------- */

static bool is_null(const struct ynode *node)
{
    if (node->kind != YN_SCALAR || !node->plain) return false;
    const char *t = node->text;
    return *t == '\0' || strcmp(t, "~") == 0 || strcmp(t, "null") == 0 || strcmp(t, "Null") == 0 ||
           strcmp(t, "NULL") == 0;
}

static const char *kind_name(const struct ynode *node)
{
    if (node->kind == YN_MAP) return "a map";
    if (node->kind == YN_SEQ) return "a list";
    return is_null(node) ? "nothing" : "a single value";
}

/* What a node is, for "got ...": the quoted value of a scalar, else its kind. */
static const char *got(const struct ynode *node, char *buf, size_t len)
{
    if (node->kind == YN_SCALAR && !is_null(node)) return quote(node->text, buf, len);
    return kind_name(node);
}

/* Counts `n` visited nodes against the budget that bounds alias expansion. */
static int charge(struct ctx *ctx, const struct ynode *node, const char *path, size_t n)
{
    ctx->budget -= (long)n + 1;
    if (ctx->budget < 0)
        return fail_node(ctx, node, path, "too many values (more than %d, counting aliases)",
                         CONFIG_MAX_VALUES);
    return 0;
}

struct key_ref {
    const struct ynode *key;
    size_t pos;
};

static int key_ref_cmp(const void *a, const void *b)
{
    const struct key_ref *x = a, *y = b;
    int c = strcmp(x->key->text, y->key->text);
    if (c != 0) return c;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/*
 * Checks a map before it is read: every key a single value, no key twice. Reports the
 * earliest repeated key in the document.
 */
static int check_map(struct ctx *ctx, const struct ynode *map, const char *path)
{
    size_t n = map->n_items / 2;
    int rc = charge(ctx, map, path, n);
    for (size_t i = 0; i < n && rc == 0; i++)
        if (map->items[2 * i]->kind != YN_SCALAR)
            rc = fail_node(ctx, map->items[2 * i], path, "expected a key, got %s",
                           kind_name(map->items[2 * i]));
    if (rc != 0 || n < 2) return rc;
    struct key_ref *refs = malloc(n * sizeof(*refs));
    if (refs == NULL) return out_of_memory(ctx);
    for (size_t i = 0; i < n; i++) {
        refs[i].key = map->items[2 * i];
        refs[i].pos = i;
    }
    qsort(refs, n, sizeof(*refs), key_ref_cmp);
    size_t dup = n, first = 0;
    for (size_t i = 1; i < n; i++) {
        /* refs[i] is the second of a run of equal keys: a repeat, in document order. */
        bool second = strcmp(refs[i].key->text, refs[i - 1].key->text) == 0 &&
                      (i < 2 || strcmp(refs[i - 1].key->text, refs[i - 2].key->text) != 0);
        if (second && refs[i].pos < dup) {
            dup = refs[i].pos;
            first = refs[i - 1].pos;
        }
    }
    free(refs);
    if (dup < n) {
        char child[PATH_LEN];
        const struct ynode *key = map->items[2 * dup];
        path_key(child, path, key->text);
        rc = fail_node(ctx, key, child, "duplicate key (first set at line %u)",
                       map->items[2 * first]->line);
    }
    return rc;
}

/* Checks that a node is a list (null counts as an empty one) and charges its items. */
static int check_list(struct ctx *ctx, const struct ynode *node, const char *path,
                      const char *expected)
{
    char q[128];
    if (is_null(node)) return 0;
    if (node->kind != YN_SEQ)
        return fail_node(ctx, node, path, "expected %s, got %s", expected, got(node, q, sizeof(q)));
    return charge(ctx, node, path, node->n_items);
}

typedef int (*walk_fn)(struct ctx *ctx, const struct ynode *value, const char *path);
typedef void (*unknown_fn)(struct ctx *ctx, const struct ynode *key, const char *path);

enum field_kind { F_STRING, F_BOOL, F_DURATION, F_CHOICE, F_WHOLE, F_SECTION, F_HANDLER };

struct choice {
    const char *text;    /* as written, compared without case */
    const char *value;   /* stored; NULL: text */
    const char *warning; /* NULL, or a warning to give when chosen */
};

struct field {
    const char *key;
    enum field_kind kind;
    size_t offset;                 /* scalar kinds: the member of struct config */
    const struct choice *choices;  /* F_CHOICE, ended by a NULL text */
    const char *expected;          /* F_CHOICE: "one of ..."; F_WHOLE: "a whole number ..." */
    unsigned long max;             /* F_WHOLE: from 1 to max, into an unsigned member */
    const struct section *section; /* F_SECTION */
    walk_fn handler;               /* F_HANDLER */
};

struct section {
    const struct field *fields; /* ended by a NULL key */
    unknown_fn unknown;         /* a key not in fields; NULL: warn_unknown */
};

/* Records a scalar key's value for step 4 (a later value for the same key replaces it). */
static struct pending *pending_slot(struct ctx *ctx, const struct field *field)
{
    for (size_t i = 0; i < ctx->n_pending; i++)
        if (ctx->pending[i].field == field) return &ctx->pending[i];
    if (ctx->n_pending == CONFIG_MAX_PENDING)
        return NULL; /* cannot happen: there are fewer scalar keys than slots */
    struct pending *p = &ctx->pending[ctx->n_pending++];
    p->field = field;
    return p;
}

static const char duration_expected[] =
    "a positive integer with an optional unit (ns, us, ms, s, m, h)";

static const char *field_expected(const struct field *field)
{
    switch (field->kind) {
    case F_BOOL:
        return "a boolean (true or false)";
    case F_DURATION:
        return duration_expected;
    case F_CHOICE:
    case F_WHOLE:
        return field->expected;
    default:
        return "a single value";
    }
}

static int walk_scalar(struct ctx *ctx, const struct field *field, const struct ynode *value,
                       const char *path)
{
    if (value->kind != YN_SCALAR)
        return fail_node(ctx, value, path, "expected %s, got %s", field_expected(field),
                         kind_name(value));
    struct pending *p = pending_slot(ctx, field);
    if (p == NULL) return fail_node(ctx, value, path, "too many keys");
    p->text = is_null(value) ? "" : value->text;
    snprintf(p->path, sizeof(p->path), "%s", path);
    p->env[0] = '\0';
    p->line = value->line;
    p->col = value->col;
    return 0;
}

static int walk_section(struct ctx *ctx, const struct section *section, const struct ynode *node,
                        const char *path)
{
    char q[128];
    if (is_null(node)) return 0;
    if (node->kind != YN_MAP)
        return fail_node(ctx, node, path, "expected a map, got %s", got(node, q, sizeof(q)));
    int rc = check_map(ctx, node, path);
    if (rc == 0 && ctx->n_seen < sizeof(ctx->seen) / sizeof(ctx->seen[0])) {
        ctx->seen[ctx->n_seen].section = section;
        ctx->seen[ctx->n_seen++].node = node;
    }
    for (size_t i = 0; rc == 0 && i + 1 < node->n_items; i += 2) {
        const struct ynode *key = node->items[i], *value = node->items[i + 1];
        char child[PATH_LEN];
        path_key(child, path, key->text);
        const struct field *field = section->fields;
        while (field->key && strcmp(field->key, key->text) != 0)
            field++;
        if (field->key == NULL)
            (section->unknown ? section->unknown : warn_unknown)(ctx, key, child);
        else if (field->kind == F_SECTION)
            rc = walk_section(ctx, field->section, value, child);
        else if (field->kind == F_HANDLER)
            rc = field->handler(ctx, value, child);
        else
            rc = walk_scalar(ctx, field, value, child);
    }
    return rc;
}

static const struct ynode *section_node(const struct ctx *ctx, const struct section *section)
{
    for (size_t i = 0; i < ctx->n_seen; i++)
        if (ctx->seen[i].section == section) return ctx->seen[i].node;
    return NULL;
}

static const struct ynode *map_get(const struct ynode *map, const char *key)
{
    for (size_t i = 0; i + 1 < map->n_items; i += 2)
        if (map->items[i]->kind == YN_SCALAR && strcmp(map->items[i]->text, key) == 0)
            return map->items[i + 1];
    return NULL;
}

/* Reads a required single value that is not null. */
static int get_text(struct ctx *ctx, const struct ynode *value, const char *path,
                    const char *expected, const char **text)
{
    if (value->kind != YN_SCALAR || is_null(value))
        return fail_node(ctx, value, path, "expected %s, got %s", expected, kind_name(value));
    *text = value->text;
    return 0;
}

static int parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(text, yes[i]) == 0) return *out = true, 0;
        if (strcasecmp(text, no[i]) == 0) return *out = false, 0;
    }
    return -EINVAL;
}

static const char *duration_problem(int rc, const char *text)
{
    if (rc == -ERANGE && text[strspn(text, "0")] != '\0')
        return " (more than 18446744073709551615ns, about 584 years)";
    return "";
}

static int walk_version(struct ctx *ctx, const struct ynode *value, const char *path)
{
    char q[128];
    if (value->kind != YN_SCALAR || strcmp(value->text, "0.1") != 0)
        return fail_node(ctx, value, path, "expected 0.1, got %s", got(value, q, sizeof(q)));
    ctx->version_ok = true;
    return 0;
}

static int walk_log_fields(struct ctx *ctx, const struct ynode *value, const char *path)
{
    struct config *cfg = ctx->cfg;
    char q[128];
    if (is_null(value)) return 0;
    if (value->kind != YN_MAP)
        return fail_node(ctx, value, path, "expected a map of names to values, got %s",
                         got(value, q, sizeof(q)));
    int rc = check_map(ctx, value, path);
    size_t n = value->n_items / 2;
    if (rc != 0 || n == 0) return rc;
    if ((cfg->log_fields = calloc(n, sizeof(*cfg->log_fields))) == NULL) return out_of_memory(ctx);
    for (size_t i = 0; i < n; i++) {
        const struct ynode *key = value->items[2 * i], *val = value->items[2 * i + 1];
        char child[PATH_LEN];
        path_key(child, path, key->text);
        if (val->kind != YN_SCALAR)
            return fail_node(ctx, val, child, "expected a single value, got %s", kind_name(val));
        struct log_field *kv = &cfg->log_fields[cfg->n_log_fields++];
        kv->key = strdup(key->text);
        kv->value = strdup(is_null(val) ? "" : val->text);
        if (kv->key == NULL || kv->value == NULL) return out_of_memory(ctx);
    }
    return 0;
}

static bool is_header_name(const char *s)
{
    if (*s == '\0') return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

static bool is_header_value(const char *s)
{
    for (; *s; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f) return false;
    return true;
}

static int walk_http_headers(struct ctx *ctx, const struct ynode *value, const char *path)
{
    struct config *cfg = ctx->cfg;
    char q[128];
    if (is_null(value)) return 0;
    if (value->kind != YN_MAP)
        return fail_node(ctx, value, path,
                         "expected a map of header names to lists of values, "
                         "got %s",
                         got(value, q, sizeof(q)));
    int rc = check_map(ctx, value, path);
    size_t n = value->n_items / 2;
    if (rc != 0 || n == 0) return rc;
    if ((cfg->http_headers = calloc(n, sizeof(*cfg->http_headers))) == NULL)
        return out_of_memory(ctx);
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct ynode *key = value->items[2 * i], *list = value->items[2 * i + 1];
        char child[PATH_LEN], item[PATH_LEN];
        path_key(child, path, key->text);
        if (!is_header_name(key->text))
            return fail_node(ctx, key, child, "expected an HTTP header name, got %s",
                             quote(key->text, q, sizeof(q)));
        if ((rc = check_list(ctx, list, child, "a list of header values")) != 0 || is_null(list))
            continue;
        struct config_header *header = &cfg->http_headers[cfg->n_http_headers++];
        if ((header->name = strdup(key->text)) == NULL ||
            (header->values = calloc(list->n_items + 1, sizeof(char *))) == NULL)
            return out_of_memory(ctx);
        for (size_t j = 0; j < list->n_items && rc == 0; j++) {
            const struct ynode *v = list->items[j];
            path_index(item, child, j);
            if (v->kind != YN_SCALAR || !is_header_value(v->text))
                return fail_node(ctx, v, item,
                                 "expected a header value without control characters, got %s",
                                 got(v, q, sizeof(q)));
            if ((header->values[header->n_values++] = strdup(is_null(v) ? "" : v->text)) == NULL)
                return out_of_memory(ctx);
        }
    }
    return rc;
}

/* Reads a URL into *text and *parsed. */
static int walk_url(struct ctx *ctx, const struct ynode *value, const char *path, char **text,
                    struct url *parsed)
{
    static const char expected[] = "a fully qualified http or https URL";
    const char *s = NULL, *why = NULL;
    char q[128];
    int rc = get_text(ctx, value, path, expected, &s);
    if (rc != 0) return rc;
    if (url_parse(s, parsed, &why) != 0)
        return fail_node(ctx, value, path, "expected %s, got %s: %s", expected,
                         quote(s, q, sizeof(q)), why);
    if ((*text = strdup(s)) == NULL) return out_of_memory(ctx);
    return 0;
}

static int walk_upstream(struct ctx *ctx, const struct ynode *entry, const char *path,
                         struct config_upstream *up)
{
    char q[128], child[PATH_LEN], item[PATH_LEN];
    if (entry->kind != YN_MAP)
        return fail_node(ctx, entry, path, "expected a map with originhost, got %s",
                         got(entry, q, sizeof(q)));
    int rc = check_map(ctx, entry, path);
    for (size_t i = 0; rc == 0 && i + 1 < entry->n_items; i += 2) {
        const struct ynode *key = entry->items[i], *value = entry->items[i + 1];
        path_key(child, path, key->text);
        if (strcmp(key->text, "originhost") == 0) {
            rc = walk_url(ctx, value, child, &up->originhost, &up->origin);
        } else if (strcmp(key->text, "upstreamhosts") == 0) {
            rc = check_list(ctx, value, child, "a list of URLs");
            if (rc != 0 || is_null(value) || value->n_items == 0) continue;
            up->upstreamhosts = calloc(value->n_items, sizeof(char *));
            up->upstream_urls = calloc(value->n_items, sizeof(struct url));
            if (up->upstreamhosts == NULL || up->upstream_urls == NULL) return out_of_memory(ctx);
            for (size_t j = 0; j < value->n_items && rc == 0; j++) {
                path_index(item, child, j);
                rc = walk_url(ctx, value->items[j], item, &up->upstreamhosts[j],
                              &up->upstream_urls[j]);
                if (rc == 0) up->n_upstreamhosts++;
            }
        } else {
            warn_unknown(ctx, key, child);
        }
    }
    if (rc == 0 && up->originhost == NULL) {
        path_key(child, path, "originhost");
        rc = fail_node(ctx, entry, child, "missing: expected a fully qualified http or https URL");
    }
    return rc;
}

static int walk_upstreams(struct ctx *ctx, const struct ynode *value, const char *path)
{
    static const char expected[] = "a non-empty list of upstreams, each with an originhost";
    struct config *cfg = ctx->cfg;
    char q[128], item[PATH_LEN];
    if (value->kind != YN_SEQ || value->n_items == 0)
        return fail_node(ctx, value, path, "expected %s, got %s", expected,
                         value->kind == YN_SEQ ? "an empty list" : got(value, q, sizeof(q)));
    int rc = charge(ctx, value, path, value->n_items);
    if (rc != 0) return rc;
    if ((cfg->upstreams = calloc(value->n_items, sizeof(*cfg->upstreams))) == NULL)
        return out_of_memory(ctx);
    cfg->n_upstreams = value->n_items;
    for (size_t i = 0; i < value->n_items && rc == 0; i++) {
        path_index(item, path, i);
        rc = walk_upstream(ctx, value->items[i], item, &cfg->upstreams[i]);
    }
    return rc;
}

static int walk_cas(struct ctx *ctx, const struct ynode *value, const char *path)
{
    static const char expected[] = "an absolute path to a PEM CA certificate";
    struct config *cfg = ctx->cfg;
    char q[128], item[PATH_LEN];
    int rc = check_list(ctx, value, path, "a list of absolute paths to PEM CA certificates");
    if (rc != 0 || is_null(value) || value->n_items == 0) return rc;
    if ((cfg->cas = calloc(value->n_items, sizeof(char *))) == NULL) return out_of_memory(ctx);
    for (size_t i = 0; i < value->n_items; i++) {
        const char *text = NULL;
        path_index(item, path, i);
        if ((rc = get_text(ctx, value->items[i], item, expected, &text)) != 0) return rc;
        if (text[0] != '/')
            return fail_node(ctx, value->items[i], item, "expected %s, got %s", expected,
                             quote(text, q, sizeof(q)));
        if ((cfg->cas[cfg->n_cas++] = strdup(text)) == NULL) return out_of_memory(ctx);
    }
    return 0;
}

static int walk_blobttl(struct ctx *ctx, const struct ynode *value, const char *path)
{
    struct config *cfg = ctx->cfg;
    char q[128];
    if (is_null(value)) return 0;
    int rc =
        value->kind == YN_SCALAR ? config_parse_duration(value->text, &cfg->blobttl_ns) : -EINVAL;
    if (rc != 0)
        return fail_node(ctx, value, path, "expected %s, got %s%s", duration_expected,
                         got(value, q, sizeof(q)),
                         duration_problem(rc, value->kind == YN_SCALAR ? value->text : ""));
    cfg->has_blobttl = true;
    ctx->blobttl_line = value->line;
    ctx->blobttl_col = value->col;
    snprintf(ctx->blobttl_path, sizeof(ctx->blobttl_path), "%s", path);
    return 0;
}

/* What whole_number made of a text. */
enum whole { WHOLE_OK, WHOLE_OUT_OF_RANGE /* digits, but 0 or past max */, WHOLE_NOT_A_NUMBER };

/* A whole number from 1 to max (digits only) into *n. */
static enum whole whole_number(const char *text, unsigned long max, unsigned long *n)
{
    size_t i = 0;
    *n = 0;
    for (; text[i] >= '0' && text[i] <= '9' && *n <= max; i++)
        *n = *n * 10 + (unsigned long)(text[i] - '0');
    if (i == 0 || (text[i] != '\0' && *n <= max)) return WHOLE_NOT_A_NUMBER;
    return *n < 1 || *n > max ? WHOLE_OUT_OF_RANGE : WHOLE_OK;
}

/* workers: how many loops (threads) serve, each with its own listening socket; our
 * extension. An integer from 1 to CONFIG_WORKERS_MAX; unset means one per CPU. */
static int walk_workers(struct ctx *ctx, const struct ynode *value, const char *path)
{
    char q[128];
    if (is_null(value)) return 0;
    unsigned long n = 0;
    enum whole w =
        whole_number(value->kind == YN_SCALAR ? value->text : "", CONFIG_WORKERS_MAX, &n);
    if (w == WHOLE_NOT_A_NUMBER)
        return fail_node(ctx, value, path,
                         "expected a whole number of worker loops from 1 to %d, got %s",
                         CONFIG_WORKERS_MAX, got(value, q, sizeof(q)));
    if (w == WHOLE_OUT_OF_RANGE)
        return fail_node(ctx, value, path,
                         "expected a whole number of worker loops from 1 to %d (one per core "
                         "is the most that helps), got %s",
                         CONFIG_WORKERS_MAX, got(value, q, sizeof(q)));
    ctx->cfg->workers = (unsigned)n;
    return 0;
}

static int walk_policydir(struct ctx *ctx, const struct ynode *value, const char *path)
{
    static const char expected[] = "an absolute directory path";
    char q[128];
    const char *text = NULL;
    if (is_null(value)) return 0;
    int rc = get_text(ctx, value, path, expected, &text);
    if (rc == 0 && text[0] != '/')
        rc =
            fail_node(ctx, value, path, "expected %s, got %s", expected, quote(text, q, sizeof(q)));
    if (rc == 0 && (ctx->cfg->policydir = strdup(text)) == NULL) rc = out_of_memory(ctx);
    return rc;
}

unsigned config_workers(const struct config *cfg)
{
    if (cfg->workers > 0) return cfg->workers;
    cpu_set_t set;
    int n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    return n < 1 ? 1 : n > CONFIG_WORKERS_MAX ? CONFIG_WORKERS_MAX : (unsigned)n;
}

int config_parse_size(const char *text, uint64_t *bytes)
{
    static const struct {
        const char *suffix;
        uint64_t mult;
    } units[] = {{"TiB", 1ULL << 40}, {"GiB", 1ULL << 30},      {"MiB", 1ULL << 20},
                 {"KiB", 1ULL << 10}, {"TB", 1000000000000ULL}, {"GB", 1000000000ULL},
                 {"MB", 1000000ULL},  {"KB", 1000ULL},          {"B", 1}};
    size_t i = 0;
    uint64_t v = 0;
    if (text[0] < '0' || text[0] > '9') return -EINVAL;
    for (; text[i] >= '0' && text[i] <= '9'; i++) {
        if (v > (UINT64_MAX - (uint64_t)(text[i] - '0')) / 10) return -ERANGE;
        v = v * 10 + (uint64_t)(text[i] - '0');
    }
    uint64_t mult = 1;
    if (text[i] != '\0') {
        size_t k = 0;
        for (; k < sizeof(units) / sizeof(*units); k++)
            if (strcmp(text + i, units[k].suffix) == 0) break;
        if (k == sizeof(units) / sizeof(*units)) return -EINVAL;
        mult = units[k].mult;
    }
    if (v == 0) return -ERANGE;
    if (v > UINT64_MAX / mult) return -ERANGE;
    *bytes = v * mult;
    return 0;
}

/* diskbudget: {maxsize, highwatermark, lowwatermark}: our extension. */
static int walk_diskbudget(struct ctx *ctx, const struct ynode *value, const char *path)
{
    struct config *cfg = ctx->cfg;
    char q[128], child[PATH_LEN];
    if (is_null(value)) return 0;
    if (value->kind != YN_MAP)
        return fail_node(ctx, value, path, "expected a map with maxsize, got %s",
                         got(value, q, sizeof(q)));
    int rc = check_map(ctx, value, path);
    cfg->budget_high_pct = 90;
    cfg->budget_low_pct = 80;
    for (size_t i = 0; rc == 0 && i + 1 < value->n_items; i += 2) {
        const struct ynode *key = value->items[i], *v = value->items[i + 1];
        path_key(child, path, key->text);
        if (strcmp(key->text, "maxsize") == 0) {
            if (v->kind != YN_SCALAR || config_parse_size(v->text, &cfg->budget_bytes) != 0)
                rc = fail_node(ctx, v, child,
                               "expected a positive size in bytes with an optional unit (B, KB, "
                               "MB, GB, TB, KiB, MiB, GiB, TiB), got %s",
                               got(v, q, sizeof(q)));
        } else if (strcmp(key->text, "highwatermark") == 0 ||
                   strcmp(key->text, "lowwatermark") == 0) {
            char *end = NULL;
            long pct = v->kind == YN_SCALAR ? strtol(v->text, &end, 10) : -1;
            if (v->kind != YN_SCALAR || end == v->text || *end != '\0' || pct < 1 || pct > 100)
                rc = fail_node(ctx, v, child, "expected a percentage from 1 to 100, got %s",
                               got(v, q, sizeof(q)));
            else if (key->text[0] == 'h')
                cfg->budget_high_pct = (unsigned)pct;
            else
                cfg->budget_low_pct = (unsigned)pct;
        } else {
            warn_unknown(ctx, key, child);
        }
    }
    if (rc == 0 && cfg->budget_bytes == 0) {
        path_key(child, path, "maxsize");
        return fail_node(ctx, value, child, "is required in diskbudget");
    }
    if (rc == 0 && cfg->budget_low_pct >= cfg->budget_high_pct)
        return fail_node(ctx, value, path, "lowwatermark (%u) must be below highwatermark (%u)",
                         cfg->budget_low_pct, cfg->budget_high_pct);
    if (rc == 0) cfg->has_budget = true;
    return rc;
}

/*
 * upstreamtimeouts: {connect, progress, head}: our extension. Durations as blobttl, from
 * 1ms to 1h; unset ones keep their defaults (10s, 30s and 60s).
 */
static int walk_upstreamtimeouts(struct ctx *ctx, const struct ynode *value, const char *path)
{
    struct config *cfg = ctx->cfg;
    char q[128], child[PATH_LEN];
    if (is_null(value)) return 0;
    if (value->kind != YN_MAP)
        return fail_node(ctx, value, path, "expected a map with connect, progress and head, got %s",
                         got(value, q, sizeof(q)));
    int rc = check_map(ctx, value, path);
    for (size_t i = 0; rc == 0 && i + 1 < value->n_items; i += 2) {
        const struct ynode *key = value->items[i], *v = value->items[i + 1];
        path_key(child, path, key->text);
        unsigned *slot = strcmp(key->text, "connect") == 0    ? &cfg->upstream_connect_ms
                         : strcmp(key->text, "progress") == 0 ? &cfg->upstream_progress_ms
                         : strcmp(key->text, "head") == 0     ? &cfg->upstream_head_ms
                                                              : NULL;
        if (slot == NULL) {
            warn_unknown(ctx, key, child);
            continue;
        }
        if (is_null(v)) continue;
        uint64_t ns = 0;
        int prc = v->kind == YN_SCALAR ? config_parse_duration(v->text, &ns) : -EINVAL;
        bool in_range = prc == 0 && ns >= 1000000ULL && ns <= 3600ULL * 1000000000ULL;
        if (!in_range)
            rc = fail_node(ctx, v, child, "expected %s, from 1ms to 1h, got %s%s",
                           duration_expected, got(v, q, sizeof(q)),
                           prc == 0 ? ""
                                    : duration_problem(prc, v->kind == YN_SCALAR ? v->text : ""));
        else
            *slot = (unsigned)(ns / 1000000ULL);
    }
    return rc;
}

/* ---- The front: the contentcaches middleware ----------------------------------------- */

/* contentcaches.originhost: the origin, kept as the one upstreams entry. */
static int walk_front_originhost(struct ctx *ctx, const struct ynode *value, const char *path)
{
    struct config *cfg = ctx->cfg;
    if (cfg->upstreams == NULL) {
        if ((cfg->upstreams = calloc(1, sizeof(*cfg->upstreams))) == NULL)
            return out_of_memory(ctx);
        cfg->n_upstreams = 1;
    }
    return walk_url(ctx, value, path, &cfg->upstreams[0].originhost, &cfg->upstreams[0].origin);
}

/* A user name: what a registry account may be called (no control bytes, no ':', which
 * Basic credentials cannot carry, at most 255 bytes). */
static bool is_user_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 255) return false;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f || *s == ':') return false;
    return true;
}

static const char user_expected[] =
    "a user name (1 to 255 bytes, no ':' and no control characters)";

static int add_admin(struct ctx *ctx, const char *name)
{
    struct config *cfg = ctx->cfg;
    char **grown = realloc(cfg->admins, (cfg->n_admins + 1) * sizeof(*grown));
    if (grown == NULL) return out_of_memory(ctx);
    cfg->admins = grown;
    if ((cfg->admins[cfg->n_admins] = strdup(name)) == NULL) return out_of_memory(ctx);
    cfg->n_admins++;
    return 0;
}

static int walk_admins(struct ctx *ctx, const struct ynode *value, const char *path)
{
    char q[128], item[PATH_LEN];
    int rc = check_list(ctx, value, path, "a list of user names");
    for (size_t i = 0; rc == 0 && !is_null(value) && i < value->n_items; i++) {
        const char *text = NULL;
        path_index(item, path, i);
        if ((rc = get_text(ctx, value->items[i], item, user_expected, &text)) != 0) break;
        if (!is_user_name(text))
            rc = fail_node(ctx, value->items[i], item, "expected %s, got %s", user_expected,
                           quote(text, q, sizeof(q)));
        else
            rc = add_admin(ctx, text);
    }
    return rc;
}

static int walk_front_username(struct ctx *ctx, const struct ynode *value, const char *path)
{
    char q[128];
    const char *text = NULL;
    if (is_null(value)) return 0;
    int rc = get_text(ctx, value, path, user_expected, &text);
    if (rc == 0 && !is_user_name(text))
        rc = fail_node(ctx, value, path, "expected %s, got %s", user_expected,
                       quote(text, q, sizeof(q)));
    if (rc == 0 && (ctx->cfg->front_username = strdup(text)) == NULL) rc = out_of_memory(ctx);
    return rc;
}

/* The password is never quoted back in a message. */
static int walk_front_password(struct ctx *ctx, const struct ynode *value, const char *path)
{
    const char *text = NULL;
    if (is_null(value)) return 0;
    int rc = get_text(ctx, value, path, "a password", &text);
    if (rc == 0 && (ctx->cfg->front_password = strdup(text)) == NULL) rc = out_of_memory(ctx);
    return rc;
}

static const char granttl_expected[] =
    "a positive integer with an optional unit (ns, us, ms, s, m, h), from 1s to 24h";

static int walk_granttl(struct ctx *ctx, const struct ynode *value, const char *path)
{
    char q[128];
    uint64_t ns = 0;
    if (is_null(value)) return 0;
    int rc = value->kind == YN_SCALAR ? config_parse_duration(value->text, &ns) : -EINVAL;
    if (rc != 0 || ns < CONFIG_GRANTTL_MIN_NS || ns > CONFIG_GRANTTL_MAX_NS)
        return fail_node(ctx, value, path, "expected %s, got %s", granttl_expected,
                         got(value, q, sizeof(q)));
    ctx->cfg->granttl_ns = ns;
    return 0;
}

static const struct field contentcaches_fields[] = {
    {.key = "originhost", .kind = F_HANDLER, .handler = walk_front_originhost},
    {.key = "cas", .kind = F_HANDLER, .handler = walk_cas},
    {.key = "admins", .kind = F_HANDLER, .handler = walk_admins},
    {.key = "username", .kind = F_HANDLER, .handler = walk_front_username},
    {.key = "password", .kind = F_HANDLER, .handler = walk_front_password},
    {.key = "granttl", .kind = F_HANDLER, .handler = walk_granttl},
    {.key = "policydir", .kind = F_HANDLER, .handler = walk_policydir},
    {.key = "workers", .kind = F_HANDLER, .handler = walk_workers},
    {0},
};
static const struct section contentcaches_section = {contentcaches_fields, NULL};

/* The contentcaches entry's options: walked, then checked for what they must hold. */
static int walk_contentcaches(struct ctx *ctx, const struct ynode *entry,
                              const struct ynode *options, const char *path)
{
    ctx->cfg->has_contentcaches = true;
    ctx->contentcaches_line = entry->line;
    ctx->contentcaches_node = options && !is_null(options) ? options : entry;
    path_key(ctx->contentcaches_path, path, "options");
    if (options == NULL) return 0;
    return walk_section(ctx, &contentcaches_section, options, ctx->contentcaches_path);
}

/* Environment overrides of the front's options (REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_*). */
#define FRONT_ENV_PREFIX "REGISTRY_MIDDLEWARE_REGISTRY_CONTENTCACHES_"

static bool is_front_env(const char *name)
{
    return strncmp(name, FRONT_ENV_PREFIX, strlen(FRONT_ENV_PREFIX)) == 0;
}

__attribute__((format(printf, 3, 4))) static int fail_env(struct ctx *ctx, const char *name,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fail_v(ctx, name, 0, 0, NULL, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int front_env_one(struct ctx *ctx, const char *name, const char *value)
{
    struct config *cfg = ctx->cfg;
    const char *key = name + strlen(FRONT_ENV_PREFIX);
    char q[128];
    struct url parsed;
    const char *why = NULL;
    uint64_t ns = 0;
    if (strcmp(key, "ORIGINHOST") == 0) {
        if (url_parse(value, &parsed, &why) != 0)
            return fail_env(ctx, name, "expected a fully qualified http or https URL, got %s: %s",
                            quote(value, q, sizeof(q)), why);
        char *copy = strdup(value);
        if (copy == NULL) return out_of_memory(ctx);
        if (cfg->upstreams == NULL &&
            (cfg->upstreams = calloc(1, sizeof(*cfg->upstreams))) == NULL) {
            free(copy);
            return out_of_memory(ctx);
        }
        cfg->n_upstreams = 1;
        free(cfg->upstreams[0].originhost);
        cfg->upstreams[0].originhost = copy;
        cfg->upstreams[0].origin = parsed;
    } else if (strcmp(key, "USERNAME") == 0 || strcmp(key, "PASSWORD") == 0) {
        bool user = key[0] == 'U';
        if (user && !is_user_name(value))
            return fail_env(ctx, name, "expected %s, got %s", user_expected,
                            quote(value, q, sizeof(q)));
        char *copy = strdup(value);
        if (copy == NULL) return out_of_memory(ctx);
        char **slot = user ? &cfg->front_username : &cfg->front_password;
        free(*slot);
        *slot = copy;
    } else if (strcmp(key, "GRANTTL") == 0) {
        if (config_parse_duration(value, &ns) != 0 || ns < CONFIG_GRANTTL_MIN_NS ||
            ns > CONFIG_GRANTTL_MAX_NS)
            return fail_env(ctx, name, "expected %s, got %s", granttl_expected,
                            quote(value, q, sizeof(q)));
        cfg->granttl_ns = ns;
    } else if (strcmp(key, "POLICYDIR") == 0) {
        if (value[0] != '/')
            return fail_env(ctx, name, "expected an absolute directory path, got %s",
                            quote(value, q, sizeof(q)));
        char *copy = strdup(value);
        if (copy == NULL) return out_of_memory(ctx);
        free(cfg->policydir);
        cfg->policydir = copy;
    } else if (strcmp(key, "ADMINS") == 0) {
        for (size_t i = 0; i < cfg->n_admins; i++)
            free(cfg->admins[i]);
        cfg->n_admins = 0;
        const char *p = value;
        while (*p) {
            size_t n = strcspn(p, ",");
            char one[256];
            while (n > 0 && *p == ' ')
                p++, n--;
            size_t m = n;
            while (m > 0 && p[m - 1] == ' ')
                m--;
            if (m == 0 || m >= sizeof(one))
                return fail_env(ctx, name, "expected a comma-separated list of user names, got %s",
                                quote(value, q, sizeof(q)));
            memcpy(one, p, m);
            one[m] = '\0';
            if (!is_user_name(one))
                return fail_env(ctx, name, "expected %s, got %s", user_expected,
                                quote(one, q, sizeof(q)));
            int rc = add_admin(ctx, one);
            if (rc != 0) return rc;
            p += n;
            if (*p == ',') p++;
        }
    } else {
        warn(ctx, "%s: environment variable not used by content-cache (ignored)", name);
    }
    return 0;
}

/* Applies the front's variables (a later assignment of a name wins, as for the others). */
static int apply_front_env(struct ctx *ctx, char *const *env)
{
    for (; env && *env; env++) {
        const char *eq = strchr(*env, '=');
        char name[128];
        size_t n = eq ? (size_t)(eq - *env) : 0;
        if (n == 0 || n >= sizeof(name)) continue;
        memcpy(name, *env, n);
        name[n] = '\0';
        if (!is_front_env(name)) continue;
        if (!ctx->cfg->has_contentcaches) {
            warn(ctx,
                 "%s: environment variable not used: the file names no contentcaches "
                 "middleware (ignored)",
                 name);
            continue;
        }
        if (eq[1] == '\0') continue; /* empty: the file's value stays */
        int rc = front_env_one(ctx, name, eq + 1);
        if (rc != 0) return rc;
    }
    return 0;
}

/* What the front's options must hold once the file and the environment are read. */
static int check_front(struct ctx *ctx)
{
    struct config *cfg = ctx->cfg;
    const struct ynode *where = ctx->contentcaches_node;
    char child[PATH_LEN];
    if (cfg->n_upstreams == 0 || cfg->upstreams[0].originhost == NULL) {
        path_key(child, ctx->contentcaches_path, "originhost");
        return fail_node(ctx, where, child,
                         "missing: expected a fully qualified http or https URL of the origin "
                         "registry");
    }
    if ((cfg->front_username == NULL) != (cfg->front_password == NULL))
        return fail_node(ctx, where, ctx->contentcaches_path,
                         "username and password go together (the front's pull-only account at "
                         "the origin), %s is missing",
                         cfg->front_username ? "password" : "username");
    return 0;
}

static const struct field downstream_fields[] = {
    {.key = "diskbudget", .kind = F_HANDLER, .handler = walk_diskbudget},
    {.key = "upstreamtimeouts", .kind = F_HANDLER, .handler = walk_upstreamtimeouts},
    {.key = "blobttl", .kind = F_HANDLER, .handler = walk_blobttl},
    {.key = "upstreams", .kind = F_HANDLER, .handler = walk_upstreams},
    {.key = "cas", .kind = F_HANDLER, .handler = walk_cas},
    {.key = "policydir", .kind = F_HANDLER, .handler = walk_policydir},
    {.key = "workers", .kind = F_HANDLER, .handler = walk_workers},
    {0},
};
static const struct section downstream_section = {downstream_fields, NULL};

/* One middleware.registry entry: {name, options, disabled}. */
static int walk_middleware(struct ctx *ctx, const struct ynode *entry, const char *path)
{
    struct config *cfg = ctx->cfg;
    char q[128], child[PATH_LEN];
    const char *name = NULL;
    if (entry->kind != YN_MAP)
        return fail_node(ctx, entry, path, "expected a map with name and options, got %s",
                         got(entry, q, sizeof(q)));
    int rc = check_map(ctx, entry, path);
    if (rc != 0) return rc;
    const struct ynode *name_node = map_get(entry, "name");
    const struct ynode *disabled_node = map_get(entry, "disabled");
    const struct ynode *options = map_get(entry, "options");
    bool disabled = false;
    path_key(child, path, "name");
    if (name_node == NULL)
        return fail_node(ctx, entry, child, "missing: expected the middleware's name");
    if ((rc = get_text(ctx, name_node, child, "the middleware's name", &name)) != 0) return rc;
    if (disabled_node && !is_null(disabled_node)) {
        path_key(child, path, "disabled");
        if (disabled_node->kind != YN_SCALAR || parse_bool(disabled_node->text, &disabled) != 0)
            return fail_node(ctx, disabled_node, child,
                             "expected a boolean (true or false), got %s",
                             got(disabled_node, q, sizeof(q)));
    }
    bool front = strcmp(name, "contentcaches") == 0;
    if (strcmp(name, "downstream") != 0 && !front) {
        warn(ctx, "%s:%u: %s: middleware %s is not supported by content-cache (ignored)", ctx->file,
             entry->line, path, quote(name, q, sizeof(q)));
        return 0;
    }
    if (disabled) {
        warn(ctx, "%s:%u: %s: the %s middleware is disabled (ignored)", ctx->file, entry->line,
             path, name);
        return 0;
    }
    if (front ? cfg->has_contentcaches : cfg->has_downstream)
        return fail_node(ctx, entry, path, "a second %s middleware (the first is at line %u)", name,
                         front ? ctx->contentcaches_line : ctx->downstream_line);
    if (front ? cfg->has_downstream : cfg->has_contentcaches)
        return fail_node(ctx, entry, path,
                         "a %s middleware (line %u) and a %s middleware (line %u) in one file: "
                         "a process is either a cache (downstream) or the front (contentcaches)",
                         front ? "downstream" : "contentcaches",
                         front ? ctx->downstream_line : ctx->contentcaches_line, name, entry->line);
    for (size_t i = 0; i + 1 < entry->n_items; i += 2) {
        const char *key = entry->items[i]->text;
        if (strcmp(key, "name") != 0 && strcmp(key, "options") != 0 &&
            strcmp(key, "disabled") != 0) {
            path_key(child, path, key);
            warn_unknown(ctx, entry->items[i], child);
        }
    }
    if (front) return walk_contentcaches(ctx, entry, options, path);
    cfg->has_downstream = true;
    ctx->downstream_line = entry->line;
    path_key(child, path, "options");
    if (options && (rc = walk_section(ctx, &downstream_section, options, child)) != 0) return rc;
    if (cfg->n_upstreams == 0) {
        const struct ynode *where = options && !is_null(options) ? options : entry;
        char upstreams[PATH_LEN];
        path_key(upstreams, child, "upstreams");
        return fail_node(
            ctx, where, upstreams,
            "missing: expected a non-empty list of upstreams, each with an originhost");
    }
    return 0;
}

static int walk_registry(struct ctx *ctx, const struct ynode *value, const char *path)
{
    char item[PATH_LEN];
    ctx->registry_node = value;
    int rc = check_list(ctx, value, path, "a list of middleware entries (name, options)");
    for (size_t i = 0; rc == 0 && !is_null(value) && i < value->n_items; i++) {
        path_index(item, path, i);
        rc = walk_middleware(ctx, value->items[i], item);
    }
    return rc;
}

static void warn_storage_key(struct ctx *ctx, const struct ynode *key, const char *path)
{
    static const char *const not_drivers[] = {"cache", "maintenance", "redirect", "tag"};
    for (size_t i = 0; i < sizeof(not_drivers) / sizeof(not_drivers[0]); i++) {
        if (strcmp(key->text, not_drivers[i]) == 0) {
            warn_unknown(ctx, key, path);
            return;
        }
    }
    warn(ctx, "%s:%u: %s: only the filesystem storage driver is supported (ignored)", ctx->file,
         key->line, path);
}

static void warn_auth_key(struct ctx *ctx, const struct ynode *key, const char *path)
{
    warn(ctx, "%s:%u: %s: only auth.token is supported by content-cache (ignored)", ctx->file,
         key->line, path);
}

#define STRING(name, member)                                                                       \
    {                                                                                              \
        .key = name, .kind = F_STRING, .offset = offsetof(struct config, member)                   \
    }

static const struct choice log_levels[] = {
    {"error", NULL, NULL}, {"warn", NULL, NULL},  {"warning", "warn", NULL},
    {"info", NULL, NULL},  {"debug", NULL, NULL}, {NULL, NULL, NULL},
};
static const struct choice log_formatters[] = {
    {"text", NULL, NULL},
    {"json", NULL, NULL},
    {"logstash", "json", "the logstash formatter is written as json"},
    {NULL, NULL, NULL},
};
static const struct choice tls_versions[] = {
    {"tls1.2", NULL, NULL}, {"tls1.3", NULL, NULL}, {NULL, NULL, NULL}};

static const struct field log_fields[] = {
    {.key = "level",
     .kind = F_CHOICE,
     .offset = offsetof(struct config, log_level),
     .choices = log_levels,
     .expected = "one of error, warn, info, debug"},
    {.key = "formatter",
     .kind = F_CHOICE,
     .offset = offsetof(struct config, log_formatter),
     .choices = log_formatters,
     .expected = "one of text, json"},
    {.key = "fields", .kind = F_HANDLER, .handler = walk_log_fields},
    {0},
};
static const struct section log_section = {log_fields, NULL};

static const struct field filesystem_fields[] = {STRING("rootdirectory", storage_root), {0}};
static const struct section filesystem_section = {filesystem_fields, NULL};
static const struct field delete_fields[] = {
    {.key = "enabled", .kind = F_BOOL, .offset = offsetof(struct config, delete_enabled)},
    {0},
};
static const struct section delete_section = {delete_fields, NULL};
static const struct field storage_fields[] = {
    {.key = "filesystem", .kind = F_SECTION, .section = &filesystem_section},
    {.key = "delete", .kind = F_SECTION, .section = &delete_section},
    {0},
};
static const struct section storage_section = {storage_fields, warn_storage_key};

static const struct field tls_fields[] = {
    STRING("certificate", http_tls_certificate),
    STRING("key", http_tls_key),
    {.key = "minimumtls",
     .kind = F_CHOICE,
     .offset = offsetof(struct config, http_tls_minimumtls),
     .choices = tls_versions,
     .expected = "tls1.2 or tls1.3"},
    {0},
};
static const struct section tls_section = {tls_fields, NULL};
static const struct field debug_fields[] = {STRING("addr", http_debug_addr), {0}};
static const struct section debug_section = {debug_fields, NULL};
static const struct field http_fields[] = {
    STRING("addr", http_addr),
    STRING("host", http_host),
    STRING("secret", http_secret),
    {.key = "draintimeout",
     .kind = F_DURATION,
     .offset = offsetof(struct config, http_draintimeout_ns)},
    {.key = "headers", .kind = F_HANDLER, .handler = walk_http_headers},
    /* Our extension: the client connections of the process, over its loops. */
    {.key = "maxconnections",
     .kind = F_WHOLE,
     .offset = offsetof(struct config, http_maxconnections),
     .max = CONFIG_MAXCONNECTIONS_MAX,
     .expected = "a whole number of connections from 1 to 1048576"},
    {.key = "tls", .kind = F_SECTION, .section = &tls_section},
    {.key = "debug", .kind = F_SECTION, .section = &debug_section},
    {0},
};
static const struct section http_section = {http_fields, NULL};

static const struct field token_fields[] = {
    STRING("realm", auth_token_realm),
    STRING("service", auth_token_service),
    STRING("issuer", auth_token_issuer),
    STRING("rootcertbundle", auth_token_rootcertbundle),
    {0},
};
static const struct section token_section = {token_fields, NULL};
static const struct field auth_fields[] = {
    {.key = "token", .kind = F_SECTION, .section = &token_section},
    {0},
};
static const struct section auth_section = {auth_fields, warn_auth_key};

static const struct field middleware_fields[] = {
    {.key = "registry", .kind = F_HANDLER, .handler = walk_registry},
    {0},
};
static const struct section middleware_section = {middleware_fields, NULL};

static const struct field root_fields[] = {
    {.key = "version", .kind = F_HANDLER, .handler = walk_version},
    {.key = "log", .kind = F_SECTION, .section = &log_section},
    {.key = "storage", .kind = F_SECTION, .section = &storage_section},
    {.key = "http", .kind = F_SECTION, .section = &http_section},
    {.key = "auth", .kind = F_SECTION, .section = &auth_section},
    {.key = "middleware", .kind = F_SECTION, .section = &middleware_section},
    {0},
};
static const struct section root_section = {root_fields, NULL};

/* ---- Step 3: the environment --------------------------------------------------------- */

/*
 * Finds the scalar key whose variable (REGISTRY_ and the path, upper case, '_' between
 * levels) is `name`, writing its dotted path into path.
 */
static const struct field *env_field(const struct section *section, const char *prefix,
                                     const char *parent, const char *name, char *path)
{
    for (const struct field *f = section->fields; f->key; f++) {
        char var[128], dotted[PATH_LEN];
        size_t n = (size_t)snprintf(var, sizeof(var), "%s_%s", prefix, f->key);
        for (size_t i = 0; i < n; i++)
            var[i] = (var[i] >= 'a' && var[i] <= 'z') ? (char)(var[i] - 'a' + 'A') : var[i];
        path_key(dotted, parent, f->key);
        if (f->kind == F_SECTION) {
            if (strncmp(name, var, n) == 0 && name[n] == '_') {
                const struct field *found = env_field(f->section, var, dotted, name, path);
                if (found) return found;
            }
        } else if (f->kind != F_HANDLER && strcmp(name, var) == 0) {
            snprintf(path, PATH_LEN, "%s", dotted);
            return f;
        }
    }
    return NULL;
}

static void apply_env(struct ctx *ctx, char *const *env)
{
    for (; env && *env; env++) {
        const char *eq = strchr(*env, '=');
        char name[64], path[PATH_LEN];
        size_t n = eq ? (size_t)(eq - *env) : 0;
        if (n == 0 || n >= sizeof(name) || strncmp(*env, "REGISTRY_", 9) != 0) continue;
        memcpy(name, *env, n);
        name[n] = '\0';
        if (is_front_env(name)) continue; /* apply_front_env's */
        const struct field *field = env_field(&root_section, "REGISTRY", "", name, path);
        struct pending *p = field ? pending_slot(ctx, field) : NULL;
        if (p == NULL) {
            warn(ctx, "%s: environment variable not used by content-cache (ignored)", name);
            continue;
        }
        p->text = eq + 1;
        snprintf(p->path, sizeof(p->path), "%s", path);
        snprintf(p->env, sizeof(p->env), "%s", name);
        p->line = p->col = 0;
    }
}

/* ---- Step 4: conversion and the checks across keys ----------------------------------- */

static int set_string(struct ctx *ctx, size_t offset, const char *text)
{
    char **member = (char **)((char *)ctx->cfg + offset);
    char *copy = strdup(text);
    if (copy == NULL) return out_of_memory(ctx);
    free(*member);
    *member = copy;
    return 0;
}

static int convert(struct ctx *ctx, const struct pending *p)
{
    const struct field *f = p->field;
    void *member = (char *)ctx->cfg + f->offset;
    char q[128];
    if (*p->text == '\0') return 0; /* null or empty: the default stays */
    quote(p->text, q, sizeof(q));
    switch (f->kind) {
    case F_STRING:
        return set_string(ctx, f->offset, p->text);
    case F_BOOL:
        if (parse_bool(p->text, member) != 0)
            return fail_pending(ctx, p, "expected %s, got %s", field_expected(f), q);
        return 0;
    case F_DURATION: {
        int rc = config_parse_duration(p->text, member);
        if (rc != 0)
            return fail_pending(ctx, p, "expected %s, got %s%s", field_expected(f), q,
                                duration_problem(rc, p->text));
        return 0;
    }
    case F_CHOICE:
        for (const struct choice *c = f->choices; c->text; c++) {
            if (strcasecmp(c->text, p->text) != 0) continue;
            if (c->warning && p->env[0])
                warn(ctx, "%s: %s", p->env, c->warning);
            else if (c->warning)
                warn(ctx, "%s:%u: %s: %s", ctx->file, p->line, p->path, c->warning);
            return set_string(ctx, f->offset, c->value ? c->value : c->text);
        }
        return fail_pending(ctx, p, "expected %s, got %s", f->expected, q);
    case F_WHOLE: {
        unsigned long n;
        if (whole_number(p->text, f->max, &n) != WHOLE_OK)
            return fail_pending(ctx, p, "expected %s, got %s", f->expected, q);
        *(unsigned *)member = (unsigned)n;
        return 0;
    }
    default:
        return 0;
    }
}

static const struct pending *pending_of(const struct ctx *ctx, size_t offset)
{
    for (size_t i = 0; i < ctx->n_pending; i++)
        if (ctx->pending[i].field->offset == offset && ctx->pending[i].field->kind == F_STRING &&
            *ctx->pending[i].text)
            return &ctx->pending[i];
    return NULL;
}

static int check_auth_token(struct ctx *ctx)
{
    static const size_t offsets[] = {offsetof(struct config, auth_token_realm),
                                     offsetof(struct config, auth_token_service),
                                     offsetof(struct config, auth_token_issuer),
                                     offsetof(struct config, auth_token_rootcertbundle)};
    static const char *const names[] = {"realm", "service", "issuer", "rootcertbundle"};
    const struct ynode *section = section_node(ctx, &token_section);
    const struct pending *set = NULL;
    char missing[64] = "";
    for (size_t i = 0; i < 4; i++) {
        const struct pending *p = pending_of(ctx, offsets[i]);
        if (p && set == NULL) set = p;
        if (p == NULL)
            snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), "%s%s",
                     *missing ? ", " : "", names[i]);
    }
    if (*missing == '\0' || (section == NULL && set == NULL)) return 0;
    if (section)
        return fail_node(ctx, section, "auth.token",
                         "expected realm, service, issuer and rootcertbundle, missing %s", missing);
    return fail_pending(ctx, set,
                        "auth.token: expected realm, service, issuer and rootcertbundle, "
                        "missing %s",
                        missing);
}

static int check_tls_pair(struct ctx *ctx)
{
    const struct pending *cert = pending_of(ctx, offsetof(struct config, http_tls_certificate));
    const struct pending *key = pending_of(ctx, offsetof(struct config, http_tls_key));
    if ((cert == NULL) == (key == NULL)) return 0;
    return fail_pending(ctx, cert ? cert : key,
                        "http.tls needs both certificate and key, %s is missing",
                        cert ? "key" : "certificate");
}

static int check_across_keys(struct ctx *ctx)
{
    struct config *cfg = ctx->cfg;
    int rc;
    if (cfg->has_contentcaches) return check_front(ctx);
    if (!cfg->has_downstream) {
        const struct ynode *where = ctx->registry_node ? ctx->registry_node : ctx->root;
        return fail_node(ctx, where, "middleware.registry",
                         "no downstream middleware: nothing to cache from (a front names a "
                         "contentcaches middleware instead)");
    }
    if (cfg->has_blobttl && !cfg->delete_enabled) {
        return fail_at(ctx, ctx->blobttl_line, ctx->blobttl_col, ctx->blobttl_path,
                       "blobttl requires storage.delete.enabled: true "
                       "(expired blobs are deleted)");
    }
    if ((rc = check_tls_pair(ctx)) != 0) return rc;
    return check_auth_token(ctx);
}

/* ---- The API ------------------------------------------------------------------------- */

static struct config *config_new(const char *filename)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) return NULL;
    cfg->file = strdup(filename);
    cfg->storage_root = strdup("/var/lib/registry");
    cfg->http_addr = strdup(":5000");
    cfg->log_level = strdup("info");
    cfg->log_formatter = strdup("text");
    cfg->http_tls_minimumtls = strdup("tls1.2");
    cfg->granttl_ns = CONFIG_GRANTTL_DEFAULT_NS;
    if (!cfg->file || !cfg->storage_root || !cfg->http_addr || !cfg->log_level ||
        !cfg->log_formatter || !cfg->http_tls_minimumtls) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

static int parse(struct ctx *ctx, const char *data, size_t len, char *const *env)
{
    int rc;
    if (len > CONFIG_MAX_BYTES) {
        snprintf(ctx->err, ctx->errlen, "%s: larger than %d bytes", ctx->file, CONFIG_MAX_BYTES);
        return -EINVAL;
    }
    if ((rc = tree_load(ctx, data, len)) != 0) return rc;
    if (ctx->root == NULL || is_null(ctx->root)) {
        struct ynode start = {.line = 1, .col = 1};
        return fail_node(ctx, ctx->root ? ctx->root : &start, "version",
                         "expected 0.1, got an empty document");
    }
    if (ctx->root->kind != YN_MAP)
        return fail_node(ctx, ctx->root, NULL, "expected a map of configuration keys, got %s",
                         kind_name(ctx->root));
    if ((rc = walk_section(ctx, &root_section, ctx->root, "")) != 0) return rc;
    if (!ctx->version_ok)
        return fail_node(ctx, ctx->root, "version", "expected 0.1, but the key is missing");
    apply_env(ctx, env);
    for (size_t i = 0; i < ctx->n_pending; i++)
        if ((rc = convert(ctx, &ctx->pending[i])) != 0) return rc;
    if ((rc = apply_front_env(ctx, env)) != 0) return rc;
    if ((rc = check_across_keys(ctx)) != 0) return rc;
    if (ctx->n_warnings_dropped) {
        size_t dropped = ctx->n_warnings_dropped;
        ctx->cfg->n_warnings--; /* make room for the count */
        free(ctx->cfg->warnings[ctx->cfg->n_warnings]);
        warn(ctx, "%s: %zu more warnings not shown", ctx->file, dropped + 1);
    }
    return 0;
}

int config_parse(const char *filename, const char *data, size_t len, char *const *env,
                 struct config **out, char *err, size_t errlen)
{
    char scratch[1];
    struct ctx ctx = {
        .file = filename ? filename : "config",
        .err = errlen ? err : scratch,
        .errlen = errlen ? errlen : sizeof(scratch),
        .budget = CONFIG_MAX_VALUES,
    };
    ctx.err[0] = '\0';
    *out = NULL;
    if ((ctx.cfg = config_new(ctx.file)) == NULL) return out_of_memory(&ctx);
    if (data == NULL) data = "", len = 0;
    ctx.data = data;
    ctx.len = len;
    int rc = parse(&ctx, data, len, env);
    nodes_free(&ctx);
    if (rc != 0) {
        config_free(ctx.cfg);
        return rc;
    }
    *out = ctx.cfg;
    return 0;
}

/* Reads at most `max` bytes of a file; -EFBIG when it holds more. */
static int read_file(const char *path, size_t max, char **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -errno;
    char *buf = malloc(max + 1);
    if (buf == NULL) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(buf, 1, max + 1, f);
    int rc = ferror(f) ? -(errno ? errno : EIO) : 0;
    fclose(f);
    if (rc == 0 && n > max) rc = -EFBIG;
    if (rc != 0) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return 0;
}

int config_load(const char *path, char *const *env, struct config **out, char *err, size_t errlen)
{
    char *data;
    size_t len;
    *out = NULL;
    int rc = read_file(path, CONFIG_MAX_BYTES, &data, &len);
    if (rc == -EFBIG) {
        snprintf(err, errlen, "%s: larger than %d bytes", path, CONFIG_MAX_BYTES);
        return rc;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    rc = config_parse(path, data, len, env, out, err, errlen);
    free(data);
    return rc;
}

/* Checks that a file can be read and holds `marker` (NULL: only readable). */
static int check_file(const char *what, const char *path, const char *marker, char *err,
                      size_t errlen)
{
    char *data;
    size_t len;
    int rc = read_file(path, PEM_MAX_BYTES, &data, &len);
    if (rc != 0) {
        snprintf(err, errlen, "%s %s: cannot read: %s", what, path, strerror(-rc));
        return -EINVAL;
    }
    bool found = marker == NULL || memmem(data, len, marker, strlen(marker)) != NULL;
    free(data);
    if (!found) {
        snprintf(err, errlen, "%s %s: no \"%s\" in the file: expected PEM text", what, path,
                 marker);
        return -EINVAL;
    }
    return 0;
}

int config_check_files(const struct config *cfg, char *err, size_t errlen)
{
    static const char cert[] = "-----BEGIN CERTIFICATE-----";
    int rc = 0;
    for (size_t i = 0; i < cfg->n_cas && rc == 0; i++)
        rc = check_file("cas", cfg->cas[i], cert, err, errlen);
    if (rc == 0 && cfg->http_tls_certificate)
        rc = check_file("http.tls.certificate", cfg->http_tls_certificate, cert, err, errlen);
    if (rc == 0 && cfg->http_tls_key)
        rc = check_file("http.tls.key", cfg->http_tls_key, "-----BEGIN", err, errlen);
    if (rc == 0 && cfg->auth_token_rootcertbundle)
        rc = check_file("auth.token.rootcertbundle", cfg->auth_token_rootcertbundle, cert, err,
                        errlen);
    struct stat st;
    if (rc == 0 && cfg->policydir && (stat(cfg->policydir, &st) != 0 || !S_ISDIR(st.st_mode))) {
        snprintf(err, errlen, "policydir %s: not a directory", cfg->policydir);
        rc = -EINVAL;
    }
    return rc;
}

static void free_strings(char **list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        free(list[i]);
    free(list);
}

void config_free(struct config *cfg)
{
    if (cfg == NULL) return;
    char **strings[] = {&cfg->file,
                        &cfg->log_level,
                        &cfg->log_formatter,
                        &cfg->storage_root,
                        &cfg->http_addr,
                        &cfg->http_host,
                        &cfg->http_secret,
                        &cfg->http_tls_certificate,
                        &cfg->http_tls_key,
                        &cfg->http_tls_minimumtls,
                        &cfg->http_debug_addr,
                        &cfg->auth_token_realm,
                        &cfg->auth_token_service,
                        &cfg->auth_token_issuer,
                        &cfg->auth_token_rootcertbundle,
                        &cfg->policydir,
                        &cfg->front_username,
                        &cfg->front_password};
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
        free(*strings[i]);
    for (size_t i = 0; cfg->log_fields && i < cfg->n_log_fields; i++) {
        free(cfg->log_fields[i].key);
        free(cfg->log_fields[i].value);
    }
    free(cfg->log_fields);
    for (size_t i = 0; cfg->http_headers && i < cfg->n_http_headers; i++) {
        free(cfg->http_headers[i].name);
        free_strings(cfg->http_headers[i].values, cfg->http_headers[i].n_values);
    }
    free(cfg->http_headers);
    for (size_t i = 0; cfg->upstreams && i < cfg->n_upstreams; i++) {
        free(cfg->upstreams[i].originhost);
        free_strings(cfg->upstreams[i].upstreamhosts, cfg->upstreams[i].n_upstreamhosts);
        free(cfg->upstreams[i].upstream_urls);
    }
    free(cfg->upstreams);
    free_strings(cfg->cas, cfg->n_cas);
    free_strings(cfg->admins, cfg->n_admins);
    free_strings(cfg->warnings, cfg->n_warnings);
    free(cfg);
}

int config_parse_duration(const char *text, uint64_t *ns)
{
    static const struct {
        const char *suffix;
        uint64_t ns;
    } units[] = {{"", 1},
                 {"ns", 1},
                 {"us", 1000},
                 {"ms", 1000000},
                 {"s", 1000000000},
                 {"m", 60000000000ULL},
                 {"h", 3600000000000ULL}};
    uint64_t value = 0;
    bool overflow = false;
    const char *p = text;
    if (p == NULL || *p < '0' || *p > '9') return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (value > (UINT64_MAX - digit) / 10)
            overflow = true;
        else
            value = value * 10 + digit;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].suffix) != 0) continue;
        if (overflow || value > UINT64_MAX / units[i].ns || value == 0) return -ERANGE;
        *ns = value * units[i].ns;
        return 0;
    }
    return -EINVAL;
}

void config_format_duration(uint64_t ns, char *buf, size_t len)
{
    static const struct {
        uint64_t ns;
        const char *unit;
    } units[] = {{3600000000000ULL, "h"}, {60000000000ULL, "m"}, {1000000000ULL, "s"},
                 {1000000ULL, "ms"},      {1000ULL, "us"},       {1ULL, "ns"}};
    for (size_t i = 0; i < sizeof(units) / sizeof(*units); i++) {
        if (ns != 0 && ns % units[i].ns == 0) {
            snprintf(buf, len, "%llu%s", (unsigned long long)(ns / units[i].ns), units[i].unit);
            return;
        }
    }
    snprintf(buf, len, "%lluns", (unsigned long long)ns);
}
