/* test_forged.c — capability indices a client makes up: an index far past
 * its c-list (999999), UINT32_MAX-1, a slot that was filled and dropped and
 * a slot never filled. Every operation on them is -EBADF, changes nothing,
 * and the real capabilities beside them keep working. */
#include "it.h"

#define NFORGED 4

struct counters {
	uint64_t objects, caps, sturdy, maps, locks, frames;
};

static void snap(struct capdsm *c, struct counters *k)
{
	k->objects = it_stat(c, "objects_used");
	k->caps = it_stat(c, "caps_used");
	k->sturdy = it_stat(c, "sturdy_used");
	k->maps = it_stat(c, "mappings_used");
	k->locks = it_stat(c, "locks_used");
	k->frames = it_stat(c, "frames_used");
}

static void same(const struct counters *a, const struct counters *b)
{
	assert_int_equal(a->objects, b->objects);
	assert_int_equal(a->caps, b->caps);
	assert_int_equal(a->sturdy, b->sturdy);
	assert_int_equal(a->maps, b->maps);
	assert_int_equal(a->locks, b->locks);
	assert_int_equal(a->frames, b->frames);
}

/* Every data-object operation on `slot` is -EBADF. */
static void all_ebadf(struct capdsm *c, uint32_t slot)
{
	char buf[64] = { 0 }, ref[CAPDSM_REF_MAX];
	uint32_t out = 12345;
	void *p = NULL;
	struct capdsm_cap_info ci;

	print_message("forged slot %u\n", slot);
	IT_EXPECT(c, capdsm_read(c, slot, 0, buf, sizeof buf), -EBADF);
	IT_EXPECT(c, capdsm_write(c, slot, 0, buf, sizeof buf), -EBADF);
	IT_EXPECT(c, capdsm_lock(c, slot, 0, 8, CAPDSM_LOCK_EXCLUSIVE), -EBADF);
	IT_EXPECT(c, capdsm_lock(c, slot, 0, 8,
	                         CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY), -EBADF);
	IT_EXPECT(c, capdsm_unlock(c, slot, 0, 8), -EBADF);
	IT_EXPECT(c, capdsm_map(c, capdsm_self(c), slot, 0, PAGE, CAPDSM_R_READ,
	                        &p), -EBADF);
	assert_null(p);
	IT_EXPECT(c, capdsm_map(c, capdsm_self(c), slot, 0, PAGE,
	                        CAPDSM_R_READ | CAPDSM_R_WRITE, &p), -EBADF);
	IT_EXPECT(c, capdsm_restrict(c, slot, CAPDSM_R_READ, &out), -EBADF);
	assert_int_equal(out, 12345);
	IT_EXPECT(c, capdsm_export(c, slot, ref, sizeof ref), -EBADF);
	IT_EXPECT(c, capdsm_cap_info(c, slot, &ci), -EBADF);
	IT_EXPECT(c, capdsm_revoke(c, slot), -EBADF);
	IT_EXPECT(c, capdsm_drop(c, slot), -EBADF);
	/* As the process capability of a map or a send, too. */
	IT_EXPECT(c, capdsm_send(c, 0, slot, CAPDSM_R_READ), -EBADF);
}

static void test_forged_indices_are_ebadf(void **state)
{
	struct capdsm *c = it_connect();
	uint32_t obj, gone, forged[NFORGED];
	struct counters before, after;
	uint8_t data[256], back[256];

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, 4 * PAGE, &obj));
	th_fill(data, sizeof data, 7);
	IT_OK(c, capdsm_write(c, obj, 0, data, sizeof data));
	/* A slot that held a capability and was emptied. */
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_READ, &gone));
	IT_OK(c, capdsm_drop(c, gone));
	/* Attach the pager with a real mapping first, so that map requests
	 * reach the capability check. */
	void *p = NULL;
	IT_OK(c, capdsm_map(c, capdsm_self(c), obj, 0, PAGE, CAPDSM_R_READ, &p));
	IT_OK(c, capdsm_unmap(c, p));

	forged[0] = 999999;
	forged[1] = UINT32_MAX - 1;
	forged[2] = gone;
	forged[3] = 255; /* in range (slots_per_client = 256), never filled */
	assert_true(forged[3] != obj && forged[3] != capdsm_self(c));
	snap(c, &before);
	for (int i = 0; i < NFORGED; i++)
		all_ebadf(c, forged[i]);
	snap(c, &after);
	same(&before, &after);

	/* The real capability still works, and its data is intact. */
	IT_OK(c, capdsm_read(c, obj, 0, back, sizeof back));
	assert_memory_equal(back, data, sizeof data);
	IT_OK(c, capdsm_lock(c, obj, 0, 8, CAPDSM_LOCK_EXCLUSIVE));
	IT_OK(c, capdsm_unlock(c, obj, 0, 8));
	it_close(c);
}

/* A slot index is only meaningful in its own c-list: another process's
 * valid slot numbers name nothing here. */
static void test_other_clients_slots_are_ebadf(void **state)
{
	struct capdsm *a = it_connect(), *b = it_connect();
	uint32_t s1, s2;
	char buf[16];

	(void)state;
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, PAGE, &s1));
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, PAGE, &s2));
	/* b's c-list holds only its process capability. */
	assert_true(s1 != capdsm_self(b) && s2 != capdsm_self(b));
	IT_EXPECT(b, capdsm_read(b, s1, 0, buf, sizeof buf), -EBADF);
	IT_EXPECT(b, capdsm_write(b, s2, 0, buf, sizeof buf), -EBADF);
	IT_EXPECT(b, capdsm_lock(b, s1, 0, 8, CAPDSM_LOCK_EXCLUSIVE), -EBADF);
	IT_OK(a, capdsm_read(a, s1, 0, buf, sizeof buf));
	it_close(b);
	it_close(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_forged_indices_are_ebadf),
		IT_TEST(test_other_clients_slots_are_ebadf),
	};
	return IT_RUN("integration.forged", tests, true);
}
