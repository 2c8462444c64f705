"""Losses built on two dropout passes."""

import torch.nn.functional as F

__all__ = ["rdrop_loss"]


def rdrop_loss(logits1, logits2, target, alpha=1.0):
    """R-Drop (Liang et al., 2021): the mean of the two passes' cross-entropies plus
    alpha times the symmetric KL divergence between their predictions.

    logits1 and logits2 are two forward passes of the same batch with different
    dropout masks (in practice one forward of the batch concatenated with itself,
    split in two). The KL terms are averaged over the batch:
    ((CE1 + CE2) / 2) + alpha * (KL(p1 || p2) + KL(p2 || p1)) / 2.
    """
    if logits1.shape != logits2.shape:
        raise ValueError(
            f"rdrop_loss: the two passes' logits must have the same shape, but got {list(logits1.shape)} "
            f"and {list(logits2.shape)}"
        )
    cross_entropy = (F.cross_entropy(logits1, target) + F.cross_entropy(logits2, target)) / 2
    log_p1 = F.log_softmax(logits1, dim=-1)
    log_p2 = F.log_softmax(logits2, dim=-1)
    kl_12 = F.kl_div(log_p2, log_p1, reduction="batchmean", log_target=True)  # KL(p1 || p2)
    kl_21 = F.kl_div(log_p1, log_p2, reduction="batchmean", log_target=True)  # KL(p2 || p1)
    return cross_entropy + alpha * (kl_12 + kl_21) / 2
