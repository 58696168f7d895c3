"""Dynamic token routing (vit_accel.routing): exact when every token takes the full path, reversible, real subsets
with the MACs they cost, a trainable budget, and argument errors."""

import pytest
import torch
from timm.models.vision_transformer import Block, VisionTransformer

import vit_accel
from vit_accel import routing
from vit_accel.flops import count_macs

KWARGS = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=4, num_classes=10)


def vit(**overrides):
    torch.manual_seed(0)
    return VisionTransformer(**{**KWARGS, **overrides}).eval()


def scramble_routers(model, bias=0.0):
    """Give the routers random weights so that they route part of the tokens away."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            block.router.proj.weight.copy_(torch.randn(block.router.proj.weight.shape, generator=g))
            block.router.proj.bias.fill_(bias)


@pytest.mark.parametrize("overrides", [{}, dict(init_values=0.1, reg_tokens=2)])
def test_full_path_is_exact_and_unpatch_restores(overrides):
    model = vit(**overrides)
    x = torch.randn(3, 3, 32, 32)
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(x)
        for kwargs in (dict(force="full"), {}):  # fresh routers also route everything to the full path
            vit_accel.patch(model, "routing", **kwargs)
            assert any(".router." in k for k in model.state_dict())
            assert torch.equal(model(x), ref)
            assert routing.stats(model).full_fraction.tolist() == [1.0] * 3
            vit_accel.unpatch(model)
            assert set(model.state_dict()) == keys and type(model.blocks) is torch.nn.Sequential
            assert not hasattr(model.blocks, "routing_stats") and not hasattr(model.blocks[0], "router")
            assert all(type(b) is Block for b in model.blocks)
        assert torch.equal(model(x), ref)


def test_subsets_cut_macs_and_match_batch_of_one():
    model = vit()
    x = torch.randn(4, 3, 32, 32)
    vit_accel.patch(model, "routing")
    full_blocks = routing.block_macs(model.blocks[0], torch.tensor(65)).item() * 4
    scramble_routers(model)
    with torch.no_grad():
        out = model(x)
        st = routing.stats(model)
        assert (st.tokens[:, 1:] <= st.tokens[:, :-1]).all()  # early exit: token sets only shrink
        assert 0.05 < st.full_fraction.mean() < 0.8 and (st.macs < 0.8 * full_blocks).all()
        for i in range(4):  # padding of the batch changes nothing; the per-image count is what runs alone
            torch.testing.assert_close(model(x[i:i + 1]), out[i:i + 1], rtol=0, atol=1e-5)
            report = count_macs(model, x[i:i + 1])
            assert report.total - report.patch_embed - report.head == st.macs[i].item()
            assert report.tokens_in == st.tokens[i].tolist()


def test_no_early_exit_routes_each_block_afresh():
    model = vit()
    vit_accel.patch(model, "routing", early_exit=False)
    scramble_routers(model)
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    gates = routing.stats(model).gates
    assert ((gates[1:] > gates[:-1]).any()) and set(gates.unique().tolist()) == {0.0, 1.0}


def test_training_forward_matches_subsets_and_budget_trains():
    model = vit()
    vit_accel.patch(model, "routing", target=0.4)
    scramble_routers(model, bias=0.5)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the masked training step computes what the subset step computes
        model(x)
        gates = routing.stats(model).gates
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for block, gate in zip(model.blocks, gates):
            subset = model.blocks._subset_step(block, h, gate > 0)
            torch.testing.assert_close(model.blocks._train_step(block, h, gate), subset, rtol=0, atol=1e-5)
            h = subset
    routing.set_noise(model, 0.0)  # noise-free training samples are the eval decisions
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), model.eval()(x), rtol=0, atol=1e-5)
    routing.set_noise(model, 1.0)
    model.train()
    routers = [p for n, p in model.named_parameters() if ".router." in n]
    opt = torch.optim.SGD(routers, lr=2.0)
    torch.manual_seed(0)
    for _ in range(30):
        model(x)
        loss = routing.budget_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(routing.stats(model).full_fraction.mean().item() - 0.4) < 0.15


def test_bad_arguments():
    model = vit()
    for kwargs, match in ((dict(target=0), "target"), (dict(target=1.5), "target"), (dict(target=True), "target"),
                          (dict(tau=0.0), "tau"), (dict(force="skip"), "force")):
        with pytest.raises(ValueError, match=match):
            vit_accel.patch(model, "routing", **kwargs)
    assert not vit_accel.is_patched(model) and not hasattr(model.blocks[0], "router")
    with pytest.raises(ValueError, match="prefix"):
        vit_accel.patch(vit(class_token=False, global_pool="avg"), "routing")
    with pytest.raises(TypeError, match="VisionTransformer"):
        vit_accel.patch(torch.nn.Linear(2, 2), "routing")
    vit_accel.patch(model, "routing")
    with pytest.raises(ValueError, match="run a forward"):
        routing.stats(model)
    with pytest.raises(ValueError, match="noise"):
        routing.set_noise(model, -1.0)
    with pytest.raises(ValueError, match="already patched"):
        vit_accel.patch(model, "routing")
