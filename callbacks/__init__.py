"""The methods' mechanisms as Lightning callbacks, one file per mechanism (installed as `cvit.callbacks`).

Importing this package registers every built-in callback under its YAML name.
"""

from cvit.callbacks import (  # noqa: F401
    dynamic_ema,
    ewc,
    hide,
    instruction_grouping,
    lwf,
    moelora,
    olora,
    progressive_pool,
    replay,
    smolora,
    task_recall,
)
