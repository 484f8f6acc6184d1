"""The one duration formatter of the command line (demo and bench)."""

from __future__ import annotations

__all__ = ("fmt_time",)


def fmt_time(seconds: float) -> str:
    """A duration with a readable unit (ns, µs, ms)."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"
