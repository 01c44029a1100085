"""mlnb's successors held against their reference code (issue 15).

* **TkML-AP** (github ``discovershu/TKML-AP``, ``attack.py``: batch size 1, written for CUDA): its
  untargeted and targeted attacks are run here, on the CPU, image by image, on the same model, images,
  targets and budget (``k``, ``eps``, ``max_iter``, learning rate) as mlnb's batched
  :func:`~mlnb.attacks.topk_untargeted` / :func:`~mlnb.attacks.topk_targeted`. Nothing of it is copied
  into mlnb: the script reads the files from a snapshot of the repository at run time (``--reference``,
  a git directory, e.g. the one the helper tool ``fetch`` leaves under ``/work/.mirror``) into a temporary
  folder and makes these run-time changes: ``torch.Tensor.cuda`` returns the tensor itself (the code
  moves tensors to CUDA unconditionally), ``cv2`` (imported for a blurring experiment not run here) is
  an empty module, its prints are swallowed, and each image enters in the ``tanh`` space the code
  expects (``arctanh((2x - 1) 0.999999)`` with ``boxmin = 0``, ``boxmax = 1``: mlnb's models read
  ``[0, 1]`` images). Reported: top-k success (mlnb's :func:`~mlnb.attacks.topk_success` on the returned
  images, and the reference's own flag), mean L2 of the successful perturbations, seconds per image and
  the speed ratio.
* **MLA-LP** (github ``hinanmu/MLALP``): its solver is MOSEK, a commercial package that needs a licence
  file, so it cannot run here; skipped with that message (``benchmarks/successors_batching.py`` times
  the reference's form of the LP with HiGHS instead).

Run: ``python -m benchmarks.successors_reference --preset default --reference /work/.mirror/discovershu+TKML-AP/repo``.
Without a snapshot it prints why and skips. Writes ``benchmarks/results/successors_reference_<preset>.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import describe, load_average, machine_info
from mlnb.attacks import topk_success, topk_targeted, topk_targets, topk_untargeted
from mlnb.tutorial import load_attack_set
from mlnb.utils import project_root, set_seed, write_json

FILES = ("attack.py", "evaluate_metrics.py", "utils.py", "models/projection.py")
DEFAULT_REFERENCE = "/work/.mirror/discovershu+TKML-AP/repo"
MLA_LP_SKIP = ("MLA-LP's reference (hinanmu/MLALP) solves its LPs with MOSEK, a commercial solver that needs a "
               "licence file: not run here (see benchmarks/successors_batching.py for its LP form under HiGHS)")


@contextlib.contextmanager
def reference_module(git_dir: Path):
    """The reference's ``attack`` module, loaded from ``git_dir`` at HEAD into a temporary folder,
    with the run-time changes of the module docstring; everything is undone on exit."""
    saved_cuda, saved_path, saved_mods = torch.Tensor.cuda, list(sys.path), dict(sys.modules)
    with tempfile.TemporaryDirectory() as tmp:
        for f in FILES:
            text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{f}"], check=True,
                                  capture_output=True, text=True).stdout
            (Path(tmp) / f).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / f).write_text(text)
        (Path(tmp) / "models" / "__init__.py").write_text("")
        try:
            torch.Tensor.cuda = lambda self, *a, **k: self
            sys.modules["cv2"] = types.ModuleType("cv2")
            for name in ("utils", "models", "models.projection", "evaluate_metrics", "attack"):
                sys.modules.pop(name, None)
            sys.path.insert(0, tmp)
            yield importlib.import_module("attack")
        finally:
            torch.Tensor.cuda = saved_cuda
            sys.path[:] = saved_path
            for name in list(sys.modules):
                if name not in saved_mods:
                    del sys.modules[name]
            sys.modules.update(saved_mods)


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * 0.999999)


def from_tanh_space(w: np.ndarray) -> torch.Tensor:
    """The image the reference returns (it returns ``arctanh((x' - boxplus) / boxmul * 0.999999)``)."""
    return (torch.tanh(torch.from_numpy(np.asarray(w, dtype=np.float32))) / 0.999999 + 1) / 2


def run_reference(ref, model, x, y, T, *, k, eps, max_iter, lr):
    """Both reference attacks, image by image: ``{name: (x_adv (n, C, H, W), own flags (n,), seconds)}``."""
    out = {}
    dev = torch.device("cpu")
    for name in ("untargeted", "targeted"):
        advs, flags = [], []
        t0 = time.perf_counter()
        for i in range(x.shape[0]):
            w = to_tanh_space(x[i:i + 1])
            with contextlib.redirect_stdout(io.StringIO()):
                if name == "untargeted":
                    img, _, _, ok, _ = ref.l2_topk_non_targeted_attack(
                        model, w, y[i:i + 1].int(), k, eps, max_iter, 1.0, 0.0, dev, Projection_flag=True, lr=lr)
                else:
                    tlab = torch.where(T[i:i + 1], 1, -1)
                    img, _, ok, _ = ref.l2_topk_targeted_attack(
                        model, w, tlab, k, eps, max_iter, 1.0, 0.0, T[i:i + 1].int().numpy(), y[i:i + 1].int(), dev,
                        remove_tier_para=0.0, lr=lr)
            # a failed targeted run returns zeros (not an image): keep the clean image then
            advs.append(from_tanh_space(img) if ok or name == "untargeted" else x[i:i + 1])
            flags.append(bool(ok))
        out[name] = (torch.cat(advs).view_as(x), torch.tensor(flags), time.perf_counter() - t0)
    return out


def summarise(model, x, y, T, x_adv, k, flags, seconds, targeted):
    with torch.no_grad():
        logits = model(x_adv)
    ok = topk_success(logits, y, k, T if targeted else None)
    l2 = (x_adv - x).flatten(1).norm(dim=1)
    return {"success": float(ok.float().mean()), "own_flag_success": float(flags.float().mean()),
            "l2_successful": float(l2[ok].mean()) if bool(ok.any()) else float("nan"),
            "s_per_image": seconds / x.shape[0]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--reference", default=DEFAULT_REFERENCE, help="git directory of a TKML-AP snapshot")
    ap.add_argument("--n-images", type=int, default=None, help="images (default 16, smoke 4)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--eps", type=float, default=10.0)
    ap.add_argument("--max-iter", type=int, default=None, help="gradient steps (default 100, smoke 20)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    smoke = args.preset == "smoke"
    n, max_iter = args.n_images or (4 if smoke else 16), args.max_iter or (20 if smoke else 100)
    out = {"preset": args.preset, "mla_lp": {"skipped": MLA_LP_SKIP}}
    print(MLA_LP_SKIP)
    git_dir = Path(args.reference)
    if not (git_dir / "HEAD").is_file():
        out["tkml_ap"] = {"skipped": f"no TKML-AP snapshot at {git_dir} (a git directory): fetch "
                                     f"github.com/discovershu/TKML-AP and pass --reference"}
        print(out["tkml_ap"]["skipped"])
        return out
    gen = set_seed(0)
    data = load_attack_set(args.preset, n, 600, gen)
    model, x, y = data.model, data.x, data.y
    T = topk_targets(data.logits_clean, y, args.k, "best")  # the reference's default strategy
    budget = dict(k=args.k, eps=args.eps, max_iter=max_iter, lr=args.lr)
    load_before = load_average()
    with reference_module(git_dir) as ref:
        commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        refs = run_reference(ref, model, x, y, T, **budget)
    rows = {}
    for name, fn in (("untargeted", lambda: topk_untargeted(model, x, y, progress=False, **budget)),
                     ("targeted", lambda: topk_targeted(model, x, y, T, progress=False, **budget))):
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        mine = summarise(model, x, y, T, res.x_adv, args.k, res.success, dt, name == "targeted")
        theirs = summarise(model, x, y, T, refs[name][0], args.k, refs[name][1], refs[name][2], name == "targeted")
        rows[name] = {"mlnb": mine, "reference": theirs, "speed_ratio": theirs["s_per_image"] / mine["s_per_image"]}
    out["tkml_ap"] = {"commit": commit, "n_images": n, "budget": budget, "targets": "best", **rows}
    out["machine"], out["loadavg"] = machine_info(torch.device("cpu")), [load_before, load_average()]
    print(f"TkML-AP against its reference ({commit[:8]}), {n} images, k={args.k}, eps={args.eps}, {max_iter} steps, "
          f"lr={args.lr}; {describe(out['machine'])}; load {load_before}")
    for name, r in rows.items():
        m, t = r["mlnb"], r["reference"]
        print(f"  {name:10s} success mlnb {m['success']:.2f} vs reference {t['success']:.2f} (its own flag "
              f"{t['own_flag_success']:.2f}); L2 of successes {m['l2_successful']:.3f} vs {t['l2_successful']:.3f}; "
              f"{m['s_per_image']:.3f} vs {t['s_per_image']:.3f} s/image: {r['speed_ratio']:.1f}x")
    write_json(project_root() / "benchmarks" / "results" / f"successors_reference_{args.preset}.json", out)
    return out


if __name__ == "__main__":
    main()
