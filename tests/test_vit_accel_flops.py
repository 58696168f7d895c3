"""The MAC counter: the fixtures' analytic counts, the paper numbers for DeiT-S, and fused attention counted."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

import vit_accel
from vit_accel.flops import count_macs, flop_counter_macs

from conftest import SHARED
from test_vit_accel_tome_gtp import gtp_kwargs

FIXTURES = SHARED / "parity" / "vit_accel"


pytestmark = pytest.mark.usefixtures("one_thread")


def counted_cases():
    if not (FIXTURES / "config.json").is_file():
        return []
    return [c for c in json.loads((FIXTURES / "config.json").read_text())["cases"] if "macs" in c]


def patched_fixture_model(folder, case):
    meta = json.loads((folder / "config.json").read_text())
    model = VisionTransformer(**meta["model"]["kwargs"]).eval()
    model.load_state_dict(load_file(folder / "official_state_dict.safetensors"))
    params = case["params"]
    if case["method"] == "tome":
        r = params["r"]
        vit_accel.patch(model, "tome", r=tuple(r) if isinstance(r, list) else r, prop_attn=params["prop_attn"])
    elif case["method"] == "gtp":
        vit_accel.patch(model, "gtp", **gtp_kwargs(params))
    return model


@pytest.mark.parametrize("case", counted_cases(), ids=lambda c: c["name"])
def test_analytic_macs_match_the_fixtures(parity_dir, case):
    folder = parity_dir("vit_accel")
    model = patched_fixture_model(folder, case)
    image = load_file(folder / "io.safetensors")["images"][:1]  # the fixtures count batch 1, image 0
    report = count_macs(model, image)
    assert report.total == case["macs"]["analytic"]
    assert report.tokens_in == case["tokens_in"] and report.tokens_out == case["tokens_out"]
    measured = flop_counter_macs(model, image)
    all_tokens = model.patch_embed.num_patches + model.num_prefix_tokens  # CLS + every patch
    no_overhead = set(case["tokens_out"]) == {all_tokens} or case["params"].get("propagation") == "None"
    if no_overhead:  # nothing but the backbone runs; fused SDPA is counted (torch alone gives 44.3 M for `timm`)
        assert measured == case["macs"]["analytic"]
    else:
        assert 0 < measured - report.total < 0.05 * report.total  # ToMe's matching, GTP's graph and propagation


def test_deit_small_paper_numbers():
    """DeiT-S: 4.6 GMACs; ToMe r = 8 / 13 / 16: 3.4 / 2.7 / 2.3 (papers' "GFLOPs" are these MACs)."""
    with torch.device("meta"):
        model = timm.create_model("deit_small_patch16_224")
    report = count_macs(model, (3, 224, 224))
    assert round(report.gmacs, 2) == 4.60 and report.tokens_in == [197] * 12
    assert report.patch_embed == 196 * 768 * 384 and report.head == 384 * 1000
    for method, kwargs, expected in [("tome", dict(r=8), 3.42), ("tome", dict(r=13), 2.70),
                                     ("tome", dict(r=16), 2.29), ("gtp", dict(num_prop=8), 3.42)]:
        vit_accel.patch(model, method, **kwargs)
        report = count_macs(model, (3, 224, 224))
        assert round(report.gmacs, 2) == expected, (method, kwargs)
        vit_accel.unpatch(model)
    assert report.tokens_out[-1] == 197 - 12 * 8
    assert "| 11 | 109 | 101 |" in report.table()


def test_counts_are_per_image_and_follow_the_model():
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2).eval()
    one, four = count_macs(model, torch.randn(1, 3, 64, 64)), count_macs(model, torch.randn(4, 3, 64, 64))
    assert one == four
    zoo_model = vit_accel.AcceleratedViT(vit_accel.AcceleratedViTConfig(
        timm_model="vit_tiny_patch16_224", timm_kwargs=dict(img_size=64, depth=2), method="tome",
        method_kwargs=dict(r=4)))
    assert count_macs(zoo_model, (3, 64, 64)).tokens_out == [13, 9]
    with pytest.raises(TypeError, match="VisionTransformer"):
        count_macs(torch.nn.Linear(2, 2), (2,))
