"""The machine a benchmark figure was taken on: CPU model and threads, load, torch, GPU name."""
from __future__ import annotations

import os
import platform

import torch

from benchmarks.attack_throughput import cpu_model
from mlnb.utils import environment_info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (other processes share the CPU), or None where unknown."""
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except (OSError, ValueError):
        return None


def machine_info(device: torch.device) -> dict:
    """Everything needed to tell two benchmark figures' machines apart."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info = {**environment_info(device), "cpu_model": cpu_model(), "cpu_cores_available": cores,
            "torch_threads": torch.get_num_threads(), "os": platform.platform(terse=True),
            "loadavg": load_average()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda)
    return info


def describe(info: dict) -> str:
    """One line: ``CPU model (threads), GPU``."""
    s = f"{info['cpu_model']}, {info['torch_threads']} torch threads of {info['cpu_cores_available']} cores"
    if info.get("gpu"):
        s += f", GPU {info['gpu']}"
    return s + f", torch {info['torch']}"
