"""The machine a benchmark runs on: its CPU and what it can compute at most."""

import platform
import re
from pathlib import Path

from segment.training.devices import usable_cores

__all__ = ["cpu_peak"]


def cpu_peak():
    """This CPU's nominal float32 peak: cores x nominal GHz x FLOPs per cycle per core.

    FLOPs per cycle assume two FMA units per core (an FMA is 2 FLOPs): 2 x 16 lanes x 2 = 64
    with AVX-512, 2 x 8 x 2 = 32 with AVX2/FMA, 8 otherwise. The clock is the nominal one from
    /proc/cpuinfo (`cpu MHz`, the base/TSC clock on a VM), not the turbo clock.
    """
    model, mhz, flags = platform.processor() or "unknown", None, ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)$", text, re.M).group(1))
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()
    except (OSError, AttributeError):
        pass
    cores = usable_cores()
    if "avx512f" in flags:
        simd, flops_per_cycle = "AVX-512", 64
    elif "fma" in flags:
        simd, flops_per_cycle = "AVX2+FMA", 32
    else:
        simd, flops_per_cycle = "unknown SIMD", 8
    ghz = (mhz or 0.0) / 1000.0
    return {
        "model": model,
        "cores": cores,
        "nominal_ghz": ghz,
        "simd": simd,
        "flops_per_cycle_per_core": flops_per_cycle,
        "amx_bf16": "amx_bf16" in flags,
        "peak_gflops_fp32": cores * ghz * flops_per_cycle,
    }
