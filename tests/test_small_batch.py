"""zoo.small_batch: few-row float32 CPU products routed through ``(W @ x.T).T``; everything else unchanged."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.small_batch import MAX_ROWS, small_batch_linear


@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (1, 4, 24), (2, 2, 24)])
@pytest.mark.parametrize("bias", [False, True])
def test_routed_products_match_linear(shape, bias):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40, bias=bias)
    x = torch.randn(shape)
    with small_batch_linear():
        y = layer(x)
    rows = x.reshape(-1, 24)
    routed = (layer.weight @ (rows if len(rows) > 1 else rows.expand(2, -1)).t()).t()[: len(rows)]
    if bias:
        routed = routed + layer.bias
    assert y.shape == (*shape[:-1], 40) and y.is_contiguous()
    assert torch.equal(y.reshape(-1, 40), routed)  # it took the routed path
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x", [torch.randn(MAX_ROWS + 1, 24), torch.randn(2, 24, dtype=torch.float64)])
def test_other_products_run_unchanged(x):
    weight = torch.randn(40, 24, dtype=x.dtype)
    with small_batch_linear():
        y = F.linear(x, weight)
    assert torch.equal(y, F.linear(x, weight))


def test_disabled_and_autograd_untouched():
    weight = torch.randn(40, 24, requires_grad=True)
    x = torch.randn(2, 24)
    with small_batch_linear(enabled=False):
        assert torch.equal(F.linear(x, weight), x @ weight.t())
    with small_batch_linear():
        F.linear(x, weight).sum().backward()  # still differentiable
    torch.testing.assert_close(weight.grad, x.sum(0).expand(40, -1))
