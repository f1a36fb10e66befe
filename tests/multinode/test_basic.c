/* test_basic.c — one object, three nodes: it is created on node 0 and
 * imported on nodes 1 and 2 through its sturdy reference (the import goes
 * to the home). An explicit write on any node is read on the others; a
 * store through a mapping on one node is seen by loads through mappings on
 * the others, both ways and on pages already faulted in; and a lock taken
 * on any node excludes every other node, so that a counter incremented
 * under it by processes on all three nodes reaches the exact total. */
#include "mn.h"

#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

#define NPAGES 8u
#define SIZE (NPAGES * PAGE)

static uint8_t buf[SIZE], want[SIZE];

/* Explicit write on one node, read on every node; pieces that cross page
 * boundaries, and pages the other nodes already hold. */
static void test_explicit_write_read_across_nodes(void **state)
{
	struct capdsm *c[3];
	uint32_t s[3];
	char ref[CAPDSM_REF_MAX];

	(void)state;
	for (unsigned k = 0; k < 3; k++)
		c[k] = mn_connect(k);
	s[0] = mn_object(c[0], SIZE, ref);
	s[1] = mn_import(c[1], ref);
	s[2] = mn_import(c[2], ref);

	/* A fresh object reads as zeros everywhere. */
	for (unsigned k = 0; k < 3; k++) {
		memset(buf, 0xee, SIZE);
		MN_OK(c[k], capdsm_read(c[k], s[k], 0, buf, SIZE));
		for (size_t i = 0; i < SIZE; i++)
			assert_int_equal(buf[i], 0);
	}
	/* Each node in turn writes a piece (crossing a page boundary); all
	 * three read the whole object and see every piece so far. */
	memset(want, 0, SIZE);
	for (unsigned round = 0; round < 6; round++) {
		unsigned w = round % 3;
		size_t off = (size_t)round * PAGE + PAGE / 2 + round * 8;
		size_t len = PAGE + 100;

		if (off + len > SIZE)
			len = SIZE - off;
		th_fill(want + off, len, 100 + round);
		MN_OK(c[w], capdsm_write(c[w], s[w], off, want + off, len));
		for (unsigned k = 0; k < 3; k++) {
			memset(buf, 0xee, SIZE);
			MN_OK(c[k], capdsm_read(c[k], s[k], 0, buf, SIZE));
			if (memcmp(buf, want, SIZE) != 0) {
				size_t i = 0;
				while (buf[i] == want[i])
					i++;
				print_message("round %u (writer node %u): node %u reads byte "
				              "%zu as 0x%02x, want 0x%02x\n", round, w, k, i,
				              buf[i], want[i]);
				fail();
			}
		}
	}
	/* Small writes and reads (a few bytes, inside one page). */
	for (unsigned k = 0; k < 3; k++) {
		uint32_t v = 0xabc00000u + k, r = 0;
		MN_OK(c[k], capdsm_write(c[k], s[k], 3 * PAGE + 4 * k, &v, sizeof v));
		for (unsigned j = 0; j < 3; j++) {
			MN_OK(c[j], capdsm_read(c[j], s[j], 3 * PAGE + 4 * k, &r,
			                        sizeof r));
			assert_int_equal(r, v);
		}
	}
	/* The imported capabilities describe the same object. */
	struct capdsm_cap_info ci;
	MN_OK(c[2], capdsm_cap_info(c[2], s[2], &ci));
	assert_int_equal(ci.kind, 1);
	assert_true(ci.size >= SIZE);
	MN_OK(c[0], capdsm_object_destroy(c[0], s[0]));
	for (unsigned k = 0; k < 3; k++)
		mn_close(c[k]);
}

/* A child on node k: imports, maps, then obeys one-byte commands on `cmd`
 * and answers on `ans`:
 *   'w' <seed>: fills page `seed % NPAGES` with pattern `seed` by stores;
 *   'c' <seed>: checks that page by loads; answers 'y' or 'n';
 *   'q': quits. */
static void mapper(unsigned k, const char *ref, int cmd, int ans)
{
	struct capdsm *c = mn_child_connect(k);
	uint32_t s = mn_child_import(c, ref);
	volatile uint8_t *p = mn_child_map(c, s, SIZE);

	TH_CHILD_CHECK(th_pipe_send(ans, 'r') == 0, 13);
	for (;;) {
		int op = th_pipe_recv(cmd, 20000);
		int seed;

		TH_CHILD_CHECK(op >= 0, 14);
		if (op == 'q')
			break;
		seed = th_pipe_recv(cmd, 5000);
		TH_CHILD_CHECK(seed >= 0, 15);
		volatile uint8_t *pg = p + (size_t)(seed % NPAGES) * PAGE;
		if (op == 'w') {
			for (size_t i = 0; i < PAGE; i++)
				pg[i] = th_pattern((uint32_t)seed, i);
			TH_CHILD_CHECK(th_pipe_send(ans, 'd') == 0, 16);
		} else {
			char ok = 'y';
			for (size_t i = 0; i < PAGE; i++)
				if (pg[i] != th_pattern((uint32_t)seed, i)) {
					fprintf(stderr, "node %u: page %d byte %zu = 0x%02x, "
					        "want 0x%02x\n", k, seed % NPAGES, i, pg[i],
					        th_pattern((uint32_t)seed, i));
					ok = 'n';
					break;
				}
			TH_CHILD_CHECK(th_pipe_send(ans, ok) == 0, 17);
		}
	}
	capdsm_close(c);
	_exit(0);
}

static void cmd2(int fd, char op, int seed)
{
	assert_int_equal(th_pipe_send(fd, op), 0);
	assert_int_equal(th_pipe_send(fd, (char)seed), 0);
}

/* Stores through a mapping on one node are seen by loads through mappings
 * on the other two — every direction, including pages the reader already
 * faulted in (they must have been invalidated). Explicit reads agree. */
static void test_mapped_stores_seen_on_other_nodes(void **state)
{
	struct capdsm *c0 = mn_connect(0);
	char ref[CAPDSM_REF_MAX];
	uint32_t s0;
	int cmd[3][2], ans[3][2];
	pid_t kid[3];

	(void)state;
	s0 = mn_object(c0, SIZE, ref);
	for (unsigned k = 0; k < 3; k++) {
		assert_int_equal(pipe(cmd[k]), 0);
		assert_int_equal(pipe(ans[k]), 0);
		kid[k] = th_fork(30);
		assert_true(kid[k] >= 0);
		if (kid[k] == 0)
			mapper(k, ref, cmd[k][0], ans[k][1]);
	}
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(th_pipe_recv(ans[k][0], 10000), 'r');

	/* Every ordered pair (writer w, others read), twice over the same
	 * pages so that the second round hits pages the readers hold. */
	int seed = 1;
	for (unsigned round = 0; round < 2; round++)
		for (unsigned w = 0; w < 3; w++)
			for (unsigned pg = 0; pg < 3; pg++, seed++) {
				int sd = (int)(pg + NPAGES * (unsigned)(seed % 16));
				cmd2(cmd[w][1], 'w', sd);
				assert_int_equal(th_pipe_recv(ans[w][0], 10000), 'd');
				for (unsigned r = 0; r < 3; r++) {
					cmd2(cmd[r][1], 'c', sd);
					int a = th_pipe_recv(ans[r][0], 10000);
					if (a != 'y') {
						print_message("writer node %u, page %u: node %u "
						              "answered %d\n", w, pg, r, a);
						th_cluster_dump_logs(&mn_c);
					}
					assert_int_equal(a, 'y');
				}
				/* And explicit reads on the home see it too. */
				MN_OK(c0, capdsm_read(c0, s0, (size_t)(sd % NPAGES) * PAGE,
				                      buf, PAGE));
				assert_int_equal(th_check(buf, PAGE, (uint32_t)sd), -1);
			}
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(th_pipe_send(cmd[k][1], 'q'), 0);
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(th_wait_exit(kid[k], 10000), 0);
	for (unsigned k = 0; k < 3; k++)
		for (int i = 0; i < 2; i++) {
			close(cmd[k][i]);
			close(ans[k][i]);
		}
	MN_OK(c0, capdsm_object_destroy(c0, s0));
	mn_close(c0);
}

/* The shared state of the counter test: the counter and an "inside" flag
 * that must be 0 whenever someone enters. */
struct ctr {
	uint64_t count;
	uint64_t inside;
	uint64_t entries[3];
};

#define INCS 150u /* per process */

/* A process on node k: lock, check nobody is inside, increment by a load
 * and a store through the mapping with a pause between them (to widen the
 * window a broken lock would show), unlock. */
static void incrementer(unsigned k, const char *ref, int go)
{
	struct capdsm *c = mn_child_connect(k);
	uint32_t s = mn_child_import(c, ref);
	volatile struct ctr *t = mn_child_map(c, s, PAGE);

	TH_CHILD_CHECK(th_pipe_recv(go, 10000) == 'g', 13);
	for (unsigned i = 0; i < INCS; i++) {
		int rc = capdsm_lock(c, s, 0, sizeof(struct ctr),
		                     CAPDSM_LOCK_EXCLUSIVE);
		if (rc)
			fprintf(stderr, "node %u: lock: %s\n", k, capdsm_strerror(c));
		TH_CHILD_CHECK(rc == 0, 14);
		TH_CHILD_CHECK(t->inside == 0, 15);
		t->inside = k + 1;
		uint64_t v = t->count;
		if (i % 8 == 0)
			sched_yield();
		t->count = v + 1;
		t->entries[k]++;
		TH_CHILD_CHECK(t->inside == k + 1, 16);
		t->inside = 0;
		rc = capdsm_unlock(c, s, 0, sizeof(struct ctr));
		TH_CHILD_CHECK(rc == 0, 17);
	}
	capdsm_close(c);
	_exit(0);
}

/* Processes on three nodes increment one counter under the object's lock;
 * the total is exact and no two were ever inside at once. A try-lock from
 * another node while it is held says -EAGAIN. */
static void test_lock_counter_across_nodes(void **state)
{
	struct capdsm *c[3];
	char ref[CAPDSM_REF_MAX];
	uint32_t s[3];
	struct ctr t;
	int go[2];
	pid_t kid[3];
	int64_t t0;

	(void)state;
	for (unsigned k = 0; k < 3; k++)
		c[k] = mn_connect(k);
	s[0] = mn_object(c[0], PAGE, ref);
	s[1] = mn_import(c[1], ref);
	s[2] = mn_import(c[2], ref);

	/* Exclusion across nodes, seen with try-locks. */
	MN_OK(c[1], capdsm_lock(c[1], s[1], 0, 64, CAPDSM_LOCK_EXCLUSIVE));
	MN_EXPECT(c[2], capdsm_lock(c[2], s[2], 0, 64,
	                            CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY),
	          -EAGAIN);
	MN_EXPECT(c[0], capdsm_lock(c[0], s[0], 32, 64,
	                            CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY),
	          -EAGAIN);
	/* A disjoint range is free. */
	MN_OK(c[2], capdsm_lock(c[2], s[2], 64, 64,
	                        CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY));
	MN_OK(c[2], capdsm_unlock(c[2], s[2], 64, 64));
	MN_OK(c[1], capdsm_unlock(c[1], s[1], 0, 64));
	/* Shared locks from two nodes coexist; exclusive waits for both. */
	MN_OK(c[1], capdsm_lock(c[1], s[1], 0, 64, CAPDSM_LOCK_SHARED));
	MN_OK(c[2], capdsm_lock(c[2], s[2], 0, 64,
	                        CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY));
	MN_EXPECT(c[0], capdsm_lock(c[0], s[0], 0, 64,
	                            CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY),
	          -EAGAIN);
	MN_OK(c[1], capdsm_unlock(c[1], s[1], 0, 64));
	MN_OK(c[2], capdsm_unlock(c[2], s[2], 0, 64));
	MN_OK(c[0], capdsm_lock(c[0], s[0], 0, 64,
	                        CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY));
	MN_OK(c[0], capdsm_unlock(c[0], s[0], 0, 64));

	/* The counter. */
	assert_int_equal(pipe(go), 0);
	for (unsigned k = 0; k < 3; k++) {
		kid[k] = th_fork(40);
		assert_true(kid[k] >= 0);
		if (kid[k] == 0)
			incrementer(k, ref, go[0]);
	}
	t0 = mn_now_us();
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(th_pipe_send(go[1], 'g'), 0);
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(th_wait_exit(kid[k], 35000), 0);
	print_message("%u locked increments from 3 nodes: %.1f ms (%.0f us "
	              "each)\n", 3 * INCS, (mn_now_us() - t0) / 1000.0,
	              (double)(mn_now_us() - t0) / (3 * INCS));
	for (unsigned k = 0; k < 3; k++) {
		MN_OK(c[k], capdsm_read(c[k], s[k], 0, &t, sizeof t));
		assert_int_equal(t.count, 3 * INCS);
		assert_int_equal(t.inside, 0);
		for (unsigned j = 0; j < 3; j++)
			assert_int_equal(t.entries[j], INCS);
	}
	close(go[0]);
	close(go[1]);
	MN_OK(c[0], capdsm_object_destroy(c[0], s[0]));
	for (unsigned k = 0; k < 3; k++)
		mn_close(c[k]);
}

static void stat_fn(const char *name, uint64_t v, void *arg)
{
	uint64_t *out = arg;

	if (!strcmp(name, "caps_used"))
		out[0] = v;
	else if (!strcmp(name, "data_objects_used"))
		out[1] = v;
	else if (!strcmp(name, "remote_frames_used"))
		out[2] = v;
}

/* caps_used, plus data objects and remote frames in use (proxies). */
static uint64_t caps_used_and(struct capdsm *c, uint64_t *objs,
                              uint64_t *frames)
{
	uint64_t v[3] = { 0 };
	MN_OK(c, capdsm_stats(c, stat_fn, v));
	if (objs)
		*objs = v[1];
	if (frames)
		*frames = v[2];
	return v[0];
}

static uint64_t caps_used(struct capdsm *c)
{
	return caps_used_and(c, NULL, NULL);
}

/* Imports hold records on the home (its c-list for the importing node)
 * and on the importer (the root the session's capability hangs under, and
 * the proxy object with its frames); all go once nothing derived from the
 * import is held: after a session closes, and after a drop. 300 import-and-close rounds, far more than
 * the test cluster's pools would survive if they leaked, leave both nodes
 * where they started. */
static void test_imports_are_released(void **state)
{
	struct capdsm *c0 = mn_connect(0), *c2 = mn_connect(2);
	char ref[CAPDSM_REF_MAX];

	(void)state;
	uint32_t s0 = mn_object(c0, PAGE, ref);
	uint64_t objs0, objs1, frames1;
	uint64_t home0 = caps_used(c0), imp0 = caps_used_and(c2, &objs0, NULL);
	for (int i = 0; i < 300; i++) {
		struct capdsm *c = mn_connect(2);
		uint32_t s = mn_import(c, ref);
		uint8_t b;
		MN_OK(c, capdsm_read(c, s, 0, &b, 1));
		if (i % 2) /* half of them drop it first */
			MN_OK(c, capdsm_drop(c, s));
		mn_close(c);
	}
	/* Drops travel to the home: give them a moment. */
	uint64_t home1 = 0;
	for (int t = 0; t < 100 && (home1 = caps_used(c0)) != home0; t++)
		mn_sleep_ms(20);
	uint64_t imp1 = caps_used_and(c2, &objs1, &frames1);
	print_message("caps_used: home %llu -> %llu, importer %llu -> %llu\n",
	              (unsigned long long)home0, (unsigned long long)home1,
	              (unsigned long long)imp0, (unsigned long long)imp1);
	assert_int_equal(home1, home0);
	assert_int_equal(imp1, imp0);
	/* The proxy went with the last import, and its frame with it. */
	assert_int_equal(objs1, objs0);
	assert_int_equal(frames1, 0);
	MN_OK(c0, capdsm_object_destroy(c0, s0));
	mn_close(c0);
	mn_close(c2);
}

/* On a node other than the home, a capability to the object can be used
 * but not turned into a sturdy reference (a reference names the object's
 * home) and cannot end the object (only its home does): both are refused
 * with EREMOTE, saying where, and the object is untouched. */
static void test_home_only_operations(void **state)
{
	struct capdsm *c0 = mn_connect(0), *c1 = mn_connect(1);
	char ref[CAPDSM_REF_MAX], out[CAPDSM_REF_MAX];
	uint32_t s0 = mn_object(c0, PAGE, ref), s1 = mn_import(c1, ref);
	uint32_t v = 0x1234abcd, r = 0;

	(void)state;
	MN_OK(c0, capdsm_write(c0, s0, 0, &v, sizeof v));
	MN_EXPECT(c1, capdsm_export(c1, s1, out, sizeof out), -EREMOTE);
	assert_non_null(strstr(capdsm_strerror(c1), "node 0"));
	MN_EXPECT(c1, capdsm_restrict_export(c1, s1, CAPDSM_R_READ, out,
	                                     sizeof out), -EREMOTE);
	MN_EXPECT(c1, capdsm_object_destroy(c1, s1), -EREMOTE);
	assert_non_null(strstr(capdsm_strerror(c1), "node 0"));
	MN_OK(c1, capdsm_read(c1, s1, 0, &r, sizeof r));
	assert_int_equal(r, v);
	MN_OK(c0, capdsm_read(c0, s0, 0, &r, sizeof r));
	assert_int_equal(r, v);
	MN_OK(c0, capdsm_object_destroy(c0, s0));
	mn_close(c0);
	mn_close(c1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		MN_TEST(test_explicit_write_read_across_nodes),
		MN_TEST(test_mapped_stores_seen_on_other_nodes),
		MN_TEST(test_lock_counter_across_nodes),
		MN_TEST(test_imports_are_released),
		MN_TEST(test_home_only_operations),
	};
	mn_nodes = 3;
	return MN_RUN("multinode.basic", tests, true);
}
