"""Expert corrections: the table, authoring and revision, duplicate and
conflict detection, and contacts kept in staff answers."""
