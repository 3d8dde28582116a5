"""The diffusers integration: channel-concatenation wrapper and conv_in widening."""

import pytest
import torch
from diffusers import UNet2DModel

from restoregrad_adapter import LearnedPriorScheduler, RestoreGrad
from restoregrad_adapter.integrations.diffusers import wrap, widen_conv_in


def tiny_unet(in_channels):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=16, in_channels=in_channels, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def test_wrapper_is_the_unet_on_the_concatenation():
    unet = tiny_unet(6)
    x_t, y, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert torch.equal(wrap(unet)(x_t, y, t), unet(torch.cat([x_t, y], 1), t).sample)


def test_widened_pretrained_unet_ignores_the_condition_until_trained(tmp_path):
    unconditional = tiny_unet(3)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    before = unconditional(x_t, t).sample
    widened = widen_conv_in(unconditional, condition_channels=3)
    assert widened.config.in_channels == 6
    for y in (torch.zeros_like(x_t), torch.randn_like(x_t) * 5):
        assert torch.allclose(wrap(widened)(x_t, y, t), before, atol=1e-6)
    widened.save_pretrained(tmp_path)
    reloaded = UNet2DModel.from_pretrained(tmp_path)
    assert reloaded.conv_in.in_channels == 6
    # It trains as a RestoreGrad denoiser and then uses y.
    adapter = RestoreGrad.with_encoders(wrap(widened), dims=2, in_channels=3, size="tiny",
                                        scheduler=LearnedPriorScheduler(num_train_timesteps=100))
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-3)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    adapter.training_loss(x0, x0 + 0.1, generator=torch.Generator().manual_seed(0)).loss.backward()
    optimizer.step()
    assert widened.conv_in.weight[:, 3:].abs().sum() > 0


def test_errors():
    with pytest.raises(ValueError, match="in_channels=6"):
        wrap(tiny_unet(3))(torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="condition_channels"):
        widen_conv_in(tiny_unet(3), 0)
    with pytest.raises(ValueError, match="conv_in"):
        widen_conv_in(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="model"):
        wrap(lambda x, t: x)
