"""The two feature sets of a protocol's FVD, filled batch by batch during evaluation and merged over ranks.

Which clips enter follows the protocol's `FVDSpec`: each clip is the context frames followed by the future
(true or predicted), so a 1 -> 15 protocol scores 16-frame clips and SRVP's 2 -> 28 scores all 30 frames;
the generated set holds every sample's clip (`all`, iVideoGPT) or sample 0's (`first`, SRVP); the real set holds
each video's true clip once. Features are summed in float64 per rank (`fvd.FeatureStats`), so memory does not
grow with the number of clips; merging over ranks adds those sums, which agrees between world sizes to float64
rounding (the Fréchet distance to ~1e-9 relative), not bitwise.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


class FVDSets:
    """`add_real(clips)`, `add_generated(past, preds, chunk)` during evaluation, then `result(accelerator)`."""

    def __init__(self, spec, net) -> None:
        from toolkit.eval import fvd

        self.spec, self.net, self.fvd = spec, net, fvd
        self.real, self.generated = fvd.FeatureStats(), fvd.FeatureStats()

    def add_real(self, clips: torch.Tensor) -> None:
        """True clips [B, n_past + n_future, C, H, W] in [0, 1]."""
        self.real.add(self.fvd.i3d_features(self.net, clips, resize=self.spec.resize_mode))

    def add_generated(self, past: torch.Tensor, preds: torch.Tensor, chunk: range) -> None:
        """Predictions [S, B, n_future, C, H, W] of samples `chunk`, each after the context past [B, n_past, ...]."""
        if self.spec.samples == "first":
            if chunk.start != 0:
                return
            preds = preds[:1]
        S = preds.shape[0]
        clips = torch.cat([past.expand(S, *past.shape), preds], dim=2).flatten(0, 1)
        self.generated.add(self.fvd.i3d_features(self.net, clips, resize=self.spec.resize_mode))

    def result(self, accelerator: Accelerator) -> dict:
        """{"fvd", "real", "generated"}: the Fréchet distance of the two sets merged over all ranks, and their
        clip counts."""
        if accelerator.num_processes > 1:
            parts = gather_object([(self.real.to_list(), self.generated.to_list())])  # in rank order
            self.real, self.generated = self.fvd.FeatureStats(), self.fvd.FeatureStats()
            for r, g in parts:
                self.real.merge(self.fvd.FeatureStats.from_list(r))
                self.generated.merge(self.fvd.FeatureStats.from_list(g))
        distance = self.fvd.frechet_distance(self.real, self.generated, ddof=self.spec.ddof)
        return {"fvd": distance, "real": self.real.count, "generated": self.generated.count}
