/* test_wire.c — unit tests of the message codec: the frame header checks,
 * frames with payload and a passed descriptor over a real socketpair, and
 * the protobuf-c decoding of requests, including truncated and garbage
 * input, which must fail cleanly and never crash. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "capdsm.pb-c.h"
#include "wire.h"

static void test_header_checks(void **st)
{
	struct wire_hdr h = { .magic = WIRE_MAGIC, .msg_len = 10 };
	(void)st;
	assert_int_equal(wire_hdr_check(&h, 4096), 0);
	h.magic = 0x12345678;
	assert_int_equal(wire_hdr_check(&h, 4096), -EPROTO);
	h.magic = WIRE_MAGIC;
	h.flags = 1;
	assert_int_equal(wire_hdr_check(&h, 4096), -EPROTO);
	h.flags = 0;
	h.msg_len = 0;
	assert_int_equal(wire_hdr_check(&h, 4096), -EPROTO);
	h.msg_len = WIRE_MSG_MAX + 1;
	assert_int_equal(wire_hdr_check(&h, 4096), -EMSGSIZE);
	h.msg_len = WIRE_MSG_MAX;
	h.payload_len = 4097;
	assert_int_equal(wire_hdr_check(&h, 4096), -EMSGSIZE);
	h.payload_len = WIRE_PAYLOAD_MAX + 1;
	assert_int_equal(wire_hdr_check(&h, UINT32_MAX), -EMSGSIZE);
}

static void test_frame_roundtrip_with_fd_and_payload(void **st)
{
	int sv[2], p[2], got = -1;
	uint8_t msg[WIRE_MSG_MAX], big[200000];
	struct wire_hdr h;
	(void)st;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(pipe(p), 0);
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7);

	if (fork() == 0) {
		close(sv[0]);
		int rc = wire_send(sv[1], "abc", 3, big, sizeof big, p[1]);
		_exit(rc == 0 ? 0 : 1);
	}
	close(sv[1]);
	assert_int_equal(wire_recv_msg(sv[0], &h, msg, &got, WIRE_PAYLOAD_MAX), 0);
	assert_int_equal(h.msg_len, 3);
	assert_memory_equal(msg, "abc", 3);
	assert_int_equal(h.payload_len, sizeof big);
	assert_true(got >= 0);
	struct stat sa, sb;
	assert_int_equal(fstat(got, &sa), 0);
	assert_int_equal(fstat(p[1], &sb), 0);
	assert_int_equal(sa.st_ino, sb.st_ino); /* the same pipe */
	static uint8_t back[200000];
	assert_int_equal(wire_recv_all(sv[0], back, sizeof back, NULL), 0);
	assert_memory_equal(back, big, sizeof big);
	/* End of stream is reported, not a short read. */
	assert_int_equal(wire_recv_all(sv[0], back, 1, NULL), -ECONNRESET);
	close(got);
	close(sv[0]);
	close(p[0]);
	close(p[1]);
}

static void test_unwanted_fd_is_closed(void **st)
{
	int sv[2], p[2];
	uint8_t msg[WIRE_MSG_MAX];
	struct wire_hdr h;
	(void)st;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(pipe(p), 0);
	assert_int_equal(wire_send(sv[1], "x", 1, NULL, 0, p[0]), 0);
	close(p[0]);
	/* fd == NULL: the descriptor must be closed, so the pipe's read end
	 * is gone and writing to it fails with EPIPE. */
	assert_int_equal(wire_recv_msg(sv[0], &h, msg, NULL, 0), 0);
	signal(SIGPIPE, SIG_IGN);
	assert_int_equal(write(p[1], "z", 1), -1);
	assert_int_equal(errno, EPIPE);
	close(p[1]);
	close(sv[0]);
	close(sv[1]);
}

static void test_request_codec(void **st)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Rw rw = CAPDSM__RW__INIT;
	uint8_t buf[256];
	(void)st;
	rw.slot = 3;
	rw.offset = 1ull << 40;
	rw.length = 4096;
	q.id = 99;
	q.body_case = CAPDSM__REQUEST__BODY_WRITE;
	q.write = &rw;
	size_t n = capdsm__request__get_packed_size(&q);
	assert_true(n < sizeof buf);
	capdsm__request__pack(&q, buf);
	Capdsm__Request *d = capdsm__request__unpack(NULL, n, buf);
	assert_non_null(d);
	assert_int_equal(d->id, 99);
	assert_int_equal(d->body_case, CAPDSM__REQUEST__BODY_WRITE);
	assert_int_equal(d->write->offset, 1ull << 40);
	capdsm__request__free_unpacked(d, NULL);
	/* Every truncation of a valid message either decodes to something
	 * (a prefix can be valid protobuf) or fails; none may crash. */
	for (size_t k = 0; k < n; k++) {
		d = capdsm__request__unpack(NULL, k, buf);
		if (d)
			capdsm__request__free_unpacked(d, NULL);
	}
	/* Garbage: a field with a length beyond the buffer must fail. */
	uint8_t bad[] = { 0x72, 0x7f, 0x08, 0x01 };
	assert_null(capdsm__request__unpack(NULL, sizeof bad, bad));
	srand(7);
	for (int t = 0; t < 20000; t++) {
		uint8_t r[64];
		size_t len = (size_t)(rand() % 64);
		for (size_t i = 0; i < len; i++)
			r[i] = (uint8_t)rand();
		d = capdsm__request__unpack(NULL, len, r);
		if (d)
			capdsm__request__free_unpacked(d, NULL);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_checks),
		cmocka_unit_test(test_frame_roundtrip_with_fd_and_payload),
		cmocka_unit_test(test_unwanted_fd_is_closed),
		cmocka_unit_test(test_request_codec),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
