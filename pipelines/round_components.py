"""The kfp components of iterative rounds (clipdpo.rounds; wired in pipelines/clipdpo_pipeline.py): each calls
a round step of clipdpo.steps with the run root and its round's index, a constant of the compiled pipeline.

Round 1 is the one-round pipeline's own steps. From round 2 on, round_start names the round's root and train
config and the ordinary score-finalize, filter, training-pairs and train components run on them; the fan-out
steps (generate and score shards, evaluation tasks) are round components here, since inside a ParallelFor they
may read only pipeline parameters, constants and their item.
"""

# No `from __future__ import annotations`: kfp reads the component signatures' real types.
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Metrics, Output

from pipelines.settings import SETTINGS


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def round_start(
    run_root: str, round_index: int, model_uri: str, train_config_json: str, metrics: Output[Metrics]
) -> NamedTuple("RoundStart", [("root", str), ("train_config", str)]):
    """Round k >= 2: where its artifacts go, and the train config that starts from round k-1's model."""
    from collections import namedtuple

    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import round_start_step

    root, train_config = round_start_step(run_root, round_index, model_uri, train_config_json)
    log_to(metrics, {"round": float(round_index)})
    return namedtuple("RoundStart", ["root", "train_config"])(root, train_config)


@dsl.component(base_image=SETTINGS.image("generate"), install_kfp_package=False)
def round_generate_shard(
    run_root: str,
    round_index: int,
    model_uri: str,
    config_json: str,
    train_config_json: str,
    shard_index: int,
    shard_count: int,
    metrics: Output[Metrics],
) -> str:
    import time

    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import round_generate_step

    started = time.monotonic()
    # as generate_shard: in a ParallelFor the inputs come from under run_root (the images, round k-1's model);
    # `model_uri` orders the step after that model (and so after the images it was trained on)
    output = round_generate_step(run_root, round_index, config_json, train_config_json, shard_index, shard_count)
    log_to(metrics, {"round": float(round_index), "step_seconds": round(time.monotonic() - started, 3)})
    return output


@dsl.component(base_image=SETTINGS.image("generate"), install_kfp_package=False)
def round_generate_finalize(
    run_root: str,
    round_index: int,
    model_uri: str,
    shard_outputs: List[str],
    config_json: str,
    train_config_json: str,
    shard_count: int,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.rounds import round_root
    from clipdpo.steps import round_generate_step

    with logged(metrics, "generate", round_root(run_root, round_index)):
        return round_generate_step(
            run_root, round_index, config_json, train_config_json, shard_count=shard_count, finalize=True
        )


@dsl.component(base_image=SETTINGS.image("score"), install_kfp_package=False)
def round_score_shard(
    run_root: str,
    round_index: int,
    candidates_uri: str,
    config_json: str,
    shard_index: int,
    shard_count: int,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import logged
    from clipdpo.rounds import round_root
    from clipdpo.steps import round_score_step

    with logged(metrics, "score", round_root(run_root, round_index), shard=(shard_index, shard_count)):
        return round_score_step(run_root, round_index, config_json, shard_index, shard_count)


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def round_plan_evaluation(
    run_root: str,
    round_index: int,
    model_uri: str,
    train_config_json: str,
    config_json: str,
    metrics: Output[Metrics],
) -> List[str]:
    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import round_evaluation_plan

    items = round_evaluation_plan(run_root, round_index, model_uri, train_config_json, config_json)
    log_to(metrics, {"round": float(round_index), "items": float(len(items))})
    return items


@dsl.component(base_image=SETTINGS.image("evaluate"), install_kfp_package=False)
def round_evaluate_task(
    run_root: str, round_index: int, train_config_json: str, config_json: str, item: str, metrics: Output[Metrics]
) -> str:
    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import round_evaluate_task_step

    output = round_evaluate_task_step(run_root, round_index, train_config_json, config_json, item)
    log_to(metrics, {"round": float(round_index)})  # the numbers are the round's merged evaluation's
    return output


@dsl.component(base_image=SETTINGS.image("evaluate"), install_kfp_package=False)
def round_evaluate_merge(
    run_root: str,
    round_index: int,
    model_uri: str,
    task_records: List[str],
    train_config_json: str,
    config_json: str,
    metrics: Output[Metrics],
) -> str:
    from clipdpo.report.step_metrics import evaluation_numbers, log_to
    from clipdpo.steps import round_evaluate_merge_step

    output = round_evaluate_merge_step(run_root, round_index, model_uri, train_config_json, config_json)
    log_to(metrics, evaluation_numbers(output))
    return output


@dsl.component(base_image=SETTINGS.image("filter"), install_kfp_package=False)
def round_check(
    run_root: str,
    round_index: int,
    evaluation_uri: str,
    previous_decision: str,
    gate_config_json: str,
    metrics: Output[Metrics],
) -> NamedTuple("RoundCheck", [("verdict", str), ("decision", str)]):
    """Round k against round k-1 (round 1: the base) by the gate's rules: "continue" or "stop"."""
    from collections import namedtuple

    from clipdpo import rounds
    from clipdpo.report.step_metrics import log_to
    from clipdpo.steps import round_check_step

    verdict, decision = round_check_step(run_root, round_index, evaluation_uri, previous_decision, gate_config_json)
    log_to(metrics, {"round": float(round_index), "continue": float(verdict == rounds.CONTINUE)})
    return namedtuple("RoundCheck", ["verdict", "decision"])(verdict, decision)


@dsl.component(base_image=SETTINGS.image("evaluate"), install_kfp_package=False)
def rounds_evaluation(
    run_root: str, decision_uri: str, train_config_json: str, config_json: str, metrics: Output[Metrics]
) -> str:
    """The run's evaluation from the rounds' (base, round1.., the kept model), which the gate and report read."""
    from clipdpo.report.step_metrics import logged
    from clipdpo.steps import rounds_evaluation_step

    with logged(metrics, "evaluate", run_root):
        return rounds_evaluation_step(run_root, decision_uri, train_config_json, config_json)
