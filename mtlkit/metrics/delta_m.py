"""Multi-task performance delta_m against single-task baselines (MTI-Net eq. 2, paper 004).

    delta_m = (1 / T) * sum_i (-1)^{l_i} (M_mt,i - M_st,i) / M_st,i       (x 100, in %)

with l_i = 1 when a lower value of task i's measure is better (depth rmse, normals mean error)
and 0 otherwise (the same quantity is BFCI's Delta_MTL, paper 000 eq. 8-9). Each task uses its
main measure (``MAIN_METRICS``); the single-task references are read from reports, never
hard-coded (SPEC-data-eval.md).

Saliency has two main measures in the literature: MTI-Net's paper (Sec. 4.1) and its authors'
code (MTL-PT ``evaluate_utils.calculate_multi_task_performance``) use saliency mIoU; ATRC,
InvPT and the later papers (BFCI, TIF) use maxF. ``MAIN_METRICS`` holds maxF (the default);
:func:`main_metrics` gives the table for either choice.
"""

from __future__ import annotations

from collections.abc import Mapping

from mtlkit.errors import ConfigError

MAIN_METRICS: dict[str, str] = {
    "semseg": "mIoU",
    "parts": "mIoU",
    "depth": "rmse",
    "normals": "mean",
    "edge": "odsF",
    "saliency": "maxF",
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "semseg": True,
    "parts": True,
    "depth": False,
    "normals": False,
    "edge": True,
    "saliency": True,
}

#: the saliency measures delta_m can use: maxF (ATRC / InvPT) or mIoU (MTI-Net / MTL-PT)
SALIENCY_METRICS: tuple[str, ...] = ("maxF", "mIoU")

Metrics = Mapping[str, Mapping[str, float]]


def main_metrics(saliency_metric: str = "maxF") -> dict[str, str]:
    """``MAIN_METRICS`` with saliency scored by ``saliency_metric`` (``maxF`` or ``mIoU``).

    ConfigError for any other name. Both are higher-is-better (``HIGHER_IS_BETTER`` holds).
    """
    if saliency_metric not in SALIENCY_METRICS:
        raise ConfigError(f"unknown saliency metric {saliency_metric!r} for delta_m",
                          f"choose from: {', '.join(SALIENCY_METRICS)}")
    return {**MAIN_METRICS, "saliency": saliency_metric}


def delta_per_task(
    mt: Metrics,
    st: Metrics,
    main_metrics: Mapping[str, str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> dict[str, float]:
    """Signed relative change (%) of each task of ``mt`` w.r.t. ``st`` (eq. 2, one summand).

    ``mt``/``st``: ``{task: {metric: value}}`` (e.g. a report's ``metrics``); every task of
    ``mt`` must be present in ``st``. Positive = the multi-task model is better.
    """
    main = MAIN_METRICS if main_metrics is None else main_metrics
    hib = HIGHER_IS_BETTER if higher_is_better is None else higher_is_better
    out: dict[str, float] = {}
    for task in mt:
        if task not in main or task not in hib:
            raise ConfigError(f"delta_m: no main metric / direction known for task {task!r}",
                              "pass main_metrics and higher_is_better for it")
        metric = main[task]
        if task not in st or st[task].get(metric) is None:
            raise ConfigError(f"delta_m: the single-task reference lacks {task}.{metric}",
                              "give a single-task report that contains this task")
        if mt[task].get(metric) is None:
            raise ConfigError(f"delta_m: the multi-task results lack {task}.{metric}",
                              "evaluate the task before computing delta_m")
        m, b = float(mt[task][metric]), float(st[task][metric])
        if b == 0:
            raise ConfigError(f"delta_m: single-task {task}.{metric} is 0",
                              "the reference must have a non-zero score")
        sign = 1.0 if hib[task] else -1.0
        out[task] = sign * (m - b) / b * 100.0
    return out


def delta_m(
    mt: Metrics,
    st: Metrics,
    main_metrics: Mapping[str, str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """delta_m in % (MTI-Net eq. 2): the mean over the tasks of ``mt`` of :func:`delta_per_task`.

    ``main_metrics`` / ``higher_is_better`` default to :data:`MAIN_METRICS` /
    :data:`HIGHER_IS_BETTER`.
    """
    per_task = delta_per_task(mt, st, main_metrics, higher_is_better)
    if not per_task:
        raise ConfigError("delta_m: no tasks to compare", "give at least one task")
    return sum(per_task.values()) / len(per_task)
