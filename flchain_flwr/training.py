"""Small, deterministic PyTorch training helpers for the apps and benchmarks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def train(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    steps: int = 0,
) -> float:
    """SGD with momentum for ``epochs`` epochs; returns the mean training loss.

    ``steps > 0`` runs exactly that many minibatches instead, reshuffling after
    each pass over the data (a fixed amount of local work, whatever the
    partition's size). Shuffling is seeded and torch runs single-threaded, so
    the same inputs give the same model.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total, count, done = 0.0, 0, 0
    passes = epochs if steps == 0 else -(-steps * batch_size // max(len(xs), 1))
    for _ in range(passes):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch_size):
            if steps and done == steps:
                break
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(net(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
            done += 1
    return total / max(count, 1)


def evaluate(
    net: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048
) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` on ``(x, y)``."""
    torch.set_num_threads(1)
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size])
            yb = torch.from_numpy(y[start : start + batch_size])
            logits = net(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return loss_sum / len(x), correct / len(x)
