/* cluster.c — a local cluster: N capdsmd daemons under one directory.
 *
 * DIR/node<K>/ holds node K's capdsmd.conf, capdsmd.log, pid and capdsm.sock.
 * A pid file names a running node only while that process is not a zombie
 * and has the node's config file on its command line, so a pid the kernel
 * has since given to another program is never signalled. `cluster up`
 * checks everything it can before it starts a daemon, and stops the daemons
 * it started when any of them fails to answer.
 *
 * With more than one node the configs make a cluster: each node has its
 * own CURVE key pair (the secret in DIR/node<K>/node.key, mode 0600) and
 * every config lists every node as [peer.K] with its address and public
 * key. Addresses are 127.0.0.1 with ports found free at `up` time, or with
 * --netns a namespace per node (netns.c), whose plumbing `down` removes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tool.h"

#define CONF_NAME "capdsmd.conf"
#define LOG_NAME "capdsmd.log"
#define PID_NAME "pid"
#define SOCK_NAME "capdsm.sock"
#define KEY_NAME "node.key"
#define NETNS_BASE_PORT 7400 /* each namespace has every port free */
#define HEARTBEAT_MS 100
#define DEAD_AFTER_MS 1000
#define EXTRA_MAX (1u << 20) /* bytes of --config-extra */
#define CONF_MAX (EXTRA_MAX + (64u << 10)) /* template and extra */
#define UP_TIMEOUT_MS 15000
#define DOWN_TIMEOUT_MS 10000
#define KILL_TIMEOUT_MS 2000
#define POLL_MS 50

/* The nodes found in a cluster directory, in increasing order. */
struct cluster {
	char dir[PATH_MAX]; /* absolute */
	uint32_t n;
	uint32_t k[TOOL_MAX_NODES];
	pid_t pid[TOOL_MAX_NODES]; /* 0: no pid file, or not running */
};

/* ---- time ---- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for MONOTONIC */
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
		               .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- files ---- */

/* Creates dir and its missing parents. Returns 0 or -errno. */
static int mkdir_p(const char *dir)
{
	char path[PATH_MAX];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof(path))
		return len ? -ENAMETOOLONG : -EINVAL;
	memcpy(path, dir, len + 1);
	for (char *p = path + 1; ; p++) {
		bool end = *p == '\0';

		if (*p != '/' && !end)
			continue;
		*p = '\0';
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			return -errno;
		if (end)
			return 0;
		*p = '/';
	}
}

/* Writes len bytes to path through a temporary file and a rename, so a
 * reader never sees half of it. Returns 0 or -errno. */
static int write_file_atomic(const char *path, const void *buf, size_t len)
{
	char tmp[PATH_MAX];
	int fd, rc;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	rc = tool_write_full(fd, buf, len);
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc)
		unlink(tmp);
	return rc;
}

/* Reads a whole small file into a buffer the caller frees. 0 or -errno. */
static int read_small_file(const char *path, size_t max, char **out,
                           size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *buf;
	ssize_t n;

	if (fd < 0)
		return -errno;
	buf = malloc(max + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	n = tool_read_full(fd, buf, max + 1);
	close(fd);
	if (n < 0 || (size_t)n > max) {
		free(buf);
		return n < 0 ? (int)n : -EFBIG;
	}
	*out = buf;
	*len = (size_t)n;
	return 0;
}

/* Removes path; a missing file is not an error. Returns 0 or -errno. */
static int unlink_quiet(const char *path)
{
	return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

/* ---- pid files and processes ---- */

/* Reads node k's pid file. 0, -ENOENT (none) or -EINVAL (garbage). */
static int read_pid(const char *dir, uint32_t k, pid_t *pid)
{
	char path[PATH_MAX], buf[32];
	ssize_t n;
	long v;
	char *end;
	int fd, rc = tool_node_path(path, sizeof(path), dir, k, PID_NAME);

	if (rc)
		return rc;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = tool_read_full(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return (int)n;
	buf[n] = '\0';
	errno = 0;
	v = strtol(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n') || v <= 1 ||
	    v > INT_MAX)
		return -EINVAL;
	*pid = (pid_t)v;
	return 0;
}

static int write_pid(const char *dir, uint32_t k, pid_t pid)
{
	char path[PATH_MAX], buf[32];
	int len, rc = tool_node_path(path, sizeof(path), dir, k, PID_NAME);

	if (rc)
		return rc;
	len = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	return write_file_atomic(path, buf, (size_t)len);
}

static int remove_pid(const char *dir, uint32_t k)
{
	char path[PATH_MAX];
	int rc = tool_node_path(path, sizeof(path), dir, k, PID_NAME);

	return rc ? rc : unlink_quiet(path);
}

/* Whether the NUL-separated argument list in buf[0..len) holds arg. */
static bool has_arg(const char *buf, size_t len, const char *arg)
{
	for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
		if (strcmp(buf + i, arg) == 0)
			return true;
	return false;
}

/* Reads /proc/<pid>/<leaf> into buf (NUL-terminated). Returns the byte
 * count or -errno. */
static ssize_t read_proc(pid_t pid, const char *leaf, char *buf, size_t len)
{
	char path[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, leaf);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = tool_read_full(fd, buf, len - 1);
	close(fd);
	if (n >= 0)
		buf[n] = '\0';
	return n;
}

/* Whether pid is node k's daemon and still running (see the file head).
 * Without /proc, any live process with that pid counts. */
static bool node_alive(const char *dir, uint32_t k, pid_t pid)
{
	char conf[PATH_MAX], buf[3 * PATH_MAX];
	const char *state;
	ssize_t n;

	if (pid <= 1 || tool_node_path(conf, sizeof(conf), dir, k, CONF_NAME))
		return false;
	n = read_proc(pid, "stat", buf, sizeof(buf));
	if (n == -ENOENT || n == -ESRCH)
		return false;
	if (n < 0) /* no /proc */
		return kill(pid, 0) == 0 || errno == EPERM;
	state = strrchr(buf, ')'); /* the command name may hold anything */
	if (state && state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X'))
		return false;
	n = read_proc(pid, "cmdline", buf, sizeof(buf));
	return n > 0 && has_arg(buf, (size_t)n, conf);
}

/* ---- the cluster directory ---- */

/* Whether name is "node<K>" with K canonical decimal and in range. */
static bool parse_node_name(const char *name, uint32_t *k)
{
	unsigned long v;
	char *end;

	if (strncmp(name, "node", 4) != 0 || name[4] < '0' || name[4] > '9' ||
	    (name[4] == '0' && name[5] != '\0'))
		return false;
	v = strtoul(name + 4, &end, 10);
	if (*end || v >= TOOL_MAX_NODES)
		return false;
	*k = (uint32_t)v;
	return true;
}

/* Fills cl with the nodes of cl->dir whose directory holds `leaf` (NULL:
 * every node directory), and their running pids. Returns 0 or -errno (-ENOENT: no such directory). */
static int scan_cluster(struct cluster *cl, const char *leaf)
{
	bool present[TOOL_MAX_NODES] = { false };
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d = opendir(cl->dir);
	uint32_t k;

	if (!d)
		return -errno;
	errno = 0;
	while ((de = readdir(d)) != NULL) {
		if (!parse_node_name(de->d_name, &k) ||
		    tool_node_path(path, sizeof(path), cl->dir, k, leaf) ||
		    access(path, F_OK) < 0)
			continue;
		present[k] = true;
	}
	closedir(d);
	cl->n = 0;
	for (k = 0; k < TOOL_MAX_NODES; k++) {
		pid_t pid = 0;

		if (!present[k])
			continue;
		if (read_pid(cl->dir, k, &pid) || !node_alive(cl->dir, k, pid))
			pid = 0;
		cl->k[cl->n] = k;
		cl->pid[cl->n++] = pid;
	}
	return 0;
}

/* Resolves --dir to an absolute path in cl->dir; creates it if `create`. */
static int cluster_dir(const struct tool_args *a, struct cluster *cl,
                       bool create)
{
	int rc = create ? mkdir_p(a->dir) : 0;

	if (rc)
		return tool_fail_rc(a, NULL, rc, "create %s", a->dir);
	if (!realpath(a->dir, cl->dir))
		return tool_fail_rc(a, NULL, -errno, "%s", a->dir);
	return TOOL_EXIT_OK;
}

/* The last line of node k's log, or "(empty log)", in buf. */
static void last_log_line(const char *dir, uint32_t k, char *buf, size_t len)
{
	char path[PATH_MAX], tail[4096];
	ssize_t n = -ENOENT;
	const char *line;
	char *end;
	off_t size;
	int fd = -1;

	if (tool_node_path(path, sizeof(path), dir, k, LOG_NAME) == 0)
		fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		size = lseek(fd, 0, SEEK_END);
		if (size >= 0 && lseek(fd, size > (off_t)sizeof(tail) - 1
		                                   ? size - (off_t)sizeof(tail) + 1
		                                   : 0, SEEK_SET) >= 0)
			n = tool_read_full(fd, tail, sizeof(tail) - 1);
		close(fd);
	}
	if (n < 0)
		n = 0;
	tail[n] = '\0';
	end = tail + n;
	while (end > tail && (end[-1] == '\n' || end[-1] == '\r'))
		*--end = '\0';
	line = strrchr(tail, '\n');
	line = line ? line + 1 : tail;
	if (!*line)
		line = "(empty log)";
	n = (ssize_t)strnlen(line, len - 1); /* a long line is cut, not lost */
	memcpy(buf, line, (size_t)n);
	buf[n] = '\0';
}

/* ---- finding and configuring the daemon ---- */

/* Whether path is an executable regular file. */
static bool is_exe(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
	       access(path, X_OK) == 0;
}

/* Whether dir/name is an executable file; writes the path into buf. */
static bool try_exe(char *buf, size_t len, const char *dir, const char *name)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);

	return n > 0 && (size_t)n < len && is_exe(buf);
}

/* Searches PATH for name. */
static bool search_path(char *buf, size_t len, const char *name)
{
	const char *path = getenv("PATH");
	char dir[PATH_MAX];

	while (path && *path) {
		size_t n = strcspn(path, ":");

		if (n > 0 && n < sizeof(dir)) {
			memcpy(dir, path, n);
			dir[n] = '\0';
			if (try_exe(buf, len, dir, name))
				return true;
		}
		path += n + (path[n] == ':');
	}
	return false;
}

/* The capdsmd to run: $CAPDSMD, else capdsmd beside this program (or in
 * ../node, where the build tree puts it), else in PATH. 0 or -ENOENT. */
static int find_daemon(char *buf, size_t len)
{
	const char *env = getenv("CAPDSMD");
	char self[PATH_MAX];
	ssize_t n;

	if (env && env[0]) {
		if (!strchr(env, '/'))
			return search_path(buf, len, env) ? 0 : -ENOENT;
		if (strlen(env) >= len || !is_exe(env))
			return -ENOENT;
		strcpy(buf, env); /* length checked */
		return 0;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n > 0) {
		self[n] = '\0';
		*strrchr(self, '/') = '\0'; /* an absolute path has one */
		if (try_exe(buf, len, self, "capdsmd") ||
		    try_exe(buf, len, self, "../node/capdsmd"))
			return 0;
	}
	return search_path(buf, len, "capdsmd") ? 0 : -ENOENT;
}

/* Pool sizes written into every node's config. */
struct pools {
	uint32_t frames, objects, clients;
};

/* What `cluster up` writes into the configs, settled before the configs
 * are written. */
struct up_plan {
	uint32_t nodes;
	struct pools pools;
	bool plaintext, netns;
	const char *transport;                /* "zmq", "tcp" or "rdma" */
	struct tool_netns ns;                 /* with netns */
	char host[TOOL_MAX_NODES][16];        /* node K's IPv4 address */
	uint16_t port[TOOL_MAX_NODES];        /* and its TCP port */
	char pub[TOOL_MAX_NODES][TOOL_KEY_LEN + 1]; /* its public key */
};

/* Writes the [cluster] section and one [peer.J] per node (nodes > 1). */
static void write_cluster(FILE *f, const char *dir, uint32_t k,
                          const struct up_plan *p)
{
	char key[PATH_MAX];

	if (tool_node_path(key, sizeof(key), dir, k, KEY_NAME))
		key[0] = '\0'; /* cannot happen: the socket path is longer */
	fprintf(f,
	        "[cluster]\nnodes = %" PRIu32 "\ntransport = %s\n"
	        "secret_key_file = %s\nplaintext = %s\n"
	        "heartbeat_ms = %d\ndead_after_ms = %d\n",
	        p->nodes, p->transport, key, p->plaintext ? "true" : "false", HEARTBEAT_MS,
	        DEAD_AFTER_MS);
	for (uint32_t j = 0; j < p->nodes; j++)
		fprintf(f,
		        "[peer.%" PRIu32 "]\naddress = tcp://%s:%u\n"
		        "public_key = %s\n",
		        j, p->host[j], (unsigned)p->port[j], p->pub[j]);
}

/* Writes node k's capdsmd.conf: the fixed template, the cluster (if more
 * than one node), then --config-extra, whose settings win. */
static int write_config(const char *dir, uint32_t k, const struct up_plan *pl,
                        const char *extra, size_t extra_len)
{
	char path[PATH_MAX], node_dir[PATH_MAX], sock[PATH_MAX];
	const struct pools *p = &pl->pools;
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	int rc;

	if (tool_node_path(path, sizeof(path), dir, k, CONF_NAME) ||
	    tool_node_path(node_dir, sizeof(node_dir), dir, k, NULL) ||
	    tool_node_path(sock, sizeof(sock), dir, k, SOCK_NAME))
		return -ENAMETOOLONG;
	f = open_memstream(&text, &len);
	if (!f)
		return -errno;
	fprintf(f,
	        "[node]\nid = %" PRIu32 "\nsocket = %s\ndir = %s\n"
	        "log_level = info\n"
	        "[pools]\nobjects = %" PRIu32 "\ncaps = 16384\n"
	        "clients = %" PRIu32 "\nslots_per_client = 1024\n"
	        "mappings = 1024\nlocks = 4096\nsturdy = 4096\n"
	        "frames = %" PRIu32 "\n"
	        "[bank]\nlimit_bytes = 0\nlimit_objects = 0\n",
	        k, sock, node_dir, p->objects, p->clients, p->frames);
	if (pl->nodes > 1)
		write_cluster(f, dir, k, pl);
	if (extra_len) {
		fwrite(extra, 1, extra_len, f);
		if (extra[extra_len - 1] != '\n')
			fputc('\n', f);
	}
	if (fclose(f) != 0) {
		free(text);
		return -ENOMEM;
	}
	rc = write_file_atomic(path, text, len);
	free(text);
	return rc;
}

/* ---- reading a config back ---- */

/* Strips blanks at both ends of s in place; returns the new start. */
static char *trim(char *s)
{
	char *end = s + strlen(s);

	while (*s == ' ' || *s == '\t')
		s++;
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' ||
	                   end[-1] == '\r'))
		*--end = '\0';
	return s;
}

/* The last value of `key` in `section` of the ini text (as inih reads it:
 * later settings win, ';' and '#' start comment lines, " ;" an inline
 * comment), copied into out. Returns whether it was found. */
static bool ini_get(const char *text, const char *section, const char *key,
                    char *out, size_t len)
{
	char line[1024], cur[128] = "";
	bool found = false;

	for (const char *p = text; *p;) {
		size_t n = strcspn(p, "\n");
		char *l, *eq, *c;

		if (n < sizeof(line)) {
			memcpy(line, p, n);
			line[n] = '\0';
		} else {
			line[0] = '\0'; /* longer than any line we wrote */
		}
		p += n + (p[n] == '\n');
		if ((c = strstr(line, " ;")) != NULL)
			*c = '\0';
		l = trim(line);
		if (*l == ';' || *l == '#' || !*l)
			continue;
		if (*l == '[') {
			c = strchr(l, ']');
			if (c && (size_t)(c - l - 1) < sizeof(cur)) {
				memcpy(cur, l + 1, (size_t)(c - l - 1));
				cur[c - l - 1] = '\0';
			}
			continue;
		}
		eq = l + strcspn(l, "=:");
		if (!*eq || strcmp(cur, section) != 0)
			continue;
		*eq = '\0';
		if (strcmp(trim(l), key) != 0)
			continue;
		snprintf(out, len, "%s", trim(eq + 1));
		found = true;
	}
	return found;
}

/* Node k's transport address from its config ([peer.<id>] address, id
 * being its [node] id), or "-" for a lone node or an unreadable config. */
static void node_address(const char *dir, uint32_t k, char *buf, size_t len)
{
	char path[PATH_MAX], id[16], nodes[16], section[32];
	char *text = NULL;
	size_t n = 0;

	snprintf(buf, len, "-");
	if (tool_node_path(path, sizeof(path), dir, k, CONF_NAME) ||
	    read_small_file(path, CONF_MAX, &text, &n))
		return;
	text[n] = '\0';
	if (ini_get(text, "cluster", "nodes", nodes, sizeof(nodes)) &&
	    strcmp(nodes, "1") != 0 &&
	    ini_get(text, "node", "id", id, sizeof(id))) {
		snprintf(section, sizeof(section), "peer.%s", id);
		ini_get(text, section, "address", buf, len);
	}
	free(text);
}

/* ---- starting and stopping ---- */

/* How to run a node's daemon: directly, or in its network namespace
 * through `ip netns exec`, which execs the daemon in the same process, so
 * the pid recorded is the daemon's. */
struct launch {
	const char *daemon;
	const char *ip;    /* NULL: no namespace */
	const char *netns; /* the node's namespace, with ip */
};

/* In the forked child: becomes a session leader with stdin from /dev/null
 * and stdout+stderr into the log, and runs the daemon. Never returns. */
static void __attribute__((noreturn))
exec_daemon(const struct launch *l, const char *conf, int null_fd, int log_fd)
{
	char *direct[] = { (char *)l->daemon, (char *)"--config", (char *)conf,
		           NULL };
	char *in_ns[] = { (char *)l->ip, (char *)"netns", (char *)"exec",
		          (char *)l->netns, (char *)l->daemon,
		          (char *)"--config", (char *)conf, NULL };
	char **argv = l->ip ? in_ns : direct;

	if (setsid() < 0 || dup2(null_fd, STDIN_FILENO) < 0 ||
	    dup2(log_fd, STDOUT_FILENO) < 0 || dup2(log_fd, STDERR_FILENO) < 0)
		_exit(126);
	execv(argv[0], argv);
	dprintf(STDERR_FILENO, "capdsm: cluster up: exec %s: %s\n", argv[0],
	        strerror(errno));
	_exit(127);
}

/* Starts node k's daemon and records its pid. Returns 0 or -errno. */
static int start_node(const char *dir, uint32_t k, const struct launch *l,
                      pid_t *pid)
{
	char conf[PATH_MAX], log[PATH_MAX];
	int null_fd, log_fd, rc = 0;

	if (tool_node_path(conf, sizeof(conf), dir, k, CONF_NAME) ||
	    tool_node_path(log, sizeof(log), dir, k, LOG_NAME))
		return -ENAMETOOLONG;
	null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (null_fd < 0)
		return -errno;
	log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (log_fd < 0) {
		rc = -errno;
		goto out_null;
	}
	fflush(NULL); /* the child must not write our buffers twice */
	*pid = fork();
	if (*pid < 0)
		rc = -errno;
	else if (*pid == 0)
		exec_daemon(l, conf, null_fd, log_fd);
	else
		rc = write_pid(dir, k, *pid);
	close(log_fd);
out_null:
	close(null_fd);
	return rc;
}

/* Whether our child pid is still running (a child that exited is reaped,
 * its wait status in *status). */
static bool child_running(pid_t pid, int *status)
{
	pid_t r;

	do
		r = waitpid(pid, status, WNOHANG);
	while (r < 0 && errno == EINTR);
	return r == 0;
}

/* Stops the daemons this process started (pid > 0), reaps them and removes
 * their pid files: the undo of a failed `cluster up`. */
static void stop_children(const struct cluster *cl)
{
	int64_t deadline = now_ms() + DOWN_TIMEOUT_MS;
	bool any = true;
	int status;

	for (uint32_t i = 0; i < cl->n; i++)
		if (cl->pid[i] > 0)
			kill(cl->pid[i], SIGTERM);
	while (any && now_ms() < deadline) {
		any = false;
		for (uint32_t i = 0; i < cl->n; i++)
			any |= cl->pid[i] > 0 && child_running(cl->pid[i], &status);
		if (any)
			sleep_ms(POLL_MS);
	}
	for (uint32_t i = 0; i < cl->n; i++) {
		if (cl->pid[i] <= 0)
			continue;
		if (child_running(cl->pid[i], &status)) {
			kill(cl->pid[i], SIGKILL);
			while (waitpid(cl->pid[i], &status, 0) < 0 && errno == EINTR)
				;
		}
		remove_pid(cl->dir, cl->k[i]);
	}
}

/* Describes how a child ended, from its wait status. */
static void describe_exit(int status, char *buf, size_t len)
{
	if (WIFSIGNALED(status))
		snprintf(buf, len, "was killed by signal %d", WTERMSIG(status));
	else
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
}

struct peer_count {
	uint64_t up;
	bool seen;
};

static void count_peers(const char *name, uint64_t value, void *arg)
{
	struct peer_count *pc = arg;

	if (strcmp(name, "peers_up") == 0) {
		pc->up = value;
		pc->seen = true;
	}
}

/* Waits until node i of cl answers on its socket (and, in a cluster,
 * reaches all its peers), it exits, or the deadline passes. Returns an
 * exit status. */
static int wait_node(const struct tool_args *a, const struct cluster *cl,
                     uint32_t i, int64_t deadline)
{
	char sock[PATH_MAX], line[512], how[64];
	uint32_t k = cl->k[i];
	struct capdsm *c = NULL;
	int status = 0, rc;

	if (tool_node_path(sock, sizeof(sock), cl->dir, k, SOCK_NAME))
		return tool_fail_rc(a, NULL, -ENAMETOOLONG, "node %" PRIu32, k);
	for (;;) {
		if (!child_running(cl->pid[i], &status)) {
			describe_exit(status, how, sizeof(how));
			last_log_line(cl->dir, k, line, sizeof(line));
			return tool_fail(a, "node %" PRIu32 " %s: %s", k, how,
			                 line);
		}
		rc = capdsm_connect(sock, NULL, &c);
		if (rc == 0) {
			/* In a cluster, "answers" also means it reaches every
			 * peer: the cluster is up once it can share objects. */
			struct peer_count pc = { 0, false };
			rc = capdsm_stats(c, count_peers, &pc);
			capdsm_close(c);
			if (rc == 0 && (!pc.seen || pc.up + 1 >= cl->n))
				return TOOL_EXIT_OK;
			rc = rc ? rc : -ENOTCONN;
		}
		if (now_ms() >= deadline) {
			last_log_line(cl->dir, k, line, sizeof(line));
			return tool_fail(a, "node %" PRIu32 " did not answer on "
			                 "%s within %d s (%s); its log ends: %s",
			                 k, sock, UP_TIMEOUT_MS / 1000,
			                 strerror(-rc), line);
		}
		sleep_ms(POLL_MS);
	}
}

/* ---- cluster up ---- */

/* Whether node k's socket path under dir fits a sockaddr_un. */
static bool socket_fits(const char *dir, uint32_t k)
{
	char sock[PATH_MAX];

	return tool_node_path(sock, sizeof(sock), dir, k, SOCK_NAME) == 0 &&
	       strlen(sock) < sizeof(((struct sockaddr_un *)0)->sun_path);
}

/* Whether the sockets fit under --dir, made absolute by hand as it may not
 * exist yet (up_check_dir checks again once symbolic links are resolved). */
static bool sockets_fit(const struct tool_args *a)
{
	char abs[PATH_MAX], cwd[PATH_MAX];

	if (a->dir[0] == '/')
		return socket_fits(a->dir, a->nodes - 1);
	if (!getcwd(cwd, sizeof(cwd)) ||
	    snprintf(abs, sizeof(abs), "%s/%s", cwd, a->dir) >= (int)sizeof(abs))
		return false;
	return socket_fits(abs, a->nodes - 1);
}

/* Pool sizes for the configs: the defaults, or what the options say. */
static struct pools up_pools(const struct tool_args *a)
{
	return (struct pools){
		.frames = (a->seen & TOOL_O_FRAMES) ? a->frames : 65536,
		.objects = (a->seen & TOOL_O_OBJECTS) ? a->objects : 1024,
		.clients = (a->seen & TOOL_O_CLIENTS) ? a->clients : 64,
	};
}

/* Whether the kernel lists an RDMA device (the verbs devices of
 * ibv_get_device_list are the entries of this class). */
static bool rdma_device_present(void)
{
	DIR *d = opendir("/sys/class/infiniband");
	struct dirent *e;
	bool any = false;

	if (!d)
		return false;
	while (!any && (e = readdir(d)))
		any = e->d_name[0] != '.';
	closedir(d);
	return any;
}

/* The checks of the cluster options; fills the plan's settings. */
static int up_check_cluster(const struct tool_args *a, struct up_plan *pl)
{
	int rc;

	if (a->transport && strcmp(a->transport, "zmq") != 0 &&
	    strcmp(a->transport, "tcp") != 0 && strcmp(a->transport, "rdma") != 0)
		return tool_fail(a, "--transport %s: zmq, tcp or rdma",
		                 a->transport);
	if (a->transport && strcmp(a->transport, "rdma") == 0 &&
	    !rdma_device_present())
		return tool_fail(a, "--transport rdma: this machine has no RDMA "
		                 "device (/sys/class/infiniband is empty); load "
		                 "rdma_rxe and add one (rdma link add rxe0 type "
		                 "rxe netdev IFACE), or use --transport tcp");
	if (a->nodes == 1 && (a->seen & (TOOL_O_PLAINTEXT | TOOL_O_BASE_PORT)))
		return tool_fail(a, "--plaintext and --base-port need --nodes "
		                 "2 or more (a lone node has no peers)");
	if ((a->seen & TOOL_O_BASE_PORT) &&
	    (a->base_port < 1 || a->base_port > 65536 - a->nodes))
		return tool_fail(a, "--base-port %" PRIu32 ": ports %" PRIu32
		                 " to %" PRIu32 " must lie within 1 to 65535",
		                 a->base_port, a->base_port,
		                 a->base_port + a->nodes - 1);
	if (a->netns && a->nodes > TOOL_NETNS_MAX_NODES)
		return tool_fail(a, "--netns takes at most %u nodes (one /24)",
		                 TOOL_NETNS_MAX_NODES);
	*pl = (struct up_plan){
		.nodes = a->nodes,
		.pools = up_pools(a),
		.plaintext = a->plaintext,
		.netns = a->netns,
		.transport = a->transport ? a->transport : "zmq",
	};
	if (!a->netns)
		return TOOL_EXIT_OK;
	rc = tool_netns_init(&pl->ns, "/"); /* names come once DIR is known */
	if (rc == -EPERM)
		return tool_fail(a, "--netns needs root (it creates network "
		                 "namespaces)");
	if (rc)
		return tool_fail(a, "--netns needs the ip command (iproute2), "
		                 "found neither in PATH nor in /usr/sbin, /sbin");
	return TOOL_EXIT_OK;
}

/* The checks of `cluster up` that need no change on disk. */
static int up_check(const struct tool_args *a, struct up_plan *pl,
                    char *daemon, size_t len, char **extra,
                    size_t *extra_len)
{
	int rc;

	if (a->nodes < 1 || a->nodes > TOOL_MAX_NODES)
		return tool_fail(a, "--nodes must be 1 to %u", TOOL_MAX_NODES);
	if (((a->seen & TOOL_O_FRAMES) && a->frames == 0) ||
	    ((a->seen & TOOL_O_OBJECTS) && a->objects == 0) ||
	    ((a->seen & TOOL_O_CLIENTS) && a->clients == 0))
		return tool_fail(a, "--frames, --objects and --clients must "
		                 "be at least 1");
	rc = up_check_cluster(a, pl);
	if (rc)
		return rc;
	if (!sockets_fit(a))
		return tool_fail(a, "socket paths under %s are too long for a "
		                 "Unix socket; use a shorter --dir", a->dir);
	rc = find_daemon(daemon, len);
	if (rc)
		return tool_fail(a, "capdsmd not found (%s); set CAPDSMD",
		                 getenv("CAPDSMD") && getenv("CAPDSMD")[0]
		                         ? "CAPDSMD is not an executable"
		                         : "not beside capdsm nor in PATH");
	*extra = NULL;
	*extra_len = 0;
	if (a->config_extra) {
		rc = read_small_file(a->config_extra, EXTRA_MAX, extra,
		                     extra_len);
		if (rc)
			return tool_fail_rc(a, NULL, rc, "--config-extra %s",
			                    a->config_extra);
	}
	return TOOL_EXIT_OK;
}

/* Refuses a directory where a node still runs, and checks that every
 * socket path fits a sockaddr_un. */
static int up_check_dir(const struct tool_args *a, struct cluster *cl)
{
	int rc = scan_cluster(cl, NULL);

	if (rc)
		return tool_fail_rc(a, NULL, rc, "%s", cl->dir);
	for (uint32_t i = 0; i < cl->n; i++)
		if (cl->pid[i] > 0)
			return tool_fail(a, "a cluster is already running in %s "
			                 "(node %" PRIu32 ", pid %d); stop it with "
			                 "'capdsm cluster down --dir %s'",
			                 cl->dir, cl->k[i], (int)cl->pid[i],
			                 a->dir);
	if (!socket_fits(cl->dir, a->nodes - 1))
		return tool_fail(a, "socket paths under %s are too long for a "
		                 "Unix socket; use a shorter --dir", cl->dir);
	return TOOL_EXIT_OK;
}

/* Finds n distinct TCP ports free on 127.0.0.1 now, by binding n sockets
 * to port 0 at once and releasing them; with base, checks that base to
 * base+n-1 are free instead (*busy: the first that is not). The daemons
 * bind them a moment later, so a port taken in between makes that daemon
 * fail with a clear line in its log. Returns 0 or -errno. */
static int loopback_ports(uint32_t n, uint32_t base, uint16_t *port,
                          uint32_t *busy)
{
	static int fd[TOOL_MAX_NODES];
	uint32_t opened = 0;
	int rc = 0, one = 1;

	for (uint32_t k = 0; k < n; k++, opened++) {
		struct sockaddr_in sa = {
			.sin_family = AF_INET,
			.sin_port = htons((uint16_t)(base ? base + k : 0)),
			.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
		};
		socklen_t salen = sizeof(sa);

		fd[k] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd[k] < 0) {
			rc = -errno;
			break;
		}
		/* As ZeroMQ binds: a port in TIME_WAIT is free to it. */
		if (base && setsockopt(fd[k], SOL_SOCKET, SO_REUSEADDR, &one,
		                       sizeof(one)) < 0)
			rc = -errno;
		if (rc == 0 && (bind(fd[k], (struct sockaddr *)&sa, salen) < 0 ||
		                getsockname(fd[k], (struct sockaddr *)&sa,
		                            &salen) < 0)) {
			rc = -errno;
			*busy = base + k;
		}
		if (rc) {
			opened++;
			break;
		}
		port[k] = ntohs(sa.sin_port);
	}
	for (uint32_t k = 0; k < opened; k++)
		close(fd[k]);
	return rc;
}

/* Each node's address and port: the namespace addresses with --netns,
 * else 127.0.0.1 and ports free now. */
static int up_addresses(const struct tool_args *a, const struct cluster *cl,
                        struct up_plan *pl)
{
	uint32_t busy = 0;
	int rc;

	if (pl->nodes == 1)
		return TOOL_EXIT_OK;
	if (pl->netns) {
		for (uint32_t k = 0; k < pl->nodes; k++) {
			tool_netns_addr(&pl->ns, k, pl->host[k]);
			pl->port[k] = (uint16_t)(((a->seen & TOOL_O_BASE_PORT)
			                                  ? a->base_port
			                                  : NETNS_BASE_PORT) + k);
		}
		return TOOL_EXIT_OK;
	}
	rc = loopback_ports(pl->nodes,
	                    (a->seen & TOOL_O_BASE_PORT) ? a->base_port : 0,
	                    pl->port, &busy);
	if (rc && busy)
		return tool_fail_rc(a, NULL, rc, "port %" PRIu32 " on 127.0.0.1",
		                    busy);
	if (rc)
		return tool_fail_rc(a, NULL, rc, "find free ports on 127.0.0.1");
	for (uint32_t k = 0; k < pl->nodes; k++)
		snprintf(pl->host[k], sizeof(pl->host[k]), "127.0.0.1");
	return TOOL_EXIT_OK;
}

/* Removes what a stopped node left behind: its pid file and socket. */
static int clear_node(const char *dir, uint32_t k)
{
	char sock[PATH_MAX];
	int rc = remove_pid(dir, k);

	if (rc == 0)
		rc = tool_node_path(sock, sizeof(sock), dir, k, SOCK_NAME);
	return rc ? rc : unlink_quiet(sock);
}

/* Node k's fresh key pair: the secret into its key file, the public key
 * into pub. Returns 0 or -errno. */
static int make_key(const char *dir, uint32_t k,
                    char pub[TOOL_KEY_LEN + 1])
{
	char path[PATH_MAX], sec[TOOL_KEY_LEN + 1];
	int rc = tool_node_path(path, sizeof(path), dir, k, KEY_NAME);

	if (rc == 0)
		rc = tool_keypair(pub, sec);
	if (rc == 0)
		rc = tool_write_secret(path, sec);
	explicit_bzero(sec, sizeof(sec));
	return rc;
}

/* Makes node k's directory and, in a cluster, its key (a lone node has
 * none: an old one is removed). */
static int prepare_node(const char *dir, uint32_t k, struct up_plan *pl)
{
	char path[PATH_MAX];
	int rc = tool_node_path(path, sizeof(path), dir, k, NULL);

	if (rc == 0 && mkdir(path, 0755) < 0 && errno != EEXIST)
		rc = -errno;
	if (rc == 0)
		rc = clear_node(dir, k);
	if (rc == 0 && pl->nodes > 1)
		return make_key(dir, k, pl->pub[k]);
	if (rc == 0)
		rc = tool_node_path(path, sizeof(path), dir, k, KEY_NAME);
	return rc ? rc : unlink_quiet(path);
}

/* Takes node k of an earlier, larger cluster out of this one by removing
 * its config (status lists nodes by config) and key; its log and data
 * stay. */
static int retire_node(const char *dir, uint32_t k)
{
	char conf[PATH_MAX], key[PATH_MAX];
	int rc = clear_node(dir, k);

	if (rc == 0)
		rc = tool_node_path(conf, sizeof(conf), dir, k, CONF_NAME);
	if (rc == 0)
		rc = tool_node_path(key, sizeof(key), dir, k, KEY_NAME);
	if (rc == 0)
		rc = unlink_quiet(key);
	return rc ? rc : unlink_quiet(conf);
}

/* Prepares nodes 0..N-1 (keys first: every config lists every public
 * key) and retires the nodes of cl numbered N or more. */
static int up_prepare(const struct tool_args *a, const struct cluster *cl,
                      struct up_plan *pl, const char *extra,
                      size_t extra_len)
{
	int rc;

	for (uint32_t k = 0; k < pl->nodes; k++) {
		rc = prepare_node(cl->dir, k, pl);
		if (rc == -ENOTSUP)
			return tool_fail(a, "this libzmq has no CURVE support");
		if (rc)
			return tool_fail_rc(a, NULL, rc, "prepare node %" PRIu32,
			                    k);
	}
	for (uint32_t k = 0; k < pl->nodes; k++) {
		rc = write_config(cl->dir, k, pl, extra, extra_len);
		if (rc)
			return tool_fail_rc(a, NULL, rc, "config of node %" PRIu32,
			                    k);
	}
	for (uint32_t i = 0; i < cl->n; i++) {
		if (cl->k[i] < pl->nodes)
			continue;
		rc = retire_node(cl->dir, cl->k[i]);
		if (rc)
			return tool_fail_rc(a, NULL, rc, "retire node %" PRIu32,
			                    cl->k[i]);
	}
	return TOOL_EXIT_OK;
}

/* Removes the namespaces an earlier cluster in this directory left
 * (nothing of it runs: up_check_dir said so). */
static int up_clear_netns(const struct tool_args *a, const struct cluster *cl)
{
	char err[512];

	if (tool_netns_teardown(cl->dir, err, sizeof(err)))
		return tool_fail(a, "remove the namespaces of the cluster that "
		                 "ran here before: %s", err);
	return TOOL_EXIT_OK;
}

/* Makes the namespaces for --netns, named after the directory. */
static int up_netns(const struct tool_args *a, const struct cluster *cl,
                    struct up_plan *pl)
{
	char err[512];

	if (!pl->netns)
		return TOOL_EXIT_OK;
	if (tool_netns_create(&pl->ns, cl->dir, pl->nodes, err, sizeof(err)))
		return tool_fail(a, "%s", err);
	return TOOL_EXIT_OK;
}

int tool_cluster_up(const struct tool_args *a)
{
	static struct cluster cl; /* large; one per process */
	static struct up_plan plan;
	char daemon[PATH_MAX], netns[TOOL_NETNS_NAME_MAX], err[512];
	struct launch l = { .daemon = daemon };
	char *extra = NULL;
	size_t extra_len = 0;
	int64_t deadline;
	int status, rc;

	status = up_check(a, &plan, daemon, sizeof(daemon), &extra,
	                  &extra_len);
	if (status == 0)
		status = cluster_dir(a, &cl, true);
	if (status == 0 && plan.netns) /* names from the real directory */
		tool_netns_init(&plan.ns, cl.dir);
	if (status == 0)
		status = up_check_dir(a, &cl);
	if (status == 0)
		status = up_clear_netns(a, &cl);
	if (status == 0)
		status = up_addresses(a, &cl, &plan);
	if (status == 0)
		status = up_prepare(a, &cl, &plan, extra, extra_len);
	free(extra);
	if (status == 0)
		status = up_netns(a, &cl, &plan);
	if (status)
		return status;
	cl.n = 0;
	for (uint32_t k = 0; k < a->nodes; k++) {
		if (plan.netns) {
			tool_netns_name(&plan.ns, k, netns);
			l.ip = plan.ns.ip;
			l.netns = netns;
		}
		cl.k[cl.n] = k;
		cl.pid[cl.n] = 0;
		rc = start_node(cl.dir, k, &l, &cl.pid[cl.n]);
		if (cl.pid[cl.n] > 0)
			cl.n++;
		if (rc) {
			status = tool_fail_rc(a, NULL, rc, "start node %" PRIu32,
			                      k);
			goto err;
		}
	}
	deadline = now_ms() + UP_TIMEOUT_MS;
	for (uint32_t i = 0; i < cl.n; i++) {
		status = wait_node(a, &cl, i, deadline);
		if (status)
			goto err;
	}
	return TOOL_EXIT_OK;
err:
	stop_children(&cl);
	if (plan.netns && tool_netns_teardown(cl.dir, err, sizeof(err)))
		tool_fail(a, "and could not undo --netns: %s", err);
	return status;
}

/* ---- cluster status ---- */

/* Counters shown beside a running node, when the daemon has them
 * (sessions_used counts the status query itself). */
static const char *const status_counters[] = {
	"sessions_used", "data_objects_used", "sturdy_used", "frames_used",
	"mappings_used", "locks_used", "requests", "errors", "peers_up",
};

struct counter_line {
	char text[256];
	size_t len;
	uint64_t nodes, peers_up; /* cluster_nodes, peers_up (0: a lone node) */
};

static void add_counter(const char *name, uint64_t value, void *arg)
{
	struct counter_line *l = arg;
	size_t room = sizeof(l->text) - l->len;
	int n;

	if (strcmp(name, "cluster_nodes") == 0)
		l->nodes = value;
	else if (strcmp(name, "peers_up") == 0)
		l->peers_up = value;

	for (size_t i = 0;
	     i < sizeof(status_counters) / sizeof(status_counters[0]); i++) {
		if (strcmp(name, status_counters[i]) != 0)
			continue;
		n = snprintf(l->text + l->len, room, " %s=%" PRIu64, name,
		             value);
		if (n > 0 && (size_t)n < room)
			l->len += (size_t)n;
		return;
	}
}

/* Prints node i's line; returns whether it is up and, in a cluster,
 * reaches every other node (a node that stalled longer than
 * dead_after_ms is dead to its peers for good: crash-stop). */
static bool print_node(const struct cluster *cl, uint32_t i)
{
	struct counter_line counters = { .len = 0 };
	char sock[PATH_MAX], pid[16] = "-", addr[160];
	char netns[7 + TOOL_NETNS_NAME_MAX] = "";
	struct capdsm *c = NULL;
	int rc = -ESRCH;

	if (tool_node_path(sock, sizeof(sock), cl->dir, cl->k[i], SOCK_NAME))
		snprintf(sock, sizeof(sock), "(path too long)");
	if (cl->pid[i] > 0) {
		snprintf(pid, sizeof(pid), "%d", (int)cl->pid[i]);
		rc = capdsm_connect(sock, NULL, &c);
	}
	if (rc == 0) {
		if (capdsm_stats(c, add_counter, &counters) != 0)
			counters.len = 0;
		capdsm_close(c);
	} else if (cl->pid[i] > 0) {
		snprintf(counters.text, sizeof(counters.text),
		         " (running but not answering: %s)", strerror(-rc));
		counters.len = strlen(counters.text);
	}
	counters.text[counters.len] = '\0';
	node_address(cl->dir, cl->k[i], addr, sizeof(addr));
	if (tool_netns_node(cl->dir, cl->k[i], netns + 7))
		memcpy(netns, " netns ", 7);
	bool cut = rc == 0 && counters.nodes > 1 &&
	           counters.peers_up + 1 < counters.nodes;
	printf("node %" PRIu32 " pid %s %s socket %s address %s%s%s\n",
	       cl->k[i], pid,
	       rc != 0 ? "down" : cut ? "up-but-cut-off" : "up", sock, addr,
	       netns, counters.text);
	return rc == 0 && !cut;
}

int tool_cluster_status(const struct tool_args *a)
{
	static struct cluster cl;
	bool all_up = true;
	int status, rc;

	status = cluster_dir(a, &cl, false);
	if (status)
		return status;
	rc = scan_cluster(&cl, CONF_NAME);
	if (rc)
		return tool_fail_rc(a, NULL, rc, "%s", cl.dir);
	if (cl.n == 0)
		return tool_fail(a, "no cluster in %s", cl.dir);
	for (uint32_t i = 0; i < cl.n; i++)
		all_up &= print_node(&cl, i);
	return all_up ? TOOL_EXIT_OK : TOOL_EXIT_FAIL;
}

/* ---- cluster down ---- */

/* Sends sig to every running node of cl and waits up to ms for them to
 * exit; cl->pid[i] becomes 0 for each one gone. Returns how many run on. */
static uint32_t signal_and_wait(struct cluster *cl, int sig, int64_t ms)
{
	int64_t deadline = now_ms() + ms;
	uint32_t running;

	for (uint32_t i = 0; i < cl->n; i++)
		if (cl->pid[i] > 0 && kill(cl->pid[i], sig) < 0 &&
		    errno == ESRCH)
			cl->pid[i] = 0;
	for (;;) {
		running = 0;
		for (uint32_t i = 0; i < cl->n; i++) {
			if (cl->pid[i] > 0 &&
			    !node_alive(cl->dir, cl->k[i], cl->pid[i]))
				cl->pid[i] = 0;
			running += cl->pid[i] > 0;
		}
		if (running == 0 || now_ms() >= deadline)
			return running;
		sleep_ms(POLL_MS);
	}
}

int tool_cluster_down(const struct tool_args *a)
{
	static struct cluster cl;
	char err[512];
	uint32_t running = 0;
	int status = TOOL_EXIT_OK, rc;

	if (!realpath(a->dir, cl.dir)) {
		if (errno != ENOENT)
			return tool_fail_rc(a, NULL, -errno, "%s", a->dir);
		fprintf(stderr, "capdsm: cluster down: no cluster in %s\n",
		        a->dir);
		return TOOL_EXIT_OK;
	}
	rc = scan_cluster(&cl, PID_NAME);
	if (rc)
		return tool_fail_rc(a, NULL, rc, "%s", cl.dir);
	for (uint32_t i = 0; i < cl.n; i++)
		running += cl.pid[i] > 0;
	if (running == 0)
		fprintf(stderr, "capdsm: cluster down: no cluster running in "
		        "%s\n", cl.dir);
	else if (signal_and_wait(&cl, SIGTERM, DOWN_TIMEOUT_MS) > 0)
		signal_and_wait(&cl, SIGKILL, KILL_TIMEOUT_MS);
	/* Clean up every node that is gone; report the first failure. */
	for (uint32_t i = 0; i < cl.n; i++) {
		rc = cl.pid[i] > 0 ? -EBUSY : clear_node(cl.dir, cl.k[i]);
		if (rc && status == TOOL_EXIT_OK && cl.pid[i] > 0)
			status = tool_fail(a, "node %" PRIu32 " (pid %d) survived "
			                   "SIGKILL", cl.k[i], (int)cl.pid[i]);
		else if (rc && status == TOOL_EXIT_OK)
			status = tool_fail_rc(a, NULL, rc, "clean node %" PRIu32,
			                      cl.k[i]);
	}
	/* Then the namespaces, once the daemons in them are gone. */
	if (tool_netns_teardown(cl.dir, err, sizeof(err)) &&
	    status == TOOL_EXIT_OK)
		status = tool_fail(a, "%s", err);
	return status;
}
