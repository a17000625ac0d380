"""The reference experiment's algorithm in PyTorch, for side-by-side checks and benchmarks.

Faithful to the reference script: its LeNet-5; MC dropout by running the model in train
mode K times per batch of 1024 in a Python loop; its BALD arithmetic; Adam (lr 5e-4,
weight_decay 1e-4) at batch 64 over a bootstrap of the labeled set.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TorchLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5)
        self.conv1_drop = nn.Dropout2d()
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(1024, 128)
        self.fc1_drop = nn.Dropout()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1_drop(self.conv1(x)), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 1024)
        x = F.relu(self.fc1_drop(self.fc1(x)))
        return self.fc2(x)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """float32 [N, 28, 28, 1] (jal's layout) -> [N, 1, 28, 28]."""
    return torch.from_numpy(np.array(images, np.float32).reshape(-1, 1, 28, 28))


def bald_scores(model: TorchLeNet, images: torch.Tensor, num_samples: int = 32, batch_size: int = 1024):
    """The reference's get_scores: K train-mode passes per batch (moved to the model's device), then its BALD."""
    model.train()
    device = next(model.parameters()).device
    all_probs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            data = images[start : start + batch_size].to(device)
            batch_probs = [F.softmax(model(data), dim=1).unsqueeze(0) for _ in range(num_samples)]
            all_probs.append(torch.cat(batch_probs, dim=0).permute(1, 0, 2))
    probs = torch.cat(all_probs, dim=0)  # [N, K, C]
    mean_probs = probs.mean(dim=1)
    ic = mean_probs * torch.log(mean_probs)
    ic[torch.isnan(ic)] = 0.0
    entropy_of_mean = -ic.sum(dim=1)
    ic_mc = probs * torch.log(probs)
    ic_mc[torch.isnan(ic_mc)] = 0.0
    mean_of_entropy = -ic_mc.sum(dim=2).mean(dim=1)
    return (entropy_of_mean - mean_of_entropy).cpu().numpy(), mean_probs


def train(model: TorchLeNet, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, seed: int = 42) -> None:
    """The reference's training: a bootstrap of max(10,000, N) draws, batch 64 (moved to the model's device), Adam."""
    rng = np.random.default_rng(seed)
    size = max(10_000, len(images))
    indices = rng.choice(len(images), size=size, replace=size > len(images))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images[indices], labels[indices]), batch_size=64, shuffle=True
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    model.train()
    device = next(model.parameters()).device
    for _ in range(epochs):
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
