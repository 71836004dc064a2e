"""Feedback: ratings, the review queue, expert corrections with two-person approval, and the export
of approved corrections as training examples (which retrain/ snapshots)."""
