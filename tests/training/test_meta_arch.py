import torch

from training.head import DINOHead
from training.meta_arch import DINO


def _views(cfg, b=4):
    g = cfg.crops.global_size
    loc = cfg.crops.local_size
    n = cfg.crops.local_number
    return [torch.randn(b, 3, g, g), torch.randn(b, 3, g, g), torch.randn(n * b, 3, loc, loc)]


def test_teacher_starts_equal_and_is_not_trained(micro_config):
    model = DINO(micro_config())
    for (_, s), (_, t) in zip(
        model.student.named_parameters(), model.teacher.named_parameters(), strict=True
    ):
        assert torch.equal(s, t)
        assert not t.requires_grad


def test_ema_update(micro_config):
    model = DINO(micro_config())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.9)
    for t0, t, s in zip(
        before, model.teacher.parameters(), model.student.parameters(), strict=True
    ):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)


def test_weight_decay_groups(micro_config):
    model = DINO(micro_config())
    decay, no_decay = model.param_groups()
    names = {id(p): n for n, p in model.student.named_parameters()}
    assert decay["apply_wd"] and not no_decay["apply_wd"]
    assert no_decay["weight_decay"] == 0.0
    for p in no_decay["params"]:
        assert names[id(p)].endswith(".bias") or p.ndim == 1
    for p in decay["params"]:
        assert p.ndim > 1 and not names[id(p)].endswith(".bias")
    # Norm layers and biases are never decayed; linear weights are.
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert any(names[id(p)].endswith("qkv.weight") for p in decay["params"])


def test_forward_backward_and_last_layer_freezing(micro_config):
    cfg = micro_config()
    model = DINO(cfg)
    out = model.forward_backward(_views(cfg), teacher_temp=0.04)
    assert torch.isfinite(out["loss"])
    last = model.student.head.last_layer_parameters()
    assert any(p.grad is not None for p in last)
    model.cancel_last_layer_grads()
    assert all(p.grad is None for p in last)
    # Frozen parameters do not move under AdamW even with weight decay.
    opt = torch.optim.AdamW(model.param_groups(), lr=0.1, weight_decay=0.5)
    before = [p.clone() for p in last]
    opt.step()
    assert all(torch.equal(b, p) for b, p in zip(before, last, strict=True))
    assert model.dino_loss.center.abs().sum() > 0  # the centre moved


def test_norm_last_layer_fixes_gain():
    head = DINOHead(16, out_dim=32, hidden_dim=16, bottleneck_dim=8, norm_last_layer=True)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)
    free = DINOHead(16, out_dim=32, hidden_dim=16, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32) and out.abs().max() <= 1 + 1e-5  # unit prototypes · unit input


def test_per_parameter_gradient_clipping(micro_config):
    model = DINO(micro_config())
    for p in model.student.parameters():
        p.grad = torch.full_like(p, 10.0)
    model.clip_gradients(3.0)
    for p in model.student.parameters():
        assert p.grad.norm() <= 3.0 + 1e-4


def test_koleo_gets_the_global_views_when_locals_share_their_size(micro_config):
    # local_size == global_size puts every view in one resolution group; KoLeo must still see
    # only the 2 global views (2B rows), not all V·B.
    cfg = micro_config("crops.local_size=32")
    model = DINO(cfg)
    b = 3
    crops = [torch.randn(b, 3, 32, 32) for _ in range(2)] + [torch.randn(2 * b, 3, 32, 32)]
    out, cls = model.student(crops)
    assert out.shape[0] == 4 * b and cls.shape[0] == 2 * b
    feats = model.student.backbone(torch.cat(crops[:2]))
    assert torch.allclose(cls, feats, atol=1e-5)


def test_prototypes_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    head = DINOHead(48, out_dim=512, hidden_dim=64, bottleneck_dim=32, norm_last_layer=False)
    z = torch.randn(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.prototypes(z)
        full = head(torch.randn(16, 48))
    assert logits.dtype == full.dtype == torch.float32
    w = head.last_layer.weight  # the weight-normalised prototypes, fp32
    reference = torch.nn.functional.normalize(z, dim=-1) @ w.t()
    assert torch.allclose(logits, reference, atol=1e-6)
