"""Shared test set-up."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
