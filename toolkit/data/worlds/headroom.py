"""How much a latent variable can recover in the embedded worlds: futures with their hidden state resampled.

A sequence's future depends on what the context (and, in the pushing world, the actions) shows and on a hidden
part: in the pushing world each object's friction and the random turn of every push (`pushing.draw_kicks`), in
the digits world the velocity each digit takes at a bounce. `resampled_futures` re-renders a sequence with the
hidden part after the context drawn afresh from the world's own prior, everything else (scene, actions, the
context frames themselves) kept. These samples are what a perfect model that does not know the hidden state
predicts. Scored against the truth, with the evaluation's PSNR (`benchmarks/headroom.py`):
- best of N resamples: a perfect stochastic model under best-of-N, the most a latent can give;
- the per-pixel mean of the resamples: the MSE-optimal single prediction, what a perfect model that ignores its
  latent can reach;
- the difference of the two: the headroom of the latent under best-of-N, in dB.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from toolkit.data.worlds import pushing
from toolkit.data.worlds.digits import generate_shapes_sequence


def pushing_resample(seed: int, n_past: int, sample_seed: int, seq_len: int = 30) -> np.ndarray:
    """Pushing-world sequence `seed` (as `generate_pushing_sequence`) with its frictions and its kicks from step
    n_past on drawn from `sample_seed`: frames uint8 [seq_len, 64, 64, 3], equal to the true ones before n_past.
    A friction only acts once a pushed object slides, from frame 3 on, so the context is unchanged for n_past <= 2
    (and the truth's kicks are kept for the context steps)."""
    scene_seq, action_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
    scene = pushing.make_scene(np.random.default_rng(scene_seq))
    actions = pushing.sample_actions(np.random.default_rng(action_seq), seq_len, start=scene.eef0)
    k = len(scene.radii)
    kicks = pushing.draw_kicks(np.random.default_rng(noise_seq), seq_len, k)
    rng = np.random.default_rng(sample_seed)
    other = pushing.draw_kicks(rng, seq_len, k)
    other[:n_past] = kicks[:n_past]
    scene = dataclasses.replace(scene, frictions=rng.uniform(*pushing.FRICTION, k).astype(np.float32))
    return pushing.rollout(scene, actions, kicks=other)[0]


def digits_resample(seed: int, n_past: int, sample_seed: int, seq_len: int = 30) -> np.ndarray:
    """Digits-world sequence `seed` with every bounce from frame n_past on resampled from `sample_seed`."""
    return generate_shapes_sequence(seed, seq_len, np.random.default_rng(sample_seed), n_past)


RESAMPLE = {"pushing": pushing_resample, "shapes": digits_resample}


def resampled_futures(world: str, seed: int, n_past: int, samples: int, seq_len: int = 30) -> np.ndarray:
    """`samples` resampled versions of sequence `seed` of `world`: uint8 [samples, seq_len, 64, 64, 3]; sample s
    draws from (seed, s), so the set is reproducible."""
    draw = RESAMPLE[world]
    return np.stack([draw(seed, n_past, int(np.random.SeedSequence([seed, 7, s]).generate_state(1)[0]), seq_len)
                     for s in range(samples)])
