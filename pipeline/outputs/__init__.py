"""What a processing step asks to publish (``Out``: topic, key, event, format, partition),
how a request ends (outcomes.py: its Response and Usage), and how outputs get published: every output on its own, and what is published in its place when
it never can be (pipeline/outputs/rescue.py), so every input ends in exactly one outcome."""

from pipeline.outputs.emitter import Emitter, Send
from pipeline.outputs.out import AVRO, JSON, Origin, Out, dead_letter
from pipeline.outputs.rescue import Rescuer, Unpublishable

__all__ = ["AVRO", "JSON", "Emitter", "Origin", "Out", "Rescuer", "Send", "Unpublishable",
           "dead_letter"]
