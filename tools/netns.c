/* netns.c — one network namespace per node for `cluster up --netns`, built
 * and removed with the ip command (iproute2), run by fork and exec.
 *
 * Layout (names in tool.h): every node namespace holds lo and one veth end
 * with the node's address; the other ends meet on a bridge that lives in a
 * namespace of its own, so nothing is added to the root namespace but the
 * namespaces, and no traffic can leave them: the nodes reach only each
 * other. The invariant: DIR/netns lists every namespace and link this
 * tool made for DIR, each appended right after `ip` made it and before
 * anything else is made, so a teardown (even after a crash half-way) removes
 * exactly what was made and nothing that belonged to someone else.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tool.h"

#define RECORD_NAME "netns"
#define RECORD_MAX (64u << 10)
#define NETNS_RUN_DIR "/var/run/netns" /* where ip keeps named namespaces */
#define BRIDGE "capdsm-br"
#define NODE_VETH "capdsm0"

/* ---- running ip ---- */

/* Finds the ip command: in PATH, else in the sbin folders a non-root PATH
 * often lacks. Returns 0 or -ENOENT. */
static int find_ip(char *buf, size_t len)
{
	static const char *const fixed[] = { "/usr/sbin/ip", "/sbin/ip",
		                             "/usr/bin/ip", "/bin/ip" };
	const char *path = getenv("PATH");

	while (path && *path) {
		size_t n = strcspn(path, ":");

		if (n > 0 && n + 4 < len) {
			memcpy(buf, path, n);
			memcpy(buf + n, "/ip", 4);
			if (access(buf, X_OK) == 0)
				return 0;
		}
		path += n + (path[n] == ':');
	}
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		if (strlen(fixed[i]) < len && access(fixed[i], X_OK) == 0) {
			strcpy(buf, fixed[i]); /* length checked */
			return 0;
		}
	return -ENOENT;
}

/* Writes "ip ARGS" into buf, for error lines. */
static void describe_cmd(const char *const args[], char *buf, size_t len)
{
	size_t used = (size_t)snprintf(buf, len, "ip");

	for (size_t i = 0; args[i] && used < len; i++)
		used += (size_t)snprintf(buf + used, len - used, " %s", args[i]);
}

/* Runs `ip ARGS` (args NULL-terminated, at most 15) with stdin and stdout
 * on /dev/null. Returns 0 when it exits 0; else -EIO with "ip ARGS: <the
 * first line ip printed on stderr>" in err (may be NULL), or -errno when
 * it could not be run at all. */
static int run_ip(const char *ip, const char *const args[], char *err,
                  size_t errlen)
{
	char *argv[16], out[512], cmd[256];
	size_t used = 0, i;
	int pipefd[2], null_fd, status = 0, rc = 0;
	ssize_t n;
	pid_t pid;

	argv[0] = (char *)ip;
	for (i = 0; args[i] && i < 14; i++)
		argv[i + 1] = (char *)args[i];
	argv[i + 1] = NULL;
	null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null_fd < 0)
		return -errno;
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		rc = -errno;
		goto out_null;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		rc = -errno;
		close(pipefd[0]);
		close(pipefd[1]);
		goto out_null;
	}
	if (pid == 0) {
		if (dup2(null_fd, STDIN_FILENO) < 0 ||
		    dup2(null_fd, STDOUT_FILENO) < 0 ||
		    dup2(pipefd[1], STDERR_FILENO) < 0)
			_exit(126);
		execv(ip, argv);
		dprintf(STDERR_FILENO, "exec %s: %s\n", ip, strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	for (;;) { /* keep the first bytes, drain the rest */
		char sink[512];

		n = read(pipefd[0], used < sizeof(out) - 1 ? out + used : sink,
		         used < sizeof(out) - 1 ? sizeof(out) - 1 - used
		                                : sizeof(sink));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (used < sizeof(out) - 1)
			used += (size_t)n;
	}
	close(pipefd[0]);
	out[used] = '\0';
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		goto out_null;
	rc = -EIO;
	out[strcspn(out, "\n")] = '\0';
	if (err) {
		describe_cmd(args, cmd, sizeof(cmd));
		snprintf(err, errlen, "%s: %s", cmd,
		         out[0] ? out : "failed with no message");
	}
out_null:
	close(null_fd);
	return rc;
}

/* ---- names ---- */

/* FNV-1a, 32 bits: a short, stable name for a directory. */
static uint32_t hash_str(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

int tool_netns_init(struct tool_netns *ns, const char *dir)
{
	uint32_t h = hash_str(dir);

	if (geteuid() != 0)
		return -EPERM;
	if (find_ip(ns->ip, sizeof(ns->ip)))
		return -ENOENT;
	snprintf(ns->prefix, sizeof(ns->prefix), "capdsm-%06" PRIx32,
	         h & 0xffffffu);
	ns->subnet = h >> 24;
	return 0;
}

void tool_netns_name(const struct tool_netns *ns, uint32_t k, char *buf)
{
	snprintf(buf, TOOL_NETNS_NAME_MAX, "%s-%" PRIu32, ns->prefix, k);
}

void tool_netns_addr(const struct tool_netns *ns, uint32_t k, char *buf)
{
	snprintf(buf, 16, "10.213.%u.%" PRIu32, ns->subnet, k + 1);
}

static void bridge_ns_name(const struct tool_netns *ns, char *buf)
{
	snprintf(buf, TOOL_NETNS_NAME_MAX, "%s-br", ns->prefix);
}

static bool netns_exists(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), NETNS_RUN_DIR "/%s", name);
	return access(path, F_OK) == 0;
}

/* Whether link dev exists in namespace ns (both must exist). */
static bool link_exists(const char *ip, const char *ns, const char *dev)
{
	const char *args[] = { "-n", ns, "link", "show", "dev", dev, NULL };

	return netns_exists(ns) && run_ip(ip, args, NULL, 0) == 0;
}

/* A name the record may hold: our prefix for namespaces, and only [a-z0-9-]
 * throughout, so a damaged record cannot name what we did not make. */
static bool valid_name(const char *s, size_t max, bool is_netns)
{
	size_t len = strlen(s);

	if (len == 0 || len >= max || (is_netns && strncmp(s, "capdsm-", 7)))
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") == len &&
	       s[0] != '-';
}

/* ---- the record ---- */

static int record_path(const char *dir, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/" RECORD_NAME, dir);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Appends one line to the record. Returns 0 or -errno. */
static int record(const char *dir, const char *fmt, const char *a,
                  const char *b)
{
	char path[PATH_MAX], line[128];
	int fd, rc, n;

	rc = record_path(dir, path, sizeof(path));
	if (rc)
		return rc;
	n = snprintf(line, sizeof(line), fmt, a, b);
	if (n < 0 || (size_t)n >= sizeof(line))
		return -ENAMETOOLONG;
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	rc = tool_write_full(fd, line, (size_t)n);
	if (rc == 0 && fdatasync(fd) < 0)
		rc = -errno;
	if (close(fd) < 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* One line of the record: "netns NAME" or "link NAME DEV". */
struct entry {
	bool is_link;
	char ns[TOOL_NETNS_NAME_MAX];
	char dev[16];
};

/* Reads the record into at most max entries. Returns the count, 0 when
 * there is none, or a negative errno (-EBADMSG: a line we did not write). */
static int read_record(const char *dir, struct entry *e, size_t max)
{
	char path[PATH_MAX], *buf, *line, *save = NULL;
	ssize_t n;
	int fd, count = 0, rc = record_path(dir, path, sizeof(path));

	if (rc)
		return rc;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	buf = malloc(RECORD_MAX + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	n = tool_read_full(fd, buf, RECORD_MAX + 1);
	close(fd);
	if (n < 0 || n > (ssize_t)RECORD_MAX) {
		free(buf);
		return n < 0 ? (int)n : -EFBIG;
	}
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char kind[8], ns[64], dev[64];
		int fields;

		if (line[0] == '#')
			continue;
		fields = sscanf(line, "%7s %63s %63s", kind, ns, dev);
		bool ok_netns = fields == 2 && strcmp(kind, "netns") == 0;
		bool ok_link = fields == 3 && strcmp(kind, "link") == 0;

		if ((size_t)count >= max || (!ok_netns && !ok_link) ||
		    !valid_name(ns, sizeof(e->ns), true) ||
		    (fields == 3 && !valid_name(dev, sizeof(e->dev), false))) {
			count = -EBADMSG;
			break;
		}
		e[count].is_link = ok_link;
		strcpy(e[count].ns, ns); /* lengths checked */
		strcpy(e[count].dev, fields == 3 ? dev : "");
		count++;
	}
	free(buf);
	return count;
}

bool tool_netns_node(const char *dir, uint32_t k, char *name)
{
	static struct entry e[4 * TOOL_MAX_NODES];
	int n = read_record(dir, e, sizeof(e) / sizeof(e[0]));
	char tail[16];

	snprintf(tail, sizeof(tail), "-%" PRIu32, k);
	for (int i = 0; i < n; i++) {
		size_t len = strlen(e[i].ns);

		if (!e[i].is_link && len > strlen(tail) &&
		    strcmp(e[i].ns + len - strlen(tail), tail) == 0) {
			strcpy(name, e[i].ns); /* < TOOL_NETNS_NAME_MAX */
			return true;
		}
	}
	return false;
}

/* ---- teardown ---- */

/* Each deletes what e names unless it is gone already; what is gone
 * afterwards (whatever ip said) is success. */
static int del_link(const char *ip, const struct entry *e, char *err,
                    size_t errlen)
{
	const char *args[] = { "-n", e->ns, "link", "del", "dev", e->dev,
		               NULL };
	int rc;

	if (!link_exists(ip, e->ns, e->dev))
		return 0;
	rc = run_ip(ip, args, err, errlen);
	return rc && link_exists(ip, e->ns, e->dev) ? rc : 0;
}

static int del_netns(const char *ip, const struct entry *e, char *err,
                     size_t errlen)
{
	const char *args[] = { "netns", "del", e->ns, NULL };
	int rc;

	if (!netns_exists(e->ns))
		return 0;
	rc = run_ip(ip, args, err, errlen);
	return rc && netns_exists(e->ns) ? rc : 0;
}

int tool_netns_teardown(const char *dir, char *err, size_t errlen)
{
	static struct entry e[4 * TOOL_MAX_NODES];
	char ip[PATH_MAX], path[PATH_MAX];
	int n = read_record(dir, e, sizeof(e) / sizeof(e[0]));
	int rc = 0, first = 0;

	if (n < 0) {
		snprintf(err, errlen, "%s/" RECORD_NAME ": %s", dir,
		         n == -EBADMSG ? "not a record this tool wrote; "
		                         "remove what it names by hand"
		                       : strerror(-n));
		return n;
	}
	if (n == 0) { /* nothing made, or the record is gone already */
		if (record_path(dir, path, sizeof(path)) == 0)
			unlink(path);
		return 0;
	}
	if (geteuid() != 0) {
		snprintf(err, errlen, "removing the network namespaces in "
		         "%s/" RECORD_NAME " needs root", dir);
		return -EPERM;
	}
	if (find_ip(ip, sizeof(ip))) {
		snprintf(err, errlen, "the ip command (iproute2) is not "
		         "installed");
		return -ENOENT;
	}
	/* Links first, then namespaces; newest first within each. */
	for (int pass = 0; pass < 2; pass++)
		for (int i = n - 1; i >= 0; i--) {
			if (e[i].is_link != (pass == 0))
				continue;
			rc = e[i].is_link ? del_link(ip, &e[i], err, errlen)
			                  : del_netns(ip, &e[i], err, errlen);
			if (rc && !first)
				first = rc;
			if (first) /* keep the first error's line in err */
				errlen = 0;
		}
	if (first)
		return first;
	rc = record_path(dir, path, sizeof(path));
	if (rc == 0 && unlink(path) < 0 && errno != ENOENT)
		rc = -errno;
	if (rc)
		snprintf(err, errlen, "remove %s: %s", path, strerror(-rc));
	return rc;
}

/* ---- creation ---- */

/* Makes namespace name and records it. Returns 0 or -errno. */
static int add_netns(const struct tool_netns *ns, const char *dir,
                     const char *name, char *err, size_t errlen)
{
	const char *add[] = { "netns", "add", name, NULL };
	const char *lo[] = { "-n", name, "link", "set", "lo", "up", NULL };
	int rc = run_ip(ns->ip, add, err, errlen);

	if (rc)
		return rc;
	rc = record(dir, "netns %s\n", name, NULL);
	if (rc) {
		snprintf(err, errlen, "record namespace %s: %s", name,
		         strerror(-rc));
		/* unrecorded: remove it here or nobody will */
		run_ip(ns->ip, (const char *[]){ "netns", "del", name, NULL },
		       NULL, 0);
		return rc;
	}
	return run_ip(ns->ip, lo, err, errlen);
}

/* Records link dev of namespace name. Returns 0 or -errno. */
static int add_record_link(const char *dir, const char *name,
                           const char *dev, char *err, size_t errlen)
{
	int rc = record(dir, "link %s %s\n", name, dev);

	if (rc)
		snprintf(err, errlen, "record link %s: %s", dev, strerror(-rc));
	return rc;
}

/* The bridge namespace and its bridge. */
static int add_bridge(const struct tool_netns *ns, const char *dir,
                      char *err, size_t errlen)
{
	char br[TOOL_NETNS_NAME_MAX];
	int rc;

	bridge_ns_name(ns, br);
	rc = add_netns(ns, dir, br, err, errlen);
	if (rc == 0)
		rc = run_ip(ns->ip, (const char *[]){ "-n", br, "link", "add",
		                                      BRIDGE, "type", "bridge",
		                                      NULL },
		            err, errlen);
	if (rc == 0)
		rc = add_record_link(dir, br, BRIDGE, err, errlen);
	if (rc == 0)
		rc = run_ip(ns->ip, (const char *[]){ "-n", br, "link", "set",
		                                      BRIDGE, "up", NULL },
		            err, errlen);
	return rc;
}

/* Node k's namespace, its veth pair to the bridge, and its address. */
static int add_node(const struct tool_netns *ns, const char *dir, uint32_t k,
                    char *err, size_t errlen)
{
	char name[TOOL_NETNS_NAME_MAX], br[TOOL_NETNS_NAME_MAX];
	char dev[16], addr[24];
	int rc;

	tool_netns_name(ns, k, name);
	bridge_ns_name(ns, br);
	snprintf(dev, sizeof(dev), "node%" PRIu32, k);
	tool_netns_addr(ns, k, addr);
	strcat(addr, "/24"); /* fits: at most 15 + 3 */
	rc = add_netns(ns, dir, name, err, errlen);
	if (rc == 0)
		rc = run_ip(ns->ip, (const char *[]){ "-n", name, "link", "add",
		                                      NODE_VETH, "type", "veth",
		                                      "peer", "name", dev,
		                                      "netns", br, NULL },
		            err, errlen);
	/* Deleting the bridge's end deletes the pair. */
	if (rc == 0)
		rc = add_record_link(dir, br, dev, err, errlen);
	if (rc == 0)
		rc = run_ip(ns->ip, (const char *[]){ "-n", br, "link", "set",
		                                      dev, "master", BRIDGE,
		                                      "up", NULL },
		            err, errlen);
	if (rc == 0)
		rc = run_ip(ns->ip, (const char *[]){ "-n", name, "addr", "add",
		                                      addr, "dev", NODE_VETH,
		                                      NULL },
		            err, errlen);
	if (rc == 0)
		rc = run_ip(ns->ip, (const char *[]){ "-n", name, "link", "set",
		                                      NODE_VETH, "up", NULL },
		            err, errlen);
	return rc;
}

int tool_netns_create(const struct tool_netns *ns, const char *dir,
                      uint32_t n, char *err, size_t errlen)
{
	char name[TOOL_NETNS_NAME_MAX], undo_err[1];
	int rc;

	if (n < 1 || n > TOOL_NETNS_MAX_NODES) {
		snprintf(err, errlen, "--netns takes 1 to %u nodes",
		         TOOL_NETNS_MAX_NODES);
		return -EINVAL;
	}
	/* Check every name before making anything: the bridge's, then the
	 * nodes'. */
	for (uint32_t k = 0; k <= n; k++) {
		if (k == 0)
			bridge_ns_name(ns, name);
		else
			tool_netns_name(ns, k - 1, name);
		if (netns_exists(name)) {
			snprintf(err, errlen, "network namespace %s already "
			         "exists and is not in %s/" RECORD_NAME
			         " (another cluster's?)", name, dir);
			return -EEXIST;
		}
	}
	rc = add_bridge(ns, dir, err, errlen);
	for (uint32_t k = 0; rc == 0 && k < n; k++)
		rc = add_node(ns, dir, k, err, errlen);
	if (rc)
		tool_netns_teardown(dir, undo_err, 0);
	return rc;
}
