"""Autoencoders: uint8 conversions, pixel space, and the SD VAE path on a small random AutoencoderKL."""
import socket

import diffusers
import pytest
import torch

from benchmark.autoencoder import AutoencoderLoadError, build_autoencoder, from_uint8, to_uint8
from benchmark.data import ImageDataset, extract_latents



def small_vae(in_channels=3, seed=0):
    torch.manual_seed(seed)
    # Three resolution levels -> 4x downsampling (the real SD VAE has four -> 8x).
    return diffusers.AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), norm_num_groups=8, sample_size=16)


# ---------------------------------------------------------------- uint8 helpers
def test_uint8_conversions_dit_convention():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    # round-to-nearest of 127.5 (x + 1), clamped: -0.5 -> 63.75 -> 64, 0.5 -> 191.25 -> 191, 0 -> 127.5 -> 128
    assert to_uint8(x).tolist() == [0, 0, 64, 128, 191, 255, 255]
    u = torch.arange(256, dtype=torch.uint8)
    f = from_uint8(u)
    torch.testing.assert_close(f, (u.double() / 255 - 0.5) / 0.5, check_dtype=False)  # ToTensor + Normalize(.5,.5)
    assert torch.equal(to_uint8(f), u)  # exact round trip
    with pytest.raises(TypeError, match="uint8"):
        from_uint8(f)
    with pytest.raises(TypeError, match="floating-point"):
        to_uint8(u)


def test_pixel_space_identity_and_errors():
    ae = build_autoencoder("none", image_channels=1)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert torch.equal(ae.encode(x), x) and torch.equal(ae.decode(x), x)
    assert (ae.downsample, ae.latent_channels, ae.image_channels) == (1, 1, 1)
    with pytest.raises(ValueError, match=r"expects \(N, 1, H, W\) images, got shape \(2, 3, 8, 8\)"):
        ae.encode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown autoencoder 'vqgan'.*none.*sd-vae"):
        build_autoencoder("vqgan")
    with pytest.raises(ValueError, match="variant='ft'.*'ema', 'mse'"):
        build_autoencoder("sd-vae", variant="ft", module=small_vae())


# ---------------------------------------------------------------- SD VAE
@pytest.fixture(scope="module")
def vae():
    return small_vae()


def test_sd_vae_shapes_and_scale(vae):
    ae = build_autoencoder("sd-vae", module=vae, scale=0.5)
    assert (ae.latent_channels, ae.downsample, ae.image_channels) == (4, 4, 3)
    assert ae.latent_shape(16) == (4, 4, 4)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(3, 4, 4, 4)
    z = ae.encode(x, noise=noise)
    assert z.shape == (3, 4, 4, 4)
    torch.testing.assert_close(z, 0.5 * (posterior.mean + posterior.std * noise))
    # With a generator the sample is exactly DiT's `vae.encode(x).latent_dist.sample() * scale`.
    z_gen = ae.encode(x, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(z_gen, 0.5 * posterior.sample(generator=torch.Generator().manual_seed(4)))
    out = ae.decode(z)
    assert out.shape == (3, 3, 16, 16)
    torch.testing.assert_close(out, vae.decode(z / 0.5).sample)


def test_sd_vae_key_tracks_scale_variant_and_weights(vae):
    base = build_autoencoder("sd-vae", module=vae).key
    assert "0.18215" in base and "ema" in base
    assert build_autoencoder("sd-vae", module=vae, scale=0.2).key != base
    assert build_autoencoder("sd-vae", module=vae, variant="mse").key != base
    assert build_autoencoder("sd-vae", module=small_vae(seed=1)).key != base


def test_sd_vae_local_folder(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    ae = build_autoencoder("sd-vae", path=str(tmp_path / "vae"))
    assert "local" in ae.key
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(ae.encode(x, noise=noise), build_autoencoder("sd-vae", module=vae).encode(x, noise=noise))


def test_sd_vae_missing_weights_message(tmp_path, monkeypatch):
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)         # name lookups
    monkeypatch.setattr(socket.socket, "connect", no_network)      # connections by address
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))            # an empty hub cache
    with pytest.raises(AutoencoderLoadError, match=r"the SD VAE weights 'stabilityai/sd-vae-ft-mse' are not on this "
                                                   r"machine and offline mode .*autoencoder.path="):
        build_autoencoder("sd-vae", variant="mse", offline=True)
    assert attempts == []  # offline mode never tries the network, so it cannot sit in retries
    # No network and no offline flag: one quick look at the hub, then the same one line.
    with pytest.raises(AutoencoderLoadError, match=r"the Hugging Face hub cannot be reached: on a machine with "
                                                   r"internet, `huggingface-cli download stabilityai/sd-vae-ft-ema"):
        build_autoencoder("sd-vae", variant="ema", offline=False)
    assert len(attempts) == 1
    with pytest.raises(FileNotFoundError, match="autoencoder.path='.*/absent' does not exist"):
        build_autoencoder("sd-vae", path=str(tmp_path / "absent"))


class Rand16(ImageDataset):
    def __init__(self, n=6):
        g = torch.Generator().manual_seed(1)
        self._images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
        self.name, self.key, self.num_classes, self.channels, self.image_size = "rand16", f"rand16-{n}", 0, 3, 16

    def __len__(self):
        return len(self._images)

    def load(self, index):
        return self._images[index].clone(), 0

    @property
    def labels(self):
        return torch.zeros(len(self), dtype=torch.int64).numpy()


def test_latent_cache_uses_the_vae(vae, tmp_path):
    ds = Rand16()
    ae = build_autoencoder("sd-vae", module=vae)
    calls = []
    handle = vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        lat = extract_latents(ds, ae, str(tmp_path), batch_size=4, seed=0)
        assert len(calls) == 4  # 2 batches x (plain, flipped)
        extract_latents(ds, ae, str(tmp_path), batch_size=4, seed=0)
        assert len(calls) == 4  # cached
    finally:
        handle.remove()
    assert lat.latents.shape == (12, 4, 4, 4)
    # Each cached row is scale * (mean + std * n) with its own standard-normal n.
    x = from_uint8(ds._images)
    posterior = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist
    n = (lat.latents / 0.18215 - posterior.mean) / posterior.std
    assert abs(n.mean()) < 0.15 and abs(n.std() - 1) < 0.15
    assert not torch.allclose(n[0], n[6])  # an image and its flip get different noise
    # A different seed gives different samples (and a different cache entry).
    other = extract_latents(ds, ae, str(tmp_path), batch_size=4, seed=1)
    assert not torch.allclose(other.latents, lat.latents)


def test_sd_vae_from_its_single_safetensors_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import benchmark.autoencoder as ae_mod

    vae = small_vae()
    tiny = dict(vae.config)
    monkeypatch.setattr(ae_mod, "SD_VAE_CONFIG", {k: tiny[k] for k in ae_mod.SD_VAE_CONFIG})
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    ae = build_autoencoder("sd-vae", path=str(path))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(ae.encode(x, noise=noise), build_autoencoder("sd-vae", module=vae).encode(x, noise=noise))
    wrong = tmp_path / "other.safetensors"
    save_file({"encoder.down.0.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(AutoencoderLoadError, match="does not hold the SD VAE's weights in diffusers' layout"):
        build_autoencoder("sd-vae", path=str(wrong))
    text = tmp_path / "vae.bin"
    text.write_text("x")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        build_autoencoder("sd-vae", path=str(text))
