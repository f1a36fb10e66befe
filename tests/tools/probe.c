/* probe.c — a helper for the tests of the capdsm tool's cluster verbs.
 *
 *   probe pub FILE          prints the CURVE public key of the secret key
 *                           in FILE (40 Z85 characters and a newline, no
 *                           more), derived with zmq_curve_public
 *   probe listen IP PORT    accepts one TCP connection (10 s at most) and
 *                           sends it "ok\n"
 *   probe connect IP PORT   connects (retrying for 10 s) and expects "ok\n"
 *
 * listen and connect, each run in a node's namespace, show that the
 * namespaces reach each other. Exit 0 on success, 1 with one line on
 * stderr otherwise.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define WAIT_MS 10000

static int fail(const char *what, const char *why)
{
	fprintf(stderr, "probe: %s: %s\n", what, why);
	return 1;
}

static int pub(const char *path)
{
	char sec[64], out[41];
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return fail(path, strerror(errno));
	n = read(fd, sec, sizeof(sec));
	close(fd);
	if (n != 41 || sec[40] != '\n')
		return fail(path, "not 40 characters and a newline");
	sec[40] = '\0';
	if (zmq_curve_public(out, sec) != 0)
		return fail(path, "not a Z85 CURVE secret key");
	printf("%s\n", out);
	return 0;
}

static int parse_addr(const char *ip, const char *port, struct sockaddr_in *sa)
{
	char *end;
	long p = strtol(port, &end, 10);

	*sa = (struct sockaddr_in){ .sin_family = AF_INET,
		                    .sin_port = htons((uint16_t)p) };
	return *end || p < 1 || p > 65535 ||
	       inet_pton(AF_INET, ip, &sa->sin_addr) != 1;
}

static int listen_once(const struct sockaddr_in *sa)
{
	struct pollfd pfd;
	int one = 1, c;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
	                         sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 ||
	    listen(fd, 1) < 0)
		return fail("listen", strerror(errno));
	pfd = (struct pollfd){ .fd = fd, .events = POLLIN };
	if (poll(&pfd, 1, WAIT_MS) != 1)
		return fail("listen", "nobody connected within 10 s");
	c = accept(fd, NULL, NULL);
	if (c < 0 || write(c, "ok\n", 3) != 3)
		return fail("accept", strerror(errno));
	close(c);
	close(fd);
	return 0;
}

static int connect_once(const struct sockaddr_in *sa)
{
	struct timespec pause = { .tv_nsec = 50 * 1000000L };
	char buf[8] = "";
	int fd = -1;

	for (int i = 0; i < WAIT_MS / 50; i++) {
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return fail("socket", strerror(errno));
		if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
			break;
		close(fd);
		fd = -1;
		nanosleep(&pause, NULL);
	}
	if (fd < 0)
		return fail("connect", "no listener within 10 s");
	if (read(fd, buf, sizeof(buf) - 1) != 3 || strcmp(buf, "ok\n") != 0)
		return fail("connect", "no greeting");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa;

	if (argc == 3 && strcmp(argv[1], "pub") == 0)
		return pub(argv[2]);
	if (argc == 4 && parse_addr(argv[2], argv[3], &sa) == 0) {
		if (strcmp(argv[1], "listen") == 0)
			return listen_once(&sa);
		if (strcmp(argv[1], "connect") == 0)
			return connect_once(&sa);
	}
	return fail("usage", "probe pub FILE | probe listen|connect IP PORT");
}
