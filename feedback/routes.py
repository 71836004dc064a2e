"""HTTP routes of feedback (thin: parse, call a service function, answer)."""

from fastapi import APIRouter

router = APIRouter()
