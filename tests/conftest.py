"""Shared test setup: fixed threads, the parity-fixture folder, tiny configs per family."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("TOKZOO_TEST_THREADS", "2")))

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TOKZOO_SHARED", REPO.parent / "shared"))
# Where the parity fixtures must be present (CI lays ../shared beside the clone; TOKZOO_REQUIRE_FIXTURES=1 asks for
# the same elsewhere), their absence fails the run instead of skipping ~100 tests.
FIXTURE_FAMILIES = ("flextok", "tokenbridge", "vit_accel", "wavtokenizer")
REQUIRE_FIXTURES = os.environ.get("TOKZOO_REQUIRE_FIXTURES", "1" if os.environ.get("CI") == "true" else "0") == "1"


def pytest_sessionstart(session):
    missing = [f for f in FIXTURE_FAMILIES if not (SHARED / "parity" / f).is_dir()]
    if REQUIRE_FIXTURES and missing:
        raise pytest.UsageError(
            f"parity fixtures required (CI=true or TOKZOO_REQUIRE_FIXTURES=1) but missing under {SHARED / 'parity'}: "
            f"{missing}; set TOKZOO_SHARED to the shared folder")

# Registry-parametrized tests build every registered model at these sizes (strides, FFT sizes and the rest of
# each entry's config are kept).
TINY_OVERRIDES = {
    "wavtokenizer": dict(n_filters=4, dimension=32, codebook_size=64, backbone_dim=32, intermediate_dim=64,
                         num_layers=1, lstm_layers=1),
    "flextok": dict(image_size=16, vae_latent_channels=4, vae_block_out_channels=(8, 8), vae_layers_per_block=1,
                    vae_norm_num_groups=8, vae_scaling_factor=1.0, posemb_grid=(4, 4), encoder_dim=32,
                    encoder_depth=1, encoder_head_dim=16, decoder_dim=32, decoder_depth=1, decoder_head_dim=16,
                    num_registers=8, max_timestep=1.0, default_steps=2),
    "llamagen_vq": dict(ch=16, ch_mult=(1, 1, 2), z_channels=16, codebook_size=64, image_size=32, norm_groups=8),
    # 64 patch tokens: enough for every preset's per-block reduction over 2 blocks
    "vit_accel": dict(timm_kwargs=dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                       num_classes=10)),
    "ar": dict(dim=32, n_layer=1, n_head=2, multiple_of=32, vocab_size=64, block_size=16, grid_size=(4, 4),
               num_classes=10),  # vocab_size = the tiny llamagen_vq codebook, so the two pair
}


TINY_OVERRIDES["quality"] = dict(channels=(8, 8, 8), features=16)
# the VAE / tokenizer: 32 px, stride 4, attention at 8 x 8; the generator pairs with it (8 x 8 x 4 codes of 64)
TINY_OVERRIDES["tokenbridge"] = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=32, embed_dim=4,
                                     attn_resolutions=(8,))
TINY_OVERRIDES["tokenbridge_generator"] = dict(
    grid_size=(8, 8), channels=4, levels=64, encoder_dim=32, encoder_depth=1, encoder_heads=2, decoder_dim=32,
    decoder_depth=1, decoder_heads=2, channel_dim=16, channel_depth=1, channel_heads=2, num_classes=10, buffer_size=2,
    num_iter=4)
# xAR pairs with the tiny VAE above (8 x 8 x 4 latents): 4 cells of 4 x 4
TINY_OVERRIDES["xar"] = dict(grid_size=(8, 8), channels=4, entity="cell", entity_size=4, encoder_dim=32, encoder_depth=1,
                             encoder_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, num_classes=10,
                             num_steps=2)

def codebook_from_latents_(model, seed: int = 0):
    """A random tiny WavTokenizer whose codebook rows are frames of its own latents (as k-means would start), so
    that different frames get different codes (a random codebook maps every frame to one code)."""
    init_codebook_(model, seed)
    x, kwargs = model.example_input(batch_size=2, seed=seed)
    with torch.no_grad():
        latent, _ = model.encode_latent(x[:, 0])                                  # (B, D, F)
        frames = latent.transpose(1, 2).reshape(-1, latent.shape[1])
        g = torch.Generator().manual_seed(seed)
        cb = model.quantizer._codebook
        pick = torch.randint(0, len(frames), (cb.embed.shape[1],), generator=g)
        cb.embed.data[0] = frames[pick] + 0.01 * torch.randn(cb.embed.shape[1:], generator=g)
        cb.embed_avg.data.copy_(cb.embed.data)
    return model


def perturb_(model, scale: float = 0.05, seed: int = 0):
    """Add noise to every weight of a random tiny model: the zero-initialised adaLN and output heads of FlexTok
    would otherwise make every image encode to the same codes and every velocity the same."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


# Family steps a randomly built tiny model needs before the harness uses it, so that its codes tell inputs apart.
TINY_PREPARE = {"wavtokenizer": codebook_from_latents_, "flextok": perturb_}


@pytest.fixture
def one_thread():
    """For tests of tiny models: a second thread only adds contention (the suite's default is 2; on a busy 2-core
    machine the routing comparison took 34 s with it, 0.6 s without). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def parity_folder(family: str) -> Path:
    """``../shared/parity/<family>``: skips the test when absent (fails it under CI / TOKZOO_REQUIRE_FIXTURES).
    Module-scoped fixtures call this directly."""
    folder = SHARED / "parity" / family
    if not folder.is_dir():
        if REQUIRE_FIXTURES:
            pytest.fail(f"parity fixtures required but not present ({folder})")
        pytest.skip(f"parity fixtures not present ({folder})")
    return folder


@pytest.fixture
def parity_dir():
    return parity_folder


def init_codebook_(model, seed: int = 0):
    """Give a randomly built VQ model a usable codebook (k-means init would otherwise leave zeros)."""
    cb = model.quantizer._codebook
    g = torch.Generator().manual_seed(seed)
    cb.embed.data.copy_(torch.randn(cb.embed.shape, generator=g) * 0.1)
    cb.embed_avg.data.copy_(cb.embed.data)
    cb.initted.data.fill_(True)
    return model
