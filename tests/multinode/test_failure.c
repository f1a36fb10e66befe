/* test_failure.c — SIGKILL of a node (heartbeat 50 ms, dead after 500 ms):
 *
 *  - a node that is not the home dies while one of its processes holds a
 *    lock that processes on two other nodes (one of them the home) wait
 *    for: the home releases the dead node's locks and the waiters get the
 *    lock in turn, within a bound, and the object still works;
 *  - the home of an object dies: processes on the other nodes get clear
 *    errors (-EHOSTDOWN) for read, write, lock and import, and SIGBUS for
 *    a fault their node cannot serve, never a hang; objects homed on the
 *    surviving nodes read back exactly, also pages the dead node had
 *    copies of, and stay writable;
 *  - the node that holds a page for writing dies: the others go on with
 *    the home's copy of it, without a hang.
 */
#include "mn.h"

#include <signal.h>
#include <sys/wait.h>

#define NPAGES 4u
#define SIZE (NPAGES * PAGE)
#define DETECT_MS 5000 /* far above dead_after_ms (500) */

static uint8_t buf[SIZE], want[SIZE];

/* ---- a lock holder dies with its node ---- */

/* On node k: import, wait for 'g', lock [0, 64) exclusively (waiting),
 * then report how it went on `ans`: 'L' granted (after which it checks
 * and bumps the counter at 64 under the lock, unlocks and sends 'U'),
 * or 'E' with the error's reason on stderr. */
static void waiter(unsigned k, const char *ref, int go, int ans)
{
	struct capdsm *c = mn_child_connect(k);
	uint32_t s = mn_child_import(c, ref);
	uint64_t v = 0;

	TH_CHILD_CHECK(th_pipe_send(ans, 'r') == 0, 13);
	TH_CHILD_CHECK(th_pipe_recv(go, 10000) == 'g', 14);
	int rc = capdsm_lock(c, s, 0, 64, CAPDSM_LOCK_EXCLUSIVE);
	if (rc) {
		fprintf(stderr, "node %u: lock: %d %s\n", k, rc, capdsm_strerror(c));
		TH_CHILD_CHECK(th_pipe_send(ans, 'E') == 0, 15);
		_exit(1);
	}
	TH_CHILD_CHECK(th_pipe_send(ans, 'L') == 0, 16);
	TH_CHILD_CHECK(capdsm_read(c, s, 64, &v, sizeof v) == 0, 17);
	v++;
	TH_CHILD_CHECK(capdsm_write(c, s, 64, &v, sizeof v) == 0, 18);
	TH_CHILD_CHECK(capdsm_unlock(c, s, 0, 64) == 0, 19);
	TH_CHILD_CHECK(th_pipe_send(ans, 'U') == 0, 20);
	capdsm_close(c);
	_exit(0);
}

static void test_lock_holder_node_dies(void **state)
{
	struct capdsm *c0;
	char ref[CAPDSM_REF_MAX];
	uint32_t s0;
	int hold[2], go[2], ans[3][2];
	pid_t holder, w[3];
	uint64_t v;

	(void)state;
	assert_int_equal(mn_start(3, NULL), 0);
	c0 = mn_connect(0);
	s0 = mn_object(c0, PAGE, ref);
	v = 1000;
	MN_OK(c0, capdsm_write(c0, s0, 64, &v, sizeof v));

	/* The holder, on node 2: takes the lock and keeps it. */
	assert_int_equal(pipe(hold), 0);
	holder = th_fork(30);
	assert_true(holder >= 0);
	if (holder == 0) {
		struct capdsm *c = mn_child_connect(2);
		uint32_t s = mn_child_import(c, ref);
		TH_CHILD_CHECK(capdsm_lock(c, s, 0, 64, CAPDSM_LOCK_EXCLUSIVE) == 0,
		               13);
		TH_CHILD_CHECK(th_pipe_send(hold[1], 'h') == 0, 14);
		for (;;)
			pause();
	}
	assert_int_equal(th_pipe_recv(hold[0], 10000), 'h');

	/* Waiters on node 1 and on the home, node 0. */
	assert_int_equal(pipe(go), 0);
	for (unsigned k = 0; k < 2; k++) {
		assert_int_equal(pipe(ans[k]), 0);
		w[k] = th_fork(30);
		assert_true(w[k] >= 0);
		if (w[k] == 0)
			waiter(k == 0 ? 1 : 0, ref, go[0], ans[k][1]);
		assert_int_equal(th_pipe_recv(ans[k][0], 10000), 'r');
	}
	for (unsigned k = 0; k < 2; k++)
		assert_int_equal(th_pipe_send(go[1], 'g'), 0);
	/* They wait: nobody has it but the holder. */
	mn_sleep_ms(300);
	MN_EXPECT(c0, capdsm_lock(c0, s0, 0, 64,
	                          CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY),
	          -EAGAIN);
	for (unsigned k = 0; k < 2; k++)
		assert_int_equal(th_pipe_recv(ans[k][0], 10), -ETIMEDOUT);

	/* The holder's node dies. */
	int64_t t0 = mn_now_us();
	assert_int_equal(th_cluster_kill(&mn_c, 2), 0);
	/* Both waiters get the lock, one after the other, within the bound. */
	for (unsigned k = 0; k < 2; k++) {
		int a = th_pipe_recv(ans[k][0], DETECT_MS);
		if (a != 'L') {
			print_message("waiter %u answered %d instead of getting the "
			              "lock\n", k, a);
			th_cluster_dump_logs(&mn_c);
		}
		assert_int_equal(a, 'L');
		assert_int_equal(th_pipe_recv(ans[k][0], DETECT_MS), 'U');
	}
	print_message("both waiters had the lock %.0f ms after the kill\n",
	              (mn_now_us() - t0) / 1000.0);
	for (unsigned k = 0; k < 2; k++)
		assert_int_equal(th_wait_exit(w[k], 5000), 0);
	/* The holder lost its daemon: its calls fail now, it is killed. */
	kill(holder, SIGKILL);
	th_wait(holder, 5000, NULL);

	/* The object works and holds both increments. */
	MN_OK(c0, capdsm_read(c0, s0, 64, &v, sizeof v));
	assert_int_equal(v, 1002);
	MN_OK(c0, capdsm_lock(c0, s0, 0, 64,
	                      CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY));
	MN_OK(c0, capdsm_unlock(c0, s0, 0, 64));
	struct capdsm *c1 = mn_connect(1);
	uint32_t s1 = mn_import(c1, ref);
	MN_OK(c1, capdsm_lock(c1, s1, 0, 64, CAPDSM_LOCK_EXCLUSIVE));
	MN_OK(c1, capdsm_read(c1, s1, 64, &v, sizeof v));
	assert_int_equal(v, 1002);
	MN_OK(c1, capdsm_unlock(c1, s1, 0, 64));
	/* Node 1 sees node 2 as down: a clear error, not a wait. */
	assert_int_equal(th_cluster_reachable(&mn_c, 1, 2), -EHOSTDOWN);
	for (int i = 0; i < 2; i++) {
		close(hold[i]);
		close(go[i]);
		close(ans[0][i]);
		close(ans[1][i]);
	}
}

/* ---- the home dies ---- */

/* On node k: maps the object, reads page 0 (a READ copy), says 'm', then
 * on 'g' does `what`: 'w' stores into page 0 (needs the dead home), 'r'
 * loads page 2 (never fetched). Either must end in SIGBUS. */
static void orphan(unsigned k, const char *ref, char what, int go, int ans)
{
	struct capdsm *c = mn_child_connect(k);
	uint32_t s = mn_child_import(c, ref);
	volatile uint8_t *p = mn_child_map(c, s, SIZE);
	uint8_t sink = p[0];

	(void)sink;
	TH_CHILD_CHECK(th_pipe_send(ans, 'm') == 0, 13);
	TH_CHILD_CHECK(th_pipe_recv(go, 10000) == 'g', 14);
	if (what == 'w')
		p[0] = 0x5a;
	else
		sink = p[2 * PAGE];
	_exit(0); /* the access went through: wrong */
}

/* A call that must fail with -EHOSTDOWN, and soon. */
#define EXPECT_DOWN(c, expr)                                                  \
	do {                                                                      \
		int64_t t_ = mn_now_us();                                             \
		MN_EXPECT(c, expr, -EHOSTDOWN);                                       \
		assert_true(mn_now_us() - t_ < DETECT_MS * 1000);                     \
	} while (0)

static void test_home_dies(void **state)
{
	struct capdsm *c[3];
	char ra[CAPDSM_REF_MAX], rb[CAPDSM_REF_MAX], rc2[CAPDSM_REF_MAX];
	uint32_t a[3], b[3], cc[3];
	int go[2], ans[2][2];
	pid_t kid[2];

	(void)state;
	assert_int_equal(mn_start(3, NULL), 0);
	for (unsigned k = 0; k < 3; k++)
		c[k] = mn_connect(k);
	/* A homed on node 0 (the victim), B on node 1, C on node 2. */
	a[0] = mn_object(c[0], SIZE, ra);
	b[1] = mn_object(c[1], SIZE, rb);
	cc[2] = mn_object(c[2], SIZE, rc2);
	for (unsigned k = 0; k < 3; k++) {
		if (k != 0)
			a[k] = mn_import(c[k], ra);
		if (k != 1)
			b[k] = mn_import(c[k], rb);
		if (k != 2)
			cc[k] = mn_import(c[k], rc2);
	}
	/* Data everywhere, written from every node: page p of B and C by
	 * node p % 3 (node 0 included), read back by their homes (so that
	 * the homes hold it), then read by node 0 (so that the dead node
	 * will have been a sharer of every page). */
	th_fill(want, SIZE, 77);
	for (unsigned p = 0; p < NPAGES; p++) {
		unsigned w = p % 3;
		MN_OK(c[w], capdsm_write(c[w], b[w], (size_t)p * PAGE,
		                         want + (size_t)p * PAGE, PAGE));
		MN_OK(c[w], capdsm_write(c[w], cc[w], (size_t)p * PAGE,
		                         want + (size_t)p * PAGE, PAGE));
	}
	MN_OK(c[1], capdsm_read(c[1], b[1], 0, buf, SIZE));
	assert_int_equal(th_check(buf, SIZE, 77), -1);
	MN_OK(c[2], capdsm_read(c[2], cc[2], 0, buf, SIZE));
	assert_int_equal(th_check(buf, SIZE, 77), -1);
	MN_OK(c[0], capdsm_read(c[0], b[0], 0, buf, SIZE));
	MN_OK(c[0], capdsm_read(c[0], cc[0], 0, buf, SIZE));
	memset(want, 0x11, SIZE);
	MN_OK(c[0], capdsm_write(c[0], a[0], 0, want, SIZE));

	/* Processes on nodes 1 and 2 map A and hold a copy of its page 0. */
	assert_int_equal(pipe(go), 0);
	for (unsigned k = 0; k < 2; k++) {
		assert_int_equal(pipe(ans[k]), 0);
		kid[k] = th_fork(30);
		assert_true(kid[k] >= 0);
		if (kid[k] == 0)
			orphan(k + 1, ra, k == 0 ? 'w' : 'r', go[0], ans[k][1]);
		assert_int_equal(th_pipe_recv(ans[k][0], 10000), 'm');
	}

	/* The home of A dies. The calls below start before anyone can have
	 * noticed: they must wait for the failure detector, then fail. */
	assert_int_equal(th_cluster_kill(&mn_c, 0), 0);
	mn_close(c[0]);
	int64_t t0 = mn_now_us();
	EXPECT_DOWN(c[1], capdsm_read(c[1], a[1], PAGE, buf, 64));
	print_message("a read through node 1 failed %.0f ms after the kill: %s\n",
	              (mn_now_us() - t0) / 1000.0, capdsm_strerror(c[1]));
	for (unsigned k = 1; k < 3; k++) {
		EXPECT_DOWN(c[k], capdsm_read(c[k], a[k], 3 * PAGE, buf, 64));
		EXPECT_DOWN(c[k], capdsm_write(c[k], a[k], 3 * PAGE, buf, 64));
		EXPECT_DOWN(c[k], capdsm_lock(c[k], a[k], 0, 64,
		                              CAPDSM_LOCK_EXCLUSIVE));
		EXPECT_DOWN(c[k], capdsm_lock(c[k], a[k], 0, 64,
		                              CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY));
		uint32_t slot;
		EXPECT_DOWN(c[k], capdsm_import(c[k], ra, &slot));
	}
	/* Faults that need the home end in SIGBUS. */
	for (unsigned k = 0; k < 2; k++)
		assert_int_equal(th_pipe_send(go[1], 'g'), 0);
	for (unsigned k = 0; k < 2; k++) {
		int rc = th_wait_exit(kid[k], DETECT_MS);
		if (rc != -1000 - SIGBUS)
			print_message("process on node %u (%s) ended with %d, "
			              "expected SIGBUS (%d)\n", k + 1,
			              k == 0 ? "store to a page held for reading"
			                     : "load of a page never fetched",
			              rc, -1000 - SIGBUS);
		assert_int_equal(rc, -1000 - SIGBUS);
	}

	/* B and C, homed on the survivors, are intact from both survivors,
	 * and stay writable (the dead sharer holds nothing up). */
	th_fill(want, SIZE, 77);
	for (unsigned k = 1; k < 3; k++) {
		memset(buf, 0, SIZE);
		MN_OK(c[k], capdsm_read(c[k], b[k], 0, buf, SIZE));
		assert_int_equal(th_check(buf, SIZE, 77), -1);
		memset(buf, 0, SIZE);
		MN_OK(c[k], capdsm_read(c[k], cc[k], 0, buf, SIZE));
		assert_int_equal(th_check(buf, SIZE, 77), -1);
	}
	th_fill(want, SIZE, 78);
	MN_OK(c[2], capdsm_write(c[2], b[2], 0, want, SIZE));
	MN_OK(c[1], capdsm_write(c[1], cc[1], 0, want, SIZE));
	for (unsigned k = 1; k < 3; k++) {
		MN_OK(c[k], capdsm_read(c[k], b[k], 0, buf, SIZE));
		assert_int_equal(th_check(buf, SIZE, 78), -1);
		MN_OK(c[k], capdsm_read(c[k], cc[k], 0, buf, SIZE));
		assert_int_equal(th_check(buf, SIZE, 78), -1);
		MN_OK(c[k], capdsm_lock(c[k], cc[k], 0, 64, CAPDSM_LOCK_EXCLUSIVE));
		MN_OK(c[k], capdsm_unlock(c[k], cc[k], 0, 64));
	}
	for (int i = 0; i < 2; i++) {
		close(go[i]);
		close(ans[0][i]);
		close(ans[1][i]);
	}
}

/* ---- the owner of a page dies ---- */

/* Node 2 holds page 0 of an object homed on node 0 for writing (a process
 * there stored into it) when it dies: the others neither hang nor fail on
 * that page — the home's copy stands (the dead node's unwritten stores are
 * gone, by design) — and every page the home had is intact. */
static void test_page_owner_dies(void **state)
{
	struct capdsm *c0, *c1;
	char ref[CAPDSM_REF_MAX];
	uint32_t s0, s1;
	int ans[2];
	pid_t kid;

	(void)state;
	assert_int_equal(mn_start(3, NULL), 0);
	c0 = mn_connect(0);
	c1 = mn_connect(1);
	s0 = mn_object(c0, SIZE, ref);
	s1 = mn_import(c1, ref);
	th_fill(want, SIZE, 90);
	MN_OK(c1, capdsm_write(c1, s1, 0, want, SIZE));
	MN_OK(c0, capdsm_read(c0, s0, 0, buf, SIZE));
	assert_int_equal(th_check(buf, SIZE, 90), -1);

	assert_int_equal(pipe(ans), 0);
	kid = th_fork(30);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *c = mn_child_connect(2);
		uint32_t s = mn_child_import(c, ref);
		volatile uint8_t *p = mn_child_map(c, s, SIZE);
		for (size_t i = 0; i < PAGE; i++)
			p[i] = 0xd0; /* node 2 owns page 0 now */
		TH_CHILD_CHECK(th_pipe_send(ans[1], 'w') == 0, 13);
		for (;;)
			pause();
	}
	assert_int_equal(th_pipe_recv(ans[0], 10000), 'w');
	assert_int_equal(th_cluster_kill(&mn_c, 2), 0);
	kill(kid, SIGKILL);
	th_wait(kid, 5000, NULL);

	/* Page 0: the home's copy — what was written before node 2 took it
	 * (its unwritten stores are lost), or all of node 2's stores if they
	 * had reached the home — never a mix, and without a hang; the other
	 * pages exactly as written. */
	for (unsigned k = 0; k < 2; k++) {
		struct capdsm *c = k ? c1 : c0;
		int64_t t0 = mn_now_us();
		MN_OK(c, capdsm_read(c, k ? s1 : s0, 0, buf, SIZE));
		assert_true(mn_now_us() - t0 < DETECT_MS * 1000);
		bool old = th_check(buf, PAGE, 90) == -1, theirs = true;
		for (size_t i = 0; i < PAGE; i++)
			theirs = theirs && buf[i] == 0xd0;
		if (!old && !theirs)
			print_message("node %u reads a page 0 that is neither the home's "
			              "copy nor the dead owner's\n", k);
		assert_true(old || theirs);
		assert_memory_equal(buf + PAGE, want + PAGE, SIZE - PAGE);
	}
	/* And it stays writable from both. */
	th_fill(want, SIZE, 91);
	MN_OK(c0, capdsm_write(c0, s0, 0, want, PAGE));
	MN_OK(c1, capdsm_write(c1, s1, PAGE, want + PAGE, SIZE - PAGE));
	MN_OK(c1, capdsm_read(c1, s1, 0, buf, SIZE));
	assert_int_equal(th_check(buf, SIZE, 91), -1);
	MN_OK(c0, capdsm_read(c0, s0, 0, buf, SIZE));
	assert_int_equal(th_check(buf, SIZE, 91), -1);
	close(ans[0]);
	close(ans[1]);
}

/* Membership is crash-stop: node 1 is killed, node 0 declares it dead,
 * then node 1's daemon is started again (a new incarnation). It connects
 * and imports, but its page requests are refused with a clear error at
 * once (ESTALE) — before this they were dropped and its reads hung. */
static void test_restarted_node_is_refused_not_hung(void **state)
{
	char ref[CAPDSM_REF_MAX];
	uint8_t small[16];
	(void)state;

	assert_int_equal(mn_start(2, NULL), 0);
	struct capdsm *c0 = mn_connect(0);
	uint32_t s0 = mn_object(c0, SIZE, ref);
	MN_OK(c0, capdsm_write(c0, s0, 0, "still here", 10));
	assert_int_equal(th_cluster_kill(&mn_c, 1), 0);
	assert_int_equal(th_cluster_wait_down(&mn_c, 0, 1, 10000), 0);
	assert_int_equal(th_cluster_start_node(&mn_c, 1), 0);
	/* The restarted node comes up at the transport (both ways). */
	int reach = -1;
	for (int i = 0; i < 100 && reach != 0; i++) {
		reach = th_cluster_reachable(&mn_c, 1, 0);
		if (reach)
			usleep(100000);
	}
	assert_int_equal(reach, 0);
	struct capdsm *c1 = mn_connect(1);
	uint32_t s1 = mn_import(c1, ref);
	int64_t t0 = mn_now_us();
	int rc = capdsm_read(c1, s1, 0, small, sizeof small);
	print_message("read on the restarted node: %d (%s) after %lld ms\n", rc,
	              capdsm_strerror(c1),
	              (long long)((mn_now_us() - t0) / 1000));
	assert_int_equal(rc, -ESTALE);
	assert_non_null(strstr(capdsm_strerror(c1), "crash-stop"));
	assert_int_equal(th_wait_log(&mn_c.node[0],
	                             "msg=\"a node declared dead restarted\"",
	                             3000), 0);
	/* The home itself is unharmed. */
	MN_OK(c0, capdsm_read(c0, s0, 0, small, 10));
	assert_memory_equal(small, "still here", 10);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		MN_OWN_TEST(test_lock_holder_node_dies),
		MN_OWN_TEST(test_home_dies),
		MN_OWN_TEST(test_page_owner_dies),
		MN_OWN_TEST(test_restarted_node_is_refused_not_hung),
	};
	mn_guard_seconds = 40;
	return MN_RUN("multinode.failure", tests, false);
}
