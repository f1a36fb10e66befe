/* test_security.c — who may be part of a cluster:
 *
 *  - a daemon whose key file is missing refuses to start, exit status 1,
 *    with a message that names the key file;
 *  - a daemon whose key file holds a secret that is not the one of its
 *    member public key refuses to start the same way;
 *  - a daemon that runs with a key pair the membership does not list
 *    starts, but cannot join: the members log "peer refused", they see it
 *    as down, and nothing it imports from them gets through;
 *  - a daemon set to plaintext cannot join a CURVE cluster either;
 *  - a sturdy reference naming a node outside the cluster fails at once
 *    with -EREMOTE, and one with a wrong secret with -EACCES.
 */
#include "mn.h"

#include <sys/stat.h>

#include <sys/wait.h>

#define JOIN_WINDOW_MS 2000 /* 40 heartbeats: ample time to join */

/* Node k was held back; starting it must fail with exit status 1 and a
 * log line containing `why`. The members stay up and see k as down. */
static void expect_refused_start(unsigned k, const char *why)
{
	int rc = th_cluster_start_node(&mn_c, k);

	if (rc != -ECHILD)
		print_message("node %u: start returned %d, expected it to exit\n", k,
		              rc);
	assert_int_equal(rc, -ECHILD);
	assert_true(WIFEXITED(mn_c.status[k]));
	assert_int_equal(WEXITSTATUS(mn_c.status[k]), 1);
	if (!th_log_contains(&mn_c.node[k], why)) {
		th_cluster_dump_logs(&mn_c);
		print_message("node %u's log lacks \"%s\"\n", k, why);
		fail();
	}
	for (unsigned j = 0; j < mn_c.n; j++)
		if (j != k) {
			assert_true(th_cluster_alive(&mn_c, j));
			assert_int_equal(th_cluster_reachable(&mn_c, j, k), -EHOSTDOWN);
		}
}

static void test_no_key_file_refused(void **state)
{
	struct th_cluster_opts o = mn_opts;

	(void)state;
	o.no_key = 1u << 2;
	assert_int_equal(mn_start(3, &o), 0);
	expect_refused_start(2, "no cluster key");
	assert_true(th_log_contains(&mn_c.node[2], mn_c.key_file[2]));
}

static void test_mismatched_key_refused(void **state)
{
	struct th_cluster_opts o = mn_opts;

	(void)state;
	o.mismatched_key = 1u << 1;
	assert_int_equal(mn_start(3, &o), 0);
	expect_refused_start(1, "does not belong to node 1");
}

/* A key file others may read is refused, as ssh refuses such a private
 * key: node 1 is stopped, its key made world-readable, and it must not
 * start again; made 0600 again, it starts. */
static void test_readable_key_refused(void **state)
{
	(void)state;
	assert_int_equal(mn_start(3, NULL), 0);
	assert_int_equal(th_cluster_kill(&mn_c, 1), 0);
	assert_int_equal(chmod(mn_c.key_file[1], 0644), 0);
	expect_refused_start(1, "mode 644 lets others read");
	assert_int_equal(chmod(mn_c.key_file[1], 0600), 0);
	assert_int_equal(th_cluster_start_node(&mn_c, 1), 0);
}

/* Node k runs but is not a member: for JOIN_WINDOW_MS, every import it
 * tries of a member's object fails, and the members see it as down; at
 * the end the members have logged a refusal. */
static void expect_cannot_join(unsigned k)
{
	struct capdsm *c0 = mn_connect(0), *ck = mn_connect(k);
	char ref[CAPDSM_REF_MAX];
	uint32_t slot;
	unsigned tries = 0;
	uint32_t s0 = mn_object(c0, PAGE, ref);
	for (int64_t end = mn_now_us() + JOIN_WINDOW_MS * 1000;
	     mn_now_us() < end; tries++) {
		int rc = capdsm_import(ck, ref, &slot);
		if (rc == 0) {
			print_message("node %u imported from node 0 after %u tries\n",
			              k, tries);
			fail();
		}
		assert_int_equal(rc, -EHOSTDOWN);
		for (unsigned j = 0; j < mn_c.n; j++)
			if (j != k)
				assert_int_equal(th_cluster_reachable(&mn_c, j, k),
				                 -EHOSTDOWN);
		mn_sleep_ms(100);
	}
	print_message("node %u: %u imports refused in %d ms: %s\n", k, tries,
	              JOIN_WINDOW_MS, capdsm_strerror(ck));
	for (unsigned j = 0; j < mn_c.n; j++) {
		if (j == k)
			continue;
		if (th_wait_log(&mn_c.node[j], "msg=\"peer refused\"", 3000) != 0) {
			th_cluster_dump_logs(&mn_c);
			print_message("node %u did not log a refusal\n", j);
			fail();
		}
		char *log = th_daemon_log(&mn_c.node[j]);
		const char *l = log ? strstr(log, "msg=\"peer refused\"") : NULL;
		if (l)
			print_message("node %u: %.*s\n", j, (int)strcspn(l, "\n"), l);
		free(log);
	}
	/* The members still work together. */
	struct capdsm *c1 = mn_connect(k == 1 ? 2 : 1);
	uint32_t s = mn_import(c1, ref);
	uint64_t v = 42, r = 0;
	MN_OK(c1, capdsm_write(c1, s, 0, &v, sizeof v));
	MN_OK(c0, capdsm_read(c0, s0, 0, &r, sizeof r));
	assert_int_equal(r, 42);
	assert_true(th_cluster_alive(&mn_c, k));
}

static void test_foreign_key_cannot_join(void **state)
{
	struct th_cluster_opts o = mn_opts;

	(void)state;
	o.foreign_key = 1u << 2;
	assert_int_equal(mn_start(3, &o), 0);
	expect_cannot_join(2);
}

/* A node that says plaintext = true: it needs no key and starts, but a
 * CURVE cluster never lets it in. */
static void test_plaintext_node_cannot_join(void **state)
{
	struct th_cluster_opts o = mn_opts;
	FILE *f;

	(void)state;
	o.no_key = 1u << 2;
	assert_int_equal(mn_start(3, &o), 0);
	f = fopen(mn_c.node[2].config, "a");
	assert_non_null(f);
	fprintf(f, "[cluster]\nplaintext = true\n");
	assert_int_equal(fclose(f), 0);
	assert_int_equal(th_cluster_start_node(&mn_c, 2), 0);
	expect_cannot_join(2);
}

/* References that cannot reach anything fail clearly and at once. */
static void test_reference_outside_cluster(void **state)
{
	struct capdsm *c0, *c1;
	char ref[CAPDSM_REF_MAX], bad[CAPDSM_REF_MAX + 8];
	uint32_t slot;
	const char *rest;

	(void)state;
	assert_int_equal(mn_start(3, NULL), 0);
	c0 = mn_connect(0);
	c1 = mn_connect(1);
	mn_object(c0, PAGE, ref);
	/* The same reference, naming node 7 (the cluster has 0..2). */
	rest = strchr(ref + strlen("cdsm1:"), ':');
	assert_non_null(rest);
	snprintf(bad, sizeof bad, "cdsm1:7%s", rest);
	for (unsigned k = 0; k < 2; k++) {
		struct capdsm *c = k ? c1 : c0;
		int64_t t0 = mn_now_us();
		MN_EXPECT(c, capdsm_import(c, bad, &slot), -EREMOTE);
		/* At once: no wait on a peer (looser under emulation). */
		assert_true(mn_now_us() - t0 < (getenv("CAPDSM_VM") ? 10000000 : 1000000));
		assert_non_null(strstr(capdsm_strerror(c), "not in this cluster"));
	}
	/* Naming node 0 with a wrong secret: node 0 says there is no such
	 * reference, also when asked through node 1. */
	snprintf(bad, sizeof bad, "%s", ref);
	bad[strlen(bad) - 1] = bad[strlen(bad) - 1] == '0' ? '1' : '0';
	MN_EXPECT(c0, capdsm_import(c0, bad, &slot), -EACCES);
	MN_EXPECT(c1, capdsm_import(c1, bad, &slot), -EACCES);
	print_message("wrong secret through node 1: %s\n", capdsm_strerror(c1));
	/* Malformed: -EINVAL, not a request to anybody. */
	MN_EXPECT(c1, capdsm_import(c1, "cdsm1:1:zz", &slot), -EINVAL);
	/* The real one still works from node 1. */
	MN_OK(c1, capdsm_import(c1, ref, &slot));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		MN_OWN_TEST(test_no_key_file_refused),
		MN_OWN_TEST(test_mismatched_key_refused),
		MN_OWN_TEST(test_readable_key_refused),
		MN_OWN_TEST(test_foreign_key_cannot_join),
		MN_OWN_TEST(test_plaintext_node_cannot_join),
		MN_OWN_TEST(test_reference_outside_cluster),
	};
	mn_guard_seconds = 30;
	return MN_RUN("multinode.security", tests, false);
}
