"""The embedded generators (pushing world, moving digits) and `cvae synth` / `generate_dataset`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main
from toolkit.data.worlds import digits as shapes, pushing as world, synth
from toolkit.data.sources.folders import ACTIONS_CSV, POSITIONS_CSV, sequence_dir
from toolkit.errors import ToolkitError


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root`."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_pushing_sequence_is_deterministic_per_seed():
    frames, actions, eef = world.generate_pushing_sequence(5)
    assert frames.shape == (30, 64, 64, 3) and frames.dtype == np.uint8
    assert actions.shape == (30, 4) and actions.dtype == np.float32
    assert eef.shape == (30, 3) and eef.dtype == np.float32
    again = world.generate_pushing_sequence(5)
    for a, b in zip((frames, actions, eef), again):
        assert a.tobytes() == b.tobytes()
    other = world.generate_pushing_sequence(6)
    assert _mse(frames, other[0]) > 10.0
    assert not np.allclose(actions, other[1])
    assert set(np.unique(actions[:, 3])) <= {-1.0, 1.0}
    assert np.abs(actions[:, :3]).max() <= 1.0


def test_actions_drive_the_gripper():
    scene = world.make_scene(_rng(0))
    a = world.sample_actions(_rng(1), 30, start=scene.eef0)
    b = world.sample_actions(_rng(2), 30, start=scene.eef0)
    frames_a, eef_a = world.rollout(scene, a, _rng(3))
    frames_b, eef_b = world.rollout(scene, b, _rng(3))
    assert np.array_equal(eef_a[0], scene.eef0) and np.array_equal(frames_a[0], frames_b[0])
    assert np.linalg.norm(eef_a[8:] - eef_b[8:], axis=1).mean() > 0.2
    assert _mse(frames_a[8:], frames_b[8:]) > 20.0
    # eef[t+1] - eef[t] == GAIN * actions[t][:3] wherever the workspace clip does not bite
    checked = 0
    for seed in range(10):
        _, actions, eef = world.generate_pushing_sequence(seed)
        wanted = eef[:-1] + world.GAIN * actions[:-1, :3]
        free = np.all((wanted > world.WORKSPACE_LO) & (wanted < world.WORKSPACE_HI), axis=1)
        np.testing.assert_allclose(eef[1:][free] - eef[:-1][free], (world.GAIN * actions[:-1, :3])[free],
                                   atol=1e-6)
        assert np.all((eef >= world.WORKSPACE_LO) & (eef <= world.WORKSPACE_HI))
        checked += int(free.sum())
    assert checked > 150  # most steps are unclipped; the low-z clip is the usual exception
    assert np.mean(eef_a[:, 2] < world.Z_CONTACT) > 0.2  # the policy spends time low enough to push


def _red(frame: np.ndarray) -> np.ndarray:
    """Mask of the pushing test's red disc."""
    return (frame[..., 0] > 150) & (frame[..., 1] < 80)


def _pushing_scene() -> world.Scene:
    """One disc in the middle of an empty table, the gripper low on its left."""
    base = world.make_scene(_rng(0))
    return world.Scene(background=base.background, positions=np.array([[0.0, 0.0]], np.float32),
                       radii=np.array([0.25], np.float32), corners=np.array([1.0], np.float32),
                       colors=np.array([[0.9, 0.1, 0.1]], np.float32), frictions=np.array([0.3], np.float32),
                       eef0=np.array([-0.8, 0.0, 0.0], np.float32), gripper0=1.0)


def test_pushes_are_not_fully_explained_by_the_actions():
    scene = _pushing_scene()
    actions = np.zeros((20, 4), np.float32)
    actions[:, 2], actions[:, 3] = -1.0, 1.0  # stay on the table, closed
    actions[:10, 0] = 1.0  # drive right, through the disc
    frames_1, eef_1 = world.rollout(scene, actions, _rng(1))
    frames_2, eef_2 = world.rollout(scene, actions, _rng(2))
    assert np.array_equal(eef_1, eef_2)  # the noise never moves the gripper
    assert np.array_equal(frames_1[:3], frames_2[:3])  # no contact yet (the gripper reaches the disc at t=3)
    assert np.sum(np.any(frames_1[-1] != frames_2[-1], axis=-1)) > 20  # the pushed disc ended elsewhere
    lifted = actions.copy()
    lifted[:, 2] = 1.0  # the same path in the air pushes nothing
    air, _ = world.rollout(scene, lifted, _rng(1))
    assert _red(air[0]).sum() > 100
    moved = np.argwhere(_red(frames_1[-1]))[:, 1].mean() - np.argwhere(_red(frames_1[0]))[:, 1].mean()
    unmoved = np.argwhere(_red(air[-1]))[:, 1].mean() - np.argwhere(_red(air[0]))[:, 1].mean()
    assert moved > 5.0 and abs(unmoved) < 1.0  # pushed to the right by several pixels only when low


def test_future_frames_depend_on_the_actions():
    oracle, blind, copy_last = [], [], []
    for seed in range(50):
        scene_seq, action_seq, noise_seq = np.random.SeedSequence(seed).spawn(3)
        scene = world.make_scene(np.random.default_rng(scene_seq))
        actions = world.sample_actions(np.random.default_rng(action_seq), 11, start=scene.eef0)
        truth, _ = world.rollout(scene, actions, np.random.default_rng(noise_seq))
        known, _ = world.rollout(scene, actions, _rng(10_000 + seed))  # true actions, other noise
        other = world.sample_actions(_rng(20_000 + seed), 11, start=scene.eef0)
        guessed, _ = world.rollout(scene, other, _rng(10_000 + seed))
        oracle.append(_mse(known[10], truth[10]))
        blind.append(_mse(guessed[10], truth[10]))
        copy_last.append(_mse(truth[1], truth[10]))
    assert np.mean(oracle) < 0.2 * np.mean(blind)
    assert np.mean(oracle) < 0.2 * np.mean(copy_last)
    assert np.mean(copy_last) > 50.0  # the scene changes a lot over 10 frames


def test_shapes_sequences():
    frames = shapes.generate_shapes_sequence(3)
    assert frames.shape == (30, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[..., 0], frames[..., 2])
    assert np.array_equal(frames, shapes.generate_shapes_sequence(3))
    assert not np.array_equal(frames, shapes.generate_shapes_sequence(4))
    assert np.all((frames[..., 0] > 128).sum(axis=(1, 2)) > 40)  # the digits never leave the frame
    assert _mse(frames[0], frames[10]) > 100.0
    for glyphs in (shapes.digit_glyphs(), shapes.shape_glyphs()):
        assert glyphs.shape == (10, 28, 28)
        flat = glyphs.reshape(10, -1).astype(np.int64)
        assert np.all(flat.sum(axis=1) > 20 * 255)
        assert len({g.tobytes() for g in glyphs}) == 10


def test_dataset_is_reproducible_and_independent_of_counts(tmp_path):
    summary = synth.generate_dataset(tmp_path / "a", counts={"train": 3, "validate": 1, "test": 0}, seed=7,
                                     progress=False)
    assert summary == {"out": str(tmp_path / "a"), "world": "pushing", "seed": 7,
                       "counts": {"train": 3, "validate": 1, "test": 0}}
    synth.generate_dataset(tmp_path / "b", counts={"train": 3, "validate": 1, "test": 0}, seed=7, progress=False)
    synth.generate_dataset(tmp_path / "c", counts={"train": 5}, seed=7, progress=False)
    tree_a, tree_b, tree_c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert tree_a == tree_b
    seq2 = sequence_dir(Path("train"), 2)
    for name in ("0.png", "17.png", ACTIONS_CSV, POSITIONS_CSV):
        assert tree_a[str(seq2 / name)] == tree_c[str(seq2 / name)]
    assert tree_a[str(seq2 / "5.png")] != tree_a[str(sequence_dir(Path("train"), 1) / "5.png")]
    val0 = sequence_dir(Path("validate"), 0) / ACTIONS_CSV
    assert tree_a[str(val0)] != tree_a[str(sequence_dir(Path("train"), 0) / ACTIONS_CSV)]
    assert not (tmp_path / "a" / "test").exists()
    assert "seed: 7" in (tmp_path / "a" / "README.txt").read_text()
    seeds = {synth.sequence_seed(0, split, i) for split in synth.SPLITS for i in range(100)}
    assert len(seeds) == 300


def test_any_number_of_workers_writes_the_same_files(tmp_path):
    counts = {"train": 5, "validate": 2, "test": 1}
    synth.generate_dataset(tmp_path / "one", counts=counts, seed=3, progress=False)
    main(["synth", "--out", str(tmp_path / "two"), "--train", "5", "--validate", "2", "--test", "1", "--seed", "3",
          "--workers", "2", "--quiet"])
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len([name for name in one if name.endswith(".png")]) == 8 * 30
    assert one == two


def test_cli_writes_the_bair_layout(tmp_path, capsys):
    out = tmp_path / "d"
    main(["synth", "--out", str(out), "--train", "3", "--validate", "1", "--test", "1", "--quiet"])
    for split, n in (("train", 3), ("validate", 1), ("test", 1)):
        seqs = sorted((out / split / "traj_0_to_255").iterdir())
        assert [p.name for p in seqs] == [str(i) for i in range(n)]
        for seq in seqs:
            assert sorted(p.name for p in seq.glob("*.png")) == sorted(f"{t}.png" for t in range(30))
            with Image.open(seq / "29.png") as im:
                assert im.size == (64, 64) and im.mode == "RGB"
            actions = np.loadtxt(seq / ACTIONS_CSV, delimiter=",", dtype=np.float64)
            eef = np.loadtxt(seq / POSITIONS_CSV, delimiter=",", dtype=np.float64)
            assert actions.shape == (30, 4) and eef.shape == (30, 3)
            assert np.isfinite(actions).all() and np.isfinite(eef).all()
            wanted = np.clip(eef[:-1] + world.GAIN * actions[:-1, :3], world.WORKSPACE_LO, world.WORKSPACE_HI)
            np.testing.assert_allclose(eef[1:], wanted, atol=1e-5)
    assert "world: pushing" in (out / "README.txt").read_text()
    assert capsys.readouterr().err == ""  # --quiet: no progress bar
    before = _tree(out)
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(out), "--train", "1", "--validate", "0", "--test", "0", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "exists" in err and "--overwrite" in err
    assert _tree(out) == before
    main(["synth", "--out", str(out), "--world", "shapes", "--train", "2", "--validate", "1", "--test", "0",
          "--overwrite", "--quiet"])
    assert not list(out.rglob("*.csv"))
    assert len(list(out.rglob("*.png"))) == 90
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "train", "validate"]
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("argv, message", [
    (["--world", "nowhere"], "invalid choice"),
    (["--train", "-1"], "--train must be a non-negative integer"),
    (["--seed", "-3"], "--seed must be a non-negative integer"),
    (["--workers", "0"], "--workers must be a positive integer"),
])
def test_cli_rejects_bad_input(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "d"), "--quiet", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_generate_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ToolkitError, match="unknown world"):
        synth.generate_dataset(tmp_path / "d", world="nowhere", counts={"train": 1}, progress=False)
    with pytest.raises(ToolkitError, match="unknown split"):
        synth.generate_dataset(tmp_path / "d", counts={"training": 1}, progress=False)
    with pytest.raises(ToolkitError, match="--validate must be a non-negative integer"):
        synth.generate_dataset(tmp_path / "d", counts={"validate": -2}, progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch, error):
    calls = []

    def failing(seed: int, seq_len: int = 30):
        calls.append(seed)
        if len(calls) == 3:
            raise error("boom")
        return world.generate_pushing_sequence(seed, seq_len)

    monkeypatch.setattr(synth, "generate_pushing_sequence", failing)
    with pytest.raises(error):
        synth.generate_dataset(tmp_path / "d", counts={"train": 5}, progress=False)
    assert len(calls) == 3
    assert sorted(tmp_path.iterdir()) == []  # neither `d` nor a `.tmp-*` directory
    # an existing dataset survives a failed --overwrite untouched
    monkeypatch.setattr(synth, "generate_pushing_sequence", world.generate_pushing_sequence)
    synth.generate_dataset(tmp_path / "d", counts={"train": 1}, progress=False)
    before = _tree(tmp_path / "d")
    calls.clear()
    monkeypatch.setattr(synth, "generate_pushing_sequence", failing)
    with pytest.raises(error):
        synth.generate_dataset(tmp_path / "d", counts={"train": 4}, overwrite=True, progress=False)
    assert _tree(tmp_path / "d") == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
