/* caps.c — the authority state of one node: objects, capabilities in
 * derivation trees, c-lists, sturdy references and space banks.
 *
 * Everything lives in pools carved out of the one calloc() made by
 * cap_space_init(); nothing here allocates again, so a full pool is -ENOSPC,
 * never a crash. Records are named by index; the ids handed out (oids, sids)
 * carry a 32-bit generation in their top half that is bumped whenever the
 * record is freed, so a stale id never names the record's next tenant.
 *
 * Beside C1-C4 of caps.h, these hold between calls (asserted below and
 * checked in full by cap__audit()):
 *  I1. Every capability in use sits in exactly one derivation tree: in its
 *      parent's child list, or, if it has no parent, in its object's list of
 *      root capabilities. Revoke frees a whole subtree (C2); drop frees one
 *      record and hands its children to its parent (C1 still holds, since
 *      rights only shrink downwards).
 *  I2. Every capability in use has exactly one holder, a slot or a sturdy
 *      record, and the holder points back at it with its generation.
 *  I3. A slot whose capability was revoked stays filled and charged, with
 *      generation 0 (capability generations are never 0), until dropped.
 *  I4. A live sturdy record holds a capability and CAP_CHARGE_STURDY on one
 *      bank; a tombstone holds neither and only remembers its secret.
 *
 * Not thread safe: the daemon's event loop owns the space. Nothing recurses:
 * trees are walked with parent pointers, so depth costs time, never stack.
 */
#include "caps.h"
#include "caps_internal.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

enum holder_type { HOLD_NONE = 0, HOLD_SLOT = 1, HOLD_STURDY = 2 };
enum sturdy_state { ST_FREE = 0, ST_LIVE = 1, ST_TOMB = 2 };

struct obj_rec {
	void *priv;
	uint64_t charge;    /* bytes charged to `payer` for this record */
	uint32_t gen;       /* never 0 */
	uint32_t payer;     /* bank index paying for it; CAP_NONE: root bank */
	uint32_t roots;     /* first root capability (I1) */
	uint32_t next_free; /* FIFO free list: spreads generation bumps */
	uint8_t kind;       /* CAP_KIND_NONE while free */
};

/* Parallel to the object pool; meaningful where the object is a bank. A
 * bank's parent is its object's payer. */
struct bank_rec {
	uint64_t limit_bytes, limit_objects; /* 0: no limit of its own */
	uint64_t used_bytes, used_objects; /* own charges + descendants' (C3) */
	uint64_t ext_bytes, ext_objects;   /* charged through bank_charge() */
	uint32_t first_child, next, prev;  /* sub-banks */
	uint32_t children;
	uint8_t doomed; /* set only while bank_destroy() runs */
};

struct cap_rec {
	uint32_t gen;    /* never 0 */
	uint32_t obj;    /* CAP_NONE while free */
	uint32_t rights; /* non-zero, subset of the parent's (C1) */
	uint32_t parent; /* CAP_NONE: a root capability of `obj` */
	uint32_t first_child, next, prev; /* `next` also links the free list */
	uint32_t holder; /* global slot index or sturdy index (I2) */
	uint8_t htype;
};

struct slot_rec {
	uint32_t cap;  /* CAP_NONE: empty */
	uint32_t gen;  /* the capability's generation; 0: revoked (I3) */
	uint32_t bank; /* filled: the bank charged; empty: next empty slot */
};

struct clist_rec {
	uint64_t bank;      /* oid of the bank that pays for new slots */
	uint32_t free_head; /* first empty slot */
	uint32_t filled;
	uint32_t next_free;
	uint8_t used;
};

struct sturdy_rec {
	uint64_t oid;
	uint8_t secret[CAP_SECRET_LEN];
	uint32_t gen;          /* never 0 */
	uint32_t cap, cap_gen; /* live only */
	uint32_t bank;         /* live only */
	uint32_t next;         /* free list or tombstone queue */
	uint8_t state;
};

struct cap_space {
	struct cap_config cfg;
	struct obj_rec *objs;
	struct bank_rec *banks;
	struct cap_rec *caps;
	struct clist_rec *clists;
	struct slot_rec *slots; /* max_clists * slots_per_clist */
	struct sturdy_rec *sturdy;
	uint32_t root;
	uint32_t obj_head, obj_tail; /* free objects, oldest first */
	uint32_t cap_free, clist_free, sturdy_free;
	uint32_t tomb_head, tomb_tail; /* tombstones, oldest first */
	struct cap_stats st;
};

/* ---- ids ---- */

static uint32_t gen_bump(uint32_t gen)
{
	/* Generation 0 would let an id be 0, which means "none". */
	return gen + 1u ? gen + 1u : 1u;
}

static uint64_t mkid(uint32_t gen, uint32_t idx)
{
	return (uint64_t) gen << 32 | idx;
}

static uint32_t id_idx(uint64_t id)
{
	return (uint32_t) (id & 0xffffffffu);
}

static uint32_t id_gen(uint64_t id)
{
	return (uint32_t) (id >> 32);
}

static uint64_t obj_id(const struct cap_space *cs, uint32_t o)
{
	return mkid(cs->objs[o].gen, o);
}

/* The index of a live object, or CAP_NONE for a stale or forged id. */
static uint32_t obj_find(const struct cap_space *cs, uint64_t oid)
{
	uint32_t o = id_idx(oid);

	if (o >= cs->cfg.max_objects)
		return CAP_NONE;
	if (cs->objs[o].kind == CAP_KIND_NONE || cs->objs[o].gen != id_gen(oid))
		return CAP_NONE;
	return o;
}

/* A bank a caller wants to spend from. A gone bank is a revoked authority,
 * hence -EKEYREVOKED rather than -ENOENT. */
static int bank_find(const struct cap_space *cs, uint64_t bank, uint32_t *out)
{
	uint32_t b = obj_find(cs, bank);

	if (b == CAP_NONE)
		return -EKEYREVOKED;
	if (cs->objs[b].kind != CAP_KIND_BANK)
		return -ENOTTY;
	*out = b;
	return 0;
}

/* ---- bank accounting (C3, C4) ---- */

/* Checks that `bytes` and `objects` fit on `b` and every ancestor. Read only,
 * so callers can check everything before they act (C4). */
static int bank_can_charge(const struct cap_space *cs, uint32_t b,
                           uint64_t bytes, uint64_t objects)
{
	for (; b != CAP_NONE; b = cs->objs[b].payer) {
		const struct bank_rec *br = &cs->banks[b];
		uint64_t nb, no;

		assert(cs->objs[b].kind == CAP_KIND_BANK); /* C3 */
		if (__builtin_add_overflow(br->used_bytes, bytes, &nb) ||
		    __builtin_add_overflow(br->used_objects, objects, &no))
			return -EDQUOT;
		if ((br->limit_bytes && nb > br->limit_bytes) ||
		    (br->limit_objects && no > br->limit_objects))
			return -EDQUOT;
	}
	return 0;
}

/* Applies a charge bank_can_charge() accepted. Cannot fail. */
static void bank_add(struct cap_space *cs, uint32_t b, uint64_t bytes,
                     uint64_t objects)
{
	for (; b != CAP_NONE; b = cs->objs[b].payer) {
		assert(cs->objs[b].kind == CAP_KIND_BANK); /* C3 */
		cs->banks[b].used_bytes += bytes;
		cs->banks[b].used_objects += objects;
	}
}

static void bank_sub(struct cap_space *cs, uint32_t b, uint64_t bytes,
                     uint64_t objects)
{
	for (; b != CAP_NONE; b = cs->objs[b].payer) {
		struct bank_rec *br = &cs->banks[b];

		assert(cs->objs[b].kind == CAP_KIND_BANK); /* C3 */
		/* C3: every charge was counted on each ancestor, so no
		 * ancestor can hold less than what leaves it. */
		assert(br->used_bytes >= bytes && br->used_objects >= objects);
		br->used_bytes -= bytes;
		br->used_objects -= objects;
	}
}

static void bank_link(struct cap_space *cs, uint32_t b, uint32_t parent)
{
	struct bank_rec *br = &cs->banks[b];
	struct bank_rec *pr = &cs->banks[parent];

	br->prev = CAP_NONE;
	br->next = pr->first_child;
	if (pr->first_child != CAP_NONE)
		cs->banks[pr->first_child].prev = b;
	pr->first_child = b;
	pr->children++;
}

static void bank_unlink(struct cap_space *cs, uint32_t b)
{
	struct bank_rec *br = &cs->banks[b];
	struct bank_rec *pr = &cs->banks[cs->objs[b].payer];

	if (br->prev != CAP_NONE)
		cs->banks[br->prev].next = br->next;
	else {
		assert(pr->first_child == b);
		pr->first_child = br->next;
	}
	if (br->next != CAP_NONE)
		cs->banks[br->next].prev = br->prev;
	br->next = br->prev = CAP_NONE;
	assert(pr->children > 0);
	pr->children--;
}

/* Pre-order successor of `b` within the bank subtree rooted at `top`. */
static uint32_t bank_next_pre(const struct cap_space *cs, uint32_t b,
                              uint32_t top)
{
	if (cs->banks[b].first_child != CAP_NONE)
		return cs->banks[b].first_child;
	while (b != top) {
		if (cs->banks[b].next != CAP_NONE)
			return cs->banks[b].next;
		b = cs->objs[b].payer;
	}
	return CAP_NONE;
}

/* ---- object records ---- */

/* Takes the oldest free object record. The caller checked there is one. */
static uint32_t obj_alloc(struct cap_space *cs, enum cap_kind kind,
                          uint32_t payer, uint64_t charge, void *priv)
{
	uint32_t o = cs->obj_head;
	struct obj_rec *orec;

	assert(o != CAP_NONE);
	orec = &cs->objs[o];
	assert(orec->kind == CAP_KIND_NONE && orec->gen != 0);
	cs->obj_head = orec->next_free;
	if (cs->obj_head == CAP_NONE)
		cs->obj_tail = CAP_NONE;
	orec->next_free = CAP_NONE;
	orec->kind = (uint8_t) kind;
	orec->payer = payer;
	orec->charge = charge;
	orec->priv = priv;
	orec->roots = CAP_NONE;
	cs->st.objects_used++;
	return o;
}

/* Frees an object record whose capabilities are all gone. Its charge is the
 * caller's business (bank_destroy() uncharges in bulk). */
static void obj_release(struct cap_space *cs, uint32_t o)
{
	struct obj_rec *orec = &cs->objs[o];

	assert(orec->roots ==
	       CAP_NONE); /* I1: nothing may name a freed object */
	orec->kind = CAP_KIND_NONE;
	orec->priv = NULL;
	orec->charge = 0;
	orec->payer = CAP_NONE;
	orec->gen = gen_bump(orec->gen);
	orec->next_free = CAP_NONE;
	if (cs->obj_tail != CAP_NONE)
		cs->objs[cs->obj_tail].next_free = o;
	else
		cs->obj_head = o;
	cs->obj_tail = o;
	assert(cs->st.objects_used > 0);
	cs->st.objects_used--;
}

/* ---- capability records and derivation trees (I1, I2) ---- */

static uint32_t *cap_list_head(struct cap_space *cs, uint32_t c)
{
	struct cap_rec *cr = &cs->caps[c];

	if (cr->parent == CAP_NONE)
		return &cs->objs[cr->obj].roots;
	return &cs->caps[cr->parent].first_child;
}

static void cap_link(struct cap_space *cs, uint32_t c)
{
	uint32_t *head = cap_list_head(cs, c);
	struct cap_rec *cr = &cs->caps[c];

	/* C1: rights only shrink along a derivation. */
	assert(cr->parent == CAP_NONE ||
	       (cr->rights & ~cs->caps[cr->parent].rights) == 0);
	assert(cr->parent == CAP_NONE || cs->caps[cr->parent].obj == cr->obj);
	cr->prev = CAP_NONE;
	cr->next = *head;
	if (*head != CAP_NONE)
		cs->caps[*head].prev = c;
	*head = c;
}

static void cap_unlink(struct cap_space *cs, uint32_t c)
{
	struct cap_rec *cr = &cs->caps[c];

	if (cr->prev != CAP_NONE) {
		assert(cs->caps[cr->prev].next == c); /* I1 */
		cs->caps[cr->prev].next = cr->next;
	} else {
		uint32_t *head = cap_list_head(cs, c);

		assert(*head == c); /* I1 */
		*head = cr->next;
	}
	if (cr->next != CAP_NONE)
		cs->caps[cr->next].prev = cr->prev;
	cr->next = cr->prev = CAP_NONE;
}

/* Takes a free capability record and links it into its tree. The caller
 * checked there is one. */
static uint32_t cap_alloc(struct cap_space *cs, uint32_t obj, uint32_t rights,
                          uint32_t parent, uint8_t htype, uint32_t holder)
{
	uint32_t c = cs->cap_free;
	struct cap_rec *cr;

	assert(c != CAP_NONE);
	cr = &cs->caps[c];
	assert(cr->obj == CAP_NONE && cr->gen != 0);
	cs->cap_free = cr->next;
	cr->obj = obj;
	cr->rights = rights;
	cr->parent = parent;
	cr->first_child = CAP_NONE;
	cr->htype = htype;
	cr->holder = holder;
	cap_link(cs, c);
	cs->st.caps_used++;
	return c;
}

/* Frees an unlinked, childless record; its generation moves on so that
 * nothing can name it again. */
static void cap_release_rec(struct cap_space *cs, uint32_t c)
{
	struct cap_rec *cr = &cs->caps[c];

	assert(cr->first_child == CAP_NONE && cr->obj != CAP_NONE);
	cr->obj = CAP_NONE;
	cr->rights = 0;
	cr->parent = CAP_NONE;
	cr->htype = HOLD_NONE;
	cr->holder = CAP_NONE;
	cr->gen = gen_bump(cr->gen);
	cr->prev = CAP_NONE;
	cr->next = cs->cap_free;
	cs->cap_free = c;
	assert(cs->st.caps_used > 0);
	cs->st.caps_used--;
}

static void sturdy_bury(struct cap_space *cs, uint32_t s);

/* Revokes `top` and every capability derived from it (C2). Post-order
 * without a stack: descend to a leaf, free it, climb to its parent and look
 * again; each record is descended into once and freed once. Holders are
 * told at once (I3, I4) so that no later reuse of a record can revive them,
 * however often its generation wraps. */
static void cap_revoke_tree(struct cap_space *cs, uint32_t top)
{
	uint32_t cur = top;

	cap_unlink(cs, top);
	for (;;) {
		struct cap_rec *cr = &cs->caps[cur];
		uint32_t up;
		bool last;

		if (cr->first_child != CAP_NONE) {
			cur = cr->first_child;
			continue;
		}
		up = cr->parent;
		last = cur == top;
		if (!last)
			cap_unlink(cs, cur);
		if (cr->htype == HOLD_SLOT) {
			struct slot_rec *sl = &cs->slots[cr->holder];

			assert(sl->cap == cur && sl->gen == cr->gen); /* I2 */
			sl->gen = 0;
		} else {
			assert(cr->htype == HOLD_STURDY); /* I2 */
			sturdy_bury(cs, cr->holder);
		}
		cap_release_rec(cs, cur);
		cs->st.revocations++;
		if (last)
			break;
		cur = up;
	}
}

/* Frees one capability and hands its children to its parent, or makes them
 * roots of the object: they stay valid (drop semantics). C1 still holds,
 * since the parent's rights contain the dropped record's. */
static void cap_release(struct cap_space *cs, uint32_t c)
{
	struct cap_rec *cr = &cs->caps[c];

	cap_unlink(cs, c);
	while (cr->first_child != CAP_NONE) {
		uint32_t k = cr->first_child;

		cap_unlink(cs, k);
		cs->caps[k].parent = cr->parent;
		cap_link(cs, k);
	}
	cap_release_rec(cs, c);
}

/* Revokes every capability to an object, roots first. */
static void obj_revoke_all(struct cap_space *cs, uint32_t o)
{
	while (cs->objs[o].roots != CAP_NONE)
		cap_revoke_tree(cs, cs->objs[o].roots);
}

/* ---- sturdy records (I4) ---- */

/* The revoked sturdy record becomes a tombstone: it keeps its secret so
 * that the reference still answers -EKEYREVOKED, gives back its charge (a
 * bank being destroyed has already dropped it in bulk), and waits in FIFO
 * order to be reused only when no free record is left. */
static void sturdy_bury(struct cap_space *cs, uint32_t s)
{
	struct sturdy_rec *sr = &cs->sturdy[s];

	assert(sr->state == ST_LIVE); /* I4 */
	if (!cs->banks[sr->bank].doomed)
		bank_sub(cs, sr->bank, CAP_CHARGE_STURDY, 0);
	sr->state = ST_TOMB;
	sr->cap = CAP_NONE;
	sr->cap_gen = 0;
	sr->bank = CAP_NONE;
	sr->next = CAP_NONE;
	if (cs->tomb_tail != CAP_NONE)
		cs->sturdy[cs->tomb_tail].next = s;
	else
		cs->tomb_head = s;
	cs->tomb_tail = s;
	assert(cs->st.sturdy_used > 0);
	cs->st.sturdy_used--;
}

/* The record a new export will take: a free one, else the oldest
 * tombstone, else CAP_NONE. Read only. */
static uint32_t sturdy_pick(const struct cap_space *cs)
{
	if (cs->sturdy_free != CAP_NONE)
		return cs->sturdy_free;
	return cs->tomb_head;
}

static void sturdy_take(struct cap_space *cs, uint32_t s)
{
	struct sturdy_rec *sr = &cs->sturdy[s];

	if (s == cs->sturdy_free) {
		assert(sr->state == ST_FREE);
		cs->sturdy_free = sr->next;
	} else {
		/* Reusing a tombstone: the old reference now names nothing. */
		assert(s == cs->tomb_head && sr->state == ST_TOMB);
		cs->tomb_head = sr->next;
		if (cs->tomb_head == CAP_NONE)
			cs->tomb_tail = CAP_NONE;
		sr->gen = gen_bump(sr->gen);
	}
	sr->next = CAP_NONE;
}

/* Frees a live sturdy record outright (its bank is being destroyed): its
 * capability goes with drop semantics, so imports of it stay valid. */
static void sturdy_release(struct cap_space *cs, uint32_t s)
{
	struct sturdy_rec *sr = &cs->sturdy[s];

	assert(sr->state == ST_LIVE);
	assert(cs->caps[sr->cap].gen == sr->cap_gen); /* I2 */
	cap_release(cs, sr->cap);
	sodium_memzero(sr->secret, sizeof sr->secret);
	sr->state = ST_FREE;
	sr->oid = 0;
	sr->cap = CAP_NONE;
	sr->cap_gen = 0;
	sr->bank = CAP_NONE;
	sr->gen = gen_bump(sr->gen);
	sr->next = cs->sturdy_free;
	cs->sturdy_free = s;
	assert(cs->st.sturdy_used > 0);
	cs->st.sturdy_used--;
}

/* Finds the sturdy record a reference names. Unknown and wrong secret are
 * one answer (-EACCES); the secret is compared in constant time before a
 * tombstone admits it was revoked. */
static int sturdy_find(const struct cap_space *cs, const struct cap_sturdy *ref,
                       uint32_t *out)
{
	uint32_t s = id_idx(ref->sid);
	const struct sturdy_rec *sr;

	if (ref->node != cs->cfg.node_id || s >= cs->cfg.max_sturdy)
		return -EACCES;
	sr = &cs->sturdy[s];
	if (sr->state == ST_FREE || sr->gen != id_gen(ref->sid))
		return -EACCES;
	if (sodium_memcmp(sr->secret, ref->secret, CAP_SECRET_LEN) != 0)
		return -EACCES;
	if (sr->oid != ref->oid)
		return -EACCES;
	if (sr->state == ST_TOMB)
		return -EKEYREVOKED;
	*out = s;
	return 0;
}

/* ---- c-lists and slots ---- */

static bool clist_ok(const struct cap_space *cs, uint32_t clist)
{
	return clist < cs->cfg.max_clists && cs->clists[clist].used;
}

static uint32_t slot_gidx(const struct cap_space *cs, uint32_t clist,
                          uint32_t slot)
{
	return clist * cs->cfg.slots_per_clist + slot;
}

/* -EBADF unless (clist, slot) is a filled slot: where forged indices end. */
static int slot_find(const struct cap_space *cs, uint32_t clist, uint32_t slot,
                     uint32_t *g)
{
	if (!clist_ok(cs, clist) || slot >= cs->cfg.slots_per_clist)
		return -EBADF;
	*g = slot_gidx(cs, clist, slot);
	if (cs->slots[*g].cap == CAP_NONE)
		return -EBADF;
	return 0;
}

/* ...and the live capability in it, or -EKEYREVOKED (I3). */
static int slot_cap(const struct cap_space *cs, uint32_t clist, uint32_t slot,
                    uint32_t *c)
{
	const struct slot_rec *sl;
	uint32_t g;
	int rc;

	rc = slot_find(cs, clist, slot, &g);
	if (rc)
		return rc;
	sl = &cs->slots[g];
	if (sl->gen == 0 || cs->caps[sl->cap].gen != sl->gen)
		return -EKEYREVOKED;
	/* I2: a live capability points back at the slot holding it. */
	assert(cs->caps[sl->cap].obj != CAP_NONE);
	assert(cs->caps[sl->cap].htype == HOLD_SLOT &&
	       cs->caps[sl->cap].holder == g);
	*c = sl->cap;
	return 0;
}

static bool rights_ok(uint32_t rights)
{
	return rights != 0 && (rights & ~(uint32_t) CAP_R_ALL) == 0;
}

/* What filling a slot of `clist` will use, checked before anything is
 * touched (C4): the bank to charge, an empty slot, a capability record and
 * room in the bank and its ancestors. */
struct fill_plan {
	uint32_t bank;
};

static int fill_check(const struct cap_space *cs, uint32_t clist,
                      struct fill_plan *fp)
{
	const struct clist_rec *cl = &cs->clists[clist];
	int rc;

	rc = bank_find(cs, cl->bank, &fp->bank);
	if (rc)
		return rc;
	if (cl->free_head == CAP_NONE || cs->cap_free == CAP_NONE)
		return -ENOSPC;
	return bank_can_charge(cs, fp->bank, CAP_CHARGE_SLOT, 0);
}

/* Fills the first empty slot with a new capability. Cannot fail after
 * fill_check(). Returns the slot index. */
static uint32_t fill_do(struct cap_space *cs, uint32_t clist,
                        const struct fill_plan *fp, uint32_t obj,
                        uint32_t rights, uint32_t parent)
{
	struct clist_rec *cl = &cs->clists[clist];
	uint32_t slot = cl->free_head;
	uint32_t g = slot_gidx(cs, clist, slot);
	struct slot_rec *sl = &cs->slots[g];
	uint32_t c;

	assert(slot != CAP_NONE && sl->cap == CAP_NONE);
	cl->free_head = sl->bank;
	c = cap_alloc(cs, obj, rights, parent, HOLD_SLOT, g);
	sl->cap = c;
	sl->gen = cs->caps[c].gen;
	sl->bank = fp->bank;
	bank_add(cs, fp->bank, CAP_CHARGE_SLOT, 0);
	cl->filled++;
	return slot;
}

/* Empties a filled slot: drops its capability if still live, and gives
 * back its charge unless the bank is being destroyed (bulk uncharge). */
static void slot_empty(struct cap_space *cs, uint32_t clist, uint32_t slot)
{
	struct clist_rec *cl = &cs->clists[clist];
	struct slot_rec *sl = &cs->slots[slot_gidx(cs, clist, slot)];

	assert(sl->cap != CAP_NONE);
	if (sl->gen != 0) {
		assert(cs->caps[sl->cap].gen == sl->gen); /* I2, I3 */
		cap_release(cs, sl->cap);
	}
	assert(cs->objs[sl->bank].kind == CAP_KIND_BANK); /* C3 */
	if (!cs->banks[sl->bank].doomed)
		bank_sub(cs, sl->bank, CAP_CHARGE_SLOT, 0);
	sl->cap = CAP_NONE;
	sl->gen = 0;
	sl->bank = cl->free_head;
	cl->free_head = slot;
	assert(cl->filled > 0);
	cl->filled--;
}

/* ---- the space ---- */

/* Reserves room for `n` records of `size` bytes at an aligned offset. */
static int layout(size_t *off, size_t n, size_t size, size_t align, size_t *at)
{
	size_t bytes, start;

	if (__builtin_mul_overflow(n, size, &bytes) ||
	    __builtin_add_overflow(*off, align - 1, &start))
		return -ENOMEM;
	start &= ~(align - 1);
	if (__builtin_add_overflow(start, bytes, off))
		return -ENOMEM;
	*at = start;
	return 0;
}

int cap_space_init(struct cap_space **out, const struct cap_config *cfg)
{
	size_t off = 0, o_cs, o_objs, o_banks, o_caps, o_clists, o_slots;
	size_t o_sturdy;
	uint64_t nslots;
	struct cap_space *cs;
	uint32_t i;
	char *mem;

	if (!out || !cfg)
		return -EINVAL;
	*out = NULL;
	if (!cfg->max_objects || !cfg->max_caps || !cfg->max_clists ||
	    !cfg->slots_per_clist || !cfg->max_sturdy)
		return -EINVAL;
	/* A slot's global index must fit below CAP_NONE (I2's back pointer). */
	nslots = (uint64_t) cfg->max_clists * cfg->slots_per_clist;
	if (nslots >= CAP_NONE)
		return -EINVAL;
	if (sodium_init() < 0)
		return -EIO;

	if (layout(&off, 1, sizeof *cs, _Alignof(struct cap_space), &o_cs) ||
	    layout(&off, cfg->max_objects, sizeof(struct obj_rec),
	           _Alignof(struct obj_rec), &o_objs) ||
	    layout(&off, cfg->max_objects, sizeof(struct bank_rec),
	           _Alignof(struct bank_rec), &o_banks) ||
	    layout(&off, cfg->max_caps, sizeof(struct cap_rec),
	           _Alignof(struct cap_rec), &o_caps) ||
	    layout(&off, cfg->max_clists, sizeof(struct clist_rec),
	           _Alignof(struct clist_rec), &o_clists) ||
	    layout(&off, (size_t) nslots, sizeof(struct slot_rec),
	           _Alignof(struct slot_rec), &o_slots) ||
	    layout(&off, cfg->max_sturdy, sizeof(struct sturdy_rec),
	           _Alignof(struct sturdy_rec), &o_sturdy))
		return -ENOMEM;

	/* The only allocation caps/ ever makes. */
	mem = calloc(1, off);
	if (!mem)
		return -ENOMEM;
	assert(o_cs == 0);
	cs = (struct cap_space *) (void *) mem;
	cs->cfg = *cfg;
	cs->objs = (struct obj_rec *) (void *) (mem + o_objs);
	cs->banks = (struct bank_rec *) (void *) (mem + o_banks);
	cs->caps = (struct cap_rec *) (void *) (mem + o_caps);
	cs->clists = (struct clist_rec *) (void *) (mem + o_clists);
	cs->slots = (struct slot_rec *) (void *) (mem + o_slots);
	cs->sturdy = (struct sturdy_rec *) (void *) (mem + o_sturdy);

	for (i = 0; i < cfg->max_objects; i++) {
		cs->objs[i].gen = 1;
		cs->objs[i].payer = CAP_NONE;
		cs->objs[i].roots = CAP_NONE;
		cs->objs[i].next_free =
		        i + 1 < cfg->max_objects ? i + 1 : CAP_NONE;
		cs->banks[i].first_child = CAP_NONE;
		cs->banks[i].next = cs->banks[i].prev = CAP_NONE;
	}
	cs->obj_head = 0;
	cs->obj_tail = cfg->max_objects - 1;
	for (i = 0; i < cfg->max_caps; i++) {
		cs->caps[i].gen = 1;
		cs->caps[i].obj = CAP_NONE;
		cs->caps[i].parent = CAP_NONE;
		cs->caps[i].first_child = CAP_NONE;
		cs->caps[i].prev = CAP_NONE;
		cs->caps[i].holder = CAP_NONE;
		cs->caps[i].next = i + 1 < cfg->max_caps ? i + 1 : CAP_NONE;
	}
	cs->cap_free = 0;
	for (i = 0; i < cfg->max_clists; i++)
		cs->clists[i].next_free =
		        i + 1 < cfg->max_clists ? i + 1 : CAP_NONE;
	cs->clist_free = 0;
	for (i = 0; i < nslots; i++) {
		cs->slots[i].cap = CAP_NONE;
		cs->slots[i].bank = CAP_NONE;
	}
	for (i = 0; i < cfg->max_sturdy; i++) {
		cs->sturdy[i].gen = 1;
		cs->sturdy[i].cap = CAP_NONE;
		cs->sturdy[i].bank = CAP_NONE;
		cs->sturdy[i].next = i + 1 < cfg->max_sturdy ? i + 1 : CAP_NONE;
	}
	cs->sturdy_free = 0;
	cs->tomb_head = cs->tomb_tail = CAP_NONE;

	/* The root bank pays for itself: nobody is charged for it. */
	cs->root = obj_alloc(cs, CAP_KIND_BANK, CAP_NONE, 0, NULL);
	cs->banks[cs->root].limit_bytes = cfg->root_limit_bytes;
	cs->banks[cs->root].limit_objects = cfg->root_limit_objects;
	*out = cs;
	return 0;
}

void cap_space_free(struct cap_space *cs)
{
	if (!cs)
		return;
	/* Secrets must not linger in freed heap. */
	sodium_memzero(cs->sturdy,
	               (size_t) cs->cfg.max_sturdy * sizeof *cs->sturdy);
	free(cs);
}

uint64_t cap_space_root_bank(const struct cap_space *cs)
{
	return cs ? obj_id(cs, cs->root) : 0;
}

void cap_space_stats(const struct cap_space *cs, struct cap_stats *st)
{
	if (!cs || !st)
		return;
	*st = cs->st;
	st->objects_max = cs->cfg.max_objects;
	st->caps_max = cs->cfg.max_caps;
	st->clists_max = cs->cfg.max_clists;
	st->sturdy_max = cs->cfg.max_sturdy;
}

/* ---- rights ---- */

static const struct {
	const char *name;
	uint32_t bit;
} right_names[] = {
        {"read", CAP_R_READ}, {"write", CAP_R_WRITE}, {"lock", CAP_R_LOCK},
        {"map", CAP_R_MAP},   {"grant", CAP_R_GRANT},
};

int cap_rights_parse(const char *s, uint32_t *rights)
{
	uint32_t r = 0;

	if (!s || !rights)
		return -EINVAL;
	if (strcmp(s, "all") == 0) {
		*rights = CAP_R_ALL;
		return 0;
	}
	if (strcmp(s, "none") == 0) { /* what cap_rights_format() writes */
		*rights = 0;
		return 0;
	}
	for (;;) {
		const char *end = strchr(s, ',');
		size_t n = end ? (size_t) (end - s) : strlen(s);
		uint32_t bit = 0;
		size_t i;

		for (i = 0; i < sizeof right_names / sizeof right_names[0]; i++)
			if (strlen(right_names[i].name) == n &&
			    memcmp(s, right_names[i].name, n) == 0)
				bit = right_names[i].bit;
		/* Empty words (",read", "read,", "read,,map"), unknown words
		 * and repeats are all typos worth reporting. */
		if (!bit || (r & bit))
			return -EINVAL;
		r |= bit;
		if (!end)
			break;
		s = end + 1;
	}
	*rights = r;
	return 0;
}

int cap_rights_format(uint32_t rights, char *buf, size_t len)
{
	size_t at = 0, i;

	if (!buf || !len)
		return -ENOSPC;
	buf[0] = '\0';
	if (rights & ~(uint32_t) CAP_R_ALL)
		return -EINVAL;
	if (!rights) {
		if (len < sizeof "none")
			return -ENOSPC;
		memcpy(buf, "none", sizeof "none");
		return 0;
	}
	for (i = 0; i < sizeof right_names / sizeof right_names[0]; i++) {
		size_t n = strlen(right_names[i].name);

		if (!(rights & right_names[i].bit))
			continue;
		if (at + (at ? 1 : 0) + n + 1 > len) {
			buf[0] = '\0';
			return -ENOSPC;
		}
		if (at)
			buf[at++] = ',';
		memcpy(buf + at, right_names[i].name, n + 1);
		at += n;
	}
	return 0;
}

const char *cap_kind_name(enum cap_kind kind)
{
	switch (kind) {
	case CAP_KIND_NONE:
		return "none";
	case CAP_KIND_DATA:
		return "data";
	case CAP_KIND_PROCESS:
		return "process";
	case CAP_KIND_BANK:
		return "bank";
	}
	return "invalid";
}

/* ---- banks ---- */

int bank_create(struct cap_space *cs, uint64_t parent, uint64_t limit_bytes,
                uint64_t limit_objects, uint64_t *bank)
{
	struct bank_rec *br;
	uint32_t p, b;
	int rc;

	if (!cs || !bank)
		return -EINVAL;
	rc = bank_find(cs, parent, &p);
	if (rc)
		return rc;
	if (cs->obj_head == CAP_NONE)
		return -ENOSPC;
	rc = bank_can_charge(cs, p, CAP_CHARGE_OBJECT, 1);
	if (rc)
		return rc;

	b = obj_alloc(cs, CAP_KIND_BANK, p, CAP_CHARGE_OBJECT, NULL);
	bank_add(cs, p, CAP_CHARGE_OBJECT, 1);
	br = &cs->banks[b];
	memset(br, 0, sizeof *br);
	br->limit_bytes = limit_bytes;
	br->limit_objects = limit_objects;
	br->first_child = CAP_NONE;
	bank_link(cs, b, p);
	*bank = obj_id(cs, b);
	return 0;
}

/* True for an object that the bank_destroy() under way takes with it. */
static bool obj_doomed(const struct cap_space *cs, uint32_t o)
{
	const struct obj_rec *orec = &cs->objs[o];

	if (orec->kind == CAP_KIND_NONE)
		return false;
	if (orec->kind == CAP_KIND_BANK)
		return cs->banks[o].doomed;
	return cs->banks[orec->payer].doomed;
}

/* Destroys the bank subtree under `top` in passes over the pools, so the
 * cost is linear and the stack flat however deep the banks nest:
 *  0. mark the doomed banks and take everything they hold off the
 *     ancestors in one subtraction (their counters die with them);
 *  1. revoke every capability to a doomed object (C2), which turns sturdy
 *     references to them into tombstones;
 *  2. empty every slot and 3. free every sturdy record the doomed banks
 *     paid for (drop semantics: what was derived from them survives);
 *  4. tell the owner of each object, then free its record.
 * The bank records stay marked until step 4 has seen every object. */
int bank_destroy(struct cap_space *cs, uint64_t bank)
{
	uint32_t top, b, i, s;
	uint64_t oid;

	if (!cs)
		return -EINVAL;
	top = obj_find(cs, bank);
	if (top == CAP_NONE)
		return -ENOENT;
	if (cs->objs[top].kind != CAP_KIND_BANK)
		return -ENOTTY;
	if (top == cs->root)
		return -EPERM;

	for (b = top; b != CAP_NONE; b = bank_next_pre(cs, b, top))
		cs->banks[b].doomed = 1;
	bank_sub(cs, cs->objs[top].payer,
	         cs->banks[top].used_bytes + cs->objs[top].charge,
	         cs->banks[top].used_objects + 1);
	bank_unlink(cs, top);

	for (i = 0; i < cs->cfg.max_objects; i++)
		if (obj_doomed(cs, i))
			obj_revoke_all(cs, i);

	for (i = 0; i < cs->cfg.max_clists; i++) {
		if (!cs->clists[i].used)
			continue;
		for (s = 0; s < cs->cfg.slots_per_clist; s++) {
			const struct slot_rec *sl =
			        &cs->slots[slot_gidx(cs, i, s)];

			if (sl->cap != CAP_NONE && cs->banks[sl->bank].doomed)
				slot_empty(cs, i, s);
		}
	}

	for (s = 0; s < cs->cfg.max_sturdy; s++)
		if (cs->sturdy[s].state == ST_LIVE &&
		    cs->banks[cs->sturdy[s].bank].doomed)
			sturdy_release(cs, s);

	for (i = 0; i < cs->cfg.max_objects; i++) {
		struct obj_rec *orec = &cs->objs[i];

		if (!obj_doomed(cs, i))
			continue;
		oid = obj_id(cs, i);
		if (cs->cfg.on_destroy)
			cs->cfg.on_destroy(
			        cs->cfg.ctx, oid, (enum cap_kind) orec->kind,
			        orec->kind == CAP_KIND_BANK ? NULL
			                                    : orec->priv);
		obj_release(cs, i);
	}
	for (i = 0; i < cs->cfg.max_objects; i++) {
		if (!cs->banks[i].doomed)
			continue;
		assert(cs->objs[i].kind == CAP_KIND_NONE);
		memset(&cs->banks[i], 0, sizeof cs->banks[i]);
		cs->banks[i].first_child = CAP_NONE;
		cs->banks[i].next = cs->banks[i].prev = CAP_NONE;
	}
	return 0;
}

int bank_charge(struct cap_space *cs, uint64_t bank, uint64_t bytes,
                uint64_t objects)
{
	uint32_t b;
	int rc;

	if (!cs)
		return -EINVAL;
	rc = bank_find(cs, bank, &b);
	if (rc)
		return rc;
	rc = bank_can_charge(cs, b, bytes, objects);
	if (rc)
		return rc;
	bank_add(cs, b, bytes, objects);
	cs->banks[b].ext_bytes += bytes;
	cs->banks[b].ext_objects += objects;
	return 0;
}

void bank_uncharge(struct cap_space *cs, uint64_t bank, uint64_t bytes,
                   uint64_t objects)
{
	struct bank_rec *br;
	uint32_t b;

	if (!cs || bank_find(cs, bank, &b))
		return;
	br = &cs->banks[b];
	/* A caller can only take back what it charged: clamping keeps a
	 * buggy caller from eating the charges of pool records (C3). */
	if (bytes > br->ext_bytes)
		bytes = br->ext_bytes;
	if (objects > br->ext_objects)
		objects = br->ext_objects;
	br->ext_bytes -= bytes;
	br->ext_objects -= objects;
	bank_sub(cs, b, bytes, objects);
}

int bank_info(const struct cap_space *cs, uint64_t bank, struct bank_info *bi)
{
	const struct bank_rec *br;
	uint32_t b;

	if (!cs || !bi)
		return -EINVAL;
	b = obj_find(cs, bank);
	if (b == CAP_NONE)
		return -ENOENT;
	if (cs->objs[b].kind != CAP_KIND_BANK)
		return -ENOTTY;
	br = &cs->banks[b];
	memset(bi, 0, sizeof *bi);
	bi->oid = obj_id(cs, b);
	bi->parent = cs->objs[b].payer == CAP_NONE
	                     ? 0
	                     : obj_id(cs, cs->objs[b].payer);
	bi->limit_bytes = br->limit_bytes;
	bi->limit_objects = br->limit_objects;
	bi->used_bytes = br->used_bytes;
	bi->used_objects = br->used_objects;
	bi->children = br->children;
	return 0;
}

/* ---- objects ---- */

int cap_obj_create(struct cap_space *cs, enum cap_kind kind, uint64_t bank,
                   uint64_t extra_bytes, void *priv, uint64_t *oid)
{
	uint64_t charge;
	uint32_t b, o;
	int rc;

	if (!cs || !oid)
		return -EINVAL;
	if (kind != CAP_KIND_DATA && kind != CAP_KIND_PROCESS)
		return -EINVAL; /* banks come from bank_create() */
	rc = bank_find(cs, bank, &b);
	if (rc)
		return rc;
	if (__builtin_add_overflow((uint64_t) CAP_CHARGE_OBJECT, extra_bytes,
	                           &charge))
		return -EDQUOT; /* no bank could ever hold it */
	if (cs->obj_head == CAP_NONE)
		return -ENOSPC;
	rc = bank_can_charge(cs, b, charge, 1);
	if (rc)
		return rc;

	o = obj_alloc(cs, kind, b, charge, priv);
	bank_add(cs, b, charge, 1);
	*oid = obj_id(cs, o);
	return 0;
}

int cap_obj_destroy(struct cap_space *cs, uint64_t oid)
{
	struct obj_rec *orec;
	uint32_t o;

	if (!cs)
		return -EINVAL;
	o = obj_find(cs, oid);
	if (o == CAP_NONE)
		return -ENOENT;
	orec = &cs->objs[o];
	if (orec->kind == CAP_KIND_BANK)
		return bank_destroy(cs, oid); /* takes what it paid for along */

	obj_revoke_all(cs, o);
	if (cs->cfg.on_destroy)
		cs->cfg.on_destroy(cs->cfg.ctx, oid, (enum cap_kind) orec->kind,
		                   orec->priv);
	bank_sub(cs, orec->payer, orec->charge, 1);
	obj_release(cs, o);
	return 0;
}

int cap_obj_get(const struct cap_space *cs, uint64_t oid, enum cap_kind *kind,
                void **priv)
{
	uint32_t o;

	if (!cs)
		return -EINVAL;
	o = obj_find(cs, oid);
	if (o == CAP_NONE)
		return -ENOENT;
	if (kind)
		*kind = (enum cap_kind) cs->objs[o].kind;
	if (priv)
		*priv = cs->objs[o].priv;
	return 0;
}

uint64_t cap_obj_bank(const struct cap_space *cs, uint64_t oid)
{
	uint32_t o;

	if (!cs)
		return 0;
	o = obj_find(cs, oid);
	if (o == CAP_NONE || cs->objs[o].payer == CAP_NONE)
		return 0;
	return obj_id(cs, cs->objs[o].payer);
}

/* ---- c-lists ---- */

int cap_clist_create(struct cap_space *cs, uint64_t bank, uint32_t *clist)
{
	struct clist_rec *cl;
	uint32_t b, l, s, spc;
	int rc;

	if (!cs || !clist)
		return -EINVAL;
	rc = bank_find(cs, bank, &b);
	if (rc)
		return rc;
	l = cs->clist_free;
	if (l == CAP_NONE)
		return -ENOSPC;

	cl = &cs->clists[l];
	cs->clist_free = cl->next_free;
	cl->next_free = CAP_NONE;
	cl->used = 1;
	cl->bank = bank;
	cl->filled = 0;
	/* Lowest slots first, as a fresh process gets its descriptors. */
	spc = cs->cfg.slots_per_clist;
	for (s = 0; s < spc; s++) {
		struct slot_rec *sl = &cs->slots[slot_gidx(cs, l, s)];

		assert(sl->cap == CAP_NONE);
		sl->gen = 0;
		sl->bank = s + 1 < spc ? s + 1 : CAP_NONE;
	}
	cl->free_head = 0;
	cs->st.clists_used++;
	*clist = l;
	return 0;
}

void cap_clist_destroy(struct cap_space *cs, uint32_t clist)
{
	struct clist_rec *cl;
	uint32_t s;

	if (!cs || !clist_ok(cs, clist))
		return;
	cl = &cs->clists[clist];
	for (s = 0; s < cs->cfg.slots_per_clist && cl->filled; s++)
		if (cs->slots[slot_gidx(cs, clist, s)].cap != CAP_NONE)
			slot_empty(cs, clist, s);
	assert(cl->filled == 0);
	cl->used = 0;
	cl->bank = 0;
	cl->free_head = CAP_NONE;
	cl->next_free = cs->clist_free;
	cs->clist_free = clist;
	assert(cs->st.clists_used > 0);
	cs->st.clists_used--;
}

int cap_clist_set_bank(struct cap_space *cs, uint32_t clist, uint64_t bank)
{
	uint32_t b;
	int rc;

	if (!cs)
		return -EINVAL;
	if (!clist_ok(cs, clist))
		return -EBADF;
	rc = bank_find(cs, bank, &b);
	if (rc)
		return rc;
	cs->clists[clist].bank = bank;
	return 0;
}

/* ---- capabilities ---- */

int cap_mint(struct cap_space *cs, uint32_t clist, uint64_t oid,
             uint32_t rights, uint32_t *slot)
{
	struct fill_plan fp;
	uint32_t o;
	int rc;

	if (!cs || !slot)
		return -EINVAL;
	if (!clist_ok(cs, clist))
		return -EBADF;
	if (!rights_ok(rights))
		return -EINVAL;
	o = obj_find(cs, oid);
	if (o == CAP_NONE)
		return -ENOENT;
	rc = fill_check(cs, clist, &fp);
	if (rc)
		return rc;
	*slot = fill_do(cs, clist, &fp, o, rights, CAP_NONE);
	return 0;
}

int cap_check(const struct cap_space *cs, uint32_t clist, uint32_t slot,
              enum cap_kind kind, uint32_t need, struct cap_info *info)
{
	const struct cap_rec *cr;
	uint32_t c, p, depth = 0;
	int rc;

	if (!cs)
		return -EINVAL;
	rc = slot_cap(cs, clist, slot, &c);
	if (rc)
		return rc;
	cr = &cs->caps[c];
	if (kind != CAP_KIND_NONE && cs->objs[cr->obj].kind != kind)
		return -ENOTTY;
	if (need & ~cr->rights)
		return -EPERM;
	if (info) {
		/* Depth is counted, not stored: a drop re-parents a subtree
		 * in O(children) instead of renumbering all of it. */
		for (p = cr->parent; p != CAP_NONE; p = cs->caps[p].parent)
			depth++;
		info->oid = obj_id(cs, cr->obj);
		info->kind = (enum cap_kind) cs->objs[cr->obj].kind;
		info->rights = cr->rights;
		info->depth = depth;
	}
	return 0;
}

int cap_derived(const struct cap_space *cs, uint32_t clist, uint32_t slot)
{
	uint32_t c;
	int rc;

	if (!cs)
		return -EINVAL;
	rc = slot_cap(cs, clist, slot, &c);
	if (rc == -EKEYREVOKED)
		return 0; /* revoked: its subtree went with it */
	if (rc)
		return rc;
	return cs->caps[c].first_child != CAP_NONE;
}

int cap_restrict(struct cap_space *cs, uint32_t clist, uint32_t slot,
                 uint32_t rights, uint32_t *new_slot)
{
	struct fill_plan fp;
	uint32_t c;
	int rc;

	if (!cs || !new_slot)
		return -EINVAL;
	rc = slot_cap(cs, clist, slot, &c);
	if (rc)
		return rc;
	if (!rights_ok(rights))
		return -EINVAL;
	if (rights & ~cs->caps[c].rights)
		return -EPERM; /* C1 */
	rc = fill_check(cs, clist, &fp);
	if (rc)
		return rc;
	*new_slot = fill_do(cs, clist, &fp, cs->caps[c].obj, rights, c);
	return 0;
}

int cap_revoke(struct cap_space *cs, uint32_t clist, uint32_t slot)
{
	uint32_t c;
	int rc;

	if (!cs)
		return -EINVAL;
	rc = slot_cap(cs, clist, slot, &c);
	if (rc)
		return rc;
	cap_revoke_tree(cs, c);
	return 0;
}

int cap_drop(struct cap_space *cs, uint32_t clist, uint32_t slot)
{
	uint32_t g;
	int rc;

	if (!cs)
		return -EINVAL;
	rc = slot_find(cs, clist, slot, &g);
	if (rc)
		return rc;
	slot_empty(cs, clist, slot);
	return 0;
}

int cap_transfer(struct cap_space *cs, uint32_t from, uint32_t slot,
                 uint32_t to, uint32_t rights, uint32_t *to_slot)
{
	struct fill_plan fp;
	uint32_t c;
	int rc;

	if (!cs || !to_slot)
		return -EINVAL;
	rc = slot_cap(cs, from, slot, &c);
	if (rc)
		return rc;
	if (!rights_ok(rights))
		return -EINVAL;
	if (!(cs->caps[c].rights & CAP_R_GRANT))
		return -EPERM;
	if (rights & ~cs->caps[c].rights)
		return -EPERM; /* C1 */
	if (!clist_ok(cs, to))
		return -EBADF;
	rc = fill_check(cs, to, &fp);
	if (rc)
		return rc;
	*to_slot = fill_do(cs, to, &fp, cs->caps[c].obj, rights, c);
	return 0;
}

/* ---- sturdy references ---- */

int cap_export(struct cap_space *cs, uint32_t clist, uint32_t slot,
               struct cap_sturdy *ref)
{
	return cap_export_rights(cs, clist, slot, CAP_R_ALL, ref);
}

int cap_export_rights(struct cap_space *cs, uint32_t clist, uint32_t slot,
                      uint32_t rights, struct cap_sturdy *ref)
{
	struct sturdy_rec *sr;
	uint32_t c, b, s, k;
	int rc;

	if (!cs || !ref || rights == 0 || (rights & ~(uint32_t)CAP_R_ALL))
		return -EINVAL;
	rc = slot_cap(cs, clist, slot, &c);
	if (rc)
		return rc;
	if (!(cs->caps[c].rights & CAP_R_GRANT))
		return -EPERM;
	if (rights == CAP_R_ALL)
		rights = cs->caps[c].rights; /* cap_export: as it is */
	if (rights & ~cs->caps[c].rights)
		return -EPERM; /* C1 */
	rc = bank_find(cs, cs->clists[clist].bank, &b);
	if (rc)
		return rc;
	s = sturdy_pick(cs);
	if (s == CAP_NONE || cs->cap_free == CAP_NONE)
		return -ENOSPC;
	rc = bank_can_charge(cs, b, CAP_CHARGE_STURDY, 0);
	if (rc)
		return rc;

	sturdy_take(cs, s);
	sr = &cs->sturdy[s];
	k = cap_alloc(cs, cs->caps[c].obj, rights, c, HOLD_STURDY, s);
	sr->state = ST_LIVE;
	sr->cap = k;
	sr->cap_gen = cs->caps[k].gen;
	sr->bank = b;
	sr->oid = obj_id(cs, cs->caps[c].obj);
	randombytes_buf(sr->secret, sizeof sr->secret);
	bank_add(cs, b, CAP_CHARGE_STURDY, 0);
	cs->st.sturdy_used++;

	memset(ref, 0, sizeof *ref);
	ref->node = cs->cfg.node_id;
	ref->oid = sr->oid;
	ref->sid = mkid(sr->gen, s);
	memcpy(ref->secret, sr->secret, sizeof ref->secret);
	return 0;
}

int cap_import(struct cap_space *cs, uint32_t clist,
               const struct cap_sturdy *ref, uint32_t *slot)
{
	const struct cap_rec *kr;
	struct fill_plan fp;
	uint32_t s;
	int rc;

	if (!cs || !ref || !slot)
		return -EINVAL;
	if (!clist_ok(cs, clist))
		return -EBADF;
	rc = sturdy_find(cs, ref, &s);
	if (rc)
		return rc;
	kr = &cs->caps[cs->sturdy[s].cap];
	assert(kr->gen == cs->sturdy[s].cap_gen && kr->htype == HOLD_STURDY);
	rc = fill_check(cs, clist, &fp);
	if (rc)
		return rc;
	*slot = fill_do(cs, clist, &fp, kr->obj, kr->rights, cs->sturdy[s].cap);
	return 0;
}

int cap_revoke_sturdy(struct cap_space *cs, const struct cap_sturdy *ref)
{
	uint32_t s;
	int rc;

	if (!cs || !ref)
		return -EINVAL;
	rc = sturdy_find(cs, ref, &s);
	if (rc)
		return rc;
	cap_revoke_tree(cs, cs->sturdy[s].cap); /* buries the record too */
	assert(cs->sturdy[s].state == ST_TOMB);
	return 0;
}

int cap_sturdy_format(const struct cap_sturdy *ref, char *buf, size_t len)
{
	char hex[2 * CAP_SECRET_LEN + 1];
	int n;

	if (!ref)
		return -EINVAL;
	if (!buf || !len)
		return -ENOSPC;
	sodium_bin2hex(hex, sizeof hex, ref->secret, CAP_SECRET_LEN);
	n = snprintf(buf, len,
	             "cdsm1:%" PRIu32 ":%016" PRIx64 ":%016" PRIx64 ":%s",
	             ref->node, ref->oid, ref->sid, hex);
	sodium_memzero(hex, sizeof hex);
	if (n < 0 || (size_t) n >= len) {
		/* Leave no truncated secret behind. */
		sodium_memzero(buf, len);
		return -ENOSPC;
	}
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1; /* uppercase too: there is one spelling of a reference */
}

/* Reads exactly 2 * n lowercase hex digits into n bytes. Stops at the first
 * bad character, so it never reads past a terminating NUL. */
static int take_hex(const char **p, uint8_t *out, size_t n)
{
	size_t i;

	for (i = 0; i < 2 * n; i++) {
		int v = hexval((*p)[i]);

		if (v < 0)
			return -EINVAL;
		if (i % 2 == 0)
			out[i / 2] = (uint8_t) (v << 4);
		else
			out[i / 2] |= (uint8_t) v;
	}
	*p += 2 * n;
	return 0;
}

static int take_u64(const char **p, uint64_t *v)
{
	uint8_t b[8];
	int i;

	if (take_hex(p, b, sizeof b))
		return -EINVAL;
	*v = 0;
	for (i = 0; i < 8; i++)
		*v = *v << 8 | b[i];
	return 0;
}

int cap_sturdy_parse(const char *text, struct cap_sturdy *ref)
{
	struct cap_sturdy r;
	const char *p = text;
	uint64_t node = 0;
	size_t digits = 0;
	int rc = -EINVAL;

	if (!text || !ref)
		return -EINVAL;
	memset(&r, 0, sizeof r);
	if (strncmp(p, "cdsm1:", 6) != 0)
		goto out;
	p += 6;
	/* Node: canonical decimal, no sign, no leading zeros, fits 32 bits. */
	while (*p >= '0' && *p <= '9') {
		if (digits == 10)
			goto out;
		node = node * 10 + (uint64_t) (*p - '0');
		digits++;
		p++;
	}
	if (!digits || (digits > 1 && p[-(ptrdiff_t) digits] == '0') ||
	    node > UINT32_MAX)
		goto out;
	r.node = (uint32_t) node;
	if (*p != ':')
		goto out;
	p++;
	if (take_u64(&p, &r.oid) || *p != ':')
		goto out;
	p++;
	if (take_u64(&p, &r.sid) || *p != ':')
		goto out;
	p++;
	if (take_hex(&p, r.secret, CAP_SECRET_LEN) || *p != '\0')
		goto out;
	if (!r.oid || !r.sid) /* ids are never 0 */
		goto out;
	*ref = r;
	rc = 0;
out:
	sodium_memzero(&r, sizeof r);
	return rc;
}

/* ---- audit ---- */

#define AUDIT(cond, msg)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			if (why)                                               \
				*why = (msg);                                  \
			return -EUCLEAN;                                       \
		}                                                              \
	} while (0)

static bool obj_live(const struct cap_space *cs, uint32_t o)
{
	return o < cs->cfg.max_objects && cs->objs[o].kind != CAP_KIND_NONE;
}

static bool bank_live(const struct cap_space *cs, uint32_t b)
{
	return obj_live(cs, b) && cs->objs[b].kind == CAP_KIND_BANK;
}

static bool cap_live(const struct cap_space *cs, uint32_t c)
{
	return c < cs->cfg.max_caps && cs->caps[c].obj != CAP_NONE;
}

/* Pre-order successor of `c` within the derivation subtree of `top`. */
static uint32_t cap_next_pre(const struct cap_space *cs, uint32_t c,
                             uint32_t top)
{
	if (cs->caps[c].first_child != CAP_NONE)
		return cs->caps[c].first_child;
	while (c != top) {
		if (cs->caps[c].next != CAP_NONE)
			return cs->caps[c].next;
		c = cs->caps[c].parent;
	}
	return CAP_NONE;
}

static int audit_objects(const struct cap_space *cs, struct cap_stats *n,
                         const char **why)
{
	uint32_t i, f, nfree = 0;

	for (i = 0; i < cs->cfg.max_objects; i++) {
		const struct obj_rec *orec = &cs->objs[i];

		AUDIT(orec->gen != 0, "object generation 0");
		if (orec->kind == CAP_KIND_NONE) {
			AUDIT(orec->roots == CAP_NONE, "free object with caps");
			continue;
		}
		n->objects_used++;
		AUDIT(orec->kind <= CAP_KIND_BANK, "object of unknown kind");
		if (i == cs->root)
			AUDIT(orec->payer == CAP_NONE &&
			              orec->kind == CAP_KIND_BANK,
			      "root bank has a payer");
		else
			AUDIT(bank_live(cs, orec->payer),
			      "object paid by no live bank (C3)");
		AUDIT(orec->kind != CAP_KIND_BANK || !cs->banks[i].doomed,
		      "bank left doomed");
	}
	for (f = cs->obj_head; f != CAP_NONE; f = cs->objs[f].next_free) {
		AUDIT(f < cs->cfg.max_objects && nfree < cs->cfg.max_objects,
		      "object free list broken");
		AUDIT(cs->objs[f].kind == CAP_KIND_NONE,
		      "live object on free list");
		AUDIT(cs->objs[f].next_free != CAP_NONE || f == cs->obj_tail,
		      "object free list tail wrong");
		nfree++;
	}
	AUDIT(nfree + n->objects_used == cs->cfg.max_objects,
	      "object lost: neither live nor free");
	return 0;
}

static int audit_caps(const struct cap_space *cs, struct cap_stats *n,
                      const char **why)
{
	uint32_t i, f, o, nfree = 0, reach = 0;

	for (i = 0; i < cs->cfg.max_caps; i++) {
		const struct cap_rec *cr = &cs->caps[i];

		AUDIT(cr->gen != 0, "cap generation 0");
		if (cr->obj == CAP_NONE)
			continue;
		n->caps_used++;
		AUDIT(obj_live(cs, cr->obj), "cap names a freed object (I1)");
		AUDIT(cr->rights && !(cr->rights & ~(uint32_t) CAP_R_ALL),
		      "cap rights out of range");
		if (cr->parent != CAP_NONE) {
			AUDIT(cap_live(cs, cr->parent),
			      "cap parent not live (I1)");
			AUDIT(cs->caps[cr->parent].obj == cr->obj,
			      "cap parent names another object");
			AUDIT(!(cr->rights & ~cs->caps[cr->parent].rights),
			      "child wider than its parent (C1)");
		}
		if (cr->prev == CAP_NONE) {
			uint32_t head =
			        cr->parent == CAP_NONE
			                ? cs->objs[cr->obj].roots
			                : cs->caps[cr->parent].first_child;
			AUDIT(head == i,
			      "cap not at the head of its list (I1)");
		} else {
			AUDIT(cap_live(cs, cr->prev) &&
			              cs->caps[cr->prev].next == i &&
			              cs->caps[cr->prev].parent == cr->parent,
			      "cap sibling links broken (I1)");
		}
		if (cr->next != CAP_NONE)
			AUDIT(cap_live(cs, cr->next) &&
			              cs->caps[cr->next].prev == i,
			      "cap sibling links broken (I1)");
		if (cr->first_child != CAP_NONE)
			AUDIT(cap_live(cs, cr->first_child) &&
			              cs->caps[cr->first_child].parent == i,
			      "cap child link broken (I1)");
		if (cr->htype == HOLD_SLOT) {
			const struct slot_rec *sl;

			AUDIT(cr->holder < cs->cfg.max_clists *
			                           cs->cfg.slots_per_clist,
			      "cap holder out of range (I2)");
			sl = &cs->slots[cr->holder];
			AUDIT(sl->cap == i && sl->gen == cr->gen,
			      "slot does not hold its cap (I2)");
			AUDIT(cs->clists[cr->holder / cs->cfg.slots_per_clist]
			              .used,
			      "cap held by a freed c-list (I2)");
		} else {
			AUDIT(cr->htype == HOLD_STURDY &&
			              cr->holder < cs->cfg.max_sturdy,
			      "cap has no holder (I2)");
			AUDIT(cs->sturdy[cr->holder].state == ST_LIVE &&
			              cs->sturdy[cr->holder].cap == i &&
			              cs->sturdy[cr->holder].cap_gen == cr->gen,
			      "sturdy record does not hold its cap (I2)");
		}
	}
	for (f = cs->cap_free; f != CAP_NONE; f = cs->caps[f].next) {
		AUDIT(f < cs->cfg.max_caps && nfree < cs->cfg.max_caps,
		      "cap free list broken");
		AUDIT(cs->caps[f].obj == CAP_NONE, "live cap on free list");
		nfree++;
	}
	AUDIT(nfree + n->caps_used == cs->cfg.max_caps,
	      "cap lost: neither live nor free");
	/* Every live cap is findable from its object (I1), exactly once. */
	for (o = 0; o < cs->cfg.max_objects; o++) {
		uint32_t r;

		if (cs->objs[o].kind == CAP_KIND_NONE)
			continue;
		for (r = cs->objs[o].roots; r != CAP_NONE;
		     r = cs->caps[r].next) {
			uint32_t c;

			AUDIT(cap_live(cs, r) &&
			              cs->caps[r].parent == CAP_NONE &&
			              cs->caps[r].obj == o,
			      "root list holds a non-root (I1)");
			for (c = r; c != CAP_NONE; c = cap_next_pre(cs, c, r)) {
				AUDIT(reach++ < n->caps_used,
				      "derivation trees have a cycle (I1)");
				AUDIT(cs->caps[c].obj == o,
				      "cap in another object's tree (I1)");
			}
		}
	}
	AUDIT(reach == n->caps_used, "cap not reachable from its object (I1)");
	return 0;
}

static int audit_clists(const struct cap_space *cs, struct cap_stats *n,
                        const char **why)
{
	uint32_t l, s, f, nfree = 0;

	for (l = 0; l < cs->cfg.max_clists; l++) {
		const struct clist_rec *cl = &cs->clists[l];
		uint32_t filled = 0, empty = 0;

		for (s = 0; s < cs->cfg.slots_per_clist; s++) {
			uint32_t g = slot_gidx(cs, l, s);
			const struct slot_rec *sl = &cs->slots[g];

			if (sl->cap == CAP_NONE)
				continue;
			AUDIT(cl->used, "freed c-list has a filled slot");
			filled++;
			AUDIT(bank_live(cs, sl->bank),
			      "slot charged to no live bank (C3)");
			AUDIT(sl->cap < cs->cfg.max_caps,
			      "slot cap out of range");
			if (sl->gen != 0)
				AUDIT(cs->caps[sl->cap].gen == sl->gen &&
				              cs->caps[sl->cap].htype ==
				                      HOLD_SLOT &&
				              cs->caps[sl->cap].holder == g,
				      "slot's cap does not point back (I2)");
		}
		if (!cl->used)
			continue;
		n->clists_used++;
		AUDIT(filled == cl->filled, "c-list fill count wrong");
		for (f = cl->free_head; f != CAP_NONE;
		     f = cs->slots[slot_gidx(cs, l, f)].bank) {
			AUDIT(f < cs->cfg.slots_per_clist &&
			              empty < cs->cfg.slots_per_clist,
			      "slot free list broken");
			AUDIT(cs->slots[slot_gidx(cs, l, f)].cap == CAP_NONE,
			      "filled slot on free list");
			empty++;
		}
		AUDIT(filled + empty == cs->cfg.slots_per_clist,
		      "slot lost: neither filled nor free");
	}
	for (f = cs->clist_free; f != CAP_NONE; f = cs->clists[f].next_free) {
		AUDIT(f < cs->cfg.max_clists && nfree < cs->cfg.max_clists,
		      "c-list free list broken");
		AUDIT(!cs->clists[f].used, "live c-list on free list");
		nfree++;
	}
	AUDIT(nfree + n->clists_used == cs->cfg.max_clists,
	      "c-list lost: neither live nor free");
	return 0;
}

static int audit_sturdy(const struct cap_space *cs, struct cap_stats *n,
                        const char **why)
{
	uint32_t s, f, nfree = 0, tombs = 0, ntomb = 0;

	for (s = 0; s < cs->cfg.max_sturdy; s++) {
		const struct sturdy_rec *sr = &cs->sturdy[s];

		AUDIT(sr->gen != 0, "sturdy generation 0");
		if (sr->state == ST_TOMB)
			tombs++;
		if (sr->state != ST_LIVE)
			continue;
		n->sturdy_used++;
		AUDIT(cap_live(cs, sr->cap) &&
		              cs->caps[sr->cap].gen == sr->cap_gen &&
		              cs->caps[sr->cap].htype == HOLD_STURDY &&
		              cs->caps[sr->cap].holder == s,
		      "sturdy's cap does not point back (I2, I4)");
		AUDIT(obj_id(cs, cs->caps[sr->cap].obj) == sr->oid,
		      "sturdy names another object");
		AUDIT(bank_live(cs, sr->bank),
		      "sturdy charged to no bank (C3)");
	}
	for (f = cs->sturdy_free; f != CAP_NONE; f = cs->sturdy[f].next) {
		AUDIT(f < cs->cfg.max_sturdy && nfree < cs->cfg.max_sturdy,
		      "sturdy free list broken");
		AUDIT(cs->sturdy[f].state == ST_FREE,
		      "used sturdy on free list");
		nfree++;
	}
	for (f = cs->tomb_head; f != CAP_NONE; f = cs->sturdy[f].next) {
		AUDIT(f < cs->cfg.max_sturdy && ntomb < cs->cfg.max_sturdy,
		      "tombstone queue broken");
		AUDIT(cs->sturdy[f].state == ST_TOMB, "non-tombstone in queue");
		AUDIT(cs->sturdy[f].cap == CAP_NONE,
		      "tombstone holds a cap (I4)");
		AUDIT(cs->sturdy[f].next != CAP_NONE || f == cs->tomb_tail,
		      "tombstone queue tail wrong");
		ntomb++;
	}
	AUDIT(ntomb == tombs, "tombstone not queued");
	AUDIT(nfree + tombs + n->sturdy_used == cs->cfg.max_sturdy,
	      "sturdy record lost");
	return 0;
}

/* used == own charges + children's used, on every bank (C3). */
static int audit_banks(const struct cap_space *cs, const char **why)
{
	uint64_t nslots =
	        (uint64_t) cs->cfg.max_clists * cs->cfg.slots_per_clist;
	uint32_t b, i;

	for (b = 0; b < cs->cfg.max_objects; b++) {
		const struct bank_rec *br = &cs->banks[b];
		uint64_t bytes, objects;
		uint32_t children = 0, k;

		if (!bank_live(cs, b))
			continue;
		bytes = br->ext_bytes;
		objects = br->ext_objects;
		for (i = 0; i < cs->cfg.max_objects; i++)
			if (obj_live(cs, i) && cs->objs[i].payer == b) {
				bytes += cs->objs[i].charge;
				objects++;
			}
		for (i = 0; i < nslots; i++)
			if (cs->slots[i].cap != CAP_NONE &&
			    cs->slots[i].bank == b)
				bytes += CAP_CHARGE_SLOT;
		for (i = 0; i < cs->cfg.max_sturdy; i++)
			if (cs->sturdy[i].state == ST_LIVE &&
			    cs->sturdy[i].bank == b)
				bytes += CAP_CHARGE_STURDY;
		for (k = br->first_child; k != CAP_NONE;
		     k = cs->banks[k].next) {
			AUDIT(bank_live(cs, k) && cs->objs[k].payer == b &&
			              children < cs->cfg.max_objects,
			      "sub-bank list broken");
			AUDIT(cs->banks[k].prev != CAP_NONE ||
			              br->first_child == k,
			      "sub-bank list broken");
			bytes += cs->banks[k].used_bytes;
			objects += cs->banks[k].used_objects;
			children++;
		}
		AUDIT(children == br->children, "sub-bank count wrong");
		AUDIT(bytes == br->used_bytes, "bank bytes not a recount (C3)");
		AUDIT(objects == br->used_objects,
		      "bank objects not a recount (C3)");
		AUDIT(!br->limit_bytes || br->used_bytes <= br->limit_bytes,
		      "bank over its byte limit");
		AUDIT(!br->limit_objects ||
		              br->used_objects <= br->limit_objects,
		      "bank over its object limit");
	}
	return 0;
}

int cap__audit(const struct cap_space *cs, const char **why)
{
	struct cap_stats n;
	int rc;

	if (why)
		*why = NULL;
	AUDIT(cs != NULL, "no space");
	memset(&n, 0, sizeof n);
	rc = audit_objects(cs, &n, why);
	if (!rc)
		rc = audit_caps(cs, &n, why);
	if (!rc)
		rc = audit_clists(cs, &n, why);
	if (!rc)
		rc = audit_sturdy(cs, &n, why);
	if (!rc)
		rc = audit_banks(cs, why);
	if (rc)
		return rc;
	AUDIT(n.objects_used == cs->st.objects_used, "objects_used != recount");
	AUDIT(n.caps_used == cs->st.caps_used, "caps_used != recount");
	AUDIT(n.clists_used == cs->st.clists_used, "clists_used != recount");
	AUDIT(n.sturdy_used == cs->st.sturdy_used, "sturdy_used != recount");
	return 0;
}
