"""An LLM provider simulator on loopback speaking OpenAI chat completions, Anthropic
Messages and Gemini generateContent, with per-model latency and error profiles,
deterministic answers and fault injection (``python -m pipeline.simulator``)."""

from pipeline.simulator.profiles import (FaultKind, FaultSpec, ModelProfile, SimulatorConfig,
                                         load_config, parse_fault_flag)
from pipeline.simulator.core import LATENCY_HEADER, Simulator, key_fingerprint
from pipeline.simulator.server import RunningSimulator, build_app, start_simulator

__all__ = [
    "LATENCY_HEADER", "FaultKind", "FaultSpec", "ModelProfile", "RunningSimulator", "Simulator",
    "SimulatorConfig", "build_app", "key_fingerprint", "load_config", "parse_fault_flag",
    "start_simulator",
]
