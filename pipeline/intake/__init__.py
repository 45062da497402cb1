"""Intake: every request on llm.requests checked against its bounds (validation.py), then
admitted, budgeted and routed, or refused with one error Response and one Usage (step.py).
Plain Python; its Faust wiring is pipeline/agents/intake.py."""

from pipeline.intake.step import Intake
from pipeline.intake.bounds import RequestBounds, load_bounds
from pipeline.intake.validation import tenant_partition

__all__ = ["Intake", "RequestBounds", "load_bounds", "tenant_partition"]
