"""The one switch: ``RLHF_ENV_ACCEL=0`` (or false/off/no) turns every accelerated path off."""

from __future__ import annotations

import contextlib
import os

ENV_VAR = "RLHF_ENV_ACCEL"
_OFF = ("0", "false", "off", "no")


def switched_on() -> bool:
    """False when ``RLHF_ENV_ACCEL`` is 0/false/off/no (read at every call, so that it can be flipped)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in _OFF


@contextlib.contextmanager
def switched_off():
    """Inside this block acceleration is off (``RLHF_ENV_ACCEL=0``): models loaded and decoders chosen here
    stay on stock PyTorch afterwards too."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = before
