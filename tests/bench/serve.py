"""The app a benchmark server process runs: `uvicorn tests.bench.serve:app` or
`gunicorn tests.bench.serve:app`, with the subject named in TIERCACHE_BENCH_SUBJECT and its
files under TIERCACHE_BENCH_TMP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.bench.suite import by_name

_spec = by_name(os.environ["TIERCACHE_BENCH_SUBJECT"])
_tmp = Path(os.environ["TIERCACHE_BENCH_TMP"])
_tmp.mkdir(parents=True, exist_ok=True)
app: Any = _spec.build(_tmp)
