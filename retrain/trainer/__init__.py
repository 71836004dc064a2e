"""One round of LoRA training: which examples (rounds, replay, augment), how they are tokenized
(batching), the loop itself (train), the KL anchor, DPO and atomic checkpoints."""
