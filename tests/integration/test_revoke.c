/* test_revoke.c — revocation on every path (design C2): after
 * capdsm_revoke, and after capdsm_revoke_ref from another process, every
 * operation on the revoked capability and on everything derived from it
 * (restrict, sturdy import, transfer into another process) is -EKEYREVOKED;
 * importing the revoked reference is -EKEYREVOKED (caps.h: -EACCES is for
 * an unknown reference or a wrong secret, checked here too). A live
 * mapping of a revoked capability stops working: touching a page not yet
 * faulted in kills the process (SIGBUS/SIGSEGV), and stores through a page
 * already faulted in do not reach the object. */
#include "it.h"

#include <signal.h>
#include <sys/wait.h>

#define NPAGES 8u
#define SIZE (NPAGES * PAGE)

/* Every operation on `slot` fails with -EKEYREVOKED. Returns 0, or the
 * number of the first operation that did not (for a child's exit code).
 * `proc` is a valid process capability to send to. */
static int all_revoked(struct capdsm *c, uint32_t slot, uint32_t proc)
{
	char buf[64], ref[CAPDSM_REF_MAX];
	struct capdsm_cap_info ci;
	uint32_t out;
	void *p = NULL;
	int rc;

	memset(buf, 0x5a, sizeof buf);
#define R(n, expr)                                                            \
	do {                                                                      \
		rc = (expr);                                                          \
		if (rc != -EKEYREVOKED) {                                             \
			fprintf(stderr, "slot %u: %s = %d (%s), expected -EKEYREVOKED\n", \
			        slot, #expr, rc, capdsm_strerror(c));                     \
			return (n);                                                       \
		}                                                                     \
	} while (0)
	R(1, capdsm_read(c, slot, 0, buf, sizeof buf));
	R(2, capdsm_write(c, slot, 0, buf, sizeof buf));
	R(3, capdsm_lock(c, slot, 0, 8, CAPDSM_LOCK_EXCLUSIVE));
	R(4, capdsm_lock(c, slot, 0, 8, CAPDSM_LOCK_SHARED | CAPDSM_LOCK_TRY));
	R(5, capdsm_unlock(c, slot, 0, 8));
	R(6, capdsm_map(c, capdsm_self(c), slot, 0, PAGE, CAPDSM_R_READ, &p));
	R(7, capdsm_map(c, capdsm_self(c), slot, 0, PAGE,
	                CAPDSM_R_READ | CAPDSM_R_WRITE, &p));
	R(8, capdsm_restrict(c, slot, CAPDSM_R_READ, &out));
	R(9, capdsm_export(c, slot, ref, sizeof ref));
	R(10, capdsm_send(c, slot, proc, CAPDSM_R_READ));
	R(11, capdsm_cap_info(c, slot, &ci));
	R(12, capdsm_revoke(c, slot));
#undef R
	if (p != NULL)
		return 13;
	return 0;
}

/* The same reference with one secret digit changed. */
static void tamper(const char *ref, char *out, size_t cap)
{
	size_t n = strlen(ref);

	snprintf(out, cap, "%s", ref);
	out[n - 1] = out[n - 1] == '0' ? '1' : '0';
}

/* Parent revokes R; R, its restriction D, its sturdy reference, the
 * child's import of that reference (and the child's restriction of the
 * import), and the copy the child received with capdsm_recv all fail. The
 * parent's original capability O keeps working. */
static void test_revoke_reaches_every_path(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX], kref[CAPDSM_REF_MAX], bad[CAPDSM_REF_MAX];
	uint32_t obj, r, d, kproc, sl;
	uint8_t data[SIZE];
	int up[2], down[2];
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 11);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_ALL, &r));
	IT_OK(c, capdsm_restrict(c, r, CAPDSM_R_READ | CAPDSM_R_LOCK |
	                                CAPDSM_R_MAP | CAPDSM_R_GRANT, &d));
	IT_OK(c, capdsm_export(c, r, ref, sizeof ref));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		uint32_t ri, rd, t, s2;
		char buf[64], r2[CAPDSM_REF_MAX];
		int rc;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_export(ck, capdsm_self(ck), r2, sizeof r2) == 0,
		               11);
		TH_CHILD_CHECK(th_pipe_send_str(up[1], r2) == 0, 12);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &ri) == 0, 13);
		TH_CHILD_CHECK(capdsm_restrict(ck, ri, CAPDSM_R_READ | CAPDSM_R_LOCK,
		                               &rd) == 0, 14);
		TH_CHILD_CHECK(capdsm_recv(ck, &t) == 0, 15);
		/* All three work before the revocation. */
		TH_CHILD_CHECK(capdsm_read(ck, ri, 0, buf, sizeof buf) == 0, 16);
		TH_CHILD_CHECK(capdsm_read(ck, rd, 0, buf, sizeof buf) == 0, 17);
		TH_CHILD_CHECK(capdsm_read(ck, t, 0, buf, sizeof buf) == 0, 18);
		TH_CHILD_CHECK(th_check(buf, sizeof buf, 11) == -1, 19);
		TH_CHILD_CHECK(th_pipe_send(up[1], 'k') == 0, 20);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'v', 21);

		rc = all_revoked(ck, ri, capdsm_self(ck));
		TH_CHILD_CHECK(rc == 0, 30 + rc);
		rc = all_revoked(ck, rd, capdsm_self(ck));
		TH_CHILD_CHECK(rc == 0, 50 + rc);
		rc = all_revoked(ck, t, capdsm_self(ck));
		TH_CHILD_CHECK(rc == 0, 70 + rc);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s2) == -EKEYREVOKED, 90);
		capdsm_close(ck);
		_exit(0);
	}
	assert_int_equal(th_pipe_recv_str(up[0], kref, sizeof kref, 10000), 0);
	IT_OK(c, capdsm_import(c, kref, &kproc));
	IT_OK(c, capdsm_send(c, r, kproc, CAPDSM_R_READ | CAPDSM_R_WRITE |
	                                   CAPDSM_R_LOCK | CAPDSM_R_MAP |
	                                   CAPDSM_R_GRANT));
	assert_int_equal(th_pipe_recv(up[0], 10000), 'k');
	/* A lock taken through R before the revocation. */
	IT_OK(c, capdsm_lock(c, r, 0, 8, CAPDSM_LOCK_EXCLUSIVE));
	IT_OK(c, capdsm_unlock(c, r, 0, 8));

	uint64_t rev0 = it_stat(c, "revocations");
	IT_OK(c, capdsm_revoke(c, r));
	/* R, D, the sturdy record, the import, its restriction, the copy. */
	assert_true(it_stat(c, "revocations") >= rev0 + 6);
	assert_int_equal(all_revoked(c, r, kproc), 0);
	assert_int_equal(all_revoked(c, d, kproc), 0);
	IT_EXPECT(c, capdsm_import(c, ref, &sl), -EKEYREVOKED);
	IT_EXPECT(c, capdsm_revoke_ref(c, ref), -EKEYREVOKED);
	/* A reference with a wrong secret is unknown: -EACCES (caps.h). */
	tamper(ref, bad, sizeof bad);
	IT_EXPECT(c, capdsm_import(c, bad, &sl), -EACCES);

	assert_int_equal(th_pipe_send(down[1], 'v'), 0);
	assert_int_equal(th_wait_exit(kid, 15000), 0);

	/* The original is untouched, and none of the refused writes landed. */
	uint8_t back[SIZE];
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE);
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_READ, &sl));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

/* Process A imports a sturdy reference (and restricts it, and maps it);
 * process B, which never held the capability, revokes the reference; A's
 * slots and mapping are dead, the reference imports as revoked, the
 * exporter's own capability keeps working. */
static void test_revoke_ref_from_another_process(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj, sl;
	uint8_t data[SIZE];
	int up[2], down[2];
	pid_t a, b;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 21);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	a = th_fork(20);
	assert_true(a >= 0);
	if (a == 0) {
		struct capdsm *ca = NULL;
		uint32_t s, sd, s2;
		volatile uint8_t *p;
		void *vp;
		int rc;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ca) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ca, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_restrict(ca, s, CAPDSM_R_READ | CAPDSM_R_WRITE,
		                               &sd) == 0, 12);
		TH_CHILD_CHECK(capdsm_map(ca, capdsm_self(ca), s, 0, SIZE,
		                          CAPDSM_R_READ | CAPDSM_R_WRITE, &vp) == 0,
		               13);
		p = vp;
		TH_CHILD_CHECK(p[0] == th_pattern(21, 0), 14);
		TH_CHILD_CHECK(th_pipe_send(up[1], 'a') == 0, 15);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'g', 16);
		rc = all_revoked(ca, s, capdsm_self(ca));
		TH_CHILD_CHECK(rc == 0, 30 + rc);
		rc = all_revoked(ca, sd, capdsm_self(ca));
		TH_CHILD_CHECK(rc == 0, 50 + rc);
		TH_CHILD_CHECK(capdsm_import(ca, ref, &s2) == -EKEYREVOKED, 70);
		capdsm_close(ca);
		_exit(0);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'a');
	assert_int_equal(it_stat(c, "mappings_used"), 1);

	b = th_fork(20);
	assert_true(b >= 0);
	if (b == 0) {
		struct capdsm *cb = NULL;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &cb) == 0, 10);
		TH_CHILD_CHECK(capdsm_revoke_ref(cb, ref) == 0, 11);
		TH_CHILD_CHECK(capdsm_revoke_ref(cb, ref) == -EKEYREVOKED, 12);
		capdsm_close(cb);
		_exit(0);
	}
	assert_int_equal(th_wait_exit(b, 10000), 0);
	/* A's mapping lost its capability. */
	assert_int_equal(it_stat(c, "mappings_revoked"), 1);
	IT_EXPECT(c, capdsm_import(c, ref, &sl), -EKEYREVOKED);
	assert_int_equal(th_pipe_send(down[1], 'g'), 0);
	assert_int_equal(th_wait_exit(a, 15000), 0);

	uint8_t back[SIZE];
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE);
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

/* A child maps a capability read-write and touches a few pages; the parent
 * revokes the capability; the child then touches a page it has not touched
 * yet and must die of SIGBUS or SIGSEGV. */
static void test_revoked_mapping_untouched_page_kills(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj, r;
	uint8_t data[SIZE];
	int up[2], down[2], st = 0;
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 31);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_restrict(c, obj, CAPDSM_R_READ | CAPDSM_R_WRITE |
	                                  CAPDSM_R_MAP | CAPDSM_R_GRANT, &r));
	IT_OK(c, capdsm_export(c, r, ref, sizeof ref));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		volatile uint8_t *p;
		void *vp;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_map(ck, capdsm_self(ck), s, 0, SIZE,
		                          CAPDSM_R_READ | CAPDSM_R_WRITE, &vp) == 0,
		               12);
		p = vp;
		TH_CHILD_CHECK(p[0] == th_pattern(31, 0), 13);
		TH_CHILD_CHECK(p[PAGE + 1] == th_pattern(31, PAGE + 1), 14);
		TH_CHILD_CHECK(th_pipe_send(up[1], 'm') == 0, 15);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'r', 16);
		/* Page 5 was never touched by this process. */
		uint8_t v = p[5 * PAGE + 7];
		fprintf(stderr, "child: read %u from a revoked mapping\n", v);
		_exit(0);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'm');
	IT_OK(c, capdsm_revoke(c, r));
	assert_int_equal(th_pipe_send(down[1], 'r'), 0);
	assert_int_equal(th_wait(kid, 10000, &st), 0);
	if (!WIFSIGNALED(st))
		print_message("child exited with %d instead of dying\n",
		              WEXITSTATUS(st));
	assert_true(WIFSIGNALED(st));
	assert_true(WTERMSIG(st) == SIGBUS || WTERMSIG(st) == SIGSEGV);
	assert_int_equal(it_stat(c, "mappings_revoked"), 1);
	/* The daemon is fine and the data intact. */
	uint8_t back[SIZE];
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE);
	assert_int_equal(th_wait_stat(c, "mappings_used", 0, 3000), 0);
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

/* Stores through an already faulted-in, writable page of a mapping whose
 * capability was revoked (here with capdsm_revoke_ref) do not reach the
 * object; the parent checks with its own, still valid capability. */
static void test_revoked_mapping_stores_do_not_land(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	uint8_t data[SIZE], back[SIZE];
	int up[2], down[2], st = 0;
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 41);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		volatile uint8_t *p;
		void *vp;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_map(ck, capdsm_self(ck), s, 0, SIZE,
		                          CAPDSM_R_READ | CAPDSM_R_WRITE, &vp) == 0,
		               12);
		p = vp;
		/* Fault page 1 in writable: these stores do land. */
		for (int i = 0; i < 64; i++)
			p[PAGE + (unsigned)i] = 0xaa;
		TH_CHILD_CHECK(th_pipe_send(up[1], 'm') == 0, 13);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'r', 14);
		/* After the revocation: must not land. */
		for (int i = 0; i < 64; i++)
			p[PAGE + (unsigned)i] = 0xbb;
		for (int i = 0; i < 64; i++)
			p[PAGE + 1000 + (unsigned)i] = 0xbb;
		_exit(0);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'm');
	memset(data + PAGE, 0xaa, 64);
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	assert_memory_equal(back, data, SIZE); /* the first stores landed */

	IT_OK(c, capdsm_revoke_ref(c, ref));
	assert_int_equal(th_pipe_send(down[1], 'r'), 0);
	assert_int_equal(th_wait(kid, 10000, &st), 0);
	if (WIFSIGNALED(st))
		print_message("child died of signal %d at its store\n",
		              WTERMSIG(st));
	else
		print_message("child exited with %d\n", WEXITSTATUS(st));
	IT_OK(c, capdsm_read(c, obj, 0, back, SIZE));
	for (size_t i = 0; i < SIZE; i++)
		if (back[i] != data[i]) {
			print_message("byte %zu is 0x%02x, expected 0x%02x\n", i,
			              back[i], data[i]);
			fail_msg("a store through a revoked mapping reached the object");
		}
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

/* Loads through an already faulted-in page of a revoked mapping fail too,
 * without the process calling the library again: the daemon takes the
 * pages out of every mapping, and a valid mapping of the same object in
 * another process faults them back in with their contents intact. */
static void test_revoked_mapping_loses_reads(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	uint8_t data[SIZE];
	int up[2], down[2], st = 0;
	void *vp;
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	th_fill(data, SIZE, 43);
	IT_OK(c, capdsm_write(c, obj, 0, data, SIZE));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	/* The parent's own mapping stays valid throughout. */
	IT_OK(c, capdsm_map(c, capdsm_self(c), obj, 0, SIZE, CAPDSM_R_READ, &vp));
	assert_memory_equal(vp, data, SIZE);
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		volatile uint8_t *p;
		void *kp;
		uint32_t s;
		unsigned sum = 0;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 10);
		TH_CHILD_CHECK(capdsm_import(ck, ref, &s) == 0, 11);
		TH_CHILD_CHECK(capdsm_map(ck, capdsm_self(ck), s, 0, SIZE,
		                          CAPDSM_R_READ, &kp) == 0, 12);
		p = kp;
		for (size_t i = 0; i < SIZE; i++) /* every page faulted in */
			sum += p[i];
		TH_CHILD_CHECK(th_pipe_send(up[1], 'm') == 0, 13);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'r', 14);
		/* No library call in between: the load itself must fail. */
		sum += p[PAGE + 5];
		_exit((int)(sum & 1) + 20);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'm');
	IT_OK(c, capdsm_revoke_ref(c, ref));
	assert_int_equal(th_pipe_send(down[1], 'r'), 0);
	assert_int_equal(th_wait(kid, 10000, &st), 0);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGBUS);
	/* The valid mapping faults the pages back in, unchanged. */
	assert_memory_equal(vp, data, SIZE);
	IT_OK(c, capdsm_unmap(c, vp));
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_revoke_reaches_every_path),
		IT_TEST(test_revoke_ref_from_another_process),
		IT_TEST(test_revoked_mapping_untouched_page_kills),
		IT_TEST(test_revoked_mapping_stores_do_not_land),
		IT_TEST(test_revoked_mapping_loses_reads),
	};
	return IT_RUN("integration.revoke", tests, true);
}
