"""The ground floor (floor 0): what every package shares and that imports none of them — settings,
database engine and sessions, ids and clocks, the one error family and its handler, dependency
aliases, per-process metrics, accounts and the audit log."""
