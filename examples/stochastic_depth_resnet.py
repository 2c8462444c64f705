"""Stochastic depth on a ResNet with fastdrop.add_stochastic_depth.

A ResNet-18-style network (torchvision's BasicBlock structure, narrow, for
8x8 inputs) trained on scikit-learn's digits with plain residual blocks and
with stochastic depth added in one line: block l of L is dropped with
probability drop_rate * l / L (the Stochastic Depth paper's linear rule),
through fastdrop's fused drop_path_add.

    python examples/stochastic_depth_resnet.py [--epochs 15] [--seeds 2] [--drop-rate 0.2]
"""

import argparse

import torch
from digits_data import load_digits_split, mean_std, mean_std_text, train
from torch import nn

import fastdrop


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


def resnet18(width=16):
    layers, inplanes = [], width
    for index, planes in enumerate([width, width * 2, width * 4, width * 8]):
        stride = 1 if index == 0 else 2
        layers += [BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)]
        inplanes = planes
    return nn.Sequential(
        nn.Conv2d(1, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(inplanes, 10),
    )


def run(data, epochs, seed, drop_rate):
    torch.manual_seed(seed)
    model = resnet18()
    if drop_rate:
        fastdrop.add_stochastic_depth(model, drop_rate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    return train(model, optimizer, data, epochs, seed, scheduler=scheduler)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--drop-rate", type=float, default=0.2)
    args = parser.parse_args(argv)
    data = load_digits_split()
    print(
        f"ResNet-18 (BasicBlock, width 16) on scikit-learn digits, {args.epochs} epochs, "
        f"seeds 0..{args.seeds - 1}; mean +- std over seeds\n"
    )
    print("| residual blocks | train accuracy | test accuracy | epoch seconds |")
    print("|---|---|---|---|")
    results = {}
    for name, rate in (("plain", 0.0), (f"stochastic depth (drop_rate={args.drop_rate:g}, linear)", args.drop_rate)):
        runs = [run(data, args.epochs, seed, rate) for seed in range(args.seeds)]
        train_acc, test_acc, seconds = ([run[i] for run in runs] for i in range(3))
        results[name] = mean_std(test_acc)[0]
        print(f"| {name} | {mean_std_text(train_acc)} | {mean_std_text(test_acc)} | {mean_std(seconds)[0]:.2f} |")
    return results


if __name__ == "__main__":
    main()
