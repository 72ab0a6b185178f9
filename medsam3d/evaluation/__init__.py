"""The click-protocol evaluator: targets, click placement, metrics, classical baselines, reports."""
