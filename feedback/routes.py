"""HTTP routes of feedback (thin: parse, call a service function, answer)."""

from fastapi import APIRouter

router = APIRouter()

from feedback.ratings.routes import router as rating_router

router.include_router(rating_router)

from feedback.corrections.routes import router as correction_router
from feedback.review.routes import router as review_router

router.include_router(review_router)
router.include_router(correction_router)

from feedback.import_routes import router as import_router
from feedback.phrasing_routes import router as phrasing_router

router.include_router(import_router)
router.include_router(phrasing_router)

from feedback.distill.routes import router as distill_router

router.include_router(distill_router)

from feedback.memory.routes import router as memory_router

router.include_router(memory_router)
