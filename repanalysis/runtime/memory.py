"""How much memory a computation may use: refuse work that cannot fit, with the estimate.

``available`` is the free memory of a device: CUDA's free memory, or the
host's available memory (``MemAvailable`` of ``/proc/meminfo``, else the
physical memory).
"""

from __future__ import annotations

import os

from repanalysis.errors import UserError


def available(device=None) -> int:
    """Free bytes on ``device`` (a ``torch.device``; None or CPU: the host)."""
    if device is not None and device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(need: int, what: str, advice: str, device=None) -> None:
    """Refuse ``what`` (needing ``need`` bytes) when it exceeds what ``device`` has free."""
    have = available(device)
    if need > have:
        where = "the host" if device is None or device.type != "cuda" else str(device)
        raise UserError(f"{what} needs about {need / 2**30:,.1f} GiB; {where} has {have / 2**30:,.1f} GiB "
                        f"available; {advice}")
