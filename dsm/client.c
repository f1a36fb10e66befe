/* client.c — libcapdsm: the connection to the node daemon, requests and
 * replies, and the client half of mapping (capdsm.h).
 *
 * One request is outstanding at a time on a connection. Events (a mapping
 * revoked) may arrive before the awaited reply and are handled on the way.
 * Data never passes through protobuf: a write's bytes follow its message in
 * the frame, and a read's bytes are received straight into the caller's
 * buffer. */
#include "capdsm.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "caps.h"
#include "capdsm.pb-c.h"
#include "wire.h"

#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

_Static_assert(CAPDSM_R_READ == CAP_R_READ && CAPDSM_R_WRITE == CAP_R_WRITE &&
               CAPDSM_R_LOCK == CAP_R_LOCK && CAPDSM_R_MAP == CAP_R_MAP &&
               CAPDSM_R_GRANT == CAP_R_GRANT && CAPDSM_R_ALL == CAP_R_ALL,
               "client rights are the capability rights");

#define PAGE 4096u

struct cmap {
	struct cmap *next;
	void *addr;
	uint64_t length;
	uint64_t id;
	int revoked;
};

struct capdsm {
	int fd;
	uint64_t next_id;
	uint32_t self;
	uint32_t max_payload;
	uint32_t poll_us; /* spin this long for a reply before sleeping */
	struct cmap *maps;
	uint8_t msg[sizeof(struct wire_hdr) + WIRE_MSG_MAX]; /* header + request */
	/* Replies are read in as large pieces as the socket has (a small reply
	 * in one receive) and decoded into a fixed arena: no malloc per call. */
	uint8_t in[sizeof(struct wire_hdr) + WIRE_MSG_MAX];
	uint32_t in_off, in_have;
	uint8_t arena[64 * 1024];
	size_t arena_used;
	char err[256];
};

static void *arena_alloc(void *data, size_t size)
{
	struct capdsm *c = data;
	size_t at = (c->arena_used + 15) & ~(size_t)15;

	if (size > sizeof c->arena || at > sizeof c->arena - size)
		return NULL;
	c->arena_used = at + size;
	return c->arena + at;
}

static void arena_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

/* Decodes a reply into the connection's arena; the reply stays valid until
 * the next one is decoded. reply_free() is then a no-op kept for clarity
 * at each end of use. */
static Capdsm__Reply *reply_unpack(struct capdsm *c, size_t len,
                                   const uint8_t *buf)
{
	ProtobufCAllocator al = {
		.alloc = arena_alloc,
		.free = arena_free,
		.allocator_data = c,
	};

	c->arena_used = 0;
	return capdsm__reply__unpack(&al, len, buf);
}

static void reply_free(struct capdsm *c, Capdsm__Reply *r)
{
	(void)c;
	(void)r;
}

/* One receive into c->in: with `fd`, collecting a descriptor; without,
 * plain recv() (the kernel closes any descriptor a daemon would send
 * unasked). Returns the bytes, 0 at end of stream, or a negative errno. */
static ssize_t recv_some(struct capdsm *c, int *fd, int flags)
{
	ssize_t r;

	if (fd)
		return wire_recv_some(c->fd, c->in + c->in_have,
		                      sizeof c->in - c->in_have, fd, flags);
	do
		r = recv(c->fd, c->in + c->in_have, sizeof c->in - c->in_have,
		         flags);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

/* Adaptive waiting (capdsm_set_poll_us): tries a non-blocking receive,
 * yielding the CPU between tries, for up to poll_us; returns the bytes
 * received (> 0), or 0 when the time ran out or the receive failed (the
 * blocking receive that follows then sleeps, or reports the error). The
 * clock is read every 16 tries: it is a system call on some machines. */
static ssize_t spin_recv(struct capdsm *c, int *fd)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint32_t i = 1;; i++) {
		ssize_t r = recv_some(c, fd, MSG_DONTWAIT);
		if (r > 0) {
			c->in_have += (uint32_t)r;
			return r;
		}
		if (r != -EAGAIN)
			return 0;
		sched_yield();
		if (i % 16 == 0) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			if ((uint64_t)(t.tv_sec - t0.tv_sec) * 1000000000u +
			            (uint64_t)(t.tv_nsec - t0.tv_nsec) >=
			    (uint64_t)c->poll_us * 1000u)
				return 0;
		}
	}
}

/* Makes `n` bytes available at c->in + c->in_off, receiving as much as
 * fits. Returns 0 or a negative errno (-ECONNRESET at end of stream). */
static int in_need(struct capdsm *c, uint32_t n, int *fd)
{
	if (c->in_have - c->in_off >= n)
		return 0;
	if (c->in_off) {
		memmove(c->in, c->in + c->in_off, c->in_have - c->in_off);
		c->in_have -= c->in_off;
		c->in_off = 0;
	}
	while (c->in_have < n) {
		ssize_t r;

		if (c->poll_us && spin_recv(c, fd) > 0)
			continue;
		r = recv_some(c, fd, 0);
		if (r < 0)
			return (int)r;
		if (r == 0)
			return -ECONNRESET;
		c->in_have += (uint32_t)r;
	}
	return 0;
}

/* The next frame's header and message (the message points into c->in and
 * is valid until the next call). */
static int in_frame(struct capdsm *c, struct wire_hdr *h, const uint8_t **msg,
                    int *fd)
{
	int rc = in_need(c, sizeof *h, fd);

	if (rc)
		return rc;
	memcpy(h, c->in + c->in_off, sizeof *h);
	rc = wire_hdr_check(h, WIRE_PAYLOAD_MAX);
	if (rc)
		return rc;
	rc = in_need(c, (uint32_t)sizeof *h + h->msg_len, fd);
	if (rc)
		return rc;
	*msg = c->in + c->in_off + sizeof *h;
	c->in_off += (uint32_t)sizeof *h + h->msg_len;
	return 0;
}

/* A payload of `n` bytes: first what is buffered, then straight from the
 * socket into dst (dst NULL: discard). */
static int in_payload(struct capdsm *c, void *dst, size_t n)
{
	size_t buffered = c->in_have - c->in_off;
	size_t take = buffered < n ? buffered : n;

	if (dst)
		memcpy(dst, c->in + c->in_off, take);
	c->in_off += (uint32_t)take;
	n -= take;
	if (n == 0)
		return 0;
	if (dst)
		return wire_recv_all(c->fd, (uint8_t *)dst + take, n, NULL);
	while (n) {
		uint8_t sink[4096];
		size_t k = n < sizeof sink ? n : sizeof sink;
		int rc = wire_recv_all(c->fd, sink, k, NULL);
		if (rc)
			return rc;
		n -= k;
	}
	return 0;
}

static int fail(struct capdsm *c, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->err, sizeof c->err, fmt, ap);
	va_end(ap);
	return rc;
}

/* The reason the last capdsm_connect() of this thread failed. */
static _Thread_local char connect_err[256];

const char *capdsm_strerror(const struct capdsm *c)
{
	return c ? c->err : connect_err;
}

uint32_t capdsm_self(const struct capdsm *c)
{
	return c->self;
}

/* A mapping lost its capability: its pages are replaced by inaccessible
 * memory at the same address, so every later touch faults and the address
 * is not handed out again until capdsm_unmap. */
static void on_event(struct capdsm *c, const Capdsm__Event *ev)
{
	if (ev->kind != CAPDSM__EVENT__KIND__MAPPING_REVOKED)
		return;
	for (struct cmap *m = c->maps; m; m = m->next)
		if (m->id == ev->mapping && !m->revoked) {
			mmap(m->addr, m->length, PROT_NONE,
			     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			     -1, 0);
			m->revoked = 1;
		}
}

/* Sends a request and waits for its reply. The reply's payload (for a read)
 * goes to in/in_len; a descriptor with it to *in_fd. On success the caller
 * is done with *out before the next call on the connection. */
static int rpc(struct capdsm *c, Capdsm__Request *q, const void *out_pl,
               uint32_t out_len, int out_fd, void *in, uint64_t in_len,
               int *in_fd, Capdsm__Reply **out)
{
	size_t len;
	int rc;

	/* Every request is a few numbers and at most one reference of at most
	 * CAPDSM_REF_MAX bytes (checked where one is taken), far below
	 * WIRE_MSG_MAX: pack at once, without a sizing pass. */
	q->id = ++c->next_id;
	len = capdsm__request__pack(q, c->msg + sizeof(struct wire_hdr));
	assert(len <= WIRE_MSG_MAX);
	rc = wire_send_frame(c->fd, c->msg, (uint32_t)len, out_pl, out_len, out_fd);
	if (rc) {
		/* A daemon that refuses us (say, no free session) sends its
		 * reason and closes: read it rather than report a bare EPIPE. */
		struct wire_hdr h;
		Capdsm__Reply *r;
		const uint8_t *m;
		if (rc == -EPIPE)
			rc = -ECONNRESET; /* the daemon closed: as capdsm.h says */
		int st = rc;

		fail(c, rc, "send to daemon: %s", strerror(-rc));
		if (in_frame(c, &h, &m, NULL) == 0 &&
		    (r = reply_unpack(c, h.msg_len, m))) {
			if (r->status && r->error && r->error[0]) {
				st = r->status;
				fail(c, st, "%s", r->error);
			}
			reply_free(c, r);
		}
		return st;
	}
	for (;;) {
		struct wire_hdr h;
		Capdsm__Reply *r;
		const uint8_t *m;
		int fd = -1;

		rc = in_frame(c, &h, &m, &fd);
		if (rc)
			return fail(c, rc, "receive from daemon: %s", strerror(-rc));
		r = reply_unpack(c, h.msg_len, m);
		if (!r) {
			if (fd >= 0)
				close(fd);
			return fail(c, -EPROTO, "malformed reply from daemon");
		}
		if (r->id == 0 && r->event) {
			on_event(c, r->event);
			reply_free(c, r);
			if (fd >= 0)
				close(fd);
			continue;
		}
		if (r->id != q->id) {
			int st = r->status ? r->status : -EPROTO;
			fail(c, st, "%s", r->error && r->error[0] ? r->error
			                                          : "reply out of order");
			reply_free(c, r);
			if (fd >= 0)
				close(fd);
			return st;
		}
		if (h.payload_len) {
			if (h.payload_len != in_len || !in) {
				reply_free(c, r);
				if (fd >= 0)
					close(fd);
				/* Keep the stream in step for the next call. */
				in_payload(c, NULL, h.payload_len);
				return fail(c, -EPROTO, "unexpected payload in reply");
			}
			rc = in_payload(c, in, in_len);
			if (rc) {
				reply_free(c, r);
				if (fd >= 0)
					close(fd);
				return fail(c, rc, "receive data: %s", strerror(-rc));
			}
		}
		if (r->status) {
			rc = fail(c, r->status, "%s", r->error ? r->error : "error");
			reply_free(c, r);
			if (fd >= 0)
				close(fd);
			return rc;
		}
		if (in_fd)
			*in_fd = fd;
		else if (fd >= 0)
			close(fd);
		c->err[0] = '\0';
		*out = r;
		return 0;
	}
}

/* A request whose reply carries nothing but maybe a slot. */
static int call(struct capdsm *c, Capdsm__Request *q, uint32_t *slot)
{
	Capdsm__Reply *r;
	int rc = rpc(c, q, NULL, 0, -1, NULL, 0, NULL, &r);

	if (rc)
		return rc;
	if (slot)
		*slot = r->slot;
	reply_free(c, r);
	return 0;
}

int capdsm_connect(const char *socket_path, const char *bank_ref,
                   struct capdsm **out)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Hello h = CAPDSM__HELLO__INIT;
	Capdsm__Reply *r;
	struct capdsm *c;
	int rc;

	connect_err[0] = '\0';
	if (strlen(socket_path) >= sizeof a.sun_path) {
		snprintf(connect_err, sizeof connect_err, "socket path too long");
		return -ENAMETOOLONG;
	}
	strcpy(a.sun_path, socket_path);
	c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	const char *pe = getenv("CAPDSM_POLL_US");
	if (pe && *pe) {
		char *end;
		unsigned long v = strtoul(pe, &end, 10);
		if (*end == '\0' && v <= CAPDSM_POLL_US_MAX)
			c->poll_us = (uint32_t)v;
	}
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) {
		rc = -errno;
		snprintf(connect_err, sizeof connect_err, "connect %s: %s",
		         socket_path, strerror(-rc));
		if (c->fd >= 0)
			close(c->fd);
		free(c);
		return rc;
	}
	h.version = 1;
	if (bank_ref && strnlen(bank_ref, CAPDSM_REF_MAX) >= CAPDSM_REF_MAX) {
		snprintf(connect_err, sizeof connect_err,
		         "bank reference too long");
		close(c->fd);
		free(c);
		return -EINVAL;
	}
	h.bank_ref = (char *)(bank_ref ? bank_ref : "");
	q.body_case = CAPDSM__REQUEST__BODY_HELLO;
	q.hello = &h;
	rc = rpc(c, &q, NULL, 0, -1, NULL, 0, NULL, &r);
	if (rc) {
		/* Keep the daemon's reason for capdsm_strerror(NULL). */
		*out = NULL;
		snprintf(connect_err, sizeof connect_err, "%s", c->err);
		close(c->fd);
		free(c);
		return rc;
	}
	c->self = r->process_slot;
	c->max_payload = (uint32_t)r->size;
	if (c->max_payload < PAGE)
		c->max_payload = PAGE;
	reply_free(c, r);
	*out = c;
	return 0;
}

void capdsm_close(struct capdsm *c)
{
	if (!c)
		return;
	while (c->maps) {
		struct cmap *m = c->maps;
		c->maps = m->next;
		munmap(m->addr, m->length);
		free(m);
	}
	close(c->fd);
	free(c);
}

int capdsm_object_create(struct capdsm *c, uint32_t bank_slot, uint64_t size,
                         uint32_t *slot)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__ObjectCreate oc = CAPDSM__OBJECT_CREATE__INIT;

	oc.bank = bank_slot;
	oc.size = size;
	q.body_case = CAPDSM__REQUEST__BODY_OBJECT_CREATE;
	q.object_create = &oc;
	return call(c, &q, slot);
}

static int slot_call(struct capdsm *c, Capdsm__Request__BodyCase which,
                     uint32_t slot, Capdsm__Reply **out)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__CapSlot cs = CAPDSM__CAP_SLOT__INIT;
	Capdsm__Reply *r;
	int rc;

	cs.slot = slot;
	q.body_case = which;
	/* Every CapSlot member of the union sits at the same place. */
	q.cap_revoke = &cs;
	rc = rpc(c, &q, NULL, 0, -1, NULL, 0, NULL, &r);
	if (rc)
		return rc;
	if (out)
		*out = r;
	else
		reply_free(c, r);
	return 0;
}

int capdsm_cap_info(struct capdsm *c, uint32_t slot,
                    struct capdsm_cap_info *info)
{
	Capdsm__Reply *r;
	int rc = slot_call(c, CAPDSM__REQUEST__BODY_CAP_SHOW, slot, &r);

	if (rc)
		return rc;
	if (!r->cap) {
		reply_free(c, r);
		return fail(c, -EPROTO, "reply without capability information");
	}
	*info = (struct capdsm_cap_info){
		.oid = r->cap->oid,
		.kind = r->cap->kind,
		.rights = r->cap->rights,
		.depth = r->cap->depth,
		.size = r->cap->size,
	};
	reply_free(c, r);
	return 0;
}

int capdsm_restrict(struct capdsm *c, uint32_t slot, uint32_t rights,
                    uint32_t *new_slot)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__CapRestrict cr = CAPDSM__CAP_RESTRICT__INIT;

	cr.slot = slot;
	cr.rights = rights;
	q.body_case = CAPDSM__REQUEST__BODY_CAP_RESTRICT;
	q.cap_restrict = &cr;
	return call(c, &q, new_slot);
}

int capdsm_restrict_export(struct capdsm *c, uint32_t slot, uint32_t rights,
                           char *ref, size_t len)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__CapRestrict cr = CAPDSM__CAP_RESTRICT__INIT;
	Capdsm__Reply *r;
	int rc;

	cr.slot = slot;
	cr.rights = rights;
	cr.export = 1;
	q.body_case = CAPDSM__REQUEST__BODY_CAP_RESTRICT;
	q.cap_restrict = &cr;
	rc = rpc(c, &q, NULL, 0, -1, NULL, 0, NULL, &r);
	if (rc)
		return rc;
	if (!r->ref || strlen(r->ref) >= len) {
		reply_free(c, r);
		return fail(c, -ENOSPC, "reference does not fit the buffer");
	}
	strcpy(ref, r->ref);
	reply_free(c, r);
	return 0;
}

int capdsm_object_destroy(struct capdsm *c, uint32_t slot)
{
	return slot_call(c, CAPDSM__REQUEST__BODY_OBJECT_DESTROY, slot, NULL);
}

int capdsm_revoke(struct capdsm *c, uint32_t slot)
{
	return slot_call(c, CAPDSM__REQUEST__BODY_CAP_REVOKE, slot, NULL);
}

int capdsm_drop(struct capdsm *c, uint32_t slot)
{
	return slot_call(c, CAPDSM__REQUEST__BODY_CAP_DROP, slot, NULL);
}

int capdsm_export(struct capdsm *c, uint32_t slot, char *ref, size_t len)
{
	Capdsm__Reply *r;
	int rc = slot_call(c, CAPDSM__REQUEST__BODY_CAP_EXPORT, slot, &r);

	if (rc)
		return rc;
	if (!r->ref || strlen(r->ref) >= len) {
		reply_free(c, r);
		return fail(c, -ENOSPC, "reference does not fit the buffer");
	}
	strcpy(ref, r->ref);
	reply_free(c, r);
	return 0;
}

static int ref_call(struct capdsm *c, Capdsm__Request__BodyCase which,
                    const char *ref, uint32_t *slot)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__CapRef cr = CAPDSM__CAP_REF__INIT;

	if (strnlen(ref, CAPDSM_REF_MAX) >= CAPDSM_REF_MAX)
		return fail(c, -EINVAL, "not a sturdy reference (too long)");
	cr.ref = (char *)ref;
	q.body_case = which;
	q.cap_import = &cr; /* cap_revoke_ref shares the union slot */
	return call(c, &q, slot);
}

int capdsm_import(struct capdsm *c, const char *ref, uint32_t *slot)
{
	return ref_call(c, CAPDSM__REQUEST__BODY_CAP_IMPORT, ref, slot);
}

int capdsm_revoke_ref(struct capdsm *c, const char *ref)
{
	return ref_call(c, CAPDSM__REQUEST__BODY_CAP_REVOKE_REF, ref, NULL);
}

int capdsm_send(struct capdsm *c, uint32_t slot, uint32_t process_slot,
                uint32_t rights)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__CapSend cs = CAPDSM__CAP_SEND__INIT;

	cs.slot = slot;
	cs.process = process_slot;
	cs.rights = rights;
	q.body_case = CAPDSM__REQUEST__BODY_CAP_SEND;
	q.cap_send = &cs;
	return call(c, &q, NULL);
}

int capdsm_recv(struct capdsm *c, uint32_t *slot)
{
	Capdsm__Reply *r;
	int rc = slot_call(c, CAPDSM__REQUEST__BODY_CAP_RECV, 0, &r);

	if (rc)
		return rc;
	*slot = r->slot;
	reply_free(c, r);
	return 0;
}

static int rw(struct capdsm *c, int write, uint32_t slot, uint64_t offset,
              void *buf, size_t len)
{
	size_t done = 0;

	do {
		Capdsm__Request q = CAPDSM__REQUEST__INIT;
		Capdsm__Rw a = CAPDSM__RW__INIT;
		Capdsm__Reply *r;
		size_t n = len - done;
		int rc;

		if (n > c->max_payload)
			n = c->max_payload;
		a.slot = slot;
		a.offset = offset + done;
		a.length = n;
		if (write) {
			q.body_case = CAPDSM__REQUEST__BODY_WRITE;
			q.write = &a;
			rc = rpc(c, &q, (uint8_t *)buf + done, (uint32_t)n, -1, NULL, 0,
			         NULL, &r);
		} else {
			q.body_case = CAPDSM__REQUEST__BODY_READ;
			q.read = &a;
			rc = rpc(c, &q, NULL, 0, -1, (uint8_t *)buf + done, n, NULL, &r);
		}
		if (rc)
			return rc;
		reply_free(c, r);
		done += n;
	} while (done < len);
	return 0;
}

int capdsm_read(struct capdsm *c, uint32_t slot, uint64_t offset, void *buf,
                size_t len)
{
	return rw(c, 0, slot, offset, buf, len);
}

int capdsm_write(struct capdsm *c, uint32_t slot, uint64_t offset,
                 const void *buf, size_t len)
{
	return rw(c, 1, slot, offset, (void *)buf, len);
}

static int lock_call(struct capdsm *c, int unlock, uint32_t slot,
                     uint64_t offset, uint64_t len, unsigned flags)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Lock l = CAPDSM__LOCK__INIT;

	if (flags & ~(unsigned)(CAPDSM_LOCK_EXCLUSIVE | CAPDSM_LOCK_TRY))
		return fail(c, -EINVAL, "unknown lock flags 0x%x", flags);

	l.slot = slot;
	l.offset = offset;
	l.length = len;
	l.exclusive = (flags & CAPDSM_LOCK_EXCLUSIVE) != 0;
	l.try_only = (flags & CAPDSM_LOCK_TRY) != 0;
	q.body_case = unlock ? CAPDSM__REQUEST__BODY_UNLOCK
	                     : CAPDSM__REQUEST__BODY_LOCK;
	q.lock = &l; /* unlock shares the union slot */
	return call(c, &q, NULL);
}

int capdsm_lock(struct capdsm *c, uint32_t slot, uint64_t offset,
                uint64_t len, unsigned flags)
{
	return lock_call(c, 0, slot, offset, len, flags);
}

int capdsm_unlock(struct capdsm *c, uint32_t slot, uint64_t offset,
                  uint64_t len)
{
	return lock_call(c, 1, slot, offset, len, 0);
}

/* Creates a userfaultfd for one mapping. The library hands it to the
 * daemon with MapCommit and closes its own copy, so the daemon holds the
 * only one: if the daemon dies, the registration goes with it and a fault
 * is handled by the kernel instead of waiting for a pager that is gone. */
static int make_uffd(struct capdsm *c)
{
	struct uffdio_api api = {
		.api = UFFD_API,
		.features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM |
		            UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_THREAD_ID,
	};
	int fd, rc;

	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0 && (errno == EPERM || errno == EACCES))
		fd = (int)syscall(SYS_userfaultfd,
		                  O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0)
		return fail(c, -errno, "userfaultfd: %s", strerror(errno));
	if (ioctl(fd, UFFDIO_API, &api) != 0) {
		rc = -errno;
		close(fd);
		return fail(c, rc, "userfaultfd features (minor and write-protect "
		            "faults on shmem) unavailable: %s", strerror(-rc));
	}
	return fd;
}

static void unmap_request(struct capdsm *c, uint64_t id)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Unmap u = CAPDSM__UNMAP__INIT;

	u.mapping = id;
	q.body_case = CAPDSM__REQUEST__BODY_UNMAP_MAPPING;
	q.unmap_mapping = &u;
	call(c, &q, NULL);
}

int capdsm_map(struct capdsm *c, uint32_t process_slot, uint32_t slot,
               uint64_t offset, uint64_t len, uint32_t rights, void **addr)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Map mp = CAPDSM__MAP__INIT;
	Capdsm__MapCommit mc = CAPDSM__MAP_COMMIT__INIT;
	Capdsm__Reply *r;
	struct uffdio_register reg;
	struct cmap *m;
	void *p;
	int fd = -1, ufd = -1, rc;
	uint64_t id;

	m = calloc(1, sizeof *m);
	if (!m)
		return fail(c, -ENOMEM, "out of memory");
	mp.process = process_slot;
	mp.slot = slot;
	mp.offset = offset;
	mp.length = len;
	mp.rights = rights;
	q.body_case = CAPDSM__REQUEST__BODY_MAP;
	q.map = &mp;
	rc = rpc(c, &q, NULL, 0, -1, NULL, 0, &fd, &r);
	if (rc) {
		free(m);
		return rc;
	}
	id = r->mapping;
	reply_free(c, r);
	if (fd < 0) {
		rc = fail(c, -EPROTO, "map reply carried no memory");
		goto undo;
	}
	/* A read-only mapping is MAP_PRIVATE over a read-only file: the
	 * kernel lets userfaultfd register it (it needs VM_MAYWRITE, which a
	 * private mapping has), reads see the shared page-cache pages, and a
	 * store — even after mprotect — could only ever reach a private copy,
	 * never the object. */
	p = mmap(NULL, len, PROT_READ | ((rights & CAPDSM_R_WRITE) ? PROT_WRITE : 0),
	         (rights & CAPDSM_R_WRITE) ? MAP_SHARED : MAP_PRIVATE, fd,
	         (off_t)offset);
	close(fd);
	if (p == MAP_FAILED) {
		rc = fail(c, -errno, "mmap: %s", strerror(errno));
		goto undo;
	}
	reg = (struct uffdio_register){
		.range = { .start = (uint64_t)(uintptr_t)p, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR |
		        ((rights & CAPDSM_R_WRITE) ? UFFDIO_REGISTER_MODE_WP : 0),
	};
	ufd = make_uffd(c);
	if (ufd < 0) {
		rc = ufd;
		munmap(p, len);
		goto undo;
	}
	if (ioctl(ufd, UFFDIO_REGISTER, &reg) != 0) {
		rc = fail(c, -errno, "userfaultfd register: %s", strerror(errno));
		close(ufd);
		munmap(p, len);
		goto undo;
	}
	mc.mapping = id;
	mc.address = (uint64_t)(uintptr_t)p;
	q = (Capdsm__Request)CAPDSM__REQUEST__INIT;
	q.body_case = CAPDSM__REQUEST__BODY_MAP_COMMIT;
	q.map_commit = &mc;
	rc = rpc(c, &q, NULL, 0, ufd, NULL, 0, NULL, &r);
	close(ufd); /* the daemon's copy is the only one now */
	if (rc) {
		munmap(p, len);
		goto undo;
	}
	reply_free(c, r);
	m->addr = p;
	m->length = len;
	m->id = id;
	m->next = c->maps;
	c->maps = m;
	*addr = p;
	return 0;
undo:
	free(m);
	{
		char keep[sizeof c->err];
		memcpy(keep, c->err, sizeof keep);
		unmap_request(c, id);
		memcpy(c->err, keep, sizeof keep);
	}
	return rc;
}

int capdsm_unmap(struct capdsm *c, void *addr)
{
	for (struct cmap **pp = &c->maps; *pp; pp = &(*pp)->next) {
		struct cmap *m = *pp;
		if (m->addr != addr)
			continue;
		*pp = m->next;
		munmap(m->addr, m->length);
		uint64_t id = m->id;
		free(m);
		Capdsm__Request q = CAPDSM__REQUEST__INIT;
		Capdsm__Unmap u = CAPDSM__UNMAP__INIT;
		u.mapping = id;
		q.body_case = CAPDSM__REQUEST__BODY_UNMAP_MAPPING;
		q.unmap_mapping = &u;
		return call(c, &q, NULL);
	}
	return fail(c, -EINVAL, "no mapping at that address");
}

int capdsm_bank_create(struct capdsm *c, uint32_t parent_slot,
                       uint64_t limit_bytes, uint64_t limit_objects,
                       uint32_t *slot)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__BankCreate b = CAPDSM__BANK_CREATE__INIT;

	b.parent = parent_slot;
	b.limit_bytes = limit_bytes;
	b.limit_objects = limit_objects;
	q.body_case = CAPDSM__REQUEST__BODY_BANK_CREATE;
	q.bank_create = &b;
	return call(c, &q, slot);
}

int capdsm_bank_info(struct capdsm *c, uint32_t slot,
                     struct capdsm_bank_info *info)
{
	Capdsm__Reply *r;
	int rc = slot_call(c, CAPDSM__REQUEST__BODY_BANK_SHOW, slot, &r);

	if (rc)
		return rc;
	if (!r->bank) {
		reply_free(c, r);
		return fail(c, -EPROTO, "reply without bank information");
	}
	*info = (struct capdsm_bank_info){
		.oid = r->bank->oid,
		.parent = r->bank->parent,
		.limit_bytes = r->bank->limit_bytes,
		.limit_objects = r->bank->limit_objects,
		.used_bytes = r->bank->used_bytes,
		.used_objects = r->bank->used_objects,
		.children = r->bank->children,
	};
	reply_free(c, r);
	return 0;
}

int capdsm_bank_destroy(struct capdsm *c, uint32_t slot)
{
	return slot_call(c, CAPDSM__REQUEST__BODY_BANK_DESTROY, slot, NULL);
}

int capdsm_stats(struct capdsm *c,
                 void (*fn)(const char *name, uint64_t value, void *arg),
                 void *arg)
{
	Capdsm__Request q = CAPDSM__REQUEST__INIT;
	Capdsm__Stats st = CAPDSM__STATS__INIT;
	Capdsm__Reply *r;
	int rc;

	q.body_case = CAPDSM__REQUEST__BODY_STATS;
	q.stats = &st;
	rc = rpc(c, &q, NULL, 0, -1, NULL, 0, NULL, &r);
	if (rc)
		return rc;
	for (size_t i = 0; i < r->n_counters; i++)
		fn(r->counters[i]->name, r->counters[i]->value, arg);
	reply_free(c, r);
	return 0;
}

int capdsm_rights_parse(const char *s, uint32_t *rights)
{
	return cap_rights_parse(s, rights);
}

int capdsm_rights_format(uint32_t rights, char *buf, size_t len)
{
	return cap_rights_format(rights, buf, len);
}

int capdsm_set_poll_us(struct capdsm *c, uint32_t us)
{
	if (!c || us > CAPDSM_POLL_US_MAX)
		return -EINVAL;
	c->poll_us = us;
	return 0;
}
