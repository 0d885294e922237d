"""The GPU smoke check: what a person runs first on a GPU node (about 10 minutes on one GPU).

Each check prints one line (ok / FAIL / skip, seconds, figures); the exit code is 1 if any failed, and
--out DIR/gpu_smoke.json keeps the figures. On a CPU machine the same checks run at small sizes (the
tests run it that way), and the CUDA-only parts are skipped with the reason.

1. versions: torch, vLLM, transformers, Ray, flash-attn; the device and its bf16 support.
2. checkpoint: a random model of Qwen2.5-1.5B's shape (151,936-token vocabulary; on CPU a 1-layer,
   64-wide body) written as an HF directory with the embedded default's tokenizer.
3. connect: a Learner rank joins its process group (NCCL on GPU, gloo on CPU) and runs its check collective.
4. rl_update at 1k / 4k / 8k tokens (CPU: 256 / 1k): peak memory and trained tokens/s, bf16 mixed
   precision, activation checkpointing and chunked logits on GPU.
5. weights: state_dict_for_rollout, save and load timing.
6. engine: vLLM (CUDA graphs on GPU), seeded generation twice (identical), update_weights with the
   trained weights and log-prob parity against an HF forward of them, then the starting weights back
   (the first generation again).
7. train: a 2-step ``launch.py train`` on the synth tasks with the placement group (engine and learner
   rank colocated on GPU 0), then a resume to step 3.
8. pairing (≥ 2 GPUs): the GPU preset's actors and each one's ``ray.get_gpu_ids()``.

    python benchmarks/gpu_smoke.py [--out DIR] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from learner_memory import peak_mb, qwen_vocab_model, start_peak

REPO = Path(__file__).resolve().parents[1]
ON_GPU = torch.cuda.is_available()
DTYPE = "bfloat16" if ON_GPU else "float32"
LENGTHS = (1024, 4096, 8192) if ON_GPU else (256, 1024)


class Skip(Exception):
    """A check this machine cannot run; the message says why."""


def versions(state: dict) -> dict:
    import ray
    import transformers
    import vllm

    try:
        import flash_attn
        flash = flash_attn.__version__
    except ImportError:
        flash = "not installed"
    figures = {"torch": torch.__version__, "vllm": vllm.__version__, "transformers": transformers.__version__,
               "ray": ray.__version__, "flash_attn": flash, "device": "cpu"}
    if ON_GPU:
        figures |= {"device": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
                    "bf16": torch.cuda.is_bf16_supported(), "cuda": torch.version.cuda}
    return figures


def checkpoint(state: dict) -> dict:
    state["model"] = qwen_vocab_model(Path(state["scratch"]) / "model", full_size=ON_GPU)
    config = json.loads((state["model"] / "config.json").read_text())
    return {key: config[key] for key in ("hidden_size", "num_hidden_layers", "vocab_size")}


def connect(state: dict) -> dict:
    from learner.config import LearnerConfig
    from learner.rank import Learner, free_port

    config = LearnerConfig(lr=1e-3, warmup_steps=0, gpus_per_rank=1.0 if ON_GPU else 0.0, param_dtype=DTYPE,
                           gradient_checkpointing=ON_GPU, micro_batch_size=1,
                           attn_implementation="sdpa" if ON_GPU else "eager")
    state["learner"] = learner = Learner(str(state["model"]), config)
    learner.connect("127.0.0.1", free_port())
    return {"backend": torch.distributed.get_backend(), "device": str(learner.device)}


def rl_update(state: dict) -> dict:
    import random

    from learner.batch import SequenceBatch

    learner, rng, figures = state["learner"], random.Random(0), {}
    vocab = len(learner.tokenizer)
    for length in LENGTHS:
        batch = SequenceBatch([[rng.randrange(10, vocab) for _ in range(length)] for _ in range(2)],
                              [[0] * (length // 2) + [1] * (length - length // 2)] * 2, [1.0, -1.0])
        if ON_GPU:
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated() / 2**20
        else:
            start = start_peak()
        began = time.perf_counter()
        metrics = learner.rl_update(batch, group_size=2)
        seconds = time.perf_counter() - began
        peak = torch.cuda.max_memory_allocated() / 2**20 if ON_GPU else peak_mb()
        figures[f"{length}_tokens"] = {"peak_over_start_mb": round(peak - start), "tokens_per_s": round(2 * length / seconds),
                                       "grad_norm": round(metrics["grad_norm"], 4)}
    return figures


def weights(state: dict) -> dict:
    learner = state["learner"]
    began = time.perf_counter()
    state["trained"] = {name: tensor.clone() for name, tensor in learner.state_dict_for_rollout().items()}
    gathered = time.perf_counter() - began
    directory = Path(state["scratch"]) / "checkpoint"
    began = time.perf_counter()
    learner.save(str(directory), {"step": 1})
    saved = time.perf_counter() - began
    began = time.perf_counter()
    learner.load(str(directory))
    loaded = time.perf_counter() - began
    torch.distributed.destroy_process_group()  # the engine below starts a process group of its own
    del state["learner"]
    return {"state_dict_s": round(gathered, 2), "save_s": round(saved, 2), "load_s": round(loaded, 2),
            "bytes_mb": round(sum(t.numel() * t.element_size() for t in state["trained"].values()) / 2**20)}


def engine(state: dict) -> dict:
    from safetensors.torch import load_file

    from learner.losses import sequence_logprobs
    from learner.models import load_policy
    from rollout.engine import Engine

    model = state["model"]
    llm = Engine(str(model), dtype=DTYPE, max_model_len=2048, gpu_memory_utilization=0.3)
    prompts = [[11 + i, 40 + i, 97, 310 + i] for i in range(4)]

    def sample():
        return llm.generate(prompts, max_tokens=32, stop_token_ids=[], temperature=1.0, seeds=[1, 2, 3, 4])

    first, again = sample(), sample()
    assert [g.token_ids for g in first] == [g.token_ids for g in again], "seeded generation is not reproducible"
    cast = getattr(torch, DTYPE)
    llm.update_weights({name: tensor.to(cast) for name, tensor in state["trained"].items()})
    trained = sample()
    changed = sum(a != b for g, h in zip(first, trained) for a, b in zip(g.token_ids, h.token_ids))
    assert changed, "the trained weights sample exactly what the starting weights did: no update reached the engine"
    reference, _ = load_policy(model, DTYPE, "sdpa" if ON_GPU else "eager")
    reference.load_state_dict(state["trained"], strict=False)
    reference = reference.to("cuda" if ON_GPU else "cpu")
    worst = 0.0
    for prompt, generation in zip(prompts, trained):
        ids = torch.tensor([prompt + generation.token_ids], device=reference.device)
        with torch.no_grad():
            theirs = sequence_logprobs(reference(input_ids=ids).logits.float(), ids)[0, len(prompt):]
        worst = max(worst, (theirs.cpu() - torch.tensor(generation.logprobs)).abs().max().item())
    tolerance = 0.1 if ON_GPU else 1e-3
    assert worst < tolerance, f"engine vs HF log-probs differ by {worst:.4f} (> {tolerance})"
    files = sorted(model.glob("*.safetensors"))
    llm.update_weights({name: t for f in files for name, t in load_file(f).items()})
    restored = sample()
    assert [g.token_ids for g in restored] == [g.token_ids for g in first], "starting weights did not come back"
    return {"logprob_diff_max": round(worst, 5), "tokens_changed_by_training": changed,
            "generated_tokens": sum(len(g.token_ids) for g in first)}


def train(state: dict) -> dict:
    if state["skip_train"]:
        raise Skip("--skip-train")
    run = Path(state["scratch"]) / "run"
    device = (["rollout.worker_gpus=0.5", "learner.gpus_per_rank=0.5", "rollout.dtype=bfloat16",
               "learner.param_dtype=bfloat16", "rollout.gpu_memory_utilization=0.3", "learner.attn_implementation=sdpa"]
              if ON_GPU else [])
    settings = [f"trainer.model={state['model']}", f"trainer.run_dir={run}", "trainer.eval_every=0",
                "trainer.tasks_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=48",
                "trainer.dynamic_sampling.enabled=false", *device]
    began = time.perf_counter()
    for steps, resume in ((2, "false"), (3, "true")):
        flags = [flag for setting in [*settings, f"trainer.total_steps={steps}", f"trainer.resume={resume}"]
                 for flag in ("--set", setting)]
        done = subprocess.run([sys.executable, str(REPO / "launch.py"), "train", *flags], cwd=REPO,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"launch.py train exited {done.returncode}: {done.stderr[-1500:]}"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], f"metrics.jsonl has steps {steps}, not 1, 2, 3"
    return {"seconds_for_3_steps": round(time.perf_counter() - began, 1)}


def pairing(state: dict) -> dict:
    if not ON_GPU or torch.cuda.device_count() < 2:
        raise Skip("needs 2 or more GPUs")
    from cluster.config import load_config
    from cluster.local import init_ray
    from cluster.placement import start_actors

    init_ray()
    config = load_config(REPO / "configs" / "bfcl-qwen2.5-1.5b-gpu.yaml",
                         [f"trainer.model={state['model']}", "rollout.max_total_tokens=4096"])
    pool, learners, placement = start_actors(config, str(state["model"]))
    try:
        engines, ranks = pool.gpu_ids(), learners.gpu_ids()
    finally:
        pool.close()
        learners.close()
        placement.remove()
    assert engines == ranks and len({ids[0] for ids in engines}) == len(engines), (engines, ranks)
    return {"engine_gpus": engines, "learner_gpus": ranks}


CHECKS = [versions, checkpoint, connect, rl_update, weights, engine, train, pairing]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for gpu_smoke.json (default: a temporary one, printed)")
    parser.add_argument("--skip-train", action="store_true", help="leave out the 2-step launch.py train check")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-smoke-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results, failed = {}, False
    with tempfile.TemporaryDirectory() as scratch:
        state = {"scratch": scratch, "skip_train": args.skip_train}
        for check in CHECKS:
            began = time.perf_counter()
            try:
                figures = check(state)
                status = "ok"
            except Skip as reason:
                figures, status = {"reason": str(reason)}, "skip"
            except Exception as error:  # noqa: BLE001 - every failure is reported, the later checks still run
                figures, status, failed = {"error": f"{type(error).__name__}: {error}"}, "FAIL", True
                traceback.print_exc()
            seconds = time.perf_counter() - began
            results[check.__name__] = {"status": status, "seconds": round(seconds, 1), **figures}
            print(f"{status:4s} {check.__name__:10s} {seconds:6.1f} s  {json.dumps(figures)}", flush=True)
            if status == "FAIL" and check.__name__ in ("checkpoint", "connect"):
                break  # nothing after them can run
    (out / "gpu_smoke.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / 'gpu_smoke.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
