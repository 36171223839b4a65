"""What `seqpar bench` records about the machine: device, CPU, matmul peak, memory marks.

Numbers from different machines must never be compared by mistake, so every
bench record carries `machine()`; its FLOP/s are divided by `matmul_peak()`
measured in the same process, not by a datasheet number.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine() -> dict[str, Any]:
    dev = jax.devices()[0]
    info = _cpuinfo()
    flags = info.get("flags", info.get("Features", "")).split()  # x86 / arm spelling
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    plural = "" if cores == 1 else "s"
    return {
        "backend": jax.default_backend(),
        "device": dev.device_kind,  # GPU name on GPU; "cpu" on CPU
        "devices": len(jax.devices()),
        "cpu_model": cpu_model(),
        # A VM may name only the vendor ("AMD EPYC"); family/model and the vector units pin it down.
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve") if f in flags],
        "cpu_cores": cores,
        "load_avg_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # XLA's CPU buffers come from malloc: above 32 MB each is a fresh mmap, faulted in page by
        # page on every step unless huge pages apply (THP "always", or GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "summary": f"{cpu_model()} (family/model {info.get('cpu family', '?')}/{info.get('model', '?')}), {cores} core{plural} (jax cpu)"
        if jax.default_backend() == "cpu"
        else f"{dev.device_kind} (jax {jax.default_backend()}), host {cpu_model()}",
    }


def matmul_peak(sizes: tuple[int, ...] | None = None, repeats: int = 10) -> dict[str, Any]:
    """Best float32 matmul FLOP/s over a few square sizes: the denominator of `peak_fraction`."""
    if sizes is None:
        sizes = (512, 1024, 2048) if jax.default_backend() == "cpu" else (4096, 8192)
    per_size = {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t0)
        best = min(times)
        per_size[str(n)] = 2 * n**3 / best
    return {"flops_per_s": max(per_size.values()), "per_size": per_size, "dtype": "float32"}


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so each point gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def device_peak_mb() -> float | None:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # CPU has none
        return None
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**20 if peak is not None else None
