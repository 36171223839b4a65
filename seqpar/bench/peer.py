"""The baseline a user would otherwise run: PyTorch's `nn.GRU` trained by BPTT, timed beside seqpar's rows.

`seqpar bench --peer torch` (needs PyTorch: `pip install 'seqpar[peer]'`) adds, for every GRU grid
point, a row for one training step of `torch.nn.GRU` (cuDNN on a GPU, oneDNN on a CPU) with a
linear readout, cross-entropy on every step and Adam: the same shapes as seqpar's delayed-recall
point (one-hot inputs of the task's vocabulary, hidden size, length, batch). It is timed as the
other rows are (compile-free, so warm-up steps, then repeated steps each synchronised, median and
quartiles), in the same process and machine state, so every seqpar speed ratio can be read against
it: `÷torch` is seqpar BPTT's step time over PyTorch's at the same point.
"""

from __future__ import annotations

import time
from typing import Any

from seqpar.bench.grid import Grid

PEERS = ("torch",)


def available(peer: str) -> str | None:
    """Why the peer cannot run here (not installed), or None."""
    if peer not in PEERS:
        return f"--peer {peer}: expected one of {', '.join(PEERS)}"
    try:
        import torch  # noqa: F401  # pyright: ignore[reportMissingImports]
    except ImportError:
        return "--peer torch needs PyTorch: pip install 'seqpar[peer]' (or pip install torch)"
    return None


def torch_row(vocab: int, hidden: int, length: int, batch: int, grid: Grid, summarize: Any) -> dict[str, Any]:
    """One training step of `nn.GRU` + readout + cross-entropy + Adam at this point, timed."""
    import torch  # pyright: ignore[reportMissingImports]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    gru = torch.nn.GRU(vocab, hidden, batch_first=True).to(device)
    head = torch.nn.Linear(hidden, vocab).to(device)
    opt = torch.optim.Adam([*gru.parameters(), *head.parameters()], lr=1e-3)
    tokens = torch.randint(0, vocab, (batch, length), device=device)
    x = torch.nn.functional.one_hot(tokens, vocab).float()
    y = torch.roll(tokens, 2, dims=1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out, _ = gru(x)
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, vocab), y.reshape(-1))
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(grid.warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < grid.max_repeats and (len(times) < grid.min_repeats or time.perf_counter() - start < grid.min_time_s):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    backend = "cuDNN" if device == "cuda" else ("oneDNN" if torch.backends.mkldnn.is_available() else "aten")
    return {
        "peer": "torch",
        "label": "torch nn.GRU (bptt)",
        "cell": "gru",
        "length": length,
        "batch": batch,
        "hidden": hidden,
        "step_ms": summarize(times),
        "torch": torch.__version__,
        "backend": f"{backend} on {device}",
        "threads": torch.get_num_threads(),
    }
