/* capdsmd.c — the capdsm node daemon: set-up, the event loop, client
 * sessions and their frame reader.
 *
 * One epoll loop serves the listening socket, every client socket, every
 * client's userfaultfd and a signalfd; each handler runs to completion, so
 * the node's tables need no locks. All memory is allocated here at startup
 * from the config's pool sizes; afterwards a full pool is an error reply,
 * never an allocation. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "node.h"

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t tag(uint32_t type, uint32_t idx)
{
	return ((uint64_t)type << 32) | idx;
}

static int ep_add(struct node *n, int fd, uint32_t type, uint32_t idx)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag(type, idx) };
	return epoll_ctl(n->epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

int node_watch_uffd(struct node *n, struct mapping *m)
{
	return ep_add(n, m->uffd, EV_UFFD, (uint32_t)(m - n->maps));
}

void node_unwatch(struct node *n, int fd)
{
	epoll_ctl(n->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* ---- sessions ---- */

static void accept_clients(struct node *n)
{
	for (;;) {
		int fd = accept4(n->lfd, NULL, NULL, SOCK_CLOEXEC);
		struct session *s = NULL;
		struct ucred cr;
		socklen_t crl = sizeof cr;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR)
				log_warn("accept failed", "err=\"%s\"", strerror(errno));
			return;
		}
		for (uint32_t i = 0; i < n->cfg.clients; i++)
			if (!n->sessions[i].used) {
				s = &n->sessions[i];
				break;
			}
		if (!s) {
			/* Say why before closing, so the client prints a reason. */
			n->ct.sessions_refused++;
			log_warn("session refused", "reason=\"session pool full\" max=%u",
			         n->cfg.clients);
			struct timeval tv = { .tv_sec = 1 };
			setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
			struct session tmp = { .fd = fd };
			node_send_error(n, &tmp, 0, -EUSERS,
			                "node has no free session (pools.clients = %u)",
			                n->cfg.clients);
			close(fd);
			continue;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crl) != 0) {
			close(fd);
			continue;
		}
		/* Replies are sent blocking, bounded by a timeout: a client that
		 * stops reading is dropped rather than stalling the node. */
		struct timeval tv = { .tv_sec = 5 };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

		uint8_t *in = s->in, *arena = s->arena, *stage = s->stage;
		uint32_t gen = s->gen + 1;
		*s = (struct session){
			.used = true,
			.fd = fd,
			.gen = gen,
			.pid = cr.pid,
			.uid = cr.uid,
			.clist = CAP_NONE,
			.proc_slot = CAP_NONE,
			.maps = NODE_NIL,
			.rd = RD_HDR,
			.in = in,
			.msg = in + sizeof(struct wire_hdr),
			.rxfd = -1,
			.arena = arena,
			.stage = stage,
			.opened_ms = now_us() / 1000,
		};
		if (ep_add(n, fd, EV_CLIENT, node_sid(n, s)) != 0) {
			s->used = false;
			close(fd);
			continue;
		}
		n->nsessions_used++;
		n->ct.sessions_opened++;
		log_debug("session open", "session=%u pid=%d uid=%u",
		          node_sid(n, s), (int)cr.pid, (unsigned)cr.uid);
	}
}

void node_close_session(struct node *n, struct session *s, const char *why)
{
	if (!s->used)
		return;
	log_debug("session close", "session=%u pid=%d why=\"%s\"", node_sid(n, s),
	          (int)s->pid, why);
	epoll_ctl(n->epfd, EPOLL_CTL_DEL, s->fd, NULL);
	node_session_release(n, s); /* closes its mappings' userfaultfds */
	close(s->fd);
	if (s->rxfd >= 0)
		close(s->rxfd);
	s->used = false;
	n->nsessions_used--;
}

/* Handles every whole frame at the start of s->in. A write's payload that
 * came in the same receive is copied where it goes; the rest of it is
 * received straight into the object (RD_PAYLOAD). A malformed header is
 * answered and the connection closed: a byte stream whose framing is lost
 * cannot be trusted again. Returns false if the session was closed. */
static bool take_frames(struct node *n, struct session *s)
{
	while (s->used && s->rd == RD_HDR && s->have >= sizeof s->hdr) {
		uint32_t need, left;
		uint8_t *rest;

		memcpy(&s->hdr, s->in, sizeof s->hdr);
		if (wire_hdr_check(&s->hdr, n->cfg.max_payload) != 0) {
			n->ct.errors++;
			log_warn("bad frame header", "session=%u magic=0x%08x "
			         "msg_len=%u payload_len=%u", node_sid(n, s),
			         s->hdr.magic, s->hdr.msg_len, s->hdr.payload_len);
			node_send_error(n, s, 0, -EPROTO, "malformed frame header");
			node_close_session(n, s, "bad frame header");
			return false;
		}
		need = (uint32_t)sizeof s->hdr + s->hdr.msg_len;
		if (s->have < need)
			break;
		node_on_frame(n, s); /* may set RD_PAYLOAD or RD_DRAIN */
		rest = s->in + need;
		left = s->have - need;
		if (s->rd != RD_HDR) {
			uint32_t take = left < s->pl_left ? left : (uint32_t)s->pl_left;
			if (s->rd == RD_PAYLOAD) {
				memcpy(s->pl_dst, rest, take);
				s->pl_dst += take;
				n->ct.bytes_written += take;
			}
			s->pl_left -= take;
			rest += take;
			left -= take;
			if (s->pl_left == 0) {
				s->rd = RD_HDR;
				node_on_payload_done(n, s);
			}
		}
		memmove(s->in, rest, left);
		s->have = left;
	}
	return s->used;
}

/* Reads what is there for one session. Returns to the loop as soon as no
 * partial frame is left, rather than asking the socket again only to hear
 * EAGAIN: the loop's epoll is level-triggered and reports any rest. */
static void client_readable(struct node *n, struct session *s)
{
	for (int rounds = 0; rounds < 64 && s->used; rounds++) {
		ssize_t r;

		if (s->rd == RD_PAYLOAD) {
			r = wire_recv_some(s->fd, s->pl_dst, s->pl_left, NULL,
			                   MSG_DONTWAIT);
		} else if (s->rd == RD_DRAIN) {
			static uint8_t sink[65536];
			size_t want = s->pl_left < sizeof sink ? s->pl_left : sizeof sink;
			r = wire_recv_some(s->fd, sink, want, NULL, MSG_DONTWAIT);
		} else {
			r = wire_recv_some(s->fd, s->in + s->have, NODE_IN - s->have,
			                   &s->rxfd, MSG_DONTWAIT);
		}
		if (r == -EAGAIN || r == -EWOULDBLOCK)
			return;
		if (r < 0) {
			node_close_session(n, s, strerror((int)-r));
			return;
		}
		if (r == 0) {
			node_close_session(n, s, "end of stream");
			return;
		}
		s->stall_ms = 0;
		if (s->rd == RD_HDR) {
			s->have += (uint32_t)r;
			if (!take_frames(n, s))
				return;
		} else {
			if (s->rd == RD_PAYLOAD) {
				s->pl_dst += r;
				n->ct.bytes_written += (uint64_t)r;
			}
			s->pl_left -= (uint64_t)r;
			if (s->pl_left == 0) {
				s->rd = RD_HDR;
				node_on_payload_done(n, s);
				if (!take_frames(n, s))
					return;
			}
		}
		if (s->rd == RD_HDR && s->have == 0)
			return;
	}
}

/* ---- set-up ---- */

static int open_socket(struct node *n, char *err, size_t errlen)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;
	mode_t old;

	if (strlen(n->cfg.socket) >= sizeof a.sun_path) {
		snprintf(err, errlen, "socket path too long: %s", n->cfg.socket);
		return -ENAMETOOLONG;
	}
	strcpy(a.sun_path, n->cfg.socket);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* A socket file left by a crashed daemon is removed; one that still
	 * answers belongs to a live daemon and is left alone. */
	if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
		close(fd);
		snprintf(err, errlen, "another daemon is listening on %s", a.sun_path);
		return -EADDRINUSE;
	}
	unlink(a.sun_path);
	old = umask(0177); /* owner only until the group is set */
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		int e = errno;
		umask(old);
		close(fd);
		snprintf(err, errlen, "bind %s: %s", a.sun_path, strerror(e));
		return -e;
	}
	umask(old);
	if (n->cfg.group[0]) {
		struct group *g = getgrnam(n->cfg.group);
		if (!g || chown(a.sun_path, (uid_t)-1, g->gr_gid) != 0 ||
		    chmod(a.sun_path, 0660) != 0) {
			close(fd);
			unlink(a.sun_path);
			snprintf(err, errlen, "cannot give group '%s' the socket",
			         n->cfg.group);
			return -EINVAL;
		}
	}
	if (listen(fd, 128) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	n->lfd = fd;
	return 0;
}

static int node_init(struct node *n, char *err, size_t errlen)
{
	const struct node_config *c = &n->cfg;
	struct cap_config cc = {
		.node_id = c->node_id,
		.max_objects = c->objects,
		.max_caps = c->caps,
		.max_clists = c->clients,
		.slots_per_clist = c->slots_per_client,
		.max_sturdy = c->sturdy,
		.root_limit_bytes = c->bank_limit_bytes,
		.root_limit_objects = c->bank_limit_objects,
		.on_destroy = node_on_destroy,
		.ctx = n,
	};
	int rc;
	sigset_t mask;

	n->lfd = n->sigfd = n->epfd = -1;
	rc = cap_space_init(&n->cs, &cc);
	if (rc) {
		snprintf(err, errlen, "capability pools: %s", strerror(-rc));
		return rc;
	}
	rc = coh_lock_init(&n->locks, c->locks);
	if (rc) {
		snprintf(err, errlen, "lock table: %s", strerror(-rc));
		return rc;
	}
	n->sessions = calloc(c->clients, sizeof *n->sessions);
	n->dobjs = calloc(c->objects, sizeof *n->dobjs);
	n->maps = calloc(c->mappings, sizeof *n->maps);
	n->out = malloc(NODE_IN); /* header + message */
	if (!n->sessions || !n->dobjs || !n->maps || !n->out) {
		snprintf(err, errlen, "out of memory sizing the pools");
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < c->clients; i++) {
		n->sessions[i].in = malloc(NODE_IN);
		n->sessions[i].arena = malloc(NODE_ARENA);
		if (!n->sessions[i].in || !n->sessions[i].arena) {
			snprintf(err, errlen, "out of memory sizing the session pool");
			return -ENOMEM;
		}
	}
	for (uint32_t i = 0; i < c->objects; i++)
		n->dobjs[i].memfd = n->dobjs[i].rofd = -1;

	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	n->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	n->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (n->sigfd < 0 || n->epfd < 0) {
		snprintf(err, errlen, "signalfd/epoll: %s", strerror(errno));
		return -errno;
	}
	rc = open_socket(n, err, errlen);
	if (rc) {
		if (!err[0])
			snprintf(err, errlen, "socket %s: %s", c->socket, strerror(-rc));
		return rc;
	}
	if (ep_add(n, n->lfd, EV_LISTEN, 0) || ep_add(n, n->sigfd, EV_SIGNAL, 0)) {
		snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
		return -errno;
	}
	return node_cluster_init(n, err, errlen);
}

static void node_fini(struct node *n)
{
	if (n->sessions)
		for (uint32_t i = 0; i < n->cfg.clients; i++) {
			node_close_session(n, &n->sessions[i], "shutdown");
			free(n->sessions[i].in);
			free(n->sessions[i].arena);
		}
	if (n->lfd >= 0) {
		close(n->lfd);
		unlink(n->cfg.socket);
	}
	/* Destroying the space calls on_destroy for nothing: free objects
	 * first so their memfds and mappings go. */
	if (n->dobjs)
		for (uint32_t i = 0; i < n->cfg.objects; i++)
			if (n->dobjs[i].used)
				cap_obj_destroy(n->cs, n->dobjs[i].oid);
	node_cluster_fini(n);
	cap_space_free(n->cs);
	coh_lock_free(n->locks);
	free(n->sessions);
	free(n->dobjs);
	free(n->maps);
	free(n->out);
	if (n->sigfd >= 0)
		close(n->sigfd);
	if (n->epfd >= 0)
		close(n->epfd);
}

/* Closes sessions that hold a slot without using it: no hello in time, or
 * a frame begun and not finished. A client waiting for a lock or a
 * capability is not idle in this sense and is left alone. */
static void sweep_sessions(struct node *n)
{
	uint64_t now = now_us() / 1000;

	for (uint32_t i = 0; i < n->cfg.clients; i++) {
		struct session *s = &n->sessions[i];
		bool partial = s->have > 0 || s->rd != RD_HDR;

		if (!s->used)
			continue;
		if (!s->hello && now - s->opened_ms > NODE_HELLO_MS) {
			log_info("session dropped", "session=%u pid=%d reason=\"no "
			         "hello within %u ms\"", i, (int)s->pid, NODE_HELLO_MS);
			node_close_session(n, s, "no hello");
		} else if (!partial) {
			s->stall_ms = 0;
		} else if (!s->stall_ms) {
			s->stall_ms = now;
		} else if (now - s->stall_ms > NODE_PARTIAL_MS) {
			log_info("session dropped", "session=%u pid=%d reason=\"frame "
			         "unfinished for %u ms\"", i, (int)s->pid,
			         NODE_PARTIAL_MS);
			node_close_session(n, s, "frame unfinished");
		}
	}
}

/* The loop. With poll_us > 0 it keeps polling (epoll_wait with a zero
 * timeout, yielding the CPU between empty polls) for that long after the
 * last event of its own clients (requests, faults) and while it awaits
 * another node's answer, before it sleeps: waking a sleeping thread costs
 * tens of microseconds on these machines, an idle spin costs a core, so
 * the spin is short and bounded. Serving another node's request is not
 * a reason to spin: that node will not ask again before it has our answer
 * (and its own clients more work), and a home that spun after every
 * answer would take the CPU from the very daemons it serves wherever
 * nodes share cores — a spinner that lost its lag under a fair scheduler
 * (EEVDF) is not picked for a long while once it does need to run. */
static void node_run(struct node *n)
{
	struct epoll_event evs[64];
	uint64_t last = 0;

	uint64_t swept = now_us();
	unsigned rounds = 0;

	while (!n->stopping) {
		/* Asleep for good only with no session at all; with sessions,
		 * wake once a second to drop those that hold a slot idly. The
		 * clock is read every 256 rounds or after a quiet second, not
		 * per request: on a VM without a usable vDSO clock every read is
		 * a system call. */
		int timeout = n->nsessions_used ? 1000 : -1;
		if (n->cfg.poll_us && now_us() - last < n->cfg.poll_us)
			timeout = 0;
		if (n->nsessions_used && (++rounds & 255) == 0 &&
		    now_us() - swept >= 1000000) {
			sweep_sessions(n);
			swept = now_us();
		}
		int k = epoll_wait(n->epfd, evs, 64, timeout);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			log_error("epoll_wait failed", "err=\"%s\"", strerror(errno));
			return;
		}
		if (k == 0 && timeout > 0) { /* a quiet second */
			sweep_sessions(n);
			swept = now_us();
		}
		if (k == 0 && timeout == 0)
			sched_yield(); /* spinning: let the others run */
		bool own = false;
		for (int i = 0; i < k; i++) {
			uint32_t type = (uint32_t)(evs[i].data.u64 >> 32);
			uint32_t idx = (uint32_t)evs[i].data.u64;
			struct session *s = &n->sessions[idx];

			switch (type) {
			case EV_LISTEN:
				accept_clients(n);
				break;
			case EV_SIGNAL: {
				struct signalfd_siginfo si;
				if (read(n->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
					log_info("signal, shutting down", "signal=%u",
					         si.ssi_signo);
					n->stopping = true;
				}
				break;
			}
			case EV_UFFD:
				own = true;
				if (idx < n->cfg.mappings && n->maps[idx].used &&
				    n->maps[idx].uffd >= 0)
					node_pager_events(n, &n->maps[idx]);
				break;
			case EV_CLIENT:
				own = true;
				if (s->used)
					client_readable(n, s);
				break;
			case EV_PEER:
				node_cluster_events(n);
				break;
			}
		}
		if (k > 0)
			node_cluster_idle(n);
		if (k > 0 && n->cfg.poll_us && (own || node_cluster_awaiting(n)))
			last = now_us();
	}
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: capdsmd --config FILE [--socket PATH] [--node-id N]\n"
	        "               [--log-level debug|info|warn|error]\n"
	        "The capdsm node daemon; see README.md for the settings.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "node-id", required_argument, NULL, 'n' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	static struct node n;
	char err[512] = "";
	const char *config = NULL, *sock = NULL, *level = NULL, *id = NULL;
	int o;

	while ((o = getopt_long(argc, argv, "c:s:n:l:h", opts, NULL)) != -1) {
		switch (o) {
		case 'c': config = optarg; break;
		case 's': sock = optarg; break;
		case 'n': id = optarg; break;
		case 'l': level = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	config_defaults(&n.cfg);
	if (!config && !sock) {
		fprintf(stderr, "capdsmd: give --config FILE (or at least "
		        "--socket PATH)\n");
		usage(stderr);
		return 2;
	}
	if (config && config_load(&n.cfg, config, err, sizeof err) != 0) {
		fprintf(stderr, "capdsmd: %s\n", err);
		return 1;
	}
	if (sock && snprintf(n.cfg.socket, sizeof n.cfg.socket, "%s", sock) >=
	            (int)sizeof n.cfg.socket) {
		fprintf(stderr, "capdsmd: socket path too long\n");
		return 1;
	}
	if (id) {
		char *end;
		unsigned long v = strtoul(id, &end, 10);
		if (*end || v > UINT32_MAX) {
			fprintf(stderr, "capdsmd: bad --node-id '%s'\n", id);
			return 1;
		}
		n.cfg.node_id = (uint32_t)v;
	}
	if (level && log_level_parse(level, &n.cfg.log_level) != 0) {
		fprintf(stderr, "capdsmd: bad --log-level '%s'\n", level);
		return 1;
	}
	/* Without a socket setting, the socket lives in the node's folder. */
	if (!n.cfg.socket[0] &&
	    snprintf(n.cfg.socket, sizeof n.cfg.socket, "%s/capdsm.sock",
	             n.cfg.dir) >= (int)sizeof n.cfg.socket) {
		fprintf(stderr, "capdsmd: %s/capdsm.sock: socket path too long\n",
		        n.cfg.dir);
		return 1;
	}
	if (config_check(&n.cfg, err, sizeof err) != 0) {
		fprintf(stderr, "capdsmd: %s\n", err);
		return 1;
	}
	log_setup(n.cfg.log_level, n.cfg.node_id);
	if (node_init(&n, err, sizeof err) != 0) {
		fprintf(stderr, "capdsmd: %s\n", err);
		node_fini(&n);
		return 1;
	}
	log_info("listening", "socket=%s objects=%u caps=%u clients=%u "
	         "mappings=%u locks=%u frames=%u poll_us=%u pid=%d",
	         n.cfg.socket, n.cfg.objects, n.cfg.caps, n.cfg.clients,
	         n.cfg.mappings, n.cfg.locks, n.cfg.frames, n.cfg.poll_us,
	         (int)getpid());
	node_run(&n);
	node_fini(&n);
	log_info("stopped", NULL);
	return 0;
}
