"""Thumbs-up/down on bot answers: the table, the service and the route."""
