"""A1111's `modules.memmon`: `shared.mem_mon`, the memory figures the UI shows after a job.

A1111 polls CUDA on a thread; Easel reads the figures when asked (`read()`), from torch's CUDA
counters and the process' resident size, with A1111's keys (bytes)."""

from __future__ import annotations

import threading


class MemUsageMonitor(threading.Thread):
    def __init__(self, name, device, opts):
        super().__init__(name=name, daemon=True)
        self.device = device
        self.opts = opts
        self.disabled = False
        self.data: dict = {}
        self.run_flag = threading.Event()

    def _cuda(self) -> bool:
        import torch

        return getattr(self.device, "type", str(self.device)) == "cuda" and torch.cuda.is_available()

    def cuda_mem_get_info(self):
        import torch

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return torch.cuda.mem_get_info(index)

    def run(self):
        """Nothing to poll: read() asks torch directly."""

    def monitor(self):
        """A1111 resets the peaks here."""
        if self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        data: dict = {}
        if self._cuda():
            import torch

            free, total = self.cuda_mem_get_info()
            stats = torch.cuda.memory_stats(self.device)
            data.update(free=free, total=total, active=stats.get("active_bytes.all.current", 0),
                        active_peak=stats.get("active_bytes.all.peak", 0),
                        reserved=stats.get("reserved_bytes.all.current", 0),
                        reserved_peak=stats.get("reserved_bytes.all.peak", 0),
                        system_peak=total - free)
            data["min_free"] = free
        self.data = data
        return data

    def stop(self) -> dict:
        return self.read()

    def dump_debug(self):
        print(self, "recorded data:")
        for key, value in self.read().items():
            print(key, -(value // -(1024 ** 2)))
