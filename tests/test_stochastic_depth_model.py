"""Stochastic depth for whole models: StochasticDepthBlock and add_stochastic_depth."""

import copy
import pickle

import pytest
import torch

import fastdrop
from conftest import assert_identical
from resnet_structure import resnet18, resnet50

F = fastdrop.functional


def trained_statistics(model):
    """Give BatchNorm non-trivial running statistics, as a pretrained model has."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


def test_block_eval_is_shortcut_plus_branch():
    branch = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh())
    shortcut = torch.nn.Linear(8, 8)
    block = fastdrop.nn.StochasticDepthBlock(branch, 0.5, shortcut).eval()
    x = torch.randn(16, 8)
    assert_identical(block(x), shortcut(x) + branch(x))
    identity_block = fastdrop.nn.StochasticDepthBlock(branch, 0.5).eval()
    assert_identical(identity_block(x), x + branch(x))


def test_block_training_drops_whole_samples_but_never_the_shortcut():
    branch = torch.nn.Linear(8, 8)
    shortcut = torch.nn.Linear(8, 8)
    block = fastdrop.nn.StochasticDepthBlock(branch, 0.5, shortcut).train()
    x = torch.randn(256, 8)
    y = block(x)
    dropped = (y == shortcut(x)).all(1)
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(y[~dropped], shortcut(x)[~dropped] + branch(x)[~dropped] / 0.5)


@pytest.mark.parametrize("make", [resnet18, resnet50], ids=["resnet18", "resnet50"])
def test_add_stochastic_depth_keeps_the_eval_model_bit_for_bit(make):
    torch.manual_seed(0)
    model = trained_statistics(make())
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    state = copy.deepcopy(model.state_dict())
    fastdrop.add_stochastic_depth(model, 0.2)
    assert_identical(model(x), before)
    after = model.state_dict()
    assert list(after) == list(state)
    for key in state:
        assert_identical(after[key], state[key])


def test_linear_rule_of_the_stochastic_depth_paper():
    model = fastdrop.add_stochastic_depth(resnet18(), 0.5)
    blocks = [m for m in model.modules() if isinstance(m, fastdrop.stochastic_depth.ResidualBlockWithStochasticDepth)]
    assert len(blocks) == 8
    assert [b.drop_prob for b in blocks] == pytest.approx([0.5 * (i + 1) / 8 for i in range(8)])
    assert blocks[-1].drop_prob == 0.5
    uniform = fastdrop.add_stochastic_depth(resnet18(), 0.1, schedule="uniform")
    assert {m.drop_prob for m in uniform.modules() if hasattr(m, "bottleneck")} == {0.1}


def test_training_drops_residual_branches_and_trains():
    torch.manual_seed(1)
    model = fastdrop.add_stochastic_depth(resnet18(), 1.0, schedule="uniform").train()
    # With every branch dropped, each block is relu(shortcut(x)): the output no
    # longer depends on the branches' weights.
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    branch_weight = model.layer1[0].conv1.weight
    (grad,) = torch.autograd.grad(out.sum(), branch_weight, allow_unused=True, materialize_grads=True)
    assert torch.equal(grad, torch.zeros_like(grad))

    model = fastdrop.add_stochastic_depth(resnet18(), 0.3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randint(0, 10, (8,))
    inputs = torch.randn(8, 3, 32, 32)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < losses[0]


def test_models_with_drop_path_modules_get_their_rates_set():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Linear(4, 4)
            self.drop_path = fastdrop.nn.DropPath(0.0)

        def forward(self, x):
            return x + self.drop_path(self.mlp(x))

    model = torch.nn.Sequential(*[Block() for _ in range(4)], fastdrop.nn.StochasticDepth(0.0, "row"))
    fastdrop.add_stochastic_depth(model, 0.4)
    rates = [model[i].drop_path.drop_prob for i in range(4)] + [model[4].p]
    assert rates == pytest.approx([0.08, 0.16, 0.24, 0.32, 0.4])


def test_wrapped_models_copy_and_pickle():
    model = fastdrop.add_stochastic_depth(resnet18(), 0.2).eval()
    x = torch.randn(2, 3, 32, 32)
    assert_identical(copy.deepcopy(model)(x), model(x))
    assert_identical(pickle.loads(pickle.dumps(model))(x), model(x))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="found no residual blocks"):
        fastdrop.add_stochastic_depth(torch.nn.Linear(3, 3), 0.1)
    with pytest.raises(ValueError, match="schedule has to be either 'linear' or 'uniform'"):
        fastdrop.add_stochastic_depth(resnet18(), 0.1, schedule="cosine")
    with pytest.raises(ValueError, match="drop probability has to be between 0 and 1"):
        fastdrop.add_stochastic_depth(resnet18(), 1.5)


def test_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = trained_statistics(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    fastdrop.add_stochastic_depth(model, 0.2)
    assert_identical(model(x), before)
    assert sum(isinstance(m, fastdrop.stochastic_depth.ResidualBlockWithStochasticDepth) for m in model.modules()) == 8
    model.train()
    model(x).sum().backward()
