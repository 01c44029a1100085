"""Shared test configuration.

The test command (``make test``) points ``MLNB_DATA`` and ``MLNB_RESULTS`` at ``build/`` so that
tests never touch the user's ``data/`` and ``results/``; when pytest is run by hand without them,
a per-session temporary folder is used instead.
"""
from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_dirs(tmp_path_factory):
    for var in ("MLNB_DATA", "MLNB_RESULTS"):
        if not os.environ.get(var):
            os.environ[var] = str(tmp_path_factory.mktemp(var.lower()))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-off cost on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
