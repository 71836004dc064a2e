"""Fine-tuning jobs: their lifecycle (service), the worker that runs them, hosted OpenAI jobs, uploaded
files, the OpenAI-compatible fine-tuning routes, and what a job trained on (provenance)."""
