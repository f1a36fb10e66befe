/* test_malformed.c — hostile bytes on the daemon's socket (design: "every
 * decoder rejects malformed input with an error and never trusts a length
 * or index it has not checked"). Each case gets an error — a reply with a
 * negative status, or the connection closed where the framing itself is
 * broken — and afterwards the daemon still serves a fresh client, has
 * released the session, and holds exactly the descriptors it held before
 * (no leak of sockets or of descriptors passed with SCM_RIGHTS). */
#include "it.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>

/* The test's monitor client and the daemon's descriptor count with only
 * the monitor connected. */
static struct capdsm *mon;
static int fds0;

static void begin(void)
{
	mon = it_connect();
	fds0 = th_daemon_fd_count(&it_d);
	assert_true(fds0 > 0);
}

static int fd_count_settles(int want)
{
	int n = -1;

	for (int waited = 0; waited <= 3000; waited += 5) {
		n = th_daemon_fd_count(&it_d);
		if (n == want)
			break;
		usleep(5000);
	}
	return n;
}

/* The daemon is up, has dropped every raw session, leaks no descriptor,
 * and serves a new client correctly. */
static void end_healthy(void)
{
	assert_true(th_daemon_alive(&it_d));
	assert_int_equal(th_wait_stat(mon, "sessions_used", 1, 3000), 0);
	assert_int_equal(fd_count_settles(fds0), fds0);

	struct capdsm *c = it_connect();
	uint32_t b, o;
	uint8_t w[300], r[300];
	th_fill(w, sizeof w, 81);
	IT_OK(c, capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &b));
	IT_OK(c, capdsm_object_create(c, b, PAGE, &o));
	IT_OK(c, capdsm_write(c, o, 100, w, sizeof w));
	IT_OK(c, capdsm_read(c, o, 100, r, sizeof r));
	assert_memory_equal(w, r, sizeof w);
	IT_OK(c, capdsm_bank_destroy(c, b));
	it_close(c);

	assert_int_equal(th_wait_stat(mon, "sessions_used", 1, 3000), 0);
	assert_int_equal(fd_count_settles(fds0), fds0);
	it_close(mon);
	mon = NULL;
}

static int raw(void)
{
	int fd = th_raw_connect(it_d.sock);
	assert_true(fd >= 0);
	return fd;
}

/* Broken framing: at most one reply, with a negative status, then the
 * daemon closes the connection. */
static void expect_error_then_closed(int fd, const char *what)
{
	struct th_reply r = { .status = -1 };
	int rc = th_raw_read_reply(fd, &r);
	bool replied = rc == 0;

	if (replied) {
		print_message("%s: status %d \"%s\"\n", what, r.status, r.error);
		rc = th_raw_wait_closed(fd, 3000);
	} else {
		print_message("%s: closed without a reply (%d)\n", what, rc);
	}
	close(fd);
	if (rc != 0 && rc != -ECONNRESET)
		fail_msg("%s: the daemon kept the connection open (%d)", what, rc);
	if (replied && r.status >= 0)
		fail_msg("%s: answered with status %d", what, r.status);
}

/* A whole frame that is wrong: a reply with negative status and `id`. */
static int expect_error_reply(int fd, uint64_t id, const char *what)
{
	struct th_reply r;
	int rc = th_raw_read_reply(fd, &r);

	if (rc)
		print_message("%s: no reply (%d)\n", what, rc);
	assert_int_equal(rc, 0);
	print_message("%s: status %d \"%s\"\n", what, r.status, r.error);
	assert_int_equal(r.id, id);
	assert_true(r.status < 0);
	return r.status;
}

static struct wire_hdr good_hdr(uint32_t msg_len, uint32_t payload_len)
{
	return (struct wire_hdr){ .magic = WIRE_MAGIC, .msg_len = msg_len,
		                      .payload_len = payload_len, .flags = 0 };
}

/* A packed request with a fresh id. */
static Capdsm__Request req(uint64_t id, Capdsm__Request__BodyCase body)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	q.id = id;
	q.body_case = body;
	return q;
}

static uint64_t xs = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	xs ^= xs << 13;
	xs ^= xs >> 7;
	xs ^= xs << 17;
	return xs;
}

/* ---- broken framing ---- */

static void test_random_bytes(void **state)
{
	(void)state;
	begin();
	for (int round = 0; round < 12; round++) {
		uint8_t buf[4096];
		size_t n = 1 + rnd() % sizeof buf;
		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)rnd();
		if (round % 2 == 0) {
			buf[0] = 0; /* never the magic */
		} else if (n >= 4) {
			uint32_t m = WIRE_MAGIC; /* the magic, then noise */
			memcpy(buf, &m, 4);
		}
		int fd = raw();
		th_raw_send_bytes(fd, buf, n); /* may fail once the daemon closed */
		shutdown(fd, SHUT_WR);
		expect_error_then_closed(fd, "random bytes");
	}
	end_healthy();
}

static void test_wrong_magic(void **state)
{
	Capdsm__Request q = req(1, CAPDSM__REQUEST__BODY_HELLO);
	Capdsm__Hello h = CAPDSM__HELLO__INIT;
	uint8_t msg[64];

	(void)state;
	begin();
	h.version = 1;
	q.hello = &h;
	size_t len = capdsm__request__pack(&q, msg);
	struct wire_hdr bad = good_hdr((uint32_t)len, 0);
	bad.magic = 0x4d534444; /* "DDSM" */
	int fd = raw();
	assert_int_equal(th_raw_send(fd, &bad, msg, len, NULL, 0, -1), 0);
	expect_error_then_closed(fd, "wrong magic");
	/* Non-zero flags are as wrong as a bad magic. */
	bad = good_hdr((uint32_t)len, 0);
	bad.flags = 1;
	fd = raw();
	assert_int_equal(th_raw_send(fd, &bad, msg, len, NULL, 0, -1), 0);
	expect_error_then_closed(fd, "flags");
	end_healthy();
}

static void test_oversized_lengths(void **state)
{
	uint8_t body[64] = { 0x08, 0x01 };
	const struct {
		uint32_t msg_len, payload_len;
		bool hello_first;
		const char *what;
	} cases[] = {
		{ WIRE_MSG_MAX + 1, 0, false, "msg_len 16385" },
		{ UINT32_MAX, 0, false, "msg_len 2^32-1" },
		{ 0, 0, false, "msg_len 0" },
		{ 2, (16u << 20) + 1, true, "payload_len over max_payload" },
		{ 2, WIRE_PAYLOAD_MAX + 1, true, "payload_len over the ceiling" },
		{ 2, UINT32_MAX, false, "payload_len 2^32-1" },
	};

	(void)state;
	begin();
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int fd = raw();
		if (cases[i].hello_first)
			assert_int_equal(th_raw_hello(fd, 1, NULL), 0);
		struct wire_hdr h = good_hdr(cases[i].msg_len, cases[i].payload_len);
		/* The header, and a little of what it announces. */
		assert_int_equal(th_raw_send(fd, &h, body, sizeof body, NULL, 0, -1),
		                 0);
		expect_error_then_closed(fd, cases[i].what);
	}
	end_healthy();
}

/* A header that announces more than comes, then the client goes away:
 * nothing to answer, but the session must be released. */
static void test_truncated_then_close(void **state)
{
	(void)state;
	begin();
	/* Half a header. */
	int fd = raw();
	struct wire_hdr h = good_hdr(100, 0);
	assert_int_equal(th_raw_send_bytes(fd, &h, 8), 0);
	close(fd);
	/* A header and 10 of its 100 message bytes. */
	fd = raw();
	uint8_t junk[10] = { 0x08, 0x05 };
	assert_int_equal(th_raw_send(fd, &h, junk, sizeof junk, NULL, 0, -1), 0);
	close(fd);
	/* After hello, a write announcing 64 KiB of payload, 1 KiB sent. */
	uint32_t obj;
	IT_OK(mon, capdsm_object_create(mon, CAPDSM_SESSION_BANK, 16 * PAGE,
	                                &obj));
	char ref[CAPDSM_REF_MAX];
	IT_OK(mon, capdsm_export(mon, obj, ref, sizeof ref));
	/* Count again: the object's memory is new (once the two sessions
	 * above are gone). */
	assert_int_equal(th_wait_stat(mon, "sessions_used", 1, 3000), 0);
	fds0 = th_daemon_fd_count(&it_d);
	fd = raw();
	assert_int_equal(th_raw_hello(fd, 1, NULL), 0);
	Capdsm__Request q = req(2, CAPDSM__REQUEST__BODY_CAP_IMPORT);
	Capdsm__CapRef cr = CAPDSM__CAP_REF__INIT;
	cr.ref = ref;
	q.cap_import = &cr;
	struct th_reply r;
	assert_int_equal(th_raw_do(fd, &q, NULL, 0, -1, &r), 0);
	assert_int_equal(r.status, 0);
	Capdsm__Rw rw = CAPDSM__RW__INIT;
	rw.slot = r.slot;
	rw.offset = 0;
	rw.length = 65536;
	q = req(3, CAPDSM__REQUEST__BODY_WRITE);
	q.write = &rw;
	uint8_t msg[64], pl[1024];
	memset(pl, 0x77, sizeof pl);
	size_t len = capdsm__request__pack(&q, msg);
	h = good_hdr((uint32_t)len, 65536);
	assert_int_equal(th_raw_send(fd, &h, msg, len, pl, sizeof pl, -1), 0);
	close(fd);
	/* The session goes; the bytes that did arrive may have landed (a
	 * write is not atomic), nothing after them did. */
	assert_int_equal(th_wait_stat(mon, "sessions_used", 1, 3000), 0);
	uint8_t back[2048];
	IT_OK(mon, capdsm_read(mon, obj, 0, back, sizeof back));
	for (size_t i = sizeof pl; i < sizeof back; i++)
		assert_int_equal(back[i], 0);
	end_healthy();
}

/* ---- whole frames with a bad message ---- */

static void test_garbage_protobuf(void **state)
{
	uint8_t garbage[40];

	(void)state;
	begin();
	int fd = raw();
	/* Field 1 with wire type 7 (there is no such type), over and over. */
	memset(garbage, 0x0f, sizeof garbage);
	struct wire_hdr h = good_hdr(sizeof garbage, 0);
	assert_int_equal(th_raw_send(fd, &h, garbage, sizeof garbage, NULL, 0, -1),
	                 0);
	expect_error_reply(fd, 0, "garbage protobuf");
	/* A length-delimited field that claims more bytes than the message. */
	uint8_t overrun[] = { 0x12, 0x7f, 0x08, 0x01 };
	h = good_hdr(sizeof overrun, 0);
	assert_int_equal(th_raw_send(fd, &h, overrun, sizeof overrun, NULL, 0, -1),
	                 0);
	expect_error_reply(fd, 0, "field overruns the message");
	/* Garbage with a payload: the payload is skipped, the stream stays in
	 * step. */
	uint8_t pl[300];
	memset(pl, 0xab, sizeof pl);
	h = good_hdr(sizeof garbage, sizeof pl);
	assert_int_equal(th_raw_send(fd, &h, garbage, sizeof garbage, pl,
	                             sizeof pl, -1), 0);
	expect_error_reply(fd, 0, "garbage protobuf with payload");
	/* Random protobuf-looking bodies before hello: never accepted. */
	for (int round = 0; round < 20; round++) {
		uint8_t body[128];
		size_t n = 1 + rnd() % sizeof body;
		for (size_t i = 0; i < n; i++)
			body[i] = (uint8_t)rnd();
		h = good_hdr((uint32_t)n, 0);
		assert_int_equal(th_raw_send(fd, &h, body, n, NULL, 0, -1), 0);
		struct th_reply r;
		assert_int_equal(th_raw_read_reply(fd, &r), 0);
		assert_true(r.status < 0);
	}
	/* Still in step: a real hello works on the same connection. */
	assert_int_equal(th_raw_hello(fd, 9, NULL), 0);
	close(fd);
	end_healthy();
}

static void test_unknown_body_field(void **state)
{
	(void)state;
	begin();
	int fd = raw();
	assert_int_equal(th_raw_hello(fd, 1, NULL), 0);
	/* id = 7, then field 99 (varint 1): no body this daemon knows. */
	uint8_t msg[] = { 0x08, 0x07, 0x98, 0x06, 0x01 };
	struct wire_hdr h = good_hdr(sizeof msg, 0);
	assert_int_equal(th_raw_send(fd, &h, msg, sizeof msg, NULL, 0, -1), 0);
	expect_error_reply(fd, 7, "unknown body field");
	/* id only, no body at all. */
	uint8_t msg2[] = { 0x08, 0x08 };
	h = good_hdr(sizeof msg2, 0);
	assert_int_equal(th_raw_send(fd, &h, msg2, sizeof msg2, NULL, 0, -1), 0);
	expect_error_reply(fd, 8, "no body");
	/* An unknown field beside a known body (id 10, stats = {}, field 99)
	 * is skipped as protobuf says: the body is served. */
	uint8_t msg3[] = { 0x08, 0x0a, 0xba, 0x01, 0x00, 0x98, 0x06, 0x01 };
	h = good_hdr(sizeof msg3, 0);
	assert_int_equal(th_raw_send(fd, &h, msg3, sizeof msg3, NULL, 0, -1), 0);
	struct th_reply r;
	assert_int_equal(th_raw_read_reply(fd, &r), 0);
	assert_int_equal(r.id, 10);
	assert_int_equal(r.status, 0);
	assert_true(r.n_counters > 0);
	close(fd);
	end_healthy();
}

/* A write whose Rw.length differs from the frame's payload_len is refused,
 * its payload skipped, and the object unchanged. */
static void test_write_length_mismatch(void **state)
{
	uint32_t obj;
	char ref[CAPDSM_REF_MAX];
	struct th_reply r;

	(void)state;
	begin();
	IT_OK(mon, capdsm_object_create(mon, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(mon, capdsm_export(mon, obj, ref, sizeof ref));
	fds0 = th_daemon_fd_count(&it_d);

	int fd = raw();
	assert_int_equal(th_raw_hello(fd, 1, NULL), 0);
	Capdsm__Request q = req(2, CAPDSM__REQUEST__BODY_CAP_IMPORT);
	Capdsm__CapRef cr = CAPDSM__CAP_REF__INIT;
	cr.ref = ref;
	q.cap_import = &cr;
	assert_int_equal(th_raw_do(fd, &q, NULL, 0, -1, &r), 0);
	assert_int_equal(r.status, 0);
	uint32_t slot = r.slot;

	uint8_t pl[200];
	memset(pl, 0xcd, sizeof pl);
	const struct {
		uint64_t length;
		uint32_t payload;
	} cases[] = { { 100, 50 }, { 10, 200 }, { 50, 0 }, { 0, 50 } };
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		Capdsm__Rw rw = CAPDSM__RW__INIT;
		rw.slot = slot;
		rw.offset = 0;
		rw.length = cases[i].length;
		q = req(10 + i, CAPDSM__REQUEST__BODY_WRITE);
		q.write = &rw;
		assert_int_equal(th_raw_request(fd, &q, cases[i].payload ? pl : NULL,
		                                cases[i].payload, -1), 0);
		expect_error_reply(fd, 10 + i, "write length != payload length");
	}
	/* In step: a correct write and read on the same connection. */
	Capdsm__Rw rw = CAPDSM__RW__INIT;
	rw.slot = slot;
	rw.offset = 1000;
	rw.length = 16;
	q = req(20, CAPDSM__REQUEST__BODY_WRITE);
	q.write = &rw;
	assert_int_equal(th_raw_do(fd, &q, "0123456789abcdef", 16, -1, &r), 0);
	assert_int_equal(r.status, 0);
	close(fd);

	uint8_t back[PAGE];
	IT_OK(mon, capdsm_read(mon, obj, 0, back, PAGE));
	for (size_t i = 0; i < PAGE; i++)
		if (i < 1000 || i >= 1016)
			assert_int_equal(back[i], 0);
	assert_memory_equal(back + 1000, "0123456789abcdef", 16);
	end_healthy();
}

static void test_requests_before_hello(void **state)
{
	Capdsm__Stats st = CAPDSM__STATS__INIT;
	Capdsm__ObjectCreate oc = CAPDSM__OBJECT_CREATE__INIT;
	Capdsm__Rw rw = CAPDSM__RW__INIT;
	Capdsm__Lock lk = CAPDSM__LOCK__INIT;

	(void)state;
	begin();
	uint64_t objs0 = it_stat(mon, "objects_used");
	int fd = raw();
	Capdsm__Request q = req(3, CAPDSM__REQUEST__BODY_STATS);
	q.stats = &st;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, -1), 0);
	expect_error_reply(fd, 3, "stats before hello");
	oc.bank = UINT32_MAX;
	oc.size = PAGE;
	q = req(4, CAPDSM__REQUEST__BODY_OBJECT_CREATE);
	q.object_create = &oc;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, -1), 0);
	expect_error_reply(fd, 4, "object create before hello");
	rw.slot = 0;
	rw.length = 8;
	q = req(5, CAPDSM__REQUEST__BODY_READ);
	q.read = &rw;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, -1), 0);
	expect_error_reply(fd, 5, "read before hello");
	q = req(6, CAPDSM__REQUEST__BODY_WRITE);
	q.write = &rw;
	assert_int_equal(th_raw_request(fd, &q, "abcdefgh", 8, -1), 0);
	expect_error_reply(fd, 6, "write before hello");
	lk.length = 8;
	q = req(7, CAPDSM__REQUEST__BODY_LOCK);
	q.lock = &lk;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, -1), 0);
	expect_error_reply(fd, 7, "lock before hello");
	assert_int_equal(it_stat(mon, "objects_used"), objs0);
	/* Hello still works afterwards, once; a second one is refused. */
	assert_int_equal(th_raw_hello(fd, 8, NULL), 0);
	assert_true(th_raw_hello(fd, 9, NULL) < 0);
	close(fd);
	end_healthy();
}

/* ---- descriptors nobody asked for ---- */

/* True once the write end of the pipe is closed everywhere (read gives
 * end of file), i.e. the daemon did not keep the copy it was sent. */
static bool pipe_closed_everywhere(int rd, int timeout_ms)
{
	struct pollfd p = { .fd = rd, .events = POLLIN };
	char c;

	if (poll(&p, 1, timeout_ms) != 1)
		return false;
	return read(rd, &c, 1) == 0;
}

/* The reply to request `id`: its status (asserted to come). */
static int reply_status(int fd, uint64_t id, const char *what)
{
	struct th_reply r;

	assert_int_equal(th_raw_read_reply(fd, &r), 0);
	assert_int_equal(r.id, id);
	print_message("%s: status %d \"%s\"\n", what, r.status, r.error);
	return r.status;
}

/* A descriptor sent with a request that takes none is bad input: the
 * request is refused with an error (the rule for item 7), and the
 * daemon keeps no copy of the descriptor. The leak checks come first so
 * that they run whatever the status. */
static void test_unwanted_descriptor(void **state)
{
	Capdsm__Stats st = CAPDSM__STATS__INIT;
	int p[2], st1, st3;

	(void)state;
	begin();
	int fd = raw();
	assert_int_equal(th_raw_hello(fd, 1, NULL), 0);

	/* A pipe with a Stats request, which takes no descriptor. */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	Capdsm__Request q = req(2, CAPDSM__REQUEST__BODY_STATS);
	q.stats = &st;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, p[1]), 0);
	close(p[1]);
	st1 = reply_status(fd, 2, "descriptor with a stats request");
	assert_true(pipe_closed_everywhere(p[0], 3000));
	close(p[0]);

	/* Several descriptors at once with a Stats request. */
	int many[6];
	for (int i = 0; i < 3; i++)
		assert_int_equal(pipe2(&many[2 * i], O_CLOEXEC), 0);
	int send[3] = { many[1], many[3], many[5] };
	uint8_t msg[32];
	q = req(3, CAPDSM__REQUEST__BODY_STATS);
	q.stats = &st;
	size_t len = capdsm__request__pack(&q, msg);
	struct wire_hdr h = good_hdr((uint32_t)len, 0);
	assert_int_equal(th_raw_send_fds(fd, &h, msg, len, NULL, 0, send, 3), 0);
	for (int i = 0; i < 3; i++)
		close(send[i]);
	st3 = reply_status(fd, 3, "three descriptors with a stats request");
	for (int i = 0; i < 3; i++) {
		assert_true(pipe_closed_everywhere(many[2 * i], 3000));
		close(many[2 * i]);
	}

	/* A descriptor with a broken frame: the session goes, and so does
	 * the descriptor. */
	int fd2 = raw();
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	h = good_hdr(WIRE_MSG_MAX + 1, 0);
	assert_int_equal(th_raw_send(fd2, &h, NULL, 0, NULL, 0, p[1]), 0);
	close(p[1]);
	expect_error_then_closed(fd2, "descriptor with a broken frame");
	assert_true(pipe_closed_everywhere(p[0], 3000));
	close(p[0]);
	close(fd);
	end_healthy();

	if (st1 >= 0 || st3 >= 0)
		fail_msg("a Stats request carrying a descriptor was served "
		         "(status %d, %d) instead of refused", st1, st3);
}

/* A MapCommit must carry the mapping's userfaultfd: a pipe, a memfd or no
 * descriptor at all is refused, the daemon keeps no copy, and the mapping
 * stays uncommitted (so it serves no fault). */
static void test_map_commit_not_a_userfaultfd(void **state)
{
	int p[2];
	uint32_t obj, proc;
	char ref[CAPDSM_REF_MAX];
	struct th_reply r;

	(void)state;
	begin();
	IT_OK(mon, capdsm_object_create(mon, CAPDSM_SESSION_BANK, PAGE, &obj));
	IT_OK(mon, capdsm_export(mon, obj, ref, sizeof ref));
	fds0 = th_daemon_fd_count(&it_d); /* with the object's memory */
	int fd = raw();
	assert_int_equal(th_raw_hello(fd, 1, &proc), 0);

	Capdsm__CapRef cr = CAPDSM__CAP_REF__INIT;
	cr.ref = ref;
	Capdsm__Request q = req(2, CAPDSM__REQUEST__BODY_CAP_IMPORT);
	q.cap_import = &cr;
	assert_int_equal(th_raw_do(fd, &q, NULL, 0, -1, &r), 0);
	assert_int_equal(r.status, 0);
	Capdsm__Map mp = CAPDSM__MAP__INIT;
	mp.slot = r.slot;
	mp.process = proc;
	mp.length = PAGE;
	mp.rights = CAPDSM_R_READ;
	q = req(3, CAPDSM__REQUEST__BODY_MAP);
	q.map = &mp;
	assert_int_equal(th_raw_do(fd, &q, NULL, 0, -1, &r), 0);
	assert_int_equal(r.status, 0);
	uint64_t mapping = r.mapping;
	assert_int_equal(it_stat(mon, "mappings_used"), 1);

	Capdsm__MapCommit mc = CAPDSM__MAP_COMMIT__INIT;
	mc.mapping = mapping;
	mc.address = 0x7f0000000000ull;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	q = req(4, CAPDSM__REQUEST__BODY_MAP_COMMIT);
	q.map_commit = &mc;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, p[0]), 0);
	close(p[0]);
	expect_error_reply(fd, 4, "map commit with a pipe");
	/* The daemon kept no copy of the read end: writing finds no reader. */
	signal(SIGPIPE, SIG_IGN);
	bool gone = false;
	for (int i = 0; i < 300 && !gone; i++) {
		if (write(p[1], "x", 1) < 0 && errno == EPIPE)
			gone = true;
		else
			usleep(10000);
	}
	assert_true(gone);
	close(p[1]);

	int mfd = memfd_create("not-uffd", MFD_CLOEXEC);
	assert_true(mfd >= 0);
	q = req(5, CAPDSM__REQUEST__BODY_MAP_COMMIT);
	q.map_commit = &mc;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, mfd), 0);
	close(mfd);
	expect_error_reply(fd, 5, "map commit with a memfd");
	q = req(6, CAPDSM__REQUEST__BODY_MAP_COMMIT);
	q.map_commit = &mc;
	assert_int_equal(th_raw_request(fd, &q, NULL, 0, -1), 0);
	expect_error_reply(fd, 6, "map commit without a descriptor");
	close(fd);
	/* The session's end frees the uncommitted mapping. */
	assert_int_equal(th_wait_stat(mon, "mappings_used", 0, 3000), 0);
	end_healthy();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		IT_TEST(test_random_bytes),
		IT_TEST(test_wrong_magic),
		IT_TEST(test_oversized_lengths),
		IT_TEST(test_truncated_then_close),
		IT_TEST(test_garbage_protobuf),
		IT_TEST(test_unknown_body_field),
		IT_TEST(test_write_length_mismatch),
		IT_TEST(test_requests_before_hello),
		IT_TEST(test_unwanted_descriptor),
		IT_TEST(test_map_commit_not_a_userfaultfd),
	};
	return IT_RUN("integration.malformed", tests, false);
}
