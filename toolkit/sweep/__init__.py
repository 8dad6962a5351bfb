"""Sweeps: W&B sweep YAMLs run locally (`cvae sweep local`), tabulated over seeds with confidence intervals."""
