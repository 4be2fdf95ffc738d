/*
 * redis_server.c - redis-server child processes and clusters for tests (redis_server.h has
 * the DESIGN).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support/redis_server.h"
#include "support/resp.h"

#define START_TIMEOUT_MS_DEFAULT 10000u
#define STOP_GRACE_MS 5000u
#define COMMAND_TIMEOUT_MS 10000u
#define CLI_TIMEOUT_MS 60000u
#define PORT_TRIES 8
#define ARGS_MAX 64
#define CLUSTER_NODES_MAX 16u
#define LOG_TAIL_NBYTES 2048
#define DIR_PREFIX "shadow-redis-"

struct shadow_test_redis {
	pid_t pid;              /* -1 while not running */
	uint16_t port;
	uint16_t bus_port;      /* cluster-port; 0 unless cluster */
	bool cluster;
	uint32_t start_timeout_ms;
	char *password;
	char *user;
	char *user_password;
	char **config;          /* NULL-ended copies */
	char *malloc_conf;      /* MALLOC_CONF of the server, or NULL */
	char dir[PATH_MAX];
	char url[64];
	char addr[32];
	struct shadow_test_redis *next; /* live list, for the atexit() cleanup */
};

struct shadow_test_cluster {
	uint32_t n;
	struct shadow_test_redis *nodes[CLUSTER_NODES_MAX];
	char ids[CLUSTER_NODES_MAX][41];
	char url[64];
};

static struct shadow_test_redis *live_head;
static bool atexit_done;

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(uint32_t ms)
{
	struct timespec ts = { .tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static char *xstrdup(const char *s)
{
	return s != NULL ? strdup(s) : NULL;
}

static bool executable(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* $env, else beside `sibling` (if not NULL), else on PATH, else /usr/bin/name. */
static int find_exec(const char *name, const char *env, const char *sibling, char *out,
		     size_t nbytes)
{
	const char *e = getenv(env);
	char buf[PATH_MAX];

	if (e != NULL && *e != '\0') {
		if (!executable(e)) {
			fprintf(stderr, "redis_server: %s=%s is not executable\n", env, e);
			return -ENOENT;
		}
		if (strlen(e) >= nbytes)
			return -ENAMETOOLONG;
		strcpy(out, e);
		return 0;
	}
	if (sibling != NULL) {
		const char *slash = strrchr(sibling, '/');
		if (slash != NULL) {
			snprintf(buf, sizeof(buf), "%.*s/%s", (int)(slash - sibling), sibling, name);
			if (executable(buf))
				goto found;
		}
	}
	const char *path = getenv("PATH");
	while (path != NULL && *path != '\0') {
		const char *colon = strchr(path, ':');
		size_t len = colon != NULL ? (size_t)(colon - path) : strlen(path);

		if (len > 0 && len < sizeof(buf) - strlen(name) - 2) {
			snprintf(buf, sizeof(buf), "%.*s/%s", (int)len, path, name);
			if (executable(buf))
				goto found;
		}
		path = colon != NULL ? colon + 1 : NULL;
	}
	snprintf(buf, sizeof(buf), "/usr/bin/%s", name);
	if (executable(buf))
		goto found;
	return -ENOENT;
found:
	if (strlen(buf) >= nbytes)
		return -ENAMETOOLONG;
	strcpy(out, buf);
	return 0;
}

int shadow_test_redis_find(char *path_ret, size_t nbytes)
{
	return find_exec("redis-server", "SHADOW_REDIS_SERVER", NULL, path_ret, nbytes);
}

int shadow_test_redis_cli_find(char *path_ret, size_t nbytes)
{
	char server[PATH_MAX];
	bool have_server = shadow_test_redis_find(server, sizeof(server)) == 0;

	return find_exec("redis-cli", "SHADOW_REDIS_CLI", have_server ? server : NULL, path_ret,
			 nbytes);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *dir)
{
	if (dir[0] != '\0')
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The server's log from byte `from` on (NULL if none); malloc'ed, NUL-terminated. */
static char *log_read(const struct shadow_test_redis *r, off_t from)
{
	char path[PATH_MAX + 16];
	struct stat st;
	char *buf;
	int fd;

	snprintf(path, sizeof(path), "%s/redis.log", r->dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || st.st_size < from || st.st_size - from > (64 << 20)) {
		close(fd);
		return NULL;
	}
	size_t n = (size_t)(st.st_size - from);
	buf = malloc(n + 1);
	if (buf != NULL) {
		ssize_t got = pread(fd, buf, n, from);
		buf[got > 0 ? got : 0] = '\0';
	}
	close(fd);
	return buf;
}

static off_t log_size(const struct shadow_test_redis *r)
{
	char path[PATH_MAX + 16];
	struct stat st;

	snprintf(path, sizeof(path), "%s/redis.log", r->dir);
	return stat(path, &st) == 0 ? st.st_size : 0;
}

static void log_print_tail(const struct shadow_test_redis *r, off_t from)
{
	char *text = log_read(r, from);

	if (text == NULL)
		return;
	size_t n = strlen(text);
	fprintf(stderr, "---- %s/redis.log (tail) ----\n%s\n----\n", r->dir,
		text + (n > LOG_TAIL_NBYTES ? n - LOG_TAIL_NBYTES : 0));
	free(text);
}

/* A port that was free a moment ago on 127.0.0.1 (the kernel's pick), or -errno. */
static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int rc;

	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
		rc = -errno;
	else
		rc = ntohs(a.sin_port);
	close(fd);
	return rc;
}

/* Connect to 127.0.0.1:port within timeout_ms; a blocking fd with I/O timeouts, or -errno. */
static int connect_port(uint16_t port, uint32_t timeout_ms)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	int err = 0;

	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (errno != EINPROGRESS) {
			err = -errno;
			goto fail;
		}
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int n = poll(&p, 1, (int)timeout_ms);
		if (n == 0) {
			err = -ETIMEDOUT;
			goto fail;
		}
		socklen_t len = sizeof(err);
		if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
			err = -errno;
			goto fail;
		}
		if (err != 0) {
			err = -err;
			goto fail;
		}
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	struct timeval tv = { .tv_sec = COMMAND_TIMEOUT_MS / 1000, .tv_usec = 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
fail:
	close(fd);
	return err;
}

static int send_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		}
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read one complete RESP reply into a malloc'ed buffer (*buf_ret); returns its length. */
static ssize_t read_reply(int fd, char **buf_ret)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);

	if (buf == NULL)
		return -ENOMEM;
	for (;;) {
		ssize_t len = shadow_test_resp_scan(buf, n);
		if (len > 0) {
			buf[len] = '\0';
			*buf_ret = buf;
			return len;
		}
		if (len < 0) {
			free(buf);
			return -EPROTO;
		}
		if (n == cap) {
			char *nb = realloc(buf, 2 * cap + 1);
			if (nb == NULL) {
				free(buf);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t r = recv(fd, buf + n, cap - n, 0);
		if (r <= 0) {
			int err = r == 0 ? -ECONNRESET : errno == EAGAIN ? -ETIMEDOUT : -errno;
			if (r < 0 && errno == EINTR)
				continue;
			free(buf);
			return err;
		}
		n += (size_t)r;
	}
}

/* Send argv as one command on fd and read the reply (malloc'ed into *reply_ret). */
static ssize_t fd_command(int fd, int argc, const char *const *argv, const size_t *lens,
			  char **reply_ret)
{
	size_t n = shadow_test_resp_encode(NULL, 0, argc, argv, lens);
	char *req = malloc(n);
	int rc;

	if (req == NULL)
		return -ENOMEM;
	shadow_test_resp_encode(req, n, argc, argv, lens);
	rc = send_all(fd, req, n);
	free(req);
	if (rc < 0)
		return rc;
	return read_reply(fd, reply_ret);
}

/* ------------------------------------------------------------------------------------------ */
/* Processes                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/*
 * In a child: die with the parent, stdio on out_fd, no inherited descriptors, MALLOC_CONF set
 * to malloc_conf if not NULL, exec argv.
 */
static void child_exec(pid_t parent, int out_fd, const char *path, char *const *argv,
		       const char *malloc_conf)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent) /* the parent died before prctl: nobody would kill us */
		_exit(127);
	int null = open("/dev/null", O_RDONLY);
	if (null >= 0)
		dup2(null, 0);
	dup2(out_fd, 1);
	dup2(out_fd, 2);
	if (close_range(3, ~0u, 0) < 0) {
		for (int fd = 3; fd < 4096; fd++)
			close(fd);
	}
	/* Default dispositions: a test may ignore SIGPIPE or block signals. */
	signal(SIGPIPE, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (malloc_conf != NULL)
		setenv("MALLOC_CONF", malloc_conf, 1);
	execv(path, argv);
	fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
	_exit(127);
}

/* Reap `pid` waiting up to timeout_ms; true when it is gone. */
static bool reap(pid_t pid, uint32_t timeout_ms)
{
	uint64_t end = now_ms() + timeout_ms;

	for (;;) {
		pid_t w = waitpid(pid, NULL, WNOHANG);
		if (w == pid || (w < 0 && errno == ECHILD))
			return true;
		if (now_ms() >= end)
			return false;
		sleep_ms(5);
	}
}

/*
 * Run argv (argv[0] is the path) with stdout and stderr captured into out[0..nbytes);
 * returns the exit status, -ETIMEDOUT (killed after timeout_ms) or -errno.
 */
static int run_capture(char *const *argv, char *out, size_t nbytes, uint32_t timeout_ms)
{
	int pipefd[2];
	size_t n = 0;
	int status, rc = 0;
	pid_t parent = getpid();

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		rc = -errno;
		close(pipefd[0]);
		close(pipefd[1]);
		return rc;
	}
	if (pid == 0)
		child_exec(parent, pipefd[1], argv[0], argv, NULL);
	close(pipefd[1]);
	uint64_t end = now_ms() + timeout_ms;
	for (;;) {
		uint64_t t = now_ms();
		if (t >= end) {
			rc = -ETIMEDOUT;
			break;
		}
		struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
		if (poll(&p, 1, (int)(end - t)) <= 0)
			continue;
		char tmp[4096];
		ssize_t r = read(pipefd[0], tmp, sizeof(tmp));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (nbytes > 0 && n < nbytes - 1) {
			size_t take = (size_t)r < nbytes - 1 - n ? (size_t)r : nbytes - 1 - n;
			memcpy(out + n, tmp, take);
			n += take;
		}
	}
	if (nbytes > 0)
		out[n] = '\0';
	close(pipefd[0]);
	if (rc == -ETIMEDOUT) {
		kill(pid, SIGKILL);
		fprintf(stderr, "redis_server: %s timed out after %u ms: killed\n", argv[0],
			timeout_ms);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return rc < 0 ? rc : -errno;
	}
	if (rc < 0)
		return rc;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Record who made `dir`, so that a later process can tell a stale one (see the header). */
static int write_owner(const char *dir)
{
	char path[PATH_MAX + 16];
	FILE *f;

	snprintf(path, sizeof(path), "%s/owner", dir);
	f = fopen(path, "we");
	if (f == NULL)
		return -errno;
	fprintf(f, "%ld\n", (long)getpid());
	return fclose(f) == 0 ? 0 : -errno;
}

/*
 * Remove our directories in `tmp` whose owner process no longer exists (a test killed by
 * SIGKILL never ran its atexit handler). A directory without an owner file, or whose owner
 * is alive (or whose pid was reused), is left alone.
 */
static void remove_stale_dirs(const char *tmp)
{
	DIR *d = opendir(tmp);
	struct dirent *e;

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		char path[PATH_MAX];
		long pid = 0;

		if (strncmp(e->d_name, DIR_PREFIX, strlen(DIR_PREFIX)) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s/owner", tmp, e->d_name);
		FILE *f = fopen(path, "re");
		if (f == NULL)
			continue;
		if (fscanf(f, "%ld", &pid) != 1)
			pid = 0;
		fclose(f);
		if (pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(path, sizeof(path), "%s/%s", tmp, e->d_name);
		rm_rf(path);
	}
	closedir(d);
}

static void cleanup_at_exit(void)
{
	for (struct shadow_test_redis *r = live_head; r != NULL; r = r->next) {
		if (r->pid > 0) {
			kill(r->pid, SIGKILL);
			waitpid(r->pid, NULL, 0);
			r->pid = -1;
		}
		rm_rf(r->dir);
	}
	live_head = NULL;
}

/* A config value is written bare: refuse what the config parser would split or unquote. */
static bool config_word_ok(const char *s)
{
	if (s == NULL || *s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (*s <= ' ' || *s == '"' || *s == '\'' || *s == '\\')
			return false;
	}
	return true;
}

static int write_conf(const struct shadow_test_redis *r)
{
	char path[PATH_MAX + 16];
	FILE *f;

	snprintf(path, sizeof(path), "%s/redis.conf", r->dir);
	f = fopen(path, "we");
	if (f == NULL)
		return -errno;
	fprintf(f, "# written by tests/support/redis_server.c\n"
		   "bind 127.0.0.1\nport %u\ndir %s\ndaemonize no\nlogfile \"\"\n"
		   "save \"\"\nappendonly no\nprotected-mode no\nenable-debug-command local\n",
		r->port, r->dir);
	if (r->password != NULL)
		fprintf(f, "requirepass %s\n", r->password);
	if (r->user != NULL)
		fprintf(f, "user %s on >%s ~* &* +@all\n", r->user, r->user_password);
	if (r->cluster)
		fprintf(f, "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-port %u\n"
			   "cluster-node-timeout 2000\ncluster-require-full-coverage no\n",
			r->bus_port);
	for (char **c = r->config; c != NULL && *c != NULL; c++)
		fprintf(f, "%s\n", *c);
	if (fclose(f) != 0)
		return -errno;
	return 0;
}

static int spawn_server(struct shadow_test_redis *r)
{
	char bin[PATH_MAX], conf[PATH_MAX + 16], logp[PATH_MAX + 16];
	int rc, logfd;
	pid_t parent = getpid();

	rc = shadow_test_redis_find(bin, sizeof(bin));
	if (rc < 0)
		return rc;
	snprintf(conf, sizeof(conf), "%s/redis.conf", r->dir);
	snprintf(logp, sizeof(logp), "%s/redis.log", r->dir);
	logfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0)
		return -errno;
	char *argv[] = { bin, conf, NULL };
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		rc = -errno;
		close(logfd);
		return rc;
	}
	if (pid == 0)
		child_exec(parent, logfd, bin, argv, r->malloc_conf);
	close(logfd);
	r->pid = pid;
	return 0;
}

/* PING on a fresh connection: 0 when the server answers (even -NOAUTH), else -errno. */
static int ping(uint16_t port)
{
	char buf[128];
	size_t n = 0;
	int fd = connect_port(port, 200);

	if (fd < 0)
		return fd;
	int rc = send_all(fd, "PING\r\n", 6);
	while (rc == 0 && n < sizeof(buf) - 1 && memchr(buf, '\n', n) == NULL) {
		ssize_t r = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
		if (r <= 0)
			rc = -ECONNRESET;
		else
			n += (size_t)r;
	}
	close(fd);
	if (rc < 0)
		return rc;
	buf[n] = '\0';
	if (strncmp(buf, "+PONG", 5) == 0 || strncmp(buf, "-NOAUTH", 7) == 0)
		return 0;
	return -EAGAIN; /* -LOADING and the like */
}

/* Wait until our child answers; -EADDRINUSE / -ECHILD if it exited, -ETIMEDOUT. */
static int wait_ready(struct shadow_test_redis *r, off_t log_from)
{
	uint64_t end = now_ms() + r->start_timeout_ms;
	int status;

	for (;;) {
		pid_t w = waitpid(r->pid, &status, WNOHANG);
		if (w == r->pid) {
			r->pid = -1;
			char *text = log_read(r, log_from);
			bool in_use = text != NULL && strstr(text, "Address already in use") != NULL;
			free(text);
			if (in_use)
				return -EADDRINUSE;
			fprintf(stderr, "redis_server: redis-server on port %u exited (status %d)\n",
				r->port, status);
			log_print_tail(r, log_from);
			return -ECHILD;
		}
		if (ping(r->port) == 0) {
			/* Ours, not a stranger that took the port: INFO names our pid. */
			char info[8192];
			if (shadow_test_redis_command(r, info, sizeof(info), "INFO", "server",
						      NULL) > 0) {
				char *p = strstr(info, "process_id:");
				if (p != NULL && atol(p + 11) == (long)r->pid)
					return 0;
			}
		}
		if (now_ms() >= end) {
			fprintf(stderr, "redis_server: no answer on port %u within %u ms\n", r->port,
				r->start_timeout_ms);
			log_print_tail(r, log_from);
			kill(r->pid, SIGKILL);
			reap(r->pid, 5000);
			r->pid = -1;
			return -ETIMEDOUT;
		}
		sleep_ms(10);
	}
}

/* Start the process; with new_ports, pick ports and retry while they turn out taken. */
static int launch(struct shadow_test_redis *r, bool new_ports)
{
	int rc = -EADDRINUSE;

	for (int attempt = 0; attempt < (new_ports ? PORT_TRIES : 1); attempt++) {
		if (new_ports) {
			int p = free_port(), q = 0;
			if (p < 0)
				return p;
			while (r->cluster && (q == 0 || q == p)) {
				q = free_port();
				if (q < 0)
					return q;
			}
			r->port = (uint16_t)p;
			r->bus_port = (uint16_t)q;
			snprintf(r->url, sizeof(r->url), "redis://127.0.0.1:%u", r->port);
			snprintf(r->addr, sizeof(r->addr), "127.0.0.1:%u", r->port);
		}
		rc = write_conf(r);
		if (rc < 0)
			return rc;
		off_t from = log_size(r);
		rc = spawn_server(r);
		if (rc < 0)
			return rc;
		rc = wait_ready(r, from);
		if (rc != -EADDRINUSE)
			return rc;
	}
	fprintf(stderr, "redis_server: %s\n",
		new_ports ? "no free port after several tries" : "port taken meanwhile");
	return rc;
}

static void redis_free(struct shadow_test_redis *r)
{
	free(r->password);
	free(r->user);
	free(r->user_password);
	free(r->malloc_conf);
	for (char **c = r->config; c != NULL && *c != NULL; c++)
		free(*c);
	free(r->config);
	free(r);
}

int shadow_test_redis_start(const struct shadow_test_redis_options *opts,
			    struct shadow_test_redis **redis_ret)
{
	struct shadow_test_redis_options o = { 0 };
	struct shadow_test_redis *r;
	char bin[PATH_MAX];
	int rc;

	if (opts != NULL)
		o = *opts;
	rc = shadow_test_redis_find(bin, sizeof(bin));
	if (rc < 0) {
		fprintf(stderr, "redis_server: %s\n", SHADOW_TEST_REDIS_MISSING);
		return rc;
	}
	if ((o.user != NULL) != (o.user_password != NULL) ||
	    (o.user != NULL && (!config_word_ok(o.user) || !config_word_ok(o.user_password))) ||
	    (o.password != NULL && !config_word_ok(o.password))) {
		fprintf(stderr, "redis_server: user needs user_password; no blanks or quotes\n");
		return -EINVAL;
	}
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->pid = -1;
	r->cluster = o.cluster;
	r->start_timeout_ms = o.start_timeout_ms != 0 ? o.start_timeout_ms
						      : START_TIMEOUT_MS_DEFAULT;
	r->password = xstrdup(o.password);
	r->user = xstrdup(o.user);
	r->user_password = xstrdup(o.user_password);
	r->malloc_conf = xstrdup(o.malloc_conf);
	size_t nc = 0;
	while (o.config != NULL && o.config[nc] != NULL)
		nc++;
	r->config = calloc(nc + 1, sizeof(char *));
	if (r->config == NULL)
		goto fail_nomem;
	for (size_t i = 0; i < nc; i++) {
		r->config[i] = strdup(o.config[i]);
		if (r->config[i] == NULL)
			goto fail_nomem;
	}
	if ((o.password != NULL && r->password == NULL) || (o.user != NULL && r->user == NULL) ||
	    (o.user_password != NULL && r->user_password == NULL) ||
	    (o.malloc_conf != NULL && r->malloc_conf == NULL))
		goto fail_nomem;

	const char *tmp = getenv("TMPDIR");
	if (tmp == NULL || *tmp == '\0')
		tmp = "/tmp";
	if (!atexit_done) {
		remove_stale_dirs(tmp);
		atexit(cleanup_at_exit);
		atexit_done = true;
	}
	snprintf(r->dir, sizeof(r->dir), "%s/" DIR_PREFIX "XXXXXX", tmp);
	if (mkdtemp(r->dir) == NULL) {
		rc = -errno;
		fprintf(stderr, "redis_server: mkdtemp %s: %s\n", r->dir, strerror(errno));
		r->dir[0] = '\0';
		goto fail;
	}
	rc = write_owner(r->dir);
	if (rc < 0) {
		rm_rf(r->dir);
		goto fail;
	}
	r->next = live_head;
	live_head = r;
	rc = launch(r, true);
	if (rc < 0) {
		shadow_test_redis_stop(r);
		return rc;
	}
	*redis_ret = r;
	return 0;

fail_nomem:
	rc = -ENOMEM;
fail:
	redis_free(r);
	return rc;
}

int shadow_test_redis_kill(struct shadow_test_redis *r)
{
	if (r->pid <= 0)
		return -ESRCH;
	kill(r->pid, SIGKILL);
	waitpid(r->pid, NULL, 0);
	r->pid = -1;
	return 0;
}

int shadow_test_redis_restart(struct shadow_test_redis *r)
{
	if (r->pid > 0)
		shadow_test_redis_kill(r);
	return launch(r, false);
}

void shadow_test_redis_stop(struct shadow_test_redis *r)
{
	if (r == NULL)
		return;
	if (r->pid > 0) {
		kill(r->pid, SIGTERM);
		if (!reap(r->pid, STOP_GRACE_MS)) {
			kill(r->pid, SIGKILL);
			waitpid(r->pid, NULL, 0);
		}
		r->pid = -1;
	}
	for (struct shadow_test_redis **p = &live_head; *p != NULL; p = &(*p)->next) {
		if (*p == r) {
			*p = r->next;
			break;
		}
	}
	rm_rf(r->dir);
	redis_free(r);
}

bool shadow_test_redis_running(struct shadow_test_redis *r)
{
	if (r->pid > 0 && waitpid(r->pid, NULL, WNOHANG) == r->pid)
		r->pid = -1;
	return r->pid > 0;
}

uint16_t shadow_test_redis_port(const struct shadow_test_redis *r)
{
	return r->port;
}

const char *shadow_test_redis_url(const struct shadow_test_redis *r)
{
	return r->url;
}

const char *shadow_test_redis_addr(const struct shadow_test_redis *r)
{
	return r->addr;
}

const char *shadow_test_redis_dir(const struct shadow_test_redis *r)
{
	return r->dir;
}

pid_t shadow_test_redis_pid(const struct shadow_test_redis *r)
{
	return r->pid;
}

/* ------------------------------------------------------------------------------------------ */
/* Talking to a server                                                                        */
/* ------------------------------------------------------------------------------------------ */

ssize_t shadow_test_redis_commandv(struct shadow_test_redis *r, int argc,
				   const char *const *argv, const size_t *lens, char *reply_ret,
				   size_t nbytes)
{
	char *reply = NULL;
	ssize_t n;
	int fd = connect_port(r->port, 2000);

	if (fd < 0)
		return fd;
	if (r->user != NULL || r->password != NULL) {
		const char *auth[3] = { "AUTH" };
		int na = 1;
		if (r->user != NULL) {
			auth[na++] = r->user;
			auth[na++] = r->user_password;
		} else {
			auth[na++] = r->password;
		}
		n = fd_command(fd, na, auth, NULL, &reply);
		if (n < 0)
			goto out;
		if (reply[0] != '+') {
			fprintf(stderr, "redis_server: AUTH refused: %s", reply);
			n = -EACCES;
			goto out;
		}
		free(reply);
		reply = NULL;
	}
	n = fd_command(fd, argc, argv, lens, &reply);
	if (n > 0 && nbytes > 0) {
		size_t take = (size_t)n < nbytes - 1 ? (size_t)n : nbytes - 1;
		memcpy(reply_ret, reply, take);
		reply_ret[take] = '\0';
	}
out:
	free(reply);
	close(fd);
	return n;
}

/* Collect the NULL-ended arguments after arg0; returns argc or -E2BIG. */
static int collect_args(const char **argv, const char *arg0, va_list ap)
{
	int argc = 0;

	for (const char *a = arg0; a != NULL; a = va_arg(ap, const char *)) {
		if (argc == ARGS_MAX)
			return -E2BIG;
		argv[argc++] = a;
	}
	return argc;
}

ssize_t shadow_test_redis_command(struct shadow_test_redis *r, char *reply_ret, size_t nbytes,
				  const char *arg0, ...)
{
	const char *argv[ARGS_MAX];
	va_list ap;

	va_start(ap, arg0);
	int argc = collect_args(argv, arg0, ap);
	va_end(ap);
	if (argc < 0)
		return argc;
	return shadow_test_redis_commandv(r, argc, argv, NULL, reply_ret, nbytes);
}

int shadow_test_redis_command_int(struct shadow_test_redis *r, long long *value_ret,
				  const char *arg0, ...)
{
	const char *argv[ARGS_MAX];
	char reply[512];
	va_list ap;

	va_start(ap, arg0);
	int argc = collect_args(argv, arg0, ap);
	va_end(ap);
	if (argc < 0)
		return argc;
	ssize_t n = shadow_test_redis_commandv(r, argc, argv, NULL, reply, sizeof(reply));
	if (n < 0)
		return (int)n;
	if (reply[0] == '-') {
		fprintf(stderr, "redis_server: %s: %s", arg0, reply);
		return -EREMOTEIO;
	}
	if (reply[0] != ':')
		return -EPROTO;
	*value_ret = strtoll(reply + 1, NULL, 10);
	return 0;
}

int shadow_test_redis_cli(struct shadow_test_redis *r, char *out_ret, size_t nbytes,
			  const char *arg0, ...)
{
	char cli[PATH_MAX], port[8];
	char *argv[ARGS_MAX + 16];
	int argc = 0, rc;
	va_list ap;

	rc = shadow_test_redis_cli_find(cli, sizeof(cli));
	if (rc < 0) {
		fprintf(stderr, "redis_server: %s\n", SHADOW_TEST_REDIS_CLI_MISSING);
		return rc;
	}
	snprintf(port, sizeof(port), "%u", r->port);
	argv[argc++] = cli;
	argv[argc++] = (char *)"-h";
	argv[argc++] = (char *)"127.0.0.1";
	argv[argc++] = (char *)"-p";
	argv[argc++] = port;
	if (r->user != NULL) {
		argv[argc++] = (char *)"--user";
		argv[argc++] = r->user;
		argv[argc++] = (char *)"--pass";
		argv[argc++] = r->user_password;
	} else if (r->password != NULL) {
		argv[argc++] = (char *)"-a";
		argv[argc++] = r->password;
	}
	argv[argc++] = (char *)"--no-auth-warning";
	va_start(ap, arg0);
	for (const char *a = arg0; a != NULL; a = va_arg(ap, const char *)) {
		if (argc == ARGS_MAX + 15) {
			va_end(ap);
			return -E2BIG;
		}
		argv[argc++] = (char *)a;
	}
	va_end(ap);
	argv[argc] = NULL;
	return run_capture(argv, out_ret, nbytes, CLI_TIMEOUT_MS);
}

/* ------------------------------------------------------------------------------------------ */
/* Clusters                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* CRC16-CCITT (XMODEM), the Redis Cluster key hash. */
static uint16_t crc16(const char *buf, size_t n)
{
	uint16_t crc = 0;

	for (size_t i = 0; i < n; i++) {
		crc ^= (uint16_t)((uint8_t)buf[i] << 8);
		for (int b = 0; b < 8; b++)
			crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc;
}

uint32_t shadow_test_cluster_keyslot(const char *key, size_t n)
{
	const char *open = memchr(key, '{', n);

	if (open != NULL) {
		size_t from = (size_t)(open - key) + 1;
		const char *close = memchr(key + from, '}', n - from);
		if (close != NULL && close > key + from) {
			key += from;
			n = (size_t)(close - key);
		}
	}
	return crc16(key, n) & (SHADOW_TEST_CLUSTER_SLOTS - 1);
}

uint32_t shadow_test_cluster_size(const struct shadow_test_cluster *c)
{
	return c->n;
}

struct shadow_test_redis *shadow_test_cluster_node(struct shadow_test_cluster *c, uint32_t i)
{
	return i < c->n ? c->nodes[i] : NULL;
}

const char *shadow_test_cluster_url(const struct shadow_test_cluster *c)
{
	return c->url;
}

const char *shadow_test_cluster_node_id(const struct shadow_test_cluster *c, uint32_t i)
{
	return i < c->n ? c->ids[i] : "";
}

static int node_index_of_id(const struct shadow_test_cluster *c, const char *id, size_t len)
{
	for (uint32_t i = 0; i < c->n; i++) {
		if (len == 40 && memcmp(c->ids[i], id, 40) == 0)
			return (int)i;
	}
	return -1;
}

/*
 * Node `via`'s view of slot ownership, from CLUSTER NODES: owner_ret[slot] = node index, or
 * -1 for an unassigned slot or an unknown node. Migration markers ("[slot->-id]") are skipped.
 */
static int cluster_owners(struct shadow_test_cluster *c, uint32_t via, int16_t *owner_ret)
{
	char *text = malloc(1 << 16);
	ssize_t n;

	if (text == NULL)
		return -ENOMEM;
	n = shadow_test_redis_command(c->nodes[via], text, 1 << 16, "CLUSTER", "NODES", NULL);
	if (n < 0 || text[0] != '$') {
		free(text);
		return n < 0 ? (int)n : -EPROTO;
	}
	for (uint32_t s = 0; s < SHADOW_TEST_CLUSTER_SLOTS; s++)
		owner_ret[s] = -1;
	char *save = NULL;
	char *line = strtok_r(strstr(text, "\r\n") + 2, "\n", &save);
	for (; line != NULL; line = strtok_r(NULL, "\n", &save)) {
		char *fsave = NULL;
		char *f = strtok_r(line, " \r", &fsave);
		int idx = f != NULL ? node_index_of_id(c, f, strlen(f)) : -1;

		for (int field = 1; (f = strtok_r(NULL, " \r", &fsave)) != NULL; field++) {
			if (field < 8 || f[0] == '[')
				continue;
			char *dash = strchr(f, '-');
			long lo = atol(f), hi = dash != NULL ? atol(dash + 1) : lo;
			for (long s = lo; s <= hi && s >= 0 && s < SHADOW_TEST_CLUSTER_SLOTS; s++)
				owner_ret[s] = (int16_t)idx;
		}
	}
	free(text);
	return 0;
}

/* The first running node (for questions any node can answer), or -ENODEV. */
static int first_running(struct shadow_test_cluster *c)
{
	for (uint32_t i = 0; i < c->n; i++) {
		if (shadow_test_redis_running(c->nodes[i]))
			return (int)i;
	}
	return -ENODEV;
}

int shadow_test_cluster_slot_owner(struct shadow_test_cluster *c, uint32_t via, uint32_t slot)
{
	int16_t *owner = malloc(SHADOW_TEST_CLUSTER_SLOTS * sizeof(*owner));
	int rc;

	if (owner == NULL)
		return -ENOMEM;
	if (slot >= SHADOW_TEST_CLUSTER_SLOTS || via >= c->n) {
		free(owner);
		return -EINVAL;
	}
	rc = cluster_owners(c, via, owner);
	if (rc == 0)
		rc = owner[slot] >= 0 ? owner[slot] : -ENOENT;
	free(owner);
	return rc;
}

int shadow_test_cluster_wait_ok(struct shadow_test_cluster *c, uint32_t timeout_ms)
{
	uint64_t end = now_ms() + timeout_ms;
	int16_t *first = malloc(2 * SHADOW_TEST_CLUSTER_SLOTS * sizeof(int16_t));
	int16_t *other = first + SHADOW_TEST_CLUSTER_SLOTS;
	char info[4096];

	if (first == NULL)
		return -ENOMEM;
	for (;;) {
		bool ok = true;
		int ref = -1;

		for (uint32_t i = 0; i < c->n && ok; i++) {
			if (!shadow_test_redis_running(c->nodes[i]))
				continue;
			ssize_t n = shadow_test_redis_command(c->nodes[i], info, sizeof(info),
							      "CLUSTER", "INFO", NULL);
			ok = n > 0 && strstr(info, "cluster_state:ok") != NULL;
			if (!ok)
				break;
			if (ref < 0) {
				ok = cluster_owners(c, i, first) == 0;
				ref = (int)i;
			} else {
				ok = cluster_owners(c, i, other) == 0 &&
				     memcmp(first, other, SHADOW_TEST_CLUSTER_SLOTS *
							  sizeof(int16_t)) == 0;
			}
		}
		if (ok && ref >= 0) {
			free(first);
			return 0;
		}
		if (now_ms() >= end) {
			fprintf(stderr, "redis_server: cluster not ok within %u ms\n", timeout_ms);
			free(first);
			return -ETIMEDOUT;
		}
		sleep_ms(50);
	}
}

int shadow_test_cluster_start(uint32_t n_masters, const struct shadow_test_redis_options *opts,
			      struct shadow_test_cluster **cluster_ret)
{
	struct shadow_test_redis_options o = { 0 };
	struct shadow_test_cluster *c;
	char cli[PATH_MAX];
	int rc;

	if (n_masters < 3 || n_masters > CLUSTER_NODES_MAX)
		return -EINVAL;
	rc = shadow_test_redis_cli_find(cli, sizeof(cli));
	if (rc < 0) {
		fprintf(stderr, "redis_server: %s\n", SHADOW_TEST_REDIS_CLI_MISSING);
		return rc;
	}
	if (opts != NULL)
		o = *opts;
	o.cluster = true;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	for (uint32_t i = 0; i < n_masters; i++) {
		rc = shadow_test_redis_start(&o, &c->nodes[i]);
		if (rc < 0)
			goto fail;
		c->n = i + 1;
		char reply[128];
		ssize_t n = shadow_test_redis_command(c->nodes[i], reply, sizeof(reply), "CLUSTER",
						      "MYID", NULL);
		if (n < 0 || strncmp(reply, "$40\r\n", 5) != 0) {
			rc = n < 0 ? (int)n : -EPROTO;
			goto fail;
		}
		memcpy(c->ids[i], reply + 5, 40);
		c->ids[i][40] = '\0';
	}
	snprintf(c->url, sizeof(c->url), "redis+cluster://%s", shadow_test_redis_addr(c->nodes[0]));

	/* redis-cli --cluster create ADDR... --cluster-replicas 0 --cluster-yes [auth] */
	char *argv[CLUSTER_NODES_MAX + 16];
	int argc = 0;
	argv[argc++] = cli;
	argv[argc++] = (char *)"--cluster";
	argv[argc++] = (char *)"create";
	for (uint32_t i = 0; i < c->n; i++)
		argv[argc++] = (char *)shadow_test_redis_addr(c->nodes[i]);
	argv[argc++] = (char *)"--cluster-replicas";
	argv[argc++] = (char *)"0";
	argv[argc++] = (char *)"--cluster-yes";
	if (o.user != NULL) {
		argv[argc++] = (char *)"--user";
		argv[argc++] = (char *)o.user;
		argv[argc++] = (char *)"--pass";
		argv[argc++] = (char *)o.user_password;
	} else if (o.password != NULL) {
		argv[argc++] = (char *)"-a";
		argv[argc++] = (char *)o.password;
	}
	argv[argc++] = (char *)"--no-auth-warning";
	argv[argc] = NULL;
	char out[8192];
	rc = run_capture(argv, out, sizeof(out), CLI_TIMEOUT_MS);
	if (rc != 0) {
		fprintf(stderr, "redis_server: redis-cli --cluster create: status %d\n%s\n", rc, out);
		rc = rc < 0 ? rc : -EIO;
		goto fail;
	}
	rc = shadow_test_cluster_wait_ok(c, 30000);
	if (rc < 0)
		goto fail;
	*cluster_ret = c;
	return 0;
fail:
	shadow_test_cluster_stop(c);
	return rc;
}

void shadow_test_cluster_stop(struct shadow_test_cluster *c)
{
	if (c == NULL)
		return;
	/* SIGTERM them all first: they shut down in parallel, not one 5 s grace after another. */
	for (uint32_t i = 0; i < c->n; i++) {
		pid_t pid = shadow_test_redis_pid(c->nodes[i]);
		if (pid > 0)
			kill(pid, SIGTERM);
	}
	for (uint32_t i = 0; i < c->n; i++)
		shadow_test_redis_stop(c->nodes[i]);
	free(c);
}

/* Print an error reply (or a failure) of a cluster command; returns the code for it. */
static int expect_ok(ssize_t n, const char *reply, const char *what)
{
	if (n < 0) {
		fprintf(stderr, "redis_server: %s: %s\n", what, strerror((int)-n));
		return (int)n;
	}
	if (reply[0] != '+') {
		fprintf(stderr, "redis_server: %s: %s", what, reply);
		return -EREMOTEIO;
	}
	return 0;
}

/* The slot's owner as the first running node sees it, checked against dst. */
static int migration_src(struct shadow_test_cluster *c, uint32_t slot, uint32_t dst)
{
	int via = first_running(c);

	if (via < 0)
		return via;
	if (slot >= SHADOW_TEST_CLUSTER_SLOTS || dst >= c->n)
		return -EINVAL;
	int src = shadow_test_cluster_slot_owner(c, (uint32_t)via, slot);
	if (src >= 0 && (uint32_t)src == dst) {
		fprintf(stderr, "redis_server: node %u already owns slot %u\n", dst, slot);
		return -EINVAL;
	}
	return src;
}

int shadow_test_cluster_migrate_begin(struct shadow_test_cluster *c, uint32_t slot, uint32_t dst)
{
	char s[16], reply[512];
	int src = migration_src(c, slot, dst);
	ssize_t n;
	int rc;

	if (src < 0)
		return src;
	snprintf(s, sizeof(s), "%u", slot);
	n = shadow_test_redis_command(c->nodes[dst], reply, sizeof(reply), "CLUSTER", "SETSLOT", s,
				      "IMPORTING", c->ids[src], NULL);
	rc = expect_ok(n, reply, "CLUSTER SETSLOT IMPORTING");
	if (rc < 0)
		return rc;
	n = shadow_test_redis_command(c->nodes[src], reply, sizeof(reply), "CLUSTER", "SETSLOT", s,
				      "MIGRATING", c->ids[dst], NULL);
	return expect_ok(n, reply, "CLUSTER SETSLOT MIGRATING");
}

/* MIGRATE `key` from node src to node dst (with the nodes' credentials). */
static int migrate_one(struct shadow_test_cluster *c, uint32_t src, uint32_t dst,
		       const char *key, size_t key_nbytes)
{
	struct shadow_test_redis *s = c->nodes[src];
	char port[8], reply[512];
	const char *argv[12] = { "MIGRATE", "127.0.0.1", port, key, "0", "5000" };
	size_t lens[12];
	int argc = 6;

	snprintf(port, sizeof(port), "%u", shadow_test_redis_port(c->nodes[dst]));
	if (s->user != NULL) {
		argv[argc++] = "AUTH2";
		argv[argc++] = s->user;
		argv[argc++] = s->user_password;
	} else if (s->password != NULL) {
		argv[argc++] = "AUTH";
		argv[argc++] = s->password;
	}
	for (int i = 0; i < argc; i++)
		lens[i] = i == 3 ? key_nbytes : strlen(argv[i]);
	ssize_t n = shadow_test_redis_commandv(s, argc, argv, lens, reply, sizeof(reply));
	if (n > 0 && strncmp(reply, "+NOKEY", 6) == 0)
		return 0;
	return expect_ok(n, reply, "MIGRATE");
}

int shadow_test_cluster_migrate_key(struct shadow_test_cluster *c, uint32_t slot, uint32_t dst,
				    const char *key)
{
	int src = migration_src(c, slot, dst);

	if (src < 0)
		return src;
	if (shadow_test_cluster_keyslot(key, strlen(key)) != slot) {
		fprintf(stderr, "redis_server: key '%s' is not in slot %u\n", key, slot);
		return -EINVAL;
	}
	return migrate_one(c, (uint32_t)src, dst, key, strlen(key));
}

int shadow_test_cluster_migrate_end(struct shadow_test_cluster *c, uint32_t slot, uint32_t dst)
{
	char s[16], reply[512];
	int src = migration_src(c, slot, dst);
	size_t cap = 1 << 16;
	char *keys;
	ssize_t n;
	int rc = 0;

	if (src < 0)
		return src;
	snprintf(s, sizeof(s), "%u", slot);
	keys = malloc(cap);
	if (keys == NULL)
		return -ENOMEM;
	/* Move what is left, 100 keys at a time, until GETKEYSINSLOT comes back empty. */
	for (;;) {
		n = shadow_test_redis_command(c->nodes[src], keys, cap, "CLUSTER", "GETKEYSINSLOT",
					      s, "100", NULL);
		if (n < 0 || (size_t)n >= cap || keys[0] != '*') {
			rc = n < 0 ? (int)n : -EPROTO;
			goto out;
		}
		long count = atol(keys + 1);
		if (count == 0)
			break;
		const char *p = strstr(keys, "\r\n") + 2;
		for (long k = 0; k < count; k++) {
			if (*p != '$') {
				rc = -EPROTO;
				goto out;
			}
			long len = atol(p + 1);
			p = strstr(p, "\r\n") + 2;
			rc = migrate_one(c, (uint32_t)src, dst, p, (size_t)len);
			if (rc < 0)
				goto out;
			p += len + 2;
		}
	}
	/* SETSLOT NODE: destination first, then the source, then everybody else. */
	uint32_t order[CLUSTER_NODES_MAX];
	uint32_t k = 0;
	order[k++] = dst;
	order[k++] = (uint32_t)src;
	for (uint32_t i = 0; i < c->n; i++) {
		if (i != dst && i != (uint32_t)src)
			order[k++] = i;
	}
	for (uint32_t i = 0; i < c->n; i++) {
		if (!shadow_test_redis_running(c->nodes[order[i]]))
			continue;
		n = shadow_test_redis_command(c->nodes[order[i]], reply, sizeof(reply), "CLUSTER",
					      "SETSLOT", s, "NODE", c->ids[dst], NULL);
		rc = expect_ok(n, reply, "CLUSTER SETSLOT NODE");
		if (rc < 0)
			goto out;
	}
out:
	free(keys);
	return rc;
}

int shadow_test_cluster_migrate_slot(struct shadow_test_cluster *c, uint32_t slot, uint32_t dst)
{
	int rc = shadow_test_cluster_migrate_begin(c, slot, dst);

	return rc < 0 ? rc : shadow_test_cluster_migrate_end(c, slot, dst);
}
