"""The model registry (floor 2): every servable version, the production pointer, gate reports and
the golden set; promotion and rollback (``lifecycle``), name resolution and the compare-and-swap of
the pointer (``versions``), routes. Serving reads it; retraining writes candidates and reports into it.
"""
