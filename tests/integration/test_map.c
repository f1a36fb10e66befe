/* test_map.c — shared memory across processes through map: two forked
 * clients that reach one object (through a sturdy reference, or a transfer
 * with capdsm_send/capdsm_recv) see each other's stores at once, through
 * their mappings and through capdsm_read, and an explicit write is seen in
 * a mapping that was already faulted in. */
#include "it.h"

#include <signal.h>
#include <sys/wait.h>

#define NPAGES 16u
#define SIZE (NPAGES * PAGE)
#define HALF (SIZE / 2)

/* The parent's buffer (static: nothing to free when an assertion fails). */
static uint8_t pbuf[SIZE];

/* Child side: connect and import a sturdy reference. */
static struct capdsm *child_import(const char *ref, uint32_t *slot)
{
	struct capdsm *c = NULL;

	TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &c) == 0, 10);
	TH_CHILD_CHECK(capdsm_import(c, ref, slot) == 0, 11);
	return c;
}

static void *child_map(struct capdsm *c, uint32_t slot, uint32_t rights)
{
	void *p = NULL;
	int rc = capdsm_map(c, capdsm_self(c), slot, 0, SIZE, rights, &p);

	if (rc)
		fprintf(stderr, "child map: %d %s\n", rc, capdsm_strerror(c));
	TH_CHILD_CHECK(rc == 0 && p != NULL, 12);
	return p;
}

/* Two processes map one object; each writes half through its mapping and
 * reads the other's half through its mapping and with capdsm_read. */
static void test_two_processes_see_each_others_stores(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	int a2b[2], b2a[2];
	pid_t a, b;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	assert_int_equal(pipe(a2b), 0);
	assert_int_equal(pipe(b2a), 0);

	a = th_fork(20);
	assert_true(a >= 0);
	if (a == 0) {
		uint32_t s;
		struct capdsm *ca = child_import(ref, &s);
		uint8_t *p = child_map(ca, s, CAPDSM_R_READ | CAPDSM_R_WRITE);

		th_fill(p, HALF, 1); /* first half, through the mapping */
		TH_CHILD_CHECK(th_pipe_send(a2b[1], 'w') == 0, 13);
		TH_CHILD_CHECK(th_pipe_recv(b2a[0], 10000) == 'r', 14);
		/* B's stores, through our own mapping, with no call between. */
		TH_CHILD_CHECK(th_check(p + HALF, HALF, 2) == -1, 15);
		capdsm_close(ca);
		_exit(0);
	}
	b = th_fork(20);
	assert_true(b >= 0);
	if (b == 0) {
		uint32_t s;
		struct capdsm *cb = child_import(ref, &s);
		uint8_t *q = child_map(cb, s, CAPDSM_R_READ | CAPDSM_R_WRITE);
		uint8_t *buf = malloc(HALF);

		TH_CHILD_CHECK(buf != NULL, 20);
		TH_CHILD_CHECK(th_pipe_recv(a2b[0], 10000) == 'w', 21);
		TH_CHILD_CHECK(th_check(q, HALF, 1) == -1, 22);
		TH_CHILD_CHECK(capdsm_read(cb, s, 0, buf, HALF) == 0, 23);
		TH_CHILD_CHECK(th_check(buf, HALF, 1) == -1, 24);
		th_fill(q + HALF, HALF, 2);
		TH_CHILD_CHECK(th_pipe_send(b2a[1], 'r') == 0, 25);
		free(buf);
		capdsm_close(cb);
		_exit(0);
	}
	assert_int_equal(th_wait_exit(a, 15000), 0);
	assert_int_equal(th_wait_exit(b, 15000), 0);

	/* Both halves are in the object. */
	IT_OK(c, capdsm_read(c, obj, 0, pbuf, SIZE));
	assert_int_equal(th_check(pbuf, HALF, 1), -1);
	assert_int_equal(th_check(pbuf + HALF, HALF, 2), -1);
	/* The children's mappings went with their sessions. */
	assert_int_equal(th_wait_stat(c, "mappings_used", 0, 3000), 0);
	for (int i = 0; i < 2; i++) {
		close(a2b[i]);
		close(b2a[i]);
	}
	it_close(c);
}

/* capdsm_write from one process shows at once in another's mapping, also on
 * pages that mapping has already faulted in. */
static void test_explicit_write_seen_in_mapping(void **state)
{
	struct capdsm *c = it_connect();
	char ref[CAPDSM_REF_MAX];
	uint32_t obj;
	int up[2], down[2];
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	IT_OK(c, capdsm_export(c, obj, ref, sizeof ref));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		uint32_t s;
		struct capdsm *ck = child_import(ref, &s);
		volatile uint8_t *p = child_map(ck, s, CAPDSM_R_READ);

		/* Fault in every other page before the write: zeros. */
		for (uint32_t i = 0; i < NPAGES; i += 2)
			TH_CHILD_CHECK(p[i * PAGE] == 0 && p[i * PAGE + 5] == 0, 30);
		TH_CHILD_CHECK(th_pipe_send(up[1], 'm') == 0, 31);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'w', 32);
		TH_CHILD_CHECK(th_check((const void *)p, SIZE, 3) == -1, 33);
		capdsm_close(ck);
		_exit(0);
	}
	assert_int_equal(th_pipe_recv(up[0], 10000), 'm');
	th_fill(pbuf, SIZE, 3);
	IT_OK(c, capdsm_write(c, obj, 0, pbuf, SIZE));
	assert_int_equal(th_pipe_send(down[1], 'w'), 0);
	assert_int_equal(th_wait_exit(kid, 15000), 0);
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

/* The same through a transfer: the child hands the parent a sturdy
 * reference to its own process capability; the parent sends the object's
 * capability to that process with capdsm_send; the child takes it with
 * capdsm_recv, maps it and stores; the parent sees the stores with
 * capdsm_read and through its own mapping. */
static void test_transfer_then_map(void **state)
{
	struct capdsm *c = it_connect();
	char pref[CAPDSM_REF_MAX];
	uint32_t obj, proc;
	int up[2], down[2];
	pid_t kid;

	(void)state;
	IT_OK(c, capdsm_object_create(c, CAPDSM_SESSION_BANK, SIZE, &obj));
	uint8_t *buf = pbuf;
	th_fill(buf, HALF, 4);
	IT_OK(c, capdsm_write(c, obj, 0, buf, HALF));
	assert_int_equal(pipe(up), 0);
	assert_int_equal(pipe(down), 0);

	kid = th_fork(20);
	assert_true(kid >= 0);
	if (kid == 0) {
		struct capdsm *ck = NULL;
		char r[CAPDSM_REF_MAX];
		struct capdsm_cap_info ci;
		uint32_t s;

		TH_CHILD_CHECK(capdsm_connect(it_d.sock, NULL, &ck) == 0, 40);
		TH_CHILD_CHECK(capdsm_export(ck, capdsm_self(ck), r, sizeof r) == 0,
		               41);
		TH_CHILD_CHECK(th_pipe_send_str(up[1], r) == 0, 42);
		TH_CHILD_CHECK(capdsm_recv(ck, &s) == 0, 43);
		TH_CHILD_CHECK(capdsm_cap_info(ck, s, &ci) == 0, 44);
		TH_CHILD_CHECK(ci.kind == 1 && ci.size == SIZE, 45);
		TH_CHILD_CHECK(ci.rights == (CAPDSM_R_READ | CAPDSM_R_WRITE |
		                             CAPDSM_R_MAP), 46);
		uint8_t *p = child_map(ck, s, CAPDSM_R_READ | CAPDSM_R_WRITE);
		TH_CHILD_CHECK(th_check(p, HALF, 4) == -1, 47);
		th_fill(p + HALF, HALF, 5);
		TH_CHILD_CHECK(th_pipe_send(up[1], 'w') == 0, 48);
		TH_CHILD_CHECK(th_pipe_recv(down[0], 10000) == 'q', 49);
		capdsm_close(ck);
		_exit(0);
	}
	assert_int_equal(th_pipe_recv_str(up[0], pref, sizeof pref, 10000), 0);
	IT_OK(c, capdsm_import(c, pref, &proc));
	struct capdsm_cap_info pi;
	IT_OK(c, capdsm_cap_info(c, proc, &pi));
	assert_int_equal(pi.kind, 2); /* a process capability */
	IT_OK(c, capdsm_send(c, obj, proc,
	                     CAPDSM_R_READ | CAPDSM_R_WRITE | CAPDSM_R_MAP));
	assert_int_equal(th_pipe_recv(up[0], 10000), 'w');

	/* The child's stores, before it exits: explicit read... */
	IT_OK(c, capdsm_read(c, obj, 0, buf, SIZE));
	assert_int_equal(th_check(buf, HALF, 4), -1);
	assert_int_equal(th_check(buf + HALF, HALF, 5), -1);
	/* ...and our own mapping. */
	void *p = NULL;
	IT_OK(c, capdsm_map(c, capdsm_self(c), obj, 0, SIZE, CAPDSM_R_READ, &p));
	assert_int_equal(th_check((uint8_t *)p + HALF, HALF, 5), -1);
	IT_OK(c, capdsm_unmap(c, p));
	assert_int_equal(th_pipe_send(down[1], 'q'), 0);
	assert_int_equal(th_wait_exit(kid, 15000), 0);
	for (int i = 0; i < 2; i++) {
		close(up[i]);
		close(down[i]);
	}
	it_close(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_two_processes_see_each_others_stores),
		IT_TEST(test_explicit_write_seen_in_mapping),
		IT_TEST(test_transfer_then_map),
	};
	return IT_RUN("integration.map", tests, true);
}
