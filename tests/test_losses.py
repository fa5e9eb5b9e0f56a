"""Loss functions against hand-worked small cases, a faked second rank, gradients, and MLM masking statistics."""
import math

import pytest
import torch

from retrieval.losses import alignment_loss, gather_features, mlm_loss, mlm_mask_tokens, total_loss, vtc_loss


def test_vtc_identity_2x2():
    # logits = I2: each row is softmax over (1, 0); -log(e / (e + 1)) = ln(1 + e^-1) = 0.3132617.
    eye = torch.eye(2)
    loss = vtc_loss(eye, eye, 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)


def test_vtc_asymmetric_2x2():
    # v = [[1,0],[0,1]], t = [[1,0],[.6,.8]] -> logits v@t.T = [[1, .6], [0, .8]].
    # video->text rows: ln(1+e^-.4) = .5130153, ln(1+e^-.8) = .3711007 -> mean .4420580
    # text->video rows (columns of logits): (1, 0): ln(1+e^-1) = .3132617; (.6, .8): ln(1+e^-.2) = .5981389 -> .4557003
    # loss = (.4420580 + .4557003) / 2 = .4488791
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert vtc_loss(v, t, 1.0).item() == pytest.approx(0.4488791, abs=1e-6)
    # logit_scale multiplies the logits: scale 2 on identity gives ln(1+e^-2).
    eye = torch.eye(2)
    assert vtc_loss(eye, eye, torch.tensor(2.0)).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_vtc_multi_positive_3x3():
    # ids (7, 7, 9), v = t = I3, scale 1 -> logits = I3; ln Z per row = ln(e + 2) = 1.5514448.
    # rows 0 and 1: targets (.5, .5, 0): -(.5 (1 - lnZ) + .5 (-lnZ)) = lnZ - .5 = 1.0514448
    # row 2: target (0, 0, 1): lnZ - 1 = .5514448
    # mean = (2 * 1.0514448 + .5514448) / 3 = .8847781; symmetric, so both directions agree.
    eye = torch.eye(3)
    ids = torch.tensor([7, 7, 9])
    assert vtc_loss(eye, eye, 1.0, video_ids=ids).item() == pytest.approx(0.8847781, abs=1e-6)
    # Distinct ids reduce to plain InfoNCE: every row lnZ - 1.
    assert vtc_loss(eye, eye, 1.0, video_ids=torch.tensor([1, 2, 3])).item() == pytest.approx(
        vtc_loss(eye, eye, 1.0).item(), abs=1e-7)
    assert vtc_loss(eye, eye, 1.0).item() == pytest.approx(0.5514448, abs=1e-6)


def test_vtc_matches_cross_entropy_random():
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    logits = 10.0 * v @ t.T
    labels = torch.arange(5)
    want = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    assert vtc_loss(v, t, 10.0).item() == pytest.approx(want.item(), abs=1e-6)


def _second_rank(features_of_rank1):
    """Fake all-gather: this process is rank 0; rank 1 contributed `features_of_rank1(x)`."""
    def gather(x):
        return torch.cat([x, features_of_rank1(x)], dim=0)
    return gather


def test_vtc_with_fake_second_rank():
    # Rank 0 holds v = t = [[1, 0]]; the fake rank 1 holds [[0, 1]] -> gathered v = t = I2.
    v = torch.tensor([[1.0, 0.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0]], requires_grad=True)
    swap = _second_rank(lambda x: x.flip(-1) if x.is_floating_point() else x + 1)
    loss = vtc_loss(v, t, 1.0, video_ids=torch.tensor([3]), gather_fn=swap)  # ids (3, 4): distinct
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)  # same as the 2x2 identity case
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_vtc_positive_on_other_rank():
    # Same features, but rank 1's caption comes from the same video (ids (5, 5)): targets (.5, .5) in
    # every row; ln Z = ln(e + 1) = 1.3132617, loss = lnZ - .5 = .8132617.
    eye_row = torch.tensor([[1.0, 0.0]])
    same_video = _second_rank(lambda x: x.flip(-1) if x.is_floating_point() else x)
    loss = vtc_loss(eye_row, eye_row, 1.0, video_ids=torch.tensor([5]), gather_fn=same_video)
    assert loss.item() == pytest.approx(0.8132617, abs=1e-6)


def test_gather_features_identity_without_distributed():
    x = torch.randn(3, 4)
    assert gather_features(x) is x
    assert gather_features(x, lambda y: y * 2).equal(x * 2)


def test_alignment_loss_values_and_gradients():
    s = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]], requires_grad=True)  # (1, 2, 2); norms don't matter
    assert alignment_loss(s, torch.tensor([[[3.0, 0.0], [1.0, 0.0]]])).item() == pytest.approx(0.0, abs=1e-6)
    # cos = 0 for the first token (2 - 0 = 2), cos = -1 for the second (2 + 2 = 4): mean 3.
    teacher = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]], requires_grad=True)
    loss = alignment_loss(s, teacher)
    assert loss.item() == pytest.approx(3.0, abs=1e-6)
    loss.backward()
    assert s.grad is not None and teacher.grad is None  # the teacher is a target
    with pytest.raises(ValueError, match="same shape"):
        alignment_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


def test_mlm_mask_statistics():
    special = [0, 1, 2, 3]  # pad, unk-ish, start, end
    mask_id, vocab = 4, 1000
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, vocab, (128, 64), generator=g)
    tokens[:, 0] = 2
    tokens[:, -1] = 3
    tokens[:, 40:50] = 0  # some padding
    inputs, labels = mlm_mask_tokens(tokens, mask_id, vocab, special, prob=0.15, generator=g)
    candidates = ~torch.isin(tokens, torch.tensor(special))
    picked = labels != -100
    assert not (picked & ~candidates).any(), "special tokens must never be picked"
    assert labels[picked].equal(tokens[picked])
    assert picked.sum().item() / candidates.sum().item() == pytest.approx(0.15, abs=0.01)
    n = picked.sum().item()
    as_mask = (inputs == mask_id) & picked
    unchanged = (inputs == tokens) & picked
    replaced = picked & ~as_mask & ~unchanged
    assert as_mask.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert unchanged.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert replaced.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert not torch.isin(inputs[replaced], torch.tensor(special + [mask_id])).any()
    assert inputs[~picked].equal(tokens[~picked])
    # Determinism under a seed.
    a = mlm_mask_tokens(tokens, mask_id, vocab, special, generator=torch.Generator().manual_seed(1))
    b = mlm_mask_tokens(tokens, mask_id, vocab, special, generator=torch.Generator().manual_seed(1))
    assert a[0].equal(b[0]) and a[1].equal(b[1])


def test_mlm_loss():
    # Uniform logits over V=4: cross-entropy ln 4 at every labelled place.
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    labels = torch.tensor([[-100, 1, -100], [2, -100, -100]])
    loss = mlm_loss(logits, labels)
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0
    empty = mlm_loss(logits, torch.full((2, 3), -100))
    assert empty.item() == 0.0 and empty.requires_grad


def test_total_loss():
    terms = {"vtc": torch.tensor(1.0), "align": torch.tensor(2.0)}
    out = total_loss(terms, {"vtc": 1.0, "align": 0.5, "mlm": 3.0})  # mlm switched off: weight ignored
    assert out["loss"].item() == pytest.approx(2.0)
    assert out["vtc"].item() == 1.0 and out["align"].item() == 2.0  # unweighted for logging
    with pytest.raises(ValueError, match="no weight"):
        total_loss(terms, {"vtc": 1.0})
