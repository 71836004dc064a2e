"""Staff and admin accounts, API keys, role checks and the audit log."""
