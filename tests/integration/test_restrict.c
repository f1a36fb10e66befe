/* test_restrict.c — rights only shrink (caps.h C1): a read-only
 * restriction cannot be widened again, cannot write, cannot be mapped
 * writable; a read-only mapping shows the data, and a store through it
 * kills the storing process with SIGSEGV without changing the object. */
#include "it.h"

#include <signal.h>
#include <sys/wait.h>

#define NPAGES 4u
#define SIZE (NPAGES * PAGE)

static void test_restrict_cannot_widen(void **state)
{
	struct capdsm *c = it_connect();
	struct capdsm_cap_info ci;
	uint32_t obj, ro, rl, x;
	uint8_t data[SIZE], back[SIZE];

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 51);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_READ, &ro));
	IT_OK(c, capdsm_cap_info(c, ro, &ci));
	assert_int_equal(ci.rights, CAPDSM_R_READ);
	assert_int_equal(ci.depth, 1);

	uint64_t caps0 = it_stat(c, "caps_used");
	x = 777;
	IT_EXPECT(c, capdsm_restrict(c, ro, CAPDSM_R_READ | CAPDSM_R_WRITE, &x),
	          -EPERM);
	IT_EXPECT(c, capdsm_restrict(c, ro, CAPDSM_R_ALL, &x), -EPERM);
	IT_EXPECT(c, capdsm_restrict(c, ro, CAPDSM_R_GRANT, &x), -EPERM);
	assert_int_equal(x, 777);
	assert_int_equal(it_stat(c, "caps_used"), caps0); /* nothing made */

	/* What the restriction lacks, it cannot do. */
	uint8_t junk[128];
	memset(junk, 0xee, sizeof junk);
	IT_EXPECT(c, capdsm_write(c, ro, 0, junk, sizeof junk), -EPERM);
	IT_EXPECT(c, capdsm_lock(c, ro, 0, 8, CAPDSM_LOCK_SHARED), -EPERM);
	char ref[CAPDSM_REF_MAX];
	IT_EXPECT(c, capdsm_export(c, ro, ref, sizeof ref), -EPERM);
	void *p = NULL;
	IT_EXPECT(c, capdsm_map(c, capdsm_self(c), ro, 0, SIZE, CAPDSM_R_READ, &p),
	          -EPERM); /* no map right */
	/* What it has, it can; a narrower one still works. */
	IT_OK(c, capdsm_read(c, ro, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE);
	IT_OK(c, capdsm_restrict(c, ro, CAPDSM_R_READ, &x));
	IT_OK(c, capdsm_cap_info(c, x, &ci));
	assert_int_equal(ci.depth, 2);

	/* Widening one step down the chain is refused the same way. */
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_READ | CAPDSM_R_LOCK, &rl));
	IT_EXPECT(c, capdsm_restrict(c, rl, CAPDSM_R_READ | CAPDSM_R_MAP, &x),
	          -EPERM);
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE); /* the refused write changed nothing */
	it_close(c);
}

/* read+map (no write): mapping writable is -EPERM; mapping read-only works
 * and shows the data; a child that maps it read-only and stores into it
 * dies of SIGSEGV; the object is unchanged and the parent's own read-only
 * mapping still reads it. */
static void test_read_only_mapping(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj, rm;
	uint8_t data[SIZE], back[SIZE];
	int up[2], st = 0;
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 52);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_READ | CAPDSM_R_MAP |
	                                  CAPDSM_R_GRANT, &rm));
	IT_OK(c, capdsm_export(c, rm, ref, sizeof ref));

	uint64_t maps0 = it_stat(c, "mappings_used");
	void *p = NULL;
	IT_EXPECT(c, capdsm_map(c, capdsm_self(c), rm, 0, SIZE,
	                        CAPDSM_R_READ | CAPDSM_R_WRITE, &p), -EPERM);
	assert_null(p);
	assert_int_equal(it_stat(c, "mappings_used"), maps0);
	IT_OK(c, capdsm_map(c, capdsm_self(c), rm, 0, SIZE, CAPDSM_R_READ, &p));
	assert_int_equal(th_check(p, SIZE, 52), -1);
	assert_int_equal(pipe(up), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		volatile uint8_t *q;
		void *vq = NULL;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_map(ck, capdsm_self(ck), s, 0, SIZE,
		                          CAPDSM_R_READ | CAPDSM_R_WRITE, &vq) ==
		                       -EPERM, 12);
		TH_CHILD_CHECK(capdsm_map(ck, capdsm_self(ck), s, 0, SIZE,
		                          CAPDSM_R_READ, &vq) == 0, 13);
		q = vq;
		TH_CHILD_CHECK(th_check((const void *)q, SIZE, 52) == -1, 14);
		TH_CHILD_CHECK(th_pipe_send(up[1], 'r') == 0, 15);
		q[2 * PAGE + 3] = 0x99; /* must fault */
		fprintf(stderr, "child: a store through a read-only mapping "
		        "did not fault\n");
		_exit(0);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'r');
	assert_int_equal(th_wait(kid, 10000, &st), 0);
	if (!WIFSIGNALED(st))
		print_message("child exited with %d\n", WEXITSTATUS(st));
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGSEGV);

	/* Still readable, still the same data, in the mapping and the object. */
	assert_int_equal(th_check(p, SIZE, 52), -1);
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE);
	IT_OK(c, capdsm_unmap(c, p));
	close(up[0]);
	close(up[1]);
	it_close(c);
}

/* A transfer cannot widen either: sending read-only rights as read-write
 * is -EPERM, and a receiver of read-only rights cannot write. */
static void test_transfer_cannot_widen(void **state)
{
	struct capdsm *a = it_connect(), *b = it_connect();
	char pref[CAPDSM_REF_MAX];
	uint32_t obj, ro, bproc, got;
	uint8_t buf[32];

	(void)state;
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(a, capdsm_restrict(a, obj, CAPDSM_R_READ | CAPDSM_R_GRANT, &ro));
	IT_OK(b, capdsm_export(b, capdsm_self(b), pref, sizeof pref));
	IT_OK(a, capdsm_import(a, pref, &bproc));
	IT_EXPECT(a, capdsm_send(a, ro, bproc, CAPDSM_R_READ | CAPDSM_R_WRITE),
	          -EPERM);
	IT_OK(a, capdsm_send(a, ro, bproc, CAPDSM_R_READ));
	IT_OK(b, capdsm_recv(b, &got));
	IT_OK(b, capdsm_read(b, got, 0, buf, sizeof buf));
	memset(buf, 1, sizeof buf);
	IT_EXPECT(b, capdsm_write(b, got, 0, buf, sizeof buf), -EPERM);
	IT_EXPECT(b, capdsm_restrict(b, got, CAPDSM_R_READ | CAPDSM_R_GRANT, &obj),
	          -EPERM);
	it_close(b);
	it_close(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_restrict_cannot_widen),
		IT_TEST(test_read_only_mapping),
		IT_TEST(test_transfer_cannot_widen),
	};
	return IT_RUN("integration.restrict", tests, true);
}
