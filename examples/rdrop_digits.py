"""R-Drop with fastdrop: the same dropout MLP trained with plain cross-entropy and
with fastdrop.losses.rdrop_loss, which pulls two dropout passes of each batch
towards each other (Liang et al., 2021). The batch is duplicated and run through
one forward, so both passes cost one call of each fastdrop kernel.

A small, wide network on 300 training images overfits; R-Drop regularises it:
compare the train/test gap and the test accuracy.

    python examples/rdrop_digits.py [--epochs 60] [--seeds 5] [--alpha 1.0]
"""

import argparse

import torch
from digits_data import cross_entropy, load_digits_split, mean_std, mean_std_text, train
from torch import nn

import fastdrop


def mlp():
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 512),
        nn.ReLU(),
        fastdrop.nn.Dropout(0.3),
        nn.Linear(512, 512),
        nn.ReLU(),
        fastdrop.nn.Dropout(0.3),
        nn.Linear(512, 10),
    )


def rdrop(alpha):
    def loss(model, x, y):
        # One forward of the batch twice over: the halves see different dropout masks.
        logits1, logits2 = model(torch.cat([x, x])).chunk(2)
        return fastdrop.losses.rdrop_loss(logits1, logits2, y, alpha)

    return loss


def run(data, epochs, seed, alpha, train_size=300):
    x_train, y_train, x_test, y_test = data
    small = (x_train[:train_size], y_train[:train_size], x_test, y_test)
    torch.manual_seed(seed)
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = cross_entropy if alpha is None else rdrop(alpha)
    return train(model, optimizer, small, epochs, seed, loss, batch=50)[:2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=1.0)
    args = parser.parse_args(argv)
    data = load_digits_split()
    print(
        f"MLP with fastdrop.nn.Dropout(0.3) on 300 digits, {args.epochs} epochs, "
        f"seeds 0..{args.seeds - 1}; mean +- std over seeds\n"
    )
    print("| loss | train accuracy | test accuracy | train - test |")
    print("|---|---|---|---|")
    results = {}
    for name, alpha in (("cross-entropy", None), (f"R-Drop (alpha={args.alpha:g})", args.alpha)):
        runs = [run(data, args.epochs, seed, alpha) for seed in range(args.seeds)]
        train_acc, test_acc = [r[0] for r in runs], [r[1] for r in runs]
        results[name] = mean_std(test_acc)[0]
        print(
            f"| {name} | {mean_std_text(train_acc)} | {mean_std_text(test_acc)} | "
            f"{mean_std_text([r[0] - r[1] for r in runs])} |"
        )
    return results


if __name__ == "__main__":
    main()
