"""One rank of the distributed tests (tests/test_distributed.py), run in its own process.

    python distributed_worker.py RANK WORLD_SIZE INIT_FILE RESULTS_PREFIX

Every rank runs every check meant for its world size, in the same order (the
checks make collective calls), and writes {check: None or its traceback} to
RESULTS_PREFIX.rankN.json. A check compares what the ranks compute with what one
process computes on the whole tensor or batch, with the same seed.
"""

import datetime
import json
import sys
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as torch_F
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor, init_device_mesh

import fastdrop
import fastdrop.distributed as FDD
import fastdrop.functional as FD

CHECKS = {}


def check(*worlds):
    def register(function):
        CHECKS[function.__name__] = (function, worlds)
        return function

    return register


def assert_identical(actual, expected, what=""):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert torch.equal(actual, expected), f"{what}: {(actual != expected).sum().item()} elements differ"


def full(value):
    return value.full_tensor() if isinstance(value, DTensor) else value


def meshes(world):
    """1-D meshes over every rank, and 2-D ones where there are 4."""
    found = [(init_device_mesh("cpu", (world,)), [[Shard(0)], [Shard(1)], [Shard(2)], [Shard(-1)], [Replicate()]])]
    if world == 4:
        found.append(
            (
                init_device_mesh("cpu", (2, 2)),
                [[Shard(0), Shard(1)], [Shard(0), Shard(0)], [Replicate(), Shard(2)], [Shard(2), Replicate()]],
            )
        )
    return found


# Each op: (global shape, function); shapes whose sharded dims do not divide evenly.
OPS = {
    "dropout": ((5, 6, 7), lambda t: FD.dropout(t, 0.4)),
    "alpha_dropout": ((5, 6, 7), lambda t: FD.alpha_dropout(t, 0.3, True)),
    "dropout1d": ((5, 6, 7), lambda t: FD.dropout1d(t, 0.5)),
    "dropout2d": ((5, 6, 3, 4), lambda t: FD.dropout2d(t, 0.5)),
    "dropout3d_unbatched": ((6, 3, 2, 3), lambda t: FD.dropout3d(t, 0.5)),
    "feature_alpha_dropout": ((5, 6, 3, 4), lambda t: FD.feature_alpha_dropout(t, 0.5, True)),
    "drop_path": ((7, 3, 4), lambda t: FD.drop_path(t, 0.5, True)),
    "drop_path_unscaled": ((7, 3, 4), lambda t: FD.drop_path(t, 0.5, True, scale_by_keep=False)),
    "stochastic_depth_batch": ((7, 3, 4), lambda t: FD.stochastic_depth(t, 0.5, "batch")),
    "dropout_noise_shape": ((5, 6, 7), lambda t: FD.dropout(t, 0.4, noise_shape=(5, 1, 7))),
    "alpha_dropout_noise_shape": ((5, 6, 7), lambda t: FD.alpha_dropout(t, 0.4, True, noise_shape=(1, 6, 7))),
}


@check(2, 4)
def dtensor_is_the_full_tensors_result(rank, world):
    """Forward and backward of every op, any placement: the full op's result, bit for bit."""
    for dtype in (torch.float32, torch.bfloat16):
        for mesh, placement_sets in meshes(world):
            for placements in placement_sets:
                for name, (shape, function) in OPS.items():
                    if len(shape) < 3 and any(isinstance(p, Shard) and p.dim == 2 for p in placements):
                        continue
                    torch.manual_seed(0)
                    whole = torch.randn(shape, dtype=dtype)
                    upstream = torch.randn(shape, dtype=dtype)
                    what = f"{name} {dtype} {placements}"
                    torch.manual_seed(1)
                    leaf = whole.clone().requires_grad_()
                    expected = function(leaf)
                    expected.backward(upstream)

                    sharded = distribute_tensor(whole, mesh, placements).requires_grad_()
                    torch.manual_seed(1)
                    output = function(sharded)
                    assert isinstance(output, DTensor) and tuple(output.placements) == tuple(sharded.placements), what
                    output.backward(distribute_tensor(upstream, mesh, placements))
                    assert_identical(full(output), expected, what)
                    assert_identical(full(sharded.grad), leaf.grad, what + " grad")
                    # The generator moved on as the full call moved it: later calls agree too.
                    following = torch.randint(0, 2**62, (1,))
                    assert_identical(following, _after(function, whole), what + " generator")


def _after(function, whole):
    """The draw that follows `function` on the full tensor, seeded as the checks seed it."""
    state = torch.get_rng_state()
    torch.manual_seed(1)
    function(whole.clone())
    following = torch.randint(0, 2**62, (1,))
    torch.set_rng_state(state)
    return following


@check(2, 4)
def dtensor_in_place(rank, world):
    mesh = init_device_mesh("cpu", (world,))
    for name, function in {
        "dropout": lambda t: FD.dropout(t, 0.4, inplace=True),
        "alpha_dropout": lambda t: FD.alpha_dropout(t, 0.3, True, inplace=True),
        "dropout2d": lambda t: FD.dropout2d(t, 0.5, inplace=True),
    }.items():
        for placements in ([Shard(0)], [Shard(1)], [Replicate()]):
            torch.manual_seed(0)
            whole = torch.randn(5, 6, 3, 4)
            sharded = distribute_tensor(whole, mesh, placements)
            torch.manual_seed(1)
            expected = function(whole.clone())
            torch.manual_seed(1)
            assert function(sharded) is sharded
            assert_identical(full(sharded), expected, f"{name} {placements}")


@check(2, 4)
def dtensor_partial(rank, world):
    """A Partial input: the linear variants stay Partial, alpha dropout reduces first."""
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(10 + rank)
    local = torch.randn(5, 6, 7)
    partial = DTensor.from_local(local, mesh, [Partial()], run_check=False)
    whole = full(partial)
    for name, function in {
        "dropout": lambda t: FD.dropout(t, 0.4),
        "dropout1d": lambda t: FD.dropout1d(t, 0.5),
        "alpha_dropout": lambda t: FD.alpha_dropout(t, 0.3, True),
    }.items():
        torch.manual_seed(1)
        output = function(partial)
        torch.manual_seed(1)
        expected = function(whole)
        if name == "alpha_dropout":
            assert tuple(output.placements) == (Replicate(),), output.placements
            assert_identical(full(output), expected, name)
        else:
            assert tuple(output.placements) == (Partial(),), output.placements
            torch.testing.assert_close(full(output), expected, rtol=1e-6, atol=1e-6)  # the sum's order
    try:
        FD.alpha_dropout(DTensor.from_local(local.clone(), mesh, [Partial()], run_check=False), 0.3, True, True)
    except RuntimeError as error:
        assert "Partial" in str(error), error
    else:
        raise AssertionError("in-place alpha dropout of a Partial DTensor did not raise")


@check(2, 4)
def dtensor_residual_forms(rank, world):
    mesh = init_device_mesh("cpu", (world,))
    forms = {
        "dropout_add": (lambda r, x, b: FD.dropout_add(r, x, 0.4), (5, 6, 7)),
        "bias_dropout_add": (lambda r, x, b: FD.bias_dropout_add(x, b, r, 0.4), (5, 6, 7)),
        "drop_path_add": (lambda r, x, b: FD.drop_path_add(r, x, 0.5), (7, 3, 4)),
    }
    # (branch dtype, residual dtype): an fp32 residual beside a bf16 branch too.
    for dtype, residual_dtype in ((torch.float32,) * 2, (torch.bfloat16,) * 2, (torch.bfloat16, torch.float32)):
        for name, (function, shape) in forms.items():
            for placements in ([Shard(0)], [Shard(1)], [Replicate()]):
                torch.manual_seed(0)
                residual, x, bias = (
                    torch.randn(shape, dtype=residual_dtype),
                    torch.randn(shape, dtype=dtype),
                    torch.randn(shape[-1], dtype=dtype),
                )
                upstream = torch.randn(shape, dtype=residual_dtype)
                leaves = [t.clone().requires_grad_() for t in (residual, x, bias)]
                torch.manual_seed(1)
                expected = function(*leaves)
                expected.backward(upstream)
                sharded = [distribute_tensor(t, mesh, placements).requires_grad_() for t in (residual, x)]
                sharded.append(distribute_tensor(bias, mesh, [Replicate()]).requires_grad_())
                torch.manual_seed(1)
                output = function(*sharded)
                output.backward(distribute_tensor(upstream, mesh, placements))
                what = f"{name} {dtype} {residual_dtype} {placements}"
                assert_identical(full(output), expected, what)
                for which, (got, leaf) in enumerate(zip(sharded, leaves)):
                    if leaf.grad is None:
                        assert got.grad is None, what
                        continue
                    if which == 2:  # the bias gradient is a reduction: the sum's order differs
                        torch.testing.assert_close(full(got.grad), leaf.grad, rtol=2e-2, atol=1e-2)
                    else:
                        assert_identical(full(got.grad), leaf.grad, f"{what} grad {which}")


@check(2, 4)
def dtensor_modules_and_eval(rank, world):
    mesh = init_device_mesh("cpu", (world,))
    whole = torch.randn(4, 6, 5)
    for module in (fastdrop.nn.Dropout(0.3), fastdrop.nn.Dropout1d(0.3), fastdrop.nn.DropPath(0.3)):
        sharded = distribute_tensor(whole, mesh, [Shard(1)])
        torch.manual_seed(3)
        output = module(sharded)
        torch.manual_seed(3)
        assert_identical(full(output), module(whole), type(module).__name__)
        module.eval()
        assert module(sharded) is sharded


@check(2, 4)
def dtensor_ranks_seeded_differently_raise(rank, world):
    mesh = init_device_mesh("cpu", (world,))
    sharded = distribute_tensor(torch.randn(8, 4), mesh, [Shard(0)])
    FDD.set_rng_check("always")
    try:
        torch.manual_seed(100 + rank)
        FD.dropout(sharded, 0.5)
    except RuntimeError as error:
        assert "different (seed, offset)" in str(error), error
    else:
        raise AssertionError("differently seeded ranks did not raise")
    finally:
        FDD.set_rng_check("first")
    torch.manual_seed(5)
    FD.dropout(sharded, 0.5)  # seeded alike: no error


# ------------------------------------------------------- tensor parallel ----


class Attention(nn.Module):
    def __init__(self, dim, heads, p):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = fastdrop.nn.Dropout(p)

    def forward(self, x):
        def split(t):  # (B, S, D) -> (B, H, S, D / H)
            return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = self.drop((q @ k.transpose(-2, -1) / self.head_dim**0.5).softmax(-1))
        return self.o((weights @ v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    """A pre-norm transformer block with dropout on the attention weights, in the
    MLP, on the attention branch and stochastic depth on the MLP branch."""

    def __init__(self, dim=16, heads=4, hidden=32, p=0.25):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, p)
        self.drop1 = fastdrop.nn.Dropout(p)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop_hidden = fastdrop.nn.Dropout(p)
        self.drop_path = fastdrop.nn.DropPath(p)

    def forward(self, x):
        x = x + self.drop1(self.attn(self.norm1(x)))
        return x + self.drop_path(self.fc2(self.drop_hidden(torch_F.gelu(self.fc1(self.norm2(x))))))


def tensor_parallel_plan(sequence_parallel):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    # The sharded activations stay DTensors (use_local_output=False), so the
    # dropouts between the projections see where they sit.
    colwise = ColwiseParallel(use_local_output=False)
    if not sequence_parallel:
        return {
            "attn.q": colwise,
            "attn.k": colwise,
            "attn.v": colwise,
            "attn.o": RowwiseParallel(),
            "fc1": colwise,
            "fc2": RowwiseParallel(),
        }
    # The residual stream sharded along the sequence (dim 1): the norms and the
    # residual-branch dropouts see Shard(1) DTensors.
    colwise = ColwiseParallel(input_layouts=Shard(1), use_local_output=False)
    rowwise = RowwiseParallel(output_layouts=Shard(1))
    sequence = SequenceParallel(use_local_output=True)
    return {
        "norm1": SequenceParallel(),
        "attn.q": colwise,
        "attn.k": colwise,
        "attn.v": colwise,
        "attn.o": rowwise,
        "drop1": sequence,
        "norm2": SequenceParallel(),
        "fc1": colwise,
        "fc2": rowwise,
        "drop_path": sequence,
    }


def block_step(mesh, sequence_parallel=False):
    """Loss, gradients and every dropout's mask of one step of Block, tensor
    parallel over mesh (None: one process)."""
    torch.manual_seed(0)
    block = Block()
    masks = {}
    for name, module in block.named_modules():
        if isinstance(module, (fastdrop.nn.Dropout, fastdrop.nn.DropPath)):
            # Registered first: sees the DTensor before a parallel style's hook makes it local.
            module.register_forward_hook(lambda m, i, output, name=name: masks.__setitem__(name, full(output) != 0))
    x = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(1))
    if mesh is not None:
        from torch.distributed.tensor.parallel import parallelize_module

        block = parallelize_module(block, mesh, tensor_parallel_plan(sequence_parallel))
        if sequence_parallel:
            x = x.chunk(mesh.size(), dim=1)[mesh.get_local_rank()]
    torch.manual_seed(2)
    output = block(x)
    if mesh is not None and sequence_parallel:
        output = DTensor.from_local(output, mesh, [Shard(1)]).full_tensor()
    loss = output.square().mean()
    loss.backward()
    grads = {name: full(parameter.grad) for name, parameter in block.named_parameters()}
    return full(loss), grads, masks


@check(2, 4)
def tensor_parallel_degrees_agree(rank, world):
    loss, grads, masks = block_step(None)
    assert len(masks) == 4
    degrees = [world] if world == 2 else [2, 4]
    for sequence_parallel in (False, True):
        for degree in degrees:
            mesh = init_device_mesh("cpu", (world // degree, degree), mesh_dim_names=("dp", "tp"))["tp"]
            tp_loss, tp_grads, tp_masks = block_step(mesh, sequence_parallel)
            what = f"degree {degree}, sequence parallel {sequence_parallel}"
            for name in masks:
                assert_identical(tp_masks[name], masks[name], f"{what}: mask of {name}")
            torch.testing.assert_close(tp_loss, loss, rtol=1e-5, atol=1e-6)
            for name in grads:
                torch.testing.assert_close(tp_grads[name], grads[name], rtol=1e-4, atol=1e-5, msg=f"{what}: {name}")


# --------------------------------------------------------- data parallel ----


def dp_model():
    torch.manual_seed(0)  # the same initial weights in every process
    return nn.Sequential(
        nn.Linear(16, 32),
        fastdrop.nn.Dropout(0.5),
        nn.ReLU(),
        nn.Unflatten(1, (8, 4)),
        fastdrop.nn.Dropout1d(0.3),
        fastdrop.nn.DropPath(0.3),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


def global_batch(size):
    generator = torch.Generator().manual_seed(7)
    return torch.randn(size, 16, generator=generator), torch.randint(0, 4, (size,), generator=generator)


def recorded_masks(model):
    masks = []
    for module in model.modules():
        if isinstance(module, (fastdrop.nn.Dropout, fastdrop.nn.Dropout1d, fastdrop.nn.DropPath)):
            module.register_forward_hook(lambda m, inputs, output: masks.append(output != 0))
    return masks


def single_process_step(size, seed):
    model = dp_model()
    masks = recorded_masks(model)
    x, y = global_batch(size)
    torch.manual_seed(seed)
    torch_F.cross_entropy(model(x), y).backward()
    return masks, [p.grad for p in model.parameters()]


def gather(tensor):
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return gathered


@check(2, 4)
def data_parallel_masks_are_the_global_batchs(rank, world):
    """DDP with and without gradient accumulation: the ranks' masks differ, and
    together they are one process's masks of the global batch."""
    from torch.nn.parallel import DistributedDataParallel

    local = 4
    for micro_batches in (1, 2):
        size = local * micro_batches * world
        expected_masks, expected_grads = single_process_step(size, seed=11)
        model = dp_model()
        masks = recorded_masks(model)
        ddp = DistributedDataParallel(model)
        x, y = global_batch(size)
        torch.manual_seed(11)
        for micro_batch in range(micro_batches):
            start = (rank * micro_batches + micro_batch) * local
            sync = micro_batch == micro_batches - 1
            with FDD.data_parallel(micro_batch=micro_batch, micro_batches=micro_batches):
                context = ddp.no_sync() if not sync else torch.enable_grad()
                with context:
                    loss = torch_F.cross_entropy(ddp(x[start : start + local]), y[start : start + local])
                    (loss / micro_batches).backward()
        layers = len(expected_masks)
        for layer in range(layers):
            pieces = [masks[layer + layers * m] for m in range(micro_batches)]
            mine = torch.cat(pieces)
            ranks = gather(mine)
            assert not torch.equal(ranks[0], ranks[1]), f"ranks 0 and 1 drew the same mask (layer {layer})"
            assert_identical(torch.cat(ranks), expected_masks[layer], f"layer {layer}, {micro_batches} micro-batches")
        for got, expected in zip(model.parameters(), expected_grads):
            torch.testing.assert_close(got.grad, expected, rtol=1e-5, atol=1e-6)
        # The generators stand where the single process left them.
        assert_identical(torch.randint(0, 2**62, (1,)), _following_draw(size, 11), "generator after the step")


def _following_draw(size, seed):
    state = torch.get_rng_state()
    single_process_step(size, seed)
    following = torch.randint(0, 2**62, (1,))
    torch.set_rng_state(state)
    return following


@check(2, 4)
def data_parallel_refuses_differently_seeded_ranks(rank, world):
    torch.manual_seed(rank)
    try:
        with FDD.data_parallel():
            pass
    except RuntimeError as error:
        assert "different (seed, offset)" in str(error), error
    else:
        raise AssertionError("differently seeded ranks did not raise")


@check(2, 4)
def fsdp2_step_matches_the_unsharded_step(rank, world):
    from torch.distributed.fsdp import fully_shard

    local = 4
    size = local * world
    reference = dp_model()
    x, y = global_batch(size)
    torch.manual_seed(5)
    torch_F.cross_entropy(reference(x), y).backward()
    torch.optim.SGD(reference.parameters(), lr=0.5).step()

    model = dp_model()
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model[0], model[7]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(5)
    with FDD.data_parallel():
        start = rank * local
        torch_F.cross_entropy(model(x[start : start + local]), y[start : start + local]).backward()
    optimizer.step()
    for (name, got), expected in zip(model.named_parameters(), reference.parameters()):
        assert isinstance(got, DTensor), name
        torch.testing.assert_close(full(got), expected, rtol=1e-5, atol=1e-6, msg=name)


def main(rank, world, init_file, results):
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    outcome = {}
    try:
        for name, (function, worlds) in CHECKS.items():
            if world not in worlds:
                continue
            try:
                function(rank, world)
                outcome[name] = None
            except Exception:
                outcome[name] = traceback.format_exc()
            dist.barrier()
    finally:
        with open(f"{results}.rank{rank}.json", "w") as file:
            json.dump(outcome, file)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
