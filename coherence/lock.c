/* lock.c — FIFO byte-range lock table (lock.h).
 *
 * Records live in one array allocated at init; free ones form a stack.
 * Each object's records hang, in arrival order, on the list of the hash
 * bucket of its oid (several objects may share a bucket; walks filter by
 * oid). Arrival order within an object is what FIFO fairness needs. */
#include "lock.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#define NIL UINT32_MAX

struct rec {
	struct coh_lock_req r;
	bool granted;
	uint32_t next; /* bucket list, arrival order; or free stack */
};

struct coh_locktab {
	struct rec *recs;
	uint32_t *head, *tail; /* per bucket */
	uint32_t nbuckets;     /* a power of two */
	uint32_t free_top;
	uint32_t used, granted, max;
};

int coh_lock_init(struct coh_locktab **out, uint32_t max_locks)
{
	struct coh_locktab *lt;
	uint32_t nb = 1;

	if (max_locks == 0 || max_locks > (1u << 28))
		return -EINVAL;
	while (nb < max_locks)
		nb <<= 1;
	lt = calloc(1, sizeof *lt);
	if (!lt)
		return -ENOMEM;
	lt->recs = calloc(max_locks, sizeof *lt->recs);
	lt->head = malloc(nb * sizeof *lt->head);
	lt->tail = malloc(nb * sizeof *lt->tail);
	if (!lt->recs || !lt->head || !lt->tail) {
		coh_lock_free(lt);
		return -ENOMEM;
	}
	lt->nbuckets = nb;
	lt->max = max_locks;
	for (uint32_t i = 0; i < nb; i++)
		lt->head[i] = lt->tail[i] = NIL;
	for (uint32_t i = 0; i < max_locks; i++)
		lt->recs[i].next = i + 1 < max_locks ? i + 1 : NIL;
	lt->free_top = 0;
	*out = lt;
	return 0;
}

void coh_lock_free(struct coh_locktab *lt)
{
	if (!lt)
		return;
	free(lt->recs);
	free(lt->head);
	free(lt->tail);
	free(lt);
}

static uint32_t bucket_of(const struct coh_locktab *lt, uint64_t oid)
{
	uint64_t h = oid * 0x9e3779b97f4a7c15ull;
	return (uint32_t)(h >> 32) & (lt->nbuckets - 1);
}

static bool overlap(const struct coh_lock_req *a, const struct coh_lock_req *b)
{
	return a->oid == b->oid && a->offset < b->offset + b->length &&
	       b->offset < a->offset + a->length;
}

static bool conflict(const struct coh_lock_req *a, const struct coh_lock_req *b)
{
	return overlap(a, b) && (a->exclusive || b->exclusive);
}

/* Whether `r` may be granted behind the records before position `stop` of
 * its bucket (every earlier record of the object, granted or not). */
static bool may_grant(const struct coh_locktab *lt, uint32_t b,
                      const struct coh_lock_req *r, uint32_t stop)
{
	for (uint32_t i = lt->head[b]; i != stop && i != NIL; i = lt->recs[i].next)
		if (conflict(&lt->recs[i].r, r))
			return false;
	return true;
}

int coh_lock_acquire(struct coh_locktab *lt, const struct coh_lock_req *r,
                     bool try_only)
{
	uint32_t b = bucket_of(lt, r->oid), i;
	bool now;

	if (r->length == 0 || r->offset + r->length < r->offset)
		return -EINVAL;
	for (i = lt->head[b]; i != NIL; i = lt->recs[i].next)
		if (lt->recs[i].r.owner == r->owner && conflict(&lt->recs[i].r, r))
			return -EDEADLK;
	now = may_grant(lt, b, r, NIL);
	if (!now && try_only)
		return -EAGAIN;
	if (lt->free_top == NIL)
		return -ENOSPC;

	i = lt->free_top;
	lt->free_top = lt->recs[i].next;
	lt->recs[i].r = *r;
	lt->recs[i].granted = now;
	lt->recs[i].next = NIL;
	if (lt->tail[b] == NIL)
		lt->head[b] = i;
	else
		lt->recs[lt->tail[b]].next = i;
	lt->tail[b] = i;
	lt->used++;
	if (now)
		lt->granted++;
	return now ? 0 : 1;
}

/* Unlinks record i (whose predecessor in bucket b is prev) and frees it. */
static void unlink_rec(struct coh_locktab *lt, uint32_t b, uint32_t prev,
                       uint32_t i)
{
	uint32_t next = lt->recs[i].next;

	if (prev == NIL)
		lt->head[b] = next;
	else
		lt->recs[prev].next = next;
	if (lt->tail[b] == i)
		lt->tail[b] = prev;
	if (lt->recs[i].granted)
		lt->granted--;
	lt->used--;
	lt->recs[i].next = lt->free_top;
	lt->free_top = i;
}

/* Grants, in arrival order, every waiting record of bucket b that may go. */
static void regrant(struct coh_locktab *lt, uint32_t b, coh_lock_grant_fn fn,
                    void *ctx)
{
	for (uint32_t i = lt->head[b]; i != NIL; i = lt->recs[i].next) {
		struct rec *x = &lt->recs[i];
		if (x->granted || !may_grant(lt, b, &x->r, i))
			continue;
		x->granted = true;
		lt->granted++;
		if (fn)
			fn(ctx, &x->r);
	}
#ifndef NDEBUG
	/* L1: no two granted records conflict. */
	for (uint32_t i = lt->head[b]; i != NIL; i = lt->recs[i].next)
		for (uint32_t j = lt->recs[i].next; j != NIL; j = lt->recs[j].next)
			assert(!(lt->recs[i].granted && lt->recs[j].granted &&
			         conflict(&lt->recs[i].r, &lt->recs[j].r)));
#endif
}

int coh_lock_release(struct coh_locktab *lt, uint32_t owner, uint64_t oid,
                     uint64_t offset, uint64_t length, coh_lock_grant_fn fn,
                     void *ctx)
{
	uint32_t b = bucket_of(lt, oid), prev = NIL;

	for (uint32_t i = lt->head[b]; i != NIL; prev = i, i = lt->recs[i].next) {
		const struct rec *x = &lt->recs[i];
		if (x->granted && x->r.owner == owner && x->r.oid == oid &&
		    x->r.offset == offset && x->r.length == length) {
			unlink_rec(lt, b, prev, i);
			regrant(lt, b, fn, ctx);
			return 0;
		}
	}
	return -ENOENT;
}

/* Drops every record of bucket b matching the predicate. */
static unsigned drop_where(struct coh_locktab *lt, uint32_t b,
                           bool (*match)(const struct rec *, uint64_t),
                           uint64_t key, coh_lock_grant_fn dropped, void *ctx)
{
	unsigned n = 0;
	uint32_t prev = NIL, i = lt->head[b];

	while (i != NIL) {
		uint32_t next = lt->recs[i].next;
		if (match(&lt->recs[i], key)) {
			if (dropped && !lt->recs[i].granted)
				dropped(ctx, &lt->recs[i].r);
			unlink_rec(lt, b, prev, i);
			n++;
		} else {
			prev = i;
		}
		i = next;
	}
	return n;
}

static bool match_owner(const struct rec *x, uint64_t owner)
{
	return x->r.owner == owner;
}

/* key: mask in the high 32 bits, value in the low 32 */
static bool match_owner_mask(const struct rec *x, uint64_t key)
{
	return (x->r.owner & (uint32_t)(key >> 32)) == (uint32_t)key;
}

static bool match_oid(const struct rec *x, uint64_t oid)
{
	return x->r.oid == oid;
}

unsigned coh_lock_release_owner(struct coh_locktab *lt, uint32_t owner,
                                coh_lock_grant_fn fn, void *ctx)
{
	unsigned n = 0;

	for (uint32_t b = 0; b < lt->nbuckets; b++) {
		unsigned d = drop_where(lt, b, match_owner, owner, NULL, NULL);
		if (d) {
			n += d;
			regrant(lt, b, fn, ctx);
		}
	}
	return n;
}

unsigned coh_lock_release_owners(struct coh_locktab *lt, uint32_t mask,
                                 uint32_t value, coh_lock_grant_fn fn,
                                 void *ctx)
{
	uint64_t key = ((uint64_t)mask << 32) | value;
	unsigned n = 0;

	for (uint32_t b = 0; b < lt->nbuckets; b++) {
		unsigned d = drop_where(lt, b, match_owner_mask, key, NULL, NULL);
		if (d) {
			n += d;
			regrant(lt, b, fn, ctx);
		}
	}
	return n;
}

unsigned coh_lock_drop_object(struct coh_locktab *lt, uint64_t oid,
                              coh_lock_grant_fn dropped, void *ctx)
{
	return drop_where(lt, bucket_of(lt, oid), match_oid, oid, dropped, ctx);
}

uint32_t coh_lock_used(const struct coh_locktab *lt)
{
	return lt->used;
}

uint32_t coh_lock_granted(const struct coh_locktab *lt)
{
	return lt->granted;
}
