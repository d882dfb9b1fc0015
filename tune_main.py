"""Start a sweep: `python tune_main.py --space vit_head_mlp` (same options as `rsst-tune tune`).

Examples:

    python tune_main.py --list-spaces
    python tune_main.py --space vit_head_mlp --preset smoke
    python tune_main.py --space vit_head_mlp --dry-run
    python tune_main.py --resume experiments/vit_head_mlp-20250101-120000
"""

from __future__ import annotations

import sys

from rsst_tune.tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
