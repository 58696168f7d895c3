"""The FlexTok training recipe runs end to end at a tiny size, saves complete checkpoints and resumes bit-exactly."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tokenizers_img.flextok import FlexTok, FlexTokConfig, FlexTokVAE
from tokenizers_img.flextok.train import (FlexTokTrainConfig, RectifiedFlowObjective, VAETrainConfig,
                                          model_from_checkpoint, photo_pyramid, random_crops, sample_keep_k,
                                          train_tokenizer, train_vae)
import zoo
from zoo import evaluation as zoo_evaluation
from zoo.training import COMPLETE

from conftest import TINY_OVERRIDES
from test_training import Interrupted, assert_same_checkpoint, interrupter


def photos():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.rand(3, 40, 56, generator=g), "b": torch.rand(3, 32, 32, generator=g)}


def test_crops_and_keep_k():
    levels = photo_pyramid(photos(), 16)
    assert all(min(level.shape[-2:]) >= 16 for level in levels) and len(levels) >= 3
    crops = random_crops(levels, 16, 10, seed=0)
    assert crops.shape == (10, 3, 16, 16) and torch.equal(crops, random_crops(levels, 16, 10, seed=0))
    keep = sample_keep_k(1000, 8, "pow2")
    assert set(keep.tolist()) == {1, 2, 4, 8}
    assert set(sample_keep_k(1000, 6, "pow2").tolist()) == {1, 2, 4, 6}
    assert 1 <= int(sample_keep_k(100, 8, "uniform").min()) and int(sample_keep_k(100, 8, "uniform").max()) <= 8


def test_vae_then_tokenizer_train_and_resume_bit_exact(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = FlexTokConfig(**TINY_OVERRIDES["flextok"])
    vae_tc = VAETrainConfig(steps=2, batch_size=2, crops=8, crop_size=8, save_every=1)  # 8 px crops of a 16 px model
    vae, scaling = train_vae(config, vae_tc, photos(), str(tmp_path / "vae"))
    assert scaling > 0 and (tmp_path / "vae" / "checkpoints" / "checkpoint_1" / COMPLETE).read_text() == "2"
    # zoo eval --checkpoint on the VAE stage: the VAE, with the scaling factor of RUN/vae/vae.json
    (tmp_path / "vae" / "vae.json").write_text(json.dumps({"vae_scaling_factor": scaling}))
    vae_spec = SimpleNamespace(architecture="flextok-vae", config=TINY_OVERRIDES["flextok"])
    vae_model = model_from_checkpoint(tmp_path / "vae" / "checkpoints" / "checkpoint_1", vae_spec)
    assert isinstance(vae_model, FlexTokVAE) and vae_model.config.vae_scaling_factor == scaling
    assert all(torch.equal(v, vae_model.vae.state_dict()[k]) for k, v in vae.state_dict().items())

    def fresh() -> FlexTok:
        model = FlexTok(FlexTokConfig(**{**TINY_OVERRIDES["flextok"], "vae_scaling_factor": scaling}))
        model.vae.load_state_dict(vae.state_dict())
        return model

    before = fresh().state_dict()
    tc = FlexTokTrainConfig(steps=4, batch_size=2, crops=8, save_every=2, autoencoder_steps=1, keep_all_prob=0.5)
    whole = train_tokenizer(fresh(), tc, photos(), str(tmp_path / "whole"))
    after = whole.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vae."))   # the VAE stays frozen
    assert not torch.equal(before["decoder.head.proj.weight"], after["decoder.head.proj.weight"])
    # interrupted after its step-2 checkpoint, then resumed: bit-exactly the uninterrupted run
    interrupt = interrupter(monkeypatch)
    interrupt(2)
    with pytest.raises(Interrupted):
        train_tokenizer(fresh(), tc, photos(), str(tmp_path / "cut"))
    interrupt(None)
    resumed = train_tokenizer(fresh(), tc, photos(), str(tmp_path / "cut"), resume=True)
    for key, value in after.items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    final = Path("checkpoints") / "checkpoint_1"
    assert (tmp_path / "cut" / final / COMPLETE).read_text() == "4"
    assert_same_checkpoint(tmp_path / "whole" / final, tmp_path / "cut" / final)
    assert torch.isfinite(RectifiedFlowObjective(resumed, 0.1, "pow2")(whole.vae_encode(torch.rand(2, 3, 16, 16))))


def test_flow_loss_reaches_the_encoder_through_fsq():
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig(**TINY_OVERRIDES["flextok"]))
    for name, p in model.decoder.named_parameters():  # leave the zero (adaLN-zero) init, as after some training
        if "adaLN_modulation" in name or "head" in name:
            torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.normal_(model.encoder.head.proj.weight, std=0.05)
    latents = torch.randn(4, TINY_OVERRIDES["flextok"]["vae_latent_channels"], 2, 2)
    loss = RectifiedFlowObjective(model, 0.0, "pow2")(latents)
    loss.backward()
    assert model.encoder.head.proj.weight.grad.abs().sum() > 0   # straight through the FSQ rounding
    assert all(p.grad is None for p in model.vae.parameters())


def test_timestep_options_pure_noise_and_shift(monkeypatch):
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig(**TINY_OVERRIDES["flextok"]))
    seen = []
    real = model.decoder.forward
    monkeypatch.setattr(model.decoder, "forward", lambda q, x, t, *a: seen.append(t.clone()) or real(q, x, t, *a))
    latents = torch.randn(512, TINY_OVERRIDES["flextok"]["vae_latent_channels"], 2, 2)
    objective = RectifiedFlowObjective(model, 0.0, "pow2", logit_mean=1.0)
    with torch.no_grad():
        objective(latents)
        objective.pure_noise = True
        objective(latents)
    shifted, pure = seen
    assert 0.65 < float(shifted.mean()) < 0.75  # E[sigmoid(N(1, 1))] = 0.70 (official, logit_mean 0: 0.5)
    assert torch.equal(pure, torch.ones_like(pure))


def test_keep_all_prob_sets_full_length_items(monkeypatch):
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig(**TINY_OVERRIDES["flextok"]))
    n = model.config.num_registers
    seen = []
    real = model.decoder.forward
    monkeypatch.setattr(model.decoder, "forward",
                        lambda q, x, t, keep, *a: seen.append(keep.clone()) or real(q, x, t, keep, *a))
    latents = torch.randn(1000, TINY_OVERRIDES["flextok"]["vae_latent_channels"], 2, 2)
    with torch.no_grad():
        for prob in (0.0, 0.5, 1.0):
            RectifiedFlowObjective(model, 0.0, "pow2", keep_all_prob=prob)(latents)
    share = [float((keep == n).float().mean()) for keep in seen]
    # pow2 alone keeps all n tokens for 1 in log2(n) + 1 items; keep_all_prob adds that share on top
    pow2_share = 1 / len({2 ** i for i in range(n.bit_length())} | {n})
    assert abs(share[0] - pow2_share) < 0.06 and abs(share[1] - (0.5 + 0.5 * pow2_share)) < 0.06 and share[2] == 1.0
    with pytest.raises(ValueError, match="keep_all_prob"):
        RectifiedFlowObjective(model, 0.0, "pow2", keep_all_prob=1.5)


def test_tokenizer_stage_starts_from_the_bundled_vae(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import train_flextok

    monkeypatch.setattr(sys, "argv", ["train_flextok.py", "--stage", "tokenizer", "--vae-from", "flextok-vae-tiny-64px",
                                      "--out", str(tmp_path / "run"), "--export", str(tmp_path / "export"),
                                      "--steps", "1", "--batch-size", "2", "--crops", "4", "--threads", "1"])
    train_flextok.main()
    vae = zoo.load("flextok-vae-tiny-64px")
    tok = zoo.load(f"local-dir:{tmp_path / 'export'}")
    assert tok.config.vae_scaling_factor == vae.config.vae_scaling_factor
    assert all(torch.equal(v, tok.vae.state_dict()[k]) for k, v in vae.vae.state_dict().items())
    # the run folder records the VAE, as zoo eval --checkpoint expects
    recorded = json.loads((tmp_path / "run" / "vae" / "vae.json").read_text())
    assert recorded["vae_scaling_factor"] == vae.config.vae_scaling_factor
    # zoo eval --checkpoint: the tokenizer of the training checkpoint, with the run folder's scaling factor
    checkpoint = tmp_path / "run" / "tokenizer" / "checkpoints" / "checkpoint_0"
    again = zoo_evaluation.model_from_checkpoint(checkpoint, "flextok-tiny-64px")
    assert again.config.vae_scaling_factor == vae.config.vae_scaling_factor
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in again.state_dict().items())
