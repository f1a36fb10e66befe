/* test_lock.c — unit tests of the FIFO byte-range lock table
 * (coherence/lock.h): compatibility, FIFO fairness, release of a dead
 * owner's locks, a full table, and a randomized check of invariant L1
 * against a brute-force model. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lock.h"

struct grants {
	uint64_t tags[64];
	unsigned n;
};

static void on_grant(void *ctx, const struct coh_lock_req *r)
{
	struct grants *g = ctx;
	assert_true(g->n < 64);
	g->tags[g->n++] = r->tag;
}

static struct coh_lock_req req(uint32_t owner, uint64_t off, uint64_t len,
                               bool excl, uint64_t tag)
{
	return (struct coh_lock_req){ .oid = 7, .offset = off, .length = len,
	                              .exclusive = excl, .owner = owner,
	                              .tag = tag };
}

static void test_shared_compatible_exclusive_not(void **st)
{
	struct coh_locktab *lt;
	(void)st;
	assert_int_equal(coh_lock_init(&lt, 16), 0);
	struct coh_lock_req a = req(1, 0, 100, false, 1), b = req(2, 50, 100, false, 2);
	struct coh_lock_req c = req(3, 120, 10, true, 3), d = req(4, 200, 10, true, 4);
	assert_int_equal(coh_lock_acquire(lt, &a, false), 0);
	assert_int_equal(coh_lock_acquire(lt, &b, false), 0);
	assert_int_equal(coh_lock_acquire(lt, &c, true), -EAGAIN);
	assert_int_equal(coh_lock_acquire(lt, &c, false), 1);
	assert_int_equal(coh_lock_acquire(lt, &d, false), 0); /* disjoint */
	assert_int_equal(coh_lock_used(lt), 4);
	assert_int_equal(coh_lock_granted(lt), 3);

	struct grants g = { 0 };
	assert_int_equal(coh_lock_release(lt, 1, 7, 0, 100, on_grant, &g), 0);
	assert_int_equal(g.n, 0); /* b still overlaps c */
	assert_int_equal(coh_lock_release(lt, 2, 7, 50, 100, on_grant, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.tags[0], 3);
	coh_lock_free(lt);
}

static void test_fifo_writer_not_starved(void **st)
{
	struct coh_locktab *lt;
	struct grants g = { 0 };
	(void)st;
	assert_int_equal(coh_lock_init(&lt, 16), 0);
	struct coh_lock_req r1 = req(1, 0, 10, false, 1);
	struct coh_lock_req w = req(2, 0, 10, true, 2);
	struct coh_lock_req r2 = req(3, 0, 10, false, 3);
	assert_int_equal(coh_lock_acquire(lt, &r1, false), 0);
	assert_int_equal(coh_lock_acquire(lt, &w, false), 1);
	/* A later reader waits behind the waiting writer. */
	assert_int_equal(coh_lock_acquire(lt, &r2, false), 1);
	assert_int_equal(coh_lock_release(lt, 1, 7, 0, 10, on_grant, &g), 0);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.tags[0], 2);
	assert_int_equal(coh_lock_release(lt, 2, 7, 0, 10, on_grant, &g), 0);
	assert_int_equal(g.n, 2);
	assert_int_equal(g.tags[1], 3);
	coh_lock_free(lt);
}

static void test_owner_death_and_errors(void **st)
{
	struct coh_locktab *lt;
	struct grants g = { 0 };
	(void)st;
	assert_int_equal(coh_lock_init(&lt, 3), 0);
	struct coh_lock_req a = req(1, 0, 10, true, 1), b = req(2, 5, 10, true, 2);
	struct coh_lock_req a2 = req(1, 8, 4, false, 9);
	assert_int_equal(coh_lock_acquire(lt, &a, false), 0);
	assert_int_equal(coh_lock_acquire(lt, &a2, false), -EDEADLK);
	assert_int_equal(coh_lock_acquire(lt, &b, false), 1);
	struct coh_lock_req z = req(5, 0, 0, true, 5);
	assert_int_equal(coh_lock_acquire(lt, &z, false), -EINVAL);
	struct coh_lock_req ov = req(5, UINT64_MAX - 2, 10, true, 5);
	assert_int_equal(coh_lock_acquire(lt, &ov, false), -EINVAL);
	struct coh_lock_req c = req(3, 100, 1, true, 3), d = req(4, 200, 1, true, 4);
	assert_int_equal(coh_lock_acquire(lt, &c, false), 0);
	assert_int_equal(coh_lock_acquire(lt, &d, false), -ENOSPC);
	assert_int_equal(coh_lock_used(lt), 3); /* nothing changed */
	assert_int_equal(coh_lock_release(lt, 9, 7, 0, 10, on_grant, &g), -ENOENT);
	assert_int_equal(coh_lock_release_owner(lt, 1, on_grant, &g), 1);
	assert_int_equal(g.n, 1);
	assert_int_equal(g.tags[0], 2);
	assert_int_equal(coh_lock_drop_object(lt, 7, NULL, NULL), 2);
	assert_int_equal(coh_lock_used(lt), 0);
	coh_lock_free(lt);
}

/* Random acquires and releases on a few objects; after each step the table
 * must hold no two conflicting granted locks (L1) and no waiting request
 * that could be granted in FIFO order (L2), checked against the model. */
struct model {
	struct coh_lock_req r;
	bool granted, live;
};

static bool conflicts(const struct coh_lock_req *a, const struct coh_lock_req *b)
{
	return a->oid == b->oid && a->offset < b->offset + b->length &&
	       b->offset < a->offset + a->length && (a->exclusive || b->exclusive);
}

static struct model *mglob;
static unsigned mcount;

static void model_grant(void *ctx, const struct coh_lock_req *r)
{
	(void)ctx;
	for (unsigned i = 0; i < mcount; i++)
		if (mglob[i].live && mglob[i].r.tag == r->tag) {
			assert_false(mglob[i].granted);
			mglob[i].granted = true;
			return;
		}
	fail_msg("grant of an unknown request");
}

static void test_random_against_model(void **st)
{
	enum { STEPS = 20000, OWNERS = 12 };
	static struct model m[STEPS];
	struct coh_locktab *lt;
	unsigned seed = 12345;
	(void)st;
	mglob = m;
	mcount = 0;
	assert_int_equal(coh_lock_init(&lt, 64), 0);
	srand(seed);
	for (unsigned s = 0; s < STEPS; s++) {
		uint32_t owner = (uint32_t)(rand() % OWNERS);
		bool waiting = false;
		for (unsigned i = 0; i < mcount; i++)
			if (m[i].live && m[i].r.owner == owner && !m[i].granted)
				waiting = true;
		if (rand() % 2 && !waiting) {
			struct coh_lock_req r = {
				.oid = (uint64_t)(rand() % 3),
				.offset = (uint64_t)(rand() % 64),
				.length = (uint64_t)(1 + rand() % 16),
				.exclusive = rand() % 3 == 0,
				.owner = owner,
				.tag = s + 1,
			};
			int rc = coh_lock_acquire(lt, &r, false);
			if (rc >= 0) {
				m[mcount++] = (struct model){ .r = r, .granted = rc == 0,
				                              .live = true };
			} else {
				assert_true(rc == -EDEADLK || rc == -ENOSPC);
			}
		} else {
			/* Release one granted lock of this owner, or all. */
			for (unsigned i = 0; i < mcount; i++) {
				if (!m[i].live || m[i].r.owner != owner || !m[i].granted)
					continue;
				m[i].live = false;
				assert_int_equal(coh_lock_release(lt, owner, m[i].r.oid,
				                 m[i].r.offset, m[i].r.length,
				                 model_grant, NULL), 0);
				break;
			}
			if (rand() % 10 == 0) {
				unsigned n = 0;
				for (unsigned i = 0; i < mcount; i++)
					if (m[i].live && m[i].r.owner == owner) {
						m[i].live = false;
						n++;
					}
				assert_int_equal(coh_lock_release_owner(lt, owner,
				                 model_grant, NULL), n);
			}
		}
		/* L1 and L2 over the live model, in arrival order. */
		unsigned live = 0, granted = 0;
		for (unsigned i = 0; i < mcount; i++) {
			if (!m[i].live)
				continue;
			live++;
			granted += m[i].granted;
			bool blocked = false;
			for (unsigned j = 0; j < i; j++)
				if (m[j].live && conflicts(&m[j].r, &m[i].r))
					blocked = true;
			assert_int_equal(m[i].granted, !blocked);
		}
		assert_int_equal(coh_lock_used(lt), live);
		assert_int_equal(coh_lock_granted(lt), granted);
	}
	coh_lock_free(lt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shared_compatible_exclusive_not),
		cmocka_unit_test(test_fifo_writer_not_starved),
		cmocka_unit_test(test_owner_death_and_errors),
		cmocka_unit_test(test_random_against_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
