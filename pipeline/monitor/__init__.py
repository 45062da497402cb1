"""The cost monitor: alert rules (rules.py), windows (windows.py) and their evaluation with
de-duplication (evaluate.py); pure Python, wired into Faust by pipeline/agents/monitor.py."""
