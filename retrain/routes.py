"""HTTP routes of this package (thin: parse, call a service function, answer)."""

from fastapi import APIRouter

router = APIRouter()

from retrain.dataset_routes import router as dataset_router  # noqa: E402
router.include_router(dataset_router)
from retrain.gates.routes import router as gate_router
router.include_router(gate_router)
from retrain.jobs.openai_routes import router as openai_router
router.include_router(openai_router)
from retrain.scheduler_routes import router as scheduler_router
router.include_router(scheduler_router)
