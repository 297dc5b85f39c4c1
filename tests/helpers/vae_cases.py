"""A tiny random SD-style VAE for CPU tests of the posterior latents (shared by the latent-cache
and training tests)."""
import diffusers
import torch


def tiny_sd_vae(in_channels: int = 3, seed: int = 0) -> diffusers.AutoencoderKL:
    """A randomly initialised diffusers AutoencoderKL with the SD VAE's geometry: four resolution
    levels (8x downsampling) and 4 latent channels, but 8-16 feature channels."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return diffusers.AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels, latent_channels=4, layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16), norm_num_groups=8, sample_size=32)
