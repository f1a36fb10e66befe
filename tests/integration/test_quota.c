/* test_quota.c — space banks and fixed pools (design claim 1, caps.h C3,
 * C4): creating objects in a bank with a small object or byte limit ends
 * in -EDQUOT, and the failing call changes nothing (bank_info and the
 * node's counters are the same before and after); a sub-bank's charges
 * count against its parent; destroying a bank destroys what it paid for
 * (their capabilities then answer -EKEYREVOKED) and gives everything back;
 * a full page-frame pool is -ENOSPC, again with nothing changed. */
#include "it.h"

#include "caps.h" /* CAP_CHARGE_OBJECT */

#define OBJ_CHARGE(pages) ((uint64_t)CAP_CHARGE_OBJECT + (pages) * PAGE)

struct state {
	uint64_t objects, data_objects, caps, frames, sturdy, maps;
	struct capdsm_bank_info bank[3];
	int nbanks;
};

static void snap(struct capdsm *c, const uint32_t *banks, int nbanks,
                 struct state *s)
{
	memset(s, 0, sizeof *s);
	s->objects = it_stat(c, "objects_used");
	s->data_objects = it_stat(c, "data_objects_used");
	s->caps = it_stat(c, "caps_used");
	s->frames = it_stat(c, "frames_used");
	s->sturdy = it_stat(c, "sturdy_used");
	s->maps = it_stat(c, "mappings_used");
	s->nbanks = nbanks;
	for (int i = 0; i < nbanks; i++)
		IT_OK(c, capdsm_bank_info(c, banks[i], &s->bank[i]));
}

static void same(const struct state *a, const struct state *b)
{
	assert_int_equal(a->objects, b->objects);
	assert_int_equal(a->data_objects, b->data_objects);
	assert_int_equal(a->caps, b->caps);
	assert_int_equal(a->frames, b->frames);
	assert_int_equal(a->sturdy, b->sturdy);
	assert_int_equal(a->maps, b->maps);
	for (int i = 0; i < a->nbanks; i++) {
		assert_int_equal(a->bank[i].used_bytes, b->bank[i].used_bytes);
		assert_int_equal(a->bank[i].used_objects, b->bank[i].used_objects);
		assert_int_equal(a->bank[i].children, b->bank[i].children);
	}
}

/* Creates 1-page objects in `bank` until one fails; returns how many
 * were made and leaves the failing code in *rc and the state just before
 * the failing call in *before. */
static int fill_bank(struct capdsm *c, uint32_t bank, const uint32_t *banks,
                     int nbanks, struct state *before, int *rc, int max)
{
	int made = 0;

	for (;;) {
		uint32_t slot = 4242;
		snap(c, banks, nbanks, before);
		*rc = capdsm_object_create(c, bank, PAGE, &slot);
		if (*rc) {
			assert_int_equal(slot, 4242);
			return made;
		}
		if (++made > max)
			fail_msg("the bank's limit is not enforced (%d objects)", made);
	}
}

static void test_object_limit(void **state)
{
	struct capdsm *c = it_connect();
	struct state before, after;
	uint32_t b;
	int rc;

	(void)state;
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 3, &b));
	assert_int_equal(fill_bank(c, b, &b, 1, &before, &rc, 10), 3);
	assert_int_equal(rc, -EDQUOT);
	print_message("refused: %s\n", capdsm_strerror(c));
	snap(c, &b, 1, &after);
	same(&before, &after);
	assert_int_equal(after.bank[0].used_objects, 3);
	assert_int_equal(after.bank[0].used_bytes, 3 * OBJ_CHARGE(1));
	assert_int_equal(after.bank[0].limit_objects, 3);
	/* Still refused, still nothing changed; the session's own bank (no
	 * limit) still serves. */
	uint32_t s;
	IT_EXPECT(c, capdsm_object_create(c, b, 10 * PAGE, &s), -EDQUOT);
	snap(c, &b, 1, &after);
	same(&before, &after);
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, PAGE, &s));
	it_close(c);
}

static void test_byte_limit(void **state)
{
	struct capdsm *c = it_connect();
	struct state before, after;
	uint32_t b, b2, s;
	int rc;

	(void)state;
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK,
	                            2 * OBJ_CHARGE(1) + 1000, 0, &b));
	assert_int_equal(fill_bank(c, b, &b, 1, &before, &rc, 10), 2);
	assert_int_equal(rc, -EDQUOT);
	snap(c, &b, 1, &after);
	same(&before, &after);
	assert_int_equal(after.bank[0].used_bytes, 2 * OBJ_CHARGE(1));

	/* One object bigger than a whole (empty) bank: refused up front. */
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK, 8 * PAGE, 0, &b2));
	snap(c, &b2, 1, &before);
	IT_EXPECT(c, capdsm_object_create(c, b2, 100 * PAGE, &s), -EDQUOT);
	snap(c, &b2, 1, &after);
	same(&before, &after);
	assert_int_equal(after.bank[0].used_bytes, 0);
	IT_OK(c, capdsm_object_create(c, b2, PAGE, &s));
	it_close(c);
}

/* P (at most 4 objects) pays for sub-bank S's record; S has no limit of
 * its own, yet its objects stop when P is full. */
static void test_sub_bank_charges_parent(void **state)
{
	struct capdsm *c = it_connect();
	struct state before, after;
	uint32_t banks[2], s;
	int rc;

	(void)state;
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 4, &banks[0]));
	IT_OK(c, capdsm_bank_create(c, banks[0], 0, 0, &banks[1]));
	snap(c, banks, 2, &after);
	assert_int_equal(after.bank[0].used_objects, 1); /* S itself */
	assert_int_equal(after.bank[0].children, 1);
	assert_int_equal(after.bank[1].parent, after.bank[0].oid);

	assert_int_equal(fill_bank(c, banks[1], banks, 2, &before, &rc, 10), 3);
	assert_int_equal(rc, -EDQUOT);
	snap(c, banks, 2, &after);
	same(&before, &after);
	assert_int_equal(after.bank[1].used_objects, 3);
	assert_int_equal(after.bank[0].used_objects, 4);
	assert_int_equal(after.bank[0].used_bytes,
	                 after.bank[1].used_bytes + CAP_CHARGE_OBJECT);
	/* A new sub-bank is one more object for P: refused as well. */
	IT_EXPECT(c, capdsm_bank_create(c, banks[0], 0, 0, &s), -EDQUOT);
	IT_EXPECT(c, capdsm_bank_create(c, banks[1], 0, 0, &s), -EDQUOT);
	snap(c, banks, 2, &after);
	same(&before, &after);
	it_close(c);
}

/* G > P > S. Objects in P and S, one exported, one mapped. Destroying P
 * destroys S and the objects: every capability to them is revoked, the
 * mapping loses its capability, G is charged nothing any more and the
 * node's pools are back where they were. */
static void test_bank_destroy_destroys_its_objects(void **state)
{
	struct capdsm *c = it_connect();
	struct state base, gone;
	uint32_t g, p, s, o[3];
	char ref[CAPDSM_REF_MAX];
	uint8_t buf[64];

	(void)state;
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &g));
	/* Map once before the baseline, so that it is taken with the pager
	 * already attached and only the banks' own effects differ. */
	void *m = NULL;
	uint32_t keep;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, PAGE, &keep));
	IT_OK(c, capdsm_map(c, capdsm_self(c), keep, 0, PAGE, CAPDSM_R_READ, &m));
	IT_OK(c, capdsm_unmap(c, m));
	snap(c, &g, 1, &base);

	IT_OK(c, capdsm_bank_create(c, g, 0, 0, &p));
	IT_OK(c, capdsm_bank_create(c, p, 0, 0, &s));
	IT_OK(c, capdsm_object_create(c, p, 2 * PAGE, &o[0]));
	IT_OK(c, capdsm_object_create(c, s, 3 * PAGE, &o[1]));
	IT_OK(c, capdsm_object_create(c, s, PAGE, &o[2]));
	th_fill(buf, sizeof buf, 61);
	for (int i = 0; i < 3; i++)
		IT_OK(c, capdsm_write(c, o[i], 0, buf, sizeof buf));
	IT_OK(c, capdsm_export(c, o[1], ref, sizeof ref));
	IT_OK(c, capdsm_map(c, capdsm_self(c), o[2], 0, PAGE, CAPDSM_R_READ, &m));
	assert_int_equal(th_check(m, sizeof buf, 61), -1);

	struct capdsm_bank_info gi;
	IT_OK(c, capdsm_bank_info(c, g, &gi));
	assert_int_equal(gi.used_objects, 2 + 3); /* P, S and three objects */
	assert_int_equal(it_stat(c, "frames_used"), base.frames + 6);

	IT_OK(c, capdsm_bank_destroy(c, p));
	for (int i = 0; i < 3; i++) {
		IT_EXPECT(c, capdsm_read(c, o[i], 0, buf, sizeof buf), -EKEYREVOKED);
		IT_EXPECT(c, capdsm_write(c, o[i], 0, buf, sizeof buf), -EKEYREVOKED);
		IT_EXPECT(c, capdsm_lock(c, o[i], 0, 8, CAPDSM_LOCK_EXCLUSIVE),
		          -EKEYREVOKED);
		IT_EXPECT(c, capdsm_restrict(c, o[i], CAPDSM_R_READ, &keep),
		          -EKEYREVOKED);
	}
	uint32_t x;
	IT_EXPECT(c, capdsm_import(c, ref, &x), -EKEYREVOKED);
	struct capdsm_bank_info bi;
	IT_EXPECT(c, capdsm_bank_info(c, p, &bi), -EKEYREVOKED);
	IT_EXPECT(c, capdsm_bank_info(c, s, &bi), -EKEYREVOKED);
	IT_EXPECT(c, capdsm_object_create(c, s, PAGE, &x), -EKEYREVOKED);
	assert_int_equal(it_stat(c, "mappings_revoked"), 1);
	IT_OK(c, capdsm_unmap(c, m));

	snap(c, &g, 1, &gone);
	same(&base, &gone);
	assert_int_equal(gone.bank[0].used_objects, 0);
	assert_int_equal(gone.bank[0].used_bytes, 0);
	/* G can spend again up to where it was. */
	IT_OK(c, capdsm_object_create(c, g, PAGE, &x));
	it_close(c);
}

static const struct th_config small_frames = {
	.objects = 64, .caps = 4096, .clients = 16, .slots_per_client = 256,
	.mappings = 64, .locks = 256, .sturdy = 256, .frames = 16,
};

/* frames = 16: 12 pages fit, 8 more do not (-ENOSPC, nothing changed),
 * the last 4 fit exactly, then even one byte does not. */
static void test_frame_pool_full(void **state)
{
	struct capdsm *c = it_connect();
	struct state before, after;
	uint32_t b, s = 4242;

	(void)state;
	assert_int_equal(it_stat(c, "frames_max"), 16);
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &b));
	IT_OK(c, capdsm_object_create(c, b, 12 * PAGE, &s));
	snap(c, &b, 1, &before);
	s = 4242;
	IT_EXPECT(c, capdsm_object_create(c, b, 8 * PAGE, &s), -ENOSPC);
	print_message("refused: %s\n", capdsm_strerror(c));
	assert_int_equal(s, 4242);
	snap(c, &b, 1, &after);
	same(&before, &after);
	assert_int_equal(after.frames, 12);

	IT_OK(c, capdsm_object_create(c, b, 4 * PAGE, &s));
	assert_int_equal(it_stat(c, "frames_used"), 16);
	snap(c, &b, 1, &before);
	IT_EXPECT(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, 1, &s),
	          -ENOSPC);
	snap(c, &b, 1, &after);
	same(&before, &after);
	/* Frames come back when their bank is destroyed. */
	IT_OK(c, capdsm_bank_destroy(c, b));
	assert_int_equal(it_stat(c, "frames_used"), 0);
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, 16 * PAGE, &s));
	it_close(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_object_limit),
		IT_TEST(test_byte_limit),
		IT_TEST(test_sub_bank_charges_parent),
		IT_TEST(test_bank_destroy_destroys_its_objects),
		IT_TEST_CFG(test_frame_pool_full, &small_frames),
	};
	return IT_RUN("integration.quota", tests, true);
}
