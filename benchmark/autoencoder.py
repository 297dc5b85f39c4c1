"""Autoencoders that map images in [-1, 1] to the space the diffusion model works in (a registry).

- `none`: pixel space (identity), as used for the embedded digits dataset.
- `sd-vae`: the Stable Diffusion KL autoencoder (Rombach et al. 2022, arXiv 2112.10752) that DiT
  (arXiv 2212.09748) uses: 8x downsampling, 4 latent channels, latents = posterior sample * 0.18215,
  images = decode(latents / 0.18215); `posterior` gives the scaled mean and std the samples are drawn
  from. Weights are `stabilityai/sd-vae-ft-{ema,mse}` loaded by diffusers' `AutoencoderKL.from_pretrained`
  from a local folder (`path=`) or the Hugging Face hub.

`to_uint8` / `from_uint8` are DiT's conversions: training reads images with ToTensor + Normalize(0.5, 0.5),
i.e. x = u / 127.5 - 1; sampling writes `clamp(127.5 * x + 128, 0, 255)` cast (truncated) to uint8, which
is round-to-nearest of 127.5 * (x + 1) and exactly inverts `from_uint8`.
"""
from __future__ import annotations

import hashlib
import os

import torch

SD_VAE_SCALE = 0.18215
SD_VAE_VARIANTS = ("ema", "mse")


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"from_uint8 expects a uint8 tensor, got dtype {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (any shape, layout kept) -> uint8, exactly as DiT's sample_ddp.py."""
    if not torch.is_floating_point(images):
        raise TypeError(f"to_uint8 expects a floating-point tensor in [-1, 1], got dtype {images.dtype}")
    # +128 (not +127.5) followed by the truncating cast rounds to nearest.
    return torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8)


class AutoencoderLoadError(ValueError):
    """The autoencoder weights could not be found or loaded."""


class Autoencoder:
    """Interface: encode [-1,1] images (N, image_channels, H, W) -> latents (N, latent_channels, H/d, W/d)."""

    name: str
    key: str  # identifies the exact encoder (name, variant, scale, weights) for cache keys
    image_channels: int
    latent_channels: int
    downsample: int
    stochastic: bool  # True when encode() draws noise (the latent cache then seeds it per image)

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scaled latent posterior, so that a latent sample is mean + std * N(0, I)."""
        raise NotImplementedError(f"autoencoder {self.name!r} has no latent posterior; it encodes deterministically")

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            raise ValueError(f"image_size {image_size} is not divisible by the {self.name} downsampling factor "
                             f"{self.downsample}")
        return (self.latent_channels, image_size // self.downsample, image_size // self.downsample)

    def _check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"{self.name}.encode expects (N, {self.image_channels}, H, W) images, got shape "
                             f"{tuple(x.shape)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r})"


class PixelSpace(Autoencoder):
    """Identity: the diffusion model works directly on [-1, 1] pixels."""

    stochastic = False
    downsample = 1

    def __init__(self, image_channels: int = 3):
        if isinstance(image_channels, bool) or not isinstance(image_channels, int) or image_channels < 1:
            raise ValueError(f"image_channels must be a positive int, got {image_channels!r}")
        self.name = "none"
        self.image_channels = self.latent_channels = image_channels
        self.key = f"none-c{image_channels}"

    def encode(self, x, *, generator=None, noise=None):
        self._check_images(x)
        return x.to(torch.float32).clone()

    def decode(self, z):
        return z.to(torch.float32).clone()


def _hash_state_dict(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _hash_folder(folder: str) -> str:
    """Hash of a diffusers model folder's config and weight files (what determines the encoder)."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith((".json", ".safetensors", ".bin")):
                full = os.path.join(dirpath, f)
                h.update(os.path.relpath(full, folder).encode())
                with open(full, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 22), b""):
                        h.update(chunk)
    return h.hexdigest()[:12]


class SDVAE(Autoencoder):
    """A diffusers `AutoencoderKL` with DiT's latent scaling."""

    stochastic = True

    def __init__(self, module, *, variant: str, scale: float, key_source: str, device="cpu", dtype=torch.float32):
        module = module.to(device=device)
        if next(module.parameters()).dtype != dtype:
            module = module.to(dtype=dtype)
        self.module = module.eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        self.scale = float(scale)
        self.variant = variant
        config = module.config
        self.name = "sd-vae"
        self.image_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.key = f"sd-vae-{variant}-s{self.scale:g}-{key_source}"

    @torch.no_grad()
    def encode(self, x, *, generator=None, noise=None):
        """scale * posterior sample; with `noise` (standard normal, latent shape) the sample is mean + std * noise."""
        self._check_images(x)
        posterior = self.module.encode(x.to(self.device, self.dtype)).latent_dist
        if noise is not None:
            if tuple(noise.shape) != tuple(posterior.mean.shape):
                raise ValueError(f"noise shape {tuple(noise.shape)} does not match the latent shape "
                                 f"{tuple(posterior.mean.shape)}")
            z = posterior.mean + posterior.std * noise.to(posterior.mean.device, posterior.mean.dtype)
        else:
            z = posterior.sample(generator=generator)
        return z * self.scale

    @torch.no_grad()
    def posterior(self, x):
        """(scale * mean, scale * std) of the diagonal Gaussian q(z | x), as DiT's training draws from it."""
        self._check_images(x)
        posterior = self.module.encode(x.to(self.device, self.dtype)).latent_dist
        return posterior.mean * self.scale, posterior.std * self.scale

    @torch.no_grad()
    def decode(self, z):
        return self.module.decode(z.to(self.device, self.dtype) / self.scale).sample


def _looks_like_path(path: str) -> bool:
    """Hub ids are 'owner/name'; anything rooted, relative-dotted or deeper is meant as a local folder."""
    return path.startswith((".", "/", "~")) or path.count("/") >= 2 or (os.sep != "/" and os.sep in path)


def _offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# The architecture of stabilityai/sd-vae-ft-ema and -mse (their config.json): a single weights file
# carries no config, so this is what it is read into.
SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512), "act_fn": "silu", "sample_size": 256,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
HUB = ("huggingface.co", 443)


def _how_to_get(hub_id: str) -> str:
    return (f"on a machine with internet, `huggingface-cli download {hub_id} --local-dir sd-vae` (or just its "
            "diffusion_pytorch_model.safetensors), copy it here and pass autoencoder.path=/path/to/sd-vae "
            "(the folder or the .safetensors file)")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, so a machine without network fails at once, not after ~25 s of retries."""
    import socket

    try:
        with socket.create_connection(HUB, timeout=timeout):
            return True
    except OSError:
        return False


def load_single_file(path: str):
    """An AutoencoderKL of the SD VAE's architecture from one ``.safetensors`` file in diffusers' layout:
    the ``diffusion_pytorch_model.safetensors`` of stabilityai/sd-vae-ft-ema or -mse."""
    from diffusers.models import AutoencoderKL
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except Exception as err:
        raise AutoencoderLoadError(f"autoencoder.path={path} is not a readable .safetensors file ({err})") from None
    module = AutoencoderKL(**SD_VAE_CONFIG)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:3])
        raise AutoencoderLoadError(f"autoencoder.path={path} does not hold the SD VAE's weights in diffusers' "
                                   f"layout ({len(missing)} missing, {len(unexpected)} unexpected, e.g. {shown}); "
                                   "use the diffusion_pytorch_model.safetensors of stabilityai/sd-vae-ft-ema or -mse")
    return module.eval()


def _load_autoencoder_kl(source: str, subfolder: str | None, offline: bool):
    try:
        from diffusers.models import AutoencoderKL
    except ImportError as err:
        raise AutoencoderLoadError(f"the sd-vae autoencoder needs the 'diffusers' package ({err})") from None
    if not os.path.isdir(source):
        # Offline compute nodes must fail at once instead of retrying the hub for ~25 s; even
        # from_pretrained(local_files_only=True) makes one request, so the cache is resolved first.
        from huggingface_hub import snapshot_download

        try:
            return AutoencoderKL.from_pretrained(snapshot_download(source, local_files_only=True),
                                                 subfolder=subfolder, local_files_only=True, low_cpu_mem_usage=False)
        except Exception:  # not in the cache: the hub it is, if there is one
            if offline or not _hub_reachable():
                why = "offline mode (HF_HUB_OFFLINE)" if offline else "the Hugging Face hub cannot be reached"
                raise AutoencoderLoadError(f"the SD VAE weights '{source}' are not on this machine and {why}: "
                                           f"{_how_to_get(source)}") from None
    try:
        return AutoencoderKL.from_pretrained(source, subfolder=subfolder, local_files_only=offline,
                                             low_cpu_mem_usage=False)
    except Exception as err:  # diffusers/hub raise many types (OSError, HTTP, EnvironmentError, ValueError)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AutoencoderLoadError(
            f"could not load the SD VAE weights from '{source}' ({detail}); download a diffusers AutoencoderKL "
            f"folder (config.json + weights) and pass autoencoder.path=/path/to/that/folder"
            + (" (offline mode: only local files and the Hugging Face cache were searched)" if offline else "")
        ) from None


def _build_pixel(*, image_channels: int = 3, variant=None, path=None, scale=None, device=None,
                 dtype=None) -> PixelSpace:
    # The VAE-only knobs are accepted so one config schema serves both entries; pixel space has no weights.
    return PixelSpace(image_channels)


def _build_sd_vae(*, variant: str = "ema", path: str | None = None, scale: float = SD_VAE_SCALE, device="cpu",
                  dtype=torch.float32, module=None, subfolder: str | None = None,
                  offline: bool | None = None) -> SDVAE:
    if variant not in SD_VAE_VARIANTS:
        raise ValueError(f"autoencoder.variant={variant!r} is invalid; valid: {SD_VAE_VARIANTS}")
    if module is not None:
        key_source = f"module{_hash_state_dict(module)}"
    elif path is not None and os.path.isfile(os.path.expanduser(path)):
        if not path.endswith(".safetensors"):
            raise ValueError(f"autoencoder.path={path} is a file but not a .safetensors file; pass the SD VAE's "
                             "diffusion_pytorch_model.safetensors or its folder")
        module = load_single_file(os.path.expanduser(path))
        key_source = f"file{_hash_state_dict(module)}"
    elif path is not None and os.path.isdir(os.path.expanduser(path)):
        folder = os.path.expanduser(path)
        module = _load_autoencoder_kl(folder, subfolder, offline=True)
        key_source = f"local{_hash_folder(os.path.join(folder, subfolder) if subfolder else folder)}"
    elif path is not None and _looks_like_path(path):
        raise FileNotFoundError(f"autoencoder.path='{path}' does not exist; pass a folder with a diffusers "
                                f"AutoencoderKL (config.json + weights), its .safetensors file, or a hub id like "
                                f"stabilityai/sd-vae-ft-ema")
    else:
        hub_id = path or f"stabilityai/sd-vae-ft-{variant}"
        module = _load_autoencoder_kl(hub_id, subfolder, offline=_offline(offline))
        key_source = f"hub:{hub_id}" + (f"/{subfolder}" if subfolder else "")
    return SDVAE(module, variant=variant, scale=scale, key_source=key_source, device=device, dtype=dtype)


AUTOENCODERS = {
    "none": _build_pixel,
    "sd-vae": _build_sd_vae,
}


def build_autoencoder(name: str = "none", *, variant: str = "ema", path: str | None = None,
                      scale: float = SD_VAE_SCALE, device="cpu", dtype=torch.float32, **opts) -> Autoencoder:
    """Build a registered autoencoder.

    `none` takes `image_channels` (default 3; pass dataset.channels). `sd-vae` takes `variant`, `path`
    (local folder or hub id), `scale`, `device`, `dtype`, `subfolder`, `offline` (default: the HF_HUB_OFFLINE
    environment variable; True searches only local files and the hub cache), or a ready `module=` AutoencoderKL.
    """
    try:
        builder = AUTOENCODERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown autoencoder {name!r}; valid names: {sorted(AUTOENCODERS)}") from None
    return builder(variant=variant, path=path, scale=scale, device=device, dtype=dtype, **opts)
