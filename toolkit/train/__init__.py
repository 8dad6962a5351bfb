"""Training: the loop (`loop.py`), one optimizer step on the device (`step.py`), checkpoints, schedules, the
run log (metrics.jsonl) and the W&B run."""
