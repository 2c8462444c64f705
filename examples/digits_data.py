"""scikit-learn's handwritten digits (1797 8x8 images of 10 classes that ship
inside the package, so the examples run offline), a fixed 75/25 split, and the
training loop the examples share."""

import time

import numpy as np
import torch


def load_digits_split(size=8, seed=0):
    """(x_train, y_train, x_test, y_test): images scaled to [0, 1], shape (N, 1, size, size)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    if size != 8:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.RandomState(seed).permutation(len(labels)))
    images, labels = images[order], labels[order]
    cut = len(labels) * 3 // 4
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def accuracy(model, images, labels, batch=512):
    model.eval()
    with torch.no_grad():
        correct = sum(
            (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
            for i in range(0, len(labels), batch)
        )
    return correct / len(labels)


def mean_std(values):
    values = torch.tensor(values, dtype=torch.float64)
    return values.mean().item(), (values.std().item() if len(values) > 1 else 0.0)


def mean_std_text(values):
    """'mean +- std' of values, as the examples' tables print it."""
    mean, std = mean_std(values)
    return f"{mean:.4f} +- {std:.4f}"


def cross_entropy(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y)


def train(model, optimizer, data, epochs, seed, loss=cross_entropy, batch=64, scheduler=None):
    """Trains on the training split in an order drawn from `seed`.

    Returns (train accuracy, test accuracy, median seconds per epoch).
    """
    x_train, y_train, x_test, y_test = data
    order_generator = torch.Generator().manual_seed(seed)
    seconds = []
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(y_train), generator=order_generator)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            value = loss(model, x_train[index], y_train[index])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seconds.append(time.perf_counter() - started)
    return accuracy(model, x_train, y_train), accuracy(model, x_test, y_test), sorted(seconds)[len(seconds) // 2]
