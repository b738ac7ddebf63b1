"""The few-shot learner: steepest descent on eq. (1) with the exact step length."""

import torch

from llb.config import InductionConfig
from llb.induction import FewShotLearner, LearnerMemory, apply_filter, filter_gradient


def _problem(n=3, b=2, c=4, d=2, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(n, b, c, h, w, generator=g, dtype=torch.float64)
    label = torch.randn(n, b, d, h, w, generator=g, dtype=torch.float64)
    weight = 0.5 + torch.rand(n, b, d, h, w, generator=g, dtype=torch.float64)
    return LearnerMemory(feat, label, weight)


def _learner(c, d, k=3, reg=0.3):
    learner = FewShotLearner(InductionConfig(filter_size=k, init_reg=reg), c, d).double()
    return learner


def test_filter_gradient_is_the_adjoint_of_apply_filter():
    mem = _problem()
    tau = torch.randn(2, 2, 4, 3, 3, dtype=torch.float64)
    res = torch.randn(3, 2, 2, 5, 6, dtype=torch.float64)
    lhs = (apply_filter(mem.feat, tau) * res).sum()
    rhs = (tau * filter_gradient(mem.feat, res, 3)).sum()
    torch.testing.assert_close(lhs, rhs)


def test_gradient_matches_autograd():
    mem = _problem()
    learner = _learner(4, 2)
    tau = torch.randn(2, 2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    r = learner.filter_reg.detach()
    loss = (
        0.5 * (mem.weight * (apply_filter(mem.feat, tau) - mem.label)).square().sum() + 0.5 * (r * tau).square().sum()
    )
    (auto,) = torch.autograd.grad(loss, tau)
    # one step of size alpha moves along -g: recover g from the step and compare directions
    with torch.no_grad():
        stepped = learner.step(tau.detach(), mem)
    direction = tau.detach() - stepped
    cos = torch.nn.functional.cosine_similarity(direction.flatten(1), auto.flatten(1), dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_steepest_descent_lowers_the_loss_every_step():
    mem = _problem()
    learner = _learner(4, 2)
    with torch.no_grad():
        _, losses = learner(mem, num_iter=10, track_loss=True)
    values = torch.stack(losses)
    assert len(values) == 11
    assert (values[1:] < values[:-1]).all()


def test_exact_step_length_minimises_along_the_gradient():
    mem = _problem(seed=1)
    learner = _learner(4, 2)
    tau = torch.randn(2, 2, 4, 3, 3, dtype=torch.float64) * 0.1
    with torch.no_grad():
        best = learner.step(tau, mem)
        direction = best - tau
        for scale in (0.8, 1.2):
            assert learner.loss(tau + scale * direction, mem) > learner.loss(best, mem)


def test_converges_to_the_closed_form_ridge_solution():
    """On a tiny problem, many steps reach argmin of eq. (1), solved as a linear system."""
    mem = _problem(n=2, b=1, c=2, d=1, h=4, w=4, seed=2)
    reg = 3.0
    learner = _learner(2, 1, k=3, reg=reg)
    with torch.no_grad():
        tau, _ = learner(mem, num_iter=400)
    # Columns of A: the response to each basis filter; solve (A^T W^2 A + r^2 I) t = A^T W^2 y.
    nparam = 1 * 2 * 3 * 3
    basis = torch.eye(nparam, dtype=torch.float64).reshape(nparam, 1, 1, 2, 3, 3)
    a = torch.stack([apply_filter(mem.feat, e).flatten() for e in basis], dim=1)
    w2 = mem.weight.flatten().square()
    lhs = a.T @ (w2[:, None] * a) + reg**2 * torch.eye(nparam, dtype=torch.float64)
    rhs = a.T @ (w2 * mem.label.flatten())
    exact = torch.linalg.solve(lhs, rhs).reshape(tau.shape)
    torch.testing.assert_close(tau, exact, rtol=1e-5, atol=1e-7)


def test_warm_start_and_sample_weights():
    mem = _problem(seed=3)
    learner = _learner(4, 2)
    with torch.no_grad():
        tau5, _ = learner(mem, 5)
        tau2, _ = learner(mem, 2)
        tau2_3, _ = learner(mem, 3, tau2)
    torch.testing.assert_close(tau5, tau2_3)
    ones = LearnerMemory(mem.feat, mem.label, mem.weight, torch.ones(3, 2, dtype=torch.float64))
    torch.testing.assert_close(learner.loss(tau5, ones), learner.loss(tau5, mem))


def test_learner_is_differentiable_in_labels_and_regulariser():
    mem = _problem()
    label = mem.label.clone().requires_grad_(True)
    learner = _learner(4, 2)
    tau, _ = learner(LearnerMemory(mem.feat, label, mem.weight), 3)
    tau.square().sum().backward()
    assert label.grad is not None and label.grad.abs().sum() > 0
    assert learner.filter_reg.grad is not None and learner.filter_reg.grad.abs().sum() > 0
