"""The demo's model and data (:mod:`structprune_triton.demo`): a small CNN that upstream's prune()
patterns can shrink, and synthetic, learnable batches (nothing is downloaded)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

IMAGE_SIZE = 32
NUM_CLASSES = 10
NUM_BATCHES = 4  # distinct synthetic batches cycled through during fine-tuning


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (ReLU and 2x2 max-pool after the first two), then global average
    pooling and a linear classifier. The first two convolutions have no bias: upstream's prune()
    only zeroes the channels of a biased conv followed by a padded conv instead of removing them."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# The convolutions are pruned; the classifier is not (pruning it would remove classes).
PRUNE_CONFIG = [{"tensor_fqn": f"features.{i}.weight"} for i in (0, 3, 6)]


def synthetic_data(batch_size: int, device: torch.device, generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    """Batches of noisy copies of one random template per class, so the loss visibly falls."""
    colours = torch.randn(NUM_CLASSES, 3, 1, 1, generator=generator)
    templates = colours + 0.5 * torch.randn(NUM_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    batches = []
    for _ in range(NUM_BATCHES):
        labels = torch.randint(NUM_CLASSES, (batch_size,), generator=generator)
        images = templates[labels] + 0.5 * torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        batches.append((images.to(device), labels.to(device)))
    return batches


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
