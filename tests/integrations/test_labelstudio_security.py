"""The Label Studio backend as a hostile caller meets it: credentials go only to the host the operator
named, no redirect carries them elsewhere, local files only under allowed roots (one message for every
refusal), every outside read within a total deadline and a size limit, and no bad task (a named pipe,
a server sending 1 byte/s) holds up the other requests or /health. Servers here listen on loopback."""

import http.client
import http.server
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import run_cli, structured_image
from PIL import Image

from glaclip import GlaclipError
from glaclip.integrations.labelstudio import Backend
from glaclip.integrations.sources import ImageSource

pytest.importorskip("fastapi")

BRUSH = ('<View><Image name="img" value="$image"/><BrushLabels name="tag" toName="img">'
         '<Label value="sky"/><Label value="road"/></BrushLabels></View>')
TOKEN = "0123456789abcdef0123456789abcdef01234567"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Serves `png` at /img.png (and /data/upload/img.png) to anyone; /data/upload/secret.png only with
    the token; /data/hop/N redirects to `routes[N]`; records every request's path and Authorization."""

    def do_GET(self):
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/data/hop/"):
            self.send_response(302)
            self.send_header("Location", srv.routes[int(self.path[10:])])
            self.end_headers()
            return
        authorised = self.headers.get("Authorization") == f"Token {TOKEN}"
        ok = self.path in ("/img.png", "/data/upload/img.png") or (self.path == "/data/upload/secret.png"
                                                                     and authorised)
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(srv.png) if ok else 0))
        self.end_headers()
        if ok:
            self.wfile.write(srv.png)

    def do_POST(self):
        self.server.seen.append((self.path, self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()))
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("lssec") / "a.png"
    Image.fromarray(structured_image(48, 64, seed=5)).save(path)
    return path.read_bytes()


def _server(png):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.png, srv.seen, srv.routes = png, [], {}
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    return srv


@pytest.fixture
def servers(png):
    """Three hosts on loopback: Label Studio, a storage host, an attacker's."""
    made = [_server(png) for _ in range(3)]
    yield made
    for srv in made:
        srv.shutdown()
        srv.server_close()


class Trickle:
    """A server that answers every connection 1 byte at a time, `gap` seconds apart, for ever; in the
    headers (`where="head"`) or in a long body."""

    def __init__(self, where="body", gap=0.2):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.where, self.gap, self.stop, self.conns = where, gap, threading.Event(), 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
        data = head * 1000 if self.where == "head" else head + b"x" * 1000000
        sent = 0 if self.where == "head" else len(head)
        if sent:
            conn.sendall(head)
        try:
            while not self.stop.is_set() and sent < len(data):
                conn.sendall(data[sent:sent + 1])
                sent += 1
                time.sleep(self.gap)
        except OSError:
            pass
        conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def task(i, image):
    return {"id": i, "data": {"image": image}}


def predict(backend, *images, project="4.1"):
    return backend.predict({"tasks": [task(i, im) for i, im in enumerate(images, 1)], "label_config": BRUSH,
                            "project": project})["results"]


# --- credentials -----------------------------------------------------------------------------------------------

def test_an_api_key_needs_the_operators_url():
    for key in (TOKEN, "aaa.bbb.ccc"):
        with pytest.raises(GlaclipError, match="give --url or LABEL_STUDIO_URL"):
            ImageSource(api_key=key)
    with pytest.raises(GlaclipError, match="--url 'ftp://x'"):
        ImageSource("ftp://x")


def test_setup_cannot_point_the_key_or_the_images_elsewhere(segmenter, servers):
    ls, _, evil = servers
    lines = []
    backend = Backend(segmenter, ImageSource(ls.url, TOKEN), echo=lines.append)
    backend.setup({"project": "4.1", "schema": BRUSH, "hostname": evil.url, "access_token": "evil-token"})
    assert any(f"/setup names Label Studio at {evil.url}" in ln for ln in lines)
    first, second = predict(backend, "/data/upload/secret.png", evil.url + "/data/upload/img.png")
    assert "result" in first and ls.seen == [("/data/upload/secret.png", f"Token {TOKEN}")]
    assert second["error"].startswith(f"task 2: {evil.url}/data/upload/img.png is not fetched")
    assert evil.seen == []  # never asked, with or without a key


def test_without_a_url_setup_gives_no_host(segmenter, servers):
    ls, _, evil = servers
    backend = Backend(segmenter, ImageSource())
    backend.setup({"project": "4.1", "schema": BRUSH, "hostname": evil.url, "access_token": TOKEN})
    (err,) = predict(backend, "/data/upload/img.png")
    assert "start the backend with --url" in err["error"] and evil.seen == []


def test_setup_token_goes_only_to_the_operators_url(segmenter, servers):
    ls, storage, evil = servers
    backend = Backend(segmenter, ImageSource(ls.url, allow_hosts=[storage.url]))
    backend.setup({"project": "4.1", "schema": BRUSH, "access_token": TOKEN})
    done = predict(backend, "/data/upload/secret.png", storage.url + "/img.png")
    assert all("result" in r for r in done)
    assert ls.seen == [("/data/upload/secret.png", f"Token {TOKEN}")] and storage.seen == [("/img.png", None)]


def test_redirects_carry_no_key_to_another_host(segmenter, servers):
    ls, storage, evil = servers
    ls.routes = {1: storage.url + "/img.png", 2: evil.url + "/img.png", 3: "/data/upload/secret.png",
                 4: "file:///etc/passwd"}
    backend = Backend(segmenter, ImageSource(ls.url, TOKEN, allow_hosts=[storage.url.split("//")[1]]))
    to_storage, to_evil, same_host, to_file = predict(backend, "/data/hop/1", "/data/hop/2", "/data/hop/3",
                                                        "/data/hop/4")
    assert "result" in to_storage and storage.seen == [("/img.png", None)]
    assert "redirects to " + evil.url + "/img.png, which is not fetched" in to_evil["error"] and evil.seen == []
    assert "result" in same_host and ("/data/upload/secret.png", f"Token {TOKEN}") in ls.seen
    assert "which is not fetched" in to_file["error"]


def test_personal_access_token_is_traded_only_at_the_operators_url(segmenter, servers):
    ls, _, evil = servers
    backend = Backend(segmenter, ImageSource(ls.url, "aaa.bbb.ccc"))
    backend.setup({"project": "4.1", "schema": BRUSH, "hostname": evil.url})
    (err,) = predict(backend, "/data/upload/secret.png")
    assert "cannot trade the personal access token" in err["error"] and f"{ls.url}/api/token/refresh/" in err["error"]
    assert ls.seen == [("/api/token/refresh/", json.dumps({"refresh": "aaa.bbb.ccc"}))] and evil.seen == []


# --- local files -----------------------------------------------------------------------------------------------

def test_local_files_only_under_allowed_roots_one_message(segmenter, tmp_path, png):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "ok.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    (root / "link.png").symlink_to(outside / "secret.png")
    os.mkfifo(root / "pipe.png")
    (root / "dir.png").mkdir()
    refused = {"missing": root / "nope.png", "outside": outside / "secret.png", "symlink out": root / "link.png",
               "fifo": root / "pipe.png", "folder": root / "dir.png", "escape": root / ".." / "outside" / "secret.png"}
    backend = Backend(segmenter, ImageSource(allow_roots=[root]))
    good, *errors = predict(backend, str(root / "ok.png"), *map(str, refused.values()))
    assert "result" in good
    shapes = {r["error"].split(": ", 1)[1].replace(str(p), "PATH") for r, p in zip(errors, refused.values())}
    assert len(shapes) == 1 and shapes.pop().startswith("PATH is not read: local files are read only")
    (none,) = predict(Backend(segmenter, ImageSource()), str(root / "ok.png"))  # no root: nothing is read
    assert "is not read" in none["error"]
    with pytest.raises(GlaclipError, match="--allow-root .*: not a folder"):
        ImageSource(allow_roots=[root / "nope"])


def test_a_named_pipe_holds_up_no_other_task(segmenter, tmp_path, png):
    (tmp_path / "ok.png").write_bytes(png)
    os.mkfifo(tmp_path / "pipe.png")
    backend = Backend(segmenter, ImageSource(allow_roots=[tmp_path]))
    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(predict, backend, str(tmp_path / "pipe.png"))
        try:
            (err,) = stuck.result(timeout=30)
        finally:  # on a backend that opened the pipe, a writer lets it go
            if not stuck.done():
                with open(tmp_path / "pipe.png", "wb"):
                    pass
        assert "is not read" in err["error"]
        (ok,) = pool.submit(predict, backend, str(tmp_path / "ok.png")).result(timeout=60)
    assert "result" in ok


# --- deadlines and sizes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["body", "head"])
def test_a_slow_server_meets_a_total_deadline(where):
    slow = Trickle(where)
    try:
        source = ImageSource(slow.url, deadline=1.5)
        start = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(source.read, "/data/upload/slow.png")
            with pytest.raises(GlaclipError, match=r"no complete answer within 1.5 s"):
                job.result(timeout=15)
        assert time.monotonic() - start < 4
    finally:
        slow.close()


def test_size_limit(servers, png):
    ls = servers[0]
    with pytest.raises(GlaclipError, match="is over 0 MiB"):
        ImageSource(ls.url, max_bytes=len(png) - 1).read("/data/upload/img.png")
    assert ImageSource(ls.url, max_bytes=len(png)).read("/data/upload/img.png") == png


def test_health_answers_while_45_tasks_wait_on_a_slow_server(segmenter):
    """45 /predict calls, each fetching from a server that sends 1 byte every 0.2 s, against the real
    uvicorn server: /health answers at once throughout, and every call ends at the deadline."""
    uvicorn = pytest.importorskip("uvicorn")
    from glaclip.integrations.labelstudio import create_app

    slow = Trickle("body")
    backend = Backend(segmenter, ImageSource(slow.url, deadline=4))
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]

        def call(method, path, body=None, timeout=60):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.request(method, path, body=json.dumps(body) if body else None,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        body = {"tasks": [task(1, "/data/upload/slow.png")], "label_config": BRUSH}
        with ThreadPoolExecutor(45) as pool:
            start = time.monotonic()
            calls = [pool.submit(call, "POST", "/predict", body) for _ in range(45)]
            while slow.conns < 40 and time.monotonic() - start < 10:
                time.sleep(0.05)
            for _ in range(5):
                t = time.monotonic()
                assert call("GET", "/health", timeout=5)[1]["status"] == "UP"
                assert time.monotonic() - t < 1.0
                time.sleep(0.2)
            answers = [c.result(timeout=60) for c in calls]
        elapsed = time.monotonic() - start
        assert all(status == 200 and "no complete answer within 4 s" in got["results"][0]["error"]
                   for status, got in answers)
        assert elapsed < 30  # 45 deadlines of 4 s, 40 at a time
    finally:
        slow.close()
        server.should_exit = True
        thread.join(10)


# --- the command line ------------------------------------------------------------------------------------------

def test_cli_key_without_url_is_one_line_before_models_load(tmp_path):
    done = run_cli("labelstudio", "--clip-weights", tmp_path / "no.pt",
                   env={k: v for k, v in dict(os.environ, LABEL_STUDIO_API_KEY=TOKEN).items()
                        if k != "LABEL_STUDIO_URL"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("glaclip: error: ") and "give --url or LABEL_STUDIO_URL" in done.stderr


@pytest.mark.parametrize("args, words", [
    (["--api-key", TOKEN], "give --url or LABEL_STUDIO_URL"),
    (["--allow-root", "/nonexistent/glaclip"], "--allow-root /nonexistent/glaclip: not a folder"),
    (["--url", "http://127.0.0.1:1", "--allow-host", "ftp://x"], "--allow-host 'ftp://x'"),
    (["--url", "localhost:8080"], "--url 'localhost:8080': give Label Studio's http(s) address"),
])
def test_cli_refuses_before_models_load(args, words, monkeypatch):
    from typer.testing import CliRunner

    from glaclip import Segmenter, cli

    monkeypatch.setattr(Segmenter, "from_pretrained", None)  # no model is loaded before saying so
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    done = CliRunner().invoke(cli.app, ["labelstudio", *args])
    assert isinstance(done.exception, GlaclipError) and words in str(done.exception), done.output
