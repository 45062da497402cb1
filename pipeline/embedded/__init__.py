"""Embedded services for the dev stack and tests: nothing to install, nothing downloaded."""

from pipeline.embedded.broker import BrokerStartError, EmbeddedBroker
from pipeline.embedded.ports import free_port

__all__ = ["BrokerStartError", "EmbeddedBroker", "free_port"]
