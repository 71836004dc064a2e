"""Evaluation gates a candidate passes before an admin may promote it: the items (from snapshots only),
the checks, the runs the worker executes, and their routes."""
