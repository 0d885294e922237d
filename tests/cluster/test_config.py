"""Config: presets, typed overrides, one-line errors naming the field, descriptions everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from cluster.config import ConfigError, ToolRLConfig, dump_config, load_config

PRESET = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"


def models(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from models(field.annotation)


def test_every_field_has_a_description():
    seen = 0
    for model in models(ToolRLConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            seen += 1
    assert seen >= 10


def test_preset_equals_defaults_and_round_trips(tmp_path):
    preset = load_config(PRESET)
    assert preset.model_dump(exclude={"name"}) == ToolRLConfig().model_dump(exclude={"name"})
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_config(preset))
    assert load_config(copy) == preset


def test_overrides_are_typed():
    config = load_config(PRESET, ["rollout.group_size=6", "env.reward.shaping=turn_fraction", "env.seed=3",
                                  "env.reward.format_penalty=0.25"])
    assert config.rollout.group_size == 6 and config.env.seed == 3
    assert config.env.reward.shaping == "turn_fraction" and config.env.reward.format_penalty == 0.25


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.grup_size=3"], "config error: rollout.grup_size: unknown field"),
        (["rollout.group_size=0"], "config error: rollout.group_size: Input should be greater than or equal to 1 (got 0)"),
        (["rollout.format=xml"], "config error: rollout.format: Input should be 'hermes', 'python' or 'json' (got 'xml')"),
        (["env.reward.mode=lenient"], "config error: env.reward.mode: Input should be 'bfcl' or 'strict' (got 'lenient')"),
        (["rollout.group_size"], "config error: override 'rollout.group_size' must look like section.key=value"),
        (["env.seed.x=1"], "config error: env.seed: is not a section, cannot set env.seed.x"),
        (["rollout.worker_gpus=0.5", "learner.gpus_per_rank=0.5", "learner.world_size=2"],
         ("config error: (root): cluster.placement colocate pairs each RolloutWorker with a Learner rank: "
          "rollout.workers (1) must equal learner.world_size (2)")),
        (["rollout.worker_gpus=0.6", "learner.gpus_per_rank=0.6"],
         ("config error: (root): cluster.placement colocate shares one GPU: rollout.worker_gpus + "
          "learner.gpus_per_rank must be <= 1 (got 1.2)")),
        (["trainer.pipeline=one_step_off", "supervision.mode=interleaved", "supervision.signals=[erroneous]"],
         ("config error: (root): trainer.pipeline one_step_off trains RL steps only: supervision.mode must be none "
          "(got 'interleaved')")),
        (["trainer.pipeline=one_step_off", "rollout.sleep_during_update=true"],
         ("config error: (root): trainer.pipeline one_step_off samples during the update: set "
          "rollout.sleep_during_update=false")),
    ],
)
def test_bad_overrides_fail_in_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(PRESET, overrides)
    assert str(info.value) == message


def test_bad_files_fail_in_one_line(tmp_path):
    cases = {"missing.yaml": None, "list.yaml": "- 1\n- 2\n", "broken.yaml": "env: [unclosed\n"}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "\n" not in str(info.value) and str(info.value).startswith("config error:")


def test_gpu_preset_is_valid_and_mirrors_the_paper():
    config = load_config(PRESET.parent / "bfcl-qwen2.5-1.5b-gpu.yaml")
    assert (config.env.name, config.rollout.group_size, config.trainer.tasks_per_step) == ("bfcl", 8, 60)
    assert (config.learner.lr, config.learner.kl_coef, config.learner.mini_batch_tasks) == (1e-6, 1e-4, 20)
    assert config.learner.world_size * config.learner.gpus_per_rank + config.rollout.workers * config.rollout.worker_gpus == 2


def _leaf_paths(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaf_paths(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_docs_document_every_config_field_and_cli_flag():
    from launch import build_parser

    docs = PRESET.parents[1] / "docs"
    reference = (docs / "config.md").read_text()  # generated: python -m cluster.config_reference
    missing = [path for path in _leaf_paths(ToolRLConfig) if f"`{path}`" not in reference]
    assert not missing, f"config fields missing from docs/config.md: {missing}"
    cli = (docs / "cli.md").read_text()
    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in cli, f"launch.py {name} {flag} is not in docs/cli.md"


def test_every_preset_validates():
    presets = sorted(PRESET.parent.glob("*.yaml"))
    assert len(presets) >= 11
    for path in presets:
        load_config(path)  # a ConfigError names the file's bad field
