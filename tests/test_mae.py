"""MAE pretraining: masking ratio, loss on hidden patches only, window sampling, weight transfer, train-only data."""
import types

import pytest
import torch

from conftest import Interrupted, stop_at
from tprune_core import mae as M
from tprune_core.errors import CheckpointError, ConfigError
from tprune_core.models import create_model, patch_grid


def pool_set(n, frames, seed, split="train"):
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(x=torch.randn(n, frames, 128, generator=g), y=torch.zeros(n, dtype=torch.long),
                                 classes=["a"], split=split, source="synthetic")


def small_cfg(**kw):
    base = dict(sources=[{"dataset": "a", "frames": 48}, {"dataset": "b", "protocol": {"k": 1}, "frames": 64}],
                crop_frames=32, epochs=2, batch_size=8, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                warmup_epochs=0.0, threads=1, progress=False)
    base.update(kw)
    return M.MAEConfig(**base)


@pytest.mark.parametrize("n,ratio", [(48, 0.8), (16, 0.8), (64, 0.75), (10, 0.5)])
def test_masking_hides_the_requested_ratio_per_clip(n, ratio):
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = M.random_masking(6, n, ratio, generator=g)
    n_mask = round(ratio * n)
    assert mask.shape == (6, n) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert (mask.sum(1) == n_mask).all()
    assert keep.shape == (6, n - n_mask)
    assert (mask.gather(1, keep) == 0).all()                          # kept = visible
    assert (keep[:, 1:] > keep[:, :-1]).all()                         # in token order
    assert len({tuple(r) for r in mask.tolist()}) > 1                 # a fresh choice per clip
    # restore puts [visible..., hidden...] back in token order, as the decoder uses it
    tokens = torch.arange(n).expand(6, n)
    filled = torch.cat([tokens.gather(1, keep), torch.full((6, n_mask), -1)], 1).gather(1, restore)
    assert torch.equal(filled, torch.where(mask == 0, tokens, -1))


def test_masking_is_seeded():
    a = M.random_masking(4, 48, 0.8, torch.Generator().manual_seed(3))[1]
    b = M.random_masking(4, 48, 0.8, torch.Generator().manual_seed(3))[1]
    c = M.random_masking(4, 48, 0.8, torch.Generator().manual_seed(4))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="mask_ratio"):
        M.random_masking(2, 4, 0.99)


def test_loss_uses_masked_patches_only():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 20, 256, generator=g), torch.randn(3, 20, 256, generator=g)
    _, mask, _ = M.random_masking(3, 20, 0.8, torch.Generator().manual_seed(1))
    base = M.mae_loss(pred, target, mask)
    visible = mask == 0
    p2, t2 = pred.clone(), target.clone()
    p2[visible] += 5.0
    t2[visible] -= 3.0
    assert M.mae_loss(p2, t2, mask) == pytest.approx(base.item())      # visible patches do not count
    p3 = pred.clone()
    p3[mask == 1] += 1.0
    assert M.mae_loss(p3, target, mask) > base                         # hidden ones do
    # per-patch normalized target: the loss is blind to each target patch's offset and scale
    t4 = target * 7.0 + 2.0
    assert M.mae_loss(pred, t4, mask) == pytest.approx(base.item(), rel=1e-4)


def test_model_gradient_reaches_hidden_predictions_only():
    cfg = small_cfg()
    model = M.MaskedAutoencoder(cfg)
    x = torch.randn(4, 32, 128)
    keep, mask, restore = M.random_masking(4, 16, 0.8, torch.Generator().manual_seed(0))
    preds = []

    def keep_grad(mod, inp, out):
        out.retain_grad()
        preds.append(out)

    hook = model.decoder_pred.register_forward_hook(keep_grad)
    loss, pred = model(x, torch.zeros(4, dtype=torch.long), keep, mask, restore)
    loss.backward()
    hook.remove()
    grad = preds[0].grad[:, 1:]                                        # drop the CLS row
    assert pred.shape == (4, 16, 256)
    assert (grad[mask == 0] == 0).all() and (grad[mask == 1] != 0).any()
    # The encoder sees only the visible tokens: perturbing the input under a hidden patch leaves its output as it
    # was; perturbing a visible patch changes it.
    enc_out = []
    model.encoder_norm.register_forward_hook(lambda mod, inp, out: enc_out.append(out.detach()))
    cols = 128 // 16

    def encoded(token):
        x2 = x.clone()
        r, c = divmod(token, cols)
        x2[0, 16 * r:16 * r + 16, 16 * c:16 * c + 16] += 3.0
        with torch.no_grad():
            model(x2, torch.zeros(4, dtype=torch.long), keep, mask, restore)
        return enc_out[-1]

    with torch.no_grad():
        model(x, torch.zeros(4, dtype=torch.long), keep, mask, restore)
    ref = enc_out[-1]
    hidden_tok, visible_tok = int(mask[0].nonzero()[0]), int(keep[0, 0])
    assert torch.equal(encoded(hidden_tok), ref)
    assert not torch.allclose(encoded(visible_tok), ref)


def test_sincos_rows_are_shared_between_lengths():
    short, long = M.sincos_pos_embed(6, 8, 192), M.sincos_pos_embed(25, 8, 192)
    assert torch.equal(short, long[:48])                               # time-major: rows 0..5 first
    assert not torch.allclose(long[:8], long[8:16])                    # rows differ


def test_windows_start_at_patch_rows_inside_the_clip():
    pool = [pool_set(3, 48, 0).x, pool_set(3, 96, 1).x]
    ids = torch.tensor([[0, 0], [0, 2], [1, 1], [1, 2]] * 8)
    x, rows = M.sample_windows(pool, ids, 32, torch.Generator().manual_seed(0))
    assert x.shape == (32, 32, 128)
    n_rows = torch.tensor([(48 - 32) // 16 + 1, (48 - 32) // 16 + 1, (96 - 32) // 16 + 1, (96 - 32) // 16 + 1] * 8)
    assert ((rows >= 0) & (rows < n_rows)).all() and rows.max() > 1    # long clips use later rows too
    for k, ((src, i), r) in enumerate(zip(ids.tolist(), rows.tolist())):
        assert torch.equal(x[k], pool[src][i][16 * r:16 * r + 32])


def test_pretrain_reads_train_splits_only_and_transfers(tmp_cache, monkeypatch):
    from tprune_core import cache
    calls = []

    def load_features(name, split, frames=None, **kw):
        calls.append((name, split, frames, kw.get("k")))
        return pool_set(24, frames, len(calls), split)

    monkeypatch.setattr(cache, "load_features", load_features)
    cfg = small_cfg()
    run = M.pretrain(cfg)
    assert sorted(c[1] for c in calls) == ["train", "train"]
    assert ("b", "train", 64, 1) in calls                              # each source with its own protocol
    s = M.summary(run)
    assert len(s["history"]) == 2 and all(h["loss"] > 0 for h in s["history"])
    assert M.pretrain(cfg) == run and len(calls) == 2                  # found in the cache: nothing reloaded
    # The encoder loads into an audiomae classifier of any length, position embeddings as sin-cos of its grid.
    enc = torch.load(run / "encoder.pt", weights_only=False)["encoder"]
    model = create_model("audiomae", "tiny", 64, 5)
    M.load_encoder(model, run / "encoder.pt")
    assert torch.equal(model.blocks[5].mlp.fc1.weight, enc["blocks.5.mlp.fc1.weight"])
    assert torch.equal(model.patch_embed.proj.weight, enc["patch_embed.proj.weight"])
    rows, cols = patch_grid(model)
    assert torch.equal(model.pos_embed[0, 1:], M.sincos_pos_embed(rows, cols, 192))
    assert (model.pos_embed[0, 0] == 0).all()
    with pytest.raises(ConfigError, match="audiomae"):
        M.load_encoder(create_model("ast", "tiny", 64, 5), run / "encoder.pt")
    with pytest.raises(CheckpointError):
        M.load_encoder(create_model("audiomae", "small", 64, 5), run / "encoder.pt")


def test_pretrain_loss_falls_on_structured_data(tmp_cache):
    # Noisy copies of one pattern: the hidden patches are predictable, so the loss must fall well below its start.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 128, generator=g) + 0.05 * torch.randn(64, 64, 128, generator=g)
    pool = [types.SimpleNamespace(x=x, y=torch.zeros(64, dtype=torch.long), classes=["a"], split="train")]
    cfg = small_cfg(sources=[{"dataset": "a", "frames": 64}], epochs=10, lr=2e-3)
    s = M.summary(M.pretrain(cfg, pool=pool))
    losses = [h["loss"] for h in s["history"]]
    assert losses[-1] < 0.8 * losses[0], losses


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="crop_frames"):
        small_cfg(crop_frames=40)
    with pytest.raises(ConfigError, match="sources"):
        small_cfg(crop_frames=96)                                      # longer than the 48-frame source
    with pytest.raises(ConfigError, match="mask_ratio"):
        small_cfg(mask_ratio=1.0)


def test_pretrain_resumes_mid_epoch_to_the_same_encoder(tmp_path, monkeypatch):
    """Stopped after a mid-epoch checkpoint, pretraining continues from state.pt and ends with the encoder and loss
    history of a run that was never interrupted (windows and masks are functions of the step)."""
    pool = [pool_set(24, 48, 0), pool_set(24, 64, 1)]          # 48 clips: 6 steps an epoch, 12 in all
    cfg = small_cfg(ckpt_every=4)
    monkeypatch.setenv("TPRUNE_CACHE", str(tmp_path / "ref"))
    ref = M.pretrain(cfg, pool=pool)
    monkeypatch.setenv("TPRUNE_CACHE", str(tmp_path / "run"))
    undo = stop_at(monkeypatch, M.Pretraining, 9)
    with pytest.raises(Interrupted):
        M.pretrain(cfg, pool=pool)
    run = tmp_path / "run" / "zoo" / cfg.hash()
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["step"] == 8 and state["epoch_stats"][1] == 16 and not (run / "mae.json").exists()
    undo()
    assert M.pretrain(cfg, pool=pool) == run
    a = torch.load(run / "encoder.pt", weights_only=False)["encoder"]
    b = torch.load(ref / "encoder.pt", weights_only=False)["encoder"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in M.summary(run)["history"]] == [h["loss"] for h in M.summary(ref)["history"]]
    assert not (run / "state.pt").exists()
