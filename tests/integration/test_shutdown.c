/* test_shutdown.c — SIGTERM shuts the daemon down cleanly: exit status 0,
 * its socket file removed, a "stopped" line in its log — when idle, and
 * with clients connected that hold objects, locks, sturdy references,
 * mappings and a waiting lock request. Clients then see the connection
 * closed (an error, not a hang). */
#include "it.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* Stops the daemon by hand (not th_daemon_stop) to look at each step. */
static void sigterm_and_check(void)
{
	struct stat sb;
	int st = 0;
	pid_t pid = it_d.pid;

	assert_int_equal(stat(it_d.sock, &sb), 0);
	assert_true(S_ISSOCK(sb.st_mode));
	assert_int_equal(kill(pid, SIGTERM), 0);
	int waited = 0;
	while (waitpid(pid, &st, WNOHANG) != pid) {
		if (waited > 5000)
			fail_msg("capdsmd still running 5 s after SIGTERM");
		usleep(5000);
		waited += 5;
	}
	it_d.pid = 0; /* reaped: teardown must not wait for it again */
	if (!WIFEXITED(st))
		print_message("capdsmd died of signal %d\n", WTERMSIG(st));
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	assert_int_equal(access(it_d.sock, F_OK), -1);
	assert_int_equal(errno, ENOENT);
	assert_true(th_log_contains(&it_d, "msg=\"signal, shutting down\""));
	assert_true(th_log_contains(&it_d, "msg=\"stopped\""));
}

/* Teardown for tests that stop the daemon themselves: it must already be
 * gone; the folder is removed. */
static int teardown_stopped(void **state)
{
	(void)state;
	th_kill_children();
	bool was_running = it_d.pid > 0;
	th_cleanup_all();
	th_guard_disarm();
	return was_running ? -1 : 0;
}

#define STOP_TEST(f) cmocka_unit_test_setup_teardown(f, it_setup, teardown_stopped)

static void test_sigterm_idle(void **state)
{
	(void)state;
	sigterm_and_check();
}

static void test_sigterm_with_busy_clients(void **state)
{
	struct capdsm *a = it_connect(), *b = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj, bank, bobj, bs;
	void *p = NULL;
	int ev[2];

	(void)state;
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, 4 * PAGE, &obj));
	IT_OK(a, capdsm_bank_create(a, CAPDSM_SESSION_BANK, 0, 10, &bank));
	IT_OK(a, capdsm_object_create(a, bank, PAGE, &bobj));
	IT_OK(a, capdsm_export(a, obj, ref, sizeof ref));
	IT_OK(a, capdsm_map(a, capdsm_self(a), obj, 0, 4 * PAGE,
	                    CAPDSM_R_READ | CAPDSM_R_WRITE, &p));
	memset(p, 0x42, 2 * PAGE);
	IT_OK(a, capdsm_lock(a, obj, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE));
	IT_OK(b, capdsm_import(b, ref, &bs));
	assert_int_equal(pipe(ev), 0);

	/* A child waits for the lock A holds when the signal comes. */
	pid_t kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s) == 0, 11);
		TH_CHILD_CHECK(th_pipe_send(ev[1], 'w') == 0, 12);
		int rc = capdsm_lock(ck, s, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE);
		/* Whatever the answer (see test_sigterm_grants_no_lock), the
		 * call returns; the connection is then gone. */
		uint8_t b1;
		TH_CHILD_CHECK(capdsm_read(ck, s, 0, &b1, 1) < 0, 13);
		_exit(rc == 0 ? 1 : 0);
	}
	assert_int_equal(th_pipe_recv(ev[0], 10000), 'w');
	assert_int_equal(th_wait_stat(a, "locks_waited", 1, 5000), 0);

	sigterm_and_check();
	int kst = th_wait_exit(kid, 5000);
	assert_true(kst == 0 || kst == 1); /* returned, in time */

	/* Connected clients get an error on their next call. */
	uint8_t buf[8];
	assert_true(capdsm_read(b, bs, 0, buf, sizeof buf) < 0);
	assert_true(capdsm_read(a, obj, 0, buf, sizeof buf) < 0);
	/* Nobody listens any more. */
	struct capdsm *x = NULL;
	int rc = capdsm_connect(it_d.sock, NULL, &x);
	assert_true(rc == -ENOENT || rc == -ECONNREFUSED);
	close(ev[0]);
	close(ev[1]);
	it_close(b);
	it_close(a);
}

/* A holds an exclusive lock and never releases it; B waits for it. When
 * the daemon shuts down, B must get an error, not a grant: A still
 * believes it holds the lock (its mapping still works on pages it has),
 * so a grant to B would put two processes inside one critical section. */
static void test_sigterm_grants_no_lock(void **state)
{
	struct capdsm *a = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	int ev[2];

	(void)state;
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(a, capdsm_export(a, obj, ref, sizeof ref));
	IT_OK(a, capdsm_lock(a, obj, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE));
	assert_int_equal(pipe(ev), 0);
	pid_t kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s) == 0, 11);
		TH_CHILD_CHECK(th_pipe_send(ev[1], 'w') == 0, 12);
		int rc = capdsm_lock(ck, s, 0, PAGE, CAPDSM_LOCK_EXCLUSIVE);
		if (rc == 0)
			fprintf(stderr, "child: granted a lock its holder never "
			        "released, while the daemon shut down\n");
		_exit(rc == 0 ? 1 : 0);
	}
	assert_int_equal(th_pipe_recv(ev[0], 10000), 'w');
	assert_int_equal(th_wait_stat(a, "locks_waited", 1, 5000), 0);
	sigterm_and_check();
	assert_int_equal(th_wait_exit(kid, 5000), 0);
	close(ev[0]);
	close(ev[1]);
	it_close(a);
}

/* SIGINT is handled the same way. */
static void test_sigint_clean_too(void **state)
{
	struct capdsm *a = it_connect();

	(void)state;
	it_close(a);
	assert_int_equal(kill(it_d.pid, SIGINT), 0);
	pid_t pid = it_d.pid;
	it_d.pid = 0;
	assert_int_equal(th_wait_exit(pid, 5000), 0);
	assert_int_equal(access(it_d.sock, F_OK), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		STOP_TEST(test_sigterm_idle),
		STOP_TEST(test_sigterm_with_busy_clients),
		STOP_TEST(test_sigterm_grants_no_lock),
		STOP_TEST(test_sigint_clean_too),
	};
	return IT_RUN("integration.shutdown", tests, true);
}
