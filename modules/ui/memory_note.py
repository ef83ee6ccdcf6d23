"""The device memory line A1111 writes under the pictures after a page job, from its memory monitor's
figures (modules.memmon: the job's peaks, polled memmon_poll_rate times a second)."""

from __future__ import annotations

MIB = 1024 * 1024


def memory_note(stats: dict) -> str:
    """"A: 3.21 GB, R: 3.50 GB, Sys: 5.1/24 GB (21.3%)" (active and reserved peaks of torch's allocator,
    the device's peak use by everything on it, which the polls measure); "" where there are no device
    counters (the CPU) or nothing was allocated."""
    mib = {key: -(int(value) // -MIB) for key, value in stats.items() if isinstance(value, (int, float))}
    if mib.get("active_peak", 0) <= 0:
        return ""
    total = max(mib.get("total", 0), 1)
    system_peak = mib.get("system_peak", 0)
    return (f"A: {mib['active_peak'] / 1024:.2f} GB, R: {mib.get('reserved_peak', 0) / 1024:.2f} GB, "
            f"Sys: {system_peak / 1024:.1f}/{total / 1024:g} GB ({system_peak / total * 100:.1f}%)")
