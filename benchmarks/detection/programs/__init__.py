"""The detection programs, one module per failure class, in the order the table lists them.

Each module defines `CLASS` (a `FaultClass`) and `train(out_dir, *, buggy) -> Outcome`; the buggy program and
its healthy twin are the same code with `buggy` switching the one place the fix changes.
"""

PROGRAMS = (
    "lr_too_high",
    "lr_too_low",
    "zero_init",
    "dying_relu_lr",
    "dying_relu_bias",
    "log_zero_nan",
    "division_nan",
    "adam_eps_zero",
    "frozen_layer",
    "saturating_sigmoid",
    "saturating_tanh",
    "missing_norm",
    "huge_init",
    "exploding_rnn",
    "unscaled_inputs_sgd",
    "unscaled_inputs_adam",
)
