/* wire.c — frame send and receive for the client–daemon socket (wire.h).
 * Only this file touches SCM_RIGHTS; a descriptor nobody asked for is closed
 * at once so a hostile peer cannot fill our descriptor table. */
#include "wire.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

int wire_hdr_check(const struct wire_hdr *h, uint32_t payload_max)
{
	if (h->magic != WIRE_MAGIC || h->flags != 0 || h->msg_len == 0)
		return -EPROTO;
	if (h->msg_len > WIRE_MSG_MAX || h->payload_len > payload_max ||
	    h->payload_len > WIRE_PAYLOAD_MAX)
		return -EMSGSIZE;
	return 0;
}

int wire_send(int sock, const void *msg, uint32_t msg_len,
              const void *payload, uint32_t payload_len, int fd)
{
	struct wire_hdr h = {
		.magic = WIRE_MAGIC,
		.msg_len = msg_len,
		.payload_len = payload_len,
		.flags = 0,
	};
	struct iovec iov[3] = {
		{ .iov_base = &h, .iov_len = sizeof h },
		{ .iov_base = (void *)msg, .iov_len = msg_len },
		{ .iov_base = (void *)payload, .iov_len = payload_len },
	};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = payload_len ? 3 : 2 };

	if (fd >= 0) {
		memset(&ctl, 0, sizeof ctl);
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof ctl.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	while (mh.msg_iovlen > 0) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		/* The descriptor went with the first chunk. */
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
		while (n > 0 && mh.msg_iovlen > 0) {
			if ((size_t)n >= mh.msg_iov[0].iov_len) {
				n -= (ssize_t)mh.msg_iov[0].iov_len;
				mh.msg_iov++;
				mh.msg_iovlen--;
			} else {
				mh.msg_iov[0].iov_base =
					(char *)mh.msg_iov[0].iov_base + n;
				mh.msg_iov[0].iov_len -= (size_t)n;
				n = 0;
			}
		}
	}
	return 0;
}

int wire_send_frame(int sock, void *buf, uint32_t msg_len, const void *payload,
                    uint32_t payload_len, int fd)
{
	struct wire_hdr h = {
		.magic = WIRE_MAGIC,
		.msg_len = msg_len,
		.payload_len = payload_len,
		.flags = 0,
	};
	size_t len = sizeof h + msg_len, done = 0;

	if (payload_len || fd >= 0)
		return wire_send(sock, (uint8_t *)buf + sizeof h, msg_len, payload,
		                 payload_len, fd);
	memcpy(buf, &h, sizeof h);
	while (done < len) {
		ssize_t n = send(sock, (uint8_t *)buf + done, len - done,
		                 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)n;
	}
	return 0;
}

ssize_t wire_recv_some(int sock, void *buf, size_t n, int *fd, int flags)
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = n };
	struct msghdr mh = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = ctl.buf,
		.msg_controllen = sizeof ctl.buf,
	};
	ssize_t r;

	do
		r = recvmsg(sock, &mh, flags | MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < cnt; i++) {
			int got;
			memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
			if (fd && *fd < 0)
				*fd = got;
			else
				close(got);
		}
	}
	return r;
}

int wire_recv_all(int sock, void *buf, size_t n, int *fd)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = wire_recv_some(sock, (char *)buf + done, n - done,
		                           fd, 0);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return -ECONNRESET;
		done += (size_t)r;
	}
	return 0;
}

int wire_recv_msg(int sock, struct wire_hdr *h, uint8_t *msg, int *fd,
                  uint32_t payload_max)
{
	int rc = wire_recv_all(sock, h, sizeof *h, fd);

	if (rc)
		return rc;
	rc = wire_hdr_check(h, payload_max);
	if (rc)
		return rc;
	return wire_recv_all(sock, msg, h->msg_len, fd);
}
