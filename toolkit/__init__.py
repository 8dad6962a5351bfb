"""cvae-video: distributed training toolkit for stochastic video prediction with a conditional VAE (SVG)."""

__version__ = "0.1.0"
