"""Resampled futures: the context and everything the model is given stay the truth's, the hidden part of the
future is drawn afresh, reproducibly; the worlds' own sequences are unchanged by the refactor that allows it."""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.data.worlds.digits import generate_shapes_sequence
from toolkit.data.worlds.headroom import resampled_futures
from toolkit.data.worlds.pushing import generate_pushing_sequence
from toolkit.data.worlds.synth import sequence_seed

TRUTH = {"pushing": lambda s: generate_pushing_sequence(s)[0], "shapes": generate_shapes_sequence}


@pytest.mark.parametrize("world", ["pushing", "shapes"])
def test_resampled_futures_keep_the_context_and_redraw_the_hidden_future(world):
    seeds = [sequence_seed(0, "test", i) for i in range(12)]
    changed = 0
    for seed in seeds:
        truth = TRUTH[world](seed)
        futures = resampled_futures(world, seed, n_past=2, samples=3)
        assert futures.shape == (3, 30, 64, 64, 3) and futures.dtype == np.uint8
        assert (futures[:, :2] == truth[None, :2]).all()  # the context is the truth's
        assert np.array_equal(futures, resampled_futures(world, seed, n_past=2, samples=3))  # reproducible
        changed += int((futures[:, 2:] != truth[None, 2:]).any())
    # the hidden state matters in most digits sequences (every bounce) and in some pushing ones (only after a push)
    assert changed >= (10 if world == "shapes" else 2)


def test_the_pushing_world_with_its_own_hidden_state_is_the_true_sequence():
    from toolkit.data.worlds import pushing

    seed = sequence_seed(0, "test", 3)
    scene_seq, action_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
    scene = pushing.make_scene(np.random.default_rng(scene_seq))
    actions = pushing.sample_actions(np.random.default_rng(action_seq), 30, start=scene.eef0)
    kicks = pushing.draw_kicks(np.random.default_rng(noise_seq), 30, len(scene.radii))
    frames, _ = pushing.rollout(scene, actions, kicks=kicks)  # the kicks given instead of the rng: the same frames
    assert np.array_equal(frames, generate_pushing_sequence(seed)[0])
