"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest

from learner.bootstrap import build_default_model

# Files whose tests start torch.distributed in the pytest process: in-process Learners, and in-process vLLM
# engines, which never release it (a Learner started after one fails: "process group twice").
IN_PROCESS_TORCH = {"tests/cluster/test_checkpoints.py", "tests/learner/test_bootstrap.py",
                    "tests/learner/test_diagnostics.py", "tests/learner/test_lora.py", "tests/learner/test_rank.py",
                    "tests/rollout/test_engine.py", "tests/rollout/test_worker.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Groups for ``pytest -n 2 --dist loadgroup`` (``make test``); a group runs in one worker, in file order.
    IN_PROCESS_TORCH: as a serial run orders them, the Learners before the engines. The other tests on the
    session's Ray: a run finds the shared actors of an earlier run with the same ``actor_key`` alive, and the
    actors of two tests never hold memory at once. The rest file by file, so that a module's fixtures end
    before another file's tests start in that worker."""
    for item in items:
        path = item.nodeid.split("::")[0]
        on_ray = "ray_local" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.xdist_group("in_process_torch" if path in IN_PROCESS_TORCH else
                                                "ray" if on_ray else path))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A small offline-built tiny policy (random weights), built once per test session; read-only."""
    return str(build_default_model(tmp_path_factory.mktemp("policy") / "tiny", size="tiny", seed=0, n_tasks=60))


@pytest.fixture(scope="session")
def ray_local():
    """An embedded loopback Ray for the test session (shut down at its end, never `ray stop`), with logical
    CPUs for two sets of shared actors and a test's own at once."""
    import ray

    from cluster.local import init_ray

    init_ray(num_cpus=12)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def actors(ray_local):
    """``actors(config)``: engines and learners that runs with the same ``actor_key`` train on one after the
    other, as ``launch.py sweep`` does (a run on them logs what it logs on its own:
    tests/cluster/test_scheduler.py); ``fresh=True`` builds them anew. The two sets used last stay alive."""
    from cluster.sweep import Actors, actor_key

    alive: dict[str, Actors] = {}  # least recently used first

    def for_run(config, fresh: bool = False):
        key = actor_key(config)
        alive[key] = alive.pop(key, None) or Actors()
        if fresh:
            alive[key].close()
        while len(alive) > 2:
            alive.pop(next(iter(alive))).close()
        return alive[key].for_run(config)

    yield for_run
    for shared in alive.values():
        shared.close()


@pytest.fixture
def scheduler_on(actors):
    """Start a Scheduler for ``config`` on the shared actors."""
    from cluster.scheduler import Scheduler

    return lambda config: Scheduler(config, *actors(config))
