/* mn.h — what the multi-node test files share: a cluster of real daemons
 * (tests/lib/cluster.c), connections to its nodes from the test process,
 * client children on chosen nodes, and assertions that show the daemon's
 * reason when a call fails.
 *
 * A file either starts one cluster for all its tests (mn_group_setup /
 * mn_group_teardown, with the node count in mn_nodes and options in
 * mn_opts) or starts its own per test with mn_start(). Every test is
 * guarded by an alarm (mn_test_setup); the teardown kills the test's
 * children, closes its connections, and stops the cluster checking that
 * every node still running exits 0 on SIGTERM.
 */
#ifndef CAPDSM_MN_H
#define CAPDSM_MN_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "testlib.h"

#define PAGE 4096u

static struct th_cluster mn_c;
static unsigned mn_nodes = 3;
static struct th_cluster_opts mn_opts = { .heartbeat_ms = 50,
	                                      .dead_after_ms = 500 };
static unsigned mn_guard_seconds = 40;

static inline int64_t mn_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline void mn_sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
		                   .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Connections the test process opened, closed by teardown if a failed
 * assertion skipped the test's own close. */
#define MN_MAX_CONN 16
static struct capdsm *mn_conns[MN_MAX_CONN];

static inline void mn_close(struct capdsm *c)
{
	for (int i = 0; i < MN_MAX_CONN; i++)
		if (mn_conns[i] == c)
			mn_conns[i] = NULL;
	capdsm_close(c);
}

static inline void mn_close_all(void)
{
	for (int i = 0; i < MN_MAX_CONN; i++)
		if (mn_conns[i]) {
			capdsm_close(mn_conns[i]);
			mn_conns[i] = NULL;
		}
}

/* rc must be `want`; otherwise print the daemon's (or library's) reason. */
#define MN_EXPECT(c, expr, want)                                              \
	do {                                                                      \
		int mn_rc_ = (expr);                                                  \
		if (mn_rc_ != (want))                                                 \
			print_message("%s:%d: %s = %d (%s), expected %d (%s); "          \
			              "reason: %s\n", __FILE__, __LINE__, #expr, mn_rc_, \
			              strerror(-mn_rc_), (int)(want), strerror(-(want)),  \
			              capdsm_strerror(c));                                \
		assert_int_equal(mn_rc_, (want));                                     \
	} while (0)
#define MN_OK(c, expr) MN_EXPECT(c, expr, 0)

/* A connection from the test process to node k. */
static inline struct capdsm *mn_connect(unsigned k)
{
	struct capdsm *c = NULL;
	int rc = capdsm_connect(th_cluster_sock(&mn_c, k), NULL, &c);

	if (rc)
		print_message("capdsm_connect node %u: %d (%s)\n", k, rc,
		              capdsm_strerror(NULL));
	assert_int_equal(rc, 0);
	assert_non_null(c);
	for (int i = 0; i < MN_MAX_CONN; i++)
		if (!mn_conns[i]) {
			mn_conns[i] = c;
			break;
		}
	return c;
}

/* An object of `size` bytes homed on the node `c` is connected to, and a
 * sturdy reference to it. */
static inline uint32_t mn_object(struct capdsm *c, uint64_t size,
                                 char ref[CAPDSM_REF_MAX])
{
	uint32_t slot;

	MN_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, size, &slot));
	MN_OK(c, capdsm_export(c, slot, ref, CAPDSM_REF_MAX));
	return slot;
}

/* Imports `ref` through node k's connection c. */
static inline uint32_t mn_import(struct capdsm *c, const char *ref)
{
	uint32_t slot;

	MN_OK(c, capdsm_import(c, ref, &slot));
	return slot;
}

/* ---- in a child (never cmocka assertions there) ---- */

static inline struct capdsm *mn_child_connect(unsigned k)
{
	struct capdsm *c = NULL;
	int rc = capdsm_connect(th_cluster_sock(&mn_c, k), NULL, &c);

	if (rc)
		fprintf(stderr, "child: connect node %u: %d %s\n", k, rc,
		        capdsm_strerror(NULL));
	TH_CHILD_CHECK(rc == 0, 10);
	return c;
}

static inline uint32_t mn_child_import(struct capdsm *c, const char *ref)
{
	uint32_t slot = 0;
	int rc = capdsm_import(c, ref, &slot);

	if (rc)
		fprintf(stderr, "child: import: %d %s\n", rc, capdsm_strerror(c));
	TH_CHILD_CHECK(rc == 0, 11);
	return slot;
}

static inline void *mn_child_map(struct capdsm *c, uint32_t slot,
                                 uint64_t len)
{
	void *p = NULL;
	int rc = capdsm_map(c, capdsm_self(c), slot, 0, len,
	                    CAPDSM_R_READ | CAPDSM_R_WRITE, &p);

	if (rc)
		fprintf(stderr, "child: map: %d %s\n", rc, capdsm_strerror(c));
	TH_CHILD_CHECK(rc == 0 && p != NULL, 12);
	return p;
}

/* ---- set-up and teardown ---- */

static inline int mn_start(unsigned nodes, const struct th_cluster_opts *o)
{
	int rc = th_cluster_start(&mn_c, nodes, o ? o : &mn_opts);

	if (rc)
		print_message("th_cluster_start(%u): %d (%s)\n", nodes, rc,
		              strerror(-rc));
	return rc;
}

/* Kills the test's children, closes its connections, stops the cluster;
 * -1 unless every running node exited 0. */
static inline int mn_stop(void)
{
	th_kill_children();
	mn_close_all();
	return th_cluster_stop(&mn_c) == 0 ? 0 : -1;
}

__attribute__((unused)) static int mn_group_setup(void **state)
{
	(void)state;
	th_guard_arm(60);
	int rc = mn_start(mn_nodes, NULL);
	th_guard_disarm();
	return rc ? -1 : 0;
}

__attribute__((unused)) static int mn_group_teardown(void **state)
{
	(void)state;
	th_guard_arm(30);
	int rc = mn_stop();
	th_guard_disarm();
	return rc;
}

/* Per test within a group: an alarm; afterwards, the nodes must all still
 * run and the test's children be gone. */
__attribute__((unused)) static int mn_test_setup(void **state)
{
	(void)state;
	th_guard_arm(mn_guard_seconds);
	return 0;
}

__attribute__((unused)) static int mn_test_teardown(void **state)
{
	int rc = 0;

	(void)state;
	th_kill_children();
	mn_close_all();
	for (unsigned k = 0; k < mn_c.n; k++)
		if (!th_cluster_alive(&mn_c, k)) {
			print_message("node %u died during the test (status 0x%x)\n", k,
			              mn_c.status[k]);
			th_cluster_dump_logs(&mn_c);
			rc = -1;
		}
	th_guard_disarm();
	return rc;
}

/* A test that starts and stops its own cluster. */
__attribute__((unused)) static int mn_own_setup(void **state)
{
	(void)state;
	th_guard_arm(mn_guard_seconds);
	return 0;
}

__attribute__((unused)) static int mn_own_teardown(void **state)
{
	(void)state;
	int rc = mn_stop();
	th_guard_disarm();
	return rc;
}

#define MN_TEST(f) cmocka_unit_test_setup_teardown(f, mn_test_setup,         \
	                                               mn_test_teardown)
#define MN_OWN_TEST(f) cmocka_unit_test_setup_teardown(f, mn_own_setup,      \
	                                                   mn_own_teardown)

/* Runs the tests (with the group cluster if `group`), or exits 77 (skip) if
 * this machine lacks what mapping needs. */
static inline int mn_run(const char *name, const struct CMUnitTest *tests,
                         size_t n, bool group)
{
	if (!th_daemon_path()) {
		fprintf(stderr, "%s: set CAPDSMD to the path of capdsmd\n", name);
		return 1;
	}
	if (!th_uffd_available()) {
		fprintf(stderr, "%s: skipped: userfaultfd with minor and "
		        "write-protect faults on shared memory is not available\n",
		        name);
		return 77;
	}
	return _cmocka_run_group_tests(name, tests, n,
	                               group ? mn_group_setup : NULL,
	                               group ? mn_group_teardown : NULL);
}
#define MN_RUN(name, tests, group)                                            \
	mn_run(name, tests, sizeof(tests) / sizeof((tests)[0]), group)

#endif /* CAPDSM_MN_H */
