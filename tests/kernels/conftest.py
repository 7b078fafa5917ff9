"""Fixtures for the kernel tests. Each test module starts with ``pytest.importorskip("torch")``:
torch is an optional extra, and without it these tests are skipped."""

import pytest


@pytest.fixture(scope="session")
def ml():
    """kernels.moe_layer, loaded as planner_kernels.moe_layer (installed or from the source tree)."""
    import importlib

    from planner.validate import load_kernels

    return importlib.import_module(f"{load_kernels().__name__}.moe_layer")


@pytest.fixture(scope="session")
def timing():
    import importlib

    from planner.validate import load_kernels

    return importlib.import_module(f"{load_kernels().__name__}.timing")
