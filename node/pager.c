/* pager.c — the daemon as the pager of every local mapping, through each
 * client's userfaultfd.
 *
 * A client maps an object's memfd MAP_SHARED and registers the range with
 * MISSING | MINOR (| WP when writable). Then:
 *   missing page (not in the file yet)  -> UFFDIO_ZEROPAGE (or COPY of
 *                                          zeros) puts it in the file
 *   minor (in the file, not mapped)     -> UFFDIO_CONTINUE maps it
 *   write-protect fault                 -> lifted if the mapping may write
 * Every fault first re-checks the mapping's own capability; a fault on a
 * revoked mapping, or at an address no mapping covers, is answered with
 * SIGBUS to the faulting thread, as a touch past the end of a file is.
 * Processes on one node share the file's pages, so a page faulted in once is
 * free to touch for every mapping of it afterwards. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "node.h"

#define PAGE 4096u

static int uffd_ioctl(int fd, unsigned long req, void *arg)
{
	for (int tries = 0; tries < 100; tries++) {
		if (ioctl(fd, req, arg) == 0)
			return 0;
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
	}
	return -EAGAIN;
}

static int wake(int fd, uint64_t addr)
{
	struct uffdio_range r = { .start = addr, .len = PAGE };
	return uffd_ioctl(fd, UFFDIO_WAKE, &r);
}

/* The resolving ioctls. `dontwake` leaves the faulting thread asleep so
 * that a write-protect can follow before it runs (the 6.1 headers have no
 * UFFDIO_CONTINUE_MODE_WP): continue, protect, then wake. */
static int resolve_missing(int fd, uint64_t addr, bool dontwake)
{
	static uint8_t zeros[PAGE] __attribute__((aligned(PAGE)));
	struct uffdio_zeropage z = {
		.range = { .start = addr, .len = PAGE },
		.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0,
	};
	int rc = uffd_ioctl(fd, UFFDIO_ZEROPAGE, &z);

	if (rc == -EINVAL) {
		struct uffdio_copy c = {
			.dst = addr, .src = (uint64_t)(uintptr_t)zeros, .len = PAGE,
			.mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0,
		};
		rc = uffd_ioctl(fd, UFFDIO_COPY, &c);
	}
	if (rc == -EEXIST) {
		/* Another process put the page in the file meanwhile: map it. */
		struct uffdio_continue cn = {
			.range = { .start = addr, .len = PAGE },
			.mode = dontwake ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0,
		};
		rc = uffd_ioctl(fd, UFFDIO_CONTINUE, &cn);
	}
	return rc;
}

static int resolve_missing_private(struct node *n, const struct mapping *m,
                                   uint64_t addr)
{
	enum cap_kind kind;
	void *priv;
	const struct dobj *d;

	if (cap_obj_get(n->cs, m->oid, &kind, &priv) != 0 || !priv)
		return -ENOENT;
	d = priv;
	if (fallocate(d->memfd, 0, (off_t)(m->offset + (addr - m->addr)), PAGE) != 0)
		return -errno;
	struct uffdio_continue cn = { .range = { .start = addr, .len = PAGE } };
	return uffd_ioctl(m->uffd, UFFDIO_CONTINUE, &cn);
}

static int write_protect(int fd, uint64_t addr, uint64_t len, bool on)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = addr, .len = len },
		.mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};
	return uffd_ioctl(fd, UFFDIO_WRITEPROTECT, &wp);
}

/* Linux 6.4 and later map a page write-protected in the same
 * UFFDIO_CONTINUE (the headers of Debian 12 predate it). Tried first;
 * an -EINVAL turns it off for good and the caller falls back to
 * continue, protect, wake. */
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif
static bool continue_wp = true;

/* Maps [addr, addr + len) of pages in the file (UFFDIO_CONTINUE), and
 * write-protected if `protect`: in the same ioctl where the kernel can
 * (which also wakes a waiting thread), else continue without waking and
 * protect after, leaving the wake to the caller. *mapped: the bytes
 * mapped; a run stopped part way says -EAGAIN, a page mapped already
 * -EEXIST with nothing mapped. */
static int continue_range(int fd, uint64_t addr, uint64_t len, bool protect,
                          uint64_t *mapped)
{
	bool in_one = protect && continue_wp;
	struct uffdio_continue cn = {
		.range = { .start = addr, .len = len },
		.mode = in_one ? UFFDIO_CONTINUE_MODE_WP
		        : protect ? UFFDIO_CONTINUE_MODE_DONTWAKE : 0,
	};
	int rc = ioctl(fd, UFFDIO_CONTINUE, &cn) == 0 ? 0 : -errno;

	if (rc == -EINVAL && in_one) {
		/* A kernel before 6.5 refuses the mode before it looks at
		 * anything else (and writes no `mapped`): if the same call
		 * without it works, that was the reason. */
		continue_wp = false;
		rc = continue_range(fd, addr, len, protect, mapped);
		if (rc == -EINVAL)
			continue_wp = true; /* the range was wrong, not the mode */
		else
			log_info("kernel without UFFDIO_CONTINUE_MODE_WP",
			         "fallback=\"continue, write-protect, wake\"");
		return rc;
	}
	*mapped = rc == 0 ? len : cn.mapped > 0 ? (uint64_t)cn.mapped : 0;
	if (*mapped && protect && !in_one) {
		int w = write_protect(fd, addr, *mapped, true);
		if (w)
			return w;
	}
	return rc;
}

/* Maps the faulting page. `read_only_page`: the node holds the page only
 * for reading, so a writable mapping gets it write-protected (its next
 * store faults again and becomes an upgrade). */
int node_pager_resolve(struct node *n, struct mapping *m, uint64_t addr,
                       uint64_t flags, bool read_only_page)
{
	bool protect = read_only_page && (m->rights & CAP_R_WRITE);
	int rc;

	if (flags & UFFD_PAGEFAULT_FLAG_WP) {
		n->ct.faults_wp++;
		rc = write_protect(m->uffd, addr, PAGE, false);
	} else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
		n->ct.faults_minor++;
		uint64_t done;
		for (int tries = 0; tries < 100; tries++) {
			rc = continue_range(m->uffd, addr, PAGE, protect, &done);
			if (rc != -EAGAIN && rc != -EINTR)
				break;
		}
		if (rc == 0) /* mapped, and protected if need be */
			return protect && !continue_wp ? wake(m->uffd, addr) : 0;
		/* -EEXIST (a racing fault mapped it) goes on below */
	} else if (m->rights & CAP_R_WRITE) {
		n->ct.faults_missing++;
		rc = resolve_missing(m->uffd, addr, protect);
	} else {
		/* A read-only mapping is private: fill the page in the object's
		 * file, then map that shared page read-only. */
		n->ct.faults_missing++;
		rc = resolve_missing_private(n, m, addr);
	}
	if (rc == -EEXIST) {
		rc = 0; /* resolved by a racing fault */
		if (!protect)
			rc = wake(m->uffd, addr);
	}
	if (!rc && protect && !(flags & UFFD_PAGEFAULT_FLAG_WP)) {
		/* Protecting wakes nobody (only un-protecting does): wake the
		 * thread ourselves once its page is read-only. */
		rc = write_protect(m->uffd, addr, PAGE, true);
		if (!rc)
			rc = wake(m->uffd, addr);
	}
	return rc;
}

int node_pager_premap(struct node *n, struct mapping *m, uint64_t addr,
                      uint32_t pages, bool read_only_page)
{
	bool protect = read_only_page && (m->rights & CAP_R_WRITE);
	uint64_t end = addr + (uint64_t)pages * PAGE;

	/* As in node_pager_resolve: a thread may be faulting on one of these
	 * pages now; it must not run before its page is write-protected. No
	 * UFFDIO_WAKE afterwards: such a thread's fault is still ahead of us
	 * (read-ahead skips pages a parked fault waits for), and resolving
	 * it finds the page mapped (-EEXIST) and wakes it then. */
	for (int stuck = 0; addr < end && stuck < 100;) {
		uint64_t done;
		int rc = continue_range(m->uffd, addr, end - addr, protect, &done);
		n->ct.prefetch_mapped += done / PAGE;
		addr += done;
		if (rc == -EEXIST)
			addr += PAGE; /* mapped already, as its state allows */
		else if (rc == -EAGAIN || rc == -EINTR)
			stuck += done == 0;
		else if (rc)
			return rc;
	}
	return addr < end ? -EAGAIN : 0;
}

void node_refuse_fault(struct node *n, struct session *s, uint32_t tid,
                       uint64_t addr, const char *why)
{
	n->ct.faults_refused++;
	log_info("fault refused", "session=%u pid=%d tid=%u addr=0x%" PRIx64
	         " why=\"%s\"", node_sid(n, s), (int)s->pid, tid, addr, why);
	if (tid == 0 || syscall(SYS_tgkill, s->pid, (pid_t)tid, SIGBUS) != 0)
		kill(s->pid, SIGBUS);
}

static void on_fault(struct node *n, struct mapping *m,
                     const struct uffd_msg *msg)
{
	struct session *s = &n->sessions[m->session];
	uint64_t addr = msg->arg.pagefault.address & ~(uint64_t)(PAGE - 1);
	uint64_t flags = msg->arg.pagefault.flags;
	uint32_t tid = msg->arg.pagefault.feat.ptid;
	uint32_t need = CAP_R_READ;
	int rc;

	if (!m->committed || addr < m->addr || addr - m->addr >= m->length)
		return node_refuse_fault(n, s, tid, addr, "fault outside the mapping");
	if (flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP))
		need |= CAP_R_WRITE;
	if (need & ~m->rights)
		return node_refuse_fault(n, s, tid, addr, "store to a read-only mapping");
	if (m->revoked ||
	    cap_check(n->cs, s->clist, m->slot, CAP_KIND_DATA, need, NULL) != 0) {
		if (!m->revoked)
			node_check_mappings(n);
		return node_refuse_fault(n, s, tid, addr, "mapping's capability is revoked");
	}
	{
		enum cap_kind kind;
		void *priv;
		if (cap_obj_get(n->cs, m->oid, &kind, &priv) == 0 && priv &&
		    ((struct dobj *)priv)->coherent)
			return node_cluster_fault(n, m, addr, flags, tid);
	}
	rc = node_pager_resolve(n, m, addr, flags, false);
	if (rc && rc != -ENOENT && rc != -ESRCH)
		log_warn("fault not resolved", "session=%u addr=0x%" PRIx64
		         " flags=0x%" PRIx64 " err=\"%s\"", m->session, addr,
		         flags, strerror(-rc));
}

void node_pager_events(struct node *n, struct mapping *m)
{
	struct uffd_msg msgs[32];

	for (;;) {
		ssize_t r = read(m->uffd, msgs, sizeof msgs);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				log_warn("userfaultfd read failed", "session=%u err=\"%s\"",
				         m->session, strerror(errno));
			return;
		}
		for (size_t i = 0; i < (size_t)r / sizeof msgs[0]; i++) {
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				on_fault(n, m, &msgs[i]);
			if (!m->used || m->uffd < 0)
				return;
		}
		if ((size_t)r < sizeof msgs)
			break;
	}
	/* A fault at the home may have been granted inside coh_acquire. */
	node__drain(n);
}

/* Takes the pages of [off, off+len) of an object out of every mapping at
 * once, keeping their contents: each resident extent is copied aside,
 * punched out of the file (which unmaps it from every process) and written
 * back through the daemon's own, unregistered mapping. The next touch
 * through any registered mapping faults to us again, so a revoked mapping
 * loses reads as well as writes while valid ones just fault the page back
 * in. Nothing else runs meanwhile: this loop is the only thread. */
static void protect_range(struct node *n, const struct dobj *d, uint64_t off,
                          uint64_t len);

static void zap_range(struct node *n, const struct dobj *d, uint64_t off,
                      uint64_t len)
{
	static uint8_t keep[64 * 1024];
	off_t pos = (off_t)off, end = (off_t)(off + len);

	/* No store may land between the copy and the punch, or it would be
	 * lost: first write-protect every local writable mapping of the range
	 * (synchronous: the kernel's TLB shootdown has completed, and by TSO
	 * every store a thread made before it is in memory), then copy. */
	protect_range(n, d, off, len);

	while (pos < end) {
		off_t data = lseek(d->memfd, pos, SEEK_DATA);
		if (data < 0 || data >= end)
			break;
		off_t hole = lseek(d->memfd, data, SEEK_HOLE);
		if (hole < 0 || hole > end)
			hole = end;
		for (off_t p = data; p < hole; p += (off_t)sizeof keep) {
			size_t k = (size_t)(hole - p) < sizeof keep ? (size_t)(hole - p)
			                                           : sizeof keep;
			memcpy(keep, d->base + p, k);
			if (fallocate(d->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			              p, (off_t)k) == 0)
				memcpy(d->base + p, keep, k);
		}
		pos = hole;
	}
}

/* The coherence protocol took the page away (keep = false: the frame goes
 * too) or left this node a read-only copy. */
void node_pager_zap_page(struct node *n, struct dobj *d, uint64_t pgno,
                         bool keep)
{
	/* Kept (at the home) and mapped by no process here: nothing to take
	 * away, and the frame stays as it is. */
	if (keep && d->maps == NODE_NIL)
		return;
	if (keep)
		zap_range(n, d, pgno * PAGE, PAGE);
	else
		fallocate(d->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		          (off_t)(pgno * PAGE), PAGE);
}

/* Write-protects [off, off+len) of the object in every local writable
 * mapping that covers any of it. */
static void protect_range(struct node *n, const struct dobj *d, uint64_t off,
                          uint64_t len)
{
	for (uint32_t i = d->maps; i != NODE_NIL; i = n->maps[i].next_obj) {
		struct mapping *m = &n->maps[i];
		if (!m->used || !m->committed || m->oid != d->oid ||
		    !(m->rights & CAP_R_WRITE) || m->uffd < 0 ||
		    off + len <= m->offset || off >= m->offset + m->length)
			continue;
		uint64_t lo = off > m->offset ? off : m->offset;
		uint64_t hi = off + len < m->offset + m->length ? off + len
		                                                : m->offset + m->length;
		int rc = write_protect(m->uffd, m->addr + (lo - m->offset), hi - lo,
		                       true);
		if (rc && rc != -ENOENT && rc != -ESRCH)
			log_warn("write-protect failed", "mapping=0x%" PRIx64
			         " err=\"%s\"", m->id, strerror(-rc));
	}
}

void node_pager_protect_page(struct node *n, struct dobj *d, uint64_t pgno)
{
	protect_range(n, d, pgno * PAGE, PAGE);
}

void node_pager_revoke(struct node *n, struct session *s, struct mapping *m)
{
	enum cap_kind kind;
	void *priv;

	(void)s;
	/* An object that is gone was emptied by node_on_destroy already. */
	if (cap_obj_get(n->cs, m->oid, &kind, &priv) == 0 && priv)
		zap_range(n, priv, m->offset, m->length);
}
