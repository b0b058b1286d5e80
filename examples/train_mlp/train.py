"""Train a small MLP, logging the loss each step, checkpointing, resuming when retried.

Conveyor's example for ``container`` tasks (and seed 003's ``POST /train``):
it writes checkpoints and ``metrics.json`` to ``$CONVEYOR_OUTPUT_DIR`` (or
``--output-dir``), which the worker copies to the output bucket after every
attempt and back before the next one, so a retried run resumes from its last
checkpoint instead of starting over. CPU here, CUDA when the task was given
a GPU. The data is synthetic (a noisy 2-D spiral): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn


def spiral(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals: not linearly separable, so the loss visibly falls."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    r = t / (3 * math.pi)
    angle = t + label * math.pi
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    x += 0.02 * torch.randn(x.shape, generator=g)
    return x, label


def model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=5, help="steps")
    ap.add_argument("--step-delay", type=float, default=0.0, help="seconds, to watch it live")
    ap.add_argument(
        "--crash-at-step",
        type=int,
        default=0,
        help="SIGKILL itself at this step on a fresh start (to show resuming)",
    )
    ap.add_argument("--output-dir", default=os.environ.get("CONVEYOR_OUTPUT_DIR", "outputs"))
    args = ap.parse_args(argv)

    out = Path(args.output_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    net = model(args.hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    x, y = spiral(4096, args.seed)
    x, y = x.to(device), y.to(device)
    total = args.epochs * args.steps_per_epoch

    step, history = 0, []
    latest = ckpt_dir / "latest.pt"
    if latest.exists():
        state = torch.load(latest, map_location=device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        print(f"resumed from checkpoint at step {step}", flush=True)
    resumed_at = step
    print(f"training on {device}: {total} steps, batch {args.batch_size}", flush=True)

    g = torch.Generator().manual_seed(args.seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    started = time.monotonic()
    while step < total:
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g).to(device)
        opt.zero_grad()
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        step += 1
        history.append(round(loss.item(), 6))
        epoch = (step - 1) // args.steps_per_epoch + 1
        print(f"epoch {epoch}/{args.epochs} step {step}/{total} loss {loss.item():.4f}", flush=True)
        if step % args.checkpoint_every == 0 or step == total:
            state = {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "history": history,
            }
            tmp = ckpt_dir / "latest.pt.tmp"
            torch.save(state, tmp)
            tmp.replace(latest)  # a crash never leaves half a checkpoint
            print(f"checkpoint saved at step {step}", flush=True)
        if args.crash_at_step and step == args.crash_at_step and resumed_at == 0:
            print(f"crashing at step {step} (--crash-at-step)", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if args.step_delay:
            time.sleep(args.step_delay)

    with torch.no_grad():
        accuracy = (net(x).argmax(dim=1) == y).float().mean().item()
    metrics = {
        "steps": step,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "resumed_from_step": resumed_at,
        "first_loss": history[0] if history else None,
        "final_loss": history[-1] if history else None,
        "accuracy": round(accuracy, 4),
        "device": str(device),
        "seconds": round(time.monotonic() - started, 2),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"done: accuracy {accuracy:.3f}, final loss {metrics['final_loss']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
