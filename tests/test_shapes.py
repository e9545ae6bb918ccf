"""The shapes world: deterministic, captions match what is drawn, held-out split disjoint."""

import numpy as np
import pytest

from clockwork_engine.datasets import shapes


def test_stream_is_deterministic_and_endless():
    a, b = shapes.stream(7, 8), shapes.stream(7, 8)
    for _ in range(3):
        (ia, sa, _), (ib, sb, _) = next(a), next(b)
        np.testing.assert_array_equal(ia, ib)
        assert [s.caption for s in sa] == [s.caption for s in sb]
    other, _, _ = next(shapes.stream(8, 8))
    assert not np.array_equal(other, ia)


def test_held_out_split_is_disjoint_and_covers_everything():
    train = {s.caption for s in shapes.split_scenes("train")}
    held = {s.caption for s in shapes.split_scenes("eval")}
    assert not train & held
    assert train | held == {s.caption for s in shapes.all_scenes()}
    assert len(held) > 100 and sum(1 for s in shapes.split_scenes("eval") if not s.is_pair) > 100
    train_images = shapes.stream(0, 64)
    for _ in range(4):
        _, scenes, _ = next(train_images)
        assert all(s.caption in train for s in scenes)


def test_grammar():
    assert shapes.Scene("red", "circle", "small", "in the top left").caption == "a small red circle in the top left"
    assert shapes.Scene("orange", "square").caption == "an orange square"
    pair = shapes.Scene("blue", "square", relation="left of", colour2="yellow", shape2="triangle")
    assert pair.caption == "a blue square left of a yellow triangle"
    assert len(shapes.COLOURS) >= 6 and set(shapes.SHAPES) >= {"circle", "square", "triangle"}
    with pytest.raises(ValueError, match="split"):
        shapes.split_scenes("test")


@pytest.mark.parametrize("position", list(shapes.POSITIONS))
def test_single_shape_is_drawn_where_the_caption_says(position):
    rng = np.random.default_rng(0)
    scene = shapes.Scene("blue", "square", "large", position)
    for _ in range(5):
        (s,) = shapes.layout(scene, rng)
        row, col = shapes.POSITIONS[position]
        assert int(s.cy * 3 // shapes.IMAGE_SIZE) == row and int(s.cx * 3 // shapes.IMAGE_SIZE) == col
        image = shapes.render([s])
        ys, xs = np.nonzero((image == shapes.COLOURS["blue"]).all(-1))
        assert len(ys) > 0
        assert abs(xs.mean() + 0.5 - s.cx) < 1 and abs(ys.mean() + 0.5 - s.cy) < 1  # a square: centre = mean


@pytest.mark.parametrize("relation", shapes.RELATIONS)
def test_pair_relation_is_drawn(relation):
    rng = np.random.default_rng(1)
    scene = shapes.Scene("red", "circle", relation=relation, colour2="green", shape2="triangle")
    for _ in range(10):
        a, b = shapes.layout(scene, rng)
        image = shapes.render([a, b])
        ya, xa = np.nonzero((image == shapes.COLOURS["red"]).all(-1))
        yb, xb = np.nonzero((image == shapes.COLOURS["green"]).all(-1))
        holds = {"left of": xa.mean() < xb.mean(), "right of": xa.mean() > xb.mean(),
                 "above": ya.mean() < yb.mean(), "below": ya.mean() > yb.mean()}[relation]
        assert holds
