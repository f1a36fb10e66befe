/* test_jacobi.c — the demo workload across nodes: capdsm-jacobi ($CAPDSM_JACOBI)
 * solves the heat equation on a grid in one object, with worker processes
 * spread round-robin over the nodes' sockets, each mapping the grid and
 * updating its own band of rows, a lock-protected barrier between sweeps;
 * then it redoes the sweeps serially in plain memory and counts the cells
 * that differ. Across 3 daemons (6 workers, two per node) and across 4
 * (4 workers, one per node) that count must be 0. */
#include "mn.h"

#include <fcntl.h>
#include <sys/wait.h>

static const char *jacobi_path(void)
{
	const char *p = getenv("CAPDSM_JACOBI");
	return p && p[0] ? p : NULL;
}

/* Runs capdsm-jacobi over every node of the cluster with `workers`
 * workers; its output (stdout and stderr) goes to `out`. Returns its exit
 * code. */
static int run_jacobi(unsigned workers, char *out, size_t cap)
{
	char path[160], wbuf[16];
	const char *argv[2 * TH_CLUSTER_MAX + 8];
	unsigned a = 0;
	int fd, rc;
	pid_t pid;
	ssize_t k;

	snprintf(path, sizeof path, "%s/jacobi.out", mn_c.dir);
	snprintf(wbuf, sizeof wbuf, "%u", workers);
	argv[a++] = "capdsm-jacobi";
	for (unsigned n = 0; n < mn_c.n; n++) {
		argv[a++] = "--socket";
		argv[a++] = th_cluster_sock(&mn_c, n);
	}
	argv[a++] = "--workers";
	argv[a++] = wbuf;
	if (getenv("CAPDSM_VM")) {
		/* Inside tests/vm every instruction is emulated: fewer
		 * sweeps, the same check against the serial run. */
		argv[a++] = "--iters";
		argv[a++] = "25";
	}
	argv[a] = NULL;
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	pid = th_fork(80);
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		execv(jacobi_path(), (char *const *)argv);
		_exit(127);
	}
	rc = th_wait_exit(pid, 80000);
	k = pread(fd, out, cap - 1, 0);
	out[k > 0 ? k : 0] = '\0';
	close(fd);
	return rc;
}

static void jacobi_on(unsigned nodes, unsigned workers)
{
	static char out[8192];
	int64_t t0;
	int rc;

	if (!jacobi_path()) {
		print_message("CAPDSM_JACOBI (path of capdsm-jacobi) is not set\n");
		fail();
	}
	assert_int_equal(mn_start(nodes, NULL), 0);
	t0 = mn_now_us();
	rc = run_jacobi(workers, out, sizeof out);
	print_message("%u nodes, %u workers, %.2f s: %s", nodes, workers,
	              (mn_now_us() - t0) / 1e6, out);
	if (rc != 0)
		th_cluster_dump_logs(&mn_c);
	assert_int_equal(rc, 0);
	assert_non_null(strstr(out, ", 0 cells differ"));
	/* Every node is still up and answers. */
	for (unsigned k = 0; k < nodes; k++) {
		assert_true(th_cluster_alive(&mn_c, k));
		mn_close(mn_connect(k));
	}
}

static void test_jacobi_3_nodes(void **state)
{
	(void)state;
	jacobi_on(3, 6);
}

static void test_jacobi_4_nodes(void **state)
{
	(void)state;
	jacobi_on(4, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		MN_OWN_TEST(test_jacobi_3_nodes),
		MN_OWN_TEST(test_jacobi_4_nodes),
	};
	mn_guard_seconds = 90;
	return MN_RUN("multinode.jacobi", tests, false);
}
