"""Seeds, devices, paths and the one helper that writes a notebook's results.

Introduced in notebooks/00_definitions.ipynb.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .validate import check_choice, check_positive, check_seed

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``.

    Pass the returned generator (or one derived from it) as ``generator=`` to every random
    choice: data sets and targets take one (no attack draws random numbers).
    """
    check_seed(seed)
    seed = int(seed)  # a NumPy integer too
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU. Anything else (a name such as ``"cuda:1"`` or a
    ``torch.device``) is checked, the accelerator's availability included, and returned."""
    text = str(device).strip().lower()
    base = text.split(":")[0]
    check_choice("device", base, DEVICE_CHOICES)
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if base in available and not available[base]():
        raise ValueError(f"device {base!r} requested but it is not available here: use DEVICE='auto' or 'cpu'")
    try:
        return torch.device(text)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a valid device name ({err}): pass e.g. 'cpu' or 'cuda:0'") from None


def project_root() -> Path:
    """The nearest folder at or above the working directory that holds ``pyproject.toml``
    (so notebooks run from ``notebooks/`` write next to the repository), else the working directory."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "mlnb").is_dir():
            return folder
    return here


def results_root() -> Path:
    """``$MLNB_RESULTS`` (``~`` expanded; empty counts as unset) or ``<project>/results``."""
    return Path(os.environ.get("MLNB_RESULTS") or project_root() / "results").expanduser()


def data_root() -> Path:
    """``$MLNB_DATA`` (``~`` expanded; empty counts as unset) or ``<project>/data`` (the cache of built data
    sets and trained models)."""
    return Path(os.environ.get("MLNB_DATA") or project_root() / "data").expanduser()


def results_dir(notebook: str) -> Path:
    """``results/<notebook>/``, created if missing."""
    path = results_root() / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_jsonable(obj: Any, *, exact: bool = False) -> Any:
    """Tensors, NumPy values, paths and tuples -> plain JSON types; a non-finite float -> null. ``exact=True``
    (for :func:`param_hash`) keeps what that would merge: a non-finite float becomes ``"float(nan)"`` /
    ``"float(inf)"`` / ``"float(-inf)"``, and dict keys that collide once written as text are refused."""
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        if exact and len(set(keys)) != len(keys):
            raise ValueError(f"parameter keys {sorted(keys)} collide once written as text: use distinct names")
        return {str(k): to_jsonable(v, exact=exact) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, exact=exact) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist(), exact=exact)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), exact=exact)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), exact=exact)
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return f"float({obj})" if exact else None
    return obj


def param_hash(params: dict) -> str:
    """A short stable hash of a parameter dict (sorted JSON), used to key runs and results: NaN, inf, -inf and
    None are four keys (``to_jsonable(exact=True)``)."""
    text = json.dumps(to_jsonable(params, exact=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def replacing(path: str | Path):
    """Write a file atomically: the block writes the yielded temporary path (a new name beside ``path``, with
    ``path``'s suffix, so writers that infer a format from it work), which then replaces ``path`` by a rename.
    A reader never sees half a file, two writers never share a temporary file, and a failed block leaves
    nothing behind. The file gets the mode ``open()`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (UTF-8, whatever the locale: every reader of ours reads UTF-8) through
    :func:`replacing`: a reader never sees half a file."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def environment_info(device: str | torch.device | None = None) -> dict:
    """Package version, torch version, device and machine: recorded in every ``metrics.json``."""
    from . import __version__

    info = {"mlnb": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device is not None:
        dev = torch.device(device)
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def write_metrics(notebook: str, metrics: dict, params: dict, *, seed: int | None = None,
                  device: str | torch.device | None = None) -> Path:
    """Write ``results/<notebook>/metrics.json`` with the metrics, the parameters and their hash,
    the seed, and :func:`environment_info`. Returns the path."""
    record = {"notebook": notebook, "metrics": metrics, "params": params, "params_hash": param_hash(params),
              "seed": seed, "environment": environment_info(device)}
    return write_json(results_dir(notebook) / "metrics.json", record)


def save_figure(fig, notebook: str, name: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as ``results/<notebook>/<name>.png`` (atomically)."""
    path = results_dir(notebook) / f"{name}.png"
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def save_table(df, notebook: str, name: str) -> Path:
    """Save a pandas DataFrame as ``results/<notebook>/<name>.csv`` (atomically)."""
    return atomic_write_text(results_dir(notebook) / f"{name}.csv", df.to_csv(index=True))


@contextmanager
def cpu_threads(n: int, device: torch.device | str = "cpu"):
    """Run the block on ``n`` torch CPU threads when ``device`` is the CPU (else unchanged), then restore the
    count. Training uses it for reproducible weights; the LP simplex for its many small kernels, which on
    two threads wait on each other once another process takes a core (measured 25x slower)."""
    before = torch.get_num_threads()
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if on_cpu:
            torch.set_num_threads(before)


def _free_memory(device: torch.device) -> None:
    backend = getattr(torch, device.type, None)
    empty = getattr(backend, "empty_cache", None)
    if callable(empty):
        empty()


def run_in_chunks(n: int, batch_size: int | None, device: torch.device,
                  fn: Callable[[slice], dict]) -> dict:
    """Call ``fn(slice)`` on consecutive chunks of ``batch_size`` images (all at once if None) and
    concatenate the returned dicts of ``(n_chunk, ...)`` tensors.

    An out-of-memory error (``torch.OutOfMemoryError``) halves the chunk size and retries the
    chunk; finished chunks are kept; at one image it is raised. The one out-of-memory policy of
    ``mlnb``: the attacks chunk their batches with it and the experiment runner its chunks. No attack mixes
    images, so the chunking changes no formula; the model's convolutions may round the last bits by batch
    size (README, resume).

    Introduced in notebooks/06_general_attacks.ipynb (the runner's chunks); the attacks call it too.
    """
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    if n == 0:
        return {}
    size = n if batch_size is None else min(int(batch_size), n)
    parts, start = [], 0
    while start < n:
        stop = min(start + size, n)
        try:
            parts.append(fn(slice(start, stop)))
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            _free_memory(device)
            continue
        start = stop
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
