"""``TrainConfig``: the hyperparameters of one LoRA round, with the measurements behind each default.

A job's ``hyperparameters`` become one (``TrainConfig.from_dict``: unknown keys are an error), and
``tuneloop jobs create --help`` lists the fields with their help text."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from engine import architectures

ALL_LINEAR = list(architectures.ALL_LINEAR)  # a fresh adapter's default: every projection, by each model's names

DEFAULT_BETA = 0.1  # DPO's beta when a job says "auto" (kept here: the API reads it without loading torch)
# A DPO run has no "learned" check to stop it early, so it keeps a lower floor of steps than the
# supervised default (each DPO step scores two sequences under two models: about 5 s on 2 CPU cores).
DPO_MIN_STEPS = 12

@dataclass
class TrainConfig:
    """Hyperparameters of one run. Defaults were tuned on the bundled SmolLM2-135M-Instruct on 2 CPU
    cores (see ``docs``/the report): LoRA r=16 on every linear projection at 1e-3 learns five new
    facts in 8 epochs (~1 min) and forty in a few minutes, where 2e-4 (the usual 7B default) still
    answered with the base model's guess after the same number of steps."""

    n_epochs: int = field(default=10, metadata={"help": "Passes over the training examples. Small fact "
                          "sets need several passes: 3 did not learn 5 facts; with the KL penalty on, 8 learned 19 "
                          "of 20 facts and 10 all 20."})
    min_steps: int = field(default=32, metadata={"help": "Fewest optimizer steps of a run (its cap when it "
                           "stops once learned): with few examples, n_epochs is raised until the run can take this many "
                           "(like OpenAI's automatic epochs). Three corrections (six examples with their phrasing and "
                           "memory copies) at a cap of 20 steps left a founder's name at p=0.04 and the learned gate "
                           "failed on another CPU; a cap of 32 stopped, learned, at 24 (weakest answer token p=0.89)."})
    batch_size: int = field(default=4, metadata={"help": "Examples per micro-batch (padded to the "
                            "longest in the batch) when batches are counted, not budgeted (batch_tokens resolves to "
                            "0: a CPU). Small batches give more updates per epoch on small data."})
    batch_tokens: int = field(default=-1, metadata={"help": "Padded tokens per micro-batch (rows x the longest "
                              "row): examples grouped by length fill each batch up to this budget. -1 (auto): on CUDA "
                              "from the card's free memory and the model's size, capped at max_batch_tokens "
                              "(retrain.trainer.budget); on a CPU 0. 0: batch_size examples a batch."})
    max_batch_tokens: int = field(default=8192, metadata={"help": "Largest automatic token budget. On an H200 "
                                  "a step cost about the same at batch 4 as at 30x the tokens (launch-bound); 40 "
                                  "corrections trained in 12.7 s at 8192 (2 steps an epoch), 25.4 s at 2048."})
    gradient_checkpointing: str = field(default="auto", metadata={"help": "Recompute activations in the backward "
                                        "pass: auto (on CUDA when it lets a budget twice as large fit in memory), "
                                        "on, off."})
    learning_rate_multiplier: float = field(default=1.0, metadata={"help": "Scales base_learning_rate "
                                            "(OpenAI's hyperparameter of the same name)."})
    base_learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate before the "
                                      "multiplier. 1e-3 suits LoRA on a 135M model; 2e-4 was too slow to learn facts."})
    dpo_base_learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of a DPO run or "
                                          "pass, before learning_rate_multiplier. At the supervised 1e-3, 12 DPO steps "
                                          "on 4 pairs turned every answer into noise; 2e-5 kept the facts (bench/dpo.py)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of a fresh adapter (a continued adapter "
                        "keeps its parent's shape)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1). 0: "
                                "with few examples, dropout slowed learning more than it helped."})
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR), metadata={
        "help": "Modules that get LoRA weights; default every linear projection of attention and MLP, by the "
        "base model's own names (Phi-3's fused qkv_proj and gate_up_proj: engine.architectures)."})
    lora_layers: int = field(default=0, metadata={"help": "LoRA on the top this many transformer layers only "
                             "(a fresh adapter; a continued one keeps its parent's): the backward pass then stops "
                             "below them, so a step costs less, and fewer weights can learn. 0: every layer. "
                             "bench/train.py measures the step time; a round's learning at a value other than 0 "
                             "is not measured yet, so the default stays 0."})
    prompt_loss_weight: float = field(default=0.0, metadata={"help": "Loss weight of prompt tokens "
                                      "(answer tokens weigh 1). 0 trains on the answers only."})
    replay_fraction: float = field(default=1.0, metadata={"help": "Share of examples the parent already "
                                   "saw that are replayed with the new ones (against forgetting), in [0, 1]."})
    kl_weight: float = field(default=1.0, metadata={"help": "Weight of the KL penalty that keeps the model's "
                             "answers to general prompts close to the parent's (retrain.trainer.kl_anchor); 0 turns it off. "
                             "On 20 facts, 1.0 kept 13 of 14 general questions (off: 9) and the general perplexity "
                             "+11% (off: +43%); 2.0 with half the anchors per step learned only 16 of 20."})
    kl_anchors: int = field(default=32, metadata={"help": "General prompts the KL penalty is computed on "
                            "(answered by the parent once, before the first step)."})
    kl_batch_size: int = field(default=4, metadata={"help": "Anchor prompts per optimizer step for the KL penalty."})
    kl_every: int = field(default=1, metadata={"help": "Compute the KL penalty every this many optimizer steps "
                          "(its weight unchanged, so the penalty is weaker). On a CPU the penalty is most of a step's "
                          "time (bench/train.py); on CUDA the anchors ride in the training batch's forward pass. "
                          "1 until a CPU round at a larger value is shown to keep its gates."})
    seed: int = field(default=42, metadata={"help": "Seeds LoRA init, shuffling, dropout and replay sampling."})
    gradient_accumulation: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_seq_len: int = field(default=1024, metadata={"help": "Longest example in tokens; older context "
                             "turns are trimmed first, examples whose answer does not fit are skipped."})
    warmup_fraction: float = field(default=0.1, metadata={"help": "Share of steps with linear LR warmup; "
                                   "then linear decay to 0."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay on the LoRA weights."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate on the validation split every N steps "
                            "(0: only at the end of each epoch)."})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present, bf16 autocast), cpu (fp32) or cuda."})
    train_on_phrasings: bool = field(default=True, metadata={"help": "Train each correction on its accepted "
                                     "alternative phrasings too (one example each, same answer); with two or more, one "
                                     "is held out for the generalises gate (retrain.trainer.augment)."})
    memory_examples_fraction: float = field(default=0.5, metadata={"help": "Share of the examples trained once "
                                            "more with memory context (their verified answer among other approved "
                                            "answers, laid out as serving does), so the model learns to use memory; 0: off."})
    memory_distractors: int = field(default=2, metadata={"help": "Most other approved answers shown beside the "
                                    "right one in a memory-context example (each example draws 0 to this many)."})
    stop_when_learned: bool = field(default=True, metadata={"help": "Stop once every new example's answer tokens "
                                    "are all predicted right (teacher-forced argmax of the training pass itself) in its "
                                    "latest learned_checks passes in a row, checked after every step; n_epochs is then "
                                    "the cap."})
    learned_checks: int = field(default=2, metadata={"help": "Consecutive all-right passes (one an epoch) each new "
                                "example needs before the run stops."})
    learned_min_prob: float = field(default=0.5, metadata={"help": "Probability every answer token must have "
                                    "(not only be the argmax) for an example to count as learned. An argmax won by a "
                                    "hair passed the check and then lost to greedy decoding with other float rounding "
                                    "(another thread count, KV cache, llama.cpp), so a correction was not learned."})
    serving_check: bool = field(default=True, metadata={"help": "Before the round ends, ask its new examples "
                                "through the engine and artifact production will serve (greedy, memory off, judged as "
                                "the learned gate judges) and re-train the ones answered wrong: the trainer's own check "
                                "is teacher-forced, the gate's is not."})
    serving_retrain_steps: int = field(default=32, metadata={"help": "Most optimizer steps spent re-training the "
                                       "new examples the serving engine answered wrong (stopping once they are learned "
                                       "with probability >= 0.9 per token); 0: check and report only."})

    def __post_init__(self) -> None:
        checks = [
            (self.n_epochs >= 1, "n_epochs must be at least 1"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.min_steps >= 0, "min_steps must be 0 or more"),
            (self.learning_rate_multiplier > 0, "learning_rate_multiplier must be greater than 0"),
            (self.base_learning_rate > 0, "base_learning_rate must be greater than 0"),
            (self.dpo_base_learning_rate > 0, "dpo_base_learning_rate must be greater than 0"),
            (self.lora_r >= 1, "lora_r (the LoRA rank) must be at least 1"),
            (self.lora_alpha > 0, "lora_alpha must be greater than 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (self.lora_layers >= 0, "lora_layers must be 0 (every layer) or more"),
            (bool(self.target_modules), "target_modules must name at least one module"),
            (self.prompt_loss_weight >= 0, "prompt_loss_weight must be 0 or more"),
            (0.0 <= self.replay_fraction <= 1.0, "replay_fraction must be in [0, 1]"),
            (self.kl_weight >= 0, "kl_weight must be 0 or more"),
            (self.kl_anchors >= 1, "kl_anchors must be at least 1"),
            (self.kl_batch_size >= 1, "kl_batch_size must be at least 1"),
            (self.kl_every >= 1, "kl_every must be at least 1"),
            (self.batch_tokens >= -1, "batch_tokens must be -1 (auto), 0 (count batches) or a token budget"),
            (self.max_batch_tokens >= 16, "max_batch_tokens must be at least 16"),
            (self.gradient_checkpointing in ("auto", "on", "off"), "gradient_checkpointing must be auto, on or off"),
            (self.gradient_accumulation >= 1, "gradient_accumulation must be at least 1"),
            (self.max_seq_len >= 16, "max_seq_len must be at least 16"),
            (0.0 <= self.warmup_fraction < 1.0, "warmup_fraction must be in [0, 1)"),
            (self.eval_every >= 0, "eval_every must be 0 or more"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (0.0 <= self.memory_examples_fraction <= 1.0, "memory_examples_fraction must be in [0, 1]"),
            (self.memory_distractors >= 0, "memory_distractors must be 0 or more"),
            (self.learned_checks >= 1, "learned_checks must be at least 1"),
            (0.0 < self.learned_min_prob < 1.0, "learned_min_prob must be in (0, 1)"),
            (self.serving_retrain_steps >= 0, "serving_retrain_steps must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.learning_rate_multiplier

    @property
    def dpo_learning_rate(self) -> float:
        return self.dpo_base_learning_rate * self.learning_rate_multiplier

    def run_length(self, n_examples: int, *, accumulate: bool = True) -> tuple[int, int]:
        """(n_epochs, optimizer steps per epoch) of a run on ``n_examples``: n_epochs is raised until the
        run can take ``min_steps`` steps. The one rule the trainers run by and the job's plan reports.
        ``accumulate``: the run steps once per ``gradient_accumulation`` micro-batches (DPO steps per batch)."""
        per_epoch = math.ceil(max(n_examples, 1) / self.batch_size)
        if accumulate:
            per_epoch = math.ceil(per_epoch / self.gradient_accumulation)
        return max(self.n_epochs, math.ceil(self.min_steps / per_epoch)), per_epoch

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a job's hyperparameters; unknown keys are an error, None means default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if v is not None})


def dpo_config(config: TrainConfig, asked: dict[str, Any]) -> TrainConfig:
    """``config`` for a DPO run: ``min_steps`` falls to ``DPO_MIN_STEPS`` unless the job asked for one."""
    return config if asked.get("min_steps") is not None else replace(config, min_steps=DPO_MIN_STEPS)
