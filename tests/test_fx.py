"""torch.fx: fastdrop's modules trace as leaves (one call_module node each), as
torch.nn's dropouts do, in train and eval mode; the functional API traces as
one call_function node; traced graphs compute what the model computes; and
torchvision's feature extraction works on a model after replace_dropout."""

import os

import pytest
import torch

import fastdrop
from conftest import assert_identical

FD = fastdrop.functional

LEAVES = [
    (fastdrop.nn.Dropout(0.3), (4, 6)),
    (fastdrop.nn.Dropout(0.3, inplace=True), (4, 6)),
    (fastdrop.nn.Dropout1d(0.3), (2, 3, 6)),
    (fastdrop.nn.Dropout2d(0.3), (2, 3, 4, 4)),
    (fastdrop.nn.Dropout3d(0.3), (2, 3, 2, 2, 2)),
    (fastdrop.nn.AlphaDropout(0.3), (4, 6)),
    (fastdrop.nn.FeatureAlphaDropout(0.3), (2, 3, 4, 4)),
    (fastdrop.nn.DropPath(0.3), (4, 6)),
    (fastdrop.nn.StochasticDepth(0.3, "row"), (4, 6)),
]


class Net(torch.nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))
        self.dropout = dropout

    def forward(self, x):
        return self.dropout(x * self.scale) + 1


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "module, shape",
    LEAVES,
    ids=[type(m).__name__ + ("_inplace" if getattr(m, "inplace", False) else "") for m, _ in LEAVES],
)
def test_modules_trace_as_leaves(module, shape, training):
    net = Net(module).train(training)
    graph_module = torch.fx.symbolic_trace(net)
    calls = [node for node in graph_module.graph.nodes if node.op == "call_module"]
    assert [node.target for node in calls] == ["dropout"]
    x = torch.randn(shape)
    torch.manual_seed(0)
    expected = net(x)
    torch.manual_seed(0)
    assert_identical(graph_module(x), expected)


def test_torch_modules_and_fastdrop_modules_give_the_same_graph():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Dropout1d(0.1))
    before = [(n.op, n.target) for n in torch.fx.symbolic_trace(model).graph.nodes]
    fastdrop.replace_dropout(model)
    after = [(n.op, n.target) for n in torch.fx.symbolic_trace(model).graph.nodes]
    assert before == after


FUNCTIONAL = {
    "dropout": lambda x, r: FD.dropout(x, 0.3),
    "dropout_inplace": lambda x, r: FD.dropout(x * 1, 0.3, inplace=True),
    "alpha_dropout": lambda x, r: FD.alpha_dropout(x, 0.3, True),
    "feature_alpha_dropout": lambda x, r: FD.feature_alpha_dropout(x, 0.3, True),
    "dropout1d": lambda x, r: FD.dropout1d(x, 0.3),
    "dropout2d": lambda x, r: FD.dropout2d(x.unsqueeze(0), 0.3),
    "dropout3d": lambda x, r: FD.dropout3d(x.unsqueeze(0), 0.3),
    "drop_path": lambda x, r: FD.drop_path(x, 0.3, True),
    "stochastic_depth": lambda x, r: FD.stochastic_depth(x, 0.3, "row"),
    "drop_path_add": lambda x, r: FD.drop_path_add(r, x, 0.3),
    "dropout_add": lambda x, r: FD.dropout_add(r, x, 0.3),
    "bias_dropout_add": lambda x, r: FD.bias_dropout_add(x, r[0, 0], r, 0.3),
    "dropout_with_seed": lambda x, r: FD.dropout_with_seed(x, 0.3, 5),
}


class Functional(torch.nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, x, r):
        return self.call(x, r)


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_calls_trace_as_one_node(name):
    module = Functional(FUNCTIONAL[name])
    graph_module = torch.fx.symbolic_trace(module)
    targets = [node.target for node in graph_module.graph.nodes if node.op == "call_function"]
    public = name.removesuffix("_inplace")
    assert getattr(FD, public) in targets
    x, r = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.manual_seed(1)
    expected = module(x, r)
    torch.manual_seed(1)
    assert_identical(graph_module(x, r), expected)


def _torchvision():
    """torchvision's feature extraction; skipped where torchvision does not import (CI runs these
    tests in its CUDA-build environment, which has torchvision, with FASTDROP_REQUIRE_TORCHVISION=1)."""
    try:
        import torchvision.models.feature_extraction as feature_extraction

        return feature_extraction
    except Exception as error:  # noqa: BLE001  (a torchvision built for another torch fails on import)
        if os.environ.get("FASTDROP_REQUIRE_TORCHVISION"):
            raise
        pytest.skip(f"torchvision does not import here ({type(error).__name__}: {error})")


def test_torchvision_feature_extraction_after_replace_dropout():
    feature_extraction = _torchvision()
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    names_before = feature_extraction.get_graph_node_names(model)
    fastdrop.replace_dropout(model)
    assert isinstance(model.classifier[2], fastdrop.nn.Dropout)
    assert feature_extraction.get_graph_node_names(model) == names_before  # the dropout stays a leaf: same names
    extractor = feature_extraction.create_feature_extractor(
        model, return_nodes={"classifier.2": "dropped", "classifier.3": "logits"}
    )
    x = torch.randn(2, 3, 64, 64)
    for training in (True, False):
        model.train(training)
        extractor.train(training)
        torch.manual_seed(2)
        features = extractor(x)
        torch.manual_seed(2)
        assert_identical(features["logits"], model(x))
        assert features["dropped"].shape == (2, 1024)


def test_torchvision_feature_extraction_through_stochastic_depth():
    feature_extraction = _torchvision()
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    fastdrop.add_stochastic_depth(model, 0.2)
    names = feature_extraction.get_graph_node_names(model)[0]
    assert any("drop_path_add" in name for name in names)
    extractor = feature_extraction.create_feature_extractor(model, return_nodes=["layer4", "fc"])
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(3)
    features = extractor(x)
    torch.manual_seed(3)
    assert_identical(features["fc"], model(x))
