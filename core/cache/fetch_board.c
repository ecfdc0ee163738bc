/*
 * fetch_board.c: the fetches of one process's loops, by digest. See fetch_board.h.
 */
#include "cache/fetch_board.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/digest.h"

struct fetch_board_claim {
    struct fetch_board *board;
    struct fetch_board_claim *next; /* the index, while the owner holds it */
    bool indexed;
    bool owned; /* the owner has not released it */
    char hex[DIGEST_SHA256_HEX_LEN + 1];
    int fd; /* the board's copy of the owner's file, or -1 */
    struct fetch_board_view view;
    struct fetch_board_follower *followers;
};

struct fetch_board {
    pthread_mutex_t lock;
    struct fetch_board_claim *index; /* claims whose owner runs; few at a time */
};

struct fetch_board *fetch_board_new(void)
{
    struct fetch_board *b = calloc(1, sizeof(*b));
    if (b != NULL) pthread_mutex_init(&b->lock, NULL);
    return b;
}

void fetch_board_free(struct fetch_board *b)
{
    if (b == NULL) return;
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static struct fetch_board_claim *find(struct fetch_board *b, const char *hex)
{
    for (struct fetch_board_claim *c = b->index; c != NULL; c = c->next)
        if (memcmp(c->hex, hex, DIGEST_SHA256_HEX_LEN) == 0) return c;
    return NULL;
}

static void unindex(struct fetch_board_claim *c)
{
    if (!c->indexed) return;
    for (struct fetch_board_claim **at = &c->board->index; *at != NULL; at = &(*at)->next)
        if (*at == c) {
            *at = c->next;
            break;
        }
    c->indexed = false;
}

/* With the lock held: frees c once nobody holds it. */
static void maybe_free(struct fetch_board_claim *c)
{
    if (c->owned || c->followers != NULL) return;
    unindex(c);
    if (c->fd >= 0) close(c->fd);
    free(c);
}

int fetch_board_claim(struct fetch_board *b, const char *hex, struct fetch_board_claim **out)
{
    struct fetch_board_claim *c = NULL;
    int rc = 0;
    pthread_mutex_lock(&b->lock);
    if (find(b, hex) != NULL) {
        rc = -EEXIST;
    } else if ((c = calloc(1, sizeof(*c))) == NULL) {
        rc = -ENOMEM;
    } else {
        c->board = b;
        c->owned = true;
        c->fd = -1;
        c->view.size = -1;
        memcpy(c->hex, hex, DIGEST_SHA256_HEX_LEN);
        c->next = b->index;
        b->index = c;
        c->indexed = true;
    }
    pthread_mutex_unlock(&b->lock);
    *out = c;
    return rc;
}

int fetch_board_set_fd(struct fetch_board_claim *c, int fd)
{
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return -errno;
    pthread_mutex_lock(&c->board->lock);
    int old = c->fd;
    c->fd = copy;
    pthread_mutex_unlock(&c->board->lock);
    if (old >= 0) close(old);
    return 0;
}

static bool same_view(const struct fetch_board_view *a, const struct fetch_board_view *b)
{
    return a->size == b->size && a->written == b->written && a->head_seen == b->head_seen &&
           a->verified == b->verified && a->done == b->done && a->failed == b->failed &&
           a->moved == b->moved && a->refused == b->refused;
}

void fetch_board_publish(struct fetch_board_claim *c, const struct fetch_board_view *v)
{
    pthread_mutex_lock(&c->board->lock);
    if (!same_view(&c->view, v)) {
        c->view = *v;
        if (!v->failed) c->view.error[0] = '\0';
        for (struct fetch_board_follower *fl = c->followers; fl != NULL; fl = fl->next)
            uv_async_send(fl->wake);
    }
    pthread_mutex_unlock(&c->board->lock);
}

void fetch_board_release(struct fetch_board_claim *c)
{
    pthread_mutex_lock(&c->board->lock);
    struct fetch_board *b = c->board;
    unindex(c);
    c->owned = false;
    if (!c->view.done && !c->view.failed && !c->view.moved) {
        /* Released without a last word: its followers cannot go on. */
        c->view.failed = true;
        strcpy(c->view.error, "the loop that fetched it stopped");
        for (struct fetch_board_follower *fl = c->followers; fl != NULL; fl = fl->next)
            uv_async_send(fl->wake);
    }
    maybe_free(c);
    pthread_mutex_unlock(&b->lock);
}

int fetch_board_follow(struct fetch_board *b, const char *hex, struct fetch_board_follower *fl)
{
    pthread_mutex_lock(&b->lock);
    struct fetch_board_claim *c = find(b, hex);
    if (c != NULL) {
        fl->claim = c;
        fl->next = c->followers;
        c->followers = fl;
    }
    pthread_mutex_unlock(&b->lock);
    return c != NULL ? 0 : -ENOENT;
}

void fetch_board_read(struct fetch_board_follower *fl, struct fetch_board_view *v, int *fd)
{
    struct fetch_board_claim *c = fl->claim;
    pthread_mutex_lock(&c->board->lock);
    *v = c->view;
    if (*fd < 0 && c->fd >= 0) *fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
    pthread_mutex_unlock(&c->board->lock);
}

void fetch_board_unfollow(struct fetch_board_follower *fl)
{
    struct fetch_board_claim *c = fl->claim;
    if (c == NULL) return;
    struct fetch_board *b = c->board;
    pthread_mutex_lock(&b->lock);
    for (struct fetch_board_follower **at = &c->followers; *at != NULL; at = &(*at)->next)
        if (*at == fl) {
            *at = fl->next;
            break;
        }
    fl->claim = NULL;
    maybe_free(c);
    pthread_mutex_unlock(&b->lock);
}
