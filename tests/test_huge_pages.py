"""Large CPU outputs ask the kernel for transparent huge pages (csrc/cpu/huge_pages.h):
the advice shows as the "hg" flag of the output's mapping in /proc/self/smaps."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastdrop  # noqa: F401

pytestmark = pytest.mark.skipif(
    not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists(),
    reason="needs Linux with transparent huge pages",
)

LARGE = 1 << 23  # float32 elements: 32 MiB, past the 16 MiB from which outputs are advised


def mapping_flags(address):
    """The VmFlags of the mapping in /proc/self/smaps that holds address."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def interior(tensor):
    """An address 4 MiB into the tensor's memory: inside its aligned huge-page range."""
    return tensor.data_ptr() + (4 << 20)


@pytest.mark.parametrize(
    "op",
    [
        lambda x: torch.ops.fastdrop.dropout(x, 0.1, None)[0],
        lambda x: torch.ops.fastdrop.dropout_backward(x, torch.ops.fastdrop.dropout(x[:4], 0.1, None)[1], 0.1),
        lambda x: torch.ops.fastdrop.feature_dropout(x.view(64, 32, -1), 0.1, None)[0],
    ],
    ids=["forward", "backward", "grouped"],
)
def test_large_outputs_are_advised(op):
    x = torch.randn(LARGE)
    out = op(x)
    assert out.numel() == LARGE
    assert "hg" in mapping_flags(interior(out))
    assert "hg" not in mapping_flags(interior(x)), "the input's mapping is not fastdrop's to advise"


def test_advice_can_be_turned_off():
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch
        from test_huge_pages import interior, mapping_flags
        out = torch.ops.fastdrop.dropout(torch.randn({LARGE}), 0.1, None)[0]
        print("hg" in mapping_flags(interior(out)))
        """
    )
    flags = {}
    for setting in ("0", "1"):
        env = dict(os.environ, FASTDROP_HUGE_PAGES=setting)
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        flags[setting] = result.stdout.strip()
    assert flags == {"0": "False", "1": "True"}
