import itertools
import math

import torch
import torch.nn.functional as F

from training.loss import DINOLoss, koleo_loss, sinkhorn_knopp


def reference_loss(student, teacher, center, t_temp, s_temp, n_global):
    """The loss written out pair by pair, as in the paper's pseudo-code."""
    b = teacher.shape[0] // n_global
    n_views = student.shape[0] // b
    t_views = F.softmax((teacher - center) / t_temp, dim=-1).chunk(n_global)
    s_views = (student / s_temp).chunk(n_views)
    total, n = 0.0, 0
    for i, v in itertools.product(range(n_global), range(n_views)):
        if i == v:
            continue  # same view: skipped
        total += torch.sum(-t_views[i] * F.log_softmax(s_views[v], dim=-1), dim=-1).mean()
        n += 1
    return total / n


def test_loss_matches_pairwise_reference():
    torch.manual_seed(0)
    b, k, views = 3, 7, 5
    student = torch.randn(views * b, k)
    teacher = torch.randn(2 * b, k)
    loss = DINOLoss(k, n_global=2, student_temp=0.1)
    loss.center.copy_(torch.randn(1, k) * 0.1)
    got = loss(student, loss.teacher_probs(teacher, 0.04))
    want = reference_loss(student, teacher, loss.center, 0.04, 0.1, 2)
    assert torch.allclose(got, want, atol=1e-5)


def test_loss_by_hand_on_two_views():
    # Two global views, one sample, K=2, zero centre: loss = mean of the two cross terms.
    loss = DINOLoss(2, n_global=2, student_temp=1.0)
    teacher = torch.tensor(
        [[0.0, math.log(3.0)], [math.log(3.0), 0.0]]
    )  # probs (.25,.75),(.75,.25)
    student = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    got = loss(student, loss.teacher_probs(teacher, 1.0))
    # teacher 0 → student 1: -(.25 log .25 + .75 log .75); teacher 1 → student 0: -log .5
    want = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2.0)) / 2
    assert abs(got.item() - want) < 1e-6


def test_same_view_pairs_are_skipped():
    # If the student equals the teacher on its own view only, that pair must not lower the loss.
    torch.manual_seed(1)
    loss = DINOLoss(5, n_global=2, student_temp=1.0)
    t = torch.randn(2, 5)
    probs = loss.teacher_probs(t, 1.0)
    s_same = t.clone()
    s_swapped = t.flip(0)
    # Swapping the student views puts each teacher target against the other view's student.
    assert loss(s_swapped, probs) < loss(s_same, probs)


def test_center_update_is_ema_of_batch_mean():
    loss = DINOLoss(4, center_momentum=0.9)
    loss.center.fill_(1.0)
    teacher = torch.tensor([[0.0, 2.0, 4.0, 6.0], [2.0, 2.0, 0.0, 2.0]])
    loss.update_center(teacher)
    want = 0.9 * torch.ones(1, 4) + 0.1 * teacher.mean(0, keepdim=True)
    assert torch.allclose(loss.center, want)


def test_centering_changes_targets():
    loss = DINOLoss(3)
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    before = loss.teacher_probs(t, 0.5)
    loss.center.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
    after = loss.teacher_probs(t, 0.5)
    assert torch.allclose(after, torch.full_like(after, 1 / 3))
    assert before[0, 0, 0] > 0.5


def test_sinkhorn_equipartition():
    torch.manual_seed(0)
    q = sinkhorn_knopp(torch.randn(64, 8), temp=0.1, n_iters=50)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((8,), 64 / 8), atol=1e-2)


def test_sinkhorn_option_gives_probabilities():
    loss = DINOLoss(8, centering="sinkhorn")
    probs = loss.teacher_probs(torch.randn(2 * 16, 8), 0.07)
    assert probs.shape == (2, 16, 8)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 16), atol=1e-4)


def test_koleo_prefers_spread_points():
    spread = torch.eye(4)
    bunched = torch.tensor([[1.0, 0, 0, 0], [0.99, 0.01, 0, 0], [0, 1.0, 0, 0], [0, 0.99, 0.01, 0]])
    assert koleo_loss(spread) < koleo_loss(bunched)


def test_sinkhorn_survives_a_prototype_row_underflowing():
    # One prototype's logits sit far below the rest: exp underflows to an all-zero row, and
    # before the guard 0/0 turned the whole assignment into NaN.
    logits = torch.randn(8, 16) * 0.1
    logits[:, 3] = -10.0
    q = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(1), torch.ones(8), atol=1e-5)
    assert q[:, 3].abs().max() == 0
