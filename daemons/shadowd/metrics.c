/*
 * metrics.c - shadowd's HTTP/1.0 endpoint: GET /metrics (Prometheus text format 0.0.4, from
 * shadowd_server_metrics) and GET /healthz ("ok", or 503 "draining" after SIGTERM).
 *
 * DESIGN
 *
 * One thread of its own (pinned with the rest: it inherits main's CPU set), so a slow scraper
 * never delays the control thread. It serves one connection at a time: accept, read the
 * request line within 2 s, answer, close. It waits in poll() on the listen socket and a stop
 * eventfd. It reads the server's counters through shadowd_server_metrics(), which takes the
 * server's clients_mu for the list of clients (never held on the data path). Allocation per
 * scrape (open_memstream) is fine here: this is not the data path.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "client/proto.h"
#include "core/log.h"
#include "shadowd.h"

#define METRICS_REQUEST_MAX 4096
#define METRICS_IO_TIMEOUT_S 2

struct shadowd_metrics {
	struct shadowd_server *srv;
	int listen_fd;
	int stop_efd;
	pthread_t tid;
	char bound[300];
};

static void send_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void respond(int fd, int code, const char *reason, const char *type, const char *body,
		    size_t body_nbytes)
{
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n",
			 code, reason, type, body_nbytes);
	send_all(fd, head, (size_t)n);
	send_all(fd, body, body_nbytes);
}

static void serve(struct shadowd_metrics *m, int fd)
{
	char req[METRICS_REQUEST_MAX + 1];
	size_t len = 0;
	struct timeval tv = { .tv_sec = METRICS_IO_TIMEOUT_S };

	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* The request line is all we need; stop at the end of the headers or when full. */
	while (len < METRICS_REQUEST_MAX) {
		ssize_t n = recv(fd, req + len, METRICS_REQUEST_MAX - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		req[len] = '\0';
		if (strstr(req, "\r\n\r\n") != NULL || strstr(req, "\n\n") != NULL)
			break;
	}
	req[len] = '\0';
	if (strncmp(req, "GET ", 4) != 0) {
		respond(fd, 405, "Method Not Allowed", "text/plain", "GET only\n", 9);
		return;
	}
	const char *path = req + 4;
	size_t plen = strcspn(path, " ?\r\n");
	if (plen == 8 && strncmp(path, "/metrics", 8) == 0) {
		char *body = NULL;
		size_t body_nbytes = 0;
		FILE *out = open_memstream(&body, &body_nbytes);
		if (out == NULL) {
			respond(fd, 500, "Internal Server Error", "text/plain", "no memory\n", 10);
			return;
		}
		shadowd_server_metrics(m->srv, out);
		fclose(out);
		respond(fd, 200, "OK", "text/plain; version=0.0.4", body, body_nbytes);
		free(body);
	} else if (plen == 8 && strncmp(path, "/healthz", 8) == 0) {
		if (shadowd_server_healthy(m->srv))
			respond(fd, 200, "OK", "text/plain", "ok\n", 3);
		else
			respond(fd, 503, "Service Unavailable", "text/plain", "draining\n", 9);
	} else {
		respond(fd, 404, "Not Found", "text/plain", "not found\n", 10);
	}
}

static void *metrics_main(void *arg)
{
	struct shadowd_metrics *m = arg;

	for (;;) {
		struct pollfd p[2] = { { .fd = m->listen_fd, .events = POLLIN },
				       { .fd = m->stop_efd, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			SHADOW_LOGE("shadowd: metrics: poll: %s", strerror(errno));
			return NULL;
		}
		if (p[1].revents != 0)
			return NULL;
		int fd = accept4(m->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve(m, fd);
		close(fd);
	}
}

int shadowd_metrics_start(const char *hostport, struct shadowd_server *srv,
			  struct shadowd_metrics **m_ret, const char **bound_ret)
{
	char host[256];
	const char *port;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res = NULL;
	struct shadowd_metrics *m;
	int rc;

	if (shadow__proto_split_hostport(hostport, host, sizeof(host), &port) < 0 ||
	    getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
		return -EINVAL;
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		freeaddrinfo(res);
		return -ENOMEM;
	}
	m->srv = srv;
	m->stop_efd = eventfd(0, EFD_CLOEXEC);
	m->listen_fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (m->stop_efd < 0 || m->listen_fd < 0) {
		rc = -errno;
		goto fail;
	}
	int one = 1;
	(void)setsockopt(m->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(m->listen_fd, res->ai_addr, res->ai_addrlen) < 0 || listen(m->listen_fd, 16) < 0) {
		rc = -errno;
		goto fail;
	}
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char hbuf[256] = "?", pbuf[16] = "?";
	if (getsockname(m->listen_fd, (struct sockaddr *)&ss, &len) == 0)
		(void)getnameinfo((struct sockaddr *)&ss, len, hbuf, sizeof(hbuf), pbuf,
				  sizeof(pbuf), NI_NUMERICHOST | NI_NUMERICSERV);
	if (strchr(hbuf, ':') != NULL)
		snprintf(m->bound, sizeof(m->bound), "[%s]:%s", hbuf, pbuf);
	else
		snprintf(m->bound, sizeof(m->bound), "%s:%s", hbuf, pbuf);
	rc = -pthread_create(&m->tid, NULL, metrics_main, m);
	if (rc < 0)
		goto fail;
	freeaddrinfo(res);
	*m_ret = m;
	*bound_ret = m->bound;
	return 0;
fail:
	freeaddrinfo(res);
	if (m->listen_fd >= 0)
		close(m->listen_fd);
	if (m->stop_efd >= 0)
		close(m->stop_efd);
	free(m);
	return rc;
}

void shadowd_metrics_stop(struct shadowd_metrics *m)
{
	uint64_t one = 1;

	if (m == NULL)
		return;
	(void)!write(m->stop_efd, &one, sizeof(one));
	pthread_join(m->tid, NULL);
	close(m->listen_fd);
	close(m->stop_efd);
	free(m);
}
