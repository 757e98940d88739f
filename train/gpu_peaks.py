"""Dense tensor-core peaks of the GPUs we name, for MFU: bf16 (AMP on) and TF32 (AMP off, with
TF32 matmuls/convolutions allowed, as the trainer sets).

Figures are NVIDIA's datasheet values without 2:4 sparsity (the datasheets print the sparse
figure, twice these, with an asterisk): A100 (40 and 80 GB, SXM4 and PCIe): bf16 312, TF32 156;
H100 SXM5 and H200 SXM: bf16 989.4, TF32 494.7; H100 PCIe: bf16 756.5, TF32 378; H100 NVL and
H200 NVL: bf16 835.5, TF32 417.5 (datasheets: 1,671 and 835 with sparsity); L40S: bf16 362,
TF32 183; GeForce RTX 4090 (Ada whitepaper, FP32 accumulation as torch uses): bf16 165.2,
TF32 82.6.

The card is told from ``torch.cuda.get_device_name``; where a name is ambiguous (a bare
"NVIDIA H100" or "NVIDIA H200") the SM count and memory size decide: the H100 PCIe has 114
SMs, the NVL boards 94 GB (H100) and report "NVL" in their name (H200 NVL).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CardPeak", "CARDS", "card_peak"]


@dataclass(frozen=True)
class CardPeak:
    card: str            # e.g. "H100 PCIe"
    bf16_tflops: float   # dense bf16 tensor-core peak
    tf32_tflops: float   # dense TF32 tensor-core peak

    def peak(self, amp: bool) -> float:
        """The peak that fits the run: bf16 with AMP, TF32 without."""
        return self.bf16_tflops if amp else self.tf32_tflops


CARDS = {
    "A100": CardPeak("A100", 312.0, 156.0),
    "H100 SXM": CardPeak("H100 SXM", 989.4, 494.7),
    "H100 PCIe": CardPeak("H100 PCIe", 756.5, 378.0),
    "H100 NVL": CardPeak("H100 NVL", 835.5, 417.5),
    "H200 SXM": CardPeak("H200 SXM", 989.4, 494.7),
    "H200 NVL": CardPeak("H200 NVL", 835.5, 417.5),
    "GH200": CardPeak("GH200", 989.4, 494.7),
    "L40S": CardPeak("L40S", 362.0, 183.0),
    "RTX 4090": CardPeak("RTX 4090", 165.2, 82.6),
}

_GIB = 2**30


def _h100(name: str, sm_count: int | None, memory_bytes: int | None) -> str:
    if "NVL" in name:
        return "H100 NVL"
    if "PCIE" in name or sm_count == 114:
        return "H100 PCIe"
    if memory_bytes is not None and memory_bytes > 90 * _GIB:  # 94 GB: the NVL board
        return "H100 NVL"
    return "H100 SXM"  # "NVIDIA H100 80GB HBM3", or a bare "NVIDIA H100" with 132 SMs


def card_peak(name: str, sm_count: int | None = None, memory_bytes: int | None = None) -> CardPeak | None:
    """The card and its peaks for a ``torch.cuda.get_device_name`` string (None if unknown)."""
    upper = name.upper()
    if "GH200" in upper:
        return CARDS["GH200"]
    if re.search(r"\bH200\b", upper):
        return CARDS["H200 NVL" if "NVL" in upper else "H200 SXM"]
    if re.search(r"\bH100\b", upper):
        return CARDS[_h100(upper, sm_count, memory_bytes)]
    if re.search(r"\bA100\b", upper):
        return CARDS["A100"]
    if re.search(r"\bL40S\b", upper):
        return CARDS["L40S"]
    if re.search(r"RTX 4090$", upper.strip()):  # not the 4090 D or the Laptop GPU (other chips)
        return CARDS["RTX 4090"]
    return None
