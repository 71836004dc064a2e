"""Expert corrections: the table, authoring and revision, alternative phrasings, duplicate and
conflict detection, and contacts kept in staff answers."""
