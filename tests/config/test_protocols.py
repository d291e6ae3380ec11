"""Every method x data set of BASELINES.md section 2 reports exactly its authors' settings."""

import json

import pytest
from conftest import run_cli

from glaclip import GlaclipError, get_preset, resolve
from glaclip.config.datasets import packaged_classes
from glaclip.config.registry import METHODS

DATASETS = ["voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k"]
# BASELINES.md section 2, column by column: (short side, crop, stride, logit scale, prob_thd); crop 0 = whole.
TABLE = {
    "proxyclip": [(336, 336, 112, 40, 0.2), (336, 336, 112, 40, 0.15), (336, 336, 112, 40, 0.25),
                  (336, 336, 112, 40, 0), (336, 336, 112, 40, 0), (336, 336, 112, 40, 0), (448, 224, 112, 40, 0),
                  (448, 336, 112, 40, 0)],
    "sclip": [(336, 224, 112, 65, 0.1), (336, 224, 112, 50, 0.1), (336, 224, 112, 50, 0.1), (336, 224, 112, 40, 0),
              (336, 224, 112, 40, 0), (448, 224, 112, 40, 0), (560, 224, 112, 40, 0), (336, 224, 112, 40, 0)],
    "clearclip": [(448, 448, 224, 50, 0.5), (448, 448, 224, 50, 0.15), (448, 448, 224, 50, 0.4),
                  (448, 448, 224, 50, 0), (448, 448, 224, 50, 0), (448, 448, 224, 50, 0), (448, 224, 224, 50, 0),
                  (448, 448, 224, 50, 0)],
    "naclip": [(336, 0, None, 40, 0.1), (336, 224, 112, 40, 0.1), (336, 224, 112, 40, 0.1), (336, 0, None, 40, 0),
               (336, 224, 112, 40, 0), (336, 224, 112, 40, 0), (560, 224, 112, 40, 0), (336, 224, 112, 40, 0)],
    # MASKHOSTS.md section 3 (CorrCLIP's configs)
    "corrclip": [(336, 336, 112, 40, 0.2), (336, 336, 112, 40, 0.15), (336, 336, 112, 40, 0.25),
                 (336, 336, 112, 40, 0), (336, 336, 112, 40, 0), (336, 336, 112, 40, 0), (448, 224, 112, 40, 0),
                 (448, 336, 112, 40, 0)],
    # CORRCLIP2.md section 6 (CorrCLIPv2's configs): v1's with Cityscapes' short side 784
    "corrclip2": [(336, 336, 112, 40, 0.2), (336, 336, 112, 40, 0.15), (336, 336, 112, 40, 0.25),
                  (336, 336, 112, 40, 0), (336, 336, 112, 40, 0), (336, 336, 112, 40, 0), (784, 224, 112, 40, 0),
                  (448, 336, 112, 40, 0)],
    # MASKHOSTS.md section 7 (Trident's configs)
    "trident": [(448, 336, 224, 40, 0.2), (576, 336, 224, 40, 0.15), (448, 336, 224, 40, 0.25),
                (336, 336, 112, 40, 0), (576, 336, 224, 40, 0), (448, 336, 224, 40, 0), (688, 336, 224, 40, 0),
                (576, 336, 224, 40, 0)],
    "gla": [(336, 224, 112, 40, 0.1), (336, 224, 112, 40, 0.1), (336, 224, 112, 40, 0.1), (336, 224, 112, 40, 0),
            (336, 224, 112, 40, 0), (336, 224, 112, 40, 0), (560, 224, 112, 40, 0), (336, 224, 112, 40, 0)],
}
# 0: patch size, 1: no padding
PAD = {"proxyclip": 56, "gla": 56, "corrclip": 56, "corrclip2": 56, "trident": 56, "clearclip": 0, "sclip": 1,
       "naclip": 1}
# Query counts of each protocol's class files (BASELINES.md section 3).
QUERIES = {("gla", "voc21"): 56, ("sclip", "voc21"): 56, ("naclip", "voc21"): 56, ("proxyclip", "voc21"): 46,
           ("clearclip", "voc21"): 21, ("proxyclip", "voc20"): 20, ("clearclip", "voc20"): 20,
           ("gla", "coco_object"): 113, ("proxyclip", "coco_object"): 97, ("clearclip", "coco_object"): 81,
           ("corrclip", "voc21"): 46, ("corrclip", "coco_object"): 96, ("trident", "voc21"): 46,
           ("trident", "coco_object"): 97}
OWN = {"proxyclip": "proxyclip", "sclip": "sclip", "clearclip": "clearclip", "naclip": "naclip",
       "corrclip": "corrclip", "gla-corrclip": "corrclip", "corrclip2": "corrclip2", "gla-corrclip2": "corrclip2",
       "trident": "trident"}
HOST = {"gla-proxyclip": "proxyclip", "gla-sclip": "sclip", "gla-clearclip": "clearclip",
        "gla-clearclip-release": "clearclip", "gla-naclip": "naclip"}


def _expected(protocol, dataset):
    short, crop, stride, scale, thd = TABLE[protocol][DATASETS.index(dataset)]
    return {"protocol": protocol, "dataset": dataset, "short_side": short, "crop": crop, "logit_scale": scale,
            "prob_thd": thd, "area_thd": 0.1 if (protocol, dataset) == ("sclip", "voc21") else None,
            "pamr_steps": 10 if protocol == "naclip" else 0, "pad_multiple": PAD[protocol],
            "mask_vote": protocol in ("corrclip", "corrclip2"),
            **({} if stride is None else {"stride": stride})}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("protocol", [None, "host", "gla"])
def test_every_method_and_dataset_reports_its_protocol(method, dataset, protocol):
    expected_protocol = {None: OWN.get(method, "gla"), "gla": "gla"}.get(protocol)
    if protocol == "host":
        expected_protocol = OWN.get(method) or HOST.get(method) or {"clip": "sclip", "clip-vanilla": "clearclip",
                                                                   "maskclip": "gla"}[method]
    got = resolve(method, dataset, protocol).settings()
    for key, value in _expected(expected_protocol, dataset).items():
        assert got[key] == value, (key, got[key], value)
    assert got["method"] == method and got["pamr_dilations"] == [8, 16]
    assert got["token_norm"] is (method != "proxyclip")
    variant = (dataset in ("voc21", "voc20", "coco_object")
               and expected_protocol in ("proxyclip", "clearclip", "trident")
               or expected_protocol in ("corrclip", "corrclip2"))  # CorrCLIP's class files differ everywhere
    assert got["class_file"] == (f"{dataset}-{expected_protocol}.txt" if variant else f"{dataset}.txt")
    queries = packaged_classes(got["class_file"]).queries
    if (expected_protocol, dataset) in QUERIES:
        assert len(queries) == QUERIES[(expected_protocol, dataset)]


def test_class_file_contents():
    assert packaged_classes("voc21-clearclip.txt").synonyms[0] == ("background",)
    proxy_obj = packaged_classes("coco_object-proxyclip.txt")
    assert len(proxy_obj.synonyms[0]) == 17 and "lamp" not in proxy_obj.synonyms[0]
    assert proxy_obj.synonyms[1] == ("person",)
    assert packaged_classes("voc20-proxyclip.txt").synonyms[-1] == ("tvmonitor",)
    assert packaged_classes("context60.txt").names[-1] == "wood"


def test_plain_image_defaults_and_gla_default_unchanged():
    g = get_preset("gla-proxyclip")
    assert (g.window.short_side, g.window.crop, g.window.stride, g.window.pad_multiple) == (336, 224, 112, 56)
    assert (g.decision.logit_scale, g.decision.prob_thd, g.decision.area_thd, g.decision.pamr_steps) == (40, 0, None, 0)
    assert g.protocol == "gla" and g.dataset is None and g.class_file is None
    n = get_preset("naclip")
    assert n.decision.pamr_steps == 10 and n.window.crop == 224 and n.window.pad_multiple == 1
    c = get_preset("clearclip")
    assert (c.window.short_side, c.window.crop, c.window.stride, c.decision.logit_scale) == (448, 448, 224, 50)
    assert get_preset("proxyclip").attention.token_norm is False and get_preset("proxyclip").window.crop == 336
    assert get_preset("gla-clearclip-release").attention.dynamic_beta is False


def test_set_overrides_the_protocol():
    p = resolve("sclip", "voc21", None, logit_scale=30, area_thd="none", pamr_steps=3, pamr_dilations="4,8")
    assert p.decision.logit_scale == 30 and p.decision.area_thd is None
    assert p.decision.pamr_steps == 3 and p.decision.pamr_dilations == (4, 8)


@pytest.mark.parametrize("bad", [{"protocol": "mine"}, {"method": "nope"}, {"token_norm": False},
                                 {"logit_scale": "nan"}, {"prob_thd": "inf"}, {"area_thd": 2}, {"pamr_dilations": "0"}])
def test_bad_protocol_inputs(bad):
    kw = dict(bad)
    with pytest.raises(GlaclipError):
        resolve(kw.pop("method", "gla-proxyclip"), "voc21", kw.pop("protocol", None), **kw)


def test_presets_json_cli():
    r = run_cli("presets", "--method", "naclip", "--dataset", "voc21", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for key in ("method", "dataset", "protocol", "short_side", "crop", "stride", "logit_scale", "prob_thd", "area_thd",
                "pamr_steps", "pamr_dilations", "token_norm", "class_file", "queries"):
        assert key in got
    assert got["crop"] == 0 and got["pamr_steps"] == 10 and len(got["queries"]) == 56
    r = run_cli("presets", "--method", "gla-proxyclip", "--dataset", "voc21", "--protocol", "host", "--json")
    got = json.loads(r.stdout)
    assert got["protocol"] == "proxyclip" and got["crop"] == 336 and got["prob_thd"] == 0.2
    assert len(got["queries"]) == 46
    r = run_cli("presets", "--method", "sclip", "--dataset", "nowhere")
    assert r.returncode == 2 and r.stderr.startswith("glaclip: error: unknown dataset")


def test_effective_gives_the_preset_and_its_classes(tmp_path):
    from glaclip import effective

    preset, queries = effective("gla-proxyclip", "voc", "host")
    assert preset == resolve("gla-proxyclip", "voc21", "host") and preset.class_file == "voc21-proxyclip.txt"
    assert queries == packaged_classes("voc21-proxyclip.txt")
    assert effective("sclip") == (resolve("sclip"), None)  # a plain image: no class list of its own
    preset, queries = effective("naclip", "voc21", None, {"prob_thd": 0.3}, "sky, car; vehicle")
    assert preset.decision.prob_thd == 0.3 and preset.class_file is None and preset.dataset == "voc21"
    assert queries.synonyms == (("sky",), ("car", "vehicle"))
    path = tmp_path / "mine.txt"
    path.write_text("road\nsky; heaven\n")
    preset, queries = effective("clearclip", "folder", None, None, path)
    assert preset.class_file == str(path) and preset.dataset is None and queries.names == ("road", "sky")
    assert effective("clip", classes=[["a", "b"], "c"])[1].queries == ("a", "b", "c")
    with pytest.raises(GlaclipError, match="unknown dataset 'vocc'"):
        effective("clip", "vocc")
    with pytest.raises(GlaclipError, match="class file not found"):
        effective("clip", classes=tmp_path / "missing.txt")


def test_named_presets_take_overrides_of_their_own_settings():
    assert resolve("gla-proxyclip-paper").attention.rho == 0.6
    assert resolve("gla-proxyclip-paper", rho=0.5).attention.rho == 0.5
    assert get_preset("gla-proxyclip-paper", rho=0.5).attention.rho == 0.5


@pytest.mark.parametrize("dataset, name, file, n", [("ade847", "ade847", "ade847.json", 847),
                                                    ("pc459", "context459", "context459.txt", 459)])
def test_datasets_without_rows_take_the_plain_image_row_and_their_class_file(dataset, name, file, n):
    # no paper of these methods gives ADE-847 / PASCAL-Context 459 settings: the protocol's row for a plain image
    from glaclip import effective

    for method in ("gla-proxyclip", "corrclip", "sclip"):
        preset, queries = effective(method, dataset)
        plain = resolve(method)
        assert (preset.window, preset.decision) == (plain.window, plain.decision) and preset.dataset is None
        assert preset.class_file == file and len(queries) == n and preset.name == f"{method}@{name}:{plain.protocol}"
    r = run_cli("presets", "--method", "corrclip", "--dataset", dataset, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["class_file"] == file and len(got["queries"]) == n and got["short_side"] == 336
