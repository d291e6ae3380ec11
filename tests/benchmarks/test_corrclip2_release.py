"""benchmarks/corrclip2_release.py: the harness around CorrCLIPv2's release (the release and RADIO are not in
the repository: the bank writer, a fake release folder for the import isolation and the CPU patches;
the real run is a maintainer run, see the script's docstring)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_benchmarks

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def harness():
    return import_benchmarks("corrclip2_release", "corrclip2_shims")


def test_bank_in_the_release_layout(harness, tmp_path):
    h, _ = harness
    h.write_bank(tmp_path, name="b", n=300)
    for enc in ("metaclip_b", "dfnclip_b"):
        rows = torch.load(tmp_path / "clip_embeddings" / f"b_{enc}.pt", weights_only=True)
        assert rows.shape == (300, 512) and rows.dtype == torch.float16  # what PTTensorDataset asserts
        assert torch.allclose(rows.float().norm(dim=1), torch.ones(300), atol=1e-2)
    index = faiss.read_index(str(tmp_path / "vfm_embeddings" / "b_radiov3.faiss"))
    assert isinstance(index, faiss.IndexIDMap2) and index.ntotal == 300 and index.d == 1024
    assert np.array_equal(faiss.vector_to_array(index.id_map), np.arange(300))  # ids = store rows, ascending
    inner = faiss.downcast_index(index.index)
    assert isinstance(inner, faiss.IndexIVFPQ) and inner.is_trained
    assert inner.nlist == h.bank_nlist(300) == int(8 * 300 ** 0.5) == 138
    assert inner.pq.M == 32 and inner.pq.nbits == 8 and inner.metric_type == faiss.METRIC_L2
    assert isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexFlatIP)
    assert sorted(os.listdir(tmp_path)) == ["clip_embeddings", "vfm_embeddings"]
    with pytest.raises(ValueError, match="256"):
        h.write_bank(tmp_path / "small", n=255)


def test_radio_args_describe_a_vit_large_with_cpe(harness):
    _, shims = harness
    args = shims.radio_args()
    assert args.model == "vit_large_patch16_224" and args.cpe_max_size == 2048 and args.model_kwargs == {}
    assert args.cls_token_per_teacher and not args.model_norm and not args.spectral_reparam
    assert [t.get("use_summary", True) for t in args.teachers] == [True, True, True, False]
    assert shims.radio_args() is not args and shims.radio_args().model_kwargs is not args.model_kwargs


FAKE_RELEASE = '''
import os
os.environ["HF_ENDPOINT"] = "somewhere"
import faiss
import torch
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from open_clip import WHERE
import open_clip
from open_clip import create_model
from vfms import build_vfm
MB_ROOT = 'memory_bank'

@MODELS.register_module()
class CorrCLIPSegmentation(BaseSegmentor):
    pass

class PTTensorDataset:
    def __init__(self, data):
        self.data = data
    def __getitem__(self, idx):
        return self.data[torch.as_tensor(idx, dtype=torch.long)]
'''


def _fake_release(root: Path) -> Path:
    release = root / "CorrCLIPv2"
    (release / "open_clip").mkdir(parents=True)
    (release / "open_clip" / "__init__.py").write_text(
        "WHERE = 'vendored'\ndef get_tokenizer(name):\n    return name\n"
        "def create_model(*a, **k):\n    raise RuntimeError('no')\n")
    (release / "vfms").mkdir()
    (release / "vfms" / "__init__.py").write_text("from .factory import build_vfm\n")
    (release / "vfms" / "factory.py").write_text("import torch\ndef build_vfm(name, device):\n    return name\n")
    (release / "corrclip_segmentor.py").write_text(FAKE_RELEASE)
    return release


def test_release_imports_isolated_and_cpu_patches_restored(harness, tmp_path):
    _, shims = harness
    release = _fake_release(tmp_path)
    import open_clip  # pip's, imported before: must be shadowed inside and back afterwards

    path, env = list(sys.path), dict(os.environ)
    with shims.release_imports(release) as seg:
        assert seg.WHERE == "vendored" and issubclass(seg.CorrCLIPSegmentation, torch.nn.Module)
        factory = sys.modules["vfms.factory"]
        index = faiss.IndexFlatIP(4)
        with shims.cpu_release(seg, dtype=torch.float64, clip_files={}, bank_dir=tmp_path / "bank",
                               radio_repo=tmp_path, radio_ckpt=tmp_path / "radio.pth"):
            assert seg.MB_ROOT == str(tmp_path / "bank")
            gpu = seg.faiss.index_cpu_to_gpu(seg.faiss.StandardGpuResources(), int(seg.torch.cuda.current_device()),
                                             index)
            assert gpu is not index and gpu.d == 4  # a copy: the release drops the wrapper owning the original
            seg.torch.cuda.empty_cache()
            assert factory.torch.float32 is torch.float64 and factory.torch.zeros(1).dtype == torch.float32
            with factory.torch.autocast("cuda", dtype=torch.float16):
                assert torch.ones(2, 2).mm(torch.ones(2, 2)).dtype == torch.float32
            store = seg.PTTensorDataset(torch.ones(3, 2, dtype=torch.float16))
            rows = store[[0, 2]].to("cuda", non_blocking=True)
            assert rows.dtype == torch.float64 and rows.device.type == "cpu" and rows.shape == (2, 2)
            assert seg.open_clip.get_tokenizer(shims.AUX_HUB_NAME) == shims.AUX_ARCH
            with pytest.raises(ValueError, match="only NVlabs/RADIO"):
                factory.torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14_reg")
            with pytest.raises(ValueError, match="no weights"):
                seg.create_model("ViT-L-14-quickgelu", pretrained="metaclip_fullcc", precision="fp16")
        assert seg.MB_ROOT == "memory_bank" and seg.torch is torch and factory.torch is torch
        assert seg.open_clip.get_tokenizer("x") == "x" and seg.PTTensorDataset.__module__ == "corrclip_segmentor"
    assert sys.modules["open_clip"] is open_clip and "corrclip_segmentor" not in sys.modules
    assert "vfms" not in sys.modules and "mmseg" not in sys.modules
    assert sys.path == path and dict(os.environ) == env
    with pytest.raises(ValueError, match="corrclip_segmentor.py"):
        with shims.release_imports(tmp_path):
            pass


def test_script_refuses_missing_arguments_in_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(BENCH / "corrclip2_release.py"), *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)

    r = run("--run", str(tmp_path))
    assert r.returncode != 0 and "missing --release, --radio-repo, --inputs" in r.stderr
    r = run("--release", str(tmp_path), "--radio-repo", str(tmp_path), "--inputs", str(tmp_path), "--run", "x")
    assert r.returncode != 0 and "not found:" in r.stderr and "clip.pt" in r.stderr
    assert "Traceback" not in r.stderr
