"""fastdrop in real training: one-line adoption, compile, DDP, CUDA graphs,
autocast, copying and pickling, TorchScript."""

import copy
import logging
import pickle

import pytest
import torch
import torch.nn.functional as torch_F
from torch import nn

import fastdrop
from conftest import assert_identical, requires_cuda

# ------------------------------------------------------------ replace_dropout ----


def torch_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # (N, 8, 6, 6)
        nn.Dropout2d(0.2),
        nn.Sequential(nn.Flatten(2), nn.Dropout1d(0.1), nn.Unflatten(2, (3, 3, 4)), nn.Dropout3d(0.3, inplace=True)),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 32),
        nn.Dropout(0.5),
        nn.AlphaDropout(0.1),
        nn.Sequential(nn.Unflatten(1, (32, 1)), nn.FeatureAlphaDropout(0.2), nn.Flatten()),
        nn.Linear(32, 10),
    )


class DropPath(nn.Module):
    """timm's DropPath as timm writes it (timm need not be installed)."""

    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return x


class StochasticDepth(nn.Module):
    """torchvision's StochasticDepth's attributes (torchvision need not be installed)."""

    def __init__(self, p, mode):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        return x


def test_replace_dropout_swaps_every_kind_and_keeps_settings(caplog):
    model = torch_model()
    model.append(DropPath(0.15, scale_by_keep=False)).append(StochasticDepth(0.25, "batch"))
    model[2].eval()  # a submodule left in eval mode stays in eval mode
    with caplog.at_level(logging.INFO, logger="fastdrop"):
        assert fastdrop.replace_dropout(model) is model
    expected = {
        "1": (fastdrop.nn.Dropout2d, 0.2),
        "2.1": (fastdrop.nn.Dropout1d, 0.1),
        "2.3": (fastdrop.nn.Dropout3d, 0.3),
        "5": (fastdrop.nn.Dropout, 0.5),
        "6": (fastdrop.nn.AlphaDropout, 0.1),
        "7.1": (fastdrop.nn.FeatureAlphaDropout, 0.2),
    }
    modules = dict(model.named_modules())
    for name, (cls, p) in expected.items():
        assert type(modules[name]) is cls and modules[name].p == p
    assert modules["2.3"].inplace and not modules["5"].inplace
    assert not modules["2.1"].training and modules["1"].training
    assert type(modules["9"]) is fastdrop.nn.DropPath
    assert (modules["9"].drop_prob, modules["9"].scale_by_keep) == (0.15, False)
    assert type(modules["10"]) is fastdrop.nn.StochasticDepth and (modules["10"].p, modules["10"].mode) == (
        0.25,
        "batch",
    )
    assert "replaced 1 Dropout2d, 1 Dropout1d, 1 Dropout3d, 1 Dropout, 1 AlphaDropout" in caplog.text
    assert "2.3: Dropout3d" in caplog.text
    # Running it again finds nothing left to replace.
    with caplog.at_level(logging.INFO, logger="fastdrop"):
        fastdrop.replace_dropout(model)
    assert "replaced nothing" in caplog.text


def test_eval_outputs_are_bit_identical_after_replacement():
    torch.manual_seed(0)
    model = torch_model().eval()
    x = torch.randn(4, 3, 6, 6)
    before = model(x)
    fastdrop.replace_dropout(model)
    assert_identical(model(x), before)


def test_training_outputs_use_fastdrop():
    model = fastdrop.replace_dropout(nn.Sequential(nn.Dropout(0.5)))
    x = torch.randn(1000)
    torch.manual_seed(3)
    y = model(x)
    torch.manual_seed(3)
    assert_identical(y, fastdrop.functional.dropout(x, 0.5))


def test_a_bare_dropout_model_is_returned_replaced():
    replaced = fastdrop.replace_dropout(nn.Dropout(0.3).eval())
    assert type(replaced) is fastdrop.nn.Dropout and replaced.p == 0.3 and not replaced.training


def test_real_timm_and_torchvision_modules():
    timm = pytest.importorskip("timm")
    torchvision = pytest.importorskip("torchvision")
    model = nn.Sequential(timm.layers.DropPath(0.1), torchvision.ops.StochasticDepth(0.2, "row"))
    fastdrop.replace_dropout(model)
    assert type(model[0]) is fastdrop.nn.DropPath and type(model[1]) is fastdrop.nn.StochasticDepth


# --------------------------------------------------------------- compile ----


def every_module_model():
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "conv": nn.Conv1d(4, 8, 3, padding=1),
            "drop1d": fastdrop.nn.Dropout1d(0.1),
            "drop2d": fastdrop.nn.Dropout2d(0.1),
            "drop3d": fastdrop.nn.Dropout3d(0.1),
            "linear": nn.Linear(8 * 12, 32),
            "dropout": fastdrop.nn.Dropout(0.2),
            "alpha": fastdrop.nn.AlphaDropout(0.1),
            "feature_alpha": fastdrop.nn.FeatureAlphaDropout(0.1),
            "drop_path": fastdrop.nn.DropPath(0.2),
            "stochastic_depth": fastdrop.nn.StochasticDepth(0.1, "row"),
            "block": fastdrop.nn.StochasticDepthBlock(nn.Linear(32, 32), 0.2),
            "head": nn.Linear(32, 5),
        }
    )


def forward_loss(model, x, y):
    h = model["drop1d"](model["conv"](x))  # (N, 8, 12)
    h = model["drop2d"](h.view(-1, 8, 3, 4)).reshape(-1, 8, 12)
    h = model["drop3d"](h.view(-1, 8, 2, 2, 3)).flatten(1)
    h = model["dropout"](torch.tanh(model["linear"](h)))
    h = model["feature_alpha"](model["alpha"](h).view(-1, 32, 1)).flatten(1)
    h = h + model["drop_path"](h) + model["stochastic_depth"](h)
    return torch_F.cross_entropy(model["head"](model["block"](h)), y)


def loss_trajectory(step, steps=4):
    model = every_module_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(6, 4, 12, generator=data), torch.randint(0, 5, (6,), generator=data)
        loss = step(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_compiled_training_step_follows_the_eager_trajectory():
    eager = loss_trajectory(forward_loss)
    compiled = loss_trajectory(torch.compile(forward_loss, fullgraph=True, backend="aot_eager"))
    assert_identical(compiled, eager)


@pytest.mark.slow
def test_inductor_training_step():
    eager = loss_trajectory(forward_loss, steps=2)
    compiled = loss_trajectory(torch.compile(forward_loss, fullgraph=True), steps=2)
    # Inductor fuses the surrounding torch ops, which may round differently; the masks are the same.
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- DDP ----


def test_ddp_two_processes_on_gloo(tmp_path):
    import ddp_worker

    torch.multiprocessing.spawn(
        ddp_worker.run,
        args=(2, str(tmp_path / "init"), {"own_seeds": (11, 22), "same_seed": (33, 33)}, str(tmp_path / "out")),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"out.rank{rank}") for rank in range(2)]
    # DDP's averaged gradient is the mean of each rank's single-process gradient
    # under the same seed and shard.
    single = []
    for rank, seed in enumerate((11, 22)):
        model = ddp_worker.build_model()
        torch.manual_seed(seed)
        x, y = ddp_worker.shard(rank)
        torch_F.cross_entropy(model(x), y).backward()
        single.append([p.grad for p in model.parameters()])
    for index, ddp_grad in enumerate(ranks[0]["own_seeds"]["grads"]):
        torch.testing.assert_close(ddp_grad, (single[0][index] + single[1][index]) / 2)
        assert_identical(ranks[1]["own_seeds"]["grads"][index], ddp_grad)
    assert not torch.equal(ranks[0]["own_seeds"]["mask"], ranks[1]["own_seeds"]["mask"])
    assert torch.equal(ranks[0]["same_seed"]["mask"], ranks[1]["same_seed"]["mask"])


# ------------------------------------------------------------ CUDA graphs ----


@requires_cuda
def test_cuda_graph_training_step_draws_fresh_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), fastdrop.nn.Dropout(0.5), nn.Linear(256, 8)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 64, device="cuda")
    y = torch.randint(0, 8, (32,), device="cuda")
    masks = []
    model[1].register_forward_hook(lambda m, i, o: masks.append(o))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up outside the graph, as CUDA graphs require
            optimizer.zero_grad(set_to_none=True)
            torch_F.cross_entropy(model(x), y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    masks.clear()
    with torch.cuda.graph(graph):
        static_loss = torch_F.cross_entropy(model(x), y)
        static_loss.backward()
        optimizer.step()
    captured = masks[-1]
    seen = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        seen.append((captured != 0).clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


# -------------------------------------------------------------- autocast ----


def test_autocast_bfloat16_on_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.3), nn.Linear(32, 4), nn.AlphaDropout(0.1))
    ours = fastdrop.replace_dropout(copy.deepcopy(model))
    x = torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs_out = model(x)
        ours_out = ours(x)
    assert ours_out.dtype == theirs_out.dtype == torch.bfloat16
    ours_out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda(dtype):
    model = fastdrop.replace_dropout(nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.3), nn.Linear(32, 4))).cuda()
    x = torch.randn(8, 16, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        out = model(x)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert x.grad is not None


# ------------------------------------------- copying, pickling, TorchScript ----


MODULES = [
    fastdrop.nn.Dropout(0.3, True),
    fastdrop.nn.Dropout1d(0.2),
    fastdrop.nn.Dropout2d(0.2),
    fastdrop.nn.Dropout3d(0.2),
    fastdrop.nn.AlphaDropout(0.1),
    fastdrop.nn.FeatureAlphaDropout(0.1),
    fastdrop.nn.DropPath(0.1, scale_by_keep=False),
    fastdrop.nn.StochasticDepth(0.2, "batch"),
    fastdrop.nn.StochasticDepthBlock(nn.Linear(4, 4), 0.2, nn.Linear(4, 4)),
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_deepcopy_pickle_and_state_dict(module):
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert type(clone) is type(module)
        assert repr(clone) == repr(module)
        assert clone.training == module.training
        state = module.state_dict()
        assert clone.load_state_dict(state) is not None
        assert clone.state_dict().keys() == state.keys()
        for key in state:
            assert_identical(clone.state_dict()[key], state[key])


def test_state_dicts_move_between_torch_and_fastdrop_models():
    theirs = torch_model()
    ours = fastdrop.replace_dropout(copy.deepcopy(theirs))
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_torchscript_fails_with_a_clear_message(module):
    with pytest.raises(RuntimeError, match=r"cannot be compiled with torch.jit.script\. Use torch.compile"):
        torch.jit.script(nn.Sequential(nn.Identity(), module))


def test_torch_jit_trace_records_fastdrop_ops():
    model = nn.Sequential(nn.Linear(8, 8), fastdrop.nn.Dropout(0.5))
    traced = torch.jit.trace(model, torch.randn(4, 8), check_trace=False)
    assert "fastdrop::dropout" in str(traced.inlined_graph)
    out = traced(torch.randn(64, 8))
    assert (out == 0).any() and (out != 0).any()


# ------------------------------------------------------------------ R-Drop ----


def test_rdrop_loss_is_cross_entropy_plus_symmetric_kl():
    logits1, logits2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (6,))
    p1, p2 = logits1.softmax(-1), logits2.softmax(-1)
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1).mean()  # noqa: E731
    expected = (torch_F.cross_entropy(logits1, target) + torch_F.cross_entropy(logits2, target)) / 2
    expected = expected + 0.7 * (kl(p1, p2) + kl(p2, p1)) / 2
    torch.testing.assert_close(fastdrop.losses.rdrop_loss(logits1, logits2, target, 0.7), expected)
    assert fastdrop.losses.rdrop_loss(logits1, logits1, target, 5.0).item() == pytest.approx(
        torch_F.cross_entropy(logits1, target).item()
    )
    with pytest.raises(ValueError, match="same shape"):
        fastdrop.losses.rdrop_loss(logits1, logits2[:3], target)


# ---------------------------------------------------------------- examples ----


@pytest.mark.parametrize(
    "module, argv",
    [
        ("lenet_digits", ["--epochs", "1", "--seeds", "1"]),
        ("rdrop_digits", ["--epochs", "2", "--seeds", "1"]),
        ("stochastic_depth_resnet", ["--epochs", "1", "--seeds", "1"]),
    ],
)
def test_examples_run(module, argv, monkeypatch):
    pytest.importorskip("sklearn")
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    results = __import__(module).main(argv)
    assert results and all(0.0 <= accuracy <= 1.0 for accuracy in results.values())
