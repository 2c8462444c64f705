"""Activation checkpointing replays the same masks: torch.utils.checkpoint
(reentrant and not) restores the generator before recomputing, and fastdrop's
masks are a function of what it draws, so the gradients equal the
un-checkpointed run's bit for bit; selective activation checkpointing and
torch.compile of a checkpointed block too."""

import functools

import pytest
import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import fastdrop
from conftest import assert_identical

FD = fastdrop.functional


class Block(torch.nn.Module):
    """Every fastdrop op between matmuls, so that a replayed mask that differs changes the gradients."""

    def __init__(self):
        super().__init__()
        self.linear1 = torch.nn.Linear(16, 16)
        self.linear2 = torch.nn.Linear(16, 16)
        self.bias = torch.nn.Parameter(torch.randn(16))
        self.dropout = fastdrop.nn.Dropout(0.3)
        self.channels = fastdrop.nn.Dropout1d(0.3)
        self.alpha = fastdrop.nn.AlphaDropout(0.2)
        self.drop_path = fastdrop.nn.DropPath(0.3)

    def forward(self, x):
        h = self.dropout(self.linear1(x))
        h = self.channels(h)
        h = self.alpha(torch.nn.functional.selu(h))
        h = FD.bias_dropout_add(self.linear2(h), self.bias, x, 0.25)
        h = FD.dropout_add(h, self.linear1(h), 0.2)
        h = FD.drop_path_add(h, self.drop_path(self.linear2(h)), 0.3)
        h = FD.dropout(h * 1, 0.1, inplace=True)
        return FD.feature_alpha_dropout(h.unsqueeze(-1), 0.2, True).squeeze(-1)


def gradients(run, seed=0):
    torch.manual_seed(1234)
    block = Block()
    x = torch.randn(8, 4, 16, requires_grad=True)
    torch.manual_seed(seed)
    out = run(block, x)
    out.pow(2).sum().backward()
    return out.detach(), [x.grad, *(p.grad for p in block.parameters())]


def assert_same_run(run):
    expected_out, expected = gradients(lambda block, x: block(x))
    out, actual = gradients(run)
    assert_identical(out, expected_out)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_identical(a, e)


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non_reentrant"])
def test_checkpoint_replays_the_masks(use_reentrant):
    assert_same_run(lambda block, x: checkpoint(block, x, use_reentrant=use_reentrant))


def test_nested_checkpoints():
    def run(block, x):
        return checkpoint(lambda t: checkpoint(block, t, use_reentrant=False) * 1, x, use_reentrant=False)

    assert_same_run(run)


def _recompute_all(ctx, op, *args, **kwargs):
    return CheckpointPolicy.PREFER_RECOMPUTE


def _save_matmuls(ctx, op, *args, **kwargs):
    return (
        CheckpointPolicy.MUST_SAVE
        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        else CheckpointPolicy.PREFER_RECOMPUTE
    )


def _save_fastdrop(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op.namespace == "fastdrop" else CheckpointPolicy.PREFER_RECOMPUTE


@pytest.mark.parametrize("policy", [_recompute_all, _save_matmuls, _save_fastdrop])
def test_selective_activation_checkpointing(policy):
    context = functools.partial(create_selective_checkpoint_contexts, policy)
    assert_same_run(lambda block, x: checkpoint(block, x, use_reentrant=False, context_fn=context))


def test_a_checkpointed_run_differs_with_another_seed():
    # The comparison can fail: another draw gives other gradients.
    _, expected = gradients(lambda block, x: block(x))
    _, other = gradients(lambda block, x: checkpoint(block, x, use_reentrant=False), seed=1)
    assert not torch.equal(other[0], expected[0])


@pytest.mark.slow
@pytest.mark.traces
def test_compiled_checkpointed_block():
    def run(block, x):
        return torch.compile(lambda t: checkpoint(block, t, use_reentrant=False), fullgraph=True, backend="aot_eager")(
            x
        )

    # The compiled graph draws in the same order from the same generator, and its
    # backward replays the checkpointed region's draws: the same masks.
    assert_same_run(run)
