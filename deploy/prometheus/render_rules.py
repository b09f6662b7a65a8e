"""Render deploy/prometheus/alerts.yml as the PrometheusRule in deploy/k8s/base.

The rules file is the one source of the alerts: plain Prometheus and compose
load it as it is, and the Prometheus Operator needs the same groups wrapped in a
``PrometheusRule`` object. Run after editing alerts.yml; ``--check`` (CI) exits
1 when the committed PrometheusRule is not what this would write.

    python deploy/prometheus/render_rules.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yml"
TARGET = HERE.parent / "k8s" / "base" / "prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/render_rules.py:
# edit that file and rerun the script, not this one.
# Your Prometheus selects PrometheusRules by label, like ServiceMonitors
# (kube-prometheus-stack: `release: <helm release>`); add it in your overlay.
"""


class _Dumper(yaml.SafeDumper):  # type: ignore[misc,unused-ignore]  # no PyYAML stubs
    """Multi-line strings (PromQL) as literal blocks, as they are written in alerts.yml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # indented sequences, as the other manifests


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render(source: str) -> str:
    """The PrometheusRule manifest for the rules file text ``source``."""
    rules: dict[str, Any] = yaml.safe_load(source)
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tandem", "labels": {"app.kubernetes.io/name": "tandem"}},
        "spec": {"groups": rules["groups"]},
    }
    body: str = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render(SOURCE.read_text())
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            sys.stderr.write(f"{TARGET} is stale: run python {Path(__file__).name}\n")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
