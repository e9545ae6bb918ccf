"""The Triton group_norm_act kernel, run by the Triton interpreter on CPU tensors, against the
torch reference. Small shapes only: the interpreter executes every program in numpy.

The kernel runs in one worker process (this file run as a script) that imports triton with
TRITON_INTERPRET=1 already set. In the pytest process triton is usually imported earlier
(diffusers imports it), and triton's own @jit helpers (tl.zeros, ...) are decorated at that
first import, so the interpreter cannot run them there.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything here imports triton; inherited by the worker

import itertools  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from clockwork_engine.ops.group_norm import group_norm_act_reference  # noqa: E402

pytestmark = pytest.mark.triton_interpreter

TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
ALL_OPERANDS = ("scale", "shift", "residual")


def _case(shape, groups, dtype, layout, operands, act, residual_layout=None):
    return dict(shape=shape, groups=groups, dtype=dtype, layout=layout, operands=operands, act=act,
                residual_layout=residual_layout or layout)


CASES = {}
for _dtype, _flags, _act in itertools.product(DTYPES, itertools.product([0, 1], repeat=3), ["identity", "silu"]):
    _operands = tuple(name for name, on in zip(ALL_OPERANDS, _flags) if on)
    CASES[f"flags-{_dtype}-{'+'.join(_operands) or 'none'}-{_act}"] = _case((2, 32, 5, 7), 8, _dtype, "nchw", _operands,
                                                                            _act)
for _shape, _groups in [((2, 32, 5, 7), 8), ((1, 64, 8, 8), 32)]:
    for _dtype, _layout in itertools.product(DTYPES, ["nchw", "cl"]):
        CASES[f"shape-{'x'.join(map(str, _shape))}-g{_groups}-{_dtype}-{_layout}"] = _case(_shape, _groups, _dtype,
                                                                                          _layout, ALL_OPERANDS, "silu")
# 2 x 48 x 48 = 4608 elements per group > BLOCK = 4096, so both passes loop over chunks; and the
# residual is NCHW while x is channels-last: every operand is addressed through its own strides.
CASES["multi-block-mixed-layouts"] = _case((1, 4, 48, 48), 2, "fp32", "cl", ("shift", "residual"), "silu",
                                           residual_layout="nchw")


def make_inputs(case, seed=0):
    g = torch.Generator().manual_seed(seed)
    (B, C, H, W), dtype = case["shape"], DTYPES[case["dtype"]]
    fmt = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
    x = (torch.randn(B, C, H, W, generator=g) * 2 + 3).to(dtype).contiguous(memory_format=fmt[case["layout"]])
    residual = torch.randn(B, C, H, W, generator=g).to(dtype).contiguous(memory_format=fmt[case["residual_layout"]])
    return dict(x=x, weight=torch.randn(C, generator=g), bias=torch.randn(C, generator=g),
                scale=0.5 * torch.randn(B, C, generator=g) if "scale" in case["operands"] else None,
                shift=torch.randn(B, C, generator=g) if "shift" in case["operands"] else None,
                residual=residual if "residual" in case["operands"] else None)


def run_cases(cases):
    """In the worker: case id -> (inputs, kernel output or the error it raised)."""
    from clockwork_engine.kernels.group_norm import group_norm_act_triton

    results = {}
    for case_id, case in cases.items():
        i = make_inputs(case)
        try:
            y = group_norm_act_triton(i["x"], i["weight"], i["bias"], case["groups"], 1e-5, i["scale"], i["shift"],
                                      case["act"], i["residual"])
        except Exception as e:  # reported by that case's test, not by the whole module
            y = f"{type(e).__name__}: {e}"
        results[case_id] = (i, y)
    return results


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton_interpreter") / "results.pt"
    proc = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"TRITON_INTERPRET": "1"})
    if proc.returncode:
        pytest.fail(f"Triton interpreter worker failed:\n{proc.stderr[-3000:]}")
    return torch.load(out)


@pytest.mark.parametrize("case_id", list(CASES))
def test_kernel_matches_reference(kernel_results, case_id):
    case = CASES[case_id]
    inputs, y = kernel_results[case_id]
    assert not isinstance(y, str), y
    assert y.dtype == inputs["x"].dtype and y.stride() == inputs["x"].stride()  # x's dtype and memory format
    up = {k: None if v is None else v.float() for k, v in inputs.items()}
    expected = group_norm_act_reference(up["x"], up["weight"], up["bias"], case["groups"], 1e-5, up["scale"],
                                        up["shift"], case["act"], up["residual"])
    torch.testing.assert_close(y.float(), expected, **TOLERANCES[y.dtype])


def test_launch_config_heuristic():
    pytest.importorskip("triton")
    from clockwork_engine.kernels.group_norm import launch_config

    assert launch_config(4 * 5 * 7) == (256, 1)  # next power of two, few warps for small groups
    assert launch_config(10 * 64 * 64) == (4096, 8)  # SD's groups: capped block, more warps
    assert launch_config(2 * 48 * 48)[0] < 2 * 48 * 48  # the multi-block case above really loops


@pytest.mark.parametrize("change,message", [
    (dict(groups=3), "C divisible by groups=3"),
    (dict(act="gelu"), "act must be one of"),
    (dict(shift=torch.randn(32)), r"shift must be \[B, C\]"),
    (dict(residual=torch.randn(2, 32, 5, 6)), "residual must have x's shape"),
])
def test_launcher_checks(change, message):
    pytest.importorskip("triton")
    from clockwork_engine.kernels.group_norm import group_norm_act_triton

    args = dict(x=torch.randn(2, 32, 5, 7), weight=torch.randn(32), bias=torch.randn(32), groups=8, eps=1e-5,
                scale=None, shift=None, act="silu", residual=None)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        group_norm_act_triton(**args)


if __name__ == "__main__":
    torch.save(run_cases(CASES), sys.argv[1])
