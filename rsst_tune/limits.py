"""Every input limit in one place: the largest (or smallest) value a user may give.

Plain constants and nothing else, so any module may import them (the sweep's CLI too, which
must stay light): no project or third-party import here. The validators that use them quote
these numbers in their messages. The trial config's limits are also importable from
`rsst_tune.config`, where they were first declared.
"""

from __future__ import annotations

# ---------------------------------------------------------------------- trial config
MAX_STATES = 100  # pruning_times: state_00.pt ... state_99.pt, checkpoint names have two digits
MAX_EPOCHS = 100_000  # epochs, finetune_epochs, rewind_epoch, warmup_epochs, decreasing_lr
MAX_BATCH = 2**20  # batch_size, eval_batch_size
MAX_SEED = 2**32 - 1  # seed (and a sweep's --seed): what every generator (torch, numpy) accepts
MAX_THREADS = 4096  # threads; and at most the cores of the machine that runs it (`check_host`)
MAX_COUNT = 2**20  # min_units, score_batches, decreasing_lr entries
MAX_VAL_SIZE = 10**9  # val_size: validation images carved from train
MAX_WORKERS = 256  # data_workers (and a sweep's --data-workers)
MAX_IMG_SIZE = 4096  # img_size; also where `models.inputs` stops searching for a valid size
MAX_TEMPERATURE = 1e3  # distill_T: T² scales the soft loss
MAX_COEFF = 1e6  # lr, weight decay, λ's ceiling, k: larger overflow float32 arithmetic
MAX_LAYERS = 100_000  # entries of a per-layer ratio list (head_ratios, mlp_ratios, ...)
MAX_CONFIG_BYTES = 16 * 2**20  # a config file (rsst-tune run --config): 16 MiB
MAX_JSON_DEPTH = 64  # brackets nested in a config file (rsst-tune run --config)

# ---------------------------------------------------------------------- checkpoints
MAX_STATE = MAX_STATES - 1  # the last state a checkpoint file name can hold (two digits)

# ---------------------------------------------------------------------- rsst-tune export
MAX_REPEATS = 10_000  # --repeats: timed runs per model and batch size

# ---------------------------------------------------------------------- sweeps (rsst_tune.tune)
MAX_SAMPLES = 1_000_000  # --num-samples and --max-concurrent: trials, concurrent trials
MAX_RESOURCES = 4096.0  # --cpus-per-trial, --gpus-per-trial: CPUs or GPUs per trial
MAX_TRIAL_WORKERS = 1024  # --workers-per-trial (and `rsst-tune run --workers`)
MAX_REDUCTION_FACTOR = 100  # --reduction-factor of the ASHA/MO-ASHA schedulers (at least 2)
MAX_FAILURES = 100  # --max-failures: restarts per trial
MAX_CONFIRM = 20  # --confirm: extra seeds that re-run each budget's best config
