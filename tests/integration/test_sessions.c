/* test_sessions.c — the session pool is fixed at startup (pools.clients):
 * with clients = 2, a third connection is refused with a clear error that
 * names the pool, the two sessions keep working, and once one of them
 * closes a new connection succeeds again. */
#include "it.h"

static const struct th_config two_clients = {
	.objects = 64, .caps = 4096, .clients = 2, .slots_per_client = 256,
	.mappings = 64, .locks = 256, .sturdy = 256, .frames = 4096,
};

static void test_third_connection_refused(void **state)
{
	struct capdsm *a = it_connect(), *b = it_connect(), *x = NULL;
	uint32_t obj;
	uint8_t buf[8] = "sessions";

	(void)state;
	assert_int_equal(it_stat(a, "sessions_max"), 2);
	assert_int_equal(it_stat(a, "sessions_used"), 2);

	for (int i = 0; i < 3; i++) {
		int rc = capdsm_connect(it_d.sock, NULL, &x);
		const char *why = capdsm_strerror(NULL);
		print_message("third connection: %d (%s): %s\n", rc, strerror(-rc),
		              why);
		assert_true(rc < 0);
		assert_null(x);
		assert_non_null(strstr(why, "pool"));
	}
	assert_int_equal(it_stat(a, "sessions_refused"), 3);
	assert_int_equal(it_stat(a, "sessions_used"), 2);
	assert_int_equal(th_wait_log(&it_d, "session refused", 2000), 0);

	/* The two sessions are unharmed. */
	IT_OK(a, capdsm_object_create(a, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(a, capdsm_write(a, obj, 0, buf, sizeof buf));
	char ref[CAPDSM_REF_MAX];
	IT_OK(a, capdsm_export(a, obj, ref, sizeof ref));
	uint32_t bs;
	uint8_t back[8];
	IT_OK(b, capdsm_import(b, ref, &bs));
	IT_OK(b, capdsm_read(b, bs, 0, back, sizeof back));
	assert_memory_equal(back, buf, sizeof buf);

	/* One closes; once the daemon has seen it go, a new one gets in. */
	it_close(b);
	assert_int_equal(th_wait_stat(a, "sessions_used", 1, 3000), 0);
	int rc = capdsm_connect(it_d.sock, NULL, &x);
	if (rc)
		print_message("reconnect: %d %s\n", rc, capdsm_strerror(NULL));
	assert_int_equal(rc, 0);
	it_track(x);
	IT_OK(x, capdsm_import(x, ref, &bs));
	IT_OK(x, capdsm_read(x, bs, 0, back, sizeof back));
	assert_memory_equal(back, buf, sizeof buf);
	/* Full again. */
	struct capdsm *y = NULL;
	assert_true(capdsm_connect(it_d.sock, NULL, &y) < 0);
	assert_non_null(strstr(capdsm_strerror(NULL), "pool"));
	it_close(x);
	it_close(a);
}

/* A refused connection leaves nothing behind in the daemon. */
static void test_refused_connections_leak_nothing(void **state)
{
	struct capdsm *a = it_connect(), *b = it_connect(), *x = NULL;

	(void)state;
	int fds = th_daemon_fd_count(&it_d);
	uint64_t caps = it_stat(a, "caps_used");
	uint64_t objs = it_stat(a, "objects_used");
	for (int i = 0; i < 20; i++)
		assert_true(capdsm_connect(it_d.sock, NULL, &x) < 0);
	assert_int_equal(it_stat(a, "sessions_refused"), 20);
	assert_int_equal(it_stat(a, "caps_used"), caps);
	assert_int_equal(it_stat(a, "objects_used"), objs);
	assert_int_equal(th_daemon_fd_count(&it_d), fds);
	it_close(b);
	it_close(a);
}

/* Connections that hold a session without using it — one that never says
 * hello, one that stops in the middle of a frame — are dropped by the
 * daemon (after 5 s and 10 s), so a full pool frees itself. */
static void test_idle_sessions_dropped(void **state)
{
	int quiet, partial;
	const uint8_t half[2] = { 0x43, 0x44 };
	struct capdsm *x = NULL;

	(void)state;
	quiet = th_raw_connect(it_d.sock);
	partial = th_raw_connect(it_d.sock);
	assert_true(quiet >= 0 && partial >= 0);
	assert_int_equal(th_raw_send_bytes(partial, half, sizeof half), 0);
	usleep(200000);
	/* Both slots of the pool are taken now. */
	assert_int_not_equal(capdsm_connect(it_d.sock, NULL, &x), 0);
	assert_int_equal(th_raw_wait_closed(quiet, 9000), 0);
	assert_int_equal(th_raw_wait_closed(partial, 9000), 0);
	assert_int_equal(capdsm_connect(it_d.sock, NULL, &x), 0);
	it_track(x);
	assert_true(th_log_contains(&it_d, "no hello within"));
	close(quiet);
	close(partial);
	it_close(x);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST_CFG(test_third_connection_refused, &two_clients),
		IT_TEST_CFG(test_idle_sessions_dropped, &two_clients),
		IT_TEST_CFG(test_refused_connections_leak_nothing, &two_clients),
	};
	return IT_RUN("integration.sessions", tests, false);
}
