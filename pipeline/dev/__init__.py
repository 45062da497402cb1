"""Tools for running the pipeline on one machine: the embedded stack (broker, simulator,
chDB, workers as child processes: stack.py), `llmpipe dev` (run.py) and its demo traffic
(demo.py). Benchmarks and the integration tests stand on them; the pipeline never does."""
