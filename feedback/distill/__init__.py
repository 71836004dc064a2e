"""Distillation: a teacher model writes question/answer pairs from documents or logged questions,
which then go through the same review as a staff correction."""
