"""Distributed dropout whose masks do not depend on how the work is split.

fastdrop decides each element from (seed, offset) and its logical index, so a
shard needs only to know where it sits in the whole tensor:

- DTensor: every fastdrop operator given a DTensor returns a DTensor with the
  same placements, without communication, and each rank computes its slice of
  the result the operator gives the full tensor: Replicate, Shard(d) for any d
  (uneven shards too) and any mesh; Partial for the linear variants (an alpha
  dropout of a Partial input is taken after its reduction). The operators are
  registered as DTensor op handlers as soon as fastdrop.functional sees a
  DTensor (or by ``register_dtensor_handlers()``, for direct torch.ops calls).
- Data parallel: inside ``data_parallel()`` (or ``batch_slice()``), an input
  that is a plain tensor is taken as this rank's slice of the global batch, so
  that ranks draw different masks and all ranks together draw those that one
  process running the global batch draws, for any world size and number of
  gradient-accumulation micro-batches.

All ranks must draw the same (seed, offset), as DTensor's own random ops
require: seed every rank alike (``torch.manual_seed(seed)``) and make the same
fastdrop calls on each. fastdrop checks it: the first DTensor call on each mesh
(or every call, after ``set_rng_check("always")``) and each entry into
``data_parallel()`` compare the ranks' states and raise where they differ.
"""

import contextlib
import hashlib
import sys

import torch
import torch.distributed as dist

from . import _checks
from ._decisions import VARIANTS, composed_drop_path_add, full_arguments

__all__ = ["batch_slice", "data_parallel", "register_dtensor_handlers", "set_rng_check"]

ops = torch.ops.fastdrop

# Variants that commute with a sum (and a max or min) of their input: a Partial
# input stays Partial.
_LINEAR = {"dropout", "feature_dropout", "unscaled"}

_RNG_CHECKS = ("first", "always", "off")
_rng_check = "first"
_checked_meshes = set()


def set_rng_check(mode):
    """When fastdrop compares the ranks' (seed, offset) for DTensor calls: "first"
    (the first call on each mesh, the default), "always" (every call: one small
    all-gather per mesh dim and a host sync each) or "off"."""
    global _rng_check
    if mode not in _RNG_CHECKS:
        raise ValueError(f"fastdrop.distributed.set_rng_check: mode must be one of {_RNG_CHECKS}, but got {mode!r}")
    _rng_check = mode
    _checked_meshes.clear()


def _differing_ranks_error(what):
    return RuntimeError(
        f"fastdrop: the ranks of {what} drew different (seed, offset) pairs, so their masks would not be one "
        "tensor's mask. Seed every rank alike (torch.manual_seed(seed) on each, as DTensor's random ops require) "
        "and make the same fastdrop calls on each rank; or pass every rank a generator in the same state."
    )


def _all_equal(value, group):
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return all(other == gathered[0] for other in gathered)


def _check_state(mesh, state):
    # Keyed by the mesh's ranks, which every rank of it sees alike (an id() could
    # be reused on one rank and not another, and the ranks would fall out of step).
    key = (mesh.device_type, tuple(mesh.shape), tuple(mesh.mesh.flatten().tolist()))
    if _rng_check == "off" or (_rng_check == "first" and key in _checked_meshes):
        return
    pair = tuple(state.tolist())
    for dim in range(mesh.ndim):
        if not _all_equal(pair, mesh.get_group(dim)):
            raise _differing_ranks_error(f"the DTensor mesh {mesh}")
    _checked_meshes.add(key)


# DTensor: each operator's handler runs on every rank with the DTensor arguments.


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def _global_offsets(x):
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for placement in x.placements:
        # _StridedShard (a Shard subclass) interleaves: not one block of the full tensor.
        if not (type(placement) is Shard or isinstance(placement, Replicate) or placement.is_partial()):
            raise NotImplementedError(
                f"fastdrop: DTensor placement {placement} is not supported (Replicate, Shard(d) and Partial are)"
            )
    return compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)[1]


def _local_base(x, strides, base):
    """The decision index of the local shard's first element."""
    return base + sum(offset * stride for offset, stride in zip(_global_offsets(x), strides))


def _without_partial(x, variant):
    """x itself, or for an affine variant, x reduced where it is Partial."""
    if variant in _LINEAR or not any(placement.is_partial() for placement in x.placements):
        return x
    from torch.distributed.tensor import Replicate

    placements = [Replicate() if placement.is_partial() else placement for placement in x.placements]
    return x.redistribute(x.device_mesh, placements)


def _like(x, local):
    """A DTensor with x's mesh, placements and global shape, holding `local`."""
    return _dtensor()(local, x._spec, requires_grad=False)


def _replicated(x, state):
    from torch.distributed.tensor import Replicate

    _check_state(x.device_mesh, state)
    return _dtensor().from_local(state, x.device_mesh, [Replicate()] * x.device_mesh.ndim, run_check=False)


def _local(value):
    return value._local_tensor if isinstance(value, _dtensor()) else value


def _not_dtensor_error(op_call, name):
    return RuntimeError(f"fastdrop: {op_call} got a DTensor rng_state with a {name} that is not a DTensor")


def _forward_handler(name):
    def handler(op_call, args, kwargs):
        x, p, *rest, generator = full_arguments(op_call._schema, args, kwargs)
        variant, strides, base = VARIANTS[name](list(x.shape), *rest)
        x = _without_partial(x, variant)
        base = _local_base(x, strides, base)
        local, state = ops.indexed_dropout(x._local_tensor, p, variant, strides, base, generator)
        return _like(x, local), _replicated(x, state)

    return handler


def _inplace_handler(name):
    def handler(op_call, args, kwargs):
        x, p, *rest, generator = full_arguments(op_call._schema, args, kwargs)
        variant, strides, base = VARIANTS[name](list(x.shape), *rest)
        if variant not in _LINEAR and any(placement.is_partial() for placement in x.placements):
            raise RuntimeError(
                f"fastdrop: {op_call} of a Partial DTensor: alpha dropout does not commute with the pending "
                "reduction; redistribute the input to Replicate first, or use the out-of-place form"
            )
        state = ops.indexed_dropout_(x._local_tensor, p, variant, strides, _local_base(x, strides, base), generator)
        return _replicated(x, state)

    return handler


def _backward_handler(name):
    def handler(op_call, args, kwargs):
        grad, state, p, *rest = full_arguments(op_call._schema, args, kwargs)
        if not isinstance(grad, _dtensor()):
            raise _not_dtensor_error(op_call, "grad")
        variant, strides, base = VARIANTS[name](list(grad.shape), *rest)
        local = ops.indexed_dropout_backward(
            grad._local_tensor, _local(state), p, variant, strides, _local_base(grad, strides, base)
        )
        return _like(grad, local)

    return handler


# The fused residual forms, composed of DTensor operators (DTensor reconciles the
# operands' placements), rounded as the fused kernels round, as under vmap.


def _dropout_add_handler(op_call, args, kwargs):
    residual, x, p, generator = full_arguments(op_call._schema, args, kwargs)
    _checks.residual_operands(residual, x, "input", "dropout_add")
    dropped, state = ops.dropout(x, p, generator)
    return residual + dropped, state


def _bias_dropout_add_handler(op_call, args, kwargs):
    x, bias, residual, p, generator = full_arguments(op_call._schema, args, kwargs)
    _checks.residual_operands(residual, x, "input", "bias_dropout_add")
    _checks.bias_operand(x, bias, "bias_dropout_add")
    dropped, state = ops.dropout(x + bias, p, generator)
    return residual + dropped, state


def _drop_path_add_handler(op_call, args, kwargs):
    residual, branch, p, scale_by_keep, generator = full_arguments(op_call._schema, args, kwargs)
    _checks.residual_operands(residual, branch, "branch", "drop_path_add")
    dropped, state = ops.drop_path(branch, p, scale_by_keep, True, generator)
    # A dropped sample is the residual itself: its branch is never read (as in the fused kernel).
    kept = ops.drop_path_backward(torch.ones_like(branch), state, p, scale_by_keep, True) != 0
    return torch.where(kept, residual + dropped, residual), state


def _handlers():
    handlers = {}
    for name in VARIANTS:
        handlers[getattr(ops, name).default] = _forward_handler(name)
        handlers[getattr(ops, name + "_backward").default] = _backward_handler(name)
        if name != "drop_path":
            handlers[getattr(ops, name + "_").default] = _inplace_handler(name)
    handlers[ops.dropout_add.default] = _dropout_add_handler
    handlers[ops.bias_dropout_add.default] = _bias_dropout_add_handler
    handlers[ops.drop_path_add.default] = _drop_path_add_handler
    return handlers


_registered = False


def register_dtensor_handlers():
    """Makes every fastdrop operator accept DTensors (done on import of this
    module, and by fastdrop.functional on its first DTensor)."""
    global _registered
    if not _registered:
        _dtensor()._op_dispatcher._custom_op_handlers.update(_handlers())
        _registered = True


def is_dtensor(x):
    """Registers the DTensor handlers on the first DTensor seen (no DTensor can
    exist before torch.distributed.tensor is loaded, and loading it takes a second)."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None or not isinstance(x, module.DTensor):
        return False
    register_dtensor_handlers()
    return True


# Data parallel: the plain tensors of a rank are its slice of the global batch.


class _BatchSlice:
    """Rows [start, start + n) along `dim` of a global batch of `total`, where n
    is the input's size along dim; start and total may be functions of n."""

    def __init__(self, start, total, dim):
        self.start, self.total, self.dim = start, total, dim

    def place(self, shape):
        """The global shape, and the global offsets of the local tensor's first element."""
        if len(shape) == 0:
            raise RuntimeError("fastdrop.distributed: a 0-D input has no batch dim to take a slice of")
        dim = self.dim % len(shape) if -len(shape) <= self.dim < len(shape) else None
        if dim is None:
            raise IndexError(
                f"fastdrop.distributed: batch dim {self.dim} is out of range for an input of {len(shape)} dims"
            )
        n = shape[dim]
        start = self.start(n) if callable(self.start) else self.start
        total = self.total(n) if callable(self.total) else self.total
        if not 0 <= start <= start + n <= total:
            raise ValueError(
                f"fastdrop.distributed: rows [{start}, {start + n}) of dim {dim} are not within a batch of {total}"
            )
        global_shape = list(shape)
        global_shape[dim] = total
        offsets = [0] * len(shape)
        offsets[dim] = start
        return global_shape, offsets


_batch = None  # the active _BatchSlice, read by fastdrop.functional


def active_batch():
    return _batch


@contextlib.contextmanager
def batch_slice(start, total, dim=0):
    """Inside, every fastdrop call on a plain tensor takes its input as rows
    [start, start + n) along `dim` of a batch of `total` samples (n: the input's
    size along dim), and draws the decisions those rows have in the whole batch."""
    global _batch
    for value, name in ((start, "start"), (total, "total")):
        if not callable(value) and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise TypeError(f"fastdrop.distributed.batch_slice: {name} must be a non-negative int, but got {value!r}")
    previous, _batch = _batch, _BatchSlice(start, total, dim)
    try:
        yield
    finally:
        _batch = previous


def _generators():
    """The generators fastdrop draws from by default: the CPU one, and the current
    CUDA device's where CUDA is initialized."""
    generators = [torch.default_generator]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        generators.append(torch.cuda.default_generators[torch.cuda.current_device()])
    return generators


_first_micro_batch_states = None


@contextlib.contextmanager
def data_parallel(group=None, micro_batch=0, micro_batches=1, dim=0, check=True):
    """Inside, fastdrop keys its decisions on the global sample index: each rank
    of `group` (default: the world) holds the next equal-sized slice of the
    global batch along `dim` (rank r's micro-batch m of M is slice r * M + m), so
    with DDP, FSDP or gradient accumulation each rank draws different masks, and
    all ranks' masks together are those of one process running the global batch.

    Micro-batches 1 to M - 1 start from the generator states micro-batch 0
    started from (fastdrop's default generators: the CPU one, and the current
    CUDA device's where CUDA is initialized), as one call on the global batch
    would draw once; so enter them in order, after micro-batch 0.

    check: on entry to micro-batch 0, compare the ranks' generator states (one
    small all-gather) and raise where they differ: seed the ranks alike.
    """
    global _first_micro_batch_states
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fastdrop.distributed.data_parallel needs an initialized default process group")
    if not 0 <= micro_batch < micro_batches:
        raise ValueError(
            f"fastdrop.distributed.data_parallel: micro_batch must be in [0, {micro_batches}), but got {micro_batch}"
        )
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    generators = _generators()
    if micro_batch == 0:
        states = [generator.get_state() for generator in generators]
        if check:
            digests = [hashlib.sha256(state.numpy().tobytes()).hexdigest() for state in states]
            if not _all_equal(digests, group):
                raise _differing_ranks_error("the data-parallel group")
        _first_micro_batch_states = states
    elif _first_micro_batch_states is None or len(_first_micro_batch_states) != len(generators):
        raise RuntimeError(
            f"fastdrop.distributed.data_parallel: micro_batch {micro_batch} was entered before micro_batch 0"
        )
    else:
        for generator, state in zip(generators, _first_micro_batch_states):
            generator.set_state(state)
    slot = rank * micro_batches + micro_batch
    with batch_slice(lambda n: slot * n, lambda n: world_size * micro_batches * n, dim):
        yield


def sliced_indices(name, shape, args):
    """indexed_dropout's (variant, strides, base) for variant operator `name` on
    a tensor of `shape` that holds rows of the active batch slice."""
    global_shape, offsets = _batch.place(list(shape))
    variant, strides, base = VARIANTS[name](global_shape, *args)
    return variant, strides, base + sum(offset * stride for offset, stride in zip(offsets, strides))


def sliced(name, input, p, args, generator, inplace=False):
    """Variant operator `name` of input (the functional forms' path inside
    batch_slice): indexed_dropout with the decisions of its rows in the batch."""
    variant, strides, base = sliced_indices(name, input.shape, args)
    if inplace:
        ops.indexed_dropout_(input, p, variant, strides, base, generator)
        return input
    return ops.indexed_dropout(input, p, variant, strides, base, generator)[0]


def sliced_drop_path_add(residual, branch, p, scale_by_keep, generator):
    variant, strides, base = sliced_indices("drop_path", branch.shape, (scale_by_keep, True))
    return composed_drop_path_add(residual, branch, p, variant, strides, base, generator)[0]
