"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest

from learner.bootstrap import build_default_model

# `make test` runs pytest in two workers (`-n 2`); a group of files runs in one worker, file after file.
# "ray": the tests on this session's Ray, so that a run finds the shared actors of an earlier run with the
# same ``actor_key`` alive, and the actors of two tests never hold memory at once (two Ray groups in the two
# workers, each with engines and learners, made their tests ~2x slower: the suite took 13 min 12 s instead
# of 12 min 16 s). "in_process_torch": the files that start torch.distributed in the pytest process
# (in-process Learners and in-process vLLM engines: a Learner started while an engine holds the default
# process group fails, "process group twice", as it did when a module-scoped engine stayed alive across
# other files' tests), in the order a serial run has them. Any other file is a group of its own. (xdist's
# own xdist_group marks do not group under pytest 9.) The "ray" group takes ~60 % of the suite and goes
# first (xdist queues groups by test count: it has the most); a worker takes another group only when its
# current one is nearly done, so the other worker runs every other group meanwhile.
GROUPS = {
    **dict.fromkeys(["tests/cluster/test_scheduler.py", "tests/cluster/test_recovery.py", "tests/cluster/test_pipeline.py",
                     "tests/cluster/test_sweep.py", "tests/rollout/test_evaluate.py", "tests/supervision/test_adaptive.py",
                     "tests/supervision/test_preset_runs.py", "tests/test_launch.py", "tests/cluster/test_placement.py",
                     "tests/rollout/test_pool.py"], "ray"),
    **dict.fromkeys(["tests/cluster/test_checkpoints.py", "tests/learner/test_bootstrap.py",
                     "tests/learner/test_diagnostics.py", "tests/learner/test_lora.py", "tests/learner/test_qwen_vocab.py",
                     "tests/learner/test_rank.py",
                     "tests/rollout/test_engine.py", "tests/rollout/test_worker.py"], "in_process_torch"),
}


def _group(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return GROUPS.get(path, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return FileGroups(config, log)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A small offline-built tiny policy (random weights), built once per test session; read-only."""
    return str(build_default_model(tmp_path_factory.mktemp("policy") / "tiny", size="tiny", seed=0, n_tasks=60))


@pytest.fixture(scope="session")
def ray_local():
    """An embedded loopback Ray for the test session (shut down at its end, never `ray stop`), with logical
    CPUs for two sets of shared actors and a test's own at once, and 4 declared GPUs."""
    import ray

    from cluster.local import init_ray

    init_ray(num_cpus=12, num_gpus=4)  # declared GPUs: tests/cluster/test_placement.py
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
