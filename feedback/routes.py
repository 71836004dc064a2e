"""HTTP routes of feedback (thin: parse, call a service function, answer)."""

from fastapi import APIRouter

router = APIRouter()

from feedback.rating_routes import router as rating_router  # noqa: E402

router.include_router(rating_router)

from feedback.correction_routes import router as correction_router  # noqa: E402
from feedback.review_routes import router as review_router  # noqa: E402

router.include_router(review_router)
router.include_router(correction_router)

from feedback.distill_routes import router as distill_router  # noqa: E402

router.include_router(distill_router)

from feedback.memory_routes import router as memory_router  # noqa: E402

router.include_router(memory_router)
