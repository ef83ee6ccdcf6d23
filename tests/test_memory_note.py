"""The device memory line under the page's pictures (A1111's "A: … R: … Sys: …"), from the memory
monitor's figures; none on a device without allocator counters (the CPU)."""

from __future__ import annotations

from modules.ui.memory_note import memory_note

GIB = 1024 ** 3


def test_cuda_figures_read_as_a1111_writes_them():
    stats = {"min_free": 19 * GIB, "free": 20 * GIB, "total": 24 * GIB, "active": GIB, "active_peak": int(3.21 * GIB),
             "reserved": 2 * GIB, "reserved_peak": int(3.5 * GIB), "system_peak": 5 * GIB}
    assert memory_note(stats) == "A: 3.21 GB, R: 3.50 GB, Sys: 5.0/24 GB (20.8%)"


def test_nothing_without_device_counters():
    assert memory_note({}) == ""
    assert memory_note({"min_free": 12 * GIB}) == ""  # the CPU: only the polled free memory
    assert memory_note({"active_peak": 0, "total": 24 * GIB}) == ""
