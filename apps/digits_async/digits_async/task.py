"""Model, data and training loop for the digits app."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flchain_flwr.data import dirichlet_partition, load_digits_split


class Net(nn.Module):
    """A small CNN for 8x8 digit images (about 9k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def new_model(seed: int) -> Net:
    """A freshly initialised model, identical for the same seed."""
    torch.manual_seed(seed)
    return Net()


def load_partition(
    partition_id: int, num_partitions: int, alpha: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training examples of one node under a Dirichlet(alpha) label split."""
    x_train, y_train, _, _ = load_digits_split()
    parts = dirichlet_partition(y_train, num_partitions, alpha, seed=seed)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, {num_partitions})")
    idx = parts[partition_id]
    return x_train[idx], y_train[idx]


def load_test() -> tuple[np.ndarray, np.ndarray]:
    """The server's held-out test set."""
    _, _, x_test, y_test = load_digits_split()
    return x_test, y_test


def train(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> float:
    """Plain SGD for ``epochs`` epochs; returns the mean training loss."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(net(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
            count += len(batch)
    return total / max(count, 1)


def evaluate(net: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Return ``(loss, accuracy)`` on ``(x, y)``."""
    torch.set_num_threads(1)
    net.eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        accuracy = float((logits.argmax(dim=1).numpy() == y).mean())
    return loss, accuracy
