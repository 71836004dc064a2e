"""Operations (composition root): backups and the observability of a running server."""
