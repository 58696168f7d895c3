"""HiRED token selection (vit_accel.hired): parity with the official code's masks, budgets and CLS attention on the
shared fixtures, the in-ViT patch, and argument errors."""

import functools
import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

import vit_accel
from vit_accel import hired

from conftest import SHARED

FIXTURES = SHARED / "parity" / "vit_accel"
KWARGS = dict(img_size=64, patch_size=8, in_chans=3, embed_dim=96, depth=6, num_heads=3, mlp_ratio=4.0,
              qkv_bias=True, class_token=True, global_pool="token", num_classes=10)


@functools.cache
def load_fixture(folder):
    meta = json.loads((folder / "config.json").read_text())
    model = VisionTransformer(**meta["model"]["kwargs"]).eval()
    model.load_state_dict(load_file(folder / "official_state_dict.safetensors"), strict=True)
    return meta, load_file(folder / "io.safetensors"), model


@pytest.fixture
def fixture(parity_dir):
    return load_fixture(parity_dir("vit_accel"))


def fixture_cases(kind):
    """Indices of the fixture's HiRED cases of `kind` (``next_cases`` / ``llava15_cases``), for parametrize."""
    if not (FIXTURES / "config.json").is_file():
        return []
    return list(range(len(json.loads((FIXTURES / "config.json").read_text())["hired"][kind])))


def best_tile_grid(image_hw, pinpoints, tile_size) -> tuple[int, int]:
    """LLaVA-Next's any-res choice, restated: the pinpoint (h, w) that keeps the most of the image's pixels when it is
    scaled to fit (ties: the least padding), as (rows, cols) of tiles."""
    h, w = image_hw

    def key(res):
        scale = min(res[0] / h, res[1] / w)
        kept = min(int(h * scale) * int(w * scale), h * w)
        return kept, -(res[0] * res[1] - kept)

    best = max(pinpoints, key=key)  # max() keeps the first of equal keys, as the official loop does
    return best[0] // tile_size, best[1] // tile_size


# The official early / late-layer CLS attention (values up to 0.75): measured within 1.5e-7 (CPU, torch 2.14.1), 4x.
# The fixture's top-k margins are at least 7.4e-6, so this also keeps every selection away from a tie.
CLS_ATTN_ATOL = 6e-7


def random_vit(**overrides):
    torch.manual_seed(0)
    small = dict(img_size=32, patch_size=4, embed_dim=48, depth=4)
    return VisionTransformer(**{**KWARGS, **small, **overrides}).eval()


@pytest.mark.parametrize("case", fixture_cases("next_cases"))
def test_llava_next_parity(fixture, case):
    meta, io, model = fixture
    h = meta["hired"]
    c = h["next_cases"][case]
    with torch.no_grad():
        sel = hired.select(model, io["hired.tiles"], c["token_budget_rate"], alpha=c["alpha"],
                           num_views=h["tiles"]["num_patches"], top_layer=h["top_layer"],
                           bottom_layer=h["bottom_layer"])
    torch.testing.assert_close(sel.cls_attn_top, io[h["tensors"]["cls_attn_top"]], rtol=0, atol=CLS_ATTN_ATOL)
    torch.testing.assert_close(sel.cls_attn_bottom, io[h["tensors"]["cls_attn_bottom"]], rtol=0, atol=CLS_ATTN_ATOL)
    expected = torch.cat([io[c["masks"][f"image{i}"]] for i in range(len(h["tiles"]["num_patches"]))])
    assert torch.equal(sel.mask, expected)
    assert sel.budgets.tolist() == sum(c["tokens_kept_per_tile"], [])
    per_image = sel.budgets.split(list(sel.num_views))
    assert [b[1:].tolist() for b in per_image] == c["sub_img_budgets"]
    assert [f.shape[0] for f in sel.features] == c["tokens_kept"]
    # features: the default feature block's (the penultimate block's) output at the kept positions
    blocks_out = model.forward_intermediates(io["hired.tiles"], indices=[len(model.blocks) - 2],
                                             intermediates_only=True, output_fmt="NLC")[0]
    for i, (feats, idx) in enumerate(zip(sel.features, sel.indices)):
        views = blocks_out[sum(sel.num_views[:i]):sum(sel.num_views[:i + 1])]
        assert torch.equal(feats, views[idx[:, 0], idx[:, 1]])  # a gather of that output (measured: identical)


@pytest.mark.parametrize("case", fixture_cases("llava15_cases"))
def test_llava15_parity(fixture, case):
    meta, io, model = fixture
    c = meta["hired"]["llava15_cases"][case]
    with torch.no_grad():
        sel = hired.select(model, io["images"], c["token_budget_rate"], bottom_layer=meta["hired"]["bottom_layer"])
    torch.testing.assert_close(sel.cls_attn_bottom, io[meta["hired"]["tensors"]["llava15_cls_attn_bottom"]],
                               rtol=0, atol=CLS_ATTN_ATOL)
    assert torch.equal(sel.mask, io[c["mask"]])
    assert sel.mask.sum(1).tolist() == c["tokens_kept"] and sel.cls_attn_top is None
    assert [idx[:, 0].max().item() for idx in sel.indices] == [0] * io["images"].shape[0]  # one view per image


def test_batched_views_and_2d_tiles(fixture):
    meta, io, model = fixture
    h = meta["hired"]
    tiles, views = io["hired.tiles"], h["tiles"]["num_patches"]
    c = h["next_cases"][0]
    rate, alpha, bottom = c["token_budget_rate"], c["alpha"], h["bottom_layer"]
    with torch.no_grad():
        flat = hired.select(model, tiles[:views[0]], rate, alpha=alpha, num_views=views[:1], bottom_layer=bottom)
        stacked = hired.select(model, tiles[:views[0]][None], rate, alpha=alpha, bottom_layer=bottom)
    assert torch.equal(flat.mask, stacked.mask) and stacked.num_views == (views[0],)
    # each image's tile grid: the any-res resolution its size picks, in tiles of the ViT's input size
    size = h["vision_config"]["image_size"]
    grids = [best_tile_grid(hw, h["image_grid_pinpoints"], size) for hw in h["tiles"]["image_sizes_hw"]]
    assert [tr * tc for tr, tc in grids] == [v - 1 for v in views]
    with torch.no_grad():
        grid = hired.select(model, tiles, rate, alpha=alpha, num_views=views, bottom_layer=bottom, tile_grids=grids)
    # 2-D tile counts instead of the official row bands (README, finding 8), from the official early-layer CLS
    # attention: the global view's top int(N * (1 - alpha)) patches, counted in the 2-D cell of each tile; the tiles
    # share the budget left after the global view's (the official one) in those proportions, floored
    rows, cols = model.patch_embed.grid_size
    n = rows * cols
    top = io[h["tensors"]["cls_attn_top"]][:, :, -n:].sum(1)
    expected, start = [], 0
    for g, (v, (tr, tc)) in enumerate(zip(views, grids)):
        total = int(v * n * rate)
        full = min(int(total * alpha), n)
        assert full == c["tokens_kept_per_tile"][g][0]
        picked = top[start].topk(int(n * (1 - alpha))).indices
        cell = (picked // cols) * tr // rows * tc + (picked % cols) * tc // cols
        counts = torch.bincount(cell, minlength=v - 1)
        share = counts / counts.sum()
        expected += [full, *(share * min(total - full, (v - 1) * n)).int().clamp(max=n).tolist()]
        start += v
    assert grid.budgets.tolist() == expected, (grids, expected)


def test_patch_exact_at_all_tokens_and_reversible(fixture):
    meta, io, model = fixture
    x = io["images"]
    n = model.patch_embed.num_patches
    keep, layer = n // 4, max(len(model.blocks) // 2 - 1, 0)  # a quarter of the tokens, after a middle block
    with torch.no_grad():
        ref = model(x)
        for budget in (1.0, n):
            vit_accel.patch(model, "hired", token_budget=budget)
            assert torch.equal(model(x), ref)
            vit_accel.unpatch(model)
        vit_accel.patch(model, "hired", token_budget=keep, layer=layer)
        out = model(x)
        vit_accel.unpatch(model)
        assert torch.equal(model(x), ref) and type(model.blocks[layer]) is timm.models.vision_transformer.Block
        # by hand: HiRED's single-view top-k by that block's CLS attention, then the remaining blocks
        sel = hired.select(model, x, keep, bottom_layer=layer, feature_layer=layer)
        h = model.blocks[:layer + 1](model.norm_pre(model._pos_embed(model.patch_embed(x))))
        kept = torch.cat([h[:, :1], h[:, 1:][sel.mask].view(x.shape[0], keep, -1)], dim=1)
        manual = model.forward_head(model.norm(model.blocks[layer + 1:](kept)))
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-6)


def test_patch_drops_tokens():
    model = random_vit()
    seen = []
    model.blocks[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    vit_accel.patch(model, "hired", token_budget=0.25, layer=1)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert seen == [1 + 16]


def test_bad_arguments():
    model = random_vit()
    x = torch.rand(3, 3, 32, 32)
    for budget in (0, 65, 0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="token_budget"):
            hired.select(model, x, budget)
        with pytest.raises(ValueError, match="token_budget"):
            vit_accel.patch(model, "hired", token_budget=budget)
    for budget in (True, "all", None):
        with pytest.raises(TypeError, match="token_budget"):
            hired.select(model, x, budget)
    with pytest.raises(ValueError, match="keeps no token"):
        hired.select(model, x, 0.01)
    with pytest.raises(ValueError, match="out of range"):
        hired.select(model, x, 0.5, bottom_layer=4)
    with pytest.raises(ValueError, match="out of range"):
        vit_accel.patch(model, "hired", token_budget=8, layer=-5)
    with pytest.raises(ValueError, match="sums to"):
        hired.select(model, x, 0.5, num_views=[2, 2])
    with pytest.raises(ValueError, match="global view"):
        hired.select(model, x, 0.5, num_views=[1, 2])
    with pytest.raises(ValueError, match="alpha"):
        hired.select(model, x, 0.5, num_views=[3], alpha=1.0)
    with pytest.raises(ValueError, match="do not divide"):
        hired.select(model, torch.rand(4, 3, 32, 32), 0.5, num_views=[4])
    with pytest.raises(ValueError, match="images must be"):
        hired.select(model, x[0], 0.5)
    assert not vit_accel.is_patched(model)
    no_cls = random_vit(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no CLS token"):
        hired.select(no_cls, x, 0.5)
    with pytest.raises(ValueError, match="no CLS token"):
        vit_accel.patch(no_cls, "hired", token_budget=8)
    with pytest.raises(TypeError, match="VisionTransformer"):
        hired.select(torch.nn.Linear(2, 2), x, 0.5)
