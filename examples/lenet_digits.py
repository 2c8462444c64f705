"""LeNet-5 with four dropout configurations, torch's dropout against fastdrop's.

The configurations of the dropout literature's LeNet experiments: no dropout;
dropout (p=0.5) on the fully connected layers; channel dropout (Dropout2d, p=0.2)
on the convolutional layers; both. Each is trained from the same seeds twice:
with torch's modules, and with the same model after fastdrop.replace_dropout.
Data: scikit-learn's digits (ships with the package, so this runs offline),
upsampled from 8x8 to LeNet's 32x32.

    python examples/lenet_digits.py [--epochs 30] [--seeds 3]
"""

import argparse

import torch
from digits_data import load_digits_split, mean_std, mean_std_text, train
from torch import nn

import fastdrop

CONFIGURATIONS = {
    "none": (False, False),
    "fully connected": (True, False),
    "channel (conv)": (False, True),
    "both": (True, True),
}


def lenet5(fc_dropout, conv_dropout):
    def channel_dropout():
        return [nn.Dropout2d(0.2)] if conv_dropout else []

    def dropout():
        return [nn.Dropout(0.5)] if fc_dropout else []

    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.Tanh(),
        *channel_dropout(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.Tanh(),
        *channel_dropout(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Tanh(),
        *dropout(),
        nn.Linear(120, 84),
        nn.Tanh(),
        *dropout(),
        nn.Linear(84, 10),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    data = load_digits_split(size=32)
    print(
        f"LeNet-5 on scikit-learn digits ({len(data[1])} train / {len(data[3])} test), "
        f"{args.epochs} epochs, seeds 0..{args.seeds - 1}; accuracy mean +- std over seeds\n"
    )
    print("| dropout | implementation | train accuracy | test accuracy | epoch seconds |")
    print("|---|---|---|---|---|")
    results = {}
    for name, (fc, conv) in CONFIGURATIONS.items():
        for implementation in ("torch", "fastdrop"):
            runs = []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = lenet5(fc, conv)  # identical initial weights for both implementations
                if implementation == "fastdrop":
                    model = fastdrop.replace_dropout(model)
                optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
                runs.append(train(model, optimizer, data, args.epochs, seed))
            train_acc, test_acc, seconds = ([run[i] for run in runs] for i in range(3))
            results[(name, implementation)] = mean_std(test_acc)[0]
            print(
                f"| {name} | {implementation} | {mean_std_text(train_acc)} | {mean_std_text(test_acc)} | "
                f"{mean_std(seconds)[0]:.3f} |"
            )
    return results


if __name__ == "__main__":
    main()
