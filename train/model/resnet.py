"""ResNet-18/34 image backbone whose state-dict keys are torchvision's.

The project cannot depend on torchvision (it pulls a CUDA torch), yet users have ImageNet weights
saved from it; matching its module names (conv1, bn1, layer1.0.conv1, ..., downsample.0/1) lets
`load_torchvision_weights` read such a file as is. ``width`` scales every stage (64 is
torchvision's), so the tiny config can train on a laptop CPU with the same code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .norm import norm2d

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm2d(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """Returns the stride 8, 16 and 32 feature maps (torchvision's layer2, layer3, layer4)."""

    def __init__(self, depth: int = 18, width: int = 64, norm: str = "bn") -> None:
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"depth: expected one of {sorted(BLOCKS)}, got {depth}")
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm2d(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.out_channels = []
        cin = width
        for i, n in enumerate(BLOCKS[depth]):
            cout = width * 2**i
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (j == 0 and i > 0) else 1, norm) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
            self.out_channels.append(cout)
        self.out_channels = self.out_channels[1:]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last norm of each block: torchvision's zero_init_residual
            if isinstance(m, BasicBlock) and hasattr(m.bn2, "weight"):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def load_torchvision_weights(model: ResNet, path: str | Path) -> None:
    """Load a torchvision ResNet state dict (its ``fc.*`` classifier is ignored).

    Raises a ValueError naming the missing or mismatched keys, so a wrong depth or width is caught.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path}: not a matching torchvision ResNet state dict "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]})")
    model.load_state_dict(state)
