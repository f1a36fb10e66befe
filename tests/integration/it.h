/* it.h — what every integration test file shares: a fresh daemon per test
 * (cmocka setup/teardown), a time limit per test, and assertions that show
 * the daemon's reason when a call fails.
 *
 * Setup starts capdsmd with the config in the test's prestate (or the
 * default one) and arms a 30 s guard; teardown kills any child the test
 * left, stops the daemon with SIGTERM and fails the test unless it exited
 * 0 and removed its socket — so every test also checks a clean shutdown.
 */
#ifndef CAPDSM_IT_H
#define CAPDSM_IT_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "testlib.h"

#define PAGE 4096u
#define IT_GUARD_SECONDS 30

/* The daemon of the running test. */
static struct th_daemon it_d;

/* Connections the test process opened, closed by teardown if a failed
 * assertion skipped the test's own capdsm_close (so that LeakSanitizer
 * reports the failure, not its consequences). */
#define IT_MAX_CONN 16
static struct capdsm *it_conns[IT_MAX_CONN];

static inline void it_track(struct capdsm *c)
{
	for (int i = 0; i < IT_MAX_CONN; i++)
		if (!it_conns[i]) {
			it_conns[i] = c;
			return;
		}
}

static inline void it_close(struct capdsm *c)
{
	for (int i = 0; i < IT_MAX_CONN; i++)
		if (it_conns[i] == c)
			it_conns[i] = NULL;
	capdsm_close(c);
}

__attribute__((unused)) static int it_setup(void **state)
{
	const struct th_config *cfg = *state;
	struct th_config def = TH_CONFIG_DEFAULT;

	th_guard_arm(IT_GUARD_SECONDS);
	return th_daemon_start(&it_d, cfg ? cfg : &def) == 0 ? 0 : -1;
}

__attribute__((unused)) static int it_teardown(void **state)
{
	(void)state;
	th_kill_children();
	for (int i = 0; i < IT_MAX_CONN; i++)
		if (it_conns[i])
			it_close(it_conns[i]);
	int rc = th_daemon_stop(&it_d);
	th_cleanup_all();
	th_guard_disarm();
	return rc == 0 ? 0 : -1;
}

#define IT_TEST(f) cmocka_unit_test_setup_teardown(f, it_setup, it_teardown)
#define IT_TEST_CFG(f, cfgp)                                                 \
	cmocka_unit_test_prestate_setup_teardown(f, it_setup, it_teardown,       \
	                                         (void *)(cfgp))

/* rc must be `want`; otherwise print the daemon's (or library's) reason. */
#define IT_EXPECT(c, expr, want)                                              \
	do {                                                                      \
		int it_rc_ = (expr);                                                  \
		if (it_rc_ != (want))                                                 \
			print_message("%s:%d: %s = %d (%s), expected %d (%s); "          \
			              "reason: %s\n", __FILE__, __LINE__, #expr, it_rc_, \
			              strerror(-it_rc_), (int)(want), strerror(-(want)),  \
			              capdsm_strerror(c));                                \
		assert_int_equal(it_rc_, (want));                                     \
	} while (0)
#define IT_OK(c, expr) IT_EXPECT(c, expr, 0)

static inline struct capdsm *it_connect(void)
{
	struct capdsm *c = NULL;
	int rc = capdsm_connect(it_d.sock, NULL, &c);

	if (rc)
		print_message("capdsm_connect: %d (%s)\n", rc, capdsm_strerror(NULL));
	assert_int_equal(rc, 0);
	assert_non_null(c);
	it_track(c);
	return c;
}

/* A counter of the daemon, asserted to exist. */
static inline uint64_t it_stat(struct capdsm *c, const char *name)
{
	uint64_t v = 0;
	int rc = th_stat(c, name, &v);

	if (rc)
		print_message("stats %s: %d (%s)\n", name, rc, capdsm_strerror(c));
	assert_int_equal(rc, 0);
	return v;
}

/* Runs the tests, or exits 77 (skip) if this machine lacks what mapping
 * needs; `needs_uffd` is false for files that never map. */
static inline int it_run(const char *name, const struct CMUnitTest *tests,
                         size_t n, bool needs_uffd)
{
	if (!th_daemon_path()) {
		fprintf(stderr, "%s: set CAPDSMD to the path of capdsmd\n", name);
		return 1;
	}
	if (needs_uffd && !th_uffd_available()) {
		fprintf(stderr, "%s: skipped: userfaultfd with minor and "
		        "write-protect faults on shared memory is not available\n",
		        name);
		return 77;
	}
	return _cmocka_run_group_tests(name, tests, n, NULL, NULL);
}
#define IT_RUN(name, tests, uffd)                                             \
	it_run(name, tests, sizeof(tests) / sizeof((tests)[0]), uffd)

#endif /* CAPDSM_IT_H */
