"""toolrl against TRL's GRPOTrainer on the same model, prompts and batch, the two sides alternating.

Both sides: the embedded default policy, the first --prompts synth/train prompts rendered as toolrl renders
them, --group samples each, --new-tokens new tokens, T 1, fp32, eager attention, this process's threads.
Each figure is measured --pairs times, toolrl then TRL, and printed as min / median / max of the ratios
toolrl / TRL of one pair (a shared machine moves absolute rates by 2-5x; a pair's ratio moves far less).

- generation tok/s: toolrl's engine (the RolloutWorker's vLLM engine, one batched call, a seed per
  episode) against TRL's HF ``generate`` path (``GRPOTrainer._generate``, use_vllm=False) and against
  vLLM's own ``LLM.generate`` without seeds as TRL's colocate mode calls it (TRL cannot train that way on
  CPU: its weight sync needs a CUDA process group).
- update: one optimizer step on the same batch (TRL's completions and advantages, loss_type dapo =
  toolrl's token-mean, no KL, no entropy term): ``Learner.rl_update`` against TRL's ``compute_loss``,
  backward, clipping and AdamW step. The two must agree on the loss and the gradient norm (checked).
- whole step tokens/s: generation and update of the same batch, toolrl's engine path against TRL's HF path.

    pip install -e ".[cpu,dev,bench]" torch==2.13.0 && python benchmarks/vs_trl.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from learner.batch import SequenceBatch
from learner.config import LearnerConfig
from learner.models import DEFAULT_POLICY, load_policy
from learner.rank import Learner, free_port
from rollout.config import RewardConfig, RolloutConfig
from rollout.engine import Engine
from rollout.envs import load_tasks
from rollout.worker import TokenEpisode, group_requests


def rendered_prompts(tokenizer, count: int, new_tokens: int) -> list[list[int]]:
    config = RolloutConfig(max_new_tokens=new_tokens)
    tasks = load_tasks("synth", "train", limit=count)
    return [TokenEpisode(requests[0], tokenizer, config, RewardConfig()).token_ids
            for requests in group_requests(tasks, 1, seed=0)]


def trl_trainer(tokenizer, prompts: list[str], group: int, new_tokens: int, out_dir: str, **options):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, _ = load_policy(DEFAULT_POLICY)

    def reward(completions, **_):  # any spread of rewards: the update is what is compared, not the task
        return [len(text) % 7 / 6 for text in completions]

    args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=len(prompts) * group, num_generations=group,
                      max_completion_length=new_tokens, temperature=1.0, beta=0.0, loss_type="dapo",
                      epsilon=0.2, learning_rate=1e-5, max_grad_norm=1.0, use_cpu=True, bf16=False,
                      report_to=[], logging_steps=1, **options)
    return GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                       train_dataset=Dataset.from_dict({"prompt": prompts}))


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def ratios(ours: list[float], theirs: list[float]) -> str:
    values = sorted(a / b for a, b in zip(ours, theirs))
    return f"{values[0]:.2f} / {statistics.median(values):.2f} / {values[-1]:.2f}"


def spread(values: list[float]) -> str:
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="synth/train prompts (default 4)")
    parser.add_argument("--group", type=int, default=8, help="samples per prompt, G (default 8)")
    parser.add_argument("--new-tokens", type=int, default=192, help="new tokens per sample (default 192)")
    parser.add_argument("--pairs", type=int, default=3, help="alternating measurements per figure (default 3)")
    args = parser.parse_args()
    _, tokenizer = load_policy(DEFAULT_POLICY)
    prompt_ids = rendered_prompts(tokenizer, args.prompts, args.new_tokens)
    texts = [tokenizer.decode(ids) for ids in prompt_ids]
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    scratch = tempfile.mkdtemp(prefix="toolrl-vs-trl-")
    hf = trl_trainer(tokenizer, texts, args.group, args.new_tokens, scratch)
    trl_prompts = [text for text in texts for _ in range(args.group)]  # as TRL's sampler repeats them
    if hf._tokenize_prompts(trl_prompts[:: args.group])[0] != prompt_ids:
        raise SystemExit("TRL tokenizes the rendered prompts differently: the two sides would not see one batch")
    requests = [ids for ids in prompt_ids for _ in range(args.group)]
    learner_config = LearnerConfig(lr=1e-5, mini_batch_tasks=0, micro_batch_size=len(requests), entropy_coef=0.0,
                                   warmup_steps=0, clip_low=0.2, clip_high=0.2, aggregation="token-mean")
    learner = Learner(str(DEFAULT_POLICY), learner_config)
    learner.connect("127.0.0.1", free_port())  # first: the in-process engine then joins its process group
    engine = Engine(str(DEFAULT_POLICY), max_model_len=2048)

    def ours_generate() -> int:
        out = engine.generate(requests, max_tokens=args.new_tokens, stop_token_ids=end, seeds=list(range(len(requests))))
        return sum(len(g.token_ids) for g in out)

    def vllm_unseeded() -> int:
        out = engine.generate(requests, max_tokens=args.new_tokens, stop_token_ids=end)
        return sum(len(g.token_ids) for g in out)

    def trl_generate() -> int:
        _, completion_ids, *_ = hf._generate(trl_prompts)
        return sum(len(ids) for ids in completion_ids)

    def trl_batch() -> tuple[dict, SequenceBatch]:
        inputs = hf._generate_and_score_completions([{"prompt": p} for p in trl_prompts])
        ids, masks = [], []
        for prompt, prompt_mask, completion, completion_mask in zip(
                inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"]):
            kept_prompt, kept = prompt[prompt_mask.bool()].tolist(), completion[completion_mask.bool()].tolist()
            ids.append(kept_prompt + kept)
            masks.append([0] * len(kept_prompt) + [1] * len(kept))
        return inputs, SequenceBatch(ids, masks, inputs["advantages"].tolist())

    def trl_update(inputs: dict) -> tuple[float, float]:
        hf.optimizer.zero_grad()
        loss = hf.compute_loss(hf.model, inputs)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(hf.model.parameters(), hf.args.max_grad_norm)
        hf.optimizer.step()
        return float(loss), float(norm)

    hf.model.train()
    hf.current_gradient_accumulation_steps = 1  # what Trainer.train sets for the loss's normaliser
    timings = {name: [] for name in ("ours_gen", "vllm_gen", "trl_gen", "ours_update", "trl_update")}
    tokens = {name: [] for name in ("ours_gen", "vllm_gen", "trl_gen", "trained")}
    checks = []
    ours_generate(), trl_generate()  # warm-up of both generation paths
    for _ in range(args.pairs):
        for name, function in (("ours_gen", ours_generate), ("vllm_gen", vllm_unseeded)):
            count, seconds = timed(function)
            timings[name].append(seconds)
            tokens[name].append(count)
        count, seconds = timed(trl_generate)
        timings["trl_gen"].append(seconds)
        tokens["trl_gen"].append(count)
        inputs, batch = trl_batch()
        learner.start(learner_config, seed=0)  # both sides from the model files, every pair
        hf.model.load_state_dict(load_policy(DEFAULT_POLICY)[0].state_dict())
        hf.optimizer = hf.lr_scheduler = None
        hf.create_optimizer_and_scheduler(num_training_steps=1)
        metrics, seconds = timed(learner.rl_update, batch, args.group)
        timings["ours_update"].append(seconds)
        (loss, norm), seconds = timed(trl_update, inputs)
        timings["trl_update"].append(seconds)
        tokens["trained"].append(batch.tokens())
        checks.append((metrics["pg_loss"], loss, metrics["grad_norm"], norm))

    rate = {name: [t / s for t, s in zip(tokens[name], timings[name])] for name in ("ours_gen", "vllm_gen", "trl_gen")}
    update = {side: [t / s for t, s in zip(tokens["trained"], timings[f"{side}_update"])] for side in ("ours", "trl")}
    whole = {"ours": [t / (g + u) for t, g, u in zip(tokens["trained"], timings["ours_gen"], timings["ours_update"])],
             "trl": [t / (g + u) for t, g, u in zip(tokens["trained"], timings["trl_gen"], timings["trl_update"])]}
    print(f"{args.prompts} prompts x G {args.group}, {args.new_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"{args.pairs} alternating pairs; min / median / max")
    print(f"{'figure':<58} {'toolrl':>22} {'TRL':>22} {'ratio':>18}")
    rows = [("generation tok/s vs TRL's HF generate path", rate["ours_gen"], rate["trl_gen"]),
            ("generation tok/s vs vLLM unseeded (TRL's colocate call)", rate["ours_gen"], rate["vllm_gen"]),
            ("one optimizer step, trained tok/s", update["ours"], update["trl"]),
            ("whole step (generation + update), trained tok/s", whole["ours"], whole["trl"])]
    for label, ours, theirs in rows:
        print(f"{label:<58} {spread(ours):>22} {spread(theirs):>22} {ratios(ours, theirs):>18}")
    for ours_loss, trl_loss, ours_norm, trl_norm in checks:
        print(f"same batch: loss toolrl {ours_loss:.6f} TRL {trl_loss:.6f}, grad norm toolrl {ours_norm:.6f} "
              f"TRL {trl_norm:.6f}")
        if abs(ours_loss - trl_loss) > 1e-4 or abs(ours_norm - trl_norm) > 1e-3 * max(trl_norm, 1e-6):
            raise SystemExit("the two updates disagree: the comparison is not of the same computation")


if __name__ == "__main__":
    main()
