/* bench_rw.c — explicit capdsm_read / capdsm_write throughput against a raw
 * AF_UNIX stream socket carrying the same bytes in the same chunks.
 *
 * Daemon side: 64 MiB moved in requests of one chunk (1 and 4 MiB), each
 * capdsm_write / capdsm_read one round trip, into / out of an object the
 * warm-up has already filled (so no page is allocated while timing).
 * Limit: a forked process on a socketpair, blocking on both sides as the
 * daemon is with poll_us = 0, holding a touched 64 MiB buffer:
 *   write  16-byte header + chunk in one sendmsg; the peer receives the
 *          chunk into its buffer and replies 16 bytes
 *   read   16-byte request; the peer replies 16-byte header + chunk
 * That is the same bytes per round trip and one round trip per chunk, so it
 * is the honest limit and the one judged. A streaming transfer (all 64 MiB
 * in chunk-sized sends, one acknowledgement at the end) is measured too and
 * printed beside it, not judged: no request/reply protocol can reach it.
 * The three transfers rotate order run by run. Target: >= 0.7. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "capdsm.h"

#define MAX_RUNS 64
#define MAX_CHUNKS 8

enum raw_op { RAW_WRITE = 1, RAW_READ, RAW_WRITE_STREAM, RAW_READ_STREAM };

struct raw_req {
	uint32_t op;
	uint32_t len;    /* bytes of this request (a stream: its chunk size) */
	uint64_t offset; /* bytes (a stream: its total length) */
};
_Static_assert(sizeof(struct raw_req) == 16, "raw header is 16 bytes");

/* ---- the raw peer (a forked process) ---- */

static void sendv2(int fd, const void *a, size_t alen, const void *b,
                   size_t blen)
{
	struct iovec iov[2] = {
		{ .iov_base = (void *)a, .iov_len = alen },
		{ .iov_base = (void *)b, .iov_len = blen },
	};
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };

	while (mh.msg_iovlen > 0) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			bench_die("sendmsg: %s", strerror(errno));
		}
		while (n > 0 && mh.msg_iovlen > 0) {
			if ((size_t)n >= mh.msg_iov[0].iov_len) {
				n -= (ssize_t)mh.msg_iov[0].iov_len;
				mh.msg_iov++;
				mh.msg_iovlen--;
			} else {
				mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + n;
				mh.msg_iov[0].iov_len -= (size_t)n;
				n = 0;
			}
		}
	}
}

static void peer_main(int fd, size_t total)
{
	uint8_t *buf = bench_alloc_touched(total);
	struct raw_req q, ack;

	for (;;) {
		if (bench_recv_all(fd, &q, sizeof q))
			_exit(0);
		ack = q;
		switch (q.op) {
		case RAW_WRITE:
			if (q.offset > total || q.len > total - q.offset)
				bench_die("raw peer: bad range");
			bench_recv_all(fd, buf + q.offset, q.len);
			bench_send_all(fd, &ack, sizeof ack);
			break;
		case RAW_READ:
			if (q.offset > total || q.len > total - q.offset)
				bench_die("raw peer: bad range");
			sendv2(fd, &ack, sizeof ack, buf + q.offset, q.len);
			break;
		case RAW_WRITE_STREAM:
			for (uint64_t off = 0; off < q.offset; off += q.len)
				bench_recv_all(fd, buf + off, q.len);
			bench_send_all(fd, &ack, sizeof ack);
			break;
		case RAW_READ_STREAM:
			for (uint64_t off = 0; off < q.offset; off += q.len)
				bench_send_all(fd, buf + off, q.len);
			break;
		default:
			bench_die("raw peer: bad op %u", q.op);
		}
	}
}

/* ---- one timed transfer each; all return MiB/s ---- */

static double mibps(size_t total, uint64_t t0, uint64_t t1)
{
	return ((double)total / (1 << 20)) / ((double)(t1 - t0) / 1e9);
}

static double daemon_xfer(struct capdsm *c, uint32_t obj, bool write,
                          uint8_t *buf, size_t total, size_t chunk)
{
	uint64_t t0 = bench_now_ns();

	for (size_t off = 0; off < total; off += chunk) {
		int rc = write ? capdsm_write(c, obj, off, buf + off, chunk)
		               : capdsm_read(c, obj, off, buf + off, chunk);
		if (rc)
			bench_die("%s: %s", write ? "write" : "read",
			          capdsm_strerror(c));
	}
	return mibps(total, t0, bench_now_ns());
}

static double raw_xfer(int fd, bool write, uint8_t *buf, size_t total,
                       size_t chunk)
{
	uint64_t t0 = bench_now_ns();
	struct raw_req q, a;

	for (size_t off = 0; off < total; off += chunk) {
		q = (struct raw_req){ .op = write ? RAW_WRITE : RAW_READ,
		                      .len = (uint32_t)chunk, .offset = off };
		if (write) {
			sendv2(fd, &q, sizeof q, buf + off, chunk);
			bench_recv_all(fd, &a, sizeof a);
		} else {
			bench_send_all(fd, &q, sizeof q);
			bench_recv_all(fd, &a, sizeof a);
			bench_recv_all(fd, buf + off, chunk);
		}
	}
	return mibps(total, t0, bench_now_ns());
}

static double raw_stream(int fd, bool write, uint8_t *buf, size_t total,
                         size_t chunk)
{
	uint64_t t0 = bench_now_ns();
	struct raw_req q = { .op = write ? RAW_WRITE_STREAM : RAW_READ_STREAM,
	                     .len = (uint32_t)chunk, .offset = total }, a;

	bench_send_all(fd, &q, sizeof q);
	for (size_t off = 0; off < total; off += chunk) {
		if (write)
			bench_send_all(fd, buf + off, chunk);
		else
			bench_recv_all(fd, buf + off, chunk);
	}
	if (write)
		bench_recv_all(fd, &a, sizeof a);
	return mibps(total, t0, bench_now_ns());
}

static void usage(void)
{
	fprintf(stderr, "usage: bench_rw --socket PATH [--mib N] "
	        "[--chunks MIB[,MIB...]] [--runs N] [--client-cpu N] "
	        "[--server-cpu N] [--quick]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "mib", required_argument, NULL, 'm' },
		{ "chunks", required_argument, NULL, 'c' },
		{ "runs", required_argument, NULL, 'r' },
		{ "client-cpu", required_argument, NULL, 'C' },
		{ "server-cpu", required_argument, NULL, 'D' },
		{ "quick", no_argument, NULL, 'q' },
		{ 0 },
	};
	const char *sock = NULL, *chunk_arg = "1,4";
	long mib = 0, runs = 0;
	long chunks[MAX_CHUNKS];
	int nchunks = 0;
	bool quick = false;
	int o, client_cpu = -1, server_cpu = -1;

	while ((o = getopt_long(argc, argv, "s:m:c:r:C:D:q", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'm': mib = bench_arg_long("--mib", optarg, 1, 4096); break;
		case 'c': chunk_arg = optarg; break;
		case 'r': runs = bench_arg_long("--runs", optarg, 1, MAX_RUNS); break;
		case 'C':
			client_cpu = (int)bench_arg_long("--client-cpu", optarg, 0, 1023);
			break;
		case 'D':
			server_cpu = (int)bench_arg_long("--server-cpu", optarg, 0, 1023);
			break;
		case 'q': quick = true; break;
		default: usage();
		}
	}
	if (!sock || optind != argc)
		usage();
	if (!mib)
		mib = quick ? 16 : 64;
	if (!runs)
		runs = quick ? 3 : 11;
	{
		char tmp[128], *save = NULL;
		snprintf(tmp, sizeof tmp, "%s", chunk_arg);
		for (char *t = strtok_r(tmp, ",", &save); t;
		     t = strtok_r(NULL, ",", &save)) {
			if (nchunks == MAX_CHUNKS)
				usage();
			chunks[nchunks] = bench_arg_long("--chunks", t, 1, 16);
			if (mib % chunks[nchunks])
				bench_die("--mib %ld is not a multiple of the chunk %ld",
				          mib, chunks[nchunks]);
			nchunks++;
		}
		if (!nchunks)
			usage();
	}
	size_t total = (size_t)mib << 20;

	/* The peer first, before this process holds big buffers. */
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
		bench_die("socketpair: %s", strerror(errno));
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		bench_die("fork: %s", strerror(errno));
	if (pid == 0) {
		close(sv[0]);
		bench_pin(server_cpu);
		peer_main(sv[1], total);
		_exit(0);
	}
	close(sv[1]);
	bench_pin(client_cpu);
	int fd = sv[0];

	struct capdsm *c;
	uint32_t bank, obj;
	if (capdsm_connect(sock, NULL, &c) != 0)
		bench_die("connect: %s", capdsm_strerror(NULL));
	if (capdsm_bank_create(c, CAPDSM_SESSION_BANK, 0, 0, &bank) ||
	    capdsm_object_create(c, bank, total, &obj))
		bench_die("object: %s", capdsm_strerror(c));

	uint8_t *src = bench_alloc_touched(total);
	uint8_t *dst = bench_alloc_touched(total);
	for (size_t i = 0; i < total; i++)
		src[i] = (uint8_t)(i * 131 + (i >> 20));

	/* Warm-up, and a check that the bytes make the round trip. */
	daemon_xfer(c, obj, true, src, total, (size_t)chunks[0] << 20);
	daemon_xfer(c, obj, false, dst, total, (size_t)chunks[0] << 20);
	if (memcmp(src, dst, total) != 0)
		bench_die("capdsm_read did not return what capdsm_write wrote");
	raw_xfer(fd, true, src, total, (size_t)chunks[0] << 20);
	raw_xfer(fd, false, dst, total, (size_t)chunks[0] << 20);
	if (memcmp(src, dst, total) != 0)
		bench_die("raw peer did not return what was written");

	for (int k = 0; k < nchunks; k++) {
		size_t chunk = (size_t)chunks[k] << 20;
		for (int w = 1; w >= 0; w--) {
			bool write = w;
			uint8_t *buf = write ? src : dst;
			double v[MAX_RUNS], l[MAX_RUNS], s[MAX_RUNS];

			for (long r = 0; r < runs; r++)
				for (int j = 0; j < 3; j++)
					switch ((j + r) % 3) {
					case 0:
						v[r] = daemon_xfer(c, obj, write, buf, total, chunk);
						break;
					case 1:
						l[r] = raw_xfer(fd, write, buf, total, chunk);
						break;
					case 2:
						s[r] = raw_stream(fd, write, buf, total, chunk);
						break;
					}

			char name[64], what[96], where[96];
			const char *sfx = bench_placement(client_cpu, server_cpu, where,
			                                  sizeof where);
			snprintf(name, sizeof name, "%s_%ldMiB_requests%s",
			         write ? "write" : "read", chunks[k], sfx);
			snprintf(what, sizeof what, "%ld MiB in %ld MiB %s requests",
			         mib, chunks[k], write ? "capdsm_write" : "capdsm_read");
			struct bench_result res = {
				.bench = name,
				.placement = where,
				.unit = "MiB/s",
				.limit_name = write
					? "AF_UNIX socketpair to a forked process: 16 B header + "
					  "chunk, 16 B reply, blocking"
					: "AF_UNIX socketpair to a forked process: 16 B request, "
					  "16 B header + chunk reply, blocking",
				.mode = "blocking",
				.median_of = what,
				.dir = BENCH_HIGHER_IS_BETTER,
				.target = 0.7,
				.runs = (int)runs,
				.values = v,
				.limits = l,
				.also = { { "same socket, streaming all bytes in "
				            "chunk-sized sends, one ack", s } },
			};
			bench_report(&res);
		}
	}

	capdsm_bank_destroy(c, bank);
	capdsm_close(c);
	close(fd); /* the peer sees end of stream and exits */
	waitpid(pid, NULL, 0);
	free(src);
	free(dst);
	return 0;
}
