/* coh.c — the home-based directory coherence protocol as a pure state
 * machine (coh.h; states, transitions and invariants in PROTOCOL.md).
 *
 * Everything lives in pools allocated by coh_init: page records found
 * through an open-addressing hash of (oid, pgno), directory entries with
 * their copyset bitmaps for the pages homed here, and FIFO queue records for
 * requests that wait while a page is busy. Every call checks its input
 * first and then acts, emitting actions through the driver's callback; a
 * rejected input changes nothing. Asserts cite PROTOCOL.md's invariants. */
#include "coh.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX

enum busy {
	B_NONE = 0,
	B_INV,   /* INVALIDATING: waiting for INV_ACKs (D3) */
	B_FETCH, /* FETCHING: waiting for the owner's data (D4) */
};

struct req {
	uint32_t node;
	uint32_t seq;
	uint8_t mode;
};

struct qent {
	struct req r;
	uint32_t next; /* queue order, or the free list */
};

struct page {
	struct coh_page_id id;
	uint64_t cookie;
	uint32_t home;
	uint32_t dir;    /* directory index if self is home, else NIL */
	uint32_t seq;    /* number of this node's latest request on the page */
	uint32_t next;   /* free list */
	uint8_t local;   /* enum coh_mode */
	uint8_t pending; /* mode asked by the request in flight, or INVALID */
	uint8_t used;
};

struct dir {
	uint32_t page;     /* back index */
	uint32_t owner;    /* EXCLUSIVE: the writer (D1) */
	uint32_t nsharers; /* popcount of the copyset (D8) */
	uint32_t acks;     /* B_INV: INV_ACKs still awaited (D3) */
	uint32_t qhead, qtail, qlen;
	uint32_t next;    /* free list */
	struct req cur;   /* the request being served while busy */
	uint8_t state;    /* enum coh_dir_state */
	uint8_t busy;     /* enum busy */
	uint8_t cur_dead; /* cur's node died: finish the round, grant nothing */
};

struct coh_node {
	struct coh_config cfg;
	uint32_t words; /* uint64_t words per node bitmap */
	struct page *pages;
	uint32_t page_free, npages;
	uint32_t *hash; /* page indices, NIL = empty slot */
	uint32_t hmask;
	struct dir *dirs;
	uint64_t *bits; /* copysets, `words` per directory entry */
	uint32_t dir_free;
	struct qent *q;
	uint32_t q_free;
	uint64_t *dead; /* peers declared down */
	uint32_t outstanding;
	bool in_call;
	struct coh_stats st;
};

/* ---- node bitmaps ------------------------------------------------------ */

static bool bit_test(const uint64_t *b, uint32_t x)
{
	return (b[x >> 6] >> (x & 63)) & 1;
}

static uint64_t *cs_of(const struct coh_node *n, const struct dir *d)
{
	return n->bits + (size_t) (d - n->dirs) * n->words;
}

static bool cs_test(const struct coh_node *n, const struct dir *d, uint32_t x)
{
	return bit_test(cs_of(n, d), x);
}

static void cs_set(struct coh_node *n, struct dir *d, uint32_t x)
{
	uint64_t *b = cs_of(n, d);

	if (!bit_test(b, x)) {
		b[x >> 6] |= 1ull << (x & 63);
		d->nsharers++;
	}
}

static void cs_clear(struct coh_node *n, struct dir *d, uint32_t x)
{
	uint64_t *b = cs_of(n, d);

	if (bit_test(b, x)) {
		b[x >> 6] &= ~(1ull << (x & 63));
		d->nsharers--;
	}
}

static bool is_dead(const struct coh_node *n, uint32_t x)
{
	return bit_test(n->dead, x);
}

/* ---- page lookup ------------------------------------------------------- */

static uint32_t hash_of(const struct coh_node *n, struct coh_page_id id)
{
	uint64_t h = id.oid * 0x9e3779b97f4a7c15ull ^ id.pgno;

	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	return (uint32_t) h & n->hmask;
}

static bool id_eq(struct coh_page_id a, struct coh_page_id b)
{
	return a.oid == b.oid && a.pgno == b.pgno;
}

/* Hash slot holding `id`, or the empty slot where it would go. */
static uint32_t slot_of(const struct coh_node *n, struct coh_page_id id)
{
	uint32_t s = hash_of(n, id);

	while (n->hash[s] != NIL && !id_eq(n->pages[n->hash[s]].id, id))
		s = (s + 1) & n->hmask;
	return s;
}

static struct page *lookup(const struct coh_node *n, struct coh_page_id id)
{
	uint32_t s = slot_of(n, id);

	return n->hash[s] == NIL ? NULL : &n->pages[n->hash[s]];
}

/* Removes slot s by shifting later members of its probe run back (linear
 * probing without tombstones). */
static void hash_del(struct coh_node *n, uint32_t s)
{
	uint32_t i = s, j = s;

	for (;;) {
		j = (j + 1) & n->hmask;
		if (n->hash[j] == NIL)
			break;
		uint32_t k = hash_of(n, n->pages[n->hash[j]].id);
		/* Move j back to i unless its home slot k lies cyclically in
		 * (i, j]. */
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		n->hash[i] = n->hash[j];
		i = j;
	}
	n->hash[i] = NIL;
}

static struct dir *dir_of(struct coh_node *n, const struct page *pg)
{
	return pg->dir == NIL ? NULL : &n->dirs[pg->dir];
}

/* ---- invariant checks (debug builds) ----------------------------------- */

#ifndef NDEBUG
static uint32_t popcount_cs(const struct coh_node *n, const struct dir *d)
{
	const uint64_t *b = cs_of(n, d);
	uint32_t c = 0;

	for (uint32_t w = 0; w < n->words; w++)
		c += (uint32_t) __builtin_popcountll(b[w]);
	return c;
}

/* Checks D1-D8 for one directory entry at rest (between calls). */
static void dir_check(const struct coh_node *n, const struct page *pg,
                      const struct dir *d)
{
	uint32_t self = n->cfg.self;

	assert(d->nsharers == popcount_cs(n, d) && "D8");
	switch (d->state) {
	case COH_UNCACHED:
		assert(d->nsharers == 0 && d->owner == NIL && "D2");
		break;
	case COH_SHARED:
		assert(d->nsharers > 0 && d->owner == NIL && "D2");
		break;
	case COH_EXCLUSIVE:
		assert(d->owner != NIL && d->nsharers == 0 && "D1");
		assert(!is_dead(n, d->owner) && "C1");
		break;
	default:
		assert(!"bad directory state");
	}
	if (d->busy == B_INV) {
		uint32_t others = d->nsharers - cs_test(n, d, d->cur.node);
		assert(d->state == COH_SHARED && d->acks == others &&
		       d->acks > 0 && "D3");
	}
	if (d->busy == B_FETCH)
		assert(d->state == COH_EXCLUSIVE && d->owner != self &&
		       d->owner != d->cur.node && "D4");
	if (d->busy == B_NONE)
		assert(d->qhead == NIL && d->qlen == 0 && !d->cur_dead && "D5");
	/* D6: the home's own access agrees with its directory. */
	assert((pg->local == COH_READ) ==
	               (d->state == COH_SHARED && cs_test(n, d, self)) &&
	       "D6");
	assert((pg->local == COH_WRITE) ==
	               (d->state == COH_EXCLUSIVE && d->owner == self) &&
	       "D6");
}

static void page_check(const struct coh_node *n, const struct page *pg)
{
	assert((pg->pending == COH_INVALID || pg->local < pg->pending) && "R2");
	if (pg->dir != NIL)
		dir_check(n, pg, &n->dirs[pg->dir]);
}
#else
static void page_check(const struct coh_node *n, const struct page *pg)
{
	(void) n;
	(void) pg;
}
#endif

/* ---- actions ------------------------------------------------------------ */

static void emit(struct coh_node *n, const struct page *pg,
                 struct coh_action *a)
{
	a->cookie = pg->cookie;
	a->page = pg->id;
	a->at_home = pg->home == n->cfg.self;
	n->cfg.act(n->cfg.act_ctx, a);
}

static void act_send(struct coh_node *n, const struct page *pg, uint8_t type,
                     uint8_t mode, uint32_t dst, uint32_t seq, int32_t err,
                     bool payload)
{
	struct coh_action a = {.type = COH_ACT_SEND};

	assert(dst != n->cfg.self && dst < n->cfg.max_nodes);
	a.msg = (struct coh_msg){.type = type,
	                         .mode = mode,
	                         .flags = payload ? COH_F_PAYLOAD : 0,
	                         .err = err,
	                         .src = n->cfg.self,
	                         .dst = dst,
	                         .seq = seq,
	                         .oid = pg->id.oid,
	                         .pgno = pg->id.pgno};
	n->st.msgs_out++;
	emit(n, pg, &a);
}

static void act_access(struct coh_node *n, struct page *pg, uint8_t mode)
{
	struct coh_action a = {.type = COH_ACT_ACCESS, .mode = mode,
	                       .prev = pg->local};

	pg->local = mode;
	emit(n, pg, &a);
}

static void act_install(struct coh_node *n, const struct page *pg)
{
	struct coh_action a = {.type = COH_ACT_INSTALL};

	emit(n, pg, &a);
}

/* Finishes this node's request on pg (R1). */
static void act_done(struct coh_node *n, struct page *pg, int err)
{
	struct coh_action a = {
	        .type = COH_ACT_DONE, .mode = pg->pending, .err = err};

	assert(pg->pending != COH_INVALID && n->outstanding > 0 && "R1");
	pg->pending = COH_INVALID;
	n->outstanding--;
	if (err == -EHOSTDOWN)
		n->st.failed_hostdown++;
	emit(n, pg, &a);
}

/* ---- the home: serving requests ----------------------------------------- */

static void drain(struct coh_node *n, struct page *pg, struct dir *d);

static void nack(struct coh_node *n, struct page *pg, const struct req *r,
                 int err)
{
	n->st.nacks++;
	act_send(n, pg, COH_M_NACK, COH_INVALID, r->node, r->seq, err, false);
}

/* Grants READ to r; the page is UNCACHED or SHARED, so the home frame is
 * current (D7). */
static void grant_read(struct coh_node *n, struct page *pg, struct dir *d,
                       const struct req *r)
{
	assert(d->state != COH_EXCLUSIVE && d->busy == B_NONE);
	cs_set(n, d, r->node);
	d->state = COH_SHARED;
	if (r->node == n->cfg.self) {
		act_access(n, pg, COH_READ);
		act_done(n, pg, 0);
	} else {
		act_send(n, pg, COH_M_DATA, COH_READ, r->node, r->seq, 0, true);
	}
}

/* Grants WRITE to r; every other copy is gone (I1), the home frame is
 * current unless r itself holds a READ copy (then it needs no data). */
static void grant_write(struct coh_node *n, struct page *pg, struct dir *d,
                        const struct req *r)
{
	bool had = cs_test(n, d, r->node);

	assert(d->busy == B_NONE && d->state != COH_EXCLUSIVE);
	assert(d->nsharers == (uint32_t) had && "I1: others invalidated");
	cs_clear(n, d, r->node);
	d->state = COH_EXCLUSIVE;
	d->owner = r->node;
	if (r->node == n->cfg.self) {
		act_access(n, pg, COH_WRITE);
		act_done(n, pg, 0);
	} else {
		assert(pg->local == COH_INVALID && "D6");
		if (had)
			act_send(n, pg, COH_M_GRANT, COH_WRITE, r->node, r->seq,
			         0, false);
		else
			act_send(n, pg, COH_M_DATA, COH_WRITE, r->node, r->seq,
			         0, true);
	}
}

static void start_fetch(struct coh_node *n, struct page *pg, struct dir *d,
                        const struct req *r, uint8_t keep)
{
	d->busy = B_FETCH;
	d->cur = *r;
	act_send(n, pg, COH_M_FETCH, keep, d->owner, 0, 0, false);
}

/* Serves r on a page that is not busy: grants it at once, or starts a
 * FETCH or an invalidation round (the page goes busy). */
static void serve(struct coh_node *n, struct page *pg, struct dir *d,
                  const struct req *r)
{
	uint32_t self = n->cfg.self;

	assert(d->busy == B_NONE);
	if (d->state == COH_EXCLUSIVE && d->owner == r->node) {
		/* The owner asks for what it holds: no correct peer does. */
		assert(r->node != self);
		nack(n, pg, r, -EPROTO);
		return;
	}
	if (r->mode == COH_READ) {
		if (cs_test(n, d, r->node)) {
			/* A READ holder asks for READ: no correct peer does
			 * (its EVICT would have come first). */
			assert(r->node != self);
			nack(n, pg, r, -EPROTO);
			return;
		}
		if (d->state == COH_EXCLUSIVE) {
			if (d->owner != self) {
				start_fetch(n, pg, d, r, COH_READ);
				return;
			}
			/* The home writes it: downgrade itself, no message. */
			act_access(n, pg, COH_READ);
			d->owner = NIL;
			d->state = COH_SHARED;
			cs_set(n, d, self);
		}
		grant_read(n, pg, d, r);
		return;
	}

	if (d->state == COH_EXCLUSIVE) {
		if (d->owner != self) {
			start_fetch(n, pg, d, r, COH_INVALID);
			return;
		}
		act_access(n, pg, COH_INVALID);
		d->owner = NIL;
		d->state = COH_UNCACHED;
	} else if (d->state == COH_SHARED) {
		const uint64_t *b = cs_of(n, d);

		d->acks = 0;
		for (uint32_t w = 0; w < n->words; w++) {
			uint64_t bits = b[w];
			while (bits) {
				uint32_t x = w * 64 +
				             (uint32_t) __builtin_ctzll(bits);
				bits &= bits - 1;
				if (x == r->node)
					continue;
				if (x == self) {
					cs_clear(n, d, self);
					act_access(n, pg, COH_INVALID);
					continue;
				}
				act_send(n, pg, COH_M_INVALIDATE, COH_INVALID,
				         x, 0, 0, false);
				d->acks++;
			}
		}
		if (d->acks > 0) {
			d->busy = B_INV;
			d->cur = *r;
			return;
		}
		if (d->nsharers == 0)
			d->state = COH_UNCACHED;
	}
	grant_write(n, pg, d, r);
}

/* The owner's data came back (FETCH_REPLY or WRITEBACK, already installed)
 * or the owner died (the home copy stands, C1): finish the FETCH round. */
static void finish_fetch(struct coh_node *n, struct page *pg, struct dir *d,
                         bool owner_keeps_read)
{
	uint32_t o = d->owner;
	struct req r = d->cur;
	bool dead = d->cur_dead;

	assert(d->busy == B_FETCH && "D4");
	d->busy = B_NONE;
	d->cur_dead = 0;
	d->owner = NIL;
	d->state = COH_UNCACHED;
	if (owner_keeps_read) {
		cs_set(n, d, o);
		d->state = COH_SHARED;
	}
	if (!dead) {
		if (r.mode == COH_READ)
			grant_read(n, pg, d, &r);
		else
			grant_write(n, pg, d, &r);
	}
	drain(n, pg, d);
}

/* The last INV_ACK came (or its sender died): grant the write. */
static void finish_inv(struct coh_node *n, struct page *pg, struct dir *d)
{
	struct req r = d->cur;
	bool dead = d->cur_dead;

	assert(d->busy == B_INV && d->acks == 0 && "D3");
	d->busy = B_NONE;
	d->cur_dead = 0;
	if (d->nsharers == 0)
		d->state = COH_UNCACHED;
	if (!dead)
		grant_write(n, pg, d, &r);
	drain(n, pg, d);
}

/* Serves queued requests in arrival order until one makes the page busy
 * (D5). */
static void drain(struct coh_node *n, struct page *pg, struct dir *d)
{
	while (d->busy == B_NONE && d->qhead != NIL) {
		uint32_t i = d->qhead;
		struct req r = n->q[i].r;

		d->qhead = n->q[i].next;
		if (d->qhead == NIL)
			d->qtail = NIL;
		d->qlen--;
		n->q[i].next = n->q_free;
		n->q_free = i;
		assert(!is_dead(n, r.node) && "C1");
		serve(n, pg, d, &r);
	}
}

/* A request reached the home (from a peer or from self). The caller made
 * sure a queue record is free if the page is busy. */
static void dir_request(struct coh_node *n, struct page *pg, struct dir *d,
                        const struct req *r)
{
	if (d->busy != B_NONE) {
		uint32_t i = n->q_free;

		assert(i != NIL);
		n->q_free = n->q[i].next;
		n->q[i].r = *r;
		n->q[i].next = NIL;
		if (d->qtail == NIL)
			d->qhead = i;
		else
			n->q[d->qtail].next = i;
		d->qtail = i;
		d->qlen++;
		n->st.queued++;
		return;
	}
	assert(d->qhead == NIL && "D5");
	serve(n, pg, d, r);
}

/* ---- init, pages -------------------------------------------------------- */

int coh_init(struct coh_node **out, const struct coh_config *cfg)
{
	struct coh_node *n;
	uint32_t hsize = 2, nq;

	if (!out || !cfg || !cfg->act || cfg->max_nodes == 0 ||
	    cfg->max_nodes > (1u << 24) || cfg->self >= cfg->max_nodes ||
	    cfg->max_pages == 0 || cfg->max_pages > (1u << 28) ||
	    cfg->max_home_pages > cfg->max_pages || cfg->max_outstanding == 0)
		return -EINVAL;
	nq = cfg->max_queued;
	if (nq == 0) {
		uint64_t q = (uint64_t) cfg->max_nodes * cfg->max_outstanding;
		if (q > (1u << 28))
			return -EINVAL;
		nq = (uint32_t) q;
	}
	while (hsize < 2 * cfg->max_pages)
		hsize <<= 1;

	n = calloc(1, sizeof *n);
	if (!n)
		return -ENOMEM;
	n->cfg = *cfg;
	n->cfg.max_queued = nq;
	n->words = (cfg->max_nodes + 63) / 64;
	n->hmask = hsize - 1;
	n->pages = calloc(cfg->max_pages, sizeof *n->pages);
	n->hash = malloc((size_t) hsize * sizeof *n->hash);
	n->dirs = calloc(cfg->max_home_pages ? cfg->max_home_pages : 1,
	                 sizeof *n->dirs);
	n->bits = calloc(
	        (size_t) (cfg->max_home_pages ? cfg->max_home_pages : 1) *
	                n->words,
	        sizeof *n->bits);
	n->q = calloc(nq, sizeof *n->q);
	n->dead = calloc(n->words, sizeof *n->dead);
	if (!n->pages || !n->hash || !n->dirs || !n->bits || !n->q ||
	    !n->dead) {
		coh_free(n);
		return -ENOMEM;
	}
	memset(n->hash, 0xff, (size_t) hsize * sizeof *n->hash);
	for (uint32_t i = 0; i < cfg->max_pages; i++)
		n->pages[i].next = i + 1 < cfg->max_pages ? i + 1 : NIL;
	n->page_free = 0;
	for (uint32_t i = 0; i < cfg->max_home_pages; i++)
		n->dirs[i].next = i + 1 < cfg->max_home_pages ? i + 1 : NIL;
	n->dir_free = cfg->max_home_pages ? 0 : NIL;
	for (uint32_t i = 0; i < nq; i++)
		n->q[i].next = i + 1 < nq ? i + 1 : NIL;
	n->q_free = 0;
	*out = n;
	return 0;
}

void coh_free(struct coh_node *n)
{
	if (!n)
		return;
	free(n->pages);
	free(n->hash);
	free(n->dirs);
	free(n->bits);
	free(n->q);
	free(n->dead);
	free(n);
}

int coh_page_add(struct coh_node *n, struct coh_page_id id, uint32_t home,
                 uint64_t cookie)
{
	uint32_t s, i;
	struct page *pg;

	if (n->in_call)
		return -EDEADLK;
	if (home >= n->cfg.max_nodes)
		return -EINVAL;
	s = slot_of(n, id);
	if (n->hash[s] != NIL)
		return -EEXIST;
	if (n->page_free == NIL || (home == n->cfg.self && n->dir_free == NIL))
		return -ENOSPC;

	i = n->page_free;
	pg = &n->pages[i];
	n->page_free = pg->next;
	*pg = (struct page){.id = id,
	                    .cookie = cookie,
	                    .home = home,
	                    .dir = NIL,
	                    .next = NIL,
	                    .used = 1};
	if (home == n->cfg.self) {
		uint32_t di = n->dir_free;
		struct dir *d = &n->dirs[di];

		n->dir_free = d->next;
		*d = (struct dir){.page = i,
		                  .owner = NIL,
		                  .qhead = NIL,
		                  .qtail = NIL,
		                  .next = NIL,
		                  .state = COH_UNCACHED};
		memset(cs_of(n, d), 0, n->words * sizeof(uint64_t));
		pg->dir = di;
	}
	n->hash[s] = i;
	n->npages++;
	return 0;
}

/* Returns the page record in hash slot s, and its directory entry, to
 * their pools. */
static void page_release(struct coh_node *n, uint32_t s)
{
	uint32_t i = n->hash[s];
	struct page *pg = &n->pages[i];
	struct dir *d = dir_of(n, pg);

	if (d) {
		assert(d->qhead == NIL && d->qlen == 0);
		d->next = n->dir_free;
		n->dir_free = pg->dir;
	}
	hash_del(n, s);
	pg->used = 0;
	pg->next = n->page_free;
	n->page_free = i;
	n->npages--;
}

int coh_page_remove(struct coh_node *n, struct coh_page_id id)
{
	uint32_t s;
	struct page *pg;
	struct dir *d;

	if (n->in_call)
		return -EDEADLK;
	s = slot_of(n, id);
	if (n->hash[s] == NIL)
		return -ENOENT;
	pg = &n->pages[n->hash[s]];
	d = dir_of(n, pg);
	if (pg->local != COH_INVALID || pg->pending != COH_INVALID ||
	    (d && (d->busy != B_NONE || d->state != COH_UNCACHED)))
		return -EBUSY;
	page_release(n, s);
	return 0;
}

int coh_page_forget(struct coh_node *n, struct coh_page_id id)
{
	uint32_t s;
	struct page *pg;
	struct dir *d;

	if (n->in_call)
		return -EDEADLK;
	s = slot_of(n, id);
	if (n->hash[s] == NIL)
		return -ENOENT;
	pg = &n->pages[n->hash[s]];
	d = dir_of(n, pg);

	n->in_call = true;
	/* The driver unmaps before it discards the frame. */
	if (pg->local != COH_INVALID)
		act_access(n, pg, COH_INVALID);
	if (d) {
		/* Every request this home holds is refused: the one being
		 * served, then the queue in arrival order (F2). The home's
		 * own request is finished below, once. Whatever the round
		 * still awaits (INV_ACKs, a FETCH reply) will find no page
		 * and be dropped (F3). */
		if (d->busy != B_NONE && !d->cur_dead &&
		    d->cur.node != n->cfg.self)
			nack(n, pg, &d->cur, -ENOENT);
		while (d->qhead != NIL) {
			uint32_t i = d->qhead;
			struct req r = n->q[i].r;

			d->qhead = n->q[i].next;
			d->qlen--;
			n->q[i].next = n->q_free;
			n->q_free = i;
			if (r.node != n->cfg.self)
				nack(n, pg, &r, -ENOENT);
		}
		d->qtail = NIL;
		d->busy = B_NONE;
		d->cur_dead = 0;
	}
	if (pg->pending != COH_INVALID)
		act_done(n, pg, -ENOENT); /* F1 */
	n->st.forgotten++;
	page_release(n, s);
	n->in_call = false;
	return 0;
}

/* ---- a node's own requests and evictions -------------------------------- */

int coh_acquire(struct coh_node *n, struct coh_page_id id, enum coh_mode mode)
{
	struct page *pg;
	struct dir *d;
	struct req r;

	if (n->in_call)
		return -EDEADLK;
	if (mode != COH_READ && mode != COH_WRITE)
		return -EINVAL;
	pg = lookup(n, id);
	if (!pg)
		return -ENOENT;
	if (pg->local >= mode) {
		n->st.hits++;
		return 0;
	}
	if (pg->pending != COH_INVALID)
		return pg->pending >= mode ? 1 : -EBUSY;
	if (is_dead(n, pg->home))
		return -EHOSTDOWN;
	if (n->outstanding >= n->cfg.max_outstanding)
		return -EAGAIN;
	d = dir_of(n, pg);
	if (d && d->busy != B_NONE && n->q_free == NIL)
		return -ENOBUFS;

	n->in_call = true;
	pg->pending = (uint8_t) mode;
	pg->seq++;
	n->outstanding++;
	n->st.requests++;
	r = (struct req){
	        .node = n->cfg.self, .seq = pg->seq, .mode = (uint8_t) mode};
	if (d)
		dir_request(n, pg, d, &r);
	else
		act_send(n, pg,
		         mode == COH_READ ? COH_M_READ_REQ : COH_M_WRITE_REQ,
		         (uint8_t) mode, pg->home, pg->seq, 0, false);
	page_check(n, pg);
	n->in_call = false;
	return 1;
}

int coh_evict(struct coh_node *n, struct coh_page_id id)
{
	struct page *pg;
	struct dir *d;

	if (n->in_call)
		return -EDEADLK;
	pg = lookup(n, id);
	if (!pg)
		return -ENOENT;
	if (pg->local == COH_INVALID)
		return -ENODATA;
	if (pg->pending != COH_INVALID)
		return -EBUSY;

	n->in_call = true;
	d = dir_of(n, pg);
	if (d) {
		/* At the home the frame is the home copy: only the mapping
		 * goes. A home holding the page is never part of a round
		 * (D3, D4, D6). */
		assert(d->busy == B_NONE && "D6");
		if (pg->local == COH_READ) {
			cs_clear(n, d, n->cfg.self);
			if (d->nsharers == 0)
				d->state = COH_UNCACHED;
		} else {
			assert(d->owner == n->cfg.self && "D6");
			d->owner = NIL;
			d->state = COH_UNCACHED;
		}
		act_access(n, pg, COH_INVALID);
	} else if (is_dead(n, pg->home)) {
		act_access(n, pg, COH_INVALID); /* nobody to give it to */
	} else if (pg->local == COH_READ) {
		act_access(n, pg, COH_INVALID);
		act_send(n, pg, COH_M_EVICT, COH_INVALID, pg->home, 0, 0,
		         false);
	} else {
		/* Write-protect, copy out, then unmap: no store slips
		 * between the copy and the unmapping. */
		act_access(n, pg, COH_READ);
		act_send(n, pg, COH_M_WRITEBACK, COH_INVALID, pg->home, 0, 0,
		         true);
		act_access(n, pg, COH_INVALID);
	}
	page_check(n, pg);
	n->in_call = false;
	return 0;
}

/* ---- messages ------------------------------------------------------------ */

static bool needs_payload(uint8_t type)
{
	return type == COH_M_WRITEBACK || type == COH_M_FETCH_REPLY ||
	       type == COH_M_DATA;
}

/* Header checks that need no protocol state. */
static int check_header(const struct coh_node *n, const struct coh_msg *m)
{
	if (m->type < COH_M_READ_REQ || m->type >= COH_M__COUNT ||
	    m->mode > COH_WRITE || (m->flags & ~COH_F_PAYLOAD) || m->pad0 ||
	    m->pad1 || m->src >= n->cfg.max_nodes || m->src == n->cfg.self ||
	    m->dst != n->cfg.self)
		return -EBADMSG;
	if (!!(m->flags & COH_F_PAYLOAD) != needs_payload(m->type))
		return -EBADMSG;
	if (m->type == COH_M_NACK ? (m->err >= 0 || m->err < -4095)
	                          : m->err != 0)
		return -EBADMSG;
	switch (m->type) {
	case COH_M_READ_REQ:
		return m->mode == COH_READ ? 0 : -EBADMSG;
	case COH_M_WRITE_REQ:
	case COH_M_GRANT:
		return m->mode == COH_WRITE ? 0 : -EBADMSG;
	case COH_M_DATA:
		return m->mode != COH_INVALID ? 0 : -EBADMSG;
	case COH_M_FETCH:
	case COH_M_FETCH_REPLY:
		return m->mode != COH_WRITE ? 0 : -EBADMSG;
	default:
		return m->mode == COH_INVALID ? 0 : -EBADMSG;
	}
}

/* Answers m about a page this node does not track (or is not home of)
 * with `type`: a stand-in page record carries the id (cookie 0). */
static void reply_untracked(struct coh_node *n, const struct coh_msg *m,
                            uint8_t type, int32_t err)
{
	struct page tmp = {.id = {m->oid, m->pgno}, .home = NIL};

	act_send(n, &tmp, type, COH_INVALID, m->src, m->seq, err, false);
}

/* READ_REQ / WRITE_REQ at the home. */
static int recv_request(struct coh_node *n, struct page *pg,
                        const struct coh_msg *m)
{
	struct req r = {.node = m->src, .seq = m->seq, .mode = m->mode};
	struct dir *d = pg ? dir_of(n, pg) : NULL;

	if (!d) {
		/* Not a page homed here: refuse, so the requester does not
		 * wait forever. */
		n->st.nacks++;
		reply_untracked(n, m, COH_M_NACK, pg ? -EREMOTE : -ENOENT);
		return 0;
	}
	if (d->busy != B_NONE && n->q_free == NIL) {
		nack(n, pg, &r, -ENOBUFS);
		return 0;
	}
	dir_request(n, pg, d, &r);
	return 0;
}

/* Messages to the home about copies: EVICT, WRITEBACK, INV_ACK,
 * FETCH_REPLY. Checks first; returns -EPROTO before acting. */
static int recv_at_home(struct coh_node *n, struct page *pg, struct dir *d,
                        const struct coh_msg *m)
{
	uint32_t x = m->src;

	switch (m->type) {
	case COH_M_EVICT:
		if (!cs_test(n, d, x))
			return -EPROTO;
		if (d->busy == B_INV) {
			/* It crossed our INVALIDATE; its INV_ACK follows
			 * on the same channel and clears it (D3). */
			if (x == d->cur.node)
				return -EPROTO;
			n->st.evict_crossed++;
			return 0;
		}
		cs_clear(n, d, x);
		if (d->nsharers == 0)
			d->state = COH_UNCACHED;
		return 0;
	case COH_M_WRITEBACK:
		if (d->state != COH_EXCLUSIVE || d->owner != x)
			return -EPROTO;
		act_install(n, pg);
		if (d->busy == B_FETCH) {
			/* It crossed our FETCH, which x will drop (R3). */
			n->st.wb_as_reply++;
			finish_fetch(n, pg, d, false);
		} else {
			d->owner = NIL;
			d->state = COH_UNCACHED;
		}
		return 0;
	case COH_M_FETCH_REPLY:
		if (d->busy != B_FETCH || d->owner != x ||
		    m->mode !=
		            (d->cur.mode == COH_READ ? COH_READ : COH_INVALID))
			return -EPROTO;
		act_install(n, pg);
		finish_fetch(n, pg, d, m->mode == COH_READ);
		return 0;
	case COH_M_INV_ACK:
		if (d->busy != B_INV || x == d->cur.node || !cs_test(n, d, x))
			return -EPROTO;
		cs_clear(n, d, x);
		if (--d->acks == 0)
			finish_inv(n, pg, d);
		return 0;
	}
	return -EPROTO;
}

/* Messages from the home to this node as a user of the page. */
static int recv_at_user(struct coh_node *n, struct page *pg,
                        const struct coh_msg *m)
{
	switch (m->type) {
	case COH_M_DATA:
		/* A READ holder asking for WRITE is in the copyset until
		 * invalidated, so it gets GRANT, not DATA (D3). */
		if (pg->pending != m->mode || m->seq != pg->seq ||
		    pg->local != COH_INVALID)
			return -EPROTO;
		act_install(n, pg);
		act_access(n, pg, m->mode);
		act_done(n, pg, 0);
		return 0;
	case COH_M_GRANT:
		if (pg->pending != COH_WRITE || m->seq != pg->seq ||
		    pg->local != COH_READ)
			return -EPROTO;
		act_access(n, pg, COH_WRITE);
		act_done(n, pg, 0);
		return 0;
	case COH_M_NACK:
		if (pg->pending == COH_INVALID || m->seq != pg->seq)
			return -EPROTO;
		act_done(n, pg, m->err);
		return 0;
	case COH_M_INVALIDATE:
		if (pg->local == COH_WRITE)
			return -EPROTO;
		/* A copy already evicted is acked all the same (R3). A
		 * pending upgrade stays pending: the home will send data. */
		if (pg->local == COH_READ)
			act_access(n, pg, COH_INVALID);
		act_send(n, pg, COH_M_INV_ACK, COH_INVALID, pg->home, 0, 0,
		         false);
		return 0;
	case COH_M_FETCH:
		if (pg->local == COH_READ)
			return -EPROTO;
		if (pg->local == COH_INVALID) {
			/* We wrote it back; the home takes that WRITEBACK as
			 * the reply (R3). */
			n->st.fetch_crossed++;
			return 0;
		}
		act_access(n, pg, COH_READ);
		act_send(n, pg, COH_M_FETCH_REPLY, m->mode, pg->home, 0, 0,
		         true);
		if (m->mode == COH_INVALID)
			act_access(n, pg, COH_INVALID);
		return 0;
	}
	return -EPROTO;
}

int coh_recv(struct coh_node *n, const struct coh_msg *m)
{
	struct page *pg;
	int rc;

	if (n->in_call)
		return -EDEADLK;
	if (!m)
		return -EINVAL;
	rc = check_header(n, m);
	if (rc)
		return rc;
	if (is_dead(n, m->src)) {
		n->st.ignored_dead++; /* C3 */
		return 0;
	}
	pg = lookup(n, (struct coh_page_id){m->oid, m->pgno});

	n->in_call = true;
	n->st.msgs_in++;
	switch (m->type) {
	case COH_M_READ_REQ:
	case COH_M_WRITE_REQ:
		rc = recv_request(n, pg, m);
		break;
	case COH_M_EVICT:
	case COH_M_WRITEBACK:
	case COH_M_INV_ACK:
	case COH_M_FETCH_REPLY:
		if (!pg) {
			/* The home forgot the page (coh_page_forget) while
			 * this was on its way: nothing awaits it (F3). */
			n->st.ignored_unknown++;
			rc = 0;
		} else if (pg->dir == NIL)
			rc = -EPROTO;
		else
			rc = recv_at_home(n, pg, dir_of(n, pg), m);
		break;
	default:
		if (!pg && m->type == COH_M_INVALIDATE) {
			/* Evicted, then removed (coh_page_remove) while the
			 * INVALIDATE crossed our EVICT: no copy here (R3). */
			reply_untracked(n, m, COH_M_INV_ACK, 0);
			rc = 0;
		} else if (!pg && m->type == COH_M_FETCH) {
			/* Likewise after a WRITEBACK; or the page was
			 * forgotten here, and the home's round waits until
			 * the home forgets it too (F3). */
			n->st.fetch_crossed++;
			rc = 0;
		} else if (!pg) {
			/* DATA, GRANT or NACK for a request that finished
			 * with -ENOENT when the page was forgotten (F1). */
			n->st.ignored_unknown++;
			rc = 0;
		} else if (pg->home != m->src)
			rc = -EPROTO;
		else
			rc = recv_at_user(n, pg, m);
		break;
	}
	if (pg)
		page_check(n, pg);
	n->in_call = false;
	return rc;
}

/* ---- crashes --------------------------------------------------------------
 */

/* Forgets dead node x in the directory of pg (C1). */
static void dir_peer_down(struct coh_node *n, struct page *pg, struct dir *d,
                          uint32_t x)
{
	/* Its waiting requests go. */
	for (uint32_t prev = NIL, i = d->qhead; i != NIL;) {
		uint32_t next = n->q[i].next;

		if (n->q[i].r.node == x) {
			if (prev == NIL)
				d->qhead = next;
			else
				n->q[prev].next = next;
			if (d->qtail == i)
				d->qtail = prev;
			d->qlen--;
			n->q[i].next = n->q_free;
			n->q_free = i;
		} else {
			prev = i;
		}
		i = next;
	}
	/* The request being served: finish the round, grant nobody. */
	if (d->busy != B_NONE && d->cur.node == x)
		d->cur_dead = 1;

	if (d->state == COH_EXCLUSIVE && d->owner == x) {
		/* Its unwritten changes are lost; the home copy stands. */
		if (d->busy == B_FETCH) {
			n->st.fetch_fallback++;
			finish_fetch(n, pg, d, false);
		} else {
			d->owner = NIL;
			d->state = COH_UNCACHED;
		}
	} else if (cs_test(n, d, x)) {
		cs_clear(n, d, x);
		if (d->busy == B_INV && x != d->cur.node) {
			/* Counts as its INV_ACK. */
			if (--d->acks == 0)
				finish_inv(n, pg, d);
		} else if (d->busy == B_NONE && d->nsharers == 0) {
			d->state = COH_UNCACHED;
		}
	}
}

int coh_peer_down(struct coh_node *n, uint32_t dead)
{
	if (n->in_call)
		return -EDEADLK;
	if (dead >= n->cfg.max_nodes || dead == n->cfg.self)
		return -EINVAL;
	if (is_dead(n, dead))
		return 0;

	n->in_call = true;
	n->dead[dead >> 6] |= 1ull << (dead & 63);
	for (uint32_t i = 0; i < n->cfg.max_pages; i++) {
		struct page *pg = &n->pages[i];

		if (!pg->used)
			continue;
		if (pg->home == dead && pg->pending != COH_INVALID)
			act_done(n, pg, -EHOSTDOWN); /* C2 */
		if (pg->dir != NIL)
			dir_peer_down(n, pg, &n->dirs[pg->dir], dead);
		page_check(n, pg);
	}
	n->in_call = false;
	return 0;
}

/* ---- queries --------------------------------------------------------------
 */

int coh_page_info(const struct coh_node *n, struct coh_page_id id,
                  struct coh_page_info *out)
{
	const struct page *pg = lookup(n, id);
	const struct dir *d;

	if (!pg)
		return -ENOENT;
	*out = (struct coh_page_info){.home = pg->home,
	                              .local = pg->local,
	                              .pending = pg->pending,
	                              .owner = COH_NONE};
	if (pg->dir == NIL)
		return 0;
	d = &n->dirs[pg->dir];
	out->is_home = true;
	out->state = d->state;
	out->owner = d->owner == NIL ? COH_NONE : d->owner;
	out->sharers = d->nsharers;
	out->busy = d->busy != B_NONE;
	out->queued = d->qlen;
	return 0;
}

int coh_dir_has_copy(const struct coh_node *n, struct coh_page_id id,
                     uint32_t node)
{
	const struct page *pg = lookup(n, id);

	if (!pg || pg->dir == NIL || node >= n->cfg.max_nodes)
		return -ENOENT;
	return cs_test(n, &n->dirs[pg->dir], node);
}

void coh_get_stats(const struct coh_node *n, struct coh_stats *out)
{
	*out = n->st;
}

uint32_t coh_outstanding(const struct coh_node *n)
{
	return n->outstanding;
}

bool coh_peer_is_down(const struct coh_node *n, uint32_t node)
{
	return node < n->cfg.max_nodes && is_dead(n, node);
}

const char *coh_msg_name(unsigned type)
{
	static const char *const names[] = {
	        [COH_M_READ_REQ] = "READ_REQ",
	        [COH_M_WRITE_REQ] = "WRITE_REQ",
	        [COH_M_EVICT] = "EVICT",
	        [COH_M_WRITEBACK] = "WRITEBACK",
	        [COH_M_INV_ACK] = "INV_ACK",
	        [COH_M_FETCH_REPLY] = "FETCH_REPLY",
	        [COH_M_DATA] = "DATA",
	        [COH_M_GRANT] = "GRANT",
	        [COH_M_INVALIDATE] = "INVALIDATE",
	        [COH_M_FETCH] = "FETCH",
	        [COH_M_NACK] = "NACK",
	};

	return type < COH_M__COUNT && names[type] ? names[type] : "?";
}

const char *coh_mode_name(unsigned mode)
{
	static const char *const names[] = {"INVALID", "READ", "WRITE"};

	return mode <= COH_WRITE ? names[mode] : "?";
}
