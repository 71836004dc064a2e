"""Fine-tuning jobs: their lifecycle (service), what a round trains on (rounds), the training child
process, hosted OpenAI jobs, uploaded files, the OpenAI-compatible fine-tuning routes, and what a job
trained on (provenance). The worker process that runs them is retrain.worker."""
