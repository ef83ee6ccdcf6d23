"""A1111's `modules.memmon`: `shared.mem_mon`, the memory figures of a job.

As in A1111, a thread polls the device's free memory ``memmon_poll_rate`` times a second between
`monitor()` (a job starts) and `stop()` (it ends), keeping the lowest figure (`min_free`); a rate of 0
polls nothing. `read()` adds torch's CUDA counters with A1111's keys (bytes). On a device without
CUDA the polled figure is the memory the kernel could still give (Easel runs there too); the CUDA
counters are left out. The thread starts with the first `monitor()` when nobody started it."""

from __future__ import annotations

import threading
import time


class MemUsageMonitor(threading.Thread):
    def __init__(self, name, device, opts):
        super().__init__(name=name, daemon=True)
        self.device = device
        self.opts = opts
        self.disabled = False
        self.data: dict = {}
        self.polls = 0  # free-memory polls of the current (or last) job
        self.run_flag = threading.Event()
        self._start_lock = threading.Lock()

    def _cuda(self) -> bool:
        import torch

        return getattr(self.device, "type", str(self.device)) == "cuda" and torch.cuda.is_available()

    def cuda_mem_get_info(self):
        import torch

        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return torch.cuda.mem_get_info(index)

    def _free(self) -> int:
        if self._cuda():
            return int(self.cuda_mem_get_info()[0])
        import torch

        from modules.core.memory import available_bytes

        return available_bytes(torch.device("cpu"))

    def poll_rate(self) -> float:
        """A1111's memmon_poll_rate (polls a second; 0 or less: none)."""
        opts = self.opts
        value = opts.get("memmon_poll_rate") if hasattr(opts, "get") else getattr(opts, "memmon_poll_rate", 8)
        try:
            return float(8 if value is None else value)
        except (TypeError, ValueError):
            return 8.0

    def run(self):
        if self.disabled:
            return
        while True:
            self.run_flag.wait()
            if self._cuda():
                import torch

                torch.cuda.reset_peak_memory_stats(self.device)
            self.data.clear()
            self.polls = 0
            rate = self.poll_rate()
            if rate <= 0:  # disabled: nothing polled for this job
                self.run_flag.clear()
                continue
            self.data["min_free"] = self._free()
            self.polls = 1
            while self.run_flag.is_set():
                self.data["min_free"] = min(self.data["min_free"], self._free())
                self.polls += 1
                time.sleep(1 / rate)

    def monitor(self):
        """A job starts: poll until `stop()`."""
        with self._start_lock:
            if not self.is_alive() and not self.disabled:
                try:
                    self.start()
                except RuntimeError:  # started and ended before: nothing more to poll
                    pass
        self.run_flag.set()

    def read(self) -> dict:
        data = self.data
        if self._cuda():
            import torch

            free, total = self.cuda_mem_get_info()
            stats = torch.cuda.memory_stats(self.device)
            data.update(free=free, total=total, active=stats.get("active_bytes.all.current", 0),
                        active_peak=stats.get("active_bytes.all.peak", 0),
                        reserved=stats.get("reserved_bytes.all.current", 0),
                        reserved_peak=stats.get("reserved_bytes.all.peak", 0))
            data["system_peak"] = total - data.get("min_free", free)
        return dict(data)

    def stop(self) -> dict:
        self.run_flag.clear()
        return self.read()

    def dump_debug(self):
        print(self, "recorded data:")
        for key, value in self.read().items():
            print(key, -(value // -(1024 ** 2)))
