"""Imported once by the forkserver that forks the engine worker processes (``process_pool``).

Whatever is loaded here is inherited by every worker forked afterwards, replacements included: the
engine modules (no torch) and jieba's dictionary, which the eSpeak engine loads in its warm-up
(1 s on an idle 2-core machine, over 5 s under load: too slow to pay per worker and per restart).
"""

from __future__ import annotations

import stream_server.engine_worker  # noqa: F401  (the worker's entry point and engine imports)
from engine.espeak_text import warm_up

warm_up()
