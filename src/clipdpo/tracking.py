"""Optional experiment tracking: MLflow and TensorBoard, switched on by the environment, called at the edges.

- `MLFLOW_TRACKING_URI` set (an MLflow server `http://...`, or `sqlite:///...`): a run in experiment
  `MLFLOW_EXPERIMENT_NAME` (default `clipdpo`) gets the params, the per-step metrics and the final
  artifacts' URIs (as `clipdpo.<name>` tags). The run id is written to `<output>/tracking.json`, so a
  resumed training continues the same run and the evaluate step logs its figures to it.
- `CLIPDPO_TENSORBOARD` set (not `0`): TensorBoard event files, written to a local folder and uploaded
  to `<output>/tensorboard/` on each `sync` and at the end (the KFP UI's TensorBoard viewer opens that).
- Neither set: `open_tracker` returns a tracker that does nothing, and neither library is imported.

Only the main rank tracks. Nothing here runs inside a training step: the train stage calls `log_metrics`
once per logged step from its metrics callback.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Mapping

from clipdpo.storage import NotFound, Storage, join

log = logging.getLogger("clipdpo.tracking")

TRACKING_FILE = "tracking.json"
TENSORBOARD_DIR = "tensorboard"
MAX_PARAM_CHARS = 6000  # MLflow refuses longer param values
ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "CLIPDPO_TENSORBOARD")


def job_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tracking settings of this process, for the training job's pods (a cluster run's train step)."""
    env = os.environ if env is None else env
    return {key: env[key] for key in ENV_KEYS if env.get(key)}


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def numeric(metrics: Mapping) -> dict[str, float]:
    """The plain numbers of a (nested) metrics dict; booleans, text and None are left out."""
    return {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """The interface, doing nothing: what runs when no tracker is configured."""

    def log_params(self, params: Mapping) -> None:
        pass

    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        pass

    def log_artifacts(self, uris: Mapping[str, str]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class MLflowTracker(Tracker):
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_id: str | None = None, output: str = ""):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            tags = {"clipdpo.output": output} if output else {}
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self.run_id = run_id

    def log_params(self, params: Mapping) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params  # a resumed run: params already there
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(flatten(params).items()) if k not in logged]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in sorted(numeric(metrics).items())]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_artifacts(self, uris: Mapping[str, str]) -> None:
        for name, uri in sorted(uris.items()):
            self.client.set_tag(self.run_id, f"clipdpo.{name}", uri)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


class TensorBoardTracker(Tracker):
    """Event files in `local_dir`, copied to `<output>/tensorboard/` by `sync` and `close`."""

    def __init__(self, local_dir: str, output: str, storage: Storage):
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(local_dir, exist_ok=True)
        self.local_dir, self.target, self.storage = local_dir, join(output, TENSORBOARD_DIR), storage
        self.writer = SummaryWriter(log_dir=local_dir)

    def log_params(self, params: Mapping) -> None:
        lines = "\n".join(f"    {k} = {v}" for k, v in sorted(flatten(params).items()))
        self.writer.add_text("config", lines)  # TensorBoard shows text indented 4 spaces as code

    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        for key, value in sorted(numeric(metrics).items()):
            self.writer.add_scalar(key, value, global_step=step)

    def sync(self) -> None:
        self.writer.flush()
        for name in sorted(os.listdir(self.local_dir)):
            self.storage.upload_file(os.path.join(self.local_dir, name), join(self.target, name))

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()
        self.sync()


class Trackers(Tracker):
    """Several trackers as one; `info` says where each one writes (kept in tracking.json)."""

    def __init__(self, trackers: list[Tracker], info: dict):
        self.trackers, self.info = trackers, info

    def log_params(self, params: Mapping) -> None:
        for tracker in self.trackers:
            tracker.log_params(params)

    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        for tracker in self.trackers:
            tracker.log_metrics(metrics, step)

    def log_artifacts(self, uris: Mapping[str, str]) -> None:
        for tracker in self.trackers:
            tracker.log_artifacts(uris)

    def sync(self) -> None:
        for tracker in self.trackers:
            tracker.sync()

    def close(self, status: str = "FINISHED") -> None:
        for tracker in self.trackers:
            tracker.close(status)


def read_info(storage: Storage, output: str) -> dict:
    """What an earlier tracker of `output` recorded ({} when none did)."""
    try:
        return json.loads(storage.read_bytes(join(output, TRACKING_FILE)))
    except NotFound:
        return {}


def open_tracker(
    output: str,
    *,
    storage: Storage,
    local_dir: str,
    run_name: str,
    env: Mapping[str, str] | None = None,
    resume_from: str = "",
    tensorboard: bool = True,
) -> Tracker:
    """The trackers the environment asks for, writing `<output>/tracking.json` when there is any.

    `resume_from`: an artifact whose tracking.json names the MLflow run to continue (evaluate logs to
    its training's run); by default `output`'s own (a resumed training). `tensorboard`: False for
    steps with no curves to draw (evaluate)."""
    env = os.environ if env is None else env
    trackers: list[Tracker] = []
    info: dict = {}
    tracking_uri = env.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri:
        earlier = read_info(storage, resume_from or output)
        run_id = earlier.get("mlflow_run_id") if earlier.get("mlflow_tracking_uri") == tracking_uri else None
        mlflow = MLflowTracker(tracking_uri, env.get("MLFLOW_EXPERIMENT_NAME", "clipdpo"), run_name, run_id, output)
        trackers.append(mlflow)
        info.update(mlflow_tracking_uri=tracking_uri, mlflow_run_id=mlflow.run_id)
        log.info("MLflow: run %s at %s", mlflow.run_id, tracking_uri)
    if tensorboard and env.get("CLIPDPO_TENSORBOARD", "") not in ("", "0"):
        board = TensorBoardTracker(local_dir, output, storage)
        trackers.append(board)
        info["tensorboard"] = board.target
        log.info("TensorBoard: event files -> %s", board.target)
    if not trackers:
        return Tracker()
    storage.write_bytes(join(output, TRACKING_FILE), json.dumps(info, indent=2, sort_keys=True).encode())
    return Trackers(trackers, info)


class TrackingCallback:
    """The train stage's tracking as one of its callbacks (`on_step_end(run, step, row)`, `on_train_end(run)`):
    the config as params before the first step's metrics, each step's row, a TensorBoard upload at each
    checkpoint, and the final artifacts' URIs. Never inside a training step."""

    def __init__(self, tracker: Tracker, params: Mapping, sync_steps: int):
        self.tracker, self.params, self.sync_steps = tracker, params, max(1, sync_steps)
        self.params_logged = False

    def on_step_end(self, run, step: int, row: dict) -> None:
        if not self.params_logged:
            self.tracker.log_params(self.params)
            self.params_logged = True
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step)
        if step % self.sync_steps == 0:
            self.tracker.sync()

    def on_train_end(self, run) -> None:
        self.tracker.log_artifacts(
            {"model": join(run.output, "model"), "metrics": join(run.output, "metrics.jsonl"), "output": run.output}
        )
        self.tracker.close()


def training_callbacks(run, env: Mapping[str, str] | None = None) -> list[TrackingCallback]:
    """[] unless the environment asks for tracking; on the main rank only. `run`: the train stage's TrainRun
    (ctx, cfg, storage, output, checkpoints)."""
    if not run.ctx.is_main:
        return []
    from clipdpo import config as config_lib

    run_name = "train " + "/".join(run.output.rstrip("/").split("/")[-2:])
    tracker = open_tracker(
        run.output,
        storage=run.storage,
        run_name=run_name,
        env=env,
        local_dir=os.path.join(run.checkpoints.local_root, TENSORBOARD_DIR),
    )
    if type(tracker) is Tracker:
        return []
    return [TrackingCallback(tracker, config_lib.to_dict(run.cfg), run.cfg.save_steps)]


def log_evaluation(
    output: str, model_uri: str, results: Mapping, storage: Storage, env: Mapping[str, str] | None = None
) -> None:
    """The evaluate step's figures (every number of every model's results), on its training's MLflow run."""
    tracker = open_tracker(
        output, storage=storage, local_dir="", run_name="evaluate", env=env, resume_from=model_uri, tensorboard=False
    )
    tracker.log_metrics({"eval": dict(results)})
    tracker.log_artifacts({"evaluation": output})
    tracker.close()
