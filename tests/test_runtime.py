"""Runtime plumbing: learning-rate schedule, explicit attention while training on CPU, the fused optimizer."""
import pytest
import torch

from tprune_core import runtime as R
from tprune_core.models import create_model


def test_lr_schedule_warmup_then_cosine():
    lrs = [R.lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lrs[-1] < 2e-5 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_training_attention_is_explicit_on_cpu_same_gradients_and_restored():
    torch.manual_seed(0)
    model = create_model("audiomae", "tiny", 32, 4, depth=2).train()
    x, y = torch.randn(3, 32, 128), torch.tensor([0, 1, 3])
    fused = _grads(model, x, y)
    with R.training_attention(model, torch.device("cpu")):
        assert [b.attn.fused_attn for b in model.blocks] == [False, False]
        explicit = _grads(model, x, y)
    assert [b.attn.fused_attn for b in model.blocks] == [True, True]
    assert torch.allclose(fused, explicit, atol=1e-5, rtol=1e-4)
    # Restored even when training fails; other devices keep the fused path.
    with pytest.raises(RuntimeError), R.training_attention(model, torch.device("cpu")):
        raise RuntimeError("boom")
    assert all(b.attn.fused_attn for b in model.blocks)
    with R.training_attention(model, torch.device("cuda")):
        assert all(b.attn.fused_attn for b in model.blocks)


def test_optimizer_is_fused_adamw():
    model = create_model("ast", "tiny", 32, 4, depth=1)
    opt = R.adamw(R.param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.999))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
