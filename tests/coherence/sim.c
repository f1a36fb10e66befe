/* sim.c — deterministic simulator of the page-coherence protocol
 * (coherence/coh.h, coherence/PROTOCOL.md).
 *
 * N nodes each run a coh_node; P pages have homes spread over the nodes.
 * A seeded random scheduler picks, step by step: deliver the head message
 * of a random non-empty channel (FIFO per ordered pair, arbitrary across
 * pairs), issue a read or write on an idle (node, page), evict a page,
 * crash-stop a node (its in-flight messages may be lost; each survivor
 * then hears of the death through its channel from the dead node); with
 * --destroys, destroy an object (every node forgets its pages, one node at
 * a time, deliveries in between) and create new ones in the freed page
 * slots under fresh ids. The simulated driver owns the frames (one
 * uint64_t per node and page) and executes the machine's actions exactly
 * as the daemon will.
 *
 * Checked after every step: I1 (one writer or many readers) on the pages
 * the step touched, I2 on every read (it returns the latest write, or a
 * value a crash legitimately lost the later writes of — PROTOCOL.md,
 * "Checking I2 across crashes"); whenever the network is quiet: I3 (no
 * request left waiting) and I4 (directories agree with local states and
 * every copy holds the same value). Pages of a destroyed object are
 * checked until the last live node forgets them; their requests may then
 * finish with -ENOENT (F1-F4). `sim --seed S ...` replays one run
 * exactly; a failure prints the command line that replays it. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coh.h"

#define NIL UINT32_MAX
#define NONE UINT32_MAX
#define POISON 0xdeadbeefdeadbeefull /* a non-home frame nobody holds */
#define HK 64                        /* checker history runs per page */

enum op { OP_NONE = 0, OP_READ, OP_WRITE };
enum inject { INJ_NONE = 0, INJ_STALE, INJ_KEEP_READ, INJ_LOSE_ACK };

struct opts {
	uint64_t seed, seeds, steps;
	uint32_t nodes, pages, frames, outstanding, write_pct;
	uint32_t queue; /* max_queued per home; 0 = never full */
	double crashes; /* expected crash-stops per run */
	double destroys; /* expected object destructions per run */
	bool verbose, quiet;
	uint64_t trace_from;
	enum inject inject;
	const char *expect; /* NULL, "" (any) or an invariant tag */
};

/* A message in a channel, or the marker that tells the receiver the
 * sender is down. */
struct smsg {
	struct coh_msg m;
	uint64_t payload;
	uint32_t next;
	bool down;
};

/* The checker's history of one page: runs of consecutive writes by one
 * node that no other node has read in between (PROTOCOL.md). */
struct run {
	uint32_t writer; /* NONE: the initial value */
	uint32_t lo, hi; /* the writer's counters on this page */
	bool observed;   /* its last value was read by another node */
};

struct pchk {
	uint64_t truth, prev;
	uint32_t first, n;
	bool overflow;
	struct run ring[HK];
};

struct snode {
	struct coh_node *m;
	uint64_t *frame; /* per page */
	uint8_t *mirror; /* per page: the access the driver set up */
	uint8_t *op;     /* per page: the operation waiting for DONE */
	bool *known;     /* per page: added to the machine, not forgotten */
	uint32_t held;   /* non-home pages held (frames in use) */
	uint32_t npending;
};

struct actx {
	struct sim *s;
	uint32_t node;
};

struct stats {
	uint64_t reads, writes, hits, hostdown, rollbacks, delivered, lost;
	uint64_t crashes, quiet, i4, evictions, forced_evictions;
	uint64_t again, nobufs;
	uint64_t destroys, creates, forgets, enoent;
};

/* Objects: page slots 4o..4o+3 belong to object slot o. A destroyed
 * object's slots come back under a fresh oid once every live node has
 * forgotten them. */
enum obj_state { OBJ_LIVE = 0, OBJ_DYING, OBJ_FREE };

/* One node still has to forget one dying object. */
struct ftask {
	uint32_t obj, node;
};

struct sim {
	const struct opts *o;
	uint32_t N, P;
	uint64_t rng, step;
	bool tracing, failed;
	char why[512];
	const char *tag;

	struct snode *nd;
	struct actx *ctx;
	bool *alive;
	uint32_t *alive_ids, nalive;
	uint32_t *home;
	uint32_t *ctr; /* N*P write counters */

	/* objects (--destroys) */
	uint32_t nobj, nfree;
	uint64_t *obj_oid, next_oid;
	uint8_t *obj_state;
	uint32_t *obj_left;  /* forget tasks still to run */
	uint32_t *gen;       /* per page: objects it has belonged to */
	uint32_t *cap_home;  /* per node: directory entries */
	uint32_t *nhome_cur; /* per node: pages homed there now */
	struct ftask *ft;    /* forgets that may run at any step */
	struct ftask *ftl;   /* late ones: held back until the network is
	                      * quiet, so their nodes' requests must have been
	                      * answered by the home's forget (F2) */
	uint32_t nft, nftl;

	/* channels, index src*N+dst */
	uint32_t *ch_head, *ch_tail, *ch_len, *ne_pos, *ne, nne;
	struct smsg *pool;
	uint32_t pool_cap, pool_free, inflight;

	struct pchk *pc;
	uint32_t *readers, *writers;
	uint32_t *dirty, ndirty;
	bool *is_dirty;
	uint64_t pending_total;

	/* the message being delivered */
	bool cur_active, cur_has_payload;
	uint32_t cur_dst;
	uint8_t cur_type;
	uint64_t cur_payload;

	struct stats st;
	struct coh_stats cst;
};

/* For the abort handler: an assert in coh.c must still name the seed. */
static const struct sim *g_sim;
static const char *g_argv0 = "sim";

/* ---- randomness: xorshift64*, seeded through splitmix64 ----------------- */

static uint64_t splitmix(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rnd(struct sim *s)
{
	s->rng ^= s->rng >> 12;
	s->rng ^= s->rng << 25;
	s->rng ^= s->rng >> 27;
	return s->rng * 0x2545f4914f6cdd1dull;
}

static uint32_t rndn(struct sim *s, uint32_t n)
{
	return (uint32_t) (((rnd(s) >> 32) * n) >> 32);
}

/* ---- reporting ---------------------------------------------------------- */

static void replay_line(FILE *f, const struct opts *o, uint64_t seed)
{
	fprintf(f,
	        "replay: %s --seed %" PRIu64
	        " --nodes %u --pages %u --steps %" PRIu64
	        " --frames %u --outstanding %u --writes %u --crashes %g",
	        g_argv0, seed, o->nodes, o->pages, o->steps, o->frames,
	        o->outstanding, o->write_pct, o->crashes);
	if (o->destroys > 0)
		fprintf(f, " --destroys %g", o->destroys);
	if (o->queue)
		fprintf(f, " --queue %u", o->queue);
	if (o->inject == INJ_STALE)
		fprintf(f, " --inject stale");
	if (o->inject == INJ_KEEP_READ)
		fprintf(f, " --inject keep-read");
	if (o->inject == INJ_LOSE_ACK)
		fprintf(f, " --inject lose-ack");
	fprintf(f, " -v\n");
}

static void on_abort(int sig)
{
	(void) sig;
	if (g_sim) {
		fprintf(stderr,
		        "ABORT (assert in the protocol) at step %" PRIu64 "\n",
		        g_sim->step);
		replay_line(stderr, g_sim->o, g_sim->o->seed);
	}
	signal(SIGABRT, SIG_DFL);
}

__attribute__((format(printf, 3, 4))) static void
fail(struct sim *s, const char *tag, const char *fmt, ...)
{
	va_list ap;
	int k;

	if (s->failed)
		return;
	s->failed = true;
	s->tag = tag;
	k = snprintf(s->why, sizeof s->why, "%s: ", tag);
	va_start(ap, fmt);
	vsnprintf(s->why + k, sizeof s->why - (size_t) k, fmt, ap);
	va_end(ap);
	if (s->tracing)
		printf("  !! %s\n", s->why);
}

__attribute__((format(printf, 2, 3))) static void trace(struct sim *s,
                                                        const char *fmt, ...)
{
	va_list ap;

	if (!s->tracing)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

/* ---- pages and values --------------------------------------------------- */

static struct coh_page_id page_id(const struct sim *s, uint32_t p)
{
	/* several objects of four pages: exercises the (oid, pgno) lookup */
	return (struct coh_page_id){.oid = s->obj_oid[p / 4], .pgno = p % 4};
}

static bool page_dying(const struct sim *s, uint32_t p)
{
	return s->obj_state[p / 4] == OBJ_DYING;
}

/* The page slot a message is about, or -1 for a forgotten object's (for
 * traces). */
static int64_t msg_page(const struct sim *s, const struct coh_msg *m)
{
	for (uint32_t o = 0; o < s->nobj; o++)
		if (s->obj_oid[o] == m->oid)
			return (int64_t) o * 4 + (int64_t) m->pgno;
	return -1;
}

/* A written value names its page, its writer and the writer's counter on
 * that page, so a misplaced or stale value is recognised. */
static uint64_t mkval(uint32_t p, uint32_t w, uint32_t ctr)
{
	return (uint64_t) p << 48 | (uint64_t) ((w + 1) & 0xffff) << 32 | ctr;
}

static uint32_t val_page(uint64_t v)
{
	return (uint32_t) (v >> 48);
}

static uint32_t val_writer(uint64_t v)
{
	return (uint32_t) ((v >> 32) & 0xffff) - 1; /* 0 -> NONE */
}

static struct run *run_at(struct pchk *c, uint32_t i)
{
	return &c->ring[(c->first + i) % HK];
}

/* Whether a read may return v although the latest write is c->truth: v
 * was written earlier, every later write was made by a node now dead, and
 * none of them was read by a node other than its writer (I2 across
 * crashes). With `commit`, the lost writes leave the history. */
static bool rollback_ok(struct sim *s, struct pchk *c, uint64_t v, bool commit)
{
	uint32_t vw = val_writer(v), vc = (uint32_t) v;

	for (uint32_t i = c->n; i-- > 0;) {
		struct run *r = run_at(c, i);
		bool droppable = r->writer != NONE && !s->alive[r->writer] &&
		                 !r->observed;

		if (r->writer == vw && vc >= r->lo && vc <= r->hi) {
			if (vc < r->hi && !droppable)
				return false;
			if (commit) {
				r->hi = vc;
				c->n = i + 1;
				c->truth = v;
				s->st.rollbacks++;
			}
			return true;
		}
		if (!droppable)
			return false;
	}
	return false;
}

static bool acceptable(struct sim *s, uint32_t p, uint64_t v)
{
	struct pchk *c = &s->pc[p];

	return val_page(v) == p &&
	       (v == c->truth || rollback_ok(s, c, v, false));
}

/* I2: node r read v from page p. */
static void check_read(struct sim *s, uint32_t p, uint32_t r, uint64_t v)
{
	struct pchk *c = &s->pc[p];
	struct run *last;

	if (val_page(v) != p) {
		fail(s, "I2", "node %u read page %u and got %#" PRIx64 " (%s)",
		     r, p, v,
		     v == POISON ? "a discarded frame"
		                 : "another page's value");
		return;
	}
	if (v != c->truth && !rollback_ok(s, c, v, true)) {
		fail(s, "I2",
		     "node %u read page %u = w%d#%u, but the last "
		     "write is w%d#%u%s",
		     r, p, (int) val_writer(v), (uint32_t) v,
		     (int) val_writer(c->truth), (uint32_t) c->truth,
		     c->overflow ? " (checker history overflowed)" : "");
		return;
	}
	last = run_at(c, c->n - 1);
	if (r != last->writer) {
		/* Nothing before an observed value can ever be rolled back
		 * to: keep only this run. */
		last->observed = true;
		c->first = (c->first + c->n - 1) % HK;
		c->n = 1;
	}
}

static void record_write(struct sim *s, uint32_t p, uint32_t w, uint32_t ctr,
                         uint64_t v)
{
	struct pchk *c = &s->pc[p];
	struct run *last = run_at(c, c->n - 1);

	c->prev = c->truth;
	c->truth = v;
	if (last->writer == w && !last->observed && last->hi + 1 == ctr) {
		last->hi = ctr;
		return;
	}
	if (c->n == HK) {
		c->first = (c->first + 1) % HK;
		c->n--;
		c->overflow = true;
	}
	*run_at(c, c->n++) = (struct run){.writer = w, .lo = ctr, .hi = ctr};
}

/* ---- channels ----------------------------------------------------------- */

static uint32_t msg_alloc(struct sim *s)
{
	uint32_t i;

	if (s->pool_free == NIL) {
		uint32_t old = s->pool_cap, cap = old ? old * 2 : 1024;
		struct smsg *np = realloc(s->pool, cap * sizeof *np);
		if (!np) {
			perror("realloc");
			exit(2);
		}
		s->pool = np;
		s->pool_cap = cap;
		for (i = old; i < cap; i++)
			s->pool[i].next = i + 1 < cap ? i + 1 : NIL;
		s->pool_free = old;
	}
	i = s->pool_free;
	s->pool_free = s->pool[i].next;
	return i;
}

static void msg_free(struct sim *s, uint32_t i)
{
	s->pool[i].next = s->pool_free;
	s->pool_free = i;
}

static void ne_add(struct sim *s, uint32_t c)
{
	if (s->ne_pos[c] == NIL) {
		s->ne_pos[c] = s->nne;
		s->ne[s->nne++] = c;
	}
}

static void ne_del(struct sim *s, uint32_t c)
{
	uint32_t i = s->ne_pos[c], last = s->ne[--s->nne];

	s->ne[i] = last;
	s->ne_pos[last] = i;
	s->ne_pos[c] = NIL;
}

static void ch_push(struct sim *s, uint32_t c, uint32_t i)
{
	s->pool[i].next = NIL;
	if (s->ch_tail[c] == NIL)
		s->ch_head[c] = i;
	else
		s->pool[s->ch_tail[c]].next = i;
	s->ch_tail[c] = i;
	s->ch_len[c]++;
	s->inflight++;
	ne_add(s, c);
}

static uint32_t ch_pop(struct sim *s, uint32_t c)
{
	uint32_t i = s->ch_head[c];

	s->ch_head[c] = s->pool[i].next;
	if (s->ch_head[c] == NIL) {
		s->ch_tail[c] = NIL;
		ne_del(s, c);
	}
	s->ch_len[c]--;
	s->inflight--;
	return i;
}

/* Inserts message i after the first `pos` messages of channel c. */
static void ch_insert(struct sim *s, uint32_t c, uint32_t pos, uint32_t i)
{
	uint32_t prev = NIL, j = s->ch_head[c];

	if (pos >= s->ch_len[c]) {
		ch_push(s, c, i);
		return;
	}
	for (uint32_t k = 0; k < pos; k++) {
		prev = j;
		j = s->pool[j].next;
	}
	s->pool[i].next = j;
	if (prev == NIL)
		s->ch_head[c] = i;
	else
		s->pool[prev].next = i;
	s->ch_len[c]++;
	s->inflight++;
}

/* Keeps the first `keep` messages of channel c, drops the rest. */
static void ch_truncate(struct sim *s, uint32_t c, uint32_t keep)
{
	uint32_t i = s->ch_head[c], prev = NIL;

	for (uint32_t k = 0; k < keep; k++) {
		prev = i;
		i = s->pool[i].next;
	}
	while (i != NIL) {
		uint32_t next = s->pool[i].next;
		msg_free(s, i);
		s->ch_len[c]--;
		s->inflight--;
		s->st.lost++;
		i = next;
	}
	if (prev == NIL) {
		s->ch_head[c] = s->ch_tail[c] = NIL;
		if (s->ne_pos[c] != NIL)
			ne_del(s, c);
	} else {
		s->pool[prev].next = NIL;
		s->ch_tail[c] = prev;
	}
}

/* ---- the simulated driver: executing actions ---------------------------- */

static void mark_dirty(struct sim *s, uint32_t p)
{
	if (!s->is_dirty[p]) {
		s->is_dirty[p] = true;
		s->dirty[s->ndirty++] = p;
	}
}

/* Sends m from node n about page slot p, or (p = NIL) about a page n does
 * not track: the answer to a message that found no page (cookie 0). */
static void drv_send(struct sim *s, uint32_t n, uint32_t p,
                     const struct coh_msg *m)
{
	uint64_t payload = 0;
	uint32_t i;

	if (m->src != n || m->dst >= s->N || m->dst == n) {
		fail(s, "DRIVER", "node %u sent a malformed %s", n,
		     coh_msg_name(m->type));
		return;
	}
	if (p == NIL) {
		struct coh_page_info in;

		/* Only an INV_ACK or a NACK, and only for a page this node
		 * does not have (F3). */
		if ((m->type != COH_M_INV_ACK && m->type != COH_M_NACK) ||
		    (m->flags & COH_F_PAYLOAD) ||
		    coh_page_info(s->nd[n].m,
		                  (struct coh_page_id){m->oid, m->pgno},
		                  &in) != -ENOENT) {
			fail(s, "DRIVER", "node %u sent %s with cookie 0", n,
			     coh_msg_name(m->type));
			return;
		}
	} else {
		struct coh_page_id id = page_id(s, p);

		if (m->oid != id.oid || m->pgno != id.pgno) {
			fail(s, "DRIVER",
			     "node %u sent %s about p%u with the wrong id", n,
			     coh_msg_name(m->type), p);
			return;
		}
	}
	if (m->flags & COH_F_PAYLOAD) {
		payload = s->nd[n].frame[p];
		if (s->o->inject == INJ_STALE &&
		    (m->type == COH_M_WRITEBACK ||
		     m->type == COH_M_FETCH_REPLY) &&
		    rndn(s, 4) == 0)
			payload = s->pc[p].prev; /* a lost update */
	}
	trace(s, "    %u: send ->%u %s %s p%d seq %u%s", n, m->dst,
	      coh_msg_name(m->type), coh_mode_name(m->mode),
	      p == NIL ? -1 : (int) p, m->seq, m->err ? " err" : "");
	if (m->flags & COH_F_PAYLOAD)
		trace(s, " [w%d#%u]", (int) val_writer(payload),
		      (uint32_t) payload);
	if (s->o->inject == INJ_LOSE_ACK && m->type == COH_M_INV_ACK &&
	    rndn(s, 16) == 0) {
		trace(s, " (injected loss)\n");
		return;
	}
	if (!s->alive[m->dst]) {
		trace(s, " (to a dead node: dropped)\n");
		return;
	}
	trace(s, "\n");
	i = msg_alloc(s);
	s->pool[i].m = *m;
	s->pool[i].payload = payload;
	s->pool[i].down = false;
	ch_push(s, n * s->N + m->dst, i);
}

static void drv_access(struct sim *s, uint32_t n, uint32_t p, unsigned mode,
                       bool at_home)
{
	struct snode *nd = &s->nd[n];
	unsigned old = nd->mirror[p];

	trace(s, "    %u: access p%u %s\n", n, p, coh_mode_name(mode));
	if (at_home != (s->home[p] == n)) {
		fail(s, "DRIVER", "action on p%u at node %u: wrong at_home", p,
		     n);
		return;
	}
	if (s->o->inject == INJ_KEEP_READ && old == COH_READ &&
	    mode == COH_INVALID && s->cur_active &&
	    s->cur_type == COH_M_INVALIDATE && rndn(s, 8) == 0) {
		trace(s, "    (injected: mapping left in place)\n");
		return;
	}
	if (old == COH_READ)
		s->readers[p]--;
	else if (old == COH_WRITE)
		s->writers[p]--;
	if (mode == COH_READ)
		s->readers[p]++;
	else if (mode == COH_WRITE)
		s->writers[p]++;
	if (!at_home) {
		nd->held += (mode != COH_INVALID) - (old != COH_INVALID);
		if (mode == COH_INVALID)
			nd->frame[p] =
			        POISON; /* the frame went back to the pool */
	}
	nd->mirror[p] = (uint8_t) mode;
	mark_dirty(s, p);
}

/* The operation the driver was waiting for runs now, on its frame. */
static void perform(struct sim *s, uint32_t n, uint32_t p, unsigned op)
{
	struct snode *nd = &s->nd[n];
	unsigned need = op == OP_WRITE ? COH_WRITE : COH_READ;

	if (nd->mirror[p] < need) {
		fail(s, "I1", "node %u may %s p%u but holds it %s", n,
		     op == OP_WRITE ? "write" : "read", p,
		     coh_mode_name(nd->mirror[p]));
		return;
	}
	if (op == OP_READ) {
		s->st.reads++;
		trace(s, "    %u: read p%u = w%d#%u\n", n, p,
		      (int) val_writer(nd->frame[p]), (uint32_t) nd->frame[p]);
		check_read(s, p, n, nd->frame[p]);
	} else {
		uint32_t c = ++s->ctr[(size_t) n * s->P + p];
		uint64_t v = mkval(p, n, c);

		s->st.writes++;
		nd->frame[p] = v;
		record_write(s, p, n, c, v);
		trace(s, "    %u: write p%u := w%u#%u\n", n, p, n, c);
	}
}

static void drv_done(struct sim *s, uint32_t n, uint32_t p, unsigned mode,
                     int err)
{
	struct snode *nd = &s->nd[n];
	unsigned op = nd->op[p];

	trace(s, "    %u: done p%u %s %s\n", n, p, coh_mode_name(mode),
	      err ? strerror(-err) : "ok");
	if (op == OP_NONE || mode != (op == OP_WRITE ? COH_WRITE : COH_READ)) {
		fail(s, "DRIVER", "node %u: DONE %s on p%u it did not ask for",
		     n, coh_mode_name(mode), p);
		return;
	}
	nd->op[p] = OP_NONE;
	nd->npending--;
	s->pending_total--;
	if (err == 0) {
		perform(s, n, p, op);
	} else if (err == -ENOBUFS && s->o->queue) {
		s->st.nobufs++; /* the home's queue was full: NACK */
	} else if (err == -ENOENT && page_dying(s, p)) {
		s->st.enoent++; /* its object is being destroyed (F1, F2) */
	} else if (err == -EHOSTDOWN) {
		s->st.hostdown++;
		if (s->alive[s->home[p]])
			fail(s, "I3",
			     "node %u: p%u failed EHOSTDOWN but its home "
			     "%u is alive",
			     n, p, s->home[p]);
	} else {
		fail(s, "I3", "node %u: request on p%u failed: %s", n, p,
		     strerror(-err));
	}
}

static void on_action(void *ctx, const struct coh_action *a)
{
	struct actx *c = ctx;
	struct sim *s = c->s;
	uint32_t n = c->node, p = (uint32_t) a->cookie - 1;

	if (a->cookie == 0 && a->type == COH_ACT_SEND) {
		drv_send(s, n, NIL, &a->msg); /* about an untracked page */
		return;
	}
	if (a->cookie == 0 || a->cookie > s->P) {
		fail(s, "DRIVER", "node %u: action with a bad cookie", n);
		return;
	}
	if (!s->nd[n].known[p]) {
		fail(s, "DRIVER",
		     "node %u: action on p%u, which it does not track", n, p);
		return;
	}
	switch (a->type) {
	case COH_ACT_SEND:
		drv_send(s, n, p, &a->msg);
		break;
	case COH_ACT_INSTALL:
		trace(s, "    %u: install p%u [w%d#%u]\n", n, p,
		      (int) val_writer(s->cur_payload),
		      (uint32_t) s->cur_payload);
		if (!s->cur_active || s->cur_dst != n || !s->cur_has_payload) {
			fail(s, "DRIVER", "node %u: INSTALL without a payload",
			     n);
			return;
		}
		s->nd[n].frame[p] = s->cur_payload;
		break;
	case COH_ACT_ACCESS:
		drv_access(s, n, p, a->mode, a->at_home);
		break;
	case COH_ACT_DONE:
		drv_done(s, n, p, a->mode, a->err);
		break;
	default:
		fail(s, "DRIVER", "node %u: unknown action %d", n, a->type);
	}
}

/* ---- scheduler events --------------------------------------------------- */

static void deliver(struct sim *s)
{
	uint32_t c = s->ne[rndn(s, s->nne)], i = ch_pop(s, c);
	uint32_t src = c / s->N, dst = c % s->N;
	struct smsg sm = s->pool[i];
	int rc;

	msg_free(s, i);
	s->st.delivered++;
	if (sm.down) {
		trace(s, "[%" PRIu64 "] %u learns %u is down\n", s->step, dst,
		      src);
		rc = coh_peer_down(s->nd[dst].m, src);
		if (rc)
			fail(s, "PROTO", "coh_peer_down(%u, %u) = %d", dst, src,
			     rc);
		return;
	}
	if (s->tracing)
		trace(s,
		      "[%" PRIu64 "] deliver %u->%u %s %s p%" PRId64
		      " (oid %" PRIu64 ") seq %u\n",
		      s->step, src, dst, coh_msg_name(sm.m.type),
		      coh_mode_name(sm.m.mode), msg_page(s, &sm.m), sm.m.oid,
		      sm.m.seq);
	s->cur_active = true;
	s->cur_dst = dst;
	s->cur_type = sm.m.type;
	s->cur_payload = sm.payload;
	s->cur_has_payload = sm.m.flags & COH_F_PAYLOAD;
	rc = coh_recv(s->nd[dst].m, &sm.m);
	s->cur_active = false;
	if (rc)
		fail(s, "PROTO", "node %u rejected %s from %u: %s", dst,
		     coh_msg_name(sm.m.type), src, strerror(-rc));
}

static uint32_t random_alive(struct sim *s)
{
	return s->alive_ids[rndn(s, s->nalive)];
}

static void do_evict(struct sim *s, uint32_t n, uint32_t p, bool forced)
{
	int rc;

	trace(s, "[%" PRIu64 "] %u evicts p%u (%s)%s\n", s->step, n, p,
	      coh_mode_name(s->nd[n].mirror[p]), forced ? " to make room" : "");
	rc = coh_evict(s->nd[n].m, page_id(s, p));
	if (rc)
		fail(s, "PROTO", "coh_evict(%u, p%u) = %s", n, p,
		     strerror(-rc));
	s->st.evictions++;
	s->st.forced_evictions += forced;
}

/* With --inject keep-read, a mapping the driver failed to remove: the
 * node keeps reading it, but the scheduler leaves it alone so that the
 * invariant checks, not a driver cross-check, must notice. */
static bool zombie(struct sim *s, uint32_t n, uint32_t p)
{
	struct coh_page_info in;

	if (s->o->inject != INJ_KEEP_READ ||
	    coh_page_info(s->nd[n].m, page_id(s, p), &in))
		return false;
	return in.local != s->nd[n].mirror[p];
}

/* Finds a page node n could evict (held, no request), scanning from a
 * random start; NIL if none. */
static uint32_t evictable(struct sim *s, uint32_t n, bool nonhome_only)
{
	struct snode *nd = &s->nd[n];
	uint32_t start = rndn(s, s->P);

	for (uint32_t k = 0; k < s->P; k++) {
		uint32_t p = (start + k) % s->P;
		if (nd->mirror[p] != COH_INVALID && nd->op[p] == OP_NONE &&
		    !(nonhome_only && s->home[p] == n) && !zombie(s, n, p))
			return p;
	}
	return NIL;
}

static void issue(struct sim *s)
{
	uint32_t n = random_alive(s), p = NIL;
	struct snode *nd = &s->nd[n];
	unsigned op = rndn(s, 100) < s->o->write_pct ? OP_WRITE : OP_READ;
	unsigned need = op == OP_WRITE ? COH_WRITE : COH_READ;
	int rc;

	if (rndn(s, 2)) { /* often a page it holds: hits and upgrades */
		uint32_t start = rndn(s, s->P);
		for (uint32_t k = 0; k < s->P && p == NIL; k++)
			if (nd->mirror[(start + k) % s->P] != COH_INVALID)
				p = (start + k) % s->P;
	}
	if (p == NIL)
		p = rndn(s, s->P);
	if (!nd->known[p]) {
		/* The node opens an object it has not used yet; nobody
		 * uses a page once its object is being destroyed. */
		if (s->obj_state[p / 4] != OBJ_LIVE)
			return;
		rc = coh_page_add(nd->m, page_id(s, p), s->home[p], p + 1);
		if (rc) {
			fail(s, "PROTO", "coh_page_add(%u, p%u) = %s", n, p,
			     strerror(-rc));
			return;
		}
		nd->known[p] = true;
	}
	/* Another thread of the node may use what it holds while a request
	 * is under way (a read during an upgrade); nothing else. */
	if (nd->op[p] != OP_NONE && nd->mirror[p] < need)
		return;
	if (zombie(s, n, p)) {
		if (op == OP_READ) { /* it still reads through the mapping */
			s->st.hits++;
			perform(s, n, p, op);
		}
		return;
	}
	if (nd->mirror[p] >= need) {
		trace(s, "[%" PRIu64 "] %u %s p%u: hit\n", s->step, n,
		      op == OP_WRITE ? "writes" : "reads", p);
		rc = coh_acquire(nd->m, page_id(s, p), need);
		if (rc != 0) {
			fail(s, "DRIVER",
			     "node %u holds p%u %s but acquire = %d", n, p,
			     coh_mode_name(nd->mirror[p]), rc);
			return;
		}
		s->st.hits++;
		perform(s, n, p, op);
		return;
	}
	if (s->home[p] != n && nd->mirror[p] == COH_INVALID &&
	    nd->held + nd->npending >= s->o->frames) {
		/* The frame pool is full: make room first, as the daemon
		 * will. */
		uint32_t v = evictable(s, n, true);
		if (v == NIL)
			return;
		do_evict(s, n, v, true);
	}
	trace(s, "[%" PRIu64 "] %u %s p%u (%s): request\n", s->step, n,
	      op == OP_WRITE ? "writes" : "reads", p,
	      coh_mode_name(nd->mirror[p]));
	nd->op[p] = (uint8_t) op;
	nd->npending++;
	s->pending_total++;
	rc = coh_acquire(nd->m, page_id(s, p), need);
	if (rc == 1)
		return;
	nd->op[p] = OP_NONE;
	nd->npending--;
	s->pending_total--;
	if (rc == -EHOSTDOWN && !s->alive[s->home[p]]) {
		s->st.hostdown++;
	} else if (rc == -EAGAIN &&
	           coh_outstanding(nd->m) >= s->o->outstanding) {
		s->st.again++;
	} else if (rc == -ENOBUFS && s->o->queue && s->home[p] == n) {
		s->st.nobufs++;
	} else {
		fail(s, rc == -EHOSTDOWN ? "I3" : "DRIVER",
		     "coh_acquire(%u, p%u, %s) = %d", n, p, coh_mode_name(need),
		     rc);
	}
}

static void crash(struct sim *s)
{
	uint32_t k = rndn(s, s->nalive), n = s->alive_ids[k];
	struct snode *nd = &s->nd[n];

	trace(s, "[%" PRIu64 "] CRASH %u\n", s->step, n);
	s->st.crashes++;
	s->alive[n] = false;
	s->alive_ids[k] = s->alive_ids[--s->nalive];
	for (uint32_t p = 0; p < s->P; p++) {
		if (nd->mirror[p] == COH_READ)
			s->readers[p]--;
		else if (nd->mirror[p] == COH_WRITE)
			s->writers[p]--;
		nd->op[p] = OP_NONE;
	}
	s->pending_total -= nd->npending;
	nd->npending = 0;
	for (uint32_t x = 0; x < s->N; x++) {
		uint32_t in = x * s->N + n, out = n * s->N + x;

		/* What was on its way to it is gone. */
		if (s->ch_len[in])
			ch_truncate(s, in, 0);
		if (x == n || !s->alive[x])
			continue;
		/* What it sent may be lost from any point on, or still be
		 * delivered after the survivor's failure detector fired
		 * (then the machine must ignore it, C3). */
		uint32_t cut = s->ch_len[out];
		if (cut && rndn(s, 2))
			cut = rndn(s, cut + 1);
		if (rndn(s, 2))
			ch_truncate(s, out, cut);
		uint32_t i = msg_alloc(s);
		memset(&s->pool[i], 0, sizeof s->pool[i]);
		s->pool[i].down = true;
		ch_insert(s, out, cut, i);
	}
}

/* ---- objects: destruction and creation (--destroys) ---------------------
 */

static uint32_t obj_pages(const struct sim *s, uint32_t o)
{
	return o * 4 + 4 <= s->P ? 4 : s->P - o * 4;
}

/* A random object slot in `state`, or NIL. */
static uint32_t pick_obj(struct sim *s, enum obj_state state)
{
	uint32_t start = rndn(s, s->nobj);

	for (uint32_t k = 0; k < s->nobj; k++)
		if (s->obj_state[(start + k) % s->nobj] == state)
			return (start + k) % s->nobj;
	return NIL;
}

/* An object is destroyed: every node alive now will forget its pages, each
 * at its own time (forget_step), with deliveries, requests and crashes in
 * between, as the daemons learn of it. A quarter of the nodes other than
 * the homes learn late: only once the network has been quiet, so that
 * whatever they asked for meanwhile must have been answered by then. */
static void destroy(struct sim *s)
{
	uint32_t o = pick_obj(s, OBJ_LIVE);

	if (o == NIL)
		return;
	trace(s, "[%" PRIu64 "] DESTROY object %u (oid %" PRIu64 ")\n", s->step,
	      o, s->obj_oid[o]);
	s->st.destroys++;
	s->obj_state[o] = OBJ_DYING;
	s->obj_left[o] = s->nalive;
	for (uint32_t k = 0; k < s->nalive; k++) {
		uint32_t x = s->alive_ids[k];
		bool home = false;

		for (uint32_t p = o * 4; p < o * 4 + obj_pages(s, o); p++)
			home |= s->home[p] == x;
		if (!home && rndn(s, 4) == 0)
			s->ftl[s->nftl++] = (struct ftask){.obj = o, .node = x};
		else
			s->ft[s->nft++] = (struct ftask){.obj = o, .node = x};
	}
}

/* The network is quiet and every other forget has run: the late nodes
 * learn of the destructions now. */
static void release_late(struct sim *s)
{
	while (s->nftl)
		s->ft[s->nft++] = s->ftl[--s->nftl];
}

/* One node forgets every page of one dying object (coh_page_forget). */
static void forget_step(struct sim *s)
{
	uint32_t k = rndn(s, s->nft);
	struct ftask t = s->ft[k];
	struct snode *nd = &s->nd[t.node];
	uint32_t n = t.node, lo = t.obj * 4, hi = lo + obj_pages(s, t.obj);

	s->ft[k] = s->ft[--s->nft];
	if (s->alive[n]) {
		trace(s,
		      "[%" PRIu64 "] %u forgets object %u (oid %" PRIu64 ")\n",
		      s->step, n, t.obj, s->obj_oid[t.obj]);
		for (uint32_t p = lo; p < hi && !s->failed; p++) {
			struct coh_page_info in;
			bool known = nd->known[p];
			int rc = coh_page_forget(nd->m, page_id(s, p));

			if (rc != (known ? 0 : -ENOENT)) {
				fail(s, "PROTO",
				     "coh_page_forget(%u, p%u) = %d", n, p, rc);
				return;
			}
			if (!known)
				continue; /* it never opened the object */
			s->st.forgets++;
			if (nd->mirror[p] != COH_INVALID ||
			    nd->op[p] != OP_NONE ||
			    coh_page_info(nd->m, page_id(s, p), &in) != -ENOENT)
				fail(s, "F1",
				     "node %u forgot p%u but it is still %s%s",
				     n, p, coh_mode_name(nd->mirror[p]),
				     nd->op[p] != OP_NONE ? ", a request waits"
				                          : "");
			/* The driver discards the frame, the home copy too. */
			nd->known[p] = false;
			nd->frame[p] = POISON;
			if (s->home[p] == n)
				s->nhome_cur[n]--;
		}
		if (coh_outstanding(nd->m) != nd->npending)
			fail(s, "F1",
			     "node %u: %u requests outstanding, %u waited for",
			     n, coh_outstanding(nd->m), nd->npending);
	}
	if (--s->obj_left[t.obj] == 0) {
		/* Every live node has forgotten it: the slots are free. */
		for (uint32_t p = lo; p < hi; p++)
			if (s->readers[p] || s->writers[p])
				fail(s, "SIM",
				     "p%u forgotten everywhere, yet %u readers "
				     "%u writers",
				     p, s->readers[p], s->writers[p]);
		trace(s, "    object %u forgotten everywhere\n", t.obj);
		s->obj_state[t.obj] = OBJ_FREE;
		s->nfree++;
	}
}

/* A new object in a free slot, under a fresh oid: each page homed at a
 * live node with a directory entry to spare; only the homes add it now,
 * other nodes when they first use it (issue). */
static void create(struct sim *s)
{
	uint32_t o = pick_obj(s, OBJ_FREE), np, h[4];

	if (o == NIL)
		return;
	np = obj_pages(s, o);
	for (uint32_t i = 0; i < np; i++) {
		uint32_t start = rndn(s, s->nalive);

		h[i] = NIL;
		for (uint32_t k = 0; k < s->nalive && h[i] == NIL; k++) {
			uint32_t x = s->alive_ids[(start + k) % s->nalive];
			if (s->nhome_cur[x] < s->cap_home[x]) {
				h[i] = x;
				s->nhome_cur[x]++;
			}
		}
		if (h[i] == NIL) { /* no room now; later */
			while (i-- > 0)
				s->nhome_cur[h[i]]--;
			return;
		}
	}
	s->obj_oid[o] = s->next_oid++;
	s->obj_state[o] = OBJ_LIVE;
	s->nfree--;
	s->st.creates++;
	trace(s, "[%" PRIu64 "] CREATE object %u (oid %" PRIu64 ")\n", s->step,
	      o, s->obj_oid[o]);
	for (uint32_t i = 0; i < np; i++) {
		uint32_t p = o * 4 + i;
		struct pchk *c = &s->pc[p];
		int rc;

		s->home[p] = h[i];
		s->gen[p]++;
		/* The initial value names the generation: a stale frame of
		 * an earlier object in this slot is caught (I2). */
		memset(c, 0, sizeof *c);
		c->truth = c->prev = mkval(p, NONE, s->gen[p]);
		c->n = 1;
		c->ring[0] = (struct run){.writer = NONE,
		                          .lo = s->gen[p],
		                          .hi = s->gen[p],
		                          .observed = true};
		for (uint32_t x = 0; x < s->N; x++) {
			s->nd[x].mirror[p] = COH_INVALID;
			s->nd[x].op[p] = OP_NONE;
			s->nd[x].known[p] = false;
			s->nd[x].frame[p] = POISON;
		}
		s->nd[h[i]].frame[p] = c->truth;
		trace(s, "    p%u homed at %u\n", p, h[i]);
		rc = coh_page_add(s->nd[h[i]].m, page_id(s, p), h[i], p + 1);
		if (rc) {
			fail(s, "PROTO", "coh_page_add(%u, p%u) = %s", h[i], p,
			     strerror(-rc));
			return;
		}
		s->nd[h[i]].known[p] = true;
	}
}

/* ---- invariant checks ---------------------------------------------------- */

static void check_i1(struct sim *s)
{
	for (uint32_t k = 0; k < s->ndirty; k++) {
		uint32_t p = s->dirty[k];
		s->is_dirty[p] = false;
		if (s->writers[p] > 1 || (s->writers[p] == 1 && s->readers[p]))
			fail(s, "I1", "page %u has %u writers and %u readers",
			     p, s->writers[p], s->readers[p]);
	}
	s->ndirty = 0;
}

/* I3 and I4, with the network quiet. Also recounts I1 from scratch. */
static void check_quiet(struct sim *s)
{
	s->st.i4++;
	if (s->pending_total) {
		for (uint32_t n = 0; n < s->N; n++)
			for (uint32_t p = 0; s->alive[n] && p < s->P; p++)
				if (s->nd[n].op[p] != OP_NONE) {
					fail(s, "I3",
					     "network quiet but node %u "
					     "still waits for p%u",
					     n, p);
					return;
				}
	}
	for (uint32_t n = 0; n < s->N && !s->failed; n++)
		if (s->alive[n] && coh_outstanding(s->nd[n].m) != 0)
			fail(s, "I3",
			     "network quiet but node %u has %u requests "
			     "outstanding",
			     n, coh_outstanding(s->nd[n].m));
	for (uint32_t p = 0; p < s->P && !s->failed; p++) {
		struct coh_page_id id = page_id(s, p);
		struct coh_page_info hi = {0}, li;
		uint32_t h = s->home[p], nr = 0, nw = 0, w = NONE;
		bool have = false;
		uint64_t val = 0;

		if (s->obj_state[p / 4] != OBJ_LIVE) {
			/* Forgotten everywhere, or at the home and some
			 * nodes, the late ones still to come: no directory
			 * to check against, and I3 was checked above. */
			continue;
		}
		if (s->alive[h]) {
			if (coh_page_info(s->nd[h].m, id, &hi))
				fail(s, "I4", "p%u unknown at its home %u", p,
				     h);
			if (hi.busy || hi.queued)
				fail(s, "I4",
				     "network quiet but p%u is busy at "
				     "its home %u (%u queued)",
				     p, h, hi.queued);
			if (hi.state != COH_EXCLUSIVE) {
				val = s->nd[h].frame[p];
				have = true;
			}
		}
		for (uint32_t x = 0; x < s->N && !s->failed; x++) {
			unsigned st = s->nd[x].mirror[p];
			if (!s->alive[x])
				continue;
			if (!s->nd[x].known[p]) {
				/* It never opened the object. */
				li = (struct coh_page_info){
				        .local = COH_INVALID};
				if (coh_page_info(s->nd[x].m, id, &li) !=
				            -ENOENT ||
				    st != COH_INVALID)
					fail(s, "I4",
					     "node %u: p%u is %s, "
					     "but it never added it",
					     x, p, coh_mode_name(st));
			} else if (coh_page_info(s->nd[x].m, id, &li)) {
				fail(s, "I4", "node %u lost p%u", x, p);
			}
			if (li.local != st || li.pending != COH_INVALID)
				fail(s, "I4",
				     "node %u: p%u is %s (pending %s) in "
				     "the machine but %s in the driver",
				     x, p, coh_mode_name(li.local),
				     coh_mode_name(li.pending),
				     coh_mode_name(st));
			if (st == COH_READ) {
				nr++;
				if (have && s->nd[x].frame[p] != val)
					fail(s, "I4",
					     "p%u: node %u's copy differs "
					     "from the home copy",
					     p, x);
				val = s->nd[x].frame[p];
				have = true;
			} else if (st == COH_WRITE) {
				nw++;
				w = x;
			}
			if (!s->alive[h])
				continue;
			int in = coh_dir_has_copy(s->nd[h].m, id, x);
			bool ok;
			switch (hi.state) {
			case COH_UNCACHED:
				ok = st == COH_INVALID && !in;
				break;
			case COH_SHARED:
				ok = st != COH_WRITE && in == (st == COH_READ);
				break;
			default:
				ok = !in && (x == hi.owner ? st == COH_WRITE
				                           : st == COH_INVALID);
			}
			if (!ok)
				fail(s, "I4",
				     "p%u: home %u says %s (owner %d, %s in "
				     "copyset) but node %u holds it %s",
				     p, h,
				     hi.state == COH_UNCACHED ? "UNCACHED"
				     : hi.state == COH_SHARED ? "SHARED"
				                              : "EXCLUSIVE",
				     (int) hi.owner, in ? "" : "not", x,
				     coh_mode_name(st));
		}
		if (s->failed)
			return;
		if (nw > 1 || (nw && nr))
			fail(s, "I1", "p%u: %u writers, %u readers", p, nw, nr);
		if (s->alive[h] && hi.state == COH_SHARED && hi.sharers != nr)
			fail(s, "I4", "p%u: copyset of %u, %u readers", p,
			     hi.sharers, nr);
		if (s->alive[h] && hi.state == COH_EXCLUSIVE &&
		    !s->alive[hi.owner])
			fail(s, "I4", "p%u: owned by dead node %u", p,
			     hi.owner);
		if (nw)
			val = s->nd[w].frame[p], have = true;
		if (have && !acceptable(s, p, val))
			fail(s, "I4",
			     "p%u: copies hold w%d#%u, latest write is "
			     "w%d#%u",
			     p, (int) val_writer(val), (uint32_t) val,
			     (int) val_writer(s->pc[p].truth),
			     (uint32_t) s->pc[p].truth);
		if (nr != s->readers[p] || nw != s->writers[p])
			fail(s, "SIM", "p%u: reader/writer counts drifted", p);
	}
}

/* ---- one run ------------------------------------------------------------- */

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz);

	if (!p) {
		perror("calloc");
		exit(2);
	}
	return p;
}

static void sim_free(struct sim *s)
{
	for (uint32_t n = 0; n < s->N; n++) {
		coh_free(s->nd[n].m);
		free(s->nd[n].frame);
		free(s->nd[n].mirror);
		free(s->nd[n].op);
		free(s->nd[n].known);
	}
	free(s->nd);
	free(s->ctx);
	free(s->alive);
	free(s->alive_ids);
	free(s->home);
	free(s->ctr);
	free(s->ch_head);
	free(s->ch_tail);
	free(s->ch_len);
	free(s->ne_pos);
	free(s->ne);
	free(s->pool);
	free(s->pc);
	free(s->readers);
	free(s->writers);
	free(s->dirty);
	free(s->is_dirty);
	free(s->obj_oid);
	free(s->obj_state);
	free(s->obj_left);
	free(s->gen);
	free(s->cap_home);
	free(s->nhome_cur);
	free(s->ft);
	free(s->ftl);
}

static void sim_init(struct sim *s, const struct opts *o, uint64_t seed)
{
	uint32_t N = o->nodes, P = o->pages;
	size_t NN = (size_t) N * N;
	uint32_t *nhome;
	uint64_t sm = seed;

	memset(s, 0, sizeof *s);
	s->o = o;
	s->N = N;
	s->P = P;
	s->rng = splitmix(&sm) | 1;
	s->tracing = o->verbose && o->trace_from == 0;
	s->nd = xcalloc(N, sizeof *s->nd);
	s->ctx = xcalloc(N, sizeof *s->ctx);
	s->alive = xcalloc(N, sizeof *s->alive);
	s->alive_ids = xcalloc(N, sizeof *s->alive_ids);
	s->home = xcalloc(P, sizeof *s->home);
	s->ctr = xcalloc((size_t) N * P, sizeof *s->ctr);
	s->ch_head = xcalloc(NN, sizeof *s->ch_head);
	s->ch_tail = xcalloc(NN, sizeof *s->ch_tail);
	s->ch_len = xcalloc(NN, sizeof *s->ch_len);
	s->ne_pos = xcalloc(NN, sizeof *s->ne_pos);
	s->ne = xcalloc(NN, sizeof *s->ne);
	s->pool_free = NIL;
	s->pc = xcalloc(P, sizeof *s->pc);
	s->readers = xcalloc(P, sizeof *s->readers);
	s->writers = xcalloc(P, sizeof *s->writers);
	s->dirty = xcalloc(P, sizeof *s->dirty);
	s->is_dirty = xcalloc(P, sizeof *s->is_dirty);
	s->nobj = (P + 3) / 4;
	s->obj_oid = xcalloc(s->nobj, sizeof *s->obj_oid);
	s->obj_state = xcalloc(s->nobj, sizeof *s->obj_state);
	s->obj_left = xcalloc(s->nobj, sizeof *s->obj_left);
	s->ft = xcalloc((size_t) s->nobj * N, sizeof *s->ft);
	s->ftl = xcalloc((size_t) s->nobj * N, sizeof *s->ftl);
	for (uint32_t ob = 0; ob < s->nobj; ob++)
		s->obj_oid[ob] = 1000 + ob;
	s->next_oid = 1000 + s->nobj;
	s->gen = xcalloc(P, sizeof *s->gen);
	s->cap_home = xcalloc(N, sizeof *s->cap_home);
	s->nhome_cur = xcalloc(N, sizeof *s->nhome_cur);
	memset(s->ch_head, 0xff, NN * sizeof *s->ch_head);
	memset(s->ch_tail, 0xff, NN * sizeof *s->ch_tail);
	memset(s->ne_pos, 0xff, NN * sizeof *s->ne_pos);

	nhome = xcalloc(N, sizeof *nhome);
	for (uint32_t p = 0; p < P; p++) {
		s->home[p] = rndn(s, N);
		nhome[s->home[p]]++;
		s->pc[p].truth = mkval(p, NONE, 0);
		s->pc[p].prev = s->pc[p].truth;
		s->pc[p].n = 1;
		s->pc[p].ring[0] =
		        (struct run){.writer = NONE, .observed = true};
	}
	for (uint32_t n = 0; n < N; n++) {
		/* Objects created later are homed where a directory entry is
		 * free: a few to spare per node. Page records are exactly P
		 * per node, so forgotten ones must be reused. */
		uint32_t extra = o->destroys > 0 ? (P + N - 1) / N : 0;
		s->cap_home[n] = nhome[n] + extra < P ? nhome[n] + extra : P;
		s->nhome_cur[n] = nhome[n];
	}
	for (uint32_t n = 0; n < N; n++) {
		struct snode *nd = &s->nd[n];
		uint64_t q = (uint64_t) s->cap_home[n] * N;
		struct coh_config cfg = {
		        .self = n,
		        .max_nodes = N,
		        .max_pages = P,
		        .max_home_pages = s->cap_home[n],
		        .max_outstanding = o->outstanding,
		        /* one request per node and page can wait here */
		        .max_queued =
		                o->queue
		                        ? o->queue
		                        : (uint32_t) (q < (uint64_t) N * o->outstanding
		                                              ? (q ? q : 1)
		                                              : 0),
		        .act = on_action,
		        .act_ctx = &s->ctx[n],
		};
		int rc;

		s->ctx[n] = (struct actx){.s = s, .node = n};
		s->alive[n] = true;
		s->alive_ids[n] = n;
		nd->frame = xcalloc(P, sizeof *nd->frame);
		nd->mirror = xcalloc(P, sizeof *nd->mirror);
		nd->op = xcalloc(P, sizeof *nd->op);
		nd->known = xcalloc(P, sizeof *nd->known);
		rc = coh_init(&nd->m, &cfg);
		if (rc) {
			fprintf(stderr, "coh_init: %s\n", strerror(-rc));
			exit(2);
		}
		for (uint32_t p = 0; p < P; p++) {
			nd->frame[p] =
			        s->home[p] == n ? s->pc[p].truth : POISON;
			rc = coh_page_add(nd->m, page_id(s, p), s->home[p],
			                  p + 1);
			nd->known[p] = true;
			if (rc) {
				fprintf(stderr, "coh_page_add: %s\n",
				        strerror(-rc));
				exit(2);
			}
		}
	}
	s->nalive = N;
	free(nhome);
}

static void sum_stats(struct sim *s)
{
	for (uint32_t n = 0; n < s->N; n++) {
		struct coh_stats c;
		coh_get_stats(s->nd[n].m, &c);
		s->cst.msgs_out += c.msgs_out;
		s->cst.ignored_dead += c.ignored_dead;
		s->cst.queued += c.queued;
		s->cst.evict_crossed += c.evict_crossed;
		s->cst.fetch_crossed += c.fetch_crossed;
		s->cst.wb_as_reply += c.wb_as_reply;
		s->cst.fetch_fallback += c.fetch_fallback;
		s->cst.failed_hostdown += c.failed_hostdown;
		s->cst.forgotten += c.forgotten;
		s->cst.ignored_unknown += c.ignored_unknown;
	}
}

/* Runs one seed; returns true if every check held. */
static uint64_t cut_of(double per_run, uint64_t steps)
{
	if (!steps || per_run <= 0)
		return 0;
	if (per_run / (double) steps >= 1.0)
		return UINT64_MAX;
	return (uint64_t) ((per_run / (double) steps) * 18446744073709551615.0);
}

static bool run_one(struct sim *s, const struct opts *o, uint64_t seed)
{
	uint64_t crash_cut, destroy_cut, last_i4 = 0, i4_every, limit;
	bool quieting = false;

	sim_init(s, o, seed);
	g_sim = s;
	crash_cut = o->steps ? (uint64_t) ((o->crashes / (double) o->steps) *
	                                   18446744073709551615.0)
	                     : 0;
	if (o->crashes / (double) (o->steps ? o->steps : 1) >= 1.0)
		crash_cut = UINT64_MAX;
	destroy_cut = cut_of(o->destroys, o->steps);
	i4_every = (uint64_t) s->N * s->P / 8;

	for (s->step = 0; s->step < o->steps && !s->failed; s->step++) {
		uint32_t r;

		if (o->verbose && s->step == o->trace_from)
			s->tracing = true;
		if (!quieting && rnd(s) < crash_cut && s->nalive > 1) {
			crash(s);
		} else if (destroy_cut && !quieting && rnd(s) < destroy_cut) {
			destroy(s);
		} else if (s->nft && (quieting ? !s->nne || rndn(s, 2)
		                               : rndn(s, 8) == 0)) {
			forget_step(s); /* one node learns of a destruction */
		} else if (s->nfree && !quieting && rndn(s, 16) == 0) {
			create(s);
		} else {
			r = rndn(s, 100);
			if (s->nne && (quieting || r < 50))
				deliver(s);
			else if (!quieting && r < 85)
				issue(s);
			else if (!quieting) {
				uint32_t n = random_alive(s);
				uint32_t p = evictable(s, n, false);
				if (p != NIL)
					do_evict(s, n, p, false);
			}
		}
		check_i1(s);
		if (!quieting && rndn(s, 1000) == 0)
			quieting = true; /* let the network drain: I3, I4 */
		if (s->nne == 0 && s->nft == 0) {
			/* I3 costs nothing; the full I4 pass costs N*P, so it
			 * runs at most once per N*P/8 steps. */
			quieting = false;
			s->st.quiet++;
			if (s->pending_total || s->step >= last_i4 + i4_every ||
			    s->nftl) {
				last_i4 = s->step;
				check_quiet(s);
			}
			release_late(s);
		}
	}
	/* Drain: no new operations; every request must finish (I3). */
	limit = 64 * ((uint64_t) s->inflight + (uint64_t) s->N * s->P + s->nft +
	              s->nftl) +
	        1000;
	for (uint64_t k = 0; (s->nne || s->nft || s->nftl) && !s->failed;
	     k++, s->step++) {
		if (k > limit) {
			fail(s, "I3",
			     "network still busy %" PRIu64
			     " steps into the final drain",
			     limit);
			break;
		}
		if (!s->nne && !s->nft) {
			check_quiet(s); /* I3 before the late ones forget */
			release_late(s);
			continue;
		}
		if (s->nft && (!s->nne || rndn(s, 2)))
			forget_step(s);
		else
			deliver(s);
		check_i1(s);
	}
	if (!s->failed)
		check_quiet(s);
	sum_stats(s);
	g_sim = NULL;
	return !s->failed;
}

/* ---- --selftest: the API's edges and the message counts, by hand ----------
 */

#define ST_NODES 5
#define ST_Q 256

struct st_net {
	struct coh_node *m[ST_NODES];
	uint32_t nodes;
	struct coh_msg q[ST_Q]; /* one FIFO for all: a valid schedule */
	unsigned qh, qt;
	unsigned nact, nsend, ndone;
	unsigned nenoent; /* DONE with -ENOENT */
	unsigned ninval;  /* ACCESS(INVALID) */
	int last_err;
	bool reenter, reenter_forget;
	int reenter_rc;
	uint32_t reenter_node;
};

struct st_ctx {
	struct st_net *net;
	uint32_t node;
};

static struct st_ctx st_ctx[ST_NODES];
static int st_failures;

#define ST_CHECK(cond)                                                         \
	do {                                                                   \
		if (!(cond)) {                                                 \
			printf("selftest: %s:%d: %s\n", __FILE__, __LINE__,    \
			       #cond);                                         \
			st_failures++;                                         \
		}                                                              \
	} while (0)

static void st_act(void *ctx, const struct coh_action *a)
{
	struct st_ctx *c = ctx;
	struct st_net *net = c->net;

	net->nact++;
	if (a->type == COH_ACT_SEND) {
		net->nsend++;
		net->q[net->qt++ % ST_Q] = a->msg;
	} else if (a->type == COH_ACT_DONE) {
		net->ndone++;
		net->nenoent += a->err == -ENOENT;
		net->last_err = a->err;
	} else if (a->type == COH_ACT_ACCESS && a->mode == COH_INVALID) {
		net->ninval++;
	}
	if (net->reenter) {
		net->reenter = false;
		net->reenter_rc =
		        net->reenter_forget
		                ? coh_page_forget(net->m[c->node], a->page)
		                : coh_acquire(net->m[c->node], a->page,
		                              COH_READ);
	}
}

static void st_setup(struct st_net *net, uint32_t nodes, uint32_t pages,
                     uint32_t outstanding)
{
	memset(net, 0, sizeof *net);
	net->nodes = nodes;
	for (uint32_t n = 0; n < nodes; n++) {
		struct coh_config cfg = {.self = n,
		                         .max_nodes = nodes,
		                         .max_pages = pages,
		                         .max_home_pages = pages,
		                         .max_outstanding = outstanding,
		                         .act = st_act,
		                         .act_ctx = &st_ctx[n]};
		st_ctx[n] = (struct st_ctx){.net = net, .node = n};
		ST_CHECK(coh_init(&net->m[n], &cfg) == 0);
	}
}

static void st_teardown(struct st_net *net)
{
	for (uint32_t n = 0; n < net->nodes; n++)
		coh_free(net->m[n]);
}

/* Delivers everything queued; returns the number of messages. */
static unsigned st_pump(struct st_net *net)
{
	unsigned k = 0;

	while (net->qh != net->qt) {
		struct coh_msg m = net->q[net->qh++ % ST_Q];
		ST_CHECK(coh_recv(net->m[m.dst], &m) == 0);
		k++;
	}
	return k;
}

/* Delivers the first queued message of `type` to `dst` out of turn: the
 * schedule where the other channels are slower. */
static void st_take(struct st_net *net, unsigned type, uint32_t dst)
{
	for (unsigned i = net->qh; i != net->qt; i++) {
		struct coh_msg m = net->q[i % ST_Q];

		if (m.type != type || m.dst != dst)
			continue;
		for (unsigned j = i; j != net->qh; j--)
			net->q[j % ST_Q] = net->q[(j - 1) % ST_Q];
		net->qh++;
		ST_CHECK(coh_recv(net->m[m.dst], &m) == 0);
		return;
	}
	printf("selftest: no %s to %u queued\n", coh_msg_name(type), dst);
	st_failures++;
}

static void st_zero(struct st_net *net)
{
	net->nact = net->nsend = net->ndone = net->nenoent = net->ninval = 0;
	net->last_err = 0;
}

static const struct coh_page_id st_pg = {.oid = 7, .pgno = 3};

/* Adds st_pg homed at node 0 on every node. */
static void st_add(struct st_net *net)
{
	for (uint32_t n = 0; n < net->nodes; n++)
		ST_CHECK(coh_page_add(net->m[n], st_pg, 0, 42) == 0);
}

/* A request by `node` for `mode`: how many messages it took. */
static unsigned st_req(struct st_net *net, uint32_t node, enum coh_mode mode)
{
	int rc = coh_acquire(net->m[node], st_pg, mode);

	ST_CHECK(rc == 1);
	net->ndone = 0;
	unsigned k = st_pump(net);
	ST_CHECK(net->ndone == 1 || rc == 1);
	return k;
}

static void st_counts(void)
{
	struct st_net net;
	struct coh_page_info in;

	/* The protocol's message counts (PROTOCOL.md, "Messages per
	 * operation"). */
	st_setup(&net, 5, 4, 4);
	st_add(&net);
	ST_CHECK(st_req(&net, 1, COH_READ) == 2); /* home serves the miss */
	ST_CHECK(st_req(&net, 2, COH_READ) == 2);
	ST_CHECK(st_req(&net, 3, COH_READ) == 2);
	ST_CHECK(st_req(&net, 4, COH_WRITE) == 2 + 2 * 3); /* 3 sharers */
	ST_CHECK(st_req(&net, 1, COH_READ) == 4);          /* owner elsewhere */
	ST_CHECK(st_req(&net, 1, COH_WRITE) == 4); /* upgrade, 1 sharer */
	ST_CHECK(st_req(&net, 0, COH_READ) == 2);  /* home's own miss */
	ST_CHECK(st_req(&net, 0, COH_WRITE) == 2); /* home upgrades */
	ST_CHECK(st_req(&net, 2, COH_READ) == 2);  /* home owned it */
	ST_CHECK(coh_page_info(net.m[0], st_pg, &in) == 0);
	ST_CHECK(in.is_home && in.state == COH_SHARED && in.sharers == 2 &&
	         in.local == COH_READ);
	ST_CHECK(coh_dir_has_copy(net.m[0], st_pg, 2) == 1);
	ST_CHECK(coh_dir_has_copy(net.m[0], st_pg, 1) == 0);
	ST_CHECK(coh_dir_has_copy(net.m[1], st_pg, 1) == -ENOENT);
	/* Evictions: one message each, none at the home. */
	net.nsend = 0;
	ST_CHECK(coh_evict(net.m[2], st_pg) == 0);
	ST_CHECK(coh_evict(net.m[0], st_pg) == 0);
	ST_CHECK(net.nsend == 1 && st_pump(&net) == 1);
	ST_CHECK(coh_page_info(net.m[0], st_pg, &in) == 0 &&
	         in.state == COH_UNCACHED);
	ST_CHECK(st_req(&net, 3, COH_WRITE) == 2);
	ST_CHECK(coh_evict(net.m[3], st_pg) == 0 && st_pump(&net) == 1);
	st_teardown(&net);
}

static void st_api(void)
{
	struct st_net net;
	struct coh_node *x;
	struct coh_page_info in;
	struct coh_config cfg = {.self = 0,
	                         .max_nodes = 2,
	                         .max_pages = 1,
	                         .max_home_pages = 1,
	                         .max_outstanding = 1,
	                         .act = st_act,
	                         .act_ctx = &st_ctx[0]};
	struct coh_page_id other = {.oid = 8, .pgno = 0};
	struct coh_msg m;

	/* Configs. */
	cfg.self = 2;
	ST_CHECK(coh_init(&x, &cfg) == -EINVAL);
	cfg.self = 0;
	cfg.max_home_pages = 2;
	ST_CHECK(coh_init(&x, &cfg) == -EINVAL);
	cfg.max_home_pages = 0;
	cfg.act = NULL;
	ST_CHECK(coh_init(&x, &cfg) == -EINVAL);
	cfg.act = st_act;
	ST_CHECK(coh_init(&x, &cfg) == 0);
	ST_CHECK(coh_page_add(x, st_pg, 0, 0) == -ENOSPC); /* no directory */
	ST_CHECK(coh_page_add(x, st_pg, 2, 0) == -EINVAL);
	ST_CHECK(coh_page_add(x, st_pg, 1, 0) == 0);
	ST_CHECK(coh_page_add(x, st_pg, 1, 0) == -EEXIST);
	ST_CHECK(coh_page_add(x, other, 1, 0) == -ENOSPC);
	coh_free(x);

	/* Acquire and evict edges: node 1 uses pages homed at 0. */
	st_setup(&net, 2, 2, 1);
	st_add(&net);
	ST_CHECK(coh_page_add(net.m[0], other, 0, 43) == 0);
	ST_CHECK(coh_page_add(net.m[1], other, 0, 43) == 0);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_INVALID) == -EINVAL);
	ST_CHECK(coh_acquire(net.m[1], (struct coh_page_id){9, 9}, COH_READ) ==
	         -ENOENT);
	ST_CHECK(coh_evict(net.m[1], st_pg) == -ENODATA);
	ST_CHECK(coh_evict(net.m[1], (struct coh_page_id){9, 9}) == -ENOENT);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_WRITE) == 1);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_READ) == 1); /* covered */
	ST_CHECK(coh_acquire(net.m[1], other, COH_READ) == -EAGAIN);
	ST_CHECK(coh_outstanding(net.m[1]) == 1);
	st_pump(&net);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_WRITE) == 0); /* a hit */
	ST_CHECK(coh_evict(net.m[1], st_pg) == 0);
	st_pump(&net);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_READ) == 1);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_WRITE) == -EBUSY);
	st_pump(&net);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_WRITE) == 1); /* upgrade */
	ST_CHECK(coh_evict(net.m[1], st_pg) == -EBUSY);
	st_pump(&net);

	/* An INVALIDATE that crossed an EVICT still finds its ack after the
	 * evicting node removed the page. */
	ST_CHECK(coh_evict(net.m[1], st_pg) == 0);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_READ) == 1);
	st_pump(&net);
	ST_CHECK(coh_acquire(net.m[0], st_pg, COH_WRITE) == 1); /* INVALIDATE */
	ST_CHECK(coh_evict(net.m[1], st_pg) == 0);              /* EVICT */
	ST_CHECK(coh_page_remove(net.m[1], st_pg) == 0);
	net.ndone = 0;
	st_pump(&net);
	ST_CHECK(net.ndone == 1 && net.last_err == 0);
	ST_CHECK(coh_page_info(net.m[0], st_pg, &in) == 0 &&
	         in.local == COH_WRITE && !in.busy);
	ST_CHECK(coh_evict(net.m[0], st_pg) == 0);
	ST_CHECK(coh_page_add(net.m[1], st_pg, 0, 42) == 0);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_WRITE) == 1);
	st_pump(&net);

	/* page_remove: only when quiet everywhere it matters. */
	ST_CHECK(coh_page_remove(net.m[1], st_pg) == -EBUSY);
	ST_CHECK(coh_page_remove(net.m[0], st_pg) == -EBUSY);
	ST_CHECK(coh_evict(net.m[1], st_pg) == 0);
	st_pump(&net);
	ST_CHECK(coh_page_remove(net.m[1], st_pg) == 0);
	ST_CHECK(coh_page_remove(net.m[1], st_pg) == -ENOENT);
	ST_CHECK(coh_page_remove(net.m[0], st_pg) == 0);
	ST_CHECK(coh_page_info(net.m[0], other, &in) == 0 && in.is_home);

	/* A request for a page its receiver does not have is NACKed. */
	ST_CHECK(coh_page_add(net.m[1], st_pg, 0, 42) == 0);
	net.ndone = 0;
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_READ) == 1);
	st_pump(&net);
	ST_CHECK(net.ndone == 1 && net.last_err == -ENOENT);
	ST_CHECK(coh_page_remove(net.m[1], st_pg) == 0);
	ST_CHECK(coh_page_add(net.m[1], st_pg, 0, 42) == 0);
	ST_CHECK(coh_page_add(net.m[0], st_pg, 1, 42) == 0); /* disagrees */
	net.ndone = 0;
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_READ) == 1);
	st_pump(&net);
	ST_CHECK(net.ndone == 1 && net.last_err == -EREMOTE);

	/* Malformed headers and impossible messages change nothing. */
	m = (struct coh_msg){.type = COH_M_INV_ACK,
	                     .src = 1,
	                     .dst = 0,
	                     .oid = other.oid,
	                     .pgno = other.pgno};
	net.nact = 0;
	ST_CHECK(coh_recv(net.m[0], &m) == -EPROTO); /* unsolicited */
	m.type = 0;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.type = COH_M__COUNT;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.type = COH_M_INV_ACK;
	m.pad1 = 1;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.pad1 = 0;
	m.dst = 1;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.dst = 0;
	m.src = 0;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.src = 7;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.src = 1;
	m.flags = COH_F_PAYLOAD;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.flags = 0;
	m.err = -EIO;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m.err = 0;
	m.type = COH_M_READ_REQ;
	m.mode = COH_WRITE;
	ST_CHECK(coh_recv(net.m[0], &m) == -EBADMSG);
	m = (struct coh_msg){.type = COH_M_DATA,
	                     .mode = COH_READ,
	                     .flags = COH_F_PAYLOAD,
	                     .src = 0,
	                     .dst = 1,
	                     .seq = 99,
	                     .oid = other.oid,
	                     .pgno = other.pgno};
	ST_CHECK(coh_recv(net.m[1], &m) == -EPROTO); /* nothing asked */
	m.type = COH_M_NACK;
	m.flags = 0;
	m.mode = 0;
	m.err = 0;
	ST_CHECK(coh_recv(net.m[1], &m) == -EBADMSG);
	m.type = COH_M_GRANT;
	m.mode = COH_WRITE;
	ST_CHECK(coh_recv(net.m[1], &m) == -EPROTO);
	m.type = COH_M_FETCH;
	m.mode = COH_READ;
	ST_CHECK(coh_recv(net.m[1], &m) == 0); /* not held: the crossing */
	ST_CHECK(net.nact == 0);
	ST_CHECK(coh_recv(net.m[1], NULL) == -EINVAL);

	/* An action callback may not re-enter its node. */
	net.reenter = true;
	ST_CHECK(coh_acquire(net.m[0], other, COH_WRITE) == 1);
	ST_CHECK(net.reenter_rc == -EDEADLK);

	/* Crash-stop: requests homed at the dead fail, its messages are
	 * ignored, and the home forgets it. */
	ST_CHECK(coh_peer_down(net.m[1], 1) == -EINVAL);
	ST_CHECK(coh_peer_down(net.m[1], 2) == -EINVAL);
	ST_CHECK(coh_acquire(net.m[1], other, COH_READ) == 1);
	net.ndone = 0;
	ST_CHECK(coh_peer_down(net.m[1], 0) == 0);
	ST_CHECK(net.ndone == 1 && net.last_err == -EHOSTDOWN);
	ST_CHECK(coh_peer_down(net.m[1], 0) == 0 && net.ndone == 1);
	ST_CHECK(coh_peer_is_down(net.m[1], 0) &&
	         !coh_peer_is_down(net.m[1], 1));
	ST_CHECK(coh_acquire(net.m[1], other, COH_READ) == -EHOSTDOWN);
	/* Node 0 (alive, as far as it knows) serves the request; its DATA
	 * reaches a node that has written it off, and is ignored. */
	st_pump(&net);
	struct coh_stats cs;
	coh_get_stats(net.m[1], &cs);
	ST_CHECK(cs.ignored_dead == 1 && cs.failed_hostdown == 1);
	ST_CHECK(coh_page_info(net.m[1], other, &in) == 0 &&
	         in.local == COH_INVALID && in.pending == COH_INVALID);
	ST_CHECK(coh_peer_down(net.m[0], 1) == 0);
	ST_CHECK(coh_page_info(net.m[0], other, &in) == 0 && !in.busy &&
	         in.state == COH_SHARED && in.sharers == 1 &&
	         in.local == COH_READ);
	st_teardown(&net);
}

/* Many pages through the open-addressing table: adds, removals in a
 * scrambled order (backward-shift deletion), re-adds. */
static void st_hash(void)
{
	enum { NP = 300 };
	struct coh_node *x;
	struct coh_page_info in;
	struct coh_config cfg = {.self = 0,
	                         .max_nodes = 2,
	                         .max_pages = NP,
	                         .max_home_pages = NP / 2,
	                         .max_outstanding = 1,
	                         .act = st_act,
	                         .act_ctx = &st_ctx[0]};
	bool present[NP];

	ST_CHECK(coh_init(&x, &cfg) == 0);
	for (uint32_t i = 0; i < NP; i++) {
		struct coh_page_id id = {.oid = i % 7, .pgno = i / 7 * 64};
		ST_CHECK(coh_page_add(x, id, i & 1, i) == 0);
		present[i] = true;
	}
	ST_CHECK(coh_page_add(x, (struct coh_page_id){99, 0}, 1, 0) == -ENOSPC);
	for (uint32_t round = 0; round < 4; round++) {
		for (uint32_t k = 0; k < NP; k++) {
			uint32_t i = (k * 97 + round * 31) % NP;
			struct coh_page_id id = {.oid = i % 7,
			                         .pgno = i / 7 * 64};
			if ((k + round) % 3 == 0) {
				ST_CHECK(coh_page_remove(x, id) ==
				         (present[i] ? 0 : -ENOENT));
				present[i] = false;
			} else if (!present[i]) {
				ST_CHECK(coh_page_add(x, id, i & 1, i) == 0);
				present[i] = true;
			}
		}
		for (uint32_t i = 0; i < NP; i++) {
			struct coh_page_id id = {.oid = i % 7,
			                         .pgno = i / 7 * 64};
			int rc = coh_page_info(x, id, &in);
			ST_CHECK(present[i] ? rc == 0 && in.home == (i & 1) &&
			                              in.is_home == !(i & 1)
			                    : rc == -ENOENT);
		}
	}
	coh_free(x);
}

/* coh_page_forget: the page goes in any state; every request on it
 * finishes; late messages about it are dropped (PROTOCOL.md, F1-F4). */
static void st_forget(void)
{
	struct st_net net;
	struct coh_page_info in;
	struct coh_stats cs;
	const struct coh_page_id b = {.oid = 9, .pgno = 1},
	                         c = {.oid = 9, .pgno = 2},
	                         d = {.oid = 9, .pgno = 3};

	/* The home forgets a busy page: FETCHING for node 2, node 3's write
	 * and its own read queued. */
	st_setup(&net, 4, 4, 2);
	st_add(&net);
	ST_CHECK(coh_page_forget(net.m[0], b) == -ENOENT);
	ST_CHECK(st_req(&net, 1, COH_WRITE) == 2);
	ST_CHECK(coh_acquire(net.m[2], st_pg, COH_READ) == 1);
	st_take(&net, COH_M_READ_REQ, 0); /* FETCH(READ) to 1 in flight */
	ST_CHECK(coh_acquire(net.m[3], st_pg, COH_WRITE) == 1);
	st_take(&net, COH_M_WRITE_REQ, 0);
	ST_CHECK(coh_acquire(net.m[0], st_pg, COH_READ) == 1);
	ST_CHECK(coh_page_info(net.m[0], st_pg, &in) == 0 && in.busy &&
	         in.queued == 2 && in.owner == 1);
	st_zero(&net);
	ST_CHECK(coh_page_forget(net.m[0], st_pg) == 0);
	/* NACK to 2 (served), NACK to 3 (queued), DONE for itself. */
	ST_CHECK(net.nact == 3 && net.nsend == 2 && net.ndone == 1 &&
	         net.nenoent == 1);
	ST_CHECK(coh_page_info(net.m[0], st_pg, &in) == -ENOENT);
	ST_CHECK(coh_outstanding(net.m[0]) == 0);
	ST_CHECK(coh_page_forget(net.m[0], st_pg) == -ENOENT);
	ST_CHECK(coh_acquire(net.m[0], st_pg, COH_READ) == -ENOENT);
	/* The FETCH still reaches 1, whose FETCH_REPLY the home drops; the
	 * NACKs finish 2's and 3's requests. */
	st_zero(&net);
	ST_CHECK(st_pump(&net) == 4);
	ST_CHECK(net.ndone == 2 && net.nenoent == 2);
	coh_get_stats(net.m[0], &cs);
	ST_CHECK(cs.forgotten == 1 && cs.ignored_unknown == 1);
	/* Node 1 has not heard yet: it keeps its READ copy; its upgrade is
	 * NACKed -ENOENT by the home, its eviction dropped there. */
	ST_CHECK(coh_page_info(net.m[1], st_pg, &in) == 0 &&
	         in.local == COH_READ);
	st_zero(&net);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_WRITE) == 1);
	ST_CHECK(st_pump(&net) == 2);
	ST_CHECK(net.ndone == 1 && net.nenoent == 1);
	ST_CHECK(coh_page_info(net.m[1], st_pg, &in) == 0 &&
	         in.local == COH_READ && in.pending == COH_INVALID);
	ST_CHECK(coh_evict(net.m[1], st_pg) == 0 && st_pump(&net) == 1);
	coh_get_stats(net.m[0], &cs);
	ST_CHECK(cs.ignored_unknown == 2);
	st_zero(&net);
	for (uint32_t n = 1; n < 4; n++)
		ST_CHECK(coh_page_forget(net.m[n], st_pg) == 0);
	ST_CHECK(net.nact == 0);
	st_teardown(&net);

	/* Requesters forget first: a late DATA and a late GRANT are
	 * dropped; an INVALIDATE is acked for a forgotten copy; a FETCH to
	 * a forgotten owner is dropped, and the read waiting on it finishes
	 * when the home forgets the page too. */
	st_setup(&net, 4, 4, 2);
	st_add(&net);
	ST_CHECK(coh_acquire(net.m[1], st_pg, COH_READ) == 1);
	st_take(&net, COH_M_READ_REQ, 0); /* DATA to 1 in flight */
	st_zero(&net);
	ST_CHECK(coh_page_forget(net.m[1], st_pg) == 0);
	ST_CHECK(net.nact == 1 && net.nenoent == 1);
	ST_CHECK(coh_outstanding(net.m[1]) == 0);
	ST_CHECK(st_pump(&net) == 1); /* the DATA, dropped */
	ST_CHECK(st_req(&net, 2, COH_READ) == 2);
	ST_CHECK(coh_dir_has_copy(net.m[0], st_pg, 1) == 1);
	ST_CHECK(coh_acquire(net.m[2], st_pg, COH_WRITE) == 1);
	st_take(&net, COH_M_WRITE_REQ, 0);  /* INVALIDATE to 1 */
	st_take(&net, COH_M_INVALIDATE, 1); /* acked, though forgotten */
	st_take(&net, COH_M_INV_ACK, 0);    /* GRANT to 2 in flight */
	st_zero(&net);
	ST_CHECK(coh_page_forget(net.m[2], st_pg) == 0);
	ST_CHECK(net.nact == 2 && net.ninval == 1 && net.nenoent == 1);
	ST_CHECK(st_pump(&net) == 1); /* the GRANT, dropped */
	coh_get_stats(net.m[1], &cs);
	ST_CHECK(cs.ignored_unknown == 1);
	coh_get_stats(net.m[2], &cs);
	ST_CHECK(cs.ignored_unknown == 1);
	ST_CHECK(coh_page_info(net.m[0], st_pg, &in) == 0 &&
	         in.state == COH_EXCLUSIVE && in.owner == 2);
	st_zero(&net);
	ST_CHECK(coh_acquire(net.m[3], st_pg, COH_READ) == 1);
	ST_CHECK(st_pump(&net) == 2 && net.ndone == 0); /* FETCH dropped */
	ST_CHECK(coh_page_forget(net.m[0], st_pg) == 0);
	ST_CHECK(st_pump(&net) == 1 && net.ndone == 1 && net.nenoent == 1);
	ST_CHECK(coh_page_forget(net.m[3], st_pg) == 0);

	/* The home forgets mid-invalidation (late INV_ACKs), with a
	 * WRITEBACK on its way, and its own WRITE copy. */
	for (uint32_t n = 0; n < 4; n++)
		ST_CHECK(coh_page_add(net.m[n], b, 0, 43) == 0);
	ST_CHECK(coh_acquire(net.m[1], b, COH_READ) == 1);
	ST_CHECK(coh_acquire(net.m[2], b, COH_READ) == 1);
	st_pump(&net);
	ST_CHECK(coh_acquire(net.m[3], b, COH_WRITE) == 1);
	st_take(&net, COH_M_WRITE_REQ, 0); /* INVALIDATE to 1 and 2 */
	st_zero(&net);
	ST_CHECK(coh_page_forget(net.m[0], b) == 0);
	ST_CHECK(net.nact == 1 && net.nsend == 1); /* NACK to 3 */
	ST_CHECK(st_pump(&net) == 5);              /* 2 INV, 2 ACK, NACK */
	ST_CHECK(net.ninval == 2 && net.ndone == 1 && net.nenoent == 1);
	coh_get_stats(net.m[0], &cs);
	ST_CHECK(cs.ignored_unknown == 2 && cs.forgotten == 2);
	for (uint32_t n = 1; n < 4; n++)
		ST_CHECK(coh_page_forget(net.m[n], b) == 0);
	/* New objects get fresh ids; the records freed above serve them. */
	for (uint32_t n = 0; n < 4; n++)
		ST_CHECK(coh_page_add(net.m[n], c, 0, 43) == 0 &&
		         coh_page_add(net.m[n], d, 0, 43) == 0);
	ST_CHECK(coh_acquire(net.m[1], c, COH_WRITE) == 1);
	ST_CHECK(st_pump(&net) == 2);
	ST_CHECK(coh_evict(net.m[1], c) == 0); /* WRITEBACK in flight */
	ST_CHECK(coh_page_forget(net.m[0], c) == 0);
	ST_CHECK(st_pump(&net) == 1);
	coh_get_stats(net.m[0], &cs);
	ST_CHECK(cs.ignored_unknown == 3);
	for (uint32_t n = 1; n < 4; n++)
		ST_CHECK(coh_page_forget(net.m[n], c) == 0);
	st_zero(&net);
	ST_CHECK(coh_acquire(net.m[0], d, COH_WRITE) == 1); /* its own */
	ST_CHECK(net.ndone == 1 && net.last_err == 0 && net.nsend == 0);
	st_zero(&net);
	ST_CHECK(coh_page_forget(net.m[0], d) == 0);
	ST_CHECK(net.nact == 1 && net.ninval == 1 && net.nsend == 0);

	/* Never from inside an action. */
	ST_CHECK(coh_acquire(net.m[1], d, COH_READ) == 1);
	net.reenter = net.reenter_forget = true;
	net.reenter_rc = 0;
	ST_CHECK(st_pump(&net) == 2); /* the NACK's DONE(-ENOENT) re-enters */
	ST_CHECK(net.reenter_rc == -EDEADLK);
	net.reenter_forget = false;
	ST_CHECK(coh_page_info(net.m[1], d, &in) == 0);
	st_teardown(&net);

	/* Tight pools: one page record, one directory entry and one queue
	 * record per node. The forgotten page's records, queue record
	 * included, serve the next object. */
	for (uint32_t n = 0; n < 3; n++) {
		struct coh_config cfg = {.self = n,
		                         .max_nodes = 3,
		                         .max_pages = 1,
		                         .max_home_pages = 1,
		                         .max_outstanding = 1,
		                         .max_queued = 1,
		                         .act = st_act,
		                         .act_ctx = &st_ctx[n]};
		st_ctx[n] = (struct st_ctx){.net = &net, .node = n};
		ST_CHECK(coh_init(&net.m[n], &cfg) == 0);
	}
	net.nodes = 3;
	for (uint32_t round = 0; round < 3; round++) {
		struct coh_page_id id = {.oid = 100 + round, .pgno = 0};

		for (uint32_t n = 0; n < 3; n++)
			ST_CHECK(coh_page_add(net.m[n], id, 0, 44) == 0);
		ST_CHECK(coh_acquire(net.m[1], id, COH_WRITE) == 1);
		st_pump(&net);
		ST_CHECK(coh_acquire(net.m[2], id, COH_READ) == 1);
		st_take(&net, COH_M_READ_REQ, 0);                   /* FETCH */
		ST_CHECK(coh_acquire(net.m[0], id, COH_READ) == 1); /* queued */
		st_zero(&net);
		ST_CHECK(coh_page_forget(net.m[0], id) == 0);
		ST_CHECK(net.nsend == 1 && net.nenoent == 1);
		st_pump(&net);
		ST_CHECK(net.nenoent == 2);
		ST_CHECK(coh_page_forget(net.m[1], id) == 0);
		ST_CHECK(coh_page_forget(net.m[2], id) == 0);
	}
	st_teardown(&net);
}

static int selftest(void)
{
	st_counts();
	st_api();
	st_hash();
	st_forget();
	printf("selftest: %s\n", st_failures ? "FAILED" : "ok");
	return st_failures ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------
 */

static void usage(void)
{
	fprintf(stderr,
	        "usage: sim [--seed S] [--seeds COUNT] [--nodes N<=2048]\n"
	        "           [--pages P] [--steps K] [--frames F]\n"
	        "           [--outstanding M] [--writes PCT] [--crashes C]\n"
	        "           [--destroys D] [--queue Q] [-v] [--trace-from "
	        "STEP]\n"
	        "           [--quiet]\n"
	        "           [--inject stale|keep-read|lose-ack]\n"
	        "           [--expect-violation[=TAG]]\n"
	        "       sim --selftest\n"
	        "Runs seeds S..S+COUNT-1. --crashes: expected crash-stops\n"
	        "per run; --destroys: expected object destructions per run\n"
	        "(each node forgets the object's pages at its own time, and\n"
	        "new objects reuse the slots); --frames: a node's frames for\n"
	        "non-home copies; --queue: each home's request queue (full =\n"
	        "NACK). In traces a value wN#C is node N's C-th write of the\n"
	        "page, w-1#G the initial contents of the page's G-th "
	        "object.\n");
	exit(2);
}

static uint64_t num(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end || end == s)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	struct opts o = {.seed = 1,
	                 .seeds = 1,
	                 .steps = 10000,
	                 .nodes = 8,
	                 .pages = 16,
	                 .outstanding = 4,
	                 .write_pct = 40,
	                 .crashes = 1.0};
	bool frames_set = false;
	struct stats tot = {0};
	struct coh_stats ctot = {0};
	struct timespec t0, t1;
	uint64_t steps = 0, found = 0, found_seed = 0;
	const char *found_tag = NULL;
	struct sim s;

	g_argv0 = argv[0];
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
		if (ARG("--seed"))
			o.seed = num(v);
		else if (ARG("--seeds"))
			o.seeds = num(v);
		else if (ARG("--steps"))
			o.steps = num(v);
		else if (ARG("--nodes"))
			o.nodes = (uint32_t) num(v);
		else if (ARG("--pages"))
			o.pages = (uint32_t) num(v);
		else if (ARG("--frames"))
			o.frames = (uint32_t) num(v), frames_set = true;
		else if (ARG("--queue"))
			o.queue = (uint32_t) num(v);
		else if (ARG("--outstanding"))
			o.outstanding = (uint32_t) num(v);
		else if (ARG("--writes"))
			o.write_pct = (uint32_t) num(v);
		else if (ARG("--crashes"))
			o.crashes = strtod(v, NULL);
		else if (ARG("--destroys"))
			o.destroys = strtod(v, NULL);
		else if (ARG("--trace-from"))
			o.trace_from = num(v), o.verbose = true;
		else if (ARG("--inject")) {
			if (!strcmp(v, "stale"))
				o.inject = INJ_STALE;
			else if (!strcmp(v, "keep-read"))
				o.inject = INJ_KEEP_READ;
			else if (!strcmp(v, "lose-ack"))
				o.inject = INJ_LOSE_ACK;
			else
				usage();
		} else if (!strcmp(a, "-v"))
			o.verbose = true;
		else if (!strcmp(a, "--selftest"))
			return selftest();
		else if (!strcmp(a, "--quiet"))
			o.quiet = true;
		else if (!strcmp(a, "--expect-violation"))
			o.expect = "";
		else if (!strncmp(a, "--expect-violation=", 19))
			o.expect = a + 19;
		else
			usage();
#undef ARG
	}
	if (o.nodes < 1 || o.nodes > 2048 || o.pages < 1 || o.pages > 65535 ||
	    o.outstanding < 1 || o.write_pct > 100 || o.crashes < 0 ||
	    o.destroys < 0 || o.seeds < 1)
		usage();
	if (!frames_set)
		o.frames = o.pages / 2 > 0 ? o.pages / 2 : 1;
	if (o.frames < 1)
		usage();
	signal(SIGABRT, on_abort);
	setvbuf(stdout, NULL, _IOLBF, 0);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint64_t k = 0; k < o.seeds; k++) {
		uint64_t seed = o.seed + k;
		struct opts one = o;
		bool ok;

		one.seed = seed;
		ok = run_one(&s, &one, seed);
		steps += s.step;
		tot.reads += s.st.reads;
		tot.writes += s.st.writes;
		tot.hits += s.st.hits;
		tot.hostdown += s.st.hostdown;
		tot.rollbacks += s.st.rollbacks;
		tot.delivered += s.st.delivered;
		tot.lost += s.st.lost;
		tot.crashes += s.st.crashes;
		tot.quiet += s.st.quiet;
		tot.i4 += s.st.i4;
		tot.evictions += s.st.evictions;
		tot.forced_evictions += s.st.forced_evictions;
		tot.destroys += s.st.destroys;
		tot.creates += s.st.creates;
		tot.forgets += s.st.forgets;
		tot.enoent += s.st.enoent;
		ctot.forgotten += s.cst.forgotten;
		ctot.ignored_unknown += s.cst.ignored_unknown;
		ctot.ignored_dead += s.cst.ignored_dead;
		ctot.queued += s.cst.queued;
		ctot.evict_crossed += s.cst.evict_crossed;
		ctot.fetch_crossed += s.cst.fetch_crossed;
		ctot.wb_as_reply += s.cst.wb_as_reply;
		ctot.fetch_fallback += s.cst.fetch_fallback;
		if (!ok) {
			found++;
			if (!o.expect) {
				printf("FAIL seed %" PRIu64 " step %" PRIu64
				       ": %s\n",
				       seed, s.step, s.why);
				replay_line(stdout, &o, seed);
				sim_free(&s);
				return 1;
			}
			if (found == 1) {
				found_seed = seed;
				found_tag = s.tag;
				printf("violation found as expected, seed "
				       "%" PRIu64 " step %" PRIu64 ": %s\n",
				       seed, s.step, s.why);
			}
			sim_free(&s);
			break;
		}
		sim_free(&s);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double) (t1.tv_sec - t0.tv_sec) +
	              (double) (t1.tv_nsec - t0.tv_nsec) / 1e9;
	if (!o.quiet || o.expect)
		printf("sim: %" PRIu64 " seeds x %" PRIu64
		       " steps, %u nodes, %u "
		       "pages: %" PRIu64 " steps in %.1f s (%.2f M steps/s)\n"
		       "  ops: %" PRIu64 " reads %" PRIu64 " writes (%" PRIu64
		       " hits), %" PRIu64 " evictions (%" PRIu64
		       " to make room), "
		       "%" PRIu64 " messages, %" PRIu64 " queued at a home\n"
		       "  crossings: %" PRIu64 " EVICT/INVALIDATE, %" PRIu64
		       " WRITEBACK/FETCH\n"
		       "  crashes: %" PRIu64 ", %" PRIu64
		       " messages lost, %" PRIu64
		       " ignored from the dead, %" PRIu64
		       " fetches from the home "
		       "copy, %" PRIu64 " EHOSTDOWN, %" PRIu64
		       " reads saw lost "
		       "writes undone\n"
		       "  quiet points: %" PRIu64 " (%" PRIu64
		       " full I3/I4 checks)\n",
		       o.seeds, o.steps, o.nodes, o.pages, steps, secs,
		       (double) steps / secs / 1e6, tot.reads, tot.writes,
		       tot.hits, tot.evictions, tot.forced_evictions,
		       tot.delivered, ctot.queued, ctot.evict_crossed,
		       ctot.fetch_crossed, tot.crashes, tot.lost,
		       ctot.ignored_dead, ctot.fetch_fallback, tot.hostdown,
		       tot.rollbacks, tot.quiet, tot.i4);
	if ((!o.quiet || o.expect) && o.destroys > 0)
		printf("  objects: %" PRIu64 " destroyed, %" PRIu64
		       " created, %" PRIu64 " pages forgotten, %" PRIu64
		       " requests ENOENT, %" PRIu64 " late messages dropped\n",
		       tot.destroys, tot.creates, ctot.forgotten, tot.enoent,
		       ctot.ignored_unknown);
	if (o.expect) {
		if (!found) {
			printf("FAIL: expected a violation, none found\n");
			return 1;
		}
		if (*o.expect && strcmp(o.expect, found_tag)) {
			printf("FAIL: expected a %s violation, got %s (seed "
			       "%" PRIu64 ")\n",
			       o.expect, found_tag, found_seed);
			return 1;
		}
		return 0;
	}
	return 0;
}
