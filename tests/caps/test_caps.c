/* test_caps.c — unit tests of caps/: rights, capabilities and their
 * derivation trees, c-lists, sturdy references and space banks.
 *
 * Every test ends with cap__audit(), which recounts every pool and checks
 * the invariants C1-C4 of caps.h and I1-I4 of caps.c; failures that must
 * change nothing (C4) are checked by comparing a snapshot of the counters,
 * the banks and the slots before and after. The deep tests run their one
 * big operation on a thread with a small stack, so recursion would crash.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "caps.h"
#include "caps_internal.h"

#define OK(x) assert_int_equal((x), 0)
#define ERR(x, e) assert_int_equal((x), -(e))

#define AUDIT_OK(cs)                                                           \
	do {                                                                   \
		const char *why_ = NULL;                                       \
		if (cap__audit((cs), &why_) != 0)                              \
			fail_msg("audit: %s", why_ ? why_ : "?");              \
	} while (0)

#define NODE 7u
#define SLOT CAP_CHARGE_SLOT
#define OBJ CAP_CHARGE_OBJECT
#define STURDY CAP_CHARGE_STURDY

/* ---- on_destroy log ---- */

struct dlog {
	unsigned n, n_data, n_process, n_bank;
	uint64_t oids[64];
	void *privs[64];
	/* Optional probe: cap_check on a slot from inside the callback, to
	 * see that capabilities are revoked before the owner is told. */
	const struct cap_space *cs;
	bool probe;
	uint32_t probe_clist, probe_slot;
	int probe_rc;
};

static void on_destroy(void *ctx, uint64_t oid, enum cap_kind kind, void *priv)
{
	struct dlog *log = ctx;

	if (log->n < 64) {
		log->oids[log->n] = oid;
		log->privs[log->n] = priv;
	}
	log->n++;
	if (kind == CAP_KIND_DATA)
		log->n_data++;
	else if (kind == CAP_KIND_PROCESS)
		log->n_process++;
	else if (kind == CAP_KIND_BANK)
		log->n_bank++;
	if (log->probe && log->cs)
		log->probe_rc =
		        cap_check(log->cs, log->probe_clist, log->probe_slot,
		                  CAP_KIND_NONE, 0, NULL);
}

static struct cap_config base_cfg(struct dlog *log)
{
	return (struct cap_config){
	        .node_id = NODE,
	        .max_objects = 64,
	        .max_caps = 256,
	        .max_clists = 8,
	        .slots_per_clist = 64,
	        .max_sturdy = 16,
	        .root_limit_bytes = 0,
	        .root_limit_objects = 0,
	        .on_destroy = on_destroy,
	        .ctx = log,
	};
}

static struct cap_space *space_new(const struct cap_config *cfg)
{
	struct cap_space *cs = NULL;

	OK(cap_space_init(&cs, cfg));
	assert_non_null(cs);
	if (cfg->ctx)
		((struct dlog *) cfg->ctx)->cs = cs;
	AUDIT_OK(cs);
	return cs;
}

/* ---- fixture: a space with four c-lists charged to the root bank ---- */

struct fx {
	struct dlog log;
	struct cap_config cfg;
	struct cap_space *cs;
	uint64_t root;
	uint32_t a, b, c, d;
};

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);

	if (!f)
		return -1;
	f->cfg = base_cfg(&f->log);
	f->cs = space_new(&f->cfg);
	f->root = cap_space_root_bank(f->cs);
	OK(cap_clist_create(f->cs, f->root, &f->a));
	OK(cap_clist_create(f->cs, f->root, &f->b));
	OK(cap_clist_create(f->cs, f->root, &f->c));
	OK(cap_clist_create(f->cs, f->root, &f->d));
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;

	AUDIT_OK(f->cs);
	cap_space_free(f->cs);
	free(f);
	return 0;
}

static uint64_t new_data(struct cap_space *cs, uint64_t bank, void *priv)
{
	uint64_t oid = 0;

	OK(cap_obj_create(cs, CAP_KIND_DATA, bank, 0, priv, &oid));
	assert_true(oid != 0);
	return oid;
}

static uint64_t new_bank(struct cap_space *cs, uint64_t parent, uint64_t lb,
                         uint64_t lo)
{
	uint64_t b = 0;

	OK(bank_create(cs, parent, lb, lo, &b));
	assert_true(b != 0);
	return b;
}

static uint32_t mint(struct cap_space *cs, uint32_t clist, uint64_t oid,
                     uint32_t rights)
{
	uint32_t s = CAP_NONE;

	OK(cap_mint(cs, clist, oid, rights, &s));
	return s;
}

static struct cap_info info_of(const struct cap_space *cs, uint32_t clist,
                               uint32_t slot)
{
	struct cap_info in;

	memset(&in, 0xa5, sizeof in);
	OK(cap_check(cs, clist, slot, CAP_KIND_NONE, 0, &in));
	return in;
}

static int check(const struct cap_space *cs, uint32_t clist, uint32_t slot)
{
	return cap_check(cs, clist, slot, CAP_KIND_NONE, 0, NULL);
}

static struct bank_info binfo(const struct cap_space *cs, uint64_t bank)
{
	struct bank_info bi;

	OK(bank_info(cs, bank, &bi));
	return bi;
}

static struct cap_stats stats(const struct cap_space *cs)
{
	struct cap_stats st;

	memset(&st, 0, sizeof st);
	cap_space_stats(cs, &st);
	return st;
}

/* ---- snapshots for "a failure changes nothing" (C4) ---- */

#define SNAP_BANKS 64
#define SNAP_CLISTS 8
#define SNAP_SLOTS 64

struct snap {
	struct cap_stats st;
	unsigned nb;
	uint64_t bank[SNAP_BANKS];
	int bank_rc[SNAP_BANKS];
	struct bank_info bi[SNAP_BANKS];
	int slot_rc[SNAP_CLISTS][SNAP_SLOTS];
	struct cap_info slot[SNAP_CLISTS][SNAP_SLOTS];
};

static void snap_take(const struct cap_space *cs, const uint64_t *banks,
                      unsigned nb, struct snap *s)
{
	struct cap_stats st = stats(cs);
	uint32_t l, k, nl, ns;
	unsigned i;

	memset(s, 0, sizeof *s);
	s->st = st;
	s->nb = nb < SNAP_BANKS ? nb : SNAP_BANKS;
	for (i = 0; i < s->nb; i++) {
		s->bank[i] = banks[i];
		s->bank_rc[i] = bank_info(cs, banks[i], &s->bi[i]);
	}
	nl = st.clists_max < SNAP_CLISTS ? st.clists_max : SNAP_CLISTS;
	for (l = 0; l < nl; l++) {
		ns = SNAP_SLOTS;
		for (k = 0; k < ns; k++)
			s->slot_rc[l][k] = cap_check(cs, l, k, CAP_KIND_NONE, 0,
			                             &s->slot[l][k]);
	}
}

static void snap_same(const struct cap_space *cs, const struct snap *a)
{
	struct snap *b = calloc(1, sizeof *b);
	uint32_t l, k;
	unsigned i;

	assert_non_null(b);
	snap_take(cs, a->bank, a->nb, b);
	assert_int_equal(a->st.objects_used, b->st.objects_used);
	assert_int_equal(a->st.caps_used, b->st.caps_used);
	assert_int_equal(a->st.clists_used, b->st.clists_used);
	assert_int_equal(a->st.sturdy_used, b->st.sturdy_used);
	assert_int_equal(a->st.revocations, b->st.revocations);
	for (i = 0; i < a->nb; i++) {
		assert_int_equal(a->bank_rc[i], b->bank_rc[i]);
		if (a->bank_rc[i])
			continue;
		assert_int_equal(a->bi[i].oid, b->bi[i].oid);
		assert_int_equal(a->bi[i].parent, b->bi[i].parent);
		assert_int_equal(a->bi[i].limit_bytes, b->bi[i].limit_bytes);
		assert_int_equal(a->bi[i].limit_objects,
		                 b->bi[i].limit_objects);
		assert_int_equal(a->bi[i].used_bytes, b->bi[i].used_bytes);
		assert_int_equal(a->bi[i].used_objects, b->bi[i].used_objects);
		assert_int_equal(a->bi[i].children, b->bi[i].children);
	}
	for (l = 0; l < SNAP_CLISTS; l++)
		for (k = 0; k < SNAP_SLOTS; k++) {
			assert_int_equal(a->slot_rc[l][k], b->slot_rc[l][k]);
			if (a->slot_rc[l][k])
				continue;
			assert_int_equal(a->slot[l][k].oid, b->slot[l][k].oid);
			assert_int_equal(a->slot[l][k].rights,
			                 b->slot[l][k].rights);
			assert_int_equal(a->slot[l][k].depth,
			                 b->slot[l][k].depth);
		}
	free(b);
}

/* ---- a thread with a small stack: recursion over 10000 levels dies ---- */

#define SMALL_STACK (256u * 1024u)

struct tramp {
	void (*fn)(void *);
	void *arg;
};

static void *tramp_run(void *p)
{
	struct tramp *t = p;

	t->fn(t->arg);
	return NULL;
}

/* No cmocka asserts inside fn: they longjmp, which must not cross
 * threads. fn leaves its results in arg. */
static void on_small_stack(void (*fn)(void *), void *arg)
{
	struct tramp t = {fn, arg};
	pthread_attr_t at;
	pthread_t th;

	OK(pthread_attr_init(&at));
	OK(pthread_attr_setstacksize(&at, SMALL_STACK));
	OK(pthread_create(&th, &at, tramp_run, &t));
	OK(pthread_join(th, NULL));
	pthread_attr_destroy(&at);
}

/* ================= rights ================= */

static void test_rights_parse_ok(void **state)
{
	static const struct {
		const char *s;
		uint32_t r;
	} ok[] = {
	        {"read", CAP_R_READ},
	        {"write", CAP_R_WRITE},
	        {"lock", CAP_R_LOCK},
	        {"map", CAP_R_MAP},
	        {"grant", CAP_R_GRANT},
	        {"read,write", CAP_R_READ | CAP_R_WRITE},
	        {"grant,read,map", CAP_R_GRANT | CAP_R_READ | CAP_R_MAP},
	        {"map,lock,write", CAP_R_MAP | CAP_R_LOCK | CAP_R_WRITE},
	        {"read,write,lock,map,grant", CAP_R_ALL},
	        {"grant,map,lock,write,read", CAP_R_ALL},
	        {"all", CAP_R_ALL},
	        {"none", 0},
	};
	size_t i;

	(void) state;
	for (i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		uint32_t r = 0xdead;

		OK(cap_rights_parse(ok[i].s, &r));
		assert_int_equal(r, ok[i].r);
	}
}

static void test_rights_parse_bad(void **state)
{
	static const char *const bad[] = {
	        "",
	        ",",
	        ",,",
	        "read,",
	        ",read",
	        "read,,write",
	        "reed",
	        "READ",
	        "Read",
	        "read ",
	        " read",
	        "read, write",
	        "read ,write",
	        "all,read",
	        "read,all",
	        "read,read",
	        "map,grant,map",
	        "none,read",
	        "readwrite",
	        "read;write",
	        "rea",
	        "reads",
	        "all,",
	        "0",
	        "read\n",
	        "\tread",
	        "write,none",
	};
	size_t i;
	uint32_t r;

	(void) state;
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		r = 0xdead;
		if (cap_rights_parse(bad[i], &r) != -EINVAL)
			fail_msg("\"%s\" was accepted", bad[i]);
		assert_int_equal(r, 0xdead); /* C4: output untouched */
	}
	ERR(cap_rights_parse(NULL, &r), EINVAL);
	ERR(cap_rights_parse("read", NULL), EINVAL);
}

static void test_rights_format(void **state)
{
	char buf[64];

	(void) state;
	OK(cap_rights_format(0, buf, sizeof buf));
	assert_string_equal(buf, "none");
	OK(cap_rights_format(CAP_R_ALL, buf, sizeof buf));
	assert_string_equal(buf, "read,write,lock,map,grant");
	OK(cap_rights_format(CAP_R_GRANT | CAP_R_READ, buf, sizeof buf));
	assert_string_equal(buf, "read,grant");
	OK(cap_rights_format(CAP_R_MAP | CAP_R_WRITE, buf, sizeof buf));
	assert_string_equal(buf, "write,map");

	/* Exactly big enough, one short, nothing. */
	OK(cap_rights_format(CAP_R_READ, buf, 5));
	assert_string_equal(buf, "read");
	ERR(cap_rights_format(CAP_R_READ, buf, 4), ENOSPC);
	assert_string_equal(buf, "");
	OK(cap_rights_format(CAP_R_READ | CAP_R_GRANT, buf, 11));
	ERR(cap_rights_format(CAP_R_READ | CAP_R_GRANT, buf, 10), ENOSPC);
	assert_string_equal(buf, "");
	ERR(cap_rights_format(0, buf, 4), ENOSPC);
	ERR(cap_rights_format(CAP_R_READ, buf, 0), ENOSPC);
	ERR(cap_rights_format(CAP_R_READ, NULL, 8), ENOSPC);
	ERR(cap_rights_format(1u << 5, buf, sizeof buf), EINVAL);
	ERR(cap_rights_format(0xffffffffu, buf, sizeof buf), EINVAL);
}

static void test_rights_roundtrip(void **state)
{
	char buf[64];
	uint32_t r, back;

	(void) state;
	for (r = 0; r <= CAP_R_ALL; r++) {
		OK(cap_rights_format(r, buf, sizeof buf));
		back = 0xdead;
		OK(cap_rights_parse(buf, &back));
		assert_int_equal(back, r);
	}
}

static void test_kind_name(void **state)
{
	(void) state;
	assert_string_equal(cap_kind_name(CAP_KIND_NONE), "none");
	assert_string_equal(cap_kind_name(CAP_KIND_DATA), "data");
	assert_string_equal(cap_kind_name(CAP_KIND_PROCESS), "process");
	assert_string_equal(cap_kind_name(CAP_KIND_BANK), "bank");
	assert_string_equal(cap_kind_name((enum cap_kind) 42), "invalid");
}

/* ================= the space ================= */

static void test_init_bad_config(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log), bad;
	struct cap_space *cs = (struct cap_space *) &log;

	(void) state;
	ERR(cap_space_init(NULL, &cfg), EINVAL);
	ERR(cap_space_init(&cs, NULL), EINVAL);
	bad = cfg, bad.max_objects = 0;
	ERR(cap_space_init(&cs, &bad), EINVAL);
	assert_null(cs);
	bad = cfg, bad.max_caps = 0;
	ERR(cap_space_init(&cs, &bad), EINVAL);
	bad = cfg, bad.max_clists = 0;
	ERR(cap_space_init(&cs, &bad), EINVAL);
	bad = cfg, bad.slots_per_clist = 0;
	ERR(cap_space_init(&cs, &bad), EINVAL);
	bad = cfg, bad.max_sturdy = 0;
	ERR(cap_space_init(&cs, &bad), EINVAL);
	bad = cfg, bad.max_clists = 1u << 16, bad.slots_per_clist = 1u << 16;
	ERR(cap_space_init(&cs, &bad), EINVAL);
	cap_space_free(NULL); /* allowed */
}

static void test_init_stats(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct cap_stats st;
	struct bank_info bi;
	enum cap_kind kind;
	void *priv = &log;
	uint64_t root;

	(void) state;
	cfg.root_limit_bytes = 12345;
	cfg.root_limit_objects = 17;
	cs = space_new(&cfg);
	st = stats(cs);
	assert_int_equal(st.objects_used, 1); /* the root bank */
	assert_int_equal(st.objects_max, 64);
	assert_int_equal(st.caps_used, 0);
	assert_int_equal(st.caps_max, 256);
	assert_int_equal(st.clists_used, 0);
	assert_int_equal(st.clists_max, 8);
	assert_int_equal(st.sturdy_used, 0);
	assert_int_equal(st.sturdy_max, 16);
	assert_int_equal(st.revocations, 0);

	root = cap_space_root_bank(cs);
	assert_true(root != 0);
	assert_int_equal(root >> 32, 1); /* generations start at 1 */
	bi = binfo(cs, root);
	assert_int_equal(bi.oid, root);
	assert_int_equal(bi.parent, 0);
	assert_int_equal(bi.limit_bytes, 12345);
	assert_int_equal(bi.limit_objects, 17);
	assert_int_equal(bi.used_bytes, 0);
	assert_int_equal(bi.used_objects, 0);
	assert_int_equal(bi.children, 0);
	OK(cap_obj_get(cs, root, &kind, &priv));
	assert_int_equal(kind, CAP_KIND_BANK);
	assert_null(priv);
	assert_int_equal(cap_obj_bank(cs, root), 0);
	ERR(bank_info(cs, 0, &bi), ENOENT);
	ERR(cap_obj_get(cs, 0, NULL, NULL), ENOENT);
	ERR(cap_obj_get(cs, root + (1ull << 32), NULL, NULL), ENOENT);
	ERR(cap_obj_get(cs, 0xffffffffull | 1ull << 32, NULL, NULL), ENOENT);
	AUDIT_OK(cs);
	cap_space_free(cs);
}

/* ================= capabilities ================= */

static void test_mint_check(void **state)
{
	struct fx *f = *state;
	struct cap_info in;
	enum cap_kind kind;
	int tag;
	void *priv;
	uint64_t o, p;
	uint32_t s, t, u;

	o = new_data(f->cs, f->root, &tag);
	OK(cap_obj_get(f->cs, o, &kind, &priv));
	assert_int_equal(kind, CAP_KIND_DATA);
	assert_ptr_equal(priv, &tag);
	assert_int_equal(cap_obj_bank(f->cs, o), f->root);

	s = mint(f->cs, f->a, o, CAP_R_ALL);
	assert_int_equal(s, 0); /* lowest slot first */
	memset(&in, 0, sizeof in);
	OK(cap_check(f->cs, f->a, s, CAP_KIND_DATA, CAP_R_READ | CAP_R_WRITE,
	             &in));
	assert_int_equal(in.oid, o);
	assert_int_equal(in.kind, CAP_KIND_DATA);
	assert_int_equal(in.rights, CAP_R_ALL);
	assert_int_equal(in.depth, 0);
	OK(cap_check(f->cs, f->a, s, CAP_KIND_NONE, CAP_R_ALL, NULL));

	OK(cap_obj_create(f->cs, CAP_KIND_PROCESS, f->root, 0, NULL, &p));
	t = mint(f->cs, f->a, p, CAP_R_MAP);
	assert_int_equal(t, 1);
	OK(cap_check(f->cs, f->a, t, CAP_KIND_PROCESS, CAP_R_MAP, &in));
	assert_int_equal(in.kind, CAP_KIND_PROCESS);

	u = mint(f->cs, f->a, f->root, CAP_R_READ | CAP_R_WRITE);
	OK(cap_check(f->cs, f->a, u, CAP_KIND_BANK, CAP_R_WRITE, &in));
	assert_int_equal(in.oid, f->root);

	/* Each filled slot costs CAP_CHARGE_SLOT, objects theirs. */
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 2 * OBJ + 3 * SLOT);
	assert_int_equal(binfo(f->cs, f->root).used_objects, 2);
	assert_int_equal(stats(f->cs).caps_used, 3);
}

static void test_mint_bad(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t s = 99;

	assert_non_null(sn);
	snap_take(f->cs, &f->root, 1, sn);
	ERR(cap_mint(f->cs, f->a, o, 0, &s), EINVAL);
	ERR(cap_mint(f->cs, f->a, o, 1u << 5, &s), EINVAL);
	ERR(cap_mint(f->cs, f->a, o, CAP_R_ALL | 1u << 31, &s), EINVAL);
	ERR(cap_mint(f->cs, f->a, o + (1ull << 32), CAP_R_READ, &s), ENOENT);
	ERR(cap_mint(f->cs, f->a, 0, CAP_R_READ, &s), ENOENT);
	ERR(cap_mint(f->cs, 100, o, CAP_R_READ, &s), EBADF);
	ERR(cap_mint(f->cs, 5, o, CAP_R_READ, &s), EBADF); /* not created */
	ERR(cap_mint(f->cs, UINT32_MAX, o, CAP_R_READ, &s), EBADF);
	assert_int_equal(s, 99);
	snap_same(f->cs, sn);
	free(sn);
}

static void test_forged_slots(void **state)
{
	struct fx *f = *state;
	struct cap_sturdy ref;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t s = mint(f->cs, f->a, o, CAP_R_ALL), out = 77, i, l;
	static const uint32_t forged[] = {
	        5,          /* empty */
	        63,         /* last, empty */
	        64,         /* one past the end */
	        1000000,    /* huge */
	        UINT32_MAX, /* (uint32_t)-1 */
	        (uint32_t) -5,
	        0x80000000u,
	};
	static const uint32_t bad_lists[] = {4, 7, 8, 1000, UINT32_MAX};
	struct snap *sn = calloc(1, sizeof *sn);

	assert_non_null(sn);
	assert_int_equal(s, 0);
	snap_take(f->cs, &f->root, 1, sn);
	for (i = 0; i < sizeof forged / sizeof forged[0]; i++) {
		uint32_t k = forged[i];

		ERR(cap_check(f->cs, f->a, k, CAP_KIND_NONE, 0, NULL), EBADF);
		ERR(cap_restrict(f->cs, f->a, k, CAP_R_READ, &out), EBADF);
		ERR(cap_revoke(f->cs, f->a, k), EBADF);
		ERR(cap_drop(f->cs, f->a, k), EBADF);
		ERR(cap_transfer(f->cs, f->a, k, f->b, CAP_R_READ, &out),
		    EBADF);
		ERR(cap_export(f->cs, f->a, k, &ref), EBADF);
	}
	/* Forged or unused c-list numbers, with a real slot number. */
	for (i = 0; i < sizeof bad_lists / sizeof bad_lists[0]; i++) {
		l = bad_lists[i];
		ERR(cap_check(f->cs, l, s, CAP_KIND_NONE, 0, NULL), EBADF);
		ERR(cap_restrict(f->cs, l, s, CAP_R_READ, &out), EBADF);
		ERR(cap_revoke(f->cs, l, s), EBADF);
		ERR(cap_drop(f->cs, l, s), EBADF);
		ERR(cap_transfer(f->cs, l, s, f->b, CAP_R_READ, &out), EBADF);
		ERR(cap_transfer(f->cs, f->a, s, l, CAP_R_READ, &out), EBADF);
		ERR(cap_export(f->cs, l, s, &ref), EBADF);
		ERR(cap_clist_set_bank(f->cs, l, f->root), EBADF);
		cap_clist_destroy(f->cs, l); /* ignored */
	}
	assert_int_equal(out, 77);
	snap_same(f->cs, sn);

	/* A destroyed c-list is as good as forged. */
	cap_clist_destroy(f->cs, f->a);
	ERR(check(f->cs, f->a, s), EBADF);
	free(sn);
}

static void test_wrong_kind_and_rights(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL), p, x;
	uint32_t s = mint(f->cs, f->a, o, CAP_R_READ | CAP_R_GRANT), t;

	ERR(cap_check(f->cs, f->a, s, CAP_KIND_PROCESS, 0, NULL), ENOTTY);
	ERR(cap_check(f->cs, f->a, s, CAP_KIND_BANK, 0, NULL), ENOTTY);
	/* The kind is checked before the rights. */
	ERR(cap_check(f->cs, f->a, s, CAP_KIND_PROCESS, CAP_R_WRITE, NULL),
	    ENOTTY);
	ERR(cap_check(f->cs, f->a, s, CAP_KIND_DATA, CAP_R_WRITE, NULL), EPERM);
	ERR(cap_check(f->cs, f->a, s, CAP_KIND_DATA, CAP_R_READ | CAP_R_MAP,
	              NULL),
	    EPERM);
	ERR(cap_check(f->cs, f->a, s, CAP_KIND_DATA, 1u << 7, NULL), EPERM);
	OK(cap_check(f->cs, f->a, s, CAP_KIND_DATA, CAP_R_READ | CAP_R_GRANT,
	             NULL));

	OK(cap_obj_create(f->cs, CAP_KIND_PROCESS, f->root, 0, NULL, &p));
	t = mint(f->cs, f->a, p, CAP_R_MAP);
	ERR(cap_check(f->cs, f->a, t, CAP_KIND_DATA, CAP_R_MAP, NULL), ENOTTY);

	/* Objects name their bank by oid: a data oid is not a bank. */
	ERR(cap_obj_create(f->cs, CAP_KIND_DATA, o, 0, NULL, &x), ENOTTY);
	ERR(bank_create(f->cs, o, 0, 0, &x), ENOTTY);
	ERR(cap_clist_create(f->cs, o, &t), ENOTTY);
	ERR(bank_charge(f->cs, o, 1, 0), ENOTTY);
	ERR(bank_info(f->cs, o, &(struct bank_info){0}), ENOTTY);
	ERR(bank_destroy(f->cs, o), ENOTTY);
	ERR(cap_clist_set_bank(f->cs, f->a, o), ENOTTY);
	/* Banks are made by bank_create() only. */
	ERR(cap_obj_create(f->cs, CAP_KIND_BANK, f->root, 0, NULL, &x), EINVAL);
	ERR(cap_obj_create(f->cs, CAP_KIND_NONE, f->root, 0, NULL, &x), EINVAL);
	ERR(cap_obj_create(f->cs, (enum cap_kind) 9, f->root, 0, NULL, &x),
	    EINVAL);
}

static void test_restrict(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t s = mint(f->cs, f->a, o, CAP_R_ALL), t, u, v = 55;
	struct cap_info in;

	assert_non_null(sn);
	OK(cap_restrict(f->cs, f->a, s, CAP_R_READ | CAP_R_MAP, &t));
	in = info_of(f->cs, f->a, t);
	assert_int_equal(in.rights, CAP_R_READ | CAP_R_MAP);
	assert_int_equal(in.depth, 1);
	assert_int_equal(in.oid, o);
	OK(cap_restrict(f->cs, f->a, t, CAP_R_READ, &u));
	in = info_of(f->cs, f->a, u);
	assert_int_equal(in.rights, CAP_R_READ);
	assert_int_equal(in.depth, 2);
	/* An equal set is a subset too. */
	OK(cap_restrict(f->cs, f->a, u, CAP_R_READ, &v));
	assert_int_equal(info_of(f->cs, f->a, v).depth, 3);

	snap_take(f->cs, &f->root, 1, sn);
	v = 55;
	ERR(cap_restrict(f->cs, f->a, u, CAP_R_READ | CAP_R_WRITE, &v), EPERM);
	ERR(cap_restrict(f->cs, f->a, t, CAP_R_GRANT, &v), EPERM);
	ERR(cap_restrict(f->cs, f->a, t, CAP_R_ALL, &v), EPERM);
	ERR(cap_restrict(f->cs, f->a, t, 0, &v), EINVAL);
	ERR(cap_restrict(f->cs, f->a, t, 1u << 5, &v), EINVAL);
	ERR(cap_restrict(f->cs, f->a, t, CAP_R_READ | 1u << 9, &v), EINVAL);
	assert_int_equal(v, 55);
	snap_same(f->cs, sn);

	OK(cap_revoke(f->cs, f->a, t));
	ERR(cap_restrict(f->cs, f->a, t, CAP_R_READ, &v), EKEYREVOKED);
	ERR(cap_restrict(f->cs, f->a, u, CAP_R_READ, &v), EKEYREVOKED);
	OK(check(f->cs, f->a, s));
	free(sn);
}

/* a0 ─┬─ a1 (restrict, sibling branch)
 *     └─ b0 (transfer to B) ─┬─ b1 (restrict)
 *                            ├─ c0 (transfer to C)
 *                            └─ sturdy ── d0 (import into D) ── d1
 * Revoking b0 kills b0, b1, c0, the sturdy cap, d0, d1 and nothing else. */
static void test_revoke_across_clists(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0, a1, b0, b1, c0, d0, d1, x;
	struct cap_sturdy ref;
	struct cap_stats before, after;

	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_restrict(f->cs, f->a, a0, CAP_R_READ | CAP_R_GRANT, &a1));
	OK(cap_transfer(f->cs, f->a, a0, f->b,
	                CAP_R_READ | CAP_R_WRITE | CAP_R_GRANT, &b0));
	OK(cap_restrict(f->cs, f->b, b0, CAP_R_READ, &b1));
	OK(cap_transfer(f->cs, f->b, b0, f->c, CAP_R_READ | CAP_R_GRANT, &c0));
	OK(cap_export(f->cs, f->b, b0, &ref));
	OK(cap_import(f->cs, f->d, &ref, &d0));
	OK(cap_restrict(f->cs, f->d, d0, CAP_R_READ, &d1));

	assert_int_equal(info_of(f->cs, f->b, b0).depth, 1);
	assert_int_equal(info_of(f->cs, f->c, c0).depth, 2);
	assert_int_equal(info_of(f->cs, f->d, d0).depth, 3);
	assert_int_equal(info_of(f->cs, f->d, d0).rights,
	                 CAP_R_READ | CAP_R_WRITE | CAP_R_GRANT);
	assert_int_equal(info_of(f->cs, f->d, d1).depth, 4);
	AUDIT_OK(f->cs);

	before = stats(f->cs);
	assert_int_equal(before.caps_used, 8);
	assert_int_equal(before.sturdy_used, 1);
	OK(cap_revoke(f->cs, f->b, b0));
	after = stats(f->cs);
	assert_int_equal(after.revocations - before.revocations, 6);
	assert_int_equal(after.caps_used, 2);
	assert_int_equal(after.sturdy_used, 0);

	ERR(check(f->cs, f->b, b0), EKEYREVOKED);
	ERR(check(f->cs, f->b, b1), EKEYREVOKED);
	ERR(check(f->cs, f->c, c0), EKEYREVOKED);
	ERR(check(f->cs, f->d, d0), EKEYREVOKED);
	ERR(check(f->cs, f->d, d1), EKEYREVOKED);
	ERR(cap_import(f->cs, f->a, &ref, &x), EKEYREVOKED);
	ERR(cap_revoke(f->cs, f->b, b0), EKEYREVOKED);
	ERR(cap_transfer(f->cs, f->b, b0, f->a, CAP_R_READ, &x), EKEYREVOKED);
	ERR(cap_export(f->cs, f->b, b0, &ref), EKEYREVOKED);
	OK(check(f->cs, f->a, a0));
	OK(check(f->cs, f->a, a1));
	assert_int_equal(info_of(f->cs, f->a, a1).depth, 1);
	/* The revoked slots are still filled and charged until dropped:
	 * seven slots, no sturdy. */
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + 7 * SLOT);
}

static void test_revoke_leaf_keeps_ancestors(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0, b0, c0, b1;
	uint64_t rev = stats(f->cs).revocations;

	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_transfer(f->cs, f->a, a0, f->b, CAP_R_ALL, &b0));
	OK(cap_transfer(f->cs, f->b, b0, f->c, CAP_R_READ, &c0));
	OK(cap_restrict(f->cs, f->b, b0, CAP_R_WRITE, &b1));
	OK(cap_revoke(f->cs, f->c, c0));
	assert_int_equal(stats(f->cs).revocations, rev + 1);
	ERR(check(f->cs, f->c, c0), EKEYREVOKED);
	OK(check(f->cs, f->a, a0));
	OK(check(f->cs, f->b, b0));
	OK(check(f->cs, f->b, b1)); /* sibling */
	/* Revoking the root takes the remaining two with it. */
	OK(cap_revoke(f->cs, f->a, a0));
	assert_int_equal(stats(f->cs).revocations, rev + 4);
	ERR(check(f->cs, f->b, b1), EKEYREVOKED);
	assert_int_equal(stats(f->cs).caps_used, 0);
}

static void test_revoked_slot_until_dropped(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t s = mint(f->cs, f->a, o, CAP_R_ALL), t;

	OK(cap_revoke(f->cs, f->a, s));
	ERR(check(f->cs, f->a, s), EKEYREVOKED);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + SLOT);
	/* The next mint does not land in the revoked slot. */
	t = mint(f->cs, f->a, o, CAP_R_READ);
	assert_int_equal(t, 1);
	ERR(check(f->cs, f->a, s), EKEYREVOKED);
	OK(cap_drop(f->cs, f->a, s));
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + SLOT);
	ERR(check(f->cs, f->a, s), EBADF);
	ERR(cap_drop(f->cs, f->a, s), EBADF);
	assert_int_equal(mint(f->cs, f->a, o, CAP_R_READ), s);
	OK(check(f->cs, f->a, t));
}

static void test_drop_reparents(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0, b0, c0, c1;
	uint64_t rev = stats(f->cs).revocations;

	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_transfer(f->cs, f->a, a0, f->b, CAP_R_READ | CAP_R_GRANT, &b0));
	OK(cap_transfer(f->cs, f->b, b0, f->c, CAP_R_READ | CAP_R_GRANT, &c0));
	OK(cap_restrict(f->cs, f->c, c0, CAP_R_READ, &c1));
	assert_int_equal(info_of(f->cs, f->c, c1).depth, 3);

	OK(cap_drop(f->cs, f->b, b0));
	ERR(check(f->cs, f->b, b0), EBADF);
	assert_int_equal(stats(f->cs).revocations, rev);
	OK(check(f->cs, f->c, c0));
	assert_int_equal(info_of(f->cs, f->c, c0).depth, 1);
	assert_int_equal(info_of(f->cs, f->c, c1).depth, 2);
	AUDIT_OK(f->cs);
	/* c0 now hangs below a0: revoking a0 still reaches it (C2). */
	OK(cap_revoke(f->cs, f->a, a0));
	ERR(check(f->cs, f->c, c0), EKEYREVOKED);
	ERR(check(f->cs, f->c, c1), EKEYREVOKED);
	assert_int_equal(stats(f->cs).revocations, rev + 3);
}

static void test_drop_root_makes_roots(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0, b0, b1, c0;

	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_transfer(f->cs, f->a, a0, f->b, CAP_R_ALL, &b0));
	OK(cap_transfer(f->cs, f->a, a0, f->b, CAP_R_READ, &b1));
	OK(cap_transfer(f->cs, f->b, b0, f->c, CAP_R_READ, &c0));
	OK(cap_drop(f->cs, f->a, a0));
	assert_int_equal(info_of(f->cs, f->b, b0).depth, 0);
	assert_int_equal(info_of(f->cs, f->b, b1).depth, 0);
	assert_int_equal(info_of(f->cs, f->c, c0).depth, 1);
	AUDIT_OK(f->cs);
	OK(cap_revoke(f->cs, f->b, b0));
	ERR(check(f->cs, f->c, c0), EKEYREVOKED);
	OK(check(f->cs, f->b, b1));
	/* Destroying the object still finds the new root. */
	OK(cap_obj_destroy(f->cs, o));
	ERR(check(f->cs, f->b, b1), EKEYREVOKED);
}

static void test_clist_destroy_keeps_derived(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0, a1, b0, l;
	struct cap_stats st;

	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_restrict(f->cs, f->a, a0, CAP_R_READ, &a1));
	OK(cap_revoke(f->cs, f->a, a1)); /* a revoked slot goes too */
	OK(cap_transfer(f->cs, f->a, a0, f->b, CAP_R_READ, &b0));
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + 3 * SLOT);
	st = stats(f->cs);
	cap_clist_destroy(f->cs, f->a);
	assert_int_equal(stats(f->cs).clists_used, st.clists_used - 1);
	assert_int_equal(stats(f->cs).caps_used, st.caps_used - 1);
	assert_int_equal(stats(f->cs).revocations, st.revocations);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + SLOT);
	OK(check(f->cs, f->b, b0));
	assert_int_equal(info_of(f->cs, f->b, b0).depth, 0);
	AUDIT_OK(f->cs);
	/* The c-list number comes back empty. */
	OK(cap_clist_create(f->cs, f->root, &l));
	assert_int_equal(l, f->a);
	ERR(check(f->cs, l, a0), EBADF);
	assert_int_equal(mint(f->cs, l, o, CAP_R_READ), 0);
}

static void test_transfer(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t g = mint(f->cs, f->a, o, CAP_R_ALL);
	uint32_t ng = mint(f->cs, f->a, o, CAP_R_ALL & ~CAP_R_GRANT);
	uint32_t x = 42, t;
	struct cap_info in;

	assert_non_null(sn);
	snap_take(f->cs, &f->root, 1, sn);
	ERR(cap_transfer(f->cs, f->a, ng, f->b, CAP_R_READ, &x), EPERM);
	ERR(cap_transfer(f->cs, f->a, g, f->b, 0, &x), EINVAL);
	ERR(cap_transfer(f->cs, f->a, g, f->b, 1u << 6, &x), EINVAL);
	ERR(cap_transfer(f->cs, f->a, g, 6, CAP_R_READ, &x), EBADF);
	assert_int_equal(x, 42);
	snap_same(f->cs, sn);

	OK(cap_transfer(f->cs, f->a, g, f->b, CAP_R_READ | CAP_R_GRANT, &t));
	in = info_of(f->cs, f->b, t);
	assert_int_equal(in.rights, CAP_R_READ | CAP_R_GRANT);
	assert_int_equal(in.depth, 1);
	assert_int_equal(in.oid, o);
	ERR(cap_transfer(f->cs, f->b, t, f->c, CAP_R_READ | CAP_R_WRITE, &x),
	    EPERM);
	/* Into the same c-list is allowed: a copy with fewer rights. */
	OK(cap_transfer(f->cs, f->b, t, f->b, CAP_R_READ, &x));
	assert_int_equal(info_of(f->cs, f->b, x).depth, 2);
	/* Without grant the copy cannot travel on. */
	ERR(cap_transfer(f->cs, f->b, x, f->c, CAP_R_READ, &t), EPERM);
	free(sn);
}

/* ================= sturdy references ================= */

static void test_sturdy_roundtrip(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0 = mint(f->cs, f->a, o, CAP_R_ALL), b0, b1, ng;
	struct cap_sturdy ref, back;
	struct cap_info in;
	char text[CAP_STURDY_TEXT_MAX], prefix[64];
	size_t i;

	OK(cap_export(f->cs, f->a, a0, &ref));
	assert_int_equal(ref.node, NODE);
	assert_int_equal(ref.oid, o);
	assert_true(ref.sid != 0);
	assert_int_equal(stats(f->cs).sturdy_used, 1);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + SLOT + STURDY);

	OK(cap_sturdy_format(&ref, text, sizeof text));
	assert_int_equal(strlen(text), 6 + 1 + 1 + 16 + 1 + 16 + 1 + 32);
	snprintf(prefix, sizeof prefix, "cdsm1:%u:%016llx:%016llx:", NODE,
	         (unsigned long long) o, (unsigned long long) ref.sid);
	assert_memory_equal(text, prefix, strlen(prefix));
	for (i = strlen(prefix); text[i]; i++)
		assert_true((text[i] >= '0' && text[i] <= '9') ||
		            (text[i] >= 'a' && text[i] <= 'f'));
	memset(&back, 0xee, sizeof back);
	OK(cap_sturdy_parse(text, &back));
	assert_int_equal(back.node, ref.node);
	assert_int_equal(back.oid, ref.oid);
	assert_int_equal(back.sid, ref.sid);
	assert_memory_equal(back.secret, ref.secret, CAP_SECRET_LEN);

	OK(cap_import(f->cs, f->b, &back, &b0));
	in = info_of(f->cs, f->b, b0);
	assert_int_equal(in.oid, o);
	assert_int_equal(in.rights, CAP_R_ALL);
	assert_int_equal(in.depth, 2); /* a0 -> sturdy's cap -> b0 */
	OK(cap_import(f->cs, f->b, &ref, &b1));
	assert_true(b1 != b0);
	/* Two exports of one capability get different secrets. */
	{
		struct cap_sturdy ref2;

		OK(cap_export(f->cs, f->a, a0, &ref2));
		assert_true(ref2.sid != ref.sid);
		assert_true(memcmp(ref2.secret, ref.secret, CAP_SECRET_LEN));
	}
	/* Export needs grant. */
	ng = mint(f->cs, f->a, o, CAP_R_READ);
	ERR(cap_export(f->cs, f->a, ng, &ref), EPERM);
	ERR(cap_import(f->cs, 100, &back, &b1), EBADF);
	AUDIT_OK(f->cs);
}

/* A reference with fewer rights than its slot, and without grant: usable,
 * not passed on; wider than the slot is EPERM and changes nothing. */
static void test_export_rights(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0 = mint(f->cs, f->a, o, CAP_R_READ | CAP_R_WRITE | CAP_R_GRANT);
	uint32_t b0, b1;
	struct cap_sturdy ref, ref2;
	struct cap_info in;
	struct cap_stats before;

	OK(cap_export_rights(f->cs, f->a, a0, CAP_R_READ, &ref));
	OK(cap_import(f->cs, f->b, &ref, &b0));
	in = info_of(f->cs, f->b, b0);
	assert_int_equal(in.rights, CAP_R_READ);
	ERR(cap_check(f->cs, f->b, b0, CAP_KIND_DATA, CAP_R_WRITE, NULL), EPERM);
	/* The holder cannot make references or transfers of its own. */
	ERR(cap_export(f->cs, f->b, b0, &ref2), EPERM);
	ERR(cap_transfer(f->cs, f->b, b0, f->c, CAP_R_READ, &b1), EPERM);
	before = stats(f->cs);
	ERR(cap_export_rights(f->cs, f->a, a0, CAP_R_READ | CAP_R_LOCK, &ref2),
	    EPERM);
	ERR(cap_export_rights(f->cs, f->a, a0, 0, &ref2), EINVAL);
	assert_int_equal(stats(f->cs).sturdy_used, before.sturdy_used);
	assert_int_equal(stats(f->cs).caps_used, before.caps_used);
	/* Revoking the slot it came from revokes the reference's import. */
	OK(cap_revoke(f->cs, f->a, a0));
	ERR(cap_check(f->cs, f->b, b0, CAP_KIND_DATA, CAP_R_READ, NULL),
	    EKEYREVOKED);
	ERR(cap_import(f->cs, f->c, &ref, &b1), EKEYREVOKED);
	AUDIT_OK(f->cs);
}

static void test_sturdy_wrong_secret(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0 = mint(f->cs, f->a, o, CAP_R_ALL), x = 9;
	struct cap_sturdy ref, bad;
	int i;

	assert_non_null(sn);
	OK(cap_export(f->cs, f->a, a0, &ref));
	snap_take(f->cs, &f->root, 1, sn);
	for (i = 0; i < CAP_SECRET_LEN * 8; i += 13) {
		bad = ref;
		bad.secret[i / 8] ^= (uint8_t) (1u << (i % 8));
		ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
		ERR(cap_revoke_sturdy(f->cs, &bad), EACCES);
	}
	bad = ref, bad.sid = ref.sid + (1ull << 32); /* wrong generation */
	ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
	bad = ref, bad.sid = (ref.sid & ~0xffffffffull) | 15; /* other record */
	ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
	bad = ref, bad.sid = (ref.sid & ~0xffffffffull) | 1000000;
	ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
	bad = ref, bad.sid = 0;
	ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
	bad = ref, bad.node = NODE + 1;
	ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
	bad = ref, bad.oid = ref.oid + 1;
	ERR(cap_import(f->cs, f->b, &bad, &x), EACCES);
	ERR(cap_revoke_sturdy(f->cs, &bad), EACCES);
	assert_int_equal(x, 9);
	snap_same(f->cs, sn);
	OK(cap_import(f->cs, f->b, &ref, &x));
	free(sn);
}

static void test_sturdy_revoke(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint32_t a0 = mint(f->cs, f->a, o, CAP_R_ALL), b0, b1, c0, x;
	struct cap_sturdy ref, bad;
	uint64_t rev;

	OK(cap_export(f->cs, f->a, a0, &ref));
	OK(cap_import(f->cs, f->b, &ref, &b0));
	OK(cap_restrict(f->cs, f->b, b0, CAP_R_READ, &b1));
	OK(cap_transfer(f->cs, f->b, b0, f->c, CAP_R_READ, &c0));
	rev = stats(f->cs).revocations;
	OK(cap_revoke_sturdy(f->cs, &ref));
	assert_int_equal(stats(f->cs).revocations, rev + 4);
	assert_int_equal(stats(f->cs).sturdy_used, 0);
	ERR(check(f->cs, f->b, b0), EKEYREVOKED);
	ERR(check(f->cs, f->b, b1), EKEYREVOKED);
	ERR(check(f->cs, f->c, c0), EKEYREVOKED);
	OK(check(f->cs, f->a, a0));
	ERR(cap_import(f->cs, f->d, &ref, &x), EKEYREVOKED);
	ERR(cap_revoke_sturdy(f->cs, &ref), EKEYREVOKED);
	/* A tombstone only admits it existed to the right secret. */
	bad = ref, bad.secret[3] ^= 0x40;
	ERR(cap_import(f->cs, f->d, &bad, &x), EACCES);
	ERR(cap_revoke_sturdy(f->cs, &bad), EACCES);
	/* Tombstones are charged to nobody: 4 slots and the object. */
	assert_int_equal(binfo(f->cs, f->root).used_bytes, OBJ + 4 * SLOT);
}

static void test_sturdy_revoked_by_ancestor(void **state)
{
	struct fx *f = *state;
	uint64_t o = new_data(f->cs, f->root, NULL);
	uint64_t p = new_data(f->cs, f->root, NULL);
	uint32_t a0, a1, p0, x;
	struct cap_sturdy r1, r2, r3;

	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_restrict(f->cs, f->a, a0, CAP_R_READ | CAP_R_GRANT, &a1));
	OK(cap_export(f->cs, f->a, a1, &r1));
	OK(cap_revoke(f->cs, f->a, a0));
	ERR(cap_import(f->cs, f->b, &r1, &x), EKEYREVOKED);
	assert_int_equal(stats(f->cs).sturdy_used, 0);

	/* Object destruction revokes it too. */
	p0 = mint(f->cs, f->a, p, CAP_R_ALL);
	OK(cap_export(f->cs, f->a, p0, &r2));
	OK(cap_obj_destroy(f->cs, p));
	ERR(cap_import(f->cs, f->b, &r2, &x), EKEYREVOKED);

	/* Dropping the exporter's slot does not: the reference lives on. */
	o = new_data(f->cs, f->root, NULL);
	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_export(f->cs, f->a, a0, &r3));
	OK(cap_drop(f->cs, f->a, a0));
	OK(cap_import(f->cs, f->b, &r3, &x));
	assert_int_equal(info_of(f->cs, f->b, x).depth, 1);
	assert_int_equal(binfo(f->cs, f->root).used_bytes,
	                 2 * OBJ + 4 * SLOT + STURDY);
}

static void test_sturdy_tombstone_reuse(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct cap_sturdy r1, r2, r3, r4, r5, r6;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t root, o;
	uint32_t a, s, x;

	(void) state;
	assert_non_null(sn);
	cfg.max_sturdy = 3;
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);
	OK(cap_clist_create(cs, root, &a));
	o = new_data(cs, root, NULL);
	s = mint(cs, a, o, CAP_R_ALL);

	OK(cap_export(cs, a, s, &r1));
	OK(cap_revoke_sturdy(cs, &r1));
	/* A free record is taken before the tombstone. */
	OK(cap_export(cs, a, s, &r2));
	ERR(cap_import(cs, a, &r1, &x), EKEYREVOKED);
	OK(cap_export(cs, a, s, &r3));
	ERR(cap_import(cs, a, &r1, &x), EKEYREVOKED);
	/* No free record left: the tombstone is reused, r1 names nothing. */
	OK(cap_export(cs, a, s, &r4));
	assert_int_equal(r4.sid & 0xffffffffu, r1.sid & 0xffffffffu);
	assert_true(r4.sid != r1.sid);
	ERR(cap_import(cs, a, &r1, &x), EACCES);
	ERR(cap_revoke_sturdy(cs, &r1), EACCES);
	OK(cap_import(cs, a, &r4, &x));
	assert_int_equal(stats(cs).sturdy_used, 3);

	/* All live: the pool is full and the failure changes nothing. */
	snap_take(cs, &root, 1, sn);
	ERR(cap_export(cs, a, s, &r5), ENOSPC);
	snap_same(cs, sn);

	/* Oldest tombstone first. */
	OK(cap_revoke_sturdy(cs, &r2));
	OK(cap_revoke_sturdy(cs, &r3));
	OK(cap_export(cs, a, s, &r6));
	assert_int_equal(r6.sid & 0xffffffffu, r2.sid & 0xffffffffu);
	ERR(cap_import(cs, a, &r2, &x), EACCES);
	ERR(cap_import(cs, a, &r3, &x), EKEYREVOKED);
	OK(cap_import(cs, a, &r4, &x));
	OK(cap_import(cs, a, &r6, &x));
	AUDIT_OK(cs);
	cap_space_free(cs);
	free(sn);
}

static void test_sturdy_parse_bad(void **state)
{
	static const char O[] = "0000000100000002";
	static const char S[] = "0000000300000004";
	static const char K[] = "00112233445566778899aabbccddeeff";
	char good[CAP_STURDY_TEXT_MAX], t[256];
	struct cap_sturdy r, keep;
	const char *bad[64];
	char store[64][160];
	int n = 0, i;

	(void) state;
	snprintf(good, sizeof good, "cdsm1:7:%s:%s:%s", O, S, K);
	OK(cap_sturdy_parse(good, &r));
	assert_int_equal(r.node, 7);
	assert_int_equal(r.oid, 0x0000000100000002ull);
	assert_int_equal(r.sid, 0x0000000300000004ull);
	assert_int_equal(r.secret[0], 0x00);
	assert_int_equal(r.secret[15], 0xff);
	OK(cap_sturdy_format(&r, t, sizeof t));
	assert_string_equal(t, good);

	snprintf(t, sizeof t, "cdsm1:0:%s:%s:%s", O, S, K);
	OK(cap_sturdy_parse(t, &r));
	assert_int_equal(r.node, 0);
	snprintf(t, sizeof t, "cdsm1:4294967295:%s:%s:%s", O, S, K);
	OK(cap_sturdy_parse(t, &r));
	assert_int_equal(r.node, UINT32_MAX);

#define BAD(...)                                                               \
	do {                                                                   \
		snprintf(store[n], sizeof store[n], __VA_ARGS__);              \
		bad[n] = store[n];                                             \
		n++;                                                           \
	} while (0)
	BAD("%s", "");
	BAD("%s", "cdsm1");
	BAD("%s", "cdsm1:");
	BAD("cdsm2:7:%s:%s:%s", O, S, K);
	BAD("CDSM1:7:%s:%s:%s", O, S, K);
	BAD("cdsm:7:%s:%s:%s", O, S, K);
	BAD(" cdsm1:7:%s:%s:%s", O, S, K);
	BAD("cdsm1::%s:%s:%s", O, S, K);
	BAD("cdsm1:07:%s:%s:%s", O, S, K);
	BAD("cdsm1:-7:%s:%s:%s", O, S, K);
	BAD("cdsm1:+7:%s:%s:%s", O, S, K);
	BAD("cdsm1: 7:%s:%s:%s", O, S, K);
	BAD("cdsm1:0x7:%s:%s:%s", O, S, K);
	BAD("cdsm1:4294967296:%s:%s:%s", O, S, K);
	BAD("cdsm1:99999999999:%s:%s:%s", O, S, K);
	BAD("cdsm1:7:%.15s:%s:%s", O, S, K);
	BAD("cdsm1:7:%s0:%s:%s", O, S, K);
	BAD("cdsm1:7:000000010000000A:%s:%s", S, K);
	BAD("cdsm1:7:000000010000000g:%s:%s", S, K);
	BAD("cdsm1:7:0000000000000000:%s:%s", S, K); /* oid 0 */
	BAD("cdsm1:7:%s:%.15s:%s", O, S, K);
	BAD("cdsm1:7:%s:%s1:%s", O, S, K);
	BAD("cdsm1:7:%s:0000000300000004X:%s", O, K);
	BAD("cdsm1:7:%s:0000000000000000:%s", O, K); /* sid 0 */
	BAD("cdsm1:7:%s:%s:%.31s", O, S, K);
	BAD("cdsm1:7:%s:%s:%s0", O, S, K);
	BAD("cdsm1:7:%s:%s:00112233445566778899AABBCCDDEEFF", O, S);
	BAD("cdsm1:7:%s:%s:00112233445566778899aabbccddeefz", O, S);
	BAD("cdsm1:7:%s:%s:%s:", O, S, K);
	BAD("cdsm1:7:%s:%s:%s:extra", O, S, K);
	BAD("cdsm1:7:%s:%s:%s\n", O, S, K);
	BAD("cdsm1:7:%s:%s:%s ", O, S, K);
	BAD("cdsm1:7:%s:%s", O, S);
	BAD("cdsm1:7:%s:%s:", O, S);
	BAD("cdsm1:7:%s::%s", O, K);
	BAD("cdsm1:7:%s", O);
	BAD("cdsm1:7:%s;%s;%s", O, S, K);
	BAD("cdsm1:7:%s:%s:%s", S, O, "0011");
#undef BAD
	memset(&keep, 0x5c, sizeof keep);
	for (i = 0; i < n; i++) {
		memcpy(&r, &keep, sizeof r);
		if (cap_sturdy_parse(bad[i], &r) != -EINVAL)
			fail_msg("accepted \"%s\"", bad[i]);
		assert_memory_equal(&r, &keep, sizeof r); /* C4 */
	}
	ERR(cap_sturdy_parse(NULL, &r), EINVAL);
	ERR(cap_sturdy_parse(good, NULL), EINVAL);
}

static void test_sturdy_format_small(void **state)
{
	struct cap_sturdy ref = {
	        .node = UINT32_MAX,
	        .oid = UINT64_MAX,
	        .sid = UINT64_MAX,
	};
	char buf[CAP_STURDY_TEXT_MAX];
	size_t n, i;

	(void) state;
	memset(ref.secret, 0xff, sizeof ref.secret);
	OK(cap_sturdy_format(&ref, buf, sizeof buf)); /* the longest fits */
	n = strlen(buf);
	assert_true(n < CAP_STURDY_TEXT_MAX);
	OK(cap_sturdy_format(&ref, buf, n + 1));
	memset(buf, 'x', sizeof buf);
	ERR(cap_sturdy_format(&ref, buf, n), ENOSPC);
	for (i = 0; i < n; i++) /* no half a secret left behind */
		assert_int_equal(buf[i], 0);
	ERR(cap_sturdy_format(&ref, buf, 0), ENOSPC);
	ERR(cap_sturdy_format(&ref, NULL, 10), ENOSPC);
}

/* ================= banks ================= */

static void test_bank_hierarchy_charges(void **state)
{
	struct fx *f = *state;
	uint64_t b1, b2, o;
	uint32_t l, s;
	struct bank_info bi;
	struct cap_sturdy ref;

	b1 = new_bank(f->cs, f->root, 0, 0);
	b2 = new_bank(f->cs, b1, 0, 0);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 2 * OBJ);
	assert_int_equal(binfo(f->cs, f->root).used_objects, 2);
	assert_int_equal(binfo(f->cs, b1).used_bytes, OBJ);
	assert_int_equal(binfo(f->cs, b2).used_bytes, 0);
	bi = binfo(f->cs, b2);
	assert_int_equal(bi.parent, b1);
	assert_int_equal(binfo(f->cs, b1).parent, f->root);
	assert_int_equal(binfo(f->cs, f->root).children, 1);
	assert_int_equal(binfo(f->cs, b1).children, 1);
	assert_int_equal(bi.children, 0);
	assert_int_equal(cap_obj_bank(f->cs, b2), b1);

	OK(cap_obj_create(f->cs, CAP_KIND_DATA, b2, 1000, NULL, &o));
	assert_int_equal(cap_obj_bank(f->cs, o), b2);
	assert_int_equal(binfo(f->cs, b2).used_bytes, OBJ + 1000);
	assert_int_equal(binfo(f->cs, b2).used_objects, 1);
	assert_int_equal(binfo(f->cs, b1).used_bytes, 2 * OBJ + 1000);
	assert_int_equal(binfo(f->cs, b1).used_objects, 2);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 3 * OBJ + 1000);
	assert_int_equal(binfo(f->cs, f->root).used_objects, 3);

	OK(cap_clist_create(f->cs, b2, &l));
	s = mint(f->cs, l, o, CAP_R_ALL);
	OK(cap_export(f->cs, l, s, &ref));
	assert_int_equal(binfo(f->cs, b2).used_bytes,
	                 OBJ + 1000 + SLOT + STURDY);
	assert_int_equal(binfo(f->cs, f->root).used_bytes,
	                 3 * OBJ + 1000 + SLOT + STURDY);
	AUDIT_OK(f->cs);

	/* A slot stays charged to the bank it was filled under. */
	OK(cap_clist_set_bank(f->cs, l, b1));
	OK(cap_drop(f->cs, l, s));
	assert_int_equal(binfo(f->cs, b2).used_bytes, OBJ + 1000 + STURDY);
	s = mint(f->cs, l, o, CAP_R_READ);
	assert_int_equal(binfo(f->cs, b2).used_bytes, OBJ + 1000 + STURDY);
	assert_int_equal(binfo(f->cs, b1).used_bytes,
	                 2 * OBJ + 1000 + STURDY + SLOT);

	OK(cap_obj_destroy(f->cs, o));
	ERR(cap_import(f->cs, l, &ref, &s), EKEYREVOKED);
	assert_int_equal(binfo(f->cs, b2).used_bytes, 0);
	assert_int_equal(binfo(f->cs, b2).used_objects, 0);
	assert_int_equal(binfo(f->cs, b1).used_bytes, OBJ + SLOT);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 2 * OBJ + SLOT);
	cap_clist_destroy(f->cs, l);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 2 * OBJ);
}

static void test_quota_bytes(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t banks[2], b, o, x = 0;

	assert_non_null(sn);
	b = new_bank(f->cs, f->root, 2 * OBJ + 100, 0);
	banks[0] = f->root, banks[1] = b;
	OK(cap_obj_create(f->cs, CAP_KIND_DATA, b, 100, NULL, &o));
	OK(cap_obj_create(f->cs, CAP_KIND_DATA, b, 0, NULL, &o)); /* exactly */
	assert_int_equal(binfo(f->cs, b).used_bytes, 2 * OBJ + 100);

	snap_take(f->cs, banks, 2, sn);
	ERR(cap_obj_create(f->cs, CAP_KIND_DATA, b, 0, NULL, &x), EDQUOT);
	ERR(cap_obj_create(f->cs, CAP_KIND_PROCESS, b, 0, NULL, &x), EDQUOT);
	ERR(bank_create(f->cs, b, 0, 0, &x), EDQUOT);
	ERR(bank_charge(f->cs, b, 1, 0), EDQUOT);
	ERR(cap_obj_create(f->cs, CAP_KIND_DATA, f->root, UINT64_MAX, NULL, &x),
	    EDQUOT);
	ERR(cap_obj_create(f->cs, CAP_KIND_DATA, f->root, UINT64_MAX - OBJ,
	                   NULL, &x),
	    EDQUOT); /* overflows the root's counter */
	assert_int_equal(x, 0);
	snap_same(f->cs, sn);
	assert_int_equal(f->log.n, 0);

	/* Freeing makes room again. */
	OK(cap_obj_destroy(f->cs, o));
	OK(cap_obj_create(f->cs, CAP_KIND_DATA, b, 0, NULL, &o));
	free(sn);
}

static void test_quota_objects(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t banks[3], b, c, o, x;

	assert_non_null(sn);
	b = new_bank(f->cs, f->root, 0, 3);
	c = new_bank(f->cs, b, 0, 0); /* counts as one of b's three */
	banks[0] = f->root, banks[1] = b, banks[2] = c;
	OK(cap_obj_create(f->cs, CAP_KIND_DATA, b, 0, NULL, &o));
	OK(cap_obj_create(f->cs, CAP_KIND_DATA, c, 0, NULL, &o));
	assert_int_equal(binfo(f->cs, b).used_objects, 3);
	snap_take(f->cs, banks, 3, sn);
	ERR(cap_obj_create(f->cs, CAP_KIND_DATA, b, 0, NULL, &x), EDQUOT);
	ERR(cap_obj_create(f->cs, CAP_KIND_DATA, c, 0, NULL, &x), EDQUOT);
	ERR(bank_create(f->cs, c, 0, 0, &x), EDQUOT);
	ERR(bank_charge(f->cs, c, 0, 1), EDQUOT);
	OK(bank_charge(f->cs, c, 12345, 0)); /* bytes are unlimited here */
	bank_uncharge(f->cs, c, 12345, 0);
	snap_same(f->cs, sn);
	free(sn);
}

static void test_quota_ancestor_limit(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t banks[3], root, b1, b2, x;

	(void) state;
	assert_non_null(sn);
	cfg.root_limit_objects = 4;
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);
	b1 = new_bank(cs, root, 1000, 0);
	b2 = new_bank(cs, b1, 0, 0); /* no limit of its own */
	banks[0] = root, banks[1] = b1, banks[2] = b2;
	snap_take(cs, banks, 3, sn);
	/* b2 has room, b1 (256 + 256 + 800 > 1000) has not. */
	ERR(cap_obj_create(cs, CAP_KIND_DATA, b2, 800, NULL, &x), EDQUOT);
	snap_same(cs, sn);
	OK(cap_obj_create(cs, CAP_KIND_DATA, b2, 1000 - 3 * OBJ, NULL, &x));
	/* The root's object limit: root holds b1, b2, x = 3 of 4. */
	OK(cap_obj_create(cs, CAP_KIND_DATA, root, 0, NULL, &x));
	snap_take(cs, banks, 3, sn);
	ERR(cap_obj_create(cs, CAP_KIND_DATA, root, 0, NULL, &x), EDQUOT);
	ERR(bank_create(cs, root, 0, 0, &x), EDQUOT);
	snap_same(cs, sn);
	AUDIT_OK(cs);
	cap_space_free(cs);
	free(sn);
}

static void test_quota_slots_and_sturdy(void **state)
{
	struct fx *f = *state;
	struct snap *sn = calloc(1, sizeof *sn);
	uint64_t banks[2], b, o;
	uint32_t l, s, t, x = 5;
	struct cap_sturdy ref, r2;

	assert_non_null(sn);
	b = new_bank(f->cs, f->root, 2 * SLOT, 0);
	banks[0] = f->root, banks[1] = b;
	o = new_data(f->cs, f->root, NULL);
	OK(cap_clist_create(f->cs, b, &l));
	s = mint(f->cs, l, o, CAP_R_ALL);
	OK(cap_restrict(f->cs, l, s, CAP_R_READ, &t));
	OK(cap_export(f->cs, f->a, mint(f->cs, f->a, o, CAP_R_ALL), &ref));

	snap_take(f->cs, banks, 2, sn);
	ERR(cap_mint(f->cs, l, o, CAP_R_READ, &x), EDQUOT);
	ERR(cap_restrict(f->cs, l, s, CAP_R_READ, &x), EDQUOT);
	ERR(cap_transfer(f->cs, f->a, 0, l, CAP_R_READ, &x), EDQUOT);
	ERR(cap_import(f->cs, l, &ref, &x), EDQUOT);
	ERR(cap_export(f->cs, l, s, &r2), EDQUOT);
	assert_int_equal(x, 5);
	snap_same(f->cs, sn);

	/* Dropping one slot makes room for exactly one sturdy (64 bytes). */
	OK(cap_drop(f->cs, l, t));
	OK(cap_export(f->cs, l, s, &r2));
	ERR(cap_mint(f->cs, l, o, CAP_R_READ, &x), EDQUOT);
	assert_int_equal(binfo(f->cs, b).used_bytes, SLOT + STURDY);
	free(sn);
}

static void test_bank_charge_external(void **state)
{
	struct fx *f = *state;
	uint64_t b1, b2, o, dead;

	b1 = new_bank(f->cs, f->root, 0, 0);
	b2 = new_bank(f->cs, b1, 10 * CAP_PAGE_SIZE, 0);
	OK(bank_charge(f->cs, b2, 4 * CAP_PAGE_SIZE, 0));
	assert_int_equal(binfo(f->cs, b2).used_bytes, 4 * CAP_PAGE_SIZE);
	assert_int_equal(binfo(f->cs, b1).used_bytes, OBJ + 4 * CAP_PAGE_SIZE);
	assert_int_equal(binfo(f->cs, f->root).used_bytes,
	                 2 * OBJ + 4 * CAP_PAGE_SIZE);
	ERR(bank_charge(f->cs, b2, 7 * CAP_PAGE_SIZE, 0), EDQUOT);
	assert_int_equal(binfo(f->cs, b2).used_bytes, 4 * CAP_PAGE_SIZE);
	ERR(bank_charge(f->cs, b2, UINT64_MAX, 0), EDQUOT);
	ERR(bank_charge(f->cs, f->root, UINT64_MAX, 0), EDQUOT);

	/* An uncharge takes back at most what bank_charge() put there. */
	o = new_data(f->cs, b2, NULL);
	bank_uncharge(f->cs, b2, 1ull << 40, 99);
	assert_int_equal(binfo(f->cs, b2).used_bytes, OBJ);
	assert_int_equal(binfo(f->cs, b2).used_objects, 1);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 3 * OBJ);
	AUDIT_OK(f->cs);

	/* Unknown banks: charge fails, uncharge is ignored. */
	dead = new_bank(f->cs, f->root, 0, 0);
	OK(bank_destroy(f->cs, dead));
	ERR(bank_charge(f->cs, dead, 1, 0), EKEYREVOKED);
	ERR(bank_charge(f->cs, 0, 1, 0), EKEYREVOKED);
	bank_uncharge(f->cs, dead, 1, 1);
	bank_uncharge(f->cs, 0, 1, 1);
	bank_uncharge(f->cs, o, 1, 1);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 3 * OBJ);
}

static void test_pools_full(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct snap *sn = calloc(1, sizeof *sn);
	struct cap_sturdy ref;
	uint64_t root, o, x = 0;
	uint32_t a, b, s, t, y = 3;

	(void) state;
	assert_non_null(sn);
	cfg.max_objects = 3; /* root + 2 */
	cfg.max_caps = 4;
	cfg.max_clists = 2;
	cfg.slots_per_clist = 3;
	cfg.max_sturdy = 4;
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);

	o = new_data(cs, root, NULL);
	new_bank(cs, root, 0, 0);
	snap_take(cs, &root, 1, sn);
	ERR(cap_obj_create(cs, CAP_KIND_DATA, root, 0, NULL, &x), ENOSPC);
	ERR(bank_create(cs, root, 0, 0, &x), ENOSPC);
	assert_int_equal(x, 0);
	snap_same(cs, sn);

	OK(cap_clist_create(cs, root, &a));
	OK(cap_clist_create(cs, root, &b));
	snap_take(cs, &root, 1, sn);
	ERR(cap_clist_create(cs, root, &y), ENOSPC);
	assert_int_equal(y, 3);
	snap_same(cs, sn);

	/* Slots: a has three. */
	s = mint(cs, a, o, CAP_R_ALL);
	OK(cap_restrict(cs, a, s, CAP_R_READ | CAP_R_GRANT, &t));
	OK(cap_restrict(cs, a, t, CAP_R_READ, &t));
	snap_take(cs, &root, 1, sn);
	ERR(cap_mint(cs, a, o, CAP_R_READ, &y), ENOSPC);
	ERR(cap_restrict(cs, a, s, CAP_R_READ, &y), ENOSPC);
	ERR(cap_transfer(cs, a, s, a, CAP_R_READ, &y), ENOSPC);
	snap_same(cs, sn);

	/* Capability records: four in all. */
	OK(cap_export(cs, a, s, &ref));
	assert_int_equal(stats(cs).caps_used, 4);
	snap_take(cs, &root, 1, sn);
	ERR(cap_mint(cs, b, o, CAP_R_READ, &y), ENOSPC);
	ERR(cap_transfer(cs, a, s, b, CAP_R_READ, &y), ENOSPC);
	ERR(cap_import(cs, b, &ref, &y), ENOSPC);
	ERR(cap_export(cs, a, s, &ref), ENOSPC);
	assert_int_equal(y, 3);
	snap_same(cs, sn);
	AUDIT_OK(cs);

	/* Freeing one record makes room for one. */
	OK(cap_drop(cs, a, t));
	OK(cap_transfer(cs, a, s, b, CAP_R_READ, &y));
	AUDIT_OK(cs);
	cap_space_free(cs);
	free(sn);
}

static void test_obj_destroy(void **state)
{
	struct fx *f = *state;
	int tag;
	uint64_t o, o2;
	uint32_t a0, b0, x;
	struct cap_stats st;

	o = new_data(f->cs, f->root, &tag);
	a0 = mint(f->cs, f->a, o, CAP_R_ALL);
	OK(cap_transfer(f->cs, f->a, a0, f->b, CAP_R_READ, &b0));
	f->log.probe = true;
	f->log.probe_clist = f->b;
	f->log.probe_slot = b0;
	f->log.probe_rc = 1;
	st = stats(f->cs);

	OK(cap_obj_destroy(f->cs, o));
	assert_int_equal(f->log.n, 1);
	assert_int_equal(f->log.n_data, 1);
	assert_int_equal(f->log.oids[0], o);
	assert_ptr_equal(f->log.privs[0], &tag);
	assert_int_equal(f->log.probe_rc, -EKEYREVOKED); /* revoked first */
	assert_int_equal(stats(f->cs).revocations, st.revocations + 2);
	assert_int_equal(stats(f->cs).objects_used, st.objects_used - 1);
	ERR(check(f->cs, f->a, a0), EKEYREVOKED);
	ERR(check(f->cs, f->b, b0), EKEYREVOKED);
	ERR(cap_obj_get(f->cs, o, NULL, NULL), ENOENT);
	ERR(cap_obj_destroy(f->cs, o), ENOENT);
	ERR(cap_mint(f->cs, f->a, o, CAP_R_READ, &x), ENOENT);
	assert_int_equal(cap_obj_bank(f->cs, o), 0);
	assert_int_equal(f->log.n, 1);
	/* Only the revoked slots are still charged. */
	assert_int_equal(binfo(f->cs, f->root).used_bytes, 2 * SLOT);
	assert_int_equal(binfo(f->cs, f->root).used_objects, 0);
	/* A new object never gets the old id. */
	o2 = new_data(f->cs, f->root, NULL);
	assert_true(o2 != o);
	f->log.probe = false;
}

static void test_obj_destroy_reuse_same_index(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	uint64_t root, o, prev;
	int i;

	(void) state;
	cfg.max_objects = 2; /* root + one: every object takes index 1 */
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);
	prev = 0;
	for (i = 0; i < 100; i++) {
		o = new_data(cs, root, NULL);
		assert_int_equal(o & 0xffffffffu, 1);
		assert_true(o != prev);
		if (prev) {
			ERR(cap_obj_get(cs, prev, NULL, NULL), ENOENT);
			ERR(cap_obj_destroy(cs, prev), ENOENT);
		}
		OK(cap_obj_destroy(cs, o));
		prev = o;
	}
	assert_int_equal(log.n, 100);
	AUDIT_OK(cs);
	cap_space_free(cs);
}

/*  root ─┬─ b1 ─── b2        o1 (b1), o2 process (b2), o3 (b2), ext charge
 *        ├─ b3               o4 (b3)
 *        └─ o5
 * X (root): x1→o1, x2→o2, x3→b2, x4→o4, x5←y1, x6 (import of ref_y)
 * Y (b2):   y1→o5, y2←x4;  ref_y from y1 (b2),  ref_x1 from x1 (root) */
static void test_bank_destroy(void **state)
{
	struct fx *f = *state;
	struct cap_space *cs = f->cs;
	uint64_t b1, b2, b3, o1, o2, o3, o4, o5, root = f->root;
	uint32_t X = f->a, Y, x1, x2, x3, x4, x5, x6, y1, y2, z;
	struct cap_sturdy ref_y, ref_x1;
	struct bank_info bi;
	int p1, p3;
	unsigned i;

	b1 = new_bank(cs, root, 0, 0);
	b2 = new_bank(cs, b1, 0, 0);
	b3 = new_bank(cs, root, 0, 0);
	o1 = new_data(cs, b1, &p1);
	OK(cap_obj_create(cs, CAP_KIND_PROCESS, b2, 0, NULL, &o2));
	OK(cap_obj_create(cs, CAP_KIND_DATA, b2, 5000, &p3, &o3));
	o4 = new_data(cs, b3, NULL);
	o5 = new_data(cs, root, NULL);
	OK(bank_charge(cs, b2, 3 * CAP_PAGE_SIZE, 0));
	OK(cap_clist_create(cs, b2, &Y));

	x1 = mint(cs, X, o1, CAP_R_ALL);
	x2 = mint(cs, X, o2, CAP_R_ALL);
	x3 = mint(cs, X, b2, CAP_R_ALL);
	x4 = mint(cs, X, o4, CAP_R_ALL);
	y1 = mint(cs, Y, o5, CAP_R_ALL);
	OK(cap_transfer(cs, X, x4, Y, CAP_R_READ, &y2));
	OK(cap_transfer(cs, Y, y1, X, CAP_R_READ | CAP_R_GRANT, &x5));
	OK(cap_export(cs, Y, y1, &ref_y));
	OK(cap_import(cs, X, &ref_y, &x6));
	OK(cap_export(cs, X, x1, &ref_x1));
	assert_int_equal(info_of(cs, X, x6).depth, 2);
	AUDIT_OK(cs);

	f->log.probe = true; /* x1's object goes: revoked before callbacks */
	f->log.probe_clist = X;
	f->log.probe_slot = x1;
	ERR(bank_destroy(cs, root), EPERM);
	ERR(cap_obj_destroy(cs, root), EPERM);
	OK(bank_destroy(cs, b1));

	/* Every object the subtree paid for, banks included, was reported. */
	assert_int_equal(f->log.n, 5);
	assert_int_equal(f->log.n_data, 2);
	assert_int_equal(f->log.n_process, 1);
	assert_int_equal(f->log.n_bank, 2);
	assert_int_equal(f->log.probe_rc, -EKEYREVOKED);
	for (i = 0; i < f->log.n; i++) {
		uint64_t id = f->log.oids[i];

		assert_true(id == o1 || id == o2 || id == o3 || id == b1 ||
		            id == b2);
		if (id == o1)
			assert_ptr_equal(f->log.privs[i], &p1);
		else if (id == o3)
			assert_ptr_equal(f->log.privs[i], &p3);
		else
			assert_null(f->log.privs[i]);
	}
	/* Capabilities to them are revoked; others are untouched. */
	ERR(check(cs, X, x1), EKEYREVOKED);
	ERR(check(cs, X, x2), EKEYREVOKED);
	ERR(check(cs, X, x3), EKEYREVOKED);
	OK(check(cs, X, x4));
	OK(check(cs, X, x5));
	assert_int_equal(info_of(cs, X, x5).depth,
	                 0); /* y1 went: re-parented */
	OK(check(cs, X, x6));
	assert_int_equal(info_of(cs, X, x6).depth, 0);
	/* Slots and sturdy records b2 paid for are gone. */
	ERR(check(cs, Y, y1), EBADF);
	ERR(check(cs, Y, y2), EBADF);
	ERR(cap_import(cs, X, &ref_y, &z), EACCES);
	ERR(cap_import(cs, X, &ref_x1, &z), EKEYREVOKED);
	/* Stale ids. */
	ERR(cap_obj_get(cs, o1, NULL, NULL), ENOENT);
	ERR(cap_obj_get(cs, o2, NULL, NULL), ENOENT);
	ERR(cap_obj_get(cs, o3, NULL, NULL), ENOENT);
	ERR(cap_obj_get(cs, b2, NULL, NULL), ENOENT);
	ERR(bank_info(cs, b1, &bi), ENOENT);
	ERR(bank_info(cs, b2, &bi), ENOENT);
	ERR(bank_destroy(cs, b1), ENOENT);
	ERR(bank_destroy(cs, b2), ENOENT);
	ERR(cap_obj_destroy(cs, o2), ENOENT);
	ERR(bank_create(cs, b2, 0, 0, &o1), EKEYREVOKED);
	ERR(cap_obj_create(cs, CAP_KIND_DATA, b1, 0, NULL, &o1), EKEYREVOKED);
	OK(cap_obj_get(cs, o4, NULL, NULL));
	OK(cap_obj_get(cs, o5, NULL, NULL));
	OK(cap_obj_get(cs, b3, NULL, NULL));
	/* The root holds b3, o4, o5 and X's six slots (three revoked). */
	bi = binfo(cs, root);
	assert_int_equal(bi.used_bytes, 3 * OBJ + 6 * SLOT);
	assert_int_equal(bi.used_objects, 3);
	assert_int_equal(bi.children, 1);
	assert_int_equal(stats(cs).objects_used, 4);
	assert_int_equal(stats(cs).sturdy_used, 0);
	AUDIT_OK(cs);

	/* Y's bank is gone: it can fill no slot until given another. */
	ERR(cap_mint(cs, Y, o5, CAP_R_READ, &z), EKEYREVOKED);
	OK(cap_clist_set_bank(cs, Y, b3));
	z = mint(cs, Y, o5, CAP_R_READ);
	assert_int_equal(binfo(cs, b3).used_bytes, OBJ + SLOT);
	f->log.probe = false;
}

static void test_bank_destroy_via_obj_destroy(void **state)
{
	struct fx *f = *state;
	uint64_t b = new_bank(f->cs, f->root, 0, 0);
	uint64_t o = new_data(f->cs, b, NULL);
	uint32_t s = mint(f->cs, f->a, o, CAP_R_READ);

	/* cap_obj_destroy on a bank destroys it as bank_destroy does. */
	OK(cap_obj_destroy(f->cs, b));
	assert_int_equal(f->log.n, 2);
	ERR(check(f->cs, f->a, s), EKEYREVOKED);
	ERR(bank_destroy(f->cs, 0), ENOENT);
	assert_int_equal(binfo(f->cs, f->root).used_bytes, SLOT);
	assert_int_equal(binfo(f->cs, f->root).children, 0);
}

/* ================= depth without recursion ================= */

#define DEEP 10000u

struct deep_job {
	struct cap_space *cs;
	uint32_t clist, slot;
	uint64_t bank;
	int rc;
};

static void deep_revoke(void *p)
{
	struct deep_job *j = p;

	j->rc = cap_revoke(j->cs, j->clist, j->slot);
}

static void deep_clist_destroy(void *p)
{
	struct deep_job *j = p;

	cap_clist_destroy(j->cs, j->clist);
	j->rc = 0;
}

static void deep_bank_destroy(void *p)
{
	struct deep_job *j = p;

	j->rc = bank_destroy(j->cs, j->bank);
}

static void deep_audit(void *p)
{
	struct deep_job *j = p;

	j->rc = cap__audit(j->cs, NULL);
}

/* A chain of DEEP transfers alternating between two c-lists. */
static void test_deep_chain_revoke(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct deep_job j;
	uint64_t root, o;
	uint32_t l[2], s[2][DEEP / 2 + 1], i, cur, top;

	(void) state;
	cfg.max_caps = DEEP + 1;
	cfg.max_clists = 2;
	cfg.slots_per_clist = DEEP / 2 + 1;
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);
	OK(cap_clist_create(cs, root, &l[0]));
	OK(cap_clist_create(cs, root, &l[1]));
	o = new_data(cs, root, NULL);
	top = s[0][0] = mint(cs, l[0], o, CAP_R_ALL);
	cur = top;
	for (i = 1; i <= DEEP; i++) {
		uint32_t from = l[(i - 1) % 2], to = l[i % 2];

		OK(cap_transfer(cs, from, cur, to, CAP_R_ALL, &cur));
		s[i % 2][i / 2] = cur;
	}
	assert_int_equal(info_of(cs, l[DEEP % 2], cur).depth, DEEP);
	assert_int_equal(stats(cs).caps_used, DEEP + 1);
	j = (struct deep_job){.cs = cs};
	on_small_stack(deep_audit, &j);
	assert_int_equal(j.rc, 0);

	j = (struct deep_job){.cs = cs, .clist = l[0], .slot = top, .rc = 1};
	on_small_stack(deep_revoke, &j);
	OK(j.rc);
	assert_int_equal(stats(cs).revocations, DEEP + 1);
	assert_int_equal(stats(cs).caps_used, 0);
	for (i = 0; i <= DEEP; i++)
		ERR(check(cs, l[i % 2], s[i % 2][i / 2]), EKEYREVOKED);
	AUDIT_OK(cs);
	cap_space_free(cs);
}

/* A chain of DEEP restricts in one c-list, dropped from the middle and the
 * top, then destroyed with the c-list and finally by the object. */
static void test_deep_chain_drop(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct deep_job j;
	uint64_t root, o;
	uint32_t a, b, i, cur, keep;

	(void) state;
	cfg.max_caps = DEEP + 2;
	cfg.max_clists = 2;
	cfg.slots_per_clist = DEEP + 1;
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);
	OK(cap_clist_create(cs, root, &a));
	OK(cap_clist_create(cs, root, &b));
	o = new_data(cs, root, NULL);
	cur = mint(cs, a, o, CAP_R_ALL);
	for (i = 1; i <= DEEP; i++)
		OK(cap_restrict(cs, a, cur, CAP_R_ALL, &cur));
	assert_int_equal(cur, DEEP);
	OK(cap_transfer(cs, a, DEEP, b, CAP_R_READ, &keep));
	assert_int_equal(info_of(cs, b, keep).depth, DEEP + 1);

	OK(cap_drop(cs, a, DEEP / 2));
	assert_int_equal(info_of(cs, a, DEEP).depth, DEEP - 1);
	OK(cap_drop(cs, a, 0));
	assert_int_equal(info_of(cs, a, 1).depth, 0);
	assert_int_equal(info_of(cs, b, keep).depth, DEEP - 1);

	j = (struct deep_job){.cs = cs, .clist = a};
	on_small_stack(deep_clist_destroy, &j);
	assert_int_equal(stats(cs).caps_used, 1);
	assert_int_equal(stats(cs).revocations, 0);
	assert_int_equal(info_of(cs, b, keep).depth, 0);
	AUDIT_OK(cs);
	OK(cap_obj_destroy(cs, o));
	ERR(check(cs, b, keep), EKEYREVOKED);
	AUDIT_OK(cs);
	cap_space_free(cs);
}

/* DEEP nested banks, each paying for one object, destroyed from the top. */
static void test_deep_bank_chain(void **state)
{
	struct dlog log = {0};
	struct cap_config cfg = base_cfg(&log);
	struct cap_space *cs;
	struct deep_job j;
	uint64_t root, top, cur, o = 0;
	uint32_t a, s;
	unsigned i, n = 2000;

	(void) state;
	cfg.max_objects = 2 * n + 2;
	cs = space_new(&cfg);
	root = cap_space_root_bank(cs);
	OK(cap_clist_create(cs, root, &a));
	top = cur = new_bank(cs, root, 0, 0);
	for (i = 1; i < n; i++)
		cur = new_bank(cs, cur, 0, 0);
	for (i = 0; i < n; i++)
		o = new_data(cs, cur, NULL);
	s = mint(cs, a, o, CAP_R_READ);
	assert_int_equal(binfo(cs, root).used_objects, 2 * n);
	assert_int_equal(binfo(cs, cur).used_objects, n);

	j = (struct deep_job){.cs = cs, .bank = top, .rc = 1};
	on_small_stack(deep_bank_destroy, &j);
	OK(j.rc);
	assert_int_equal(log.n, 2 * n);
	assert_int_equal(log.n_bank, n);
	assert_int_equal(stats(cs).objects_used, 1);
	assert_int_equal(binfo(cs, root).used_bytes, SLOT);
	assert_int_equal(binfo(cs, root).used_objects, 0);
	ERR(check(cs, a, s), EKEYREVOKED);
	AUDIT_OK(cs);
	cap_space_free(cs);
}

/* ================= randomized ================= */

#define R_OBJS 40
#define R_CAPS 60
#define R_CLISTS 6
#define R_SLOTS 20
#define R_STURDY 10
#define R_REFS 24
#define R_STALE 16

#define R_OPS 17
#define R_OUTCOMES 10

struct rmodel {
	unsigned hist[R_OPS][R_OUTCOMES]; /* op x outcome, over all seeds */
	uint64_t rng;
	struct cap_space *cs;
	struct dlog log;
	uint64_t objs[R_OBJS]; /* live data and process objects */
	unsigned nobjs;
	uint64_t banks[R_OBJS]; /* live banks, root first */
	unsigned nbanks;
	uint64_t stale[R_STALE];
	unsigned nstale;
	bool cl_used[R_CLISTS];
	struct cap_sturdy refs[R_REFS];
	unsigned nrefs;
};

static uint32_t rnd(struct rmodel *m, uint32_t n)
{
	/* xorshift64*: seeded, so a failure replays. */
	m->rng ^= m->rng >> 12;
	m->rng ^= m->rng << 25;
	m->rng ^= m->rng >> 27;
	return (uint32_t) ((m->rng * 0x2545f4914f6cdd1dull) >> 33) % n;
}

static uint64_t pick_stale(struct rmodel *m)
{
	return m->nstale ? m->stale[rnd(m, m->nstale)] : 0x1234567800000005ull;
}

static uint64_t pick_bank(struct rmodel *m)
{
	uint32_t k = rnd(m, 10);

	if (k == 0)
		return pick_stale(m);
	if (k == 1 && m->nobjs)
		return m->objs[rnd(m, m->nobjs)]; /* not a bank */
	return m->banks[rnd(m, m->nbanks)];
}

static uint64_t pick_obj(struct rmodel *m)
{
	uint32_t k = rnd(m, 10);

	if (k == 0)
		return pick_stale(m);
	if (k <= 2 || !m->nobjs)
		return m->banks[rnd(m, m->nbanks)];
	return m->objs[rnd(m, m->nobjs)];
}

/* Mostly a live c-list; now and then a dead or forged number. */
static uint32_t pick_clist(struct rmodel *m)
{
	uint32_t l, live[R_CLISTS], n = 0;

	for (l = 0; l < R_CLISTS; l++)
		if (m->cl_used[l])
			live[n++] = l;
	if (n && rnd(m, 10))
		return live[rnd(m, n)];
	return rnd(m, 10) ? rnd(m, R_CLISTS) : R_CLISTS + rnd(m, 3);
}

/* Mostly a valid slot of `l`, sometimes a revoked one; else any number,
 * forged ones included. */
static uint32_t pick_slot(struct rmodel *m, uint32_t l)
{
	uint32_t s, valid[R_SLOTS], revoked[R_SLOTS], nv = 0, nr = 0, k;

	for (s = 0; s < R_SLOTS; s++) {
		int rc = check(m->cs, l, s);

		if (rc == 0)
			valid[nv++] = s;
		else if (rc == -EKEYREVOKED)
			revoked[nr++] = s;
	}
	k = rnd(m, 20);
	if (nv && k < 15)
		return valid[rnd(m, nv)];
	if (nr && k < 18)
		return revoked[rnd(m, nr)];
	return rnd(m, 30) == 0 ? UINT32_MAX - rnd(m, 2) : rnd(m, R_SLOTS + 2);
}

static uint32_t pick_rights(struct rmodel *m)
{
	return rnd(m, 8) ? 1 + rnd(m, CAP_R_ALL) : rnd(m, 64);
}

/* Mostly a subset of what (l, slot) holds, so that derivations succeed;
 * sometimes anything at all. */
static uint32_t pick_sub_rights(struct rmodel *m, uint32_t l, uint32_t slot)
{
	struct cap_info in;
	uint32_t r;

	if (rnd(m, 4) == 0 ||
	    cap_check(m->cs, l, slot, CAP_KIND_NONE, 0, &in) != 0)
		return pick_rights(m);
	r = in.rights & (1 + rnd(m, CAP_R_ALL));
	return r ? r : in.rights;
}

static void add_stale(struct rmodel *m, uint64_t id)
{
	if (m->nstale < R_STALE)
		m->stale[m->nstale++] = id;
	else
		m->stale[rnd(m, R_STALE)] = id;
}

/* Drops ids that died (destroyed directly or with their bank). */
static void prune(struct rmodel *m)
{
	unsigned i;

	for (i = 0; i < m->nobjs;)
		if (cap_obj_get(m->cs, m->objs[i], NULL, NULL) == -ENOENT) {
			add_stale(m, m->objs[i]);
			m->objs[i] = m->objs[--m->nobjs];
		} else
			i++;
	for (i = 0; i < m->nbanks;)
		if (cap_obj_get(m->cs, m->banks[i], NULL, NULL) == -ENOENT) {
			add_stale(m, m->banks[i]);
			m->banks[i] = m->banks[--m->nbanks];
		} else
			i++;
}

/* The counters against what the test itself can see. */
static void recount(struct rmodel *m)
{
	struct cap_stats st = stats(m->cs);
	uint32_t l, s, valid = 0, clists = 0;

	AUDIT_OK(m->cs);
	assert_int_equal(st.objects_used, m->nobjs + m->nbanks);
	for (l = 0; l < R_CLISTS; l++) {
		if (!m->cl_used[l]) {
			ERR(check(m->cs, l, 0), EBADF);
			continue;
		}
		clists++;
		for (s = 0; s < R_SLOTS; s++)
			if (check(m->cs, l, s) == 0)
				valid++;
	}
	assert_int_equal(st.clists_used, clists);
	assert_int_equal(st.caps_used, valid + st.sturdy_used);
	assert_true(st.sturdy_used <= R_STURDY);
	assert_true(st.objects_used <= R_OBJS);
	assert_true(st.caps_used <= R_CAPS);
}

static int rand_op(struct rmodel *m, int op)
{
	struct cap_space *cs = m->cs;
	struct cap_sturdy ref;
	struct cap_info in;
	uint64_t id;
	uint32_t l, s, r, out, from;
	int rc;

	switch (op) {
	case 0: /* create an object */
		rc = cap_obj_create(
		        cs, rnd(m, 2) ? CAP_KIND_DATA : CAP_KIND_PROCESS,
		        pick_bank(m), rnd(m, 3) * rnd(m, 3000), NULL, &id);
		if (!rc)
			m->objs[m->nobjs++] = id;
		return rc;
	case 1:
		return cap_obj_destroy(cs, pick_obj(m));
	case 2: /* create a bank */
		rc = bank_create(cs, pick_bank(m), rnd(m, 2) ? 0 : rnd(m, 8000),
		                 rnd(m, 2) ? 0 : rnd(m, 8), &id);
		if (!rc)
			m->banks[m->nbanks++] = id;
		return rc;
	case 3:
		return bank_destroy(cs, pick_bank(m));
	case 4:
		/* Often the root: c-lists of destroyed banks can fill
		 * nothing until they get another bank. */
		rc = cap_clist_create(
		        cs, rnd(m, 2) ? m->banks[0] : pick_bank(m), &l);
		if (!rc) {
			assert_true(l < R_CLISTS && !m->cl_used[l]);
			m->cl_used[l] = true;
		}
		return rc;
	case 5:
		l = pick_clist(m);
		cap_clist_destroy(cs, l);
		if (l < R_CLISTS)
			m->cl_used[l] = false;
		return 0;
	case 6:
		r = pick_rights(m);
		rc = cap_mint(cs, pick_clist(m), pick_obj(m), r, &s);
		return rc;
	case 7:
		l = pick_clist(m);
		from = pick_slot(m, l);
		r = pick_sub_rights(m, l, from);
		rc = cap_restrict(cs, l, from, r, &s);
		if (!rc) {
			OK(cap_check(cs, l, s, CAP_KIND_NONE, 0, &in));
			assert_int_equal(in.rights, r);
			assert_true(in.depth >= 1);
		}
		return rc;
	case 8:
		from = pick_clist(m);
		s = pick_slot(m, from);
		r = pick_sub_rights(m, from, s);
		l = pick_clist(m);
		rc = cap_transfer(cs, from, s, l, r, &out);
		if (!rc) {
			OK(cap_check(cs, l, out, CAP_KIND_NONE, r, &in));
			assert_int_equal(in.rights, r);
		}
		return rc;
	case 9:
		if (rnd(m, 2)) /* rarer: it throws away a lot */
			return 0;
		l = pick_clist(m);
		return cap_revoke(cs, l, pick_slot(m, l));
	case 10:
		l = pick_clist(m);
		return cap_drop(cs, l, pick_slot(m, l));
	case 11:
		l = pick_clist(m);
		rc = cap_export(cs, l, pick_slot(m, l), &ref);
		if (!rc) {
			if (m->nrefs < R_REFS)
				m->refs[m->nrefs++] = ref;
			else
				m->refs[rnd(m, R_REFS)] = ref;
		}
		return rc;
	case 12:
		if (!m->nrefs)
			return 0;
		ref = m->refs[rnd(m, m->nrefs)];
		if (rnd(m, 8) == 0)
			ref.secret[rnd(m, CAP_SECRET_LEN)] ^= 1;
		return cap_import(cs, pick_clist(m), &ref, &s);
	case 13:
		if (!m->nrefs)
			return 0;
		ref = m->refs[rnd(m, m->nrefs)];
		return cap_revoke_sturdy(cs, &ref);
	case 14:
		return bank_charge(cs, pick_bank(m), rnd(m, 4) * CAP_PAGE_SIZE,
		                   rnd(m, 2));
	case 15:
		bank_uncharge(cs, pick_bank(m), rnd(m, 4) * CAP_PAGE_SIZE,
		              rnd(m, 2));
		return 0;
	default:
		return cap_clist_set_bank(cs, pick_clist(m), pick_bank(m));
	}
}

/* How often each operation is tried, in the order of rand_op(). */
static const unsigned op_weight[R_OPS] = {
        8, 2, 4, 1, 2, 1, 16, 12, 12, 4, 4, 6, 8, 2, 3, 2, 4,
};
static const int outcome_err[R_OUTCOMES] = {
        0,      EBADF,  EKEYREVOKED, EPERM,  ENOTTY,
        EDQUOT, ENOSPC, EACCES,      EINVAL, ENOENT,
};

static int pick_op(struct rmodel *m)
{
	unsigned total = 0, k, i;

	for (i = 0; i < R_OPS; i++)
		total += op_weight[i];
	k = rnd(m, total);
	for (i = 0; k >= op_weight[i]; i++)
		k -= op_weight[i];
	return (int) i;
}

static void count_outcome(struct rmodel *m, int op, int rc)
{
	unsigned e;

	for (e = 0; e < R_OUTCOMES; e++)
		if (-rc == outcome_err[e]) {
			m->hist[op][e]++;
			return;
		}
	fail_msg("op %d returned unexpected %d", op, rc);
}

static void run_random(uint64_t seed, unsigned ops,
                       unsigned (*hist)[R_OUTCOMES])
{
	struct rmodel *m = calloc(1, sizeof *m);
	struct snap *sn = calloc(1, sizeof *sn);
	struct cap_config cfg;
	unsigned i, fails = 0, oks = 0;
	struct cap_stats before, after;

	assert_non_null(m);
	assert_non_null(sn);
	m->rng = seed;
	cfg = base_cfg(&m->log);
	cfg.max_objects = R_OBJS;
	cfg.max_caps = R_CAPS;
	cfg.max_clists = R_CLISTS;
	cfg.slots_per_clist = R_SLOTS;
	cfg.max_sturdy = R_STURDY;
	/* Odd seeds run the root unlimited, so that the pools run out before
	 * the quotas do; even seeds the other way round. */
	cfg.root_limit_bytes = seed & 1 ? 0 : 40000;
	cfg.root_limit_objects = seed & 1 ? 0 : 30;
	m->cs = space_new(&cfg);
	m->banks[m->nbanks++] = cap_space_root_bank(m->cs);

	for (i = 0; i < ops; i++) {
		int op = pick_op(m), rc;
		unsigned destroyed = m->log.n;

		/* Creation is likelier early on so the pools fill up. */
		if (i < ops / 10 && rnd(m, 2))
			op = (int) rnd(m, 3) * 2 + 0; /* 0, 2 or 4 */
		snap_take(m->cs, m->banks, m->nbanks, sn);
		before = stats(m->cs);
		rc = rand_op(m, op);
		count_outcome(m, op, rc);
		after = stats(m->cs);
		if (rc) {
			/* C4: a refused call changed nothing at all. */
			fails++;
			snap_same(m->cs, sn);
			assert_int_equal(m->log.n, destroyed);
		} else {
			oks++;
		}
		/* Exactly one callback per object that disappeared. */
		if (op == 1 || op == 3)
			assert_int_equal(m->log.n - destroyed,
			                 before.objects_used -
			                         after.objects_used);
		else
			assert_int_equal(m->log.n, destroyed);
		assert_true(after.revocations >= before.revocations);
		prune(m);
		recount(m);
	}
	/* The mix exercised both outcomes. */
	assert_true(fails > ops / 20);
	assert_true(oks > ops / 4);
	for (i = 0; i < R_OPS * R_OUTCOMES; i++)
		hist[i / R_OUTCOMES][i % R_OUTCOMES] +=
		        m->hist[i / R_OUTCOMES][i % R_OUTCOMES];
	cap_space_free(m->cs);
	free(sn);
	free(m);
}

static void test_randomized(void **state)
{
	static const uint64_t seeds[] = {
	        0x9e3779b97f4a7c15ull,
	        1,
	        42,
	        0xdeadbeefcafef00dull,
	};
	unsigned hist[R_OPS][R_OUTCOMES], op, e, sum;
	size_t i;

	(void) state;
	memset(hist, 0, sizeof hist);
	for (i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
		run_random(seeds[i], 3000, hist);
	if (getenv("CAPS_TEST_VERBOSE"))
		for (op = 0; op < R_OPS; op++) {
			print_message("op %2u:", op);
			for (e = 0; e < R_OUTCOMES; e++)
				print_message(" %5u", hist[op][e]);
			print_message("\n");
		}
	/* The runs reached the interesting states: every operation
	 * succeeded somewhere, and the pools and quotas ran out. */
	for (op = 0; op < R_OPS; op++)
		if (!hist[op][0])
			fail_msg("op %u never succeeded", op);
	for (e = 1; e < R_OUTCOMES; e++) {
		for (sum = 0, op = 0; op < R_OPS; op++)
			sum += hist[op][e];
		if (!sum)
			fail_msg("error %d never seen", -outcome_err[e]);
	}
	assert_true(hist[0][6] + hist[2][6] > 0); /* object pool full */
	assert_true(hist[6][6] + hist[7][6] + hist[8][6] > 0); /* caps/slots */
	assert_true(hist[11][6] > 0);                          /* sturdy */
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_rights_parse_ok),
	        cmocka_unit_test(test_rights_parse_bad),
	        cmocka_unit_test(test_rights_format),
	        cmocka_unit_test(test_rights_roundtrip),
	        cmocka_unit_test(test_kind_name),
	        cmocka_unit_test(test_init_bad_config),
	        cmocka_unit_test(test_init_stats),
	        T(test_mint_check),
	        T(test_mint_bad),
	        T(test_forged_slots),
	        T(test_wrong_kind_and_rights),
	        T(test_restrict),
	        T(test_revoke_across_clists),
	        T(test_revoke_leaf_keeps_ancestors),
	        T(test_revoked_slot_until_dropped),
	        T(test_drop_reparents),
	        T(test_drop_root_makes_roots),
	        T(test_clist_destroy_keeps_derived),
	        T(test_transfer),
	        T(test_sturdy_roundtrip),
	        T(test_export_rights),
	        T(test_sturdy_wrong_secret),
	        T(test_sturdy_revoke),
	        T(test_sturdy_revoked_by_ancestor),
	        cmocka_unit_test(test_sturdy_tombstone_reuse),
	        cmocka_unit_test(test_sturdy_parse_bad),
	        cmocka_unit_test(test_sturdy_format_small),
	        T(test_bank_hierarchy_charges),
	        T(test_quota_bytes),
	        T(test_quota_objects),
	        cmocka_unit_test(test_quota_ancestor_limit),
	        T(test_quota_slots_and_sturdy),
	        T(test_bank_charge_external),
	        cmocka_unit_test(test_pools_full),
	        T(test_obj_destroy),
	        cmocka_unit_test(test_obj_destroy_reuse_same_index),
	        T(test_bank_destroy),
	        T(test_bank_destroy_via_obj_destroy),
	        cmocka_unit_test(test_deep_chain_revoke),
	        cmocka_unit_test(test_deep_chain_drop),
	        cmocka_unit_test(test_deep_bank_chain),
	        cmocka_unit_test(test_randomized),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
