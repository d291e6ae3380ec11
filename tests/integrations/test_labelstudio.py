"""The Label Studio ML backend: its protocol through FastAPI's TestClient (label configs, the brush
RLE, predictions decoded back to glaclip's label map, one error per failing task, images fetched over
HTTP with Label Studio's tokens), Label Studio's own brush encoder and decoder, and end to end against
a real Label Studio server started by the test.

Label Studio (`pip install label-studio`, which pins numpy < 2.3) lives in a venv of its own: the
tests find its executable in $GLACLIP_LABEL_STUDIO (e.g. /work/venvs/ls/bin/label-studio) or on PATH,
run its label_studio_sdk with the python beside it, and skip, saying why, without it."""

import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_cli, structured_image
from PIL import Image, ImageDraw

from glaclip import GlaclipError
from glaclip.integrations.labelstudio import Backend, brush_rle, model_version, parse_label_config
from glaclip.integrations.sources import ImageSource

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # FastAPI's TestClient, and the end-to-end test's API client
from fastapi.testclient import TestClient  # noqa: E402

LS_ENV = "GLACLIP_LABEL_STUDIO"
BRUSH = ('<View><Image name="img" value="$image"/><BrushLabels name="tag" toName="img">'
         '<Label value="sky"/><Label value="road; street"/><Label value="car" hint="vehicle"/>'
         '<Label value="tree"/><Label value="person"/></BrushLabels></View>')
POLYGONS = BRUSH.replace("BrushLabels", "PolygonLabels")
TOKEN = "0123456789abcdef0123456789abcdef01234567"


def decode_brush(rle: list[int]) -> np.ndarray:
    """Label Studio's brush "rle" read bit by bit (header: count 32, word size - 1 5, four field
    sizes - 1 of 4 bits; tokens: repeat flag, field index 2, count - 1, then one value or count values),
    -> the values; only zero padding (1 to 8 bits) may follow."""
    bits = "".join(f"{b:08b}" for b in rle)
    pos = 0

    def take(n):
        nonlocal pos
        pos += n
        return int(bits[pos - n:pos], 2)

    num, word = take(32), take(5) + 1
    sizes = [take(4) + 1 for _ in range(4)]
    out: list[int] = []
    while len(out) < num:
        repeat = take(1)
        count = take(sizes[take(2)]) + 1
        out += [take(word)] * count if repeat else [take(word) for _ in range(count)]
    assert len(out) == num and 1 <= len(bits) - pos <= 8 and set(bits[pos:]) <= {"0"}
    return np.array(out, np.uint8)


def brush_mask(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    rgba = decode_brush(region["value"]["rle"]).reshape(h, w, 4)
    assert (rgba == rgba[..., :1]).all() and set(np.unique(rgba)) <= {0, 255}  # all four channels alike
    return rgba[..., 3] == 255


def label_map(result: list[dict], labels: list[str], shape) -> np.ndarray:
    """The label map a brush prediction paints (each pixel in exactly one region)."""
    out = np.full(shape, -1)
    for region in result:
        mask = brush_mask(region)
        assert (out[mask] == -1).all()
        out[mask] = labels.index(region["value"]["brushlabels"][0])
    assert (out >= 0).all()
    return out


def ls_python() -> Path | None:
    exe = os.environ.get(LS_ENV) or shutil.which("label-studio")
    python = Path(exe).parent / "python" if exe else None
    return python if python is not None and python.exists() else None


def ls_sdk(code: str, payload):
    """Run `code` with Label Studio's python (its label_studio_sdk); payload in as `data`, `out` back as JSON."""
    python = ls_python()
    if python is None:
        pytest.skip(f"Label Studio is not installed: set {LS_ENV}=/path/to/venv/bin/label-studio or put it on PATH")
    script = f"import json, sys\nimport numpy as np\ndata = json.load(sys.stdin)\n{code}\nprint(json.dumps(out))"
    done = subprocess.run([str(python), "-c", script], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def masks_to_check():
    rng = np.random.default_rng(0)
    rect = np.zeros((120, 160), bool)
    rect[30:90, 20:150] = True
    return {"empty": np.zeros((5, 7), bool), "full 300x300 (runs over 65536 values)": np.ones((300, 300), bool),
            "full 1x65 (byte-aligned: a full zero byte of padding)": np.ones((1, 65), bool),
            "one pixel": np.eye(1, 9, 4, dtype=bool), "rectangle": rect, "noise": rng.random((37, 53)) > 0.5,
            "sparse": rng.random((90, 300)) > 0.98, "stripes of 2, 4, 64 pixels": np.tile(
                np.repeat(np.arange(35) % 2 == 0, [2, 4, 64, 2, 4] * 7), (3, 1))}


# --- label configs ---------------------------------------------------------------------------------

def test_label_config_classes_and_synonyms():
    xml = ('<View><Text name="t" value="$text"/><Labels name="ner" toName="t"><Label value="x"/></Labels>'
           '<Image name="photo" value="$img"/><RectangleLabels name="box" toName="photo"><Label value="car"/>'
           '</RectangleLabels><BrushLabels name="brush" toName="t,photo"><Label value="sky"/>'
           '<Label value="road; street"/><Label value="car" hint="vehicle; Car;  motor   car"/></BrushLabels></View>')
    cfg = parse_label_config(xml)
    assert (cfg.kind, cfg.from_name, cfg.to_name, cfg.data_key) == ("brushlabels", "brush", "photo", "img")
    assert cfg.labels == ("sky", "road; street", "car")
    assert cfg.queries.synonyms == (("sky",), ("road", "street"), ("car", "vehicle", "motor car"))
    poly = parse_label_config(POLYGONS)
    assert poly.kind == "polygonlabels" and poly.labels[:3] == ("sky", "road; street", "car")


@pytest.mark.parametrize("xml, message", [
    ("<View><Image", "not valid XML"),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i"><Label value="a"/>'
     '</RectangleLabels></View>', "no BrushLabels or PolygonLabels"),
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"/></View>', "no <Label>"),
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"><Label value="a"/><Label value="A"/>'
     '</BrushLabels></View>', "duplicate class name"),
    ('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"><Label value=" ; "/></BrushLabels>'
     '</View>', "empty class name"),
    ('<View><Image name="i" value="https://x/y.png"/><BrushLabels name="b" toName="i"><Label value="a"/>'
     '</BrushLabels></View>', "task data field"),
])
def test_label_config_errors(xml, message):
    with pytest.raises(GlaclipError, match=message):
        parse_label_config(xml)


# --- the brush RLE ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(masks_to_check()))
def test_brush_rle_decodes_to_the_mask(name):
    mask = masks_to_check()[name]
    rle = brush_rle(mask)
    assert all(isinstance(b, int) and 0 <= b < 256 for b in rle)
    np.testing.assert_array_equal(decode_brush(rle), np.repeat(np.where(mask.ravel(), 255, 0), 4))


def test_brush_rle_is_label_studios_own():
    """Byte for byte label_studio_sdk's mask2rle, and its decode_rle gives the mask back."""
    masks = masks_to_check()
    code = ("from label_studio_sdk.converter.brush import decode_rle, mask2rle\n"
            "out = [[[int(b) for b in mask2rle(np.array(m, np.uint8) * 255)], decode_rle(r).tolist()]"
            " for m, r in data]")
    ref = ls_sdk(code, [[m.astype(int).tolist(), brush_rle(m)] for m in masks.values()])
    for (name, mask), (theirs, decoded) in zip(masks.items(), ref):
        assert brush_rle(mask) == theirs, name
        np.testing.assert_array_equal(np.reshape(decoded, mask.shape + (4,))[..., 3], np.where(mask, 255, 0))


# --- the protocol ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ls") / "street.png"
    Image.fromarray(structured_image(96, 128, seed=3)).save(path)
    return path


@pytest.fixture(scope="module")
def reference(segmenter, image_file):
    """glaclip's own result for the image and the configs' classes (BRUSH and POLYGONS have the same)."""
    return segmenter.predict(image_file, parse_label_config(BRUSH).queries)


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    """The folder every tmp_path of the session lies under: the backend's --allow-root in these tests."""
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def backend(segmenter, tmp_root):
    lines: list[str] = []
    b = Backend(segmenter, ImageSource(allow_roots=[tmp_root]), echo=lines.append)
    b.lines = lines
    return b


@pytest.fixture(scope="module")
def client(backend):
    from glaclip.integrations.labelstudio import create_app

    return TestClient(create_app(backend))


def test_routes_label_studio_calls(client, backend):
    for path in ("/", "/health"):
        got = client.get(path)
        assert got.status_code == 200 and got.json()["status"] == "UP"
    assert client.post("/setup", json={"project": "3.1700000000", "schema": BRUSH, "hostname": "http://ls:8080",
                                       "access_token": "t"}).json() == {"model_version": backend.version}
    assert backend.lines[-1] == "project 3.1700000000: brushlabels 'tag' with 5 classes: sky, road; street, car, " \
                                "tree, person"
    bad = client.post("/setup", json={"project": "3.1", "schema": "<View/>"})
    assert bad.status_code == 422 and "no BrushLabels" in bad.json()["error"]  # Label Studio refuses to connect
    assert client.get("/versions").json()["versions"] == [backend.version]
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).status_code == 200
    assert client.post("/validate", json={"config": BRUSH}).json() == {"status": "ok"}
    assert client.post("/validate", json={"config": "<View/>"}).status_code == 422


def test_model_version_names_method_weights_and_settings(segmenter):
    version = model_version(segmenter)
    method, _, digest = version.rpartition("-")
    assert method == segmenter.preset.method and len(digest) == 12 and int(digest, 16) >= 0
    assert model_version(segmenter) == version
    other = segmenter.with_preset(segmenter.preset.with_overrides(prob_thd=0.3))
    assert model_version(other) != version


def test_brush_prediction_decodes_to_the_label_map(client, backend, reference, image_file):
    task = {"id": 7, "data": {"image": str(image_file)}}
    got = client.post("/predict", json={"tasks": [task], "label_config": BRUSH, "project": "3.1"}).json()
    (pred,) = got["results"]
    assert pred["model_version"] == backend.version == got["model_version"]
    cfg, seg = parse_label_config(BRUSH), reference
    present = np.unique(seg.labels).tolist()
    assert len(present) >= 2 and [r["id"] for r in pred["result"]] == [f"glaclip-{c}" for c in present]
    for region in pred["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "img", "brushlabels")
        assert (region["original_width"], region["original_height"], region["value"]["format"]) == (128, 96, "rle")
    np.testing.assert_array_equal(label_map(pred["result"], list(cfg.labels), (96, 128)), seg.labels)
    scores = seg.mean_probs()
    assert [r["score"] for r in pred["result"]] == pytest.approx([scores[c] for c in present])
    own = np.take_along_axis(seg.probs, seg.labels[None], axis=0)[0]
    assert pred["score"] == pytest.approx(float(own.mean()), rel=1e-5)


def test_polygon_prediction_fills_back_to_the_label_map(client, reference, image_file):
    task = {"id": 8, "data": {"image": image_file.as_uri()}}  # file:// reads from disk too
    (pred,) = client.post("/predict", json={"tasks": [task], "label_config": POLYGONS}).json()["results"]
    cfg, seg = parse_label_config(POLYGONS), reference
    assert cfg.queries == parse_label_config(BRUSH).queries
    assert {r["type"] for r in pred["result"]} == {"polygonlabels"}
    covered = np.zeros(seg.labels.shape, bool)
    for c, label in enumerate(cfg.labels):
        filled = Image.new("1", (128, 96))
        for region in pred["result"]:
            points = region["value"]["points"]
            assert region["value"]["closed"] and all(0 <= v <= 100 for p in points for v in p)
            if region["value"]["polygonlabels"] == [label]:
                xy = [(round(x * 128 / 100), round(y * 96 / 100)) for x, y in points]
                ImageDraw.Draw(filled).polygon(xy, fill=1, outline=1)
        filled = np.array(filled)
        mask = seg.labels == c
        covered |= mask & filled
        assert filled.sum() == 0 or mask[filled].mean() > 0.9  # a label's polygons hold little else
    assert covered.mean() > 0.99  # every pixel but those of tiny parts lies in a polygon of its class


def test_one_error_per_failing_task(client, backend, image_file, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    images = [str(image_file), str(tmp_path / "nope.png"), None, "s3://bucket/a.png", str(tmp_path / "broken.png"),
              "/data/upload/a.png"]
    tasks = [{"id": i, "data": {"image": im} if im else {"photo": "x.png"}} for i, im in enumerate(images, 1)]
    results = client.post("/predict", json={"tasks": tasks, "label_config": BRUSH, "project": "99.1"}).json()["results"]
    assert len(results) == 6 and results[0]["result"] and all(set(r) == {"error"} for r in results[1:])
    errors = [r["error"] for r in results[1:]]
    expected = ["nope.png is not read: local files are read only", "no data field 'image'", "s3://",
                "not a recognised image format", "start the backend with --url"]
    for ident, error, words in zip(range(2, 7), errors, expected):
        assert error.startswith(f"task {ident}: ") and words in error and "\n" not in error
    assert backend.lines[-6:] == errors + ["project 99.1: 1 of 6 tasks predicted"]
    (bad,) = client.post("/predict", json={"tasks": [tasks[0]], "label_config": "<View/>"}).json()["results"]
    assert bad["error"].startswith("task 1: the label config has no BrushLabels")


def test_an_unexpected_failure_stays_in_its_task(segmenter, image_file, monkeypatch):
    backend = Backend(segmenter, ImageSource(allow_roots=[image_file.parent]))
    calls = []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("out of\nmemory")
        return segmenter.predict(path, *args, **kwargs)

    monkeypatch.setattr(backend, "segmenter", SimpleNamespace(predict=flaky))
    tasks = [{"id": i, "data": {"image": str(image_file)}} for i in (1, 2)]
    first, second = backend.predict({"tasks": tasks, "label_config": BRUSH})["results"]
    assert first == {"error": "task 1: internal error: RuntimeError: out of memory"} and second["result"]


class _LabelStudioFiles(http.server.BaseHTTPRequestHandler):
    """Serves one image under /data/upload/ as Label Studio does: only with a valid token, legacy
    ("Token KEY") or an access token ("Bearer ...") traded at /api/token/refresh/ for a personal one."""

    png = b""
    refreshes = 0

    def do_GET(self):
        ok = self.headers.get("Authorization") in (f"Token {TOKEN}", "Bearer access-1")
        self.send_response(200 if ok and self.path == "/data/upload/1/street.png" else 401 if not ok else 404)
        self.end_headers()
        if ok:
            self.wfile.write(self.png)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        good = self.path == "/api/token/refresh/" and body == {"refresh": "aaa.bbb.ccc"}
        type(self).refreshes += good
        self.send_response(200 if good else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"access": "access-1"} if good else {"detail": "no"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def files_server(image_file):
    _LabelStudioFiles.png = image_file.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LabelStudioFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("how", ["token from /setup", "legacy token option", "personal access token option"])
def test_images_fetched_from_label_studio_with_its_token(segmenter, reference, files_server, how):
    source = {"token from /setup": ImageSource(files_server),
              "legacy token option": ImageSource(files_server + "/", TOKEN),
              "personal access token option": ImageSource(files_server, "aaa.bbb.ccc")}[how]
    backend = Backend(segmenter, source)
    backend.setup({"project": "5.17", "schema": BRUSH, "hostname": files_server, "access_token": TOKEN})
    tasks = [{"id": 1, "data": {"image": "/data/upload/1/street.png"}},
             {"id": 2, "data": {"image": files_server + "/data/upload/1/other.png"}}]
    first, missing = backend.predict({"tasks": tasks, "label_config": BRUSH, "project": "5.17"})["results"]
    np.testing.assert_array_equal(label_map(first["result"], list(parse_label_config(BRUSH).labels), (96, 128)),
                                  reference.labels)
    assert missing["error"] == f"task 2: cannot fetch {files_server}/data/upload/1/other.png: HTTP 404 Not Found"
    if how.startswith("personal"):
        assert _LabelStudioFiles.refreshes >= 1


def test_wrong_token_and_token_sent_only_to_label_studio(segmenter, files_server):
    backend = Backend(segmenter, ImageSource(files_server, "wrong"))
    (err,) = backend.predict({"tasks": [{"id": 1, "data": {"image": "/data/upload/1/street.png"}}],
                              "label_config": BRUSH})["results"]
    assert "HTTP 401" in err["error"] and "check the API key" in err["error"]
    backend = Backend(segmenter, ImageSource("http://label-studio.invalid:8080", TOKEN, allow_hosts=[files_server]))
    (err,) = backend.predict({"tasks": [{"id": 1, "data": {"image": files_server + "/data/upload/1/street.png"}}],
                              "label_config": BRUSH})["results"]
    assert "HTTP 401" in err["error"]


def test_methods_reading_region_masks_are_refused(tiny_files):
    from glaclip import Segmenter

    seg = Segmenter.from_pretrained(device="cpu", dtype="fp32", method="gla-proxyclip", mask_vote=True, **tiny_files)
    with pytest.raises(GlaclipError, match="reads region masks"):
        Backend(seg)


def test_without_the_extra_one_line_names_it_before_models_load(backend, monkeypatch):
    from typer.testing import CliRunner

    from glaclip import Segmenter, cli
    from glaclip.integrations.labelstudio import create_app

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    with pytest.raises(GlaclipError, match=r"glaclip\[labelstudio\]"):
        create_app(backend)
    monkeypatch.setattr(Segmenter, "from_pretrained", None)  # no model is loaded before saying so
    done = CliRunner().invoke(cli.app, ["labelstudio", "--port", "9"])
    assert isinstance(done.exception, GlaclipError) and "glaclip[labelstudio]" in str(done.exception)


def test_cli_errors_before_loading_models(tmp_path):
    done = run_cli("labelstudio", "--method", "nope", "--clip-weights", tmp_path / "missing.pt")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "glaclip: error:" in done.stderr
    assert "nope" in done.stderr
    done = run_cli("--help")
    assert done.returncode == 0 and "labelstudio" in done.stdout


# --- end to end against a real Label Studio server ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, seconds: float) -> float:
    """Seconds until url answers 200; -1: the process exited; -2: no answer within `seconds`."""
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if proc.poll() is not None:
            return -1.0
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return -2.0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


def _tail(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-600:]


def test_end_to_end_with_a_real_label_studio_server(tmp_path, tiny_files, reference, image_file):
    """Project with a BrushLabels config, an image and a task whose image is missing, the backend
    connected through Label Studio's ML API, predictions retrieved by its data manager action, read
    back from /api/predictions and decoded with Label Studio's own decoder to glaclip's label map;
    then the image fetched with a personal access token."""
    import httpx

    exe = os.environ.get(LS_ENV) or shutil.which("label-studio")
    if not exe or not Path(exe).exists():
        pytest.skip(f"Label Studio is not installed: set {LS_ENV}=/path/to/venv/bin/label-studio or put it on PATH")
    ls_port, ml_port = _free_port(), _free_port()
    ml_log, ls_log = tmp_path / "backend.log", tmp_path / "label-studio.log"
    models = [a for k, v in tiny_files.items() for a in (f"--{k.replace('_', '-')}", v)]
    backend_cmd = [sys.executable, "-m", "glaclip", "labelstudio", "--port", str(ml_port), "--device", "cpu",
                   "--dtype", "fp32", "--no-cache", "--url", f"http://127.0.0.1:{ls_port}", *models]
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(tmp_path / "ls-data"), HOME=str(tmp_path),
               LABEL_STUDIO_USERNAME="glaclip@example.com", LABEL_STUDIO_PASSWORD=secrets.token_hex(8),
               LABEL_STUDIO_USER_TOKEN=TOKEN, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
               ML_BLOCK_LOCAL_IP="false", SSRF_PROTECTION_ENABLED="false", LATEST_VERSION_CHECK="false")
    limit = float(os.environ.get("GLACLIP_LABEL_STUDIO_TIMEOUT", "600"))
    with open(ml_log, "w") as ml_out, open(ls_log, "w") as ls_out:
        ml = subprocess.Popen(backend_cmd, stdout=ml_out, stderr=subprocess.STDOUT)
        ls = subprocess.Popen([exe, "start", "--no-browser", "--port", str(ls_port), "--internal-host", "127.0.0.1",
                               "--data-dir", str(tmp_path / "ls-data"), "--enable-legacy-api-token"],
                              stdout=ls_out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            assert _wait(f"http://127.0.0.1:{ml_port}/health", ml, 120) >= 0, _tail(ml_log)
            up = _wait(f"http://127.0.0.1:{ls_port}/health", ls, limit)
            if up < 0:
                why = f"exited with code {ls.returncode}" if up == -1 else f"did not answer within {limit:.0f} s"
                why = f"the Label Studio server {why} ({exe}): {_tail(ls_log)}"
                if os.environ.get(LS_ENV):  # named on purpose (as CI does): a server that does not start is a failure
                    pytest.fail(why)
                pytest.skip(why)
            print(f"Label Studio up in {up:.1f} s")
            _run_end_to_end(httpx.Client(base_url=f"http://127.0.0.1:{ls_port}", timeout=120,
                                         headers={"Authorization": f"Token {TOKEN}"}),
                            ml_port, reference, image_file, ml_log)
        finally:
            _stop(ls)
            _stop(ml)


def _run_end_to_end(api, ml_port, seg, image_file, ml_log):
    import httpx

    version = httpx.get(f"http://127.0.0.1:{ml_port}/health").json()["model_version"]
    project = api.post("/api/projects", json={"title": "glaclip end to end", "label_config": BRUSH})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    with open(image_file, "rb") as f:
        done = api.post(f"/api/projects/{pid}/import", files={"file": ("street.png", f, "image/png")})
    assert done.status_code == 201, done.text
    done = api.post(f"/api/projects/{pid}/import", json=[{"data": {"image": "/data/upload/1/missing.png"}}])
    assert done.status_code == 201, done.text
    tasks = {t["data"]["image"]: t["id"] for t in api.get("/api/tasks/", params={"project": pid}).json()["tasks"]}
    good = next(i for url, i in tasks.items() if "missing" not in url)
    bad = tasks["/data/upload/1/missing.png"]
    ml = api.post("/api/ml/", json={"project": pid, "url": f"http://127.0.0.1:{ml_port}", "title": "glaclip"})
    assert ml.status_code == 201, ml.text  # Label Studio called /health and /setup
    assert ml.json()["readable_state"] == "Connected" and ml.json()["model_version"] == version
    started = time.monotonic()
    done = api.post("/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": pid},
                    json={"selectedItems": {"all": True, "excluded": []}})
    assert done.status_code == 200, done.text
    print(f"predictions retrieved in {time.monotonic() - started:.1f} s")
    (pred,) = api.get("/api/predictions/", params={"task": good}).json()
    assert api.get("/api/predictions/", params={"task": bad}).json() == []  # that task failed alone
    assert pred["model_version"] == version
    labels = list(parse_label_config(BRUSH).labels)
    layers = ls_sdk("from label_studio_sdk.converter.brush import decode_rle\n"
                    "out = [decode_rle(r['value']['rle']).tolist() for r in data]", pred["result"])
    decoded = np.full(seg.labels.shape, -1)
    for region, layer in zip(pred["result"], layers):
        mask = np.reshape(layer, (96, 128, 4))[..., 3] == 255
        assert (decoded[mask] == -1).all()
        decoded[mask] = labels.index(region["value"]["brushlabels"][0])
    np.testing.assert_array_equal(decoded, seg.labels)
    assert f"task {bad}: cannot fetch" in ml_log.read_text()
    # a personal access token (what --api-key / LABEL_STUDIO_API_KEY usually holds) fetches the image too
    pat = api.post("/api/token/")
    assert pat.status_code in (200, 201), pat.text
    image_url = next(url for url in tasks if "missing" not in url)
    assert ImageSource(str(api.base_url), pat.json()["token"]).read(image_url) == image_file.read_bytes()
