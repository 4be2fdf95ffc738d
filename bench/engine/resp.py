"""resp.py - a minimal blocking Redis (RESP2) client for the benchmark engine's own process.

The engine's baselines (baselines.py: cpu-inline, gpu-decode) fetch chunk containers from Redis
themselves, as an engine without ShadowServe would. This client exists so that those fetches
move value bytes the way the data plane does (lib/store/redis.c, docs/stores.md): a GET reads
its bulk payload with recv_into() straight into a buffer the caller owns (a numpy view of
pinned memory), with no intermediate copy of the value. Only the bytes that arrive in the
same recv() as the "$<len>" line are copied once, and that recv() is capped at
_HEADER_RECV bytes for GET replies, so at most a few dozen bytes of a value are ever copied.

DESIGN
- One socket per Redis object, blocking, TCP_NODELAY, an optional timeout (socket.timeout
  then propagates as RedisError: the connection is closed since the stream is out of step).
- One Redis object per thread: nothing is locked.
- Everything the server sends is untrusted: lines are limited to _MAX_LINE bytes, integers and
  lengths are parsed strictly (digits only, bulk lengths -1 or 0 .. _MAX_BULK), array counts
  are bounded, and a bulk payload must be followed by CRLF. A protocol violation closes the
  connection and raises RedisProtocolError.
- A GET value larger than the caller's buffer is read and discarded (the stream stays in
  step, the connection stays usable) and raises ValueTooLarge with the value's size.
- set_many() pipelines: commands go out with sendmsg() gathering the RESP headers and the
  caller's value buffers (no copy of a value on send), in batches bounded by IOV_MAX and
  bytes, and the replies of a batch are read after it is sent.
"""
import socket

__all__ = ["Redis", "RedisError", "RedisProtocolError", "ValueTooLarge"]

_MAX_LINE = 4096              # longest status/error/length line accepted
_MAX_BULK = 1 << 40           # longest bulk reply accepted at all (1 TiB)
_MAX_ARRAY = 1 << 20          # most elements of an array reply accepted
_RECV_NBYTES = 64 << 10       # read size for replies other than GET payloads
_HEADER_RECV = 32             # read size while waiting for a GET's "$<len>\r\n" line
_DISCARD_NBYTES = 1 << 20     # scratch used to skip an oversize value
_BATCH_IOV = 900              # iovecs per sendmsg() (IOV_MAX is 1024 on Linux)
_BATCH_NBYTES = 256 << 20     # bytes per pipelined batch before its replies are read
_BATCH_COMMANDS = 4096        # commands per pipelined batch (their replies fit socket buffers)


class RedisError(Exception):
    """A command failed: the server's error reply (text in .reply) or a lost connection."""

    def __init__(self, message, reply=None):
        super().__init__(message)
        self.reply = reply


class RedisProtocolError(RedisError):
    """The server sent something that is not valid RESP2 (the connection is closed)."""


class ValueTooLarge(RedisError):
    """A GET value does not fit the caller's buffer. The value was read and discarded, so the
    connection is still usable. .value_nbytes is the value's size, .buffer_nbytes the
    buffer's."""

    def __init__(self, key, value_nbytes, buffer_nbytes):
        super().__init__("value of %r is %d bytes, larger than the %d-byte buffer"
                         % (key, value_nbytes, buffer_nbytes))
        self.value_nbytes = value_nbytes
        self.buffer_nbytes = buffer_nbytes


def _arg(a):
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, int):
        return str(a).encode()
    return a


def _command_header(args):
    """RESP array header and the bulk headers of every argument but the last's payload:
    returns a list of byte strings / buffers to send in order."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _arg(a)
        n = memoryview(a).nbytes
        parts.append(b"$%d\r\n" % n)
        parts.append(a)
        parts.append(b"\r\n")
    return parts


def _parse_int(line, what):
    """Strict decimal integer (optional leading '-'), as RESP sends it."""
    s = line[1:] if line[:1] == b"-" else line
    if not s or len(s) > 19 or not s.isdigit():
        raise RedisProtocolError("bad %s %r" % (what, bytes(line[:64])))
    return int(line)


class Redis:
    """A connection to one Redis server (db selected at connect). One thread at a time."""

    def __init__(self, host="127.0.0.1", port=6379, db=0, timeout=None, password=None):
        self.host, self.port, self.db = host, int(port), int(db)
        self._sock = socket.create_connection((host, self.port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(timeout)
        self._rbuf = bytearray(_RECV_NBYTES)   # receive buffer for lines and small replies
        self._rpos = 0                         # next unread byte in _rbuf
        self._rend = 0                         # end of valid bytes in _rbuf
        self._discard = None
        try:
            if password is not None:
                self.command("AUTH", password)
            if self.db != 0:
                self.command("SELECT", self.db)
        except BaseException:
            self.close()
            raise

    # ---- lifetime ----

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fail(self, exc):
        """Close (the stream is out of step) and raise exc."""
        self.close()
        raise exc

    # ---- low-level I/O ----

    def _sockp(self):
        if self._sock is None:
            raise RedisError("connection to %s:%d is closed" % (self.host, self.port))
        return self._sock

    def _fill(self, max_nbytes=_RECV_NBYTES):
        """Read more bytes into _rbuf (compacting it first). Raises on EOF."""
        sock = self._sockp()
        if self._rpos == self._rend:
            self._rpos = self._rend = 0
        elif self._rend == len(self._rbuf):
            n = self._rend - self._rpos
            self._rbuf[:n] = self._rbuf[self._rpos:self._rend]
            self._rpos, self._rend = 0, n
        room = min(max_nbytes, len(self._rbuf) - self._rend)
        try:
            got = sock.recv_into(memoryview(self._rbuf)[self._rend:self._rend + room])
        except OSError as e:
            self._fail(RedisError("connection to %s:%d: %s" % (self.host, self.port, e)))
        if got == 0:
            self._fail(RedisError("connection to %s:%d closed by the server"
                                  % (self.host, self.port)))
        self._rend += got

    def _readline(self, max_recv=_RECV_NBYTES):
        """One CRLF-terminated line without its CRLF (bytes)."""
        while True:
            i = self._rbuf.find(b"\r\n", self._rpos, self._rend)
            if i >= 0:
                line = bytes(self._rbuf[self._rpos:i])
                self._rpos = i + 2
                return line
            if self._rend - self._rpos > _MAX_LINE:
                self._fail(RedisProtocolError("reply line longer than %d bytes" % _MAX_LINE))
            self._fill(max_recv)

    def _read_exact_into(self, mv):
        """Fill memoryview mv: buffered bytes first (copied once), the rest by recv_into."""
        n = mv.nbytes
        have = min(n, self._rend - self._rpos)
        if have:
            mv[:have] = self._rbuf[self._rpos:self._rpos + have]
            self._rpos += have
        sock = self._sockp()
        while have < n:
            try:
                got = sock.recv_into(mv[have:], n - have)
            except OSError as e:
                self._fail(RedisError("connection to %s:%d: %s" % (self.host, self.port, e)))
            if got == 0:
                self._fail(RedisError("connection to %s:%d closed in a reply"
                                      % (self.host, self.port)))
            have += got

    def _skip(self, n):
        """Read and drop n bytes."""
        if self._discard is None:
            self._discard = bytearray(_DISCARD_NBYTES)
        mv = memoryview(self._discard)
        while n > 0:
            k = min(n, len(mv))
            self._read_exact_into(mv[:k])
            n -= k

    def _expect_crlf(self):
        crlf = bytearray(2)
        self._read_exact_into(memoryview(crlf))
        if crlf != b"\r\n":
            self._fail(RedisProtocolError("bulk reply not followed by CRLF"))

    def _sendall_parts(self, parts):
        """Send a list of buffers with sendmsg(), handling partial sends."""
        sock = self._sockp()
        bufs = [memoryview(p).cast("B") for p in parts]
        i = 0
        try:
            while i < len(bufs):
                sent = sock.sendmsg(bufs[i:i + _BATCH_IOV])
                while sent > 0:
                    n = bufs[i].nbytes
                    if sent >= n:
                        sent -= n
                        i += 1
                    else:
                        bufs[i] = bufs[i][sent:]
                        sent = 0
                while i < len(bufs) and bufs[i].nbytes == 0:
                    i += 1
        except OSError as e:
            self._fail(RedisError("connection to %s:%d: %s" % (self.host, self.port, e)))

    # ---- replies ----

    def _read_reply(self, depth=0):
        """Parse one reply: str (status), int, bytes/None (bulk), list, or raise RedisError
        for an error reply (the stream stays in step)."""
        line = self._readline()
        if not line:
            self._fail(RedisProtocolError("empty reply line"))
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode("utf-8", "replace")
        if t == b"-":
            text = rest.decode("utf-8", "replace")
            raise RedisError("redis error: %s" % text, reply=text)
        if t == b":":
            return self._int_or_fail(rest, "integer reply")
        if t == b"$":
            n = self._int_or_fail(rest, "bulk length")
            if n == -1:
                return None
            if n < 0 or n > _MAX_BULK:
                self._fail(RedisProtocolError("bulk length %d out of range" % n))
            out = bytearray(n)
            self._read_exact_into(memoryview(out))
            self._expect_crlf()
            return bytes(out)
        if t == b"*":
            n = self._int_or_fail(rest, "array length")
            if n == -1:
                return None
            if n < 0 or n > _MAX_ARRAY or depth > 8:
                self._fail(RedisProtocolError("array length %d out of range" % n))
            out, err = [], None
            for _ in range(n):
                try:
                    out.append(self._read_reply(depth + 1))
                except RedisProtocolError:
                    raise
                except RedisError as e:  # an error element: keep reading the array
                    if self._sock is None:
                        raise
                    out.append(e)
                    err = err or e
            return out
        self._fail(RedisProtocolError("unknown reply type %r" % bytes(line[:64])))

    def _int_or_fail(self, s, what):
        try:
            return _parse_int(s, what)
        except RedisProtocolError as e:
            self._fail(e)

    # ---- commands ----

    def command(self, *args):
        """Send one command, return its parsed reply (error replies raise RedisError)."""
        self._sendall_parts(_command_header(args))
        return self._read_reply()

    def ping(self):
        return self.command("PING") == "PONG"

    def get(self, key):
        """The value of key as bytes, or None. (Copies: for tests and small values.)"""
        r = self.command("GET", key)
        if r is not None and not isinstance(r, bytes):
            raise RedisProtocolError("GET answered %r" % type(r).__name__)
        return r

    def get_into(self, key, buf):
        """GET key straight into buf (any writable buffer: bytearray, numpy array, a numpy
        view of pinned memory). Returns the value's size in bytes (written to
        buf[0 .. size)), or None if the key does not exist. Raises ValueTooLarge (connection
        still usable, buf untouched) if the value does not fit, RedisError for an error reply
        or a lost connection."""
        mv = memoryview(buf).cast("B")
        if mv.readonly:
            raise ValueError("get_into needs a writable buffer")
        self._sendall_parts(_command_header(("GET", key)))
        line = self._readline(_HEADER_RECV)
        if not line:
            self._fail(RedisProtocolError("empty reply line"))
        t, rest = line[:1], line[1:]
        if t == b"-":
            text = rest.decode("utf-8", "replace")
            raise RedisError("redis error: %s" % text, reply=text)
        if t != b"$":
            # A well-framed reply of the wrong type: read it whole to stay in step.
            self._rpos -= len(line) + 2
            r = self._read_reply()
            raise RedisError("GET %r answered a %s, not a bulk string" % (key, type(r).__name__))
        n = self._int_or_fail(rest, "bulk length")
        if n == -1:
            return None
        if n < 0 or n > _MAX_BULK:
            self._fail(RedisProtocolError("bulk length %d out of range" % n))
        if n > mv.nbytes:
            self._skip(n)
            self._expect_crlf()
            raise ValueTooLarge(key, n, mv.nbytes)
        self._read_exact_into(mv[:n])
        self._expect_crlf()
        return n

    def set_many(self, items, pipeline=True, ex=None):
        """SET each (key, value) of items (value: any bytes-like buffer, sent without a copy).
        With pipeline, commands go out in large batches before their replies are read.
        Raises RedisError on the first error reply (after reading every reply of its batch,
        so the connection stays usable)."""
        items = list(items)
        if not pipeline:
            for k, v in items:
                args = ("SET", k, v) if ex is None else ("SET", k, v, "EX", ex)
                self.command(*args)
            return len(items)
        i = 0
        while i < len(items):
            parts, nbytes, count = [], 0, 0
            while i < len(items) and (count == 0 or (
                    count < _BATCH_COMMANDS and nbytes < _BATCH_NBYTES)):
                k, v = items[i]
                args = ("SET", k, v) if ex is None else ("SET", k, v, "EX", ex)
                p = _command_header(args)
                parts += p
                nbytes += memoryview(v).nbytes
                count += 1
                i += 1
            self._sendall_parts(parts)
            err = None
            for _ in range(count):
                try:
                    r = self._read_reply()
                    if r != "OK":
                        err = err or RedisError("SET answered %r" % (r,))
                except RedisProtocolError:
                    raise
                except RedisError as e:
                    if self._sock is None:
                        raise
                    err = err or e
            if err is not None:
                raise err
        return len(items)

    def exists_many(self, keys):
        """[bool] whether each key exists (one pipelined EXISTS per key)."""
        keys = list(keys)
        out = []
        for i in range(0, len(keys), 1024):
            batch = keys[i:i + 1024]
            parts = []
            for k in batch:
                parts += _command_header(("EXISTS", k))
            self._sendall_parts(parts)
            for _ in batch:
                r = self._read_reply()
                if not isinstance(r, int) or r not in (0, 1):
                    raise RedisError("EXISTS answered %r" % (r,))
                out.append(r == 1)
        return out

    def delete(self, *keys):
        return self.command("DEL", *keys)

    def flushdb(self):
        r = self.command("FLUSHDB")
        if r != "OK":
            raise RedisError("FLUSHDB answered %r" % (r,))
