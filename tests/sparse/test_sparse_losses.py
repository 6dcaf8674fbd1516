"""Each loss, the FLOPS schedule and the teacher ensemble against hand computations."""

import math

import pytest
import torch

from embedx.sparse.losses import (ensemble_teacher_scores, flops_lambda, flops_loss, group_scores, infonce_loss,
                                  kl_distill_loss, margin_mse_loss, minmax_normalize, student_scores)


def test_flops_schedule_is_quadratic_then_flat():
    assert flops_lambda(0, 0.1, 10) == pytest.approx(0.1 * (1 / 10) ** 2)
    assert flops_lambda(4, 0.1, 10) == pytest.approx(0.1 * 0.25)
    assert flops_lambda(9, 0.1, 10) == pytest.approx(0.1)
    assert flops_lambda(500, 0.1, 10) == pytest.approx(0.1)
    assert flops_lambda(3, 0.2, 0) == 0.2  # no warm-up


def test_flops_loss_by_hand():
    w = torch.tensor([[1.0, 0.0, 2.0],
                      [3.0, 0.0, 0.0]])
    # column means 2, 0, 1 -> 4 + 0 + 1
    assert flops_loss(w).item() == pytest.approx(5.0)


def test_flops_threshold_only_penalises_long_documents():
    w = torch.tensor([[1.0, 0.0, 2.0],    # 2 terms
                      [3.0, 0.0, 0.0]])   # 1 term
    # threshold 1: only the first document counts, the mean still divides by 2: (0.5, 0, 1)
    assert flops_loss(w, threshold=1).item() == pytest.approx(0.25 + 1.0)
    assert flops_loss(w, threshold=2).item() == 0.0
    assert flops_loss(w, threshold=0).item() == pytest.approx(5.0)


def test_flops_gradient_is_two_mean_over_n():
    w = torch.tensor([[1.0, 2.0], [3.0, 1.0]], requires_grad=True)
    flops_loss(w).backward()
    # d/dw_ij of sum_j (mean_i w_ij)^2 = 2 * mean_j / n, means (2, 1.5)
    assert torch.allclose(w.grad, torch.tensor([[2.0, 1.5], [2.0, 1.5]]))


def test_student_scores_are_idf_weighted_dot_products():
    q = torch.tensor([[0.0, 2.0, 0.5]])           # idf of the query's tokens
    d = torch.tensor([[1.0, 1.0, 4.0], [0.0, 3.0, 0.0]])
    assert student_scores(q, d).tolist() == [[4.0, 6.0]]
    assert group_scores(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
                        torch.tensor([[2, 0], [1, 1]])).tolist() == [[3.0, 1.0], [5.0, 5.0]]


def test_infonce_by_hand_and_exclusion():
    s = torch.tensor([[2.0, 1.0, 0.0]])
    expected = -(2.0 - math.log(math.exp(2) + math.exp(1) + math.exp(0)))
    assert infonce_loss(s, torch.tensor([0])).item() == pytest.approx(expected)
    # excluding column 1 (another positive of the query) removes it from the denominator
    excl = torch.tensor([[True, True, False]])    # the target column is never excluded
    expected = -(2.0 - math.log(math.exp(2) + math.exp(0)))
    assert infonce_loss(s, torch.tensor([0]), excl).item() == pytest.approx(expected)


def test_margin_mse_by_hand_with_padding():
    student = torch.tensor([[3.0, 1.0, 0.0]])
    teacher = torch.tensor([[5.0, 4.0, 9.0]])
    # margins: student (2, 3), teacher (1, -4): errors 1 and 49
    assert margin_mse_loss(student, teacher).item() == pytest.approx(25.0)
    valid = torch.tensor([[True, True, False]])
    assert margin_mse_loss(student, teacher, valid).item() == pytest.approx(1.0)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(x):
    e = [math.exp(v) for v in x]
    return [v / sum(e) for v in e]


def test_kl_distill_by_hand_with_temperature_and_padding():
    student = torch.tensor([[1.0, 0.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, -1.0]])
    expected = _kl(_softmax([1.0, 0.5, -0.5]), _softmax([0.5, 0.0, 1.5]))
    assert kl_distill_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)
    valid = torch.tensor([[True, True, False]])
    expected = _kl(_softmax([2.0, 1.0]), _softmax([1.0, 0.0]))
    got = kl_distill_loss(student, teacher, valid=valid)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    student.requires_grad_(True)
    kl_distill_loss(student, teacher, valid=valid).backward()
    assert torch.isfinite(student.grad).all() and student.grad[0, 2] == 0


def test_minmax_and_ensemble_by_hand():
    a = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    n = minmax_normalize(a)
    assert torch.allclose(n[0], torch.tensor([0.0, 1.0, 0.5]), atol=1e-5)
    assert torch.allclose(n[1], torch.zeros(3))      # a constant row does not divide by zero
    valid = torch.tensor([[True, True, False], [True, True, True]])
    n = minmax_normalize(torch.tensor([[1.0, 3.0, 100.0], [0.0, 1.0, 2.0]]), valid)
    assert torch.allclose(n, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.5, 1.0]]), atol=1e-5)
    dense = torch.tensor([[0.9, 0.1, 0.5]])
    sparse = torch.tensor([[10.0, 30.0, 20.0]])
    # normalised: dense (1, 0, 0.5), sparse (0, 1, 0.5) -> mean (0.5, 0.5, 0.5) -> * 30
    assert torch.allclose(ensemble_teacher_scores([dense, sparse], scale=30.0), torch.full((1, 3), 15.0), atol=1e-3)
    assert torch.allclose(ensemble_teacher_scores([dense], scale=2.0), torch.tensor([[2.0, 0.0, 1.0]]), atol=1e-4)
    with pytest.raises(ValueError):
        ensemble_teacher_scores([])
