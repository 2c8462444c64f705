"""python -m fastdrop.bench: fastdrop against torch's native ops.

The benchmark lives in the repository's benchmarks/ folder; this entry point
finds it next to the package (an editable install or a source checkout).
"""

import sys
from pathlib import Path

repository = Path(__file__).resolve().parent.parent
if not (repository / "benchmarks" / "run.py").exists():
    raise SystemExit("fastdrop.bench needs the source tree: clone the repository and `pip install -e .` it")
if str(repository) not in sys.path:
    sys.path.insert(0, str(repository))

from benchmarks.run import main  # noqa: E402

if __name__ == "__main__":
    main()
