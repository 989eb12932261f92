"""Perception pretraining's targets and read-outs, by hand."""

import torch

from cvit.run.vision_pretrain import PerceptionHeads, scene_labels
from cvit.synthetic.scenes import HARD, Look, Scene, Shape, Writing


def test_labels_put_each_shape_in_its_quadrant_and_each_digit_in_its_place():
    look = Look("blue", "purple", 0.0, 1.0, 8)
    scene = Scene((Shape("ring", 1, 20, 2, look), Shape("circle", 2, 1, 17, look)), noise=HARD.noise)
    labels = scene_labels(scene)
    assert labels["shapes"].tolist() == [0, 6, 1, 0]  # none, ring (SHAPES[5] + 1), circle (SHAPES[0] + 1), none
    assert labels["colours"].tolist() == [0, 5, 5, 0]  # blue is COLOURS[4]
    assert labels["has_box"].tolist() == [0, 1, 1, 0]
    assert labels["boxes"][1].tolist() == [20 / 32, 2 / 32, 28 / 32, 10 / 32]
    assert labels["length"].tolist() == [0] and labels["digits"].tolist() == [0, 0]
    number = scene_labels(Scene(writing=Writing("40", 0, 0, 3, look)))
    assert number["length"].tolist() == [2] and number["digits"].tolist() == [5, 1]  # digit d is class d + 1
    assert number["shapes"].tolist() == [0, 0, 0, 0]


def test_quadrant_read_out_takes_each_quadrants_own_patches():
    heads = PerceptionHeads(width=1, side=4)
    features = torch.arange(16.0).reshape(1, 16, 1)  # patch i in raster order on a 4x4 grid holds i
    cells = heads.quadrants(features)[0].tolist()
    assert cells == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
