"""HTTP routes of this package (thin: parse, call a service function, answer)."""

from fastapi import APIRouter

router = APIRouter()
