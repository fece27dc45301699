"""Images into a learned reward's input: ShapesWorld's palette grids (a batched tensor path equal to
the PIL transform) and a real model's RGB images (through the reward's own transform)."""
import numpy as np
import pytest
import torch
from PIL import Image

from maskrl.rewards.pixels import preprocess, to_pil
from maskrl.world import PromptSampler, render_batch


@pytest.fixture(scope="module")
def grids():
    rng = np.random.default_rng(0)
    return render_batch(PromptSampler().sample_many(6, rng), rng)


@pytest.mark.parametrize("size", [16, 32, 224, 40])
def test_tensor_preprocessing_equals_the_pil_transform(grids, size):
    """The batched tensor path of `preprocess` gives what open_clip's own PIL transform gives
    (40: not a multiple of 16, so the PIL path with a real resize is taken)."""
    import open_clip

    images = grids
    transform = open_clip.image_transform(size, is_train=False)
    pil = torch.stack([transform(img) for img in to_pil(images, size)])
    torch.testing.assert_close(preprocess(images, transform, size), pil)


def test_a_real_models_rgb_images_go_through_the_rewards_own_transform():
    """(B, H, W, 3) RGB images (Show-o's decoded pixels) are not palette grids: each goes through the
    open_clip transform as a PIL image, resized to the model's input."""
    import open_clip

    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    transform = open_clip.image_transform(32, is_train=False)
    expected = torch.stack([transform(Image.fromarray(img)) for img in rgb])
    torch.testing.assert_close(preprocess(rgb, transform, 32), expected)
