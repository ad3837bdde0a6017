"""Least-squares fits shared by the experiments: growth exponents on log-log axes, with standard errors."""

from __future__ import annotations

import numpy as np


def least_squares(columns: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of y ~ 1 + columns and their standard errors (OLS, residual variance with n - p dof)."""
    X = np.column_stack([np.ones_like(y)] + columns)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(y) - X.shape[1]
    if dof <= 0:
        return coef, np.full_like(coef, np.nan)
    sigma2 = float(((y - X @ coef) ** 2).sum()) / dof
    return coef, np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))


def loglog_slope(x, y) -> dict[str, float]:
    """Slope of log y against log x with its standard error (``nan`` when undetermined)."""
    x, y = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(set(x.tolist())) < 2:
        return {"exponent": float("nan"), "se": float("nan"), "points": len(x)}
    coef, se = least_squares([x], y)
    return {"exponent": float(coef[1]), "se": float(se[1]), "intercept": float(coef[0]), "points": len(x)}
