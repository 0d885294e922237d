"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest

from learner.bootstrap import build_default_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A small offline-built tiny policy (random weights), built once per test session; read-only."""
    return str(build_default_model(tmp_path_factory.mktemp("policy") / "tiny", size="tiny", seed=0, n_tasks=60))


@pytest.fixture(scope="module")
def ray_local():
    """An embedded loopback Ray for one test module (started and shut down by the module, never `ray stop`)."""
    import ray

    from cluster.local import init_ray

    init_ray()
    yield
    ray.shutdown()
