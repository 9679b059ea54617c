"""Wrap rules.yaml into a prometheus-operator PrometheusRule.

    python deploy/prometheus/make_prometheusrule.py

writes deploy/kubernetes/monitoring/prometheusrule.yaml; tests/test_deploy_rules.py checks that
the two files hold the same rules.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yaml"
OUT = HERE.parent / "kubernetes" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/rules.yaml by deploy/prometheus/make_prometheusrule.py.
# Do not edit: edit rules.yaml and run the script.
# kube-prometheus-stack selects only PrometheusRules labelled `release: <helm release>` unless
# prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false: add that label.
"""


def prometheus_rule(rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "forescale",
            "namespace": "forescale",
            "labels": {"app.kubernetes.io/name": "forescale",
                       "app.kubernetes.io/part-of": "forescale"},
        },
        "spec": {"groups": rules["groups"]},
    }


def render() -> str:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    body = yaml.safe_dump(prometheus_rule(rules), sort_keys=False, width=100)
    return HEADER + body


def main() -> int:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
