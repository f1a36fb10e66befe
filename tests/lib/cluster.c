/* cluster.c — a real cluster of capdsmd daemons for a test: N nodes on
 * 127.0.0.1 in one mkdtemp folder (node<K>/ each: config, CURVE secret key
 * file, socket, log), started, probed until every pair of nodes can talk,
 * stopped with SIGTERM (exit 0 checked) or killed one by one.
 *
 * Ports: each node's port is found by binding port 0 on 127.0.0.1; all N
 * probe sockets are held at once (so the ports differ) and closed just
 * before the daemons start. Another program may take a port in between:
 * a daemon that then fails to bind makes th_cluster_start try again with
 * fresh ports (at most three rounds).
 *
 * Cleanup: the daemons are started with PR_SET_PDEATHSIG, so they die with
 * the test process however it ends (the SIGALRM guard of daemon.c included,
 * which knows nothing of clusters). The folder is removed by
 * th_cluster_stop, or else by a "janitor": a process forked at start,
 * without a death signal and in a session of its own (ctest kills a timed
 * out test's whole process group), that waits for the end of a pipe only
 * the test process and its children hold and then removes the folder — so
 * a test that dies or times out leaves nothing in /tmp either.
 *
 * The janitor and the daemons are not registered as th_fork children, so
 * th_kill_children() (which a test's teardown calls to end its clients)
 * never takes a cluster down by accident. */
#include "testlib.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "transport.h"

#define START_ROUNDS 3
#define LISTEN_TIMEOUT_MS 10000
#define PEERS_TIMEOUT_MS 10000
#define STOP_TIMEOUT_MS 5000

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
		                   .tv_nsec = (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* ---- the folder and its janitor ---- */

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static void rm_tree(const char *dir)
{
	if (dir[0])
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Forks the janitor: it holds the read end of a pipe whose write end only
 * the test process (and its th_fork children) hold, close-on-exec so no
 * daemon does. At end of file it removes the folder. */
static int janitor_start(struct th_cluster *c)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) != 0)
		return -errno;
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		int rc = -errno;
		close(p[0]);
		close(p[1]);
		return rc;
	}
	if (pid == 0) {
		char buf[16];
		/* Nothing of the test process stays open here but the pipe. */
		for (int fd = 3; fd < 1024; fd++)
			if (fd != p[0])
				close(fd);
		/* Out of the test's process group: ctest's timeout kills the
		 * whole group, and the janitor must outlive it to clean up. */
		setsid();
		prctl(PR_SET_NAME, "capdsm-janitor");
		signal(SIGALRM, SIG_IGN);
		signal(SIGINT, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		signal(SIGTERM, SIG_DFL);
		alarm(0);
		for (;;) {
			ssize_t r = read(p[0], buf, sizeof buf);
			if (r == 0 || (r < 0 && errno != EINTR))
				break;
		}
		/* The daemons die with the test process (death signal); give
		 * them a moment so that none writes into the folder after. */
		sleep_ms(200);
		rm_tree(c->dir);
		_exit(0);
	}
	close(p[0]);
	c->janitor = pid;
	c->janitor_fd = p[1];
	return 0;
}

static void janitor_stop(struct th_cluster *c)
{
	if (c->janitor > 0) {
		kill(c->janitor, SIGKILL);
		waitpid(c->janitor, NULL, 0);
		c->janitor = 0;
	}
	if (c->janitor_fd >= 0) {
		close(c->janitor_fd);
		c->janitor_fd = -1;
	}
}

/* ---- files ---- */

static int write_text(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	size_t len = strlen(text), off = 0;
	int rc = 0;

	if (fd < 0)
		return -errno;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			break;
		}
		off += (size_t)w;
	}
	if (fchmod(fd, mode) != 0 && !rc)
		rc = -errno;
	if (close(fd) != 0 && !rc)
		rc = -errno;
	return rc;
}

static int write_config(const struct th_cluster *c, unsigned k)
{
	const struct th_cluster_opts *o = &c->opts;
	const struct th_config def = TH_CONFIG_DEFAULT;
	const struct th_config *p = o->pools ? o->pools : &def;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	int rc;

	if (!f)
		return -ENOMEM;
	fprintf(f, "[node]\nid = %u\nsocket = %s\ndir = %s\nlog_level = %s\n", k,
	        c->node[k].sock, c->node[k].dir,
	        o->log_level ? o->log_level : "info");
	if (o->poll_us)
		fprintf(f, "poll_us = %u\n", o->poll_us);
	if (p->max_payload)
		fprintf(f, "max_payload = %u\n", p->max_payload);
	fprintf(f,
	        "[pools]\nobjects = %u\ncaps = %u\nclients = %u\n"
	        "slots_per_client = %u\nmappings = %u\nlocks = %u\n"
	        "sturdy = %u\nframes = %u\n"
	        "[bank]\nlimit_bytes = %llu\nlimit_objects = %llu\n",
	        p->objects, p->caps, p->clients, p->slots_per_client, p->mappings,
	        p->locks, p->sturdy, p->frames, (unsigned long long)p->limit_bytes,
	        (unsigned long long)p->limit_objects);
	const char *tpk = o->transport ? o->transport
	                                : getenv("CAPDSM_TEST_TRANSPORT");
	/* Under software emulation (tests/vm) a daemon can stall for longer
	 * than the default failure detector allows: CAPDSM_TEST_SLOW=N
	 * multiplies the default timings by N (tests that set their own
	 * keep them). */
	const char *slow_env = getenv("CAPDSM_TEST_SLOW");
	unsigned slow = slow_env ? (unsigned)strtoul(slow_env, NULL, 10) : 1;
	if (slow < 1 || slow > 100)
		slow = 1;
	fprintf(f,
	        "[cluster]\nnodes = %u\ntransport = %s\nsecret_key_file = %s\n"
	        "plaintext = %s\nheartbeat_ms = %u\ndead_after_ms = %u\n",
	        c->n, tpk && *tpk ? tpk : "zmq", c->key_file[k],
	        o->plaintext ? "true" : "false",
	        o->heartbeat_ms ? o->heartbeat_ms : 50 * slow,
	        o->dead_after_ms ? o->dead_after_ms : 500 * slow);
	for (unsigned j = 0; j < c->n; j++) {
		/* A node with a foreign key believes its own (unknown) public
		 * key is the member key; everyone else lists the real one. */
		const char *pub = (j == k && (o->foreign_key & (1u << k)))
		                          ? c->own_pub[k]
		                          : c->pub[j];
		fprintf(f, "[peer.%u]\naddress = tcp://127.0.0.1:%u\n", j,
		        (unsigned)c->port[j]);
		if (!o->plaintext)
			fprintf(f, "public_key = %s\n", pub);
	}
	if (o->extra)
		fprintf(f, "%s\n", o->extra);
	if (fclose(f) != 0) {
		free(text);
		return -ENOMEM;
	}
	rc = write_text(c->node[k].config, text, 0600);
	free(text);
	return rc;
}

/* Node k's key file: its secret key (the member one, or for a foreign or
 * mismatched key a fresh one), mode 0600. None for a no_key node. */
static int write_key(struct th_cluster *c, unsigned k)
{
	const struct th_cluster_opts *o = &c->opts;
	char pub[TP_KEY_LEN + 1], sec[TP_KEY_LEN + 1], line[TP_KEY_LEN + 2];
	const char *secret = c->sec[k];

	snprintf(c->own_pub[k], sizeof c->own_pub[k], "%s", c->pub[k]);
	if (o->no_key & (1u << k))
		return 0;
	if (o->foreign_key & (1u << k) || o->mismatched_key & (1u << k)) {
		int rc = tp_keypair(pub, sec);
		if (rc)
			return rc;
		secret = sec;
		if (o->foreign_key & (1u << k))
			snprintf(c->own_pub[k], sizeof c->own_pub[k], "%s", pub);
	}
	snprintf(line, sizeof line, "%s\n", secret);
	return write_text(c->key_file[k], line, 0600);
}

/* ---- ports ---- */

/* Finds n distinct free ports on 127.0.0.1 (all bound at once, then
 * released). */
static int find_ports(uint16_t *port, unsigned n)
{
	int fds[TH_CLUSTER_MAX];
	int rc = 0;
	unsigned i;

	for (i = 0; i < n; i++) {
		struct sockaddr_in a = { .sin_family = AF_INET,
			                     .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t al = sizeof a;

		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof a) != 0 ||
		    getsockname(fds[i], (struct sockaddr *)&a, &al) != 0) {
			rc = -errno;
			if (fds[i] >= 0)
				close(fds[i]);
			break;
		}
		port[i] = ntohs(a.sin_port);
	}
	while (i-- > 0)
		close(fds[i]);
	return rc;
}

/* ---- one node ---- */

static void print_log_tail(const struct th_daemon *d, unsigned k)
{
	char *log = th_daemon_log(d);
	size_t n;

	if (!log)
		return;
	n = strlen(log);
	fprintf(stderr, "---- node %u log (%s), last part ----\n%s\n----\n", k,
	        d->log, n > 4000 ? log + n - 4000 : log);
	free(log);
}

void th_cluster_dump_logs(const struct th_cluster *c)
{
	for (unsigned k = 0; k < c->n; k++)
		print_log_tail(&c->node[k], k);
}

/* Forks and execs node k's daemon with its log as stdout and stderr
 * (appended, so that an earlier incarnation's log stays). */
static int spawn(struct th_cluster *c, unsigned k)
{
	const char *bin = th_daemon_path();
	struct th_daemon *d = &c->node[k];
	pid_t parent = getpid(), pid;
	int fd;

	if (!bin) {
		fprintf(stderr, "testlib: CAPDSMD (path of capdsmd) is not set\n");
		return -ENOENT;
	}
	fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	if (pid == 0) {
		sigset_t none;
		int devnull = open("/dev/null", O_RDONLY);

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(126);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGALRM, SIG_DFL);
		signal(SIGPIPE, SIG_DFL);
		alarm(0);
		if (devnull >= 0)
			dup2(devnull, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		execl(bin, "capdsmd", "--config", d->config, (char *)NULL);
		_exit(127);
	}
	close(fd);
	d->pid = pid;
	c->status[k] = -1;
	return 0;
}

/* Waits until node k listens (its log says "listening" after the k-th
 * such line seen before the start) or exits. */
static int wait_listening(struct th_cluster *c, unsigned k, size_t skip,
                          int timeout_ms)
{
	struct th_daemon *d = &c->node[k];

	for (int64_t end = now_ms() + timeout_ms;;) {
		int st;
		char *log;

		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = 0;
			c->status[k] = st;
			return -ECHILD;
		}
		log = th_daemon_log(d);
		if (log && strlen(log) > skip &&
		    strstr(log + skip, "msg=\"listening\"")) {
			free(log);
			return 0;
		}
		free(log);
		if (now_ms() > end)
			return -ETIMEDOUT;
		sleep_ms(2);
	}
}

static size_t log_size(const struct th_daemon *d)
{
	struct stat st;
	return stat(d->log, &st) == 0 ? (size_t)st.st_size : 0;
}

int th_cluster_start_node(struct th_cluster *c, unsigned k)
{
	size_t skip;
	int rc;

	if (k >= c->n)
		return -EINVAL;
	if (c->node[k].pid > 0)
		return -EBUSY;
	skip = log_size(&c->node[k]);
	rc = spawn(c, k);
	if (rc)
		return rc;
	rc = wait_listening(c, k, skip, LISTEN_TIMEOUT_MS);
	if (rc == -ETIMEDOUT) {
		kill(c->node[k].pid, SIGKILL);
		waitpid(c->node[k].pid, &c->status[k], 0);
		c->node[k].pid = 0;
	}
	return rc;
}

/* ---- peers ---- */

/* Imports, through node j, a well-formed reference that names node k but
 * no capability. Returns 0 once node k answered it (with a refusal, as
 * the secret is wrong), -EHOSTDOWN/-ENOTCONN while j cannot reach k, or
 * another error (j does not answer, ...). */
static int probe(const struct th_cluster *c, unsigned j, unsigned k)
{
	struct capdsm *cl = NULL;
	char ref[CAPDSM_REF_MAX];
	uint32_t slot;
	int rc;

	rc = capdsm_connect(c->node[j].sock, NULL, &cl);
	if (rc)
		return rc;
	snprintf(ref, sizeof ref,
	         "cdsm1:%u:0000000000000001:0000000000000001:"
	         "00000000000000000000000000000000", k);
	rc = capdsm_import(cl, ref, &slot);
	if (rc == 0) /* cannot be: the secret is made up */
		rc = -EPROTO;
	else if (rc != -EHOSTDOWN && rc != -ENOTCONN && rc != -ECONNRESET &&
	         rc != -EPROTO)
		rc = 0; /* node k answered */
	capdsm_close(cl);
	return rc;
}

int th_cluster_reachable(const struct th_cluster *c, unsigned j, unsigned k)
{
	if (j >= c->n || k >= c->n)
		return -EINVAL;
	return probe(c, j, k);
}

int th_cluster_wait_peers(const struct th_cluster *c, uint32_t mask,
                          int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	for (unsigned j = 0; j < c->n; j++)
		for (unsigned k = 0; k < c->n; k++) {
			int rc;

			if (j == k || !(mask & (1u << j)) || !(mask & (1u << k)))
				continue;
			while ((rc = probe(c, j, k)) != 0) {
				if (now_ms() > end) {
					fprintf(stderr, "testlib: node %u cannot reach node %u "
					        "after %d ms: %s\n", j, k, timeout_ms,
					        strerror(-rc));
					return -ETIMEDOUT;
				}
				sleep_ms(10);
			}
		}
	return 0;
}

int th_cluster_wait_down(const struct th_cluster *c, unsigned j, unsigned k,
                         int timeout_ms)
{
	for (int64_t end = now_ms() + timeout_ms;;) {
		int rc = probe(c, j, k);

		if (rc == -EHOSTDOWN)
			return 0;
		if (now_ms() > end)
			return -ETIMEDOUT;
		sleep_ms(10);
	}
}

/* ---- the cluster ---- */

static uint32_t held_back(const struct th_cluster_opts *o)
{
	return o->no_key | o->mismatched_key;
}

static void kill_all(struct th_cluster *c)
{
	for (unsigned k = 0; k < c->n; k++)
		if (c->node[k].pid > 0) {
			kill(c->node[k].pid, SIGKILL);
			waitpid(c->node[k].pid, &c->status[k], 0);
			c->node[k].pid = 0;
		}
}

int th_cluster_start(struct th_cluster *c, unsigned nodes,
                     const struct th_cluster_opts *o)
{
	const struct th_cluster_opts none = { 0 };
	int rc;

	memset(c, 0, sizeof *c);
	c->janitor_fd = -1;
	if (nodes < 2 || nodes > TH_CLUSTER_MAX) {
		fprintf(stderr, "testlib: a cluster has 2..%d nodes\n",
		        TH_CLUSTER_MAX);
		return -EINVAL;
	}
	c->n = nodes;
	c->opts = o ? *o : none;
	snprintf(c->dir, sizeof c->dir, "/tmp/capdsm-mn-XXXXXX");
	if (!mkdtemp(c->dir)) {
		rc = -errno;
		fprintf(stderr, "testlib: mkdtemp: %s\n", strerror(errno));
		c->dir[0] = '\0';
		return rc;
	}
	rc = janitor_start(c);
	if (rc) {
		rm_tree(c->dir);
		c->dir[0] = '\0';
		return rc;
	}
	for (unsigned k = 0; k < nodes; k++) {
		struct th_daemon *d = &c->node[k];

		c->status[k] = -1;
		if (snprintf(d->dir, sizeof d->dir, "%s/node%u", c->dir, k) >=
		    (int)sizeof d->dir) {
			rc = -ENAMETOOLONG;
			goto fail;
		}
		snprintf(d->sock, sizeof d->sock, "%s/capdsm.sock", d->dir);
		snprintf(d->config, sizeof d->config, "%s/capdsmd.ini", d->dir);
		snprintf(d->log, sizeof d->log, "%s/capdsmd.log", d->dir);
		snprintf(c->key_file[k], sizeof c->key_file[k], "%s/node.key",
		         d->dir);
		if (mkdir(d->dir, 0700) != 0) {
			rc = -errno;
			goto fail;
		}
		rc = tp_keypair(c->pub[k], c->sec[k]);
		if (rc) {
			fprintf(stderr, "testlib: tp_keypair: %s\n", strerror(-rc));
			goto fail;
		}
		rc = write_key(c, k);
		if (rc)
			goto fail;
	}
	for (int round = 1;; round++) {
		bool port_taken = false;

		rc = find_ports(c->port, nodes);
		for (unsigned k = 0; !rc && k < nodes; k++)
			rc = write_config(c, k);
		if (rc) {
			fprintf(stderr, "testlib: cluster configs: %s\n", strerror(-rc));
			goto fail;
		}
		for (unsigned k = 0; k < nodes; k++) {
			if (held_back(&c->opts) & (1u << k))
				continue;
			rc = th_cluster_start_node(c, k);
			if (rc == -ECHILD && (th_log_contains(&c->node[k], "in use") ||
			                      th_log_contains(&c->node[k], "EADDRINUSE")))
				port_taken = true;
			if (rc)
				break;
		}
		if (!rc)
			break;
		kill_all(c);
		if (!port_taken || round == START_ROUNDS) {
			fprintf(stderr, "testlib: cluster of %u did not start: %s\n",
			        nodes, strerror(-rc));
			th_cluster_dump_logs(c);
			goto fail;
		}
		for (unsigned k = 0; k < nodes; k++)
			unlink(c->node[k].log);
	}
	rc = th_cluster_wait_peers(c, ~(held_back(&c->opts) | c->opts.foreign_key),
	                           PEERS_TIMEOUT_MS);
	if (rc) {
		th_cluster_dump_logs(c);
		goto fail;
	}
	return 0;
fail:
	kill_all(c);
	rm_tree(c->dir);
	c->dir[0] = '\0';
	janitor_stop(c);
	return rc ? rc : -EIO;
}

int th_cluster_kill(struct th_cluster *c, unsigned k)
{
	if (k >= c->n || c->node[k].pid <= 0)
		return -EINVAL;
	kill(c->node[k].pid, SIGKILL);
	waitpid(c->node[k].pid, &c->status[k], 0);
	c->node[k].pid = 0;
	c->killed |= 1u << k;
	return 0;
}

bool th_cluster_alive(struct th_cluster *c, unsigned k)
{
	int st;

	if (k >= c->n || c->node[k].pid <= 0)
		return false;
	if (waitpid(c->node[k].pid, &st, WNOHANG) == c->node[k].pid) {
		c->node[k].pid = 0;
		c->status[k] = st;
		return false;
	}
	return true;
}

int th_cluster_stop(struct th_cluster *c)
{
	int rc = 0;

	if (!c->dir[0])
		return 0;
	for (unsigned k = 0; k < c->n; k++)
		if (c->node[k].pid > 0)
			kill(c->node[k].pid, SIGTERM);
	for (unsigned k = 0; k < c->n; k++) {
		struct th_daemon *d = &c->node[k];
		int st = 0;
		pid_t w = 0;

		if (d->pid <= 0) {
			/* Not running: fine if the test killed it or held it back,
			 * or it exited as expected at start. */
			continue;
		}
		for (int64_t end = now_ms() + STOP_TIMEOUT_MS; now_ms() < end;) {
			w = waitpid(d->pid, &st, WNOHANG);
			if (w == d->pid)
				break;
			sleep_ms(2);
		}
		if (w != d->pid) {
			fprintf(stderr, "testlib: node %u ignored SIGTERM for %d ms\n", k,
			        STOP_TIMEOUT_MS);
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &st, 0);
			rc = -1;
			print_log_tail(d, k);
		} else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			if (WIFSIGNALED(st))
				fprintf(stderr, "testlib: node %u killed by signal %d at "
				        "stop\n", k, WTERMSIG(st));
			else
				fprintf(stderr, "testlib: node %u exited with status %d at "
				        "stop\n", k, WEXITSTATUS(st));
			rc = -1;
			print_log_tail(d, k);
		} else if (access(d->sock, F_OK) == 0) {
			fprintf(stderr, "testlib: node %u left its socket %s\n", k,
			        d->sock);
			rc = -1;
		}
		c->status[k] = st;
		d->pid = 0;
	}
	rm_tree(c->dir);
	c->dir[0] = '\0';
	janitor_stop(c);
	return rc;
}
