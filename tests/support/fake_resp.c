/*
 * fake_resp.c - the scripted fake RESP server (fake_resp.h has the DESIGN).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support/fake_resp.h"
#include "support/resp.h"

#define NAMES_MAX 64
#define LAST_MAX 1024
#define CONNS_MAX 256
#define IN_MAX (1u << 30) /* a client sending more than this without a command is broken */

/* Bytes due on a connection at due_ms, sent in order. */
struct chunk {
	uint64_t due_ms;
	char *bytes;
	size_t nbytes;
	size_t off;
	bool close_after;
	struct chunk *next;
};

struct conn {
	int fd;
	bool stalled;          /* a SILENT rule hit: drop input, send nothing new */
	char *in;
	size_t in_nbytes;
	size_t in_cap;
	uint64_t last_due_ms;  /* when the last queued chunk leaves: later ones wait for it */
	struct chunk *head;
	struct chunk *tail;
	struct conn *next;
};

struct rule {
	struct shadow_fake_rule r; /* bytes and tail point at the copies below */
	char *bytes;
	char *tail;
	uint32_t used;
	struct rule *next;
};

struct shadow_fake_resp {
	pthread_t thread;
	pthread_mutex_t mu;     /* everything below except listen_fd, wake, port, url */
	pthread_cond_t cond;    /* drop_done changes */
	int listen_fd;
	int wake[2];            /* pipe: wakes the thread's poll */
	uint16_t port;
	char url[64];
	bool stop;
	uint64_t drop_req;      /* drop_connections(): requested vs done generation */
	uint64_t drop_done;
	enum shadow_fake_accept accept_mode;
	struct rule *rules;
	struct conn *conns;
	uint32_t n_conns;
	uint32_t accepted;
	uint32_t n_commands;
	struct {
		char name[32];
		uint32_t count;
	} names[NAMES_MAX];
	char last[LAST_MAX];
	size_t last_nbytes;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void wake(struct shadow_fake_resp *f)
{
	char c = 1;
	ssize_t r = write(f->wake[1], &c, 1);
	(void)r; /* a full pipe already wakes the thread */
}

/* ---- connections (thread only, under mu) ------------------------------------------------ */

static void conn_close(struct shadow_fake_resp *f, struct conn *c)
{
	for (struct conn **p = &f->conns; *p != NULL; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			break;
		}
	}
	while (c->head != NULL) {
		struct chunk *k = c->head;
		c->head = k->next;
		free(k->bytes);
		free(k);
	}
	close(c->fd);
	free(c->in);
	free(c);
	f->n_conns--;
}

static int conn_queue(struct conn *c, const char *bytes, size_t nbytes, uint64_t due,
		      bool close_after)
{
	struct chunk *k = calloc(1, sizeof(*k));

	if (k == NULL)
		return -ENOMEM;
	if (nbytes > 0) {
		k->bytes = malloc(nbytes);
		if (k->bytes == NULL) {
			free(k);
			return -ENOMEM;
		}
		memcpy(k->bytes, bytes, nbytes);
	}
	if (due < c->last_due_ms)
		due = c->last_due_ms;
	c->last_due_ms = due;
	k->due_ms = due;
	k->nbytes = nbytes;
	k->close_after = close_after;
	if (c->tail != NULL)
		c->tail->next = k;
	else
		c->head = k;
	c->tail = k;
	return 0;
}

static void count_command(struct shadow_fake_resp *f, int argc, const char **argv,
			  const size_t *lens)
{
	f->n_commands++;
	if (argc > 0) {
		size_t n = lens[0] < 31 ? lens[0] : 31;
		int i;
		for (i = 0; i < NAMES_MAX && f->names[i].name[0] != '\0'; i++) {
			if (strlen(f->names[i].name) == n &&
			    strncasecmp(f->names[i].name, argv[0], n) == 0)
				break;
		}
		if (i < NAMES_MAX) {
			if (f->names[i].name[0] == '\0')
				memcpy(f->names[i].name, argv[0], n);
			f->names[i].count++;
		}
	}
	size_t w = 0;
	for (int i = 0; i < argc; i++) {
		if (i > 0 && w < LAST_MAX)
			f->last[w++] = ' ';
		size_t take = lens[i] < LAST_MAX - w ? lens[i] : LAST_MAX - w;
		memcpy(f->last + w, argv[i], take);
		w += take;
	}
	f->last_nbytes = w;
}

static bool name_is(const char *arg, size_t len, const char *name)
{
	return strlen(name) == len && strncasecmp(arg, name, len) == 0;
}

/* Answer one command per the script; false if the connection had to be closed. */
static bool handle_command(struct shadow_fake_resp *f, struct conn *c, int argc,
			   const char **argv, const size_t *lens)
{
	uint64_t now = now_ms();
	struct rule *rule = NULL;

	count_command(f, argc, argv, lens);
	if (argc == 0)
		return true;
	for (struct rule *r = f->rules; r != NULL; r = r->next) {
		if (r->r.times != 0 && r->used >= r->r.times)
			continue;
		if (r->r.command != NULL && !name_is(argv[0], lens[0], r->r.command))
			continue;
		rule = r;
		break;
	}
	if (rule == NULL) {
		static const char *const ok_cmds[] = { "AUTH", "SELECT", "CLIENT", "READONLY",
						       "ASKING" };
		const char *reply = "-ERR fake_resp: no rule for this command\r\n";
		if (name_is(argv[0], lens[0], "PING"))
			reply = "+PONG\r\n";
		for (size_t i = 0; i < sizeof(ok_cmds) / sizeof(ok_cmds[0]); i++) {
			if (name_is(argv[0], lens[0], ok_cmds[i]))
				reply = "+OK\r\n";
		}
		return conn_queue(c, reply, strlen(reply), now, false) == 0;
	}
	rule->used++;
	uint64_t due = now + rule->r.delay_ms;
	switch (rule->r.action) {
	case SHADOW_FAKE_REPLY:
		if (conn_queue(c, rule->bytes, rule->r.nbytes, due, false) < 0)
			return false;
		if (rule->tail != NULL &&
		    conn_queue(c, rule->tail, rule->r.tail_nbytes,
			       c->last_due_ms + rule->r.tail_delay_ms, false) < 0)
			return false;
		return true;
	case SHADOW_FAKE_REPLY_CLOSE:
		return conn_queue(c, rule->bytes, rule->r.nbytes, due, true) == 0;
	case SHADOW_FAKE_SILENT:
		c->stalled = true;
		return true;
	case SHADOW_FAKE_CLOSE:
		return conn_queue(c, NULL, 0, due, true) == 0;
	}
	return true;
}

/* Read what arrived and answer complete commands; false when the connection is gone. */
static bool conn_read(struct shadow_fake_resp *f, struct conn *c)
{
	for (;;) {
		if (c->in_cap - c->in_nbytes < 4096) {
			size_t cap = c->in_cap != 0 ? 2 * c->in_cap : 16384;
			char *in = cap <= IN_MAX ? realloc(c->in, cap) : NULL;
			if (in == NULL)
				return false;
			c->in = in;
			c->in_cap = cap;
		}
		ssize_t r = recv(c->fd, c->in + c->in_nbytes, c->in_cap - c->in_nbytes, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			break;
		if (r <= 0)
			return false;
		c->in_nbytes += (size_t)r;
	}
	size_t pos = 0;
	while (pos < c->in_nbytes) {
		const char *argv[SHADOW_TEST_RESP_ARGS_MAX];
		size_t lens[SHADOW_TEST_RESP_ARGS_MAX];
		int argc = 0;
		ssize_t n = shadow_test_resp_parse_command(c->in + pos, c->in_nbytes - pos, argv,
							   lens, SHADOW_TEST_RESP_ARGS_MAX, &argc);
		if (n < 0) {
			fprintf(stderr, "fake_resp: malformed command from a client: closing it\n");
			return false;
		}
		if (n == 0)
			break;
		pos += (size_t)n;
		if (c->stalled) {
			count_command(f, argc, argv, lens);
			continue;
		}
		if (!handle_command(f, c, argc, argv, lens))
			return false;
	}
	memmove(c->in, c->in + pos, c->in_nbytes - pos);
	c->in_nbytes -= pos;
	return true;
}

/* Send what is due; false when the connection is to be closed. */
static bool conn_flush(struct conn *c, uint64_t now)
{
	while (c->head != NULL && c->head->due_ms <= now) {
		struct chunk *k = c->head;

		while (k->off < k->nbytes) {
			ssize_t w = send(c->fd, k->bytes + k->off, k->nbytes - k->off,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && errno == EAGAIN)
				return true;
			if (w < 0)
				return false;
			k->off += (size_t)w;
		}
		if (k->close_after)
			return false;
		c->head = k->next;
		if (c->head == NULL)
			c->tail = NULL;
		free(k->bytes);
		free(k);
	}
	return true;
}

static void accept_new(struct shadow_fake_resp *f)
{
	for (;;) {
		int fd = accept4(f->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		f->accepted++;
		if (f->accept_mode == SHADOW_FAKE_ACCEPT_CLOSE || f->n_conns >= CONNS_MAX) {
			close(fd);
			continue;
		}
		struct conn *c = calloc(1, sizeof(*c));
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->next = f->conns;
		f->conns = c;
		f->n_conns++;
	}
}

static void *fake_thread(void *arg)
{
	struct shadow_fake_resp *f = arg;
	struct pollfd pfd[CONNS_MAX + 2];
	struct conn *pc[CONNS_MAX + 2];

	pthread_mutex_lock(&f->mu);
	while (!f->stop) {
		uint64_t now = now_ms();
		int timeout = -1;
		nfds_t n = 0;

		pfd[n++] = (struct pollfd){ .fd = f->wake[0], .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = f->listen_fd, .events = POLLIN };
		for (struct conn *c = f->conns; c != NULL; c = c->next) {
			short ev = POLLIN;
			if (c->head != NULL) {
				if (c->head->due_ms <= now) {
					ev |= POLLOUT;
				} else {
					uint64_t d = c->head->due_ms - now;
					if (timeout < 0 || d < (uint64_t)timeout)
						timeout = (int)d;
				}
			}
			pc[n] = c;
			pfd[n++] = (struct pollfd){ .fd = c->fd, .events = ev };
		}
		pthread_mutex_unlock(&f->mu);
		int rc = poll(pfd, n, timeout);
		pthread_mutex_lock(&f->mu);
		if (rc < 0 && errno != EINTR)
			break;
		if (pfd[0].revents & POLLIN) {
			char buf[64];
			while (read(f->wake[0], buf, sizeof(buf)) > 0)
				;
		}
		if (f->drop_req != f->drop_done) {
			while (f->conns != NULL)
				conn_close(f, f->conns);
			f->drop_done = f->drop_req;
			pthread_cond_broadcast(&f->cond);
			continue; /* pc[] is stale */
		}
		for (nfds_t i = 2; i < n; i++) {
			struct conn *c = pc[i];
			bool alive = true;
			if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
				alive = conn_read(f, c);
			if (alive)
				alive = conn_flush(c, now_ms());
			if (!alive)
				conn_close(f, c);
		}
		if (pfd[1].revents & POLLIN)
			accept_new(f);
	}
	pthread_mutex_unlock(&f->mu);
	return NULL;
}

/* ---- API -------------------------------------------------------------------------------- */

int shadow_fake_resp_start(struct shadow_fake_resp **fake_ret)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	struct shadow_fake_resp *f;
	int rc;

	f = calloc(1, sizeof(*f));
	if (f == NULL)
		return -ENOMEM;
	f->listen_fd = -1;
	f->wake[0] = f->wake[1] = -1;
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->cond, NULL);
	if (pipe2(f->wake, O_CLOEXEC | O_NONBLOCK) < 0)
		goto fail_errno;
	f->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (f->listen_fd < 0)
		goto fail_errno;
	if (bind(f->listen_fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(f->listen_fd, 128) < 0 ||
	    getsockname(f->listen_fd, (struct sockaddr *)&a, &alen) < 0)
		goto fail_errno;
	f->port = ntohs(a.sin_port);
	snprintf(f->url, sizeof(f->url), "redis://127.0.0.1:%u", f->port);
	rc = -pthread_create(&f->thread, NULL, fake_thread, f);
	if (rc < 0)
		goto fail;
	*fake_ret = f;
	return 0;

fail_errno:
	rc = -errno;
fail:
	if (f->listen_fd >= 0)
		close(f->listen_fd);
	if (f->wake[0] >= 0) {
		close(f->wake[0]);
		close(f->wake[1]);
	}
	pthread_mutex_destroy(&f->mu);
	pthread_cond_destroy(&f->cond);
	free(f);
	return rc;
}

void shadow_fake_resp_stop(struct shadow_fake_resp *f)
{
	if (f == NULL)
		return;
	pthread_mutex_lock(&f->mu);
	f->stop = true;
	pthread_mutex_unlock(&f->mu);
	wake(f);
	pthread_join(f->thread, NULL);
	while (f->conns != NULL)
		conn_close(f, f->conns);
	shadow_fake_resp_clear(f);
	close(f->listen_fd);
	close(f->wake[0]);
	close(f->wake[1]);
	pthread_mutex_destroy(&f->mu);
	pthread_cond_destroy(&f->cond);
	free(f);
}

uint16_t shadow_fake_resp_port(const struct shadow_fake_resp *f)
{
	return f->port;
}

const char *shadow_fake_resp_url(const struct shadow_fake_resp *f)
{
	return f->url;
}

int shadow_fake_resp_add(struct shadow_fake_resp *f, const struct shadow_fake_rule *rule)
{
	struct rule *r;

	if (rule == NULL || rule->action > SHADOW_FAKE_CLOSE ||
	    (rule->bytes == NULL && rule->nbytes != 0) ||
	    (rule->tail == NULL && rule->tail_nbytes != 0))
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->r = *rule;
	if (rule->command != NULL) {
		r->r.command = strdup(rule->command);
		if (r->r.command == NULL)
			goto nomem;
	}
	if (rule->bytes != NULL) {
		r->r.nbytes = rule->nbytes != 0 ? rule->nbytes : strlen(rule->bytes);
		r->bytes = malloc(r->r.nbytes + 1);
		if (r->bytes == NULL)
			goto nomem;
		memcpy(r->bytes, rule->bytes, r->r.nbytes);
	}
	if (rule->tail != NULL) {
		r->r.tail_nbytes = rule->tail_nbytes != 0 ? rule->tail_nbytes : strlen(rule->tail);
		r->tail = malloc(r->r.tail_nbytes + 1);
		if (r->tail == NULL)
			goto nomem;
		memcpy(r->tail, rule->tail, r->r.tail_nbytes);
	}
	r->r.bytes = r->bytes;
	r->r.tail = r->tail;
	pthread_mutex_lock(&f->mu);
	struct rule **p = &f->rules;
	while (*p != NULL)
		p = &(*p)->next;
	*p = r;
	pthread_mutex_unlock(&f->mu);
	return 0;
nomem:
	free((char *)r->r.command);
	free(r->bytes);
	free(r->tail);
	free(r);
	return -ENOMEM;
}

int shadow_fake_resp_reply(struct shadow_fake_resp *f, const char *command, uint32_t times,
			   const char *reply)
{
	struct shadow_fake_rule r = { .command = command, .times = times,
				      .action = SHADOW_FAKE_REPLY, .bytes = reply };

	return shadow_fake_resp_add(f, &r);
}

void shadow_fake_resp_clear(struct shadow_fake_resp *f)
{
	pthread_mutex_lock(&f->mu);
	while (f->rules != NULL) {
		struct rule *r = f->rules;
		f->rules = r->next;
		free((char *)r->r.command);
		free(r->bytes);
		free(r->tail);
		free(r);
	}
	pthread_mutex_unlock(&f->mu);
}

void shadow_fake_resp_set_accept(struct shadow_fake_resp *f, enum shadow_fake_accept mode)
{
	pthread_mutex_lock(&f->mu);
	f->accept_mode = mode;
	pthread_mutex_unlock(&f->mu);
}

void shadow_fake_resp_drop_connections(struct shadow_fake_resp *f)
{
	pthread_mutex_lock(&f->mu);
	uint64_t gen = ++f->drop_req;
	wake(f);
	while (f->drop_done < gen && !f->stop)
		pthread_cond_wait(&f->cond, &f->mu);
	pthread_mutex_unlock(&f->mu);
}

uint32_t shadow_fake_resp_commands(struct shadow_fake_resp *f, const char *command)
{
	uint32_t n = 0;

	pthread_mutex_lock(&f->mu);
	if (command == NULL) {
		n = f->n_commands;
	} else {
		for (int i = 0; i < NAMES_MAX && f->names[i].name[0] != '\0'; i++) {
			if (strcasecmp(f->names[i].name, command) == 0)
				n = f->names[i].count;
		}
	}
	pthread_mutex_unlock(&f->mu);
	return n;
}

uint32_t shadow_fake_resp_accepted(struct shadow_fake_resp *f)
{
	pthread_mutex_lock(&f->mu);
	uint32_t n = f->accepted;
	pthread_mutex_unlock(&f->mu);
	return n;
}

uint32_t shadow_fake_resp_open_connections(struct shadow_fake_resp *f)
{
	pthread_mutex_lock(&f->mu);
	uint32_t n = f->n_conns;
	pthread_mutex_unlock(&f->mu);
	return n;
}

size_t shadow_fake_resp_last_command(struct shadow_fake_resp *f, char *buf, size_t nbytes)
{
	pthread_mutex_lock(&f->mu);
	size_t n = f->last_nbytes;
	if (nbytes > 0) {
		size_t take = n < nbytes - 1 ? n : nbytes - 1;
		memcpy(buf, f->last, take);
		buf[take] = '\0';
	}
	pthread_mutex_unlock(&f->mu);
	return n;
}
