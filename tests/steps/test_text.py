import open_clip
import pytest
import reference
import torch

from glaclip import GlaclipError, parse_classes, read_class_file
from glaclip.steps.text import FULL_CONTEXT_ENV, templates, text_encoder


def test_parse_forms():
    q = parse_classes(["background; sky; wall", ["person", "man", "woman"], "car", "  tv   monitor "])
    assert q.names == ("background", "person", "car", "tv monitor")
    assert q.queries == ("background", "sky", "wall", "person", "man", "woman", "car", "tv monitor")
    assert q.query_class == (0, 0, 0, 1, 1, 1, 2, 3)
    assert len(q) == 4
    assert parse_classes("cat\n\ndog; puppy\n").synonyms == (("cat",), ("dog", "puppy"))


@pytest.mark.parametrize("bad", [[], "", ["a", "A"], ["a; b", "a; c"], ["a; a"], ["a;"], [""], [None], [["a", 3]]])
def test_parse_errors(bad):
    with pytest.raises(GlaclipError):
        parse_classes(bad)


def test_synonym_shared_by_two_classes_is_allowed():
    q = parse_classes(["sky; bed", "bed"])  # as COCO-Object's released class file has it
    assert q.queries == ("sky", "bed", "bed") and q.query_class == (0, 0, 1)


def test_class_file(tmp_path):
    f = tmp_path / "voc.txt"
    f.write_text("background; sky; wall\naeroplane\nperson; person in shirt\n", encoding="utf-8")
    assert read_class_file(f).names == ("background", "aeroplane", "person")
    with pytest.raises(GlaclipError, match="not found"):
        read_class_file(tmp_path / "missing.txt")
    (tmp_path / "dup.txt").write_text("cat\ncat\n")
    with pytest.raises(GlaclipError, match="dup.txt"):
        read_class_file(tmp_path / "dup.txt")


def test_json_class_file_keeps_commas_in_names(tmp_path):
    # as the shipped ade847.json: names such as "building, edifice" are one query (CorrCLIPv2, CAT-Seg)
    f = tmp_path / "ade.json"
    f.write_text('["wall", "building, edifice", ["sky", "heaven"]]', encoding="utf-8")
    q = read_class_file(f)
    assert q.names == ("wall", "building, edifice", "sky") and q.queries[-2:] == ("sky", "heaven")
    (tmp_path / "bad.json").write_text('{"wall": 1}')
    with pytest.raises(GlaclipError, match="bad.json.*a list"):
        read_class_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('["wall",')
    with pytest.raises(GlaclipError, match="broken.json: not JSON"):
        read_class_file(tmp_path / "broken.json")


def test_templates_are_the_80_openai_ones():
    t = templates()
    assert len(t) == 80 and t[0]("dog") == "a bad photo of a dog." and t[-1]("dog") == "a tattoo of the dog."


def test_embedding_equals_formula(segmenter):
    model = segmenter.clip.model
    tok = open_clip.get_tokenizer(segmenter.clip.name)
    enc = text_encoder(segmenter.clip, cache=False, short_context=False, batch_size=7)
    got = enc.embed(["cat", "traffic light"])
    expected = reference.text_queries(model, tok, ["cat", "traffic light"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(2))


QUERIES = ["cat", "a very long and descriptive name of a rather unusual object on a table", "tv monitor", "sky"]


@pytest.mark.parametrize("fixture, atol", [("segmenter", 1e-5), ("segmenter64", 1e-12)])
def test_short_context_equals_full_context(request, fixture, atol):
    from glaclip.models.towers import short_context_encoder

    seg = request.getfixturevalue(fixture)
    tok = open_clip.get_tokenizer(seg.clip.name)
    tokens = tok(["a photo of a cat.", "itap of a very long and descriptive name of a thing in a scene.", "x"])
    short = short_context_encoder(seg.clip.model)
    assert short is not None
    with torch.no_grad():
        torch.testing.assert_close(short(tokens), seg.clip.model.encode_text(tokens), rtol=0, atol=atol)
    # a tower without a causal mask (or pooling elsewhere) is not cut: the caller falls back
    class NoMask:
        attn_mask = None
        token_embedding = positional_embedding = transformer = ln_final = text_pool_type = None
    assert short_context_encoder(NoMask()) is None


def test_batched_encoder_equals_per_query_reference(segmenter64):
    enc = text_encoder(segmenter64.clip, cache=False, short_context=False, batch_size=37)
    fast = text_encoder(segmenter64.clip, cache=False, short_context=True, batch_size=37)
    assert enc._short is None and fast._short is not None
    expected = reference.text_queries(segmenter64.clip.model, open_clip.get_tokenizer(segmenter64.clip.name), QUERIES)
    torch.testing.assert_close(enc.embed(QUERIES).double(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.embed(QUERIES).double(), expected, rtol=0, atol=1e-12)


def test_factory_cache_choices_context_and_templates(tiny_files, tmp_path, monkeypatch):
    from glaclip.steps.text_cache import cache_info

    monkeypatch.setenv("GLACLIP_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.delenv(FULL_CONTEXT_ENV, raising=False)
    seg = _fresh(tiny_files, text_cache=False)
    clip = seg.clip
    assert seg.text.disk is None
    # a folder: the cache under it, nothing under $GLACLIP_CACHE_DIR
    vectors = text_encoder(clip, cache=tmp_path / "mine", progress=False).embed(QUERIES)
    assert cache_info(tmp_path / "mine")["entries"] == len(QUERIES) and not (tmp_path / "env").exists()
    again = text_encoder(clip, cache=str(tmp_path / "mine"))
    calls = _count_encodes_of(again)
    torch.testing.assert_close(again.embed(QUERIES), vectors, rtol=0, atol=0)
    assert calls == []
    # True: the default root, the same vectors
    torch.testing.assert_close(text_encoder(clip, cache=True).embed(QUERIES), vectors, rtol=0, atol=0)
    assert cache_info()["entries"] == len(QUERIES)
    # False / None: memory only
    for off in (False, None):
        enc = text_encoder(clip, cache=off)
        assert enc.disk is None
        enc.embed(["zebra"])
    assert cache_info()["entries"] == len(QUERIES) and cache_info(tmp_path / "mine")["entries"] == len(QUERIES)
    # other templates: other vectors under another model key
    one = [lambda c: f"a photo of a {c}."]
    mine = text_encoder(clip, one, cache=tmp_path / "mine")
    assert mine.prompt_strings() == ["a photo of a {}."]
    assert (mine.embed(QUERIES) - vectors).abs().max() > 1e-4
    assert cache_info(tmp_path / "mine")["models"] == 2
    # short context unless $GLACLIP_FULL_CONTEXT_TEXT says otherwise or the caller chooses
    assert text_encoder(clip, cache=False)._short is not None
    monkeypatch.setenv(FULL_CONTEXT_ENV, "1")
    full = text_encoder(clip, cache=False)
    assert full._short is None and text_encoder(clip, cache=False, short_context=True)._short is not None
    torch.testing.assert_close(full.embed(QUERIES), vectors, rtol=0, atol=1e-5)


def _fresh(tiny_files, **kw):
    from glaclip import Segmenter

    return Segmenter.from_pretrained(device="cpu", dtype="fp32", **tiny_files, **kw)


def _count_encodes(seg):
    return _count_encodes_of(seg.text)


def _count_encodes_of(enc):
    calls = []
    for name in ("_encode", "_short"):
        original = getattr(enc, name)
        if original is not None:
            setattr(enc, name, lambda t, o=original: calls.append(len(t)) or o(t))
    return calls


def test_disk_cache_reused_across_segmenters_and_keyed_by_weight_content(tiny_files, tmp_path, monkeypatch):
    import shutil

    from glaclip.steps.text_cache import cache_info

    monkeypatch.setenv("GLACLIP_CACHE_DIR", str(tmp_path / "cache"))
    first = _fresh(tiny_files)
    vectors = first.text.embed(QUERIES)
    assert cache_info()["entries"] == len(QUERIES)
    second = _fresh(tiny_files)  # as a new process would: nothing in memory
    calls = _count_encodes(second)
    torch.testing.assert_close(second.text.embed(QUERIES), vectors, rtol=0, atol=0)
    assert calls == []
    # other weights at the SAME path: a new key, nothing stale is served
    other = dict(tiny_files)
    sd = torch.load(tiny_files["clip_weights"])
    sd["text_projection"] = sd["text_projection"] + 0.1 * torch.randn_like(sd["text_projection"])
    moved = tmp_path / "clip.pt"
    shutil.copy(tiny_files["clip_weights"], moved)
    torch.save(sd, moved)
    other["clip_weights"] = str(moved)
    changed = _fresh(other)
    calls = _count_encodes(changed)
    assert (changed.text.embed(QUERIES) - vectors).abs().max() > 1e-4 and calls
    assert cache_info()["models"] == 2
    # no cache: nothing read or written
    off = _fresh(tiny_files, text_cache=False)
    calls = _count_encodes(off)
    off.text.embed(["zebra"])
    assert calls and cache_info()["entries"] == 2 * len(QUERIES)


def test_corrupt_cache_file_costs_a_recomputation_and_one_warning(tiny_files, tmp_path, monkeypatch):
    monkeypatch.setenv("GLACLIP_CACHE_DIR", str(tmp_path / "cache"))
    good = _fresh(tiny_files).text.embed(QUERIES)
    files = sorted((tmp_path / "cache" / "text").glob("*/*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:40])  # truncated
    files[1].write_bytes(b"garbage")
    seg = _fresh(tiny_files)
    with pytest.warns(RuntimeWarning, match="unreadable") as record:
        again = seg.text.embed(QUERIES)
    assert len(record) == 2
    torch.testing.assert_close(again, good, rtol=0, atol=1e-6)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_random_weights_are_never_cached(tiny_files, tmp_path, monkeypatch):
    from glaclip import Segmenter

    monkeypatch.setenv("GLACLIP_CACHE_DIR", str(tmp_path / "cache"))
    seg = Segmenter.from_pretrained(clip=tiny_files["clip"], clip_weights="random", vfm=tiny_files["vfm"],
                                    vfm_weights="random", device="cpu")
    seg.text.embed(["cat"])
    assert seg.text.disk is None and not (tmp_path / "cache").exists()


def test_cache_cli(tiny_files, tmp_path):
    import os

    from conftest import run_cli

    from glaclip.steps.text_cache import EmbeddingCache

    env = dict(os.environ, GLACLIP_CACHE_DIR=str(tmp_path / "c"))
    EmbeddingCache(tmp_path / "c", lambda: {"model": "m", "text_weights": "0"}).put_many({"cat": torch.ones(4) / 2})
    r = run_cli("cache", "info", env=env)
    assert r.returncode == 0 and str(tmp_path / "c") in r.stdout and "entries:  1 " in r.stdout
    r = run_cli("cache", "clear", env=env)
    assert r.returncode == 0 and "removed 1" in r.stdout and not (tmp_path / "c" / "text").exists()
