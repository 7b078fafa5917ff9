"""Fixtures for the kernel tests. Each test module starts with ``pytest.importorskip("torch")``:
torch is an optional extra, and without it these tests are skipped."""

import pytest

from tests.conftest import kernel_module


@pytest.fixture(scope="session")
def ml():
    """kernels.moe_layer, loaded as planner_kernels.moe_layer (installed or from the source tree)."""
    return kernel_module("moe_layer")


@pytest.fixture(scope="session")
def timing():
    return kernel_module("timing")
