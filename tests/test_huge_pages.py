"""Large CPU outputs ask the kernel for transparent huge pages (csrc/cpu/huge_pages.h):
the advice shows as the "hg" flag of the output's mapping in /proc/self/smaps. The
setting is read once per process, so each setting is checked in a fresh one."""

import json
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
REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


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


def advised_outputs():
    """{op: whether its output's mapping carries the advice}, for a forward, a backward and a
    grouped op's output; and whether the input's does (never: it is not fastdrop's)."""
    x = torch.randn(LARGE)
    outputs = {
        "forward": torch.ops.fastdrop.dropout(x, 0.1, None)[0],
        "backward": torch.ops.fastdrop.dropout_backward(x, torch.ops.fastdrop.dropout(x[:4], 0.1, None)[1], 0.1),
        "grouped": torch.ops.fastdrop.feature_dropout(x.view(64, 32, -1), 0.1, None)[0],
        "input": x,
    }
    return {name: "hg" in mapping_flags(interior(tensor)) for name, tensor in outputs.items()}


def advised_in_fresh_process(setting):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_huge_pages import advised_outputs
        import json
        print(json.dumps(advised_outputs()))
        """
    )
    env = dict(os.environ)
    env.pop("FASTDROP_HUGE_PAGES", None)
    if setting is not None:
        env["FASTDROP_HUGE_PAGES"] = setting
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_outputs_are_advised_when_asked():
    assert advised_in_fresh_process("1") == {"forward": True, "backward": True, "grouped": True, "input": False}


def test_advice_can_be_turned_off():
    assert not any(advised_in_fresh_process("0").values())


def test_default_leaves_out_a_machine_that_reports_free_pages_to_its_host():
    reports = REPORTED.exists() and int(REPORTED.read_text()) > 0
    expected = not reports
    assert advised_in_fresh_process(None) == {
        "forward": expected,
        "backward": expected,
        "grouped": expected,
        "input": False,
    }
