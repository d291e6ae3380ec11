import open_clip
import pytest
import torch

import reference
from glaclip import GlaclipError, parse_classes, read_class_file
from glaclip.text import TextEncoder, templates


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


def test_templates_are_the_80_openai_ones():
    t = templates()
    assert len(t) == 80 and t[0]("dog") == "a bad photo of a dog." and t[-1]("dog") == "a tattoo of the dog."


def test_embedding_equals_formula(segmenter):
    model = segmenter.clip.model
    tok = open_clip.get_tokenizer(segmenter.clip.name)
    enc = TextEncoder(model.encode_text, tok, torch.device("cpu"), batch_size=7)
    got = enc.embed(["cat", "traffic light"])
    expected = reference.text_queries(model, tok, ["cat", "traffic light"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(2))
