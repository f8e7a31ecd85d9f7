import torch

from biounet.augment import augment, dihedral, dihedral_choices, inverse_dihedral
from biounet.config import AugmentConfig


def test_dihedral_group_has_eight_distinct_invertible_elements():
    t = torch.arange(16.0).reshape(4, 4)
    outs = []
    for k in range(4):
        for flip in (False, True):
            d = dihedral(t, k, flip)
            assert torch.equal(inverse_dihedral(d, k, flip), t)
            outs.append(tuple(d.flatten().tolist()))
    assert len(set(outs)) == 8


def test_image_label_and_weights_get_the_same_transform():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    y = (x[:, 0] > 0).long()
    w = x[:, 0] * 3
    xa, ya, wa = augment(x, y, w, AugmentConfig(flip=True, rot90=True), g)
    assert torch.equal(ya, (xa[:, 0] > 0).long())
    assert torch.equal(wa, xa[:, 0] * 3)
    assert not torch.equal(xa, x)  # 16 draws from 8 transforms: some are not the identity


def test_flip_only_never_rotates_by_a_quarter_turn():
    assert sorted(dihedral_choices(AugmentConfig(flip=True, rot90=False))) == [
        (0, False),
        (0, True),
        (2, False),
        (2, True),
    ]
    t = torch.arange(16.0).reshape(4, 4)
    mirrors = {tuple(m.flatten().tolist()) for m in (t, t.flip(0), t.flip(1), t.flip(0).flip(1))}
    assert {
        tuple(dihedral(t, k, f).flatten().tolist())
        for k, f in dihedral_choices(AugmentConfig(flip=True, rot90=False))
    } == mirrors
    assert dihedral_choices(AugmentConfig(flip=False, rot90=False)) == [(0, False)]


def test_augmentation_is_reproducible_from_the_seed():
    x = torch.randn(8, 1, 6, 6)
    y = torch.zeros(8, 6, 6, dtype=torch.long)
    a = augment(x, y, None, AugmentConfig(), torch.Generator().manual_seed(3))[0]
    b = augment(x, y, None, AugmentConfig(), torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)
