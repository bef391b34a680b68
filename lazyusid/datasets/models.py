"""Physical models of the synthetic data: a damped simple harmonic oscillator, a hysteresis loop."""

from __future__ import annotations

import numpy as np


def sho_response(freqs, amplitude, frequency, quality_factor, phase) -> np.ndarray:
    """Complex response of a damped simple harmonic oscillator.

    ``R(w) = A · w0² / (w² − w0² − i·w·w0/Q) · exp(i·φ)``, evaluated in
    float64. At resonance ``R(w0) = i·A·Q·exp(i·φ)``; far below it
    ``R → −A·exp(i·φ)``. Only the ratio ``w / w0`` enters, so any frequency
    unit works as long as ``freqs`` and ``frequency`` share it.

    Parameters
    ----------
    freqs : array-like, shape (n_freq,)
        Frequencies ``w`` at which to evaluate the response.
    amplitude, frequency, quality_factor, phase : array-like
        ``A``, ``w0`` (> 0), ``Q`` (> 0) and ``φ`` (radians); scalars or
        arrays that broadcast against each other.

    Returns
    -------
    numpy.ndarray of complex128, shape ``(*broadcast shape of the parameters, n_freq)``

    Examples
    --------
    >>> f = np.linspace(300e3, 350e3, 5)
    >>> r = sho_response(f, 1e-3, 325e3, 100.0, 0.0)
    >>> round(float(r[2].imag), 9)                          # on resonance: i·A·Q
    0.1
    >>> sho_response(f, np.ones((4, 3)), 325e3, 100.0, 0.0).shape
    (4, 3, 5)
    """
    w = np.asarray(freqs, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"freqs must be a 1-D array of frequencies, got shape {w.shape}")
    amp, w0, q, phi = (
        np.asarray(p, dtype=np.float64)[..., None] for p in (amplitude, frequency, quality_factor, phase)
    )
    ratio = w / w0  # only w/w0 enters: w0²/(w² − w0² − i·w·w0/Q) = 1/(r² − 1 − i·r/Q)
    denom = np.empty(ratio.shape, dtype=np.complex128)
    denom.real = ratio * ratio - 1.0
    denom.imag = -ratio / q
    return amp * (np.cos(phi) + 1j * np.sin(phi)) / denom


def polarisation(dc_offsets, coercive_voltage, *, switching_width: float = 1.0) -> np.ndarray:
    """Ferroelectric polarisation along a DC waveform, following a hysteresis loop.

    While the voltage rises, ``P = tanh((V − Vc) / width)`` (switching up
    to +1 above ``+Vc``); while it falls, ``P = tanh((V + Vc) / width)``
    (switching down to −1 below ``−Vc``). Whether step ``k`` rises or falls
    is read from ``V[k] − V[k−1]``, cyclically (the waveform repeats; steps
    with no change keep the previous direction). ``P`` stays in [−1, 1].

    Parameters
    ----------
    dc_offsets : array-like, shape (n_dc,)
        The DC voltage at each step, in the order it is applied.
    coercive_voltage : array-like
        ``Vc`` (positive, same units as ``dc_offsets``), e.g. a 2-D map.
    switching_width : float
        Voltage over which the polarisation switches (``width`` above).

    Returns
    -------
    numpy.ndarray of float64, shape ``(*coercive_voltage.shape, n_dc)``

    Examples
    --------
    >>> v = np.array([0.0, 5.0, 10.0, 5.0, 0.0, -5.0, -10.0, -5.0])
    >>> np.round(polarisation(v, 3.0, switching_width=0.5), 2)
    array([-1.,  1.,  1.,  1.,  1., -1., -1., -1.])
    """
    v = np.asarray(dc_offsets, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"dc_offsets must be a non-empty 1-D array, got shape {v.shape}")
    if not switching_width > 0:
        raise ValueError(f"switching_width must be positive, got {switching_width!r}")
    step = np.sign(v - np.roll(v, 1))
    nonzero = np.flatnonzero(step)
    if nonzero.size == 0:
        rising = np.ones(v.size, dtype=bool)
    else:
        # a step with no change keeps the direction of the last step that changed (cyclically)
        last = np.maximum.accumulate(np.where(step != 0, np.arange(v.size), -1))
        last[last < 0] = nonzero[-1]
        rising = step[last] > 0
    vc = np.asarray(coercive_voltage, dtype=np.float64)[..., None]
    threshold = np.where(rising, vc, -vc)
    return np.tanh((v - threshold) / switching_width)


def triangle(t: np.ndarray) -> np.ndarray:
    """One period of a triangle wave: 0 → 1 at t=¼ → −1 at t=¾ → 0 at t=1."""
    t = np.mod(t, 1.0)
    return np.where(t < 0.25, 4 * t, np.where(t < 0.75, 2 - 4 * t, 4 * t - 4))
