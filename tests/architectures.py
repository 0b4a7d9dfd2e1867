"""Small versions of the models people prune, for the architecture tests: a ResNet-style CNN
(Conv-BatchNorm-ReLU-Conv-BatchNorm plus a residual add) and a stack of LLaMA-style gated MLPs
(RMSNorm, ``down(act(gate(x)) * up(x))`` plus a residual), and variants a user would write."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, channels: int, inner: int, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ResNet(nn.Module):
    """Stem, two residual blocks whose inner channels (``b1.conv1``, ``b2.conv1``) are pruned, a
    global-average-pool head."""

    def __init__(self, channels: int = 8, inner: int = 16, bias: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.b1 = Block(channels, inner, bias)
        self.b2 = Block(channels, inner, bias)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.b2(self.b1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class GatedMLP(nn.Module):
    """``x + down(act(gate(norm(x))) * up(norm(x)))`` on (B, T, C)."""

    def __init__(self, dim: int, hidden: int, act=F.silu) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.act = act

    def forward(self, x):
        y = self.norm(x)
        return x + self.down(self.act(self.gate(y)) * self.up(y))


class GatedStack(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 32, act=F.silu) -> None:
        super().__init__()
        self.l0 = GatedMLP(dim, hidden, act)
        self.l1 = GatedMLP(dim, hidden, act)

    def forward(self, x):
        return self.l1(self.l0(x))


class LinearBN(nn.Module):
    """BatchNorm after a bias-free Linear: Linear -> BatchNorm1d -> ReLU -> Linear on (B, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32, bias=False)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class LinearBNLinear(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear (itself pruned) -> ReLU -> Linear: the middle layer
    loses input columns to this package's pattern and rows to upstream's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32, bias=False)
        self.bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.bn(self.fc1(x))))))


class ConvBNFlat(nn.Module):
    """Conv -> BN -> ReLU -> max-pool -> flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2), 1))


def randomize_norms(model: nn.Module) -> nn.Module:
    """BatchNorms with non-trivial affine values and running statistics (a fresh norm has bias 0,
    which would hide a norm that lets a dead channel through as its bias)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model


def _layers(*names: str) -> list[dict]:
    return [{"tensor_fqn": f"{n}.weight"} for n in names]


# name: (factory, input shape, pruner config, defaults beyond sparsity)
MODELS = {
    "resnet": (ResNet, (2, 3, 6, 6), _layers("b1.conv1", "b2.conv1"), {"prune_norm": True}),
    "resnet, conv bias not pruned": (
        lambda: ResNet(bias=True),
        (2, 3, 6, 6),
        _layers("b1.conv1", "b2.conv1"),
        {"prune_norm": True, "prune_bias": False},
    ),
    "swiglu, separate masks": (GatedStack, (2, 5, 8), _layers("l0.gate", "l0.up", "l1.gate", "l1.up"), {}),
    "geglu": (lambda: GatedStack(act=F.gelu), (2, 5, 8), _layers("l0.gate", "l0.up", "l1.gate", "l1.up"), {}),
    "swiglu, gate only": (GatedStack, (2, 5, 8), _layers("l0.gate", "l1.gate"), {}),
    "linear-batchnorm": (LinearBN, (6, 12), _layers("fc1"), {"prune_norm": True}),
    "linear-batchnorm-linear-linear": (
        LinearBNLinear,
        (6, 12),
        [{"tensor_fqn": "fc1.weight", "prune_norm": True}, {"tensor_fqn": "fc2.weight"}],
        {},
    ),
    "conv-batchnorm-pool-flatten": (ConvBNFlat, (4, 3, 8, 8), _layers("conv"), {"prune_norm": True}),
}
