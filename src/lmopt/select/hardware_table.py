"""Common inference targets by the figures a roofline needs: memory, bandwidth, peak compute, hourly price.

Each row cites where its figures come from (the vendor's datasheet or spec page). Compute is the dense
peak (no 2:4 sparsity) of the tensor/matrix units: `bf16_tflops` with fp32 accumulation (what a bf16
matmul in PyTorch uses), `int8_tops` for int8 x int8 matmuls (W8A8), `fp32_tflops` without TF32. CPU
rows are one socket, peak from cores x clock x FLOPs per cycle (AMX / AVX-512), so only a rough
ceiling. Prices are on-demand list prices per device-hour at a typical cloud (per chip for TPUs, the
share of one socket of a cloud instance for CPUs) as of `PRICES_AS_OF`: they vary by provider, region,
commitment and month, so treat them as an order of magnitude and pass your own (`price_per_hour`).
Consumer parts that no major cloud rents by the hour have no price (cost per token is then not shown).

`this_machine()` describes the machine lmopt runs on from measurements (memory bandwidth by a large
copy, matmul throughput by timing), not from a table.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

import psutil

from lmopt.errors import LmoptError
from lmopt.hardware import detect_hardware, measure_bandwidth

PRICES_AS_OF = "mid-2025 list prices (vary by provider, region and commitment)"
THIS_MACHINE = "this"


@dataclass(frozen=True)
class Target:
    """One piece of inference hardware as the roofline sees it."""

    name: str
    kind: str
    """gpu, tpu, apple (unified memory shared by CPU and GPU) or cpu."""
    memory_gb: float
    """Memory the model can use: device memory, or the machine's RAM for CPUs and Apple parts (GB = 1e9 B)."""
    bandwidth_gbs: float
    """Peak memory bandwidth in GB/s."""
    bf16_tflops: float
    int8_tops: float | None
    """None: no faster int8 matmul path (int8 runs at the bf16 rate)."""
    fp32_tflops: float | None
    """None: no native fp32 matmul (fp32 runs at half the bf16 rate, an assumption)."""
    price_per_hour: float | None
    """USD per device-hour, on demand (None: not rented by the hour)."""
    price_source: str
    source: str
    """Where the hardware figures come from."""
    measured: bool = False
    """True for `this_machine()`: bandwidth and compute measured here, not read from a datasheet."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def compute_tflops(self, compute: str) -> float:
        """Peak of the unit a format's matmuls run on: "bf16", "fp32", "int8", or "dense" (the faster of
        bf16 and fp32). Low-bit weights run where dense matmuls are fastest: weight-only int4 de-quantizes
        into the faster dense unit, and int8 without an int8 unit does too. That is bf16 on GPUs and on
        CPUs with AMX or AVX512-BF16; fp32 on CPUs that emulate bf16, where lmopt's autotuned kernels run
        prompt chunks on fp32 copies."""
        fp32 = self.fp32_tflops or self.bf16_tflops / 2
        if compute == "int8":
            return self.int8_tops or max(self.bf16_tflops, fp32)
        if compute == "fp32":
            return fp32
        if compute == "dense":
            return max(self.bf16_tflops, fp32)
        return self.bf16_tflops


def _gpu(name: str, memory: float, bw: float, bf16: float, int8: float, fp32: float, price: float | None,
         price_source: str, source: str) -> Target:
    return Target(name, "gpu", memory, bw, bf16, int8, fp32, price, price_source, source)


TARGETS: dict[str, Target] = {t.name: t for t in [
    # --- data-centre GPUs ---
    _gpu("h100-sxm", 80, 3350, 989, 1979, 67, 2.99, "GPU clouds (e.g. Lambda on-demand 8x H100 SXM, per GPU)",
         "NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB)"),
    _gpu("h100-pcie", 80, 2000, 756, 1513, 51, 2.49, "GPU clouds (e.g. Lambda on-demand 1x H100 PCIe)",
         "NVIDIA H100 Tensor Core GPU datasheet (PCIe 80GB)"),
    _gpu("h200", 141, 4800, 989, 1979, 67, 3.80, "GPU clouds, on-demand per GPU (about $3.5-4.5)",
         "NVIDIA H200 Tensor Core GPU datasheet (SXM 141GB)"),
    _gpu("a100-80gb", 80, 2039, 312, 624, 19.5, 1.79, "GPU clouds (e.g. Lambda on-demand A100 SXM 80GB)",
         "NVIDIA A100 Tensor Core GPU datasheet (SXM 80GB)"),
    _gpu("a100-40gb", 40, 1555, 312, 624, 19.5, 1.29, "GPU clouds (e.g. Lambda on-demand A100 40GB)",
         "NVIDIA A100 Tensor Core GPU datasheet (40GB)"),
    _gpu("l4", 24, 300, 121, 242.5, 30.3, 0.71, "Google Cloud g2-standard-4 (1x L4), us-central1",
         "NVIDIA L4 Tensor Core GPU datasheet"),
    _gpu("l40s", 48, 864, 362, 733, 91.6, 1.86, "AWS g6e.xlarge (1x L40S), us-east-1",
         "NVIDIA L40S datasheet"),
    _gpu("a10g", 24, 600, 125, 250, 31.2, 1.01, "AWS g5.xlarge (1x A10G), us-east-1",
         "NVIDIA A10 Tensor Core GPU datasheet (A10G is AWS's A10 variant; figures of the A10)"),
    # --- consumer GPUs (GeForce: bf16 with fp32 accumulation runs at half the fp16-accumulate rate) ---
    _gpu("rtx-4090", 24, 1008, 165.2, 660.6, 82.6, 0.69, "community GPU clouds (e.g. RunPod, about $0.35-0.70)",
         "NVIDIA Ada Lovelace GPU architecture whitepaper (GeForce RTX 4090)"),
    _gpu("rtx-3090", 24, 936, 71, 284, 35.6, 0.44, "community GPU clouds (e.g. RunPod, about $0.22-0.45)",
         "NVIDIA Ampere GA102 GPU architecture whitepaper (GeForce RTX 3090)"),
    _gpu("rtx-4060", 8, 272, 30.2, 121, 15.1, None, "not rented by the hour (owned hardware)",
         "NVIDIA GeForce RTX 4060 specifications; tensor rates scaled from the Ada whitepaper by SM count "
         "and clock"),
    # --- TPU ---
    Target("tpu-v5e", "tpu", 16, 819, 197, 394, None, 1.20, "Google Cloud TPU pricing, v5e on-demand per chip",
           "Google Cloud TPU v5e documentation (per chip)"),
    # --- Apple silicon (unified memory; GPU rates: Apple publishes no bf16 figure, fp16 = fp32 rate) ---
    Target("apple-m2", "apple", 24, 100, 3.6, None, 3.6, 0.65, "AWS mac2-m2.metal (M2, 24 GB)",
           "Apple M2 press release (100 GB/s unified memory, 3.6 TFLOPS GPU)"),
    Target("apple-m2-max", "apple", 96, 400, 13.6, None, 13.6, None, "not rented by the hour (owned hardware)",
           "Apple M2 Pro/M2 Max press release (400 GB/s, 13.6 TFLOPS GPU, up to 96 GB)"),
    Target("apple-m3", "apple", 24, 100, 4.1, None, 4.1, None, "not rented by the hour (owned hardware)",
           "Apple MacBook Air M3 tech specs (100 GB/s, up to 24 GB); GPU rate estimated from cores x clock"),
    Target("apple-m3-max", "apple", 128, 400, 16.4, None, 16.4, None, "not rented by the hour (owned hardware)",
           "Apple M3 family press release / MacBook Pro tech specs (400 GB/s, up to 128 GB); GPU rate "
           "estimated from cores x clock"),
    # --- server CPUs, one socket ---
    Target("xeon-8480", "cpu", 512, 307, 114, 229, 7.2, 4.28,
           "AWS c7i.24xlarge (48 Sapphire Rapids cores), us-east-1, as one socket",
           "Intel Xeon Platinum 8480+ product specifications (56 cores, 8x DDR5-4800) and Intel AMX "
           "(1024 bf16 / 2048 int8 ops per cycle per core at 2.0 GHz)"),
    Target("epyc-9654", "cpu", 768, 461, 14.7, 29.5, 14.7, 4.93,
           "AWS c7a.48xlarge (2x EPYC Genoa) halved, us-east-1",
           "AMD EPYC 9654 product page (96 cores, 12x DDR5-4800); AVX-512 bf16/VNNI rates at 2.4 GHz"),
    Target("graviton3", "cpu", 128, 307, 8.2, 16.4, 4.1, 2.32, "AWS c7g.16xlarge (64 Graviton3 cores), us-east-1",
           "AWS Graviton3 (64 Neoverse V1 cores, 8x DDR5-4800, SVE bf16 at 2.6 GHz)"),
]}
"""Name -> target. Memory in GB (1e9 bytes), bandwidth in GB/s, compute in TFLOPS / TOPS."""


def target_names() -> list[str]:
    return [THIS_MACHINE, *TARGETS]


def get_target(name: str, *, threads: int | None = None) -> Target:
    """A table row by name, or `this` (the machine lmopt runs on, measured)."""
    key = name.strip().lower()
    if key == THIS_MACHINE:
        return this_machine(threads)
    if key not in TARGETS:
        raise LmoptError(f"unknown hardware '{name}' (choose {', '.join(target_names())})")
    return TARGETS[key]


def with_price(target: Target, price_per_hour: float | None) -> Target:
    """The target with the user's own hourly price (None keeps the table's)."""
    return target if price_per_hour is None else replace(target, price_per_hour=price_per_hour,
                                                         price_source="given by the user")


def _matmul_tflops(dtype_name: str, size: int = 768, repeats: int = 5) -> float:
    """Best-of-`repeats` throughput of `linear(x, w)` with x and w both (size x size), in TFLOPS.

    Timed in the layout every nn.Linear runs (x @ w.T, w stored (out, in)): the kernel behind a plain
    `a @ b` can differ. On an AVX2 CPU without native bf16 a bf16 `a @ b` ran at 1.1 GFLOPS, `linear` at
    20 GFLOPS, so the plain product made the planner's bf16 compute bound 18x too low."""
    import torch  # lazy: lmopt.select is imported by the CLI at start-up; torch takes ~1 s

    dtype = getattr(torch, dtype_name)
    x = torch.randn(size, size).to(dtype)
    w = torch.randn(size, size).to(dtype)
    torch.nn.functional.linear(x, w)  # warm-up: kernel selection, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


@lru_cache(maxsize=4)
def this_machine(threads: int | None = None) -> Target:
    """This machine measured: copy bandwidth (`lmopt.hardware.measure_bandwidth`), matmul throughput
    in bf16 and fp32 with `threads` torch threads (default: lmopt's), memory = total RAM or GPU memory."""
    import torch  # lazy: see _matmul_tflops

    hw = detect_hardware()
    before = torch.get_num_threads()
    torch.set_num_threads(threads or hw.threads)
    try:
        bandwidth = measure_bandwidth(size_mb=128, repeats=5)
        bf16, fp32 = _matmul_tflops("bfloat16"), _matmul_tflops("float32")
    finally:
        torch.set_num_threads(before)
    memory_gb = psutil.virtual_memory().total / 1e9
    name = f"{THIS_MACHINE} ({hw.cpu}, {threads or hw.threads} threads)"
    return Target(name, "cpu", round(memory_gb, 1), round(bandwidth, 1), round(bf16, 4), None, round(fp32, 4),
                  None, "this machine (no price; pass price_per_hour)",
                  "measured here: lmopt.hardware.measure_bandwidth (copy) and a timed matmul", measured=True)
