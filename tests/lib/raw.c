/* raw.c — frames written by hand on the daemon's socket, for the tests of
 * malformed input: nothing here goes through libcapdsm, so a test can send
 * exactly the bytes (and descriptors) it wants. */
#include "testlib.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int th_raw_connect(const char *sock)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = 5 };
	int fd;

	if (strlen(sock) >= sizeof a.sun_path)
		return -ENAMETOOLONG;
	strcpy(a.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	return fd;
}

#define MAX_PASS 8

static int send_iov(int fd, struct iovec *iov, int n, const int *fds,
                    int nfds)
{
	union {
		char buf[CMSG_SPACE(MAX_PASS * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)n };

	if (nfds > MAX_PASS)
		return -EINVAL;
	if (nfds > 0) {
		memset(&ctl, 0, sizeof ctl);
		mh.msg_control = ctl.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
	}
	while (mh.msg_iovlen > 0) {
		/* Skip empty pieces: the descriptor rides on the first byte. */
		if (mh.msg_iov[0].iov_len == 0) {
			mh.msg_iov++;
			mh.msg_iovlen--;
			continue;
		}
		ssize_t k = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
		while (k > 0 && mh.msg_iovlen > 0) {
			if ((size_t)k >= mh.msg_iov[0].iov_len) {
				k -= (ssize_t)mh.msg_iov[0].iov_len;
				mh.msg_iov++;
				mh.msg_iovlen--;
			} else {
				mh.msg_iov[0].iov_base = (char *)mh.msg_iov[0].iov_base + k;
				mh.msg_iov[0].iov_len -= (size_t)k;
				k = 0;
			}
		}
	}
	return 0;
}

int th_raw_send_fds(int fd, const struct wire_hdr *h, const void *msg,
                    size_t msg_len, const void *payload, size_t payload_len,
                    const int *fds, int nfds)
{
	struct wire_hdr hc = *h;
	struct iovec iov[3] = {
		{ .iov_base = &hc, .iov_len = sizeof hc },
		{ .iov_base = (void *)msg, .iov_len = msg ? msg_len : 0 },
		{ .iov_base = (void *)payload, .iov_len = payload ? payload_len : 0 },
	};
	return send_iov(fd, iov, 3, fds, nfds);
}

int th_raw_send(int fd, const struct wire_hdr *h, const void *msg,
                size_t msg_len, const void *payload, size_t payload_len,
                int pass_fd)
{
	return th_raw_send_fds(fd, h, msg, msg_len, payload, payload_len,
	                       &pass_fd, pass_fd >= 0 ? 1 : 0);
}

int th_raw_send_bytes(int fd, const void *buf, size_t len)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	return send_iov(fd, &iov, 1, NULL, 0);
}

int th_raw_request(int fd, const Capdsm__Request *q, const void *payload,
                   uint32_t payload_len, int pass_fd)
{
	size_t len = capdsm__request__get_packed_size(q);
	uint8_t *buf;
	int rc;

	if (len > WIRE_MSG_MAX)
		return -EMSGSIZE;
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	capdsm__request__pack(q, buf);
	struct wire_hdr h = {
		.magic = WIRE_MAGIC,
		.msg_len = (uint32_t)len,
		.payload_len = payload_len,
		.flags = 0,
	};
	rc = th_raw_send(fd, &h, buf, len, payload, payload_len, pass_fd);
	free(buf);
	return rc;
}

/* Reads exactly n bytes within the deadline. 0, -ECONNRESET, -ETIMEDOUT. */
static int recv_exact(int fd, void *buf, size_t n, int64_t deadline)
{
	size_t done = 0;

	while (done < n) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int left = (int)(deadline - now_ms());
		if (left < 0)
			return -ETIMEDOUT;
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		/* A descriptor that comes along (a Map reply) is closed. */
		union {
			char b[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} ctl;
		struct iovec iov = { .iov_base = (char *)buf + done,
			                 .iov_len = n - done };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			                 .msg_control = ctl.b,
			                 .msg_controllen = sizeof ctl.b };
		ssize_t k = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return errno == ECONNRESET || errno == EPIPE ? -ECONNRESET
			                                             : -errno;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
		     c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
				for (size_t i = 0; i < cnt; i++) {
					int got;
					memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
					close(got);
				}
			}
		if (k == 0)
			return -ECONNRESET;
		done += (size_t)k;
	}
	return 0;
}

int th_raw_reply(int fd, Capdsm__Reply **out, void *buf, size_t cap,
                 size_t *payload_len)
{
	int64_t deadline = now_ms() + 5000;
	struct wire_hdr h;
	uint8_t *msg;
	int rc;

	*out = NULL;
	rc = recv_exact(fd, &h, sizeof h, deadline);
	if (rc)
		return rc;
	if (h.magic != WIRE_MAGIC || h.flags != 0 || h.msg_len == 0 ||
	    h.msg_len > WIRE_MSG_MAX || h.payload_len > WIRE_PAYLOAD_MAX) {
		fprintf(stderr, "testlib: bad reply frame header\n");
		return -EPROTO;
	}
	msg = malloc(h.msg_len);
	if (!msg)
		return -ENOMEM;
	rc = recv_exact(fd, msg, h.msg_len, deadline);
	if (!rc) {
		*out = capdsm__reply__unpack(NULL, h.msg_len, msg);
		if (!*out)
			rc = -EPROTO;
	}
	free(msg);
	if (rc)
		return rc;
	if (payload_len)
		*payload_len = h.payload_len;
	for (size_t left = h.payload_len; left > 0;) {
		uint8_t sink[4096];
		size_t take = left < sizeof sink ? left : sizeof sink;
		size_t done = h.payload_len - left;
		void *dst = sink;
		if (buf && done < cap) {
			if (take > cap - done)
				take = cap - done;
			dst = (uint8_t *)buf + done;
		}
		rc = recv_exact(fd, dst, take, deadline);
		if (rc) {
			capdsm__reply__free_unpacked(*out, NULL);
			*out = NULL;
			return rc;
		}
		left -= take;
	}
	return 0;
}

int th_raw_hello(int fd, uint64_t id, uint32_t *process_slot)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Hello h = CAPDSM__HELLO__INIT;
	Capdsm__Reply *r;
	int rc;

	h.version = 1;
	q.id = id;
	q.body_case = CAPDSM__REQUEST__BODY_HELLO;
	q.hello = &h;
	rc = th_raw_request(fd, &q, NULL, 0, -1);
	if (rc)
		return rc;
	rc = th_raw_reply(fd, &r, NULL, 0, NULL);
	if (rc)
		return rc;
	if (r->id != id)
		rc = -EPROTO;
	else
		rc = r->status;
	if (!rc && process_slot)
		*process_slot = r->process_slot;
	capdsm__reply__free_unpacked(r, NULL);
	return rc;
}

int th_raw_wait_closed(int fd, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	uint8_t sink[4096];

	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int left = (int)(deadline - now_ms());
		if (left < 0)
			return -ETIMEDOUT;
		int r = poll(&p, 1, left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? -ETIMEDOUT : -errno;
		ssize_t k = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
		if (k == 0)
			return 0;
		if (k < 0 && (errno == ECONNRESET || errno == EPIPE))
			return 0;
		if (k < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
	}
}

int th_raw_call(int fd, const Capdsm__Request *q, const void *payload,
                uint32_t payload_len, int pass_fd, Capdsm__Reply **out,
                void *buf, size_t cap)
{
	int rc = th_raw_request(fd, q, payload, payload_len, pass_fd);

	*out = NULL;
	if (rc)
		return rc;
	for (;;) {
		Capdsm__Reply *r;
		rc = th_raw_reply(fd, &r, buf, cap, NULL);
		if (rc)
			return rc;
		if (r->id == 0 && r->event) {
			capdsm__reply__free_unpacked(r, NULL);
			continue;
		}
		if (r->id != q->id) {
			fprintf(stderr, "testlib: reply id %llu, expected %llu "
			        "(status %d: %s)\n", (unsigned long long)r->id,
			        (unsigned long long)q->id, r->status,
			        r->error ? r->error : "");
			capdsm__reply__free_unpacked(r, NULL);
			return -EPROTO;
		}
		*out = r;
		return 0;
	}
}

static void take(Capdsm__Reply *r, struct th_reply *out)
{
	memset(out, 0, sizeof *out);
	out->id = r->id;
	out->status = r->status;
	out->slot = r->slot;
	out->process_slot = r->process_slot;
	out->mapping = r->mapping;
	out->n_counters = r->n_counters;
	out->event = r->event != NULL;
	snprintf(out->error, sizeof out->error, "%s", r->error ? r->error : "");
	capdsm__reply__free_unpacked(r, NULL);
}

int th_raw_read_reply(int fd, struct th_reply *out)
{
	Capdsm__Reply *r;
	int rc = th_raw_reply(fd, &r, NULL, 0, NULL);

	if (rc)
		return rc;
	take(r, out);
	return 0;
}

int th_raw_do(int fd, const Capdsm__Request *q, const void *payload,
              uint32_t payload_len, int pass_fd, struct th_reply *out)
{
	Capdsm__Reply *r;
	int rc = th_raw_call(fd, q, payload, payload_len, pass_fd, &r, NULL, 0);

	if (rc)
		return rc;
	take(r, out);
	return 0;
}
