"""The review queue and the second reviewer's decision on a correction."""
