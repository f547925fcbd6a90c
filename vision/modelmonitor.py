"""SageMaker Model Monitor's statistics.json and constraints.json shapes, built from
plain columns (numpy arrays of numbers, lists of strings).

Model Monitor's schema ("Schema for Statistics", "Schema for Constraints" in its bring-
your-own-container docs): a dataset item count and, per feature, numerical statistics
(mean, sum, std_dev, min, max, a 10-bucket distribution and a KLL sketch) or string
statistics (distinct count and a categorical distribution). A feature may carry more
keys and the files more sections; ours add a `sagemaker_vision` section. The KLL sketch
is written only when a column has at most KLL_K values: then its one level holds every
value and it is exact; a larger column gets the buckets only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

SCHEMA_VERSION = 0.0
BUCKETS = 10
KLL_C = 0.64
KLL_K = 2048


def _number(value) -> float:
    return float(value)


def numeric_feature(name: str, values, integral: bool = False, missing: int = 0) -> dict:
    """A numerical feature's statistics (`missing`: items without a value)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    stats: dict = {"common": {"num_present": int(values.size), "num_missing": int(missing)}}
    if values.size:
        low, high = float(values.min()), float(values.max())
        edges = np.linspace(low, high, BUCKETS + 1) if high > low else np.array([low, high])
        counts, _ = np.histogram(values, bins=edges)
        kll: dict = {
            "buckets": [
                {"lower_bound": _number(edges[i]), "upper_bound": _number(edges[i + 1]), "count": _number(count)}
                for i, count in enumerate(counts)
            ]
        }
        if values.size <= KLL_K:
            kll["sketch"] = {"parameters": {"c": KLL_C, "k": float(KLL_K)}, "data": [[_number(v) for v in np.sort(values)]]}
        stats.update(
            {
                "mean": float(values.mean()),
                "sum": float(values.sum()),
                "std_dev": float(values.std()),
                "min": low,
                "max": high,
                "distribution": {"kll": kll},
            }
        )
    return {"name": name, "inferred_type": "Integral" if integral else "Fractional", "numerical_statistics": stats}


def string_feature(name: str, values: Iterable[str] | Mapping[str, int], missing: int = 0) -> dict:
    """A string feature's statistics, from its values or their counts."""
    counts = Counter(values) if not isinstance(values, Mapping) else Counter(dict(values))
    counts = Counter({key: count for key, count in counts.items() if count})
    present = sum(counts.values())
    return {
        "name": name,
        "inferred_type": "String",
        "string_statistics": {
            "common": {"num_present": int(present), "num_missing": int(missing)},
            "distinct_count": float(len(counts)),
            "distribution": {"categorical": {"buckets": [{"value": key, "count": float(count)} for key, count in sorted(counts.items())]}},
        },
    }


def statistics(item_count: int, features: list[dict], extra: dict | None = None) -> dict:
    document = {"version": SCHEMA_VERSION, "dataset": {"item_count": int(item_count)}, "features": features}
    if extra:
        document["sagemaker_vision"] = extra
    return document


def constraints(numeric: Iterable[str], domains: Mapping[str, Iterable[str]], extra: dict | None = None) -> dict:
    """Every numeric feature complete and non-negative, every string feature within its
    observed domain; `extra` (our thresholds) under monitoring_config.sagemaker_vision."""
    features = [
        {"name": name, "inferred_type": "Fractional", "completeness": 1.0, "num_constraints": {"is_non_negative": True}} for name in numeric
    ]
    features += [
        {"name": name, "inferred_type": "String", "completeness": 1.0, "string_constraints": {"domains": sorted(values)}}
        for name, values in domains.items()
    ]
    config: dict = {"evaluate_constraints": "Enabled", "emit_metrics": "Enabled"}
    if extra:
        config["sagemaker_vision"] = extra
    return {"version": SCHEMA_VERSION, "features": features, "monitoring_config": config}
