"""train.gpu_peaks: the card named from real `torch.cuda.get_device_name` strings, and the peak
that fits the run (bf16 with AMP, TF32 without)."""
import pytest
import torch

from train.bench import device_peak
from train.gpu_peaks import CARDS, card_peak

GIB = 2**30


@pytest.mark.parametrize("name,sms,mem_gib,card", [
    # names as the driver reports them (nvidia-smi / torch.cuda.get_device_name)
    ("NVIDIA A100-SXM4-40GB", 108, 40, "A100"),
    ("NVIDIA A100-SXM4-80GB", 108, 80, "A100"),
    ("NVIDIA A100-PCIE-40GB", 108, 40, "A100"),
    ("NVIDIA A100 80GB PCIe", 108, 80, "A100"),
    ("NVIDIA H100 80GB HBM3", 132, 80, "H100 SXM"),
    ("NVIDIA H100 PCIe", 114, 80, "H100 PCIe"),
    ("NVIDIA H100", 114, 80, "H100 PCIe"),        # a bare name: the SM count decides
    ("NVIDIA H100", 132, 80, "H100 SXM"),
    ("NVIDIA H100 NVL", 132, 94, "H100 NVL"),
    ("NVIDIA H100", 132, 94, "H100 NVL"),         # a bare name: 94 GB is the NVL board
    ("NVIDIA H200", 132, 141, "H200 SXM"),
    ("NVIDIA H200 NVL", 132, 141, "H200 NVL"),
    ("NVIDIA GH200 480GB", 132, 96, "GH200"),
    ("NVIDIA L40S", 142, 48, "L40S"),
    ("NVIDIA GeForce RTX 4090", 128, 24, "RTX 4090"),
])
def test_cards_are_told_from_their_driver_names(name, sms, mem_gib, card):
    found = card_peak(name, sms, mem_gib * GIB)
    assert found is not None and found.card == card


@pytest.mark.parametrize("name", [
    "NVIDIA GeForce RTX 4090 D",            # another chip (fewer SMs), not the 4090's peak
    "NVIDIA GeForce RTX 4090 Laptop GPU",
    "Tesla V100-SXM2-32GB",
    "NVIDIA L40",                           # not the L40S
    "NVIDIA H20",                           # not the H200
    "NVIDIA A10",
])
def test_other_cards_get_no_peak(name):
    assert card_peak(name, 80, 24 * GIB) is None


def test_peak_follows_amp_and_the_board():
    # dense (no 2:4 sparsity) datasheet figures; PCIe/NVL boards are slower than SXM
    sxm, pcie, nvl = CARDS["H100 SXM"], CARDS["H100 PCIe"], CARDS["H100 NVL"]
    assert sxm.peak(amp=True) == 989.4 and sxm.peak(amp=False) == 494.7
    assert pcie.peak(amp=True) < nvl.peak(amp=True) < sxm.peak(amp=True)
    assert card_peak("NVIDIA H200 NVL").peak(amp=True) < card_peak("NVIDIA H200").peak(amp=True)
    for c in CARDS.values():   # TF32 is half of bf16 on every tensor-core generation named here
        assert c.tf32_tflops == pytest.approx(c.bf16_tflops / 2, rel=0.02)


def test_cpu_device_has_no_peak():
    assert device_peak(torch.device("cpu"), amp=True) == {
        "device_name": "cpu", "card": "cpu", "peak_tflops": None, "peak_kind": None}
