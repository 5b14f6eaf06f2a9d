"""log ive(nu, kappa) with its analytic derivative, for the vMF log-normaliser (SPEC.md §1.4).

ive(nu, k) = I_nu(k) e^{-k} is evaluated by scipy.special.ive in float64 on the CPU (one host
synchronisation per call, as in the official code). Working with the log keeps the value finite for
orders up to 32 and kappa from 1e-2 to 1e4, where ive itself spans about 1e-110 to 1e-2.
d/dk log ive(nu, k) = ive(nu - 1, k) / ive(nu, k) - (nu + k) / k.

Outside that range (kappa 0, or ive underflowing to 0 as a run diverges) the log and the ratio are
-inf, inf or NaN. numpy would warn "divide by zero" / "invalid value" / "overflow" at every call, flooding the
log; those warnings are silenced here, around these expressions only, and the values are left as
they are: a non-finite loss stops the run through the trainer's own check.
"""
from __future__ import annotations

import numpy as np
import scipy.special
import torch


def _log_ive_numpy(nu: float, kappa: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):  # log(0) = -inf where ive underflows
        return np.log(scipy.special.ive(nu, kappa))


def _dlog_ive_numpy(nu: float, kappa: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # x / 0, 0 / 0, x / denormal
        ratio = scipy.special.ive(nu - 1.0, kappa) / scipy.special.ive(nu, kappa)
        return ratio - (nu + kappa) / kappa


class LogIve(torch.autograd.Function):
    """log ive(nu, kappa) for a fixed order nu and a tensor kappa > 0."""

    @staticmethod
    def forward(ctx, kappa: torch.Tensor, nu: float) -> torch.Tensor:
        ctx.nu = float(nu)
        ctx.save_for_backward(kappa)
        k = kappa.detach().double().cpu().numpy()
        return torch.as_tensor(_log_ive_numpy(ctx.nu, k), dtype=kappa.dtype, device=kappa.device)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (kappa,) = ctx.saved_tensors
        k = kappa.detach().double().cpu().numpy()
        deriv = torch.as_tensor(_dlog_ive_numpy(ctx.nu, k), dtype=kappa.dtype, device=kappa.device)
        return grad_output * deriv, None


def log_ive(nu: float, kappa: torch.Tensor) -> torch.Tensor:
    """log(I_nu(kappa) e^{-kappa}), differentiable in kappa."""
    return LogIve.apply(kappa, nu)


def vmf_log_normaliser(kappa: torch.Tensor, dim: int) -> torch.Tensor:
    """log C~_p(kappa) = (m - 1) log kappa - kappa - log ive(m - 1, kappa), m = p / 2.

    The log-normaliser of a vMF on S^{p-1} without the -(p/2) log 2 pi constant (SPEC §1.4).
    """
    m = dim / 2.0
    return (m - 1.0) * torch.log(kappa) - kappa - log_ive(m - 1.0, kappa)
