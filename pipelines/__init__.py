"""citylake: the Hefei city data lake."""

import os

# numpy's OpenBLAS starts a worker thread per core at import, which spins ~0.1 s of CPU for nothing (a load
# of 5 M rows: 0.1-0.2 s of CPU and ~0.05 s of wall on 2 cores): no citylake code does linear algebra. Set
# before numpy is first imported (by pyarrow, pandas, GX); a setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
