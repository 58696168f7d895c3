"""FlexTok: official parity (variants A and B), batching invariance, converter, config allow-list, bad input."""

import copy
import dataclasses
import functools
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import zoo
from zoo import io as zio
from tokenizers_img.flextok import (ALLOWED_TARGETS, FlexTok, FlexTokConfig, OfficialConfigError,
                                    checkpoint_filter_fn, config_from_official, read_official_config, to_official)
from tokenizers_img.flextok.convert import official_vae_config, parse_safetensors_metadata, to_official_config
from tokenizers_img.flextok.modules import APG, classifier_free_guidance, prefix_lm_mask, sincos_posemb_2d
from zoo.checkpoints import CheckpointError, load_into

from conftest import SHARED, TINY_OVERRIDES

A_ONLY = ("decoder.module_dict.dec_latent_dropout.nullcond",
          "decoder.module_dict.dec_to_patches.adaLN_modulation.1.weight",
          "decoder.module_dict.dec_to_patches.adaLN_modulation.1.bias")


def _detokenize_cases() -> list[str]:
    """The fixture's detokenize cases (``detok_{case}_latents`` in io.safetensors), e.g. ``keep4_cfg3``."""
    path = SHARED / "parity" / "flextok" / "io.safetensors"
    if not path.is_file():  # the parity tests skip
        return ["full_g1"]
    with safe_open(str(path), "pt") as f:
        return sorted(m.group(1) for k in f.keys() if (m := re.fullmatch(r"detok_(.+)_latents", k)))


CASES = _detokenize_cases()


def case_params(case: str) -> tuple[str, float, bool]:
    """A case name -> (token lists, guidance scale, APG): ``{full|keepK|mixed}_{g|cfg|apg}<scale>``."""
    kind, guide = case.split("_")
    m = re.fullmatch(r"(g|cfg|apg)(\d+(?:\.\d+)?)", guide)
    assert m, case
    return kind, float(m.group(2)), m.group(1) == "apg"


# Parity tolerances, from the largest difference measured over both variants and every case (CPU, torch 2.14.1, the
# same at 1 and 2 threads) with a 4x margin. README.md quotes these numbers.
EXACT_ATOL = 2e-6  # VAE posterior and latents, encoder output, FSQ values, velocities, time embedding: measured 0
#                    (bit-identical); 2e-6 leaves a few ulps (values up to 4.2: ulp 4.8e-7) for another CPU's kernels
VAE_DECODE_ATOL = 5e-5  # VAE decoder images (up to 3.5): measured 1.2e-5
DETOK_LATENTS_ATOL = 6.5e-6  # latents after the 3-step Euler runs (guidance 1, CFG, APG): measured 1.6e-6
TRAJECTORY_ATOL = 3.5e-6  # per-step x, v_cond, v_uncond of the recorded APG run: measured 8.3e-7
DETOK_IMAGES_ATOL = 5e-5  # detokenized images: measured 1.2e-5 (the random VAE decoder amplifies ~10x)


def maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


@functools.lru_cache(maxsize=None)
def _load(folder: str, variant: str) -> FlexTok:
    folder = Path(folder)
    vae_config = json.loads((folder / "vae_config.json").read_text())
    name = "config.json" if variant == "A" else "config_variant_B.json"
    image_size = int(_io(str(folder))["images"].shape[-1])  # the fixture's images are square
    config = config_from_official(json.loads((folder / name).read_text()), vae_config=vae_config,
                                  image_size=image_size)
    official = load_file(folder / "official_state_dict.safetensors")
    if variant == "B":
        official = {k: v for k, v in official.items() if k not in A_ONLY}
    model = FlexTok(config)
    load_into(model, official, source=f"fixture {variant}", filter_fn=checkpoint_filter_fn)
    return model.eval()


@functools.lru_cache(maxsize=None)
def _io(folder: str) -> dict:
    return load_file(Path(folder) / "io.safetensors")


@pytest.fixture
def fixture(parity_dir):
    folder = parity_dir("flextok")

    def get(variant="A"):
        return _load(str(folder), variant), _io(str(folder))

    get.folder = folder
    return get


def keep_prefix(io) -> int:
    """K of the fixture's ``keepK`` token lists (the first K tokens of every image), from its tensor names."""
    (k,) = {int(m.group(1)) for name in io if (m := re.fullmatch(r"dec_v_keep(\d+)", name))}
    return k


def keep_counts(io, kind) -> list[int]:
    """Tokens kept per image in the fixture's `kind` token lists. ``mixed`` keeps all tokens of some images and the
    K-prefix of the others: the official ``dec_v_mixed`` equals ``dec_v_full`` or ``dec_v_keepK`` bit for bit per
    image, which says which."""
    n, k = io["tokens"].shape[1], keep_prefix(io)
    if kind == "full":
        return [n] * io["tokens"].shape[0]
    if kind == f"keep{k}":
        return [k] * io["tokens"].shape[0]
    assert kind == "mixed", kind
    counts = []
    for mixed, full, part in zip(io["dec_v_mixed"], io["dec_v_full"], io[f"dec_v_keep{k}"]):
        assert torch.equal(mixed, full) or torch.equal(mixed, part)
        counts.append(n if torch.equal(mixed, full) else k)
    assert counts != [n] * len(counts) and counts != [k] * len(counts), "mixed: expected both kinds of image"
    return counts


def token_lists(io, kind):
    return [t[:, :c] for t, c in zip(io["tokens"].split(1), keep_counts(io, kind))]


# ----------------------------------------------------------------------------------------------------------------
# config reader


def expected_config_fields(folder) -> dict:
    """The fixture's sizes, read independently of `config_from_official`: widths, depths, register count, position
    grid and adaLN layout from the official state dict's shapes, the rest from the raw config files."""
    raw = json.loads((folder / "config.json").read_text())
    vae_config = json.loads((folder / "vae_config.json").read_text())
    with safe_open(str(folder / "official_state_dict.safetensors"), "pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    enc, dec = "encoder.module_dict.enc_", "decoder.module_dict.dec_"
    enc_cfg, dec_cfg = raw["encoder"]["module_dict"], raw["decoder"]["module_dict"]

    def depth(prefix):
        block = re.compile(re.escape(prefix) + r"transformer\.blocks\.(\d+)\.")
        return len({m.group(1) for k in shapes if (m := block.match(k))})

    dec_dim = shapes[dec + "from_latents.proj.weight"][0]
    return dict(
        encoder_dim=shapes[enc + "patch_emb.patch_proj.weight"][0], encoder_depth=depth(enc),
        encoder_head_dim=enc_cfg["enc_transformer"]["head_dim"],
        decoder_dim=dec_dim, decoder_depth=depth(dec), decoder_head_dim=dec_cfg["dec_transformer"]["head_dim"],
        vae_block_out_channels=tuple(vae_config["block_out_channels"]),
        vae_latent_channels=shapes["vae.vae.quant_conv.weight"][0] // 2,
        vae_scaling_factor=raw["vae"]["scaling_factor"], sample_posterior=raw["vae"].get("sample_posterior", True),
        max_timestep=dec_cfg["dec_time_embedder"]["max_timestep"],
        num_registers=shapes[enc + "register_module.registers"][0],
        posemb_grid=shapes[enc + "posemb_module.posembs"][-2:], fsq_levels=tuple(raw["regularizer"]["levels"]),
        adaLN_expansion=shapes[dec + "transformer.blocks.0.adaLN_modulation.1.weight"][0] // (6 * dec_dim),
        null_cond="learned" if dec + "latent_dropout.nullcond" in shapes else "zero",
        head_adaLN=dec + "to_patches.adaLN_modulation.1.weight" in shapes,
    )


def test_config_reader_reads_both_variants(fixture):
    folder = fixture.folder
    vae_config = json.loads((folder / "vae_config.json").read_text())
    from_json = config_from_official(json.loads((folder / "config.json").read_text()), vae_config=vae_config)
    from_meta = config_from_official(read_official_config(folder / "official_state_dict.safetensors"),
                                     vae_config=vae_config)
    assert from_json == from_meta
    c = from_json
    expected = expected_config_fields(folder)
    assert {k: getattr(c, k) for k in expected} == expected
    b = config_from_official(json.loads((folder / "config_variant_B.json").read_text()), vae_config=vae_config)
    assert b.null_cond == "zero" and b.head_adaLN is False
    assert {k: v for k, v in vars(b).items() if k not in ("null_cond", "head_adaLN")} == \
        {k: v for k, v in vars(c).items() if k not in ("null_cond", "head_adaLN")}
    # the Hub mixin's {"config": {...}} wrapping is accepted too
    assert config_from_official({"config": json.loads((folder / "config.json").read_text())},
                                vae_config=vae_config) == c


def test_config_reader_allow_list(fixture):
    folder = fixture.folder
    base = json.loads((folder / "config.json").read_text())
    vae_config = json.loads((folder / "vae_config.json").read_text())

    def changed(fn):
        cfg = copy.deepcopy(base)
        fn(cfg)
        return cfg

    def set_(path, value):
        def fn(cfg):
            node = cfg
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return fn

    enc, dec = ("encoder", "module_dict"), ("decoder", "module_dict")
    assert "flextok.model.trunks.transformers.FlexTransformer" in ALLOWED_TARGETS
    bad_targets = [
        set_(("vae", "_target_"), "os.system"),
        set_(("_target_",), "builtins.eval"),
        set_(enc + ("enc_channels_to_last", "per_sample_op", "_target_"), "subprocess.call"),
        set_(dec + ("dec_transformer", "norm_layer"), {"_target_": "torch.nn.Module", "_partial_": True}),
    ]
    for fn in bad_targets:
        with pytest.raises(OfficialConfigError, match="allow-list"):
            config_from_official(changed(fn), vae_config=vae_config)
    unsupported = [
        (set_(enc + ("enc_seq_packer", "mask_mode"), "full"), "causal_last"),
        (set_(dec + ("dec_seq_packer", "mask_mode"), "causal"), "full"),
        (set_(enc + ("enc_transformer", "qkv_bias"), True), "not supported"),
        (set_(enc + ("enc_transformer", "some_new_flag"), 1), "unknown argument"),
        (set_(enc + ("enc_posemb_module", "posemb_type"), "learnable_sum"), "sincos"),
        (set_(dec + ("dec_transformer", "adaLN_expansion"), 1), "adaLN_expansion"),
        (set_(enc + ("enc_transformer", "block_mask_read_key"), None), "attention mask"),
        (lambda cfg: cfg["decoder"]["module_dict"].pop("dec_time_embedder"), "layout"),
        (lambda cfg: cfg.pop("regularizer"), "missing sections"),
        (lambda cfg: cfg.update(extra={"a": 1}), "unknown top-level"),
    ]
    for fn, message in unsupported:
        with pytest.raises(OfficialConfigError, match=message):
            config_from_official(changed(fn), vae_config=vae_config)
    with pytest.raises(OfficialConfigError, match="pass its config.json as vae_config"):
        config_from_official(changed(set_(("vae", "hf_hub_path"), "someone/vae")))
    # The safetensors metadata is parsed with ast.literal_eval: code stays an inert string and is refused.
    parsed = parse_safetensors_metadata({"vae": "__import__('os').system('echo pwned')", "encoder": "{'a': 1}"})
    assert parsed["vae"] == "__import__('os').system('echo pwned')" and parsed["encoder"] == {"a": 1}
    with pytest.raises(OfficialConfigError, match="missing sections"):
        config_from_official(parsed)


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}.{key}").items()}
    return {prefix: node}


def test_official_config_writer_inverts_the_reader(fixture):
    folder = fixture.folder
    vae_config = json.loads((folder / "vae_config.json").read_text())
    for name in ("config.json", "config_variant_B.json"):
        official = json.loads((folder / name).read_text())
        c = config_from_official(official, vae_config=vae_config)
        vae = official_vae_config(c)  # the fixture's diffusers config (which also lists diffusers' defaults)
        assert {k: vae_config[k] for k in vae} == vae
        written = to_official_config(c, sdpa_masks=True)
        assert config_from_official(written, vae_config=official_vae_config(c)) == c
        # the fixture's own config, up to explicit defaults, inference values of training-only arguments and the
        # optional parameter-free REPA tap
        ours, theirs = _flatten(written), _flatten(official)
        differ = {k for k in set(ours) | set(theirs) if ours.get(k, "absent") != theirs.get(k, "absent")}
        dec, enc = ".decoder.module_dict.", ".encoder.module_dict."
        allowed = {dec + "dec_time_embedder.frequency_embedding_size", dec + "dec_transformer.mlp_ratio",
                   enc + "enc_transformer.mlp_ratio", dec + "dec_transformer.use_act_checkpoint",
                   enc + "enc_transformer.use_act_checkpoint", enc + "enc_register_module.n_min",
                   dec + "dec_transformer.intermediate_layer_write_key", dec + "dec_transformer.intermediate_layers"}
        assert {k for k in differ if not k.startswith(dec + "dec_repa_unpacker.")} <= allowed, differ
        assert not _flatten(to_official_config(c))[enc + "enc_seq_packer.return_materialized_mask"]


def test_official_config_round_trip():
    base = FlexTokConfig(**TINY_OVERRIDES["flextok"])
    not_official = dict(image_size=base.image_size, default_steps=base.default_steps)
    configs = [
        base,
        dataclasses.replace(base, null_cond="zero", head_adaLN=False, adaLN_expansion=1, sample_posterior=True,
                            vae_scaling_factor=None, mlp_ratio=2.0, time_frequency_size=128, max_timestep=1000.0),
    ]
    for c in configs:
        written = to_official_config(c)
        assert all(v.startswith("flextok.") for k, v in _flatten(written).items() if k.endswith("._target_"))
        assert config_from_official(written, vae_config=official_vae_config(c), **not_official) == c
    for name in ("flextok-tiny-64px", "flextok-d18-d28-dfn"):
        c = FlexTokConfig(**{**zoo.model_info(name).config, "vae_scaling_factor": 0.5, "max_timestep": 1.0})
        extra = dict(default_steps=c.default_steps, default_guidance_scale=c.default_guidance_scale,
                     default_apg=c.default_apg)
        assert config_from_official(to_official_config(c), vae_config=official_vae_config(c), **extra) == c
    with pytest.raises(ValueError, match="max_timestep"):
        to_official_config(dataclasses.replace(base, max_timestep=None))


# ----------------------------------------------------------------------------------------------------------------
# parity


def test_layout_masks_and_tables_match_the_fixture(fixture):
    model, io = fixture("A")
    c = model.config
    raw = json.loads((fixture.folder / "config.json").read_text())
    h, w = io["vae_latents"].shape[-2:]
    patches = (h // c.patch_size) * (w // c.patch_size)
    per_image = patches + c.num_registers  # each image packed as [patches, registers]
    # all images packed into one sequence, zero-padded to a multiple of the packer's pad_to_multiple
    for mask_name, packer, ours in (("enc_attn_mask", "enc_seq_packer", prefix_lm_mask(patches, c.num_registers)),
                                    ("dec_attn_mask", "dec_seq_packer", torch.ones(per_image, per_image, dtype=bool))):
        module = "encoder" if packer.startswith("enc") else "decoder"
        multiple = raw[module]["module_dict"][packer]["pad_to_multiple"]
        n = io["images"].shape[0] * per_image
        expected = torch.zeros(-(-n // multiple) * multiple, -(-n // multiple) * multiple, dtype=bool)
        expected[:n, :n] = torch.block_diag(*[ours] * io["images"].shape[0])  # padding rows/columns: all False
        assert torch.equal(io[mask_name], expected), mask_name
    official = load_file(fixture.folder / "official_state_dict.safetensors")
    for key, dim in (("encoder.module_dict.enc_posemb_module.posembs", c.encoder_dim),
                     ("decoder.module_dict.dec_patches_posemb_module.posembs", c.decoder_dim)):
        assert torch.equal(sincos_posemb_2d(*c.posemb_grid, dim), official[key]), key


def test_fsq_matches_the_official_formula(fixture):
    _, io = fixture("A")
    raw = json.loads((fixture.folder / "config.json").read_text())
    levels = torch.tensor(raw["regularizer"]["levels"])  # the fixture's FSQ levels
    basis = torch.cumprod(torch.cat([torch.ones(1, dtype=levels.dtype), levels[:-1]]), 0)  # mixed-radix digits
    model = FlexTok(FlexTokConfig(**{**TINY_OVERRIDES["flextok"], "fsq_levels": tuple(levels.tolist())}))
    assert model.codebook_size == int(levels.prod())
    z = torch.randn(4096, len(levels), generator=torch.Generator().manual_seed(0)) * 3
    z = torch.cat([z, io["enc_registers_prequant"].reshape(-1, len(levels))])
    # official quantize_fsq.FSQ, restated: bound with eps 1e-3, round (STE), / (L // 2); index by truncation
    half_l = (levels - 1) * (1 + 1e-3) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    bounded = (z + (offset / half_l).atanh()).tanh() * half_l - offset
    quant = (bounded + (bounded.round() - bounded)) / (levels // 2)
    index = ((quant * (levels // 2) + levels // 2) * basis).sum(-1).to(torch.int32).long()
    ours_q, ours_i = model.regularizer(z[None])
    assert torch.equal(ours_q[0], quant) and torch.equal(ours_i[0].long(), index)
    back = ((index[:, None] // basis) % levels - levels // 2) / (levels // 2)
    assert torch.equal(model.codes_to_quants(index[None])[0], back)
    assert torch.equal(model.codes_to_quants(io["tokens"]), io["quants"])


def test_encoder_parity(fixture):
    model, io = fixture("A")
    with torch.no_grad():
        dist = model.vae.encode(io["images"]).latent_dist
        torch.testing.assert_close(dist.mean, io["vae_latent_mean"], atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(dist.logvar, io["vae_latent_logvar"], atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(model.vae_encode(io["images"]), io["vae_latents"], atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(model.vae_decode(io["vae_latents"]), io["vae_decoded"], atol=VAE_DECODE_ATOL, rtol=0)
        out = model.encode_latents(io["vae_latents"])
        torch.testing.assert_close(out["prequant"], io["enc_registers_prequant"], atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(out["quants"], io["quants"], atol=EXACT_ATOL, rtol=0)
        assert torch.equal(out["tokens"], io["tokens"])
        assert torch.equal(model.tokenize(io["images"]), io["tokens"])
    tokens = model.encode((io["images"] + 1) / 2)  # public API: [0, 1] images
    assert torch.equal(tokens.codes, io["tokens"]) and tokens.meta["image_size"] == list(io["images"].shape[-2:])


@pytest.mark.parametrize("variant", ["A", "B"])
def test_decoder_forward_parity(fixture, variant):
    model, io = fixture(variant)
    p = "" if variant == "A" else "vB_"
    x, t = io["dec_noised_latents"], io["dec_timesteps"]
    with torch.no_grad():
        v, inter = model.velocity(token_lists(io, "full"), x, t, return_intermediates=True)
        torch.testing.assert_close(v, io[p + "dec_v_full"], atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(inter["patches_final"], io[p + "dec_patches_final"], atol=EXACT_ATOL, rtol=0)
        if variant == "A":
            torch.testing.assert_close(inter["temb"], io["dec_temb"], atol=EXACT_ATOL, rtol=0)
        for kind in (f"keep{keep_prefix(io)}", "mixed"):
            torch.testing.assert_close(model.velocity(token_lists(io, kind), x, t), io[f"{p}dec_v_{kind}"],
                                       atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(model.velocity(token_lists(io, "full"), x, t, uncond=True), io[p + "dec_v_uncond"],
                                   atol=EXACT_ATOL, rtol=0)
        # the same calls through full codes + keep_k, and through Tokens.lengths
        mixed = keep_counts(io, "mixed")
        torch.testing.assert_close(model.velocity(io["tokens"], x, t, keep_k=mixed), io[p + "dec_v_mixed"],
                                   atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(model.velocity(model.make_tokens(io["tokens"], torch.tensor(mixed)), x, t),
                                   io[p + "dec_v_mixed"], atol=EXACT_ATOL, rtol=0)
        # the official input is x_t = t * noise + (1 - t) * latents: noising our own VAE latents with the recorded
        # noise gives it again, and the same velocity
        t4 = t[:, None, None, None]
        ours = t4 * io["dec_noise"] + (1 - t4) * model.vae_encode(io["images"])
        torch.testing.assert_close(ours, x, atol=EXACT_ATOL, rtol=0)
        torch.testing.assert_close(model.velocity(token_lists(io, "full"), ours, t), io[p + "dec_v_full"],
                                   atol=EXACT_ATOL, rtol=0)


def trajectory_case(io) -> str:
    """The detokenize case whose per-step tensors the fixture records (``detok_{case}_step_t``)."""
    (case,) = {m.group(1) for name in io if (m := re.fullmatch(r"detok_(.+)_step_t", name))}
    return case


def detokenize_steps(io) -> int:
    """Euler steps of the fixture's detokenize calls: one row of ``step_t`` per step."""
    return int(io[f"detok_{trajectory_case(io)}_step_t"].shape[0])


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("case", CASES)
def test_detokenize_parity(fixture, variant, case):
    model, io = fixture(variant)
    p = "" if variant == "A" else "vB_"
    kind, scale, apg = case_params(case)
    kwargs = dict(steps=detokenize_steps(io), guidance_scale=scale, apg=apg)
    with torch.no_grad():
        # the official pipeline's initial noise, recorded: no dependence on how a generator is consumed
        latents = model.sample_latents(token_lists(io, kind), noise=io["detok_noise"], **kwargs)
        torch.testing.assert_close(latents, io[f"{p}detok_{case}_latents"], atol=DETOK_LATENTS_ATOL, rtol=0)
        images = model.detokenize(token_lists(io, kind), noise=io["detok_noise"], **kwargs)
        torch.testing.assert_close(images, io[f"{p}detok_{case}_images"], atol=DETOK_IMAGES_ATOL, rtol=0)


def test_detokenize_trajectory_parity(fixture):
    model, io = fixture("A")
    case = trajectory_case(io)
    kind, scale, apg = case_params(case)
    with torch.no_grad():
        _, traj = model.sample_latents(token_lists(io, kind), noise=io["detok_noise"], steps=detokenize_steps(io),
                                       guidance_scale=scale, apg=apg, return_trajectory=True)
    assert torch.equal(traj["t"], io[f"detok_{case}_step_t"])
    for ours, theirs in (("x", "step_x"), ("v_cond", "step_v_cond"), ("v_uncond", "step_v_uncond")):
        torch.testing.assert_close(traj[ours], io[f"detok_{case}_{theirs}"], atol=TRAJECTORY_ATOL, rtol=0)


def test_public_decode_is_detokenize_in_unit_range(fixture):
    # (the official numbers of `detokenize` itself, from the recorded noise: test_detokenize_parity)
    model, io = fixture("A")
    _, scale, apg = case_params(next(c for c in CASES if c.startswith("mixed_")))
    kwargs = dict(steps=detokenize_steps(io), guidance_scale=scale, apg=apg)
    size, latent_size = list(io["images"].shape[-2:]), tuple(io["detok_noise"].shape[-2:])
    mixed = keep_counts(io, "mixed")
    out = model.decode(model.make_tokens(io["tokens"], torch.tensor(mixed), image_size=size), seed=0, **kwargs)
    ref = model.detokenize(token_lists(io, "mixed"), latent_size=latent_size, seed=0, **kwargs)
    assert out.shape == io["images"].shape and float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out, ((ref + 1) / 2).clamp(0, 1), atol=1e-6, rtol=0)
    # a truncated (B, k) prefix is the same as full codes with keep_k = k
    k = keep_prefix(io)
    a = model.decode(io["tokens"][:, :k], seed=1, steps=2, image_size=size)
    b = model.decode(io["tokens"], keep_k=k, seed=1, steps=2, image_size=size)
    assert torch.equal(a, b)


def test_batched_mixed_keep_k_equals_per_image(fixture):
    model, io = fixture("A")
    codes = torch.cat([io["tokens"], io["tokens"][:1].flip(1)])  # one item more than the fixture has
    b, n = codes.shape
    keep = [[n, keep_prefix(io), n // 2 + 1][i % 3] for i in range(b)]  # all tokens, the fixture's prefix, half
    noise = torch.randn(b, *io["dec_noise"].shape[1:], generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0.9, 0.2, b)
    with torch.no_grad():
        batched_v = model.velocity(codes, noise, t, keep_k=keep)
        batched = model.sample_latents(codes, keep, noise=noise, steps=3, guidance_scale=2.5, apg=True)
        for i in range(b):
            single_v = model.velocity(codes[i:i + 1, :keep[i]], noise[i:i + 1], t[i:i + 1])
            single = model.sample_latents(codes[i:i + 1, :keep[i]], noise=noise[i:i + 1], steps=3, guidance_scale=2.5,
                                          apg=True)
            torch.testing.assert_close(batched_v[i:i + 1], single_v, atol=1e-5, rtol=0)
            torch.testing.assert_close(batched[i:i + 1], single, atol=1e-5, rtol=0)


def _perturbed_tiny(**changes) -> FlexTok:
    model = tiny(**changes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised adaLN / heads would make every velocity the same
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("scale, apg, expansion", [(1.0, False, 2), (2.5, False, 2), (4.0, True, 2), (4.0, True, 1)])
def test_sampler_equals_per_step_decoder_calls(scale, apg, expansion):
    """The sampler computes the condition once and both CFG halves in one batch, bit for bit like a full decoder
    forward per step (the official loop: conditional and unconditional calls on the same x)."""
    model = _perturbed_tiny(adaLN_expansion=expansion)
    codes = torch.randint(0, 64000, (3, 8), generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([8, 3, 1])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    steps, dec = 4, model.decoder
    quants = model.codes_to_quants(codes)
    guide = APG() if apg else None
    x = noise
    with torch.no_grad():
        for i in range(steps, 0, -1):
            tt = i / steps * torch.ones(3)
            if scale == 1.0:
                v = dec(quants, x, tt, keep, None)
            else:
                both = dec(torch.cat([quants, quants]), torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([keep, keep]),
                           torch.arange(6) >= 3)
                v = (guide or classifier_free_guidance)(both[:3], both[3:], scale)
            x = x - (1.0 / steps) * v
        sampled = model.sample_latents(codes, keep, noise=noise, steps=steps, guidance_scale=scale, apg=apg)
    assert torch.equal(sampled, x)


def test_decoder_step_api_matches_forward():
    model = _perturbed_tiny()
    dec = model.decoder
    quants = model.codes_to_quants(torch.randint(0, 64000, (2, 8), generator=torch.Generator().manual_seed(3)))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t, keep = torch.tensor([0.9, 0.4]), torch.tensor([8, 5])
    with torch.no_grad():
        cond = dec.prepare_condition(quants, keep, torch.tensor([False, True]), (8, 8))
        assert cond.registers.shape == (2, 8, 32) and cond.sizes == (16, 8) and cond.grid == (4, 4)
        v, inter = dec.step(cond, x, dec.time_embed(t), return_intermediates=True)
        ref, ref_inter = dec(quants, x, t, keep, torch.tensor([False, True]), return_intermediates=True)
        assert torch.equal(v, ref) and torch.equal(inter["patches_final"], ref_inter["patches_final"])
        # one noised input per group of condition rows: the patches are embedded once and shared
        cond2 = dec.prepare_condition(torch.cat([quants, quants]), None, torch.arange(4) >= 2, (8, 8))
        shared = dec.step(cond2, x, dec.time_embed(torch.cat([t, t])))
        full = dec(torch.cat([quants, quants]), torch.cat([x, x]), torch.cat([t, t]), None, torch.arange(4) >= 2)
        assert torch.equal(shared, full)
        with pytest.raises(ValueError, match="divide"):
            dec.step(cond2, torch.cat([x, x, x]), dec.time_embed(torch.cat([t, t])))
        with pytest.raises(ValueError, match="patch grid"):
            dec.step(cond, torch.zeros(2, 4, 4, 4), dec.time_embed(t))


def test_from_official_reads_the_checkpoint_config(fixture):
    folder = fixture.folder
    vae_config = json.loads((folder / "vae_config.json").read_text())
    _, io = fixture("A")
    model = FlexTok.from_official(str(folder / "official_state_dict.safetensors"), vae_config=vae_config,
                                  image_size=int(io["images"].shape[-1]))
    assert torch.equal(model.tokenize(io["images"]), io["tokens"])


# ----------------------------------------------------------------------------------------------------------------
# converter


def test_converter_checks_every_key(fixture):
    model_a, _ = fixture("A")
    model_b, _ = fixture("B")
    official = load_file(fixture.folder / "official_state_dict.safetensors")
    # ours -> official -> ours is the identity, and covers exactly the official keys
    back = to_official(model_a.state_dict())
    assert set(back) == set(official)
    for key, value in official.items():
        assert torch.equal(back[key], value), key
    with pytest.raises(KeyError, match="unrecognised key"):
        checkpoint_filter_fn({**official, "decoder.module_dict.dec_repa_proj.weight": torch.ones(1)}, model_a)
    with pytest.raises(KeyError, match="unrecognised key"):
        checkpoint_filter_fn({**official, "encoder.module_dict.enc_transformer.blocks.0.attn.wq.bias": torch.ones(1)},
                             model_a)
    last = f"encoder.module_dict.enc_transformer.blocks.{model_a.config.encoder_depth - 1}.mlp.fc2"
    broken = {k: v for k, v in official.items() if not k.startswith(last)}
    with pytest.raises(KeyError, match="lacks"):
        checkpoint_filter_fn(broken, model_a)
    with pytest.raises(KeyError, match="null_cond='learned'"):  # an A checkpoint into a B model
        checkpoint_filter_fn(official, model_b)
    with pytest.raises(KeyError, match="null_cond='zero'"):  # a B checkpoint into an A model
        checkpoint_filter_fn({k: v for k, v in official.items() if k not in A_ONLY}, model_a)
    registers = official["encoder.module_dict.enc_register_module.registers"]
    wrong = dict(official, **{"encoder.module_dict.enc_register_module.registers": registers.new_zeros(
        registers.shape[0] + 1, registers.shape[1])})
    with pytest.raises(ValueError, match="shape"):
        checkpoint_filter_fn(wrong, model_a)
    posembs = official["encoder.module_dict.enc_posemb_module.posembs"]
    table = dict(official, **{"encoder.module_dict.enc_posemb_module.posembs": torch.zeros_like(posembs)})
    with pytest.raises(ValueError, match="sin-cos"):
        checkpoint_filter_fn(table, model_a)
    wrapped = {k.replace("blocks.0.", "blocks.0._checkpoint_wrapped_module."): v for k, v in official.items()}
    assert set(checkpoint_filter_fn(wrapped, model_a)) == set(model_a.state_dict())
    with pytest.raises(CheckpointError, match="cannot convert"):
        load_into(FlexTok(model_a.config), broken, source="model.safetensors", filter_fn=checkpoint_filter_fn)


# ----------------------------------------------------------------------------------------------------------------
# public API facts and bad input


def tiny(**changes) -> FlexTok:
    torch.manual_seed(0)
    return FlexTok(FlexTokConfig(**{**TINY_OVERRIDES["flextok"], **changes})).eval()


def test_facts_and_registry():
    model = tiny()
    assert model.codebook_size == 64000 and model.num_codebooks == 1 and model.modality == "image"
    assert model.token_shape((3, 16, 16)) == (8,)
    for name in ("flextok-d12-d12-in1k", "flextok-d18-d18-in1k", "flextok-d18-d28-in1k", "flextok-d18-d28-dfn"):
        spec = zoo.model_info(name)
        repo = "EPFL-VILAB/" + name.replace("flextok-", "flextok_").replace("-", "_")
        assert spec.hub_file.repo_id == repo and spec.hub_file.filename == "model.safetensors"
        assert spec.hub_file.revision == "main" and "not available offline" in spec.notes
        assert spec.license == "apple-amlr" and spec.filter_fn is checkpoint_filter_fn
        assert spec.codebook_size == 64000 and spec.input_size == 256
    with torch.device("meta"):
        sizes = {n: zoo.hub.build(zoo.model_info(n)).num_parameters() / 1e9 for n in zoo.list_models("flextok*")}
    # research notes: 0.34 B / 0.95 B / 2.53 B (HF badges 0.3B / 0.9B / 3B)
    assert 0.33 < sizes["flextok-d12-d12-in1k"] < 0.35 and 0.94 < sizes["flextok-d18-d18-in1k"] < 0.96
    assert 2.5 < sizes["flextok-d18-d28-dfn"] < 2.6


def test_any_image_input_is_center_cropped(tmp_path):
    model = _perturbed_tiny()  # a fresh tiny model's zero-initialised head gives every image the same codes
    square = torch.rand(3, 16, 16)
    wide = torch.rand(3, 20, 40)
    expected = zio.resize_center_crop(wide[None], 16)
    assert expected.shape == (1, 3, 16, 16)
    zio.save_image(tmp_path / "wide.png", wide)
    pil = Image.open(tmp_path / "wide.png")
    codes = model.encode([square, wide, pil, tmp_path / "wide.png"]).codes  # one batch of mixed inputs
    assert codes.shape == (4, 8) and not torch.equal(codes[0], codes[1])  # codes that tell images apart
    assert torch.equal(codes[0], model.encode(square).codes[0])
    assert torch.equal(codes[1], model.encode(expected).codes[0])
    assert torch.equal(codes[2], codes[3])  # PIL and path give the same (8-bit) image
    # the centre crop keeps the middle: a wide image whose centre square is constant encodes like that constant
    flat = torch.rand(3, 16, 48)
    flat[:, :, 16:32] = 0.5
    assert torch.equal(model.encode(flat).codes, model.encode(torch.full((3, 16, 16), 0.5)).codes)


def test_bad_input_raises():
    model = tiny()
    good = torch.rand(2, 3, 16, 16)
    for bad, message in ((torch.rand(2, 4, 16, 16), "expected shape"), (good * 2, "values in"),
                         (torch.full((1, 3, 16, 16), float("nan")), "NaN"), ((good * 255).to(torch.uint8), "float")):
        with pytest.raises(ValueError, match=message):
            model.encode(bad)
    for bad, message in ((torch.rand(1, 3, 14, 14), "multiples"), (torch.rand(1, 3, 32, 32), "at most")):
        with pytest.raises(ValueError, match=message):
            model.encode(bad, resize="none")
    with pytest.raises(ValueError, match="resize must be"):
        model.encode(good, resize="stretch")
    codes = model.encode(good).codes
    assert codes.shape == (2, 8)
    cases = [
        (dict(tokens=codes.clone().fill_(64000)), "values must be in"),
        (dict(tokens=codes.float()), "integer codes"),
        (dict(tokens=codes[None]), "dimensions"),
        (dict(tokens=torch.cat([codes, codes], 1)), "at most 8"),
        (dict(tokens=codes, keep_k=0), "keep_k"),
        (dict(tokens=codes, keep_k=9), "keep_k"),
        (dict(tokens=codes[:, :3], keep_k=[2, 4]), r"1\.\.3"),
        (dict(tokens=codes, keep_k=[1, 2, 3]), "one value per item"),
        (dict(tokens=codes, keep_k=[1.5, 2]), "keep_k"),
        (dict(tokens=[codes[0], codes[1].repeat(3)]), "at most 8"),
        (dict(tokens=[]), "empty"),
        (dict(tokens=codes, steps=0), "steps"),
        (dict(tokens=codes, image_size=18), "multiples"),
        (dict(tokens=codes, seed=1, generator=torch.Generator()), "either"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.decode(**kwargs)
    with pytest.raises(ValueError, match="max_timestep"):
        model.velocity(codes, torch.zeros(2, 4, 8, 8), 1.5)
    with pytest.raises(ValueError, match="vae_scaling_factor"):
        tiny(vae_scaling_factor=None).encode(good)
    with pytest.raises(ValueError, match="max_timestep is not set"):
        tiny(max_timestep=None).decode(codes)
    with pytest.raises(ValueError, match="null_cond"):
        FlexTokConfig(null_cond="random")


def test_tiny_roundtrip_shapes_and_variable_lengths():
    model = _perturbed_tiny()  # not tiny(): its zero-initialised heads make the decoder ignore the tokens
    x = torch.rand(3, 3, 16, 16)
    tokens = model.encode(x)
    out = model.decode(tokens, seed=0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a list of different lengths decodes in one batch, like full codes with per-item keep_k
    listed = model.decode([tokens.codes[0, :2], tokens.codes[1:2, :5], tokens.codes[2]], seed=0)
    keyed = model.decode(tokens.codes, keep_k=torch.tensor([2, 5, 8]), seed=0)
    torch.testing.assert_close(listed, keyed, atol=1e-6, rtol=0)
    assert (keyed - model.decode(tokens.codes, seed=0)).abs().max() > 1e-3  # the kept lengths matter
    # the seed is what fixes the noise: every item draws it from its own generator seeded with it
    seeded = model.decode(tokens.codes, seed=5, guidance_scale=1.0)
    c = model.config
    shape = (c.vae_latent_channels, c.image_size // c.vae_downsample, c.image_size // c.vae_downsample)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(5)) for _ in range(3)])
    latents = model.sample_latents(tokens.codes, noise=noise, steps=c.default_steps, guidance_scale=1.0)
    assert torch.equal(seeded, ((model.vae_decode(latents) + 1) / 2).clamp(0, 1))
    assert (seeded - model.decode(tokens.codes, seed=6, guidance_scale=1.0)).abs().max() > 0.01


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of `a` against the reference `b`."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def check_bf16_layout(model: FlexTok) -> None:
    """The encoder and decoder transformers in bfloat16, the VAE and FSQ in float32."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point():
            fp32 = name.startswith(("vae.", "regularizer."))
            assert t.dtype == (torch.float32 if fp32 else torch.bfloat16), (name, t.dtype)


def test_bfloat16_runs_with_fp32_vae_and_fsq():
    # perturbed weights: a fresh tiny model's zero-initialised heads make every encoder output and velocity 0, which
    # no precision can get wrong
    ref, model = _perturbed_tiny(), _perturbed_tiny().cast(dtype=torch.bfloat16)
    check_bf16_layout(model)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        # the VAE is float32: bit for bit the float32 model's, both ways
        latents = ref.vae_encode(x * 2 - 1)
        assert torch.equal(model.vae_encode(x * 2 - 1), latents)
        assert torch.equal(model.vae_decode(latents), ref.vae_decode(latents))
        out, out32 = model.encode_latents(latents), ref.encode_latents(latents)
        assert out["prequant"].dtype == torch.float32  # FSQ quantises float32 values
        noise = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        t = torch.tensor([0.3, 0.7, 0.55, 0.9] * 2)  # timesteps bf16 cannot hold exactly
        codes = ref.encode(x).codes
        v = {u: (model.velocity(codes, noise, t, uncond=u), ref.velocity(codes, noise, t, uncond=u))
             for u in (False, True)}
        temb, temb32 = model.decoder.time_embed(t), ref.decoder.time_embed(t)
    tokens = model.encode(x)
    assert tokens.codes.dtype == torch.int64 and tokens.codes.shape == codes.shape
    images, images32 = model.decode(codes, seed=0, steps=5), ref.decode(codes, seed=0, steps=5)
    assert images.dtype == torch.float32 and images.shape == x.shape
    # Close to float32, not another model. Measured (CPU): 95.3 % of the 64 codes equal, encoder output 0.88 %
    # relative error, time embedding 0.42 %, velocities 0.61 % (conditional and null condition), images decoded from
    # the same codes and noise in 5 steps 0.24 %. Thresholds: 4x the errors (codes: 4x the 4.7 % that differ).
    assert (tokens.codes == codes).float().mean() >= 0.8
    assert rel_err(out["prequant"], out32["prequant"]) < 0.035
    assert rel_err(temb, temb32) < 0.017
    assert max(rel_err(*pair) for pair in v.values()) < 0.025, {u: rel_err(*pair) for u, pair in v.items()}
    assert rel_err(images, images32) < 0.01


def held_out_photos(size: int = 64) -> torch.Tensor:
    """The three committed held-out photographs, centre-cropped to `size` (the bundled tiny model's input)."""
    from zoo import data

    return torch.stack([zio.resize_center_crop(image[None], size)[0] for image, in data.samples("image").values()])


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_zoo_load_places_every_tensor(device):
    # "meta" shows without a GPU that `device=` reaches every parameter and buffer
    model = zoo.load("flextok-tiny-64px", device=device)
    tensors = [*model.parameters(), *model.buffers()]
    assert model.device.type == device and all(t.device.type == device for t in tensors)
    assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())  # no dtype= : float32


def test_zoo_load_bfloat16_keeps_vae_and_fsq_fp32_and_stays_close():
    model, ref = zoo.load("flextok-tiny-64px", dtype=torch.bfloat16), zoo.load("flextok-tiny-64px")
    check_bf16_layout(model)
    x = held_out_photos()
    with torch.inference_mode():
        latents = ref.vae_encode(x * 2 - 1)
        assert torch.equal(model.vae_encode(x * 2 - 1), latents)  # the VAE is float32, bit for bit
        out, out32 = model.encode_latents(latents), ref.encode_latents(latents)
        codes = out32["tokens"]
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        t = torch.tensor([0.93, 0.52, 0.11])
        v = {u: (model.velocity(codes, noise, t, uncond=u), ref.velocity(codes, noise, t, uncond=u))
             for u in (False, True)}
    assert out["prequant"].dtype == torch.float32
    images, images32 = model.decode(codes, seed=0, steps=5), ref.decode(codes, seed=0, steps=5)
    # Measured on the three held-out photos (CPU): 95.8 % of the 192 codes equal, encoder output 0.69 % relative
    # error, velocities 0.80 % / 0.87 % (null condition), images decoded from the same codes and noise 0.23 %
    # (57-63 dB PSNR against float32). Thresholds: 4x the errors (codes: 4x the 4.2 % that differ).
    assert (out["tokens"] == codes).float().mean() >= 0.8
    assert torch.equal(model.encode(x).codes, out["tokens"])
    assert rel_err(out["prequant"], out32["prequant"]) < 0.03
    assert max(rel_err(*pair) for pair in v.values()) < 0.035, {u: rel_err(*pair) for u, pair in v.items()}
    assert images.dtype == torch.float32 and rel_err(images, images32) < 0.01


def test_sample_posterior_draws_from_the_vae_posterior():
    x = held_out_photos()
    default, sampling = zoo.load("flextok-tiny-64px"), zoo.load("flextok-tiny-64px", sample_posterior=True)
    assert default.config.sample_posterior is False and sampling.config.sample_posterior is True
    scale = default.config.vae_scaling_factor
    with torch.inference_mode():
        posterior = default.vae.encode(x * 2 - 1).latent_dist
        mode_codes = default.encode_latents(posterior.mode() * scale)["tokens"]
        # sampling: (mean + std * eps) * scale, eps drawn from the generator passed to encode
        eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(3))
        assert torch.equal(sampling.vae_encode(x * 2 - 1, torch.Generator().manual_seed(3)),
                           (posterior.mean + posterior.std * eps) * scale)
    # default: deterministic, the posterior mode, whatever generator is passed
    assert torch.equal(default.encode(x).codes, mode_codes)
    assert torch.equal(default.encode(x, generator=torch.Generator().manual_seed(1)).codes, mode_codes)

    def drawn(seed):
        return sampling.encode(x, generator=torch.Generator().manual_seed(seed)).codes

    first = drawn(0)
    assert torch.equal(drawn(0), first)  # the same generator seed, the same draw
    # another seed, another draw (measured: 23 % of the 192 codes differ between seeds 0 and 1, 17 % from the mode)
    assert (drawn(1) != first).float().mean() > 0.05 and (first != mode_codes).float().mean() > 0.04
