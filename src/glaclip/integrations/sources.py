"""Where the Label Studio backend reads task images from, and what it refuses.

The backend is a server: whoever can reach it names the images. So the operator, not a request,
decides every host and folder it reads from and every host a credential goes to:

- Label Studio's own files (`/data/upload/...`, or absolute URLs on its origin) come from the URL the
  operator named (`url`: --url / LABEL_STUDIO_URL), with the operator's API key or, without one, the
  token Label Studio sent for the project on /setup. The hostname /setup sends is never used.
- Other http(s) URLs are fetched only from hosts the operator allowed (`allow_hosts`), with no
  credential.
- Local files are read only under folders the operator allowed (`allow_roots`, none by default), and
  only regular files: every refusal reads the same, so a task cannot learn which files exist.
- Every read has a total deadline (`deadline` seconds, redirects and the token exchange included)
  and a size limit; redirects are followed only to allowed hosts, and carry the credential only
  when they stay on Label Studio's origin.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time
import urllib.parse
from typing import Any

from ..errors import GlaclipError, one_line

MAX_DOWNLOAD = 512 * 2**20  # bytes of one image, fetched or read from disk
DEADLINE = 60.0  # seconds for one image in all (connect, redirects, token exchange, every byte)
MAX_REDIRECTS = 5
LS_PREFIXES = ("/data/", "/tasks/", "/storage-data/")  # paths Label Studio serves task files under
REDIRECTS = (301, 302, 303, 307, 308)

Origin = tuple  # (scheme, host, port)


def origin(url: str) -> Origin | None:
    """(scheme, lower-case host, port) of an http(s) URL; None for anything else."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def _host_rule(spec: str) -> tuple[str | None, str, int | None]:
    """--allow-host HOST, HOST:PORT or SCHEME://HOST[:PORT] -> (scheme or None, host, port or None)."""
    text = spec.strip()
    parts = urllib.parse.urlsplit(text if "//" in text else "//" + text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme = parts.scheme.lower() or None
    if not parts.hostname or port == -1 or scheme not in (None, "http", "https") or parts.path not in ("", "/"):
        raise GlaclipError(f"--allow-host {spec!r}: give a host name, HOST:PORT or http(s)://HOST[:PORT]")
    return scheme, parts.hostname.lower(), port


class ImageSource:
    """Task image values -> image bytes, under the operator's rules (module docstring).

    url: Label Studio's URL; api_key: its API key (a legacy token or a personal access token), sent
    only to `url`; allow_hosts: other hosts URLs may be fetched from; allow_roots: folders local files
    may be read from; deadline, max_bytes: per image."""

    def __init__(self, url: str | None = None, api_key: str | None = None, allow_hosts=(), allow_roots=(),
                 deadline: float = DEADLINE, max_bytes: int = MAX_DOWNLOAD):
        self.url = (url or "").strip().rstrip("/") or None
        self.api_key = api_key or None
        if self.url is not None and origin(self.url) is None:
            raise GlaclipError(f"--url {url!r}: give Label Studio's http(s) address, e.g. http://localhost:8080")
        if self.api_key and self.url is None:
            raise GlaclipError("an API key (--api-key / LABEL_STUDIO_API_KEY) is sent only to the Label Studio "
                               "URL you name: give --url or LABEL_STUDIO_URL too")
        self.hosts = [_host_rule(h) for h in allow_hosts]
        self.roots = []
        for root in allow_roots:
            real = os.path.realpath(os.path.expanduser(str(root)))
            if not os.path.isdir(real):
                raise GlaclipError(f"--allow-root {root}: not a folder")
            self.roots.append(real)
        self.deadline, self.max_bytes = float(deadline), int(max_bytes)
        self._tokens: dict[str, str] = {}  # project -> the token /setup sent (used without an API key)
        self._access: dict[str, str] = {}  # personal access token -> short-lived access token
        self._lock = threading.Lock()

    def remember(self, project: str, token: str | None) -> None:
        """The token /setup sent for a project ("ID.TIMESTAMP"); used only toward `url`, only without a key."""
        if token:
            with self._lock:
                self._tokens[str(project).split(".")[0]] = str(token)

    def describe(self) -> str:
        """What this source reads, for the server's first lines."""
        ls = f"Label Studio files from {self.url}" if self.url else "no Label Studio files (no --url)"
        hosts = ", ".join(h for _, h, _ in self.hosts) or "none"
        roots = ", ".join(self.roots) or "none"
        return f"{ls}; other URLs from hosts: {hosts}; local files under: {roots}"

    def read(self, value: Any, project: str | None = None) -> bytes:
        """A task's image value -> its bytes."""
        if not isinstance(value, str) or not value.strip():
            raise GlaclipError(f"the image field is {value!r}, not a URL or path")
        parts = urllib.parse.urlsplit(value)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch(value, project)
        if value.startswith(LS_PREFIXES):
            if self.url is None:
                raise GlaclipError(f"{value} is a file on the Label Studio server: start the backend with --url "
                                   "(or LABEL_STUDIO_URL) naming it")
            return self._fetch(self.url + value, project)
        if len(scheme) > 1 and scheme != "file":
            raise GlaclipError(f"cannot read {scheme}:// URLs ({value}); let Label Studio serve the files "
                               "(pre-signed URLs or its /data/ URLs)")
        path = urllib.parse.unquote(parts.path) if scheme == "file" else value
        return self._read_local(path, value)

    # --- local files ---------------------------------------------------------------------------------------

    def _read_local(self, path: str, value: str) -> bytes:
        refused = GlaclipError(f"{value} is not read: local files are read only as regular files of at most "
                               f"{self.max_bytes // 2**20} MiB under an --allow-root folder")
        real = os.path.realpath(path)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            raise refused
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(real, flags)  # non-blocking: a named pipe must not hold the request
        except OSError:
            raise refused from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
                raise refused
            os.set_blocking(fd, True)
            chunks, size = [], 0
            while size <= self.max_bytes:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError:
            raise refused from None
        finally:
            os.close(fd)
        if size > self.max_bytes:
            raise refused
        return b"".join(chunks)

    # --- URLs ------------------------------------------------------------------------------------------------

    def _allowed(self, where: Origin) -> bool:
        if self.url is not None and where == origin(self.url):
            return True
        return any(host == where[1] and scheme in (None, where[0]) and port in (None, where[2])
                   for scheme, host, port in self.hosts)

    def _key(self, project: str | None) -> str | None:
        if self.api_key:
            return self.api_key
        with self._lock:
            return self._tokens.get(str(project or "").split(".")[0])

    def _fetch(self, url: str, project: str | None) -> bytes:
        deadline = time.monotonic() + self.deadline
        home = origin(self.url) if self.url else None
        key = self._key(project) if home else None
        where = origin(url)
        if where is None or not self._allowed(where):
            raise GlaclipError(f"{url} is not fetched: URLs are fetched only from Label Studio (--url) and "
                               "the hosts given with --allow-host")
        retried = False
        for _ in range(MAX_REDIRECTS + 1):
            where = origin(url)
            headers = {"Authorization": self._authorization(key, deadline)} if key and where == home else {}
            status, reason, location, data = self._exchange("GET", url, headers, None, deadline)
            if status in REDIRECTS and location:
                target = urllib.parse.urljoin(url, location)
                hop = origin(target)
                if hop is None or not self._allowed(hop):
                    raise GlaclipError(f"{url} redirects to {target}, which is not fetched: allow its host "
                                       "with --allow-host")
                url = target
                continue
            if status == 401 and not retried and headers and _is_jwt(key):  # the access token expired
                retried = True
                with self._lock:
                    self._access.pop(key, None)
                continue
            if status != 200:
                hint = " (check the API key: --api-key or LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
                raise GlaclipError(f"cannot fetch {url}: HTTP {status} {reason}{hint}")
            return data
        raise GlaclipError(f"cannot fetch {url}: more than {MAX_REDIRECTS} redirects")

    def _authorization(self, key: str, deadline: float) -> str:
        """A legacy token as `Token KEY`; a personal access token (a JWT) traded at Label Studio for an
        access token."""
        if not _is_jwt(key):
            return f"Token {key}"
        with self._lock:
            access = self._access.get(key)
        if access is None:
            refresh = f"{self.url}/api/token/refresh/"
            status, reason, _, data = self._exchange("POST", refresh, {"Content-Type": "application/json"},
                                                     json.dumps({"refresh": key}).encode(), deadline)
            try:
                if status != 200:
                    raise ValueError(f"HTTP {status} {reason}")
                access = json.loads(data)["access"]
                if not isinstance(access, str):
                    raise ValueError("no access token in the answer")
            except (ValueError, KeyError, TypeError) as exc:
                raise GlaclipError(f"cannot trade the personal access token for an access token at {refresh}: "
                                   f"{one_line(exc)} (check the API key: --api-key or LABEL_STUDIO_API_KEY)") \
                    from None
            with self._lock:
                self._access[key] = access
        return f"Bearer {access}"

    def _exchange(self, method: str, url: str, headers: dict, body: bytes | None,
                  deadline: float) -> tuple[int, str, str | None, bytes]:
        """One HTTP request, no redirect followed, within `deadline`: (status, reason, Location, body)."""
        parts = urllib.parse.urlsplit(url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        kind = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
        timer = None
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn = kind(host, parts.port, timeout=left)
            try:
                conn.connect()
                # the socket timeout bounds each read; the timer bounds them all (a server may send 1 byte/s)
                timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _cut, (conn,))
                timer.daemon = True
                timer.start()
                target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                if resp.status != 200:
                    return resp.status, resp.reason, resp.getheader("Location"), b""
                length = resp.getheader("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise GlaclipError(f"{url} is over {self.max_bytes // 2**20} MiB")
                chunks, size = [], 0
                while chunk := resp.read1(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise GlaclipError(f"{url} is over {self.max_bytes // 2**20} MiB")
                    chunks.append(chunk)
                if time.monotonic() >= deadline:
                    raise TimeoutError
                return resp.status, resp.reason, None, b"".join(chunks)
            finally:
                if timer is not None:
                    timer.cancel()
                conn.close()
        except GlaclipError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if time.monotonic() >= deadline - 0.05 or isinstance(exc, TimeoutError):
                raise GlaclipError(f"cannot fetch {url}: no complete answer within {self.deadline:g} s") from None
            raise GlaclipError(f"cannot fetch {url}: {one_line(getattr(exc, 'reason', None) or exc)}") from None


def _cut(conn: http.client.HTTPConnection) -> None:
    """Unblock a read past the deadline (shutting the socket down wakes a thread blocked in recv)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _is_jwt(key: str | None) -> bool:
    return bool(key) and key.count(".") == 2
