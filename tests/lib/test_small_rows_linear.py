"""The compiled small-batch linear kernel: its products against float64 matmul, what it declines, and how it
is built (once per machine, cached; a failed build warns and leaves torch's linear in charge)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from rlhf_lib.models import small_rows_linear as kernel_module
from rlhf_lib.models.small_rows_linear import MAX_ROWS, available, small_rows_linear


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """The kernel is looked up (and built) again, into an empty cache folder; the cached handle is reset after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel_module._kernel.cache_clear()
    yield tmp_path / "rlhf_lib" / "kernels"
    kernel_module._kernel.cache_clear()


def _float64_linear(x, weight, bias):
    out = x.double() @ weight.double().T
    return (out if bias is None else out + bias.double()).float()


@pytest.mark.parametrize("rows", range(1, MAX_ROWS + 1))
@pytest.mark.parametrize(("n_out", "width", "with_bias"), [(1, 64, False), (7, 80, True), (64, 576, False)])
def test_kernel_matches_a_float64_product(rows, n_out, width, with_bias):
    assert available(), "the kernel should build here (gcc with OpenMP); see the logged warning"
    generator = torch.Generator().manual_seed(rows * 1000 + n_out)
    x = torch.randn(rows, width, generator=generator)
    weight = torch.randn(n_out, width, generator=generator)
    bias = torch.randn(n_out, generator=generator) if with_bias else None
    out = small_rows_linear(x, weight, bias)
    assert out is not None and out.shape == (rows, n_out)
    torch.testing.assert_close(out, _float64_linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_leading_dimensions_count_as_rows():
    x, weight = torch.randn(2, 4, 64), torch.randn(10, 64)
    out = small_rows_linear(x, weight, None)
    assert out is not None and out.shape == (2, 4, 10)
    torch.testing.assert_close(out, _float64_linear(x.reshape(8, 64), weight, None).reshape(2, 4, 10))


@pytest.mark.parametrize(
    "case",
    [
        "9 rows",
        "no rows",
        "width 84",
        "width 32",
        "bf16",
        "strided input",
        "strided weight",
        "width mismatch",
        "short bias",
    ],
)
def test_kernel_declines_what_it_does_not_cover(case):
    x, weight, bias = torch.randn(4, 64), torch.randn(10, 64), None
    if case == "9 rows":
        x = torch.randn(MAX_ROWS + 1, 64)
    elif case == "no rows":
        x = torch.randn(0, 64)
    elif case == "width 84":  # not a multiple of the vector width
        x, weight = torch.randn(4, 84), torch.randn(10, 84)
    elif case == "width 32":  # below MIN_WIDTH
        x, weight = torch.randn(4, 32), torch.randn(10, 32)
    elif case == "bf16":
        x, weight = x.bfloat16(), weight.bfloat16()
    elif case == "strided input":
        x = torch.randn(64, 4).T
    elif case == "width mismatch":
        weight = torch.randn(10, 48)
    elif case == "short bias":
        bias = torch.randn(9)
    else:  # strided weight
        weight = torch.randn(64, 10).T
    assert small_rows_linear(x, weight, bias) is None


def test_the_8_lane_build_matches_a_float64_product(fresh_build):
    """CPUs without AVX-512 get the 8-lane build (AVX2): its own lane-sum tree, checked here on this x86 CPU."""
    library = fresh_build / "eight_lanes.so"
    kernel_module._compile(kernel_module._compiler(), library, [*kernel_module._FLAGS, "-mno-avx512f"])
    kernel, lanes = kernel_module._load(library)  # the load runs the self-check too
    assert lanes == 8
    generator = torch.Generator().manual_seed(1)
    for rows, n_out, width in [(8, 33, 72), (3, 64, 576), (1, 2, 8)]:
        x, weight = torch.randn(rows, width, generator=generator), torch.randn(n_out, width, generator=generator)
        bias = torch.randn(n_out, generator=generator)
        out = torch.empty(rows, n_out)
        assert kernel(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), out.data_ptr(), rows, n_out, width, 2) == 0
        torch.testing.assert_close(out, _float64_linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_a_first_build_under_bf16_autocast_passes_its_self_check(fresh_build):
    # A bf16 trainer's sampling can be the first to ask for the kernel; its fp32 self-check must still hold,
    # or the kernel stays off for the rest of the process.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert available()


def test_kernel_is_built_once_per_machine_and_reused(fresh_build):
    assert available()
    (library,) = fresh_build.glob("small_rows_linear-*.so")
    built = library.stat()
    kernel_module._kernel.cache_clear()  # a new process: it finds the cached build
    assert available()
    again = library.stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert [p.name for p in fresh_build.iterdir()] == [library.name], "no staging file left behind"


def test_a_damaged_cached_build_is_built_again(fresh_build, monkeypatch):
    library = kernel_module._library_path(kernel_module._compiler())
    library.parent.mkdir(parents=True)
    library.write_bytes(b"not a shared library")
    # A new process, because this one may have loaded a library of that name already.
    code = "from rlhf_lib.models.small_rows_linear import available; print(available())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True", result.stderr
    assert library.read_bytes()[:4] == b"\x7fELF"


def test_a_failed_build_warns_and_leaves_torch_in_charge(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger=kernel_module.__name__):
        assert not available()
    assert "kernel unavailable" in caplog.text and "no-such-compiler" in caplog.text
    assert small_rows_linear(torch.randn(4, 64), torch.randn(10, 64), None) is None
    assert not any(fresh_build.glob("*.so"))


def test_compiler_errors_are_reported(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")  # a compiler that fails, as one without OpenMP would
    with caplog.at_level(logging.WARNING, logger=kernel_module.__name__):
        assert not available()
    assert "kernel unavailable" in caplog.text
    assert not any(fresh_build.iterdir()), "a failed build leaves no file behind"


def test_the_kernel_can_be_turned_off(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("RLHF_NATIVE_KERNELS", "0")
    with caplog.at_level(logging.WARNING, logger=kernel_module.__name__):
        assert not available()
    assert caplog.text == "" and not fresh_build.exists()
