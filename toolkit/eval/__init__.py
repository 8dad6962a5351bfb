"""Evaluation and output: the named protocols (`protocols.py`), one protocol over a split (`evaluate.py`,
`scoring.py`, `summary.py`), PSNR/SSIM (`metrics.py`), LPIPS (`perceptual.py`), FVD (`fvd.py`, `fvd_sets.py`),
`cvae eval` (`report.py`, `table.py`, `compare.py`), `cvae predict`, prediction videos and plots."""
