"""LoRA through peft, and the policy's weights as engines and checkpoints see them, with or without adapters.

Adapters are injected into the HF model before FSDP2 shards it, so the model keeps its class and names;
peft renames an adapted layer's weight to ``<layer>.base_layer.weight`` and adds
``<layer>.lora_A.default.weight`` / ``<layer>.lora_B.default.weight``. Merging works on the gathered full
state dict, because peft's own ``merge`` cannot work on FSDP2's sharded parameters.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import peft
import torch
from peft.tuners.lora import LoraLayer
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict, load_peft_weights
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from learner.config import LoraConfig

ADAPTER = "default"  # peft's adapter name, part of the parameter names in the model
PEFT_PREFIX = "base_model.model."  # what a PeftModel puts before the HF names in its adapter files
# A folder of its own: transformers (with peft installed) loads a directory holding adapter_config.json as
# base + adapter, so beside model.safetensors it would stop being an ordinary model directory.
ADAPTER_DIR = "adapter"


def add_adapters(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """Inject LoRA layers in place; afterwards only the adapter parameters require grad.

    B starts at zero (peft's init), so the merged weights start equal to the base model's.
    """
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules,
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    peft.inject_adapter_in_model(config, model)
    for name, layer in _lora_layers(model).items():
        if type(layer.get_base_layer()) is not torch.nn.Linear:  # merged_weights knows the linear case only
            raise ValueError(f"learner.lora.target_modules: {name} is not a linear layer")
    return model


def _lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


def merged_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The base model's HF-named weights with W + scale·B·A in every adapted layer (``state``: the model's
    full state dict). Without adapters it is ``state`` itself."""
    merged = {name.replace(".base_layer.", "."): tensor for name, tensor in state.items() if ".lora_" not in name}
    for name, layer in _lora_layers(model).items():
        down, up = state[f"{name}.lora_A.{ADAPTER}.weight"], state[f"{name}.lora_B.{ADAPTER}.weight"]
        merged[f"{name}.weight"] = merged[f"{name}.weight"] + layer.scaling[ADAPTER] * (up @ down)
    return merged


def save_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], directory: Path, base_model: str) -> None:
    """The merged weights as an ordinary HF model (transformers and vLLM load it) and, for an adapted model,
    the adapter in ADAPTER_DIR as ``PeftModel.save_pretrained`` writes it: resuming needs the adapter itself."""
    model.save_pretrained(directory, state_dict=merged_weights(model, state), safe_serialization=True)
    if not _lora_layers(model):
        return
    config = copy.copy(model.peft_config[ADAPTER])
    config.base_model_name_or_path = base_model  # where peft (AutoPeftModelForCausalLM) finds the base
    config.save_pretrained(str(directory / ADAPTER_DIR))
    adapter = get_peft_model_state_dict(model, state_dict=state, adapter_name=ADAPTER)
    save_file({PEFT_PREFIX + name: tensor.contiguous() for name, tensor in adapter.items()},
              str(directory / ADAPTER_DIR / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Set ``save_weights``'s weights into the (sharded) model. An adapted model takes only the adapter: its
    frozen base stays as loaded from the model path, which must be the run's base model (not a LoRA
    checkpoint, whose model.safetensors holds merged weights)."""
    adapted = bool(_lora_layers(model))
    if adapted:
        weights = {re.sub(r"\.(lora_[AB])\.weight$", rf".\1.{ADAPTER}.weight", name.removeprefix(PEFT_PREFIX)): t
                   for name, t in load_peft_weights(str(directory / ADAPTER_DIR), device="cpu").items()}
    else:
        weights = load_file(directory / "model.safetensors")
        if "lm_head.weight" not in weights and model.config.tie_word_embeddings:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    # not strict with an adapter, which sets a part of the model; but all of the adapter, and nothing else
    result = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=not adapted))
    if result.unexpected_keys or any(".lora_" in name for name in result.missing_keys):
        raise ValueError(f"{directory}: the adapter does not fit learner.lora (mismatched: "
                         f"{sorted(result.unexpected_keys)[:3] or sorted(result.missing_keys)[:3]})")
