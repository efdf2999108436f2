"""The [CLS]-only BERT forward equals Hugging Face's, in value and in gradient."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, RobertaConfig, RobertaModel

from selfmm import bert
from selfmm.encoder import minilm_path


def tokens(batch: int, length: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids = ids * mask  # padding id 0 after each clip's last token
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return ids, mask, types * mask


def tiny(dropout: float = 0.1) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64,
                                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout))


def reference(encoder, ids, mask, types) -> torch.Tensor:
    return encoder(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, 0]


def test_equals_hugging_face_on_minilm():
    encoder = AutoModel.from_pretrained(minilm_path()).eval()
    assert bert.supports(encoder)
    ids, mask, types = tokens(6, 40, encoder.config.vocab_size)
    with torch.no_grad():
        ours, theirs = bert.cls_vector(encoder, ids, mask, types), reference(encoder, ids, mask, types)
    assert ours.shape == (6, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_gradients_equal_hugging_face_with_dropout_off():
    encoder = tiny(dropout=0.0).train()
    ids, mask, types = tokens(5, 12, 500, seed=1)
    weight = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    grads = []
    for forward in (bert.cls_vector, reference):
        encoder.zero_grad(set_to_none=True)
        (forward(encoder, ids, mask, types) * weight).sum().backward()
        grads.append({n: p.grad.to_dense() for n, p in encoder.named_parameters() if p.grad is not None})
    ours, theirs = grads
    # Every weight the [CLS] vector depends on gets its gradient (the pooler's is unused).
    assert set(ours) == {n for n in theirs if not n.startswith("pooler.")}
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-4, msg=name)


def test_word_embedding_gradient_is_sparse_on_the_cpu_only_while_training():
    encoder = tiny().train()
    ids, mask, types = tokens(3, 10, 500)
    bert.cls_vector(encoder, ids, mask, types).sum().backward()
    grad = encoder.embeddings.word_embeddings.weight.grad
    assert grad.is_sparse
    # Only the rows of the batch's tokens; the padding row never gets a gradient.
    touched = set(grad.coalesce().indices()[0].tolist())
    assert touched == set(ids[ids != 0].tolist())


def test_dropout_keeps_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = bert.dropout(x, 0.1, training=True)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.002)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    assert bert.dropout(x, 0.1, training=False) is x
    assert not bert.dropout(x, 1.0, training=True).any()


def test_train_mode_draws_fresh_masks_and_eval_mode_is_deterministic():
    encoder = tiny()
    ids, mask, types = tokens(4, 10, 500)
    with torch.no_grad():
        encoder.train()
        a, b = (bert.cls_vector(encoder, ids, mask, types) for _ in range(2))
        encoder.eval()
        c, d = (bert.cls_vector(encoder, ids, mask, types) for _ in range(2))
    assert not torch.equal(a, b)
    assert torch.equal(c, d)
    torch.testing.assert_close(c, reference(encoder, ids, mask, types), atol=1e-5, rtol=1e-5)


def test_other_architectures_run_their_own_forward():
    torch.manual_seed(0)
    encoder = RobertaModel(RobertaConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=64,
                                         max_position_embeddings=64)).eval()
    assert not bert.supports(encoder)
    ids, mask, types = tokens(3, 10, 500)
    types = torch.zeros_like(types)
    with torch.no_grad():
        assert torch.equal(bert.cls_vector(encoder, ids, mask, types), reference(encoder, ids, mask, types))


def test_optimizer_steps_equal_with_sparse_and_dense_embedding_gradients(tiny_bert, synth_path, monkeypatch):
    from selfmm import configuration as config
    from selfmm.data.mmsa import load_features
    from selfmm.model import SelfMM
    from selfmm.optim import make_optimizer
    from selfmm.runtime import seed_everything
    from selfmm.train import train_epoch, train_loader
    from selfmm.ulgm import UnimodalLabelGenerator

    with pytest.warns(UserWarning, match="non-finite"):
        data = load_features(synth_path("mosi", scale=0.03))
    train = data.splits["train"]
    cfg = config.with_values(config.defaults_for("mosi"), {"text_model": str(tiny_bert)})
    runs = []
    for dense in (False, True):
        # Under torch.distributed the gradient stays dense; pretend, to get the dense path here.
        monkeypatch.setattr(bert, "_distributed", lambda dense=dense: dense)
        seed_everything(5)
        model = SelfMM(AutoModel.from_pretrained(tiny_bert), data.audio_dim, data.vision_dim, cfg.model)
        optimizer = make_optimizer(model, cfg)
        ulgm = UnimodalLabelGenerator(len(train), {"m": 128, "t": 32, "a": 16, "v": 32}, H=3.0)
        ulgm.init_labels(torch.arange(len(train)), torch.as_tensor(train.labels))
        for epoch in (1, 2):  # the second epoch reuses the dense buffer
            train_epoch(model, optimizer, train_loader(train, cfg, 5, epoch), ulgm, epoch, cfg,
                        torch.device("cpu"))
        runs.append(model.state_dict())
    sparse, dense = runs
    words = "text_encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(sparse[words], AutoModel.from_pretrained(tiny_bert).embeddings.word_embeddings.weight)
    for key in sparse:
        torch.testing.assert_close(sparse[key], dense[key], atol=1e-5, rtol=1e-5, msg=key)


def test_runs_under_bf16_autocast():
    """On CUDA the forward runs under bf16 autocast; the CPU's autocast exercises the same
    dtype flow (bf16 matmuls, float32 softmax and layer norms, a float32 padding bias)."""
    encoder = tiny().eval()
    ids, mask, types = tokens(4, 10, 500)
    with torch.no_grad():
        exact = bert.cls_vector(encoder, ids, mask, types)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = bert.cls_vector(encoder, ids, mask, types)
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), exact, atol=0.1, rtol=0.05)


def test_a_text_with_no_token_reads_its_cls_alone():
    encoder = tiny().eval()
    ids, mask, types = tokens(3, 8, 500)
    empty = mask.clone()
    empty[1] = 0
    only_cls = mask.clone()
    only_cls[1] = 0
    only_cls[1, 0] = 1
    with torch.no_grad():
        a = bert.cls_vector(encoder, ids, empty, types)
        b = bert.cls_vector(encoder, ids, only_cls, types)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def _out_and_grads(encoder, ids, mask, types, lengths, weight, bucketed, monkeypatch):
    monkeypatch.setattr(bert, "buckets_shapes", lambda device: bucketed)
    encoder.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bert.cls_vector(encoder, ids, mask, types, lengths)
    (out.float() * weight).sum().backward()
    return out.detach().float(), {n: p.grad.to_dense().clone() for n, p in encoder.named_parameters()
                                  if p.grad is not None}


def test_bucketed_shapes_change_no_real_token(monkeypatch):
    """Rounding the packed rows and the padded length up to buckets adds zero rows and padding
    keys that no real token reads: the [CLS] vectors come out equal bit for bit under bf16
    autocast, and every weight's gradient equal up to the order of float32 sums over more rows
    (the products' M differs). In fp32, where bucketing is off, MKL's kernels for another M
    round differently (measured: 1e-6 on values, 4e-5 on gradients), hence fp32 keeps its sizes."""
    encoder = tiny(dropout=0.0).train()
    ids, mask, types = tokens(7, 13, 500, seed=3)  # width 13 -> 14; the rows, ~50 -> a bucket above
    lengths = mask.sum(1)
    plan = bert.Tokens(mask, lengths, bucketed=True)
    assert plan.L == 14 and plan.rows > plan.T == int(lengths.sum())
    weight = torch.randn(7, 32, generator=torch.Generator().manual_seed(4))
    exact, exact_grads = _out_and_grads(encoder, ids, mask, types, lengths, weight, False, monkeypatch)
    for given in (lengths, None):  # planned on the host, or read from the mask
        out, grads = _out_and_grads(encoder, ids, mask, types, given, weight, True, monkeypatch)
        assert torch.equal(out, exact)
        assert set(grads) == set(exact_grads)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, exact_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_buckets_only_under_cpu_bf16_autocast():
    cpu = torch.device("cpu")
    assert not bert.buckets_shapes(cpu)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bert.buckets_shapes(cpu)
    assert [bert.bucket(n, 3) for n in (1, 15, 16, 17, 290, 320, 321, 512)] == [1, 15, 16, 18, 320, 320, 352, 512]
    # At most 1/8 more rows, and few sizes: 15 for the 501 counts from 200 to 700 tokens.
    assert all(n <= bert.bucket(n, 3) <= n * 9 / 8 for n in range(1, 2000))
    assert len({bert.bucket(n, 3) for n in range(200, 701)}) == 15


def test_dropout_under_bf16_keeps_nine_tenths_and_scales_by_one_over_0_9():
    """Masks drawn in bf16 kept 89.8% (U >= bf16(0.1) = 0.10009) and scaled by bf16(1/0.9) = 1.109."""
    torch.manual_seed(0)
    x = torch.randn(1_000_000).bfloat16()
    y = bert.dropout(x, 0.1, training=True)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.001)
    scale = torch.tensor(1 / 0.9, dtype=torch.float32)
    assert torch.equal(y[kept], (x[kept].float() * scale).bfloat16())
