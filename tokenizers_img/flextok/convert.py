"""Official FlexTok checkpoints and configs -> this implementation.

State dict (``FlexTok.state_dict()`` of apple/ml-flextok, as in the Hub ``model.safetensors``), key by key:

* ``vae.vae.*`` (diffusers AutoencoderKL) -> ``vae.*``;
* ``encoder.module_dict.enc_*`` -> ``encoder.*`` (patch projection, sin-cos table, registers, blocks, head);
* ``decoder.module_dict.dec_*`` -> ``decoder.*``; the 1-D register position embedding ``[1, 1, D, N]`` becomes
  ``(N, D)``;
* activation-checkpoint wrappers (``_checkpoint_wrapped_module.``) are looked through; any other unknown key, a
  missing key or a wrong shape is an error. FSQ has no keys (its buffers are not persistent).

Config: the official model is a Hydra tree of ``_target_`` class paths (``config.json`` of the Hub repos, and the
same tree in the safetensors ``__metadata__``). `config_from_official` *interprets* it: only the module layout of
the released tokenizers is accepted, every ``_target_`` must be on a fixed allow-list (`ALLOWED_TARGETS`), every
argument that changes the computation is checked, and nothing named in the config is ever imported or instantiated.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from zoo.checkpoints import unwrap_state_dict

# ----------------------------------------------------------------------------------------------------------------
# state dict

_ENC = "encoder.module_dict."
_DEC = "decoder.module_dict."
_BLOCK_PARAMS = r"(attn\.(wq|wk|wv|proj)\.weight|mlp\.fc[123]\.weight|adaLN_modulation\.1\.(weight|bias))"

_FIXED = {
    _ENC + "enc_patch_emb.patch_proj.weight": "encoder.patch_proj.weight",
    _ENC + "enc_patch_emb.patch_proj.bias": "encoder.patch_proj.bias",
    _ENC + "enc_posemb_module.posembs": "encoder.posembs",
    _ENC + "enc_register_module.registers": "encoder.registers",
    _ENC + "enc_to_latents.proj.weight": "encoder.head.proj.weight",
    _ENC + "enc_to_latents.proj.bias": "encoder.head.proj.bias",
    _DEC + "dec_from_latents.proj.weight": "decoder.from_latents.weight",
    _DEC + "dec_from_latents.proj.bias": "decoder.from_latents.bias",
    _DEC + "dec_registers_posemb_module.posembs": "decoder.register_posemb",
    _DEC + "dec_nested_dropout.dropout_mask_token": "decoder.mask_token",
    _DEC + "dec_latent_dropout.nullcond": "decoder.null_cond",
    _DEC + "dec_noise_patch_emb.patch_proj.weight": "decoder.patch_proj.weight",
    _DEC + "dec_noise_patch_emb.patch_proj.bias": "decoder.patch_proj.bias",
    _DEC + "dec_patches_posemb_module.posembs": "decoder.posembs",
    _DEC + "dec_time_embedder.mlp.0.weight": "decoder.time_embed.mlp.0.weight",
    _DEC + "dec_time_embedder.mlp.0.bias": "decoder.time_embed.mlp.0.bias",
    _DEC + "dec_time_embedder.mlp.2.weight": "decoder.time_embed.mlp.2.weight",
    _DEC + "dec_time_embedder.mlp.2.bias": "decoder.time_embed.mlp.2.bias",
    _DEC + "dec_to_patches.adaLN_modulation.1.weight": "decoder.head.adaLN_modulation.1.weight",
    _DEC + "dec_to_patches.adaLN_modulation.1.bias": "decoder.head.adaLN_modulation.1.bias",
    _DEC + "dec_to_patches.proj.weight": "decoder.head.proj.weight",
    _DEC + "dec_to_patches.proj.bias": "decoder.head.proj.bias",
}
_FIXED_INVERSE = {v: k for k, v in _FIXED.items()}


def _map_key(key: str) -> str:
    key = key.replace("_checkpoint_wrapped_module.", "")
    if key.startswith("vae.vae."):
        return "vae." + key[len("vae.vae."):]
    if key in _FIXED:
        return _FIXED[key]
    m = re.fullmatch(rf"(encoder|decoder)\.module_dict\.(enc|dec)_transformer\.blocks\.(\d+)\.{_BLOCK_PARAMS}", key)
    if m and (m.group(1)[:3] == m.group(2)):
        return f"{m.group(1)}.blocks.{m.group(3)}.{key.split(f'blocks.{m.group(3)}.', 1)[1]}"
    raise KeyError(f"unrecognised key {key!r} (not part of an official FlexTok checkpoint)")


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official FlexTok state dict for `model`, checking every key and shape."""
    state_dict = unwrap_state_dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ours = _map_key(key)
        if ours in out:
            raise KeyError(f"two official keys map to {ours!r} (second: {key!r})")
        if ours == "decoder.register_posemb":
            if value.ndim != 4 or value.shape[:2] != (1, 1):
                raise ValueError(f"{key}: expected a 1-D learned table of shape [1, 1, D, N], got {tuple(value.shape)}")
            value = value[0, 0].t().contiguous()
        out[ours] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(out))
    if missing:
        hint = ""
        if "decoder.null_cond" in missing:
            hint = " (the checkpoint has no learned null condition: use null_cond='zero')"
        elif any(k.startswith("decoder.head.adaLN_modulation") for k in missing):
            hint = " (the checkpoint's decoder head has no adaLN: use head_adaLN=False)"
        raise KeyError(f"official checkpoint lacks {len(missing)} keys the model needs, e.g. {missing[:5]}{hint}")
    for key, value in out.items():
        if key not in expected:
            hint = ""
            if key == "decoder.null_cond":
                hint = " (the checkpoint has a learned null condition: use null_cond='learned')"
            elif key.startswith("decoder.head.adaLN_modulation"):
                hint = " (the checkpoint's decoder head has adaLN: use head_adaLN=True)"
            raise KeyError(f"converted key {key!r} has no place in the model (wrong config for this checkpoint?){hint}")
        if value.shape != expected[key].shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} != model shape "
                             f"{tuple(expected[key].shape)} (wrong config for this checkpoint?)")
    for key in ("encoder.posembs", "decoder.posembs"):  # fixed sin-cos tables: must be the ones the model builds
        mine = expected[key]
        if not mine.is_meta and not torch.allclose(out[key].float(), mine.float().cpu(), atol=1e-5, rtol=0):
            raise ValueError(f"{key}: the checkpoint's positional table is not the 2-D sin-cos table of this config")
    return out


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the official key layout (e.g. to run the official code on these weights)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("vae."):
            out["vae.vae." + key[4:]] = value
        elif key in _FIXED_INVERSE:
            if key == "decoder.register_posemb":
                value = value.t()[None, None].contiguous()
            out[_FIXED_INVERSE[key]] = value
        else:
            m = re.fullmatch(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)", key)
            if m is None:
                raise KeyError(f"no official name for {key!r}")
            part = m.group(1)
            out[f"{part}.module_dict.{part[:3]}_transformer.blocks.{m.group(2)}.{m.group(3)}"] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Hydra config reader (allow-list; nothing is imported)

ALLOWED_TARGETS = frozenset({
    "flextok.flextok_wrapper.FlexTok",
    "flextok.flextok_wrapper.FlexTokFromHub",
    "flextok.vae_wrapper.StableDiffusionVAE",
    "flextok.model.utils.wrappers.SequentialModuleDictWrapper",
    "flextok.model.utils.dict_ops.PerSampleOp",
    "flextok.model.utils.dict_ops.channels_first_to_last",
    "flextok.model.utils.dict_ops.channels_last_to_first",
    "flextok.model.preprocessors.patching.PatchEmbedder",
    "flextok.model.utils.posembs.PositionalEmbeddingAdder",
    "flextok.model.preprocessors.registers.Registers1D",
    "flextok.model.preprocessors.flex_seq_packing.BlockWiseSequencePacker",
    "flextok.model.trunks.transformers.FlexTransformer",
    "flextok.model.postprocessors.seq_unpacking.SequenceUnpacker",
    "flextok.model.postprocessors.heads.LinearHead",
    "flextok.model.postprocessors.heads.ToPatchesLinearHead",
    "flextok.model.preprocessors.linear.LinearLayer",
    "flextok.model.preprocessors.token_dropout.MaskedNestedDropout",
    "flextok.model.preprocessors.nullcond.LearnedNullCond",
    "flextok.model.preprocessors.nullcond.ZeroNullCond",
    "flextok.model.preprocessors.time_embedding.TimestepEmbedder",
    "flextok.regularizers.quantize_fsq.FSQ",
    "flextok.flow_matching.noise_modules.MinRFNoiseModule",
    "flextok.flow_matching.pipelines.MinRFPipeline",
})

_P = "flextok.model."
# The module layout of the released tokenizers: name -> accepted targets. Order is checked too.
ENCODER_LAYOUT = {
    "enc_channels_to_last": {_P + "utils.dict_ops.PerSampleOp"},
    "enc_patch_emb": {_P + "preprocessors.patching.PatchEmbedder"},
    "enc_posemb_module": {_P + "utils.posembs.PositionalEmbeddingAdder"},
    "enc_register_module": {_P + "preprocessors.registers.Registers1D"},
    "enc_seq_packer": {_P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker"},
    "enc_transformer": {_P + "trunks.transformers.FlexTransformer"},
    "enc_unpacker": {_P + "postprocessors.seq_unpacking.SequenceUnpacker"},
    "enc_to_latents": {_P + "postprocessors.heads.LinearHead"},
}
DECODER_LAYOUT = {
    "dec_from_latents": {_P + "preprocessors.linear.LinearLayer"},
    "dec_registers_posemb_module": {_P + "utils.posembs.PositionalEmbeddingAdder"},
    "dec_nested_dropout": {_P + "preprocessors.token_dropout.MaskedNestedDropout"},
    "dec_latent_dropout": {_P + "preprocessors.nullcond.LearnedNullCond", _P + "preprocessors.nullcond.ZeroNullCond"},
    "dec_noise_channels_to_last": {_P + "utils.dict_ops.PerSampleOp"},
    "dec_noise_patch_emb": {_P + "preprocessors.patching.PatchEmbedder"},
    "dec_patches_posemb_module": {_P + "utils.posembs.PositionalEmbeddingAdder"},
    "dec_seq_packer": {_P + "preprocessors.flex_seq_packing.BlockWiseSequencePacker"},
    "dec_time_embedder": {_P + "preprocessors.time_embedding.TimestepEmbedder"},
    "dec_transformer": {_P + "trunks.transformers.FlexTransformer"},
    "dec_unpacker": {_P + "postprocessors.seq_unpacking.SequenceUnpacker"},
    "dec_repa_unpacker": {_P + "postprocessors.seq_unpacking.SequenceUnpacker"},  # optional, no parameters
    "dec_to_patches": {_P + "postprocessors.heads.ToPatchesLinearHead"},
    "dec_channels_to_first": {_P + "utils.dict_ops.PerSampleOp"},
}
OPTIONAL_MODULES = {"dec_repa_unpacker"}

# Arguments that do not change inference numerics (data-dict keys, training-only knobs, efficiency switches).
_IGNORED_ARGS = {
    "use_act_checkpoint", "compile_block_mask", "return_materialized_mask", "pad_to_multiple", "max_seq_len",
    "dropout_prob", "size_sampling_mode", "drop_quant_p", "corrupt_tokens_p", "min_corrupt_tokens_p",
    "apply_corrupt_tokens_p", "packed_call", "ln", "intermediate_layers", "frozen", "use_mup_readout",
    "weight_init_style", "n_min", "ordering_mode", "emb_packing_fn_write_key", "dtype_override", "out_channels",
    "force_vae_encode", "compile_encode_fn", "learnable_logvar", "logvar_init", "drop_path_rate",
    "zero_init_query_proj",
    "replace_with_single_token", "temb_as_tokens",
}
# Arguments that must keep the official default (this implementation supports only that value).
_FIXED_ARGS = {
    "qkv_bias": False, "proj_bias": False, "mlp_bias": False, "drop": 0.0, "gated_mlp": True, "qk_norm": True,
    "flatten_patches": False, "posemb_scaling": "absolute", "adaLN_bias": True,
    "norm_layer": None, "act_layer": None, "score_mod_read_key": None, "rope_forward_read_key": None,
    "extra_registers_write_key": None, "posemb_write_key": None, "noise_read_key": None,
}


class OfficialConfigError(ValueError):
    """An official config this implementation cannot interpret."""


def _check_targets(node: Any, path: str = "config") -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and target not in ALLOWED_TARGETS:
            raise OfficialConfigError(
                f"{path}: _target_ {target!r} is not on the allow-list of known FlexTok classes; refusing to "
                "interpret this config (nothing in it is ever imported)")
        for k, v in node.items():
            _check_targets(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_targets(v, f"{path}[{i}]")


def _args(node: dict, path: str, used: set[str]) -> dict:
    """Check that every argument is either used, ignorable, or at its supported fixed value."""
    for key, value in node.items():
        if key in ("_target_", "_partial_") or key in used or key in _IGNORED_ARGS:
            continue
        if key.endswith(("_key", "_keys")) and key not in _FIXED_ARGS:
            continue  # data-dict plumbing
        if key in _FIXED_ARGS:
            if value is not None and _FIXED_ARGS[key] is not None and value != _FIXED_ARGS[key]:
                raise OfficialConfigError(f"{path}.{key} = {value!r} is not supported (only {_FIXED_ARGS[key]!r})")
            if value is not None and _FIXED_ARGS[key] is None:
                raise OfficialConfigError(f"{path}.{key} = {value!r} is not supported by this implementation")
            continue
        raise OfficialConfigError(f"{path}: unknown argument {key!r} = {value!r}")
    return node


def _modules(section: dict, layout: dict, path: str) -> dict:
    if section.get("_target_") != "flextok.model.utils.wrappers.SequentialModuleDictWrapper":
        raise OfficialConfigError(f"{path}: expected a SequentialModuleDictWrapper, got {section.get('_target_')!r}")
    modules = section.get("module_dict")
    if not isinstance(modules, dict):
        raise OfficialConfigError(f"{path}.module_dict: missing")
    expected = [n for n in layout if n in modules or n not in OPTIONAL_MODULES]
    if list(modules) != expected:
        raise OfficialConfigError(
            f"{path}: module layout {list(modules)} is not the released FlexTok layout {list(layout)}")
    for name, node in modules.items():
        if node.get("_target_") not in layout[name]:
            raise OfficialConfigError(f"{path}.{name}: unexpected _target_ {node.get('_target_')!r}")
    return modules


def _per_sample_op(node: dict, fn: str, path: str) -> None:
    op = node.get("per_sample_op") or {}
    if op.get("_target_") != f"flextok.model.utils.dict_ops.{fn}":
        raise OfficialConfigError(f"{path}.per_sample_op: expected {fn}, got {op.get('_target_')!r}")
    _args(node, path, {"per_sample_op"})


def config_from_official(config: dict, *, vae_config: dict | None = None, **overrides: Any):
    """Interpret an official FlexTok Hydra config (``config.json`` / safetensors metadata) as a `FlexTokConfig`.

    Args:
        config: the Hydra dict (``{"vae", "encoder", "decoder", "regularizer", ...}``, optionally with a
            top-level ``_target_``, or wrapped as ``{"config": {...}}``).
        vae_config: the diffusers ``AutoencoderKL`` config when the VAE architecture is not the official base one
            (e.g. ``hf_hub_path`` is set, or the base dict was changed as in the parity fixture).
        overrides: FlexTokConfig fields to set afterwards (e.g. ``image_size``).
    """
    from .model import FlexTokConfig

    if set(config) == {"config"} and isinstance(config["config"], dict):
        config = config["config"]
    _check_targets(config)
    required = ("vae", "encoder", "decoder", "regularizer")
    missing = [k for k in required if not isinstance(config.get(k), dict)]
    if missing:
        raise OfficialConfigError(f"config: missing sections {missing}")
    extra = set(config) - {"_target_", "vae", "encoder", "decoder", "regularizer", "flow_matching_noise_module",
                           "pipeline"}
    if extra:
        raise OfficialConfigError(f"config: unknown top-level entries {sorted(extra)}")

    # VAE
    vae = config["vae"]
    if vae.get("_target_") != "flextok.vae_wrapper.StableDiffusionVAE":
        raise OfficialConfigError(f"config.vae: unexpected _target_ {vae.get('_target_')!r}")
    _args(vae, "config.vae", {"latent_channels", "scaling_factor", "hf_hub_path", "sample_posterior"})
    if vae.get("hf_hub_path") and vae_config is None:
        raise OfficialConfigError(
            f"config.vae: the VAE architecture and scaling factor come from the Hub VAE {vae['hf_hub_path']!r}; "
            "pass its config.json as vae_config")
    arch = dict(vae_config or {})
    for key in ("down_block_types", "up_block_types"):
        kinds = set(arch.get(key, ()))
        if kinds - {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
            raise OfficialConfigError(f"vae_config.{key}: unsupported block types {sorted(kinds)}")
    for key, value in (("in_channels", 3), ("out_channels", 3), ("use_quant_conv", True),
                       ("use_post_quant_conv", True), ("shift_factor", None), ("latents_mean", None),
                       ("latents_std", None)):
        if arch.get(key, value) != value:
            raise OfficialConfigError(f"vae_config.{key} = {arch[key]!r} is not supported (only {value!r})")
    if arch.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise OfficialConfigError(f"vae_config: expected an AutoencoderKL config, got {arch['_class_name']!r}")
    # Without hf_hub_path the wrapper builds the base VAE with its own latent_channels.
    latent_channels = int(arch["latent_channels"] if vae.get("hf_hub_path") else vae.get("latent_channels", 16))
    scaling = vae.get("scaling_factor") or arch.get("scaling_factor")
    block_out = tuple(arch.get("block_out_channels", (128, 256, 512, 512)))

    enc = _modules(config["encoder"], ENCODER_LAYOUT, "config.encoder")
    dec = _modules(config["decoder"], DECODER_LAYOUT, "config.decoder")
    _per_sample_op(enc["enc_channels_to_last"], "channels_first_to_last", "config.encoder.enc_channels_to_last")
    _per_sample_op(dec["dec_noise_channels_to_last"], "channels_first_to_last",
                   "config.decoder.dec_noise_channels_to_last")
    _per_sample_op(dec["dec_channels_to_first"], "channels_last_to_first", "config.decoder.dec_channels_to_first")
    for name in ("enc_unpacker",):
        _args(enc[name], f"config.encoder.{name}", set())
    for name in ("dec_unpacker", "dec_repa_unpacker"):
        if name in dec:
            _args(dec[name], f"config.decoder.{name}", set())

    def patch_emb(node, path):
        _args(node, path, {"channels_in", "dim", "patch_sizes"})
        sizes = list(node["patch_sizes"])
        if len(sizes) != 2 or sizes[0] != sizes[1]:
            raise OfficialConfigError(f"{path}.patch_sizes: only square 2-D patches are supported, got {sizes}")
        if int(node["channels_in"]) != latent_channels:
            raise OfficialConfigError(f"{path}.channels_in {node['channels_in']} != VAE latents {latent_channels}")
        return int(node["dim"]), int(sizes[0])

    def sincos(node, path, dim):
        _args(node, path, {"dim", "max_sizes", "posemb_type"})
        if node.get("posemb_type", "sincos") != "sincos" or len(node["max_sizes"]) != 2:
            raise OfficialConfigError(f"{path}: only 2-D sincos patch position embeddings are supported")
        if int(node["dim"]) != dim:
            raise OfficialConfigError(f"{path}.dim {node['dim']} != {dim}")
        return tuple(int(s) for s in node["max_sizes"])

    def transformer(node, path, dim, adaLN: bool, packer: dict):
        _args(node, path, {"dim", "depth", "head_dim", "mlp_ratio", "adaLN_expansion", "num_heads"})
        if not node.get("block_mask_read_key") or node["block_mask_read_key"] != packer.get("block_mask_write_key"):
            raise OfficialConfigError(f"{path}: the attention mask of the sequence packer is not used")
        if int(node["dim"]) != dim:
            raise OfficialConfigError(f"{path}.dim {node['dim']} != {dim}")
        if bool(node.get("adaLN_emb_read_key")) != adaLN:
            raise OfficialConfigError(f"{path}: adaLN conditioning is {'required' if adaLN else 'not supported'} here")
        if node.get("num_heads") is not None:
            raise OfficialConfigError(f"{path}.num_heads: give head_dim instead")
        return int(node.get("depth", 12)), int(node.get("head_dim", 64)), float(node.get("mlp_ratio", 4.0))

    # encoder
    enc_dim, enc_patch = patch_emb(enc["enc_patch_emb"], "config.encoder.enc_patch_emb")
    enc_grid = sincos(enc["enc_posemb_module"], "config.encoder.enc_posemb_module", enc_dim)
    reg = _args(enc["enc_register_module"], "config.encoder.enc_register_module", {"dim", "n_max", "n_eval"})
    if reg.get("n_eval") not in (None, reg["n_max"]):
        raise OfficialConfigError("config.encoder.enc_register_module.n_eval: only n_eval = n_max is supported")
    if int(reg["dim"]) != enc_dim:
        raise OfficialConfigError("config.encoder.enc_register_module.dim does not match the encoder width")
    if reg.get("ordering_mode", "nested") != "nested":
        raise OfficialConfigError("config.encoder.enc_register_module.ordering_mode: only 'nested' is supported")
    num_registers = int(reg["n_max"])
    packer = _args(enc["enc_seq_packer"], "config.encoder.enc_seq_packer", {"mask_mode", "per_subseq_embs"})
    if packer.get("mask_mode") != "causal_last":
        raise OfficialConfigError("config.encoder.enc_seq_packer.mask_mode: only 'causal_last' is supported")
    enc_depth, enc_head_dim, enc_mlp = transformer(enc["enc_transformer"], "config.encoder.enc_transformer",
                                                   enc_dim, adaLN=False, packer=packer)
    head = _args(enc["enc_to_latents"], "config.encoder.enc_to_latents", {"dim", "dim_out", "proj_bias"})
    if not head.get("proj_bias", True) or int(head["dim"]) != enc_dim:
        raise OfficialConfigError("config.encoder.enc_to_latents: expected LayerNorm -> Linear(dim -> d) with bias")
    if head.get("adaLN_emb_read_key"):
        raise OfficialConfigError("config.encoder.enc_to_latents: adaLN is not supported in the encoder head")

    # regularizer
    fsq = config["regularizer"]
    if fsq.get("_target_") != "flextok.regularizers.quantize_fsq.FSQ":
        raise OfficialConfigError(f"config.regularizer: unexpected _target_ {fsq.get('_target_')!r}")
    _args(fsq, "config.regularizer", {"levels"})
    levels = tuple(int(v) for v in fsq["levels"])
    if int(head["dim_out"]) != len(levels):
        raise OfficialConfigError(f"encoder head dim_out {head['dim_out']} != number of FSQ levels {len(levels)}")

    # decoder
    lin = _args(dec["dec_from_latents"], "config.decoder.dec_from_latents", {"dim_in", "dim", "proj_bias"})
    dec_dim = int(lin["dim"])
    if int(lin["dim_in"]) != len(levels) or not lin.get("proj_bias", True):
        raise OfficialConfigError("config.decoder.dec_from_latents: expected Linear(len(levels) -> dim) with bias")
    rpos = _args(dec["dec_registers_posemb_module"], "config.decoder.dec_registers_posemb_module",
                 {"dim", "max_sizes", "posemb_type"})
    if rpos.get("posemb_type") not in ("learnable_sum", "learnable_prod") or list(rpos["max_sizes"]) != [num_registers]:
        raise OfficialConfigError(
            "config.decoder.dec_registers_posemb_module: expected a 1-D learned table over the registers "
            f"(max_sizes [{num_registers}]), got {rpos.get('posemb_type')!r} {rpos.get('max_sizes')}")
    nested = _args(dec["dec_nested_dropout"], "config.decoder.dec_nested_dropout", {"dim"})
    if not nested.get("eval_keep_k_read_key", "eval_keep_k"):
        raise OfficialConfigError("config.decoder.dec_nested_dropout: eval_keep_k_read_key is off (no truncation)")
    nullc = _args(dec["dec_latent_dropout"], "config.decoder.dec_latent_dropout", {"dim"})
    if nullc.get("eval_drop_flag_read_key", "eval_dropout_mask") != "eval_dropout_mask":
        raise OfficialConfigError("config.decoder.dec_latent_dropout: the null condition is not wired to "
                                  "'eval_dropout_mask' (the key the official sampler sets)")
    null_cond = "learned" if nullc["_target_"].endswith("LearnedNullCond") else "zero"
    if nullc.get("replace_with_single_token"):
        raise OfficialConfigError("config.decoder.dec_latent_dropout.replace_with_single_token is not supported")
    dec_dim2, dec_patch = patch_emb(dec["dec_noise_patch_emb"], "config.decoder.dec_noise_patch_emb")
    dec_grid = sincos(dec["dec_patches_posemb_module"], "config.decoder.dec_patches_posemb_module", dec_dim)
    if dec_dim2 != dec_dim or dec_patch != enc_patch or dec_grid != enc_grid:
        raise OfficialConfigError("encoder and decoder patch size / positional grid / decoder width disagree")
    dpack = _args(dec["dec_seq_packer"], "config.decoder.dec_seq_packer", {"mask_mode", "per_subseq_embs"})
    if dpack.get("mask_mode") != "full":
        raise OfficialConfigError("config.decoder.dec_seq_packer.mask_mode: only 'full' is supported")
    if list(dpack.get("input_list_read_keys", [])) != ["dec_patches", "dec_quants"]:
        raise OfficialConfigError("config.decoder.dec_seq_packer: expected the sequence [dec_patches, dec_quants]")
    temb = _args(dec["dec_time_embedder"], "config.decoder.dec_time_embedder",
                 {"dim", "max_timestep", "frequency_embedding_size"})
    dec_depth, dec_head_dim, dec_mlp = transformer(dec["dec_transformer"], "config.decoder.dec_transformer",
                                                   dec_dim, adaLN=True, packer=dpack)
    expansion = int(dec["dec_transformer"].get("adaLN_expansion", 1))
    per_subseq = bool(dpack.get("per_subseq_embs", False))
    if not dpack.get("emb_packing_fn_write_key") or not dec["dec_transformer"].get("adaLN_packing_fn_read_key"):
        raise OfficialConfigError("config.decoder: the transformer's adaLN packing function is not wired")
    if (per_subseq and expansion != 2) or (not per_subseq and expansion != 1):
        raise OfficialConfigError(
            f"config.decoder: adaLN_expansion {expansion} with per_subseq_embs {per_subseq} is not supported "
            "(use 2 with per-sub-sequence modulation, or 1 without)")
    if enc_mlp != dec_mlp:
        raise OfficialConfigError("encoder and decoder mlp_ratio differ")
    out_head = _args(dec["dec_to_patches"], "config.decoder.dec_to_patches",
                     {"dim", "channels_out", "patch_sizes", "proj_bias"})
    if not out_head.get("proj_bias", True):
        raise OfficialConfigError("config.decoder.dec_to_patches: a projection without bias is not supported")
    if int(out_head["channels_out"]) != latent_channels or list(out_head["patch_sizes"]) != [dec_patch, dec_patch]:
        raise OfficialConfigError("config.decoder.dec_to_patches: channels_out / patch_sizes do not match the VAE")
    if out_head.get("adaLN_packing_fn_read_key"):
        raise OfficialConfigError("config.decoder.dec_to_patches: a head adaLN packing function is not supported")
    head_adaLN = bool(out_head.get("adaLN_emb_read_key"))
    for node, what in ((nested, "dec_nested_dropout"), (nullc, "dec_latent_dropout"),
                       (temb, "dec_time_embedder"), (out_head, "dec_to_patches")):
        if "dim" in node and int(node["dim"]) != dec_dim:
            raise OfficialConfigError(f"config.decoder.{what}.dim {node['dim']} != {dec_dim}")
    for section in ("flow_matching_noise_module", "pipeline"):
        if section in config:
            _args(config[section], f"config.{section}", set())

    grid_px = enc_grid[0] * enc_patch * 2 ** (len(block_out) - 1)
    fields = dict(
        image_size=grid_px, vae_latent_channels=latent_channels, vae_block_out_channels=block_out,
        vae_layers_per_block=int(arch.get("layers_per_block", 2)),
        vae_norm_num_groups=int(arch.get("norm_num_groups", 32)),
        vae_act_fn=str(arch.get("act_fn", "silu")),
        vae_mid_block_add_attention=bool(arch.get("mid_block_add_attention", True)),
        vae_scaling_factor=None if scaling is None else float(scaling),
        sample_posterior=bool(vae.get("sample_posterior", True)), patch_size=enc_patch, posemb_grid=enc_grid,
        encoder_dim=enc_dim, encoder_depth=enc_depth, encoder_head_dim=enc_head_dim, decoder_dim=dec_dim,
        decoder_depth=dec_depth, decoder_head_dim=dec_head_dim, mlp_ratio=enc_mlp, num_registers=num_registers,
        fsq_levels=levels, adaLN_expansion=expansion, max_timestep=float(temb.get("max_timestep", 1000.0)),
        time_frequency_size=int(temb.get("frequency_embedding_size", 256)), null_cond=null_cond, head_adaLN=head_adaLN,
    )
    fields.update(overrides)
    return FlexTokConfig(**fields)


def official_vae_config(config) -> dict:
    """The diffusers ``AutoencoderKL`` config of `config`'s VAE (a `FlexTokConfig`): the official ``VAE_BASE_CFG``
    with this model's architecture. It is the `vae_config` that `config_from_official` needs for a non-base VAE, and
    what ``flextok.vae_wrapper.VAE_BASE_CFG`` must be updated with before instantiating the official model (its
    wrapper builds the VAE from that module-level dict, not from the Hydra config)."""
    n = len(config.vae_block_out_channels)
    return {
        "_class_name": "AutoencoderKL", "act_fn": config.vae_act_fn,
        "block_out_channels": list(config.vae_block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": 3, "out_channels": 3, "latent_channels": config.vae_latent_channels,
        "layers_per_block": config.vae_layers_per_block, "norm_num_groups": config.vae_norm_num_groups,
        "mid_block_add_attention": config.vae_mid_block_add_attention, "sample_size": 1024, "scaling_factor": None,
    }


def to_official_config(config, *, sdpa_masks: bool = False) -> dict:
    """A `FlexTokConfig` -> the official Hydra config (the inverse of `config_from_official`).

    Only targets of `ALLOWED_TARGETS` are used, with the module names and data-dict keys of the official layout.
    ``config_from_official(to_official_config(c), vae_config=official_vae_config(c)) == c`` holds when
    ``c.image_size`` is the size of the positional grid and the `decode` defaults (``default_steps``,
    ``default_guidance_scale``, ``default_apg``) are the class defaults: these are not part of the official config
    (pass them to `config_from_official` as overrides otherwise). Training-only arguments get inference values (no
    activation checkpointing, ``n_min`` 1, dropout probability 0.1).

    Args:
        config: the model config; ``max_timestep`` must be set (the official class would silently use 1000).
        sdpa_masks: materialise the attention masks (``return_materialized_mask``): needed by the official SDPA
            fallback (``FlexAttention.use_flex_attention = False``), e.g. on CPU. Otherwise the packers build
            flex_attention BlockMasks (the official default).
    """
    c = config
    if c.max_timestep is None:
        raise ValueError("to_official_config: config.max_timestep is not set (the official default 1000 would "
                         "silently apply)")
    enc_dim, dec_dim, p, levels = c.encoder_dim, c.decoder_dim, c.patch_size, list(c.fsq_levels)
    grid = list(c.posemb_grid)

    def module(name: str, **kwargs) -> dict:
        return {"_target_": f"flextok.model.{name}", **kwargs}

    def per_sample(read: str, write: str, fn: str) -> dict:
        return module("utils.dict_ops.PerSampleOp", read_key=read, write_key=write,
                      per_sample_op={"_target_": f"flextok.model.utils.dict_ops.{fn}", "_partial_": True})

    def packer(inputs: list[str], prefix: str, mask_write: str, mask_mode: str, **extra) -> dict:
        return module("preprocessors.flex_seq_packing.BlockWiseSequencePacker", input_list_read_keys=inputs,
                      packed_seq_write_key=f"{prefix}_packed_seq", block_mask_write_key=mask_write,
                      inner_packed_shapes_write_key=f"{prefix}_ps_inner",
                      outer_packed_shapes_write_key=f"{prefix}_ps_outer", mask_mode=mask_mode, pad_to_multiple=128,
                      **extra, return_materialized_mask=sdpa_masks)

    def unpacker(read: str, writes: list[str], prefix: str) -> dict:
        return module("postprocessors.seq_unpacking.SequenceUnpacker", packed_seq_read_key=read,
                      inner_seq_write_keys=writes, inner_packed_shapes_read_key=f"{prefix}_ps_inner",
                      outer_packed_shapes_read_key=f"{prefix}_ps_outer")

    def patch_emb(read: str, write: str, n_write: str, dim: int) -> dict:
        return module("preprocessors.patching.PatchEmbedder", input_tensor_list_read_key=read,
                      patches_list_write_key=write, n_patches_write_key=n_write, channels_in=c.vae_latent_channels,
                      dim=dim, patch_sizes=[p, p], flatten_patches=False)

    def sincos(key: str, dim: int) -> dict:
        return module("utils.posembs.PositionalEmbeddingAdder", read_key=key, write_key=key, dim=dim,
                      max_sizes=grid, posemb_type="sincos", posemb_scaling="absolute")

    encoder = {
        "enc_channels_to_last": per_sample("vae_latents", "vae_latents_bhwc", "channels_first_to_last"),
        "enc_patch_emb": patch_emb("vae_latents_bhwc", "enc_vae_latents_patched", "enc_n_patches", enc_dim),
        "enc_posemb_module": sincos("enc_vae_latents_patched", enc_dim),
        "enc_register_module": module(
            "preprocessors.registers.Registers1D", input_tensor_list_read_key="enc_vae_latents_patched",
            register_sizes_read_write_key="register_sizes", registers_write_key="enc_registers", dim=enc_dim,
            n_min=1, n_max=c.num_registers, size_sampling_mode="uniform", ordering_mode="nested"),
        "enc_seq_packer": packer(["enc_vae_latents_patched", "enc_registers"], "enc", "enc_block_mask",
                                 "causal_last"),
        "enc_transformer": module(
            "trunks.transformers.FlexTransformer", input_seq_read_key="enc_packed_seq",
            output_seq_write_key="enc_packed_seq", dim=enc_dim, depth=c.encoder_depth, head_dim=c.encoder_head_dim,
            mlp_ratio=c.mlp_ratio, block_mask_read_key="enc_block_mask", use_act_checkpoint=False),
        "enc_unpacker": unpacker("enc_packed_seq", ["enc_vae_latents_patched", "enc_registers"], "enc"),
        "enc_to_latents": module(
            "postprocessors.heads.LinearHead", read_key="enc_registers", write_key="enc_registers", dim=enc_dim,
            dim_out=len(levels), use_mup_readout=False, weight_init_style="zero", dtype_override=None),
    }
    if c.null_cond == "learned":
        null_cond = module("preprocessors.nullcond.LearnedNullCond", read_write_key="dec_quants", dim=dec_dim,
                           eval_drop_flag_read_key="eval_dropout_mask", dropout_prob=0.1)
    else:
        null_cond = module("preprocessors.nullcond.ZeroNullCond", read_write_key="dec_quants",
                           eval_drop_flag_read_key="eval_dropout_mask", dropout_prob=0.1)
    head = module("postprocessors.heads.ToPatchesLinearHead", read_key="dec_patches",
                  write_key="vae_latents_reconst_bhwc", dim=dec_dim, channels_out=c.vae_latent_channels,
                  patch_sizes=[p, p], use_mup_readout=False, weight_init_style="zero", dtype_override=None)
    if c.head_adaLN:
        head["adaLN_emb_read_key"] = "dec_temb"
    decoder = {
        "dec_from_latents": module("preprocessors.linear.LinearLayer", read_key="enc_registers_quant",
                                   write_key="dec_quants", dim_in=len(levels), dim=dec_dim),
        "dec_registers_posemb_module": module(
            "utils.posembs.PositionalEmbeddingAdder", read_key="dec_quants", write_key="dec_quants", dim=dec_dim,
            max_sizes=[c.num_registers], posemb_type="learnable_sum", posemb_scaling="absolute"),
        "dec_nested_dropout": module(
            "preprocessors.token_dropout.MaskedNestedDropout", read_write_key="dec_quants", dim=dec_dim,
            eval_keep_k_read_key="eval_keep_k", train_keep_k_write_key="train_keep_k", size_sampling_mode="uniform"),
        "dec_latent_dropout": null_cond,
        "dec_noise_channels_to_last": per_sample("vae_latents_noised", "vae_latents_noised_bhwc",
                                                 "channels_first_to_last"),
        "dec_noise_patch_emb": patch_emb("vae_latents_noised_bhwc", "dec_patches", "dec_n_patches", dec_dim),
        "dec_patches_posemb_module": sincos("dec_patches", dec_dim),
        "dec_seq_packer": packer(["dec_patches", "dec_quants"], "dec", "dec_sa_block_mask", "full",
                                 emb_packing_fn_write_key="dec_adaLN_packing_fn",
                                 per_subseq_embs=c.adaLN_expansion == 2),
        "dec_time_embedder": module(
            "preprocessors.time_embedding.TimestepEmbedder", timesteps_read_key="timesteps",
            time_embedding_write_key="dec_temb", dim=dec_dim, frequency_embedding_size=c.time_frequency_size,
            max_timestep=float(c.max_timestep)),
        "dec_transformer": module(
            "trunks.transformers.FlexTransformer", input_seq_read_key="dec_packed_seq",
            output_seq_write_key="dec_packed_seq", dim=dec_dim, depth=c.decoder_depth, head_dim=c.decoder_head_dim,
            mlp_ratio=c.mlp_ratio, block_mask_read_key="dec_sa_block_mask", adaLN_emb_read_key="dec_temb",
            adaLN_packing_fn_read_key="dec_adaLN_packing_fn", adaLN_expansion=c.adaLN_expansion,
            use_act_checkpoint=False),
        "dec_unpacker": unpacker("dec_packed_seq", ["dec_patches", "dec_quants"], "dec"),
        "dec_to_patches": head,
        "dec_channels_to_first": per_sample("vae_latents_reconst_bhwc", "vae_latents_reconst",
                                            "channels_last_to_first"),
    }
    wrapper = "flextok.model.utils.wrappers.SequentialModuleDictWrapper"
    return {
        "_target_": "flextok.flextok_wrapper.FlexTok",
        "vae": {
            "_target_": "flextok.vae_wrapper.StableDiffusionVAE", "images_read_key": "rgb",
            "vae_latents_read_key": "vae_latents_reconst", "vae_latents_write_key": "vae_latents",
            "images_reconst_write_key": "rgb_reconst", "vae_kl_loss_write_key": None,
            "latent_channels": c.vae_latent_channels, "scaling_factor": c.vae_scaling_factor, "dtype_override": "fp32",
            "hf_hub_path": None, "sample_posterior": c.sample_posterior, "frozen": True,
        },
        "encoder": {"_target_": wrapper, "module_dict": encoder},
        "decoder": {"_target_": wrapper, "module_dict": decoder},
        "regularizer": {
            "_target_": "flextok.regularizers.quantize_fsq.FSQ", "latents_read_key": "enc_registers",
            "quants_write_key": "enc_registers_quant", "tokens_write_key": "tokens", "levels": levels,
            "drop_quant_p": 0.0, "packed_call": True,
        },
        "flow_matching_noise_module": {
            "_target_": "flextok.flow_matching.noise_modules.MinRFNoiseModule", "clean_images_read_key": "vae_latents",
            "noised_images_write_key": "vae_latents_noised", "timesteps_write_key": "timesteps",
            "sigmas_write_key": "sigmas", "ln": True, "noise_write_key": "flow_noise",
        },
        "pipeline": {
            "_target_": "flextok.flow_matching.pipelines.MinRFPipeline", "_partial_": True, "noise_read_key": None,
            "target_sizes_read_key": None, "latents_read_key": "enc_registers_quant",
            "timesteps_read_key": "timesteps", "noised_images_read_key": "vae_latents_noised",
            "reconst_write_key": "vae_latents_reconst", "out_channels": c.vae_latent_channels,
        },
    }


def parse_safetensors_metadata(metadata: dict[str, str]) -> dict:
    """The Hydra config stored by the official ``save_safetensors``: one entry per top-level key, the value being
    Python ``str()`` of that sub-dict. Parsed with `ast.literal_eval` (literals only, never code); plain strings stay
    strings."""
    out = {}
    for key, value in metadata.items():
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def read_official_config(path: str | Path) -> dict:
    """The Hydra dict of an official ``config.json`` or ``model.safetensors`` (its metadata)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if not metadata:
            raise OfficialConfigError(f"{path}: no config in the safetensors metadata")
        return parse_safetensors_metadata(metadata)
    return json.loads(path.read_text())


# The released VAE repos' commit shas were not available offline: their config is read from the main branch.
VAE_REVISION = "main"


def hub_vae_config(config_dict: dict) -> dict | None:
    """The diffusers config of the Hub VAE an official config names in ``vae.hf_hub_path`` (through the zoo's one
    downloader: pinned revision, HF cache, the same offline message), or None when it names none."""
    vae = config_dict.get("config", config_dict).get("vae")
    hub_path = vae.get("hf_hub_path") if isinstance(vae, dict) else None
    if not hub_path:
        return None
    from zoo.hub import download
    from zoo.registry import HubFile

    path = download(HubFile(str(hub_path), "config.json", VAE_REVISION), what=f"the FlexTok VAE {hub_path}")
    return json.loads(path.read_text())


def config_from_checkpoint(path: str | Path) -> dict:
    """Registry hook (`ModelSpec.config_from_checkpoint`): the `FlexTokConfig` fields of an official checkpoint,
    read from its own safetensors metadata through the allow-list, with its Hub VAE's config where it names one
    (so the VAE scaling factor and the time embedder's max_timestep are the checkpoint's)."""
    official = read_official_config(path)
    return dataclasses.asdict(config_from_official(official, vae_config=hub_vae_config(official)))


def load_official(cls, source: str | Path, *, vae_config: dict | None = None, **overrides: Any):
    """Build `cls` (FlexTok) from an official checkpoint's own config and strictly load its weights."""
    from zoo.checkpoints import load_into, read_state_dict

    source_path = Path(source)
    if source_path.is_file():
        config_dict, weights = read_official_config(source_path), source_path
    elif source_path.is_dir():
        weights = source_path / "model.safetensors"
        cfg_path = source_path / "config.json"
        config_dict = read_official_config(cfg_path if cfg_path.is_file() else weights)
    else:
        from zoo.hub import download
        from zoo.registry import HubFile

        repo_id, _, revision = str(source).partition("@")
        weights = download(HubFile(repo_id, "model.safetensors", revision or "main"), what=repo_id)
        config_dict = read_official_config(weights)
    if vae_config is None:
        vae_config = hub_vae_config(config_dict)
    config = config_from_official(config_dict, vae_config=vae_config, **overrides)
    model = cls(config)
    load_into(model, read_state_dict(weights), source=str(weights), filter_fn=checkpoint_filter_fn)
    return model.eval()
