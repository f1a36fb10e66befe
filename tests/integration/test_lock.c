/* test_lock.c — byte-range locks across processes: a counter in a mapped
 * object, incremented under an exclusive lock by 4 processes N times each,
 * ends at exactly 4N; locks are granted in FIFO order, so an exclusive
 * waiter is not starved by shared lockers that come after it; and
 * CAPDSM_LOCK_TRY answers -EAGAIN instead of waiting. */
#include "it.h"

#include <sched.h>
#include <time.h>

#define NPROC 4
#define NITER 300

static struct capdsm *child_connect_import(const char *ref, uint32_t *slot)
{
	struct capdsm *c = NULL;

	TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &c) == 0, 10);
	TH_CHILD_CHECK(capdsm_import(c, ref, slot) == 0, 11);
	return c;
}

static void pause_us(long us)
{
	struct timespec ts = { .tv_sec = 0, .tv_nsec = us * 1000 };
	nanosleep(&ts, NULL);
}

/* Each child: lock, load, yield, store load+1, unlock — a lost update is
 * likely at once if two children ever hold the lock together. */
static void test_counter_under_lock_reaches_4n(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	pid_t kids[NPROC];

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	for (int k = 0; k < NPROC; k++) {
		kids[k] = th_fork(25);
		assert_true(kids[k] >= 0);
		if (kids[k] == 0) {
			uint32_t s;
			struct capdsm *ck = child_connect_import(ref, &s);
			volatile uint64_t *ctr = NULL;
			void *p;

			TH_CHILD_CHECK(capdsm_map(ck, capdsm_self(ck), s, 0, PAGE,
			                          CAPDSM_R_READ | CAPDSM_R_WRITE,
			                          &p) == 0, 12);
			ctr = p;
			for (int i = 0; i < NITER; i++) {
				TH_CHILD_CHECK(capdsm_lock(ck, s, 0, 8,
				                           CAPDSM_LOCK_EXCLUSIVE) == 0, 13);
				uint64_t v = *ctr;
				if (i % 8 == 0)
					pause_us(50);
				else
					sched_yield();
				*ctr = v + 1;
				TH_CHILD_CHECK(capdsm_unlock(ck, s, 0, 8) == 0, 14);
			}
			capdsm_close(ck);
			_exit(0);
		}
	}
	for (int k = 0; k < NPROC; k++)
		assert_int_equal(th_wait_exit(kids[k], 25000), 0);

	uint64_t v = 0;
	IT_OK(c, capdsm_read(c, obj, 0, &v, sizeof v));
	assert_int_equal(v, (uint64_t)NPROC * NITER);
	void *p = NULL;
	IT_OK(c, capdsm_map(c, capdsm_self(c), obj, 0, PAGE, CAPDSM_R_READ, &p));
	assert_int_equal(*(volatile uint64_t *)p, (uint64_t)NPROC * NITER);
	IT_OK(c, capdsm_unmap(c, p));
	/* Every lock was given back. */
	assert_int_equal(it_stat(c, "locks_used"), 0);
	it_close(c);
}

/* A process that takes a lock on the object, reports 'first', waits
 * `hold_ms`, reports 'second', unlocks and exits. */
static pid_t locker(const char *ref, unsigned flags, char first, char second,
                    int hold_ms, int report)
{
	pid_t pid = th_fork(20);

	if (pid != 0)
		return pid;
	uint32_t s;
	struct capdsm *ck = child_connect_import(ref, &s);
	TH_CHILD_CHECK(capdsm_lock(ck, s, 0, PAGE, flags) == 0, 20);
	TH_CHILD_CHECK(th_pipe_send(report, first) == 0, 21);
	if (hold_ms)
		pause_us(hold_ms * 1000L);
	if (second)
		TH_CHILD_CHECK(th_pipe_send(report, second) == 0, 22);
	TH_CHILD_CHECK(capdsm_unlock(ck, s, 0, PAGE) == 0, 23);
	capdsm_close(ck);
	_exit(0);
}

/* Shared holder H; exclusive waiter X; then shared requester Y. Y must
 * queue behind X (else a stream of readers starves X): a shared try-lock
 * fails, Y gets nothing until X has had and released the lock. */
static void test_fifo_exclusive_waiter_not_starved(void **state)
{
	struct capdsm *h = it_connect(), *t = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj, tslot;
	int ev[2];
	pid_t x, y;

	(void)state;
	IT_OK(h, capdsm_object_create(h, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(h, capdsm_export(h, obj, ref, sizeof ref));
	IT_OK(t, capdsm_import(t, ref, &tslot));
	assert_int_equal(pipe(ev), 0);

	IT_OK(h, capdsm_lock(h, obj, 0, PAGE, CAPDSM_LOCK_SHARED));
	/* Another shared lock goes through while nobody waits. */
	IT_OK(t, capdsm_lock(t, tslot, 0, PAGE,
	                     CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY));
	IT_OK(t, capdsm_unlock(t, tslot, 0, PAGE));

	x = locker(ref, CAPDSM_LOCK_EXCLUSIVE, 'X', 'x', 150, ev[1]);
	assert_true(x > 0);
	assert_int_equal(th_wait_stat(h, "locks_waited", 1, 5000), 0);
	y = locker(ref, CAPDSM_LOCK_SHARED, 'Y', 0, 0, ev[1]);
	assert_true(y > 0);
	assert_int_equal(th_wait_stat(h, "locks_waited", 2, 5000), 0);

	/* Only shared locks are held, but an exclusive request waits: a new
	 * shared one must not jump the queue. */
	IT_EXPECT(t, capdsm_lock(t, tslot, 0, PAGE,
	                         CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY), -EAGAIN);
	assert_int_equal(th_pipe_recv(ev[0], 200), -ETIMEDOUT);

	IT_OK(h, capdsm_unlock(h, obj, 0, PAGE));
	char order[4] = { 0 };
	for (int i = 0; i < 3; i++) {
		int ch = th_pipe_recv(ev[0], 5000);
		assert_true(ch > 0);
		order[i] = (char)ch;
	}
	assert_string_equal(order, "XxY");
	assert_int_equal(th_wait_exit(x, 5000), 0);
	assert_int_equal(th_wait_exit(y, 5000), 0);
	assert_int_equal(it_stat(h, "locks_used"), 0);
	close(ev[0]);
	close(ev[1]);
	it_close(t);
	it_close(h);
}

/* A try-lock on a held range answers -EAGAIN at once, from another
 * process, for exclusive and shared, on an overlapping part too; a range
 * that does not overlap is granted; after the unlock the try succeeds. */
static void test_try_lock_when_held(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	int up[2], down[2];
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, 4 * PAGE, &obj));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);
	IT_OK(c, capdsm_lock(c, obj, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE));

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		uint32_t s;
		struct capdsm *ck = child_connect_import(ref, &s);
		const unsigned tx = CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY;
		const unsigned ts = CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY;

		TH_CHILD_CHECK(capdsm_lock(ck, s, 0, PAGE, tx) == -EAGAIN, 30);
		TH_CHILD_CHECK(capdsm_lock(ck, s, 0, PAGE, ts) == -EAGAIN, 31);
		TH_CHILD_CHECK(capdsm_lock(ck, s, 100, 200, tx) == -EAGAIN, 32);
		TH_CHILD_CHECK(capdsm_lock(ck, s, PAGE - 1, PAGE, ts) == -EAGAIN,
		               33);
		TH_CHILD_CHECK(capdsm_lock(ck, s, 2 * PAGE, PAGE, tx) == 0, 34);
		TH_CHILD_CHECK(th_pipe_send(up[1], 't') == 0, 35);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'u', 36);
		TH_CHILD_CHECK(capdsm_lock(ck, s, 0, PAGE, tx) == 0, 37);
		TH_CHILD_CHECK(capdsm_unlock(ck, s, 0, PAGE) == 0, 38);
		TH_CHILD_CHECK(capdsm_unlock(ck, s, 2 * PAGE, PAGE) == 0, 39);
		capdsm_close(ck);
		_exit(0);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 't');
	/* The failed tries queued nothing. */
	assert_int_equal(it_stat(c, "locks_waited"), 0);
	assert_int_equal(it_stat(c, "locks_used"), 2);
	IT_OK(c, capdsm_unlock(c, obj, 0, PAGE));
	assert_int_equal(th_pipe_send(down[1], 'u'), 0);
	assert_int_equal(th_wait_exit(kid, 10000), 0);
	assert_int_equal(it_stat(c, "locks_used"), 0);
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

/* A client that polls for replies (capdsm_set_poll_us) gets the same
 * answers: bad settings are refused; short requests are answered within
 * the spin; a lock granted only long after the spin ran out still
 * arrives (the client went to sleep in recv and was woken). The
 * environment's CAPDSM_POLL_US is taken at connect, and ignored when it is
 * not a number in range. */
static void test_polling_client(void **state)
{
	struct capdsm *a = it_connect();
	uint32_t obj;
	uint8_t buf[PAGE], back[PAGE];
	char ref[CAPDSM_REF_MAX];
	int ready[2];

	(void)state;
	assert_int_equal(capdsm_set_poll_us(NULL, 10), -EINVAL);
	assert_int_equal(capdsm_set_poll_us(a, CAPDSM_POLL_US_MAX + 1), -EINVAL);
	IT_OK(a, capdsm_set_poll_us(a, 500));
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(a, capdsm_export(a, obj, ref, sizeof ref));
	for (int i = 0; i < 200; i++) {
		th_fill(buf, sizeof buf, (uint32_t)i);
		IT_OK(a, capdsm_write(a, obj, 0, buf, sizeof buf));
		IT_OK(a, capdsm_read(a, obj, 0, back, sizeof back));
		assert_memory_equal(buf, back, sizeof buf);
	}

	/* A child polling 200 us asks for the lock a holds; a lets go after
	 * 300 ms. The child checks it waited, and exits 0. */
	IT_OK(a, capdsm_lock(a, obj, 0, 8, CAPDSM_LOCK_EXCLUSIVE));
	assert_int_equal(pipe(ready), 0);
	pid_t kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct timespec t0, t1;
		uint32_t s;
		setenv("CAPDSM_POLL_US", "200", 1);
		struct capdsm *b = child_connect_import(ref, &s);
		TH_CHILD_CHECK(write(ready[1], "r", 1) == 1, 20);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		TH_CHILD_CHECK(capdsm_lock(b, s, 0, 8, CAPDSM_LOCK_EXCLUSIVE) == 0, 21);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		TH_CHILD_CHECK((t1.tv_sec - t0.tv_sec) * 1000000000L +
		                       (t1.tv_nsec - t0.tv_nsec) >= 200000000L, 22);
		TH_CHILD_CHECK(capdsm_unlock(b, s, 0, 8) == 0, 23);
		capdsm_close(b);
		_exit(0);
	}
	char ch;
	assert_int_equal(read(ready[0], &ch, 1), 1);
	pause_us(300000);
	IT_OK(a, capdsm_unlock(a, obj, 0, 8));
	assert_int_equal(th_wait_exit(kid, 10000), 0);
	close(ready[0]);
	close(ready[1]);

	/* A malformed setting in the environment is ignored: the connection
	 * works as a sleeping one. */
	setenv("CAPDSM_POLL_US", "lots", 1);
	struct capdsm *d = it_connect();
	unsetenv("CAPDSM_POLL_US");
	uint32_t od;
	IT_OK(d, capdsm_object_create(d, CAPDSM_SESSION_BANK, PAGE, &od));
	IT_OK(d, capdsm_write(d, od, 0, buf, sizeof buf));
	IT_OK(d, capdsm_read(d, od, 0, back, sizeof back));
	assert_memory_equal(buf, back, sizeof buf);
	it_close(d);
	it_close(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_counter_under_lock_reaches_4n),
		IT_TEST(test_fifo_exclusive_waiter_not_starved),
		IT_TEST(test_try_lock_when_held),
		IT_TEST(test_polling_client),
	};
	return IT_RUN("integration.lock", tests, true);
}
