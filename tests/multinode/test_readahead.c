/* test_readahead.c — sequential readers of another home's object, with
 * read-ahead (cluster.prefetch_pages) on, as it is by default.
 *
 * Read-ahead asks for pages before the reader touches them and maps them
 * into the reader as they arrive; these tests check that it does (the
 * daemon's prefetch counters move and most pages are never faulted on),
 * and above all that it changes nothing a reader can see: every byte is
 * right through read-write and read-only mappings and explicit reads,
 * pages a writer changes after they were read ahead are seen changed, a
 * store to a read-ahead page upgrades it, a frame pool smaller than the
 * object evicts read-ahead pages without losing any, and a reader that
 * races a writer sweeping the object sees sequentially consistent values.
 */
#include "mn.h"

#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define NPAGES 256u
#define SIZE ((size_t)NPAGES * PAGE)

static uint8_t buf[SIZE];

struct counts {
	uint64_t asked, mapped, faults;
};

static void count_fn(const char *name, uint64_t v, void *arg)
{
	struct counts *c = arg;

	if (!strcmp(name, "prefetch_asked"))
		c->asked = v;
	else if (!strcmp(name, "prefetch_mapped"))
		c->mapped = v;
	else if (!strcmp(name, "faults_missing") || !strcmp(name, "faults_minor"))
		c->faults += v;
}

static struct counts counts(struct capdsm *c)
{
	struct counts k = { 0 };

	MN_OK(c, capdsm_stats(c, count_fn, &k));
	return k;
}

/* Writes page i's pattern for `seed` into the whole object through c0. */
static void fill(struct capdsm *c0, uint32_t s0, uint32_t seed)
{
	for (size_t i = 0; i < NPAGES; i++)
		th_fill(buf + i * PAGE, PAGE, seed + (uint32_t)i);
	MN_OK(c0, capdsm_write(c0, s0, 0, buf, SIZE));
}

/* Checks every page of p against fill(seed); reports the first bad byte. */
static void check(const volatile uint8_t *p, uint32_t seed, const char *what)
{
	for (size_t i = 0; i < NPAGES; i++)
		for (size_t j = 0; j < PAGE; j++)
			if (p[i * PAGE + j] != th_pattern(seed + (uint32_t)i, j)) {
				print_message("%s: page %zu byte %zu = 0x%02x, want 0x%02x\n",
				              what, i, j, p[i * PAGE + j],
				              th_pattern(seed + (uint32_t)i, j));
				fail();
			}
}

static void *map(struct capdsm *c, uint32_t slot, uint32_t rights)
{
	void *p = NULL;

	MN_OK(c, capdsm_map(c, capdsm_self(c), slot, 0, SIZE, rights, &p));
	assert_non_null(p);
	return p;
}

/* A scan through a mapping on node 1 of an object node 0 wrote: right
 * bytes, pages asked for ahead and mapped before they were touched. Then
 * node 0 rewrites the object and the same mapping sees the new bytes
 * (the read-ahead copies were invalidated like any other copy); stores
 * to pages mapped read-only by read-ahead are upgrades and reach node 0;
 * a read-only mapping and explicit reads on node 2 read ahead too. */
static void test_scan_is_read_ahead_and_coherent(void **state)
{
	struct capdsm *c0 = mn_connect(0), *c1 = mn_connect(1), *c2 = mn_connect(2);
	char ref[CAPDSM_REF_MAX];
	uint32_t s0, s1, s2;

	(void)state;
	s0 = mn_object(c0, SIZE, ref);
	s1 = mn_import(c1, ref);
	s2 = mn_import(c2, ref);
	fill(c0, s0, 1000);

	struct counts before = counts(c1);
	volatile uint8_t *p = map(c1, s1, CAPDSM_R_READ | CAPDSM_R_WRITE);
	check(p, 1000, "first scan");
	struct counts after = counts(c1);
	print_message("node 1 scan: %llu pages asked ahead, %llu mapped ahead, "
	              "%llu faults for %u pages\n",
	              (unsigned long long)(after.asked - before.asked),
	              (unsigned long long)(after.mapped - before.mapped),
	              (unsigned long long)(after.faults - before.faults), NPAGES);
	assert_true(after.asked - before.asked >= NPAGES / 2);
	assert_true(after.mapped - before.mapped >= NPAGES / 2);
	assert_true(after.faults - before.faults < NPAGES / 2);

	/* The home changes everything; the reader's copies must go. */
	fill(c0, s0, 2000);
	check(p, 2000, "scan after the home rewrote the object");

	/* Stores to read-ahead pages (mapped read-only) upgrade them. */
	for (size_t i = 0; i < NPAGES; i++)
		p[i * PAGE + 7] = (uint8_t)(i ^ 0x5a);
	MN_OK(c0, capdsm_read(c0, s0, 0, buf, SIZE));
	for (size_t i = 0; i < NPAGES; i++) {
		if (buf[i * PAGE + 7] != (uint8_t)(i ^ 0x5a)) {
			print_message("page %zu: home reads 0x%02x after node 1's store\n",
			              i, buf[i * PAGE + 7]);
			fail();
		}
		buf[i * PAGE + 7] = th_pattern(2000 + (uint32_t)i, 7);
	}
	MN_OK(c0, capdsm_write(c0, s0, 0, buf, SIZE)); /* back to fill(2000) */

	/* Node 2: a read-only mapping, then explicit reads, both read ahead. */
	before = counts(c2);
	volatile uint8_t *q = map(c2, s2, CAPDSM_R_READ);
	check(q, 2000, "read-only mapping on node 2");
	after = counts(c2);
	assert_true(after.mapped - before.mapped >= NPAGES / 2);
	fill(c0, s0, 3000);
	before = counts(c2);
	memset(buf, 0, SIZE);
	MN_OK(c2, capdsm_read(c2, s2, 0, buf, SIZE));
	check(buf, 3000, "explicit read on node 2");
	after = counts(c2);
	assert_true(after.asked - before.asked >= NPAGES / 2);
	check(q, 3000, "read-only mapping on node 2 after the rewrite");

	MN_OK(c0, capdsm_object_destroy(c0, s0));
	mn_close(c0);
	mn_close(c1);
	mn_close(c2);
}

/* The writer: sweeps the object page by page, round after round, storing
 * the round number in each page's first word, until `stop` says so. */
static void sweeper(const char *ref, int ready, int stop)
{
	struct capdsm *c = mn_child_connect(2);
	uint32_t s = mn_child_import(c, ref);
	volatile uint64_t *p = mn_child_map(c, s, SIZE);

	TH_CHILD_CHECK(th_pipe_send(ready, 'r') == 0, 20);
	for (uint64_t round = 1; round < 100000; round++) {
		for (size_t i = 0; i < NPAGES; i++)
			p[i * PAGE / 8] = round;
		struct pollfd pf = { .fd = stop, .events = POLLIN };
		if (poll(&pf, 1, 0) > 0)
			break;
	}
	capdsm_close(c);
	_exit(0);
}

/* A reader on node 1 scans forward while a writer on node 2 sweeps
 * forward. Under sequential consistency, if the reader saw round v at
 * page i, the writer had finished round v - 1 everywhere before that
 * load, so every later page the reader loads shows at least v - 1. A
 * read-ahead copy kept past its invalidation would show an older round. */
static void test_reader_racing_a_sweeping_writer(void **state)
{
	struct capdsm *c0 = mn_connect(0), *c1 = mn_connect(1);
	char ref[CAPDSM_REF_MAX];
	uint32_t s1;
	int ready[2], stop[2];

	(void)state;
	mn_object(c0, SIZE, ref);
	s1 = mn_import(c1, ref);
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(stop), 0);
	pid_t kid = th_fork(30);
	assert_true(kid >= 0);
	if (kid == 0)
		sweeper(ref, ready[1], stop[0]);
	assert_int_equal(th_pipe_recv(ready[0], 10000), 'r');

	volatile uint64_t *p = map(c1, s1, CAPDSM_R_READ);
	uint64_t seen_max = 0, scans = 0, checked = 0;
	/* Until the writer has swept several rounds under our eyes (or 10 s:
	 * then it did not really run, and the test fails below). */
	int64_t until = mn_now_us() + 10000000;
	while ((mn_now_us() < until && seen_max < 5) || scans < 3) {
		uint64_t hi = 0;
		for (size_t i = 0; i < NPAGES; i++) {
			uint64_t v = p[i * PAGE / 8];
			if (hi > 1 && v < hi - 1) {
				print_message("scan %llu: page %zu shows round %llu after an "
				              "earlier page showed %llu\n",
				              (unsigned long long)scans, i,
				              (unsigned long long)v, (unsigned long long)hi);
				fail();
			}
			if (v > hi)
				hi = v;
			checked++;
		}
		if (hi > seen_max)
			seen_max = hi;
		scans++;
	}
	assert_int_equal(th_pipe_send(stop[1], 'q'), 0);
	assert_int_equal(th_wait_exit(kid, 10000), 0);
	print_message("%llu scans, %llu loads, the writer reached round %llu\n",
	              (unsigned long long)scans, (unsigned long long)checked,
	              (unsigned long long)seen_max);
	assert_true(seen_max >= 2); /* the writer really ran meanwhile */
	close(ready[0]);
	close(ready[1]);
	close(stop[0]);
	close(stop[1]);
	mn_close(c0);
	mn_close(c1);
}

/* A frame pool for remote pages of 64 frames (a read-ahead window of 16)
 * and an object of 256 pages: scanning it evicts read-ahead pages, and
 * every byte is still right, twice over. */
static void test_small_frame_pool(void **state)
{
	struct th_cluster_opts o = mn_opts;
	o.extra = "[pools]\nremote_frames = 64\n";
	char ref[CAPDSM_REF_MAX];

	(void)state;
	assert_int_equal(mn_start(2, &o), 0);
	struct capdsm *c0 = mn_connect(0), *c1 = mn_connect(1);
	uint32_t s0 = mn_object(c0, SIZE, ref);
	uint32_t s1 = mn_import(c1, ref);
	fill(c0, s0, 4000);
	volatile uint8_t *p = map(c1, s1, CAPDSM_R_READ | CAPDSM_R_WRITE);
	check(p, 4000, "first scan, 64 frames");
	/* A second run over the same mapping reads ahead again (the window
	 * of the first run must not hold it back). */
	struct counts before = counts(c1);
	check(p, 4000, "second scan, 64 frames");
	struct counts after = counts(c1);
	print_message("second scan: %llu pages asked ahead, %llu faults\n",
	              (unsigned long long)(after.asked - before.asked),
	              (unsigned long long)(after.faults - before.faults));
	assert_true(after.asked - before.asked >= NPAGES / 2);
	memset(buf, 0, SIZE);
	MN_OK(c1, capdsm_read(c1, s1, 0, buf, SIZE));
	check(buf, 4000, "explicit read, 64 frames");
	struct counts k = counts(c1);
	assert_true(k.mapped > 0);
	mn_close(c0);
	mn_close(c1);
}

/* A reader whose session ends while its read-ahead is still in flight,
 * then a writer on the same node: the released import must not leave the
 * node in the home's copyset without a copy (its upgrade would be granted
 * with no data: the write hung, the home logged a refused GRANT). Many
 * rounds, for the race between the end of the session and the replies. */
/* A connection to node k the test closes itself (mn_connect's are
 * closed by the harness). */
static struct capdsm *own_connect(unsigned k)
{
	struct capdsm *c = NULL;
	assert_int_equal(capdsm_connect(th_cluster_sock(&mn_c, k), NULL, &c), 0);
	return c;
}

static void test_release_with_read_ahead_in_flight(void **state)
{
	struct capdsm *c0 = mn_connect(0);
	char ref[CAPDSM_REF_MAX];
	uint8_t small[8];
	(void)state;

	for (unsigned round = 0; round < 12; round++) {
		uint32_t s0 = mn_object(c0, SIZE, ref);
		struct capdsm *r = own_connect(1);
		uint32_t sr = mn_import(r, ref);
		MN_OK(r, capdsm_read(r, sr, 0, small, 5)); /* starts read-ahead */
		capdsm_close(r);

		struct capdsm *w = own_connect(1);
		uint32_t sw = mn_import(w, ref);
		for (size_t i = 0; i < SIZE; i++)
			buf[i] = th_pattern(7000 + round, i);
		MN_OK(w, capdsm_write(w, sw, 0, buf, SIZE));
		capdsm_close(w);
		memset(buf, 0, SIZE);
		MN_OK(c0, capdsm_read(c0, s0, 0, buf, SIZE));
		for (size_t i = 0; i < SIZE; i++)
			if (buf[i] != th_pattern(7000 + round, i)) {
				print_message("round %u: byte %zu differs at the "
				              "home\n", round, i);
				fail();
			}
		MN_OK(c0, capdsm_object_destroy(c0, s0));
	}
}

int main(void)
{
	const struct CMUnitTest group[] = {
		MN_TEST(test_scan_is_read_ahead_and_coherent),
		MN_TEST(test_reader_racing_a_sweeping_writer),
		MN_TEST(test_release_with_read_ahead_in_flight),
	};
	const struct CMUnitTest own[] = {
		MN_OWN_TEST(test_small_frame_pool),
	};
	mn_nodes = 3;
	int rc = MN_RUN("multinode.readahead", group, true);
	if (rc)
		return rc;
	return MN_RUN("multinode.readahead_small_pool", own, false);
}
