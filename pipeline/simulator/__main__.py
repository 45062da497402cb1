"""``python -m pipeline.simulator``: serve the provider simulator until SIGTERM/SIGINT.

The first line on stdout is ``simulator listening on http://HOST:PORT`` (parents such as
``llmpipe dev`` read the port from it); logs go to stderr.

API keys: the simulator answers the keys listed in simulator.yaml ``keys:``, in
``--key`` (repeatable) and in ``$LLMPIPE_SIM_KEYS`` (comma-separated), and refuses others
with each provider's 401. With no key listed anywhere it answers any non-empty key, which
is what the dev stack and the tests rely on (they make up fresh keys per run).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.simulator.profiles import SimulatorConfig, load_config, parse_fault_flag
from pipeline.simulator.server import start_simulator


KEYS_ENV = "LLMPIPE_SIM_KEYS"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.simulator",
        description="LLM provider simulator (OpenAI, Anthropic and Gemini shapes) with fault "
                    "injection.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    parser.add_argument("--config", type=Path, default=None,
                        help="profiles YAML (default: the packaged simulator.yaml)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-scale", type=float, default=1.0,
                        help="multiply every sampled latency (e.g. 0.01 for fast tests)")
    parser.add_argument("--fixed-latency-ms", type=float, default=None,
                        help="answer every call after exactly this long (benchmarks)")
    parser.add_argument("--no-base-errors", action="store_true",
                        help="no 500s from the profiles' error rates")
    parser.add_argument("--fault", action="append", default=[], metavar="MODEL=KIND[:RATE]",
                        help="inject a fault, e.g. gpt-4.1=rate_limit:0.5 or "
                             "'*=server_error:0.1:status=502' (repeatable)")
    parser.add_argument("--key", action="append", default=[], metavar="API_KEY",
                        help=f"answer this API key (repeatable; also ${KEYS_ENV}, "
                             "comma-separated); none listed: any non-empty key")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    config = load_config(args.config, seed=args.seed, latency_scale=args.latency_scale,
                         fixed_latency_ms=args.fixed_latency_ms,
                         base_errors=not args.no_base_errors, api_keys=configured_keys(args))
    faults = dict(config.faults)
    known = set(config.model_names())
    for flag in args.fault:
        model, spec = parse_fault_flag(flag, known)
        faults[model] = spec
    return dataclasses.replace(config, faults=faults)


def configured_keys(args: argparse.Namespace) -> frozenset[str]:
    from_env = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    return frozenset(args.key) | frozenset(from_env)


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_simulator(config, host, port)
    try:
        print(f"simulator listening on {running.url}", flush=True)
        await stop.wait()
    finally:
        await running.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = config_from_args(args)
    except (ConfigError, ValueError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
