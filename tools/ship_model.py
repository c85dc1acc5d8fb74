#!/usr/bin/env python
"""Write a trained model (a model directory, a checkpoint, or a run directory's newest checkpoint) as a compact,
self-contained model directory to ship: ``python tools/ship_model.py runs/code-infill models/code-infill --bf16``.

A checkpoint's averaged weights (``ema.safetensors``, when training kept an average) are the ones shipped, as the
trainer's final model does; ``--bf16`` stores them in bfloat16 (half the bytes; they load into float32 modules), tied
weights are stored once, and the task's files (a text model's tokenizer) and the run's ``metrics.jsonl`` (up to the
shipped step) go with them. The result loads wherever a model directory does (``unmask eval/generate/serve
--model DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ship_model", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="model directory, checkpoint directory or run directory")
    p.add_argument("dst", help="model directory to write (replaced atomically)")
    p.add_argument("--bf16", action="store_true", help="store floating-point weights in bfloat16")
    args = p.parse_args(argv)
    import torch

    from unmask.core.errors import UnmaskError
    from unmask.core.task import build_task
    from unmask.core.training import checkpoint as ck

    try:
        src = ck.resolve_model_dir(args.src)
        config = ck.read_config(src)
        tensors = ck.load_tensors(src / ck.MODEL_FILE)
        if (src / ck.STATE_FILE).is_file():  # a checkpoint: its training time (and FLOPs) are in the training state
            state, _ = ck.load_training_state(src)
            for key in ("train_seconds", "train_flops"):
                if config.get(key) is None and state.get(key) is not None:
                    config[key] = state[key]
        ema = src / "ema.safetensors"
        if ema.is_file():  # the average covers parameters; a tied name takes the average of its twin
            avg = ck.load_tensors(ema)
            tensors = {k: avg[k] if k in avg else next((avg[j] for j in avg if j in tensors and
                                                        tensors[j].shape == v.shape and torch.equal(tensors[j], v)), v)
                       for k, v in tensors.items()}
        if args.bf16:  # one conversion per tensor, so tied names stay one tensor (stored once)
            done: dict[int, torch.Tensor] = {}
            tensors = {k: done.setdefault(id(v), v.to(torch.bfloat16) if v.is_floating_point() else v)
                       for k, v in tensors.items()}
        task = build_task(config["task"], "model task", model=src)
        files: dict[str, str | bytes] = dict(task.model_files())
        run = Path(args.src)
        runs = [src, run] + ([src.parent.parent] if src.parent.name == "checkpoints" else [])
        record = next((d / "metrics.jsonl" for d in runs if (d / "metrics.jsonl").is_file()), None)
        if record is not None:  # the training record up to the shipped step (a run may have gone on past it)
            step = config.get("step")
            lines = [(ln, json.loads(ln).get("step")) for ln in record.read_text().splitlines(keepends=True)
                     if ln.strip()]
            if step is not None:  # leave out later steps, and events logged after the last record it covers
                end = max((i for i, (_, s) in enumerate(lines) if s is not None and s <= step), default=-1)
                lines = [(ln, s) for ln, s in lines[:end + 1] if s is None or s <= step]
            files["metrics.jsonl"] = "".join(ln for ln, _ in lines)
        config = {k: v for k, v in config.items() if k not in ("format", ck.CHECKSUM_KEY)}
        out = ck.save_model_dir(args.dst, tensors, config, extra_files=files)
        from unmask.core.files import apply_umask

        apply_umask(out)
    except UnmaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, step {config.get('step')}, {config.get('samples')} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
