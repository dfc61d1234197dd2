"""Imported once by the forkserver that forks the engine worker processes (``process_pool``).

Whatever is loaded here is inherited by every worker forked afterwards, replacements included: the
engine modules (no torch), PyAV (the MP3 and Ogg Opus encoders: 0.1 s to import, which the first
such segment on every worker paid) and jieba's dictionary, which the eSpeak engine loads in its warm-up
(1 s on an idle 2-core machine, over 5 s under load: too slow to pay per worker and per restart).
"""

from __future__ import annotations

import os

# One BLAS thread per worker, set before numpy loads OpenBLAS: the workers already fill every core
# (one per core), and the resampler's matrix products were big enough for OpenBLAS to wake a second
# thread that spun on the other core (worker CPU per audio second rose by 60 % at 64 clients).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import av  # noqa: F401, E402

import stream_server.engine_worker  # noqa: F401, E402  (the worker's entry point and engine imports; after the variables)
from engine.espeak_text import warm_up  # noqa: E402

warm_up()
