"""Training: the loop, optimizer and schedule, checkpoints, resume, EMA, validation, logs and plots.

What is learnt comes from the run's objective plugin (``train.objective``: ``mdm``, the masked diffusion ELBO under
random or progressive masking, or ``arm``, the autoregressive baseline; see :mod:`unmask.core.objective`): the
trainer draws batches in the objective's layout, asks it for the loss of each step and saves its state beside the
checkpoint.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import torch

from unmask.core.config import Section, apply_overrides, convert, load_toml, to_builtins
from unmask.core.errors import CheckpointError, ConfigError, InputError
from unmask.core.files import apply_umask
from unmask.core.flops import config_train_flops, sample_flops
from unmask.core.models import (
    autocast_context,
    build_model,
    check_task_matches,
    count_parameters,
    resolved_backbone,
    resolved_task,
)
from unmask.core.objective import Objective, build_objective, objective_name
from unmask.core.task import Dataset, Task, build_task
from unmask.core.training import checkpoint as ckpt
from unmask.core.training.masking import ProgressiveOptions


class TrainOptions(Section):
    objective: str = "mdm"
    """The training objective (registry ``objectives``): ``mdm`` (masked diffusion) or ``arm`` (autoregressive
    baseline), or a third party's."""
    steps: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    flops: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """Training budget in FLOPs (:mod:`unmask.core.flops`; 0 = off). When set it replaces ``steps`` (and the
    length of the cosine schedule): the run takes the fewest steps whose FLOPs reach it, ``ceil(flops / (batch_size
    x ranks x FLOPs per example))``. For comparisons at equal training compute: give a baseline the
    ``train_flops`` another run logged."""
    batch_size: Annotated[int, msgspec.Meta(ge=1)] = 128
    lr: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1e-3
    min_lr_ratio: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.05
    warmup_steps: Annotated[int, msgspec.Meta(ge=0)] = 500
    schedule_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Length of the warmup + cosine schedule (0 = ``steps``): a run branched off a longer one keeps that run's
    learning rates by naming its length here."""
    cooldown_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    """The run's last N steps (0 = none): the learning rate falls linearly from the schedule's value where they
    begin to ``min_lr_ratio * lr`` (a warmup-stable-decay cooldown). It finishes a model off a long run at any point:
    copy the run's latest checkpoint into another run directory and resume there with ``steps`` = the step to end at,
    ``schedule_steps`` = the long run's ``steps`` and ``cooldown_steps`` = N; the long run goes on untouched."""
    weight_decay: Annotated[float, msgspec.Meta(ge=0.0)] = 0.1
    beta1: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.9
    beta2: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.98
    grad_clip: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    bf16: bool | Literal["auto"] = "auto"
    """bf16 autocast: true, false, or "auto" = on for CUDA devices with bf16 and for CPUs with native bf16 matmuls
    (``bench/train_step.py``, one thread, default model: Intel Xeon with AMX 1.38x fp32's samples/s; AMD EPYC with
    AVX512-BF16 1.80x), off elsewhere (Intel Xeon without either: 0.41x)."""
    eps: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 1e-3
    low_discrepancy: bool = True
    """Stratified t over the batch (t_i = (u + i) / B mod 1): same objective, lower-variance gradients."""
    ema: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    """Decay of an exponential moving average of the weights (e.g. 0.999; 0 = off). With it on, validation and
    the final model use the averaged weights; checkpoints keep both (the average in ``ema.safetensors``)."""
    compile: bool = False
    """torch.compile the model for the training step (validation and checkpoints use it uncompiled). Measured on an
    Intel Xeon with AMX, one thread, the default Sudoku model: bf16 step 1.25x the eager bf16 one, fp32 no faster
    (results/train_step.txt); the first steps pay the compilation (about a minute)."""
    masking: Literal["random", "progressive"] = "random"
    """Masking process of the MDM objective: the paper's random masking, or progressive unmasking (PUMA: training
    masks that follow confidence-ordered decoding; options in ``[train.progressive]``). See
    unmask.core.training.masking."""
    progressive: ProgressiveOptions = msgspec.field(default_factory=ProgressiveOptions)
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    """Seed of the training data, the initial weights and the batches (0 .. 2**63 - 1, what numpy and torch take)."""
    data_size: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    """Training examples generated once (and cached); batches draw from them with random augmentation."""
    augment: bool = True
    val_size: Annotated[int, msgspec.Meta(ge=0)] = 200
    val_every: Annotated[int, msgspec.Meta(ge=1)] = 1000
    val_strategies: list[str | dict[str, Any]] = msgspec.field(default_factory=list)
    """Decoders of the periodic validation: strategy names, or tables with options (``{name = "margin", value =
    "sample"}``); empty: the objective's default (an MDM: margin and vanilla; an ARM: arm)."""
    val_steps: Annotated[int, msgspec.Meta(ge=1)] = 50
    ckpt_every: Annotated[int, msgspec.Meta(ge=1)] = 1000
    keep_checkpoints: Annotated[int, msgspec.Meta(ge=1)] = 3
    keep_steps: list[Annotated[int, msgspec.Meta(ge=1)]] = msgspec.field(default_factory=list)
    """Steps whose checkpoints are written whatever ckpt_every says and never rotated away: the model at several
    training budgets (``unmask eval --model <out>/checkpoints/step-0000100``; Table 1 sweeps them). Steps past
    ``steps`` are never reached (a shortened run keeps what it reaches)."""
    log_every: Annotated[int, msgspec.Meta(ge=1)] = 50
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    """torch CPU threads (0 = default)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    order: Literal["solver", "row_major"] = "solver"
    """ARM only: fill order of the answer (the task's solver order, or row-major)."""
    arm_cells: Literal["task", "square"] = "task"
    """ARM only: what is written as (row, column, value) triples: the task's answer grid, the other positions read as
    plain tokens ("task", :meth:`~unmask.core.task.Task.cell_grid`), or every position as a cell of a near-square
    grid ("square", how models saved without this key were trained)."""
    init_from: str = ""
    """Warm start: a model, checkpoint or run directory whose weights start this run (fresh optimizer and schedule;
    its objective must match, its backbone's parameters one for one (options such as dropout or repeats may differ),
    its task the name and token layout). The samples and training time it had
    seen are carried over."""


class RunConfig(Section):
    task: Any
    backbone: Any
    train: TrainOptions = msgspec.field(default_factory=TrainOptions)
    out: str = "runs/default"
    """Run directory: checkpoints/, LATEST, metrics.jsonl, curves.png, model/ (the final model directory)."""


@dataclass
class Resolved:
    raw: dict[str, Any]
    task: Task
    train: TrainOptions
    out: Path
    objective: Objective

    def to_dict(self, backbone: dict[str, Any]) -> dict[str, Any]:
        from unmask.core import __version__

        return {
            "unmask_version": __version__,
            "task": self.task.config_dict(),
            "backbone": backbone,
            "train": to_builtins(self.train),
        }


def resolve_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                   raw: dict[str, Any] | None = None) -> Resolved:
    data = apply_overrides(raw if raw is not None else load_toml(path), overrides)  # type: ignore[arg-type]
    cfg = convert(data, RunConfig)
    if not cfg.train.flops:  # a FLOPs budget's step count is known once the training data is
        check_cooldown(cfg.train)
    task = build_task(cfg.task, "task")
    objective = build_objective(task, to_builtins(cfg.train))  # also checks the objective's own options
    if cfg.train.val_size:
        val_decoders(objective, cfg.train)  # a misspelt strategy fails now, not at the first validation
    from unmask.core.files import check_writable

    check_writable(cfg.out, "out (the run directory)", directory=True)  # before any training work
    from unmask.core.memory import check_training_fits

    check_training_fits(objective.model_task(), cfg.backbone, cfg.train.batch_size, causal=objective.causal)
    from unmask.core.memory import check_fits

    for key in ("data_size", "val_size"):  # generated before training starts: an absurd size is refused now
        n = int(getattr(cfg.train, key))
        check_fits(32.0 * n * task.seq_len, f"train.{key} = {n:,} examples", f"reduce train.{key}")
    return Resolved(data, task, cfg.train, Path(cfg.out), objective)


def _torch_seed(n: int) -> int:
    """A derived seed torch's generators take (they hold 64 bits; any seed up to 2**63 - 1 times 1000 does not)."""
    return n % 2**63


def val_decoders(objective: Objective, o: TrainOptions) -> list[Any]:
    """What the periodic validation decodes with: ``train.val_strategies`` (or the objective's default)."""
    from unmask.core.errors import PluginError

    out = []
    for i, s in enumerate(o.val_strategies or objective.default_decoders()):
        where = f"train.val_strategies[{i}]"
        try:
            out += objective.decoders([{"name": s} if isinstance(s, str) else dict(s)], steps=o.val_steps,
                                      where=where)
        except PluginError as exc:
            raise ConfigError(f"at '{where}': {exc}") from None
        except InputError as exc:
            raise ConfigError(str(exc)) from None
    return out


# -- distributed helpers ---------------------------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> bool:
    rank, world = dist_info()
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        from unmask.core.decoding.runtime import require_cuda

        require_cuda("train.device = 'cuda'")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def check_cooldown(o: TrainOptions) -> None:
    """A cooldown fits in the run (``steps``, or the steps a ``flops`` budget came to)."""
    if o.cooldown_steps > o.steps:
        run = f"train.flops = {o.flops:.3g} is {o.steps:,} steps" if o.flops else f"train.steps = {o.steps:,}"
        raise ConfigError(f"train.cooldown_steps = {o.cooldown_steps:,} is longer than the run ({run}); make it at "
                          "most the run's steps")


def lr_at(step: int, o: TrainOptions) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr`` over ``schedule_steps`` (or ``steps``); in the last
    ``cooldown_steps`` a straight line from the cosine's value where they begin to ``min_lr_ratio * lr``, reached
    on the last step."""
    def cosine(s: int) -> float:
        if o.warmup_steps and s < o.warmup_steps:
            return o.lr * (s + 1) / o.warmup_steps
        span = max(1, (o.schedule_steps or o.steps) - o.warmup_steps)
        prog = min(1.0, (s - o.warmup_steps) / span)
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))

    start = o.steps - o.cooldown_steps
    if o.cooldown_steps and step >= start:
        high, low = cosine(start), o.lr * o.min_lr_ratio
        return high + (low - high) * min(1.0, (step - start + 1) / o.cooldown_steps)
    return cosine(step)


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """``train.bf16`` resolved for ``device``: "auto" is on for CUDA with bf16 support and for CPUs with native bf16
    matmuls (AMX tiles, or AVX512-BF16: 1.8x fp32's samples/s on an AMD EPYC, ``bench/train_step.py``); off
    without them (0.41x fp32 on an Intel Xeon without native bf16)."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    from unmask.core.report import cpu_bf16

    return bool(cpu_bf16())


def _checkpoint_seconds(src: Path) -> float:
    """The training seconds a checkpoint records in its state file (a model directory has them in its config; 0
    where neither says)."""
    try:
        return float(json.loads((src / ckpt.STATE_FILE).read_text(encoding="utf-8")).get("train_seconds", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def _settings(section: dict[str, Any] | None) -> dict[str, Any]:
    """A task/backbone section without the keys that change neither the data nor the model (where data is cached)."""
    return {k: v for k, v in (section or {}).items() if k != "cache_dir"}


def _differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    """'key: old vs new' for each key whose value differs between two resolved sections."""
    keys = sorted(set(have) | set(want), key=lambda k: (k != "name", k))
    return ", ".join(f"{k}: {have.get(k, '-')!r} vs {want.get(k, '-')!r}" for k in keys if have.get(k) != want.get(k))


POOL_FILE = "masking.safetensors"  # a checkpoint's objective state (the progressive-masking pool of an MDM)
EMA_FILE = "ema.safetensors"  # a checkpoint's moving average of the weights (train.ema)
VAL_SEED_OFFSET = 7919  # a run's validation puzzles: task.generate("test", val_size, train.seed + VAL_SEED_OFFSET)


# -- RNG state (JSON-safe) ------------------------------------------------------------------------------------------
def _torch_state(g: torch.Generator) -> str:
    return base64.b64encode(g.get_state().numpy().tobytes()).decode()


def _set_torch_state(g: torch.Generator, s: str) -> None:
    g.set_state(torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8))


# -- the loop -------------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, resolved: Resolved, *, resume: bool = False, progress: bool = True,
                 max_steps: int | None = None) -> None:
        self.r = resolved
        self.o = resolved.train
        self.task = resolved.task
        self.progress = progress
        self.max_steps = max_steps
        self.rank, self.world = dist_info()
        self.device = pick_device(self.o.device)
        if self.o.threads:
            torch.set_num_threads(self.o.threads)
        self.distributed = init_distributed(self.device)
        self.bf16 = use_bf16(self.o.bf16, self.device)
        self.out = resolved.out
        torch.manual_seed(self.o.seed)
        self.objective = resolved.objective
        self.model, self.backbone = build_model(self.objective.model_task(), resolved.raw["backbone"],
                                                causal=self.objective.causal)
        self.model.to(self.device)
        self.config = resolved.to_dict(self.backbone)
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.o.lr, betas=(self.o.beta1, self.o.beta2),
        )
        self.step = 0
        self.samples = 0
        self.train_seconds = 0.0
        # training FLOPs (unmask.core.flops): per example (None until the training data is known, for a layout that
        # depends on it) and so far (None while inherited samples' FLOPs are unknown; estimated in run())
        self.sample_flops = sample_flops(self.model, self.objective)
        self.train_flops: float | None = 0.0
        self.flops_unknown = ""  # why train_flops is None
        self.gen = torch.Generator().manual_seed(_torch_seed(self.o.seed * 1000 + self.rank))
        self.np_rng = np.random.default_rng([self.o.seed, self.rank])
        self.ema: dict[str, torch.Tensor] | None = None  # parameter name -> averaged value (train.ema)
        self.ema_steps = 0
        if resume:
            self._resume()
        else:
            if self.rank == 0 and (self.out / "checkpoints").exists() and ckpt.latest_checkpoint(self.out):
                raise ConfigError(
                    f"run directory '{self.out}' already has checkpoints; pass --resume to continue it or choose "
                    "another out directory (--set out=...)"
                )
            if self.o.init_from:
                self._warm_start(self.o.init_from)
        if self.o.ema and self.ema is None:  # a fresh run, or a checkpoint written without it: start from here
            self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.fwd: Any = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.fwd = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.o.compile:
            self.fwd = torch.compile(self.fwd)

    # -- state ----------------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        latest = ckpt.latest_checkpoint(self.out)
        if latest is None:
            raise CheckpointError(f"--resume: no checkpoint in '{self.out}/checkpoints'; start without --resume")
        try:
            cfg = ckpt.read_config(latest)
        except CheckpointError as exc:
            raise CheckpointError(f"--resume: {ckpt.damaged_message(latest, str(exc))}") from None
        resolve = {"task": resolved_task, "backbone": resolved_backbone}
        for key in ("task", "backbone"):
            try:
                have = resolve[key](cfg.get(key), f"{key} of checkpoint '{latest}'")
            except ConfigError as exc:
                raise CheckpointError(f"--resume: {exc}") from None
            if _settings(have) != _settings(self.config[key]):
                raise CheckpointError(
                    f"--resume: the {key} in checkpoint '{latest}' differs from the config "
                    f"({_differences(_settings(have), _settings(self.config[key]))}); resume with the config the run "
                    "was started with")
        # every file is checked against its checksum and the state's shape before anything is taken from it; what
        # still does not fit (a checkpoint written before checksums) is the same one line naming the previous good one
        try:
            state = ckpt.load_tensors(latest / ckpt.MODEL_FILE)
            st, opt = ckpt.load_training_state(latest)
            self._load_state(state, st, opt)
            if st.get("train_flops") is None:  # a checkpoint written before training FLOPs were counted
                self._derive_flops(cfg, self.samples)
        except CheckpointError as exc:
            raise CheckpointError(f"--resume: {ckpt.damaged_message(latest, str(exc))}") from None
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            why = f"its training state does not fit this model: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            raise CheckpointError(f"--resume: {ckpt.damaged_message(latest, why)}") from None
        ema_file = latest / EMA_FILE
        if self.o.ema and ema_file.is_file():
            self.ema = {k: v.to(self.device) for k, v in ckpt.load_tensors(ema_file).items()}
            self.ema_steps = int(st.get("ema_steps", 0))
            names = {n for n, _ in self.model.named_parameters()}
            if set(self.ema) != names:
                raise CheckpointError(f"--resume: '{ema_file}' does not hold this model's parameters; the "
                                      "checkpoint is corrupt or mixed up")
        state_file = latest / POOL_FILE
        if state_file.is_file():  # else (e.g. a random-masking run resumed as progressive) its state starts afresh
            try:
                self.objective.load_state_tensors(ckpt.load_tensors(state_file))
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"--resume: the {self.o.objective} objective's state in '{state_file}' does "
                                      f"not fit this config ({exc}); resume with the batch size and options the run "
                                      "was started with (e.g. train.progressive.random_fraction)") from None
        if cfg.get("init_from"):  # the warm start stays on record through every resume
            self.config["init_from"] = cfg["init_from"]
        self.resumed_from = latest
        self._log({"event": "resume", "step": self.step, "checkpoint": latest.name})

    def _load_state(self, weights: dict[str, torch.Tensor], st: dict[str, Any], opt: dict[str, Any] | None) -> None:
        """Weights, optimizer, counters and RNG streams of a checkpoint (raises on anything that does not fit)."""
        self.model.load_state_dict(weights)
        if opt is not None:
            self.opt.load_state_dict(opt)
            for group in self.opt.param_groups:  # load_state_dict checks counts, not shapes (which fail mid-step)
                for p in group["params"]:
                    for k, v in self.opt.state.get(p, {}).items():
                        if isinstance(v, torch.Tensor) and v.ndim and v.shape != p.shape:
                            raise ValueError(f"optimizer state '{k}' has shape {tuple(v.shape)}, its parameter "
                                             f"{tuple(p.shape)}")
        self.step = int(st["step"])
        self.samples = int(st.get("samples", 0))
        self.train_seconds = float(st.get("train_seconds", 0.0))
        self.train_flops = None if st.get("train_flops") is None else float(st["train_flops"])
        rng = st.get("rng", {}).get(str(self.rank))
        if rng:
            _set_torch_state(self.gen, rng["torch"])
            self.np_rng.bit_generator.state = rng["numpy"]
            torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rng["torch_global"])), dtype=torch.uint8))
        else:  # only rank 0 saves its streams: other ranks get fresh ones of their own (never rank 0's batches)
            self.gen.manual_seed(_torch_seed(self.o.seed * 1000 + self.rank + 7919 * self.step))
            self.np_rng = np.random.default_rng([self.o.seed, self.rank, self.step])

    def _warm_start(self, path: str) -> None:
        try:
            src = ckpt.resolve_model_dir(path)
            cfg = ckpt.read_config(src)
        except CheckpointError as exc:
            raise CheckpointError(f"train.init_from: {exc}") from None
        objective = objective_name(cfg)
        if objective != self.o.objective:
            raise CheckpointError(f"train.init_from: '{src}' was trained with objective '{objective}', this run uses "
                                  f"'{self.o.objective}'; warm-start from a model of the same objective")
        try:
            src_backbone = resolved_backbone(cfg["backbone"], f"backbone of '{src}'")
        except ConfigError as exc:
            raise CheckpointError(f"train.init_from: {exc}") from None
        check_task_matches(self.task, cfg, str(src))  # same task and token layout (other options may differ)
        state = ckpt.load_tensors(src / ckpt.MODEL_FILE)
        have = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if src_backbone != self.config["backbone"]:
            # options that change no parameter (dropout, repeats of a weight-shared stack) may differ; the weights
            # must still fit one for one
            diff = _differences(src_backbone, self.config["backbone"])
            if {k: tuple(v.shape) for k, v in state.items()} != have:
                raise CheckpointError(f"train.init_from: the backbone of '{src}' differs from the config ({diff}) "
                                      "in its parameters; warm-start from a model whose weights fit this backbone")
            self._log({"event": "init_from_backbone_differs", "differences": diff})
        self.model.load_state_dict(state)
        self.samples = int(cfg.get("samples", 0))
        self.train_seconds = float(cfg.get("train_seconds", _checkpoint_seconds(src)))
        if cfg.get("train_flops") is not None:
            self.train_flops = float(cfg["train_flops"])
        else:  # a model trained before training FLOPs were counted
            self._derive_flops(cfg, self.samples)
        self.config["init_from"] = {"path": str(src), "step": cfg.get("step"), "samples": self.samples}
        self._log({"event": "init_from", "path": str(src), "samples": self.samples})

    def _derive_flops(self, cfg: dict[str, Any], samples: int) -> None:
        """``train_flops`` of ``samples`` seen by the model of the recorded config ``cfg`` (None, with the reason, when
        they cannot be known: run() then counts them at this model's cost and logs that estimate)."""
        try:
            self.train_flops = config_train_flops(cfg, samples)
        except (InputError, ConfigError, CheckpointError) as exc:
            self.train_flops, self.flops_unknown = None, str(exc)

    def _count_flops(self, data: Dataset | None) -> None:
        """Settle the FLOPs per example (with the training data when the layout needs it) and any unknown
        inherited ones (counted at this model's cost, with an ``train_flops_estimated`` event saying so)."""
        if self.sample_flops is None and data is not None:
            self.sample_flops = sample_flops(self.model, self.objective, data)
        if self.train_flops is None and self.sample_flops is not None:
            self.train_flops = self.samples * self.sample_flops
            self._log({"event": "train_flops_estimated", "samples": self.samples, "train_flops": self.train_flops,
                       "why": self.flops_unknown or "not recorded",
                       "how": "the samples seen before this run counted at this model's FLOPs per example"})

    def _budget_steps(self) -> int:
        """``train.flops`` as a number of steps: the fewest whose FLOPs reach the budget."""
        if self.sample_flops is None:
            why = self.flops_unknown or "no count for this model and objective"
            raise ConfigError(f"train.flops: the FLOPs of a training example are unknown here ({why}); set "
                              "train.steps instead")
        step_flops = self.sample_flops * self.o.batch_size * self.world
        return max(1, math.ceil(self.o.flops / step_flops - 1e-9))

    def _flops_record(self) -> dict[str, float]:
        return {} if self.train_flops is None else {"train_flops": self.train_flops}

    def save(self) -> Path:
        rng = {str(self.rank): {"torch": _torch_state(self.gen), "numpy": self.np_rng.bit_generator.state,
                                "torch_global": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}}
        path = self.out / "checkpoints" / ckpt.checkpoint_name(self.step)
        cfg = {**self.config, "step": self.step, "samples": self.samples, **self._flops_record()}
        ckpt.save_model_dir(path, self.model.state_dict(), cfg, optimizer=self.opt.state_dict(),
                            state={"step": self.step, "samples": self.samples, "train_seconds": self.train_seconds,
                                   "rng": rng, "ema_steps": self.ema_steps, **self._flops_record()},
                            extra_tensors=self._extra_tensors(), extra_files=dict(self.task.model_files()))
        apply_umask(path)  # written from a 0700 temporary directory with 0600 safetensors files
        ckpt.mark_latest(self.out, path)
        kept = {ckpt.checkpoint_name(k) for k in self.o.keep_steps}
        done = sorted(d for d in (self.out / "checkpoints").iterdir()
                      if d.is_dir() and d.name.startswith("step-") and d.name not in kept)
        for old in done[: -self.o.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return path

    def _extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        extra = {}
        state = self.objective.state_tensors()
        if state:
            extra[POOL_FILE] = state
        if self.ema is not None:
            extra[EMA_FILE] = self.ema
        return extra

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * weights, with d warmed up as min(decay, (1 + n) / (10 + n)) over the n updates
        so far (the first updates do not drag the average towards the initial weights)."""
        assert self.ema is not None
        self.ema_steps += 1
        d = min(self.o.ema, (1 + self.ema_steps) / (10 + self.ema_steps))
        params = dict(self.model.named_parameters())
        torch._foreach_lerp_(list(self.ema.values()), [params[n].detach() for n in self.ema], 1.0 - d)

    def _averaged_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the EMA weights in place of the trained ones (train.ema), else as it is."""
        state = self.model.state_dict()
        return {**state, **self.ema} if self.ema is not None else state

    def _log(self, rec: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # -- data -----------------------------------------------------------------------------------------------------
    def _data(self) -> Dataset:
        return self.task.generate("train", self.o.data_size, self.o.seed, progress=self.progress and self.rank == 0)

    def _batch(self, data: Dataset, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` (default: the batch size) random training examples, augmented, in the objective's layout (an MDM:
        targets and given; an ARM: sequence and loss mask) on the training device."""
        idx = self.np_rng.integers(0, len(data), size=self.o.batch_size if n is None else n)
        b = data.take(idx)
        if self.o.augment:
            b = self.task.augment(b, self.np_rng)
        assert b.targets is not None, "training needs targets"
        a, c = self.objective.batch(b)
        return torch.from_numpy(np.asarray(a)).to(self.device), torch.from_numpy(np.asarray(c)).to(self.device)

    # -- validation -----------------------------------------------------------------------------------------------
    def validate(self, val: Dataset) -> dict[str, float]:
        from unmask.core.evaluate import evaluate_with

        out = {}
        self.model.eval()
        raw = None
        if self.ema is not None:  # validate the averaged weights (what the final model will be)
            raw = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self._averaged_state())
        try:
            engine = self.engine()
            for decoder in val_decoders(self.objective, self.o):
                res = evaluate_with(engine, self.task, val, decoder, batch_size=256, seed=0, device=self.device)
                out[f"val_{res.strategy}"] = res.solved
                out[f"val_{res.strategy}_cells"] = res.cell_accuracy
        finally:
            if raw is not None:
                self.model.load_state_dict(raw)
            self.model.train()
        return out

    def engine(self) -> Any:
        from unmask.core.engine import TorchEngine

        return TorchEngine(self.model, self.config, device=str(self.device), bf16=self.bf16)

    # -- main loop ------------------------------------------------------------------------------------------------
    def run(self) -> Path:
        from tqdm.auto import tqdm

        data = None
        if self.o.flops:
            if self.sample_flops is None:  # the FLOPs of an example depend on the training data's layout
                data = self._data()
                self._count_flops(data)
            self.o = msgspec.structs.replace(self.o, steps=self._budget_steps())
            check_cooldown(self.o)
        o = self.o
        target = o.steps if self.max_steps is None else min(o.steps, self.max_steps)
        done = self.step >= target  # e.g. resumed with --set train.steps=N to finish early: no data needed
        if data is None and not done:
            data = self._data()
        val = (self.task.generate("test", o.val_size, o.seed + VAL_SEED_OFFSET)
               if o.val_size and self.rank == 0 and not done else None)
        if self.rank == 0 and self.step == 0:
            self._log({"event": "start", "params": count_parameters(self.model), "config": self.config,
                       "world_size": self.world, "device": str(self.device), "bf16": self.bf16})
        self._count_flops(data)
        if self.rank == 0 and self.step == 0 and self.sample_flops is not None:
            self._log({"event": "flops", "sample_flops": self.sample_flops,
                       "step_flops": self.sample_flops * o.batch_size * self.world,
                       **({"budget": o.flops, "steps": o.steps} if o.flops else {})})
        if val is not None and self.step == 0 and o.init_from:  # where a warm start begins, on this run's data
            v = self.validate(val)
            self._log({"step": 0, "samples": self.samples, **self._flops_record(), **v, "warm_start": True})
        self.model.train()
        bar = tqdm(total=o.steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        with _stop_requests() as stop:
            saved = self._loop(data, val, target, bar, stop)
        bar.close()
        if stop.signal and self.step < target:  # Ctrl-C or SIGTERM: the finished steps go into a checkpoint
            if self.rank == 0 and not saved and self.step > 0:
                self.save()
            raise KeyboardInterrupt(f"training stopped by {stop.signal} at step {self.step}; its checkpoint is in "
                                    f"{self.out / 'checkpoints'}: go on with unmask train --resume")
        final = self.out / "model"
        if self.rank == 0:
            if self.step >= o.steps:
                self.export_final(final)
            plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
        return final

    def _loop(self, data: Dataset | None, val: Dataset | None, target: int, bar: Any, stop: _Stop) -> bool:
        """Train up to step ``target`` or until ``stop`` is asked for (checked after each whole step); returns
        whether the last step's checkpoint was written."""
        o = self.o
        t_last, s_last = self.train_seconds, self.samples
        run_loss, run_acc, n_acc = 0.0, 0.0, 0
        saved = False
        while self.step < target and not stop.signal:
            assert data is not None
            t0 = time.perf_counter()
            lr = lr_at(self.step, o)
            for g in self.opt.param_groups:
                g["lr"] = lr
            with autocast_context(self.device, self.bf16):
                loss, info = self.objective.loss(self.fwd, lambda n: self._batch(data, n), o.batch_size, self.gen,
                                                 self.step)
            if not torch.isfinite(loss):
                raise RuntimeError(f"training diverged at step {self.step} (loss={float(loss)}); lower train.lr")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip if o.grad_clip else 1e9)
            self.opt.step()
            if self.ema is not None:
                self._update_ema()
            self.step += 1
            self.samples += o.batch_size * self.world
            if self.train_flops is not None and self.sample_flops is not None:
                self.train_flops += self.sample_flops * o.batch_size * self.world
            self.train_seconds += time.perf_counter() - t0
            run_loss += float(loss.detach())
            run_acc += info["masked_acc"]
            n_acc += 1
            bar.update(1)
            if self.step % o.log_every == 0 or self.step == target:
                now = self.train_seconds
                sps = (self.samples - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, self.samples
                rec = {"step": self.step, "loss": run_loss / n_acc, "masked_acc": run_acc / n_acc, "lr": lr,
                       "grad_norm": float(gnorm), "samples": self.samples, "samples_per_s": sps,
                       "train_seconds": self.train_seconds, **self._flops_record()}
                run_loss, run_acc, n_acc = 0.0, 0.0, 0
                bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['masked_acc']:.3f}", sps=f"{sps:.0f}")
                self._log(rec)
            if val is not None and (self.step % o.val_every == 0 or self.step == o.steps):
                v = self.validate(val)
                self._log({"step": self.step, "samples": self.samples, **self._flops_record(), **v})
                bar.write(f"step {self.step}: " + ", ".join(f"{k}={x:.3f}" for k, x in v.items()))
            saved = self.step % o.ckpt_every == 0 or self.step == o.steps or self.step in o.keep_steps
            if self.rank == 0 and saved:
                self.save()
        return saved

    def export_final(self, final: Path) -> None:
        files: dict[str, str | bytes] = dict(self.task.model_files())  # e.g. a text model's tokenizer
        for name in ("metrics.jsonl",):
            p = self.out / name
            if p.exists():
                files[name] = p.read_bytes()  # as it is: a damaged log must not stop the export
        cfg = {**self.config, "step": self.step, "samples": self.samples, "train_seconds": self.train_seconds,
               **self._flops_record()}
        ckpt.save_model_dir(final, self._averaged_state(), cfg, extra_files=files)
        apply_umask(final)  # another account or container may serve the model: the user's umask, not 0600 / 0700
        plot_metrics(self.out / "metrics.jsonl", final / "curves.png")


@dataclass
class _Stop:
    signal: str = ""


class _stop_requests:
    """While training: SIGINT (Ctrl-C) and SIGTERM (a scheduler's or container's stop) ask the loop to stop after the
    step in progress, which then writes a checkpoint, so no finished step is lost; a second one stops at once. Only
    in the main thread (signal handlers cannot be set elsewhere)."""

    def __enter__(self) -> _Stop:
        import signal
        import threading

        self.stop = _Stop()
        self.old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return self.stop

        def ask(signum: int, frame: Any) -> None:
            if self.stop.signal:  # the second time: stop now (the last checkpoint stays)
                self._restore()
                raise KeyboardInterrupt
            self.stop.signal = signal.Signals(signum).name
            print(f"\n{self.stop.signal}: stopping after this step and writing a checkpoint (again to stop at once)",
                  file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.signal(sig, ask)
        return self.stop

    def _restore(self) -> None:
        import signal

        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        self.old = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()


def train(config_path: str | None, overrides: list[str] | None = None, *, resume: bool = False,
          progress: bool = True, raw: dict[str, Any] | None = None, max_steps: int | None = None) -> Path:
    """Train from a TOML config (+ ``--set`` overrides); returns the final model directory."""
    resolved = resolve_config(config_path, overrides, raw)
    return Trainer(resolved, resume=resume, progress=progress, max_steps=max_steps).run()


def plot_metrics(jsonl: Path, png: Path) -> None:
    """Loss and validation curves of one run as a PNG (nothing before the first record)."""
    if not jsonl.exists():
        return
    from unmask.core.report import training_curves

    try:
        training_curves(png, {"": jsonl})
    except InputError as exc:  # a damaged log must not stop training
        warnings.warn(f"training curves not drawn: {exc}", stacklevel=2)
