"""Default thresholds of the checks, each with the reason for its number and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """Every tunable number of the checks; names are the config keys with `_` for `-`."""

    # DeepDiagnosis (Wardat et al., ICSE 2022) flags vanishing at mean|g| < 1e-7; TheDeepChecker uses 1e-6.
    # We take the stricter bound and add the relative condition below, so that a network whose gradients are
    # all small late in training (loss near zero) is not called vanishing.
    vanishing_mean: float = 1e-7
    # AutoTrainer (Zhang et al., ICSE 2021): first/last layer gradient-norm ratio < 1e-3 means vanishing.
    # Here: the layer's gradient RMS against the largest layer's at the same step. RMS, not the norm, because a
    # norm grows with the square root of the size and would call every small layer next to a big one vanishing.
    vanishing_relative: float = 1e-3
    # TheDeepChecker (Ben Braiek & Khomh): mean|g| > 1e6 is exploding, whatever the depth.
    exploding_mean: float = 1e6
    # AutoTrainer: a layer's gradient 70x the last layer's signals explosion through depth (compared as RMS, as
    # above). Warning only: the "last layer" is the last in model order, which may be a small head or a final
    # norm whose gradient scale differs for reasons of its own.
    exploding_relative: float = 70.0
    # A gradient norm 100x the median of the parameter's earlier recorded steps: orders of magnitude, not noise.
    spike_factor: float = 100.0
    # Minimum earlier recorded steps before a spike can be judged against their median.
    spike_history: int = 3
    # TheDeepChecker: gradient norm growing >= 2x per recorded step, sustained over a window, is exploding.
    growth_factor: float = 2.0
    growth_window: int = 5
    # TheDeepChecker's mirror rule: shrinking to <= 0.5x per recorded step over a window is a vanishing trend.
    # Warning only: gradients of a run that converges (loss near zero) shrink too.
    shrink_factor: float = 0.5
    shrink_window: int = 5
    # One snapshot cannot tell a dead parameter from a zero-initialised path (LoRA's B = 0 makes A's first
    # gradient exactly zero), so `dead` needs this many recorded steps with a gradient.
    dead_min_steps: int = 2
    # A unit (row of a weight, output channel of a conv, element of a bias) whose gradient is exactly zero at
    # every recorded step is dead. AutoTrainer (Zhang et al., ICSE 2021) calls a layer dying-ReLU when >= 70 %
    # of its gradients are zero; here the fraction of dead *units*, which a healthy ReLU layer never reaches
    # (sample runs: 0 % dead in healthy_mlp; benchmarks/calibration figures in docs/CHECKS.md).
    dead_units: float = 0.7
    # Errors other than `nonfinite` need their condition at this many recorded steps in a row: one step of
    # exact zeros (batch size 1, a saturated output) or one ordinary gradient after convergence is not a
    # diagnosis (issue 11), while every vanishing/exploding sample run fires at 3 or more steps in a row.
    min_steps: int = 2
    # The update-ratio band, measured on real optimizers (benchmarks/calibration/update_ratio.py; figures in
    # docs/CHECKS.md): median over the recorded steps of log10(mean|update| / mean|param| of the first
    # recorded step). Healthy runs (Adam, AdamW with GPT-2 init, SGD; MLP, CNN, GPT) span -3.05 to -1.61;
    # lr x100 reaches -0.83 or above in every configuration, lr /100 -3.74 or below. DL4J's -4 / -2 band on
    # the current weights (a) warns on healthy AdamW with GPT-2 init (-1.8 to -2.5) and (b) misses lr x100,
    # because the weights inflate until the ratio is back near -2 (-1.72 median for the GPT at lr 0.1).
    update_ratio_low: float = -3.4
    update_ratio_high: float = -1.2
    # The loss and activation checks (analysis/signal_checks.py, issue #16); their windows and the rest of their
    # evidence sit next to the other constants there. Per module (or `loss`) an override's params globs apply.
    # Saturation: a sigmoid/tanh/softmax output with at least this share of its values (softmax: rows) at the
    # bounds. benchmarks/detection_activations (digits, every=10): unscaled pixels put 0.97-0.99 of a tanh
    # hidden layer, 0.87 then 1.0 of a sigmoid output layer and 1.0 of a 1-unit softmax at the bounds; the
    # healthy twins stay at 0.00-0.08, and a confident softmax classifier late in training reaches 0.88.
    saturation_share: float = 0.9
    # Dead activations: a ReLU-family output with at least this share of its units zero for every input.
    # Healthy digits MLPs keep at most 8-19 % of their 64 ReLU units silent at a recorded step; `dying_relu`
    # (SGD lr 3) has 78 % at step 10 and 100 % from step 60.
    dead_activations_share: float = 0.5
    # Loss stuck: the median loss of the last third of the recorded steps is not at least this fraction below
    # the first third's (or the first loss). Digits, 30 recorded steps: healthy runs drop 56-86 %; lr 1e-5
    # drops 0.4 %, dying ReLU 1.1 %.
    loss_stuck_drop: float = 0.02


# The thresholds of the loss and activation checks, added after JSON schema 1: its documents keep the others.
SIGNAL_THRESHOLDS = frozenset({"saturation_share", "dead_activations_share", "loss_stuck_drop"})
SCHEMA_1_KEYS = tuple(f.name for f in fields(Thresholds) if f.name not in SIGNAL_THRESHOLDS)


THRESHOLD_KEYS: dict[str, str] = {f.name.replace("_", "-"): f.name for f in fields(Thresholds)}
