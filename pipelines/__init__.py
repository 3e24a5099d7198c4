"""citylake: the Hefei city data lake."""

import os
import sys

# numpy's OpenBLAS starts a worker thread per core at import, which spins ~0.1 s of CPU for nothing (a load
# of 5 M rows: 0.1-0.2 s of CPU and ~0.05 s of wall on 2 cores): no citylake code does linear algebra. Set
# before numpy is first imported (by pyarrow, pandas, GX); a setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Arrow allocates from jemalloc, not mimalloc (pyarrow's default), where pyarrow has it: its Linux x86-64
# wheels (the aarch64 ones have been built without it since Arrow 18, and Arrow would warn on every start).
# Paired runs, 5 M rows, 2 cores: a first PostgreSQL load peaked at 391-398 MB against 430-454 MB, its
# writer threads spending 5-25 % less CPU; a full refresh at 428-434 MB against 465-502 MB in the same time
# (mimalloc kept the pages each phase of the compare freed). Read by Arrow at its first allocation, so set
# before pyarrow is first used; a setting in the environment wins.
if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
