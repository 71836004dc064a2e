"""The one settings object. Every value can be set as an environment variable with the
``TUNELOOP_`` prefix (``TUNELOOP_DATABASE_URL=...``) or in a ``.env`` file in the working directory."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_BASE_MODEL = "bundled:smollm2-135m-instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNELOOP_", env_file=".env", extra="ignore")

    # --- storage -------------------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Where the SQLite file, model store and datasets live.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under data_dir.")

    # --- serving -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    base_model: str = Field(
        BUNDLED_BASE_MODEL,
        description="The bundled SmolLM2 (default) or a path to a local Hugging Face model directory.",
    )
    production_alias: str = Field("tuneloop", description="Model name that always means the production version.")
    serving_backend: Literal["llamacpp", "transformers", "local", "upstream"] = Field(
        "llamacpp", validation_alias=AliasChoices("TUNELOOP_ENGINE", "TUNELOOP_SERVING_BACKEND", "serving_backend"),
        description="Which engine answers (TUNELOOP_ENGINE): llamacpp (default on a CPU: each version's GGUF), "
                    "transformers (local = the same; training and perplexity always use it), upstream (vLLM or any "
                    "OpenAI-compatible server).")
    gguf_quantization: Literal["F32", "F16", "Q8_0", "Q4_1"] = Field(
        "Q8_0", description="Weights of the GGUF written for each trained version (the bundled base is served "
                            "from its shipped Q4_1 file).")
    llamacpp_context_tokens: int = Field(8192, ge=512, description="KV cache of the llama.cpp engine, shared by "
                                                                   "the chats it decodes together.")
    llamacpp_kv_cache_type: Literal["auto", "f16", "q8_0"] = Field(
        "auto", description="Precision of the llama.cpp KV cache. q8_0 (with flash attention) halves its memory "
        "(~85 MB at 8192 cells) and answered the gate questions as close to transformers as f16 "
        "(bench/gguf_artifact.py); auto: q8_0 where the model's attention heads allow it (a multiple of 32 wide), "
        "else f16.")
    llamacpp_threads: int = Field(0, ge=0, description="CPU threads for llama.cpp (0: all cores).")
    llamacpp_gpu_layers: Literal["auto"] | int = Field(
        "auto", description="Layers llama.cpp offloads to the GPU. auto: all of them when llama-cpp-python was built "
        "with GPU offload (CUDA, Metal, Vulkan: llama_supports_gpu_offload()), else 0; a number: that many "
        "(0: decode on the CPU). See docs/deploy.md for a CUDA build.")
    llamacpp_extra_buffers: bool = Field(
        False, description="Let llama.cpp repack weights into its CPU-specific layouts (AMX, AVX-512 tiles). Off: on "
        "a Xeon that reports AMX inside a VM that does not enable it, llama.cpp's native build crashed (SIGSEGV in "
        "ggml_backend_amx_mul_mat) on the first prompt longer than a few tokens. Turn on where AMX works.")
    upstream_base_url: str = Field("", description="OpenAI-compatible server used when serving_backend=upstream.")
    upstream_api_key: str = "not-needed"
    upstream_model: str = Field("", description="Upstream model name for the base version (v0) and LoRA versions "
                                "when upstream_lora_loading is off.")
    upstream_lora_loading: bool = Field(
        False, description="The upstream is vLLM started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: "
        "each LoRA version is loaded into it (POST /v1/load_lora_adapter) before it serves, and asked for by name.")
    upstream_model_store_dir: str = Field(
        "", description="The model store (data_dir/models) as the upstream server sees it, e.g. /data/models in "
        "compose; empty: the same absolute path as here.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 (fastest on CPU and GPU here), float32 where bf16 is unsupported."
    )
    max_batch_size: int = Field(8, ge=1, le=64, description="Concurrent chats decoded together in one batch.")
    context_budget: int = Field(2048, ge=128, description="Tokens of prompt + answer kept; oldest turns trimmed first.")
    version_poll_seconds: float = Field(2.0, gt=0, description="How often each API process checks the production pointer.")

    # --- the bot's voice -----------------------------------------------------------------------
    company_name: str = Field("", description="Your company, as the bot introduces it; `tuneloop init` asks. "
                              "Empty: the bot names no company.")
    bot_persona: str = "a friendly, concise customer-service assistant"
    company_hotline: str = Field("", description="Your published phone number: never masked as personal data.")
    company_email_domain: str = Field("", description="Your e-mail domain (example.com): never masked.")
    company_website: str = Field("", description="Your web address: never masked.")
    system_prompt: str = Field("", description="Overrides the prompt built from company_name and bot_persona.")

    # --- generation defaults -------------------------------------------------------------------
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_guard_ngram: int = Field(
        10, ge=0, description="Greedy replies (serving and gates) end before a sentence they already said, or before "
        "a run of this many tokens they already produced (engine/repetition.py); 0 turns the guard off.")

    # --- feedback ------------------------------------------------------------------------------
    allow_self_approval: bool = Field(False, description="Let one person write and approve a correction (one-person teams).")
    admin_username: str = "admin"
    admin_password: str = Field("", description="Password for the first admin; empty prints a one-time password once.")
    scrub_pii: bool = True
    pii_keep: list[str] = Field(
        default_factory=list,
        description="More published contacts of the company, besides company_hotline/_email_domain/_website: "
        "never masked as personal data.")
    include_thumbs_up: bool = Field(False, description="Use thumbs-up answers as positive training examples.")
    prompt_separator: str = "\n\n###\n\n"
    completion_stop: str = " END"
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="Largest accepted upload (data import, fine-tune files).")
    duplicate_question_threshold: float = Field(
        0.80, ge=0.0, le=1.0, description="Question similarity at which two corrections count as near-duplicates.")
    conflict_answer_threshold: float = Field(
        0.70, ge=0.0, le=1.0, description="Near-duplicate answers less similar than this (or citing other numbers) conflict.")

    # --- retraining ----------------------------------------------------------------------------
    retrain_cron: str = Field("0 3 * * *", description="When the scheduler considers retraining (cron, worker's local time).")
    retrain_min_new_examples: int = Field(20, ge=1)
    retrain_method: Literal["supervised", "supervised_then_dpo"] = Field(
        "supervised",
        description="What a scheduled round (and train-now) trains: supervised on the snapshot, or supervised "
                    "and then, in the same job, a DPO pass on the preference pairs of the snapshot's corrections "
                    "(the disliked answer against its approved correction). One adapter either way.")
    validation_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of correction lineages a snapshot holds out as its validation split (e.g. 0.2). "
        "Default 0: every approved correction is trained on, because a held-out correction is a fact the bot "
        "never learns; the learned gate checks each one instead. Set it to measure held-out validation loss.")
    replay_fraction: float = Field(1.0, ge=0.0, le=1.0, description="Share of earlier approved examples replayed each round.")
    max_train_epochs: int = Field(100, ge=1, description="Most n_epochs a fine-tuning job may ask for (400 past it).")
    max_train_steps: int = Field(10_000, ge=1, description="Most min_steps a fine-tuning job may ask for (400 past it).")
    max_queued_jobs_per_account: int = Field(
        3, ge=1, description="Jobs one account may have waiting or running at once; more are refused with 429.")
    openai_finetune_base_url: str = Field("", description="Hosted fine-tuning service (OpenAI or compatible).")
    openai_finetune_api_key: str = ""
    openai_finetune_base_model: str = "gpt-4.1-mini-2025-04-14"

    # --- gates and promotion -------------------------------------------------------------------
    gate_similarity_threshold: float = Field(0.75, ge=0.0, le=1.0)
    gate_forgetting_margin: float = Field(0.05, ge=0.0, le=1.0)
    gate_general_margin: float = Field(0.10, ge=0.0, le=1.0)
    gate_general_significance: float = Field(
        0.05, gt=0.0, le=1.0,
        description="The general gate fails only when the drop beyond the margin is significant: a one-sided "
        "sign test on the questions one version gets right and the other wrong gives p below this. "
        "1.0 turns the test off (the margin alone decides).")
    gate_perplexity_margin: float = Field(
        0.25, ge=0.0,
        description="Allowed relative perplexity increase on the general text. Measured: a round that learned 3 "
        "corrections and kept every general question raised it by 19%; one that overfit them (24 steps) by 210%.")
    auto_promote: bool = False
    gate_learned_min_pass_rate: float = Field(
        0.95, ge=0.0, le=1.0, description="Share of the new corrections the candidate must answer correctly with memory "
        "off. Not 1.0: training stops only once every new answer is predicted token for token, so a miss is a "
        "near-tie flipped by serving's bfloat16 or the repetition guard, and serving still has the approved answer "
        "in correction memory; one miss in 40 rejected the whole round (docs/gates.md).")
    gate_generalises_min_pass_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the new corrections' held-out phrasings (never trained on) the "
        "candidate must answer correctly with memory off (the generalises gate).")
    gate_max_tokens: int = Field(96, ge=8, description="Longest answer generated per gate question (tokens).")

    # --- correction memory ---------------------------------------------------------------------
    memory_enabled: bool = Field(True, description="Correction memory at all (verified, handoff and grounded replies).")
    memory_verified_enabled: bool = Field(
        True, description="Reply with an approved answer itself when answer selection is confident it is the right one.")
    memory_verified_probability: float = Field(
        0.95, ge=0.0, le=1.0,
        description="Probability (the answer selector's, feedback.memory.selection) at or above which the best "
        "candidate is the reply. Chosen on three knowledge bases (docs/memory.md); refit the selector on your own "
        "data with `tuneloop memory calibrate`.")
    memory_answer_scoring: bool = Field(
        True, description="Let the served weights score the candidate answers (answer selection); off: retrieval "
        "alone decides, a little faster and less accurate (bench/selection.py measures both).")
    memory_candidates: int = Field(
        3, ge=1, le=20, description="Best retrieved corrections the served model scores for each turn (each costs "
        "its answer's tokens in prompt evaluation; bench/selection.py --latency).")
    memory_scored_answer_tokens: int = Field(
        16, ge=1, le=512, description="Leading tokens of each candidate answer the served model scores: what tells "
        "two approved answers apart comes early, and each token is prompt evaluation on every turn.")
    memory_clarify_enabled: bool = Field(
        True, description="When one approved answer is likely but not certain (probability at or above "
        "memory_clarify_probability), ask the customer whether they mean its approved question; yes gets that "
        "answer verified, no the next questions found (memory_clarify_after_no_score) or a handoff. Off (or "
        "memory_verified_enabled off): such turns are handed off.")
    memory_clarify_probability: float = Field(
        0.4, ge=0.0, le=1.0,
        description="Selector probability at or above which the best candidate is offered as a clarifying question "
        "(below memory_verified_probability). Chosen on three knowledge bases (docs/memory.md).")
    memory_clarify_reply: str = Field(
        'Do you mean "{question}"? Please reply yes or no.',
        min_length=1, max_length=1000,
        description="The clarifying question; {question} is replaced by the approved question offered (exactly once).")
    memory_clarify_choices: int = Field(
        3, ge=1, le=5,
        description="When a question is about the company but no single approved answer reaches "
        "memory_clarify_probability, offer up to this many approved questions whose probability is at least "
        "memory_clarify_choice_probability as a numbered list; the customer picks one by its number or says no "
        "(memory_clarify_after_no_score). "
        "1: offer only single questions.")
    memory_clarify_after_no_score: float = Field(
        0.35, ge=0.0, le=1.0,
        description="After a customer's no to the question or list offered, the next approved questions whose "
        "retrieval score for their question is at least this are listed (up to memory_clarify_choices), once; "
        "none found, or a no to that list: a handoff. Chosen on three knowledge bases (docs/memory.md): lower "
        "lists more uncovered questions back, each costing its customer one more turn before the handoff.")
    memory_clarify_choice_probability: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Selector probability at or above which a candidate is listed in a numbered clarifying "
        "question (0: every candidate, in the selector's order). Chosen on three knowledge bases "
        "(docs/memory.md): higher lists fewer uncovered questions back, and leaves out more customers' own.")
    memory_clarify_choices_reply: str = Field(
        "I want to be sure I answer the right question. Do you mean one of these?\n{choices}\nPlease reply with "
        "its number, or no if none of them is your question.",
        min_length=1, max_length=1000,
        description="The clarifying question offering several approved questions; {choices} is replaced by them as "
        "a numbered list (exactly once, after some text of its own).")
    memory_handoff_enabled: bool = Field(
        True, description="A question about the company that no approved answer covers with confidence gets "
        "memory_handoff_reply and tops the review queue, instead of a reply the model would have to guess.")
    memory_handoff_reply: str = Field(
        "I'm not sure about that, so I've passed your question to our team. Please check back later, or contact "
        "us directly if it is urgent.",
        min_length=1, max_length=1000, description="The honest reply of a handed-off turn.")
    memory_topic_threshold: float = Field(
        0.05, ge=-1.0, le=1.0,
        description="Margin (feedback.memory.topic: best similarity to questions customers ask a company minus best "
        "to small talk and general questions) at or above which a question is about the company: handed off when "
        "no answer is selected; below it the model answers alone.")
    memory_grounded_enabled: bool = Field(
        False, description="Give plausible approved answers to the model as context where none was selected, "
        "instead of handing off. Off by default: the 135M model mixed facts of two answers (docs/memory.md).")
    memory_verified_threshold: float = Field(
        0.55, ge=0.0, le=1.0,
        description="Retrieval score a generated phrasing suggestion needs for its own correction "
        "(feedback.phrasings).")
    memory_verified_margin: float = Field(
        0.05, ge=0.0, le=1.0, description="How far a generated phrasing must score ahead of the runner-up correction.")
    memory_threshold: float = Field(
        0.40, ge=0.0, le=1.0,
        description="Combined score at or above which an approved correction is given to the model as context "
        "(grounded). Up to memory_max_hits candidates are passed and the model picks.",
    )
    memory_max_hits: int = Field(3, ge=1, le=10)
    memory_lexical_weight: float = Field(
        0.10, ge=0.0, le=1.0, description="Share of the BM25 (bm25s) score in the combined score; the rest is dense.")
    memory_answer_weight: float = Field(
        0.45, ge=0.0, le=1.0, description="Share of the answer's dense similarity in the dense part. Measured on the "
        "acme KB: ranking by question alone puts the right correction first for 74% of held-out rewordings, "
        "with the answer at 0.45 for 86%.")
    memory_followup_max_words: int = Field(
        8, ge=0, description="A user turn after earlier turns this short that leans on them (it, that, and ...) "
        "is a follow-up: never answered verified.")

    # --- distillation (teacher) ----------------------------------------------------------------
    teacher_base_url: str = Field(
        "", description="OpenAI-compatible server of the teacher model (e.g. https://api.openai.com/v1 or a vLLM "
        "server); empty: this tuneloop server's own production model at http://host:port/v1, a weak last resort.")
    teacher_api_key: str = ""
    teacher_model: str = Field("", description="The teacher's model name; empty only with the own-server fallback.")
    teacher_price_per_million_input_tokens: float = Field(0.0, ge=0.0, description="USD; 0 = cost unknown.")
    teacher_price_per_million_output_tokens: float = Field(0.0, ge=0.0, description="USD; 0 = cost unknown.")
    teacher_max_retries: int = Field(4, ge=0, le=10, description="Retries (with backoff) on 429, 5xx and lost connections.")
    distill_paraphrases_per_correction: int = Field(
        0, ge=0, le=20, description="Paraphrases `tuneloop distill paraphrase` writes per approved correction; 0 = off.")
    distill_auto_approve_paraphrases: bool = Field(
        False, description="Approve paraphrases of already approved corrections on arrival (audited) instead of queueing them.")
    distill_max_tokens_budget: int = Field(
        200_000, ge=0, description="Teacher tokens (prompt + completion) one distillation run may spend; 0 = no limit.")

    # --- operations ----------------------------------------------------------------------------
    log_format: Literal["json", "text"] = Field("text", description="json: one JSON object per line with the request id.")
    log_level: str = "INFO"
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    rate_limit_per_minute: float = Field(
        60.0, ge=0.0, description="Sustained requests per client (API key or IP) on public chat/rating routes; 0 = off."
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a client may send at once before the limit applies.")
    rate_limit_paths: list[str] = Field(
        default_factory=lambda: ["/v1/chat/completions", "/v1/messages/*/rating", "/gradio_api/queue/join",
                                 "/gradio_api/call/*"],
        description="POST paths (fnmatch patterns) that count against the rate limit: the public chat API, "
        "ratings and the web chat at / (not the signed-in /staff and /admin pages).",
    )
    login_free_attempts: int = Field(5, ge=1, description="Wrong passwords per client address before sign-in "
                                     "attempts back off (1 s, 2 s, 4 s, …).")
    login_max_delay_seconds: float = Field(300.0, gt=0, description="Longest wait between sign-in attempts.")
    trusted_proxies: str = Field(
        "", description="Comma-separated addresses or networks (10.0.0.5, 10.0.0.0/8) of your load balancer or reverse "
        "proxy: only a connection from one of them may name the client with X-Forwarded-For / X-Forwarded-Proto, "
        "and that address is what the rate limit and the sign-in throttle count. Empty (default): the headers are "
        "ignored and the connection's own address counts (docs/deploy.md).")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest JSON request body; multipart uploads use max_upload_bytes."
    )
    retention_days: int = Field(365, ge=0, description="Delete conversations idle longer than this; 0 = keep forever.")
    retention_cron: str = Field("30 4 * * *", description="When the worker's scheduler purges expired conversations "
                                "(cron, worker's local time).")

    @model_validator(mode="after")
    def _check_clarify_reply(self) -> "Settings":
        if self.memory_clarify_reply.count("{question}") != 1:
            raise ValueError("memory_clarify_reply must contain {question} exactly once: it is where the approved "
                             "question offered to the customer goes")
        before = self.memory_clarify_choices_reply.split("{choices}")[0]
        if self.memory_clarify_choices_reply.count("{choices}") != 1 or not before.strip():
            raise ValueError("memory_clarify_choices_reply must contain {choices} exactly once, after some text of its "
                             "own: the numbered list of approved questions goes there, and the text before it is how "
                             "the customer's answer is recognised")
        return self

    @model_validator(mode="after")
    def _derive_paths(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'tuneloop.db').as_posix()}"
        return self

    @property
    def model_store_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def resolved_system_prompt(self) -> str:
        company = f" for {self.company_name}" if self.company_name.strip() else ""
        return self.system_prompt or (
            f"You are {self.bot_persona}{company}. "
            "Answer the customer's question accurately and briefly."
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
