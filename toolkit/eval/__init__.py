"""Evaluation and output: the lab's protocol (`protocol.py`), PSNR/SSIM (`metrics.py`), `cvae eval`
(`report.py`), `cvae predict`, prediction videos and plots."""
