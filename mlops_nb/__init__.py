__version__ = "0.1.0"

import os as _os

# XGBoost's OpenMP threads would otherwise spin while they wait for work, taking the cores from everything else
# on a machine that also serves, tests or trains (a study beside two busy processes took 3.7 to 6.5 times as long).
# Set before any module here loads XGBoost, whose OpenMP runtime reads it once; a value set outside is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
