"""The same DALI graph on the GPU ('mixed' decoding, GPU operators) against the CPU graph.

Skipped where there is no CUDA device (CI, the 2-core box); run it on a GPU machine.
"""
import pytest
import torch

from pipeline import build_loader
from test_loader import BATCH, make_cfg, shards  # noqa: F401  (module fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("roi_decode", [False, True])
def test_gpu_batches_match_cpu_batches(shards, roi_decode):  # noqa: F811
    cfg = make_cfg(**{"DATASET.SEARCH.BLUR": 0.5, "DATASET.GRAY": 0.3})
    cpu = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=11)
    gpu = build_loader(cfg, shards=shards, batch_size=BATCH, device="cuda", seed=11,
                       roi_decode=roi_decode)
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b["search"].is_cuda and b["label_cls"].is_cuda
        for key in ("template", "search"):
            diff = (a[key] - b[key].cpu()).abs()
            # nvJPEG's IDCT/upsampling and GPU interpolation differ slightly from libjpeg/CPU
            assert float(diff.mean()) < 1.5, key
        assert torch.equal(a["bbox"], b["bbox"].cpu()) and torch.equal(a["neg"], b["neg"].cpu())
        for key in ("label_cls", "label_loc_weight"):
            assert b[key].shape == a[key].shape


def test_pinned_cpu_batches(shards):  # noqa: F811
    cfg = make_cfg()
    plain = next(iter(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=1)))
    pinned = next(iter(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=1,
                                    pin_memory=True)))
    for key, value in pinned.items():
        assert value.is_pinned(), key
        assert torch.equal(value, plain[key]), key
