"""Models: token layout of both families, their pooling, and loading official checkpoints (built here in the
official key layouts and shapes, since no real weights exist on this machine)."""
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block

from tprune_core.errors import CheckpointError, ConfigError
from tprune_core.models import AudioViT, create_model, load_official_checkpoint, patch_grid, patch_pixels

pytestmark = pytest.mark.usefixtures("one_thread")

D, DEPTH = 192, 12  # size "tiny"


def token_index(family, t, f, frames, mel):
    """Token index of the patch at time block t, frequency block f, written from the official models' layouts."""
    if family == "ast":   # image (mel, frames): rows are frequency, tokens frequency-major
        return f * (frames // 16) + t
    return t * (mel // 16) + f   # AudioMAE: image (frames, mel), time-major


@pytest.mark.parametrize("family", ["ast", "audiomae"])
def test_architecture(family):
    for size, (dim, heads) in {"tiny": (192, 3), "small": (384, 6)}.items():
        with torch.device("meta"):   # shapes only: no time spent on weight init
            m = create_model(family, size, frames=96, num_classes=7, mel=64)
        assert isinstance(m, AudioViT) and m.family == family
        assert m.embed_dim == dim and len(m.blocks) == 12 and m.blocks[0].attn.num_heads == heads
        assert m.patch_embed.proj.in_channels == 1
        assert m.patch_embed.proj.kernel_size == (16, 16) and m.patch_embed.proj.stride == (16, 16)
        assert patch_grid(m) == ((4, 6) if family == "ast" else (6, 4))
        assert m.num_prefix_tokens == (2 if family == "ast" else 1)
        assert m.pos_embed.shape == (1, m.num_prefix_tokens + 24, dim)
        assert m.head.out_features == 7
    if family == "audiomae":
        assert m.fc_norm.eps == 1e-6 and m.blocks[0].norm1.eps == 1e-6


@pytest.mark.parametrize("family", ["ast", "audiomae"])
def test_token_order_and_patch_pixels(family):
    frames, mel = 48, 64
    torch.manual_seed(0)
    m = create_model(family, "tiny", frames, 5, mel=mel).eval()
    x = torch.randn(2, frames, mel)
    w, bias = m.patch_embed.proj.weight[:, 0], m.patch_embed.proj.bias   # (D, 16, 16): image rows x cols
    with torch.no_grad():
        tokens = m.patch_embed(m.to_image(x))
    pixels = patch_pixels(m, x)
    assert tokens.shape == (2, (frames // 16) * (mel // 16), D)
    for t in range(frames // 16):
        for f in range(mel // 16):
            patch = x[:, 16 * t:16 * t + 16, 16 * f:16 * f + 16]                # (B, frames, mel)
            img = patch.transpose(1, 2) if family == "ast" else patch           # as the official image
            i = token_index(family, t, f, frames, mel)
            expect = torch.einsum("drc,brc->bd", w, img) + bias
            torch.testing.assert_close(tokens[:, i], expect, atol=1e-5, rtol=1e-5)
            assert torch.equal(pixels[:, i], img.reshape(2, 256))


@pytest.mark.parametrize("family", ["ast", "audiomae"])
def test_pooling_and_head(family):
    torch.manual_seed(1)
    m = create_model(family, "tiny", 32, 5).eval()
    x = torch.randn(2, 32, 128)
    with torch.no_grad():
        feats = m.forward_features(x)                   # after the final norm
        out = m(x)
        if family == "ast":   # mean of CLS and distillation token -> mlp_head (LayerNorm + Linear)
            pooled = (feats[:, 0] + feats[:, 1]) / 2
        else:                 # CLS never read out: mean of the patch tokens -> fc_norm -> head
            pooled = feats[:, 1:].mean(dim=1)
        expect = m.head(F.layer_norm(pooled, (D,), m.fc_norm.weight, m.fc_norm.bias, m.fc_norm.eps))
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    if family == "audiomae":   # changing the CLS output alone leaves the prediction unchanged
        feats2 = feats.clone()
        feats2[:, 0] += 10
        torch.testing.assert_close(m.forward_head(feats2), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, name", [
    (dict(family="vit", size="tiny", frames=64), "family"),
    (dict(family="ast", size="huge", frames=64), "size"),
    (dict(family="ast", size="tiny", frames=100), "frames"),
    (dict(family="audiomae", size="tiny", frames=0), "frames"),
    (dict(family="audiomae", size="tiny", frames=64, mel=120), "mel"),
])
def test_create_model_bad_arguments(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        create_model(num_classes=3, **kwargs)


def test_bad_input_shape():
    with pytest.raises(ConfigError, match="frames, mel"):
        create_model("ast", "tiny", 64, 3)(torch.zeros(64, 128))   # one clip without the batch axis


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints, built key by key from the published layouts.

BLOCK_SHAPES = {   # timm / DeiT block parameter names, as both official code bases store them
    "norm1.weight": (D,), "norm1.bias": (D,),
    "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
    "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
    "norm2.weight": (D,), "norm2.bias": (D,),
    "mlp.fc1.weight": (4 * D, D), "mlp.fc1.bias": (4 * D,),
    "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,),
}
F_CKPT, T_CKPT = 8, 64   # 128 mel bins x 1024 frames in 16x16 patches


def _rand(g, *shape):
    return torch.randn(*shape, generator=g)


def official_ast(num_classes=5, t_patches=T_CKPT, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "module.v.cls_token": _rand(g, 1, 1, D),
        "module.v.dist_token": _rand(g, 1, 1, D),
        "module.v.pos_embed": _rand(g, 1, 2 + F_CKPT * t_patches, D),
        "module.v.patch_embed.proj.weight": _rand(g, D, 1, 16, 16),
        "module.v.patch_embed.proj.bias": _rand(g, D),
    }
    for i in range(DEPTH):
        for name, shape in BLOCK_SHAPES.items():
            sd[f"module.v.blocks.{i}.{name}"] = _rand(g, *shape)
    sd.update({
        "module.v.norm.weight": _rand(g, D), "module.v.norm.bias": _rand(g, D),
        # DeiT's ImageNet heads stay in AST checkpoints but are never used
        "module.v.head.weight": _rand(g, 1000, D), "module.v.head.bias": _rand(g, 1000),
        "module.v.head_dist.weight": _rand(g, 1000, D), "module.v.head_dist.bias": _rand(g, 1000),
        "module.mlp_head.0.weight": _rand(g, D), "module.mlp_head.0.bias": _rand(g, D),
        "module.mlp_head.1.weight": _rand(g, num_classes, D), "module.mlp_head.1.bias": _rand(g, num_classes),
    })
    return sd


def official_audiomae(num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": _rand(g, 1, 1, D),
        "pos_embed": _rand(g, 1, 1 + T_CKPT * F_CKPT, D),
        "patch_embed.proj.weight": _rand(g, D, 1, 16, 16),
        "patch_embed.proj.bias": _rand(g, D),
    }
    for i in range(DEPTH):
        for name, shape in BLOCK_SHAPES.items():
            sd[f"blocks.{i}.{name}"] = _rand(g, *shape)
    sd.update({"fc_norm.weight": _rand(g, D), "fc_norm.bias": _rand(g, D),
               "head.weight": _rand(g, num_classes, D), "head.bias": _rand(g, num_classes)})
    return {"model": sd, "epoch": 59}


def _ast_tensor_of(m, key):
    """The model tensor an official AST key must land in (``None`` for the unused DeiT heads)."""
    k = key[len("module."):]
    if k.startswith("mlp_head."):
        layer = m.fc_norm if k.startswith("mlp_head.0.") else m.head
        return getattr(layer, k.rsplit(".", 1)[1])
    k = k[len("v."):]
    if k.startswith("head"):
        return None
    if k == "dist_token":
        return m.reg_token           # the second prefix token
    return m.get_parameter(k)


@pytest.mark.parametrize("frames", [256, 80])   # 16 and (odd) 5 time patches
def test_load_ast_checkpoint(frames, tmp_path):
    sd = official_ast()
    m = create_model("ast", "tiny", frames, 5)
    path = tmp_path / "ast.pth"
    torch.save(sd, path)
    load_official_checkpoint(m, path, "ast")     # from a file path
    for key, value in sd.items():
        target = _ast_tensor_of(m, key)
        if target is None or key.endswith("pos_embed"):
            continue
        assert torch.equal(target.detach(), value), key
    # Position embeddings: prefix rows as they are, the 8 x 64 grid cut to the centre in time the way AST does it.
    cols = frames // 16
    start = T_CKPT // 2 - cols // 2
    pos, ck = m.pos_embed.detach()[0], sd["module.v.pos_embed"][0]
    assert torch.equal(pos[:2], ck[:2])
    for f in range(F_CKPT):
        for t in range(cols):
            assert torch.equal(pos[2 + token_index("ast", t, f, frames, 128)], ck[2 + f * T_CKPT + start + t])
    with torch.no_grad():
        assert torch.isfinite(m(torch.randn(1, frames, 128))).all()


@pytest.mark.parametrize("frames", [128, 48])
def test_load_audiomae_checkpoint(frames):
    ckpt = official_audiomae()
    sd = ckpt["model"]
    m = create_model("audiomae", "tiny", frames, 5)
    load_official_checkpoint(m, ckpt, "audiomae")
    own = m.state_dict()
    assert set(own) == set(sd)
    for key, value in sd.items():
        if key != "pos_embed":
            assert torch.equal(own[key], value), key
    # The first T/16 time rows of the time-major 64 x 8 grid.
    rows = frames // 16
    pos, ck = own["pos_embed"][0], sd["pos_embed"][0]
    assert torch.equal(pos[0], ck[0])
    for t in range(rows):
        for f in range(F_CKPT):
            assert torch.equal(pos[1 + token_index("audiomae", t, f, frames, 128)], ck[1 + t * F_CKPT + f])
    assert pos.shape[0] == 1 + rows * F_CKPT


def test_full_length_checkpoint_loads_unchanged():
    sd = official_ast(t_patches=4)   # a checkpoint made for exactly this input: no crop
    m = load_official_checkpoint(create_model("ast", "tiny", 64, 5), sd, "ast")
    assert torch.equal(m.pos_embed.detach(), sd["module.v.pos_embed"])


def test_checkpoint_errors(tmp_path):
    m = create_model("ast", "tiny", 256, 5)
    sd = official_ast()
    del sd["module.v.blocks.5.mlp.fc1.weight"]
    sd["module.v.blocks.12.norm1.weight"] = torch.zeros(D)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(m, sd, "ast")
    msg = str(err.value)
    assert "missing" in msg and "blocks.5.mlp.fc1.weight" in msg
    assert "unexpected" in msg and "blocks.12.norm1.weight" in msg
    # strict=False tolerates missing / unexpected keys, never wrong shapes
    load_official_checkpoint(m, sd, "ast", strict=False)

    wrong = official_audiomae(num_classes=9)
    with pytest.raises(CheckpointError) as err:
        load_official_checkpoint(create_model("audiomae", "tiny", 128, 5), wrong, "audiomae", strict=False)
    msg = str(err.value)
    assert "head.weight" in msg and "(9, 192)" in msg and "(5, 192)" in msg and "head.bias" in msg

    short = official_ast(t_patches=4)            # checkpoint shorter than the model: nothing to crop
    with pytest.raises(CheckpointError, match="pos_embed"):
        load_official_checkpoint(m, short, "ast")

    missing_file = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth"):
        load_official_checkpoint(m, missing_file, "ast")

    with pytest.raises(ConfigError, match="family"):   # the family argument must agree with the model
        load_official_checkpoint(m, official_ast(), "audiomae")


def test_stock_timm_classes():
    m = create_model("audiomae", "tiny", 32, 3)
    assert type(m.blocks[0]) is Block and type(m.blocks[0].attn) is Attention


@pytest.mark.parametrize("family", ["ast", "audiomae"])
def test_transfer_filter_stretches_position_embeddings_along_time_only(family):
    from tprune_core.models import patch_grid, transfer_filter
    short, long = create_model(family, "tiny", 32, 3), create_model(family, "tiny", 96, 7)
    p = short.num_prefix_tokens
    rows, cols = patch_grid(short)
    bands, t_short = (rows, cols) if family == "ast" else (cols, rows)
    # value = 10 * band + time index: bands must stay apart, time must stretch monotonically
    band = torch.arange(bands).view(-1, 1).float().expand(bands, t_short)
    time = torch.arange(t_short).view(1, -1).float().expand(bands, t_short)
    grid = 10 * band + time                                   # (bands, t)
    grid = grid if family == "ast" else grid.T                # model token order
    pos = short.pos_embed.detach().clone()
    pos[0, p:] = grid.reshape(-1, 1).expand(-1, pos.shape[-1])
    state = dict(short.state_dict(), pos_embed=pos)
    out = transfer_filter(state, long)
    assert not any(k.startswith("head.") for k in out)
    stretched = out["pos_embed"][0, p:, 0]
    lrows, lcols = patch_grid(long)
    g = stretched.reshape(lrows, lcols) if family == "ast" else stretched.reshape(lrows, lcols).T   # (bands, t)
    assert g.shape == (bands, 6)
    assert torch.allclose(g.floor() // 10, torch.arange(bands).view(-1, 1).float().expand_as(g))   # bands intact
    assert (g[:, 1:] >= g[:, :-1]).all() and g[:, 0].eq(10 * torch.arange(bands)).all()
    assert g[:, -1].eq(10 * torch.arange(bands) + t_short - 1).all()
    assert torch.equal(out["pos_embed"][:, :p], pos[:, :p])
    long.load_state_dict(out, strict=False)
