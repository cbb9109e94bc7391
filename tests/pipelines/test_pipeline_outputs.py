"""What the KFP UI shows of a run: every step declares a kfp Metrics output, the report step an HTML and a
Markdown output; read from the compiled pipeline spec."""

from __future__ import annotations

import pytest
from test_pipeline_spec import stage_tasks  # the stages: inside the exit handler's DAG


@pytest.fixture(scope="module")
def spec(compiled) -> dict:
    return compiled[0]


def _output_artifacts(component: dict) -> dict[str, str]:
    artifacts = component.get("outputDefinitions", {}).get("artifacts", {})
    return {name: body["artifactType"]["schemaTitle"] for name, body in artifacts.items()}


def test_every_step_declares_metrics_and_the_report_html_and_markdown(spec):
    steps = {name: component for name, component in spec["components"].items() if "executorLabel" in component}
    assert len(steps) == 19 and "comp-report" in steps and "comp-cleanup-train-jobs" in steps
    for name, component in steps.items():
        assert _output_artifacts(component).get("metrics") == "system.Metrics", name
    assert _output_artifacts(steps["comp-report"]) == {
        "metrics": "system.Metrics",
        "report_html": "system.HTML",
        "report_markdown": "system.Markdown",
    }


def test_the_report_step_runs_after_evaluate_in_the_evaluate_image(spec):
    report = stage_tasks(spec)["report"]
    assert report["dependentTasks"] == ["evaluate-merge"]
    assert report["taskInfo"]["name"] == "report"
    image = spec["deploymentSpec"]["executors"]["exec-report"]["container"]["image"]
    assert "/clipdpo-evaluate:" in image


def test_train_and_evaluate_read_tracking_settings_from_an_optional_config_map(compiled):
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-train", "exec-evaluate-merge"):
        (config_map,) = executors[name]["configMapAsEnv"]
        assert config_map["configMapName"] == "clipdpo-tracking" and config_map["optional"] is True
        assert {pair["envVar"] for pair in config_map["keyToEnv"]} == {
            "MLFLOW_TRACKING_URI",
            "MLFLOW_EXPERIMENT_NAME",
            "CLIPDPO_TENSORBOARD",
        }
    assert "configMapAsEnv" not in executors["exec-filter-pairs"]
