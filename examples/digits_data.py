"""scikit-learn's handwritten digits: 1797 8x8 images of 10 classes that ship
inside the package, so the examples run offline. A fixed 75/25 split."""

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
        correct = sum((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
                      for i in range(0, len(labels), batch))
    return correct / len(labels)


def mean_std(values):
    values = torch.tensor(values, dtype=torch.float64)
    return values.mean().item(), (values.std().item() if len(values) > 1 else 0.0)
