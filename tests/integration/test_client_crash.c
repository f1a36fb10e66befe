/* test_client_crash.c — a client killed with SIGKILL while it holds an
 * exclusive lock and a writable mapping: the process waiting for the lock
 * gets it, the daemon stays healthy (a new client connects and works, its
 * mapping count and descriptors are back where they were), and the data
 * the killed client stored before it died is intact. */
#include "it.h"

#include <signal.h>
#include <sys/wait.h>

#define NPAGES 4u
#define SIZE (NPAGES * PAGE)

static int fd_count_settles(int want, int timeout_ms)
{
	int n = -1;

	for (int waited = 0; waited <= timeout_ms; waited += 5) {
		n = th_daemon_fd_count(&it_d);
		if (n == want)
			return n;
		usleep(5000);
	}
	return n;
}

static void test_killed_lock_holder(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	int ev[2], st = 0;
	pid_t a, b;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	uint64_t maps0 = it_stat(c, "mappings_used");
	uint64_t sessions0 = it_stat(c, "sessions_used");
	int fds0 = th_daemon_fd_count(&it_d);
	assert_true(fds0 > 0);
	assert_int_equal(pipe(ev), 0);

	a = th_fork(25);
	assert_true(a >= 0);
	if (a == 0) {
		struct capdsm *ca = NULL;
		void *p;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ca) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ca, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_map(ca, capdsm_self(ca), s, 0, SIZE,
		                          CAPDSM_R_READ | CAPDSM_R_WRITE, &p) == 0,
		               12);
		TH_CHILD_CHECK(capdsm_lock(ca, s, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE) == 0,
		               13);
		th_fill(p, SIZE, 71); /* under the lock, through the mapping */
		TH_CHILD_CHECK(th_pipe_send(ev[1], 'L') == 0, 14);
		for (;;)
			pause();
	}
	assert_int_equal(th_pipe_recv(ev[0], 10000), 'L');
	assert_int_equal(it_stat(c, "mappings_used"), maps0 + 1);
	assert_int_equal(it_stat(c, "locks_used"), 1);

	b = th_fork(25);
	assert_true(b >= 0);
	if (b == 0) {
		struct capdsm *cb = NULL;
		uint8_t *buf = malloc(SIZE);
		void *q;
		uint32_t s;

		TH_CHILD_CHECK(buf != NULL, 20);
		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &cb) == 0, 21);
		TH_CHILD_CHECK(capdsm_import(cb, ref, &s) == 0, 22);
		TH_CHILD_CHECK(capdsm_lock(cb, s, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE) == 0,
		               23);
		TH_CHILD_CHECK(th_pipe_send(ev[1], 'G') == 0, 24);
		TH_CHILD_CHECK(capdsm_read(cb, s, 0, buf, SIZE) == 0, 25);
		TH_CHILD_CHECK(th_check(buf, SIZE, 71) == -1, 26);
		TH_CHILD_CHECK(capdsm_map(cb, capdsm_self(cb), s, 0, SIZE,
		                          CAPDSM_R_READ, &q) == 0, 27);
		TH_CHILD_CHECK(th_check(q, SIZE, 71) == -1, 28);
		TH_CHILD_CHECK(capdsm_unlock(cb, s, 0, PAGE) == 0, 29);
		free(buf);
		capdsm_close(cb);
		_exit(0);
	}
	assert_int_equal(th_wait_stat(c, "locks_waited", 1, 5000), 0);
	/* B really waits while A lives. */
	assert_int_equal(th_pipe_recv(ev[0], 200), -ETIMEDOUT);

	assert_int_equal(kill(a, SIGKILL), 0);
	assert_int_equal(th_wait(a, 5000, &st), 0);
	assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

	assert_int_equal(th_pipe_recv(ev[0], 5000), 'G');
	assert_int_equal(th_wait_exit(b, 10000), 0);

	/* The daemon is alive and serves a new client. */
	assert_true(th_daemon_alive(&it_d));
	struct capdsm *n = it_connect();
	uint32_t nb, o2;
	uint8_t w[100], r[100];
	th_fill(w, sizeof w, 72);
	/* In a bank of its own, destroyed afterwards: the object's memory
	 * descriptors go with it, so the count below compares like with like. */
	IT_OK(n, capdsm_bank_create(n, CAPDSM_SESSION_BANK, 0, 0, &nb));
	IT_OK(n, capdsm_object_create(n, nb, PAGE, &o2));
	IT_OK(n, capdsm_write(n, o2, 0, w, sizeof w));
	IT_OK(n, capdsm_read(n, o2, 0, r, sizeof r));
	assert_memory_equal(w, r, sizeof w);
	IT_OK(n, capdsm_bank_destroy(n, nb));
	it_close(n);

	/* Everything A and B held is given back. */
	assert_int_equal(th_wait_stat(c, "sessions_used", sessions0, 3000), 0);
	assert_int_equal(it_stat(c, "mappings_used"), maps0);
	assert_int_equal(it_stat(c, "locks_used"), 0);
	assert_int_equal(fd_count_settles(fds0, 3000), fds0);

	/* A's stores are in the object. */
	static uint8_t buf[SIZE];
	IT_OK(c, capdsm_read(c, obj, 0, buf, SIZE));
	assert_int_equal(th_check(buf, SIZE, 71), -1);
	close(ev[0]);
	close(ev[1]);
	it_close(c);
}

/* A killed shared holder's lock goes too: an exclusive try that failed
 * while it lived succeeds once the daemon has seen it die. */
static void test_killed_shared_holder_releases(void **state)
{
	struct capdsm *c = it_connect(), *x = it_connect(), *y = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj, sx, sy;
	int ev[2], st = 0;
	pid_t a;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	IT_OK(x, capdsm_import(x, ref, &sx));
	IT_OK(y, capdsm_import(y, ref, &sy));
	assert_int_equal(pipe(ev), 0);
	a = th_fork(25);
	assert_true(a >= 0);
	if (a == 0) {
		struct capdsm *ca = NULL;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ca) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ca, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_lock(ca, s, 0, PAGE, CAPDSM_LOCK_SHARED) == 0,
		               12);
		TH_CHILD_CHECK(th_pipe_send(ev[1], 'L') == 0, 13);
		for (;;)
			pause();
	}
	assert_int_equal(th_pipe_recv(ev[0], 10000), 'L');
	IT_EXPECT(x, capdsm_lock(x, sx, 0, PAGE,
	                         CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY), -EAGAIN);
	kill(a, SIGKILL);
	assert_int_equal(th_wait(a, 5000, &st), 0);
	/* Once the daemon has seen A go, the exclusive lock is free. */
	assert_int_equal(th_wait_stat(c, "locks_used", 0, 3000), 0);
	IT_OK(x, capdsm_lock(x, sx, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY));
	IT_EXPECT(y, capdsm_lock(y, sy, 0, PAGE,
	                         CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY), -EAGAIN);
	IT_OK(x, capdsm_unlock(x, sx, 0, PAGE));
	IT_OK(y, capdsm_lock(y, sy, 0, PAGE, CAPDSM_LOCK_SHARED));
	IT_OK(y, capdsm_unlock(y, sy, 0, PAGE));
	close(ev[0]);
	close(ev[1]);
	it_close(y);
	it_close(x);
	it_close(c);
}

/* The daemon is killed with SIGKILL while a client has an object mapped:
 * the client's next touch of a page it never faulted in must not wait
 * forever for a pager that is gone (the daemon held the only copy of the
 * mapping's userfaultfd, so the registration died with it). */
static void test_daemon_killed_under_mapping(void **state)
{
	struct th_daemon d;
	struct th_config cfg = TH_CONFIG_DEFAULT;
	int up[2], down[2], st = 0;
	pid_t kid;

	(void)state;
	th_guard_arm(IT_GUARD_SECONDS);
	assert_int_equal(th_daemon_start(&d, &cfg), 0);
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);
	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *c = NULL;
		volatile uint8_t *p;
		void *vp;
		uint32_t obj;

		TH_CHILD_CHECK(capdsm_connect(d.sock, NULL, &c) == 0, 10);
		TH_CHILD_CHECK(capdsm_object_create(c, CAPDSM_SESSION_BANK,
		                                    2 * PAGE, &obj) == 0, 11);
		TH_CHILD_CHECK(capdsm_map(c, capdsm_self(c), obj, 0, 2 * PAGE,
		                          CAPDSM_R_READ | CAPDSM_R_WRITE, &vp) == 0,
		               12);
		p = vp;
		p[0] = 1; /* page 0 through the daemon */
		TH_CHILD_CHECK(th_pipe_send(up[1], 'm') == 0, 13);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'k', 14);
		p[PAGE] = 2; /* page 1: the daemon is gone */
		/* Calls on the dead connection say ECONNRESET (capdsm.h), the
		 * first (its send may fail with EPIPE) as well as later ones. */
		uint8_t b;
		for (int i = 0; i < 3; i++)
			TH_CHILD_CHECK(capdsm_read(c, obj, 0, &b, 1) == -ECONNRESET, 16);
		_exit(p[0] == 1 && p[PAGE] == 2 ? 0 : 15);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'm');
	th_daemon_kill(&d);
	assert_int_equal(th_pipe_send(down[1], 'k'), 0);
	/* Bounded: a hang shows as a timeout here, not as a stuck suite. */
	assert_int_equal(th_wait(kid, 5000, &st), 0);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	th_cleanup_all();
	th_guard_disarm();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_killed_lock_holder),
		IT_TEST(test_killed_shared_holder_releases),
		cmocka_unit_test(test_daemon_killed_under_mapping),
	};
	return IT_RUN("integration.client_crash", tests, true);
}
