"""Models: loading any local HF causal LM (no model hub is ever contacted), writing model directories
atomically, and where the committed default policy lives (``learner.bootstrap`` builds and trains it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from rollout.chat import load_tokenizer

CARD_NAME = "toolrl_model.json"


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A staging directory beside ``target`` that becomes ``target`` in one rename once the block succeeds.

    A crash or kill mid-write leaves at most a hidden ``.<name>.*`` directory, never a partial ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.replace(staging, target)  # refuses a non-empty target, e.g. one a concurrent writer filled
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_policy(
    path: str | os.PathLike, dtype: str = "float32", attn_implementation: str = "eager"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local HF causal LM directory as (model, tokenizer)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        problem = "does not exist" if not path.exists() else "is not a model directory (no config.json)"
        raise ValueError(f"model path {str(path)!r} {problem}")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation, local_files_only=True
    )
    return model, load_tokenizer(path)


DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "assets" / "default-policy"
BASE_POLICY = DEFAULT_POLICY.with_name("base-policy")  # the first bootstrap stage, the default's init


def default_policy() -> Path:
    """The committed embedded default policy (trained ahead of time by ``launch.py bootstrap``)."""
    if not (DEFAULT_POLICY / "config.json").is_file():
        raise ValueError(f"the embedded default policy is missing at {DEFAULT_POLICY}; "
                         "restore it from git or run `python launch.py bootstrap`")
    return DEFAULT_POLICY


def resolve_model(model: str) -> str:
    """The model directory a config's or the CLI's model names: ``default`` is the committed default policy."""
    return str(default_policy() if model == "default" else model)
