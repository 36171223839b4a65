"""The findings store: a compact copy of every study's records, committed beside the code.

Every findings table, figure and number is generated from here (`seqpar findings`), never
typed (DVC keeps metrics and plot data as small committed files in the same spirit). A
training study is kept as slim run directories that every record reader reads as it reads
`results/` (`seqpar compare findings/shooting ...` works): each run's `summary.json` without its
environment, tracebacks or machine paths, and its `metrics.jsonl` subsampled to the evaluation
points the pages draw (every evaluation line while there are few, at most `CURVE_POINTS` per
method, the last always kept); a sweep's `sweep.json`. A measurement that is not a training run
(`seqpar bench`, `seqpar predictability`, `seqpar tolerance`) is its JSON record. No checkpoint,
no TensorBoard file, no spec copy is kept.

Each study folder holds `study.json`: the commands that produced it, the date, the machine and
the run time of every source, as the pages quote them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from seqpar.records.layout import METRICS, SUMMARY, SWEEP_INDEX
from seqpar.records.reader import load, read_metrics
from seqpar.records.writer import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[3]
STORE = ROOT / "findings"
STUDY = "study.json"
CURVE_POINTS = 40  # evaluation lines kept per method (the last one always): what a curve needs

# Keys of a summary that say where and by whom, not what was measured: dropped.
DROP_SUMMARY = ("env", "traceback")


class FindingsError(ValueError):
    """A problem with the store or its sources; one line."""


class NotInStore(FindingsError):
    """The store holds no record of a study: its pages say it was not measured, and show nothing of it."""

    def __init__(self, study: str, what: str = "") -> None:
        super().__init__(f"findings/{study}: {what + ' ' if what else ''}not in the store (seqpar findings add {study} RUN_DIR ...)")
        self.study, self.what = study, what


def require(name: str, store: Path = STORE) -> Path:
    """The study's folder, or `NotInStore` where the store has none."""
    folder = study_dir(name, store)
    if not folder.is_dir():
        raise NotInStore(name)
    return folder


def study_dir(name: str, store: Path = STORE) -> Path:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise FindingsError(f"study name {name!r}: expected a plain name like shooting")
    return store / name


def read_study(name: str, store: Path = STORE) -> dict[str, Any]:
    path = require(name, store) / STUDY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FindingsError(f"{path}: no such study in the findings store (add it: seqpar findings add {name} RUN_DIR ...)") from None


def read_json(name: str, file: str, store: Path = STORE) -> dict[str, Any]:
    """A measurement's JSON record in a study folder (bench.json, predictability.json, ...)."""
    path = require(name, store) / file
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FindingsError(f"{path}: missing from the findings store") from None


def _scrub(obj: Any) -> Any:
    """Machine paths out: an absolute path becomes its last two parts (a data file's name stays readable)."""
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k != "spec_dir"}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and len(Path(obj).parts) > 2:
        return str(Path(*Path(obj).parts[-2:]))
    return obj


def _rounded(obj: Any) -> Any:
    """Floats to 7 significant digits (float32 carries no more): a smaller, stable store."""
    if isinstance(obj, float) and math.isfinite(obj) and obj != 0.0:
        return float(f"{obj:.7g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def slim_summary(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if k not in DROP_SUMMARY}
    if "resumes" in out:
        out["resumes"] = [{k: v for k, v in r.items() if k != "env"} for r in out["resumes"]]
    out["runs"] = [{k: v for k, v in r.items() if k != "traceback"} for r in summary.get("runs", [])]
    return _rounded(_scrub(out))


def slim_metrics(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: every evaluation line (one with a held-out rollout loss) subsampled evenly to at
    most `CURVE_POINTS` (the last kept), and each method's last training line."""
    out: list[dict[str, Any]] = []
    methods = list(dict.fromkeys(ln.get("method") for ln in lines))
    for m in methods:
        mine = [ln for ln in lines if ln.get("method") == m]
        evals = [ln for ln in mine if "rollout_loss_val" in ln]
        if len(evals) > CURVE_POINTS:
            step = len(evals) / CURVE_POINTS
            evals = [evals[min(int(i * step), len(evals) - 1)] for i in range(CURVE_POINTS - 1)] + [evals[-1]]
        train = [ln for ln in mine if "rollout_loss_val" not in ln]
        kept = {id(ln) for ln in evals} | ({id(train[-1])} if train else set())
        out += [ln for ln in mine if id(ln) in kept]
    return _rounded(out)


def add_runs(name: str, sources: list[str | Path], commands: list[str], store: Path = STORE) -> dict[str, Any]:
    """Copy the run records under `sources` (run, sweep or study directories) into the study's folder,
    slimmed (see the module doc), replacing what the study held; write its `study.json`."""
    loaded = load([str(s) for s in sources])
    if not loaded.runs:
        raise FindingsError(f"{name}: no run records under {', '.join(map(str, sources))}")
    target = study_dir(name, store)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    sources_info = []
    for src in sources:
        src = Path(src)
        base = target / src.name
        for rd in loaded.runs:
            try:
                rel = rd.path.resolve().relative_to(src.resolve())
            except ValueError:
                continue
            out = base / rel
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / SUMMARY, slim_summary(rd.summary))
            lines = slim_metrics(read_metrics(rd.path))
            atomic_write_text(out / METRICS, "".join(json.dumps(ln, allow_nan=False) + "\n" for ln in lines))
        if (src / SWEEP_INDEX).is_file():
            index = json.loads((src / SWEEP_INDEX).read_text())
            atomic_write_json(base / SWEEP_INDEX, _rounded(_scrub({k: v for k, v in index.items() if k not in ("workers",)})))
        sources_info.append(_source_info(src, loaded.runs))
    info = {"study": name, "commands": commands, "sources": sources_info}
    atomic_write_json(target / STUDY, info)
    return info


def _source_info(src: Path, runs: list[Any]) -> dict[str, Any]:
    """When and on what a source ran: its earliest start, latest end, and the machine its records name."""
    mine = [rd for rd in runs if str(rd.path.resolve()).startswith(str(src.resolve()))]
    starts = sorted(rd.summary.get("started") or "" for rd in mine if rd.summary.get("started"))
    ends = sorted(rd.summary.get("finished") or "" for rd in mine if rd.summary.get("finished"))
    env = next((rd.summary.get("env") for rd in mine if rd.summary.get("env")), {}) or {}
    machine = f"{env.get('device_kind') or env.get('backend')}, {host_summary()}" if env else host_summary()
    wall = sum(r.get("wall_s") or 0.0 for rd in mine for r in rd.summary.get("runs", []) if isinstance(r.get("wall_s"), (int, float)))
    return {
        "name": src.name,
        "runs": len(mine),
        "started": starts[0] if starts else None,
        "finished": ends[-1] if ends else None,
        "machine": machine,
        "training_seconds": round(wall, 1),
    }


def host_summary() -> str:
    """This machine in words: its CPU model and core count (what `seqpar findings add` ran beside)."""
    import os

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {model or 'CPU'}"


def add_json(name: str, source: Path, file: str, commands: list[str], store: Path = STORE) -> dict[str, Any]:
    """Copy a measurement's JSON record (`seqpar bench`, `predictability`, `tolerance`) into the study."""
    try:
        record = json.loads(Path(source).read_text())
    except (OSError, ValueError) as e:
        raise FindingsError(f"{source}: cannot read a JSON record ({e})") from None
    target = study_dir(name, store)
    target.mkdir(parents=True, exist_ok=True)
    slim = {k: v for k, v in record.items() if k not in DROP_SUMMARY}  # the environment stays with the source
    atomic_write_json(target / file, _rounded(_scrub(slim)))
    # A study may hold several records (float32 and float64 sweeps): each added one joins the others.
    info = json.loads((target / STUDY).read_text()) if (target / STUDY).is_file() else {"study": name, "commands": [], "sources": []}
    info["commands"] = [*[c for c in info["commands"] if c not in commands], *commands]
    info["sources"] = [
        *[src for src in info["sources"] if src.get("name") != file],
        {
            "name": file,
            "date": record.get("date") or str(record.get("created", ""))[:10],
            "machine": _machine_of(record),
            **({"seconds": seconds} if (seconds := _seconds_of(record)) else {}),
        },
    ]
    atomic_write_json(target / STUDY, info)
    return info


def _seconds_of(record: dict[str, Any]) -> float | None:
    """A measurement's own time: the sum of its points' seconds, where they carry them."""
    points = record.get("points")
    if not isinstance(points, list):
        return None
    got = [p["seconds"] for p in points if isinstance(p, dict) and isinstance(p.get("seconds"), (int, float))]
    return round(sum(got), 1) if got else None


def _machine_of(record: dict[str, Any]) -> str | None:
    m = record.get("machine")
    return m.get("summary") if isinstance(m, dict) else m


def store_bytes(store: Path = STORE) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
